//! `weir checkpoint inspect`: what it reports matches the checkpoint's
//! files, for an in-flight batch, a finished run, a stateful query and
//! logs that do not line up.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::common::{Scenario, Spec, assert_ok, run_killed_at, weir};

fn inspect(checkpoint: &Path) -> Value {
    let out = weir()
        .args(["checkpoint", "inspect", "--json"])
        .arg(checkpoint)
        .output()
        .unwrap();
    let err = crate::common::stderr(&out);
    assert!(out.status.success(), "{err}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn inspect_text(checkpoint: &Path) -> String {
    let out = weir()
        .args(["checkpoint", "inspect"])
        .arg(checkpoint)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::common::stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn inspect_reports_batches_resume_point_and_usage() {
    let s = Scenario::new(Spec {
        max_files: Some(1),
        ..Spec::default()
    });
    s.json_inputs(3, 2);
    run_killed_at(&s.pipeline_path(), "before-commit@1");
    let ck = s.path("ck");
    let report = inspect(&ck);
    assert_eq!(
        report["offsets"],
        serde_json::json!({"entries": 2, "first": 0, "last": 1})
    );
    assert_eq!(
        report["commits"],
        serde_json::json!({"entries": 1, "first": 0, "last": 0})
    );
    assert_eq!(report["inFlight"], 1);
    assert_eq!(report["nextBatch"], 2);
    assert_eq!(report["usage"]["offsets"]["files"], 2);
    assert_eq!(report["usage"]["commits"]["files"], 1);
    assert_eq!(report["metadata"]["name"], "test-query");
    assert!(inspect_text(&ck).contains("a restart replays batch 1 (in flight), then runs batch 2"));

    assert_ok(&s.run());
    let report = inspect(&ck);
    assert_eq!(report["offsets"]["entries"], 3);
    assert_eq!(report["commits"]["last"], 2);
    assert_eq!(report["inFlight"], Value::Null);
    assert_eq!(report["nextBatch"], 3);
    let offsets: Value =
        serde_json::from_slice(&std::fs::read(ck.join("offsets/2")).unwrap()).unwrap();
    assert_eq!(
        report["lastBatchTimestampMs"],
        offsets["batch_timestamp_ms"]
    );
    let bytes: u64 = ["offsets/0", "offsets/1", "offsets/2"]
        .iter()
        .map(|f| std::fs::metadata(ck.join(f)).unwrap().len())
        .sum();
    assert_eq!(report["usage"]["offsets"]["bytes"], bytes);
    assert!(inspect_text(&ck).contains("a restart runs batch 3 next"));

    // Logs that do not line up: what a restart would say, not a crash.
    std::fs::remove_file(ck.join("commits/1")).unwrap();
    std::fs::remove_file(ck.join("commits/2")).unwrap();
    let report = inspect(&ck);
    assert_eq!(report["nextBatch"], Value::Null);
    assert!(
        report["problem"]
            .as_str()
            .unwrap()
            .contains("do not line up"),
        "{report}"
    );
}

#[test]
fn inspect_shows_state_versions_and_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/windowed-clicks");
    let copy = dir.path().join("windowed-clicks");
    std::fs::create_dir_all(copy.join("data/clicks")).unwrap();
    std::fs::copy(example.join("pipeline.toml"), copy.join("pipeline.toml")).unwrap();
    for file in std::fs::read_dir(example.join("data/clicks")).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), copy.join("data/clicks").join(file.file_name())).unwrap();
    }
    assert_ok(&crate::common::run(&copy.join("pipeline.toml")));
    let ck = copy.join(".weir/checkpoint");
    let report = inspect(&ck);
    let last = report["commits"]["last"].as_u64().unwrap();
    let commit: Value =
        serde_json::from_slice(&std::fs::read(ck.join(format!("commits/{last}"))).unwrap())
            .unwrap();
    assert!(commit["next_watermark_ms"].is_i64(), "{commit}");
    assert_eq!(report["watermarkMs"], commit["next_watermark_ms"]);
    // One entry per task's range of key groups with state files (a file
    // per task and version, `<V>.<first>-<last>.<kind>`), all of operator 0.
    let state = report["state"].as_object().unwrap();
    let mut on_disk: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(ck.join("state/0")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let parts: Vec<&str> = name.split('.').collect();
        assert_eq!(parts.len(), 3, "{name}");
        assert!(["delta", "snapshot"].contains(&parts[2]), "{name}");
        on_disk
            .entry(format!("0/{}", parts[1]))
            .or_default()
            .push(format!("{}.{}", parts[0], parts[2]));
    }
    let mut reported_ranges: Vec<&String> = state.keys().collect();
    reported_ranges.sort();
    assert_eq!(
        reported_ranges,
        on_disk.keys().collect::<Vec<_>>(),
        "{report}"
    );
    for (range, versions) in state {
        // Every version file on disk is reported, and nothing else.
        let mut on_disk = on_disk[range].clone();
        on_disk.sort();
        let mut reported: Vec<String> = versions["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| format!("{v}.snapshot"))
            .chain(
                versions["deltas"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| format!("{v}.delta")),
            )
            .collect();
        reported.sort();
        assert!(!reported.is_empty(), "{report}");
        assert_eq!(reported, on_disk);
    }
}
