//! A stateful function's quarantine (`on_error = "quarantine"`): when a
//! key's call traps (or hits a limit, or returns an `input` error), its rows
//! are bisected to those that fail alone, which are set aside; the key is
//! then called once with the rest, from its state before the batch. The
//! probing calls change no state and emit nothing, and each key's clock and
//! seed are its own, so the key's output is what a replay (which leaves the
//! recorded rows out before grouping) makes of it.

use arrow::record_batch::RecordBatch;

use super::{StatefulFunction, describe_key, with_key};
use crate::config::OnError;
use crate::error::{PluginFailure, Result, WeirError};
use crate::operator::OperatorContext;
use crate::quarantine::{DeadLetterSource, bisect, blames_rows, record_found, take_rows};

impl StatefulFunction {
    /// Whether the stage sets failing rows aside.
    pub(super) fn quarantines(&self) -> bool {
        matches!(self.config.stage.on_error, OnError::Quarantine(_))
    }

    fn limit(&self) -> usize {
        match &self.config.stage.on_error {
            OnError::Quarantine(q) => q.max_rows_per_batch,
            OnError::Fail => 0,
        }
    }

    /// `key`'s call over `group` failed with `error`: sets aside the rows
    /// that fail alone (`rows` are their numbers in the batch) and calls the
    /// key with the others.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn quarantine_group(
        &mut self,
        key: &[u8],
        key_batch: &RecordBatch,
        group: &RecordBatch,
        rows: &[usize],
        error: WeirError,
        ctx: &mut OperatorContext<'_>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        self.renew_if_trapped(&error)?;
        let budget = self.limit().saturating_sub(ctx.quarantine.rows.len());
        let found = self.failing_rows(key, key_batch, group, error, budget, ctx)?;
        let bad: Vec<usize> = found.iter().map(|(at, _)| *at).collect();
        let (limit, batch_id) = (self.limit(), ctx.batch_id);
        record_found(found, 0, rows, limit, batch_id, &mut ctx.quarantine.rows)
            .map_err(|reason| self.gave_up(key_batch, reason))?;
        let kept: Vec<usize> = (0..group.num_rows()).filter(|r| !bad.contains(r)).collect();
        if kept.is_empty() {
            // Spark calls no key without rows (but for a timeout).
            return Ok(());
        }
        self.begin_key(key);
        self.call(key, key_batch, &take_rows(group, &kept)?, false, ctx, out)
    }

    /// Finds the rows of `group` that fail alone, by calls that change no
    /// state and emit nothing. Stops once more than `budget` are found.
    fn failing_rows(
        &mut self,
        key: &[u8],
        key_batch: &RecordBatch,
        group: &RecordBatch,
        error: WeirError,
        budget: usize,
        ctx: &OperatorContext<'_>,
    ) -> Result<Vec<(usize, String)>> {
        bisect(group.num_rows(), error, budget, &mut |start, len| {
            let stored = self.stored(key, key_batch, ctx)?;
            let lent = self.lend(&stored, false, ctx);
            self.begin_key(key);
            self.last.calls += 1;
            let called = self
                .instance
                .process_group(key_batch, &group.slice(start, len), lent)
                .map_err(|e| with_key(e, key_batch));
            match called {
                Ok(_) => Ok(None),
                Err(e) if blames_rows(&e) => {
                    self.renew_if_trapped(&e)?;
                    Ok(Some(e))
                }
                Err(e) => Err(e),
            }
        })
    }

    /// A trapped instance must not run again: a fresh one replaces it.
    fn renew_if_trapped(&mut self, error: &WeirError) -> Result<()> {
        let trapped = matches!(error, WeirError::PluginKey { failure, .. }
            if failure.leaves_instance_unusable());
        if !trapped {
            return Ok(());
        }
        let component = self.component.clone().ok_or_else(|| {
            WeirError::Internal("a quarantining stateful function without its component".into())
        })?;
        let stage = &self.config.stage;
        self.instance = component.instantiate(&stage.config_json, stage.limits)?;
        Ok(())
    }

    fn gave_up(&self, key_batch: &RecordBatch, reason: String) -> WeirError {
        WeirError::PluginKey {
            stage: self.config.stage.name.clone(),
            key: describe_key(key_batch),
            failure: PluginFailure::Quarantine { reason },
        }
    }

    /// The dead-letter records of every row set aside in the batch
    /// (`input` is the batch's rows), with the key of each.
    pub(super) fn write_dead_letters(
        &self,
        input: &RecordBatch,
        ctx: &mut OperatorContext<'_>,
    ) -> Result<()> {
        ctx.quarantine.rows.sort_by_key(|q| q.row);
        let digest = self.component.as_ref().map_or("", |c| c.digest());
        let source = DeadLetterSource {
            batch_id: ctx.batch_id,
            stage: &self.config.stage.name,
            plugin: digest,
        };
        let layout = self.layout.as_ref();
        let mut lines = Vec::new();
        for q in &ctx.quarantine.rows {
            let row = source.row(std::slice::from_ref(input), q)?;
            let key = match layout {
                Some(layout) => {
                    let key_batch = row
                        .project(&layout.key_indices)
                        .map_err(|e| WeirError::Internal(format!("projecting the key: {e}")))?;
                    describe_key(&key_batch)
                }
                None => String::new(),
            };
            lines.extend(source.line(q, &row, &[("key", key.into())])?);
        }
        ctx.quarantine.dead_letters = lines;
        Ok(())
    }
}
