//! The delivery contracts between sources, the engine and sinks.
//!
//! Order of operations is fixed: the sink commits data and checkpoint in one target
//! transaction, and only then does the engine acknowledge the position to the source.
//! Never the other way round.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::ConnectorError;
use crate::event::{Checkpoint, Transaction};
use crate::schema::{TableId, TableSchema};
use crate::value::Value;

/// What a streaming source hands the engine, in source commit order.
#[derive(Debug)]
pub enum SourceItem {
    /// A whole committed transaction touching configured tables. Transactions arrive in
    /// commit order, each at most once per stream, and only those strictly after the
    /// position the stream was started from.
    Transaction(Transaction),
    /// A leading part of a large transaction, sent before its commit is seen so that
    /// memory stays bounded. More parts may follow; the transaction ends with a
    /// [`SourceItem::Transaction`] holding its last events (possibly none) and its commit
    /// position. Nothing of it may be committed in the target before that.
    TransactionPart(TransactionPart),
    /// The source is idle at `position`: every change for configured tables up to there has
    /// been delivered. The engine records it as a checkpoint (so idle sources still let the
    /// source advance) and then acknowledges it.
    Heartbeat { position: String },
}

/// See [`SourceItem::TransactionPart`].
#[derive(Debug)]
pub struct TransactionPart {
    pub events: Vec<crate::event::ChangeEvent>,
    /// The transaction's commit position as far as it is known at its start (used for
    /// dead letters; the checkpoint comes with the final part).
    pub position: String,
    pub commit_time: std::time::SystemTime,
    /// Held while the part is queued or being applied; bounds how many parts are in
    /// memory at once.
    pub budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Source-side figures the status endpoint shows, updated by the source's own poller so
/// they stay fresh even while the engine is blocked on a slow target.
#[derive(Debug, Default)]
pub struct SourceProgress {
    /// The source's current write position (e.g. `pg_current_wal_lsn()`).
    pub head_position: std::sync::Mutex<Option<String>>,
    /// Distance in bytes between the head and the acknowledged position.
    pub lag_bytes: std::sync::atomic::AtomicU64,
    /// For a source whose pipelines share one reader (MySQL): `attached` while this
    /// pipeline reads from the shared reader, `catching_up` while it reads on its own.
    pub reader_mode: std::sync::Mutex<Option<&'static str>>,
}

/// A running stream; dropping it does not stop the stream, [`StreamHandle::stop`] does.
pub struct StreamHandle {
    pub task: tokio::task::JoinHandle<Result<(), ConnectorError>>,
}

impl StreamHandle {
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// See [`Source::position_order`].
pub type PositionOrder = fn(&str, &str) -> Option<std::cmp::Ordering>;

/// A change source.
///
/// Contract:
/// - [`Source::prepare`] resolves the configured tables and makes the server-side objects
///   the stream needs (publication); it fails `Fatal` with the fix when settings are wrong.
/// - A snapshot is taken with [`Source::begin_snapshot`] (returns the position streaming
///   continues from: no gap, no duplicate) and read with [`Source::snapshot_table`].
/// - [`Source::start_stream`] yields whole transactions in commit order, strictly after the
///   checkpoint's position. A position received on `acks` is durable in the target; the
///   source may release everything up to it (and never more).
#[async_trait]
pub trait Source: Send {
    async fn prepare(&mut self) -> Result<Vec<Arc<TableSchema>>, ConnectorError>;

    /// Makes sure the stream can start without a snapshot; returns the position it starts
    /// from (an existing slot's confirmed position, or a new slot's consistent point).
    async fn begin_without_snapshot(&mut self) -> Result<String, ConnectorError>;

    /// Starts a consistent snapshot, discarding any unfinished earlier one.
    async fn begin_snapshot(&mut self) -> Result<String, ConnectorError>;

    /// Starts a plain consistent read of the current data (no new stream position), to copy
    /// tables added to an already streaming pipeline. Called after [`Source::prepare`]
    /// has published them, so every later change to them is also in the stream.
    async fn begin_backfill(&mut self) -> Result<(), ConnectorError>;

    /// The source position of the read opened by the last [`Source::begin_backfill`], when
    /// the source can tell it exactly: the read holds every transaction committed before
    /// it and none after.
    fn backfill_position(&self) -> Option<String> {
        None
    }

    /// The stream must leave out changes to `table` made in transactions at or before
    /// its position (its rows were copied from a read at that position; a table without
    /// a key would get them twice). Called before [`Source::start_stream`].
    fn set_table_starts(&mut self, starts: std::collections::HashMap<TableId, String>) {
        let _ = starts;
    }

    /// The parts whose rows make up `table` (a Postgres partitioned table's leaf
    /// partitions); empty when the table holds its rows itself. A part attached later is
    /// copied into the table's target when it is first seen.
    async fn table_parts(&mut self, table: &TableSchema) -> Result<Vec<TableId>, ConnectorError> {
        let _ = table;
        Ok(Vec::new())
    }

    /// The source's own estimate of `table`'s rows (its planner statistics), for progress
    /// reports; `None` when it has none. Never scans the table.
    async fn estimate_rows(&mut self, table: &TableSchema) -> Option<u64> {
        let _ = table;
        None
    }

    /// Reads one table from the snapshot, in chunks of about `chunk_rows` rows.
    ///
    /// A table with a key is read in key order (each chunk's last row holds the greatest
    /// key read so far), and with `after` only its rows whose key is greater than `after`
    /// (key columns in [`TableSchema::key`] order) are read: that is how an interrupted
    /// copy continues. A table without a key is read in any order and `after` must be
    /// `None`.
    async fn snapshot_table(
        &mut self,
        table: &Arc<TableSchema>,
        chunk_rows: usize,
        after: Option<&[Value]>,
        out: &tokio::sync::mpsc::Sender<SnapshotChunk>,
    ) -> Result<(), ConnectorError>;

    /// Reopens a consistent read (like [`Source::begin_backfill`]) to continue an
    /// interrupted initial snapshot whose stream starts at `position`. Returns `false`,
    /// opening nothing, when the stream can no longer start there (slot dropped or
    /// invalidated, binlog purged): the snapshot must then start over.
    async fn resume_snapshot(&mut self, position: &str) -> Result<bool, ConnectorError> {
        let _ = position;
        Ok(false)
    }

    /// Reads one chunk of `table` (which has a key) for a resync, from a read of its own
    /// whose source position is exact: the first `chunk_rows` rows whose key is greater
    /// than `after` (from the first row without it), in key order with text key columns
    /// compared by their bytes (see [`crate::KeyRange`]). Returns the read's position
    /// (every transaction at or before it is in the rows, none after), the table's schema
    /// as of the read (the rows' columns) and the rows. Then makes sure the stream soon
    /// passes that position even on an idle source.
    async fn resync_chunk(
        &mut self,
        table: &Arc<TableSchema>,
        chunk_rows: usize,
        after: Option<&[Value]>,
    ) -> Result<(String, Arc<TableSchema>, Vec<Vec<Value>>), ConnectorError> {
        let _ = (chunk_rows, after);
        Err(ConnectorError::fatal(format!("this source cannot resync a table ({})", table.id)))
    }

    /// Asks for the rows of the next [`Source::snapshot_table`] reads in `format` (as
    /// [`SnapshotChunk::raw`]) where the source can give them so; default: never.
    fn prefer_raw(&mut self, format: Option<RawFormat>) {
        let _ = format;
    }

    /// How two positions of this source's stream compare (`None` when either is not
    /// one), as a plain function that outlives the source.
    fn position_order(&self) -> PositionOrder {
        |_, _| None
    }

    async fn start_stream(
        &mut self,
        after: &Checkpoint,
        out: crate::queue::SourceSender,
        acks: tokio::sync::watch::Receiver<Option<String>>,
        progress: Arc<SourceProgress>,
    ) -> Result<StreamHandle, ConnectorError>;

    /// Resolves the configured tables like [`Source::prepare`] but changes nothing on the
    /// server and checks no replication settings (for `verify` and `dlq replay`). A table
    /// is then read with [`Source::begin_backfill`] and [`Source::snapshot_table`].
    async fn describe(&mut self) -> Result<Vec<Arc<TableSchema>>, ConnectorError>;

    /// The current row of `table` whose key columns hold `key` (in [`TableSchema::key`]
    /// order), full-width in the schema's column order; `None` when there is none.
    async fn fetch_row(&mut self, table: &TableSchema, key: &[Value]) -> Result<Option<Vec<Value>>, ConnectorError>;
}

/// A source table (or a partition of one) whose existing rows a pipeline copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedTable {
    pub table: TableId,
    /// The source position of the consistent read the rows came from, when the source
    /// knows it: the stream's changes to the table at or before it are in the copy
    /// already (see [`Source::set_table_starts`]). `None` for the initial snapshot (the
    /// stream starts at its position anyway) and for records of older versions.
    pub position: Option<String>,
}

impl CopiedTable {
    pub fn new(table: TableId, position: Option<String>) -> Self {
        CopiedTable { table, position }
    }
}

/// A chunk of rows read from a table in the initial snapshot: decoded `rows`, or (when
/// the source was asked for its raw form, see [`Source::prefer_raw`]) `raw` with `rows`
/// empty.
#[derive(Debug)]
pub struct SnapshotChunk {
    pub table: Arc<TableSchema>,
    pub rows: Vec<Vec<Value>>,
    pub raw: Option<RawRows>,
}

impl SnapshotChunk {
    pub fn new(table: Arc<TableSchema>, rows: Vec<Vec<Value>>) -> Self {
        SnapshotChunk { table, rows, raw: None }
    }

    /// Rows in the chunk.
    pub fn len(&self) -> usize {
        self.raw.as_ref().map_or(self.rows.len(), |r| r.count)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key of the chunk's last row (tables with a key).
    pub fn last_key(&self) -> Option<Vec<Value>> {
        match &self.raw {
            Some(raw) => raw.last_key.clone(),
            None => self.rows.last().map(|row| self.table.key.iter().map(|&i| row[i].clone()).collect()),
        }
    }
}

/// The encodings rows can travel in from a source to a sink without being decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawFormat {
    /// Postgres `COPY` text format (each value its type's text output, escaped; tab
    /// between columns in the schema's order, a newline after each row).
    PgCopyText,
}

/// Rows in a [`RawFormat`], as a source read them.
#[derive(Clone)]
pub struct RawRows {
    pub format: RawFormat,
    pub data: Arc<[u8]>,
    /// Rows in `data`.
    pub count: usize,
    /// The key of the last row (tables with a key).
    pub last_key: Option<Vec<Value>>,
}

impl std::fmt::Debug for RawRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawRows({:?}, {} rows, {} bytes)", self.format, self.count, self.data.len())
    }
}

/// A source table and the target table it is written to.
#[derive(Debug, Clone)]
pub struct TablePlan {
    pub source: Arc<TableSchema>,
    pub target: TableId,
}

/// Where a coalesced row came from: the batch transaction (index into
/// [`ApplyBatch::positions`]) and operation of the last event that set it. Used to write
/// dead letters without keeping the original events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowOrigin {
    pub tx: u32,
    pub op: crate::event::Op,
}

/// The coalesced changes to one target table, applied in this order: truncate (if set),
/// clear (if set), moves, deletes, upserts. Every row is full-width in `schema`'s column order. Keys are
/// distinct within `deletes` and within `upserts`, so rows may be applied in any order
/// and any grouping.
#[derive(Debug, Clone)]
pub struct TableChanges {
    pub schema: Arc<TableSchema>,
    pub target: TableId,
    pub truncate: bool,
    /// A key range to empty before the rows are applied (a resync chunk replacing the
    /// target's rows in the range of keys it read); see [`KeyRange`].
    pub clear: Option<KeyRange>,
    /// The rows were read from the source's tables (a snapshot, backfill or resync
    /// chunk) and none of their keys is expected in the target: a sink may load them in
    /// bulk (Postgres `COPY`), falling back to upserts when a key is there after all.
    pub bulk: bool,
    /// Copied rows in a source's raw form (with `upserts` empty), for a sink that
    /// accepts it ([`Sink::accepts_raw`]); it decodes them itself when it needs values.
    pub raw: Option<RawRows>,
    /// Rows whose key columns identify rows to delete.
    pub deletes: Vec<Vec<Value>>,
    /// Rows to insert or update by key. A row may hold [`Value::Unchanged`]: such a row
    /// only updates its other columns of an existing target row.
    pub upserts: Vec<Vec<Value>>,
    /// Rows that moved to a new key while some of their (TOASTed) columns were not sent:
    /// applied first, taking those columns from the old key's target row.
    pub moves: Vec<MovedRow>,
    /// Origins of `deletes` / `upserts` / `moves`, same order; may be empty (snapshot rows).
    pub delete_origins: Vec<RowOrigin>,
    pub upsert_origins: Vec<RowOrigin>,
    pub move_origins: Vec<RowOrigin>,
}

/// Target rows to delete by key range: every row whose key is greater than `after` (all
/// when `None`) and at most `upto` (no upper bound when `None`), except the rows whose
/// key is one of `keep`. Keys are full key values in [`TableSchema::key`] order and are
/// compared column by column in the order [`crate::ColumnType::orders_alike_everywhere`] names
/// (text by its bytes, not by a collation), so that a range read from the source covers
/// the same rows in every target.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRange {
    pub after: Option<Vec<Value>>,
    pub upto: Option<Vec<Value>>,
    pub keep: Vec<Vec<Value>>,
}

/// See [`TableChanges::moves`].
#[derive(Debug, Clone, PartialEq)]
pub struct MovedRow {
    /// The row before the move (its key columns identify the old target row).
    pub from: Vec<Value>,
    /// The row after the move, with [`Value::Unchanged`] for columns not sent.
    pub row: Vec<Value>,
}

/// The kinds of rows in a [`TableChanges`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    Move,
    Delete,
    Upsert,
}

/// The order sinks apply a segment's rows in: moves read the old key's row, so they run
/// before the deletes remove it; upserts last.
pub const ROW_KINDS_IN_ORDER: [RowKind; 3] = [RowKind::Move, RowKind::Delete, RowKind::Upsert];

impl TableChanges {
    /// How many rows of `kind` the segment holds.
    pub fn kind_len(&self, kind: RowKind) -> usize {
        match kind {
            RowKind::Move => self.moves.len(),
            RowKind::Delete => self.deletes.len(),
            RowKind::Upsert => self.upserts.len(),
        }
    }

    /// Row `i` of `kind` as a dead letter records it (a move's new row), and its origin.
    pub fn row_of(&self, kind: RowKind, i: usize) -> (&[Value], Option<RowOrigin>) {
        match kind {
            RowKind::Move => (&self.moves[i].row, self.move_origins.get(i).copied()),
            RowKind::Delete => (&self.deletes[i], self.delete_origins.get(i).copied()),
            RowKind::Upsert => (&self.upserts[i], self.upsert_origins.get(i).copied()),
        }
    }

    /// Rows copied from a source table, to load in bulk (see [`TableChanges::bulk`]).
    pub fn copied(schema: Arc<TableSchema>, target: TableId, rows: Vec<Vec<Value>>) -> Self {
        TableChanges { bulk: true, ..TableChanges::upserts(schema, target, rows) }
    }

    /// Changes that only upsert `rows` (snapshot chunks).
    pub fn upserts(schema: Arc<TableSchema>, target: TableId, rows: Vec<Vec<Value>>) -> Self {
        TableChanges {
            schema,
            target,
            truncate: false,
            clear: None,
            bulk: false,
            raw: None,
            deletes: Vec::new(),
            upserts: rows,
            moves: Vec::new(),
            delete_origins: Vec::new(),
            upsert_origins: Vec::new(),
            move_origins: Vec::new(),
        }
    }

    /// The dead letter for one of this segment's rows, rejected with `error`.
    pub fn dead_letter(
        &self,
        batch: &ApplyBatch,
        row: &[Value],
        origin: Option<RowOrigin>,
        error: String,
    ) -> DeadLetter {
        let payload = serde_json::Value::Object(
            self.schema
                .columns
                .iter()
                .zip(row)
                .filter(|(_, v)| !matches!(v, Value::Unchanged))
                .map(|(c, v)| (c.name.clone(), v.to_json()))
                .collect(),
        );
        let (position, op) = match origin {
            Some(o) => (batch.positions.get(o.tx as usize).cloned().unwrap_or_default(), o.op.as_str()),
            None => ("snapshot".to_string(), "insert"),
        };
        DeadLetter {
            source_position: position,
            source_table: self.schema.id.to_string(),
            target_table: self.target.to_string(),
            op: op.to_string(),
            payload,
            error,
        }
    }
}

/// An event the target rejected, recorded in the dead-letter table.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub source_position: String,
    pub source_table: String,
    pub target_table: String,
    pub op: String,
    pub payload: serde_json::Value,
    pub error: String,
}

/// One target transaction: the changes of one or more whole source transactions and the
/// checkpoint that covers them. Dead letters are found by the sink while applying (see
/// [`Isolator`]).
#[derive(Debug, Clone)]
pub struct ApplyBatch {
    pub pipeline: String,
    /// Segments in application order. One table may appear more than once (e.g. around a
    /// truncate or a schema change); segments of one table are applied in order.
    pub tables: Vec<TableChanges>,
    /// Commit positions of the batch's source transactions, indexed by [`RowOrigin::tx`].
    pub positions: Vec<String>,
    pub checkpoint: Checkpoint,
}

impl ApplyBatch {
    /// A batch that only moves the checkpoint.
    pub fn checkpoint_only(pipeline: &str, checkpoint: Checkpoint) -> Self {
        ApplyBatch { pipeline: pipeline.to_string(), tables: Vec::new(), positions: Vec::new(), checkpoint }
    }
}

/// A row of a target's dead-letter table, for `tidewater dlq list`.
#[derive(Debug, Clone)]
pub struct DeadLetterRecord {
    pub id: i64,
    pub source_position: String,
    pub source_table: String,
    pub target_table: String,
    pub op: String,
    /// The event as JSON text.
    pub payload: String,
    pub error: String,
    /// UTC, ISO 8601.
    pub failed_at: String,
    pub replayed_at: Option<String>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyReport {
    pub rows_written: u64,
    /// Rows rejected by the target and recorded as dead letters.
    pub dead_letters: u64,
}

/// A target database.
///
/// Contract:
/// - [`Sink::apply`] is atomic: data, dead letters and checkpoint commit together or not at
///   all. It is idempotent: applying the same batch twice leaves the same target state
///   (upserts by key, deletes by key), which is what makes restarts after a crash safe.
/// - Errors carry an [`crate::ErrorClass`]: `Transient` means nothing was committed and
///   the same call may be retried (the sink reconnects by itself); `Event` means a row was
///   rejected and nothing was committed; `Fatal` needs a human.
#[async_trait]
pub trait Sink: Send {
    /// Connects if needed and creates the bookkeeping tables (migrations).
    async fn prepare(&mut self) -> Result<(), ConnectorError>;

    /// The last committed checkpoint of `pipeline`, if any.
    async fn load_checkpoint(&mut self, pipeline: &str) -> Result<Option<Checkpoint>, ConnectorError>;

    /// Creates missing target tables and adds missing columns; fails (fatal) when an
    /// existing target table cannot absorb the source schema.
    async fn ensure_tables(&mut self, plans: &[TablePlan]) -> Result<(), ConnectorError>;

    /// Empties the given target tables (a restarted snapshot begins from nothing) and
    /// stores `checkpoint`, in one transaction.
    async fn reset_for_snapshot(
        &mut self,
        pipeline: &str,
        tables: &[TableId],
        checkpoint: &Checkpoint,
    ) -> Result<(), ConnectorError>;

    /// The dead letters of `pipeline`, oldest first.
    async fn list_dead_letters(&mut self, pipeline: &str) -> Result<Vec<DeadLetterRecord>, ConnectorError>;

    /// Source tables (and partitions) whose rows `pipeline` has copied (snapshot or
    /// backfill), with the positions they were copied at.
    async fn snapshotted_tables(&mut self, pipeline: &str) -> Result<Vec<CopiedTable>, ConnectorError>;

    /// Records `tables` as copied (a table copied again gets its new position) and stores
    /// `checkpoint`, in one transaction.
    async fn complete_snapshot(
        &mut self,
        pipeline: &str,
        tables: &[CopiedTable],
        checkpoint: &Checkpoint,
    ) -> Result<(), ConnectorError>;

    /// Whether [`Sink::apply`] takes copied rows in `format` ([`TableChanges::raw`]).
    fn accepts_raw(&self, format: RawFormat) -> bool {
        let _ = format;
        false
    }

    /// Applies one batch atomically; see the trait contract.
    async fn apply(&mut self, batch: &ApplyBatch) -> Result<ApplyReport, ConnectorError>;

    /// Opens a target transaction for a large source transaction that arrives in parts.
    async fn begin_large(&mut self) -> Result<(), ConnectorError>;

    /// Applies one part inside the open transaction. With `isolate`, rows the target
    /// rejects become dead letters (written in the same transaction); without it an
    /// `Event` error is returned. Any error leaves the transaction unusable: call
    /// [`Sink::abort_large`].
    async fn apply_part(&mut self, part: &ApplyBatch, isolate: bool) -> Result<ApplyReport, ConnectorError>;

    /// Applies the last part with `isolate` as above, writes the checkpoint, commits.
    async fn commit_large(&mut self, last: &ApplyBatch, isolate: bool) -> Result<ApplyReport, ConnectorError>;

    /// Rolls back the open transaction, if any.
    async fn abort_large(&mut self);

    /// Like [`Sink::apply`], for a batch that failed with an `Event` error: applies every
    /// row it can and records each row the target rejects (for a reason tied to that
    /// row) as a dead letter, all in one target transaction with the checkpoint.
    async fn apply_isolating(&mut self, batch: &ApplyBatch) -> Result<ApplyReport, ConnectorError>;

    /// Applies `changes` in one target transaction of its own without touching any
    /// checkpoint (used by `dlq replay` and to fill `verify`'s scratch tables). With
    /// `replayed`, that dead letter is marked `replayed_at` in the same transaction. On
    /// error nothing is committed; an `Event` error means the target rejected a row.
    async fn apply_changes(&mut self, changes: &TableChanges, replayed: Option<i64>) -> Result<u64, ConnectorError>;

    /// Records on dead letter `id` why its replay failed; the dead letter stays pending.
    async fn note_replay_failure(&mut self, id: i64, error: &str) -> Result<(), ConnectorError>;

    /// Creates an empty scratch table with `target`'s columns and `schema`'s key (none of
    /// its other constraints), replacing a leftover one, and returns its id. `verify`
    /// fills it with the source's rows through [`Sink::apply_changes`] (so they are
    /// stored exactly as replication would store them) and compares it with
    /// [`Sink::compare_scratch`].
    async fn create_scratch(&mut self, schema: &TableSchema, target: &TableId) -> Result<TableId, ConnectorError>;

    /// Compares `schema`'s columns of `scratch` (the source's rows) with `target`, row by
    /// key; reports counts and up to `examples` keys of each kind of difference.
    async fn compare_scratch(
        &mut self,
        schema: &TableSchema,
        target: &TableId,
        scratch: &TableId,
        examples: usize,
    ) -> Result<Comparison, ConnectorError>;

    /// Drops a scratch table made by [`Sink::create_scratch`] (no error when it is gone).
    async fn drop_scratch(&mut self, scratch: &TableId) -> Result<(), ConnectorError>;
}

/// The bisection that finds the rows a target rejects, shared by the sinks. The sink
/// drives it on its open transaction:
///
/// ```text
/// let mut iso = Isolator::new(&changes);
/// while let Some((kind, range)) = iso.next_range() {
///     SAVEPOINT; apply the rows `range` of `kind`;
///     Ok(n)          => RELEASE, iso.applied(n)
///     Err(Event e)   => ROLLBACK TO the savepoint, iso.rejected(&changes, batch, e, dead_letters)
///     Err(other)     => return it
/// }
/// iso.written()
/// ```
///
/// A failing group is split in half until the failing rows stand alone, each becoming a
/// dead letter. Keys are distinct, so applying subsets in any order ends in the same state.
#[derive(Debug)]
pub struct Isolator {
    /// Kinds not started yet, in application order (reversed: popped from the end).
    kinds: Vec<RowKind>,
    kind: Option<RowKind>,
    pending: Vec<std::ops::Range<usize>>,
    last: Option<std::ops::Range<usize>>,
    written: u64,
}

impl Isolator {
    pub fn new(changes: &TableChanges) -> Self {
        let mut kinds: Vec<RowKind> = ROW_KINDS_IN_ORDER.into_iter().filter(|&k| changes.kind_len(k) > 0).collect();
        kinds.reverse();
        let mut iso = Isolator { kinds, kind: None, pending: Vec::new(), last: None, written: 0 };
        iso.start_next_kind(changes);
        iso
    }

    fn start_next_kind(&mut self, changes: &TableChanges) {
        self.kind = self.kinds.pop();
        if let Some(kind) = self.kind {
            self.pending.push(0..changes.kind_len(kind));
        }
    }

    /// The next group of rows to try, or `None` when every row is applied or set aside.
    pub fn next_range(&mut self, changes: &TableChanges) -> Option<(RowKind, std::ops::Range<usize>)> {
        loop {
            let kind = self.kind?;
            match self.pending.pop() {
                Some(range) if range.is_empty() => continue,
                Some(range) => {
                    self.last = Some(range.clone());
                    return Some((kind, range));
                }
                None => self.start_next_kind(changes),
            }
        }
    }

    /// The last group was applied, writing `rows`.
    pub fn applied(&mut self, rows: u64) {
        self.written += rows;
        self.last = None;
    }

    /// The target rejected the last group with `error` (an `Event` error): split it, or
    /// record its single row as a dead letter.
    pub fn rejected(
        &mut self,
        changes: &TableChanges,
        batch: &ApplyBatch,
        error: &ConnectorError,
        dead_letters: &mut Vec<DeadLetter>,
    ) {
        let (Some(range), Some(kind)) = (self.last.take(), self.kind) else { return };
        if range.len() == 1 {
            let (row, origin) = changes.row_of(kind, range.start);
            dead_letters.push(changes.dead_letter(batch, row, origin, error.to_string()));
        } else {
            let mid = range.start + range.len() / 2;
            self.pending.push(mid..range.end);
            self.pending.push(range.start..mid);
        }
    }

    /// Rows written by the applied groups.
    pub fn written(&self) -> u64 {
        self.written
    }
}

/// How a target table differs from the source rows loaded into a scratch table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Rows of the target table.
    pub target_rows: u64,
    /// Source rows whose key the target lacks.
    pub missing: u64,
    /// Target rows whose key the source lacks.
    pub extra: u64,
    /// Rows present on both sides with different values.
    pub differing: u64,
    /// Up to the requested number of keys per kind: (kind, key columns as text).
    pub examples: Vec<(Difference, Vec<String>)>,
}

impl Comparison {
    pub fn matches(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.differing == 0
    }
}

/// A kind of row difference found by `verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Difference {
    Missing,
    Extra,
    Differing,
}

impl Difference {
    pub fn as_str(self) -> &'static str {
        match self {
            Difference::Missing => "missing in the target",
            Difference::Extra => "only in the target",
            Difference::Differing => "values differ",
        }
    }

    /// Parses the tag the sinks' comparison queries return.
    pub fn from_tag(tag: &str) -> Option<Self> {
        match tag {
            "m" => Some(Difference::Missing),
            "e" => Some(Difference::Extra),
            "d" => Some(Difference::Differing),
            _ => None,
        }
    }
}

/// The name of `verify`'s scratch table for `target`: `tidewater_verify_` and a hash of
/// the target's name, so it fits every engine's identifier length and never collides with
/// a table tidewater replicates.
pub fn scratch_name(target: &TableId) -> String {
    // FNV-1a: stable across builds and platforms (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in target.schema.bytes().chain([0]).chain(target.name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("tidewater_verify_{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Column, ColumnType, Engine};

    #[test]
    fn isolator_sets_aside_exactly_the_rejected_rows() {
        let schema = Arc::new(TableSchema {
            id: TableId::new("public", "t"),
            engine: Engine::Postgres,
            columns: vec![Column {
                name: "id".into(),
                kind: ColumnType::Int64,
                native_type: "bigint".into(),
                nullable: false,
                existing_rows_value: None,
            }],
            key: vec![0],
            enum_labels: Vec::new(),
        });
        let rows: Vec<Vec<Value>> = (0..37).map(|i| vec![Value::Int(i)]).collect();
        let mut changes = TableChanges::upserts(schema, TableId::new("public", "t"), rows);
        changes.deletes = vec![vec![Value::Int(100)], vec![Value::Int(101)]];
        let batch = ApplyBatch::checkpoint_only(
            "p",
            Checkpoint { position: "0/1".into(), snapshot_complete: true, copy_progress: None },
        );
        let poison = |kind: RowKind, i: usize| {
            (kind == RowKind::Upsert && [3, 4, 30].contains(&i)) || (kind == RowKind::Delete && i == 1)
        };
        let mut iso = Isolator::new(&changes);
        let mut dead = Vec::new();
        let mut tries = 0;
        while let Some((kind, range)) = iso.next_range(&changes) {
            tries += 1;
            if range.clone().any(|i| poison(kind, i)) {
                iso.rejected(&changes, &batch, &ConnectorError::event("no"), &mut dead);
            } else {
                iso.applied(range.len() as u64);
            }
        }
        assert_eq!(iso.written(), 37 - 3 + 1);
        let ids: Vec<serde_json::Value> = dead.iter().map(|d| d.payload["id"].clone()).collect();
        assert_eq!(ids, [101, 3, 4, 30].map(serde_json::Value::from));
        assert!(tries < 40, "bisection, not row by row: {tries} tries");
    }
}
