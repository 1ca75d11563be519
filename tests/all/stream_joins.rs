//! Stream-stream joins: the cheat-sheet join (impressions and clicks, 10-minute
//! watermarks, clicks within an hour of the impression) on seeded random
//! streams, checked against a batch join of the rows not dropped as late;
//! outer rows exactly once and only after the watermark passed; bounded
//! state; identical output after `kill -9` anywhere in a batch.

use std::path::Path;

use serde_json::Value;

use crate::common::{
    assert_ok, assert_refusals, committed_json_batches, committed_json_rows, copy_dir,
    run_killed_at, seeded, weir,
};

const MINUTE: i64 = 60_000;
const DELAY: i64 = 10 * MINUTE;
const UPPER: i64 = 60 * MINUTE;
const T0: i64 = 1_700_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Impression {
    id: i64,
    ad: i64,
    time: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Click {
    id: i64,
    ad: i64,
    time: i64,
}

/// One file of each stream per round: impressions around the round's
/// time, clicks mostly within the last 20 minutes, some far behind (late).
fn streams(seed: u64, rounds: i64) -> (Vec<Vec<Impression>>, Vec<Vec<Click>>) {
    let mut random = seeded(seed);
    let (mut impressions, mut clicks) = (Vec::new(), Vec::new());
    let (mut next_impression, mut next_click) = (1, 1);
    for round in 0..rounds {
        let base = T0 + round * 10 * MINUTE;
        let mut file = Vec::new();
        for _ in 0..25 {
            let late = random(10) == 0;
            let time = if late {
                base - random(40 * MINUTE)
            } else {
                base + random(10 * MINUTE)
            };
            file.push(Impression {
                id: next_impression,
                ad: random(40),
                time,
            });
            next_impression += 1;
        }
        impressions.push(file);
        let mut file = Vec::new();
        for _ in 0..20 {
            let behind = if random(8) == 0 { 90 } else { 20 };
            file.push(Click {
                id: next_click,
                ad: random(40),
                time: base + random(10 * MINUTE) - random(behind * MINUTE),
            });
            next_click += 1;
        }
        clicks.push(file);
    }
    (impressions, clicks)
}

/// What the query must compute, from the watermark rules alone: per
/// batch, the global watermark (min of the inputs' `max time - 10 min`),
/// the rows it keeps (later than the previous batch's watermark, as in
/// Spark 3.4+), and the final watermark.
struct Expected {
    impressions: Vec<Impression>,
    clicks: Vec<Click>,
    batch_watermarks: Vec<i64>,
    final_watermark: i64,
}

fn simulate(impressions: &[Vec<Impression>], clicks: &[Vec<Click>]) -> Expected {
    // Rows are judged late by the previous batch's watermark (Spark 3.4+).
    let (mut wm_left, mut wm_right, mut global, mut previous) = (0, 0, 0, 0);
    let mut expected = Expected {
        impressions: Vec::new(),
        clicks: Vec::new(),
        batch_watermarks: Vec::new(),
        final_watermark: 0,
    };
    for (left, right) in impressions.iter().zip(clicks) {
        expected.batch_watermarks.push(global);
        expected
            .impressions
            .extend(left.iter().filter(|i| i.time > previous));
        expected
            .clicks
            .extend(right.iter().filter(|c| c.time > previous));
        previous = global;
        if let Some(max) = left.iter().map(|i| i.time).max() {
            wm_left = i64::max(wm_left, max - DELAY);
        }
        if let Some(max) = right.iter().map(|c| c.time).max() {
            wm_right = i64::max(wm_right, max - DELAY);
        }
        global = wm_left.min(wm_right);
    }
    expected.final_watermark = global;
    expected
}

fn matches(i: &Impression, c: &Click) -> bool {
    i.ad == c.ad && i.time <= c.time && c.time <= i.time + UPPER
}

fn write_streams(dir: &Path, impressions: &[Vec<Impression>], clicks: &[Vec<Click>]) {
    std::fs::create_dir_all(dir.join("impressions")).unwrap();
    std::fs::create_dir_all(dir.join("clicks")).unwrap();
    for (round, file) in impressions.iter().enumerate() {
        let text: String = file
            .iter()
            .map(|i| {
                format!(
                    "{{\"imp_id\": {}, \"ad_id\": {}, \"impression_time\": {}}}\n",
                    i.id, i.ad, i.time
                )
            })
            .collect();
        std::fs::write(dir.join(format!("impressions/{round:04}.json")), text).unwrap();
    }
    for (round, file) in clicks.iter().enumerate() {
        let text: String = file
            .iter()
            .map(|c| {
                format!(
                    "{{\"click_id\": {}, \"ad_id\": {}, \"click_time\": {}}}\n",
                    c.id, c.ad, c.time
                )
            })
            .collect();
        std::fs::write(dir.join(format!("clicks/{round:04}.json")), text).unwrap();
    }
}

fn pipeline(kind: &str) -> String {
    format!(
        r#"name = "ad-clicks"
checkpoint = "ck"
multiple_watermark_policy = "min"

[trigger]
available_now = true

[[sources]]
name = "impressions"
kind = "file"
path = "impressions"
format = "json"
order = "name"
max_files_per_trigger = 1
schema = [
  {{ name = "imp_id", type = "long", nullable = false }},
  {{ name = "ad_id", type = "long" }},
  {{ name = "impression_time", type = "long" }},
]
watermark = {{ column = "impression_time", delay = "10 minutes" }}

[[sources]]
name = "clicks"
kind = "file"
path = "clicks"
format = "json"
order = "name"
max_files_per_trigger = 1
schema = [
  {{ name = "click_id", type = "long", nullable = false }},
  {{ name = "ad_id", type = "long" }},
  {{ name = "click_time", type = "long" }},
]
watermark = {{ column = "click_time", delay = "10 minutes" }}

[join]
left = "impressions"
right = "clicks"
type = "{kind}"
on = ["ad_id"]
time = {{ left = "impression_time", right = "click_time", lower = "0s", upper = "1 hour" }}

[sink]
kind = "json"
path = "out"
"#
    )
}

fn setup(kind: &str, seed: u64, rounds: i64) -> (tempfile::TempDir, Expected) {
    let dir = tempfile::tempdir().unwrap();
    let (impressions, clicks) = streams(seed, rounds);
    write_streams(dir.path(), &impressions, &clicks);
    std::fs::write(dir.path().join("pipeline.toml"), pipeline(kind)).unwrap();
    (dir, simulate(&impressions, &clicks))
}

/// An output row as (impression id, click id), `None` for a null side.
fn pair(row: &Value) -> (Option<i64>, Option<i64>) {
    (row["imp_id"].as_i64(), row["click_id"].as_i64())
}

fn run_to_end(dir: &Path) -> String {
    let out = weir()
        .arg("run")
        .arg(dir.join("pipeline.toml"))
        .arg("--progress-log")
        .arg(dir.join("progress.jsonl"))
        .output()
        .unwrap();
    assert_ok(&out)
}

#[test]
fn the_cheat_sheet_join_equals_a_batch_join_of_the_rows_not_dropped_as_late() {
    for kind in ["inner", "left_outer", "right_outer", "left_semi"] {
        for seed in [7, 8] {
            let (dir, expected) = setup(kind, seed, 12);
            let err = run_to_end(dir.path());
            let batches = committed_json_batches(&dir.path().join("out"));
            let watermark = |batch: u64| {
                expected
                    .batch_watermarks
                    .get(batch as usize)
                    .copied()
                    .unwrap_or(expected.final_watermark)
            };

            let mut want: Vec<(Option<i64>, Option<i64>)> = Vec::new();
            for i in &expected.impressions {
                let mut matched = false;
                for c in expected.clicks.iter().filter(|c| matches(i, c)) {
                    matched = true;
                    if kind != "left_semi" {
                        want.push((Some(i.id), Some(c.id)));
                    }
                }
                match kind {
                    "left_semi" if matched => want.push((Some(i.id), None)),
                    "left_outer" if !matched && i.time + UPPER <= expected.final_watermark => {
                        want.push((Some(i.id), None))
                    }
                    _ => {}
                }
            }
            if kind == "right_outer" {
                for c in &expected.clicks {
                    let matched = expected.impressions.iter().any(|i| matches(i, c));
                    if !matched && c.time <= expected.final_watermark {
                        want.push((None, Some(c.id)));
                    }
                }
            }
            want.sort();
            let mut got: Vec<_> = batches.values().flatten().map(pair).collect();
            got.sort();
            // The seeded streams exercise every case: pairs, and for outer
            // joins rows without a match.
            let pairs = want
                .iter()
                .filter(|p| p.0.is_some() && p.1.is_some())
                .count();
            let one_sided = want.len() - pairs;
            assert!(
                match kind {
                    "left_semi" => one_sided > 0,
                    "inner" => pairs > 0,
                    _ => pairs > 0 && one_sided > 0,
                },
                "{kind}: {pairs} pairs, {one_sided} one-sided rows expected"
            );
            assert_eq!(got, want, "{kind}, seed {seed}\n{err}");

            // Outer rows: each once (checked above), and only in a batch whose
            // watermark had passed the end of the row's range.
            for (batch, rows) in &batches {
                for row in rows {
                    match pair(row) {
                        (Some(_), None) if kind == "left_outer" => {
                            let time = row["impression_time"].as_i64().unwrap();
                            assert!(
                                time + UPPER <= watermark(*batch),
                                "{kind}: impression {row} emitted in batch {batch} before the \
                                 watermark passed"
                            );
                            assert!(row["click_time"].is_null(), "{row}");
                        }
                        (None, Some(_)) => {
                            let time = row["click_time"].as_i64().unwrap();
                            assert!(time <= watermark(*batch), "{kind}: click {row} too early");
                            // The shared key comes from the click.
                            assert!(row["ad_id"].is_i64(), "{row}");
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Largest state row count over a run's batches, from its progress log.
fn max_state_rows(dir: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(dir.join("progress.jsonl")).unwrap();
    let mut max_rows = 0;
    let mut input_rows = 0;
    for line in text.lines() {
        let progress: Value = serde_json::from_str(line).unwrap();
        input_rows += progress["numInputRows"].as_u64().unwrap();
        let rows = progress["stateOperators"][0]["numRowsTotal"]
            .as_u64()
            .unwrap();
        max_rows = max_rows.max(rows);
    }
    (max_rows, input_rows)
}

#[test]
fn join_state_stays_bounded_while_the_input_grows_tenfold() {
    let (short, _) = setup("left_outer", 11, 12);
    run_to_end(short.path());
    let (long, expected) = setup("left_outer", 11, 120);
    run_to_end(long.path());
    let (short_max, short_input) = max_state_rows(short.path());
    let (long_max, long_input) = max_state_rows(long.path());
    assert_eq!(long_input, 10 * short_input);
    // About 80 minutes of rows per side stay buffered (the hour, the
    // watermark delay and a round): 8 rounds of 45 rows, plus columns.
    assert!(
        long_max <= 500,
        "state grew to {long_max} rows (short run: {short_max})"
    );
    assert!(long_max <= short_max + 60, "{long_max} vs {short_max}");
    // And it emitted the unmatched impressions as it evicted them.
    let out = committed_json_rows(&long.path().join("out"));
    let unmatched = out.iter().filter(|r| r["click_id"].is_null()).count();
    assert!(
        unmatched > 0 && expected.final_watermark > T0,
        "{unmatched} unmatched of {} rows, final watermark {}",
        out.len(),
        expected.final_watermark
    );
}

#[test]
fn a_killed_join_restarts_to_identical_output() {
    let (straight, _) = setup("left_outer", 21, 8);
    run_to_end(straight.path());
    let want = committed_json_batches(&straight.path().join("out"));
    assert!(want.len() >= 8, "{want:?}");
    let points = [
        "before-offsets",
        "after-source-log",
        "after-offsets",
        "after-read",
        "after-transform",
        "before-commit",
        "after-commit",
    ];
    let mut kills = 0;
    for batch in [1, 5] {
        for point in points {
            let dir = tempfile::tempdir().unwrap();
            for part in ["impressions", "clicks"] {
                copy_dir(&straight.path().join(part), &dir.path().join(part));
            }
            std::fs::copy(
                straight.path().join("pipeline.toml"),
                dir.path().join("pipeline.toml"),
            )
            .unwrap();
            run_killed_at(
                &dir.path().join("pipeline.toml"),
                &format!("{point}@{batch}"),
            );
            kills += 1;
            run_to_end(dir.path());
            let got = committed_json_batches(&dir.path().join("out"));
            assert_eq!(got, want, "killed at {point}@{batch}");
        }
    }
    assert_eq!(kills, 14);
}

#[test]
fn join_pipelines_are_checked_as_spark_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    let original = pipeline("left_outer");
    let time_line = "time = { left = \"impression_time\", right = \"click_time\", lower = \"0s\", upper = \"1 hour\" }";
    let click_watermark = "watermark = { column = \"click_time\", delay = \"10 minutes\" }";
    assert_refusals(
        &path,
        &original,
        &[
            (
                time_line,
                "",
                "an outer join needs a time bound (`time`), as in Spark",
            ),
            (
                click_watermark,
                "",
                "an outer join needs a watermark on both inputs; `clicks` has none",
            ),
            (
                "right = \"clicks\"",
                "right = \"views\"",
                "no source named `views`",
            ),
            (
                "kind = \"json\"\npath = \"out\"",
                "kind = \"console\"\noutput_mode = \"update\"",
                "a stream-stream join emits in append mode only",
            ),
            (
                "multiple_watermark_policy = \"min\"",
                "[watermark]\ncolumn = \"x\"\ndelay = \"1s\"",
                "with [[sources]], each source declares its own `watermark`",
            ),
            (
                "on = [\"ad_id\"]",
                "left_on = [\"ad_id\"]",
                "a join needs its keys",
            ),
            (
                "type = \"left_outer\"",
                "type = \"full\"",
                "unknown variant `full`",
            ),
        ],
    );
    // An inner join may go without a time bound (its state is then never
    // evicted, as in Spark).
    std::fs::write(
        &path,
        original
            .replace(time_line, "")
            .replace("left_outer", "inner"),
    )
    .unwrap();
    assert_ok(&weir().arg("validate").arg(&path).output().unwrap());
}

/// Several sources without a join are a union; the query's watermark is the
/// slowest input's (`min`) or the fastest's (`max`).
#[test]
fn several_sources_are_a_union_with_a_min_or_max_watermark() {
    let (dir, _) = setup("inner", 3, 3);
    let union = pipeline("inner");
    let union = &union[..union.find("[join]").unwrap()];
    for (policy, pick_max) in [("min", false), ("max", true)] {
        let run_dir = tempfile::tempdir().unwrap();
        for part in ["impressions", "clicks"] {
            copy_dir(&dir.path().join(part), &run_dir.path().join(part));
        }
        let text = union.replace(
            "multiple_watermark_policy = \"min\"",
            &format!("multiple_watermark_policy = \"{policy}\""),
        ) + "[sink]\nkind = \"json\"\npath = \"out\"\n";
        std::fs::write(run_dir.path().join("pipeline.toml"), text).unwrap();
        run_to_end(run_dir.path());
        let rows = committed_json_rows(&run_dir.path().join("out"));
        assert_eq!(rows.len(), 3 * 25 + 3 * 20, "every row of both inputs");
        let progress = std::fs::read_to_string(run_dir.path().join("progress.jsonl")).unwrap();
        let last: Value = serde_json::from_str(progress.lines().last().unwrap()).unwrap();
        let watermark = last["eventTime"]["watermark"].as_str().unwrap().to_string();
        // Watermarks of batch 2: min = the clicks' (behind), max = the impressions'.
        let checkpoint = run_dir.path().join("ck/commits/2");
        let commit: Value = serde_json::from_slice(&std::fs::read(checkpoint).unwrap()).unwrap();
        let inputs: Vec<i64> = commit["next_input_watermarks_ms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let next = commit["next_watermark_ms"].as_i64().unwrap();
        let chosen = if pick_max {
            *inputs.iter().max().unwrap()
        } else {
            *inputs.iter().min().unwrap()
        };
        assert_eq!(
            next, chosen,
            "{policy}: {commit} (progress watermark {watermark})"
        );
        assert_ne!(inputs[0], inputs[1], "the inputs' watermarks differ");
    }
}

/// `examples/ad-clicks` (README): the rows its comments promise, batch by
/// batch (tests/spark/parity.py finds the same in Apache Spark).
#[test]
fn the_ad_clicks_example_gives_its_documented_rows() {
    let dir = crate::common::example("ad-clicks");
    let out = weir()
        .current_dir(dir.path())
        .args(["run", "pipeline.toml"])
        .output()
        .unwrap();
    assert_ok(&out);
    let describe = |row: &Value| {
        let hhmm = |v: &Value| {
            v.as_str()
                .map_or("-".to_string(), |t| t[11..16].to_string())
        };
        format!(
            "imp {} ad {} {} click {} {}",
            row["imp_id"],
            row["ad_id"],
            hhmm(&row["impression_time"]),
            row.get("click_id").unwrap_or(&Value::Null),
            hhmm(row.get("click_time").unwrap_or(&Value::Null)),
        )
    };
    let got: Vec<(u64, Vec<String>)> = committed_json_batches(&dir.path().join(".weir/output"))
        .into_iter()
        .map(|(batch, rows)| (batch, rows.iter().map(describe).collect()))
        .collect();
    let expected: Vec<(u64, Vec<&str>)> = vec![
        (0, vec!["imp 1 ad 1 12:00 click 1 12:02"]),
        (
            1,
            vec![
                "imp 2 ad 2 12:05 click 2 12:20",
                "imp 1 ad 1 12:00 click 3 12:45",
                "imp 4 ad 1 12:30 click 3 12:45",
            ],
        ),
        (2, vec!["imp 6 ad 5 13:50 click 5 13:55"]),
        // The batch without input that the watermark's move to 13:40 runs.
        (
            3,
            vec![
                "imp 3 ad 3 12:10 click null -",
                "imp 5 ad 4 12:35 click null -",
            ],
        ),
    ];
    let expected: Vec<(u64, Vec<String>)> = expected
        .into_iter()
        .map(|(b, rows)| (b, rows.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(got, expected);
}
