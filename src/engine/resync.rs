//! Resyncing one table while the pipeline streams (`tidewater resync`,
//! `POST /pipelines/NAME/resync`).
//!
//! # How a chunk is reconciled with the stream
//! A reader task with a source connection of its own reads the table in key order, one
//! chunk per read, each read with an exact source position `L` (Postgres: a temporary
//! slot's exported snapshot; MariaDB: a consistent snapshot's binlog position): the chunk
//! holds every transaction committed at or before `L` and none after. The stream goes on
//! applying every table meanwhile. A chunk is applied between two stream batches, once
//! the stream has applied everything up to `L` (its applied position has reached `L`),
//! as one target transaction with the checkpoint:
//! - the target rows in the chunk's key range (after the previous chunk's last key, up
//!   to its own last key; the last chunk has no upper bound) are deleted, so rows that
//!   the source no longer has (or that were added by hand) go,
//! - except the rows whose key the stream wrote after `L`: their target state is newer
//!   than the chunk's, so they are kept and the chunk's rows of those keys are left out;
//! - the chunk's other rows are written.
//!
//! Every row in the range then equals the source as of the stream's position, which is
//! the low/high-watermark reconciliation of DBLog (Netflix) with the read's exact
//! position as both watermarks. Text key columns are read and compared by their bytes so
//! that a range names the same rows in the source and in any target.
//!
//! # Progress
//! The checkpoint's `copy_progress` lists the tables being resynced (in request order,
//! one copied at a time) with the last key applied; every chunk's transaction updates
//! it, and every stream batch carries it on. After a crash or restart the resync
//! continues after the recorded key.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tidewater_core::{
    ApplyBatch, Checkpoint, ConnectorError, KeyRange, PositionOrder, Sink, TableChanges, TablePlan, TableSchema, Value,
};
use tokio::sync::{mpsc, watch};

use super::apply_with_retry;
use crate::config::{PipelineConfig, DEFAULT_SNAPSHOT_CHUNK_ROWS};
use crate::status::{PipelineStatus, TableState};

/// Chunks read ahead of the one waiting to be applied.
const READ_AHEAD: usize = 2;
/// More kept keys than this in one chunk: the chunk only writes its rows (no range
/// clear) rather than send a statement that large. Only a table written this fast
/// while it is resynced gets there.
const MAX_KEPT: usize = 5_000;
/// Times in a row a chunk is read again because its columns differ from the stream's.
const MAX_REREADS: u32 = 3;

/// A table being resynced, as recorded in the checkpoint's `copy_progress`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct ResyncEntry {
    /// The source table, as `/status` names it.
    pub table: String,
    /// Rows written so far.
    #[serde(default)]
    pub rows: u64,
    /// The greatest key applied so far (JSON values in key order); `None` before the
    /// first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Vec<serde_json::Value>>,
}

/// A chunk from the reader task.
struct ReadChunk {
    /// The read's exact source position.
    position: String,
    schema: Arc<TableSchema>,
    /// The key range: after `after` (from the first key when `None`), up to `last` (no
    /// upper bound when `None`: the table's last chunk).
    after: Option<Vec<Value>>,
    last: Option<Vec<Value>>,
    rows: Vec<Vec<Value>>,
}

/// The resync being copied now.
struct Active {
    plan: TablePlan,
    started: Instant,
    rows_this_run: u64,
    chunks: mpsc::Receiver<Result<ReadChunk, ConnectorError>>,
    reader: tokio::task::JoinHandle<()>,
    reader_done: bool,
    pending: VecDeque<ReadChunk>,
    /// Keys of the table the stream wrote since the resync began (encoded), with their
    /// values and the position of the batch that wrote them (at or after the change).
    touched: HashMap<Vec<u8>, (String, Vec<Value>)>,
    /// Position of the last truncate of the table the stream applied.
    truncated_at: Option<String>,
    /// Keys written by the parts of a large transaction, until its commit position is
    /// known.
    open: Vec<(Vec<u8>, Vec<Value>)>,
    /// The table's schema in the last stream batch that wrote it.
    stream_schema: Option<Arc<TableSchema>>,
    /// Chunks read again in a row because their columns differed from the stream's.
    reread: u32,
    /// The reader's error.
    failed: Option<ConnectorError>,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The pipeline's resyncs: the queue recorded in the checkpoint and the one running.
pub(super) struct Resyncs {
    queue: Vec<ResyncEntry>,
    /// The pipeline's tables.
    plans: Vec<TablePlan>,
    active: Option<Active>,
}

fn encode(key: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in key {
        v.encode_key(&mut out);
    }
    out
}

fn key_of(schema: &TableSchema, row: &[Value]) -> Vec<Value> {
    schema.key.iter().map(|&i| row.get(i).cloned().unwrap_or(Value::Null)).collect()
}

impl Resyncs {
    /// The resyncs recorded in `checkpoint` (continued where they got to).
    pub fn new(checkpoint: &Checkpoint, plans: &[TablePlan]) -> Self {
        let queue = checkpoint
            .copy_progress
            .as_deref()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
            .and_then(|v| v.get("resync").cloned())
            .and_then(|v| serde_json::from_value::<Vec<ResyncEntry>>(v).ok())
            .unwrap_or_default();
        Resyncs { queue, plans: plans.to_vec(), active: None }
    }

    /// The checkpoint's `copy_progress` while resyncs are queued, `None` otherwise.
    pub fn progress_text(&self) -> Option<String> {
        (!self.queue.is_empty()).then(|| serde_json::json!({ "resync": self.queue }).to_string())
    }

    fn plan(&self, table: &str) -> Option<&TablePlan> {
        self.plans.iter().find(|p| p.source.id.to_string() == table)
    }

    /// Queues the tables asked for since the last call; returns whether any was added
    /// (the queue must then be recorded).
    pub fn take_requests(&mut self, cfg: &PipelineConfig, status: &PipelineStatus) -> bool {
        let mut added = false;
        for table in status.take_resync_requests() {
            let Some(plan) = self.plan(&table) else {
                tracing::warn!(pipeline = %cfg.name, table = %table, "resync asked for a table this pipeline does not have");
                continue;
            };
            if plan.source.is_keyless() {
                tracing::warn!(pipeline = %cfg.name, table = %table, "a table without a key cannot be resynced");
                continue;
            }
            if self.queue.iter().any(|e| e.table == table) {
                tracing::info!(pipeline = %cfg.name, table = %table, "resync already under way");
                continue;
            }
            tracing::info!(pipeline = %cfg.name, table = %table, "resync requested");
            self.queue.push(ResyncEntry { table, rows: 0, after: None });
            added = true;
        }
        added
    }

    /// Starts the reader of the first queued table when none runs.
    pub fn start_next(&mut self, cfg: &PipelineConfig, status: &Arc<PipelineStatus>) -> Result<(), ConnectorError> {
        if self.active.is_some() {
            return Ok(());
        }
        loop {
            let Some(entry) = self.queue.first().cloned() else { return Ok(()) };
            let Some(plan) = self.plan(&entry.table).cloned() else {
                tracing::warn!(pipeline = %cfg.name, table = %entry.table, "a resync was recorded for a table the pipeline no longer has; dropped");
                self.queue.remove(0);
                continue;
            };
            let after = match &entry.after {
                None => None,
                Some(json) => Some(decode_key(&plan.source, json)?),
            };
            if let Some(t) = status.figures().table_mut(&entry.table) {
                t.state = TableState::Resyncing;
                t.rows_copied = entry.rows;
            }
            tracing::info!(
                pipeline = %cfg.name,
                table = %entry.table,
                rows_copied = entry.rows,
                continuing = entry.after.is_some(),
                "resync started"
            );
            let (tx, chunks) = mpsc::channel(READ_AHEAD);
            let reader = tokio::spawn(read_chunks(cfg.clone(), status.clone(), plan.source.clone(), after, tx));
            self.active = Some(Active {
                plan,
                started: Instant::now(),
                rows_this_run: 0,
                chunks,
                reader,
                reader_done: false,
                pending: VecDeque::new(),
                touched: HashMap::new(),
                truncated_at: None,
                open: Vec::new(),
                stream_schema: None,
                reread: 0,
                failed: None,
            });
            return Ok(());
        }
    }

    /// Waits for the next chunk of the running resync (forever when none runs or its
    /// reader is done) and queues it.
    pub async fn receive(&mut self) -> Result<(), ConnectorError> {
        let Some(active) = self.active.as_mut().filter(|a| !a.reader_done) else {
            return std::future::pending().await;
        };
        match active.chunks.recv().await {
            Some(Ok(chunk)) => active.pending.push_back(chunk),
            Some(Err(e)) => {
                active.failed = Some(e);
                active.reader_done = true;
            }
            None => active.reader_done = true,
        }
        Ok(())
    }

    /// Queues the chunks that have arrived, without waiting.
    fn poll(&mut self) -> Result<(), ConnectorError> {
        let Some(active) = self.active.as_mut() else { return Ok(()) };
        while !active.reader_done {
            match active.chunks.try_recv() {
                Ok(Ok(chunk)) => active.pending.push_back(chunk),
                Ok(Err(e)) => {
                    active.failed = Some(e);
                    active.reader_done = true;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => active.reader_done = true,
            }
        }
        Ok(())
    }

    /// Records what an applied stream batch wrote to the table being resynced. With
    /// `open`, the batch is a part of a large transaction whose commit position comes
    /// with [`Resyncs::note_commit`].
    pub fn note_batch(&mut self, batch: &ApplyBatch, open: bool) {
        let Some(active) = self.active.as_mut() else { return };
        let id = &active.plan.source.id;
        let mut keys = Vec::new();
        for changes in batch.tables.iter().filter(|c| &c.schema.id == id) {
            if changes.truncate {
                active.truncated_at = Some(batch.checkpoint.position.clone());
                active.touched.clear();
                keys.clear();
            }
            let schema = &changes.schema;
            active.stream_schema = Some(schema.clone());
            let rows = changes.deletes.iter().chain(&changes.upserts);
            let moved = changes.moves.iter().flat_map(|m| [&m.from, &m.row]);
            for row in rows.chain(moved) {
                let key = key_of(schema, row);
                keys.push((encode(&key), key));
            }
        }
        if open {
            active.open.extend(keys);
        } else {
            for (encoded, key) in keys {
                active.touched.insert(encoded, (batch.checkpoint.position.clone(), key));
            }
        }
    }

    /// A large transaction committed at `position`: its keys count from there.
    pub fn note_commit(&mut self, position: &str) {
        let Some(active) = self.active.as_mut() else { return };
        for (encoded, key) in active.open.drain(..) {
            active.touched.insert(encoded, (position.to_string(), key));
        }
    }

    /// A large transaction was rolled back in the target.
    pub fn note_abort(&mut self) {
        if let Some(active) = self.active.as_mut() {
            active.open.clear();
        }
    }

    /// Applies every chunk whose read position the stream has reached (`applied` is the
    /// stream's last applied checkpoint); starts the next queued resync when one ends.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_ready(
        &mut self,
        cfg: &PipelineConfig,
        status: &Arc<PipelineStatus>,
        shutdown: &mut watch::Receiver<bool>,
        order: PositionOrder,
        sink: &mut dyn Sink,
        applied: &str,
    ) -> Result<(), ConnectorError> {
        self.poll()?;
        if let Some(e) = self.active.as_mut().and_then(|a| a.failed.take()) {
            if e.class != tidewater_core::ErrorClass::Fatal {
                return Err(e); // the run restarts and the resync continues
            }
            // A resync that cannot be done ends; the pipeline streams on.
            let Some(active) = self.active.take() else { return Ok(()) };
            let name = active.plan.source.id.to_string();
            let message = format!("resync of {name} abandoned: {e}");
            tracing::error!(pipeline = %cfg.name, table = %name, error = %e, "resync abandoned");
            self.queue.retain(|entry| entry.table != name);
            {
                let mut f = status.figures();
                if let Some(t) = f.table_mut(&name) {
                    t.state = TableState::Streaming;
                    t.last_error = Some(message);
                }
            }
            self.start_next(cfg, status)?;
        }
        loop {
            let Some(active) = self.active.as_mut() else { return Ok(()) };
            let ready = match active.pending.front() {
                Some(chunk) => {
                    let order = order(applied, &chunk.position).ok_or_else(|| {
                        ConnectorError::fatal(format!(
                            "resync of {}: cannot compare source positions {applied} and {}",
                            active.plan.source.id, chunk.position
                        ))
                    })?;
                    order != std::cmp::Ordering::Less
                }
                None => false,
            };
            if !ready {
                if active.reader_done && active.pending.is_empty() {
                    // The reader ended without a last chunk: it failed or was stopped.
                    return Err(ConnectorError::transient(format!(
                        "the resync reader of {} stopped",
                        active.plan.source.id
                    )));
                }
                return Ok(());
            }
            let Some(chunk) = active.pending.pop_front() else { return Ok(()) };
            // The table's columns changed between the read and now: a chunk with other
            // columns than the stream's would make the target follow the change back.
            // Read it again; a read that keeps showing columns the stream has not shown
            // yet (no change of the table has come since) is newer and is applied.
            let current = active.stream_schema.as_ref().unwrap_or(&active.plan.source);
            if chunk.schema.columns != current.columns && active.reread < MAX_REREADS {
                active.reread += 1;
                tracing::info!(
                    pipeline = %cfg.name,
                    table = %active.plan.source.id,
                    "the table's columns changed during its resync: reading the chunk again"
                );
                active.reader.abort();
                active.pending.clear();
                let (tx, chunks) = mpsc::channel(READ_AHEAD);
                active.chunks = chunks;
                active.reader_done = false;
                active.reader = tokio::spawn(read_chunks(
                    cfg.clone(),
                    status.clone(),
                    active.plan.source.clone(),
                    chunk.after.clone(),
                    tx,
                ));
                return Ok(());
            }
            active.reread = 0;
            self.apply_chunk(cfg, status, shutdown, order, sink, applied, chunk).await?;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_chunk(
        &mut self,
        cfg: &PipelineConfig,
        status: &Arc<PipelineStatus>,
        shutdown: &mut watch::Receiver<bool>,
        order: PositionOrder,
        sink: &mut dyn Sink,
        applied: &str,
        chunk: ReadChunk,
    ) -> Result<(), ConnectorError> {
        let Some(active) = self.active.as_mut() else { return Ok(()) };
        let newer = |position: &str| order(position, &chunk.position).is_some_and(|o| o == std::cmp::Ordering::Greater);
        let kept: HashMap<&Vec<u8>, &Vec<Value>> =
            active.touched.iter().filter(|(_, (p, _))| newer(p)).map(|(k, (_, key))| (k, key)).collect();
        let truncated = active.truncated_at.as_deref().is_some_and(newer);
        let schema = chunk.schema.clone();
        let rows: Vec<Vec<Value>> = if truncated {
            Vec::new() // emptied by a truncate after the read
        } else {
            chunk.rows.into_iter().filter(|row| !kept.contains_key(&encode(&key_of(&schema, row)))).collect()
        };
        let written = rows.len() as u64;
        let mut changes = TableChanges::copied(schema.clone(), active.plan.target.clone(), rows);
        if kept.len() <= MAX_KEPT {
            changes.clear = Some(KeyRange {
                after: chunk.after.clone(),
                upto: chunk.last.clone(),
                keep: kept.values().map(|k| (*k).clone()).collect(),
            });
        } else {
            tracing::warn!(
                pipeline = %cfg.name,
                table = %schema.id,
                kept = kept.len(),
                "too many rows of this chunk were written meanwhile: its rows are written, rows the source no longer has stay"
            );
        }
        drop(kept);
        let name = active.plan.source.id.to_string();
        let finished = chunk.last.is_none();
        let entry = self.queue.iter_mut().find(|e| e.table == name);
        if let Some(entry) = entry {
            entry.rows += written;
            entry.after = chunk.last.as_ref().map(|k| k.iter().map(Value::to_json).collect());
        }
        if finished {
            self.queue.retain(|e| e.table != name);
        }
        let checkpoint =
            Checkpoint { position: applied.to_string(), snapshot_complete: true, copy_progress: self.progress_text() };
        let mut batch = ApplyBatch::checkpoint_only(&cfg.name, checkpoint);
        batch.tables.push(changes);
        let Some((report, _)) = apply_with_retry(cfg, status, shutdown, sink, &batch).await? else {
            return Err(ConnectorError::transient("shutting down during a resync"));
        };
        status.touch();
        let Some(active) = self.active.as_mut() else { return Ok(()) };
        // Later chunks are read at or after this one's position.
        active.touched.retain(|_, (p, _)| newer(p));
        active.rows_this_run += written;
        {
            let mut f = status.figures();
            f.events_applied_total += written.saturating_sub(report.dead_letters);
            f.dead_letters_total += report.dead_letters;
            if let Some(t) = f.table_mut(&name) {
                t.rows_copied += written;
            }
        }
        if finished {
            let seconds = active.started.elapsed().as_secs_f64();
            let rows = active.rows_this_run;
            let rate = if seconds > 0.0 { (rows as f64 / seconds).round() } else { 0.0 };
            let total = {
                let mut f = status.figures();
                let t = f.table_mut(&name);
                t.map(|t| {
                    t.state = TableState::Streaming;
                    t.rows_estimate.get_or_insert(t.rows_copied);
                    t.rows_copied
                })
            };
            tracing::info!(
                pipeline = %cfg.name,
                table = %name,
                rows,
                rows_total = total.unwrap_or(rows),
                seconds = format_args!("{seconds:.1}"),
                rows_per_second = rate,
                "table resynced"
            );
            self.active = None;
            self.start_next(cfg, status)?;
        }
        Ok(())
    }
}

fn decode_key(schema: &TableSchema, json: &[serde_json::Value]) -> Result<Vec<Value>, ConnectorError> {
    super::copy::key_from_json(schema, json).map_err(|e| {
        ConnectorError::fatal(format!(
            "the recorded resync progress of {}: {e}; delete its \"resync\" entry from \
             tidewater_checkpoints.copy_progress and resync again",
            schema.id
        ))
    })
}

/// The reader task: reads `table` chunk by chunk after `after` from a source
/// connection of its own and sends each chunk with its read position, until the last.
async fn read_chunks(
    cfg: PipelineConfig,
    status: Arc<PipelineStatus>,
    table: Arc<TableSchema>,
    mut after: Option<Vec<Value>>,
    out: mpsc::Sender<Result<ReadChunk, ConnectorError>>,
) {
    let result = async {
        let mut source = crate::connectors::source(&cfg)?;
        let schemas = source.describe().await?;
        let schema = schemas.into_iter().find(|s| s.id == table.id).ok_or_else(|| {
            ConnectorError::fatal(format!("resync of {}: the table is no longer in the source", table.id))
        })?;
        if schema.key != table.key {
            return Err(ConnectorError::fatal(format!(
                "resync of {}: its key changed since the pipeline started; restart the daemon and resync again",
                table.id
            )));
        }
        if let Some(estimate) = source.estimate_rows(&schema).await {
            if let Some(t) = status.figures().table_mut(&table.id.to_string()) {
                t.rows_estimate = Some(estimate);
            }
        }
        let chunk_rows = DEFAULT_SNAPSHOT_CHUNK_ROWS;
        loop {
            let (position, read_schema, rows) = source.resync_chunk(&schema, chunk_rows, after.as_deref()).await?;
            let last = if rows.len() < chunk_rows { None } else { rows.last().map(|r| key_of(&read_schema, r)) };
            let done = last.is_none();
            let chunk = ReadChunk { position, schema: read_schema, after: after.clone(), last: last.clone(), rows };
            if out.send(Ok(chunk)).await.is_err() {
                return Ok(());
            }
            if done {
                return Ok(());
            }
            after = last;
            if cfg.resync_pause_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(cfg.resync_pause_ms)).await;
            }
        }
    }
    .await;
    if let Err(e) = result {
        let _ = out.send(Err(e)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_round_trips_through_the_checkpoint() {
        let mut r = Resyncs { queue: Vec::new(), plans: Vec::new(), active: None };
        assert_eq!(r.progress_text(), None);
        r.queue.push(ResyncEntry { table: "public.t".into(), rows: 10, after: Some(vec![serde_json::json!(7)]) });
        let cp = Checkpoint { position: "0/1".into(), snapshot_complete: true, copy_progress: r.progress_text() };
        let back = Resyncs::new(&cp, &[]);
        assert_eq!(back.queue, r.queue);
        let none = Checkpoint { position: "0/1".into(), snapshot_complete: true, copy_progress: Some("{}".into()) };
        assert!(Resyncs::new(&none, &[]).queue.is_empty());
    }
}
