//! Session windows: per group, a list of sessions that grow and merge as
//! rows arrive, closed when the watermark passes their end.
//!
//! State rows: `0x04 | group` → the group's sessions, and an index
//! `0x05 | end | group` so the sessions a watermark closes are a prefix scan.

use std::collections::{BTreeMap, BTreeSet};

use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use super::{WindowAggregate, window_key};
use crate::config::OutputMode;
use crate::error::{Result, WeirError};
use crate::operator::accumulate::Acc;
use crate::operator::{OperatorContext, decode_i64, encode_i64};
use crate::state::StateStore;

/// One session window of a group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Session {
    pub(super) start: i64,
    pub(super) end: i64,
    pub(super) accs: Vec<Acc>,
}

const SESSION_PREFIX: u8 = 0x04;
pub(super) const SESSION_INDEX: u8 = 0x05;

fn group_key(prefix: u8, group: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + group.len());
    key.push(prefix);
    key.extend_from_slice(group);
    key
}

fn index_key(end: i64, group: &[u8]) -> Vec<u8> {
    let mut key = vec![SESSION_INDEX];
    key.extend_from_slice(&encode_i64(end));
    key.extend_from_slice(group);
    key
}

pub(super) fn load_sessions(state: &StateStore, group: &[u8]) -> Result<Vec<Session>> {
    match state.get(&group_key(SESSION_PREFIX, group))? {
        Some(bytes) => postcard::from_bytes(&bytes).map_err(|e| WeirError::CheckpointCorrupt {
            path: "session state".into(),
            reason: e.to_string(),
        }),
        None => Ok(Vec::new()),
    }
}

/// Replaces `group`'s sessions (and their index entries) in the state.
fn store_sessions(state: &mut StateStore, group: &[u8], sessions: &[Session]) -> Result<()> {
    for old in load_sessions(state, group)? {
        state.delete(&index_key(old.end, group))?;
    }
    let key = group_key(SESSION_PREFIX, group);
    if sessions.is_empty() {
        return state.delete(&key);
    }
    for s in sessions {
        state.put(&index_key(s.end, group), &[])?;
    }
    let bytes = postcard::to_stdvec(sessions).map_err(|e| WeirError::Internal(e.to_string()))?;
    state.put(&key, &bytes)
}

/// Adds `new` to `sessions`, merging every session it overlaps or touches;
/// returns the start of the resulting session.
pub(super) fn merge_session(sessions: &mut Vec<Session>, mut new: Session) -> i64 {
    while let Some(i) = sessions
        .iter()
        .position(|s| s.start <= new.end && new.start <= s.end)
    {
        let other = sessions.remove(i);
        new.start = new.start.min(other.start);
        new.end = new.end.max(other.end);
        for (acc, o) in new.accs.iter_mut().zip(&other.accs) {
            acc.merge(o);
        }
    }
    let start = new.start;
    sessions.push(new);
    sessions.sort_by_key(|s| s.start);
    start
}

/// The output row key of a session (same layout as a fixed window's).
fn session_row(group: &[u8], s: Session) -> (Vec<u8>, Vec<Acc>) {
    (window_key(s.start, s.end, group), s.accs)
}

impl WindowAggregate {
    /// End of a batch for session windows: store the touched groups, then
    /// emit by output mode and evict the sessions the watermark closed.
    pub(super) fn end_session_batch(
        &mut self,
        ctx: &mut OperatorContext<'_>,
    ) -> Result<Vec<RecordBatch>> {
        let touched = std::mem::take(&mut self.sessions);
        for (group, (sessions, _)) in &touched {
            store_sessions(ctx.state, group, sessions)?;
        }
        self.layout(None, ctx.state)?;
        let mut rows = BTreeMap::new();
        match self.config.output_mode {
            OutputMode::Complete => {
                let mut groups = Vec::new();
                ctx.state.scan_from(&[SESSION_PREFIX], &mut |key, _| {
                    let more = key[0] == SESSION_PREFIX;
                    if more {
                        groups.push(key[1..].to_vec());
                    }
                    more
                })?;
                for group in groups {
                    for s in load_sessions(ctx.state, &group)? {
                        let (key, accs) = session_row(&group, s);
                        rows.insert(key, accs);
                    }
                }
            }
            mode => {
                if mode == OutputMode::Update {
                    for (group, (sessions, changed)) in touched {
                        for s in sessions.into_iter().filter(|s| changed.contains(&s.start)) {
                            let (key, accs) = session_row(&group, s);
                            rows.insert(key, accs);
                        }
                    }
                }
                let closed = self.close_sessions(ctx)?;
                if mode == OutputMode::Append {
                    rows.extend(closed);
                }
            }
        }
        self.emit(rows.into_iter().collect())
    }

    /// Removes the sessions that ended by the watermark; returns them as rows.
    fn close_sessions(
        &mut self,
        ctx: &mut OperatorContext<'_>,
    ) -> Result<Vec<(Vec<u8>, Vec<Acc>)>> {
        let Some(wm) = ctx.watermark_ms else {
            return Ok(Vec::new());
        };
        let mut groups = BTreeSet::new();
        ctx.state.scan_from(&[SESSION_INDEX], &mut |key, _| {
            let due = key[0] == SESSION_INDEX && decode_i64(&key[1..]) <= wm;
            if due {
                groups.insert(key[9..].to_vec());
            }
            due
        })?;
        let mut closed = Vec::new();
        for group in groups {
            let (due, open): (Vec<Session>, Vec<Session>) = load_sessions(ctx.state, &group)?
                .into_iter()
                .partition(|s| s.end <= wm);
            store_sessions(ctx.state, &group, &open)?;
            closed.extend(due.into_iter().map(|s| session_row(&group, s)));
        }
        Ok(closed)
    }
}
