//! PostgreSQL target.
//!
//! Apply: one target transaction per batch. Per table segment: `TRUNCATE` (if the source
//! truncated), one multi-key `DELETE ... USING unnest(...)`, one multi-row
//! `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO UPDATE`, and for rows carrying
//! unchanged TOAST columns one `UPDATE ... FROM unnest(...)` per column mask. Values are
//! bound as text arrays and cast to the target column's type, so every type that has a
//! text form round-trips exactly. Dead letters and the checkpoint are written in the same
//! transaction.
//!
//! Schema: missing target tables are created from the source schema (same types, same
//! key); a column added at the source is added to the target inside the batch that first
//! carries it; a changed column type is applied with `ALTER COLUMN ... TYPE`, and if the
//! target cannot take it the pipeline fails naming the table and the change.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use tidewater_core::{
    ApplyBatch, ApplyReport, Checkpoint, ColumnType, ConnectorError, CopiedTable, Engine, KeyRange, RowKind, Sink,
    TableChanges, TableId, TablePlan, TableSchema, Value, ROW_KINDS_IN_ORDER,
};
use tokio_postgres::{Client, GenericClient, Statement};

use crate::conn::{connect, PgEndpoint};
use crate::sql::{pg_error, quote_ident, quote_table};

const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_bookkeeping", include_str!("../../../migrations/postgres/0001_bookkeeping.sql")),
    ("0002_copied_position", include_str!("../../../migrations/postgres/0002_copied_position.sql")),
    ("0003_copy_progress", include_str!("../../../migrations/postgres/0003_copy_progress.sql")),
    ("0004_migration_log", include_str!("../../../migrations/postgres/0004_migration_log.sql")),
];

/// A target table's columns: name → type name usable in a cast (no typmod, so that
/// assignment, not the cast, enforces lengths and precision).
#[derive(Debug, Clone, Default)]
struct TargetTable {
    cast_types: HashMap<String, String>,
}

/// Everything the sink remembers between batches, apart from the connection.
#[derive(Default)]
struct SinkState {
    statements: HashMap<String, Statement>,
    targets: HashMap<TableId, TargetTable>,
    /// The source schema each target table was last reconciled with.
    reconciled: HashMap<TableId, Arc<TableSchema>>,
}

pub struct PgSink {
    endpoint: PgEndpoint,
    client: Option<Client>,
    /// The connection holding a large source transaction's open target transaction.
    open: Option<Client>,
    state: SinkState,
}

impl PgSink {
    pub fn new(endpoint: PgEndpoint) -> Self {
        PgSink { endpoint, client: None, open: None, state: SinkState::default() }
    }

    /// Takes the live connection out (connecting when needed); [`PgSink::put_back`]
    /// returns it unless the error says it may be broken.
    async fn take_client(&mut self) -> Result<Client, ConnectorError> {
        match self.client.take() {
            Some(c) if !c.is_closed() => Ok(c),
            _ => {
                self.state.statements.clear();
                let client = connect(&self.endpoint).await?;
                // The slot is acknowledged as soon as a commit returns, so the commit must be
                // durable by then whatever the target server's default is: with
                // synchronous_commit = off a crash could lose a batch the source already
                // released.
                client
                    .batch_execute("SET synchronous_commit = on")
                    .await
                    .map_err(|e| pg_error("setting synchronous_commit on the target", e))?;
                Ok(client)
            }
        }
    }

    fn put_back<T>(&mut self, client: Client, result: Result<T, ConnectorError>) -> Result<T, ConnectorError> {
        match &result {
            Err(e) if e.class == tidewater_core::ErrorClass::Transient => self.state.statements.clear(),
            _ => self.client = Some(client),
        }
        result
    }
}

#[async_trait]
impl Sink for PgSink {
    async fn prepare(&mut self) -> Result<(), ConnectorError> {
        let mut client = self.take_client().await?;
        let result = async {
            // Every migration recorded: nothing to run (and no lock to wait for).
            let logged = client
                .query(
                    "SELECT name FROM public.tidewater_migrations WHERE to_regclass('public.tidewater_migrations') IS NOT NULL",
                    &[],
                )
                .await
                .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>())
                .unwrap_or_default();
            if MIGRATIONS.iter().all(|(name, _)| logged.iter().any(|l| l == name)) {
                return Ok(());
            }
            // Several pipelines (or daemons) may share a target: CREATE ... IF NOT EXISTS
            // races, so migrations run one at a time under an advisory lock.
            let tx = client.transaction().await.map_err(|e| pg_error("starting the migrations", e))?;
            tx.batch_execute("SELECT pg_advisory_xact_lock(hashtext('tidewater_migrations'))")
                .await
                .map_err(|e| pg_error("locking the migrations", e))?;
            for (name, sql) in MIGRATIONS {
                tx.batch_execute(sql)
                    .await
                    .map_err(|e| pg_error(format_args!("running migration {name} on the target"), e))?;
            }
            for (name, _) in MIGRATIONS {
                tx.execute("INSERT INTO public.tidewater_migrations (name) VALUES ($1) ON CONFLICT DO NOTHING", &[name])
                    .await
                    .map_err(|e| pg_error("recording the migrations", e))?;
            }
            tx.commit().await.map_err(|e| pg_error("committing the migrations", e))
        }
        .await;
        self.put_back(client, result)
    }

    async fn load_checkpoint(&mut self, pipeline: &str) -> Result<Option<Checkpoint>, ConnectorError> {
        let client = self.take_client().await?;
        let result = client
            .query_opt(
                "SELECT source_position, snapshot_complete, copy_progress FROM public.tidewater_checkpoints WHERE pipeline = $1",
                &[&pipeline],
            )
            .await
            .map(|row| row.map(|r| Checkpoint { position: r.get(0), snapshot_complete: r.get(1), copy_progress: r.get(2) }))
            .map_err(|e| pg_error("reading the checkpoint from the target", e));
        self.put_back(client, result)
    }

    async fn ensure_tables(&mut self, plans: &[TablePlan]) -> Result<(), ConnectorError> {
        let mut client = self.take_client().await?;
        let result = async {
            let tx = client.transaction().await.map_err(|e| pg_error("starting a target transaction", e))?;
            for plan in plans {
                reconcile(&tx, &mut self.state, &plan.source, &plan.target).await?;
            }
            tx.commit().await.map_err(|e| pg_error("committing target tables", e))
        }
        .await;
        self.put_back(client, result)
    }

    async fn reset_for_snapshot(
        &mut self,
        pipeline: &str,
        tables: &[TableId],
        checkpoint: &Checkpoint,
    ) -> Result<(), ConnectorError> {
        let mut client = self.take_client().await?;
        let result = async {
            let tx = client.transaction().await.map_err(|e| pg_error("starting a target transaction", e))?;
            tx.execute("DELETE FROM public.tidewater_snapshot_tables WHERE pipeline = $1", &[&pipeline])
                .await
                .map_err(|e| pg_error("resetting tidewater_snapshot_tables", e))?;
            for table in tables {
                tx.batch_execute(&format!("TRUNCATE {}", quote_table(table)))
                    .await
                    .map_err(|e| pg_error(format_args!("emptying {table} to restart the snapshot"), e))?;
            }
            write_checkpoint(&tx, &mut self.state, pipeline, checkpoint).await?;
            tx.commit().await.map_err(|e| pg_error("committing the snapshot reset", e))
        }
        .await;
        self.put_back(client, result)
    }

    async fn list_dead_letters(
        &mut self,
        pipeline: &str,
    ) -> Result<Vec<tidewater_core::DeadLetterRecord>, ConnectorError> {
        let client = self.take_client().await?;
        let result = client
            .query(
                "SELECT id, source_position, source_table, target_table, op, payload::text, error, \
                        to_char(failed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                        to_char(replayed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
                 FROM public.tidewater_dead_letters WHERE pipeline = $1 ORDER BY id",
                &[&pipeline],
            )
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| tidewater_core::DeadLetterRecord {
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
                    .collect()
            })
            .map_err(|e| pg_error("reading tidewater_dead_letters", e));
        self.put_back(client, result)
    }

    async fn snapshotted_tables(&mut self, pipeline: &str) -> Result<Vec<CopiedTable>, ConnectorError> {
        let client = self.take_client().await?;
        let result = client
            .query(
                "SELECT source_table, copied_position FROM public.tidewater_snapshot_tables WHERE pipeline = $1",
                &[&pipeline],
            )
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| CopiedTable::new(TableId::parse(&r.get::<_, String>(0), "public"), r.get(1)))
                    .collect()
            })
            .map_err(|e| pg_error("reading tidewater_snapshot_tables", e));
        self.put_back(client, result)
    }

    async fn complete_snapshot(
        &mut self,
        pipeline: &str,
        tables: &[CopiedTable],
        checkpoint: &Checkpoint,
    ) -> Result<(), ConnectorError> {
        let mut client = self.take_client().await?;
        let result = async {
            let tx = client.transaction().await.map_err(|e| pg_error("starting a target transaction", e))?;
            let names: Vec<String> = tables.iter().map(|t| t.table.to_string()).collect();
            let positions: Vec<Option<String>> = tables.iter().map(|t| t.position.clone()).collect();
            tx.execute(
                "INSERT INTO public.tidewater_snapshot_tables (pipeline, source_table, copied_position) \
                 SELECT $1, t, p FROM unnest($2::text[], $3::text[]) AS u(t, p) \
                 ON CONFLICT (pipeline, source_table) DO UPDATE SET copied_position = EXCLUDED.copied_position, \
                 copied_at = now()",
                &[&pipeline, &names, &positions],
            )
            .await
            .map_err(|e| pg_error("recording copied tables", e))?;
            write_checkpoint(&tx, &mut self.state, pipeline, checkpoint).await?;
            tx.commit().await.map_err(|e| pg_error("committing the snapshot's end", e))
        }
        .await;
        self.put_back(client, result)
    }

    fn accepts_raw(&self, format: tidewater_core::RawFormat) -> bool {
        format == tidewater_core::RawFormat::PgCopyText
    }

    async fn apply(&mut self, batch: &ApplyBatch) -> Result<ApplyReport, ConnectorError> {
        let mut client = self.take_client().await?;
        let result = async {
            let tx = client.transaction().await.map_err(|e| pg_error("starting a target transaction", e))?;
            let mut report = ApplyReport::default();
            for changes in &batch.tables {
                report.rows_written += if bulk_loadable(changes) {
                    copy_or_upsert(&tx, &mut self.state, changes).await?
                } else {
                    apply_table(&tx, &mut self.state, changes).await?
                };
            }
            write_checkpoint(&tx, &mut self.state, &batch.pipeline, &batch.checkpoint).await?;
            tx.commit().await.map_err(|e| pg_error("committing the batch", e))?;
            Ok(report)
        }
        .await;
        self.put_back(client, result)
    }

    async fn apply_isolating(&mut self, batch: &ApplyBatch) -> Result<ApplyReport, ConnectorError> {
        let mut client = self.take_client().await?;
        let result = async {
            let tx = client.transaction().await.map_err(|e| pg_error("starting a target transaction", e))?;
            let mut report = ApplyReport::default();
            let mut dead_letters = Vec::new();
            for changes in &batch.tables {
                let changes = materialized(changes)?;
                report.rows_written +=
                    apply_table_isolating(&tx, &mut self.state, batch, &changes, &mut dead_letters).await?;
            }
            report.dead_letters = dead_letters.len() as u64;
            write_dead_letters(&tx, &mut self.state, &batch.pipeline, &dead_letters).await?;
            write_checkpoint(&tx, &mut self.state, &batch.pipeline, &batch.checkpoint).await?;
            tx.commit().await.map_err(|e| pg_error("committing the batch", e))?;
            Ok(report)
        }
        .await;
        self.put_back(client, result)
    }

    async fn begin_large(&mut self) -> Result<(), ConnectorError> {
        self.abort_large().await;
        let client = self.take_client().await?;
        let result = client.batch_execute("BEGIN").await.map_err(|e| pg_error("starting a target transaction", e));
        match result {
            Ok(()) => {
                self.open = Some(client);
                Ok(())
            }
            Err(e) => self.put_back(client, Err(e)),
        }
    }

    async fn apply_part(&mut self, part: &ApplyBatch, isolate: bool) -> Result<ApplyReport, ConnectorError> {
        let client = self.open.as_ref().ok_or_else(|| ConnectorError::fatal("apply_part without begin_large"))?;
        apply_part_in_open_transaction(client, &mut self.state, part, isolate).await
    }

    async fn commit_large(&mut self, last: &ApplyBatch, isolate: bool) -> Result<ApplyReport, ConnectorError> {
        let client = self.open.take().ok_or_else(|| ConnectorError::fatal("commit_large without begin_large"))?;
        let result = async {
            let report = apply_part_in_open_transaction(&client, &mut self.state, last, isolate).await?;
            write_checkpoint(&client, &mut self.state, &last.pipeline, &last.checkpoint).await?;
            client.batch_execute("COMMIT").await.map_err(|e| pg_error("committing the transaction", e))?;
            Ok(report)
        }
        .await;
        if result.is_err() {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        self.put_back(client, result)
    }

    async fn abort_large(&mut self) {
        if let Some(client) = self.open.take() {
            if client.batch_execute("ROLLBACK").await.is_ok() {
                self.client = Some(client);
            }
        }
    }

    async fn apply_changes(&mut self, changes: &TableChanges, replayed: Option<i64>) -> Result<u64, ConnectorError> {
        let mut client = self.take_client().await?;
        let result = async {
            let tx = client.transaction().await.map_err(|e| pg_error("starting a target transaction", e))?;
            let rows = apply_table(&tx, &mut self.state, changes).await?;
            if let Some(id) = replayed {
                tx.execute("UPDATE public.tidewater_dead_letters SET replayed_at = now() WHERE id = $1", &[&id])
                    .await
                    .map_err(|e| pg_error("marking the dead letter replayed", e))?;
            }
            tx.commit().await.map_err(|e| pg_error("committing", e))?;
            Ok(rows)
        }
        .await;
        self.put_back(client, result)
    }

    async fn note_replay_failure(&mut self, id: i64, error: &str) -> Result<(), ConnectorError> {
        let client = self.take_client().await?;
        let result = client
            .execute("UPDATE public.tidewater_dead_letters SET error = $2 WHERE id = $1", &[&id, &error])
            .await
            .map(drop)
            .map_err(|e| pg_error("recording the replay failure", e));
        self.put_back(client, result)
    }

    async fn create_scratch(&mut self, schema: &TableSchema, target: &TableId) -> Result<TableId, ConnectorError> {
        let scratch = TableId::new(target.schema.clone(), tidewater_core::scratch_name(target));
        self.drop_scratch(&scratch).await?;
        let key = schema.key.iter().map(|&i| quote_ident(&schema.columns[i].name)).collect::<Vec<_>>();
        // LIKE copies columns, types and NOT NULL only: no CHECK, foreign key or other
        // constraint of the target rejects a source row here.
        let mut sql =
            format!("CREATE UNLOGGED TABLE {s} (LIKE {t})", s = quote_table(&scratch), t = quote_table(target));
        // A table without a key gets its rows appended (verify compares it as a multiset).
        if !key.is_empty() {
            sql.push_str(&format!("; ALTER TABLE {} ADD PRIMARY KEY ({})", quote_table(&scratch), key.join(", ")));
        }
        let client = self.take_client().await?;
        let result = client
            .batch_execute(&sql)
            .await
            .map(|()| scratch)
            .map_err(|e| pg_error(format_args!("creating a scratch copy of {target}"), e));
        self.put_back(client, result)
    }

    async fn compare_scratch(
        &mut self,
        schema: &TableSchema,
        target: &TableId,
        scratch: &TableId,
        examples: usize,
    ) -> Result<tidewater_core::Comparison, ConnectorError> {
        let client = self.take_client().await?;
        let result = compare_tables(&client, schema, target, scratch, examples).await;
        self.put_back(client, result)
    }

    async fn drop_scratch(&mut self, scratch: &TableId) -> Result<(), ConnectorError> {
        self.state.targets.remove(scratch);
        self.state.reconciled.remove(scratch);
        let client = self.take_client().await?;
        let result = client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", quote_table(scratch)))
            .await
            .map_err(|e| pg_error(format_args!("dropping scratch table {scratch}"), e));
        self.put_back(client, result)
    }
}

/// `verify`'s comparison in Postgres' dialect: values compared by their text form (both
/// tables have the same column types, so equal values print equally; some types, json
/// for one, have no equality operator).
const COMPARE: tidewater_core::compare::CompareDialect = tidewater_core::compare::CompareDialect {
    quote_ident,
    differs: |a, b| format!("{a}::text IS DISTINCT FROM {b}::text"),
    count_if: |c| format!("count(*) FILTER (WHERE {c})"),
    key_json: |cols| {
        format!("json_build_array({})::text", cols.iter().map(|c| format!("{c}::text")).collect::<Vec<_>>().join(", "))
    },
    limited: |sql, n| format!("({sql} LIMIT {n})"),
};

async fn compare_tables(
    client: &Client,
    schema: &TableSchema,
    target: &TableId,
    scratch: &TableId,
    examples: usize,
) -> Result<tidewater_core::Comparison, ConnectorError> {
    let sql =
        tidewater_core::compare::compare_sql(&COMPARE, schema, &quote_table(scratch), &quote_table(target), examples);
    let what = format!("comparing {target} with the source's rows");
    let r = client.query_one(&sql.counts, &[]).await.map_err(|e| pg_error(&what, e))?;
    let mut comparison = tidewater_core::Comparison::from_counts(r.get(0), r.get(1), r.get(2), r.get(3));
    if !comparison.matches() {
        for r in client.query(&sql.examples, &[]).await.map_err(|e| pg_error(&what, e))? {
            comparison.add_example(r.get(0), r.get(1));
        }
    }
    Ok(comparison)
}

/// One part of a large source transaction, inside the open target transaction. The part
/// runs under a savepoint so that, when the target rejects a row, only this part is
/// rolled back and re-applied row-isolating.
async fn apply_part_in_open_transaction(
    client: &Client,
    state: &mut SinkState,
    part: &ApplyBatch,
    isolate: bool,
) -> Result<ApplyReport, ConnectorError> {
    client.batch_execute("SAVEPOINT tidewater_part").await.map_err(|e| pg_error("setting a savepoint", e))?;
    let mut report = ApplyReport::default();
    let mut failure = None;
    for changes in &part.tables {
        let applied = if bulk_loadable(changes) {
            copy_or_upsert(client, state, changes).await
        } else {
            apply_table(client, state, changes).await
        };
        match applied {
            Ok(n) => report.rows_written += n,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    match failure {
        None => {
            client
                .batch_execute("RELEASE SAVEPOINT tidewater_part")
                .await
                .map_err(|e| pg_error("releasing a savepoint", e))?;
            Ok(report)
        }
        Some(e) if e.class == tidewater_core::ErrorClass::Event && isolate => {
            client
                .batch_execute("ROLLBACK TO SAVEPOINT tidewater_part")
                .await
                .map_err(|e| pg_error("rolling back to a savepoint", e))?;
            let mut report = ApplyReport::default();
            let mut dead_letters = Vec::new();
            for changes in &part.tables {
                report.rows_written += apply_table_isolating(client, state, part, changes, &mut dead_letters).await?;
            }
            report.dead_letters = dead_letters.len() as u64;
            write_dead_letters(client, state, &part.pipeline, &dead_letters).await?;
            Ok(report)
        }
        Some(e) => Err(e),
    }
}

async fn statement<C: GenericClient + Sync>(
    tx: &C,
    state: &mut SinkState,
    sql: String,
) -> Result<Statement, ConnectorError> {
    if let Some(statement) = state.statements.get(&sql) {
        return Ok(statement.clone());
    }
    let statement = tx.prepare(&sql).await.map_err(|e| pg_error(format_args!("preparing `{sql}`"), e))?;
    state.statements.insert(sql, statement.clone());
    Ok(statement)
}

async fn write_checkpoint<C: GenericClient + Sync>(
    tx: &C,
    state: &mut SinkState,
    pipeline: &str,
    checkpoint: &Checkpoint,
) -> Result<(), ConnectorError> {
    let sql = "INSERT INTO public.tidewater_checkpoints \
               (pipeline, source_position, snapshot_complete, copy_progress, updated_at) \
               VALUES ($1, $2, $3, $4, now()) ON CONFLICT (pipeline) DO UPDATE SET \
               source_position = EXCLUDED.source_position, snapshot_complete = EXCLUDED.snapshot_complete, \
               copy_progress = EXCLUDED.copy_progress, updated_at = now()";
    let st = statement(tx, state, sql.to_string()).await?;
    tx.execute(&st, &[&pipeline, &checkpoint.position, &checkpoint.snapshot_complete, &checkpoint.copy_progress])
        .await
        .map_err(|e| pg_error("writing the checkpoint", e))?;
    Ok(())
}

async fn write_dead_letters<C: GenericClient + Sync>(
    tx: &C,
    state: &mut SinkState,
    pipeline: &str,
    dead_letters: &[tidewater_core::DeadLetter],
) -> Result<(), ConnectorError> {
    if dead_letters.is_empty() {
        return Ok(());
    }
    let sql = "INSERT INTO public.tidewater_dead_letters \
               (pipeline, source_position, source_table, target_table, op, payload, error) \
               VALUES ($1, $2, $3, $4, $5, $6, $7)";
    let st = statement(tx, state, sql.to_string()).await?;
    for dl in dead_letters {
        tx.execute(
            &st,
            &[&pipeline, &dl.source_position, &dl.source_table, &dl.target_table, &dl.op, &dl.payload, &dl.error],
        )
        .await
        .map_err(|e| pg_error("writing a dead letter", e))?;
    }
    Ok(())
}

/// Applies one table segment; returns the rows it touched.
async fn apply_table<C: GenericClient + Sync>(
    tx: &C,
    state: &mut SinkState,
    changes: &TableChanges,
) -> Result<u64, ConnectorError> {
    prepare_segment(tx, state, changes).await?;
    let mut rows = 0;
    for kind in ROW_KINDS_IN_ORDER {
        rows += apply_set(tx, state, changes, kind, 0..changes.kind_len(kind)).await?;
    }
    Ok(rows)
}

/// Copied rows (see [`TableChanges::bulk`]) of a table with a key, nothing else.
fn bulk_loadable(changes: &TableChanges) -> bool {
    changes.raw.is_some()
        || changes.bulk
            && changes.deletes.is_empty()
            && changes.moves.is_empty()
            && !changes.upserts.iter().flatten().any(|v| matches!(v, Value::Unchanged))
}

/// Loads copied rows with `COPY` (text format: each value as the target type's input,
/// as the upsert path binds it), inside a savepoint; when a key is in the target after
/// all (a table that was not empty), the rows are upserted instead.
async fn copy_or_upsert<C: GenericClient + CopyIn + Sync>(
    tx: &C,
    state: &mut SinkState,
    changes: &TableChanges,
) -> Result<u64, ConnectorError> {
    prepare_segment(tx, state, changes).await?;
    if changes.upserts.is_empty() && changes.raw.as_ref().is_none_or(|r| r.count == 0) {
        return Ok(0);
    }
    let schema = &changes.schema;
    let target = &changes.target;
    let casts = cast_types(state, schema, target)?;
    let columns = schema.columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
    let mut data = bytes::BytesMut::with_capacity(changes.upserts.len() * 128);
    for row in &changes.upserts {
        for (i, value) in row.iter().enumerate() {
            if i > 0 {
                data.extend_from_slice(b"\t");
            }
            match pg_input_text(value, casts.get(i).map(String::as_str)) {
                None => data.extend_from_slice(b"\\N"),
                Some(text) => crate::copy_text::escape(&mut data, text.as_bytes()),
            }
        }
        data.extend_from_slice(b"\n");
    }
    let what = || format!("loading copied rows into {target}");
    // A copy's commit need not wait for its WAL flush: were it lost in a crash, so would
    // its checkpoint be (the copy continues from the chunk before), and the stream
    // acknowledges source positions only after commits that do wait, which make every
    // earlier one durable.
    tx.batch_execute("SET LOCAL synchronous_commit = off; SAVEPOINT tidewater_copy")
        .await
        .map_err(|e| pg_error(what(), e))?;
    let copied = async {
        let sink = tx.copy_in_sink(&format!("COPY {} ({columns}) FROM STDIN", quote_table(target))).await?;
        futures_util::pin_mut!(sink);
        if let Some(raw) = &changes.raw {
            // As the source sent it, without a copy.
            futures_util::SinkExt::send(&mut sink, bytes::Bytes::from_owner(raw.data.clone())).await?;
        }
        if !data.is_empty() {
            futures_util::SinkExt::send(&mut sink, data.freeze()).await?;
        }
        sink.finish().await
    }
    .await;
    match copied {
        Ok(n) => {
            tx.batch_execute("RELEASE SAVEPOINT tidewater_copy").await.map_err(|e| pg_error(what(), e))?;
            Ok(n)
        }
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT tidewater_copy").await.map_err(|e| pg_error(what(), e))?;
            apply_table(tx, state, &*materialized(changes)?).await
        }
        Err(e) => Err(pg_error(what(), e)),
    }
}

/// `COPY … FROM STDIN` on a client or in a transaction.
trait CopyIn {
    fn copy_in_sink<'a>(
        &'a self,
        sql: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<tokio_postgres::CopyInSink<bytes::Bytes>, tokio_postgres::Error>>;
}

impl CopyIn for Client {
    fn copy_in_sink<'a>(
        &'a self,
        sql: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<tokio_postgres::CopyInSink<bytes::Bytes>, tokio_postgres::Error>>
    {
        Box::pin(self.copy_in(sql))
    }
}

impl CopyIn for tokio_postgres::Transaction<'_> {
    fn copy_in_sink<'a>(
        &'a self,
        sql: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<tokio_postgres::CopyInSink<bytes::Bytes>, tokio_postgres::Error>>
    {
        Box::pin(self.copy_in(sql))
    }
}

/// `changes` with its raw rows (if any) decoded into upserts.
fn materialized(changes: &TableChanges) -> Result<std::borrow::Cow<'_, TableChanges>, ConnectorError> {
    let Some(raw) = &changes.raw else { return Ok(std::borrow::Cow::Borrowed(changes)) };
    let kinds: Vec<ColumnType> = changes.schema.columns.iter().map(|c| c.kind.clone()).collect();
    let mut rows = Vec::with_capacity(raw.count);
    for line in raw.data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        rows.push(crate::copy_text::parse_line(line, &kinds).map_err(|e| {
            ConnectorError::fatal(format!("copied rows of {}: cannot decode a row: {e}", changes.schema.id))
        })?);
    }
    let mut decoded = changes.clone();
    decoded.raw = None;
    decoded.upserts.extend(rows);
    Ok(std::borrow::Cow::Owned(decoded))
}

/// Reconciles the target table with the segment's schema and runs its truncate.
async fn prepare_segment<C: GenericClient + Sync>(
    tx: &C,
    state: &mut SinkState,
    changes: &TableChanges,
) -> Result<(), ConnectorError> {
    let target = &changes.target;
    if state.reconciled.get(target).is_none_or(|s| **s != *changes.schema) {
        reconcile(tx, state, &changes.schema, target).await?;
    }
    if changes.truncate {
        tx.batch_execute(&format!("TRUNCATE {}", quote_table(target)))
            .await
            .map_err(|e| pg_error(format_args!("truncating {target}"), e))?;
    }
    if let Some(range) = &changes.clear {
        clear_range(tx, state, changes, range).await?;
    }
    Ok(())
}

/// Deletes the target rows in `range` (see [`KeyRange`]): key columns compared in the
/// order of their values, text ones by their bytes.
async fn clear_range<C: GenericClient + Sync>(
    tx: &C,
    state: &mut SinkState,
    changes: &TableChanges,
    range: &KeyRange,
) -> Result<(), ConnectorError> {
    let schema = &changes.schema;
    let target = &changes.target;
    let casts = cast_types(state, schema, target)?;
    let n = schema.key.len();
    let bytewise = |i: usize, expr: String| {
        if schema.columns[i].kind.is_text_like() {
            format!("({expr} COLLATE \"C\")")
        } else {
            expr
        }
    };
    let keys = schema
        .key
        .iter()
        .map(|&i| bytewise(i, format!("t.{}", quote_ident(&schema.columns[i].name))))
        .collect::<Vec<_>>()
        .join(", ");
    // Parameters: the kept keys' columns as arrays ($1..$n), then the bounds' values.
    let bound = |first: usize| {
        schema
            .key
            .iter()
            .enumerate()
            .map(|(n, &i)| bytewise(i, format!("${}::text::{}", first + n, casts[i])))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let kept = schema
        .key
        .iter()
        .map(|&i| format!("t.{} = u.c{i}::{}", quote_ident(&schema.columns[i].name), casts[i]))
        .collect::<Vec<_>>()
        .join(" AND ");
    let mut sql = format!(
        "DELETE FROM {} AS t WHERE NOT EXISTS (SELECT 1 FROM {} WHERE {kept})",
        quote_table(target),
        unnest_from(&schema.key)
    );
    let mut next = n + 1;
    if range.after.is_some() {
        sql.push_str(&format!(" AND ({keys}) > ({})", bound(next)));
        next += n;
    }
    if range.upto.is_some() {
        sql.push_str(&format!(" AND ({keys}) <= ({})", bound(next)));
    }
    let st = statement(tx, state, sql).await?;
    let arrays: Vec<Vec<Option<String>>> = schema
        .key
        .iter()
        .enumerate()
        .map(|(n, &i)| range.keep.iter().map(|key| pg_input_text(&key[n], Some(casts[i].as_str()))).collect())
        .collect();
    let bounds: Vec<Option<String>> = [&range.after, &range.upto]
        .into_iter()
        .flatten()
        .flat_map(|key| key.iter().zip(&schema.key).map(|(v, &i)| pg_input_text(v, Some(casts[i].as_str()))))
        .collect();
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        arrays.iter().map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
    params.extend(bounds.iter().map(|b| b as &(dyn tokio_postgres::types::ToSql + Sync)));
    tx.execute(&st, &params).await.map_err(|e| pg_error(format_args!("clearing a key range of {target}"), e))?;
    Ok(())
}

/// Applies the rows `range` of one kind (distinct keys) with set-based statements.
async fn apply_set<C: GenericClient + Sync>(
    tx: &C,
    state: &mut SinkState,
    changes: &TableChanges,
    kind: RowKind,
    range: std::ops::Range<usize>,
) -> Result<u64, ConnectorError> {
    if range.is_empty() {
        return Ok(0);
    }
    match kind {
        RowKind::Move => apply_moves(tx, state, changes, &changes.moves[range]).await,
        RowKind::Delete => apply_rows(tx, state, changes, kind, &changes.deletes[range]).await,
        RowKind::Upsert => apply_rows(tx, state, changes, kind, &changes.upserts[range]).await,
    }
}

/// Which columns of `row` were sent (not unchanged TOAST).
fn sent_mask(row: &[Value]) -> Vec<bool> {
    row.iter().map(|v| !matches!(v, Value::Unchanged)).collect()
}

/// `ON CONFLICT (key) DO UPDATE SET <every non-key column>` (or `DO NOTHING`); nothing
/// for a keyless table, whose rows are appended (duplicates are rows of their own).
fn upsert_conflict_clause(schema: &tidewater_core::TableSchema) -> String {
    if schema.is_keyless() {
        return String::new();
    }
    let key = schema.key.iter().map(|&i| quote_ident(&schema.columns[i].name)).collect::<Vec<_>>().join(", ");
    let sets: Vec<String> = (0..schema.columns.len())
        .filter(|i| !schema.key.contains(i))
        .map(|i| {
            let c = quote_ident(&schema.columns[i].name);
            format!("{c} = EXCLUDED.{c}")
        })
        .collect();
    if sets.is_empty() {
        format!("ON CONFLICT ({key}) DO NOTHING")
    } else {
        format!("ON CONFLICT ({key}) DO UPDATE SET {}", sets.join(", "))
    }
}

/// Deletes or upserts `rows`.
async fn apply_rows<C: GenericClient + Sync>(
    tx: &C,
    state: &mut SinkState,
    changes: &TableChanges,
    kind: RowKind,
    rows: &[Vec<Value>],
) -> Result<u64, ConnectorError> {
    let schema = &changes.schema;
    let target = &changes.target;
    let table = quote_table(target);
    let casts = cast_types(state, schema, target)?;
    let key_match = |alias: &str| {
        schema
            .key
            .iter()
            .map(|&i| format!("{alias}.{} = u.c{i}::{}", quote_ident(&schema.columns[i].name), casts[i]))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    if kind == RowKind::Delete && schema.is_keyless() {
        // Each distinct image removes as many equal rows as it occurs (`LIMIT`), compared
        // by the target type's text form (some types, json among them, have no `=`).
        let all: Vec<usize> = (0..schema.columns.len()).collect();
        let cols = all.iter().map(|i| format!("c{i}")).collect::<Vec<_>>().join(", ");
        let matches = all
            .iter()
            .map(|&i| {
                format!(
                    "t.{}::text IS NOT DISTINCT FROM (d.c{i}::{})::text",
                    quote_ident(&schema.columns[i].name),
                    casts[i]
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        let sql = format!(
            "DELETE FROM {table} WHERE ctid = ANY (ARRAY(SELECT v.ctid FROM \
             (SELECT {cols}, count(*) AS n FROM {} GROUP BY {cols}) AS d \
             CROSS JOIN LATERAL (SELECT t.ctid FROM {table} AS t WHERE {matches} LIMIT d.n) AS v))",
            unnest_from(&all)
        );
        let st = statement(tx, state, sql).await?;
        let arrays = column_arrays(rows, &all, &casts);
        return execute_arrays(tx, &st, &arrays).await.map_err(|e| e.context(format_args!("deleting from {target}")));
    }
    if kind == RowKind::Delete {
        let sql = format!("DELETE FROM {table} AS t USING {} WHERE {}", unnest_from(&schema.key), key_match("t"));
        let st = statement(tx, state, sql).await?;
        let arrays = column_arrays(rows, &schema.key, &casts);
        return execute_arrays(tx, &st, &arrays).await.map_err(|e| e.context(format_args!("deleting from {target}")));
    }
    let mut written = 0;
    let (full, partial): (Vec<&Vec<Value>>, Vec<&Vec<Value>>) =
        rows.iter().partition(|row| !row.iter().any(|v| matches!(v, Value::Unchanged)));
    if !full.is_empty() {
        let all: Vec<usize> = (0..schema.columns.len()).collect();
        let sql = format!(
            "INSERT INTO {table} ({}) SELECT {} FROM {} {}",
            all.iter().map(|&i| quote_ident(&schema.columns[i].name)).collect::<Vec<_>>().join(", "),
            all.iter().map(|&i| format!("u.c{i}::{}", casts[i])).collect::<Vec<_>>().join(", "),
            unnest_from(&all),
            upsert_conflict_clause(schema),
        );
        let st = statement(tx, state, sql).await?;
        let arrays = column_arrays(full.iter().copied(), &all, &casts);
        written +=
            execute_arrays(tx, &st, &arrays).await.map_err(|e| e.context(format_args!("upserting into {target}")))?;
    }
    // Rows with unchanged TOAST columns: update only the columns that were sent, grouped
    // by which columns those are.
    let mut by_mask: HashMap<Vec<bool>, Vec<&Vec<Value>>> = HashMap::new();
    for row in partial {
        by_mask.entry(sent_mask(row)).or_default().push(row);
    }
    for (mask, group) in by_mask {
        let set_cols: Vec<usize> = (0..schema.columns.len()).filter(|i| mask[*i] && !schema.key.contains(i)).collect();
        if set_cols.is_empty() {
            continue;
        }
        let used: Vec<usize> = schema.key.iter().copied().chain(set_cols.iter().copied()).collect();
        let sql = format!(
            "UPDATE {table} AS t SET {} FROM {} WHERE {}",
            set_cols
                .iter()
                .map(|&i| format!("{} = u.c{i}::{}", quote_ident(&schema.columns[i].name), casts[i]))
                .collect::<Vec<_>>()
                .join(", "),
            unnest_from(&used),
            key_match("t"),
        );
        let st = statement(tx, state, sql).await?;
        let arrays = column_arrays(group.iter().copied(), &used, &casts);
        written += execute_arrays(tx, &st, &arrays).await.map_err(|e| e.context(format_args!("updating {target}")))?;
    }
    Ok(written)
}

/// Rows moved to a new key with unsent (TOAST) columns: each is inserted at its new key,
/// taking the unsent columns from the target's row at the old key (deleted afterwards
/// with the segment's deletes). Grouped by which columns were sent.
async fn apply_moves<C: GenericClient + Sync>(
    tx: &C,
    state: &mut SinkState,
    changes: &TableChanges,
    moves: &[tidewater_core::MovedRow],
) -> Result<u64, ConnectorError> {
    let schema = &changes.schema;
    let target = &changes.target;
    let table = quote_table(target);
    let casts = cast_types(state, schema, target)?;
    let mut by_mask: HashMap<Vec<bool>, Vec<&tidewater_core::MovedRow>> = HashMap::new();
    for moved in moves {
        by_mask.entry(sent_mask(&moved.row)).or_default().push(moved);
    }
    let mut written = 0;
    for (mask, group) in by_mask {
        let sent: Vec<usize> = (0..schema.columns.len()).filter(|&i| mask[i]).collect();
        let mut names: Vec<String> = schema.key.iter().map(|i| format!("o{i}")).collect();
        names.extend(sent.iter().map(|i| format!("c{i}")));
        let select = (0..schema.columns.len())
            .map(|i| {
                if mask[i] {
                    format!("u.c{i}::{}", casts[i])
                } else {
                    format!("o.{}", quote_ident(&schema.columns[i].name))
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let join = schema
            .key
            .iter()
            .map(|&i| format!("o.{} = u.o{i}::{}", quote_ident(&schema.columns[i].name), casts[i]))
            .collect::<Vec<_>>()
            .join(" AND ");
        let sql = format!(
            "INSERT INTO {table} ({}) SELECT {select} FROM {table} AS o JOIN {} ON {join} {}",
            schema.columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", "),
            unnest_named(&names),
            upsert_conflict_clause(schema),
        );
        let st = statement(tx, state, sql).await?;
        let mut arrays = column_arrays(group.iter().map(|m| &m.from), &schema.key, &casts);
        arrays.extend(column_arrays(group.iter().map(|m| &m.row), &sent, &casts));
        written += execute_arrays(tx, &st, &arrays)
            .await
            .map_err(|e| e.context(format_args!("moving rows to new keys in {target}")))?;
    }
    Ok(written)
}

/// Applies a segment's rows, setting aside each row the target rejects: a failing group
/// is rolled back to its savepoint and split in half until the failing rows stand alone.
/// Keys are distinct, so applying subsets in any order ends in the same state.
async fn apply_table_isolating<C: GenericClient + Sync>(
    tx: &C,
    state: &mut SinkState,
    batch: &ApplyBatch,
    changes: &TableChanges,
    dead_letters: &mut Vec<tidewater_core::DeadLetter>,
) -> Result<u64, ConnectorError> {
    prepare_segment(tx, state, changes).await?;
    let mut iso = tidewater_core::Isolator::new(changes);
    while let Some((kind, range)) = iso.next_range(changes) {
        tx.batch_execute("SAVEPOINT tidewater_row").await.map_err(|e| pg_error("setting a savepoint", e))?;
        match apply_set(tx, state, changes, kind, range).await {
            Ok(n) => {
                iso.applied(n);
                tx.batch_execute("RELEASE SAVEPOINT tidewater_row")
                    .await
                    .map_err(|e| pg_error("releasing a savepoint", e))?;
            }
            Err(e) if e.class == tidewater_core::ErrorClass::Event => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT tidewater_row")
                    .await
                    .map_err(|e| pg_error("rolling back to a savepoint", e))?;
                iso.rejected(changes, batch, &e, dead_letters);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(iso.written())
}

/// `unnest($1::text[], $2::text[], ...) AS u(c3, c5, ...)` for the given column indexes.
fn unnest_from(columns: &[usize]) -> String {
    unnest_named(&columns.iter().map(|i| format!("c{i}")).collect::<Vec<_>>())
}

/// `unnest($1::text[], ...) AS u(<names>)`.
fn unnest_named(names: &[String]) -> String {
    format!(
        "unnest({}) AS u({})",
        (1..=names.len()).map(|n| format!("${n}::text[]")).collect::<Vec<_>>().join(", "),
        names.join(", ")
    )
}

/// Each listed column's values as Postgres text input; `casts` are the target column
/// types by column index (see [`pg_input_text`]).
fn column_arrays<'a>(
    rows: impl IntoIterator<Item = &'a Vec<Value>>,
    columns: &[usize],
    casts: &[String],
) -> Vec<Vec<Option<String>>> {
    let mut arrays: Vec<Vec<Option<String>>> = vec![Vec::new(); columns.len()];
    for row in rows {
        for (array, &i) in arrays.iter_mut().zip(columns) {
            array.push(row.get(i).and_then(|v| pg_input_text(v, casts.get(i).map(String::as_str))));
        }
    }
    arrays
}

/// A value's text for a target column of type `cast`. A MySQL zero date or datetime
/// (`0000-00-00`, `0000-00-00 00:00:00[.000000]`) has no Postgres equivalent: into a date
/// or timestamp column it becomes `-infinity`, which no MySQL value otherwise produces and
/// which sorts before every date as the zero date does in MySQL. Into any other column
/// (text, say) it stays as it is.
pub(crate) fn pg_input_text(value: &Value, cast: Option<&str>) -> Option<String> {
    if let (Value::Date(s) | Value::Timestamp(s) | Value::TimestampTz(s), Some(cast)) = (value, cast) {
        let temporal = matches!(cast, "date" | "timestamp without time zone" | "timestamp with time zone");
        if temporal && is_zero_datetime(s) {
            return Some("-infinity".into());
        }
    }
    value.to_pg_text()
}

/// `0000-00-00` followed by nothing but a zero time (and zone) part.
fn is_zero_datetime(s: &str) -> bool {
    s.strip_prefix("0000-00-00").is_some_and(|rest| !rest.bytes().any(|b| (b'1'..=b'9').contains(&b)))
}

async fn execute_arrays<C: GenericClient + Sync>(
    tx: &C,
    st: &Statement,
    arrays: &[Vec<Option<String>>],
) -> Result<u64, ConnectorError> {
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        arrays.iter().map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
    tx.execute(st, &params).await.map_err(|e| pg_error("applying changes", e))
}

fn cast_types(state: &SinkState, schema: &TableSchema, target: &TableId) -> Result<Vec<String>, ConnectorError> {
    let table = state
        .targets
        .get(target)
        .ok_or_else(|| ConnectorError::fatal(format!("target table {target} was not prepared")))?;
    schema
        .columns
        .iter()
        .map(|c| {
            table.cast_types.get(&c.name).cloned().ok_or_else(|| {
                ConnectorError::fatal(format!("target table {target} has no column {} (added at the source?)", c.name))
            })
        })
        .collect()
}

/// Makes the target table fit the source schema: creates it, adds missing columns, follows
/// type changes. Runs inside the caller's transaction so DDL and data commit together.
async fn reconcile<C: GenericClient + Sync>(
    tx: &C,
    state: &mut SinkState,
    schema: &Arc<TableSchema>,
    target: &TableId,
) -> Result<(), ConnectorError> {
    let previous = state.reconciled.get(target).cloned();
    let mut existing = load_target_columns(tx, target).await?;
    if existing.is_empty() {
        create_table(tx, schema, target).await?;
        existing = load_target_columns(tx, target).await?;
    }
    let qtable = quote_table(target);
    let mut altered = false;
    if let Some(previous) = &previous {
        altered = follow_renames_and_drops(tx, previous, schema, target, &existing).await?;
        if altered {
            existing = load_target_columns(tx, target).await?;
        }
    }
    for column in &schema.columns {
        let declared = target_type(schema, column);
        match existing.iter().find(|(name, _, _)| name == &column.name) {
            None => {
                // Rows that existed before the column was added hold its default at the
                // source without any logged change: give them the same value here (a
                // constant default is filled in without rewriting the table).
                let c = quote_ident(&column.name);
                let sql = match &column.existing_rows_value {
                    Some(v) => format!(
                        "ALTER TABLE {qtable} ADD COLUMN {c} {declared} DEFAULT {}::{declared}; \
                         ALTER TABLE {qtable} ALTER COLUMN {c} DROP DEFAULT",
                        crate::sql::quote_literal(v)
                    ),
                    None => format!("ALTER TABLE {qtable} ADD COLUMN {c} {declared}"),
                };
                tx.batch_execute(&sql)
                    .await
                    .map_err(|e| pg_error(format_args!("adding column {} to target table {target}", column.name), e))?;
                tracing::info!(table = %target, column = %column.name, "added column to target table");
                altered = true;
            }
            Some((_, _, full_type)) => {
                // Follow a type change made at the source while streaming; a pre-existing
                // target table with different (compatible) types is left as the user made it.
                let changed_at_source = previous.as_ref().and_then(|p| {
                    p.columns.iter().find(|c| c.name == column.name).filter(|c| c.native_type != column.native_type)
                });
                if let Some(old) = changed_at_source {
                    if *full_type != format_type_form(&declared) {
                        tx.batch_execute(&format!(
                            "ALTER TABLE {qtable} ALTER COLUMN {c} TYPE {declared} USING {c}::{declared}",
                            c = quote_ident(&column.name)
                        ))
                        .await
                        .map_err(|e| {
                            let mut err = pg_error(
                                format_args!(
                                    "source changed the type of {target}.{} from {} to {}, and the target cannot follow; alter the target column by hand and restart",
                                    column.name, old.native_type, column.native_type
                                ),
                                e,
                            );
                            err.class = tidewater_core::ErrorClass::Fatal;
                            err
                        })?;
                        altered = true;
                    }
                }
            }
        }
    }
    if altered {
        existing = load_target_columns(tx, target).await?;
        state.statements.clear();
    }
    let mut table = TargetTable::default();
    for (name, cast, _) in existing {
        table.cast_types.insert(name, cast);
    }
    state.targets.insert(target.clone(), table);
    state.reconciled.insert(target.clone(), schema.clone());
    Ok(())
}

/// Follows columns the source renamed or dropped since `previous` (columns the target
/// does not have, e.g. left out of a pre-existing table, are skipped). Returns whether
/// the table was altered.
async fn follow_renames_and_drops<C: GenericClient + Sync>(
    tx: &C,
    previous: &TableSchema,
    schema: &TableSchema,
    target: &TableId,
    existing: &[(String, String, String)],
) -> Result<bool, ConnectorError> {
    let changes = tidewater_core::ColumnChanges::between(previous, schema);
    let has = |name: &str| existing.iter().any(|(n, _, _)| n == name);
    let qtable = quote_table(target);
    let mut altered = false;
    for (old, new) in changes.renamed.iter().filter(|(old, new)| has(old) && !has(new)) {
        let sql = format!("ALTER TABLE {qtable} RENAME COLUMN {} TO {}", quote_ident(old), quote_ident(new));
        tx.batch_execute(&sql).await.map_err(|e| {
            fatal_change(pg_error(format_args!("source renamed column {target}.{old} to {new}; following it"), e))
        })?;
        tracing::info!(table = %target, from = %old, to = %new, "renamed target column");
        altered = true;
    }
    for column in changes.dropped.iter().filter(|c| has(c)) {
        let sql = format!("ALTER TABLE {qtable} DROP COLUMN {}", quote_ident(column));
        tx.batch_execute(&sql).await.map_err(|e| {
            fatal_change(pg_error(format_args!("source dropped column {target}.{column}; following it"), e))
        })?;
        tracing::info!(table = %target, column = %column, "dropped target column");
        altered = true;
    }
    Ok(altered)
}

/// A target that refuses to follow a schema change (a server error, not a lost
/// connection) fails the pipeline: retrying would fail the same way.
fn fatal_change(mut e: ConnectorError) -> ConnectorError {
    if e.code.is_some() {
        e.class = tidewater_core::ErrorClass::Fatal;
        e.unclassified = false;
    }
    e
}

/// (name, cast type without typmod, full type) of each column; empty when the table does
/// not exist.
async fn load_target_columns<C: GenericClient + Sync>(
    tx: &C,
    target: &TableId,
) -> Result<Vec<(String, String, String)>, ConnectorError> {
    let rows = tx
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, -1), format_type(a.atttypid, a.atttypmod) \
             FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&quote_table(target)],
        )
        .await
        .map_err(|e| pg_error(format_args!("reading target table {target}"), e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

async fn create_table<C: GenericClient + Sync>(
    tx: &C,
    schema: &TableSchema,
    target: &TableId,
) -> Result<(), ConnectorError> {
    tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&target.schema)))
        .await
        .map_err(|e| pg_error(format_args!("creating schema {} on the target", target.schema), e))?;
    // Only a Postgres source's enum names are Postgres type names (other engines map enums
    // to text).
    let enums: &[(String, Vec<String>)] = if schema.engine == Engine::Postgres { &schema.enum_labels } else { &[] };
    for (type_name, labels) in enums {
        let exists = tx
            .query_one("SELECT to_regtype($1) IS NOT NULL", &[type_name])
            .await
            .map_err(|e| pg_error("looking up an enum type on the target", e))?
            .get::<_, bool>(0);
        if !exists {
            // Labels are values, but CREATE TYPE takes no parameters: quote them as literals.
            let labels = labels.iter().map(|l| format!("'{}'", l.replace('\'', "''"))).collect::<Vec<_>>();
            let schema_part = type_name.split_once("\".\"").map(|(s, _)| format!("{s}\""));
            if let Some(nsp) = schema_part {
                tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {nsp}"))
                    .await
                    .map_err(|e| pg_error("creating the enum type's schema on the target", e))?;
            }
            tx.batch_execute(&format!("CREATE TYPE {type_name} AS ENUM ({})", labels.join(", ")))
                .await
                .map_err(|e| pg_error(format_args!("creating enum type {type_name} on the target"), e))?;
        }
    }
    let columns: Vec<String> =
        schema.columns.iter().map(|c| format!("{} {}", quote_ident(&c.name), target_type(schema, c))).collect();
    let key: Vec<String> = schema.key.iter().map(|&i| quote_ident(&schema.columns[i].name)).collect();
    let primary_key = if key.is_empty() { String::new() } else { format!(", PRIMARY KEY ({})", key.join(", ")) };
    let sql = format!("CREATE TABLE {} ({}{primary_key})", quote_table(target), columns.join(", "));
    tx.batch_execute(&sql).await.map_err(|e| pg_error(format_args!("creating target table {target}"), e))?;
    tracing::info!(table = %target, "created target table");
    Ok(())
}

/// The column type to declare on a Postgres target.
/// A type as [`target_type`] writes it, in the spelling of Postgres' `format_type` (what
/// the target's catalog reports), to tell whether a column already has it.
fn format_type_form(declared: &str) -> String {
    let spelled = |prefix: &str, long: &str| declared.strip_prefix(prefix).map(|rest| format!("{long}{rest}"));
    spelled("varchar(", "character varying(").or_else(|| spelled("char(", "character(")).unwrap_or_else(|| {
        match declared {
            "timestamp" => "timestamp without time zone".into(),
            "timestamptz" => "timestamp with time zone".into(),
            "timetz" => "time with time zone".into(),
            other => other.to_string(),
        }
    })
}

fn target_type(schema: &TableSchema, column: &tidewater_core::Column) -> String {
    if schema.engine == Engine::Postgres {
        return column.native_type.clone();
    }
    match &column.kind {
        ColumnType::Bool => "boolean".into(),
        ColumnType::Int16 => "smallint".into(),
        ColumnType::Int32 => "integer".into(),
        ColumnType::Int64 => "bigint".into(),
        ColumnType::UInt64 => "numeric(20)".into(),
        ColumnType::Float32 => "real".into(),
        ColumnType::Float64 => "double precision".into(),
        ColumnType::Numeric { precision: Some(p), scale } => format!("numeric({p},{})", scale.unwrap_or(0)),
        ColumnType::Numeric { .. } => "numeric".into(),
        ColumnType::Varchar(Some(n)) => format!("varchar({n})"),
        ColumnType::Char(Some(n)) => format!("char({n})"),
        ColumnType::Text | ColumnType::Varchar(None) | ColumnType::Char(None) | ColumnType::Enum => "text".into(),
        ColumnType::Bytes => "bytea".into(),
        ColumnType::Json | ColumnType::Jsonb | ColumnType::Array => "jsonb".into(),
        ColumnType::Uuid => "uuid".into(),
        ColumnType::Date => "date".into(),
        // MySQL TIME spans −838:59:59 … 838:59:59 (a duration more than a time of day).
        ColumnType::Time => "interval".into(),
        ColumnType::TimeTz => "timetz".into(),
        ColumnType::Timestamp => "timestamp".into(),
        ColumnType::TimestampTz => "timestamptz".into(),
        ColumnType::Interval => "interval".into(),
        ColumnType::Other => "text".into(),
    }
}
