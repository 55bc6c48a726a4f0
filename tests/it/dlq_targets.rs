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
    daemon.stop().await;

    // MariaDB: a timestamptz of infinity does not fit DATETIME.
    let target = mysql_target().await;
    let db = fresh_mysql_db(target, "dlq").await;
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
