//! Sink benchmarks, measured side by side in one run on the same batches
//! (local disk): the exactly-once Parquet file sink, the Delta Lake sink
//! (one Delta commit per batch, with its application transaction) and a
//! foreachBatch Delta output in merge mode (one MERGE per batch, half the
//! keys new, half updates). Prints per-batch time, rows/s and each one's
//! cost relative to the Parquet sink; then what fsync costs a batch's
//! writes (object_store's LocalFileSystem vs Weir's DurableLocal).
//!
//! Run with `cargo bench -p weir --bench sinks` (`./dev bench`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use weir::config::{DeltaOutputConfig, DeltaOutputMode, DeltaSinkConfig, OutputMode, SinkKind};
use weir::sink::{DeltaMergeOutput, DeltaSink, FileSink, Sink};
use weir::storage::Location;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Batch `n`: ids `n * rows / 2 ..` (so half of them were in batch n-1),
/// with a change time that grows with `n` (so MERGE updates them).
fn batch(n: i64, rows: i64) -> RecordBatch {
    let first = n * rows / 2;
    let ids: Vec<i64> = (first..first + rows).collect();
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("id", Arc::new(Int64Array::from(ids.clone()))),
        (
            "name",
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("customer-{}", i % 1000)),
            )),
        ),
        (
            "amount",
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|i| *i as f64 * 0.25),
            )),
        ),
        (
            "ts_ms",
            Arc::new(Int64Array::from_iter_values(
                ids.iter().map(|i| n * 1_000_000_000 + i),
            )),
        ),
    ];
    RecordBatch::try_from_iter(columns).unwrap()
}

/// Commits every input batch to `$sink` as batches 0, 1, ..., timed.
macro_rules! time_commits {
    ($name:expr, $sink:expr, $inputs:expr) => {{
        let started = Instant::now();
        for (n, batch) in $inputs.iter().enumerate() {
            $sink
                .commit(n as u64, std::slice::from_ref(batch))
                .await
                .unwrap();
        }
        Measured {
            name: $name,
            total: started.elapsed(),
        }
    }};
}

struct Measured {
    name: &'static str,
    total: Duration,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let (batches, rows) = if measuring { (20, 50_000) } else { (2, 100) };
    println!("weir sink benchmarks: {batches} batches of {rows} rows, local disk\n");
    // The same batches for every sink; the merge sink's batch n updates the
    // upper half of batch n-1's keys and inserts as many new ones.
    let inputs: Vec<RecordBatch> = (0..batches).map(|n| batch(n, rows)).collect();
    let dir = tempfile::tempdir().unwrap();
    let location = |name: &str| Location::Local(dir.path().join(name));

    let mut results = Vec::new();
    let mut parquet =
        FileSink::open(&location("parquet"), SinkKind::Parquet, Default::default()).unwrap();
    results.push(time_commits!("parquet files", parquet, &inputs));
    let mut delta = DeltaSink::new(
        location("delta"),
        DeltaSinkConfig::default(),
        OutputMode::Append,
        "bench",
    );
    results.push(time_commits!("delta append", delta, &inputs));
    let mut merge = DeltaMergeOutput::new(
        DeltaOutputConfig {
            path: location("merge"),
            mode: DeltaOutputMode::Merge,
            key: vec!["id".into()],
            newer_than: Some("ts_ms".into()),
            delete_when: None,
            table: DeltaSinkConfig::default(),
        },
        "bench",
        "merge",
    );
    results.push(time_commits!("delta merge", merge, &inputs));

    let base = results[0].total;
    println!(
        "{:<14} {:>12} {:>12} {:>10}",
        "sink", "ms/batch", "rows/s", "vs parquet"
    );
    for r in &results {
        println!(
            "{:<14} {:>12.1} {:>12.0} {:>9.2}x",
            r.name,
            r.total.as_secs_f64() * 1e3 / batches as f64,
            (batches * rows) as f64 / r.total.as_secs_f64(),
            r.total.as_secs_f64() / base.as_secs_f64(),
        );
    }
    println!(
        "\n(the replay check is included: each Delta commit first reads the table's\n\
         latest application-transaction version)"
    );
    durability_cost(&inputs, dir.path()).await;
}

/// What fsync costs a batch: the writes a file-sink batch makes (its data
/// file, its `_weir_log/N` and the checkpoint's `commits/N`), through
/// object_store's LocalFileSystem and through Weir's DurableLocal, which
/// fsyncs each file and its directory before returning.
async fn durability_cost(inputs: &[RecordBatch], dir: &std::path::Path) {
    use object_store::local::LocalFileSystem;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
    use weir::storage::DurableLocal;

    let payloads: Vec<bytes::Bytes> = inputs
        .iter()
        .map(|b| {
            let mut out = Vec::new();
            let mut writer =
                parquet::arrow::ArrowWriter::try_new(&mut out, b.schema(), None).unwrap();
            writer.write(b).unwrap();
            writer.close().unwrap();
            out.into()
        })
        .collect();
    let plain_dir = dir.join("plain");
    let durable_dir = dir.join("durable");
    std::fs::create_dir_all(&plain_dir).unwrap();
    std::fs::create_dir_all(&durable_dir).unwrap();
    let stores: [(&str, Arc<dyn ObjectStore>); 2] = [
        (
            "no fsync",
            Arc::new(LocalFileSystem::new_with_prefix(&plain_dir).unwrap()),
        ),
        (
            "fsync (weir)",
            Arc::new(DurableLocal::new(&durable_dir).unwrap()),
        ),
    ];
    let mut totals = Vec::new();
    for (name, store) in &stores {
        let started = Instant::now();
        for (n, payload) in payloads.iter().enumerate() {
            store
                .put(
                    &ObjectPath::from(format!("out/part-{n:06}.parquet")),
                    payload.clone().into(),
                )
                .await
                .unwrap();
            for entry in [format!("out/_weir_log/{n}"), format!("ck/commits/{n}")] {
                store
                    .put_opts(
                        &ObjectPath::from(entry),
                        PutPayload::from("{}"),
                        PutMode::Create.into(),
                    )
                    .await
                    .unwrap();
            }
        }
        totals.push((*name, started.elapsed()));
    }
    let batches = payloads.len() as f64;
    let mib = payloads.iter().map(|p| p.len()).sum::<usize>() as f64 / batches / (1 << 20) as f64;
    println!("\nwrites of one file-sink batch ({mib:.1} MiB data file + 2 log entries):");
    for (name, total) in &totals {
        println!(
            "{name:<14} {:>12.2} ms/batch {:>9.2}x",
            total.as_secs_f64() * 1e3 / batches,
            total.as_secs_f64() / totals[0].1.as_secs_f64()
        );
    }
}
