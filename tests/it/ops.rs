//! Operating it: the systemd unit, sd_notify messages, the Dockerfile.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{wait_for, TestPipeline};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn systemd_unit_is_rated_2_0_or_better_by_systemd_analyze() {
    let unit = format!("{ROOT}/dist/tidewater.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "ExecStartPre=/usr/local/bin/tidewater check",
        "LoadCredential=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "ProtectSystem=strict",
    ] {
        assert!(text.contains(line), "unit lacks {line}");
    }
    // scripts/install-deps.sh (run by scripts/test.sh) installs systemd-analyze.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&unit)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze is needed (scripts/install-deps.sh installs systemd): {e}"));
    let report = String::from_utf8_lossy(&out.stdout);
    let rating: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for tidewater.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no rating in: {report}"));
    assert!(rating <= 2.0, "exposure {rating} > 2.0:\n{report}");
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_healthcheck() {
    let text = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    let instructions: Vec<&str> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let froms: Vec<&&str> = instructions.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(froms[0].contains(" AS build"), "{froms:?}");
    assert!(instructions.iter().any(|l| l.starts_with("COPY --from=build")), "runtime copies from the build stage");
    let user = instructions.iter().rev().find(|l| l.starts_with("USER ")).expect("a USER instruction");
    assert!(!user.contains("root") && !user.ends_with(" 0"), "{user}");
    assert!(instructions.iter().any(|l| l.starts_with("EXPOSE 8790")));
    assert!(text.contains("HEALTHCHECK") && text.contains("/healthz"));
    assert!(text.contains("/etc/tidewater/tidewater.toml"));
    // The image's command must match the binary's real flags.
    assert!(text.contains(r#"CMD ["run", "--config", "/etc/tidewater/tidewater.toml"]"#));
}

/// Receives sd_notify datagrams until `want` is seen.
fn expect_notify(socket: &UnixDatagram, want: &str, seen: &mut Vec<String>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let found = msg.lines().any(|l| l.starts_with(want));
            seen.push(msg);
            if found {
                return;
            }
        }
    }
    panic!("no {want} within {timeout:?}; got {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_reports_ready_status_watchdog_and_stopping() {
    let p = TestPipeline::new("sdnotify", "CREATE TABLE t (id int PRIMARY KEY)", &["public.t"]).await;
    let socket_path = p.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .args(["run", "--config"])
        .arg(p.config_path())
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = std::sync::Arc::new(socket);
    let s = socket.clone();
    let seen = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        expect_notify(&s, "READY=1", &mut seen, Duration::from_secs(30));
        expect_notify(&s, "WATCHDOG=1", &mut seen, Duration::from_secs(5));
        seen
    })
    .await
    .unwrap();
    let all = seen.join("\n");
    assert!(all.contains("STATUS=1 pipelines: 1 streaming"), "{all}");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let s = socket.clone();
    tokio::task::spawn_blocking(move || expect_notify(&s, "STOPPING=1", &mut Vec::new(), Duration::from_secs(15)))
        .await
        .unwrap();
    let status = wait_for("exit", Duration::from_secs(20), || {
        let s = child.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_pipelines_and_keeps_running_on_a_bad_config() {
    let p = TestPipeline::new(
        "sighup",
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)",
        &["public.a"],
    )
    .await;
    let path = p.config_path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .args(["run", "--config"])
        .arg(&path)
        .stderr(std::fs::File::create(p.dir.path().join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    p.wait_state("streaming", Duration::from_secs(30)).await;
    let hup = |child: &std::process::Child| {
        assert!(Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap().success());
    };
    let names = || async {
        let body = tidewater::http_get(&format!("http://127.0.0.1:{}/status", p.status_port)).await.ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(
            json["pipelines"]
                .as_array()?
                .iter()
                .map(|p| {
                    format!("{}={}", p["name"].as_str().unwrap_or_default(), p["state"].as_str().unwrap_or_default())
                })
                .collect::<Vec<_>>(),
        )
    };

    // Add a second pipeline (table b) in the file, SIGHUP: both run.
    let base = p.config_text();
    let second = format!("\n[[pipelines]]\nname = \"{}_b\"\nsource = \"src_b\"\ntarget = \"dst\"\n", p.name);
    let src_b = base
        .split("[sources.src]")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap()
        .replace("\"public.a\"", "\"public.b\"");
    let with_b = format!("{base}\n[sources.src_b]{src_b}\n{second}");
    std::fs::write(&path, &with_b).unwrap();
    hup(&child);
    let both = format!("{}_b=streaming", p.name);
    wait_for("second pipeline streaming", Duration::from_secs(30), || async {
        names().await.filter(|n| n.len() == 2 && n.contains(&both))
    })
    .await;
    p.source_client().await.batch_execute("INSERT INTO b VALUES (7)").await.unwrap();
    p.wait_converged("b", "b", Duration::from_secs(30)).await;

    // A broken file is rejected; both pipelines keep running.
    std::fs::write(&path, "this is = not [valid toml").unwrap();
    hup(&child);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(child.try_wait().unwrap().is_none(), "daemon still running");
    assert_eq!(names().await.unwrap().len(), 2);
    let log = std::fs::read_to_string(p.dir.path().join("daemon.log")).unwrap();
    assert!(log.contains("new configuration rejected"), "{log}");

    // Remove the first pipeline: only the second remains.
    let only_b = with_b.replacen(
        &format!("[[pipelines]]\nname = \"{}\"\nsource = \"src\"\ntarget = \"dst\"\nmax_batch_delay_ms = 20\n", p.name),
        "",
        1,
    );
    assert_ne!(only_b, with_b, "the first pipeline's section was found");
    std::fs::write(&path, only_b).unwrap();
    hup(&child);
    wait_for("first pipeline removed", Duration::from_secs(30), || async {
        names().await.filter(|n| n.len() == 1 && n[0] == both)
    })
    .await;
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = wait_for("exit", Duration::from_secs(20), || {
        let s = child.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(status.success());
    // Pipeline events carry the pipeline's name and the source position it has applied.
    let log = std::fs::read_to_string(p.dir.path().join("daemon.log")).unwrap();
    let stopped = log.lines().find(|l| l.contains("pipeline stopped")).unwrap_or_else(|| panic!("{log}"));
    assert!(stopped.contains(&format!("pipeline={}", p.name)) && stopped.contains("position=0/"), "{stopped}");
}

/// Runs headless Chromium on `url`; returns the DOM after scripts ran for a few seconds.
pub fn chromium_dump_dom(url: &str, screenshot: Option<&std::path::Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,900",
        "--virtual-time-budget=7000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out =
        cmd.arg(url).output().unwrap_or_else(|e| panic!("headless chromium is needed (apt-get install chromium): {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_pipeline_and_a_lag_chart_in_headless_chromium() {
    let p = TestPipeline::new("dashboard", "CREATE TABLE t (id int PRIMARY KEY)", &["public.t"]).await;
    let daemon = p.start();
    p.wait_state("streaming", Duration::from_secs(30)).await;
    p.source_client().await.batch_execute("INSERT INTO t SELECT generate_series(1, 100)").await.unwrap();
    p.wait_converged("t", "t", Duration::from_secs(30)).await;
    let url = format!("http://127.0.0.1:{}/", p.status_port);
    let page = tidewater::http_get(&url).await.unwrap();
    assert!(!page.contains("http://") && !page.contains("https://"), "the page loads nothing from outside");
    let dom = tokio::task::spawn_blocking(move || chromium_dump_dom(&url, None)).await.unwrap();
    assert!(dom.contains(&format!("data-pipeline=\"{}\"", p.name)), "pipeline row missing: {dom}");
    assert!(dom.contains("class=\"state streaming\""), "state missing: {dom}");
    let points: u32 = dom
        .split("data-points=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("chart has no data-points: {dom}"));
    assert!(points >= 2, "the lag chart has {points} points");
    if let Ok(path) = std::env::var("TIDEWATER_DASHBOARD_SCREENSHOT") {
        let url = format!("http://127.0.0.1:{}/", p.status_port);
        tokio::task::spawn_blocking(move || chromium_dump_dom(&url, Some(std::path::Path::new(&path)))).await.unwrap();
    }
    daemon.stop().await;
}
