//! Reading shards: offset resolution, per-shard cursors, and the pump behind the
//! server-streaming read RPCs.
//!
//! Guarantees: within a shard, batches are delivered in LSN order, each once per read; a read
//! stops at its `until` bound (inclusive), after `maxReadBatches` batches (0 = unlimited), when
//! the client goes away, or at server shutdown; without `until` it keeps tailing new batches.
//! Responses stay under [`RESPONSE_BYTES`] of payload (plus one batch) so that clients with the
//! usual 4 MiB receive limit can take them.

use hstream_proto::{ReceivedRecord, RecordId, ShardOffset, SpecialOffset, StreamOffset, shard_offset, stream_offset};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::batch::{received, timestamp};
use crate::error::{ApiError, ApiResult};
pub use crate::store::now_ms;
use crate::store::{ReadySet, Shard};
pub use crate::streams::read::{From, ShardCursor, Until, resolve_from};

pub const RESPONSE_BYTES: usize = 2 << 20;
/// Batches read from one shard before the pump turns to the next.
const CHUNK_BATCHES: usize = 256;

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

/// Whether a shard read ends at LATEST or at a time: its end depends on the tail now, so the
/// tail is synced first (appends acknowledged through other nodes included).
pub fn shard_until_needs_tail(o: Option<&ShardOffset>) -> bool {
    match o.and_then(|o| o.offset.as_ref()) {
        Some(shard_offset::Offset::SpecialOffset(v)) => *v == SpecialOffset::Latest as i32,
        Some(shard_offset::Offset::TimestampOffset(_)) => true,
        _ => false,
    }
}

/// Whether a stream read ends at LATEST or at a time.
pub fn stream_until_needs_tail(o: Option<&StreamOffset>) -> bool {
    match o.and_then(|o| o.offset.as_ref()) {
        Some(stream_offset::Offset::SpecialOffset(v)) => *v == SpecialOffset::Latest as i32,
        Some(stream_offset::Offset::TimestampOffset(_)) => true,
        _ => false,
    }
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

/// Feeds batches from `cursors` to `tx` until every cursor is done, `max_batches` (0 =
/// unlimited) have been sent, the client disconnects, or the server shuts down.
///
/// Cursors take turns (a chunk each); one whose read came back empty sits out until its shard's
/// tail moves (the store marks it in a [`ReadySet`]) or its time bound passes, so a tailing
/// read over many idle shards reads only the shards that got data.
pub async fn pump<R: Send + 'static>(
    shutdown: CancellationToken,
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
        if open == 0 || remaining == 0 || shutdown.is_cancelled() {
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
                _ = shutdown.cancelled() => return,
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
            _ = shutdown.cancelled() => return,
        }
    }
}
