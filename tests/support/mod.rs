//! Shared integration-test support: throwaway database servers and helpers.
//!
//! Include from any integration test file with `mod support;`.
#![allow(dead_code)]

pub mod daemon;
pub mod mysql;
pub mod pg;
pub mod proxy;

#[allow(unused_imports)]
pub use daemon::{InProcess, TestPipeline};

// Not every test binary uses every helper.
#[allow(unused_imports)]
pub use pg::{
    free_port, fresh_db, pg_source, pg_target, PgServer, ADMIN_PASSWORD, ADMIN_USER, REPLICATOR_PASSWORD,
    REPLICATOR_USER,
};

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `f` every 100 ms until it returns `Some` or `timeout` elapses;
/// panics with `what` on timeout. `f` is always called at least once, and once
/// more right at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        let now = Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(100))).await;
    }
}
