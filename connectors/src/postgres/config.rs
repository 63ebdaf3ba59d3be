//! The PostgreSQL family's configuration: the server endpoint the source and the sink share,
//! and each one's options (HStream IO's and Debezium's names). Every error names the option.

use hstream_runtime::{ConnectorConfig, ConnectorError, Secret};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::cdc::{Capture, RecordFormat, SnapshotMode};
use crate::changes;

use super::split_table;

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    5432
}
pub(crate) fn default_schema() -> String {
    "public".into()
}

/// A PostgreSQL server and the login to it, shared by the source and the sink. Its secret
/// (`password`) shows as a mask in `Debug`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Server host name or address, or a Unix socket directory (starting with `/`).
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    #[schemars(range(min = 1))]
    pub port: u16,
    /// The role to log in as; the source's needs the REPLICATION attribute (or to be a
    /// superuser).
    pub user: String,
    #[serde(default)]
    pub password: Option<Secret>,
    pub database: String,
    /// TLS, as libpq's `sslmode`: `disable`, `prefer` (encrypt when the server offers it,
    /// certificate unchecked), `require` (encrypt or fail; with `sslrootcert` also check the
    /// chain), `verify-ca` (the chain), `verify-full` (the chain and the host name). A Unix
    /// socket is never encrypted.
    #[serde(default)]
    pub sslmode: PgSslMode,
    /// CA certificates (PEM) to check the server's against; default: the system's roots.
    #[serde(default)]
    pub sslrootcert: Option<String>,
    /// Client certificate (PEM), for servers that authenticate by certificate.
    #[serde(default)]
    pub sslcert: Option<String>,
    /// The client certificate's private key (PEM, unencrypted).
    #[serde(default)]
    pub sslkey: Option<String>,
}

/// libpq's `sslmode` values (`allow` is taken as `prefer`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PgSslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl PgSslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PgSslMode::Disable => "disable",
            PgSslMode::Allow => "allow",
            PgSslMode::Prefer => "prefer",
            PgSslMode::Require => "require",
            PgSslMode::VerifyCa => "verify-ca",
            PgSslMode::VerifyFull => "verify-full",
        }
    }

    pub fn level(self) -> crate::tls::Level {
        use crate::tls::Level;
        match self {
            PgSslMode::Disable => Level::Disable,
            PgSslMode::Allow | PgSslMode::Prefer => Level::Prefer,
            PgSslMode::Require => Level::Require,
            PgSslMode::VerifyCa => Level::VerifyCa,
            PgSslMode::VerifyFull => Level::VerifyFull,
        }
    }
}

/// Configuration of the `postgresql` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(
    title = "postgresql",
    description = "Change data capture from PostgreSQL by logical replication (pgoutput)."
)]
pub struct PgSourceConfig {
    /// Stream the change records are appended to (created if missing).
    pub stream: String,
    /// The server (its options are flattened into this config).
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// The tables, the snapshot mode and the record format.
    #[serde(flatten)]
    pub capture: Capture,
    /// Schema of unqualified table names.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// Replication slot; default `hstream_<stream>`.
    #[serde(default)]
    pub slot_name: Option<String>,
    /// Publication; default `hstream_<stream>`.
    #[serde(default)]
    pub publication_name: Option<String>,
    /// Create the publication for the tables if missing, and keep its table list in step.
    #[serde(default = "yes")]
    pub publication_autocreate: bool,
    /// How often to tell the server our position (keeps an idle slot from retaining WAL).
    #[serde(default = "default_heartbeat")]
    #[schemars(range(min = 100, max = 30000))]
    pub heartbeat_interval_ms: u64,
    /// Drop the replication slot when the connector is deleted; by default only the slot it
    /// named itself (no `slotName` given).
    #[serde(default)]
    pub drop_slot_on_delete: Option<bool>,
    /// Receive large transactions while in progress (pgoutput protocol 2, PostgreSQL 14+); they
    /// are held until they commit.
    #[serde(default)]
    pub streaming: bool,
    /// With streaming: memory for transactions in progress; past it a transaction goes to a
    /// temporary file until it commits.
    #[serde(default = "default_streaming_memory")]
    #[schemars(range(min = 65536))]
    pub streaming_memory_bytes: u64,
    /// Rows per chunk of an incremental snapshot (a table that joins the capture later is
    /// copied in key order, a chunk at a time, while streaming goes on; PostgreSQL 14+).
    #[serde(default = "default_chunk_size")]
    #[schemars(range(min = 1, max = 1000000))]
    pub incremental_snapshot_chunk_size: u32,
}

fn default_chunk_size() -> u32 {
    1024
}

fn yes() -> bool {
    true
}
fn default_heartbeat() -> u64 {
    10_000
}
fn default_streaming_memory() -> u64 {
    64 << 20
}

/// `hstream_<stream>` made a valid slot name (lower case, digits, underscores; 63 bytes).
fn derived_name(stream: &str) -> String {
    let mut s: String = format!("hstream_{stream}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(63);
    s
}

impl PgSourceConfig {
    pub fn slot(&self) -> String {
        self.slot_name.clone().unwrap_or_else(|| derived_name(&self.stream))
    }

    pub fn publication(&self) -> String {
        self.publication_name
            .clone()
            .unwrap_or_else(|| derived_name(&self.stream))
    }

    /// The signal table, `(schema, table)`.
    pub(crate) fn signal_table(&self) -> Option<(String, String)> {
        self.capture
            .signal_data_collection
            .as_deref()
            .map(|t| split_table(t, &self.schema))
    }

    /// `(schema, table)` of every captured table, with the option each came from.
    pub(crate) fn table_list(&self) -> Vec<(String, String, &'static str)> {
        let mut v: Vec<(String, String, &'static str)> = Vec::new();
        for (t, field) in self
            .capture
            .table
            .iter()
            .map(|t| (t, "table"))
            .chain(self.capture.tables.iter().map(|t| (t, "tables")))
        {
            let (s, n) = split_table(t, &self.schema);
            if !v.iter().any(|(a, b, _)| *a == s && *b == n) {
                v.push((s, n, field));
            }
        }
        v
    }
}

impl ConnectorConfig for PgSourceConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        if self.stream.is_empty() {
            return Err(ConnectorError::config("stream: must not be empty"));
        }
        self.endpoint.validate()?;
        self.capture.validate()?;
        self.capture.validate_streams(&self.stream)?;
        crate::selection::Selection::new(&self.capture)?;
        let slot = self.slot();
        if slot.is_empty()
            || slot.len() > 63
            || !slot
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(ConnectorError::config(
                "slotName: only lower case letters, digits and underscores, at most 63",
            ));
        }
        if self.capture.provide_transaction_metadata && self.streaming {
            return Err(ConnectorError::config(
                "provideTransactionMetadata: not with streaming=true (a transaction received while in progress has no \
                 counted order yet); turn one of them off",
            ));
        }
        if !(1..=1_000_000).contains(&self.incremental_snapshot_chunk_size) {
            return Err(ConnectorError::config(
                "incrementalSnapshotChunkSize: from 1 to 1000000",
            ));
        }
        if self.publication().is_empty() {
            return Err(ConnectorError::config("publicationName: must not be empty"));
        }
        Ok(())
    }
}

/// Configuration of the `postgresql` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(
    title = "postgresql",
    description = "Applies a stream's change records to a PostgreSQL table."
)]
pub struct PgSinkConfig {
    /// Stream the records are read from.
    pub stream: String,
    /// The server.
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// The target table, or how each record's is named.
    #[serde(flatten)]
    pub targets: changes::Targets,
    #[serde(default = "default_schema")]
    pub schema: String,
}

impl ConnectorConfig for PgSinkConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        if self.stream.is_empty() {
            return Err(ConnectorError::config("stream: must not be empty"));
        }
        self.targets.validate()?;
        self.endpoint.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_are_valid_slot_names() {
        assert_eq!(derived_name("Orders-CDC.v2"), "hstream_orders_cdc_v2");
        assert!(derived_name(&"x".repeat(100)).len() <= 63);
    }
}
