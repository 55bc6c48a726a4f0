//! Throwaway PostgreSQL 15 servers for integration tests.
//!
//! One "source" and one "target" server are started lazily, once per test
//! binary process, on free TCP ports of 127.0.0.1. Setup uses only blocking
//! `std::process` calls (initdb, pg_ctl, psql over the server's private unix
//! socket), so the global handles never hold tokio objects and can be shared
//! by tests running on different runtimes.
//!
//! Cleanup: before anything else is started, a detached watchdog shell
//! (`setsid sh -c ...`) is spawned. It polls the test process PID and, once
//! the test process is gone (normal exit, panic, abort or kill), stops the
//! postmaster with `pg_ctl -m immediate` and removes the server's temp dir.

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::OnceCell;

pub const REPLICATOR_USER: &str = "replicator";
pub const REPLICATOR_PASSWORD: &str = "replicator-pw";
pub const ADMIN_USER: &str = "postgres";
pub const ADMIN_PASSWORD: &str = "postgres";

/// Default location of the PostgreSQL 15 binaries; override with the
/// `TIDEWATER_PG_BIN` environment variable.
pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Unix user the servers run as when the test process runs as root
/// (initdb/postgres refuse to run as root).
const PG_OS_USER: &str = "postgres";

/// Settings appended to postgresql.conf (port / socket dir are added separately).
const SERVER_SETTINGS: &[(&str, &str)] = &[
    // IPv6 too: URLs with `[::1]` are tested on every connection kind.
    ("listen_addresses", "'127.0.0.1,::1'"),
    ("wal_level", "logical"),
    // Every test pipeline leaves its slot behind (one per test database), and each
    // resync chunk takes a temporary one.
    ("max_replication_slots", "256"),
    ("max_wal_senders", "64"),
    ("max_connections", "300"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "'128MB'"),
    ("wal_sender_timeout", "'60s'"),
    ("log_min_messages", "warning"),
    ("password_encryption", "'scram-sha-256'"),
];

const PG_HBA: &str = "\
# Written by the tidewater test harness.
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
local   replication  all                  trust
host    all          all   127.0.0.1/32   scram-sha-256
host    replication  all   127.0.0.1/32   scram-sha-256
host    all          all   ::1/128        scram-sha-256
host    replication  all   ::1/128        scram-sha-256
";

/// A throwaway PostgreSQL server. Layout of its temp dir (`data_dir.parent()`):
/// `data/` (PGDATA), `sock/` (unix socket dir), `server.log`.
#[derive(Debug)]
pub struct PgServer {
    pub port: u16,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub bin_dir: PathBuf,
}

static SOURCE: OnceCell<Result<PgServer, String>> = OnceCell::const_new();
static TARGET: OnceCell<Result<PgServer, String>> = OnceCell::const_new();

/// The shared source server (started on first use in this process).
pub async fn pg_source() -> &'static PgServer {
    shared_server(&SOURCE, "source").await
}

/// The shared target server (started on first use in this process).
pub async fn pg_target() -> &'static PgServer {
    shared_server(&TARGET, "target").await
}

async fn shared_server(cell: &'static OnceCell<Result<PgServer, String>>, name: &'static str) -> &'static PgServer {
    let res = cell
        .get_or_init(|| async move {
            // Setup is blocking (initdb, pg_ctl); keep it off the async workers.
            match tokio::task::spawn_blocking(move || PgServer::create(name)).await {
                Ok(r) => r,
                Err(e) => Err(format!("setup task for {name} server failed: {e}")),
            }
        })
        .await;
    match res {
        Ok(server) => server,
        Err(e) => panic!("could not start the throwaway PostgreSQL {name} server: {e}"),
    }
}

static DB_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates a fresh, uniquely named database on `server` owned by
/// [`REPLICATOR_USER`] (whose `public` schema is also owned by it) and
/// returns its name.
pub async fn fresh_db(server: &PgServer, prefix: &str) -> String {
    let n = DB_COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let mut clean: String =
        prefix.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    let suffix = format!("_{n}_{pid}");
    // Identifiers are limited to 63 bytes.
    clean.truncate(63 - 2 - suffix.len());
    let name = format!("t_{clean}{suffix}");

    let admin = server.admin("postgres").await;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\" OWNER \"{REPLICATOR_USER}\""))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {}", err_text(&e)));
    drop(admin);

    let db = server.admin(&name).await;
    db.batch_execute(&format!(
        "ALTER SCHEMA public OWNER TO \"{REPLICATOR_USER}\"; \
         GRANT ALL ON SCHEMA public TO \"{REPLICATOR_USER}\";"
    ))
    .await
    .unwrap_or_else(|e| panic!("preparing database {name} failed: {}", err_text(&e)));
    name
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("local_addr of probe listener: {e}")).port()
}

/// Full error text including the server's message (tokio_postgres'
/// `Display` for `db error` hides it).
fn err_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {db}"),
        None => e.to_string(),
    }
}

impl PgServer {
    /// `postgres://user@127.0.0.1:port/db` (no password).
    pub fn url(&self, db: &str, user: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// `postgres://user:password@127.0.0.1:port/db`; `password` must be URL-safe.
    pub fn url_with_password(&self, db: &str, user: &str, password: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// tokio_postgres config for a TCP (SCRAM) connection.
    pub fn config(&self, db: &str, user: &str, password: &str) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.port)
            .dbname(db)
            .user(user)
            .password(password)
            .application_name("tidewater-tests")
            .connect_timeout(Duration::from_secs(10));
        cfg
    }

    /// Connects over TCP (SCRAM); the connection task is spawned on the
    /// current runtime. Returns the error instead of panicking.
    pub async fn try_connect_as(
        &self,
        db: &str,
        user: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = self.config(db, user, password).connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("[test harness] postgres connection ended with error: {e}");
            }
        });
        Ok(client)
    }

    /// Connects over TCP (SCRAM); panics with a clear message on failure.
    /// The connection task lives on the current tokio runtime.
    pub async fn connect_as(&self, db: &str, user: &str, password: &str) -> tokio_postgres::Client {
        match self.try_connect_as(db, user, password).await {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot connect to {} (password auth) : {}\n--- server log tail ---\n{}",
                self.url(db, user),
                err_text(&e),
                self.log_tail(20)
            ),
        }
    }

    /// Superuser connection (`postgres`/`postgres`) over TCP.
    pub async fn admin(&self, db: &str) -> tokio_postgres::Client {
        self.connect_as(db, ADMIN_USER, ADMIN_PASSWORD).await
    }

    /// The temp dir holding data dir, socket dir and log.
    pub fn root_dir(&self) -> &Path {
        self.data_dir.parent().unwrap_or(&self.data_dir)
    }

    pub fn log_file(&self) -> PathBuf {
        self.root_dir().join("server.log")
    }

    /// Last `lines` lines of the server log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.log_file()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Crash-like stop (`pg_ctl stop -m immediate`); blocking.
    pub fn stop_immediate(&self) {
        self.pg_ctl_stop("immediate");
    }

    /// Clean stop (`pg_ctl stop -m fast`); blocking.
    pub fn stop_fast(&self) {
        self.pg_ctl_stop("fast");
    }

    /// Starts the server again (same port and data dir) and waits until it
    /// accepts TCP connections; blocking.
    pub fn start(&self) {
        if let Err(e) = self.pg_ctl_start() {
            panic!("restarting postgres on port {} failed: {e}", self.port);
        }
    }

    /// Runs psql as the superuser over the unix socket; returns stdout.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin_dir.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", ADMIN_USER, "-d", db, "-c", sql])
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("psql failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    fn pg_ctl_stop(&self, mode: &str) {
        let out = pg_tool(&self.bin_dir, "pg_ctl", self.root_dir())
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run pg_ctl stop: {e}"));
        if !out.status.success() {
            panic!(
                "pg_ctl stop -m {mode} (port {}) failed: {}{}",
                self.port,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let out = pg_tool(&self.bin_dir, "pg_ctl", self.root_dir())
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(self.log_file())
            .args(["-w", "-t", "120", "start"])
            .output()
            .map_err(|e| format!("cannot run pg_ctl start: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "pg_ctl start failed ({}): {}{}\n--- server log tail ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(30)
            ));
        }
        // pg_ctl -w already waited for "ready"; double-check the TCP listener.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "postgres started but 127.0.0.1:{} does not accept connections\n{}",
                    self.port,
                    self.log_tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates, configures and starts a new server (blocking).
    fn create(name: &str) -> Result<PgServer, String> {
        let bin_dir =
            std::env::var_os("TIDEWATER_PG_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN));
        if !bin_dir.join("initdb").exists() {
            return Err(format!(
                "{} not found: install postgresql-15 or set TIDEWATER_PG_BIN",
                bin_dir.join("initdb").display()
            ));
        }

        let root = make_root_dir(name)?;
        // Start the watchdog first so even a half-finished setup is cleaned up.
        spawn_watchdog(&bin_dir, &root)?;

        let data_dir = root.join("data");
        let socket_dir = root.join("sock");
        fs::create_dir(&socket_dir).map_err(|e| format!("mkdir {}: {e}", socket_dir.display()))?;
        let pwfile = root.join("pwfile");
        fs::write(&pwfile, format!("{ADMIN_PASSWORD}\n")).map_err(|e| format!("pwfile: {e}"))?;
        chown_for_pg(&root)?;

        let out = pg_tool(&bin_dir, "initdb", &root)
            .arg("-D")
            .arg(&data_dir)
            .args(["-U", ADMIN_USER, "-E", "UTF8", "--locale=C", "-N"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .map_err(|e| format!("cannot run initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let _ = fs::remove_file(&pwfile);

        fs::write(data_dir.join("pg_hba.conf"), PG_HBA).map_err(|e| format!("pg_hba.conf: {e}"))?;
        let mut conf = String::from("\n# --- tidewater test harness ---\n");
        for (k, v) in SERVER_SETTINGS {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        conf.push_str(&format!("unix_socket_directories = '{}'\n", socket_dir.display()));
        append(&data_dir.join("postgresql.conf"), &conf)?;
        chown_for_pg(&root)?;

        // The port may be taken between probing and binding: retry a few times.
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            append(&data_dir.join("postgresql.conf"), &format!("port = {port}\n"))?;
            let server =
                PgServer { port, data_dir: data_dir.clone(), socket_dir: socket_dir.clone(), bin_dir: bin_dir.clone() };
            match server.pg_ctl_start() {
                Ok(()) => {
                    server.bootstrap_roles()?;
                    return Ok(server);
                }
                Err(e) => {
                    let in_use = e.contains("already in use") || e.contains("could not bind");
                    last_err = e;
                    if !in_use {
                        break;
                    }
                }
            }
        }
        Err(last_err)
    }

    fn bootstrap_roles(&self) -> Result<(), String> {
        self.psql(
            "postgres",
            &format!(
                "SET password_encryption = 'scram-sha-256';\
                 ALTER ROLE {ADMIN_USER} PASSWORD '{ADMIN_PASSWORD}';\
                 CREATE ROLE {REPLICATOR_USER} LOGIN REPLICATION PASSWORD '{REPLICATOR_PASSWORD}';"
            ),
        )
        .map(|_| ())
    }
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    let mut f = fs::OpenOptions::new().append(true).open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("write {}: {e}", path.display()))
}

/// True when the effective uid is 0.
fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        if let Ok(status) = fs::read_to_string("/proc/self/status") {
            if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
                // Uid: real effective saved fs
                if let Some(euid) = line.split_whitespace().nth(2) {
                    return euid == "0";
                }
            }
        }
        Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
    })
}

/// Command for a PostgreSQL server tool, run as the `postgres` OS user when we
/// are root. The working directory is `cwd` (must be accessible to that user).
fn pg_tool(bin_dir: &Path, tool: &str, cwd: &Path) -> Command {
    let exe = bin_dir.join(tool);
    let mut cmd = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", PG_OS_USER, "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    cmd.current_dir(cwd).env_remove("PGDATA").env_remove("PGPORT").env_remove("PGHOST").stdin(Stdio::null());
    cmd
}

fn chown_for_pg(dir: &Path) -> Result<(), String> {
    if !running_as_root() {
        return Ok(());
    }
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{PG_OS_USER}:"))
        .arg(dir)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run chown: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("chown -R {PG_OS_USER}: {} failed", dir.display()))
    }
}

/// Creates `<tmp>/tidewater-pg-<name>-<pid>-<nanos>`, usable by the server's
/// OS user. Falls back to /tmp when $TMPDIR is long (unix socket paths are
/// limited to ~107 bytes) or not reachable by the `postgres` user.
fn make_root_dir(name: &str) -> Result<PathBuf, String> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let leaf = format!("tidewater-pg-{name}-{}-{nanos:09}", std::process::id());
    let mut bases = vec![std::env::temp_dir()];
    if bases[0] != Path::new("/tmp") {
        bases.push(PathBuf::from("/tmp"));
    }
    let mut errors = Vec::new();
    for base in bases {
        if base.as_os_str().len() > 50 {
            errors.push(format!("{}: path too long for unix sockets", base.display()));
            continue;
        }
        let root = base.join(&leaf);
        if let Err(e) = fs::create_dir(&root) {
            errors.push(format!("mkdir {}: {e}", root.display()));
            continue;
        }
        if running_as_root() {
            chown_for_pg(&root)?;
            let ok = Command::new("runuser")
                .args(["-u", PG_OS_USER, "--", "test", "-w"])
                .arg(&root)
                .stdin(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                let _ = fs::remove_dir_all(&root);
                errors.push(format!("{} not writable by {PG_OS_USER}", root.display()));
                continue;
            }
        }
        return Ok(root);
    }
    Err(format!("no usable temp dir: {}", errors.join("; ")))
}

/// Detached shell that waits for this test process to disappear, then stops
/// the server (immediate mode) and deletes its temp dir.
fn spawn_watchdog(bin_dir: &Path, root: &Path) -> Result<(), String> {
    const SCRIPT: &str = r#"
test_pid="$1"; pg_ctl="$2"; root="$3"; as_user="$4"
data="$root/data"
while kill -0 "$test_pid" 2>/dev/null; do sleep 1; done
if [ -f "$data/postmaster.pid" ]; then
  if [ -n "$as_user" ]; then
    runuser -u "$as_user" -- "$pg_ctl" -D "$data" -m immediate -w -t 30 stop
  else
    "$pg_ctl" -D "$data" -m immediate -w -t 30 stop
  fi
  if [ -f "$data/postmaster.pid" ]; then
    pm=$(head -n 1 "$data/postmaster.pid" 2>/dev/null)
    [ -n "$pm" ] && kill -9 "$pm" 2>/dev/null
    sleep 1
  fi
fi
rm -rf "$root"
"#;
    let as_user = if running_as_root() { PG_OS_USER } else { "" };
    Command::new("setsid")
        .args(["sh", "-c", SCRIPT, "tidewater-pg-watchdog"])
        .arg(std::process::id().to_string())
        .arg(bin_dir.join("pg_ctl"))
        .arg(root)
        .arg(as_user)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(|_child| ())
        .map_err(|e| format!("cannot spawn cleanup watchdog (setsid sh): {e}"))
}

// ---------------------------------------------------------------- extra servers with custom settings
//
// Added for the TLS tests (tests/it/pg_tls.rs), which need a server of their own.

/// Starts one more throwaway server like the shared ones (same settings, roles and
/// cleanup watchdog), then writes `files` (name, contents) into its data dir with mode
/// 0600 (as PostgreSQL wants for a private key), replaces pg_hba.conf with `pg_hba`,
/// appends `extra_conf` to postgresql.conf and restarts it. Blocking; the caller owns
/// the returned server, which the watchdog removes when the test process ends.
pub fn start_custom_server(
    name: &str,
    files: &[(&str, &[u8])],
    pg_hba: &str,
    extra_conf: &str,
) -> Result<PgServer, String> {
    use std::os::unix::fs::PermissionsExt;

    let server = PgServer::create(name)?;
    for (file, contents) in files {
        let path = server.data_dir.join(file);
        fs::write(&path, contents).map_err(|e| format!("write {}: {e}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    }
    fs::write(server.data_dir.join("pg_hba.conf"), pg_hba).map_err(|e| format!("pg_hba.conf: {e}"))?;
    append(&server.data_dir.join("postgresql.conf"), &format!("\n# --- custom ---\n{extra_conf}\n"))?;
    chown_for_pg(server.root_dir())?;
    server.stop_fast();
    server.pg_ctl_start()?;
    Ok(server)
}
