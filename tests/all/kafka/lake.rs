//! Kafka → windowed aggregate → Parquet on S3, with the checkpoint (and
//! so the window state) on S3 too: killed mid-stream and restarted from S3,
//! the output is exactly the windows a straight run gives.

use std::time::Duration;

use rdkafka::producer::{BaseRecord, Producer};
use serde_json::{Value, json};

use super::{broker, topic};
use crate::common::{assert_ok, run, run_killed_at};
use crate::s3::{bucket, committed_rows, list, s3_table};

/// Clicks `(user, minute after 12:00)`, one record per produce batch (see
/// `produce` in this module's parent).
const CLICKS: &[(&str, u32)] = &[
    ("u1", 1),
    ("u2", 2),
    ("u1", 4),
    ("u1", 6),
    ("u2", 7),
    ("u2", 8),
    // Moves the watermark (10 minutes behind) to 12:20: both windows close.
    ("u3", 30),
];

fn produce_clicks(topic: &str) {
    let producer = super::unbatched_producer(&broker().servers);
    for (user, minute) in CLICKS {
        let value =
            json!({ "user_id": user, "event_time": format!("2026-11-25T12:{minute:02}:00Z") })
                .to_string();
        producer
            .send(BaseRecord::<(), _>::to(topic).payload(&value))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// The pipeline, everything but the source on S3 bucket `b`.
fn pipeline(input: &str, b: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"name = "clicks-to-lake"
checkpoint = "s3://{b}/ck"
state_store = "rocksdb"

{s3}
[trigger]
available_now = true

[source]
kind = "kafka"
bootstrap_servers = "{servers}"
topics = ["{input}"]
max_offsets_per_trigger = 2
format = "json"
schema = [
  {{ name = "user_id", type = "string" }},
  {{ name = "event_time", type = "timestamp" }},
]

[watermark]
column = "event_time"
delay = "10m"

[aggregate]
group_by = ["user_id"]
window = {{ column = "event_time", tumbling = "5m" }}
aggregates = [ {{ fn = "count", as = "clicks" }} ]

[sink]
kind = "parquet"
path = "s3://{b}/out"
output_mode = "append"
"#,
        s3 = s3_table(),
        servers = broker().servers,
    );
    std::fs::write(dir.path().join("pipeline.toml"), text).unwrap();
    dir
}

/// (user, window start, clicks), sorted.
fn windows(rows: &[Value]) -> Vec<(String, String, i64)> {
    let mut windows: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r["user_id"].as_str().unwrap().to_string(),
                r["window_start"].as_str().unwrap_or_default().to_string(),
                r["clicks"].as_i64().unwrap(),
            )
        })
        .collect();
    windows.sort();
    windows
}

#[test]
fn kafka_windows_land_in_parquet_on_s3_and_restart_from_an_s3_checkpoint() {
    let input = topic(1);
    produce_clicks(&input);
    let straight = bucket("lake");
    let dir = pipeline(&input, &straight);
    let err = assert_ok(&run(&dir.path().join("pipeline.toml")));
    let rows = committed_rows(&format!("s3://{straight}/out"));
    let expected = windows(&rows);
    let at = |minute: u32| format!("2026-11-25T12:{minute:02}:00Z");
    assert_eq!(
        expected,
        vec![
            ("u1".to_string(), at(0), 2),
            ("u1".to_string(), at(5), 1),
            ("u2".to_string(), at(0), 1),
            ("u2".to_string(), at(5), 2),
        ],
        "{rows:?}\n{err}"
    );

    // Killed after batch 1 committed (state on S3), and in the middle of
    // batch 2: each restart reads state and offsets back from S3.
    for at in ["after-commit@1", "after-transform@2"] {
        let b = bucket("lake");
        let dir = pipeline(&input, &b);
        let file = dir.path().join("pipeline.toml");
        run_killed_at(&file, at);
        let err = assert_ok(&run(&file));
        assert_eq!(
            windows(&committed_rows(&format!("s3://{b}/out"))),
            expected,
            "killed at {at}:\n{err}"
        );
        let state = list(&format!("s3://{b}/ck/state/0"));
        assert!(!state.is_empty(), "{at}: no state on S3");
    }
}
