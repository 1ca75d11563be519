//! foreachBatch sinks against a real PostgreSQL: the reference's CDC
//! pattern (latest row per key, upsert with an event-time guard and
//! deletes) fanned out to a Parquet archive, exactly once across `kill -9`
//! at every step, and refusals before anything is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use serde_json::Value;
use weir::faults::CRASH_POINTS;

use crate::common::{assert_exit, assert_ok, assert_refusals, run, run_killed_at, seeded, weir};
use crate::pg;

/// One Debezium-style change.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Change {
    pub(crate) op: &'static str,
    pub(crate) user_id: i64,
    pub(crate) email: Option<String>,
    pub(crate) ts_ms: i64,
}

impl Change {
    /// The change as one JSON line (a Kafka record's value, a file's line).
    pub(crate) fn json(&self) -> String {
        serde_json::json!({
            "op": self.op,
            "user_id": self.user_id,
            "email": self.email,
            "ts_ms": self.ts_ms,
        })
        .to_string()
    }
}

/// `files` files of changes to 10 users: times overlap between files (out
/// of order), some changes are exact duplicates, about one in five is a
/// delete, and deleted users come back.
pub(crate) fn cdc_stream(seed: u64, files: i64) -> Vec<Vec<Change>> {
    let mut random = seeded(seed);
    let mut seen = std::collections::HashSet::new();
    let mut all: Vec<Change> = Vec::new();
    let mut stream = Vec::new();
    for f in 0..files {
        let mut file = Vec::new();
        for _ in 0..12 {
            if !all.is_empty() && random(6) == 0 {
                let again = all[random(all.len() as i64) as usize].clone();
                file.push(again);
                continue;
            }
            let user_id = random(10) + 1;
            let mut ts_ms = 1_764_000_000_000 + f * 1000 + random(4000) - 2000;
            while !seen.insert((user_id, ts_ms)) {
                ts_ms += 1;
            }
            let change = if random(5) == 0 {
                Change {
                    op: "d",
                    user_id,
                    email: None,
                    ts_ms,
                }
            } else {
                Change {
                    op: if random(2) == 0 { "c" } else { "u" },
                    user_id,
                    email: Some(format!("user{user_id}+{ts_ms}@example.com")),
                    ts_ms,
                }
            };
            all.push(change.clone());
            file.push(change);
        }
        stream.push(file);
    }
    stream
}

/// Checks `stream` has an old change arriving after a newer delete, and
/// after a newer update: what the guard and the tombstones are for.
pub(crate) fn assert_late_changes(stream: &[Vec<Change>]) {
    assert!(
        has_older_change_after(stream, "d"),
        "no late update after a delete"
    );
    assert!(
        has_older_change_after(stream, "u"),
        "no late update after an update"
    );
}

/// Whether a later file carries an update older than an earlier file's
/// change of the same user that is that user's final state: a delete
/// (`op = "d"`, so only a tombstone keeps the user deleted) or an update.
fn has_older_change_after(stream: &[Vec<Change>], op: &str) -> bool {
    let last = |user: i64| {
        stream
            .iter()
            .flatten()
            .filter(|c| c.user_id == user)
            .map(|c| c.ts_ms)
            .max()
    };
    stream.iter().enumerate().any(|(i, file)| {
        file.iter()
            .filter(|c| (c.op == "d") == (op == "d") && last(c.user_id) == Some(c.ts_ms))
            .any(|newer| {
                stream[i + 1..]
                    .iter()
                    .flatten()
                    .any(|c| c.user_id == newer.user_id && c.ts_ms < newer.ts_ms && c.op != "d")
            })
    })
}

/// The latest-state table: per user the change with the greatest ts_ms,
/// unless it is a delete; as "user_id email ts_ms" lines.
pub(crate) fn latest_state(stream: &[Vec<Change>]) -> Vec<String> {
    let mut latest: BTreeMap<i64, &Change> = BTreeMap::new();
    for change in stream.iter().flatten() {
        let entry = latest.entry(change.user_id).or_insert(change);
        if change.ts_ms > entry.ts_ms {
            *entry = change;
        }
    }
    latest
        .values()
        .filter(|c| c.op != "d")
        .map(|c| format!("{} {} {}", c.user_id, c.email.as_ref().unwrap(), c.ts_ms))
        .collect()
}

/// Writes `stream` as `in/f000.json`, ... (one file per batch).
pub(crate) fn write_cdc_inputs(dir: &Path, stream: &[Vec<Change>]) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    for (i, file) in stream.iter().enumerate() {
        let body: String = file.iter().map(|c| c.json() + "\n").collect();
        std::fs::write(dir.join(format!("in/f{i:03}.json")), body).unwrap();
    }
}

/// The CDC pipeline: the changes in `in/`, one file per batch, into the
/// cdc-upsert plugin, whose `users` output is `users_output` (the body of
/// its table) and whose `raw` output is a Parquet archive.
pub(crate) fn cdc_pipeline(users_output: &str) -> String {
    let head = crate::common::json_files_head("cdc", "available_now = true");
    format!("{head}{}", cdc_schema_and_sink(users_output, "raw"))
}

/// The change rows' schema and the cdc-upsert sink: its `users` output is
/// `users_output` (the body of its table), its `raw` output a Parquet
/// archive at `raw`.
pub(crate) fn cdc_schema_and_sink(users_output: &str, raw: &str) -> String {
    format!(
        r#"schema = [
  {{ name = "op", type = "string" }},
  {{ name = "user_id", type = "long" }},
  {{ name = "email", type = "string" }},
  {{ name = "ts_ms", type = "long" }},
]

[sink]
kind = "foreach_batch"
name = "cdc"
plugin = "${{WEIR_PLUGIN_DIR}}/weir_plugin_cdc_upsert.wasm"
config = {{ key = "user_id", output = "users", archive = "raw" }}

[sink.outputs.users]
{users_output}

[sink.outputs.raw]
kind = "parquet"
path = "{raw}"
"#
    )
}

/// The `users` table of the database at `url`, a "user_id email ts_ms"
/// line per row (NULL for a null), by user id.
pub(crate) fn users_table(url: &str) -> Vec<String> {
    pg::query(
        url,
        "SELECT user_id, email, ts_ms FROM users ORDER BY user_id",
    )
    .into_iter()
    .map(|r| {
        r.into_iter()
            .map(|v| v.unwrap_or_else(|| "NULL".into()))
            .collect::<Vec<_>>()
            .join(" ")
    })
    .collect()
}

struct CdcScenario {
    dir: tempfile::TempDir,
    url: String,
}

impl CdcScenario {
    /// A pipeline reading `stream` (one file per batch) into the CDC sink,
    /// with the `users` table created in a fresh database. `users_extra`
    /// is appended to the `users` output's table.
    fn new(stream: &[Vec<Change>], users_extra: &str) -> CdcScenario {
        let url = pg::database("cdc");
        pg::query(
            &url,
            "CREATE TABLE users (user_id bigint PRIMARY KEY, email text, ts_ms bigint NOT NULL)",
        );
        let dir = tempfile::tempdir().unwrap();
        write_cdc_inputs(dir.path(), stream);
        let pipeline = cdc_pipeline(&format!(
            r#"kind = "postgres"
url = "{url}"
table = "users"
mode = "upsert"
newer_than = "ts_ms"
delete_when = {{ column = "op", equals = "d" }}
{users_extra}"#
        ));
        std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
        CdcScenario { dir, url }
    }

    fn pipeline(&self) -> PathBuf {
        self.dir.path().join("pipeline.toml")
    }

    fn table(&self) -> Vec<String> {
        users_table(&self.url)
    }

    /// Epochs in the ledger for output `users`, with how often each appears.
    fn ledger(&self) -> BTreeMap<i64, i64> {
        pg::query(
            &self.url,
            "SELECT epoch, count(*) FROM weir_epochs WHERE output = 'users' GROUP BY epoch",
        )
        .into_iter()
        .map(|r| {
            (
                r[0].as_ref().unwrap().parse().unwrap(),
                r[1].as_ref().unwrap().parse().unwrap(),
            )
        })
        .collect()
    }

    /// Every (user_id, ts_ms) in the committed Parquet archive, sorted.
    fn archive(&self) -> Vec<(i64, i64)> {
        let out = self.dir.path().join("raw");
        let mut rows = Vec::new();
        for batch in crate::common::numbered_entries(&out.join("_weir_log")) {
            let entry: Value = serde_json::from_slice(
                &std::fs::read(out.join("_weir_log").join(batch.to_string())).unwrap(),
            )
            .unwrap();
            for file in entry["files"].as_array().unwrap() {
                for batch in read_parquet(&out.join(file.as_str().unwrap())) {
                    let users = batch
                        .column_by_name("user_id")
                        .unwrap()
                        .as_primitive::<Int64Type>();
                    let ts = batch
                        .column_by_name("ts_ms")
                        .unwrap()
                        .as_primitive::<Int64Type>();
                    rows.extend(
                        users
                            .values()
                            .iter()
                            .copied()
                            .zip(ts.values().iter().copied()),
                    );
                }
            }
        }
        rows.sort();
        rows
    }
}

fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn all_changes(stream: &[Vec<Change>]) -> Vec<(i64, i64)> {
    let mut rows: Vec<(i64, i64)> = stream
        .iter()
        .flatten()
        .map(|c| (c.user_id, c.ts_ms))
        .collect();
    rows.sort();
    rows
}

#[test]
fn cdc_upserts_give_the_latest_state_and_fan_out_to_parquet() {
    let stream = cdc_stream(40, 10);
    let expected = latest_state(&stream);
    assert!(expected.len() >= 5, "{expected:?}");
    assert!(
        stream.iter().flatten().filter(|c| c.op == "d").count() >= 5,
        "the stream must delete"
    );
    assert_late_changes(&stream);
    let scenario = CdcScenario::new(&stream, "key = [\"user_id\"]");
    let err = assert_ok(&run(&scenario.pipeline()));
    assert_eq!(scenario.table(), expected, "{err}");
    assert!(
        err.contains("| cdc "),
        "the sink plugin's time in progress:\n{err}"
    );
    let every_epoch: BTreeMap<i64, i64> = (0..10).map(|e| (e, 1)).collect();
    assert_eq!(scenario.ledger(), every_epoch);
    assert_eq!(scenario.archive(), all_changes(&stream));
}

#[test]
fn cdc_is_exactly_once_after_a_kill_at_every_step() {
    let stream = cdc_stream(32, 6);
    let expected = latest_state(&stream);
    let every_epoch: BTreeMap<i64, i64> = (0..6).map(|e| (e, 1)).collect();
    let points = CRASH_POINTS.iter().chain(&[
        "sink-after-output",
        "postgres-before-commit",
        "postgres-after-commit",
    ]);
    let mut kills = 0;
    for point in points {
        for batch in [1, 4] {
            let scenario = CdcScenario::new(&stream, "key = [\"user_id\"]");
            run_killed_at(&scenario.pipeline(), &format!("{point}@{batch}"));
            kills += 1;
            let err = assert_ok(&run(&scenario.pipeline()));
            let at = format!("kill at {point}@{batch}:\n{err}");
            assert_eq!(scenario.table(), expected, "{at}");
            assert_eq!(scenario.ledger(), every_epoch, "{at}");
            assert_eq!(scenario.archive(), all_changes(&stream), "{at}");
        }
    }
    assert!(kills >= 20);
}

#[test]
fn upsert_rows_without_the_key_fail_before_anything_is_written() {
    let stream = cdc_stream(33, 2);
    let scenario = CdcScenario::new(&stream, "key = [\"id\"]");
    let err = assert_exit(&run(&scenario.pipeline()), 1);
    assert!(
        err.contains("output `users`: upsert rows must have column `id`"),
        "{err}"
    );
    // Neither output of the failed epoch was written.
    assert!(scenario.table().is_empty());
    assert!(
        scenario.archive().is_empty(),
        "the archive output was written"
    );
    assert!(!scenario.dir.path().join("ck/commits/0").exists());
}

#[test]
fn foreach_batch_config_mistakes_are_reported_at_start() {
    let stream = cdc_stream(34, 1);
    let scenario = CdcScenario::new(&stream, "key = [\"user_id\"]");
    let pipeline = scenario.pipeline();
    let original = std::fs::read_to_string(&pipeline).unwrap();
    assert_refusals(
        &pipeline,
        &original,
        &[
            (
                "mode = \"upsert\"\n",
                "",
                "`key` applies when rows are applied by key only",
            ),
            (
                "key = [\"user_id\"]",
                "key = []",
                "an upsert output needs `key` columns",
            ),
            (
                "kind = \"parquet\"\npath = \"raw\"",
                "kind = \"parquet\"",
                "a parquet output needs a `path`",
            ),
            (
                "name = \"cdc\"\nplugin",
                "plugin",
                "needs a `name` and a `plugin`",
            ),
            (
                "[sink.outputs.raw]\nkind = \"parquet\"\npath = \"raw\"",
                "[sink.outputs.raw]\nkind = \"parquet\"\npath = \"raw\"\ntable = \"x\"",
                "`table` applies to postgres outputs only, not parquet",
            ),
            (
                "mode = \"upsert\"\n",
                "mode = \"merge\"\n",
                "a postgres output takes mode = \"append\" or \"upsert\"",
            ),
        ],
    );
}

#[test]
fn postgres_append_output_writes_each_epoch_once() {
    let stream = cdc_stream(35, 4);
    let scenario = CdcScenario::new(&stream, "key = [\"user_id\"]");
    pg::query(
        &scenario.url,
        "CREATE TABLE changes (op text, user_id bigint, email text, ts_ms bigint)",
    );
    let pipeline = scenario.pipeline();
    let text = std::fs::read_to_string(&pipeline).unwrap().replace(
        "[sink.outputs.raw]\nkind = \"parquet\"\npath = \"raw\"",
        &format!(
            "[sink.outputs.raw]\nkind = \"postgres\"\nurl = \"{}\"\ntable = \"changes\"",
            scenario.url
        ),
    );
    std::fs::write(&pipeline, text).unwrap();
    run_killed_at(&pipeline, "after-transform@2");
    // Kill between the append's commit and the checkpoint's: the replay
    // finds the epoch in the ledger.
    run_killed_at(&pipeline, "postgres-after-commit@3");
    assert_ok(&run(&pipeline));
    let mut got: Vec<(i64, i64)> = pg::query(&scenario.url, "SELECT user_id, ts_ms FROM changes")
        .into_iter()
        .map(|r| {
            (
                r[0].as_ref().unwrap().parse().unwrap(),
                r[1].as_ref().unwrap().parse().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, all_changes(&stream));
    assert_eq!(scenario.table(), latest_state(&stream));
}

#[test]
fn the_cdc_example_gives_its_documented_table() {
    let dir = crate::common::example("cdc");
    let url = pg::database("example");
    pg::query(
        &url,
        "CREATE TABLE users (user_id bigint PRIMARY KEY, email text, ts_ms bigint NOT NULL)",
    );
    for _ in 0..2 {
        // The second run finds everything committed and changes nothing.
        let out = weir()
            .arg("run")
            .arg(dir.path().join("pipeline.toml"))
            .env("DATABASE_URL", &url)
            .output()
            .unwrap();
        assert_ok(&out);
    }
    let table: Vec<Vec<Option<String>>> = pg::query(
        &url,
        "SELECT user_id, email, ts_ms FROM users ORDER BY user_id",
    );
    let text = |row: &[&str]| row.iter().map(|v| Some(v.to_string())).collect::<Vec<_>>();
    assert_eq!(
        table,
        vec![
            text(&["2", "bob@builder.org", "1300"]),
            text(&["3", "cy@example.com", "1400"]),
        ]
    );
    let ledger = pg::query(&url, "SELECT epoch, rows FROM weir_epochs ORDER BY epoch");
    assert_eq!(
        ledger,
        vec![text(&["0", "2"]), text(&["1", "2"]), text(&["2", "3"])]
    );
}
