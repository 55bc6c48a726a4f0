//! SQLite target.
//!
//! **File and connection.** The database is the file at the target's `path`. The file is
//! created when missing; its directory is not (a missing directory is a fatal error naming
//! the path). The sink holds one connection, which is the only writer it needs: every
//! write transaction starts with `BEGIN IMMEDIATE`, so it takes SQLite's write lock up
//! front and waits up to [`BUSY_TIMEOUT`] for another writer (a second pipeline on the
//! same file, a user's script) instead of failing half-way; past that, `SQLITE_BUSY` is a
//! transient error and the batch is retried. Readers are never blocked (WAL).
//!
//! **Durability: `journal_mode = WAL`, `synchronous = FULL`.** The engine acknowledges a
//! position to the source as soon as `commit` returns, and the source may then discard
//! everything up to it (the Postgres slot advances). With `synchronous = NORMAL` a WAL
//! commit survives a crash of the process but not of the machine (power loss, kernel
//! panic): the last commits could vanish while the source has already released them, and
//! those changes would be lost for good. `FULL` syncs the WAL at every commit, so a
//! returned commit is on disk. It costs one fsync per target transaction, and a target
//! transaction carries a whole batch of source transactions.
//!
//! **Table names.** SQLite has no schemas (only attached databases), so a target table
//! `schema.name` is written to the SQLite table `name` in the main database: the schema
//! part is dropped, whatever it is (`public.orders` → `orders`). This keeps the common
//! case obvious (`SELECT * FROM orders`). Two configured tables that would land in one
//! SQLite table (`public.orders` and `sales.orders`) are a fatal error at start naming
//! both; rename one in `[pipelines.tables]` (`"sales.orders" = "sales_orders"`).
//!
//! **Apply.** One target transaction per batch. Per table segment: `DELETE FROM t` for a
//! source truncate; rows moved to a new key with unsent TOAST columns (one
//! `INSERT ... SELECT` joining the old key's row); deletes (`DELETE ... WHERE key IN
//! (...)`); full rows as multi-row `INSERT ... VALUES (...), (...) ON CONFLICT (key) DO
//! UPDATE`; rows with unsent columns as `UPDATE ... FROM (VALUES ...)` of the sent
//! columns only. Each statement binds many rows (up to [`MAX_PARAMS`] parameters, in
//! power-of-two row counts so a table needs only a few distinct statements, each prepared
//! once and cached by sqlx). Values are always bound, never formatted into SQL. Dead
//! letters and the checkpoint are written in the same transaction.
//!
//! **Schema.** Missing tables are created from the source schema (types per
//! [`crate::types::declared_type`], same primary key); missing columns are added with
//! `ALTER TABLE ADD COLUMN`, and when the source reports a value for rows that existed
//! before the column (`existing_rows_value`), those rows are set to it with a bound
//! `UPDATE` in the same transaction. A source type change that SQLite would store
//! differently (e.g. `int` → `numeric`) is fatal with the fix: SQLite cannot change a
//! column's type in place. Foreign keys are not enforced on the replica
//! (`foreign_keys = OFF`): the source already enforced them, and a batch applies tables
//! in segment order, not in the source's statement order.

mod scratch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Row, Sqlite};
use tidewater_core::{
    ApplyBatch, ApplyReport, Checkpoint, ConnectorError, CopiedTable, DeadLetter, ErrorClass, Isolator, KeyRange,
    MovedRow, RowKind, Sink, TableChanges, TableId, TablePlan, TableSchema, Value, ROW_KINDS_IN_ORDER,
};

use crate::sql::{quote_ident, sqlite_error};
use crate::types::{declared_type, format_utc, to_bound, value_from_text, Affinity, Bound};

const MIGRATIONS: &[(&str, &str)] =
    &[("0001_bookkeeping", include_str!("../../../migrations/sqlite/0001_bookkeeping.sql"))];
/// Migrations that add a column, each run only when `(table, column)` is missing.
const COLUMN_MIGRATIONS: &[(&str, &str, &str, &str)] = &[
    (
        "0002_copied_position",
        "tidewater_snapshot_tables",
        "copied_position",
        include_str!("../../../migrations/sqlite/0002_copied_position.sql"),
    ),
    (
        "0003_copy_progress",
        "tidewater_checkpoints",
        "copy_progress",
        include_str!("../../../migrations/sqlite/0003_copy_progress.sql"),
    ),
];

/// How long a write waits for another connection's write lock before `SQLITE_BUSY`.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound parameters per statement (SQLite allows 32766 since 3.32).
pub const MAX_PARAMS: usize = 30_000;
/// Rows per statement, at most. Measured (500k rows of 8 columns, 20k-row batches):
/// 1 row per statement ~75k rows/s, 16 ~230k, 64 and more ~250k: bigger statements gain
/// nothing but cost memory in the statement cache.
pub const MAX_ROWS_PER_STATEMENT: usize = 128;
/// Prepared statements kept per connection (up to 8 row counts per table and row kind).
const STATEMENT_CACHE_CAPACITY: usize = 256;

type SqliteQuery<'q> = Query<'q, Sqlite, SqliteArguments<'q>>;

static NULL: Value = Value::Null;

/// The SQLite table a target table is written to: its name, without the schema (see the
/// module documentation).
pub fn sqlite_table_name(target: &TableId) -> &str {
    &target.name
}

/// What the sink knows about a target table it has reconciled.
#[derive(Debug, Clone)]
struct TargetTable {
    /// The source schema the table was last reconciled with.
    schema: Arc<TableSchema>,
    /// Affinity of the target column of each source column, in source column order.
    affinity: Vec<Affinity>,
}

/// Reconciled target tables by SQLite table name.
type Tables = HashMap<String, TargetTable>;

/// The SQLite target. See the module documentation.
pub struct SqliteSink {
    path: PathBuf,
    conn: Option<SqliteConnection>,
    /// A large source transaction's target transaction is open on `conn`.
    large_open: bool,
    /// `tables` as it was when the large transaction began (restored on rollback).
    large_saved: Option<Tables>,
    tables: Tables,
}

impl SqliteSink {
    pub fn new(path: PathBuf) -> Self {
        SqliteSink { path, conn: None, large_open: false, large_saved: None, tables: HashMap::new() }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the connection out (opening it when needed); [`SqliteSink::finish`] puts it back.
    async fn take_conn(&mut self) -> Result<SqliteConnection, ConnectorError> {
        match self.conn.take() {
            Some(c) => Ok(c),
            None => {
                self.tables.clear();
                open(&self.path).await
            }
        }
    }

    /// Ends a call: on error rolls back whatever is open and restores what the sink knew
    /// about the tables before it (`saved`); keeps the connection unless it broke.
    async fn finish<T>(
        &mut self,
        mut conn: SqliteConnection,
        result: Result<T, ConnectorError>,
        saved: Tables,
    ) -> Result<T, ConnectorError> {
        if result.is_err() {
            if rollback(&mut conn).await {
                self.tables = saved;
                self.conn = Some(conn);
            } else {
                self.tables.clear();
            }
        } else {
            self.conn = Some(conn);
        }
        result
    }
}

/// Opens (creating when missing) the database file with the sink's settings.
async fn open(path: &Path) -> Result<SqliteConnection, ConnectorError> {
    crate::check::check_location(path)?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(false)
        .statement_cache_capacity(STATEMENT_CACHE_CAPACITY)
        .disable_statement_logging();
    let mut conn = options
        .connect()
        .await
        .map_err(|e| sqlite_error(format_args!("opening the SQLite database {}", path.display()), path, e))?;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| sqlite_error("reading the journal mode", path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Still durable (synchronous = FULL), but readers block the writer.
        tracing::warn!(path = %path.display(), journal_mode = %mode, "SQLite target is not in WAL mode (file system without shared memory?)");
    }
    Ok(conn)
}

/// Rolls back whatever transaction is open. False when the connection is unusable.
async fn rollback(conn: &mut SqliteConnection) -> bool {
    match sqlx::query("ROLLBACK").execute(&mut *conn).await {
        // A database error here means there was nothing to roll back (SQLite rolls back by
        // itself after some errors): the connection is fine.
        Ok(_) | Err(sqlx::Error::Database(_)) => true,
        Err(_) => false,
    }
}

/// An error in a statement that no single row caused (bookkeeping, DDL, truncate): even a
/// constraint failure there is not something a dead letter could absorb.
fn not_row_tied(mut e: ConnectorError) -> ConnectorError {
    if e.class == ErrorClass::Event {
        e.class = ErrorClass::Fatal;
    }
    e
}

#[async_trait]
impl Sink for SqliteSink {
    async fn prepare(&mut self) -> Result<(), ConnectorError> {
        let saved = self.tables.clone();
        let mut conn = self.take_conn().await?;
        let mut w = Writer { conn: &mut conn, path: &self.path, tables: &mut self.tables };
        let result = async {
            // BEGIN IMMEDIATE serializes concurrent starts of several pipelines on one file.
            w.exec("BEGIN IMMEDIATE", "starting the migrations").await?;
            for (name, sql) in MIGRATIONS {
                // Without parameters, sqlx runs every statement of the text.
                sqlx::query(sql)
                    .execute(&mut *w.conn)
                    .await
                    .map_err(|e| not_row_tied(w.err(format_args!("running migration {name} on the target"), e)))?;
            }
            for (name, table, column, sql) in COLUMN_MIGRATIONS {
                let present: i64 = sqlx::query_scalar("SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2")
                    .bind(*table)
                    .bind(*column)
                    .fetch_one(&mut *w.conn)
                    .await
                    .map_err(|e| not_row_tied(w.err(format_args!("checking migration {name} on the target"), e)))?;
                if present == 0 {
                    sqlx::query(sql)
                        .execute(&mut *w.conn)
                        .await
                        .map_err(|e| not_row_tied(w.err(format_args!("running migration {name} on the target"), e)))?;
                }
            }
            w.exec("COMMIT", "committing the migrations").await
        }
        .await;
        self.finish(conn, result.map(drop), saved).await
    }

    async fn list_dead_letters(
        &mut self,
        pipeline: &str,
    ) -> Result<Vec<tidewater_core::DeadLetterRecord>, ConnectorError> {
        let saved = self.tables.clone();
        let mut conn = self.take_conn().await?;
        let path = self.path.clone();
        let result = async {
            let rows = sqlx::query(
                "SELECT id, source_position, source_table, target_table, op, payload, error, failed_at, replayed_at \
                 FROM tidewater_dead_letters WHERE pipeline = ?1 ORDER BY id",
            )
            .bind(pipeline)
            .fetch_all(&mut conn)
            .await
            .map_err(|e| sqlite_error("reading tidewater_dead_letters", &path, e))?;
            rows.iter()
                .map(|r| {
                    Ok(tidewater_core::DeadLetterRecord {
                        id: r.try_get(0)?,
                        source_position: r.try_get(1)?,
                        source_table: r.try_get(2)?,
                        target_table: r.try_get(3)?,
                        op: r.try_get(4)?,
                        payload: r.try_get(5)?,
                        error: r.try_get(6)?,
                        failed_at: r.try_get(7)?,
                        replayed_at: r.try_get(8)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(|e| not_row_tied(sqlite_error("reading tidewater_dead_letters", &path, e)))
        }
        .await;
        self.finish(conn, result, saved).await
    }

    async fn load_checkpoint(&mut self, pipeline: &str) -> Result<Option<Checkpoint>, ConnectorError> {
        let saved = self.tables.clone();
        let mut conn = self.take_conn().await?;
        let path = self.path.clone();
        let result = async {
            let row =
                sqlx::query("SELECT source_position, snapshot_complete, copy_progress FROM tidewater_checkpoints WHERE pipeline = ?1")
                    .bind(pipeline)
                    .fetch_optional(&mut conn)
                    .await
                    .map_err(|e| sqlite_error("reading the checkpoint from the target", &path, e))?;
            row.map(|r| {
                Ok(Checkpoint {
                    position: r.try_get::<String, _>(0)?,
                    snapshot_complete: r.try_get::<i64, _>(1)? != 0,
                    copy_progress: r.try_get::<Option<String>, _>(2)?,
                })
            })
            .transpose()
            .map_err(|e: sqlx::Error| not_row_tied(sqlite_error("reading tidewater_checkpoints", &path, e)))
        }
        .await;
        self.finish(conn, result, saved).await
    }

    async fn ensure_tables(&mut self, plans: &[TablePlan]) -> Result<(), ConnectorError> {
        check_name_collisions(plans)?;
        let saved = self.tables.clone();
        let mut conn = self.take_conn().await?;
        let mut w = Writer { conn: &mut conn, path: &self.path, tables: &mut self.tables };
        let result = async {
            w.begin().await?;
            for plan in plans {
                w.reconcile(&plan.source, &plan.target).await?;
            }
            w.exec("COMMIT", "committing target tables").await
        }
        .await;
        self.finish(conn, result.map(drop), saved).await
    }

    async fn reset_for_snapshot(
        &mut self,
        pipeline: &str,
        tables: &[TableId],
        checkpoint: &Checkpoint,
    ) -> Result<(), ConnectorError> {
        let saved = self.tables.clone();
        let mut conn = self.take_conn().await?;
        let mut w = Writer { conn: &mut conn, path: &self.path, tables: &mut self.tables };
        let result = async {
            w.begin().await?;
            sqlx::query("DELETE FROM tidewater_snapshot_tables WHERE pipeline = ?1")
                .bind(pipeline)
                .execute(&mut *w.conn)
                .await
                .map_err(|e| not_row_tied(w.err("resetting tidewater_snapshot_tables", e)))?;
            for table in tables {
                let name = sqlite_table_name(table);
                w.exec(
                    &format!("DELETE FROM {}", quote_ident(name)),
                    format!("emptying {name} to restart the snapshot"),
                )
                .await?;
            }
            w.write_checkpoint(pipeline, checkpoint).await?;
            w.exec("COMMIT", "committing the snapshot reset").await
        }
        .await;
        self.finish(conn, result.map(drop), saved).await
    }

    async fn snapshotted_tables(&mut self, pipeline: &str) -> Result<Vec<CopiedTable>, ConnectorError> {
        let saved = self.tables.clone();
        let mut conn = self.take_conn().await?;
        let path = self.path.clone();
        let result = async {
            let rows: Vec<(String, Option<String>)> = sqlx::query_as(
                "SELECT source_table, copied_position FROM tidewater_snapshot_tables WHERE pipeline = ?1",
            )
            .bind(pipeline)
            .fetch_all(&mut conn)
            .await
            .map_err(|e| not_row_tied(sqlite_error("reading tidewater_snapshot_tables", &path, e)))?;
            Ok(rows.into_iter().map(|(n, p)| CopiedTable::new(TableId::parse(&n, "public"), p)).collect())
        }
        .await;
        self.finish(conn, result, saved).await
    }

    async fn complete_snapshot(
        &mut self,
        pipeline: &str,
        tables: &[CopiedTable],
        checkpoint: &Checkpoint,
    ) -> Result<(), ConnectorError> {
        let saved = self.tables.clone();
        let mut conn = self.take_conn().await?;
        let mut w = Writer { conn: &mut conn, path: &self.path, tables: &mut self.tables };
        let result = async {
            w.begin().await?;
            let now = format_utc(chrono::Utc::now());
            for copied in tables {
                sqlx::query(
                    "INSERT INTO tidewater_snapshot_tables (pipeline, source_table, copied_at, copied_position) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (pipeline, source_table) \
                     DO UPDATE SET copied_at = excluded.copied_at, copied_position = excluded.copied_position",
                )
                .bind(pipeline)
                .bind(copied.table.to_string())
                .bind(&now)
                .bind(copied.position.as_deref())
                .execute(&mut *w.conn)
                .await
                .map_err(|e| not_row_tied(w.err("recording copied tables", e)))?;
            }
            w.write_checkpoint(pipeline, checkpoint).await?;
            w.exec("COMMIT", "committing the snapshot's end").await
        }
        .await;
        self.finish(conn, result.map(drop), saved).await
    }

    async fn apply(&mut self, batch: &ApplyBatch) -> Result<ApplyReport, ConnectorError> {
        let saved = self.tables.clone();
        let mut conn = self.take_conn().await?;
        let mut w = Writer { conn: &mut conn, path: &self.path, tables: &mut self.tables };
        let result = async {
            w.begin().await?;
            let mut report = ApplyReport::default();
            for changes in &batch.tables {
                report.rows_written += w.apply_table(changes).await?;
            }
            w.write_checkpoint(&batch.pipeline, &batch.checkpoint).await?;
            w.exec("COMMIT", "committing the batch").await?;
            Ok(report)
        }
        .await;
        self.finish(conn, result, saved).await
    }

    async fn apply_isolating(&mut self, batch: &ApplyBatch) -> Result<ApplyReport, ConnectorError> {
        let saved = self.tables.clone();
        let mut conn = self.take_conn().await?;
        let mut w = Writer { conn: &mut conn, path: &self.path, tables: &mut self.tables };
        let result = async {
            w.begin().await?;
            let mut report = ApplyReport::default();
            let mut dead_letters = Vec::new();
            for changes in &batch.tables {
                report.rows_written += w.apply_table_isolating(batch, changes, &mut dead_letters).await?;
            }
            report.dead_letters = dead_letters.len() as u64;
            w.write_dead_letters(&batch.pipeline, &dead_letters).await?;
            w.write_checkpoint(&batch.pipeline, &batch.checkpoint).await?;
            w.exec("COMMIT", "committing the batch").await?;
            Ok(report)
        }
        .await;
        self.finish(conn, result, saved).await
    }

    async fn begin_large(&mut self) -> Result<(), ConnectorError> {
        self.abort_large().await;
        let saved = self.tables.clone();
        let mut conn = self.take_conn().await?;
        let mut w = Writer { conn: &mut conn, path: &self.path, tables: &mut self.tables };
        let result = w.begin().await;
        if result.is_ok() {
            self.large_open = true;
            self.large_saved = Some(saved.clone());
        }
        self.finish(conn, result, saved).await
    }

    async fn apply_part(&mut self, part: &ApplyBatch, isolate: bool) -> Result<ApplyReport, ConnectorError> {
        let conn = match (&mut self.conn, self.large_open) {
            (Some(conn), true) => conn,
            _ => return Err(ConnectorError::fatal("apply_part without begin_large")),
        };
        // On error the transaction stays open for abort_large, as the contract says.
        Writer { conn, path: &self.path, tables: &mut self.tables }.apply_part_in_open_transaction(part, isolate).await
    }

    async fn commit_large(&mut self, last: &ApplyBatch, isolate: bool) -> Result<ApplyReport, ConnectorError> {
        let Some(mut conn) = self.conn.take_if(|_| self.large_open) else {
            return Err(ConnectorError::fatal("commit_large without begin_large"));
        };
        self.large_open = false;
        let saved = self.large_saved.take().unwrap_or_default();
        let mut w = Writer { conn: &mut conn, path: &self.path, tables: &mut self.tables };
        let result = async {
            let report = w.apply_part_in_open_transaction(last, isolate).await?;
            w.write_checkpoint(&last.pipeline, &last.checkpoint).await?;
            w.exec("COMMIT", "committing the transaction").await?;
            Ok(report)
        }
        .await;
        self.finish(conn, result, saved).await
    }

    async fn abort_large(&mut self) {
        if !self.large_open {
            return;
        }
        self.large_open = false;
        let saved = self.large_saved.take().unwrap_or_default();
        if let Some(mut conn) = self.conn.take() {
            if rollback(&mut conn).await {
                self.conn = Some(conn);
                self.tables = saved;
                return;
            }
        }
        self.tables.clear();
    }

    // verify / dlq replay: see sink/scratch.rs
    async fn apply_changes(&mut self, changes: &TableChanges, replayed: Option<i64>) -> Result<u64, ConnectorError> {
        self.apply_changes_now(changes, replayed).await
    }

    async fn note_replay_failure(&mut self, id: i64, error: &str) -> Result<(), ConnectorError> {
        self.note_failure(id, error).await
    }

    async fn create_scratch(&mut self, schema: &TableSchema, target: &TableId) -> Result<TableId, ConnectorError> {
        self.scratch_copy(schema, target).await
    }

    async fn compare_scratch(
        &mut self,
        schema: &TableSchema,
        target: &TableId,
        scratch: &TableId,
        examples: usize,
    ) -> Result<tidewater_core::Comparison, ConnectorError> {
        self.compare(schema, target, scratch, examples).await
    }

    async fn drop_scratch(&mut self, scratch: &TableId) -> Result<(), ConnectorError> {
        self.drop_scratch_table(scratch).await
    }
}

/// Two configured tables that would be written to one SQLite table.
fn check_name_collisions(plans: &[TablePlan]) -> Result<(), ConnectorError> {
    let mut seen: HashMap<&str, &TablePlan> = HashMap::new();
    for plan in plans {
        let name = sqlite_table_name(&plan.target);
        if let Some(other) = seen.insert(name, plan) {
            if other.source.id != plan.source.id {
                return Err(ConnectorError::fatal(format!(
                    "source tables {} and {} would both be written to the SQLite table {name:?} (SQLite has no \
                     schemas, the target's schema part is dropped); rename one in [pipelines.tables], e.g. \
                     \"{}\" = \"{}_{}\"",
                    other.source.id, plan.source.id, plan.source.id, plan.target.schema, plan.target.name
                )));
            }
        }
    }
    Ok(())
}

fn has_unchanged(row: &[Value]) -> bool {
    row.iter().any(|v| matches!(v, Value::Unchanged))
}

/// Which columns of `row` were sent (not unchanged TOAST).
fn sent_mask(row: &[Value]) -> Vec<bool> {
    row.iter().map(|v| !matches!(v, Value::Unchanged)).collect()
}

/// Splits `n` rows of `params_per_row` parameters into statement-sized ranges: full
/// chunks of the largest power of two that fits, then the rest in decreasing powers of
/// two, so each table and row kind needs at most ~10 distinct (cached) statements.
fn chunks(n: usize, params_per_row: usize) -> Vec<Range<usize>> {
    let fit = (MAX_PARAMS / params_per_row.max(1)).clamp(1, MAX_ROWS_PER_STATEMENT);
    let max = 1usize << (usize::BITS - 1 - fit.leading_zeros());
    let mut out = Vec::new();
    let mut start = 0;
    while n - start >= max {
        out.push(start..start + max);
        start += max;
    }
    let mut size = max / 2;
    while size > 0 {
        if n - start >= size {
            out.push(start..start + size);
            start += size;
        }
        size /= 2;
    }
    out
}

/// `(?,?,?),(?,?,?)`: `rows` groups of `width` placeholders.
fn values_list(rows: usize, width: usize) -> String {
    let one = format!("({})", vec!["?"; width].join(","));
    vec![one; rows].join(",")
}

fn column_list(schema: &TableSchema, columns: impl IntoIterator<Item = usize>) -> String {
    columns.into_iter().map(|i| quote_ident(&schema.columns[i].name)).collect::<Vec<_>>().join(", ")
}

/// `ON CONFLICT (key) DO UPDATE SET <every non-key column>` (or `DO NOTHING`).
fn upsert_conflict_clause(schema: &TableSchema) -> String {
    if schema.is_keyless() {
        // Rows are appended: equal rows are rows of their own.
        return String::new();
    }
    let key = column_list(schema, schema.key.iter().copied());
    let sets: Vec<String> = (0..schema.columns.len())
        .filter(|i| !schema.key.contains(i))
        .map(|i| {
            let c = quote_ident(&schema.columns[i].name);
            format!("{c} = excluded.{c}")
        })
        .collect();
    if sets.is_empty() {
        format!("ON CONFLICT ({key}) DO NOTHING")
    } else {
        format!("ON CONFLICT ({key}) DO UPDATE SET {}", sets.join(", "))
    }
}

/// Binds `row`'s values of `columns`, converted for the target columns' affinities.
fn bind_row<'q>(
    mut q: SqliteQuery<'q>,
    schema: &TableSchema,
    affinity: &[Affinity],
    row: &'q [Value],
    columns: &[usize],
) -> Result<SqliteQuery<'q>, ConnectorError> {
    for &i in columns {
        let value = row.get(i).unwrap_or(&NULL);
        let bound = to_bound(value, affinity[i])
            .map_err(|e| ConnectorError::event(format!("column {}: {e}", schema.columns[i].name)))?;
        q = match bound {
            Bound::Null => q.bind(None::<i64>),
            Bound::Int(v) => q.bind(v),
            Bound::Real(v) => q.bind(v),
            Bound::Text(v) => q.bind(v),
            Bound::Blob(v) => q.bind(v),
        };
    }
    Ok(q)
}

/// A target column as SQLite describes it.
struct TargetColumn {
    name: String,
    declared: String,
    /// Position in the primary key (1-based), 0 when not part of it.
    pk: i64,
}

/// The connection, the file's path for messages, and what the sink knows about the
/// tables: everything a statement needs.
struct Writer<'a> {
    conn: &'a mut SqliteConnection,
    path: &'a Path,
    tables: &'a mut Tables,
}

impl Writer<'_> {
    fn err(&self, what: impl std::fmt::Display, e: sqlx::Error) -> ConnectorError {
        sqlite_error(what, self.path, e)
    }

    /// Runs one statement without parameters (transaction control, DDL, truncate).
    async fn exec(&mut self, sql: &str, what: impl std::fmt::Display + Send) -> Result<(), ConnectorError> {
        sqlx::query(sql).execute(&mut *self.conn).await.map(drop).map_err(|e| not_row_tied(self.err(what, e)))
    }

    async fn begin(&mut self) -> Result<(), ConnectorError> {
        self.exec("BEGIN IMMEDIATE", "starting a target transaction").await
    }

    async fn write_checkpoint(&mut self, pipeline: &str, checkpoint: &Checkpoint) -> Result<(), ConnectorError> {
        sqlx::query(
            "INSERT INTO tidewater_checkpoints (pipeline, source_position, snapshot_complete, updated_at, copy_progress) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (pipeline) DO UPDATE SET \
             source_position = excluded.source_position, snapshot_complete = excluded.snapshot_complete, \
             updated_at = excluded.updated_at, copy_progress = excluded.copy_progress",
        )
        .bind(pipeline)
        .bind(&checkpoint.position)
        .bind(i64::from(checkpoint.snapshot_complete))
        .bind(format_utc(chrono::Utc::now()))
        .bind(&checkpoint.copy_progress)
        .execute(&mut *self.conn)
        .await
        .map_err(|e| not_row_tied(self.err("writing the checkpoint", e)))?;
        Ok(())
    }

    async fn write_dead_letters(&mut self, pipeline: &str, dead_letters: &[DeadLetter]) -> Result<(), ConnectorError> {
        if dead_letters.is_empty() {
            return Ok(());
        }
        let now = format_utc(chrono::Utc::now());
        for dl in dead_letters {
            sqlx::query(
                "INSERT INTO tidewater_dead_letters \
                 (pipeline, source_position, source_table, target_table, op, payload, error, failed_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .bind(pipeline)
            .bind(&dl.source_position)
            .bind(&dl.source_table)
            .bind(&dl.target_table)
            .bind(&dl.op)
            .bind(dl.payload.to_string())
            .bind(&dl.error)
            .bind(&now)
            .execute(&mut *self.conn)
            .await
            .map_err(|e| not_row_tied(self.err("writing a dead letter", e)))?;
        }
        Ok(())
    }

    /// One part of a large source transaction, inside the open target transaction. The
    /// part runs under a savepoint so that, when the target rejects a row, only this part
    /// is rolled back and re-applied row-isolating.
    async fn apply_part_in_open_transaction(
        &mut self,
        part: &ApplyBatch,
        isolate: bool,
    ) -> Result<ApplyReport, ConnectorError> {
        let saved = self.tables.clone();
        self.exec("SAVEPOINT tidewater_part", "setting a savepoint").await?;
        let mut report = ApplyReport::default();
        let mut failure = None;
        for changes in &part.tables {
            match self.apply_table(changes).await {
                Ok(n) => report.rows_written += n,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        match failure {
            None => {
                self.exec("RELEASE tidewater_part", "releasing a savepoint").await?;
                Ok(report)
            }
            Some(e) if e.class == ErrorClass::Event && isolate => {
                self.exec("ROLLBACK TO tidewater_part", "rolling back to a savepoint").await?;
                *self.tables = saved; // columns added inside the part are gone again
                let mut report = ApplyReport::default();
                let mut dead_letters = Vec::new();
                for changes in &part.tables {
                    report.rows_written += self.apply_table_isolating(part, changes, &mut dead_letters).await?;
                }
                report.dead_letters = dead_letters.len() as u64;
                self.write_dead_letters(&part.pipeline, &dead_letters).await?;
                self.exec("RELEASE tidewater_part", "releasing a savepoint").await?;
                Ok(report)
            }
            Some(e) => Err(e),
        }
    }

    /// Applies one table segment; returns the rows it touched.
    async fn apply_table(&mut self, changes: &TableChanges) -> Result<u64, ConnectorError> {
        self.prepare_segment(changes).await?;
        let mut rows = 0;
        for kind in ROW_KINDS_IN_ORDER {
            rows += self.apply_set(changes, kind, 0..changes.kind_len(kind)).await?;
        }
        Ok(rows)
    }

    /// Applies a segment's rows, setting aside each row the target rejects: a failing
    /// group is rolled back to its savepoint and split in half until the failing rows stand
    /// alone. Keys are distinct, so applying subsets in any order ends in the same state.
    async fn apply_table_isolating(
        &mut self,
        batch: &ApplyBatch,
        changes: &TableChanges,
        dead_letters: &mut Vec<DeadLetter>,
    ) -> Result<u64, ConnectorError> {
        self.prepare_segment(changes).await?;
        let mut iso = Isolator::new(changes);
        while let Some((kind, range)) = iso.next_range(changes) {
            self.exec("SAVEPOINT tidewater_rows", "setting a savepoint").await?;
            match self.apply_set(changes, kind, range).await {
                Ok(n) => iso.applied(n),
                Err(e) if e.class == ErrorClass::Event => {
                    self.exec("ROLLBACK TO tidewater_rows", "rolling back to a savepoint").await?;
                    iso.rejected(changes, batch, &e, dead_letters);
                }
                Err(e) => return Err(e),
            }
            self.exec("RELEASE tidewater_rows", "releasing a savepoint").await?;
        }
        Ok(iso.written())
    }

    /// Reconciles the target table with the segment's schema and runs its truncate.
    async fn prepare_segment(&mut self, changes: &TableChanges) -> Result<(), ConnectorError> {
        let name = sqlite_table_name(&changes.target);
        let current = self
            .tables
            .get(name)
            .is_some_and(|t| Arc::ptr_eq(&t.schema, &changes.schema) || *t.schema == *changes.schema);
        if !current {
            self.reconcile(&changes.schema, &changes.target).await?;
        }
        if changes.truncate {
            self.exec(&format!("DELETE FROM {}", quote_ident(name)), format!("truncating {name}")).await?;
        }
        if let Some(range) = &changes.clear {
            self.clear_range(changes, range).await?;
        }
        Ok(())
    }

    /// Deletes the target rows in `range` (see [`KeyRange`]); SQLite compares text by its
    /// bytes already (the tables it creates use the BINARY collation).
    async fn clear_range(&mut self, changes: &TableChanges, range: &KeyRange) -> Result<(), ConnectorError> {
        let schema = &changes.schema;
        let name = sqlite_table_name(&changes.target).to_string();
        let affinity = self.affinity(&changes.target)?;
        let width = schema.key.len();
        let keys = column_list(schema, schema.key.iter().copied());
        let one = format!("({})", vec!["?"; width].join(", "));
        let mut terms = Vec::new();
        if range.after.is_some() {
            terms.push(format!("({keys}) > {one}"));
        }
        if range.upto.is_some() {
            terms.push(format!("({keys}) <= {one}"));
        }
        if !range.keep.is_empty() {
            terms.push(format!("({keys}) NOT IN (VALUES {})", vec![one.as_str(); range.keep.len()].join(", ")));
        }
        let mut sql = format!("DELETE FROM {}", quote_ident(&name));
        if !terms.is_empty() {
            sql.push_str(&format!(" WHERE {}", terms.join(" AND ")));
        }
        // Full-width rows holding only the key values, for the usual binding.
        let rows: Vec<Vec<Value>> = [&range.after, &range.upto]
            .into_iter()
            .flatten()
            .chain(&range.keep)
            .map(|key| {
                let mut row = vec![Value::Null; schema.columns.len()];
                for (value, &i) in key.iter().zip(&schema.key) {
                    row[i] = value.clone();
                }
                row
            })
            .collect();
        let mut q = sqlx::query(&sql);
        for row in &rows {
            q = bind_row(q, schema, &affinity, row, &schema.key)?;
        }
        q.execute(&mut *self.conn)
            .await
            .map(drop)
            .map_err(|e| not_row_tied(self.err(format_args!("clearing a key range of {name}"), e)))
    }

    /// The affinities of `target`'s columns, in source column order.
    fn affinity(&self, target: &TableId) -> Result<Vec<Affinity>, ConnectorError> {
        self.tables
            .get(sqlite_table_name(target))
            .map(|t| t.affinity.clone())
            .ok_or_else(|| ConnectorError::fatal(format!("internal error: target table {target} was not prepared")))
    }

    /// Applies the rows `range` of one kind (distinct keys) with multi-row statements.
    async fn apply_set(
        &mut self,
        changes: &TableChanges,
        kind: RowKind,
        range: Range<usize>,
    ) -> Result<u64, ConnectorError> {
        if range.is_empty() {
            return Ok(0);
        }
        let affinity = self.affinity(&changes.target)?;
        match kind {
            RowKind::Move => self.apply_moves(changes, &affinity, &changes.moves[range]).await,
            RowKind::Delete => self.apply_deletes(changes, &affinity, &changes.deletes[range]).await,
            RowKind::Upsert => self.apply_upserts(changes, &affinity, &changes.upserts[range]).await,
        }
    }

    async fn apply_deletes(
        &mut self,
        changes: &TableChanges,
        affinity: &[Affinity],
        rows: &[Vec<Value>],
    ) -> Result<u64, ConnectorError> {
        let schema = &changes.schema;
        let name = sqlite_table_name(&changes.target);
        let table = quote_ident(name);
        if schema.is_keyless() {
            // Each distinct image removes as many equal rows as it occurs.
            let all: Vec<usize> = (0..schema.columns.len()).collect();
            let matches = all
                .iter()
                .map(|&i| format!("{} IS ?", quote_ident(&schema.columns[i].name)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let mut written = 0;
            for (row, n) in tidewater_core::batch::equal_runs(rows) {
                let sql =
                    format!("DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {matches} LIMIT {n})");
                let q = bind_row(sqlx::query(&sql), schema, affinity, row, &all)?;
                let done =
                    q.execute(&mut *self.conn).await.map_err(|e| self.err(format_args!("deleting from {name}"), e))?;
                written += done.rows_affected();
            }
            return Ok(written);
        }
        let key = &schema.key;
        let mut written = 0;
        for chunk in chunks(rows.len(), key.len()) {
            let sql = if key.len() == 1 {
                format!("DELETE FROM {table} WHERE {} IN ({})", column_list(schema, key.iter().copied()), {
                    vec!["?"; chunk.len()].join(",")
                })
            } else {
                format!(
                    "DELETE FROM {table} WHERE ({}) IN (VALUES {})",
                    column_list(schema, key.iter().copied()),
                    values_list(chunk.len(), key.len())
                )
            };
            let mut q = sqlx::query(&sql);
            for row in &rows[chunk] {
                q = bind_row(q, schema, affinity, row, key)?;
            }
            let done =
                q.execute(&mut *self.conn).await.map_err(|e| self.err(format_args!("deleting from {name}"), e))?;
            written += done.rows_affected();
        }
        Ok(written)
    }

    async fn apply_upserts(
        &mut self,
        changes: &TableChanges,
        affinity: &[Affinity],
        rows: &[Vec<Value>],
    ) -> Result<u64, ConnectorError> {
        let schema = &changes.schema;
        let name = sqlite_table_name(&changes.target);
        let table = quote_ident(name);
        let (full, partial): (Vec<&Vec<Value>>, Vec<&Vec<Value>>) = rows.iter().partition(|r| !has_unchanged(r));
        let mut written = 0;

        let all: Vec<usize> = (0..schema.columns.len()).collect();
        let conflict = upsert_conflict_clause(schema);
        for chunk in chunks(full.len(), all.len()) {
            let sql = format!(
                "INSERT INTO {table} ({}) VALUES {} {conflict}",
                column_list(schema, all.iter().copied()),
                values_list(chunk.len(), all.len())
            );
            let mut q = sqlx::query(&sql);
            for row in &full[chunk] {
                q = bind_row(q, schema, affinity, row, &all)?;
            }
            let done =
                q.execute(&mut *self.conn).await.map_err(|e| self.err(format_args!("upserting into {name}"), e))?;
            written += done.rows_affected();
        }

        // Rows with unchanged TOAST columns update only the columns that were sent of the
        // existing row, grouped by which columns those are.
        let mut by_mask: BTreeMap<Vec<bool>, Vec<&Vec<Value>>> = BTreeMap::new();
        for row in partial {
            by_mask.entry(sent_mask(row)).or_default().push(row);
        }
        for (mask, group) in by_mask {
            let set_cols: Vec<usize> =
                (0..schema.columns.len()).filter(|i| mask[*i] && !schema.key.contains(i)).collect();
            if set_cols.is_empty() {
                continue;
            }
            let used: Vec<usize> = schema.key.iter().copied().chain(set_cols.iter().copied()).collect();
            // VALUES columns are named column1, column2, ... in `used` order.
            let sets = set_cols
                .iter()
                .enumerate()
                .map(|(n, &i)| {
                    format!("{} = v.column{}", quote_ident(&schema.columns[i].name), schema.key.len() + n + 1)
                })
                .collect::<Vec<_>>()
                .join(", ");
            let key_match = schema
                .key
                .iter()
                .enumerate()
                .map(|(n, &i)| format!("{table}.{} = v.column{}", quote_ident(&schema.columns[i].name), n + 1))
                .collect::<Vec<_>>()
                .join(" AND ");
            for chunk in chunks(group.len(), used.len()) {
                let sql = format!(
                    "UPDATE {table} SET {sets} FROM (VALUES {}) AS v WHERE {key_match}",
                    values_list(chunk.len(), used.len())
                );
                let mut q = sqlx::query(&sql);
                for row in &group[chunk] {
                    q = bind_row(q, schema, affinity, row, &used)?;
                }
                let done =
                    q.execute(&mut *self.conn).await.map_err(|e| self.err(format_args!("updating {name}"), e))?;
                written += done.rows_affected();
            }
        }
        Ok(written)
    }

    /// Rows moved to a new key with unsent (TOAST) columns: each is inserted at its new
    /// key, taking the unsent columns from the target's row at the old key (deleted
    /// afterwards with the segment's deletes). Grouped by which columns were sent.
    async fn apply_moves(
        &mut self,
        changes: &TableChanges,
        affinity: &[Affinity],
        moves: &[MovedRow],
    ) -> Result<u64, ConnectorError> {
        let schema = &changes.schema;
        let name = sqlite_table_name(&changes.target);
        let table = quote_ident(name);
        let mut by_mask: BTreeMap<Vec<bool>, Vec<&MovedRow>> = BTreeMap::new();
        for moved in moves {
            by_mask.entry(sent_mask(&moved.row)).or_default().push(moved);
        }
        let nkey = schema.key.len();
        let mut written = 0;
        for (mask, group) in by_mask {
            let sent: Vec<usize> = (0..schema.columns.len()).filter(|&i| mask[i]).collect();
            // VALUES: the old key's columns, then the sent columns.
            let select = (0..schema.columns.len())
                .map(|i| match sent.iter().position(|&s| s == i) {
                    Some(n) => format!("v.column{}", nkey + n + 1),
                    None => format!("o.{}", quote_ident(&schema.columns[i].name)),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let join = schema
                .key
                .iter()
                .enumerate()
                .map(|(n, &i)| format!("o.{} = v.column{}", quote_ident(&schema.columns[i].name), n + 1))
                .collect::<Vec<_>>()
                .join(" AND ");
            for chunk in chunks(group.len(), nkey + sent.len()) {
                // `WHERE true` keeps the upsert's ON from parsing as the join's.
                let sql = format!(
                    "INSERT INTO {table} ({}) SELECT {select} FROM (VALUES {}) AS v JOIN {table} AS o ON {join} \
                     WHERE true {}",
                    column_list(schema, 0..schema.columns.len()),
                    values_list(chunk.len(), nkey + sent.len()),
                    upsert_conflict_clause(schema),
                );
                let mut q = sqlx::query(&sql);
                for moved in &group[chunk] {
                    q = bind_row(q, schema, affinity, &moved.from, &schema.key)?;
                    q = bind_row(q, schema, affinity, &moved.row, &sent)?;
                }
                let done = q
                    .execute(&mut *self.conn)
                    .await
                    .map_err(|e| self.err(format_args!("moving rows to new keys in {name}"), e))?;
                written += done.rows_affected();
            }
        }
        Ok(written)
    }

    /// The table's columns; empty when it does not exist.
    async fn load_columns(&mut self, name: &str) -> Result<Vec<TargetColumn>, ConnectorError> {
        let rows = sqlx::query("SELECT name, type, pk FROM pragma_table_info(?1)")
            .bind(name)
            .fetch_all(&mut *self.conn)
            .await
            .map_err(|e| not_row_tied(self.err(format_args!("reading target table {name}"), e)))?;
        rows.iter()
            .map(|r| Ok(TargetColumn { name: r.try_get(0)?, declared: r.try_get(1)?, pk: r.try_get::<i64, _>(2)? }))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| not_row_tied(self.err(format_args!("reading target table {name}"), e)))
    }

    /// Fails unless the table has a primary key or unique index on exactly the source's
    /// key columns, which `ON CONFLICT` needs.
    async fn check_key(
        &mut self,
        schema: &TableSchema,
        name: &str,
        existing: &[TargetColumn],
    ) -> Result<(), ConnectorError> {
        let key: BTreeSet<&str> = schema.key_names().into_iter().collect();
        let pk: BTreeSet<&str> = existing.iter().filter(|c| c.pk > 0).map(|c| c.name.as_str()).collect();
        if pk == key || schema.is_keyless() {
            return Ok(());
        }
        let what = format!("reading the indexes of target table {name}");
        let indexes: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_index_list(?1) WHERE \"unique\" = 1 AND partial = 0")
                .bind(name)
                .fetch_all(&mut *self.conn)
                .await
                .map_err(|e| not_row_tied(self.err(&what, e)))?;
        for index in indexes {
            let columns: Vec<Option<String>> = sqlx::query_scalar("SELECT name FROM pragma_index_info(?1)")
                .bind(&index)
                .fetch_all(&mut *self.conn)
                .await
                .map_err(|e| not_row_tied(self.err(&what, e)))?;
            // Expression columns have no name: such an index never matches.
            let named: BTreeSet<&str> = columns.iter().flatten().map(String::as_str).collect();
            if named == key && columns.len() == key.len() {
                return Ok(());
            }
        }
        let key_list = column_list(schema, schema.key.iter().copied());
        Err(ConnectorError::fatal(format!(
            "target table {name} has no PRIMARY KEY or UNIQUE index on exactly ({key_list}), the key of source \
             table {}, which upserts need: add one (CREATE UNIQUE INDEX ON {} ({key_list})), or drop the table \
             and let Tidewater create it",
            schema.id,
            quote_ident(name)
        )))
    }

    async fn create_table(&mut self, schema: &TableSchema, name: &str) -> Result<(), ConnectorError> {
        let columns: Vec<String> = schema
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let not_null = if schema.key.contains(&i) { " NOT NULL" } else { "" };
                format!("{} {}{not_null}", quote_ident(&c.name), declared_type(&c.kind))
            })
            .collect();
        let primary_key = if schema.is_keyless() {
            String::new()
        } else {
            format!(", PRIMARY KEY ({})", column_list(schema, schema.key.iter().copied()))
        };
        let sql = format!("CREATE TABLE {} ({}{primary_key})", quote_ident(name), columns.join(", "));
        self.exec(&sql, format!("creating target table {name}")).await?;
        tracing::info!(table = %name, source = %schema.id, "created SQLite target table");
        Ok(())
    }

    /// Follows columns the source renamed or dropped since `previous` (SQLite 3.25+ renames,
    /// 3.35+ drops columns; columns the target does not have are skipped). Returns whether
    /// the table was altered.
    async fn follow_renames_and_drops(
        &mut self,
        previous: &TableSchema,
        schema: &TableSchema,
        name: &str,
        existing: &[TargetColumn],
    ) -> Result<bool, ConnectorError> {
        let changes = tidewater_core::ColumnChanges::between(previous, schema);
        let has = |c: &str| existing.iter().any(|e| e.name == c);
        let qtable = quote_ident(name);
        let mut altered = false;
        for (old, new) in changes.renamed.iter().filter(|(old, new)| has(old) && !has(new)) {
            let sql = format!("ALTER TABLE {qtable} RENAME COLUMN {} TO {}", quote_ident(old), quote_ident(new));
            self.exec(&sql, format!("the source renamed column {name}.{old} to {new}; following it")).await?;
            altered = true;
        }
        for column in changes.dropped.iter().filter(|c| has(c)) {
            let sql = format!("ALTER TABLE {qtable} DROP COLUMN {}", quote_ident(column));
            self.exec(&sql, format!("the source dropped column {name}.{column}; following it")).await?;
            altered = true;
        }
        Ok(altered)
    }

    /// Makes the target table fit the source schema: creates it, checks its key, adds
    /// missing columns, refuses type changes it cannot store exactly. Runs inside the
    /// caller's transaction so DDL and data commit together.
    async fn reconcile(&mut self, schema: &Arc<TableSchema>, target: &TableId) -> Result<(), ConnectorError> {
        let name = sqlite_table_name(target);
        let previous = self.tables.get(name).map(|t| t.schema.clone());
        let qtable = quote_ident(name);
        let mut existing = self.load_columns(name).await?;
        if existing.is_empty() {
            self.create_table(schema, name).await?;
            existing = self.load_columns(name).await?;
        } else if previous.as_ref().is_none_or(|p| p.key_names() != schema.key_names()) {
            self.check_key(schema, name, &existing).await?;
        }
        if let Some(previous) = &previous {
            if self.follow_renames_and_drops(previous, schema, name, &existing).await? {
                existing = self.load_columns(name).await?;
            }
        }
        let mut added = false;
        for column in &schema.columns {
            let declared = declared_type(&column.kind);
            let Some(have) = existing.iter().find(|c| c.name == column.name) else {
                let c = quote_ident(&column.name);
                self.exec(
                    &format!("ALTER TABLE {qtable} ADD COLUMN {c} {declared}"),
                    format!("adding column {} to target table {name}", column.name),
                )
                .await?;
                if let Some(text) = &column.existing_rows_value {
                    // Rows that existed before the column was added hold this value at the
                    // source without any logged change: give them the same value here.
                    let value = value_from_text(&column.kind, text);
                    let bound = to_bound(&value, Affinity::of_declared(declared)).map_err(|e| {
                        ConnectorError::fatal(format!(
                            "the value of existing rows of new column {name}.{}: {e}",
                            column.name
                        ))
                    })?;
                    let sql = format!("UPDATE {qtable} SET {c} = ?1");
                    let q = sqlx::query(&sql);
                    let q = match bound {
                        Bound::Null => q.bind(None::<i64>),
                        Bound::Int(v) => q.bind(v),
                        Bound::Real(v) => q.bind(v),
                        Bound::Text(v) => q.bind(v),
                        Bound::Blob(v) => q.bind(v),
                    };
                    q.execute(&mut *self.conn).await.map_err(|e| {
                        not_row_tied(
                            self.err(format_args!("filling new column {}.{} of existing rows", name, column.name), e),
                        )
                    })?;
                }
                tracing::info!(table = %name, column = %column.name, "added column to SQLite target table");
                added = true;
                continue;
            };
            // Follow a type change made at the source while streaming, when SQLite stores
            // the new values the same way; otherwise a human rebuilds the table.
            let changed = previous
                .as_ref()
                .and_then(|p| p.columns.iter().find(|c| c.name == column.name && declared_type(&c.kind) != declared));
            if let Some(old) = changed {
                if Affinity::of_declared(&have.declared) != Affinity::of_declared(declared) {
                    return Err(ConnectorError::fatal(format!(
                        "the source changed the type of {}.{} from {} to {}; the SQLite column {name}.{} is declared \
                         {:?} and would not store the new values exactly, and SQLite cannot change a column's type: \
                         rebuild the table with the column declared {declared} (create the new table, copy the rows, \
                         drop the old one, rename the new one) and restart",
                        schema.id, column.name, old.native_type, column.native_type, column.name, have.declared
                    )));
                }
            }
        }
        if added {
            existing = self.load_columns(name).await?;
        }
        let affinity = schema
            .columns
            .iter()
            .map(|c| {
                existing.iter().find(|e| e.name == c.name).map(|e| Affinity::of_declared(&e.declared)).ok_or_else(
                    || ConnectorError::fatal(format!("target table {name} has no column {} after adding it", c.name)),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.tables.insert(name.to_string(), TargetTable { schema: schema.clone(), affinity });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_in_power_of_two_statements() {
        for (n, width) in [(0, 3), (1, 3), (7, 3), (512, 3), (1000, 3), (1025, 1), (100, 20_000), (70, 400)] {
            let parts = chunks(n, width);
            let mut next = 0;
            for p in &parts {
                assert_eq!(p.start, next);
                assert!(p.len().is_power_of_two(), "{p:?}");
                assert!(p.len() * width <= MAX_PARAMS || p.len() == 1);
                assert!(p.len() <= MAX_ROWS_PER_STATEMENT);
                next = p.end;
            }
            assert_eq!(next, n, "n={n} width={width}");
        }
        assert_eq!(chunks(1000, 3).len(), 10); // 7 × 128 + 64 + 32 + 8
        assert_eq!(chunks(100, 400).iter().map(|r| r.len()).max(), Some(64)); // 30000/400 = 75 → 64
    }

    #[test]
    fn statements_quote_identifiers() {
        use tidewater_core::{Column, ColumnType, Engine};
        let col = |name: &str| Column {
            name: name.into(),
            kind: ColumnType::Int64,
            native_type: "bigint".into(),
            nullable: true,
            existing_rows_value: None,
        };
        let schema = TableSchema {
            id: TableId::new("public", "t"),
            engine: Engine::Postgres,
            columns: vec![col("id"), col("we\"ird")],
            key: vec![0],
            enum_labels: vec![],
        };
        assert_eq!(
            upsert_conflict_clause(&schema),
            "ON CONFLICT (\"id\") DO UPDATE SET \"we\"\"ird\" = excluded.\"we\"\"ird\""
        );
        assert_eq!(values_list(2, 3), "(?,?,?),(?,?,?)");
    }
}
