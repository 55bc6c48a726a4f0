//! TLS to MariaDB: a server of its own with a certificate from a CA made here and
//! `require_secure_transport=ON`, so every successful TCP login proves TLS. A MariaDB
//! source (snapshot and binlog) read with sslmode verify-full into Postgres and into a
//! MariaDB target on the same TLS server (sink with verify-full), and `tidewater check`
//! with sslmode disable failing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tokio::sync::watch;

use crate::support::mysql::{start_tls_mysql, MyServer, MYSQL_PASSWORD};
use crate::support::{fresh_db, pg_target, wait_for, REPLICATOR_PASSWORD, REPLICATOR_USER};

const WAIT: Duration = Duration::from_secs(30);

fn write_world_readable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// CA, server certificate (for 127.0.0.1 and localhost) and key, in `dir`.
fn make_certs(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "tidewater mysql test CA");
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &ca).unwrap();
    write_world_readable(&dir.join("ca.pem"), &ca.pem());
    write_world_readable(&dir.join("server.crt"), &cert.pem());
    write_world_readable(&dir.join("server.key"), &key.serialize_pem());
}

fn rows(server: &MyServer, sql: &str) -> Vec<String> {
    server.sql(sql).unwrap_or_else(|e| panic!("{e}")).lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_source_and_target_over_verified_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certs(d);
    let server = start_tls_mysql("tls", 3, d.join("ca.pem"), d.join("server.crt"), d.join("server.key")).await;
    assert_eq!(rows(&server, "SELECT @@require_secure_transport"), ["1"]);
    assert_eq!(rows(&server, "SELECT @@have_ssl"), ["YES"]);
    server
        .sql(
            "CREATE DATABASE src CHARACTER SET utf8mb4; CREATE DATABASE dst CHARACTER SET utf8mb4; \
             CREATE TABLE src.t (id INT PRIMARY KEY, v VARCHAR(50)); INSERT INTO src.t VALUES (1, 'snapshot');",
        )
        .unwrap();
    let pg = pg_target().await;
    let pg_db = fresh_db(pg, "mysql_tls").await;
    std::fs::write(d.join("mypw"), MYSQL_PASSWORD).unwrap();
    std::fs::write(d.join("pgpw"), REPLICATOR_PASSWORD).unwrap();
    let status_port = crate::support::free_port();
    let base = 2_000_000 + (std::process::id() % 5000) * 10;
    let ca = d.join("ca.pem");
    let url = server.url("src");
    let source = |n: u32, tls: &str| {
        format!(
            "[sources.src{n}]\ntype = \"mysql\"\nurl = \"{url}\"\npassword_file = \"{pw}\"\nserver_id = {id}\n\
             tables = [\"src.t\"]\n{tls}\n",
            pw = d.join("mypw").display(),
            id = base + n,
        )
    };
    let verify = format!("sslmode = \"verify-full\"\nssl_ca_file = \"{}\"", ca.display());
    let config = format!(
        "[status]\nlisten = \"127.0.0.1:{status_port}\"\n\n{s0}\n{s1}\n\
         [targets.pg]\ntype = \"postgres\"\nurl = \"postgres://{REPLICATOR_USER}@127.0.0.1:{pg_port}/{pg_db}\"\n\
         password_file = \"{pgpw}\"\n\n\
         [targets.my]\ntype = \"mysql\"\nurl = \"{my_url}\"\npassword_file = \"{mypw}\"\n{verify}\n\n\
         [[pipelines]]\nname = \"to_pg\"\nsource = \"src0\"\ntarget = \"pg\"\nmax_batch_delay_ms = 20\n\
         [pipelines.tables]\n\"src.t\" = \"public.t\"\n\n\
         [[pipelines]]\nname = \"to_my\"\nsource = \"src1\"\ntarget = \"my\"\nmax_batch_delay_ms = 20\n\
         [pipelines.tables]\n\"src.t\" = \"public.t\"\n",
        s0 = source(0, &verify),
        s1 = source(1, &verify),
        pg_port = pg.port,
        pgpw = d.join("pgpw").display(),
        my_url = server.url("dst"),
        mypw = d.join("mypw").display(),
    );
    let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
    let cfg = tidewater::config::parse(&config).expect("test config is valid");
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(tidewater::run(cfg, rx));

    let pg_client = pg.admin(&pg_db).await;
    let pg_rows = || async {
        match pg_client.query("SELECT id::text || ':' || v FROM public.t ORDER BY id", &[]).await {
            Ok(rs) => rs.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>(),
            Err(_) => Vec::new(),
        }
    };
    let my_rows = || server.sql("SELECT CONCAT(id, ':', v) FROM dst.t ORDER BY id").unwrap_or_default();
    wait_for("snapshot row in Postgres", WAIT, || async { (pg_rows().await == ["1:snapshot"]).then_some(()) }).await;
    wait_for("snapshot row in MariaDB", WAIT, || async { (my_rows() == "1:snapshot\n").then_some(()) }).await;

    server.sql("INSERT INTO src.t VALUES (2, 'streamed')").unwrap();
    wait_for("streamed row in Postgres", WAIT, || async {
        (pg_rows().await == ["1:snapshot", "2:streamed"]).then_some(())
    })
    .await;
    wait_for("streamed row in MariaDB", WAIT, || async { (my_rows() == "1:snapshot\n2:streamed\n").then_some(()) })
        .await;
    // Every TCP session of the daemon on the server is encrypted (plaintext ones are refused).
    let tcp_sessions = rows(&server, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'replicator'");
    assert_ne!(tcp_sessions, ["0"], "the daemon holds sessions on the TLS server");

    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(30), task).await.unwrap().unwrap().unwrap();

    // sslmode = "disable" against require_secure_transport: check fails, saying why.
    let plain = config.replacen(&verify, "sslmode = \"disable\"", 1);
    let path = d.join("disable.toml");
    std::fs::write(&path, plain).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidewater")).arg("check").arg("--config").arg(&path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    // MariaDB 10.11 answers a plaintext login under require_secure_transport with
    // "Access denied" (1045), not with a TLS-specific error.
    assert!(text.contains("[FAIL] source src0: connect") && text.contains("[1045]"), "{text}");

    // A CA that did not sign the server certificate: the source refuses the server.
    let other = tempfile::tempdir().unwrap();
    make_certs(other.path());
    let wrong = config.replacen(&ca.display().to_string(), &other.path().join("ca.pem").display().to_string(), 1);
    let path = d.join("wrong-ca.toml");
    std::fs::write(&path, wrong).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidewater")).arg("check").arg("--config").arg(&path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("verify-full"), "{text}");
    server.kill9();
}
