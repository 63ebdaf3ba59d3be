//! The MySQL family's configuration (MySQL and MariaDB): the server endpoint the source and the
//! sink share, and each one's options (HStream IO's and Debezium's names). Every error names
//! the option.

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
    3306
}

/// A MySQL or MariaDB server and the login to it, shared by the source and the sink. Its
/// secret (`password`) shows as a mask in `Debug`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Server host name or address, or a Unix socket path (starting with `/`).
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    #[schemars(range(min = 1))]
    pub port: u16,
    /// The user to log in as; the source's needs SELECT, RELOAD, SHOW DATABASES, LOCK TABLES,
    /// REPLICATION SLAVE and REPLICATION CLIENT (BINLOG MONITOR on MariaDB 10.5+).
    pub user: String,
    #[serde(default)]
    pub password: Option<Secret>,
    /// The default database (of unqualified table names).
    pub database: String,
    /// TLS, as MySQL's `--ssl-mode` (Debezium's `database.ssl.mode`): `disabled`, `preferred`
    /// (encrypt when the server offers it, certificate unchecked), `required` (encrypt or fail;
    /// with `sslCa` also check the chain), `verify_ca` (the chain; for now also the host name,
    /// a limit of the MySQL client library), `verify_identity` (the chain and the host name).
    /// Default `preferred`; `disabled` when `tls` is false. A Unix socket is never encrypted.
    #[serde(default)]
    pub ssl_mode: Option<MySqlSslMode>,
    /// CA certificates (PEM) to check the server's against; default: the system's roots.
    #[serde(default)]
    pub ssl_ca: Option<String>,
    /// Client certificate (PEM), for users that `REQUIRE X509`.
    #[serde(default)]
    pub ssl_cert: Option<String>,
    /// The client certificate's private key (PEM, unencrypted).
    #[serde(default)]
    pub ssl_key: Option<String>,
    /// Older option: true is `sslMode=verify_identity` (`required` with `tlsSkipVerify`), false
    /// is `disabled`.
    #[serde(default)]
    pub tls: Option<bool>,
    /// With tls: accept any server certificate.
    #[serde(default)]
    pub tls_skip_verify: bool,
}

/// MySQL's `--ssl-mode` values, in Debezium's spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MySqlSslMode {
    Disabled,
    Preferred,
    Required,
    VerifyCa,
    VerifyIdentity,
}

impl MySqlSslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MySqlSslMode::Disabled => "disabled",
            MySqlSslMode::Preferred => "preferred",
            MySqlSslMode::Required => "required",
            MySqlSslMode::VerifyCa => "verify_ca",
            MySqlSslMode::VerifyIdentity => "verify_identity",
        }
    }

    pub fn level(self) -> crate::tls::Level {
        use crate::tls::Level;
        match self {
            MySqlSslMode::Disabled => Level::Disable,
            MySqlSslMode::Preferred => Level::Prefer,
            MySqlSslMode::Required => Level::Require,
            MySqlSslMode::VerifyCa => Level::VerifyCa,
            MySqlSslMode::VerifyIdentity => Level::VerifyFull,
        }
    }
}

/// How the position is tracked and resumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PositionMode {
    /// By GTID where the server has them (MariaDB always), else by file and position.
    #[default]
    Gtid,
    /// By binlog file name and position.
    File,
}

/// Configuration of the `mysql` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(
    title = "mysql",
    description = "Change data capture from MySQL or MariaDB by reading the binlog (ROW format)."
)]
pub struct MySqlSourceConfig {
    /// Stream the change records are appended to (created if missing).
    pub stream: String,
    /// The server (its options are flattened into this config).
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// The tables, the snapshot mode and the record format.
    #[serde(flatten)]
    pub capture: Capture,
    /// Accepted for HStream IO compatibility. TIMESTAMP values are always read in UTC (and
    /// written with `Z`); DATETIME values carry no zone.
    #[serde(default)]
    pub server_time_zone: Option<String>,
    /// Replica server id this reader registers with; unique among the server's replicas.
    /// Default: derived from the stream name.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub server_id: Option<u32>,
    #[serde(default)]
    pub position_mode: PositionMode,
    /// With snapshotMode=never: the binlog file to start from (default: the current end).
    #[serde(default)]
    pub start_file: Option<String>,
    /// With startFile: the position in it (default 4, the file's start).
    #[serde(default)]
    pub start_position: Option<u64>,
    /// With snapshotMode=never: the GTIDs to start after, MariaDB's position
    /// (`domain-server-seq`, comma separated) or MySQL's executed set (`uuid:1-5:7`, comma
    /// separated).
    #[serde(default)]
    pub start_gtid: Option<String>,
    /// How often the server sends a heartbeat on an idle binlog (a silent connection is dropped
    /// and reopened after three missed ones).
    #[serde(default = "default_heartbeat")]
    #[schemars(range(min = 100, max = 60000))]
    pub heartbeat_interval_ms: u64,
    /// Rows per chunk of an incremental snapshot (a table that joins the capture later is
    /// copied in key order, a chunk at a time, while the binlog streams).
    #[serde(default = "default_chunk_size")]
    #[schemars(range(min = 1, max = 1000000))]
    pub incremental_snapshot_chunk_size: u32,
}

fn default_chunk_size() -> u32 {
    1024
}

fn default_heartbeat() -> u64 {
    10_000
}

impl MySqlSourceConfig {
    /// The signal table, `(database, table)`.
    pub(crate) fn signal_table(&self) -> Option<(String, String)> {
        self.capture
            .signal_data_collection
            .as_deref()
            .map(|t| split_table(t, &self.endpoint.database))
    }

    /// `(database, table, option)` of every captured table.
    pub(crate) fn table_list(&self) -> Vec<(String, String, &'static str)> {
        let mut v: Vec<(String, String, &'static str)> = Vec::new();
        for (t, field) in self
            .capture
            .table
            .iter()
            .map(|t| (t, "table"))
            .chain(self.capture.tables.iter().map(|t| (t, "tables")))
        {
            let (d, n) = split_table(t, &self.endpoint.database);
            if !v.iter().any(|(a, b, _)| *a == d && *b == n) {
                v.push((d, n, field));
            }
        }
        v
    }

    pub fn server_id(&self) -> u32 {
        self.server_id.unwrap_or_else(|| {
            // FNV-1a of the stream name, kept clear of small ids people give their servers.
            let h = self
                .stream
                .bytes()
                .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
            100_000 + h % 2_000_000_000
        })
    }
}

impl ConnectorConfig for MySqlSourceConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        if self.stream.is_empty() {
            return Err(ConnectorError::config("stream: must not be empty"));
        }
        self.endpoint.validate()?;
        self.capture.validate()?;
        self.capture.validate_streams(&self.stream)?;
        crate::selection::Selection::new(&self.capture)?;
        if self.server_id == Some(0) {
            return Err(ConnectorError::config("serverId: must be at least 1"));
        }
        if !(1..=1_000_000).contains(&self.incremental_snapshot_chunk_size) {
            return Err(ConnectorError::config(
                "incrementalSnapshotChunkSize: from 1 to 1000000",
            ));
        }
        if self.capture.snapshot_mode != SnapshotMode::Never
            && (self.start_file.is_some() || self.start_gtid.is_some() || self.start_position.is_some())
        {
            return Err(ConnectorError::config(
                "startFile: startFile/startPosition/startGtid apply only with snapshotMode=never",
            ));
        }
        if self.start_position.is_some() && self.start_file.is_none() {
            return Err(ConnectorError::config("startPosition: needs startFile"));
        }
        if let Some(g) = &self.start_gtid
            && !super::source::valid_start_gtid(g)
        {
            return Err(ConnectorError::config(format!(
                "startGtid: {g:?} is neither a MariaDB GTID position (domain-server-sequence, comma separated) \
                 nor a MySQL GTID set (uuid:1-5:7, comma separated)"
            )));
        }
        Ok(())
    }
}

/// Configuration of the `mysql` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(
    title = "mysql",
    description = "Applies a stream's change records to a MySQL or MariaDB table."
)]
pub struct MySqlSinkConfig {
    /// Stream the records are read from.
    pub stream: String,
    /// The server.
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// The target table, or how each record's is named.
    #[serde(flatten)]
    pub targets: changes::Targets,
}

impl ConnectorConfig for MySqlSinkConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        if self.stream.is_empty() {
            return Err(ConnectorError::config("stream: must not be empty"));
        }
        self.targets.validate()?;
        self.endpoint.validate()
    }
}
