//! MariaDB source → every target, end to end through the daemon (in-process): every
//! operation reaching Postgres, MariaDB and SQLite; the SQLite type mapping with edge
//! values (snapshot and binlog paths); a transaction touching one key many times.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use tidewater_sqlite::sqlx::{self, Connection, Row};

use crate::support::mysql::{fresh_mysql_db, mysql_source, mysql_target, MyServer, MYSQL_PASSWORD};
use crate::support::{fresh_db, pg_target, wait_for, InProcess, PgServer, REPLICATOR_PASSWORD, REPLICATOR_USER};

const WAIT: Duration = Duration::from_secs(20);

static SERVER_IDS: AtomicU32 = AtomicU32::new(0);

/// A replica id distinct from every other stream of this test process (and from the ids
/// `mysql_source.rs` hands out: those stay below 1000 + 5000 * 100).
pub(crate) fn server_id() -> u32 {
    let base = 1_000_000 + (std::process::id() % 5000) * 100;
    base + SERVER_IDS.fetch_add(1, Ordering::Relaxed)
}

pub(crate) async fn sql(conn: &mut mysql_async::Conn, statements: &str) {
    conn.query_drop(statements).await.unwrap_or_else(|e| panic!("{statements}: {e}"));
}

/// Where one pipeline writes.
pub(crate) enum Dst {
    Pg(&'static PgServer, String),
    My(&'static MyServer, String),
    Lite(PathBuf),
}

impl Dst {
    pub(crate) async fn pg(prefix: &str) -> Dst {
        let pg = pg_target().await;
        Dst::Pg(pg, fresh_db(pg, prefix).await)
    }

    async fn my(prefix: &str) -> Dst {
        let my = mysql_target().await;
        Dst::My(my, fresh_mysql_db(my, prefix).await)
    }

    /// Every row of `sql` (one text column per row; `NULL` as `<NULL>`), in its order.
    pub(crate) async fn texts(&self, pg_sql: &str, my_sql: &str, lite_sql: &str) -> Vec<String> {
        match self {
            Dst::Pg(pg, db) => {
                let c = pg.connect_as(db, REPLICATOR_USER, REPLICATOR_PASSWORD).await;
                match c.query(pg_sql, &[]).await {
                    Ok(rows) => rows.iter().map(|r| r.get::<_, Option<String>>(0).unwrap_or("<NULL>".into())).collect(),
                    Err(_) => Vec::new(),
                }
            }
            Dst::My(my, db) => {
                let mut c = my.connect(db).await;
                match c.query::<Option<String>, _>(my_sql).await {
                    Ok(rows) => rows.into_iter().map(|r| r.unwrap_or("<NULL>".into())).collect(),
                    Err(_) => Vec::new(),
                }
            }
            Dst::Lite(path) => {
                if !path.exists() {
                    return Vec::new();
                }
                lite_texts(path, lite_sql).await.unwrap_or_default()
            }
        }
    }

    /// The body of its `[targets.*]` section; the password files are `DIR/pgpw` and
    /// `DIR/mypw`.
    pub(crate) fn target_section(&self, dir: &str) -> String {
        match self {
            Dst::Pg(pg, db) => format!(
                "type = \"postgres\"\nurl = \"postgres://{REPLICATOR_USER}@127.0.0.1:{}/{db}\"\npassword_file = \
                 \"{dir}/pgpw\"",
                pg.port
            ),
            Dst::My(my, db) => format!("type = \"mysql\"\nurl = \"{}\"\npassword_file = \"{dir}/mypw\"", my.url(db)),
            Dst::Lite(path) => format!("type = \"sqlite\"\npath = \"{}\"", path.display()),
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Dst::Pg(..) => "postgres",
            Dst::My(..) => "mariadb",
            Dst::Lite(_) => "sqlite",
        }
    }
}

async fn lite_texts(path: &Path, sql: &str) -> Result<Vec<String>, sqlx::Error> {
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", path.display())).await?;
    let rows = sqlx::query(sql).fetch_all(&mut conn).await?;
    let out =
        rows.iter().map(|r| r.try_get::<Option<String>, _>(0).unwrap().unwrap_or_else(|| "<NULL>".into())).collect();
    conn.close().await?;
    Ok(out)
}

/// A MariaDB source database and one daemon running one pipeline per target.
struct E2e {
    source: &'static MyServer,
    db: String,
    dir: tempfile::TempDir,
    status_port: u16,
    dsts: Vec<Dst>,
    /// Source tables (in the source database) mapped to `public.<name>` on every target.
    tables: Vec<&'static str>,
}

impl E2e {
    async fn new(prefix: &str, setup_sql: &str, tables: &[&'static str], dsts: Vec<Dst>) -> E2e {
        let source = mysql_source().await;
        let db = fresh_mysql_db(source, prefix).await;
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("mypw"), MYSQL_PASSWORD).expect("password file");
        std::fs::write(dir.path().join("pgpw"), REPLICATOR_PASSWORD).expect("password file");
        let e = E2e { source, db, dir, status_port: crate::support::free_port(), dsts, tables: tables.to_vec() };
        if !setup_sql.is_empty() {
            sql(&mut e.conn().await, setup_sql).await;
        }
        e
    }

    fn sqlite_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn conn(&self) -> mysql_async::Conn {
        self.source.connect(&self.db).await
    }

    fn config_text(&self) -> String {
        let dir = self.dir.path().display();
        let mut text = format!(
            "[status]\nlisten = \"127.0.0.1:{}\"\n\n[log]\nformat = \"text\"\nlevel = \"info\"\n",
            self.status_port
        );
        let mapping: String = self.tables.iter().map(|t| format!("\"{}.{t}\" = \"public.{t}\"\n", self.db)).collect();
        for (n, dst) in self.dsts.iter().enumerate() {
            let target = dst.target_section(&dir.to_string());
            text.push_str(&format!(
                r#"
[sources.src{n}]
type = "mysql"
url = "{url}"
password_file = "{dir}/mypw"
server_id = {server_id}
tables = ["{db}.*"]

[targets.dst{n}]
{target}

[[pipelines]]
name = "p{n}_{kind}"
source = "src{n}"
target = "dst{n}"
max_batch_delay_ms = 20

[pipelines.tables]
{mapping}
"#,
                url = self.source.url(&self.db),
                server_id = server_id(),
                db = self.db,
                kind = dst.kind(),
            ));
        }
        text
    }

    fn start(&self) -> InProcess {
        InProcess::start(&self.config_text())
    }

    async fn statuses(&self) -> Option<Vec<serde_json::Value>> {
        let body = tidewater::http_get(&format!("http://127.0.0.1:{}/status", self.status_port)).await.ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json["pipelines"].as_array().cloned()
    }

    async fn wait_all_streaming(&self) {
        wait_for("every pipeline streaming", WAIT, || async {
            let all = self.statuses().await?;
            (all.len() == self.dsts.len() && all.iter().all(|p| p["state"] == "streaming")).then_some(())
        })
        .await;
    }

    /// Waits until `dst` answers `expected` (the queries per engine); panics with both sides
    /// and the pipelines' status otherwise.
    async fn wait_rows(&self, dst: &Dst, what: &str, queries: [&str; 3], expected: &[String]) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = dst.texts(queries[0], queries[1], queries[2]).await;
            if got == expected {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{what} on the {} target: expected {expected:?}, got {got:?}; status {:?}",
                    dst.kind(),
                    self.statuses().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ------------------------------------------------------------------ every op, every target

/// `id|name|qty` of `t` on each engine, ordered by id.
const T_ROWS: [&str; 3] = [
    "SELECT id::text || '|' || coalesce(name, 'null') || '|' || coalesce(qty::text, 'null') FROM t ORDER BY id",
    "SELECT concat_ws('|', id, coalesce(name, 'null'), coalesce(qty, 'null')) FROM t ORDER BY id",
    "SELECT id || '|' || coalesce(name, 'null') || '|' || coalesce(qty, 'null') FROM t ORDER BY id",
];
/// `id|note` of `u` on each engine, ordered by id.
const U_ROWS: [&str; 3] = [
    "SELECT id::text || '|' || coalesce(note, 'null') FROM u ORDER BY id",
    "SELECT concat_ws('|', id, coalesce(note, 'null')) FROM u ORDER BY id",
    "SELECT id || '|' || coalesce(note, 'null') FROM u ORDER BY id",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_every_op_reaches_postgres_mariadb_and_sqlite() {
    let pg = Dst::pg("myevery").await;
    let my = Dst::my("myevery").await;
    let mut e = E2e::new(
        "myevery",
        "CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(40), qty INT); \
         CREATE TABLE u (id INT PRIMARY KEY, note VARCHAR(40)); \
         INSERT INTO t VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3), (4, 'four', NULL), (5, 'five', 5); \
         INSERT INTO u VALUES (1, 'u1'), (2, 'u2');",
        &["t", "u"],
        vec![pg, my],
    )
    .await;
    let lite = e.sqlite_path("every_op.db");
    e.dsts.push(Dst::Lite(lite));
    let daemon = e.start();
    e.wait_all_streaming().await;

    // The snapshot.
    let t0 = strings(&["1|one|1", "2|two|2", "3|three|3", "4|four|null", "5|five|5"]);
    for dst in &e.dsts {
        e.wait_rows(dst, "the snapshot of t", T_ROWS, &t0).await;
    }

    let mut conn = e.conn().await;
    sql(&mut conn, "INSERT INTO t VALUES (6, 'six', 6), (7, 'seven', 7); INSERT INTO t VALUES (8, 'eight', NULL)")
        .await;
    sql(&mut conn, "UPDATE t SET name = 'TWO', qty = NULL WHERE id = 2").await;
    sql(&mut conn, "UPDATE t SET qty = qty * 10 WHERE id IN (5, 6)").await;
    sql(&mut conn, "UPDATE t SET id = id + 1000 WHERE id IN (3, 7)").await;
    sql(&mut conn, "DELETE FROM t WHERE id IN (4, 8)").await;
    sql(
        &mut conn,
        "BEGIN; INSERT INTO t VALUES (20, 'in tx', 20); UPDATE u SET note = 'tx' WHERE id = 1; \
         INSERT INTO u VALUES (3, 'u3'); DELETE FROM u WHERE id = 2; UPDATE t SET name = 'one in tx' WHERE id = 1; \
         COMMIT",
    )
    .await;
    sql(
        &mut conn,
        "BEGIN; INSERT INTO t VALUES (99, 'rolled back', 99); UPDATE u SET note = 'rolled back' WHERE id = 1; \
         DELETE FROM t WHERE id = 1; ROLLBACK",
    )
    .await;
    // A marker after the rollback: once it arrives, the rollback would have too.
    sql(&mut conn, "INSERT INTO u VALUES (4, 'marker')").await;

    let t1 = strings(&[
        "1|one in tx|1",
        "2|TWO|null",
        "5|five|50",
        "6|six|60",
        "20|in tx|20",
        "1003|three|3",
        "1007|seven|7",
    ]);
    let u1 = strings(&["1|tx", "3|u3", "4|marker"]);
    for dst in &e.dsts {
        e.wait_rows(dst, "u after the changes", U_ROWS, &u1).await;
        e.wait_rows(dst, "t after the changes", T_ROWS, &t1).await;
        let rolled_back = dst.texts(T_ROWS[0], T_ROWS[1], T_ROWS[2]).await;
        assert!(!rolled_back.iter().any(|r| r.starts_with("99|")), "{}: {rolled_back:?}", dst.kind());
    }

    // TRUNCATE, then rows after it.
    sql(&mut conn, "TRUNCATE TABLE u").await;
    sql(&mut conn, "INSERT INTO u VALUES (7, 'after truncate'); INSERT INTO t VALUES (30, 'after truncate', 30)").await;
    sql(&mut conn, "TRUNCATE TABLE t").await;
    sql(&mut conn, "INSERT INTO t VALUES (1, 'again', 1)").await;
    let t2 = strings(&["1|again|1"]);
    let u2 = strings(&["7|after truncate"]);
    for dst in &e.dsts {
        e.wait_rows(dst, "t after its truncate", T_ROWS, &t2).await;
        e.wait_rows(dst, "u after its truncate", U_ROWS, &u2).await;
    }
    let statuses = e.statuses().await.expect("status");
    for s in &statuses {
        assert_eq!(s["state"], "streaming", "{s}");
        assert_eq!(s["dead_letters_total"], 0, "{s}");
    }
    let outcomes = daemon.stop().await;
    assert_eq!(outcomes, vec![tidewater::engine::Outcome::Stopped; 3]);
}

// ------------------------------------------------------------------ SQLite types

const SQLITE_TYPES: &str = "CREATE TABLE ty (
    id INT PRIMARY KEY, ti TINYINT, su SMALLINT UNSIGNED, i INT, bi BIGINT, bu BIGINT UNSIGNED,
    dec65 DECIMAL(65,30), f FLOAT, d DOUBLE, vc VARCHAR(20), tx TEXT, bl BLOB, bn BINARY(4), b64 BIT(64),
    e ENUM('small','medium','large'), st SET('a','b','c'), j JSON, dt DATE, dtm6 DATETIME(6),
    ts6 TIMESTAMP(6) NULL, tm TIME, yr YEAR
)";

/// Four rows with ids offset by `base`: edge values, NULLs, other edge values, and a
/// BIGINT UNSIGNED above SQLite's INTEGER range.
fn sqlite_type_rows(base: i32) -> String {
    format!(
        "INSERT INTO ty VALUES
        ({a}, -128, 65535, -2147483648, -9223372036854775808, 9223372036854775807,
         '12345678901234567890123456789012345.123456789012345678901234567890', 0.1, 1e300, '🌊𝄞', 'text',
         x'00ff00', x'ab0000', x'ffffffffffffffff', 'large', 'a,c', '{{\"a\": [1, 2.5], \"b\": null}}',
         '0000-00-00', '2024-02-29 23:59:59.999999', '2038-01-19 03:14:07.123456', '-838:59:59', 2155),
        ({b}, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL),
        ({c}, 127, 0, 2147483647, 9223372036854775807, 0, '-0.000000000000000000000000000001', -3.5,
         -2.2250738585072014e-308, '', '', '', x'00000000', x'0102030405060708', 'small', '', '[]',
         '9999-12-31', '1000-01-01 00:00:00', '1970-01-01 00:00:01', '00:00:00', 1901),
        ({d}, NULL, NULL, NULL, NULL, 18446744073709551615, NULL, NULL, NULL, 'too big', NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
        a = base + 1,
        b = base + 2,
        c = base + 3,
        d = base + 4
    )
}

/// Each column of `ty` as `typeof:quote` (storage class and exact value).
const TY_COLUMNS: [&str; 22] = [
    "id", "ti", "su", "i", "bi", "bu", "dec65", "f", "d", "vc", "tx", "bl", "bn", "b64", "e", "st", "j", "dt", "dtm6",
    "ts6", "tm", "yr",
];

/// The stored values of row `id`, per column, as `typeof:quote(value)`.
fn expected_ty_row(id: i32) -> Vec<String> {
    let k = id % 100;
    let v: Vec<String> = match k {
        1 => [
            format!("integer:{id}"),
            "integer:-128".into(),
            "integer:65535".into(),
            "integer:-2147483648".into(),
            "integer:-9223372036854775808".into(),
            "integer:9223372036854775807".into(),
            "text:'12345678901234567890123456789012345.123456789012345678901234567890'".into(),
            "real:0.1".into(),
            "real:1.0e+300".into(),
            "text:'🌊𝄞'".into(),
            "text:'text'".into(),
            "blob:X'00FF00'".into(),
            "blob:X'AB000000'".into(),
            "blob:X'FFFFFFFFFFFFFFFF'".into(),
            "text:'large'".into(),
            "text:'a,c'".into(),
            "text:'{\"a\": [1, 2.5], \"b\": null}'".into(),
            "text:'0000-00-00'".into(),
            "text:'2024-02-29T23:59:59.999999'".into(),
            "text:'2038-01-19T03:14:07.123456Z'".into(),
            "text:'-838:59:59'".into(),
            "integer:2155".into(),
        ]
        .into(),
        2 => std::iter::once(format!("integer:{id}")).chain((1..22).map(|_| "null:NULL".to_string())).collect(),
        3 => [
            format!("integer:{id}"),
            "integer:127".into(),
            "integer:0".into(),
            "integer:2147483647".into(),
            "integer:9223372036854775807".into(),
            "integer:0".into(),
            "text:'-0.000000000000000000000000000001'".into(),
            "real:-3.5".into(),
            "real:-2.22507385850720138e-308".into(),
            "text:''".into(),
            "text:''".into(),
            "blob:X''".into(),
            "blob:X'00000000'".into(),
            "blob:X'0102030405060708'".into(),
            "text:'small'".into(),
            "text:''".into(),
            "text:'[]'".into(),
            "text:'9999-12-31'".into(),
            "text:'1000-01-01T00:00:00.000000'".into(),
            "text:'1970-01-01T00:00:01.000000Z'".into(),
            "text:'00:00:00'".into(),
            "integer:1901".into(),
        ]
        .into(),
        _ => unreachable!("row {id} is dead-lettered"),
    };
    v
}

const WIDE_ROWS: &str = "SELECT id || ' ' || typeof(bu) || ':' || quote(bu) FROM wide ORDER BY id";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_to_sqlite_type_round_trip_with_edge_values() {
    let mut e = E2e::new("mytypes2lite", "", &["ty", "wide"], Vec::new()).await;
    let path = e.sqlite_path("types.db");
    e.dsts.push(Dst::Lite(path.clone()));
    let mut conn = e.conn().await;
    sql(&mut conn, "SET SESSION sql_mode = '', time_zone = '+00:00'").await;
    sql(&mut conn, SQLITE_TYPES).await;
    sql(&mut conn, &sqlite_type_rows(0)).await;
    // The documented way to keep u64 values above i64::MAX: a TEXT column on the target.
    sql(
        &mut conn,
        "CREATE TABLE wide (id INT PRIMARY KEY, bu BIGINT UNSIGNED); \
                    INSERT INTO wide VALUES (1, 18446744073709551615), (2, 5)",
    )
    .await;
    {
        let mut w = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.unwrap();
        sqlx::query("CREATE TABLE wide (id INTEGER PRIMARY KEY, bu TEXT)").execute(&mut w).await.unwrap();
        w.close().await.unwrap();
    }
    let daemon = e.start();
    e.wait_all_streaming().await;
    sql(&mut conn, &sqlite_type_rows(100)).await;
    sql(&mut conn, "INSERT INTO wide VALUES (3, 18446744073709551613); UPDATE wide SET bu = bu - 1 WHERE id = 1").await;
    sql(&mut conn, "INSERT INTO ty (id, vc) VALUES (200, 'marker')").await;

    let dst = &e.dsts[0];
    let ids = ["1", "2", "3", "4", "101", "102", "103", "104", "200"].map(String::from);
    e.wait_rows(dst, "the rows of ty", ["", "", "SELECT CAST(id AS TEXT) FROM ty ORDER BY id"], &ids).await;

    // Declared types per the mapping.
    let declared =
        lite_texts(&path, "SELECT name || ' ' || type FROM pragma_table_info('ty') ORDER BY cid").await.unwrap();
    assert_eq!(
        declared,
        [
            "id INTEGER",
            "ti INTEGER",
            "su INTEGER",
            "i INTEGER",
            "bi INTEGER",
            "bu UNSIGNED64 BLOB",
            "dec65 TEXT",
            "f REAL",
            "d REAL",
            "vc TEXT",
            "tx TEXT",
            "bl BLOB",
            "bn BLOB",
            "b64 BLOB",
            "e TEXT",
            "st TEXT",
            "j TEXT",
            "dt TEXT",
            "dtm6 TEXT",
            "ts6 TEXT",
            "tm TEXT",
            "yr INTEGER"
        ]
    );

    // Every stored value, snapshot rows (1..3) and binlog rows (101..103) alike.
    let select = format!(
        "SELECT {} FROM ty WHERE id = ?",
        TY_COLUMNS.iter().map(|c| format!("typeof({c}) || ':' || quote({c})")).collect::<Vec<_>>().join(", ")
    );
    let mut read = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", path.display())).await.unwrap();
    for id in [1, 2, 3, 101, 102, 103] {
        let row = sqlx::query(&select).bind(id).fetch_one(&mut read).await.unwrap();
        let got: Vec<String> = (0..TY_COLUMNS.len()).map(|i| row.try_get::<String, _>(i).unwrap()).collect();
        let expected = expected_ty_row(id);
        for ((c, g), x) in TY_COLUMNS.iter().zip(&got).zip(&expected) {
            assert_eq!(g, x, "column {c} of row {id}");
        }
    }
    // JSON text is usable as JSON.
    let j: f64 = sqlx::query_scalar("SELECT json_extract(j, '$.a[1]') FROM ty WHERE id = 101")
        .fetch_one(&mut read)
        .await
        .unwrap();
    assert_eq!(j, 2.5);
    // The u64 above i64::MAX: kept exactly, as decimal text (snapshot and binlog alike).
    let big = lite_texts(
        &path,
        "SELECT id || ' ' || typeof(bu) || ':' || quote(bu) FROM ty WHERE id IN (4, 104) ORDER BY id",
    )
    .await
    .unwrap();
    assert_eq!(big, ["4 text:'18446744073709551615'", "104 text:'18446744073709551615'"]);
    let wide = ["1 text:'18446744073709551614'", "2 text:'5'", "3 text:'18446744073709551613'"].map(String::from);
    e.wait_rows(dst, "the TEXT column keeping u64 values", ["", "", WIDE_ROWS], &wide).await;
    read.close().await.unwrap();
    let status = e.statuses().await.expect("status");
    assert_eq!(status[0]["dead_letters_total"], 0, "{status:?}");
    // `verify` reads the source through the snapshot path: rows that came through the
    // binlog compare equal to it, edge values (u64 maximum included) too.
    let config = e.dir.path().join("verify.toml");
    std::fs::write(&config, e.config_text()).unwrap();
    let (ok, text) = cli(&["verify", "--config"], &config);
    assert!(ok, "{text}");
    assert!(text.contains("-> public.ty: 9 rows match"), "{text}");
    assert!(text.contains("-> public.wide: 3 rows match"), "{text}");
    daemon.stop().await;
}

// ------------------------------------------------------------------ one transaction, many ops

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_to_postgres_every_op_in_one_transaction_coalesces_correctly() {
    let pg = Dst::pg("mycoalesce").await;
    let e = E2e::new(
        "mycoalesce",
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20), n INT); \
         INSERT INTO t VALUES (5, 'five', 5), (6, 'six', 6), (7, 'seven', 7);",
        &["t"],
        vec![pg],
    )
    .await;
    let daemon = e.start();
    e.wait_all_streaming().await;
    let q = [
        "SELECT id::text || '|' || coalesce(v, 'null') || '|' || coalesce(n::text, 'null') FROM t ORDER BY id",
        "",
        "",
    ];
    let dst = &e.dsts[0];
    e.wait_rows(dst, "the snapshot", q, &strings(&["5|five|5", "6|six|6", "7|seven|7"])).await;

    let mut conn = e.conn().await;
    sql(
        &mut conn,
        "BEGIN;
         INSERT INTO t VALUES (1, 'a', 1);
         UPDATE t SET v = 'b' WHERE id = 1;
         UPDATE t SET n = 2 WHERE id = 1;
         UPDATE t SET v = 'c', n = NULL WHERE id = 1;
         DELETE FROM t WHERE id = 1;
         INSERT INTO t VALUES (1, 'final', 42);
         INSERT INTO t VALUES (2, 'gone', 0);
         UPDATE t SET v = 'gone2' WHERE id = 2;
         DELETE FROM t WHERE id = 2;
         DELETE FROM t WHERE id = 5;
         INSERT INTO t VALUES (5, 'five again', NULL);
         UPDATE t SET n = 55 WHERE id = 5;
         UPDATE t SET id = 60 WHERE id = 6;
         UPDATE t SET v = 'sixty' WHERE id = 60;
         INSERT INTO t VALUES (6, 'new six', 6);
         UPDATE t SET id = 8 WHERE id = 7;
         UPDATE t SET id = 7, v = 'seven back' WHERE id = 8;
         COMMIT",
    )
    .await;
    let expected = strings(&["1|final|42", "5|five again|55", "6|new six|6", "7|seven back|7", "60|sixty|6"]);
    let source: Vec<String> = conn
        .query("SELECT concat_ws('|', id, coalesce(v, 'null'), coalesce(n, 'null')) FROM t ORDER BY id")
        .await
        .unwrap();
    assert_eq!(source, expected, "the source itself");
    e.wait_rows(dst, "the transaction's result", q, &expected).await;
    let status = e.statuses().await.expect("status");
    assert_eq!(status[0]["dead_letters_total"], 0, "{status:?}");
    assert_eq!(status[0]["state"], "streaming", "{status:?}");
    daemon.stop().await;
}

// ------------------------------------------------------------------ verify and dlq replay

/// Runs the CLI with `args` and the config file; (success, stdout + stderr).
fn cli(args: &[&str], config: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidewater")).args(args).arg(config).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs `statements` on the target (each engine's own SQL).
async fn on_target(dst: &Dst, pg_sql: &str, my_sql: &str, lite_sql: &str) {
    match dst {
        Dst::Pg(pg, db) => {
            let c = pg.connect_as(db, REPLICATOR_USER, REPLICATOR_PASSWORD).await;
            c.batch_execute(pg_sql).await.unwrap_or_else(|e| panic!("{pg_sql}: {e}"));
        }
        Dst::My(my, db) => sql(&mut my.connect(db).await, my_sql).await,
        Dst::Lite(path) => {
            let mut c =
                sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.unwrap();
            sqlx::raw_sql(lite_sql).execute(&mut c).await.unwrap_or_else(|e| panic!("{lite_sql}: {e}"));
            c.close().await.unwrap();
        }
    }
}

/// MariaDB → Postgres, MariaDB and SQLite: `verify` finds rows missing, extra and
/// different on each target (naming their keys) and passes once they are repaired; a
/// poison row (target-only constraint) is dead-lettered, `dlq replay` fails while the
/// constraint is there (the dead letter stays, with the new error) and, after the fix,
/// writes the source's current row and marks the dead letter replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_dlq_replay_work_for_every_target() {
    let pg = Dst::pg("mytools").await;
    let my = Dst::my("mytools").await;
    let mut e = E2e::new(
        "mytools",
        "CREATE TABLE t (id INT PRIMARY KEY, qty INT, name VARCHAR(20), price DECIMAL(10,2), at DATETIME(6)); \
         INSERT INTO t SELECT seq, seq * 2, concat('n', seq), seq / 4, '2024-02-29 12:00:00.5' FROM seq_1_to_300;",
        &["t"],
        vec![pg, my],
    )
    .await;
    let lite = e.sqlite_path("tools.db");
    e.dsts.push(Dst::Lite(lite));
    // Target tables made by hand, each with a rule the source does not have.
    on_target(
        &e.dsts[0],
        "CREATE TABLE t (id int PRIMARY KEY, qty int CHECK (qty < 10000), name varchar(20), price numeric(10,2), \
         at timestamp(6))",
        "",
        "",
    )
    .await;
    on_target(
        &e.dsts[1],
        "",
        "CREATE TABLE t (id INT PRIMARY KEY, qty INT, name VARCHAR(20), price DECIMAL(10,2), at DATETIME(6), \
         CONSTRAINT small CHECK (qty < 10000))",
        "",
    )
    .await;
    on_target(
        &e.dsts[2],
        "",
        "",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, qty INTEGER, name TEXT, price TEXT, at TEXT); \
         CREATE TRIGGER small BEFORE INSERT ON t WHEN NEW.qty >= 10000 BEGIN SELECT RAISE(ABORT, 'qty too large'); END;",
    )
    .await;
    let config = e.dir.path().join("tidewater.toml");
    std::fs::write(&config, e.config_text()).unwrap();
    let daemon = e.start();
    e.wait_all_streaming().await;
    let count = ["SELECT count(*)::text FROM t", "SELECT count(*) FROM t", "SELECT CAST(count(*) AS TEXT) FROM t"];
    for dst in &e.dsts {
        e.wait_rows(dst, "the snapshot", count, &strings(&["300"])).await;
    }
    let (ok, text) = cli(&["verify", "--config"], &config);
    assert!(ok, "verify right after the snapshot: {text}");
    assert_eq!(text.matches("300 rows match").count(), 3, "{text}");

    // Poison: qty 50000 breaks every target's rule; then the row changes again at the source.
    let mut conn = e.conn().await;
    sql(&mut conn, "INSERT INTO t VALUES (1000, 50000, 'poison', 1.5, NULL)").await;
    sql(&mut conn, "UPDATE t SET name = 'poison 2' WHERE id = 1000").await;
    sql(&mut conn, "INSERT INTO t VALUES (1001, 1, 'after', 0, NULL)").await;
    for dst in &e.dsts {
        e.wait_rows(dst, "rows after the poison", count, &strings(&["301"])).await;
    }
    // Tamper with each target: a row gone, a value changed (case only: collations must not
    // hide it), an extra row.
    for dst in &e.dsts {
        on_target(
            dst,
            "DELETE FROM t WHERE id = 7; UPDATE t SET name = 'N8' WHERE id = 8; INSERT INTO t (id, qty) VALUES (5000, 1)",
            "DELETE FROM t WHERE id = 7; UPDATE t SET name = 'N8' WHERE id = 8; INSERT INTO t (id, qty) VALUES (5000, 1)",
            "DELETE FROM t WHERE id = 7; UPDATE t SET name = 'N8' WHERE id = 8; INSERT INTO t (id, qty) VALUES (5000, 1)",
        )
        .await;
    }
    let (ok, text) = cli(&["verify", "--config"], &config);
    assert!(!ok, "verify must fail on differences: {text}");
    assert_eq!(text.matches("[DIFF]").count(), 3, "{text}");
    assert_eq!(text.matches("key (7): missing in the target").count(), 3, "{text}");
    assert_eq!(text.matches("key (1000): missing in the target").count(), 3, "{text}");
    assert_eq!(text.matches("key (8): values differ").count(), 3, "{text}");
    assert_eq!(text.matches("key (5000): only in the target").count(), 3, "{text}");

    // Replay before the fix fails and keeps the dead letters.
    let (ok, text) = cli(&["dlq", "replay", "--config"], &config);
    assert!(!ok, "{text}");
    // One or two dead letters per target: the insert and the update of the poison row may
    // have been coalesced into one upsert.
    let dead = text.matches("[FAIL]").count();
    assert!((3..=6).contains(&dead) && !text.contains("[ok]"), "{text}");
    let (_, list) = cli(&["dlq", "list", "--config"], &config);
    assert_eq!(list.matches("replay failed").count(), dead, "{list}");

    // Fix the targets, replay: the source's current row lands.
    on_target(&e.dsts[0], "ALTER TABLE t DROP CONSTRAINT t_qty_check", "", "").await;
    on_target(&e.dsts[1], "", "ALTER TABLE t DROP CONSTRAINT small", "").await;
    on_target(&e.dsts[2], "", "", "DROP TRIGGER small").await;
    let (ok, text) = cli(&["dlq", "replay", "--config"], &config);
    assert!(ok, "{text}");
    assert_eq!(text.matches("[ok]").count(), dead, "{text}");
    let poison = [
        "SELECT qty::text || '|' || name FROM t WHERE id = 1000",
        "SELECT concat_ws('|', qty, name) FROM t WHERE id = 1000",
        "SELECT qty || '|' || name FROM t WHERE id = 1000",
    ];
    for dst in &e.dsts {
        assert_eq!(dst.texts(poison[0], poison[1], poison[2]).await, strings(&["50000|poison 2"]), "{}", dst.kind());
    }
    let (_, list) = cli(&["dlq", "list", "--config"], &config);
    assert_eq!(list.matches(", replayed ").count(), dead, "{list}");
    let (ok, text) = cli(&["dlq", "replay", "--config"], &config);
    assert!(ok && text.matches("0 dead letters to replay").count() == 3, "nothing left to replay: {text}");

    // Repair the tampering (the source rewrites 7 and 8, the extra row goes) and verify.
    sql(&mut conn, "UPDATE t SET qty = qty + 1 WHERE id IN (7, 8)").await;
    sql(&mut conn, "INSERT INTO t VALUES (1002, 2, 'marker', 0, NULL)").await;
    for dst in &e.dsts {
        on_target(
            dst,
            "DELETE FROM t WHERE id = 5000",
            "DELETE FROM t WHERE id = 5000",
            "DELETE FROM t WHERE id = 5000",
        )
        .await;
        e.wait_rows(dst, "rows after the repair", count, &strings(&["303"])).await;
    }
    let (ok, text) = cli(&["verify", "--config"], &config);
    assert!(ok, "verify after the repair: {text}");
    assert_eq!(text.matches("303 rows match").count(), 3, "{text}");
    daemon.stop().await;
}

// ------------------------------------------------------------------ keyless tables

/// `a|b` of keyless `k` on each engine, sorted (duplicates kept).
const K_ROWS: [&str; 3] = [
    "SELECT coalesce(a::text, 'null') || '|' || coalesce(b, 'null') FROM k ORDER BY 1",
    "SELECT concat_ws('|', coalesce(a, 'null'), coalesce(b, 'null')) FROM k ORDER BY 1",
    "SELECT coalesce(a, 'null') || '|' || coalesce(b, 'null') FROM k ORDER BY 1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_keyless_table_keeps_duplicates_on_every_target() {
    let pg = Dst::pg("mykeyless").await;
    let my = Dst::my("mykeyless").await;
    let mut e = E2e::new(
        "mykeyless",
        "CREATE TABLE k (a INT, b VARCHAR(10)); \
         INSERT INTO k VALUES (1, 'x'), (1, 'x'), (1, 'x'), (2, 'y'), (NULL, NULL);",
        &["k"],
        vec![pg, my],
    )
    .await;
    e.dsts.push(Dst::Lite(e.sqlite_path("keyless.db")));
    let daemon = e.start();
    e.wait_all_streaming().await;
    let k0 = strings(&["1|x", "1|x", "1|x", "2|y", "null|null"]);
    for dst in &e.dsts {
        e.wait_rows(dst, "the snapshot of k", K_ROWS, &k0).await;
    }
    let mut conn = e.conn().await;
    sql(
        &mut conn,
        "INSERT INTO k VALUES (1, 'x'); UPDATE k SET b = 'z' WHERE a = 1 LIMIT 1; DELETE FROM k WHERE a = 1 AND b = 'x' LIMIT 1; \
         DELETE FROM k WHERE a IS NULL; INSERT INTO k VALUES (3, 'w'), (3, 'w'); UPDATE k SET a = 4 WHERE a = 2",
    )
    .await;
    let k1 = strings(&["1|x", "1|x", "1|z", "3|w", "3|w", "4|y"]);
    for dst in &e.dsts {
        e.wait_rows(dst, "k after the changes", K_ROWS, &k1).await;
    }
    for s in e.statuses().await.expect("status") {
        assert_eq!(s["dead_letters_total"], 0, "{s}");
    }
    daemon.stop().await;
    // `verify` compares keyless tables as multisets: equal, then one duplicate short.
    let config = e.dir.path().join("tidewater.toml");
    std::fs::write(&config, e.config_text()).unwrap();
    let (ok, text) = cli(&["verify", "--config"], &config);
    assert!(ok, "verify of keyless tables: {text}");
    assert_eq!(text.matches("6 rows match").count(), 3, "{text}");
    for dst in &e.dsts {
        on_target(
            dst,
            "DELETE FROM k WHERE ctid = (SELECT ctid FROM k WHERE a = 3 LIMIT 1)",
            "DELETE FROM k WHERE a = 3 LIMIT 1",
            "DELETE FROM k WHERE rowid = (SELECT rowid FROM k WHERE a = 3 LIMIT 1)",
        )
        .await;
    }
    let (ok, text) = cli(&["verify", "--config"], &config);
    assert!(!ok, "one of two equal rows missing: {text}");
    assert_eq!(text.matches("[DIFF]").count(), 3, "{text}");
    assert_eq!(text.matches("1 missing in the target").count(), 3, "{text}");
}

// ------------------------------------------------------------------ resync

/// A MariaDB source table resynced into Postgres and MariaDB targets while it is written:
/// hand edits in the targets are repaired, no write is lost; a text key in a
/// case-insensitive collation (ordered otherwise than its bytes) resyncs too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_tables_resync_under_writes_into_postgres_and_mariadb() {
    const TK_ROWS: [&str; 3] = [
        "SELECT k || '|' || v::text FROM tk ORDER BY k COLLATE \"C\"",
        "SELECT concat_ws('|', k, v) FROM tk ORDER BY BINARY k",
        "",
    ];
    let setup = "CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(40), qty INT);
        INSERT INTO t SELECT seq * 2, concat('row ', seq), seq FROM seq_1_to_25000;
        CREATE TABLE tk (k VARCHAR(20) COLLATE utf8mb4_general_ci PRIMARY KEY, v INT);
        INSERT INTO tk SELECT concat(IF(seq % 2 = 0, 'k', 'K'), seq), seq FROM seq_1_to_24000;";
    let e = E2e::new("rsmaria", setup, &["t", "tk"], vec![Dst::pg("rsmaria").await, Dst::my("rsmaria").await]).await;
    let daemon = e.start();
    e.wait_all_streaming().await;
    let source_rows = |queries: [&'static str; 3]| {
        let source = e.source;
        let db = e.db.clone();
        async move {
            let mut c = source.connect(&db).await;
            let rows: Vec<String> = c.query(queries[1]).await.unwrap();
            let _ = c.disconnect().await;
            rows
        }
    };
    for dst in &e.dsts {
        e.wait_rows(dst, "snapshot of t", T_ROWS, &source_rows(T_ROWS).await).await;
    }
    // Hand edits in both targets.
    let edits = "DELETE FROM t WHERE id % 1000 = 0;
        INSERT INTO t VALUES (1, 'stray', 0), (20001, 'stray', 0), (-5, 'before', 0), (90000, 'after', 0);
        UPDATE t SET name = 'changed' WHERE id % 777 = 0;
        DELETE FROM tk WHERE k IN ('k2', 'K9001', 'k16000');
        INSERT INTO tk VALUES ('a', 0), ('k0', 0), ('K99999', 0);
        UPDATE tk SET v = 99 WHERE k IN ('K5', 'k20000');";
    for dst in &e.dsts {
        match dst {
            Dst::Pg(pg, db) => {
                let c = pg.connect_as(db, REPLICATOR_USER, REPLICATOR_PASSWORD).await;
                c.batch_execute(edits).await.expect("edit the Postgres target");
            }
            Dst::My(my, db) => sql(&mut my.connect(db).await, edits).await,
            Dst::Lite(_) => unreachable!(),
        }
    }
    // Writes to the resynced table all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (source, db, stop) = (e.source, e.db.clone(), stop.clone());
        tokio::spawn(async move {
            let mut c = source.connect(&db).await;
            let mut i = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let a = (i * 131) % 50000;
                let statements = format!(
                    "START TRANSACTION;
                     INSERT INTO t VALUES ({new}, 'new {i}', {i}) ON DUPLICATE KEY UPDATE name = 'again {i}';
                     UPDATE t SET name = 'updated {i}', qty = qty + 1 WHERE id = {upd};
                     DELETE FROM t WHERE id = {del};
                     UPDATE t SET id = {moved} WHERE id = {from};
                     COMMIT;",
                    new = 2 * a + 1,
                    upd = 2 * ((a + 7) % 25000 + 1),
                    del = 2 * ((a + 13) % 25000 + 1),
                    moved = 1_000_000 + i,
                    from = 2 * ((a + 29) % 25000 + 1),
                );
                c.query_drop(statements).await.expect("source write");
            }
            i
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (n, dst) in e.dsts.iter().enumerate() {
        let url = format!("http://127.0.0.1:{}/pipelines/p{n}_{}/resync", e.status_port, dst.kind());
        for table in ["t", "tk"] {
            let body = format!(r#"{{"table": "{}.{table}"}}"#, e.db);
            let (code, _, text) = tidewater::http_request("POST", &url, None, Some(&body)).await.unwrap();
            assert_eq!(code, 202, "resync of {table} into {}: {text}", dst.kind());
        }
    }
    wait_for("every resync done", Duration::from_secs(90), || async {
        let all = e.statuses().await?;
        let done = all.iter().all(|p| {
            p["tables"].as_array().is_some_and(|ts| {
                ts.iter().all(|t| t["state"] == "streaming" && t["rows_copied"].as_u64().is_some_and(|n| n >= 24000))
            })
        });
        done.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert!(written > 50, "the table was written during the resync ({written} transactions)");
    let (t_rows, tk_rows) = (source_rows(T_ROWS).await, source_rows(TK_ROWS).await);
    for dst in &e.dsts {
        e.wait_rows(dst, "t after its resync", T_ROWS, &t_rows).await;
        e.wait_rows(dst, "tk after its resync", TK_ROWS, &tk_rows).await;
    }
    daemon.stop().await;
}
