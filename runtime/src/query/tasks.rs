//! Parallel tasks: a stateful operator runs as one task per range of key
//! groups, each on its own thread for the batch (the first on the
//! caller's), with its own operator instance and state.

use crate::checkpoint::Checkpoint;
use crate::config::Pipeline;
use crate::error::{Result, WeirError};
use crate::state::{KeyGroups, KeyedState};

/// How many tasks each stateful operator of `pipeline` runs as: its
/// `parallelism`, and no more than there are key groups to own.
pub(crate) fn task_count(pipeline: &Pipeline, groups: KeyGroups) -> usize {
    pipeline
        .parallelism
        .tasks
        .clamp(1, usize::from(groups.count()))
}

/// Task `task` of `tasks`' state of operator `operator` (its key groups'
/// range) at `version`; a running query's (`retain`: the versions it keeps)
/// first drops what batches that never committed wrote.
pub(crate) async fn open_task_state(
    checkpoint: &Checkpoint,
    pipeline: &Pipeline,
    operator: &str,
    groups: KeyGroups,
    (task, tasks): (usize, usize),
    version: u64,
    retain: Option<u64>,
) -> Result<KeyedState> {
    let mut state = KeyedState::open(
        checkpoint.store(),
        operator,
        pipeline.state_store,
        groups,
        groups.range_of_task(task, tasks),
        version,
    )
    .await?;
    match retain {
        Some(retain) => {
            state.discard_uncommitted().await?;
            Ok(state.retaining(retain))
        }
        None => Ok(state),
    }
}

/// Runs `work` on every task at once and returns their results in task
/// order; the first failure (in task order) is the result. A task that
/// panics fails the batch, not the host.
pub(crate) fn on_tasks<T: Send, R: Send>(
    tasks: &mut [T],
    work: impl Fn(&mut T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let Some((first, rest)) = tasks.split_first_mut() else {
        return Ok(Vec::new());
    };
    if rest.is_empty() {
        return Ok(vec![work(first)?]);
    }
    let work = &work;
    std::thread::scope(|scope| {
        let others: Vec<_> = rest
            .iter_mut()
            .map(|task| scope.spawn(move || work(task)))
            .collect();
        let mut results = vec![work(first)];
        for handle in others {
            results.push(handle.join().unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(WeirError::Internal(format!("a task panicked: {message}")))
            }));
        }
        results.into_iter().collect()
    })
}
