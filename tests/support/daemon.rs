//! Drives a tidewater pipeline in tests: fresh source/target databases, a config file,
//! the daemon in-process (via `tidewater::run`) or as a child process, and comparisons of
//! source and target tables.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::pg::{free_port, fresh_db, pg_source, pg_target, PgServer, REPLICATOR_PASSWORD, REPLICATOR_USER};
use super::wait_for;

pub struct TestPipeline {
    pub name: String,
    pub source: &'static PgServer,
    pub target: &'static PgServer,
    pub source_db: String,
    pub target_db: String,
    pub dir: tempfile::TempDir,
    pub status_port: u16,
    /// Extra lines appended to the `[[pipelines]]` section.
    pub pipeline_extra: String,
    /// Replaces the `[targets.dst]` section (e.g. a sqlite or mysql target); `None`: the
    /// fresh Postgres target database.
    pub target_override: Option<String>,
    /// Connect the daemon to these ports instead of the servers' own (e.g. a proxy).
    pub source_port_via: Option<u16>,
    pub target_port_via: Option<u16>,
    pub tables: Vec<String>,
}

pub struct InProcess {
    stop: watch::Sender<bool>,
    pub task: JoinHandle<anyhow::Result<Vec<tidewater::engine::Outcome>>>,
}

impl InProcess {
    /// Runs the daemon in-process with the configuration `config_text`.
    pub fn start(config_text: &str) -> InProcess {
        // Daemon logs go to the test's captured output (shown when a test fails).
        let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
        let cfg = tidewater::config::parse(config_text).expect("test config is valid");
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(tidewater::run(cfg, rx));
        InProcess { stop, task }
    }

    /// Stops the daemon; panics if it had failed to start.
    pub async fn stop(self) -> Vec<tidewater::engine::Outcome> {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("daemon stops within 30 s")
            .expect("daemon task joins")
            .expect("daemon ran")
    }
}

impl TestPipeline {
    /// Fresh databases on the shared source and target servers; `setup_sql` runs on the
    /// source (as the replicator, who owns schema public) before anything else.
    pub async fn new(prefix: &str, setup_sql: &str, tables: &[&str]) -> Self {
        let source = pg_source().await;
        let target = pg_target().await;
        let source_db = fresh_db(source, prefix).await;
        let target_db = fresh_db(target, prefix).await;
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("pw"), REPLICATOR_PASSWORD).expect("write password file");
        let p = TestPipeline {
            name: format!("p_{}", prefix.replace('-', "_")),
            source,
            target,
            source_db,
            target_db,
            dir,
            status_port: free_port(),
            pipeline_extra: String::new(),
            target_override: None,
            source_port_via: None,
            target_port_via: None,
            tables: tables.iter().map(|s| s.to_string()).collect(),
        };
        if !setup_sql.is_empty() {
            p.source_client().await.batch_execute(setup_sql).await.expect("source setup SQL");
        }
        p
    }

    pub fn config_text(&self) -> String {
        let pw = self.dir.path().join("pw");
        let tables = self.tables.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ");
        format!(
            r#"
[status]
listen = "127.0.0.1:{port}"

[log]
format = "text"
level = "info"

[sources.src]
type = "postgres"
url = "postgres://{user}@127.0.0.1:{sport}/{sdb}"
password_file = "{pw}"
tables = [{tables}]

{target}

[[pipelines]]
name = "{name}"
source = "src"
target = "dst"
max_batch_delay_ms = 20
{extra}
"#,
            port = self.status_port,
            user = REPLICATOR_USER,
            sport = self.source_port_via.unwrap_or(self.source.port),
            sdb = self.source_db,
            pw = pw.display(),
            name = self.name,
            extra = self.pipeline_extra,
            target = self.target_override.clone().unwrap_or_else(|| format!(
                "[targets.dst]\ntype = \"postgres\"\nurl = \"postgres://{REPLICATOR_USER}@127.0.0.1:{}/{}\"\npassword_file = \"{}\"",
                self.target_port_via.unwrap_or(self.target.port),
                self.target_db,
                pw.display()
            )),
        )
    }

    /// Writes into database `db` of the MySQL/MariaDB server `server` instead.
    pub fn target_mysql(&mut self, server: &super::mysql::MyServer, db: &str) {
        let pw = self.dir.path().join("mypw");
        std::fs::write(&pw, super::mysql::MYSQL_PASSWORD).expect("write password file");
        self.target_override = Some(format!(
            "[targets.dst]\ntype = \"mysql\"\nurl = \"{}\"\npassword_file = \"{}\"",
            server.url(db),
            pw.display()
        ));
    }

    /// Writes into the SQLite file `file` instead.
    pub fn target_sqlite(&mut self, file: &std::path::Path) {
        self.target_override = Some(format!("[targets.dst]\ntype = \"sqlite\"\npath = \"{}\"", file.display()));
    }

    pub fn config_path(&self) -> PathBuf {
        let path = self.dir.path().join("tidewater.toml");
        std::fs::write(&path, self.config_text()).expect("write config");
        path
    }

    pub async fn source_client(&self) -> tokio_postgres::Client {
        self.source.connect_as(&self.source_db, REPLICATOR_USER, REPLICATOR_PASSWORD).await
    }

    pub async fn target_client(&self) -> tokio_postgres::Client {
        self.target.connect_as(&self.target_db, REPLICATOR_USER, REPLICATOR_PASSWORD).await
    }

    pub fn start(&self) -> InProcess {
        InProcess::start(&self.config_text())
    }

    /// The daemon as a separate process (for kill -9).
    pub fn spawn_process(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("daemon log");
        Command::new(env!("CARGO_BIN_EXE_tidewater"))
            .args(["run", "--config"])
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tidewater")
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub async fn status(&self) -> Option<serde_json::Value> {
        let body = tidewater::http_get(&format!("http://127.0.0.1:{}/status", self.status_port)).await.ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(json["pipelines"][0].clone())
    }

    pub async fn wait_state(&self, state: &str, timeout: Duration) -> serde_json::Value {
        wait_for(&format!("pipeline state {state}"), timeout, || async {
            self.status().await.filter(|p| p["state"] == state)
        })
        .await
    }

    /// Every row of `table` as text, sorted.
    pub async fn rows(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
        client
            .query(&format!("SELECT t::text FROM {table} t ORDER BY 1"), &[])
            .await
            .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect())
            .unwrap_or_default()
    }

    /// Waits until the target's `target_table` holds exactly the source's `source_table`
    /// rows; returns them.
    pub async fn wait_converged(&self, source_table: &str, target_table: &str, timeout: Duration) -> Vec<String> {
        let src = self.source_client().await;
        let dst = self.target_client().await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let a = Self::rows(&src, source_table).await;
            let b = Self::rows(&dst, target_table).await;
            if a == b {
                return a;
            }
            if tokio::time::Instant::now() > deadline {
                let (sa, sb): (std::collections::HashSet<_>, std::collections::HashSet<_>) =
                    (a.iter().collect(), b.iter().collect());
                let only_src: Vec<_> = a.iter().filter(|r| !sb.contains(r)).take(5).collect();
                let only_dst: Vec<_> = b.iter().filter(|r| !sa.contains(r)).take(5).collect();
                panic!(
                    "{source_table} did not converge into {target_table} within {timeout:?}: source {} rows, target {} rows; \
                     only in source (first 5): {only_src:?}; only in target (first 5): {only_dst:?}",
                    a.len(),
                    b.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The slot's confirmed_flush_lsn as a number.
    pub async fn slot_confirmed_flush(&self) -> Option<u64> {
        let admin = self.source.admin(&self.source_db).await;
        let row = admin
            .query_opt(
                "SELECT (confirmed_flush_lsn - '0/0')::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&format!("tidewater_{}", self.name)],
            )
            .await
            .ok()??;
        row.get::<_, Option<String>>(0)?.parse().ok()
    }

    /// The target checkpoint's position as a number (Postgres LSN).
    pub async fn checkpoint_lsn(&self) -> Option<u64> {
        let dst = self.target_client().await;
        let row = dst
            .query_opt(
                "SELECT (source_position::pg_lsn - '0/0')::text FROM tidewater_checkpoints WHERE pipeline = $1",
                &[&self.name],
            )
            .await
            .ok()??;
        row.get::<_, Option<String>>(0)?.parse().ok()
    }
}
