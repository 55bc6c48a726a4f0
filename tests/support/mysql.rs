//! Throwaway MariaDB servers for integration tests.
//!
//! Like the PostgreSQL servers (see `pg.rs`): one "source" and one "target" server per
//! test process, started lazily on free ports with `mariadb-install-db` + `mariadbd
//! --no-defaults` (its own data dir, socket and port; nothing of the machine's MariaDB
//! is used), with a row binlog (`binlog_format=ROW`, `binlog_row_image=FULL`,
//! `binlog_row_metadata=FULL`) and utf8mb4. A detached watchdog kills the server and
//! removes its directory once the test process is gone.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::OnceCell;

use super::pg::free_port;

pub const MYSQL_USER: &str = "replicator";
pub const MYSQL_PASSWORD: &str = "replicator-pw";
/// OS user mariadbd runs as when the tests run as root.
const MYSQL_OS_USER: &str = "mysql";

#[derive(Debug)]
pub struct MyServer {
    pub port: u16,
    pub root: PathBuf,
    pub socket: PathBuf,
    /// `server_id` of this server (the binlog source's own id).
    pub server_id: u32,
}

static SOURCE: OnceCell<Result<MyServer, String>> = OnceCell::const_new();
static TARGET: OnceCell<Result<MyServer, String>> = OnceCell::const_new();

/// The shared MariaDB source server (binlog on).
pub async fn mysql_source() -> &'static MyServer {
    shared(&SOURCE, "source", 1).await
}

/// The shared MariaDB target server.
pub async fn mysql_target() -> &'static MyServer {
    shared(&TARGET, "target", 2).await
}

async fn shared(cell: &'static OnceCell<Result<MyServer, String>>, name: &'static str, id: u32) -> &'static MyServer {
    let res = cell
        .get_or_init(|| async move {
            match tokio::task::spawn_blocking(move || MyServer::create(name, id)).await {
                Ok(r) => r,
                Err(e) => Err(format!("setup task for {name} failed: {e}")),
            }
        })
        .await;
    match res {
        Ok(s) => s,
        Err(e) => panic!("could not start the throwaway MariaDB {name} server: {e}"),
    }
}

static DB_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates a fresh, uniquely named database and returns its name.
pub async fn fresh_mysql_db(server: &MyServer, prefix: &str) -> String {
    let n = DB_COUNTER.fetch_add(1, Ordering::Relaxed);
    let clean: String =
        prefix.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).take(30).collect();
    let name = format!("t_{clean}_{n}_{}", std::process::id());
    server.sql(&format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4")).unwrap_or_else(|e| panic!("{e}"));
    name
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

impl MyServer {
    /// `mysql://replicator@127.0.0.1:port/db` (no password).
    pub fn url(&self, db: &str) -> String {
        format!("mysql://{MYSQL_USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// A client connection as the replicator over TCP.
    pub async fn connect(&self, db: &str) -> mysql_async::Conn {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .user(Some(MYSQL_USER))
            .pass(Some(MYSQL_PASSWORD))
            .db_name(Some(db));
        mysql_async::Conn::new(opts).await.unwrap_or_else(|e| panic!("connect to MariaDB {}: {e}", self.port))
    }

    /// Runs SQL as root over the private socket (blocking); returns stdout.
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .args(["--no-defaults", "-uroot", "--batch", "--skip-column-names"])
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-e", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run mariadb client: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("mariadb `{sql}` failed: {}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn create(name: &str, server_id: u32) -> Result<MyServer, String> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let root = PathBuf::from(format!("/tmp/tidewater-my-{name}-{}-{nanos:09}", std::process::id()));
        fs::create_dir_all(root.join("data")).map_err(|e| format!("mkdir {}: {e}", root.display()))?;
        // A private tmpdir: servers sharing /tmp clash on temporary table files.
        fs::create_dir_all(root.join("tmp")).map_err(|e| format!("mkdir {}: {e}", root.display()))?;
        spawn_watchdog(&root)?;
        if running_as_root() {
            let _ = Command::new("chown").arg("-R").arg(format!("{MYSQL_OS_USER}:")).arg(&root).status();
        }
        let mut server = MyServer { port: free_port(), socket: root.join("mysqld.sock"), root, server_id };
        let mut install = Command::new("mariadb-install-db");
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", server.data_dir().display()))
            .arg(format!("--tmpdir={}", server.root.join("tmp").display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .stdin(Stdio::null());
        if running_as_root() {
            install.arg(format!("--user={MYSQL_OS_USER}"));
        }
        let out = install.output().map_err(|e| format!("cannot run mariadb-install-db: {e}"))?;
        if !out.status.success() {
            return Err(format!("mariadb-install-db failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        // The port was free a moment ago; another process may take it first: retry.
        let mut attempt = 0;
        loop {
            match server.start_process() {
                Ok(()) => break,
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    eprintln!("MariaDB {name} did not start on port {} ({e}); retrying on another port", server.port);
                    if let Some(pid) = server.pid() {
                        let _ = Command::new("kill").args(["-9", &pid]).status();
                    }
                    server.port = free_port();
                }
                Err(e) => return Err(e),
            }
        }
        server.sql(&format!(
            "CREATE USER '{MYSQL_USER}'@'%' IDENTIFIED BY '{MYSQL_PASSWORD}'; \
             GRANT ALL PRIVILEGES ON *.* TO '{MYSQL_USER}'@'%'; FLUSH PRIVILEGES;"
        ))?;
        Ok(server)
    }

    fn start_process(&self) -> Result<(), String> {
        let mut cmd = Command::new("mariadbd");
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data_dir().display()))
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--pid-file={}", self.root.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", self.root.join("error.log").display()))
            .arg(format!("--log-bin={}", self.data_dir().join("binlog").display()))
            .arg(format!("--tmpdir={}", self.root.join("tmp").display()))
            .arg(format!("--server-id={}", self.server_id))
            .args([
                // IPv6 too: URLs with `[::1]` are tested (binlog connection included).
                "--bind-address=127.0.0.1,::1",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--binlog-row-metadata=FULL",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=64M",
                "--innodb-flush-log-at-trx-commit=2",
                "--sync-binlog=0",
                "--max-connections=300",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if running_as_root() {
            cmd.arg(format!("--user={MYSQL_OS_USER}"));
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot start mariadbd: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Up on its socket and on its own TCP port (not some other process's).
            if self.sql("SELECT 1").is_ok() {
                let port: Option<u16> = self.sql("SELECT @@port").ok().and_then(|p| p.trim().parse().ok());
                if port == Some(self.port) && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return Ok(());
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("mariadbd exited ({status}); log: {}", self.log_tail(10)));
            }
            if Instant::now() > deadline {
                return Err(format!("mariadbd did not come up; log: {}", self.log_tail(30)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.root.join("error.log")).unwrap_or_default();
        text.lines().rev().take(lines).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn pid(&self) -> Option<String> {
        fs::read_to_string(self.root.join("mysqld.pid")).ok().map(|s| s.trim().to_string())
    }

    /// kill -9 of the server (a crash), waiting until the port is closed.
    pub fn kill9(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = fs::remove_file(self.root.join("mysqld.pid"));
    }

    /// Starts the server again after [`MyServer::kill9`].
    pub fn start(&self) {
        self.start_process().unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Waits for the test process to disappear, then kills the server and deletes its dir.
fn spawn_watchdog(root: &Path) -> Result<(), String> {
    const SCRIPT: &str = r#"
test_pid="$1"; root="$2"
while kill -0 "$test_pid" 2>/dev/null; do sleep 1; done
if [ -f "$root/mysqld.pid" ]; then kill -9 "$(cat "$root/mysqld.pid")" 2>/dev/null; sleep 1; fi
rm -rf "$root"
"#;
    Command::new("setsid")
        .args(["sh", "-c", SCRIPT, "tidewater-mysql-watchdog"])
        .arg(std::process::id().to_string())
        .arg(root)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(|_| ())
        .map_err(|e| format!("cannot spawn cleanup watchdog: {e}"))
}

/// A MariaDB server of its own (not shared), set up like the shared ones, for a test that
/// stops it or counts its connections. It lives as long as the test process.
pub async fn private_mysql(name: &'static str, server_id: u32) -> &'static MyServer {
    match tokio::task::spawn_blocking(move || MyServer::create(name, server_id)).await {
        Ok(Ok(server)) => Box::leak(Box::new(server)),
        Ok(Err(e)) => panic!("could not start the private MariaDB {name} server: {e}"),
        Err(e) => panic!("setup task for the private MariaDB {name} server failed: {e}"),
    }
}

/// A MariaDB server of its own (not shared) with TLS: `ssl_ca`, `ssl_cert`, `ssl_key`
/// set to the given PEM files (readable by the server's OS user) and
/// `require_secure_transport=ON`, so every TCP login must use TLS. Set up like the shared
/// servers, then restarted with the same command line plus the TLS options.
pub async fn start_tls_mysql(name: &'static str, server_id: u32, ca: PathBuf, cert: PathBuf, key: PathBuf) -> MyServer {
    let started = tokio::task::spawn_blocking(move || -> Result<MyServer, String> {
        let server = MyServer::create(name, server_id)?;
        let pid = server.pid().ok_or("no pid file")?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| format!("cmdline of {pid}: {e}"))?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        server.kill9();
        let mut cmd = Command::new(&args[0]);
        cmd.args(&args[1..])
            .arg(format!("--ssl-ca={}", ca.display()))
            .arg(format!("--ssl-cert={}", cert.display()))
            .arg(format!("--ssl-key={}", key.display()))
            .arg("--require-secure-transport=ON")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|e| format!("cannot start mariadbd: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.sql("SELECT 1").is_err() || std::net::TcpStream::connect(("127.0.0.1", server.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("mariadbd with TLS exited ({status}); log: {}", server.log_tail(10)));
            }
            if Instant::now() > deadline {
                return Err(format!("mariadbd with TLS did not come up; log: {}", server.log_tail(30)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    })
    .await;
    match started {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("could not start the TLS MariaDB server: {e}"),
        Err(e) => panic!("setup task for the TLS MariaDB server failed: {e}"),
    }
}
