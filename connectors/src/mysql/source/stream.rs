//! Streaming: the binlog read from the start offset, rows of captured tables turned into
//! records, offsets advanced at transaction ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use hstream_runtime::{ConnectorError, Done, Record, SourceOutput};
use mysql_async::BinlogStreamRequest;
use mysql_async::prelude::Queryable;

use super::gtid_set::GtidSet;
use super::records::{Origin, change, same_key};
use super::schema::{self, Described, Table};
use super::{GtidState, MAX_BATCH, MySqlOffset, MySqlSource, PositionMode, format_gtid_state, parse_gtid_state};
use crate::cdc::{Op, TxMeta};
use crate::mysql::binlog::{self, MariaGtid, Rows, TableMap, event};
use crate::mysql::values::{Cell, DecodeError};
use crate::mysql::{literal, query_error};
use crate::pbstruct as pb;
use crate::snapshots::{MAX_SIGNALS, Signal, SnapshotQueue};

/// A captured table's layout as of its last TABLE_MAP.
struct Mapped {
    raw: Vec<u8>,
    types: Vec<u8>,
    metas: Vec<[u8; 2]>,
    table: Arc<Table>,
}

struct State {
    /// Unix seconds of the last event read that carried a time (for the lag metric).
    event_ts: u32,
    file: String,
    gtid: GtidState,
    /// The GTID of the transaction being read (MariaDB).
    current: Option<(u32, u32, u64)>,
    /// MySQL: the executed GTID set at `committed` (when the start had one).
    mysql_set: Option<GtidSet>,
    /// The GTID of the transaction being read (MySQL): source UUID and number.
    current_mysql: Option<([u8; 16], u64)>,
    in_txn: bool,
    committed: MySqlOffset,
    /// `committed` moved since the last emit.
    dirty: bool,
    batch: Vec<Record>,
    /// How many records of `batch` belong to committed transactions (the rest to the open one).
    committed_len: usize,
    /// TABLE_MAP per table id; `None`: a table we do not capture.
    maps: HashMap<u64, Option<Mapped>>,
    described: HashMap<(String, String), Described>,
    /// A DDL statement was seen: descriptions are re-read at the next TABLE_MAP.
    stale: bool,
    /// End position of the last MySQL TRANSACTION_PAYLOAD event.
    payload_end: u64,
    /// The end of the last event read outside a transaction: every change before it is read.
    at: super::incremental::BinlogPos,
    /// `at` comes from an event read (not the stored start position).
    at_known: bool,
    /// Signals of the transaction being read, acted on at its commit.
    signals: Vec<Signal>,
    /// The metadata of the transaction being read, and BEGIN/END records not emitted yet.
    tx: Option<TxMeta>,
    tx_batch: Vec<Record>,
    /// The offset of the last batch emitted.
    emitted: MySqlOffset,
    last_flush: std::time::Instant,
}

fn decode_error(e: DecodeError) -> ConnectorError {
    ConnectorError::internal("binlog").with_source(e)
}

fn binlog_error(e: mysql_async::Error) -> ConnectorError {
    match &e {
        // ER_MASTER_FATAL_ERROR_READING_BINLOG: the position is gone (purged) or invalid.
        mysql_async::Error::Server(s) if s.code == 1236 => ConnectorError::config(format!(
            "binlog: the server cannot send from the stored position: {} (purged binlogs lose the changes in them; \
             delete and re-create the connector to take a new snapshot)",
            s.message
        )),
        mysql_async::Error::Server(s) if matches!(s.code, 1227 | 1045 | 1142) => ConnectorError::config(format!(
            "user: cannot read the binlog: {} (needs REPLICATION SLAVE)",
            s.message
        )),
        _ => ConnectorError::external("binlog").with_source(e),
    }
}

/// `TRUNCATE [TABLE] [db.]t` → `(db, table)`.
fn truncated_table(sql: &str, default_db: &str) -> Option<(String, String)> {
    let mut words = sql.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("truncate") {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("table") {
        name = words.next()?;
    }
    let name = name.trim_end_matches(';').replace('`', "");
    Some(match name.split_once('.') {
        Some((d, t)) => (d.to_owned(), t.to_owned()),
        None => (default_db.to_owned(), name),
    })
}

/// An event's header as the server wrote it (what its checksum covers).
fn header_bytes(h: &mysql_async::binlog::events::BinlogEventHeader) -> [u8; 19] {
    let mut b = [0u8; 19];
    b[0..4].copy_from_slice(&h.timestamp().to_le_bytes());
    b[4] = h.event_type_raw();
    b[5..9].copy_from_slice(&h.server_id().to_le_bytes());
    b[9..13].copy_from_slice(&h.event_size().to_le_bytes());
    b[13..17].copy_from_slice(&h.log_pos().to_le_bytes());
    b[17..19].copy_from_slice(&h.flags_raw().to_le_bytes());
    b
}

fn is_ddl(sql: &str) -> bool {
    let mut sql = sql.trim_start();
    // Leading comments (`/* ApplicationName=… */ ALTER …`).
    while let Some(rest) = sql.strip_prefix("/*") {
        sql = rest.split_once("*/").map_or("", |(_, r)| r).trim_start();
    }
    let first = sql.split_whitespace().next().unwrap_or("");
    ["alter", "create", "drop", "rename"]
        .iter()
        .any(|k| first.eq_ignore_ascii_case(k))
}

impl MySqlSource {
    pub(super) async fn stream(
        &mut self,
        start: MySqlOffset,
        out: &mut SourceOutput<MySqlOffset>,
    ) -> Result<Done, ConnectorError> {
        let mut conn = self.ep.connect(&[]).await?;
        let heartbeat = Duration::from_millis(self.cfg.heartbeat_interval_ms);
        let set = |e| query_error("preparing the binlog session", e);
        conn.query_drop(format!("SET @master_heartbeat_period = {}", heartbeat.as_nanos()))
            .await
            .map_err(set)?;
        let gtid = start.gtid.as_deref().unwrap_or("");
        let by_gtid = self.cfg.position_mode == PositionMode::Gtid && !gtid.is_empty();
        // MySQL: the executed GTID set resumed from, and grown by each transaction read.
        let mysql_set = match GtidSet::parse(gtid) {
            _ if self.mariadb || gtid.is_empty() => None,
            Some(set) => Some(set),
            // By file and position, a set we cannot read is just not kept.
            None if !by_gtid => None,
            None => {
                return Err(ConnectorError::config(format!(
                    "positionMode: the GTID set {gtid:?} cannot be resumed from by this source (uuid:interval…; \
                     tagged GTIDs are not supported): use positionMode=file"
                )));
            }
        };
        if self.mariadb {
            // MariaDB's own GTID events (rather than BEGIN queries) and, by GTID, where to start.
            conn.query_drop("SET @mariadb_slave_capability = 4")
                .await
                .map_err(set)?;
            if by_gtid {
                conn.query_drop(format!("SET @slave_connect_state = {}", literal(gtid)))
                    .await
                    .map_err(set)?;
                conn.query_drop("SET @slave_gtid_strict_mode = 0").await.map_err(set)?;
                conn.query_drop("SET @slave_gtid_ignore_duplicates = 0")
                    .await
                    .map_err(set)?;
            }
        }
        let mut described = HashMap::new();
        for (db, t, d) in Self::tables(&mut conn, &self.cfg, &self.selection).await? {
            described.insert((db, t), d);
        }
        // The signal table's rows are decoded too: read as signals, emitted only if captured.
        if let Some((db, t)) = self.signal.clone()
            && !described.contains_key(&(db.clone(), t.clone()))
            && let Some(d) = schema::describe(&mut conn, &db, &t).await?
        {
            described.insert((db, t), d);
        }
        let server_id = self.cfg.server_id();
        let file = if by_gtid { String::new() } else { start.file.clone() };
        let pos = if by_gtid { 4 } else { start.pos.max(4) };
        let mut request = BinlogStreamRequest::new(server_id)
            .with_filename(file.as_bytes())
            .with_pos(pos);
        if by_gtid && let Some(set) = &mysql_set {
            // COM_BINLOG_DUMP_GTID: the server sends what is not in the set.
            request = request.with_gtid().with_gtid_set(set.to_sids());
        }
        tracing::info!(
            file = %start.file,
            pos = start.pos,
            gtid = %gtid,
            by_gtid,
            server_id,
            "binlog streaming begins"
        );
        let mut binlog = conn.get_binlog_stream(request).await.map_err(binlog_error)?;
        self.plan_incremental(&start);
        let start_at = super::incremental::BinlogPos {
            file: start.file.clone(),
            pos: start.pos,
        };
        let mut st = State {
            file: start.file.clone(),
            gtid: if self.mariadb {
                parse_gtid_state(gtid).unwrap_or_default()
            } else {
                GtidState::new()
            },
            mysql_set,
            current_mysql: None,
            current: None,
            in_txn: false,
            emitted: self.stamped(&start),
            committed: start,
            dirty: false,
            batch: Vec::with_capacity(MAX_BATCH),
            committed_len: 0,
            maps: HashMap::new(),
            described,
            stale: false,
            payload_end: 0,
            at: start_at,
            at_known: false,
            last_flush: std::time::Instant::now(),
            event_ts: 0,
            signals: Vec::new(),
            tx: None,
            tx_batch: Vec::new(),
        };
        let cancel = out.cancelled();
        // Three missed heartbeats: the connection is dead even if TCP has not noticed.
        let silence = heartbeat * 3 + Duration::from_secs(5);
        let heartbeats: Option<Arc<str>> = self.cfg.capture.heartbeat_stream.as_deref().map(Arc::from);
        let mut next_heartbeat = std::time::Instant::now();
        let mut last_event = std::time::Instant::now();
        loop {
            if let Some(to) = &heartbeats
                && std::time::Instant::now() >= next_heartbeat
            {
                next_heartbeat = std::time::Instant::now() + heartbeat;
                // What was read goes out first: the heartbeat's offset claims nothing beyond it.
                self.flush(&mut st, out).await?;
                let o = self.stamped(&st.committed);
                let record = crate::cdc::heartbeat(&self.cfg.stream, |b| {
                    pb::field(b, "connector", |b| pb::string(b, "mysql"));
                    pb::field(b, "file", |b| pb::string(b, &o.file));
                    pb::field(b, "pos", |b| pb::number(b, o.pos as f64));
                    if let Some(g) = &o.gtid {
                        pb::field(b, "gtid", |b| pb::string(b, g));
                    }
                });
                out.emit_to(to.clone(), vec![record], o).await?;
            }
            // The start position's file name is the stored one, which after a failover or a
            // binlog reset may number differently: only positions read from events count, or
            // the very position of the new snapshot (nothing in between).
            if !st.in_txn
                && let Some(end) = &self.catch_up
                && ((st.at_known && st.at.reached(end)) || st.at == *end)
            {
                // initial_only taken again has replayed up to its new snapshot: complete.
                self.catch_up = None;
                self.flush(&mut st, out).await?;
                let done = self.stamped(&st.committed);
                out.emit(Vec::new(), done.clone()).await?;
                out.report("snapshot done; caught up with the changes since the first attempt".to_owned());
                return Ok(Done::Completed);
            }
            let next = match binlog.next().now_or_never() {
                Some(ev) => ev,
                None => {
                    // Nothing more to read right now: what we have goes out.
                    self.flush(&mut st, out).await?;
                    if !st.in_txn && self.inc.is_some() && self.incremental_step(&mut st, out).await? {
                        // A chunk went out or was read: look for events again before waiting.
                        continue;
                    }
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return Ok(Done::Cancelled),
                        // Woken for our heartbeat records too, on time.
                        r = tokio::time::timeout(
                            match &heartbeats {
                                Some(_) => next_heartbeat.saturating_duration_since(std::time::Instant::now()).min(silence),
                                None => silence,
                            },
                            binlog.next(),
                        ) => match r {
                            Ok(ev) => ev,
                            Err(_) if last_event.elapsed() < silence => continue,
                            Err(_) => return Err(ConnectorError::external(format!(
                                "binlog: no event or heartbeat for {silence:?}; reconnecting"
                            ))),
                        },
                    }
                }
            };
            let ev = match next {
                None => return Err(ConnectorError::external("binlog: the server ended the stream")),
                Some(Err(e)) => return Err(binlog_error(e)),
                Some(Ok(ev)) => ev,
            };
            last_event = std::time::Instant::now();
            // Heartbeats and artificial events carry no time; a heartbeat comes only while the
            // server has nothing newer to send: then we are not behind.
            let ts = ev.header().timestamp();
            if ts > 0 {
                st.event_ts = ts;
            } else if ev.header().event_type_raw() == event::HEARTBEAT {
                out.set_lag(hstream_runtime::Lag::Seconds(0.0));
            }
            self.handle(&mut st, &ev).await?;
            if !st.in_txn {
                let end = u64::from(ev.header().log_pos());
                if end > 0 && ev.header().event_type_raw() != event::ROTATE {
                    st.at = super::incremental::BinlogPos {
                        file: st.file.clone(),
                        pos: end,
                    };
                    st.at_known = true;
                }
                self.incremental_step(&mut st, out).await?;
            }
            // Full batches go out; so does a moved position at least every second, even while
            // the binlog never runs dry (e.g. busy with tables we do not capture).
            if st.batch.len() >= MAX_BATCH || (st.dirty && st.last_flush.elapsed() >= Duration::from_secs(1)) {
                if cancel.is_cancelled() {
                    return Ok(Done::Cancelled);
                }
                self.flush(&mut st, out).await?;
                let behind = crate::cdc::now_ms() as f64 / 1000.0 - f64::from(st.event_ts);
                out.set_lag(hstream_runtime::Lag::Seconds(behind.max(0.0)));
            }
        }
    }

    /// Emits the batch with the last transaction end (records of an open transaction go out
    /// after it, with the same offset, which does not cover them).
    async fn flush(&self, st: &mut State, out: &mut SourceOutput<MySqlOffset>) -> Result<(), ConnectorError> {
        if st.batch.is_empty() && !st.dirty {
            return Ok(());
        }
        if st.dirty && self.inc.is_none() {
            out.report(format!("streaming at {}:{}", st.committed.file, st.committed.pos));
        }
        st.dirty = false;
        st.last_flush = std::time::Instant::now();
        if let Some(to) = &self.transactions
            && !st.tx_batch.is_empty()
        {
            // BEGIN/END records of the transactions in this batch, with the offset before them.
            out.emit_to(to.clone(), std::mem::take(&mut st.tx_batch), st.emitted.clone())
                .await?;
        }
        let offset = self.stamped(&st.committed);
        st.emitted = offset.clone();
        // The open transaction's records go out in an emit of their own with the same offset,
        // which does not cover them (a restart sends them again): so the runtime knows where
        // a restart at this offset replays from (exactly-once appends).
        let mut records = std::mem::take(&mut st.batch);
        let open = records.split_off(st.committed_len.min(records.len()));
        st.committed_len = 0;
        out.emit(records, offset.clone()).await?;
        if open.is_empty() {
            return Ok(());
        }
        out.emit(open, offset).await
    }

    /// Between transactions: the chunk in flight goes out once the stream has read up to its
    /// position (after what came before it, in an emit of its own that records its progress),
    /// and the next chunk is read.
    /// Returns whether anything was done (a chunk sent or read).
    async fn incremental_step(
        &mut self,
        st: &mut State,
        out: &mut SourceOutput<MySqlOffset>,
    ) -> Result<bool, ConnectorError> {
        let mut progressed = false;
        // A chunk read at a position already reached (an idle binlog) goes out at once.
        for _ in 0..2 {
            if self.inc.as_ref().is_some_and(|i| i.ready_at(&st.at)) {
                // What came before goes out with the progress before the chunk; then the chunk,
                // with the progress past it.
                self.flush(st, out).await?;
                let Some(inc) = self.inc.as_mut() else { break };
                let (records, report) = inc.take_chunk(self.cfg.capture.format);
                st.emitted = self.stamped(&st.committed);
                out.emit(records, st.emitted.clone()).await?;
                out.report(report);
                progressed = true;
            }
            if !self.inc.as_ref().is_some_and(|i| i.wants_chunk()) {
                break;
            }
            self.read_chunk().await?;
            progressed = true;
        }
        if self.inc.as_ref().is_some_and(|i| i.offset().is_none()) {
            // Every chunk is out already (in emits of their own): nothing is claimed early.
            self.flush(st, out).await?;
            self.inc = None;
            st.emitted = self.stamped(&st.committed);
            out.emit(Vec::new(), st.emitted.clone()).await?;
            out.report("incremental snapshots complete".to_owned());
            progressed = true;
        }
        Ok(progressed)
    }

    fn commit(&self, st: &mut State, end: u64) {
        if let Some(tx) = st.tx.take() {
            st.tx_batch.extend(tx.records());
        }
        if let Some((d, s, n)) = st.current.take() {
            st.gtid.insert(d, (s, n));
        }
        if let (Some((uuid, gno)), Some(set)) = (st.current_mysql.take(), st.mysql_set.as_mut()) {
            set.add(uuid, gno);
        }
        st.in_txn = false;
        st.committed_len = st.batch.len();
        st.committed = MySqlOffset {
            file: st.file.clone(),
            pos: end,
            gtid: if self.mariadb {
                Some(format_gtid_state(&st.gtid))
            } else {
                st.mysql_set.as_ref().map(ToString::to_string)
            },
            snapshot_done: true,
            tables: None,
            incremental: None,
        };
        st.dirty = true;
    }

    async fn handle(&mut self, st: &mut State, ev: &mysql_async::binlog::events::Event) -> Result<(), ConnectorError> {
        let h = ev.header();
        let data = ev.data();
        // Events unpacked from a MySQL TRANSACTION_PAYLOAD carry no position: they end where the
        // payload does.
        let end = match u64::from(h.log_pos()) {
            0 => st.payload_end,
            p => p,
        };
        match h.event_type_raw() {
            event::TRANSACTION_PAYLOAD => st.payload_end = end,
            event::ROTATE => {
                let (file, _) = binlog::rotate(&header_bytes(&h), data).map_err(decode_error)?;
                st.file = file;
            }
            event::MARIADB_GTID => {
                let g = MariaGtid::parse(data).map_err(decode_error)?;
                st.current = Some((g.domain, h.server_id(), g.seq));
                st.in_txn = !g.standalone;
            }
            event::MYSQL_GTID => {
                let (uuid, gno) = binlog::mysql_gtid(data).map_err(decode_error)?;
                st.current_mysql = Some((uuid, gno));
            }
            event::XID => {
                self.commit(st, end);
                self.apply_signals(st);
            }
            event::QUERY => {
                let (schema, sql) = binlog::query(data).map_err(decode_error)?;
                let sql = String::from_utf8_lossy(sql);
                let sql = sql.trim();
                if sql.eq_ignore_ascii_case("BEGIN") {
                    st.in_txn = true;
                } else if sql.eq_ignore_ascii_case("COMMIT") {
                    self.commit(st, end);
                    self.apply_signals(st);
                } else {
                    if is_ddl(sql) {
                        // The statement's first words only: DDL such as CREATE USER … IDENTIFIED BY
                        // carries credentials.
                        let head: Vec<&str> = sql.split_whitespace().take(2).collect();
                        tracing::info!(statement = %head.join(" "), "DDL in the binlog; table layouts are re-read");
                        st.stale = true;
                        st.maps.clear();
                    }
                    let db = String::from_utf8_lossy(schema).into_owned();
                    // The signal table's own truncate is not captured unless the table is.
                    if let Some(key) = truncated_table(sql, &db)
                        && st.described.contains_key(&key)
                        && (self.signal.as_ref() != Some(&key) || self.tables.contains(&key))
                    {
                        self.truncated(st, &key, &h, end);
                    }
                    if !st.in_txn {
                        self.commit(st, end);
                        self.apply_signals(st);
                    }
                }
            }
            event::TABLE_MAP => self.table_map(st, data).await?,
            t @ (event::WRITE_ROWS_V1
            | event::UPDATE_ROWS_V1
            | event::DELETE_ROWS_V1
            | event::WRITE_ROWS
            | event::UPDATE_ROWS
            | event::DELETE_ROWS) => self.rows(st, t, data, &h, end)?,
            event::PARTIAL_UPDATE_ROWS => {
                return Err(ConnectorError::config(
                    "binlog: partial JSON updates (binlog_row_value_options=PARTIAL_JSON) are not supported; \
                     turn the option off",
                ));
            }
            event::MARIADB_QUERY_COMPRESSED..=event::MARIADB_DELETE_ROWS_COMPRESSED => {
                return Err(ConnectorError::config(
                    "binlog: compressed row events (log_bin_compress=ON) are not supported; turn log_bin_compress off",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// Signals of the transaction just committed, in order.
    fn apply_signals(&mut self, st: &mut State) {
        for signal in std::mem::take(&mut st.signals) {
            let chunk_size = self.cfg.incremental_snapshot_chunk_size as usize;
            let inc = self
                .inc
                .get_or_insert_with(|| super::incremental::Incremental::new(SnapshotQueue::default(), chunk_size));
            let applied = inc.apply(&signal, &self.tables);
            tracing::info!("{}", applied.message);
        }
    }

    fn truncated(
        &self,
        st: &mut State,
        key: &(String, String),
        h: &mysql_async::binlog::events::BinlogEventHeader,
        end: u64,
    ) {
        let attributes = crate::cdc::source_attributes(&key.0, None, &key.1);
        let record = crate::cdc::truncate(self.cfg.capture.format, &attributes, |b| {
            pb::field(b, "connector", |b| pb::string(b, "mysql"));
            pb::field(b, "db", |b| pb::string(b, &key.0));
            pb::field(b, "table", |b| pb::string(b, &key.1));
            pb::field(b, "server_id", |b| pb::number(b, f64::from(h.server_id())));
            pb::field(b, "file", |b| pb::string(b, &st.file));
            pb::field(b, "pos", |b| pb::number(b, end as f64));
            pb::field(b, "ts_ms", |b| pb::number(b, f64::from(h.timestamp()) * 1000.0));
        });
        let mut produced = vec![record];
        self.annotate(st, &mut produced, h, end);
        st.batch.append(&mut produced);
    }

    /// With transaction metadata: counts the change records of the transaction being read
    /// (its id: the GTID, else the binlog position of its first change) and gives Debezium's
    /// envelope its `transaction` block.
    fn annotate(
        &self,
        st: &mut State,
        produced: &mut [Record],
        h: &mysql_async::binlog::events::BinlogEventHeader,
        end: u64,
    ) {
        if self.transactions.is_none() || produced.is_empty() {
            return;
        }
        if st.tx.is_none() {
            let id = match (st.current, st.current_mysql) {
                (Some((d, s, n)), _) => format!("{d}-{s}-{n}"),
                (None, Some((uuid, gno))) => format!("{}:{gno}", super::gtid_set::format_uuid(&uuid)),
                (None, None) => format!("{}:{end}", st.file),
            };
            st.tx = Some(TxMeta::new(id, i64::from(h.timestamp()) * 1000));
        }
        let tx = st.tx.as_mut().expect("just set");
        for r in produced.iter_mut() {
            tx.annotate(r, self.cfg.capture.format);
        }
    }

    async fn table_map(&mut self, st: &mut State, data: &[u8]) -> Result<(), ConnectorError> {
        let id = data.iter().take(6).rev().fold(0u64, |a, &x| (a << 8) | u64::from(x));
        // Every transaction repeats its TABLE_MAPs; an unchanged one is not decoded again.
        match st.maps.get(&id) {
            Some(Some(m)) if m.raw == data => return Ok(()),
            _ => {}
        }
        let tm = TableMap::parse(data).map_err(decode_error)?;
        let key = (tm.schema.clone(), tm.table.clone());
        if !st.described.contains_key(&key) {
            st.maps.insert(id, None);
            return Ok(());
        }
        if st.stale {
            let mut conn = self.ep.connect(&[]).await?;
            for ((db, t), d) in st.described.iter_mut() {
                if let Some(now) = schema::describe(&mut conn, db, t).await? {
                    *d = now;
                }
            }
            let _ = conn.disconnect().await;
            st.stale = false;
        }
        let table = schema::from_table_map(&tm, &st.described[&key], &self.collations, &self.selection)?;
        if table.key.is_empty() {
            tracing::debug!(table = %format!("{}.{}", key.0, key.1), "table has no primary key: records have a null key");
        }
        st.maps.insert(
            id,
            Some(Mapped {
                raw: data.to_vec(),
                types: tm.types,
                metas: tm.metas,
                table,
            }),
        );
        Ok(())
    }

    fn rows(
        &self,
        st: &mut State,
        t: u8,
        data: &[u8],
        h: &mysql_async::binlog::events::BinlogEventHeader,
        end: u64,
    ) -> Result<(), ConnectorError> {
        let v2 = t >= event::WRITE_ROWS;
        let update = matches!(t, event::UPDATE_ROWS_V1 | event::UPDATE_ROWS);
        let delete = matches!(t, event::DELETE_ROWS_V1 | event::DELETE_ROWS);
        let rows = Rows::parse(data, v2, update).map_err(decode_error)?;
        let m = match st.maps.get(&rows.table_id) {
            Some(Some(m)) => m,
            Some(None) => return Ok(()),
            // Rows must follow their TABLE_MAP; skipping them could lose a captured table's.
            None => {
                return Err(decode_error(DecodeError(format!(
                    "rows event for table id {} without a TABLE_MAP",
                    rows.table_id
                ))));
            }
        };
        if rows.columns != m.types.len() {
            return Err(decode_error(DecodeError(format!(
                "rows event for {}.{} has {} columns, its TABLE_MAP {}",
                m.table.db,
                m.table.name,
                rows.columns,
                m.types.len()
            ))));
        }
        let gtid = st.current.map(|(d, s, n)| format!("{d}-{s}-{n}"));
        let origin = Origin {
            file: &st.file,
            pos: end,
            gtid: gtid.as_deref(),
            server_id: h.server_id(),
            ts_ms: i64::from(h.timestamp()) * 1000,
            snapshot: false,
        };
        let format = self.cfg.capture.format;
        let table = &*m.table;
        let is_signal = self
            .signal
            .as_ref()
            .is_some_and(|(d, t)| *d == table.db && *t == table.name);
        let captured = !is_signal || self.tables.iter().any(|(d, t)| *d == table.db && *t == table.name);
        let mut before: Vec<Cell<'_>> = Vec::with_capacity(m.types.len());
        let mut after: Vec<Cell<'_>> = Vec::with_capacity(m.types.len());
        let mut pos = 0;
        let mut produced = Vec::new();
        while pos < rows.data.len() {
            binlog::read_image(
                rows.data,
                &mut pos,
                rows.present,
                &m.types,
                &m.metas,
                &table.kinds,
                &mut before,
            )
            .map_err(decode_error)?;
            if let Some(present_after) = rows.present_after {
                binlog::read_image(
                    rows.data,
                    &mut pos,
                    present_after,
                    &m.types,
                    &m.metas,
                    &table.kinds,
                    &mut after,
                )
                .map_err(decode_error)?;
                if !table.key.is_empty() && !same_key(table, &before, &after) {
                    // The key changed: the old row is gone, a new one appears.
                    produced.push(change(format, table, Op::Delete, Some(&before), None, &origin));
                    produced.push(change(format, table, Op::Create, None, Some(&after), &origin));
                } else {
                    produced.push(change(format, table, Op::Update, Some(&before), Some(&after), &origin));
                }
            } else if delete {
                produced.push(change(format, table, Op::Delete, Some(&before), None, &origin));
            } else {
                if is_signal {
                    let (id, kind, data) = (cell_text(&before, 0), cell_text(&before, 1), cell_text(&before, 2));
                    let id: String = id.unwrap_or_default().chars().take(64).collect();
                    match Signal::parse(kind.as_deref().unwrap_or_default(), data.as_deref()) {
                        Err(why) => tracing::warn!(id = %id, "signal ignored: {why}"),
                        Ok(_) if st.signals.len() >= MAX_SIGNALS => {
                            tracing::warn!(id = %id, "signal ignored: more than {MAX_SIGNALS} in one transaction");
                        }
                        Ok(s) => st.signals.push(s),
                    }
                }
                produced.push(change(format, table, Op::Create, None, Some(&before), &origin));
            }
        }
        if captured {
            self.annotate(st, &mut produced, h, end);
            st.batch.append(&mut produced);
        }
        Ok(())
    }
}

/// A signal column's text (strings, or integers for an id).
fn cell_text(cells: &[Cell<'_>], i: usize) -> Option<String> {
    match cells.get(i)? {
        Cell::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Cell::Int(n) => Some(n.to_string()),
        Cell::UInt(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements() {
        assert_eq!(
            truncated_table("TRUNCATE TABLE `app`.`t`", "x"),
            Some(("app".into(), "t".into()))
        );
        assert_eq!(truncated_table("truncate t", "app"), Some(("app".into(), "t".into())));
        assert_eq!(truncated_table("ALTER TABLE t ADD c INT", "app"), None);
        assert!(is_ddl("  ALTER TABLE t ADD c INT"));
        assert!(!is_ddl("INSERT INTO t VALUES (1)"));
        assert!(is_ddl("/* app */ alter table t drop c"));
    }
}
