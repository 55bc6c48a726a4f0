//! `tidewater verify` for every source/target pair.
//!
//! Postgres → Postgres compares inside the two servers (row counts and hash sums per key
//! range, see `tidewater_postgres::verify`). Every other pair goes through the target's
//! own write path: the source's rows are read from one consistent snapshot, written into
//! an empty scratch copy of the target table by the sink exactly as replication writes
//! them (same type mapping, same conversions), and the target then compares the scratch
//! table with the real one by key, column by column. The scratch table is dropped at the
//! end. Memory stays bounded (rows flow through in chunks); the target needs room for one
//! more copy of the table while it runs.

use std::sync::Arc;

use tidewater_core::{
    Comparison, ConnectorError, ErrorClass, Sink, SnapshotChunk, Source, TableChanges, TableId, TablePlan, TableSchema,
    Value,
};
use tokio::sync::mpsc;

use crate::config::PipelineConfig;

/// Source rows per chunk written into the scratch table.
const CHUNK_ROWS: usize = 5_000;
/// Example keys reported per kind of difference.
pub const EXAMPLES: usize = 10;

/// The verdict on one table.
#[derive(Debug)]
pub struct TableReport {
    pub source: TableId,
    pub target: TableId,
    pub source_rows: u64,
    pub comparison: Comparison,
    /// Source rows the target cannot store at all (key as text, the target's error): the
    /// target necessarily differs there (they are dead letters, or will be).
    pub unstorable: Vec<(Vec<String>, String)>,
}

impl TableReport {
    pub fn matches(&self) -> bool {
        self.comparison.matches() && self.unstorable.is_empty()
    }
}

/// Verifies every table of `cfg` through scratch tables; one result per table.
pub async fn verify_with_scratch(
    cfg: &PipelineConfig,
) -> Result<Vec<Result<TableReport, (TablePlan, ConnectorError)>>, ConnectorError> {
    let mut source = crate::connectors::source(cfg)?;
    let mut sink = crate::connectors::sink(cfg)?;
    sink.prepare().await?;
    let schemas = source.describe().await?;
    let (plans, _) = crate::engine::plans(cfg, schemas);
    source.begin_backfill().await?;
    let mut reports = Vec::with_capacity(plans.len());
    for plan in plans {
        let scratch = sink.create_scratch(&plan.source, &plan.target).await?;
        let outcome = verify_table(source.as_mut(), sink.as_mut(), &plan, &scratch).await;
        let dropped = sink.drop_scratch(&scratch).await;
        match (outcome, dropped) {
            (Ok(report), Ok(())) => reports.push(Ok(report)),
            (Err(e), _) | (Ok(_), Err(e)) => reports.push(Err((plan, e))),
        }
    }
    Ok(reports)
}

async fn verify_table(
    source: &mut dyn Source,
    sink: &mut dyn Sink,
    plan: &TablePlan,
    scratch: &TableId,
) -> Result<TableReport, ConnectorError> {
    let schema = &plan.source;
    let (tx, mut rx) = mpsc::channel::<SnapshotChunk>(2);
    let read = async move {
        let result = source.snapshot_table(schema, CHUNK_ROWS, None, &tx).await;
        drop(tx);
        result
    };
    let mut source_rows = 0u64;
    let mut unstorable = Vec::new();
    let load = async {
        while let Some(chunk) = rx.recv().await {
            source_rows += chunk.rows.len() as u64;
            load_chunk(sink, schema, scratch, chunk.rows, &mut unstorable).await?;
        }
        Ok::<(), ConnectorError>(())
    };
    let (read, load) = tokio::join!(read, load);
    // A failed load closes the channel, which fails the read as well: report the load's.
    load?;
    read?;
    let comparison = sink.compare_scratch(schema, &plan.target, scratch, EXAMPLES).await?;
    Ok(TableReport { source: schema.id.clone(), target: plan.target.clone(), source_rows, comparison, unstorable })
}

/// Writes `rows` into the scratch table; when the target rejects the chunk, row by row,
/// setting aside the rows it cannot store.
async fn load_chunk(
    sink: &mut dyn Sink,
    schema: &Arc<TableSchema>,
    scratch: &TableId,
    rows: Vec<Vec<Value>>,
    unstorable: &mut Vec<(Vec<String>, String)>,
) -> Result<(), ConnectorError> {
    let changes = TableChanges::upserts(schema.clone(), scratch.clone(), rows);
    match sink.apply_changes(&changes, None).await {
        Err(e) if e.class == ErrorClass::Event => {}
        other => return other.map(drop),
    }
    for row in changes.upserts {
        let key: Vec<String> =
            schema.key.iter().map(|&i| row[i].to_pg_text().unwrap_or_else(|| "NULL".into())).collect();
        let single = TableChanges::upserts(schema.clone(), scratch.clone(), vec![row]);
        match sink.apply_changes(&single, None).await {
            Err(e) if e.class == ErrorClass::Event => unstorable.push((key, e.to_string())),
            other => other.map(drop)?,
        }
    }
    Ok(())
}
