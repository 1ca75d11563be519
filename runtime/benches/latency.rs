//! End-to-end latency, file → Wasm transform (enrich) → file, measured side
//! by side in one run: the continuous trigger against back-to-back
//! micro-batches, on the same arrivals.
//!
//! A writer publishes one small JSON file every 20 ms (written under a
//! hidden name, then renamed); each row carries the time it was published.
//! A watcher polls the sink's commit log every 0.2 ms and, for each row,
//! records now − published. Prints p50, p99 and max per trigger and their
//! ratios. The query runs in this process (the `weir` library), so both
//! sides share the machine's two cores with the writer and the watcher.
//!
//! Run with `./dev bench` or `cargo bench -p weir --bench latency`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use weir::PluginEngine;
use weir::config::Pipeline;
use weir::query::Query;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let files = if measuring { 500 } else { 20 };
    println!(
        "end-to-end latency, file → enrich (Wasm) → file, {files} files of one row, one every 20 ms\n"
    );
    println!(
        "   {:<34} {:>9} {:>9} {:>9} {:>7}",
        "trigger", "p50 ms", "p99 ms", "max ms", "rows"
    );
    let mut results = Vec::new();
    for (label, trigger) in [
        ("continuous (epochs every 1 s)", "continuous = \"1s\""),
        ("micro-batch, back-to-back", ""),
    ] {
        let mut latencies = measure(trigger, files);
        latencies.sort_unstable();
        let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        let (p50, p99, max) = (pick(0.50), pick(0.99), *latencies.last().unwrap());
        println!(
            "   {:<34} {:>9.2} {:>9.2} {:>9.2} {:>7}",
            label,
            p50 as f64 / 1e3,
            p99 as f64 / 1e3,
            max as f64 / 1e3,
            latencies.len()
        );
        results.push((p50, p99));
    }
    let (continuous, micro) = (results[0], results[1]);
    println!(
        "\n   micro-batch / continuous: p50 {:.1}x, p99 {:.1}x   (goal: continuous p99 < 10 ms)",
        micro.0 as f64 / continuous.0 as f64,
        micro.1 as f64 / continuous.1 as f64
    );
}

/// Runs the query with `trigger` while files arrive; returns each row's
/// latency in µs.
fn measure(trigger: &str, files: u64) -> Vec<i64> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            r#"name = "latency"
checkpoint = "ck"

[trigger]
{trigger}

[source]
kind = "file"
path = "in"
format = "json"
order = "name"
schema = [
  {{ name = "id", type = "long", nullable = false }},
  {{ name = "published_us", type = "long" }},
]

[[transform]]
name = "enrich"
plugin = "{}"
config = {{ input = "id", output = "id_x2", multiply = 2.0 }}

[sink]
kind = "json"
path = "out"
"#,
            weir_fixtures::ENRICH
        ),
    )
    .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The query's future is not `Send`: it runs on a thread of its own.
    let running = std::thread::spawn(move || {
        let pipeline = Pipeline::load(&file).unwrap();
        let query = Query::new(pipeline, PluginEngine::new().unwrap()).with_stop_signal(stop_rx);
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(query.run())
            .unwrap();
    });

    let input = dir.path().join("in");
    let writer = std::thread::spawn(move || {
        // Let the query start (compile the plugin) before the clock runs.
        std::thread::sleep(Duration::from_millis(1500));
        for n in 0..files {
            let hidden = input.join(format!(".{n:06}.json"));
            std::fs::write(
                &hidden,
                format!("{{\"id\": {n}, \"published_us\": {}}}\n", now_us()),
            )
            .unwrap();
            std::fs::rename(&hidden, input.join(format!("{n:06}.json"))).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let latencies = watch(&dir.path().join("out"), files);
    writer.join().unwrap();
    stop_tx.send(true).unwrap();
    running.join().unwrap();
    latencies
}

/// Polls the sink's commit log until `rows` rows arrived.
fn watch(out: &Path, rows: u64) -> Vec<i64> {
    let log = out.join("_weir_log");
    let mut seen_entries = BTreeSet::new();
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while (latencies.len() as u64) < rows {
        assert!(Instant::now() < deadline, "rows stopped arriving");
        let Ok(entries) = std::fs::read_dir(&log) else {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        };
        let mut new = Vec::new();
        for entry in entries.flatten() {
            // Only committed entries (named by batch id); the store writes
            // each under a temporary name first.
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.parse::<u64>().is_ok() && seen_entries.insert(name) {
                new.push(entry.path());
            }
        }
        let observed = now_us();
        for path in new {
            let entry: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            for file in entry["files"].as_array().unwrap() {
                let text = std::fs::read_to_string(out.join(file.as_str().unwrap())).unwrap();
                for line in text.lines() {
                    let row: Value = serde_json::from_str(line).unwrap();
                    latencies.push(observed - row["published_us"].as_i64().unwrap());
                }
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    latencies
}
