//! Plugins called in-process through the library API, on exact batches:
//! the example transforms' results, and every supported type surviving the
//! trip host -> Wasm guest -> host unchanged.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array,
    Float64Array, Int8Array, Int16Array, Int32Array, Int64Array, LargeStringArray, ListArray,
    RecordBatch, StringArray, TimestampMicrosecondArray, UInt8Array, UInt64Array,
};
use arrow::datatypes::{Field, Int32Type, Schema};
use weir::{PluginEngine, PluginFailure, WeirError};
use weir_fixtures::{ENRICH, FILTER_PROJECT, TESTKIT};

use crate::common::{Scenario, Spec, assert_ok};

/// An engine caching compiled plugins where the other tests do.
fn engine() -> PluginEngine {
    PluginEngine::with_cache(Some(weir::plugin::CompileCache::at(
        crate::common::compile_cache_dir(),
    )))
    .unwrap()
}

fn instance(path: &str, config: &str) -> weir::plugin::TransformInstance {
    engine()
        .load_transform("stage", path.as_ref())
        .unwrap()
        .instantiate(config, Default::default())
        .unwrap()
}

fn orders() -> RecordBatch {
    RecordBatch::try_from_iter(vec![
        (
            "id",
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as ArrayRef,
        ),
        (
            "name",
            Arc::new(StringArray::from(vec![
                Some("a"),
                None,
                Some("c"),
                Some("d"),
            ])) as ArrayRef,
        ),
        (
            "amount",
            Arc::new(Float64Array::from(vec![
                Some(5.0),
                Some(10.0),
                None,
                Some(25.5),
            ])) as ArrayRef,
        ),
    ])
    .unwrap()
}

#[test]
fn filter_project_keeps_matching_rows_and_selected_columns() {
    let mut plugin = instance(
        FILTER_PROJECT,
        r#"{"filter": {"column": "amount", "op": ">=", "value": 10}, "select": ["amount", "id"]}"#,
    );
    let out = plugin.process(&orders()).unwrap();
    assert_eq!(out.len(), 1);
    let expected = RecordBatch::try_from_iter(vec![
        (
            "amount",
            Arc::new(Float64Array::from(vec![10.0, 25.5])) as ArrayRef,
        ),
        ("id", Arc::new(Int64Array::from(vec![2, 4])) as ArrayRef),
    ])
    .unwrap();
    assert_eq!(out[0].columns(), expected.columns());
    assert_eq!(out[0].schema().field(1).name(), "id");
}

#[test]
fn filter_project_on_strings() {
    let mut plugin = instance(
        FILTER_PROJECT,
        r#"{"filter": {"column": "name", "op": "!=", "value": "c"}}"#,
    );
    let out = plugin.process(&orders()).unwrap();
    let ids = out[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(ids.values(), &[1, 4]); // null names never match
}

#[test]
fn enrich_appends_the_computed_column_keeping_nulls() {
    let mut plugin = instance(
        ENRICH,
        r#"{"input": "amount", "output": "eur", "multiply": 2.0, "add": 0.5}"#,
    );
    let out = plugin.process(&orders()).unwrap();
    let eur = out[0].column_by_name("eur").unwrap();
    let expected = Float64Array::from(vec![Some(10.5), Some(20.5), None, Some(51.5)]);
    assert_eq!(
        eur.as_any().downcast_ref::<Float64Array>().unwrap(),
        &expected
    );
    assert_eq!(out[0].num_columns(), 4);
}

#[test]
fn enrich_rejects_a_missing_column_as_an_input_error() {
    let mut plugin = instance(ENRICH, r#"{"input": "price", "output": "eur"}"#);
    match plugin.process(&orders()) {
        Err(WeirError::Plugin {
            failure: PluginFailure::Guest { kind, message },
            ..
        }) => {
            assert_eq!(kind, "input");
            assert!(message.contains("`price`"), "{message}");
        }
        other => panic!("expected a guest error, got {other:?}"),
    }
}

#[test]
fn every_supported_type_round_trips_through_the_guest_unchanged() {
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "bool",
            Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
        ),
        (
            "i8",
            Arc::new(Int8Array::from(vec![Some(-1), Some(2), None])),
        ),
        ("i16", Arc::new(Int16Array::from(vec![1, -2, 3]))),
        (
            "i32",
            Arc::new(Int32Array::from(vec![None, Some(7), Some(8)])),
        ),
        (
            "id",
            Arc::new(Int64Array::from(vec![i64::MIN, 0, i64::MAX])),
        ),
        ("u8", Arc::new(UInt8Array::from(vec![0, 128, 255]))),
        ("u64", Arc::new(UInt64Array::from(vec![u64::MAX, 1, 2]))),
        (
            "f32",
            Arc::new(Float32Array::from(vec![1.5, f32::NAN, -0.0])),
        ),
        (
            "s",
            Arc::new(StringArray::from(vec![Some("héllo"), None, Some("")])),
        ),
        (
            "ls",
            Arc::new(LargeStringArray::from(vec!["x", "yy", "zzz"])),
        ),
        (
            "bin",
            Arc::new(BinaryArray::from(vec![&b"\x00\x01"[..], b"", b"abc"])),
        ),
        ("d", Arc::new(Date32Array::from(vec![0, 19_000, -1]))),
        (
            "ts",
            Arc::new(
                TimestampMicrosecondArray::from(vec![Some(1), None, Some(3)])
                    .with_timezone("+00:00"),
            ),
        ),
        (
            "dec",
            Arc::new(
                Decimal128Array::from(vec![Some(12345), None, Some(-1)])
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ),
        ),
    ];
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut identity = instance(TESTKIT, "{}");
    let out = identity.process(&batch).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].schema(), batch.schema());
    for (got, want) in out[0].columns().iter().zip(batch.columns()) {
        assert_eq!(
            got.to_data(),
            want.to_data(),
            "column of type {}",
            want.data_type()
        );
    }

    // A slice (non-zero offset, unaligned validity bits) arrives rebased.
    let sliced = batch.slice(1, 2);
    let out = identity.process(&sliced).unwrap();
    assert_eq!(out[0].num_rows(), 2);
    for (got, want) in out[0].columns().iter().zip(sliced.columns()) {
        assert_eq!(got.as_ref(), want.as_ref());
    }
}

#[test]
fn nested_types_are_refused_before_reaching_the_plugin() {
    let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1)])]);
    let schema = Schema::new(vec![Field::new("l", list.data_type().clone(), true)]);
    let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(list)]).unwrap();
    let err = instance(TESTKIT, "{}").process(&batch).unwrap_err();
    assert!(matches!(err, WeirError::Schema { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("List(Int32) is not supported across the plugin boundary"),
        "{err}"
    );
}

#[test]
fn a_component_without_the_transform_world_is_refused_at_load() {
    // The fixtures' directory holds only transforms; a core module is not a component.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.wasm");
    std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
    let err = engine().load_transform("s", &path).err().unwrap();
    assert!(
        matches!(
            err,
            WeirError::Plugin {
                failure: PluginFailure::Load { .. },
                ..
            }
        ),
        "{err}"
    );
}

/// Runs a fresh copy of the default scenario with compiled plugins cached
/// in `cache`; returns stderr.
fn run_with_cache(cache: &std::path::Path) -> String {
    let s = Scenario::new(Spec::default());
    s.json_inputs(2, 2);
    let out = s
        .command("run")
        .env("WEIR_COMPILE_CACHE", cache)
        .output()
        .unwrap();
    let err = assert_ok(&out);
    assert_eq!(s.output_ids(), vec![1, 2, 3, 4], "{err}");
    err
}

fn cache_entries(cache: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect()
}

#[test]
fn compiled_plugins_are_cached_and_bad_entries_rebuilt() {
    let cache = tempfile::tempdir().unwrap();
    let err = run_with_cache(cache.path());
    assert!(err.contains("plugin stage `double`: compiled in"), "{err}");
    let entries = cache_entries(cache.path());
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];

    let err = run_with_cache(cache.path());
    assert!(
        err.contains("plugin stage `double`: loaded compiled from cache in"),
        "{err}"
    );

    // One flipped byte in the compiled code: caught by the checksum.
    let mut bytes = std::fs::read(entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(entry, &bytes).unwrap();
    let err = run_with_cache(cache.path());
    assert!(
        err.contains("cache entry rejected") && err.contains("Corrupt"),
        "{err}"
    );
    assert!(err.contains("plugin stage `double`: compiled in"), "{err}");
    let err = run_with_cache(cache.path());
    assert!(
        err.contains("loaded compiled from cache"),
        "rebuilt entry:\n{err}"
    );

    // A cut-short file, and an intact file wasmtime cannot use.
    let good = std::fs::read(entry).unwrap();
    std::fs::write(entry, &good[..good.len() / 3]).unwrap();
    assert!(run_with_cache(cache.path()).contains("Corrupt"));
    let payload = b"not compiled code".to_vec();
    let mut stale = b"WEIRCC1\n".to_vec();
    stale.extend_from_slice(&sha256(&payload));
    stale.extend_from_slice(&payload);
    std::fs::write(entry, stale).unwrap();
    let err = run_with_cache(cache.path());
    assert!(
        err.contains("Stale") && err.contains("compiled in"),
        "{err}"
    );
    assert!(run_with_cache(cache.path()).contains("loaded compiled from cache"));
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

#[test]
fn plugin_inspect_names_the_world_and_imports() {
    for (plugin, world, import) in [
        (ENRICH, "transform-plugin", "weir:plugin/types@"),
        (
            weir_fixtures::SESSIONIZE,
            "stateful-plugin",
            "weir:plugin/keyed-state@",
        ),
        (
            weir_fixtures::CDC_UPSERT,
            "batch-sink-plugin",
            "weir:plugin/outputs@",
        ),
    ] {
        let out = crate::common::weir()
            .args(["plugin", "inspect", plugin])
            .output()
            .unwrap();
        assert_ok(&out);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("world: weir:plugin {world}")),
            "{text}"
        );
        assert!(text.contains(import), "{text}");
        assert!(text.contains("ok: this host can run it"), "{text}");
    }
    let not_wasm = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_wasm.path(), "name = \"q\"\n").unwrap();
    let out = crate::common::weir()
        .args(["plugin", "inspect"])
        .arg(not_wasm.path())
        .output()
        .unwrap();
    let err = crate::common::assert_exit(&out, 1);
    assert!(err.contains("it is not a WebAssembly file"), "{err}");
}

/// Seeded random order batches: int64 and float64 amounts with nulls,
/// multi-byte UTF-8 names, and an empty batch among them.
fn random_batches(seed: u64) -> Vec<RecordBatch> {
    let mut random = crate::common::seeded(seed);
    let names = ["Zoë", "東京", "🚀 rocket", "plain", "", "naïve café"];
    (0..6)
        .map(|b| {
            let rows = if b == 2 { 0 } else { 1 + random(300) as usize };
            let ids = Int64Array::from_iter_values((0..rows as i64).map(|i| b * 1000 + i));
            let names = StringArray::from_iter((0..rows).map(|_| {
                let pick = random(names.len() as i64 + 1) as usize;
                names.get(pick).copied()
            }));
            let amounts =
                Float64Array::from_iter((0..rows).map(|_| {
                    (random(5) != 0).then(|| (random(2_000_000) - 1_000_000) as f64 / 7.0)
                }));
            let counts = Int64Array::from_iter(
                (0..rows)
                    .map(|_| (random(4) != 0).then(|| random(i64::from(i32::MAX)) - (1 << 30))),
            );
            RecordBatch::try_from_iter(vec![
                ("id", Arc::new(ids) as ArrayRef),
                ("name", Arc::new(names) as ArrayRef),
                ("amount", Arc::new(amounts) as ArrayRef),
                ("count", Arc::new(counts) as ArrayRef),
            ])
            .unwrap()
        })
        .collect()
}

#[test]
fn the_python_javascript_and_c_enrich_plugins_give_the_rust_plugins_output_exactly() {
    let others = [
        ("Python", weir_fixtures::PYTHON_ENRICH),
        ("JavaScript", weir_fixtures::JS_ENRICH),
        ("C", weir_fixtures::C_ENRICH),
    ];
    for (input, output) in [("amount", "amount_eur"), ("count", "count_scaled")] {
        let config = format!(
            r#"{{"input": "{input}", "output": "{output}", "multiply": 0.92, "add": -1.5}}"#
        );
        let mut rust = instance(ENRICH, &config);
        for (language, plugin) in others {
            let mut other = instance(plugin, &config);
            for seed in [1, 2, 3] {
                for batch in random_batches(seed) {
                    if batch.num_rows() == 0 {
                        continue; // the host never calls a plugin with no rows
                    }
                    let expected = rust.process(&batch).unwrap();
                    let got = other.process(&batch).unwrap();
                    assert_eq!(
                        got,
                        expected,
                        "{language}, seed {seed}, {input}, {} rows",
                        batch.num_rows()
                    );
                }
            }
        }
    }
    // The same errors, apart from the language.
    for (language, plugin) in others {
        let mut other = instance(plugin, r#"{"input": "missing", "output": "x"}"#);
        let err = other.process(&orders()).unwrap_err().to_string();
        assert!(
            err.contains("the plugin returned an error (input)")
                && err.contains("input column `missing` not found"),
            "{language}: {err}"
        );
        let err = engine()
            .load_transform("other", plugin.as_ref())
            .unwrap()
            .instantiate("{}", Default::default())
            .err()
            .expect("a config without `input` is refused")
            .to_string();
        assert!(err.contains("invalid enrich config"), "{language}: {err}");
    }
}
