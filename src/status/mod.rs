//! Pipeline status: the shared figures every pipeline updates, and the HTTP server that
//! shows them (`/status` JSON as PRODUCT.md defines it, `/healthz`, `/readyz`,
//! `/metrics` in Prometheus text format, and the dashboard page at `/`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tidewater_core::SourceProgress;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineState {
    Starting,
    Snapshotting,
    Streaming,
    Retrying,
    Failed,
    Stopped,
}

impl PipelineState {
    /// Every state, for the `tidewater_pipeline_state` StateSet.
    pub const ALL: [PipelineState; 6] = [
        PipelineState::Starting,
        PipelineState::Snapshotting,
        PipelineState::Streaming,
        PipelineState::Retrying,
        PipelineState::Failed,
        PipelineState::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PipelineState::Starting => "starting",
            PipelineState::Snapshotting => "snapshotting",
            PipelineState::Streaming => "streaming",
            PipelineState::Retrying => "retrying",
            PipelineState::Failed => "failed",
            PipelineState::Stopped => "stopped",
        }
    }
}

/// A table's state in `/status` (PRODUCT.md: `snapshotting`, `resyncing`, `streaming`,
/// `failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableState {
    Snapshotting,
    Resyncing,
    Streaming,
    Failed,
}

impl TableState {
    pub fn as_str(self) -> &'static str {
        match self {
            TableState::Snapshotting => "snapshotting",
            TableState::Resyncing => "resyncing",
            TableState::Streaming => "streaming",
            TableState::Failed => "failed",
        }
    }
}

/// One source table of a pipeline, as `/status` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableJson {
    /// The source table (`schema.table`).
    pub name: String,
    /// The target table it is written to.
    pub target: String,
    pub state: TableState,
    /// Rows copied by the current (or last) snapshot of the table.
    pub rows_copied: u64,
    /// The source's estimate of the table's rows (its statistics), when it has one.
    pub rows_estimate: Option<u64>,
    /// The last error about this table: a failure naming it, or a row of it the target
    /// rejected (dead-lettered).
    pub last_error: Option<String>,
    /// The table has no key (it cannot be resynced by key range).
    #[serde(skip)]
    pub keyless: bool,
}

#[derive(Debug, Clone)]
pub struct Figures {
    pub state: PipelineState,
    pub applied_position: Option<String>,
    pub last_applied_at: Option<SystemTime>,
    pub events_applied_total: u64,
    pub transactions_applied_total: u64,
    pub dead_letters_total: u64,
    pub retries_total: u64,
    pub last_error: Option<String>,
    /// Commit time of the oldest source transaction received but not yet applied.
    pub oldest_unapplied_commit: Option<SystemTime>,
    /// When the source stream last delivered anything (a change or an idle heartbeat).
    pub source_seen_at: Option<SystemTime>,
    /// Set while the source stream is lost: when it last delivered anything. Changes
    /// committed since may be waiting unseen, so lag counts from there (an upper bound).
    pub source_lost_since: Option<SystemTime>,
    /// Last time the pipeline's task showed it is making progress or idly waiting (not
    /// wedged); the systemd watchdog only pings while this is fresh.
    pub last_alive: Instant,
    /// Events per applied batch.
    pub batch_events: Histogram,
    /// Seconds per successful target apply (one target transaction).
    pub apply_seconds: Histogram,
    /// The pipeline's tables, in plan order.
    pub tables: Vec<TableJson>,
}

impl Figures {
    /// The entry of source table `name` (as `schema.table`), if the pipeline has it.
    pub fn table_mut(&mut self, name: &str) -> Option<&mut TableJson> {
        self.tables.iter_mut().find(|t| t.name == name)
    }

    /// Replaces the table list with `tables` (source, target, keyless), keeping the
    /// figures of tables that were listed before; every table starts as `streaming` (a
    /// copy marks its tables `snapshotting` when it begins).
    pub fn set_tables(&mut self, tables: impl IntoIterator<Item = (String, String, bool)>) {
        let old = std::mem::take(&mut self.tables);
        self.tables = tables
            .into_iter()
            .map(|(name, target, keyless)| match old.iter().find(|t| t.name == name) {
                Some(t) => TableJson { target, state: TableState::Streaming, keyless, ..t.clone() },
                None => TableJson {
                    name,
                    target,
                    state: TableState::Streaming,
                    rows_copied: 0,
                    rows_estimate: None,
                    last_error: None,
                    keyless,
                },
            })
            .collect();
    }

    /// Attributes `error` to every table whose source or target name it mentions (a
    /// failure "about" a table names it); with `failed`, those tables are `failed`.
    pub fn note_table_error(&mut self, error: &str, failed: bool) {
        for t in &mut self.tables {
            if mentions(error, &t.name) || mentions(error, &t.target) {
                t.last_error = Some(error.to_string());
                if failed {
                    t.state = TableState::Failed;
                }
            }
        }
    }

    /// Attributes a rejection of rows of a batch that wrote to `targets` (target tables,
    /// `schema.table`) to its table: the only one, or those the message names (sinks name a
    /// table by its full name or, SQLite, by its bare name).
    pub fn note_rejection(&mut self, error: &str, targets: &[(String, String)]) {
        let named: Vec<&(String, String)> = match targets {
            [only] => vec![only],
            _ => targets.iter().filter(|(full, bare)| mentions(error, full) || mentions(error, bare)).collect(),
        };
        for t in &mut self.tables {
            if named.iter().any(|(full, _)| *full == t.target) {
                t.last_error = Some(error.to_string());
            }
        }
    }
}

/// Whether `text` names table `name` as a whole word (`public.t` is not named by
/// `public.t2`).
fn mentions(text: &str, name: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(name).any(|(i, m)| {
        let before = text[..i].chars().next_back();
        let after = text[i + m.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

/// A fixed-bucket histogram in the Prometheus sense (counts per upper bound).
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

pub const BATCH_EVENT_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0];
pub const APPLY_SECONDS_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    /// (upper bound, cumulative count) per bucket, without `+Inf`.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.bounds
            .iter()
            .zip(&self.counts)
            .map(|(&b, &c)| {
                total += c;
                (b, total)
            })
            .collect()
    }
}

/// One pipeline's live status, shared by its task and the HTTP server.
#[derive(Debug)]
pub struct PipelineStatus {
    pub name: String,
    figures: Mutex<Figures>,
    pub progress: Arc<SourceProgress>,
    /// Tables asked to be resynced (`POST /pipelines/NAME/resync`), not yet taken by
    /// the pipeline's task.
    resync_requests: Mutex<Vec<String>>,
    /// Wakes the pipeline's task for a resync request.
    pub resync_wake: tokio::sync::Notify,
}

impl PipelineStatus {
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(PipelineStatus {
            name: name.to_string(),
            figures: Mutex::new(Figures {
                state: PipelineState::Starting,
                applied_position: None,
                last_applied_at: None,
                events_applied_total: 0,
                transactions_applied_total: 0,
                dead_letters_total: 0,
                retries_total: 0,
                last_error: None,
                oldest_unapplied_commit: None,
                source_seen_at: None,
                source_lost_since: None,
                last_alive: Instant::now(),
                batch_events: Histogram::new(BATCH_EVENT_BUCKETS),
                apply_seconds: Histogram::new(APPLY_SECONDS_BUCKETS),
                tables: Vec::new(),
            }),
            progress: Arc::new(SourceProgress::default()),
            resync_requests: Mutex::new(Vec::new()),
            resync_wake: tokio::sync::Notify::new(),
        })
    }

    /// Asks the pipeline to resync source table `table` (as `/status` names it).
    pub fn request_resync(&self, table: &str) {
        self.resync_requests.lock().unwrap_or_else(|p| p.into_inner()).push(table.to_string());
        self.resync_wake.notify_one();
    }

    /// The resync requests made since the last call.
    pub fn take_resync_requests(&self) -> Vec<String> {
        std::mem::take(&mut *self.resync_requests.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The figures, for reading or updating. A poisoned lock (a panic elsewhere while
    /// holding it) still holds consistent-enough numbers to report.
    pub fn figures(&self) -> MutexGuard<'_, Figures> {
        self.figures.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_state(&self, state: PipelineState) {
        self.figures().state = state;
    }

    pub fn state(&self) -> PipelineState {
        self.figures().state
    }

    /// The pipeline's task is alive (see [`Figures::last_alive`]).
    pub fn touch(&self) {
        self.figures().last_alive = Instant::now();
    }

    pub fn snapshot_json(&self) -> PipelineJson {
        let f = self.figures().clone();
        let now = SystemTime::now();
        let lag_seconds = [f.oldest_unapplied_commit, f.source_lost_since]
            .into_iter()
            .flatten()
            .filter_map(|t| now.duration_since(t).ok())
            .max()
            .map_or(0.0, |d| (d.as_secs_f64() * 1000.0).round() / 1000.0);
        let head = self.progress.head_position.lock().ok().and_then(|h| h.clone());
        PipelineJson {
            name: self.name.clone(),
            state: f.state,
            source_position: head.or_else(|| f.applied_position.clone()),
            applied_position: f.applied_position,
            lag_bytes: self.progress.lag_bytes.load(Ordering::Relaxed),
            lag_seconds,
            last_applied_at: f
                .last_applied_at
                .map(|t| DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Secs, true)),
            events_applied_total: f.events_applied_total,
            transactions_applied_total: f.transactions_applied_total,
            dead_letters_total: f.dead_letters_total,
            retries_total: f.retries_total,
            last_error: f.last_error,
            tables: f.tables,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PipelineJson {
    pub name: String,
    pub state: PipelineState,
    pub source_position: Option<String>,
    pub applied_position: Option<String>,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    pub last_applied_at: Option<String>,
    pub events_applied_total: u64,
    pub transactions_applied_total: u64,
    pub dead_letters_total: u64,
    pub retries_total: u64,
    pub last_error: Option<String>,
    pub tables: Vec<TableJson>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusJson {
    pub version: &'static str,
    pub uptime_secs: u64,
    pub pipelines: Vec<PipelineJson>,
}

/// Every pipeline's status, in configuration order. The list changes when a reload adds
/// or removes pipelines.
#[derive(Debug)]
pub struct Registry {
    started: Instant,
    pipelines: std::sync::RwLock<Vec<Arc<PipelineStatus>>>,
}

impl Registry {
    pub fn new(pipelines: Vec<Arc<PipelineStatus>>) -> Arc<Self> {
        Arc::new(Registry { started: Instant::now(), pipelines: std::sync::RwLock::new(pipelines) })
    }

    /// The current pipelines.
    pub fn pipelines(&self) -> Vec<Arc<PipelineStatus>> {
        self.pipelines.read().map(|p| p.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    pub fn set_pipelines(&self, pipelines: Vec<Arc<PipelineStatus>>) {
        match self.pipelines.write() {
            Ok(mut p) => *p = pipelines,
            Err(poisoned) => *poisoned.into_inner() = pipelines,
        }
    }

    pub fn json(&self) -> StatusJson {
        StatusJson {
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.started.elapsed().as_secs(),
            pipelines: self.pipelines().iter().map(|p| p.snapshot_json()).collect(),
        }
    }

    /// Ready when every pipeline is past starting and none has failed.
    pub fn ready(&self) -> bool {
        self.pipelines().iter().all(|p| {
            matches!(p.state(), PipelineState::Snapshotting | PipelineState::Streaming | PipelineState::Retrying)
        })
    }
}

pub fn router(registry: Arc<Registry>, token: Option<String>) -> Router {
    // Data endpoints: behind the bearer token when one is configured.
    let protected = Router::new()
        .route("/status", get(status))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/pipelines/{name}/resync", axum::routing::post(resync))
        .route_layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let token = token.clone();
                async move {
                    if let Some(expected) = &token {
                        let given = request
                            .headers()
                            .get(header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("Bearer "));
                        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes())) {
                            return (
                                StatusCode::UNAUTHORIZED,
                                [(header::WWW_AUTHENTICATE, "Bearer")],
                                "bearer token required\n",
                            )
                                .into_response();
                        }
                    }
                    next.run(request).await
                }
            },
        ));
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(protected)
        .with_state(registry)
}

/// Compares without an early exit, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The dashboard: one self-contained page (no external assets) that polls `/status`.
async fn dashboard() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("dashboard.html"))
}

async fn status(State(registry): State<Arc<Registry>>) -> Json<StatusJson> {
    Json(registry.json())
}

/// `POST /pipelines/NAME/resync` with `{"table": "schema.table"}`: 202 when the
/// pipeline will resync the table, 404 for an unknown pipeline or table, 409 when the
/// table cannot be resynced, 400 for a malformed body. Errors are JSON `{"error": …}`.
async fn resync(
    State(registry): State<Arc<Registry>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let error =
        |code: StatusCode, message: String| (code, Json(serde_json::json!({ "error": message }))).into_response();
    let table = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => match v.get("table").and_then(|t| t.as_str()) {
            Some(t) => t.to_string(),
            None => return error(StatusCode::BAD_REQUEST, "the body must be {\"table\": \"schema.table\"}".into()),
        },
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON ({e}): send {{\"table\": \"schema.table\"}}"),
            )
        }
    };
    let Some(pipeline) = registry.pipelines().into_iter().find(|p| p.name == name) else {
        return error(StatusCode::NOT_FOUND, format!("no pipeline named {name:?}"));
    };
    let (found, state) = {
        let f = pipeline.figures();
        (resync_target(&f.tables, &table), f.state)
    };
    let entry = match found {
        Ok(entry) => entry,
        Err(message) => return error(StatusCode::NOT_FOUND, format!("pipeline {name}: {message}")),
    };
    if entry.keyless {
        return error(
            StatusCode::CONFLICT,
            format!(
                "{} has no primary key (or replica identity index): a resync replaces the target's rows key range by key \
                 range; give the table a key, or delete the pipeline's row from tidewater_checkpoints to copy everything again",
                entry.name
            ),
        );
    }
    if matches!(state, PipelineState::Failed | PipelineState::Stopped) {
        return error(
            StatusCode::CONFLICT,
            format!("pipeline {name} is {}: fix it and restart the daemon, then resync", state.as_str()),
        );
    }
    pipeline.request_resync(&entry.name);
    if let Some(t) = pipeline.figures().table_mut(&entry.name) {
        t.state = TableState::Resyncing;
        t.rows_copied = 0;
    }
    (StatusCode::ACCEPTED, Json(serde_json::json!({ "pipeline": name, "table": entry.name, "state": "resyncing" })))
        .into_response()
}

/// The table of `tables` that `given` names: its source name exactly, or without the
/// schema when only one table has that name.
fn resync_target(tables: &[TableJson], given: &str) -> Result<TableJson, String> {
    let given = given.trim();
    if let Some(t) = tables.iter().find(|t| t.name == given) {
        return Ok(t.clone());
    }
    let unquoted = given.replace(['"', '`'], "");
    let matches: Vec<&TableJson> = tables
        .iter()
        .filter(|t| t.name == unquoted || t.name.rsplit_once('.').is_some_and(|(_, n)| n == unquoted))
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!(
            "no table {given:?} (its tables: {})",
            tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
        )),
        _ => Err(format!("{given:?} names several tables: give it as schema.table")),
    }
}

async fn readyz(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    if registry.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render_metrics(&registry))
}

/// The conventional `process_*` metrics of this process, from `/proc/self` (Linux; left
/// out elsewhere).
fn process_metrics(out: &mut String) {
    use std::fmt::Write as _;
    let page = 4096.0;
    let ticks = 100.0; // USER_HZ: 100 on every Linux the daemon runs on.
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP process_{name} {help}\n# TYPE process_{name} {kind}\nprocess_{name} {value}");
    };
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        if let Some(rss) = statm.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()) {
            metric("resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss * page);
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces, in parentheses).
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            metric(
                "cpu_seconds_total",
                "counter",
                "User and system CPU time spent in seconds.",
                (utime + stime) / ticks,
            );
        }
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok())));
        if let (Some(start), Some(boot)) = (field(22), boot) {
            metric(
                "start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch in seconds.",
                boot + start / ticks,
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metric("open_fds", "gauge", "Number of open file descriptors.", fds.count() as f64);
    }
}

/// Prometheus text exposition of the status figures.
pub fn render_metrics(registry: &Registry) -> String {
    use std::fmt::Write as _;
    let status = &registry.json();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP tidewater_build_info The running build (always 1).\n# TYPE tidewater_build_info gauge\n\
         tidewater_build_info{{version=\"{}\"}} 1",
        status.version
    );
    process_metrics(&mut out);
    let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(&PipelineJson) -> f64| {
        let _ = writeln!(out, "# HELP tidewater_{name} {help}\n# TYPE tidewater_{name} {kind}");
        for p in &status.pipelines {
            let _ = writeln!(out, "tidewater_{name}{{pipeline=\"{}\"}} {}", p.name, value(p));
        }
    };
    family("events_applied_total", "counter", "Change events applied to the target.", &|p| {
        p.events_applied_total as f64
    });
    family("transactions_applied_total", "counter", "Source transactions applied to the target.", &|p| {
        p.transactions_applied_total as f64
    });
    family("lag_seconds", "gauge", "Age of the oldest committed source change not yet applied.", &|p| p.lag_seconds);
    family("lag_bytes", "gauge", "Source WAL/binlog bytes written but not yet applied.", &|p| p.lag_bytes as f64);
    family("dead_letters_total", "counter", "Events written to the dead-letter table.", &|p| {
        p.dead_letters_total as f64
    });
    family("retries_total", "counter", "Retries after transient errors.", &|p| p.retries_total as f64);
    // A StateSet: every state of every pipeline, 1 for the current one.
    let _ = writeln!(
        out,
        "# HELP tidewater_pipeline_state Current state (1 for the current one, 0 for the others).\n\
         # TYPE tidewater_pipeline_state gauge"
    );
    for p in &status.pipelines {
        for state in PipelineState::ALL {
            let _ = writeln!(
                out,
                "tidewater_pipeline_state{{pipeline=\"{}\",state=\"{}\"}} {}",
                p.name,
                state.as_str(),
                u8::from(state == p.state)
            );
        }
    }
    type TableFamily = (&'static str, &'static str, &'static str, fn(&TableJson) -> Option<f64>);
    let table_families: [TableFamily; 2] = [
        ("table_rows_copied", "gauge", "Rows copied by the table's current or last snapshot or resync.", |t| {
            Some(t.rows_copied as f64)
        }),
        ("table_rows_estimate", "gauge", "The source's estimate of the table's rows.", |t| {
            t.rows_estimate.map(|n| n as f64)
        }),
    ];
    for (name, kind, help, value) in table_families {
        let _ = writeln!(out, "# HELP tidewater_{name} {help}\n# TYPE tidewater_{name} {kind}");
        for p in &status.pipelines {
            for t in &p.tables {
                if let Some(v) = value(t) {
                    let _ =
                        writeln!(out, "tidewater_{name}{{pipeline=\"{}\",table=\"{}\"}} {v}", p.name, label(&t.name));
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP tidewater_table_state Current table state (1 for the current one).\n# TYPE tidewater_table_state gauge"
    );
    for p in &status.pipelines {
        for t in &p.tables {
            let _ = writeln!(
                out,
                "tidewater_table_state{{pipeline=\"{}\",table=\"{}\",state=\"{}\"}} 1",
                p.name,
                label(&t.name),
                t.state.as_str()
            );
        }
    }
    let pipelines = registry.pipelines();
    let _ = writeln!(
        out,
        "# HELP tidewater_source_reader How the pipeline reads a binlog its source section shares (1 for the current \
         mode): attached to the section's one reader, or catching_up on its own.\n# TYPE tidewater_source_reader gauge"
    );
    for p in &pipelines {
        if let Some(mode) = p.progress.reader_mode.lock().ok().and_then(|m| *m) {
            let _ = writeln!(out, "tidewater_source_reader{{pipeline=\"{}\",mode=\"{mode}\"}} 1", p.name);
        }
    }
    for (name, help, pick) in [
        (
            "batch_events",
            "Change events per applied batch (one target transaction).",
            (|f: &Figures| f.batch_events.clone()) as fn(&Figures) -> Histogram,
        ),
        ("apply_duration_seconds", "Seconds per successful target apply.", |f: &Figures| f.apply_seconds.clone()),
    ] {
        let _ = writeln!(out, "# HELP tidewater_{name} {help}\n# TYPE tidewater_{name} histogram");
        for p in &pipelines {
            let h = pick(&p.figures());
            for (bound, count) in h.cumulative() {
                let _ = writeln!(out, "tidewater_{name}_bucket{{pipeline=\"{}\",le=\"{bound}\"}} {count}", p.name);
            }
            let _ = writeln!(out, "tidewater_{name}_bucket{{pipeline=\"{}\",le=\"+Inf\"}} {}", p.name, h.count);
            let _ = writeln!(out, "tidewater_{name}_sum{{pipeline=\"{}\"}} {}", p.name, h.sum);
            let _ = writeln!(out, "tidewater_{name}_count{{pipeline=\"{}\"}} {}", p.name, h.count);
        }
    }
    out
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Binds the status server; the returned future serves until `shutdown` resolves.
pub async fn bind(
    listen: SocketAddr,
    registry: Arc<Registry>,
    token: Option<String>,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    let serve = async move { axum::serve(listener, router(registry, token)).await };
    Ok((local, serve))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_errors_go_to_the_tables_they_name() {
        let mut f = PipelineStatus::new("p").figures().clone();
        f.set_tables([
            ("public.t".to_string(), "replica.t".to_string(), false),
            ("public.t2".into(), "replica.t2".into(), false),
        ]);
        f.note_table_error("writing to replica.t2: value too long", true);
        assert_eq!(f.tables[0].last_error, None);
        assert_eq!(f.tables[1].state, TableState::Failed);
        // A new plan keeps the figures and starts the tables streaming again.
        f.tables[1].rows_copied = 7;
        f.set_tables([("public.t2".to_string(), "replica.t2".to_string(), false)]);
        assert_eq!(f.tables.len(), 1);
        assert_eq!((f.tables[0].state, f.tables[0].rows_copied), (TableState::Streaming, 7));
    }

    #[test]
    fn table_metrics_are_labelled_by_table() {
        let status = PipelineStatus::new("p");
        status.figures().set_tables([("public.t".to_string(), "replica.t".to_string(), false)]);
        status.figures().tables[0].rows_copied = 3;
        let text = render_metrics(&Registry::new(vec![status]));
        assert!(text.contains("tidewater_table_rows_copied{pipeline=\"p\",table=\"public.t\"} 3"), "{text}");
        assert!(
            text.contains("tidewater_table_state{pipeline=\"p\",table=\"public.t\",state=\"streaming\"} 1"),
            "{text}"
        );
        assert!(!text.contains("tidewater_table_rows_estimate{"), "{text}");
    }
}
