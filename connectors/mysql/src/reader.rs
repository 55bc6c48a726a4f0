//! The binlog reader: one replication connection whose events it groups into whole
//! transactions and decodes into core values (see [`crate::source`] for the protocol
//! details and [`crate::hub`] for who reads what).
//!
//! A reader hands what it decoded to an [`Emit`]: the shared ring of a source section's
//! hub, or the queue of one pipeline catching up on its own. Transactions at or before the
//! reader's start are skipped; large transactions are handed on in parts of
//! [`TX_PART_EVENTS`] events.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use mysql_async::binlog::events::{Event, QueryEvent};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest};
use tidewater_core::{ChangeEvent, ConnectorError, Op, TableId, Transaction, Value};

use crate::binlog_events::{
    contain, contain_future, kind, parse_mariadb_gtid, parse_rotate, rows_fields, table_map_info,
};
use crate::binlog_pos::{BinlogPosition, Gtid, GtidState};
use crate::catalog::CatalogTable;
use crate::decode::{decode_rows, RowImage};
use crate::source::MysqlSourceConfig;
use crate::source_conn::{col, connect, my_error, rows, Flavour, ServerInfo};
use crate::source_ddl::parse_statement;
use crate::table_maps::{has_unknown_column, map_table, table_map_id, Catalog, MappedTable, Mapping};
use crate::tls::MysqlTls;

/// The server sends a heartbeat after this long without events.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// No event and no heartbeat for this long: the connection is dead. Longer than a few
/// heartbeats because one event (a row with a large BLOB) may take a while to arrive.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Until the stream reaches its start: resuming by GTID, the server reads the binlog from
/// the start of the checkpoint's file without sending anything (not even heartbeats).
const STARTUP_READ_TIMEOUT: Duration = Duration::from_secs(300);
/// A transaction larger than this is handed on in parts of this many events.
pub(crate) const TX_PART_EVENTS: usize = 10_000;
/// Table ids remembered before the cache is cleared (ids change with every DDL and
/// table-cache flush; a long-running server mints many).
const MAX_TABLE_MAPS: usize = 10_000;
/// MariaDB replica capability: GTID events arrive as such, ANNOTATE_ROWS is understood.
const MARIA_SLAVE_CAPABILITY_GTID: u32 = 4;

pub(crate) const RESNAPSHOT: &str =
    "re-snapshot: delete this pipeline's row from tidewater_checkpoints in the target and restart";

/// What a reader decoded, in binlog order.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A leading part of a large transaction (more parts or its commit follow).
    Part { events: Vec<ChangeEvent>, start: BinlogPosition, gtid: Option<Gtid>, commit_time: SystemTime },
    /// A whole transaction touching tracked tables (or the last events of a large one),
    /// ending at `end`.
    Commit { tx: Transaction, gtid: Option<Gtid>, end: BinlogPosition },
    /// Everything for tracked tables up to this position has been handed on.
    Heartbeat(BinlogPosition),
}

/// Where a reader hands on what it decoded.
#[async_trait]
pub(crate) trait Emit: Send {
    /// Hands on `item`, waiting as long as the receiver needs (backpressure). Returns
    /// false when the reader should stop: the receiver has gone or no longer needs it.
    async fn emit(&mut self, item: Decoded) -> bool;

    /// Hands on an idle position if that needs no waiting; returns whether it did.
    fn offer(&mut self, position: &BinlogPosition) -> bool;
}

/// How to open a reader.
#[derive(Clone)]
pub(crate) struct ReaderSetup {
    pub cfg: MysqlSourceConfig,
    pub tls: MysqlTls,
    pub info: ServerInfo,
    /// The tracked tables, as the catalog described them.
    pub tables: Vec<CatalogTable>,
    /// The pipeline reading, for messages.
    pub pipeline: String,
    /// The bound of the source's shared buffer (see [`crate::hub`]).
    pub buffer_bytes: usize,
}

/// How a reader talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dump {
    /// Registered with the section's `server_id`; the stream waits for new events.
    Replica,
    /// `server_id` 0 with BINLOG_DUMP_NON_BLOCK: the stream ends at the binlog's end, and
    /// the server lets it run beside the replica of the section's id.
    CatchUp,
}

impl ReaderSetup {
    /// Connects and requests the binlog after `start`.
    pub(crate) async fn open<E: Emit>(
        &self,
        start: BinlogPosition,
        dump: Dump,
        out: E,
    ) -> Result<Reader<E>, ConnectorError> {
        let name = &self.cfg.source_name;
        let gtid_mode = self.info.flavour == Flavour::MariaDb && start.gtid.is_some();
        let server_id = match dump {
            Dump::Replica => self.cfg.server_id,
            Dump::CatchUp => 0,
        };
        let (stream, checksum_on) =
            open_stream(&self.cfg, &self.tls, &self.info, &start, gtid_mode, server_id, dump == Dump::CatchUp).await?;
        let catalog_conn = connect(&self.cfg.endpoint, &self.tls, name).await?;
        let tables: HashMap<TableId, CatalogTable> = self.tables.iter().map(|t| (t.id.clone(), t.clone())).collect();
        let published = self.tables.iter().map(|t| (t.id.clone(), t.schema.clone())).collect();
        Ok(Reader {
            source_name: name.clone(),
            server_id,
            flavour: self.info.flavour,
            stream,
            out,
            non_blocking: dump == Dump::CatchUp,
            catalog: Catalog {
                conn: catalog_conn,
                endpoint: self.cfg.endpoint.clone(),
                tls: self.tls.clone(),
                source_name: name.clone(),
                flavour: self.info.flavour,
                tables,
                stale: HashSet::new(),
                published,
                patterns: self.cfg.tables.iter().map(|p| TableId::parse(p, &self.cfg.endpoint.database)).collect(),
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
            caught_up: false,
        })
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
    server_id: u32,
    non_blocking: bool,
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
    let mut request = BinlogStreamRequest::new(server_id);
    if non_blocking {
        request = request.with_non_blocking();
    }
    if !gtid_mode {
        request = request.with_filename(start.file.as_bytes()).with_pos(start.pos);
    }
    let stream = conn.get_binlog_stream(request).await.map_err(|e| explain_stream_error(name, server_id, start, e))?;
    Ok((stream, checksum_on))
}

pub(crate) struct OpenTx {
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

/// Turns the binlog event stream into whole transactions, handed to `out`.
pub(crate) struct Reader<E> {
    source_name: String,
    server_id: u32,
    flavour: Flavour,
    stream: BinlogStream,
    out: E,
    /// The stream was requested with BINLOG_DUMP_NON_BLOCK: its end is the binlog's end.
    non_blocking: bool,
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
    /// A heartbeat or a transaction after the start arrived: the server is streaming.
    caught_up: bool,
}

fn event_time(secs: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(secs))
}

impl<E: Emit> Reader<E> {
    /// Reads until `out` stops taking items or (non-blocking) the end of the binlog;
    /// returns `out`.
    pub(crate) async fn run(mut self) -> Result<E, ConnectorError> {
        loop {
            let Some(event) = self.next_event().await? else {
                return Ok(self.out);
            };
            if !self.handle(event).await? {
                return Ok(self.out);
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

    async fn next_event(&mut self) -> Result<Option<Event>, ConnectorError> {
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
            Ok(Ok(None)) if self.non_blocking => Ok(None),
            Ok(Ok(None)) => Err(ConnectorError::transient(format!(
                "source {}: the server ended the binlog stream (shutting down?)",
                self.source_name
            ))),
            Ok(Ok(Some(Err(e)))) => Err(explain_stream_error(&self.source_name, self.server_id, &self.start, e)),
            Ok(Ok(Some(Ok(event)))) => Ok(Some(event)),
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
        let item = Decoded::Commit {
            tx: Transaction {
                position: position.to_string(),
                position_num: None,
                commit_time: if when > 0 { event_time(when) } else { tx.commit_time },
                events: tx.events,
            },
            gtid: tx.gtid,
            end: position.clone(),
        };
        if !self.out.emit(item).await {
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
        if self.out.offer(&position) {
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
        if matches!(stmt.keyword.as_str(), "CREATE" | "RENAME" | "ALTER") {
            if let Some(id) = self.catalog.new_table(&stmt.mentioned).await? {
                // Before this statement's transaction is handed on: the pipeline's position
                // stays before it, and the run that starts again tracks the table from its
                // first row (copying what it holds by then).
                tracing::info!(source = %self.source_name, position = %self.here(), table = %id, "table created under the source's tables patterns");
                return Err(ConnectorError::restart(format!(
                    "source {}: table {id} was created at binlog position {}; starting again to replicate it",
                    self.source_name,
                    self.here()
                )));
            }
        }
        let tracked = |id: &TableId| self.catalog.tables.contains_key(id);
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
        // A logged column the catalog does not know is either dropped since (the row is
        // older than the catalog) or added since the catalog was read (a reader opened
        // after a schema change, past its DDL statement, starts from the catalog of the
        // pipeline's start): only the current catalog tells which.
        let unknown = self.catalog.tables.get(&id).is_some_and(|cat| has_unknown_column(&info, cat));
        if self.catalog.stale.contains(&id) || unknown {
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
        let part = Decoded::Part { events, start: tx.start.clone(), gtid: tx.gtid, commit_time: tx.commit_time };
        Ok(self.out.emit(part).await)
    }
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
}
