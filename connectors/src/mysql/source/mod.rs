//! The `mysql` CDC source (MySQL and MariaDB): a consistent snapshot handed off to the binlog
//! position taken under the same consistent read (no gap, no double), then the binlog read as a
//! replica reads it, written to a stream as HStream IO's `{"key", "value"}` records or as
//! Debezium envelopes.
//!
//! Durability: offsets advance only at transaction ends (XID, COMMIT, a standalone DDL), and the
//! runtime stores one only once every record before it is durable in the stream. A restart
//! resumes at that transaction boundary, by GTID (MariaDB) or by file and position; records of a
//! transaction cut short are sent again (at-least-once).

use crate::selection::Selection;
use async_trait::async_trait;
use futures::StreamExt;
use hstream_runtime::{ConnectorError, Done, Offset, Source, SourceOutput};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

pub use crate::cdc::{RecordFormat, SnapshotMode};

pub use super::config::{MySqlSourceConfig, PositionMode};
use super::{Endpoint, ident, query_error, query_rows};

mod gtid_set;
mod incremental;
mod records;
pub mod schema;
mod snapshot;
mod stream;

/// Records per emitted batch at most (a batch is also emitted whenever the socket runs dry).
const MAX_BATCH: usize = 4096;

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
    /// The captured tables, `[database, table]`: one captured later and not listed here gets an
    /// incremental snapshot. Absent (an offset of an older version): every table counts as known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<[String; 2]>>,
    /// Incremental snapshots not finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<crate::cdc::IncrementalOffset>,
}

impl Offset for MySqlOffset {
    const VERSION: u32 = 1;
}

/// MariaDB GTID state: domain → (server, sequence).
pub type GtidState = std::collections::BTreeMap<u32, (u32, u64)>;

/// Whether `startGtid` is a MariaDB GTID position or a MySQL GTID set.
pub(crate) fn valid_start_gtid(g: &str) -> bool {
    parse_gtid_state(g).is_some() || gtid_set::GtidSet::parse(g).is_some()
}

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
    /// Table patterns and column rules.
    selection: Arc<Selection>,
    /// The captured tables, as found at open.
    tables: Vec<(String, String)>,
    /// Incremental snapshots of this run, and the connection that reads their chunks.
    inc: Option<incremental::Incremental>,
    chunk_conn: Option<Conn>,
    /// The signal table (`signalDataCollection`), checked to exist.
    signal: Option<(String, String)>,
    /// initial_only taken again: the position (the new snapshot's) streaming must reach
    /// before the run is complete; until then offsets say the snapshot is not done.
    catch_up: Option<incremental::BinlogPos>,
    /// With transaction metadata: the stream of BEGIN/END records.
    transactions: Option<Arc<str>>,
}

impl MySqlSource {
    /// The captured tables with their descriptions: those named (checked to exist) and those
    /// the patterns match, less the excluded ones. Column rules on key columns are refused.
    async fn tables(
        conn: &mut Conn,
        cfg: &MySqlSourceConfig,
        selection: &Selection,
    ) -> Result<Vec<(String, String, schema::Described)>, ConnectorError> {
        let mut names: Vec<(String, String)> = Vec::new();
        if selection.has_patterns() {
            let rows = query_rows(
                conn,
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' \
                 AND table_schema NOT IN ('mysql', 'sys', 'information_schema', 'performance_schema') ORDER BY 1, 2",
                "listing the tables",
            )
            .await?;
            for r in rows {
                if let [Some(db), Some(t), ..] = r.as_slice() {
                    let q = format!("{db}.{t}");
                    if selection.included(&q) && !selection.excluded(&q) {
                        names.push((db.clone(), t.clone()));
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (db, table, field) in cfg.table_list() {
            if selection.excluded(&format!("{db}.{table}")) {
                continue;
            }
            names.retain(|(d, t)| !(*d == db && *t == table));
            let Some(d) = schema::describe(conn, &db, &table).await? else {
                return Err(ConnectorError::config(format!(
                    "{field}: table {}.{} does not exist (or the user cannot see it)",
                    ident(&db),
                    ident(&table)
                )));
            };
            selection.column_rules(&format!("{db}.{table}"), &d.columns, &d.key)?;
            out.push((db, table, d));
        }
        for (db, table) in names {
            // Dropped since it was listed: nothing to capture.
            if let Some(d) = schema::describe(conn, &db, &table).await? {
                selection.column_rules(&format!("{db}.{table}"), &d.columns, &d.key)?;
                out.push((db, table, d));
            }
        }
        if out.is_empty() {
            return Err(ConnectorError::config(format!(
                "tableIncludeList: no table is left to capture (tables named: {}, after tableExcludeList)",
                cfg.table_list().len()
            )));
        }
        Ok(out)
    }

    /// The signal table, checked to exist with the three columns of Debezium's.
    async fn signal_table(
        conn: &mut Conn,
        cfg: &MySqlSourceConfig,
    ) -> Result<Option<(String, String)>, ConnectorError> {
        let Some((db, table)) = cfg.signal_table() else {
            return Ok(None);
        };
        match schema::describe(conn, &db, &table).await? {
            None => Err(ConnectorError::config(format!(
                "signalDataCollection: table {}.{} does not exist (or the user cannot see it)",
                ident(&db),
                ident(&table)
            ))),
            Some(d) if d.columns.len() < 3 => Err(ConnectorError::config(format!(
                "signalDataCollection: {db}.{table} needs the columns of Debezium's signal table \
                 (id varchar(42), type varchar(32), data varchar(2048)); it has {}",
                d.columns.len()
            ))),
            Some(_) => Ok(Some((db, table))),
        }
    }

    fn offset(&self, file: String, pos: u64, gtid: Option<String>, snapshot_done: bool) -> MySqlOffset {
        MySqlOffset {
            file,
            pos,
            gtid,
            snapshot_done,
            tables: Some(self.tables.iter().map(|(d, t)| [d.clone(), t.clone()]).collect()),
            incremental: None,
        }
    }

    /// Whether the binlog still holds `o`'s position: by GTID where it is resumed by GTID
    /// (MariaDB: every domain at or past where the oldest binlog begins; MySQL: the purged set
    /// inside the stored one), else by its file still being listed.
    async fn position_held(&self, o: &MySqlOffset) -> Result<bool, ConnectorError> {
        let mut conn = self.ep.connect(&[]).await?;
        let files: Vec<String> = query_rows(&mut conn, "SHOW BINARY LOGS", "SHOW BINARY LOGS")
            .await?
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect();
        let by_gtid = self.cfg.position_mode == PositionMode::Gtid && o.gtid.as_deref().is_some_and(|g| !g.is_empty());
        let held = if by_gtid && self.mariadb {
            let stored = parse_gtid_state(o.gtid.as_deref().unwrap_or_default()).unwrap_or_default();
            // The oldest binlog's Gtid_list event: the GTID position where it begins.
            let oldest = match files.first() {
                Some(f) => query_rows(
                    &mut conn,
                    &format!("SHOW BINLOG EVENTS IN {} LIMIT 4", super::literal(f)),
                    "SHOW BINLOG EVENTS",
                )
                .await?
                .into_iter()
                .find(|r| r.get(2).cloned().flatten().as_deref() == Some("Gtid_list"))
                .and_then(|r| r.get(5).cloned().flatten())
                .unwrap_or_default(),
                None => String::new(),
            };
            // The list names each (domain, server) pair: per domain, the highest sequence
            // number is where the binlog begins.
            let mut begins: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
            for part in oldest.trim_matches(|c| c == '[' || c == ']').split(',') {
                if let Some(g) = parse_gtid_state(part) {
                    for (domain, (_, seq)) in g {
                        let e = begins.entry(domain).or_default();
                        *e = (*e).max(seq);
                    }
                }
            }
            // A domain the stored position does not know is left to the server to judge.
            begins
                .iter()
                .all(|(domain, seq)| stored.get(domain).is_none_or(|(_, s)| *s >= *seq))
        } else if by_gtid {
            let rows = query_rows(
                &mut conn,
                &format!(
                    "SELECT GTID_SUBSET(@@GLOBAL.gtid_purged, {})",
                    super::literal(o.gtid.as_deref().unwrap_or_default())
                ),
                "GTID_SUBSET",
            )
            .await?;
            rows.first().and_then(|r| r.first().cloned().flatten()).as_deref() == Some("1")
        } else {
            o.file.is_empty() || files.contains(&o.file)
        };
        let _ = conn.disconnect().await;
        Ok(held)
    }

    /// `o` with this run's table list and incremental progress.
    fn stamped(&self, o: &MySqlOffset) -> MySqlOffset {
        MySqlOffset {
            snapshot_done: o.snapshot_done && self.catch_up.is_none(),
            tables: Some(self.tables.iter().map(|(d, t)| [d.clone(), t.clone()]).collect()),
            incremental: self.inc.as_ref().and_then(incremental::Incremental::offset),
            ..o.clone()
        }
    }

    /// Streaming from `o`: the incremental snapshots it left unfinished go on, and tables
    /// captured now that it did not know get one.
    fn plan_incremental(&mut self, o: &MySqlOffset) {
        let queue = crate::snapshots::SnapshotQueue::resume(
            o.incremental.as_ref(),
            o.tables.as_deref(),
            &self.tables,
            self.cfg.capture.snapshot_mode != SnapshotMode::Never,
        );
        // Kept while tables wait or a signal's pause holds.
        self.inc = queue
            .offset()
            .is_some()
            .then(|| incremental::Incremental::new(queue, self.cfg.incremental_snapshot_chunk_size as usize));
    }
}

#[async_trait]
impl Source for MySqlSource {
    type Config = MySqlSourceConfig;
    type Offset = MySqlOffset;
    const REPLAYS: bool = true;

    async fn check(cfg: &MySqlSourceConfig) -> Result<(), ConnectorError> {
        let mut conn = cfg.endpoint.connect(&[]).await?;
        let info = server_info(&mut conn).await?;
        let tables = Self::tables(&mut conn, cfg, &Selection::new(&cfg.capture)?).await?;
        Self::signal_table(&mut conn, cfg).await?;
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
                    cfg.endpoint.user,
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
        let probe = cfg.endpoint.connect(&[]).await?;
        let request = BinlogStreamRequest::new(cfg.server_id() ^ 0x4000_0000)
            .with_filename(file.as_bytes())
            .with_pos(pos)
            .with_non_blocking();
        let denied = |e: mysql_async::Error| match &e {
            mysql_async::Error::Server(s) if matches!(s.code, 1227 | 1045 | 1142 | 1044) => {
                ConnectorError::config(format!(
                    "user: {:?} cannot read the binlog: it needs REPLICATION SLAVE ({})",
                    cfg.endpoint.user, s.message
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
        let ep = cfg.endpoint.clone();
        let mut conn = ep.connect(&[]).await?;
        let info = server_info(&mut conn).await?;
        let selection = Arc::new(Selection::new(&cfg.capture)?);
        let tables = Self::tables(&mut conn, &cfg, &selection)
            .await?
            .into_iter()
            .map(|(d, t, _)| (d, t))
            .collect();
        let signal = Self::signal_table(&mut conn, &cfg).await?;
        let collations = schema::collations(&mut conn).await?;
        let _ = conn.disconnect().await;
        Ok(MySqlSource {
            ep,
            resume: offset,
            mariadb: info.mariadb,
            collations,
            selection,
            tables,
            inc: None,
            chunk_conn: None,
            transactions: cfg.capture.transaction_stream(&cfg.stream).map(Arc::from),
            signal,
            catch_up: None,
            cfg,
        })
    }

    async fn signal(cfg: &MySqlSourceConfig, kind: &str, data: &serde_json::Value) -> Result<String, ConnectorError> {
        let Some((db, table)) = cfg.signal_table() else {
            return Err(ConnectorError::config(
                "signalDataCollection: this source has no signal table to send signals through",
            ));
        };
        let (id, kind, text) = crate::snapshots::outgoing(kind, data)?;
        let mut conn = cfg.endpoint.connect(&[]).await?;
        // Its first three columns by name: a table with more (a timestamp, say) fills them itself.
        let r = async {
            let columns = schema::describe(&mut conn, &db, &table)
                .await?
                .map(|d| d.columns)
                .filter(|c| c.len() >= 3)
                .ok_or_else(|| {
                    ConnectorError::config(format!(
                        "signalDataCollection: {db}.{table} is gone or has fewer than three columns"
                    ))
                })?;
            let names = columns[..3].iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
            conn.exec_drop(
                format!(
                    "INSERT INTO {}.{} ({names}) VALUES (?, ?, ?)",
                    ident(&db),
                    ident(&table)
                ),
                (id.as_str(), kind.as_str(), text.as_deref()),
            )
            .await
            .map_err(|e| query_error("signalDataCollection: writing the signal", e))
        }
        .await;
        let _ = conn.disconnect().await;
        r.map(|()| id)
    }

    fn stream(cfg: &MySqlSourceConfig) -> &str {
        &cfg.stream
    }

    async fn run(&mut self, out: &mut SourceOutput<MySqlOffset>) -> Result<Done, ConnectorError> {
        let mode = self.cfg.capture.snapshot_mode;
        // A stored position the binlog no longer holds (purged): found before anything is copied
        // or streamed. when_needed and always take a new snapshot without it (rows deleted
        // meanwhile stay in the stream, as with Debezium); the other modes stop, saying so.
        if let Some(o) = self.resume.clone()
            && !(o.snapshot_done && mode == SnapshotMode::InitialOnly)
            && !self.position_held(&o).await?
        {
            if matches!(mode, SnapshotMode::WhenNeeded | SnapshotMode::Always) {
                tracing::warn!(file = %o.file, pos = o.pos, gtid = ?o.gtid, mode = mode.as_str(),
                    "stored binlog position purged: taking a new snapshot (rows deleted since stay in the stream)");
                self.resume = None;
            } else {
                return Err(ConnectorError::config(format!(
                    "snapshotMode: the binlog no longer holds the stored position ({}:{}{}): it was purged \
                     (binlog_expire_logs_seconds / expire_logs_days, PURGE BINARY LOGS); changes since are lost \
                     to this connector (snapshotMode=when_needed takes a new snapshot then; or delete and \
                     re-create the connector)",
                    o.file,
                    o.pos,
                    o.gtid.as_deref().map(|g| format!(", GTIDs {g}")).unwrap_or_default()
                )));
            }
        }
        let start = match self.resume.clone() {
            Some(o) if o.snapshot_done && self.cfg.capture.snapshot_mode == SnapshotMode::InitialOnly => {
                return Ok(Done::Completed);
            }
            Some(o) if o.snapshot_done && self.cfg.capture.snapshot_mode != SnapshotMode::Always => o,
            _ => match self.cfg.capture.snapshot_mode {
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
                    // Rows from an earlier start (a snapshot cut short, an `always` restart):
                    // the changes since replay after this snapshot (see `snapshot`).
                    let earlier = self.resume.clone();
                    if let Some(o) = &earlier {
                        tracing::info!(file = %o.file, pos = o.pos, gtid = ?o.gtid, mode = mode.as_str(),
                            "snapshot taken again; the changes since the stored position follow it");
                    }
                    let (at, done) = self.snapshot(out, earlier).await?;
                    if let Some(done) = done {
                        return Ok(done);
                    }
                    if mode == SnapshotMode::InitialOnly && self.catch_up.is_none() {
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
