//! A PostgreSQL table output of a foreachBatch sink, exactly once.
//!
//! Each epoch is one transaction: it checks the ledger table for
//! `(query id, output, epoch)`, applies the rows, and inserts that ledger
//! row. A replayed epoch finds its ledger row and changes nothing; a crash
//! before `COMMIT` leaves nothing behind.
//!
//! Rows travel as one JSON array per statement, expanded by
//! `json_populate_recordset(NULL::<table>, ...)`, so PostgreSQL converts
//! each value to the table's own column type.
//!
//! Upserts keep one row per key per epoch (the greatest `newer_than`, then
//! the last), then `INSERT ... ON CONFLICT DO UPDATE`. With a `newer_than`
//! guard an older row never replaces a newer one, and deletes leave a
//! tombstone (`<table>__weir_tombstones`: key and guard) so an older row
//! arriving after the delete stays deleted.

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use tokio_postgres::{Client, NoTls};

use super::CommitOutcome;
use super::upsert::UpsertRules;
use crate::config::{PostgresMode, PostgresOutputConfig};
use crate::error::{Result, WeirError};
use crate::faults::crash_point;

/// One PostgreSQL table output.
pub struct PostgresOutput {
    config: PostgresOutputConfig,
    query_id: String,
    name: String,
    /// "output `name` (postgres table t)", for errors.
    label: String,
    client: Option<Client>,
    /// The table's columns, read when connecting.
    columns: Vec<String>,
}

/// Double-quotes an SQL identifier; `a.b` becomes `"a"."b"`.
fn ident(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

impl PostgresOutput {
    /// An output named `name` of query `query_id`; connects on first use.
    pub fn new(config: PostgresOutputConfig, query_id: String, name: String) -> PostgresOutput {
        PostgresOutput {
            label: format!("output `{name}` (postgres table {})", config.table),
            config,
            query_id,
            name,
            client: None,
            columns: Vec::new(),
        }
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> WeirError {
        WeirError::Sink {
            sink: self.label.clone(),
            reason: format!("{what}: {e}"),
        }
    }

    /// Checks rows before anything is written: upserts need their key
    /// columns (non-null) and the guard and marker columns.
    pub fn check(config: &PostgresOutputConfig, batch: &RecordBatch) -> Result<(), String> {
        if config.mode == PostgresMode::Append {
            return Ok(());
        }
        rules(config).check(batch)
    }

    async fn connect(&mut self) -> Result<&mut Client> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(self.client.as_mut().expect("checked"));
        }
        let (client, connection) = tokio_postgres::connect(&self.config.url, NoTls)
            .await
            .map_err(|e| self.error("cannot connect", describe(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!("postgres connection closed: {e}");
            }
        });
        let ledger = ident(&self.config.ledger_table);
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {ledger} (
                    query_id text NOT NULL,
                    output text NOT NULL,
                    epoch bigint NOT NULL,
                    rows bigint NOT NULL,
                    committed_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (query_id, output, epoch))"
            ))
            .await
            .map_err(|e| self.error("cannot create the epoch ledger", describe(&e)))?;
        let (schema, table) = match self.config.table.split_once('.') {
            Some((schema, table)) => (schema.to_string(), table.to_string()),
            None => ("public".to_string(), self.config.table.clone()),
        };
        let rows = client
            .query(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
                &[&schema, &table],
            )
            .await
            .map_err(|e| self.error("cannot read the table's columns", describe(&e)))?;
        self.columns = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        if self.columns.is_empty() {
            return Err(self.error(
                "the table does not exist",
                "create it first (with a primary key or unique index on the upsert key)",
            ));
        }
        let mut needed: Vec<&String> = self.config.key.iter().collect();
        needed.extend(self.config.newer_than.as_ref());
        if let Some(missing) = needed.into_iter().find(|c| !self.columns.contains(c)) {
            return Err(self.error(
                "configuration does not match the table",
                format!(
                    "the table has no column `{missing}` (it has {:?})",
                    self.columns
                ),
            ));
        }
        if let (Some(guard), Some(_)) = (&self.config.newer_than, &self.config.delete_when) {
            let keys = self.config.key.iter().map(|k| ident(k)).collect::<Vec<_>>();
            client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {tomb} AS SELECT {cols} FROM {table} WITH NO DATA;
                     CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {tomb} ({keys})",
                    tomb = self.tombstones(),
                    cols = keys
                        .iter()
                        .cloned()
                        .chain([ident(guard)])
                        .collect::<Vec<_>>()
                        .join(", "),
                    table = ident(&self.config.table),
                    index = ident(&format!("{}__weir_tombstones_key", table)),
                    keys = keys.join(", "),
                ))
                .await
                .map_err(|e| self.error("cannot create the tombstone table", describe(&e)))?;
        }
        self.client = Some(client);
        Ok(self.client.as_mut().expect("set above"))
    }

    fn tombstones(&self) -> String {
        ident(&format!("{}__weir_tombstones", self.config.table))
    }

    /// Applies epoch `epoch`'s rows in one transaction, unless the ledger
    /// shows the epoch was applied before.
    pub async fn commit(&mut self, epoch: u64, batches: &[RecordBatch]) -> Result<CommitOutcome> {
        self.connect().await?;
        let statements = self.statements(batches)?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let (query_id, name) = (self.query_id.clone(), self.name.clone());
        let ledger = ident(&self.config.ledger_table);
        let label = &self.label;
        let fail = |what: &str, e: tokio_postgres::Error| WeirError::Sink {
            sink: label.clone(),
            reason: format!("{what}: {}", describe(&e)),
        };
        let client = self.client.as_mut().expect("connected above");
        let txn = client
            .transaction()
            .await
            .map_err(|e| fail("cannot begin", e))?;
        let epoch = epoch as i64;
        let done = txn
            .query_opt(
                &format!(
                    "SELECT 1 FROM {ledger} WHERE query_id = $1 AND output = $2 AND epoch = $3"
                ),
                &[&query_id, &name, &epoch],
            )
            .await
            .map_err(|e| fail("cannot read the epoch ledger", e))?;
        if done.is_some() {
            return Ok(CommitOutcome::AlreadyCommitted);
        }
        for (sql, json) in &statements {
            txn.execute(sql.as_str(), &[json])
                .await
                .map_err(|e| fail("cannot apply the rows", e))?;
        }
        txn.execute(
            &format!(
                "INSERT INTO {ledger} (query_id, output, epoch, rows) VALUES ($1, $2, $3, $4)"
            ),
            &[&query_id, &name, &epoch, &(rows as i64)],
        )
        .await
        .map_err(|e| fail("cannot record the epoch in the ledger", e))?;
        crash_point("postgres-before-commit", epoch as u64);
        txn.commit().await.map_err(|e| fail("cannot commit", e))?;
        crash_point("postgres-after-commit", epoch as u64);
        Ok(CommitOutcome::Written)
    }

    /// The SQL statements (each with its JSON rows) that apply `batches`.
    fn statements(&self, batches: &[RecordBatch]) -> Result<Vec<(String, String)>> {
        let Some(first) = batches.first() else {
            return Ok(Vec::new());
        };
        let all = concat_batches(&first.schema(), batches)
            .map_err(|e| self.error("rows of one epoch differ in schema", e))?;
        let table = ident(&self.config.table);
        let source = format!("json_populate_recordset(NULL::{table}, $1::text::json)");
        let schema = all.schema();
        let written: Vec<&String> = schema
            .fields()
            .iter()
            .map(|f| f.name())
            .filter(|n| self.columns.contains(n))
            .collect();
        let column_list = written
            .iter()
            .map(|c| ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        if self.config.mode == PostgresMode::Append {
            return Ok(vec![(
                format!("INSERT INTO {table} ({column_list}) SELECT {column_list} FROM {source}"),
                json_rows(&all)?,
            )]);
        }
        let (upserts, deletes) = self.latest_per_key(&all)?;
        let keys: Vec<String> = self.config.key.iter().map(|k| ident(k)).collect();
        let key_match = |a: &str, b: &str| {
            keys.iter()
                .map(|k| format!("{a}.{k} = {b}.{k}"))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let guard = self.config.newer_than.as_deref().map(ident);
        let mut statements = Vec::new();
        if deletes.num_rows() > 0 {
            let newer = guard
                .as_ref()
                .map(|g| format!(" AND t.{g} <= d.{g}"))
                .unwrap_or_default();
            statements.push((
                format!(
                    "DELETE FROM {table} AS t USING {source} AS d WHERE {}{newer}",
                    key_match("t", "d")
                ),
                json_rows(&deletes)?,
            ));
            if let Some(g) = &guard {
                let tomb = self.tombstones();
                let cols = keys
                    .iter()
                    .cloned()
                    .chain([g.clone()])
                    .collect::<Vec<_>>()
                    .join(", ");
                statements.push((
                    format!(
                        "INSERT INTO {tomb} AS x ({cols}) SELECT {cols} FROM {source} \
                         ON CONFLICT ({}) DO UPDATE SET {g} = EXCLUDED.{g} WHERE x.{g} < EXCLUDED.{g}",
                        keys.join(", ")
                    ),
                    json_rows(&deletes)?,
                ));
            }
        }
        if upserts.num_rows() > 0 {
            let not_deleted = match (&guard, &self.config.delete_when) {
                (Some(g), Some(_)) => format!(
                    " WHERE NOT EXISTS (SELECT 1 FROM {} AS x WHERE {} AND x.{g} >= u.{g})",
                    self.tombstones(),
                    key_match("x", "u")
                ),
                _ => String::new(),
            };
            let updates: Vec<String> = written
                .iter()
                .filter(|c| !self.config.key.contains(c))
                .map(|c| format!("{0} = EXCLUDED.{0}", ident(c)))
                .collect();
            let on_conflict = if updates.is_empty() {
                "DO NOTHING".to_string()
            } else {
                let newer = guard
                    .as_ref()
                    .map(|g| format!(" WHERE t.{g} < EXCLUDED.{g}"))
                    .unwrap_or_default();
                format!("DO UPDATE SET {}{newer}", updates.join(", "))
            };
            statements.push((
                format!(
                    "INSERT INTO {table} AS t ({column_list}) SELECT {column_list} FROM {source} AS u{not_deleted} \
                     ON CONFLICT ({}) {on_conflict}",
                    keys.join(", ")
                ),
                json_rows(&upserts)?,
            ));
        }
        Ok(statements)
    }

    /// One row per key — the greatest guard, then the last — split into
    /// upserts and deletes.
    fn latest_per_key(&self, all: &RecordBatch) -> Result<(RecordBatch, RecordBatch)> {
        rules(&self.config)
            .latest_per_key(all)
            .map_err(|e| self.error("selecting the latest row per key", e))
    }
}

fn rules(config: &PostgresOutputConfig) -> UpsertRules<'_> {
    UpsertRules {
        key: &config.key,
        newer_than: config.newer_than.as_deref(),
        delete_when: config.delete_when.as_ref(),
    }
}

/// Rows as one JSON array (nulls omitted: PostgreSQL fills in NULL).
fn json_rows(batch: &RecordBatch) -> Result<String> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    writer
        .write(batch)
        .and_then(|_| writer.finish())
        .map_err(|e| WeirError::format("encoding rows for postgres", e))?;
    String::from_utf8(writer.into_inner())
        .map_err(|e| WeirError::Internal(format!("JSON is UTF-8: {e}")))
}

/// The server's message and detail, not just "db error".
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_string();
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => e.to_string(),
    }
}
