//! What `verify` and `dlq replay` need from a MySQL/MariaDB target: changes applied outside
//! the stream, and scratch copies of target tables compared with them by key.

use tidewater_core::compare::{compare_sql, CompareDialect};
use tidewater_core::{scratch_name, Comparison, ConnectorError, TableChanges, TableId, TableSchema};

use super::{
    apply_table, begin, commit, exec_raw, reconcile_segments, run_exec, run_fetch_all, run_fetch_one, sqlx_error,
    target_location, text, Env, MysqlSink,
};
use crate::quote::quote_ident;

/// `verify`'s comparison in MySQL's dialect: values compared as binary strings with
/// `<=>`, so case or trailing-space differences the columns' collations would ignore still
/// count; keys are matched with the target's own collation, as its primary key matches them.
const COMPARE: CompareDialect = CompareDialect {
    quote_ident,
    differs: |a, b| format!("NOT (CAST({a} AS BINARY) <=> CAST({b} AS BINARY))"),
    count_if: |c| format!("CAST(COALESCE(SUM({c}), 0) AS SIGNED)"),
    key_json: |cols| {
        format!(
            "CAST(JSON_ARRAY({}) AS CHAR)",
            cols.iter().map(|c| format!("CAST({c} AS CHAR)")).collect::<Vec<_>>().join(", ")
        )
    },
    limited: |sql, n| format!("({sql} LIMIT {n})"),
};

impl MysqlSink {
    pub(super) async fn apply_changes_now(
        &mut self,
        changes: &TableChanges,
        replayed: Option<i64>,
    ) -> Result<u64, ConnectorError> {
        let (mut conn, facts) = self.take_conn().await?;
        let url_db = self.endpoint.database.clone();
        let result = async {
            let segments = std::slice::from_ref(changes);
            reconcile_segments(&mut conn, facts.server, &url_db, &mut self.state, segments, true).await?;
            let env = Env { facts, bookkeeping: &self.bookkeeping };
            begin(&mut conn).await?;
            let rows = apply_table(&mut conn, &env, &self.state.targets, changes).await?;
            if let Some(id) = replayed {
                let sql = format!(
                    "UPDATE {}.tidewater_dead_letters SET replayed_at = UTC_TIMESTAMP(6) WHERE id = ?",
                    self.bookkeeping
                );
                run_exec(sqlx::query(&sql).bind(id), &mut conn)
                    .await
                    .map_err(|e| sqlx_error("marking the dead letter replayed", e))?;
            }
            commit(&mut conn, "committing").await?;
            Ok(rows)
        }
        .await;
        self.finish(conn, result).await
    }

    pub(super) async fn note_failure(&mut self, id: i64, error: &str) -> Result<(), ConnectorError> {
        let (mut conn, _) = self.take_conn().await?;
        let sql = format!("UPDATE {}.tidewater_dead_letters SET error = ? WHERE id = ?", self.bookkeeping);
        let result = run_exec(sqlx::query(&sql).bind(error).bind(id), &mut conn)
            .await
            .map(drop)
            .map_err(|e| sqlx_error("recording the replay failure", e));
        self.finish(conn, result).await
    }

    /// See [`tidewater_core::Sink::create_scratch`]. `CREATE TABLE … AS SELECT` copies the
    /// column types and NOT NULL but no index or CHECK constraint (MariaDB's JSON check
    /// included); the source key becomes its primary key.
    pub(super) async fn scratch_copy(
        &mut self,
        schema: &TableSchema,
        target: &TableId,
    ) -> Result<TableId, ConnectorError> {
        let scratch = TableId::new(target.schema.clone(), scratch_name(target));
        self.drop_scratch_table(&scratch).await?;
        let key = schema.key.iter().map(|&i| quote_ident(&schema.columns[i].name)).collect::<Vec<_>>();
        let (s, t) = (self.qualified(&scratch), self.qualified(target));
        let (mut conn, _) = self.take_conn().await?;
        let result = async {
            exec_raw(&mut conn, &format!("CREATE TABLE {s} AS SELECT * FROM {t} WHERE 1 = 0"))
                .await
                .map_err(|e| sqlx_error(format_args!("creating a scratch copy of {target}"), e))?;
            if key.is_empty() {
                // A table without a key gets its rows appended (compared as a multiset).
                return Ok(());
            }
            exec_raw(&mut conn, &format!("ALTER TABLE {s} ADD PRIMARY KEY ({})", key.join(", ")))
                .await
                .map_err(|e| sqlx_error(format_args!("adding the key to the scratch copy of {target}"), e))
        }
        .await;
        self.finish(conn, result).await.map(|()| scratch)
    }

    pub(super) async fn drop_scratch_table(&mut self, scratch: &TableId) -> Result<(), ConnectorError> {
        self.state.targets.remove(scratch);
        self.state.reconciled.remove(scratch);
        let sql = format!("DROP TABLE IF EXISTS {}", self.qualified(scratch));
        let (mut conn, _) = self.take_conn().await?;
        let result = exec_raw(&mut conn, &sql)
            .await
            .map_err(|e| sqlx_error(format_args!("dropping scratch table {scratch}"), e));
        self.finish(conn, result).await
    }

    /// See [`tidewater_core::Sink::compare_scratch`] and [`COMPARE`].
    pub(super) async fn compare(
        &mut self,
        schema: &TableSchema,
        target: &TableId,
        scratch: &TableId,
        examples: usize,
    ) -> Result<Comparison, ConnectorError> {
        let sql = compare_sql(&COMPARE, schema, &self.qualified(scratch), &self.qualified(target), examples);
        let what = format!("comparing {target} with the source's rows");
        let (mut conn, _) = self.take_conn().await?;
        let result = async {
            let r = run_fetch_one(sqlx::query(&sql.counts), &mut conn).await.map_err(|e| sqlx_error(&what, e))?;
            let n = |i: usize| sqlx::Row::try_get::<i64, _>(&r, i).map_err(|e| sqlx_error(&what, e));
            let mut comparison = Comparison::from_counts(n(0)?, n(1)?, n(2)?, n(3)?);
            if !comparison.matches() {
                for r in run_fetch_all(sqlx::query(&sql.examples), &mut conn).await.map_err(|e| sqlx_error(&what, e))? {
                    comparison.add_example(&text(&r, 0)?, &text(&r, 1)?);
                }
            }
            Ok(comparison)
        }
        .await;
        self.finish(conn, result).await
    }

    /// `` `db`.`table` `` of a target table id.
    fn qualified(&self, id: &TableId) -> String {
        let (db, name) = target_location(&self.endpoint.database, id);
        format!("{}.{}", quote_ident(&db), quote_ident(&name))
    }
}
