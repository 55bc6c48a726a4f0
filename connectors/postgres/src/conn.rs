//! Ordinary (non-replication) connections, for catalog queries, snapshots and the sink.

use std::time::Duration;

use tidewater_core::ConnectorError;
use tokio_postgres::{Client, NoTls};

use crate::sql::pg_error;

/// Where and as whom to connect. The password is held only in memory.
#[derive(Clone)]
pub struct PgEndpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub application_name: String,
}

impl std::fmt::Debug for PgEndpoint {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "postgres://{}@{}:{}/{}", self.user, self.host, self.port, self.database)
    }
}

impl PgEndpoint {
    pub fn describe(&self) -> String {
        format!("{:?}", self)
    }
}

/// Session settings that make text output unambiguous and identical to what the
/// replication connection produces.
pub const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 -c extra_float_digits=3";

pub async fn connect(endpoint: &PgEndpoint) -> Result<Client, ConnectorError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&endpoint.host)
        .port(endpoint.port)
        .user(&endpoint.user)
        .dbname(&endpoint.database)
        .application_name(&endpoint.application_name)
        .options(SESSION_OPTIONS)
        .connect_timeout(Duration::from_secs(10))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    if let Some(password) = &endpoint.password {
        config.password(password);
    }
    let (client, connection) =
        config.connect(NoTls).await.map_err(|e| pg_error(format_args!("connecting to {}", endpoint.describe()), e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}
