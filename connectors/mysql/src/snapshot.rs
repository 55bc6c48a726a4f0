//! Consistent initial snapshot: a REPEATABLE READ transaction whose binlog position is
//! known exactly, read table by table with streaming SELECTs.
//!
//! - MariaDB: `START TRANSACTION WITH CONSISTENT SNAPSHOT`, then the status variables
//!   `binlog_snapshot_file` / `binlog_snapshot_position` give the binlog position of exactly
//!   that snapshot, without any lock; `BINLOG_GTID_POS()` turns it into a GTID state.
//! - MySQL (documented method, as mysqldump `--single-transaction --source-data` does):
//!   `FLUSH TABLES WITH READ LOCK` briefly stops commits, the consistent-snapshot
//!   transaction starts, `SHOW MASTER STATUS` (8.2+: `SHOW BINARY LOG STATUS`) reads the
//!   position, `UNLOCK TABLES` lets writes go on. Needs the RELOAD privilege.

use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use tidewater_core::{ConnectorError, SnapshotChunk, TableSchema, Value};
use tokio::sync::mpsc;

use crate::binlog_pos::{BinlogPosition, GtidState};
use crate::decode::{from_protocol, ValueKind};
use crate::quote::{quote_ident, quote_table};
use crate::source_conn::{col, gtid_at, my_error, rows, Flavour, ServerInfo};

/// How the snapshot position is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionQuery {
    /// `SHOW STATUS LIKE 'binlog_snapshot_%'` inside the snapshot transaction (MariaDB).
    SnapshotStatus,
    /// The binlog head while commits are blocked (MySQL).
    BinlogStatus(&'static str),
}

/// The statements that open a snapshot, by flavour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPlan {
    pub setup: Vec<&'static str>,
    pub position: PositionQuery,
    pub release: Vec<&'static str>,
}

const SESSION: &str =
    "SET SESSION net_write_timeout = 3600, SESSION net_read_timeout = 3600, SESSION wait_timeout = 86400";
const ISOLATION: &str = "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ";
const START: &str = "START TRANSACTION WITH CONSISTENT SNAPSHOT";

pub fn snapshot_plan(info: &ServerInfo) -> SnapshotPlan {
    match info.flavour {
        Flavour::MariaDb => SnapshotPlan {
            setup: vec![SESSION, ISOLATION, START],
            position: PositionQuery::SnapshotStatus,
            release: vec![],
        },
        Flavour::MySql => SnapshotPlan {
            setup: vec![SESSION, ISOLATION, "FLUSH TABLES WITH READ LOCK", START],
            position: PositionQuery::BinlogStatus(info.binlog_status_sql()),
            release: vec!["UNLOCK TABLES"],
        },
    }
}

/// The statements of a backfill: a consistent read without a position.
pub fn backfill_plan() -> Vec<&'static str> {
    vec![SESSION, ISOLATION, START]
}

async fn run(conn: &mut Conn, sql: &str) -> Result<(), ConnectorError> {
    conn.query_drop(sql).await.map_err(|e| my_error(format_args!("opening the snapshot ({sql})"), e))
}

/// Opens the snapshot transaction on `conn` and returns its binlog position.
pub async fn open(conn: &mut Conn, info: &ServerInfo) -> Result<BinlogPosition, ConnectorError> {
    let plan = snapshot_plan(info);
    for sql in &plan.setup {
        if let Err(e) = run(conn, sql).await {
            if sql.starts_with("FLUSH TABLES") && e.code.as_deref() == Some("1227") {
                return Err(ConnectorError::fatal(format!(
                    "{}; the MySQL snapshot needs FLUSH TABLES WITH READ LOCK: GRANT RELOAD ON *.* to the source user",
                    e.message
                )));
            }
            return Err(e);
        }
    }
    let read = read_position(conn, plan.position).await;
    for sql in &plan.release {
        run(conn, sql).await?;
    }
    let (file, pos) = read?;
    let gtid = match info.flavour {
        Flavour::MariaDb => Some(
            GtidState::parse(&gtid_at(conn, &file, pos).await?)
                .map_err(|e| ConnectorError::fatal(format!("BINLOG_GTID_POS returned an unreadable state: {e}")))?,
        ),
        Flavour::MySql => None,
    };
    Ok(BinlogPosition::new(file, pos, gtid))
}

async fn read_position(conn: &mut Conn, q: PositionQuery) -> Result<(String, u64), ConnectorError> {
    match q {
        PositionQuery::SnapshotStatus => {
            let sql = "SHOW STATUS LIKE 'binlog_snapshot_%'";
            let (mut file, mut pos) = (String::new(), None);
            for row in rows(conn, sql, "reading the snapshot's binlog position").await? {
                let name: String = col(&row, 0, sql)?;
                let value: String = col(&row, 1, sql)?;
                match name.to_ascii_lowercase().as_str() {
                    "binlog_snapshot_file" => file = value,
                    "binlog_snapshot_position" => pos = value.parse::<u64>().ok(),
                    _ => {}
                }
            }
            match (file.is_empty(), pos) {
                (false, Some(pos)) => Ok((file, pos)),
                _ => Err(ConnectorError::fatal(
                    "the source reports no binlog position for the snapshot (binlog_snapshot_file is empty): \
                     binary logging must be on (log_bin)",
                )),
            }
        }
        PositionQuery::BinlogStatus(sql) => {
            let rows = rows(conn, sql, "reading the binlog position").await?;
            let row = rows.first().ok_or_else(|| {
                ConnectorError::fatal(format!(
                    "{sql} returned nothing: binary logging is off on the source (set log_bin)"
                ))
            })?;
            Ok((col(row, 0, sql)?, col(row, 1, sql)?))
        }
    }
}

/// Opens a plain consistent read (backfill of tables added later). Returns its binlog
/// position where the server tells it without a lock (MariaDB), `None` otherwise.
pub async fn open_backfill(conn: &mut Conn, info: &ServerInfo) -> Result<Option<BinlogPosition>, ConnectorError> {
    for sql in backfill_plan() {
        run(conn, sql).await?;
    }
    match info.flavour {
        Flavour::MariaDb => {
            let (file, pos) = read_position(conn, PositionQuery::SnapshotStatus).await?;
            Ok(Some(BinlogPosition::new(file, pos, None)))
        }
        Flavour::MySql => Ok(None),
    }
}

/// The chunk query of a table with a key: the next `limit` rows in key order, after a
/// bound key when `bounded` (as `k1 > ? OR (k1 = ? AND k2 > ?) …`, which every MySQL and
/// MariaDB version plans as an index range; see [`bound_params`] for the parameters).
///
/// With `bytewise`, text key columns are compared by their bytes (`BINARY`), the order
/// every target can compare in (a resync clears the target's rows by key range); such a
/// read cannot use the key's index.
pub fn chunk_sql(table: &TableSchema, bounded: bool, limit: usize, bytewise: bool) -> String {
    let columns = table.columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
    let keys: Vec<String> = table
        .key
        .iter()
        .map(|&i| {
            let key = quote_ident(&table.columns[i].name);
            if bytewise && table.columns[i].kind.is_text_like() {
                format!("BINARY {key}")
            } else {
                key
            }
        })
        .collect();
    let mut sql = format!("SELECT {columns} FROM {}", quote_table(&table.id));
    if bounded {
        let terms: Vec<String> = (0..keys.len())
            .map(|n| {
                let mut parts: Vec<String> = keys[..n].iter().map(|k| format!("{k} = ?")).collect();
                parts.push(format!("{} > ?", keys[n]));
                format!("({})", parts.join(" AND "))
            })
            .collect();
        sql.push_str(&format!(" WHERE {}", terms.join(" OR ")));
    }
    sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", keys.join(", ")));
    sql
}

/// The parameters of [`chunk_sql`]'s bound form for the key `after`.
pub fn bound_params(after: &[Value]) -> Vec<mysql_async::Value> {
    (0..after.len()).flat_map(|n| after[..=n].iter().map(key_param)).collect()
}

/// Streams the rows of `table` (which has a key) whose key is greater than `after` (all
/// without it) out of the open snapshot, in key order, one statement per chunk.
async fn read_keyed(
    conn: &mut Conn,
    table: &Arc<TableSchema>,
    kinds: &[ValueKind],
    chunk_rows: usize,
    after: Option<&[Value]>,
    out: &mpsc::Sender<SnapshotChunk>,
) -> Result<(), ConnectorError> {
    let mut bound: Option<Vec<Value>> = after.map(<[Value]>::to_vec);
    loop {
        let chunk = read_chunk(conn, table, kinds, chunk_rows, bound.as_deref(), false).await?;
        let count = chunk.len();
        if let Some(last) = chunk.last() {
            bound = Some(table.key.iter().map(|&i| last[i].clone()).collect());
        }
        if !chunk.is_empty() {
            send(out, table, chunk).await?;
        }
        if count < chunk_rows {
            return Ok(());
        }
    }
}

/// The first `chunk_rows` rows of `table` (which has a key) in key order whose key is
/// greater than `after` (from the first row without it); `bytewise` as in [`chunk_sql`].
pub async fn read_chunk(
    conn: &mut Conn,
    table: &Arc<TableSchema>,
    kinds: &[ValueKind],
    chunk_rows: usize,
    after: Option<&[Value]>,
    bytewise: bool,
) -> Result<Vec<Vec<Value>>, ConnectorError> {
    let what = format!("reading source table {}", table.id);
    let sql = chunk_sql(table, after.is_some(), chunk_rows.max(1), bytewise);
    let rows: Vec<mysql_async::Row> = match after {
        None => conn.exec(sql.as_str(), ()).await,
        Some(key) => conn.exec(sql.as_str(), bound_params(key)).await,
    }
    .map_err(|e| my_error(&what, e))?;
    rows.into_iter().map(|row| decode_row(row, table, kinds, &what)).collect()
}

/// Streams one table out of the open snapshot in chunks of `chunk_rows`: a table with a
/// key in key order (after `after` when given), one without in any order.
pub async fn read_table(
    conn: &mut Conn,
    table: &Arc<TableSchema>,
    kinds: &[ValueKind],
    chunk_rows: usize,
    after: Option<&[Value]>,
    out: &mpsc::Sender<SnapshotChunk>,
) -> Result<(), ConnectorError> {
    let chunk_rows = chunk_rows.max(1);
    if !table.key.is_empty() {
        return read_keyed(conn, table, kinds, chunk_rows, after, out).await;
    }
    if after.is_some() {
        return Err(ConnectorError::fatal(format!("{}: a table without a key cannot be read from a key", table.id)));
    }
    let columns = table.columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
    let sql = format!("SELECT {columns} FROM {}", quote_table(&table.id));
    let what = format!("reading source table {} for the snapshot", table.id);
    let mut result = conn.exec_iter(sql.as_str(), ()).await.map_err(|e| my_error(&what, e))?;
    let mut rows = Vec::with_capacity(chunk_rows);
    while let Some(row) = result.next().await.map_err(|e| my_error(&what, e))? {
        rows.push(decode_row(row, table, kinds, &what)?);
        if rows.len() >= chunk_rows {
            let full: Vec<Vec<Value>> = std::mem::replace(&mut rows, Vec::with_capacity(chunk_rows));
            send(out, table, full).await?;
        }
    }
    if !rows.is_empty() {
        send(out, table, rows).await?;
    }
    Ok(())
}

/// One result row of `SELECT <table's columns>` as core values.
fn decode_row(
    row: mysql_async::Row,
    table: &TableSchema,
    kinds: &[ValueKind],
    what: &str,
) -> Result<Vec<Value>, ConnectorError> {
    let raw = row.unwrap_raw();
    if raw.len() != kinds.len() {
        return Err(ConnectorError::fatal(format!("{what}: {} values for {} columns", raw.len(), kinds.len())));
    }
    raw.into_iter()
        .zip(kinds)
        .zip(&table.columns)
        .map(|((v, kind), column)| {
            from_protocol(kind, v.unwrap_or(mysql_async::Value::NULL))
                .map_err(|e| ConnectorError::fatal(format!("{what}: column {}: {e}", column.name)))
        })
        .collect()
}

/// The current row of `table` whose key columns equal `key`, if any.
pub async fn read_row(
    conn: &mut Conn,
    table: &TableSchema,
    kinds: &[ValueKind],
    key: &[Value],
) -> Result<Option<Vec<Value>>, ConnectorError> {
    let columns = table.columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
    let matches = table.key.iter().map(|&i| format!("{} = ?", quote_ident(&table.columns[i].name))).collect::<Vec<_>>();
    let sql = format!("SELECT {columns} FROM {} WHERE {}", quote_table(&table.id), matches.join(" AND "));
    let params: Vec<mysql_async::Value> = key.iter().map(key_param).collect();
    let what = format!("reading the current row of {}", table.id);
    let row: Option<mysql_async::Row> = conn.exec_first(sql.as_str(), params).await.map_err(|e| my_error(&what, e))?;
    row.map(|row| decode_row(row, table, kinds, &what)).transpose()
}

/// A key value as a statement parameter (the server converts text to the column's type).
fn key_param(value: &Value) -> mysql_async::Value {
    use mysql_async::Value as M;
    match value {
        Value::Null | Value::Unchanged => M::NULL,
        Value::Bool(b) => M::Int(i64::from(*b)),
        Value::Int(i) => M::Int(*i),
        Value::UInt(u) => M::UInt(*u),
        Value::Float(f) => M::Double(*f),
        Value::Bytes(b) => M::Bytes(b.clone()),
        other => M::Bytes(other.to_pg_text().unwrap_or_default().into_bytes()),
    }
}

async fn send(
    out: &mpsc::Sender<SnapshotChunk>,
    table: &Arc<TableSchema>,
    rows: Vec<Vec<Value>>,
) -> Result<(), ConnectorError> {
    out.send(SnapshotChunk::new(table.clone(), rows))
        .await
        .map_err(|_| ConnectorError::transient("snapshot consumer stopped"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_snapshots_without_locks() {
        let plan = snapshot_plan(&ServerInfo::parse("10.11.6-MariaDB-log"));
        assert!(!plan.setup.iter().any(|s| s.contains("LOCK")));
        assert_eq!(plan.setup.last().copied(), Some(START));
        assert_eq!(plan.position, PositionQuery::SnapshotStatus);
        assert!(plan.release.is_empty());
    }

    #[test]
    fn mysql_snapshots_under_a_brief_global_read_lock() {
        let plan = snapshot_plan(&ServerInfo::parse("8.0.36"));
        let lock = plan.setup.iter().position(|s| *s == "FLUSH TABLES WITH READ LOCK");
        let start = plan.setup.iter().position(|s| *s == START);
        assert!(lock.is_some() && start.is_some() && lock < start, "lock before the snapshot starts: {plan:?}");
        assert_eq!(plan.position, PositionQuery::BinlogStatus("SHOW MASTER STATUS"));
        assert_eq!(plan.release, vec!["UNLOCK TABLES"]);
        let plan = snapshot_plan(&ServerInfo::parse("8.4.0"));
        assert_eq!(plan.position, PositionQuery::BinlogStatus("SHOW BINARY LOG STATUS"));
    }
}
