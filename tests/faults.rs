//! The fault suite: crashes of the daemon during the snapshot, of the source and target
//! servers, and network cuts. A separate test binary (its own throwaway servers), since
//! these tests stop the shared servers. Each ends with the target equal to the source,
//! row by row: nothing lost, nothing doubled.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::proxy::Proxy;
use support::{wait_for, PgServer, TestPipeline, REPLICATOR_PASSWORD, REPLICATOR_USER};

const WAIT: Duration = Duration::from_secs(60);

/// These tests stop the servers other tests use: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const FAST_RETRY: &str = "[pipelines.retry]\ninitial_ms = 100\nmax_ms = 1000";

/// Inserts 1, 2, 3, … into `seq` until `stop`, surviving server crashes: each insert is
/// idempotent and retried on a fresh connection until it succeeds. Commits are durable
/// before they return (synchronous_commit = on). Returns the last number written.
async fn resilient_writer(server: &'static PgServer, db: String, stop: Arc<AtomicBool>) -> i64 {
    let mut n = 0i64;
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        loop {
            if client.is_none() {
                match server.try_connect_as(&db, REPLICATOR_USER, REPLICATOR_PASSWORD).await {
                    Ok(c) if c.batch_execute("SET synchronous_commit = on").await.is_ok() => client = Some(c),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            let Some(c) = &client else { continue };
            let sql = "INSERT INTO seq (n) VALUES ($1) ON CONFLICT DO NOTHING";
            match c.execute(sql, &[&n]).await {
                Ok(_) => break,
                Err(_) => client = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    n
}

async fn assert_sequence_complete(p: &TestPipeline, written: i64) {
    let rows = p.wait_converged("seq", "seq", WAIT).await;
    assert_eq!(rows.len() as i64, written, "every sequence number exactly once");
    let dst = p.target_client().await;
    let r = dst.query_one("SELECT count(*), count(DISTINCT n), coalesce(max(n), 0) FROM seq", &[]).await.unwrap();
    let got: (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
    assert_eq!(got, (written, written, written));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_initial_snapshot_restarts_it_without_gap_or_duplicate() {
    let _serial = SERIAL.lock().await;
    let p = TestPipeline::new(
        "snapkill",
        "CREATE TABLE big (id int PRIMARY KEY, pad text); \
         INSERT INTO big SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 500000) g; \
         CREATE TABLE audit (n int, pad text); ALTER TABLE audit REPLICA IDENTITY FULL; \
         INSERT INTO audit SELECT g % 50000, repeat(md5(g::text), 6) FROM generate_series(1, 100000) g; \
         INSERT INTO audit SELECT 7, 'twin' FROM generate_series(1, 2);",
        &["public.big", "public.audit"],
    )
    .await;
    let src = p.source_client().await;
    let dst = p.target_client().await;
    // The rows the checkpoint records as copied: a restart continues, it never starts over.
    let copied = || async {
        let row = dst
            .query_opt(
                "SELECT copy_progress, snapshot_complete FROM tidewater_checkpoints WHERE pipeline = $1",
                &[&p.name],
            )
            .await
            .unwrap();
        if row.as_ref().is_some_and(|r| r.get::<_, bool>(1)) {
            return u64::MAX; // finished before the kill
        }
        let text: Option<String> = row.and_then(|r| r.get(0));
        let json: serde_json::Value = text.map_or(serde_json::Value::Null, |t| serde_json::from_str(&t).unwrap());
        json["tables"]["public.big"]["rows"].as_u64().unwrap_or(0)
    };
    let mut before = 0;
    let mut rounds = 0;
    for round in 0..5 {
        if before == u64::MAX {
            break; // the snapshot completed before a kill
        }
        let mut child = p.spawn_process();
        p.wait_state("snapshotting", WAIT).await;
        tokio::time::sleep(Duration::from_millis(100 + rand::random::<u64>() % 300)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        let now = copied().await;
        assert!(
            now >= before,
            "round {round}: the copy went back from {before} to {now} rows; daemon log:\n{}",
            p.daemon_log()
        );
        before = now;
        // Changes between the attempts must neither be lost nor doubled.
        src.execute("INSERT INTO big VALUES ($1, 'between attempts')", &[&(1_000_000 + round)]).await.unwrap();
        src.execute("DELETE FROM big WHERE id = $1", &[&(round + 1)]).await.unwrap();
        // A table without a key: an unfinished copy starts again, never doubling a row.
        src.execute("INSERT INTO audit VALUES ($1, 'between attempts')", &[&round]).await.unwrap();
        rounds += 1;
    }
    assert!(before > 0, "five rounds copied nothing");
    let mut child = p.spawn_process();
    if before != u64::MAX {
        p.wait_state("snapshotting", WAIT).await;
    }
    src.batch_execute("UPDATE big SET pad = 'during the last snapshot' WHERE id = 100").await.unwrap();
    p.wait_state("streaming", WAIT).await;
    src.batch_execute("INSERT INTO big VALUES (2000000, 'after')").await.unwrap();
    let rows = p.wait_converged("big", "big", WAIT).await;
    assert_eq!(rows.len(), 500000 - rounds + rounds + 1);
    // Duplicates kept (equal rows), none added.
    let audit = p.wait_converged("audit", "audit", WAIT).await;
    assert_eq!(audit.len(), 100000 + 2 + rounds);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Runs a pipeline under a writer load, crashes one server (`stop_immediate`) for 3 s,
/// restarts it, and checks the sequence arrived exactly once. Returns the pipeline (still
/// running as `daemon`) for further assertions.
async fn crash_server_under_load(prefix: &str, crash_source: bool) -> (TestPipeline, support::daemon::InProcess) {
    let mut p = TestPipeline::new(prefix, "CREATE TABLE seq (n bigint PRIMARY KEY)", &["public.seq"]).await;
    p.pipeline_extra = FAST_RETRY.into();
    let daemon = p.start();
    p.wait_state("streaming", WAIT).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(resilient_writer(p.source, p.source_db.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server: &'static PgServer = if crash_source { p.source } else { p.target };
    tokio::task::spawn_blocking(move || server.stop_immediate()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::spawn_blocking(move || server.start()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let written = writer.await.unwrap();
    assert_sequence_complete(&p, written).await;
    (p, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_server_crash_mid_stream_resumes_without_loss_or_duplicates() {
    let _serial = SERIAL.lock().await;
    let (p, daemon) = crash_server_under_load("srccrash", true).await;
    let status = p.status().await.unwrap();
    assert!(status["retries_total"].as_u64().unwrap() >= 1, "{status}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_server_crash_mid_batch_resumes_without_loss_or_duplicates() {
    let _serial = SERIAL.lock().await;
    let (p, daemon) = crash_server_under_load("dstcrash", false).await;
    let confirmed = p.slot_confirmed_flush().await.unwrap();
    let checkpoint = p.checkpoint_lsn().await.unwrap();
    assert!(confirmed <= checkpoint, "slot {confirmed} <= target checkpoint {checkpoint}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_cut_of_10s_to_source_then_target_converges() {
    let _serial = SERIAL.lock().await;
    let mut p = TestPipeline::new("netcut", "CREATE TABLE seq (n bigint PRIMARY KEY)", &["public.seq"]).await;
    let to_source = Proxy::start(p.source.port).await;
    let to_target = Proxy::start(p.target.port).await;
    p.source_port_via = Some(to_source.port);
    p.target_port_via = Some(to_target.port);
    p.pipeline_extra = FAST_RETRY.into();
    let daemon = p.start();
    p.wait_state("streaming", WAIT).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(resilient_writer(p.source, p.source_db.clone(), stop.clone()));
    for proxy in [&to_source, &to_target] {
        tokio::time::sleep(Duration::from_secs(1)).await;
        proxy.cut();
        let status = p.wait_state("retrying", Duration::from_secs(20)).await;
        assert!(status["last_error"].is_string(), "{status}");
        tokio::time::sleep(Duration::from_secs(10)).await;
        // The writer went on committing at the source: the target is ~10 s behind, also
        // while the source is unreachable (lag counts from when it was last heard from).
        let during = p.status().await.unwrap();
        assert!(during["lag_seconds"].as_f64().unwrap() >= 8.0, "lag during the cut: {during}");
        proxy.restore();
        p.wait_state("streaming", WAIT).await;
    }
    stop.store(true, Ordering::SeqCst);
    let written = writer.await.unwrap();
    assert_sequence_complete(&p, written).await;
    let settled = wait_for("lag back to 0", WAIT, || async {
        p.status().await.filter(|s| s["lag_seconds"].as_f64() == Some(0.0))
    })
    .await;
    assert!(settled["retries_total"].as_u64().unwrap() >= 2, "{settled}");
    daemon.stop().await;
}

/// kill -9 of the daemon at random points of a resync, under writes to the table: each
/// restart continues after the recorded chunk (never goes back), the target ends equal to
/// the source (hand edits repaired, nothing lost or doubled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_resync_continues_it_after_the_last_chunk() {
    let _serial = SERIAL.lock().await;
    let mut p = TestPipeline::new(
        "rskill",
        "CREATE TABLE big (id int PRIMARY KEY, pad text); \
         INSERT INTO big SELECT 2 * g, md5(g::text) FROM generate_series(1, 120000) g;",
        &["public.big"],
    )
    .await;
    p.pipeline_extra = format!("resync_pause_ms = 150\n{FAST_RETRY}");
    let src = p.source_client().await;
    let dst = p.target_client().await;
    let mut child = p.spawn_process();
    p.wait_state("streaming", WAIT).await;
    p.wait_converged("big", "big", WAIT).await;
    dst.batch_execute("DELETE FROM big WHERE id % 999 = 0; INSERT INTO big VALUES (3, 'stray'), (200001, 'stray')")
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{}/pipelines/{}/resync", p.status_port, p.name);
    let (code, _, body) =
        tidewater::http_request("POST", &url, None, Some(r#"{"table": "public.big"}"#)).await.unwrap();
    assert_eq!(code, 202, "{body}");
    // The rows the checkpoint records as resynced (`None`: no resync recorded).
    let recorded = || async {
        let row = dst
            .query_one("SELECT copy_progress FROM tidewater_checkpoints WHERE pipeline = $1", &[&p.name])
            .await
            .unwrap();
        let text: Option<String> = row.get(0);
        let json: serde_json::Value = text.map_or(serde_json::Value::Null, |t| serde_json::from_str(&t).unwrap());
        json["resync"][0]["rows"].as_u64()
    };
    wait_for("the resync request recorded", WAIT, || async { recorded().await }).await;
    let mut before = 0;
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(300 + rand::random::<u64>() % 500)).await;
        src.execute("UPDATE big SET pad = 'changed' WHERE id = $1", &[&(2 * (round * 30000 + 7))]).await.unwrap();
        src.execute("DELETE FROM big WHERE id = $1", &[&(2 * (round * 30000 + 11))]).await.unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let now = recorded().await;
        child = p.spawn_process();
        let Some(now) = now else { break }; // finished before this kill
        assert!(now >= before, "round {round}: the resync went back from {before} to {now} rows:\n{}", p.daemon_log());
        before = now;
        p.wait_state("streaming", WAIT).await;
    }
    assert!(before > 0, "no resync chunk was recorded before a kill");
    wait_for("the resync finished", WAIT, || async { recorded().await.is_none().then_some(()) }).await;
    p.wait_converged("big", "big", WAIT).await;
    child.kill().unwrap();
    child.wait().unwrap();
}
