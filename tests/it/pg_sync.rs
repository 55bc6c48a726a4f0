//! Postgres → Postgres: snapshot, streaming of every operation, status.

use std::time::Duration;

use crate::support::TestPipeline;

const CONVERGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_stream_delivers_old_and_new_rows_once() {
    let p = TestPipeline::new(
        "snapstream",
        "CREATE TABLE orders (id bigint PRIMARY KEY, item text NOT NULL, qty int); \
         INSERT INTO orders SELECT g, 'item ' || g, g % 7 FROM generate_series(1, 5000) g;",
        &["public.orders"],
    )
    .await;
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    let src = p.source_client().await;
    src.batch_execute("INSERT INTO orders SELECT g, 'new ' || g, 1 FROM generate_series(5001, 5100) g").await.unwrap();
    let rows = p.wait_converged("orders", "orders", CONVERGE).await;
    assert_eq!(rows.len(), 5100);
    let status = p.status().await.unwrap();
    assert_eq!(status["events_applied_total"], 5100, "{status}");
    assert_eq!(status["state"], "streaming");
    assert!(status["lag_seconds"].as_f64().is_some());
    let outcomes = daemon.stop().await;
    assert_eq!(outcomes, vec![tidewater::engine::Outcome::Stopped]);
}
