//! Wasm stateful functions (flatMapGroupsWithState): the `sessionize`
//! example against the built-in session window, timeouts firing once in
//! watermark order across restarts, processing-time timeouts, plugin
//! failures naming the key, and Spark's refusals at start.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use weir::faults::CRASH_POINTS;

use crate::common::{
    assert_exit, assert_ok, assert_refusals, committed_json_batches, example, example_on, run,
    run_killed_at, weir,
};
use crate::windows::{random_click_files, random_stream_example};

/// Each committed batch's rows as JSON text, sorted within the batch.
fn batches_as_text(out: &Path) -> BTreeMap<u64, Vec<String>> {
    committed_json_batches(out)
        .into_iter()
        .map(|(batch, rows)| {
            let mut rows: Vec<String> = rows.iter().map(Value::to_string).collect();
            rows.sort();
            (batch, rows)
        })
        .collect()
}

/// "start-end user count" with times as HH:MM.
fn session(row: &Value) -> String {
    let hhmm = |v: &Value| v.as_str().unwrap()[11..16].to_string();
    format!(
        "{}-{} {} {}",
        hhmm(&row["window_start"]),
        hhmm(&row["window_end"]),
        row["user_id"].as_str().unwrap(),
        row["count"]
    )
}

#[test]
fn sessionize_example_drops_late_rows_as_spark_does() {
    for store in ["rocksdb", "memory"] {
        let dir = example_on("sessionize", store);
        let err = assert_ok(&run(&dir.path().join("pipeline.toml")));
        let got: Vec<(u64, Vec<String>)> = committed_json_batches(&dir.path().join(".weir/output"))
            .into_iter()
            .map(|(batch, rows)| {
                let mut rows: Vec<String> = rows.iter().map(session).collect();
                rows.sort();
                (batch, rows)
            })
            .collect();
        // The 09:58 click is at or before the watermark that judges batch
        // 2's late rows (batch 1's, 10:00): a function with event-time
        // timeouts never sees it, so u1's first session stays 10:00-10:40
        // and times out in batch 2 (the built-in session window keeps it).
        let expected = vec![
            (0, vec![]),
            (1, vec![]),
            (2, vec!["10:00-10:40 u1 2".to_string()]),
            (3, vec![]),
            // Both sessions time out (in timer order within a key group).
            (
                4,
                vec![
                    "10:05-11:00 u2 2".to_string(),
                    "10:50-11:20 u1 1".to_string(),
                ],
            ),
        ];
        assert_eq!(got, expected, "{store}:\n{err}");
        assert!(err.contains("dropped 1"), "{err}");
        assert!(
            err.contains("| sessionize "),
            "stage time in progress:\n{err}"
        );
    }
}

#[test]
fn sessionize_equals_the_builtin_session_window_batch_for_batch() {
    for seed in [21u64, 22, 23] {
        let files = random_click_files(seed, 15, 8);
        let gap = [("gap = \"30m\"", "gap = \"2m\"")];
        let builtin = random_stream_example("sessions", &gap, &files);
        let plugin = random_stream_example("sessionize", &gap, &files);
        let builtin_err = assert_ok(&run(&builtin.path().join("pipeline.toml")));
        let plugin_err = assert_ok(&run(&plugin.path().join("pipeline.toml")));
        let expected = batches_as_text(&builtin.path().join(".weir/output"));
        let got = batches_as_text(&plugin.path().join(".weir/output"));
        let emitting = expected.values().filter(|rows| !rows.is_empty()).count();
        assert!(
            emitting >= 3,
            "seed {seed}: too few sessions close: {expected:?}"
        );
        assert_eq!(
            got, expected,
            "seed {seed}\nbuilt-in:\n{builtin_err}\nsessionize:\n{plugin_err}"
        );
        assert!(!plugin_err.contains("dropped"), "{plugin_err}");
    }
}

/// A pipeline in a scratch directory running `keyed-testkit` over files
/// of `{"user", "ts"}` rows, one file per batch.
struct KeyedScenario {
    dir: tempfile::TempDir,
}

impl KeyedScenario {
    fn new(config: &str, state_timeout: &str, files: &[&str]) -> KeyedScenario {
        KeyedScenario::with_trigger(config, state_timeout, files, "available_now = true")
    }

    fn with_trigger(
        config: &str,
        state_timeout: &str,
        files: &[&str],
        trigger: &str,
    ) -> KeyedScenario {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("in")).unwrap();
        for (i, body) in files.iter().enumerate() {
            std::fs::write(dir.path().join(format!("in/f{i:02}.json")), body).unwrap();
        }
        let head = crate::common::json_files_head("keyed", trigger);
        let pipeline = format!(
            r#"{head}schema = [ {{ name = "user", type = "string" }}, {{ name = "ts", type = "long" }} ]

[watermark]
column = "ts"
delay = "1s"

[stateful]
name = "kit"
plugin = "${{WEIR_PLUGIN_DIR}}/weir_plugin_keyed_testkit.wasm"
key = ["user"]
state_timeout = "{state_timeout}"
config = {{ {config} }}

[sink]
kind = "json"
path = "out"
"#
        );
        std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
        KeyedScenario { dir }
    }

    fn pipeline(&self) -> std::path::PathBuf {
        self.dir.path().join("pipeline.toml")
    }

    fn add_file(&self, name: &str, body: &str) {
        std::fs::write(self.dir.path().join("in").join(name), body).unwrap();
    }

    /// Each batch's rows as "key rows total timed_out watermark", in the
    /// order the plugin emitted them.
    fn batches(&self) -> BTreeMap<u64, Vec<String>> {
        committed_json_batches(&self.dir.path().join("out"))
            .into_iter()
            .map(|(batch, rows)| {
                let mut rows = rows
                    .iter()
                    .map(|r| {
                        format!(
                            "{} {} {} {} {}",
                            r["key"].as_str().unwrap(),
                            r["rows"],
                            r["total"],
                            if r["timed_out"].as_bool().unwrap() {
                                "T"
                            } else {
                                "F"
                            },
                            r["watermark_ms"]
                        )
                    })
                    .collect::<Vec<_>>();
                // A batch's rows come out in key group order: no order to test.
                rows.sort();
                (batch, rows)
            })
            .collect()
    }
}

fn rows(events: &[(&str, i64)]) -> String {
    events
        .iter()
        .map(|(user, ts)| format!("{{\"user\": \"{user}\", \"ts\": {ts}}}\n"))
        .collect()
}

/// Keys time out 1s of event time after their latest row; the watermark
/// trails the latest event time by 1s.
fn event_timeout_scenario() -> KeyedScenario {
    KeyedScenario::new(
        "event_timeout_ms = 1000",
        "event_time",
        &[
            &rows(&[("a", 1000), ("b", 2000)]),
            &rows(&[("c", 10_000)]),
            // Refreshes a and b: their first timers (2000, 3000) never fire.
            &rows(&[("b", 9200), ("a", 9600)]),
            // e is late (8000 <= watermark 9000) and dropped.
            &rows(&[("d", 20_000), ("e", 8000)]),
        ],
    )
}

fn event_timeout_expected() -> BTreeMap<u64, Vec<String>> {
    let owned = |rows: &[&str]| rows.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    [
        (0, owned(&["a 1 1 F 0", "b 1 1 F 0"])),
        (1, owned(&["c 1 1 F 1000"])),
        (2, owned(&["a 1 2 F 9000", "b 1 2 F 9000"])),
        (3, owned(&["d 1 1 F 9000"])),
        // The no-data batch at watermark 19000: timers b (10200), a (10600)
        // and c (11000) fire once each (in timer order within a key group);
        // d's (21000) stays pending.
        (
            4,
            owned(&["a 0 2 T 19000", "b 0 2 T 19000", "c 0 1 T 19000"]),
        ),
    ]
    .into_iter()
    .collect()
}

#[test]
fn event_time_timeouts_fire_once_in_watermark_order() {
    let scenario = event_timeout_scenario();
    let err = assert_ok(&run(&scenario.pipeline()));
    assert_eq!(scenario.batches(), event_timeout_expected(), "{err}");
    assert!(err.contains("dropped 1"), "{err}");
    // A later run with nothing new fires nothing again.
    assert_ok(&run(&scenario.pipeline()));
    assert_eq!(scenario.batches(), event_timeout_expected());
}

#[test]
fn event_time_timeouts_fire_once_after_a_kill_at_every_crash_point() {
    for point in CRASH_POINTS {
        for batch in [2, 4] {
            let scenario = event_timeout_scenario();
            run_killed_at(&scenario.pipeline(), &format!("{point}@{batch}"));
            let err = assert_ok(&run(&scenario.pipeline()));
            assert_eq!(
                scenario.batches(),
                event_timeout_expected(),
                "kill at {point}@{batch}:\n{err}"
            );
        }
    }
}

#[test]
fn processing_time_timeouts_fire_in_a_batch_after_the_duration() {
    let scenario = KeyedScenario::new(
        "processing_timeout_ms = 200",
        "processing_time",
        &[&rows(&[("a", 1), ("b", 2)])],
    );
    assert_ok(&run(&scenario.pipeline()));
    std::thread::sleep(std::time::Duration::from_millis(300));
    scenario.add_file("f01.json", &rows(&[("b", 3), ("c", 4)]));
    let err = assert_ok(&run(&scenario.pipeline()));
    let batches = scenario.batches();
    // Batch 1 starts more than 200ms after batch 0: b gets data (which
    // resets its timeout), a times out. c's timer is not due yet.
    assert_eq!(batches[&0], vec!["a 1 1 F 0", "b 1 1 F 0"], "{err}");
    assert_eq!(
        batches[&1],
        vec!["a 0 1 T 0", "b 1 2 F 0", "c 1 1 F 0"],
        "{err}"
    );
}

#[test]
fn processing_time_timeouts_fire_without_new_input_in_a_running_query() {
    let scenario = KeyedScenario::with_trigger(
        "processing_timeout_ms = 300",
        "processing_time",
        &[&rows(&[("a", 1), ("b", 2)])],
        "processing_time = \"50ms\"",
    );
    let child = weir()
        .arg("run")
        .arg(scenario.pipeline())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while scenario.batches().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no timeout batch");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Let a few more triggers pass: nothing is due any more.
    std::thread::sleep(std::time::Duration::from_millis(400));
    // SAFETY: kill(2) with a child's pid has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let err = assert_ok(&child.wait_with_output().unwrap());
    let expected: BTreeMap<u64, Vec<String>> = [
        (0, vec!["a 1 1 F 0".to_string(), "b 1 1 F 0".to_string()]),
        // A batch with no input, run because both timers were due.
        (1, vec!["a 0 1 T 0".to_string(), "b 0 1 T 0".to_string()]),
    ]
    .into_iter()
    .collect();
    assert_eq!(scenario.batches(), expected, "{err}");
    assert!(
        err.contains("batch 1: 0 rows in (0 files), 2 rows out"),
        "{err}"
    );
}

#[test]
fn a_failing_key_fails_the_batch_naming_the_key() {
    for (config, expected) in [
        (
            "fail_key = \"b\"",
            "plugin stage `kit`, key (user=b): the plugin returned an error (input): refusing key b",
        ),
        (
            "trap_key = \"b\"",
            "plugin stage `kit`, key (user=b): the plugin trapped: ",
        ),
    ] {
        let scenario = KeyedScenario::new(
            config,
            "none",
            &[&rows(&[("a", 1)]), &rows(&[("a", 2), ("b", 3), ("c", 4)])],
        );
        let err = assert_exit(&run(&scenario.pipeline()), 1);
        assert!(err.contains(expected), "{err}");
        // Batch 0 committed; nothing of batch 1 (not even a's row) is visible.
        assert_eq!(
            scenario.batches().keys().copied().collect::<Vec<_>>(),
            vec![0]
        );
    }
}

#[test]
fn state_the_plugin_cannot_decode_is_its_error_with_the_key() {
    let scenario = KeyedScenario::new(
        "corrupt_key = \"a\"",
        "none",
        &[&rows(&[("a", 1)]), &rows(&[("a", 2)])],
    );
    let err = assert_exit(&run(&scenario.pipeline()), 1);
    assert!(
        err.contains("key (user=a): the plugin returned an error (internal): cannot decode the key's state as i64"),
        "{err}"
    );
}

#[test]
fn spark_refusals_for_stateful_functions_are_reported_at_start() {
    let dir = example("sessionize");
    let pipeline = dir.path().join("pipeline.toml");
    let original = std::fs::read_to_string(&pipeline).unwrap();
    assert_refusals(
        &pipeline,
        &original,
        &[
            (
                "[watermark]\ncolumn = \"event_time\"\ndelay = \"10m\"\n",
                "",
                "Watermark must be specified in the query for using event-time timeout",
            ),
            ("key = [\"user_id\"]", "key = []", "no key columns"),
            (
                "[sink]",
                "[aggregate]\ngroup_by = [\"user_id\"]\nwindow = { column = \"event_time\", tumbling = \"5m\" }\naggregates = [ { fn = \"count\" } ]\n\n[sink]",
                "a [stateful] function runs as the query's only stateful operator for now",
            ),
            (
                "state_timeout = \"event_time\"",
                "state_timeout = \"event\"",
                "unknown variant `event`",
            ),
            (
                "kind = \"json\"\npath = \".weir/output\"",
                "kind = \"console\"\noutput_mode = \"complete\"",
                "Complete output mode not supported",
            ),
        ],
    );
}

#[test]
fn validate_refuses_a_component_of_another_world() {
    let dir = example("sessionize");
    let pipeline = dir.path().join("pipeline.toml");
    crate::common::edit(
        &pipeline,
        "weir_plugin_sessionize.wasm",
        "weir_plugin_enrich.wasm",
    );
    let out = weir().arg("validate").arg(&pipeline).output().unwrap();
    let err = crate::common::stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("plugin stage `sessionize`: cannot load")
            && err.contains("it does not implement the weir:plugin stateful-plugin world"),
        "{err}"
    );
}

#[test]
fn stateful_functions_run_in_update_mode() {
    let dir = example("sessionize");
    let pipeline = dir.path().join("pipeline.toml");
    crate::common::edit(
        &pipeline,
        "kind = \"json\"\npath = \".weir/output\"",
        "kind = \"console\"\nformat = \"json\"\noutput_mode = \"update\"",
    );
    let out = run(&pipeline);
    assert_ok(&out);
    let got: Vec<(u64, Vec<String>)> =
        crate::common::console_batches(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .map(|(batch, rows)| {
                let mut rows: Vec<String> = rows.iter().map(session).collect();
                rows.sort();
                (batch, rows)
            })
            .collect();
    // The plugin decides what each batch emits: closed sessions, as in append.
    let owned = |rows: &[&str]| rows.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    assert_eq!(
        got,
        vec![
            (0, owned(&[])),
            (1, owned(&[])),
            (2, owned(&["10:00-10:40 u1 2"])),
            (3, owned(&[])),
            (4, owned(&["10:05-11:00 u2 2", "10:50-11:20 u1 1"])),
        ]
    );
}
