//! Schema changes on a Postgres source followed in every target kind: drop column, rename
//! column, type change (widening and narrowing), default change, TRUNCATE, also when the
//! changes happen while the daemon is stopped (the stream then replays changes logged
//! under column names the catalog no longer has). The pipeline never stays `retrying`.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use tidewater_sqlite::sqlx::{self, Connection, Row};

use crate::support::mysql::{fresh_mysql_db, mysql_target, MYSQL_PASSWORD};
use crate::support::{wait_for, TestPipeline};

const WAIT: Duration = Duration::from_secs(40);

const SETUP: &str = "CREATE TABLE t (id int PRIMARY KEY, a text NOT NULL, b int, c varchar(20)); \
                     INSERT INTO t SELECT g, 'a' || g, g, 'c' || g FROM generate_series(1, 50) g;";

/// The target table's column names and types (Postgres target), in order.
async fn pg_columns(p: &TestPipeline) -> Vec<(String, String)> {
    pg_table_columns(&p.target_client().await, "public.t").await
}

/// The column names and types of `table` (a Postgres table), in order.
pub(crate) async fn pg_table_columns(client: &tokio_postgres::Client, table: &str) -> Vec<(String, String)> {
    client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn streaming_without_error(p: &TestPipeline) {
    let status = p.wait_state("streaming", WAIT).await;
    assert!(status["last_error"].is_null(), "never retried or failed: {status}");
    assert_eq!(status["retries_total"], 0, "{status}");
}

/// Runs `change` (DDL and DML) on the source and waits until the Postgres target equals it.
async fn follow(p: &TestPipeline, change: &str) -> Vec<String> {
    p.source_client().await.batch_execute(change).await.unwrap_or_else(|e| panic!("{change}: {e}"));
    let rows = p.wait_converged("t", "t", WAIT).await;
    streaming_without_error(p).await;
    rows
}

/// Runs each statement as a transaction of its own.
async fn run_each(p: &TestPipeline, statements: &[&str]) {
    let client = p.source_client().await;
    for statement in statements {
        client.batch_execute(statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

fn names(columns: &[(String, String)]) -> Vec<&str> {
    columns.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_column_is_dropped_in_the_target_and_rows_keep_arriving() {
    let p = TestPipeline::new("sc_drop", SETUP, &["public.t"]).await;
    let daemon = p.start();
    p.wait_converged("t", "t", WAIT).await;
    // `a` is NOT NULL in the target: had it stayed, every new row would be rejected.
    let rows =
        follow(&p, "ALTER TABLE t DROP COLUMN a; INSERT INTO t VALUES (51, 51, 'x'); UPDATE t SET b = 0 WHERE id = 1")
            .await;
    assert_eq!(rows.len(), 51);
    assert_eq!(names(&pg_columns(&p).await), vec!["id", "b", "c"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_column_is_renamed_in_the_target_keeping_its_values() {
    let p = TestPipeline::new("sc_rename", SETUP, &["public.t"]).await;
    let daemon = p.start();
    p.wait_converged("t", "t", WAIT).await;
    let rows = follow(&p, "ALTER TABLE t RENAME COLUMN b TO bee; INSERT INTO t VALUES (51, 'a51', 51, 'c51'); UPDATE t SET bee = -2 WHERE id = 2").await;
    assert_eq!(rows.len(), 51);
    assert_eq!(names(&pg_columns(&p).await), vec!["id", "a", "bee", "c"]);
    let dst = p.target_client().await;
    let old: i32 = dst.query_one("SELECT bee FROM t WHERE id = 3", &[]).await.unwrap().get(0);
    assert_eq!(old, 3, "rows copied before the rename keep their value under the new name");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_changes_widening_and_narrowing_are_followed() {
    let p = TestPipeline::new("sc_type", SETUP, &["public.t"]).await;
    let daemon = p.start();
    p.wait_converged("t", "t", WAIT).await;
    follow(&p, "ALTER TABLE t ALTER COLUMN b TYPE bigint; INSERT INTO t VALUES (51, 'a51', 5000000000, 'c51')").await;
    follow(
        &p,
        "ALTER TABLE t ALTER COLUMN c TYPE varchar(5) USING left(c, 5); INSERT INTO t VALUES (52, 'a52', 1, 'short')",
    )
    .await;
    let columns = pg_columns(&p).await;
    assert!(columns.contains(&("b".into(), "bigint".into())), "{columns:?}");
    assert!(columns.contains(&("c".into(), "character varying(5)".into())), "{columns:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_change_and_truncate_are_followed() {
    let p = TestPipeline::new("sc_default", SETUP, &["public.t"]).await;
    let daemon = p.start();
    p.wait_converged("t", "t", WAIT).await;
    let rows = follow(&p, "ALTER TABLE t ALTER COLUMN b SET DEFAULT 7; INSERT INTO t (id, a) VALUES (51, 'x')").await;
    assert!(rows.iter().any(|r| r.starts_with("(51,x,7,")), "{rows:?}");
    let rows = follow(&p, "TRUNCATE t; INSERT INTO t (id, a) VALUES (1, 'after')").await;
    assert_eq!(rows, vec!["(1,after,7,)".to_string()]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_the_daemon_is_stopped_are_followed_at_restart() {
    let p = TestPipeline::new("sc_stopped", SETUP, &["public.t"]).await;
    let daemon = p.start();
    p.wait_converged("t", "t", WAIT).await;
    daemon.stop().await;
    // The stream replays these under the names they were logged with; the catalog at
    // restart already shows the end state.
    p.source_client()
        .await
        .batch_execute(
            "INSERT INTO t VALUES (51, 'a51', 51, 'c51'); ALTER TABLE t RENAME COLUMN b TO bee; \
             INSERT INTO t VALUES (52, 'a52', 52, 'c52'); ALTER TABLE t DROP COLUMN a; \
             INSERT INTO t VALUES (53, 53, 'c53'); ALTER TABLE t ALTER COLUMN bee TYPE bigint; \
             UPDATE t SET bee = 6000000000 WHERE id = 1",
        )
        .await
        .unwrap();
    let daemon = p.start();
    let rows = p.wait_converged("t", "t", WAIT).await;
    assert_eq!(rows.len(), 53);
    streaming_without_error(&p).await;
    let columns = pg_columns(&p).await;
    assert_eq!(
        columns.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect::<Vec<_>>(),
        vec![("id", "integer"), ("bee", "bigint"), ("c", "character varying(20)")]
    );
    daemon.stop().await;
}

/// The same changes into a MariaDB and a SQLite target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_rename_and_widening_are_followed_in_mariadb_and_sqlite() {
    let src_setup = "CREATE TABLE t (id int PRIMARY KEY, a text NOT NULL, b int, c text); \
                     INSERT INTO t SELECT g, 'a' || g, g, 'c' || g FROM generate_series(1, 20) g;";
    // Each change in its own transaction followed by a row change (Postgres reports a
    // table's new shape with its next change; several column changes at once are seen as
    // drops and adds; MySQL cannot run DDL inside the transaction that holds the rows).
    let change = [
        "ALTER TABLE t DROP COLUMN a",
        "UPDATE t SET c = 'c2' WHERE id = 2",
        "ALTER TABLE t RENAME COLUMN b TO bee",
        "UPDATE t SET c = 'c3' WHERE id = 3",
        "ALTER TABLE t ALTER COLUMN bee TYPE bigint",
        "INSERT INTO t VALUES (21, 5000000000, 'c21')",
        "UPDATE t SET bee = -1 WHERE id = 1",
    ];

    // MariaDB.
    let my = mysql_target().await;
    let db = fresh_mysql_db(my, "sc").await;
    let mut p = TestPipeline::new("sc_maria", src_setup, &["public.t"]).await;
    std::fs::write(p.dir.path().join("mypw"), MYSQL_PASSWORD).unwrap();
    p.target_override = Some(format!(
        "[targets.dst]\ntype = \"mysql\"\nurl = \"{}\"\npassword_file = \"{}\"",
        my.url(&db),
        p.dir.path().join("mypw").display()
    ));
    let daemon = p.start();
    p.wait_state("streaming", WAIT).await;
    wait_for("snapshot in MariaDB", WAIT, || async {
        let n: Option<i64> = my.connect(&db).await.query_first("SELECT count(*) FROM t").await.ok().flatten();
        (n == Some(20)).then_some(())
    })
    .await;
    run_each(&p, &change).await;
    let rows: Vec<(i64, i64, String)> = wait_for("changes in MariaDB", WAIT, || async {
        let rows: Vec<(i64, i64, String)> =
            my.connect(&db).await.query("SELECT id, bee, c FROM t ORDER BY id").await.ok()?;
        (rows.len() == 21 && rows[0].1 == -1).then_some(rows)
    })
    .await;
    let mut conn = my.connect(&db).await;
    assert_eq!(rows[20], (21, 5_000_000_000, "c21".to_string()));
    let columns: Vec<String> = conn
        .query("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 't' ORDER BY ORDINAL_POSITION")
        .await
        .unwrap();
    assert_eq!(columns, vec!["id", "bee", "c"]);
    streaming_without_error(&p).await;
    daemon.stop().await;

    // SQLite.
    let mut p = TestPipeline::new("sc_lite", src_setup, &["public.t"]).await;
    let file = p.dir.path().join("edge.db");
    p.target_override = Some(format!("[targets.dst]\ntype = \"sqlite\"\npath = \"{}\"", file.display()));
    let daemon = p.start();
    p.wait_state("streaming", WAIT).await;
    let url = format!("sqlite://{}", file.display());
    let count = |sql: &'static str| {
        let url = url.clone();
        async move {
            let mut conn = sqlx::SqliteConnection::connect(&url).await.ok()?;
            let rows = sqlx::query(sql).fetch_all(&mut conn).await.ok()?;
            let _ = conn.close().await;
            Some(rows.iter().map(|r| r.get::<String, _>(0)).collect::<Vec<_>>())
        }
    };
    wait_for("snapshot in SQLite", WAIT, || async {
        count("SELECT CAST(count(*) AS TEXT) FROM t").await.filter(|n| n == &["20"])
    })
    .await;
    run_each(&p, &change).await;
    let rows = wait_for("changes in SQLite", WAIT, || async {
        count("SELECT id || ',' || bee || ',' || c FROM t ORDER BY id")
            .await
            .filter(|r| r.len() == 21 && r[0] == "1,-1,c1")
    })
    .await;
    assert_eq!(rows[20], "21,5000000000,c21");
    let columns = count("SELECT name FROM pragma_table_info('t') ORDER BY cid").await.unwrap();
    assert_eq!(columns, vec!["id", "bee", "c"]);
    streaming_without_error(&p).await;
    daemon.stop().await;
}
