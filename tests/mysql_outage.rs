//! MariaDB-source outages: kill -9 of the daemon, kill -9 of the source server, and a
//! binlog purged past the checkpoint. A separate test binary: it gets its own throwaway
//! servers, so killing and purging them disturbs no other test.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use tokio::sync::watch;

use support::mysql::{fresh_mysql_db, mysql_source, mysql_target, MyServer, MYSQL_PASSWORD};
use support::{free_port, wait_for};

const WAIT: Duration = Duration::from_secs(90);

struct Pipeline {
    name: String,
    source: &'static MyServer,
    source_db: String,
    target: &'static MyServer,
    target_db: String,
    dir: tempfile::TempDir,
    status_port: u16,
    server_id: u32,
}

impl Pipeline {
    async fn new(prefix: &str, setup_sql: &str) -> Pipeline {
        let source = mysql_source().await;
        let target = mysql_target().await;
        let source_db = fresh_mysql_db(source, prefix).await;
        let target_db = fresh_mysql_db(target, prefix).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), MYSQL_PASSWORD).unwrap();
        let p = Pipeline {
            name: format!("p_{prefix}"),
            source,
            source_db,
            target,
            target_db,
            dir,
            status_port: free_port(),
            server_id: 500_000 + std::process::id() % 100_000,
        };
        let mut conn = p.source.connect(&p.source_db).await;
        conn.query_drop(setup_sql).await.unwrap();
        p
    }

    fn config_text(&self) -> String {
        format!(
            r#"
[status]
listen = "127.0.0.1:{port}"

[log]
format = "text"
level = "info"

[sources.src]
type = "mysql"
url = "{src}"
password_file = "{dir}/pw"
server_id = {server_id}
tables = ["{db}.*"]

[targets.dst]
type = "mysql"
url = "{dst}"
password_file = "{dir}/pw"

[[pipelines]]
name = "{name}"
source = "src"
target = "dst"
max_batch_delay_ms = 20

[pipelines.tables]
"{db}.t" = "public.t"

[pipelines.retry]
initial_ms = 100
max_ms = 1000
"#,
            port = self.status_port,
            src = self.source.url(&self.source_db),
            dst = self.target.url(&self.target_db),
            dir = self.dir.path().display(),
            server_id = self.server_id,
            db = self.source_db,
            name = self.name,
        )
    }

    fn start(&self) -> (watch::Sender<bool>, tokio::task::JoinHandle<anyhow::Result<Vec<tidewater::engine::Outcome>>>) {
        let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
        let cfg = tidewater::config::parse(&self.config_text()).unwrap();
        let (stop, rx) = watch::channel(false);
        (stop, tokio::spawn(tidewater::run(cfg, rx)))
    }

    fn spawn_process(&self) -> Child {
        let path = self.dir.path().join("tidewater.toml");
        std::fs::write(&path, self.config_text()).unwrap();
        let log = std::fs::File::create(self.dir.path().join("daemon.log")).unwrap();
        Command::new(env!("CARGO_BIN_EXE_tidewater"))
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    async fn status(&self) -> Option<serde_json::Value> {
        let body = tidewater::http_get(&format!("http://127.0.0.1:{}/status", self.status_port)).await.ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(json["pipelines"][0].clone())
    }

    async fn wait_state(&self, state: &str) -> serde_json::Value {
        wait_for(&format!("state {state}"), WAIT, || async { self.status().await.filter(|p| p["state"] == state) })
            .await
    }

    async fn rows(server: &MyServer, db: &str) -> Option<Vec<String>> {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(server.port)
            .user(Some(support::mysql::MYSQL_USER))
            .pass(Some(MYSQL_PASSWORD))
            .db_name(Some(db));
        let mut conn = mysql_async::Conn::new(opts).await.ok()?;
        let mut rows: Vec<String> = conn.query("SELECT concat_ws('|', id, v) FROM t").await.ok()?;
        rows.sort();
        Some(rows)
    }

    async fn wait_converged(&self) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let a = Self::rows(self.source, &self.source_db).await;
            let b = Self::rows(self.target, &self.target_db).await;
            if a.is_some() && a == b {
                return a.map(|r| r.len()).unwrap_or(0);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "did not converge: source {:?} rows, target {:?} rows; status {:?}; daemon log: {}",
                a.map(|r| r.len()),
                b.map(|r| r.len()),
                self.status().await,
                std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Inserts rows (one per transaction, plus some updates) until stopped; rides out outages.
fn writer(
    server: &'static MyServer,
    db: String,
    stop: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let opts = mysql_async::OptsBuilder::default()
                .ip_or_hostname("127.0.0.1")
                .tcp_port(server.port)
                .user(Some(support::mysql::MYSQL_USER))
                .pass(Some(MYSQL_PASSWORD))
                .db_name(Some(db.clone()));
            let Ok(mut conn) = mysql_async::Conn::new(opts).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            while !stop.load(Ordering::Relaxed) {
                let id = next.load(Ordering::Relaxed);
                let sql =
                    format!("INSERT INTO t VALUES ({id}, 'v{id}'); UPDATE t SET v = 'u{id}' WHERE id = {}", id / 2);
                match conn.query_drop(sql).await {
                    Ok(()) => {
                        next.fetch_add(1, Ordering::Relaxed);
                    }
                    // A duplicate: the insert committed but its answer was lost.
                    Err(mysql_async::Error::Server(e)) if e.code == 1062 => {
                        next.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_outages_resume_without_loss_and_a_purged_binlog_fails_loudly() {
    let p = Pipeline::new("outage", "CREATE TABLE t (id BIGINT PRIMARY KEY, v VARCHAR(20))").await;
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(1));
    let w = writer(p.source, p.source_db.clone(), stop.clone(), next.clone());

    // 1. kill -9 of the daemon mid-stream, then a restart.
    let mut daemon = p.spawn_process();
    p.wait_state("streaming").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut daemon = p.spawn_process();
    p.wait_state("streaming").await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 2. kill -9 of the source server mid-stream, then its restart.
    let source = p.source;
    tokio::task::spawn_blocking(move || source.kill9()).await.unwrap();
    wait_for("the pipeline notices", WAIT, || async {
        p.status().await.filter(|s| s["state"] == "retrying" || s["retries_total"].as_u64() > Some(0))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::spawn_blocking(move || source.start()).await.unwrap();
    p.wait_state("streaming").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. A clean shutdown of the source (the binlog stream just ends), then its restart.
    let retries = p.status().await.and_then(|s| s["retries_total"].as_u64()).unwrap_or(0);
    tokio::task::spawn_blocking(move || {
        let _ = source.sql("SHUTDOWN");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", source.port)).is_ok() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(2));
        source.start();
    })
    .await
    .unwrap();
    wait_for("a retry after the shutdown", WAIT, || async {
        p.status().await.filter(|s| s["retries_total"].as_u64() > Some(retries) && s["state"] == "streaming")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    w.await.unwrap();
    let n = p.wait_converged().await;
    assert!(n > 100, "the writer made progress: {n} rows");
    daemon.kill().unwrap();
    daemon.wait().unwrap();

    // 4. A binlog purged past the checkpoint: failed, with the fix.
    let mut conn = p.source.connect(&p.source_db).await;
    conn.query_drop("INSERT INTO t VALUES (999999999, 'while stopped')").await.unwrap();
    for _ in 0..2 {
        conn.query_drop("FLUSH BINARY LOGS").await.unwrap();
    }
    let status: Option<(String, u64, String, String)> = conn.query_first("SHOW MASTER STATUS").await.unwrap();
    let file = status.unwrap().0;
    // A file a dump thread still reads (the killed daemon's, until the server notices) is
    // not purged: retry until only the current file is left.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        conn.query_drop(format!("PURGE BINARY LOGS TO '{file}'")).await.unwrap();
        let logs: Vec<(String, u64)> = conn.query("SHOW BINARY LOGS").await.unwrap();
        if logs.len() == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "binlogs not purged: {logs:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (stop_daemon, task) = p.start();
    let failed = p.wait_state("failed").await;
    let error = failed["last_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("purged past the checkpoint"), "{error}");
    assert!(error.contains("tidewater_checkpoints"), "{error}");
    let _ = stop_daemon.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
}
