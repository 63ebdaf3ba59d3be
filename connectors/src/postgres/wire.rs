//! A small PostgreSQL frontend on the `postgres-protocol` framing: startup, authentication
//! (cleartext, MD5, SCRAM-SHA-256), the simple query protocol with rows streamed to a callback,
//! and the streaming replication sub-protocol (CopyBoth, XLogData, keepalives, standby status
//! updates). `tokio-postgres` has no replication support, which is why this exists.
//!
//! Values are always in text format; the session is started with ISO dates, UTC, exact floats
//! and hex bytea so that snapshot rows and pgoutput tuples read the same.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
const READ_CHUNK: usize = 256 * 1024;
/// Chunks the replication reader may read ahead of the decoder.
const READ_AHEAD_CHUNKS: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to connect.
#[derive(Clone)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// `replication=database`: a walsender session that also takes SQL.
    pub replication: bool,
    pub application_name: String,
    /// TLS over TCP (a Unix socket is never encrypted, as with libpq).
    pub tls: Option<TlsParams>,
}

/// How to secure a TCP connection.
#[derive(Clone)]
pub struct TlsParams {
    pub config: std::sync::Arc<rustls::ClientConfig>,
    /// The name the certificate is checked against (when the config checks names).
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// Fail when the server does not offer TLS (else go on in plain text: `prefer`).
    pub required: bool,
}

/// An error from the server (with its SQLSTATE) or from the connection.
#[derive(Debug)]
pub enum PgError {
    Io(io::Error),
    Server {
        code: String,
        message: String,
        detail: Option<String>,
    },
    Protocol(String),
    /// TLS refused by the server (`required`) or the handshake failed.
    Tls(String, Option<Box<dyn std::error::Error + Send + Sync>>),
}

impl PgError {
    pub fn code(&self) -> Option<&str> {
        match self {
            PgError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::Io(e) => write!(f, "connection error: {e}"),
            PgError::Server { code, message, detail } => {
                write!(f, "{message} (SQLSTATE {code})")?;
                if let Some(d) = detail {
                    write!(f, ": {d}")?;
                }
                Ok(())
            }
            PgError::Protocol(m) => write!(f, "protocol error: {m}"),
            PgError::Tls(m, Some(e)) => write!(f, "{m}: {e}"),
            PgError::Tls(m, None) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PgError::Io(e) => Some(e),
            PgError::Tls(_, Some(e)) => Some(e.as_ref()),
            _ => None,
        }
    }
}

impl From<io::Error> for PgError {
    fn from(e: io::Error) -> Self {
        PgError::Io(e)
    }
}

fn server_error(fields: backend::ErrorFields<'_>) -> PgError {
    use postgres_protocol::message::backend::ErrorField;
    let mut code = String::new();
    let mut message = String::new();
    let mut detail = None;
    let mut fields = fields;
    while let Ok(Some(f)) = fallible_next(&mut fields) {
        let f: ErrorField<'_> = f;
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'C' => code = v,
            b'M' => message = v,
            b'D' => detail = Some(v),
            _ => {}
        }
    }
    PgError::Server { code, message, detail }
}

fn fallible_next<'a>(it: &mut backend::ErrorFields<'a>) -> io::Result<Option<backend::ErrorField<'a>>> {
    use fallible_iterator::FallibleIterator;
    it.next()
}

const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

enum Frame {
    Msg(backend::Message),
    CopyBoth,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// One text-format row of a simple query: column values as raw bytes (`None` for NULL).
pub struct Row {
    body: backend::DataRowBody,
    ranges: Vec<Option<std::ops::Range<usize>>>,
}

impl Row {
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.ranges.get(i)?.as_ref().map(|r| &self.body.buffer()[r.clone()])
    }

    pub fn text(&self, i: usize) -> Option<&str> {
        self.get(i).and_then(|b| std::str::from_utf8(b).ok())
    }
}

/// A message of the replication stream.
#[derive(Debug)]
pub enum ReplicationMessage {
    /// WAL data: for logical replication, one output plugin message.
    XLogData { wal_start: u64, wal_end: u64, data: Bytes },
    /// The server's position and whether it wants a status update now.
    Keepalive { wal_end: u64, reply: bool },
}

/// Asks the server for TLS (SSLRequest) and makes the handshake; plain text when the server
/// declines and TLS is only preferred. Returns the stream and whether it is encrypted.
async fn secure(mut s: tokio::net::TcpStream, p: &TlsParams) -> Result<(Box<dyn Io>, bool), PgError> {
    let mut req = BytesMut::new();
    frontend::ssl_request(&mut req);
    s.write_all(&req).await?;
    let mut answer = [0u8; 1];
    tokio::time::timeout(CONNECT_TIMEOUT, s.read_exact(&mut answer))
        .await
        .map_err(|_| PgError::Io(io::Error::new(io::ErrorKind::TimedOut, "no answer to the TLS request")))??;
    match answer[0] {
        b'S' => {
            let connector = tokio_rustls::TlsConnector::from(p.config.clone());
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(p.server_name.clone(), s))
                .await
                .map_err(|_| PgError::Io(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")))?
                .map_err(|e| {
                    // rustls reports through io::Error: keep its own error as the cause.
                    let cause: Box<dyn std::error::Error + Send + Sync> = match e.into_inner() {
                        Some(inner) => inner,
                        None => "the connection closed during the handshake".into(),
                    };
                    PgError::Tls("TLS handshake failed".into(), Some(cause))
                })?;
            Ok((Box::new(stream), true))
        }
        b'N' if !p.required => Ok((Box::new(s), false)),
        b'N' => Err(PgError::Tls("the server does not accept TLS connections".into(), None)),
        other => Err(PgError::Protocol(format!(
            "unexpected answer {other:#x} to the TLS request"
        ))),
    }
}

/// A session with the server.
pub struct Connection {
    tls: bool,
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    pub parameters: HashMap<String, String>,
}

impl Connection {
    pub async fn connect(p: &ConnectParams) -> Result<Connection, PgError> {
        let mut tls = false;
        let io: Box<dyn Io> = if p.host.starts_with('/') {
            let path = format!("{}/.s.PGSQL.{}", p.host, p.port);
            Box::new(
                tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(path))
                    .await
                    .map_err(|_| PgError::Io(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))??,
            )
        } else {
            let tcp = || async {
                let s = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    tokio::net::TcpStream::connect((p.host.as_str(), p.port)),
                )
                .await
                .map_err(|_| PgError::Io(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))??;
                s.set_nodelay(true)?;
                Ok::<_, PgError>(s)
            };
            let s = tcp().await?;
            match &p.tls {
                Some(params) => match secure(s, params).await {
                    Ok((io, on)) => {
                        tls = on;
                        io
                    }
                    // prefer: a handshake that fails (a protocol or key rustls refuses) is
                    // followed by a plain connection, as libpq does.
                    Err(PgError::Tls(m, e)) if !params.required && e.is_some() => {
                        tracing::debug!(error = %PgError::Tls(m, e), "TLS failed; sslmode=prefer goes on in plain text");
                        Box::new(tcp().await?)
                    }
                    Err(e) => return Err(e),
                },
                None => Box::new(s),
            }
        };
        let mut c = Connection {
            tls,
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::new(),
            parameters: HashMap::new(),
        };
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &p.user),
            ("database", &p.database),
            ("application_name", &p.application_name),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, YMD"),
            ("TimeZone", "UTC"),
            ("IntervalStyle", "iso_8601"),
            ("extra_float_digits", "3"),
            // money prints as `-$1,234.56` whatever the server's locale (types.rs strips it).
            ("lc_monetary", "C"),
            ("bytea_output", "hex"),
        ];
        if p.replication {
            params.push(("replication", "database"));
        }
        frontend::startup_message(params.iter().copied(), &mut c.wbuf)?;
        c.flush().await?;
        c.authenticate(p).await?;
        // Parameter statuses and the backend key until the server is ready.
        loop {
            match c.recv().await? {
                backend::Message::ReadyForQuery(_) => return Ok(c),
                backend::Message::ParameterStatus(s) => {
                    c.parameters.insert(s.name()?.to_owned(), s.value()?.to_owned());
                }
                backend::Message::ErrorResponse(e) => return Err(server_error(e.fields())),
                _ => {}
            }
        }
    }

    /// Whether the session is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    async fn authenticate(&mut self, p: &ConnectParams) -> Result<(), PgError> {
        let password = || {
            p.password
                .as_deref()
                .ok_or_else(|| PgError::Protocol("the server asks for a password and none is configured".into()))
        };
        loop {
            match self.recv().await? {
                backend::Message::AuthenticationOk => return Ok(()),
                backend::Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?.as_bytes(), &mut self.wbuf)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        p.user.as_bytes(),
                        password()?.as_bytes(),
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut scram = false;
                    use fallible_iterator::FallibleIterator;
                    while let Some(m) = mechanisms.next()? {
                        scram |= m == SCRAM_SHA_256;
                    }
                    if !scram {
                        return Err(PgError::Protocol(
                            "the server offers no supported SASL mechanism".into(),
                        ));
                    }
                    let mut sc = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, sc.message(), &mut self.wbuf)?;
                    self.flush().await?;
                    let cont = match self.recv().await? {
                        backend::Message::AuthenticationSaslContinue(b) => b,
                        backend::Message::ErrorResponse(e) => return Err(server_error(e.fields())),
                        _ => return Err(PgError::Protocol("unexpected message during SCRAM".into())),
                    };
                    sc.update(cont.data())?;
                    frontend::sasl_response(sc.message(), &mut self.wbuf)?;
                    self.flush().await?;
                    let fin = match self.recv().await? {
                        backend::Message::AuthenticationSaslFinal(b) => b,
                        backend::Message::ErrorResponse(e) => return Err(server_error(e.fields())),
                        _ => return Err(PgError::Protocol("unexpected message during SCRAM".into())),
                    };
                    sc.finish(fin.data())?;
                }
                backend::Message::ErrorResponse(e) => return Err(server_error(e.fields())),
                _ => return Err(PgError::Protocol("unsupported authentication method".into())),
            }
        }
    }

    async fn flush(&mut self) -> Result<(), PgError> {
        self.io.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        self.io.flush().await?;
        Ok(())
    }

    /// Reads more bytes; `Ok(false)` at end of stream.
    async fn fill(&mut self) -> Result<bool, PgError> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        Ok(self.io.read_buf(&mut self.rbuf).await? > 0)
    }

    /// The next complete message already read, if any (no IO).
    fn buffered(&mut self) -> Result<Option<Frame>, PgError> {
        // CopyBothResponse is not among postgres-protocol's backend messages: framed here.
        if self.rbuf.len() >= 5 && self.rbuf[0] == COPY_BOTH_RESPONSE_TAG {
            let len = u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]) as usize;
            if self.rbuf.len() < len + 1 {
                return Ok(None);
            }
            self.rbuf.advance(len + 1);
            return Ok(Some(Frame::CopyBoth));
        }
        Ok(backend::Message::parse(&mut self.rbuf)?.map(Frame::Msg))
    }

    async fn recv_frame(&mut self) -> Result<Frame, PgError> {
        loop {
            match self.buffered()? {
                Some(Frame::Msg(backend::Message::NoticeResponse(_))) => continue,
                Some(f) => return Ok(f),
                None => {}
            }
            if !self.fill().await? {
                return Err(PgError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
        }
    }

    async fn recv(&mut self) -> Result<backend::Message, PgError> {
        match self.recv_frame().await? {
            Frame::Msg(m) => Ok(m),
            Frame::CopyBoth => Err(PgError::Protocol("unexpected CopyBothResponse".into())),
        }
    }

    /// Runs one statement (or several separated by `;`) and hands each row to `on_row`.
    pub async fn query_each(
        &mut self,
        sql: &str,
        mut on_row: impl FnMut(&Row) -> Result<(), PgError>,
    ) -> Result<(), PgError> {
        frontend::query(sql, &mut self.wbuf)?;
        self.flush().await?;
        let mut failure = None;
        loop {
            match self.recv().await? {
                backend::Message::DataRow(body) => {
                    if failure.is_some() {
                        continue;
                    }
                    let ranges = {
                        use fallible_iterator::FallibleIterator;
                        body.ranges().collect::<Vec<_>>()?
                    };
                    let row = Row { body, ranges };
                    if let Err(e) = on_row(&row) {
                        failure = Some(e);
                    }
                }
                backend::Message::ErrorResponse(e) => failure = Some(server_error(e.fields())),
                backend::Message::ReadyForQuery(_) => break,
                // COPY is never issued by this client; refuse it instead of hanging.
                backend::Message::CopyInResponse(_) => {
                    frontend::copy_fail("unexpected COPY", &mut self.wbuf)?;
                    self.flush().await?;
                }
                _ => {}
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Runs a statement and collects its rows as text.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        let mut rows = Vec::new();
        self.query_each(sql, |r| {
            rows.push((0..r.len()).map(|i| r.text(i).map(str::to_owned)).collect());
            Ok(())
        })
        .await?;
        Ok(rows)
    }

    /// Issues `START_REPLICATION …` and turns the session into a replication stream.
    pub async fn start_replication(mut self, command: &str) -> Result<ReplicationStream, PgError> {
        frontend::query(command, &mut self.wbuf)?;
        self.flush().await?;
        loop {
            match self.recv_frame().await? {
                Frame::CopyBoth => break,
                Frame::Msg(backend::Message::ErrorResponse(e)) => return Err(server_error(e.fields())),
                Frame::Msg(_) => {}
            }
        }
        // A task of its own reads the socket as fast as the server sends: the walsender never
        // waits on a full socket buffer while we decode (it spends much more CPU when it must).
        // What was read past CopyBothResponse: whole messages go to the decoder, a partial one
        // stays with the reader, which continues it.
        let whole = whole_messages(&self.rbuf);
        let tail = self.rbuf.split_off(whole);
        let (mut read, write) = tokio::io::split(self.io);
        let (tx, chunks) = tokio::sync::mpsc::channel::<io::Result<BytesMut>>(READ_AHEAD_CHUNKS);
        let reader = tokio::spawn(async move {
            // Only whole messages are handed over, so the decoder never copies a chunk to join
            // it with the previous one; a partial message stays here for the next read.
            let mut buf = tail;
            loop {
                if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                    buf.reserve(READ_CHUNK);
                }
                match read.read_buf(&mut buf).await {
                    Ok(0) => {
                        let _ = tx
                            .send(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the server closed the replication connection",
                            )))
                            .await;
                        return;
                    }
                    Ok(_) => {
                        let whole = whole_messages(&buf);
                        if whole > 0 && tx.send(Ok(buf.split_to(whole))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        })
        .abort_handle();
        Ok(ReplicationStream {
            rbuf: self.rbuf,
            wbuf: self.wbuf,
            write,
            chunks,
            reader,
        })
    }

    pub async fn close(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush().await;
    }
}

/// The length of the longest prefix of `buf` made of whole protocol messages.
fn whole_messages(buf: &[u8]) -> usize {
    let mut at = 0;
    while buf.len() >= at + 5 {
        let len = u32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]) as usize;
        if buf.len() < at + 1 + len {
            break;
        }
        at += 1 + len;
    }
    at
}

/// A session in CopyBoth mode after START_REPLICATION.
pub struct ReplicationStream {
    rbuf: BytesMut,
    wbuf: BytesMut,
    write: tokio::io::WriteHalf<Box<dyn Io>>,
    chunks: tokio::sync::mpsc::Receiver<io::Result<BytesMut>>,
    reader: tokio::task::AbortHandle,
}

impl Drop for ReplicationStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl ReplicationStream {
    /// The next replication message; errs when the server ends the stream.
    pub async fn next(&mut self) -> Result<ReplicationMessage, PgError> {
        loop {
            if let Some(m) = self.next_buffered()? {
                return Ok(m);
            }
            self.read_more().await?;
        }
    }

    /// The next message already read off the socket, without waiting.
    pub fn next_buffered(&mut self) -> Result<Option<ReplicationMessage>, PgError> {
        loop {
            let Some(m) = backend::Message::parse(&mut self.rbuf)? else {
                return Ok(None);
            };
            match m {
                backend::Message::CopyData(body) => {
                    let mut data = body.into_bytes();
                    if data.is_empty() {
                        return Err(PgError::Protocol("empty CopyData".into()));
                    }
                    let kind = data.get_u8();
                    match kind {
                        b'w' if data.len() >= 24 => {
                            let wal_start = data.get_u64();
                            let wal_end = data.get_u64();
                            let _send_time = data.get_i64();
                            return Ok(Some(ReplicationMessage::XLogData {
                                wal_start,
                                wal_end,
                                data,
                            }));
                        }
                        b'k' if data.len() >= 17 => {
                            let wal_end = data.get_u64();
                            let _send_time = data.get_i64();
                            let reply = data.get_u8() == 1;
                            return Ok(Some(ReplicationMessage::Keepalive { wal_end, reply }));
                        }
                        other => {
                            return Err(PgError::Protocol(format!(
                                "unknown replication message {:?}",
                                other as char
                            )));
                        }
                    }
                }
                backend::Message::ErrorResponse(e) => return Err(server_error(e.fields())),
                backend::Message::CopyDone => {
                    return Err(PgError::Protocol("the server ended the replication stream".into()));
                }
                _ => continue,
            }
        }
    }

    /// Waits for more bytes from the server (cancel-safe); errs at end of stream.
    pub async fn read_more(&mut self) -> Result<(), PgError> {
        match self.chunks.recv().await {
            Some(Ok(chunk)) => {
                self.take(chunk);
                Ok(())
            }
            Some(Err(e)) => Err(PgError::Io(e)),
            None => Err(PgError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the replication connection's reader stopped",
            ))),
        }
    }

    fn take(&mut self, chunk: BytesMut) {
        if self.rbuf.is_empty() {
            self.rbuf = chunk;
        } else {
            self.rbuf.extend_from_slice(&chunk);
        }
    }

    /// Takes bytes the reader already has, without waiting; false when there are none.
    pub fn try_read_more(&mut self) -> Result<bool, PgError> {
        match self.chunks.try_recv() {
            Ok(Ok(chunk)) => {
                self.take(chunk);
                Ok(true)
            }
            Ok(Err(e)) => Err(PgError::Io(e)),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => Ok(false),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => Err(PgError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the replication connection's reader stopped",
            ))),
        }
    }

    /// Sends a standby status update: received up to `write`, durable up to `flush`.
    pub async fn send_status(&mut self, write: u64, flush: u64, reply: bool) -> Result<(), PgError> {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0)
            - PG_EPOCH_OFFSET_US;
        let mut msg = BytesMut::with_capacity(34);
        msg.extend_from_slice(b"r");
        msg.extend_from_slice(&write.to_be_bytes());
        msg.extend_from_slice(&flush.to_be_bytes());
        msg.extend_from_slice(&flush.to_be_bytes());
        msg.extend_from_slice(&now_us.to_be_bytes());
        msg.extend_from_slice(&[u8::from(reply)]);
        frontend::CopyData::new(msg.freeze())?.write(&mut self.wbuf);
        self.write.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        self.write.flush().await?;
        Ok(())
    }

    pub async fn close(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.write.write_all(&self.wbuf).await;
        let _ = self.write.flush().await;
    }
}

/// `X/Y` text form of an LSN.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// A quoted identifier (`"a""b"`).
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A quoted literal (`'it''s'`, with `E''` when it has backslashes).
pub fn literal(s: &str) -> String {
    postgres_protocol::escape::escape_literal(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trips() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("nope"), None);
    }

    #[test]
    fn whole_messages_stop_before_a_partial_one() {
        let mut b = vec![b'd', 0, 0, 0, 6, 1, 2, b'd', 0, 0, 0, 5, 9];
        assert_eq!(whole_messages(&b), 7 + 6);
        b.extend([b'd', 0, 0, 0, 9, 1]);
        assert_eq!(whole_messages(&b), 13);
        assert_eq!(whole_messages(&b[..3]), 0);
    }

    #[test]
    fn quoting() {
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
