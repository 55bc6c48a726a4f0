//! Tidewater: a change-data-capture sync daemon.
//!
//! The library exposes [`run`] (every pipeline plus the status server, until the
//! shutdown signal) so the daemon can be driven in-process by tests; `main` only parses
//! the command line.

pub mod cli;
pub mod config;
pub mod connectors;
pub mod engine;
pub mod status;
pub mod systemd;
pub mod telemetry;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use config::Config;
use engine::Outcome;
use status::{PipelineStatus, Registry};

/// How long in-flight work gets to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs every pipeline and the status server until `shutdown` turns true. A pipeline that
/// fails stays `failed` on `/status` while the others go on. Returns the outcome of each
/// pipeline, in configuration order.
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<Vec<Outcome>> {
    let statuses: Vec<Arc<PipelineStatus>> = cfg.pipelines.iter().map(|p| PipelineStatus::new(&p.name)).collect();
    let registry = Registry::new(statuses.clone());
    let notifier = tokio::spawn(systemd::run(registry.clone(), shutdown.clone()));
    let (addr, server) = status::bind(cfg.status_listen, registry)
        .await
        .map_err(|e| anyhow::anyhow!("status.listen {}: cannot listen: {e}", cfg.status_listen))?;
    tracing::info!(listen = %addr, "status server listening");
    let server = tokio::spawn(server);
    let mut tasks = Vec::new();
    for (p, status) in cfg.pipelines.into_iter().zip(statuses) {
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let name = p.name.clone();
            let status_for_panic = status.clone();
            let inner = tokio::spawn(engine::run_pipeline_with_grace(p, status, shutdown));
            match inner.await {
                Ok(outcome) => outcome,
                Err(e) => {
                    // A panic inside one pipeline must not take the others down.
                    let message = format!("pipeline {name} crashed: {e}");
                    let mut f = status_for_panic.figures();
                    f.state = status::PipelineState::Failed;
                    f.last_error = Some(message.clone());
                    Outcome::Failed(message)
                }
            }
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap_or_else(|e| Outcome::Failed(e.to_string())));
    }
    // Failed pipelines stay visible on /status (and /readyz says not ready) until the
    // daemon is told to stop; the exit code then reports the failure.
    let mut shutdown = shutdown;
    let _ = shutdown.wait_for(|stop| *stop).await;
    server.abort();
    // Wait until the listener is closed, so the address is free when this returns.
    let _ = server.await;
    let _ = notifier.await;
    Ok(outcomes)
}

/// `tidewater run`: [`run`] until SIGTERM/SIGINT. Exit 0 after a clean shutdown, 1 if a
/// pipeline failed.
pub async fn run_until_signal(cfg: Config) -> ExitCode {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: finishing in-flight batches");
        let _ = tx.send(true);
    });
    match run(cfg, rx).await {
        Ok(outcomes) if outcomes.iter().all(|o| *o == Outcome::Stopped) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A minimal HTTP/1.1 GET for `tidewater status` (no TLS: the status server is local).
pub async fn http_get(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs are supported")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let connect = tokio::net::TcpStream::connect(hostport);
    let mut stream = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| "connection timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| "read timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed HTTP response")?;
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.contains(" 200 ") {
        return Err(format!("HTTP {status_line}"));
    }
    Ok(body.to_string())
}
