//! MySQL/MariaDB source: the row binlog, read as a replica.
//!
//! # Snapshot
//! See [`crate::snapshot`]: a REPEATABLE READ transaction with a known binlog position
//! (MariaDB without locks; MySQL under a brief global read lock), read table by table with
//! streaming SELECTs. Streaming then starts at exactly that position.
//!
//! # Replication
//! A dedicated connection registers as a replica with the configured `server_id` and
//! requests the binlog: on MariaDB by GTID (`@slave_connect_state`, strict mode; MariaDB
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

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use mysql_async::binlog::events::{Event, QueryEvent};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn};
use tidewater_core::{
    ChangeEvent, Checkpoint, ConnectorError, Op, SnapshotChunk, Source, SourceItem, SourceProgress, StreamHandle,
    TableId, TableSchema, Transaction, TransactionPart, Value,
};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::binlog_events::{
    contain, contain_future, kind, parse_mariadb_gtid, parse_rotate, rows_fields, table_map_info, TableMapInfo,
};
use crate::binlog_pos::{bytes_behind, BinlogPosition, Gtid, GtidState};
use crate::catalog::{load_table, resolve_tables, CatalogColumn, CatalogTable};
use crate::decode::{decode_rows, ColumnDecoder, RowImage, ValueKind};
use crate::sink::MysqlEndpoint;
use crate::source_check::{check_settings, Grants, VARIABLES};
use crate::source_conn::{binlog_head, col, connect, gtid_at, my_error, rows, server_info, Flavour, ServerInfo};
use crate::source_ddl::parse_statement;
use crate::tls::MysqlTls;

/// The server sends a heartbeat after this long without events.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// No event and no heartbeat for this long: the connection is dead. Longer than a few
/// heartbeats because one event (a row with a large BLOB) may take a while to arrive.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Until the stream reaches its start: resuming by GTID, the server reads the binlog from
/// the start of the checkpoint's file without sending anything (not even heartbeats).
const STARTUP_READ_TIMEOUT: Duration = Duration::from_secs(300);
const LAG_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A transaction larger than this is handed on in parts of this many events.
const TX_PART_EVENTS: usize = 10_000;
/// Parts queued or being applied at once: bounds memory for huge transactions.
const TX_PARTS_IN_FLIGHT: usize = 3;
/// Table ids remembered before the cache is cleared (ids change with every DDL and
/// table-cache flush; a long-running server mints many).
const MAX_TABLE_MAPS: usize = 10_000;
/// MariaDB replica capability: GTID events arrive as such, ANNOTATE_ROWS is understood.
const MARIA_SLAVE_CAPABILITY_GTID: u32 = 4;

const RESNAPSHOT: &str = "re-snapshot: delete this pipeline's row from tidewater_checkpoints in the target and restart";

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
}

impl MysqlSource {
    /// A source connecting in plaintext; see [`MysqlSource::with_tls`].
    pub fn new(cfg: MysqlSourceConfig) -> Self {
        MysqlSource { cfg, tls: MysqlTls::disabled(), conn: None, info: None, tables: Vec::new(), snapshot: None }
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

    async fn begin_backfill(&mut self) -> Result<(), ConnectorError> {
        self.snapshot = None;
        let mut conn = connect(&self.cfg.endpoint, &self.tls, &self.cfg.source_name).await?;
        crate::snapshot::open_backfill(&mut conn).await?;
        self.snapshot = Some(conn);
        Ok(())
    }

    async fn estimate_rows(&mut self, table: &TableSchema) -> Option<u64> {
        let conn = self.snapshot.as_mut()?;
        crate::catalog::estimate_rows(conn, &table.id).await
    }

    async fn snapshot_table(
        &mut self,
        table: &Arc<TableSchema>,
        chunk_rows: usize,
        out: &mpsc::Sender<SnapshotChunk>,
    ) -> Result<(), ConnectorError> {
        let kinds = self.value_kinds(table)?;
        let conn = self
            .snapshot
            .as_mut()
            .ok_or_else(|| ConnectorError::fatal("snapshot_table called without begin_snapshot"))?;
        crate::snapshot::read_table(conn, table, &kinds, chunk_rows, out).await
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
        let gtid_mode = info.flavour == Flavour::MariaDb && start.gtid.is_some();
        let (stream, checksum_on) = open_stream(&self.cfg, &self.tls, &info, &start, gtid_mode).await?;
        let catalog_conn = connect(&self.cfg.endpoint, &self.tls, &name).await?;
        let poll_conn = connect(&self.cfg.endpoint, &self.tls, &name).await?;
        tracing::info!(source = %name, position = %start, by_gtid = gtid_mode, "binlog streaming started");

        let tables: HashMap<TableId, CatalogTable> = self.tables.iter().map(|t| (t.id.clone(), t.clone())).collect();
        let published = self.tables.iter().map(|t| (t.id.clone(), t.schema.clone())).collect();
        let reader = Reader {
            source_name: name.clone(),
            server_id: self.cfg.server_id,
            flavour: info.flavour,
            stream,
            out,
            catalog: Catalog {
                conn: catalog_conn,
                endpoint: self.cfg.endpoint.clone(),
                tls: self.tls.clone(),
                source_name: name.clone(),
                flavour: info.flavour,
                tables,
                stale: HashSet::new(),
                published,
            },
            start_state: start.gtid.clone().unwrap_or_default(),
            state: start.gtid.clone().unwrap_or_default(),
            gtid_mode,
            file: start.file.clone(),
            pos: start.pos,
            seen_fde: false,
            checksum_on,
            maps: HashMap::new(),
            current: None,
            last_delivered: start.clone(),
            start,
            part_budget: Arc::new(Semaphore::new(TX_PARTS_IN_FLIGHT)),
            caught_up: false,
        };
        let start_for_poller = reader.start.clone();
        let poller = poll_lag(poll_conn, info, acks, start_for_poller, progress);
        let task = tokio::spawn(async move { tokio::try_join!(reader.run(), poller).map(|_| ()) });
        Ok(StreamHandle { task })
    }
}

/// Registers as a replica and requests the binlog from `start`. Returns the stream and
/// whether events carry checksums.
async fn open_stream(
    cfg: &MysqlSourceConfig,
    tls: &MysqlTls,
    info: &ServerInfo,
    start: &BinlogPosition,
    gtid_mode: bool,
) -> Result<(BinlogStream, bool), ConnectorError> {
    let name = &cfg.source_name;
    let mut conn = connect(&cfg.endpoint, tls, name).await?;
    let what = format!("requesting the binlog of source {name} from {start}");
    let checksum: String = rows(&mut conn, "SELECT @@GLOBAL.binlog_checksum", &what)
        .await?
        .first()
        .map(|r| col::<String>(r, 0, "binlog_checksum"))
        .transpose()?
        .unwrap_or_default();
    let checksum_on = !checksum.eq_ignore_ascii_case("NONE") && !checksum.is_empty();
    let mut setup = vec![
        // MySQL 8.0.26+ reads the `source_` name, older servers and MariaDB the `master_` one.
        format!("SET @master_heartbeat_period = {0}, @source_heartbeat_period = {0}", HEARTBEAT.as_nanos()),
        // Reading stops while the engine is busy (backpressure): the server must wait.
        "SET SESSION net_write_timeout = 3600".to_string(),
    ];
    if info.flavour == Flavour::MySql {
        // mysql_async announces checksum support under the old name only.
        setup.push("SET @source_binlog_checksum = @@GLOBAL.binlog_checksum".to_string());
    }
    if info.flavour == Flavour::MariaDb {
        setup.push(format!("SET @mariadb_slave_capability = {MARIA_SLAVE_CAPABILITY_GTID}"));
        if gtid_mode {
            // GtidState renders only digits, dashes and commas.
            let state = start.gtid.as_ref().map(|g| g.to_string()).unwrap_or_default();
            setup.push(format!("SET @slave_connect_state = '{state}'"));
            setup.push("SET @slave_gtid_strict_mode = 1".to_string());
            setup.push("SET @slave_gtid_ignore_duplicates = 0".to_string());
        }
    }
    for sql in &setup {
        conn.query_drop(sql.as_str()).await.map_err(|e| my_error(&what, e))?;
    }
    let mut request = BinlogStreamRequest::new(cfg.server_id);
    if !gtid_mode {
        request = request.with_filename(start.file.as_bytes()).with_pos(start.pos);
    }
    let stream =
        conn.get_binlog_stream(request).await.map_err(|e| explain_stream_error(name, cfg.server_id, start, e))?;
    Ok((stream, checksum_on))
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

/// The catalog as the reader sees it: loaded at start, refreshed after DDL.
struct Catalog {
    conn: Conn,
    endpoint: MysqlEndpoint,
    tls: MysqlTls,
    source_name: String,
    flavour: Flavour,
    tables: HashMap<TableId, CatalogTable>,
    /// Tables a DDL statement named since their last refresh.
    stale: HashSet<TableId>,
    /// The schema last handed on per table (reused while unchanged).
    published: HashMap<TableId, Arc<TableSchema>>,
}

impl Catalog {
    async fn refresh(&mut self, id: &TableId) -> Result<(), ConnectorError> {
        let table = match load_table(&mut self.conn, id, self.flavour).await {
            Ok(t) => t,
            // The connection idles between schema changes and may have been closed
            // (wait_timeout): reconnect once.
            Err(e) if !e.is_fatal() => {
                self.conn = connect(&self.endpoint, &self.tls, &self.source_name).await?;
                load_table(&mut self.conn, id, self.flavour).await?
            }
            Err(e) => return Err(e),
        };
        self.tables.insert(id.clone(), table);
        self.stale.remove(id);
        Ok(())
    }

    /// `schema`, or the equal one handed on before.
    fn publish(&mut self, schema: TableSchema, at: &str) -> Arc<TableSchema> {
        match self.published.get(&schema.id) {
            Some(old) if **old == schema => old.clone(),
            old => {
                if old.is_some() {
                    tracing::info!(table = %schema.id, position = %at, "source table schema changed");
                }
                let schema = Arc::new(schema);
                self.published.insert(schema.id.clone(), schema.clone());
                schema
            }
        }
    }
}

/// A tracked table as one table map describes it.
#[derive(Debug)]
struct MappedTable {
    schema: Arc<TableSchema>,
    decoders: Vec<ColumnDecoder>,
    /// Table-map column → schema column; `None` when every column is kept in order.
    keep: Option<Vec<Option<usize>>>,
}

enum Mapping {
    Untracked,
    Tracked(Arc<MappedTable>),
}

/// The columns, key and decoders of a table map, matched against the catalog: by name
/// when the table map carries names (binlog_row_metadata = FULL; columns dropped since are
/// skipped, columns added since are absent), else by position, which needs the same
/// column count. Types must agree. Any mismatch is an error, never a guess.
fn map_table(info: &TableMapInfo, cat: &CatalogTable) -> Result<Matched, String> {
    let mut columns: Vec<&CatalogColumn> = Vec::with_capacity(info.layouts.len());
    let mut decoders = Vec::with_capacity(info.layouts.len());
    let mut keep = Vec::with_capacity(info.layouts.len());
    if info.names.is_none() && info.layouts.len() != cat.columns.len() {
        return Err(format!(
            "the binlog row has {} columns, the catalog {}; without binlog_row_metadata = FULL the columns cannot be \
             matched by name",
            info.layouts.len(),
            cat.columns.len()
        ));
    }
    let (mut enum_i, mut set_i) = (0usize, 0usize);
    for (i, layout) in info.layouts.iter().enumerate() {
        let labels = match layout {
            crate::decode::Layout::Enum { .. } => {
                enum_i += 1;
                info.enum_labels.as_ref().and_then(|l| l.get(enum_i - 1))
            }
            crate::decode::Layout::Set { .. } => {
                set_i += 1;
                info.set_labels.as_ref().and_then(|l| l.get(set_i - 1))
            }
            _ => None,
        };
        let found = match &info.names {
            Some(names) => cat.column(&names[i]),
            None => cat.columns.get(i),
        };
        let Some(c) = found else {
            decoders.push(ColumnDecoder { layout: *layout, kind: ValueKind::Ignored });
            keep.push(None);
            continue;
        };
        let kind = match (&c.kind, labels) {
            (ValueKind::Enum(_), Some(l)) => ValueKind::Enum(l.clone().into()),
            (ValueKind::Set(_), Some(l)) => ValueKind::Set(l.clone().into()),
            (k, _) => k.clone(),
        };
        if !layout.fits(&kind) {
            return Err(format!(
                "column {} is {} in the binlog but {} in the catalog",
                c.column.name,
                layout.name(),
                c.column.native_type
            ));
        }
        decoders.push(ColumnDecoder { layout: *layout, kind });
        keep.push(Some(columns.len()));
        columns.push(c);
    }
    let mut key = Vec::with_capacity(cat.key.len());
    for &k in &cat.key {
        let name = &cat.columns[k].column.name;
        let i = columns
            .iter()
            .position(|c| &c.column.name == name)
            .ok_or_else(|| format!("key column {name} is not in the binlog row"))?;
        key.push(i);
    }
    let identity = keep.iter().enumerate().all(|(i, k)| *k == Some(i));
    // ENUM labels from the table map (what the row was written with) go into the native
    // type, so the schema says which labels a target column needs.
    let mut core_columns: Vec<tidewater_core::Column> = columns.iter().map(|c| c.column.clone()).collect();
    for (col, dec) in core_columns.iter_mut().zip(decoders.iter().filter(|d| d.kind != ValueKind::Ignored)) {
        if let ValueKind::Enum(labels) | ValueKind::Set(labels) = &dec.kind {
            let kind = if matches!(dec.kind, ValueKind::Enum(_)) { "enum" } else { "set" };
            let quoted: Vec<String> = labels.iter().map(|l| format!("'{}'", l.replace('\'', "''"))).collect();
            let native = format!("{kind}({})", quoted.join(","));
            if !col.native_type.starts_with(&native) {
                col.native_type = native;
            }
        }
    }
    let schema = TableSchema {
        id: cat.id.clone(),
        engine: tidewater_core::Engine::Mysql,
        columns: core_columns,
        key,
        enum_labels: Vec::new(),
    };
    Ok((schema, decoders, (!identity).then_some(keep)))
}

/// A table map matched against the catalog: the schema, the decoders, the column mapping.
type Matched = (TableSchema, Vec<ColumnDecoder>, Option<Vec<Option<usize>>>);

struct OpenTx {
    gtid: Option<Gtid>,
    /// A MariaDB group of one statement (DDL) without BEGIN/COMMIT.
    standalone: bool,
    /// Position where the group starts (dead letters of its parts name it).
    start: BinlogPosition,
    commit_time: SystemTime,
    /// Applied before this stream started: its events are dropped.
    skip: bool,
    parts_sent: bool,
    events: Vec<ChangeEvent>,
}

/// Turns the binlog event stream into whole transactions.
struct Reader {
    source_name: String,
    server_id: u32,
    flavour: Flavour,
    stream: BinlogStream,
    out: tidewater_core::queue::SourceSender,
    catalog: Catalog,
    /// Where the stream was started; transactions at or before it are skipped.
    start: BinlogPosition,
    start_state: GtidState,
    gtid_mode: bool,
    /// GTID state after the last whole transaction.
    state: GtidState,
    /// Current binlog file and the end of the last event read.
    file: String,
    pos: u64,
    seen_fde: bool,
    checksum_on: bool,
    maps: HashMap<u64, (Vec<u8>, Arc<Mapping>)>,
    current: Option<OpenTx>,
    last_delivered: BinlogPosition,
    part_budget: Arc<Semaphore>,
    /// A heartbeat or a transaction after the start arrived: the server is streaming.
    caught_up: bool,
}

fn event_time(secs: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(secs))
}

impl Reader {
    async fn run(mut self) -> Result<(), ConnectorError> {
        loop {
            let event = self.next_event().await?;
            if !self.handle(event).await? {
                return Ok(());
            }
        }
    }

    /// `file:pos` at the end of the last event, for messages.
    fn here(&self) -> String {
        format!("{}:{}", self.file, self.pos)
    }

    fn position(&self, pos: u64) -> BinlogPosition {
        let gtid = (self.flavour == Flavour::MariaDb).then(|| self.state.clone());
        BinlogPosition::new(self.file.clone(), pos, gtid)
    }

    fn fatal(&self, what: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::fatal(format!("source {}: {what}, at binlog position {}", self.source_name, self.here()))
    }

    async fn next_event(&mut self) -> Result<Event, ConnectorError> {
        let limit = if self.caught_up { READ_TIMEOUT } else { STARTUP_READ_TIMEOUT };
        // An event already buffered is taken without arming the timer (a timer per event
        // showed in profiles while catching up); only a read that has to wait is timed.
        let read = {
            let mut read = std::pin::pin!(contain_future(self.stream.next()));
            match std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
                Poll::Ready(event) => Ok(event),
                Poll::Pending => tokio::time::timeout(limit, read).await,
            }
        };
        match read {
            Err(_) => Err(ConnectorError::transient(format!(
                "source {}: no binlog event or heartbeat for {limit:?} (connection lost?)",
                self.source_name
            ))),
            Ok(Err(panic)) => {
                Err(self.fatal(format_args!("{panic}; the event cannot be decoded ({RESNAPSHOT} if it recurs)")))
            }
            Ok(Ok(None)) => Err(ConnectorError::transient(format!(
                "source {}: the server ended the binlog stream (shutting down?)",
                self.source_name
            ))),
            Ok(Ok(Some(Err(e)))) => Err(explain_stream_error(&self.source_name, self.server_id, &self.start, e)),
            Ok(Ok(Some(Ok(event)))) => Ok(event),
        }
    }

    /// Returns false when the engine has gone away.
    async fn handle(&mut self, event: Event) -> Result<bool, ConnectorError> {
        let header = event.header();
        let t = header.event_type_raw();
        let log_pos = u64::from(header.log_pos());
        match t {
            kind::ROTATE => {
                let (file, pos) =
                    parse_rotate(event.data(), !self.seen_fde && self.checksum_on).map_err(|e| self.fatal(e))?;
                self.file = file;
                self.pos = pos;
                return Ok(true);
            }
            kind::FORMAT_DESCRIPTION => self.seen_fde = true,
            kind::MARIADB_GTID => {
                let g = parse_mariadb_gtid(event.data(), header.server_id()).map_err(|e| self.fatal(e))?;
                if g.xa() {
                    return Err(self.fatal(format_args!(
                        "XA transaction {} (XA transactions are not supported: their rows are logged at XA PREPARE, \
                         before the outcome is known)",
                        g.gtid
                    )));
                }
                self.begin(Some(g.gtid), g.standalone(), header.timestamp())?;
            }
            kind::QUERY => {
                let go_on = self.query(&event, log_pos, header.timestamp()).await?;
                self.advance(log_pos);
                return Ok(go_on);
            }
            kind::XID => return self.commit(log_pos, header.timestamp()).await,
            kind::TABLE_MAP => self.table_map(&event, log_pos).await?,
            kind::WRITE_ROWS_V1 | kind::WRITE_ROWS => return self.rows_at(&event, Op::Insert, log_pos).await,
            kind::UPDATE_ROWS_V1 | kind::UPDATE_ROWS => return self.rows_at(&event, Op::Update, log_pos).await,
            kind::DELETE_ROWS_V1 | kind::DELETE_ROWS => return self.rows_at(&event, Op::Delete, log_pos).await,
            kind::HEARTBEAT | kind::HEARTBEAT_V2 => {
                self.caught_up = true;
                self.idle_heartbeat(log_pos);
                return Ok(true);
            }
            kind::XA_PREPARE => return Err(self.fatal("XA PREPARE (XA transactions are not supported)")),
            kind::PARTIAL_UPDATE_ROWS => {
                return Err(
                    self.fatal("partial JSON update rows event: set binlog_row_value_options = '' on the source")
                )
            }
            kind::INCIDENT => {
                return Err(self.fatal(format_args!(
                    "the source logged an incident (changes may be missing from its binlog); {RESNAPSHOT}"
                )))
            }
            kind::QUERY_COMPRESSED..=kind::DELETE_ROWS_COMPRESSED => {
                return Err(self.fatal(format_args!(
                    "compressed binlog event (type {t}): set log_bin_compress = OFF on the source"
                )))
            }
            _ => {}
        }
        self.advance(log_pos);
        Ok(true)
    }

    /// Records the end of the event just handled (artificial events have none).
    fn advance(&mut self, log_pos: u64) {
        if log_pos != 0 {
            self.pos = log_pos;
        }
    }

    async fn rows_at(&mut self, event: &Event, op: Op, log_pos: u64) -> Result<bool, ConnectorError> {
        let go_on = self.rows(event, op).await?;
        self.advance(log_pos);
        Ok(go_on)
    }

    fn begin(&mut self, gtid: Option<Gtid>, standalone: bool, when: u32) -> Result<(), ConnectorError> {
        if let Some(open) = &self.current {
            if !open.events.is_empty() || open.parts_sent {
                return Err(self.fatal("a new transaction starts inside an open one"));
            }
        }
        let start = self.position(self.pos);
        let skip = match gtid {
            Some(g) if self.gtid_mode => self.start_state.covers(&g),
            _ => start.cmp_file_pos(&self.start) == std::cmp::Ordering::Less,
        };
        self.caught_up |= !skip;
        self.current = Some(OpenTx {
            gtid,
            standalone,
            start,
            commit_time: event_time(when),
            skip,
            parts_sent: false,
            events: Vec::new(),
        });
        Ok(())
    }

    /// Ends the open transaction at `end` (the commit event's end). Returns false when the
    /// engine has gone away.
    async fn commit(&mut self, end: u64, when: u32) -> Result<bool, ConnectorError> {
        let Some(tx) = self.current.take() else {
            return Err(self.fatal("COMMIT without an open transaction"));
        };
        if let Some(g) = tx.gtid {
            self.state.update(g);
        }
        self.pos = end;
        let position = self.position(end);
        let before_start = !self.gtid_mode && position.cmp_file_pos(&self.start) != std::cmp::Ordering::Greater;
        if tx.skip || before_start {
            return Ok(true); // applied before this stream started
        }
        if tx.events.is_empty() && !tx.parts_sent {
            self.offer_heartbeat(position);
            return Ok(true);
        }
        let item = SourceItem::Transaction(Transaction {
            position: position.to_string(),
            position_num: None,
            commit_time: if when > 0 { event_time(when) } else { tx.commit_time },
            events: tx.events,
        });
        if self.out.send(item).await.is_err() {
            return Ok(false);
        }
        self.last_delivered = position;
        Ok(true)
    }

    /// Passes `position` to the engine if it is past what was delivered (best effort).
    fn offer_heartbeat(&mut self, position: BinlogPosition) {
        if position.cmp_file_pos(&self.last_delivered) != std::cmp::Ordering::Greater {
            return;
        }
        if self.out.try_send(SourceItem::Heartbeat { position: position.to_string() }).is_ok() {
            self.last_delivered = position;
        }
    }

    /// A server heartbeat: the binlog has nothing new after `log_pos`.
    fn idle_heartbeat(&mut self, log_pos: u64) {
        if self.current.is_some() || self.file.is_empty() {
            return;
        }
        let pos = log_pos.max(self.pos);
        let position = self.position(pos);
        self.offer_heartbeat(position);
    }

    async fn query(&mut self, event: &Event, end: u64, when: u32) -> Result<bool, ConnectorError> {
        let (sql, db) =
            contain(|| event.read_event::<QueryEvent<'_>>().map(|q| (q.query().into_owned(), q.schema().into_owned())))
                .map_err(|e| self.fatal(e))?
                .map_err(|e| self.fatal(format_args!("undecodable QUERY event ({e})")))?;
        let stmt = parse_statement(&sql, &db);
        match stmt.keyword.as_str() {
            "BEGIN" => {
                if self.current.is_none() {
                    self.begin(None, false, when)?;
                }
                return Ok(true);
            }
            "COMMIT" => return self.commit(end, when).await,
            "ROLLBACK" if !stmt.savepoint => {
                let here = self.here();
                if let Some(tx) = &mut self.current {
                    if !tx.events.is_empty() || tx.parts_sent {
                        tracing::warn!(
                            source = %self.source_name, position = %here,
                            "a transaction that changed non-transactional tables was rolled back: its changes are not replicated"
                        );
                    }
                    if tx.parts_sent {
                        return Err(ConnectorError::fatal(format!(
                            "source {}: a transaction handed on in parts was rolled back, at binlog position {here}",
                            self.source_name
                        )));
                    }
                    tx.events.clear();
                }
                return self.commit(end, when).await;
            }
            "XA" => return Err(self.fatal("XA transaction (XA transactions are not supported)")),
            _ if stmt.savepoint || stmt.keyword.is_empty() => return Ok(true),
            _ => {}
        }
        let tracked = |id: &TableId| self.catalog.tables.contains_key(id);
        if let Some(target) = stmt.dml_target.as_ref().filter(|t| tracked(t)) {
            return Err(self.fatal(format_args!(
                "a change to {target} was logged as a statement, not as rows (a session with binlog_format = STATEMENT \
                 or MIXED): its rows cannot be replicated; make every session use binlog_format = ROW, then {RESNAPSHOT}"
            )));
        }
        let touched: Vec<TableId> = stmt.mentioned.iter().filter(|t| tracked(t)).cloned().collect();
        if !touched.is_empty() {
            tracing::info!(source = %self.source_name, position = %self.here(), statement = %sql, "DDL on replicated tables");
            self.catalog.stale.extend(touched.iter().cloned());
        }
        let truncated = stmt.truncated.filter(|t| tracked(t));
        if self.current.is_none() {
            // MySQL logs DDL without BEGIN: the statement is its own transaction.
            self.begin(None, true, when)?;
        }
        if let Some(id) = truncated {
            let table = match self.catalog.published.get(&id) {
                Some(s) => s.clone(),
                None => {
                    self.catalog.tables.get(&id).map(|t| t.schema.clone()).ok_or_else(|| self.fatal("lost table"))?
                }
            };
            if !self.push(ChangeEvent { table, op: Op::Truncate, before: None, after: None }).await? {
                return Ok(false);
            }
        }
        if self.current.as_ref().is_some_and(|tx| tx.standalone) {
            return self.commit(end, when).await;
        }
        Ok(true)
    }

    async fn table_map(&mut self, event: &Event, end: u64) -> Result<(), ConnectorError> {
        let raw = event.data();
        let info = {
            // Table maps repeat in every transaction: decode each distinct one once.
            let quick = contain(|| table_map_id(raw)).map_err(|e| self.fatal(e))?;
            if let Some(id) = quick {
                if let Some((cached, mapping)) = self.maps.get(&id) {
                    let stale = match &**mapping {
                        Mapping::Tracked(m) => self.catalog.stale.contains(&m.schema.id),
                        Mapping::Untracked => false,
                    };
                    if cached.as_slice() == raw && !stale {
                        return Ok(());
                    }
                }
            }
            contain(|| table_map_info(event)).map_err(|e| self.fatal(e))?.map_err(|e| self.fatal(e))?
        };
        if self.maps.len() >= MAX_TABLE_MAPS {
            self.maps.clear();
        }
        let at = format!("{}:{}", self.file, end);
        let id = TableId::new(info.database.clone(), info.table.clone());
        if !self.catalog.tables.contains_key(&id) {
            self.maps.insert(info.table_id, (raw.to_vec(), Arc::new(Mapping::Untracked)));
            return Ok(());
        }
        let mut refreshed = false;
        if self.catalog.stale.contains(&id) {
            self.catalog.refresh(&id).await?;
            refreshed = true;
        }
        loop {
            let cat = self.catalog.tables.get(&id).ok_or_else(|| self.fatal(format_args!("table {id} vanished")))?;
            match map_table(&info, cat) {
                Ok((schema, decoders, keep)) => {
                    let schema = self.catalog.publish(schema, &at);
                    let mapped = MappedTable { schema, decoders, keep };
                    self.maps.insert(info.table_id, (raw.to_vec(), Arc::new(Mapping::Tracked(Arc::new(mapped)))));
                    return Ok(());
                }
                Err(_) if !refreshed => {
                    self.catalog.refresh(&id).await?;
                    refreshed = true;
                }
                Err(reason) => {
                    return Err(ConnectorError::fatal(format!(
                        "source {}: the binlog table map of {id} at {at} does not match the source catalog: {reason}. \
                         The table was altered after this position; {RESNAPSHOT}",
                        self.source_name
                    )))
                }
            }
        }
    }

    async fn rows(&mut self, event: &Event, op: Op) -> Result<bool, ConnectorError> {
        let fields = contain(|| rows_fields(event)).map_err(|e| self.fatal(e))?.map_err(|e| self.fatal(e))?;
        let mapped = match self.maps.get(&fields.table_id).map(|(_, m)| m.clone()) {
            None => {
                return Err(
                    self.fatal(format_args!("rows event for table id {} without its table map", fields.table_id))
                )
            }
            Some(m) => match &*m {
                Mapping::Untracked => return Ok(true),
                Mapping::Tracked(t) => t.clone(),
            },
        };
        match &self.current {
            None => return Err(self.fatal("rows event outside a transaction")),
            Some(tx) if tx.skip => return Ok(true),
            Some(_) => {}
        }
        let decoded =
            contain(|| decode_rows(&mapped.decoders, fields.before.as_deref(), fields.after.as_deref(), &fields.rows))
                .map_err(|e| self.fatal(e))?
                .map_err(|e| self.fatal(format_args!("cannot decode a row of {}: {e}", mapped.schema.id)))?;
        for (before, after) in decoded {
            let event = self.change(&mapped, op, before, after)?;
            if !self.push(event).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One row change, full-width in the mapped schema's column order.
    fn change(
        &self,
        mapped: &MappedTable,
        op: Op,
        before: Option<RowImage>,
        after: Option<RowImage>,
    ) -> Result<ChangeEvent, ConnectorError> {
        let schema = &mapped.schema;
        let not_full = |what: &str| {
            self.fatal(format_args!(
                "the {what} image of a row of {} lacks columns (binlog_row_image is not FULL for the session that \
                 wrote it): set binlog_row_image = FULL for every session",
                schema.id
            ))
        };
        // Missing columns: an error, or `fill` (only where the event model allows it).
        let project = |img: RowImage, fill: Option<Value>, what: &str| -> Result<Vec<Value>, ConnectorError> {
            let value = |j: usize, v: Option<Value>| match v {
                Some(v) => Ok(v),
                None if schema.key.contains(&j) => Err(not_full(what)),
                None => fill.clone().ok_or_else(|| not_full(what)),
            };
            let Some(keep) = &mapped.keep else {
                // The table map's columns are the schema's: converted in place.
                return img.into_iter().enumerate().map(|(j, v)| value(j, v)).collect();
            };
            let mut out = vec![Value::Null; schema.columns.len()];
            for (i, v) in img.into_iter().enumerate() {
                if let Some(j) = keep.get(i).copied().flatten() {
                    out[j] = value(j, v)?;
                }
            }
            Ok(out)
        };
        let (before, after) = match op {
            Op::Insert => (None, Some(project(after.ok_or_else(|| not_full("after"))?, None, "after")?)),
            Op::Update => (
                Some(project(before.ok_or_else(|| not_full("before"))?, Some(Value::Null), "before")?),
                Some(project(after.ok_or_else(|| not_full("after"))?, Some(Value::Unchanged), "after")?),
            ),
            Op::Delete | Op::Truncate => {
                (Some(project(before.ok_or_else(|| not_full("before"))?, Some(Value::Null), "before")?), None)
            }
        };
        Ok(ChangeEvent { table: schema.clone(), op, before, after })
    }

    /// Adds an event to the open transaction, handing on a part when it grows large.
    /// Returns false when the engine has gone away.
    async fn push(&mut self, event: ChangeEvent) -> Result<bool, ConnectorError> {
        let Some(tx) = &mut self.current else {
            return Err(self.fatal("change outside a transaction"));
        };
        if tx.skip {
            return Ok(true);
        }
        tx.events.push(event);
        if tx.events.len() < TX_PART_EVENTS {
            return Ok(true);
        }
        let events = std::mem::replace(&mut tx.events, Vec::with_capacity(TX_PART_EVENTS));
        tx.parts_sent = true;
        let (position, commit_time) = (tx.start.to_string(), tx.commit_time);
        // Waiting for budget is the backpressure that keeps memory bounded.
        let budget = self.part_budget.clone().acquire_owned().await.ok();
        let part = TransactionPart { events, position, commit_time, budget };
        Ok(self.out.send(SourceItem::TransactionPart(part)).await.is_ok())
    }
}

/// The table id of a table map event body without decoding the rest (6 bytes LE; MySQL
/// 5.x-era post headers of 6 bytes used 4, which is not supported by these servers).
fn table_map_id(data: &[u8]) -> Option<u64> {
    let b = data.get(..6)?;
    Some(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

/// A binlog stream error, with the fix where there is one.
fn explain_stream_error(name: &str, server_id: u32, start: &BinlogPosition, e: mysql_async::Error) -> ConnectorError {
    if let mysql_async::Error::Server(s) = &e {
        let lower = s.message.to_ascii_lowercase();
        if s.code == 4052 || lower.contains("same server_id") || lower.contains("same server id") {
            return ConnectorError::fatal(format!(
                "source {name}: another replica connected with server_id {server_id} ({}): every pipeline and replica \
                 of the server needs its own; change sources.{name}.server_id",
                s.message
            ))
            .with_code(s.code.to_string());
        }
        if s.code == 1236 {
            return ConnectorError::fatal(format!(
                "source {name} cannot stream from the checkpoint {start}: {}. The binlog was purged past the checkpoint \
                 (or this server's binlog is not the one the checkpoint came from); {RESNAPSHOT}",
                s.message.trim_end_matches('.')
            ))
            .with_code("1236");
        }
    }
    my_error(format_args!("reading the binlog of source {name}"), e)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::catalog::{map_column, RawColumn};
    use crate::decode::{Charset, Layout};

    fn catalog(cols: &[(&str, &str, &str)], key: &[usize]) -> CatalogTable {
        let columns: Vec<CatalogColumn> = cols
            .iter()
            .map(|(name, dt, ct)| {
                let raw = RawColumn {
                    name: name.to_string(),
                    data_type: dt.to_string(),
                    column_type: ct.to_string(),
                    nullable: true,
                    charset: Some("utf8mb4".into()),
                    char_length: Some(10),
                    ..RawColumn::default()
                };
                map_column(&raw, Flavour::MariaDb, false).unwrap()
            })
            .collect();
        let schema = Arc::new(TableSchema {
            id: TableId::new("d", "t"),
            engine: tidewater_core::Engine::Mysql,
            columns: columns.iter().map(|c| c.column.clone()).collect(),
            key: key.to_vec(),
            enum_labels: vec![],
        });
        CatalogTable { id: TableId::new("d", "t"), columns, key: key.to_vec(), schema }
    }

    fn tmi(layouts: Vec<Layout>, names: Option<Vec<&str>>) -> TableMapInfo {
        TableMapInfo {
            table_id: 1,
            database: "d".into(),
            table: "t".into(),
            layouts,
            names: names.map(|n| n.into_iter().map(String::from).collect()),
            enum_labels: None,
            set_labels: None,
        }
    }

    #[test]
    fn table_maps_match_by_name_or_position() {
        let cat = catalog(&[("id", "int", "int(11)"), ("v", "varchar", "varchar(10)")], &[0]);
        let (schema, dec, keep) =
            map_table(&tmi(vec![Layout::Long, Layout::Str { len_bytes: 1 }], None), &cat).unwrap();
        assert_eq!(schema.columns.len(), 2);
        assert_eq!(dec[1].kind, ValueKind::Text(Charset::Utf8));
        assert!(keep.is_none());
        assert_eq!(*Arc::new(schema), *cat.schema);

        // Without names a different column count is an error, never a guess.
        let err = map_table(&tmi(vec![Layout::Long], None), &cat).unwrap_err();
        assert!(err.contains("binlog_row_metadata = FULL"), "{err}");
        // Types must agree.
        let err = map_table(&tmi(vec![Layout::Long, Layout::Double], None), &cat).unwrap_err();
        assert!(err.contains("column v is DOUBLE in the binlog"), "{err}");

        // With names: a column added since is absent, one dropped since is skipped.
        let (schema, _, keep) = map_table(&tmi(vec![Layout::Long], Some(vec!["id"])), &cat).unwrap();
        assert_eq!(schema.columns.len(), 1);
        assert!(keep.is_none());
        let (schema, dec, keep) = map_table(
            &tmi(vec![Layout::Long, Layout::Tiny, Layout::Str { len_bytes: 1 }], Some(vec!["id", "gone", "v"])),
            &cat,
        )
        .unwrap();
        assert_eq!(schema.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), vec!["id", "v"]);
        assert_eq!(dec[1].kind, ValueKind::Ignored);
        assert_eq!(keep, Some(vec![Some(0), None, Some(1)]));
        // The key must be in the row.
        let err = map_table(&tmi(vec![Layout::Str { len_bytes: 1 }], Some(vec!["v"])), &cat).unwrap_err();
        assert!(err.contains("key column id"), "{err}");
    }

    #[test]
    fn table_map_labels_win_over_the_catalog() {
        let cat = catalog(&[("id", "int", "int(11)"), ("e", "enum", "enum('a','b')")], &[0]);
        let mut info = tmi(vec![Layout::Long, Layout::Enum { size: 1 }], Some(vec!["id", "e"]));
        info.enum_labels = Some(vec![vec!["x".into(), "y".into(), "z".into()]]);
        let (schema, dec, _) = map_table(&info, &cat).unwrap();
        assert_eq!(dec[1].kind, ValueKind::Enum(vec!["x".to_string(), "y".to_string(), "z".to_string()].into()));
        assert_eq!(schema.columns[1].native_type, "enum('x','y','z')");
        assert!(schema.enum_labels.is_empty());
    }

    #[test]
    fn stream_errors_name_the_fix() {
        let start = BinlogPosition::parse("binlog.000001:4 gtid=0-1-5").unwrap();
        let server = |code: u16, message: &str| {
            mysql_async::Error::Server(mysql_async::ServerError {
                code,
                message: message.into(),
                state: "HY000".into(),
            })
        };
        let e = explain_stream_error(
            "shop",
            4201,
            &start,
            server(1236, "Could not find GTID state requested by slave in any binlog files"),
        );
        assert!(e.is_fatal());
        assert!(e.message.contains("from the checkpoint binlog.000001:4 gtid=0-1-5"), "{e}");
        assert!(e.message.contains("purged past the checkpoint"), "{e}");
        assert!(e.message.contains("tidewater_checkpoints"));
        let e = explain_stream_error(
            "shop",
            4201,
            &start,
            server(4052, "A slave with the same server_uuid/server_id as this slave has connected"),
        );
        assert!(e.is_fatal());
        assert!(e.message.contains("server_id 4201") && e.message.contains("sources.shop.server_id"));
        let e = explain_stream_error("shop", 4201, &start, server(1053, "Server shutdown in progress"));
        assert!(!e.is_fatal());
        let io =
            mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)));
        assert!(!explain_stream_error("shop", 4201, &start, io).is_fatal());
    }

    #[test]
    fn table_map_ids_are_read_cheaply() {
        assert_eq!(table_map_id(&[0x85, 0, 0, 0, 0, 0, 1, 0]), Some(133));
        assert_eq!(table_map_id(&[1, 2]), None);
    }
}
