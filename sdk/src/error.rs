use crate::bindings::weir::plugin::types::{ErrorKind as WitErrorKind, PluginError};

/// Who is at fault when a plugin refuses its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The stage's configuration is invalid.
    Config,
    /// The input rows are unacceptable.
    Input,
    /// The plugin itself failed.
    Internal,
}

/// An error a plugin returns to the host. The query stops and reports it
/// with the plugin's name; traps (panics) are reported separately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Whose fault it is.
    pub kind: ErrorKind,
    /// What went wrong, for the operator.
    pub message: String,
}

impl Error {
    /// A configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Config,
            message: message.into(),
        }
    }

    /// An error caused by the input rows.
    pub fn input(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Input,
            message: message.into(),
        }
    }

    /// An error inside the plugin.
    pub fn internal(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Internal,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} error: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {}

impl From<arrow_schema::ArrowError> for Error {
    fn from(e: arrow_schema::ArrowError) -> Self {
        Error::internal(e.to_string())
    }
}

impl From<Error> for PluginError {
    fn from(e: Error) -> Self {
        let kind = match e.kind {
            ErrorKind::Config => WitErrorKind::Config,
            ErrorKind::Input => WitErrorKind::Input,
            ErrorKind::Internal => WitErrorKind::Internal,
        };
        PluginError {
            kind,
            message: e.message,
        }
    }
}
