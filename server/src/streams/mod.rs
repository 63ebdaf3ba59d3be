//! The streams service: streams and their shards (create, delete with archiving under `force`,
//! list, trim, tail, retention) and the one append path that RPCs and connectors share.
//!
//! Guarantees: a stream exists in the MetaStore before the catalog shows it, and its shard
//! storage exists before the MetaStore commits it (a crash in between leaves orphans the next
//! start removes, never a stream without its shards); creation and deletion of streams and
//! subscriptions are serialized by one lock ([`Streams::ddl`]); an append is counted in the
//! stream's metrics only once the store acknowledged it as durable.
//!
//! Its types are the domain's (`StreamMeta`, `ShardEntry`, [`From`]); the front doors translate
//! protobuf and JSON to and from them.

pub mod read;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use hstream_proto::ErrorCode;

use crate::batch::Limits;
use crate::catalog::{ARCHIVED_PREFIX, Catalog, ShardEntry, StreamEntry, validate_name};
use crate::error::{ApiError, ApiResult};
use crate::keyspace;
use crate::meta::{MetaError, MetaStore, ShardMeta, StreamChange, StreamChanges, StreamMeta};
use crate::metrics::StreamMetrics;
use crate::store::{Appended, Shard, Store, StoreError, now_ms};
pub use read::{From, ShardCursor, Until, resolve_from};

/// Largest shardCount accepted (each shard is a directory and open files).
pub const MAX_SHARDS: u32 = 4096;

/// A stream to create.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub name: String,
    pub replication_factor: u32,
    /// Seconds records are kept; 0 keeps them until trimmed.
    pub backlog_secs: u32,
    pub shard_count: u32,
}

impl StreamSpec {
    /// One shard, one replica, kept until trimmed: what a source's `emit_to` creates on first use.
    pub fn single_shard(name: &str) -> Self {
        StreamSpec {
            name: name.to_owned(),
            replication_factor: 1,
            backlog_secs: 0,
            shard_count: 1,
        }
    }
}

/// How a delete treats a missing stream and one that subscriptions still read.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeleteMode {
    /// A missing stream is not an error.
    pub ignore_missing: bool,
    /// Subscriptions keep reading the data under an archived name.
    pub force: bool,
}

pub struct Streams {
    meta: Arc<dyn MetaStore>,
    store: Arc<dyn Store>,
    catalog: Catalog,
    limits: Limits,
    /// The fewest replicas a new stream gets (`--min-replication-factor`).
    min_replication_factor: u32,
    metrics: StreamMetrics,
    /// Serializes creation and deletion of streams and subscriptions.
    ddl: tokio::sync::Mutex<()>,
}

fn validate_stream_name(name: &str) -> ApiResult<()> {
    validate_name("stream", ErrorCode::StreamInvalidObjectIdentifier, name)
}

impl Streams {
    pub fn new(
        meta: Arc<dyn MetaStore>,
        store: Arc<dyn Store>,
        catalog: Catalog,
        limits: Limits,
        min_replication_factor: u32,
        metrics: StreamMetrics,
    ) -> Self {
        Streams {
            meta,
            store,
            catalog,
            limits,
            min_replication_factor,
            metrics,
            ddl: tokio::sync::Mutex::new(()),
        }
    }

    /// Keeps the catalog current with the streams every node creates, archives and deletes
    /// (the MetaStore's watch), until `shutdown`. This node's own changes arrive too and
    /// change nothing: they are in the catalog already.
    pub async fn follow(self: Arc<Self>, mut changes: StreamChanges, shutdown: tokio_util::sync::CancellationToken) {
        use futures::StreamExt;
        loop {
            let change = tokio::select! {
                c = changes.next() => c,
                _ = shutdown.cancelled() => return,
            };
            let Some(change) = change else { return };
            let mut result = self.apply(change).await;
            // A change that could not be applied (the store or metastore busy electing): read
            // everything again shortly, until it works.
            while let Err(e) = result {
                tracing::warn!(error = %e, "following the streams of other nodes; reading them all again in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return,
                }
                result = self.apply(StreamChange::Resync).await;
            }
        }
    }

    async fn apply(&self, change: StreamChange) -> ApiResult<()> {
        match change {
            StreamChange::Put(meta, shards) => self.adopt(meta, shards).await,
            StreamChange::Deleted { name, shard_ids } => {
                // Only the stream that was deleted: a newer one of the same name (created here
                // since) has other shard ids.
                if let Some(entry) = self.catalog.any_stream(&name) {
                    let held: Vec<u64> = entry.shards.iter().map(|s| s.meta.id).collect();
                    if shard_ids.is_none_or(|ids| ids == held) {
                        self.catalog.remove(&name);
                        tracing::info!(stream = %name, "stream deleted by another node");
                    }
                }
                Ok(())
            }
            StreamChange::Resync => {
                let mut all = self.meta.list_streams("").await?;
                all.extend(self.meta.list_archived_streams().await?);
                let names: std::collections::HashSet<&str> = all.iter().map(|s| s.name.as_str()).collect();
                for entry in self.catalog.all_streams() {
                    if !names.contains(entry.meta.name.as_str()) {
                        self.catalog.remove(&entry.meta.name);
                    }
                }
                let mut failed = None;
                for s in all {
                    if self.catalog.any_stream(&s.name).is_none() {
                        // One stream that cannot be adopted now does not hold up the others.
                        let adopted = match self.meta.list_shards(&s.name).await {
                            Ok(shards) => self.adopt(s, shards).await,
                            Err(e) => Err(e.into()),
                        };
                        if let Err(e) = adopted {
                            failed = Some(e);
                        }
                    }
                }
                failed.map_or(Ok(()), Err)
            }
        }
    }

    /// Puts a stream another node created into the catalog, its shards opened from the store;
    /// leaves it out while a shard's storage is not there (a store this node does not share,
    /// or one being deleted).
    async fn adopt(&self, meta: StreamMeta, shards: Vec<ShardMeta>) -> ApiResult<()> {
        // Shards listed apart from their stream (a Resync) may already be gone with it.
        if shards.len() != meta.shard_count as usize {
            return Ok(());
        }
        if let Some(known) = self.catalog.any_stream(&meta.name)
            && known.meta == meta
            && known.shards.iter().map(|s| s.meta.id).eq(shards.iter().map(|s| s.id))
        {
            return Ok(());
        }
        let mut entries = Vec::with_capacity(shards.len());
        for sm in shards {
            match self.store.open_shard(sm.id).await? {
                Some(log) => entries.push(ShardEntry { meta: sm, log }),
                None => {
                    tracing::debug!(stream = %meta.name, shard = sm.id, "a stream's shard is not in this node's store");
                    return Ok(());
                }
            }
        }
        tracing::info!(stream = %meta.name, shards = entries.len(), "stream adopted from the metastore (created by another node)");
        self.catalog.insert(StreamEntry { meta, shards: entries });
        Ok(())
    }

    /// Whether the metastore holds stream `name` with exactly these shards (a create of ours).
    async fn stored_with(&self, name: &str, shards: &[ShardMeta]) -> bool {
        match self.meta.list_shards(name).await {
            Ok(stored) => stored.iter().map(|s| s.id).eq(shards.iter().map(|s| s.id)),
            Err(_) => false,
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// What one appended batch may be (`max-record-size`, `max-batch-records`).
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The lock that serializes creation and deletion of streams and subscriptions.
    pub fn ddl(&self) -> &tokio::sync::Mutex<()> {
        &self.ddl
    }

    pub async fn create(&self, spec: StreamSpec) -> ApiResult<StreamMeta> {
        validate_stream_name(&spec.name)?;
        if spec.replication_factor == 0 {
            return Err(ApiError::InvalidReplicationFactor);
        }
        if spec.shard_count == 0 || spec.shard_count > MAX_SHARDS {
            return Err(ApiError::InvalidShardCount {
                got: spec.shard_count,
                max: MAX_SHARDS,
            });
        }
        let _ddl = self.ddl.lock().await;
        if self.catalog.stream(&spec.name).is_ok() {
            return Err(ApiError::StreamExists(spec.name));
        }
        let meta = StreamMeta {
            name: spec.name,
            replication_factor: spec.replication_factor.max(self.min_replication_factor),
            backlog_secs: spec.backlog_secs,
            shard_count: spec.shard_count,
            created_ms: now_ms(),
            archived: false,
        };
        let first = self.meta.allocate_shard_ids(meta.shard_count).await?;
        let shards: Vec<ShardMeta> = keyspace::split(meta.shard_count)
            .into_iter()
            .enumerate()
            .map(|(i, (start_key, end_key))| ShardMeta {
                id: first + i as u64,
                stream: meta.name.clone(),
                start_key,
                end_key,
                epoch: meta.shard_count as u64,
            })
            .collect();
        // Shard storage first: a crash before the metadata commit leaves orphans that the next
        // start removes, never a stream whose shards are missing.
        let mut logs = Vec::with_capacity(shards.len());
        for s in &shards {
            match self.store.create_shard(s.id, meta.replication_factor).await {
                Ok(log) => logs.push(log),
                Err(e) => {
                    self.drop_shard_files(shards.iter().map(|s| s.id).collect()).await;
                    return Err(e.into());
                }
            }
        }
        match self.meta.create_stream(&meta, &shards).await {
            Ok(()) => {}
            // A retried commit can find its own first attempt, which landed after all: the
            // stream stored with our shard ids is ours.
            Err(MetaError::AlreadyExists { .. }) if self.stored_with(&meta.name, &shards).await => {}
            Err(MetaError::AlreadyExists { .. }) => {
                self.drop_shard_files(shards.iter().map(|s| s.id).collect()).await;
                return Err(ApiError::StreamExists(meta.name));
            }
            // The metastore could not say whether it committed (etcd without a quorum: the
            // write may still land). The shards stay: if it lands, the stream is whole; if
            // not, they are orphans the next start removes.
            Err(e @ MetaError::Unavailable(_)) => return Err(e.into()),
            Err(e) => {
                self.drop_shard_files(shards.iter().map(|s| s.id).collect()).await;
                return Err(e.into());
            }
        }
        let entry = StreamEntry {
            meta: meta.clone(),
            shards: shards
                .into_iter()
                .zip(logs)
                .map(|(meta, log)| ShardEntry { meta, log })
                .collect(),
        };
        self.catalog.insert(entry);
        tracing::info!(stream = %meta.name, shards = meta.shard_count, "stream created");
        Ok(meta)
    }

    /// Removes the storage of shards no stream refers to any more (failures are logged: the
    /// next start removes what is left).
    pub async fn drop_shard_files(&self, ids: Vec<u64>) {
        for id in ids {
            if let Err(e) = self.store.delete_shard(id).await {
                tracing::warn!(shard = id, error = %e, "could not remove shard files");
            }
        }
    }

    /// Deletes a stream; one that subscriptions read needs `force` and is archived: they keep
    /// reading it, and its data goes with the last of them.
    pub async fn delete(&self, name: &str, mode: DeleteMode) -> ApiResult<()> {
        validate_stream_name(name)?;
        let _ddl = self.ddl.lock().await;
        let entry = match self.catalog.stream(name) {
            Ok(e) => e,
            Err(_) if mode.ignore_missing => return Ok(()),
            Err(e) => return Err(e),
        };
        let subs = self.meta.subscriptions_of_stream(name).await?;
        if !subs.is_empty() {
            if !mode.force {
                return Err(ApiError::StreamHasSubscriptions(name.to_owned()));
            }
            let archived = format!("{ARCHIVED_PREFIX}{name}_{}", now_ms());
            self.meta.archive_stream(name, &archived).await?;
            self.catalog.remove(name);
            self.metrics.stream_deleted(name);
            let mut meta = entry.meta.clone();
            meta.name = archived.clone();
            meta.archived = true;
            let shards = entry
                .shards
                .iter()
                .map(|s| ShardEntry {
                    meta: ShardMeta {
                        stream: archived.clone(),
                        ..s.meta.clone()
                    },
                    log: s.log.clone(),
                })
                .collect();
            self.catalog.insert(StreamEntry { meta, shards });
            tracing::info!(stream = %name, archived = %archived, "stream archived");
            return Ok(());
        }
        self.meta.delete_stream(name).await?;
        self.catalog.remove(name);
        self.metrics.stream_deleted(name);
        self.drop_shard_files(entry.shards.iter().map(|s| s.meta.id).collect())
            .await;
        tracing::info!(stream = %name, "stream deleted");
        Ok(())
    }

    /// Forgets an archived stream whose last subscription went (its MetaStore rows are gone
    /// already) and removes its shards' storage. The caller holds [`Streams::ddl`].
    pub async fn drop_archived(&self, name: &str, shard_ids: Vec<u64>) {
        self.catalog.remove(name);
        self.drop_shard_files(shard_ids).await;
    }

    /// A live stream.
    pub fn get(&self, name: &str) -> ApiResult<Arc<StreamEntry>> {
        self.catalog.stream(name)
    }

    /// Live streams whose names start with `prefix`.
    pub fn list(&self, prefix: &str) -> Vec<Arc<StreamEntry>> {
        self.catalog.live_streams(prefix)
    }

    /// The one append path (RPCs and connectors): a batch to the store, counted in the stream's
    /// metrics once it is durable.
    pub async fn append_batch(
        &self,
        stream: &str,
        shard: u64,
        payload: bytes::Bytes,
        batch_size: u32,
        compression: u8,
    ) -> Result<Appended, StoreError> {
        let started = Instant::now();
        let bytes = payload.len() as u64;
        let appended = self.store.append(shard, payload, batch_size, compression).await?;
        self.metrics
            .appended(stream, u64::from(batch_size), bytes, started.elapsed());
        Ok(appended)
    }

    /// The last visible LSN of a shard of `stream`, appends through other nodes included.
    pub async fn tail(&self, stream: &str, shard: u64) -> ApiResult<u64> {
        let shard = self.catalog.shard_of(stream, shard)?;
        shard.log.check_available()?;
        shard.log.sync_tail().await?;
        Ok(shard.log.visible_lsn())
    }

    /// Trims one shard up to and including the LSN `point` resolves to (EARLIEST trims nothing).
    async fn trim_to(log: Arc<dyn Shard>, point: From) -> ApiResult<u64> {
        let upto = match point {
            From::Earliest => return Ok(log.start_lsn().saturating_sub(1)),
            From::Latest => {
                log.sync_tail().await?;
                log.visible_lsn()
            }
            other => resolve_from(&*log, other).await?,
        };
        Ok(log.trim(upto).await?)
    }

    /// Trims every shard of `stream` up to `point`.
    pub async fn trim(&self, stream: &str, point: From) -> ApiResult<()> {
        let stream = self.catalog.stream(stream)?;
        for s in &stream.shards {
            Self::trim_to(s.log.clone(), point).await?;
        }
        Ok(())
    }

    /// Trims one shard of `stream` up to `point`.
    pub async fn trim_shard(&self, stream: &str, shard: u64, point: From) -> ApiResult<()> {
        let shard = self.catalog.shard_of(stream, shard)?;
        Self::trim_to(shard.log, point).await?;
        Ok(())
    }

    /// For each shard named, trims every batch before the given (batchId, batchIndex): the
    /// batch holding it stays.
    pub async fn trim_before(&self, stream: &str, oldest: &BTreeMap<u64, (u64, u32)>) -> ApiResult<()> {
        let entry = self.catalog.stream(stream)?;
        let mut targets = Vec::new();
        for (&shard, &(batch, _)) in oldest {
            let s = entry
                .shards
                .iter()
                .find(|s| s.meta.id == shard)
                .ok_or_else(|| ApiError::ShardNotInStream {
                    shard,
                    stream: stream.to_owned(),
                })?;
            targets.push((s.log.clone(), batch));
        }
        for (log, batch) in targets {
            if batch > 1 {
                log.trim(batch - 1).await?;
            }
        }
        Ok(())
    }

    /// Applies each stream's backlogDuration: trims batches appended before `now - backlog`.
    pub async fn enforce_retention(&self) {
        let now = now_ms();
        for stream in self.catalog.all_streams() {
            if stream.meta.backlog_secs == 0 {
                continue;
            }
            let cutoff = now - stream.meta.backlog_secs as i64 * 1000;
            for s in &stream.shards {
                let log = &s.log;
                let res = async {
                    let first_kept = log.lsn_at_or_after(cutoff).await?;
                    if first_kept > log.start_lsn() {
                        log.trim(first_kept - 1).await?;
                    }
                    Ok::<(), StoreError>(())
                }
                .await;
                if let Err(e) = res {
                    tracing::warn!(shard = s.meta.id, error = %e, "retention trim failed");
                }
            }
        }
    }
}
