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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_added_to_config_later_is_copied_then_streamed() {
    let mut p = TestPipeline::new(
        "addtable",
        "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text); \
         INSERT INTO a VALUES (1, 'a1'); INSERT INTO b SELECT g, 'b' || g FROM generate_series(1, 300) g;",
        &["public.a"],
    )
    .await;
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    p.wait_converged("a", "a", CONVERGE).await;
    daemon.stop().await;

    // While stopped: more rows in b, then b joins the configuration.
    let src = p.source_client().await;
    src.batch_execute("INSERT INTO b VALUES (301, 'while stopped'); DELETE FROM b WHERE id = 1").await.unwrap();
    p.tables.push("public.b".into());
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    src.batch_execute("UPDATE b SET v = 'after restart' WHERE id = 2; INSERT INTO a VALUES (2, 'a2')").await.unwrap();
    let rows = p.wait_converged("b", "b", CONVERGE).await;
    assert_eq!(rows.len(), 300);
    assert!(rows.contains(&"(2,\"after restart\")".to_string()), "{rows:?}");
    p.wait_converged("a", "a", CONVERGE).await;
    let copied: i64 = p
        .target_client()
        .await
        .query_one("SELECT count(*) FROM tidewater_snapshot_tables WHERE pipeline = $1", &[&p.name])
        .await
        .unwrap()
        .get(0);
    assert_eq!(copied, 2, "both tables recorded as copied");
    daemon.stop().await;
}
