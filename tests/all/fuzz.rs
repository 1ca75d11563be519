//! The fuzz targets of `weir-fuzz` (pipeline text, plugin output), run on
//! their corpus in `fuzz/corpus/` and on seeded mutants of it for a
//! bounded time. A crash saves its input under the target directory and
//! names it. (With nightly and cargo-fuzz, `fuzz/cargo-fuzz` runs the same
//! targets under libFuzzer for as long as one likes.)

use std::path::Path;
use std::time::Duration;

/// Time per target in CI; `WEIR_FUZZ_SECONDS` sets it.
fn budget() -> Duration {
    let seconds = std::env::var("WEIR_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(seconds)
}

fn fuzz(name: &str, target: fn(&[u8]), dictionary: &[&[u8]], seed: u64) {
    let corpus_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(name);
    let corpus = weir_fuzz::read_corpus(&corpus_dir).unwrap();
    assert!(corpus.len() >= 5, "the {name} corpus is missing");
    // The panic hook stays as it is: it is the whole process's, and the
    // tests running beside this one need their panic messages. The run
    // stops at its first panic, so that is one message at most.
    let result = weir_fuzz::run(target, &corpus, dictionary, budget(), seed);
    match result {
        Ok(stats) => eprintln!(
            "fuzz {name}: {} inputs in {:?}, no crash",
            stats.executions,
            budget()
        ),
        Err(crash) => {
            let saved = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-crash-{name}"));
            std::fs::write(&saved, &crash.input).unwrap();
            panic!(
                "the {name} target panicked: {}\ninput saved to {} (add it to fuzz/corpus/{name} once fixed)",
                crash.message,
                saved.display()
            );
        }
    }
}

#[test]
fn pipeline_parsing_survives_mutated_pipelines_and_stays_confined() {
    fuzz(
        "pipeline",
        weir_fuzz::pipeline,
        weir_fuzz::PIPELINE_TOKENS,
        71,
    );
}

#[test]
fn plugin_output_lifting_accepts_only_valid_columns() {
    fuzz(
        "plugin-output",
        weir_fuzz::plugin_output,
        weir_fuzz::COLUMN_TOKENS,
        72,
    );
}
