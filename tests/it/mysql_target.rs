//! MySQL/MariaDB target: the sink driven directly with hand-built batches (every part of
//! the `Sink` contract) against a throwaway MariaDB, and Postgres → MariaDB end to end
//! through the daemon.

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use tidewater_core::{
    ApplyBatch, Checkpoint, Column, ColumnType, CopiedTable, Engine, ErrorClass, MovedRow, Op, RowOrigin, Sink,
    TableChanges, TableId, TablePlan, TableSchema, Value,
};
use tidewater_mysql::sink::MysqlEndpoint;
use tidewater_mysql::MysqlSink;

use crate::support::mysql::{fresh_mysql_db, mysql_target, MyServer, MYSQL_PASSWORD, MYSQL_USER};
use crate::support::{wait_for, TestPipeline};

const CONVERGE: Duration = Duration::from_secs(60);

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

/// `items (id bigint PK, name text, body text (TOAST-able), price numeric(10,2), score
/// float8, flag bool, data bytea, at timestamptz)`.
fn items() -> Arc<TableSchema> {
    schema(
        "items",
        vec![
            column("id", ColumnType::Int64),
            column("name", ColumnType::Text),
            column("body", ColumnType::Text),
            column("price", ColumnType::Numeric { precision: Some(10), scale: Some(2) }),
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
        Value::TimestampTz(format!("2024-01-0{} 10:00:00.5+02", id % 9 + 1)),
    ]
}

fn plan(schema: &Arc<TableSchema>) -> TablePlan {
    TablePlan { source: schema.clone(), target: schema.id.clone() }
}

fn origin(tx: u32, op: Op) -> RowOrigin {
    RowOrigin { tx, op }
}

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

fn endpoint(server: &MyServer, db: &str) -> MysqlEndpoint {
    MysqlEndpoint {
        host: "127.0.0.1".into(),
        port: server.port,
        user: MYSQL_USER.into(),
        password: Some(MYSQL_PASSWORD.into()),
        database: db.into(),
    }
}

/// A prepared sink on a fresh database; returns the sink, the server and the database.
async fn new_sink(prefix: &str) -> (MysqlSink, &'static MyServer, String) {
    let server = mysql_target().await;
    let db = fresh_mysql_db(server, prefix).await;
    let mut sink = MysqlSink::new(endpoint(server, &db));
    sink.prepare().await.unwrap();
    (sink, server, db)
}

/// Every row of `sql`, each column as text (`<NULL>` for NULL), joined with `|`.
async fn rows(server: &MyServer, db: &str, sql: &str) -> Vec<String> {
    try_rows(server, db, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn try_rows(server: &MyServer, db: &str, sql: &str) -> Result<Vec<String>, mysql_async::Error> {
    let mut conn = server.connect(db).await;
    let result: Result<Vec<mysql_async::Row>, _> = conn.query(sql).await;
    let _ = conn.disconnect().await;
    Ok(result?
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| match row.as_ref(i) {
                    Some(mysql_async::Value::NULL) | None => "<NULL>".to_string(),
                    Some(mysql_async::Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
                    Some(other) => other.as_sql(true),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect())
}

async fn exec(server: &MyServer, db: &str, sql: &str) {
    let mut conn = server.connect(db).await;
    conn.query_drop(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.disconnect().await;
}

async fn item_rows(server: &MyServer, db: &str) -> Vec<String> {
    rows(server, db, "SELECT id, name, body, price, score, flag, HEX(data), at FROM items ORDER BY id").await
}

// ------------------------------------------------------------------ direct sink tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_applies_every_kind_of_change_idempotently_with_its_checkpoint() {
    let (mut sink, server, db) = new_sink("my_apply").await;
    assert_eq!(sink.load_checkpoint("p").await.unwrap(), None);
    let s = items();
    sink.ensure_tables(&[plan(&s)]).await.unwrap();
    // Declared types and key as the mapping says.
    let declared = rows(
        server,
        &db,
        &format!(
            "SELECT COLUMN_NAME, COLUMN_TYPE, COLUMN_KEY, IS_NULLABLE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = '{db}' AND TABLE_NAME = 'items' ORDER BY ORDINAL_POSITION"
        ),
    )
    .await;
    assert_eq!(
        declared,
        [
            "id|bigint(20)|PRI|NO",
            "name|longtext||YES",
            "body|longtext||YES",
            "price|varchar(13)||YES",
            "score|varchar(32)||YES",
            "flag|tinyint(1)||YES",
            "data|longblob||YES",
            "at|varchar(48)||YES"
        ]
    );
    let collation = rows(
        server,
        &db,
        &format!("SELECT TABLE_COLLATION FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{db}' AND TABLE_NAME = 'items'"),
    )
    .await;
    assert_eq!(collation, ["utf8mb4_nopad_bin"]);

    // Inserts.
    let inserted: Vec<_> = (1..=4).map(|i| item(i, &format!("n{i}"), Value::Text(format!("body {i}")))).collect();
    let report = sink.apply(&batch("0/10", vec![upserts(&s, inserted)])).await.unwrap();
    assert_eq!(report.rows_written, 4);
    assert_eq!(
        item_rows(server, &db).await[0],
        "1|n1|body 1|1.50|0.25|0|0100FF|2024-01-02 08:00:00.5",
        "timestamptz stored in UTC"
    );
    assert_eq!(
        sink.load_checkpoint("p").await.unwrap(),
        Some(Checkpoint { position: "0/10".into(), snapshot_complete: true, copy_progress: None })
    );

    // Update with an unchanged TOAST column, key move with an unchanged column, delete.
    let mut second = changes(&s);
    let mut renamed = item(1, "renamed", Value::Unchanged);
    renamed[4] = Value::Float(-1.5e300);
    second.upserts = vec![renamed, item(3, "full update", Value::Text("new body".into()))];
    second.upsert_origins = vec![origin(0, Op::Update), origin(0, Op::Update)];
    second.moves = vec![MovedRow { from: item(2, "", Value::Null), row: item(20, "moved", Value::Unchanged) }];
    second.move_origins = vec![origin(0, Op::Update)];
    second.deletes = vec![item(2, "", Value::Null), item(4, "", Value::Null)];
    second.delete_origins = vec![origin(0, Op::Update), origin(0, Op::Delete)];
    let b2 = batch("0/20", vec![second]);
    sink.apply(&b2).await.unwrap();
    let expected = [
        "1|renamed|body 1|1.50|-1.5e300|0|0100FF|2024-01-02 08:00:00.5",
        "3|full update|new body|3.50|0.75|0|0300FF|2024-01-04 08:00:00.5",
        "20|moved|body 2|20.50|5|1|1400FF|2024-01-03 08:00:00.5",
    ];
    assert_eq!(item_rows(server, &db).await, expected);
    // Applying the same batch again (a restart after a crash) changes nothing.
    sink.apply(&b2).await.unwrap();
    assert_eq!(item_rows(server, &db).await, expected);
    assert_eq!(sink.load_checkpoint("p").await.unwrap().unwrap().position, "0/20");

    // Truncate, then rows inserted after it in the same batch.
    let mut third = upserts(&s, vec![item(7, "after truncate", Value::Null)]);
    third.truncate = true;
    sink.apply(&batch("0/30", vec![third])).await.unwrap();
    assert_eq!(rows(server, &db, "SELECT name, body FROM items").await, ["after truncate|<NULL>"]);

    // A checkpoint-only batch moves the checkpoint.
    sink.apply(&ApplyBatch::checkpoint_only(
        "p",
        Checkpoint { position: "0/40".into(), snapshot_complete: true, copy_progress: None },
    ))
    .await
    .unwrap();
    assert_eq!(sink.load_checkpoint("p").await.unwrap().unwrap().position, "0/40");
    assert_eq!(
        rows(server, &db, "SELECT pipeline, source_position, snapshot_complete FROM tidewater_checkpoints").await,
        ["p|0/40|1"]
    );

    // A fresh sink (a restart) sees the same state; prepare runs the migrations again.
    let mut again = MysqlSink::new(endpoint(server, &db));
    again.prepare().await.unwrap();
    again.ensure_tables(&[plan(&s)]).await.unwrap();
    assert_eq!(again.load_checkpoint("p").await.unwrap().unwrap().position, "0/40");
    assert!(again.server().unwrap().mariadb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_keep_case_and_trailing_spaces_and_composite_keys_work() {
    let (mut sink, server, db) = new_sink("my_keys").await;
    let s = schema(
        "tags",
        vec![column("k", ColumnType::Text), column("n", ColumnType::Int32), column("v", ColumnType::Text)],
        vec![0, 1],
    );
    sink.ensure_tables(&[plan(&s)]).await.unwrap();
    let row = |k: &str, n: i64, v: &str| vec![Value::Text(k.into()), Value::Int(n), Value::Text(v.into())];
    sink.apply(&batch(
        "1",
        vec![upserts(&s, vec![row("a", 1, "x"), row("A", 1, "y"), row("a ", 1, "z"), row("a", 2, "w")])],
    ))
    .await
    .unwrap();
    assert_eq!(rows(server, &db, "SELECT COUNT(*) FROM tags").await, ["4"]);
    let mut del = changes(&s);
    del.deletes = vec![row("a", 1, ""), row("a ", 1, "")];
    del.delete_origins = vec![origin(0, Op::Delete); 2];
    sink.apply(&batch("2", vec![del])).await.unwrap();
    assert_eq!(
        rows(server, &db, "SELECT CONCAT('[', k, ']'), n, v FROM tags ORDER BY k, n").await,
        ["[A]|1|y", "[a]|2|w"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_mysql_cannot_hold_become_dead_letters_naming_the_column() {
    let (mut sink, server, db) = new_sink("my_dead").await;
    let s = schema(
        "odd",
        vec![
            column("id", ColumnType::Int32),
            column("at", ColumnType::TimestampTz),
            column("f", ColumnType::Float64),
            column("code", ColumnType::Varchar(Some(5))),
            column("amount", ColumnType::Numeric { precision: Some(10), scale: Some(2) }),
            column("small", ColumnType::Int16),
            column("d", ColumnType::Date),
        ],
        vec![0],
    );
    // Columns a user created with MySQL's own types (Tidewater would create text columns
    // for these Postgres types, which hold every value).
    exec(
        server,
        &db,
        "CREATE TABLE odd (id INT PRIMARY KEY, at DATETIME(6), f DOUBLE, code VARCHAR(5), amount DECIMAL(10,2), \
         small SMALLINT, d DATE)",
    )
    .await;
    sink.ensure_tables(&[plan(&s)]).await.unwrap();
    let ok = |id: i64| {
        vec![
            Value::Int(id),
            Value::TimestampTz("2026-11-22 12:00:00.123456+05:30".into()),
            Value::Float(0.5),
            Value::Text("abcde".into()),
            Value::Decimal("-12.50".into()),
            Value::Int(7),
            Value::Date("2024-02-29".into()),
        ]
    };
    let with = |id: i64, i: usize, v: Value| {
        let mut r = ok(id);
        r[i] = v;
        r
    };
    let rows_in = vec![
        ok(1),
        with(2, 1, Value::TimestampTz("infinity".into())),
        with(3, 2, Value::Float(f64::NAN)),
        ok(4),
        with(5, 3, Value::Text("abcdef".into())),
        with(6, 4, Value::Decimal("1.234".into())),
        with(7, 5, Value::Int(70000)),
        with(8, 6, Value::Date("0044-03-15 BC".into())),
        with(9, 1, Value::TimestampTz("0999-12-31 23:00:00+00".into())),
        ok(10),
    ];
    let mut b = batch("0/5", vec![upserts(&s, rows_in)]);
    b.pipeline = "dl".into();
    let err = sink.apply(&b).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Event, "{err}");
    // Nothing of the failed batch was committed.
    assert_eq!(rows(server, &db, "SELECT COUNT(*) FROM odd").await, ["0"]);
    assert_eq!(sink.load_checkpoint("dl").await.unwrap(), None);

    let report = sink.apply_isolating(&b).await.unwrap();
    assert_eq!(report.dead_letters, 7, "{report:?}");
    assert_eq!(
        rows(server, &db, "SELECT id, at, amount FROM odd ORDER BY id").await,
        [
            "1|2026-11-22 06:30:00.123456|-12.50",
            "4|2026-11-22 06:30:00.123456|-12.50",
            "10|2026-11-22 06:30:00.123456|-12.50"
        ]
    );
    let dead = rows(
        server,
        &db,
        "SELECT JSON_VALUE(payload, '$.id'), pipeline, source_position, source_table, target_table, op, error \
         FROM tidewater_dead_letters ORDER BY CAST(JSON_VALUE(payload, '$.id') AS SIGNED)",
    )
    .await;
    assert_eq!(dead.len(), 7, "{dead:#?}");
    let expect = [
        ("2", "column at: infinity cannot be stored"),
        ("3", "column f: NaN cannot be stored"),
        ("5", "Data too long for column 'code'"),
        ("6", "column amount: numeric 1.234 has 3 decimal places"),
        ("7", "Out of range value for column 'small'"),
        ("8", "column d: \"0044-03-15 BC\" is a BC date"),
        ("9", "column at: \"0999-12-31 23:00:00+00\" is outside MySQL's date range"),
    ];
    for (line, (id, needle)) in dead.iter().zip(expect) {
        assert!(line.starts_with(&format!("{id}|dl|0/5|public.odd|public.odd|insert|")), "{line}");
        assert!(line.contains(needle), "dead letter {id} should say {needle:?}: {line}");
    }
    assert_eq!(sink.load_checkpoint("dl").await.unwrap().unwrap().position, "0/5");
}

/// Statements are converted and sent a block at a time, the next block while the target
/// runs the current one: a value that cannot be converted in a later block, or a row the
/// server rejects in a middle one, still fails the whole batch (nothing committed) and,
/// isolating, dead-letters exactly those rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_rows_in_later_statements_fail_the_batch_and_are_isolated() {
    let (mut sink, server, db) = new_sink("my_later").await;
    let s = schema(
        "later",
        vec![
            column("id", ColumnType::Int64),
            column("v", ColumnType::Varchar(Some(4))),
            column("f", ColumnType::Float64),
        ],
        vec![0],
    );
    exec(server, &db, "CREATE TABLE later (id BIGINT PRIMARY KEY, v VARCHAR(4), f DOUBLE)").await;
    sink.ensure_tables(&[plan(&s)]).await.unwrap();
    let mut rows_in: Vec<_> =
        (1..=3000).map(|i| vec![Value::Int(i), Value::Text(format!("{}", i % 1000)), Value::Float(0.5)]).collect();
    rows_in[1500][1] = Value::Text("too long".into()); // id 1501: the server rejects it (2nd statement)
    rows_in[2500][2] = Value::Float(f64::NAN); // id 2501: cannot be converted (3rd statement)
    let mut b = batch("0/7", vec![upserts(&s, rows_in)]);
    b.pipeline = "later".into();
    let err = sink.apply(&b).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Event, "{err}");
    assert!(err.message.contains("later"), "{err}");
    assert_eq!(rows(server, &db, "SELECT COUNT(*) FROM later").await, ["0"], "nothing of the failed batch");
    assert_eq!(sink.load_checkpoint("later").await.unwrap(), None);

    let report = sink.apply_isolating(&b).await.unwrap();
    assert_eq!(report.dead_letters, 2, "{report:?}");
    assert_eq!(
        rows(server, &db, "SELECT COUNT(*), SUM(id), MIN(id), MAX(id) FROM later").await,
        [format!("2998|{}|1|3000", 3000 * 3001 / 2 - 1501 - 2501)]
    );
    let dead =
        rows(server, &db, "SELECT JSON_VALUE(payload, '$.id'), error FROM tidewater_dead_letters ORDER BY id").await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead[0].starts_with("1501|") && dead[0].contains("Data too long for column 'v'"), "{}", dead[0]);
    assert!(dead[1].starts_with("2501|") && dead[1].contains("column f: NaN cannot be stored"), "{}", dead[1]);
    assert_eq!(sink.load_checkpoint("later").await.unwrap().unwrap().position, "0/7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_and_large_rows_are_chunked_and_an_oversized_row_is_dead_lettered() {
    let (mut sink, server, db) = new_sink("my_chunks").await;
    let s = schema("blobs", vec![column("id", ColumnType::Int64), column("data", ColumnType::Bytes)], vec![0]);
    sink.ensure_tables(&[plan(&s)]).await.unwrap();
    // 3000 small rows (several statements) and 6 rows of 3 MB (over the per-statement budget).
    let mut many: Vec<_> = (1..=3000).map(|i| vec![Value::Int(i), Value::Bytes(vec![i as u8; 10])]).collect();
    many.extend((3001..=3006).map(|i| vec![Value::Int(i), Value::Bytes(vec![7; 3 << 20])]));
    sink.apply(&batch("1", vec![upserts(&s, many)])).await.unwrap();
    assert_eq!(
        rows(server, &db, "SELECT COUNT(*), SUM(LENGTH(data)) FROM blobs").await,
        [format!("3006|{}", 3000 * 10 + 6 * (3 << 20))]
    );
    // A row larger than max_allowed_packet (16 MiB here) never reaches the server.
    let huge = vec![
        vec![Value::Int(1), Value::Bytes(vec![1; 17 << 20])],
        vec![Value::Int(5000), Value::Bytes(b"fine".to_vec())],
    ];
    let b = batch("2", vec![upserts(&s, huge)]);
    let err = sink.apply(&b).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Event, "{err}");
    assert!(err.message.contains("max_allowed_packet"), "{err}");
    let report = sink.apply_isolating(&b).await.unwrap();
    assert_eq!(report.dead_letters, 1);
    assert_eq!(
        rows(server, &db, "SELECT LENGTH(data) FROM blobs WHERE id IN (1, 5000) ORDER BY id").await,
        ["10", "4"]
    );
    let dl = rows(
        server,
        &db,
        "SELECT JSON_VALUE(payload, '$.id'), JSON_VALUE(payload, '$.data') FROM tidewater_dead_letters",
    )
    .await;
    assert_eq!(dl.len(), 1);
    assert!(dl[0].starts_with("1|<") && dl[0].contains("bytes omitted"), "{}", &dl[0][..dl[0].len().min(200)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transaction_commits_whole_and_abort_leaves_nothing() {
    let (mut sink, server, db) = new_sink("my_large").await;
    let s = schema("big", vec![column("id", ColumnType::Int32), column("v", ColumnType::Varchar(Some(3)))], vec![0]);
    sink.ensure_tables(&[plan(&s)]).await.unwrap();
    let row = |id: i64, v: &str| vec![Value::Int(id), Value::Text(v.into())];

    // Aborted: nothing stays.
    sink.begin_large().await.unwrap();
    sink.apply_part(&batch("0/1", vec![upserts(&s, vec![row(1, "a")])]), true).await.unwrap();
    sink.abort_large().await;
    assert_eq!(rows(server, &db, "SELECT COUNT(*) FROM big").await, ["0"]);

    // Committed: parts are invisible until the commit; a rejected row is dead-lettered.
    sink.begin_large().await.unwrap();
    let r1 = sink.apply_part(&batch("0/9", vec![upserts(&s, (1..=500).map(|i| row(i, "ok")).collect())]), true).await;
    assert_eq!(r1.unwrap().dead_letters, 0);
    let r2 = sink
        .apply_part(&batch("0/9", vec![upserts(&s, vec![row(501, "ok"), row(502, "long"), row(503, "ok")])]), true)
        .await
        .unwrap();
    assert_eq!(r2.dead_letters, 1);
    // Without isolation a rejected row is an error (and the caller aborts).
    assert_eq!(rows(server, &db, "SELECT COUNT(*) FROM big").await, ["0"], "uncommitted parts are invisible");
    let mut last = batch("0/9", vec![upserts(&s, vec![row(504, "end")])]);
    last.tables.push({
        let mut d = changes(&s);
        d.deletes = vec![row(1, "")];
        d.delete_origins = vec![origin(0, Op::Delete)];
        d
    });
    let report = sink.commit_large(&last, true).await.unwrap();
    assert_eq!(report.dead_letters, 0);
    assert_eq!(rows(server, &db, "SELECT COUNT(*), MIN(id), MAX(id) FROM big").await, ["502|2|504"]);
    assert_eq!(sink.load_checkpoint("p").await.unwrap().unwrap().position, "0/9");
    assert_eq!(rows(server, &db, "SELECT JSON_VALUE(payload, '$.id') FROM tidewater_dead_letters").await, ["502"]);

    // Not isolating: the part fails with an Event error; abort rolls everything back.
    sink.begin_large().await.unwrap();
    sink.apply_part(&batch("0/10", vec![upserts(&s, vec![row(600, "ok")])]), false).await.unwrap();
    let err = sink.apply_part(&batch("0/10", vec![upserts(&s, vec![row(601, "long")])]), false).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Event);
    sink.abort_large().await;
    assert_eq!(rows(server, &db, "SELECT COUNT(*) FROM big WHERE id >= 600").await, ["0"]);
    assert_eq!(sink.load_checkpoint("p").await.unwrap().unwrap().position, "0/9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_add_columns_before_the_transaction_and_other_schemas_are_databases() {
    let (mut sink, server, db) = new_sink("my_schema").await;
    let v1 = schema("evolving", vec![column("id", ColumnType::Int32), column("v", ColumnType::Text)], vec![0]);
    // Target `replica_<db>.evolving`: a database of that name, created on demand.
    let other_db = format!("{db}_replica");
    let target = TableId::new(other_db.clone(), "evolving");
    sink.ensure_tables(&[TablePlan { source: v1.clone(), target: target.clone() }]).await.unwrap();
    let row1 = |id: i64| vec![Value::Int(id), Value::Text(format!("v{id}"))];
    let mut seg1 = upserts(&v1, vec![row1(1)]);
    seg1.target = target.clone();
    sink.apply(&batch("1", vec![seg1])).await.unwrap();

    // The source added `n int DEFAULT 42` (existing rows hold 42) and `tag text`; one batch
    // carries a row of the old shape and one of the new.
    let mut cols = v1.columns.clone();
    cols.push(Column { existing_rows_value: Some("42".into()), ..column("n", ColumnType::Int32) });
    cols.push(column("tag", ColumnType::Text));
    let v2 = schema("evolving", cols, vec![0]);
    let mut old_shape = upserts(&v1, vec![row1(2)]);
    old_shape.target = target.clone();
    let mut new_shape =
        upserts(&v2, vec![vec![Value::Int(3), Value::Text("v3".into()), Value::Int(7), Value::Text("t".into())]]);
    new_shape.target = target.clone();
    sink.apply(&batch("2", vec![old_shape, new_shape])).await.unwrap();
    assert_eq!(
        rows(server, &other_db, "SELECT id, v, n, tag FROM evolving ORDER BY id").await,
        ["1|v1|42|<NULL>", "2|v2|42|<NULL>", "3|v3|7|t"]
    );

    // A type change at the source (int4 → int8) is followed.
    let mut cols = v2.columns.clone();
    cols[2] = Column { native_type: "bigint".into(), ..column("n", ColumnType::Int64) };
    let v3 = schema("evolving", cols, vec![0]);
    let mut big = upserts(&v3, vec![vec![Value::Int(4), Value::Null, Value::Int(1 << 40), Value::Null]]);
    big.target = target.clone();
    sink.apply(&batch("3", vec![big])).await.unwrap();
    assert_eq!(rows(server, &other_db, "SELECT n FROM evolving WHERE id = 4").await, [(1i64 << 40).to_string()]);

    // Inside a large transaction DDL cannot run: the part fails transiently after altering
    // the table (outside the transaction), and nothing of the transaction stays.
    let mut cols = v3.columns.clone();
    cols.push(column("late", ColumnType::Bool));
    let v4 = schema("evolving", cols, vec![0]);
    sink.begin_large().await.unwrap();
    let mut first = upserts(&v3, vec![vec![Value::Int(10), Value::Null, Value::Null, Value::Null]]);
    first.target = target.clone();
    sink.apply_part(&batch("4", vec![first]), true).await.unwrap();
    let mut second = upserts(&v4, vec![vec![Value::Int(11), Value::Null, Value::Null, Value::Null, Value::Bool(true)]]);
    second.target = target.clone();
    let err = sink.apply_part(&batch("4", vec![second.clone()]), true).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{err}");
    sink.abort_large().await;
    assert_eq!(rows(server, &other_db, "SELECT COUNT(*) FROM evolving WHERE id >= 10").await, ["0"]);
    // Redelivered from its start, the transaction now applies.
    sink.begin_large().await.unwrap();
    let mut first = upserts(&v3, vec![vec![Value::Int(10), Value::Null, Value::Null, Value::Null]]);
    first.target = target.clone();
    sink.apply_part(&batch("4", vec![first]), true).await.unwrap();
    sink.commit_large(&batch("4", vec![second]), true).await.unwrap();
    assert_eq!(
        rows(server, &other_db, "SELECT id, late FROM evolving WHERE id >= 10 ORDER BY id").await,
        ["10|<NULL>", "11|1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_target_tables_are_checked_and_other_unique_keys_never_merge_rows() {
    let (mut sink, server, db) = new_sink("my_existing").await;
    exec(server, &db, "CREATE TABLE nokey (id INT, v TEXT)").await;
    let s = schema("nokey", vec![column("id", ColumnType::Int32), column("v", ColumnType::Text)], vec![0]);
    let err = sink.ensure_tables(&[plan(&s)]).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Fatal);
    assert!(err.message.contains("no primary key or unique index"), "{err}");

    // A user-made table with an extra unique key: a row colliding with another row's email
    // is rejected (dead letter), never merged into that row.
    exec(server, &db, "CREATE TABLE users (id INT PRIMARY KEY, email VARCHAR(100) UNIQUE, extra INT DEFAULT 5)").await;
    let u = schema("users", vec![column("id", ColumnType::Int32), column("email", ColumnType::Text)], vec![0]);
    sink.ensure_tables(&[plan(&u)]).await.unwrap();
    let user = |id: i64, email: &str| vec![Value::Int(id), Value::Text(email.into())];
    sink.apply(&batch("1", vec![upserts(&u, vec![user(1, "a@x"), user(2, "b@x")])])).await.unwrap();
    let b = batch("2", vec![upserts(&u, vec![user(2, "a@x"), user(1, "new@x")])]);
    assert_eq!(sink.apply(&b).await.unwrap_err().class, ErrorClass::Event);
    let report = sink.apply_isolating(&b).await.unwrap();
    assert_eq!(report.dead_letters, 1);
    assert_eq!(rows(server, &db, "SELECT id, email, extra FROM users ORDER BY id").await, ["1|new@x|5", "2|b@x|5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_bookkeeping_and_connection_errors() {
    let (mut sink, server, db) = new_sink("my_snap").await;
    let s = items();
    sink.ensure_tables(&[plan(&s)]).await.unwrap();
    sink.apply(&batch("0/1", vec![upserts(&s, vec![item(1, "a", Value::Null)])])).await.unwrap();
    let pending = Checkpoint { position: "0/100".into(), snapshot_complete: false, copy_progress: None };
    sink.reset_for_snapshot("p", std::slice::from_ref(&s.id), &pending).await.unwrap();
    assert_eq!(rows(server, &db, "SELECT COUNT(*) FROM items").await, ["0"]);
    assert_eq!(sink.load_checkpoint("p").await.unwrap(), Some(pending));
    assert!(sink.snapshotted_tables("p").await.unwrap().is_empty());
    let done = Checkpoint { position: "0/100".into(), snapshot_complete: true, copy_progress: None };
    let copied = |t: TableId, p: Option<&str>| CopiedTable::new(t, p.map(str::to_string));
    sink.complete_snapshot("p", &[copied(s.id.clone(), None), copied(TableId::new("public", "other"), None)], &done)
        .await
        .unwrap();
    // Copied again later: the new position replaces the old.
    sink.complete_snapshot("p", &[copied(s.id.clone(), Some("f:4"))], &done).await.unwrap();
    let mut got = sink.snapshotted_tables("p").await.unwrap();
    got.sort_by_key(|c| c.table.clone());
    assert_eq!(
        got,
        [copied(TableId::new("public", "items"), Some("f:4")), copied(TableId::new("public", "other"), None)]
    );
    assert_eq!(sink.load_checkpoint("p").await.unwrap(), Some(done));

    // Wrong password: fatal. Nothing listening: transient.
    let mut bad = MysqlSink::new(MysqlEndpoint { password: Some("wrong".into()), ..endpoint(server, &db) });
    let err = bad.prepare().await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Fatal, "{err}");
    assert_eq!(err.code.as_deref(), Some("1045"));
    assert!(!err.to_string().contains("wrong"), "{err}");
    let port = crate::support::free_port();
    let mut down = MysqlSink::new(MysqlEndpoint { port, ..endpoint(server, &db) });
    assert_eq!(down.prepare().await.unwrap_err().class, ErrorClass::Transient);
    let mut missing = MysqlSink::new(endpoint(server, "no_such_database_here"));
    assert_eq!(missing.prepare().await.unwrap_err().class, ErrorClass::Fatal);
}

// ------------------------------------------------------------------ Postgres → MariaDB

/// A Postgres → MariaDB pipeline on a fresh target database.
async fn pg_to_mysql(prefix: &str, setup: &str, tables: &[&str]) -> (TestPipeline, &'static MyServer, String) {
    let target = mysql_target().await;
    let db = fresh_mysql_db(target, prefix).await;
    let mut p = TestPipeline::new(prefix, setup, tables).await;
    let pw = p.dir.path().join("mypw");
    std::fs::write(&pw, MYSQL_PASSWORD).unwrap();
    p.target_override = Some(format!(
        "[targets.dst]\ntype = \"mysql\"\nurl = \"{}\"\npassword_file = \"{}\"",
        target.url(&db),
        pw.display()
    ));
    (p, target, db)
}

/// Waits until `sql` on the target returns `expected` (rows as from [`rows`]).
async fn wait_rows(server: &MyServer, db: &str, sql: &str, expected: &[String]) {
    let mut last = Vec::new();
    let found = tokio::time::timeout(CONVERGE, async {
        loop {
            last = try_rows(server, db, sql).await.unwrap_or_default();
            if last == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if found.is_err() {
        let missing: Vec<_> = expected.iter().filter(|r| !last.contains(r)).take(5).collect();
        let extra: Vec<_> = last.iter().filter(|r| !expected.contains(r)).take(5).collect();
        panic!(
            "{sql} did not converge within {CONVERGE:?}: expected {} rows, got {}; missing (first 5): {missing:?}; \
             unexpected (first 5): {extra:?}",
            expected.len(),
            last.len()
        );
    }
}

/// The source's rows of `sql` with every column as text, joined like [`rows`].
async fn pg_rows(p: &TestPipeline, sql: &str) -> Vec<String> {
    let src = p.source_client().await;
    src.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i).unwrap_or_else(|| "<NULL>".into()))
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_mariadb_snapshot_stream_restart_and_dead_letter() {
    let (p, server, db) = pg_to_mysql(
        "my_e2e",
        "CREATE TABLE orders (id bigint PRIMARY KEY, item text NOT NULL, qty int, at timestamptz); \
         INSERT INTO orders SELECT g, 'item ' || g, g % 7, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 minute' \
         FROM generate_series(1, 2000) g;",
        &["public.orders"],
    )
    .await;
    // A DATETIME column of the user's: 'infinity' cannot go there (a dead letter).
    exec(server, &db, "CREATE TABLE orders (id BIGINT PRIMARY KEY, item LONGTEXT NOT NULL, qty INT, at DATETIME(6))")
        .await;
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    let count_sql = "SELECT COUNT(*), SUM(qty) FROM orders";
    let src_count = pg_rows(&p, "SELECT count(*)::text, sum(qty)::text FROM orders").await;
    wait_rows(server, &db, count_sql, &src_count).await;

    // Stream: insert, update, delete, a poison row, truncate and rows after it.
    let src = p.source_client().await;
    src.batch_execute(
        "INSERT INTO orders SELECT g, 'new ' || g, 1, now() FROM generate_series(2001, 2100) g; \
         UPDATE orders SET item = 'Grüße 🌊', qty = 99 WHERE id = 5; DELETE FROM orders WHERE id <= 3; \
         INSERT INTO orders VALUES (9000, 'never ends', 1, 'infinity');",
    )
    .await
    .unwrap();
    src.batch_execute("INSERT INTO orders VALUES (9001, 'after the poison row', 1, '2026-11-22 12:00:00+05:30')")
        .await
        .unwrap();
    let expected_sql = "SELECT id, item, qty FROM orders WHERE id < 9000 OR id > 9000 ORDER BY id";
    let expected =
        pg_rows(&p, "SELECT id::text, item, qty::text FROM orders WHERE id <> 9000 ORDER BY orders.id").await;
    wait_rows(server, &db, expected_sql, &expected).await;
    assert_eq!(rows(server, &db, "SELECT at FROM orders WHERE id = 9001").await, ["2026-11-22 06:30:00.000000"]);
    let dead = rows(
        server,
        &db,
        "SELECT op, JSON_VALUE(payload, '$.id'), source_table, target_table, error FROM tidewater_dead_letters",
    )
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].starts_with("insert|9000|public.orders|public.orders|"), "{dead:?}");
    assert!(dead[0].contains("column at: infinity cannot be stored in MySQL"), "{dead:?}");
    let status = p.status().await.unwrap();
    assert_eq!(status["dead_letters_total"], 1, "{status}");

    // Restart: nothing doubled, changes made while stopped arrive, checkpoint advances.
    daemon.stop().await;
    let before = rows(server, &db, "SELECT source_position FROM tidewater_checkpoints").await;
    src.batch_execute(
        "INSERT INTO orders VALUES (9002, 'while stopped', 2, now()); UPDATE orders SET qty = 0 WHERE id = 4",
    )
    .await
    .unwrap();
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    let expected =
        pg_rows(&p, "SELECT id::text, item, qty::text FROM orders WHERE id <> 9000 ORDER BY orders.id").await;
    wait_rows(server, &db, expected_sql, &expected).await;
    let after = rows(server, &db, "SELECT source_position, snapshot_complete FROM tidewater_checkpoints").await;
    assert_eq!(after.len(), 1);
    assert_ne!(after[0], format!("{}|1", before[0]), "checkpoint advanced");
    assert!(after[0].ends_with("|1"));

    // Truncate, then new rows.
    src.batch_execute("TRUNCATE orders; INSERT INTO orders VALUES (1, 'fresh', 1, now())").await.unwrap();
    wait_rows(server, &db, "SELECT id, item FROM orders", &["1|fresh".to_string()]).await;
    assert_eq!(rows(server, &db, "SELECT COUNT(*) FROM tidewater_dead_letters").await, ["1"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_types_arrive_in_mariadb_as_the_mapping_says() {
    let (p, server, db) = pg_to_mysql(
        "my_types",
        "CREATE TYPE mood AS ENUM ('sad', 'happy'); \
         CREATE TABLE typed (id int PRIMARY KEY, c_int2 int2, c_int4 int4, c_int8 int8, c_num102 numeric(10,2), \
           c_numeric numeric, c_float8 float8, c_float4 float4, c_bool bool, c_text text, c_varchar varchar(20), \
           c_char char(5), c_bytea bytea, c_json json, c_jsonb jsonb, c_uuid uuid, c_date date, c_time time, \
           c_timetz timetz, c_ts timestamp, c_tstz timestamptz, c_interval interval, c_int4arr int4[], \
           c_textarr text[], c_2d int4[][], c_mood mood, c_inet inet); \
         INSERT INTO typed VALUES (1, 32767, -2147483648, 9223372036854775807, 12345678.91, \
           123456789012345678901234567890.123456789, 1.1, 0.5, true, 'Grüße, 你好, 🌊', 'exactly twenty chars', \
           'ab', '\\x00010203ff00fe', '{\"a\": 1,  \"b\": [1, 2.50]}', '{\"b\": [1, 2.50], \"a\": {\"x\": null}}', \
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29', '23:59:59.999999', '12:34:56.789+05:30', \
           '2024-02-29 12:34:56.123456', '2024-02-29 12:34:56.123456+02', '1 year 2 mons 3 days 04:05:06.789', \
           '{1,NULL,3}', ARRAY['a', NULL, 'with \"quotes\"', 'back\\slash', 'comma,brace}'], '{{1,2},{3,4}}', \
           'happy', '192.168.1.5/24'); \
         INSERT INTO typed (id) VALUES (2); \
         INSERT INTO typed (id, c_int8, c_num102, c_numeric, c_float8, c_float4, c_text, c_bytea, c_date, c_time, \
           c_ts, c_tstz) VALUES (3, -9223372036854775808, 'NaN', ('-1' || repeat('0', 100) || '.5')::numeric, 'NaN', \
           '-Infinity', '𝄞 😀 🌊', decode(repeat('ff00', 100000), 'hex'), 'infinity', '24:00:00', \
           '12345-06-07 08:09:10', '0044-03-15 12:00:00+00 BC');",
        &["public.typed"],
    )
    .await;
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    // The same row once more through the stream (pgoutput text) instead of the snapshot.
    let src = p.source_client().await;
    src.batch_execute("INSERT INTO typed SELECT 101, c_int2, c_int4, c_int8, c_num102, c_numeric, c_float8, c_float4, \
         c_bool, c_text, c_varchar, c_char, c_bytea, c_json, c_jsonb, c_uuid, c_date, c_time, c_timetz, c_ts, c_tstz, \
         c_interval, c_int4arr, c_textarr, c_2d, c_mood, c_inet FROM typed WHERE id = 1; INSERT INTO typed (id) VALUES (102); \
         INSERT INTO typed SELECT 103, c_int2, c_int4, c_int8, c_num102, c_numeric, c_float8, c_float4, \
         c_bool, c_text, c_varchar, c_char, c_bytea, c_json, c_jsonb, c_uuid, c_date, c_time, c_timetz, c_ts, c_tstz, \
         c_interval, c_int4arr, c_textarr, c_2d, c_mood, c_inet FROM typed WHERE id = 3;")
        .await
        .unwrap();
    let ids = ["1", "2", "3", "101", "102", "103"].map(String::from);
    wait_rows(server, &db, "SELECT id FROM typed ORDER BY id", &ids).await;
    // Extreme values MySQL's own types cannot hold arrive exactly in the columns Tidewater
    // created (no dead letter, checked below).
    let extreme = [
        ("c_int8", "-9223372036854775808".to_string()),
        ("c_num102", "NaN".to_string()),
        ("c_numeric", format!("-1{}.5", "0".repeat(100))),
        ("c_float8", "NaN".to_string()),
        ("c_float4", "-Infinity".to_string()),
        ("c_text", "𝄞 😀 🌊".to_string()),
        ("LENGTH(c_bytea)", "200000".to_string()),
        ("c_date", "infinity".to_string()),
        ("c_time", "24:00:00.000000".to_string()),
        ("c_ts", "12345-06-07 08:09:10".to_string()),
        ("c_tstz LIKE '0044-03-15 %BC'", "1".to_string()),
    ];
    for id in [3, 103] {
        for (col, want) in &extreme {
            let got = rows(server, &db, &format!("SELECT {col} FROM typed WHERE id = {id}")).await;
            assert_eq!(got, std::slice::from_ref(want), "{col} of row {id}");
        }
    }

    let expected = [
        ("c_int2", "32767"),
        ("c_int4", "-2147483648"),
        ("c_int8", "9223372036854775807"),
        ("c_num102", "12345678.91"),
        ("c_numeric", "123456789012345678901234567890.123456789"),
        ("c_float8", "1.1"),
        ("c_float4", "0.5"),
        ("c_bool", "1"),
        ("c_text", "Grüße, 你好, 🌊"),
        ("c_varchar", "exactly twenty chars"),
        ("c_char", "ab"),
        ("HEX(c_bytea)", "00010203FF00FE"),
        ("c_json", "{\"a\": 1,  \"b\": [1, 2.50]}"),
        ("c_jsonb", "{\"a\": {\"x\": null}, \"b\": [1, 2.50]}"),
        ("c_uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ("c_date", "2024-02-29"),
        ("c_time", "23:59:59.999999"),
        ("c_timetz", "12:34:56.789+05:30"),
        ("c_ts", "2024-02-29 12:34:56.123456"),
        ("c_tstz", "2024-02-29 10:34:56.123456"),
        ("c_interval", "P1Y2M3DT4H5M6.789S"),
        ("c_int4arr", "[1,null,3]"),
        ("c_textarr", "[\"a\",null,\"with \\\"quotes\\\"\",\"back\\\\slash\",\"comma,brace}\"]"),
        ("c_2d", "[[1,2],[3,4]]"),
        ("c_mood", "happy"),
        ("c_inet", "192.168.1.5/24"),
    ];
    for id in [1, 101] {
        for (col, want) in expected {
            let got = rows(server, &db, &format!("SELECT {col} FROM typed WHERE id = {id}")).await;
            assert_eq!(got, [want], "{col} of row {id}");
        }
    }
    let nulls = expected.iter().map(|(c, _)| format!("{c} IS NULL")).collect::<Vec<_>>().join(" AND ");
    for id in [2, 102] {
        assert_eq!(rows(server, &db, &format!("SELECT COUNT(*) FROM typed WHERE id = {id} AND {nulls}")).await, ["1"]);
    }
    // Declared types, as the README's table says.
    let declared = rows(
        server,
        &db,
        &format!(
            "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '{db}' \
             AND TABLE_NAME = 'typed' ORDER BY ORDINAL_POSITION"
        ),
    )
    .await;
    assert_eq!(
        declared,
        [
            "id|int(11)",
            "c_int2|smallint(6)",
            "c_int4|int(11)",
            "c_int8|bigint(20)",
            "c_num102|varchar(13)",
            "c_numeric|longtext",
            "c_float8|varchar(32)",
            "c_float4|varchar(32)",
            "c_bool|tinyint(1)",
            "c_text|longtext",
            "c_varchar|varchar(20)",
            "c_char|char(5)",
            "c_bytea|longblob",
            "c_json|longtext",
            "c_jsonb|longtext",
            "c_uuid|char(36)",
            "c_date|varchar(32)",
            "c_time|time(6)",
            "c_timetz|varchar(32)",
            "c_ts|varchar(48)",
            "c_tstz|varchar(48)",
            "c_interval|varchar(64)",
            "c_int4arr|longtext",
            "c_textarr|longtext",
            "c_2d|longtext",
            "c_mood|varchar(255)",
            "c_inet|longtext"
        ]
    );
    let status = p.status().await.unwrap();
    assert_eq!(status["dead_letters_total"], 0, "{status}");
    let _ = wait_for("checkpoint row", CONVERGE, || async {
        let r = rows(server, &db, "SELECT COUNT(*) FROM tidewater_checkpoints WHERE snapshot_complete").await;
        (r == ["1"]).then_some(())
    })
    .await;
    // `verify` (source read through the snapshot path) finds the streamed rows equal too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .args(["verify", "--config"])
        .arg(p.config_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("6 rows match"), "{text}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_large_transaction_with_a_poison_row_and_a_column_added_midway_arrives_whole() {
    let (p, server, db) = pg_to_mysql(
        "my_largetx",
        "CREATE TABLE big (id int PRIMARY KEY, at timestamptz, pad text); CREATE TABLE other (id int PRIMARY KEY)",
        &["public.big", "public.other"],
    )
    .await;
    exec(server, &db, "CREATE TABLE big (id INT PRIMARY KEY, at DATETIME(6), pad LONGTEXT)").await;
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    // 25k rows (several parts), an update the target cannot hold, then a column added inside the
    // same transaction (DDL cannot run inside the open MySQL transaction: it is rolled back,
    // the column added, and the transaction re-read), more rows, a row of another table.
    let src = p.source_client().await;
    src.batch_execute(
        "BEGIN; INSERT INTO big SELECT g, '2024-01-01 00:00:00+00', repeat('x', 20) FROM generate_series(1, 25000) g; \
         UPDATE big SET at = 'infinity' WHERE id = 777; \
         ALTER TABLE big ADD COLUMN extra text DEFAULT 'old'; \
         INSERT INTO big SELECT g, now(), 'late', 'new' FROM generate_series(25001, 25010) g; \
         INSERT INTO other VALUES (1); COMMIT; INSERT INTO other VALUES (2);",
    )
    .await
    .unwrap();
    // Readers of the target never see part of it.
    let seen = wait_for("large transaction applied", CONVERGE, || async {
        let n = try_rows(server, &db, "SELECT COUNT(*) FROM big").await.unwrap_or_default();
        let n: i64 = n.first().and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!(n == 0 || n == 25010, "saw a partial transaction: {n} rows");
        (n == 25010).then_some(n)
    })
    .await;
    assert_eq!(seen, 25010);
    wait_rows(server, &db, "SELECT id FROM other ORDER BY id", &["1".to_string(), "2".to_string()]).await;
    assert_eq!(
        rows(server, &db, "SELECT extra, COUNT(*) FROM big GROUP BY extra ORDER BY extra").await,
        ["new|10", "old|25000"]
    );
    // The rejected update leaves the row as the transaction's earlier insert made it.
    assert_eq!(rows(server, &db, "SELECT at FROM big WHERE id = 777").await, ["2024-01-01 00:00:00.000000"]);
    let dead = rows(server, &db, "SELECT op, JSON_VALUE(payload, '$.id'), error FROM tidewater_dead_letters").await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].starts_with("update|777|") && dead[0].contains("infinity"), "{dead:?}");
    let status = p.status().await.unwrap();
    assert_eq!(status["dead_letters_total"], 1, "{status}");
    daemon.stop().await;
}
