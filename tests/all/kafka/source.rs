//! The Kafka source: offset ranges per batch in the checkpoint, the
//! per-trigger cap split across partitions, only new records on the next
//! run, and exactly-once output after a kill at every step.

use std::path::Path;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;
use weir::faults::CRASH_POINTS;

use super::{broker, produce, topic, topic_named};
use crate::common::{assert_ok, committed_json_rows, run, run_killed_at};

/// A pipeline reading `topic` into a JSON sink through the enrich plugin.
fn pipeline(topic: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = super::orders_to_json(
        "from-kafka",
        "available_now = true",
        topic,
        "max_offsets_per_trigger = 12",
    );
    std::fs::write(dir.path().join("pipeline.toml"), text).unwrap();
    dir
}

fn sorted_ids(out: &Path) -> Vec<i64> {
    let mut ids: Vec<i64> = committed_json_rows(out)
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    ids
}

#[test]
fn kafka_batches_are_offset_ranges_capped_across_partitions() {
    let topic = topic(3);
    produce(&topic, 3, 1..=30);
    let dir = pipeline(&topic);
    let err = assert_ok(&run(&dir.path().join("pipeline.toml")));
    assert_eq!(
        sorted_ids(&dir.path().join("out")),
        (1..=30).collect::<Vec<_>>(),
        "{err}"
    );
    // 30 records, 10 per partition, at most 12 per batch: 4 per partition.
    let plan: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("ck/sources/0/0")).unwrap()).unwrap();
    let sizes: Vec<i64> = plan["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["end"].as_i64().unwrap() - r["start"].as_i64().unwrap())
        .collect();
    assert_eq!(sizes, vec![4, 4, 4], "{plan}");
    assert!(err.contains("batch 2: 6 rows in"), "{err}");
    let rows = committed_json_rows(&dir.path().join("out"));
    let first = rows.iter().find(|r| r["id"] == 3).unwrap();
    assert_eq!(first["topic"], topic.as_str());
    assert_eq!(first["partition"], 0);
    assert_eq!(first["offset"], 0);
    assert_eq!(first["amount_x2"], 7.0);

    // The next run reads only what arrived since.
    produce(&topic, 3, 31..=35);
    let err = assert_ok(&run(&dir.path().join("pipeline.toml")));
    assert_eq!(
        sorted_ids(&dir.path().join("out")),
        (1..=35).collect::<Vec<_>>(),
        "{err}"
    );
    assert!(err.contains("batch 3: 5 rows in"), "{err}");
}

#[test]
fn kafka_to_files_is_exactly_once_after_a_kill_at_every_step() {
    let topic = topic(2);
    produce(&topic, 2, 1..=30);
    for point in CRASH_POINTS {
        let dir = pipeline(&topic);
        let pipeline = dir.path().join("pipeline.toml");
        run_killed_at(&pipeline, &format!("{point}@1"));
        let err = assert_ok(&run(&pipeline));
        assert_eq!(
            sorted_ids(&dir.path().join("out")),
            (1..=30).collect::<Vec<_>>(),
            "kill at {point}@1:\n{err}"
        );
    }
}

#[test]
fn kafka_source_mistakes_are_reported_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("pipeline.toml");
    let original = r#"name = "k"
checkpoint = "ck"

[source]
kind = "kafka"
bootstrap_servers = "127.0.0.1:1"
topics = ["a"]

[sink]
kind = "console"
"#;
    crate::common::assert_refusals(
        &pipeline,
        original,
        &[
            (
                "bootstrap_servers = \"127.0.0.1:1\"\n",
                "",
                "a kafka source needs `bootstrap_servers`",
            ),
            (
                "topics = [\"a\"]",
                "topics = [\"a\"]\ntopic_pattern = \"a.*\"",
                "one of `topics` or `topic_pattern`",
            ),
            (
                "topics = [\"a\"]",
                "topic_pattern = \"(\"",
                "invalid topic_pattern",
            ),
            (
                "topics = [\"a\"]",
                "topics = [\"a\"]\npath = \"in\"",
                "`path` applies to file sources only",
            ),
            (
                "topics = [\"a\"]",
                "topics = [\"a\"]\nstarting_offsets = \"newest\"",
                "unknown starting_offsets \"newest\"",
            ),
            (
                "topics = [\"a\"]",
                "topics = [\"a\"]\nstarting_offsets = { b = { \"0\" = 1 } }",
                "names topic \"b\", which `topics` does not list",
            ),
            (
                "topics = [\"a\"]",
                "topics = [\"a\"]\nstarting_offsets = { a = { \"x\" = 1 } }",
                "\"x\" in \"a\" is not a partition number",
            ),
            (
                "topics = [\"a\"]",
                "topics = [\"a\"]\nstarting_offsets = { a = { \"0\" = -3 } }",
                "offset -3 for \"a\" partition 0",
            ),
            (
                "topics = [\"a\"]",
                "topics = [\"a\"]\nformat = \"csv\"\nschema = [ { name = \"x\", type = \"long\" } ]",
                "parses values as `json` only",
            ),
        ],
    );
}

#[test]
fn a_topic_pattern_picks_up_topics_created_later() {
    // A family of its own, so topics of tests running alongside never match.
    let first = topic_named("pattern", 1);
    produce(&first, 1, 1..=3);
    let dir = pipeline(&first);
    let file = dir.path().join("pipeline.toml");
    let prefix = first.rsplit_once('-').unwrap().0.to_string();
    let text = std::fs::read_to_string(&file).unwrap().replace(
        &format!("topics = [\"{first}\"]"),
        &format!("topic_pattern = \"^{prefix}-[0-9]+$\""),
    );
    std::fs::write(&file, text).unwrap();
    let err = assert_ok(&run(&file));
    assert_eq!(sorted_ids(&dir.path().join("out")), vec![1, 2, 3], "{err}");

    // A topic created after the first run matches the pattern: read from
    // its start on the next run, next to the first topic's new records.
    let second = topic_named("pattern", 2);
    assert!(second.starts_with(&prefix), "{second}");
    produce(&second, 2, 4..=7);
    produce(&first, 1, 8..=8);
    let err = assert_ok(&run(&file));
    assert_eq!(
        sorted_ids(&dir.path().join("out")),
        (1..=8).collect::<Vec<_>>(),
        "{err}"
    );
}

#[test]
fn a_backlog_of_a_million_records_is_caught_up_in_capped_batches() {
    let topic = topic(4);
    // Large producer batches (fast), then one single-record batch per
    // partition: the broker's "latest offset" then covers every record
    // (see `produce_on` for why).
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker().servers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "2000000")
        .create()
        .unwrap();
    const BACKLOG: i64 = 1_000_000;
    for n in 0..BACKLOG {
        let value = n.to_string();
        let record = BaseRecord::<(), _>::to(&topic)
            .partition((n % 4) as i32)
            .payload(&value);
        if let Err((e, _)) = producer.send(record) {
            panic!("queueing record {n}: {e}");
        }
        if n % 100_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    drop(producer);
    produce(&topic, 4, 1_000_001..=1_000_004);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    let text = format!(
        r#"name = "backlog"
checkpoint = "ck"

[trigger]
available_now = true

[source]
kind = "kafka"
bootstrap_servers = "{servers}"
topics = ["{topic}"]
max_offsets_per_trigger = 100000

[sink]
kind = "parquet"
path = "out"
"#,
        servers = broker().servers
    );
    std::fs::write(&file, text).unwrap();
    let err = assert_ok(&run(&file));
    let mut sizes = Vec::new();
    for batch in 0.. {
        let Ok(bytes) = std::fs::read(dir.path().join(format!("ck/sources/0/{batch}"))) else {
            break;
        };
        let plan: Value = serde_json::from_slice(&bytes).unwrap();
        let size: i64 = plan["ranges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["end"].as_i64().unwrap() - r["start"].as_i64().unwrap())
            .sum();
        sizes.push(size);
    }
    assert!(sizes.len() >= 10, "{sizes:?}\n{err}");
    assert!(sizes.iter().all(|s| *s <= 100_000), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<i64>(), BACKLOG + 4, "{sizes:?}\n{err}");
    // Every record reached the sink once.
    let written: u64 = (0..sizes.len())
        .map(|batch| {
            let entry: Value = serde_json::from_slice(
                &std::fs::read(dir.path().join(format!("out/_weir_log/{batch}"))).unwrap(),
            )
            .unwrap();
            entry["rows"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(written, BACKLOG as u64 + 4);
}

#[test]
fn per_partition_starting_offsets_hold_across_restarts() {
    let topic = topic(2);
    // Partition 0 holds 2, 4, .., 10 at offsets 0..=4; partition 1 the odd ids.
    produce(&topic, 2, 1..=10);
    let dir = pipeline(&topic);
    let file = dir.path().join("pipeline.toml");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "max_offsets_per_trigger = 12",
        &format!("starting_offsets = {{ {topic:?} = {{ \"0\" = 3, \"1\" = -1 }} }}"),
    );
    std::fs::write(&file, text).unwrap();
    let err = assert_ok(&run(&file));
    assert_eq!(sorted_ids(&dir.path().join("out")), vec![8, 10], "{err}");

    // Partition 1 started at its latest offset when the query began: what
    // arrives later is read, also after a restart.
    produce(&topic, 2, 11..=14);
    let err = assert_ok(&run(&file));
    assert_eq!(
        sorted_ids(&dir.path().join("out")),
        vec![8, 10, 11, 12, 13, 14],
        "{err}"
    );
}

#[test]
fn a_topic_recreated_behind_the_checkpoint_is_data_loss() {
    let topic = topic(1);
    produce(&topic, 1, 1..=6);
    let dir = pipeline(&topic);
    let file = dir.path().join("pipeline.toml");
    let err = assert_ok(&run(&file));
    assert_eq!(
        sorted_ids(&dir.path().join("out")),
        (1..=6).collect::<Vec<_>>(),
        "{err}"
    );

    // Deleted and created again with fewer records: offsets 0..2 < 6.
    super::delete_topic(&broker().servers, &topic);
    super::create_topic(&broker().servers, &topic, 1);
    produce(&topic, 1, 7..=8);
    let out = run(&file);
    let err = crate::common::stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("ends at offset 2, before offset 6") && err.contains("fail_on_data_loss"),
        "{err}"
    );
    // Nothing was written meanwhile.
    assert_eq!(
        sorted_ids(&dir.path().join("out")),
        (1..=6).collect::<Vec<_>>()
    );

    // Told to go on, it reads the new topic from its start.
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "max_offsets_per_trigger = 12",
        "max_offsets_per_trigger = 12\nfail_on_data_loss = false",
    );
    std::fs::write(&file, text).unwrap();
    let err = assert_ok(&run(&file));
    assert!(err.contains("offsets went back"), "{err}");
    assert_eq!(
        sorted_ids(&dir.path().join("out")),
        (1..=8).collect::<Vec<_>>(),
        "{err}"
    );
}
