//! MariaDB source, tables users really have: tables created (or renamed) under the
//! `db.*` wildcard while the pipeline streams, keyed and keyless.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::it::mysql_source::MyPipeline;
use crate::support::daemon::InProcess;

/// Every row of `fresh` (keyed) and `fresh_log` (keyless), as `concat_ws` text.
const FRESH_ROW: &str = "concat_ws('|', id, v)";
const LOG_ROW: &str = "concat_ws('|', at, what)";

async fn run(conn: &mut mysql_async::Conn, statements: &str) {
    conn.query_drop(statements).await.unwrap_or_else(|e| panic!("{statements}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_table_created_under_the_wildcard_while_streaming_arrives_with_every_row() {
    let p = MyPipeline::new(
        "mynewtable",
        "CREATE TABLE orders (id BIGINT PRIMARY KEY AUTO_INCREMENT, item VARCHAR(40), qty INT, price DECIMAL(10,2), \
         note TEXT)",
        true,
    )
    .await;
    let db = p.source_db.clone();
    let config = format!(
        "{}\"{db}.fresh\" = \"public.fresh\"\n\"{db}.fresh_log\" = \"public.fresh_log\"\n\"{db}.renamed\" = \"public.renamed\"\n",
        p.config_text()
    );
    let daemon = InProcess::start(&config);
    p.wait_state("streaming").await;
    // A write load on another table while the new tables appear.
    let writer = {
        let mut conn = p.source_conn().await;
        tokio::spawn(async move {
            for i in 0..300 {
                run(&mut conn, &format!("INSERT INTO orders (item, qty) VALUES ('load', {i})")).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut conn = p.source_conn().await;
    // Rows in the first milliseconds after CREATE TABLE (DDL commits on its own in MariaDB).
    run(
        &mut conn,
        "CREATE TABLE fresh (id INT PRIMARY KEY, v TEXT); INSERT INTO fresh VALUES (1, 'right after'); \
         UPDATE fresh SET v = 'updated at once' WHERE id = 1",
    )
    .await;
    // Keyless: nothing doubled although its copy overlaps the stream.
    run(&mut conn, "CREATE TABLE fresh_log (at INT, what TEXT); INSERT INTO fresh_log VALUES (1, 'x'), (1, 'x')").await;
    for i in 3..60 {
        run(&mut conn, &format!("INSERT INTO fresh VALUES ({i}, 'load'); INSERT INTO fresh_log VALUES ({i}, 'x')"))
            .await;
    }
    // CREATE ... SELECT and a table renamed into the wildcard's view.
    run(
        &mut conn,
        "CREATE TABLE staging (id INT PRIMARY KEY, v TEXT) SELECT seq AS id, 'staged' AS v FROM seq_1_to_20; \
         RENAME TABLE staging TO renamed; INSERT INTO renamed VALUES (21, 'after rename')",
    )
    .await;
    writer.await.expect("writer");
    let rows = p.wait_converged("fresh", FRESH_ROW).await;
    assert_eq!(rows.len(), 58, "{rows:?}");
    assert!(rows.contains(&"1|updated at once".to_string()), "{rows:?}");
    let log = p.wait_converged("fresh_log", LOG_ROW).await;
    assert_eq!(log.len(), 59, "{log:?}");
    assert_eq!(log.iter().filter(|r| *r == "1|x").count(), 2, "{log:?}");
    assert_eq!(p.wait_converged("renamed", FRESH_ROW).await.len(), 21);
    assert_eq!(p.wait_converged("orders", "concat_ws('|', id, item, qty)").await.len(), 300);

    // Dropped under the wildcard: the pipeline goes on streaming.
    run(&mut conn, "DROP TABLE fresh_log; INSERT INTO fresh VALUES (100, 'after drop')").await;
    assert_eq!(p.wait_converged("fresh", FRESH_ROW).await.len(), 59);
    let status = p.status().await.expect("status");
    assert_eq!(status["state"], "streaming", "{status}");
    assert!(
        status["tables"].as_array().is_some_and(|t| t.iter().any(|t| t["name"] == format!("{db}.fresh"))),
        "the new table is listed: {status}"
    );
    daemon.stop().await;

    // The restart finds the same tables: no second copy of the keyless rows.
    let daemon = InProcess::start(&config);
    p.wait_state("streaming").await;
    run(&mut conn, "INSERT INTO fresh VALUES (101, 'after restart')").await;
    assert_eq!(p.wait_converged("fresh", FRESH_ROW).await.len(), 60);
    daemon.stop().await;
}

/// URLs with an IPv6 host (`[::1]`): the MariaDB source's catalog, snapshot and binlog
/// connections and the Postgres target's connection all go over IPv6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_source_and_postgres_target_over_ipv6_urls() {
    let p = MyPipeline::new(
        "myipv6",
        "CREATE TABLE orders (id INT PRIMARY KEY, item TEXT); INSERT INTO orders VALUES (1, 'a')",
        true,
    )
    .await;
    let config = p.config_text().replace("@127.0.0.1:", "@[::1]:");
    assert_eq!(config.matches("@[::1]:").count(), 2, "{config}");
    let daemon = InProcess::start(&config);
    p.wait_state("streaming").await;
    run(&mut p.source_conn().await, "INSERT INTO orders VALUES (2, 'over ipv6')").await;
    assert_eq!(p.wait_converged("orders", "concat_ws('|', id, item)").await.len(), 2);
    daemon.stop().await;
}
