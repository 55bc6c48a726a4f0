//! The daemon's public face: `tidewater status`, the HTTP endpoints, SIGTERM.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{wait_for, TestPipeline};

const WAIT: Duration = Duration::from_secs(30);

async fn http(port: u16, path: &str) -> Result<String, String> {
    tidewater::http_get(&format!("http://127.0.0.1:{port}{path}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_and_http_endpoints_describe_the_pipeline() {
    let p =
        TestPipeline::new("endpoints", "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)", &["public.t"])
            .await;
    let mut child = p.spawn_process();
    p.wait_state("streaming", WAIT).await;
    p.source_client().await.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();
    p.wait_converged("t", "t", WAIT).await;

    assert_eq!(http(p.status_port, "/healthz").await.unwrap().trim(), "ok");
    assert_eq!(http(p.status_port, "/readyz").await.unwrap().trim(), "ready");
    let metrics = http(p.status_port, "/metrics").await.unwrap();
    let applied = format!("tidewater_events_applied_total{{pipeline=\"{}\"}} ", p.name);
    assert!(metrics.contains(&applied), "{metrics}");
    assert!(metrics.contains(&format!("tidewater_pipeline_state{{pipeline=\"{}\",state=\"streaming\"}} 1", p.name)));
    // The exposition format's content type, as Prometheus expects it.
    let head = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", p.status_port)).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        String::from_utf8_lossy(&response).split("\r\n\r\n").next().unwrap_or_default().to_ascii_lowercase()
    };
    assert!(head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"), "{head}");
    // A StateSet: the other states are there with 0.
    assert!(metrics.contains(&format!("tidewater_pipeline_state{{pipeline=\"{}\",state=\"failed\"}} 0", p.name)));
    assert!(
        metrics.contains(&format!("tidewater_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))),
        "{metrics}"
    );
    let rss = metrics.lines().find_map(|l| l.strip_prefix("process_resident_memory_bytes ")).map(str::trim);
    assert!(rss.and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v > 1e6), "{metrics}");
    for family in ["process_cpu_seconds_total", "process_start_time_seconds", "process_open_fds"] {
        assert!(metrics.contains(&format!("\n{family} ")), "{family}: {metrics}");
    }
    for family in ["tidewater_batch_events", "tidewater_apply_duration_seconds"] {
        assert!(metrics.contains(&format!("# TYPE {family} histogram")), "{metrics}");
        let count_line = format!("{family}_count{{pipeline=\"{}\"}} ", p.name);
        let count: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&count_line))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{count_line} missing: {metrics}"));
        assert!(count >= 1, "{family} observed the applied batch");
    }
    for family in ["lag_seconds", "lag_bytes", "retries_total", "dead_letters_total", "transactions_applied_total"] {
        assert!(metrics.contains(&format!("tidewater_{family}{{pipeline=\"{}\"}}", p.name)), "{family}: {metrics}");
    }

    let json: serde_json::Value = serde_json::from_str(&http(p.status_port, "/status").await.unwrap()).unwrap();
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert!(json["uptime_secs"].is_u64());
    let keys: Vec<&str> = json["pipelines"][0].as_object().unwrap().keys().map(String::as_str).collect();
    for key in [
        "name",
        "state",
        "source_position",
        "applied_position",
        "lag_bytes",
        "lag_seconds",
        "last_applied_at",
        "events_applied_total",
        "transactions_applied_total",
        "dead_letters_total",
        "retries_total",
        "last_error",
    ] {
        assert!(keys.contains(&key), "/status lacks {key}: {json}");
    }

    let url = format!("http://127.0.0.1:{}", p.status_port);
    let out = Command::new(env!("CARGO_BIN_EXE_tidewater")).args(["status", "--url", &url]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("PIPELINE") && text.contains(&p.name) && text.contains("streaming"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_tidewater")).args(["status", "--json", "--url", &url]).output().unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(parsed["pipelines"][0]["name"], p.name.as_str());

    // SIGTERM: a clean stop, exit 0, promptly.
    let stopped_at = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = wait_for("daemon exits after SIGTERM", WAIT, || {
        let s = child.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(status.success(), "exit status after SIGTERM: {status:?}; log: {}", p.daemon_log());
    assert!(stopped_at.elapsed() < Duration::from_secs(12));
    // The status command against a stopped daemon says so and exits 1.
    let out = Command::new(env!("CARGO_BIN_EXE_tidewater")).args(["status", "--url", &url]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is tidewater running"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_pipeline_makes_readyz_503_and_the_exit_code_1() {
    let p = TestPipeline::new("readyfail", "CREATE TABLE t (id int PRIMARY KEY)", &["public.t"]).await;
    std::fs::write(p.dir.path().join("pw"), "wrong").unwrap();
    let mut child = p.spawn_process();
    p.wait_state("failed", WAIT).await;
    let readyz = http(p.status_port, "/readyz").await;
    assert!(readyz.unwrap_err().contains("503"));
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = wait_for("daemon exits", WAIT, || {
        let s = child.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert_eq!(status.code(), Some(1), "a failed pipeline makes the exit code 1");
}

#[test]
fn bad_usage_exits_2_and_bad_config_exits_1() {
    let out = Command::new(env!("CARGO_BIN_EXE_tidewater")).args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, "[status]\nlisten = \"not an address\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidewater")).args(["run", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("status.listen") && err.contains("pipelines"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .args(["check", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_token_protects_data_endpoints_but_not_healthz() {
    let p = TestPipeline::new("token", "CREATE TABLE t (id int PRIMARY KEY)", &["public.t"]).await;
    let token_path = p.dir.path().join("token");
    std::fs::write(&token_path, "s3cret-token\n").unwrap();
    let text = p.config_text().replace("[status]\n", &format!("[status]\ntoken_file = \"{}\"\n", token_path.display()));
    let cfg = tidewater::config::parse(&text).unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let daemon = tokio::spawn(tidewater::run(cfg, rx));
    let base = format!("http://127.0.0.1:{}", p.status_port);
    wait_for("status server up", WAIT, || async { http(p.status_port, "/healthz").await.ok() }).await;
    for path in ["/status", "/metrics", "/readyz"] {
        let err = http(p.status_port, path).await.unwrap_err();
        assert!(err.contains("401"), "{path} without token: {err}");
        let wrong = tidewater::http_get_with_token(&format!("{base}{path}"), Some("nope")).await.unwrap_err();
        assert!(wrong.contains("401"), "{path} with a wrong token: {wrong}");
    }
    let body = wait_for("status with the token", WAIT, || async {
        tidewater::http_get_with_token(&format!("{base}/status"), Some("s3cret-token")).await.ok()
    })
    .await;
    assert!(body.contains(&p.name));
    assert!(http(p.status_port, "/").await.unwrap().contains("token-form"), "the page itself is open");
    let out = Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .args(["status", "--url", &base, "--token-file"])
        .arg(&token_path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&p.name));
    stop.send(true).unwrap();
    daemon.await.unwrap().unwrap();
}
