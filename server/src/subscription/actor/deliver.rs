//! Delivery: which shard sends next, what it sends (resends first, then new batches), and the
//! limits that hold it back (`maxUnackedRecords`, a full consumer).

use std::sync::atomic::Ordering;

use hstream_proto as pb;
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Actor, READ_CHUNK, SentTo};
use crate::error::ApiResult;
use crate::store::StoredBatch;

impl Actor {
    /// Sends what can be sent now, a chunk per shard per turn over the active shards in queue
    /// order (so a busy shard cannot starve the others): resends first, then new batches, both
    /// only while fewer than `maxUnackedRecords` records are out. Stops once every active shard
    /// had a turn without progress; shards with nothing to do leave the queue.
    pub(super) async fn deliver(&mut self) {
        // Shards that got data join the queue here too, not only when the wait returns for
        // them: a steady flow of commands (acks for a busy shard) must not starve the others.
        for si in self.ready.take() {
            self.activate(si);
        }
        let mut stalled = 0;
        while stalled < self.active.len() && self.below_limit() {
            let si = self.active.pop_front().expect("stalled < len");
            match self.deliver_shard(si).await {
                Turn::Progressed => {
                    stalled = 0;
                    self.active.push_back(si);
                }
                Turn::Blocked => {
                    stalled += 1;
                    self.active.push_back(si);
                }
                Turn::Idle => self.shards[si].active = false,
            }
        }
    }

    fn below_limit(&self) -> bool {
        self.outstanding < self.sub.max_unacked.max(1) as u64
    }

    /// One turn for one shard.
    async fn deliver_shard(&mut self, si: usize) -> Turn {
        self.turns += 1;
        let Some(owner) = self.shards[si].owner.clone() else {
            return Turn::Idle;
        };
        if self.shards[si].log.is_deleted() {
            // Nothing more will come from it (the subscription is being deleted with it).
            return Turn::Idle;
        }
        let mut progressed = false;
        let stop = |progressed: bool| if progressed { Turn::Progressed } else { Turn::Blocked };
        for _ in 0..READ_CHUNK {
            let Some(&lsn) = self.shards[si].resend.first() else {
                break;
            };
            if !self.below_limit() || !self.has_room(&owner) {
                return stop(progressed);
            }
            match self.read_one(si, lsn).await {
                Ok(Some(batch)) => {
                    self.shards[si].resend.pop_first();
                    match self.send(si, &owner, batch) {
                        Sent::Yes => progressed = true,
                        Sent::Full => return stop(progressed),
                        Sent::Gone => return Turn::Progressed,
                    }
                }
                Ok(None) => {
                    // Trimmed while it waited: nothing left to deliver or wait for.
                    let s = &mut self.shards[si];
                    s.resend.pop_first();
                    s.again.remove(&lsn);
                    s.tracker.forget(lsn);
                    self.touch(si);
                    progressed = true;
                }
                // Keep it queued; a later turn (at the latest after the commit tick) tries again.
                Err(()) => return stop(progressed),
            }
        }
        let visible = self.shards[si].log.visible_lsn();
        let from = self.shards[si].tracker.read_next;
        if from > visible {
            return if progressed || !self.shards[si].resend.is_empty() {
                stop(progressed)
            } else {
                Turn::Idle
            };
        }
        if !self.below_limit() || !self.has_room(&owner) {
            return stop(progressed);
        }
        let batches = match self.shards[si].log.read(from, READ_CHUNK, 1 << 20).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(subscription = %self.sub.id, shard = self.shards[si].id, error = %e, "read failed");
                return stop(progressed);
            }
        };
        if batches.is_empty() {
            // Trimmed from under us: continue after the trim point.
            let start = self.shards[si].log.start_lsn();
            if start <= from {
                return stop(progressed);
            }
            self.shards[si].tracker.skip_to(start);
            self.shards[si].prune_early();
            self.touch(si);
            return Turn::Progressed;
        }
        for batch in batches {
            if batch.lsn > self.shards[si].tracker.read_next {
                self.shards[si].tracker.skip_to(batch.lsn);
                self.shards[si].prune_early();
                self.touch(si);
            }
            if !self.below_limit() || !self.has_room(&owner) {
                break;
            }
            match self.send(si, &owner, batch) {
                Sent::Yes => progressed = true,
                Sent::Full => break,
                Sent::Gone => return Turn::Progressed,
            }
        }
        stop(progressed)
    }

    fn has_room(&self, owner: &str) -> bool {
        self.consumers.get(owner).is_some_and(|c| c.tx.capacity() > 0)
    }

    /// The batch at `lsn`: `Ok(None)` when it was trimmed, `Err` when the read failed.
    async fn read_one(&self, si: usize, lsn: u64) -> Result<Option<StoredBatch>, ()> {
        let log = &self.shards[si].log;
        if lsn < log.start_lsn() {
            return Ok(None);
        }
        match log.read(lsn, 1, 1 << 20).await {
            Ok(got) => Ok(got.into_iter().next().filter(|b| b.lsn == lsn)),
            Err(e) => {
                tracing::error!(subscription = %self.sub.id, shard = self.shards[si].id, lsn, error = %e, "resend read failed");
                Err(())
            }
        }
    }

    /// Sends the not-yet-acked records of `batch` to `owner` and starts their ack clock.
    fn send(&mut self, si: usize, owner: &str, batch: StoredBatch) -> Sent {
        let timeout = self.ack_timeout();
        let Some(c) = self.consumers.get(owner) else {
            return Sent::Gone;
        };
        let (tx, conn) = (c.tx.clone(), c.conn);
        let s = &mut self.shards[si];
        let lsn = batch.lsn;
        let before = s.tracker.outstanding_records();
        let mut indices = s.tracker.deliver(lsn, batch.batch_size);
        if let Some(early) = s.early_acks.remove(&lsn) {
            s.early_count -= early.len();
            for i in early {
                let _ = s.tracker.ack(lsn, i);
            }
            indices = s.tracker.get(lsn).map(|f| f.unacked_indices()).unwrap_or_default();
            // Acks beyond the prefix now: the next checkpoint must hold them.
            self.dirty = true;
            self.touched.insert(si);
        }
        self.outstanding = self.outstanding + s.tracker.outstanding_records() - before;
        if indices.is_empty() {
            // A fully acked (restored) batch: the prefix may have moved.
            self.dirty = true;
            self.touched.insert(si);
            return Sent::Yes;
        }
        let record = match subset(s.id, batch.clone(), &indices) {
            Ok(r) => r,
            Err(e) => {
                // Stored batches were validated on append, so this is damage: send it whole
                // rather than hold up the shard (acked records in it may come again).
                tracing::error!(subscription = %self.sub.id, shard = s.id, lsn, error = %e, "cannot rebuild batch");
                crate::batch::received(s.id, batch)
            }
        };
        match tx.try_send(Ok(pb::StreamingFetchResponse {
            received_records: Some(record),
        })) {
            Ok(()) => {
                // Counted as sent again only when a consumer had it before (not when a full
                // channel made us hold it back).
                let counter = if s.again.remove(&lsn) {
                    &self.stats.redelivered
                } else {
                    &self.stats.delivered
                };
                counter.fetch_add(indices.len() as u64, Ordering::Relaxed);
                let now = Instant::now();
                let due = now + timeout;
                if let Some(old) = s.sent.insert(lsn, SentTo { conn, at: now, due }) {
                    self.deadlines.remove(&(old.due, si, lsn, old.conn));
                }
                self.deadlines.insert((due, si, lsn, conn));
                Sent::Yes
            }
            Err(e) => {
                let before = s.tracker.outstanding_records();
                s.tracker.withdraw(lsn);
                self.outstanding -= before - s.tracker.outstanding_records();
                s.resend.insert(lsn);
                match e {
                    mpsc::error::TrySendError::Full(_) => Sent::Full,
                    mpsc::error::TrySendError::Closed(_) => {
                        // The consumer's stream is gone: hand its batches to the others now.
                        self.remove_consumer(owner);
                        Sent::Gone
                    }
                }
            }
        }
    }
}

enum Sent {
    Yes,
    Full,
    Gone,
}

/// What one delivery turn of a shard came to.
enum Turn {
    /// Something was sent or skipped: the shard may have more.
    Progressed,
    /// It has something to send but cannot now (limit, full consumer, failed read).
    Blocked,
    /// Nothing to send until its tail moves, a batch comes back or its owner changes.
    Idle,
}

/// The records of `batch` at `indices`: the stored batch as is when that is all of them,
/// otherwise rebuilt (uncompressed) with record ids keeping their original batch index.
fn subset(shard_id: u64, batch: StoredBatch, indices: &[u32]) -> ApiResult<pb::ReceivedRecord> {
    let whole = indices.len() == batch.batch_size as usize;
    let mut rr = crate::batch::received(shard_id, batch);
    if whole {
        return Ok(rr);
    }
    let record = rr.record.take().expect("received batch has a record");
    let mut all = crate::batch::decode_records(&record, usize::MAX)?;
    let picked: Vec<pb::HStreamRecord> = indices
        .iter()
        .filter_map(|&i| all.records.get_mut(i as usize).map(std::mem::take))
        .collect();
    rr.record_ids = indices
        .iter()
        .map(|&i| pb::RecordId {
            shard_id,
            batch_id: rr.record_ids[0].batch_id,
            batch_index: i,
        })
        .collect();
    rr.record = Some(pb::BatchedRecord {
        compression_type: pb::CompressionType::None as i32,
        publish_time: record.publish_time,
        batch_size: picked.len() as u32,
        payload: pb::BatchHStreamRecords { records: picked }.encode_to_vec().into(),
    });
    Ok(rr)
}
