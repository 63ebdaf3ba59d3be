//! Streaming from the slot: emitting records at transaction boundaries and telling the server
//! what is durable; `decode` turns pgoutput messages into those records.

mod decode;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hstream_runtime::{ConnectorError, Done, Record, SourceOutput};

use super::records::Rel;
use super::spill::{InProgress, SpillReader};
use super::{MAX_BATCH, PgOffset, PgSource};
use crate::cdc::TxMeta;
use crate::pbstruct as pb;
use crate::postgres::pgoutput;
use crate::postgres::query_error;
use crate::postgres::wire::{self, Connection, ReplicationMessage, ReplicationStream, format_lsn, ident};
use crate::snapshots::Signal;

/// How often the slot's lag is measured (one `pg_current_wal_lsn()` query on the catalog
/// connection), how long a probe may take, and the pause after a failed one.
const LAG_PROBE_EVERY: Duration = Duration::from_millis(500);
const LAG_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const LAG_PROBE_BACKOFF: Duration = Duration::from_secs(30);

impl PgSource {
    /// The server's current WAL write position.
    async fn server_wal_end(&mut self) -> Option<u64> {
        let conn = self.control().await.ok()?;
        match conn.query("SELECT pg_current_wal_lsn()::text").await {
            Ok(rows) => rows.first()?.first()?.as_deref().and_then(wire::parse_lsn),
            Err(e) => {
                // E.g. a standby ("recovery is in progress"): no reading, the connection stays.
                tracing::debug!(error = %e, "lag probe failed");
                None
            }
        }
    }

    pub(super) async fn stream(
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
        // Logical decoding messages (PostgreSQL 14+) carry the incremental snapshots' watermarks.
        let messages = self.server_version >= 140_000;
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (\"proto_version\" '{}', \"publication_names\" {publication_names}{}{})",
            ident(&self.slot),
            format_lsn(start),
            if v2 { 2 } else { 1 },
            if v2 { ", \"streaming\" 'on'" } else { "" },
            if messages { ", \"messages\" 'true'" } else { "" }
        );
        let mut rs = repl.start_replication(&command).await.map_err(|e| match e.code() {
            Some("55006") => ConnectorError::external("slotName").with_source(e),
            _ => query_error("START_REPLICATION", e),
        })?;
        out.report(format!("streaming from {}", format_lsn(start)));
        let cancel = out.cancelled();
        let mut committed = out.committed();
        let mut st = StreamState {
            received: start,
            server_end: start,
            confirmed: start,
            emitted: start,
            last_commit: start,
            committed_len: 0,
            quiet_through: start,
            change_lsn: start,
            in_txn: false,
            xid: 0,
            commit_ts_ms: 0,
            in_stream: None,
            streamed: InProgress::new(self.cfg.streaming_memory_bytes as usize),
            spilled: None,
            relations: HashMap::new(),
            foreign: HashSet::new(),
            signal_rel: None,
            signals: Vec::new(),
            streamed_signals: HashMap::new(),
            open_streams: HashSet::new(),
            tx: None,
            tx_batch: Vec::new(),
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
        // Catching up to a known end, the server's position is asked for often: an idle server
        // says it has sent everything only when asked.
        let beat = if self.catch_up.is_some() {
            100
        } else {
            self.cfg.heartbeat_interval_ms
        };
        let mut heartbeat = tokio::time::interval(Duration::from_millis(beat));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rs.send_status(st.received, st.confirmed, false)
            .await
            .map_err(stream_err)?;
        let status_every = Duration::from_millis(self.cfg.heartbeat_interval_ms);
        let mut last_status = tokio::time::Instant::now();
        let mut next_lag_probe = tokio::time::Instant::now();
        let heartbeats: Option<Arc<str>> = self.cfg.capture.heartbeat_stream.as_deref().map(Arc::from);
        let mut next_heartbeat = tokio::time::Instant::now();
        loop {
            if let Some(to) = &heartbeats
                && tokio::time::Instant::now() >= next_heartbeat
            {
                next_heartbeat = tokio::time::Instant::now() + status_every;
                let lsn = st.emitted;
                let db = &self.cfg.endpoint.database;
                let record = crate::cdc::heartbeat(&self.cfg.stream, |b| {
                    pb::field(b, "connector", |b| pb::string(b, "postgresql"));
                    pb::field(b, "db", |b| pb::string(b, db));
                    pb::field(b, "slot", |b| pb::string(b, &self.slot));
                    pb::field(b, "lsn", |b| pb::number(b, lsn as f64));
                });
                self.emit_answering_to(
                    Some(to.clone()),
                    &mut st,
                    out,
                    &mut rs,
                    &mut committed,
                    vec![record],
                    lsn,
                )
                .await?;
            }
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
            // The slot's lag: WAL the server has written and we have not made durable yet. A
            // logical walsender's messages carry only what it sent, so ask on the catalog
            // connection (a failed probe just skips a reading).
            if tokio::time::Instant::now() >= next_lag_probe {
                match tokio::time::timeout(LAG_PROBE_TIMEOUT, self.server_wal_end()).await {
                    Ok(Some(end)) => {
                        st.server_end = end;
                        next_lag_probe = tokio::time::Instant::now() + LAG_PROBE_EVERY;
                        out.set_lag(hstream_runtime::Lag::Bytes(end.saturating_sub(st.confirmed)));
                    }
                    failed => {
                        if failed.is_err() {
                            self.control = None; // stalled: reconnect when next needed
                        }
                        next_lag_probe = tokio::time::Instant::now() + LAG_PROBE_BACKOFF;
                    }
                }
            }
            // Decode what has been read already; emit when the batch is full or the socket dry.
            while let Some(m) = rs.next_buffered().map_err(stream_err)? {
                match m {
                    ReplicationMessage::XLogData { wal_start, data, .. } => {
                        st.received = st.received.max(wal_start);
                        st.change_lsn = wal_start;
                        self.on_data(&mut st, &data).await?;
                        if self.inc.as_ref().is_some_and(|i| i.is_ready()) {
                            // A chunk's watermark: what came before goes out, then the chunk,
                            // with an offset that counts it, before anything decoded after it.
                            self.flush(&mut st, out, &mut rs, &mut committed).await?;
                            let (records, report) = self.chunk_records(wal_start);
                            if let Some(records) = records {
                                let lsn = st.emitted;
                                self.emit_answering(&mut st, out, &mut rs, &mut committed, records, lsn)
                                    .await?;
                            }
                            if !report.is_empty() {
                                out.report(report);
                            }
                            last_heard = tokio::time::Instant::now();
                        }
                    }
                    ReplicationMessage::Keepalive { wal_end, reply } => {
                        st.received = st.received.max(wal_end);
                        // Outside a decoded transaction, every commit before `wal_end` has been
                        // received (streamed transactions still open do not matter here).
                        if !st.in_txn {
                            st.quiet_through = st.quiet_through.max(wal_end);
                        }
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
                if st.batch.len() >= MAX_BATCH || st.spilled.is_some() {
                    self.flush(&mut st, out, &mut rs, &mut committed).await?;
                    // Emitting (a spilled transaction may take long) is not the server's silence.
                    last_heard = tokio::time::Instant::now();
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
            if self.inc.as_ref().is_some_and(|i| i.wants_chunk()) {
                self.read_chunk().await?;
                if self
                    .inc
                    .as_ref()
                    .is_some_and(|i| i.wants_chunk() || i.offset().is_none())
                {
                    // A table gone, or the last one: its progress goes into the next offset.
                    if self.inc.as_ref().is_some_and(|i| i.offset().is_none()) {
                        self.inc = None;
                    }
                    let lsn = st.emitted;
                    self.emit_answering(&mut st, out, &mut rs, &mut committed, Vec::new(), lsn)
                        .await?;
                }
                continue;
            }
            if self.inc.as_ref().is_some_and(|i| i.offset().is_none()) {
                // Every incremental snapshot is complete: the next offset says so.
                self.inc = None;
                let lsn = st.emitted;
                self.emit_answering(&mut st, out, &mut rs, &mut committed, Vec::new(), lsn)
                    .await?;
                out.report("incremental snapshots complete".to_owned());
            }
            if let Some(end) = self.catch_up
                && (st.emitted >= end || (st.quiet_through >= end && st.batch.is_empty() && st.spilled.is_none()))
            {
                // initial_only taken again has streamed past its snapshot's end: done.
                rs.close().await;
                self.catch_up = None;
                let repl = self.ep.connect(true, "hstream-cdc").await?;
                return self.complete(repl, out, st.emitted).await;
            }
            // A chunk waiting to be read again wakes the loop when its time comes.
            let retry = self.inc.as_ref().filter(|i| i.queue.ready()).and_then(|i| i.retry_at);
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
                _ = tokio::time::sleep_until(retry.unwrap_or(last_heard + silence)), if retry.is_some() => {}
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
        if let Some(to) = &self.transactions
            && !st.tx_batch.is_empty()
        {
            // BEGIN/END records of the transactions in this batch, with the offset before them.
            let records = std::mem::take(&mut st.tx_batch);
            let lsn = st.emitted;
            self.emit_answering_to(Some(to.clone()), st, out, rs, committed, records, lsn)
                .await?;
        }
        let mut records = std::mem::replace(&mut st.batch, Vec::with_capacity(MAX_BATCH));
        // Records of the transaction still open go out after the committed ones, with the same
        // offset, which does not cover them (a restart sends them again): so the runtime knows
        // where a restart at an offset replays from (exactly-once appends).
        let open = records.split_off(st.committed_len.min(records.len()));
        st.committed_len = 0;
        // A big streamed transaction arrives whole: it goes out in batches, all but the last
        // with the previous offset.
        while !records.is_empty() || st.last_commit > st.emitted {
            let rest = if records.len() > MAX_BATCH {
                records.split_off(MAX_BATCH)
            } else {
                Vec::new()
            };
            let lsn = if rest.is_empty() { st.last_commit } else { st.emitted };
            self.emit_answering(st, out, rs, committed, std::mem::replace(&mut records, rest), lsn)
                .await?;
        }
        if !open.is_empty() {
            let lsn = st.emitted;
            self.emit_answering(st, out, rs, committed, open, lsn).await?;
        }
        // A spilled transaction that just committed: read back in batches with the offset
        // before it, then its end.
        if let Some((mut spilled, end)) = st.spilled.take() {
            loop {
                let chunk = spilled.next_chunk(MAX_BATCH).map_err(spill_err)?;
                if chunk.is_empty() {
                    break;
                }
                self.emit_answering(st, out, rs, committed, chunk, st.emitted).await?;
            }
            st.last_commit = st.last_commit.max(end);
            self.emit_answering(st, out, rs, committed, Vec::new(), st.last_commit)
                .await?;
        }
        Ok(())
    }

    /// One emit with the offset `lsn`, telling the server our position while the pipeline is full.
    async fn emit_answering(
        &self,
        st: &mut StreamState,
        out: &mut SourceOutput<PgOffset>,
        rs: &mut ReplicationStream,
        committed: &mut tokio::sync::watch::Receiver<Option<PgOffset>>,
        records: Vec<Record>,
        lsn: u64,
    ) -> Result<(), ConnectorError> {
        self.emit_answering_to(None, st, out, rs, committed, records, lsn).await
    }

    /// [`emit_answering`](Self::emit_answering) to the stream `to` (`None`: the source's).
    #[allow(clippy::too_many_arguments)]
    async fn emit_answering_to(
        &self,
        to: Option<Arc<str>>,
        st: &mut StreamState,
        out: &mut SourceOutput<PgOffset>,
        rs: &mut ReplicationStream,
        committed: &mut tokio::sync::watch::Receiver<Option<PgOffset>>,
        records: Vec<Record>,
        lsn: u64,
    ) -> Result<(), ConnectorError> {
        st.emitted = lsn;
        // While an initial_only run catches up, its snapshot does not count as done yet.
        let offset = self.offset(lsn, self.catch_up.is_none());
        let emit = async {
            match to {
                Some(to) => out.emit_to(to, records, offset).await,
                None => out.emit(records, offset).await,
            }
        };
        tokio::pin!(emit);
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.heartbeat_interval_ms));
        tick.tick().await;
        loop {
            tokio::select! {
                r = &mut emit => return r,
                _ = tick.tick() => rs.send_status(st.received, st.confirmed, false).await.map_err(stream_err)?,
                changed = committed.changed() => {
                    if changed.is_ok() && st.confirm(committed) {
                        rs.send_status(st.received, st.confirmed, false).await.map_err(stream_err)?;
                    }
                }
            }
        }
    }
}

struct StreamState {
    /// Highest WAL position seen.
    received: u64,
    /// The server's WAL write position at the last lag probe.
    server_end: u64,
    /// Flush position reported to the server (the runtime's committed offset).
    confirmed: u64,
    /// The offset last emitted.
    emitted: u64,
    /// The end of the last transaction seen (or the server position while idle).
    last_commit: u64,
    /// How many records of `batch` belong to committed transactions (the rest to the open one).
    committed_len: usize,
    /// The server's position in a keepalive received outside a decoded transaction: every
    /// commit before it has been received (transactions streamed while open aside).
    quiet_through: u64,
    /// The WAL position of the message being decoded.
    change_lsn: u64,
    in_txn: bool,
    xid: u32,
    commit_ts_ms: i64,
    /// Inside Stream Start/Stop: the streamed transaction.
    in_stream: Option<u32>,
    /// Changes of streamed transactions not yet committed (spilled past the memory budget).
    streamed: InProgress,
    /// A spilled transaction that committed, with its end: emitted by the next flush.
    spilled: Option<(SpillReader, u64)>,
    relations: HashMap<u32, Arc<Rel>>,
    /// Relations of the publication that this connector does not capture.
    foreign: HashSet<u32>,
    /// The signal table's relation.
    signal_rel: Option<u32>,
    /// Signals of the transaction being decoded, and of transactions streamed while in progress
    /// (by top-level transaction, with the subtransaction that inserted each).
    signals: Vec<Signal>,
    streamed_signals: HashMap<u32, Vec<(u32, Signal)>>,
    /// Transactions being streamed while in progress.
    open_streams: HashSet<u32>,
    /// The metadata of the transaction being decoded, and BEGIN/END records not emitted yet.
    tx: Option<TxMeta>,
    tx_batch: Vec<Record>,
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

fn spill_err(e: std::io::Error) -> ConnectorError {
    ConnectorError::external("spilling an in-progress transaction to a temporary file").with_source(e)
}

fn decode_err(e: pgoutput::DecodeError) -> ConnectorError {
    ConnectorError::internal(e.to_string())
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
}
