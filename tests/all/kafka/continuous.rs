//! The continuous trigger on a Kafka source: records reach the sink as they
//! arrive, and a stopped query resumes after the last checkpointed epoch.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{produce, topic};
use crate::common::{delivered_ids, stop_gracefully, weir};

fn wait_for(out: &Path, ids: std::ops::RangeInclusive<i64>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ids.clone().all(|id| delivered_ids(out).contains_key(&id)) {
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
        let child = weir()
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
        stop_gracefully(child);
    }
    let seen = delivered_ids(&out);
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=80).collect::<Vec<_>>()
    );
    // Stopped cleanly after its epoch: the second run read only new records.
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
}
