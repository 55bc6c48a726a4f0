//! Ordinary (non-replication) connections, for catalog queries, snapshots and the sink.

use std::time::Duration;

use tidewater_core::ConnectorError;
use tokio_postgres::{Client, NoTls};

use crate::sql::pg_error;
use crate::tls::{explain_tls_error, find_rustls_error, SslMode, TlsSettings};

/// Where and as whom to connect. The password is held only in memory.
#[derive(Clone)]
pub struct PgEndpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub application_name: String,
    /// sslmode and CA roots, for this connection and the replication connection.
    pub tls: TlsSettings,
}

impl std::fmt::Debug for PgEndpoint {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "postgres://{}@{}:{}/{}?sslmode={}", self.user, self.host, self.port, self.database, self.tls.mode())
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
    config.ssl_mode(endpoint.tls.tokio_postgres_mode());
    // SCRAM-SHA-256-PLUS whenever the session is encrypted and the server offers it.
    config.channel_binding(tokio_postgres::config::ChannelBinding::Prefer);
    let client = match endpoint.tls.connector() {
        Some(tls) => {
            let (client, connection) = config.connect(tls).await.map_err(|e| connect_error(endpoint, e))?;
            tokio::spawn(drive(connection));
            client
        }
        None => {
            let (client, connection) = config.connect(NoTls).await.map_err(|e| connect_error(endpoint, e))?;
            tokio::spawn(drive(connection));
            client
        }
    };
    Ok(client)
}

/// Runs a connection until it ends. Server notices (`CREATE SCHEMA IF NOT EXISTS` on an
/// existing schema says "already exists, skipping" at every start) are logged at debug:
/// awaiting the connection itself would log each one at info.
async fn drive<S, T>(mut connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(tokio_postgres::AsyncMessage::Notice(notice))) => {
                tracing::debug!(severity = notice.severity(), message = notice.message(), "postgres notice");
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(error = %e, "postgres connection ended");
                return;
            }
            None => return,
        }
    }
}

/// A connection error with what to change when TLS is the cause. TLS negotiation
/// failures (untrusted certificate, server without TLS under `require`) are fatal:
/// retrying cannot fix a configuration.
fn connect_error(endpoint: &PgEndpoint, e: tokio_postgres::Error) -> ConnectorError {
    let what = format!("connecting to {}", endpoint.describe());
    if let Some(tls) = find_rustls_error(&e) {
        return ConnectorError::fatal(format!("{what}: {}", explain_tls_error(tls, &endpoint.tls, &endpoint.host)));
    }
    let text = crate::sql::with_causes(&e);
    if text.contains("server does not support TLS") {
        return ConnectorError::fatal(format!(
            "{what}: the server does not accept TLS connections but sslmode = \"{}\" requires TLS; enable ssl on the \
             server, or set sslmode = \"prefer\" (or \"disable\") to allow plaintext",
            endpoint.tls.mode()
        ));
    }
    let mut err = pg_error(&what, e);
    if endpoint.tls.mode() == SslMode::Disable && err.message.contains("no encryption") {
        err.message.push_str(
            "; the server only accepts TLS connections from here: set sslmode = \"verify-full\" (with ssl_ca_file) \
             or \"require\"",
        );
    }
    err
}

/// Whether this session is encrypted, as the server sees it: `Some("TLSv1.3 ...")` or
/// `None` for plaintext.
pub async fn tls_in_use(client: &Client) -> Result<Option<String>, ConnectorError> {
    let row = client
        .query_opt("SELECT version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl", &[])
        .await
        .map_err(|e| pg_error("reading pg_stat_ssl", e))?;
    Ok(row.map(|r| {
        let version: Option<String> = r.get(0);
        let cipher: Option<String> = r.get(1);
        [version, cipher].into_iter().flatten().collect::<Vec<_>>().join(" ")
    }))
}
