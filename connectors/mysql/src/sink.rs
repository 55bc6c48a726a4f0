//! MySQL/MariaDB target.
//!
//! # Where tables go
//! A target table `schema.table` maps to a MySQL database and table by one rule: the
//! schema `public` (a Postgres source's default schema, also what an unqualified rename
//! means) is the database named in the target URL; any other schema name is a database of
//! that name, created when missing (`CREATE DATABASE IF NOT EXISTS ... utf8mb4`). So
//! `public.orders` → `` `<url db>`.`orders` ``, `replica.orders` → `` `replica`.`orders` ``,
//! and a MySQL source's `shop.orders` → `` `shop`.`orders` ``. The bookkeeping tables live
//! in the URL's database.
//!
//! # Apply
//! One target transaction per batch, per table segment in this order: a source TRUNCATE
//! as `DELETE FROM t` (MySQL's `TRUNCATE` is DDL and would commit the open transaction);
//! moved rows (`INSERT ... SELECT` taking the unsent columns from the old key's row, `ON
//! DUPLICATE KEY UPDATE`); deletes (`DELETE ... WHERE (k1, k2) IN ((?, ?), ...)`); upserts
//! (multi-row `INSERT ... ON DUPLICATE KEY UPDATE`, `VALUES(c)` on MariaDB and MySQL before
//! 8.0.20, a row alias on later MySQL); rows with unchanged TOAST columns as one `UPDATE`
//! of the sent columns each. Then the dead letters, and the checkpoint with the COMMIT (one
//! round trip). Multi-row statements hold at most 1024 rows, 65535 placeholders and about a
//! quarter of `max_allowed_packet`, in power-of-two sizes so few distinct statements are
//! prepared (a delete's key list is filled up to the next power of two by repeating its last
//! key, so a batch's deletes take one statement per 1024 keys); a single row larger than
//! `max_allowed_packet` is rejected (dead letter) before it is sent.
//!
//! # Schema changes happen before the transaction
//! Unlike Postgres, MySQL commits implicitly around DDL, so creating a table or adding a
//! column inside the batch transaction would commit half a batch. Every segment's target
//! table is therefore reconciled first (create, add columns, follow type changes), and the
//! transaction begins after. DDL is idempotent, so a batch that then fails and is retried
//! finds the table already right. Inside a large transaction (open across calls) no DDL can
//! run: a part that needs one rolls the transaction back, applies the DDL and fails
//! transiently, so the engine re-reads the transaction from its start.
//!
//! # Values
//! Values are bound typed (integers, floats, booleans, bytes, text); see
//! [`crate::sink_types`] for the type mapping and the values MySQL cannot hold, which are
//! rejected before the statement runs (dead letter naming the column and the value). The
//! session runs with `time_zone = '+00:00'` and a strict `sql_mode`
//! (`STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_BACKSLASH_ESCAPES,...`), so an out-of-range
//! or too long value is an error (a dead letter), never a silent truncation.

mod check;
mod scratch;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use sqlx::mysql::{MySqlArguments, MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlRow};
use sqlx::{Arguments, ConnectOptions, Row};
use tidewater_core::{
    ApplyBatch, ApplyReport, Checkpoint, ConnectorError, CopiedTable, DeadLetter, ErrorClass, MovedRow, RowKind, Sink,
    TableChanges, TableId, TablePlan, TableSchema, Value, ROW_KINDS_IN_ORDER,
};

use crate::errors::mysql_error;
use crate::quote::quote_ident;
use crate::sink_sql::{self as sql, ColumnDecl, Server, TableSql};
use crate::sink_types::{self as types, Bind, TargetColumn};
use crate::tls::MysqlTls;

const MIGRATIONS: &[(&str, &str)] =
    &[("0001_bookkeeping", include_str!("../../../migrations/mysql/0001_bookkeeping.sql"))];
/// Migrations that add a column, each run only when `(table, column)` is missing.
const COLUMN_MIGRATIONS: &[(&str, &str, &str, &str)] = &[
    (
        "0002_copied_position",
        "tidewater_snapshot_tables",
        "copied_position",
        include_str!("../../../migrations/mysql/0002_copied_position.sql"),
    ),
    (
        "0003_copy_progress",
        "tidewater_checkpoints",
        "copy_progress",
        include_str!("../../../migrations/mysql/0003_copy_progress.sql"),
    ),
];

/// The target schema that means "the database in the URL".
pub const DEFAULT_SCHEMA: &str = "public";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const MIGRATION_LOCK_SECS: u32 = 30;
/// Strict: out-of-range, too long or malformed values are errors, not warnings. No
/// backslash escapes: string literals in DDL defaults only double their quotes.
const SQL_MODE: &str =
    "STRICT_ALL_TABLES,STRICT_TRANS_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION,NO_BACKSLASH_ESCAPES";
/// Longest error text kept in a dead letter (the column is TEXT: 65535 bytes).
const MAX_ERROR_BYTES: usize = 16_000;

/// Where and as whom the sink connects. `Debug` does not show the password.
#[derive(Clone)]
pub struct MysqlEndpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
}

impl fmt::Debug for MysqlEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlEndpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .finish()
    }
}

impl fmt::Display for MysqlEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mysql://{}@{}:{}/{}", self.user, self.host, self.port, self.database)
    }
}

/// The MySQL database and table a target [`TableId`] is written to (see the module docs):
/// schema `public` → `url_database`, any other schema → the database of that name.
pub fn target_location(url_database: &str, id: &TableId) -> (String, String) {
    if id.schema == DEFAULT_SCHEMA || id.schema.is_empty() {
        (url_database.to_string(), id.name.clone())
    } else {
        (id.schema.clone(), id.name.clone())
    }
}

/// Converts an sqlx error, classifying it. `what` says what was being done.
pub fn sqlx_error(what: impl fmt::Display, e: sqlx::Error) -> ConnectorError {
    match &e {
        sqlx::Error::Database(db) => match db.try_downcast_ref::<MySqlDatabaseError>() {
            Some(my) => mysql_error(what, my.number(), my.message()),
            None => ConnectorError::transient(format!("{what}: {db}")),
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ConnectorError::transient(format!("{what}: {e}")),
        _ => ConnectorError::fatal(format!("{what}: {e}")),
    }
}

/// A target table as reconciled: its location, columns and unique indexes.
#[derive(Debug, Clone)]
struct TargetTable {
    /// `` `db`.`table` ``.
    qualified: String,
    columns: Vec<TargetColumn>,
    /// Has a unique index besides the one on the source key (see [`TableSql::guard`]).
    guard: bool,
}

impl TargetTable {
    fn column(&self, name: &str) -> Option<&TargetColumn> {
        self.columns.iter().find(|c| c.name.eq_ignore_ascii_case(name))
    }
}

#[derive(Default)]
struct SinkState {
    targets: HashMap<TableId, TargetTable>,
    /// The newest source schema each target table was reconciled with.
    reconciled: HashMap<TableId, Arc<TableSchema>>,
}

/// What the connection knows about its server.
#[derive(Debug, Clone, Copy)]
struct ServerFacts {
    server: Server,
    max_packet: usize,
}

pub struct MysqlSink {
    endpoint: MysqlEndpoint,
    tls: MysqlTls,
    conn: Option<MySqlConnection>,
    /// The connection holding a large source transaction's open target transaction.
    open: Option<MySqlConnection>,
    facts: Option<ServerFacts>,
    /// `` `<url db>` ``: where the bookkeeping tables are.
    bookkeeping: String,
    state: SinkState,
}

impl MysqlSink {
    /// A sink connecting in plaintext; see [`MysqlSink::with_tls`].
    pub fn new(endpoint: MysqlEndpoint) -> Self {
        let bookkeeping = quote_ident(&endpoint.database);
        MysqlSink {
            endpoint,
            tls: MysqlTls::disabled(),
            conn: None,
            open: None,
            facts: None,
            bookkeeping,
            state: SinkState::default(),
        }
    }

    /// Uses `tls` for every connection to the target.
    pub fn with_tls(mut self, tls: MysqlTls) -> Self {
        self.tls = tls;
        self
    }

    /// The server flavour and version, once connected.
    pub fn server(&self) -> Option<Server> {
        self.facts.map(|f| f.server)
    }

    async fn connect(&mut self) -> Result<MySqlConnection, ConnectorError> {
        let ep = &self.endpoint;
        if ep.database.is_empty() {
            return Err(ConnectorError::fatal(format!(
                "the MySQL target URL {ep} names no database: add one (mysql://user@host:port/DATABASE)"
            )));
        }
        let mut options = MySqlConnectOptions::new()
            .host(&ep.host)
            .port(ep.port)
            .username(&ep.user)
            .database(&ep.database)
            .charset("utf8mb4")
            .pipes_as_concat(false)
            .no_engine_substitution(false)
            .timezone(None)
            .statement_cache_capacity(256)
            .disable_statement_logging();
        if let Some(password) = &ep.password {
            options = options.password(password);
        }
        let options = self.tls.apply_sqlx(options);
        let what = format!("connecting to the MySQL target {ep}");
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
            .await
            .map_err(|_| ConnectorError::transient(format!("{what}: timed out after {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| match &e {
                // A failed TLS negotiation (certificate, name, server without TLS) is not
                // healed by retrying.
                sqlx::Error::Tls(_) => ConnectorError::fatal(format!("{what}: {e}; {}", self.tls.hint())),
                _ if crate::tls::find_rustls_error(&e).is_some() => {
                    ConnectorError::fatal(format!("{what}: {e}; {}", self.tls.hint()))
                }
                _ => sqlx_error(&what, e),
            })?;
        exec_raw(&mut conn, &format!("SET SESSION time_zone = '+00:00', SESSION sql_mode = '{SQL_MODE}'"))
            .await
            .map_err(|e| sqlx_error("setting the session's time zone and sql_mode", e))?;
        let row = run_fetch_one(sqlx::query("SELECT VERSION(), CAST(@@max_allowed_packet AS SIGNED)"), &mut conn)
            .await
            .map_err(|e| sqlx_error("reading the target server's version", e))?;
        let version = text(&row, 0)?;
        let max_packet: i64 = row.try_get(1).map_err(|e| sqlx_error("reading max_allowed_packet", e))?;
        let facts =
            ServerFacts { server: Server::parse(&version), max_packet: usize::try_from(max_packet).unwrap_or(4 << 20) };
        if self.facts.is_none() {
            tracing::info!(target_db = %ep, server = %facts.server, version = %version, "connected to MySQL target");
        }
        self.facts = Some(facts);
        Ok(conn)
    }

    /// Takes the live connection out (connecting when needed); [`MysqlSink::finish`] puts
    /// it back.
    async fn take_conn(&mut self) -> Result<(MySqlConnection, ServerFacts), ConnectorError> {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect().await?,
        };
        let facts = self.facts.ok_or_else(|| ConnectorError::fatal("connected without server facts"))?;
        Ok((conn, facts))
    }

    /// Ends a unit of work: after an error, rolls back whatever is open; a connection that
    /// may be broken (transient error, failed rollback) is dropped and reopened next time.
    async fn finish<T>(
        &mut self,
        mut conn: MySqlConnection,
        result: Result<T, ConnectorError>,
    ) -> Result<T, ConnectorError> {
        if let Err(e) = &result {
            if e.class == ErrorClass::Transient || exec_raw(&mut conn, "ROLLBACK").await.is_err() {
                return result;
            }
        }
        self.conn = Some(conn);
        result
    }

    fn url_database(&self) -> &str {
        &self.endpoint.database
    }
}

#[async_trait]
impl Sink for MysqlSink {
    async fn prepare(&mut self) -> Result<(), ConnectorError> {
        let (mut conn, _) = self.take_conn().await?;
        let result = async {
            // Several pipelines (or daemons) may share a target: migrations run one at a time.
            let lock = format!("SELECT GET_LOCK('tidewater_migrations', {MIGRATION_LOCK_SECS})");
            let got: Option<i64> = run_fetch_one(sqlx::query(&lock), &mut conn)
                .await
                .and_then(|row| row.try_get(0))
                .map_err(|e| sqlx_error("locking the migrations", e))?;
            if got != Some(1) {
                return Err(ConnectorError::transient(format!(
                    "another process held the lock tidewater_migrations for {MIGRATION_LOCK_SECS} s"
                )));
            }
            let mut outcome = Ok(());
            for (name, text) in MIGRATIONS {
                if let Err(e) = exec_raw(&mut conn, text).await {
                    outcome = Err(sqlx_error(format_args!("running migration {name} on the target"), e));
                    break;
                }
            }
            for (name, table, column, text) in COLUMN_MIGRATIONS {
                if outcome.is_err() {
                    break;
                }
                let present = run_fetch_all(
                    sqlx::query(
                        "SELECT 1 FROM information_schema.COLUMNS \
                         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?",
                    )
                    .bind(*table)
                    .bind(*column),
                    &mut conn,
                )
                .await
                .map(|rows| !rows.is_empty());
                outcome = match present {
                    Ok(true) => Ok(()),
                    Ok(false) => exec_raw(&mut conn, text)
                        .await
                        .map(drop)
                        .map_err(|e| sqlx_error(format_args!("running migration {name} on the target"), e)),
                    Err(e) => Err(sqlx_error(format_args!("checking migration {name} on the target"), e)),
                };
            }
            let _ = exec_raw(&mut conn, "DO RELEASE_LOCK('tidewater_migrations')").await;
            outcome
        }
        .await;
        self.finish(conn, result).await
    }

    async fn list_dead_letters(
        &mut self,
        pipeline: &str,
    ) -> Result<Vec<tidewater_core::DeadLetterRecord>, ConnectorError> {
        let (mut conn, _) = self.take_conn().await?;
        let sql = format!(
            "SELECT id, source_position, source_table, target_table, op, CAST(payload AS CHAR), error, \
                    DATE_FORMAT(failed_at, '%Y-%m-%dT%H:%i:%sZ'), DATE_FORMAT(replayed_at, '%Y-%m-%dT%H:%i:%sZ') \
             FROM {}.tidewater_dead_letters WHERE pipeline = ? ORDER BY id",
            self.bookkeeping
        );
        let result = async {
            let rows = sqlx::query(&sql)
                .bind(pipeline)
                .fetch_all(&mut conn)
                .await
                .map_err(|e| sqlx_error("reading tidewater_dead_letters", e))?;
            rows.iter()
                .map(|row| {
                    let read = |e| sqlx_error("reading tidewater_dead_letters", e);
                    Ok(tidewater_core::DeadLetterRecord {
                        id: row.try_get::<i64, _>(0).map_err(read)?,
                        source_position: text(row, 1)?,
                        source_table: text(row, 2)?,
                        target_table: text(row, 3)?,
                        op: text(row, 4)?,
                        payload: text(row, 5)?,
                        error: text(row, 6)?,
                        failed_at: text(row, 7)?,
                        replayed_at: row.try_get::<Option<String>, _>(8).map_err(read)?,
                    })
                })
                .collect()
        }
        .await;
        self.finish(conn, result).await
    }

    async fn load_checkpoint(&mut self, pipeline: &str) -> Result<Option<Checkpoint>, ConnectorError> {
        let (mut conn, _) = self.take_conn().await?;
        let sql = format!(
            "SELECT source_position, snapshot_complete, copy_progress FROM {}.tidewater_checkpoints WHERE pipeline = ?",
            self.bookkeeping
        );
        let result = async {
            let row = run_fetch_optional(sqlx::query(&sql).bind(pipeline), &mut conn)
                .await
                .map_err(|e| sqlx_error("reading the checkpoint from the target", e))?;
            match row {
                None => Ok(None),
                Some(row) => Ok(Some(Checkpoint {
                    position: text(&row, 0)?,
                    snapshot_complete: row
                        .try_get::<bool, _>(1)
                        .map_err(|e| sqlx_error("reading the checkpoint from the target", e))?,
                    copy_progress: row
                        .try_get::<Option<String>, _>(2)
                        .map_err(|e| sqlx_error("reading the checkpoint from the target", e))?,
                })),
            }
        }
        .await;
        self.finish(conn, result).await
    }

    async fn ensure_tables(&mut self, plans: &[TablePlan]) -> Result<(), ConnectorError> {
        let (mut conn, facts) = self.take_conn().await?;
        let url_db = self.endpoint.database.clone();
        let result = async {
            for plan in plans {
                reconcile(&mut conn, facts.server, &url_db, &mut self.state, &plan.source, &plan.target, Mode::FULL)
                    .await?;
            }
            Ok(())
        }
        .await;
        self.finish(conn, result).await
    }

    async fn reset_for_snapshot(
        &mut self,
        pipeline: &str,
        tables: &[TableId],
        checkpoint: &Checkpoint,
    ) -> Result<(), ConnectorError> {
        let (mut conn, facts) = self.take_conn().await?;
        let url_db = self.url_database().to_string();
        let env = Env { facts, bookkeeping: &self.bookkeeping };
        let result = async {
            // TRUNCATE is DDL (it commits), so it runs before the transaction: if the
            // checkpoint below is then not written, the snapshot is still unfinished and
            // is reset again. A table TRUNCATE cannot empty (referenced by a foreign key,
            // no DROP privilege) is emptied with DELETE inside the transaction instead.
            let mut delete_instead = Vec::new();
            for table in tables {
                let (db, name) = target_location(&url_db, table);
                let qualified = format!("{}.{}", quote_ident(&db), quote_ident(&name));
                if let Err(e) = exec_raw(&mut conn, &format!("TRUNCATE TABLE {qualified}")).await {
                    let e = sqlx_error(format_args!("emptying {table} to restart the snapshot"), e);
                    if e.class == ErrorClass::Transient {
                        return Err(e);
                    }
                    delete_instead.push((table, qualified));
                }
            }
            begin(&mut conn).await?;
            let sql = format!("DELETE FROM {}.tidewater_snapshot_tables WHERE pipeline = ?", env.bookkeeping);
            run_exec(sqlx::query(&sql).bind(pipeline), &mut conn)
                .await
                .map_err(|e| sqlx_error("resetting tidewater_snapshot_tables", e))?;
            for (table, qualified) in delete_instead {
                exec_raw(&mut conn, &format!("DELETE FROM {qualified}"))
                    .await
                    .map_err(|e| sqlx_error(format_args!("emptying {table} to restart the snapshot"), e))?;
            }
            commit_with_checkpoint(&mut conn, &env, pipeline, checkpoint, "resetting the snapshot").await
        }
        .await;
        self.finish(conn, result).await
    }

    async fn snapshotted_tables(&mut self, pipeline: &str) -> Result<Vec<CopiedTable>, ConnectorError> {
        let (mut conn, _) = self.take_conn().await?;
        let sql = format!(
            "SELECT source_table, copied_position FROM {}.tidewater_snapshot_tables WHERE pipeline = ?",
            self.bookkeeping
        );
        let result = async {
            let rows = run_fetch_all(sqlx::query(&sql).bind(pipeline), &mut conn)
                .await
                .map_err(|e| sqlx_error("reading tidewater_snapshot_tables", e))?;
            rows.iter()
                .map(|r| Ok(CopiedTable::new(TableId::parse(&text(r, 0)?, DEFAULT_SCHEMA), opt_text(r, 1)?)))
                .collect()
        }
        .await;
        self.finish(conn, result).await
    }

    async fn complete_snapshot(
        &mut self,
        pipeline: &str,
        tables: &[CopiedTable],
        checkpoint: &Checkpoint,
    ) -> Result<(), ConnectorError> {
        let (mut conn, facts) = self.take_conn().await?;
        let env = Env { facts, bookkeeping: &self.bookkeeping };
        let result = async {
            begin(&mut conn).await?;
            let sql = format!(
                "INSERT INTO {}.tidewater_snapshot_tables (pipeline, source_table, copied_at, copied_position) \
                 VALUES (?, ?, UTC_TIMESTAMP(6), ?) \
                 ON DUPLICATE KEY UPDATE copied_at = UTC_TIMESTAMP(6), copied_position = VALUES(copied_position)",
                env.bookkeeping
            );
            for copied in tables {
                let query =
                    sqlx::query(&sql).bind(pipeline).bind(copied.table.to_string()).bind(copied.position.clone());
                run_exec(query, &mut conn).await.map_err(|e| sqlx_error("recording copied tables", e))?;
            }
            commit_with_checkpoint(&mut conn, &env, pipeline, checkpoint, "ending the snapshot").await
        }
        .await;
        self.finish(conn, result).await
    }

    async fn apply(&mut self, batch: &ApplyBatch) -> Result<ApplyReport, ConnectorError> {
        let (mut conn, facts) = self.take_conn().await?;
        let url_db = self.endpoint.database.clone();
        let result = async {
            reconcile_segments(&mut conn, facts.server, &url_db, &mut self.state, &batch.tables, true).await?;
            let env = Env { facts, bookkeeping: &self.bookkeeping };
            begin(&mut conn).await?;
            let mut report = ApplyReport::default();
            for changes in &batch.tables {
                report.rows_written += apply_table(&mut conn, &env, &self.state.targets, changes).await?;
            }
            commit_with_checkpoint(&mut conn, &env, &batch.pipeline, &batch.checkpoint, "committing the batch").await?;
            Ok(report)
        }
        .await;
        self.finish(conn, result).await
    }

    async fn apply_isolating(&mut self, batch: &ApplyBatch) -> Result<ApplyReport, ConnectorError> {
        let (mut conn, facts) = self.take_conn().await?;
        let url_db = self.endpoint.database.clone();
        let result = async {
            reconcile_segments(&mut conn, facts.server, &url_db, &mut self.state, &batch.tables, true).await?;
            let env = Env { facts, bookkeeping: &self.bookkeeping };
            begin(&mut conn).await?;
            let mut report = ApplyReport::default();
            let mut dead_letters = Vec::new();
            for changes in &batch.tables {
                report.rows_written +=
                    apply_table_isolating(&mut conn, &env, &self.state.targets, batch, changes, &mut dead_letters)
                        .await?;
            }
            report.dead_letters = dead_letters.len() as u64;
            write_dead_letters(&mut conn, &env, &batch.pipeline, &dead_letters).await?;
            commit_with_checkpoint(&mut conn, &env, &batch.pipeline, &batch.checkpoint, "committing the batch").await?;
            Ok(report)
        }
        .await;
        self.finish(conn, result).await
    }

    async fn begin_large(&mut self) -> Result<(), ConnectorError> {
        self.abort_large().await;
        let (mut conn, _) = self.take_conn().await?;
        match begin(&mut conn).await {
            Ok(()) => {
                self.open = Some(conn);
                Ok(())
            }
            Err(e) => self.finish(conn, Err(e)).await,
        }
    }

    async fn apply_part(&mut self, part: &ApplyBatch, isolate: bool) -> Result<ApplyReport, ConnectorError> {
        let mut conn = self.open.take().ok_or_else(|| ConnectorError::fatal("apply_part without begin_large"))?;
        let facts = self.facts.ok_or_else(|| ConnectorError::fatal("apply_part without a connection"))?;
        let url_db = self.endpoint.database.clone();
        let result = apply_part_in_open_transaction(
            &mut conn,
            facts,
            &url_db,
            &self.bookkeeping,
            &mut self.state,
            part,
            isolate,
        )
        .await;
        self.keep_open(conn, result)
    }

    async fn commit_large(&mut self, last: &ApplyBatch, isolate: bool) -> Result<ApplyReport, ConnectorError> {
        let mut conn = self.open.take().ok_or_else(|| ConnectorError::fatal("commit_large without begin_large"))?;
        let facts = self.facts.ok_or_else(|| ConnectorError::fatal("commit_large without a connection"))?;
        let url_db = self.endpoint.database.clone();
        let result: Result<ApplyReport, ConnectorError> = async {
            let report = apply_part_in_open_transaction(
                &mut conn,
                facts,
                &url_db,
                &self.bookkeeping,
                &mut self.state,
                last,
                isolate,
            )
            .await?;
            let env = Env { facts, bookkeeping: &self.bookkeeping };
            commit_with_checkpoint(&mut conn, &env, &last.pipeline, &last.checkpoint, "committing the transaction")
                .await?;
            Ok(report)
        }
        .await;
        match result {
            Err(e) if e.message.contains(DDL_OUTSIDE_MARKER) => {
                // Already rolled back (see apply_part_in_open_transaction).
                self.conn = Some(conn);
                Err(e)
            }
            other => self.finish(conn, other).await,
        }
    }

    async fn abort_large(&mut self) {
        if let Some(mut conn) = self.open.take() {
            if exec_raw(&mut conn, "ROLLBACK").await.is_ok() {
                self.conn = Some(conn);
            }
        }
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

/// In the (transient) error of a large transaction part that needed DDL: the transaction
/// was rolled back and the DDL applied, so the connection is free again.
const DDL_OUTSIDE_MARKER: &str = "the target table was altered outside the transaction";

impl MysqlSink {
    /// After a part of a large transaction: the connection stays with the open transaction
    /// (the caller aborts it on error) unless it broke or the transaction already ended.
    fn keep_open<T>(&mut self, conn: MySqlConnection, result: Result<T, ConnectorError>) -> Result<T, ConnectorError> {
        match &result {
            Err(e) if e.message.contains(DDL_OUTSIDE_MARKER) => self.conn = Some(conn),
            Err(e) if e.class == ErrorClass::Transient => {}
            _ => self.open = Some(conn),
        }
        result
    }
}

/// What the apply path needs to know besides the tables.
struct Env<'a> {
    facts: ServerFacts,
    bookkeeping: &'a str,
}

impl Env<'_> {
    /// The largest row (in bytes on the wire) that may be sent at all.
    fn max_row_bytes(&self) -> usize {
        self.facts.max_packet.saturating_sub(64 * 1024).max(1024)
    }

    /// About how many bytes one multi-row statement carries.
    fn statement_budget(&self) -> usize {
        (self.facts.max_packet / 4).clamp(64 * 1024, 16 << 20)
    }
}

// ---- transactions and statements ------------------------------------------------------

type MyQuery<'q> = sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>;

// sqlx's futures are boxed here, at concrete lifetimes: inside the async-trait methods the
// compiler could otherwise not prove them `Send` (a higher-ranked lifetime limitation).

fn exec_raw<'a>(conn: &'a mut MySqlConnection, sql: &'a str) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    // A plain string runs as a text-protocol query (no prepare), several statements allowed.
    let run = sqlx::Executor::execute(conn, sql);
    Box::pin(async move { run.await.map(|_| ()) })
}

fn run_exec<'a>(q: MyQuery<'a>, conn: &'a mut MySqlConnection) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
    Box::pin(async move { q.execute(conn).await.map(|r| r.rows_affected()) })
}

fn run_fetch_one<'a>(q: MyQuery<'a>, conn: &'a mut MySqlConnection) -> BoxFuture<'a, Result<MySqlRow, sqlx::Error>> {
    Box::pin(q.fetch_one(conn))
}

fn run_fetch_optional<'a>(
    q: MyQuery<'a>,
    conn: &'a mut MySqlConnection,
) -> BoxFuture<'a, Result<Option<MySqlRow>, sqlx::Error>> {
    Box::pin(q.fetch_optional(conn))
}

fn run_fetch_all<'a>(
    q: MyQuery<'a>,
    conn: &'a mut MySqlConnection,
) -> BoxFuture<'a, Result<Vec<MySqlRow>, sqlx::Error>> {
    Box::pin(q.fetch_all(conn))
}

async fn begin(conn: &mut MySqlConnection) -> Result<(), ConnectorError> {
    exec_raw(conn, "START TRANSACTION").await.map_err(|e| sqlx_error("starting a target transaction", e))
}

async fn savepoint(conn: &mut MySqlConnection, sql: &str) -> Result<(), ConnectorError> {
    exec_raw(conn, sql).await.map_err(|e| sqlx_error(format_args!("`{sql}`"), e))
}

/// Runs a prepared statement with `binds`; returns the affected rows.
async fn exec<'q>(
    conn: &mut MySqlConnection,
    sql: &'q str,
    binds: impl IntoIterator<Item = &'q Bind<'q>>,
) -> Result<u64, sqlx::Error> {
    let mut args = MySqlArguments::default();
    for b in binds {
        add_bind(&mut args, b).map_err(sqlx::Error::Encode)?;
    }
    run_exec(sqlx::query_with(sql, args), conn).await
}

/// A text column (MySQL may flag catalog strings as binary, so they are read as bytes).
fn text(row: &MySqlRow, i: usize) -> Result<String, ConnectorError> {
    let bytes: Vec<u8> = row.try_get(i).map_err(|e| sqlx_error("reading a text column", e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn opt_text(row: &MySqlRow, i: usize) -> Result<Option<String>, ConnectorError> {
    let bytes: Option<Vec<u8>> = row.try_get(i).map_err(|e| sqlx_error("reading a text column", e))?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

fn opt_u32(row: &MySqlRow, i: usize) -> Result<Option<u32>, ConnectorError> {
    let n: Option<i64> = row.try_get(i).map_err(|e| sqlx_error("reading a number column", e))?;
    Ok(n.and_then(|n| u32::try_from(n).ok()))
}

async fn commit(conn: &mut MySqlConnection, what: &str) -> Result<(), ConnectorError> {
    exec_raw(conn, "COMMIT").await.map_err(|e| sqlx_error(what, e))
}

/// Writes the checkpoint (values bound) and commits.
async fn commit_with_checkpoint(
    conn: &mut MySqlConnection,
    env: &Env<'_>,
    pipeline: &str,
    checkpoint: &Checkpoint,
    what: &str,
) -> Result<(), ConnectorError> {
    // Values bound twice rather than VALUES()/row alias: the same text on every flavour.
    let sql = format!(
        "INSERT INTO {}.tidewater_checkpoints (pipeline, source_position, snapshot_complete, copy_progress, updated_at) \
         VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE \
         source_position = ?, snapshot_complete = ?, copy_progress = ?, updated_at = UTC_TIMESTAMP(6)",
        env.bookkeeping
    );
    let q = sqlx::query(&sql)
        .bind(pipeline)
        .bind(&checkpoint.position)
        .bind(checkpoint.snapshot_complete)
        .bind(&checkpoint.copy_progress)
        .bind(&checkpoint.position)
        .bind(checkpoint.snapshot_complete)
        .bind(&checkpoint.copy_progress);
    run_exec(q, &mut *conn).await.map_err(|e| sqlx_error(format_args!("{what} (writing its checkpoint)"), e))?;
    commit(conn, what).await
}

async fn write_dead_letters(
    conn: &mut MySqlConnection,
    env: &Env<'_>,
    pipeline: &str,
    dead_letters: &[DeadLetter],
) -> Result<(), ConnectorError> {
    if dead_letters.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO {}.tidewater_dead_letters \
         (pipeline, source_position, source_table, target_table, op, payload, error, failed_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6))",
        env.bookkeeping
    );
    for dl in dead_letters {
        let payload = payload_text(&dl.payload, env.facts.max_packet / 2);
        let q = sqlx::query(&sql)
            .bind(pipeline)
            .bind(&dl.source_position)
            .bind(&dl.source_table)
            .bind(&dl.target_table)
            .bind(&dl.op)
            .bind(payload)
            .bind(truncate_text(&dl.error, MAX_ERROR_BYTES));
        run_exec(q, &mut *conn).await.map_err(|e| sqlx_error("writing a dead letter", e))?;
    }
    Ok(())
}

/// The payload as JSON text, with values too large for one packet replaced by a note (the
/// row may have been rejected precisely for its size).
fn payload_text(payload: &serde_json::Value, limit: usize) -> String {
    let text = payload.to_string();
    if text.len() <= limit {
        return text;
    }
    match payload {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let len = v.to_string().len();
                    let v = if len > 1024 {
                        serde_json::Value::String(format!("<{len} bytes omitted: too large for the dead-letter table>"))
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect(),
        )
        .to_string(),
        _ => serde_json::json!({ "omitted": format!("{} bytes", text.len()) }).to_string(),
    }
}

fn truncate_text(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ---- applying rows --------------------------------------------------------------------

/// One segment's statements and target columns (in source column order).
struct Prepared<'a> {
    sql: TableSql,
    targets: Vec<&'a TargetColumn>,
}

fn prepared<'a>(
    targets: &'a HashMap<TableId, TargetTable>,
    changes: &TableChanges,
) -> Result<Prepared<'a>, ConnectorError> {
    let target = &changes.target;
    let table =
        targets.get(target).ok_or_else(|| ConnectorError::fatal(format!("target table {target} was not prepared")))?;
    let schema = &changes.schema;
    let cols = schema
        .columns
        .iter()
        .map(|c| {
            table.column(&c.name).ok_or_else(|| {
                ConnectorError::fatal(format!(
                    "target table {target} has no column {}: the source renamed or dropped columns of {} inside a \
                     transaction that also changed its rows, and a MySQL target cannot follow that atomically \
                     (MySQL commits around DDL); re-copy the table (drop the target table and restart)",
                    c.name, schema.id
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Prepared {
        sql: TableSql {
            table: table.qualified.clone(),
            columns: schema.columns.iter().map(|c| quote_ident(&c.name)).collect(),
            key: schema.key.clone(),
            guard: table.guard,
        },
        targets: cols,
    })
}

/// Converts column `i`'s value; a value MySQL cannot hold is an `Event` error naming it.
fn bind<'v>(changes: &TableChanges, p: &Prepared<'_>, i: usize, value: &'v Value) -> Result<Bind<'v>, ConnectorError> {
    let column = &changes.schema.columns[i];
    types::convert(value, column, changes.schema.engine, p.targets[i])
        .map_err(|msg| ConnectorError::event(format!("{} column {}: {msg}", changes.target, column.name)))
}

/// Runs the segment's truncate and key-range clear, if any.
async fn truncate(conn: &mut MySqlConnection, changes: &TableChanges, p: &Prepared<'_>) -> Result<(), ConnectorError> {
    if changes.truncate {
        exec(conn, &sql::truncate_sql(&p.sql), [])
            .await
            .map_err(|e| sqlx_error(format_args!("emptying {} (source TRUNCATE)", changes.target), e))?;
    }
    if let Some(range) = &changes.clear {
        let schema = &changes.schema;
        let bytewise: Vec<bool> = schema.key.iter().map(|&i| schema.columns[i].kind.is_text_like()).collect();
        let statement =
            sql::clear_sql(&p.sql, &bytewise, range.after.is_some(), range.upto.is_some(), range.keep.len());
        let keys = [&range.after, &range.upto].into_iter().flatten().chain(&range.keep);
        let mut binds = Vec::new();
        for key in keys {
            for (value, &i) in key.iter().zip(&schema.key) {
                binds.push(bind(changes, p, i, value)?);
            }
        }
        exec(conn, &statement, &binds)
            .await
            .map_err(|e| sqlx_error(format_args!("clearing a key range of {}", changes.target), e))?;
    }
    Ok(())
}

/// Applies one table segment; returns the rows it applied.
async fn apply_table(
    conn: &mut MySqlConnection,
    env: &Env<'_>,
    targets: &HashMap<TableId, TargetTable>,
    changes: &TableChanges,
) -> Result<u64, ConnectorError> {
    let p = prepared(targets, changes)?;
    truncate(conn, changes, &p).await?;
    let mut rows = 0;
    for kind in ROW_KINDS_IN_ORDER {
        rows += apply_set(conn, env, changes, &p, kind, 0..changes.kind_len(kind)).await?;
    }
    Ok(rows)
}

/// Applies a segment's rows, setting aside each row the target rejects: a failing group is
/// rolled back to its savepoint and split in half until the failing rows stand alone. Keys
/// are distinct, so applying subsets in any order ends in the same state.
async fn apply_table_isolating(
    conn: &mut MySqlConnection,
    env: &Env<'_>,
    targets: &HashMap<TableId, TargetTable>,
    batch: &ApplyBatch,
    changes: &TableChanges,
    dead_letters: &mut Vec<DeadLetter>,
) -> Result<u64, ConnectorError> {
    let p = prepared(targets, changes)?;
    truncate(conn, changes, &p).await?;
    let mut iso = tidewater_core::Isolator::new(changes);
    while let Some((kind, range)) = iso.next_range(changes) {
        savepoint(conn, "SAVEPOINT tidewater_row").await?;
        match apply_set(conn, env, changes, &p, kind, range).await {
            Ok(n) => {
                iso.applied(n);
                savepoint(conn, "RELEASE SAVEPOINT tidewater_row").await?;
            }
            Err(e) if e.class == ErrorClass::Event => {
                savepoint(conn, "ROLLBACK TO SAVEPOINT tidewater_row").await?;
                iso.rejected(changes, batch, &e, dead_letters);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(iso.written())
}

/// Applies the rows `range` of one kind (distinct keys).
async fn apply_set(
    conn: &mut MySqlConnection,
    env: &Env<'_>,
    changes: &TableChanges,
    p: &Prepared<'_>,
    kind: RowKind,
    range: std::ops::Range<usize>,
) -> Result<u64, ConnectorError> {
    if range.is_empty() {
        return Ok(0);
    }
    match kind {
        RowKind::Move => apply_moves(conn, env, changes, p, &changes.moves[range]).await,
        RowKind::Delete => delete_rows(conn, env, changes, p, &changes.deletes[range]).await,
        RowKind::Upsert => upsert_rows(conn, env, changes, p, &changes.upserts[range]).await,
    }
}

/// Rejects a row too large to send at all (it would break the connection).
fn check_row_size(changes: &TableChanges, env: &Env<'_>, binds: &[Bind<'_>]) -> Result<usize, ConnectorError> {
    let size: usize = binds.iter().map(Bind::wire_len).sum();
    if size > env.max_row_bytes() {
        return Err(ConnectorError::event(format!(
            "{}: a row of {size} bytes does not fit the target's max_allowed_packet ({} bytes); raise max_allowed_packet on the target server and replay",
            changes.target, env.facts.max_packet
        )));
    }
    Ok(size)
}

/// How [`run_chunked`] makes a table's multi-row statements.
struct MultiRow<F: Fn(usize) -> String> {
    /// Binds per row.
    width: usize,
    /// The statement text for n rows.
    sql: F,
    /// What the statements do, for errors ("deleting from").
    what: &'static str,
    /// A row sent twice in one statement changes nothing (see [`sql::plan_chunks`]).
    pad: bool,
}

/// One multi-row statement, its parameters already encoded.
struct Encoded {
    /// Rows the statement text is made for.
    size: usize,
    args: MySqlArguments,
}

/// Runs rows `0..rows` in multi-row statements; `row_binds(i, out)` appends row `i`'s
/// `how.width` binds. Pipelined: the rows are converted and encoded a block of one
/// statement's worth at a time, the next block while the target runs the current
/// statement, so the target does not wait for the conversion of a whole batch first nor
/// for each statement's encoding. A conversion error ends the run after the statement in
/// flight (the caller rolls back).
async fn run_chunked<'v>(
    conn: &mut MySqlConnection,
    env: &Env<'_>,
    changes: &TableChanges,
    rows: usize,
    row_binds: impl Fn(usize, &mut Vec<Bind<'v>>) -> Result<(), ConnectorError> + Sync,
    how: MultiRow<impl Fn(usize) -> String>,
) -> Result<u64, ConnectorError> {
    let block = sql::max_rows_per_statement(how.width);
    let mut blocks = (0..rows).step_by(block).map(|start| start..(start + block).min(rows));
    let encode = |range: std::ops::Range<usize>| encode_block(env, changes, &how, range, &row_binds);
    let mut queue = match blocks.next() {
        Some(range) => encode(range)?,
        None => return Ok(0),
    };
    // Statement texts by size (a handful of powers of two), built once per run.
    let mut texts: Vec<(usize, Arc<str>)> = Vec::new();
    while let Some(statement) = queue.pop_front() {
        let text = match texts.iter().find(|(size, _)| *size == statement.size) {
            Some((_, text)) => text.clone(),
            None => {
                let text: Arc<str> = (how.sql)(statement.size).into();
                texts.push((statement.size, text.clone()));
                text
            }
        };
        let mut running = run_exec(sqlx::query_with(&text, statement.args), conn);
        // The first poll sends the statement; the next block is encoded while it runs.
        let polled = std::future::poll_fn(|cx| Poll::Ready(running.as_mut().poll(cx))).await;
        let next = if queue.is_empty() { blocks.next().map(encode) } else { None };
        let done = match polled {
            Poll::Ready(result) => result,
            Poll::Pending => running.await,
        };
        done.map_err(|e| sqlx_error(format_args!("{} {}", how.what, changes.target), e))?;
        if let Some(next) = next {
            queue = next?;
        }
    }
    Ok(rows as u64)
}

/// Converts and encodes rows `range` into statements (see [`sql::plan_chunks`]).
fn encode_block<'v>(
    env: &Env<'_>,
    changes: &TableChanges,
    how: &MultiRow<impl Fn(usize) -> String>,
    range: std::ops::Range<usize>,
    row_binds: &impl Fn(usize, &mut Vec<Bind<'v>>) -> Result<(), ConnectorError>,
) -> Result<VecDeque<Encoded>, ConnectorError> {
    let width = how.width;
    let mut binds = Vec::with_capacity(range.len() * width);
    for i in range {
        row_binds(i, &mut binds)?;
    }
    let sizes = binds.chunks(width).map(|row| check_row_size(changes, env, row)).collect::<Result<Vec<_>, _>>()?;
    let mut out = VecDeque::new();
    for chunk in sql::plan_chunks(&sizes, width, env.statement_budget(), how.pad) {
        let rows = &binds[chunk.start * width..(chunk.start + chunk.rows) * width];
        let filler = rows[rows.len() - width..].iter().cycle().take((chunk.size - chunk.rows) * width);
        let bytes = sizes[chunk.start..chunk.start + chunk.rows].iter().sum::<usize>();
        let mut args = MySqlArguments::default();
        args.reserve(chunk.size * width, bytes);
        for b in rows.iter().chain(filler) {
            add_bind(&mut args, b)
                .map_err(|e| ConnectorError::event(format!("{}: cannot encode a value: {e}", changes.target)))?;
        }
        out.push_back(Encoded { size: chunk.size, args });
    }
    Ok(out)
}

fn add_bind(args: &mut MySqlArguments, b: &Bind<'_>) -> Result<(), sqlx::error::BoxDynError> {
    match b {
        Bind::Null => args.add(None::<&str>),
        Bind::Int(v) => args.add(*v),
        Bind::UInt(v) => args.add(*v),
        Bind::Float(v) => args.add(*v),
        Bind::Bool(v) => args.add(*v),
        Bind::Text(s) => args.add(s.as_ref()),
        Bind::Bytes(b) => args.add(*b),
    }
}

async fn delete_rows<'v>(
    conn: &mut MySqlConnection,
    env: &Env<'_>,
    changes: &TableChanges,
    p: &Prepared<'_>,
    rows: &'v [Vec<Value>],
) -> Result<u64, ConnectorError> {
    if changes.schema.is_keyless() {
        return delete_equal_rows(conn, env, changes, p, rows).await;
    }
    let key = &changes.schema.key;
    let row_binds = |i: usize, out: &mut Vec<Bind<'v>>| {
        for &k in key {
            out.push(bind(changes, p, k, rows[i].get(k).unwrap_or(&Value::Null))?);
        }
        Ok(())
    };
    let how = MultiRow { width: key.len(), sql: |n| sql::delete_sql(&p.sql, n), what: "deleting from", pad: true };
    run_chunked(conn, env, changes, rows.len(), row_binds, how).await
}

/// A keyless table's deletes: for each distinct row image, as many rows equal to it as
/// occurs (`LIMIT n`), one statement per run of equal images.
async fn delete_equal_rows(
    conn: &mut MySqlConnection,
    env: &Env<'_>,
    changes: &TableChanges,
    p: &Prepared<'_>,
    rows: &[Vec<Value>],
) -> Result<u64, ConnectorError> {
    let mut deleted = 0;
    for (row, n) in tidewater_core::batch::equal_runs(rows) {
        let binds = row.iter().enumerate().map(|(c, v)| bind(changes, p, c, v)).collect::<Result<Vec<_>, _>>()?;
        check_row_size(changes, env, &binds)?;
        deleted += exec(conn, &sql::delete_equal_sql(&p.sql, n), &binds)
            .await
            .map_err(|e| sqlx_error(format_args!("deleting from {}", changes.target), e))?;
    }
    Ok(deleted)
}

async fn upsert_rows<'v>(
    conn: &mut MySqlConnection,
    env: &Env<'_>,
    changes: &TableChanges,
    p: &Prepared<'_>,
    rows: &'v [Vec<Value>],
) -> Result<u64, ConnectorError> {
    let schema = &changes.schema;
    let (full, partial): (Vec<&Vec<Value>>, Vec<&Vec<Value>>) =
        rows.iter().partition(|row| !row.iter().any(|v| matches!(v, Value::Unchanged)));
    let mut written = 0;
    if !full.is_empty() {
        let row_binds = |i: usize, out: &mut Vec<Bind<'v>>| {
            for (c, v) in full[i].iter().enumerate() {
                out.push(bind(changes, p, c, v)?);
            }
            Ok(())
        };
        let server = env.facts.server;
        let how = MultiRow {
            width: schema.columns.len(),
            sql: |n| sql::upsert_sql(&server, &p.sql, n),
            what: "upserting into",
            // (A repeated row would fire the target's triggers twice.)
            pad: false,
        };
        written += run_chunked(conn, env, changes, full.len(), row_binds, how).await?;
    }
    // Rows with unchanged TOAST columns update the columns that were sent, one by one.
    for row in partial {
        let set: Vec<usize> =
            (0..row.len()).filter(|&i| !schema.key.contains(&i) && !matches!(row[i], Value::Unchanged)).collect();
        if set.is_empty() {
            continue;
        }
        let binds =
            set.iter().chain(&schema.key).map(|&i| bind(changes, p, i, &row[i])).collect::<Result<Vec<_>, _>>()?;
        check_row_size(changes, env, &binds)?;
        exec(conn, &sql::update_sql(&p.sql, &set), &binds)
            .await
            .map_err(|e| sqlx_error(format_args!("updating {}", changes.target), e))?;
        written += 1;
    }
    Ok(written)
}

/// Rows moved to a new key with unsent (TOAST) columns: each is inserted at its new key,
/// taking the unsent columns from the target's row at the old key (deleted afterwards with
/// the segment's deletes).
async fn apply_moves(
    conn: &mut MySqlConnection,
    env: &Env<'_>,
    changes: &TableChanges,
    p: &Prepared<'_>,
    moves: &[MovedRow],
) -> Result<u64, ConnectorError> {
    let schema = &changes.schema;
    for moved in moves {
        let sent: Vec<bool> = moved.row.iter().map(|v| !matches!(v, Value::Unchanged)).collect();
        let mut binds = Vec::with_capacity(moved.row.len() + schema.key.len());
        for (i, v) in moved.row.iter().enumerate() {
            if sent[i] {
                binds.push(bind(changes, p, i, v)?);
            }
        }
        for &k in &schema.key {
            binds.push(bind(changes, p, k, moved.from.get(k).unwrap_or(&Value::Null))?);
        }
        check_row_size(changes, env, &binds)?;
        exec(conn, &sql::move_sql(&env.facts.server, &p.sql, &sent), &binds)
            .await
            .map_err(|e| sqlx_error(format_args!("moving a row to a new key in {}", changes.target), e))?;
    }
    Ok(moves.len() as u64)
}

/// One part of a large source transaction, inside the open target transaction. The part
/// runs under a savepoint so that, when the target rejects a row, only this part is rolled
/// back and re-applied row-isolating.
async fn apply_part_in_open_transaction(
    conn: &mut MySqlConnection,
    facts: ServerFacts,
    url_db: &str,
    bookkeeping: &str,
    state: &mut SinkState,
    part: &ApplyBatch,
    isolate: bool,
) -> Result<ApplyReport, ConnectorError> {
    if let Err(e) = reconcile_segments(conn, facts.server, url_db, state, &part.tables, false).await {
        if !e.message.contains(DDL_OUTSIDE_MARKER) {
            return Err(e);
        }
        // DDL would commit the open transaction: roll it back, alter the tables, and let the
        // engine deliver the transaction again from its start.
        exec_raw(conn, "ROLLBACK").await.map_err(|e| sqlx_error("rolling back before DDL", e))?;
        reconcile_segments(conn, facts.server, url_db, state, &part.tables, true).await?;
        return Err(ConnectorError::transient(e.message));
    }
    let env = Env { facts, bookkeeping };
    let targets = &state.targets;
    savepoint(conn, "SAVEPOINT tidewater_part").await?;
    let mut report = ApplyReport::default();
    let mut failure = None;
    for changes in &part.tables {
        match apply_table(conn, &env, targets, changes).await {
            Ok(n) => report.rows_written += n,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    match failure {
        // (No RELEASE: the next part's SAVEPOINT of the same name replaces this one, and
        // the commit ends it; that is a round trip per part less.)
        None => Ok(report),
        Some(e) if e.class == ErrorClass::Event && isolate => {
            savepoint(conn, "ROLLBACK TO SAVEPOINT tidewater_part").await?;
            let mut report = ApplyReport::default();
            let mut dead_letters = Vec::new();
            for changes in &part.tables {
                report.rows_written +=
                    apply_table_isolating(conn, &env, targets, part, changes, &mut dead_letters).await?;
            }
            report.dead_letters = dead_letters.len() as u64;
            write_dead_letters(conn, &env, &part.pipeline, &dead_letters).await?;
            Ok(report)
        }
        Some(e) => Err(e),
    }
}

// ---- schema ---------------------------------------------------------------------------

/// How far [`reconcile`] may go.
#[derive(Debug, Clone, Copy)]
struct Mode {
    /// Run DDL (false inside an open transaction: DDL would commit it).
    allow_ddl: bool,
    /// Follow a column type change made at the source (only for a table's newest schema).
    follow_type_changes: bool,
}

impl Mode {
    const FULL: Mode = Mode { allow_ddl: true, follow_type_changes: true };
}

/// Reconciles the target table of every segment, before the batch transaction starts.
/// Only a table's last segment in the batch (its newest schema) may change column types;
/// earlier segments only make sure their columns exist.
async fn reconcile_segments(
    conn: &mut MySqlConnection,
    server: Server,
    url_db: &str,
    state: &mut SinkState,
    tables: &[TableChanges],
    allow_ddl: bool,
) -> Result<(), ConnectorError> {
    for (i, changes) in tables.iter().enumerate() {
        let target = &changes.target;
        let newest = !tables[i + 1..].iter().any(|later| &later.target == target);
        let up_to_date = state.targets.contains_key(target)
            && state.reconciled.get(target).is_some_and(|s| **s == *changes.schema)
            && newest;
        if up_to_date {
            continue;
        }
        let mode = Mode { allow_ddl, follow_type_changes: newest };
        reconcile(conn, server, url_db, state, &changes.schema, target, mode).await?;
    }
    Ok(())
}

/// A unique index of a target table.
#[derive(Debug)]
struct UniqueIndex {
    /// Lowercased column names.
    columns: BTreeSet<String>,
    /// On a column prefix or an expression: does not identify rows by whole values.
    partial: bool,
}

/// Makes the target table fit the source schema: creates it (and its database), adds
/// missing columns, follows type changes; checks that the source key is a unique key of
/// the target. DDL runs in autocommit (MySQL commits around DDL anyway).
async fn reconcile(
    conn: &mut MySqlConnection,
    server: Server,
    url_db: &str,
    state: &mut SinkState,
    schema: &Arc<TableSchema>,
    target: &TableId,
    mode: Mode,
) -> Result<(), ConnectorError> {
    let (db, name) = target_location(url_db, target);
    let qualified = format!("{}.{}", quote_ident(&db), quote_ident(&name));
    let mut existing = load_columns(conn, &db, &name).await?;
    let ddl = plan_ddl(server, url_db, state, schema, target, &db, &qualified, &existing, mode)?;
    if !ddl.is_empty() {
        if !mode.allow_ddl {
            let what = ddl.iter().map(|d| d.what.as_str()).collect::<Vec<_>>().join("; ");
            return Err(ConnectorError::transient(format!(
                "the source changed the schema of {} inside a large transaction ({what}); MySQL commits around DDL, so {DDL_OUTSIDE_MARKER} and the transaction is applied again from its start",
                schema.id
            )));
        }
        for step in &ddl {
            if let Err(e) = exec_raw(conn, &step.sql).await {
                let mut err = sqlx_error(&step.what, e);
                // Another pipeline added the same column a moment ago.
                if step.add_column && err.code.as_deref() == Some("1060") {
                    continue;
                }
                if err.class == ErrorClass::Event {
                    err.class = ErrorClass::Fatal;
                }
                if err.class == ErrorClass::Fatal {
                    err.message.push_str(&format!("; the statement was: {}", step.sql));
                }
                return Err(err);
            }
            tracing::info!(table = %target, change = %step.what, "changed target table");
        }
        existing = load_columns(conn, &db, &name).await?;
        if existing.is_empty() {
            return Err(ConnectorError::fatal(format!(
                "target table {qualified} was created but information_schema does not show it (lower_case_table_names?)"
            )));
        }
    }
    let table = TargetTable { qualified, columns: existing, guard: false };
    for column in &schema.columns {
        if table.column(&column.name).is_none() {
            return Err(ConnectorError::fatal(format!(
                "target table {target} has no column {} and it could not be added",
                column.name
            )));
        }
    }
    if schema.is_keyless() {
        // Rows are appended and matched by their whole content: no key to check.
        state.targets.insert(target.clone(), table);
        if mode.follow_type_changes {
            state.reconciled.insert(target.clone(), schema.clone());
        }
        return Ok(());
    }
    let key: BTreeSet<String> = schema.key.iter().map(|&i| schema.columns[i].name.to_lowercase()).collect();
    let uniques = load_unique_indexes(conn, &db, &name).await?;
    if !uniques.iter().any(|u| !u.partial && u.columns == key) {
        return Err(ConnectorError::fatal(format!(
            "target table {target} has no primary key or unique index on exactly ({}), the source key; upserts need one: add it (ALTER TABLE {} ADD PRIMARY KEY (...))",
            schema.key_names().join(", "),
            table.qualified
        )));
    }
    let guard = uniques.iter().any(|u| u.partial || u.columns != key);
    state.targets.insert(target.clone(), TargetTable { guard, ..table });
    if mode.follow_type_changes {
        state.reconciled.insert(target.clone(), schema.clone());
    }
    Ok(())
}

/// One DDL statement and what it does (for logs and errors).
#[derive(Debug)]
struct DdlStep {
    sql: String,
    what: String,
    add_column: bool,
}

/// The DDL that makes the target table fit `schema` (nothing when it already does).
#[allow(clippy::too_many_arguments)]
fn plan_ddl(
    server: Server,
    url_db: &str,
    state: &SinkState,
    schema: &TableSchema,
    target: &TableId,
    db: &str,
    qualified: &str,
    existing: &[TargetColumn],
    mode: Mode,
) -> Result<Vec<DdlStep>, ConnectorError> {
    let mut steps = Vec::new();
    if existing.is_empty() {
        if db != url_db {
            steps.push(DdlStep {
                sql: sql::create_database_sql(&server, db),
                what: format!("creating database {db} on the target"),
                add_column: false,
            });
        }
        steps.push(DdlStep {
            sql: sql::create_table_sql(&server, qualified, &create_decls(schema)),
            what: format!("creating target table {target}"),
            add_column: false,
        });
        return Ok(steps);
    }
    let find = |name: &str| existing.iter().find(|c| c.name.eq_ignore_ascii_case(name));
    let mut row_bytes: u64 = existing.iter().map(|c| types::row_bytes(&c.column_type)).sum();
    let previous = state.reconciled.get(target);
    // Columns the source renamed or dropped since the schema this table was last made to
    // fit (columns the target does not have are skipped). Not inside a large transaction:
    // its redelivery from the start replays the older schema, and DDL outside the
    // transaction would flip the table back and forth.
    let mut renamed_to: Vec<String> = Vec::new();
    if let (Some(prev), true) = (previous, mode.follow_type_changes && mode.allow_ddl) {
        let changes = tidewater_core::ColumnChanges::between(prev, schema);
        for (old, new) in &changes.renamed {
            if find(old).is_some() && find(new).is_none() {
                steps.push(DdlStep {
                    sql: format!("ALTER TABLE {qualified} RENAME COLUMN {} TO {}", quote_ident(old), quote_ident(new)),
                    what: format!("the source renamed column {target}.{old} to {new}; following it"),
                    add_column: false,
                });
                renamed_to.push(new.clone());
            }
        }
        for column in changes.dropped.iter().filter(|c| find(c).is_some()) {
            steps.push(DdlStep {
                sql: format!("ALTER TABLE {qualified} DROP COLUMN {}", quote_ident(column)),
                what: format!("the source dropped column {target}.{column}; following it"),
                add_column: false,
            });
        }
    }
    for (i, column) in schema.columns.iter().enumerate() {
        let key = schema.key.contains(&i);
        match find(&column.name) {
            None if renamed_to.contains(&column.name) => {}
            None => {
                let mut ty = types::mysql_type(schema, column, key);
                if row_bytes + types::row_bytes(&ty) > types::ROW_BYTES_BUDGET && !key {
                    ty = off_row(&ty);
                }
                row_bytes += types::row_bytes(&ty);
                let default = default_literal(schema, column, &ty).map_err(|e| {
                    ConnectorError::fatal(format!(
                        "cannot add column {} to target table {target}: the value existing rows hold at the source cannot be stored in MySQL: {e}",
                        column.name
                    ))
                })?;
                let decl = ColumnDecl { name: column.name.clone(), mysql_type: ty, key, default };
                steps.push(DdlStep {
                    sql: sql::add_column_sql(&server, qualified, &decl),
                    what: format!("adding column {} {} to target table {target}", column.name, decl.mysql_type),
                    add_column: true,
                });
            }
            Some(_) if mode.follow_type_changes => {
                // Follow a type change made at the source while streaming; a pre-existing
                // target table with different (compatible) types is left as the user made it.
                let Some(prev) = previous else { continue };
                let Some(old) = prev.columns.iter().find(|c| c.name == column.name) else { continue };
                let (old_ty, new_ty) = (types::mysql_type(prev, old, key), types::mysql_type(schema, column, key));
                if old.native_type != column.native_type && old_ty != new_ty {
                    let decl = ColumnDecl {
                        name: column.name.clone(),
                        mysql_type: new_ty,
                        key,
                        default: default_literal(schema, column, &types::mysql_type(schema, column, key))
                            .ok()
                            .flatten(),
                    };
                    steps.push(DdlStep {
                        sql: sql::modify_column_sql(&server, qualified, &decl),
                        what: format!(
                            "the source changed the type of {target}.{} from {} to {}, and the target cannot follow ({old_ty} → {}); alter the target column by hand and restart",
                            column.name, old.native_type, column.native_type, decl.mysql_type
                        ),
                        add_column: false,
                    });
                }
            }
            Some(_) => {}
        }
    }
    Ok(steps)
}

/// Column declarations for a new table; when the VARCHAR/CHAR columns together would
/// exceed MySQL's 65535-byte row limit, the longest non-key ones become LONGTEXT/LONGBLOB
/// (stored off-row).
fn create_decls(schema: &TableSchema) -> Vec<ColumnDecl> {
    let mut decls: Vec<ColumnDecl> = schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let key = schema.key.contains(&i);
            ColumnDecl { name: c.name.clone(), mysql_type: types::mysql_type(schema, c, key), key, default: None }
        })
        .collect();
    loop {
        let total: u64 = decls.iter().map(|d| types::row_bytes(&d.mysql_type)).sum();
        if total <= types::ROW_BYTES_BUDGET {
            break;
        }
        let widest = decls
            .iter_mut()
            .filter(|d| !d.key && types::row_bytes(&d.mysql_type) > 0)
            .max_by_key(|d| types::row_bytes(&d.mysql_type));
        match widest {
            Some(d) => d.mysql_type = off_row(&d.mysql_type),
            None => break,
        }
    }
    decls
}

/// The off-row (LONGTEXT/LONGBLOB) type for a VARCHAR/CHAR/VARBINARY/BINARY declaration.
fn off_row(mysql_type: &str) -> String {
    let t = mysql_type.to_ascii_lowercase();
    if t.starts_with("varbinary") || t.starts_with("binary") {
        "LONGBLOB".into()
    } else if t.starts_with("varchar") || t.starts_with("char") {
        "LONGTEXT".into()
    } else {
        mysql_type.to_string()
    }
}

/// The DEFAULT literal giving existing rows of an added column the value they hold at the
/// source (kept on the column, so rows of older-schema segments in the same batch get it too).
fn default_literal(
    schema: &TableSchema,
    column: &tidewater_core::Column,
    mysql_type: &str,
) -> Result<Option<String>, String> {
    let Some(text) = &column.existing_rows_value else { return Ok(None) };
    let value = types::value_from_text(&column.kind, text);
    let target = TargetColumn::declared(&column.name, mysql_type);
    let bind = types::convert(&value, column, schema.engine, &target)?;
    Ok(Some(bind.literal()))
}

/// The columns of `db`.`table` (empty when it does not exist).
async fn load_columns(conn: &mut MySqlConnection, db: &str, table: &str) -> Result<Vec<TargetColumn>, ConnectorError> {
    let q = sqlx::query(
        "SELECT CONVERT(COLUMN_NAME USING utf8mb4), CONVERT(DATA_TYPE USING utf8mb4), \
                CONVERT(COLUMN_TYPE USING utf8mb4), CAST(NUMERIC_PRECISION AS SIGNED), \
                CAST(NUMERIC_SCALE AS SIGNED), CAST(DATETIME_PRECISION AS SIGNED), \
                CAST(IS_NULLABLE = 'YES' AS SIGNED) \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
    )
    .bind(db)
    .bind(table);
    let rows = run_fetch_all(q, &mut *conn)
        .await
        .map_err(|e| sqlx_error(format_args!("reading the columns of target table {db}.{table}"), e))?;
    rows.iter()
        .map(|r| {
            Ok(TargetColumn {
                name: text(r, 0)?,
                data_type: text(r, 1)?.to_ascii_lowercase(),
                column_type: text(r, 2)?.to_ascii_lowercase(),
                numeric_precision: opt_u32(r, 3)?,
                numeric_scale: opt_u32(r, 4)?,
                datetime_precision: opt_u32(r, 5)?,
                nullable: opt_u32(r, 6)? == Some(1),
            })
        })
        .collect()
}

async fn load_unique_indexes(
    conn: &mut MySqlConnection,
    db: &str,
    table: &str,
) -> Result<Vec<UniqueIndex>, ConnectorError> {
    let q = sqlx::query(
        "SELECT CONVERT(INDEX_NAME USING utf8mb4), CONVERT(COLUMN_NAME USING utf8mb4), \
                CAST(SUB_PART IS NOT NULL AS SIGNED) \
         FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
         ORDER BY INDEX_NAME, SEQ_IN_INDEX",
    )
    .bind(db)
    .bind(table);
    let rows = run_fetch_all(q, &mut *conn)
        .await
        .map_err(|e| sqlx_error(format_args!("reading the unique indexes of target table {db}.{table}"), e))?;
    let mut by_name: Vec<(String, UniqueIndex)> = Vec::new();
    for r in &rows {
        let index = text(r, 0)?;
        let column = opt_text(r, 1)?;
        let prefix = opt_u32(r, 2)? == Some(1);
        if by_name.last().is_none_or(|(name, _)| name != &index) {
            by_name.push((index.clone(), UniqueIndex { columns: BTreeSet::new(), partial: false }));
        }
        if let Some((_, u)) = by_name.last_mut() {
            match column {
                Some(c) if !prefix => {
                    u.columns.insert(c.to_lowercase());
                }
                _ => u.partial = true,
            }
        }
    }
    Ok(by_name.into_iter().map(|(_, u)| u).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tidewater_core::{Column, ColumnType, Engine};

    #[test]
    fn endpoint_debug_hides_the_password() {
        let ep = MysqlEndpoint {
            host: "db".into(),
            port: 3306,
            user: "tw".into(),
            password: Some("s3cret".into()),
            database: "app".into(),
        };
        let shown = format!("{ep:?} {ep}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert_eq!(ep.to_string(), "mysql://tw@db:3306/app");
    }

    #[test]
    fn public_schema_is_the_url_database_and_others_are_databases() {
        assert_eq!(target_location("app", &TableId::new("public", "orders")), ("app".into(), "orders".into()));
        assert_eq!(target_location("app", &TableId::new("replica", "orders")), ("replica".into(), "orders".into()));
        assert_eq!(target_location("app", &TableId::new("app", "orders")), ("app".into(), "orders".into()));
    }

    #[test]
    fn wide_tables_move_long_varchars_off_row() {
        let col = |name: &str, kind: ColumnType| Column {
            name: name.into(),
            kind,
            native_type: "x".into(),
            nullable: true,
            existing_rows_value: None,
        };
        let mut columns = vec![col("id", ColumnType::Text)];
        for i in 0..10 {
            columns.push(col(&format!("v{i}"), ColumnType::Varchar(Some(2000))));
        }
        let schema = TableSchema {
            id: TableId::new("public", "wide"),
            engine: Engine::Postgres,
            columns,
            key: vec![0],
            enum_labels: vec![],
        };
        let decls = create_decls(&schema);
        assert_eq!(decls[0].mysql_type, "VARCHAR(255)");
        let total: u64 = decls.iter().map(|d| types::row_bytes(&d.mysql_type)).sum();
        assert!(total <= types::ROW_BYTES_BUDGET, "{total}");
        assert_eq!(decls.iter().filter(|d| d.mysql_type == "VARCHAR(2000)").count(), 7);
        assert_eq!(decls.iter().filter(|d| d.mysql_type == "LONGTEXT").count(), 3);
    }

    #[test]
    fn payloads_too_large_for_a_packet_are_shortened() {
        let big = "x".repeat(5000);
        let payload = serde_json::json!({"id": 1, "body": big});
        assert_eq!(payload_text(&payload, 1 << 20), payload.to_string());
        let short: serde_json::Value = serde_json::from_str(&payload_text(&payload, 1000)).unwrap();
        assert_eq!(short["id"], 1);
        assert!(short["body"].as_str().unwrap().contains("bytes omitted"));
        assert_eq!(truncate_text("aé", 2), "a");
    }
}
