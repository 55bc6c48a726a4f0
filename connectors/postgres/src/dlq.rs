//! Reading the dead-letter table of a Postgres target.

use tidewater_core::ConnectorError;

use crate::conn::{connect, PgEndpoint};
use crate::sql::pg_error;

#[derive(Debug, Clone)]
pub struct DeadLetterRow {
    pub id: i64,
    pub source_position: String,
    pub source_table: String,
    pub target_table: String,
    pub op: String,
    pub payload: String,
    pub error: String,
    pub failed_at: String,
    pub replayed_at: Option<String>,
}

pub async fn list(endpoint: &PgEndpoint, pipeline: &str) -> Result<Vec<DeadLetterRow>, ConnectorError> {
    let client = connect(endpoint).await?;
    let rows = client
        .query(
            "SELECT id, source_position, source_table, target_table, op, payload::text, error, \
                    to_char(failed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                    to_char(replayed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
             FROM public.tidewater_dead_letters WHERE pipeline = $1 ORDER BY id",
            &[&pipeline],
        )
        .await
        .map_err(|e| pg_error("reading tidewater_dead_letters", e))?;
    Ok(rows
        .iter()
        .map(|r| DeadLetterRow {
            id: r.get(0),
            source_position: r.get(1),
            source_table: r.get(2),
            target_table: r.get(3),
            op: r.get(4),
            payload: r.get(5),
            error: r.get(6),
            failed_at: r.get(7),
            replayed_at: r.get(8),
        })
        .collect())
}
