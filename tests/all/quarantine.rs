//! Poison rows and repeatable plugins: a stage with
//! `on_error = "quarantine"` sets aside the rows its plugin fails on and
//! runs the rest; a replayed batch quarantines the same rows and gives its
//! plugins the same clock and random numbers, so its output is the first
//! attempt's, byte for byte.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::Value;
use weir::faults::CRASH_POINTS;

use crate::common::{Scenario, Spec, assert_exit, assert_ok, committed_json_batches};
use crate::crash::run_until_killed;

/// `trap` traps on every batch holding an id divisible by 7; `stamp`
/// appends a wall-clock reading and a random number to each row.
fn poison_then_stamp() -> Vec<String> {
    vec![
        r#"
[[transform]]
name = "trap"
plugin = "${WEIR_PLUGIN_DIR}/weir_plugin_testkit.wasm"
config = { trap_on_id_multiple_of = 7 }
on_error = "quarantine"
"#
        .into(),
        r#"
[[transform]]
name = "stamp"
plugin = "${WEIR_PLUGIN_DIR}/weir_plugin_testkit.wasm"
config = { stamp = true }
"#
        .into(),
    ]
}

/// The ids of every row stage `stage` quarantined, from the dead-letter
/// files under `dir`, sorted (an id set aside twice shows twice).
fn quarantined_ids(dir: &Path, stage: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("quarantine-") {
            continue;
        }
        for line in fs::read_to_string(&path).unwrap().lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            assert_eq!(record["stage"], stage, "{name}: {record}");
            let error = record["error"].as_str().unwrap();
            assert!(
                error.contains("trapped") && error.contains("trap_on_id matched"),
                "{name}: {record}"
            );
            assert!(record["plugin"].as_str().unwrap().starts_with("sha256:"));
            ids.push(record["record"]["id"].as_i64().unwrap());
        }
    }
    ids.sort();
    ids
}

/// Each batch's committed rows with `now_us` made relative to the batch's
/// logged time (`offsets/N`): what must not change between attempts.
fn rows_by_batch(s: &Scenario) -> BTreeMap<u64, Vec<Value>> {
    let mut batches = committed_json_batches(&s.path("out"));
    for (batch, rows) in &mut batches {
        let offsets: Value =
            serde_json::from_slice(&fs::read(s.path(&format!("ck/offsets/{batch}"))).unwrap())
                .unwrap();
        let base_us = offsets["batch_timestamp_ms"].as_i64().unwrap() * 1000;
        for row in rows {
            let now = row["now_us"].as_i64().unwrap();
            row["now_us"] = (now - base_us).into();
        }
    }
    batches
}

/// 6 files x 5 rows (ids 1..=30), 2 files per batch: batches 0, 1 and 2,
/// holding the poison ids 7, 14 and 21, 28.
fn scenario() -> Scenario {
    scenario_with("")
}

/// [`scenario`] with `source_extra` in its `[source]` table.
fn scenario_with(source_extra: &str) -> Scenario {
    let s = Scenario::new(Spec {
        transforms: poison_then_stamp(),
        source_extra: source_extra.into(),
        ..Spec::default()
    });
    s.json_inputs(6, 5);
    s
}

#[test]
fn poison_rows_are_quarantined_once_and_replays_repeat_time_and_randomness_across_kills() {
    let clean = scenario();
    let err = assert_ok(&clean.run());
    assert!(
        err.contains("2 rows quarantined"),
        "batch 2 reports its two: {err}"
    );
    let expected = checked_clean_run(&clean, "trap");
    let points = CRASH_POINTS.iter().copied().chain(["after-quarantine-log"]);
    assert_kills_repeat(&clean, scenario, points, &expected, "trap");
}

/// [`scenario`] with `parallelism = tasks` (a top-level key: first in the file).
fn scenario_with_tasks(tasks: usize) -> Scenario {
    let s = scenario();
    let text = fs::read_to_string(s.pipeline_path()).unwrap();
    fs::write(s.pipeline_path(), format!("parallelism = {tasks}\n{text}")).unwrap();
    s
}

fn four_tasks() -> Scenario {
    scenario_with_tasks(4)
}

/// Each batch's `plugins` entry for `stage`, from a progress log.
fn stage_progress(log: &Path, stage: &str) -> Vec<Value> {
    fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|line| {
            let progress: Value = serde_json::from_str(line).unwrap();
            progress["plugins"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == stage)
                .unwrap()
                .clone()
        })
        .collect()
}

#[test]
fn transform_tasks_change_no_row_clock_reading_random_number_or_quarantined_row() {
    // One task goes through a batch's two parts (files) in turn ...
    let one = scenario_with_tasks(1);
    let log = one.path("progress.jsonl");
    assert_ok(
        &one.command("run")
            .arg("--progress-log")
            .arg(&log)
            .output()
            .unwrap(),
    );
    let expected = checked_clean_run(&one, "trap");
    let stamp = stage_progress(&log, "stamp");
    assert!(stamp.iter().all(|p| p["tasks"] == 1), "{stamp:?}");

    // ... four tasks run them at once, each with an instance of its own.
    let four = four_tasks();
    fs::create_dir_all(four.path("ck")).unwrap();
    fs::copy(one.path("ck/metadata"), four.path("ck/metadata")).unwrap();
    let log = four.path("progress.jsonl");
    assert_ok(
        &four
            .command("run")
            .arg("--progress-log")
            .arg(&log)
            .output()
            .unwrap(),
    );
    assert_eq!(rows_by_batch(&four), expected);
    assert_eq!(
        quarantined_ids(&four.path("ck/dead_letter"), "trap"),
        vec![7, 14, 21, 28]
    );
    let stamp = stage_progress(&log, "stamp");
    assert_eq!(stamp.len(), 3, "{stamp:?}");
    assert!(
        stamp.iter().all(|p| p["tasks"] == 2 && p["calls"] == 2),
        "two parts a batch, one per task: {stamp:?}"
    );
    // Killed anywhere in a batch the four tasks are running: the same.
    let points = CRASH_POINTS.iter().copied().chain(["after-quarantine-log"]);
    assert_kills_repeat(&one, four_tasks, points, &expected, "trap");
}

/// The batches `clean` committed, checked: every row but the poison ids
/// (7, 14, 21, 28) once, in order, each with a clock reading of its batch's
/// time and a random number of its own, and each poison row once in
/// `stage`'s dead letters.
fn checked_clean_run(clean: &Scenario, stage: &str) -> BTreeMap<u64, Vec<Value>> {
    let expected = rows_by_batch(clean);
    let ids: Vec<i64> = expected
        .values()
        .flatten()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        (1..=30).filter(|id| id % 7 != 0).collect::<Vec<_>>(),
        "every other row once, in order"
    );
    assert_eq!(
        quarantined_ids(&clean.path("ck/dead_letter"), stage),
        vec![7, 14, 21, 28]
    );
    for row in expected.values().flatten() {
        let reads = row["now_us"].as_i64().unwrap();
        assert!(
            (0..20).contains(&reads),
            "the clock reads the batch time: {row}"
        );
    }
    let randoms: std::collections::BTreeSet<i64> = expected
        .values()
        .flatten()
        .map(|r| r["random"].as_i64().unwrap())
        .collect();
    assert_eq!(randoms.len(), 26, "random numbers differ from row to row");
    expected
}

/// Kills a fresh query made by `make`, with `clean`'s id (which seeds the
/// random streams), in batch 1 at each of `points`; restarted, it must
/// commit `expected` and set each poison row aside once, in `stage`.
fn assert_kills_repeat<'a>(
    clean: &Scenario,
    make: fn() -> Scenario,
    points: impl Iterator<Item = &'a str>,
    expected: &BTreeMap<u64, Vec<Value>>,
    stage: &str,
) {
    let metadata = fs::read(clean.path("ck/metadata")).unwrap();
    for point in points {
        let s = make();
        fs::create_dir_all(s.path("ck")).unwrap();
        fs::write(s.path("ck/metadata"), &metadata).unwrap();
        run_until_killed(&s, point, 1);
        let err = assert_ok(&s.run());
        assert_eq!(
            &rows_by_batch(&s),
            expected,
            "after a kill at {point}@1:\n{err}"
        );
        assert_eq!(
            quarantined_ids(&s.path("ck/dead_letter"), stage),
            vec![7, 14, 21, 28],
            "after a kill at {point}@1"
        );
    }
}

/// A foreachBatch sink (`batch-testkit`) writing every row, with a clock
/// reading and a random number, to a JSON output at `out`; its plugin
/// traps on any batch holding an id divisible by 7. Inputs as [`scenario`].
fn foreach_batch_scenario() -> Scenario {
    let s = Scenario::new(Spec {
        transforms: Vec::new(),
        sink: "foreach_batch",
        tables: r#"name = "writer"
plugin = "${WEIR_PLUGIN_DIR}/weir_plugin_batch_testkit.wasm"
config = { output = "rows", stamp = true, trap_on_id_multiple_of = 7 }
on_error = "quarantine"

[sink.outputs.rows]
kind = "json"
path = "out"
"#
        .into(),
        ..Spec::default()
    });
    s.json_inputs(6, 5);
    s
}

#[test]
fn a_foreach_batch_sink_quarantines_poison_rows_once_and_replays_repeat_its_output() {
    let clean = foreach_batch_scenario();
    let progress_log = clean.path("progress.jsonl");
    let out = clean
        .command("run")
        .arg("--progress-log")
        .arg(&progress_log)
        .output()
        .unwrap();
    let err = assert_ok(&out);
    assert!(
        err.contains("2 rows quarantined"),
        "batch 2 reports its two: {err}"
    );
    // Per batch: (numQuarantinedRows, the sink plugin's, its calls).
    let progress: Vec<(u64, u64, u64)> = fs::read_to_string(&progress_log)
        .unwrap()
        .lines()
        .map(|line| {
            let p: Value = serde_json::from_str(line).unwrap();
            let writer = &p["plugins"][0];
            assert_eq!(writer["name"], "writer", "{p}");
            (
                p["numQuarantinedRows"].as_u64().unwrap(),
                writer["numQuarantinedRows"].as_u64().unwrap(),
                writer["calls"].as_u64().unwrap(),
            )
        })
        .collect();
    // Batch 0 (ids 1..=10) holds 7, batch 1 (11..=20) 14, batch 2
    // (21..=30) 21 and 28; each takes the failed call, the probes and the
    // last call.
    assert_eq!(
        progress.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
        vec![(1, 1), (1, 1), (2, 2)],
        "{progress:?}"
    );
    assert!(progress.iter().all(|p| p.2 > 2), "{progress:?}");
    let expected = checked_clean_run(&clean, "writer");
    let points = CRASH_POINTS
        .iter()
        .copied()
        .chain(["after-quarantine-log", "sink-after-output"]);
    assert_kills_repeat(&clean, foreach_batch_scenario, points, &expected, "writer");
}

#[test]
fn the_output_is_the_same_whatever_the_batch_size() {
    // 140 one-row files; ids divisible by 7 trap (20 of them).
    let run = |files_per_batch: usize| {
        let s = Scenario::new(Spec {
            transforms: vec![poison_then_stamp().remove(0)],
            max_files: Some(files_per_batch),
            ..Spec::default()
        });
        for id in 1..=140 {
            s.input(
                &format!("part-{id:04}.json"),
                &format!("{{\"id\": {id}, \"name\": \"n{id}\", \"amount\": {id}.5}}\n"),
            );
        }
        assert_ok(&s.run());
        let mut rows = s.output_rows();
        rows.sort_by_key(|r| r["id"].as_i64());
        (rows, quarantined_ids(&s.path("ck/dead_letter"), "trap"))
    };
    let (rows, quarantined) = run(1000);
    assert_eq!(rows.len(), 120);
    assert_eq!(quarantined, (1..=20).map(|k| k * 7).collect::<Vec<i64>>());
    assert_eq!(
        run(7),
        (rows.clone(), quarantined.clone()),
        "batches of 7 rows"
    );
    assert_eq!(run(1), (rows, quarantined), "batches of 1 row");
}

#[test]
fn a_plugin_failing_every_row_stops_at_the_limit_and_fail_stays_the_default() {
    let s = Scenario::new(Spec {
        transforms: vec![
            r#"
[[transform]]
name = "broken"
plugin = "${WEIR_PLUGIN_DIR}/weir_plugin_testkit.wasm"
config = { error_on_id_multiple_of = 1 }
on_error = "quarantine"
max_quarantined_rows_per_batch = 3
dead_letter_path = "poison"
"#
            .into(),
        ],
        ..Spec::default()
    });
    s.json_inputs(2, 5);
    let err = assert_exit(&s.run(), 1);
    assert!(
        err.contains("stage `broken`")
            && err.contains(
                "more than 3 rows of batch 0 failed (max_quarantined_rows_per_batch = 3)"
            )
            && err.contains("error_on_id matched"),
        "{err}"
    );
    assert!(s.committed_batches().is_empty());
    assert!(
        !s.path("poison").exists(),
        "nothing is set aside by a failed batch"
    );

    // Without on_error, the first poison row fails the query, as before.
    let s = Scenario::new(Spec {
        transforms: vec![crate::common::testkit_stage("trap_on_id_multiple_of = 7")],
        ..Spec::default()
    });
    s.json_inputs(2, 5);
    let err = assert_exit(&s.run(), 1);
    assert!(err.contains("trap_on_id matched"), "{err}");
    assert!(s.committed_batches().is_empty());
}

/// `weir replay` on `s`'s pipeline, with `args`; its stdout.
fn replay(s: &Scenario, args: &[&str]) -> String {
    let out = s.command("replay").args(args).output().unwrap();
    assert_ok(&out);
    String::from_utf8(out.stdout).unwrap()
}

/// The ids of the rows a replay's diff lists with `sign` (`-` or `+`).
fn diff_ids(stdout: &str, sign: &str) -> Vec<i64> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(sign)?.trim().parse::<Value>().ok())
        .map(|row| row["id"].as_i64().unwrap())
        .collect()
}

/// The names of the files left in `dir`, sorted.
fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn weir_replay_reads_inputs_a_replay_window_kept_or_clean_source_archived() {
    let same = |batch: u64, rows: usize, quarantined: usize| {
        format!(
            "batch {batch}: {rows} rows the same, 0 committed rows not replayed (-), \
             0 new rows (+), {quarantined} rows quarantined"
        )
    };
    // Deleted once read, but the last 2 batches' files stay in place.
    let s = scenario_with("clean_source = \"delete\"\nreplay_window = 2");
    assert_ok(&s.run());
    assert_eq!(
        file_names(&s.path("in")),
        [
            "part-002.json",
            "part-003.json",
            "part-004.json",
            "part-005.json"
        ],
        "batch 0's two files are deleted, batches 1 and 2's stay"
    );
    let replayed = replay(&s, &["--batch", "1..2", "--fail-on-diff"]);
    assert_eq!(
        replayed.lines().collect::<Vec<_>>(),
        [same(1, 9, 1), same(2, 8, 2)],
        "{replayed}"
    );
    let gone = s.command("replay").args(["--batch", "0"]).output().unwrap();
    let err = assert_exit(&gone, 1);
    assert!(
        err.contains("part-000.json is gone") && err.contains("replay_window = N"),
        "{err}"
    );
    // A later run goes on cleaning two batches behind.
    s.input(
        "part-006.json",
        "{\"id\": 31, \"name\": \"n31\", \"amount\": 1.5}\n",
    );
    assert_ok(&s.run());
    assert_eq!(
        file_names(&s.path("in")),
        ["part-004.json", "part-005.json", "part-006.json"]
    );

    // Archived once read: every batch replays from the archive.
    let s = scenario_with("clean_source = \"archive\"\nsource_archive_dir = \"done\"");
    assert_ok(&s.run());
    assert!(file_names(&s.path("in")).is_empty());
    let replayed = replay(&s, &["--batch", "0..2", "--fail-on-diff"]);
    assert_eq!(
        replayed.lines().collect::<Vec<_>>(),
        [same(0, 9, 1), same(1, 9, 1), same(2, 8, 2)],
        "{replayed}"
    );
    // A file changed since its batch read it is refused, not replayed.
    fs::write(s.path("done/part-000.json"), "{\"id\": 1}\n").unwrap();
    let changed = s.command("replay").args(["--batch", "0"]).output().unwrap();
    let err = assert_exit(&changed, 1);
    assert!(err.contains("changed since"), "{err}");
}

#[test]
fn weir_replay_rebuilds_committed_batches_exactly_and_diffs_a_candidate_version() {
    let s = scenario();
    assert_ok(&s.run());
    // The versions, quarantined rows, clock and seed each batch recorded
    // rebuild its output byte for byte.
    let same = replay(&s, &["--batch", "0..2", "--fail-on-diff"]);
    assert_eq!(
        same.lines().collect::<Vec<_>>(),
        [
            "batch 0: 9 rows the same, 0 committed rows not replayed (-), 0 new rows (+), 1 rows quarantined",
            "batch 1: 9 rows the same, 0 committed rows not replayed (-), 0 new rows (+), 1 rows quarantined",
            "batch 2: 8 rows the same, 0 committed rows not replayed (-), 0 new rows (+), 2 rows quarantined",
        ],
        "{same}"
    );
    // A candidate trapping on multiples of 5 instead: rows 5 and 10 go and
    // row 7 comes back. A row's stamp follows its position in the batch
    // (one clock reading and draw per row), so rows 6 and 7 get new
    // stamps while rows 8 and 9 are back in the positions they had.
    let plugin = format!("{}/weir_plugin_testkit.wasm", weir_fixtures::PLUGIN_DIR);
    let candidate = replay(
        &s,
        &[
            "--batch",
            "0",
            "--stage",
            "trap",
            "--plugin",
            &plugin,
            "--config",
            r#"{"trap_on_id_multiple_of": 5}"#,
        ],
    );
    assert!(
        candidate.starts_with(
            "batch 0: 5 rows the same, 4 committed rows not replayed (-), 3 new rows (+), 2 rows quarantined"
        ),
        "{candidate}"
    );
    // `stamp`'s clock and random stream start again in each part (file):
    // ids 1-4 and 6 keep their places; 8 and 9 move up one in the second.
    assert_eq!(diff_ids(&candidate, "-"), vec![5, 8, 9, 10], "{candidate}");
    assert_eq!(diff_ids(&candidate, "+"), vec![7, 8, 9], "{candidate}");
    let failed = s
        .command("replay")
        .args([
            "--batch",
            "0",
            "--stage",
            "trap",
            "--plugin",
            &plugin,
            "--fail-on-diff",
        ])
        .args(["--config", r#"{"trap_on_id_multiple_of": 5}"#])
        .output()
        .unwrap();
    let err = assert_exit(&failed, 1);
    assert!(
        err.contains("differs from what the sink committed"),
        "{err}"
    );
    // Nothing was written: the query resumes where it stopped.
    assert_eq!(s.committed_batches(), vec![0, 1, 2]);
    let err = assert_exit(
        &s.command("replay").args(["--batch", "3"]).output().unwrap(),
        1,
    );
    assert!(err.contains("batch 3 is not committed"), "{err}");
}

#[test]
fn weir_plugin_test_runs_a_component_over_a_file_and_shows_its_trap() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.json");
    let rows: String = (1..=10)
        .map(|id| format!("{{\"id\": {id}, \"name\": \"n{id}\"}}\n"))
        .collect();
    fs::write(&input, rows).unwrap();
    let plugin = format!("{}/weir_plugin_testkit.wasm", weir_fixtures::PLUGIN_DIR);
    let test = |extra: &[&str]| {
        crate::common::weir()
            .args(["plugin", "test", &plugin, "--input"])
            .arg(&input)
            .args([
                "--config",
                r#"{"trap_on_id_multiple_of": 7}"#,
                "--batch-size",
                "4",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let trapped = test(&[]);
    let err = assert_exit(&trapped, 1);
    assert!(
        err.contains("the plugin trapped") && err.contains("trap_on_id matched"),
        "{err}"
    );
    assert!(
        err.contains("wasm backtrace"),
        "the Wasm backtrace is shown: {err}"
    );
    assert!(
        err.contains("--quarantine"),
        "the hint names the way on: {err}"
    );

    let quarantined = test(&["--quarantine"]);
    let err = assert_ok(&quarantined);
    let out: Vec<i64> = String::from_utf8(quarantined.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(out, vec![1, 2, 3, 4, 5, 6, 8, 9, 10]);
    assert!(
        err.contains("quarantined: {") && err.contains(r#""id":7"#),
        "{err}"
    );
    assert!(
        err.contains("10 rows in, 9 rows out, 1 quarantined"),
        "{err}"
    );
}

/// A keyed pipeline: `[stateful]` keyed-testkit over users' events, one
/// file per batch, with `stateful_extra` in its table.
fn keyed_pipeline(dir: &Path, config: &str, stateful_extra: &str) {
    fs::create_dir_all(dir.join("in")).unwrap();
    let head = crate::common::json_files_head("keyed", "available_now = true");
    let pipeline = format!(
        r#"{head}schema = [ {{ name = "user", type = "string" }}, {{ name = "ts", type = "long" }} ]

[stateful]
name = "kit"
plugin = "${{WEIR_PLUGIN_DIR}}/weir_plugin_keyed_testkit.wasm"
key = ["user"]
config = {{ {config} }}
{stateful_extra}

[sink]
kind = "json"
path = "out"
"#
    );
    fs::write(dir.join("pipeline.toml"), pipeline).unwrap();
}

/// A keyed query whose function traps on rows with `ts` divisible by 7,
/// quarantined, over [`keyed_inputs`] whole.
fn poisoned_keyed_query() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    keyed_pipeline(
        dir.path(),
        "trap_on_ts_multiple_of = 7",
        "on_error = \"quarantine\"",
    );
    keyed_inputs(dir.path(), |_| true);
    dir
}

/// Three files of events of users a, b and c; `keep` chooses the rows.
fn keyed_inputs(dir: &Path, keep: impl Fn(i64) -> bool) {
    for file in 0..3 {
        let body: String = (0..12)
            .map(|i| file * 12 + i + 1)
            .filter(|ts| keep(*ts))
            .map(|ts| {
                let user = ["a", "b", "c"][(ts % 3) as usize];
                format!("{{\"user\": \"{user}\", \"ts\": {ts}}}\n")
            })
            .collect();
        fs::write(dir.join(format!("in/f{file}.json")), body).unwrap();
    }
}

#[test]
fn a_stateful_function_quarantines_poison_rows_per_key_and_replays_them() {
    let poison = |ts: i64| ts % 7 == 0;
    let run = |dir: &Path| {
        let out = crate::common::weir()
            .arg("run")
            .arg(dir.join("pipeline.toml"))
            .current_dir(dir)
            .output()
            .unwrap();
        assert_ok(&out);
        committed_json_batches(&dir.join("out"))
    };
    // The same function over the input without the poison rows.
    let clean = tempfile::tempdir().unwrap();
    keyed_pipeline(clean.path(), "", "");
    keyed_inputs(clean.path(), |ts| !poison(ts));
    let expected = run(clean.path());
    assert_eq!(expected.len(), 3);

    let quarantined = |dir: &Path| -> Vec<(String, i64)> {
        let mut found = Vec::new();
        for entry in fs::read_dir(dir.join("ck/dead_letter")).unwrap() {
            for line in fs::read_to_string(entry.unwrap().path()).unwrap().lines() {
                let record: Value = serde_json::from_str(line).unwrap();
                assert!(
                    record["error"].as_str().unwrap().contains("a poison row"),
                    "{record}"
                );
                found.push((
                    record["key"].as_str().unwrap().to_string(),
                    record["record"]["ts"].as_i64().unwrap(),
                ));
            }
        }
        found.sort_by_key(|(_, ts)| *ts);
        found
    };
    let poisoned: Vec<(String, i64)> = (1..=36)
        .filter(|ts| poison(*ts))
        .map(|ts| (format!("(user={})", ["a", "b", "c"][(ts % 3) as usize]), ts))
        .collect();
    for kill in [None, Some("after-quarantine-log"), Some("before-commit")] {
        let dir = poisoned_keyed_query();
        if let Some(point) = kill {
            let out = crate::common::weir()
                .arg("run")
                .arg(dir.path().join("pipeline.toml"))
                .env("WEIR_CRASH_AT", format!("{point}@1"))
                .output()
                .unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&out.status),
                Some(9),
                "{point}: {}",
                crate::common::stderr(&out)
            );
        }
        assert_eq!(run(dir.path()), expected, "after a kill at {kill:?}");
        assert_eq!(
            quarantined(dir.path()),
            poisoned,
            "after a kill at {kill:?}"
        );
    }
}

#[test]
fn weir_replay_restores_operator_state_per_batch_and_diffs_a_stateful_candidate() {
    let dir = poisoned_keyed_query();
    let replay = |args: &[&str]| {
        let out = crate::common::weir()
            .arg("replay")
            .arg(dir.path().join("pipeline.toml"))
            .args(args)
            .output()
            .unwrap();
        assert_ok(&out);
        String::from_utf8(out.stdout).unwrap()
    };
    let out = crate::common::weir()
        .arg("run")
        .arg(dir.path().join("pipeline.toml"))
        .output()
        .unwrap();
    assert_ok(&out);
    // Each batch emits a row per user with the user's running total, so
    // batch 2 matches only when the state batches 0 and 1 left is restored.
    let same = replay(&["--batch", "0..2", "--fail-on-diff"]);
    assert_eq!(
        same.lines().collect::<Vec<_>>(),
        [
            "batch 0: 3 rows the same, 0 committed rows not replayed (-), 0 new rows (+), 1 rows quarantined",
            "batch 1: 3 rows the same, 0 committed rows not replayed (-), 0 new rows (+), 2 rows quarantined",
            "batch 2: 3 rows the same, 0 committed rows not replayed (-), 0 new rows (+), 2 rows quarantined",
        ],
        "{same}"
    );
    // A candidate that takes the poison rows (14 and 21 in batch 1, for
    // users c and a; 28 and 35 in batch 2, for b and c) on the state the
    // running version left.
    let plugin = format!(
        "{}/weir_plugin_keyed_testkit.wasm",
        weir_fixtures::PLUGIN_DIR
    );
    let candidate = replay(&[
        "--batch", "1..2", "--stage", "kit", "--plugin", &plugin, "--config", "{}",
    ]);
    let summaries: Vec<&str> = candidate
        .lines()
        .filter(|l| l.starts_with("batch "))
        .collect();
    // Users a and c take one more row each in batch 1, b and c in batch 2.
    assert!(
        candidate.contains(r#"+ {"key":"a","rows":4,"timed_out":false,"total":8}"#),
        "{candidate}"
    );
    assert_eq!(
        summaries,
        [
            "batch 1: 1 rows the same, 2 committed rows not replayed (-), 2 new rows (+)",
            "batch 2: 1 rows the same, 2 committed rows not replayed (-), 2 new rows (+)",
        ],
        "{candidate}"
    );
}
