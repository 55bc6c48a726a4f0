//! systemd integration (`Type=notify`): `READY=1` once every pipeline has started or
//! failed, a one-line `STATUS=`, `WATCHDOG=1` pings, `STOPPING=1` on shutdown.
//!
//! Watchdog pings are not a timer that always fires: each ping requires every live
//! pipeline's task to have shown progress (or idle waiting) recently, so a wedged engine
//! stops the pings and systemd restarts the service. Outside systemd (no
//! `NOTIFY_SOCKET`) all of this is a no-op.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::sync::watch;

use crate::status::{PipelineState, Registry};

/// Whether a pipeline counts as alive for the watchdog.
pub fn pipeline_alive(state: PipelineState, last_alive: Instant, now: Instant, limit: Duration) -> bool {
    match state {
        // Finished pipelines are not wedged; `failed` is reported through STATUS/readyz.
        PipelineState::Failed | PipelineState::Stopped => true,
        _ => now.saturating_duration_since(last_alive) < limit,
    }
}

/// `2 streaming, 1 failed; max lag 0.4 s`.
pub fn status_line(registry: &Registry) -> String {
    let json = registry.json();
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for p in &json.pipelines {
        let state = p.state.as_str();
        match counts.iter_mut().find(|(s, _)| *s == state) {
            Some((_, n)) => *n += 1,
            None => counts.push((state, 1)),
        }
    }
    let lag = json.pipelines.iter().map(|p| p.lag_seconds).fold(0.0, f64::max);
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    format!("{} pipelines: {}; max lag {lag:.1} s", json.pipelines.len(), parts.join(", "))
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Runs until `shutdown`; sends READY, STATUS and watchdog pings.
pub async fn run(registry: Arc<Registry>, mut shutdown: watch::Receiver<bool>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled();
    // Ping at half the timeout; a pipeline must have been alive within the timeout.
    let tick =
        watchdog.map_or(Duration::from_secs(1), |w| (w / 2).clamp(Duration::from_millis(100), Duration::from_secs(1)));
    let mut ready = false;
    let mut last_status = String::new();
    loop {
        if !ready && registry.pipelines().iter().all(|p| p.state() != PipelineState::Starting) {
            ready = true;
            let line = status_line(&registry);
            notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
            last_status = line;
        }
        let line = status_line(&registry);
        if line != last_status {
            notify(&[NotifyState::Status(&line)]);
            last_status = line;
        }
        if let Some(limit) = watchdog {
            let now = Instant::now();
            let wedged: Vec<String> = registry
                .pipelines()
                .iter()
                .filter(|p| {
                    let f = p.figures();
                    !pipeline_alive(f.state, f.last_alive, now, limit)
                })
                .map(|p| p.name.clone())
                .collect();
            if wedged.is_empty() {
                notify(&[NotifyState::Watchdog]);
            } else {
                tracing::error!(pipelines = ?wedged, "pipeline task not responding: withholding the watchdog ping");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => break,
        }
    }
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping: finishing in-flight batches")]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_running_pipeline_is_wedged_but_a_failed_one_is_not() {
        let now = Instant::now();
        let limit = Duration::from_secs(10);
        let stale = now - Duration::from_secs(30);
        assert!(!pipeline_alive(PipelineState::Streaming, stale, now, limit));
        assert!(!pipeline_alive(PipelineState::Snapshotting, stale, now, limit));
        assert!(pipeline_alive(PipelineState::Streaming, now - Duration::from_secs(2), now, limit));
        assert!(pipeline_alive(PipelineState::Failed, stale, now, limit));
        assert!(pipeline_alive(PipelineState::Stopped, stale, now, limit));
    }
}
