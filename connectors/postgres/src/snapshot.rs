//! Reading a table with a key out of an open snapshot, in key order, one chunk per
//! statement (keyset pagination: `WHERE (key) > (last key) ORDER BY key LIMIT n`).
//!
//! Each chunk's range starts after the greatest key of the chunk before, so a copy
//! interrupted after any chunk continues from the next key; the key values are bound as
//! parameters (text, cast to each key column's type on the server).

use std::sync::Arc;

use tidewater_core::{ConnectorError, RawFormat, RawRows, SnapshotChunk, TableSchema, Value};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, SimpleQueryMessage, SimpleQueryRow};

use crate::sql::{pg_error, quote_ident};

/// The order a table with a key is read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrder {
    /// The key's own order (its index's, so the read is an index range scan).
    Index,
    /// Text key columns by their bytes (`COLLATE "C"`), the order every target can
    /// compare in (a resync clears the target's rows by key range). Without an index in
    /// that collation each chunk sorts the rest of the table.
    Bytes,
}

/// The text of the chunk query of `table` read from `from` (a table or a query's FROM
/// item), with or without the lower bound on the key. Key casts come from `casts`
/// (column name → `format_type` of its type).
pub fn chunk_sql(
    table: &TableSchema,
    from: &str,
    casts: &std::collections::HashMap<String, String>,
    bounded: bool,
    limit: usize,
    order: KeyOrder,
) -> String {
    // Plain columns: the query runs under a cursor whose rows are fetched over the simple
    // query protocol, which sends each value as its type's text output (as `COPY` and
    // pgoutput do). The key is named through the table's alias: a bare name in ORDER BY
    // would mean an output column.
    let select = table.columns.iter().map(|c| format!("r.{}", quote_ident(&c.name))).collect::<Vec<_>>();
    let bytewise = |i: usize| order == KeyOrder::Bytes && table.columns[i].kind.is_text_like();
    let keys: Vec<String> = table
        .key
        .iter()
        .map(|&i| {
            let key = format!("r.{}", quote_ident(&table.columns[i].name));
            if bytewise(i) {
                format!("({key} COLLATE \"C\")")
            } else {
                key
            }
        })
        .collect();
    let mut sql = format!("SELECT {} FROM {from} AS r", select.join(", "));
    if bounded {
        let params: Vec<String> = table
            .key
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                let cast = casts.get(&table.columns[i].name).map_or("text", String::as_str);
                if bytewise(i) {
                    format!("(${}::text::{cast} COLLATE \"C\")", n + 1)
                } else {
                    format!("${}::text::{cast}", n + 1)
                }
            })
            .collect();
        sql.push_str(&format!(" WHERE ({}) > ({})", keys.join(", "), params.join(", ")));
    }
    sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", keys.join(", ")));
    sql
}

/// Sends the rows of `table` (which has a key) whose key is greater than `after` (all
/// rows without it), in key order, in chunks of `chunk_rows`; with `raw`, as `COPY` text
/// (see [`tidewater_core::RawFormat::PgCopyText`]) instead of decoded values.
#[allow(clippy::too_many_arguments)]
pub async fn read_keyed(
    reader: &Client,
    table: &Arc<TableSchema>,
    from: &str,
    casts: &std::collections::HashMap<String, String>,
    chunk_rows: usize,
    after: Option<&[Value]>,
    raw: bool,
    out: &mpsc::Sender<SnapshotChunk>,
) -> Result<(), ConnectorError> {
    let chunk_rows = chunk_rows.max(1);
    let mut bound: Option<Vec<Value>> = after.map(<[Value]>::to_vec);
    loop {
        let rows = fetch(reader, table, from, casts, chunk_rows, bound.as_deref(), KeyOrder::Index).await?;
        let count = rows.len();
        if count == 0 {
            return Ok(());
        }
        let chunk = if raw {
            SnapshotChunk { table: table.clone(), rows: Vec::new(), raw: Some(raw_rows(table, &rows)?) }
        } else {
            SnapshotChunk::new(table.clone(), decode(table, &rows)?)
        };
        bound = chunk.last_key();
        out.send(chunk).await.map_err(|_| ConnectorError::transient("snapshot consumer stopped"))?;
        if count < chunk_rows {
            return Ok(());
        }
    }
}

/// The first `chunk_rows` rows of `table` (which has a key) in `order` whose key is
/// greater than `after` (from the first row without it).
pub async fn read_chunk(
    reader: &Client,
    table: &Arc<TableSchema>,
    from: &str,
    casts: &std::collections::HashMap<String, String>,
    chunk_rows: usize,
    after: Option<&[Value]>,
    order: KeyOrder,
) -> Result<Vec<Vec<Value>>, ConnectorError> {
    let rows = fetch(reader, table, from, casts, chunk_rows, after, order).await?;
    decode(table, &rows)
}

/// The rows of one chunk (see [`read_chunk`]), each value as its type's text output.
async fn fetch(
    reader: &Client,
    table: &Arc<TableSchema>,
    from: &str,
    casts: &std::collections::HashMap<String, String>,
    chunk_rows: usize,
    after: Option<&[Value]>,
    order: KeyOrder,
) -> Result<Vec<SimpleQueryRow>, ConnectorError> {
    let chunk_rows = chunk_rows.max(1);
    let what = || format!("copying {}", table.id);
    let sql = chunk_sql(table, from, casts, after.is_some(), chunk_rows, order);
    let bound: Vec<Option<String>> = after.map(|key| key.iter().map(Value::to_pg_text).collect()).unwrap_or_default();
    let params: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|k| k as &(dyn ToSql + Sync)).collect();
    // A cursor takes the bound key (the extended protocol), the simple protocol fetches
    // its rows as text: each type's output, without a conversion per value on the server.
    reader
        .execute(&format!("DECLARE tidewater_chunk NO SCROLL CURSOR FOR {sql}"), &params)
        .await
        .map_err(|e| pg_error(what(), e))?;
    let messages = reader
        .simple_query("FETCH ALL FROM tidewater_chunk; CLOSE tidewater_chunk")
        .await
        .map_err(|e| pg_error(what(), e))?;
    let mut rows = Vec::with_capacity(chunk_rows);
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            if row.len() != table.columns.len() {
                return Err(ConnectorError::fatal(format!(
                    "copying {}: {} values for {} columns",
                    table.id,
                    row.len(),
                    table.columns.len()
                )));
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

fn decode(table: &TableSchema, rows: &[SimpleQueryRow]) -> Result<Vec<Vec<Value>>, ConnectorError> {
    rows.iter().map(|row| crate::source::decode_text_values(table, |i| row.get(i))).collect()
}

/// The rows as `COPY` text, and the last row's key decoded.
fn raw_rows(table: &TableSchema, rows: &[SimpleQueryRow]) -> Result<RawRows, ConnectorError> {
    let mut data = bytes::BytesMut::with_capacity(rows.len() * 128);
    for row in rows {
        for i in 0..table.columns.len() {
            if i > 0 {
                data.extend_from_slice(b"\t");
            }
            match row.get(i) {
                None => data.extend_from_slice(b"\\N"),
                Some(text) => crate::copy_text::escape(&mut data, text.as_bytes()),
            }
        }
        data.extend_from_slice(b"\n");
    }
    let last_key = match rows.last() {
        Some(row) => {
            let values =
                crate::source::decode_text_values(table, |i| if table.key.contains(&i) { row.get(i) } else { None })?;
            Some(table.key.iter().map(|&i| values[i].clone()).collect())
        }
        None => None,
    };
    Ok(RawRows { format: RawFormat::PgCopyText, data: Arc::from(&data[..]), count: rows.len(), last_key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidewater_core::{Column, ColumnType, TableId};

    fn column(name: &str) -> Column {
        Column {
            name: name.into(),
            kind: ColumnType::Int64,
            native_type: "bigint".into(),
            nullable: false,
            existing_rows_value: None,
        }
    }

    #[test]
    fn chunk_queries_page_by_the_whole_key_with_bound_values() {
        let table = TableSchema {
            id: TableId::new("s", "t"),
            columns: vec![column("a"), column("Val"), column("b")],
            engine: tidewater_core::Engine::Postgres,
            key: vec![0, 2],
            enum_labels: Vec::new(),
        };
        let casts = [("a".to_string(), "bigint".to_string()), ("b".to_string(), "text".to_string())].into();
        let out = |c: &str| format!("r.\"{c}\"");
        let (a, val, b) = (out("a"), out("Val"), out("b"));
        assert_eq!(
            chunk_sql(&table, "\"s\".\"t\"", &casts, false, 10, KeyOrder::Index),
            format!("SELECT {a}, {val}, {b} FROM \"s\".\"t\" AS r ORDER BY r.\"a\", r.\"b\" LIMIT 10")
        );
        assert_eq!(
            chunk_sql(&table, "\"s\".\"t\"", &casts, true, 10, KeyOrder::Index),
            format!(
                "SELECT {a}, {val}, {b} FROM \"s\".\"t\" AS r \
             WHERE (r.\"a\", r.\"b\") > ($1::text::bigint, $2::text::text) ORDER BY r.\"a\", r.\"b\" LIMIT 10"
            )
        );
    }
}
