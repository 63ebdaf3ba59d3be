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

pub use config::{Endpoint, MySqlSinkConfig, MySqlSourceConfig, PositionMode};
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
        Ok(())
    }

    fn opts(&self, with_db: bool, init: Vec<String>) -> OptsBuilder {
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
        if self.tls {
            o = o.ssl_opts(Some(
                SslOpts::default()
                    .with_danger_accept_invalid_certs(self.tls_skip_verify)
                    .with_danger_skip_domain_validation(self.tls_skip_verify),
            ));
        }
        o
    }

    /// Opens a session (UTC, utf8mb4) on the database; `init` statements run first.
    pub(crate) async fn connect(&self, init: &[&str]) -> Result<Conn, ConnectorError> {
        let mut all = vec!["SET time_zone = '+00:00'".to_owned(), "SET NAMES utf8mb4".to_owned()];
        all.extend(init.iter().map(|s| s.to_string()));
        let connect = Conn::new(self.opts(true, all));
        match tokio::time::timeout(std::time::Duration::from_secs(15), connect).await {
            Ok(r) => r.map_err(|e| connect_error(self, e)),
            Err(_) => Err(ConnectorError::external(format!(
                "host/port: no answer from {}:{} within 15 s",
                self.host, self.port
            ))),
        }
    }
}

/// Classifies a connection failure: wrong credentials, database or permissions are config
/// errors naming the option; an unreachable server is external (retried).
pub(crate) fn connect_error(ep: &Endpoint, e: mysql_async::Error) -> ConnectorError {
    match e {
        mysql_async::Error::Server(ref s) => match s.code {
            1045 => ConnectorError::config(format!("password: access denied for user {:?}", ep.user)),
            1044 | 1049 => ConnectorError::config(format!("database: {} (error {})", s.message, s.code)),
            _ => query_error("connect", e),
        },
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
