//! A newcomer's mistakes through `tidewater check`: each one is refused by `check`,
//! `check --offline` and `run` alike (exit 1), and the message names the key. `check`
//! writes nothing to any target; `status` and `--version` say what a user needs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use tidewater_sqlite::sqlx::{self, Connection};

use crate::support::mysql::{fresh_mysql_db, mysql_target, MYSQL_PASSWORD};
use crate::support::{free_port, wait_for, TestPipeline};

const WAIT: Duration = Duration::from_secs(30);

fn tidewater(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tidewater")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A valid config (Postgres source and target on closed ports: nothing here connects).
fn base(dir: &Path) -> String {
    let pw = dir.join("pw");
    std::fs::write(&pw, "secret").unwrap();
    format!(
        r#"
[status]
listen = "127.0.0.1:{port}"

[sources.app]
type = "postgres"
url = "postgres://replicator@127.0.0.1:9/app"
password_file = "{pw}"
tables = ["public.orders", "public.customers"]

[targets.wh]
type = "postgres"
url = "postgres://replicator@127.0.0.1:9/warehouse"
password_file = "{pw}"

[[pipelines]]
name = "app_to_wh"
source = "app"
target = "wh"
"#,
        port = free_port(),
        pw = pw.display()
    )
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("tidewater.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `check`, `check --offline` and `run` all exit 1 naming `key` and saying `words`;
/// returns the offline check's output.
fn assert_refused(config_text: &str, key: &str, words: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config_text = config_text.replace("{dir}", &dir.path().display().to_string());
    let path = write_config(dir.path(), &config_text);
    let mut offline = String::new();
    for args in [&["check", "--offline"][..], &["check"], &["run"]] {
        let out = tidewater(args, &path);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?} exits 1: {said}");
        assert!(said.contains(key), "{args:?} names {key}: {said}");
        assert!(said.contains(words), "{args:?} says {words:?}: {said}");
        if args.len() == 2 {
            offline = said;
        }
    }
    offline
}

/// The problem lines (`  - key: problem`) of a refusal.
fn problems(said: &str) -> Vec<&str> {
    said.lines().filter(|l| l.starts_with("  - ")).collect()
}

#[test]
fn type_errors_name_the_key_path_and_say_it_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let good = base(dir.path());
    let said = assert_refused(
        &good.replace("target = \"wh\"\n", "target = \"wh\"\nmax_batch_events = \"500\"\n"),
        "pipelines[0].max_batch_events",
        "expected a whole number (0 or more), got the string \"500\"",
    );
    assert!(!said.contains("usize"), "no Rust type names: {said}");
    let said = assert_refused(
        &good.replace(
            "tables = [\"public.orders\", \"public.customers\"]",
            "tables = [\"public.orders\"]\nserver_id = \"7\"",
        ),
        "sources.app.server_id",
        "expected a whole number",
    );
    assert!(!said.contains("u32"), "{said}");
}

#[test]
fn a_pipelines_section_instead_of_a_list_says_double_brackets() {
    let dir = tempfile::tempdir().unwrap();
    let said = assert_refused(&base(dir.path()).replace("[[pipelines]]", "[pipelines]"), "pipelines", "[[pipelines]]");
    assert!(!said.contains("targets.wh"), "the error is not blamed on the section before: {said}");
}

#[test]
fn a_missing_key_names_its_section() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        &base(dir.path()).replace("url = \"postgres://replicator@127.0.0.1:9/warehouse\"\n", ""),
        "targets.wh.url",
        "required",
    );
}

#[test]
fn a_bad_pipeline_name_is_one_error_that_states_every_rule() {
    let dir = tempfile::tempdir().unwrap();
    let said = assert_refused(
        &base(dir.path()).replace("name = \"app_to_wh\"", "name = \"1st_pipeline\""),
        "pipelines[0].name",
        "must start with a lowercase letter or _",
    );
    assert_eq!(problems(&said).len(), 1, "no cascade: {said}");
}

#[test]
fn a_zero_first_retry_delay_is_refused_not_changed() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        &format!("{}\n[pipelines.retry]\ninitial_ms = 0\n", base(dir.path())),
        "pipelines[0].retry.initial_ms",
        "at least 1",
    );
}

#[test]
fn an_invalid_log_level_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(&format!("[log]\nlevel = \"verbose\"\n{}", base(dir.path())), "log.level", "not a log level");
}

#[test]
fn a_mysql_target_url_without_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        &base(dir.path()).replace(
            "type = \"postgres\"\nurl = \"postgres://replicator@127.0.0.1:9/warehouse\"",
            "type = \"mysql\"\nurl = \"mysql://replicator@127.0.0.1:9\"",
        ),
        "targets.wh.url",
        "names no database",
    );
}

#[test]
fn a_rename_of_a_table_that_is_not_configured_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        &format!("{}[pipelines.tables]\n\"public.order\" = \"replica.orders\"\n", base(dir.path())),
        "pipelines[0].tables",
        "\"public.order\", which is not in sources.app.tables",
    );
    assert_refused(
        &format!("{}[pipelines.tables]\n\"public.Orders\" = \"replica.orders\"\n", base(dir.path())),
        "pipelines[0].tables",
        "differs only in case",
    );
}

#[test]
fn two_tables_renamed_to_one_target_table_are_refused_on_every_target_kind() {
    let dir = tempfile::tempdir().unwrap();
    let renames = "[pipelines.tables]\n\"public.orders\" = \"replica.all\"\n\"public.customers\" = \"replica.all\"\n";
    let pg = format!("{}{renames}", base(dir.path()));
    assert_refused(&pg, "pipelines[0].tables", "would both be written to the target table replica.all");
    let mysql = pg.replace(
        "type = \"postgres\"\nurl = \"postgres://replicator@127.0.0.1:9/warehouse\"",
        "type = \"mysql\"\nurl = \"mysql://replicator@127.0.0.1:9/warehouse\"",
    );
    assert_refused(&mysql, "pipelines[0].tables", "would both be written to the target table replica.all");
    // MySQL writes schema public to the URL's database: warehouse.orders is public.orders.
    let mysql_db = mysql.replace(renames, "[pipelines.tables]\n\"public.customers\" = \"warehouse.orders\"\n");
    assert_refused(&mysql_db, "pipelines[0].tables", "the URL's database");
    // SQLite drops the schema: replica.orders and public.orders are one table.
    let sqlite = base(dir.path()).replace(
        "type = \"postgres\"\nurl = \"postgres://replicator@127.0.0.1:9/warehouse\"\npassword_file",
        "type = \"sqlite\"\npath = \"{dir}/edge.db\"\n# password_file",
    ) + "[pipelines.tables]\n\"public.customers\" = \"replica.orders\"\n";
    assert_refused(&sqlite, "pipelines[0].tables", "SQLite has no schemas");
}

#[test]
fn a_missing_or_empty_token_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = base(dir.path());
    let missing = good.replace("[status]\n", "[status]\ntoken_file = \"{dir}/no-such-token\"\n");
    let said = assert_refused(&missing, "status.token_file", "no-such-token");
    assert!(said.contains("cannot read"), "{said}");
    let empty = good.replace("[status]\n", "[status]\ntoken_file = \"{dir}/pw-empty\"\n");
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::write(dir2.path().join("pw-empty"), "\n").unwrap();
    let path = write_config(dir2.path(), &empty.replace("{dir}", &dir2.path().display().to_string()));
    let out = tidewater(&["check", "--offline"], &path);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("status.token_file") && text(&out).contains("is empty"), "{}", text(&out));
}

#[test]
fn a_missing_password_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = base(dir.path()).replacen("password_file = \"", "password_file = \"{dir}/nope/", 1);
    assert_refused(&text, "sources.app.password_file", "nope");
}

#[test]
fn a_host_name_in_status_listen_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let text = base(dir.path()).replace("listen = \"127.0.0.1:", "listen = \"localhost:");
    let out = tidewater(&["check", "--offline"], &write_config(dir.path(), &text));
    assert_eq!(out.status.code(), Some(0), "{}", self::text(&out));
    assert!(self::text(&out).contains("no server was contacted"), "{}", self::text(&out));
}

#[test]
fn offline_check_passes_a_good_config_without_connecting_and_online_keeps_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &base(dir.path()));
    let out = tidewater(&["check", "--offline"], &path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Port 9 (discard) is closed here: the online check fails and says why.
    let out = tidewater(&["check"], &path);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out).to_lowercase();
    assert!(said.contains("connection refused"), "the cause is kept: {said}");
    assert!(said.contains("sources.app.url") && said.contains("targets.wh.url"), "{said}");
}

#[test]
fn version_names_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_tidewater")).arg("--version").output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.starts_with(&format!("tidewater {} (commit ", env!("CARGO_PKG_VERSION"))), "{line}");
    // Built from this git checkout, so the commit is known.
    let head = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().unwrap();
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    assert!(!head.is_empty() && line.contains(&head[..7]), "{line} vs HEAD {head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_name_that_differs_only_in_case_gets_a_hint() {
    let p = TestPipeline::new("casehint", "CREATE TABLE \"Orders\" (id int PRIMARY KEY)", &["public.orders"]).await;
    let out = tidewater(&["check"], &p.config_path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("public.Orders") && said.contains("differs only in case"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_creates_nothing_in_a_mysql_or_sqlite_target() {
    // MySQL/MariaDB target: the database exists and is empty before and after.
    let mut p = TestPipeline::new("checkro", "CREATE TABLE t (id int PRIMARY KEY)", &["public.t"]).await;
    let target = mysql_target().await;
    let db = fresh_mysql_db(target, "checkro").await;
    let mypw = p.dir.path().join("mypw");
    std::fs::write(&mypw, MYSQL_PASSWORD).unwrap();
    p.target_override = Some(format!(
        "[targets.dst]\ntype = \"mysql\"\nurl = \"{}\"\npassword_file = \"{}\"",
        target.url(&db),
        mypw.display()
    ));
    let out = tidewater(&["check"], &p.config_path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("can create and write tables"), "{}", text(&out));
    let mut conn = target.connect(&db).await;
    let tables: Vec<String> = conn
        .exec("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?", (db.as_str(),))
        .await
        .unwrap();
    assert_eq!(tables, Vec::<String>::new(), "check created tables in the MySQL target");

    // SQLite target: an existing database keeps exactly its tables; a new one is not created.
    let sqlite = p.dir.path().join("edge.db");
    {
        let mut conn =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", sqlite.display())).await.unwrap();
        sqlx::query("CREATE TABLE mine (id INTEGER PRIMARY KEY)").execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }
    p.target_override = Some(format!("[targets.dst]\ntype = \"sqlite\"\npath = \"{}\"", sqlite.display()));
    let out = tidewater(&["check"], &p.config_path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", sqlite.display())).await.unwrap();
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_schema ORDER BY name").fetch_all(&mut conn).await.unwrap();
    assert_eq!(names, vec!["mine".to_string()]);
    let fresh = p.dir.path().join("new.db");
    p.target_override = Some(format!("[targets.dst]\ntype = \"sqlite\"\npath = \"{}\"", fresh.display()));
    let out = tidewater(&["check"], &p.config_path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!fresh.exists(), "check created the SQLite file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_explains_a_token_a_dead_port_and_a_missing_token_file() {
    let p = TestPipeline::new("statushelp", "CREATE TABLE t (id int PRIMARY KEY)", &["public.t"]).await;
    let token = p.dir.path().join("token");
    std::fs::write(&token, "tok-123\n").unwrap();
    let text_cfg = p.config_text().replace("[status]\n", &format!("[status]\ntoken_file = \"{}\"\n", token.display()));
    let cfg = tidewater::config::parse(&text_cfg).unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let daemon = tokio::spawn(tidewater::run(cfg, rx));
    let url = format!("http://127.0.0.1:{}/", p.status_port);
    wait_for("status server up", WAIT, || async {
        tidewater::http_get(&format!("http://127.0.0.1:{}/healthz", p.status_port)).await.ok()
    })
    .await;
    let status = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tidewater")).arg("status").args(args).output().expect("run tidewater status")
    };
    let out = status(&["--url", &url]);
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out);
    assert!(said.contains("401") && said.contains("--token-file"), "{said}");
    assert!(!said.contains("//status"), "no doubled slash: {said}");
    let out = status(&["--url", &url, "--token-file", &token.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = status(&["--url", &url, "--token-file", "/nonexistent/token"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("/nonexistent/token"), "{}", text(&out));
    stop.send(true).unwrap();
    daemon.await.unwrap().unwrap();

    let dead = format!("http://127.0.0.1:{}/", free_port());
    let out = status(&["--url", &dead]);
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out);
    assert!(!said.contains("//status") && !said.contains("is status.listen http"), "{said}");
    assert!(said.to_lowercase().contains("connection refused") && said.contains("--url"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collision_a_wildcard_finds_fails_the_pipeline_at_start_naming_both_tables() {
    // `public.*` finds a and b; renaming a to public.b makes both land on one table, which
    // only the source's catalog can show.
    let mut p = TestPipeline::new(
        "wildcollide",
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)",
        &["public.*"],
    )
    .await;
    p.pipeline_extra = "[pipelines.tables]\n\"public.a\" = \"public.b\"".into();
    let out = tidewater(&["check", "--offline"], &p.config_path());
    assert_eq!(out.status.code(), Some(0), "offline, the wildcard's tables are unknown: {}", text(&out));
    let daemon = p.start();
    let status = p.wait_state("failed", WAIT).await;
    let error = status["last_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("public.a and public.b would both be written to the target table public.b"), "{error}");
    daemon.stop().await;
    let target = p.target_client().await;
    let tables: i64 = target
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename IN ('a', 'b')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "nothing was created before the refusal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_table_name_that_differs_only_in_case_gets_a_hint() {
    let source = crate::support::mysql::mysql_source().await;
    let db = fresh_mysql_db(source, "mycase").await;
    source.sql(&format!("CREATE TABLE `{db}`.`Orders` (id int PRIMARY KEY)")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("mypw");
    std::fs::write(&pw, MYSQL_PASSWORD).unwrap();
    let config = format!(
        "[sources.shop]\ntype = \"mysql\"\nurl = \"{url}\"\npassword_file = \"{pw}\"\nserver_id = 4917\n\
         tables = [\"{db}.orders\"]\n\n[targets.edge]\ntype = \"sqlite\"\npath = \"{dir}/edge.db\"\n\n\
         [[pipelines]]\nname = \"shop_to_edge\"\nsource = \"shop\"\ntarget = \"edge\"\n",
        url = source.url(&db),
        pw = pw.display(),
        dir = dir.path().display()
    );
    let out = tidewater(&["check"], &write_config(dir.path(), &config));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains(&format!("{db}.Orders")) && said.contains("differs only in case"), "{said}");
}

/// `TIDEWATER_CONFIG` stands in for `--config` (the flag wins when both are given).
#[test]
fn the_config_path_may_come_from_tidewater_config() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write_config(dir.path(), "[status]\nlisten = 5\n");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tidewater"))
            .args(args)
            .env("TIDEWATER_CONFIG", &bad)
            .output()
            .unwrap()
    };
    let out = run(&["check", "--offline"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&bad.display().to_string()) && said.contains("status.listen"), "{said}");
    let missing = dir.path().join("nowhere.toml");
    let out = run(&["check", "--offline", "--config", &missing.display().to_string()]);
    assert!(text(&out).contains("nowhere.toml"), "the flag wins: {}", text(&out));
}
