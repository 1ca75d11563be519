//! The Kafka sink: Kafka → Wasm transform → Kafka, exactly once across
//! kills at every step of a batch, including between the Kafka commit and
//! the checkpoint commit.
//!
//! The test broker delivers records of *aborted* transactions to
//! `read_committed` consumers (it keeps no aborted-transaction index), so
//! the output topic holds, next to each batch's committed records, those
//! of attempts a crash cut short. Every record names its query, batch and
//! attempt in headers and `commits/N` names the attempt whose transaction
//! committed batch N (read back from Kafka's transactional offset commit
//! after a crash), so the test proves: each batch committed in exactly one
//! transaction, and the committed records are exactly the expected rows,
//! once each, in order per key. On a broker that honours aborts (Apache
//! Kafka) the uncommitted attempts are not delivered at all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use serde_json::Value;
use weir::faults::{CRASH_POINTS, KAFKA_SINK_CRASH_POINTS};

use super::{broker, produce, topic};
use crate::common::{assert_ok, run, run_killed_at};

/// One record of the output topic.
#[derive(Debug, Clone)]
pub(crate) struct OutRecord {
    pub(crate) query: String,
    pub(crate) batch: u64,
    pub(crate) attempt: String,
    pub(crate) key: String,
    pub(crate) row: Value,
}

/// A pipeline reading `input` through the enrich plugin into `output`.
fn pipeline(input: &str, output: &str, exactly_once: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = pipeline_text(&broker().servers, "available_now = true", 12, input, output).replace(
        "exactly_once = true",
        &format!("exactly_once = {exactly_once}"),
    );
    std::fs::write(dir.path().join("pipeline.toml"), text).unwrap();
    dir
}

/// Kafka at `servers` → enrich plugin → Kafka, exactly once.
pub(super) fn pipeline_text(
    servers: &str,
    trigger: &str,
    cap: u64,
    input: &str,
    output: &str,
) -> String {
    let sink = format!(
        "[sink]\nkind = \"kafka\"\nbootstrap_servers = \"{servers}\"\ntopic = \"{output}\"\n\
         key_column = \"partition\"\nexactly_once = true\n"
    );
    let cap = format!("max_offsets_per_trigger = {cap}");
    super::orders_pipeline("kafka-to-kafka", servers, trigger, input, &cap, &sink)
}

/// Every record of `topic` as a `read_committed` consumer sees it, in
/// partition and offset order (read until nothing new for two seconds).
fn read_topic(topic: &str) -> Vec<OutRecord> {
    read_topic_on(&broker().servers, topic)
}

/// [`read_topic`] on the broker at `servers`.
pub(crate) fn read_topic_on(servers: &str, topic: &str) -> Vec<OutRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    // Assigned, not subscribed: no group join to wait for.
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, partition.id(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut by_partition: BTreeMap<(i32, i64), OutRecord> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_seen = Instant::now();
    while last_seen.elapsed() < Duration::from_secs(2) {
        assert!(Instant::now() < deadline, "reading {topic} took too long");
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.unwrap();
        last_seen = Instant::now();
        let header = |name: &str| {
            let headers = message.headers().expect("weir records carry headers");
            let found = headers.iter().find(|h| h.key == name);
            String::from_utf8(found.unwrap().value.unwrap().to_vec()).unwrap()
        };
        let record = OutRecord {
            query: header("weir.query"),
            batch: header("weir.batch").parse().unwrap(),
            attempt: header("weir.attempt"),
            key: String::from_utf8(message.key().unwrap_or_default().to_vec()).unwrap(),
            row: serde_json::from_slice(message.payload().unwrap()).unwrap(),
        };
        by_partition.insert((message.partition(), message.offset()), record);
    }
    by_partition.into_values().collect()
}

/// The query id and, per batch, the attempt `commits/N` names.
fn committed_attempts(checkpoint: &Path) -> (String, BTreeMap<u64, String>) {
    let read = |name: &str| -> Value {
        serde_json::from_slice(&std::fs::read(checkpoint.join(name)).unwrap()).unwrap()
    };
    let query = read("metadata")["id"].as_str().unwrap().to_string();
    let mut attempts = BTreeMap::new();
    for entry in std::fs::read_dir(checkpoint.join("commits")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Ok(batch) = name.parse::<u64>() else {
            continue;
        };
        let commit = read(&format!("commits/{batch}"));
        let attempt = commit["sink_commit"]
            .as_str()
            .unwrap_or_else(|| panic!("commits/{batch} names no Kafka attempt: {commit}"));
        attempts.insert(batch, attempt.to_string());
    }
    (query, attempts)
}

/// Asserts the committed attempts of the query at `checkpoint` hold
/// `expected` ids once each, in offset order per key, and returns the
/// attempts per batch.
pub(super) fn assert_exactly_once(
    records: &[OutRecord],
    checkpoint: &Path,
    expected: std::ops::RangeInclusive<i64>,
    context: &str,
) -> BTreeMap<u64, String> {
    let (query, attempts) = committed_attempts(checkpoint);
    let ours: Vec<&OutRecord> = records.iter().filter(|r| r.query == query).collect();
    // Each batch has records of its committed attempt (and maybe of aborted ones).
    let batches_seen: BTreeSet<u64> = ours.iter().map(|r| r.batch).collect();
    assert_eq!(
        batches_seen,
        attempts.keys().copied().collect(),
        "{context}"
    );
    let committed: Vec<&&OutRecord> = ours
        .iter()
        .filter(|r| attempts.get(&r.batch) == Some(&r.attempt))
        .collect();
    let mut ids: Vec<i64> = committed
        .iter()
        .map(|r| r.row["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, expected.collect::<Vec<_>>(), "{context}");
    for record in &committed {
        let id = record.row["id"].as_i64().unwrap();
        assert_eq!(record.key, (id % 2).to_string(), "{context}: key of {id}");
        assert_eq!(
            record.row["amount_x2"],
            (id as f64 + 0.5) * 2.0,
            "{context}"
        );
    }
    // Per key (the input partition) the records keep their input order.
    for key in ["0", "1"] {
        let order: Vec<i64> = committed
            .iter()
            .filter(|r| r.key == key)
            .map(|r| r.row["id"].as_i64().unwrap())
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "{context}: key {key} out of order");
    }
    attempts
}

/// The process (run) part of an attempt name `<run>-<n>`.
fn run_of(attempt: &str) -> &str {
    attempt.split_once('-').unwrap().0
}

#[test]
fn kafka_to_kafka_is_exactly_once_after_a_kill_at_every_step() {
    let input = topic(2);
    produce(&input, 2, 1..=30);
    let output = topic(2);
    let points: Vec<&str> = CRASH_POINTS
        .iter()
        .filter(|p| !p.starts_with("sink-"))
        .chain(KAFKA_SINK_CRASH_POINTS)
        .copied()
        .collect();
    let mut runs = Vec::new();
    for point in &points {
        for batch in [1, 2] {
            let dir = pipeline(&input, &output, true);
            let pipeline = dir.path().join("pipeline.toml");
            run_killed_at(&pipeline, &format!("{point}@{batch}"));
            let err = assert_ok(&run(&pipeline));
            runs.push((format!("{point}@{batch}"), dir, err));
        }
    }
    assert!(runs.len() >= 20, "{} kill points", runs.len());
    let records = read_topic(&output);
    for (at, dir, err) in &runs {
        let context = format!("kill at {at}:\n{err}");
        let attempts = assert_exactly_once(&records, &dir.path().join("ck"), 1..=30, &context);
        assert_eq!(
            attempts.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2],
            "{context}: 30 records at 12 per batch are batches 0..=2"
        );
        // Batch 0 always committed in the killed run. The killed batch did
        // too exactly when the kill came after Kafka's commit: the restart
        // then found the marker and wrote nothing.
        let killed_run = run_of(&attempts[&0]);
        let batch: u64 = at.rsplit_once('@').unwrap().1.parse().unwrap();
        let committed_before_kill = at.starts_with("kafka-after-commit")
            || at.starts_with("before-commit")
            || at.starts_with("after-commit");
        assert_eq!(
            run_of(&attempts[&batch]) == killed_run,
            committed_before_kill,
            "{context}: batch {batch} committed by {}",
            attempts[&batch]
        );
    }
}

#[test]
fn kafka_sink_without_transactions_writes_every_row() {
    let input = topic(2);
    produce(&input, 2, 1..=30);
    let output = topic(1);
    let dir = pipeline(&input, &output, false);
    let err = assert_ok(&run(&dir.path().join("pipeline.toml")));
    let records = read_topic(&output);
    let mut ids: Vec<i64> = records
        .iter()
        .map(|r| r.row["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (1..=30).collect::<Vec<_>>(), "{err}");
    assert_eq!(records.iter().map(|r| r.batch).max(), Some(2));
}

#[test]
fn kafka_sink_mistakes_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    let original = r#"name = "k"
checkpoint = "ck"

[source]
kind = "file"
path = "in"
format = "json"
schema = [ { name = "x", type = "long" } ]

[sink]
kind = "kafka"
bootstrap_servers = "127.0.0.1:1"
topic = "out"
"#;
    crate::common::assert_refusals(
        &file,
        original,
        &[
            ("topic = \"out\"\n", "", "a kafka sink needs a `topic`"),
            (
                "bootstrap_servers = \"127.0.0.1:1\"\n",
                "",
                "a kafka sink needs `bootstrap_servers`",
            ),
            (
                "topic = \"out\"",
                "topic = \"out\"\npath = \"x\"",
                "a kafka sink takes no path",
            ),
            (
                "kind = \"kafka\"",
                "kind = \"json\"\npath = \"out\"",
                "`bootstrap_servers` applies to kind = \"kafka\" sinks only",
            ),
        ],
    );

    // A key column the output does not have: the batch fails naming it.
    let input = topic(1);
    produce(&input, 1, 1..=3);
    let dir = pipeline(&input, &topic(1), true);
    let file = dir.path().join("pipeline.toml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("key_column = \"partition\"", "key_column = \"customer\"");
    std::fs::write(&file, text).unwrap();
    let out = run(&file);
    let err = crate::common::stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("key_column = \"customer\" is not an output column"),
        "{err}"
    );
}
