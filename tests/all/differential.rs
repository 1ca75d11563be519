//! Differential tests against Apache Spark: `tests/spark/parity.py` runs
//! seeded, disordered streams through Spark Structured Streaming (PyPI's
//! pyspark on a Java 17 runtime, both installed by `./dev test`) and
//! through this `weir`, one file per micro-batch, and compares the rows of
//! every batch. This test runs it and asserts on its report: every case
//! equal, enough cases and seeds, and no case that proves nothing.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::delta::python;

/// The harness, beside the Rust tests.
fn harness() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/spark/parity.py")
}

#[test]
fn every_case_has_the_rows_spark_has_in_every_batch() {
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(python())
        .arg(harness())
        .arg("--weir")
        .arg(env!("CARGO_BIN_EXE_weir"))
        .arg("--work")
        .arg(work.path())
        .env("TZ", "UTC")
        // The harness runs `weir` with the test plugins and compile cache.
        .env("WEIR_PLUGIN_DIR", weir_fixtures::PLUGIN_DIR)
        .env("WEIR_COMPILE_CACHE", crate::common::compile_cache_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report_path = work.path().join("report.json");
    let report: Value = match std::fs::read(&report_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
        Err(e) => panic!(
            "the harness wrote no report ({e}); it exited with {}:\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    };
    let cases = report["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        if case["equal"] != Value::Bool(true) {
            failures.push(format!(
                "{name}: {}",
                serde_json::to_string_pretty(case).unwrap()
            ));
            continue;
        }
        // A case in which nothing reaches the output, or that ran one
        // batch, cannot tell the engines apart.
        assert!(
            case["rows"].as_u64().unwrap() > 0,
            "{name}: Spark emitted no rows"
        );
        assert!(
            case["batches"].as_u64().unwrap() >= 3,
            "{name}: fewer than 3 batches"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from Spark {}:\n{}\n\nharness output:\n{stdout}",
        failures.len(),
        cases.len(),
        report["spark_version"],
        failures.join("\n")
    );
    assert!(out.status.success(), "the harness failed:\n{stdout}");
    assert!(cases.len() >= 40, "only {} cases ran", cases.len());
    let seeds: BTreeSet<u64> = cases.iter().filter_map(|c| c["seed"].as_u64()).collect();
    assert!(seeds.len() >= 10, "only {} seeds", seeds.len());
}
