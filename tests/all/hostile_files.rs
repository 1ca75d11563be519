//! Hostile input files never take the process down: a corpus of mutated
//! JSON, CSV and Parquet files (made here from a seed, the same every run)
//! fed one at a time to `weir run`, and the same kind of corpus fed to one
//! `weir serve` host as 200 queries of a hostile tenant while another
//! tenant streams. Each either reads (the mutation was harmless, or its bad
//! rows were dead-lettered) or fails its query with the file named; never a
//! panic escaping (exit 101) or an abort (a signal).

use std::fs;
use std::process::Output;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;

use crate::common::{Scenario, Spec, free_port, seeded};
use crate::serve::{Server, hosted_pipeline_text, wait_until, write_input};

/// How many mutants of each format.
const MUTANTS: usize = 50;

fn valid_json() -> Vec<u8> {
    (1..=40)
        .map(|id| format!("{{\"id\": {id}, \"name\": \"n{id} ü\", \"amount\": {id}.25}}\n"))
        .collect::<String>()
        .into_bytes()
}

fn valid_csv() -> Vec<u8> {
    let rows: String = (1..=40)
        .map(|id| format!("{id},\"n{id}, \"\"q\"\"\",{id}.25\n"))
        .collect();
    format!("id,name,amount\n{rows}").into_bytes()
}

fn valid_parquet() -> Vec<u8> {
    let ids: Vec<i64> = (1..=200).collect();
    let batch = RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
        (
            "name",
            Arc::new(StringArray::from_iter(
                ids.iter().map(|i| (i % 7 != 0).then(|| format!("n{i}"))),
            )) as ArrayRef,
        ),
        (
            "amount",
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|i| *i as f64 / 4.0),
            )) as ArrayRef,
        ),
    ])
    .unwrap();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    bytes
}

/// Bytes that break parsers: structure, quotes, escapes, huge numbers.
const NASTY: &[&[u8]] = &[
    b"[",
    b"{",
    b"]",
    b"}",
    b"\"",
    b"\\",
    b",",
    b"\n",
    b"\r",
    b"\0",
    b"\xff",
    b"99999999999999999999999",
    b"-1e999",
    b"\\u0000",
    b"\xf0\x9f",
];

/// One mutant of `valid`: bytes overwritten, a run of nasty tokens
/// inserted, a slice duplicated, or the file cut short.
fn mutate(valid: &[u8], random: &mut impl FnMut(i64) -> i64) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    for _ in 0..=random(3) {
        match random(4) {
            0 => {
                for _ in 0..=random(8) {
                    let i = pick(random, bytes.len());
                    if i < bytes.len() {
                        bytes[i] = random(256) as u8;
                    }
                }
            }
            1 => {
                let token = NASTY[random(NASTY.len() as i64) as usize];
                let run = token.repeat(1 + random(3000) as usize);
                let i = pick(random, bytes.len());
                bytes.splice(i..i, run);
            }
            2 => {
                let from = pick(random, bytes.len());
                let to = (from + pick(random, 512)).min(bytes.len());
                let slice = bytes[from..to].to_vec();
                let i = pick(random, bytes.len());
                bytes.splice(i..i, slice);
            }
            _ => {
                let len = pick(random, bytes.len());
                bytes.truncate(len);
            }
        }
    }
    bytes
}

/// A position in `0..len` (0 when empty).
fn pick(random: &mut impl FnMut(i64) -> i64, len: usize) -> usize {
    random(len.max(1) as i64) as usize
}

fn assert_survived(output: &Output, file: &str) {
    let err = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => {}
        Some(1) => assert!(
            err.contains(file),
            "{file}: the error does not name the file:\n{err}"
        ),
        _ => panic!("{file}: weir did not survive ({}):\n{err}", output.status),
    }
}

/// Runs `MUTANTS` mutants of `valid`; returns how many read and how many
/// failed their query.
fn run_corpus(format: &'static str, valid: &[u8], seed: u64, source_extra: &str) -> [usize; 2] {
    let mut random = seeded(seed);
    let mut outcomes = [0usize; 2];
    for n in 0..MUTANTS {
        // A query of its own per file: a bad file fails its query.
        let s = Scenario::new(Spec {
            format,
            transforms: vec![],
            source_extra: source_extra.into(),
            ..Spec::default()
        });
        let name = format!("mutant-{n:03}.{format}");
        fs::write(s.path("in").join(&name), mutate(valid, &mut random)).unwrap();
        let output = s.run();
        assert_survived(&output, &name);
        outcomes[usize::from(!output.status.success())] += 1;
    }
    outcomes
}

#[test]
fn mutated_parquet_files_fail_their_query_naming_the_file() {
    let [read, failed] = run_corpus("parquet", &valid_parquet(), 17, "");
    // The corpus must reach the error paths, or it tests nothing.
    assert!(failed > MUTANTS / 2, "read {read}, failed {failed}");
}

#[test]
fn mutated_json_files_fail_their_query_or_dead_letter_rows() {
    let [_, failed] = run_corpus("json", &valid_json(), 18, "");
    assert!(failed > MUTANTS / 4, "failed {failed}");
    let dead_letter = "on_bad_record = \"dead_letter\"\ndead_letter_path = \"dead\"";
    let [read, _] = run_corpus("json", &valid_json(), 19, dead_letter);
    assert!(read > 0, "no mutant read with its bad rows dead-lettered");
}

#[test]
fn mutated_csv_files_fail_their_query_naming_the_file() {
    let [_, failed] = run_corpus("csv", &valid_csv(), 20, "header = true");
    assert!(failed > MUTANTS / 4, "failed {failed}");
}

/// The hosted pipeline reading mutant `n`'s directory once.
fn mutant_pipeline(n: usize, format: &str, extra: &str) -> String {
    format!(
        r#"name = "m{n:03}"
checkpoint = "ck"

[trigger]
available_now = true

[source]
kind = "file"
path = "connection:landing/mutants/m{n:03}"
format = "{format}"
{extra}
schema = [
  {{ name = "id", type = "long", nullable = false }},
  {{ name = "name", type = "string" }},
  {{ name = "amount", type = "double" }},
]

[sink]
kind = "json"
path = "out"
"#
    )
}

#[test]
fn two_hundred_hostile_files_fed_to_weir_serve_fail_only_their_own_queries() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let good_input = dir.path().join("good-in");
    fs::create_dir(&good_input).unwrap();
    let server = Server::start(&state, free_port(), &dir.path().join("serve.log"));
    let good = dir.path().join("good.toml");
    fs::write(&good, hosted_pipeline_text(&good_input)).unwrap();
    server.cli_as("good", &["submit", good.to_str().unwrap()]);

    // (format, valid file, extra source settings, seed, how many)
    let dead_letter = "on_bad_record = \"dead_letter\"\ndead_letter_path = \"dead\"";
    let corpora: [(&str, Vec<u8>, &str, u64, usize); 4] = [
        ("json", valid_json(), "", 31, 50),
        ("json", valid_json(), dead_letter, 32, 50),
        ("csv", valid_csv(), "header = true", 33, 50),
        ("parquet", valid_parquet(), "", 34, 50),
    ];
    let mut n = 0;
    let mut files = Vec::new();
    let mut good_files = 0;
    for (format, valid, extra, seed, count) in &corpora {
        let mut random = seeded(*seed);
        for _ in 0..*count {
            let mutants = dir.path().join(format!("mutants/m{n:03}"));
            fs::create_dir_all(&mutants).unwrap();
            let name = format!("mutant-{n:03}.{format}");
            fs::write(mutants.join(&name), mutate(valid, &mut random)).unwrap();
            let file = dir.path().join(format!("m{n:03}.toml"));
            fs::write(&file, mutant_pipeline(n, format, extra)).unwrap();
            server.cli_as("evil", &["submit", file.to_str().unwrap()]);
            files.push((format!("evil/m{n:03}"), name));
            n += 1;
            if n % 10 == 0 {
                // The good tenant's stream goes on meanwhile; evil's
                // queries end (a drained trigger) so its quota frees up.
                write_input(&good_input, good_files);
                good_files += 1;
                wait_until("evil's queries to end", || {
                    let all: serde_json::Value =
                        serde_json::from_str(&server.cli(&["status"])).unwrap();
                    all.as_array()
                        .unwrap()
                        .iter()
                        .all(|q| q["tenant"] != "evil" || q["status"]["state"] != "running")
                });
            }
        }
    }
    let all: serde_json::Value = serde_json::from_str(&server.cli(&["status"])).unwrap();
    let (mut finished, mut failed) = (0, 0);
    for (id, file) in &files {
        let query = all
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} missing"));
        match query["status"]["state"].as_str().unwrap() {
            "finished" => finished += 1,
            "failed" => {
                let error = query["status"]["error"].as_str().unwrap();
                assert!(
                    error.contains(file.as_str()),
                    "{id}: the error does not name {file}: {error}"
                );
                assert!(!error.contains("panicked"), "{id}: {error}");
                failed += 1;
            }
            other => panic!("{id}: {other}: {query}"),
        }
    }
    assert_eq!(files.len(), 200);
    // The corpus must reach the error paths, or it tests nothing.
    assert!(
        failed > 60 && finished > 10,
        "finished {finished}, failed {failed}"
    );
    let good_status = all
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["id"] == "good/orders")
        .unwrap();
    assert_eq!(good_status["status"]["state"], "running", "{good_status}");
    let out = state.join("tenants/good/orders/out");
    let expected: Vec<i64> = (1..=5 * good_files as i64).collect();
    wait_until("the good tenant's rows, each once", || {
        let mut ids: Vec<i64> = crate::attacks::committed_ids(&out);
        ids.sort();
        ids == expected
    });
    eprintln!(
        "200 hostile files in weir serve: {finished} queries finished, {failed} failed naming their file"
    );
    // The host exits cleanly: it survived every file.
    server.terminate();
}
