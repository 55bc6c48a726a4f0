//! MySQL/MariaDB source: the row binlog, read as a replica.
//!
//! # Snapshot
//! See [`crate::snapshot`]: a REPEATABLE READ transaction with a known binlog position
//! (MariaDB without locks; MySQL under a brief global read lock), read table by table with
//! streaming SELECTs. Streaming then starts at exactly that position.
//!
//! # Replication
//! One connection per source section (not per pipeline: see [`crate::hub`], which feeds
//! every pipeline of the section from it) registers as a replica with the configured
//! `server_id` and requests the binlog ([`crate::reader`]): on MariaDB by GTID (`@slave_connect_state`, strict mode; MariaDB
//! does not understand MySQL's COM_BINLOG_DUMP_GTID), on MySQL and on MariaDB without a
//! GTID state by file and position. The server sends a heartbeat after every idle second
//! and reads time out after three, so a silently dead connection is noticed. Events are
//! grouped into transactions (a MariaDB GTID event or BEGIN opens one; XID, a COMMIT
//! statement, or a standalone statement ends it) and decoded straight into core values
//! with the table map's column layout and the catalog's meaning (see [`crate::decode`]).
//! Only configured tables produce events. A DDL statement marks the tables it names for a
//! catalog refresh, so a column added on the source reaches the target before the first
//! row carrying it; TRUNCATE becomes a truncate event.
//!
//! # Resumption
//! Checkpoints are taken only at commit boundaries and hold `file:pos gtid=...` (see
//! [`crate::binlog_pos`]). Transactions at or before the checkpoint are skipped. When the
//! stream is idle and the binlog moved on (traffic on other tables), heartbeats carry the
//! position to the engine so the checkpoint advances. A poller compares `SHOW BINARY LOGS`
//! with the acknowledged position for the lag figures.
//!
//! # Error handling
//! Lost connections, a server shutting down (the stream just ends), a crash, a refused
//! connection and read timeouts are transient. A purged binlog (1236), a duplicate
//! `server_id`, wrong settings, missing grants, a table without a key, XA transactions,
//! statement-logged changes to a tracked table and a table map that does not match the
//! catalog are fatal with the fix. A panic inside the binlog decoder is contained and fails
//! the pipeline with the binlog position instead of taking the daemon down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use tidewater_core::{
    Checkpoint, ConnectorError, SnapshotChunk, Source, SourceProgress, StreamHandle, TableId, TableSchema, Value,
};
use tokio::sync::{mpsc, watch};

use crate::binlog_pos::{bytes_behind, BinlogPosition, GtidState};
use crate::catalog::{load_table, resolve_tables, CatalogTable};
use crate::decode::ValueKind;
use crate::reader::{ReaderSetup, RESNAPSHOT};
use crate::sink::MysqlEndpoint;
use crate::source_check::{check_settings, Grants, VARIABLES};
use crate::source_conn::{binlog_head, col, connect, gtid_at, rows, server_info, Flavour, ServerInfo};
use crate::tls::MysqlTls;

const LAG_POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct MysqlSourceConfig {
    /// The `[sources.NAME]` key, for messages.
    pub source_name: String,
    pub endpoint: MysqlEndpoint,
    /// `db.table` or `db.*`.
    pub tables: Vec<String>,
    /// The replica id this source registers with: unique among the server's replicas
    /// (and among pipelines reading the same server).
    pub server_id: u32,
}

pub struct MysqlSource {
    cfg: MysqlSourceConfig,
    tls: MysqlTls,
    conn: Option<Conn>,
    info: Option<ServerInfo>,
    tables: Vec<CatalogTable>,
    snapshot: Option<Conn>,
    /// The pipeline this source reads for (messages, the shared reader's roster).
    pipeline: String,
    buffer_bytes: usize,
    /// The position of the last backfill's consistent read (MariaDB).
    backfill_position: Option<String>,
    /// Tables copied by a backfill, with its position: the stream leaves out their
    /// changes in transactions the copy holds.
    table_starts: HashMap<TableId, BinlogPosition>,
}

impl MysqlSource {
    /// A source connecting in plaintext; see [`MysqlSource::with_tls`].
    pub fn new(cfg: MysqlSourceConfig) -> Self {
        MysqlSource {
            pipeline: cfg.source_name.clone(),
            cfg,
            tls: MysqlTls::disabled(),
            conn: None,
            info: None,
            tables: Vec::new(),
            snapshot: None,
            buffer_bytes: crate::hub::DEFAULT_BUFFER_BYTES,
            backfill_position: None,
            table_starts: HashMap::new(),
        }
    }

    /// Names the pipeline reading (for messages; several pipelines of one source section
    /// share its binlog reader, see [`crate::hub`]).
    pub fn for_pipeline(mut self, pipeline: impl Into<String>) -> Self {
        self.pipeline = pipeline.into();
        self
    }

    /// The bound of the buffer the source section's shared binlog reader keeps for
    /// pipelines that are behind (see [`crate::hub`]).
    pub fn with_buffer_bytes(mut self, bytes: usize) -> Self {
        self.buffer_bytes = bytes;
        self
    }

    /// Uses `tls` for every connection to the server, the binlog connection included.
    pub fn with_tls(mut self, tls: MysqlTls) -> Self {
        self.tls = tls;
        self
    }

    fn key(&self) -> String {
        format!("sources.{}", self.cfg.source_name)
    }

    async fn conn(&mut self) -> Result<&mut Conn, ConnectorError> {
        if self.conn.is_none() {
            self.conn = Some(connect(&self.cfg.endpoint, &self.tls, &self.cfg.source_name).await?);
        }
        self.conn.as_mut().ok_or_else(|| ConnectorError::transient("source connection unavailable"))
    }

    async fn info(&mut self) -> Result<ServerInfo, ConnectorError> {
        if let Some(info) = &self.info {
            return Ok(info.clone());
        }
        let info = server_info(self.conn().await?).await?;
        self.info = Some(info.clone());
        Ok(info)
    }

    async fn check_server(&mut self, info: &ServerInfo) -> Result<(), ConnectorError> {
        let name = self.cfg.source_name.clone();
        let key = self.key();
        let server_id = self.cfg.server_id;
        let conn = self.conn().await?;
        let list = VARIABLES.iter().map(|v| format!("'{v}'")).collect::<Vec<_>>().join(", ");
        let sql = format!("SHOW GLOBAL VARIABLES WHERE Variable_name IN ({list})");
        let mut vars = HashMap::new();
        for row in rows(conn, &sql, "reading server settings").await? {
            let name: String = col(&row, 0, "SHOW GLOBAL VARIABLES")?;
            let value: String = col(&row, 1, "SHOW GLOBAL VARIABLES")?;
            vars.insert(name.to_ascii_lowercase(), value);
        }
        let report = check_settings(&vars, info, server_id, &key);
        for w in &report.warnings {
            tracing::warn!(source = %name, "{w}");
        }
        if !report.errors.is_empty() {
            return Err(ConnectorError::fatal(format!("source {name}: {}", report.errors.join("; "))));
        }
        Ok(())
    }

    async fn check_grants(&mut self, info: &ServerInfo) -> Result<(), ConnectorError> {
        let name = self.cfg.source_name.clone();
        let user = self.cfg.endpoint.user.clone();
        let default_db = self.cfg.endpoint.database.clone();
        let mut by_db: Vec<(String, Vec<String>)> = Vec::new();
        for pattern in &self.cfg.tables {
            let id = TableId::parse(pattern, &default_db);
            let i = match by_db.iter().position(|(db, _)| *db == id.schema) {
                Some(i) => i,
                None => {
                    by_db.push((id.schema.clone(), Vec::new()));
                    by_db.len() - 1
                }
            };
            if id.name == "*" {
                by_db[i].1.clear();
                by_db[i].1.push("*".into());
            } else if !by_db[i].1.iter().any(|t| t == "*") {
                by_db[i].1.push(id.name);
            }
        }
        for (_, tables) in &mut by_db {
            tables.retain(|t| t != "*");
        }
        let conn = self.conn().await?;
        let lines: Vec<String> = rows(conn, "SHOW GRANTS", "reading the source user's grants")
            .await?
            .iter()
            .map(|r| col::<String>(r, 0, "SHOW GRANTS"))
            .collect::<Result<_, _>>()?;
        let grants = Grants::parse(&lines);
        let missing = grants.missing(info, &user, &by_db);
        if missing.is_empty() {
            return Ok(());
        }
        let text = format!("source {name}: user {user} lacks privileges tidewater needs: {}", missing.join("; "));
        if grants.has_roles() {
            tracing::warn!("{text} (unless one of the user's roles grants them)");
            return Ok(());
        }
        Err(ConnectorError::fatal(text))
    }

    async fn current_position(&mut self) -> Result<BinlogPosition, ConnectorError> {
        let info = self.info().await?;
        let conn = self.conn().await?;
        let (file, pos) = binlog_head(conn, &info).await?;
        let gtid = match info.flavour {
            Flavour::MariaDb => Some(
                GtidState::parse(&gtid_at(conn, &file, pos).await?)
                    .map_err(|e| ConnectorError::fatal(format!("BINLOG_GTID_POS returned an unreadable state: {e}")))?,
            ),
            Flavour::MySql => None,
        };
        Ok(BinlogPosition::new(file, pos, gtid))
    }

    /// How to decode each of `table`'s columns, from the catalog.
    fn value_kinds(&self, table: &TableSchema) -> Result<Vec<ValueKind>, ConnectorError> {
        let catalog = self.catalog_table(&table.id)?;
        table
            .columns
            .iter()
            .map(|c| {
                catalog.column(&c.name).map(|cc| cc.kind.clone()).ok_or_else(|| {
                    ConnectorError::fatal(format!("column {} of {} is not in the source catalog", c.name, table.id))
                })
            })
            .collect()
    }

    fn catalog_table(&self, id: &TableId) -> Result<&CatalogTable, ConnectorError> {
        self.tables.iter().find(|t| t.id == *id).ok_or_else(|| {
            ConnectorError::fatal(format!("table {id} was not prepared by source {}", self.cfg.source_name))
        })
    }
}

#[async_trait]
impl Source for MysqlSource {
    async fn prepare(&mut self) -> Result<Vec<Arc<TableSchema>>, ConnectorError> {
        let info = self.info().await?;
        tracing::info!(source = %self.cfg.source_name, version = %info.version_text, "connected to the source");
        self.check_server(&info).await?;
        self.check_grants(&info).await?;
        self.describe().await
    }

    async fn describe(&mut self) -> Result<Vec<Arc<TableSchema>>, ConnectorError> {
        let info = self.info().await?;
        let (name, default_db, patterns) =
            (self.cfg.source_name.clone(), self.cfg.endpoint.database.clone(), self.cfg.tables.clone());
        let conn = self.conn().await?;
        let ids = resolve_tables(conn, &patterns, &default_db, &name).await?;
        let mut tables = Vec::with_capacity(ids.len());
        for id in &ids {
            tables.push(load_table(conn, id, info.flavour).await?);
        }
        self.tables = tables;
        Ok(self.tables.iter().map(|t| t.schema.clone()).collect())
    }

    async fn fetch_row(&mut self, table: &TableSchema, key: &[Value]) -> Result<Option<Vec<Value>>, ConnectorError> {
        let kinds = self.value_kinds(table)?;
        let conn = self.conn().await?;
        crate::snapshot::read_row(conn, table, &kinds, key).await
    }

    async fn begin_without_snapshot(&mut self) -> Result<String, ConnectorError> {
        Ok(self.current_position().await?.to_string())
    }

    async fn begin_snapshot(&mut self) -> Result<String, ConnectorError> {
        self.snapshot = None;
        let info = self.info().await?;
        let mut conn = connect(&self.cfg.endpoint, &self.tls, &self.cfg.source_name).await?;
        let position = crate::snapshot::open(&mut conn, &info).await?;
        self.snapshot = Some(conn);
        tracing::info!(source = %self.cfg.source_name, position = %position, "snapshot opened");
        Ok(position.to_string())
    }

    async fn resume_snapshot(&mut self, position: &str) -> Result<bool, ConnectorError> {
        // The stream can start at `position` while its binlog file is still on the server.
        let Ok(start) = BinlogPosition::parse(position) else { return Ok(false) };
        let conn = self.conn().await?;
        let mut present = false;
        for row in rows(conn, "SHOW BINARY LOGS", "listing the source binlogs").await? {
            present |= col::<String>(&row, 0, "SHOW BINARY LOGS")? == start.file;
        }
        if !present {
            return Ok(false);
        }
        self.begin_backfill().await?;
        Ok(true)
    }

    async fn begin_backfill(&mut self) -> Result<(), ConnectorError> {
        self.snapshot = None;
        let info = self.info().await?;
        let mut conn = connect(&self.cfg.endpoint, &self.tls, &self.cfg.source_name).await?;
        self.backfill_position = crate::snapshot::open_backfill(&mut conn, &info).await?.map(|p| p.to_string());
        self.snapshot = Some(conn);
        Ok(())
    }

    fn backfill_position(&self) -> Option<String> {
        self.backfill_position.clone()
    }

    fn set_table_starts(&mut self, starts: HashMap<TableId, String>) {
        self.table_starts =
            starts.into_iter().filter_map(|(t, p)| BinlogPosition::parse(&p).ok().map(|p| (t, p))).collect();
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
        let info = self.info().await?;
        let mut conn = connect(&self.cfg.endpoint, &self.tls, &self.cfg.source_name).await?;
        // MariaDB tells a consistent snapshot's exact binlog position; MySQL's needs the
        // brief global read lock of the initial snapshot.
        let position = match crate::snapshot::open_backfill(&mut conn, &info).await? {
            Some(position) => position,
            None => {
                let _ = conn.query_drop("ROLLBACK").await;
                crate::snapshot::open(&mut conn, &info).await?
            }
        };
        // The table's columns as of the read.
        let catalog = load_table(&mut conn, &table.id, info.flavour).await?;
        if catalog.schema.key != table.key {
            return Err(ConnectorError::fatal(format!(
                "resync of {}: its key changed since the pipeline started; restart the daemon and resync again",
                table.id
            )));
        }
        let kinds: Vec<ValueKind> = catalog.columns.iter().map(|c| c.kind.clone()).collect();
        let schema = catalog.schema.clone();
        let rows = crate::snapshot::read_chunk(&mut conn, &schema, &kinds, chunk_rows, after, true).await?;
        let _ = conn.query_drop("COMMIT").await;
        let _ = conn.disconnect().await;
        // An idle source sends a heartbeat past the position within a second.
        Ok((BinlogPosition::new(position.file, position.pos, None).to_string(), schema, rows))
    }

    fn position_order(&self) -> tidewater_core::PositionOrder {
        |a, b| Some(BinlogPosition::parse(a).ok()?.cmp_file_pos(&BinlogPosition::parse(b).ok()?))
    }

    async fn estimate_rows(&mut self, table: &TableSchema) -> Option<u64> {
        let conn = self.snapshot.as_mut()?;
        crate::catalog::estimate_rows(conn, &table.id).await
    }

    async fn snapshot_table(
        &mut self,
        table: &Arc<TableSchema>,
        chunk_rows: usize,
        after: Option<&[Value]>,
        out: &mpsc::Sender<SnapshotChunk>,
    ) -> Result<(), ConnectorError> {
        let kinds = self.value_kinds(table)?;
        let conn = self
            .snapshot
            .as_mut()
            .ok_or_else(|| ConnectorError::fatal("snapshot_table called without begin_snapshot"))?;
        crate::snapshot::read_table(conn, table, &kinds, chunk_rows, after, out).await
    }

    async fn start_stream(
        &mut self,
        after: &Checkpoint,
        out: tidewater_core::queue::SourceSender,
        acks: watch::Receiver<Option<String>>,
        progress: Arc<SourceProgress>,
    ) -> Result<StreamHandle, ConnectorError> {
        if let Some(mut snapshot) = self.snapshot.take() {
            let _ = snapshot.query_drop("COMMIT").await;
            let _ = snapshot.disconnect().await;
        }
        if self.tables.is_empty() {
            return Err(ConnectorError::fatal("start_stream called before prepare"));
        }
        let name = self.cfg.source_name.clone();
        let start = BinlogPosition::parse(&after.position).map_err(|e| {
            ConnectorError::fatal(format!(
                "the checkpoint position {:?} is not a MySQL binlog position ({e}): was the pipeline's source changed? {RESNAPSHOT}",
                after.position
            ))
        })?;
        let info = self.info().await?;
        let setup = ReaderSetup {
            cfg: self.cfg.clone(),
            tls: self.tls.clone(),
            info: info.clone(),
            tables: self.tables.clone(),
            pipeline: self.pipeline.clone(),
            buffer_bytes: self.buffer_bytes,
        };
        let subscription = crate::hub::subscribe(&setup, &start);
        let poll_conn = connect(&self.cfg.endpoint, &self.tls, &name).await?;
        tracing::info!(source = %name, pipeline = %self.pipeline, position = %start, "binlog streaming started");
        let follower = subscription.follow(start.clone(), out, progress.clone(), self.table_starts.clone());
        let poller = poll_lag(poll_conn, info, acks, start, progress);
        let task = tokio::spawn(async move { tokio::try_join!(follower, poller).map(|_| ()) });
        Ok(StreamHandle { task })
    }
}

/// The lag poller: the binlog head and the distance from the acknowledged position.
async fn poll_lag(
    mut conn: Conn,
    info: ServerInfo,
    mut acks: watch::Receiver<Option<String>>,
    start: BinlogPosition,
    progress: Arc<SourceProgress>,
) -> Result<(), ConnectorError> {
    let _ = info;
    let mut acked = start;
    let mut tick = tokio::time::interval(LAG_POLL_INTERVAL);
    loop {
        tick.tick().await;
        if acks.has_changed().unwrap_or(false) {
            if let Some(p) = acks.borrow_and_update().as_deref().and_then(|s| BinlogPosition::parse(s).ok()) {
                acked = p;
            }
        }
        let mut logs = Vec::new();
        for row in rows(&mut conn, "SHOW BINARY LOGS", "polling the source binlog position").await? {
            logs.push((col::<String>(&row, 0, "SHOW BINARY LOGS")?, col::<u64>(&row, 1, "SHOW BINARY LOGS")?));
        }
        if let Some((file, size)) = logs.last() {
            if let Ok(mut head) = progress.head_position.lock() {
                *head = Some(format!("{file}:{size}"));
            }
        }
        progress.lag_bytes.store(bytes_behind(&acked, &logs), std::sync::atomic::Ordering::Relaxed);
    }
}
