//! The documented setup works as written: dist/tidewater.service's ExecStartPre and
//! ExecStart lines, run with the credentials laid out as the README creates them
//! (`LoadCredential=` files in `$CREDENTIALS_DIRECTORY`) and config.example.toml with only
//! its server addresses and TLS mode changed, start and sync against throwaway servers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{wait_for, TestPipeline, REPLICATOR_PASSWORD, REPLICATOR_USER};

const WAIT: Duration = Duration::from_secs(60);
const UNIT: &str = include_str!("../../dist/tidewater.service");
const EXAMPLE: &str = include_str!("../../config.example.toml");
const README: &str = include_str!("../../README.md");
const INSTALLED_BINARY: &str = "/usr/local/bin/tidewater";
const INSTALLED_CONFIG: &str = "/etc/tidewater/tidewater.toml";

/// The values of `key=` lines in the unit's [Service] section.
fn unit_values(key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    UNIT.lines().filter_map(|l| l.trim().strip_prefix(&prefix)).map(str::to_string).collect()
}

/// A unit command line as this test runs it: the built binary, the test's config.
fn command(line: &str, config: &Path) -> Command {
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.first().copied(), Some(INSTALLED_BINARY), "{line}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidewater"));
    for word in &words[1..] {
        if *word == INSTALLED_CONFIG {
            cmd.arg(config);
        } else {
            cmd.arg(word);
        }
    }
    // Only what the unit sets: no RUST_LOG from the test's environment either.
    cmd.env_remove("RUST_LOG").env_remove("JOURNAL_STREAM");
    for env in unit_values("Environment") {
        let (k, v) = env.split_once('=').expect("Environment=KEY=VALUE");
        cmd.env(k, v);
    }
    cmd
}

/// `LoadCredential=NAME:PATH` lines.
fn credentials() -> Vec<(String, String)> {
    unit_values("LoadCredential")
        .iter()
        .map(|v| {
            let (name, path) = v.split_once(':').expect("LoadCredential=NAME:PATH");
            (name.to_string(), path.to_string())
        })
        .collect()
}

#[test]
fn unit_readme_and_example_agree_on_credentials_and_logging() {
    let creds = credentials();
    let names: Vec<&str> = creds.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["app_pw", "warehouse_pw"], "the unit loads a password for the source and the target");
    for (name, path) in &creds {
        assert!(README.contains(path.as_str()), "the README creates {path} (LoadCredential {name})");
        assert!(
            EXAMPLE.contains(&format!("password_file = \"$CREDENTIALS_DIRECTORY/{name}\"")),
            "config.example.toml reads {name} from $CREDENTIALS_DIRECTORY"
        );
    }
    assert!(!UNIT.contains("RUST_LOG="), "RUST_LOG in the unit would override log.level");
    let pre = unit_values("ExecStartPre");
    assert_eq!(pre.len(), 1);
    assert!(pre[0].contains("check --offline"), "ExecStartPre does not connect: {}", pre[0]);
    assert!(!README.contains("../shared"), "the README stands alone");
}

/// config.example.toml pointed at this test's servers; nothing else changes.
fn example_config(p: &TestPipeline) -> String {
    let replaced = EXAMPLE
        .replace("listen = \"127.0.0.1:8790\"", &format!("listen = \"127.0.0.1:{}\"", p.status_port))
        .replace(
            "url = \"postgres://replicator@127.0.0.1:5432/app\"",
            &format!("url = \"postgres://{REPLICATOR_USER}@127.0.0.1:{}/{}\"", p.source.port, p.source_db),
        )
        .replace(
            "url = \"postgres://tidewater@127.0.0.1:5432/warehouse\"",
            &format!("url = \"postgres://{REPLICATOR_USER}@127.0.0.1:{}/{}\"", p.target.port, p.target_db),
        )
        // The throwaway servers have no TLS.
        .replace("sslmode = \"require\"", "sslmode = \"prefer\"");
    assert_eq!(replaced.matches(&p.source_db).count(), 1, "the example's source URL was found");
    assert_eq!(replaced.matches(&p.target_db).count(), 1, "the example's target URL was found");
    replaced
}

fn credentials_dir(root: &Path) -> PathBuf {
    let dir = root.join("credentials");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, _) in credentials() {
        std::fs::write(dir.join(&name), REPLICATOR_PASSWORD).unwrap();
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unit_starts_and_syncs_with_the_documented_credentials_and_example_config() {
    let p = TestPipeline::new(
        "unitsetup",
        "CREATE TABLE orders (id int PRIMARY KEY, item text); CREATE TABLE customers (id int PRIMARY KEY, name text); \
         INSERT INTO orders VALUES (1, 'kettle'); INSERT INTO customers VALUES (1, 'Ada')",
        &[],
    )
    .await;
    let config = p.dir.path().join("tidewater.toml");
    std::fs::write(&config, example_config(&p)).unwrap();
    let creds = credentials_dir(p.dir.path());

    let pre = &unit_values("ExecStartPre")[0];
    let out = command(pre, &config).env("CREDENTIALS_DIRECTORY", &creds).output().unwrap();
    assert!(
        out.status.success(),
        "ExecStartPre: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A missing credential is named by the same check.
    std::fs::remove_file(creds.join("warehouse_pw")).unwrap();
    let out = command(pre, &config).env("CREDENTIALS_DIRECTORY", &creds).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("targets.warehouse.password_file") && said.contains("warehouse_pw"), "{said}");
    std::fs::write(creds.join("warehouse_pw"), REPLICATOR_PASSWORD).unwrap();

    let log = std::fs::File::create(p.dir.path().join("daemon.log")).unwrap();
    let start = &unit_values("ExecStart")[0];
    let mut child =
        command(start, &config).env("CREDENTIALS_DIRECTORY", &creds).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let state = wait_for("the unit's pipeline streams", WAIT, || async {
        let state = p.status().await.map(|s| s["state"].clone());
        state.filter(|s| s == "streaming" || s == "failed")
    })
    .await;
    assert_eq!(state, "streaming", "log: {}", p.daemon_log());
    p.source_client().await.batch_execute("INSERT INTO orders VALUES (2, 'teapot')").await.unwrap();
    p.wait_converged("orders", "replica.orders", WAIT).await;
    p.wait_converged("customers", "public.customers", WAIT).await;
    // JSON lines on a non-terminal stderr, at the example's level (info: no debug lines).
    let log = p.daemon_log();
    assert!(log.contains("\"level\":\"INFO\"") && !log.contains("\"level\":\"DEBUG\""), "log: {log}");

    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = wait_for("the daemon exits after SIGTERM", WAIT, || {
        let s = child.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(status.success(), "exit after SIGTERM: {status:?}; log: {}", p.daemon_log());
}
