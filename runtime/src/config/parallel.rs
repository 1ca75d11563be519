//! How a query spreads over cores: `parallelism` (tasks per stateful
//! operator) and `key_groups` (the fixed partitions of its keys).
//!
//! ```toml
//! parallelism = 4      # default: the machine's cores
//! key_groups = 128     # default; fixed when the query first starts
//! ```

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

impl Default for Parallelism {
    fn default() -> Parallelism {
        Parallelism {
            tasks: std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_PARALLELISM)),
            key_groups: None,
        }
    }
}

impl Resolver<'_> {
    pub(super) fn parallelism(
        &self,
        tasks: Option<&Spanned<i64>>,
        key_groups: Option<&Spanned<i64>>,
    ) -> Result<Parallelism, ConfigError> {
        let mut parallelism = Parallelism::default();
        if let Some(v) = tasks {
            parallelism.tasks = usize::try_from(*v.get_ref())
                .ok()
                .filter(|n| (1..=MAX_PARALLELISM).contains(n))
                .ok_or_else(|| {
                    self.err(v, format!("parallelism must be 1 to {MAX_PARALLELISM}"))
                })?;
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
