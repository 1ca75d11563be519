//! Stateful function benchmarks, measured side by side in one run:
//!
//! 1. session windows (1-minute gap, count) over the same events: the
//!    `sessionize` Wasm plugin vs the built-in session window, both on
//!    RocksDB state: rows/s and their ratio;
//! 2. the cost of one key-group call: `keyed-testkit` on one-row groups
//!    (lend key and rows, read and write the key's state, one output row).
//!
//! Run with `cargo bench -p weir --bench stateful`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use weir::PluginEngine;
use weir::checkpoint::Checkpoint;
use weir::config::{
    OutputMode, PluginLimits, StateTimeout, StatefulFunctionConfig, TransformConfig,
};
use weir::operator::{
    AggregateFn, AggregateSpec, Operator, OperatorContext, StatefulFunction, WindowAggregate,
    WindowAggregateConfig, WindowKind,
};
use weir::state::{BackendKind, KeyedState};
use weir::storage::Location;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const GAP_MS: i64 = 60_000;
/// Event times start here, after the initial watermark (0).
const BASE_MS: i64 = 1_764_000_000_000;

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let scale = if measuring { 1 } else { 50 };
    // Async only for checkpoint I/O; plugin calls run on this thread, outside
    // the runtime, as the query runs them on a blocking thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let location = Location::Local(dir.path().to_path_buf());
    let checkpoint = rt.block_on(Checkpoint::open(&location, "bench")).unwrap();
    let engine = PluginEngine::new().unwrap();
    println!("weir stateful function benchmarks\n");

    // 1. Sessions: plugin vs built-in on the same batches.
    let events = 500_000 / scale;
    let keys = 20_000 / scale as i64;
    let batches = 10;
    let input = session_batches(events, keys, batches);
    let builtin = WindowAggregate::new(WindowAggregateConfig {
        group_by: vec!["user".into()],
        time_column: "ts".into(),
        window: WindowKind::Session { gap_ms: GAP_MS },
        aggregates: vec![AggregateSpec {
            function: AggregateFn::Count,
            column: None,
            name: "count".into(),
        }],
        output_mode: OutputMode::Append,
    });
    let sessionize = stateful(
        &engine,
        weir_fixtures::SESSIONIZE,
        r#"{"time_column":"ts","gap":"1m"}"#,
        StateTimeout::EventTime,
    );
    let mut results = Vec::new();
    for (name, operator) in [
        (
            "built-in session window",
            Box::new(builtin) as Box<dyn Operator>,
        ),
        ("sessionize plugin (Wasm)", Box::new(sessionize)),
    ] {
        let (busy, emitted) = run(&rt, &checkpoint, name, operator, &input);
        println!(
            "1. {name:<26} {:>9.0} rows/s  ({events} events, {keys} keys, {batches} batches, {emitted} sessions)",
            events as f64 / busy.as_secs_f64()
        );
        results.push((busy, emitted));
    }
    assert_eq!(
        results[0].1, results[1].1,
        "both must emit the same sessions"
    );
    println!(
        "   plugin / built-in throughput: {:.2}x\n",
        results[0].0.as_secs_f64() / results[1].0.as_secs_f64()
    );

    // 2. One call per key group.
    let groups = 100_000 / scale;
    let one_row_groups = session_batches(groups, groups as i64, 1);
    let counter = stateful(
        &engine,
        weir_fixtures::KEYED_TESTKIT,
        "{}",
        StateTimeout::None,
    );
    let (busy, calls) = run(
        &rt,
        &checkpoint,
        "calls",
        Box::new(counter),
        &one_row_groups,
    );
    println!(
        "2. key-group call (one-row groups, state read + write, one output row): {:.2} us/call over {calls} calls",
        busy.as_secs_f64() * 1e6 / calls as f64
    );
}

/// `events` rows over `keys` users in `batches` batches, event time rising
/// 2 minutes per batch with users clicking every few seconds to minutes.
fn session_batches(events: usize, keys: i64, batches: usize) -> Vec<RecordBatch> {
    let per_batch = events / batches;
    (0..batches)
        .map(|b| {
            let users = (0..per_batch as i64).map(|i| format!("user-{}", (i * 7919) % keys));
            let times = (0..per_batch as i64)
                .map(|i| BASE_MS + b as i64 * 120_000 + (i * 104_729) % 120_000 + (i % 3) * GAP_MS);
            RecordBatch::try_from_iter(vec![
                (
                    "user",
                    Arc::new(StringArray::from_iter_values(users)) as ArrayRef,
                ),
                ("ts", Arc::new(Int64Array::from_iter_values(times))),
            ])
            .unwrap()
        })
        .collect()
}

fn stateful(
    engine: &PluginEngine,
    plugin: &str,
    config: &str,
    timeout: StateTimeout,
) -> StatefulFunction {
    let stage = TransformConfig {
        name: "bench".into(),
        plugin: PathBuf::from(plugin),
        config_json: config.into(),
        limits: PluginLimits::default(),
        on_swap_failure: Default::default(),
        on_error: Default::default(),
    };
    let instance = engine
        .load_stateful(&stage.name, &stage.plugin)
        .unwrap()
        .instantiate(&stage.config_json, stage.limits)
        .unwrap();
    StatefulFunction::new(
        StatefulFunctionConfig {
            stage,
            key: vec!["user".into()],
            timeout,
            event_time_column: (timeout == StateTimeout::EventTime).then(|| "ts".into()),
        },
        instance,
    )
}

/// Runs `input` through `operator` batch by batch with a 2-minute-delay
/// watermark, committing state each batch, then lets the watermark pass
/// everything; returns the busy time and the rows emitted.
fn run(
    rt: &tokio::runtime::Runtime,
    checkpoint: &Checkpoint,
    name: &str,
    mut operator: Box<dyn Operator>,
    input: &[RecordBatch],
) -> (Duration, usize) {
    let mut state = rt
        .block_on(KeyedState::open_single(
            checkpoint.store(),
            &name.replace(' ', "-"),
            BackendKind::Rocksdb,
            0,
        ))
        .unwrap();
    let mut busy = Duration::ZERO;
    let mut emitted = 0;
    let mut watermark = 0;
    for (b, batch) in input.iter().map(Some).chain([None]).enumerate() {
        let t = Instant::now();
        let mut ctx = OperatorContext {
            batch_id: b as u64,
            watermark_ms: Some(if batch.is_some() {
                watermark
            } else {
                i64::MAX / 2
            }),
            late_rows_watermark_ms: Some(watermark),
            batch_time_ms: 0,
            state: state.group_mut(0),
            rows_dropped_by_watermark: 0,
            quarantine: Default::default(),
        };
        if let Some(batch) = batch {
            operator.process_batch(batch, &mut ctx).unwrap();
        }
        let out = operator.handle_batch_end(&mut ctx).unwrap();
        assert_eq!(ctx.rows_dropped_by_watermark, 0);
        emitted += out.iter().map(|b| b.num_rows()).sum::<usize>();
        rt.block_on(state.commit(b as u64 + 1)).unwrap();
        busy += t.elapsed();
        if let Some(batch) = batch {
            let ts = batch.column_by_name("ts").unwrap();
            let max = arrow::compute::max(ts.as_any().downcast_ref::<Int64Array>().unwrap());
            watermark = watermark.max(max.unwrap() - 2 * GAP_MS - 120_000);
        }
    }
    (busy, emitted)
}
