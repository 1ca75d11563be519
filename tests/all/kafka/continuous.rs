//! The continuous trigger on a Kafka source: records reach the sink as they
//! arrive, and a stopped query resumes after the last checkpointed epoch.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{produce, topic};
use crate::common::weir;

/// How often each id reached the JSON sink (from the sink's log).
fn delivered(out: &Path) -> BTreeMap<i64, usize> {
    let mut seen = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(out.join("_weir_log")) else {
        return seen;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().parse::<u64>().is_err() {
            continue; // still being written under a temporary name
        }
        let entry: Value = serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap();
        for file in entry["files"].as_array().unwrap() {
            let text = std::fs::read_to_string(out.join(file.as_str().unwrap())).unwrap();
            for line in text.lines() {
                let row: Value = serde_json::from_str(line).unwrap();
                *seen.entry(row["id"].as_i64().unwrap()).or_insert(0) += 1;
            }
        }
    }
    seen
}

fn wait_for(out: &Path, ids: std::ops::RangeInclusive<i64>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ids.clone().all(|id| delivered(out).contains_key(&id)) {
        assert!(Instant::now() < deadline, "ids {ids:?} not all delivered");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_continuous_query_streams_kafka_records_and_resumes_after_its_last_epoch() {
    let topic = topic(2);
    produce(&topic, 2, 1..=40);
    let dir = tempfile::tempdir().unwrap();
    let text = super::orders_to_json("kafka-continuous", "continuous = \"100ms\"", &topic, "");
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(&pipeline, text).unwrap();
    let out = dir.path().join("out");
    for (round, ids) in [(0, 1..=40), (1, 41..=80)] {
        let mut child = weir()
            .arg("run")
            .arg(&pipeline)
            .arg("--quiet")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if round == 1 {
            produce(&topic, 2, 41..=80);
        }
        wait_for(&out, ids);
        // SAFETY: a plain kill(2) on our child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        assert!(child.wait().unwrap().success());
    }
    let seen = delivered(&out);
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=80).collect::<Vec<_>>()
    );
    // Stopped cleanly after its epoch: the second run read only new records.
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
}
