//! What `verify` and `dlq replay` need from a SQLite target: changes applied outside the
//! stream, and scratch copies of target tables compared with them by key. Scratch tables
//! are TEMP tables: they live outside the database file and vanish with the connection.

use std::path::Path;

use futures_util::future::BoxFuture;
use sqlx::sqlite::SqliteConnection;
use sqlx::Row;
use tidewater_core::compare::{compare_sql, CompareDialect};
use tidewater_core::{scratch_name, Comparison, ConnectorError, TableChanges, TableId, TableSchema};

use super::{not_row_tied, sqlite_table_name, SqliteSink, Writer};
use crate::sql::{quote_ident, sqlite_error};

/// `verify`'s comparison in SQLite's dialect: `IS NOT` compares type and value,
/// NULL-safe; keys are shown as SQL literals (`quote()`).
const COMPARE: CompareDialect = CompareDialect {
    quote_ident,
    differs: |a, b| format!("{a} IS NOT {b}"),
    count_if: |c| format!("coalesce(sum({c}), 0)"),
    key_json: |cols| {
        format!("json_array({})", cols.iter().map(|c| format!("quote({c})")).collect::<Vec<_>>().join(", "))
    },
    limited: |sql, n| format!("SELECT * FROM ({sql} LIMIT {n})"),
};

impl SqliteSink {
    /// Runs `f` on the connection outside any transaction of the sink's own.
    async fn run<T>(
        &mut self,
        f: impl for<'c> FnOnce(&'c mut SqliteConnection, &'c Path) -> BoxFuture<'c, Result<T, ConnectorError>>,
    ) -> Result<T, ConnectorError> {
        let saved = self.tables.clone();
        let mut conn = self.take_conn().await?;
        let path = self.path.clone();
        let result = f(&mut conn, &path).await;
        self.finish(conn, result, saved).await
    }

    pub(super) async fn apply_changes_now(
        &mut self,
        changes: &TableChanges,
        replayed: Option<i64>,
    ) -> Result<u64, ConnectorError> {
        let saved = self.tables.clone();
        let mut conn = self.take_conn().await?;
        let mut w = Writer { conn: &mut conn, path: &self.path, tables: &mut self.tables };
        let result = async {
            w.begin().await?;
            let rows = w.apply_table(changes).await?;
            if let Some(id) = replayed {
                sqlx::query("UPDATE tidewater_dead_letters SET replayed_at = ?2 WHERE id = ?1")
                    .bind(id)
                    .bind(crate::types::format_utc(chrono::Utc::now()))
                    .execute(&mut *w.conn)
                    .await
                    .map_err(|e| not_row_tied(w.err("marking the dead letter replayed", e)))?;
            }
            w.exec("COMMIT", "committing").await?;
            Ok(rows)
        }
        .await;
        self.finish(conn, result, saved).await
    }

    pub(super) async fn note_failure(&mut self, id: i64, error: &str) -> Result<(), ConnectorError> {
        let error = error.to_string();
        self.run(|conn, path| {
            Box::pin(async move {
                sqlx::query("UPDATE tidewater_dead_letters SET error = ?2 WHERE id = ?1")
                    .bind(id)
                    .bind(&error)
                    .execute(conn)
                    .await
                    .map(drop)
                    .map_err(|e| not_row_tied(sqlite_error("recording the replay failure", path, e)))
            })
        })
        .await
    }

    /// See [`tidewater_core::Sink::create_scratch`]: `CREATE TABLE … AS SELECT` keeps each
    /// column's affinity (which decides how SQLite stores a value) but no constraint; a
    /// unique index on the source key lets the usual upserts fill it.
    pub(super) async fn scratch_copy(
        &mut self,
        schema: &TableSchema,
        target: &TableId,
    ) -> Result<TableId, ConnectorError> {
        let scratch = TableId::new(target.schema.clone(), scratch_name(target));
        self.drop_scratch_table(&scratch).await?;
        let name = &scratch.name;
        let key = schema.key.iter().map(|&i| quote_ident(&schema.columns[i].name)).collect::<Vec<_>>();
        let mut sql = format!(
            "CREATE TEMP TABLE {s} AS SELECT * FROM main.{t} WHERE 0",
            s = quote_ident(name),
            t = quote_ident(sqlite_table_name(target)),
        );
        // A table without a key gets its rows appended (compared as a multiset).
        if !key.is_empty() {
            sql.push_str(&format!(
                "; CREATE UNIQUE INDEX temp.{i} ON {s} ({k})",
                s = quote_ident(name),
                i = quote_ident(&format!("{name}_key")),
                k = key.join(", ")
            ));
        }
        let what = format!("creating a scratch copy of {target}");
        self.run(|conn, path| {
            Box::pin(async move {
                sqlx::query(&sql).execute(conn).await.map(drop).map_err(|e| not_row_tied(sqlite_error(&what, path, e)))
            })
        })
        .await?;
        Ok(scratch)
    }

    pub(super) async fn drop_scratch_table(&mut self, scratch: &TableId) -> Result<(), ConnectorError> {
        let name = sqlite_table_name(scratch).to_string();
        self.tables.remove(&name);
        let sql = format!("DROP TABLE IF EXISTS temp.{}", quote_ident(&name));
        self.run(|conn, path| {
            Box::pin(async move {
                sqlx::query(&sql)
                    .execute(conn)
                    .await
                    .map(drop)
                    .map_err(|e| not_row_tied(sqlite_error("dropping a scratch table", path, e)))
            })
        })
        .await
    }

    /// See [`tidewater_core::Sink::compare_scratch`] and [`COMPARE`].
    pub(super) async fn compare(
        &mut self,
        schema: &TableSchema,
        target: &TableId,
        scratch: &TableId,
        examples: usize,
    ) -> Result<Comparison, ConnectorError> {
        let s = format!("temp.{}", quote_ident(sqlite_table_name(scratch)));
        let t = format!("main.{}", quote_ident(sqlite_table_name(target)));
        let sql = compare_sql(&COMPARE, schema, &s, &t, examples);
        let what = format!("comparing {target} with the source's rows");
        self.run(|conn, path| {
            Box::pin(async move {
                let err = |e| not_row_tied(sqlite_error(&what, path, e));
                let r = sqlx::query(&sql.counts).fetch_one(&mut *conn).await.map_err(err)?;
                let n = |i: usize| r.try_get::<i64, _>(i).map_err(err);
                let mut comparison = Comparison::from_counts(n(0)?, n(1)?, n(2)?, n(3)?);
                if !comparison.matches() {
                    for r in sqlx::query(&sql.examples).fetch_all(&mut *conn).await.map_err(err)? {
                        let tag: String = r.try_get(0).map_err(err)?;
                        let key: String = r.try_get(1).map_err(err)?;
                        comparison.add_example(&tag, &key);
                    }
                }
                Ok(comparison)
            })
        })
        .await
    }
}
