//! The MySQL/MariaDB binlog source on its own (no daemon): snapshot, streaming, value
//! decoding, resumption, schema changes and failures, against the throwaway MariaDB.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use tidewater_core::{
    ChangeEvent, Checkpoint, ConnectorError, Op, SnapshotChunk, Source, SourceItem, SourceProgress, StreamHandle,
    Transaction, Value,
};
use tidewater_mysql::sink::MysqlEndpoint;
use tidewater_mysql::{MysqlSource, MysqlSourceConfig};
use tokio::sync::{mpsc, watch};

use crate::support::mysql::{fresh_mysql_db, mysql_source, MyServer, MYSQL_PASSWORD, MYSQL_USER};
use crate::support::InProcess;

const WAIT: Duration = Duration::from_secs(30);

static SERVER_IDS: AtomicU32 = AtomicU32::new(0);

/// A replica id no other stream of this test process uses.
pub fn unique_server_id() -> u32 {
    let base = 1000 + (std::process::id() % 5000) * 100;
    base + SERVER_IDS.fetch_add(1, Ordering::Relaxed)
}

pub fn endpoint(server: &MyServer, db: &str) -> MysqlEndpoint {
    MysqlEndpoint {
        host: "127.0.0.1".into(),
        port: server.port,
        user: MYSQL_USER.into(),
        password: Some(MYSQL_PASSWORD.into()),
        database: db.into(),
    }
}

fn source(server: &MyServer, db: &str, tables: &[&str]) -> MysqlSource {
    MysqlSource::new(MysqlSourceConfig {
        source_name: "src".into(),
        endpoint: endpoint(server, db),
        tables: tables.iter().map(|t| t.to_string()).collect(),
        server_id: unique_server_id(),
    })
}

async fn sql(conn: &mut mysql_async::Conn, statements: &str) {
    conn.query_drop(statements).await.unwrap_or_else(|e| panic!("{statements}: {e}"));
}

/// A running stream and what it hands on.
struct Stream {
    rx: mpsc::Receiver<tidewater_core::queue::Queued>,
    _acks: watch::Sender<Option<String>>,
    handle: Option<StreamHandle>,
    progress: Arc<SourceProgress>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(h) = &self.handle {
            h.stop();
        }
    }
}

impl Stream {
    async fn start(src: &mut MysqlSource, position: &str) -> Stream {
        let (tx, rx) = tidewater_core::queue::source_queue(0);
        let (acks, acks_rx) = watch::channel(None);
        let progress = Arc::new(SourceProgress::default());
        let cp = Checkpoint { position: position.to_string(), snapshot_complete: true, copy_progress: None };
        let handle = src.start_stream(&cp, tx, acks_rx, progress.clone()).await.expect("stream starts");
        Stream { rx, _acks: acks, handle: Some(handle), progress }
    }

    async fn item(&mut self) -> SourceItem {
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(queued)) => queued.item,
            Ok(None) => {
                let e = self.error().await;
                panic!("the stream ended: {e}")
            }
            Err(_) => panic!("no item from the stream within {WAIT:?}"),
        }
    }

    /// The next whole transaction (parts are glued on), skipping heartbeats.
    async fn tx(&mut self) -> Transaction {
        let mut parts = Vec::new();
        loop {
            match self.item().await {
                SourceItem::Heartbeat { .. } => continue,
                SourceItem::TransactionPart(p) => parts.extend(p.events),
                SourceItem::Transaction(mut t) => {
                    parts.append(&mut t.events);
                    t.events = parts;
                    return t;
                }
            }
        }
    }

    /// The error the stream task ended with.
    async fn error(&mut self) -> ConnectorError {
        let handle = self.handle.take().expect("stream handle");
        match tokio::time::timeout(WAIT, handle.task).await {
            Ok(Ok(Err(e))) => e,
            Ok(Ok(Ok(()))) => panic!("the stream ended without an error"),
            Ok(Err(join)) => panic!("the stream task crashed: {join}"),
            Err(_) => panic!("the stream did not end within {WAIT:?}"),
        }
    }

    /// Waits for the stream to fail (items are drained meanwhile).
    async fn failure(&mut self) -> ConnectorError {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.handle.as_ref().is_some_and(|h| h.task.is_finished()) {
                return self.error().await;
            }
            assert!(tokio::time::Instant::now() < deadline, "the stream did not fail within {WAIT:?}");
            let _ = tokio::time::timeout(Duration::from_millis(100), self.rx.recv()).await;
        }
    }
}

async fn snapshot_rows(
    src: &mut MysqlSource,
    schema: &Arc<tidewater_core::TableSchema>,
    after: Option<&[Value]>,
) -> Vec<Vec<Value>> {
    let (tx, mut rx) = mpsc::channel::<SnapshotChunk>(16);
    let read = async move {
        let r = src.snapshot_table(schema, 2, after, &tx).await;
        drop(tx);
        r
    };
    let collect = async {
        let mut rows = Vec::new();
        while let Some(chunk) = rx.recv().await {
            assert!(chunk.rows.len() <= 2, "chunks honour chunk_rows");
            rows.extend(chunk.rows);
        }
        rows
    };
    let (r, rows) = tokio::join!(read, collect);
    r.expect("snapshot read");
    rows
}

fn by_name(schema: &tidewater_core::TableSchema, row: &[Value]) -> HashMap<String, Value> {
    schema.columns.iter().zip(row).map(|(c, v)| (c.name.clone(), v.clone())).collect()
}

fn after(e: &ChangeEvent) -> HashMap<String, Value> {
    by_name(&e.table, e.after.as_ref().expect("after image"))
}

const TYPES_TABLE: &str = "CREATE TABLE types (
    id INT PRIMARY KEY,
    ti TINYINT, ti1 TINYINT(1), tu TINYINT UNSIGNED, si SMALLINT, su SMALLINT UNSIGNED,
    mi MEDIUMINT, mu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED,
    f FLOAT, d DOUBLE, dec1 DECIMAL(10,2), dec65 DECIMAL(65,30),
    c CHAR(5), vc VARCHAR(20), tx TEXT, l1 VARCHAR(10) CHARACTER SET latin1,
    bn BINARY(4), vb VARBINARY(10), bl BLOB, j JSON,
    dt DATE, tm TIME, tm6 TIME(6), dtm DATETIME, dtm6 DATETIME(6), ts TIMESTAMP NULL, ts3 TIMESTAMP(3) NULL,
    yr YEAR, e ENUM('small','medium','large'), st SET('a','b','c'), b1 BIT(1), b64 BIT(64),
    u UUID, i6 INET6, i4 INET4
)";

/// Three rows of edge values, with ids offset by `base`.
fn type_rows(base: i32) -> String {
    format!(
        "INSERT INTO types VALUES
        ({a}, 127, 1, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
         -9223372036854775808, 18446744073709551615, 0.1, 1e300, -12.50,
         '12345678901234567890123456789012345.123456789012345678901234567890',
         'ab', '😀 4-byte', 'text', 'café', 'ab', x'00ff', x'deadbeef', '{{\"a\": [1, 2.5, \"x\"], \"b\": null}}',
         '0000-00-00', '-838:59:59', '12:34:56.789', '0000-00-00 00:00:00', '2024-02-29 23:59:59.999999',
         '2038-01-19 03:14:07', '1970-01-01 00:00:01.5', 0, 'large', 'a,c', b'1', x'FFFFFFFFFFFFFFFF',
         'b997525f-e674-11f1-a7f4-02fc00000001', '::ffff:1.2.3.4', '255.255.255.255'),
        ({b}, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        ({c}, -128, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -3.4e38, 2.2250738585072014e-308, 0.05,
         '-0.000000000000000000000000000001', '', '', '', '', x'00000001', '', '', '[]',
         '9999-12-31', '00:00:00', '-00:00:00.000001', '1000-01-01 00:00:00', '9999-12-31 23:59:59.5',
         '0000-00-00 00:00:00', '2000-02-29 12:00:00.123', 2155, '', '', b'0', x'0000000000000001',
         '00000000-0000-0000-0000-000000000000', '::', '0.0.0.0')",
        a = base + 1,
        b = base + 2,
        c = base + 3
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_stream_decode_every_type_identically() {
    let server = mysql_source().await;
    let db = fresh_mysql_db(server, "srctypes").await;
    let mut conn = server.connect(&db).await;
    sql(&mut conn, "SET SESSION sql_mode = '', time_zone = '+00:00'").await;
    sql(&mut conn, TYPES_TABLE).await;
    sql(&mut conn, &type_rows(0)).await;

    let mut src = source(server, &db, &[&format!("{db}.*")]);
    let schemas = src.prepare().await.expect("prepare");
    assert_eq!(schemas.len(), 1);
    let schema = schemas[0].clone();
    assert_eq!(schema.key, vec![0]);
    let position = src.begin_snapshot().await.expect("snapshot");
    assert!(position.contains(" gtid=0-"), "MariaDB positions carry the GTID state: {position}");
    let mut snap = snapshot_rows(&mut src, &schema, None).await;
    snap.sort_by_key(|r| format!("{:?}", r[0]));
    assert_eq!(snap.len(), 3);

    // The same values again, now through the binlog; plus an update and a delete.
    sql(&mut conn, &type_rows(100)).await;
    sql(&mut conn, "UPDATE types SET vc = 'changed', bu = 1 WHERE id = 101").await;
    sql(&mut conn, "DELETE FROM types WHERE id = 102").await;
    let mut stream = Stream::start(&mut src, &position).await;
    let inserted = stream.tx().await;
    assert_eq!(inserted.events.len(), 3);
    assert!(inserted.position.contains(" gtid=0-"), "{}", inserted.position);
    for (k, event) in inserted.events.iter().enumerate() {
        assert_eq!(event.op, Op::Insert);
        let mut streamed = event.after.clone().expect("after");
        let mut snapshotted = snap[k].clone();
        streamed[0] = Value::Null;
        snapshotted[0] = Value::Null;
        for ((c, s), b) in schema.columns.iter().zip(&snapshotted).zip(&streamed) {
            assert_eq!(s, b, "column {} of row {}: snapshot vs binlog", c.name, k + 1);
        }
    }
    let row = after(&inserted.events[0]);
    let expect = |name: &str, v: Value| assert_eq!(row[name], v, "column {name}");
    expect("ti", Value::Int(127));
    expect("ti1", Value::Int(1));
    expect("tu", Value::Int(255));
    expect("mi", Value::Int(-8_388_608));
    expect("mu", Value::Int(16_777_215));
    expect("iu", Value::Int(4_294_967_295));
    expect("bi", Value::Int(i64::MIN));
    expect("bu", Value::UInt(u64::MAX));
    expect("f", Value::Float(0.1));
    expect("d", Value::Float(1e300));
    expect("dec1", Value::Decimal("-12.50".into()));
    expect("dec65", Value::Decimal("12345678901234567890123456789012345.123456789012345678901234567890".into()));
    expect("c", Value::Text("ab".into()));
    expect("vc", Value::Text("😀 4-byte".into()));
    expect("l1", Value::Text("café".into()));
    expect("bn", Value::Bytes(b"ab\0\0".to_vec()));
    expect("vb", Value::Bytes(vec![0, 255]));
    expect("j", Value::Json("{\"a\": [1, 2.5, \"x\"], \"b\": null}".into()));
    expect("dt", Value::Date("0000-00-00".into()));
    expect("tm", Value::Time("-838:59:59".into()));
    expect("tm6", Value::Time("12:34:56.789".into()));
    expect("dtm", Value::Timestamp("0000-00-00 00:00:00".into()));
    expect("dtm6", Value::Timestamp("2024-02-29 23:59:59.999999".into()));
    expect("ts", Value::TimestampTz("2038-01-19 03:14:07+00".into()));
    expect("ts3", Value::TimestampTz("1970-01-01 00:00:01.5+00".into()));
    expect("yr", Value::Int(0));
    expect("e", Value::Text("large".into()));
    expect("st", Value::Text("a,c".into()));
    expect("b1", Value::Bytes(vec![1]));
    expect("b64", Value::Bytes(vec![0xFF; 8]));
    expect("u", Value::Uuid("b997525f-e674-11f1-a7f4-02fc00000001".into()));
    expect("i6", Value::Other("::ffff:1.2.3.4".into()));
    expect("i4", Value::Other("255.255.255.255".into()));
    let nulls = after(&inserted.events[1]);
    assert!(nulls.iter().filter(|(k, _)| *k != "id").all(|(_, v)| *v == Value::Null), "{nulls:?}");
    let third = after(&inserted.events[2]);
    assert_eq!(third["yr"], Value::Int(2155));
    assert_eq!(third["dec65"], Value::Decimal("-0.000000000000000000000000000001".into()));
    assert_eq!(third["ts"], Value::TimestampTz("0000-00-00 00:00:00+00".into()));
    assert_eq!(third["tm6"], Value::Time("-00:00:00.000001".into()));
    assert_eq!(third["e"], Value::Text("".into()));
    assert_eq!(third["u"], Value::Uuid("00000000-0000-0000-0000-000000000000".into()));

    let update = stream.tx().await;
    assert_eq!(update.events.len(), 1);
    let u = &update.events[0];
    assert_eq!(u.op, Op::Update);
    assert_eq!(by_name(&u.table, u.before.as_ref().expect("before"))["vc"], Value::Text("😀 4-byte".into()));
    assert_eq!(after(u)["vc"], Value::Text("changed".into()));
    assert_eq!(after(u)["bu"], Value::UInt(1));
    let delete = stream.tx().await;
    assert_eq!(delete.events[0].op, Op::Delete);
    assert_eq!(
        by_name(&delete.events[0].table, delete.events[0].before.as_ref().expect("before"))["id"],
        Value::Int(102)
    );
}

/// The positions of three transactions, each inserting one row.
async fn three_transactions(conn: &mut mysql_async::Conn, stream: &mut Stream) -> Vec<String> {
    let mut positions = Vec::new();
    for i in 1..=3 {
        sql(conn, &format!("INSERT INTO t VALUES ({i}, 'v{i}')")).await;
        let tx = stream.tx().await;
        assert_eq!(after(&tx.events[0])["id"], Value::Int(i));
        positions.push(tx.position);
    }
    positions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_a_checkpoint_by_gtid_and_by_file_position_without_duplicates() {
    let server = mysql_source().await;
    let db = fresh_mysql_db(server, "srcresume").await;
    let mut conn = server.connect(&db).await;
    sql(&mut conn, "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))").await;
    let mut src = source(server, &db, &[&format!("{db}.t")]);
    src.prepare().await.expect("prepare");
    let start = src.begin_without_snapshot().await.expect("position");
    let mut stream = Stream::start(&mut src, &start).await;
    let positions = three_transactions(&mut conn, &mut stream).await;
    drop(stream);

    // By GTID (the checkpoint carries the state).
    assert!(positions[1].contains(" gtid="), "{}", positions[1]);
    let mut stream = Stream::start(&mut src, &positions[1]).await;
    let tx = stream.tx().await;
    assert_eq!(after(&tx.events[0])["id"], Value::Int(3), "only what follows the checkpoint");
    assert_eq!(tx.position, positions[2]);
    sql(&mut conn, "INSERT INTO t VALUES (4, 'v4')").await;
    assert_eq!(after(&stream.tx().await.events[0])["id"], Value::Int(4));
    drop(stream);

    // By file:position (the GTID state removed).
    let file_pos = positions[1].split(' ').next().expect("file:pos").to_string();
    let mut stream = Stream::start(&mut src, &file_pos).await;
    assert_eq!(after(&stream.tx().await.events[0])["id"], Value::Int(3));
    assert_eq!(after(&stream.tx().await.events[0])["id"], Value::Int(4));
    drop(stream);

    // From the newest position: nothing is repeated; traffic elsewhere moves the position.
    let last = positions[2].clone();
    let mut stream = Stream::start(&mut src, &last).await;
    sql(&mut conn, "CREATE TABLE other (id INT PRIMARY KEY); INSERT INTO other VALUES (1)").await;
    let heartbeat = loop {
        match stream.item().await {
            SourceItem::Transaction(t) => {
                let id = after(&t.events[0])["id"].clone();
                assert_eq!(id, Value::Int(4), "transaction 4 is after the checkpoint, 1..3 are not");
            }
            SourceItem::Heartbeat { position } if position != last => break position,
            SourceItem::Heartbeat { .. } => {}
            SourceItem::TransactionPart(_) => panic!("no parts expected"),
        }
    };
    let hb = tidewater_mysql::binlog_pos::BinlogPosition::parse(&heartbeat).expect("heartbeat position parses");
    let l = tidewater_mysql::binlog_pos::BinlogPosition::parse(&last).expect("parses");
    assert_eq!(hb.cmp_file_pos(&l), std::cmp::Ordering::Greater, "{heartbeat} after {last}");
    // The lag poller reports the head.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let head = stream.progress.head_position.lock().expect("lock").clone();
    assert!(head.is_some_and(|h| h.starts_with("binlog.")), "head position reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_column_shows_up_before_the_first_row_carrying_it_and_truncate_streams() {
    let server = mysql_source().await;
    let db = fresh_mysql_db(server, "srcddl").await;
    let mut conn = server.connect(&db).await;
    sql(&mut conn, "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10)); INSERT INTO t VALUES (1, 'a')").await;
    let mut src = source(server, &db, &[&format!("{db}.t")]);
    let schemas = src.prepare().await.expect("prepare");
    assert_eq!(schemas[0].columns.len(), 2);
    let start = src.begin_without_snapshot().await.expect("position");
    let mut stream = Stream::start(&mut src, &start).await;
    sql(&mut conn, "INSERT INTO t VALUES (2, 'b')").await;
    let before = stream.tx().await;
    assert_eq!(before.events[0].table.columns.len(), 2);
    sql(&mut conn, "ALTER TABLE t ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'none', ADD COLUMN n BIGINT UNSIGNED")
        .await;
    sql(&mut conn, "INSERT INTO t VALUES (3, 'c', 'hello', 18446744073709551615)").await;
    let tx = stream.tx().await;
    let e = &tx.events[0];
    let names: Vec<&str> = e.table.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["id", "v", "note", "n"]);
    assert_eq!(e.table.columns[2].existing_rows_value.as_deref(), Some("none"));
    assert_eq!(after(e)["note"], Value::Text("hello".into()));
    assert_eq!(after(e)["n"], Value::UInt(u64::MAX));
    sql(&mut conn, "UPDATE t SET v = 'x' WHERE id = 1").await;
    let tx = stream.tx().await;
    assert!(Arc::ptr_eq(&tx.events[0].table, &e.table), "an unchanged schema is the same Arc");
    sql(&mut conn, "TRUNCATE TABLE t").await;
    let tx = stream.tx().await;
    assert_eq!(tx.events.len(), 1);
    assert_eq!(tx.events[0].op, Op::Truncate);
    assert_eq!(tx.events[0].table.id.name, "t");

    // A schema change while the stream is behind: a restart from `start` replays the
    // old rows with the old columns (matched by name), then the new ones.
    drop(stream);
    let mut stream = Stream::start(&mut src, &start).await;
    assert_eq!(stream.tx().await.events[0].table.columns.len(), 2);
    assert_eq!(stream.tx().await.events[0].table.columns.len(), 4);
}

/// A stream that starts past a schema change it never read, with the catalog of the
/// pipeline's start (a reader opened again after a restart of the shared reader or while
/// catching up): the added column's values arrive, never as NULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_past_an_added_column_decodes_its_values() {
    let server = mysql_source().await;
    let db = fresh_mysql_db(server, "srcpast").await;
    let mut conn = server.connect(&db).await;
    sql(&mut conn, "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))").await;
    let mut src = source(server, &db, &[&format!("{db}.t")]);
    let schemas = src.prepare().await.expect("prepare");
    assert_eq!(schemas[0].columns.len(), 2);
    sql(&mut conn, "ALTER TABLE t ADD COLUMN extra VARCHAR(20) NULL").await;
    let past = src.begin_without_snapshot().await.expect("position");
    sql(&mut conn, "INSERT INTO t VALUES (1, 'a', 'x')").await;
    let mut stream = Stream::start(&mut src, &past).await;
    let tx = stream.tx().await;
    let names: Vec<&str> = tx.events[0].table.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["id", "v", "extra"]);
    assert_eq!(after(&tx.events[0])["extra"], Value::Text("x".into()));
}

/// A snapshot read continues after a given key, in key order, with a composite key whose
/// text part compares under the column's case-insensitive collation; `resume_snapshot`
/// takes a position whose binlog file is still on the server and refuses one that is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_read_continues_after_a_key_in_key_order() {
    let server = mysql_source().await;
    let db = fresh_mysql_db(server, "srcresume").await;
    let mut conn = server.connect(&db).await;
    sql(
        &mut conn,
        "CREATE TABLE t (a INT, b VARCHAR(10), v INT, PRIMARY KEY (a, b)) COLLATE utf8mb4_general_ci; \
         INSERT INTO t VALUES (2,'a',1),(1,'B',2),(1,'a',3),(1,'c',4),(10,'a',5),(3,'a',6)",
    )
    .await;
    let mut src = source(server, &db, &[&format!("{db}.t")]);
    let schemas = src.prepare().await.expect("prepare");
    let position = src.begin_snapshot().await.expect("snapshot");
    let values = |rows: &[Vec<Value>]| rows.iter().map(|r| r[2].clone()).collect::<Vec<_>>();
    let all = snapshot_rows(&mut src, &schemas[0], None).await;
    let ints = |v: &[i64]| v.iter().map(|&n| Value::Int(n)).collect::<Vec<_>>();
    assert_eq!(values(&all), ints(&[3, 2, 4, 1, 6, 5]), "key order (1,a) (1,B) (1,c) (2,a) (3,a) (10,a)");
    // Continue after (1, 'B'), as a restart after that chunk would, from a new read.
    let after = vec![all[1][0].clone(), all[1][1].clone()];
    sql(&mut conn, "INSERT INTO t VALUES (1,'bb',7),(0,'z',8)").await;
    assert!(src.resume_snapshot(&position).await.expect("resume"), "the binlog of {position} is there");
    let rest = snapshot_rows(&mut src, &schemas[0], Some(&after)).await;
    assert_eq!(values(&rest), ints(&[7, 4, 1, 6, 5]), "rows after (1,B) only, the new one included");
    assert!(!src.resume_snapshot("binlog.999999:4").await.expect("resume answer"), "a purged file is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transaction_arrives_in_parts_then_whole() {
    let server = mysql_source().await;
    let db = fresh_mysql_db(server, "srclarge").await;
    let mut conn = server.connect(&db).await;
    sql(&mut conn, "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))").await;
    let mut src = source(server, &db, &[&format!("{db}.t")]);
    src.prepare().await.expect("prepare");
    let start = src.begin_without_snapshot().await.expect("position");
    let mut stream = Stream::start(&mut src, &start).await;
    sql(
        &mut conn,
        "BEGIN; INSERT INTO t SELECT seq, 'x' FROM seq_1_to_25000; UPDATE t SET v = 'y' WHERE id <= 10; COMMIT",
    )
    .await;
    let mut parts = 0;
    let mut events = 0;
    loop {
        match stream.item().await {
            SourceItem::TransactionPart(p) => {
                parts += 1;
                events += p.events.len();
                assert!(p.budget.is_some(), "parts hold memory budget");
            }
            SourceItem::Transaction(t) => {
                events += t.events.len();
                break;
            }
            SourceItem::Heartbeat { .. } => assert_eq!(parts, 0, "no heartbeat inside a transaction"),
        }
    }
    assert_eq!(parts, 2);
    assert_eq!(events, 25_010);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_or_unknown_positions_fail_with_the_fix() {
    let server = mysql_source().await;
    let db = fresh_mysql_db(server, "srcpurged").await;
    let mut conn = server.connect(&db).await;
    sql(&mut conn, "CREATE TABLE t (id INT PRIMARY KEY)").await;
    let mut src = source(server, &db, &[&format!("{db}.t")]);
    src.prepare().await.expect("prepare");
    for position in ["binlog.999999:4", "binlog.000001:4 gtid=0-1-999999999"] {
        let mut stream = Stream::start(&mut src, position).await;
        let e = stream.failure().await;
        assert!(e.is_fatal(), "{e}");
        assert!(e.message.contains("purged past the checkpoint"), "{e}");
        assert!(e.message.contains("tidewater_checkpoints"), "{e}");
    }
    let cp = Checkpoint { position: "0/1A2B3C".into(), snapshot_complete: true, copy_progress: None };
    let (tx, _rx) = tidewater_core::queue::source_queue(0);
    let (_acks, acks_rx) = watch::channel(None);
    let e = src.start_stream(&cp, tx, acks_rx, Arc::new(SourceProgress::default())).await.err().expect("refused");
    assert!(e.is_fatal() && e.message.contains("not a MySQL binlog position"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_server_id_is_a_clear_error() {
    let server = mysql_source().await;
    let db = fresh_mysql_db(server, "srcdupid").await;
    let mut conn = server.connect(&db).await;
    sql(&mut conn, "CREATE TABLE t (id INT PRIMARY KEY)").await;
    let id = unique_server_id();
    // Pipelines of one section share its reader; another section (or another replica)
    // with the same id is the clash.
    let with_id = |section: &str| {
        MysqlSource::new(MysqlSourceConfig {
            source_name: section.into(),
            endpoint: endpoint(server, &db),
            tables: vec![format!("{db}.t")],
            server_id: id,
        })
    };
    let mut a = with_id("src");
    a.prepare().await.expect("prepare");
    let start = a.begin_without_snapshot().await.expect("position");
    let mut first = Stream::start(&mut a, &start).await;
    let mut b = with_id("other");
    b.prepare().await.expect("prepare");
    let _second = Stream::start(&mut b, &start).await;
    let e = first.failure().await;
    assert!(e.is_fatal(), "{e}");
    assert!(e.message.contains("server_id"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_key_grants_and_tables_fail_loudly() {
    let server = mysql_source().await;
    let db = fresh_mysql_db(server, "srcfail").await;
    let mut conn = server.connect(&db).await;
    sql(&mut conn, "CREATE TABLE nokey (a INT, b INT); CREATE TABLE ok (id INT PRIMARY KEY)").await;
    // A keyless table is replicated by whole rows (full row images).
    let schemas = source(server, &db, &[&format!("{db}.nokey")]).prepare().await.expect("keyless table");
    assert!(schemas.len() == 1 && schemas[0].is_keyless(), "{schemas:?}");
    let e = source(server, &db, &[&format!("{db}.absent")]).prepare().await.expect_err("absent");
    assert!(e.is_fatal() && e.message.contains("does not exist"), "{e}");

    // A user with only SELECT: the missing replication grants are named.
    let user = format!("weak_{}", db.len() + (std::process::id() as usize % 1000));
    server
        .sql(&format!(
            "CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY 'pw'; GRANT SELECT ON `{db}`.* TO '{user}'@'%';"
        ))
        .expect("create user");
    let mut weak = MysqlSource::new(MysqlSourceConfig {
        source_name: "src".into(),
        endpoint: MysqlEndpoint { user: user.clone(), password: Some("pw".into()), ..endpoint(server, &db) },
        tables: vec![format!("{db}.ok")],
        server_id: unique_server_id(),
    });
    let e = weak.prepare().await.expect_err("missing grants");
    assert!(e.is_fatal(), "{e}");
    assert!(e.message.contains("GRANT REPLICATION SLAVE ON *.*"), "{e}");
    assert!(e.message.contains("GRANT BINLOG MONITOR ON *.*"), "{e}");
    assert!(!e.message.contains("GRANT SELECT"), "{e}");
}

/// Decoding throughput (run by hand: `cargo test --release --test main mysql_source_throughput -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn mysql_source_throughput() {
    let server = mysql_source().await;
    let db = fresh_mysql_db(server, "srcbench").await;
    let mut conn = server.connect(&db).await;
    sql(
        &mut conn,
        "CREATE TABLE t (id BIGINT PRIMARY KEY, a INT, b VARCHAR(40), c DECIMAL(12,2), d DATETIME(6), e TEXT, f DOUBLE)",
    )
    .await;
    let mut src = source(server, &db, &[&format!("{db}.t")]);
    src.prepare().await.expect("prepare");
    let start = src.begin_without_snapshot().await.expect("position");
    let n = 200_000;
    for chunk in 0..(n / 1000) {
        sql(
            &mut conn,
            &format!(
                "INSERT INTO t SELECT seq, seq % 1000, concat('name ', seq), seq / 7, now(6), repeat('x', 50), seq / 3 \
                 FROM seq_{}_to_{}",
                chunk * 1000 + 1,
                chunk * 1000 + 1000
            ),
        )
        .await;
    }
    let t0 = std::time::Instant::now();
    let mut stream = Stream::start(&mut src, &start).await;
    let mut events = 0;
    while events < n {
        events += stream.tx().await.events.len();
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!("{events} rows in {secs:.2} s: {:.0} rows/s", events as f64 / secs);
}

// ------------------------------------------------------------------ end to end (daemon)

/// A MariaDB-source pipeline run in-process, with a Postgres or MariaDB target.
pub struct MyPipeline {
    pub name: String,
    pub source: &'static MyServer,
    pub source_db: String,
    pub target: Target,
    pub dir: tempfile::TempDir,
    pub status_port: u16,
    pub server_id: u32,
}

pub enum Target {
    Pg(&'static crate::support::PgServer, String),
    My(&'static MyServer, String),
}

impl MyPipeline {
    pub async fn new(prefix: &str, setup_sql: &str, pg_target: bool) -> MyPipeline {
        let source = mysql_source().await;
        let source_db = fresh_mysql_db(source, prefix).await;
        let target = if pg_target {
            let pg = crate::support::pg_target().await;
            Target::Pg(pg, crate::support::fresh_db(pg, prefix).await)
        } else {
            let my = crate::support::mysql::mysql_target().await;
            Target::My(my, fresh_mysql_db(my, prefix).await)
        };
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("mypw"), MYSQL_PASSWORD).expect("password file");
        std::fs::write(dir.path().join("pgpw"), crate::support::REPLICATOR_PASSWORD).expect("password file");
        let p = MyPipeline {
            name: format!("p_{}", prefix.replace('-', "_")),
            source,
            source_db,
            target,
            dir,
            status_port: crate::support::free_port(),
            server_id: unique_server_id(),
        };
        if !setup_sql.is_empty() {
            sql(&mut p.source_conn().await, setup_sql).await;
        }
        p
    }

    pub fn config_text(&self) -> String {
        let dir = self.dir.path().display();
        let target = match &self.target {
            Target::Pg(pg, db) => format!(
                "type = \"postgres\"\nurl = \"postgres://{}@127.0.0.1:{}/{db}\"\npassword_file = \"{dir}/pgpw\"",
                crate::support::REPLICATOR_USER,
                pg.port
            ),
            Target::My(my, db) => {
                format!("type = \"mysql\"\nurl = \"{}\"\npassword_file = \"{dir}/mypw\"", my.url(db))
            }
        };
        format!(
            r#"
[status]
listen = "127.0.0.1:{port}"

[log]
format = "text"
level = "info"

[sources.src]
type = "mysql"
url = "{url}"
password_file = "{dir}/mypw"
server_id = {server_id}
tables = ["{db}.*"]

[targets.dst]
{target}

[[pipelines]]
name = "{name}"
source = "src"
target = "dst"
max_batch_delay_ms = 20

[pipelines.tables]
"{db}.orders" = "public.orders"
"{db}.types" = "public.types"
"#,
            port = self.status_port,
            url = self.source.url(&self.source_db),
            server_id = self.server_id,
            db = self.source_db,
            name = self.name,
        )
    }

    pub fn start(&self) -> InProcess {
        InProcess::start(&self.config_text())
    }

    pub async fn source_conn(&self) -> mysql_async::Conn {
        self.source.connect(&self.source_db).await
    }

    pub async fn status(&self) -> Option<serde_json::Value> {
        let body = tidewater::http_get(&format!("http://127.0.0.1:{}/status", self.status_port)).await.ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(json["pipelines"][0].clone())
    }

    pub async fn wait_state(&self, state: &str) -> serde_json::Value {
        crate::support::wait_for(&format!("pipeline state {state}"), Duration::from_secs(60), || async {
            self.status().await.filter(|p| p["state"] == state)
        })
        .await
    }

    /// `expr` (a `concat_ws` of columns, the same text on both engines) of every row.
    pub async fn source_rows(&self, table: &str, expr: &str) -> Vec<String> {
        let mut conn = self.source_conn().await;
        let expr = expr.replace("::text", "");
        let mut rows: Vec<String> =
            conn.query(format!("SELECT {expr} FROM {table}")).await.unwrap_or_else(|e| panic!("{table}: {e}"));
        rows.sort();
        rows
    }

    pub async fn target_rows(&self, table: &str, expr: &str) -> Vec<String> {
        let mut rows: Vec<String> = match &self.target {
            Target::Pg(pg, db) => {
                let c = pg.connect_as(db, crate::support::REPLICATOR_USER, crate::support::REPLICATOR_PASSWORD).await;
                match c.query(&format!("SELECT ({expr})::text FROM {table}"), &[]).await {
                    Ok(rows) => rows.iter().map(|r| r.get::<_, String>(0)).collect(),
                    Err(_) => Vec::new(),
                }
            }
            Target::My(my, db) => {
                let mut c = my.connect(db).await;
                let expr = expr.replace("::text", "");
                match c.query(format!("SELECT {expr} FROM {table}")).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        eprintln!("target query failed: {e}");
                        Vec::new()
                    }
                }
            }
        };
        rows.sort();
        rows
    }

    pub async fn wait_converged(&self, table: &str, expr: &str) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let a = self.source_rows(table, expr).await;
            let b = self.target_rows(table, expr).await;
            if a == b {
                return a;
            }
            if tokio::time::Instant::now() > deadline {
                let only_src: Vec<_> = a.iter().filter(|r| !b.contains(r)).take(3).collect();
                let only_dst: Vec<_> = b.iter().filter(|r| !a.contains(r)).take(3).collect();
                panic!(
                    "{table} did not converge: source {} rows, target {} rows; only in source {only_src:?}, only in \
                     target {only_dst:?}; status {:?}",
                    a.len(),
                    b.len(),
                    self.status().await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

const ORDERS: &str = "CREATE TABLE orders (id BIGINT UNSIGNED PRIMARY KEY, item VARCHAR(40) NOT NULL, qty INT, \
                      price DECIMAL(10,2), note TEXT); \
                      INSERT INTO orders SELECT seq, concat('item ', seq), seq % 7, seq / 4, NULL FROM seq_1_to_3000;";
/// One `orders` row as text; the same on MariaDB and (with the `::text` casts, dropped
/// for MariaDB) on Postgres.
const ORDER_ROW: &str =
    "concat_ws('|', id, item, coalesce(qty::text, 'null'), coalesce(price::text, 'null'), coalesce(note, 'null'))";

/// Every operation and a multi-statement transaction after the snapshot.
async fn write_changes(conn: &mut mysql_async::Conn, base: u64) {
    sql(conn, &format!("INSERT INTO orders VALUES ({}, 'new', 1, 9.99, 'n')", base + 1)).await;
    sql(conn, "UPDATE orders SET qty = qty + 100, note = 'updated' WHERE id % 10 = 0").await;
    sql(conn, "DELETE FROM orders WHERE id % 13 = 0").await;
    sql(
        conn,
        &format!(
            "BEGIN; INSERT INTO orders VALUES ({b2}, 'tx', 2, 1.00, NULL); UPDATE orders SET id = {b3} WHERE id = {b2}; \
             UPDATE orders SET item = 'moved' WHERE id = {b3}; DELETE FROM orders WHERE id = 1; COMMIT",
            b2 = base + 2,
            b3 = base + 3
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_to_postgres_snapshot_then_stream() {
    let p = MyPipeline::new("my2pg", ORDERS, true).await;
    let daemon = p.start();
    p.wait_state("streaming").await;
    assert_eq!(p.wait_converged("orders", ORDER_ROW).await.len(), 3000);
    write_changes(&mut p.source_conn().await, 10_000).await;
    let rows = p.wait_converged("orders", ORDER_ROW).await;
    assert!(rows.contains(&"10003|moved|2|1.00|null".to_string()), "{:?}", &rows[..3]);
    let status = p.status().await.expect("status");
    assert_eq!(status["state"], "streaming");
    assert!(status["source_position"].as_str().is_some_and(|s| s.starts_with("binlog.")), "{status}");
    assert!(status["applied_position"].as_str().is_some_and(|s| s.contains(" gtid=")), "{status}");
    assert_eq!(daemon.stop().await, vec![tidewater::engine::Outcome::Stopped]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_to_mariadb_restart_resumes_without_duplicates() {
    let p = MyPipeline::new("my2my", ORDERS, false).await;
    let daemon = p.start();
    p.wait_state("streaming").await;
    write_changes(&mut p.source_conn().await, 10_000).await;
    p.wait_converged("orders", ORDER_ROW).await;
    daemon.stop().await;

    // While stopped: more changes; after the restart only they are applied.
    let mut conn = p.source_conn().await;
    sql(&mut conn, "INSERT INTO orders SELECT seq, 'while stopped', 0, 0, NULL FROM seq_20001_to_20050").await;
    let daemon = p.start();
    p.wait_state("streaming").await;
    sql(&mut conn, "INSERT INTO orders VALUES (30001, 'after restart', 0, 0, NULL)").await;
    let rows = p.wait_converged("orders", ORDER_ROW).await;
    assert!(rows.iter().any(|r| r.starts_with("30001|")));
    let status = p.status().await.expect("status");
    assert_eq!(status["events_applied_total"], 51, "only the new rows were applied again: {status}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_types_reach_postgres() {
    let p = MyPipeline::new("mytypes2pg", "", true).await;
    let mut conn = p.source_conn().await;
    sql(&mut conn, "SET SESSION sql_mode = '', time_zone = '+00:00'").await;
    sql(&mut conn, TYPES_TABLE).await;
    // Every value of the edge rows arrives in the tables Tidewater creates: zero dates as
    // -infinity, TIME beyond 24 h and negative TIME as intervals.
    sql(&mut conn, &type_rows(0)).await;
    let daemon = p.start();
    p.wait_state("streaming").await;
    sql(&mut conn, &type_rows(100)).await;
    sql(&mut conn, "INSERT INTO types (id, dt) VALUES (500, '0000-00-00')").await;
    // A date with a zero month has no Postgres form at all: the one dead letter.
    sql(&mut conn, "INSERT INTO types (id, dt) VALUES (501, '2020-00-15')").await;
    sql(&mut conn, "INSERT INTO types (id) VALUES (502)").await;
    let expr = "concat_ws('|', id, bu::text, bi::text, dec65::text, vc, l1, e, st, yr::text, dt::text, tm::text, \
                tm6::text, dtm::text, ts::text)";
    crate::support::wait_for("row 502 in the target", Duration::from_secs(60), || async {
        let rows = p.target_rows("types", "id").await;
        rows.contains(&"502".to_string()).then_some(())
    })
    .await;
    let target = p.target_rows("types", expr).await;
    for base in [0, 100] {
        let first = format!(
            "{}|18446744073709551615|-9223372036854775808|12345678901234567890123456789012345.123456789012345678901234567890|\
             😀 4-byte|café|large|a,c|0|-infinity|-838:59:59|12:34:56.789|-infinity|2038-01-19 03:14:07+00",
            base + 1
        );
        assert!(target.contains(&first), "{first} in {target:#?}");
        let third = format!("{}|", base + 3);
        let third = target.iter().find(|r| r.starts_with(&third)).expect("third row");
        assert!(third.ends_with("|9999-12-31|00:00:00|-00:00:00.000001|1000-01-01 00:00:00|-infinity"), "{third}");
    }
    assert!(target.iter().any(|r| r.starts_with("500|") && r.contains("|-infinity")), "{target:?}");
    assert!(!target.iter().any(|r| r.starts_with("501|")), "{target:?}");
    let status = p.status().await.expect("status");
    assert_eq!(status["dead_letters_total"].as_u64(), Some(1), "{status}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_types_round_trip_to_mariadb() {
    let p = MyPipeline::new("mytypes2my", "", false).await;
    let mut conn = p.source_conn().await;
    sql(&mut conn, "SET SESSION sql_mode = '', time_zone = '+00:00'").await;
    sql(&mut conn, TYPES_TABLE).await;
    // MySQL's zero dates, zero TIMESTAMP included, arrive as they are.
    let rows = type_rows;
    sql(&mut conn, &rows(0)).await;
    let daemon = p.start();
    p.wait_state("streaming").await;
    sql(&mut conn, &rows(100)).await;
    sql(&mut conn, "UPDATE types SET vc = 'updated', b64 = b'101' WHERE id = 101").await;
    let columns = [
        "id",
        "ti",
        "ti1",
        "tu",
        "si",
        "su",
        "mi",
        "mu",
        "i",
        "iu",
        "bi",
        "bu",
        "f",
        "d",
        "dec1",
        "dec65",
        "c",
        "vc",
        "tx",
        "l1",
        "hex(bn)",
        "hex(vb)",
        "hex(bl)",
        "j",
        "dt",
        "tm",
        "tm6",
        "dtm",
        "dtm6",
        "unix_timestamp(ts)",
        "unix_timestamp(ts3)",
        "yr",
        "e",
        "st",
        "hex(b1)",
        "hex(b64)",
        "u",
        "i6",
        "i4",
    ];
    let expr = format!(
        "concat_ws('|', {})",
        columns.iter().map(|c| format!("coalesce(convert({c} using utf8mb4), 'null')")).collect::<Vec<_>>().join(", ")
    );
    let rows = p.wait_converged("types", &expr).await;
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().any(|r| r.contains("|updated|")), "{rows:?}");
    daemon.stop().await;
}
