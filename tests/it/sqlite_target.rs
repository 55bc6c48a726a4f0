//! SQLite target: the sink driven directly with hand-built batches (every part of the
//! `Sink` contract), and Postgres → SQLite end to end through the daemon.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tidewater_core::{
    ApplyBatch, Checkpoint, Column, ColumnType, CopiedTable, Engine, ErrorClass, MovedRow, Op, RowOrigin, Sink,
    TableChanges, TableId, TablePlan, TableSchema, Value,
};
use tidewater_sqlite::sqlx::{self, Connection, Row};
use tidewater_sqlite::SqliteSink;

// ------------------------------------------------------------------ helpers

fn column(name: &str, kind: ColumnType) -> Column {
    Column { name: name.into(), native_type: format!("{kind:?}"), kind, nullable: true, existing_rows_value: None }
}

fn schema(name: &str, columns: Vec<Column>, key: Vec<usize>) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        id: TableId::new("public", name),
        engine: Engine::Postgres,
        columns,
        key,
        enum_labels: vec![],
    })
}

/// `items (id bigint PK, name text, body text (TOAST-able), price numeric, score float8,
/// flag bool, data bytea, at timestamptz)`.
fn items() -> Arc<TableSchema> {
    schema(
        "items",
        vec![
            column("id", ColumnType::Int64),
            column("name", ColumnType::Text),
            column("body", ColumnType::Text),
            column("price", ColumnType::Numeric { precision: None, scale: None }),
            column("score", ColumnType::Float64),
            column("flag", ColumnType::Bool),
            column("data", ColumnType::Bytes),
            column("at", ColumnType::TimestampTz),
        ],
        vec![0],
    )
}

fn item(id: i64, name: &str, body: Value) -> Vec<Value> {
    vec![
        Value::Int(id),
        Value::Text(name.into()),
        body,
        Value::Decimal(format!("{id}.50")),
        Value::Float(id as f64 / 4.0),
        Value::Bool(id % 2 == 0),
        Value::Bytes(vec![id as u8, 0, 255]),
        Value::TimestampTz(format!("2024-01-0{} 10:00:00.5+00", id % 9 + 1)),
    ]
}

fn plan(schema: &Arc<TableSchema>) -> TablePlan {
    TablePlan { source: schema.clone(), target: schema.id.clone() }
}

fn origin(tx: u32, op: Op) -> RowOrigin {
    RowOrigin { tx, op }
}

/// Changes to `schema`'s table with nothing in them.
fn changes(schema: &Arc<TableSchema>) -> TableChanges {
    TableChanges::upserts(schema.clone(), schema.id.clone(), Vec::new())
}

fn upserts(schema: &Arc<TableSchema>, rows: Vec<Vec<Value>>) -> TableChanges {
    let mut c = changes(schema);
    c.upsert_origins = rows.iter().map(|_| origin(0, Op::Insert)).collect();
    c.upserts = rows;
    c
}

fn batch(position: &str, tables: Vec<TableChanges>) -> ApplyBatch {
    ApplyBatch {
        pipeline: "p".into(),
        tables,
        positions: vec![position.into()],
        checkpoint: Checkpoint { position: position.into(), snapshot_complete: true, copy_progress: None },
    }
}

async fn read_conn(path: &Path) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", path.display())).await.unwrap()
}

/// The rows of `sql`, whose single column is text.
async fn texts(path: &Path, sql: &str) -> Vec<String> {
    let mut conn = read_conn(path).await;
    let rows = sqlx::query(sql).fetch_all(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter().map(|r| r.try_get::<Option<String>, _>(0).unwrap().unwrap_or_else(|| "<NULL>".into())).collect()
}

/// Every row of `items`, each column as SQLite's `quote()` literal (type visible).
async fn item_rows(path: &Path) -> Vec<String> {
    texts(
        path,
        "SELECT quote(id)||'|'||quote(name)||'|'||quote(body)||'|'||quote(price)||'|'||quote(score)||'|'||\
         quote(flag)||'|'||quote(data)||'|'||quote(at) FROM items ORDER BY id",
    )
    .await
}

async fn count(path: &Path, sql: &str) -> i64 {
    let mut conn = read_conn(path).await;
    sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
}

async fn new_sink(dir: &tempfile::TempDir) -> (SqliteSink, PathBuf) {
    let path = dir.path().join("target.db");
    let mut sink = SqliteSink::new(path.clone());
    sink.prepare().await.unwrap();
    (sink, path)
}

// ------------------------------------------------------------------ direct sink tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_applies_every_kind_of_change_idempotently_with_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sink, path) = new_sink(&dir).await;
    assert_eq!(sink.load_checkpoint("p").await.unwrap(), None);
    let s = items();
    sink.ensure_tables(&[plan(&s)]).await.unwrap();
    // Declared types and key as the mapping says.
    let declared = texts(&path, "SELECT name||' '||type||' '||pk FROM pragma_table_info('items') ORDER BY cid").await;
    assert_eq!(
        declared,
        [
            "id INTEGER 1",
            "name TEXT 0",
            "body TEXT 0",
            "price TEXT 0",
            "score REAL 0",
            "flag INTEGER 0",
            "data BLOB 0",
            "at TEXT 0"
        ]
    );

    // Inserts.
    let rows: Vec<_> = (1..=4).map(|i| item(i, &format!("n{i}"), Value::Text(format!("body {i}")))).collect();
    let report = sink.apply(&batch("0/10", vec![upserts(&s, rows)])).await.unwrap();
    assert_eq!(report.rows_written, 4);
    assert_eq!(item_rows(&path).await[0], "1|'n1'|'body 1'|'1.50'|0.25|0|X'0100FF'|'2024-01-02T10:00:00.500000Z'");
    assert_eq!(
        sink.load_checkpoint("p").await.unwrap(),
        Some(Checkpoint { position: "0/10".into(), snapshot_complete: true, copy_progress: None })
    );

    // Update with an unchanged TOAST column, key move with an unchanged column, delete.
    let mut second = changes(&s);
    let mut renamed = item(1, "renamed", Value::Unchanged);
    renamed[4] = Value::Float(f64::INFINITY);
    second.upserts = vec![renamed, item(3, "full update", Value::Text("new body".into()))];
    second.upsert_origins = vec![origin(0, Op::Update), origin(0, Op::Update)];
    second.moves = vec![MovedRow { from: item(2, "", Value::Null), row: item(20, "moved", Value::Unchanged) }];
    second.move_origins = vec![origin(0, Op::Update)];
    second.deletes = vec![item(2, "", Value::Null), item(4, "", Value::Null)];
    second.delete_origins = vec![origin(0, Op::Update), origin(0, Op::Delete)];
    let b2 = batch("0/20", vec![second]);
    sink.apply(&b2).await.unwrap();
    let expected = [
        "1|'renamed'|'body 1'|'1.50'|9.0e+999|0|X'0100FF'|'2024-01-02T10:00:00.500000Z'",
        "3|'full update'|'new body'|'3.50'|0.75|0|X'0300FF'|'2024-01-04T10:00:00.500000Z'",
        "20|'moved'|'body 2'|'20.50'|5.0|1|X'1400FF'|'2024-01-03T10:00:00.500000Z'",
    ];
    assert_eq!(item_rows(&path).await, expected);
    // Applying the same batch again (a restart after a crash) changes nothing.
    sink.apply(&b2).await.unwrap();
    assert_eq!(item_rows(&path).await, expected);
    assert_eq!(sink.load_checkpoint("p").await.unwrap().unwrap().position, "0/20");

    // Truncate, then rows inserted after it in the same batch.
    let mut third = upserts(&s, vec![item(7, "after truncate", Value::Null)]);
    third.truncate = true;
    sink.apply(&batch("0/30", vec![third])).await.unwrap();
    assert_eq!(texts(&path, "SELECT name FROM items").await, ["after truncate"]);

    // A checkpoint-only batch moves the checkpoint.
    sink.apply(&ApplyBatch::checkpoint_only(
        "p",
        Checkpoint { position: "0/40".into(), snapshot_complete: true, copy_progress: None },
    ))
    .await
    .unwrap();
    assert_eq!(sink.load_checkpoint("p").await.unwrap().unwrap().position, "0/40");
    assert_eq!(count(&path, "SELECT count(*) FROM tidewater_checkpoints").await, 1);

    // A fresh sink on the same file (a restart) sees the same state.
    let mut again = SqliteSink::new(path.clone());
    again.prepare().await.unwrap();
    again.ensure_tables(&[plan(&s)]).await.unwrap();
    assert_eq!(again.load_checkpoint("p").await.unwrap().unwrap().position, "0/40");
    let mode = texts(&path, "PRAGMA journal_mode").await;
    assert_eq!(mode, ["wal"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_dead_letters_rejected_rows_and_keeps_nan_and_big_values_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sink, path) = new_sink(&dir).await;
    // The user's own table, with a rule the source does not have.
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    sqlx::query("CREATE TABLE checked (id INTEGER PRIMARY KEY, v INTEGER CHECK (v >= 0), f REAL, u INTEGER)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let s = schema(
        "checked",
        vec![
            column("id", ColumnType::Int32),
            column("v", ColumnType::Int32),
            column("f", ColumnType::Float64),
            column("u", ColumnType::UInt64),
        ],
        vec![0],
    );
    sink.ensure_tables(&[plan(&s)]).await.unwrap();
    let row = |id: i64, v: i64, f: f64, u: u64| vec![Value::Int(id), Value::Int(v), Value::Float(f), Value::UInt(u)];
    let mut c = changes(&s);
    c.upserts = (1..=40).map(|i| row(i, if i == 17 { -1 } else { i }, i as f64, i as u64)).collect();
    c.upserts.push(row(41, 1, f64::NAN, 1));
    c.upserts.push(row(42, 1, f64::NEG_INFINITY, u64::MAX));
    c.upsert_origins = (0..42).map(|i| origin(if i < 20 { 0 } else { 1 }, Op::Insert)).collect();
    c.deletes = vec![row(99, 0, 0.0, 0)];
    c.delete_origins = vec![origin(1, Op::Delete)];
    let mut b = batch("0/2", vec![c]);
    b.positions = vec!["0/1".into(), "0/2".into()];

    let err = sink.apply(&b).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Event, "{err}");
    assert_eq!(count(&path, "SELECT count(*) FROM checked").await, 0, "nothing of the failed batch committed");
    let report = sink.apply_isolating(&b).await.unwrap();
    assert_eq!(report.dead_letters, 2, "the CHECK violation and the u64 above i64::MAX");
    assert_eq!(count(&path, "SELECT count(*) FROM checked").await, 40);
    let dead = texts(
        &path,
        "SELECT op||' '||source_position||' '||source_table||' '||json_extract(payload, '$.id')||' '||error \
         FROM tidewater_dead_letters ORDER BY id",
    )
    .await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead[0].starts_with("insert 0/1 public.checked 17 ") && dead[0].contains("CHECK"), "{dead:?}");
    assert!(
        dead[1].starts_with("insert 0/2 public.checked 42 ") && dead[1].contains("18446744073709551615"),
        "{dead:?}"
    );
    // NaN is kept (as text), not turned into NULL; -Infinity is a float.
    assert_eq!(texts(&path, "SELECT typeof(f)||' '||f FROM checked WHERE id = 41").await, ["text NaN"]);
    assert_eq!(texts(&path, "SELECT typeof(f)||' '||f FROM checked WHERE id = 1").await, ["real 1.0"]);
    assert_eq!(sink.load_checkpoint("p").await.unwrap().unwrap().position, "0/2");

    // With the column declared TEXT by the user, a u64 above i64::MAX is kept exactly.
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    sqlx::query("CREATE TABLE wide (id INTEGER PRIMARY KEY, u TEXT)").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let w = schema("wide", vec![column("id", ColumnType::Int32), column("u", ColumnType::UInt64)], vec![0]);
    sink.ensure_tables(&[plan(&w)]).await.unwrap();
    sink.apply(&batch("0/3", vec![upserts(&w, vec![vec![Value::Int(1), Value::UInt(u64::MAX)]])])).await.unwrap();
    assert_eq!(texts(&path, "SELECT typeof(u)||' '||u FROM wide").await, ["text 18446744073709551615"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_large_transaction_commits_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sink, path) = new_sink(&dir).await;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    sqlx::query("CREATE TABLE big (id INTEGER PRIMARY KEY, v INTEGER NOT NULL CHECK (v <> 1777))")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let s = schema("big", vec![column("id", ColumnType::Int64), column("v", ColumnType::Int64)], vec![0]);
    sink.ensure_tables(&[plan(&s)]).await.unwrap();
    let part = |from: i64, to: i64| {
        let rows = (from..to).map(|i| vec![Value::Int(i), Value::Int(i)]).collect();
        batch("0/100", vec![upserts(&s, rows)])
    };

    // Aborted: nothing stays.
    sink.begin_large().await.unwrap();
    sink.apply_part(&part(0, 1000), true).await.unwrap();
    sink.abort_large().await;
    assert_eq!(count(&path, "SELECT count(*) FROM big").await, 0);

    // Without isolation a rejected row fails the part.
    sink.begin_large().await.unwrap();
    let err = sink.apply_part(&part(1000, 2000), false).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Event);
    sink.abort_large().await;

    // Three parts (one with a poison row), readers see nothing until the commit.
    sink.begin_large().await.unwrap();
    let r1 = sink.apply_part(&part(0, 1500), true).await.unwrap();
    let r2 = sink.apply_part(&part(1500, 3000), true).await.unwrap();
    assert_eq!((r1.dead_letters, r2.dead_letters), (0, 1));
    assert_eq!(count(&path, "SELECT count(*) FROM big").await, 0, "a reader saw part of the transaction");
    let last = part(3000, 3500);
    let r3 = sink.commit_large(&last, true).await.unwrap();
    assert_eq!(r3.rows_written, 500);
    assert_eq!(count(&path, "SELECT count(*) FROM big").await, 3499);
    assert_eq!(count(&path, "SELECT count(*) FROM tidewater_dead_letters WHERE payload->>'id' = 1777").await, 1);
    assert_eq!(sink.load_checkpoint("p").await.unwrap().unwrap().position, "0/100");
    // The sink is usable for ordinary batches afterwards.
    sink.apply(&part(5000, 5001)).await.unwrap();
    assert_eq!(count(&path, "SELECT count(*) FROM big").await, 3500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_waits_for_another_writer_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sink, path) = new_sink(&dir).await;
    let s = schema("t", vec![column("id", ColumnType::Int32)], vec![0]);
    sink.ensure_tables(&[plan(&s)]).await.unwrap();
    // Another process holds the write lock for a while (under busy_timeout).
    let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut other).await.unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        other.close().await.unwrap();
    });
    let started = std::time::Instant::now();
    sink.apply(&batch("0/1", vec![upserts(&s, vec![vec![Value::Int(1)]])])).await.unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(500), "the apply waited for the lock");
    release.await.unwrap();
    assert_eq!(count(&path, "SELECT count(*) FROM t").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_snapshot_bookkeeping_and_schema_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sink, path) = new_sink(&dir).await;
    let s = schema("t", vec![column("id", ColumnType::Int32), column("v", ColumnType::Text)], vec![0]);
    sink.ensure_tables(&[plan(&s)]).await.unwrap();
    let pending = Checkpoint { position: "0/5".into(), snapshot_complete: false, copy_progress: None };
    sink.reset_for_snapshot("p", &[], &pending).await.unwrap();
    assert_eq!(sink.load_checkpoint("p").await.unwrap(), Some(pending.clone()));
    let mut chunk = batch(
        "0/5",
        vec![TableChanges::upserts(
            s.clone(),
            s.id.clone(),
            vec![vec![Value::Int(1), Value::Text("a".into())], vec![Value::Int(2), Value::Text("b".into())]],
        )],
    );
    chunk.checkpoint = pending.clone();
    sink.apply(&chunk).await.unwrap();
    assert!(sink.snapshotted_tables("p").await.unwrap().is_empty());
    let done = Checkpoint { position: "0/5".into(), snapshot_complete: true, copy_progress: None };
    let copied = CopiedTable::new(s.id.clone(), Some("0/4".into()));
    sink.complete_snapshot("p", std::slice::from_ref(&copied), &done).await.unwrap();
    assert_eq!(sink.snapshotted_tables("p").await.unwrap(), vec![copied]);
    assert_eq!(sink.load_checkpoint("p").await.unwrap(), Some(done.clone()));
    // A restarted snapshot empties the tables and forgets what was copied.
    sink.reset_for_snapshot("p", std::slice::from_ref(&s.id), &pending).await.unwrap();
    assert_eq!(count(&path, "SELECT count(*) FROM t").await, 0);
    assert!(sink.snapshotted_tables("p").await.unwrap().is_empty());
    sink.apply(&chunk).await.unwrap();

    // A column added at the source with a default: existing rows get it, in the batch
    // that first carries the new shape.
    let mut cols = s.columns.clone();
    let mut added = column("flag", ColumnType::Bool);
    added.existing_rows_value = Some("t".into());
    cols.push(added);
    cols.push(column("note", ColumnType::Text));
    let s2 = schema("t", cols, vec![0]);
    let b = batch(
        "0/6",
        vec![upserts(&s2, vec![vec![Value::Int(3), Value::Text("c".into()), Value::Bool(false), Value::Null]])],
    );
    sink.apply(&b).await.unwrap();
    assert_eq!(
        texts(&path, "SELECT id||' '||v||' '||flag||' '||quote(note) FROM t ORDER BY id").await,
        ["1 a 1 NULL", "2 b 1 NULL", "3 c 0 NULL"]
    );
    // A type change SQLite would store differently is refused with the fix.
    let mut cols = s2.columns.clone();
    cols[1] = column("v", ColumnType::Int64);
    let s3 = schema("t", cols, vec![0]);
    let err = sink.apply(&batch("0/7", vec![upserts(&s3, vec![])])).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Fatal);
    assert!(err.message.contains("rebuild the table"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_refuses_bad_paths_colliding_names_and_tables_without_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no such dir").join("t.db");
    let err = SqliteSink::new(missing.clone()).prepare().await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Fatal);
    assert!(err.message.contains(&missing.display().to_string()) && err.message.contains("does not exist"), "{err}");

    let not_a_db = dir.path().join("garbage.db");
    std::fs::write(&not_a_db, vec![b'x'; 8192]).unwrap();
    let err = SqliteSink::new(not_a_db.clone()).prepare().await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Fatal, "{err}");
    assert!(err.message.contains(&not_a_db.display().to_string()), "{err}");

    // `check` says the same, without creating anything.
    let err = tidewater_sqlite::check_target(&missing).await.unwrap_err();
    assert!(err.is_fatal() && err.message.contains("does not exist"), "{err}");
    let err = tidewater_sqlite::check_target(&not_a_db).await.unwrap_err();
    assert!(err.is_fatal() && err.message.contains(&not_a_db.display().to_string()), "{err}");
    let fresh = dir.path().join("fresh.db");
    let ok = tidewater_sqlite::check_target(&fresh).await.unwrap();
    assert!(ok.contains("will be created") && !fresh.exists(), "{ok}");

    let (mut sink, path) = new_sink(&dir).await;
    let ok = tidewater_sqlite::check_target(&path).await.unwrap();
    assert!(ok.contains("is writable"), "{ok}");
    let a = schema("orders", vec![column("id", ColumnType::Int32)], vec![0]);
    let mut b = (*a).clone();
    b.id = TableId::new("sales", "orders");
    let b = Arc::new(b);
    let err = sink.ensure_tables(&[plan(&a), plan(&b)]).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Fatal);
    assert!(err.message.contains("public.orders") && err.message.contains("sales.orders"), "{err}");

    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    sqlx::query("CREATE TABLE nokey (id INTEGER, v TEXT)").execute(&mut conn).await.unwrap();
    sqlx::query("CREATE TABLE idx (id INTEGER, v TEXT)").execute(&mut conn).await.unwrap();
    sqlx::query("CREATE UNIQUE INDEX idx_id ON idx (id)").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let nokey = schema("nokey", vec![column("id", ColumnType::Int32), column("v", ColumnType::Text)], vec![0]);
    let err = sink.ensure_tables(&[plan(&nokey)]).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Fatal);
    assert!(err.message.contains("CREATE UNIQUE INDEX"), "{err}");
    // A unique index on the key is enough.
    let idx = schema("idx", vec![column("id", ColumnType::Int32), column("v", ColumnType::Text)], vec![0]);
    sink.ensure_tables(&[plan(&idx)]).await.unwrap();
    let rows = vec![vec![Value::Int(1), Value::Text("x".into())]];
    sink.apply(&batch("0/1", vec![upserts(&idx, rows.clone())])).await.unwrap();
    sink.apply(&batch("0/1", vec![upserts(&idx, rows)])).await.unwrap();
    assert_eq!(count(&path, "SELECT count(*) FROM idx").await, 1);
}

// ------------------------------------------------------------------ Postgres → SQLite

mod end_to_end {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::{count, read_conn, texts};
    use crate::support::{wait_for, TestPipeline};
    use tidewater_sqlite::sqlx::{self, Connection, Row};

    const CONVERGE: Duration = Duration::from_secs(45);

    /// A pipeline writing to a SQLite file in the test's directory.
    async fn sqlite_pipeline(prefix: &str, setup_sql: &str, tables: &[&str]) -> (TestPipeline, PathBuf) {
        let mut p = TestPipeline::new(prefix, setup_sql, tables).await;
        let path = p.dir.path().join("edge.db");
        p.target_override = Some(format!("[targets.dst]\ntype = \"sqlite\"\npath = \"{}\"", path.display()));
        (p, path)
    }

    /// Runs `sql` (several statements allowed) on the SQLite file, as the user would.
    async fn sqlite_exec(path: &Path, sql: &str) {
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        conn.close().await.unwrap();
    }

    async fn pg_texts(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
        client.query(sql, &[]).await.unwrap().iter().map(|r| r.get::<_, String>(0)).collect()
    }

    /// `id|item|qty` of every source row of `orders` (but `except`), as both sides print them.
    const ORDERS_PG: &str = "SELECT id || '|' || item || '|' || coalesce(qty::text, 'NULL') FROM orders \
                             WHERE id <> 9999 ORDER BY id";
    const ORDERS_SQLITE: &str = "SELECT id || '|' || item || '|' || coalesce(qty, 'NULL') FROM orders ORDER BY id";

    async fn wait_orders_converged(p: &TestPipeline, path: &Path) -> Vec<String> {
        let src = p.source_client().await;
        wait_for("orders converged into SQLite", CONVERGE, || async {
            let a = pg_texts(&src, ORDERS_PG).await;
            let b = if path.exists() { texts(path, ORDERS_SQLITE).await } else { Vec::new() };
            (a == b).then_some(a)
        })
        .await
    }

    /// Each typed row as SQLite's `quote()` literals (storage class visible).
    const TYPED_SQLITE: &str = "SELECT quote(id)||' '||quote(c_int)||' '||quote(c_big)||' '||quote(c_num)||' '||\
        quote(c_float)||' '||quote(c_bool)||' '||quote(c_text)||' '||quote(c_bytea)||' '||quote(c_json)||' '||\
        quote(c_jsonb)||' '||quote(c_uuid)||' '||quote(c_date)||' '||quote(c_tstz)||' '||quote(c_ts)||' '||\
        quote(c_arr) FROM typed ORDER BY id";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_to_sqlite_snapshot_stream_types_dead_letter_and_restart() {
        let (p, path) = sqlite_pipeline(
            "sqlite_e2e",
            r#"CREATE TABLE typed (id int PRIMARY KEY, c_int int, c_big bigint, c_num numeric, c_float float8,
                   c_bool bool, c_text text, c_bytea bytea, c_json json, c_jsonb jsonb, c_uuid uuid, c_date date,
                   c_tstz timestamptz, c_ts timestamp, c_arr int[]);
               INSERT INTO typed VALUES
                 (1, 2147483647, 9223372036854775807, '123456789012345678901234567890.123456789', 1.1, true,
                  'Grüße, 你好, 🌊', '\x00ff10', '{"a": 1,  "a": 2}', '{"b": [1, 2.50]}',
                  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29', '2024-02-29 12:34:56.123456+02',
                  '2024-02-29 12:34:56', '{1,NULL,3}'),
                 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
               CREATE TABLE orders (id bigint PRIMARY KEY, item text NOT NULL, qty int);
               INSERT INTO orders SELECT g, 'item ' || g, g % 7 FROM generate_series(1, 2000) g;
               CREATE TABLE scratch (id int PRIMARY KEY, v text);
               INSERT INTO scratch VALUES (1, 'a'), (2, 'b');"#,
            &["public.typed", "public.orders", "public.scratch"],
        )
        .await;
        // The target has a rule the source does not: qty >= 0.
        sqlite_exec(
            &path,
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL, qty INTEGER CHECK (qty >= 0))",
        )
        .await;
        let daemon = p.start();
        p.wait_state("streaming", CONVERGE).await;
        assert_eq!(wait_orders_converged(&p, &path).await.len(), 2000);
        let snapshot_typed = [
            "1 2147483647 9223372036854775807 '123456789012345678901234567890.123456789' 1.1 1 \
             'Grüße, 你好, 🌊' X'00FF10' '{\"a\": 1,  \"a\": 2}' '{\"b\": [1, 2.50]}' \
             'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' '2024-02-29' '2024-02-29T10:34:56.123456Z' \
             '2024-02-29T12:34:56.000000' '{1,NULL,3}'",
            "2 NULL NULL NULL NULL NULL NULL NULL NULL NULL NULL NULL NULL NULL NULL",
        ];
        assert_eq!(texts(&path, TYPED_SQLITE).await, snapshot_typed);

        // Streaming: every operation, special values, a key move, a truncate, a poison row.
        let src = p.source_client().await;
        for sql in [
            r#"INSERT INTO typed VALUES (3, -2147483648, -9223372036854775808, 'NaN', 'Infinity', false,
                 E'tab\there ''quoted''', '\x', '[]', '"str"', '00000000-0000-0000-0000-000000000000',
                 '0044-03-15 BC', 'infinity', '-infinity', '{}'),
               (4, 0, 0, '-0.000100', '-Infinity', true, '', '\x00', 'null', '{}', NULL, '1970-01-01',
                '1970-01-01 00:00:00+00', '2000-01-01 00:00:00.000001', '{{1,2},{3,4}}'),
               (5, 1, 1, '1', 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"#,
            "UPDATE typed SET c_text = 'updated', c_num = '0.10' WHERE id = 1",
            "INSERT INTO orders SELECT g, 'new ' || g, 1 FROM generate_series(2001, 2100) g",
            "UPDATE orders SET qty = qty + 100 WHERE id <= 10",
            "DELETE FROM orders WHERE id BETWEEN 11 AND 20",
            "UPDATE orders SET id = 5000, item = 'moved' WHERE id = 21",
            "BEGIN; INSERT INTO orders VALUES (9999, 'poison', -5); INSERT INTO orders VALUES (6000, 'same tx', 1); COMMIT",
            "BEGIN; TRUNCATE scratch; INSERT INTO scratch VALUES (3, 'c'); COMMIT",
        ] {
            src.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let rows = wait_orders_converged(&p, &path).await;
        assert_eq!(rows.len(), 2000 + 100 - 10 + 1, "{:?}", &rows[..5]);
        assert!(rows.contains(&"5000|moved|0".to_string()) && rows.contains(&"1|item 1|101".to_string()));
        wait_for("scratch truncated", CONVERGE, || async {
            (texts(&path, "SELECT id || v FROM scratch ORDER BY id").await == ["3c"]).then_some(())
        })
        .await;
        let typed = wait_for("typed rows streamed", CONVERGE, || async {
            let rows = texts(&path, TYPED_SQLITE).await;
            (rows.len() == 5 && rows[0].contains("'updated'")).then_some(rows)
        })
        .await;
        assert_eq!(
            typed[0],
            "1 2147483647 9223372036854775807 '0.10' 1.1 1 'updated' X'00FF10' '{\"a\": 1,  \"a\": 2}' \
             '{\"b\": [1, 2.50]}' 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' '2024-02-29' \
             '2024-02-29T10:34:56.123456Z' '2024-02-29T12:34:56.000000' '{1,NULL,3}'"
        );
        assert_eq!(typed[1], snapshot_typed[1]);
        // Infinity is a REAL; values SQLite cannot normalize (BC, infinity) keep the source's text.
        assert_eq!(
            typed[2],
            "3 -2147483648 -9223372036854775808 'NaN' 9.0e+999 0 'tab\there ''quoted''' X'' '[]' '\"str\"' \
             '00000000-0000-0000-0000-000000000000' '0044-03-15 BC' 'infinity' '-infinity' '{}'"
        );
        assert_eq!(
            typed[3],
            "4 0 0 '-0.000100' -9.0e+999 1 '' X'00' 'null' '{}' NULL '1970-01-01' '1970-01-01T00:00:00.000000Z' \
             '2000-01-01T00:00:00.000001' '{{1,2},{3,4}}'"
        );
        // A NaN float is kept as the text 'NaN', never NULL.
        assert_eq!(typed[4], "5 1 1 '1' 'NaN' NULL NULL NULL NULL NULL NULL NULL NULL NULL NULL");
        let mut conn = read_conn(&path).await;
        let (inf, big): (f64, i64) = {
            let r = sqlx::query("SELECT c_float, c_big FROM typed WHERE id = 3").fetch_one(&mut conn).await.unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!((inf, big), (f64::INFINITY, i64::MIN));
        let blob: Vec<u8> =
            sqlx::query_scalar("SELECT c_bytea FROM typed WHERE id = 1").fetch_one(&mut conn).await.unwrap();
        assert_eq!(blob, vec![0x00, 0xff, 0x10]);
        // SQLite's date functions read the normalized timestamps; JSON functions the JSON.
        let unix: i64 =
            sqlx::query_scalar("SELECT unixepoch(c_tstz) FROM typed WHERE id = 4").fetch_one(&mut conn).await.unwrap();
        assert_eq!(unix, 0);
        let b1: f64 = sqlx::query_scalar("SELECT json_extract(c_jsonb, '$.b[1]') FROM typed WHERE id = 1")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(b1, 2.5);

        // The poison row is a dead letter; its transaction's other row arrived.
        let dead = texts(
            &path,
            "SELECT pipeline||' '||source_table||' '||target_table||' '||op||' '||json_extract(payload, '$.id')||' '||\
             json_extract(payload, '$.qty')||' '||(replayed_at IS NULL)||' '||error FROM tidewater_dead_letters",
        )
        .await;
        assert_eq!(dead.len(), 1, "{dead:?}");
        let prefix = format!("{} public.orders public.orders insert 9999 -5 1 ", p.name);
        assert!(dead[0].starts_with(&prefix) && dead[0].contains("CHECK constraint failed"), "{dead:?}");
        let position = texts(&path, "SELECT source_position FROM tidewater_dead_letters").await;
        assert!(position[0].contains('/'), "an LSN: {position:?}");
        let status = p.status().await.unwrap();
        assert_eq!(status["dead_letters_total"], 1, "{status}");
        assert_eq!(status["state"], "streaming", "{status}");
        // The checkpoint is in the file, equal to what the status reports as applied.
        let checkpoint = wait_for("checkpoint equals applied position", CONVERGE, || async {
            let status = p.status().await?;
            let cp = texts(
                &path,
                &format!(
                    "SELECT source_position||' '||snapshot_complete FROM tidewater_checkpoints WHERE pipeline = '{}'",
                    p.name
                ),
            )
            .await;
            let applied = status["applied_position"].as_str()?.to_string();
            (cp == [format!("{applied} 1")]).then_some(applied)
        })
        .await;
        assert!(checkpoint.contains('/'));
        assert_eq!(count(&path, "SELECT count(*) FROM tidewater_snapshot_tables").await, 3);

        // Count every write the daemon makes to orders from now on: on an insert-only
        // source, a re-applied change would show up as an UPDATE (upsert conflict).
        sqlite_exec(
            &path,
            "CREATE TABLE orders_audit (op TEXT, id INTEGER); \
             CREATE TRIGGER orders_ins AFTER INSERT ON orders BEGIN INSERT INTO orders_audit VALUES ('INSERT', NEW.id); END; \
             CREATE TRIGGER orders_upd AFTER UPDATE ON orders BEGIN INSERT INTO orders_audit VALUES ('UPDATE', NEW.id); END;",
        )
        .await;
        assert_eq!(daemon.stop().await, vec![tidewater::engine::Outcome::Stopped]);
        for b in 0..5 {
            src.batch_execute(&format!(
                "INSERT INTO orders SELECT g, 'stopped', 2 FROM generate_series({}, {}) g",
                10_000 + b * 10,
                10_009 + b * 10
            ))
            .await
            .unwrap();
        }
        let daemon = p.start();
        p.wait_state("streaming", CONVERGE).await;
        src.batch_execute("INSERT INTO orders SELECT g, 'after restart', 3 FROM generate_series(20000, 20009) g")
            .await
            .unwrap();
        let rows = wait_orders_converged(&p, &path).await;
        assert_eq!(rows.len(), 2091 + 60);
        assert_eq!(
            texts(&path, "SELECT op||':'||count(*)||':'||count(DISTINCT id) FROM orders_audit GROUP BY op").await,
            ["INSERT:60:60"],
            "after the restart exactly the 60 new rows are written, once (no snapshot again, nothing re-applied)"
        );
        let status = p.status().await.unwrap();
        assert_eq!(status["events_applied_total"], 60, "{status}");
        assert_eq!(count(&path, "SELECT count(*) FROM tidewater_dead_letters").await, 1);
        assert_eq!(daemon.stop().await, vec![tidewater::engine::Outcome::Stopped]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_to_sqlite_large_transaction_arrives_whole() {
        let (p, path) = sqlite_pipeline(
            "sqlite_large",
            "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, pad text); CREATE TABLE other (id int PRIMARY KEY)",
            &["public.big", "public.other"],
        )
        .await;
        sqlite_exec(
            &path,
            "CREATE TABLE big (id INTEGER PRIMARY KEY, v INTEGER NOT NULL CHECK (v <> 17777), pad TEXT)",
        )
        .await;
        let daemon = p.start();
        p.wait_state("streaming", CONVERGE).await;
        let src = p.source_client().await;
        // 35k rows (several parts), one rejected by the target, in one transaction with a
        // row of another table; then a small transaction.
        src.batch_execute(
            "BEGIN; INSERT INTO big SELECT g, g, repeat('x', 50) FROM generate_series(1, 35000) g; \
             INSERT INTO other VALUES (1); UPDATE big SET v = v + 1 WHERE id <= 10; COMMIT; \
             INSERT INTO other VALUES (2);",
        )
        .await
        .unwrap();
        // Readers of the target never see part of it.
        wait_for("large transaction applied", CONVERGE, || async {
            let n = count(&path, "SELECT count(*) FROM big").await;
            assert!(n == 0 || n == 34999, "saw a partial transaction: {n} rows");
            (n == 34999).then_some(())
        })
        .await;
        wait_for("other applied", CONVERGE, || async {
            (count(&path, "SELECT count(*) FROM other").await == 2).then_some(())
        })
        .await;
        assert_eq!(count(&path, "SELECT v FROM big WHERE id = 1").await, 2);
        assert_eq!(
            texts(&path, "SELECT CAST(json_extract(payload, '$.id') AS TEXT) FROM tidewater_dead_letters").await,
            ["17777"]
        );
        let status = p.status().await.unwrap();
        assert_eq!(status["dead_letters_total"], 1, "{status}");
        assert_eq!(status["events_applied_total"], 35011, "{status}");
        daemon.stop().await;
    }
}
