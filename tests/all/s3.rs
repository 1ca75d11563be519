//! Pipelines on S3: source, sink, checkpoint and state snapshots on a real
//! S3-compatible server (moto, from PyPI, installed by `./dev test`) on
//! 127.0.0.1, exactly once across kills, with conditional create keeping
//! two writers from committing the same batch.

use std::path::Path;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::Value;
use weir::faults::CRASH_POINTS;
use weir::storage::{Location, S3Options};

use crate::common::{assert_ok, example, run, run_killed_at, spawn_for_test_lifetime};

pub(crate) struct Moto {
    pub(crate) endpoint: String,
}

/// `moto_server`: from the test virtualenv `./dev test` makes, or PATH.
fn moto_binary() -> std::path::PathBuf {
    if let Some(venv) = std::env::var_os("WEIR_TEST_VENV") {
        let bin = Path::new(&venv).join("bin/moto_server");
        if bin.is_file() {
            return bin;
        }
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("moto_server"))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| {
            panic!(
                "moto_server (an S3-compatible test server) not found: run `./dev test`, which \
                 installs PyPI's moto[server] into a virtualenv and sets WEIR_TEST_VENV"
            )
        })
}

pub(crate) fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let port = crate::common::free_port();
        let mut cmd = std::process::Command::new(moto_binary());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        spawn_for_test_lifetime(cmd).unwrap_or_else(|e| panic!("cannot start moto_server: {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while http(port, "GET / HTTP/1.1").is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    })
}

/// The status line of one plain HTTP request.
fn http(port: u16, request_line: &str) -> std::io::Result<String> {
    let response = crate::common::http(port, request_line)?;
    Ok(response.lines().next().unwrap_or_default().to_string())
}

/// A new, empty bucket.
pub(crate) fn bucket(hint: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("weir-{hint}-{}", NEXT.fetch_add(1, Ordering::SeqCst));
    let port: u16 = moto().endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let status = http(port, &format!("PUT /{name} HTTP/1.1")).unwrap();
    assert!(status.contains("200"), "creating bucket {name}: {status}");
    name
}

fn options() -> S3Options {
    S3Options {
        endpoint: Some(moto().endpoint.clone()),
        region: Some("us-east-1".into()),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        allow_http: Some(true),
    }
}

/// The `[s3]` table pointing a pipeline at the test server.
pub(crate) fn s3_table() -> String {
    format!(
        "[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"test\"\n\
         secret_access_key = \"test\"\nallow_http = true\n",
        moto().endpoint
    )
}

pub(crate) fn store(url: &str) -> Arc<dyn ObjectStore> {
    Location::parse_with(url, Path::new("/"), Some(&options()))
        .unwrap()
        .open()
        .unwrap()
}

pub(crate) fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// Object names under `url`, sorted.
pub(crate) fn list(url: &str) -> Vec<String> {
    let store = store(url);
    let mut names: Vec<String> = block_on(store.list(None).try_collect::<Vec<_>>())
        .unwrap()
        .into_iter()
        .map(|meta| meta.location.to_string())
        .collect();
    names.sort();
    names
}

pub(crate) fn read(url: &str, name: &str) -> Vec<u8> {
    let store = store(url);
    block_on(async {
        store
            .get(&ObjectPath::from(name))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    })
}

/// Rows the file sink at `url` committed: the files its `_weir_log` lists
/// (the newest compact entry's and the batch entries' after it).
pub(crate) fn committed_rows(url: &str) -> Vec<Value> {
    let location = Location::parse_with(url, Path::new("/"), Some(&options())).unwrap();
    let files = block_on(weir::sink::committed_files(&location)).unwrap();
    let mut rows = Vec::new();
    for name in files {
        let bytes = read(url, &name);
        if name.ends_with(".parquet") {
            rows.extend(parquet_rows(bytes));
            continue;
        }
        let text = String::from_utf8(bytes).unwrap();
        rows.extend(
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        );
    }
    rows
}

/// A Parquet file's rows as JSON objects.
fn parquet_rows(bytes: Vec<u8>) -> Vec<Value> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::from(bytes),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
    for batch in reader {
        writer.write(&batch.unwrap()).unwrap();
    }
    writer.finish().unwrap();
    String::from_utf8(writer.into_inner())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A pipeline with source, sink and checkpoint in a new bucket, over six
/// input files of two rows each; returns the pipeline file's directory and
/// the bucket.
fn s3_pipeline() -> (tempfile::TempDir, String) {
    let b = bucket("pipe");
    let input = store(&format!("s3://{b}/in"));
    block_on(async {
        for f in 0..6 {
            let body: String = (0..2)
                .map(|r| {
                    let id = f * 2 + r + 1;
                    format!("{{\"id\": {id}, \"name\": \"n{id}\", \"amount\": {id}.5}}\n")
                })
                .collect();
            input
                .put(
                    &ObjectPath::from(format!("part-{f:03}.json")),
                    PutPayload::from(body),
                )
                .await
                .unwrap();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let pipeline = format!(
        r#"name = "on-s3"
checkpoint = "s3://{b}/ck"

{s3}
[trigger]
available_now = true

[source]
kind = "file"
path = "s3://{b}/in"
format = "json"
order = "name"
max_files_per_trigger = 2
{middle}
[sink]
kind = "json"
path = "s3://{b}/out"
"#,
        s3 = s3_table(),
        middle = crate::common::ORDERS_SCHEMA_AND_DOUBLE
    );
    std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
    (dir, b)
}

fn ids(rows: &[Value]) -> Vec<i64> {
    rows.iter().map(|r| r["id"].as_i64().unwrap()).collect()
}

#[test]
fn a_pipeline_on_s3_runs_exactly_once_across_kills() {
    for point in CRASH_POINTS {
        let (dir, b) = s3_pipeline();
        let pipeline = dir.path().join("pipeline.toml");
        run_killed_at(&pipeline, &format!("{point}@1"));
        let err = assert_ok(&run(&pipeline));
        let rows = committed_rows(&format!("s3://{b}/out"));
        assert_eq!(
            ids(&rows),
            (1..=12).collect::<Vec<_>>(),
            "kill at {point}@1:\n{err}"
        );
        assert_eq!(rows[0]["amount_x2"], 3.0);
        let commits = list(&format!("s3://{b}/ck/commits"));
        assert_eq!(commits, vec!["0", "1", "2"], "{point}");
    }
}

#[test]
fn only_one_of_several_hosts_opening_an_s3_checkpoint_gets_it() {
    let b = bucket("race");
    let location =
        Location::parse_with(&format!("s3://{b}/ck"), Path::new("/"), Some(&options())).unwrap();
    let outcomes = block_on(async {
        let mut openers = Vec::new();
        for _ in 0..8 {
            // Each opener has its own handle, as separate hosts would.
            let location = location.clone();
            openers.push(tokio::spawn(async move {
                weir::checkpoint::Checkpoint::open(&location, "race")
                    .await
                    .map_err(|e| e.to_string())
            }));
        }
        let mut outcomes = Vec::new();
        for opener in openers {
            outcomes.push(opener.await.unwrap());
        }
        outcomes
    });
    let won = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(
        won,
        1,
        "{:?}",
        outcomes
            .iter()
            .map(|o| o.as_ref().err())
            .collect::<Vec<_>>()
    );
    let pid = std::process::id();
    for refusal in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert!(
            refusal.contains("is in use by another running query")
                && refusal.contains(&format!("held by process {pid} on host")),
            "{refusal}"
        );
    }

    // Underneath, a batch's log entries are create-if-absent: of writers
    // racing for commits/0 exactly one wins (the store must honour that).
    let store = store(&format!("s3://{b}/ck"));
    let created = block_on(async {
        let mut writers = Vec::new();
        for n in 0..8 {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                store
                    .put_opts(
                        &ObjectPath::from("commits/0"),
                        PutPayload::from(format!("{{\"writer\": {n}}}")),
                        object_store::PutOptions::from(object_store::PutMode::Create),
                    )
                    .await
                    .is_ok()
            }));
        }
        let mut created = 0;
        for writer in writers {
            created += usize::from(writer.await.unwrap());
        }
        created
    });
    assert_eq!(created, 1);
}

#[test]
fn a_second_host_on_a_running_s3_checkpoint_stops_with_a_clear_error() {
    let (dir, b) = s3_pipeline();
    let pipeline = dir.path().join("pipeline.toml");
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let running = text.replace("available_now = true", "processing_time = \"200ms\"");
    let first_file = dir.path().join("first.toml");
    std::fs::write(&first_file, &running).unwrap();
    let first = crate::common::weir()
        .arg("run")
        .arg(&first_file)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while list(&format!("s3://{b}/ck/commits")).len() < 3 {
        assert!(Instant::now() < deadline, "the first host never committed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The second host is refused at start and names the holder.
    let second = run(&pipeline);
    let err = crate::common::stderr(&second);
    assert!(!second.status.success(), "{err}");
    assert!(
        err.contains("is in use by another running query")
            && err.contains(&format!("held by process {} on host", first.id())),
        "{err}"
    );
    // The first keeps going: a new input file becomes batch 3.
    block_on(async {
        store(&format!("s3://{b}/in"))
            .put(
                &ObjectPath::from("part-100.json"),
                PutPayload::from("{\"id\": 13, \"name\": \"n13\", \"amount\": 13.5}\n"),
            )
            .await
            .unwrap();
    });
    while list(&format!("s3://{b}/ck/commits")).len() < 4 {
        assert!(Instant::now() < deadline, "the first host stopped");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Stopped gracefully, the first host releases the lease: the second starts at once.
    // SAFETY: kill(2) with a child's pid has no memory-safety preconditions.
    unsafe {
        libc::kill(first.id() as i32, libc::SIGTERM);
    }
    let first_err = assert_ok(&first.wait_with_output().unwrap());
    let err = assert_ok(&run(&pipeline));
    assert_eq!(
        ids(&committed_rows(&format!("s3://{b}/out"))),
        (1..=13).collect::<Vec<_>>(),
        "{first_err}\n{err}"
    );
}

#[test]
fn an_expired_lease_is_taken_over_and_its_holder_stops() {
    // A lease whose holder (another host, by name) stopped renewing it.
    let b = bucket("lease");
    let ck = store(&format!("s3://{b}/ck"));
    let stale = |expires_ms: i64| {
        format!(
            "{{\"host\": \"elsewhere\", \"pid\": 1, \"token\": \"t\", \"expires_ms\": {expires_ms}}}"
        )
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    block_on(async {
        ck.put(
            &ObjectPath::from(".lease"),
            PutPayload::from(stale(now_ms + 600_000)),
        )
        .await
        .unwrap();
    });
    let location =
        Location::parse_with(&format!("s3://{b}/ck"), Path::new("/"), Some(&options())).unwrap();
    let refused = block_on(weir::checkpoint::Checkpoint::open(&location, "lease"))
        .err()
        .expect("a live lease of another host refuses the open")
        .to_string();
    assert!(
        refused.contains("held by process 1 on host elsewhere"),
        "{refused}"
    );

    // One runtime for the rest: the lease's renewer is a task on the
    // runtime that opened the checkpoint, and must outlive the open.
    let lost = block_on(async {
        ck.put(
            &ObjectPath::from(".lease"),
            PutPayload::from(stale(now_ms - 1)),
        )
        .await
        .unwrap();
        // A lease of 3 s is renewed every second, long before it expires.
        let checkpoint =
            weir::checkpoint::Checkpoint::open_leased(&location, "lease", Duration::from_secs(3))
                .await
                .expect("an expired lease is taken over");
        // The old holder is back and overwrites the lease: the new holder
        // notices at its next renewal and refuses to write.
        ck.put(
            &ObjectPath::from(".lease"),
            PutPayload::from(stale(now_ms + 600_000)),
        )
        .await
        .unwrap();
        // Until that renewal writes still go through.
        let deadline = Instant::now() + Duration::from_secs(30);
        for batch_id in 0.. {
            let entry = weir::checkpoint::CommitEntry {
                batch_id,
                output_rows: 0,
                next_watermark_ms: None,
                next_input_watermarks_ms: Vec::new(),
                sink_commit: None,
            };
            if let Err(e) = checkpoint.write_commit(&entry).await {
                return e.to_string();
            }
            assert!(Instant::now() < deadline, "the lease was never found lost");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        unreachable!()
    });
    // Found by the renewal (the lease changed hands), not by its expiry.
    assert!(
        lost.contains("lost the lease") && lost.contains("another host took it over"),
        "{lost}"
    );
}

#[test]
fn windowed_state_is_checkpointed_to_s3() {
    let local = example("windowed-clicks");
    assert_ok(&run(&local.path().join("pipeline.toml")));
    let expected = crate::common::committed_json_rows(&local.path().join(".weir/output"));

    let b = bucket("state");
    let dir = example("windowed-clicks");
    let pipeline = dir.path().join("pipeline.toml");
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let text = text
        .replace(
            "checkpoint = \".weir/checkpoint\"",
            &format!("checkpoint = \"s3://{b}/ck\""),
        )
        .replacen("\n[trigger]", &format!("\n{}\n[trigger]", s3_table()), 1)
        .replace(
            "path = \".weir/output\"",
            &format!("path = \"s3://{b}/out\""),
        );
    std::fs::write(&pipeline, text).unwrap();
    // Killed mid-stream, then resumed: state comes back from S3.
    run_killed_at(&pipeline, "after-commit@2");
    let err = assert_ok(&run(&pipeline));
    assert_eq!(committed_rows(&format!("s3://{b}/out")), expected, "{err}");
    let state = list(&format!("s3://{b}/ck/state/0"));
    assert!(state.iter().any(|n| n.ends_with(".delta")), "{state:?}");
}
