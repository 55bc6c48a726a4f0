//! Source connections: connecting, server flavour, error conversion, small query helpers.

use std::time::Duration;

use mysql_async::prelude::{FromValue, Queryable};
use mysql_async::{Conn, OptsBuilder, Row, SslOpts};
use tidewater_core::{ConnectorError, ErrorClass};

use crate::errors::mysql_error_class;
use crate::sink::MysqlEndpoint;
use crate::tls::{MysqlSslMode, MysqlTls};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which server family the source is; they differ in replication protocol details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    MariaDb,
    MySql,
}

/// `SELECT VERSION()` of the source, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub flavour: Flavour,
    /// (major, minor, patch)
    pub version: (u32, u32, u32),
    pub version_text: String,
}

impl ServerInfo {
    /// Parses `VERSION()`: `10.11.6-MariaDB-0+deb12u1-log`, `8.0.36`, `8.4.0-log`, ...
    pub fn parse(version_text: &str) -> ServerInfo {
        let flavour =
            if version_text.to_ascii_lowercase().contains("mariadb") { Flavour::MariaDb } else { Flavour::MySql };
        // MariaDB behind an old protocol prefix reports `5.5.5-10.x`.
        let core = version_text.strip_prefix("5.5.5-").unwrap_or(version_text);
        let mut nums = core.split(|c: char| !c.is_ascii_digit()).take(3).map(|p| p.parse::<u32>().unwrap_or(0));
        let version = (nums.next().unwrap_or(0), nums.next().unwrap_or(0), nums.next().unwrap_or(0));
        ServerInfo { flavour, version, version_text: version_text.to_string() }
    }

    pub fn at_least(&self, major: u32, minor: u32, patch: u32) -> bool {
        self.version >= (major, minor, patch)
    }

    /// The statement that shows the current binlog file and position: MySQL 8.2 renamed
    /// `SHOW MASTER STATUS` (8.4 removed the old name).
    pub fn binlog_status_sql(&self) -> &'static str {
        match self.flavour {
            Flavour::MySql if self.at_least(8, 2, 0) => "SHOW BINARY LOG STATUS",
            _ => "SHOW MASTER STATUS",
        }
    }

    /// The global privilege that lets a user read binlog status (`SHOW BINARY LOGS`).
    pub fn binlog_monitor_privilege(&self) -> &'static str {
        match self.flavour {
            Flavour::MariaDb if self.at_least(10, 5, 2) => "BINLOG MONITOR",
            _ => "REPLICATION CLIENT",
        }
    }
}

/// Converts a driver error; `what` says what was being done.
pub fn my_error(what: impl std::fmt::Display, e: mysql_async::Error) -> ConnectorError {
    match e {
        mysql_async::Error::Server(s) => {
            ConnectorError::classified(mysql_error_class(s.code), format!("{what}: {}", s.message))
                .with_code(s.code.to_string())
        }
        mysql_async::Error::Io(io) => ConnectorError::transient(format!("{what}: connection lost ({io})")),
        mysql_async::Error::Driver(d) => {
            use mysql_async::DriverError as D;
            let class = match d {
                D::CantParseServerVersion { .. }
                | D::UnknownAuthPlugin { .. }
                | D::CleartextPluginDisabled
                | D::NoClientSslFlagFromServer => ErrorClass::Fatal,
                _ => ErrorClass::Transient,
            };
            ConnectorError::new(class, format!("{what}: {d}"))
        }
        mysql_async::Error::Url(u) => ConnectorError::fatal(format!("{what}: {u}")),
        mysql_async::Error::Other(o) => ConnectorError::transient(format!("{what}: {o}")),
    }
}

/// Opens a TCP connection to the source (database `db`, none when empty) with UTF-8
/// results, the UTC time zone and generous network timeouts, using TLS as `tls` says
/// (`prefer`: TLS, or plaintext again when the server offers none).
pub async fn connect(endpoint: &MysqlEndpoint, tls: &MysqlTls, source_name: &str) -> Result<Conn, ConnectorError> {
    let what =
        format_args!("connecting to source {source_name} at {}:{} as {}", endpoint.host, endpoint.port, endpoint.user)
            .to_string();
    let mut conn = match open(endpoint, tls.ssl_opts(), &what, tls).await {
        Ok(c) => c,
        Err(Fallback::Plaintext) => open(endpoint, None, &what, tls).await.map_err(|f| f.into_error(&what))?,
        Err(Fallback::Failed(e)) => return Err(e),
    };
    conn.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'")
        .await
        .map_err(|e| my_error(format_args!("setting up the connection to source {source_name}"), e))?;
    Ok(conn)
}

enum Fallback {
    /// `prefer` asked for TLS and the server offers none: connect again without.
    Plaintext,
    Failed(ConnectorError),
}

impl Fallback {
    fn into_error(self, what: &str) -> ConnectorError {
        match self {
            Fallback::Failed(e) => e,
            Fallback::Plaintext => ConnectorError::fatal(format!("{what}: TLS refused on a plaintext connection")),
        }
    }
}

async fn open(endpoint: &MysqlEndpoint, ssl: Option<SslOpts>, what: &str, tls: &MysqlTls) -> Result<Conn, Fallback> {
    let with_tls = ssl.is_some();
    let opts = OptsBuilder::default()
        .ip_or_hostname(endpoint.host.clone())
        .tcp_port(endpoint.port)
        .user(Some(endpoint.user.clone()))
        .pass(endpoint.password.clone())
        .db_name(Some(endpoint.database.clone()).filter(|d| !d.is_empty()))
        .prefer_socket(false)
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .stmt_cache_size(64)
        .ssl_opts(ssl);
    match tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer)))
            if with_tls && tls.mode == MysqlSslMode::Prefer =>
        {
            Err(Fallback::Plaintext)
        }
        Ok(Err(mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer))) => {
            Err(Fallback::Failed(ConnectorError::fatal(format!(
                "{what}: the server does not offer TLS, which sslmode = \"{}\" requires: enable TLS on the server \
                 (ssl_cert/ssl_key) or set sslmode = \"prefer\" or \"disable\"",
                tls.mode
            ))))
        }
        Ok(Err(e)) => Err(Fallback::Failed(match crate::tls::find_rustls_error(&e) {
            Some(rustls_err) => ConnectorError::fatal(format!("{what}: {rustls_err}; {}", tls.hint())),
            None => my_error(what, e),
        })),
        Err(_) => {
            Err(Fallback::Failed(ConnectorError::transient(format!("{what}: no answer within {CONNECT_TIMEOUT:?}"))))
        }
    }
}

/// Reads column `i` of `row` as `T` (`what` names the query for messages).
pub fn col<T: FromValue>(row: &Row, i: usize, what: &str) -> Result<T, ConnectorError> {
    match row.get_opt::<T, usize>(i) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(ConnectorError::fatal(format!("{what}: unexpected value in column {}: {e}", i + 1))),
        None => Err(ConnectorError::fatal(format!("{what}: the result has no column {}", i + 1))),
    }
}

/// Runs a query and collects its rows.
pub async fn rows(conn: &mut Conn, sql: &str, what: &str) -> Result<Vec<Row>, ConnectorError> {
    conn.query(sql).await.map_err(|e| my_error(what, e))
}

/// Runs a prepared query with parameters and collects its rows.
pub async fn exec_rows<P: Into<mysql_async::Params> + Send>(
    conn: &mut Conn,
    sql: &str,
    params: P,
    what: &str,
) -> Result<Vec<Row>, ConnectorError> {
    conn.exec(sql, params).await.map_err(|e| my_error(what, e))
}

/// `SELECT VERSION()`.
pub async fn server_info(conn: &mut Conn) -> Result<ServerInfo, ConnectorError> {
    let rows = rows(conn, "SELECT VERSION()", "reading the server version").await?;
    let text: String = rows.first().map(|r| col(r, 0, "SELECT VERSION()")).transpose()?.unwrap_or_default();
    Ok(ServerInfo::parse(&text))
}

/// The current end of the binlog (`SHOW MASTER STATUS` or its MySQL 8.2+ name).
pub async fn binlog_head(conn: &mut Conn, info: &ServerInfo) -> Result<(String, u64), ConnectorError> {
    let sql = info.binlog_status_sql();
    let rows = rows(conn, sql, "reading the binlog position").await?;
    let row = rows.first().ok_or_else(|| {
        ConnectorError::fatal(format!("{sql} returned nothing: binary logging is off on the source (set log_bin)"))
    })?;
    Ok((col(row, 0, sql)?, col(row, 1, sql)?))
}

/// MariaDB: the GTID state at `file:pos` (`BINLOG_GTID_POS`); empty before any GTID.
pub async fn gtid_at(conn: &mut Conn, file: &str, pos: u64) -> Result<String, ConnectorError> {
    let rows = exec_rows(conn, "SELECT BINLOG_GTID_POS(?, ?)", (file, pos), "reading the GTID position").await?;
    Ok(rows.first().map(|r| col::<Option<String>>(r, 0, "BINLOG_GTID_POS")).transpose()?.flatten().unwrap_or_default())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flavours_and_versions() {
        let m = ServerInfo::parse("10.11.19-MariaDB-0+deb12u1-log");
        assert_eq!(m.flavour, Flavour::MariaDb);
        assert_eq!(m.version, (10, 11, 19));
        assert_eq!(m.binlog_status_sql(), "SHOW MASTER STATUS");
        assert_eq!(m.binlog_monitor_privilege(), "BINLOG MONITOR");
        let old = ServerInfo::parse("5.5.5-10.4.32-MariaDB");
        assert_eq!(old.flavour, Flavour::MariaDb);
        assert_eq!(old.version, (10, 4, 32));
        assert_eq!(old.binlog_monitor_privilege(), "REPLICATION CLIENT");
        let my80 = ServerInfo::parse("8.0.36");
        assert_eq!(my80.flavour, Flavour::MySql);
        assert_eq!(my80.binlog_status_sql(), "SHOW MASTER STATUS");
        assert_eq!(my80.binlog_monitor_privilege(), "REPLICATION CLIENT");
        let my84 = ServerInfo::parse("8.4.2-log");
        assert_eq!(my84.version, (8, 4, 2));
        assert_eq!(my84.binlog_status_sql(), "SHOW BINARY LOG STATUS");
    }
}
