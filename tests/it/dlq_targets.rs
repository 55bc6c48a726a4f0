//! `tidewater dlq list` reads the dead-letter table of every target kind.

use std::process::Command;
use std::time::Duration;

use crate::support::mysql::{fresh_mysql_db, mysql_target, MYSQL_PASSWORD};
use crate::support::{wait_for, TestPipeline};

const WAIT: Duration = Duration::from_secs(30);

fn dlq_list(p: &TestPipeline) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .args(["dlq", "list", "--config"])
        .arg(p.config_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_shows_sqlite_and_mariadb_dead_letters() {
    // SQLite: NaN goes in as text, u64 beyond i64 cannot: use a CHECK on a pre-made table.
    let mut p = TestPipeline::new("dlqsqlite", "CREATE TABLE t (id int PRIMARY KEY, v int)", &["public.t"]).await;
    let file = p.dir.path().join("edge.db");
    p.target_override = Some(format!("[targets.dst]\ntype = \"sqlite\"\npath = \"{}\"", file.display()));
    {
        use tidewater_sqlite::sqlx::{Connection, Executor};
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let mut conn = tidewater_sqlite::sqlx::SqliteConnection::connect(&url).await.unwrap();
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER CHECK (v < 100))").await.unwrap();
        conn.close().await.unwrap();
    }
    let daemon = p.start();
    p.wait_state("streaming", WAIT).await;
    p.source_client().await.batch_execute("INSERT INTO t VALUES (1, 5), (2, 500)").await.unwrap();
    wait_for("dead letter recorded", WAIT, || async { p.status().await.filter(|s| s["dead_letters_total"] == 1) })
        .await;
    let text = dlq_list(&p);
    assert!(text.contains("1 dead letters") && text.contains("CHECK constraint failed"), "{text}");
    let status = p.status().await.unwrap();
    let error = status["tables"][0]["last_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("CHECK constraint failed"), "the rejected row's error shows on its table: {status}");
    assert_eq!(status["tables"][0]["state"], "streaming", "{status}");
    daemon.stop().await;

    // MariaDB: a timestamptz of infinity does not fit the DATETIME column a user created.
    let target = mysql_target().await;
    let db = fresh_mysql_db(target, "dlq").await;
    {
        use mysql_async::prelude::Queryable;
        let mut conn = target.connect(&db).await;
        conn.query_drop("CREATE TABLE e (id INT PRIMARY KEY, at DATETIME(6))").await.unwrap();
        let _ = conn.disconnect().await;
    }
    let mut p =
        TestPipeline::new("dlqmaria", "CREATE TABLE e (id int PRIMARY KEY, at timestamptz)", &["public.e"]).await;
    std::fs::write(p.dir.path().join("mypw"), MYSQL_PASSWORD).unwrap();
    p.target_override = Some(format!(
        "[targets.dst]\ntype = \"mysql\"\nurl = \"{}\"\npassword_file = \"{}\"",
        target.url(&db),
        p.dir.path().join("mypw").display()
    ));
    let daemon = p.start();
    p.wait_state("streaming", WAIT).await;
    p.source_client().await.batch_execute("INSERT INTO e VALUES (1, now()), (2, 'infinity')").await.unwrap();
    wait_for("dead letter recorded", WAIT, || async { p.status().await.filter(|s| s["dead_letters_total"] == 1) })
        .await;
    let text = dlq_list(&p);
    assert!(text.contains("1 dead letters") && text.contains("infinity"), "{text}");
    daemon.stop().await;
}

fn cli(args: &[&str], p: &TestPipeline) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidewater")).args(args).arg(p.config_path()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Postgres → MariaDB and Postgres → SQLite: `verify` passes on a faithful copy of many
/// types (each value compared as the target stores it), names a dead-lettered row as
/// missing, and passes again once `dlq replay` wrote it after the target was fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_replay_from_postgres_into_mariadb_and_sqlite() {
    const SETUP: &str = "CREATE TABLE k (id bigint PRIMARY KEY, qty int, name text, price numeric(12,3), \
         at timestamptz, day date, u uuid, doc jsonb, raw bytea, tags text[], f float8); \
         INSERT INTO k SELECT g, g, 'name ' || g, g / 7.0, '2024-02-29 12:00:00.25+03', '2024-01-01'::date + g, \
         md5(g::text)::uuid, jsonb_build_object('g', g, 'ü', 'x'), decode(md5(g::text), 'hex'), ARRAY['a', g::text], \
         g / 3.0 FROM generate_series(1, 500) g";
    let my = mysql_target().await;
    for kind in ["mariadb", "sqlite"] {
        let mut p = TestPipeline::new(&format!("vr{kind}"), SETUP, &["public.k"]).await;
        let file = p.dir.path().join("edge.db");
        let db = fresh_mysql_db(my, "vr").await;
        if kind == "mariadb" {
            p.target_mysql(my, &db);
        } else {
            p.target_sqlite(&file);
        }
        let daemon = p.start();
        p.wait_state("streaming", WAIT).await;
        wait_for("snapshot verified", WAIT, || async { cli(&["verify", "--config"], &p).0.then_some(()) }).await;
        let (_, text) = cli(&["verify", "--config"], &p);
        assert!(text.contains("500 rows match"), "{kind}: {text}");

        // A rule only the target has rejects qty = 100000.
        if kind == "mariadb" {
            use mysql_async::prelude::Queryable;
            my.connect(&db).await.query_drop("ALTER TABLE k ADD CONSTRAINT small CHECK (qty < 100000)").await.unwrap();
        } else {
            use tidewater_sqlite::sqlx::{Connection, Executor};
            let url = format!("sqlite://{}?mode=rw", file.display());
            let mut conn = tidewater_sqlite::sqlx::SqliteConnection::connect(&url).await.unwrap();
            conn.execute(
                "CREATE TRIGGER small BEFORE INSERT ON k WHEN NEW.qty >= 100000 BEGIN SELECT RAISE(ABORT, 'qty'); END",
            )
            .await
            .unwrap();
            conn.close().await.unwrap();
        }
        p.source_client()
            .await
            .batch_execute("INSERT INTO k (id, qty, name) VALUES (9001, 100000, 'poison')")
            .await
            .unwrap();
        wait_for("dead letter recorded", WAIT, || async { p.status().await.filter(|s| s["dead_letters_total"] == 1) })
            .await;
        let (ok, text) = cli(&["verify", "--config"], &p);
        assert!(!ok && text.contains("key (9001): missing in the target"), "{kind}: {text}");

        if kind == "mariadb" {
            use mysql_async::prelude::Queryable;
            my.connect(&db).await.query_drop("ALTER TABLE k DROP CONSTRAINT small").await.unwrap();
        } else {
            use tidewater_sqlite::sqlx::{Connection, Executor};
            let url = format!("sqlite://{}?mode=rw", file.display());
            let mut conn = tidewater_sqlite::sqlx::SqliteConnection::connect(&url).await.unwrap();
            conn.execute("DROP TRIGGER small").await.unwrap();
            conn.close().await.unwrap();
        }
        let (ok, text) = cli(&["dlq", "replay", "--config"], &p);
        assert!(ok && text.contains("[ok]"), "{kind}: {text}");
        let (ok, text) = cli(&["verify", "--config"], &p);
        assert!(ok && text.contains("501 rows match"), "{kind}: {text}");
        daemon.stop().await;
    }
}

/// A dead letter of a keyless table is not replayed: it cannot be matched to one source
/// row. It stays pending with the reason recorded, and the target keeps exactly the rows
/// it had (no guessed row is written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_of_a_keyless_table_refuses_and_keeps_the_dead_letter() {
    let mut p = TestPipeline::new(
        "dlqkeyless",
        "CREATE TABLE n (v int, note text); ALTER TABLE n REPLICA IDENTITY FULL; \
         INSERT INTO n VALUES (1, 'a'), (1, 'a'), (2, 'b')",
        &["public.n"],
    )
    .await;
    let file = p.dir.path().join("edge.db");
    p.target_override = Some(format!("[targets.dst]\ntype = \"sqlite\"\npath = \"{}\"", file.display()));
    {
        use tidewater_sqlite::sqlx::{Connection, Executor};
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let mut conn = tidewater_sqlite::sqlx::SqliteConnection::connect(&url).await.unwrap();
        conn.execute("CREATE TABLE n (v INTEGER CHECK (v < 100), note TEXT)").await.unwrap();
        conn.close().await.unwrap();
    }
    let daemon = p.start();
    p.wait_state("streaming", WAIT).await;
    p.source_client().await.batch_execute("INSERT INTO n VALUES (500, 'poison')").await.unwrap();
    wait_for("dead letter recorded", WAIT, || async { p.status().await.filter(|s| s["dead_letters_total"] == 1) })
        .await;
    daemon.stop().await;

    let (ok, text) = cli(&["dlq", "replay", "--config"], &p);
    assert!(!ok && text.contains("has no primary key"), "{text}");
    let text = dlq_list(&p);
    assert!(text.contains("1 dead letters") && text.contains("has no primary key"), "still pending: {text}");
    use tidewater_sqlite::sqlx::{Connection, Row};
    let url = format!("sqlite://{}?mode=ro", file.display());
    let mut conn = tidewater_sqlite::sqlx::SqliteConnection::connect(&url).await.unwrap();
    let rows: Vec<(i64, String)> = tidewater_sqlite::sqlx::query("SELECT v, note FROM n ORDER BY v")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, vec![(1, "a".to_string()), (1, "a".to_string()), (2, "b".to_string())]);
}
