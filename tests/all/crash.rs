//! Exactly-once under `kill -9`: the process is killed with SIGKILL at
//! every crash point of a batch (and at random moments), restarted, and the
//! sink output must equal a fault-free run's — no row lost, none twice.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use weir::faults::CRASH_POINTS;

use crate::common::{Scenario, Spec, assert_ok};

/// 6 files x 5 rows, 2 files per batch: batches 0, 1, 2.
fn scenario() -> Scenario {
    let s = Scenario::new(Spec::default());
    s.json_inputs(6, 5);
    s
}

fn fault_free_rows() -> Vec<serde_json::Value> {
    let s = scenario();
    assert_ok(&s.run());
    let rows = s.output_rows();
    assert_eq!(rows.len(), 30);
    rows
}

/// Runs with `WEIR_CRASH_AT=point@batch` and checks it died by SIGKILL.
pub(crate) fn run_until_killed(s: &Scenario, point: &str, batch: u64) {
    let out = s
        .command("run")
        .env("WEIR_CRASH_AT", format!("{point}@{batch}"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "expected SIGKILL at {point}@{batch}, got {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kill_at_every_crash_point_then_restart_gives_identical_output() {
    let expected = fault_free_rows();
    let mut kills = 0;
    for point in CRASH_POINTS {
        for batch in [0, 2] {
            let s = scenario();
            run_until_killed(&s, point, batch);
            kills += 1;
            let err = assert_ok(&s.run());
            assert_eq!(
                s.output_rows(),
                expected,
                "after a kill at {point}@{batch}:\n{err}"
            );
            assert_eq!(
                s.committed_batches(),
                vec![0, 1, 2],
                "after a kill at {point}@{batch}"
            );
        }
    }
    assert!(kills >= 18);
}

#[test]
fn kill_during_the_replay_of_a_killed_batch() {
    let expected = fault_free_rows();
    // Die mid-batch 1, die again while replaying it, then finish.
    for (first, second) in [
        ("after-read", "sink-after-data"),
        ("sink-after-data", "sink-after-log"),
        ("after-offsets", "before-commit"),
    ] {
        let s = scenario();
        run_until_killed(&s, first, 1);
        run_until_killed(&s, second, 1);
        let err = assert_ok(&s.run());
        assert!(err.contains("batch 1 (replay)"), "{err}");
        assert_eq!(
            s.output_rows(),
            expected,
            "after kills at {first}@1 and {second}@1"
        );
    }
}

#[test]
fn kill_at_random_moments_from_outside() {
    let expected = fault_free_rows();
    let s = scenario();
    // A fixed-seed LCG: random-looking but reproducible kill delays.
    let mut seed: u64 = 0x5eed;
    let mut next_delay = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        Duration::from_millis(100 + (seed >> 33) % 900)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut kills = 0;
    loop {
        assert!(Instant::now() < deadline, "no clean run within 2 minutes");
        let mut child = s.command("run").stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(next_delay());
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        if kills >= 5 {
            assert_ok(&s.run());
            break;
        }
    }
    assert_eq!(s.output_rows(), expected);
}
