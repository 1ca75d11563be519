//! An on-disk cache of compiled components, so a restart loads a plugin in
//! milliseconds instead of compiling it again (seconds for big components
//! such as Python or JavaScript ones).
//!
//! An entry is keyed by the SHA-256 of the component's bytes and of the
//! engine's compatibility hash (wasmtime version, compiler settings), so a
//! changed plugin or engine never reuses a stale entry. Each file carries
//! the SHA-256 of its payload; a corrupt or truncated file is detected
//! before wasmtime sees it (deserialising is only sound for bytes wasmtime
//! wrote) and is rebuilt. Files are written to a temporary name and renamed,
//! so a crash leaves either no entry or a whole one.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// First bytes of every cache file (format version 1).
const MAGIC: &[u8; 8] = b"WEIRCC1\n";

/// What loading through the cache did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// A valid entry was loaded.
    Hit,
    /// No entry: compiled and stored.
    Miss,
    /// The entry failed its checksum (or was cut short): rebuilt.
    Corrupt,
    /// The entry was intact but wasmtime refused it: rebuilt.
    Stale,
}

/// A directory of compiled components.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    /// A cache in `dir` (created when first written).
    pub fn at(dir: impl Into<PathBuf>) -> CompileCache {
        CompileCache { dir: dir.into() }
    }

    /// The default cache: `$WEIR_COMPILE_CACHE`, else
    /// `$XDG_CACHE_HOME/weir/compiled`, else `~/.cache/weir/compiled`;
    /// none when `WEIR_COMPILE_CACHE=off`.
    pub fn from_env() -> Option<CompileCache> {
        match std::env::var_os("WEIR_COMPILE_CACHE") {
            Some(v) if v == "off" => None,
            Some(dir) => Some(CompileCache::at(dir)),
            None => {
                let base = std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
                Some(CompileCache::at(base.join("weir/compiled")))
            }
        }
    }

    /// The entry file for `wasm` compiled by `engine`.
    pub fn entry_path(&self, engine: &Engine, wasm: &[u8]) -> PathBuf {
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        engine
            .precompile_compatibility_hash()
            .hash(&mut engine_hash);
        let mut key = Sha256::new();
        key.update(engine_hash.finish().to_le_bytes());
        key.update(wasm);
        self.dir.join(format!("{}.cwasm", hex(&key.finalize())))
    }

    /// `wasm` compiled by `engine`, from the cache when a valid entry
    /// exists. Failing to write an entry is logged, not fatal.
    pub fn component(
        &self,
        engine: &Engine,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let path = self.entry_path(engine, wasm);
        let outcome = match std::fs::read(&path) {
            Err(_) => CacheOutcome::Miss,
            Ok(file) => match verified_payload(&file) {
                None => CacheOutcome::Corrupt,
                // SAFETY: the payload's checksum matches the one written
                // next to it, so these are the bytes `Component::serialize`
                // produced for this engine configuration (part of the key).
                Some(payload) => match unsafe { Component::deserialize(engine, payload) } {
                    Ok(component) => return Ok((component, CacheOutcome::Hit)),
                    Err(_) => CacheOutcome::Stale,
                },
            },
        };
        if outcome != CacheOutcome::Miss {
            tracing::warn!(entry = %path.display(), ?outcome, "compiled-plugin cache entry rejected; recompiling");
        }
        let component = Component::new(engine, wasm)?;
        if let Err(e) = self.store(&path, &component.serialize()?) {
            tracing::warn!(entry = %path.display(), "cannot write the compiled-plugin cache: {e}");
        }
        Ok((component, outcome))
    }

    fn store(&self, path: &Path, payload: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut file = Vec::with_capacity(MAGIC.len() + 32 + payload.len());
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&Sha256::digest(payload));
        file.extend_from_slice(payload);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &file)?;
        std::fs::rename(&tmp, path)
    }
}

/// The payload of a cache file whose header and checksum are intact.
fn verified_payload(file: &[u8]) -> Option<&[u8]> {
    let rest = file.strip_prefix(MAGIC.as_slice())?;
    if rest.len() < 32 {
        return None;
    }
    let (sum, payload) = rest.split_at(32);
    (Sha256::digest(payload).as_slice() == sum).then_some(payload)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_intact_files_pass_the_checksum() {
        let payload = b"compiled bytes";
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&Sha256::digest(payload));
        file.extend_from_slice(payload);
        assert_eq!(verified_payload(&file), Some(&payload[..]));
        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(verified_payload(&flipped), None);
        assert_eq!(verified_payload(&file[..file.len() - 1]), None);
        assert_eq!(verified_payload(&file[..20]), None);
        assert_eq!(verified_payload(b"not a cache file"), None);
    }
}
