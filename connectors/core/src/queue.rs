//! The queue from a source's stream to the engine, bounded by changes.
//!
//! A source sends whole transactions (and the parts of large ones). A transaction below
//! the part size is one item whatever its size, so a channel bounded by items alone would
//! let N medium transactions (N × 9,999 changes) pile up in memory while the target is
//! slower than the source. [`SourceSender::send`] first takes a permit per change of the
//! item (at least one, at most the whole budget) — waiting there is the source's
//! backpressure — and the engine keeps the permit with the item until the target
//! transaction holding it has committed. Queued plus in-flight changes therefore stay
//! within the budget, whatever the transactions' sizes. Parts of large transactions take
//! one permit: the sources already bound how many parts are in memory.
//!
//! The permits are taken in the source's own task: no task in between, no extra wake-up
//! per item.

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::traits::SourceItem;

/// The smallest change budget, whatever the configuration says.
const MIN_BUDGET: usize = 10_000;

/// An item from the source with its share of the change budget.
#[derive(Debug)]
pub struct Queued {
    pub item: SourceItem,
    /// Given back (dropped) when the target transaction holding the item has committed.
    pub permit: OwnedSemaphorePermit,
}

/// The engine's end of the queue is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueClosed;

/// Why [`SourceSender::try_send`] queued nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrySendError {
    /// The budget or the channel is full right now: waiting would have been needed.
    Full,
    /// The engine's end of the queue is gone.
    Closed,
}

/// The source's end of the queue.
#[derive(Debug, Clone)]
pub struct SourceSender {
    tx: mpsc::Sender<Queued>,
    permits: Arc<Semaphore>,
    budget: usize,
}

/// A queue holding at most `budget` changes (queued or not yet given back by the engine).
pub fn source_queue(budget: usize) -> (SourceSender, mpsc::Receiver<Queued>) {
    let budget = budget.clamp(MIN_BUDGET, Semaphore::MAX_PERMITS);
    // Every queued item holds at least one permit: the channel never fills before them.
    let (tx, rx) = mpsc::channel(budget);
    (SourceSender { tx, permits: Arc::new(Semaphore::new(budget)), budget }, rx)
}

/// How many changes may be queued or in flight for batches of `max_batch_events`: three
/// batches' worth, so the source can fill the next batch while one is applied.
pub fn changes_budget(max_batch_events: usize) -> usize {
    max_batch_events.saturating_mul(3).clamp(MIN_BUDGET, Semaphore::MAX_PERMITS)
}

impl SourceSender {
    fn permits_for(&self, item: &SourceItem) -> u32 {
        let n = match item {
            SourceItem::Transaction(tx) => tx.events.len().clamp(1, self.budget),
            SourceItem::TransactionPart(_) | SourceItem::Heartbeat { .. } => 1,
        };
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Queues `item`, first waiting until its changes fit the budget.
    pub async fn send(&self, item: SourceItem) -> Result<(), QueueClosed> {
        let n = self.permits_for(&item);
        let permit = self.permits.clone().acquire_many_owned(n).await.map_err(|_| QueueClosed)?;
        self.tx.send(Queued { item, permit }).await.map_err(|_| QueueClosed)
    }

    /// Queues `item` only if that needs no waiting (for best-effort heartbeats).
    pub fn try_send(&self, item: SourceItem) -> Result<(), TrySendError> {
        if self.tx.is_closed() {
            return Err(TrySendError::Closed);
        }
        let n = self.permits_for(&item);
        let permit = self.permits.clone().try_acquire_many_owned(n).map_err(|e| match e {
            tokio::sync::TryAcquireError::NoPermits => TrySendError::Full,
            tokio::sync::TryAcquireError::Closed => TrySendError::Closed,
        })?;
        self.tx.try_send(Queued { item, permit }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => TrySendError::Full,
            mpsc::error::TrySendError::Closed(_) => TrySendError::Closed,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{ChangeEvent, Column, ColumnType, Engine, Op, TableId, TableSchema, Transaction, Value};

    #[tokio::test]
    async fn try_send_tells_a_full_queue_from_a_closed_one() {
        let heartbeat = || SourceItem::Heartbeat { position: "0/1".into() };
        let (tx, rx) = source_queue(MIN_BUDGET);
        // Take the whole budget: the next heartbeat would have to wait.
        let held = tx.permits.clone().try_acquire_many_owned(u32::try_from(MIN_BUDGET).unwrap()).unwrap();
        assert_eq!(tx.try_send(heartbeat()), Err(TrySendError::Full));
        drop(held);
        assert_eq!(tx.try_send(heartbeat()), Ok(()));
        drop(rx);
        assert_eq!(tx.try_send(heartbeat()), Err(TrySendError::Closed));
    }

    fn tx(n: usize, position: &str) -> SourceItem {
        let id = Column {
            name: "id".into(),
            kind: ColumnType::Int64,
            native_type: "bigint".into(),
            nullable: false,
            existing_rows_value: None,
        };
        let schema = Arc::new(TableSchema {
            id: TableId::new("s", "t"),
            engine: Engine::Postgres,
            columns: vec![id],
            key: vec![0],
            enum_labels: vec![],
        });
        let events = (0..n)
            .map(|i| ChangeEvent {
                table: schema.clone(),
                op: Op::Insert,
                before: None,
                after: Some(vec![Value::Int(i as i64)]),
            })
            .collect();
        SourceItem::Transaction(Transaction {
            position: position.into(),
            position_num: None,
            commit_time: SystemTime::now(),
            events,
        })
    }

    fn position(q: &Queued) -> &str {
        match &q.item {
            SourceItem::Transaction(t) => &t.position,
            _ => "?",
        }
    }

    #[tokio::test]
    async fn the_queue_holds_at_most_the_budget_of_changes_and_keeps_order() {
        let (source, mut queue) = source_queue(12_000);
        // Ten transactions of 5,000 changes: far fewer items than any channel capacity.
        let sender = tokio::spawn(async move {
            for i in 0..10 {
                source.send(tx(5_000, &format!("p{i}"))).await.expect("queue open");
            }
        });
        let first = queue.recv().await.expect("p0");
        let second = queue.recv().await.expect("p1");
        assert_eq!((position(&first), position(&second)), ("p0", "p1"));
        // 10,000 changes are held; a third 5,000 would exceed 12,000: it must wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(queue.try_recv().is_err(), "a third transaction passed the budget");
        drop(first); // its target transaction committed
        let third = tokio::time::timeout(Duration::from_secs(5), queue.recv()).await.expect("in time").expect("p2");
        assert_eq!(position(&third), "p2");
        drop((second, third));
        let mut rest = Vec::new();
        while let Some(q) = queue.recv().await {
            rest.push(position(&q).to_string());
        }
        assert_eq!(rest, ["p3", "p4", "p5", "p6", "p7", "p8", "p9"]);
        sender.await.expect("sender");
    }

    #[tokio::test]
    async fn a_transaction_larger_than_the_budget_passes_alone_and_heartbeats_never_wait() {
        let (source, mut queue) = source_queue(MIN_BUDGET);
        source.send(tx(MIN_BUDGET + 250, "big")).await.expect("queue open");
        // The budget is all taken: a heartbeat is dropped rather than waited for.
        assert_eq!(source.try_send(SourceItem::Heartbeat { position: "h".into() }), Err(TrySendError::Full));
        let waiting = tokio::spawn(async move { source.send(tx(1, "small")).await });
        let big = queue.recv().await.expect("big");
        assert_eq!(position(&big), "big");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(queue.try_recv().is_err(), "the budget is all taken by the large one");
        drop(big);
        assert_eq!(position(&queue.recv().await.expect("small")), "small");
        assert_eq!(waiting.await.expect("task"), Ok(()));
    }

    #[test]
    fn the_budget_is_three_batches_and_never_tiny() {
        assert_eq!(changes_budget(20_000), 60_000);
        assert_eq!(changes_budget(1), MIN_BUDGET);
        assert_eq!(changes_budget(usize::MAX), Semaphore::MAX_PERMITS);
    }
}
