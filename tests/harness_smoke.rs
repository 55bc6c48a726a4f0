//! Smoke tests for the integration-test harness itself.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{fresh_db, pg_source, pg_target, wait_for, ADMIN_PASSWORD, REPLICATOR_PASSWORD, REPLICATOR_USER};

#[tokio::test]
async fn servers_start_and_replicator_can_use_fresh_db() {
    let source = pg_source().await;
    let target = pg_target().await;
    assert_ne!(source.port, target.port);

    for server in [source, target] {
        let db = fresh_db(server, "smoke").await;
        let client = server.connect_as(&db, REPLICATOR_USER, REPLICATOR_PASSWORD).await;

        // The connection is TCP (SCRAM-authenticated, see pg_hba checks below).
        let row = client
            .query_one("SELECT current_user::text, inet_server_addr()::text", &[])
            .await
            .expect("query connection info");
        assert_eq!(row.get::<_, String>(0), REPLICATOR_USER);
        assert_eq!(row.get::<_, String>(1), "127.0.0.1/32");

        client
            .batch_execute(
                "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL); \
                 INSERT INTO items VALUES (1, 'one'), (2, 'two');",
            )
            .await
            .expect("create + insert as replicator");
        let rows = client.query("SELECT id, name FROM items ORDER BY id", &[]).await.expect("select");
        let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(got, vec![(1, "one".to_string()), (2, "two".to_string())]);

        // replicator owns the schema, so it can publish its tables.
        client
            .batch_execute("CREATE PUBLICATION smoke_pub FOR TABLE items")
            .await
            .expect("create publication as replicator");

        // wait_for helper.
        let n: i64 = wait_for("two rows", Duration::from_secs(5), || async {
            let n: i64 = client.query_one("SELECT count(*) FROM items", &[]).await.ok()?.get(0);
            (n == 2).then_some(n)
        })
        .await;
        assert_eq!(n, 2);
    }

    let admin = source.admin("postgres").await;
    let wal_level: String = admin.query_one("SHOW wal_level", &[]).await.expect("SHOW wal_level").get(0);
    assert_eq!(wal_level, "logical");

    // Every password is stored as a SCRAM verifier and TCP requires it.
    let rows = admin
        .query(
            "SELECT rolname FROM pg_authid \
              WHERE rolname IN ('postgres', 'replicator') \
                AND rolpassword LIKE 'SCRAM-SHA-256$%'",
            &[],
        )
        .await
        .expect("pg_authid");
    assert_eq!(rows.len(), 2);
    let hba: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_hba_file_rules \
              WHERE type = 'host' AND auth_method <> 'scram-sha-256'",
            &[],
        )
        .await
        .expect("pg_hba_file_rules")
        .get(0);
    assert_eq!(hba, 0, "all TCP rules must use scram-sha-256");

    // Crash + restart of the target (only this test uses the target server in
    // this binary, so restarting it is safe here).
    let db = fresh_db(target, "restart").await;
    let c = target.connect_as(&db, REPLICATOR_USER, REPLICATOR_PASSWORD).await;
    // The servers run with synchronous_commit=off: a crash (immediate stop) can
    // lose the last ~600 ms of commits unless the session asks for durability.
    c.batch_execute("SET synchronous_commit = on; CREATE TABLE t (v int); INSERT INTO t VALUES (42);")
        .await
        .expect("create t");
    target.stop_immediate();
    assert!(c.simple_query("SELECT 1").await.is_err(), "old connection must be dead after stop_immediate");
    target.start();
    target.stop_fast();
    target.start();
    let c = target.connect_as(&db, REPLICATOR_USER, REPLICATOR_PASSWORD).await;
    let v: i32 = c.query_one("SELECT v FROM t", &[]).await.expect("select after restart").get(0);
    assert_eq!(v, 42);
}

#[tokio::test]
async fn wrong_password_is_rejected() {
    let source = pg_source().await;
    let db = fresh_db(source, "badpw").await;

    let Err(err) = source.try_connect_as(&db, REPLICATOR_USER, "not-the-password").await else {
        panic!("connecting with a wrong password must fail");
    };
    let db_err = err.as_db_error().expect("server-side auth error");
    assert_eq!(db_err.code().code(), "28P01", "unexpected error: {db_err}");

    let Err(err) = source.try_connect_as(&db, "postgres", "wrong").await else {
        panic!("wrong superuser password must fail");
    };
    assert!(err.as_db_error().is_some(), "unexpected error: {err}");

    // And the right one works.
    let c = source.connect_as(&db, "postgres", ADMIN_PASSWORD).await;
    c.simple_query("SELECT 1").await.expect("select 1");
}

#[tokio::test]
async fn mariadb_servers_start_with_a_row_binlog() {
    use mysql_async::prelude::Queryable;
    let source = support::mysql::mysql_source().await;
    let db = support::mysql::fresh_mysql_db(source, "smoke").await;
    let mut conn = source.connect(&db).await;
    conn.query_drop("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10)); INSERT INTO t VALUES (1, 'x')").await.unwrap();
    let v: Option<String> = conn.query_first("SELECT v FROM t WHERE id = 1").await.unwrap();
    assert_eq!(v.as_deref(), Some("x"));
    let settings: Vec<(String, String)> = conn
        .query(
            "SELECT variable_name, variable_value FROM information_schema.global_variables WHERE variable_name IN \
             ('LOG_BIN', 'BINLOG_FORMAT', 'BINLOG_ROW_IMAGE', 'BINLOG_ROW_METADATA', 'CHARACTER_SET_SERVER') ORDER BY 1",
        )
        .await
        .unwrap();
    let expect = [
        ("BINLOG_FORMAT", "ROW"),
        ("BINLOG_ROW_IMAGE", "FULL"),
        ("BINLOG_ROW_METADATA", "FULL"),
        ("CHARACTER_SET_SERVER", "utf8mb4"),
        ("LOG_BIN", "ON"),
    ];
    let got: Vec<(&str, &str)> = settings.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(got, expect);
    conn.disconnect().await.unwrap();
    let target = support::mysql::mysql_target().await;
    assert_ne!(source.port, target.port);
}
