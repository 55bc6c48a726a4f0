//! TLS for MySQL/MariaDB connections: the `sslmode` values of the Postgres connector
//! (libpq's meaning) mapped onto sqlx (the sink) and mysql_async (the source, binlog
//! connection included). Both use rustls with the ring provider.
//!
//! | sslmode       | TLS                      | certificate check                        |
//! |---------------|--------------------------|------------------------------------------|
//! | `disable`     | never                    |                                          |
//! | `prefer`      | if the server offers it  | none (encryption only)                   |
//! | `require`     | always                   | none (encryption only)                   |
//! | `verify-ca`   | always                   | chain to a CA in `ssl_ca_file`           |
//! | `verify-full` | always                   | chain, and the name matches the host     |
//!
//! mysql_async has no "prefer": the source asks for TLS and, when the server does not
//! offer it, connects again in plaintext. The sink's driver (sqlx) also trusts the
//! public web PKI roots besides `ssl_ca_file` in the verifying modes; the source trusts
//! `ssl_ca_file` only.

use std::fmt;
use std::path::PathBuf;

use mysql_async::SslOpts;
use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};

/// How a connection uses TLS; the values and meaning of libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MysqlSslMode {
    Disable,
    /// TLS when the server offers it, plaintext otherwise; no certificate check.
    #[default]
    Prefer,
    /// TLS or fail; no certificate check.
    Require,
    /// TLS, and the server certificate must chain to the configured CA.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must be issued for the host connected to.
    VerifyFull,
}

impl MysqlSslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MysqlSslMode::Disable => "disable",
            MysqlSslMode::Prefer => "prefer",
            MysqlSslMode::Require => "require",
            MysqlSslMode::VerifyCa => "verify-ca",
            MysqlSslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for MysqlSslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS settings of a MySQL connection: mode and, for the verifying modes, the PEM
/// file of the CA that signed the server certificate (validated by the configuration).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MysqlTls {
    pub mode: MysqlSslMode,
    pub ca_file: Option<PathBuf>,
}

impl MysqlTls {
    /// Plaintext only.
    pub fn disabled() -> MysqlTls {
        MysqlTls { mode: MysqlSslMode::Disable, ca_file: None }
    }

    /// The sqlx options with this TLS setting applied.
    pub fn apply_sqlx(&self, options: MySqlConnectOptions) -> MySqlConnectOptions {
        let mode = match self.mode {
            MysqlSslMode::Disable => MySqlSslMode::Disabled,
            MysqlSslMode::Prefer => MySqlSslMode::Preferred,
            MysqlSslMode::Require => MySqlSslMode::Required,
            MysqlSslMode::VerifyCa => MySqlSslMode::VerifyCa,
            MysqlSslMode::VerifyFull => MySqlSslMode::VerifyIdentity,
        };
        let options = options.ssl_mode(mode);
        match (&self.ca_file, self.verifies()) {
            (Some(ca), true) => options.ssl_ca(ca),
            _ => options,
        }
    }

    /// The mysql_async TLS options; `None` for `disable`. `prefer` gives the options of
    /// `require`: the caller falls back to plaintext when the server offers no TLS.
    pub fn ssl_opts(&self) -> Option<SslOpts> {
        let opts = SslOpts::default();
        match self.mode {
            MysqlSslMode::Disable => None,
            MysqlSslMode::Prefer | MysqlSslMode::Require => Some(
                opts.with_disable_built_in_roots(true)
                    .with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true),
            ),
            MysqlSslMode::VerifyCa | MysqlSslMode::VerifyFull => {
                let roots = self.ca_file.clone().map(|p| vec![p.into()]).unwrap_or_default();
                Some(
                    opts.with_root_certs(roots)
                        .with_disable_built_in_roots(true)
                        .with_danger_skip_domain_validation(self.mode == MysqlSslMode::VerifyCa),
                )
            }
        }
    }

    fn verifies(&self) -> bool {
        matches!(self.mode, MysqlSslMode::VerifyCa | MysqlSslMode::VerifyFull)
    }

    /// What to change after a failed TLS negotiation, for error messages.
    pub fn hint(&self) -> String {
        let ca = self.ca_file.as_ref().map_or_else(|| "(none)".to_owned(), |p| p.display().to_string());
        match self.mode {
            MysqlSslMode::VerifyFull => format!(
                "TLS negotiation failed with sslmode = \"verify-full\" and ssl_ca_file {ca}: the server certificate \
                 must be signed by that CA and name the host of the URL (use sslmode = \"verify-ca\" to skip the \
                 name check)"
            ),
            MysqlSslMode::VerifyCa => format!(
                "TLS negotiation failed with sslmode = \"verify-ca\": the server certificate must be signed by the \
                 CA in ssl_ca_file {ca}"
            ),
            mode => format!("TLS negotiation failed with sslmode = \"{mode}\""),
        }
    }
}

/// The rustls error behind an error chain, if any: a TLS negotiation failure, which
/// retrying does not heal.
pub fn find_rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn modes_map_to_driver_options() {
        assert!(MysqlTls::disabled().ssl_opts().is_none());
        assert_eq!(MysqlTls::default().mode, MysqlSslMode::Prefer);
        let require = MysqlTls { mode: MysqlSslMode::Require, ca_file: None }.ssl_opts().unwrap();
        assert!(require.accept_invalid_certs() && require.disable_built_in_roots());
        let ca = MysqlTls { mode: MysqlSslMode::VerifyCa, ca_file: Some("/ca.pem".into()) }.ssl_opts().unwrap();
        assert!(!ca.accept_invalid_certs() && ca.skip_domain_validation() && ca.disable_built_in_roots());
        assert_eq!(ca.root_certs().len(), 1);
        let full = MysqlTls { mode: MysqlSslMode::VerifyFull, ca_file: Some("/ca.pem".into()) }.ssl_opts().unwrap();
        assert!(!full.accept_invalid_certs() && !full.skip_domain_validation());
        let hint = MysqlTls { mode: MysqlSslMode::VerifyFull, ca_file: Some("/ca.pem".into()) }.hint();
        assert!(hint.contains("/ca.pem") && hint.contains("verify-ca"), "{hint}");
    }

    #[test]
    fn tls_errors_are_found() {
        let rustls_err = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io_err = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_err.clone());
        assert_eq!(find_rustls_error(&io_err), Some(&rustls_err));
        assert!(find_rustls_error(&std::io::Error::other("reset")).is_none());
    }
}
