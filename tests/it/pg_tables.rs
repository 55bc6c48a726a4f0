//! Postgres → Postgres with the tables users really have: partitioned tables, tables
//! created while streaming, tables without a key.

use std::time::Duration;

use crate::support::{wait_for, TestPipeline};

const CONVERGE: Duration = Duration::from_secs(40);

/// The tables tidewater made in the target, without its bookkeeping tables.
async fn target_tables(p: &TestPipeline) -> Vec<String> {
    p.target_client()
        .await
        .query(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables \
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_name NOT LIKE 'tidewater_%' \
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_table_replicates_as_one_table_also_after_a_partition_is_attached() {
    let p = TestPipeline::new(
        "partitions",
        "CREATE TABLE meas (id bigint, day date, v int, note text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day); \
         CREATE TABLE meas_2024 PARTITION OF meas FOR VALUES FROM ('2024-01-01') TO ('2025-01-01'); \
         CREATE TABLE meas_2025 PARTITION OF meas FOR VALUES FROM ('2025-01-01') TO ('2026-01-01'); \
         CREATE TABLE meas_other PARTITION OF meas DEFAULT; \
         CREATE TABLE other (id int PRIMARY KEY); INSERT INTO other VALUES (1); \
         INSERT INTO meas SELECT g, date '2024-06-01' + (g % 500), g, 'n' || g FROM generate_series(1, 2000) g;",
        &["public.*"],
    )
    .await;
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    p.wait_converged("meas", "meas", CONVERGE).await;
    assert_eq!(target_tables(&p).await, vec!["public.meas", "public.other"], "one target table for the root");
    let status = p.status().await.unwrap();
    let listed: Vec<(&str, u64)> = status["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap_or_default(), t["rows_copied"].as_u64().unwrap_or_default()))
        .collect();
    assert_eq!(listed, vec![("public.meas", 2000), ("public.other", 1)], "/status lists the root, not its partitions");

    let src = p.source_client().await;
    // Rows into every partition, an update that moves a row to another partition, a delete.
    src.batch_execute(
        "INSERT INTO meas VALUES (5001, '2024-02-02', 1, 'a'), (5002, '2025-03-03', 2, 'b'), (5003, '2030-01-01', 3, 'c'); \
         UPDATE meas SET day = '2031-05-05', v = -1 WHERE id = 10; DELETE FROM meas WHERE id = 11; \
         UPDATE meas SET note = 'changed' WHERE id = 12;",
    )
    .await
    .unwrap();
    p.wait_converged("meas", "meas", CONVERGE).await;

    // A table with rows of its own attached as a new partition (the default partition
    // holds no 2026 rows), then written through the root.
    src.batch_execute(
        "CREATE TABLE meas_2026 (id bigint, day date, v int, note text, PRIMARY KEY (id, day)); \
         INSERT INTO meas_2026 SELECT g, date '2026-01-01' + (g % 300), g, 'pre-attach' FROM generate_series(9001, 9200) g; \
         ALTER TABLE meas ATTACH PARTITION meas_2026 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');",
    )
    .await
    .unwrap();
    src.batch_execute(
        "INSERT INTO meas VALUES (9500, '2026-07-07', 7, 'after attach'); UPDATE meas SET v = 0 WHERE id = 9001",
    )
    .await
    .unwrap();
    let rows = p.wait_converged("meas", "meas", CONVERGE).await;
    assert_eq!(rows.len(), 2000 + 3 - 1 + 200 + 1);
    assert_eq!(target_tables(&p).await, vec!["public.meas", "public.other"]);
    // Back to streaming after the restart that followed the attach (never failed).
    let status = p.wait_state("streaming", CONVERGE).await;
    assert!(status["last_error"].is_null(), "{status}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_created_under_the_wildcard_while_streaming_arrives_with_every_row() {
    let p = TestPipeline::new("newtable", "CREATE TABLE busy (id bigserial PRIMARY KEY, v int)", &["public.*"]).await;
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    let src = p.source_client().await;
    // A write load on another table while the new table appears.
    let writer = {
        let src = p.source_client().await;
        tokio::spawn(async move {
            for i in 0..300 {
                src.execute("INSERT INTO busy (v) VALUES ($1)", &[&i]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // Rows in the creating transaction and in the first milliseconds after it.
    src.batch_execute(
        "BEGIN; CREATE TABLE fresh (id int PRIMARY KEY, v text); INSERT INTO fresh VALUES (1, 'in the create tx'); COMMIT; \
         INSERT INTO fresh VALUES (2, 'right after'); UPDATE fresh SET v = 'updated at once' WHERE id = 1;",
    )
    .await
    .unwrap();
    // A keyless one too: nothing doubled although its copy overlaps the stream.
    src.batch_execute(
        "CREATE TABLE fresh_log (at int, what text); ALTER TABLE fresh_log REPLICA IDENTITY FULL; \
         INSERT INTO fresh_log VALUES (1, 'x'), (1, 'x');",
    )
    .await
    .unwrap();
    for i in 3..60 {
        src.execute("INSERT INTO fresh VALUES ($1, 'load')", &[&i]).await.unwrap();
        src.execute("INSERT INTO fresh_log VALUES ($1, 'x')", &[&i]).await.unwrap();
    }
    writer.await.unwrap();
    let rows = p.wait_converged("fresh", "fresh", CONVERGE).await;
    assert_eq!(rows.len(), 59);
    assert!(rows.contains(&"(1,\"updated at once\")".to_string()), "{rows:?}");
    let log = p.wait_converged("fresh_log", "fresh_log", CONVERGE).await;
    assert_eq!(log.len(), 59, "{log:?}");
    p.wait_converged("busy", "busy", CONVERGE).await;
    // Dropped under the wildcard: the pipeline goes on.
    src.batch_execute("DROP TABLE fresh_log; INSERT INTO fresh VALUES (100, 'after drop')").await.unwrap();
    p.wait_converged("fresh", "fresh", CONVERGE).await;
    let status = p.status().await.unwrap();
    assert_eq!(status["state"], "streaming", "{status}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_table_keeps_duplicates_and_changes_exactly_one_of_equal_rows() {
    let p = TestPipeline::new(
        "keyless",
        "CREATE TABLE k (a int, b text, j jsonb); ALTER TABLE k REPLICA IDENTITY FULL; \
         INSERT INTO k VALUES (1, 'x', '{\"n\": 1}'), (1, 'x', '{\"n\": 1}'), (1, 'x', '{\"n\": 1}'), (2, 'y', NULL), (NULL, NULL, NULL);",
        &["public.k"],
    )
    .await;
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    p.wait_converged("k", "k", CONVERGE).await;
    let src = p.source_client().await;
    src.batch_execute(
        "INSERT INTO k VALUES (1, 'x', '{\"n\": 1}'); \
         UPDATE k SET b = 'z' WHERE ctid = (SELECT ctid FROM k WHERE a = 1 LIMIT 1); \
         DELETE FROM k WHERE ctid = (SELECT ctid FROM k WHERE a = 1 AND b = 'x' LIMIT 1); \
         DELETE FROM k WHERE a IS NULL; \
         INSERT INTO k VALUES (3, 'w', '[1, 2]'), (3, 'w', '[1, 2]');",
    )
    .await
    .unwrap();
    let rows = p.wait_converged("k", "k", CONVERGE).await;
    let ones = rows.iter().filter(|r| r.starts_with("(1,x,")).count();
    assert_eq!(ones, 2, "four equal rows, one updated, one deleted: {rows:?}");
    daemon.stop().await;
    // Changes while stopped are applied once after the restart.
    src.batch_execute("UPDATE k SET a = 30 WHERE a = 3; INSERT INTO k VALUES (2, 'y', NULL)").await.unwrap();
    let daemon = p.start();
    let rows = p.wait_converged("k", "k", CONVERGE).await;
    assert_eq!(rows.iter().filter(|r| r.starts_with("(30,w,")).count(), 2, "{rows:?}");
    assert_eq!(rows.len(), 7, "{rows:?}");
    daemon.stop().await;
    // `verify` compares a keyless table as a multiset: equal, then one duplicate short.
    let (ok, text) = crate::it::pg_faults::run_cli(&["verify", "--config"], &p.config_path());
    assert!(ok && text.contains("7 rows match"), "{text}");
    p.target_client()
        .await
        .batch_execute("DELETE FROM k WHERE ctid = (SELECT ctid FROM k WHERE a = 30 LIMIT 1)")
        .await
        .unwrap();
    let (ok, text) = crate::it::pg_faults::run_cli(&["verify", "--config"], &p.config_path());
    assert!(!ok && text.contains("[DIFF]") && text.contains("target 6 rows"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_table_without_full_identity_fails_naming_the_fix() {
    let p = TestPipeline::new("keylessdefault", "CREATE TABLE nokey (a int, b text)", &["public.nokey"]).await;
    let daemon = p.start();
    let status =
        wait_for("pipeline failed", CONVERGE, || async { p.status().await.filter(|s| s["state"] == "failed") }).await;
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("REPLICA IDENTITY FULL") && error.contains("nokey"), "{error}");
    daemon.stop().await;
}

/// URLs with an IPv6 host (`[::1]`): the source's catalog, snapshot and replication
/// connections and the target's connection all go over IPv6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pipeline_over_ipv6_urls() {
    let p = TestPipeline::new(
        "ipv6",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')",
        &["public.t"],
    )
    .await;
    let config = p.config_text().replace("@127.0.0.1:", "@[::1]:");
    assert_eq!(config.matches("@[::1]:").count(), 2, "{config}");
    let daemon = crate::support::daemon::InProcess::start(&config);
    p.wait_state("streaming", CONVERGE).await;
    p.source_client().await.batch_execute("INSERT INTO t VALUES (2, 'over ipv6')").await.unwrap();
    assert_eq!(p.wait_converged("t", "t", CONVERGE).await.len(), 2);
    let over_v6 = p
        .source_client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'tidewater%' AND client_addr = '::1'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert!(over_v6 >= 2, "the catalog and replication connections use IPv6: {over_v6}");
    daemon.stop().await;
}
