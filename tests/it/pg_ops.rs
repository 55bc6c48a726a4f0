//! Postgres → Postgres: every kind of source operation while streaming, checked against
//! the exact rows expected on the target (not only against the source).

use std::time::Duration;

use crate::support::daemon::InProcess;
use crate::support::{wait_for, TestPipeline};
use tidewater::engine::Outcome;

const CONVERGE: Duration = Duration::from_secs(30);

/// A pipeline over `tables` (created by `setup_sql`), started and streaming.
async fn streaming(prefix: &str, setup_sql: &str, tables: &[&str]) -> (TestPipeline, InProcess) {
    let p = TestPipeline::new(prefix, setup_sql, tables).await;
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    (p, daemon)
}

/// Runs each statement as its own (auto-committed) transaction.
async fn each_committed(client: &tokio_postgres::Client, statements: &[&str]) {
    for sql in statements {
        client.batch_execute(sql).await.unwrap_or_else(|e| panic!("source SQL {sql:?} failed: {e:?}"));
    }
}

/// The rows of `sql` (whose single column is text) on `client`.
async fn texts(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("query {sql:?} failed: {e:?}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// `SELECT t::text FROM table t ORDER BY 1` on the target.
async fn target_rows(p: &TestPipeline, table: &str) -> Vec<String> {
    texts(&p.target_client().await, &format!("SELECT t::text FROM {table} t ORDER BY 1")).await
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn stop(daemon: InProcess) {
    assert_eq!(daemon.stop().await, vec![Outcome::Stopped]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_update_delete_stream_through() {
    let (p, daemon) = streaming(
        "ops_iud",
        "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int);",
        &["public.items"],
    )
    .await;
    let src = p.source_client().await;
    each_committed(
        &src,
        &[
            "INSERT INTO items SELECT g, 'item ' || g, g FROM generate_series(1, 10) g",
            "UPDATE items SET qty = qty * 100 WHERE id <= 3",
            "UPDATE items SET name = 'renamed', qty = NULL WHERE id = 4",
            "DELETE FROM items WHERE id IN (9, 10)",
            "DELETE FROM items WHERE id = 5",
        ],
    )
    .await;
    let rows = p.wait_converged("items", "items", CONVERGE).await;
    assert_eq!(rows.len(), 7);
    let dst = p.target_client().await;
    let got = texts(&dst, "SELECT t::text FROM (SELECT id, name, qty FROM items ORDER BY id) t").await;
    assert_eq!(
        got,
        strs(&[
            "(1,\"item 1\",100)",
            "(2,\"item 2\",200)",
            "(3,\"item 3\",300)",
            "(4,renamed,)",
            "(6,\"item 6\",6)",
            "(7,\"item 7\",7)",
            "(8,\"item 8\",8)",
        ])
    );
    stop(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_changing_update_moves_the_row() {
    let (p, daemon) = streaming("ops_keychange", "CREATE TABLE k (id int PRIMARY KEY, v text);", &["public.k"]).await;
    let src = p.source_client().await;
    each_committed(
        &src,
        &[
            "INSERT INTO k SELECT g, 'v' || g FROM generate_series(1, 5) g",
            "UPDATE k SET id = id + 1000 WHERE id <= 2",
            // Key and value change together.
            "UPDATE k SET id = 3000, v = 'moved' WHERE id = 3",
        ],
    )
    .await;
    p.wait_converged("k", "k", CONVERGE).await;
    assert_eq!(target_rows(&p, "k").await, strs(&["(1001,v1)", "(1002,v2)", "(3000,moved)", "(4,v4)", "(5,v5)"]));
    let dst = p.target_client().await;
    let old: i64 = dst.query_one("SELECT count(*) FROM k WHERE id IN (1, 2, 3)", &[]).await.unwrap().get(0);
    assert_eq!(old, 0, "old keys must be gone from the target");
    stop(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_statement_transaction_applies_whole() {
    let (p, daemon) = streaming(
        "ops_multitx",
        "CREATE TABLE a (id int PRIMARY KEY, v text); \
         CREATE TABLE b (id int PRIMARY KEY, n int); \
         INSERT INTO a VALUES (1, 'one'), (2, 'two'), (3, 'three'); \
         INSERT INTO b VALUES (10, 10), (20, 20);",
        &["public.a", "public.b"],
    )
    .await;
    p.wait_converged("a", "a", CONVERGE).await;
    p.wait_converged("b", "b", CONVERGE).await;
    let src = p.source_client().await;
    src.batch_execute(
        "BEGIN; \
         INSERT INTO a VALUES (4, 'four'); \
         UPDATE b SET n = n + 1 WHERE id = 10; \
         DELETE FROM a WHERE id = 1; \
         INSERT INTO b VALUES (30, 30); \
         UPDATE a SET v = 'TWO' WHERE id = 2; \
         DELETE FROM b WHERE id = 20; \
         INSERT INTO a VALUES (5, 'five'); \
         COMMIT;",
    )
    .await
    .unwrap();
    p.wait_converged("a", "a", CONVERGE).await;
    p.wait_converged("b", "b", CONVERGE).await;
    assert_eq!(target_rows(&p, "a").await, strs(&["(2,TWO)", "(3,three)", "(4,four)", "(5,five)"]));
    assert_eq!(target_rows(&p, "b").await, strs(&["(10,11)", "(30,30)"]));
    stop(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_transaction_is_absent() {
    let (p, daemon) = streaming("ops_rollback", "CREATE TABLE r (id int PRIMARY KEY, v text);", &["public.r"]).await;
    let src = p.source_client().await;
    src.batch_execute(
        "BEGIN; INSERT INTO r VALUES (1, 'ghost'); \
         INSERT INTO r SELECT g, 'ghost' FROM generate_series(100, 200) g; ROLLBACK;",
    )
    .await
    .unwrap();
    src.batch_execute("INSERT INTO r VALUES (2, 'marker')").await.unwrap();
    let dst = p.target_client().await;
    wait_for("the marker row on the target", CONVERGE, || async {
        dst.query_opt("SELECT 1 FROM r WHERE id = 2", &[]).await.ok().flatten()
    })
    .await;
    assert_eq!(target_rows(&p, "r").await, strs(&["(2,marker)"]));
    p.wait_converged("r", "r", CONVERGE).await;
    stop(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoint_rollback_keeps_only_released_work() {
    let (p, daemon) = streaming(
        "ops_savepoint",
        "CREATE TABLE s (id int PRIMARY KEY, v text); INSERT INTO s VALUES (0, 'zero');",
        &["public.s"],
    )
    .await;
    let src = p.source_client().await;
    src.batch_execute(
        "BEGIN; \
         INSERT INTO s VALUES (1, 'a'); \
         SAVEPOINT sp; \
         INSERT INTO s VALUES (2, 'b'); \
         UPDATE s SET v = 'a changed in rolled back savepoint' WHERE id = 1; \
         DELETE FROM s WHERE id = 0; \
         ROLLBACK TO SAVEPOINT sp; \
         INSERT INTO s VALUES (3, 'c'); \
         SAVEPOINT sp2; \
         UPDATE s SET v = 'c2' WHERE id = 3; \
         RELEASE SAVEPOINT sp2; \
         COMMIT;",
    )
    .await
    .unwrap();
    p.wait_converged("s", "s", CONVERGE).await;
    assert_eq!(target_rows(&p, "s").await, strs(&["(0,zero)", "(1,a)", "(3,c2)"]));
    stop(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_empties_target_and_later_inserts_arrive() {
    let (p, daemon) = streaming(
        "ops_truncate",
        "CREATE TABLE ta (id int PRIMARY KEY, v text); \
         CREATE TABLE tb (id int PRIMARY KEY, v text); \
         INSERT INTO ta SELECT g, 'snap' FROM generate_series(1, 50) g; \
         INSERT INTO tb SELECT g, 'snap' FROM generate_series(1, 50) g;",
        &["public.ta", "public.tb"],
    )
    .await;
    let src = p.source_client().await;
    // Streamed rows, then a truncate with inserts in the same transaction.
    each_committed(&src, &["INSERT INTO ta SELECT g, 'streamed' FROM generate_series(51, 60) g"]).await;
    src.batch_execute(
        "BEGIN; TRUNCATE ta; INSERT INTO ta VALUES (100, 'same tx'); \
         UPDATE ta SET v = 'same tx, updated' WHERE id = 100; COMMIT;",
    )
    .await
    .unwrap();
    each_committed(&src, &["INSERT INTO ta VALUES (101, 'later tx')"]).await;
    p.wait_converged("ta", "ta", CONVERGE).await;
    assert_eq!(target_rows(&p, "ta").await, strs(&["(100,\"same tx, updated\")", "(101,\"later tx\")"]));
    // tb was not touched by the truncate of ta.
    p.wait_converged("tb", "tb", CONVERGE).await;
    assert_eq!(target_rows(&p, "tb").await.len(), 50);

    // One statement truncating both tables; rows before it in the same transaction go too.
    each_committed(
        &src,
        &[
            "INSERT INTO tb VALUES (200, 'before truncate')",
            "BEGIN; INSERT INTO ta VALUES (102, 'gone'); TRUNCATE ta, tb; \
             INSERT INTO tb VALUES (201, 'after truncate'); COMMIT;",
            "INSERT INTO tb VALUES (202, 'later')",
        ],
    )
    .await;
    p.wait_converged("ta", "ta", CONVERGE).await;
    p.wait_converged("tb", "tb", CONVERGE).await;
    assert_eq!(target_rows(&p, "ta").await, Vec::<String>::new());
    assert_eq!(target_rows(&p, "tb").await, strs(&["(201,\"after truncate\")", "(202,later)"]));

    // A truncate alone in its transaction, then inserts in a later one.
    each_committed(&src, &["TRUNCATE tb", "INSERT INTO tb VALUES (300, 'x'), (301, 'y')"]).await;
    p.wait_converged("tb", "tb", CONVERGE).await;
    assert_eq!(target_rows(&p, "tb").await, strs(&["(300,x)", "(301,y)"]));
    stop(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_many_changes_in_one_transaction_coalesce_correctly() {
    let (p, daemon) = streaming(
        "ops_coalesce",
        "CREATE TABLE c (id int PRIMARY KEY, v text, n int); \
         INSERT INTO c VALUES (6, 'six', 6), (7, 'seven', 7), (8, 'eight', 8);",
        &["public.c"],
    )
    .await;
    let src = p.source_client().await;
    // All in one transaction.
    src.batch_execute(
        "BEGIN; \
         INSERT INTO c VALUES (1, 'a', 0); \
         UPDATE c SET v = 'b', n = 1 WHERE id = 1; \
         UPDATE c SET v = 'c', n = 2 WHERE id = 1; \
         UPDATE c SET v = 'd', n = 3 WHERE id = 1; \
         DELETE FROM c WHERE id = 1; \
         INSERT INTO c VALUES (1, 'final', 42); \
         INSERT INTO c VALUES (2, 'short-lived', 0); \
         UPDATE c SET n = 5 WHERE id = 2; \
         DELETE FROM c WHERE id = 2; \
         UPDATE c SET id = 106 WHERE id = 6; \
         UPDATE c SET id = 6 WHERE id = 7; \
         DELETE FROM c WHERE id = 8; \
         INSERT INTO c VALUES (8, 'eight again', 88); \
         COMMIT;",
    )
    .await
    .unwrap();
    // The same, spread over quick successive transactions (likely one target batch).
    each_committed(
        &src,
        &[
            "INSERT INTO c VALUES (3, 'a', 0)",
            "UPDATE c SET v = 'b', n = 1 WHERE id = 3",
            "UPDATE c SET v = 'c', n = 2 WHERE id = 3",
            "UPDATE c SET v = 'd', n = 3 WHERE id = 3",
            "DELETE FROM c WHERE id = 3",
            "INSERT INTO c VALUES (3, 'final', 43)",
            "INSERT INTO c VALUES (4, 'short-lived', 0)",
            "UPDATE c SET n = 5 WHERE id = 4",
            "DELETE FROM c WHERE id = 4",
            "UPDATE c SET id = 5 WHERE id = 106",
            "UPDATE c SET id = 106 WHERE id = 6",
            "UPDATE c SET id = 6 WHERE id = 5",
        ],
    )
    .await;
    p.wait_converged("c", "c", CONVERGE).await;
    assert_eq!(
        target_rows(&p, "c").await,
        strs(&["(1,final,42)", "(106,seven,7)", "(3,final,43)", "(6,six,6)", "(8,\"eight again\",88)",])
    );
    stop(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_added_column_reaches_target_before_its_rows() {
    let (p, daemon) = streaming("ops_addcol", "CREATE TABLE t (id int PRIMARY KEY, name text);", &["public.t"]).await;
    let src = p.source_client().await;
    src.batch_execute("INSERT INTO t VALUES (1, 'before')").await.unwrap();
    p.wait_converged("t", "t", CONVERGE).await;
    src.batch_execute("DELETE FROM t WHERE id = 1").await.unwrap();
    src.batch_execute("ALTER TABLE t ADD COLUMN extra text DEFAULT 'x'").await.unwrap();
    each_committed(
        &src,
        &[
            "INSERT INTO t (id, name, extra) VALUES (2, 'set', 'y')",
            "INSERT INTO t (id, name) VALUES (3, 'default')",
            "BEGIN; INSERT INTO t VALUES (4, 'null', NULL); \
             UPDATE t SET extra = 'z' WHERE id = 2; COMMIT;",
        ],
    )
    .await;
    p.wait_converged("t", "t", CONVERGE).await;
    let dst = p.target_client().await;
    let columns = texts(
        &dst,
        "SELECT column_name || ':' || data_type FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = 't' ORDER BY ordinal_position",
    )
    .await;
    assert_eq!(columns, strs(&["id:integer", "name:text", "extra:text"]));
    assert_eq!(target_rows(&p, "t").await, strs(&["(2,set,z)", "(3,default,x)", "(4,null,)"]));
    assert_eq!(p.status().await.unwrap()["state"], "streaming");
    stop(daemon).await;
}

/// Rows that existed before `ADD COLUMN ... DEFAULT` read the default on the source
/// (no WAL is written for them); the target must show the same values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_added_column_default_shows_on_existing_rows() {
    let (p, daemon) = streaming(
        "ops_addcol_default",
        "CREATE TABLE t (id int PRIMARY KEY, name text); \
         INSERT INTO t VALUES (1, 'snapshot');",
        &["public.t"],
    )
    .await;
    let src = p.source_client().await;
    src.batch_execute("INSERT INTO t VALUES (2, 'streamed')").await.unwrap();
    p.wait_converged("t", "t", CONVERGE).await;
    src.batch_execute("ALTER TABLE t ADD COLUMN extra text DEFAULT 'x'").await.unwrap();
    src.batch_execute("INSERT INTO t VALUES (3, 'after', 'y')").await.unwrap();
    p.wait_converged("t", "t", CONVERGE).await;
    assert_eq!(target_rows(&p, "t").await, strs(&["(1,snapshot,x)", "(2,streamed,x)", "(3,after,y)"]));
    stop(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_target_table_receives_rows() {
    let mut p = TestPipeline::new(
        "ops_rename",
        "CREATE TABLE src_t (id int PRIMARY KEY, v text); \
         INSERT INTO src_t VALUES (1, 'snapshot');",
        &["public.src_t"],
    )
    .await;
    p.pipeline_extra = "[pipelines.tables]\n\"public.src_t\" = \"replica.dst_t\"\n".to_string();
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    let src = p.source_client().await;
    each_committed(
        &src,
        &[
            "INSERT INTO src_t VALUES (2, 'streamed'), (3, 'to delete')",
            "UPDATE src_t SET v = 'updated' WHERE id = 1",
            "DELETE FROM src_t WHERE id = 3",
        ],
    )
    .await;
    p.wait_converged("public.src_t", "replica.dst_t", CONVERGE).await;
    assert_eq!(target_rows(&p, "replica.dst_t").await, strs(&["(1,updated)", "(2,streamed)"]));
    let dst = p.target_client().await;
    let unrenamed: Option<String> =
        dst.query_one("SELECT to_regclass('public.src_t')::text", &[]).await.unwrap().get(0);
    assert_eq!(unrenamed, None, "no table under the source name on the target");
    stop(daemon).await;
}

fn is_pg_lsn(s: &str) -> bool {
    let Some((hi, lo)) = s.split_once('/') else {
        return false;
    };
    [hi, lo].iter().all(|h| !h.is_empty() && h.len() <= 8 && h.chars().all(|c| c.is_ascii_hexdigit()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_streaming_positions_and_counters() {
    let (p, daemon) = streaming(
        "ops_status",
        "CREATE TABLE st (id int PRIMARY KEY, v text); \
         INSERT INTO st SELECT g, 'snap' FROM generate_series(1, 20) g;",
        &["public.st"],
    )
    .await;
    let src = p.source_client().await;
    // 5 transactions, 3 + 1 + 1 + 2 + 1 = 8 events.
    each_committed(
        &src,
        &[
            "INSERT INTO st VALUES (21, 'a'), (22, 'b'), (23, 'c')",
            "UPDATE st SET v = 'u' WHERE id = 1",
            "DELETE FROM st WHERE id = 2",
            "BEGIN; INSERT INTO st VALUES (24, 'd'); UPDATE st SET v = 'e' WHERE id = 24; COMMIT;",
        ],
    )
    .await;
    // The last transaction commits after this WAL position.
    let before_last: String = src.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    each_committed(&src, &["INSERT INTO st VALUES (25, 'f')"]).await;
    p.wait_converged("st", "st", CONVERGE).await;
    // Counters are updated right after the target commit; lag falls to 0 once applied.
    let status = wait_for("status: lag 0 and all transactions counted", CONVERGE, || async {
        p.status()
            .await
            .filter(|s| s["lag_seconds"].as_f64() == Some(0.0) && s["transactions_applied_total"].as_u64() >= Some(5))
    })
    .await;
    let wal_end: String = src.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    assert_eq!(status["name"], p.name.as_str(), "{status}");
    assert_eq!(status["state"], "streaming", "{status}");
    let applied = status["applied_position"].as_str().unwrap_or_default();
    assert!(is_pg_lsn(applied), "applied_position {applied:?}: {status}");
    let source_position = status["source_position"].as_str().unwrap_or_default();
    assert!(is_pg_lsn(source_position), "source_position {source_position:?}: {status}");
    let num = |s: &str| {
        let (hi, lo) = s.split_once('/').unwrap();
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
    };
    assert!(
        num(applied) > num(&before_last),
        "applied_position {applied} must cover the last commit (after {before_last}): {status}"
    );
    assert!(
        num(applied) <= num(&wal_end),
        "applied_position {applied} beyond the source's WAL end {wal_end}: {status}"
    );
    // 20 snapshot rows + 8 streamed events.
    let events = status["events_applied_total"].as_u64().unwrap();
    assert!(events >= 28, "events_applied_total {events}: {status}");
    assert!(status["transactions_applied_total"].as_u64().unwrap() >= 5, "{status}");
    assert_eq!(status["lag_seconds"].as_f64(), Some(0.0), "{status}");
    assert!(status["lag_bytes"].as_u64().is_some(), "{status}");
    assert_eq!(status["last_error"], serde_json::Value::Null, "{status}");
    assert_eq!(status["dead_letters_total"], 0, "{status}");
    let last = status["last_applied_at"].as_str().unwrap_or_default();
    assert!(
        last.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(last).is_ok(),
        "last_applied_at {last:?}: {status}"
    );
    let age = chrono::Utc::now() - chrono::DateTime::parse_from_rfc3339(last).unwrap().with_timezone(&chrono::Utc);
    assert!(age.num_seconds().abs() < 60, "last_applied_at {last} is not recent");
    stop(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_without_duplicates() {
    let p = TestPipeline::new(
        "ops_restart",
        "CREATE TABLE ev (id bigserial PRIMARY KEY, batch int NOT NULL, payload text); \
         INSERT INTO ev (batch, payload) SELECT 0, 'snapshot ' || g FROM generate_series(1, 100) g;",
        &["public.ev"],
    )
    .await;
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    let src = p.source_client().await;
    for b in 1..=5 {
        src.batch_execute(&format!(
            "INSERT INTO ev (batch, payload) SELECT {b}, 'run1 ' || g FROM generate_series(1, 10) g"
        ))
        .await
        .unwrap();
    }
    p.wait_converged("ev", "ev", CONVERGE).await;
    // Count every write the daemon makes to the target table from now on: on an
    // insert-only source, a re-applied change shows up as an update (upsert conflict).
    let dst = p.target_client().await;
    dst.batch_execute(
        "CREATE TABLE public.ev_audit (op text, id bigint); \
         CREATE FUNCTION public.ev_audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN INSERT INTO public.ev_audit VALUES (TG_OP, NEW.id); RETURN NEW; END $$; \
         CREATE TRIGGER ev_audit AFTER INSERT OR UPDATE ON public.ev \
         FOR EACH ROW EXECUTE FUNCTION public.ev_audit_fn(); \
         ALTER TABLE public.ev ENABLE ALWAYS TRIGGER ev_audit;",
    )
    .await
    .unwrap();
    stop(daemon).await;

    // While stopped: 5 transactions of 10 rows.
    for b in 6..=10 {
        src.batch_execute(&format!(
            "INSERT INTO ev (batch, payload) SELECT {b}, 'stopped ' || g FROM generate_series(1, 10) g"
        ))
        .await
        .unwrap();
    }
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    // And some more after the restart.
    src.batch_execute("INSERT INTO ev (batch, payload) SELECT 11, 'run2 ' || g FROM generate_series(1, 10) g")
        .await
        .unwrap();
    let rows = p.wait_converged("ev", "ev", CONVERGE).await;
    assert_eq!(rows.len(), 210);
    let counts =
        texts(&dst, "SELECT count(*)::text || '/' || count(DISTINCT id)::text || '/' || max(id)::text FROM ev").await;
    assert_eq!(counts, strs(&["210/210/210"]));
    let per_batch = texts(&dst, "SELECT batch || ':' || count(*) FROM ev GROUP BY batch ORDER BY batch").await;
    let mut expected = vec!["0:100".to_string()];
    expected.extend((1..=11).map(|b| format!("{b}:10")));
    assert_eq!(per_batch, expected);
    let audit =
        texts(&dst, "SELECT op || ':' || count(*) || ':' || count(DISTINCT id) FROM ev_audit GROUP BY op ORDER BY op")
            .await;
    assert_eq!(
        audit,
        strs(&["INSERT:60:60"]),
        "after the restart the target must see exactly the 60 new rows inserted once \
         (no snapshot again, nothing re-applied)"
    );
    let status = p.status().await.unwrap();
    let events = status["events_applied_total"].as_u64().unwrap();
    assert!(
        (60..210).contains(&events),
        "events_applied_total of the second run counts only new changes (60), got {events}: {status}"
    );
    assert_eq!(events, 60, "{status}");
    stop(daemon).await;
}

/// Tables keyed through REPLICA IDENTITY FULL (old rows carry every column) and through
/// REPLICA IDENTITY USING INDEX (no primary key): updates, key changes and deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_full_and_using_index_tables() {
    let (p, daemon) = streaming(
        "ops_replident",
        "CREATE TABLE full_t (id int PRIMARY KEY, v text, n numeric); \
         ALTER TABLE full_t REPLICA IDENTITY FULL; \
         CREATE TABLE idx_t (code text NOT NULL, v text); \
         CREATE UNIQUE INDEX idx_t_code ON idx_t (code); \
         ALTER TABLE idx_t REPLICA IDENTITY USING INDEX idx_t_code; \
         INSERT INTO full_t VALUES (1, 'a', 1.5), (2, 'b', NULL), (3, 'c', 3); \
         INSERT INTO idx_t VALUES ('x', 'one'), ('y', 'two'), ('z', 'three');",
        &["public.full_t", "public.idx_t"],
    )
    .await;
    let src = p.source_client().await;
    each_committed(
        &src,
        &[
            "UPDATE full_t SET v = 'a2' WHERE id = 1",
            "UPDATE full_t SET id = 20, n = 2.50 WHERE id = 2",
            "DELETE FROM full_t WHERE id = 3",
            "INSERT INTO full_t VALUES (4, NULL, NULL)",
            "UPDATE idx_t SET v = 'uno' WHERE code = 'x'",
            "UPDATE idx_t SET code = 'yy' WHERE code = 'y'",
            "DELETE FROM idx_t WHERE code = 'z'",
            "INSERT INTO idx_t VALUES ('w', NULL)",
        ],
    )
    .await;
    p.wait_converged("full_t", "full_t", CONVERGE).await;
    p.wait_converged("idx_t", "idx_t", CONVERGE).await;
    assert_eq!(target_rows(&p, "full_t").await, strs(&["(1,a2,1.5)", "(20,b,2.50)", "(4,,)"]));
    assert_eq!(target_rows(&p, "idx_t").await, strs(&["(w,)", "(x,uno)", "(yy,two)"]));
    stop(daemon).await;
}

/// A source transaction larger than `max_batch_events` is still applied in one target
/// transaction: readers of the target never see part of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_larger_than_batch_limit_applies_whole() {
    let mut p = TestPipeline::new("ops_bigtx", "CREATE TABLE bt (id int PRIMARY KEY, v text);", &["public.bt"]).await;
    p.pipeline_extra = "max_batch_events = 100".into();
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    let src = p.source_client().await;
    let dst = p.target_client().await;
    let sample = |sql: &'static str, done: &'static str| {
        let dst = &dst;
        async move {
            let mut seen = std::collections::BTreeSet::new();
            let deadline = tokio::time::Instant::now() + CONVERGE;
            loop {
                let n: i64 = dst.query_one(sql, &[]).await.map(|r| r.get(0)).unwrap_or(-1);
                seen.insert(n);
                if n.to_string() == done || tokio::time::Instant::now() > deadline {
                    return seen;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    let (seen, _) = tokio::join!(sample("SELECT count(*) FROM bt", "5000"), async {
        src.batch_execute("INSERT INTO bt SELECT g, 'a' FROM generate_series(1, 5000) g").await.unwrap();
    });
    let seen: Vec<i64> = seen.into_iter().filter(|&n| n >= 0).collect();
    assert_eq!(seen.last(), Some(&5000), "{seen:?}");
    assert!(seen.iter().all(|&n| n == 0 || n == 5000), "partial transaction visible on the target: {seen:?}");
    let (seen, _) = tokio::join!(sample("SELECT count(*) FROM bt WHERE v = 'b'", "5000"), async {
        src.batch_execute("UPDATE bt SET v = 'b'").await.unwrap();
    });
    let seen: Vec<i64> = seen.into_iter().filter(|&n| n >= 0).collect();
    assert_eq!(seen.last(), Some(&5000), "{seen:?}");
    assert!(seen.iter().all(|&n| n == 0 || n == 5000), "partial transaction visible on the target: {seen:?}");
    p.wait_converged("bt", "bt", CONVERGE).await;
    stop(daemon).await;
}
