//! Builds connector instances from the validated configuration: the only place that knows
//! every connector type.

use tidewater_core::{ConnectorError, Sink, Source};
use tidewater_mysql::sink::MysqlEndpoint;
use tidewater_mysql::{MysqlSink, MysqlSource, MysqlSourceConfig, MysqlSslMode, MysqlTls};
use tidewater_postgres::{PgEndpoint, PgSink, PgSource, PgSourceConfig, TlsSettings};
use tidewater_sqlite::SqliteSink;

use crate::config::{Endpoint, PipelineConfig, Secret, SourceKind, SslMode, TargetKind, TlsConfig};

/// The connector's view of one Postgres endpoint: reads the password and the CA file
/// now; errors name the key (`sources.NAME` / `targets.NAME`), never a secret.
fn pg_endpoint(
    endpoint: &Endpoint,
    secret: &Secret,
    tls: &TlsConfig,
    application_name: String,
    key: &str,
) -> Result<PgEndpoint, ConnectorError> {
    let password = secret.read().map_err(|e| ConnectorError::fatal(format!("{key}: {e}")))?;
    let tls = TlsSettings::new(tls.sslmode, tls.ca_file.as_deref())
        .map_err(|e| ConnectorError::fatal(format!("{key}: {e}")))?;
    Ok(PgEndpoint {
        host: endpoint.host.clone(),
        port: endpoint.port,
        user: endpoint.user.clone(),
        password,
        database: endpoint.database.clone(),
        application_name,
        tls,
    })
}

/// The TLS settings of a MySQL source or target (validated by the configuration).
fn mysql_tls(tls: &TlsConfig) -> MysqlTls {
    let mode = match tls.sslmode {
        SslMode::Disable => MysqlSslMode::Disable,
        SslMode::Prefer => MysqlSslMode::Prefer,
        SslMode::Require => MysqlSslMode::Require,
        SslMode::VerifyCa => MysqlSslMode::VerifyCa,
        SslMode::VerifyFull => MysqlSslMode::VerifyFull,
    };
    MysqlTls { mode, ca_file: tls.ca_file.clone() }
}

fn mysql_endpoint(endpoint: &Endpoint, secret: &Secret, key: &str) -> Result<MysqlEndpoint, ConnectorError> {
    let password = secret.read().map_err(|e| ConnectorError::fatal(format!("{key}: {e}")))?;
    Ok(MysqlEndpoint {
        host: endpoint.host.clone(),
        port: endpoint.port,
        user: endpoint.user.clone(),
        password,
        database: endpoint.database.clone(),
    })
}

/// The MySQL endpoint of a pipeline's source or target, for `check`.
pub fn mysql_endpoint_of(endpoint: &Endpoint, secret: &Secret, key: &str) -> Result<MysqlEndpoint, ConnectorError> {
    mysql_endpoint(endpoint, secret, key)
}

pub fn source(cfg: &PipelineConfig) -> Result<Box<dyn Source>, ConnectorError> {
    let key = format!("sources.{}", cfg.source.name);
    match cfg.source.kind {
        SourceKind::Postgres => Ok(Box::new(PgSource::new(PgSourceConfig {
            source_name: cfg.source.name.clone(),
            endpoint: pg_endpoint(
                &cfg.source.endpoint,
                &cfg.source.password,
                &cfg.source.tls,
                format!("tidewater_{}", cfg.name),
                &key,
            )?,
            tables: cfg.source.tables.clone(),
            slot: cfg.slot.clone(),
            publication: cfg.publication.clone(),
        }))),
        SourceKind::Mysql => {
            let server_id = cfg
                .source
                .server_id
                .ok_or_else(|| ConnectorError::fatal(format!("{key}.server_id is required for mysql sources")))?;
            Ok(Box::new(
                MysqlSource::new(MysqlSourceConfig {
                    source_name: cfg.source.name.clone(),
                    endpoint: mysql_endpoint(&cfg.source.endpoint, &cfg.source.password, &key)?,
                    tables: cfg.source.tables.clone(),
                    server_id,
                })
                .with_tls(mysql_tls(&cfg.source.tls))
                .for_pipeline(cfg.name.clone())
                .with_buffer_bytes(
                    cfg.source.binlog_buffer_mb.map_or(tidewater_mysql::hub::DEFAULT_BUFFER_BYTES, |mb| {
                        usize::try_from(mb).unwrap_or(usize::MAX).saturating_mul(1024 * 1024)
                    }),
                ),
            ))
        }
    }
}

pub fn sink(cfg: &PipelineConfig) -> Result<Box<dyn Sink>, ConnectorError> {
    let key = format!("targets.{}", cfg.target.name);
    match (cfg.target.kind, &cfg.target.endpoint) {
        (TargetKind::Postgres, Some(endpoint)) => Ok(Box::new(PgSink::new(pg_endpoint(
            endpoint,
            &cfg.target.password,
            &cfg.target.tls,
            format!("tidewater_{}", cfg.name),
            &key,
        )?))),
        (TargetKind::Postgres, None) => Err(ConnectorError::fatal(format!("{key}.url is required"))),
        (TargetKind::Mysql, _) => Ok(Box::new(mysql_sink(cfg)?)),
        (TargetKind::Sqlite, _) => match &cfg.target.path {
            Some(path) => Ok(Box::new(SqliteSink::new(path.clone()))),
            None => Err(ConnectorError::fatal(format!("{key}.path is required for sqlite targets"))),
        },
    }
}

/// The MySQL/MariaDB sink of a pipeline whose target is MySQL (also for `check`'s
/// read-only probe).
pub fn mysql_sink(cfg: &PipelineConfig) -> Result<MysqlSink, ConnectorError> {
    let key = format!("targets.{}", cfg.target.name);
    match (cfg.target.kind, &cfg.target.endpoint) {
        (TargetKind::Mysql, Some(endpoint)) => {
            Ok(MysqlSink::new(mysql_endpoint(endpoint, &cfg.target.password, &key)?)
                .with_tls(mysql_tls(&cfg.target.tls)))
        }
        (TargetKind::Mysql, None) => Err(ConnectorError::fatal(format!("{key}.url is required"))),
        _ => Err(ConnectorError::fatal(format!("{key} is not a mysql target"))),
    }
}

/// The Postgres endpoint of a pipeline's source, for `check`.
pub fn source_pg_endpoint(cfg: &PipelineConfig) -> Result<PgEndpoint, ConnectorError> {
    pg_endpoint(
        &cfg.source.endpoint,
        &cfg.source.password,
        &cfg.source.tls,
        "tidewater_check".into(),
        &format!("sources.{}", cfg.source.name),
    )
}

/// The Postgres endpoint of a pipeline's target, for `check`.
pub fn target_pg_endpoint(cfg: &PipelineConfig) -> Result<Option<PgEndpoint>, ConnectorError> {
    match (&cfg.target.kind, &cfg.target.endpoint) {
        (TargetKind::Postgres, Some(endpoint)) => Ok(Some(pg_endpoint(
            endpoint,
            &cfg.target.password,
            &cfg.target.tls,
            "tidewater_check".into(),
            &format!("targets.{}", cfg.target.name),
        )?)),
        _ => Ok(None),
    }
}
