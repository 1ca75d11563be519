//! Per-batch overhead as a query ages, measured side by side in one run:
//! the same near-empty batch (one one-row file, no plugin) at batch ~100
//! and at batch ~20,000, with retention and compaction on (the defaults:
//! 100 batches retained, compaction every 10), for a JSON sink whose rows
//! are rolled into 16 KiB files and for one that keeps a file per batch
//! (whose compacted log, like Spark's file sink log, lists every file).
//!
//! The query runs in this process on a back-to-back trigger; a writer
//! keeps three files ahead of it. Each batch's time is the query's own
//! measurement (`BatchProgress::durations.total`); the bench prints the
//! median and p90 of batches 100..200 and of the last 100, and their ratio.
//! The checkpoint lives in `/dev/shm` when the machine has it (fsync on a
//! small VM disk costs ~10 ms a file and would hide the overhead); the
//! first 200 batches are also run on disk to show that cost.
//!
//! Run with `cargo bench -p weir --bench retention` (20,000 batches; as a
//! test, `cargo test --all-targets` runs 300 in memory only).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir::PluginEngine;
use weir::config::Pipeline;
use weir::query::Query;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PIPELINE: &str = r#"name = "age"
checkpoint = "ck"

[source]
kind = "file"
path = "in"
format = "json"
max_files_per_trigger = 1
clean_source = "delete"
max_file_age = "2s"
schema = [ { name = "id", type = "long", nullable = false } ]

[sink]
kind = "json"
path = "out"
"#;

/// The sink's rows rolled into files of up to 16 KiB.
const ROLLED: &str = "target_file_size = \"16KiB\"\n";

/// Runs `batches` batches in `dir` (`sink_extra` added to `[sink]`);
/// returns each batch's time, by id.
fn run(dir: &Path, batches: u64, sink_extra: &str) -> Vec<Duration> {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let text = format!("{PIPELINE}{sink_extra}");
    let pipeline = Pipeline::parse(&text, "age.toml", dir).unwrap();
    let times = Arc::new(Mutex::new(Vec::new()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let input = dir.join("in");
    // Three files ahead of the commits, so the query never finds the
    // directory empty (it would wait 100 ms before looking again).
    let committed = Arc::new(AtomicU64::new(0));
    let seen = committed.clone();
    let writer = std::thread::spawn(move || {
        for id in 1..=batches {
            while id > seen.load(Ordering::Acquire) + 3 {
                std::thread::sleep(Duration::from_micros(100));
            }
            let hidden = input.join(format!(".{id}.json"));
            std::fs::write(&hidden, format!("{{\"id\": {id}}}\n")).unwrap();
            std::fs::rename(&hidden, input.join(format!("{id:06}.json"))).unwrap();
        }
    });
    let recorded = times.clone();
    let query = Query::new(pipeline, PluginEngine::new().unwrap())
        .with_stop_signal(stop_rx)
        .on_progress(move |p| {
            recorded.lock().unwrap().push(p.durations.total);
            committed.store(p.batch_id + 1, Ordering::Release);
            if p.batch_id + 1 >= batches {
                let _ = stop_tx.send(true);
            }
        });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(query.run()).unwrap();
    writer.join().unwrap();
    times.lock().unwrap().clone()
}

/// (median, p90) in ms.
fn stats(times: &[Duration]) -> (f64, f64) {
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    (ms[ms.len() / 2], ms[ms.len() * 9 / 10])
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let batches: u64 = if measuring { 20_000 } else { 300 };
    println!("weir retention benchmark: per-batch overhead as a query ages\n");
    let shm = Path::new("/dev/shm");
    let memory_dir = || match shm.is_dir() {
        true => tempfile::tempdir_in(shm).unwrap(),
        false => tempfile::tempdir().unwrap(),
    };
    println!(
        "{batches} batches per run, in {}\n",
        if shm.is_dir() {
            "/dev/shm"
        } else {
            "a temp dir"
        }
    );
    for (what, extra) in [
        ("json sink, rolled at 16 KiB", ROLLED),
        ("json sink, one file per batch", ""),
    ] {
        let dir = memory_dir();
        let started = Instant::now();
        let times = run(dir.path(), batches, extra);
        let early = stats(&times[100..200]);
        let late = stats(&times[times.len() - 100..]);
        println!("{what} ({:.0} s):", started.elapsed().as_secs_f64());
        println!(
            "  batch 100..200:   median {:.2} ms, p90 {:.2} ms",
            early.0, early.1
        );
        println!(
            "  last 100 batches: median {:.2} ms, p90 {:.2} ms",
            late.0, late.1
        );
        println!(
            "  ratio (late / early): median {:.2}x, p90 {:.2}x",
            late.0 / early.0,
            late.1 / early.1
        );
    }
    if !measuring {
        return;
    }
    let disk = tempfile::tempdir().unwrap();
    let on_disk = run(disk.path(), 200, ROLLED);
    let disk_stats = stats(&on_disk[100..200]);
    println!(
        "\non disk (temp dir, fsync per file), rolled, batch 100..200: median {:.2} ms, p90 {:.2} ms",
        disk_stats.0, disk_stats.1
    );
}
