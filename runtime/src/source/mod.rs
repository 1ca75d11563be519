//! Sources: where rows come from. Each source kind gets a module; today the
//! file source (`file.rs`) with its format decoders (`decode.rs`).

mod decode;
mod file;

pub use decode::{BadRecord, Decoded};
pub use file::{FileEntry, FileSource, SourceLogEntry};
