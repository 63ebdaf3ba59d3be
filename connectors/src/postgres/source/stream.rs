//! Streaming from the slot: decoding pgoutput into records, emitting them at transaction
//! boundaries, and telling the server what is durable.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hstream_runtime::{ConnectorError, Done, Record, SourceOutput};

use super::incremental::Incremental;
use super::records::{Op, Origin, Rel, change, same_key, write_source_fields};
use super::spill::{Committed, InProgress, SpillReader};
use super::{MAX_BATCH, PG_EPOCH_US, PgOffset, PgSource, learn_types};
use crate::cdc::TxMeta;
use crate::pbstruct as pb;
use crate::postgres::pgoutput::{self, Col, Message};
use crate::postgres::query_error;
use crate::postgres::wire::{self, Connection, ReplicationMessage, ReplicationStream, format_lsn, ident};
use crate::snapshots::{MAX_SIGNALS, Signal, SnapshotQueue};

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

    async fn on_data(&mut self, st: &mut StreamState, data: &[u8]) -> Result<(), ConnectorError> {
        let Some(&tag) = data.first() else { return Ok(()) };
        let streaming = st.in_stream.is_some();
        match tag {
            b'R' => {
                let Message::Relation(r) = pgoutput::decode(data, streaming).map_err(decode_err)? else {
                    return Ok(());
                };
                if self
                    .signal
                    .as_ref()
                    .is_some_and(|(s, t)| *s == r.namespace && *t == r.name)
                {
                    st.signal_rel = Some(r.id);
                }
                // A publication may hold tables this connector was not asked for (a shared one,
                // or a table since removed from `tables`): their changes are not ours.
                let Some(captured) = self.captures(r.id, &r.namespace, &r.name).await? else {
                    st.relations.remove(&r.id);
                    st.foreign.insert(r.id);
                    return Ok(());
                };
                st.foreign.remove(&r.id);
                let rel = self.learn_relation(r, captured).await?;
                st.relations.insert(rel.0, Arc::new(rel.1));
                return Ok(());
            }
            b'S' => {
                if let Message::StreamStart { xid } = pgoutput::decode(data, false).map_err(decode_err)? {
                    st.in_stream = Some(xid);
                    st.open_streams.insert(xid);
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
        let db: &str = &self.cfg.endpoint.database;
        let format = self.cfg.capture.format;
        let subxid = if streaming { pgoutput::streamed_xid(data) } else { None };
        let origin = Origin {
            lsn: st.change_lsn,
            tx_id: st.in_stream.unwrap_or(st.xid),
            ts_ms: st.commit_ts_ms,
            snapshot: false,
            db,
        };
        if let Message::Insert { rel, new } = &msg
            && st.signal_rel == Some(*rel)
        {
            // A signal: acted on when its transaction commits.
            let text = |i: usize| match new.get(i) {
                Some(Col::Text(t) | Col::Binary(t)) => Some(String::from_utf8_lossy(t).into_owned()),
                _ => None,
            };
            let (id, kind, data) = (text(0).unwrap_or_default(), text(1).unwrap_or_default(), text(2));
            let id: String = id.chars().take(64).collect();
            let held = st.signals.len() + st.streamed_signals.values().map(Vec::len).sum::<usize>();
            match Signal::parse(&kind, data.as_deref()) {
                Err(why) => tracing::warn!(id = %id, "signal ignored: {why}"),
                Ok(_) if held >= MAX_SIGNALS => {
                    tracing::warn!(id = %id, "signal ignored: more than {MAX_SIGNALS} signals in open transactions");
                }
                Ok(s) => match st.in_stream {
                    Some(top) => st
                        .streamed_signals
                        .entry(top)
                        .or_default()
                        .push((subxid.unwrap_or(top), s)),
                    None => st.signals.push(s),
                },
            }
        }
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
                if self.transactions.is_some() {
                    // Debezium's id for PostgreSQL: the xid and the commit's LSN.
                    st.tx = Some(TxMeta::new(format!("{xid}:{final_lsn}"), st.commit_ts_ms));
                }
            }
            Message::Commit { end_lsn, .. } => {
                st.in_txn = false;
                st.last_commit = st.last_commit.max(end_lsn);
                if let Some(tx) = st.tx.take() {
                    st.tx_batch.extend(tx.records());
                }
                if let Some(d) = self.decoded.as_mut() {
                    d.note(st.xid);
                }
                let signals = std::mem::take(&mut st.signals);
                self.apply_signals(signals, &st.open_streams);
            }
            Message::Insert { rel, .. } | Message::Update { rel, .. } | Message::Delete { rel, .. }
                if st.foreign.contains(&rel) => {}
            Message::Insert { rel, new } => {
                let r = st.relation(rel)?;
                if let Some(inc) = self.inc.as_mut() {
                    inc.note_change(&r, origin.tx_id, streaming, &new);
                }
                produced.push(change(format, &r, Op::Create, None, Some(&new), &origin));
            }
            Message::Update { rel, old, new } => {
                let r = st.relation(rel)?;
                if let Some(inc) = self.inc.as_mut() {
                    inc.note_change(&r, origin.tx_id, streaming, &new);
                    if let Some(old) = &old {
                        inc.note_change(&r, origin.tx_id, streaming, old);
                    }
                }
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
                if let Some(inc) = self.inc.as_mut() {
                    inc.note_change(&r, origin.tx_id, streaming, &old);
                }
                produced.push(change(format, &r, Op::Delete, Some(&old), None, &origin));
            }
            Message::Truncate { rels } => {
                // Foreign relations are not in `relations`: their truncates stay out too.
                for id in rels {
                    if let Some(r) = st.relations.get(&id).cloned() {
                        if let Some(inc) = self.inc.as_mut() {
                            inc.note_truncate(&r, origin.tx_id);
                        }
                        produced.push(crate::cdc::truncate(format, &r.attributes, |b| {
                            write_source_fields(b, &r, &origin)
                        }));
                    }
                }
            }
            Message::StreamCommit { xid, end_lsn, .. } => {
                if let Some(inc) = self.inc.as_mut() {
                    inc.stream_committed(xid);
                }
                if let Some(d) = self.decoded.as_mut() {
                    d.note(xid);
                }
                st.open_streams.remove(&xid);
                let signals = st.streamed_signals.remove(&xid).unwrap_or_default();
                self.apply_signals(signals.into_iter().map(|(_, s)| s).collect(), &st.open_streams);
                match st.streamed.commit(xid).map_err(spill_err)? {
                    Some(Committed::Spilled(reader)) => {
                        // Emitted by the next flush (right away), before anything decoded after it.
                        st.spilled = Some((reader, end_lsn));
                    }
                    Some(Committed::Memory(changes)) => {
                        st.batch.extend(changes);
                        st.last_commit = st.last_commit.max(end_lsn);
                    }
                    None => st.last_commit = st.last_commit.max(end_lsn),
                }
            }
            Message::StreamAbort { xid, subxid } => {
                if let Some(inc) = self.inc.as_mut() {
                    inc.stream_aborted(xid, subxid);
                }
                if xid == subxid {
                    st.open_streams.remove(&xid);
                    st.streamed_signals.remove(&xid);
                } else if let Some(v) = st.streamed_signals.get_mut(&xid) {
                    // A rolled-back subtransaction's signals are gone with it.
                    v.retain(|(sub, _)| *sub != subxid);
                }
                st.streamed.abort(xid, subxid)
            }
            Message::Message { prefix, content, .. } => {
                if let Some(inc) = self.inc.as_mut() {
                    inc.on_message(&self.slot, &prefix, content);
                }
            }
            Message::Relation(_)
            | Message::Type { .. }
            | Message::Origin
            | Message::StreamStart { .. }
            | Message::StreamStop => {}
        }
        if st.in_stream.is_none()
            && let Some(tx) = st.tx.as_mut()
        {
            for r in produced.iter_mut() {
                tx.annotate(r, format);
            }
        }
        match (st.in_stream, subxid) {
            (Some(top), Some(sub)) if !produced.is_empty() => {
                st.streamed.add(top, sub, &mut produced).map_err(spill_err)?;
            }
            _ => st.batch.append(&mut produced),
        }
        st.produced = produced;
        Ok(())
    }

    /// Signals of a committed transaction, in order: incremental snapshots queued, stopped,
    /// paused or resumed. The next offset carries the queue.
    fn apply_signals(&mut self, signals: Vec<Signal>, open_streams: &HashSet<u32>) {
        for signal in signals {
            if self.server_version < 140_000 && matches!(signal, Signal::ExecuteSnapshot { .. }) {
                tracing::warn!("signal execute-snapshot ignored: incremental snapshots need PostgreSQL 14 or later");
                continue;
            }
            let chunk_size = self.cfg.incremental_snapshot_chunk_size as usize;
            let inc = self
                .inc
                .get_or_insert_with(|| Incremental::new(SnapshotQueue::default(), chunk_size));
            let decoded = self.decoded.as_ref().map_or(0, |d| d.seq());
            let applied = inc.apply(&signal, &self.tables, decoded, open_streams);
            tracing::info!("{}", applied.message);
        }
    }

    /// A Relation message: column kinds (looking up user-defined types) and the key. The key is
    /// what pgoutput marks (the replica identity: primary key or the chosen index), except under
    /// REPLICA IDENTITY FULL or NOTHING, where the catalog's primary key is used.
    /// `captured` is the configured table the relation belongs to (itself, or the partitioned
    /// or parent table of a partition or child): its changes are reported as that table's, as
    /// the snapshot reports them.
    async fn learn_relation(
        &mut self,
        r: pgoutput::Relation,
        captured: (String, String),
    ) -> Result<(u32, Rel), ConnectorError> {
        let oids: Vec<u32> = r.columns.iter().map(|c| c.type_oid).collect();
        let mut types = std::mem::take(&mut self.types);
        let looked = async {
            let conn = self.control().await?;
            learn_types(conn, &mut types, &oids).await?;
            crate::postgres::relation_info(conn, r.id)
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
        let (schema, table) = captured;
        let names: Vec<String> = r.columns.iter().map(|c| c.name.clone()).collect();
        let rules = self
            .selection
            .column_rules(&format!("{schema}.{table}"), &names, &key)?;
        let rel = Rel {
            attributes: crate::cdc::source_attributes(&self.cfg.endpoint.database, Some(&schema), &table),
            schema,
            table,
            names,
            kinds: r.columns.iter().map(|c| self.types.kind(c.type_oid)).collect(),
            key,
            rules,
            selection: self.selection.clone(),
        };
        Ok((r.id, rel))
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
