//! The Delta Lake sink and foreachBatch output: exactly-once appends and
//! MERGE upserts on local disk and on S3 (moto), across `kill -9`, with
//! schema evolution; every table is read back by an independent reader —
//! PyPI's `deltalake` (delta-rs's Python package), in a separate process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use weir::faults::CRASH_POINTS;

use crate::common::{Scenario, Spec, assert_exit, assert_ok, assert_refusals, run, run_killed_at};
use crate::foreach_batch::{
    Change, assert_late_changes, cdc_pipeline, cdc_stream, latest_state, write_cdc_inputs,
};

/// What the independent reader saw.
#[derive(Debug)]
pub(crate) struct DeltaRead {
    /// The table version.
    pub version: i64,
    /// Column names, in table order.
    pub columns: Vec<String>,
    /// Rows as JSON objects, in the reader's order.
    pub rows: Vec<Value>,
    /// The latest application-transaction version of the app id asked for.
    pub txn: Option<i64>,
    /// Data files in the table's current version.
    pub files: usize,
}

const READER: &str = r#"
import json, os, sys
from deltalake import DeltaTable
uri, options, app_id = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
table = DeltaTable(uri, storage_options=options or None)
data = table.to_pyarrow_table()
print(json.dumps({
    "version": table.version(),
    "columns": data.column_names,
    "rows": data.to_pylist(),
    "txn": table.transaction_version(app_id),
    "files": len(table.file_uris()),
}, default=str))
# Leave without running destructors: pyarrow's and delta-rs's thread pools
# racing at interpreter exit sometimes abort the process ("terminate called
# without an active exception") after the answer is out.
sys.stdout.flush()
os._exit(0)
"#;

pub(crate) fn python() -> PathBuf {
    let venv = std::env::var_os("WEIR_TEST_VENV").expect(
        "WEIR_TEST_VENV is not set: run `./dev test`, which installs PyPI's deltalake (a Delta \
         reader) into a virtualenv",
    );
    Path::new(&venv).join("bin/python")
}

/// Reads the table at `uri` with PyPI's `deltalake` in a separate process.
pub(crate) fn read_delta(uri: &str, options: &Value, app_id: &str) -> DeltaRead {
    let out = Command::new(python())
        .args(["-c", READER, uri, &options.to_string(), app_id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the deltalake reader failed on {uri}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Value = serde_json::from_slice(&out.stdout).unwrap();
    DeltaRead {
        version: read["version"].as_i64().unwrap(),
        columns: serde_json::from_value(read["columns"].clone()).unwrap(),
        rows: serde_json::from_value(read["rows"].clone()).unwrap(),
        txn: read["txn"].as_i64(),
        files: read["files"].as_u64().unwrap() as usize,
    }
}

/// Rows sorted by their `id` (or `user_id`) column.
pub(crate) fn by_id(mut rows: Vec<Value>) -> Vec<Value> {
    let id = |r: &Value| r.get("id").or(r.get("user_id")).and_then(Value::as_i64);
    rows.sort_by_key(id);
    rows
}

/// The application transactions of each commit in a local table's
/// `_delta_log`, by table version: `(app id, version)`.
pub(crate) fn log_txns(table: &Path) -> BTreeMap<u64, Vec<(String, i64)>> {
    let mut commits = BTreeMap::new();
    for entry in std::fs::read_dir(table.join("_delta_log")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(version) = name.strip_suffix(".json") else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        commits.insert(version.parse().unwrap(), txns_of(&text));
    }
    commits
}

/// The `txn` actions of one commit file's text.
pub(crate) fn txns_of(commit: &str) -> Vec<(String, i64)> {
    commit
        .lines()
        .filter_map(|line| {
            let action: Value = serde_json::from_str(line).unwrap();
            let txn = action.get("txn")?;
            Some((
                txn["appId"].as_str().unwrap().to_string(),
                txn["version"].as_i64().unwrap(),
            ))
        })
        .collect()
}

/// Checks a log holds one commit per batch, each with exactly one
/// application transaction of one app id, versions `0..batches` in order;
/// returns the app id.
pub(crate) fn assert_one_txn_per_batch(
    commits: &BTreeMap<u64, Vec<(String, i64)>>,
    batches: i64,
    context: &str,
) -> String {
    let txns: Vec<&(String, i64)> = commits.values().flatten().collect();
    assert_eq!(
        txns.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        (0..batches).collect::<Vec<_>>(),
        "{context}: the log's txn versions, commit by commit: {commits:?}"
    );
    assert!(
        commits.values().all(|t| t.len() == 1),
        "{context}: a commit without its txn: {commits:?}"
    );
    let app = txns[0].0.clone();
    assert!(
        app.starts_with("weir:") && txns.iter().all(|(a, _)| *a == app),
        "{context}: one app id: {commits:?}"
    );
    app
}

fn order(id: i64) -> Value {
    json!({"id": id, "name": format!("n{id}"), "amount": id as f64 * 3.0 + 0.5,
           "amount_x2": (id as f64 * 3.0 + 0.5) * 2.0 + 1.0})
}

/// 6 files x 5 rows, 2 files per batch (batches 0, 1, 2) through the
/// enrich plugin into a Delta table at `out`.
fn delta_scenario() -> Scenario {
    let s = Scenario::new(Spec {
        sink: "delta",
        ..Spec::default()
    });
    s.json_inputs(6, 5);
    s
}

#[test]
fn each_batch_is_one_delta_commit_that_an_independent_reader_reads() {
    let s = delta_scenario();
    let err = assert_ok(&s.run());
    let table = s.path("out");
    let app = assert_one_txn_per_batch(&log_txns(&table), 3, "first run");
    assert!(app.ends_with(":sink"), "{app}");
    let read = read_delta(table.to_str().unwrap(), &json!({}), &app);
    assert_eq!(read.columns, ["id", "name", "amount", "amount_x2"], "{err}");
    assert_eq!(by_id(read.rows), (1..=30).map(order).collect::<Vec<_>>());
    assert_eq!((read.version, read.txn), (2, Some(2)));

    // More input later: the same query appends batch 3 only.
    s.json_inputs(7, 5);
    assert_ok(&s.run());
    assert_one_txn_per_batch(&log_txns(&table), 4, "second run");
    let read = read_delta(table.to_str().unwrap(), &json!({}), &app);
    assert_eq!(by_id(read.rows), (1..=35).map(order).collect::<Vec<_>>());
    assert_eq!(read.txn, Some(3));
}

#[test]
fn kill_at_every_point_of_a_delta_batch_then_restart_commits_each_batch_once() {
    // The file sink's own points are not on a Delta sink's path; the Delta
    // sink's is between its commit and the checkpoint's.
    let points = CRASH_POINTS
        .iter()
        .filter(|p| !p.starts_with("sink-"))
        .chain(&["delta-after-commit"]);
    let expected: Vec<Value> = (1..=30).map(order).collect();
    let mut kills = 0;
    for point in points {
        for batch in [0, 1, 2] {
            let s = delta_scenario();
            run_killed_at(&s.pipeline_path(), &format!("{point}@{batch}"));
            kills += 1;
            let err = assert_ok(&s.run());
            let at = format!("after a kill at {point}@{batch}:\n{err}");
            let table = s.path("out");
            let app = assert_one_txn_per_batch(&log_txns(&table), 3, &at);
            let read = read_delta(table.to_str().unwrap(), &json!({}), &app);
            assert_eq!(by_id(read.rows), expected, "{at}");
            assert_eq!(s.committed_batches(), [0, 1, 2], "{at}");
        }
    }
    assert!(kills >= 20, "{kills} kills");
}

/// Data files on disk under a table (outside `_delta_log`).
fn parquet_files(table: &Path) -> usize {
    fn walk(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.ends_with("_delta_log"))
            .map(|p| match p.is_dir() {
                true => walk(&p),
                false => usize::from(p.extension().is_some_and(|e| e == "parquet")),
            })
            .sum()
    }
    walk(table)
}

/// 12 batches of one 5-row file each into a Delta table with OPTIMIZE
/// after every 4th batch and VACUUM (removed files kept 0 s) every 6th.
fn maintained_scenario() -> Scenario {
    let s = Scenario::new(Spec {
        sink: "delta",
        max_files: Some(1),
        tables: "optimize_every = 4\nvacuum_every = 6\nvacuum_retention = \"0s\"\n".into(),
        ..Spec::default()
    });
    s.json_inputs(12, 5);
    s
}

#[test]
fn scheduled_optimize_and_vacuum_compact_the_table_and_keep_its_rows_exactly_once() {
    let expected: Vec<Value> = (1..=60).map(order).collect();
    let check = |s: &Scenario, at: &str| {
        let table = s.path("out");
        // The batches' commits carry their txn; OPTIMIZE's and VACUUM's none.
        let txns: Vec<i64> = log_txns(&table).values().flatten().map(|t| t.1).collect();
        assert_eq!(txns, (0..12).collect::<Vec<_>>(), "{at}");
        let app = log_txns(&table)
            .values()
            .flatten()
            .next()
            .unwrap()
            .0
            .clone();
        let read = read_delta(table.to_str().unwrap(), &json!({}), &app);
        assert_eq!(by_id(read.rows), expected, "{at}");
        assert_eq!(read.txn, Some(11), "{at}");
        // OPTIMIZE after batch 11 made one file of twelve; VACUUM then
        // deleted every file no longer in the table.
        assert_eq!(read.files, 1, "{at}");
        assert_eq!(parquet_files(&table), 1, "{at}");
        assert_eq!(s.committed_batches(), (0..12).collect::<Vec<_>>(), "{at}");
    };
    let s = maintained_scenario();
    assert_ok(&s.run());
    check(&s, "straight run");
    for at in [
        "delta-after-optimize@3",
        "delta-after-optimize@11",
        "delta-after-vacuum@5",
        "delta-after-vacuum@11",
    ] {
        let s = maintained_scenario();
        run_killed_at(&s.pipeline_path(), at);
        let err = assert_ok(&s.run());
        check(&s, &format!("after a kill at {at}:\n{err}"));
    }
}

/// Two files of orders, then (after a restart with a wider source schema)
/// two more that also carry `country`.
fn evolving_scenario(merge_schema: bool) -> Scenario {
    let s = Scenario::new(Spec {
        sink: "delta",
        transforms: vec![],
        max_files: Some(1),
        ..Spec::default()
    });
    if merge_schema {
        crate::common::edit(
            &s.pipeline_path(),
            "path = \"out\"",
            "path = \"out\"\nmerge_schema = true",
        );
    }
    s.input("f0.json", "{\"id\": 1, \"name\": \"a\", \"amount\": 1.5}\n");
    s.input("f1.json", "{\"id\": 2, \"name\": \"b\", \"amount\": 2.5}\n");
    assert_ok(&s.run());
    s.input(
        "f2.json",
        "{\"id\": 3, \"name\": \"c\", \"amount\": 3.5, \"country\": \"NL\"}\n",
    );
    s.input(
        "f3.json",
        "{\"id\": 4, \"name\": \"d\", \"amount\": 4.5, \"country\": \"PT\"}\n",
    );
    crate::common::edit(
        &s.pipeline_path(),
        "  { name = \"amount\", type = \"double\" },\n",
        "  { name = \"amount\", type = \"double\" },\n  { name = \"country\", type = \"string\" },\n",
    );
    s
}

#[test]
fn a_new_column_widens_the_table_with_merge_schema_and_stops_the_query_without() {
    let wide = evolving_scenario(true);
    assert_ok(&wide.run());
    let table = wide.path("out");
    let app = assert_one_txn_per_batch(&log_txns(&table), 4, "merge_schema");
    let read = read_delta(table.to_str().unwrap(), &json!({}), &app);
    assert_eq!(read.columns, ["id", "name", "amount", "country"]);
    assert_eq!(
        by_id(read.rows),
        [
            json!({"id": 1, "name": "a", "amount": 1.5, "country": null}),
            json!({"id": 2, "name": "b", "amount": 2.5, "country": null}),
            json!({"id": 3, "name": "c", "amount": 3.5, "country": "NL"}),
            json!({"id": 4, "name": "d", "amount": 4.5, "country": "PT"}),
        ]
    );

    let strict = evolving_scenario(false);
    let err = assert_exit(&strict.run(), 1);
    assert!(
        err.contains("the rows do not fit the table: new column(s) `country` (Utf8)")
            && err.contains("set merge_schema = true"),
        "{err}"
    );
    // Nothing of batch 2 was written or committed: with merge_schema the
    // same checkpoint goes on from it.
    let table = strict.path("out");
    assert_one_txn_per_batch(&log_txns(&table), 2, "refused");
    assert_eq!(strict.committed_batches(), [0, 1]);
    crate::common::edit(
        &strict.pipeline_path(),
        "path = \"out\"",
        "path = \"out\"\nmerge_schema = true",
    );
    assert_ok(&strict.run());
    let app = assert_one_txn_per_batch(&log_txns(&table), 4, "after enabling merge_schema");
    assert_eq!(
        read_delta(table.to_str().unwrap(), &json!({}), &app)
            .rows
            .len(),
        4
    );
}

#[test]
fn delta_sink_mistakes_are_reported_at_start() {
    let s = delta_scenario();
    let original = std::fs::read_to_string(s.pipeline_path()).unwrap();
    assert_refusals(
        &s.pipeline_path(),
        &original,
        &[
            (
                "path = \"out\"",
                "path = \"out\"\noutput_mode = \"update\"",
                "Data source delta does not support Update output mode",
            ),
            (
                "kind = \"delta\"\npath = \"out\"",
                "kind = \"json\"\npath = \"out\"\nmerge_schema = true",
                "`merge_schema` applies to kind = \"delta\" sinks only",
            ),
            (
                "kind = \"delta\"\npath = \"out\"",
                "kind = \"delta\"",
                "this sink needs a `path`",
            ),
            (
                "[trigger]\navailable_now = true",
                "[trigger]\ncontinuous = \"1s\"",
                "a delta sink commits once per micro-batch",
            ),
        ],
    );
}

const CDC_MERGE_OUTPUT: &str = r#"kind = "delta"
path = "users"
mode = "merge"
key = ["user_id"]
newer_than = "ts_ms"
delete_when = { column = "op", equals = "d" }"#;

/// The CDC example's changes into a Delta table by MERGE.
fn delta_cdc(stream: &[Vec<Change>]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_cdc_inputs(dir.path(), stream);
    std::fs::write(
        dir.path().join("pipeline.toml"),
        cdc_pipeline(CDC_MERGE_OUTPUT),
    )
    .unwrap();
    dir
}

/// The table as "user_id email ts_ms" lines, as `latest_state` gives them.
fn users(table: &Path) -> (Vec<String>, DeltaRead) {
    let app = assert_one_app(&log_txns(table));
    let read = read_delta(table.to_str().unwrap(), &json!({}), &app);
    (user_lines(read.rows.clone()), read)
}

/// Users' rows as "user_id email ts_ms" lines, by user.
fn user_lines(rows: Vec<Value>) -> Vec<String> {
    by_id(rows)
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r["user_id"],
                r["email"].as_str().unwrap(),
                r["ts_ms"]
            )
        })
        .collect()
}

/// The one app id of a log's transactions.
fn assert_one_app(commits: &BTreeMap<u64, Vec<(String, i64)>>) -> String {
    let apps: std::collections::BTreeSet<&String> =
        commits.values().flatten().map(|(a, _)| a).collect();
    assert_eq!(apps.len(), 1, "{commits:?}");
    apps.into_iter().next().unwrap().clone()
}

#[test]
fn cdc_merge_into_delta_gives_the_latest_state() {
    let stream = cdc_stream(40, 10);
    assert_late_changes(&stream);
    let dir = delta_cdc(&stream);
    let err = assert_ok(&run(&dir.path().join("pipeline.toml")));
    let (table, read) = users(&dir.path().join("users"));
    assert_eq!(table, latest_state(&stream), "{err}");
    // The marker column is an instruction, not data.
    assert_eq!(read.columns, ["user_id", "email", "ts_ms"]);
    let app = assert_one_txn_per_batch(&log_txns(&dir.path().join("users")), 10, "cdc");
    assert!(app.ends_with(":users"), "{app}");
    assert_eq!(read.txn, Some(9));
}

#[test]
fn the_tombstone_table_is_compacted_every_ten_epochs() {
    let stream = cdc_stream(41, 30);
    let dir = delta_cdc(&stream);
    let err = assert_ok(&run(&dir.path().join("pipeline.toml")));
    let (table, _) = users(&dir.path().join("users"));
    assert_eq!(table, latest_state(&stream), "{err}");
    let tombstones = dir.path().join("users/_weir_tombstones");
    let commits = log_txns(&tombstones);
    let app = commits.values().flatten().next().unwrap().0.clone();
    let read = read_delta(tombstones.to_str().unwrap(), &json!({}), &app);
    // OPTIMIZE after epoch 29 merged the epochs' small files into one.
    assert_eq!(read.files, 1, "{commits:?}");
    assert!(read.rows.len() > 3, "{:?}", read.rows);
    assert_eq!(read.txn, commits.values().flatten().map(|t| t.1).max());
}

#[test]
fn cdc_merge_into_delta_is_exactly_once_after_a_kill_at_every_step() {
    let stream = cdc_stream(32, 6);
    let expected = latest_state(&stream);
    let points = CRASH_POINTS
        .iter()
        .filter(|p| !p.starts_with("sink-"))
        .chain(&["sink-after-output", "delta-after-commit"]);
    let mut kills = 0;
    for point in points {
        for batch in [1, 4] {
            let dir = delta_cdc(&stream);
            let pipeline = dir.path().join("pipeline.toml");
            run_killed_at(&pipeline, &format!("{point}@{batch}"));
            kills += 1;
            let err = assert_ok(&run(&pipeline));
            let at = format!("after a kill at {point}@{batch}:\n{err}");
            assert_eq!(users(&dir.path().join("users")).0, expected, "{at}");
            assert_one_txn_per_batch(&log_txns(&dir.path().join("users")), 6, &at);
        }
    }
    assert!(kills >= 18, "{kills} kills");
}

#[test]
fn delta_output_mistakes_are_reported_at_start() {
    let dir = delta_cdc(&cdc_stream(34, 1));
    let pipeline = dir.path().join("pipeline.toml");
    let original = std::fs::read_to_string(&pipeline).unwrap();
    assert_refusals(
        &pipeline,
        &original,
        &[
            (
                "mode = \"merge\"",
                "mode = \"upsert\"",
                "a delta output takes mode = \"append\" or \"merge\"",
            ),
            (
                "key = [\"user_id\"]",
                "key = []",
                "a merge output needs `key` columns",
            ),
            (
                "mode = \"merge\"",
                "mode = \"append\"",
                "`key` applies when rows are applied by key only",
            ),
            (
                "path = \"users\"",
                "path = \"users\"\ntable = \"t\"",
                "`table` applies to postgres outputs only, not delta",
            ),
        ],
    );
}

#[test]
fn merge_rows_without_the_key_fail_before_anything_is_written() {
    let dir = delta_cdc(&cdc_stream(33, 2));
    let pipeline = dir.path().join("pipeline.toml");
    crate::common::edit(&pipeline, "key = [\"user_id\"]", "key = [\"id\"]");
    let err = assert_exit(&run(&pipeline), 1);
    assert!(err.contains("upsert rows must have column `id`"), "{err}");
    assert!(!dir.path().join("users/_delta_log").exists());
}

/// The reader's storage options for the test S3 server.
pub(crate) fn s3_reader_options() -> Value {
    json!({
        "AWS_ENDPOINT_URL": crate::s3::moto().endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_ALLOW_HTTP": "true",
    })
}

/// The application transactions of each commit of the table at `url`.
pub(crate) fn s3_log_txns(url: &str) -> BTreeMap<u64, Vec<(String, i64)>> {
    let log = format!("{url}/_delta_log");
    crate::s3::list(&log)
        .iter()
        .filter_map(|name| {
            let version = name.strip_suffix(".json")?.parse().ok()?;
            let text = String::from_utf8(crate::s3::read(&log, name)).unwrap();
            Some((version, txns_of(&text)))
        })
        .collect()
}

#[test]
fn a_delta_table_on_s3_is_written_exactly_once_across_kills() {
    let bucket = crate::s3::bucket("delta");
    let url = format!("s3://{bucket}/orders");
    let s = delta_scenario();
    crate::common::edit(
        &s.pipeline_path(),
        "path = \"out\"",
        &format!("path = \"{url}\""),
    );
    let text = std::fs::read_to_string(s.pipeline_path()).unwrap();
    std::fs::write(
        s.pipeline_path(),
        format!("{text}\n{}", crate::s3::s3_table()),
    )
    .unwrap();
    run_killed_at(&s.pipeline_path(), "delta-after-commit@0");
    run_killed_at(&s.pipeline_path(), "before-commit@1");
    let err = assert_ok(&s.run());
    let app = assert_one_txn_per_batch(&s3_log_txns(&url), 3, &err);
    let read = read_delta(&url, &s3_reader_options(), &app);
    assert_eq!(by_id(read.rows), (1..=30).map(order).collect::<Vec<_>>());
    assert_eq!(read.txn, Some(2));
}

#[test]
fn cdc_merge_into_delta_on_s3_gives_the_latest_state() {
    let bucket = crate::s3::bucket("delta-cdc");
    let url = format!("s3://{bucket}/users");
    let stream = cdc_stream(41, 5);
    let dir = delta_cdc(&stream);
    let pipeline = dir.path().join("pipeline.toml");
    crate::common::edit(&pipeline, "path = \"users\"", &format!("path = \"{url}\""));
    let text = std::fs::read_to_string(&pipeline).unwrap();
    std::fs::write(&pipeline, format!("{text}\n{}", crate::s3::s3_table())).unwrap();
    run_killed_at(&pipeline, "delta-after-commit@2");
    let err = assert_ok(&run(&pipeline));
    let app = assert_one_txn_per_batch(&s3_log_txns(&url), 5, &err);
    let read = read_delta(&url, &s3_reader_options(), &app);
    assert_eq!(user_lines(read.rows), latest_state(&stream));
}

#[test]
fn the_delta_examples_give_their_documented_tables() {
    let dir = crate::common::example("cdc-delta");
    let pipeline = dir.path().join("pipeline.toml");
    // The second run finds everything committed and changes nothing.
    assert_ok(&run(&pipeline));
    assert_ok(&run(&pipeline));
    let table = dir.path().join(".weir/users");
    assert_eq!(
        users(&table).0,
        ["2 bob@builder.org 1300", "3 cy@example.com 1400"]
    );
    assert_one_txn_per_batch(&log_txns(&table), 3, "cdc-delta");

    let dir = crate::common::example("delta-orders");
    let pipeline = dir.path().join("pipeline.toml");
    assert_ok(&run(&pipeline));
    assert_ok(&run(&pipeline));
    let mut expected = Vec::new();
    for file in ["000", "001", "002", "003"] {
        let text =
            std::fs::read_to_string(dir.path().join(format!("data/orders/orders-{file}.jsonl")))
                .unwrap();
        for line in text.lines() {
            let order: Value = serde_json::from_str(line).unwrap();
            if order["amount"].as_f64().unwrap() >= 10.0 {
                expected.push((
                    order["id"].as_i64().unwrap(),
                    order["customer"].as_str().unwrap().to_string(),
                    order["amount"].as_f64().unwrap(),
                ));
            }
        }
    }
    let table = dir.path().join(".weir/orders");
    let app = assert_one_txn_per_batch(&log_txns(&table), 2, "delta-orders");
    let read = read_delta(table.to_str().unwrap(), &json!({}), &app);
    let rows: Vec<(i64, String, f64)> = by_id(read.rows.clone())
        .iter()
        .map(|r| {
            let amount = r["amount"].as_f64().unwrap();
            let eur = r["amount_eur"].as_f64().unwrap();
            assert!((eur - amount * 0.92).abs() < 1e-9, "{r}");
            (
                r["id"].as_i64().unwrap(),
                r["customer"].as_str().unwrap().to_string(),
                amount,
            )
        })
        .collect();
    assert_eq!(rows, expected);
    for (_, customer, _) in &expected {
        assert!(
            table.join(format!("customer={customer}")).is_dir(),
            "partition folder for {customer}"
        );
    }
}

/// A `weir serve` query from orders files through `double` (enrich:
/// `amount_x2`) into a Delta table; file 0 is committed, then `double` is
/// hot-swapped to a version emitting `amount_x3` instead and file 1
/// arrives: the schema changes mid-run, without a restart.
fn swap_in_a_new_column(merge_schema: bool) -> (tempfile::TempDir, crate::serve::Server) {
    use crate::serve::{Server, hosted_pipeline_text, wait_until, write_input};
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let state = dir.path().join("state");
    let server = Server::start(
        &state,
        crate::common::free_port(),
        &dir.path().join("serve.log"),
    );
    let pipeline = dir.path().join("orders.toml");
    let sink = format!("kind = \"delta\"\npath = \"out\"\nmerge_schema = {merge_schema}");
    let text = hosted_pipeline_text(&input).replace("kind = \"json\"\npath = \"out\"", &sink);
    std::fs::write(&pipeline, text).unwrap();
    server.cli_as("acme", &["submit", pipeline.to_str().unwrap()]);
    let table = state.join("tenants/acme/orders/out");
    write_input(&input, 0);
    wait_until("file 0 in the table", || {
        table.join("_delta_log").is_dir() && !log_txns(&table).is_empty()
    });
    let enrich = format!("{}/weir_plugin_enrich.wasm", weir_fixtures::PLUGIN_DIR);
    let config = r#"{"input":"amount","output":"amount_x3","multiply":3.0}"#;
    server.cli_as(
        "acme",
        &["swap", "acme/orders", "double", &enrich, "--config", config],
    );
    write_input(&input, 1);
    (dir, server)
}

#[test]
fn a_column_that_appears_mid_run_widens_the_table_or_stops_the_query() {
    use crate::serve::wait_until;
    let (dir, _server) = swap_in_a_new_column(true);
    let table = dir.path().join("state/tenants/acme/orders/out");
    wait_until("file 1 in the table", || {
        log_txns(&table).values().flatten().count() == 2
    });
    let app = assert_one_txn_per_batch(&log_txns(&table), 2, "merge_schema");
    let read = read_delta(table.to_str().unwrap(), &json!({}), &app);
    assert_eq!(
        read.columns,
        ["id", "name", "amount", "amount_x2", "amount_x3"]
    );
    let expected: Vec<Value> = (1..=10)
        .map(|id| {
            let amount = id as f64 + 0.5;
            let (x2, x3) = if id <= 5 {
                (json!(amount * 2.0), Value::Null)
            } else {
                (Value::Null, json!(amount * 3.0))
            };
            json!({"id": id, "name": format!("n{id}"), "amount": amount,
                   "amount_x2": x2, "amount_x3": x3})
        })
        .collect();
    assert_eq!(by_id(read.rows), expected);

    let (dir, server) = swap_in_a_new_column(false);
    let status = || -> Value {
        let all: Value = serde_json::from_str(&server.cli(&["status"])).unwrap();
        all.as_array().unwrap()[0]["status"].clone()
    };
    wait_until("the query to stop", || status()["state"] == "failed");
    let error = status()["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("the rows do not fit the table: new column(s) `amount_x3` (Float64)")
            && error.contains("set merge_schema = true"),
        "{error}"
    );
    // Batch 1 wrote nothing (and is not committed: it runs again on start).
    let table = dir.path().join("state/tenants/acme/orders/out");
    assert_one_txn_per_batch(&log_txns(&table), 1, &error);
    let read = read_delta(table.to_str().unwrap(), &json!({}), "");
    assert_eq!(read.rows.len(), 5);
}

#[test]
fn complete_mode_replaces_the_table_each_batch_once() {
    let dir = crate::common::example("windowed-clicks");
    let pipeline = dir.path().join("pipeline.toml");
    crate::common::edit(
        &pipeline,
        "kind = \"json\"\npath = \".weir/output\"\noutput_mode = \"append\"",
        "kind = \"delta\"\npath = \".weir/output\"\noutput_mode = \"complete\"",
    );
    run_killed_at(&pipeline, "delta-after-commit@3");
    let err = assert_ok(&run(&pipeline));
    let table = dir.path().join(".weir/output");
    let app = assert_one_txn_per_batch(&log_txns(&table), 5, &err);
    let read = read_delta(table.to_str().unwrap(), &json!({}), &app);
    let mut windows: Vec<String> = read.rows.iter().map(crate::windows::describe).collect();
    windows.sort();
    // The whole result table after batch 4 (as the console shows it in
    // `windows::article_example_in_complete_mode_emits_the_whole_table`).
    assert_eq!(
        windows,
        [
            "11:55-12:00 u1 2",
            "12:00-12:05 u1 2",
            "12:00-12:05 u2 1",
            "12:05-12:10 u1 1",
            "12:05-12:10 u2 1",
            "12:15-12:20 u2 1",
        ]
    );
}
