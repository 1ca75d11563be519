//! The demo pipeline in `examples/demo` produces exactly the golden rows,
//! which were computed from the input independently of Weir.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::common::{assert_ok, committed_json_rows, copy_dir, weir};

#[test]
fn demo_pipeline_matches_golden_output() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
    let scratch = tempfile::tempdir().unwrap();
    copy_dir(&demo, scratch.path());

    let pipeline = scratch.path().join("pipeline.toml");
    let err = assert_ok(&weir().arg("run").arg(&pipeline).output().unwrap());
    // Day 1 closes in batch 1 (watermark: batch 0's last order - 1h); days 2
    // and 3 in batch 2, which runs without input once the watermark moved.
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("batch ")).collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with("batch 0: 12 rows in (2 files), 0 rows out"),
        "{err}"
    );
    assert!(
        lines[1].starts_with("batch 1: 12 rows in (2 files), 3 rows out"),
        "{err}"
    );
    assert!(
        lines[2].starts_with("batch 2: 0 rows in (0 files), 7 rows out"),
        "{err}"
    );
    assert!(
        lines[1].contains("watermark 2026-11-02T12:09:00.000Z"),
        "{err}"
    );
    // The filter plugin reports through the host's counter import (totals).
    assert!(lines[0].contains("rows_filtered_out=4"), "{err}");
    assert!(lines[1].contains("rows_filtered_out=6"), "{err}");

    let got = committed_json_rows(&scratch.path().join(".weir/output"));
    let golden: Vec<Value> = fs::read_to_string(demo.join("expected-output.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // A batch's rows come out in key group order: compared as sets.
    let sorted = |rows: &[Value]| {
        let mut rows: Vec<String> = rows.iter().map(Value::to_string).collect();
        rows.sort();
        rows
    };
    assert_eq!(sorted(&got), sorted(&golden));

    // A second run on the same checkpoint has nothing new to do.
    let err = assert_ok(&weir().arg("run").arg(&pipeline).output().unwrap());
    assert!(err.contains("processed in 0 batch(es)"), "{err}");
    assert!(!err.contains("batch 3"), "{err}");
    assert_eq!(
        sorted(&committed_json_rows(&scratch.path().join(".weir/output"))),
        sorted(&golden)
    );
}

#[test]
fn demo_pipeline_validates() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo/pipeline.toml");
    let out = weir().arg("validate").arg(&demo).output().unwrap();
    assert_ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 plugin stage(s)"), "{stdout}");
}
