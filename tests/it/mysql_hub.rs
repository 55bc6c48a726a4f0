//! One MariaDB source section feeding three pipelines (PostgreSQL, MariaDB and SQLite
//! targets) through one binlog reader: one `Binlog Dump` thread on the source while every
//! pipeline is attached; every target equals the source under continuous writes, after a
//! kill -9 of the daemon, and after one target was down for 30 s (the others keep
//! syncing meanwhile, the one that was down catches up on its own and re-attaches), with a
//! schema change while it was behind.
//!
//! The source and the MariaDB target are servers of their own: the test counts the
//! source's dump threads and stops the target, which must disturb no other test.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use super::mysql_e2e::{server_id, sql, Dst};
use crate::support::mysql::{fresh_mysql_db, private_mysql, MyServer, MYSQL_PASSWORD};
use crate::support::{free_port, wait_for, REPLICATOR_PASSWORD};

const WAIT: Duration = Duration::from_secs(120);
const PIPELINES: [&str; 3] = ["hub_postgres", "hub_mariadb", "hub_sqlite"];
/// `log` rows per source transaction: with `max_batch_events = 1000` a pipeline queues at
/// most 10,000 changes, so a 30 s outage under this load fills its queue and then the
/// source's 1 MiB buffer.
const LOG_ROWS_PER_TX: u64 = 5;
const DUMP_THREADS: &str = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND = 'Binlog Dump'";

/// `id|v|n|extra` of `items` on each engine, ordered by id.
const ITEMS: [&str; 3] = [
    "SELECT id::text || '|' || v || '|' || n::text || '|' || coalesce(extra, '-') FROM items ORDER BY id",
    "SELECT concat_ws('|', id, v, n, coalesce(extra, '-')) FROM items ORDER BY id",
    "SELECT id || '|' || v || '|' || n || '|' || coalesce(extra, '-') FROM items ORDER BY id",
];
/// Rows of the insert-only `log` and its distinct ids, on each engine.
const LOG_COUNTS: [&str; 3] = [
    "SELECT count(*)::text || '/' || count(DISTINCT id)::text FROM log",
    "SELECT concat(count(*), '/', count(DISTINCT id)) FROM log",
    "SELECT count(*) || '/' || count(DISTINCT id) FROM log",
];

struct Setup {
    source: &'static MyServer,
    db: String,
    dsts: Vec<Dst>,
    dir: tempfile::TempDir,
    status_port: u16,
    server_id: u32,
}

impl Setup {
    fn config_text(&self) -> String {
        let dir = self.dir.path().display().to_string();
        let mut text = format!(
            r#"[status]
listen = "127.0.0.1:{port}"

[log]
format = "text"
level = "info"

[sources.shop]
type = "mysql"
url = "{url}"
password_file = "{dir}/mypw"
server_id = {server_id}
tables = ["{db}.*"]
binlog_buffer_mb = 1
"#,
            port = self.status_port,
            url = self.source.url(&self.db),
            server_id = self.server_id,
            db = self.db,
        );
        for (n, dst) in self.dsts.iter().enumerate() {
            text.push_str(&format!(
                r#"
[targets.dst{n}]
{target}

[[pipelines]]
name = "{name}"
source = "shop"
target = "dst{n}"
max_batch_delay_ms = 20
max_batch_events = 1000

[pipelines.tables]
"{db}.items" = "public.items"
"{db}.log" = "public.log"

[pipelines.retry]
initial_ms = 100
max_ms = 1000
"#,
                target = dst.target_section(&dir),
                name = PIPELINES[n],
                db = self.db,
            ));
        }
        text
    }

    fn config_path(&self) -> std::path::PathBuf {
        let path = self.dir.path().join("tidewater.toml");
        std::fs::write(&path, self.config_text()).unwrap();
        path
    }

    fn spawn(&self) -> Child {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("daemon.log")).unwrap();
        Command::new(env!("CARGO_BIN_EXE_tidewater"))
            .args(["run", "--config"])
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn daemon_log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    async fn statuses(&self) -> Vec<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/status", self.status_port);
        let Ok(body) = tidewater::http_get(&url).await else { return Vec::new() };
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        json["pipelines"].as_array().cloned().unwrap_or_default()
    }

    async fn status(&self, pipeline: &str) -> serde_json::Value {
        self.statuses().await.into_iter().find(|p| p["name"] == pipeline).unwrap_or_default()
    }

    /// Each pipeline's reader mode from `/metrics` (`attached` / `catching_up`).
    async fn modes(&self) -> Vec<(String, String)> {
        let url = format!("http://127.0.0.1:{}/metrics", self.status_port);
        let body = tidewater::http_get(&url).await.unwrap_or_default();
        body.lines()
            .filter_map(|l| l.strip_prefix("tidewater_source_reader{pipeline=\""))
            .filter_map(|l| {
                let (pipeline, rest) = l.split_once("\",mode=\"")?;
                let (mode, _) = rest.split_once('"')?;
                Some((pipeline.to_string(), mode.to_string()))
            })
            .collect()
    }

    async fn all_attached(&self) -> bool {
        let modes = self.modes().await;
        PIPELINES.iter().all(|p| modes.iter().any(|(q, m)| q == p && m == "attached"))
    }

    /// `Binlog Dump` threads on the source (every one is this daemon's: the server is
    /// this test's own).
    async fn dump_threads(&self) -> usize {
        let mut conn = self.source.connect(&self.db).await;
        let n: Option<u64> = conn.query_first(DUMP_THREADS).await.unwrap();
        n.unwrap_or(0) as usize
    }

    async fn source_texts(&self, sql_text: &str) -> Vec<String> {
        let mut conn = self.source.connect(&self.db).await;
        conn.query::<String, _>(sql_text).await.unwrap()
    }

    /// Waits until `dst` holds the source's `items` and `log` rows.
    async fn wait_equal(&self, dst: &Dst, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let items = self.source_texts(ITEMS[1]).await;
            let log = self.source_texts(LOG_COUNTS[1]).await;
            let got_items = dst.texts(ITEMS[0], ITEMS[1], ITEMS[2]).await;
            let got_log = dst.texts(LOG_COUNTS[0], LOG_COUNTS[1], LOG_COUNTS[2]).await;
            if items == got_items && log == got_log {
                return;
            }
            if Instant::now() > deadline {
                let only_src: Vec<_> = items.iter().filter(|r| !got_items.contains(r)).take(5).collect();
                let only_dst: Vec<_> = got_items.iter().filter(|r| !items.contains(r)).take(5).collect();
                panic!(
                    "the {} target did not converge: items {} vs {} rows (only in source: {only_src:?}, only in \
                     target: {only_dst:?}), log {log:?} vs {got_log:?}; status {:?}; daemon log:\n{}",
                    dst.kind(),
                    items.len(),
                    got_items.len(),
                    self.statuses().await,
                    self.daemon_log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The number of `log` rows in `dst` (0 while it cannot be read).
    async fn log_rows(dst: &Dst) -> u64 {
        let counts = dst.texts(LOG_COUNTS[0], LOG_COUNTS[1], LOG_COUNTS[2]).await;
        counts.first().and_then(|c| c.split('/').next()?.parse().ok()).unwrap_or(0)
    }
}

/// One transaction after another until stopped: `log` rows with unique ids and a padded
/// note, an `items` insert, an update of an older item and now and then a delete.
fn writer(
    source: &'static MyServer,
    db: String,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pad = "x".repeat(150);
        let mut conn = source.connect(&db).await;
        while !stop.load(Ordering::Relaxed) {
            let k = done.load(Ordering::Relaxed) + 1;
            let log: Vec<String> =
                (0..LOG_ROWS_PER_TX).map(|i| format!("({}, 'entry {k} {pad}')", k * LOG_ROWS_PER_TX + i)).collect();
            let statements = format!(
                "BEGIN; INSERT INTO log VALUES {log}; INSERT INTO items (id, v, n) VALUES ({k}, \
                 'v{k}', 0); UPDATE items SET n = n + 1, v = 'u{k}' WHERE id = {half}; DELETE FROM items WHERE id = \
                 {old} AND {k} % 5 = 0; COMMIT",
                log = log.join(", "),
                half = k / 2,
                old = k.saturating_sub(20),
            );
            match conn.query_drop(&statements).await {
                Ok(()) => done.store(k, Ordering::Relaxed),
                // The schema change's UPDATE may deadlock with it: the same transaction again.
                Err(mysql_async::Error::Server(e)) if e.code == 1213 || e.code == 1205 => {
                    conn.query_drop("ROLLBACK").await.unwrap();
                }
                Err(e) => panic!("{statements}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    })
}

async fn kill9(daemon: &mut Child) {
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_mariadb_source_feeds_three_targets_through_one_binlog_reader() {
    let source = private_mysql("hubsrc", 31).await;
    let my_target = private_mysql("hubdst", 32).await;
    let db = fresh_mysql_db(source, "hub").await;
    let my_db = fresh_mysql_db(my_target, "hub").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mypw"), MYSQL_PASSWORD).unwrap();
    std::fs::write(dir.path().join("pgpw"), REPLICATOR_PASSWORD).unwrap();
    let lite = dir.path().join("hub.db");
    let s = Setup {
        source,
        db,
        dsts: vec![Dst::pg("hub").await, Dst::My(my_target, my_db), Dst::Lite(lite)],
        dir,
        status_port: free_port(),
        server_id: server_id(),
    };
    sql(
        &mut source.connect(&s.db).await,
        "CREATE TABLE items (id BIGINT PRIMARY KEY, v VARCHAR(40) NOT NULL, n INT NOT NULL); \
         CREATE TABLE log (id BIGINT PRIMARY KEY, note VARCHAR(200) NOT NULL); \
         INSERT INTO items VALUES (1000000, 'before the daemon', 0)",
    )
    .await;

    // `check` accepts one mysql source used by three pipelines.
    let check = Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .args(["check", "--config"])
        .arg(s.config_path())
        .output()
        .unwrap();
    let check_text = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(check.status.success(), "tidewater check failed:\n{check_text}");
    assert!(!check_text.contains("own server_id"), "{check_text}");

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let w = writer(source, s.db.clone(), stop.clone(), done.clone());

    // 1. Under continuous writes: every pipeline attached to one dump connection.
    let mut daemon = s.spawn();
    wait_for("every pipeline attached to the shared reader", WAIT, || async { s.all_attached().await.then_some(()) })
        .await;
    wait_for("one Binlog Dump thread while every pipeline is attached", Duration::from_secs(30), || async {
        (s.dump_threads().await == 1 && s.all_attached().await).then_some(())
    })
    .await;
    for _ in 0..5 {
        let threads = s.dump_threads().await;
        if s.all_attached().await {
            assert_eq!(threads, 1, "dump threads while all three are attached");
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let before_kill = done.load(Ordering::Relaxed);
    assert!(before_kill > 0, "the writer is writing");
    for dst in &s.dsts {
        wait_for(&format!("the {} target receiving rows", dst.kind()), WAIT, || async {
            (Setup::log_rows(dst).await > 0).then_some(())
        })
        .await;
    }

    // 2. kill -9 of the daemon mid-stream, writes going on, then a restart.
    kill9(&mut daemon).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut daemon = s.spawn();
    wait_for("every pipeline attached after the restart", WAIT, || async { s.all_attached().await.then_some(()) })
        .await;

    // 3. The MariaDB target down for 30 s while writes go on, with a schema change.
    let behind = Setup::log_rows(&s.dsts[1]).await;
    tokio::task::spawn_blocking(move || my_target.kill9()).await.unwrap();
    let outage = Instant::now();
    let mut others_advanced = 0;
    let mut max_live_lag = 0.0f64;
    // Whether the MariaDB pipeline is ever seen catching up on its own, from now on.
    // Meanwhile, the most `Binlog Dump` threads on the source: its own catching-up dump
    // (server_id 0) beside the shared one.
    let seen_catching_up = Arc::new(AtomicBool::new(false));
    let dumps_while_catching_up = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (seen, dumps, port) = (seen_catching_up.clone(), dumps_while_catching_up.clone(), s.status_port);
        let db = s.db.clone();
        tokio::spawn(async move {
            let mut conn = source.connect(&db).await;
            loop {
                let url = format!("http://127.0.0.1:{port}/metrics");
                let body = tidewater::http_get(&url).await.unwrap_or_default();
                if body.contains(&format!(
                    "tidewater_source_reader{{pipeline=\"{}\",mode=\"catching_up\"}} 1",
                    PIPELINES[1]
                )) {
                    seen.store(true, Ordering::Relaxed);
                    let n: Option<u64> = conn.query_first(DUMP_THREADS).await.unwrap_or_default();
                    dumps.fetch_max(n.unwrap_or(0), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut altered = false;
    while outage.elapsed() < Duration::from_secs(30) {
        if !altered && outage.elapsed() > Duration::from_secs(12) {
            sql(
                &mut source.connect(&s.db).await,
                "ALTER TABLE items ADD COLUMN extra VARCHAR(20) NULL; UPDATE items SET extra = 'x' WHERE id % 3 = 0",
            )
            .await;
            altered = true;
        }
        // What the source has now reaches the two live targets within a few seconds.
        let written = done.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        for (dst, name) in [(&s.dsts[0], PIPELINES[0]), (&s.dsts[2], PIPELINES[2])] {
            loop {
                if Setup::log_rows(dst).await >= written * LOG_ROWS_PER_TX {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the {} target stalled during the MariaDB outage: {} of {written} log rows; status {:?}",
                    dst.kind(),
                    Setup::log_rows(dst).await,
                    s.status(name).await
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let lag = s.status(name).await["lag_seconds"].as_f64().unwrap_or(f64::MAX);
            assert!(lag < 10.0, "{name} lags {lag} s during the MariaDB outage");
            max_live_lag = max_live_lag.max(lag);
        }
        others_advanced += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(others_advanced >= 10, "checked the live targets {others_advanced} times");
    let during = done.load(Ordering::Relaxed);
    let mariadb = s.status(PIPELINES[1]).await;
    assert!(mariadb["lag_seconds"].as_f64().unwrap_or(0.0) > 5.0, "the MariaDB pipeline shows its lag: {mariadb}");
    tokio::task::spawn_blocking(move || my_target.start()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    w.await.unwrap();
    let written = done.load(Ordering::Relaxed);

    // Every target equals the source, nothing lost, nothing doubled.
    for dst in &s.dsts {
        s.wait_equal(dst, WAIT).await;
    }
    let log = s.source_texts(LOG_COUNTS[1]).await;
    let rows = written * LOG_ROWS_PER_TX;
    assert_eq!(log, [format!("{rows}/{rows}")], "the source log holds every transaction once");
    sampler.abort();
    assert!(
        seen_catching_up.load(Ordering::Relaxed),
        "the MariaDB pipeline fell out of the 1 MiB buffer during its 30 s outage and caught up on its own; daemon \
         log:\n{}",
        s.daemon_log_tail()
    );
    let dumps = dumps_while_catching_up.load(Ordering::Relaxed);
    assert!(dumps >= 2, "its own dump ran beside the shared one (most dump threads seen: {dumps})");
    // It re-attached: one dump connection again.
    wait_for("every pipeline attached again, one Binlog Dump thread", WAIT, || async {
        (s.all_attached().await && s.dump_threads().await == 1).then_some(())
    })
    .await;
    let extra: Vec<String> = s.source_texts("SELECT COUNT(*) FROM items WHERE extra = 'x'").await;
    assert_ne!(extra, ["0"], "the schema change wrote rows");
    eprintln!(
        "written {written} transactions: {before_kill} before the kill, MariaDB target at {behind} when it went down, \
         {during} at its restart; live targets lagged at most {max_live_lag} s during the outage; up to {dumps} \
         dump threads while it caught up"
    );
    kill9(&mut daemon).await;
}

#[test]
fn one_mysql_source_may_feed_several_pipelines() {
    let text = r#"
[sources.shop]
type = "mysql"
url = "mysql://replicator@127.0.0.1:3306/shop"
password_env = "SHOP_PW"
server_id = 4201
tables = ["shop.*"]

[targets.pg]
type = "postgres"
url = "postgres://tidewater@127.0.0.1:5432/warehouse"
[targets.maria]
type = "mysql"
url = "mysql://tidewater@127.0.0.1:3307/replica"
[targets.edge]
type = "sqlite"
path = "/tmp/edge.db"

[[pipelines]]
name = "to_pg"
source = "shop"
target = "pg"
[[pipelines]]
name = "to_maria"
source = "shop"
target = "maria"
[[pipelines]]
name = "to_edge"
source = "shop"
target = "edge"
"#;
    let cfg = tidewater::config::parse(text).unwrap_or_else(|e| panic!("refused: {e:?}"));
    assert_eq!(cfg.pipelines.len(), 3);
    assert!(cfg.pipelines.iter().all(|p| p.source.server_id == Some(4201) && p.source.binlog_buffer_mb.is_none()));
    let zero = text.replace("tables = [\"shop.*\"]", "tables = [\"shop.*\"]\nbinlog_buffer_mb = 0");
    let errors = tidewater::config::parse(&zero).expect_err("a zero buffer is refused");
    let text = format!("{errors:?}");
    assert_eq!(text.matches("binlog_buffer_mb").count(), 1, "reported once: {text}");
}
