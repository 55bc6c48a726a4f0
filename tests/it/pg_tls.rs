//! TLS to PostgreSQL: a throwaway server of its own with `ssl = on`, a certificate from a
//! CA made here, and a pg_hba.conf with only `hostssl` lines (so plaintext TCP logins are
//! refused). Covers sslmode verify-full end to end (snapshot, streaming, every daemon
//! connection encrypted, the walsender included), the failures of `disable` and of an
//! untrusted CA, SCRAM-SHA-256-PLUS channel binding on both connection kinds, and that
//! the password appears in no log and not in `/status`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tokio::sync::OnceCell;

use tidewater_postgres::conn::{connect, PgEndpoint};
use tidewater_postgres::replication::{ReplicationConfig, ReplicationConnection};
use tidewater_postgres::{SslMode, TlsSettings};

use crate::support::pg::start_custom_server;
use crate::support::{free_port, wait_for, PgServer};

const WAIT: Duration = Duration::from_secs(60);
/// The login of the TLS tests: distinctive, so a leak is found by a plain search.
const USER: &str = "tls_replicator";
const PASSWORD: &str = "tw-TLS-s3cret-8d41c07e";

/// Only TLS over TCP; the unix socket (for psql setup) stays trusted.
const PG_HBA: &str = "\
local   all          all                  trust
local   replication  all                  trust
hostssl all          all   127.0.0.1/32   scram-sha-256
hostssl replication  all   127.0.0.1/32   scram-sha-256
";

struct TlsServer {
    server: PgServer,
    /// PEM of the CA that signed the server certificate.
    ca_file: PathBuf,
    /// PEM of another CA, which signed nothing the server uses.
    wrong_ca_file: PathBuf,
}

static SERVER: OnceCell<Result<TlsServer, String>> = OnceCell::const_new();

/// Builds the CA and server certificate, then starts the TLS-only server (once).
async fn tls_server() -> &'static TlsServer {
    let res = SERVER
        .get_or_init(|| async { tokio::task::spawn_blocking(start_tls_server).await.map_err(|e| e.to_string())? })
        .await;
    match res {
        Ok(s) => s,
        Err(e) => panic!("could not start the TLS PostgreSQL server: {e}"),
    }
}

fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

fn start_tls_server() -> Result<TlsServer, String> {
    let ca = ca("tidewater test CA");
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .map_err(|e| e.to_string())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &ca).map_err(|e| e.to_string())?;
    let cert_pem = cert.pem();
    let key_pem = key.serialize_pem();
    let server = start_custom_server(
        "tls",
        &[("server.crt", cert_pem.as_bytes()), ("server.key", key_pem.as_bytes())],
        PG_HBA,
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nlog_connections = on\n",
    )?;
    server.psql(
        "postgres",
        &format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE {USER} LOGIN REPLICATION PASSWORD '{PASSWORD}'"
        ),
    )?;
    let client_dir = server.root_dir().join("client");
    std::fs::create_dir_all(&client_dir).map_err(|e| e.to_string())?;
    let ca_file = client_dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).map_err(|e| e.to_string())?;
    let wrong_ca_file = client_dir.join("wrong-ca.pem");
    std::fs::write(&wrong_ca_file, self::ca("not the server's CA").pem()).map_err(|e| e.to_string())?;
    Ok(TlsServer { server, ca_file, wrong_ca_file })
}

impl TlsServer {
    /// A new database owned by [`USER`] (and its schema public), created over the unix socket.
    fn fresh_db(&self, name: &str) -> String {
        let db = format!("tls_{name}_{}", std::process::id());
        self.server.psql("postgres", &format!("CREATE DATABASE {db} OWNER {USER}")).unwrap();
        self.server.psql(&db, &format!("ALTER SCHEMA public OWNER TO {USER}")).unwrap();
        db
    }

    fn endpoint(&self, db: &str, mode: SslMode, ca_file: Option<&Path>) -> PgEndpoint {
        PgEndpoint {
            host: "127.0.0.1".into(),
            port: self.server.port,
            user: USER.into(),
            password: Some(PASSWORD.into()),
            database: db.into(),
            application_name: "tls-test".into(),
            tls: TlsSettings::new(mode, ca_file).unwrap(),
        }
    }

    /// A verified TLS connection through tidewater's own client code.
    async fn client(&self, db: &str) -> tokio_postgres::Client {
        connect(&self.endpoint(db, SslMode::VerifyFull, Some(&self.ca_file))).await.unwrap()
    }

    /// `[sources.src]` + `[targets.dst]` + one pipeline, written to `dir/tidewater.toml`.
    #[allow(clippy::too_many_arguments)]
    fn config(
        &self,
        dir: &Path,
        status_port: u16,
        pipeline: &str,
        source_db: &str,
        target_db: &str,
        tls_lines: &str,
        level: &str,
    ) -> PathBuf {
        let pw = dir.join("pw");
        std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        let text = format!(
            r#"
[status]
listen = "127.0.0.1:{status_port}"

[log]
format = "text"
level = "{level}"

[sources.src]
type = "postgres"
url = "postgres://{USER}@127.0.0.1:{port}/{source_db}"
password_file = "{pw}"
tables = ["public.t"]
{tls_lines}

[targets.dst]
type = "postgres"
url = "postgres://{USER}@127.0.0.1:{port}/{target_db}"
password_file = "{pw}"
{tls_lines}

[[pipelines]]
name = "{pipeline}"
source = "src"
target = "dst"
max_batch_delay_ms = 20
"#,
            port = self.server.port,
            pw = pw.display(),
        );
        let path = dir.join("tidewater.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn tidewater(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidewater")).args(args).arg("--config").arg(config).output().unwrap()
}

/// The daemon as a child process, killed (by its pid) if the test ends early.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

async fn rows(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    client
        .query(&format!("SELECT t::text FROM {table} t ORDER BY 1"), &[])
        .await
        .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect())
        .unwrap_or_default()
}

/// Test (1) and (5): verify-full end to end with the daemon as a process; every daemon
/// connection is encrypted, and the password shows up in no output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_streams_over_tls_and_never_shows_the_password() {
    let tls = tls_server().await;
    let source_db = tls.fresh_db("src");
    let target_db = tls.fresh_db("dst");
    let src = tls.client(&source_db).await;
    src.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one'), (2, 'two')")
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let status_port = free_port();
    let pipeline = "tls_e2e";
    // debug: even the chattiest level must not reveal the password.
    let tls_lines = format!("sslmode = \"verify-full\"\nssl_ca_file = \"{}\"", tls.ca_file.display());
    let config = tls.config(dir.path(), status_port, pipeline, &source_db, &target_db, &tls_lines, "debug");

    // check: every connection uses TLS, the replication one with channel binding.
    let out = tidewater(&["check"], &config);
    let check = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{check}");
    let connect_lines: Vec<&str> = check.lines().filter(|l| l.contains("connected to")).collect();
    assert_eq!(connect_lines.len(), 2, "{check}");
    assert!(connect_lines.iter().all(|l| l.contains("(TLS TLSv1.")), "{check}");
    assert!(check.contains("sslmode=verify-full"), "{check}");
    let repl_line = check.lines().find(|l| l.contains("replication connection")).unwrap_or_default();
    assert!(repl_line.contains("TLS TLSv1.") && repl_line.contains("SCRAM-SHA-256-PLUS"), "{check}");
    assert!(!check.contains(PASSWORD), "check output shows the password:\n{check}");

    let log_path = dir.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_tidewater"))
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    let dst = tls.client(&target_db).await;
    let snapshot = ["(1,one)".to_owned(), "(2,two)".to_owned()];
    wait_for("snapshot rows in the target", WAIT, || async { (rows(&dst, "t").await == snapshot).then_some(()) }).await;
    src.batch_execute("INSERT INTO t VALUES (3, 'three'); UPDATE t SET v = 'uno' WHERE id = 1").await.unwrap();
    let want = ["(1,uno)".to_owned(), "(2,two)".to_owned(), "(3,three)".to_owned()];
    wait_for("streamed changes in the target", WAIT, || async { (rows(&dst, "t").await == want).then_some(()) }).await;

    // As the server sees it: every tidewater backend (source catalog/lag connection,
    // walsender, target sink) is encrypted.
    let sessions = tls
        .server
        .psql(
            "postgres",
            "SELECT a.datname || ' ' || a.backend_type || CASE WHEN s.ssl THEN ' tls' ELSE ' PLAIN' END \
             FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name LIKE 'tidewater%' ORDER BY 1",
        )
        .unwrap();
    let sessions: Vec<&str> = sessions.lines().collect();
    assert!(sessions.len() >= 3, "expected source, walsender and target sessions: {sessions:?}");
    assert!(sessions.iter().all(|l| l.ends_with(" tls")), "a plaintext tidewater session: {sessions:?}");
    assert!(sessions.iter().any(|l| l.starts_with(&format!("{source_db} walsender"))), "{sessions:?}");
    assert!(sessions.iter().any(|l| l.starts_with(&format!("{target_db} client backend"))), "{sessions:?}");
    let walsender = tls
        .server
        .psql(
            "postgres",
            &format!(
                "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
                 WHERE r.application_name = 'tidewater_{pipeline}'"
            ),
        )
        .unwrap();
    assert_eq!(walsender.trim(), "t", "the replication connection is not encrypted");

    let status = tidewater::http_get(&format!("http://127.0.0.1:{status_port}/status")).await.unwrap();
    assert!(status.contains(pipeline), "{status}");
    assert!(!status.contains(PASSWORD), "/status shows the password: {status}");
    let metrics = tidewater::http_get(&format!("http://127.0.0.1:{status_port}/metrics")).await.unwrap();
    assert!(!metrics.contains(PASSWORD), "/metrics shows the password");

    assert!(Command::new("kill").args(["-TERM", &daemon.0.id().to_string()]).status().unwrap().success());
    let exit = wait_for("daemon exits after SIGTERM", WAIT, || {
        let s = daemon.0.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(exit.success(), "{exit:?}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("streaming started"), "the daemon log looks empty:\n{log}");
    assert!(!log.contains(PASSWORD), "the daemon log shows the password");
    // Server notices of the idempotent migrations ("already exists, skipping") are not
    // info-level news.
    let loud = log.lines().filter(|l| l.contains("skipping") && !l.contains("DEBUG")).collect::<Vec<_>>();
    assert!(loud.is_empty(), "server notices logged above debug: {loud:?}");
    // Nor in the server's log of the connections (log_connections = on).
    assert!(!std::fs::read_to_string(tls.server.log_file()).unwrap_or_default().contains(PASSWORD));
}

/// Test (2): sslmode = disable cannot log in to a TLS-only server; check says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_against_a_tls_only_server_fails_clearly() {
    let tls = tls_server().await;
    let source_db = tls.fresh_db("dis_src");
    let target_db = tls.fresh_db("dis_dst");
    tls.server.psql(&source_db, &format!("SET ROLE {USER}; CREATE TABLE t (id int PRIMARY KEY)")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config =
        tls.config(dir.path(), free_port(), "tls_disable", &source_db, &target_db, "sslmode = \"disable\"", "info");
    let out = tidewater(&["check"], &config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("[FAIL]"), "{text}");
    assert!(text.contains("no encryption"), "{text}");
    assert!(text.contains("the server only accepts TLS connections from here: set sslmode"), "{text}");
    assert!(!text.contains(PASSWORD));
}

/// Test (3): verify-full with a CA that did not sign the server certificate: check fails
/// naming the CA file, and the daemon fails the pipeline instead of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_wrong_ca_fails_with_a_certificate_error() {
    let tls = tls_server().await;
    let source_db = tls.fresh_db("ca_src");
    let target_db = tls.fresh_db("ca_dst");
    tls.server.psql(&source_db, &format!("SET ROLE {USER}; CREATE TABLE t (id int PRIMARY KEY)")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let status_port = free_port();
    let tls_lines = format!("sslmode = \"verify-full\"\nssl_ca_file = \"{}\"", tls.wrong_ca_file.display());
    let config = tls.config(dir.path(), status_port, "tls_wrong_ca", &source_db, &target_db, &tls_lines, "info");

    let out = tidewater(&["check"], &config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let expected = format!("not signed by a CA in ssl_ca_file {}", tls.wrong_ca_file.display());
    assert_eq!(text.matches(&expected).count(), 2, "source and target both fail on the certificate: {text}");
    assert!(text.contains("server certificate was rejected"), "{text}");

    let cfg = tidewater::config::load(&config).unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(tidewater::run(cfg, rx));
    let url = format!("http://127.0.0.1:{status_port}/status");
    let failed = wait_for("pipeline failed on the certificate", WAIT, || async {
        let body = tidewater::http_get(&url).await.ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let p = json["pipelines"][0].clone();
        (p["state"] == "failed").then_some(p)
    })
    .await;
    let error = failed["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("not signed by a CA in ssl_ca_file"), "{failed}");
    assert_eq!(failed["retries_total"], 0, "a certificate error is not retried: {failed}");
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
}

/// Test (4): over TLS both connection kinds authenticate with SCRAM-SHA-256-PLUS. The
/// server checks the channel-binding data against its own certificate, so a login that
/// succeeds with PLUS proves the `tls-server-end-point` hash is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_channel_binding_is_used_over_tls() {
    let tls = tls_server().await;
    let db = tls.fresh_db("cb");

    // Replication connection: the mechanism it chose.
    for (mode, ca) in [(SslMode::VerifyFull, Some(tls.ca_file.as_path())), (SslMode::Require, None)] {
        let ep = tls.endpoint(&db, mode, ca);
        let cfg = ReplicationConfig {
            host: ep.host.clone(),
            port: ep.port,
            user: ep.user.clone(),
            password: ep.password.clone(),
            database: ep.database.clone(),
            application_name: ep.application_name.clone(),
            connect_timeout: Duration::from_secs(10),
            tls: ep.tls.clone(),
        };
        let conn = ReplicationConnection::connect(&cfg).await.unwrap();
        assert_eq!(conn.auth_method(), "SCRAM-SHA-256-PLUS", "{mode}");
        assert!(conn.tls().is_some_and(|t| t.starts_with("TLSv1.")), "{mode}: {:?}", conn.tls());
        conn.close().await.unwrap();
    }

    // Ordinary connection: tokio-postgres with channel binding *required* fails unless
    // our TLS stream provides the binding and the server accepts it.
    let ep = tls.endpoint(&db, SslMode::VerifyFull, Some(&tls.ca_file));
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(ep.port)
        .user(USER)
        .password(PASSWORD)
        .dbname(&db)
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .channel_binding(tokio_postgres::config::ChannelBinding::Require);
    let (client, connection) = config.connect(ep.tls.connector().unwrap()).await.unwrap();
    tokio::spawn(connection);
    let ssl: bool =
        client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0);
    assert!(ssl);

    // prefer against a server that offers TLS: encrypted too.
    let client = connect(&tls.endpoint(&db, SslMode::Prefer, None)).await.unwrap();
    assert!(tidewater_postgres::conn::tls_in_use(&client).await.unwrap().is_some());
}
