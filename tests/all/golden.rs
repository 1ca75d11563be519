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
    assert!(
        err.contains("batch 0: 12 rows in (2 files), 8 rows out"),
        "{err}"
    );
    assert!(
        err.contains("batch 1: 12 rows in (2 files), 10 rows out"),
        "{err}"
    );

    let got = committed_json_rows(&scratch.path().join(".weir/output"));
    let golden: Vec<Value> = fs::read_to_string(demo.join("expected-output.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got, golden);

    // A second run on the same checkpoint has nothing new to do.
    let err = assert_ok(&weir().arg("run").arg(&pipeline).output().unwrap());
    assert!(err.contains("processed in 0 batch(es)"), "{err}");
    assert_eq!(
        committed_json_rows(&scratch.path().join(".weir/output")),
        golden
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
