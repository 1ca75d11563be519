//! Event time and state: the reference's windowed-count example batch by
//! batch in all three output modes (checked against Spark's rules), the
//! refusals Spark makes at start, crash safety with state on both backends,
//! bounded state, and randomised streams against a batch computation.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::common::{
    assert_exit, assert_kills_anywhere_change_nothing, assert_ok, committed_json_batches,
    committed_json_rows, console_batches, edit, example, example_on, numbered_entries,
    run_dir as run, run_killed_at, seeded, weir,
};

/// "start-end user count" with times as HH:MM (all rows are on one day).
pub(crate) fn describe(row: &Value) -> String {
    let hhmm = |v: &Value| v.as_str().unwrap()[11..16].to_string();
    format!(
        "{}-{} {} {}",
        hhmm(&row["window_start"]),
        hhmm(&row["window_end"]),
        row["user_id"].as_str().unwrap(),
        row["count"]
    )
}

/// Rows of each batch the JSON file sink committed, by batch id.
fn sink_batches(out: &Path) -> BTreeMap<u64, Vec<String>> {
    sorted_batches(committed_json_batches(out), describe)
        .into_iter()
        .collect()
}

#[test]
fn article_example_in_append_mode_on_both_state_stores() {
    for store in ["rocksdb", "memory"] {
        let dir = example_on("windowed-clicks", store);
        let err = assert_ok(&run(dir.path()));
        let batches = sink_batches(&dir.path().join(".weir/output"));
        // Nothing closes until batch 4, which runs with watermark 12:05
        // (max event time 12:15 - 10m). The 11:58 click of batch 2 counted
        // (its window ends at 12:00, after that batch's 11:59 watermark).
        // Batch 4's 11:59:59 click counts too: late rows are judged by the
        // previous batch's watermark (11:59), and only then does the
        // window close by 12:05. Spark 4.3 emits exactly these rows.
        let expected: BTreeMap<u64, Vec<String>> = [
            (0, vec![]),
            (1, vec![]),
            (2, vec![]),
            (3, vec![]),
            (
                4,
                vec![
                    "11:55-12:00 u1 2".to_string(),
                    "12:00-12:05 u1 2".into(),
                    "12:00-12:05 u2 1".into(),
                ],
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(batches, expected, "{store}:\n{err}");
        let batch4 = err.lines().find(|l| l.starts_with("batch 4:")).unwrap();
        assert!(!batch4.contains("dropped"), "{batch4}");
        // Three windows stay open: [12:05, 12:10) for u1 and u2, [12:15, 12:20) for u2.
        assert!(batch4.contains("| state 3 rows"), "{batch4}"); // the 3 windows
    }
}

fn console_run(mode: &str) -> Vec<(u64, Vec<String>)> {
    console_run_edited(mode, &[], describe)
}

/// The windowed-clicks example in `mode` on the console sink, after
/// `edits` (from, to) to its pipeline; each batch's rows as `describe` has
/// them.
fn console_run_edited(
    mode: &str,
    edits: &[(&str, &str)],
    describe: fn(&Value) -> String,
) -> Vec<(u64, Vec<String>)> {
    let dir = example("windowed-clicks");
    let pipeline = dir.path().join("pipeline.toml");
    for (from, to) in edits {
        edit(&pipeline, from, to);
    }
    edit(
        &pipeline,
        "kind = \"json\"\npath = \".weir/output\"\noutput_mode = \"append\"",
        &format!("kind = \"console\"\nformat = \"json\"\noutput_mode = \"{mode}\""),
    );
    let out = run(dir.path());
    assert_ok(&out);
    sorted_batches(
        console_batches(&String::from_utf8_lossy(&out.stdout)),
        describe,
    )
}

/// Each batch's rows described, in order: a batch's rows come out in key
/// group order, which says nothing (as Spark's partitions).
fn sorted_batches(
    batches: impl IntoIterator<Item = (u64, Vec<Value>)>,
    describe: impl Fn(&Value) -> String,
) -> Vec<(u64, Vec<String>)> {
    batches
        .into_iter()
        .map(|(batch, rows)| {
            let mut rows: Vec<String> = rows.iter().map(&describe).collect();
            rows.sort();
            (batch, rows)
        })
        .collect()
}

fn owned(rows: &[&str]) -> Vec<String> {
    rows.iter().map(|r| r.to_string()).collect()
}

#[test]
fn article_example_in_update_mode_emits_changed_windows() {
    let expected = vec![
        (0, owned(&["12:00-12:05 u1 2", "12:00-12:05 u2 1"])),
        (1, owned(&["12:05-12:10 u1 1", "12:05-12:10 u2 1"])),
        (2, owned(&["11:55-12:00 u1 1"])),
        (3, owned(&["12:15-12:20 u2 1"])),
        // The 11:59:59 click is on time by batch 3's watermark (11:59);
        // its window is updated, then evicted by batch 4's (12:05).
        (4, owned(&["11:55-12:00 u1 2"])),
    ];
    assert_eq!(console_run("update"), expected);
}

#[test]
fn article_example_in_complete_mode_emits_the_whole_table() {
    let b0 = ["12:00-12:05 u1 2", "12:00-12:05 u2 1"];
    let b1 = [&b0[..], &["12:05-12:10 u1 1", "12:05-12:10 u2 1"]].concat();
    let b2 = [&["11:55-12:00 u1 1"], &b1[..]].concat();
    let b3 = [&b2[..], &["12:15-12:20 u2 1"]].concat();
    // Complete mode keeps all state and drops nothing: 11:59:59 counts.
    let b4 = [&["11:55-12:00 u1 2"], &b3[1..]].concat();
    let expected = vec![
        (0, owned(&b0)),
        (1, owned(&b1)),
        (2, owned(&b2)),
        (3, owned(&b3)),
        (4, owned(&b4)),
    ];
    assert_eq!(console_run("complete"), expected);
}

/// A window aggregate without group keys counts every user's clicks per
/// window (this panicked in Weir before the differential tests against
/// Spark ran one: rows over no columns are no rows at all).
#[test]
fn a_window_without_group_keys_aggregates_every_row() {
    for (mode, expected) in [
        (
            "append",
            vec![(4, owned(&["11:55-12:00 2", "12:00-12:05 3"]))],
        ),
        (
            "update",
            vec![
                (0, owned(&["12:00-12:05 3"])),
                (1, owned(&["12:05-12:10 2"])),
                (2, owned(&["11:55-12:00 1"])),
                (3, owned(&["12:15-12:20 1"])),
                (4, owned(&["11:55-12:00 2"])),
            ],
        ),
    ] {
        let describe = |row: &Value| {
            assert!(row.get("user_id").is_none(), "{row}");
            let hhmm = |v: &Value| v.as_str().unwrap()[11..16].to_string();
            format!(
                "{}-{} {}",
                hhmm(&row["window_start"]),
                hhmm(&row["window_end"]),
                row["count"]
            )
        };
        let got: Vec<(u64, Vec<String>)> =
            console_run_edited(mode, &[("group_by = [\"user_id\"]\n", "")], describe)
                .into_iter()
                .filter(|(_, rows)| !rows.is_empty())
                .collect();
        assert_eq!(got, expected, "{mode}");
    }
}

#[test]
fn spark_refusals_are_reported_at_start() {
    let dir = example("windowed-clicks");
    let pipeline = dir.path().join("pipeline.toml");
    edit(
        &pipeline,
        "[watermark]\ncolumn = \"event_time\"\ndelay = \"10m\"\n",
        "",
    );
    let err = assert_exit(&weir().arg("validate").arg(&pipeline).output().unwrap(), 2);
    assert!(err.contains("Append output mode not supported when there are streaming aggregations without watermark"), "{err}");
    assert!(
        err.contains("hint: add [watermark] column = \"event_time\""),
        "{err}"
    );

    let dir = example("windowed-clicks");
    let pipeline = dir.path().join("pipeline.toml");
    edit(
        &pipeline,
        "output_mode = \"append\"",
        "output_mode = \"update\"",
    );
    let err = assert_exit(&weir().arg("validate").arg(&pipeline).output().unwrap(), 2);
    assert!(
        err.contains("Data source json does not support Update output mode"),
        "{err}"
    );
}

/// Every batch of the example, with the clicks split one file per batch.
#[test]
fn kill_at_every_crash_point_with_state_on_both_backends() {
    assert_kills_anywhere_change_nothing("windowed-clicks", &[2, 4], |dir| {
        sink_batches(&dir.join(".weir/output"))
    });
}

/// Writes `files` files of clicks for 20 users, 6 minutes of event time per
/// file, in order: state must stay bounded however long the stream runs.
fn long_stream(dir: &Path, files: usize) {
    let clicks = dir.join("data/clicks");
    std::fs::remove_dir_all(&clicks).unwrap();
    std::fs::create_dir_all(&clicks).unwrap();
    let base = 1_764_000_000_000i64; // 2025-11-24T16:00Z
    for f in 0..files {
        let body: String = (0..60)
            .map(|i| {
                let ms = base + (f as i64 * 360 + i * 6) * 1000;
                format!(
                    "{{\"user_id\": \"u{}\", \"event_time\": {}}}\n",
                    i % 20,
                    ms * 1000
                )
            })
            .collect();
        std::fs::write(clicks.join(format!("f{f:04}.jsonl")), body).unwrap();
    }
}

fn max_state_rows(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|l| l.split("| state ").nth(1)?.split(' ').next()?.parse().ok())
        .max()
        .unwrap()
}

#[test]
fn state_stays_bounded_as_the_stream_grows_tenfold() {
    let mut maxima = Vec::new();
    for files in [10, 100] {
        let dir = example("windowed-clicks");
        edit(
            &dir.path().join("pipeline.toml"),
            "{ name = \"event_time\", type = \"timestamp\" }",
            "{ name = \"event_time\", type = \"Timestamp(Microsecond, None)\" }",
        );
        long_stream(dir.path(), files);
        let err = assert_ok(&run(dir.path()));
        maxima.push(max_state_rows(&err));
        let emitted = committed_json_rows(&dir.path().join(".weir/output")).len();
        assert!(
            emitted >= 20 * (files * 6 / 5 - 3),
            "{files} files: only {emitted} rows emitted"
        );
    }
    // Open windows end after the watermark (max event - 10m) and start before
    // the batch's last event (+6m): at most 6 five-minute windows x 20 users,
    // plus the layout row.
    assert!(
        maxima.iter().all(|m| *m <= 121),
        "state rows per run: {maxima:?}"
    );
    assert!(
        maxima[1] <= maxima[0] + 20,
        "state grew with the stream: {maxima:?}"
    );
}

/// A straightforward batch computation of what append mode must emit:
/// replay the files in order, track Spark's watermark, drop a row only when
/// all its windows ended by the previous batch's watermark (Spark 3.4+),
/// count, and keep the windows the final watermark closed.
fn expected_append(files: &[Vec<(String, i64)>], size: i64, slide: i64, delay: i64) -> Vec<String> {
    let mut counts: BTreeMap<(i64, i64, String), i64> = BTreeMap::new();
    let (mut previous, mut watermark) = (0i64, 0i64);
    for events in files {
        let late_before = previous;
        for (user, t) in events {
            let first_start = t - t.rem_euclid(slide) - (size / slide - 1) * slide;
            for start in (first_start..=*t).step_by(slide as usize) {
                let end = start + size;
                if start <= *t && *t < end && end > late_before {
                    *counts.entry((start, end, user.clone())).or_default() += 1;
                }
            }
        }
        let max = events.iter().map(|(_, t)| *t).max().unwrap();
        previous = watermark;
        watermark = watermark.max(max - delay);
    }
    counts
        .into_iter()
        .filter(|((_, end, _), _)| *end <= watermark)
        .map(|((start, end, user), n)| format!("{start} {end} {user} {n}"))
        .collect()
}

/// Runs `example` with `edits` applied to its pipeline over `files` (one
/// file per batch, event times as epoch ms); returns the committed rows as
/// sorted "start end user count" lines (times in ms) and the stderr.
fn run_random_stream(
    example_name: &str,
    edits: &[(&str, &str)],
    files: &[Vec<(String, i64)>],
) -> (Vec<String>, String) {
    let dir = random_stream_example(example_name, edits, files);
    let err = assert_ok(&run(dir.path()));
    let ms = |v: &Value| chrono_free_ms(v.as_str().unwrap());
    let mut got: Vec<String> = committed_json_rows(&dir.path().join(".weir/output"))
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {}",
                ms(&r["window_start"]),
                ms(&r["window_end"]),
                r["user_id"].as_str().unwrap(),
                r["count"]
            )
        })
        .collect();
    got.sort();
    (got, err)
}

/// A copy of a clicks example with `edits` applied to its pipeline and its
/// input replaced by `files` (one file per batch, event times as epoch ms).
pub(crate) fn random_stream_example(
    example_name: &str,
    edits: &[(&str, &str)],
    files: &[Vec<(String, i64)>],
) -> tempfile::TempDir {
    let dir = example(example_name);
    let pipeline = dir.path().join("pipeline.toml");
    for (from, to) in edits {
        edit(&pipeline, from, to);
    }
    edit(
        &pipeline,
        "{ name = \"event_time\", type = \"timestamp\" }",
        "{ name = \"event_time\", type = \"long\" }",
    );
    let clicks = dir.path().join("data/clicks");
    std::fs::remove_dir_all(&clicks).unwrap();
    std::fs::create_dir_all(&clicks).unwrap();
    for (f, events) in files.iter().enumerate() {
        let body: String = events
            .iter()
            .map(|(u, t)| format!("{{\"user_id\": \"{u}\", \"event_time\": {t}}}\n"))
            .collect();
        std::fs::write(clicks.join(format!("f{f:03}.jsonl")), body).unwrap();
    }
    dir
}

#[test]
fn random_disordered_streams_match_a_batch_computation() {
    let minute = 60_000i64;
    for (seed, window, size, slide) in [
        (1u64, "tumbling = \"5m\"", 5 * minute, 5 * minute),
        (
            2,
            "sliding = { size = \"10m\", slide = \"5m\" }",
            10 * minute,
            5 * minute,
        ),
        (3, "tumbling = \"5m\"", 5 * minute, 5 * minute),
    ] {
        let mut random = seeded(seed);
        let base = 1_764_000_000_000i64;
        let files: Vec<Vec<(String, i64)>> = (0..12)
            .map(|f| {
                (0..30)
                    .map(|_| {
                        // Mostly in order, some up to 20 minutes late, some duplicated.
                        let late = if random(5) == 0 {
                            random(20 * minute)
                        } else {
                            0
                        };
                        let t = base + f * 2 * minute + random(2 * minute) - late;
                        (format!("u{}", random(4)), t)
                    })
                    .collect()
            })
            .collect();
        let (got, err) =
            run_random_stream("windowed-clicks", &[("tumbling = \"5m\"", window)], &files);
        let mut expected = expected_append(&files, size, slide, 10 * minute);
        expected.sort();
        assert!(!expected.is_empty());
        assert_eq!(got, expected, "seed {seed}:\n{err}");
        assert!(
            err.contains("dropped"),
            "seed {seed} had no late rows:\n{err}"
        );
    }
}

/// Milliseconds of an RFC 3339 timestamp `YYYY-MM-DDTHH:MM:SS(.fff)+00:00`,
/// computed by hand (days from civil date) to stay independent of Weir.
fn chrono_free_ms(text: &str) -> i64 {
    let num = |r: std::ops::Range<usize>| text[r].parse::<i64>().unwrap();
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    let (hh, mm, ss) = (num(11..13), num(14..16), num(17..19));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let fraction: String = text[19..]
        .strip_prefix('.')
        .unwrap_or("")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let millis = format!("{fraction:0<3}")[..3].parse::<i64>().unwrap();
    ((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + millis
}

#[test]
fn article_dedup_example_keeps_each_id_once_within_the_watermark() {
    for store in ["rocksdb", "memory"] {
        let dir = example_on("dedup-events", store);
        let err = assert_ok(&run(dir.path()));
        let out = dir.path().join(".weir/output");
        let by_batch: BTreeMap<u64, Vec<String>> = numbered_entries(&out.join("_weir_log"))
            .into_iter()
            .map(|batch| {
                let name = format!("part-{batch:06}.jsonl");
                let rows = std::fs::read_to_string(out.join(name))
                    .unwrap_or_default()
                    .lines()
                    .map(|l| {
                        let v: Value = serde_json::from_str(l).unwrap();
                        format!(
                            "{}@{}",
                            v["event_id"].as_str().unwrap(),
                            &v["event_time"].as_str().unwrap()[11..16]
                        )
                    })
                    .collect();
                (batch, rows)
            })
            .collect();
        let expected: BTreeMap<u64, Vec<String>> = [
            (0, owned(&["e1@12:00", "e2@12:01"])),
            (1, owned(&["e3@12:40"])),
            (2, owned(&["e5@13:10"])),
            (3, owned(&["e6@13:11"])),
            (4, owned(&["e1@12:45"])),
        ]
        .into_iter()
        .collect();
        assert_eq!(by_batch, expected, "{store}:\n{err}");
        let batch4 = err.lines().find(|l| l.starts_with("batch 4:")).unwrap();
        assert!(batch4.contains("dropped 1"), "{batch4}");
    }
}

/// Puts all of a pipeline's keys in one key group, whose state files
/// then follow every batch.
fn one_key_group(pipeline: &Path) {
    let text = std::fs::read_to_string(pipeline).unwrap();
    std::fs::write(pipeline, format!("key_groups = 1\n{text}")).unwrap();
}

#[test]
fn restart_restores_state_from_a_snapshot_and_deltas() {
    // 40 batches: the state at batch 25 is snapshot 20 plus deltas 21..=25.
    let run_stream = |crash: Option<&str>| {
        let dir = example("windowed-clicks");
        edit(
            &dir.path().join("pipeline.toml"),
            "{ name = \"event_time\", type = \"timestamp\" }",
            "{ name = \"event_time\", type = \"Timestamp(Microsecond, None)\" }",
        );
        long_stream(dir.path(), 40);
        one_key_group(&dir.path().join("pipeline.toml"));
        if let Some(point) = crash {
            run_killed_at(&dir.path().join("pipeline.toml"), point);
            assert!(
                dir.path()
                    .join(".weir/checkpoint/state/0/20.0-0.snapshot")
                    .is_file()
            );
        }
        assert_ok(&run(dir.path()));
        sink_batches(&dir.path().join(".weir/output"))
    };
    let expected = run_stream(None);
    assert!(expected.values().map(Vec::len).sum::<usize>() > 100);
    // Retention: once snapshot 40 exists, state files restore the last
    // `min_batches_to_retain` versions: from snapshot 30 when 10 are
    // retained, from snapshot 10 when 25 are.
    // Also killed between snapshot 40 and the deletion of what it replaces.
    for (retained, oldest, crash) in [
        (10, "30", None),
        (25, "10", None),
        (10, "30", Some("state-before-trim@39")),
    ] {
        let dir = example("windowed-clicks");
        long_stream(dir.path(), 40);
        edit(
            &dir.path().join("pipeline.toml"),
            "{ name = \"event_time\", type = \"timestamp\" }",
            "{ name = \"event_time\", type = \"Timestamp(Microsecond, None)\" }",
        );
        one_key_group(&dir.path().join("pipeline.toml"));
        let mut text = std::fs::read_to_string(dir.path().join("pipeline.toml")).unwrap();
        text.push_str(&format!(
            "\n[retention]\nmin_batches_to_retain = {retained}\ncompact_interval = 5\n"
        ));
        std::fs::write(dir.path().join("pipeline.toml"), text).unwrap();
        if let Some(point) = crash {
            run_killed_at(&dir.path().join("pipeline.toml"), point);
        }
        assert_ok(&run(dir.path()));
        // The sink's log is compacted too: its rows (a batch's in key
        // group order, so compared sorted).
        let mut rows: Vec<String> = committed_json_rows(&dir.path().join(".weir/output"))
            .iter()
            .map(describe)
            .collect();
        rows.sort();
        let mut want: Vec<String> = expected.values().flatten().cloned().collect();
        want.sort();
        assert_eq!(rows, want, "{retained} retained, {crash:?}");
        // One key group, one task: files `<V>.0-0.<kind>`.
        let mut kept: Vec<String> = std::fs::read_dir(dir.path().join(".weir/checkpoint/state/0"))
            .unwrap()
            .map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                let parts: Vec<&str> = name.split('.').collect();
                assert_eq!(parts.get(1), Some(&"0-0"), "{name}");
                format!("{}.{}", parts[0], parts[2])
            })
            .collect();
        kept.sort_by_key(|n| n.split('.').next().unwrap().parse::<u64>().unwrap());
        let first = kept.first().unwrap().split('.').next().unwrap().to_string();
        assert_eq!(first, oldest, "{retained} retained: {kept:?}");
        assert!(
            kept.contains(&format!("{oldest}.snapshot"))
                && kept.contains(&"40.snapshot".to_string()),
            "{kept:?}"
        );
    }
    assert_eq!(run_stream(Some("sink-after-data@25")), expected);
    assert_eq!(run_stream(Some("after-commit@30")), expected);
}

#[test]
fn session_windows_merge_across_batches_and_close_by_watermark() {
    for store in ["rocksdb", "memory"] {
        let dir = example_on("sessions", store);
        let err = assert_ok(&run(dir.path()));
        let batches = sink_batches(&dir.path().join(".weir/output"));
        let expected: BTreeMap<u64, Vec<String>> = [
            (0, vec![]),
            (1, vec![]),
            (2, vec![]),
            (3, vec![]),
            (4, owned(&["10:00-11:20 u1 4", "10:05-11:00 u2 2"])), // the no-data batch
        ]
        .into_iter()
        .collect();
        assert_eq!(batches, expected, "{store}:\n{err}");
        assert!(
            err.contains("batch 4: 0 rows in (0 files), 2 rows out"),
            "{err}"
        );
    }
}

#[test]
fn session_windows_in_update_mode_emit_changed_sessions() {
    let dir = example("sessions");
    let pipeline = dir.path().join("pipeline.toml");
    edit(
        &pipeline,
        "kind = \"json\"\npath = \".weir/output\"",
        "kind = \"console\"\nformat = \"json\"\noutput_mode = \"update\"",
    );
    let out = run(dir.path());
    assert_ok(&out);
    let got = sorted_batches(
        console_batches(&String::from_utf8_lossy(&out.stdout)),
        describe,
    );
    let expected = vec![
        (0, owned(&["10:00-10:40 u1 2", "10:05-10:35 u2 1"])),
        (1, owned(&["10:05-11:00 u2 2", "10:50-11:20 u1 1"])),
        (2, owned(&["10:00-11:20 u1 4"])),
        (3, owned(&["12:00-12:30 u3 1"])),
        (4, owned(&[])),
    ];
    assert_eq!(got, expected);
}

/// `files` files of `rows` clicks by users u0..u2, 4 minutes of event time
/// per file with disorder up to 5 minutes: less than the examples'
/// 10-minute delay, so no row is late.
pub(crate) fn random_click_files(seed: u64, files: i64, rows: usize) -> Vec<Vec<(String, i64)>> {
    let minute = 60_000i64;
    let mut random = seeded(seed);
    let base = 1_764_000_000_000i64;
    (0..files)
        .map(|f| {
            (0..rows)
                .map(|_| {
                    (
                        format!("u{}", random(3)),
                        base + f * 4 * minute + random(4 * minute) - random(5 * minute),
                    )
                })
                .collect()
        })
        .collect()
}

#[test]
fn random_session_streams_match_a_batch_computation() {
    let minute = 60_000i64;
    let gap = 5 * minute;
    for seed in [11u64, 12] {
        let files = random_click_files(seed, 15, 8);
        let mut watermark = 0;
        for events in &files {
            watermark =
                (events.iter().map(|(_, t)| *t).max().unwrap() - 10 * minute).max(watermark);
        }
        let mut expected = Vec::new();
        for user in ["u0", "u1", "u2"] {
            let mut times: Vec<i64> = files
                .iter()
                .flatten()
                .filter(|(u, _)| u == user)
                .map(|(_, t)| *t)
                .collect();
            times.sort();
            let mut sessions: Vec<(i64, i64, i64)> = Vec::new();
            for t in times {
                match sessions.last_mut() {
                    Some((_, end, n)) if t <= *end => {
                        *end = (*end).max(t + gap);
                        *n += 1;
                    }
                    _ => sessions.push((t, t + gap, 1)),
                }
            }
            expected.extend(
                sessions
                    .into_iter()
                    .filter(|(_, end, _)| *end <= watermark)
                    .map(|(s, e, n)| format!("{s} {e} {user} {n}")),
            );
        }
        expected.sort();

        let (got, err) =
            run_random_stream("sessions", &[("gap = \"30m\"", "gap = \"5m\"")], &files);
        assert!(expected.len() >= 2, "{expected:?}");
        assert_eq!(got, expected, "seed {seed}:\n{err}");
    }
}

#[test]
fn every_aggregate_function_gives_exact_results() {
    let dir = example("windowed-clicks");
    let pipeline = dir.path().join("pipeline.toml");
    edit(
        &pipeline,
        "  { name = \"event_time\", type = \"timestamp\" },\n",
        "  { name = \"event_time\", type = \"timestamp\" },\n  { name = \"amount\", type = \"long\" },\n  { name = \"label\", type = \"string\" },\n",
    );
    edit(
        &pipeline,
        "aggregates = [ { fn = \"count\", as = \"count\" } ]",
        r#"aggregates = [
  { fn = "count", as = "count" },
  { fn = "count", column = "amount", as = "amounts" },
  { fn = "sum", column = "amount" },
  { fn = "min", column = "amount" },
  { fn = "max", column = "label" },
  { fn = "avg", column = "amount" },
  { fn = "first", column = "label" },
  { fn = "last", column = "label" },
]"#,
    );
    edit(
        &pipeline,
        "kind = \"json\"\npath = \".weir/output\"\noutput_mode = \"append\"",
        "kind = \"console\"\nformat = \"json\"\noutput_mode = \"complete\"",
    );
    let clicks = dir.path().join("data/clicks");
    std::fs::remove_dir_all(&clicks).unwrap();
    std::fs::create_dir_all(&clicks).unwrap();
    // One window for u1; arrival order differs from event-time order, and
    // one amount is null.
    std::fs::write(
        clicks.join("a.jsonl"),
        concat!(
            "{\"user_id\": \"u1\", \"event_time\": \"2026-11-25T12:03:00Z\", \"amount\": 5, \"label\": \"b\"}\n",
            "{\"user_id\": \"u1\", \"event_time\": \"2026-11-25T12:01:00Z\", \"amount\": -2, \"label\": \"c\"}\n",
            "{\"user_id\": \"u1\", \"event_time\": \"2026-11-25T12:04:00Z\", \"amount\": null, \"label\": \"a\"}\n",
            "{\"user_id\": \"u1\", \"event_time\": \"2026-11-25T12:02:00Z\", \"amount\": 10, \"label\": \"d\"}\n",
        ),
    )
    .unwrap();
    let out = run(dir.path());
    assert_ok(&out);
    let batches = console_batches(&String::from_utf8_lossy(&out.stdout));
    let row = &batches[0].1[0];
    assert_eq!(row["count"], 4);
    assert_eq!(row["amounts"], 3); // count(column) skips nulls
    assert_eq!(row["sum_amount"], 13);
    assert_eq!(row["min_amount"], -2);
    assert_eq!(row["max_label"], "d");
    assert!(
        (row["avg_amount"].as_f64().unwrap() - 13.0 / 3.0).abs() < 1e-12,
        "{row}"
    );
    assert_eq!(row["first_label"], "c"); // earliest event time, not first to arrive
    assert_eq!(row["last_label"], "a");
}

#[test]
fn plain_drop_duplicates_keeps_keys_forever_and_warns() {
    let dir = example("dedup-events");
    let pipeline = dir.path().join("pipeline.toml");
    edit(
        &pipeline,
        "drop_duplicates_within_watermark = [\"event_id\"]",
        "drop_duplicates = [\"event_id\"]",
    );
    let err = assert_ok(&run(dir.path()));
    assert!(err.contains("state grows without bound"), "{err}");
    let ids: Vec<String> = committed_json_rows(&dir.path().join(".weir/output"))
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_string())
        .collect();
    // Unlike the within-watermark flavour, the e1 of 12:45 is still a duplicate.
    assert_eq!(ids, ["e1", "e2", "e3", "e5", "e6"]);
}

#[test]
fn article_example_with_sliding_windows() {
    let dir = example("windowed-clicks");
    edit(
        &dir.path().join("pipeline.toml"),
        "tumbling = \"5m\"",
        "sliding = { size = \"10m\", slide = \"5m\" }",
    );
    let err = assert_ok(&run(dir.path()));
    let batches = sink_batches(&dir.path().join(".weir/output"));
    // Each click is in two 10-minute windows. The 11:58 click (batch 2,
    // watermark 11:59) is kept: both its windows end after 11:59. The
    // 11:59:59 click of batch 4 is judged by batch 3's watermark (11:59),
    // so it is kept too, and both its windows ([11:50, 12:00) and
    // [11:55, 12:05)) close by batch 4's (12:05). Spark 4.3 emits exactly
    // these rows.
    let expected: BTreeMap<u64, Vec<String>> = [
        (0, vec![]),
        (1, vec![]),
        (2, vec![]),
        (3, vec![]),
        (
            4,
            owned(&["11:50-12:00 u1 2", "11:55-12:05 u1 4", "11:55-12:05 u2 1"]),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(batches, expected, "{err}");
    assert!(
        !err.lines()
            .find(|l| l.starts_with("batch 4:"))
            .unwrap()
            .contains("dropped"),
        "{err}"
    );
}

#[test]
fn progress_log_has_sparks_fields_per_batch() {
    let dir = example("windowed-clicks");
    let log = dir.path().join("progress.jsonl");
    let out = weir()
        .arg("run")
        .arg("--quiet")
        .arg("--progress-log")
        .arg(&log)
        .arg(dir.path().join("pipeline.toml"))
        .output()
        .unwrap();
    let err = assert_ok(&out);
    assert!(
        !err.contains("batch 0:"),
        "--quiet still printed progress:\n{err}"
    );
    let events: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 5);
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e["batchId"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [0, 1, 2, 3, 4]);
    assert_eq!(events[0]["name"], "windowed-clicks");
    assert_eq!(events[0]["numInputRows"], 3);
    assert_eq!(
        events[0]["eventTime"]["watermark"],
        "1970-01-01T00:00:00.000Z"
    );
    assert_eq!(
        events[4]["eventTime"]["watermark"],
        "2026-11-25T12:05:00.000Z"
    );
    assert_eq!(events[4]["numRowsDroppedByWatermark"], 0);
    assert_eq!(events[4]["sink"]["numOutputRows"], 3);
    assert_eq!(events[4]["stateOperators"][0]["numRowsTotal"], 3);
    assert!(events[4]["durationMs"]["triggerExecution"].is_u64());
}

#[test]
fn late_rows_are_judged_by_the_previous_batchs_watermark_unless_turned_off() {
    // Spark 3.4+: batch 4 judges late rows by batch 3's watermark (11:59)
    // and closes windows by its own (12:05); both are logged in offsets/4,
    // so a replay judges rows alike.
    let offsets_4 = |dir: &Path| -> Value {
        let entry = std::fs::read(dir.join(".weir/checkpoint/offsets/4")).unwrap();
        serde_json::from_slice(&entry).unwrap()
    };
    let dir = example("windowed-clicks");
    assert_ok(&run(dir.path()));
    let offsets = offsets_4(dir.path());
    let ms = |hhmm: &str| chrono_free_ms(&format!("2026-11-25T{hhmm}:00Z"));
    assert_eq!(offsets["watermark_ms"], ms("12:05"), "{offsets}");
    assert_eq!(offsets["late_rows_watermark_ms"], ms("11:59"), "{offsets}");

    // `stateful_operator_allow_multiple = false` (Spark's
    // `spark.sql.streaming.statefulOperator.allowMultiple`) judges them by
    // the batch's own watermark, as Spark before 3.4: the 11:59:59 click of
    // batch 4 is dropped and its window closes with the 11:58 click alone.
    let dir = example("windowed-clicks");
    edit(
        &dir.path().join("pipeline.toml"),
        "name = \"windowed-clicks\"",
        "name = \"windowed-clicks\"\nstateful_operator_allow_multiple = false",
    );
    let err = assert_ok(&run(dir.path()));
    let batches = sink_batches(&dir.path().join(".weir/output"));
    assert_eq!(
        batches[&4],
        owned(&["11:55-12:00 u1 1", "12:00-12:05 u1 2", "12:00-12:05 u2 1"]),
        "{err}"
    );
    let batch4 = err.lines().find(|l| l.starts_with("batch 4:")).unwrap();
    assert!(batch4.contains("dropped 1"), "{batch4}");
    let offsets = offsets_4(dir.path());
    assert_eq!(offsets["late_rows_watermark_ms"], ms("12:05"), "{offsets}");
}

/// The ids and times (HH:MM:SS) a dedup pipeline over `files` (one file
/// per batch of `(id, HH:MM:SS)` on 2026-01-01) emits, per batch.
fn dedup_batches(top_level: &str, files: &[&[(&str, &str)]]) -> Vec<(u64, Vec<String>)> {
    let dir = example("dedup-events");
    let pipeline = dir.path().join("pipeline.toml");
    edit(
        &pipeline,
        "drop_duplicates_within_watermark = [\"event_id\"]",
        top_level,
    );
    edit(&pipeline, "delay = \"30m\"", "delay = \"10m\"");
    let events = dir.path().join("data/events");
    std::fs::remove_dir_all(&events).unwrap();
    std::fs::create_dir_all(&events).unwrap();
    for (i, rows) in files.iter().enumerate() {
        let body: String = rows
            .iter()
            .map(|(id, t)| {
                format!("{{\"event_id\": \"{id}\", \"event_time\": \"2026-01-01T{t}Z\"}}\n")
            })
            .collect();
        std::fs::write(events.join(format!("batch-{i}.jsonl")), body).unwrap();
    }
    assert_ok(&run(dir.path()));
    sorted_batches(
        committed_json_batches(&dir.path().join(".weir/output")),
        |r| {
            let t = r["event_time"].as_str().unwrap();
            format!("{} {}", r["event_id"].as_str().unwrap(), &t[11..19])
        },
    )
}

#[test]
fn dedup_drops_rows_at_the_watermark_and_forgets_keys_it_reaches_as_spark_does() {
    // Each expectation is what Spark 4.3 (pyspark 4.3.0) emitted for the
    // same files, batch by batch, with a 10-minute watermark.
    for top_level in [
        "drop_duplicates_within_watermark = [\"event_id\"]",
        "drop_duplicates = [\"event_id\", \"event_time\"]",
    ] {
        // Batch 2 judges late rows by batch 1's watermark, 00:10: the row
        // exactly at it is late, as in Spark (`<=`).
        let got = dedup_batches(
            top_level,
            &[
                &[("a", "00:20:00")],
                &[("b", "00:21:00")],
                &[("c", "00:10:00"), ("d", "00:10:01"), ("e", "00:09:59")],
            ],
        );
        let want = vec![
            (0, owned(&["a 00:20:00"])),
            (1, owned(&["b 00:21:00"])),
            (2, owned(&["d 00:10:01"])),
        ];
        assert_eq!(got, want, "{top_level}");
        // x (00:00) expires when the watermark reaches 00:10 (its time + 10m
        // within the watermark; its time for plain dropDuplicates on a key
        // with the event time), at the end of batch 1: the x of 00:15 in
        // batch 2 is new.
        let got = dedup_batches(
            top_level,
            &[
                &[("x", "00:00:00"), ("y", "00:20:00")],
                &[("z", "00:20:00")],
                &[("x", "00:15:00"), ("x", "00:10:00")],
            ],
        );
        let want = vec![
            (0, owned(&["x 00:00:00", "y 00:20:00"])),
            (1, owned(&["z 00:20:00"])),
            (2, owned(&["x 00:15:00"])),
        ];
        assert_eq!(got, want, "{top_level}");
    }
}
