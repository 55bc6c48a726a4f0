//! Hostile identifiers: table and column names with quotes, spaces, semicolons, mixed
//! case and non-ASCII replicate correctly (identifiers are quoted through one helper,
//! values are always bound).

use std::time::Duration;

use crate::support::TestPipeline;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_table_and_column_names_replicate() {
    let setup = r#"
        CREATE SCHEMA "Odd Schema; DROP";
        CREATE TABLE "Odd Schema; DROP"."Tä""ble; --x" (
            "Id Key" int PRIMARY KEY,
            "sel""ect" text,
            "ÜmläutÇol" text,
            "MixedCase" int,
            ";DROP TABLE x;--" text
        );
        INSERT INTO "Odd Schema; DROP"."Tä""ble; --x" VALUES (1, 'a''b', 'ü', 1, '"; DROP TABLE y; --');
        CREATE TABLE "dot.ted" (id int PRIMARY KEY, v text);
        INSERT INTO "dot.ted" VALUES (1, 'snapshot');
    "#;
    // A name with a dot is double-quoted in the configuration.
    let p = TestPipeline::new("hostile", setup, &["Odd Schema; DROP.Tä\"ble; --x", "public.\"dot.ted\""]).await;
    let daemon = p.start();
    p.wait_state("streaming", WAIT).await;
    let src = p.source_client().await;
    src.batch_execute(
        r#"INSERT INTO "Odd Schema; DROP"."Tä""ble; --x" VALUES (2, 'x', 'ß', 2, 'it''s');
           UPDATE "Odd Schema; DROP"."Tä""ble; --x" SET "sel""ect" = 'up''dated', "Id Key" = 3 WHERE "Id Key" = 2;
           DELETE FROM "Odd Schema; DROP"."Tä""ble; --x" WHERE "Id Key" = 1;
           INSERT INTO "Odd Schema; DROP"."Tä""ble; --x" VALUES (4, NULL, NULL, NULL, NULL);"#,
    )
    .await
    .unwrap();
    let table = r#""Odd Schema; DROP"."Tä""ble; --x""#;
    let rows = p.wait_converged(table, table, WAIT).await;
    assert_eq!(rows, vec!["(3,up'dated,ß,2,it's)".to_string(), "(4,,,,)".to_string()]);
    // Column names came through exactly.
    let dst = p.target_client().await;
    let cols: Vec<String> = dst
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 ORDER BY attnum",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(cols, vec!["Id Key", "sel\"ect", "ÜmläutÇol", "MixedCase", ";DROP TABLE x;--"]);
    src.batch_execute(r#"TRUNCATE "Odd Schema; DROP"."Tä""ble; --x""#).await.unwrap();
    let rows = p.wait_converged(table, table, WAIT).await;
    assert!(rows.is_empty());
    src.batch_execute(r#"INSERT INTO "dot.ted" VALUES (2, 'streamed')"#).await.unwrap();
    let rows = p.wait_converged(r#""dot.ted""#, r#""dot.ted""#, WAIT).await;
    assert_eq!(rows, vec!["(1,snapshot)".to_string(), "(2,streamed)".to_string()]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .args(["verify", "--config"])
        .arg(p.config_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    daemon.stop().await;
}
