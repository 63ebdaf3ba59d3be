//! The `mysql` CDC source (MySQL and MariaDB): a consistent snapshot handed off to the binlog
//! position taken under the same consistent read (no gap, no double), then the binlog read as a
//! replica reads it, written to a stream as HStream IO's `{"key", "value"}` records or as
//! Debezium envelopes.
//!
//! Durability: offsets advance only at transaction ends (XID, COMMIT, a standalone DDL), and the
//! runtime stores one only once every record before it is durable in the stream. A restart
//! resumes at that transaction boundary, by GTID (MariaDB) or by file and position; records of a
//! transaction cut short are sent again (at-least-once).

use async_trait::async_trait;
use futures::StreamExt;
use hstream_runtime::{ConnectorConfig, ConnectorError, Done, Offset, Secret, Source, SourceOutput};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub use crate::cdc::{RecordFormat, SnapshotMode};

use super::{Endpoint, default_host, default_port, ident, query_error, query_rows, split_table};

mod gtid_set;
mod records;
pub mod schema;
mod snapshot;
mod stream;

/// Records per emitted batch at most (a batch is also emitted whenever the socket runs dry).
const MAX_BATCH: usize = 4096;

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
    /// Server host name or address, or a Unix socket path (starting with `/`).
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    #[schemars(range(min = 1))]
    pub port: u16,
    /// A user with SELECT, RELOAD, SHOW DATABASES, LOCK TABLES, REPLICATION SLAVE and
    /// REPLICATION CLIENT (BINLOG MONITOR on MariaDB 10.5+).
    pub user: String,
    #[serde(default)]
    pub password: Option<Secret>,
    pub database: String,
    /// One table to capture (HStream IO's option); unqualified names are in `database`.
    #[serde(default)]
    pub table: Option<String>,
    /// Tables to capture (a table include list); unqualified names are in `database`.
    #[serde(default)]
    pub tables: Vec<String>,
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
    pub snapshot_mode: SnapshotMode,
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
    #[serde(default)]
    pub format: RecordFormat,
    /// Require TLS.
    #[serde(default)]
    pub tls: bool,
    /// With tls: accept any server certificate (testing only).
    #[serde(default)]
    pub tls_skip_verify: bool,
}

fn default_heartbeat() -> u64 {
    10_000
}

impl MySqlSourceConfig {
    pub(crate) fn endpoint(&self) -> Endpoint {
        Endpoint {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            database: self.database.clone(),
            tls: self.tls,
            tls_skip_verify: self.tls_skip_verify,
        }
    }

    /// `(database, table, option)` of every captured table.
    fn table_list(&self) -> Vec<(String, String, &'static str)> {
        let mut v: Vec<(String, String, &'static str)> = Vec::new();
        for (t, field) in self
            .table
            .iter()
            .map(|t| (t, "table"))
            .chain(self.tables.iter().map(|t| (t, "tables")))
        {
            let (d, n) = split_table(t, &self.database);
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
        self.endpoint().validate()?;
        if self.table.is_none() && self.tables.is_empty() {
            return Err(ConnectorError::config("table: name a table (or list them in tables)"));
        }
        if self.table.as_deref() == Some("") || self.tables.iter().any(String::is_empty) {
            return Err(ConnectorError::config("table: table names must not be empty"));
        }
        if self.server_id == Some(0) {
            return Err(ConnectorError::config("serverId: must be at least 1"));
        }
        if self.snapshot_mode != SnapshotMode::Never
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
            && parse_gtid_state(g).is_none()
            && gtid_set::GtidSet::parse(g).is_none()
        {
            return Err(ConnectorError::config(format!(
                "startGtid: {g:?} is neither a MariaDB GTID position (domain-server-sequence, comma separated) \
                 nor a MySQL GTID set (uuid:1-5:7, comma separated)"
            )));
        }
        Ok(())
    }
}

/// Where the source stands: the binlog position after the last transaction in the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MySqlOffset {
    pub file: String,
    pub pos: u64,
    /// The GTIDs at the same point: MariaDB's position (`domain-server-seq` per domain), or
    /// MySQL's executed set (`uuid:1-5`, when the server runs with gtid_mode=ON).
    #[serde(default)]
    pub gtid: Option<String>,
    /// The initial snapshot is complete (or was not wanted).
    pub snapshot_done: bool,
}

impl Offset for MySqlOffset {
    const VERSION: u32 = 1;
}

/// MariaDB GTID state: domain → (server, sequence).
pub type GtidState = std::collections::BTreeMap<u32, (u32, u64)>;

pub fn parse_gtid_state(s: &str) -> Option<GtidState> {
    let mut st = GtidState::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut it = part.split('-');
        let (d, srv, seq) = (
            it.next()?.parse().ok()?,
            it.next()?.parse().ok()?,
            it.next()?.parse().ok()?,
        );
        if it.next().is_some() {
            return None;
        }
        st.insert(d, (srv, seq));
    }
    Some(st)
}

pub fn format_gtid_state(st: &GtidState) -> String {
    st.iter()
        .map(|(d, (s, n))| format!("{d}-{s}-{n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The server's binlog settings and flavour.
struct ServerInfo {
    mariadb: bool,
}

async fn server_info(conn: &mut Conn) -> Result<ServerInfo, ConnectorError> {
    let row = query_rows(
        conn,
        "SELECT @@version, @@log_bin, @@binlog_format, @@binlog_row_image",
        "reading the binlog settings",
    )
    .await?
    .into_iter()
    .next()
    .unwrap_or_default();
    let get = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let version = get(0);
    if !matches!(get(1).as_str(), "1" | "ON") {
        return Err(ConnectorError::config(
            "the server's binary log is off (log_bin); CDC needs log_bin=ON and binlog_format=ROW in the server's \
             configuration (restart needed)",
        ));
    }
    let format = get(2);
    if !format.eq_ignore_ascii_case("ROW") {
        return Err(ConnectorError::config(format!(
            "the server writes binlog_format={format}; CDC needs binlog_format=ROW \
             (SET GLOBAL binlog_format=ROW and in the server's configuration)"
        )));
    }
    let image = get(3);
    if !image.eq_ignore_ascii_case("FULL") {
        return Err(ConnectorError::config(format!(
            "the server writes binlog_row_image={image}; CDC needs binlog_row_image=FULL \
             (SET GLOBAL binlog_row_image=FULL and in the server's configuration)"
        )));
    }
    // binlog_row_metadata exists from MariaDB 10.5 and MySQL 8.0.1.
    let metadata = query_rows(conn, "SELECT @@binlog_row_metadata", "reading binlog_row_metadata")
        .await
        .ok()
        .and_then(|r| r.into_iter().next())
        .and_then(|r| r.into_iter().next().flatten())
        .unwrap_or_default();
    // Without it a TABLE_MAP carries no column names: rows would be decoded against today's
    // columns, and after a schema change silently mislabelled. Refused rather than guessed.
    if !metadata.eq_ignore_ascii_case("FULL") {
        let now = if metadata.is_empty() {
            "no binlog_row_metadata (MySQL before 8.0.1, MariaDB before 10.5)".to_owned()
        } else {
            format!("binlog_row_metadata={metadata}")
        };
        return Err(ConnectorError::config(format!(
            "the server writes {now}; CDC needs binlog_row_metadata=FULL, so that each row is decoded by the \
             columns it was written with (SET GLOBAL binlog_row_metadata=FULL and in the server's configuration)"
        )));
    }
    Ok(ServerInfo {
        mariadb: version.to_lowercase().contains("mariadb"),
    })
}

/// The current end of the binlog: file, position and (MariaDB) the GTID position there.
async fn current_position(conn: &mut Conn, mariadb: bool) -> Result<(String, u64, Option<String>), ConnectorError> {
    let rows = match query_rows(conn, "SHOW MASTER STATUS", "SHOW MASTER STATUS").await {
        Ok(r) => r,
        // MySQL 8.4 renamed it.
        Err(_) if !mariadb => query_rows(conn, "SHOW BINARY LOG STATUS", "SHOW BINARY LOG STATUS").await?,
        Err(e) => return Err(e),
    };
    let row = rows.into_iter().next().ok_or_else(|| {
        ConnectorError::config("SHOW MASTER STATUS returned nothing: the binary log is off (log_bin)")
    })?;
    let file = row.first().cloned().flatten().unwrap_or_default();
    let pos: u64 = row.get(1).cloned().flatten().and_then(|s| s.parse().ok()).unwrap_or(4);
    let gtid = if mariadb {
        gtid_at(conn, &file, pos).await?
    } else {
        row.get(4).cloned().flatten().filter(|s| !s.is_empty())
    };
    Ok((file, pos, gtid))
}

/// MariaDB's GTID position at a binlog file and position.
async fn gtid_at(conn: &mut Conn, file: &str, pos: u64) -> Result<Option<String>, ConnectorError> {
    let rows = query_rows(
        conn,
        &format!("SELECT BINLOG_GTID_POS({}, {pos})", super::literal(file)),
        "BINLOG_GTID_POS",
    )
    .await?;
    Ok(rows.into_iter().next().and_then(|r| r.into_iter().next().flatten()))
}

pub struct MySqlSource {
    cfg: MySqlSourceConfig,
    ep: Endpoint,
    resume: Option<MySqlOffset>,
    mariadb: bool,
    collations: HashMap<u16, String>,
}

impl MySqlSource {
    /// The captured tables, checked to exist, with their descriptions.
    async fn tables(
        conn: &mut Conn,
        cfg: &MySqlSourceConfig,
    ) -> Result<Vec<(String, String, schema::Described)>, ConnectorError> {
        let mut out = Vec::new();
        for (db, table, field) in cfg.table_list() {
            let Some(d) = schema::describe(conn, &db, &table).await? else {
                return Err(ConnectorError::config(format!(
                    "{field}: table {}.{} does not exist (or the user cannot see it)",
                    ident(&db),
                    ident(&table)
                )));
            };
            out.push((db, table, d));
        }
        Ok(out)
    }

    fn offset(&self, file: String, pos: u64, gtid: Option<String>, snapshot_done: bool) -> MySqlOffset {
        MySqlOffset {
            file,
            pos,
            gtid,
            snapshot_done,
        }
    }
}

#[async_trait]
impl Source for MySqlSource {
    type Config = MySqlSourceConfig;
    type Offset = MySqlOffset;

    async fn check(cfg: &MySqlSourceConfig) -> Result<(), ConnectorError> {
        let mut conn = cfg.endpoint().connect(&[]).await?;
        let info = server_info(&mut conn).await?;
        let tables = Self::tables(&mut conn, cfg).await?;
        for (db, t, _) in &tables {
            conn.query_drop(format!("SELECT 1 FROM {}.{} LIMIT 0", ident(db), ident(t)))
                .await
                .map_err(|e| query_error(&format!("table: reading {db}.{t}"), e))?;
        }
        // The binlog's position needs REPLICATION CLIENT (BINLOG MONITOR on MariaDB 10.5+).
        current_position(&mut conn, info.mariadb).await.map_err(|e| {
            if e.to_string().contains("privilege") || e.to_string().contains("denied") {
                ConnectorError::config(format!(
                    "user: {:?} cannot read the binlog position: it needs {} ({e})",
                    cfg.user,
                    if info.mariadb {
                        "BINLOG MONITOR"
                    } else {
                        "REPLICATION CLIENT"
                    }
                ))
            } else {
                e
            }
        })?;
        // Reading the binlog needs REPLICATION SLAVE: register and read without blocking from the
        // current end, under a server id of its own (a running reader of this config keeps its own).
        let (file, pos, _) = current_position(&mut conn, info.mariadb).await?;
        let probe = cfg.endpoint().connect(&[]).await?;
        let request = BinlogStreamRequest::new(cfg.server_id() ^ 0x4000_0000)
            .with_filename(file.as_bytes())
            .with_pos(pos)
            .with_non_blocking();
        let denied = |e: mysql_async::Error| match &e {
            mysql_async::Error::Server(s) if matches!(s.code, 1227 | 1045 | 1142 | 1044) => {
                ConnectorError::config(format!(
                    "user: {:?} cannot read the binlog: it needs REPLICATION SLAVE ({})",
                    cfg.user, s.message
                ))
            }
            _ => query_error("reading the binlog", e),
        };
        let mut binlog = probe.get_binlog_stream(request).await.map_err(denied)?;
        if let Some(Err(e)) = binlog.next().await {
            return Err(denied(e));
        }
        let _ = binlog.close().await;
        let _ = conn.disconnect().await;
        Ok(())
    }

    async fn open(cfg: MySqlSourceConfig, offset: Option<MySqlOffset>) -> Result<Self, ConnectorError> {
        let ep = cfg.endpoint();
        let mut conn = ep.connect(&[]).await?;
        let info = server_info(&mut conn).await?;
        Self::tables(&mut conn, &cfg).await?;
        let collations = schema::collations(&mut conn).await?;
        let _ = conn.disconnect().await;
        Ok(MySqlSource {
            cfg,
            ep,
            resume: offset,
            mariadb: info.mariadb,
            collations,
        })
    }

    fn stream(cfg: &MySqlSourceConfig) -> &str {
        &cfg.stream
    }

    async fn run(&mut self, out: &mut SourceOutput<MySqlOffset>) -> Result<Done, ConnectorError> {
        let start = match self.resume.clone() {
            Some(o) if o.snapshot_done && self.cfg.snapshot_mode == SnapshotMode::InitialOnly => {
                return Ok(Done::Completed);
            }
            Some(o) if o.snapshot_done => o,
            _ => match self.cfg.snapshot_mode {
                SnapshotMode::Never => {
                    let o = match (&self.cfg.start_file, &self.cfg.start_gtid) {
                        (Some(file), _) => {
                            let pos = self.cfg.start_position.unwrap_or(4);
                            let gtid = if self.mariadb {
                                let mut conn = self.ep.connect(&[]).await?;
                                let g = gtid_at(&mut conn, file, pos).await?;
                                let _ = conn.disconnect().await;
                                g
                            } else {
                                None
                            };
                            self.offset(file.clone(), pos, gtid, true)
                        }
                        (None, Some(g)) => self.offset(String::new(), 4, Some(g.clone()), true),
                        (None, None) => {
                            let mut conn = self.ep.connect(&[]).await?;
                            let (file, pos, gtid) = current_position(&mut conn, self.mariadb).await?;
                            let _ = conn.disconnect().await;
                            self.offset(file, pos, gtid, true)
                        }
                    };
                    out.emit(Vec::new(), o.clone()).await?;
                    o
                }
                mode => {
                    let (at, done) = self.snapshot(out).await?;
                    if let Some(done) = done {
                        return Ok(done);
                    }
                    if mode == SnapshotMode::InitialOnly {
                        return Ok(Done::Completed);
                    }
                    at
                }
            },
        };
        self.resume = Some(start.clone());
        self.stream(start, out).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_states() {
        let st = parse_gtid_state("0-1-50011, 2-7-3").unwrap();
        assert_eq!(st.get(&0), Some(&(1, 50011)));
        assert_eq!(format_gtid_state(&st), "0-1-50011,2-7-3");
        assert!(parse_gtid_state("0-1").is_none());
        assert!(parse_gtid_state("a-b-c").is_none());
        assert_eq!(parse_gtid_state("").unwrap().len(), 0);
    }

    #[test]
    fn derived_server_ids_are_stable_and_large() {
        let cfg: MySqlSourceConfig = serde_json::from_value(serde_json::json!({
            "stream": "orders", "user": "u", "database": "d", "table": "t"
        }))
        .unwrap();
        assert_eq!(cfg.server_id(), cfg.server_id());
        assert!(cfg.server_id() >= 100_000);
    }
}
