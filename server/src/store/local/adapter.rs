//! The local store behind the store interface (`../../api.rs`): blocking work on the blocking
//! pool.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use super::{LogStore, ShardLog};
use crate::store::{Appended, ReadySet, Shard, Store, StoreError, StoredBatch};

/// A local shard behind the interface: the blocking work on the blocking pool.
pub struct LocalShard(pub Arc<ShardLog>);

impl LocalShard {
    /// `ShardDeleted` once the shard is deleted: its files are going or gone.
    fn live(&self) -> Result<(), StoreError> {
        if self.0.is_deleted() {
            return Err(StoreError::ShardDeleted(self.0.id));
        }
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ShardLog) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let log = self.0.clone();
        tokio::task::spawn_blocking(move || f(&log))
            .await
            .map_err(|_| StoreError::ShuttingDown)?
    }
}

#[async_trait]
impl Shard for LocalShard {
    fn id(&self) -> u64 {
        self.0.id
    }
    fn start_lsn(&self) -> u64 {
        self.0.start_lsn()
    }
    fn visible_lsn(&self) -> u64 {
        self.0.visible_lsn()
    }
    fn written_lsn(&self) -> u64 {
        self.0.written_lsn()
    }
    fn is_deleted(&self) -> bool {
        self.0.is_deleted()
    }
    fn check_available(&self) -> Result<(), StoreError> {
        self.0.check_available()
    }
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
    fn notify_on_append(&self, set: &Arc<ReadySet>, key: usize) {
        self.0.notify_on_append(set, key)
    }
    fn reads(&self) -> u64 {
        self.0.reads()
    }
    async fn read(&self, from: u64, max_batches: usize, max_bytes: usize) -> Result<Vec<StoredBatch>, StoreError> {
        self.live()?;
        self.blocking(move |l| l.read(from, max_batches, max_bytes)).await
    }
    async fn lsn_at_or_after(&self, ts: i64) -> Result<u64, StoreError> {
        self.live()?;
        self.blocking(move |l| l.lsn_at_or_after(ts)).await
    }
    async fn records_from(&self, from: u64) -> Result<u64, StoreError> {
        self.live()?;
        self.blocking(move |l| l.records_from(from)).await
    }
    async fn trim(&self, upto: u64) -> Result<u64, StoreError> {
        self.blocking(move |l| l.trim(upto)).await
    }
}

/// `hstream_store_disk_bytes`, read at scrape time (a walk of the store's directory: the
/// metrics endpoint encodes on a blocking thread).
#[derive(Debug)]
struct DiskBytes(std::sync::Weak<LogStore>);

impl prometheus_client::collector::Collector for DiskBytes {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let Some(store) = self.0.upgrade() else { return Ok(()) };
        let gauge = prometheus_client::metrics::gauge::ConstGauge::new(store.disk_bytes() as f64);
        let metric = encoder.encode_descriptor(
            "hstream_store_disk_bytes",
            "Bytes of the log store on disk",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// The local segment store behind the interface.
pub struct LocalStore(pub Arc<LogStore>);

#[async_trait]
impl Store for LocalStore {
    async fn create_shard(&self, id: u64, _replicas: u32) -> Result<Arc<dyn Shard>, StoreError> {
        let store = self.0.clone();
        let log = tokio::task::spawn_blocking(move || store.create_shard(id))
            .await
            .map_err(|_| StoreError::ShuttingDown)??;
        Ok(Arc::new(LocalShard(log)))
    }

    async fn delete_shard(&self, id: u64) -> Result<(), StoreError> {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || store.delete_shard(id))
            .await
            .map_err(|_| StoreError::ShuttingDown)?
    }

    fn shard(&self, id: u64) -> Option<Arc<dyn Shard>> {
        self.0.shard(id).map(|l| Arc::new(LocalShard(l)) as Arc<dyn Shard>)
    }

    async fn append(
        &self,
        shard: u64,
        payload: Bytes,
        batch_size: u32,
        compression: u8,
    ) -> Result<Appended, StoreError> {
        // A shard deleted (or never created) takes no appends.
        let log = self.0.shard(shard).ok_or(StoreError::ShardDeleted(shard))?;
        self.0.append(&log, payload, batch_size, compression).await
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "hstream_store_fsync_latency_seconds",
            "Time one fsync of a shard's log took",
            super::FSYNC_SECONDS.clone(),
        );
        registry.register_collector(Box::new(DiskBytes(Arc::downgrade(&self.0))));
    }
}
