//! Tidewater: a change-data-capture sync daemon.
//!
//! The library exposes [`run`] (every pipeline plus the status server, until the
//! shutdown signal) so the daemon can be driven in-process by tests; `main` only parses
//! the command line.

pub mod cli;
pub mod config;
pub mod connectors;
pub mod engine;
pub mod replay;
pub mod status;
pub mod systemd;
pub mod telemetry;
pub mod verify;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use config::Config;
use engine::Outcome;
use status::{PipelineStatus, Registry};

/// `tidewater --version`: the package version and the git commit it was built from
/// (`unknown` when built outside a git checkout).
pub const VERSION_LINE: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("TIDEWATER_GIT_COMMIT"), ")");

/// How long in-flight work gets to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs every pipeline and the status server until `shutdown` turns true. A pipeline that
/// fails stays `failed` on `/status` while the others go on. Returns the outcome of each
/// pipeline, in configuration order.
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<Vec<Outcome>> {
    run_with_reloads(cfg, shutdown, None).await
}

/// One running pipeline.
struct Running {
    cfg: config::PipelineConfig,
    status: Arc<PipelineStatus>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Outcome>,
}

impl Running {
    fn start(cfg: config::PipelineConfig) -> Running {
        let status = PipelineStatus::new(&cfg.name);
        let (stop, stop_rx) = watch::channel(false);
        let (task_cfg, task_status) = (cfg.clone(), status.clone());
        let task = tokio::spawn(async move {
            let name = task_cfg.name.clone();
            let status_for_panic = task_status.clone();
            // Every event a pipeline logs carries its name (events about progress also carry
            // the applied source position).
            let span = tracing::info_span!("pipeline", pipeline = %name);
            let run =
                tracing::Instrument::instrument(engine::run_pipeline_with_grace(task_cfg, task_status, stop_rx), span);
            match tokio::spawn(run).await {
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
        });
        Running { cfg, status, stop, task }
    }

    async fn finish(self) -> Outcome {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_else(|e| Outcome::Failed(e.to_string()))
    }
}

/// [`run`], also applying configurations received on `reloads` (SIGHUP): pipelines whose
/// configuration changed are restarted, new ones started, removed ones stopped. The
/// status address is fixed for the process's life.
pub async fn run_with_reloads(
    cfg: Config,
    mut shutdown: watch::Receiver<bool>,
    mut reloads: Option<tokio::sync::mpsc::Receiver<Config>>,
) -> anyhow::Result<Vec<Outcome>> {
    let registry = Registry::new(Vec::new());
    let token = match &cfg.status_token_file {
        Some(path) => Some(config::read_token(path).map_err(|e| anyhow::anyhow!("status.token_file: {e}"))?),
        None => None,
    };
    let (addr, server) = status::bind(cfg.status_listen, registry.clone(), token)
        .await
        .map_err(|e| anyhow::anyhow!("status.listen {}: cannot listen: {e}", cfg.status_listen))?;
    tracing::info!(listen = %addr, "status server listening");
    let server = tokio::spawn(server);
    let mut running: Vec<Running> = cfg.pipelines.into_iter().map(Running::start).collect();
    registry.set_pipelines(running.iter().map(|r| r.status.clone()).collect());
    let notifier = tokio::spawn(systemd::run(registry.clone(), shutdown.clone()));
    loop {
        let reload = async {
            match reloads.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
            new = reload => match new {
                Some(new) => {
                    if new.status_listen != cfg.status_listen {
                        tracing::warn!("status.listen changed: takes effect at the next restart");
                    }
                    running = apply_reload(running, new.pipelines).await;
                    registry.set_pipelines(running.iter().map(|r| r.status.clone()).collect());
                }
                None => reloads = None,
            },
        }
    }
    // Stop every pipeline at once, then wait: the grace period is shared, not summed.
    for r in &running {
        let _ = r.stop.send(true);
    }
    let mut outcomes = Vec::new();
    for r in running {
        outcomes.push(r.finish().await);
    }
    server.abort();
    // Wait until the listener is closed, so the address is free when this returns.
    let _ = server.await;
    let _ = notifier.await;
    Ok(outcomes)
}

/// Stops removed and changed pipelines, starts new and changed ones; unchanged ones keep
/// running untouched. Returns the new set in the new configuration's order.
async fn apply_reload(running: Vec<Running>, wanted: Vec<config::PipelineConfig>) -> Vec<Running> {
    let mut old: std::collections::HashMap<String, Running> =
        running.into_iter().map(|r| (r.cfg.name.clone(), r)).collect();
    let mut next = Vec::new();
    for cfg in wanted {
        match old.remove(&cfg.name) {
            Some(r) if r.cfg == cfg => next.push(r),
            Some(r) => {
                tracing::info!(pipeline = %cfg.name, "configuration changed: restarting the pipeline");
                r.finish().await;
                next.push(Running::start(cfg));
            }
            None => {
                tracing::info!(pipeline = %cfg.name, "new pipeline in the configuration: starting it");
                next.push(Running::start(cfg));
            }
        }
    }
    for (name, r) in old {
        tracing::info!(pipeline = %name, "pipeline removed from the configuration: stopping it");
        r.finish().await;
    }
    next
}

/// `tidewater run`: [`run_with_reloads`] until SIGTERM/SIGINT; SIGHUP re-reads `path`
/// (an invalid file is rejected with a log line and the running configuration stays).
/// Exit 0 after a clean shutdown, 1 if a pipeline failed.
pub async fn run_until_signal(cfg: Config, path: std::path::PathBuf) -> ExitCode {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: finishing in-flight batches");
        let _ = tx.send(true);
    });
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(reload_on_sighup(path, reload_tx));
    match run_with_reloads(cfg, rx, Some(reload_rx)).await {
        Ok(outcomes) if outcomes.iter().all(|o| *o == Outcome::Stopped) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

async fn reload_on_sighup(path: std::path::PathBuf, reloads: tokio::sync::mpsc::Sender<Config>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            match config::load(&path) {
                Ok(cfg) => {
                    tracing::info!(config = %path.display(), "SIGHUP: configuration re-read");
                    if reloads.send(cfg).await.is_err() {
                        return;
                    }
                }
                Err(errors) => {
                    let text = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                    tracing::error!(config = %path.display(), errors = %text, "SIGHUP: new configuration rejected, keeping the running one");
                }
            }
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
    http_get_with_token(url, None).await
}

/// [`http_get`] with an optional bearer token.
pub async fn http_get_with_token(url: &str, token: Option<&str>) -> Result<String, String> {
    let (code, status_line, body) = http_request("GET", url, token, None).await?;
    if code != 200 {
        return Err(format!("HTTP {status_line}"));
    }
    Ok(body)
}

/// A minimal HTTP/1.1 request with an optional bearer token and JSON body; returns the
/// status code, the status line and the body.
pub async fn http_request(
    method: &str,
    url: &str,
    token: Option<&str>,
    json: Option<&str>,
) -> Result<(u16, String, String), String> {
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
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let body = json.map(|j| format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{j}", j.len()));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\n{auth}Connection: close\r\n{}",
        body.unwrap_or_else(|| "\r\n".into())
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| "read timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed HTTP response")?;
    let status_line = head.lines().next().unwrap_or_default();
    let code =
        status_line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("malformed HTTP status line")?;
    Ok((code, status_line.to_string(), body.to_string()))
}
