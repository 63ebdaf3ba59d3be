//! One shard on JetStream: its stream's sequence is the shard's LSN. Positions are kept in
//! memory (from the stream's state when opened, then from acknowledgements and tail
//! announcements) so the synchronous calls of the interface answer without a round trip;
//! batches are fetched from the stream's leader, several in flight at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_nats::jetstream::stream;
use async_trait::async_trait;
use tokio::sync::watch;

use super::{COMPRESSION, MAX_REFRESH, RECORDS, REFRESH};
use crate::store::ready::Listeners;
use crate::store::{ReadySet, Shard, StoreError, StoredBatch};

/// Gets in flight at once for one read.
const IN_FLIGHT: usize = 32;
/// Batches `records_from` counts one by one before it extrapolates.
const EXACT_COUNT: u64 = 1024;

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
    /// When the periodic refresh next asks about this shard, and the wait after that.
    refresh_due: std::sync::Mutex<(std::time::Instant, std::time::Duration)>,
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
            refresh_due: std::sync::Mutex::new((std::time::Instant::now(), REFRESH)),
        }
    }

    /// Every LSN up to `lsn` is acknowledged: readers may see it. Whether that moved the tail.
    pub(super) fn advance(&self, lsn: u64) -> bool {
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
            // Moving: a lost announcement would show soon; look again within a second.
            let mut due = self.refresh_due.lock().expect("refresh lock");
            due.1 = REFRESH;
            due.0 = due.0.min(std::time::Instant::now() + REFRESH);
        }
        moved
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
        // "No responders" is a stream between leaders as often as a stream gone: a retry's
        // business (UNAVAILABLE), not a loss.
        if text.contains("stream not found") {
            StoreError::Unavailable {
                shard: self.id,
                reason: format!("its JetStream stream is gone ({text})"),
            }
        } else {
            StoreError::Down(format!("reading shard {}: {text}", self.id))
        }
    }

    /// The batches at `lsns` (fetched together, from the stream's leader: a replica behind it
    /// would answer "no message" for a batch that exists). A batch not found was purged (a
    /// purge removes a prefix): the start is refreshed and what lies below it left out. A get
    /// that timed out or was refused for now (its server being lost, a leader being elected)
    /// is asked again, within the store's timeout.
    async fn fetch(&self, lsns: std::ops::RangeInclusive<u64>) -> Result<Vec<StoredBatch>, StoreError> {
        let deadline = std::time::Instant::now() + self.timeout;
        let got = loop {
            let gets = lsns
                .clone()
                .map(|lsn| async move { (lsn, self.stream.get_raw_message(lsn).await) });
            let got = futures::future::join_all(gets).await;
            let again = got.iter().any(|(_, r)| match r {
                Err(e) => match e.kind() {
                    stream::RawMessageErrorKind::Other => true,
                    // "JetStream system temporarily unavailable": a leader being elected.
                    stream::RawMessageErrorKind::JetStream(e) => e.code() == 503,
                    _ => false,
                },
                Ok(_) => false,
            });
            if !again || std::time::Instant::now() >= deadline {
                break got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        if got
            .iter()
            .any(|(_, r)| matches!(r, Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound))
        {
            // Trimmed, maybe by another node: learn where the stream starts now.
            self.refresh_start().await?;
        }
        let start = self.start_lsn();
        let mut out = Vec::with_capacity(got.len());
        for (lsn, res) in got {
            let msg = match res {
                Ok(msg) => msg,
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound && lsn < start => continue,
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                    return Err(StoreError::Unavailable {
                        shard: self.id,
                        reason: format!("LSN {lsn} is missing inside the stream (from {start})"),
                    });
                }
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

    /// Moves the start to the stream's first sequence as its leader reports it (a trim made
    /// by another node, or JetStream's age limit).
    async fn refresh_start(&self) -> Result<(), StoreError> {
        self.refresh().await.map(drop)
    }

    /// Whether a reader on this node waits for this shard's appends and the periodic refresh
    /// is due: every [`REFRESH`] while the shard moves, backing off to [`MAX_REFRESH`] while
    /// refreshes find nothing new (a subscription watches every shard of its stream for as
    /// long as it lives, idle ones too).
    pub(super) fn refresh_due(&self, now: std::time::Instant) -> bool {
        (self.visible.receiver_count() > 0 || self.listeners.any_live())
            && self.refresh_due.lock().expect("refresh lock").0 <= now
    }

    /// Schedules the next periodic refresh after one that `moved` the tail or not.
    /// The wait is jittered by ±25 %, so shards that went idle together spread out.
    pub(super) fn refreshed(&self, moved: bool) {
        let mut due = self.refresh_due.lock().expect("refresh lock");
        due.1 = if moved { REFRESH } else { (due.1 * 2).min(MAX_REFRESH) };
        let jitter = rand::random_range(0.75..1.25);
        due.0 = std::time::Instant::now() + due.1.mul_f64(jitter);
    }

    /// Learns the shard's first and last LSN from its stream's leader: what a trim elsewhere
    /// or the age limit removed, and appends whose announcement never came. Whether the tail
    /// moved.
    /// Asked again, within the store's timeout, while the stream's leader is being elected.
    pub(super) async fn refresh(&self) -> Result<bool, StoreError> {
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            match self.refresh_once().await {
                Err(StoreError::Down(_)) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                done => return done,
            }
        }
    }

    /// Like [`Self::refresh`], asking once (the periodic refresh: a stream without a leader
    /// must not hold up the others; it is asked again next round).
    pub(super) async fn refresh_once(&self) -> Result<bool, StoreError> {
        let info = self.stream.get_info().await.map_err(|e| self.gone(e))?;
        self.start.fetch_max(info.state.first_sequence.max(1), Ordering::SeqCst);
        Ok(self.advance(info.state.last_sequence))
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
        loop {
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
            // Everything asked for was purged meanwhile (another node's trim): read on from
            // where the shard starts now.
            if out.is_empty() && self.start_lsn() > first && self.start_lsn() <= self.visible_lsn() {
                continue;
            }
            return Ok(out);
        }
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

    /// Exact up to [`EXACT_COUNT`] batches; past that, the batches counted at both ends stand
    /// for the average (reading every header of a large backlog on each metrics scrape would
    /// cost as much as reading the backlog).
    async fn records_from(&self, from: u64) -> Result<u64, StoreError> {
        self.live()?;
        let (first, last) = (from.max(self.start_lsn()), self.visible_lsn());
        if first > last {
            return Ok(0);
        }
        let count = |range: std::ops::RangeInclusive<u64>| async move {
            let (mut next, end, mut records, mut batches) = (*range.start(), *range.end(), 0u64, 0u64);
            while next <= end {
                let upto = end.min(next + IN_FLIGHT as u64 - 1);
                for b in self.fetch(next..=upto).await? {
                    records += b.batch_size as u64;
                    batches += 1;
                }
                next = upto + 1;
            }
            Ok::<_, StoreError>((records, batches))
        };
        let span = last - first + 1;
        if span <= EXACT_COUNT {
            return Ok(count(first..=last).await?.0);
        }
        let half = EXACT_COUNT / 2;
        let (r1, b1) = count(first..=first + half - 1).await?;
        let (r2, b2) = count(last - half + 1..=last).await?;
        Ok((r1 + r2) * span / (b1 + b2).max(1))
    }

    async fn sync_tail(&self) -> Result<(), StoreError> {
        self.live()?;
        self.refresh().await.map(drop)
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
