//! A query across replicas: several `weir run --replica` processes share a
//! Kafka source's partitions through a consumer group on a real broker
//! (tansu), each partition's shard checkpointed on a real S3 server (moto);
//! killed, stalled and replaced replicas lose and double nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{assert_ok, free_port, metric_value, run, scrape_metrics, weir};
use crate::delta::{read_delta, s3_log_txns, s3_reader_options};
use crate::kafka::{broker, create_topic, produce, topic_named, unbatched_producer};
use crate::s3::{bucket, committed_rows, list, s3_table};

const PARTITIONS: i32 = 6;
const SESSION_TIMEOUT_S: u64 = 6;
/// The test broker (tansu 0.6) hands a restarted static member's
/// partitions to two members and never reassigns a dead one's: the
/// replicas join as dynamic members here.
const DYNAMIC: &str = "static_membership = false\n";

/// A pipeline's name, trigger and `[cluster]` table (with `extra`
/// settings): one process draining the topic, or replicas of group `group`.
fn run_as(single: bool, group: &str, extra: &str) -> (&'static str, &'static str, String) {
    if single {
        return ("single", "available_now = true", String::new());
    }
    let cluster = format!(
        "[cluster]\ngroup_id = \"{group}\"\nsession_timeout = \"{SESSION_TIMEOUT_S}s\"\n\
         {extra}{DYNAMIC}"
    );
    ("replicated", "processing_time = \"200ms\"", cluster)
}

/// A pipeline reading `topic` (JSON) from a Kafka source, then what
/// `body` makes of the pipeline's name (schema, transforms, operator,
/// sink), checkpoint in bucket `b`: one process draining the topic
/// (`single`), or replicas of group `group` with `extra` `[cluster]`
/// settings.
fn kafka_pipeline(
    b: &str,
    topic: &str,
    group: &str,
    single: bool,
    extra: &str,
    body: impl FnOnce(&str) -> String,
) -> String {
    let (name, trigger, tail) = run_as(single, group, extra);
    format!(
        r#"name = "{name}"
checkpoint = "s3://{b}/{name}/ck"

{s3}
[trigger]
{trigger}

[source]
kind = "kafka"
bootstrap_servers = "{servers}"
topics = ["{topic}"]
format = "json"
{body}
{tail}"#,
        s3 = s3_table(),
        servers = broker().servers,
        body = body(name),
    )
}

/// The pipeline: orders from `topic` through the enrich plugin into the
/// Kafka topic `<topic>-<name>`, exactly once (a transaction per batch, under
/// each shard's own transactional id), checkpoint in bucket `b`; with
/// `[cluster]` unless `single`.
fn pipeline(b: &str, topic: &str, group: &str, single: bool) -> String {
    kafka_pipeline(b, topic, group, single, "", |name| {
        format!(
            "{}\n[sink]\nkind = \"kafka\"\nbootstrap_servers = \"{}\"\n\
             topic = \"{topic}-{name}\"\nexactly_once = true\n",
            crate::common::ORDERS_SCHEMA_AND_DOUBLE,
            broker().servers
        )
    })
}

/// Running replicas of one pipeline.
struct Replicas {
    dir: tempfile::TempDir,
    running: BTreeMap<String, Child>,
    /// Every replica started, running or not.
    started: BTreeSet<String>,
}

impl Replicas {
    fn new(pipeline: &str) -> Replicas {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
        Replicas {
            dir,
            running: BTreeMap::new(),
            started: BTreeSet::new(),
        }
    }

    fn start(&mut self, id: &str) {
        self.start_with(id, &[], &[]);
    }

    /// Starts replica `id` with more arguments for `weir run`, and more
    /// environment.
    fn start_with(&mut self, id: &str, args: &[String], env: &[(&str, &str)]) {
        let child = weir()
            .arg("run")
            .arg(self.dir.path().join("pipeline.toml"))
            .args(["--replica", id, "--quiet", "--progress-log"])
            .arg(self.progress_log(id))
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "weir=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.stderr_path(id)).unwrap())
            .spawn()
            .unwrap();
        self.running.insert(id.to_string(), child);
        self.started.insert(id.to_string());
    }

    fn progress_log(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.progress"))
    }

    fn stderr_path(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.stderr"))
    }

    fn stderr(&self, id: &str) -> String {
        std::fs::read_to_string(self.stderr_path(id)).unwrap_or_default()
    }

    /// (shard, batch id) of each batch replica `id` committed, in order.
    fn commits(&self, id: &str) -> Vec<(String, u64)> {
        let text = std::fs::read_to_string(self.progress_log(id)).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|p| {
                let shard = p["shard"].as_str().unwrap_or_default().to_string();
                (shard, p["batchId"].as_u64().unwrap_or_default())
            })
            .collect()
    }

    fn signal(&self, id: &str, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.running[id].id() as i32, signal);
        }
    }

    /// Waits for replica `id`, which was to kill itself at a crash point
    /// (`WEIR_CRASH_AT`), and checks it died by SIGKILL.
    fn reap_crashed(&mut self, id: &str) {
        let mut child = self.running.remove(id).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "{}",
            tail(&self.stderr(id))
        );
    }

    fn kill(&mut self, id: &str) {
        let mut child = self.running.remove(id).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Stops every replica with SIGTERM (each finishes its batches).
    fn stop_all(&mut self) {
        for id in self.running.keys() {
            self.signal(id, libc::SIGTERM);
        }
        for (id, mut child) in std::mem::take(&mut self.running) {
            let status = child.wait().unwrap();
            let log = self.stderr(&id);
            assert!(status.success(), "replica {id}: {status}\n{}", tail(&log));
        }
    }

    /// `weir status PIPELINE.toml`'s output (as JSON with `--json`).
    fn status(&self, json: bool) -> String {
        let mut command = weir();
        command
            .arg("status")
            .arg(self.dir.path().join("pipeline.toml"));
        if json {
            command.arg("--json");
        }
        let out = command.output().unwrap();
        assert_ok(&out);
        String::from_utf8(out.stdout).unwrap()
    }

    fn status_json(&self) -> Value {
        serde_json::from_str(&self.status(true)).unwrap()
    }

    fn status_text(&self) -> String {
        self.status(false)
    }

    /// Whether the group has assigned replica `id` shards.
    fn holds_shards(&self, id: &str) -> bool {
        self.stderr(id).contains("shards assigned")
    }

    /// Waits until the group has assigned each of `ids` shards.
    fn wait_for_shards(&self, ids: &[&str]) {
        self.wait_for(
            &format!("{ids:?} to hold shards"),
            Duration::from_secs(90),
            || ids.iter().all(|id| self.holds_shards(id)),
        );
    }

    /// Waits until `condition` holds, or fails with every replica's log.
    fn wait_for(&self, what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !condition() {
            if Instant::now() > deadline {
                let logs: String = self
                    .running
                    .keys()
                    .map(|id| format!("--- replica {id}:\n{}\n", tail(&self.stderr(id))))
                    .collect();
                panic!("timed out waiting for {what}\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for child in self.running.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Rows every shard's JSON sink under `url` committed.
fn shard_rows(url: &str) -> Vec<Value> {
    let shards: BTreeSet<String> = list(url)
        .iter()
        .filter_map(|name| name.split('/').next())
        .filter(|first| first.starts_with("shard="))
        .map(str::to_string)
        .collect();
    shards
        .iter()
        .flat_map(|shard| committed_rows(&format!("{url}/{shard}")))
        .collect()
}

/// How often each order id was delivered.
fn id_counts(rows: &[Value]) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for row in rows {
        *counts.entry(row["id"].as_i64().unwrap()).or_default() += 1;
    }
    counts
}

fn assert_each_once(rows: &[Value], ids: std::ops::RangeInclusive<i64>) {
    let counts = id_counts(rows);
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "delivered more than once: {doubled:?}");
    let missing: Vec<i64> = ids.clone().filter(|id| !counts.contains_key(id)).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert_eq!(counts.len(), ids.count(), "unexpected ids: {counts:?}");
}

/// No batch of any shard was committed by two replicas (its checkpoint
/// entries are created once, and a replaced replica is fenced).
fn assert_no_batch_committed_twice(replicas: &Replicas, ids: &[impl AsRef<str>]) {
    let mut seen = BTreeMap::new();
    for id in ids {
        let id = id.as_ref();
        for commit in replicas.commits(id) {
            if let Some(other) = seen.insert(commit.clone(), id) {
                panic!("batch {commit:?} committed by both {other} and {id}");
            }
        }
    }
}

fn sorted(mut rows: Vec<Value>) -> Vec<Value> {
    rows.sort_by_key(|r| r["id"].as_i64());
    rows
}

/// Ids of the orders in output topic `topic` (read_committed), with each
/// record's shard (its query id): no batch is aborted in this test, so
/// every record is a committed one (the test broker would also deliver
/// aborted ones; see `kafka/sink.rs`).
fn output_rows(topic: &str) -> Vec<Value> {
    crate::kafka::sink::read_topic_on(&broker().servers, topic)
        .into_iter()
        .map(|record| record.row)
        .collect()
}

/// Into a Kafka topic, exactly once: two replicas share the partitions,
/// and their transactions hold exactly the rows one process writes.
#[test]
fn replicas_share_the_partitions_and_write_what_one_process_writes() {
    let b = bucket("cluster");
    let topic = topic_named("cluster-share", PARTITIONS);
    produce(&topic, PARTITIONS as i64, 1..=60);
    let mut replicas = Replicas::new(&pipeline(&b, &topic, &format!("{topic}-g"), false));
    replicas.start("r0");
    let out = format!("{topic}-replicated");
    for output in [&out, &format!("{topic}-single")] {
        create_topic(&broker().servers, output, 2);
    }
    let delivered = |n: usize| output_rows(&out).len() >= n;
    replicas.wait_for("the first 60 orders", Duration::from_secs(120), || {
        delivered(60)
    });
    // A second replica joins: the group moves some shards to it.
    replicas.start("r1");
    replicas.wait_for("r1 to hold shards", Duration::from_secs(60), || {
        replicas.holds_shards("r1")
    });
    produce(&topic, PARTITIONS as i64, 61..=90);
    replicas.wait_for("all 90 orders", Duration::from_secs(60), || delivered(90));
    replicas.stop_all();
    let replicated = output_rows(&out);
    assert_each_once(&replicated, 1..=90);
    let shards = |id: &str| -> BTreeSet<String> {
        replicas
            .commits(id)
            .into_iter()
            .map(|(shard, _)| shard)
            .collect()
    };
    assert!(
        !shards("r0").is_empty() && !shards("r1").is_empty(),
        "the group shared no work: r0 {:?}, r1 {:?}",
        shards("r0"),
        shards("r1")
    );
    assert_no_batch_committed_twice(&replicas, &["r0", "r1"]);
    // Each shard is a query of its own, with its own transactional id.
    let writers: BTreeSet<String> = crate::kafka::sink::read_topic_on(&broker().servers, &out)
        .into_iter()
        .map(|record| record.query)
        .collect();
    assert_eq!(writers.len(), PARTITIONS as usize, "{writers:?}");

    // One process over the same topic writes the same rows.
    let single = tempfile::tempdir().unwrap();
    let file = single.path().join("pipeline.toml");
    std::fs::write(&file, pipeline(&b, &topic, "", true)).unwrap();
    assert_ok(&run(&file));
    let one = output_rows(&format!("{topic}-single"));
    assert_eq!(sorted(replicated), sorted(one));
}

/// Where the windowed query writes: Parquet files, or one Delta table
/// that every state shard commits to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sink {
    Parquet,
    Delta,
}

impl Sink {
    /// The windows committed at `url` (every shard's, for Parquet).
    fn windows(self, url: &str) -> Vec<String> {
        match self {
            Sink::Parquet if url.contains("/single/") => windows(&committed_rows(url)),
            Sink::Parquet => windows(&shard_rows(url)),
            Sink::Delta => {
                if list(&format!("{url}/_delta_log")).is_empty() {
                    return Vec::new();
                }
                windows(&read_delta(url, &s3_reader_options(), "").rows)
            }
        }
    }
}

/// Windowed totals per user across replicas: orders with event times
/// through the enrich plugin, counted and summed per user in 10-second
/// tumbling windows (10-second watermark delay) into `sink` on S3.
fn windowed_pipeline(b: &str, topic: &str, group: &str, single: bool, sink: Sink) -> String {
    let kind = match sink {
        Sink::Parquet => "parquet",
        Sink::Delta => "delta",
    };
    let extra = "repartition_partitions = 6\n";
    kafka_pipeline(b, topic, group, single, extra, |name| {
        format!(
            r#"schema = [
  {{ name = "id", type = "long", nullable = false }},
  {{ name = "user", type = "string" }},
  {{ name = "amount", type = "double" }},
  {{ name = "event_time", type = "timestamp" }},
]

[[transform]]
name = "double"
plugin = "${{WEIR_PLUGIN_DIR}}/weir_plugin_enrich.wasm"
config = {{ input = "amount", output = "amount_x2", multiply = 2.0 }}

[watermark]
column = "event_time"
delay = "10s"

[aggregate]
group_by = ["user"]
window = {{ column = "event_time", tumbling = "10s" }}
aggregates = [
  {{ fn = "count", as = "orders" }},
  {{ fn = "sum", column = "amount_x2", as = "total_x2" }},
]

[sink]
kind = "{kind}"
path = "s3://{b}/{name}/out"
output_mode = "append"
"#
        )
    })
}

/// Orders `ids` with event times 0.5 s apart from 2026-01-01T00:00:00Z,
/// up to 1.4 s out of order (never late for a 10 s delay), order `id` to
/// partition `id % PARTITIONS`, `pace` apart; ids above 1000 are one per
/// partition, minutes on, closing every earlier window.
fn produce_timed(topic: &str, ids: impl Iterator<Item = i64>, pace: Duration) {
    use rdkafka::producer::{BaseRecord, Producer};
    let producer = unbatched_producer(&broker().servers);
    const BASE_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    for id in ids {
        let offset_ms = if id > 1000 {
            600_000
        } else {
            id * 500 - (id % 3) * 700
        };
        let time = chrono_free_rfc3339(BASE_MS + offset_ms.max(0));
        let value = format!(
            "{{\"id\": {id}, \"user\": \"u{}\", \"amount\": {id}.5, \"event_time\": \"{time}\"}}",
            id % 7
        );
        let key = id.to_string();
        producer
            .send(
                BaseRecord::to(topic)
                    .partition((id % PARTITIONS as i64) as i32)
                    .key(&key)
                    .payload(&value),
            )
            .unwrap();
        if !pace.is_zero() {
            producer.flush(Duration::from_secs(10)).unwrap();
            std::thread::sleep(pace);
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// `2026-01-01T00:MM:SS.fffZ` for times within the first hour of 2026.
fn chrono_free_rfc3339(ms: i64) -> String {
    let within = ms - 1_767_225_600_000;
    assert!((0..3_600_000).contains(&within));
    format!(
        "2026-01-01T00:{:02}:{:02}.{:03}Z",
        within / 60_000,
        within % 60_000 / 1000,
        within % 1000
    )
}

/// Windows as sorted "start user orders total" lines.
fn windows(rows: &[Value]) -> Vec<String> {
    let mut lines: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {}",
                r["window_start"], r["user"], r["orders"], r["total_x2"]
            )
        })
        .collect();
    lines.sort();
    lines
}

/// Closes every window with one late-enough order per partition, runs one
/// process over the same topic into the same kind of sink, waits for the
/// replicas to emit as many windows, stops them and asserts they emitted
/// exactly those windows with no shard's batch committed twice (and, in a
/// Delta table, no state shard's batch committed twice).
fn assert_windows_as_one_process(replicas: &mut Replicas, b: &str, topic: &str, sink: Sink) {
    produce_timed(topic, 1001..=1006, Duration::ZERO);
    let single = tempfile::tempdir().unwrap();
    let file = single.path().join("pipeline.toml");
    std::fs::write(&file, windowed_pipeline(b, topic, "", true, sink)).unwrap();
    assert_ok(&run(&file));
    let expected = sink.windows(&format!("s3://{b}/single/out"));
    assert!(
        expected.len() > 20,
        "too few windows to compare: {expected:?}"
    );
    let out = format!("s3://{b}/replicated/out");
    // On a time-out the comparison below shows what is missing.
    let deadline = Instant::now() + Duration::from_secs(120);
    while sink.windows(&out).len() < expected.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let logs: String = replicas
        .running
        .keys()
        .map(|id| format!("--- replica {id}:\n{}\n", tail(&replicas.stderr(id))))
        .collect();
    replicas.stop_all();
    assert_eq!(sink.windows(&out), expected, "{logs}");
    let ids: Vec<String> = replicas.started.iter().cloned().collect();
    assert_no_batch_committed_twice(replicas, &ids);
    if sink == Sink::Delta {
        // Each state shard commits under its own application id; a batch
        // replayed after a crash or a move is skipped, never committed again.
        let mut seen = BTreeSet::new();
        for (version, txns) in s3_log_txns(&out) {
            for txn in txns {
                assert!(
                    seen.insert(txn.clone()),
                    "{txn:?} committed again in table version {version}"
                );
            }
        }
        assert!(seen.len() > 1, "too few Delta commits: {seen:?}");
    }
}

/// Whether `weir status --json` shows each of the six source shards of
/// `topic` and six state shards on exactly one live replica.
fn every_shard_held_once(status: &Value, topic: &str) -> bool {
    let mut held = BTreeMap::new();
    for replica in status["replicas"].as_array().into_iter().flatten() {
        if replica["live"] != true {
            continue;
        }
        for shard in replica["shards"].as_array().into_iter().flatten() {
            let name = shard["shard"].as_str().unwrap_or_default().to_string();
            *held.entry(name).or_insert(0) += 1;
        }
    }
    let expected: BTreeSet<String> = (0..PARTITIONS)
        .flat_map(|p| [format!("{topic}-{p}"), format!("{topic}-g-repartition-{p}")])
        .collect();
    held.keys().cloned().collect::<BTreeSet<_>>() == expected && held.values().all(|n| *n == 1)
}

/// The state shards replica `id` committed batches of.
fn state_shards(replicas: &Replicas, id: &str) -> BTreeSet<String> {
    replicas
        .commits(id)
        .into_iter()
        .map(|(shard, _)| shard)
        .filter(|shard| shard.contains("-repartition-"))
        .collect()
}

/// Replicas (none started yet) of the windowed query into Parquet, over a
/// new topic in a new bucket named after `hint`.
fn windowed_replicas(hint: &str, sink: Sink) -> (Replicas, String, String) {
    let b = bucket(hint);
    let topic = topic_named(hint, PARTITIONS);
    let replicas = Replicas::new(&windowed_pipeline(
        &b,
        &topic,
        &format!("{topic}-g"),
        false,
        sink,
    ));
    (replicas, b, topic)
}

/// Three replicas of the windowed query, once each holds shards; r0
/// serves `/metrics` on `metrics_port`, and r1 kills itself at `r1_crash`
/// (`WEIR_CRASH_AT`), if given.
fn three_windowed_replicas(
    hint: &str,
    sink: Sink,
    metrics_port: u16,
    r1_crash: Option<&str>,
) -> (Replicas, String, String) {
    let (mut replicas, b, topic) = windowed_replicas(hint, sink);
    // r0 serves its Prometheus metrics too.
    replicas.start_with(
        "r0",
        &["--metrics-addr".into(), format!("127.0.0.1:{metrics_port}")],
        &[],
    );
    let crash: Vec<(&str, &str)> = r1_crash
        .map(|at| ("WEIR_CRASH_AT", at))
        .into_iter()
        .collect();
    replicas.start_with("r1", &[], &crash);
    replicas.start("r2");
    replicas.wait_for_shards(&["r0", "r1", "r2"]);
    (replicas, b, topic)
}

#[test]
fn three_replicas_aggregate_windows_as_one_process_does() {
    let metrics_port = free_port();
    let (mut replicas, b, topic) =
        three_windowed_replicas("cluster-windows", Sink::Parquet, metrics_port, None);
    produce_timed(&topic, 0..=60, Duration::ZERO);
    // `weir status` shows each replica and its shards: every source and
    // state shard on exactly one live replica, the state shards' key
    // groups together covering the query's 128 once.
    let mut shown = Value::Null;
    replicas.wait_for(
        "weir status to show the 12 shards on the 3 replicas",
        Duration::from_secs(30),
        || {
            shown = replicas.status_json();
            every_shard_held_once(&shown, &topic)
        },
    );
    let mut groups: Vec<[u64; 2]> = shown["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["shards"].as_array().unwrap().clone())
        .filter(|s| s["role"] == "state")
        .map(|s| serde_json::from_value(s["key_groups"].clone()).unwrap())
        .collect();
    groups.sort();
    assert_eq!(groups.first().map(|g| g[0]), Some(0), "{shown:#}");
    assert_eq!(groups.last().map(|g| g[1]), Some(127), "{shown:#}");
    assert!(
        groups.windows(2).all(|w| w[0][1] + 1 == w[1][0]),
        "key groups overlap or leave a gap: {groups:?}"
    );
    // A replica's /metrics has a series per shard it runs.
    let r0_shards: Vec<String> = shown["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["replica"] == "r0")
        .flat_map(|r| r["shards"].as_array().unwrap().clone())
        .map(|s| format!("replicated/{}", s["shard"].as_str().unwrap()))
        .collect();
    assert!(!r0_shards.is_empty(), "{shown:#}");
    replicas.wait_for(
        "r0's /metrics to count a committed batch of each of its shards",
        Duration::from_secs(30),
        || {
            scrape_metrics(metrics_port).is_ok_and(|m| {
                r0_shards.iter().all(|query| {
                    metric_value(&m, "weir_batches_total", &[("query", query)])
                        .is_some_and(|n| n >= 1.0)
                })
            })
        },
    );
    let text = replicas.status_text();
    for expected in [
        "3 live replica(s)",
        "replica r0",
        "replica r2",
        "state shards:",
        "key groups 0-",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    assert_windows_as_one_process(&mut replicas, &b, &topic, Sink::Parquet);
    // A report that is not one is named, and the rest still shown.
    crate::s3::block_on(async {
        use object_store::ObjectStoreExt;
        crate::s3::store(&format!("s3://{b}/replicated/ck"))
            .put(
                &object_store::path::Path::from("replicas/junk.json"),
                "{\"replica\": 7}".into(),
            )
            .await
            .unwrap();
    });
    // Stopped, the replicas say so, and no shard is held.
    let text = replicas.status_text();
    assert!(
        text.contains("unreadable report replicas/junk.json: not a replica report"),
        "{text}"
    );
    assert!(
        text.contains("0 live replica(s)") && text.matches(": stopped").count() == 3,
        "{text}"
    );
    assert!(text.contains("shards no live replica runs:"), "{text}");
    // The work was shared: state shards ran on more than one replica.
    let holders = ["r0", "r1", "r2"]
        .iter()
        .filter(|id| !state_shards(&replicas, id).is_empty())
        .count();
    assert!(holders >= 2, "state shards ran on {holders} replica(s)");
}

/// Into a Delta table on S3, which every state shard commits to. r1 is
/// killed (SIGKILL) in the middle of a batch: the first of its shards to
/// reach batch 12 kills the process after writing that batch's output (its
/// repartition records, or its Delta commit) and before committing the
/// batch to its checkpoint; the next owner replays it.
#[test]
fn a_killed_replicas_state_shards_restore_from_s3_and_the_windows_stay_the_same() {
    let (mut replicas, b, topic) = three_windowed_replicas(
        "cluster-windows-kill",
        Sink::Delta,
        free_port(),
        Some("before-commit@12"),
    );
    let feeder_topic = topic.clone();
    // Orders keep arriving, one every 60 ms, across the kill.
    let feeder = std::thread::spawn(move || {
        produce_timed(&feeder_topic, 0..=400, Duration::from_millis(60));
    });
    replicas.wait_for("r1 to die mid-batch", Duration::from_secs(90), || {
        replicas
            .stderr("r1")
            .contains("WEIR_CRASH_AT=before-commit@12 reached")
    });
    let killed = Instant::now();
    replicas.reap_crashed("r1");
    let moved = state_shards(&replicas, "r1");
    assert!(
        !moved.is_empty(),
        "r1 committed no state batch before it died"
    );
    replicas.wait_for(
        "the killed replica's state shards to commit elsewhere",
        Duration::from_secs(SESSION_TIMEOUT_S * 2 + 40),
        || {
            ["r0", "r2"]
                .iter()
                .flat_map(|id| state_shards(&replicas, id))
                .any(|shard| moved.contains(&shard))
        },
    );
    eprintln!(
        "a killed replica's state shards ({moved:?}) committed elsewhere {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    feeder.join().unwrap();
    assert_windows_as_one_process(&mut replicas, &b, &topic, Sink::Delta);
}

/// A zombie: a replica paused (`SIGSTOP`) past its session timeout while it
/// holds source and state shards, then resumed once the other replica has
/// taken them over. It commits no batch the other committed — no offsets,
/// no repartition batch taken twice, no state, no output — and the windows
/// are still one process's.
#[test]
fn a_stalled_replica_commits_nothing_once_replaced() {
    let (mut replicas, b, topic) = windowed_replicas("cluster-zombie", Sink::Parquet);
    replicas.start("r0");
    replicas.start("r1");
    replicas.wait_for_shards(&["r0", "r1"]);
    let feeder_topic = topic.clone();
    let feeder = std::thread::spawn(move || {
        produce_timed(&feeder_topic, 0..=400, Duration::from_millis(60));
    });
    replicas.wait_for(
        "r1 to commit state batches",
        Duration::from_secs(60),
        || !state_shards(&replicas, "r1").is_empty(),
    );
    let r1_shards: BTreeSet<String> = replicas
        .commits("r1")
        .into_iter()
        .map(|(shard, _)| shard)
        .collect();
    replicas.signal("r1", libc::SIGSTOP);
    let before = replicas.commits("r0").len();
    // r0 takes the stalled replica's shards (after the session timeout and
    // the lease's expiry) and commits their batches.
    replicas.wait_for(
        "r0 to take over the stalled replica's state shards",
        Duration::from_secs(SESSION_TIMEOUT_S * 3 + 30),
        || {
            replicas.commits("r0")[before..]
                .iter()
                .any(|(shard, _)| r1_shards.contains(shard) && shard.contains("-repartition-"))
        },
    );
    replicas.signal("r1", libc::SIGCONT);
    feeder.join().unwrap();
    let r1_log = replicas.stderr("r1");
    assert_windows_as_one_process(&mut replicas, &b, &topic, Sink::Parquet);
    // Woken, the replaced replica found its shards gone.
    assert!(
        r1_log.contains("taken over") || r1_log.contains("shards revoked"),
        "the stalled replica did not notice it was replaced:\n{}",
        tail(&r1_log)
    );
}

#[test]
fn scaling_from_one_replica_to_three_and_back_to_two_keeps_the_windows() {
    let (mut replicas, b, topic) = windowed_replicas("cluster-scale", Sink::Parquet);
    replicas.start("r0");
    replicas.wait_for("r0 to hold shards", Duration::from_secs(60), || {
        replicas.holds_shards("r0")
    });
    let feeder_topic = topic.clone();
    // Orders keep arriving, one every 50 ms, while replicas come and go.
    let feeder = std::thread::spawn(move || {
        produce_timed(&feeder_topic, 0..=400, Duration::from_millis(50));
    });
    replicas.wait_for("r0 to commit batches", Duration::from_secs(60), || {
        replicas.commits("r0").len() > 4
    });
    // 1 → 3: the group moves shards, and their state, to the newcomers.
    replicas.start("r1");
    replicas.start("r2");
    replicas.wait_for(
        "r1 and r2 to commit batches",
        Duration::from_secs(90),
        || !replicas.commits("r1").is_empty() && !replicas.commits("r2").is_empty(),
    );
    // 3 → 2: r1 leaves; its shards finish their batch and move.
    replicas.signal("r1", libc::SIGTERM);
    let mut leaving = replicas.running.remove("r1").unwrap();
    assert!(
        leaving.wait().unwrap().success(),
        "{}",
        tail(&replicas.stderr("r1"))
    );
    feeder.join().unwrap();
    assert_windows_as_one_process(&mut replicas, &b, &topic, Sink::Parquet);
}

/// CDC changes from `topic` into the cdc-upsert foreachBatch plugin: its
/// `users` output upserts into PostgreSQL at `url` (newest `ts_ms` wins,
/// deletes leave tombstones; each shard's epochs in the ledger under its
/// own query id), its `raw` output archives every change as Parquet on S3.
fn cdc_pipeline(b: &str, topic: &str, url: &str) -> String {
    let users = format!(
        "kind = \"postgres\"\nurl = \"{url}\"\ntable = \"users\"\nmode = \"upsert\"\n\
         key = [\"user_id\"]\nnewer_than = \"ts_ms\"\n\
         delete_when = {{ column = \"op\", equals = \"d\" }}"
    );
    kafka_pipeline(b, topic, &format!("{topic}-g"), false, "", |name| {
        crate::foreach_batch::cdc_schema_and_sink(&users, &format!("s3://{b}/{name}/raw"))
    })
}

/// foreachBatch across replicas into PostgreSQL: two replicas share a
/// topic whose changes of one user are spread over every partition (so
/// shards race on the same rows), one is killed mid-stream; the table ends
/// as every user's latest state, the ledger has each shard's epoch once,
/// and the archive holds every change once.
#[test]
fn replicas_upsert_into_postgresql_exactly_once() {
    use crate::foreach_batch::{cdc_stream, latest_state, users_table};
    let stream = cdc_stream(43, 24);
    let changes: Vec<_> = stream.iter().flatten().collect();
    // Some change is sent after a newer one of the same user (which the
    // newer_than guard must keep), and some user is deleted.
    assert!(changes.iter().enumerate().any(|(i, late)| {
        changes[..i]
            .iter()
            .any(|c| c.user_id == late.user_id && c.ts_ms > late.ts_ms)
    }));
    assert!(changes.iter().any(|c| c.op == "d"));
    let url = crate::pg::database("cluster_cdc");
    crate::pg::query(
        &url,
        "CREATE TABLE users (user_id bigint PRIMARY KEY, email text, ts_ms bigint NOT NULL)",
    );
    let b = bucket("cluster-cdc");
    let topic = topic_named("cluster-cdc", PARTITIONS);
    let mut replicas = Replicas::new(&cdc_pipeline(&b, &topic, &url));
    replicas.start("r0");
    replicas.start("r1");
    replicas.wait_for_shards(&["r0", "r1"]);
    let send = |from: usize, to: usize| {
        use rdkafka::producer::{BaseRecord, Producer};
        let producer = unbatched_producer(&broker().servers);
        for (i, change) in changes.iter().enumerate().take(to).skip(from) {
            let value = change.json();
            producer
                .send(
                    BaseRecord::<(), _>::to(&topic)
                        .partition(i as i32 % PARTITIONS)
                        .payload(&value),
                )
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    };
    let half = changes.len() / 2;
    send(0, half);
    replicas.wait_for("r1 to commit batches", Duration::from_secs(60), || {
        !replicas.commits("r1").is_empty()
    });
    replicas.kill("r1");
    send(half, changes.len());
    let raw = format!("s3://{b}/replicated/raw");
    replicas.wait_for(
        "every change in the archive",
        Duration::from_secs(120),
        || shard_rows(&raw).len() >= changes.len(),
    );
    replicas.stop_all();
    assert_eq!(users_table(&url), latest_state(&stream));
    let twice = crate::pg::query(
        &url,
        "SELECT query_id, epoch FROM weir_epochs GROUP BY query_id, output, epoch \
         HAVING count(*) > 1",
    );
    assert!(twice.is_empty(), "epochs recorded twice: {twice:?}");
    let writers = crate::pg::query(&url, "SELECT DISTINCT query_id FROM weir_epochs");
    assert_eq!(
        writers.len(),
        PARTITIONS as usize,
        "one ledger writer per shard"
    );
    let key = |op: &str, user: i64, ts: i64| format!("{op} {user} {ts}");
    let mut archived: Vec<String> = shard_rows(&raw)
        .iter()
        .map(|r| {
            key(
                r["op"].as_str().unwrap(),
                r["user_id"].as_i64().unwrap(),
                r["ts_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut sent: Vec<String> = changes
        .iter()
        .map(|c| key(c.op, c.user_id, c.ts_ms))
        .collect();
    archived.sort();
    sent.sort();
    assert_eq!(archived, sent, "the archive holds every change once");
}

#[test]
fn a_replicated_pipeline_is_refused_where_replicas_cannot_keep_their_promises() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    let original = windowed_pipeline("bucket", "orders", "orders-g", false, Sink::Parquet);
    crate::common::assert_refusals(
        &file,
        &original,
        &[
            (
                "checkpoint = \"s3://bucket/replicated/ck\"",
                "checkpoint = \"ck\"",
                "keeps its checkpoint on object storage",
            ),
            (
                "path = \"s3://bucket/replicated/out\"",
                "path = \"out\"",
                "writes its output to object storage, not to the local directory",
            ),
            (
                "processing_time = \"200ms\"",
                "available_now = true",
                "replicas run until stopped",
            ),
            (
                "topics = [\"orders\"]",
                "topic_pattern = \"orders.*\"",
                "names its topics",
            ),
            (
                "group_id = \"orders-g\"",
                "group_id = \"orders g\"",
                "invalid group_id",
            ),
            (
                "session_timeout = \"6s\"",
                "session_timeout = \"1s\"",
                "session_timeout must be between 6s and 5m",
            ),
            (
                "repartition_partitions = 6",
                "repartition_partitions = 500",
                "repartition_partitions must be 1 to 128",
            ),
            (
                "checkpoint = \"s3://bucket/replicated/ck\"",
                "checkpoint = \"s3://bucket/replicated/ck\"\n\
                 drop_duplicates_within_watermark = [\"id\"]",
                "one stateful operator",
            ),
        ],
    );
    // --replica runs only a [cluster] query.
    let single = windowed_pipeline("bucket", "orders", "", true, Sink::Parquet);
    std::fs::write(&file, single).unwrap();
    let out = weir()
        .arg("run")
        .arg(&file)
        .args(["--replica", "a"])
        .output()
        .unwrap();
    let err = crate::common::assert_exit(&out, 2);
    assert!(
        err.contains("--replica runs a query that declares [cluster]"),
        "{err}"
    );
}
