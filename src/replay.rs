//! `tidewater dlq replay` for every source/target pair.
//!
//! A replay re-reads the row's *current* state from the source by its key and applies it
//! through the sink's normal write path (upsert, or delete when the source no longer has
//! the row), so it converges to the source even when the row changed again after the
//! rejected event. Each replay is its own target transaction that also sets
//! `replayed_at`; one that fails keeps the dead letter, records the new error on it, and
//! is reported. A dead letter of a table without a key is not replayed (it cannot be
//! matched to one source row); it stays pending with that reason recorded.

use std::sync::Arc;

use tidewater_core::{ConnectorError, DeadLetterRecord, Sink, Source, TableChanges, TablePlan, Value};

use crate::config::PipelineConfig;

/// The outcome of replaying one dead letter.
#[derive(Debug, Clone)]
pub struct ReplayResult {
    pub id: i64,
    pub ok: bool,
    pub message: String,
}

/// Replays the pending dead letters of `cfg`'s pipeline (all, or just `only_id`).
pub async fn replay(cfg: &PipelineConfig, only_id: Option<i64>) -> Result<Vec<ReplayResult>, ConnectorError> {
    let mut sink = crate::connectors::sink(cfg)?;
    sink.prepare().await?;
    let pending: Vec<DeadLetterRecord> = sink
        .list_dead_letters(&cfg.name)
        .await?
        .into_iter()
        .filter(|r| r.replayed_at.is_none() && only_id.is_none_or(|id| id == r.id))
        .collect();
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let mut source = crate::connectors::source(cfg)?;
    let (plans, _) = crate::engine::plans(cfg, source.describe().await?);
    let mut results = Vec::with_capacity(pending.len());
    for record in pending {
        let id = record.id;
        let result = match replay_one(source.as_mut(), sink.as_mut(), &plans, &record).await {
            Ok(message) => ReplayResult { id, ok: true, message },
            Err(e) => {
                let message = e.to_string();
                if let Err(note) = sink.note_replay_failure(id, &format!("replay failed: {message}")).await {
                    tracing::warn!(id, error = %note, "could not record the replay failure on the dead letter");
                }
                ReplayResult { id, ok: false, message }
            }
        };
        results.push(result);
    }
    Ok(results)
}

async fn replay_one(
    source: &mut dyn Source,
    sink: &mut dyn Sink,
    plans: &[TablePlan],
    record: &DeadLetterRecord,
) -> Result<String, ConnectorError> {
    let plan = plans.iter().find(|p| p.source.id.to_string() == record.source_table).ok_or_else(|| {
        ConnectorError::fatal(format!(
            "source table {} is no longer among the pipeline's tables (or no longer exists)",
            record.source_table
        ))
    })?;
    let schema = &plan.source;
    if schema.key.is_empty() {
        // Without a key the dead letter cannot name one source row: re-reading "by key"
        // would pick any row, and re-applying the stored payload could revive a row the
        // source deleted since. Keep it pending instead of guessing.
        return Err(ConnectorError::fatal(format!(
            "{} has no primary key, so a dead letter cannot be matched to one source row; it stays \
             pending. Fix the cause, then copy the table again (`tidewater verify` shows the difference)",
            record.source_table
        )));
    }
    let payload: serde_json::Value = serde_json::from_str(&record.payload)
        .map_err(|e| ConnectorError::fatal(format!("dead letter {}: payload is not JSON: {e}", record.id)))?;
    let key = schema
        .key
        .iter()
        .map(|&i| {
            let column = &schema.columns[i];
            let raw = payload.get(&column.name).filter(|v| !v.is_null()).ok_or_else(|| {
                ConnectorError::fatal(format!("dead letter {} has no value for key column {}", record.id, column.name))
            })?;
            Value::from_json(&column.kind, raw).map_err(|e| {
                ConnectorError::fatal(format!("dead letter {}: key column {}: {e}", record.id, column.name))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let target = plan.target.clone();
    let (changes, message) = match source.fetch_row(schema, &key).await? {
        Some(row) => (
            TableChanges::upserts(Arc::clone(schema), target.clone(), vec![row]),
            format!("row re-applied to {target} from the source's current state"),
        ),
        None => {
            let mut row = vec![Value::Null; schema.columns.len()];
            for (&i, value) in schema.key.iter().zip(key) {
                row[i] = value;
            }
            let mut changes = TableChanges::upserts(Arc::clone(schema), target.clone(), Vec::new());
            changes.deletes.push(row);
            (changes, format!("row no longer exists at the source: deleted from {target}"))
        }
    };
    sink.apply_changes(&changes, Some(record.id)).await?;
    Ok(message)
}
