//! Replication-mode PostgreSQL connection, speaking the frontend/backend
//! protocol by hand over TCP, optionally inside TLS.
//!
//! tokio-postgres cannot open a `replication=database` session, and the
//! walsender only understands the simple query protocol, so this module does
//! its own framing: it negotiates TLS per `sslmode` (SSLRequest, then a rustls
//! handshake), authenticates (trust, cleartext, md5, SCRAM-SHA-256, and
//! SCRAM-SHA-256-PLUS with `tls-server-end-point` channel binding over TLS),
//! runs replication commands such as `IDENTIFY_SYSTEM` or
//! `CREATE_REPLICATION_SLOT` through [`ReplicationConnection::simple_query`],
//! and finally switches into COPY BOTH mode with
//! [`ReplicationConnection::start_copy_both`], which splits the socket into a
//! read half yielding WAL ([`ReplicationStream`]) and a write half for standby
//! status updates ([`ReplicationWriter`]) so each can live in its own task.
//!
//! After any [`ReplicationError::Protocol`] the connection is in an unknown
//! state and must be dropped.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::{describe_session, explain_tls_error, find_rustls_error, session_end_point, SslMode, TlsSettings};

/// Initial size of the receive buffer. WAL arrives in bursts of many small
/// CopyData frames; a big buffer lets one `read` syscall pick up hundreds of
/// them.
const READ_BUF_CAPACITY: usize = 256 * 1024;
/// Below this much free space we grow the buffer before reading, so that a
/// read never degenerates into a tiny syscall.
const MIN_READ_SPARE: usize = 16 * 1024;
/// Microseconds from the Unix epoch to the PostgreSQL epoch (2000-01-01 UTC),
/// which every replication-protocol timestamp is relative to.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
/// XLogData header: type byte + start LSN + end LSN + send time.
const XLOG_DATA_HEADER_LEN: usize = 1 + 8 + 8 + 8;
/// Primary keepalive: type byte + end LSN + send time + reply flag.
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;

/// Where and as whom to open the replication connection.
#[derive(Clone)]
pub struct ReplicationConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub application_name: String,
    /// Bounds TCP connect plus the whole startup/authentication exchange.
    /// `Duration::ZERO` disables the limit (as libpq's `connect_timeout=0`).
    pub connect_timeout: Duration,
    /// sslmode and CA roots (the same as the endpoint's ordinary connections).
    pub tls: TlsSettings,
}

// Hand-written so that the password never ends up in logs.
impl fmt::Debug for ReplicationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// Connection refused, lost, timed out or closed early: worth retrying.
    #[error("replication connection I/O error: {0}")]
    Io(#[from] io::Error),
    /// ErrorResponse from the server; `code` is the SQLSTATE.
    #[error(
        "server error {code}: {message}{}{}",
        suffix("detail", .detail),
        suffix("hint", .hint)
    )]
    Server { code: String, message: String, detail: Option<String>, hint: Option<String> },
    /// Wrong credentials, missing password or unsupported method: retrying
    /// will not help.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server sent something this client does not understand.
    #[error("replication protocol violation: {0}")]
    Protocol(String),
    /// TLS could not be set up as `sslmode` demands (server refuses TLS, certificate
    /// not trusted, handshake failure): a configuration problem, not worth retrying.
    #[error("{0}")]
    Tls(String),
}

fn suffix(label: &str, value: &Option<String>) -> String {
    match value {
        Some(v) => format!(" ({label}: {v})"),
        None => String::new(),
    }
}

impl ReplicationError {
    /// SQLSTATE of a server-reported error, if this is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Fields of an ErrorResponse/NoticeResponse that we care about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ServerNotice {
    severity: String,
    code: String,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl From<ServerNotice> for ReplicationError {
    fn from(n: ServerNotice) -> Self {
        ReplicationError::Server { code: n.code, message: n.message, detail: n.detail, hint: n.hint }
    }
}

impl ServerNotice {
    /// Class 28 is "invalid authorization specification": bad password, no
    /// pg_hba.conf entry, missing REPLICATION privilege. None of it heals by
    /// retrying, so it becomes the fatal `Auth` variant.
    fn into_connect_error(self) -> ReplicationError {
        if self.code.starts_with("28") {
            ReplicationError::Auth(format!(
                "{} (SQLSTATE {}){}{}",
                self.message,
                self.code,
                suffix("detail", &self.detail),
                suffix("hint", &self.hint)
            ))
        } else {
            self.into()
        }
    }
}

/// Cursor over a backend message body; every read is bounds-checked and
/// reports which message it was decoding.
struct BodyReader<'a> {
    buf: &'a [u8],
    tag: u8,
}

impl<'a> BodyReader<'a> {
    fn new(buf: &'a [u8], tag: u8) -> Self {
        BodyReader { buf, tag }
    }

    fn short(&self, what: &str) -> ReplicationError {
        ReplicationError::Protocol(format!(
            "truncated {} message: expected {what}, {} bytes left",
            describe_tag(self.tag),
            self.buf.len()
        ))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ReplicationError> {
        if self.buf.len() < n {
            return Err(self.short(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8, ReplicationError> {
        Ok(self.take(1, what)?[0])
    }

    fn i16(&mut self, what: &str) -> Result<i16, ReplicationError> {
        let mut b = self.take(2, what)?;
        Ok(b.get_i16())
    }

    fn i32(&mut self, what: &str) -> Result<i32, ReplicationError> {
        let mut b = self.take(4, what)?;
        Ok(b.get_i32())
    }

    fn cstr(&mut self, what: &str) -> Result<&'a str, ReplicationError> {
        let Some(nul) = self.buf.iter().position(|&b| b == 0) else {
            return Err(self.short(what));
        };
        let raw = self.take(nul + 1, what)?;
        std::str::from_utf8(&raw[..nul]).map_err(|_| {
            ReplicationError::Protocol(format!("{what} in {} message is not valid UTF-8", describe_tag(self.tag)))
        })
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

fn describe_tag(tag: u8) -> String {
    let name = match tag {
        b'R' => "Authentication",
        b'S' => "ParameterStatus",
        b'K' => "BackendKeyData",
        b'Z' => "ReadyForQuery",
        b'T' => "RowDescription",
        b'D' => "DataRow",
        b'C' => "CommandComplete",
        b'E' => "ErrorResponse",
        b'N' => "NoticeResponse",
        b'W' => "CopyBothResponse",
        b'H' => "CopyOutResponse",
        b'G' => "CopyInResponse",
        b'd' => "CopyData",
        b'c' => "CopyDone",
        b'I' => "EmptyQueryResponse",
        b'v' => "NegotiateProtocolVersion",
        b'A' => "NotificationResponse",
        _ => "unknown",
    };
    if tag.is_ascii_graphic() {
        format!("{name} ('{}')", tag as char)
    } else {
        format!("{name} (0x{tag:02x})")
    }
}

/// Hex dump of the first bytes of a body, for protocol error messages.
fn preview(body: &[u8]) -> String {
    const MAX: usize = 32;
    let mut s: String = body.iter().take(MAX).map(|b| format!("{b:02x}")).collect();
    if body.len() > MAX {
        s.push_str("...");
    }
    s
}

fn unexpected(tag: u8, body: &[u8], context: &str) -> ReplicationError {
    ReplicationError::Protocol(format!(
        "unexpected {} message {context} (body {} bytes: {})",
        describe_tag(tag),
        body.len(),
        preview(body)
    ))
}

fn parse_notice(tag: u8, body: &[u8]) -> Result<ServerNotice, ReplicationError> {
    let mut r = BodyReader::new(body, tag);
    let mut n = ServerNotice::default();
    let mut localized_severity = String::new();
    loop {
        let field = r.u8("field type")?;
        if field == 0 {
            break;
        }
        let value = r.cstr("field value")?;
        match field {
            b'S' => localized_severity = value.to_owned(),
            // 'V' is never translated, so prefer it when the server has it.
            b'V' => n.severity = value.to_owned(),
            b'C' => n.code = value.to_owned(),
            b'M' => n.message = value.to_owned(),
            b'D' => n.detail = Some(value.to_owned()),
            b'H' => n.hint = Some(value.to_owned()),
            _ => {}
        }
    }
    if n.severity.is_empty() {
        n.severity = localized_severity;
    }
    Ok(n)
}

fn log_notice(n: &ServerNotice) {
    tracing::info!(
        severity = %n.severity,
        code = %n.code,
        detail = n.detail.as_deref(),
        hint = n.hint.as_deref(),
        "postgres replication connection: {}",
        n.message
    );
}

fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, ReplicationError> {
    let mut r = BodyReader::new(body, b'D');
    let ncols = r.i16("column count")?;
    let ncols =
        usize::try_from(ncols).map_err(|_| ReplicationError::Protocol(format!("DataRow with {ncols} columns")))?;
    let mut row = Vec::with_capacity(ncols);
    for _ in 0..ncols {
        let len = r.i32("column length")?;
        if len < 0 {
            row.push(None);
            continue;
        }
        let raw = r.take(len as usize, "column value")?;
        let text = std::str::from_utf8(raw)
            .map_err(|_| ReplicationError::Protocol("DataRow column is not valid UTF-8".to_owned()))?;
        row.push(Some(text.to_owned()));
    }
    Ok(row)
}

/// One backend message: type byte plus body (length prefix stripped).
struct Frame {
    tag: u8,
    body: Bytes,
}

/// Length-prefixed message framing on top of a growable receive buffer.
///
/// Bodies are split off the buffer and frozen, so CopyData payloads reach the
/// caller without further copies; the buffer reallocates in large chunks when
/// earlier frames are still referenced.
struct FrameReader<R> {
    rd: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(rd: R) -> Self {
        FrameReader { rd, buf: BytesMut::with_capacity(READ_BUF_CAPACITY) }
    }

    async fn read_frame(&mut self) -> Result<Frame, ReplicationError> {
        loop {
            if self.buf.len() >= 5 {
                let tag = self.buf[0];
                let len = (&self.buf[1..5]).get_u32();
                if !(4..=i32::MAX as u32).contains(&len) {
                    return Err(ReplicationError::Protocol(format!(
                        "invalid length {len} in header of {} message",
                        describe_tag(tag)
                    )));
                }
                let total = 1 + len as usize;
                if self.buf.len() >= total {
                    let mut frame = self.buf.split_to(total);
                    frame.advance(5);
                    return Ok(Frame { tag, body: frame.freeze() });
                }
                self.buf.reserve(total - self.buf.len());
            }
            if self.buf.capacity() - self.buf.len() < MIN_READ_SPARE {
                self.buf.reserve(READ_BUF_CAPACITY);
            }
            let n = self.rd.read_buf(&mut self.buf).await?;
            if n == 0 {
                let what = if self.buf.is_empty() {
                    "server closed the connection".to_owned()
                } else {
                    format!(
                        "server closed the connection in the middle of a message ({} bytes pending)",
                        self.buf.len()
                    )
                };
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, what).into());
            }
        }
    }
}

fn encode_err(what: &str, e: io::Error) -> ReplicationError {
    // The frontend encoders only fail on interior NUL bytes or absurd sizes,
    // i.e. bad input rather than a network problem, so this is not `Io`.
    ReplicationError::Protocol(format!("cannot encode {what}: {e}"))
}

/// Read half of the socket: the TCP read half, or one half of a split TLS stream.
type ReadHalf = Box<dyn AsyncRead + Send + Sync + Unpin>;

/// Write half of the socket. Dropping it shuts down the sending side of the TCP
/// connection, so the walsender ends the session even while the read half lives on.
/// A plain TCP write half does that by itself; a half of a split TLS stream does not,
/// so for TLS a duplicate of the socket is kept to shut it down on drop.
struct WriteHalf {
    inner: Box<dyn AsyncWrite + Send + Sync + Unpin>,
    shutdown_on_drop: Option<std::net::TcpStream>,
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        if let Some(socket) = &self.shutdown_on_drop {
            let _ = socket.shutdown(std::net::Shutdown::Write);
        }
    }
}

/// A duplicate handle of the socket (same connection), for [`WriteHalf`]'s drop.
#[cfg(unix)]
fn duplicate_socket(stream: &TcpStream) -> Option<std::net::TcpStream> {
    use std::os::fd::AsFd;
    stream.as_fd().try_clone_to_owned().ok().map(std::net::TcpStream::from)
}

#[cfg(not(unix))]
fn duplicate_socket(_stream: &TcpStream) -> Option<std::net::TcpStream> {
    None
}

/// A replication-mode connection that has finished startup and is idle.
pub struct ReplicationConnection {
    reader: FrameReader<ReadHalf>,
    writer: WriteHalf,
    write_buf: BytesMut,
    parameters: HashMap<String, String>,
    backend_key: Option<(i32, i32)>,
    /// Protocol and cipher when the session is encrypted.
    tls: Option<String>,
    /// `tls-server-end-point` data of the session, when TLS is on and the certificate's
    /// signature algorithm defines one.
    channel_binding: Option<Vec<u8>>,
    /// How the server authenticated us.
    auth_method: &'static str,
}

impl fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("backend_pid", &self.backend_key.map(|(pid, _)| pid))
            .field("tls", &self.tls)
            .field("auth_method", &self.auth_method)
            .finish_non_exhaustive()
    }
}

impl ReplicationConnection {
    pub async fn connect(cfg: &ReplicationConfig) -> Result<Self, ReplicationError> {
        if cfg.connect_timeout.is_zero() {
            return Self::connect_inner(cfg).await;
        }
        match tokio::time::timeout(cfg.connect_timeout, Self::connect_inner(cfg)).await {
            Ok(res) => res,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {}:{} timed out after {:?}", cfg.host, cfg.port, cfg.connect_timeout),
            )
            .into()),
        }
    }

    async fn connect_inner(cfg: &ReplicationConfig) -> Result<Self, ReplicationError> {
        let stream = TcpStream::connect((cfg.host.as_str(), cfg.port))
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("connecting to {}:{}: {e}", cfg.host, cfg.port)))?;
        // Status updates are tiny and latency-sensitive; Nagle would hold
        // them back behind the previous unacknowledged segment.
        stream.set_nodelay(true)?;
        let mut conn = Self::negotiate_tls(cfg, stream).await?;

        // Pinning the session settings makes text output (timestamps,
        // intervals, floats) independent of server and role defaults.
        let params = [
            ("user", cfg.user.as_str()),
            ("database", cfg.database.as_str()),
            ("application_name", cfg.application_name.as_str()),
            ("replication", "database"),
            ("client_encoding", "UTF8"),
            ("TimeZone", "UTC"),
            ("DateStyle", "ISO"),
            ("IntervalStyle", "iso_8601"),
            ("extra_float_digits", "3"),
        ];
        frontend::startup_message(params, &mut conn.write_buf).map_err(|e| encode_err("startup message", e))?;
        conn.flush_write_buf().await?;
        conn.authenticate(cfg).await?;
        Ok(conn)
    }

    /// SSLRequest and TLS handshake as `sslmode` says; returns the connection, ready
    /// for the startup message, over TLS or plaintext.
    async fn negotiate_tls(cfg: &ReplicationConfig, mut stream: TcpStream) -> Result<Self, ReplicationError> {
        let mode = cfg.tls.mode();
        let plain = |stream: TcpStream| {
            let (rd, wr) = stream.into_split();
            Self::new(Box::new(rd), WriteHalf { inner: Box::new(wr), shutdown_on_drop: None }, None, None)
        };
        if mode == SslMode::Disable {
            return Ok(plain(stream));
        }
        let mut request = BytesMut::with_capacity(8);
        frontend::ssl_request(&mut request);
        stream.write_all(&request).await?;
        // Exactly one byte, read unbuffered: anything the server sent after it must go
        // through the TLS layer, never be taken as plaintext protocol.
        let answer = stream.read_u8().await.map_err(|e| {
            io::Error::new(e.kind(), format!("reading the answer to SSLRequest from {}:{}: {e}", cfg.host, cfg.port))
        })?;
        match answer {
            b'S' => {
                let dup = duplicate_socket(&stream);
                // rustls reads the socket 4 KiB at a time; a buffer below it turns that
                // into one large read per burst, as for plaintext.
                let buffered = tokio::io::BufReader::with_capacity(READ_BUF_CAPACITY, stream);
                let tls = cfg.tls.handshake(&cfg.host, buffered).await.map_err(|e| match find_rustls_error(&e) {
                    Some(tls_err) => ReplicationError::Tls(format!(
                        "replication connection to {}:{}: {}",
                        cfg.host,
                        cfg.port,
                        explain_tls_error(tls_err, &cfg.tls, &cfg.host)
                    )),
                    None if e.kind() == io::ErrorKind::InvalidInput => ReplicationError::Tls(e.to_string()),
                    None => {
                        io::Error::new(e.kind(), format!("TLS handshake with {}:{}: {e}", cfg.host, cfg.port)).into()
                    }
                })?;
                let session = tls.get_ref().1;
                let description = describe_session(session);
                let binding = session_end_point(session);
                let (rd, wr) = tokio::io::split(tls);
                Ok(Self::new(
                    Box::new(rd),
                    WriteHalf { inner: Box::new(wr), shutdown_on_drop: dup },
                    Some(description),
                    binding,
                ))
            }
            b'N' if !mode.requires_tls() => {
                tracing::debug!(
                    host = %cfg.host,
                    port = cfg.port,
                    "server refused TLS; sslmode = prefer continues in plaintext"
                );
                Ok(plain(stream))
            }
            b'N' => Err(ReplicationError::Tls(format!(
                "replication connection to {}:{}: the server does not accept TLS connections but \
                 sslmode = \"{mode}\" requires TLS; enable ssl on the server, or set sslmode = \"prefer\" \
                 (or \"disable\") to allow plaintext",
                cfg.host, cfg.port
            ))),
            other => Err(ReplicationError::Protocol(format!(
                "unexpected answer 0x{other:02x} to SSLRequest (expected 'S' or 'N')"
            ))),
        }
    }

    fn new(
        reader: ReadHalf,
        writer: WriteHalf,
        tls: Option<String>,
        channel_binding: Option<Vec<u8>>,
    ) -> ReplicationConnection {
        ReplicationConnection {
            reader: FrameReader::new(reader),
            writer,
            write_buf: BytesMut::with_capacity(1024),
            parameters: HashMap::new(),
            backend_key: None,
            tls,
            channel_binding,
            auth_method: "trust",
        }
    }

    /// Protocol and cipher suite when the session is encrypted (e.g.
    /// `TLSv1.3 TLS13_AES_256_GCM_SHA384`), `None` for plaintext.
    pub fn tls(&self) -> Option<&str> {
        self.tls.as_deref()
    }

    /// How the server authenticated this session: `trust`, `password`, `md5`,
    /// `SCRAM-SHA-256` or `SCRAM-SHA-256-PLUS` (with channel binding).
    pub fn auth_method(&self) -> &'static str {
        self.auth_method
    }

    async fn flush_write_buf(&mut self) -> Result<(), ReplicationError> {
        self.writer.inner.write_all(&self.write_buf).await?;
        self.writer.inner.flush().await?;
        self.write_buf.clear();
        Ok(())
    }

    fn password<'a>(cfg: &'a ReplicationConfig, method: &str) -> Result<&'a [u8], ReplicationError> {
        cfg.password.as_deref().map(str::as_bytes).ok_or_else(|| {
            ReplicationError::Auth(format!(
                "server requested {method} authentication for user \"{}\" but no password is configured",
                cfg.user
            ))
        })
    }

    /// Runs the authentication exchange and consumes the post-auth
    /// ParameterStatus/BackendKeyData burst up to the first ReadyForQuery.
    async fn authenticate(&mut self, cfg: &ReplicationConfig) -> Result<(), ReplicationError> {
        let mut scram: Option<ScramSha256> = None;
        let mut scram_verified = false;
        let mut authenticated = false;
        loop {
            let frame = self.reader.read_frame().await?;
            match frame.tag {
                b'R' => {
                    let mut r = BodyReader::new(&frame.body, b'R');
                    let code = r.i32("authentication request code")?;
                    match code {
                        0 => {
                            // A server that skips SASLFinal would never have
                            // proven it knows the password; refuse it.
                            if scram.is_some() && !scram_verified {
                                return Err(ReplicationError::Auth(
                                    "server reported success before completing SCRAM authentication".to_owned(),
                                ));
                            }
                            authenticated = true;
                        }
                        3 => {
                            let pw = Self::password(cfg, "cleartext password")?;
                            frontend::password_message(pw, &mut self.write_buf)
                                .map_err(|e| encode_err("password message", e))?;
                            self.flush_write_buf().await?;
                            self.auth_method = "password";
                        }
                        5 => {
                            let pw = Self::password(cfg, "md5 password")?;
                            let salt = r.take(4, "md5 salt")?;
                            let salt = [salt[0], salt[1], salt[2], salt[3]];
                            let hash = md5_hash(cfg.user.as_bytes(), pw, salt);
                            frontend::password_message(hash.as_bytes(), &mut self.write_buf)
                                .map_err(|e| encode_err("password message", e))?;
                            self.flush_write_buf().await?;
                            self.auth_method = "md5";
                        }
                        10 => {
                            let mut mechanisms = Vec::new();
                            loop {
                                let m = r.cstr("SASL mechanism")?;
                                if m.is_empty() {
                                    break;
                                }
                                mechanisms.push(m);
                            }
                            let (mechanism, binding) =
                                choose_scram(&mechanisms, self.tls.is_some(), self.channel_binding.as_deref())?;
                            let pw = Self::password(cfg, mechanism)?;
                            let s = ScramSha256::new(pw, binding);
                            frontend::sasl_initial_response(mechanism, s.message(), &mut self.write_buf)
                                .map_err(|e| encode_err("SASL initial response", e))?;
                            self.flush_write_buf().await?;
                            self.auth_method = mechanism;
                            scram = Some(s);
                        }
                        11 => {
                            let Some(s) = scram.as_mut() else {
                                return Err(unexpected(b'R', &frame.body, "(SASLContinue before SASL start)"));
                            };
                            s.update(r.rest())
                                .map_err(|e| ReplicationError::Auth(format!("SCRAM exchange failed: {e}")))?;
                            frontend::sasl_response(s.message(), &mut self.write_buf)
                                .map_err(|e| encode_err("SASL response", e))?;
                            self.flush_write_buf().await?;
                        }
                        12 => {
                            let Some(s) = scram.as_mut() else {
                                return Err(unexpected(b'R', &frame.body, "(SASLFinal before SASL start)"));
                            };
                            s.finish(r.rest()).map_err(|e| {
                                ReplicationError::Auth(format!("SCRAM server signature verification failed: {e}"))
                            })?;
                            scram_verified = true;
                        }
                        other => {
                            let method = match other {
                                2 => "Kerberos V5",
                                6 => "SCM credentials",
                                7 | 8 => "GSSAPI",
                                9 => "SSPI",
                                _ => "unknown",
                            };
                            return Err(ReplicationError::Auth(format!(
                                "server requested unsupported authentication method {method} (code {other})"
                            )));
                        }
                    }
                }
                b'E' => return Err(parse_notice(b'E', &frame.body)?.into_connect_error()),
                b'N' => log_notice(&parse_notice(b'N', &frame.body)?),
                b'S' => self.record_parameter(&frame.body)?,
                b'K' => {
                    let mut r = BodyReader::new(&frame.body, b'K');
                    let pid = r.i32("process id")?;
                    let secret = r.i32("secret key")?;
                    self.backend_key = Some((pid, secret));
                }
                // Only sent when the server speaks an older minor protocol
                // version; 3.0 has everything we use.
                b'v' => tracing::debug!("server sent NegotiateProtocolVersion"),
                b'Z' if authenticated => return Ok(()),
                tag => return Err(unexpected(tag, &frame.body, "during connection startup")),
            }
        }
    }

    fn record_parameter(&mut self, body: &[u8]) -> Result<(), ReplicationError> {
        let mut r = BodyReader::new(body, b'S');
        let name = r.cstr("parameter name")?;
        let value = r.cstr("parameter value")?;
        self.parameters.insert(name.to_owned(), value.to_owned());
        Ok(())
    }

    /// A server parameter reported via ParameterStatus (e.g.
    /// `server_version`, `integer_datetimes`).
    pub fn parameter_status(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// Backend process id, e.g. for `pg_terminate_backend` or logging.
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_key.map(|(pid, _)| pid)
    }

    async fn send_query(&mut self, sql: &str) -> Result<(), ReplicationError> {
        frontend::query(sql, &mut self.write_buf).map_err(|e| encode_err("query", e))?;
        self.flush_write_buf().await
    }

    /// Simple query; returns all rows of all result sets as text (`None` =
    /// NULL). On ErrorResponse the remaining messages are drained up to
    /// ReadyForQuery so the connection stays usable, then the error is
    /// returned.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        self.send_query(sql).await?;
        let mut rows = Vec::new();
        let mut error: Option<ServerNotice> = None;
        loop {
            let frame = match self.reader.read_frame().await {
                Ok(f) => f,
                // A FATAL error is followed by the server hanging up; the
                // error says far more than the EOF.
                Err(e) => return Err(error.map_or(e, Into::into)),
            };
            match frame.tag {
                b'T' | b'C' | b'I' => {}
                b'D' => {
                    if error.is_none() {
                        rows.push(parse_data_row(&frame.body)?);
                    }
                }
                b'E' => {
                    let n = parse_notice(b'E', &frame.body)?;
                    error.get_or_insert(n);
                }
                b'N' => log_notice(&parse_notice(b'N', &frame.body)?),
                b'S' => self.record_parameter(&frame.body)?,
                b'Z' => {
                    return match error {
                        Some(n) => Err(n.into()),
                        None => Ok(rows),
                    }
                }
                b'W' | b'H' | b'G' => {
                    return Err(unexpected(
                        frame.tag,
                        &frame.body,
                        "in simple_query: the command started COPY; use start_copy_both",
                    ))
                }
                tag => return Err(unexpected(tag, &frame.body, "in response to simple query")),
            }
        }
    }

    /// Sends the query (e.g. `START_REPLICATION ...`), expects
    /// CopyBothResponse, and returns the split halves for streaming.
    pub async fn start_copy_both(
        mut self,
        sql: &str,
    ) -> Result<(ReplicationStream, ReplicationWriter), ReplicationError> {
        self.send_query(sql).await?;
        let mut error: Option<ServerNotice> = None;
        loop {
            let frame = match self.reader.read_frame().await {
                Ok(f) => f,
                Err(e) => return Err(error.map_or(e, Into::into)),
            };
            match frame.tag {
                b'W' if error.is_none() => break,
                b'E' => {
                    let n = parse_notice(b'E', &frame.body)?;
                    error.get_or_insert(n);
                }
                b'N' => log_notice(&parse_notice(b'N', &frame.body)?),
                b'S' => self.record_parameter(&frame.body)?,
                b'Z' => {
                    return Err(match error {
                        Some(n) => n.into(),
                        None => ReplicationError::Protocol(format!(
                            "command completed without entering COPY BOTH mode: {sql}"
                        )),
                    })
                }
                tag => return Err(unexpected(tag, &frame.body, "while waiting for CopyBothResponse")),
            }
        }
        let ReplicationConnection { reader, writer, .. } = self;
        Ok((ReplicationStream { reader, done: false }, ReplicationWriter { writer, buf: BytesMut::with_capacity(64) }))
    }

    /// Politely ends the session with Terminate so the server does not log
    /// an unexpected EOF.
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        frontend::terminate(&mut self.write_buf);
        self.flush_write_buf().await?;
        self.writer.inner.shutdown().await?;
        Ok(())
    }
}

/// Picks the SASL mechanism and channel-binding flag. Over TLS, SCRAM-SHA-256-PLUS with
/// `tls-server-end-point` when the server offers it; if it does not, SCRAM-SHA-256 with
/// the flag saying "client supports binding, server did not offer it", so a server whose
/// offer was stripped by a man in the middle refuses the session. Without TLS, or with a
/// certificate whose signature algorithm defines no binding hash, no binding.
fn choose_scram(
    mechanisms: &[&str],
    tls: bool,
    end_point: Option<&[u8]>,
) -> Result<(&'static str, ChannelBinding), ReplicationError> {
    if let (true, Some(hash)) = (tls, end_point) {
        if mechanisms.contains(&SCRAM_SHA_256_PLUS) {
            return Ok((SCRAM_SHA_256_PLUS, ChannelBinding::tls_server_end_point(hash.to_vec())));
        }
    }
    if !mechanisms.contains(&SCRAM_SHA_256) {
        return Err(ReplicationError::Auth(format!(
            "server offered SASL mechanisms {mechanisms:?}, but only {SCRAM_SHA_256} and {SCRAM_SHA_256_PLUS} \
             are supported{}",
            if tls { "" } else { " (and the -PLUS variant only over TLS)" }
        )));
    }
    let binding = match (tls, end_point) {
        (true, Some(_)) => ChannelBinding::unrequested(),
        _ => ChannelBinding::unsupported(),
    };
    Ok((SCRAM_SHA_256, binding))
}

/// A message received inside the COPY BOTH stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    XLogData {
        wal_start: u64,
        wal_end: u64,
        server_time_micros: i64,
        /// Zero-copy slice of the receive buffer.
        data: Bytes,
    },
    Keepalive {
        wal_end: u64,
        server_time_micros: i64,
        reply_requested: bool,
    },
}

fn parse_copy_data(body: Bytes) -> Result<ReplicationMessage, ReplicationError> {
    match body.first() {
        Some(b'w') if body.len() >= XLOG_DATA_HEADER_LEN => {
            let mut h = &body[1..XLOG_DATA_HEADER_LEN];
            let wal_start = h.get_u64();
            let wal_end = h.get_u64();
            let server_time_micros = h.get_i64();
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                server_time_micros,
                data: body.slice(XLOG_DATA_HEADER_LEN..),
            })
        }
        Some(b'k') if body.len() >= KEEPALIVE_LEN => {
            let mut h = &body[1..KEEPALIVE_LEN];
            let wal_end = h.get_u64();
            let server_time_micros = h.get_i64();
            let reply_requested = h.get_u8() != 0;
            Ok(ReplicationMessage::Keepalive { wal_end, server_time_micros, reply_requested })
        }
        Some(b'w') | Some(b'k') => Err(ReplicationError::Protocol(format!(
            "truncated replication CopyData message ({} bytes: {})",
            body.len(),
            preview(&body)
        ))),
        _ => Err(ReplicationError::Protocol(format!(
            "unknown replication CopyData message ({} bytes: {})",
            body.len(),
            preview(&body)
        ))),
    }
}

/// Read half of a connection in COPY BOTH mode.
pub struct ReplicationStream {
    reader: FrameReader<ReadHalf>,
    done: bool,
}

impl fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationStream").field("done", &self.done).finish_non_exhaustive()
    }
}

impl ReplicationStream {
    /// Next replication message. `Ok(None)` on CopyDone (and on every call
    /// after it). EOF without CopyDone is `ReplicationError::Io` with kind
    /// `UnexpectedEof`; an ErrorResponse (e.g. the server shutting down) is
    /// `ReplicationError::Server`.
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>, ReplicationError> {
        next_message(&mut self.reader, &mut self.done).await
    }
}

async fn next_message<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    done: &mut bool,
) -> Result<Option<ReplicationMessage>, ReplicationError> {
    if *done {
        return Ok(None);
    }
    loop {
        let frame = reader.read_frame().await?;
        match frame.tag {
            b'd' => return parse_copy_data(frame.body).map(Some),
            b'c' => {
                *done = true;
                return Ok(None);
            }
            b'E' => return Err(parse_notice(b'E', &frame.body)?.into()),
            b'N' => log_notice(&parse_notice(b'N', &frame.body)?),
            // ParameterStatus can arrive at any time (e.g. after a reload).
            b'S' => {}
            tag => return Err(unexpected(tag, &frame.body, "in COPY BOTH stream")),
        }
    }
}

/// Write half of a connection in COPY BOTH mode. Dropping it shuts down the
/// sending side of the socket, which makes the walsender end the session.
pub struct ReplicationWriter {
    writer: WriteHalf,
    buf: BytesMut,
}

impl fmt::Debug for ReplicationWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationWriter").finish_non_exhaustive()
    }
}

fn encode_status(
    buf: &mut BytesMut,
    written: u64,
    flushed: u64,
    applied: u64,
    client_time_micros: i64,
    reply_requested: bool,
) {
    const PAYLOAD: usize = 1 + 8 + 8 + 8 + 8 + 1;
    buf.put_u8(b'd');
    buf.put_u32((4 + PAYLOAD) as u32);
    buf.put_u8(b'r');
    buf.put_u64(written);
    buf.put_u64(flushed);
    buf.put_u64(applied);
    buf.put_i64(client_time_micros);
    buf.put_u8(u8::from(reply_requested));
}

impl ReplicationWriter {
    /// Standby status update ('r'): write, flush, apply LSNs, current client
    /// time (microseconds since 2000-01-01), reply flag.
    pub async fn send_status(
        &mut self,
        written: u64,
        flushed: u64,
        applied: u64,
        reply_requested: bool,
    ) -> Result<(), ReplicationError> {
        self.buf.clear();
        encode_status(&mut self.buf, written, flushed, applied, pg_now_micros(), reply_requested);
        self.writer.inner.write_all(&self.buf).await?;
        self.writer.inner.flush().await?;
        Ok(())
    }

    /// Sends CopyDone, asking the server to end streaming; the read half will
    /// then see `Ok(None)` once the server acknowledges.
    pub async fn send_copy_done(&mut self) -> Result<(), ReplicationError> {
        self.buf.clear();
        frontend::copy_done(&mut self.buf);
        self.writer.inner.write_all(&self.buf).await?;
        self.writer.inner.flush().await?;
        Ok(())
    }
}

/// Current time as microseconds since the PostgreSQL epoch (2000-01-01 UTC),
/// the unit of every replication-protocol timestamp.
pub fn pg_now_micros() -> i64 {
    let unix_micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    unix_micros.saturating_sub(PG_EPOCH_UNIX_MICROS)
}

/// Formats an LSN the way PostgreSQL prints `pg_lsn`, e.g. `16/B374D848`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses the `pg_lsn` text form (`XXXXXXXX/XXXXXXXX`, 1-8 hex digits per
/// half, either case).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    let half = |p: &str| {
        // from_str_radix would also accept a leading '+', which pg_lsn does not.
        if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(p, 16).ok()
    };
    Some((u64::from(half(hi)?) << 32) | u64::from(half(lo)?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::net::TcpListener;

    #[test]
    fn lsn_roundtrip_and_format() {
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(format_lsn(0), "0/0");
        assert_eq!(format_lsn(u64::MAX), "FFFFFFFF/FFFFFFFF");
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("16/b374d848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
        for lsn in [0, 1, 0xFFFF_FFFF, 0x1_0000_0000, u64::MAX, 0x0123_4567_89AB_CDEF] {
            assert_eq!(parse_lsn(&format_lsn(lsn)), Some(lsn));
        }
        for bad in ["", "/", "1/", "/1", "1", "+1/1", "1/-1", "123456789/0", "g/0", "1/2/3", " 1/2"] {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parses_error_response_fields() {
        let mut body = Vec::new();
        for (f, v) in [
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "28P01"),
            (b'M', "password authentication failed for user \"x\""),
            (b'D', "some detail"),
            (b'H', "some hint"),
            (b'R', "auth_failed"),
        ] {
            body.push(f);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let n = parse_notice(b'E', &body).unwrap();
        assert_eq!(n.severity, "FATAL");
        assert_eq!(n.code, "28P01");
        assert_eq!(n.detail.as_deref(), Some("some detail"));
        assert_eq!(n.hint.as_deref(), Some("some hint"));
        let err = n.clone().into_connect_error();
        assert!(
            matches!(err, ReplicationError::Auth(ref m) if m.contains("password authentication failed") && m.contains("28P01"))
        );
        let err: ReplicationError = n.into();
        assert_eq!(err.sqlstate(), Some("28P01"));
        let text = err.to_string();
        assert!(text.contains("some detail") && text.contains("some hint"), "{text}");

        // Truncated: missing the final NUL terminator of a value.
        assert!(matches!(parse_notice(b'E', b"Cabc"), Err(ReplicationError::Protocol(_))));
    }

    #[test]
    fn parses_copy_data_messages() {
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(10);
        w.put_u64(20);
        w.put_i64(30);
        w.put_slice(b"payload");
        assert_eq!(
            parse_copy_data(w.freeze()).unwrap(),
            ReplicationMessage::XLogData {
                wal_start: 10,
                wal_end: 20,
                server_time_micros: 30,
                data: Bytes::from_static(b"payload"),
            }
        );
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(99);
        k.put_i64(-5);
        k.put_u8(1);
        assert_eq!(
            parse_copy_data(k.freeze()).unwrap(),
            ReplicationMessage::Keepalive { wal_end: 99, server_time_micros: -5, reply_requested: true }
        );
        for bad in [&b""[..], b"w123", b"k", b"x12345678"] {
            assert!(matches!(parse_copy_data(Bytes::copy_from_slice(bad)), Err(ReplicationError::Protocol(_))));
        }
    }

    #[test]
    fn status_update_layout() {
        let mut buf = BytesMut::new();
        encode_status(&mut buf, 1, 2, 3, 4, true);
        assert_eq!(buf.len(), 1 + 4 + 34);
        assert_eq!(buf[0], b'd');
        assert_eq!(&buf[1..5], &38u32.to_be_bytes());
        assert_eq!(buf[5], b'r');
        assert_eq!(&buf[6..14], &1u64.to_be_bytes());
        assert_eq!(&buf[14..22], &2u64.to_be_bytes());
        assert_eq!(&buf[22..30], &3u64.to_be_bytes());
        assert_eq!(&buf[30..38], &4i64.to_be_bytes());
        assert_eq!(buf[38], 1);
    }

    #[test]
    fn pg_clock_is_after_2020() {
        // 2020-01-01 is 20 years after the PostgreSQL epoch.
        assert!(pg_now_micros() > 20 * 365 * 86_400 * 1_000_000);
    }

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[tokio::test]
    async fn frame_reader_handles_split_and_large_frames() {
        let big = vec![7u8; 3 * READ_BUF_CAPACITY];
        let mut wire = Vec::new();
        for i in 0..1000u32 {
            wire.extend(frame(b'd', &i.to_be_bytes()));
        }
        wire.extend(frame(b'd', &big));
        wire.extend(frame(b'c', b""));
        let (mut tx, rx) = tokio::io::duplex(1000);
        let writer = tokio::spawn(async move {
            // Odd chunk sizes so headers straddle reads.
            for chunk in wire.chunks(777) {
                tx.write_all(chunk).await.unwrap();
            }
        });
        let mut reader = FrameReader::new(rx);
        for i in 0..1000u32 {
            let f = reader.read_frame().await.unwrap();
            assert_eq!(f.tag, b'd');
            assert_eq!(&f.body[..], &i.to_be_bytes());
        }
        let f = reader.read_frame().await.unwrap();
        assert_eq!(f.body.len(), big.len());
        let f = reader.read_frame().await.unwrap();
        assert_eq!((f.tag, f.body.len()), (b'c', 0));
        writer.await.unwrap();
        let err = reader.read_frame().await.err().unwrap();
        assert!(matches!(err, ReplicationError::Io(ref e) if e.kind() == io::ErrorKind::UnexpectedEof));
    }

    #[tokio::test]
    async fn frame_reader_rejects_bad_length_and_mid_frame_eof() {
        let (mut tx, rx) = tokio::io::duplex(64);
        tx.write_all(&[b'd', 0, 0, 0, 2]).await.unwrap();
        let mut reader = FrameReader::new(rx);
        assert!(matches!(reader.read_frame().await, Err(ReplicationError::Protocol(_))));

        let (mut tx, rx) = tokio::io::duplex(64);
        tx.write_all(&[b'd', 0, 0, 0, 10, 1, 2]).await.unwrap();
        drop(tx);
        let mut reader = FrameReader::new(rx);
        assert!(matches!(
            reader.read_frame().await,
            Err(ReplicationError::Io(ref e)) if e.kind() == io::ErrorKind::UnexpectedEof
        ));

        // EOF in COPY BOTH without CopyDone must be UnexpectedEof, not Ok(None).
        let (tx, rx) = tokio::io::duplex(64);
        drop(tx);
        let mut reader = FrameReader::new(rx);
        let mut done = false;
        assert!(matches!(
            next_message(&mut reader, &mut done).await,
            Err(ReplicationError::Io(ref e)) if e.kind() == io::ErrorKind::UnexpectedEof
        ));
    }

    // ---- scripted mock server -------------------------------------------

    fn config(port: u16, password: Option<&str>) -> ReplicationConfig {
        ReplicationConfig {
            host: "127.0.0.1".into(),
            port,
            user: "alice".into(),
            password: password.map(Into::into),
            database: "db".into(),
            application_name: "tidewater-test".into(),
            connect_timeout: Duration::from_secs(5),
            tls: TlsSettings::disabled(),
        }
    }

    async fn read_startup<S: AsyncRead + Unpin>(s: &mut S) -> HashMap<String, String> {
        let len = s.read_u32().await.unwrap() as usize;
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).await.unwrap();
        assert_eq!(&body[..4], &0x0003_0000u32.to_be_bytes());
        let mut parts = body[4..].split(|&b| b == 0).map(|p| String::from_utf8(p.to_vec()).unwrap());
        let mut out = HashMap::new();
        loop {
            let k = parts.next().unwrap();
            if k.is_empty() {
                break;
            }
            out.insert(k, parts.next().unwrap());
        }
        out
    }

    async fn read_msg<S: AsyncRead + Unpin>(s: &mut S) -> (u8, Vec<u8>) {
        let tag = s.read_u8().await.unwrap();
        let len = s.read_u32().await.unwrap() as usize;
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).await.unwrap();
        (tag, body)
    }

    fn auth(code: i32, extra: &[u8]) -> Vec<u8> {
        let mut b = code.to_be_bytes().to_vec();
        b.extend_from_slice(extra);
        frame(b'R', &b)
    }

    fn error_body(code: &str, msg: &str) -> Vec<u8> {
        let mut b = Vec::new();
        for (f, v) in [(b'S', "FATAL"), (b'C', code), (b'M', msg)] {
            b.push(f);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    fn post_auth() -> Vec<u8> {
        let mut v = auth(0, b"");
        v.extend(frame(b'S', b"server_version\x0015.0\x00"));
        v.extend(frame(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]));
        v.extend(frame(b'Z', b"I"));
        v
    }

    async fn mock<F, Fut>(script: F) -> (u16, tokio::task::JoinHandle<()>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            script(s).await;
        });
        (port, handle)
    }

    #[tokio::test]
    async fn trust_query_and_streaming_against_mock() {
        let (port, server) = mock(|mut s| async move {
            let params = read_startup(&mut s).await;
            assert_eq!(params["replication"], "database");
            assert_eq!(params["user"], "alice");
            assert_eq!(params["database"], "db");
            assert_eq!(params["application_name"], "tidewater-test");
            assert_eq!(params["TimeZone"], "UTC");
            assert_eq!(params["DateStyle"], "ISO");
            assert_eq!(params["IntervalStyle"], "iso_8601");
            assert_eq!(params["extra_float_digits"], "3");
            s.write_all(&post_auth()).await.unwrap();

            let (tag, body) = read_msg(&mut s).await;
            assert_eq!((tag, &body[..]), (b'Q', &b"IDENTIFY_SYSTEM\0"[..]));
            let mut out = frame(b'T', b"");
            let mut row = 2i16.to_be_bytes().to_vec();
            row.extend_from_slice(&3i32.to_be_bytes());
            row.extend_from_slice(b"abc");
            row.extend_from_slice(&(-1i32).to_be_bytes());
            out.extend(frame(b'D', &row));
            out.extend(frame(b'N', &error_body("01000", "just a notice")));
            out.extend(frame(b'C', b"IDENTIFY_SYSTEM\0"));
            out.extend(frame(b'Z', b"I"));
            s.write_all(&out).await.unwrap();

            let (tag, _) = read_msg(&mut s).await;
            assert_eq!(tag, b'Q');
            let mut out = frame(b'E', &error_body("42601", "syntax error"));
            out.extend(frame(b'Z', b"I"));
            s.write_all(&out).await.unwrap();

            let (tag, _) = read_msg(&mut s).await;
            assert_eq!(tag, b'Q');
            let mut out = frame(b'W', &[0, 0, 0]);
            let mut w = vec![b'w'];
            w.extend_from_slice(&1u64.to_be_bytes());
            w.extend_from_slice(&2u64.to_be_bytes());
            w.extend_from_slice(&3i64.to_be_bytes());
            w.extend_from_slice(b"BEGIN");
            out.extend(frame(b'd', &w));
            let mut k = vec![b'k'];
            k.extend_from_slice(&5u64.to_be_bytes());
            k.extend_from_slice(&6i64.to_be_bytes());
            k.push(1);
            out.extend(frame(b'd', &k));
            s.write_all(&out).await.unwrap();

            let (tag, body) = read_msg(&mut s).await;
            assert_eq!(tag, b'd');
            assert_eq!(body.len(), 34);
            assert_eq!(body[0], b'r');
            assert_eq!(&body[1..9], &7u64.to_be_bytes());
            assert_eq!(&body[9..17], &8u64.to_be_bytes());
            assert_eq!(&body[17..25], &9u64.to_be_bytes());
            assert_eq!(body[33], 0);

            let (tag, _) = read_msg(&mut s).await;
            assert_eq!(tag, b'c');
            s.write_all(&frame(b'c', b"")).await.unwrap();
        })
        .await;

        let mut conn = ReplicationConnection::connect(&config(port, None)).await.unwrap();
        assert_eq!(conn.parameter_status("server_version"), Some("15.0"));
        assert_eq!(conn.backend_pid(), Some(42));
        let rows = conn.simple_query("IDENTIFY_SYSTEM").await.unwrap();
        assert_eq!(rows, vec![vec![Some("abc".to_owned()), None]]);
        let err = conn.simple_query("bogus").await.unwrap_err();
        assert_eq!(err.sqlstate(), Some("42601"));

        let (mut stream, mut writer) = conn.start_copy_both("START_REPLICATION").await.unwrap();
        assert_eq!(
            stream.next().await.unwrap(),
            Some(ReplicationMessage::XLogData {
                wal_start: 1,
                wal_end: 2,
                server_time_micros: 3,
                data: Bytes::from_static(b"BEGIN"),
            })
        );
        assert_eq!(
            stream.next().await.unwrap(),
            Some(ReplicationMessage::Keepalive { wal_end: 5, server_time_micros: 6, reply_requested: true })
        );
        writer.send_status(7, 8, 9, false).await.unwrap();
        writer.send_copy_done().await.unwrap();
        assert_eq!(stream.next().await.unwrap(), None);
        assert_eq!(stream.next().await.unwrap(), None);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn md5_auth_against_mock() {
        let (port, server) = mock(|mut s| async move {
            read_startup(&mut s).await;
            s.write_all(&auth(5, &[1, 2, 3, 4])).await.unwrap();
            let (tag, body) = read_msg(&mut s).await;
            assert_eq!(tag, b'p');
            let expected = md5_hash(b"alice", b"secret", [1, 2, 3, 4]);
            assert_eq!(&body[..body.len() - 1], expected.as_bytes());
            s.write_all(&post_auth()).await.unwrap();
        })
        .await;
        ReplicationConnection::connect(&config(port, Some("secret"))).await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn wrong_password_is_auth_error() {
        let (port, server) = mock(|mut s| async move {
            read_startup(&mut s).await;
            s.write_all(&auth(3, b"")).await.unwrap();
            let (tag, body) = read_msg(&mut s).await;
            assert_eq!((tag, &body[..]), (b'p', &b"wrong\0"[..]));
            s.write_all(&frame(b'E', &error_body("28P01", "password authentication failed for user \"alice\"")))
                .await
                .unwrap();
        })
        .await;
        let err = ReplicationConnection::connect(&config(port, Some("wrong"))).await.unwrap_err();
        assert!(
            matches!(err, ReplicationError::Auth(ref m) if m.contains("password authentication failed")),
            "{err:?}"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn missing_password_is_auth_error() {
        let (port, server) = mock(|mut s| async move {
            read_startup(&mut s).await;
            let mut mechs = b"SCRAM-SHA-256\0".to_vec();
            mechs.push(0);
            s.write_all(&auth(10, &mechs)).await.unwrap();
        })
        .await;
        let err = ReplicationConnection::connect(&config(port, None)).await.unwrap_err();
        assert!(matches!(err, ReplicationError::Auth(ref m) if m.contains("no password is configured")), "{err:?}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn start_copy_both_reports_server_error() {
        let (port, server) = mock(|mut s| async move {
            read_startup(&mut s).await;
            s.write_all(&post_auth()).await.unwrap();
            read_msg(&mut s).await;
            let mut out = frame(b'E', &error_body("42704", "replication slot \"x\" does not exist"));
            out.extend(frame(b'Z', b"I"));
            s.write_all(&out).await.unwrap();
        })
        .await;
        let conn = ReplicationConnection::connect(&config(port, None)).await.unwrap();
        let err = conn.start_copy_both("START_REPLICATION SLOT x LOGICAL 0/0").await.unwrap_err();
        assert_eq!(err.sqlstate(), Some("42704"));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn connect_timeout_is_io_timed_out() {
        let (port, server) = mock(|mut s| async move {
            read_startup(&mut s).await;
            // Never answer.
            tokio::time::sleep(Duration::from_secs(2)).await;
        })
        .await;
        let mut cfg = config(port, None);
        cfg.connect_timeout = Duration::from_millis(100);
        let err = ReplicationConnection::connect(&cfg).await.unwrap_err();
        assert!(matches!(err, ReplicationError::Io(ref e) if e.kind() == io::ErrorKind::TimedOut));
        server.abort();
    }

    // ---- TLS ----------------------------------------------------------------

    struct Pki {
        dir: std::path::PathBuf,
        ca_file: std::path::PathBuf,
        server_config: Arc<rustls::ServerConfig>,
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A fresh CA (its PEM written to a temp file) and a server certificate for `names`
    /// signed by it.
    fn pki(names: &[&str]) -> Pki {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "tidewater test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names).unwrap().signed_by(&key, &ca).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "tidewater-repl-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let server_config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                )
                .unwrap();
        Pki { dir, ca_file, server_config: Arc::new(server_config) }
    }

    fn tls_config(port: u16, mode: SslMode, ca_file: Option<&std::path::Path>) -> ReplicationConfig {
        let mut cfg = config(port, None);
        cfg.tls = TlsSettings::new(mode, ca_file).unwrap();
        cfg
    }

    /// Reads the SSLRequest and answers `answer`.
    async fn answer_ssl_request(s: &mut TcpStream, answer: u8) {
        let mut req = [0u8; 8];
        s.read_exact(&mut req).await.unwrap();
        assert_eq!(req, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f], "SSLRequest");
        s.write_all(&[answer]).await.unwrap();
    }

    #[tokio::test]
    async fn tls_session_streams_over_split_halves_and_writer_drop_ends_it() {
        let pki = pki(&["127.0.0.1"]);
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config.clone());
        let (port, server) = mock(move |mut s| async move {
            answer_ssl_request(&mut s, b'S').await;
            let mut s = acceptor.accept(s).await.unwrap();
            let params = read_startup(&mut s).await;
            assert_eq!(params["replication"], "database");
            s.write_all(&post_auth()).await.unwrap();
            let (tag, _) = read_msg(&mut s).await;
            assert_eq!(tag, b'Q');
            let mut out = frame(b'W', &[0, 0, 0]);
            let mut w = vec![b'w'];
            w.extend_from_slice(&1u64.to_be_bytes());
            w.extend_from_slice(&2u64.to_be_bytes());
            w.extend_from_slice(&3i64.to_be_bytes());
            w.extend_from_slice(&vec![b'x'; 100_000]);
            out.extend(frame(b'd', &w));
            s.write_all(&out).await.unwrap();
            s.flush().await.unwrap();
            let (tag, body) = read_msg(&mut s).await;
            assert_eq!((tag, body[0]), (b'd', b'r'));
            // The client drops its writer: the session must end (EOF, with or without
            // close_notify) although its read half is still alive.
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
            assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        })
        .await;

        let cfg = tls_config(port, SslMode::VerifyFull, Some(&pki.ca_file));
        let conn = ReplicationConnection::connect(&cfg).await.unwrap();
        assert!(conn.tls().unwrap().starts_with("TLSv1."), "{:?}", conn.tls());
        assert_eq!(conn.auth_method(), "trust");
        assert!(conn.channel_binding.is_some());
        let (mut stream, mut writer) = conn.start_copy_both("START_REPLICATION").await.unwrap();
        match stream.next().await.unwrap() {
            Some(ReplicationMessage::XLogData { wal_start: 1, data, .. }) => assert_eq!(data.len(), 100_000),
            other => panic!("{other:?}"),
        }
        writer.send_status(7, 8, 9, false).await.unwrap();
        drop(writer);
        tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
        drop(stream);
    }

    #[tokio::test]
    async fn verify_full_refuses_an_unknown_ca_and_a_wrong_name() {
        let trusted = pki(&["127.0.0.1"]);
        let other = pki(&["127.0.0.1"]);
        let acceptor = tokio_rustls::TlsAcceptor::from(other.server_config.clone());
        let (port, server) = mock(move |mut s| async move {
            answer_ssl_request(&mut s, b'S').await;
            assert!(acceptor.accept(s).await.is_err());
        })
        .await;
        let err = ReplicationConnection::connect(&tls_config(port, SslMode::VerifyFull, Some(&trusted.ca_file)))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ReplicationError::Tls(ref m) if m.contains("not signed by a CA in ssl_ca_file")),
            "{err}"
        );
        server.await.unwrap();

        // Right CA, but the certificate names another host: verify-full refuses,
        // verify-ca accepts.
        let named = pki(&["db.example"]);
        for (mode, ok) in [(SslMode::VerifyFull, false), (SslMode::VerifyCa, true)] {
            let acceptor = tokio_rustls::TlsAcceptor::from(named.server_config.clone());
            let (port, server) = mock(move |mut s| async move {
                answer_ssl_request(&mut s, b'S').await;
                if let Ok(mut s) = acceptor.accept(s).await {
                    read_startup(&mut s).await;
                    s.write_all(&post_auth()).await.unwrap();
                }
            })
            .await;
            let res = ReplicationConnection::connect(&tls_config(port, mode, Some(&named.ca_file))).await;
            match res {
                Ok(conn) => assert!(ok && conn.tls().is_some()),
                Err(e) => assert!(
                    !ok && matches!(e, ReplicationError::Tls(ref m) if m.contains("not issued for host")),
                    "{e}"
                ),
            }
            server.await.unwrap();
        }
    }

    #[tokio::test]
    async fn server_refusing_tls_fails_require_and_falls_back_for_prefer() {
        let (port, server) = mock(|mut s| async move {
            answer_ssl_request(&mut s, b'N').await;
        })
        .await;
        let err = ReplicationConnection::connect(&tls_config(port, SslMode::Require, None)).await.unwrap_err();
        assert!(matches!(err, ReplicationError::Tls(ref m) if m.contains("does not accept TLS")), "{err}");
        server.await.unwrap();

        let (port, server) = mock(|mut s| async move {
            answer_ssl_request(&mut s, b'N').await;
            read_startup(&mut s).await;
            s.write_all(&post_auth()).await.unwrap();
        })
        .await;
        let conn = ReplicationConnection::connect(&tls_config(port, SslMode::Prefer, None)).await.unwrap();
        assert_eq!(conn.tls(), None);
        server.await.unwrap();
    }

    #[test]
    fn scram_channel_binding_choice() {
        let first = |(mechanism, binding): (&str, ChannelBinding)| {
            (mechanism.to_owned(), String::from_utf8(ScramSha256::new(b"pw", binding).message().to_vec()).unwrap())
        };
        let both = [SCRAM_SHA_256_PLUS, SCRAM_SHA_256];
        // TLS, offered: PLUS with tls-server-end-point.
        let (m, msg) = first(choose_scram(&both, true, Some(&[1, 2, 3])).unwrap());
        assert_eq!(m, "SCRAM-SHA-256-PLUS");
        assert!(msg.starts_with("p=tls-server-end-point,,"), "{msg}");
        // TLS, not offered: "y" (client could bind, server did not offer).
        let (m, msg) = first(choose_scram(&[SCRAM_SHA_256], true, Some(&[1])).unwrap());
        assert_eq!(m, "SCRAM-SHA-256");
        assert!(msg.starts_with("y,,"), "{msg}");
        // No TLS, or no hash for the certificate: "n".
        for (tls, hash) in [(false, None), (true, None)] {
            let (m, msg) = first(choose_scram(&both, tls, hash).unwrap());
            assert_eq!(m, "SCRAM-SHA-256");
            assert!(msg.starts_with("n,,"), "{msg}");
        }
        assert!(matches!(choose_scram(&["OTHER"], true, Some(&[1])), Err(ReplicationError::Auth(_))));
    }
}
