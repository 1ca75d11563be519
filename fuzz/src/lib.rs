//! Fuzz targets for what Weir reads from people and programs it does not
//! trust, and a small driver that runs them on stable Rust.
//!
//! - [`pipeline`]: pipeline TOML as a tenant submits it, parsed as in
//!   `weir run` and confined as in `weir serve`. It must never panic, and a
//!   confined pipeline must never resolve a local path outside its query
//!   directory or a granted directory.
//! - [`plugin_output`]: a column as a plugin returns it (data type, length,
//!   null count, validity and buffers), lifted by the host's
//!   [`weir_columnar::import_array`]. It must never panic, and what it
//!   accepts must be a valid Arrow array of the declared length.
//!
//! The corpus is kept in `fuzz/corpus/<target>/`. CI runs [`run`] over it
//! with seeded mutations for a bounded time (`tests/all/fuzz.rs`); with a
//! nightly toolchain and cargo-fuzz, `fuzz/cargo-fuzz` runs the same
//! targets under libFuzzer (`cargo fuzz run pipeline`).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arrow_schema::{DataType, TimeUnit};
use weir::config::{Ceilings, Confinement, Connection, Pipeline};
use weir::storage::Location;
use weir_columnar::ColumnParts;

/// The directories a confined parse may resolve into.
struct Sandbox {
    _dir: tempfile::TempDir,
    query: PathBuf,
    landing: PathBuf,
    confinement: Confinement,
}

fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let query = dir.path().join("tenants/t/q");
        let landing = dir.path().join("landing");
        let plugins = dir.path().join("plugins/t");
        for d in [&query, &landing, &plugins] {
            std::fs::create_dir_all(d).expect("sandbox directories");
        }
        // The uploads the corpus names, so parsing gets past `plugin`.
        for digit in ["a", "b"] {
            std::fs::write(plugins.join(format!("{}.wasm", digit.repeat(64))), b"")
                .expect("a sandbox plugin");
        }
        let connections = BTreeMap::from([
            (
                "landing".to_string(),
                Connection::Directory(landing.clone()),
            ),
            (
                "events".to_string(),
                Connection::Kafka {
                    bootstrap_servers: "127.0.0.1:1".into(),
                },
            ),
            (
                "crm".to_string(),
                Connection::Postgres {
                    url: "postgresql://u:p@127.0.0.1:1/db".into(),
                },
            ),
        ]);
        let confinement = Confinement {
            plugins,
            connections,
            ceilings: Ceilings::default(),
        };
        Sandbox {
            _dir: dir,
            query,
            landing,
            confinement,
        }
    })
}

/// Whether `path` is lexically inside `root` (no `..` after it).
fn inside(path: &Path, root: &Path) -> bool {
    path.strip_prefix(root)
        .is_ok_and(|rest| rest.components().all(|c| matches!(c, Component::Normal(_))))
}

/// Every local location a pipeline names.
fn local_paths(pipeline: &Pipeline) -> Vec<PathBuf> {
    let mut locations = vec![&pipeline.checkpoint];
    for input in &pipeline.inputs {
        if let weir::config::SourceConfig::File(file) = &input.source {
            locations.push(&file.path);
        }
        locations.extend(input.source.dead_letter());
    }
    locations.extend(pipeline.sink.path());
    if let Some(join) = &pipeline.static_join {
        locations.push(&join.table.path);
    }
    locations
        .into_iter()
        .filter_map(|l| match l {
            Location::Local(path) => Some(path.clone()),
            Location::S3(_) => None,
        })
        .collect()
}

/// Target: pipeline text.
pub fn pipeline(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let sandbox = sandbox();
    let _ = Pipeline::parse(&text, "fuzz.toml", &sandbox.query);
    if let Ok(pipeline) =
        Pipeline::parse_confined(&text, "fuzz.toml", &sandbox.query, &sandbox.confinement)
    {
        for path in local_paths(&pipeline) {
            assert!(
                inside(&path, &sandbox.query) || inside(&path, &sandbox.landing),
                "a confined pipeline resolved {} outside its directories",
                path.display()
            );
        }
        for stage in &pipeline.transforms {
            assert!(
                stage.plugin.starts_with(&sandbox.confinement.plugins),
                "a confined pipeline named plugin {}",
                stage.plugin.display()
            );
        }
    }
}

/// The data types a plugin may return, by index.
const TYPES: &[fn() -> DataType] = &[
    || DataType::Boolean,
    || DataType::Int8,
    || DataType::Int16,
    || DataType::Int32,
    || DataType::Int64,
    || DataType::UInt8,
    || DataType::UInt32,
    || DataType::UInt64,
    || DataType::Float32,
    || DataType::Float64,
    || DataType::Utf8,
    || DataType::Binary,
    || DataType::LargeUtf8,
    || DataType::Date32,
    || DataType::Timestamp(TimeUnit::Microsecond, None),
    || DataType::Decimal128(10, 2),
];

/// Reads a plugin's column from fuzz bytes: type, length, null count, a
/// validity flag, then buffers each prefixed by a one-byte length class.
pub fn decode_column(data: &[u8]) -> Option<(DataType, ColumnParts)> {
    let mut bytes = data.iter().copied();
    let data_type = TYPES[usize::from(bytes.next()?) % TYPES.len()]();
    // Lengths up to 2^16: large enough for every layout error, small
    // enough that an accepted array is cheap to check.
    let len = usize::from(u16::from_le_bytes([bytes.next()?, bytes.next()?]));
    let null_count = usize::from(u16::from_le_bytes([bytes.next()?, bytes.next()?]));
    let has_validity = bytes.next()? & 1 == 1;
    let mut rest: Vec<u8> = bytes.collect();
    let take = |rest: &mut Vec<u8>| -> Option<Vec<u8>> {
        let n = usize::from(*rest.first()?) * 4;
        let n = n.min(rest.len() - 1);
        let buffer = rest[1..=n].to_vec();
        rest.drain(..=n);
        Some(buffer)
    };
    let validity = if has_validity { take(&mut rest) } else { None };
    let mut buffers = Vec::new();
    while buffers.len() < 3
        && let Some(buffer) = take(&mut rest)
    {
        buffers.push(buffer);
    }
    Some((
        data_type,
        ColumnParts {
            len,
            null_count,
            validity,
            buffers,
        },
    ))
}

/// Target: one column of plugin output.
pub fn plugin_output(data: &[u8]) {
    let Some((data_type, parts)) = decode_column(data) else {
        return;
    };
    let len = parts.len;
    if let Ok(array) = weir_columnar::import_array(data_type.clone(), parts) {
        assert_eq!(array.len(), len, "an accepted column changed length");
        assert_eq!(array.data_type(), &data_type);
        array
            .to_data()
            .validate_full()
            .expect("an accepted column is a valid Arrow array");
    }
}

/// Encodes a column as [`decode_column`] reads it (for corpus seeds).
pub fn encode_column(type_index: u8, parts: &ColumnParts) -> Vec<u8> {
    let mut out = vec![type_index];
    out.extend_from_slice(&(parts.len as u16).to_le_bytes());
    out.extend_from_slice(&(parts.null_count as u16).to_le_bytes());
    out.push(u8::from(parts.validity.is_some()));
    let mut put = |buffer: &[u8]| {
        let mut padded = buffer.to_vec();
        padded.resize(buffer.len().div_ceil(4) * 4, 0);
        out.push((padded.len() / 4) as u8);
        out.extend_from_slice(&padded);
    };
    if let Some(validity) = &parts.validity {
        put(validity);
    }
    for buffer in &parts.buffers {
        put(buffer);
    }
    out
}

/// A small, seeded generator (xorshift64*): the same run every time.
pub struct Random(u64);

impl Random {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Random {
        Random(seed.max(1))
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        if n == 0 { 0 } else { (x % n as u64) as usize }
    }
}

/// One mutant of `input`: flipped bits, set bytes, dictionary tokens
/// inserted or repeated, a slice of another corpus entry spliced in, a
/// slice duplicated or the input cut short.
pub fn mutate(
    input: &[u8],
    corpus: &[Vec<u8>],
    dictionary: &[&[u8]],
    random: &mut Random,
) -> Vec<u8> {
    let mut bytes = input.to_vec();
    for _ in 0..=random.below(4) {
        let at = random.below(bytes.len() + 1);
        match random.below(7) {
            0 if !bytes.is_empty() => {
                let i = random.below(bytes.len());
                bytes[i] ^= 1 << random.below(8);
            }
            1 if !bytes.is_empty() => {
                let i = random.below(bytes.len());
                bytes[i] = [0, 0xff, 0x7f, 0x80, b'"', b'\n'][random.below(6)];
            }
            2 | 3 if !dictionary.is_empty() => {
                let token = dictionary[random.below(dictionary.len())];
                let times = if random.below(8) == 0 {
                    random.below(2000) + 1
                } else {
                    1
                };
                bytes.splice(at..at, token.repeat(times));
            }
            4 if !corpus.is_empty() => {
                let other = &corpus[random.below(corpus.len())];
                let from = random.below(other.len() + 1);
                let to = (from + random.below(256)).min(other.len());
                bytes.splice(at..at, other[from..to].iter().copied());
            }
            5 => {
                let to = (at + random.below(64)).min(bytes.len());
                let slice = bytes[at..to].to_vec();
                bytes.splice(at..at, slice);
            }
            _ => bytes.truncate(at),
        }
    }
    bytes
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Inputs tried (corpus and mutants).
    pub executions: u64,
}

/// A target's input that made it panic, and the message.
#[derive(Debug)]
pub struct Crash {
    /// The input.
    pub input: Vec<u8>,
    /// The panic message.
    pub message: String,
}

/// Every file of `dir`, in name order.
pub fn read_corpus(dir: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    files.iter().map(std::fs::read).collect()
}

/// Runs `target` on every corpus entry, then on seeded mutants of them
/// until `budget` has passed; stops at the first panic.
pub fn run(
    target: fn(&[u8]),
    corpus: &[Vec<u8>],
    dictionary: &[&[u8]],
    budget: Duration,
    seed: u64,
) -> Result<Stats, Crash> {
    let mut stats = Stats::default();
    let mut random = Random::new(seed);
    let try_one = |input: &[u8]| {
        std::panic::catch_unwind(|| target(input)).map_err(|panic| Crash {
            input: input.to_vec(),
            message: panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        })
    };
    for input in corpus {
        try_one(input)?;
        stats.executions += 1;
    }
    let started = Instant::now();
    while started.elapsed() < budget && !corpus.is_empty() {
        let parent = &corpus[random.below(corpus.len())];
        let child = mutate(parent, corpus, dictionary, &mut random);
        try_one(&child)?;
        stats.executions += 1;
    }
    Ok(stats)
}

/// Tokens that reach the pipeline parser's corners.
pub const PIPELINE_TOKENS: &[&[u8]] = &[
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"",
    b"'",
    b"=",
    b",",
    b"\n",
    b"#",
    b"\\",
    b"..",
    b"/",
    b"/etc/passwd",
    b"../",
    b"${HOME}",
    b"connection:",
    b"connection:landing/",
    b"connection:events",
    b"connection:crm",
    b"connection:nope/x",
    b"file://",
    b"s3://b/p",
    b"sha256:",
    b"[[transform]]",
    b"[sink]",
    b"[source]",
    b"[s3]",
    b"[[sources]]",
    b"[join]",
    b"[stateful]",
    b"[aggregate]",
    b"[watermark]",
    b"[deduplicate]",
    b"[static_join]",
    b"kind = \"kafka\"",
    b"kind = \"delta\"",
    b"kind = \"foreach_batch\"",
    b"bootstrap_servers = ",
    b"url = ",
    b"path = ",
    b"checkpoint = ",
    b"plugin = ",
    b"memory_limit = \"",
    b"timeout = \"",
    b"output_limit = \"",
    b"99999999999999999999",
    b"-1",
    b"0",
    b"1e308",
    b"\"1ms\"",
    b"\"18446744073709551615B\"",
    b"\0",
    b"\xff",
];

/// Byte patterns that reach the column importer's corners.
pub const COLUMN_TOKENS: &[&[u8]] = &[
    b"\0\0\0\0",
    b"\xff\xff\xff\xff",
    b"\xff\xff\xff\x7f",
    b"\x00\x00\x00\x80",
    b"\x01",
    b"\x02\0\0\0",
    b"\xc3\x28",
    b"\xf0\x28\x8c\x28",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every corpus entry (crashes found earlier included) passes.
    #[test]
    fn the_corpus_passes() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for input in read_corpus(&root.join("plugin-output")).unwrap() {
            plugin_output(&input);
        }
        for input in read_corpus(&root.join("pipeline")).unwrap() {
            pipeline(&input);
        }
    }
}
