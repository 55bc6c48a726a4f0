//! Change events and transactions.

use std::sync::Arc;
use std::time::SystemTime;

use crate::schema::TableSchema;
use crate::value::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
}

/// One row change. Rows are full-width, ordered like `table.columns`.
///
/// - Insert: `after`.
/// - Update: `after` (may hold [`Value::Unchanged`]); `before` when the source sent the
///   old key or old row (a key-changing update always has it).
/// - Delete: `before` (at least the key columns are set).
/// - Truncate: neither.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub table: Arc<TableSchema>,
    pub op: Op,
    pub before: Option<Vec<Value>>,
    pub after: Option<Vec<Value>>,
}

impl ChangeEvent {
    /// The key values of the row this event leaves behind (after) or removes (before).
    pub fn key_of(&self, row: &[Value], out: &mut Vec<u8>) {
        out.clear();
        for &i in &self.table.key {
            row.get(i).unwrap_or(&Value::Null).encode_key(out);
        }
    }

    /// The event as JSON, for the dead-letter table.
    pub fn to_json(&self) -> serde_json::Value {
        let row_json = |row: &Option<Vec<Value>>| match row {
            None => serde_json::Value::Null,
            Some(values) => serde_json::Value::Object(
                self.table.columns.iter().zip(values).map(|(c, v)| (c.name.clone(), v.to_json())).collect(),
            ),
        };
        serde_json::json!({
            "table": self.table.id.to_string(),
            "op": self.op.as_str(),
            "before": row_json(&self.before),
            "after": row_json(&self.after),
        })
    }
}

/// A whole committed source transaction.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// Source position at the end of the commit; what the checkpoint stores once applied.
    pub position: String,
    /// Numeric form of `position` for lag arithmetic where the source has one (Postgres LSN).
    pub position_num: Option<u64>,
    pub commit_time: SystemTime,
    pub events: Vec<ChangeEvent>,
}

/// The progress stored in the target, in the same transaction as the data it covers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    pub position: String,
    /// False while the initial snapshot is being copied; a restart then continues it
    /// from `copy_progress` (or redoes it when that cannot be done).
    pub snapshot_complete: bool,
    /// How far an unfinished snapshot has copied each table, as JSON text owned by the
    /// engine (sinks store and return it unchanged); `None` outside a snapshot.
    pub copy_progress: Option<String>,
}

impl Checkpoint {
    /// A checkpoint at `position` without copy progress.
    pub fn new(position: impl Into<String>, snapshot_complete: bool) -> Self {
        Checkpoint { position: position.into(), snapshot_complete, copy_progress: None }
    }
}
