//! PostgreSQL: the CDC source (logical replication with `pgoutput`) and the sink.

pub mod config;
pub mod pgoutput;
pub mod sink;
pub mod source;
pub mod types;
pub mod wire;

use hstream_runtime::ConnectorError;

pub use config::{Endpoint, PgSinkConfig, PgSourceConfig};
pub use sink::PgSink;
pub use source::{PgOffset, PgSource};
use wire::{ConnectParams, Connection, PgError, TlsParams};

use crate::tls;

impl Endpoint {
    pub(crate) fn params(&self, replication: bool, application_name: &str) -> Result<ConnectParams, ConnectorError> {
        Ok(ConnectParams {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.as_ref().map(|p| p.expose().to_owned()),
            database: self.database.clone(),
            replication,
            application_name: application_name.to_owned(),
            tls: self.tls()?,
        })
    }

    pub(crate) fn tls_files(&self) -> tls::Files<'_> {
        tls::Files {
            ca: self.sslrootcert.as_deref(),
            ca_option: "sslrootcert",
            cert: self.sslcert.as_deref(),
            cert_option: "sslcert",
            key: self.sslkey.as_deref(),
            key_option: "sslkey",
        }
    }

    /// The TLS setup of a TCP connection (`None`: plain text).
    pub(crate) fn tls(&self) -> Result<Option<TlsParams>, ConnectorError> {
        if self.host.starts_with('/') {
            // A Unix socket is never encrypted (as with libpq).
            return Ok(None);
        }
        let (required, check) = match self.sslmode.level().policy(self.sslrootcert.is_some()) {
            tls::Policy::Plain => return Ok(None),
            tls::Policy::Opportunistic => (false, tls::Check::Nothing),
            tls::Policy::Required(check) => (true, check),
        };
        Ok(Some(TlsParams {
            config: tls::client_config(check, &self.tls_files())?,
            server_name: tls::server_name(&self.host, "host")?,
            required,
        }))
    }

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
        if self.sslmode == config::PgSslMode::VerifyCa && self.sslrootcert.is_none() {
            // Against the system's roots with no name check, any publicly trusted certificate
            // would pass: libpq too wants the CA named for verify-ca.
            return Err(ConnectorError::config(
                "sslrootcert: sslmode=verify-ca checks the chain only, so it needs the CA named (or use verify-full)",
            ));
        }
        self.tls_files().validate()
    }

    /// Opens a session; errors say which option is wrong where the server tells.
    pub(crate) async fn connect(
        &self,
        replication: bool,
        application_name: &str,
    ) -> Result<Connection, ConnectorError> {
        Connection::connect(&self.params(replication, application_name)?)
            .await
            .map_err(|e| connect_error(self, replication, e))
    }
}

/// Classifies a connection failure: wrong credentials, database or permissions are config
/// errors naming the option; an unreachable server is external (retried).
pub(crate) fn connect_error(ep: &Endpoint, replication: bool, e: PgError) -> ConnectorError {
    match e.code() {
        Some("28P01") => ConnectorError::config(format!("password: authentication failed for user {:?}", ep.user)),
        Some("28000") if replication => ConnectorError::config(format!(
            "user: {e} (replication connections need a pg_hba.conf entry and the REPLICATION attribute)"
        )),
        Some("28000") => ConnectorError::config("user").with_source(e),
        Some("3D000") => ConnectorError::config("database").with_source(e),
        Some("42501") => ConnectorError::config("user").with_source(e),
        Some("53300") => ConnectorError::external(e.to_string()),
        _ => match &e {
            PgError::Protocol(m) if m.contains("password") => ConnectorError::config(format!("password: {m}")),
            PgError::Tls(..) => tls_error(ep.sslmode, e),
            PgError::Io(_) => {
                ConnectorError::external(format!("host/port: could not connect to {}:{}", ep.host, ep.port))
                    .with_source(e)
            }
            _ => ConnectorError::external(e.to_string()),
        },
    }
}

/// A failed TLS negotiation: a refused certificate or a server without TLS is the TLS options'
/// fault (named); anything else during the handshake is an outage (retried).
fn tls_error(mode: config::PgSslMode, e: PgError) -> ConnectorError {
    if tls::is_certificate_error(&e) {
        ConnectorError::config(format!(
            "sslmode: {} refused: {e} (check sslrootcert, sslcert and sslkey)",
            mode.as_str()
        ))
    } else if matches!(e, PgError::Tls(_, None)) {
        ConnectorError::config(format!("sslmode: {e}"))
    } else {
        ConnectorError::external("TLS").with_source(e)
    }
}

/// A query error during work: the connection's failures are retried, the server's refusals are not.
pub(crate) fn query_error(context: &str, e: PgError) -> ConnectorError {
    match &e {
        PgError::Io(_) => ConnectorError::external(context.to_string()).with_source(e),
        // Connection-level SQLSTATE classes: 08 connection, 57 operator intervention (restart,
        // shutdown), 53 resources, 40 rollbacks (serialization, deadlock).
        PgError::Server { code, .. } if retryable_sqlstate(code) => {
            ConnectorError::external(context.to_string()).with_source(e)
        }
        PgError::Protocol(_) => ConnectorError::external(context.to_string()).with_source(e),
        _ => ConnectorError::config(context.to_string()).with_source(e),
    }
}

/// SQLSTATEs worth a retry: connection (08), operator intervention such as a restart (57),
/// resources (53), rollbacks (40), timeouts (25P03 idle in transaction, 55P03 lock), internal (XX).
pub(crate) fn retryable_sqlstate(code: &str) -> bool {
    ["08", "57", "53", "40", "XX"].iter().any(|c| code.starts_with(c)) || code == "25P03" || code == "55P03"
}

/// `schema.table` split, with `default_schema` for unqualified names (quotes allowed).
pub(crate) fn split_table(name: &str, default_schema: &str) -> (String, String) {
    let unquote = |s: &str| {
        let s = s.trim();
        if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
            s[1..s.len() - 1].replace("\"\"", "\"")
        } else {
            s.to_owned()
        }
    };
    // A dot outside quotes separates schema and table.
    let mut in_quotes = false;
    for (i, c) in name.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            '.' if !in_quotes => return (unquote(&name[..i]), unquote(&name[i + 1..])),
            _ => {}
        }
    }
    (default_schema.to_owned(), unquote(name))
}

/// Columns of a table as the replication stream sends them, with the primary key.
pub(crate) struct TableInfo {
    pub oid: u32,
    pub columns: Vec<(String, u32)>,
    /// Indexes into `columns` of the key: the replica identity index when the table uses one
    /// (REPLICA IDENTITY USING INDEX), else the primary key — what pgoutput marks as key.
    pub key: Vec<usize>,
}

/// Reads a table's columns and key from the catalog; `None` when it does not exist.
pub(crate) async fn table_info(conn: &mut Connection, schema: &str, table: &str) -> Result<Option<TableInfo>, PgError> {
    let qualified = format!("{}.{}", wire::ident(schema), wire::ident(table));
    let rows = conn
        .query(&format!("SELECT to_regclass({})::oid::int8", wire::literal(&qualified)))
        .await?;
    let Some(oid) = rows
        .first()
        .and_then(|r| r[0].as_deref())
        .and_then(|s| s.parse::<u32>().ok())
    else {
        return Ok(None);
    };
    relation_info(conn, oid).await.map(Some)
}

/// Columns (as pgoutput sends them: not dropped, not generated) and key of a relation by OID.
pub(crate) async fn relation_info(conn: &mut Connection, oid: u32) -> Result<TableInfo, PgError> {
    let rows = conn
        .query(&format!(
            "SELECT a.attname, a.atttypid::int8, \
                    coalesce((SELECT true FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid \
                              WHERE i.indrelid = a.attrelid \
                              AND CASE WHEN c.relreplident = 'i' THEN i.indisreplident ELSE i.indisprimary END \
                              AND a.attnum = ANY(i.indkey) LIMIT 1), false) \
             FROM pg_attribute a \
             WHERE a.attrelid = {oid} AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY a.attnum"
        ))
        .await?;
    let mut columns = Vec::new();
    let mut key = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        columns.push((
            r[0].clone().unwrap_or_default(),
            r[1].as_deref().and_then(|s| s.parse().ok()).unwrap_or(25),
        ));
        if r[2].as_deref() == Some("t") {
            key.push(i);
        }
    }
    Ok(TableInfo { oid, columns, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        assert_eq!(split_table("orders", "public"), ("public".into(), "orders".into()));
        assert_eq!(split_table("s.orders", "public"), ("s".into(), "orders".into()));
        assert_eq!(split_table("\"a.b\".\"C\"", "public"), ("a.b".into(), "C".into()));
    }
}
