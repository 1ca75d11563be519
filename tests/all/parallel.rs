//! Stateful operators as parallel tasks over key groups: the rows are the
//! same, batch by batch and in the same order, with one task or four; a
//! checkpoint written with one parallelism continues with another; a kill
//! while four tasks are mid-batch changes nothing.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::common::{
    assert_kills_anywhere_change_nothing_edited, assert_ok, committed_json_batches, example,
    example_on, run_dir, run_killed_at, weir,
};

/// Every example with a stateful operator: a window aggregation, session
/// windows, a Wasm stateful function, a stream-stream join, a join then
/// an aggregation, deduplication.
const STATEFUL_EXAMPLES: [&str; 6] = [
    "windowed-clicks",
    "sessions",
    "sessionize",
    "ad-clicks",
    "clicks-per-ad",
    "dedup-events",
];

/// Sets the pipeline's `parallelism` (a top-level key, so first in the file).
fn set_parallelism(pipeline: &Path, tasks: usize) {
    let text = std::fs::read_to_string(pipeline).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("parallelism ="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(pipeline, format!("parallelism = {tasks}\n{text}")).unwrap();
}

/// `weir run` with a progress log; returns the output's batches and the
/// `stateOperators` entry of each batch's progress.
fn run_logged(dir: &Path) -> (BTreeMap<u64, Vec<Value>>, Vec<Value>) {
    let log = dir.join("progress.jsonl");
    let out = weir()
        .arg("run")
        .arg("--progress-log")
        .arg(&log)
        .arg(dir.join("pipeline.toml"))
        .output()
        .unwrap();
    assert_ok(&out);
    let operators = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["stateOperators"][0].clone())
        .collect();
    (committed_json_batches(&dir.join(".weir/output")), operators)
}

#[test]
fn every_stateful_operator_emits_the_same_rows_with_one_task_and_with_four() {
    for name in STATEFUL_EXAMPLES {
        let mut runs = Vec::new();
        for tasks in [1, 4] {
            let dir = example(name);
            set_parallelism(&dir.path().join("pipeline.toml"), tasks);
            let (batches, operators) = run_logged(dir.path());
            // The tasks really ran: progress says how many, over 128 key groups.
            for operator in &operators {
                assert_eq!(operator["numTasks"], tasks, "{name}: {operator}");
                assert_eq!(operator["numShufflePartitions"], 128, "{name}: {operator}");
            }
            runs.push(batches);
        }
        let rows: usize = runs[0].values().map(Vec::len).sum();
        assert!(rows > 0, "{name} emits nothing");
        // Not only the same rows: the same order, since a batch's rows
        // come out in key group order whichever task owns the group.
        assert_eq!(runs[0], runs[1], "{name}");
    }
}

/// 30 files of 60 clicks by 40 users over 6 minutes each: one per batch.
fn many_keys(dir: &Path) {
    let clicks = dir.join("data/clicks");
    std::fs::remove_dir_all(&clicks).unwrap();
    std::fs::create_dir_all(&clicks).unwrap();
    let base = 1_764_000_000_000i64; // 2025-11-24T16:00Z
    for f in 0..30 {
        let body: String = (0..60)
            .map(|i| {
                let ms = base + (f * 360 + i * 6) * 1000;
                let user = (i * 7 + f) % 40;
                format!(
                    "{{\"user_id\": \"u{user}\", \"event_time\": {}}}\n",
                    ms * 1000
                )
            })
            .collect();
        std::fs::write(clicks.join(format!("f{f:04}.jsonl")), body).unwrap();
    }
    crate::common::edit(
        &dir.join("pipeline.toml"),
        "{ name = \"event_time\", type = \"timestamp\" }",
        "{ name = \"event_time\", type = \"Timestamp(Microsecond, None)\" }",
    );
}

#[test]
fn a_checkpoint_continues_with_another_parallelism_and_back() {
    for store in ["rocksdb", "memory"] {
        let straight = example_on("windowed-clicks", store);
        many_keys(straight.path());
        set_parallelism(&straight.path().join("pipeline.toml"), 1);
        assert_ok(&run_dir(straight.path()));
        let expected = committed_json_batches(&straight.path().join(".weir/output"));
        // 30 files, then the no-data batch that closes the last windows.
        assert_eq!(expected.len(), 31);
        assert!(expected.values().map(Vec::len).sum::<usize>() > 200);

        // 1 task, then 2, then 4, then 1 again, each run killed mid-batch.
        let dir = example_on("windowed-clicks", store);
        many_keys(dir.path());
        let pipeline = dir.path().join("pipeline.toml");
        for (tasks, kill) in [
            (1, Some("sink-after-data@6")),
            (2, Some("before-commit@13")),
            (4, Some("after-transform@20")),
            (1, None),
        ] {
            set_parallelism(&pipeline, tasks);
            match kill {
                Some(at) => run_killed_at(&pipeline, at),
                None => {
                    assert_ok(&run_dir(dir.path()));
                }
            }
        }
        let got = committed_json_batches(&dir.path().join(".weir/output"));
        assert_eq!(got, expected, "{store}");
    }
}

#[test]
fn kills_while_four_tasks_are_mid_batch_change_nothing() {
    // A join then an aggregation: two stateful steps, both as four tasks.
    assert_kills_anywhere_change_nothing_edited(
        "clicks-per-ad",
        |pipeline| set_parallelism(pipeline, 4),
        &[3, 4],
        |dir| {
            let batches = committed_json_batches(&dir.join(".weir/output"));
            assert_eq!(batches.values().map(Vec::len).sum::<usize>(), 4);
            batches
        },
    );
}

#[test]
fn key_groups_are_fixed_at_the_first_start() {
    let dir = example("windowed-clicks");
    let pipeline = dir.path().join("pipeline.toml");
    let text = std::fs::read_to_string(&pipeline).unwrap();
    std::fs::write(&pipeline, format!("key_groups = 16\n{text}")).unwrap();
    assert_ok(&run_dir(dir.path()));
    assert_eq!(
        std::fs::read_to_string(dir.path().join(".weir/checkpoint/key_groups"))
            .unwrap()
            .trim(),
        "16"
    );
    // Asking for others later is refused, with the reason and the way out.
    std::fs::write(&pipeline, format!("key_groups = 32\n{text}")).unwrap();
    let out = weir().arg("run").arg(&pipeline).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("partitioned into 16 key groups")
            && err.contains("key_groups = 32")
            && err.contains("change parallelism instead"),
        "{err}"
    );
    // Leaving key_groups out keeps the checkpoint's.
    std::fs::write(&pipeline, &text).unwrap();
    assert_ok(&run_dir(dir.path()));
}

#[test]
fn explain_prints_the_plan_with_its_tasks_shuffles_and_state() {
    let dir = example("clicks-per-ad");
    let pipeline = dir.path().join("pipeline.toml");
    set_parallelism(&pipeline, 3);
    let explain = || {
        let out = weir().arg("explain").arg(&pipeline).output().unwrap();
        assert_ok(&out);
        String::from_utf8(out.stdout).unwrap()
    };
    let plan = explain();
    let line = |kind: &str| {
        plan.lines()
            .find(|l| l.trim_start().starts_with(kind))
            .unwrap_or_else(|| panic!("no {kind} step:\n{plan}"))
            .to_string()
    };
    assert!(
        plan.starts_with("query `clicks-per-ad`: keyed state in 128 key groups"),
        "{plan}"
    );
    let join = line("join");
    assert!(
        join.contains("inner join on impressions.ad_id = clicks.ad_id")
            && join.contains("3 tasks")
            && join.contains("shuffle by ad_id")
            && join.contains("state/join/<version>.<key groups>"),
        "{plan}"
    );
    let aggregate = line("aggregate");
    assert!(
        aggregate.contains("30m tumbling windows of click_time by ad_id")
            && aggregate.contains("state/0/<version>.<key groups>"),
        "{plan}"
    );
    assert!(line("write").contains("merge"), "{plan}");
    // Once started, the checkpoint's key groups are the plan's.
    let text = std::fs::read_to_string(&pipeline).unwrap();
    std::fs::write(&pipeline, format!("key_groups = 8\n{text}")).unwrap();
    assert_ok(&run_dir(dir.path()));
    std::fs::write(&pipeline, text).unwrap();
    assert!(explain().starts_with("query `clicks-per-ad`: keyed state in 8 key groups"));
}
