//! The `postgresql` CDC source: a consistent snapshot handed off to logical replication
//! (`pgoutput`) with no gap and no double, written to a stream as HStream IO's CDC records
//! (`{"key", "value"}`) or as Debezium envelopes.
//!
//! Durability: the flush LSN confirmed to PostgreSQL is the runtime's committed offset, which
//! exists only once every record before it is durable in the stream and checkpointed. Offsets
//! advance only at transaction ends (a commit's end LSN, or the server's sent position while no
//! transaction is open), so a restart resumes at a transaction boundary; records of a transaction
//! cut short by a crash are sent again (at-least-once).

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hstream_runtime::{ConnectorError, Done, Offset, Source, SourceOutput};
use serde::{Deserialize, Serialize};

pub use crate::cdc::{RecordFormat, SnapshotMode};

pub use super::config::PgSourceConfig;
use super::types::{PgType, TypeMap};
use super::wire::{Connection, format_lsn, ident, literal};
use super::{Endpoint, query_error};
use crate::selection::Selection;
use incremental::Incremental;
pub use incremental::IncrementalOffset;

mod incremental;
mod publication;
mod records;
mod slot;
mod snapshot;
mod spill;
mod stream;

/// Records per emitted batch at most (a batch is also emitted whenever the socket runs dry).
const MAX_BATCH: usize = 4096;
/// Rows fetched per snapshot round trip.
const SNAPSHOT_FETCH: usize = 4096;
/// How long deleting a connector waits for its slot to be released.
const DROP_SLOT_WAIT: Duration = Duration::from_secs(8);
/// The comment that marks a publication this connector created (its table list is ours to keep
/// equal to `tables`; a publication someone else made only ever gains tables).
const OWN_PUBLICATION: &str = "created by an HStream CDC source; its tables follow the connector's";
/// Microseconds from the Unix epoch to PostgreSQL's.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// Where the source stands: the slot, and the LSN up to which everything is in the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PgOffset {
    pub slot: String,
    pub lsn: u64,
    /// The initial snapshot is complete (or was not wanted).
    pub snapshot_done: bool,
    /// The captured tables, `[schema, table]`: one captured later and not listed here gets an
    /// incremental snapshot. Absent (an offset of an older version): every table counts as known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<[String; 2]>>,
    /// Incremental snapshots not finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<IncrementalOffset>,
}

impl Offset for PgOffset {
    const VERSION: u32 = 1;
}

/// Learns the kinds of the user-defined types among `oids` (and what they refer to).
/// The server's `server_version_num` (150004 for 15.4).
async fn server_version(conn: &mut Connection) -> Result<u32, ConnectorError> {
    let rows = conn
        .query("SHOW server_version_num")
        .await
        .map_err(|e| query_error("SHOW server_version_num", e))?;
    Ok(rows
        .first()
        .and_then(|r| r[0].as_deref())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}

async fn learn_types(conn: &mut Connection, types: &mut TypeMap, oids: &[u32]) -> Result<(), ConnectorError> {
    let mut want: Vec<u32> = oids.iter().copied().filter(|o| !types.is_known(*o)).collect();
    let mut rows = Vec::new();
    for _ in 0..4 {
        if want.is_empty() {
            break;
        }
        let list = want.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let got = conn
            .query(&format!(
                "SELECT oid::int8, typtype::text, typelem::int8, typcategory::text, typbasetype::int8, \
                 typdelim::text FROM pg_type WHERE oid IN ({list})"
            ))
            .await
            .map_err(|e| query_error("reading pg_type", e))?;
        want.clear();
        for r in got {
            let num = |i: usize| r[i].as_deref().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
            let ch = |i: usize| r[i].as_deref().and_then(|s| s.bytes().next()).unwrap_or(b'b');
            let t = PgType {
                oid: num(0),
                typtype: ch(1),
                elem: num(2),
                category: ch(3),
                base: num(4),
                delim: ch(5),
            };
            for o in [t.elem, t.base] {
                if o != 0 && !types.is_known(o) && !rows.iter().any(|x: &PgType| x.oid == o) {
                    want.push(o);
                }
            }
            rows.push(t);
        }
    }
    types.learn(&rows);
    Ok(())
}

pub struct PgSource {
    cfg: PgSourceConfig,
    ep: Endpoint,
    slot: String,
    publication: String,
    resume: Option<PgOffset>,
    /// Catalog lookups (relations, types) while streaming; reopened when lost.
    control: Option<Connection>,
    types: TypeMap,
    server_version: u32,
    /// `(schema, table)` of the captured tables, as the catalog names them.
    captured: HashSet<(String, String)>,
    /// The same, in the order they are snapshotted.
    tables: Vec<(String, String)>,
    /// Table patterns and column rules.
    selection: Arc<Selection>,
    /// Incremental snapshots of this run (tables captured since the initial snapshot).
    inc: Option<Incremental>,
    /// initial_only taken again over its slot: the WAL position streaming must reach (the new
    /// snapshot's end) before the run is complete.
    catch_up: Option<u64>,
    /// The signal table (`signalDataCollection`), checked to exist.
    signal: Option<(String, String)>,
    /// With a signal table: the commits decoded lately (decision 029).
    decoded: Option<incremental::Decoded>,
    /// With transaction metadata: the stream of BEGIN/END records.
    transactions: Option<Arc<str>>,
}

impl PgSource {
    async fn control(&mut self) -> Result<&mut Connection, ConnectorError> {
        if self.control.is_none() {
            self.control = Some(self.ep.connect(false, "hstream-cdc-catalog").await?);
        }
        Ok(self.control.as_mut().expect("just set"))
    }

    /// The tables: those named (checked to exist) and those the patterns match in the catalog,
    /// less the excluded ones.
    async fn tables(
        conn: &mut Connection,
        cfg: &PgSourceConfig,
        selection: &Selection,
    ) -> Result<Vec<(String, String)>, ConnectorError> {
        let mut out = Vec::new();
        for (schema, table, field) in cfg.table_list() {
            if selection.excluded(&format!("{schema}.{table}")) {
                continue;
            }
            let info = super::table_info(conn, &schema, &table)
                .await
                .map_err(|e| query_error("reading the catalog", e))?;
            if info.is_none() {
                return Err(ConnectorError::config(format!(
                    "{field}: relation {}.{} does not exist in database {:?}",
                    ident(&schema),
                    ident(&table),
                    cfg.endpoint.database
                )));
            }
            out.push((schema, table));
        }
        if selection.has_patterns() {
            // Tables and partitioned tables; a partition's changes are its parent's.
            let rows = conn
                .query(
                    "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p' \
                     AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' \
                     ORDER BY 1, 2",
                )
                .await
                .map_err(|e| query_error("listing the tables", e))?;
            for r in rows {
                let (Some(schema), Some(table)) = (r[0].clone(), r[1].clone()) else {
                    continue;
                };
                let q = format!("{schema}.{table}");
                if selection.included(&q) && !selection.excluded(&q) && !out.contains(&(schema.clone(), table.clone()))
                {
                    out.push((schema, table));
                }
            }
        }
        if out.is_empty() {
            return Err(ConnectorError::config(format!(
                "tableIncludeList: no table of database {:?} is left to capture (tables named: {}, after tableExcludeList)",
                cfg.endpoint.database,
                cfg.table_list().len()
            )));
        }
        Ok(out)
    }

    /// The signal table, checked to exist with the three columns of Debezium's.
    async fn signal_table(
        conn: &mut Connection,
        cfg: &PgSourceConfig,
    ) -> Result<Option<(String, String)>, ConnectorError> {
        let Some((schema, table)) = cfg.signal_table() else {
            return Ok(None);
        };
        let info = super::table_info(conn, &schema, &table)
            .await
            .map_err(|e| query_error("reading the catalog", e))?;
        match info {
            None => Err(ConnectorError::config(format!(
                "signalDataCollection: relation {}.{} does not exist in database {:?}",
                ident(&schema),
                ident(&table),
                cfg.endpoint.database
            ))),
            Some(i) if i.columns.len() < 3 => Err(ConnectorError::config(format!(
                "signalDataCollection: {schema}.{table} needs the columns of Debezium's signal table \
                 (id varchar(42), type varchar(32), data varchar(2048)); it has {}",
                i.columns.len()
            ))),
            Some(_) => Ok(Some((schema, table))),
        }
    }

    fn offset(&self, lsn: u64, snapshot_done: bool) -> PgOffset {
        PgOffset {
            slot: self.slot.clone(),
            lsn,
            snapshot_done,
            tables: Some(self.tables.iter().map(|(s, t)| [s.clone(), t.clone()]).collect()),
            incremental: self.inc.as_ref().and_then(Incremental::offset),
        }
    }

    /// Resuming the stream from `o`: the incremental snapshots it left unfinished go on, and
    /// tables captured now that it did not know get one.
    fn plan_incremental(&mut self, o: &PgOffset) -> Result<(), ConnectorError> {
        let queue = crate::snapshots::SnapshotQueue::resume(
            o.incremental.as_ref(),
            o.tables.as_deref(),
            &self.tables,
            self.cfg.capture.snapshot_mode != SnapshotMode::Never,
        );
        if queue.offset().is_none() {
            return Ok(());
        }
        if !queue.is_empty() && self.server_version < 140_000 {
            return Err(ConnectorError::config(format!(
                "tables: {} joined the capture; its incremental snapshot needs PostgreSQL 14 or later \
                 (logical decoding messages)",
                queue
                    .iter()
                    .map(|(s, t)| format!("{s}.{t}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        self.inc = Some(Incremental::new(
            queue,
            self.cfg.incremental_snapshot_chunk_size as usize,
        ));
        Ok(())
    }
}

#[async_trait]
impl Source for PgSource {
    type Config = PgSourceConfig;
    type Offset = PgOffset;
    const REPLAYS: bool = true;

    async fn check(cfg: &PgSourceConfig) -> Result<(), ConnectorError> {
        let ep = cfg.endpoint.clone();
        let mut conn = ep.connect(false, "hstream-cdc-check").await?;
        let wal_level = conn
            .query("SHOW wal_level")
            .await
            .map_err(|e| query_error("SHOW wal_level", e))?
            .first()
            .and_then(|r| r[0].clone())
            .unwrap_or_default();
        if wal_level != "logical" {
            return Err(ConnectorError::config(format!(
                "the server runs with wal_level={wal_level}; logical decoding needs wal_level=logical \
                 (set it in postgresql.conf and restart the server)"
            )));
        }
        let can = conn
            .query("SELECT (rolreplication OR rolsuper)::text FROM pg_roles WHERE rolname = current_user")
            .await
            .map_err(|e| query_error("reading pg_roles", e))?;
        if can.first().and_then(|r| r[0].as_deref()) != Some("true") {
            return Err(ConnectorError::config(format!(
                "user: role {:?} has neither the REPLICATION attribute nor SUPERUSER",
                cfg.endpoint.user
            )));
        }
        let selection = Selection::new(&cfg.capture)?;
        let tables = Self::tables(&mut conn, cfg, &selection).await?;
        Self::signal_table(&mut conn, cfg).await?;
        // Column rules on key columns are refused now rather than at the first change.
        for (schema, table) in &tables {
            if let Some(info) = super::table_info(&mut conn, schema, table)
                .await
                .map_err(|e| query_error("reading the catalog", e))?
            {
                let names: Vec<String> = info.columns.iter().map(|c| c.0.clone()).collect();
                selection.column_rules(&format!("{schema}.{table}"), &names, &info.key)?;
            }
        }
        if !cfg.publication_autocreate {
            let p = cfg.publication();
            let rows = conn
                .query(&format!("SELECT 1 FROM pg_publication WHERE pubname = {}", literal(&p)))
                .await
                .map_err(|e| query_error("reading pg_publication", e))?;
            if rows.is_empty() {
                return Err(ConnectorError::config(format!(
                    "publicationName: publication {p:?} does not exist and publicationAutocreate is false"
                )));
            }
        }
        conn.close().await;
        ep.connect(true, "hstream-cdc-check").await?.close().await;
        Ok(())
    }

    async fn open(cfg: PgSourceConfig, offset: Option<PgOffset>) -> Result<Self, ConnectorError> {
        let ep = cfg.endpoint.clone();
        let slot = cfg.slot();
        let publication = cfg.publication();
        // A checkpoint of another slot (the slot name was altered) does not apply.
        let resume = offset.filter(|o| o.slot == slot);
        let mut src = PgSource {
            ep,
            slot,
            publication,
            resume,
            control: None,
            types: TypeMap::default(),
            server_version: 0,
            captured: HashSet::new(),
            tables: Vec::new(),
            selection: Arc::new(Selection::new(&cfg.capture)?),
            inc: None,
            catch_up: None,
            signal: None,
            decoded: None,
            transactions: cfg.capture.transaction_stream(&cfg.stream).map(Arc::from),
            cfg,
        };
        let cfg_copy = src.cfg.clone();
        let version = server_version(src.control().await?).await?;
        let selection = src.selection.clone();
        let conn = src.control().await?;
        let tables = Self::tables(conn, &cfg_copy, &selection).await?;
        let signal = Self::signal_table(conn, &cfg_copy).await?;
        src.server_version = version;
        // The signal table's rows are decoded too (only to be read as signals, unless captured).
        let mut published = tables.clone();
        if let Some(s) = &signal
            && !published.contains(s)
        {
            published.push(s.clone());
        }
        src.ensure_publication(&published).await?;
        src.decoded = signal.as_ref().map(|_| incremental::Decoded::default());
        src.signal = signal;
        src.captured = tables.iter().cloned().collect();
        src.tables = tables;
        Ok(src)
    }

    fn stream(cfg: &PgSourceConfig) -> &str {
        &cfg.stream
    }

    async fn run(&mut self, out: &mut SourceOutput<PgOffset>) -> Result<Done, ConnectorError> {
        let mut repl = self.ep.connect(true, "hstream-cdc").await?;
        let mode = self.cfg.capture.snapshot_mode;
        if let Some(o) = self
            .resume
            .clone()
            .filter(|o| o.snapshot_done && matches!(mode, SnapshotMode::Always | SnapshotMode::WhenNeeded))
        {
            let exists = Self::slot_state(&mut repl, &self.slot).await?.is_some();
            let lost = exists && Self::slot_lost(&mut repl, &self.slot, self.server_version).await?;
            if !exists || lost {
                // The position is gone with its slot (dropped, or invalidated: the WAL it needed
                // was removed): a new snapshot over a new slot.
                tracing::warn!(
                    slot = %self.slot,
                    lsn = %format_lsn(o.lsn),
                    mode = mode.as_str(),
                    invalidated = lost,
                    "replication slot gone: taking a new snapshot (rows deleted since stay in the stream)"
                );
                if lost {
                    Self::drop_slot(&mut repl, &self.slot).await?;
                }
                self.resume = None;
            } else if mode == SnapshotMode::Always {
                // Taken again over the slot, as a snapshot cut short is: the changes since the
                // stored position (deletes included) follow the new snapshot.
                self.resume = Some(self.offset(o.lsn, false));
            }
        }
        let start = match self.resume.clone() {
            // initial_only already complete (a restart after its end, a resume): nothing is
            // left but the slot, which may be gone already.
            Some(o) if o.snapshot_done && self.cfg.capture.snapshot_mode == SnapshotMode::InitialOnly => {
                return self.complete(repl, out, o.lsn).await;
            }
            Some(o) if o.snapshot_done => {
                self.plan_incremental(&o)?;
                if Self::slot_state(&mut repl, &self.slot).await?.is_none() {
                    return Err(ConnectorError::config(format!(
                        "slotName: replication slot {:?} no longer exists; changes after {} are lost to it \
                         (snapshotMode=when_needed takes a new snapshot then; or delete and re-create the connector)",
                        self.slot,
                        format_lsn(o.lsn)
                    )));
                }
                if Self::slot_lost(&mut repl, &self.slot, self.server_version).await? {
                    return Err(ConnectorError::config(format!(
                        "slotName: replication slot {:?} was invalidated: the server removed WAL it still needed \
                         (max_slot_wal_keep_size), so changes after {} are lost to it (snapshotMode=when_needed \
                         takes a new snapshot then; or delete and re-create the connector)",
                        self.slot,
                        format_lsn(o.lsn)
                    )));
                }
                o.lsn
            }
            _ => match self.cfg.capture.snapshot_mode {
                SnapshotMode::Never => {
                    let lsn = match Self::slot_state(&mut repl, &self.slot).await? {
                        Some((_, lsn)) => lsn,
                        None => Self::create_slot(&mut repl, &self.slot, false).await?.0,
                    };
                    out.emit(Vec::new(), self.offset(lsn, true)).await?;
                    lsn
                }
                mode => {
                    // A checkpoint of this slot with the snapshot unfinished proves it is ours.
                    let ours = self
                        .resume
                        .as_ref()
                        .filter(|o| o.slot == self.slot && !o.snapshot_done)
                        .map(|o| o.lsn);
                    // A snapshot cut short (a crash, a stop) is taken again over the slot that
                    // was created with it: the rows it already sent may since have changed or
                    // gone, and only that slot still holds those changes. The new snapshot is
                    // newer than the slot's start, and streaming replays every change after the
                    // start, so the stream ends equal to the table (changes of the gap arrive
                    // twice: at-least-once). A new slot would start after the gap and leave a
                    // deleted row in the stream for good.
                    if let Some(lsn) = ours
                        && let Some((active, _)) = Self::slot_state(&mut repl, &self.slot).await?
                    {
                        if active {
                            return Err(ConnectorError::external(format!(
                                "slotName: slot {:?} is in use by another connection",
                                self.slot
                            )));
                        }
                        tracing::info!(
                            slot = %self.slot,
                            lsn = %format_lsn(lsn),
                            "snapshot taken again over its slot; the changes since the slot's start follow it"
                        );
                        let snapshot_end = match self.snapshot(None, lsn, out).await? {
                            ControlFlow::Break(done) => {
                                repl.close().await;
                                return Ok(done);
                            }
                            ControlFlow::Continue(end) => end,
                        };
                        if mode == SnapshotMode::InitialOnly {
                            // Streams the changes up to the new snapshot's end (still counting
                            // as the snapshot, so a crash now takes it again), then completes.
                            self.catch_up = Some(snapshot_end.ok_or_else(|| {
                                ConnectorError::internal("pg_current_wal_insert_lsn() gave no position")
                            })?);
                        }
                        self.resume = Some(self.offset(lsn, true));
                        return self.stream(repl, lsn, out).await;
                    }
                    // A consistent snapshot needs a slot created with it. Our own default slot
                    // left without a checkpoint (a crash before the first one) is dropped; a slot
                    // the user named is not ours to drop.
                    if self.cfg.slot_name.is_some()
                        && ours.is_none()
                        && Self::slot_state(&mut repl, &self.slot).await?.is_some()
                    {
                        return Err(ConnectorError::config(format!(
                            "slotName: slot {:?} already exists; snapshotMode={} creates its slot with the snapshot \
                             (drop the slot, or use snapshotMode=never to stream from it)",
                            self.slot,
                            mode.as_str()
                        )));
                    }
                    Self::drop_slot(&mut repl, &self.slot).await?;
                    let only = mode == SnapshotMode::InitialOnly;
                    // A permanent slot in both modes: a snapshot cut short is taken again over
                    // it (above). initial_only drops it once the snapshot is complete.
                    let (lsn, name) = Self::create_slot(&mut repl, &self.slot, true).await?;
                    let name = name.ok_or_else(|| ConnectorError::internal("no snapshot was exported"))?;
                    // Checkpointed before any row goes out, so a restart knows the slot is this
                    // connector's and takes the snapshot again over it rather than over a new
                    // slot that would miss the changes in between.
                    let created = self.offset(lsn, false);
                    out.emit(Vec::new(), created.clone()).await?;
                    if !out.wait_committed(&created).await {
                        repl.close().await;
                        return Ok(Done::Cancelled);
                    }
                    tracing::info!(slot = %self.slot, lsn = %format_lsn(lsn), "slot created; snapshot begins");
                    if let ControlFlow::Break(done) = self.snapshot(Some(&name), lsn, out).await? {
                        repl.close().await;
                        return Ok(done);
                    }
                    if only {
                        return self.complete(repl, out, lsn).await;
                    }
                    lsn
                }
            },
        };
        self.resume = Some(self.offset(start, true));
        self.stream(repl, start, out).await
    }

    async fn signal(cfg: &PgSourceConfig, kind: &str, data: &serde_json::Value) -> Result<String, ConnectorError> {
        let Some((schema, table)) = cfg.signal_table() else {
            return Err(ConnectorError::config(
                "signalDataCollection: this source has no signal table to send signals through",
            ));
        };
        let (id, kind, text) = crate::snapshots::outgoing(kind, data)?;
        let mut conn = cfg.endpoint.connect(false, "hstream-cdc-signal").await?;
        // A snapshot asked of a server that cannot run one would be read and ignored: refused
        // here, where the asker hears it.
        if kind == "execute-snapshot" {
            let version = server_version(&mut conn).await?;
            if version < 140_000 {
                conn.close().await;
                return Err(ConnectorError::config(format!(
                    "execute-snapshot: incremental snapshots need PostgreSQL 14 or later (logical \
                     decoding messages); this server is version {version}"
                )));
            }
        }
        let r = conn
            .query(&format!(
                "INSERT INTO {}.{} VALUES ({}, {}, {})",
                ident(&schema),
                ident(&table),
                literal(&id),
                literal(&kind),
                text.as_deref().map_or_else(|| "NULL".to_owned(), literal)
            ))
            .await
            .map_err(|e| query_error("signalDataCollection: writing the signal", e));
        conn.close().await;
        r.map(|_| id)
    }

    async fn on_delete(cfg: &PgSourceConfig) -> Result<(), ConnectorError> {
        // initial_only's slot exists only for its snapshot: always ours to drop by default.
        let default = cfg.slot_name.is_none() || cfg.capture.snapshot_mode == SnapshotMode::InitialOnly;
        if !cfg.drop_slot_on_delete.unwrap_or(default) {
            return Ok(());
        }
        let mut conn = cfg.endpoint.connect(true, "hstream-cdc-cleanup").await?;
        let slot = cfg.slot();
        if Self::slot_state(&mut conn, &slot).await?.is_none() {
            conn.close().await;
            return Ok(());
        }
        // The task has stopped; a walsender that has not noticed yet is ended rather than waited
        // for, then the drop waits (bounded) for the slot to be released.
        let _ = conn
            .query(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name = {} AND active_pid IS NOT NULL",
                literal(&slot)
            ))
            .await;
        let dropped = tokio::time::timeout(
            DROP_SLOT_WAIT,
            conn.query(&format!("DROP_REPLICATION_SLOT {} WAIT", ident(&slot))),
        )
        .await;
        let r = match dropped {
            Ok(Ok(_)) => {
                tracing::info!(slot = %slot, "replication slot dropped");
                Ok(())
            }
            Ok(Err(e)) if e.code() == Some("42704") => Ok(()),
            Ok(Err(e)) => Err(query_error("dropping the replication slot", e)),
            Err(_) => Err(ConnectorError::external(format!(
                "slotName: slot {slot:?} was still in use after {DROP_SLOT_WAIT:?}; the server drops it once \
                 released (check pg_replication_slots)"
            ))),
        };
        if r.is_ok() {
            conn.close().await;
        }
        r
    }
}
