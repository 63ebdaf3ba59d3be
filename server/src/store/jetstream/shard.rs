//! One shard on JetStream: its stream's sequence is the shard's LSN. Positions are kept in
//! memory (from the stream's state when opened, then from acknowledgements and tail
//! announcements) so the synchronous calls of the interface answer without a round trip;
//! batches are fetched with direct gets, several in flight at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_nats::jetstream::stream;
use async_trait::async_trait;
use tokio::sync::watch;

use super::{COMPRESSION, RECORDS};
use crate::store::ready::Listeners;
use crate::store::{ReadySet, Shard, StoreError, StoredBatch};

/// Direct gets in flight at once for one read.
const IN_FLIGHT: usize = 32;

pub struct JsShard {
    id: u64,
    /// The shard's stream, through a context with a short request timeout: a get that went to
    /// a server being lost is asked again soon, within `timeout`.
    stream: stream::Stream<()>,
    /// How long one read may keep asking.
    timeout: std::time::Duration,
    /// First LSN still held.
    start: AtomicU64,
    /// Last acknowledged LSN this node knows of.
    visible: watch::Sender<u64>,
    deleted: AtomicBool,
    listeners: Listeners,
    reads: AtomicU64,
}

fn unix_ms(t: &async_nats::jetstream::message::StreamMessage) -> i64 {
    (t.time.unix_timestamp_nanos() / 1_000_000) as i64
}

impl JsShard {
    pub(super) fn new(
        id: u64,
        stream: stream::Stream<()>,
        state: &stream::State,
        timeout: std::time::Duration,
    ) -> Self {
        JsShard {
            id,
            stream,
            timeout,
            start: AtomicU64::new(state.first_sequence.max(1)),
            visible: watch::Sender::new(state.last_sequence),
            deleted: AtomicBool::new(false),
            listeners: Listeners::default(),
            reads: AtomicU64::new(0),
        }
    }

    /// Every LSN up to `lsn` is acknowledged: readers may see it.
    pub(super) fn advance(&self, lsn: u64) {
        let moved = self.visible.send_if_modified(|v| {
            if lsn > *v {
                *v = lsn;
                true
            } else {
                false
            }
        });
        if moved {
            self.listeners.wake();
        }
    }

    pub(super) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::SeqCst);
        self.visible.send_modify(|_| {});
        self.listeners.wake();
    }

    fn live(&self) -> Result<(), StoreError> {
        if self.is_deleted() {
            return Err(StoreError::ShardDeleted(self.id));
        }
        Ok(())
    }

    fn gone(&self, e: impl std::fmt::Display) -> StoreError {
        let text = e.to_string();
        if text.contains("stream not found") || text.contains("no responders") {
            StoreError::Unavailable {
                shard: self.id,
                reason: format!("its JetStream stream is gone ({text})"),
            }
        } else {
            StoreError::Down(format!("reading shard {}: {text}", self.id))
        }
    }

    /// The batches at `lsns` (fetched together); a batch purged meanwhile is left out. A get
    /// that timed out (its server being lost, a leader changing) is asked again, within the
    /// store's timeout.
    async fn fetch(&self, lsns: std::ops::RangeInclusive<u64>) -> Result<Vec<StoredBatch>, StoreError> {
        let deadline = std::time::Instant::now() + self.timeout;
        let got = loop {
            let gets = lsns
                .clone()
                .map(|lsn| async move { (lsn, self.stream.direct_get(lsn).await) });
            let got = futures::future::join_all(gets).await;
            let again = got.iter().any(|(_, r)| {
                matches!(r, Err(e) if matches!(e.kind(), stream::DirectGetErrorKind::TimedOut | stream::DirectGetErrorKind::Request))
            });
            if !again || std::time::Instant::now() >= deadline {
                break got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let mut out = Vec::with_capacity(got.len());
        for (lsn, res) in got {
            let msg = match res {
                Ok(msg) => msg,
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => continue,
                Err(e) => return Err(self.gone(e)),
            };
            let header = |name: &str| msg.headers.get(name).and_then(|v| v.as_str().parse::<u64>().ok());
            let (Some(records), Some(compression)) = (header(RECORDS), header(COMPRESSION)) else {
                return Err(StoreError::Corrupt(format!(
                    "shard {} LSN {lsn}: the message lacks {RECORDS} or {COMPRESSION}",
                    self.id
                )));
            };
            out.push(StoredBatch {
                lsn,
                timestamp_ms: unix_ms(&msg),
                batch_size: records as u32,
                compression: compression as u8,
                payload: msg.payload,
            });
        }
        Ok(out)
    }

    /// The timestamp of the batch at `lsn` (`None` if purged meanwhile).
    async fn time_of(&self, lsn: u64) -> Result<Option<i64>, StoreError> {
        Ok(self.fetch(lsn..=lsn).await?.first().map(|b| b.timestamp_ms))
    }
}

#[async_trait]
impl Shard for JsShard {
    fn id(&self) -> u64 {
        self.id
    }
    fn start_lsn(&self) -> u64 {
        self.start.load(Ordering::SeqCst)
    }
    fn visible_lsn(&self) -> u64 {
        *self.visible.borrow()
    }
    fn written_lsn(&self) -> u64 {
        self.visible_lsn()
    }
    fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }
    fn check_available(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
    }
    fn notify_on_append(&self, set: &Arc<ReadySet>, key: usize) {
        self.listeners.register(set, key);
    }
    fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    async fn read(&self, from: u64, max_batches: usize, max_bytes: usize) -> Result<Vec<StoredBatch>, StoreError> {
        self.live()?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        let first = from.max(self.start_lsn());
        let last = self
            .visible_lsn()
            .min(first.saturating_add(max_batches.max(1) as u64 - 1));
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut next = first;
        while next <= last && (out.is_empty() || bytes < max_bytes) {
            let upto = last.min(next + IN_FLIGHT as u64 - 1);
            for b in self.fetch(next..=upto).await? {
                if !out.is_empty() && bytes >= max_bytes {
                    break;
                }
                bytes += b.wire_len();
                out.push(b);
            }
            next = upto + 1;
        }
        Ok(out)
    }

    async fn lsn_at_or_after(&self, ts: i64) -> Result<u64, StoreError> {
        self.live()?;
        // Timestamps never decrease along the stream: a binary search by direct gets.
        let (mut lo, mut hi) = (self.start_lsn(), self.visible_lsn() + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.time_of(mid).await? {
                Some(t) if t >= ts => hi = mid,
                // Below the wanted time, or purged meanwhile (older still).
                _ => lo = mid + 1,
            }
        }
        Ok(lo)
    }

    async fn records_from(&self, from: u64) -> Result<u64, StoreError> {
        self.live()?;
        let (mut next, last) = (from.max(self.start_lsn()), self.visible_lsn());
        let mut records = 0;
        while next <= last {
            let upto = last.min(next + IN_FLIGHT as u64 - 1);
            records += self
                .fetch(next..=upto)
                .await?
                .iter()
                .map(|b| b.batch_size as u64)
                .sum::<u64>();
            next = upto + 1;
        }
        Ok(records)
    }

    async fn trim(&self, upto: u64) -> Result<u64, StoreError> {
        self.live()?;
        let upto = upto.min(self.visible_lsn());
        let trimmed = self.start_lsn() - 1;
        if upto <= trimmed {
            return Ok(trimmed);
        }
        // JetStream's purge keeps `sequence` and drops everything below it.
        self.stream.purge().sequence(upto + 1).await.map_err(|e| self.gone(e))?;
        self.start.fetch_max(upto + 1, Ordering::SeqCst);
        Ok(upto)
    }
}

/// A listed shard whose JetStream stream is missing: served as unavailable, never recreated.
pub(super) struct Missing {
    pub(super) id: u64,
    pub(super) stream: String,
}

impl Missing {
    fn err(&self) -> StoreError {
        StoreError::Unavailable {
            shard: self.id,
            reason: format!("its JetStream stream {} is missing", self.stream),
        }
    }
}

#[async_trait]
impl Shard for Missing {
    fn id(&self) -> u64 {
        self.id
    }
    fn start_lsn(&self) -> u64 {
        0
    }
    fn visible_lsn(&self) -> u64 {
        0
    }
    fn written_lsn(&self) -> u64 {
        0
    }
    fn is_deleted(&self) -> bool {
        false
    }
    fn check_available(&self) -> Result<(), StoreError> {
        Err(self.err())
    }
    fn subscribe(&self) -> watch::Receiver<u64> {
        watch::Sender::new(0).subscribe()
    }
    fn notify_on_append(&self, _set: &Arc<ReadySet>, _key: usize) {}
    fn reads(&self) -> u64 {
        0
    }
    async fn read(&self, _from: u64, _max_batches: usize, _max_bytes: usize) -> Result<Vec<StoredBatch>, StoreError> {
        Err(self.err())
    }
    async fn lsn_at_or_after(&self, _ts: i64) -> Result<u64, StoreError> {
        Err(self.err())
    }
    async fn records_from(&self, _from: u64) -> Result<u64, StoreError> {
        Err(self.err())
    }
    async fn trim(&self, _upto: u64) -> Result<u64, StoreError> {
        Err(self.err())
    }
}
