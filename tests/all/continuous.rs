//! The continuous trigger: rows flow through as they arrive; epochs are
//! checkpointed every interval; a `kill -9` anywhere loses nothing
//! (at-least-once); stateful pipelines are refused at start, as in Spark.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{
    assert_exit, assert_refusals, committed_json_batches, delivered_ids, json_files_head,
    stop_gracefully, weir,
};

/// The continuous pipeline after [`json_files_head`]: the schema, a
/// transform and a JSON sink.
const BODY: &str = r#"schema = [
  { name = "id", type = "long", nullable = false },
  { name = "amount", type = "double" },
]

[[transform]]
name = "double"
plugin = "${WEIR_PLUGIN_DIR}/weir_plugin_enrich.wasm"
config = { input = "amount", output = "amount_x2", multiply = 2.0 }

[sink]
kind = "json"
path = "out"
"#;

/// The continuous test pipeline: files of ids and amounts through the
/// `enrich` plugin into JSON files, an epoch every 50 ms.
fn pipeline() -> String {
    json_files_head("continuous", "continuous = \"50ms\"") + BODY
}

/// Writes input file `n` (rows `n*10 .. n*10+9`) atomically: the source
/// ignores names starting with `.`, so the rename publishes it whole.
fn write_file(dir: &Path, n: u64) {
    let text: String = (n * 10..n * 10 + 10)
        .map(|id| format!("{{\"id\": {id}, \"amount\": {}.5}}\n", id))
        .collect();
    let hidden = dir.join(format!("in/.{n:04}.json"));
    std::fs::write(&hidden, text).unwrap();
    std::fs::rename(&hidden, dir.join(format!("in/{n:04}.json"))).unwrap();
}

/// How often each id reached the sink, checking the transform's column.
fn delivered(dir: &Path) -> BTreeMap<i64, usize> {
    let out = dir.join("out");
    for row in committed_json_batches(&out).values().flatten() {
        let id = row["id"].as_f64().unwrap();
        assert_eq!(row["amount_x2"].as_f64(), Some((id + 0.5) * 2.0), "{row}");
    }
    delivered_ids(&out)
}

fn start(dir: &Path, crash_at: Option<&str>) -> Child {
    let mut cmd: Command = weir();
    cmd.arg("run")
        .arg(dir.join("pipeline.toml"))
        .arg("--quiet")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(at) = crash_at {
        cmd.env("WEIR_CRASH_AT", at);
    }
    cmd.spawn().unwrap()
}

/// Waits until every id below `ids` was delivered (at least once).
fn wait_for(dir: &Path, ids: i64, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = delivered(dir);
        if (0..ids).all(|id| seen.contains_key(&id)) {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "weir exited ({status}) with {} of {ids} ids delivered",
                seen.len()
            );
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {ids} ids delivered",
            seen.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    std::fs::write(dir.path().join("pipeline.toml"), pipeline()).unwrap();
    dir
}

#[test]
fn rows_flow_through_as_they_arrive_and_epochs_are_checkpointed() {
    let dir = setup();
    let mut child = start(dir.path(), None);
    for n in 0..30 {
        write_file(dir.path(), n);
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_for(dir.path(), 300, &mut child);
    stop_gracefully(child);
    let seen = delivered(dir.path());
    assert!(seen.values().all(|n| *n == 1), "no crash, no duplicates");
    assert_eq!(seen.len(), 300);
    // Several epochs, each logging its small batches' plans.
    let commits = crate::common::numbered_entries(&dir.path().join("ck/commits"));
    assert!(commits.len() >= 2, "{commits:?}");
    let first: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("ck/sources/0/0")).unwrap()).unwrap();
    assert!(
        !first["continuous_epoch"].as_array().unwrap().is_empty(),
        "{first}"
    );
}

/// Writes input files from 0, one every 10 ms, on another thread, until
/// `stop` is set (or 3,000 files); returns how many it wrote.
fn write_files_until(dir: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Ordering::Acquire) && n < 3_000 {
            write_file(&dir, n);
            n += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        n
    })
}

/// Writes input files `from..to`, one every 10 ms, on another thread.
fn write_files_paced(dir: &Path, from: u64, to: u64) -> std::thread::JoinHandle<()> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        for n in from..to {
            write_file(&dir, n);
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

#[test]
fn a_kill_9_anywhere_in_an_epoch_loses_nothing() {
    for at in [
        "continuous-after-sink@1",
        "continuous-after-offsets@1",
        "continuous-after-sink@4",
    ] {
        let dir = setup();
        // Uncapped: the restarted run reads the backlog in other small
        // batches than the killed run did (a rerun reusing the killed run's
        // sink ids would be skipped as committed, losing rows).
        std::fs::write(
            dir.path().join("pipeline.toml"),
            pipeline().replace("max_files_per_trigger = 1\n", ""),
        )
        .unwrap();
        // Input arrives until the kill, however slowly a loaded machine
        // runs the epochs up to it.
        let killed = Arc::new(AtomicBool::new(false));
        let writer = write_files_until(dir.path(), killed.clone());
        let mut crashed = start(dir.path(), Some(at));
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = crashed.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                crashed.kill().unwrap();
                panic!("{at}: the query was never killed there");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "expected a kill at {at}"
        );
        assert!(
            !delivered(dir.path()).is_empty(),
            "{at}: rows before the kill"
        );
        killed.store(true, Ordering::Release);
        let files = writer.join().unwrap();

        // Restarted, with more input arriving.
        let mut child = start(dir.path(), None);
        write_files_paced(dir.path(), files, files + 20)
            .join()
            .unwrap();
        let ids = (files + 20) * 10;
        wait_for(dir.path(), ids as i64, &mut child);
        stop_gracefully(child);
        let seen = delivered(dir.path());
        assert_eq!(
            seen.keys().copied().collect::<Vec<_>>(),
            (0..ids as i64).collect::<Vec<_>>(),
            "{at}: every row at least once"
        );
    }
}

#[test]
fn stateful_pipelines_and_per_batch_sinks_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    assert_refusals(
        &path,
        &pipeline(),
        &[
            (
                "[sink]",
                "[watermark]\ncolumn = \"id\"\ndelay = \"1s\"\n\n[aggregate]\nwindow = { column = \"id\", tumbling = \"1m\" }\naggregates = [ { fn = \"count\" } ]\n\n[sink]",
                "the continuous trigger runs stateless pipelines only (as in Spark); [aggregate] keeps state",
            ),
            (
                "name = \"continuous\"",
                "drop_duplicates = [\"id\"]\nname = \"continuous\"",
                "drop_duplicates keeps state",
            ),
            (
                "continuous = \"50ms\"",
                "continuous = \"50ms\"\navailable_now = true",
                "a query has one trigger, but several are set",
            ),
        ],
    );
    std::fs::write(
        &path,
        pipeline().replace(
            "[sink]\nkind = \"json\"\npath = \"out\"\n",
            r#"[sink]
kind = "foreach_batch"
name = "cdc"
plugin = "${WEIR_PLUGIN_DIR}/weir_plugin_cdc_upsert.wasm"
config = { key = "id", output = "rows" }

[sink.outputs.rows]
kind = "json"
path = "rows"
"#,
        ),
    )
    .unwrap();
    let err = assert_exit(&weir().arg("validate").arg(&path).output().unwrap(), 2);
    assert!(
        err.contains("the continuous trigger cannot use this sink: a foreach_batch sink works per micro-batch"),
        "{err}"
    );
}

/// `examples/continuous-orders` (README): the 8 orders of at least 10.00
/// come out once each, with their amount in euros, while the query runs;
/// SIGTERM stops it cleanly.
#[test]
fn the_continuous_orders_example_delivers_its_documented_rows() {
    let dir = crate::common::example("continuous-orders");
    let child = start(dir.path(), None);
    let out = dir.path().join(".weir/output");
    let expected: BTreeMap<i64, f64> = [
        (1, 20.11),
        (2, 39.41),
        (4, 54.67),
        (6, 15.2),
        (8, 56.9),
        (9, 35.4),
        (10, 35.55),
        (12, 18.09),
    ]
    .into_iter()
    .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered_ids(&out).len() < expected.len() {
        assert!(Instant::now() < deadline, "{:?}", delivered_ids(&out));
        std::thread::sleep(Duration::from_millis(20));
    }
    stop_gracefully(child);
    let rows: Vec<Value> = committed_json_batches(&out)
        .into_values()
        .flatten()
        .collect();
    let got: BTreeMap<i64, f64> = rows
        .iter()
        .map(|row| {
            let amount = row["amount"].as_f64().unwrap();
            let eur = row["amount_eur"].as_f64().unwrap();
            assert!((eur - amount * 0.92).abs() < 1e-9, "{row}");
            (row["id"].as_i64().unwrap(), amount)
        })
        .collect();
    assert_eq!(rows.len(), expected.len(), "each order once: {rows:?}");
    assert_eq!(got, expected);
}
