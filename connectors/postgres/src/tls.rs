//! TLS for PostgreSQL connections: `sslmode` with libpq's meaning, rustls client
//! configurations (ring provider, set per configuration so nothing depends on a
//! process-wide default), a tokio-postgres connector for ordinary connections, the
//! handshake used by the hand-written replication client, and the
//! `tls-server-end-point` hash for SCRAM-SHA-256-PLUS channel binding.
//!
//! | sslmode       | TLS                               | certificate check                 |
//! |---------------|-----------------------------------|-----------------------------------|
//! | `disable`     | never                             |                                   |
//! | `prefer`      | if the server accepts it          | none (encryption only)            |
//! | `require`     | always                            | none (encryption only)            |
//! | `verify-ca`   | always                            | chain to a CA in `ssl_ca_file`    |
//! | `verify-full` | always                            | chain, and the name matches host  |

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, WebPkiServerVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsConnector;

/// How a connection uses TLS; the values and meaning of libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    /// TLS when the server offers it, plaintext when it refuses; no certificate check.
    #[default]
    Prefer,
    /// TLS or fail; no certificate check (protects against eavesdropping, not against
    /// an active man in the middle).
    Require,
    /// TLS, and the server certificate must chain to a configured CA.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must be issued for the host connected to.
    VerifyFull,
}

impl SslMode {
    pub const ALL: [SslMode; 5] =
        [SslMode::Disable, SslMode::Prefer, SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull];

    pub fn parse(text: &str) -> Option<SslMode> {
        SslMode::ALL.into_iter().find(|m| m.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// True when a server that refuses TLS must not be talked to in plaintext.
    pub fn requires_tls(self) -> bool {
        matches!(self, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// True when the server certificate is checked against CA roots.
    pub fn verifies_certificate(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS part of an endpoint: mode, CA file and the rustls configuration built from
/// them once (the CA file is read when the settings are made, not per connection).
#[derive(Clone)]
pub struct TlsSettings {
    mode: SslMode,
    ca_file: Option<PathBuf>,
    /// `None` exactly when `mode` is `Disable`.
    config: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings").field("sslmode", &self.mode.as_str()).field("ca_file", &self.ca_file).finish()
    }
}

impl TlsSettings {
    /// Plaintext only.
    pub fn disabled() -> TlsSettings {
        TlsSettings { mode: SslMode::Disable, ca_file: None, config: None }
    }

    /// Builds the settings, reading `ca_file` (PEM, one or more certificates) now.
    /// `verify-ca` and `verify-full` need a CA file; the other modes would not use one,
    /// so a CA file with them is refused rather than letting anyone believe certificates
    /// are checked.
    /// Errors are complete sentences naming the file; they never contain secrets.
    pub fn new(mode: SslMode, ca_file: Option<&Path>) -> Result<TlsSettings, String> {
        if mode == SslMode::Disable {
            if ca_file.is_some() {
                return Err("ssl_ca_file is set but sslmode = \"disable\" never uses TLS".to_owned());
            }
            return Ok(TlsSettings::disabled());
        }
        let roots = match (mode.verifies_certificate(), ca_file) {
            (true, Some(path)) => Some(load_roots(path)?),
            (true, None) => {
                return Err(format!(
                    "sslmode = \"{mode}\" needs ssl_ca_file: the PEM file of the CA that signed the server certificate"
                ))
            }
            (false, Some(_)) => {
                return Err(format!(
                    "ssl_ca_file is only used with sslmode = \"verify-ca\" or \"verify-full\", not \"{mode}\""
                ))
            }
            (false, None) => None,
        };
        let config = client_config(mode, roots).map_err(|e| format!("cannot set up TLS: {e}"))?;
        Ok(TlsSettings { mode, ca_file: ca_file.map(Path::to_path_buf), config: Some(Arc::new(config)) })
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The tokio-postgres connector; `None` for `disable` (use `NoTls`).
    pub fn connector(&self) -> Option<MakeRustlsConnect> {
        self.config.clone().map(|config| MakeRustlsConnect { config })
    }

    /// The tokio-postgres `sslmode` (it knows disable/prefer/require; certificate
    /// verification is done by the rustls configuration).
    pub fn tokio_postgres_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        }
    }

    /// TLS handshake over an established TCP connection whose server answered the
    /// SSLRequest with 'S'. `host` is the name to verify (verify-full) and to send as SNI.
    pub async fn handshake<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        host: &str,
        tcp: IO,
    ) -> Result<tokio_rustls::client::TlsStream<IO>, io::Error> {
        let Some(config) = &self.config else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "TLS handshake requested with sslmode = disable"));
        };
        let name = server_name(host)?;
        TlsConnector::from(config.clone()).connect(name, tcp).await
    }
}

fn server_name(host: &str) -> Result<ServerName<'static>, io::Error> {
    ServerName::try_from(host.to_owned()).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("host {host:?} cannot be used as a TLS server name: {e}"))
    })
}

fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read ssl_ca_file {shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("ssl_ca_file {shown} is not a valid PEM file: {e}"))?;
    let mut roots = RootCertStore::empty();
    // Tolerate certificates webpki cannot use (a system bundle may hold some), but not a
    // file without a single usable one.
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "ssl_ca_file {shown} contains no usable CA certificate \
             (expected PEM blocks \"-----BEGIN CERTIFICATE-----\")"
        ));
    }
    Ok(roots)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(mode: SslMode, roots: Option<RootCertStore>) -> Result<ClientConfig, rustls::Error> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let mut config = match (mode, roots) {
        (SslMode::VerifyFull, Some(roots)) => {
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder.with_webpki_verifier(verifier).with_no_client_auth()
        }
        (SslMode::VerifyCa, Some(roots)) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LaxVerifier { roots: Some(Arc::new(roots)), algorithms }))
            .with_no_client_auth(),
        (SslMode::Prefer | SslMode::Require, _) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LaxVerifier { roots: None, algorithms }))
            .with_no_client_auth(),
        (mode, _) => return Err(rustls::Error::General(format!("no TLS configuration for sslmode = {mode}"))),
    };
    // PostgreSQL 17 checks the ALPN protocol when the client sends one; older servers
    // ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// The verifier for the modes that do not check the host name. Handshake signatures are
/// always checked, so the session keys belong to the certificate's key.
/// - `roots: None` (`prefer`/`require`): any certificate is accepted (encrypt only);
/// - `roots: Some` (`verify-ca`): the chain must lead to a configured root (validity dates
///   included); the names in the certificate are not compared with the host.
#[derive(Debug)]
struct LaxVerifier {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for LaxVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, self.algorithms.all)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------- errors

/// The rustls error behind an error chain (tokio-postgres and tokio-rustls wrap it in
/// `io::Error`s), if any. A rustls error means the TLS negotiation itself failed, which
/// retrying does not heal.
pub fn find_rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        // `io::Error::source` skips the wrapped error itself, so look inside.
        if let Some(found) = e
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// A failed TLS negotiation in words, with what to change.
pub fn explain_tls_error(err: &rustls::Error, settings: &TlsSettings, host: &str) -> String {
    let ca = settings.ca_file().map_or_else(|| "(none)".to_owned(), |p| p.display().to_string());
    match err {
        rustls::Error::InvalidCertificate(cert) => {
            let why = match cert {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                    "it is not signed by a CA in ssl_ca_file {ca}; set ssl_ca_file to the CA that issued the \
                     server certificate"
                ),
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                    "it is not issued for host {host:?}; connect with a name the certificate lists \
                     (sslmode = \"verify-full\" compares them), or use sslmode = \"verify-ca\" to check only the CA"
                ),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "it has expired; renew the server certificate".to_owned()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "it is not valid yet; check the clocks of both machines".to_owned()
                }
                other => format!("{other:?}; check the server certificate and ssl_ca_file {ca}"),
            };
            format!("TLS: the server certificate was rejected ({err}): {why}")
        }
        other => format!("TLS negotiation failed: {other} (sslmode = \"{}\")", settings.mode()),
    }
}

// ---------------------------------------------------------------- channel binding

/// Reads one DER TLV: (tag, contents, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The DER contents of `Certificate.signatureAlgorithm.algorithm` (an OID).
fn signature_algorithm_oid(cert_der: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (SEQUENCE, certificate, _) = der_tlv(cert_der)? else { return None };
    let (SEQUENCE, _tbs_certificate, rest) = der_tlv(certificate)? else { return None };
    let (SEQUENCE, algorithm_identifier, _) = der_tlv(rest)? else { return None };
    let (OID, oid, _) = der_tlv(algorithm_identifier)? else { return None };
    Some(oid)
}

/// The `tls-server-end-point` channel-binding data (RFC 5929): a hash of the server's
/// DER certificate with the hash function of its signature algorithm, MD5 and SHA-1
/// replaced by SHA-256. `None` for algorithms without one (Ed25519, RSA-PSS): then no
/// channel binding is used.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01]; // 1.2.840.113549.1.1
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01]; // 1.2.840.10045.4.1
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03]; // 1.2.840.10045.4.3
    const DSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03]; // 1.2.840.10040.4.3
    const DSA_SHA2: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03]; // 2.16.840.1.101.3.4.3
    let oid = signature_algorithm_oid(cert_der)?;
    let algorithm = if let Some(last) = oid.strip_prefix(RSA) {
        match last {
            // md5WithRSA, sha1WithRSA, sha256WithRSA
            [0x04] | [0x05] | [0x0b] => &ring::digest::SHA256,
            [0x0c] => &ring::digest::SHA384,
            [0x0d] => &ring::digest::SHA512,
            _ => return None,
        }
    } else if oid == ECDSA_SHA1 || oid == DSA_SHA1 {
        &ring::digest::SHA256
    } else if let Some(last) = oid.strip_prefix(ECDSA_SHA2) {
        match last {
            [0x02] => &ring::digest::SHA256,
            [0x03] => &ring::digest::SHA384,
            [0x04] => &ring::digest::SHA512,
            _ => return None,
        }
    } else if oid.strip_prefix(DSA_SHA2) == Some(&[0x02]) {
        &ring::digest::SHA256
    } else {
        return None;
    };
    Some(ring::digest::digest(algorithm, cert_der).as_ref().to_vec())
}

/// Channel-binding data of an established TLS session, from the server's certificate.
pub fn session_end_point(conn: &rustls::ClientConnection) -> Option<Vec<u8>> {
    conn.peer_certificates().and_then(|certs| certs.first()).and_then(|cert| tls_server_end_point(cert))
}

/// Protocol and cipher suite of an established session, e.g. `TLSv1.3 TLS13_AES_256_GCM_SHA384`.
pub fn describe_session(conn: &rustls::ClientConnection) -> String {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(other) => format!("{other:?}"),
        None => "TLS".to_owned(),
    };
    match conn.negotiated_cipher_suite() {
        Some(suite) => format!("{version} {:?}", suite.suite()),
        None => version,
    }
}

// ---------------------------------------------------------------- tokio-postgres

/// `MakeTlsConnect` for tokio-postgres over rustls, with channel binding.
#[derive(Clone)]
pub struct MakeRustlsConnect {
    config: Arc<ClientConfig>,
}

impl fmt::Debug for MakeRustlsConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeRustlsConnect").finish_non_exhaustive()
    }
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        Ok(RustlsConnect { name: server_name(domain)?, connector: TlsConnector::from(self.config.clone()) })
    }
}

pub struct RustlsConnect {
    name: ServerName<'static>,
    connector: TlsConnector,
}

impl<S> tokio_postgres::tls::TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move { self.connector.connect(self.name, stream).await.map(RustlsStream) })
    }
}

pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> tokio_postgres::tls::TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        match session_end_point(self.0.get_ref().1) {
            Some(hash) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(hash),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_names_round_trip() {
        for mode in SslMode::ALL {
            assert_eq!(SslMode::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(SslMode::parse("verify_full"), None);
        assert_eq!(SslMode::default(), SslMode::Prefer);
        assert!(SslMode::Require.requires_tls() && !SslMode::Prefer.requires_tls());
    }

    #[test]
    fn settings_refuse_inconsistent_ca_file() {
        let e = TlsSettings::new(SslMode::VerifyFull, None).unwrap_err();
        assert!(e.contains("ssl_ca_file"), "{e}");
        let e = TlsSettings::new(SslMode::Require, Some(Path::new("/x.pem"))).unwrap_err();
        assert!(e.contains("verify-ca"), "{e}");
        let e = TlsSettings::new(SslMode::VerifyCa, Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        assert!(TlsSettings::new(SslMode::Disable, None).unwrap().connector().is_none());
        assert!(TlsSettings::new(SslMode::Prefer, None).unwrap().connector().is_some());
    }

    #[test]
    fn ca_file_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("tidewater-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = TlsSettings::new(SslMode::VerifyFull, Some(&empty)).unwrap_err();
        assert!(e.contains("no usable CA certificate"), "{e}");

        let ca = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&ca).unwrap();
        let good = dir.join("ca.pem");
        std::fs::write(&good, cert.pem()).unwrap();
        let s = TlsSettings::new(SslMode::VerifyFull, Some(&good)).unwrap();
        assert_eq!(s.ca_file(), Some(good.as_path()));
        assert!(format!("{s:?}").contains("verify-full"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn self_signed(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["db.example".to_owned()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let p256 = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        let h = tls_server_end_point(&p256).unwrap();
        assert_eq!(h, ring::digest::digest(&ring::digest::SHA256, &p256).as_ref());
        let p384 = self_signed(&rcgen::PKCS_ECDSA_P384_SHA384);
        let h = tls_server_end_point(&p384).unwrap();
        assert_eq!(h, ring::digest::digest(&ring::digest::SHA384, &p384).as_ref());
        // Ed25519 has no hash function: no channel binding.
        assert_eq!(tls_server_end_point(&self_signed(&rcgen::PKCS_ED25519)), None);
        assert_eq!(tls_server_end_point(b""), None);
        assert_eq!(tls_server_end_point(&p256[..p256.len() / 2]), None);
    }

    /// A minimal certificate-shaped DER value with the given signature algorithm OID.
    fn fake_cert(oid: &[u8]) -> Vec<u8> {
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend_from_slice(oid);
        alg.extend_from_slice(&[0x05, 0x00]);
        let mut body = vec![0x30, 0x03, 0x02, 0x01, 0x00]; // tbsCertificate stand-in
        body.push(0x30);
        body.push(alg.len() as u8);
        body.extend_from_slice(&alg);
        body.extend_from_slice(&[0x03, 0x01, 0x00]);
        let mut cert = vec![0x30, 0x81, body.len() as u8]; // long-form length
        cert.extend_from_slice(&body);
        cert
    }

    #[test]
    fn rsa_and_legacy_algorithms_map_to_the_rfc_5929_hash() {
        let rsa = |last: u8| fake_cert(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, last]);
        for (last, len) in [(0x04, 32), (0x05, 32), (0x0b, 32), (0x0c, 48), (0x0d, 64)] {
            assert_eq!(tls_server_end_point(&rsa(last)).map(|h| h.len()), Some(len), "rsa {last:#x}");
        }
        // RSA-PSS carries its hash in parameters: not supported, so no binding.
        assert_eq!(tls_server_end_point(&rsa(0x0a)), None);
        let ecdsa_sha1 = fake_cert(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01]);
        assert_eq!(tls_server_end_point(&ecdsa_sha1).map(|h| h.len()), Some(32));
        let ecdsa_sha512 = fake_cert(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04]);
        assert_eq!(tls_server_end_point(&ecdsa_sha512).map(|h| h.len()), Some(64));
    }

    #[test]
    fn tls_errors_are_found_and_explained() {
        let rustls_err = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io_err = io::Error::new(io::ErrorKind::InvalidData, rustls_err.clone());
        let found = find_rustls_error(&io_err).unwrap();
        assert_eq!(found, &rustls_err);
        let plain = io::Error::new(io::ErrorKind::ConnectionReset, "reset");
        assert!(find_rustls_error(&plain).is_none());
        let settings = TlsSettings::new(SslMode::Require, None).unwrap();
        let text = explain_tls_error(&rustls_err, &settings, "db");
        assert!(text.contains("not signed by a CA in ssl_ca_file"), "{text}");
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        assert!(explain_tls_error(&name, &settings, "db").contains("verify-ca"));
    }
}
