//! Batch building: whole source transactions grouped into one target transaction, with
//! changes to the same key coalesced where that keeps the end state identical.
//!
//! Coalescing is per table *segment*. A segment ends when the table's schema changes, so
//! rows of different shapes never mix; segments of one table are applied in order. Within
//! a segment every key ends in one state, `Upsert(row)`, `Delete` or `Move` (the row came
//! from another key and some of its TOASTed columns were not sent), and since keys are
//! independent, applying the final states (truncate, moves, deletes, upserts) leaves the
//! target exactly as applying every event in order would. Moves go first because they
//! read the unsent columns from the old key's target row before the deletes remove it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::{
    ApplyBatch, ChangeEvent, Checkpoint, MovedRow, Op, RowOrigin, TableChanges, TableId, TableSchema, Transaction,
    Value,
};

enum RowState {
    Upsert(Vec<Value>, RowOrigin),
    Delete(Vec<Value>, RowOrigin),
    /// `row` (with `Value::Unchanged` columns) moved from the key of `from`.
    Move {
        from: Vec<Value>,
        row: Vec<Value>,
        origin: RowOrigin,
    },
    /// A keyless table's row image (all its values) and how many copies of it the batch
    /// adds (`net > 0`) or removes (`net < 0`).
    Count {
        row: Vec<Value>,
        net: i64,
        origin: RowOrigin,
    },
}

fn has_unchanged(row: &[Value]) -> bool {
    row.iter().any(|v| matches!(v, Value::Unchanged))
}

/// Fills `row`'s unchanged columns from `previous`.
fn fill_unchanged(row: &mut [Value], previous: &[Value]) {
    for (value, old) in row.iter_mut().zip(previous) {
        if matches!(value, Value::Unchanged) {
            *value = old.clone();
        }
    }
}

struct Segment {
    schema: Arc<TableSchema>,
    target: TableId,
    truncate: bool,
    /// Row by encoded key (foldhash: keys are hashed once per change, SipHash showed in
    /// profiles; it is randomly seeded like SipHash).
    index: HashMap<Vec<u8>, usize, foldhash::fast::RandomState>,
    rows: Vec<RowState>,
}

impl Segment {
    fn set(&mut self, key: &[u8], state: RowState) {
        match self.index.get(key) {
            Some(&i) => self.rows[i] = state,
            None => {
                self.index.insert(key.to_vec(), self.rows.len());
                self.rows.push(state);
            }
        }
    }

    /// The state of `row`, which now lives at some key, given the state `previous` of the
    /// key its values come from: columns the source left unchanged (TOAST) take the value
    /// this batch already holds, and a row moved from another key that the batch cannot
    /// fill stays a move. `moved_from` is the old row when the key changed.
    fn next_state(
        previous: Option<&RowState>,
        mut row: Vec<Value>,
        moved_from: Option<Vec<Value>>,
        origin: RowOrigin,
    ) -> RowState {
        match previous {
            Some(RowState::Upsert(prev, _)) => {
                fill_unchanged(&mut row, prev);
                RowState::Upsert(row, origin)
            }
            Some(RowState::Count { .. }) => RowState::Upsert(row, origin),
            Some(RowState::Move { from, row: prev, .. }) => {
                fill_unchanged(&mut row, prev);
                if has_unchanged(&row) {
                    RowState::Move { from: from.clone(), row, origin }
                } else {
                    RowState::Upsert(row, origin)
                }
            }
            _ => match moved_from {
                Some(from) if has_unchanged(&row) => RowState::Move { from, row, origin },
                _ => RowState::Upsert(row, origin),
            },
        }
    }

    fn state(&self, key: &[u8]) -> Option<&RowState> {
        self.index.get(key).map(|&i| &self.rows[i])
    }

    /// Adds `delta` copies of the keyless row image `row` (encoded as `key`).
    fn count(&mut self, key: &[u8], row: Vec<Value>, delta: i64, origin: RowOrigin) {
        match self.index.get(key) {
            Some(&i) => {
                if let RowState::Count { net, origin: o, .. } = &mut self.rows[i] {
                    *net += delta;
                    *o = origin;
                }
            }
            None => {
                self.index.insert(key.to_vec(), self.rows.len());
                self.rows.push(RowState::Count { row, net: delta, origin });
            }
        }
    }
}

/// Accumulates transactions into one [`ApplyBatch`].
pub struct BatchBuilder<'a> {
    renames: &'a HashMap<TableId, TableId>,
    segments: Vec<Segment>,
    /// Latest segment of each source table.
    open_segment: HashMap<TableId, usize>,
    pub events: usize,
    pub transactions: usize,
    pub position: Option<String>,
    pub oldest_commit: Option<SystemTime>,
    positions: Vec<String>,
    key_buf: Vec<u8>,
}

impl<'a> BatchBuilder<'a> {
    pub fn new(renames: &'a HashMap<TableId, TableId>) -> Self {
        BatchBuilder {
            renames,
            segments: Vec::new(),
            open_segment: HashMap::new(),
            events: 0,
            transactions: 0,
            position: None,
            oldest_commit: None,
            positions: Vec::new(),
            key_buf: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.position.is_none()
    }

    pub fn target_of(renames: &HashMap<TableId, TableId>, source: &TableId) -> TableId {
        renames.get(source).cloned().unwrap_or_else(|| source.clone())
    }

    pub fn push_transaction(&mut self, tx: Transaction) {
        self.oldest_commit.get_or_insert(tx.commit_time);
        self.transactions += 1;
        self.events += tx.events.len();
        let tx_index = self.positions.len() as u32;
        self.positions.push(tx.position.clone());
        for event in tx.events {
            self.push_event(event, tx_index);
        }
        self.position = Some(tx.position);
    }

    /// Whether `tx` changes the schema of a table this batch already holds rows of. The
    /// engine starts a new batch before such a transaction, so that a target which must
    /// run its DDL before the batch's transaction (MySQL commits around DDL) sees one
    /// shape per table, and a rename or drop between two shapes never meets rows of both.
    pub fn reshapes(&self, tx: &Transaction) -> bool {
        tx.events.iter().any(|e| {
            self.open_segment.get(&e.table.id).is_some_and(|&i| {
                let open = &self.segments[i].schema;
                !Arc::ptr_eq(open, &e.table) && **open != *e.table
            })
        })
    }

    /// A position with no changes (source idle): only moves the checkpoint.
    pub fn push_heartbeat(&mut self, position: String) {
        self.position = Some(position);
    }

    fn segment_for(&mut self, schema: &Arc<TableSchema>) -> &mut Segment {
        let reuse = self
            .open_segment
            .get(&schema.id)
            .copied()
            .filter(|&i| Arc::ptr_eq(&self.segments[i].schema, schema) || *self.segments[i].schema == **schema);
        let index = match reuse {
            Some(i) => i,
            None => {
                self.segments.push(Segment {
                    schema: schema.clone(),
                    target: Self::target_of(self.renames, &schema.id),
                    truncate: false,
                    index: HashMap::default(),
                    rows: Vec::new(),
                });
                let i = self.segments.len() - 1;
                self.open_segment.insert(schema.id.clone(), i);
                i
            }
        };
        &mut self.segments[index]
    }

    fn push_event(&mut self, event: ChangeEvent, tx: u32) {
        let mut key = std::mem::take(&mut self.key_buf);
        let ChangeEvent { table, op, before, after } = event;
        let origin = RowOrigin { tx, op };
        let segment = self.segment_for(&table);
        let key_of = |row: &[Value], out: &mut Vec<u8>| {
            out.clear();
            for &i in &table.key {
                row.get(i).unwrap_or(&Value::Null).encode_key(out);
            }
        };
        if table.is_keyless() {
            // Rows are a multiset of images: each change adds or removes one copy. The
            // source only removes copies that exist, so applying the net count per image
            // (removals, then additions) leaves the same multiset as every event in order.
            let image = |row: &[Value], out: &mut Vec<u8>| {
                out.clear();
                for v in row {
                    v.encode_key(out);
                }
            };
            match op {
                Op::Truncate => {
                    segment.rows.clear();
                    segment.index.clear();
                    segment.truncate = true;
                }
                Op::Insert | Op::Update | Op::Delete => {
                    if let Some(before) = &before {
                        if op != Op::Insert {
                            image(before, &mut key);
                            segment.count(&key, before.clone(), -1, origin);
                        }
                    }
                    if let Some(mut after) = after.filter(|_| op != Op::Delete) {
                        if let Some(before) = &before {
                            fill_unchanged(&mut after, before);
                        }
                        image(&after, &mut key);
                        segment.count(&key, after, 1, origin);
                    }
                }
            }
            self.key_buf = key;
            return;
        }
        match op {
            Op::Truncate => {
                // Everything this segment held for the table is wiped by the truncate.
                segment.rows.clear();
                segment.index.clear();
                segment.truncate = true;
            }
            Op::Insert | Op::Update => {
                if let Some(after) = after {
                    key_of(&after, &mut key);
                    let mut old_key = Vec::new();
                    if let Some(before) = &before {
                        key_of(before, &mut old_key);
                    }
                    if before.is_some() && old_key != key {
                        // The row moved to a new key: its unsent columns come from the old key.
                        let state = Segment::next_state(segment.state(&old_key), after, before.clone(), origin);
                        if let Some(before) = before {
                            segment.set(&old_key, RowState::Delete(before, origin));
                        }
                        segment.set(&key, state);
                    } else {
                        let state = Segment::next_state(segment.state(&key), after, None, origin);
                        segment.set(&key, state);
                    }
                }
            }
            Op::Delete => {
                if let Some(before) = before {
                    key_of(&before, &mut key);
                    segment.set(&key, RowState::Delete(before, origin));
                }
            }
        }
        self.key_buf = key;
    }

    pub fn finish(self, pipeline: &str, snapshot_complete: bool) -> ApplyBatch {
        let tables = self
            .segments
            .into_iter()
            .map(|segment| {
                let mut changes = TableChanges::upserts(segment.schema, segment.target, Vec::new());
                changes.truncate = segment.truncate;
                for row in segment.rows {
                    match row {
                        RowState::Upsert(r, o) => {
                            changes.upserts.push(r);
                            changes.upsert_origins.push(o);
                        }
                        RowState::Delete(r, o) => {
                            changes.deletes.push(r);
                            changes.delete_origins.push(o);
                        }
                        RowState::Move { from, row, origin } => {
                            changes.moves.push(MovedRow { from, row });
                            changes.move_origins.push(origin);
                        }
                        RowState::Count { row, net, origin } => {
                            let (rows, origins) = if net < 0 {
                                (&mut changes.deletes, &mut changes.delete_origins)
                            } else {
                                (&mut changes.upserts, &mut changes.upsert_origins)
                            };
                            for _ in 0..net.unsigned_abs() {
                                rows.push(row.clone());
                                origins.push(origin);
                            }
                        }
                    }
                }
                changes
            })
            .collect();
        ApplyBatch {
            pipeline: pipeline.to_string(),
            tables,
            positions: self.positions,
            checkpoint: Checkpoint {
                position: self.position.unwrap_or_default(),
                snapshot_complete,
                copy_progress: None,
            },
        }
    }
}

/// A keyless table's deletes grouped for "delete `n` rows equal to this image": runs of
/// equal consecutive rows (the batch builder emits the copies of one image together; equal
/// rows that are not adjacent just form separate runs, which deletes the same total).
pub fn equal_runs(rows: &[Vec<Value>]) -> Vec<(&[Value], usize)> {
    let mut runs: Vec<(&[Value], usize)> = Vec::new();
    for row in rows {
        match runs.last_mut() {
            Some((last, n)) if *last == row.as_slice() => *n += 1,
            _ => runs.push((row, 1)),
        }
    }
    runs
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Column, ColumnType, Engine};

    fn schema() -> Arc<TableSchema> {
        let col = |name: &str| Column {
            name: name.into(),
            kind: ColumnType::Int64,
            native_type: "bigint".into(),
            nullable: true,
            existing_rows_value: None,
        };
        Arc::new(TableSchema {
            id: TableId::new("public", "t"),
            engine: Engine::Postgres,
            columns: vec![col("id"), col("v"), col("big")],
            key: vec![0],
            enum_labels: vec![],
        })
    }

    fn ev(s: &Arc<TableSchema>, op: Op, before: Option<[i64; 3]>, after: Option<Vec<Value>>) -> ChangeEvent {
        ChangeEvent { table: s.clone(), op, before: before.map(|b| b.iter().map(|&x| Value::Int(x)).collect()), after }
    }

    fn row(v: [i64; 3]) -> Vec<Value> {
        v.iter().map(|&x| Value::Int(x)).collect()
    }

    fn tx(pos: &str, events: Vec<ChangeEvent>) -> Transaction {
        Transaction { position: pos.into(), position_num: None, commit_time: SystemTime::now(), events }
    }

    #[test]
    fn insert_update_delete_of_one_key_coalesce_to_final_state() {
        let s = schema();
        let renames = HashMap::new();
        let mut b = BatchBuilder::new(&renames);
        b.push_transaction(tx("0/1", vec![ev(&s, Op::Insert, None, Some(row([1, 10, 100])))]));
        b.push_transaction(tx(
            "0/2",
            vec![ev(&s, Op::Update, None, Some(vec![Value::Int(1), Value::Int(11), Value::Unchanged]))],
        ));
        b.push_transaction(tx(
            "0/3",
            vec![ev(&s, Op::Insert, None, Some(row([2, 20, 200]))), ev(&s, Op::Delete, Some([2, 0, 0]), None)],
        ));
        let batch = b.finish("p", true);
        assert_eq!(batch.checkpoint.position, "0/3");
        let t = &batch.tables[0];
        assert_eq!(t.upserts, vec![row([1, 11, 100])], "unchanged column filled from the earlier insert");
        assert_eq!(t.deletes.len(), 1);
    }

    #[test]
    fn key_change_deletes_old_key_and_truncate_wipes_earlier_rows() {
        let s = schema();
        let renames = HashMap::new();
        let mut b = BatchBuilder::new(&renames);
        b.push_transaction(tx("0/1", vec![ev(&s, Op::Update, Some([1, 0, 0]), Some(row([5, 1, 1])))]));
        let batch = b.finish("p", true);
        assert_eq!(batch.tables[0].deletes, vec![row([1, 0, 0])]);
        assert_eq!(batch.tables[0].upserts, vec![row([5, 1, 1])]);

        let mut b = BatchBuilder::new(&renames);
        b.push_transaction(tx("0/1", vec![ev(&s, Op::Insert, None, Some(row([1, 1, 1])))]));
        b.push_transaction(tx(
            "0/2",
            vec![ev(&s, Op::Truncate, None, None), ev(&s, Op::Insert, None, Some(row([2, 2, 2])))],
        ));
        let batch = b.finish("p", true);
        assert!(batch.tables[0].truncate);
        assert_eq!(batch.tables[0].upserts, vec![row([2, 2, 2])]);
    }

    #[test]
    fn key_change_with_unchanged_toast_becomes_a_move_unless_the_batch_can_fill_it() {
        let s = schema();
        let renames = HashMap::new();
        let moved = vec![Value::Int(9), Value::Int(1), Value::Unchanged];
        let mut b = BatchBuilder::new(&renames);
        b.push_transaction(tx("0/1", vec![ev(&s, Op::Update, Some([1, 0, 0]), Some(moved.clone()))]));
        let batch = b.finish("p", true);
        assert_eq!(batch.tables[0].moves.len(), 1);
        assert_eq!(batch.tables[0].moves[0].from, row([1, 0, 0]));
        assert_eq!(batch.tables[0].deletes, vec![row([1, 0, 0])]);
        assert!(batch.tables[0].upserts.is_empty());

        // The old key was inserted earlier in the batch: its values fill the moved row.
        let mut b = BatchBuilder::new(&renames);
        b.push_transaction(tx("0/1", vec![ev(&s, Op::Insert, None, Some(row([1, 5, 500])))]));
        b.push_transaction(tx("0/2", vec![ev(&s, Op::Update, Some([1, 0, 0]), Some(moved))]));
        let batch = b.finish("p", true);
        assert!(batch.tables[0].moves.is_empty());
        assert_eq!(batch.tables[0].upserts, vec![row([9, 1, 500])]);
    }

    #[test]
    fn keyless_rows_coalesce_to_net_copies_per_image() {
        let mut s = (*schema()).clone();
        s.key.clear();
        let s = Arc::new(s);
        let renames = HashMap::new();
        let mut b = BatchBuilder::new(&renames);
        // Two equal rows inserted, one of them updated, then a pre-existing row deleted
        // twice (two copies existed) and a row inserted and deleted again.
        b.push_transaction(tx(
            "0/1",
            vec![
                ev(&s, Op::Insert, None, Some(row([1, 1, 1]))),
                ev(&s, Op::Insert, None, Some(row([1, 1, 1]))),
                ev(&s, Op::Update, Some([1, 1, 1]), Some(vec![Value::Int(1), Value::Int(2), Value::Unchanged])),
                ev(&s, Op::Delete, Some([7, 7, 7]), None),
                ev(&s, Op::Delete, Some([7, 7, 7]), None),
                ev(&s, Op::Insert, None, Some(row([3, 3, 3]))),
                ev(&s, Op::Delete, Some([3, 3, 3]), None),
            ],
        ));
        let batch = b.finish("p", true);
        let t = &batch.tables[0];
        let mut upserts = t.upserts.clone();
        upserts.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(
            upserts,
            vec![row([1, 1, 1]), row([1, 2, 1])],
            "one copy stays, the updated one has its filled value"
        );
        assert_eq!(t.deletes, vec![row([7, 7, 7]), row([7, 7, 7])], "two copies removed");
    }

    #[test]
    fn schema_change_starts_a_new_segment_and_renames_apply() {
        let s1 = schema();
        let mut s2 = (*s1).clone();
        s2.columns.push(Column {
            name: "extra".into(),
            kind: ColumnType::Text,
            native_type: "text".into(),
            nullable: true,
            existing_rows_value: None,
        });
        let s2 = Arc::new(s2);
        let mut renames = HashMap::new();
        renames.insert(TableId::new("public", "t"), TableId::new("replica", "t2"));
        let mut b = BatchBuilder::new(&renames);
        b.push_transaction(tx("0/1", vec![ev(&s1, Op::Insert, None, Some(row([1, 1, 1])))]));
        b.push_transaction(tx("0/2", vec![ev(&s2, Op::Delete, Some([1, 0, 0]), None)]));
        let batch = b.finish("p", true);
        assert_eq!(batch.tables.len(), 2);
        assert_eq!(batch.tables[1].target, TableId::new("replica", "t2"));
        assert_eq!(batch.tables[1].deletes.len(), 1);
    }

    #[test]
    fn equal_runs_group_adjacent_copies() {
        let a = vec![Value::Int(1)];
        let b = vec![Value::Int(2)];
        let rows = vec![a.clone(), a.clone(), b.clone(), a.clone()];
        let runs = equal_runs(&rows);
        assert_eq!(runs, vec![(a.as_slice(), 2), (b.as_slice(), 1), (a.as_slice(), 1)]);
    }
}
