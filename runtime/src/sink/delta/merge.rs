//! A foreachBatch output `kind = "delta"`: the epoch's rows appended, or
//! applied by key as one Delta MERGE, committed with the epoch's
//! application transaction so a replayed epoch changes nothing.
//!
//! MERGE follows the PostgreSQL upsert output: one row per key per epoch
//! (the greatest `newer_than`, then the last); a matched row is replaced
//! only by a newer one and deleted only by a newer delete; a delete marker
//! row never reaches the table, nor does the marker column. With a guard,
//! deletes leave tombstones (key and guard) in a small Delta table of their
//! own, `<table>/_weir_tombstones` (Delta readers and VACUUM skip `_`
//! folders), so an older change arriving after a delete stays deleted.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::DeltaTable;
use deltalake::datafusion::common::Column;
use deltalake::datafusion::prelude::{Expr, SessionContext};

use super::{DeltaSink, DeltaTarget, delta_types, schema_change, table_schema};
use crate::config::{DeltaOutputConfig, DeltaOutputMode, DeltaSinkConfig};
use crate::error::Result;
use crate::faults::crash_point;
use crate::sink::upsert::UpsertRules;
use crate::sink::{CommitOutcome, Sink};

/// The source column telling a MERGE which rows delete.
const DELETE_FLAG: &str = "__weir_delete";

/// The tombstone table gets a small file per epoch with deletes: every 10
/// epochs OPTIMIZE merges them and VACUUM deletes the merged-away files
/// (only Weir reads this table, always at its latest version; the hour
/// covers a restart reading it while a VACUUM runs).
static TOMBSTONE_TABLE: std::sync::LazyLock<DeltaSinkConfig> =
    std::sync::LazyLock::new(|| DeltaSinkConfig {
        optimize: Some(crate::config::DeltaOptimize {
            every: 10,
            target_file_size: None,
        }),
        vacuum: Some(crate::config::DeltaVacuum {
            every: 10,
            retention: std::time::Duration::from_secs(3600),
        }),
        ..DeltaSinkConfig::default()
    });

/// One Delta output of a foreachBatch sink.
pub enum DeltaMergeOutput {
    /// Rows appended, as the Delta sink does.
    Append(Box<DeltaSink>),
    /// Rows merged by key.
    Merge(Box<Merge>),
}

impl DeltaMergeOutput {
    /// The output `name` of query `query_id`.
    pub fn new(config: DeltaOutputConfig, query_id: &str, name: &str) -> DeltaMergeOutput {
        let target = DeltaTarget::new(
            config.path.clone(),
            query_id,
            name,
            format!("output `{name}`"),
        );
        match config.mode {
            DeltaOutputMode::Append => DeltaMergeOutput::Append(Box::new(DeltaSink::with_target(
                target,
                config.table.clone(),
                false,
            ))),
            DeltaOutputMode::Merge => {
                let tombstones = (config.newer_than.is_some() && config.delete_when.is_some())
                    .then(|| {
                        DeltaTarget::new(
                            config.path.join("_weir_tombstones"),
                            query_id,
                            name,
                            format!("output `{name}` tombstones"),
                        )
                    });
                DeltaMergeOutput::Merge(Box::new(Merge {
                    target,
                    config,
                    tombstones: tombstones.map(|target| Tombstones {
                        sink: DeltaSink::with_target(
                            target.clone(),
                            TOMBSTONE_TABLE.clone(),
                            false,
                        ),
                        target,
                        latest: None,
                    }),
                    table: None,
                }))
            }
        }
    }

    /// Checks rows when the plugin writes them (before anything is written).
    pub fn check(config: &DeltaOutputConfig, batch: &RecordBatch) -> Result<(), String> {
        match config.mode {
            DeltaOutputMode::Append => Ok(()),
            DeltaOutputMode::Merge => rules(config).check(batch),
        }
    }

    /// Applies epoch `batch_id`'s rows once.
    pub async fn commit(&mut self, batch_id: u64, rows: &[RecordBatch]) -> Result<CommitOutcome> {
        match self {
            DeltaMergeOutput::Append(sink) => sink.commit(batch_id, rows).await,
            DeltaMergeOutput::Merge(merge) => merge.commit(batch_id, rows).await,
        }
    }
}

fn rules(config: &DeltaOutputConfig) -> UpsertRules<'_> {
    UpsertRules {
        key: &config.key,
        newer_than: config.newer_than.as_deref(),
        delete_when: config.delete_when.as_ref(),
    }
}

/// A MERGE output.
pub struct Merge {
    target: DeltaTarget,
    config: DeltaOutputConfig,
    tombstones: Option<Tombstones>,
    /// The table as of this output's last commit (loaded on first use).
    table: Option<DeltaTable>,
}

impl Merge {
    async fn commit(&mut self, batch_id: u64, rows: &[RecordBatch]) -> Result<CommitOutcome> {
        let Some(first) = rows.first() else {
            return Ok(CommitOutcome::Written);
        };
        let all = concat_batches(&first.schema(), rows)
            .and_then(delta_types)
            .map_err(|e| self.target.error(e))?;
        let rules = rules(&self.config);
        rules.check(&all).map_err(|e| self.target.error(e))?;
        let (upserts, deletes) = rules
            .latest_per_key(&all)
            .map_err(|e| self.target.error(e))?;
        let table = match self.table.take() {
            Some(table) => table,
            None => self.target.open().await?,
        };
        let outcome = if self
            .target
            .committed_version(&table)
            .await?
            .is_some_and(|v| v >= batch_id)
        {
            self.table = Some(table);
            CommitOutcome::AlreadyCommitted
        } else {
            let upserts = match &mut self.tombstones {
                Some(tombstones) => tombstones.drop_older(&rules, upserts).await?,
                None => upserts,
            };
            self.table = self
                .merge(table, batch_id, upserts, deletes.clone())
                .await?;
            CommitOutcome::Written
        };
        crash_point("delta-after-commit", batch_id);
        // Tombstones commit separately, idempotent by the same epoch: after
        // a crash here the replay skips the table and records them.
        if let Some(tombstones) = &mut self.tombstones {
            tombstones.record(&rules, batch_id, &deletes).await?;
        }
        Ok(outcome)
    }

    /// One Delta commit applying `upserts` and `deletes` (one row per key);
    /// returns the table after it, or `None` if it is to be loaded again.
    async fn merge(
        &self,
        table: DeltaTable,
        batch_id: u64,
        upserts: RecordBatch,
        deletes: RecordBatch,
    ) -> Result<Option<DeltaTable>> {
        let marker = self.config.delete_when.as_ref().map(|d| d.column.as_str());
        let stored = |batch: &RecordBatch| -> Result<RecordBatch> {
            let keep: Vec<usize> = (0..batch.num_columns())
                .filter(|&i| Some(batch.schema().field(i).name().as_str()) != marker)
                .collect();
            batch.project(&keep).map_err(|e| self.target.error(e))
        };
        let Some(existing) = table_schema(&table) else {
            // No table yet: nothing to match, so the epoch is an insert of
            // its upserts, which creates the table (or, with none, waits).
            let mut sink = DeltaSink::with_target(
                self.target.clone(),
                DeltaSinkConfig {
                    merge_schema: false,
                    partition_by: self.config.table.partition_by.clone(),
                    ..DeltaSinkConfig::default()
                },
                false,
            );
            sink.commit(batch_id, &[stored(&upserts)?]).await?;
            return Ok(None);
        };
        if upserts.num_rows() + deletes.num_rows() == 0 {
            return Ok(Some(table));
        }
        let source_rows = concat_batches(&upserts.schema(), [&upserts, &deletes])
            .map_err(|e| self.target.error(e))?;
        let data = stored(&source_rows)?;
        if let Some(change) = schema_change(&existing, &data.schema())
            && !self.config.table.merge_schema
        {
            return Err(self.target.unfit(&change));
        }
        let flags = BooleanArray::from(
            (0..source_rows.num_rows())
                .map(|i| i >= upserts.num_rows())
                .collect::<Vec<_>>(),
        );
        let mut fields: Vec<Arc<Field>> = data.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(DELETE_FLAG, DataType::Boolean, false)));
        let mut columns = data.columns().to_vec();
        columns.push(Arc::new(flags));
        let source = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(|e| self.target.error(e))?;
        let frame = SessionContext::new()
            .read_batch(source)
            .map_err(|e| self.target.error(e))?;

        let column = |side: &str, name: &str| Expr::Column(Column::new(Some(side), name));
        let on = self
            .config
            .key
            .iter()
            .map(|k| column("source", k).eq(column("target", k)))
            .reduce(Expr::and)
            .expect("a merge output has key columns");
        let newer = self
            .config
            .newer_than
            .as_deref()
            .map(|g| column("source", g).gt(column("target", g)));
        let deleting = column("source", DELETE_FLAG);
        let with_guard = |e: Expr| match &newer {
            Some(newer) => e.and(newer.clone()),
            None => e,
        };
        let names: Vec<String> = data
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let (table, _metrics) = table
            .merge(frame, on)
            .with_source_alias("source")
            .with_target_alias("target")
            .with_merge_schema(self.config.table.merge_schema)
            .with_commit_properties(self.target.commit_properties(batch_id))
            .when_matched_delete(|d| d.predicate(with_guard(deleting.clone())))
            .and_then(|m| {
                m.when_matched_update(|u| {
                    names
                        .iter()
                        .filter(|n| !self.config.key.contains(n))
                        .fold(u.predicate(with_guard(!deleting.clone())), |u, n| {
                            u.update(n.as_str(), column("source", n))
                        })
                })
            })
            .and_then(|m| {
                m.when_not_matched_insert(|i| {
                    names.iter().fold(i.predicate(!deleting.clone()), |i, n| {
                        i.set(n.as_str(), column("source", n))
                    })
                })
            })
            .map_err(|e| self.target.error(e))?
            .await
            .map_err(|e| self.target.error(e))?;
        Ok(Some(table))
    }
}

/// The latest delete guard per key, kept in its own Delta table.
struct Tombstones {
    target: DeltaTarget,
    /// Appends to that table (keeping it loaded between epochs).
    sink: DeltaSink,
    /// Comparable key bytes -> comparable guard bytes, loaded on first use.
    latest: Option<HashMap<Vec<u8>, Vec<u8>>>,
}

impl Tombstones {
    /// The upserts no recorded delete is newer than or as new as.
    async fn drop_older(
        &mut self,
        rules: &UpsertRules<'_>,
        upserts: RecordBatch,
    ) -> Result<RecordBatch> {
        self.load(rules).await?;
        let latest = self.latest.as_ref().expect("loaded above");
        if latest.is_empty() || upserts.num_rows() == 0 {
            return Ok(upserts);
        }
        let keys = rules.key_rows(&upserts).map_err(|e| self.target.error(e))?;
        let guards = rules
            .guard_rows(&upserts)
            .map_err(|e| self.target.error(e))?
            .expect("tombstones need a guard");
        let keep: Vec<u32> = (0..upserts.num_rows())
            .filter(|&i| {
                latest
                    .get(keys.row(i).data())
                    .is_none_or(|deleted| guards.row(i).data() > deleted.as_slice())
            })
            .map(|i| i as u32)
            .collect();
        take_record_batch(&upserts, &UInt32Array::from(keep)).map_err(|e| self.target.error(e))
    }

    /// Appends epoch `batch_id`'s deletes (key and guard columns), once.
    async fn record(
        &mut self,
        rules: &UpsertRules<'_>,
        batch_id: u64,
        deletes: &RecordBatch,
    ) -> Result<()> {
        let mut columns: Vec<&str> = rules.key.iter().map(String::as_str).collect();
        columns.extend(rules.newer_than);
        let indices = columns
            .iter()
            .map(|c| deletes.schema().index_of(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.target.error(e))?;
        let rows = deletes
            .project(&indices)
            .map_err(|e| self.target.error(e))?;
        self.sink
            .commit(batch_id, std::slice::from_ref(&rows))
            .await?;
        if let Some(latest) = &mut self.latest {
            remember(rules, latest, &rows).map_err(|e| self.target.error(e))?;
        }
        Ok(())
    }

    /// Reads the tombstone table into `latest` on first use.
    async fn load(&mut self, rules: &UpsertRules<'_>) -> Result<()> {
        if self.latest.is_none() {
            let table = self.target.open().await?;
            let mut latest = HashMap::new();
            for batch in super::read_all(&self.target, table).await? {
                remember(rules, &mut latest, &batch).map_err(|e| self.target.error(e))?;
            }
            self.latest = Some(latest);
        }
        Ok(())
    }
}

/// Folds tombstone rows into `latest`, keeping the greatest guard per key.
fn remember(
    rules: &UpsertRules<'_>,
    latest: &mut HashMap<Vec<u8>, Vec<u8>>,
    rows: &RecordBatch,
) -> Result<(), String> {
    let keys = rules.key_rows(rows)?;
    let guards = rules.guard_rows(rows)?.ok_or("tombstones need a guard")?;
    for i in 0..rows.num_rows() {
        let guard = guards.row(i).data();
        latest
            .entry(keys.row(i).data().to_vec())
            .and_modify(|g| {
                if guard > g.as_slice() {
                    *g = guard.to_vec();
                }
            })
            .or_insert_with(|| guard.to_vec());
    }
    Ok(())
}
