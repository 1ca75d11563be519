//! Several stateful operators in one query (Spark 3.4+): a join then a
//! window aggregation (`examples/clicks-per-ad`, its documented rows, the
//! same rows after `kill -9` anywhere and from `weir replay`), a window
//! aggregation over another's windows, and the combinations Spark refuses.
//! `tests/spark/parity.py` compares many more chains with Apache Spark.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::common::{
    assert_kills_anywhere_change_nothing, assert_ok, assert_refusals, committed_json_batches,
    example, json_files_head, run_dir as run, weir,
};

/// A committed row of clicks-per-ad as `ad A HH:MM-HH:MM rows R last C`.
fn describe_clicks(row: &Value) -> String {
    let hhmm = |key: &str| row[key].as_str().unwrap()[11..16].to_string();
    format!(
        "ad {} {}-{} rows {} last {}",
        row["ad_id"],
        hhmm("window_start"),
        hhmm("window_end"),
        row["rows"],
        row["last_click"]
    )
}

fn committed_descriptions(
    out: &Path,
    describe: fn(&Value) -> String,
) -> BTreeMap<u64, Vec<String>> {
    committed_json_batches(out)
        .into_iter()
        .map(|(batch, rows)| {
            let mut rows: Vec<String> = rows.iter().map(describe).collect();
            rows.sort();
            (batch, rows)
        })
        .collect()
}

/// Committed batches `0..=last` with the rows of the batches `rows` lists
/// (the others empty), `last` being the last batch listed.
fn batches(rows: &[(u64, &[&str])]) -> BTreeMap<u64, Vec<String>> {
    let last = rows.last().map_or(0, |(b, _)| *b);
    (0..=last)
        .map(|b| {
            let listed = rows.iter().find(|(id, _)| *id == b);
            let rows = listed.map_or(&[][..], |(_, r)| *r);
            (b, rows.iter().map(|r| r.to_string()).collect())
        })
        .collect()
}

/// `examples/clicks-per-ad` (README): the rows its comments promise. The
/// windows close only once the watermark the join hands on (the query's
/// less the join's hour) passes them, in the batch without input after
/// batch 3; a click arriving late in batch 3 still counts.
#[test]
fn the_clicks_per_ad_example_gives_its_documented_rows() {
    let dir = example("clicks-per-ad");
    let err = assert_ok(&run(dir.path()));
    let out = dir.path().join(".weir/output");
    // Batches 0 to 3 commit no rows: no window has closed.
    let expected = batches(&[(
        4,
        &[
            "ad 1 12:00-12:30 rows 1 last 1",
            "ad 1 12:30-13:00 rows 3 last 7",
            "ad 2 12:00-12:30 rows 1 last 2",
            "ad 2 12:30-13:00 rows 1 last 4",
        ],
    )]);
    assert_eq!(committed_descriptions(&out, describe_clicks), expected);
    assert!(
        err.contains("batch 4: 0 rows in (0 files), 4 rows out"),
        "{err}"
    );
    assert!(!err.contains("batch 5"), "{err}");

    // Replayed offline from the checkpoint: the same rows in every batch.
    let replayed = weir()
        .current_dir(dir.path())
        .args([
            "replay",
            "pipeline.toml",
            "--batch",
            "0..4",
            "--fail-on-diff",
        ])
        .output()
        .unwrap();
    assert_ok(&replayed);
    let stdout = String::from_utf8(replayed.stdout).unwrap();
    assert!(
        stdout.contains(
            "batch 4: 4 rows the same, 0 committed rows not replayed (-), 0 new rows (+)"
        ),
        "{stdout}"
    );
}

/// Both operators' states (the join's and the aggregation's) come back
/// from the checkpoint after `kill -9` at any point of the batch that
/// moves the watermark and of the one that emits: the output is the
/// straight run's, batch by batch.
#[test]
fn a_join_then_aggregation_killed_anywhere_gives_the_rows_of_a_straight_run() {
    assert_kills_anywhere_change_nothing("clicks-per-ad", &[3, 4], |dir| {
        let batches = committed_json_batches(&dir.join(".weir/output"));
        assert_eq!(batches.values().map(Vec::len).sum::<usize>(), 4);
        batches
    });
}

/// A checkpoint's state belongs to the operators that wrote it: a
/// pipeline that adds one before them (state `0` would become another
/// operator's) is refused at start; put back, the query goes on.
#[test]
fn a_checkpoint_refuses_a_pipeline_whose_operators_changed() {
    let dir = example("clicks-per-ad");
    let pipeline = dir.path().join("pipeline.toml");
    let original = std::fs::read_to_string(&pipeline).unwrap();
    assert_ok(&run(dir.path()));
    let changed = original.replacen(
        "name = \"clicks-per-ad\"",
        "name = \"clicks-per-ad\"\ndrop_duplicates_within_watermark = [\"click_id\"]",
        1,
    );
    std::fs::write(&pipeline, changed).unwrap();
    let err = crate::common::assert_exit(&run(dir.path()), 1);
    assert!(
        err.contains(
            "its state belongs to the stateful operators [\"window aggregation\"], but the \
             pipeline now declares [\"deduplication\", \"window aggregation\"]"
        ),
        "{err}"
    );
    std::fs::write(&pipeline, &original).unwrap();
    let err = assert_ok(&run(dir.path()));
    assert!(err.contains("processed in 0 batch(es)"), "{err}");
    let rows: usize = committed_json_batches(&dir.path().join(".weir/output"))
        .values()
        .map(Vec::len)
        .sum();
    assert_eq!(rows, 4);
}

/// The window-over-window pipeline after [`json_files_head`].
const WINDOW_OVER_WINDOW: &str = r#"schema = [
  { name = "user", type = "string" },
  { name = "ts", type = "timestamp" },
]

[watermark]
column = "ts"
delay = "5m"

[aggregate]
group_by = ["user"]
window = { column = "ts", tumbling = "10m" }
aggregates = [ { fn = "count", as = "rows" } ]

[aggregate.then]
group_by = ["user"]
window = { column = "window_time", tumbling = "30m" }
aggregates = [
  { fn = "sum", column = "rows", as = "rows" },
  { fn = "count", as = "windows" },
]

[sink]
kind = "json"
path = "out"
"#;

fn window_over_window_pipeline() -> String {
    json_files_head("window-over-window", "available_now = true") + WINDOW_OVER_WINDOW
}

/// A scratch directory with the window-over-window pipeline and three
/// files of input, one per batch.
fn window_over_window() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pipeline.toml"),
        window_over_window_pipeline(),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("in")).unwrap();
    let files: [&[(&str, &str)]; 3] = [
        &[
            ("u1", "12:01"),
            ("u1", "12:05"),
            ("u2", "12:12"),
            ("u1", "12:14"),
        ],
        &[("u1", "12:25"), ("u2", "12:28"), ("u1", "12:33")],
        &[("u1", "13:10")],
    ];
    for (i, rows) in files.iter().enumerate() {
        let body: String = rows
            .iter()
            .map(|(user, hhmm)| {
                format!("{{\"user\": \"{user}\", \"ts\": \"2026-11-25T{hhmm}:00Z\"}}\n")
            })
            .collect();
        std::fs::write(dir.path().join(format!("in/{i}.json")), body).unwrap();
    }
    dir
}

/// Ten-minute windows, then half hours over their `window_time`: each
/// ten-minute window reaches the second aggregation once the watermark
/// closes it (batches 2 and 3), is not late there, and the half hours
/// close by the same watermark.
#[test]
fn a_window_aggregation_over_windows_emits_each_half_hour_once() {
    let dir = window_over_window();
    let err = assert_ok(&run(dir.path()));
    let describe = |row: &Value| {
        format!(
            "{} {}-{} rows {} windows {}",
            row["user"].as_str().unwrap(),
            &row["window_start"].as_str().unwrap()[11..16],
            &row["window_end"].as_str().unwrap()[11..16],
            row["rows"],
            row["windows"]
        )
    };
    let got = committed_descriptions(&dir.path().join("out"), describe);
    // Watermarks: 12:09 for batch 1, 12:28 for batch 2 (closing 12:00-12:10
    // and 12:10-12:20), 13:05 for batch 3 (closing 12:20-12:30, 12:30-12:40
    // and the half hours up to 13:00).
    let expected = batches(&[(
        3,
        &[
            "u1 12:00-12:30 rows 4 windows 3",
            "u1 12:30-13:00 rows 1 windows 1",
            "u2 12:00-12:30 rows 2 windows 2",
        ],
    )]);
    assert_eq!(got, expected, "{err}");
    assert!(
        err.contains("batch 2: 1 rows in (1 files), 0 rows out"),
        "{err}"
    );
}

/// What Spark refuses for chained operators (and what Weir does not run
/// yet), refused by `weir validate` with the place in the file.
#[test]
fn chained_operators_are_checked_as_spark_does() {
    let dir = window_over_window();
    let pipeline = dir.path().join("pipeline.toml");
    let original = window_over_window_pipeline();
    assert_refusals(
        &pipeline,
        &original,
        &[
            (
                "kind = \"json\"\npath = \"out\"",
                "kind = \"console\"\noutput_mode = \"update\"",
                "Detected pattern of possible 'correctness' issue due to global watermark",
            ),
            (
                "column = \"window_time\"",
                "column = \"window_end\"",
                "the second aggregation's window is over `window_time`, not `window_end`",
            ),
            (
                "checkpoint = \"ck\"",
                "checkpoint = \"ck\"\nstateful_operator_allow_multiple = false",
                "several stateful operators in a query need stateful_operator_allow_multiple",
            ),
            (
                "{ fn = \"count\", as = \"windows\" },\n]",
                "{ fn = \"count\", as = \"windows\" },\n]\n\n[aggregate.then.then]\nwindow = { column = \"window_time\", tumbling = \"1h\" }\naggregates = [ { fn = \"count\" } ]",
                "two aggregations at most in a query for now",
            ),
            (
                "group_by = [\"user\"]\nwindow = { column = \"window_time\"",
                "group_by = [\"ts\"]\nwindow = { column = \"window_time\"",
                "`ts` is not a column of the first aggregation's rows",
            ),
        ],
    );
    // A single operator keeps running with the flag off.
    let single = original.split("[aggregate.then]").next().unwrap().replace(
        "checkpoint = \"ck\"",
        "checkpoint = \"ck\"\nstateful_operator_allow_multiple = false",
    ) + "[sink]\nkind = \"json\"\npath = \"out\"\n";
    std::fs::write(&pipeline, single).unwrap();
    assert_ok(&weir().arg("validate").arg(&pipeline).output().unwrap());
}
