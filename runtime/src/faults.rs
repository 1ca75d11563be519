//! Crash points for exactly-once testing.
//!
//! With `WEIR_CRASH_AT=<point>@<batch>` in the environment, the process
//! kills itself with SIGKILL (as `kill -9` would) when batch `<batch>`
//! reaches `<point>`. Tests use it to crash at exact places; without the
//! variable each check is one comparison against a cached `None`.

use std::sync::OnceLock;

/// Every crash point, in the order a batch passes them.
pub const CRASH_POINTS: &[&str] = &[
    "before-offsets",
    "after-source-log",
    "after-offsets",
    "after-read",
    "after-transform",
    "sink-after-data",
    "sink-after-log",
    "before-commit",
    "after-commit",
];

/// The Kafka sink's own crash points with `exactly_once`, in order; they
/// fall between `after-transform` and `before-commit` (the file sink's
/// `sink-after-*` points are not passed).
pub const KAFKA_SINK_CRASH_POINTS: &[&str] = &[
    "kafka-after-begin",
    "kafka-after-produce",
    "kafka-after-marker",
    "kafka-before-commit",
    "kafka-after-commit",
];

/// Dies here if `WEIR_CRASH_AT` names this point and batch.
pub fn crash_point(point: &str, batch: u64) {
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    let target = TARGET.get_or_init(|| {
        let spec = std::env::var("WEIR_CRASH_AT").ok()?;
        let (name, batch) = spec.split_once('@')?;
        Some((name.to_string(), batch.parse().ok()?))
    });
    if let Some((name, at)) = target
        && name == point
        && *at == batch
    {
        eprintln!("weir: WEIR_CRASH_AT={point}@{batch} reached: killing this process");
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
