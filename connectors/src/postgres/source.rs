//! The `postgresql` CDC source: a consistent snapshot handed off to logical replication
//! (`pgoutput`) with no gap and no double, written to a stream as HStream IO's CDC records
//! (`{"key", "value"}`) or as Debezium envelopes.
//!
//! Durability: the flush LSN confirmed to PostgreSQL is the runtime's committed offset, which
//! exists only once every record before it is durable in the stream and checkpointed. Offsets
//! advance only at transaction ends (a commit's end LSN, or the server's sent position while no
//! transaction is open), so a restart resumes at a transaction boundary; records of a transaction
//! cut short by a crash are sent again (at-least-once).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hstream_runtime::{
    ConnectorConfig, ConnectorError, Done, Offset, PayloadFlag, Record, Secret, Source, SourceOutput,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::pgoutput::{self, Col, Message};
use super::types::{self, Kind, PgType, TypeMap};
use super::wire::{self, Connection, ReplicationMessage, ReplicationStream, format_lsn, ident, literal};
use super::{Endpoint, default_host, default_port, default_schema, query_error, split_table};
use crate::pbstruct as pb;

/// Records per emitted batch at most (a batch is also emitted whenever the socket runs dry).
const MAX_BATCH: usize = 4096;
/// Rows fetched per snapshot round trip.
const SNAPSHOT_FETCH: usize = 4096;
/// How long deleting a connector waits for its slot to be released.
const DROP_SLOT_WAIT: Duration = Duration::from_secs(8);
/// Microseconds from the Unix epoch to PostgreSQL's.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Copy the tables' rows first, then stream changes (the first run only).
    #[default]
    Initial,
    /// Stream changes only, from where the slot stands.
    Never,
    /// Copy the tables' rows, then complete.
    InitialOnly,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecordFormat {
    /// `{"key": primary key, "value": row after, null on delete}`, as HStream IO's CDC sources.
    #[default]
    Hstream,
    /// `{"before", "after", "op", "ts_ms", "source"}`, as Debezium's change events.
    Debezium,
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
    /// Server host name or address, or a Unix socket directory (starting with `/`).
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    #[schemars(range(min = 1))]
    pub port: u16,
    /// A role with the REPLICATION attribute (or a superuser).
    pub user: String,
    #[serde(default)]
    pub password: Option<Secret>,
    pub database: String,
    /// One table to capture (HStream IO's option); unqualified names are in `schema`.
    #[serde(default)]
    pub table: Option<String>,
    /// Tables to capture (Debezium's table include list); unqualified names are in `schema`.
    #[serde(default)]
    pub tables: Vec<String>,
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
    #[serde(default)]
    pub snapshot_mode: SnapshotMode,
    /// How often to tell the server our position (keeps an idle slot from retaining WAL).
    #[serde(default = "default_heartbeat")]
    #[schemars(range(min = 100, max = 30000))]
    pub heartbeat_interval_ms: u64,
    #[serde(default)]
    pub format: RecordFormat,
    /// Drop the replication slot when the connector is deleted; by default only the slot it
    /// named itself (no `slotName` given).
    #[serde(default)]
    pub drop_slot_on_delete: Option<bool>,
    /// Receive large transactions while in progress (pgoutput protocol 2, PostgreSQL 14+); they
    /// are held in memory until they commit.
    #[serde(default)]
    pub streaming: bool,
}

fn yes() -> bool {
    true
}
fn default_heartbeat() -> u64 {
    10_000
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
    pub(crate) fn endpoint(&self) -> Endpoint {
        Endpoint {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            database: self.database.clone(),
        }
    }

    pub fn slot(&self) -> String {
        self.slot_name.clone().unwrap_or_else(|| derived_name(&self.stream))
    }

    pub fn publication(&self) -> String {
        self.publication_name
            .clone()
            .unwrap_or_else(|| derived_name(&self.stream))
    }

    /// `(schema, table)` of every captured table, with the option each came from.
    fn table_list(&self) -> Vec<(String, String, &'static str)> {
        let mut v: Vec<(String, String, &'static str)> = Vec::new();
        for (t, field) in self
            .table
            .iter()
            .map(|t| (t, "table"))
            .chain(self.tables.iter().map(|t| (t, "tables")))
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
        self.endpoint().validate()?;
        if self.table.is_none() && self.tables.is_empty() {
            return Err(ConnectorError::config("table: name a table (or list them in tables)"));
        }
        if self.table.as_deref() == Some("") || self.tables.iter().any(String::is_empty) {
            return Err(ConnectorError::config("table: table names must not be empty"));
        }
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
        if self.publication().is_empty() {
            return Err(ConnectorError::config("publicationName: must not be empty"));
        }
        Ok(())
    }
}

/// Where the source stands: the slot, and the LSN up to which everything is in the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PgOffset {
    pub slot: String,
    pub lsn: u64,
    /// The initial snapshot is complete (or was not wanted).
    pub snapshot_done: bool,
}

impl Offset for PgOffset {
    const VERSION: u32 = 1;
}

/// A captured table as the stream encodes it.
#[derive(Debug)]
struct Rel {
    schema: String,
    table: String,
    names: Vec<String>,
    kinds: Vec<Kind>,
    key: Vec<usize>,
}

/// Where a change came from (Debezium's `source` block).
struct Origin<'a> {
    lsn: u64,
    tx_id: u32,
    ts_ms: i64,
    snapshot: bool,
    db: &'a str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Create,
    Update,
    Delete,
}

impl Op {
    fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
        }
    }
}

fn write_row(buf: &mut Vec<u8>, rel: &Rel, cols: &[Col<'_>]) {
    for (i, c) in cols.iter().enumerate() {
        let (Some(name), Some(kind)) = (rel.names.get(i), rel.kinds.get(i)) else {
            break;
        };
        match c {
            Col::Null => pb::field(buf, name, pb::null),
            // An unchanged TOASTed value is not sent: the column is left out, not nulled.
            Col::Unchanged => {}
            Col::Text(t) => pb::field(buf, name, |b| types::write_value(b, kind, t)),
            Col::Binary(t) => pb::field(buf, name, |b| pb::string_bytes(b, t)),
        }
    }
}

fn write_key(buf: &mut Vec<u8>, rel: &Rel, cols: &[Col<'_>]) {
    for &i in &rel.key {
        let name = &rel.names[i];
        match cols.get(i) {
            Some(Col::Text(t)) => pb::field(buf, name, |b| types::write_value(b, &rel.kinds[i], t)),
            _ => pb::field(buf, name, pb::null),
        }
    }
}

/// The partition key: the key columns' text, comma separated.
fn partition_key(rel: &Rel, cols: &[Col<'_>]) -> String {
    let mut k = String::new();
    for (n, &i) in rel.key.iter().enumerate() {
        if n > 0 {
            k.push(',');
        }
        if let Some(Col::Text(t)) = cols.get(i) {
            match std::str::from_utf8(t) {
                Ok(text) => k.push_str(text),
                Err(_) => k.push_str(&String::from_utf8_lossy(t)),
            }
        }
    }
    k
}

fn same_key(rel: &Rel, a: &[Col<'_>], b: &[Col<'_>]) -> bool {
    rel.key.iter().all(|&i| a.get(i) == b.get(i))
}

fn change(
    format: RecordFormat,
    rel: &Rel,
    op: Op,
    before: Option<&[Col<'_>]>,
    after: Option<&[Col<'_>]>,
    origin: &Origin<'_>,
) -> Record {
    let keyed = after.or(before).unwrap_or(&[]);
    let key = partition_key(rel, keyed);
    let mut buf = Vec::with_capacity(256);
    match format {
        RecordFormat::Hstream => {
            pb::field(&mut buf, "key", |b| {
                if rel.key.is_empty() {
                    pb::null(b)
                } else {
                    pb::object(b, |b| write_key(b, rel, keyed))
                }
            });
            pb::field(&mut buf, "value", |b| match after {
                Some(cols) => pb::object(b, |b| write_row(b, rel, cols)),
                None => pb::null(b),
            });
        }
        RecordFormat::Debezium => {
            for (name, cols) in [("before", before), ("after", after)] {
                pb::field(&mut buf, name, |b| match cols {
                    Some(cols) => pb::object(b, |b| write_row(b, rel, cols)),
                    None => pb::null(b),
                });
            }
            pb::field(&mut buf, "op", |b| pb::string(b, op.code()));
            pb::field(&mut buf, "ts_ms", |b| pb::number(b, now_ms() as f64));
            pb::field(&mut buf, "source", |b| write_source(b, rel, origin));
        }
    }
    Record {
        key,
        flag: PayloadFlag::Json,
        payload: Bytes::from(buf),
    }
}

fn write_source(b: &mut Vec<u8>, rel: &Rel, origin: &Origin<'_>) {
    pb::object(b, |b| {
        pb::field(b, "connector", |b| pb::string(b, "postgresql"));
        pb::field(b, "db", |b| pb::string(b, origin.db));
        pb::field(b, "schema", |b| pb::string(b, &rel.schema));
        pb::field(b, "table", |b| pb::string(b, &rel.table));
        pb::field(b, "lsn", |b| pb::number(b, origin.lsn as f64));
        pb::field(b, "txId", |b| pb::number(b, f64::from(origin.tx_id)));
        pb::field(b, "ts_ms", |b| pb::number(b, origin.ts_ms as f64));
        pb::field(b, "snapshot", |b| {
            pb::string(b, if origin.snapshot { "true" } else { "false" })
        });
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Learns the kinds of the user-defined types among `oids` (and what they refer to).
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
                "SELECT oid::int8, typtype::text, typelem::int8, typcategory::text, typbasetype::int8 \
                 FROM pg_type WHERE oid IN ({list})"
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
}

impl PgSource {
    async fn control(&mut self) -> Result<&mut Connection, ConnectorError> {
        if self.control.is_none() {
            self.control = Some(self.ep.connect(false, "hstream-cdc-catalog").await?);
        }
        Ok(self.control.as_mut().expect("just set"))
    }

    /// The tables, checked to exist.
    async fn tables(conn: &mut Connection, cfg: &PgSourceConfig) -> Result<Vec<(String, String)>, ConnectorError> {
        let mut out = Vec::new();
        for (schema, table, field) in cfg.table_list() {
            let info = super::table_info(conn, &schema, &table)
                .await
                .map_err(|e| query_error("reading the catalog", e))?;
            if info.is_none() {
                return Err(ConnectorError::config(format!(
                    "{field}: relation {}.{} does not exist in database {:?}",
                    ident(&schema),
                    ident(&table),
                    cfg.database
                )));
            }
            out.push((schema, table));
        }
        Ok(out)
    }

    /// Creates the publication if missing; with autocreate keeps its tables equal to ours.
    async fn ensure_publication(&mut self, tables: &[(String, String)]) -> Result<(), ConnectorError> {
        let publication = self.publication.clone();
        let autocreate = self.cfg.publication_autocreate;
        let conn = self.control().await?;
        let list = tables
            .iter()
            .map(|(s, t)| format!("{}.{}", ident(s), ident(t)))
            .collect::<Vec<_>>()
            .join(", ");
        let exists = !conn
            .query(&format!(
                "SELECT 1 FROM pg_publication WHERE pubname = {}",
                literal(&publication)
            ))
            .await
            .map_err(|e| query_error("reading pg_publication", e))?
            .is_empty();
        let perr = |e| query_error("publicationName", e);
        if !exists {
            if !autocreate {
                return Err(ConnectorError::config(format!(
                    "publicationName: publication {publication:?} does not exist and publicationAutocreate is false"
                )));
            }
            conn.query(&format!("CREATE PUBLICATION {} FOR TABLE {list}", ident(&publication)))
                .await
                .map_err(perr)?;
            tracing::info!(publication = %publication, tables = %list, "created publication");
            return Ok(());
        }
        let have = conn
            .query(&format!(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = {}",
                literal(&publication)
            ))
            .await
            .map_err(perr)?;
        let have: Vec<(String, String)> = have
            .into_iter()
            .map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default()))
            .collect();
        let missing: Vec<_> = tables.iter().filter(|t| !have.contains(t)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if !autocreate {
            return Err(ConnectorError::config(format!(
                "publicationName: publication {publication:?} does not include {}.{}",
                missing[0].0, missing[0].1
            )));
        }
        // Only what is missing is added: other tables of the publication are someone's too.
        let add = missing
            .iter()
            .map(|(s, t)| format!("{}.{}", ident(s), ident(t)))
            .collect::<Vec<_>>()
            .join(", ");
        conn.query(&format!("ALTER PUBLICATION {} ADD TABLE {add}", ident(&publication)))
            .await
            .map_err(perr)?;
        tracing::info!(publication = %publication, tables = %add, "tables added to the publication");
        Ok(())
    }

    /// The slot's row: `(active, confirmed_flush_lsn)`, `None` if it does not exist.
    async fn slot_state(conn: &mut Connection, slot: &str) -> Result<Option<(bool, u64)>, ConnectorError> {
        let rows = conn
            .query(&format!(
                "SELECT active::text, coalesce(confirmed_flush_lsn, restart_lsn)::text, plugin::text, database::text \
                 FROM pg_replication_slots WHERE slot_name = {}",
                literal(slot)
            ))
            .await
            .map_err(|e| query_error("reading pg_replication_slots", e))?;
        let Some(r) = rows.first() else { return Ok(None) };
        if r[2].as_deref() != Some("pgoutput") {
            return Err(ConnectorError::config(format!(
                "slotName: slot {slot:?} exists with plugin {:?}, not pgoutput",
                r[2].as_deref().unwrap_or("none (physical)")
            )));
        }
        let lsn = r[1].as_deref().and_then(wire::parse_lsn).unwrap_or(0);
        Ok(Some((r[0].as_deref() == Some("true"), lsn)))
    }

    async fn drop_slot(conn: &mut Connection, slot: &str) -> Result<(), ConnectorError> {
        match Self::slot_state(conn, slot).await? {
            None => Ok(()),
            Some((true, _)) => Err(ConnectorError::external(format!(
                "slotName: slot {slot:?} is in use by another connection"
            ))),
            Some((false, _)) => conn
                .query(&format!("DROP_REPLICATION_SLOT {}", ident(slot)))
                .await
                .map(|_| ())
                .map_err(|e| query_error("dropping the replication slot", e)),
        }
    }

    /// Creates the slot; with `export`, also an exported snapshot (valid until the next command
    /// on `conn`). Returns the consistent point and the snapshot name.
    async fn create_slot(
        conn: &mut Connection,
        slot: &str,
        temporary: bool,
        export: bool,
    ) -> Result<(u64, Option<String>), ConnectorError> {
        let rows = conn
            .query(&format!(
                "CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput {}",
                ident(slot),
                if temporary { "TEMPORARY " } else { "" },
                if export { "EXPORT_SNAPSHOT" } else { "NOEXPORT_SNAPSHOT" }
            ))
            .await
            .map_err(|e| match e.code() {
                Some("53400") | Some("55000") => ConnectorError::config(format!("slotName: {e}")),
                _ => query_error("creating the replication slot", e),
            })?;
        let row = rows
            .first()
            .ok_or_else(|| ConnectorError::internal("CREATE_REPLICATION_SLOT returned no row"))?;
        let lsn = row
            .get(1)
            .and_then(|v| v.as_deref())
            .and_then(wire::parse_lsn)
            .ok_or_else(|| ConnectorError::internal("CREATE_REPLICATION_SLOT returned no consistent point"))?;
        Ok((lsn, row.get(2).cloned().flatten()))
    }

    fn offset(&self, lsn: u64, snapshot_done: bool) -> PgOffset {
        PgOffset {
            slot: self.slot.clone(),
            lsn,
            snapshot_done,
        }
    }

    /// Copies every table's rows as of the exported snapshot.
    async fn snapshot(
        &mut self,
        snapshot: &str,
        at: u64,
        out: &mut SourceOutput<PgOffset>,
    ) -> Result<Option<Done>, ConnectorError> {
        let mut conn = self.ep.connect(false, "hstream-cdc-snapshot").await?;
        let snap_err = |e| query_error("snapshot", e);
        conn.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(snap_err)?;
        conn.query(&format!("SET TRANSACTION SNAPSHOT {}", literal(snapshot)))
            .await
            .map_err(snap_err)?;
        let tables = Self::tables(&mut conn, &self.cfg).await?;
        let cancel = out.cancelled();
        let origin = Origin {
            lsn: at,
            tx_id: 0,
            ts_ms: now_ms(),
            snapshot: true,
            db: &self.cfg.database.clone(),
        };
        let mut total = 0u64;
        for (schema, table) in &tables {
            let info = super::table_info(&mut conn, schema, table)
                .await
                .map_err(snap_err)?
                .ok_or_else(|| ConnectorError::config(format!("table: {schema}.{table} disappeared")))?;
            let oids: Vec<u32> = info.columns.iter().map(|c| c.1).collect();
            learn_types(&mut conn, &mut self.types, &oids).await?;
            let rel = Rel {
                schema: schema.clone(),
                table: table.clone(),
                names: info.columns.iter().map(|c| c.0.clone()).collect(),
                kinds: info.columns.iter().map(|c| self.types.kind(c.1)).collect(),
                key: info.key.clone(),
            };
            let estimate = conn
                .query(&format!(
                    "SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = {}",
                    info.oid
                ))
                .await
                .map_err(snap_err)?
                .first()
                .and_then(|r| r[0].as_deref().and_then(|s| s.parse::<u64>().ok()))
                .unwrap_or(0);
            let cols = rel.names.iter().map(|n| ident(n)).collect::<Vec<_>>().join(", ");
            conn.query(&format!(
                "DECLARE hstream_snapshot NO SCROLL CURSOR FOR SELECT {cols} FROM {}.{}",
                ident(schema),
                ident(table)
            ))
            .await
            .map_err(snap_err)?;
            let started = std::time::Instant::now();
            let mut done = 0u64;
            tracing::info!(table = %format!("{schema}.{table}"), estimate, "snapshot started");
            loop {
                if cancel.is_cancelled() {
                    conn.close().await;
                    return Ok(Some(Done::Cancelled));
                }
                let mut records = Vec::with_capacity(SNAPSHOT_FETCH);
                let format = self.cfg.format;
                conn.query_each(
                    &format!("FETCH FORWARD {SNAPSHOT_FETCH} FROM hstream_snapshot"),
                    |row| {
                        let cols: Vec<Col<'_>> = (0..row.len())
                            .map(|i| row.get(i).map_or(Col::Null, Col::Text))
                            .collect();
                        records.push(change(format, &rel, Op::Read, None, Some(&cols), &origin));
                        Ok(())
                    },
                )
                .await
                .map_err(snap_err)?;
                if records.is_empty() {
                    break;
                }
                done += records.len() as u64;
                out.emit(records, self.offset(at, false)).await?;
                out.report(format!("snapshot {schema}.{table}: {done}/{} rows", estimate.max(done)));
            }
            conn.query("CLOSE hstream_snapshot").await.map_err(snap_err)?;
            total += done;
            tracing::info!(
                table = %format!("{schema}.{table}"),
                rows = done,
                seconds = started.elapsed().as_secs_f64(),
                "snapshot finished"
            );
        }
        conn.query("COMMIT").await.map_err(snap_err)?;
        conn.close().await;
        out.emit(Vec::new(), self.offset(at, true)).await?;
        out.report(format!("snapshot done: {} tables, {total} rows", tables.len()));
        Ok(None)
    }

    async fn stream(
        &mut self,
        repl: Connection,
        start: u64,
        out: &mut SourceOutput<PgOffset>,
    ) -> Result<Done, ConnectorError> {
        let v2 = self.cfg.streaming && self.server_version >= 140_000;
        let mut repl = repl;
        let sender_timeout = repl
            .query("SHOW wal_sender_timeout")
            .await
            .ok()
            .and_then(|rows| rows.first().and_then(|r| r[0].clone()))
            .and_then(|t| parse_pg_duration(&t));
        // A plain literal: the replication grammar takes no E'' strings.
        let publication_names = format!("'{}'", ident(&self.publication).replace('\'', "''"));
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (\"proto_version\" '{}', \"publication_names\" {publication_names}{})",
            ident(&self.slot),
            format_lsn(start),
            if v2 { 2 } else { 1 },
            if v2 { ", \"streaming\" 'on'" } else { "" }
        );
        let mut rs = repl.start_replication(&command).await.map_err(|e| match e.code() {
            Some("55006") => ConnectorError::external(format!("slotName: {e}")),
            _ => query_error("START_REPLICATION", e),
        })?;
        out.report(format!("streaming from {}", format_lsn(start)));
        let cancel = out.cancelled();
        let mut committed = out.committed();
        let mut st = StreamState {
            received: start,
            confirmed: start,
            emitted: start,
            last_commit: start,
            change_lsn: start,
            in_txn: false,
            xid: 0,
            commit_ts_ms: 0,
            in_stream: None,
            streamed: HashMap::new(),
            relations: HashMap::new(),
            batch: Vec::with_capacity(MAX_BATCH),
            produced: Vec::with_capacity(4),
        };
        // Each heartbeat asks for a reply, but a walsender busy replaying changes we do not
        // receive answers only every wal_sender_timeout/2: silence beyond the timeout (plus a
        // margin) means the server is gone. A timeout of 0 (off) disables the check.
        let silence = match sender_timeout {
            Some(t) if t.is_zero() => Duration::from_secs(365 * 24 * 3600),
            Some(t) => (t + Duration::from_secs(30)).max(Duration::from_millis(self.cfg.heartbeat_interval_ms * 3)),
            None => Duration::from_secs(90),
        };
        let mut last_heard = tokio::time::Instant::now();
        let mut heartbeat = tokio::time::interval(Duration::from_millis(self.cfg.heartbeat_interval_ms));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rs.send_status(st.received, st.confirmed, false)
            .await
            .map_err(stream_err)?;
        let status_every = Duration::from_millis(self.cfg.heartbeat_interval_ms);
        let mut last_status = tokio::time::Instant::now();
        loop {
            if cancel.is_cancelled() {
                rs.close().await;
                return Ok(Done::Cancelled);
            }
            // A sustained stream may not come back to the select below for long: the server
            // still hears our position on time (it drops a silent client after
            // wal_sender_timeout), and every newly committed offset promptly.
            if st.confirm(&committed) || last_status.elapsed() >= status_every {
                rs.send_status(st.received, st.confirmed, false)
                    .await
                    .map_err(stream_err)?;
                last_status = tokio::time::Instant::now();
            }
            // Decode what has been read already; emit when the batch is full or the socket dry.
            while let Some(m) = rs.next_buffered().map_err(stream_err)? {
                match m {
                    ReplicationMessage::XLogData { wal_start, data, .. } => {
                        st.received = st.received.max(wal_start);
                        st.change_lsn = wal_start;
                        self.on_data(&mut st, &data).await?;
                    }
                    ReplicationMessage::Keepalive { wal_end, reply } => {
                        st.received = st.received.max(wal_end);
                        // The server has sent everything before `wal_end`: with no transaction
                        // open, nothing before it can still arrive.
                        if !st.in_txn && st.streamed.is_empty() {
                            st.last_commit = st.last_commit.max(wal_end);
                        }
                        if reply {
                            rs.send_status(st.received, st.confirmed, false)
                                .await
                                .map_err(stream_err)?;
                        }
                    }
                }
                if st.batch.len() >= MAX_BATCH {
                    self.flush(&mut st, out, &mut rs, &mut committed).await?;
                }
            }
            // More already read? Decode it into this batch first: fewer, fuller appends.
            if st.batch.len() < MAX_BATCH && rs.try_read_more().map_err(stream_err)? {
                last_heard = tokio::time::Instant::now();
                continue;
            }
            if !st.batch.is_empty() || st.last_commit > st.emitted {
                self.flush(&mut st, out, &mut rs, &mut committed).await?;
                // Not reading while the pipeline was full is not the server's silence.
                last_heard = tokio::time::Instant::now();
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    rs.close().await;
                    return Ok(Done::Cancelled);
                }
                changed = committed.changed() => {
                    if changed.is_err() {
                        rs.close().await;
                        return Ok(Done::Cancelled);
                    }
                    if st.confirm(&committed) {
                        rs.send_status(st.received, st.confirmed, false).await.map_err(stream_err)?;
                    }
                }
                _ = heartbeat.tick() => {
                    // Asking for a reply gets a keepalive with the server's position.
                    rs.send_status(st.received, st.confirmed, true).await.map_err(stream_err)?;
                }
                r = rs.read_more() => {
                    r.map_err(stream_err)?;
                    last_heard = tokio::time::Instant::now();
                }
                _ = tokio::time::sleep_until(last_heard + silence) => {
                    return Err(ConnectorError::external(format!(
                        "replication stream: no message from the server for {silence:?}"
                    )));
                }
            }
        }
    }

    /// Emits the batch with the offset of the last transaction end, answering the server while
    /// the pipeline is full.
    async fn flush(
        &self,
        st: &mut StreamState,
        out: &mut SourceOutput<PgOffset>,
        rs: &mut ReplicationStream,
        committed: &mut tokio::sync::watch::Receiver<Option<PgOffset>>,
    ) -> Result<(), ConnectorError> {
        let mut records = std::mem::replace(&mut st.batch, Vec::with_capacity(MAX_BATCH));
        // A big streamed transaction arrives whole: it goes out in batches, all but the last
        // with the previous offset.
        while !records.is_empty() || st.last_commit > st.emitted {
            let rest = if records.len() > MAX_BATCH {
                records.split_off(MAX_BATCH)
            } else {
                Vec::new()
            };
            let lsn = if rest.is_empty() { st.last_commit } else { st.emitted };
            st.emitted = lsn;
            let emit = out.emit(std::mem::replace(&mut records, rest), self.offset(lsn, true));
            tokio::pin!(emit);
            let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.heartbeat_interval_ms));
            tick.tick().await;
            loop {
                tokio::select! {
                    r = &mut emit => {
                        r?;
                        break;
                    }
                    _ = tick.tick() => rs.send_status(st.received, st.confirmed, false).await.map_err(stream_err)?,
                    changed = committed.changed() => {
                        if changed.is_ok() && st.confirm(committed) {
                            rs.send_status(st.received, st.confirmed, false).await.map_err(stream_err)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn on_data(&mut self, st: &mut StreamState, data: &[u8]) -> Result<(), ConnectorError> {
        let Some(&tag) = data.first() else { return Ok(()) };
        let streaming = st.in_stream.is_some();
        match tag {
            b'R' => {
                let Message::Relation(r) = pgoutput::decode(data, streaming).map_err(decode_err)? else {
                    return Ok(());
                };
                let rel = self.learn_relation(r).await?;
                st.relations.insert(rel.0, Arc::new(rel.1));
                return Ok(());
            }
            b'S' => {
                if let Message::StreamStart { xid } = pgoutput::decode(data, false).map_err(decode_err)? {
                    st.in_stream = Some(xid);
                }
                return Ok(());
            }
            b'E' => {
                st.in_stream = None;
                return Ok(());
            }
            _ => {}
        }
        let msg = pgoutput::decode(data, streaming).map_err(decode_err)?;
        let db: &str = &self.cfg.database;
        let format = self.cfg.format;
        let subxid = if streaming { pgoutput::streamed_xid(data) } else { None };
        let origin = Origin {
            lsn: st.change_lsn,
            tx_id: st.in_stream.unwrap_or(st.xid),
            ts_ms: st.commit_ts_ms,
            snapshot: false,
            db,
        };
        // Reused across messages: no allocation per change.
        let mut produced = std::mem::take(&mut st.produced);
        match msg {
            Message::Begin {
                xid,
                commit_ts_us,
                final_lsn,
            } => {
                st.in_txn = true;
                st.xid = xid;
                st.commit_ts_ms = (commit_ts_us + PG_EPOCH_US) / 1000;
                let _ = final_lsn;
            }
            Message::Commit { end_lsn, .. } => {
                st.in_txn = false;
                st.last_commit = st.last_commit.max(end_lsn);
            }
            Message::Insert { rel, new } => {
                let r = st.relation(rel)?;
                produced.push(change(format, &r, Op::Create, None, Some(&new), &origin));
            }
            Message::Update { rel, old, new } => {
                let r = st.relation(rel)?;
                match old {
                    // The key changed: the old row is gone, a new one appears.
                    Some(old) if !r.key.is_empty() && !same_key(&r, &old, &new) => {
                        produced.push(change(format, &r, Op::Delete, Some(&old), None, &origin));
                        produced.push(change(format, &r, Op::Create, None, Some(&new), &origin));
                    }
                    old => produced.push(change(format, &r, Op::Update, old.as_deref(), Some(&new), &origin)),
                }
            }
            Message::Delete { rel, old } => {
                let r = st.relation(rel)?;
                produced.push(change(format, &r, Op::Delete, Some(&old), None, &origin));
            }
            Message::Truncate { rels } => {
                if format == RecordFormat::Debezium {
                    for id in rels {
                        if let Some(r) = st.relations.get(&id).cloned() {
                            let mut buf = Vec::new();
                            pb::field(&mut buf, "op", |b| pb::string(b, "t"));
                            pb::field(&mut buf, "ts_ms", |b| pb::number(b, now_ms() as f64));
                            pb::field(&mut buf, "source", |b| write_source(b, &r, &origin));
                            produced.push(Record {
                                key: String::new(),
                                flag: PayloadFlag::Json,
                                payload: Bytes::from(buf),
                            });
                        }
                    }
                } else {
                    tracing::warn!("TRUNCATE is not represented in the hstream record format; skipped");
                }
            }
            Message::StreamCommit { xid, end_lsn, .. } => {
                if let Some(changes) = st.streamed.remove(&xid) {
                    st.batch.extend(changes.into_iter().map(|(_, r)| r));
                }
                st.last_commit = st.last_commit.max(end_lsn);
            }
            Message::StreamAbort { xid, subxid } => {
                if xid == subxid {
                    st.streamed.remove(&xid);
                } else if let Some(v) = st.streamed.get_mut(&xid) {
                    v.retain(|(s, _)| *s != subxid);
                }
            }
            Message::Relation(_)
            | Message::Type { .. }
            | Message::Origin
            | Message::Message
            | Message::StreamStart { .. }
            | Message::StreamStop => {}
        }
        match (st.in_stream, subxid) {
            (Some(top), Some(sub)) if !produced.is_empty() => {
                st.streamed
                    .entry(top)
                    .or_default()
                    .extend(produced.drain(..).map(|r| (sub, r)));
            }
            _ => st.batch.append(&mut produced),
        }
        st.produced = produced;
        Ok(())
    }

    /// A Relation message: column kinds (looking up user-defined types) and the key. The key is
    /// what pgoutput marks (the replica identity: primary key or the chosen index), except under
    /// REPLICA IDENTITY FULL or NOTHING, where the catalog's primary key is used.
    async fn learn_relation(&mut self, r: pgoutput::Relation) -> Result<(u32, Rel), ConnectorError> {
        let oids: Vec<u32> = r.columns.iter().map(|c| c.type_oid).collect();
        let mut types = std::mem::take(&mut self.types);
        let looked = async {
            let conn = self.control().await?;
            learn_types(conn, &mut types, &oids).await?;
            super::relation_info(conn, r.id)
                .await
                .map_err(|e| query_error("reading the catalog", e))
        }
        .await;
        self.types = types;
        let info = match looked {
            Ok(i) => i,
            Err(e) => {
                // Reopen the catalog connection on the next attempt; never guess types.
                self.control = None;
                return Err(e);
            }
        };
        let flagged: Vec<usize> = r
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
            .collect();
        let key = if matches!(r.replica_identity, b'd' | b'i') && !flagged.is_empty() {
            flagged
        } else {
            let pk: Vec<&str> = info.key.iter().map(|&i| info.columns[i].0.as_str()).collect();
            r.columns
                .iter()
                .enumerate()
                .filter(|(_, c)| pk.contains(&c.name.as_str()))
                .map(|(i, _)| i)
                .collect()
        };
        let rel = Rel {
            schema: r.namespace,
            table: r.name,
            names: r.columns.iter().map(|c| c.name.clone()).collect(),
            kinds: r.columns.iter().map(|c| self.types.kind(c.type_oid)).collect(),
            key,
        };
        Ok((r.id, rel))
    }
}

struct StreamState {
    /// Highest WAL position seen.
    received: u64,
    /// Flush position reported to the server (the runtime's committed offset).
    confirmed: u64,
    /// The offset last emitted.
    emitted: u64,
    /// The end of the last transaction seen (or the server position while idle).
    last_commit: u64,
    /// The WAL position of the message being decoded.
    change_lsn: u64,
    in_txn: bool,
    xid: u32,
    commit_ts_ms: i64,
    /// Inside Stream Start/Stop: the streamed transaction.
    in_stream: Option<u32>,
    /// Changes of streamed transactions not yet committed, with their subtransaction ids.
    streamed: HashMap<u32, Vec<(u32, Record)>>,
    relations: HashMap<u32, Arc<Rel>>,
    batch: Vec<Record>,
    /// Scratch for the records of one message.
    produced: Vec<Record>,
}

impl StreamState {
    fn relation(&self, id: u32) -> Result<Arc<Rel>, ConnectorError> {
        self.relations
            .get(&id)
            .cloned()
            .ok_or_else(|| ConnectorError::internal(format!("change for relation {id} before its Relation message")))
    }

    /// Takes up the committed offset; true when the confirmed position moved.
    fn confirm(&mut self, committed: &tokio::sync::watch::Receiver<Option<PgOffset>>) -> bool {
        let lsn = committed.borrow().as_ref().filter(|o| o.snapshot_done).map(|o| o.lsn);
        match lsn {
            Some(l) if l > self.confirmed => {
                self.confirmed = l;
                true
            }
            _ => false,
        }
    }
}

/// A PostgreSQL duration setting as SHOW prints it (`60s`, `1min`, `500ms`, `0`).
fn parse_pg_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..split].parse().ok()?;
    Some(match &t[split..] {
        "" | "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "min" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => return None,
    })
}

fn stream_err(e: wire::PgError) -> ConnectorError {
    query_error("replication stream", e)
}

fn decode_err(e: pgoutput::DecodeError) -> ConnectorError {
    ConnectorError::internal(e.to_string())
}

#[async_trait]
impl Source for PgSource {
    type Config = PgSourceConfig;
    type Offset = PgOffset;

    async fn check(cfg: &PgSourceConfig) -> Result<(), ConnectorError> {
        let ep = cfg.endpoint();
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
                cfg.user
            )));
        }
        Self::tables(&mut conn, cfg).await?;
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
        let ep = cfg.endpoint();
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
            cfg,
        };
        let cfg_copy = src.cfg.clone();
        let conn = src.control().await?;
        let version = conn
            .query("SHOW server_version_num")
            .await
            .map_err(|e| query_error("SHOW server_version_num", e))?;
        let version = version
            .first()
            .and_then(|r| r[0].as_deref())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let tables = Self::tables(conn, &cfg_copy).await?;
        src.server_version = version;
        src.ensure_publication(&tables).await?;
        Ok(src)
    }

    fn stream(cfg: &PgSourceConfig) -> &str {
        &cfg.stream
    }

    async fn run(&mut self, out: &mut SourceOutput<PgOffset>) -> Result<Done, ConnectorError> {
        let mut repl = self.ep.connect(true, "hstream-cdc").await?;
        let start = match self.resume.clone() {
            Some(o) if o.snapshot_done => {
                if Self::slot_state(&mut repl, &self.slot).await?.is_none() {
                    return Err(ConnectorError::config(format!(
                        "slotName: replication slot {:?} no longer exists; changes after {} are lost to it \
                         (delete and re-create the connector to take a new snapshot)",
                        self.slot,
                        format_lsn(o.lsn)
                    )));
                }
                o.lsn
            }
            _ => match self.cfg.snapshot_mode {
                SnapshotMode::Never => {
                    let lsn = match Self::slot_state(&mut repl, &self.slot).await? {
                        Some((_, lsn)) => lsn,
                        None => Self::create_slot(&mut repl, &self.slot, false, false).await?.0,
                    };
                    out.emit(Vec::new(), self.offset(lsn, true)).await?;
                    lsn
                }
                mode => {
                    // A consistent snapshot needs a slot created with it. Our own default slot
                    // left by a snapshot cut short is dropped; a slot the user named is not ours
                    // to drop.
                    // A checkpoint of this slot with the snapshot unfinished proves it is ours.
                    let ours = self
                        .resume
                        .as_ref()
                        .is_some_and(|o| o.slot == self.slot && !o.snapshot_done);
                    if self.cfg.slot_name.is_some() && !ours && Self::slot_state(&mut repl, &self.slot).await?.is_some()
                    {
                        return Err(ConnectorError::config(format!(
                            "slotName: slot {:?} already exists; snapshotMode={} creates its slot with the snapshot \
                             (drop the slot, or use snapshotMode=never to stream from it)",
                            self.slot,
                            if mode == SnapshotMode::Initial {
                                "initial"
                            } else {
                                "initial_only"
                            }
                        )));
                    }
                    Self::drop_slot(&mut repl, &self.slot).await?;
                    let only = mode == SnapshotMode::InitialOnly;
                    let (lsn, name) = Self::create_slot(&mut repl, &self.slot, only, true).await?;
                    let name = name.ok_or_else(|| ConnectorError::internal("no snapshot was exported"))?;
                    // Checkpointed at once: a restart knows the slot is this connector's.
                    out.emit(Vec::new(), self.offset(lsn, false)).await?;
                    tracing::info!(slot = %self.slot, lsn = %format_lsn(lsn), "slot created; snapshot begins");
                    if let Some(done) = self.snapshot(&name, lsn, out).await? {
                        repl.close().await;
                        return Ok(done);
                    }
                    if only {
                        repl.close().await;
                        return Ok(Done::Completed);
                    }
                    lsn
                }
            },
        };
        self.resume = Some(self.offset(start, true));
        self.stream(repl, start, out).await
    }

    async fn on_delete(cfg: &PgSourceConfig) -> Result<(), ConnectorError> {
        if !cfg.drop_slot_on_delete.unwrap_or(cfg.slot_name.is_none()) {
            return Ok(());
        }
        let mut conn = cfg.endpoint().connect(true, "hstream-cdc-cleanup").await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_show_prints_them() {
        assert_eq!(parse_pg_duration("1min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_duration("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_pg_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_pg_duration("soon"), None);
    }

    #[test]
    fn derived_names_are_valid_slot_names() {
        assert_eq!(derived_name("Orders-CDC.v2"), "hstream_orders_cdc_v2");
        assert!(derived_name(&"x".repeat(100)).len() <= 63);
    }
}
