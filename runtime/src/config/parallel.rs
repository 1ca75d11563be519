//! How a query spreads over cores: `parallelism` (tasks per stateful
//! operator) and `key_groups` (the fixed partitions of its keys).
//!
//! ```toml
//! parallelism = 4      # default: $WEIR_PARALLELISM, else the machine's cores
//! key_groups = 128     # default; fixed when the query first starts
//! ```
//!
//! `WEIR_PARALLELISM` sets the default for pipelines that do not say, as
//! `TOKIO_WORKER_THREADS` or `RAYON_NUM_THREADS` do for their pools: an
//! operator sizes a deployment without editing pipelines (and the test
//! suite runs every pipeline with one task and with four).

use toml::Spanned;

use super::{ConfigError, Resolver};
use crate::state::MAX_KEY_GROUPS;

/// The most tasks an operator may run: threads are spawned per batch, and
/// a tenant of `weir serve` must not be able to ask for thousands.
pub const MAX_PARALLELISM: usize = 64;

/// A query's parallelism settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parallelism {
    /// Tasks per stateful operator (at most the key groups).
    pub tasks: usize,
    /// The key groups the pipeline asks for; `None`: the checkpoint's, or
    /// [`crate::state::DEFAULT_KEY_GROUPS`] for a new query.
    pub key_groups: Option<u16>,
}

/// The environment variable that sets the default parallelism.
pub const PARALLELISM_ENV: &str = "WEIR_PARALLELISM";

impl Default for Parallelism {
    /// The machine's cores (at most [`MAX_PARALLELISM`]), whatever the
    /// environment says.
    fn default() -> Parallelism {
        Parallelism {
            tasks: std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_PARALLELISM)),
            key_groups: None,
        }
    }
}

/// The default tasks per operator: [`PARALLELISM_ENV`] if set, else the
/// machine's cores.
fn default_tasks() -> Result<usize, String> {
    tasks_from_env(std::env::var(PARALLELISM_ENV))
}

/// The default tasks per operator for a value of [`PARALLELISM_ENV`].
fn tasks_from_env(var: Result<String, std::env::VarError>) -> Result<usize, String> {
    match var {
        Err(std::env::VarError::NotPresent) => Ok(Parallelism::default().tasks),
        Ok(text) => text
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PARALLELISM).contains(n))
            .ok_or_else(|| format!("{PARALLELISM_ENV}={text:?}: must be 1 to {MAX_PARALLELISM}")),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!(
            "{PARALLELISM_ENV} is not valid text: must be 1 to {MAX_PARALLELISM}"
        )),
    }
}

impl Resolver<'_> {
    pub(super) fn parallelism(
        &self,
        tasks: Option<&Spanned<i64>>,
        key_groups: Option<&Spanned<i64>>,
    ) -> Result<Parallelism, ConfigError> {
        let mut parallelism = Parallelism::default();
        match tasks {
            None => {
                parallelism.tasks = default_tasks().map_err(|message| ConfigError {
                    file: self.file.to_string(),
                    line: None,
                    column: None,
                    message,
                    hint: Some(
                        "unset it for the machine's cores, or set `parallelism` in the pipeline"
                            .into(),
                    ),
                })?;
            }
            Some(v) => {
                parallelism.tasks = usize::try_from(*v.get_ref())
                    .ok()
                    .filter(|n| (1..=MAX_PARALLELISM).contains(n))
                    .ok_or_else(|| {
                        self.err(v, format!("parallelism must be 1 to {MAX_PARALLELISM}"))
                    })?;
            }
        }
        if let Some(v) = key_groups {
            parallelism.key_groups = Some(
                u16::try_from(*v.get_ref())
                    .ok()
                    .filter(|n| (1..=MAX_KEY_GROUPS).contains(n))
                    .ok_or_else(|| {
                        self.err(v, format!("key_groups must be 1 to {MAX_KEY_GROUPS}"))
                    })?,
            );
        }
        Ok(parallelism)
    }
}

#[cfg(test)]
mod tests {
    use std::env::VarError;

    use super::*;

    #[test]
    fn the_environment_sets_the_default_parallelism_within_bounds() {
        let cores = Parallelism::default().tasks;
        assert_eq!(tasks_from_env(Err(VarError::NotPresent)), Ok(cores));
        assert_eq!(tasks_from_env(Ok("4".into())), Ok(4));
        assert_eq!(tasks_from_env(Ok(" 1 ".into())), Ok(1));
        for bad in ["0", "65", "-1", "many", ""] {
            let refused = tasks_from_env(Ok(bad.into())).unwrap_err();
            assert!(refused.contains("must be 1 to 64"), "{bad}: {refused}");
        }
    }
}
