//! Replaying the dead letters of a Postgres target (listing goes through `Sink`).

use tidewater_core::{ConnectorError, TableId};

use crate::catalog::table_schema;
use crate::conn::{connect, PgEndpoint};
use crate::sql::{pg_error, quote_ident, quote_table};

/// The outcome of replaying one dead letter.
#[derive(Debug, Clone)]
pub struct ReplayResult {
    pub id: i64,
    pub ok: bool,
    pub message: String,
}

/// Replays dead letters of `pipeline` (all not yet replayed, or just `only_id`).
///
/// A replay re-reads the row's *current* state from the source by its key and applies it
/// (upsert, or delete when the source no longer has it), so it converges to the source
/// even when the key changed again after the rejected event. Each replay is its own
/// target transaction that also sets `replayed_at`; one that fails keeps the row, records
/// the new error, and is reported.
pub async fn replay(
    source_endpoint: &PgEndpoint,
    target_endpoint: &PgEndpoint,
    pipeline: &str,
    only_id: Option<i64>,
) -> Result<Vec<ReplayResult>, ConnectorError> {
    let source = connect(source_endpoint).await?;
    let mut target = connect(target_endpoint).await?;
    let rows = target
        .query(
            "SELECT id, source_table, target_table, payload FROM public.tidewater_dead_letters \
             WHERE pipeline = $1 AND replayed_at IS NULL AND ($2::int8 IS NULL OR id = $2) ORDER BY id",
            &[&pipeline, &only_id],
        )
        .await
        .map_err(|e| pg_error("reading tidewater_dead_letters", e))?;
    let mut results = Vec::new();
    for row in rows {
        let id: i64 = row.get(0);
        let source_table = TableId::parse(&row.get::<_, String>(1), "public");
        let target_table = TableId::parse(&row.get::<_, String>(2), "public");
        let payload: serde_json::Value = row.get(3);
        let outcome = replay_one(&source, &mut target, &source_table, &target_table, &payload, id).await;
        let result = match outcome {
            Ok(message) => ReplayResult { id, ok: true, message },
            Err(e) => {
                let _ = target
                    .execute(
                        "UPDATE public.tidewater_dead_letters SET error = $2 WHERE id = $1",
                        &[&id, &format!("replay failed: {e}")],
                    )
                    .await;
                ReplayResult { id, ok: false, message: e.to_string() }
            }
        };
        results.push(result);
    }
    Ok(results)
}

async fn replay_one(
    source: &tokio_postgres::Client,
    target: &mut tokio_postgres::Client,
    source_table: &TableId,
    target_table: &TableId,
    payload: &serde_json::Value,
    id: i64,
) -> Result<String, ConnectorError> {
    let relid: u32 = source
        .query_opt("SELECT to_regclass($1)::oid", &[&quote_table(source_table)])
        .await
        .map_err(|e| pg_error("looking up the source table", e))?
        .and_then(|r| r.get::<_, Option<u32>>(0))
        .ok_or_else(|| ConnectorError::fatal(format!("source table {source_table} no longer exists")))?;
    let schema = table_schema(source, source_table, relid, None).await?;
    let key_names = schema.key_names();
    let key_values: Vec<Option<String>> = key_names
        .iter()
        .map(|k| match payload.get(*k) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        })
        .collect();
    if key_values.iter().any(Option::is_none) {
        return Err(ConnectorError::fatal(format!("dead letter {id} has no value for a key column of {source_table}")));
    }
    let cast_map = crate::catalog::cast_types(source, source_table).await?;
    let key_match = |alias: &str, offset: usize| {
        schema
            .key
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                let col = &schema.columns[i];
                let cast = cast_map.get(&col.name).map_or("text", String::as_str);
                format!("{alias}.{} = ${}::text::{cast}", quote_ident(&col.name), offset + n + 1)
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        key_values.iter().map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
    let current = source
        .query_opt(
            &format!("SELECT to_jsonb(t) FROM {} t WHERE {}", quote_table(source_table), key_match("t", 0)),
            &params,
        )
        .await
        .map_err(|e| pg_error(format_args!("reading the current row from {source_table}"), e))?
        .map(|r| r.get::<_, serde_json::Value>(0));
    let tx = target.transaction().await.map_err(|e| pg_error("starting a target transaction", e))?;
    let message = match current {
        Some(row) => {
            let cols: Vec<String> = schema.columns.iter().map(|c| quote_ident(&c.name)).collect();
            let keys: Vec<String> = key_names.iter().map(|k| quote_ident(k)).collect();
            let non_key: Vec<&String> = cols.iter().filter(|c| !keys.contains(c)).collect();
            let conflict = if non_key.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!(
                    "DO UPDATE SET {}",
                    non_key.iter().map(|c| format!("{c} = EXCLUDED.{c}")).collect::<Vec<_>>().join(", ")
                )
            };
            let sql = format!(
                "INSERT INTO {t} ({c}) SELECT {c} FROM jsonb_populate_record(NULL::{t}, $1) ON CONFLICT ({k}) {conflict}",
                t = quote_table(target_table),
                c = cols.join(", "),
                k = keys.join(", "),
            );
            tx.execute(&sql, &[&row])
                .await
                .map_err(|e| pg_error(format_args!("writing the row into {target_table}"), e))?;
            format!("row re-applied to {target_table} from the source's current state")
        }
        None => {
            let sql = format!("DELETE FROM {} t WHERE {}", quote_table(target_table), key_match("t", 0));
            tx.execute(&sql, &params).await.map_err(|e| pg_error(format_args!("deleting from {target_table}"), e))?;
            format!("row no longer exists at the source: deleted from {target_table}")
        }
    };
    tx.execute("UPDATE public.tidewater_dead_letters SET replayed_at = now() WHERE id = $1", &[&id])
        .await
        .map_err(|e| pg_error("marking the dead letter replayed", e))?;
    tx.commit().await.map_err(|e| pg_error("committing the replay", e))?;
    Ok(message)
}
