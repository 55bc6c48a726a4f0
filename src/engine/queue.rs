//! The queue between a source's stream and the engine, bounded by changes.
//!
//! A source sends whole transactions (and the parts of large ones) into a channel that
//! counts items, and a transaction below the part size is one item whatever its size: a
//! channel of N items alone would let N medium transactions (N × 9,999 changes) pile up
//! in memory while the target is slower than the source. The pump moves an item on only
//! once it holds a permit per change of it (at least one, at most the whole budget); the
//! engine keeps the permits with the item until the target transaction holding it has
//! committed. Queued plus in-flight changes therefore stay within the budget, whatever
//! the transactions' sizes. Parts of large transactions take one permit: the sources
//! already bound how many parts are in memory.

use std::sync::Arc;

use tidewater_core::SourceItem;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// Items the source may have sent ahead of the pump (the source's own channel).
pub const SOURCE_CHANNEL_CAPACITY: usize = 16;
/// The smallest change budget, whatever `max_batch_events` says.
const MIN_BUDGET: usize = 10_000;

/// An item from the source with its share of the change budget.
pub struct Queued {
    pub item: SourceItem,
    /// Given back (dropped) when the target transaction holding the item has committed.
    pub permit: OwnedSemaphorePermit,
}

/// How many changes may be queued or in flight: three batches' worth, so the source can
/// fill the next batch while one is applied.
pub fn changes_budget(max_batch_events: usize) -> usize {
    max_batch_events.saturating_mul(3).clamp(MIN_BUDGET, Semaphore::MAX_PERMITS)
}

/// Stops the pump when the stream is abandoned.
pub struct Pump(JoinHandle<()>);

impl Drop for Pump {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the pump from the source's channel; returns the engine's end of the queue. The
/// queue ends (recv gives `None`) when the source's channel does.
pub fn start(mut from_source: mpsc::Receiver<SourceItem>, budget: usize) -> (mpsc::Receiver<Queued>, Pump) {
    let budget = budget.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(budget));
    // Every queued item holds at least one permit: the channel never fills before them.
    let (to_engine, queue) = mpsc::channel(budget);
    let task = tokio::spawn(async move {
        while let Some(item) = from_source.recv().await {
            let n = match &item {
                SourceItem::Transaction(tx) => tx.events.len().clamp(1, budget),
                SourceItem::TransactionPart(_) | SourceItem::Heartbeat { .. } => 1,
            };
            let Ok(permit) = permits.clone().acquire_many_owned(n as u32).await else { return };
            if to_engine.send(Queued { item, permit }).await.is_err() {
                return;
            }
        }
    });
    (queue, Pump(task))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{Duration, SystemTime};

    use tidewater_core::{ChangeEvent, Column, ColumnType, Engine, Op, TableId, TableSchema, Transaction, Value};

    use super::*;

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
        let (source, from_source) = mpsc::channel(SOURCE_CHANNEL_CAPACITY);
        let (mut queue, _pump) = start(from_source, 12_000);
        // Ten transactions of 5,000 changes: far fewer items than any channel capacity.
        let sender = tokio::spawn(async move {
            for i in 0..10 {
                source.send(tx(5_000, &format!("p{i}"))).await.unwrap();
            }
        });
        let first = queue.recv().await.unwrap();
        let second = queue.recv().await.unwrap();
        assert_eq!((position(&first), position(&second)), ("p0", "p1"));
        // 10,000 changes are held; a third 5,000 would exceed 12,000: it must wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(queue.try_recv().is_err(), "a third transaction passed the budget");
        drop(first); // its target transaction committed
        let third = tokio::time::timeout(Duration::from_secs(5), queue.recv()).await.unwrap().unwrap();
        assert_eq!(position(&third), "p2");
        drop((second, third));
        let mut rest = Vec::new();
        while let Some(q) = queue.recv().await {
            rest.push(position(&q).to_string());
        }
        assert_eq!(rest, ["p3", "p4", "p5", "p6", "p7", "p8", "p9"]);
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn a_transaction_larger_than_the_budget_still_passes_alone() {
        let (source, from_source) = mpsc::channel(SOURCE_CHANNEL_CAPACITY);
        let (mut queue, _pump) = start(from_source, 100);
        source.send(tx(250, "big")).await.unwrap();
        source.send(tx(1, "small")).await.unwrap();
        let big = queue.recv().await.unwrap();
        assert_eq!(position(&big), "big");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(queue.try_recv().is_err(), "the budget is all taken by the large one");
        drop(big);
        assert_eq!(position(&queue.recv().await.unwrap()), "small");
    }

    #[test]
    fn the_budget_is_three_batches_and_never_tiny() {
        assert_eq!(changes_budget(20_000), 60_000);
        assert_eq!(changes_budget(1), MIN_BUDGET);
        assert_eq!(changes_budget(usize::MAX), Semaphore::MAX_PERMITS);
    }
}
