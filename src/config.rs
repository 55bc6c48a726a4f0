//! Configuration: one TOML file, parsed into serde structs that reject unknown keys, then
//! validated (pure, no I/O) into the typed [`Config`] the daemon runs from.
//!
//! Secrets never live in the TOML: only `password_file` / `password_env` name where they
//! are; they are read when a connection is made, and never logged.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tidewater_core::TableId;
pub use tidewater_postgres::SslMode;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/tidewater/tidewater.toml";
pub const DEFAULT_STATUS_LISTEN: &str = "127.0.0.1:8790";
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 20_000;
pub const DEFAULT_MAX_BATCH_DELAY_MS: u64 = 50;
pub const DEFAULT_RETRY_INITIAL_MS: u64 = 200;
pub const DEFAULT_RETRY_MAX_MS: u64 = 30_000;
/// An error no classification table knows is retried this many times in a row (a few
/// minutes with the default backoff), then the pipeline fails showing it.
pub const DEFAULT_UNKNOWN_MAX_ATTEMPTS: u32 = 10;
pub const DEFAULT_SNAPSHOT_CHUNK_ROWS: usize = 10_000;

/// A configuration problem: which key, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

impl std::error::Error for ConfigError {}

fn err(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), problem: problem.into() }
}

// ---------------------------------------------------------------- file format (serde)

/// The file as written. Doc comments here are the user documentation of each key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub status: RawStatus,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub sources: BTreeMap<String, RawSource>,
    #[serde(default)]
    pub targets: BTreeMap<String, RawTarget>,
    #[serde(default)]
    pub pipelines: Vec<RawPipeline>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStatus {
    /// Address of the HTTP status server (`/status`, `/metrics`, `/healthz`, `/readyz`):
    /// `IP:port` or `host:port` (resolved at start).
    pub listen: Option<String>,
    /// A file holding a bearer token: when set, `/status`, `/metrics` and `/readyz` need
    /// `Authorization: Bearer <token>` (`/healthz` and the dashboard page stay open).
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `auto` (text on a terminal, JSON otherwise), `text` or `json`.
    pub format: Option<String>,
    /// A level (`trace`, `debug`, `info`, `warn`, `error`, `off`) or tracing directives such
    /// as `info,tidewater=debug`; `RUST_LOG` overrides it.
    pub level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// `postgres` or `mysql`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Connection URL without password, e.g. `postgres://replicator@127.0.0.1:5432/app`.
    pub url: String,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// Tables to replicate: `schema.table` or `schema.*`.
    pub tables: Vec<String>,
    /// MySQL: unique replica server id.
    pub server_id: Option<u32>,
    /// MySQL: MiB of recent decoded transactions the source's one binlog reader keeps for
    /// its pipelines (default 64); a pipeline further behind reads on its own until it
    /// catches up.
    pub binlog_buffer_mb: Option<u32>,
    /// Postgres: replication slot name (default `tidewater_<pipeline>`); only when a single
    /// pipeline reads this source.
    pub slot: Option<String>,
    /// Postgres: publication name (default `tidewater_<pipeline>`).
    pub publication: Option<String>,
    /// Postgres and MySQL: `disable`, `prefer` (default), `require`, `verify-ca` or
    /// `verify-full`, as libpq's sslmode; applies to the replication/binlog connection too.
    pub sslmode: Option<String>,
    /// Postgres and MySQL: PEM file with the CA certificate(s) the server certificate must chain
    /// to; required by (and only used with) `verify-ca` and `verify-full`.
    pub ssl_ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// `postgres`, `mysql` or `sqlite`.
    #[serde(rename = "type")]
    pub kind: String,
    pub url: Option<String>,
    /// SQLite: database file.
    pub path: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// Postgres and MySQL: as `sources.NAME.sslmode`.
    pub sslmode: Option<String>,
    /// Postgres and MySQL: as `sources.NAME.ssl_ca_file`.
    pub ssl_ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    /// Starts with a-z or `_`, then a-z, 0-9, `_`, at most 40 characters: names the
    /// default slot and publication (`tidewater_<name>`).
    pub name: String,
    pub source: String,
    pub target: String,
    /// `initial` (copy existing rows first) or `never`.
    pub snapshot: Option<String>,
    /// `dead_letter` or `stop`.
    pub on_error: Option<String>,
    /// Upper bound of events in one target transaction (a single larger source
    /// transaction is still applied whole).
    pub max_batch_events: Option<usize>,
    /// Upper bound on how long a batch may keep collecting while the source still has
    /// changes ready; batches never wait for changes that have not arrived.
    pub max_batch_delay_ms: Option<u64>,
    /// Pause between the chunks of a resync (throttle for a busy source).
    pub resync_pause_ms: Option<u64>,
    /// Snapshot chunks written at once, each over a target connection of its own.
    pub snapshot_parallelism: Option<usize>,
    pub slot: Option<String>,
    pub publication: Option<String>,
    /// Renames, `"schema.table" = "schema.table"`: a configured source table (listed, or
    /// under a listed `schema.*`) to the target table it is written to. No two tables may
    /// land on one target table (see [`landing_name`]).
    #[serde(default)]
    pub tables: BTreeMap<String, String>,
    #[serde(default)]
    pub retry: RawRetry,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub initial_ms: Option<u64>,
    pub max_ms: Option<u64>,
    /// 0 or absent: retry forever.
    pub max_attempts: Option<u32>,
    /// Failures in a row with an error code in no classification table before the
    /// pipeline fails; 0 = retry them forever like transient errors.
    pub unknown_max_attempts: Option<u32>,
}

// ---------------------------------------------------------------- validated config

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Postgres,
    Mysql,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Postgres,
    Mysql,
    Sqlite,
}

/// Where a password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    None,
    File(PathBuf),
    Env(String),
}

impl Secret {
    /// Reads the secret now. The error names the file or variable, never the value.
    pub fn read(&self) -> Result<Option<String>, String> {
        match self {
            Secret::None => Ok(None),
            Secret::File(path) => {
                let path = expand_path(path)?;
                std::fs::read_to_string(&path)
                    .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
                    .map_err(|e| format!("cannot read password_file {}: {e}", path.display()))
            }
            Secret::Env(var) => {
                std::env::var(var).map(Some).map_err(|_| format!("password_env {var} is not set in the environment"))
            }
        }
    }
}

/// TLS settings of a Postgres or MySQL connection, validated (the CA file is read when connecting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub sslmode: SslMode,
    pub ca_file: Option<PathBuf>,
}

/// Connection settings parsed from a URL, password excluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    pub endpoint: Endpoint,
    pub password: Secret,
    pub tables: Vec<String>,
    pub server_id: Option<u32>,
    pub binlog_buffer_mb: Option<u32>,
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    pub name: String,
    pub kind: TargetKind,
    pub endpoint: Option<Endpoint>,
    pub path: Option<PathBuf>,
    pub password: Secret,
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    Initial,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    DeadLetter,
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial_ms: u64,
    pub max_ms: u64,
    /// `None`: forever.
    pub max_attempts: Option<u32>,
    /// Unclassified errors in a row before failing; `None`: forever.
    pub unknown_max_attempts: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineConfig {
    pub name: String,
    pub source: SourceConfig,
    pub target: TargetConfig,
    pub snapshot: SnapshotMode,
    pub on_error: OnError,
    pub max_batch_events: usize,
    pub max_batch_delay_ms: u64,
    /// Pause between the chunks a resync reads (0: none).
    pub resync_pause_ms: u64,
    /// Snapshot chunks written at once (each over a target connection of its own,
    /// committed in order); 1 for SQLite targets.
    pub snapshot_parallelism: usize,
    pub slot: String,
    pub publication: String,
    pub renames: BTreeMap<String, String>,
    pub retry: RetryPolicy,
}

/// The number of CPUs, at most 4.
fn default_snapshot_parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(4)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub status_listen: SocketAddr,
    /// Where the status server's bearer token is (read at start).
    pub status_token_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub pipelines: Vec<PipelineConfig>,
}

/// Reads and validates the file. Errors name the file, the key and the fix.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![err(path.display().to_string(), format!("cannot read the configuration file: {e} (pass --config FILE)"))]
    })?;
    let cfg = parse(&text)?;
    let local = check_local(&cfg);
    if local.is_empty() {
        Ok(cfg)
    } else {
        Err(local)
    }
}

pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| vec![syntax_error(text, &e)])?;
    let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| vec![file_error(text, &e)])?;
    validate(raw)
}

/// A TOML syntax error (before any key is read): the line is the best pointer.
fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|span| 1 + text[..span.start.min(text.len())].matches('\n').count());
    let key = line.map(|l| format!("line {l}")).unwrap_or_else(|| "config".to_string());
    err(key, e.message().trim().to_string())
}

/// One parse error as the user should read it: the key path (`pipelines[0].max_batch_events`),
/// the line, and what was expected in words rather than Rust type names.
fn file_error(text: &str, e: &serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let inner = e.inner();
    let message = inner.message().trim().to_string();
    let line = inner.span().map(|span| 1 + text[..span.start.min(text.len())].matches('\n').count());
    let path = e.path().to_string();
    let path = if path == "." || path.is_empty() { String::new() } else { path };
    let at_line = line.map(|l| format!(" (line {l})")).unwrap_or_default();
    // serde reports a missing field at the section that lacks it.
    if let Some(field) = between(&message, "missing field `", "`") {
        let key = if path.is_empty() { field.to_string() } else { format!("{path}.{field}") };
        let section = if path.is_empty() { "the top level".to_string() } else { format!("[{}]", section_name(&path)) };
        return err(key, format!("is required but missing in {section}{at_line}"));
    }
    if let Some(field) = between(&message, "unknown field `", "`") {
        let expected = message.split_once(", expected ").map(|(_, rest)| rest.to_string());
        let key = if path.ends_with(field) || path.is_empty() { path.clone() } else { format!("{path}.{field}") };
        let key = if key.is_empty() { field.to_string() } else { key };
        return err(
            key,
            format!(
                "unknown key `{field}`{at_line}: remove the key or fix its spelling{}; config.example.toml lists every key",
                expected.map(|e| format!(" (this section takes {e})")).unwrap_or_default()
            ),
        );
    }
    if path.is_empty() {
        // TOML syntax errors carry no key path: the line is the best pointer.
        let key = line.map(|l| format!("line {l}")).unwrap_or_else(|| "config".to_string());
        return err(key, message);
    }
    err(path.clone(), format!("{}{at_line}", plain_words(&path, &message)))
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &text[text.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

/// `pipelines[0].retry` -> `pipelines.retry` (the header a user writes: `[pipelines.retry]`).
fn section_name(path: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// serde's "invalid type: string \"500\", expected usize" in the words of a config file.
fn plain_words(path: &str, message: &str) -> String {
    let expected_raw = message.split_once(", expected ").map(|(_, e)| e.trim()).unwrap_or("");
    let expected = match expected_raw {
        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number (0 or more)".to_string(),
        "i64" | "i32" => "a whole number".to_string(),
        "a string" | "a borrowed string" | "a string or path" | "path string" => {
            "a string in double quotes".to_string()
        }
        "a sequence" => "a list such as [\"a\", \"b\"]".to_string(),
        "a boolean" => "true or false".to_string(),
        other if other.starts_with("struct ") || other.starts_with("a map") || other == "map" => {
            "a section of keys".to_string()
        }
        other => other.to_string(),
    };
    let got = if let Some(rest) = message.strip_prefix("invalid type: ") {
        let got = rest.split_once(", expected ").map_or(rest, |(g, _)| g);
        let got = if let Some(s) = got.strip_prefix("string ") {
            format!("the string {s}")
        } else if let Some(n) = got.strip_prefix("integer ") {
            format!("the number {}", n.trim_matches('`'))
        } else if let Some(n) = got.strip_prefix("floating point ") {
            format!("the number {}", n.trim_matches('`'))
        } else if let Some(b) = got.strip_prefix("boolean ") {
            b.trim_matches('`').to_string()
        } else if got == "map" {
            "a section".to_string()
        } else if got == "sequence" {
            "a list".to_string()
        } else {
            got.to_string()
        };
        Some(got)
    } else if let Some(rest) = message.strip_prefix("invalid value: ") {
        let got = rest.split_once(", expected ").map_or(rest, |(g, _)| g);
        let got = got.strip_prefix("integer ").map_or(got.to_string(), |n| n.trim_matches('`').to_string());
        let range = match expected_raw {
            "u32" => " from 0 to 4294967295",
            "u16" => " from 0 to 65535",
            _ => "",
        };
        return format!("expected a whole number{range}, got {got}");
    } else {
        None
    };
    let Some(got) = got else { return message.to_string() };
    // A section written where a list of sections belongs, or the other way round.
    if expected_raw == "a sequence" && got == "a section" && (path == "pipelines" || path.ends_with("pipelines")) {
        return "must be a list of pipelines: write each one as a [[pipelines]] section (double brackets), \
                not [pipelines]"
            .to_string();
    }
    if got == "a list" && expected == "a section of keys" {
        if let Some(kind) = ["sources", "targets"].iter().find(|k| path == **k) {
            return format!("must be named sections: write [{kind}.NAME] (e.g. [{kind}.app]), not [[{kind}]]");
        }
    }
    format!("expected {expected}, got {got}")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
}

/// Turns the parsed file into the typed config, collecting every problem at once.
pub fn validate(raw: RawConfig) -> Result<Config, Vec<ConfigError>> {
    let mut errors = Vec::new();

    let listen_text = raw.status.listen.as_deref().unwrap_or(DEFAULT_STATUS_LISTEN);
    let status_listen = listen_address(listen_text).unwrap_or_else(|problem| {
        errors.push(err("status.listen", problem));
        SocketAddr::from(([127, 0, 0, 1], 8790))
    });
    let log_level = raw.log.level.clone().unwrap_or_else(|| "info".into());
    if let Err(problem) = check_log_level(&log_level) {
        errors.push(err("log.level", problem));
    }
    if raw.status.token_file.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
        errors
            .push(err("status.token_file", "is empty: give the path of the file holding the token, or remove the key"));
    }
    let log_format = match raw.log.format.as_deref().unwrap_or("auto") {
        "auto" => LogFormat::Auto,
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            errors.push(err("log.format", format!("{other:?} is not one of auto, text, json")));
            LogFormat::Auto
        }
    };

    let mut sources = BTreeMap::new();
    for (name, src) in &raw.sources {
        let key = format!("sources.{name}");
        let kind = match src.kind.as_str() {
            "postgres" | "postgresql" => Some(SourceKind::Postgres),
            "mysql" | "mariadb" => Some(SourceKind::Mysql),
            other => {
                errors.push(err(format!("{key}.type"), format!("{other:?} is not one of postgres, mysql")));
                None
            }
        };
        let endpoint = parse_url(&src.url, &format!("{key}.url"), &mut errors);
        let password = secret(&key, &src.password_file, &src.password_env, &mut errors);
        if src.tables.is_empty() {
            errors.push(err(
                format!("{key}.tables"),
                "list at least one table, e.g. [\"public.orders\"] or [\"public.*\"]",
            ));
        }
        for table in &src.tables {
            if TableId::parse_qualified(table).is_none() {
                errors.push(err(
                    format!("{key}.tables"),
                    format!("{table:?} must be schema.table or schema.* (double-quote a name that contains a dot: schema.\"my.table\")"),
                ));
            }
        }
        if kind == Some(SourceKind::Mysql) {
            match src.server_id {
                None => errors.push(err(
                    format!("{key}.server_id"),
                    "required for mysql sources: a replica id unique among the server's replicas, e.g. 4201",
                )),
                Some(0) => errors.push(err(
                    format!("{key}.server_id"),
                    "must be between 1 and 4294967295 and unique among the server's replicas",
                )),
                Some(_) => {}
            }
        }
        if src.binlog_buffer_mb == Some(0) || (src.binlog_buffer_mb.is_some() && kind != Some(SourceKind::Mysql)) {
            errors.push(err(format!("{key}.binlog_buffer_mb"), "only for mysql sources, at least 1 (MiB)"));
        }
        let tls = tls_config(
            &key,
            // Every source kind (postgres, mysql) connects over the network.
            kind.map(|_| true),
            Some(&src.url),
            &src.sslmode,
            &src.ssl_ca_file,
            &mut errors,
        );
        if let (Some(kind), Some(endpoint)) = (kind, endpoint) {
            sources.insert(
                name.clone(),
                (
                    SourceConfig {
                        name: name.clone(),
                        kind,
                        endpoint,
                        password,
                        tables: src.tables.clone(),
                        server_id: src.server_id,
                        binlog_buffer_mb: src.binlog_buffer_mb,
                        tls,
                    },
                    src.slot.clone(),
                    src.publication.clone(),
                ),
            );
        }
    }

    let mut targets = BTreeMap::new();
    for (name, tgt) in &raw.targets {
        let key = format!("targets.{name}");
        let kind = match tgt.kind.as_str() {
            "postgres" | "postgresql" => Some(TargetKind::Postgres),
            "mysql" | "mariadb" => Some(TargetKind::Mysql),
            "sqlite" => Some(TargetKind::Sqlite),
            other => {
                errors.push(err(format!("{key}.type"), format!("{other:?} is not one of postgres, mysql, sqlite")));
                None
            }
        };
        let password = secret(&key, &tgt.password_file, &tgt.password_env, &mut errors);
        let endpoint = match (kind, &tgt.url) {
            (Some(TargetKind::Sqlite), _) => {
                if tgt.path.is_none() {
                    errors.push(err(format!("{key}.path"), "required for sqlite targets: the database file"));
                }
                None
            }
            (_, Some(url)) => {
                let endpoint = parse_url(url, &format!("{key}.url"), &mut errors);
                if kind == Some(TargetKind::Mysql) && endpoint.as_ref().is_some_and(|e| e.database.is_empty()) {
                    errors.push(err(
                        format!("{key}.url"),
                        format!(
                            "{url:?} names no database: a MySQL target URL needs one, \
                             e.g. \"mysql://tidewater@127.0.0.1:3306/warehouse\" (the bookkeeping tables live there)"
                        ),
                    ));
                }
                endpoint
            }
            (Some(_), None) => {
                errors.push(err(
                    format!("{key}.url"),
                    "required: e.g. \"postgres://tidewater@127.0.0.1:5432/warehouse\"",
                ));
                None
            }
            (None, None) => None,
        };
        let tls = tls_config(
            &key,
            kind.map(|k| k != TargetKind::Sqlite),
            tgt.url.as_deref(),
            &tgt.sslmode,
            &tgt.ssl_ca_file,
            &mut errors,
        );
        if let Some(kind) = kind {
            targets.insert(
                name.clone(),
                TargetConfig { name: name.clone(), kind, endpoint, path: tgt.path.clone(), password, tls },
            );
        }
    }

    let mut pipelines = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let uses_of = |source: &str| raw.pipelines.iter().filter(|p| p.source == source).count();
    for (i, p) in raw.pipelines.iter().enumerate() {
        let key = format!("pipelines[{i}]");
        let name_ok = valid_name(&p.name);
        if !name_ok {
            errors.push(err(
                format!("{key}.name"),
                format!(
                    "{:?} must start with a lowercase letter or _ and be 1-40 characters of a-z, 0-9 and _ \
                     (it names the slot and publication), e.g. \"app_to_warehouse\"",
                    p.name
                ),
            ));
        }
        if !seen.insert(p.name.clone()) {
            errors.push(err(
                format!("{key}.name"),
                format!("{:?} is used by two pipelines; names must be unique", p.name),
            ));
        }
        let source = sources.get(&p.source);
        if source.is_none() && !raw.sources.contains_key(&p.source) {
            errors.push(err(
                format!("{key}.source"),
                format!("{:?} is not defined; add a [sources.{}] section", p.source, p.source),
            ));
        }
        let target = targets.get(&p.target);
        if target.is_none() && !raw.targets.contains_key(&p.target) {
            errors.push(err(
                format!("{key}.target"),
                format!("{:?} is not defined; add a [targets.{}] section", p.target, p.target),
            ));
        }
        let snapshot = match p.snapshot.as_deref().unwrap_or("initial") {
            "initial" => SnapshotMode::Initial,
            "never" => SnapshotMode::Never,
            other => {
                errors.push(err(format!("{key}.snapshot"), format!("{other:?} is not one of initial, never")));
                SnapshotMode::Initial
            }
        };
        let on_error = match p.on_error.as_deref().unwrap_or("dead_letter") {
            "dead_letter" => OnError::DeadLetter,
            "stop" => OnError::Stop,
            other => {
                errors.push(err(format!("{key}.on_error"), format!("{other:?} is not one of dead_letter, stop")));
                OnError::DeadLetter
            }
        };
        if p.snapshot_parallelism == Some(0) {
            errors.push(err(
                format!("{key}.snapshot_parallelism"),
                "must be at least 1 (snapshot chunks written at once; default: the number of CPUs, at most 4)",
            ));
        }
        let max_batch_events = p.max_batch_events.unwrap_or(DEFAULT_MAX_BATCH_EVENTS);
        if max_batch_events == 0 {
            errors.push(err(format!("{key}.max_batch_events"), "must be at least 1"));
        }
        if p.retry.initial_ms == Some(0) {
            errors.push(err(
                format!("{key}.retry.initial_ms"),
                format!("must be at least 1 (milliseconds before the first retry; default {DEFAULT_RETRY_INITIAL_MS})"),
            ));
        }
        let retry = RetryPolicy {
            initial_ms: p.retry.initial_ms.unwrap_or(DEFAULT_RETRY_INITIAL_MS).max(1),
            max_ms: p.retry.max_ms.unwrap_or(DEFAULT_RETRY_MAX_MS),
            max_attempts: p.retry.max_attempts.filter(|&n| n > 0),
            unknown_max_attempts: match p.retry.unknown_max_attempts {
                None => Some(DEFAULT_UNKNOWN_MAX_ATTEMPTS),
                Some(0) => None,
                Some(n) => Some(n),
            },
        };
        if retry.max_ms < retry.initial_ms && p.retry.initial_ms != Some(0) {
            errors.push(err(format!("{key}.retry.max_ms"), "must be at least retry.initial_ms"));
        }
        for (from, to) in &p.tables {
            for (what, name) in [("source", from), ("target", to)] {
                if TableId::parse_qualified(name).is_none_or(|t| t.name == "*") {
                    errors.push(err(
                        format!("{key}.tables"),
                        format!("{what} table {name:?} must be written schema.table"),
                    ));
                }
            }
        }
        if let (Some((source, src_slot, src_pub)), Some(target)) = (source, target) {
            let shared = uses_of(&p.source) > 1;
            if shared && (src_slot.is_some() || src_pub.is_some()) {
                errors.push(err(
                    format!("sources.{}.slot", p.source),
                    "this source feeds several pipelines, each needs its own slot and publication: set them per pipeline",
                ));
            }
            let default_name = format!("tidewater_{}", p.name);
            let slot = p.slot.clone().or(src_slot.clone()).unwrap_or_else(|| default_name.clone());
            let publication = p.publication.clone().or(src_pub.clone()).unwrap_or(default_name);
            for (what, value, explicit) in [
                ("slot", &slot, p.slot.is_some() || src_slot.is_some()),
                ("publication", &publication, p.publication.is_some() || src_pub.is_some()),
            ] {
                // A default derived from a bad pipeline name is already reported there.
                if !explicit && !name_ok {
                    continue;
                }
                let ok = !value.is_empty()
                    && value.len() <= 63
                    && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !ok {
                    errors.push(err(
                        format!("{key}.{what}"),
                        format!("{value:?} must be 1-63 characters of a-z, 0-9 and _"),
                    ));
                }
            }
            check_renames(&key, &p.tables, source, target, &mut errors);
            pipelines.push(PipelineConfig {
                name: p.name.clone(),
                source: source.clone(),
                target: target.clone(),
                snapshot,
                on_error,
                max_batch_events: max_batch_events.max(1),
                max_batch_delay_ms: p.max_batch_delay_ms.unwrap_or(DEFAULT_MAX_BATCH_DELAY_MS),
                resync_pause_ms: p.resync_pause_ms.unwrap_or(0),
                snapshot_parallelism: match target.kind {
                    // One writer at a time in a SQLite file.
                    TargetKind::Sqlite => 1,
                    _ => p.snapshot_parallelism.unwrap_or_else(default_snapshot_parallelism).max(1),
                },
                slot,
                publication,
                renames: p.tables.clone(),
                retry,
            });
        }
    }
    if raw.pipelines.is_empty() {
        errors.push(err("pipelines", "no [[pipelines]] defined: add one with name, source and target"));
    }

    if errors.is_empty() {
        Ok(Config { status_listen, status_token_file: raw.status.token_file, log_format, log_level, pipelines })
    } else {
        Err(errors)
    }
}

/// `status.listen`: `address:port`, or `host:port` with a host name resolved now
/// (`localhost:8790`); the first IPv4 address wins, as a status page is usually read over IPv4.
fn listen_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let example = "such as \"127.0.0.1:8790\", \"localhost:8790\" or \"0.0.0.0:8790\"";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} has no port: write host:port, {example}"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("{text:?}: port {port:?} is not a number from 0 to 65535; write host:port, {example}"));
    }
    if host.is_empty() {
        return Err(format!("{text:?} has no host: write host:port, {example}"));
    }
    use std::net::ToSocketAddrs as _;
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("{text:?}: cannot resolve the host name {host:?} ({e}); write an IP address, {example}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{text:?}: the host name {host:?} has no address; write an IP address, {example}"))
}

const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// `log.level`: a level, or comma-separated `target=level` directives (tracing's filter
/// syntax). A bare word that is not a level would silently be read as a target name and
/// log nothing, so it is refused.
fn check_log_level(text: &str) -> Result<(), String> {
    let hint = "use one of trace, debug, info, warn, error, off, or directives such as \"info,tidewater=debug\"";
    if text.trim().is_empty() {
        return Err(format!("is empty: {hint}"));
    }
    for directive in text.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            Some(_) => return Err(format!("{directive:?} names no target before `=`: {hint}")),
            None => directive,
        };
        if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!("{level:?} in {text:?} is not a log level: {hint}"));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(text)
        .map(drop)
        .map_err(|e| format!("{text:?} is not a log filter ({e}): {hint}"))
}

/// Where a target stores the table `id`, in the target's own terms: two source tables with
/// the same landing name would be written to one table. Postgres keeps schema and name;
/// MySQL writes schema `public` to the URL's database and any other schema to the database
/// of that name; SQLite has no schemas and compares names without regard to ASCII case.
pub fn landing_name(target: &TargetConfig, id: &TableId) -> String {
    match target.kind {
        TargetKind::Postgres => id.to_string(),
        TargetKind::Mysql => {
            let database = target.endpoint.as_ref().map_or("", |e| e.database.as_str());
            let (db, table) = tidewater_mysql::sink::target_location(database, id);
            TableId::new(db.as_str(), table.as_str()).to_string()
        }
        TargetKind::Sqlite => id.name.to_ascii_lowercase(),
    }
}

/// How a target kind names its tables, for messages about landing names.
fn landing_rule(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Postgres => "",
        TargetKind::Mysql => " (a MySQL target writes schema public to the URL's database)",
        TargetKind::Sqlite => " (SQLite has no schemas: the schema part is dropped, and names ignore case)",
    }
}

/// A configured table pattern (`schema.table`, `schema.*`) covers `id`.
fn covers(pattern: &TableId, id: &TableId) -> bool {
    pattern.schema == id.schema && (pattern.name == "*" || pattern.name == id.name)
}

/// Renames must name a configured source table, and no two tables (renamed or not) may
/// land on one target table. Tables a wildcard finds at start are checked again then.
fn check_renames(
    key: &str,
    renames: &BTreeMap<String, String>,
    source: &SourceConfig,
    target: &TargetConfig,
    errors: &mut Vec<ConfigError>,
) {
    let patterns: Vec<TableId> = source.tables.iter().filter_map(|t| TableId::parse_qualified(t)).collect();
    let mut parsed = BTreeMap::new();
    for (from, to) in renames {
        let (Some(from_id), Some(to_id)) = (TableId::parse_qualified(from), TableId::parse_qualified(to)) else {
            continue; // reported as a format error
        };
        if !patterns.iter().any(|p| covers(p, &from_id)) {
            let near = patterns.iter().find(|p| {
                p.schema.eq_ignore_ascii_case(&from_id.schema)
                    && (p.name == "*" || p.name.eq_ignore_ascii_case(&from_id.name))
            });
            let problem = match near {
                Some(p) => format!(
                    "renames {from:?}, which is not a configured table; sources.{}.tables has {p}, which differs only \
                     in case: table names are case-sensitive, write it exactly as the source does",
                    source.name
                ),
                None => format!(
                    "renames {from:?}, which is not in sources.{}.tables ({}): add it there or fix the rename's \
                     source name (written schema.table)",
                    source.name,
                    source.tables.join(", ")
                ),
            };
            errors.push(err(format!("{key}.tables"), problem));
            continue;
        }
        parsed.insert(from_id, to_id);
    }
    // Every table known now: listed ones (not wildcards) and renamed ones.
    let mut known: BTreeMap<TableId, TableId> =
        patterns.iter().filter(|p| p.name != "*").map(|p| (p.clone(), p.clone())).collect();
    known.extend(parsed);
    let mut landed: BTreeMap<String, &TableId> = BTreeMap::new();
    for (from, to) in &known {
        let landing = landing_name(target, to);
        if let Some(other) = landed.insert(landing.clone(), from) {
            errors.push(err(
                format!("{key}.tables"),
                format!(
                    "source tables {other} and {from} would both be written to the target table {landing}{}: \
                     give one another target name, e.g. \"{from}\" = \"{}.{}_{}\"",
                    landing_rule(target.kind),
                    to.schema,
                    from.schema,
                    from.name
                ),
            ));
        }
    }
}

/// Replaces a leading `$CREDENTIALS_DIRECTORY` (or `${CREDENTIALS_DIRECTORY}`) in a
/// `password_file` / `token_file` path with the directory systemd sets for a unit with
/// `LoadCredential=`, so one config works under systemd and, with the variable set by hand,
/// outside it.
pub fn expand_path(path: &Path) -> Result<PathBuf, String> {
    let text = path.to_string_lossy();
    for prefix in ["${CREDENTIALS_DIRECTORY}", "$CREDENTIALS_DIRECTORY"] {
        if let Some(rest) = text.strip_prefix(prefix) {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                format!(
                    "{} uses $CREDENTIALS_DIRECTORY, which is not set: systemd sets it for a unit with \
                     LoadCredential=; outside systemd export CREDENTIALS_DIRECTORY=/path/to/the/files",
                    path.display()
                )
            })?;
            return Ok(PathBuf::from(dir).join(rest.trim_start_matches('/')));
        }
    }
    Ok(path.to_path_buf())
}

/// Checks what the daemon reads from this machine at start (no network): the status token
/// file and every password file and variable. `run` refuses to start and `check` fails on
/// the same problems.
pub fn check_local(cfg: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    if let Some(path) = &cfg.status_token_file {
        match read_token(path) {
            Ok(_) => {}
            Err(problem) => errors.push(err("status.token_file", problem)),
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &cfg.pipelines {
        for (key, secret) in [
            (format!("sources.{}", p.source.name), &p.source.password),
            (format!("targets.{}", p.target.name), &p.target.password),
        ] {
            if !seen.insert(key.clone()) {
                continue;
            }
            let which = match secret {
                Secret::File(_) => "password_file",
                Secret::Env(_) => "password_env",
                Secret::None => continue,
            };
            if let Err(problem) = secret.read() {
                errors.push(err(format!("{key}.{which}"), problem));
            }
        }
        for (key, tls) in [
            (format!("sources.{}", p.source.name), &p.source.tls),
            (format!("targets.{}", p.target.name), &p.target.tls),
        ] {
            if let Some(path) = &tls.ca_file {
                if let Err(e) = std::fs::metadata(path) {
                    errors.push(err(format!("{key}.ssl_ca_file"), format!("cannot read {} ({e})", path.display())));
                }
            }
        }
    }
    errors.dedup();
    errors
}

/// Reads the status server's bearer token from `path`; the error names the file.
pub fn read_token(path: &Path) -> Result<String, String> {
    let expanded = expand_path(path)?;
    let token = std::fs::read_to_string(&expanded).map_err(|e| {
        format!("cannot read {} ({e}): create the file holding the token or remove the key", expanded.display())
    })?;
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(format!("{} is empty: write the token into it", expanded.display()));
    }
    Ok(token)
}

fn secret(key: &str, file: &Option<PathBuf>, env: &Option<String>, errors: &mut Vec<ConfigError>) -> Secret {
    match (file, env) {
        (Some(_), Some(_)) => {
            errors.push(err(format!("{key}.password_file"), "set either password_file or password_env, not both"));
            Secret::None
        }
        (Some(f), None) => Secret::File(f.clone()),
        (None, Some(e)) => Secret::Env(e.clone()),
        (None, None) => Secret::None,
    }
}

/// Validates `sslmode` / `ssl_ca_file` of the section `key`. `networked` says whether the
/// type connects over the network (postgres, mysql; not sqlite); `None` when the type
/// itself is invalid (already reported).
fn tls_config(
    key: &str,
    networked: Option<bool>,
    url: Option<&str>,
    sslmode: &Option<String>,
    ca_file: &Option<PathBuf>,
    errors: &mut Vec<ConfigError>,
) -> TlsConfig {
    let mut tls = TlsConfig { sslmode: SslMode::default(), ca_file: ca_file.clone() };
    if networked == Some(false) {
        if sslmode.is_some() || ca_file.is_some() {
            let which = if sslmode.is_some() { "sslmode" } else { "ssl_ca_file" };
            errors.push(err(
                format!("{key}.{which}"),
                "sslmode and ssl_ca_file apply to postgres and mysql connections only: remove them",
            ));
        }
        return tls;
    }
    // libpq users write sslmode into the URL; the query string is not read, so say so
    // instead of silently connecting with the default.
    if let Some(query) = url.and_then(|u| u.split_once('?')).map(|(_, q)| q) {
        for param in ["sslmode", "sslrootcert"] {
            if query.split('&').any(|kv| kv.split('=').next() == Some(param)) {
                let instead = if param == "sslmode" { "sslmode" } else { "ssl_ca_file" };
                errors.push(err(
                    format!("{key}.url"),
                    format!("{param} in the URL is not read: remove it and set {instead} = \"...\" in [{key}]"),
                ));
            }
        }
    }
    if let Some(text) = sslmode {
        match SslMode::parse(text) {
            Some(mode) => tls.sslmode = mode,
            None => errors.push(err(
                format!("{key}.sslmode"),
                format!("{text:?} is not one of disable, prefer, require, verify-ca, verify-full"),
            )),
        }
    }
    match (&tls.ca_file, tls.sslmode) {
        (Some(path), _) if path.as_os_str().is_empty() => {
            errors.push(err(format!("{key}.ssl_ca_file"), "is empty: give the path of a PEM file"));
        }
        (None, SslMode::VerifyCa | SslMode::VerifyFull) => errors.push(err(
            format!("{key}.ssl_ca_file"),
            format!(
                "required with sslmode = \"{}\": the PEM file of the CA that signed the server certificate \
                 (to trust the system's CAs: \"/etc/ssl/certs/ca-certificates.crt\")",
                tls.sslmode
            ),
        )),
        (Some(_), mode @ (SslMode::Disable | SslMode::Prefer | SslMode::Require)) => errors.push(err(
            format!("{key}.ssl_ca_file"),
            format!(
                "is only used with sslmode = \"verify-ca\" or \"verify-full\", not \"{mode}\": set sslmode = \
                 \"verify-full\" to check the server certificate against it, or remove ssl_ca_file"
            ),
        )),
        _ => {}
    }
    tls
}

/// Parses `scheme://user@host:port/database` (the `url` crate: IPv6 hosts in brackets,
/// percent-encoded user and database names). A password in the URL is refused (secrets
/// belong in `password_file` / `password_env`), and so is any query parameter: none is
/// read, so each one would be silently ignored (TLS settings have their own keys).
fn parse_url(text: &str, key: &str, errors: &mut Vec<ConfigError>) -> Option<Endpoint> {
    let url = match url::Url::parse(text) {
        Ok(url) => url,
        Err(e) => {
            errors
                .push(err(key, format!("is not a valid URL ({e}): write it like postgres://user@host:5432/database")));
            return None;
        }
    };
    let default_port = match url.scheme() {
        "postgres" | "postgresql" => 5432,
        "mysql" | "mariadb" => 3306,
        other => {
            errors.push(err(key, format!("scheme {other:?} is not one of postgres://, mysql://")));
            return None;
        }
    };
    if url.password().is_some() {
        errors.push(err(key, "contains a password: remove it from the URL and use password_file or password_env"));
        return None;
    }
    for (param, _) in url.query_pairs() {
        // sslmode and sslrootcert get their own message from the TLS settings.
        if param != "sslmode" && param != "sslrootcert" {
            errors.push(err(
                key,
                format!("URL parameter {param:?} is not read: remove it (settings are keys of [{}])", section_of(key)),
            ));
        }
    }
    let decode =
        |part: &str, what: &str, errors: &mut Vec<ConfigError>| match percent_encoding::percent_decode_str(part)
            .decode_utf8()
        {
            Ok(text) => Some(text.into_owned()),
            Err(_) => {
                errors.push(err(key, format!("the {what} is not valid UTF-8 after percent-decoding")));
                None
            }
        };
    let user = decode(url.username(), "user name", errors)?;
    let user = if user.is_empty() { "postgres".to_string() } else { user };
    let host = match url.host() {
        Some(url::Host::Ipv6(addr)) => addr.to_string(),
        Some(url::Host::Ipv4(addr)) => addr.to_string(),
        Some(url::Host::Domain(name)) if !name.is_empty() => decode(name, "host", errors)?,
        _ => {
            errors.push(err(key, "has no host"));
            return None;
        }
    };
    let port = url.port().unwrap_or(default_port);
    let database = decode(url.path().trim_start_matches('/'), "database name", errors)?;
    let database = if database.is_empty() && default_port == 5432 { user.clone() } else { database };
    Some(Endpoint { url: text.to_string(), host, port, user, database })
}

/// `sources.app` of `sources.app.url`.
fn section_of(key: &str) -> &str {
    key.strip_suffix(".url").unwrap_or(key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[sources.app]
type = "postgres"
url = "postgres://replicator@127.0.0.1:5432/app"
password_env = "APP_PW"
tables = ["public.orders"]

[targets.wh]
type = "postgres"
url = "postgres://tidewater@127.0.0.1:5433/warehouse"

[[pipelines]]
name = "app_to_wh"
source = "app"
target = "wh"
[pipelines.tables]
"public.orders" = "replica.orders"
"#;

    fn endpoint_of(url: &str) -> Result<Endpoint, Vec<ConfigError>> {
        let mut errors = Vec::new();
        parse_url(url, "sources.app.url", &mut errors).filter(|_| errors.is_empty()).ok_or(errors)
    }

    #[test]
    fn urls_take_ipv6_hosts_and_percent_encoded_names_and_refuse_unknown_parameters() {
        for scheme in ["postgres", "mysql"] {
            let e = endpoint_of(&format!("{scheme}://rep%40lica@[::1]:6543/my%20db")).unwrap();
            assert_eq!(
                (e.host.as_str(), e.port, e.user.as_str(), e.database.as_str()),
                ("::1", 6543, "rep@lica", "my db")
            );
            let e = endpoint_of(&format!("{scheme}://u@db.example.com/app")).unwrap();
            assert_eq!((e.host.as_str(), e.database.as_str()), ("db.example.com", "app"));
            let errors = endpoint_of(&format!("{scheme}://u@h/app?connect_timeout=5")).unwrap_err();
            assert!(
                errors
                    .iter()
                    .any(|e| e.key == "sources.app.url" && e.problem.contains("\"connect_timeout\" is not read")),
                "{errors:?}"
            );
            let errors = endpoint_of(&format!("{scheme}://u@h:notaport/app")).unwrap_err();
            assert!(errors[0].problem.contains("not a valid URL"), "{errors:?}");
            let errors = endpoint_of(&format!("{scheme}://u:secret@h/app")).unwrap_err();
            assert!(errors[0].problem.contains("password"), "{errors:?}");
            assert!(!format!("{errors:?}").contains("secret"), "the password is not echoed");
        }
        assert_eq!(endpoint_of("postgres://u@127.0.0.1/").unwrap().database, "u", "libpq's default database");
        assert_eq!(endpoint_of("mysql://u@127.0.0.1").unwrap().port, 3306);
    }

    #[test]
    fn good_config_gets_defaults() {
        let c = parse(GOOD).unwrap();
        let p = &c.pipelines[0];
        assert_eq!(p.slot, "tidewater_app_to_wh");
        assert_eq!(p.publication, "tidewater_app_to_wh");
        assert_eq!(p.snapshot, SnapshotMode::Initial);
        assert_eq!(p.on_error, OnError::DeadLetter);
        assert_eq!(p.source.endpoint.port, 5432);
        assert_eq!(p.source.endpoint.database, "app");
        assert_eq!(p.target.endpoint.as_ref().unwrap().port, 5433);
        assert_eq!(p.retry.max_attempts, None);
        assert_eq!(p.retry.unknown_max_attempts, Some(DEFAULT_UNKNOWN_MAX_ATTEMPTS));
        assert_eq!(c.status_listen.to_string(), "127.0.0.1:8790");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse(&GOOD.replace("tables = [", "tabels = 1\ntables = [")).unwrap_err();
        assert!(e[0].to_string().contains("tabels"), "{}", e[0]);
        assert!(e[0].to_string().contains("line 6"), "{}", e[0]);
        assert_eq!(e[0].key, "sources.app.tabels");
    }

    #[test]
    fn password_in_url_is_refused() {
        let e = parse(&GOOD.replace("replicator@", "replicator:secret@")).unwrap_err();
        assert_eq!(e[0].key, "sources.app.url");
        assert!(!e[0].to_string().contains("secret"));
    }

    #[test]
    fn undefined_source_and_bad_enum_values_are_all_reported() {
        let text = GOOD.replace("source = \"app\"", "source = \"nope\"\nsnapshot = \"sometimes\"");
        let e = parse(&text).unwrap_err();
        let keys: Vec<_> = e.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"pipelines[0].source"), "{keys:?}");
        assert!(keys.contains(&"pipelines[0].snapshot"), "{keys:?}");
    }

    #[test]
    fn tls_keys_default_to_prefer_and_are_checked() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.pipelines[0].source.tls, TlsConfig { sslmode: SslMode::Prefer, ca_file: None });
        assert_eq!(c.pipelines[0].target.tls.sslmode, SslMode::Prefer);

        let with = |source_lines: &str, target_lines: &str| {
            GOOD.replace("tables = [\"public.orders\"]\n", &format!("tables = [\"public.orders\"]\n{source_lines}\n"))
                .replace("warehouse\"\n", &format!("warehouse\"\n{target_lines}\n"))
        };
        let c =
            parse(&with("sslmode = \"verify-full\"\nssl_ca_file = \"/etc/ca.pem\"", "sslmode = \"require\"")).unwrap();
        let p = &c.pipelines[0];
        assert_eq!(p.source.tls.sslmode, SslMode::VerifyFull);
        assert_eq!(p.source.tls.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(p.target.tls.sslmode, SslMode::Require);

        let cases = [
            (
                with("sslmode = \"verify-full\"", ""),
                "sources.app.ssl_ca_file",
                "required with sslmode = \"verify-full\"",
            ),
            (with("", "sslmode = \"verify-ca\""), "targets.wh.ssl_ca_file", "required with sslmode = \"verify-ca\""),
            (with("sslmode = \"verify_full\"", ""), "sources.app.sslmode", "not one of disable, prefer"),
            (with("sslmode = \"require\"\nssl_ca_file = \"/ca.pem\"", ""), "sources.app.ssl_ca_file", "only used with"),
            (with("ssl_ca_file = \"/ca.pem\"", ""), "sources.app.ssl_ca_file", "not \"prefer\""),
            (GOOD.replace("5432/app\"", "5432/app?sslmode=require\""), "sources.app.url", "sslmode in the URL"),
        ];
        for (text, key, problem) in cases {
            let e = parse(&text).unwrap_err();
            assert!(e.iter().any(|e| e.key == key && e.problem.contains(problem)), "{key}: {e:?}");
        }
        let sqlite = GOOD.replace(
            "type = \"postgres\"\nurl = \"postgres://tidewater@127.0.0.1:5433/warehouse\"",
            "type = \"sqlite\"\npath = \"/tmp/x.db\"\nsslmode = \"require\"",
        );
        let e = parse(&sqlite).unwrap_err();
        assert!(e.iter().any(|e| e.key == "targets.wh.sslmode"), "{e:?}");
    }

    #[test]
    fn mysql_sections_take_tls_keys() {
        let text = GOOD
            .replace(
                "type = \"postgres\"\nurl = \"postgres://replicator",
                "type = \"mysql\"\nserver_id = 7\nsslmode = \"verify-full\"\nssl_ca_file = \"/ca.pem\"\n\
                 url = \"mysql://replicator",
            )
            .replace(
                "type = \"postgres\"\nurl = \"postgres://tidewater@127.0.0.1:5433/warehouse\"",
                "type = \"mysql\"\nurl = \"mysql://tidewater@127.0.0.1:3306/warehouse\"\nsslmode = \"disable\"",
            );
        let c = parse(&text).unwrap();
        let p = &c.pipelines[0];
        assert_eq!(p.source.kind, SourceKind::Mysql);
        assert_eq!(p.source.tls.sslmode, SslMode::VerifyFull);
        assert_eq!(p.source.tls.ca_file.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(p.target.kind, TargetKind::Mysql);
        assert_eq!(p.target.tls.sslmode, SslMode::Disable);
    }

    fn one_error(text: &str) -> ConfigError {
        let e = parse(text).unwrap_err();
        assert_eq!(e.len(), 1, "exactly one error: {e:?}");
        e.into_iter().next().unwrap()
    }

    #[test]
    fn type_errors_name_the_key_path_in_plain_words() {
        let e = one_error(&GOOD.replace("target = \"wh\"\n", "target = \"wh\"\nmax_batch_events = \"500\"\n"));
        assert_eq!(e.key, "pipelines[0].max_batch_events");
        assert!(e.problem.starts_with("expected a whole number (0 or more), got the string \"500\""), "{e}");
        let e = one_error(&GOOD.replace("5432/app\"\n", "5432/app\"\nserver_id = -3\n"));
        assert_eq!(e.key, "sources.app.server_id");
        assert!(e.problem.contains("expected a whole number from 0 to 4294967295, got -3"), "{e}");
        let e = one_error(&GOOD.replace("url = \"postgres://replicator@127.0.0.1:5432/app\"", "url = 5432"));
        assert_eq!(e.key, "sources.app.url");
        assert!(e.problem.contains("expected a string in double quotes, got the number 5432"), "{e}");
    }

    #[test]
    fn a_single_pipelines_section_says_to_use_double_brackets() {
        let e = one_error(&GOOD.replace("[[pipelines]]", "[pipelines]"));
        assert_eq!(e.key, "pipelines");
        assert!(e.problem.contains("[[pipelines]]"), "{e}");
    }

    #[test]
    fn missing_fields_name_their_section() {
        let e = one_error(&GOOD.replace("url = \"postgres://replicator@127.0.0.1:5432/app\"\n", ""));
        assert_eq!(e.key, "sources.app.url");
        assert!(e.problem.contains("[sources.app]"), "{e}");
        let e = one_error(&GOOD.replace("source = \"app\"\n", ""));
        assert_eq!(e.key, "pipelines[0].source");
    }

    #[test]
    fn unknown_keys_name_the_path() {
        let e = one_error(&GOOD.replace("target = \"wh\"\n", "target = \"wh\"\nmax_batch = 5\n"));
        assert_eq!(e.key, "pipelines[0].max_batch");
        assert!(e.problem.contains("unknown key `max_batch`") && e.problem.contains("max_batch_events"), "{e}");
    }

    #[test]
    fn a_bad_pipeline_name_is_one_error_naming_every_rule() {
        let e = one_error(&GOOD.replace("name = \"app_to_wh\"", "name = \"1st-pipeline\""));
        assert_eq!(e.key, "pipelines[0].name");
        assert!(e.problem.contains("start with a lowercase letter"), "{e}");
        assert!(e.problem.contains("1-40 characters"), "{e}");
    }

    #[test]
    fn zero_initial_retry_delay_is_refused() {
        let e = one_error(&format!("{GOOD}\n[pipelines.retry]\ninitial_ms = 0\n"));
        assert_eq!(e.key, "pipelines[0].retry.initial_ms");
    }

    #[test]
    fn listen_accepts_host_names() {
        let c = parse(&format!("[status]\nlisten = \"localhost:8791\"\n{GOOD}")).unwrap();
        assert_eq!(c.status_listen.port(), 8791);
        assert!(c.status_listen.ip().is_loopback());
        let e = one_error(&format!("[status]\nlisten = \"localhost\"\n{GOOD}"));
        assert_eq!(e.key, "status.listen");
        assert!(e.problem.contains("no port"), "{e}");
    }

    #[test]
    fn log_level_is_checked() {
        for good in ["info", "DEBUG", "info,tidewater=debug", "off"] {
            parse(&format!("[log]\nlevel = \"{good}\"\n{GOOD}")).unwrap();
        }
        for bad in ["verbose", "info,tidewater=loud", ""] {
            let e = one_error(&format!("[log]\nlevel = \"{bad}\"\n{GOOD}"));
            assert_eq!(e.key, "log.level", "{bad}");
        }
    }

    #[test]
    fn mysql_target_url_needs_a_database() {
        let text = GOOD.replace(
            "type = \"postgres\"\nurl = \"postgres://tidewater@127.0.0.1:5433/warehouse\"",
            "type = \"mysql\"\nurl = \"mysql://tidewater@127.0.0.1:3306\"",
        );
        let e = one_error(&text);
        assert_eq!(e.key, "targets.wh.url");
        assert!(e.problem.contains("names no database"), "{e}");
    }

    #[test]
    fn renames_must_name_configured_tables_and_not_collide() {
        let two = GOOD.replace("tables = [\"public.orders\"]", "tables = [\"public.orders\", \"public.archive\"]");
        let e =
            one_error(&two.replace("\"public.orders\" = \"replica.orders\"", "\"public.ordrs\" = \"replica.orders\""));
        assert_eq!(e.key, "pipelines[0].tables");
        assert!(e.problem.contains("public.ordrs") && e.problem.contains("sources.app.tables"), "{e}");
        let e =
            one_error(&two.replace("\"public.orders\" = \"replica.orders\"", "\"public.Orders\" = \"replica.orders\""));
        assert!(e.problem.contains("differs only in case"), "{e}");
        let e = one_error(&two.replace(
            "\"public.orders\" = \"replica.orders\"",
            "\"public.orders\" = \"replica.orders\"\n\"public.archive\" = \"replica.orders\"",
        ));
        assert!(e.problem.contains("would both be written to the target table replica.orders"), "{e}");
        // A wildcard covers a rename.
        parse(&GOOD.replace("tables = [\"public.orders\"]", "tables = [\"public.*\"]")).unwrap();
        // SQLite drops the schema: replica.orders and public.orders collide there.
        let sqlite =
            two.replace("\"public.orders\" = \"replica.orders\"", "\"public.archive\" = \"old.orders\"").replace(
                "type = \"postgres\"\nurl = \"postgres://tidewater@127.0.0.1:5433/warehouse\"",
                "type = \"sqlite\"\npath = \"/tmp/x.db\"",
            );
        let e = one_error(&sqlite);
        assert!(e.problem.contains("SQLite has no schemas"), "{e}");
    }

    #[test]
    fn credentials_directory_is_expanded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app_pw"), "pw\n").unwrap();
        // The variable is process-wide; no other test in this module sets it.
        std::env::set_var("CREDENTIALS_DIRECTORY", dir.path());
        let secret = Secret::File(PathBuf::from("$CREDENTIALS_DIRECTORY/app_pw"));
        assert_eq!(secret.read().unwrap().as_deref(), Some("pw"));
        let missing = Secret::File(PathBuf::from("${CREDENTIALS_DIRECTORY}/warehouse_pw"));
        assert!(missing.read().unwrap_err().contains("warehouse_pw"));
    }

    #[test]
    fn mysql_source_needs_server_id() {
        let text = GOOD.replace(
            "type = \"postgres\"\nurl = \"postgres://replicator",
            "type = \"mysql\"\nurl = \"mysql://replicator",
        );
        let e = parse(&text).unwrap_err();
        assert!(e.iter().any(|e| e.key == "sources.app.server_id"), "{e:?}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod example_tests {
    #[test]
    fn config_example_is_valid() {
        let text = include_str!("../config.example.toml");
        let cfg = super::parse(text).unwrap();
        assert_eq!(cfg.pipelines[0].name, "app_to_warehouse");
        assert_eq!(cfg.pipelines[0].renames.get("public.orders").map(String::as_str), Some("replica.orders"));
    }
}
