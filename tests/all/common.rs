//! Shared helpers: a scratch directory with a pipeline, input files and a
//! `weir` command, and readers for what the sinks wrote.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The `weir` binary under test.
pub fn weir() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.env("WEIR_PLUGIN_DIR", weir_fixtures::PLUGIN_DIR)
        .env("WEIR_COMPILE_CACHE", compile_cache_dir())
        .env_remove("WEIR_CRASH_AT");
    cmd
}

/// The compiled-plugin cache the tests share (under the target directory,
/// not the user's home).
pub fn compile_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("compiled-plugins")
}

/// `weir run pipeline` to the end.
pub fn run(pipeline: &Path) -> Output {
    weir().arg("run").arg(pipeline).output().unwrap()
}

/// `weir run` on the `pipeline.toml` in `dir` (an example's copy).
pub fn run_dir(dir: &Path) -> Output {
    run(&dir.join("pipeline.toml"))
}

/// A copy of `examples/<name>` on each state backend, killed (`kill -9`)
/// at every crash point of each of `batches` and run again, leaves what a
/// straight run leaves: `output` reads it from the copy's directory.
pub fn assert_kills_anywhere_change_nothing<T: PartialEq + std::fmt::Debug>(
    name: &str,
    batches: &[u64],
    output: impl Fn(&Path) -> T,
) {
    assert_kills_anywhere_change_nothing_edited(name, |_| {}, batches, output)
}

/// [`assert_kills_anywhere_change_nothing`] on copies whose pipeline file
/// `edit` changes first.
pub fn assert_kills_anywhere_change_nothing_edited<T: PartialEq + std::fmt::Debug>(
    name: &str,
    edit: impl Fn(&Path),
    batches: &[u64],
    output: impl Fn(&Path) -> T,
) {
    for store in ["rocksdb", "memory"] {
        let straight = example_on(name, store);
        edit(&straight.path().join("pipeline.toml"));
        assert_ok(&run_dir(straight.path()));
        let expected = output(straight.path());
        for point in weir::faults::CRASH_POINTS {
            for batch in batches {
                let dir = example_on(name, store);
                edit(&dir.path().join("pipeline.toml"));
                run_killed_at(
                    &dir.path().join("pipeline.toml"),
                    &format!("{point}@{batch}"),
                );
                let err = assert_ok(&run_dir(dir.path()));
                assert_eq!(
                    output(dir.path()),
                    expected,
                    "{name} on {store}, kill at {point}@{batch}:\n{err}"
                );
            }
        }
    }
}

/// The head of a test pipeline named `name` reading JSON files from `in/`
/// in name order, one per batch, with checkpoint `ck/` and `trigger` (the
/// `[trigger]` table's body); the schema and the rest follow.
pub fn json_files_head(name: &str, trigger: &str) -> String {
    format!(
        r#"name = "{name}"
checkpoint = "ck"

[trigger]
{trigger}

[source]
kind = "file"
path = "in"
format = "json"
order = "name"
max_files_per_trigger = 1
"#
    )
}

/// Stderr of a finished command, for assertions and failure messages.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the command succeeded and returns its stderr.
pub fn assert_ok(output: &Output) -> String {
    let err = stderr(output);
    assert!(
        output.status.success(),
        "weir failed ({}):\n{err}",
        output.status
    );
    err
}

/// Asserts the command failed with exit code `code` and returns its stderr.
pub fn assert_exit(output: &Output, code: i32) -> String {
    let err = stderr(output);
    assert_eq!(
        output.status.code(),
        Some(code),
        "unexpected exit ({}):\n{err}",
        output.status
    );
    err
}

/// Spawns `cmd` so that it lives exactly as long as the test process: it
/// gets SIGKILL when its parent dies (`PR_SET_PDEATHSIG`, set after any
/// earlier `pre_exec` step such as a change of user, which would clear it).
/// The death signal fires when the spawning *thread* ends, so the spawn
/// happens on a thread that never does.
/// Returns the process id.
pub fn spawn_for_test_lifetime(mut cmd: Command) -> Result<u32, String> {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let spawned = cmd
            .spawn()
            .map(|child| child.id())
            .map_err(|e| e.to_string());
        tx.send(spawned).unwrap();
        loop {
            std::thread::park();
        }
    });
    rx.recv().unwrap()
}

/// One plain HTTP/1.1 request to 127.0.0.1:`port` (`request_line` such as
/// `GET /metrics HTTP/1.1`); returns the whole response.
pub fn http(port: u16, request_line: &str) -> std::io::Result<String> {
    http_with(port, request_line, &[])
}

/// [`http`] with more header lines (`"Authorization: Bearer ..."`).
pub fn http_with(port: u16, request_line: &str, headers: &[&str]) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        stream,
        "{request_line}\r\nHost: 127.0.0.1:{port}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// `GET /metrics` from 127.0.0.1:`port`, parsed by a Prometheus text
/// parser (not ours), or why not.
pub fn scrape_metrics(port: u16) -> Result<prometheus_parse::Scrape, String> {
    scrape_metrics_with(port, &[])
}

/// [`scrape_metrics`] with more header lines (a `weir serve` bearer token).
pub fn scrape_metrics_with(
    port: u16,
    headers: &[&str],
) -> Result<prometheus_parse::Scrape, String> {
    let response = http_with(port, "GET /metrics HTTP/1.1", headers).map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {response}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("status: {head}"));
    }
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .map_err(|e| format!("unparsable metrics ({e}):\n{body}"))
}

/// The value of sample `metric` with exactly `labels` in `scrape`.
pub fn metric_value(
    scrape: &prometheus_parse::Scrape,
    metric: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == metric
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .and_then(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(*v),
            prometheus_parse::Value::Histogram(buckets) => buckets
                .iter()
                .map(|b| b.count)
                .fold(None, |m, c| Some(c.max(m.unwrap_or(0.0)))),
            prometheus_parse::Value::Summary(_) => None,
        })
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `weir run pipeline` with `WEIR_CRASH_AT=<at>` (`point@batch`) and
/// asserts it was killed there (SIGKILL, as `kill -9`).
pub fn run_killed_at(pipeline: &Path, at: &str) {
    let out = weir()
        .arg("run")
        .arg(pipeline)
        .env("WEIR_CRASH_AT", at)
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(9),
        "expected a kill at {at}:\n{}",
        stderr(&out)
    );
}

/// For each `(from, to, message)`: `pipeline` as `original` with `from`
/// replaced by `to` is refused by `weir validate` (exit 2) with `message`.
pub fn assert_refusals(pipeline: &Path, original: &str, cases: &[(&str, &str, &str)]) {
    for (from, to, message) in cases {
        assert!(original.contains(from), "{from:?} is not in the pipeline");
        fs::write(pipeline, original.replace(from, to)).unwrap();
        let out = weir().arg("validate").arg(pipeline).output().unwrap();
        let err = assert_exit(&out, 2);
        assert!(err.contains(message), "{from:?} -> {to:?}:\n{err}");
    }
}

/// A pipeline in a scratch directory: `in/` input, `ck/` checkpoint, `out/` output.
pub struct Scenario {
    dir: tempfile::TempDir,
    /// Pipeline options.
    pub spec: Spec,
}

/// The parts of the test pipeline that tests vary.
#[derive(Clone)]
pub struct Spec {
    pub trigger: &'static str,
    pub format: &'static str,
    pub max_files: Option<usize>,
    pub source_extra: String,
    pub transforms: Vec<String>,
    pub sink: &'static str,
    /// Top-level tables after `[sink]` (`[retention]`, ...).
    pub tables: String,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            trigger: "available_now = true",
            format: "json",
            max_files: Some(2),
            source_extra: String::new(),
            transforms: vec![enrich_stage()],
            sink: "json",
            tables: String::new(),
        }
    }
}

/// The orders schema (`id`, `name`, `amount`) and a stage doubling the
/// amount into `amount_x2`, as pipeline TOML: the middle of the S3 and
/// Kafka tests' pipelines.
pub const ORDERS_SCHEMA_AND_DOUBLE: &str = r#"schema = [
  { name = "id", type = "long", nullable = false },
  { name = "name", type = "string" },
  { name = "amount", type = "double" },
]

[[transform]]
name = "double"
plugin = "${WEIR_PLUGIN_DIR}/weir_plugin_enrich.wasm"
config = { input = "amount", output = "amount_x2", multiply = 2.0 }
"#;

/// The `enrich` plugin adding `amount_x2 = amount * 2 + 1`.
pub fn enrich_stage() -> String {
    r#"
[[transform]]
name = "double"
plugin = "${WEIR_PLUGIN_DIR}/weir_plugin_enrich.wasm"
config = { input = "amount", output = "amount_x2", multiply = 2.0, add = 1.0 }
"#
    .to_string()
}

/// The `testkit` plugin with `config` (a TOML inline table body).
pub fn testkit_stage(config: &str) -> String {
    format!(
        r#"
[[transform]]
name = "kit"
plugin = "${{WEIR_PLUGIN_DIR}}/weir_plugin_testkit.wasm"
config = {{ {config} }}
"#
    )
}

impl Scenario {
    pub fn new(spec: Spec) -> Scenario {
        let scenario = Scenario {
            dir: tempfile::tempdir().unwrap(),
            spec,
        };
        fs::create_dir_all(scenario.path("in")).unwrap();
        scenario.write_pipeline();
        scenario
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn pipeline_path(&self) -> PathBuf {
        self.path("pipeline.toml")
    }

    /// Rewrites `pipeline.toml` from `self.spec`.
    pub fn write_pipeline(&self) {
        let s = &self.spec;
        let max_files = s
            .max_files
            .map(|n| format!("max_files_per_trigger = {n}"))
            .unwrap_or_default();
        let sink_path = if s.sink == "console" || s.sink == "foreach_batch" {
            String::new()
        } else {
            "path = \"out\"".into()
        };
        let text = format!(
            r#"name = "test-query"
checkpoint = "ck"

[trigger]
{trigger}

[source]
kind = "file"
path = "in"
format = "{format}"
{max_files}
schema = [
  {{ name = "id", type = "long", nullable = false }},
  {{ name = "name", type = "string" }},
  {{ name = "amount", type = "double" }},
]
{extra}
{transforms}
[sink]
kind = "{sink}"
{sink_path}
{tables}
"#,
            trigger = s.trigger,
            format = s.format,
            extra = s.source_extra,
            transforms = s.transforms.join("\n"),
            sink = s.sink,
            tables = s.tables,
        );
        fs::write(self.pipeline_path(), text).unwrap();
    }

    /// Writes input file `in/<name>`.
    pub fn input(&self, name: &str, content: &str) {
        fs::write(self.path("in").join(name), content).unwrap();
    }

    /// Writes `files` JSON files of `rows` rows each, ids counting from 1.
    pub fn json_inputs(&self, files: usize, rows: usize) {
        for f in 0..files {
            let body: String = (0..rows)
                .map(|r| {
                    let id = f * rows + r + 1;
                    format!(
                        "{{\"id\": {id}, \"name\": \"n{id}\", \"amount\": {}.5}}\n",
                        id * 3
                    )
                })
                .collect();
            self.input(&format!("part-{f:03}.json"), &body);
        }
    }

    /// `weir run` on the pipeline.
    pub fn run(&self) -> Output {
        self.command("run").output().unwrap()
    }

    /// `weir <sub> pipeline.toml` ready to spawn.
    pub fn command(&self, sub: &str) -> Command {
        let mut cmd = weir();
        cmd.arg(sub).arg(self.pipeline_path());
        cmd
    }

    /// Rows the JSON sink committed, in commit order.
    pub fn output_rows(&self) -> Vec<Value> {
        committed_json_rows(&self.path("out"))
    }

    /// Ids of the committed rows, in commit order.
    pub fn output_ids(&self) -> Vec<i64> {
        self.output_rows()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect()
    }

    /// Batch ids with a `commits/N` entry.
    pub fn committed_batches(&self) -> Vec<u64> {
        numbered_entries(&self.path("ck/commits"))
    }
}

/// Names of files in `dir` that are batch numbers, sorted.
pub fn numbered_entries(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// The files a file sink committed, read from its log as an outside
/// reader does (the newest `N.compact` entry, then the batch entries after
/// it), and the next batch id.
pub fn committed_sink_files(out: &Path) -> (Vec<String>, u64) {
    // A running query may delete entries between the listing and a read
    // (once a compact entry covers them): then read the log again.
    for _ in 0..10 {
        if let Some(read) = try_committed_sink_files(out) {
            return read;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!(
        "the sink log at {} kept changing under the reader",
        out.display()
    )
}

/// The batch id of the newest `N.compact` entry in a sink's log `dir`.
fn newest_compact(dir: &Path) -> Option<u64> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".compact")?
                .parse::<u64>()
                .ok()
        })
        .max()
}

fn try_committed_sink_files(out: &Path) -> Option<(Vec<String>, u64)> {
    let log = out.join("_weir_log");
    let compact = newest_compact(&log);
    let read = |name: String| -> Option<Value> {
        Some(serde_json::from_slice(&fs::read(log.join(name)).ok()?).unwrap())
    };
    let names = |entry: &Value| -> Vec<String> {
        entry["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect()
    };
    let mut files = Vec::new();
    if let Some(c) = compact {
        files.extend(names(&read(format!("{c}.compact"))?));
    }

    let batches: Vec<u64> = numbered_entries(&log)
        .into_iter()
        .filter(|b| compact.is_none_or(|c| *b > c))
        .collect();
    for &batch in &batches {
        files.extend(names(&read(batch.to_string())?));
    }
    let last = batches.last().copied().or(compact);
    Some((files, last.map_or(0, |l| l + 1)))
}

/// Files the newest compact entry of the sink at `out` replaced with
/// merged ones (`target_file_size`): still on disk for an interval.
pub fn superseded(out: &Path) -> Vec<String> {
    let log = out.join("_weir_log");
    let Some(c) = newest_compact(&log) else {
        return Vec::new();
    };
    let Ok(bytes) = fs::read(log.join(format!("{c}.compact"))) else {
        return Vec::new();
    };
    let entry: Value = serde_json::from_slice(&bytes).unwrap();
    entry["superseded"]
        .as_array()
        .map(|files| {
            files
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The rows a JSON file sink committed: the files `_weir_log` lists, in
/// batch order. Also checks the directory holds no data file outside the
/// log but the next batch's, in flight (written, its log entry not yet).
pub fn committed_json_rows(out: &Path) -> Vec<Value> {
    let (mut listed, next_batch) = committed_sink_files(out);
    let mut rows = Vec::new();
    for name in &listed {
        let text = fs::read_to_string(out.join(name)).unwrap();
        rows.extend(
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        );
    }
    let mut present: Vec<String> = fs::read_dir(out)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("part-"))
                .collect()
        })
        .unwrap_or_default();
    let in_flight = |name: &String| {
        name.strip_prefix("part-")
            .and_then(|rest| rest.split('.').next())
            .and_then(|n| n.parse::<u64>().ok())
            == Some(next_batch)
    };
    // Files a compaction merged stay for readers of the previous entry.
    let replaced = superseded(out);
    present.retain(|name| (!in_flight(name) || listed.contains(name)) && !replaced.contains(name));
    present.sort();
    listed.sort();
    assert_eq!(
        present,
        listed,
        "data files outside the sink log in {}",
        out.display()
    );
    rows
}

/// Rows of each batch a JSON file sink committed, by batch id, in the
/// order they were written.
pub fn committed_json_batches(out: &Path) -> std::collections::BTreeMap<u64, Vec<Value>> {
    numbered_entries(&out.join("_weir_log"))
        .into_iter()
        .map(|batch| {
            let entry: Value = serde_json::from_slice(
                &fs::read(out.join("_weir_log").join(batch.to_string())).unwrap(),
            )
            .unwrap();
            let rows = entry["files"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|f| {
                    fs::read_to_string(out.join(f.as_str().unwrap()))
                        .unwrap()
                        .lines()
                        .map(|l| serde_json::from_str::<Value>(l).unwrap())
                        .collect::<Vec<_>>()
                })
                .collect();
            (batch, rows)
        })
        .collect()
}

/// How often each `id` reached a JSON file sink at `out` so far (rows of
/// the batches its log lists; safe while the query is still writing).
pub fn delivered_ids(out: &Path) -> std::collections::BTreeMap<i64, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for row in committed_json_batches(out).values().flatten() {
        *seen.entry(row["id"].as_i64().unwrap()).or_insert(0) += 1;
    }
    seen
}

/// Stops a running `weir run` with SIGTERM (it finishes its batch or epoch)
/// and asserts a clean exit.
pub fn stop_gracefully(mut child: std::process::Child) {
    // SAFETY: a plain kill(2) on our child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// A seeded LCG: `random(n)` is in `0..n`, the same sequence every run.
pub fn seeded(seed: u64) -> impl FnMut(i64) -> i64 {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    move |n: i64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as i64).rem_euclid(n)
    }
}

/// Copies a directory tree in name order (so modification times follow
/// names, as in a fresh clone), leaving out run state (`.weir`).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    let mut entries: Vec<_> = fs::read_dir(from).unwrap().map(Result::unwrap).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name == ".weir" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(&name));
        } else {
            fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// A copy of `examples/<name>` in a scratch directory.
pub fn example(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name),
        dir.path(),
    );
    dir
}

/// A copy of `examples/<name>` whose pipeline keeps its state in `store`.
pub fn example_on(name: &str, store: &str) -> tempfile::TempDir {
    let dir = example(name);
    let pipeline = dir.path().join("pipeline.toml");
    let text = fs::read_to_string(&pipeline).unwrap();
    let text = match text.find("state_store = ") {
        Some(at) => {
            let end = at + text[at..].find('\n').unwrap();
            format!("{}state_store = \"{store}\"{}", &text[..at], &text[end..])
        }
        None => text.replacen(
            "\n[trigger]",
            &format!("\nstate_store = \"{store}\"\n\n[trigger]"),
            1,
        ),
    };
    fs::write(&pipeline, text).unwrap();
    dir
}

/// Rewrites `file` replacing `from` (which must occur) with `to`.
pub fn edit(file: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(file).unwrap();
    assert!(
        text.contains(from),
        "{} does not contain {from:?}",
        file.display()
    );
    fs::write(file, text.replace(from, to)).unwrap();
}

/// Console sink output (`format = "json"`) split by batch: (batch id, rows).
pub fn console_batches(stdout: &str) -> Vec<(u64, Vec<Value>)> {
    let mut batches: Vec<(u64, Vec<Value>)> = Vec::new();
    for line in stdout.lines() {
        if let Some(id) = line.strip_prefix("Batch: ") {
            batches.push((id.trim().parse().unwrap(), Vec::new()));
        } else if line.starts_with('{') {
            batches
                .last_mut()
                .expect("rows after a header")
                .1
                .push(serde_json::from_str(line).unwrap());
        }
    }
    batches
}
