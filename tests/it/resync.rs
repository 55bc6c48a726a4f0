//! `tidewater resync` / `POST /pipelines/NAME/resync`: one table copied again while the
//! pipeline streams every table; the target table equals the source afterwards, also
//! after hand edits in the target and under writes to the table being copied.

use std::process::Command;
use std::time::Duration;

use crate::support::daemon::InProcess;
use crate::support::{wait_for, TestPipeline};

const CONVERGE: Duration = Duration::from_secs(60);

/// Source tables: `t` (even ids only, 25,000 rows: three chunks), `tk` with a text key
/// whose collation (ICU) orders it otherwise than its bytes (three chunks too), `other`,
/// never resynced, and `nokey` without a key.
const SETUP: &str = "
    CREATE TABLE t (id bigint PRIMARY KEY, v text, n int);
    INSERT INTO t SELECT 2 * g, 'row ' || g, g FROM generate_series(1, 25000) g;
    CREATE TABLE tk (k text COLLATE \"und-x-icu\" PRIMARY KEY, v int);
    INSERT INTO tk VALUES ('a', 1), ('B', 2), ('c', 3), ('D', 4), ('é', 5), ('Z', 6), ('zz', 7);
    INSERT INTO tk SELECT CASE WHEN g % 2 = 0 THEN 'k' ELSE 'K' END || g, g FROM generate_series(1, 24000) g;
    CREATE TABLE other (id int PRIMARY KEY, v text);
    INSERT INTO other VALUES (1, 'one');
    CREATE TABLE nokey (v text);
    ALTER TABLE nokey REPLICA IDENTITY FULL;
";

async fn streaming(prefix: &str) -> (TestPipeline, InProcess) {
    let p = TestPipeline::new(prefix, SETUP, &["public.t", "public.tk", "public.other", "public.nokey"]).await;
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    p.wait_converged("t", "t", CONVERGE).await;
    (p, daemon)
}

/// `tidewater resync` as a user runs it: exit status and output.
fn resync_cli(p: &TestPipeline, table: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .args(["resync", "--config"])
        .arg(p.config_path())
        .args(["--pipeline", &p.name, "--table", table])
        .output()
        .expect("run tidewater resync");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The `/status` entry of source table `name`.
async fn table_status(p: &TestPipeline, name: &str) -> Option<serde_json::Value> {
    let pipeline = p.status().await?;
    pipeline["tables"].as_array()?.iter().find(|t| t["name"] == name).cloned()
}

/// Waits until the resync of `name` has started and finished; returns its last entry.
async fn wait_resynced(p: &TestPipeline, name: &str) -> serde_json::Value {
    wait_for(&format!("{name} resynced"), CONVERGE, || async {
        table_status(p, name).await.filter(|t| t["state"] == "streaming" && t["rows_copied"].as_u64() > Some(0))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_repairs_a_target_table_edited_by_hand() {
    let (p, daemon) = streaming("rs_repair").await;
    p.wait_converged("tk", "tk", CONVERGE).await;
    let dst = p.target_client().await;
    // Drift: rows deleted, rows added (between source keys, before and after them, in
    // every chunk), values changed; in the text-keyed table too.
    dst.batch_execute(
        "DELETE FROM t WHERE id % 1000 = 0;
         INSERT INTO t SELECT 2 * g + 1, 'stray', 0 FROM generate_series(0, 25000, 997) g;
         INSERT INTO t VALUES (-5, 'before', 0), (90000, 'after', 0);
         UPDATE t SET v = 'changed' WHERE id % 777 = 0;
         DELETE FROM tk WHERE k = 'c';
         INSERT INTO tk VALUES ('b', 0), ('C', 0), ('zzz', 0), ('A', 0), ('k0', 0), ('K99999', 0), ('k12345x', 0);
         DELETE FROM tk WHERE k IN ('k2', 'K9001', 'k16000', 'K23999');
         UPDATE tk SET v = 99 WHERE k IN ('D', 'K5', 'k20000');",
    )
    .await
    .expect("edit the target by hand");
    let (ok, out) = resync_cli(&p, "public.t");
    assert!(ok, "tidewater resync failed: {out}");
    let (ok, out) = resync_cli(&p, "tk");
    assert!(ok, "tidewater resync (table name without schema) failed: {out}");
    // The other tables keep streaming meanwhile.
    p.source_client().await.batch_execute("INSERT INTO other VALUES (2, 'two')").await.unwrap();
    let t = wait_resynced(&p, "public.t").await;
    assert_eq!(t["rows_copied"], 25000, "every source row copied once: {t}");
    wait_resynced(&p, "public.tk").await;
    p.wait_converged("t", "t", CONVERGE).await;
    p.wait_converged("tk", "tk", CONVERGE).await;
    p.wait_converged("other", "other", CONVERGE).await;
    // Done: the checkpoint no longer lists a resync.
    let progress: Option<String> = dst
        .query_one("SELECT copy_progress FROM tidewater_checkpoints WHERE pipeline = $1", &[&p.name])
        .await
        .unwrap()
        .get(0);
    assert!(progress.as_deref().is_none_or(|t| !t.contains("public.t")), "resync still recorded: {progress:?}");
    assert_eq!(p.status().await.unwrap()["state"], "streaming");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_requests_that_cannot_be_done_are_refused_with_the_reason() {
    let (p, daemon) = streaming("rs_refuse").await;
    let (ok, out) = resync_cli(&p, "public.nokey");
    assert!(!ok && out.contains("no primary key"), "a keyless table is refused: {out}");
    let (ok, out) = resync_cli(&p, "public.missing");
    assert!(!ok && out.contains("no table") && out.contains("public.t"), "an unknown table is refused: {out}");
    let url = format!("http://127.0.0.1:{}/pipelines/nope/resync", p.status_port);
    let (code, _, body) = tidewater::http_request("POST", &url, None, Some(r#"{"table":"public.t"}"#)).await.unwrap();
    assert_eq!(code, 404, "unknown pipeline: {body}");
    let url = format!("http://127.0.0.1:{}/pipelines/{}/resync", p.status_port, p.name);
    let (code, _, body) = tidewater::http_request("POST", &url, None, Some("not json")).await.unwrap();
    assert_eq!(code, 400, "malformed body: {body}");
    let (code, _, body) = tidewater::http_request("POST", &url, None, Some(r#"{"table":"public.t"}"#)).await.unwrap();
    assert_eq!(code, 202, "accepted: {body}");
    wait_resynced(&p, "public.t").await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_under_writes_to_the_same_table_loses_and_doubles_nothing() {
    let (p, daemon) = streaming("rs_writes").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let src = p.source_client().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                // Inserts, updates, deletes and key changes all over the key range (the
                // chunk being copied included), each its own transaction.
                let a = (i * 131) % 50000;
                let sql = format!(
                    "INSERT INTO t VALUES ({new}, 'new {i}', {i}) ON CONFLICT (id) DO UPDATE SET v = 'again {i}';
                     UPDATE t SET v = 'updated {i}', n = n + 1 WHERE id = {upd};
                     DELETE FROM t WHERE id = {del};
                     UPDATE t SET id = {moved} WHERE id = {from};",
                    new = 2 * a + 1,
                    upd = 2 * ((a + 7) % 25000 + 1),
                    del = 2 * ((a + 13) % 25000 + 1),
                    moved = 1_000_000 + i,
                    from = 2 * ((a + 29) % 25000 + 1),
                );
                src.batch_execute(&format!("BEGIN; {sql} COMMIT;")).await.expect("source write");
            }
            i
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, out) = resync_cli(&p, "public.t");
    assert!(ok, "tidewater resync failed: {out}");
    wait_resynced(&p, "public.t").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert!(written > 50, "the table was written during the resync ({written} transactions)");
    p.wait_converged("t", "t", CONVERGE).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_interrupted_by_a_restart_continues_after_its_last_chunk() {
    let mut p = TestPipeline::new("rs_restart", SETUP, &["public.t"]).await;
    // Slow enough to stop it part way.
    p.pipeline_extra = "resync_pause_ms = 1500".into();
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    p.wait_converged("t", "t", CONVERGE).await;
    p.target_client().await.batch_execute("DELETE FROM t WHERE id > 40000; UPDATE t SET v = 'x'").await.unwrap();
    let (ok, out) = resync_cli(&p, "public.t");
    assert!(ok, "tidewater resync failed: {out}");
    // Stop once the first chunk is in.
    wait_for("a first resync chunk", CONVERGE, || async {
        table_status(&p, "public.t").await.filter(|t| t["rows_copied"].as_u64().is_some_and(|n| n > 0))
    })
    .await;
    daemon.stop().await;
    let dst = p.target_client().await;
    let progress: Option<String> = dst
        .query_one("SELECT copy_progress FROM tidewater_checkpoints WHERE pipeline = $1", &[&p.name])
        .await
        .unwrap()
        .get(0);
    let progress: serde_json::Value = serde_json::from_str(&progress.expect("resync recorded")).unwrap();
    let entry = &progress["resync"][0];
    assert_eq!(entry["table"], "public.t", "{progress}");
    let copied = entry["rows"].as_u64().unwrap();
    assert!(copied > 0 && copied < 25000, "stopped part way: {progress}");
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    let t = wait_resynced(&p, "public.t").await;
    assert_eq!(t["rows_copied"], 25000, "continued, not started over: {t}");
    p.wait_converged("t", "t", CONVERGE).await;
    daemon.stop().await;
}

/// `tidewater verify` on the pipeline: whether every table matches.
fn verify(p: &TestPipeline) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .args(["verify", "--config"])
        .arg(p.config_path())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Postgres → MariaDB and Postgres → SQLite: hand edits in the target are repaired by a
/// resync of each table (an integer key and a text key in a collation unlike its bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resyncs_repair_mariadb_and_sqlite_targets() {
    use crate::support::mysql::{fresh_mysql_db, mysql_target};
    const EDITS: [&str; 9] = [
        "DELETE FROM t WHERE id % 1000 = 0",
        "INSERT INTO t VALUES (1, 'stray', 0), (20001, 'stray', 0), (-5, 'before', 0), (90000, 'after', 0)",
        "UPDATE t SET v = 'changed' WHERE id % 777 = 0",
        "DELETE FROM tk WHERE k IN ('c', 'k2', 'K9001', 'k16000')",
        "INSERT INTO tk VALUES ('b', 0), ('C', 0), ('zzz', 0), ('k0', 0), ('K99999', 0)",
        "UPDATE tk SET v = 99 WHERE k IN ('D', 'K5', 'k20000')",
        "DELETE FROM other WHERE id = 1",
        "INSERT INTO other VALUES (7, 'seven')",
        "UPDATE t SET n = -1 WHERE id = 50000",
    ];
    let my = mysql_target().await;
    for kind in ["mariadb", "sqlite"] {
        let mut p = TestPipeline::new(&format!("rs{kind}"), SETUP, &["public.t", "public.tk", "public.other"]).await;
        let file = p.dir.path().join("target.db");
        let db = fresh_mysql_db(my, "rs").await;
        if kind == "mariadb" {
            p.target_mysql(my, &db);
        } else {
            p.target_sqlite(&file);
        }
        let daemon = p.start();
        p.wait_state("streaming", CONVERGE).await;
        wait_for(&format!("{kind}: copy verified"), CONVERGE, || async { verify(&p).0.then_some(()) }).await;
        if kind == "mariadb" {
            use mysql_async::prelude::Queryable;
            let mut conn = my.connect(&db).await;
            for sql in EDITS {
                conn.query_drop(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            let _ = conn.disconnect().await;
        } else {
            use tidewater_sqlite::sqlx::{Connection, Executor};
            let mut conn = tidewater_sqlite::sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
                .await
                .unwrap();
            for sql in EDITS {
                conn.execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            conn.close().await.unwrap();
        }
        let (ok, text) = verify(&p);
        assert!(!ok, "{kind}: the edited target differs: {text}");
        for table in ["public.t", "public.tk", "public.other"] {
            let (ok, out) = resync_cli(&p, table);
            assert!(ok, "{kind}: tidewater resync {table} failed: {out}");
            wait_resynced(&p, table).await;
        }
        wait_for(&format!("{kind}: repaired"), CONVERGE, || async { verify(&p).0.then_some(()) }).await;
        daemon.stop().await;
    }
}

/// Copied rows are loaded with `COPY` into Postgres targets; a target table that already
/// holds some of their keys (created and filled by hand) gets them upserted instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_into_a_target_table_holding_some_keys_upserts_them() {
    let p = TestPipeline::new("rs_prefilled", SETUP, &["public.t"]).await;
    p.target_client()
        .await
        .batch_execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, v text, n int);
             INSERT INTO t VALUES (2, 'stale', 0), (30000, 'stale', 0), (49998, 'stale', 0)",
        )
        .await
        .unwrap();
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    p.wait_converged("t", "t", CONVERGE).await;
    daemon.stop().await;
}

/// A copied row the Postgres target rejects (loaded with `COPY`, chunks written by
/// parallel writers) is a dead letter; the chunks' other rows arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_row_the_target_rejects_is_dead_lettered_and_the_rest_arrives() {
    let p = TestPipeline::new(
        "rs_reject",
        "CREATE TABLE c (id int PRIMARY KEY, v int); INSERT INTO c SELECT g, g % 50 FROM generate_series(1, 30000) g; \
         UPDATE c SET v = 500 WHERE id IN (1234, 25000)",
        &["public.c"],
    )
    .await;
    p.target_client().await.batch_execute("CREATE TABLE c (id int PRIMARY KEY, v int CHECK (v < 100))").await.unwrap();
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    let dst = p.target_client().await;
    let count: i64 = dst.query_one("SELECT count(*) FROM c", &[]).await.unwrap().get(0);
    assert_eq!(count, 29998, "every row but the rejected ones");
    let dead: Vec<String> = dst
        .query("SELECT payload::text FROM tidewater_dead_letters WHERE pipeline = $1", &[&p.name])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.iter().any(|d| d.contains("1234")) && dead.iter().any(|d| d.contains("25000")), "{dead:?}");
    daemon.stop().await;
}

/// A column added while a table is resynced: chunks read before the change are read
/// again (the target never follows the change back), and the table converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_during_a_resync_is_kept() {
    let mut p = TestPipeline::new("rs_alter", SETUP, &["public.t"]).await;
    p.pipeline_extra = "resync_pause_ms = 400".into();
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    p.wait_converged("t", "t", CONVERGE).await;
    let (ok, out) = resync_cli(&p, "public.t");
    assert!(ok, "tidewater resync failed: {out}");
    wait_for("a first resync chunk", CONVERGE, || async {
        table_status(&p, "public.t").await.filter(|t| t["rows_copied"].as_u64().is_some_and(|n| n > 0))
    })
    .await;
    let src = p.source_client().await;
    src.batch_execute(
        "ALTER TABLE t ADD COLUMN extra int DEFAULT 7; UPDATE t SET extra = id WHERE id <= 2000 OR id = 49998",
    )
    .await
    .unwrap();
    wait_resynced(&p, "public.t").await;
    p.wait_converged("t", "t", CONVERGE).await;
    daemon.stop().await;
}

/// With `status.token_file`, `POST /pipelines/NAME/resync` needs the bearer token; the CLI
/// sends the configuration's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resync_call_needs_the_status_token_and_the_cli_sends_it() {
    let p = TestPipeline::new("rs_token", SETUP, &["public.t"]).await;
    let token_file = p.dir.path().join("status-token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let text = p.config_text().replace("[status]\n", &format!("[status]\ntoken_file = \"{}\"\n", token_file.display()));
    let config = p.dir.path().join("with-token.toml");
    std::fs::write(&config, &text).unwrap();
    let daemon = InProcess::start(&text);
    let url = format!("http://127.0.0.1:{}/pipelines/{}/resync", p.status_port, p.name);
    let body = Some(r#"{"table": "public.t"}"#);
    let status = wait_for("the status server", CONVERGE, || async {
        tidewater::http_request("POST", &url, None, body).await.ok().map(|(code, _, _)| code)
    })
    .await;
    assert_eq!(status, 401, "no token, no resync");
    let (code, _, _) = tidewater::http_request("POST", &url, Some("wrong"), body).await.unwrap();
    assert_eq!(code, 401, "a wrong token, no resync");
    wait_for("pipeline streaming", CONVERGE, || async {
        let json =
            tidewater::http_get_with_token(&format!("http://127.0.0.1:{}/status", p.status_port), Some("s3cret-token"))
                .await
                .ok()?;
        json.contains("\"state\":\"streaming\"").then_some(())
    })
    .await;
    let out = Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .args(["resync", "--config"])
        .arg(&config)
        .args(["--pipeline", &p.name, "--table", "public.t"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    daemon.stop().await;
}
