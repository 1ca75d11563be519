//! Hostile input files never take the process down: a corpus of mutated
//! JSON, CSV and Parquet files (made here from a seed, the same every run)
//! fed one at a time to `weir run`. Each either reads (the mutation was
//! harmless) or fails its query with exit code 1 and the file named; never
//! a panic escaping (exit 101) or an abort (a signal).

use std::fs;
use std::process::Output;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;

use crate::common::{Scenario, Spec, seeded};

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
