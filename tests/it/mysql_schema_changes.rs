//! Schema changes on a MariaDB source followed in Postgres and MariaDB targets: drop
//! column, rename column, type change (widening and narrowing), default change, TRUNCATE,
//! also when the changes happen while the daemon is stopped (the binlog then replays rows
//! whose table maps name columns the catalog no longer has). The pipeline never stays
//! `retrying`.

use mysql_async::prelude::Queryable;

use crate::it::mysql_source::{MyPipeline, Target};
use crate::support::daemon::InProcess;

const SETUP: &str = "CREATE TABLE t (id INT PRIMARY KEY, a VARCHAR(20) NOT NULL, b INT, c VARCHAR(20)); \
                     INSERT INTO t SELECT seq, concat('a', seq), seq, concat('c', seq) FROM seq_1_to_50;";

async fn pipeline(prefix: &str, pg_target: bool) -> (MyPipeline, String) {
    let p = MyPipeline::new(prefix, SETUP, pg_target).await;
    let config = format!("{}\"{}.t\" = \"public.t\"\n", p.config_text(), p.source_db);
    (p, config)
}

async fn run(p: &MyPipeline, statements: &str) {
    p.source_conn().await.query_drop(statements).await.unwrap_or_else(|e| panic!("{statements}: {e}"));
}

/// The target table's column names and types, in order.
async fn target_columns(p: &MyPipeline) -> Vec<(String, String)> {
    match &p.target {
        Target::Pg(pg, db) => {
            let c = pg.connect_as(db, crate::support::REPLICATOR_USER, crate::support::REPLICATOR_PASSWORD).await;
            crate::it::schema_changes::pg_table_columns(&c, "public.t").await
        }
        Target::My(my, db) => my
            .connect(db)
            .await
            .exec(
                "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? \
                 AND TABLE_NAME = 't' ORDER BY ORDINAL_POSITION",
                (db.as_str(),),
            )
            .await
            .unwrap(),
    }
}

fn names(columns: &[(String, String)]) -> Vec<&str> {
    columns.iter().map(|(n, _)| n.as_str()).collect()
}

async fn streaming_without_error(p: &MyPipeline) {
    let status = p.wait_state("streaming").await;
    assert!(status["last_error"].is_null(), "never retried or failed: {status}");
    assert_eq!(status["retries_total"], 0, "{status}");
}

/// Runs `change` on the source, waits until the target's `t` equals it by `expr`.
async fn follow(p: &MyPipeline, change: &str, expr: &str) -> Vec<String> {
    run(p, change).await;
    let rows = p.wait_converged("t", expr).await;
    streaming_without_error(p).await;
    rows
}

async fn every_change_is_followed(prefix: &str, pg_target: bool) {
    let (p, config) = pipeline(prefix, pg_target).await;
    let daemon = InProcess::start(&config);
    p.wait_state("streaming").await;
    assert_eq!(p.wait_converged("t", "concat_ws('|', id, a, b, c)").await.len(), 50);

    let rows =
        follow(&p, "ALTER TABLE t DROP COLUMN c; INSERT INTO t VALUES (51, 'a51', 51)", "concat_ws('|', id, a, b)")
            .await;
    assert_eq!(rows.len(), 51);
    assert_eq!(names(&target_columns(&p).await), ["id", "a", "b"], "dropped in the target");

    let rows = follow(
        &p,
        "ALTER TABLE t RENAME COLUMN a TO a2; UPDATE t SET b = b + 1000 WHERE id = 1",
        "concat_ws('|', id, a2, b)",
    )
    .await;
    assert!(rows.contains(&"1|a1|1001".to_string()), "renamed, values kept: {:?}", &rows[..3]);
    assert_eq!(names(&target_columns(&p).await), ["id", "a2", "b"]);

    // Widening: a value only the new type holds.
    let rows = follow(
        &p,
        "ALTER TABLE t MODIFY b BIGINT; INSERT INTO t VALUES (52, 'big', 9000000000)",
        "concat_ws('|', id, a2, b)",
    )
    .await;
    assert!(rows.contains(&"52|big|9000000000".to_string()));
    let b_type = target_columns(&p).await[2].1.clone();
    assert!(b_type.starts_with("bigint"), "widened: {b_type}");

    // Narrowing that every row fits, then a default change.
    let rows = follow(
        &p,
        "ALTER TABLE t MODIFY a2 VARCHAR(10) NOT NULL; ALTER TABLE t ALTER b SET DEFAULT 7; \
         INSERT INTO t (id, a2) VALUES (53, 'dflt')",
        "concat_ws('|', id, a2, b)",
    )
    .await;
    assert!(rows.contains(&"53|dflt|7".to_string()));

    let rows = follow(&p, "TRUNCATE TABLE t; INSERT INTO t VALUES (1, 'again', 1)", "concat_ws('|', id, a2, b)").await;
    assert_eq!(rows, ["1|again|1"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_drop_rename_type_default_and_truncate_are_followed_in_postgres() {
    every_change_is_followed("mysc2pg", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_drop_rename_type_default_and_truncate_are_followed_in_mariadb() {
    every_change_is_followed("mysc2my", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_changes_made_while_the_daemon_is_stopped_are_followed_at_restart() {
    let (p, config) = pipeline("myscstop", true).await;
    let daemon = InProcess::start(&config);
    p.wait_state("streaming").await;
    p.wait_converged("t", "concat_ws('|', id, a, b, c)").await;
    daemon.stop().await;
    // Rows logged under every shape the table has while the daemon is down.
    for statement in [
        "INSERT INTO t VALUES (60, 'before', 60, 'c60')",
        "ALTER TABLE t DROP COLUMN c",
        "INSERT INTO t VALUES (61, 'dropped', 61)",
        "ALTER TABLE t RENAME COLUMN a TO a2",
        "UPDATE t SET a2 = 'renamed' WHERE id = 2",
        "ALTER TABLE t ADD COLUMN d INT DEFAULT 5",
        "INSERT INTO t VALUES (62, 'added', 62, 6)",
    ] {
        run(&p, statement).await;
    }
    let daemon = InProcess::start(&config);
    let rows = p.wait_converged("t", "concat_ws('|', id, a2, b, d)").await;
    assert!(rows.contains(&"2|renamed|2|5".to_string()) && rows.contains(&"62|added|62|6".to_string()), "{rows:?}");
    assert!(rows.contains(&"60|before|60|5".to_string()), "{rows:?}");
    assert_eq!(rows.len(), 53);
    streaming_without_error(&p).await;
    assert_eq!(names(&target_columns(&p).await), ["id", "a2", "b", "d"]);
    daemon.stop().await;
}
