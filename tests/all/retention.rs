//! Bounded checkpoints: retention of old batches, compacted source and
//! sink logs, `max_file_age` and `clean_source` — and exactly-once output
//! across all of them, also under `kill -9` at every step of a purge or a
//! compaction.

use std::fs;
use std::time::{Duration, SystemTime};

use crate::common::{Scenario, Spec, assert_ok, committed_sink_files, numbered_entries};
use crate::crash::run_until_killed;

/// One file per batch; keeps 4 batches, compacts every 2.
fn retained_spec() -> Spec {
    Spec {
        max_files: Some(1),
        tables: "[retention]\nmin_batches_to_retain = 4\ncompact_interval = 2\n".into(),
        ..Spec::default()
    }
}

/// Names in `dir`, sorted.
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn ids(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

/// Ids 1..=n in order.
fn expected_ids(n: i64) -> Vec<i64> {
    (1..=n).collect()
}

#[test]
fn old_batches_are_deleted_and_a_restart_resumes_from_the_compacted_logs() {
    let s = Scenario::new(retained_spec());
    s.json_inputs(12, 5);
    assert_ok(&s.run());
    // Batches 0..=11; the purge after batch 11 keeps 8..=11.
    assert_eq!(s.committed_batches(), ids(8, 11));
    assert_eq!(numbered_entries(&s.path("ck/offsets")), ids(8, 11));
    assert_eq!(numbered_entries(&s.path("ck/versions")), ids(8, 11));
    assert_eq!(
        names(&s.path("ck/sources/0")),
        ["10", "11", "11.compact", "8", "9"]
    );
    // The sink log: the newest compact entry, the one before it (for
    // readers that took it), and the retained batches' entries.
    assert_eq!(
        names(&s.path("out/_weir_log")),
        ["10", "11", "11.compact", "8", "9", "9.compact"]
    );
    let compact: serde_json::Value =
        serde_json::from_slice(&fs::read(s.path("out/_weir_log/11.compact")).unwrap()).unwrap();
    assert_eq!(compact["batch_id"], 11);
    assert_eq!(compact["rows"], 60);
    assert_eq!(compact["files"].as_array().unwrap().len(), 12);
    let seen: serde_json::Value =
        serde_json::from_slice(&fs::read(s.path("ck/sources/0/11.compact")).unwrap()).unwrap();
    assert_eq!(seen["files"].as_object().unwrap().len(), 12);
    assert_eq!(s.output_ids(), expected_ids(60));
    let out = crate::common::weir()
        .args(["checkpoint", "inspect", "--json"])
        .arg(s.path("ck"))
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sourceCompacts"], serde_json::json!({"0": 11}));
    assert_eq!(
        report["offsets"],
        serde_json::json!({"entries": 4, "first": 8, "last": 11})
    );

    // A restart reads the compact entry, not the deleted plans: no old
    // file is read again, the new ones are read once.
    for f in 12..15 {
        s.input(
            &format!("part-{f:03}.json"),
            &format!(
                "{{\"id\": {}, \"name\": \"late\", \"amount\": 1.0}}\n",
                61 + f - 12
            ),
        );
    }
    let err = assert_ok(&s.run());
    assert!(
        err.contains("restored the sources' positions"),
        "restart should log restoring: {err}"
    );
    // Retained: the last 4 at the purge after batch 13, and batch 14.
    assert_eq!(s.committed_batches(), ids(10, 14));
    assert_eq!(s.output_ids(), expected_ids(63));
    let (files, next) = committed_sink_files(&s.path("out"));
    assert_eq!((files.len(), next), (15, 15));
}

#[test]
fn kill_at_every_step_of_compaction_and_purge_then_restart_gives_exact_output() {
    // Batch 9 compacts (10 % 2 == 0) and purges batches 0..=5.
    for point in ["sink-after-compact", "after-compact", "purge-halfway"] {
        let s = Scenario::new(retained_spec());
        s.json_inputs(12, 5);
        run_until_killed(&s, point, 9);
        let err = assert_ok(&s.run());
        assert_eq!(
            s.output_ids(),
            expected_ids(60),
            "after a kill at {point}@9:\n{err}"
        );
        assert_eq!(
            s.committed_batches(),
            ids(8, 11),
            "after a kill at {point}@9"
        );
        // Restarting again on the trimmed checkpoint reads nothing twice.
        s.input(
            "part-900.json",
            "{\"id\": 61, \"name\": \"x\", \"amount\": 1.0}\n",
        );
        assert_ok(&s.run());
        assert_eq!(
            s.output_ids(),
            expected_ids(61),
            "second restart after {point}@9"
        );
    }
}

#[test]
fn max_file_age_ignores_and_forgets_files_older_than_the_newest_by_more_than_the_age() {
    let s = Scenario::new(Spec {
        max_files: None,
        source_extra: "max_file_age = \"1h\"".into(),
        tables: "[retention]\nmin_batches_to_retain = 1\ncompact_interval = 1\n".into(),
        ..Spec::default()
    });
    let aged = |name: &str, id: i64, age: Duration| {
        s.input(
            name,
            &format!("{{\"id\": {id}, \"name\": \"n\", \"amount\": 1.0}}\n"),
        );
        let file = fs::File::options()
            .write(true)
            .open(s.path("in").join(name))
            .unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
    };
    // The first batch takes every file, as in Spark.
    aged("a.json", 1, Duration::from_secs(3 * 3600));
    aged("b.json", 2, Duration::ZERO);
    assert_ok(&s.run());
    assert_eq!(s.output_ids(), [1, 2]);
    // After it, files more than an hour older than the newest are ignored...
    aged("c.json", 3, Duration::from_secs(2 * 3600));
    aged("d.json", 4, Duration::from_secs(60));
    assert_ok(&s.run());
    assert_eq!(s.output_ids(), [1, 2, 4]);
    // ...and forgotten: the compact entry remembers only files within the age.
    let last = numbered_entries(&s.path("ck/commits"))[0];
    let seen: serde_json::Value =
        serde_json::from_slice(&fs::read(s.path(&format!("ck/sources/0/{last}.compact"))).unwrap())
            .unwrap();
    let mut remembered: Vec<&String> = seen["files"].as_object().unwrap().keys().collect();
    remembered.sort();
    assert_eq!(remembered, ["b.json", "d.json"]);
    assert!(seen["forgotten_before_ms"].is_i64(), "{seen}");
}

#[test]
fn clean_source_deletes_or_archives_each_file_once_its_batch_is_committed() {
    for mode in ["delete", "archive"] {
        let extra = match mode {
            "archive" => "clean_source = \"archive\"\nsource_archive_dir = \"archive\"".to_string(),
            _ => "clean_source = \"delete\"".to_string(),
        };
        let s = Scenario::new(Spec {
            source_extra: extra,
            ..Spec::default()
        });
        s.json_inputs(6, 5);
        fs::create_dir_all(s.path("in/sub")).unwrap();
        s.input(
            "sub/nested.json",
            "{\"id\": 31, \"name\": \"n\", \"amount\": 1.0}\n",
        );
        assert_ok(&s.run());
        assert_eq!(s.output_ids().len(), 31, "{mode}");
        let left: Vec<String> = names(&s.path("in"))
            .into_iter()
            .filter(|n| n != "sub")
            .collect();
        assert!(
            left.is_empty(),
            "{mode}: files left in the source: {left:?}"
        );
        assert!(names(&s.path("in/sub")).is_empty(), "{mode}");
        if mode == "archive" {
            assert_eq!(names(&s.path("archive")).len(), 7, "{mode}");
            assert_eq!(
                fs::read_to_string(s.path("archive/sub/nested.json")).unwrap(),
                "{\"id\": 31, \"name\": \"n\", \"amount\": 1.0}\n"
            );
        }
        // Nothing is read twice on a restart, and new files are read.
        s.input(
            "new.json",
            "{\"id\": 32, \"name\": \"n\", \"amount\": 1.0}\n",
        );
        assert_ok(&s.run());
        assert_eq!(s.output_ids().len(), 32, "{mode}");
    }
}

#[test]
fn an_archive_inside_the_source_directory_is_refused_with_its_position() {
    let s = Scenario::new(Spec {
        source_extra: "clean_source = \"archive\"\nsource_archive_dir = \"in/done\"".into(),
        ..Spec::default()
    });
    let out = s.run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("overlaps the source directory"), "{err}");
    assert!(err.contains("pipeline.toml:"), "{err}");
}

#[test]
fn checkpoint_compact_trims_a_stopped_query_to_its_retention() {
    let mut s = Scenario::new(Spec {
        max_files: Some(1),
        ..Spec::default()
    });
    s.json_inputs(12, 5);
    assert_ok(&s.run());
    // Nothing trimmed yet under the default retention (100 batches).
    assert_eq!(s.committed_batches(), ids(0, 11));
    s.spec = retained_spec();
    s.write_pipeline();
    let out = crate::common::weir()
        .args(["checkpoint", "compact"])
        .arg(s.pipeline_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_ok(&out);
    assert!(text.contains("through batch 11"), "{text}");
    assert_eq!(s.committed_batches(), ids(8, 11));
    assert_eq!(
        names(&s.path("ck/sources/0")),
        ["10", "11", "11.compact", "8", "9"]
    );
    assert!(s.path("out/_weir_log/11.compact").is_file());
    assert_eq!(numbered_entries(&s.path("out/_weir_log")), ids(8, 11));
    s.input(
        "new.json",
        "{\"id\": 61, \"name\": \"n\", \"amount\": 1.0}\n",
    );
    assert_ok(&s.run());
    assert_eq!(s.output_ids(), expected_ids(61));
}

#[test]
fn a_file_whose_cleanup_a_crash_interrupted_is_cleaned_up_on_restart() {
    let s = Scenario::new(Spec {
        max_files: Some(1),
        source_extra: "clean_source = \"delete\"".into(),
        ..Spec::default()
    });
    s.json_inputs(3, 5);
    // Killed right after batch 1's commit, before its file is deleted.
    run_until_killed(&s, "after-commit", 1);
    assert_eq!(names(&s.path("in")), ["part-001.json", "part-002.json"]);
    assert_ok(&s.run());
    assert!(names(&s.path("in")).is_empty());
    assert_eq!(s.output_ids(), expected_ids(15));
}

/// An outside reader of a Parquet file sink, in Python with pyarrow: the
/// newest `_weir_log/N.compact` entry and the batch entries after it name
/// the committed files, which pyarrow's dataset reader reads.
const PARQUET_READER: &str = r#"
import json, os, sys
import pyarrow.dataset as ds
out = sys.argv[1]
log = os.path.join(out, "_weir_log")
names = os.listdir(log)
compacts = sorted(int(n[:-8]) for n in names if n.endswith(".compact") and n[:-8].isdigit())
files, through = [], -1
if compacts:
    with open(os.path.join(log, f"{compacts[-1]}.compact")) as f:
        entry = json.load(f)
    files, through = entry["files"], entry["batch_id"]
for batch in sorted(int(n) for n in names if n.isdigit()):
    if batch > through:
        with open(os.path.join(log, str(batch))) as f:
            files += json.load(f)["files"]
table = ds.dataset([os.path.join(out, f) for f in files], format="parquet").to_table()
print(json.dumps({"files": len(files), "ids": sorted(table.column("id").to_pylist())}))
sys.stdout.flush()
os._exit(0)
"#;

fn read_parquet_sink(out: &std::path::Path) -> (u64, Vec<i64>) {
    let result = std::process::Command::new(crate::delta::python())
        .args(["-c", PARQUET_READER])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "the pyarrow reader failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    (
        read["files"].as_u64().unwrap(),
        serde_json::from_value(read["ids"].clone()).unwrap(),
    )
}

#[test]
fn pyarrow_reads_exactly_the_committed_rows_of_a_compacted_parquet_sink() {
    let parquet = || {
        let s = Scenario::new(Spec {
            sink: "parquet",
            ..retained_spec()
        });
        s.json_inputs(12, 5);
        s
    };
    let s = parquet();
    assert_ok(&s.run());
    assert!(s.path("out/_weir_log/11.compact").is_file());
    assert_eq!(read_parquet_sink(&s.path("out")), (12, expected_ids(60)));
    // Killed after the compact entry, before the old entries are deleted;
    // and before the compact entry, with a data file of batch 9 written.
    for at in ["sink-after-compact@9", "sink-after-data@9"] {
        let s = parquet();
        crate::common::run_killed_at(&s.pipeline_path(), at);
        let (files, ids) = read_parquet_sink(&s.path("out"));
        assert_eq!(
            ids,
            expected_ids(ids.len() as i64),
            "{at}: a committed prefix"
        );
        assert!(files <= 10, "{at}: {files} files");
        assert_ok(&s.run());
        assert_eq!(
            read_parquet_sink(&s.path("out")),
            (12, expected_ids(60)),
            "{at}"
        );
    }
}

/// 12 one-file batches into a `sink` rolled at `target` (a batch's file is
/// ~0.4 KiB as JSON, ~2 KiB as Parquet), compacting every 2 batches.
fn rolled(sink: &'static str, target: &str) -> Scenario {
    let s = Scenario::new(Spec {
        sink,
        max_files: Some(1),
        tables: format!(
            "target_file_size = \"{target}\"\n[retention]\nmin_batches_to_retain = 4\n\
             compact_interval = 2\n"
        ),
        ..Spec::default()
    });
    s.json_inputs(12, 5);
    s
}

#[test]
fn target_file_size_rolls_consecutive_batches_into_larger_files_exactly_once() {
    let s = rolled("json", "1KiB");
    assert_ok(&s.run());
    assert_eq!(s.output_ids(), expected_ids(60));
    let (files, _) = committed_sink_files(&s.path("out"));
    // Merged files are named by their batch range; all but the newest
    // (still open) reached the target.
    assert!(files.len() <= 5 && files.len() >= 3, "{files:?}");
    for file in &files[..files.len() - 1] {
        assert!(
            file.matches('-').count() == 2,
            "{file} is not a merged file"
        );
        let size = fs::metadata(s.path("out").join(file)).unwrap().len();
        assert!(size >= 1024, "{file}: {size} bytes");
    }
    // Only the files the newest compaction replaced are left besides them.
    let on_disk = names(&s.path("out"))
        .into_iter()
        .filter(|n| n.starts_with("part-"))
        .count();
    assert_eq!(
        on_disk,
        files.len() + crate::common::superseded(&s.path("out")).len()
    );
    // More batches keep rolling into the open file.
    s.input(
        "part-100.json",
        "{\"id\": 61, \"name\": \"n\", \"amount\": 1.0}\n",
    );
    s.input(
        "part-101.json",
        "{\"id\": 62, \"name\": \"n\", \"amount\": 1.0}\n",
    );
    assert_ok(&s.run());
    assert_eq!(s.output_ids(), expected_ids(62));

    // A kill after a merged file is written (before the compact entry
    // that names it), and after that entry: the restart converges.
    for at in [
        "sink-after-merge@5",
        "sink-after-compact@5",
        "sink-after-merge@11",
    ] {
        let s = rolled("json", "1KiB");
        crate::common::run_killed_at(&s.pipeline_path(), at);
        assert_ok(&s.run());
        assert_eq!(s.output_ids(), expected_ids(60), "after a kill at {at}");
        let (again, _) = committed_sink_files(&s.path("out"));
        assert_eq!(again, files, "after a kill at {at}");
    }

    // Parquet: merged by rewriting; pyarrow reads exactly the rows.
    let s = rolled("parquet", "8KiB");
    assert_ok(&s.run());
    let (parquet_files, ids) = read_parquet_sink(&s.path("out"));
    assert_eq!(ids, expected_ids(60));
    assert!(parquet_files < 12, "{parquet_files} files");
}

#[test]
fn clean_source_never_deletes_through_a_symbolic_link() {
    let s = Scenario::new(Spec {
        source_extra: "clean_source = \"delete\"".into(),
        ..Spec::default()
    });
    let outside = tempfile::tempdir().unwrap();
    fs::write(
        outside.path().join("victim.json"),
        "{\"id\": 1, \"name\": \"n\", \"amount\": 1.0}\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), s.path("in/linked")).unwrap();
    s.input(
        "own.json",
        "{\"id\": 2, \"name\": \"n\", \"amount\": 1.0}\n",
    );
    assert_ok(&s.run());
    let mut ids = s.output_ids();
    ids.sort();
    assert_eq!(ids, [1, 2], "both files are read");
    assert!(
        outside.path().join("victim.json").is_file(),
        "deleted through the link"
    );
    assert!(!s.path("in/own.json").exists());
}
