//! State benchmarks, measured side by side in one run:
//!
//! 1. a keyed state update through `StateStore` (RocksDB backend) vs a raw
//!    RocksDB put with the WAL off, same keys and values (goal <= 1.5x);
//! 2. windowed aggregation (5-minute tumbling count and sum) over 1M events
//!    with 100k keys, in 10 batches: events/s;
//! 3. the fixed cost of an empty batch: source log, offsets, state flush
//!    and commit entries (goal <= 5 ms).
//!
//! Run with `cargo bench -p weir --bench state`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use weir::checkpoint::{Checkpoint, CommitEntry, OffsetEntry};
use weir::config::OutputMode;
use weir::operator::{
    AggregateFn, AggregateSpec, Operator, OperatorContext, WindowAggregate, WindowAggregateConfig,
    WindowKind,
};
use weir::state::{BackendKind, KeyedState};
use weir::storage::Location;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(b"user-key");
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let scale = if measuring { 1 } else { 100 };
    println!("weir state benchmarks\n");

    // 1. StateStore update vs raw RocksDB put.
    let updates = 1_000_000 / scale;
    let keys = 100_000 / scale as u64;
    let value = [7u8; 24];
    let dir = tempfile::tempdir().unwrap();
    let raw = {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        rocksdb::DB::open(&options, dir.path()).unwrap()
    };
    let mut wal_off = rocksdb::WriteOptions::default();
    wal_off.disable_wal(true);
    let t = Instant::now();
    for i in 0..updates as u64 {
        raw.put_opt(key(i % keys), value, &wal_off).unwrap();
    }
    let t_raw = t.elapsed();

    let ck_dir = tempfile::tempdir().unwrap();
    let location = Location::Local(ck_dir.path().to_path_buf());
    let checkpoint = Checkpoint::open(&location, "bench").await.unwrap();
    let mut store = KeyedState::open_single(checkpoint.store(), "bench", BackendKind::Rocksdb, 0)
        .await
        .unwrap();
    let t = Instant::now();
    for i in 0..updates as u64 {
        store.group_mut(0).put(&key(i % keys), &value).unwrap();
    }
    let t_store = t.elapsed();
    let t = Instant::now();
    store.commit(1).await.unwrap();
    let t_flush = t.elapsed();
    println!("1. {updates} updates over {keys} keys");
    println!(
        "   raw RocksDB put (WAL off) {:>7.0} ns/update   StateStore {:>7.0} ns/update   = {:.2}x raw (goal <= 1.5x)",
        per(t_raw, updates),
        per(t_store, updates),
        t_store.as_secs_f64() / t_raw.as_secs_f64()
    );
    println!(
        "   flushing the batch's changelog to the checkpoint: {:.1} ms\n",
        t_flush.as_secs_f64() * 1e3
    );

    // 2. Window aggregation over 1M events, 100k keys.
    let events = 1_000_000 / scale;
    let batches = 10;
    let config = WindowAggregateConfig {
        group_by: vec!["user".into()],
        time_column: "ts".into(),
        window: WindowKind::Tumbling { size_ms: 300_000 },
        aggregates: vec![
            AggregateSpec {
                function: AggregateFn::Count,
                column: None,
                name: "n".into(),
            },
            AggregateSpec {
                function: AggregateFn::Sum,
                column: Some("amount".into()),
                name: "total".into(),
            },
        ],
        output_mode: OutputMode::Append,
    };
    for backend in [BackendKind::Rocksdb, BackendKind::Memory] {
        let mut operator = WindowAggregate::new(config.clone());
        let mut state =
            KeyedState::open_single(checkpoint.store(), &format!("agg-{backend:?}"), backend, 0)
                .await
                .unwrap();
        let per_batch = events / batches;
        let mut busy = Duration::ZERO;
        let mut emitted = 0;
        for b in 0..batches {
            let ids: Vec<i64> = (0..per_batch as i64)
                .map(|i| (i * 7919 + b as i64) % keys as i64)
                .collect();
            let batch = RecordBatch::try_from_iter(vec![
                (
                    "user",
                    Arc::new(StringArray::from_iter_values(
                        ids.iter().map(|i| format!("user-{i}")),
                    )) as ArrayRef,
                ),
                (
                    "ts",
                    Arc::new(Int64Array::from_iter_values(
                        (0..per_batch as i64).map(|i| b as i64 * 60_000 + i % 60_000),
                    )),
                ),
                (
                    "amount",
                    Arc::new(Float64Array::from_iter_values(
                        (0..per_batch).map(|i| i as f64),
                    )),
                ),
            ])
            .unwrap();
            let t = Instant::now();
            let mut ctx = OperatorContext {
                batch_time_ms: 0,
                batch_id: b as u64,
                watermark_ms: Some(b as i64 * 60_000 - 120_000),
                late_rows_watermark_ms: Some(b as i64 * 60_000 - 120_000),
                state: state.group_mut(0),
                rows_dropped_by_watermark: 0,
                quarantine: Default::default(),
            };
            operator.process_batch(&batch, &mut ctx).unwrap();
            emitted += operator
                .handle_batch_end(&mut ctx)
                .unwrap()
                .iter()
                .map(|b| b.num_rows())
                .sum::<usize>();
            state.commit(b as u64 + 1).await.unwrap();
            busy += t.elapsed();
        }
        println!(
            "2. windowed count+sum, {events} events, {keys} keys, {batches} batches, {backend:?} state: {:.0} events/s ({} windows emitted, {} state rows)",
            events as f64 / busy.as_secs_f64(),
            emitted,
            state.metrics().rows
        );
    }

    // 3. Fixed cost of an empty batch.
    let rounds = 200 / scale.min(100) as u64;
    let mut state = KeyedState::open_single(checkpoint.store(), "empty", BackendKind::Rocksdb, 0)
        .await
        .unwrap();
    let t = Instant::now();
    for n in 0..rounds {
        let log = weir::source::SourceLogEntry { files: vec![] };
        checkpoint.write_source_log(0, n, &log).await.unwrap();
        let offsets = OffsetEntry {
            batch_id: n,
            batch_timestamp_ms: 0,
            source_files: vec![0],
            watermark_ms: Some(0),
            late_rows_watermark_ms: Some(0),
        };
        checkpoint.write_offsets(&offsets).await.unwrap();
        state.commit(n + 1).await.unwrap();
        checkpoint
            .write_commit(&CommitEntry {
                batch_id: n,
                output_rows: 0,
                next_watermark_ms: Some(0),
                next_input_watermarks_ms: Vec::new(),
                sink_commit: None,
            })
            .await
            .unwrap();
    }
    println!(
        "\n3. empty batch (source log + offsets + state flush + commit): {:.2} ms (goal <= 5 ms)",
        t.elapsed().as_secs_f64() * 1e3 / rounds as f64
    );
}

fn per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e9 / n as f64
}
