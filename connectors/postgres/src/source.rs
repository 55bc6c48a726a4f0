//! PostgreSQL source: logical replication with pgoutput.
//!
//! # Snapshot
//! The slot is created with `EXPORT_SNAPSHOT` on a replication connection that then stays
//! idle; an ordinary connection imports the snapshot (`SET TRANSACTION SNAPSHOT`) and reads
//! every table with `COPY ... TO STDOUT`. Streaming then starts at the slot's consistent
//! point: the snapshot contains exactly the transactions committed before it, the stream
//! exactly those after. An unfinished snapshot is never resumed: the slot is dropped and
//! the snapshot starts over (the engine empties the target tables first).
//!
//! # Replication
//! `START_REPLICATION ... LOGICAL` with `proto_version '1'`. Three tasks share the
//! connection: the reader decodes messages into whole transactions and hands them on
//! (waiting when the engine is busy: that is the backpressure); the status writer sends
//! standby status updates on its own clock and whenever the engine acknowledges, so the
//! server's keepalive timeout never waits behind a slow apply; the poller reads
//! `pg_current_wal_lsn()` for the lag figures.
//!
//! # Resumption
//! The flush position sent to the server (the slot's `confirmed_flush_lsn`) is only ever
//! a position the engine acknowledged, i.e. one committed in the target. The stream is
//! started at the target's checkpoint and transactions ending at or before it are skipped.
//! When idle (no transaction open, everything delivered), keepalive positions are passed
//! to the engine as heartbeats, so traffic on unpublished tables does not pin WAL.
//!
//! # Error handling
//! A missing or invalidated slot, wrong `wal_level`, missing privileges and undecodable
//! messages are fatal with a message naming the fix and the source position; connection
//! loss is transient.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use tidewater_core::{
    ChangeEvent, Checkpoint, ColumnType, ConnectorError, ErrorClass, Op, SnapshotChunk, Source, SourceItem,
    SourceProgress, StreamHandle, TableId, TableSchema, Transaction, TransactionPart, Value,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio_postgres::Client;

use crate::catalog::{coverage, relation_schema, resolve_tables, table_schema};
use crate::conn::{connect, PgEndpoint};
use crate::pgoutput::{self, LogicalMessage, TupleData, TupleValue};
use crate::replication::{
    format_lsn, parse_lsn, ReplicationConfig, ReplicationConnection, ReplicationError, ReplicationMessage,
};
use crate::sql::{pg_error, quote_ident, quote_literal, quote_table, sqlstate_class};
use crate::types::decode_text;

/// How often a standby status update is sent even when nothing changed. It also asks the
/// server for a keepalive, which is how an idle stream learns the WAL end.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);
const LAG_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often the stream looks for tables created, dropped or renamed under the configured
/// patterns and partitions attached or detached (it then restarts to follow them).
const CATALOG_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// A transaction larger than this is handed on in parts of this many events.
const TX_PART_EVENTS: usize = 10_000;
/// Parts queued or being applied at once: bounds memory for huge transactions.
const TX_PARTS_IN_FLIGHT: usize = 3;

#[derive(Debug, Clone)]
pub struct PgSourceConfig {
    /// The `[sources.NAME]` key, for messages.
    pub source_name: String,
    pub endpoint: PgEndpoint,
    pub tables: Vec<String>,
    pub slot: String,
    pub publication: String,
}

struct SnapshotSession {
    /// Keeps the exported snapshot alive; must stay idle until the copy is done. None for
    /// a backfill, which reads its own snapshot.
    _exporter: Option<ReplicationConnection>,
    reader: Client,
}

pub struct PgSource {
    cfg: PgSourceConfig,
    client: Option<Arc<Client>>,
    tables: Vec<(TableId, u32)>,
    /// What the patterns covered when the tables were resolved (see
    /// [`crate::catalog::coverage`]); the stream restarts when it changes.
    coverage: Vec<(TableId, u32, Vec<TableId>)>,
    snapshot: Option<SnapshotSession>,
    /// The consistent point of the last backfill's read.
    backfill_position: Option<String>,
    /// Per table: changes in transactions committing before this LSN are in its copy.
    table_starts: HashMap<TableId, u64>,
    /// Snapshot chunks of tables with a key as `COPY` text (see `Source::prefer_raw`).
    raw: bool,
}

/// Converts a replication-connection error, classifying it like any other SQLSTATE.
pub fn repl_error(what: impl std::fmt::Display, e: ReplicationError) -> ConnectorError {
    let class = match &e {
        ReplicationError::Io(_) => Some(ErrorClass::Transient),
        ReplicationError::Server { code, .. } => sqlstate_class(code),
        ReplicationError::Auth(_) | ReplicationError::Protocol(_) | ReplicationError::Tls(_) => Some(ErrorClass::Fatal),
    };
    let mut err = ConnectorError::classified(class, format!("{what}: {e}"));
    if let Some(code) = e.sqlstate() {
        err = err.with_code(code);
    }
    err
}

impl PgSource {
    pub fn new(cfg: PgSourceConfig) -> Self {
        PgSource {
            cfg,
            client: None,
            tables: Vec::new(),
            coverage: Vec::new(),
            snapshot: None,
            backfill_position: None,
            table_starts: HashMap::new(),
            raw: false,
        }
    }

    async fn client(&mut self) -> Result<Arc<Client>, ConnectorError> {
        if let Some(c) = &self.client {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let c = Arc::new(
            connect(&self.cfg.endpoint)
                .await
                .map_err(|e| e.context(format_args!("source {}", self.cfg.source_name)))?,
        );
        self.client = Some(c.clone());
        Ok(c)
    }

    fn replication_config(&self) -> ReplicationConfig {
        let ep = &self.cfg.endpoint;
        ReplicationConfig {
            host: ep.host.clone(),
            port: ep.port,
            user: ep.user.clone(),
            password: ep.password.clone(),
            database: ep.database.clone(),
            application_name: ep.application_name.clone(),
            connect_timeout: Duration::from_secs(10),
            tls: ep.tls.clone(),
        }
    }

    async fn replication_connection(&self) -> Result<ReplicationConnection, ConnectorError> {
        ReplicationConnection::connect(&self.replication_config()).await.map_err(|e| {
            repl_error(format_args!("opening a replication connection to source {}", self.cfg.source_name), e)
        })
    }

    async fn slot_state(&mut self) -> Result<Option<SlotState>, ConnectorError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT confirmed_flush_lsn::text, active_pid, coalesce(wal_status, ''), plugin::text, database::text \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.cfg.slot],
            )
            .await
            .map_err(|e| pg_error("reading replication slots", e))?;
        Ok(row.map(|r| SlotState {
            confirmed_flush: r.get::<_, Option<String>>(0).as_deref().and_then(parse_lsn),
            active_pid: r.get(1),
            wal_status: r.get(2),
            plugin: r.get(3),
            database: r.get(4),
        }))
    }

    async fn drop_slot(&mut self) -> Result<(), ConnectorError> {
        let Some(state) = self.slot_state().await? else {
            return Ok(());
        };
        let client = self.client().await?;
        if let Some(pid) = state.active_pid {
            // A previous run of this pipeline that died; its walsender may linger.
            let _ = client.execute("SELECT pg_terminate_backend($1)", &[&pid]).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[&self.cfg.slot])
            .await
            .map_err(|e| pg_error(format_args!("dropping unfinished snapshot's slot {}", self.cfg.slot), e))?;
        Ok(())
    }

    async fn create_slot(
        &mut self,
        export_snapshot: bool,
    ) -> Result<(ReplicationConnection, String, Option<String>), ConnectorError> {
        let slot = self.cfg.slot.clone();
        self.create_named_slot(&slot, false, export_snapshot).await
    }

    /// Creates slot `slot` (`temporary`: dropped when the connection closes) on a new
    /// replication connection; returns the connection (it must stay idle while the
    /// exported snapshot is in use), the consistent point and the snapshot's name.
    async fn create_named_slot(
        &mut self,
        slot: &str,
        temporary: bool,
        export_snapshot: bool,
    ) -> Result<(ReplicationConnection, String, Option<String>), ConnectorError> {
        let mut repl = self.replication_connection().await?;
        let mode = if export_snapshot { "EXPORT_SNAPSHOT" } else { "NOEXPORT_SNAPSHOT" };
        let temp = if temporary { "TEMPORARY " } else { "" };
        let rows = repl
            .simple_query(&format!("CREATE_REPLICATION_SLOT {} {temp}LOGICAL pgoutput {mode}", quote_ident(slot)))
            .await
            .map_err(|e| repl_error(format_args!("creating replication slot {slot}"), e))?;
        let row = rows.first().ok_or_else(|| ConnectorError::fatal("CREATE_REPLICATION_SLOT returned no row"))?;
        let consistent_point = row
            .get(1)
            .cloned()
            .flatten()
            .ok_or_else(|| ConnectorError::fatal("CREATE_REPLICATION_SLOT returned no consistent point"))?;
        let snapshot_name = row.get(2).cloned().flatten();
        tracing::info!(slot = %slot, temporary, position = %consistent_point, "created replication slot");
        Ok((repl, consistent_point, snapshot_name))
    }

    async fn ensure_publication(&mut self) -> Result<(), ConnectorError> {
        let client = self.client().await?;
        let publication = &self.cfg.publication;
        let table_list = self.tables.iter().map(|(t, _)| quote_table(t)).collect::<Vec<_>>().join(", ");
        let how_to = format!(
            "the source user must own the tables, or create it yourself: CREATE PUBLICATION {} FOR TABLE {table_list} \
             WITH (publish_via_partition_root = true)",
            quote_ident(publication)
        );
        let exists = client
            .query_opt(
                "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate, pubviaroot FROM pg_publication WHERE pubname = $1",
                &[publication],
            )
            .await
            .map_err(|e| pg_error("reading publications", e))?;
        match exists {
            None => {
                client
                    .batch_execute(&format!(
                        "CREATE PUBLICATION {} {} WITH (publish_via_partition_root = true)",
                        quote_ident(publication),
                        // No table yet (an empty schema under a wildcard): tables come later.
                        if self.tables.is_empty() { String::new() } else { format!("FOR TABLE {table_list}") }
                    ))
                    .await
                    .map_err(|e| pg_error(format_args!("creating publication {publication} ({how_to})"), e))?;
                tracing::info!(publication = %publication, "created publication");
            }
            Some(row) => {
                let published: Vec<TableId> = client
                    .query(
                        "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                        &[publication],
                    )
                    .await
                    .map_err(|e| pg_error("reading publication tables", e))?
                    .iter()
                    .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
                    .collect();
                let mut wanted: Vec<&TableId> = self.tables.iter().map(|(t, _)| t).collect();
                let mut have: Vec<&TableId> = published.iter().collect();
                wanted.sort();
                have.sort();
                if wanted != have {
                    let change = if wanted.is_empty() {
                        let list = have.iter().map(|t| quote_table(t)).collect::<Vec<_>>().join(", ");
                        format!("ALTER PUBLICATION {} DROP TABLE {list}", quote_ident(publication))
                    } else {
                        format!("ALTER PUBLICATION {} SET TABLE {table_list}", quote_ident(publication))
                    };
                    client
                        .batch_execute(&change)
                        .await
                        .map_err(|e| pg_error(format_args!("updating publication {publication} ({how_to})"), e))?;
                    tracing::info!(publication = %publication, "publication now matches the configured tables");
                }
                if !row.get::<_, bool>(0) || !row.get::<_, bool>(1) {
                    client
                        .batch_execute(&format!(
                            "ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate', \
                             publish_via_partition_root = true)",
                            quote_ident(publication)
                        ))
                        .await
                        .map_err(|e| pg_error(format_args!("updating publication {publication}"), e))?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct SlotState {
    confirmed_flush: Option<u64>,
    active_pid: Option<i32>,
    wal_status: String,
    plugin: String,
    database: String,
}

#[async_trait]
impl Source for PgSource {
    async fn prepare(&mut self) -> Result<Vec<Arc<TableSchema>>, ConnectorError> {
        let name = self.cfg.source_name.clone();
        let client = self.client().await?;
        let wal_level: String =
            client.query_one("SHOW wal_level", &[]).await.map_err(|e| pg_error("reading wal_level", e))?.get(0);
        if wal_level != "logical" {
            return Err(ConnectorError::fatal(format!(
                "source {name}: wal_level is {wal_level}, logical replication needs wal_level = logical \
                 (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)"
            )));
        }
        let can_replicate: bool = client
            .query_one("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user", &[])
            .await
            .map_err(|e| pg_error("reading role attributes", e))?
            .get(0);
        if !can_replicate {
            return Err(ConnectorError::fatal(format!(
                "source {name}: user {} lacks the REPLICATION attribute (ALTER ROLE {} REPLICATION)",
                self.cfg.endpoint.user,
                quote_ident(&self.cfg.endpoint.user)
            )));
        }
        let schemas = self.describe().await?;
        self.ensure_publication().await?;
        Ok(schemas)
    }

    async fn describe(&mut self) -> Result<Vec<Arc<TableSchema>>, ConnectorError> {
        let client = self.client().await?;
        self.coverage = coverage(&client, &self.cfg.tables, &self.cfg.source_name).await?;
        self.tables = resolve_tables(&client, &self.cfg.tables, &self.cfg.source_name).await?;
        let mut schemas = Vec::with_capacity(self.tables.len());
        for (id, relid) in &self.tables {
            schemas.push(table_schema(&client, id, *relid).await?);
        }
        Ok(schemas)
    }

    async fn fetch_row(&mut self, table: &TableSchema, key: &[Value]) -> Result<Option<Vec<Value>>, ConnectorError> {
        let client = self.client().await?;
        let casts = crate::catalog::cast_types(&client, &table.id).await?;
        let select = table.columns.iter().map(|c| format!("{}::text", quote_ident(&c.name))).collect::<Vec<_>>();
        let matches = table
            .key
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                let c = &table.columns[i].name;
                let cast = casts.get(c).map_or("text", String::as_str);
                format!("{} = ${}::text::{cast}", quote_ident(c), n + 1)
            })
            .collect::<Vec<_>>();
        let sql =
            format!("SELECT {} FROM {} WHERE {}", select.join(", "), quote_table(&table.id), matches.join(" AND "));
        let texts: Vec<Option<String>> = key.iter().map(Value::to_pg_text).collect();
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            texts.iter().map(|t| t as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        let Some(row) = client
            .query_opt(&sql, &params)
            .await
            .map_err(|e| pg_error(format_args!("reading the current row of {}", table.id), e))?
        else {
            return Ok(None);
        };
        decode_text_row(table, &row).map(Some)
    }

    async fn begin_without_snapshot(&mut self) -> Result<String, ConnectorError> {
        if let Some(state) = self.slot_state().await? {
            if let Some(lsn) = state.confirmed_flush {
                return Ok(format_lsn(lsn));
            }
        }
        let (repl, position, _) = self.create_slot(false).await?;
        let _ = repl.close().await;
        Ok(position)
    }

    async fn begin_snapshot(&mut self) -> Result<String, ConnectorError> {
        self.snapshot = None;
        self.drop_slot().await?;
        let (exporter, position, snapshot_name) = self.create_slot(true).await?;
        let reader = import_snapshot(&self.cfg.endpoint, snapshot_name, "importing the slot's snapshot").await?;
        self.snapshot = Some(SnapshotSession { _exporter: Some(exporter), reader });
        Ok(position)
    }

    async fn begin_backfill(&mut self) -> Result<(), ConnectorError> {
        // A temporary slot's exported snapshot: a read whose position is exact (it holds
        // the transactions committed before the consistent point, the stream the others).
        self.snapshot = None;
        self.backfill_position = None;
        let mut name = self.cfg.slot.clone();
        name.truncate(58);
        name.push_str("_copy");
        let (exporter, position, snapshot_name) = self.create_named_slot(&name, true, true).await?;
        let reader = import_snapshot(&self.cfg.endpoint, snapshot_name, "starting the backfill snapshot").await?;
        self.snapshot = Some(SnapshotSession { _exporter: Some(exporter), reader });
        self.backfill_position = Some(position);
        Ok(())
    }

    fn backfill_position(&self) -> Option<String> {
        self.backfill_position.clone()
    }

    async fn resume_snapshot(&mut self, position: &str) -> Result<bool, ConnectorError> {
        // The slot made with the snapshot still holds the WAL from `position` on when it
        // exists, is valid, and has not been advanced past it.
        let Some(start) = parse_lsn(position) else { return Ok(false) };
        let usable = match self.slot_state().await? {
            Some(state) => {
                state.wal_status != "lost"
                    && state.plugin == "pgoutput"
                    && state.database == self.cfg.endpoint.database
                    && state.confirmed_flush.is_none_or(|lsn| lsn <= start)
            }
            None => false,
        };
        if !usable {
            return Ok(false);
        }
        self.begin_backfill().await?;
        Ok(true)
    }

    fn set_table_starts(&mut self, starts: HashMap<TableId, String>) {
        self.table_starts = starts.into_iter().filter_map(|(t, p)| parse_lsn(&p).map(|lsn| (t, lsn))).collect();
    }

    async fn resync_chunk(
        &mut self,
        table: &Arc<TableSchema>,
        chunk_rows: usize,
        after: Option<&[Value]>,
    ) -> Result<(String, Arc<TableSchema>, Vec<Vec<Value>>), ConnectorError> {
        if table.key.is_empty() {
            return Err(ConnectorError::fatal(format!("{}: a table without a key is not resynced by key", table.id)));
        }
        // A temporary slot's exported snapshot, as for a backfill, under a name of its
        // own (a backfill or `verify` may hold `<slot>_copy`). Once the reader has taken
        // the snapshot, the slot is dropped: one per chunk.
        let mut name = self.cfg.slot.clone();
        name.truncate(59);
        name.push_str("_rs");
        let (mut exporter, position, snapshot_name) = self.create_named_slot(&name, true, true).await?;
        let reader = import_snapshot(&self.cfg.endpoint, snapshot_name, "starting a resync read").await?;
        if let Err(e) = exporter.simple_query(&format!("DROP_REPLICATION_SLOT {}", quote_ident(&name))).await {
            tracing::debug!(slot = %name, error = %e, "could not drop the resync slot (it goes with its session)");
        }
        let _ = exporter.close().await;
        // The table's columns as of the read (the catalog is read under the same snapshot).
        let relid = self.tables.iter().find(|(id, _)| *id == table.id).map(|(_, relid)| *relid).ok_or_else(|| {
            ConnectorError::fatal(format!("resync of {}: the table was not described by this source", table.id))
        })?;
        let schema = crate::catalog::table_schema(&reader, &table.id, relid).await?;
        if schema.key != table.key {
            return Err(ConnectorError::fatal(format!(
                "resync of {}: its key changed since the pipeline started; restart the daemon and resync again",
                table.id
            )));
        }
        let casts = crate::catalog::cast_types(&reader, &table.id).await?;
        let from = quote_table(&table.id);
        let rows = crate::snapshot::read_chunk(
            &reader,
            &schema,
            &from,
            &casts,
            chunk_rows,
            after,
            crate::snapshot::KeyOrder::Bytes,
        )
        .await?;
        let _ = reader.batch_execute("COMMIT").await;
        // A WAL record after the read's position: the stream reaches it (and reports it in
        // a keepalive) even when nothing else is written.
        if let Err(e) = reader.batch_execute("SELECT pg_logical_emit_message(false, 'tidewater', '')").await {
            tracing::debug!(error = %e, "could not write a WAL message after the resync read");
        }
        Ok((position, schema, rows))
    }

    fn prefer_raw(&mut self, format: Option<tidewater_core::RawFormat>) {
        self.raw = format == Some(tidewater_core::RawFormat::PgCopyText);
    }

    fn position_order(&self) -> tidewater_core::PositionOrder {
        |a, b| Some(parse_lsn(a)?.cmp(&parse_lsn(b)?))
    }

    async fn table_parts(&mut self, table: &TableSchema) -> Result<Vec<TableId>, ConnectorError> {
        let Some(relid) = self.tables.iter().find(|(id, _)| *id == table.id).map(|(_, relid)| *relid) else {
            return Ok(Vec::new());
        };
        let client = self.client().await?;
        crate::catalog::leaf_partitions(&client, relid).await
    }

    async fn estimate_rows(&mut self, table: &TableSchema) -> Option<u64> {
        let relid = self.tables.iter().find(|(id, _)| *id == table.id).map(|(_, relid)| *relid)?;
        let client = self.client().await.ok()?;
        crate::catalog::estimate_rows(&client, relid).await.ok().flatten()
    }

    async fn snapshot_table(
        &mut self,
        table: &Arc<TableSchema>,
        chunk_rows: usize,
        after: Option<&[Value]>,
        out: &mpsc::Sender<SnapshotChunk>,
    ) -> Result<(), ConnectorError> {
        let session = self
            .snapshot
            .as_ref()
            .ok_or_else(|| ConnectorError::fatal("snapshot_table called without begin_snapshot"))?;
        if !table.key.is_empty() {
            let casts = crate::catalog::cast_types(&session.reader, &table.id).await?;
            let from = quote_table(&table.id);
            let raw = self.raw;
            return crate::snapshot::read_keyed(&session.reader, table, &from, &casts, chunk_rows, after, raw, out)
                .await;
        }
        if after.is_some() {
            return Err(ConnectorError::fatal(format!(
                "{}: a table without a key cannot be read from a key",
                table.id
            )));
        }
        let columns = table.columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
        let partitioned = match self.tables.iter().find(|(id, _)| *id == table.id) {
            Some((_, relid)) => crate::catalog::is_partitioned(&session.reader, *relid).await?,
            None => false,
        };
        // COPY cannot read a partitioned table itself, only a query over it.
        let sql = if partitioned {
            format!("COPY (SELECT {columns} FROM {}) TO STDOUT", quote_table(&table.id))
        } else {
            format!("COPY {} ({columns}) TO STDOUT", quote_table(&table.id))
        };
        let stream =
            session.reader.copy_out(&sql).await.map_err(|e| pg_error(format_args!("copying {}", table.id), e))?;
        futures_util::pin_mut!(stream);
        let kinds: Vec<ColumnType> = table.columns.iter().map(|c| c.kind.clone()).collect();
        let mut buf = BytesMut::new();
        let mut rows = Vec::with_capacity(chunk_rows);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| pg_error(format_args!("copying {}", table.id), e))?;
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line = buf.split_to(end + 1);
                rows.push(crate::copy_text::parse_line(&line[..end], &kinds).map_err(|e| {
                    ConnectorError::fatal(format!("snapshot of {}: cannot decode a row: {e}", table.id))
                })?);
                if rows.len() >= chunk_rows {
                    let full = std::mem::replace(&mut rows, Vec::with_capacity(chunk_rows));
                    send_chunk(out, table, full).await?;
                }
            }
        }
        if buf.has_remaining() {
            return Err(ConnectorError::transient(format!("snapshot of {}: COPY ended mid-row", table.id)));
        }
        if !rows.is_empty() {
            send_chunk(out, table, rows).await?;
        }
        Ok(())
    }

    async fn start_stream(
        &mut self,
        after: &Checkpoint,
        out: tidewater_core::queue::SourceSender,
        mut acks: watch::Receiver<Option<String>>,
        progress: Arc<SourceProgress>,
    ) -> Result<StreamHandle, ConnectorError> {
        if let Some(session) = self.snapshot.take() {
            let _ = session.reader.batch_execute("COMMIT").await;
        }
        let name = self.cfg.source_name.clone();
        let slot = self.cfg.slot.clone();
        let start_lsn = parse_lsn(&after.position).ok_or_else(|| {
            ConnectorError::fatal(format!("checkpoint position {:?} is not a Postgres LSN", after.position))
        })?;
        let resync =
            "delete this pipeline's row from tidewater_checkpoints in the target and restart to take a new snapshot";
        let state = self.slot_state().await?.ok_or_else(|| {
            ConnectorError::fatal(format!(
                "replication slot {slot} does not exist on source {name} (dropped?): changes since {} cannot be streamed; {resync}",
                after.position
            ))
        })?;
        if state.wal_status == "lost" {
            return Err(ConnectorError::fatal(format!(
                "replication slot {slot} on source {name} was invalidated (its WAL was removed, see max_slot_wal_keep_size); {resync}"
            )));
        }
        if state.plugin != "pgoutput" || state.database != self.cfg.endpoint.database {
            return Err(ConnectorError::fatal(format!(
                "replication slot {slot} on source {name} belongs to plugin {} / database {}, not pgoutput / {}: choose another slot name",
                state.plugin, state.database, self.cfg.endpoint.database
            )));
        }
        if let Some(confirmed) = state.confirmed_flush {
            if confirmed > start_lsn {
                return Err(ConnectorError::fatal(format!(
                    "the target's checkpoint {} is behind slot {slot}'s confirmed position {} on source {name}: the target lost \
                     applied changes (restored from a backup?) and they cannot be streamed again; {resync}",
                    after.position,
                    format_lsn(confirmed)
                )));
            }
        }
        let client = self.client().await?;
        let repl = self.replication_connection().await?;
        let publications = quote_literal(&quote_ident(&self.cfg.publication));
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (\"proto_version\" '1', \"publication_names\" {publications})",
            quote_ident(&slot),
            format_lsn(start_lsn)
        );
        let tls = repl.tls().unwrap_or("off").to_owned();
        let auth = repl.auth_method();
        let (stream, mut writer) = repl
            .start_copy_both(&sql)
            .await
            .map_err(|e| repl_error(format_args!("starting replication from slot {slot} at {}", after.position), e))?;
        tracing::info!(slot = %slot, position = %after.position, tls = %tls, auth = %auth, "streaming started");

        let received = Arc::new(AtomicU64::new(start_lsn));
        let acked = Arc::new(AtomicU64::new(start_lsn));
        let reply_now = Arc::new(Notify::new());

        let status_writer = {
            let (received, acked, reply_now) = (received.clone(), acked.clone(), reply_now.clone());
            stream_task(async move {
                let mut tick = tokio::time::interval(STATUS_INTERVAL);
                loop {
                    let request_reply = tokio::select! {
                        _ = tick.tick() => true,
                        changed = acks.changed() => {
                            if changed.is_err() {
                                return Ok(());
                            }
                            let position = acks.borrow_and_update().clone();
                            if let Some(lsn) = position.as_deref().and_then(parse_lsn) {
                                acked.fetch_max(lsn, Ordering::SeqCst);
                            }
                            false
                        }
                        _ = reply_now.notified() => false,
                    };
                    let flushed = acked.load(Ordering::SeqCst);
                    let written = received.load(Ordering::SeqCst).max(flushed);
                    writer
                        .send_status(written, flushed, flushed, request_reply)
                        .await
                        .map_err(|e| repl_error("sending standby status", e))?;
                }
            })
        };

        let poller = {
            let (client, acked, progress) = (client.clone(), acked.clone(), progress.clone());
            let (patterns, source_name, known) =
                (self.cfg.tables.clone(), self.cfg.source_name.clone(), self.coverage.clone());
            stream_task(async move {
                let mut tick = tokio::time::interval(LAG_POLL_INTERVAL);
                let mut catalog_tick = tokio::time::interval(CATALOG_POLL_INTERVAL);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = catalog_tick.tick() => {
                            let now = coverage(&client, &patterns, &source_name).await?;
                            if now != known {
                                return Err(ConnectorError::restart(format!(
                                    "the tables of source {source_name} changed: {}",
                                    describe_coverage_change(&known, &now)
                                )));
                            }
                            continue;
                        }
                    }
                    let head: String = client
                        .query_one("SELECT pg_current_wal_lsn()::text", &[])
                        .await
                        .map_err(|e| pg_error("polling the source WAL position", e))?
                        .get(0);
                    if let Some(head_lsn) = parse_lsn(&head) {
                        progress
                            .lag_bytes
                            .store(head_lsn.saturating_sub(acked.load(Ordering::SeqCst)), Ordering::Relaxed);
                    }
                    if let Ok(mut slot) = progress.head_position.lock() {
                        *slot = Some(head);
                    }
                }
            })
        };

        let reader = Reader {
            client,
            stream,
            out,
            start_lsn,
            received,
            reply_now,
            relations: HashMap::new(),
            current: None,
            last_delivered: start_lsn,
            part_budget: Arc::new(tokio::sync::Semaphore::new(TX_PARTS_IN_FLIGHT)),
            table_starts: self.table_starts.clone(),
        };
        let task = tokio::spawn(async move { tokio::try_join!(reader.run(), status_writer, poller).map(|_| ()) });
        Ok(StreamHandle { task })
    }
}

/// What changed between two coverages, for the log.
fn describe_coverage_change(before: &[(TableId, u32, Vec<TableId>)], after: &[(TableId, u32, Vec<TableId>)]) -> String {
    let mut changes = Vec::new();
    for (id, oid, parts) in after {
        match before.iter().find(|(_, o, _)| o == oid) {
            None => changes.push(format!("{id} appeared")),
            Some((old_id, _, _)) if old_id != id => changes.push(format!("{old_id} is now {id}")),
            Some((_, _, old_parts)) => {
                for p in parts.iter().filter(|p| !old_parts.contains(p)) {
                    changes.push(format!("partition {p} attached to {id}"));
                }
                for p in old_parts.iter().filter(|p| !parts.contains(p)) {
                    changes.push(format!("partition {p} left {id}"));
                }
            }
        }
    }
    for (id, oid, _) in before {
        if !after.iter().any(|(_, o, _)| o == oid) {
            changes.push(format!("{id} is gone"));
        }
    }
    changes.join(", ")
}

/// Pins the output type of the stream's async blocks.
fn stream_task<F: std::future::Future<Output = Result<(), ConnectorError>>>(f: F) -> F {
    f
}

async fn send_chunk(
    out: &mpsc::Sender<SnapshotChunk>,
    table: &Arc<TableSchema>,
    rows: Vec<Vec<Value>>,
) -> Result<(), ConnectorError> {
    out.send(SnapshotChunk::new(table.clone(), rows))
        .await
        .map_err(|_| ConnectorError::transient("snapshot consumer stopped"))
}

struct RelationInfo {
    schema: Arc<TableSchema>,
}

struct OpenTransaction {
    commit_time: SystemTime,
    /// The commit record's position (Begin's final LSN).
    commit_lsn: u64,
    /// Already applied before this stream started: its events are dropped.
    skip: bool,
    /// Parts of it were handed on already.
    parts_sent: bool,
    events: Vec<ChangeEvent>,
}

/// Turns the pgoutput message stream into whole transactions.
struct Reader {
    client: Arc<Client>,
    stream: crate::replication::ReplicationStream,
    out: tidewater_core::queue::SourceSender,
    start_lsn: u64,
    received: Arc<AtomicU64>,
    reply_now: Arc<Notify>,
    relations: HashMap<u32, RelationInfo>,
    current: Option<OpenTransaction>,
    last_delivered: u64,
    part_budget: Arc<tokio::sync::Semaphore>,
    /// Tables copied after the stream's start: their changes committed before the
    /// copy's position are in the copy already and are left out.
    table_starts: HashMap<TableId, u64>,
}

fn pg_epoch_to_system_time(micros: i64) -> SystemTime {
    // 2000-01-01T00:00:00Z in Unix seconds.
    const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;
    let base = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
    if micros >= 0 {
        base + Duration::from_micros(micros as u64)
    } else {
        base - Duration::from_micros(micros.unsigned_abs())
    }
}

/// A read-only transaction on a new connection that takes the snapshot a slot's
/// creation exported.
async fn import_snapshot(
    endpoint: &PgEndpoint,
    snapshot_name: Option<String>,
    what: &str,
) -> Result<Client, ConnectorError> {
    let snapshot_name = snapshot_name
        .ok_or_else(|| ConnectorError::fatal("CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT returned no snapshot"))?;
    let reader = connect(endpoint).await?;
    reader
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(&snapshot_name)
        ))
        .await
        .map_err(|e| pg_error(what, e))?;
    Ok(reader)
}

/// One row of text values (each column's text output) decoded into `table`'s columns.
pub(crate) fn decode_text_row(table: &TableSchema, row: &tokio_postgres::Row) -> Result<Vec<Value>, ConnectorError> {
    decode_text_values(table, |i| row.get::<_, Option<&str>>(i))
}

/// Column `i`'s text output is `text(i)` (`None`: NULL); decoded into `table`'s columns.
pub(crate) fn decode_text_values<'a>(
    table: &TableSchema,
    text: impl Fn(usize) -> Option<&'a str>,
) -> Result<Vec<Value>, ConnectorError> {
    table
        .columns
        .iter()
        .enumerate()
        .map(|(i, column)| match text(i) {
            None => Ok(Value::Null),
            Some(text) => decode_text(&column.kind, text.as_bytes())
                .map_err(|e| ConnectorError::fatal(format!("{}.{}: {e}", table.id, column.name))),
        })
        .collect()
}

impl Reader {
    async fn run(mut self) -> Result<(), ConnectorError> {
        loop {
            let message = self.stream.next().await.map_err(|e| self.explain(e))?;
            match message {
                None => return Err(ConnectorError::transient("the source ended the replication stream")),
                Some(ReplicationMessage::XLogData { wal_start, wal_end, data, .. }) => {
                    self.received.fetch_max(wal_end, Ordering::SeqCst);
                    let decoded = pgoutput::decode(&data).map_err(|e| {
                        ConnectorError::fatal(format!(
                            "cannot decode a pgoutput message at source position {}: {e:?}",
                            format_lsn(wal_start)
                        ))
                    })?;
                    if !self.handle(decoded, wal_start).await? {
                        return Ok(());
                    }
                }
                Some(ReplicationMessage::Keepalive { wal_end, reply_requested, .. }) => {
                    self.received.fetch_max(wal_end, Ordering::SeqCst);
                    if reply_requested {
                        self.reply_now.notify_one();
                    }
                    if self.current.is_none() && wal_end > self.last_delivered {
                        // Best effort: when the engine is busy it will see the next one.
                        if self.out.try_send(SourceItem::Heartbeat { position: format_lsn(wal_end) }).is_ok() {
                            self.last_delivered = wal_end;
                        }
                    }
                }
            }
        }
    }

    /// A stream error, with the fix where we know it.
    fn explain(&self, e: ReplicationError) -> ConnectorError {
        if let ReplicationError::Server { message, .. } = &e {
            if message.contains("publication") && message.contains("does not exist") {
                return ConnectorError::fatal(format!(
                    "the publication was dropped on the source while streaming ({message}); changes since then cannot \
                     be decoded: delete this pipeline's row from tidewater_checkpoints in the target and restart to \
                     re-snapshot"
                ));
            }
        }
        repl_error("reading the replication stream", e)
    }

    /// Returns false when the engine has gone away.
    async fn handle(&mut self, message: LogicalMessage, at: u64) -> Result<bool, ConnectorError> {
        let position = || format_lsn(at);
        match message {
            LogicalMessage::Begin { final_lsn, commit_time_micros, .. } => {
                if self.current.is_some() {
                    return Err(ConnectorError::fatal(format!(
                        "BEGIN inside an open transaction at source position {}",
                        position()
                    )));
                }
                // A transaction whose commit record starts before the resume position ended
                // at or before it: it is in the target already.
                self.current = Some(OpenTransaction {
                    commit_time: pg_epoch_to_system_time(commit_time_micros),
                    commit_lsn: final_lsn,
                    skip: final_lsn < self.start_lsn,
                    parts_sent: false,
                    events: Vec::new(),
                });
            }
            LogicalMessage::Commit { end_lsn, commit_time_micros, .. } => {
                let Some(mut tx) = self.current.take() else {
                    return Err(ConnectorError::fatal(format!(
                        "COMMIT without BEGIN at source position {}",
                        position()
                    )));
                };
                tx.commit_time = pg_epoch_to_system_time(commit_time_micros);
                if tx.skip || end_lsn <= self.start_lsn {
                    return Ok(true); // already applied before this stream started
                }
                let item = if tx.events.is_empty() && !tx.parts_sent {
                    SourceItem::Heartbeat { position: format_lsn(end_lsn) }
                } else {
                    SourceItem::Transaction(Transaction {
                        position: format_lsn(end_lsn),
                        position_num: Some(end_lsn),
                        commit_time: tx.commit_time,
                        events: tx.events,
                    })
                };
                if self.out.send(item).await.is_err() {
                    return Ok(false);
                }
                self.last_delivered = end_lsn;
            }
            LogicalMessage::Relation(body) => {
                let id = TableId::new(body.namespace.clone(), body.name.clone());
                let schema = relation_schema(&self.client, &id, &body).await?;
                let schema = match self.relations.get(&body.id) {
                    Some(old) if *old.schema == *schema => old.schema.clone(),
                    Some(_) => {
                        tracing::info!(table = %id, position = %position(), "source table schema changed");
                        schema
                    }
                    None => schema,
                };
                self.relations.insert(body.id, RelationInfo { schema });
            }
            LogicalMessage::Insert { relation_id, new } => {
                let table = self.relation(relation_id, at)?;
                let after = decode_tuple(&table, &new, at)?;
                if !self.push(ChangeEvent { table, op: Op::Insert, before: None, after: Some(after) }, at).await? {
                    return Ok(false);
                }
            }
            LogicalMessage::Update { relation_id, old, new } => {
                let table = self.relation(relation_id, at)?;
                let before = old.map(|o| decode_tuple(&table, o.tuple(), at)).transpose()?;
                let after = decode_tuple(&table, &new, at)?;
                if !self.push(ChangeEvent { table, op: Op::Update, before, after: Some(after) }, at).await? {
                    return Ok(false);
                }
            }
            LogicalMessage::Delete { relation_id, old } => {
                let table = self.relation(relation_id, at)?;
                let before = decode_tuple(&table, old.tuple(), at)?;
                if !self.push(ChangeEvent { table, op: Op::Delete, before: Some(before), after: None }, at).await? {
                    return Ok(false);
                }
            }
            LogicalMessage::Truncate { relation_ids, .. } => {
                for relation_id in relation_ids {
                    let table = self.relation(relation_id, at)?;
                    if !self.push(ChangeEvent { table, op: Op::Truncate, before: None, after: None }, at).await? {
                        return Ok(false);
                    }
                }
            }
            LogicalMessage::Origin { .. } | LogicalMessage::Type { .. } | LogicalMessage::Message { .. } => {}
        }
        Ok(true)
    }

    fn relation(&self, relation_id: u32, at: u64) -> Result<Arc<TableSchema>, ConnectorError> {
        self.relations.get(&relation_id).map(|r| r.schema.clone()).ok_or_else(|| {
            ConnectorError::fatal(format!(
                "change for relation {relation_id} before its Relation message at source position {}",
                format_lsn(at)
            ))
        })
    }

    /// Adds an event to the open transaction, handing on a part when it grows large.
    /// Returns false when the engine has gone away.
    async fn push(&mut self, event: ChangeEvent, at: u64) -> Result<bool, ConnectorError> {
        let Some(tx) = &mut self.current else {
            return Err(ConnectorError::fatal(format!(
                "change outside a transaction at source position {}",
                format_lsn(at)
            )));
        };
        if tx.skip || self.table_starts.get(&event.table.id).is_some_and(|&copied| tx.commit_lsn < copied) {
            return Ok(true);
        }
        tx.events.push(event);
        if tx.events.len() < TX_PART_EVENTS {
            return Ok(true);
        }
        let events = std::mem::replace(&mut tx.events, Vec::with_capacity(TX_PART_EVENTS));
        tx.parts_sent = true;
        let (position, commit_time) = (format_lsn(tx.commit_lsn), tx.commit_time);
        // Waiting for budget is the backpressure that keeps memory bounded.
        let budget = self.part_budget.clone().acquire_owned().await.ok();
        let part = TransactionPart { events, position, commit_time, budget };
        Ok(self.out.send(SourceItem::TransactionPart(part)).await.is_ok())
    }
}

fn decode_tuple(table: &TableSchema, tuple: &TupleData, at: u64) -> Result<Vec<Value>, ConnectorError> {
    if tuple.0.len() != table.columns.len() {
        return Err(ConnectorError::fatal(format!(
            "row of {} has {} columns but its Relation message has {}, at source position {}",
            table.id,
            tuple.0.len(),
            table.columns.len(),
            format_lsn(at)
        )));
    }
    tuple
        .0
        .iter()
        .zip(&table.columns)
        .map(|(value, column)| match value {
            TupleValue::Null => Ok(Value::Null),
            TupleValue::UnchangedToast => Ok(Value::Unchanged),
            TupleValue::Text(bytes) => decode_text(&column.kind, bytes).map_err(|e| {
                ConnectorError::fatal(format!(
                    "{}.{}: {e}, at source position {}",
                    table.id,
                    column.name,
                    format_lsn(at)
                ))
            }),
            TupleValue::Binary(_) => Err(ConnectorError::fatal(format!(
                "binary tuple data for {}.{} (not requested), at source position {}",
                table.id,
                column.name,
                format_lsn(at)
            ))),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_lines_unescape() {
        let kinds = [ColumnType::Int32, ColumnType::Text, ColumnType::Text];
        let row = crate::copy_text::parse_line(b"7\ta\\tb\\\\c\\nd\t\\N", &kinds).unwrap();
        assert_eq!(row, vec![Value::Int(7), Value::Text("a\tb\\c\nd".into()), Value::Null]);
        assert!(crate::copy_text::parse_line(b"1\tx", &kinds).is_err());
        let mut out = Vec::new();
        crate::copy_text::unescape(b"\\101\\x41\\q", &mut out).unwrap();
        assert_eq!(out, b"AAq");
    }
}
