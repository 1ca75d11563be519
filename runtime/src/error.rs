//! The one error type of the runtime library.
//!
//! Every error says whose move it is ([`ErrorDomain`]) and names the stage,
//! plugin, file or checkpoint entry involved, so the operator can act on it.

use std::path::PathBuf;

use crate::config::ConfigError;

/// Whose fault an error is, and so who has to act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorDomain {
    /// The pipeline's author or its data: fix the pipeline file, the plugin or the input.
    User,
    /// Something outside Weir: storage, the file system, another process.
    External,
    /// A bug in Weir itself.
    Internal,
}

/// Why a plugin call did not produce usable output. Guest errors (the
/// plugin's own `plugin-error`) are kept apart from traps and from output
/// the host refused.
#[derive(Debug, thiserror::Error)]
pub enum PluginFailure {
    /// The component could not be read, compiled or linked.
    #[error("cannot load {path}: {reason}")]
    Load {
        /// Component file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The plugin returned a `plugin-error` on purpose.
    #[error("the plugin returned an error ({kind}): {message}")]
    Guest {
        /// `config`, `input` or `internal`.
        kind: &'static str,
        /// The plugin's message.
        message: String,
    },
    /// The plugin trapped (a panic, unreachable, out-of-bounds access, ...).
    #[error("the plugin trapped: {message}")]
    Trap {
        /// Trap code and Wasm backtrace.
        message: String,
    },
    /// Quarantine could not keep the batch going: too many rows failed, or
    /// no row fails alone.
    #[error("quarantine gave up: {reason}")]
    Quarantine {
        /// Why.
        reason: String,
    },
    /// A call ran past the stage's time limit and was interrupted.
    #[error("the plugin exceeded its time limit of {limit:?} per call and was stopped")]
    Timeout {
        /// The limit (`timeout` in the stage's settings).
        limit: std::time::Duration,
    },
    /// The plugin tried to grow its memory past the stage's limit.
    #[error("the plugin exceeded its memory limit of {limit_bytes} bytes")]
    OutOfMemory {
        /// The limit (`memory_limit` in the stage's settings).
        limit_bytes: u64,
    },
    /// One call returned more output than the stage's limit.
    #[error(
        "the plugin returned {bytes} bytes from one call (Arrow memory, plus one per row), over its output limit of {limit_bytes} bytes"
    )]
    OutputTooLarge {
        /// What it returned (Arrow memory, plus one byte per row).
        bytes: u64,
        /// The limit (`output_limit` in the stage's settings).
        limit_bytes: u64,
    },
    /// The plugin returned a batch the host refused.
    #[error("the plugin returned invalid output: {reason}")]
    InvalidOutput {
        /// Which check failed.
        reason: String,
    },
}

/// Errors from the Weir runtime.
#[derive(Debug, thiserror::Error)]
pub enum WeirError {
    /// The pipeline definition is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// A plugin stage failed.
    #[error("plugin stage `{stage}`: {failure}")]
    Plugin {
        /// Stage name from the pipeline file.
        stage: String,
        /// What went wrong.
        #[source]
        failure: PluginFailure,
    },

    /// A stateful function failed for one key; nothing of the batch is
    /// committed.
    #[error("plugin stage `{stage}`, key {key}: {failure}")]
    PluginKey {
        /// Stage name from the pipeline file.
        stage: String,
        /// The key, as `column=value` pairs.
        key: String,
        /// What went wrong.
        #[source]
        failure: PluginFailure,
    },

    /// A source row could not be parsed and `on_bad_record = "fail"`.
    #[error("bad record in {file}, line {line}: {reason}")]
    BadRecord {
        /// Source file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// Parser message.
        reason: String,
    },

    /// Data does not match the schema it must have.
    #[error("schema mismatch in {context}: {reason}")]
    Schema {
        /// Where (source file, stage, sink).
        context: String,
        /// The difference.
        reason: String,
    },

    /// Another query holds the checkpoint.
    #[error(
        "checkpoint {path} is in use by another running query (lock file {path}/.lock is held); \
         stop that query or use another checkpoint location"
    )]
    CheckpointLocked {
        /// Checkpoint location.
        path: String,
    },

    /// Another host holds the lease on an object-storage checkpoint.
    #[error(
        "checkpoint {path} is in use by another running query ({holder}); stop that query or use \
         another checkpoint location (a lease left by a crashed host expires by itself)"
    )]
    CheckpointLeased {
        /// Checkpoint location.
        path: String,
        /// Who holds the lease, and until when.
        holder: String,
    },

    /// This query lost its checkpoint lease (it could not renew it in time,
    /// or another host took it over); it stops before writing anything more.
    #[error("lost the lease on checkpoint {path}: {reason}; this query stops")]
    CheckpointLeaseLost {
        /// Checkpoint location.
        path: String,
        /// What happened.
        reason: String,
    },

    /// Another writer created a checkpoint entry this query was about to
    /// create (two hosts ran the query at once: a stalled replica and the
    /// one that replaced it); this one stops, having committed nothing.
    #[error("checkpoint entry {path} was written by another host meanwhile; this query stops")]
    CheckpointRaced {
        /// The entry.
        path: String,
    },

    /// A checkpoint file cannot be read as what it must be.
    #[error(
        "checkpoint file {path} is corrupt: {reason}; restore it from a backup, or start the \
         query on a new checkpoint location (never edit checkpoint files by hand)"
    )]
    CheckpointCorrupt {
        /// File inside the checkpoint.
        path: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The pipeline's stateful operators are not those whose state the
    /// checkpoint holds.
    #[error(
        "checkpoint {path}: its state belongs to the stateful operators {recorded:?}, but the \
         pipeline now declares {declared:?}; run the changed query on a new checkpoint location"
    )]
    OperatorsChanged {
        /// The checkpoint's record of its operators.
        path: String,
        /// The operators the checkpoint's state was written by, in order.
        recorded: Vec<String>,
        /// The operators the pipeline declares, in order.
        declared: Vec<String>,
    },

    /// The pipeline asks for other key groups than its checkpoint's state
    /// is partitioned into.
    #[error(
        "checkpoint {path}: its state is partitioned into {recorded} key groups, but the \
         pipeline asks for key_groups = {declared}; key groups are fixed when a query first \
         starts (change parallelism instead, or run on a new checkpoint location)"
    )]
    KeyGroupsChanged {
        /// The checkpoint's record of its key groups.
        path: String,
        /// The key groups the checkpoint's state is partitioned into.
        recorded: u16,
        /// The key groups the pipeline declares.
        declared: u16,
    },

    /// Object storage (local directory or remote) failed.
    #[error("storage error at {path}: {source}")]
    Storage {
        /// Object path.
        path: String,
        /// Underlying error.
        #[source]
        source: object_store::Error,
    },

    /// A source failed to plan or read its input.
    #[error("source {input}: {reason}")]
    Source {
        /// Which source (and partition, file, ...).
        input: String,
        /// What went wrong.
        reason: String,
    },

    /// A service (a broker, an object store) cannot be reached or timed
    /// out: worth retrying (see [`crate::retry`]).
    #[error("{service} is unavailable: {reason}")]
    Unavailable {
        /// Which service (`kafka 127.0.0.1:9092`).
        service: String,
        /// What failed.
        reason: String,
    },

    /// `weir replay` cannot rebuild what was asked.
    #[error("cannot replay: {reason}")]
    Replay {
        /// Why.
        reason: String,
    },

    /// A `weir serve` host refused a request.
    #[error("the host at {server} answered {status}: {message}")]
    Refused {
        /// The host's address.
        server: String,
        /// HTTP status.
        status: u16,
        /// Its explanation.
        message: String,
    },

    /// A sink or one of its outputs failed to write.
    #[error("sink {sink}: {reason}")]
    Sink {
        /// Which sink or output.
        sink: String,
        /// What went wrong.
        reason: String,
    },

    /// A local I/O operation failed.
    #[error("I/O error at {path}: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Reading or writing a data file failed.
    #[error("{context}: {reason}")]
    Format {
        /// Which file or stage.
        context: String,
        /// The decoder's or encoder's message.
        reason: String,
    },

    /// An invariant of Weir itself broke.
    #[error("internal error (please report): {0}")]
    Internal(String),
}

impl PluginFailure {
    /// Whether rows may be to blame: a trap, a time or memory limit hit,
    /// or an `input` error (what `on_error = "quarantine"` sets rows aside
    /// for). A `config` or `internal` error, or output the host refuses,
    /// is the plugin's own.
    pub fn blames_rows(&self) -> bool {
        self.leaves_instance_unusable()
            || matches!(self, PluginFailure::Guest { kind: "input", .. })
    }

    /// Whether the instance that failed must not run again: a trap, or a
    /// time or memory limit hit, stopped it midway.
    pub fn leaves_instance_unusable(&self) -> bool {
        matches!(
            self,
            PluginFailure::Trap { .. }
                | PluginFailure::Timeout { .. }
                | PluginFailure::OutOfMemory { .. }
        )
    }
}

impl WeirError {
    /// Whose fault the error is.
    pub fn domain(&self) -> ErrorDomain {
        match self {
            WeirError::Config(_)
            | WeirError::Plugin { .. }
            | WeirError::PluginKey { .. }
            | WeirError::BadRecord { .. }
            | WeirError::Schema { .. }
            | WeirError::CheckpointLocked { .. }
            | WeirError::CheckpointLeased { .. }
            | WeirError::Refused { .. }
            | WeirError::OperatorsChanged { .. }
            | WeirError::KeyGroupsChanged { .. }
            | WeirError::Replay { .. } => ErrorDomain::User,
            WeirError::CheckpointLeaseLost { .. } | WeirError::CheckpointRaced { .. } => {
                ErrorDomain::External
            }
            WeirError::CheckpointCorrupt { .. }
            | WeirError::Storage { .. }
            | WeirError::Sink { .. }
            | WeirError::Source { .. }
            | WeirError::Unavailable { .. }
            | WeirError::Io { .. }
            | WeirError::Format { .. } => ErrorDomain::External,
            WeirError::Internal(_) => ErrorDomain::Internal,
        }
    }

    pub(crate) fn storage(path: impl std::fmt::Display, source: object_store::Error) -> Self {
        WeirError::Storage {
            path: path.to_string(),
            source,
        }
    }

    pub(crate) fn format(context: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        WeirError::Format {
            context: context.into(),
            reason: reason.to_string(),
        }
    }
}

/// Result with [`WeirError`].
pub type Result<T, E = WeirError> = std::result::Result<T, E>;

/// The text of a caught panic's payload (a `&str` or `String` message).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
