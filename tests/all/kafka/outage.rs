//! A broker that goes away mid-stream: the query retries with backoff,
//! reports the retries in its progress, and once the broker is back goes
//! on without losing or repeating a record.
//!
//! The broker persists to the S3 test server (its only durable storage),
//! so it comes back with its topics, records, transactions and offsets.

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::sink::{assert_exactly_once, pipeline_text, read_topic_on};
use super::{create_topic, produce_paced, start_broker};
use crate::common::{assert_ok, free_port};

/// Batches committed so far and the rows they wrote.
fn committed(checkpoint: &std::path::Path) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(checkpoint.join("commits")) else {
        return (0, 0);
    };
    let mut batches = 0;
    let mut rows = 0;
    for entry in entries {
        let text = std::fs::read(entry.unwrap().path()).unwrap();
        if let Ok(commit) = serde_json::from_slice::<serde_json::Value>(&text) {
            batches += 1;
            rows += commit["output_rows"].as_u64().unwrap_or(0);
        }
    }
    (batches, rows)
}

fn wait_for_rows(checkpoint: &std::path::Path, rows: u64, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed(checkpoint).1 < rows {
        assert!(
            Instant::now() < deadline,
            "{rows} rows never committed:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_broker_restart_mid_stream_is_retried_without_loss_or_duplicates() {
    let bucket = crate::s3::bucket("tansu");
    let env = [
        ("AWS_ENDPOINT", crate::s3::moto().endpoint.clone()),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    let storage = format!("s3://{bucket}/");
    let port = free_port();
    let servers = format!("127.0.0.1:{port}");
    let broker = start_broker(port, &storage, &env);
    create_topic(&servers, "orders", 2);
    create_topic(&servers, "enriched", 2);
    let pace = Duration::from_millis(1100);
    produce_paced(&servers, "orders", 2, 1..=6, pace);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    let text = pipeline_text(
        &servers,
        "processing_time = \"200ms\"",
        2,
        "orders",
        "enriched",
    );
    std::fs::write(&file, text).unwrap();
    let log = dir.path().join("weir.log");
    let query = crate::common::weir()
        .arg("run")
        .arg(&file)
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let checkpoint = dir.path().join("ck");
    wait_for_rows(&checkpoint, 6, &log);

    // The broker dies (kill -9) and stays away for a few seconds.
    // SAFETY: kill(2) with a child's pid has no memory-safety preconditions.
    unsafe {
        libc::kill(broker as i32, libc::SIGKILL);
    }
    std::thread::sleep(Duration::from_secs(4));
    start_broker(port, &storage, &env);
    produce_paced(&servers, "orders", 2, 7..=12, pace);
    wait_for_rows(&checkpoint, 12, &log);

    // SAFETY: as above.
    unsafe {
        libc::kill(query.id() as i32, libc::SIGTERM);
    }
    let out = query.wait_with_output().unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(out.status.success(), "weir failed:\n{err}");
    assert_ok(&out);
    assert!(
        err.contains(" retries, last: "),
        "no retries reported:\n{err}"
    );
    let records = read_topic_on(&servers, "enriched");
    assert_exactly_once(&records, &checkpoint, 1..=12, &err);
}
