//! The hub's ring: the most recent transactions its reader decoded, shared by every
//! subscriber of the source section, bounded by an estimate of their size in memory.
//!
//! The reader appends; each attached subscriber reads from its own cursor. When the ring
//! is full, the oldest entry is dropped as soon as the fastest attached subscriber has
//! taken it; subscribers still behind it have fallen out of the bound and are detached
//! (they notice it on their next read). So the reader runs at the pace of the fastest
//! pipeline, never more than the bound ahead of it, and a slow pipeline never holds the
//! others back. With nobody attached the reader waits until someone attaches.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tidewater_core::{ChangeEvent, ConnectorError, Value};
use tokio::sync::Notify;

use crate::binlog_pos::BinlogPosition;
use crate::reader::Decoded;

/// Per-entry overhead counted on top of its values.
const ENTRY_BYTES: usize = 128;
const EVENT_BYTES: usize = 64;

/// What a subscriber's read found.
pub(crate) enum Next {
    Item(Arc<Decoded>),
    /// The entry at the cursor has been dropped: the subscriber fell out of the bound.
    Behind,
}

struct Slot {
    item: Arc<Decoded>,
    bytes: usize,
}

struct Subscriber {
    pipeline: String,
    /// The next entry it reads; `None` while it is not attached (catching up).
    cursor: Option<u64>,
}

struct State {
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]`.
    first: u64,
    bytes: usize,
    /// Every transaction committed after `base` is in the ring. `None` when a leading
    /// part of the oldest transaction was dropped: then the first commit in the ring is
    /// where its coverage starts.
    base: Option<BinlogPosition>,
    subscribers: HashMap<u64, Subscriber>,
    next_id: u64,
    /// The reader has stopped: why, and the subscriber whose start it was reading from.
    failed: Option<Failure>,
    /// The reader has handed on at least one entry.
    delivered: bool,
}

struct Failure {
    error: ConnectorError,
    /// The error concerns the reader's start position, which came from this subscriber:
    /// only it gets the error as it is; the others get it as transient.
    owner: Option<u64>,
}

pub(crate) struct Ring {
    state: Mutex<State>,
    /// An entry was added or the reader stopped (subscribers wait on it).
    grown: Notify,
    /// A subscriber took an entry, attached or left (a full ring's reader waits on it).
    consumed: Notify,
    limit_bytes: usize,
}

impl Ring {
    /// An empty ring whose coverage starts at `base` (where the reader starts).
    pub(crate) fn new(base: BinlogPosition, limit_bytes: usize) -> Self {
        Ring {
            state: Mutex::new(State {
                slots: VecDeque::new(),
                first: 0,
                bytes: 0,
                base: Some(base),
                subscribers: HashMap::new(),
                next_id: 0,
                failed: None,
                delivered: false,
            }),
            grown: Notify::new(),
            consumed: Notify::new(),
            limit_bytes: limit_bytes.max(1),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is consistent after every statement; a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn add_subscriber(&self, pipeline: &str) -> u64 {
        let mut s = self.state();
        let id = s.next_id;
        s.next_id += 1;
        s.subscribers.insert(id, Subscriber { pipeline: pipeline.to_string(), cursor: None });
        id
    }

    pub(crate) fn remove_subscriber(&self, id: u64) {
        self.state().subscribers.remove(&id);
        self.consumed.notify_one();
    }

    /// The pipelines attached and those catching up on their own, for log lines.
    pub(crate) fn roster(&self) -> (Vec<String>, Vec<String>) {
        let s = self.state();
        let (mut attached, mut catching_up) = (Vec::new(), Vec::new());
        for sub in s.subscribers.values() {
            match sub.cursor {
                Some(_) => attached.push(sub.pipeline.clone()),
                None => catching_up.push(sub.pipeline.clone()),
            }
        }
        attached.sort();
        catching_up.sort();
        (attached, catching_up)
    }

    /// Whether the ring holds every transaction committed after `at`.
    pub(crate) fn covers(&self, at: &BinlogPosition) -> bool {
        let s = self.state();
        s.failed.is_none() && covered(&s, at)
    }

    /// Attaches subscriber `id`, which has everything up to `at`, if the ring holds every
    /// transaction after `at`; returns its cursor (it skips what it already has).
    pub(crate) fn try_attach(&self, id: u64, at: &BinlogPosition) -> Result<Option<u64>, ConnectorError> {
        let mut s = self.state();
        if let Some(f) = &s.failed {
            return Err(failure_for(f, id));
        }
        if !covered(&s, at) {
            return Ok(None);
        }
        let first = s.first;
        if let Some(sub) = s.subscribers.get_mut(&id) {
            sub.cursor = Some(first);
        }
        drop(s);
        self.consumed.notify_one();
        Ok(Some(first))
    }

    /// Subscriber `id` reads on its own from now on.
    pub(crate) fn detach(&self, id: u64) {
        if let Some(sub) = self.state().subscribers.get_mut(&id) {
            sub.cursor = None;
        }
    }

    /// The entry at `cursor`, waiting for it to be added.
    pub(crate) async fn next(&self, id: u64, cursor: u64) -> Result<Next, ConnectorError> {
        loop {
            let grown = self.grown.notified();
            tokio::pin!(grown);
            grown.as_mut().enable();
            {
                let s = self.state();
                if cursor < s.first {
                    return Ok(Next::Behind);
                }
                let i = usize::try_from(cursor - s.first).unwrap_or(usize::MAX);
                if let Some(slot) = s.slots.get(i) {
                    return Ok(Next::Item(slot.item.clone()));
                }
                if let Some(f) = &s.failed {
                    return Err(failure_for(f, id));
                }
            }
            grown.await;
        }
    }

    /// Subscriber `id` has taken every entry before `cursor`.
    pub(crate) fn taken(&self, id: u64, cursor: u64) {
        if let Some(sub) = self.state().subscribers.get_mut(&id) {
            sub.cursor = Some(cursor);
        }
        self.consumed.notify_one();
    }

    /// Appends `item`, first waiting while the ring is full and the fastest attached
    /// subscriber has not taken its oldest entry. Returns false once the ring has failed.
    pub(crate) async fn push(&self, item: Decoded) -> bool {
        let bytes = size_of_item(&item);
        loop {
            let consumed = self.consumed.notified();
            tokio::pin!(consumed);
            consumed.as_mut().enable();
            {
                let mut s = self.state();
                if s.failed.is_some() {
                    return false;
                }
                if self.make_room(&mut s, bytes) {
                    self.append(&mut s, item, bytes);
                    return true;
                }
            }
            consumed.await;
        }
    }

    /// Appends `item` if that needs no waiting (idle heartbeats).
    pub(crate) fn offer(&self, item: Decoded) -> bool {
        let bytes = size_of_item(&item);
        let mut s = self.state();
        if s.failed.is_some() || !self.make_room(&mut s, bytes) {
            return false;
        }
        self.append(&mut s, item, bytes);
        true
    }

    /// Drops taken entries until `bytes` more fit; false if that needs waiting.
    fn make_room(&self, s: &mut State, bytes: usize) -> bool {
        while s.bytes + bytes > self.limit_bytes && !s.slots.is_empty() {
            let fastest = s.subscribers.values().filter_map(|sub| sub.cursor).max();
            if fastest.is_none_or(|c| c <= s.first) {
                return false;
            }
            let Some(slot) = s.slots.pop_front() else { break };
            s.first += 1;
            s.bytes -= slot.bytes;
            s.base = match &*slot.item {
                Decoded::Commit { end, .. } => Some(end.clone()),
                Decoded::Heartbeat(at) => Some(at.clone()),
                Decoded::Part { .. } => None,
            };
        }
        true
    }

    fn append(&self, s: &mut State, item: Decoded, bytes: usize) {
        s.slots.push_back(Slot { item: Arc::new(item), bytes });
        s.bytes += bytes;
        s.delivered = true;
        self.grown.notify_waiters();
    }

    /// The reader stopped with `error`. `owner`: the subscriber whose start position the
    /// reader was opened at, when the error may be about that position.
    pub(crate) fn fail(&self, error: ConnectorError, owner: Option<u64>) {
        {
            let mut s = self.state();
            if s.failed.is_none() {
                let owner = if s.delivered { None } else { owner };
                s.failed = Some(Failure { error, owner });
            }
        }
        self.grown.notify_waiters();
    }

    pub(crate) fn has_failed(&self) -> bool {
        self.state().failed.is_some()
    }
}

fn covered(s: &State, at: &BinlogPosition) -> bool {
    let base = match &s.base {
        Some(b) => Some(b),
        None => s.slots.iter().find_map(|slot| match &*slot.item {
            Decoded::Commit { end, .. } => Some(end),
            _ => None,
        }),
    };
    base.is_some_and(|b| b.cmp_file_pos(at) != std::cmp::Ordering::Greater)
}

/// The failure as subscriber `id` sees it.
fn failure_for(f: &Failure, id: u64) -> ConnectorError {
    let e = &f.error;
    let mut copy = ConnectorError::new(e.class, e.message.clone());
    copy.code = e.code.clone();
    copy.unclassified = e.unclassified;
    copy.restart = e.restart;
    if f.owner.is_some_and(|owner| owner != id) && e.is_fatal() {
        // About another pipeline's start: this one reconnects (a new reader then starts
        // from its own position).
        copy.class = tidewater_core::ErrorClass::Transient;
        copy.message = format!("the source's shared binlog reader stopped: {}", e.message);
    }
    copy
}

/// A rough size of `item` in memory: what the bound counts.
fn size_of_item(item: &Decoded) -> usize {
    let events = |events: &[ChangeEvent]| events.iter().map(size_of_event).sum::<usize>();
    ENTRY_BYTES
        + match item {
            Decoded::Part { events: e, .. } => events(e),
            Decoded::Commit { tx, .. } => events(&tx.events),
            Decoded::Heartbeat(_) => 0,
        }
}

fn size_of_event(event: &ChangeEvent) -> usize {
    let row = |r: &Option<Vec<Value>>| r.as_ref().map_or(0, |r| r.iter().map(size_of_value).sum::<usize>());
    EVENT_BYTES + row(&event.before) + row(&event.after)
}

fn size_of_value(v: &Value) -> usize {
    let heap = match v {
        Value::Bytes(b) => b.len(),
        other => other.as_text().map_or(0, str::len),
    };
    std::mem::size_of::<Value>() + heap
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{Duration, SystemTime};

    use tidewater_core::Transaction;

    use super::*;

    fn at(pos: u64) -> BinlogPosition {
        BinlogPosition::new("binlog.000001", pos, None)
    }

    fn commit(pos: u64) -> Decoded {
        let tx = Transaction {
            position: at(pos).to_string(),
            position_num: None,
            commit_time: SystemTime::now(),
            events: vec![],
        };
        Decoded::Commit { tx, gtid: None, end: at(pos) }
    }

    fn end_of(item: &Next) -> u64 {
        match item {
            Next::Item(d) => match &**d {
                Decoded::Commit { end, .. } => end.pos,
                _ => 0,
            },
            Next::Behind => 0,
        }
    }

    /// Room for three entries.
    fn ring() -> Ring {
        Ring::new(at(100), 3 * ENTRY_BYTES)
    }

    #[tokio::test]
    async fn a_slow_subscriber_falls_out_of_the_bound_and_never_holds_the_fast_one_back() {
        let ring = ring();
        let (fast, slow) = (ring.add_subscriber("fast"), ring.add_subscriber("slow"));
        assert_eq!(ring.try_attach(fast, &at(100)).unwrap(), Some(0));
        assert_eq!(ring.try_attach(slow, &at(100)).unwrap(), Some(0));
        for (i, pos) in (200..=900).step_by(100).enumerate() {
            let push = tokio::time::timeout(Duration::from_secs(1), ring.push(commit(pos)));
            assert!(push.await.expect("the reader never waits for the slow one"));
            let i = i as u64;
            let got = ring.next(fast, i).await.unwrap();
            assert_eq!(end_of(&got), pos, "the fast one gets every transaction in order");
            ring.taken(fast, i + 1);
        }
        assert!(matches!(ring.next(slow, 0).await.unwrap(), Next::Behind));
        // Its position is older than the ring's coverage; a recent one is covered.
        assert!(!ring.covers(&at(100)));
        assert!(ring.covers(&at(700)) && ring.covers(&at(950)));
        assert_eq!(ring.try_attach(slow, &at(800)).unwrap(), Some(5));
        assert_eq!(ring.roster(), (vec!["fast".to_string(), "slow".to_string()], vec![]));
    }

    #[tokio::test]
    async fn a_full_ring_waits_until_the_fastest_subscriber_takes_its_oldest_entry() {
        let ring = Arc::new(ring());
        let sub = ring.add_subscriber("only");
        assert_eq!(ring.try_attach(sub, &at(100)).unwrap(), Some(0));
        for pos in [200, 300, 400] {
            assert!(ring.push(commit(pos)).await);
        }
        let pusher = {
            let ring = ring.clone();
            tokio::spawn(async move { ring.push(commit(500)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!pusher.is_finished(), "nobody has taken the oldest entry: the reader waits");
        assert_eq!(end_of(&ring.next(sub, 0).await.unwrap()), 200);
        ring.taken(sub, 1);
        assert!(tokio::time::timeout(Duration::from_secs(1), pusher).await.unwrap().unwrap());
        assert_eq!(end_of(&ring.next(sub, 3).await.unwrap()), 500);
        // Detached, it holds nothing back either: with nobody attached the reader waits.
        ring.detach(sub);
        assert!(!ring.offer(Decoded::Heartbeat(at(600))), "a heartbeat that would need waiting is dropped");
    }

    #[tokio::test]
    async fn a_failure_at_the_start_is_the_owners_alone() {
        let ring = ring();
        let (owner, other) = (ring.add_subscriber("a"), ring.add_subscriber("b"));
        ring.fail(ConnectorError::fatal("binlog purged"), Some(owner));
        assert!(ring.try_attach(owner, &at(100)).unwrap_err().is_fatal());
        let e = ring.try_attach(other, &at(100)).unwrap_err();
        assert!(!e.is_fatal() && e.message.contains("binlog purged"), "{e}");
        assert!(ring.next(other, 0).await.is_err());
        assert!(!ring.push(commit(200)).await, "a failed ring takes nothing more");
    }
}
