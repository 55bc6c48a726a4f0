//! Logging setup: human text on a terminal; under systemd (stderr connected to the
//! journal, `JOURNAL_STREAM` set) native journald records with structured fields; JSON
//! lines otherwise (containers, log shippers). `RUST_LOG` overrides the configured level.
//! Database drivers never log below `info` unless `RUST_LOG` says so: at debug they print
//! statement parameters, i.e. row values.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Driver crates that log statement parameters, i.e. row values, at debug level: capped
/// at `info` whatever the configured level (`RUST_LOG` can still ask for them).
const QUIET_DRIVERS: &str = "tokio_postgres=info,mysql_async=info,mysql_common=info,sqlx=info";

/// The filter directives for a configured `log.level`.
pub fn directives(level: &str) -> String {
    format!("{level},{QUIET_DRIVERS}")
}

pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directives(level)));
    if format == LogFormat::Auto && std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            use tracing_subscriber::layer::SubscriberExt as _;
            use tracing_subscriber::util::SubscriberInitExt as _;
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(journald.with_syslog_identifier("tidewater".into()))
                .try_init();
            return;
        }
    }
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // Colours only when a person reads a terminal, never in files or the journal.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_level_keeps_drivers_quiet() {
        let d = super::directives("debug");
        assert!(d.starts_with("debug,") && d.contains("tokio_postgres=info"), "{d}");
        assert!(tracing_subscriber::EnvFilter::try_new(&d).is_ok());
    }
}
