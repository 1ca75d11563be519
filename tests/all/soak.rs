//! Months, compressed: one query through 20,000 micro-batches of one small
//! file each (back-to-back trigger), killed with SIGKILL twice. The
//! checkpoint's files and bytes stay bounded, restart time after 20,000
//! batches stays within 1.5x of restart time after 200 (the two measured
//! in turn, side by side, at the end), the process's RSS stays
//! bounded (mean of the last quarter within 1.5x of the second's),
//! processed input files are deleted (`clean_source`) across the kills,
//! and the output holds every row exactly once.
//!
//! `WEIR_SOAK_BATCHES` lowers the batch count for a quick local look; the
//! suite runs the full 20,000.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::{assert_ok, committed_json_rows, copy_dir, weir};

const BATCHES: u64 = 20_000;
/// Restart is measured after this many batches, and again at the end.
const EARLY: u64 = 200;
/// `min_batches_to_retain` (Spark's default) and `compact_interval`.
const RETAINED: u64 = 100;
const INTERVAL: u64 = 10;
/// What the checkpoint may hold: `offsets/`, `commits/` and `sources/0/`
/// keep at most `RETAINED + INTERVAL` entries each, plus two compact
/// entries, `metadata`, `key_groups` and the lock file.
const MAX_FILES: u64 = 3 * (RETAINED + INTERVAL) + 5;

fn pipeline(trigger: &str) -> String {
    format!(
        r#"name = "soak"
checkpoint = "ck"
{trigger}
[source]
kind = "file"
path = "in"
format = "json"
max_files_per_trigger = 1
clean_source = "delete"
max_file_age = "2s"
schema = [ {{ name = "id", type = "long", nullable = false }} ]

[sink]
kind = "json"
path = "out"

[retention]
min_batches_to_retain = {RETAINED}
compact_interval = {INTERVAL}
"#
    )
}

struct Soak {
    dir: tempfile::TempDir,
    /// Files written so far (ids 1..=written).
    written: u64,
}

impl Soak {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The back-to-back query, its log in `run.log`.
    fn start(&self) -> Child {
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(self.path("run.log"))
            .unwrap();
        weir()
            .arg("run")
            .arg(self.path("stream.toml"))
            // mimalloc (weir's allocator) keeps freed pages a while
            // before it returns them; returned at once, RSS measures what
            // the query holds.
            .env("MIMALLOC_PURGE_DELAY", "0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// The highest committed batch id, if any.
    fn last_commit(&self) -> Option<u64> {
        fs::read_dir(self.path("ck/commits"))
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
    }

    /// Feeds files until `until` are written and committed, calling
    /// `sample` at every `every`-th batch committed.
    fn feed(
        &mut self,
        child: &mut Child,
        until: u64,
        every: u64,
        mut sample: impl FnMut(u64, &Child, &Soak),
    ) {
        let input = self.path("in");
        let mut next_sample = self.last_commit().map_or(0, |c| c + 1).div_ceil(every) * every;
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            assert!(Instant::now() < deadline, "the soak stalled");
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the query exited ({status}):\n{}",
                    tail(&self.path("run.log"))
                );
            }
            let committed = self.last_commit().map_or(0, |c| c + 1);
            while committed >= next_sample && next_sample > 0 {
                sample(next_sample, child, self);
                next_sample += every;
            }
            if committed >= until {
                return;
            }
            // Three files ahead of the commits at most (a batch reads one),
            // written under a hidden name and renamed, so the source never
            // sees one half-written.
            if self.written < until && self.written < committed + 3 {
                self.written += 1;
                let id = self.written;
                let hidden = input.join(format!(".f{id:06}.json"));
                fs::write(&hidden, format!("{{\"id\": {id}}}\n")).unwrap();
                fs::rename(&hidden, input.join(format!("f{id:06}.json"))).unwrap();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    /// Files and bytes under `ck/`.
    fn checkpoint_usage(&self) -> (u64, u64) {
        fn walk(dir: &Path, usage: &mut (u64, u64)) {
            for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                let meta = entry.metadata().unwrap();
                if meta.is_dir() {
                    walk(&entry.path(), usage);
                } else {
                    usage.0 += 1;
                    usage.1 += meta.len();
                }
            }
        }
        let mut usage = (0, 0);
        walk(&self.path("ck"), &mut usage);
        usage
    }
}

/// A directory in memory (`/dev/shm`) when the machine has one: the soak
/// measures growth, not the disk, and fsync on a small VM disk costs
/// ~10 ms a file (60 ms a batch; `cargo bench --bench retention` measures
/// the per-batch cost on disk).
fn memory_backed_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    match shm.is_dir() {
        true => tempfile::tempdir_in(shm).unwrap_or_else(|_| tempfile::tempdir().unwrap()),
        false => tempfile::tempdir().unwrap(),
    }
}

fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn rss_kib(child: &Child) -> u64 {
    let status = fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// One restart of the query in `dir` with nothing new to read (the
/// draining trigger: restore, find no input, stop).
fn restart_once(dir: &Path) -> Duration {
    let started = Instant::now();
    let out = weir()
        .arg("run")
        .arg(dir.join("restart.toml"))
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_ok(&out);
    took
}

/// The fastest of seven restarts of each query, taken in turn (early,
/// late, early, …) so that whatever else loads the machine meanwhile —
/// the suite runs in parallel — weighs on both alike.
fn restart_times(early: &Path, late: &Path) -> (Duration, Duration) {
    let mut best = (Duration::MAX, Duration::MAX);
    for _ in 0..7 {
        best.0 = best.0.min(restart_once(early));
        best.1 = best.1.min(restart_once(late));
    }
    best
}

fn kill(mut child: Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[test]
fn twenty_thousand_batches_keep_the_checkpoint_bounded_restart_flat_and_output_exact() {
    let batches: u64 = std::env::var("WEIR_SOAK_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BATCHES)
        .max(EARLY * 5);
    let mut soak = Soak {
        dir: memory_backed_dir(),
        written: 0,
    };
    fs::create_dir_all(soak.path("in")).unwrap();
    fs::write(soak.path("stream.toml"), pipeline("")).unwrap();
    fs::write(
        soak.path("restart.toml"),
        pipeline("[trigger]\navailable_now = true\n"),
    )
    .unwrap();
    let started = Instant::now();

    // 200 batches, then a kill -9 and the restart time at that age.
    let mut child = soak.start();
    soak.feed(&mut child, EARLY, EARLY, |_, _, _| {});
    kill(child);
    let usage_early = soak.checkpoint_usage();
    // The query at this age, kept to restart beside the old one at the end.
    let early = memory_backed_dir();
    copy_dir(soak.dir.path(), early.path());

    // On to 20,000: the checkpoint's size and the RSS sampled 20 times.
    let mut child = soak.start();
    let every = batches / 20;
    let mut samples: Vec<(u64, u64, (u64, u64))> = Vec::new();
    soak.feed(&mut child, batches, every, |batch, child, soak| {
        samples.push((batch, rss_kib(child), soak.checkpoint_usage()));
    });
    kill(child);
    let (restart_early, restart_late) = restart_times(early.path(), soak.dir.path());
    let usage_late = soak.checkpoint_usage();
    let took = started.elapsed();

    let rows = committed_json_rows(&soak.path("out"));
    let ids: Vec<u64> = rows.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (1..=batches).collect();
    let max_files = samples
        .iter()
        .map(|s| s.2.0)
        .max()
        .unwrap()
        .max(usage_late.0);
    let max_bytes = samples
        .iter()
        .map(|s| s.2.1)
        .max()
        .unwrap()
        .max(usage_late.1);
    // RSS, sampled every 5 %, settles over the first quarter (code paged
    // in, the allocator's and the blocking pool's threads filling) and
    // then moves ±10 % from sample to sample as those threads come and go.
    // On 2-core VMs with the rest of the suite running beside it, it has
    // also crept up by as much as 37 % between the second quarter and the
    // last, in code that earlier ran flat (its cause is not found yet; see
    // the issue notes). Bounded means: the last quarter's mean within 1.5x
    // of the second's, which a leak of 8 KB a batch or more still breaks.
    let mean = |from: u64, to: u64| {
        let window: Vec<u64> = samples
            .iter()
            .filter(|s| s.0 > from && s.0 <= to)
            .map(|s| s.1)
            .collect();
        window.iter().sum::<u64>() / window.len() as u64
    };
    let baseline = mean(batches / 4, batches / 2);
    let late_rss = mean(batches * 3 / 4, batches);
    let ratio = restart_late.as_secs_f64() / restart_early.as_secs_f64();
    eprintln!(
        "soak: {batches} batches in {:.0} s ({:.2} ms/batch); checkpoint after {EARLY}: {} files, \
         {} bytes; at most {max_files} files, {max_bytes} bytes (bound {MAX_FILES} files); \
         restart after {EARLY}: {:.0} ms, after {batches}: {:.0} ms ({ratio:.2}x); \
         RSS mean over batches {}..{}: {baseline} KiB, over the last quarter: {late_rss} KiB \
         ({:+.1} %)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e3 / batches as f64,
        usage_early.0,
        usage_early.1,
        restart_early.as_secs_f64() * 1e3,
        restart_late.as_secs_f64() * 1e3,
        batches / 4,
        batches / 2,
        (late_rss as f64 / baseline as f64 - 1.0) * 100.0,
    );
    eprintln!("soak samples (batch, RSS KiB, (checkpoint files, bytes)): {samples:?}");
    let left: Vec<_> = fs::read_dir(soak.path("in")).unwrap().collect();
    assert!(left.is_empty(), "input files left behind: {left:?}");
    assert!(
        ids == expected,
        "output is not ids 1..={batches} exactly once ({} rows)",
        ids.len()
    );
    assert!(
        max_files <= MAX_FILES,
        "checkpoint grew to {max_files} files"
    );
    // Entries grow by a digit or two of batch id; never with the age.
    assert!(
        max_bytes <= usage_early.1 * 2,
        "checkpoint bytes grew from {} to {max_bytes}",
        usage_early.1
    );
    assert!(
        ratio <= 1.5,
        "restart slowed {ratio:.2}x with the query's age"
    );
    assert!(
        late_rss as f64 <= baseline as f64 * 1.5,
        "RSS grew from {baseline} KiB to {late_rss} KiB: {samples:?}"
    );
}
