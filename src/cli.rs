//! Command line: `run`, `check`, `status`, `verify`, `dlq list|replay`.
//!
//! Exit codes: 0 success, 1 a failure the user must fix, 2 bad usage (clap's own).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, TargetKind, DEFAULT_CONFIG_PATH};

#[derive(Debug, Parser)]
#[command(name = "tidewater", version, about = "Change-data-capture sync daemon")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (systemd ExecStart).
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Validate the configuration, connect, and verify server settings.
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Show the running daemon's status.
    Status {
        #[arg(long, default_value = "http://127.0.0.1:8790")]
        url: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare source and target rows (counts and checksums).
    Verify {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(long)]
        pipeline: Option<String>,
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
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(long)]
        pipeline: Option<String>,
    },
    /// Re-apply dead letters after fixing their cause.
    Replay {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
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
            crate::run_until_signal(cfg).await
        }
        Command::Check { config } => check(&config).await,
        Command::Status { url, json } => status(&url, json).await,
        Command::Verify { .. } => {
            eprintln!("tidewater verify is not available in this version yet");
            ExitCode::from(1)
        }
        Command::Dlq { command: DlqCommand::List { config, pipeline } } => dlq_list(&config, pipeline.as_deref()).await,
        Command::Dlq { command: DlqCommand::Replay { .. } } => {
            eprintln!("tidewater dlq replay is not available in this version yet");
            ExitCode::from(1)
        }
    }
}

async fn check(path: &std::path::Path) -> ExitCode {
    let cfg = match load_config(path) {
        Ok(c) => {
            println!("[ok]   config: {} valid ({} pipelines)", path.display(), c.pipelines.len());
            c
        }
        Err(code) => return code,
    };
    let mut failed = false;
    let mut checked_sources = std::collections::BTreeSet::new();
    let mut checked_targets = std::collections::BTreeSet::new();
    for p in &cfg.pipelines {
        if checked_sources.insert(p.source.name.clone()) {
            let results = match crate::connectors::source_pg_endpoint(p) {
                Ok(ep) if p.source.kind == config::SourceKind::Postgres => {
                    tidewater_postgres::check::check_source(&p.source.name, &ep, &p.source.tables).await
                }
                Ok(_) => vec![unsupported("mysql sources are not available in this build yet")],
                Err(e) => vec![tidewater_postgres::check::CheckResult {
                    what: "password".into(),
                    ok: false,
                    detail: e.message,
                }],
            };
            failed |= print_results(&format!("source {}", p.source.name), &results);
        }
        if checked_targets.insert(p.target.name.clone()) {
            let results = match crate::connectors::target_pg_endpoint(p) {
                Ok(Some(ep)) => tidewater_postgres::check::check_target(&p.target.name, &ep).await,
                Ok(None) if p.target.kind != TargetKind::Postgres => {
                    vec![unsupported("mysql and sqlite targets are not available in this build yet")]
                }
                Ok(None) => vec![unsupported("target has no url")],
                Err(e) => vec![tidewater_postgres::check::CheckResult {
                    what: "password".into(),
                    ok: false,
                    detail: e.message,
                }],
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

fn unsupported(detail: &str) -> tidewater_postgres::check::CheckResult {
    tidewater_postgres::check::CheckResult { what: "type".into(), ok: false, detail: detail.into() }
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

async fn status(url: &str, json: bool) -> ExitCode {
    let body = match crate::http_get(&format!("{}/status", url.trim_end_matches('/'))).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot read {url}/status: {e} (is tidewater running? is status.listen {url}?)");
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
            eprintln!("{url}/status did not return JSON: {e}");
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
    let mut failed = false;
    for p in cfg.pipelines.iter().filter(|p| pipeline.is_none_or(|name| name == p.name)) {
        let endpoint = match crate::connectors::target_pg_endpoint(p) {
            Ok(Some(ep)) => ep,
            Ok(None) => {
                eprintln!("pipeline {}: only postgres targets are supported by dlq list in this build", p.name);
                failed = true;
                continue;
            }
            Err(e) => {
                eprintln!("pipeline {}: {e}", p.name);
                failed = true;
                continue;
            }
        };
        match tidewater_postgres::dlq::list(&endpoint, &p.name).await {
            Ok(rows) => {
                println!("pipeline {}: {} dead letters", p.name, rows.len());
                for r in rows {
                    println!(
                        "  #{} {} {} {} -> {} at {} failed {}{}\n     error: {}\n     payload: {}",
                        r.id,
                        r.op,
                        r.source_position,
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
