//! Reading shards in the domain's terms: where a read starts and ends, and a cursor over one
//! shard that reads chunks and waits for the tail. The front doors translate their offsets into
//! these; the pumps and readers drive the cursors.

use tokio::sync::watch;

use crate::catalog::ShardEntry;
use crate::error::ApiResult;
use crate::store::{Shard, StoreError, StoredBatch, now_ms};

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

/// Resolves a start position to an LSN.
pub async fn resolve_from(log: &dyn Shard, from: From) -> ApiResult<u64> {
    log.check_available()?;
    Ok(match from {
        From::Earliest => log.start_lsn(),
        From::Latest => {
            log.sync_tail().await?;
            log.visible_lsn() + 1
        }
        From::Lsn(l) => l,
        From::Timestamp(t) => log.lsn_at_or_after(t).await?,
    })
}

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
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
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
