//! Triggers: available_now, once, processing_time, back-to-back; and the
//! checkpoint lock that keeps a second query off a running one's checkpoint.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{Scenario, Spec, assert_exit, assert_ok, stderr};

#[test]
fn available_now_with_two_files_per_trigger_runs_five_batches_over_ten_files() {
    let s = Scenario::new(Spec::default());
    s.json_inputs(10, 3);
    let err = assert_ok(&s.run());
    for batch in 0..5 {
        assert!(
            err.contains(&format!("batch {batch}: 6 rows in (2 files)")),
            "{err}"
        );
    }
    assert!(!err.contains("batch 5"), "{err}");
    assert!(err.contains("processed in 5 batch(es)"), "{err}");
    assert_eq!(s.committed_batches(), vec![0, 1, 2, 3, 4]);
    assert_eq!(s.output_ids(), (1..=30).collect::<Vec<_>>());

    // Files arriving later are the next run's.
    s.input(
        "zz-late.json",
        "{\"id\": 31, \"name\": \"late\", \"amount\": 1.0}\n",
    );
    let err = assert_ok(&s.run());
    assert!(err.contains("batch 5: 1 rows in (1 files)"), "{err}");
    assert_eq!(s.output_ids(), (1..=31).collect::<Vec<_>>());
}

#[test]
fn max_bytes_per_trigger_caps_batches_but_always_takes_one_file() {
    let s = Scenario::new(Spec {
        max_files: None,
        source_extra: "max_bytes_per_trigger = 1".into(),
        ..Spec::default()
    });
    s.json_inputs(3, 2);
    let err = assert_ok(&s.run());
    assert!(err.contains("processed in 3 batch(es)"), "{err}");
}

#[test]
fn once_processes_everything_in_one_batch_and_warns() {
    let s = Scenario::new(Spec {
        trigger: "once = true",
        ..Spec::default()
    });
    s.json_inputs(10, 1);
    let err = assert_ok(&s.run());
    assert!(err.contains("deprecated"), "{err}");
    assert!(err.contains("batch 0: 10 rows in (10 files)"), "{err}");
    assert_eq!(s.committed_batches(), vec![0]);
}

/// Waits until `commits/<batch>` exists.
fn wait_for_commit(s: &Scenario, batch: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !s.committed_batches().contains(&batch) {
        assert!(Instant::now() < deadline, "batch {batch} never committed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn terminate(child: &std::process::Child) {
    // SAFETY: kill(2) with a child's pid has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
}

#[test]
fn processing_time_picks_up_new_files_and_stops_gracefully_on_sigterm() {
    let s = Scenario::new(Spec {
        trigger: "processing_time = \"200ms\"",
        ..Spec::default()
    });
    s.json_inputs(1, 2);
    let child = s.command("run").stderr(Stdio::piped()).spawn().unwrap();
    wait_for_commit(&s, 0);
    s.input(
        "zz-second.json",
        "{\"id\": 3, \"name\": \"x\", \"amount\": 1.0}\n",
    );
    wait_for_commit(&s, 1);
    terminate(&child);
    let out = child.wait_with_output().unwrap();
    let err = assert_ok(&out);
    assert!(err.contains("stopped after 2 batch(es)"), "{err}");
    assert_eq!(s.output_ids(), vec![1, 2, 3]);
}

#[test]
fn a_second_query_on_a_running_checkpoint_is_refused() {
    let mut s = Scenario::new(Spec {
        trigger: "",
        ..Spec::default()
    }); // back-to-back, runs until stopped
    s.json_inputs(1, 1);
    let first = s.command("run").stderr(Stdio::piped()).spawn().unwrap();
    wait_for_commit(&s, 0);

    let second = s.run();
    let err = assert_exit(&second, 1);
    assert!(err.contains("is in use by another running query"), "{err}");

    terminate(&first);
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Once the first has stopped, the checkpoint is free again.
    s.spec.trigger = "available_now = true";
    s.write_pipeline();
    assert_ok(&s.run());
}

#[test]
fn prometheus_metrics_are_served_while_a_query_runs() {
    let s = Scenario::new(Spec {
        trigger: "processing_time = \"100ms\"",
        ..Spec::default()
    });
    s.json_inputs(2, 2);
    let port = crate::common::free_port();
    let child = s
        .command("run")
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{port}"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_commit(&s, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let query = [("query", "test-query")];
    let metrics = loop {
        if let Ok(scrape) = crate::common::scrape_metrics(port)
            && crate::common::metric_value(&scrape, "weir_batches_total", &query).is_some()
        {
            break scrape;
        }
        assert!(Instant::now() < deadline, "no metrics");
        std::thread::sleep(Duration::from_millis(50));
    };
    terminate(&child);
    assert_ok(&child.wait_with_output().unwrap());
    let value = |metric: &str, labels: &[(&str, &str)]| {
        crate::common::metric_value(&metrics, metric, labels)
            .unwrap_or_else(|| panic!("{metric} {labels:?} missing in {:?}", metrics.samples))
    };
    assert_eq!(value("weir_batches_total", &query), 1.0);
    assert_eq!(value("weir_input_rows_total", &query), 4.0);
    assert_eq!(value("weir_output_rows_total", &query), 4.0);
    // One call per input file.
    assert_eq!(
        value(
            "weir_plugin_calls_total",
            &[("query", "test-query"), ("stage", "double")]
        ),
        2.0
    );
    // The histogram parses as one: every bucket up to +Inf holds the batch.
    assert_eq!(value("weir_batch_duration_seconds", &query), 1.0);
}
