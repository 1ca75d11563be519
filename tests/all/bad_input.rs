//! Bad input gets a clear error and loses nothing: malformed rows, bad
//! pipeline files, misbehaving plugins, corrupt checkpoint files.

use std::fs;

use crate::common::{Scenario, Spec, assert_exit, assert_ok, enrich_stage, testkit_stage};

const GOOD: &str = "{\"id\": 1, \"name\": \"a\", \"amount\": 1.5}\n{\"id\": 2, \"name\": \"b\", \"amount\": 2.5}\n";
const BAD_LINE_3: &str = "{\"id\": 1, \"name\": \"a\", \"amount\": 1.5}\n{\"id\": 2, \"name\": \"b\", \"amount\": 2.5}\n{\"id\": 3, \"name\": \"c\", \"amount\": \"lots\"}\n{\"id\": 4, \"name\": \"d\", \"amount\": 4.5}\n";

#[test]
fn malformed_json_row_fails_the_batch_with_file_and_line_then_a_fix_resumes() {
    let s = Scenario::new(Spec::default());
    s.input("a.json", GOOD);
    s.input("b.json", BAD_LINE_3);
    let err = assert_exit(&s.run(), 1);
    assert!(err.contains("bad record in"), "{err}");
    assert!(err.contains("b.json, line 3"), "{err}");
    assert!(s.committed_batches().is_empty());

    // Fixing the file and rerunning replays the same batch: nothing lost.
    s.input("b.json", &BAD_LINE_3.replace("\"lots\"", "3.5"));
    let err = assert_ok(&s.run());
    assert!(err.contains("batch 0 (replay)"), "{err}");
    assert_eq!(s.output_ids(), vec![1, 2, 1, 2, 3, 4]);
}

#[test]
fn dead_letter_keeps_good_rows_and_records_bad_ones() {
    let s = Scenario::new(Spec {
        source_extra: "on_bad_record = \"dead_letter\"\ndead_letter_path = \"dead\"".into(),
        ..Spec::default()
    });
    s.input("b.json", BAD_LINE_3);
    let err = assert_ok(&s.run());
    assert!(err.contains("1 bad records"), "{err}");
    assert_eq!(s.output_ids(), vec![1, 2, 4]);
    let dead = fs::read_to_string(s.path("dead/batch-000000.jsonl")).unwrap();
    let record: serde_json::Value = serde_json::from_str(dead.lines().next().unwrap()).unwrap();
    assert_eq!(record["line"], 3);
    assert!(
        record["file"].as_str().unwrap().ends_with("in/b.json"),
        "{record}"
    );
    assert!(
        record["raw"].as_str().unwrap().contains("\"lots\""),
        "{record}"
    );
    assert!(!record["reason"].as_str().unwrap().is_empty());
}

/// One line of 20,000 nested `[` (40 KB) between good rows: it used to
/// overflow the stack inside the JSON decoder and abort the process.
fn deeply_nested_line() -> String {
    format!(
        "{{\"id\": 1, \"name\": \"a\", \"amount\": 1.5}}\n{{\"id\": 2, \"name\": {}{}}}\n{{\"id\": 3, \"name\": \"c\", \"amount\": 3.5}}\n",
        "[".repeat(20_000),
        "]".repeat(20_000)
    )
}

#[test]
fn a_deeply_nested_json_line_is_a_bad_record_not_a_crash() {
    let s = Scenario::new(Spec::default());
    s.input("deep.json", &deeply_nested_line());
    let err = assert_exit(&s.run(), 1);
    assert!(err.contains("deep.json, line 2"), "{err}");
    assert!(err.contains("nested deeper than 64 levels"), "{err}");
    assert!(s.committed_batches().is_empty());

    let s = Scenario::new(Spec {
        source_extra: "on_bad_record = \"dead_letter\"\ndead_letter_path = \"dead\"".into(),
        ..Spec::default()
    });
    s.input("deep.json", &deeply_nested_line());
    let err = assert_ok(&s.run());
    assert!(err.contains("1 bad records"), "{err}");
    assert_eq!(s.output_ids(), vec![1, 3]);
    let dead = fs::read_to_string(s.path("dead/batch-000000.jsonl")).unwrap();
    let record: serde_json::Value = serde_json::from_str(dead.lines().next().unwrap()).unwrap();
    assert_eq!(record["line"], 2);
    assert_eq!(record["raw"].as_str().unwrap().len(), 40_019);
}

#[test]
fn malformed_csv_row_names_its_line() {
    let s = Scenario::new(Spec {
        format: "csv",
        ..Spec::default()
    });
    s.input("a.csv", "id,name,amount\n1,a,1.5\n2,b,x\n");
    let err = assert_exit(&s.run(), 1);
    assert!(err.contains("a.csv, line 3"), "{err}");
}

#[test]
fn csv_source_reads_rows() {
    let s = Scenario::new(Spec {
        format: "csv",
        ..Spec::default()
    });
    s.input("a.csv", "id,name,amount\n1,a,1.5\n2,,2.5\n");
    assert_ok(&s.run());
    let rows = s.output_rows();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["amount_x2"], 4.0);
    assert_eq!(rows[1]["id"], 2);
}

#[test]
fn toml_syntax_error_reports_line_and_column() {
    let s = Scenario::new(Spec::default());
    let text = fs::read_to_string(s.pipeline_path())
        .unwrap()
        .replace("format = \"json\"", "format = json\"");
    fs::write(s.pipeline_path(), text).unwrap();
    let err = assert_exit(&s.command("validate").output().unwrap(), 2);
    assert!(err.contains("pipeline.toml:10:"), "{err}");
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn unknown_key_reports_line_and_column_and_the_known_keys() {
    let s = Scenario::new(Spec {
        source_extra: "max_file_per_trigger = 3".into(),
        ..Spec::default()
    });
    let err = assert_exit(&s.command("validate").output().unwrap(), 2);
    assert!(err.contains("pipeline.toml:17:1"), "{err}");
    assert!(
        err.contains("unknown field `max_file_per_trigger`"),
        "{err}"
    );
    assert!(err.contains("max_files_per_trigger"), "{err}");
}

#[test]
fn missing_plugin_file_is_a_config_error_with_a_hint() {
    let s = Scenario::new(Spec {
        transforms: vec![enrich_stage().replace("weir_plugin_enrich.wasm", "nope.wasm")],
        ..Spec::default()
    });
    let err = assert_exit(&s.command("validate").output().unwrap(), 2);
    assert!(err.contains("nope.wasm not found"), "{err}");
    assert!(err.contains("./dev plugins"), "{err}");
}

#[test]
fn a_file_that_is_not_a_component_fails_to_load_clearly() {
    let s = Scenario::new(Spec {
        transforms: vec![
            enrich_stage().replace("${WEIR_PLUGIN_DIR}/weir_plugin_enrich.wasm", "junk.wasm"),
        ],
        ..Spec::default()
    });
    fs::write(s.path("junk.wasm"), b"definitely not wasm").unwrap();
    let err = assert_exit(&s.command("validate").output().unwrap(), 1);
    assert!(err.contains("plugin stage `double`: cannot load"), "{err}");
}

#[test]
fn invalid_plugin_config_is_reported_by_the_plugin() {
    let s = Scenario::new(Spec {
        transforms: vec![enrich_stage().replace("input = \"amount\", ", "")],
        ..Spec::default()
    });
    let err = assert_exit(&s.command("validate").output().unwrap(), 1);
    assert!(err.contains("plugin stage `double`"), "{err}");
    assert!(err.contains("missing field `input`"), "{err}");
}

/// 3 files x 2 rows (ids 1..=6), 1 file per batch, through `testkit`.
fn testkit_scenario(config: &str) -> Scenario {
    let s = Scenario::new(Spec {
        max_files: Some(1),
        transforms: vec![testkit_stage(config)],
        ..Spec::default()
    });
    s.json_inputs(3, 2);
    s
}

/// The query stopped at batch 1 (ids 3, 4); batch 0 stays committed; a
/// rerun with a plugin that behaves finishes with every row exactly once.
fn assert_stopped_at_batch_1_then_recovers(s: &mut Scenario) {
    assert_eq!(s.committed_batches(), vec![0]);
    assert_eq!(s.output_ids(), vec![1, 2]);
    s.spec.transforms = vec![testkit_stage("")];
    s.write_pipeline();
    let err = assert_ok(&s.run());
    assert!(err.contains("batch 1 (replay)"), "{err}");
    assert_eq!(s.output_ids(), vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn plugin_trap_stops_the_query_with_the_plugin_name_and_panic_message() {
    let mut s = testkit_scenario("trap_on_id = 3");
    let err = assert_exit(&s.run(), 1);
    assert!(
        err.contains("plugin stage `kit`: the plugin trapped"),
        "{err}"
    );
    assert!(err.contains("testkit: trap_on_id matched"), "{err}");
    assert_stopped_at_batch_1_then_recovers(&mut s);
}

#[test]
fn plugin_error_is_reported_apart_from_traps() {
    let mut s = testkit_scenario("error_on_id = 4");
    let err = assert_exit(&s.run(), 1);
    assert!(
        err.contains(
            "plugin stage `kit`: the plugin returned an error (input): testkit: error_on_id matched"
        ),
        "{err}"
    );
    assert!(!err.contains("trapped"), "{err}");
    assert_stopped_at_batch_1_then_recovers(&mut s);
}

#[test]
fn corrupt_plugin_output_is_refused() {
    let mut s = testkit_scenario("corrupt_on_id = 3");
    let err = assert_exit(&s.run(), 1);
    assert!(
        err.contains("plugin stage `kit`: the plugin returned invalid output"),
        "{err}"
    );
    assert!(err.contains("column `name`"), "{err}");
    assert_stopped_at_batch_1_then_recovers(&mut s);
}

#[test]
fn a_validity_bitmap_shorter_than_its_column_is_refused_not_a_panic() {
    // Found by the plugin-output fuzz target: Arrow's builder panicked on
    // it before validating.
    let mut s = testkit_scenario("empty_validity_on_id = 3");
    let err = assert_exit(&s.run(), 1);
    assert!(
        err.contains("the plugin returned invalid output")
            && err.contains("a validity bitmap of 0 bytes for 2 slots"),
        "{err}"
    );
    assert_stopped_at_batch_1_then_recovers(&mut s);
}

#[test]
fn plugin_output_schema_change_is_refused() {
    let mut s = testkit_scenario("drop_column_on_id = 3");
    let err = assert_exit(&s.run(), 1);
    assert!(
        err.contains("output schema changed between batches"),
        "{err}"
    );
    assert_stopped_at_batch_1_then_recovers(&mut s);
}

#[test]
fn corrupt_checkpoint_files_are_named_in_the_error() {
    let s = Scenario::new(Spec::default());
    s.json_inputs(4, 1);
    assert_ok(&s.run());

    let sources = s.path("ck/sources/0/1");
    let original = fs::read(&sources).unwrap();
    fs::write(&sources, b"{ not json").unwrap();
    let err = assert_exit(&s.run(), 1);
    assert!(err.contains("checkpoint file"), "{err}");
    assert!(err.contains("sources/0/1 is corrupt"), "{err}");
    fs::write(&sources, original).unwrap();

    fs::write(s.path("ck/metadata"), b"\0\0\0").unwrap();
    let err = assert_exit(&s.run(), 1);
    assert!(err.contains("metadata is corrupt"), "{err}");
}

#[test]
fn a_gap_in_the_checkpoint_logs_is_reported_not_guessed_around() {
    let s = Scenario::new(Spec::default());
    s.json_inputs(6, 1);
    assert_ok(&s.run());
    fs::remove_file(s.path("ck/commits/1")).unwrap();
    fs::remove_file(s.path("ck/commits/2")).unwrap();
    let err = assert_exit(&s.run(), 1);
    assert!(err.contains("the logs do not line up"), "{err}");
}

#[test]
fn a_looping_plugin_is_stopped_at_its_time_limit() {
    let mut s = testkit_scenario("loop_on_id = 3");
    s.spec.transforms[0].push_str("timeout = \"300ms\"\n");
    s.write_pipeline();
    let started = std::time::Instant::now();
    let err = assert_exit(&s.run(), 1);
    assert!(
        err.contains("plugin stage `kit`: the plugin exceeded its time limit of 300ms"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_stopped_at_batch_1_then_recovers(&mut s);
}

#[test]
fn a_plugin_over_its_memory_limit_is_stopped() {
    let mut s = testkit_scenario("allocate_on_id = 3");
    s.spec.transforms[0].push_str("memory_limit = \"64MiB\"\n");
    s.write_pipeline();
    let err = assert_exit(&s.run(), 1);
    assert!(
        err.contains("plugin stage `kit`: the plugin exceeded its memory limit of 67108864 bytes"),
        "{err}"
    );
    assert_stopped_at_batch_1_then_recovers(&mut s);
}

#[test]
fn rows_without_columns_count_against_the_output_limit() {
    let s = Scenario::new(Spec {
        transforms: vec![adversary_stage(
            "hollow",
            "rows_without_columns",
            "output_limit = \"1KiB\"",
        )],
        ..Spec::default()
    });
    s.json_inputs(1, 2);
    let err = assert_exit(&s.run(), 1);
    assert!(err.contains("plugin stage `hollow`"), "{err}");
    assert!(
        err.contains("returned 50000000 bytes from one call (Arrow memory, plus one per row), over its output limit of 1024 bytes"),
        "{err}"
    );
    assert!(s.committed_batches().is_empty());
}

#[test]
fn host_log_and_counters_are_bounded_whatever_the_plugin_sends() {
    let s = Scenario::new(Spec {
        max_files: Some(1),
        transforms: vec![adversary_stage("flood", "host_flood", "")],
        ..Spec::default()
    });
    s.json_inputs(2, 2);
    let err = assert_ok(&s.run());
    assert_eq!(s.output_ids(), vec![1, 2, 3, 4]);
    // Rate: a burst, then a trickle, out of 10,000 records.
    let records: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("of a flooding plugin"))
        .collect();
    assert!(
        (50..=250).contains(&records.len()),
        "{} records logged",
        records.len()
    );
    assert!(
        err.contains("log records of the plugin over 20 lines/s: dropping some"),
        "{err}"
    );
    // Size: a 10 KB message is cut to 4 KiB; 100 fields to 16 of 256 bytes.
    let longest = records.iter().map(|l| l.len()).max().unwrap();
    assert!(
        longest < 4096 + 16 * 300 + 200,
        "a logged line of {longest} bytes"
    );
    assert!(records[0].contains("k15"), "{}", records[0]);
    assert!(!records[0].contains("k16"), "{}", records[0]);
    // Counters: the sum saturates; at most 64 of them; long names refused.
    let batch = err.lines().find(|l| l.starts_with("batch 0:")).unwrap();
    assert!(batch.contains("total=9223372036854775807"), "{batch}");
    assert!(batch.contains(" c0062=1"), "{batch}");
    assert_eq!(batch.matches(" c0").count(), 63, "{batch}");
    assert!(!batch.contains("nnnn"), "{batch}");
    assert!(
        err.contains("counter ignored: at most 64 counters"),
        "{err}"
    );
}

#[test]
fn a_chatty_plugin_is_logged_at_a_limited_rate_and_not_stopped() {
    // 10,000 lines per batch: before stdout and stderr were rate-limited
    // host log streams, stderr filled a 64 KiB buffer and the plugin's
    // next print trapped.
    let s = Scenario::new(Spec {
        max_files: Some(1),
        transforms: vec![adversary_stage("chatty", "chatty", "")],
        ..Spec::default()
    });
    s.json_inputs(3, 2);
    let err = assert_ok(&s.run());
    assert_eq!(s.output_ids(), vec![1, 2, 3, 4, 5, 6]);
    let logged = err.matches("of a chatty plugin").count();
    assert!((50..=400).contains(&logged), "{logged} plugin lines logged");
    assert!(err.contains("stdout line 0 of a chatty plugin"), "{err}");
    assert!(err.contains("stderr line 0 of a chatty plugin"), "{err}");
    assert!(err.contains("lines of the plugin not logged"), "{err}");
}

/// A transform stage `name` running the adversary plugin in `mode`, with
/// `extra` stage settings.
fn adversary_stage(name: &str, mode: &str, extra: &str) -> String {
    format!(
        "[[transform]]\nname = \"{name}\"\nplugin = \"{}\"\nconfig = {{ mode = \"{mode}\" }}\n{extra}\n",
        weir_fixtures::ADVERSARY
    )
}
