//! Copying existing rows: the initial snapshot (resumable chunk by chunk) and the backfill
//! of tables added later.
//!
//! # Resuming an interrupted snapshot
//! Every chunk of the initial snapshot is written in one target transaction together
//! with the checkpoint, whose `copy_progress` records, per table, the greatest key copied
//! so far (tables with a key are read in key order) and whether the table is done. After
//! a crash, a restart or an error, [`snapshot`] asks the source for a new consistent read
//! while the stream can still start at the snapshot's position ([`Source::resume_snapshot`])
//! and continues each table after its recorded key. Rows of the later chunks then come
//! from a read newer than the stream's start; the stream, which starts at the original
//! snapshot position, replays every change made in between as upserts and deletes by
//! key, so each such row converges to the source. A table without a key cannot be
//! continued (no order to continue in, and replayed inserts would double its rows): an
//! unfinished one is emptied and copied again in full from the new read, whose position
//! is recorded so that the stream leaves out the changes the copy already holds. When
//! the source cannot tell that position, or the stream can no longer start at the
//! snapshot's position, the snapshot starts over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tidewater_core::{
    ApplyBatch, ApplyReport, Checkpoint, ConnectorError, CopiedTable, RawFormat, Sink, Source, TableChanges, TableId,
    TablePlan, TableSchema, Value,
};
use tokio::sync::{mpsc, watch};

use super::{apply_with_retry, SNAPSHOT_CHANNEL_CAPACITY};
use crate::config::{PipelineConfig, SnapshotMode, DEFAULT_SNAPSHOT_CHUNK_ROWS};
use crate::status::{PipelineState, PipelineStatus, TableState};

/// How far an unfinished initial snapshot got, stored as JSON in the checkpoint's
/// `copy_progress`. Keyed by source table name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct CopyProgress {
    #[serde(default)]
    pub tables: BTreeMap<String, TableProgress>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct TableProgress {
    /// Every row of the table is in the target.
    #[serde(default)]
    pub done: bool,
    /// Rows copied so far (dead letters included).
    #[serde(default)]
    pub rows: u64,
    /// The greatest key copied so far, as JSON values in key order (tables with a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Vec<serde_json::Value>>,
}

impl CopyProgress {
    fn parse(text: &str) -> Option<CopyProgress> {
        serde_json::from_str(text).ok()
    }

    fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// The key to continue `plan`'s table after, decoded with its key columns' types.
    fn resume_key(&self, plan: &TablePlan) -> Result<Option<Vec<Value>>, ConnectorError> {
        let Some(after) = self.tables.get(&plan.source.id.to_string()).and_then(|t| t.after.as_ref()) else {
            return Ok(None);
        };
        key_from_json(&plan.source, after).map(Some).map_err(|e| {
            ConnectorError::fatal(format!(
                "the recorded copy progress of {}: {e}; delete this pipeline's row from tidewater_checkpoints in \
                 the target to take the snapshot again",
                plan.source.id
            ))
        })
    }

    fn is_done(&self, plan: &TablePlan) -> bool {
        self.tables.get(&plan.source.id.to_string()).is_some_and(|t| t.done)
    }
}

/// A key recorded as JSON values in key order (copy and resync progress), decoded with
/// `schema`'s key column types.
pub(super) fn key_from_json(schema: &TableSchema, json: &[serde_json::Value]) -> Result<Vec<Value>, String> {
    if json.len() != schema.key.len() {
        return Err("it does not fit the table's key".into());
    }
    schema
        .key
        .iter()
        .zip(json)
        .map(|(&i, v)| {
            let column = &schema.columns[i];
            Value::from_json(&column.kind, v).map_err(|e| format!("key column {}: {e}", column.name))
        })
        .collect()
}

/// Every planned table and each of its parts (partitions), as copied at `position`.
pub(super) async fn with_parts(
    source: &mut dyn Source,
    plans: &[TablePlan],
    position: Option<&str>,
) -> Result<Vec<CopiedTable>, ConnectorError> {
    let mut out = Vec::new();
    for plan in plans {
        out.push(CopiedTable::new(plan.source.id.clone(), position.map(str::to_string)));
        for part in source.table_parts(&plan.source).await? {
            out.push(CopiedTable::new(part, position.map(str::to_string)));
        }
    }
    Ok(out)
}

/// Copies every table from a consistent snapshot, continuing `unfinished` where it can;
/// returns the checkpoint streaming starts from.
pub(super) async fn snapshot(
    cfg: &PipelineConfig,
    status: &PipelineStatus,
    shutdown: &mut watch::Receiver<bool>,
    source: &mut dyn Source,
    sink: &mut dyn Sink,
    plans: &[TablePlan],
    unfinished: Option<&Checkpoint>,
) -> Result<Checkpoint, ConnectorError> {
    if let Some(cp) = unfinished {
        if let Some(done) = resume(cfg, status, shutdown, source, sink, plans, cp).await? {
            return Ok(done);
        }
    }
    let position = source.begin_snapshot().await?;
    let mut progress = CopyProgress::default();
    let pending =
        Checkpoint { position: position.clone(), snapshot_complete: false, copy_progress: Some(progress.to_text()) };
    let to_empty: Vec<TableId> =
        if unfinished.is_some() { plans.iter().map(|p| p.target.clone()).collect() } else { Vec::new() };
    if unfinished.is_some() {
        tracing::info!(pipeline = %cfg.name, "starting an unfinished snapshot over from the first row");
    }
    sink.reset_for_snapshot(&cfg.name, &to_empty, &pending).await?;
    tracing::info!(pipeline = %cfg.name, position = %position, tables = plans.len(), "snapshot started");
    copy_tables(cfg, status, shutdown, source, sink, plans.iter(), &pending, Some(&mut progress)).await?;
    let done = Checkpoint::new(position, true);
    let copied = with_parts(source, plans, None).await?;
    sink.complete_snapshot(&cfg.name, &copied, &done).await?;
    tracing::info!(pipeline = %cfg.name, "snapshot complete");
    Ok(done)
}

/// Continues the unfinished snapshot `cp` (see the module docs); `None` when it has to
/// start over.
async fn resume(
    cfg: &PipelineConfig,
    status: &PipelineStatus,
    shutdown: &mut watch::Receiver<bool>,
    source: &mut dyn Source,
    sink: &mut dyn Sink,
    plans: &[TablePlan],
    cp: &Checkpoint,
) -> Result<Option<Checkpoint>, ConnectorError> {
    let Some(mut progress) = cp.copy_progress.as_deref().and_then(CopyProgress::parse) else {
        return Ok(None);
    };
    if !source.resume_snapshot(&cp.position).await? {
        tracing::warn!(pipeline = %cfg.name, position = %cp.position, "the stream can no longer start where the unfinished snapshot began");
        return Ok(None);
    }
    let read_position = source.backfill_position();
    let keyless: Vec<&TablePlan> = plans.iter().filter(|p| p.source.is_keyless() && !progress.is_done(p)).collect();
    if !keyless.is_empty() && read_position.is_none() {
        tracing::info!(pipeline = %cfg.name, "an unfinished table without a key cannot be continued on this source");
        return Ok(None);
    }
    for plan in &keyless {
        progress.tables.remove(&plan.source.id.to_string());
    }
    let done_tables = plans.iter().filter(|p| progress.is_done(p)).count();
    let rows: u64 = progress.tables.values().map(|t| t.rows).sum();
    tracing::info!(
        pipeline = %cfg.name,
        position = %cp.position,
        tables_done = done_tables,
        rows_copied = rows,
        "continuing an unfinished snapshot from its last copied chunk"
    );
    let pending =
        Checkpoint { position: cp.position.clone(), snapshot_complete: false, copy_progress: Some(progress.to_text()) };
    // A partly copied table without a key starts again from nothing.
    let to_empty: Vec<TableId> = keyless.iter().map(|p| p.target.clone()).collect();
    sink.reset_for_snapshot(&cfg.name, &to_empty, &pending).await?;
    copy_tables(cfg, status, shutdown, source, sink, plans.iter(), &pending, Some(&mut progress)).await?;
    let done = Checkpoint::new(cp.position.clone(), true);
    let mut copied = with_parts(source, plans, None).await?;
    // The keyless tables were read at `read_position`: the stream leaves out their changes
    // up to there. The tables with a key take every change from the snapshot's start.
    for table in &mut copied {
        if keyless.iter().any(|p| p.source.id == table.table) {
            table.position.clone_from(&read_position);
        }
    }
    sink.complete_snapshot(&cfg.name, &copied, &done).await?;
    tracing::info!(pipeline = %cfg.name, "snapshot complete");
    Ok(Some(done))
}

/// Copies what the pipeline's snapshot did not cover: tables added to the configuration
/// or created under a wildcard since, and partitions attached to a copied partitioned
/// table since. The source has already published them, so their later changes also
/// arrive in the stream, which resumes from the unchanged checkpoint; the copy's position
/// is recorded so that the stream leaves out the changes the copy already holds.
pub(super) async fn backfill(
    cfg: &PipelineConfig,
    status: &PipelineStatus,
    shutdown: &mut watch::Receiver<bool>,
    source: &mut dyn Source,
    sink: &mut dyn Sink,
    plans: &[TablePlan],
    checkpoint: &Checkpoint,
) -> Result<(), ConnectorError> {
    let copied = sink.snapshotted_tables(&cfg.name).await?;
    let was_copied = |id: &TableId| copied.iter().any(|c| &c.table == id);
    let new: Vec<&TablePlan> = plans.iter().filter(|p| !was_copied(&p.source.id)).collect();
    // Partitions attached to tables copied before: their rows (they had rows before
    // they were attached) go into the table's target.
    let mut new_parts: Vec<TablePlan> = Vec::new();
    for plan in plans.iter().filter(|p| was_copied(&p.source.id)) {
        for part in source.table_parts(&plan.source).await? {
            if !was_copied(&part) {
                let mut schema = (*plan.source).clone();
                schema.id = part;
                new_parts.push(TablePlan { source: Arc::new(schema), target: plan.target.clone() });
            }
        }
    }
    if new.is_empty() && new_parts.is_empty() {
        return Ok(());
    }
    let mut position = None;
    if cfg.snapshot == SnapshotMode::Initial {
        status.set_state(PipelineState::Snapshotting);
        tracing::info!(
            pipeline = %cfg.name,
            tables = new.len(),
            partitions = new_parts.len(),
            "copying tables and partitions the snapshot did not cover"
        );
        source.begin_backfill().await?;
        position = source.backfill_position();
        // A table without a key cannot take a copy on top of an earlier, interrupted one.
        let keyless: Vec<TableId> = new.iter().filter(|p| p.source.is_keyless()).map(|p| p.target.clone()).collect();
        if !keyless.is_empty() {
            sink.reset_for_snapshot(&cfg.name, &keyless, checkpoint).await?;
        }
        let tables = new.iter().copied().chain(new_parts.iter());
        copy_tables(cfg, status, shutdown, source, sink, tables, checkpoint, None).await?;
    }
    let mut done =
        with_parts(source, &new.iter().map(|p| (*p).clone()).collect::<Vec<_>>(), position.as_deref()).await?;
    done.extend(new_parts.iter().map(|p| CopiedTable::new(p.source.id.clone(), position.clone())));
    sink.complete_snapshot(&cfg.name, &done, checkpoint).await
}

/// Reads each table from the source's open snapshot and upserts it into the target in
/// chunks (reading the next chunk while the previous one is applied). With `progress`,
/// each chunk's transaction also records how far its table got (in `checkpoint`'s
/// `copy_progress`), tables recorded as done are skipped and the others continue after
/// their recorded key.
#[allow(clippy::too_many_arguments)]
async fn copy_tables(
    cfg: &PipelineConfig,
    status: &PipelineStatus,
    shutdown: &mut watch::Receiver<bool>,
    source: &mut dyn Source,
    sink: &mut dyn Sink,
    plans: impl Iterator<Item = &TablePlan>,
    checkpoint: &Checkpoint,
    mut progress: Option<&mut CopyProgress>,
) -> Result<(), ConnectorError> {
    let plans: Vec<&TablePlan> = plans.collect();
    // Rows travel undecoded where the target reads the source's own bulk format.
    source.prefer_raw(Some(RawFormat::PgCopyText).filter(|&f| sink.accepts_raw(f)));
    // More writers, each with a target connection of its own (see [`write_group`]).
    let mut extras: Vec<Box<dyn Sink>> = Vec::new();
    if !plans.is_empty() {
        let owned: Vec<TablePlan> = plans.iter().map(|p| (*p).clone()).collect();
        for _ in 1..cfg.snapshot_parallelism {
            let mut extra = crate::connectors::sink(cfg)?;
            extra.prepare().await?;
            extra.ensure_tables(&owned).await?;
            extras.push(extra);
        }
    }
    for plan in &plans {
        let name = plan.source.id.to_string();
        let recorded = progress.as_deref().and_then(|p| p.tables.get(&name)).cloned().unwrap_or_default();
        if let Some(t) = status.figures().table_mut(&name) {
            t.state = if recorded.done { TableState::Streaming } else { TableState::Snapshotting };
            t.rows_copied = recorded.rows;
        }
    }
    for plan in plans {
        if progress.as_deref().is_some_and(|p| p.is_done(plan)) {
            continue;
        }
        let name = plan.source.id.to_string();
        let after = match progress.as_deref() {
            Some(p) => p.resume_key(plan)?,
            None => None,
        };
        let estimate = source.estimate_rows(&plan.source).await;
        if let Some(t) = status.figures().table_mut(&name) {
            t.rows_estimate = estimate;
        }
        let started = Instant::now();
        let (tx, mut rx) = mpsc::channel(SNAPSHOT_CHANNEL_CAPACITY);
        let read = async {
            let result = source.snapshot_table(&plan.source, DEFAULT_SNAPSHOT_CHUNK_ROWS, after.as_deref(), &tx).await;
            drop(tx);
            result
        };
        let progress = &mut progress;
        let extras = &mut extras;
        let write = async {
            let mut rows_total = 0u64;
            while let Some(first) = rx.recv().await {
                // As many chunks as there are writers, of those already read.
                let mut group = vec![first];
                while group.len() <= extras.len() {
                    match rx.try_recv() {
                        Ok(chunk) => group.push(chunk),
                        Err(_) => break,
                    }
                }
                let mut batches = Vec::with_capacity(group.len());
                for chunk in group {
                    let rows = chunk.len() as u64;
                    let mut batch_checkpoint = checkpoint.clone();
                    if let Some(p) = progress.as_deref_mut() {
                        let entry = p.tables.entry(name.clone()).or_default();
                        entry.rows += rows;
                        if let Some(last) = chunk.last_key().filter(|_| !plan.source.key.is_empty()) {
                            entry.after = Some(last.iter().map(Value::to_json).collect());
                        }
                        batch_checkpoint.copy_progress = Some(p.to_text());
                    }
                    let mut batch = ApplyBatch::checkpoint_only(&cfg.name, batch_checkpoint);
                    let mut changes = TableChanges::copied(chunk.table, plan.target.clone(), chunk.rows);
                    changes.raw = chunk.raw;
                    batch.tables.push(changes);
                    batches.push((batch, rows));
                }
                for (rows, report) in write_group(cfg, status, shutdown, sink, extras, &batches).await? {
                    status.touch();
                    rows_total += rows;
                    let mut f = status.figures();
                    f.events_applied_total += rows.saturating_sub(report.dead_letters);
                    f.dead_letters_total += report.dead_letters;
                    if let Some(t) = f.table_mut(&name) {
                        t.rows_copied += rows;
                    }
                }
            }
            Ok::<u64, ConnectorError>(rows_total)
        };
        let (_, rows) = tokio::try_join!(read, write)?;
        if let Some(p) = progress.as_deref_mut() {
            // Recorded at once, so that a restart does not copy a finished table without
            // a key again.
            p.tables.entry(name.clone()).or_default().done = true;
            let mut marked = checkpoint.clone();
            marked.copy_progress = Some(p.to_text());
            let batch = ApplyBatch::checkpoint_only(&cfg.name, marked);
            if apply_with_retry(cfg, status, shutdown, sink, &batch).await?.is_none() {
                return Err(ConnectorError::transient("shutting down during the copy"));
            }
        }
        let copied_total = status.figures().table_mut(&name).map_or(rows, |t| t.rows_copied);
        if let Some(t) = status.figures().table_mut(&name) {
            t.state = TableState::Streaming;
            // Without statistics, the copy is the best estimate there is.
            t.rows_estimate.get_or_insert(copied_total);
        }
        let seconds = started.elapsed().as_secs_f64();
        let rate = if seconds > 0.0 { (rows as f64 / seconds).round() } else { 0.0 };
        tracing::info!(
            pipeline = %cfg.name,
            table = %plan.source.id,
            rows,
            rows_total = copied_total,
            seconds = format_args!("{seconds:.1}"),
            rows_per_second = rate,
            "table copied"
        );
    }
    Ok(())
}

/// Writes consecutive chunks of one table: the first through `sink` (with retries), the
/// others at the same time each in an open transaction of one of `extras`, committed in
/// order once the chunk before is committed, so the recorded progress never passes a
/// chunk that is not in the target. When an extra writer fails (a rejected row, a lost
/// connection), its chunk and the ones after it are written again through `sink`, one
/// by one (with retries and dead letters). Returns each chunk's rows and report.
async fn write_group(
    cfg: &PipelineConfig,
    status: &PipelineStatus,
    shutdown: &mut watch::Receiver<bool>,
    sink: &mut dyn Sink,
    extras: &mut [Box<dyn Sink>],
    batches: &[(ApplyBatch, u64)],
) -> Result<Vec<(u64, ApplyReport)>, ConnectorError> {
    let shutting_down = || ConnectorError::transient("shutting down during the copy");
    let Some(((first, first_rows), rest)) = batches.split_first() else { return Ok(Vec::new()) };
    let alongside = futures_util::future::join_all(extras.iter_mut().zip(rest).map(|(extra, (batch, _))| async move {
        extra.begin_large().await?;
        extra.apply_part(batch, false).await
    }));
    let (main, parts) = tokio::join!(apply_with_retry(cfg, status, shutdown, sink, first), alongside);
    let main = match main {
        Ok(Some((report, _))) => report,
        failed => {
            for extra in extras.iter_mut() {
                extra.abort_large().await;
            }
            return Err(failed.err().unwrap_or_else(shutting_down));
        }
    };
    let mut done = vec![(*first_rows, main)];
    let mut redo_from = None;
    for (i, (extra, part)) in extras.iter_mut().zip(parts).enumerate() {
        if redo_from.is_some() {
            extra.abort_large().await;
            continue;
        }
        let committed = match part {
            Ok(report) => {
                let last = ApplyBatch::checkpoint_only(&cfg.name, rest[i].0.checkpoint.clone());
                extra.commit_large(&last, false).await.map(|_| report)
            }
            Err(e) => {
                extra.abort_large().await;
                Err(e)
            }
        };
        match committed {
            Ok(report) => done.push((rest[i].1, report)),
            Err(e) => {
                tracing::debug!(pipeline = %cfg.name, error = %e, "a parallel chunk write failed; writing it again alone");
                redo_from = Some(i);
            }
        }
    }
    if let Some(from) = redo_from {
        for (batch, rows) in &rest[from..] {
            let Some((report, _)) = apply_with_retry(cfg, status, shutdown, sink, batch).await? else {
                return Err(shutting_down());
            };
            done.push((*rows, report));
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_progress_round_trips_and_reads_older_forms() {
        let mut p = CopyProgress::default();
        p.tables.insert("public.a".into(), TableProgress { done: true, rows: 10, after: None });
        p.tables.insert(
            "public.b".into(),
            TableProgress { done: false, rows: 5, after: Some(vec![serde_json::json!(5), serde_json::json!("x")]) },
        );
        let text = p.to_text();
        assert_eq!(CopyProgress::parse(&text), Some(p));
        assert_eq!(CopyProgress::parse("{}"), Some(CopyProgress::default()));
        assert_eq!(CopyProgress::parse("not json"), None);
    }
}
