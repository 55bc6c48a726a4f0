//! Postgres → Postgres: snapshot, streaming of every operation, status.

use std::time::Duration;

use crate::support::{wait_for, TestPipeline};

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
    let tables = status["tables"].as_array().cloned().unwrap_or_default();
    assert_eq!(tables.len(), 1, "{status}");
    let t = &tables[0];
    assert_eq!(
        (t["name"].as_str(), t["target"].as_str(), t["state"].as_str()),
        (Some("public.orders"), Some("public.orders"), Some("streaming")),
        "{t}"
    );
    assert_eq!(t["rows_copied"], 5000, "{t}");
    assert!(t["rows_estimate"].as_u64().is_some_and(|n| n > 0), "{t}");
    assert!(t["last_error"].is_null(), "{t}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transaction_arrives_whole_with_its_poison_row_dead_lettered() {
    let p = TestPipeline::new(
        "largetx",
        "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, pad text); CREATE TABLE other (id int PRIMARY KEY)",
        &["public.big", "public.other"],
    )
    .await;
    p.target_client()
        .await
        .batch_execute("CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL CHECK (v <> 17777), pad text)")
        .await
        .unwrap();
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    let src = p.source_client().await;
    // 35k rows (several parts), one of them rejected by the target, in one transaction
    // together with a row of another table; then a small transaction.
    src.batch_execute(
        "BEGIN; INSERT INTO big SELECT g, g, repeat('x', 50) FROM generate_series(1, 35000) g; \
         INSERT INTO other VALUES (1); UPDATE big SET v = v + 1 WHERE id <= 10; COMMIT; INSERT INTO other VALUES (2);",
    )
    .await
    .unwrap();
    // Readers of the target never see part of it: the count is 0 until it is all there.
    let dst = p.target_client().await;
    let seen = wait_for("large transaction applied", CONVERGE, || async {
        let n: i64 = dst.query_one("SELECT count(*) FROM big", &[]).await.unwrap().get(0);
        assert!(n == 0 || n == 34999, "saw a partial transaction: {n} rows");
        (n == 34999).then_some(n)
    })
    .await;
    assert_eq!(seen, 34999);
    p.wait_converged("other", "other", CONVERGE).await;
    let (v1, missing): (i32, i64) = {
        let r = dst
            .query_one("SELECT (SELECT v FROM big WHERE id = 1), (SELECT count(*) FROM big WHERE id = 17777)", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((v1, missing), (2, 0));
    let dead: Vec<String> = dst
        .query("SELECT payload->>'id' FROM tidewater_dead_letters", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(dead, vec!["17777"]);
    let status = p.status().await.unwrap();
    assert_eq!(status["dead_letters_total"], 1, "{status}");
    assert_eq!(status["transactions_applied_total"], 2, "{status}");
    assert_eq!(status["events_applied_total"], 35011, "35012 events, one dead-lettered: {status}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transaction_survives_a_daemon_restart_mid_stream() {
    let p = TestPipeline::new("largerestart", "CREATE TABLE big (id int PRIMARY KEY, v int)", &["public.big"]).await;
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    daemon.stop().await;
    let src = p.source_client().await;
    src.batch_execute("INSERT INTO big SELECT g, g FROM generate_series(1, 60000) g").await.unwrap();
    src.batch_execute("UPDATE big SET v = -v WHERE id % 1000 = 0").await.unwrap();
    // Start, let it get into the transaction, stop, start again: all of it, once.
    let daemon = p.start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.stop().await;
    let daemon = p.start();
    let rows = p.wait_converged("big", "big", CONVERGE).await;
    assert_eq!(rows.len(), 60000);
    daemon.stop().await;
}
