//! Target outage: the target server is stopped for ~20 s under load. A separate test
//! binary (so a separate pair of throwaway servers): stopping the shared target would
//! disturb other tests.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use support::{pg_target, wait_for, TestPipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_down_20s_shows_retrying_and_growing_lag_then_converges() {
    let mut p = TestPipeline::new(
        "outage",
        "CREATE TABLE ev (id bigint PRIMARY KEY, at timestamptz DEFAULT now())",
        &["public.ev"],
    )
    .await;
    p.pipeline_extra = "[pipelines.retry]\ninitial_ms = 100\nmax_ms = 1000".into();
    let daemon = p.start();
    p.wait_state("streaming", Duration::from_secs(30)).await;

    let src = p.source_client().await;
    let writer = tokio::spawn(async move {
        let start = Instant::now();
        let mut n = 0i64;
        while start.elapsed() < Duration::from_secs(32) {
            n += 1;
            src.execute("INSERT INTO ev (id) VALUES ($1)", &[&n]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        n
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let target = pg_target().await;
    tokio::task::spawn_blocking(|| target.stop_fast()).await.unwrap();
    let down_at = Instant::now();

    let retrying = p.wait_state("retrying", Duration::from_secs(15)).await;
    assert!(retrying["retries_total"].as_u64().unwrap() >= 1, "{retrying}");
    assert!(retrying["last_error"].is_string(), "{retrying}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let early = p.status().await.unwrap();
    let early_lag = early["lag_seconds"].as_f64().unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let late = p.status().await.unwrap();
    let late_lag = late["lag_seconds"].as_f64().unwrap();
    assert_eq!(late["state"], "retrying", "{late}");
    assert!(late_lag >= early_lag + 8.0, "lag grows while the target is down: {early_lag} then {late_lag}");
    assert!(late_lag >= 12.0, "lag is about the outage length: {late_lag} after {:?}", down_at.elapsed());
    assert!(late["lag_bytes"].as_u64().unwrap() > 0, "{late}");

    tokio::task::spawn_blocking(|| target.start()).await.unwrap();
    let written = writer.await.unwrap();
    let rows = p.wait_converged("ev", "ev", Duration::from_secs(60)).await;
    assert_eq!(rows.len() as i64, written);
    let settled = wait_for("lag back to 0", Duration::from_secs(30), || async {
        p.status().await.filter(|s| s["state"] == "streaming" && s["lag_seconds"].as_f64() == Some(0.0))
    })
    .await;
    assert!(settled["retries_total"].as_u64().unwrap() >= 1);
    daemon.stop().await;
}
