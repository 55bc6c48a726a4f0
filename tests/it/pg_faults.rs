//! Faults and bad input: poison rows, kill -9 of the daemon, idle slot advance, `check`.

use std::process::Command;
use std::time::Duration;

use crate::support::{wait_for, TestPipeline};

const CONVERGE: Duration = Duration::from_secs(45);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_row_goes_to_dead_letters_and_stream_goes_on() {
    let p = TestPipeline::new(
        "poison",
        "CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL, note text)",
        &["public.items"],
    )
    .await;
    // The target has a constraint the source does not: qty < 100.
    p.target_client()
        .await
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL CHECK (qty < 100), note text)")
        .await
        .unwrap();
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    let src = p.source_client().await;
    src.batch_execute(
        "BEGIN; INSERT INTO items VALUES (1, 5, 'ok'), (2, 500, 'poison'), (3, 6, 'ok'); COMMIT; \
         INSERT INTO items VALUES (4, 7, 'after');",
    )
    .await
    .unwrap();
    let dst = p.target_client().await;
    let rows = wait_for("good rows applied", CONVERGE, || async {
        let rows = TestPipeline::rows(&dst, "items").await;
        (rows.len() == 3).then_some(rows)
    })
    .await;
    assert_eq!(rows, vec!["(1,5,ok)", "(3,6,ok)", "(4,7,after)"]);
    let dead = dst
        .query(
            "SELECT pipeline, source_table, target_table, op, payload::text, error, source_position, replayed_at IS NULL \
             FROM tidewater_dead_letters",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "one dead letter");
    let d = &dead[0];
    assert_eq!(d.get::<_, String>(0), p.name);
    assert_eq!(d.get::<_, String>(1), "public.items");
    assert_eq!(d.get::<_, String>(2), "public.items");
    assert_eq!(d.get::<_, String>(3), "insert");
    let payload: serde_json::Value = serde_json::from_str(&d.get::<_, String>(4)).unwrap();
    assert_eq!(payload["id"], 2);
    assert_eq!(payload["qty"], 500);
    assert!(
        d.get::<_, String>(5).contains("check constraint"),
        "error names the constraint: {}",
        d.get::<_, String>(5)
    );
    assert!(d.get::<_, String>(6).contains('/'), "source position is an LSN");
    assert!(d.get::<_, bool>(7));
    let status = p.status().await.unwrap();
    assert_eq!(status["dead_letters_total"], 1, "{status}");
    assert_eq!(status["state"], "streaming");

    // `tidewater dlq list` shows it.
    let out = Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .args(["dlq", "list", "--config"])
        .arg(p.config_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 dead letters") && text.contains("check constraint"), "{text}");

    // A replay before the fix fails again, keeps the row and says why.
    let (ok, text) = run_cli(&["dlq", "replay", "--config"], &p.config_path());
    assert!(!ok, "{text}");
    assert!(text.contains("check constraint"), "{text}");
    // Fix the cause, replay: the target converges to the source.
    dst.batch_execute("ALTER TABLE items DROP CONSTRAINT items_qty_check").await.unwrap();
    let (ok, text) = run_cli(&["dlq", "replay", "--config"], &p.config_path());
    assert!(ok, "{text}");
    p.wait_converged("items", "items", CONVERGE).await;
    let replayed: bool =
        dst.query_one("SELECT replayed_at IS NOT NULL FROM tidewater_dead_letters", &[]).await.unwrap().get(0);
    assert!(replayed);
    let (ok, text) = run_cli(&["verify", "--config"], &p.config_path());
    assert!(ok, "{text}");
    assert!(text.contains("4 rows match"), "{text}");
    // A row removed behind the daemon's back: verify names the range and exits 1.
    dst.batch_execute("DELETE FROM items WHERE id = 3").await.unwrap();
    let (ok, text) = run_cli(&["verify", "--config"], &p.config_path());
    assert!(!ok, "{text}");
    assert!(text.contains("[DIFF]") && text.contains("source 4 rows, target 3 rows"), "{text}");
    daemon.stop().await;
}

pub(crate) fn run_cli(args: &[&str], config: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidewater")).args(args).arg(config).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_stop_fails_the_pipeline_instead() {
    let mut p =
        TestPipeline::new("poisonstop", "CREATE TABLE items (id int PRIMARY KEY, qty int)", &["public.items"]).await;
    p.pipeline_extra = "on_error = \"stop\"".into();
    p.target_client()
        .await
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, qty int CHECK (qty < 100))")
        .await
        .unwrap();
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    p.source_client().await.batch_execute("INSERT INTO items VALUES (1, 500)").await.unwrap();
    let status = p.wait_state("failed", CONVERGE).await;
    let error = status["last_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("on_error") && error.contains("check constraint"), "{error}");
    let outcomes = daemon.stop().await;
    assert!(matches!(outcomes[0], tidewater::engine::Outcome::Failed(_)));
}

/// An error code in no classification table (a target trigger's RAISE EXCEPTION, SQLSTATE
/// P0001) is retried like a transient one, but only `retry.unknown_max_attempts` times in a
/// row: then the pipeline fails showing it, having committed nothing of the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclassified_errors_are_retried_up_to_the_limit_then_fail() {
    let mut p =
        TestPipeline::new("unknownerr", "CREATE TABLE items (id int PRIMARY KEY, qty int)", &["public.items"]).await;
    p.pipeline_extra = "[pipelines.retry]\ninitial_ms = 10\nmax_ms = 50\nunknown_max_attempts = 3".into();
    p.target_client()
        .await
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, qty int); \
             CREATE FUNCTION unlucky() RETURNS trigger LANGUAGE plpgsql AS \
               $$ BEGIN IF NEW.qty = 13 THEN RAISE EXCEPTION 'unlucky qty'; END IF; RETURN NEW; END $$; \
             CREATE TRIGGER unlucky BEFORE INSERT OR UPDATE ON items FOR EACH ROW EXECUTE FUNCTION unlucky()",
        )
        .await
        .unwrap();
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    p.source_client().await.batch_execute("INSERT INTO items VALUES (1, 13)").await.unwrap();
    let status = p.wait_state("failed", CONVERGE).await;
    let error = status["last_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("P0001") && error.contains("unknown_max_attempts"), "{error}");
    assert_eq!(status["retries_total"], 3, "{status}");
    let rows = p.target_client().await.query("SELECT 1 FROM items", &[]).await.unwrap();
    assert!(rows.is_empty(), "nothing of the failing batch is committed");
    let outcomes = daemon.stop().await;
    assert!(matches!(outcomes[0], tidewater::engine::Outcome::Failed(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_resumes_without_loss_or_duplicates() {
    let p = TestPipeline::new(
        "kill9",
        "CREATE TABLE seq (n bigint PRIMARY KEY, at timestamptz DEFAULT now()); \
         CREATE TABLE acct (id int PRIMARY KEY, balance bigint NOT NULL); \
         INSERT INTO acct SELECT g, 0 FROM generate_series(1, 50) g;",
        &["public.seq", "public.acct"],
    )
    .await;
    // Writer: a monotonic sequence into an insert-only table, plus updates and deletes,
    // until the daemon has been killed ten times (or TIDEWATER_SOAK_KILLS times).
    let src = p.source_client().await;
    src.batch_execute("SET synchronous_commit = on").await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0i64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let sql = format!(
                    "BEGIN; INSERT INTO seq (n) VALUES ({n}); UPDATE acct SET balance = balance + {n} WHERE id = {}; \
                     {} COMMIT;",
                    n % 50 + 1,
                    if n % 97 == 0 { format!("DELETE FROM acct WHERE id = {};", n % 50 + 1) } else { String::new() }
                );
                src.batch_execute(&sql).await.unwrap();
                if n % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            n
        })
    };
    // `scripts/soak.sh` raises the count (100 by default) for a longer soak.
    let kills: usize = std::env::var("TIDEWATER_SOAK_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let mut child = p.spawn_process();
    for _ in 0..kills {
        let wait_ms = 200 + (rand::random::<u64>() % 600);
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        child = p.spawn_process();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.await.unwrap();
    assert!(written > 100, "the writer wrote {written} transactions");
    let rows = p.wait_converged("seq", "seq", CONVERGE).await;
    assert_eq!(rows.len() as i64, written, "every sequence number exactly once");
    p.wait_converged("acct", "acct", CONVERGE).await;
    let dst = p.target_client().await;
    let (count, distinct, max): (i64, i64, i64) = {
        let r = dst.query_one("SELECT count(*), count(DISTINCT n), max(n) FROM seq", &[]).await.unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((count, distinct, max), (written, written, written));
    eprintln!("kill -9 x {kills}: {written} source transactions, every sequence number exactly once");
    // The slot never acknowledged more than the target holds.
    let confirmed = p.slot_confirmed_flush().await.unwrap();
    let checkpoint = p.checkpoint_lsn().await.unwrap();
    assert!(confirmed <= checkpoint, "slot confirmed_flush_lsn {confirmed} <= target checkpoint {checkpoint}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_source_with_unpublished_traffic_still_advances_the_slot() {
    let p = TestPipeline::new(
        "idleslot",
        "CREATE TABLE watched (id int PRIMARY KEY); CREATE TABLE unwatched (id int PRIMARY KEY, pad text);",
        &["public.watched"],
    )
    .await;
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    let src = p.source_client().await;
    src.batch_execute("INSERT INTO watched VALUES (1)").await.unwrap();
    p.wait_converged("watched", "watched", CONVERGE).await;
    let before = wait_for("slot has a confirmed position", CONVERGE, || p.slot_confirmed_flush()).await;
    for i in 0..50 {
        src.execute("INSERT INTO unwatched VALUES ($1, repeat('x', 1000))", &[&i]).await.unwrap();
    }
    let head: u64 = src
        .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    assert!(head > before);
    let advanced = wait_for("slot advances past the unpublished writes", CONVERGE, || async {
        p.slot_confirmed_flush().await.filter(|&lsn| lsn >= head)
    })
    .await;
    let checkpoint = p.checkpoint_lsn().await.unwrap();
    assert!(advanced <= checkpoint, "acknowledged only what the target recorded: {advanced} <= {checkpoint}");
    daemon.stop().await;
}

fn run_check(config: &std::path::Path) -> (bool, String) {
    run_cli(&["check", "--config"], config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_a_good_setup_and_names_each_problem() {
    let p = TestPipeline::new(
        "check",
        "CREATE TABLE good (id int PRIMARY KEY, v text); CREATE TABLE nokey (v text);",
        &["public.good"],
    )
    .await;
    let path = p.config_path();
    let (ok, text) = run_check(&path);
    assert!(ok, "{text}");
    assert!(text.contains("[ok]   source src: wal_level: logical"), "{text}");
    assert!(text.contains("table public.good"), "{text}");
    assert!(text.contains("[ok]   target dst: writable"), "{text}");

    // Unknown key: named, with the fix.
    std::fs::write(
        &path,
        p.config_text().replace("type = \"postgres\"\nurl", "type = \"postgres\"\nbogus_key = 1\nurl"),
    )
    .unwrap();
    let (ok, text) = run_check(&path);
    assert!(!ok);
    assert!(text.contains("bogus_key") && text.contains("sources.src") && text.contains("remove the key"), "{text}");

    // Missing table.
    std::fs::write(&path, p.config_text().replace("\"public.good\"", "\"public.missing\"")).unwrap();
    let (ok, text) = run_check(&path);
    assert!(!ok);
    assert!(text.contains("[FAIL]") && text.contains("public.missing does not exist"), "{text}");

    // Table without a key.
    std::fs::write(&path, p.config_text().replace("\"public.good\"", "\"public.nokey\"")).unwrap();
    let (ok, text) = run_check(&path);
    assert!(!ok);
    assert!(text.contains("no primary key") && text.contains("ADD PRIMARY KEY"), "{text}");

    // Wrong password: a clear authentication failure, and the password is not printed.
    std::fs::write(p.dir.path().join("pw"), "not-the-password").unwrap();
    std::fs::write(&path, p.config_text()).unwrap();
    let (ok, text) = run_check(&path);
    assert!(!ok);
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains("not-the-password"), "password leaked: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_fails_the_pipeline_without_retry_storm() {
    let p = TestPipeline::new("badpw", "CREATE TABLE t (id int PRIMARY KEY)", &["public.t"]).await;
    std::fs::write(p.dir.path().join("pw"), "wrong").unwrap();
    let daemon = p.start();
    let status = p.wait_state("failed", CONVERGE).await;
    assert!(status["last_error"].as_str().unwrap_or_default().contains("password authentication failed"), "{status}");
    assert_eq!(status["retries_total"], 0);
    let outcomes = daemon.stop().await;
    assert!(matches!(outcomes[0], tidewater::engine::Outcome::Failed(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_only_the_differing_key_range() {
    let p = TestPipeline::new(
        "verifyranges",
        "CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv SELECT g, 'v' || g FROM generate_series(1, 100) g;",
        &["public.kv"],
    )
    .await;
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    p.wait_converged("kv", "kv", CONVERGE).await;
    daemon.stop().await;
    let src = p.source_client().await;
    let dst = p.target_client().await;
    dst.batch_execute("UPDATE kv SET v = 'tampered' WHERE k = 55").await.unwrap();
    let relid: u32 = src.query_one("SELECT 'kv'::regclass::oid", &[]).await.unwrap().get(0);
    let id = tidewater_core::TableId::new("public", "kv");
    let schema = tidewater_postgres::catalog::table_schema(&src, &id, relid).await.unwrap();
    let verdict = tidewater_postgres::verify::verify_table(&src, &dst, &schema, &id, 10).await.unwrap();
    assert_eq!(verdict.ranges, 10);
    assert_eq!((verdict.source_rows, verdict.target_rows), (100, 100));
    assert_eq!(verdict.differing.len(), 1, "{verdict:?}");
    let d = &verdict.differing[0];
    assert_eq!((d.from.clone(), d.to.clone()), (Some(vec!["51".to_string()]), Some(vec!["61".to_string()])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_dropped_while_running_fails_the_pipeline_with_the_fix() {
    let p = TestPipeline::new("slotdrop", "CREATE TABLE t (id int PRIMARY KEY)", &["public.t"]).await;
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    let admin = p.source.admin(&p.source_db).await;
    let slot = format!("tidewater_{}", p.name);
    admin
        .execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .unwrap();
    wait_for("slot dropped", CONVERGE, || async {
        admin.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.ok()
    })
    .await;
    let status = p.wait_state("failed", CONVERGE).await;
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("does not exist") && error.contains("tidewater_checkpoints"), "{status}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_dropped_while_running_fails_the_pipeline_with_the_fix() {
    let p = TestPipeline::new("pubdrop", "CREATE TABLE t (id int PRIMARY KEY)", &["public.t"]).await;
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    let src = p.source_client().await;
    src.batch_execute(&format!("DROP PUBLICATION tidewater_{}; INSERT INTO t VALUES (1)", p.name)).await.unwrap();
    let status = p.wait_state("failed", CONVERGE).await;
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("publication was dropped") && error.contains("re-snapshot"), "{status}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_pipeline_does_not_stop_the_other() {
    let p = TestPipeline::new("twopipes", "CREATE TABLE good (id int PRIMARY KEY)", &["public.good"]).await;
    // A second source (same server) naming a table that does not exist, in its own pipeline.
    let text = p.config_text();
    let url_line = text.lines().find(|l| l.starts_with("url = \"postgres://") && l.contains(&p.source_db)).unwrap();
    let pw_line = text.lines().find(|l| l.starts_with("password_file")).unwrap();
    let extra = format!(
        "\n[sources.broken]\ntype = \"postgres\"\n{url_line}\n{pw_line}\ntables = [\"public.missing\"]\n\n\
         [[pipelines]]\nname = \"{}_broken\"\nsource = \"broken\"\ntarget = \"dst\"\n",
        p.name
    );
    let cfg = tidewater::config::parse(&(text + &extra)).unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let daemon = tokio::spawn(tidewater::run(cfg, rx));
    let port = p.status_port;
    let all = |state: &'static str, index: usize| async move {
        let body = tidewater::http_get(&format!("http://127.0.0.1:{port}/status")).await.ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        (json["pipelines"][index]["state"] == state).then_some(json)
    };
    wait_for("good pipeline streaming", CONVERGE, || all("streaming", 0)).await;
    let json = wait_for("broken pipeline failed", CONVERGE, || all("failed", 1)).await;
    assert!(json["pipelines"][1]["last_error"].as_str().unwrap().contains("public.missing does not exist"), "{json}");
    p.source_client().await.batch_execute("INSERT INTO good VALUES (1), (2)").await.unwrap();
    let rows = p.wait_converged("good", "good", CONVERGE).await;
    assert_eq!(rows.len(), 2);
    assert!(tidewater::http_get(&format!("http://127.0.0.1:{port}/readyz")).await.unwrap_err().contains("503"));
    stop.send(true).unwrap();
    let outcomes = daemon.await.unwrap().unwrap();
    assert_eq!(outcomes[0], tidewater::engine::Outcome::Stopped);
    assert!(matches!(outcomes[1], tidewater::engine::Outcome::Failed(_)));
}

/// A rename whose source key is written quoted (`"public"."orders"`): `verify` compares the
/// table the daemon writes, not a table named like the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_follows_a_rename_with_a_quoted_key() {
    let mut p = TestPipeline::new(
        "verifyquoted",
        "CREATE TABLE orders (id int PRIMARY KEY, v text); INSERT INTO orders SELECT g, 'v' || g FROM generate_series(1, 3) g",
        &["public.orders"],
    )
    .await;
    p.pipeline_extra = "[pipelines.tables]\n'\"public\".\"orders\"' = \"archive.orders\"".into();
    let daemon = p.start();
    p.wait_state("streaming", CONVERGE).await;
    let dst = p.target_client().await;
    wait_for("the renamed target table", CONVERGE, || async {
        let n: i64 = dst.query_one("SELECT count(*) FROM archive.orders", &[]).await.ok()?.get(0);
        (n == 3).then_some(())
    })
    .await;
    daemon.stop().await;
    let (ok, text) = run_cli(&["verify", "--config"], &p.config_path());
    assert!(ok && text.contains("-> archive.orders: 3 rows match"), "{text}");
}
