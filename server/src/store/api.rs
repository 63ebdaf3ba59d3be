//! The store interface: what the rest of the server may assume of any store (the local segment
//! log today; a replicated one later), async throughout, with the blocking work inside each
//! implementation.
//!
//! Guarantees every implementation keeps ([`super::contract`] checks them):
//! - **Dense, growing LSNs**: a shard's batches get LSNs 1, 2, 3, … in the order its appends
//!   were acknowledged; an LSN is never handed out twice, also across restarts and crashes
//!   (where a crash may leave a recorded gap, never a reuse).
//! - **Durable before ack**: an append resolves only once its batch is stored as the store's
//!   durability setting promises; until then no reader sees it, and afterwards every reader
//!   does ([`Shard::visible_lsn`] covers it).
//! - **Timestamps never decrease** within a shard: a batch's timestamp is at least its
//!   predecessor's, so seeking by time is a search.
//! - **Reads return whole batches in LSN order**, never past the visible LSN, starting at the
//!   first LSN still held when asked below it; at least one batch when there is one, whatever
//!   the byte budget.
//! - **Trims only move forward**: after `trim(n)` nothing at or below `n` is read again and
//!   [`Shard::start_lsn`] is above `n` (a trim is clamped to the visible LSN).
//! - **Waiting for the tail**: a [`super::ReadySet`] registered with a shard is marked after
//!   every change of its visible LSN and at deletion; [`Shard::subscribe`] sees the same.
//! - **A deleted shard refuses** appends, reads, seeks, counts and trims with `ShardDeleted`.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use super::{Appended, ReadySet, StoreError, StoredBatch};

/// One shard's log.
#[async_trait]
pub trait Shard: Send + Sync + 'static {
    fn id(&self) -> u64;
    /// First LSN that may still be read.
    fn start_lsn(&self) -> u64;
    /// Last LSN readers may see (0 when the shard never held a batch).
    fn visible_lsn(&self) -> u64;
    /// Last LSN handed out, visible or not yet.
    fn written_lsn(&self) -> u64;
    fn is_deleted(&self) -> bool;
    /// `Ok` unless the shard cannot serve (its positions then read as 0).
    fn check_available(&self) -> Result<(), StoreError>;
    /// The visible LSN as a watch, for a reader of this one shard.
    fn subscribe(&self) -> watch::Receiver<u64>;
    /// Marks `key` in `set` whenever the visible LSN moves or the shard is deleted, while the
    /// set lives.
    fn notify_on_append(&self, set: &Arc<ReadySet>, key: usize);
    /// Reads served since the shard was opened (for tests and diagnostics).
    fn reads(&self) -> u64;
    /// Up to `max_batches` batches from `from` (clamped to [`Self::start_lsn`]), stopping once
    /// `max_bytes` are reached (at least one batch).
    async fn read(&self, from: u64, max_batches: usize, max_bytes: usize) -> Result<Vec<StoredBatch>, StoreError>;
    /// The first visible LSN stamped at or after `ts`; `visible + 1` when none is.
    async fn lsn_at_or_after(&self, ts: i64) -> Result<u64, StoreError>;
    /// Records (sum of batch sizes) in the visible batches from `from` on.
    async fn records_from(&self, from: u64) -> Result<u64, StoreError>;
    /// Makes every LSN up to `upto` unreadable; returns the trim point in effect.
    async fn trim(&self, upto: u64) -> Result<u64, StoreError>;
    /// Brings [`Self::visible_lsn`] up to every append acknowledged before the call, through
    /// any node (on a shared store, another node's appends reach this one asynchronously), so
    /// that a LATEST asked for now includes them. A store only this node writes knows already.
    async fn sync_tail(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The shards of one node's data.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates an empty shard kept in `replicas` copies where the store replicates (the local
    /// store keeps one); `ShardExists` if the store holds it already.
    async fn create_shard(&self, id: u64, replicas: u32) -> Result<Arc<dyn Shard>, StoreError>;
    /// Removes a shard and its data; appends still queued for it fail.
    async fn delete_shard(&self, id: u64) -> Result<(), StoreError>;
    fn shard(&self, id: u64) -> Option<Arc<dyn Shard>>;
    /// A shard created since the store was opened, possibly by another node of a shared
    /// store; `None` when the store does not hold it.
    async fn open_shard(&self, id: u64) -> Result<Option<Arc<dyn Shard>>, StoreError> {
        Ok(self.shard(id))
    }
    /// Appends one batch of `batch_size` records (its payload as the client encoded it, with
    /// its compression code); resolves once it is durable (see the module guarantees).
    async fn append(
        &self,
        shard: u64,
        payload: Bytes,
        batch_size: u32,
        compression: u8,
    ) -> Result<Appended, StoreError>;
    /// Registers the store's own metrics (the metrics endpoint calls this once at start;
    /// collectors read the store at scrape time). Names start with `hstream_store_`.
    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry);
}
