//! Command line: `run`, `check`, `status`, `verify`, `resync`, `dlq list|replay`.
//!
//! Exit codes: 0 success, 1 a failure the user must fix, 2 bad usage (clap's own).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, TargetKind, DEFAULT_CONFIG_PATH};

#[derive(Debug, Parser)]
#[command(name = "tidewater", version = crate::VERSION_LINE, about = "Change-data-capture sync daemon")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (systemd ExecStart).
    Run {
        #[arg(long, env = "TIDEWATER_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Validate the configuration, connect, and verify server settings (read-only: creates
    /// nothing on any server).
    Check {
        #[arg(long, env = "TIDEWATER_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Only validate the configuration and the files it names (token, passwords); no
        /// connection is made. For CI and systemd's ExecStartPre.
        #[arg(long)]
        offline: bool,
    },
    /// Show the running daemon's status. Exit 0 when every pipeline is healthy, 1 when one
    /// has failed or the daemon cannot be reached.
    Status {
        /// The status server's base URL (where the daemon's `status.listen` is).
        #[arg(long, default_value = "http://127.0.0.1:8790")]
        url: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        /// File with the status server's bearer token (its `status.token_file`).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Compare source and target rows (counts and checksums).
    Verify {
        #[arg(long, env = "TIDEWATER_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(long)]
        pipeline: Option<String>,
    },
    /// Copy one table again while the pipeline keeps streaming (asks the running daemon,
    /// at the configuration's `status.listen`, with its `status.token_file`).
    Resync {
        #[arg(long, env = "TIDEWATER_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(long)]
        pipeline: String,
        /// The source table, as `schema.table` (MySQL: `db.table`).
        #[arg(long)]
        table: String,
    },
    /// Inspect and replay dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters.
    List {
        #[arg(long, env = "TIDEWATER_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(long)]
        pipeline: Option<String>,
    },
    /// Re-apply dead letters after fixing their cause.
    Replay {
        #[arg(long, env = "TIDEWATER_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(long)]
        pipeline: Option<String>,
        #[arg(long)]
        id: Option<i64>,
    },
}

/// Loads the configuration or prints every problem.
pub fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    config::load(path).map_err(|errors| {
        eprintln!("configuration {} is invalid:", path.display());
        for e in errors {
            eprintln!("  - {e}");
        }
        ExitCode::from(1)
    })
}

pub async fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run { config } => {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            crate::telemetry::init(cfg.log_format, &cfg.log_level);
            crate::run_until_signal(cfg, config).await
        }
        Command::Check { config, offline } => check(&config, offline).await,
        Command::Status { url, json, token_file } => status(&url, json, token_file.as_deref()).await,
        Command::Verify { config, pipeline } => verify(&config, pipeline.as_deref()).await,
        Command::Resync { config, pipeline, table } => resync(&config, &pipeline, &table).await,
        Command::Dlq { command: DlqCommand::List { config, pipeline } } => dlq_list(&config, pipeline.as_deref()).await,
        Command::Dlq { command: DlqCommand::Replay { config, pipeline, id } } => {
            dlq_replay(&config, pipeline.as_deref(), id).await
        }
    }
}

/// `tidewater resync`: `POST /pipelines/NAME/resync` to the running daemon.
async fn resync(path: &std::path::Path, pipeline: &str, table: &str) -> ExitCode {
    let cfg = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !cfg.pipelines.iter().any(|p| p.name == pipeline) {
        let names = cfg.pipelines.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
        eprintln!("no pipeline named {pipeline:?} in {} (its pipelines: {names})", path.display());
        return ExitCode::from(1);
    }
    let token = match cfg.status_token_file.as_deref().map(config::read_token).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("status.token_file: {e}");
            return ExitCode::from(1);
        }
    };
    let addr = cfg.status_listen;
    let host = if addr.ip().is_unspecified() {
        match addr {
            std::net::SocketAddr::V4(_) => format!("127.0.0.1:{}", addr.port()),
            std::net::SocketAddr::V6(_) => format!("[::1]:{}", addr.port()),
        }
    } else {
        addr.to_string()
    };
    let url = format!("http://{host}/pipelines/{pipeline}/resync");
    let body = serde_json::json!({ "table": table }).to_string();
    match crate::http_request("POST", &url, token.as_deref(), Some(&body)).await {
        Ok((202, _, _)) => {
            println!(
                "resyncing {table} in pipeline {pipeline}: follow it in `tidewater status` (the table shows \
                 `resyncing` and its rows copied until it is done)"
            );
            ExitCode::SUCCESS
        }
        Ok((code, line, body)) => {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| body.trim().to_string());
            if code == 401 {
                eprintln!("the daemon at {host} refused the request ({line}): its status.token_file differs from this configuration's");
            } else {
                eprintln!("resync refused: {message}");
            }
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!(
                "cannot reach the daemon's status server at {host} ({e}): is `tidewater run` running with this \
                 configuration? A resync is done by the running daemon."
            );
            ExitCode::from(1)
        }
    }
}

async fn check(path: &std::path::Path, offline: bool) -> ExitCode {
    let cfg = match load_config(path) {
        Ok(c) => {
            println!("[ok]   config: {} valid ({} pipelines)", path.display(), c.pipelines.len());
            c
        }
        Err(code) => return code,
    };
    if offline {
        println!("\nconfiguration valid (--offline: no server was contacted)");
        return ExitCode::SUCCESS;
    }
    let mut failed = false;
    let mut checked_sources = std::collections::BTreeSet::new();
    let mut checked_targets = std::collections::BTreeSet::new();
    for p in &cfg.pipelines {
        if checked_sources.insert(p.source.name.clone()) {
            let results = if p.source.kind == config::SourceKind::Postgres {
                match crate::connectors::source_pg_endpoint(p) {
                    Ok(ep) => tidewater_postgres::check::check_source(&p.source.name, &ep, &p.source.tables).await,
                    Err(e) => vec![failure("settings", e.message)],
                }
            } else {
                check_source_generic(p).await
            };
            failed |= print_results(&format!("source {}", p.source.name), &results);
        }
        if checked_targets.insert(p.target.name.clone()) {
            let results = match crate::connectors::target_pg_endpoint(p) {
                Ok(Some(ep)) => tidewater_postgres::check::check_target(&p.target.name, &ep).await,
                Ok(None) if p.target.kind != TargetKind::Postgres => check_target_generic(p).await,
                Ok(None) => vec![failure("url", "the target has no url".into())],
                Err(e) => vec![failure("settings", e.message)],
            };
            failed |= print_results(&format!("target {}", p.target.name), &results);
        }
    }
    if failed {
        println!("\nsome checks failed: fix them and run tidewater check again");
        ExitCode::from(1)
    } else {
        println!("\nall checks passed");
        ExitCode::SUCCESS
    }
}

fn failure(what: &str, detail: String) -> tidewater_postgres::check::CheckResult {
    tidewater_postgres::check::CheckResult { what: what.into(), ok: false, detail }
}

/// Checks a non-Postgres source through its own `prepare` (server settings, grants, every
/// configured table and its key); it has no side effects on MySQL.
async fn check_source_generic(p: &config::PipelineConfig) -> Vec<tidewater_postgres::check::CheckResult> {
    let mut source = match crate::connectors::source(p) {
        Ok(s) => s,
        Err(e) => return vec![failure("config", e.message)],
    };
    match source.prepare().await {
        Ok(tables) => {
            let mut results = vec![tidewater_postgres::check::CheckResult {
                what: "connect, server settings and grants".into(),
                ok: true,
                detail: "ok".into(),
            }];
            for t in tables {
                results.push(tidewater_postgres::check::CheckResult {
                    what: format!("table {}", t.id),
                    ok: true,
                    detail: format!("{} columns, key ({})", t.columns.len(), t.key_names().join(", ")),
                });
            }
            results
        }
        Err(e) => vec![failure("connect, server settings, grants and tables", e.to_string())],
    }
}

/// Checks a non-Postgres target without writing to it: SQLite looks at the file and its
/// directory, MySQL/MariaDB connects and reads the user's grants.
async fn check_target_generic(p: &config::PipelineConfig) -> Vec<tidewater_postgres::check::CheckResult> {
    let key = format!("targets.{}", p.target.name);
    let result = match (p.target.kind, &p.target.path) {
        (TargetKind::Sqlite, Some(path)) => tidewater_sqlite::check_target(path).await.map_err(|e| e.to_string()),
        _ => match crate::connectors::mysql_sink(p) {
            Ok(mut sink) => sink
                .check()
                .await
                .map_err(|e| format!("{e}; check {key}.url, its password_file/password_env, sslmode and ssl_ca_file")),
            Err(e) => Err(e.to_string()),
        },
    };
    match result {
        Ok(detail) => vec![tidewater_postgres::check::CheckResult { what: "writable".into(), ok: true, detail }],
        Err(detail) => vec![failure("writable", detail)],
    }
}

/// Prints results; returns true when any failed.
fn print_results(scope: &str, results: &[tidewater_postgres::check::CheckResult]) -> bool {
    let mut failed = false;
    for r in results {
        let mark = if r.ok { "[ok]  " } else { "[FAIL]" };
        println!("{mark} {scope}: {}: {}", r.what, r.detail);
        failed |= !r.ok;
    }
    failed
}

async fn status(url: &str, json: bool, token_file: Option<&std::path::Path>) -> ExitCode {
    let token = match token_file.map(config::read_token).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("--token-file: {e}");
            return ExitCode::from(1);
        }
    };
    let base = url.trim_end_matches('/');
    let status_url = format!("{base}/status");
    let body = match crate::http_get_with_token(&status_url, token.as_deref()).await {
        Ok(b) => b,
        Err(e) if e.contains(" 401 ") => {
            let hint = if token.is_some() {
                "the token in --token-file is not the one in the daemon's status.token_file"
            } else {
                "the daemon has a status.token_file: pass it with --token-file FILE"
            };
            eprintln!("cannot read {status_url}: {e} ({hint})");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!(
                "cannot read {status_url}: {e} (is tidewater running, and does its status.listen match {base}? \
                 pass --url http://HOST:PORT otherwise)"
            );
            return ExitCode::from(1);
        }
    };
    if json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    let parsed: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{status_url} did not return JSON: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "tidewater {} up {}s",
        parsed["version"].as_str().unwrap_or("?"),
        parsed["uptime_secs"].as_u64().unwrap_or(0)
    );
    println!(
        "{:<24} {:<12} {:>9} {:>12} {:>14} {:>6} {:>7}  LAST ERROR",
        "PIPELINE", "STATE", "LAG s", "LAG bytes", "EVENTS", "DLQ", "RETRIES"
    );
    let mut any_failed = false;
    for p in parsed["pipelines"].as_array().map(Vec::as_slice).unwrap_or_default() {
        any_failed |= p["state"] == "failed";
        println!(
            "{:<24} {:<12} {:>9.3} {:>12} {:>14} {:>6} {:>7}  {}",
            p["name"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?"),
            p["lag_seconds"].as_f64().unwrap_or(0.0),
            p["lag_bytes"].as_u64().unwrap_or(0),
            p["events_applied_total"].as_u64().unwrap_or(0),
            p["dead_letters_total"].as_u64().unwrap_or(0),
            p["retries_total"].as_u64().unwrap_or(0),
            p["last_error"].as_str().unwrap_or("-"),
        );
        // Tables being copied or failed, with their progress.
        for t in p["tables"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let state = t["state"].as_str().unwrap_or("?");
            if state == "streaming" {
                continue;
            }
            let estimate = t["rows_estimate"].as_u64().map_or(String::new(), |n| format!(" of ~{n}"));
            println!(
                "  {} -> {}: {state}, {} rows copied{estimate}{}",
                t["name"].as_str().unwrap_or("?"),
                t["target"].as_str().unwrap_or("?"),
                t["rows_copied"].as_u64().unwrap_or(0),
                t["last_error"].as_str().map_or(String::new(), |e| format!(" ({e})")),
            );
        }
    }
    if any_failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

async fn dlq_list(path: &std::path::Path, pipeline: Option<&str>) -> ExitCode {
    let cfg = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let pipelines = match selected(&cfg, pipeline) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut failed = false;
    for p in pipelines {
        let rows = async {
            let mut sink = crate::connectors::sink(p)?;
            sink.prepare().await?;
            sink.list_dead_letters(&p.name).await
        }
        .await;
        match rows {
            Ok(rows) => {
                println!("pipeline {}: {} dead letters", p.name, rows.len());
                for r in rows {
                    println!(
                        "  #{} {} {} -> {} at {} failed {}{}\n     error: {}\n     payload: {}",
                        r.id,
                        r.op,
                        r.source_table,
                        r.target_table,
                        r.source_position,
                        r.failed_at,
                        r.replayed_at.map(|t| format!(", replayed {t}")).unwrap_or_default(),
                        r.error,
                        r.payload
                    );
                }
            }
            Err(e) => {
                eprintln!("pipeline {}: {e}", p.name);
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The pipelines a command applies to; an unknown `--pipeline` is an error.
fn selected<'a>(cfg: &'a Config, pipeline: Option<&str>) -> Result<Vec<&'a config::PipelineConfig>, ExitCode> {
    let chosen: Vec<_> = cfg.pipelines.iter().filter(|p| pipeline.is_none_or(|name| name == p.name)).collect();
    if chosen.is_empty() {
        eprintln!(
            "no pipeline named {:?}; configured: {}",
            pipeline.unwrap_or_default(),
            cfg.pipelines.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
        );
        return Err(ExitCode::from(1));
    }
    Ok(chosen)
}

/// Postgres endpoints of a pipeline's source and target when both are Postgres.
fn pg_pair(
    p: &config::PipelineConfig,
) -> Result<Option<(tidewater_postgres::PgEndpoint, tidewater_postgres::PgEndpoint)>, String> {
    if p.source.kind != config::SourceKind::Postgres {
        return Ok(None);
    }
    let Some(target) = crate::connectors::target_pg_endpoint(p).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let source = crate::connectors::source_pg_endpoint(p).map_err(|e| e.to_string())?;
    Ok(Some((source, target)))
}

async fn verify(path: &std::path::Path, pipeline: Option<&str>) -> ExitCode {
    let cfg = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let pipelines = match selected(&cfg, pipeline) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut all_match = true;
    for p in pipelines {
        match verify_pipeline(p).await {
            Ok(matches) => all_match &= matches,
            Err(e) => {
                println!("[FAIL] pipeline {}: {e}", p.name);
                all_match = false;
            }
        }
    }
    if all_match {
        println!("source and target match");
        ExitCode::SUCCESS
    } else {
        println!("differences found (a pipeline that is still catching up also shows differences: check lag_seconds)");
        ExitCode::from(1)
    }
}

const VERIFY_CHUNK_ROWS: i64 = 100_000;

async fn verify_pipeline(p: &config::PipelineConfig) -> Result<bool, String> {
    let Some((source_ep, target_ep)) = pg_pair(p)? else {
        return verify_with_scratch(p).await;
    };
    let source = tidewater_postgres::conn::connect(&source_ep).await.map_err(|e| e.to_string())?;
    let target = tidewater_postgres::conn::connect(&target_ep).await.map_err(|e| e.to_string())?;
    let tables = tidewater_postgres::catalog::resolve_tables(&source, &p.source.tables, &p.source.name)
        .await
        .map_err(|e| e.to_string())?;
    let renames = crate::engine::renames(p);
    let mut all_match = true;
    for (id, relid) in tables {
        let schema = tidewater_postgres::catalog::table_schema(&source, &id, relid).await.map_err(|e| e.to_string())?;
        let target_id = renames.get(&id).cloned().unwrap_or_else(|| id.clone());
        match tidewater_postgres::verify::verify_table(&source, &target, &schema, &target_id, VERIFY_CHUNK_ROWS).await {
            Ok(v) if v.matches() => {
                println!(
                    "[ok]   {}: {id} -> {target_id}: {} rows match ({} key ranges)",
                    p.name, v.source_rows, v.ranges
                )
            }
            Ok(v) => {
                all_match = false;
                println!(
                    "[DIFF] {}: {id} -> {target_id}: source {} rows, target {} rows; {} of {} key ranges differ:",
                    p.name,
                    v.source_rows,
                    v.target_rows,
                    v.differing.len(),
                    v.ranges
                );
                let show = |b: &Option<Vec<String>>, open: &str| {
                    b.as_ref().map_or(open.to_string(), |k| format!("({})", k.join(", ")))
                };
                for d in v.differing.iter().take(20) {
                    println!(
                        "       keys [{} .. {}): source {} rows, target {} rows",
                        show(&d.from, "start"),
                        show(&d.to, "end"),
                        d.source_rows,
                        d.target_rows
                    );
                }
            }
            Err(e) => {
                all_match = false;
                println!("[FAIL] {}: {id} -> {target_id}: {e}", p.name);
            }
        }
    }
    Ok(all_match)
}

/// Any pair other than Postgres → Postgres: see [`crate::verify`].
async fn verify_with_scratch(p: &config::PipelineConfig) -> Result<bool, String> {
    let reports = crate::verify::verify_with_scratch(p).await.map_err(|e| e.to_string())?;
    let mut all_match = true;
    for report in reports {
        match report {
            Ok(r) if r.matches() => {
                println!("[ok]   {}: {} -> {}: {} rows match", p.name, r.source, r.target, r.source_rows)
            }
            Ok(r) => {
                all_match = false;
                let c = &r.comparison;
                println!(
                    "[DIFF] {}: {} -> {}: source {} rows, target {} rows; {} missing in the target, {} only in the \
                     target, {} with different values, {} the target cannot store",
                    p.name,
                    r.source,
                    r.target,
                    r.source_rows,
                    c.target_rows,
                    c.missing,
                    c.extra,
                    c.differing,
                    r.unstorable.len()
                );
                for (kind, key) in &c.examples {
                    println!("       key ({}): {}", key.join(", "), kind.as_str());
                }
                for (key, error) in r.unstorable.iter().take(crate::verify::EXAMPLES) {
                    println!("       key ({}): the target cannot store the source row: {error}", key.join(", "));
                }
            }
            Err((plan, e)) => {
                all_match = false;
                println!("[FAIL] {}: {} -> {}: {e}", p.name, plan.source.id, plan.target);
            }
        }
    }
    Ok(all_match)
}

async fn dlq_replay(path: &std::path::Path, pipeline: Option<&str>, id: Option<i64>) -> ExitCode {
    let cfg = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let pipelines = match selected(&cfg, pipeline) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut failed = false;
    for p in pipelines {
        match crate::replay::replay(p, id).await {
            Ok(results) => {
                println!("pipeline {}: {} dead letters to replay", p.name, results.len());
                for r in results {
                    let mark = if r.ok { "[ok]  " } else { "[FAIL]" };
                    println!("{mark} #{}: {}", r.id, r.message);
                    failed |= !r.ok;
                }
            }
            Err(e) => {
                eprintln!("pipeline {}: {e}", p.name);
                failed = true;
            }
        }
    }
    if failed {
        println!("some dead letters could not be replayed: they stay in tidewater_dead_letters with the new error");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
