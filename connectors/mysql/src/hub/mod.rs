//! One binlog reader per source section, feeding every pipeline of that source.
//!
//! # Design
//! Users configure one `[sources.NAME]` and several pipelines (one per target). The
//! process keeps one hub per source section (keyed by the section and its server, user,
//! `server_id` and tables): the first pipeline that starts streaming creates it, and its
//! single binlog dump connection, registered with the section's `server_id`, decodes every
//! transaction once into a shared [`ring::Ring`]. Each pipeline subscribes with its own
//! start (its checkpoint, or its snapshot's position) and takes the transactions after it,
//! filtered to its tables; each applies and checkpoints in its own target, independently.
//! The hub stops when its last pipeline leaves.
//!
//! # The bound
//! The ring holds the most recent transactions up to `binlog_buffer_mb` of decoded rows
//! (an estimate; [`DEFAULT_BUFFER_BYTES`] unless configured). The reader reads at the pace
//! of the fastest attached pipeline and at most the bound ahead of it; a pipeline more
//! than the bound behind the fastest (a slow target, a target that is down) is detached,
//! so it never holds the others back.
//!
//! # Catching up
//! A pipeline whose start is older than what the ring holds (detached, started later, or
//! started from an older checkpoint than the hub) reads on its own: a short-lived dump with
//! `server_id` 0 and BINLOG_DUMP_NON_BLOCK, which the server runs beside the hub's replica
//! connection without disconnecting it, from the pipeline's own position. After every
//! transaction it hands on, it checks whether the ring now covers that position; then it
//! closes its dump and attaches to the ring, skipping what it already has. At the binlog's
//! end (the non-blocking dump ends there) it attaches, or opens a new dump from where it
//! is. Switching happens only between transactions; a pipeline detached in the middle of a
//! transaction larger than the bound restarts from its checkpoint (a transient error).
//! Each reader keeps its own catalog and table maps, so schema changes are decoded the
//! same way on either path: table maps carry their columns, and a DDL statement marks its
//! tables for a catalog refresh before the next row.
//!
//! # Errors
//! A hub that loses its connection fails every subscriber with that (transient) error:
//! each pipeline retries as with any source error, starts again from its checkpoint, and
//! the first to come back starts a new hub. A fatal error at the hub's start position
//! (a purged binlog) is fatal only for the pipeline whose position it was; the others
//! retry. A pipeline that brings tables the hub does not track (a table created since
//! the hub started) restarts every pipeline of the source on the new set of tables.
//!
//! # Tables created while streaming
//! A reader that meets a `CREATE`/`RENAME`/`ALTER` statement naming a table that now
//! exists, matches the section's `tables` patterns and is not tracked fails with a
//! restart error before handing that transaction on: every pipeline starts again from its
//! checkpoint (before the statement), its source lists the new table, the engine copies it
//! (a backfill; on MariaDB at an exact binlog position) and each pipeline's
//! [`PipelineOut`] leaves out the table's changes that the copy already holds.
//!
//! Logs say when a pipeline attaches, falls behind and catches up, and `/metrics` shows
//! `tidewater_source_reader{mode="attached"|"catching_up"}` per pipeline.

pub(crate) mod ring;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tidewater_core::queue::SourceSender;
use tidewater_core::{ConnectorError, SourceItem, SourceProgress, TableId, Transaction, TransactionPart};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::binlog_pos::{BinlogPosition, Gtid};
use crate::reader::{Decoded, Dump, Emit, ReaderSetup};
use ring::{Next, Ring};

/// The ring's bound when the source section sets none.
pub const DEFAULT_BUFFER_BYTES: usize = 64 * 1024 * 1024;
/// Parts of a large transaction queued or being applied at once, per pipeline: bounds
/// memory for huge transactions.
const TX_PARTS_IN_FLIGHT: usize = 3;
/// A catching-up reader at the binlog's end that cannot attach yet (the hub has not read
/// that far) waits this long before reading on.
const CATCH_UP_PAUSE: Duration = Duration::from_millis(200);

static HUBS: LazyLock<Mutex<HashMap<String, Weak<Hub>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The shared reader of one source section.
struct Hub {
    source_name: String,
    ring: Arc<Ring>,
    /// The tables the reader decodes.
    tables: HashSet<TableId>,
    task: JoinHandle<()>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.task.abort();
        tracing::info!(source = %self.source_name, "shared binlog reader stopped: no pipeline reads from it");
    }
}

/// A pipeline's place at its source section's hub.
pub(crate) struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    /// How this pipeline's own catching-up reader opens (its tables).
    setup: ReaderSetup,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.ring.remove_subscriber(self.id);
    }
}

fn hub_key(setup: &ReaderSetup) -> String {
    let (cfg, e) = (&setup.cfg, &setup.cfg.endpoint);
    format!("{}\n{}:{}\n{}\n{}\n{}", cfg.source_name, e.host, e.port, e.user, cfg.server_id, cfg.tables.join(","))
}

/// Subscribes the pipeline of `setup` to its source section's hub, starting the hub (from
/// `start`) when there is none.
pub(crate) fn subscribe(setup: &ReaderSetup, start: &BinlogPosition) -> Subscription {
    let tables: HashSet<TableId> = setup.tables.iter().map(|t| t.id.clone()).collect();
    let key = hub_key(setup);
    let mut hubs = HUBS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    hubs.retain(|_, hub| hub.strong_count() > 0);
    let existing = hubs.get(&key).and_then(Weak::upgrade).filter(|hub| !hub.ring.has_failed());
    if let Some(hub) = existing {
        if tables.is_subset(&hub.tables) {
            let id = hub.ring.add_subscriber(&setup.pipeline);
            return Subscription { hub, id, setup: setup.clone() };
        }
        tracing::info!(
            source = %setup.cfg.source_name,
            pipeline = %setup.pipeline,
            "the pipeline reads tables the shared binlog reader does not track: restarting the source's pipelines"
        );
        hub.ring.fail(
            ConnectorError::restart(format!(
                "source {}: its set of tables changed; the shared binlog reader starts again with them",
                setup.cfg.source_name
            )),
            None,
        );
    }
    let ring = Arc::new(Ring::new(start.clone(), setup.buffer_bytes));
    let id = ring.add_subscriber(&setup.pipeline);
    let task = tokio::spawn(run_hub(setup.clone(), start.clone(), ring.clone(), id));
    let hub = Arc::new(Hub { source_name: setup.cfg.source_name.clone(), ring, tables, task });
    hubs.insert(key, Arc::downgrade(&hub));
    Subscription { hub, id, setup: setup.clone() }
}

/// The hub's reader: from `start` into the ring until it fails (or the hub is dropped).
async fn run_hub(setup: ReaderSetup, start: BinlogPosition, ring: Arc<Ring>, owner: u64) {
    let name = setup.cfg.source_name.clone();
    tracing::info!(
        source = %name, position = %start, server_id = setup.cfg.server_id,
        "shared binlog reader started"
    );
    let result = match setup.open(start, Dump::Replica, RingOut { ring: ring.clone() }).await {
        Ok(reader) => reader.run().await.map(|_| ()),
        Err(e) => Err(e),
    };
    let error = result.err().unwrap_or_else(|| ConnectorError::transient(format!("source {name}: reader stopped")));
    tracing::warn!(source = %name, error = %error, "shared binlog reader stopped");
    ring.fail(error, Some(owner));
}

/// The hub reader's output: the ring.
struct RingOut {
    ring: Arc<Ring>,
}

#[async_trait]
impl Emit for RingOut {
    async fn emit(&mut self, item: Decoded) -> bool {
        self.ring.push(item).await
    }

    fn offer(&mut self, position: &BinlogPosition) -> bool {
        self.ring.offer(Decoded::Heartbeat(position.clone()))
    }
}

/// Why a pipeline stopped reading one way.
enum Flow {
    /// The engine has gone away.
    Gone,
    /// It fell out of the ring's bound.
    Behind,
    /// Its own reader stopped: it may attach now, or read on.
    Again,
}

impl Subscription {
    /// Hands the pipeline every transaction after `start`, from the ring or on its own.
    pub(crate) async fn follow(
        self,
        start: BinlogPosition,
        out: SourceSender,
        progress: Arc<SourceProgress>,
        table_starts: HashMap<TableId, BinlogPosition>,
    ) -> Result<(), ConnectorError> {
        let all_tables = self.setup.tables.len() == self.hub.tables.len();
        let filter = (!all_tables).then(|| self.setup.tables.iter().map(|t| t.id.clone()).collect());
        let mut follower = Follower {
            out: PipelineOut {
                out,
                budget: Arc::new(Semaphore::new(TX_PARTS_IN_FLIGHT)),
                delivered: start,
                starts: Arc::new(table_starts),
            },
            sub: self,
            progress,
            filter,
            parts_sent: false,
        };
        follower.run().await
    }
}

/// A pipeline's queue and what it was handed.
#[derive(Clone)]
struct PipelineOut {
    out: SourceSender,
    budget: Arc<Semaphore>,
    /// The position of the last transaction or idle position handed on.
    delivered: BinlogPosition,
    /// Tables copied by a backfill at a position: their changes in transactions that
    /// position holds are left out (the copy has them).
    starts: Arc<HashMap<TableId, BinlogPosition>>,
}

impl PipelineOut {
    async fn part(
        &mut self,
        events: Vec<tidewater_core::ChangeEvent>,
        start: &BinlogPosition,
        commit_time: std::time::SystemTime,
    ) -> bool {
        // A transaction starting before a copy's position ends at or before it.
        let events = self.after_copies(events, |copied| start.cmp_file_pos(copied) == std::cmp::Ordering::Less);
        if events.is_empty() {
            return true;
        }
        // Waiting for budget is the backpressure that keeps memory bounded.
        let budget = self.budget.clone().acquire_owned().await.ok();
        let part = TransactionPart { events, position: start.to_string(), commit_time, budget };
        self.out.send(SourceItem::TransactionPart(part)).await.is_ok()
    }

    async fn commit(&mut self, mut tx: Transaction, end: &BinlogPosition) -> bool {
        tx.events = self.after_copies(tx.events, |copied| end.cmp_file_pos(copied) != std::cmp::Ordering::Greater);
        if self.out.send(SourceItem::Transaction(tx)).await.is_err() {
            return false;
        }
        self.delivered = end.clone();
        true
    }

    /// `events` without those of tables whose copy holds this transaction (`held`
    /// tells, given the copy's position).
    fn after_copies(
        &self,
        events: Vec<tidewater_core::ChangeEvent>,
        held: impl Fn(&BinlogPosition) -> bool,
    ) -> Vec<tidewater_core::ChangeEvent> {
        if self.starts.is_empty() {
            return events;
        }
        events.into_iter().filter(|e| !self.starts.get(&e.table.id).is_some_and(&held)).collect()
    }

    fn heartbeat(&mut self, at: &BinlogPosition) -> bool {
        if at.cmp_file_pos(&self.delivered) != std::cmp::Ordering::Greater {
            return true;
        }
        if self.out.try_send(SourceItem::Heartbeat { position: at.to_string() }).is_ok() {
            self.delivered = at.clone();
            return true;
        }
        false
    }

    /// Whether the transaction of `gtid` starting (`commit` false) or ending at `at` was
    /// handed on already: by GTID where both sides have one (MariaDB), else by position.
    fn has(&self, gtid: Option<Gtid>, at: &BinlogPosition, commit: bool) -> bool {
        if let (Some(g), Some(state)) = (gtid, self.delivered.gtid.as_ref()) {
            return state.covers(&g);
        }
        let order = at.cmp_file_pos(&self.delivered);
        if commit {
            order != std::cmp::Ordering::Greater
        } else {
            order == std::cmp::Ordering::Less
        }
    }
}

struct Follower {
    sub: Subscription,
    out: PipelineOut,
    progress: Arc<SourceProgress>,
    /// The pipeline's tables when the hub tracks more.
    filter: Option<HashSet<TableId>>,
    /// Leading parts of an open large transaction have been handed on from the ring.
    parts_sent: bool,
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Ok(mut m) = self.progress.reader_mode.lock() {
            *m = None;
        }
    }
}

impl Follower {
    fn ring(&self) -> &Ring {
        &self.sub.hub.ring
    }

    fn note(&self, mode: &'static str, what: &str) {
        if let Ok(mut m) = self.progress.reader_mode.lock() {
            *m = Some(mode);
        }
        let (attached, catching_up) = self.ring().roster();
        tracing::info!(
            source = %self.sub.setup.cfg.source_name,
            pipeline = %self.sub.setup.pipeline,
            position = %self.out.delivered,
            attached = ?attached,
            catching_up = ?catching_up,
            "{what}"
        );
    }

    async fn run(&mut self) -> Result<(), ConnectorError> {
        loop {
            if let Some(cursor) = self.ring().try_attach(self.sub.id, &self.out.delivered)? {
                self.note("attached", "pipeline attached to the shared binlog reader");
                match self.read_ring(cursor).await? {
                    Flow::Gone => return Ok(()),
                    Flow::Behind | Flow::Again => {
                        self.ring().detach(self.sub.id);
                        self.note(
                            "catching_up",
                            "pipeline fell behind the shared binlog reader's buffer: catching up on its own",
                        );
                    }
                }
            } else {
                self.note(
                    "catching_up",
                    "pipeline catching up on its own before it attaches to the shared binlog reader",
                );
            }
            if let Flow::Gone = self.catch_up().await? {
                return Ok(());
            }
        }
    }

    async fn read_ring(&mut self, mut cursor: u64) -> Result<Flow, ConnectorError> {
        loop {
            let item = match self.ring().next(self.sub.id, cursor).await? {
                Next::Item(item) => item,
                Next::Behind if self.parts_sent => {
                    return Err(ConnectorError::transient(format!(
                        "source {}: pipeline {} fell behind the shared binlog reader inside a transaction larger than \
                         its buffer (binlog_buffer_mb); streaming again from the checkpoint",
                        self.sub.setup.cfg.source_name, self.sub.setup.pipeline
                    )))
                }
                Next::Behind => return Ok(Flow::Behind),
            };
            if !self.deliver(&item).await {
                return Ok(Flow::Gone);
            }
            cursor += 1;
            self.ring().taken(self.sub.id, cursor);
        }
    }

    fn filtered(&self, events: &[tidewater_core::ChangeEvent]) -> Vec<tidewater_core::ChangeEvent> {
        match &self.filter {
            None => events.to_vec(),
            Some(tables) => events.iter().filter(|e| tables.contains(&e.table.id)).cloned().collect(),
        }
    }

    /// Hands on one ring entry unless the pipeline has it; false when the engine is gone.
    async fn deliver(&mut self, item: &Decoded) -> bool {
        match item {
            Decoded::Part { events, start, gtid, commit_time } => {
                if self.out.has(*gtid, start, false) {
                    return true;
                }
                let events = self.filtered(events);
                if events.is_empty() {
                    return true;
                }
                self.parts_sent = true;
                self.out.part(events, start, *commit_time).await
            }
            Decoded::Commit { tx, gtid, end } => {
                if self.out.has(*gtid, end, true) {
                    return true;
                }
                let events = self.filtered(&tx.events);
                let parts_sent = std::mem::take(&mut self.parts_sent);
                if events.is_empty() && !parts_sent {
                    self.out.heartbeat(end);
                    return true;
                }
                let tx = Transaction {
                    position: tx.position.clone(),
                    position_num: None,
                    commit_time: tx.commit_time,
                    events,
                };
                self.out.commit(tx, end).await
            }
            Decoded::Heartbeat(at) => {
                if !self.parts_sent {
                    self.out.heartbeat(at);
                }
                true
            }
        }
    }

    /// Reads on its own from where the pipeline is, until the ring covers that.
    async fn catch_up(&mut self) -> Result<Flow, ConnectorError> {
        let out = CatchUpOut { out: self.out.clone(), ring: self.sub.hub.ring.clone(), joinable: false, gone: false };
        let reader = self.sub.setup.open(self.out.delivered.clone(), Dump::CatchUp, out).await?;
        let out = reader.run().await?;
        self.out.delivered = out.out.delivered;
        if out.gone {
            return Ok(Flow::Gone);
        }
        if !out.joinable && !self.ring().covers(&self.out.delivered) {
            tokio::time::sleep(CATCH_UP_PAUSE).await;
        }
        Ok(Flow::Again)
    }
}

/// A catching-up reader's output: the pipeline's queue, until the ring covers it.
struct CatchUpOut {
    out: PipelineOut,
    ring: Arc<Ring>,
    /// Stopped because the ring covers what was handed on.
    joinable: bool,
    /// Stopped because the engine has gone away.
    gone: bool,
}

#[async_trait]
impl Emit for CatchUpOut {
    async fn emit(&mut self, item: Decoded) -> bool {
        let taken = match item {
            Decoded::Part { events, start, commit_time, .. } => {
                let taken = self.out.part(events, &start, commit_time).await;
                return self.gone_unless(taken);
            }
            Decoded::Commit { tx, end, .. } => self.out.commit(tx, &end).await,
            Decoded::Heartbeat(at) => {
                self.out.heartbeat(&at);
                true
            }
        };
        if !self.gone_unless(taken) {
            return false;
        }
        self.joinable = self.ring.covers(&self.out.delivered);
        !self.joinable
    }

    fn offer(&mut self, position: &BinlogPosition) -> bool {
        self.out.heartbeat(position)
    }
}

impl CatchUpOut {
    fn gone_unless(&mut self, taken: bool) -> bool {
        self.gone |= !taken;
        taken
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::binlog_pos::GtidState;

    fn out(delivered: &str) -> PipelineOut {
        let (out, _rx) = tidewater_core::queue::source_queue(1);
        PipelineOut {
            out,
            budget: Arc::new(Semaphore::new(1)),
            delivered: BinlogPosition::parse(delivered).unwrap(),
            starts: Arc::new(HashMap::new()),
        }
    }

    fn at(text: &str) -> BinlogPosition {
        BinlogPosition::parse(text).unwrap()
    }

    #[test]
    fn a_subscriber_skips_exactly_what_precedes_its_position() {
        // By file:position: a transaction ending at or before it, or starting before it.
        let o = out("binlog.000002:500");
        assert!(o.has(None, &at("binlog.000002:500"), true));
        assert!(o.has(None, &at("binlog.000001:9000"), true));
        assert!(!o.has(None, &at("binlog.000002:501"), true));
        assert!(o.has(None, &at("binlog.000002:499"), false));
        assert!(!o.has(None, &at("binlog.000002:500"), false), "the next transaction starts where it is");
        // By GTID where both have one, whatever the file positions say.
        let o = out("binlog.000002:500 gtid=0-1-10,1-2-3");
        let g = |text: &str| Some(GtidState::parse(text).unwrap().gtids()[0]);
        assert!(o.has(g("0-1-10"), &at("binlog.000009:4"), true));
        assert!(o.has(g("1-2-2"), &at("binlog.000009:4"), false));
        assert!(!o.has(g("0-1-11"), &at("binlog.000001:4"), true));
        assert!(!o.has(g("2-1-1"), &at("binlog.000001:4"), false), "a domain it has not seen");
    }
}
