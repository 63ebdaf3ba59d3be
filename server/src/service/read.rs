//! Reading shards: offset resolution, per-shard cursors, and the pump behind the
//! server-streaming read RPCs.
//!
//! Guarantees: within a shard, batches are delivered in LSN order, each once per read; a read
//! stops at its `until` bound (inclusive), after `maxReadBatches` batches (0 = unlimited), when
//! the client goes away, or at server shutdown; without `until` it keeps tailing new batches.
//! Responses stay under [`RESPONSE_BYTES`] of payload (plus one batch) so that clients with the
//! usual 4 MiB receive limit can take them.

use std::sync::Arc;

use hstream_proto::{ReceivedRecord, RecordId, ShardOffset, SpecialOffset, StreamOffset, shard_offset, stream_offset};
use tokio::sync::{mpsc, watch};

use super::ServerCtx;
use crate::catalog::ShardEntry;
use crate::error::{ApiError, ApiResult};
use crate::store::{ReadySet, Shard, StoreError, StoredBatch};

pub const RESPONSE_BYTES: usize = 2 << 20;
/// Batches read from one shard before the pump turns to the next.
const CHUNK_BATCHES: usize = 256;

/// Where a read starts on one shard, before resolution against the log.
#[derive(Debug, Clone, Copy)]
pub enum From {
    Earliest,
    Latest,
    Lsn(u64),
    Timestamp(i64),
}

/// Where a read ends (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Forever,
    Lsn(u64),
    /// Batches appended at or before this time, in ms.
    Timestamp(i64),
}

fn special(v: i32) -> ApiResult<SpecialOffset> {
    SpecialOffset::try_from(v).map_err(|_| ApiError::InvalidOffset(format!("unknown special offset {v}")))
}

pub fn shard_from(shard_id: u64, o: Option<&ShardOffset>) -> ApiResult<From> {
    Ok(match o.and_then(|o| o.offset.as_ref()) {
        None => From::Earliest,
        Some(shard_offset::Offset::SpecialOffset(v)) => match special(*v)? {
            SpecialOffset::Earliest => From::Earliest,
            SpecialOffset::Latest => From::Latest,
        },
        Some(shard_offset::Offset::RecordOffset(r)) => {
            check_record_shard(shard_id, r)?;
            From::Lsn(r.batch_id)
        }
        Some(shard_offset::Offset::TimestampOffset(t)) => From::Timestamp(t.timestamp_in_ms),
    })
}

pub fn stream_from(o: Option<&StreamOffset>) -> ApiResult<From> {
    Ok(match o.and_then(|o| o.offset.as_ref()) {
        None => From::Earliest,
        Some(stream_offset::Offset::SpecialOffset(v)) => match special(*v)? {
            SpecialOffset::Earliest => From::Earliest,
            SpecialOffset::Latest => From::Latest,
        },
        Some(stream_offset::Offset::TimestampOffset(t)) => From::Timestamp(t.timestamp_in_ms),
    })
}

fn check_record_shard(shard_id: u64, r: &RecordId) -> ApiResult<()> {
    if r.shard_id != shard_id {
        return Err(ApiError::ConflictOffset(format!(
            "record id names shard {} but the read is on shard {shard_id}",
            r.shard_id
        )));
    }
    Ok(())
}

/// `until` as sent, resolved against the shard's state now (LATEST = the tail at this moment).
pub fn shard_until(log: &dyn Shard, o: Option<&ShardOffset>) -> ApiResult<Until> {
    log.check_available()?;
    Ok(match o.and_then(|o| o.offset.as_ref()) {
        None => Until::Forever,
        Some(shard_offset::Offset::SpecialOffset(v)) => match special(*v)? {
            SpecialOffset::Earliest => Until::Lsn(log.start_lsn()),
            SpecialOffset::Latest => Until::Lsn(log.visible_lsn()),
        },
        Some(shard_offset::Offset::RecordOffset(r)) => {
            check_record_shard(log.id(), r)?;
            Until::Lsn(r.batch_id)
        }
        Some(shard_offset::Offset::TimestampOffset(t)) => Until::Timestamp(t.timestamp_in_ms),
    })
}

pub fn stream_until(log: &dyn Shard, o: Option<&StreamOffset>) -> ApiResult<Until> {
    log.check_available()?;
    Ok(match o.and_then(|o| o.offset.as_ref()) {
        None => Until::Forever,
        Some(stream_offset::Offset::SpecialOffset(v)) => match special(*v)? {
            SpecialOffset::Earliest => Until::Lsn(log.start_lsn()),
            SpecialOffset::Latest => Until::Lsn(log.visible_lsn()),
        },
        Some(stream_offset::Offset::TimestampOffset(t)) => Until::Timestamp(t.timestamp_in_ms),
    })
}

/// Resolves a start position to an LSN.
pub async fn resolve_from(log: &dyn Shard, from: From) -> ApiResult<u64> {
    log.check_available()?;
    Ok(match from {
        From::Earliest => log.start_lsn(),
        From::Latest => log.visible_lsn() + 1,
        From::Lsn(l) => l,
        From::Timestamp(t) => log.lsn_at_or_after(t).await?,
    })
}

pub use crate::store::now_ms;

pub use crate::batch::{received, timestamp};

/// A position in one shard with its end bound.
pub struct ShardCursor {
    pub shard: ShardEntry,
    pub next: u64,
    pub until: Until,
    pub done: bool,
    rx: watch::Receiver<u64>,
}

impl ShardCursor {
    pub fn new(shard: ShardEntry, next: u64, until: Until) -> Self {
        let rx = shard.log.subscribe();
        let done = matches!(until, Until::Lsn(u) if next > u);
        ShardCursor {
            shard,
            next,
            until,
            done,
            rx,
        }
    }

    /// Reads what is available now, up to the limits, and marks the cursor done at its bound.
    pub async fn read_chunk(&mut self, max_batches: usize, max_bytes: usize) -> ApiResult<Vec<StoredBatch>> {
        if self.done {
            return Ok(Vec::new());
        }
        if self.shard.log.is_deleted() {
            self.done = true;
            return Err(StoreError::ShardDeleted(self.shard.meta.id).into());
        }
        // Mark the current tail seen before reading, so an append racing with the read still
        // wakes a later wait.
        let visible = *self.rx.borrow_and_update();
        let mut batches = self.shard.log.read(self.next, max_batches, max_bytes).await?;
        if let Until::Timestamp(t) = self.until
            && let Some(i) = batches.iter().position(|b| b.timestamp_ms > t)
        {
            batches.truncate(i);
            self.done = true;
        }
        if let Until::Lsn(u) = self.until {
            batches.retain(|b| b.lsn <= u);
        }
        if let Some(last) = batches.last() {
            self.next = last.lsn + 1;
        } else if self.next <= visible {
            // Everything up to the tail was trimmed away under us: skip past it.
            self.next = self.next.max(self.shard.log.start_lsn());
        }
        match self.until {
            Until::Lsn(u) if self.next > u => self.done = true,
            // Batches are stamped under the shard lock with max(now, last stamp): once everything
            // written is read and the clock has passed `t`, no later batch can qualify.
            Until::Timestamp(t) if batches.is_empty() && t < now_ms() && self.next > self.shard.log.written_lsn() => {
                self.done = true
            }
            _ => {}
        }
        Ok(batches)
    }

    /// When a read bounded by a future time must give up waiting for appends.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        match self.until {
            Until::Timestamp(t) if !self.done => {
                // The client's `t` may be anything: a time beyond what an Instant can hold means
                // no deadline at all.
                let wait_ms = t.saturating_add(1).saturating_sub(now_ms()).max(0) as u64;
                tokio::time::Instant::now().checked_add(std::time::Duration::from_millis(wait_ms))
            }
            _ => None,
        }
    }

    /// Resolves when the shard's visible tail moves (or the shard goes away).
    pub async fn wait(&mut self) {
        // The sender lives as long as the shard log this cursor holds, so this cannot fail;
        // deletion bumps the channel and the next read reports it.
        let _ = self.rx.changed().await;
    }
}

/// Feeds batches from `cursors` to `tx` until every cursor is done, `max_batches` (0 =
/// unlimited) have been sent, the client disconnects, or the server shuts down.
///
/// Cursors take turns (a chunk each); one whose read came back empty sits out until its shard's
/// tail moves (the store marks it in a [`ReadySet`]) or its time bound passes, so a tailing
/// read over many idle shards reads only the shards that got data.
pub async fn pump<R: Send + 'static>(
    ctx: Arc<ServerCtx>,
    mut cursors: Vec<ShardCursor>,
    max_batches: u64,
    tx: mpsc::Sender<Result<R, tonic::Status>>,
    wrap: fn(Vec<ReceivedRecord>) -> R,
) {
    let mut remaining = if max_batches == 0 { u64::MAX } else { max_batches };
    // Registered before the first read, so no append after it is missed.
    let ready = ReadySet::new();
    for (i, c) in cursors.iter().enumerate() {
        c.shard.log.notify_on_append(&ready, i);
    }
    let mut queued = vec![false; cursors.len()];
    let mut turns = std::collections::VecDeque::new();
    let mut open = 0;
    for (i, c) in cursors.iter().enumerate() {
        if !c.done {
            open += 1;
            queued[i] = true;
            turns.push_back(i);
        }
    }
    // Only cursors bounded by a future time have a deadline; they are few and rarely woken.
    let timed: Vec<usize> = (0..cursors.len())
        .filter(|&i| matches!(cursors[i].until, Until::Timestamp(_)))
        .collect();
    loop {
        if open == 0 || remaining == 0 || ctx.shutdown.is_cancelled() {
            return;
        }
        for i in ready.take() {
            if !cursors[i].done && !queued[i] {
                queued[i] = true;
                turns.push_back(i);
            }
        }
        let Some(i) = turns.pop_front() else {
            let deadline = timed.iter().filter_map(|&i| cursors[i].deadline()).min();
            let timer = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ready.ready() => {}
                _ = timer => {
                    for &i in &timed {
                        if !cursors[i].done && !queued[i] {
                            queued[i] = true;
                            turns.push_back(i);
                        }
                    }
                }
                _ = ctx.shutdown.cancelled() => return,
                _ = tx.closed() => return,
            }
            continue;
        };
        queued[i] = false;
        let c = &mut cursors[i];
        let limit = remaining.min(CHUNK_BATCHES as u64) as usize;
        let batches = match c.read_chunk(limit, RESPONSE_BYTES).await {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        if c.done {
            open -= 1;
        }
        if batches.is_empty() {
            continue;
        }
        if !c.done {
            // It may have more: another turn after the others.
            queued[i] = true;
            turns.push_back(i);
        }
        remaining -= batches.len() as u64;
        let shard_id = c.shard.meta.id;
        let records = batches.into_iter().map(|b| received(shard_id, b)).collect();
        // A client that stops reading must not hold up shutdown.
        tokio::select! {
            sent = tx.send(Ok(wrap(records))) => if sent.is_err() { return },
            _ = ctx.shutdown.cancelled() => return,
        }
    }
}
