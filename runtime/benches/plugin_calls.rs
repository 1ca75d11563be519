//! Plugin call benchmarks. Every number is measured side by side in one run
//! and printed as a ratio, so machine speed cancels out:
//!
//! 1. the `enrich` map transform as a Wasm component vs the same Rust code
//!    compiled natively, on 8192-row batches (goal: >= 0.8x native);
//! 2. a batch's round trip host -> guest -> host (the `testkit` identity
//!    plugin, which does not touch Arrow) vs one memcpy of the same bytes,
//!    at 1 MiB and 16 MiB (goal: >= 0.5x);
//! 3. the fixed cost of one plugin call on an empty batch (goal: < 2 us);
//! 4. instantiating a plugin from its `InstancePre` (with `init`), on-demand
//!    vs the pooling allocator (goal with pooling: < 50 us) — what a hot swap
//!    or a new query pays, off the batch path;
//! 5. the map transform with per-call time limits (epoch deadlines) on vs
//!    off (goal: >= 0.95x);
//! 6. per language, the same `enrich` transform: component size, compile
//!    time cold and from the on-disk cache, instantiation, and rows/s
//!    relative to the Rust plugin;
//! 7. quarantine (`on_error = "quarantine"`): an 8192-row batch with 1 and
//!    with 10 rows that make the plugin trap, against the same batch with
//!    none: bisection's calls and the fresh instances after each trap.
//!
//! Run with `./dev bench` (or `cargo bench -p weir --bench plugin_calls`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use weir::PluginEngine;
use weir::plugin::EngineOptions;

// The allocator the `weir` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use weir::plugin::TransformInstance;
use weir_sdk::{Config, Transform};

/// The `enrich` plugin's own source, compiled natively: the same code the
/// Wasm component runs. (Not a dependency on the plugin crate: a crate that
/// is also a `cdylib` gets an unhashed rlib name, which two builds with
/// different dependency features overwrite.)
#[path = "../../plugins/enrich/src/lib.rs"]
#[allow(dead_code)]
mod enrich_native;

/// Median time of `f` over repeated runs lasting about `budget`.
fn median(budget: Duration, mut f: impl FnMut()) -> Duration {
    for _ in 0..3 {
        f();
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || samples.len() < 10 {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    samples.sort();
    samples[samples.len() / 2]
}

fn orders(rows: usize) -> RecordBatch {
    let ids: Vec<i64> = (0..rows as i64).collect();
    let names: Vec<String> = (0..rows).map(|i| format!("customer-{}", i % 997)).collect();
    let amounts: Vec<f64> = (0..rows).map(|i| (i % 1000) as f64 * 1.25).collect();
    RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from(ids)) as ArrayRef),
        ("name", Arc::new(StringArray::from(names)) as ArrayRef),
        ("amount", Arc::new(Float64Array::from(amounts)) as ArrayRef),
    ])
    .unwrap()
}

fn instance(engine: &PluginEngine, path: &str, config: &str) -> TransformInstance {
    engine
        .load_transform("bench", path.as_ref())
        .unwrap()
        .instantiate(config, Default::default())
        .unwrap()
}

fn us(d: Duration) -> String {
    format!("{:>9.2} us", d.as_secs_f64() * 1e6)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and
    // then one quick pass checks the benchmark still works.
    let measuring = std::env::args().any(|a| a == "--bench");
    let default_ms = if measuring { 2000 } else { 1 };
    let budget = Duration::from_millis(
        std::env::var("WEIR_BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_ms),
    );
    let engine = PluginEngine::new().unwrap();
    println!(
        "weir plugin benchmarks (median per call; ratios are native/Wasm or memcpy/Wasm throughput)\n"
    );

    // 1. Map transform, Wasm vs native.
    let config = r#"{"input": "amount", "output": "amount_eur", "multiply": 0.92, "add": 0.0}"#;
    let batch = orders(8192);
    let mut native = enrich_native::Enrich::new(Config::from_json(config)).unwrap();
    let mut wasm = instance(&engine, weir_fixtures::ENRICH, config);
    assert_eq!(
        native.process(batch.clone()).unwrap(),
        wasm.process(&batch).unwrap(),
        "Wasm and native results differ"
    );
    let t_native = median(budget, || {
        black_box(native.process(black_box(batch.clone())).unwrap());
    });
    let t_wasm = median(budget, || {
        black_box(wasm.process(black_box(&batch)).unwrap());
    });
    println!("1. enrich map, 8192 rows (id, name, amount -> + amount_eur)");
    println!(
        "   native {}   wasm {}   wasm = {:.2}x native (goal >= 0.8x)\n",
        us(t_native),
        us(t_wasm),
        ratio(t_native, t_wasm)
    );

    // 2. Transfer host -> guest -> host vs memcpy.
    let mut identity = instance(&engine, weir_fixtures::TESTKIT, "{}");
    println!("2. batch round trip host -> guest -> host (identity plugin) vs one memcpy");
    for mib in [1usize, 16] {
        let rows = mib * 1024 * 1024 / 8;
        let batch = RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(Int64Array::from_iter_values(0..rows as i64)) as ArrayRef,
        )])
        .unwrap();
        let src = vec![7u8; mib * 1024 * 1024];
        let mut dst = vec![0u8; src.len()];
        let t_copy = median(budget, || {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        });
        let t_trip = median(budget, || {
            black_box(identity.process(black_box(&batch)).unwrap());
        });
        println!(
            "   {mib:>2} MiB: memcpy {}   round trip {}   = {:.2}x memcpy (goal >= 0.5x)",
            us(t_copy),
            us(t_trip),
            ratio(t_copy, t_trip)
        );
    }

    // 3. Fixed cost of a call.
    let empty = orders(0);
    let t_empty = median(budget, || {
        black_box(identity.process(black_box(&empty)).unwrap());
    });
    println!(
        "\n3. one call on an empty 3-column batch: {} (goal < 2 us)",
        us(t_empty)
    );

    // 4. Instantiation from InstancePre, on-demand vs pooling.
    println!("\n4. instantiate + init from InstancePre (enrich)");
    let mut times = Vec::new();
    for pooling in [false, true] {
        let engine = PluginEngine::with_options(
            None,
            EngineOptions {
                pooling,
                ..EngineOptions::default()
            },
        )
        .unwrap();
        let component = engine
            .load_transform("bench", weir_fixtures::ENRICH.as_ref())
            .unwrap();
        let t = median(budget, || {
            black_box(component.instantiate(config, Default::default()).unwrap());
        });
        println!(
            "   {:<10} {}",
            if pooling { "pooling" } else { "on-demand" },
            us(t)
        );
        times.push(t);
    }
    println!(
        "   pooling = {:.2}x the on-demand speed (goal with pooling < 50 us)",
        ratio(times[0], times[1])
    );

    // 5. Time limits on vs off, same batches.
    let unlimited = PluginEngine::with_options(
        None,
        EngineOptions {
            epoch_deadlines: false,
            ..EngineOptions::default()
        },
    )
    .unwrap();
    let mut free = instance(&unlimited, weir_fixtures::ENRICH, config);
    let t_free = median(budget, || {
        black_box(free.process(black_box(&batch)).unwrap());
    });
    let t_limited = median(budget, || {
        black_box(wasm.process(black_box(&batch)).unwrap());
    });
    println!(
        "\n5. enrich map, 8192 rows: deadlines off {}   on {}   on = {:.2}x off (goal >= 0.95x)",
        us(t_free),
        us(t_limited),
        ratio(t_free, t_limited)
    );

    // 6. Per language.
    println!("\n6. the enrich transform per language (8192-row batches)");
    println!(
        "   {:<8} {:>9} {:>12} {:>12} {:>14} {:>12} {:>8}",
        "language", "size KiB", "compile ms", "cached ms", "instantiate", "rows/s", "vs Rust"
    );
    let cache_dir = tempfile::tempdir().unwrap();
    let mut rust_rate = None;
    for (language, path) in [
        ("Rust", weir_fixtures::ENRICH),
        ("Python", weir_fixtures::PYTHON_ENRICH),
        ("JS", weir_fixtures::JS_ENRICH),
        ("C", weir_fixtures::C_ENRICH),
    ] {
        let size = std::fs::metadata(path).unwrap().len() / 1024;
        let cold = Instant::now();
        PluginEngine::with_cache(None)
            .unwrap()
            .load_transform("bench", path.as_ref())
            .unwrap();
        let cold = cold.elapsed();
        let cached_engine = PluginEngine::with_cache(Some(weir::plugin::CompileCache::at(
            cache_dir.path().to_path_buf(),
        )))
        .unwrap();
        cached_engine
            .load_transform("bench", path.as_ref())
            .unwrap();
        let warm = Instant::now();
        let component = cached_engine
            .load_transform("bench", path.as_ref())
            .unwrap();
        let warm = warm.elapsed();
        let t_instantiate = median(budget, || {
            black_box(component.instantiate(config, Default::default()).unwrap());
        });
        let mut plugin = component.instantiate(config, Default::default()).unwrap();
        let t_batch = median(budget, || {
            black_box(plugin.process(black_box(&batch)).unwrap());
        });
        let rate = batch.num_rows() as f64 / t_batch.as_secs_f64();
        let relative = rate / *rust_rate.get_or_insert(rate);
        println!(
            "   {:<8} {:>9} {:>12.1} {:>12.1} {} {:>12.0} {:>7.2}x",
            language,
            size,
            cold.as_secs_f64() * 1e3,
            warm.as_secs_f64() * 1e3,
            us(t_instantiate),
            rate,
            relative
        );
    }
    quarantine(budget, &batch);
}

/// Section 7: a batch with poison rows through a quarantining stage,
/// against the same batch with none (the `testkit` identity plugin).
fn quarantine(budget: Duration, batch: &RecordBatch) {
    let engine = PluginEngine::new().unwrap();
    let component = Arc::new(
        engine
            .load_transform("bench", weir_fixtures::TESTKIT.as_ref())
            .unwrap(),
    );
    let run = |config: &str| {
        weir::query::trial_run(
            "bench",
            component.clone(),
            config,
            Default::default(),
            std::slice::from_ref(batch),
            true,
            0,
        )
        .unwrap()
    };
    println!("\n7. quarantine, 8192 rows through the identity plugin");
    let clean = median(budget, || {
        black_box(run("{}"));
    });
    println!("   no poison row        {}   1 call", us(clean));
    // Row 4096 alone; ids 0, 820, ..., 7380 (10 rows).
    for (label, config, poison) in [
        ("1 poison row ", r#"{"trap_on_id": 4096}"#, 1),
        ("10 poison rows", r#"{"trap_on_id_multiple_of": 820}"#, 10),
    ] {
        let probe = run(config);
        assert_eq!(probe.dead_letters.len(), poison);
        assert_eq!(
            probe.outputs.iter().map(|b| b.num_rows()).sum::<usize>(),
            8192 - poison
        );
        let t = median(budget, || {
            black_box(run(config));
        });
        println!(
            "   {label}       {}   {} calls   {:.1}x the clean batch's time",
            us(t),
            probe.calls,
            t.as_secs_f64() / clean.as_secs_f64()
        );
    }
}

/// Throughput of `candidate` relative to `baseline` (1.0 = as fast).
fn ratio(baseline: Duration, candidate: Duration) -> f64 {
    baseline.as_secs_f64() / candidate.as_secs_f64()
}
