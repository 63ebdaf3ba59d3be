//! Decoding pgoutput messages: change records of the captured tables (with their transaction
//! metadata), signals read from the signal table, and relations learnt from the catalog.

use std::collections::HashSet;
use std::sync::Arc;

use hstream_runtime::ConnectorError;

use super::super::incremental::Incremental;
use super::super::records::{Op, Origin, Rel, change, same_key, write_source_fields};
use super::super::spill::Committed;
use super::super::{PG_EPOCH_US, PgSource, learn_types};
use super::{StreamState, decode_err, spill_err};
use crate::cdc::TxMeta;
use crate::postgres::pgoutput::{self, Col, Message};
use crate::postgres::query_error;
use crate::snapshots::{MAX_SIGNALS, Signal, SnapshotQueue};

impl PgSource {
    pub(super) async fn on_data(&mut self, st: &mut StreamState, data: &[u8]) -> Result<(), ConnectorError> {
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
                st.committed_len = st.batch.len();
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
                        st.committed_len = st.batch.len();
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
