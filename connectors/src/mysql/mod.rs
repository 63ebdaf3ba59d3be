//! MySQL and MariaDB: the CDC source (the binlog, read as a replica does) and the sink.
//! Connections, queries and the binlog packet stream are `mysql_async`'s; the binlog's content is
//! decoded here (decision 009).

pub mod binlog;
pub mod config;
pub mod jsonb;
pub mod sink;
pub mod source;
pub mod values;

use hstream_runtime::ConnectorError;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, SslOpts};

pub use config::{Endpoint, MySqlSinkConfig, MySqlSourceConfig, MySqlSslMode, PositionMode};

use crate::tls;
pub use sink::MySqlSink;
pub use source::{MySqlOffset, MySqlSource};

impl Endpoint {
    pub(crate) fn validate(&self) -> Result<(), ConnectorError> {
        if self.host.is_empty() {
            return Err(ConnectorError::config("host: must not be empty"));
        }
        if self.user.is_empty() {
            return Err(ConnectorError::config("user: must not be empty"));
        }
        if self.database.is_empty() {
            return Err(ConnectorError::config("database: must not be empty"));
        }
        if self.ssl_mode.is_some() && self.tls.is_some() {
            return Err(ConnectorError::config("tls: give sslMode or tls, not both"));
        }
        if self.ssl_mode.is_some() && self.tls_skip_verify {
            return Err(ConnectorError::config(
                "tlsSkipVerify: goes with tls; with sslMode, choose the mode (required checks nothing)",
            ));
        }
        if self.effective_ssl_mode() == MySqlSslMode::VerifyCa && self.ssl_ca.is_none() {
            return Err(ConnectorError::config(
                "sslCa: sslMode=verify_ca checks the chain only, so it needs the CA named (or use verify_identity)",
            ));
        }
        self.tls_files().validate()
    }

    fn tls_files(&self) -> tls::Files<'_> {
        tls::Files {
            ca: self.ssl_ca.as_deref(),
            ca_option: "sslCa",
            cert: self.ssl_cert.as_deref(),
            cert_option: "sslCert",
            key: self.ssl_key.as_deref(),
            key_option: "sslKey",
        }
    }

    /// The mode in effect: `sslMode`, else the older `tls` flag, else `preferred`.
    pub fn effective_ssl_mode(&self) -> MySqlSslMode {
        match (self.ssl_mode, self.tls) {
            (Some(m), _) => m,
            (None, Some(false)) => MySqlSslMode::Disabled,
            (None, Some(true)) if self.tls_skip_verify => MySqlSslMode::Required,
            (None, Some(true)) => MySqlSslMode::VerifyIdentity,
            (None, None) => MySqlSslMode::Preferred,
        }
    }

    /// `mysql_async`'s TLS options for a policy (`None`: plain).
    fn ssl_opts(&self, policy: tls::Policy) -> Option<SslOpts> {
        let check = match policy {
            tls::Policy::Plain => return None,
            tls::Policy::Opportunistic => tls::Check::Nothing,
            tls::Policy::Required(c) => c,
        };
        let mut o = SslOpts::default()
            .with_danger_accept_invalid_certs(check == tls::Check::Nothing)
            .with_danger_skip_domain_validation(check != tls::Check::ChainAndName);
        if let Some(ca) = &self.ssl_ca {
            o = o
                .with_root_certs(vec![std::path::PathBuf::from(ca).into()])
                .with_disable_built_in_roots(true);
        }
        if let (Some(cert), Some(key)) = (&self.ssl_cert, &self.ssl_key) {
            o = o.with_client_identity(Some(mysql_async::ClientIdentity::new(
                std::path::PathBuf::from(cert).into(),
                std::path::PathBuf::from(key).into(),
            )));
        }
        Some(o)
    }

    fn opts(&self, with_db: bool, init: Vec<String>, ssl: Option<SslOpts>) -> OptsBuilder {
        let mut o = OptsBuilder::default()
            .user(Some(self.user.clone()))
            .pass(self.password.as_ref().map(|p| p.expose().to_owned()))
            .prefer_socket(false)
            .stmt_cache_size(64)
            .init(init);
        if with_db {
            o = o.db_name(Some(self.database.clone()));
        }
        o = if self.host.starts_with('/') {
            o.socket(Some(self.host.clone()))
        } else {
            o.ip_or_hostname(self.host.clone()).tcp_port(self.port)
        };
        // A Unix socket is never encrypted (mysql_async leaves it plain whatever is asked).
        if !self.host.starts_with('/') {
            o = o.ssl_opts(ssl);
        }
        o
    }

    /// Opens a session (UTC, utf8mb4) on the database; `init` statements run first.
    pub(crate) async fn connect(&self, init: &[&str]) -> Result<Conn, ConnectorError> {
        let mut all = vec!["SET time_zone = '+00:00'".to_owned(), "SET NAMES utf8mb4".to_owned()];
        all.extend(init.iter().map(|s| s.to_string()));
        let mode = self.effective_ssl_mode();
        let policy = mode.level().policy(self.ssl_ca.is_some());
        let attempt = |ssl: Option<SslOpts>| {
            let connect = Conn::new(self.opts(true, all.clone(), ssl));
            async move {
                match tokio::time::timeout(std::time::Duration::from_secs(15), connect).await {
                    Ok(r) => r,
                    Err(_) => Err(mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no answer within 15 s",
                    )))),
                }
            }
        };
        if let tls::Policy::Required(check) = policy {
            // Reads and checks the files first, so that a bad one is named (mysql_async would
            // report it as a failed connection). Without sslCa mysql_async trusts its own roots:
            // only the client files are checked here then.
            let check = if self.ssl_ca.is_some() {
                check
            } else {
                tls::Check::Nothing
            };
            tls::client_config(check, &self.tls_files())?;
        }
        match attempt(self.ssl_opts(policy)).await {
            Ok(c) => Ok(c),
            // preferred: a server without TLS, or a handshake that fails, is spoken to in plain
            // text (as the MySQL client does).
            Err(
                mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer)
                | mysql_async::Error::Io(mysql_async::IoError::Tls(_)),
            ) if policy == tls::Policy::Opportunistic => attempt(None).await.map_err(|e| connect_error(self, e)),
            Err(e) => Err(connect_error(self, e)),
        }
    }
}

/// Classifies a connection failure: wrong credentials, database or permissions are config
/// errors naming the option; an unreachable server is external (retried).
pub(crate) fn connect_error(ep: &Endpoint, e: mysql_async::Error) -> ConnectorError {
    match e {
        mysql_async::Error::Server(ref s) => match s.code {
            1045 => ConnectorError::config(format!(
                "password: access denied for user {:?}: {} (an account that REQUIRES SSL or X509 also needs \
                 sslMode, sslCert and sslKey)",
                ep.user, s.message
            )),
            1044 | 1049 => ConnectorError::config(format!("database: {} (error {})", s.message, s.code)),
            _ => query_error("connect", e),
        },
        mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) => {
            ConnectorError::config(format!(
                "sslMode: {}: the server does not accept TLS connections",
                ep.effective_ssl_mode().as_str()
            ))
        }
        mysql_async::Error::Io(mysql_async::IoError::Tls(ref t))
            if !matches!(t, mysql_async::TlsError::Tls(_)) || tls::is_certificate_error(t) =>
        {
            ConnectorError::config(format!(
                "sslMode: {} refused: {t} (check sslCa, sslCert and sslKey)",
                ep.effective_ssl_mode().as_str()
            ))
        }
        mysql_async::Error::Io(mysql_async::IoError::Io(ref io)) if tls::is_certificate_error(io) => {
            ConnectorError::config(format!(
                "sslMode: {} refused: {io} (check sslCa, sslCert and sslKey)",
                ep.effective_ssl_mode().as_str()
            ))
        }
        // The I/O error itself is the cause (the outer one only repeats its text).
        mysql_async::Error::Io(io) => {
            ConnectorError::external(format!("host/port: could not connect to {}:{}", ep.host, ep.port)).with_source(io)
        }
        e => ConnectorError::external(format!("connect to {}:{}", ep.host, ep.port)).with_source(e),
    }
}

/// Classifies a failed statement: server errors that retrying cannot fix (privileges, missing
/// objects, purged binlogs) are config errors; lost connections and the like are external.
pub(crate) fn query_error(context: &str, e: mysql_async::Error) -> ConnectorError {
    match e {
        mysql_async::Error::Server(s) => {
            let msg = format!("{context}: {} (error {})", s.message, s.code);
            match s.code {
                // Lock wait timeout, deadlock, too many connections, server shutting down, read-only,
                // query interrupted.
                1205 | 1213 | 1040 | 1053 | 1290 | 1317 | 1927 | 2006 | 2013 => ConnectorError::external(msg),
                1044 | 1142 | 1143 | 1227 | 1045 => ConnectorError::config(format!(
                    "user: lacks a privilege: {msg} (a CDC user needs SELECT, RELOAD, SHOW DATABASES, LOCK TABLES, \
                     REPLICATION SLAVE and REPLICATION CLIENT/BINLOG MONITOR)"
                )),
                // A value a column cannot take, a key or constraint it breaks: the records'
                // content, not the setup, is refused (strict mode makes bad values errors).
                1048 | 1062 | 1264 | 1265 | 1292 | 1364 | 1366 | 1367 | 1406 | 1451 | 1452 | 1690 | 3140 | 3819
                | 4025 => ConnectorError::data(msg),
                1146 => ConnectorError::config(format!("table: {msg}")),
                1049 => ConnectorError::config(format!("database: {msg}")),
                _ => ConnectorError::config(msg),
            }
        }
        other => ConnectorError::external(format!("{context}: {other}")),
    }
}

/// A quoted identifier.
pub(crate) fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// `db.table` or `table` (in `database`).
pub(crate) fn split_table(t: &str, database: &str) -> (String, String) {
    match t.split_once('.') {
        Some((d, n)) if !d.is_empty() && !n.is_empty() => (d.to_owned(), n.to_owned()),
        _ => (database.to_owned(), t.to_owned()),
    }
}

/// One row of text values, `None` for SQL NULL.
pub(crate) async fn query_rows(
    conn: &mut Conn,
    sql: &str,
    context: &str,
) -> Result<Vec<Vec<Option<String>>>, ConnectorError> {
    let rows: Vec<mysql_async::Row> = conn.query(sql).await.map_err(|e| query_error(context, e))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            r.unwrap()
                .into_iter()
                .map(|v| match v {
                    mysql_async::Value::NULL => None,
                    mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                    other => Some(other.as_sql(true).trim_matches('\'').to_owned()),
                })
                .collect()
        })
        .collect())
}

/// A string literal.
pub(crate) fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}
