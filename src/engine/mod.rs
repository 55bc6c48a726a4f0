//! The per-pipeline task: snapshot, then stream; order, batching, retries, checkpoints.
//!
//! # Flow
//! Connect the sink and read the pipeline's checkpoint; connect the source and resolve the
//! tables; create or extend the target tables. Without a finished snapshot, take one (an
//! unfinished one continues from its last copied chunk where it can, see [`copy`]). Then stream:
//! the source task decodes into a queue bounded by changes ([`tidewater_core::queue`])
//! while the engine applies; each batch is whatever has accumulated (natural batching,
//! capped by `max_batch_events` and `max_batch_delay_ms`), applied as one target
//! transaction with its checkpoint, and only then acknowledged to the source.
//!
//! # Errors
//! A transient sink error retries the same batch with backoff while the source stream
//! stays up; a transient source error restarts the run from the target's checkpoint; a
//! fatal error puts the pipeline in `failed` and ends its task (other pipelines go on).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use backon::BackoffBuilder;
use futures_util::future::Either;
use tidewater_core::{
    ApplyBatch, ApplyReport, Checkpoint, ConnectorError, ErrorClass, Sink, Source, SourceItem, TableId, TablePlan,
    Transaction,
};
use tokio::sync::{mpsc, watch};

use crate::config::{OnError, PipelineConfig, RetryPolicy, SnapshotMode};
use crate::connectors;
use crate::status::{PipelineState, PipelineStatus};
use tidewater_core::batch::BatchBuilder;

use tidewater_core::queue::{self, Queued};

mod copy;
mod resync;

const SNAPSHOT_CHANNEL_CAPACITY: usize = 4;
/// How often an idle stream loop wakes up to show it is alive (systemd watchdog).
const IDLE_TICK: Duration = Duration::from_secs(1);
/// A failed run that lasted this long starts the backoff again from its first delay.
const LONG_RUN: Duration = Duration::from_secs(60);
/// Pause before a run restarted to follow the source's tables.
const RESTART_PAUSE: Duration = Duration::from_millis(200);

/// How a pipeline task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stopped,
    Failed(String),
}

/// Capped exponential backoff with jitter, unlimited attempts unless configured.
pub fn backoff(policy: &RetryPolicy) -> impl Iterator<Item = Duration> {
    let builder = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(policy.initial_ms))
        .with_max_delay(Duration::from_millis(policy.max_ms))
        .with_jitter();
    let builder = match policy.max_attempts {
        Some(n) => builder.with_max_times(n as usize),
        None => builder.without_max_times(),
    };
    builder.build()
}

/// Counts failures in a row whose error code no classification table knows; past
/// `retry.unknown_max_attempts` they are treated as fatal.
#[derive(Debug, Default)]
struct UnknownStreak(u32);

impl UnknownStreak {
    /// Records `error`; returns the message to fail with once the limit is passed.
    fn give_up(&mut self, policy: &RetryPolicy, error: &ConnectorError) -> Option<String> {
        if !error.unclassified {
            self.0 = 0;
            return None;
        }
        self.0 += 1;
        let limit = policy.unknown_max_attempts?;
        (self.0 > limit).then(|| {
            format!(
                "{error} (an error tidewater does not know how to classify, still failing after {limit} retries: \
                 fix its cause and restart, or set [pipelines.retry] unknown_max_attempts = 0 to retry it forever)"
            )
        })
    }
}

/// After a failed run: whether the backoff starts again from its first delay (the run made
/// progress or lasted [`LONG_RUN`]: a new incident) and whether the streak of unclassified
/// errors ends (only progress ends it, so an error that takes a minute per attempt still
/// reaches `retry.unknown_max_attempts`).
fn resets_after_failure(progressed: bool, lasted: Duration) -> (bool, bool) {
    (progressed || lasted > LONG_RUN, progressed)
}

/// [`run_pipeline`], but once shutdown is signalled the pipeline gets
/// [`crate::SHUTDOWN_GRACE`] to finish its in-flight batch; after that it is dropped,
/// which rolls back anything uncommitted (the target's checkpoint keeps it consistent).
pub async fn run_pipeline_with_grace(
    cfg: PipelineConfig,
    status: Arc<PipelineStatus>,
    shutdown: watch::Receiver<bool>,
) -> Outcome {
    let mut signal = shutdown.clone();
    let run = run_pipeline(cfg, status.clone(), shutdown);
    tokio::pin!(run);
    tokio::select! {
        outcome = &mut run => outcome,
        _ = async { let _ = signal.wait_for(|stop| *stop).await; } => {
            match tokio::time::timeout(crate::SHUTDOWN_GRACE, &mut run).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    status.set_state(PipelineState::Stopped);
                    Outcome::Stopped
                }
            }
        }
    }
}

/// Runs one pipeline until shutdown or a fatal error.
pub async fn run_pipeline(
    cfg: PipelineConfig,
    status: Arc<PipelineStatus>,
    mut shutdown: watch::Receiver<bool>,
) -> Outcome {
    let mut delays = backoff(&cfg.retry);
    let mut unknown = UnknownStreak::default();
    loop {
        let started = Instant::now();
        let applied_before = status.figures().transactions_applied_total;
        let result = run_once(&cfg, &status, &mut shutdown).await;
        let error = match result {
            Ok(()) => {
                status.set_state(PipelineState::Stopped);
                tracing::info!(pipeline = %cfg.name, position = %applied_position(&status), "pipeline stopped");
                return Outcome::Stopped;
            }
            Err(e) => e,
        };
        // Only a fatal error ends the pipeline. An event-class error reaching this point came
        // from outside the apply path (e.g. two pipelines racing to create the same target
        // object): retrying is the safe reading.
        if error.class == ErrorClass::Fatal {
            return fail(&cfg, &status, error.to_string());
        }
        if error.restart {
            tracing::info!(pipeline = %cfg.name, reason = %error, "restarting the pipeline to follow the source");
            // A short pause keeps a source that keeps changing from spinning the loop.
            if !sleep_alive(&status, RESTART_PAUSE, &mut shutdown).await {
                status.set_state(PipelineState::Stopped);
                return Outcome::Stopped;
            }
            continue;
        }
        let progressed = status.figures().transactions_applied_total > applied_before;
        let (new_backoff, new_streak) = resets_after_failure(progressed, started.elapsed());
        if new_backoff {
            delays = backoff(&cfg.retry);
        }
        if new_streak {
            unknown = UnknownStreak::default();
        }
        if let Some(message) = unknown.give_up(&cfg.retry, &error) {
            return fail(&cfg, &status, message);
        }
        let Some(delay) = delays.next() else {
            return fail(&cfg, &status, format!("giving up after retry.max_attempts: {error}"));
        };
        note_retry(&cfg, &status, &error, delay);
        if !sleep_alive(&status, delay, &mut shutdown).await {
            status.set_state(PipelineState::Stopped);
            return Outcome::Stopped;
        }
    }
}

/// The source position applied so far, for log events (`-` before the first).
fn applied_position(status: &PipelineStatus) -> String {
    status.figures().applied_position.clone().unwrap_or_else(|| "-".into())
}

fn fail(cfg: &PipelineConfig, status: &PipelineStatus, message: String) -> Outcome {
    tracing::error!(pipeline = %cfg.name, position = %applied_position(status), error = %message, "pipeline failed");
    let mut f = status.figures();
    f.state = PipelineState::Failed;
    f.last_error = Some(message.clone());
    f.note_table_error(&message, true);
    Outcome::Failed(message)
}

/// Sleeps `delay` (a retry backoff) in short steps, showing the task is alive; returns
/// false if shutdown came first.
async fn sleep_alive(status: &PipelineStatus, delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    let until = tokio::time::Instant::now() + delay;
    loop {
        status.touch();
        let now = tokio::time::Instant::now();
        if now >= until {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep((until - now).min(IDLE_TICK)) => {}
            _ = shutdown.changed() => return false,
        }
    }
}

fn note_retry(cfg: &PipelineConfig, status: &PipelineStatus, error: &ConnectorError, delay: Duration) {
    // Waiting to retry is deliberate, not wedged.
    status.touch();
    tracing::warn!(
        pipeline = %cfg.name,
        position = %applied_position(status),
        error = %error,
        retry_in_ms = delay.as_millis() as u64,
        "transient error, retrying"
    );
    let mut f = status.figures();
    f.state = PipelineState::Retrying;
    f.retries_total += 1;
    f.last_error = Some(error.to_string());
    f.note_table_error(&error.to_string(), false);
}

/// Table plans: each source table and the target table it is written to.
/// The pipeline's `[pipelines.tables]` renames as table ids (keys may be quoted).
pub(crate) fn renames(cfg: &PipelineConfig) -> HashMap<TableId, TableId> {
    cfg.renames.iter().map(|(from, to)| (TableId::parse(from, "public"), TableId::parse(to, "public"))).collect()
}

pub(crate) fn plans(
    cfg: &PipelineConfig,
    schemas: Vec<Arc<tidewater_core::TableSchema>>,
) -> (Vec<TablePlan>, HashMap<TableId, TableId>) {
    let renames = renames(cfg);
    let plans = schemas
        .into_iter()
        .map(|schema| {
            let target = BatchBuilder::target_of(&renames, &schema.id);
            TablePlan { source: schema, target }
        })
        .collect();
    (plans, renames)
}

/// Two source tables (a wildcard may find more than the configuration names) must not be
/// written to one target table: refused before anything is written, naming both.
pub(crate) fn check_landing(cfg: &PipelineConfig, plans: &[TablePlan]) -> Result<(), ConnectorError> {
    let mut landed: HashMap<String, &TableId> = HashMap::new();
    for plan in plans {
        let landing = crate::config::landing_name(&cfg.target, &plan.target);
        if let Some(other) = landed.insert(landing.clone(), &plan.source.id) {
            if *other != plan.source.id {
                return Err(ConnectorError::fatal(format!(
                    "source tables {other} and {} would both be written to the target table {landing} of targets.{}: \
                     give one another name in [pipelines.tables], e.g. \"{}\" = \"{}.{}_{}\"",
                    plan.source.id,
                    cfg.target.name,
                    plan.source.id,
                    plan.target.schema,
                    plan.source.id.schema,
                    plan.source.id.name
                )));
            }
        }
    }
    Ok(())
}

async fn run_once(
    cfg: &PipelineConfig,
    status: &Arc<PipelineStatus>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ConnectorError> {
    if status.state() != PipelineState::Retrying {
        status.set_state(PipelineState::Starting);
    }
    let mut sink = connectors::sink(cfg)?;
    sink.prepare().await?;
    let checkpoint = sink.load_checkpoint(&cfg.name).await?;
    let mut source = connectors::source(cfg)?;
    let schemas = source.prepare().await?;
    let (plans, renames) = plans(cfg, schemas);
    status
        .figures()
        .set_tables(plans.iter().map(|p| (p.source.id.to_string(), p.target.to_string(), p.source.is_keyless())));
    check_landing(cfg, &plans)?;
    sink.ensure_tables(&plans).await?;

    let checkpoint = match checkpoint {
        Some(cp) if cp.snapshot_complete => {
            copy::backfill(cfg, status, shutdown, source.as_mut(), sink.as_mut(), &plans, &cp).await?;
            cp
        }
        unfinished => match cfg.snapshot {
            SnapshotMode::Never => {
                let position = source.begin_without_snapshot().await?;
                let cp = Checkpoint::new(position, true);
                let tables = copy::with_parts(source.as_mut(), &plans, None).await?;
                sink.complete_snapshot(&cfg.name, &tables, &cp).await?;
                cp
            }
            SnapshotMode::Initial => {
                status.set_state(PipelineState::Snapshotting);
                copy::snapshot(cfg, status, shutdown, source.as_mut(), sink.as_mut(), &plans, unfinished.as_ref())
                    .await?
            }
        },
    };
    // Tables copied after the stream's start position: their changes up to the copy are
    // in the target already.
    let starts = sink
        .snapshotted_tables(&cfg.name)
        .await?
        .into_iter()
        .filter_map(|c| c.position.map(|p| (c.table, p)))
        .collect();
    source.set_table_starts(starts);
    {
        let mut f = status.figures();
        f.applied_position = Some(checkpoint.position.clone());
    }
    stream(cfg, status, shutdown, source.as_mut(), sink.as_mut(), &plans, &renames, checkpoint).await
}

/// Stops the source stream when the engine leaves, whatever the reason.
struct StreamGuard(tidewater_core::StreamHandle);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// What the idle stream loop woke up for.
enum Wake {
    Item(Option<Queued>),
    Shutdown,
    ResyncChunk(Result<(), ConnectorError>),
    Tick,
}

#[allow(clippy::too_many_arguments)]
async fn stream(
    cfg: &PipelineConfig,
    status: &Arc<PipelineStatus>,
    shutdown: &mut watch::Receiver<bool>,
    source: &mut dyn Source,
    sink: &mut dyn Sink,
    plans: &[TablePlan],
    renames: &HashMap<TableId, TableId>,
    checkpoint: Checkpoint,
) -> Result<(), ConnectorError> {
    let (items_tx, mut items) = queue::source_queue(queue::changes_budget(cfg.max_batch_events));
    let (acks, acks_rx) = watch::channel(None);
    let mut handle = StreamGuard(source.start_stream(&checkpoint, items_tx, acks_rx, status.progress.clone()).await?);
    status.set_state(PipelineState::Streaming);
    let max_delay = Duration::from_millis(cfg.max_batch_delay_ms);
    // Tables resynced while streaming; see [`resync`].
    let mut resyncs = resync::Resyncs::new(&checkpoint, plans);
    let order = source.position_order();
    resyncs.start_next(cfg, status)?;
    // The position of the last target commit.
    let mut applied_at = checkpoint.position.clone();
    // An item taken while batching that must start a batch of its own.
    let mut carried: Option<Queued> = None;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        status.touch();
        if resyncs.take_requests(cfg, status) {
            // Recorded at once, so that a restart continues the resync.
            let recorded = Checkpoint {
                position: applied_at.clone(),
                snapshot_complete: true,
                copy_progress: resyncs.progress_text(),
            };
            let batch = ApplyBatch::checkpoint_only(&cfg.name, recorded);
            if apply_with_retry(cfg, status, shutdown, sink, &batch).await?.is_none() {
                return Ok(());
            }
            resyncs.start_next(cfg, status)?;
        }
        let first = match carried.take() {
            Some(item) => Some(item),
            None => {
                let wake = tokio::select! {
                    item = items.recv() => Wake::Item(item),
                    _ = shutdown.changed() => Wake::Shutdown,
                    received = resyncs.receive() => Wake::ResyncChunk(received),
                    // A resync request: taken at the top of the loop.
                    _ = status.resync_wake.notified() => Wake::Tick,
                    // Idle: wake up now and then to show the loop is not wedged.
                    _ = tokio::time::sleep(IDLE_TICK) => Wake::Tick,
                };
                match wake {
                    Wake::Item(item) => item,
                    Wake::Shutdown => return Ok(()),
                    Wake::ResyncChunk(received) => {
                        received?;
                        resyncs.apply_ready(cfg, status, shutdown, order, sink, &applied_at).await?;
                        continue;
                    }
                    Wake::Tick => continue,
                }
            }
        };
        let Some(first) = first else {
            {
                let mut f = status.figures();
                f.source_lost_since = f.source_lost_since.or(f.source_seen_at).or_else(|| Some(SystemTime::now()));
            }
            return Err(stream_end(&mut handle).await);
        };
        {
            let mut f = status.figures();
            f.source_seen_at = Some(SystemTime::now());
            f.source_lost_since = None;
        }
        let first = match first {
            Queued { item: SourceItem::TransactionPart(part), permit } => {
                let applied =
                    apply_large(cfg, status, sink, renames, part, &mut items, &mut handle, &mut resyncs).await?;
                applied_at.clone_from(&applied.position);
                record_applied(status, &acks, applied);
                drop(permit);
                resyncs.apply_ready(cfg, status, shutdown, order, sink, &applied_at).await?;
                continue;
            }
            other => other,
        };
        let mut batch = BatchBuilder::new(renames);
        // The items' shares of the queue's budget, merged into one permit and given back
        // at once when the commit is durable (one release wakes the source once, where a
        // release per item would wake it per item).
        let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
        let started = Instant::now();
        let mut next = Some(first);
        // Natural batching: take what is already there, never wait for more.
        while let Some(Queued { item, permit }) = next.take() {
            match item {
                SourceItem::Transaction(tx) if !batch.is_empty() && batch.reshapes(&tx) => {
                    carried = Some(Queued { item: SourceItem::Transaction(tx), permit });
                    break;
                }
                SourceItem::Transaction(tx) => batch.push_transaction(tx),
                SourceItem::Heartbeat { position } => batch.push_heartbeat(position),
                part @ SourceItem::TransactionPart(_) => {
                    carried = Some(Queued { item: part, permit });
                    break;
                }
            }
            match &mut held {
                Some(all) => all.merge(permit),
                None => held = Some(permit),
            }
            if batch.events >= cfg.max_batch_events || started.elapsed() >= max_delay {
                break;
            }
            next = items.try_recv().ok();
        }
        note_pending(status, batch.oldest_commit);
        let (events, transactions) = (batch.events as u64, batch.transactions as u64);
        let mut apply = batch.finish(&cfg.name, true);
        apply.checkpoint.copy_progress = resyncs.progress_text();
        let Some((report, apply_seconds)) = apply_with_retry(cfg, status, shutdown, sink, &apply).await? else {
            return Ok(()); // shutdown while retrying: nothing partial was committed
        };
        resyncs.note_batch(&apply, false);
        let position = apply.checkpoint.position.clone();
        applied_at.clone_from(&position);
        let dead_letters = report.dead_letters;
        record_applied(status, &acks, Applied { position, events, transactions, dead_letters, apply_seconds });
        drop(held);
        resyncs.apply_ready(cfg, status, shutdown, order, sink, &applied_at).await?;
    }
}

/// What one target commit covered.
struct Applied {
    position: String,
    events: u64,
    transactions: u64,
    dead_letters: u64,
    /// Duration of the successful target apply.
    apply_seconds: f64,
}

/// The commit is durable: acknowledge it to the source and count it.
fn record_applied(status: &PipelineStatus, acks: &watch::Sender<Option<String>>, applied: Applied) {
    tracing::debug!(
        position = %applied.position,
        events = applied.events,
        transactions = applied.transactions,
        dead_letters = applied.dead_letters,
        apply_ms = (applied.apply_seconds * 1000.0).round(),
        "applied"
    );
    let _ = acks.send(Some(applied.position.clone()));
    let mut f = status.figures();
    f.applied_position = Some(applied.position);
    if applied.transactions > 0 {
        f.last_applied_at = Some(SystemTime::now());
    }
    // Dead-lettered rows were not applied.
    f.events_applied_total += applied.events.saturating_sub(applied.dead_letters);
    f.transactions_applied_total += applied.transactions;
    f.dead_letters_total += applied.dead_letters;
    f.oldest_unapplied_commit = None;
    if applied.transactions > 0 {
        f.batch_events.observe(applied.events as f64);
        f.apply_seconds.observe(applied.apply_seconds);
    }
    if f.state == PipelineState::Retrying {
        f.state = PipelineState::Streaming;
    }
}

fn note_pending(status: &PipelineStatus, oldest_commit: Option<SystemTime>) {
    let mut f = status.figures();
    if f.oldest_unapplied_commit.is_none() {
        f.oldest_unapplied_commit = oldest_commit;
    }
}

/// Why the source's stream ended (its task's result).
async fn stream_end(handle: &mut StreamGuard) -> ConnectorError {
    match (&mut handle.0.task).await {
        Ok(Err(e)) => e,
        Ok(Ok(())) => ConnectorError::transient("the source stream ended"),
        Err(join) => ConnectorError::fatal(format!("the source stream task crashed: {join}")),
    }
}

/// Applies a large source transaction that arrives in parts: every part inside one open
/// target transaction, committed with the checkpoint when the final part arrives, so
/// memory stays bounded and readers still never see half of it. While the target applies
/// a part, the next one is received and turned into a batch on the blocking pool. Any
/// failure rolls the whole target transaction back; a transient one restarts the stream
/// from the checkpoint (the source sends the transaction again).
#[allow(clippy::too_many_arguments)]
async fn apply_large(
    cfg: &PipelineConfig,
    status: &PipelineStatus,
    sink: &mut dyn Sink,
    renames: &HashMap<TableId, TableId>,
    first: tidewater_core::TransactionPart,
    items: &mut mpsc::Receiver<Queued>,
    handle: &mut StreamGuard,
    resyncs: &mut resync::Resyncs,
) -> Result<Applied, ConnectorError> {
    let isolate = cfg.on_error == OnError::DeadLetter;
    let started = Instant::now();
    let renames = Arc::new(renames.clone());
    let result = async {
        sink.begin_large().await?;
        note_pending(status, Some(first.commit_time));
        let (mut part, mut events, mut apply) = prepare_part(&cfg.name, &renames, first).await?;
        let mut dead_letters = 0u64;
        loop {
            let applying = sink.apply_part(&apply, isolate);
            let receiving = next_piece(&cfg.name, &renames, items);
            let (report, next) = apply_and(applying, receiving).await.map_err(|e| stop_on_event(cfg, e))?;
            resyncs.note_batch(&apply, true);
            dead_letters += report.dead_letters;
            status.touch();
            drop(part); // releases its memory budget to the source
            match next? {
                Piece::Part(p, n, batch) => {
                    (part, apply) = (p, batch);
                    events += n;
                }
                Piece::Last(n, mut last) => {
                    last.checkpoint.copy_progress = resyncs.progress_text();
                    let report = sink.commit_large(&last, isolate).await.map_err(|e| stop_on_event(cfg, e))?;
                    resyncs.note_batch(&last, true);
                    resyncs.note_commit(&last.checkpoint.position);
                    dead_letters += report.dead_letters;
                    return Ok(Applied {
                        position: last.checkpoint.position,
                        events: events + n,
                        transactions: 1,
                        dead_letters,
                        apply_seconds: started.elapsed().as_secs_f64(),
                    });
                }
                Piece::End => return Err(stream_end(handle).await),
            }
        }
    }
    .await;
    if result.is_err() {
        sink.abort_large().await;
        resyncs.note_abort();
    }
    result
}

/// The next piece of a large transaction, ready to apply.
enum Piece {
    /// A part (kept for its memory budget), its event count and its batch.
    Part(tidewater_core::TransactionPart, u64, ApplyBatch),
    /// The final piece: its event count and its batch (with the commit position).
    Last(u64, ApplyBatch),
    /// The source stream ended.
    End,
}

/// (A piece's share of the queue's budget is given back when it has been taken: the
/// parts bound their own memory, and the final piece is applied right away.)
async fn next_piece(
    pipeline: &str,
    renames: &Arc<HashMap<TableId, TableId>>,
    items: &mut mpsc::Receiver<Queued>,
) -> Result<Piece, ConnectorError> {
    match items.recv().await.map(|q| q.item) {
        None => Ok(Piece::End),
        Some(SourceItem::TransactionPart(part)) => {
            let (part, n, batch) = prepare_part(pipeline, renames, part).await?;
            Ok(Piece::Part(part, n, batch))
        }
        Some(SourceItem::Transaction(tx)) => {
            let n = tx.events.len() as u64;
            Ok(Piece::Last(n, batch_on_blocking_pool(pipeline, renames, tx).await?))
        }
        Some(SourceItem::Heartbeat { position }) => Err(ConnectorError::fatal(format!(
            "source protocol error: idle heartbeat at {position} inside a transaction"
        ))),
    }
}

/// Takes a part's events into a batch; returns the part (holding its memory budget), the
/// event count and the batch.
async fn prepare_part(
    pipeline: &str,
    renames: &Arc<HashMap<TableId, TableId>>,
    mut part: tidewater_core::TransactionPart,
) -> Result<(tidewater_core::TransactionPart, u64, ApplyBatch), ConnectorError> {
    let tx = Transaction {
        position: part.position.clone(),
        position_num: None,
        commit_time: part.commit_time,
        events: std::mem::take(&mut part.events),
    };
    let n = tx.events.len() as u64;
    let batch = batch_on_blocking_pool(pipeline, renames, tx).await?;
    Ok((part, n, batch))
}

/// The batch of one transaction, built on the blocking pool (a part's ten thousand events
/// take milliseconds: meanwhile the runtime's workers go on with the apply and the source).
async fn batch_on_blocking_pool(
    pipeline: &str,
    renames: &Arc<HashMap<TableId, TableId>>,
    tx: Transaction,
) -> Result<ApplyBatch, ConnectorError> {
    let (pipeline, renames) = (pipeline.to_string(), renames.clone());
    tokio::task::spawn_blocking(move || {
        let mut batch = BatchBuilder::new(&renames);
        batch.push_transaction(tx);
        batch.finish(&pipeline, true)
    })
    .await
    .map_err(|e| ConnectorError::fatal(format!("building a batch failed: {e}")))
}

/// Runs `apply` and `alongside` concurrently, both to the end; an error of `apply` returns
/// at once (dropping `alongside`: the caller abandons the stream then).
async fn apply_and<T, U>(
    apply: impl std::future::Future<Output = Result<T, ConnectorError>>,
    alongside: impl std::future::Future<Output = U>,
) -> Result<(T, U), ConnectorError> {
    tokio::pin!(apply, alongside);
    match futures_util::future::select(apply, alongside).await {
        Either::Left((result, alongside)) => Ok((result?, alongside.await)),
        Either::Right((other, apply)) => Ok((apply.await?, other)),
    }
}

fn stop_on_event(cfg: &PipelineConfig, e: ConnectorError) -> ConnectorError {
    if e.class == ErrorClass::Event && cfg.on_error == OnError::Stop {
        ConnectorError::fatal(format!(
            "the target rejected a change and on_error = \"stop\": {e}; fix the cause and restart, or set on_error = \"dead_letter\""
        ))
    } else {
        e
    }
}

/// Applies one batch; a batch the target rejects rows of is re-applied with those rows
/// dead-lettered (or fails the pipeline with `on_error = "stop"`).
async fn apply_once(
    cfg: &PipelineConfig,
    status: &PipelineStatus,
    sink: &mut dyn Sink,
    batch: &ApplyBatch,
) -> Result<ApplyReport, ConnectorError> {
    match sink.apply(batch).await {
        Err(e) if e.class == ErrorClass::Event => match cfg.on_error {
            OnError::Stop => Err(stop_on_event(cfg, e)),
            OnError::DeadLetter => {
                tracing::warn!(pipeline = %cfg.name, error = %e, position = %batch.checkpoint.position, "target rejected rows; isolating them into the dead-letter table");
                let report = sink.apply_isolating(batch).await?;
                if report.dead_letters == 0 {
                    // The rejection did not reproduce row by row: treat it as transient.
                    return Err(ConnectorError::transient(format!("batch rejected but no row was: {e}")));
                }
                tracing::warn!(pipeline = %cfg.name, dead_letters = report.dead_letters, "rows written to tidewater_dead_letters");
                let mut targets: Vec<(String, String)> =
                    batch.tables.iter().map(|t| (t.target.to_string(), t.target.name.clone())).collect();
                targets.dedup();
                status.figures().note_rejection(&e.to_string(), &targets);
                Ok(report)
            }
        },
        other => other,
    }
}

/// Applies one batch, retrying transient failures with backoff. Returns the report and the
/// successful attempt's duration, or None when shut down before it could be applied.
async fn apply_with_retry(
    cfg: &PipelineConfig,
    status: &PipelineStatus,
    shutdown: &mut watch::Receiver<bool>,
    sink: &mut dyn Sink,
    batch: &ApplyBatch,
) -> Result<Option<(ApplyReport, f64)>, ConnectorError> {
    let mut delays = backoff(&cfg.retry);
    let mut unknown = UnknownStreak::default();
    loop {
        let started = Instant::now();
        let error = match apply_once(cfg, status, sink, batch).await {
            Ok(report) => return Ok(Some((report, started.elapsed().as_secs_f64()))),
            Err(e) if e.class == ErrorClass::Transient => e,
            Err(e) => return Err(e),
        };
        if let Some(message) = unknown.give_up(&cfg.retry, &error) {
            return Err(ConnectorError::fatal(message));
        }
        let Some(delay) = delays.next() else {
            return Err(ConnectorError::fatal(format!("giving up after retry.max_attempts: {error}")));
        };
        note_retry(cfg, status, &error, delay);
        if !sleep_alive(status, delay, shutdown).await {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_progress_ends_a_streak_of_unclassified_errors() {
        // A long run without progress: a fresh backoff, but the streak goes on.
        assert_eq!(resets_after_failure(false, Duration::from_secs(61)), (true, false));
        assert_eq!(resets_after_failure(false, Duration::from_secs(5)), (false, false));
        assert_eq!(resets_after_failure(true, Duration::from_secs(5)), (true, true));
        let policy = RetryPolicy { initial_ms: 1, max_ms: 1, max_attempts: None, unknown_max_attempts: Some(2) };
        let mut streak = UnknownStreak::default();
        let unclassified = ConnectorError::classified(None, "mystery");
        assert!(streak.give_up(&policy, &unclassified).is_none());
        assert!(streak.give_up(&policy, &unclassified).is_none());
        assert!(streak.give_up(&policy, &unclassified).is_some_and(|m| m.contains("unknown_max_attempts")));
    }
}
