//! Builds connector instances from the validated configuration: the only place that knows
//! every connector type.

use tidewater_core::{ConnectorError, Sink, Source};
use tidewater_postgres::{PgEndpoint, PgSink, PgSource, PgSourceConfig};

use crate::config::{Endpoint, PipelineConfig, Secret, SourceKind, TargetKind};

fn pg_endpoint(
    endpoint: &Endpoint,
    secret: &Secret,
    application_name: String,
    key: &str,
) -> Result<PgEndpoint, ConnectorError> {
    let password = secret.read().map_err(|e| ConnectorError::fatal(format!("{key}: {e}")))?;
    Ok(PgEndpoint {
        host: endpoint.host.clone(),
        port: endpoint.port,
        user: endpoint.user.clone(),
        password,
        database: endpoint.database.clone(),
        application_name,
    })
}

pub fn source(cfg: &PipelineConfig) -> Result<Box<dyn Source>, ConnectorError> {
    let key = format!("sources.{}", cfg.source.name);
    match cfg.source.kind {
        SourceKind::Postgres => Ok(Box::new(PgSource::new(PgSourceConfig {
            source_name: cfg.source.name.clone(),
            endpoint: pg_endpoint(&cfg.source.endpoint, &cfg.source.password, format!("tidewater_{}", cfg.name), &key)?,
            tables: cfg.source.tables.clone(),
            slot: cfg.slot.clone(),
            publication: cfg.publication.clone(),
        }))),
        SourceKind::Mysql => {
            Err(ConnectorError::fatal(format!("{key}: mysql sources are not available in this build yet")))
        }
    }
}

pub fn sink(cfg: &PipelineConfig) -> Result<Box<dyn Sink>, ConnectorError> {
    let key = format!("targets.{}", cfg.target.name);
    match (cfg.target.kind, &cfg.target.endpoint) {
        (TargetKind::Postgres, Some(endpoint)) => Ok(Box::new(PgSink::new(pg_endpoint(
            endpoint,
            &cfg.target.password,
            format!("tidewater_{}", cfg.name),
            &key,
        )?))),
        (TargetKind::Postgres, None) => Err(ConnectorError::fatal(format!("{key}.url is required"))),
        (TargetKind::Mysql | TargetKind::Sqlite, _) => Err(ConnectorError::fatal(format!(
            "{key}: {:?} targets are not available in this build yet",
            cfg.target.kind
        ))),
    }
}

/// The Postgres endpoint of a pipeline's source, for `check`.
pub fn source_pg_endpoint(cfg: &PipelineConfig) -> Result<PgEndpoint, ConnectorError> {
    pg_endpoint(
        &cfg.source.endpoint,
        &cfg.source.password,
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
            "tidewater_check".into(),
            &format!("targets.{}", cfg.target.name),
        )?)),
        _ => Ok(None),
    }
}
