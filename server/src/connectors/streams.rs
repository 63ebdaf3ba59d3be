//! The runtime's view of streams and checkpoints, served in-process from the log store, the
//! catalog and the MetaStore.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hstream_proto as pb;
use hstream_runtime::remote::{to_hstream_record, to_sink_record};
use hstream_runtime::{ConnectorError, ReadChunk, Record, ShardWatch, Streams};
use prost::Message;

use crate::error::ApiError;
use crate::keyspace;

/// Appends are split so that each stored batch stays well under `max-record-size`.
const BATCH_BUDGET_DIVISOR: usize = 2;

fn external(e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::external(e.to_string())
}

/// The shards of a stream whose tail moved, as the store marks them.
struct StoreWatch {
    ready: Arc<crate::store::ReadySet>,
    /// Shard id by key.
    shards: Vec<u64>,
}

#[async_trait]
impl ShardWatch for StoreWatch {
    async fn ready(&mut self, timeout: Duration) -> Result<Vec<u64>, ConnectorError> {
        let _ = tokio::time::timeout(timeout, self.ready.ready()).await;
        Ok(self.ready.take().into_iter().map(|k| self.shards[k]).collect())
    }
}

/// The runtime's streams, served by the streams service in this process.
pub struct LocalStreams {
    pub streams: Arc<crate::streams::Streams>,
}

/// One connector task's door to the streams: its appends are refused for good once the task
/// is revoked (another node took it over, or this node lost touch and stopped it), and while
/// this node may have lost its tasks (cut off from the metastore in a cluster), so a copy that
/// another node may run already never writes.
pub struct TaskStreams {
    pub inner: Arc<LocalStreams>,
    pub revoked: Arc<std::sync::atomic::AtomicBool>,
    pub assignments: Arc<crate::cluster::assign::Assignments>,
}

#[async_trait]
impl Streams for TaskStreams {
    async fn ensure_stream(&self, name: &str) -> Result<(), ConnectorError> {
        self.inner.ensure_stream(name).await
    }

    async fn stream_exists(&self, name: &str) -> Result<bool, ConnectorError> {
        self.inner.stream_exists(name).await
    }

    fn max_record_size(&self) -> usize {
        self.inner.max_record_size()
    }

    async fn append(&self, stream: &str, records: Vec<Record>) -> Result<(), ConnectorError> {
        if self.revoked.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(external("not appending: this task runs elsewhere now"));
        }
        if !self.assignments.fresh() {
            return Err(external(format!(
                "not appending: this node has not heard from the metastore for {} s and may no longer hold this task",
                crate::cluster::assign::STALE_AFTER.as_secs()
            )));
        }
        self.inner.append(stream, records).await
    }

    async fn shards(&self, stream: &str) -> Result<Vec<u64>, ConnectorError> {
        self.inner.shards(stream).await
    }

    async fn bounds(&self, stream: &str, shard: u64) -> Result<(u64, u64), ConnectorError> {
        self.inner.bounds(stream, shard).await
    }

    async fn read(
        &self,
        stream: &str,
        shard: u64,
        from_lsn: u64,
        max_batches: usize,
        wait: Duration,
    ) -> Result<ReadChunk, ConnectorError> {
        self.inner.read(stream, shard, from_lsn, max_batches, wait).await
    }

    async fn watch(&self, stream: &str, shards: &[u64]) -> Result<Box<dyn ShardWatch>, ConnectorError> {
        self.inner.watch(stream, shards).await
    }
}

#[async_trait]
impl Streams for LocalStreams {
    async fn ensure_stream(&self, name: &str) -> Result<(), ConnectorError> {
        let ctx = &self.streams;
        if ctx.catalog().stream(name).is_ok() {
            return Ok(());
        }
        match ctx.create(crate::streams::StreamSpec::single_shard(name)).await {
            Ok(_) | Err(ApiError::StreamExists(_)) => Ok(()),
            Err(e @ ApiError::InvalidName { .. }) => Err(ConnectorError::config("stream").with_source(e)),
            Err(e) => Err(external(e)),
        }
    }

    async fn stream_exists(&self, name: &str) -> Result<bool, ConnectorError> {
        Ok(self.streams.catalog().stream(name).is_ok())
    }

    fn max_record_size(&self) -> usize {
        self.streams.limits().max_record_size
    }

    async fn append(&self, stream: &str, records: Vec<Record>) -> Result<(), ConnectorError> {
        let ctx = &self.streams;
        let entry = ctx.catalog().stream(stream).map_err(external)?;
        // An oversized record is refused before anything of the call is written.
        if let Some((i, r)) = records
            .iter()
            .enumerate()
            .find(|(_, r)| r.encoded_size_bound() > ctx.limits().max_record_size)
        {
            return Err(ConnectorError::config(format!(
                "record {i} of the batch (key {:?}) is {} bytes, over the server's max-record-size of {} bytes",
                r.key,
                r.encoded_size_bound(),
                ctx.limits().max_record_size
            )));
        }
        // Group by shard, keeping the order of each key.
        let mut per_shard: Vec<Vec<pb::HStreamRecord>> = vec![Vec::new(); entry.shards.len()];
        if entry.shards.len() == 1 {
            // One shard owns every key: no hashing.
            per_shard[0].extend(records.into_iter().map(to_hstream_record));
        } else {
            for r in records {
                let h = keyspace::key_hash(&r.key);
                let i = entry
                    .shards
                    .iter()
                    .position(|s| s.meta.start_key <= h && h <= s.meta.end_key)
                    .unwrap_or(0);
                per_shard[i].push(to_hstream_record(r));
            }
        }
        let budget = ctx.limits().max_record_size / BATCH_BUDGET_DIVISOR;
        let max_records = ctx.limits().max_batch_records as usize;
        let mut appends = Vec::new();
        for (shard, recs) in entry.shards.iter().zip(per_shard) {
            let mut chunk = Vec::new();
            let mut size = 0usize;
            for rec in recs {
                let len = rec.encoded_len() + 8;
                if !chunk.is_empty() && (size + len > budget || chunk.len() >= max_records) {
                    appends.push((shard.meta.id, std::mem::take(&mut chunk)));
                    size = 0;
                }
                size += len;
                chunk.push(rec);
            }
            if !chunk.is_empty() {
                appends.push((shard.meta.id, chunk));
            }
        }
        // Shards in parallel; batches of one shard in order (each waits for the previous).
        let mut by_shard: Vec<Vec<_>> = Vec::new();
        for (shard, recs) in appends {
            match by_shard.iter_mut().find(|v: &&mut Vec<(u64, _)>| v[0].0 == shard) {
                Some(v) => v.push((shard, recs)),
                None => by_shard.push(vec![(shard, recs)]),
            }
        }
        let results = futures::future::join_all(by_shard.into_iter().map(|batches| {
            let ctx = ctx.clone();
            async move {
                for (shard, recs) in batches {
                    let n = recs.len() as u32;
                    let payload = pb::BatchHStreamRecords { records: recs }.encode_to_vec();
                    ctx.append_batch(stream, shard, payload.into(), n, pb::CompressionType::None as u8)
                        .await?;
                }
                Ok::<(), crate::store::StoreError>(())
            }
        }))
        .await;
        results.into_iter().collect::<Result<(), _>>().map_err(external)
    }

    async fn shards(&self, stream: &str) -> Result<Vec<u64>, ConnectorError> {
        let entry = self.streams.catalog().stream(stream).map_err(external)?;
        Ok(entry.shards.iter().map(|s| s.meta.id).collect())
    }

    async fn bounds(&self, stream: &str, shard: u64) -> Result<(u64, u64), ConnectorError> {
        let s = self.streams.catalog().shard_of(stream, shard).map_err(external)?;
        s.log.check_available().map_err(external)?;
        // The end includes appends through other nodes: a sink resuming here must not take
        // a stale tail for its end and pull its position back.
        s.log.sync_tail().await.map_err(external)?;
        Ok((s.log.start_lsn(), s.log.visible_lsn() + 1))
    }

    async fn watch(&self, stream: &str, shards: &[u64]) -> Result<Box<dyn ShardWatch>, ConnectorError> {
        let ctx = &self.streams;
        let ready = crate::store::ReadySet::new();
        for (key, &shard) in shards.iter().enumerate() {
            let s = ctx.catalog().shard_of(stream, shard).map_err(external)?;
            s.log.notify_on_append(&ready, key);
        }
        Ok(Box::new(StoreWatch {
            ready,
            shards: shards.to_vec(),
        }))
    }

    async fn read(
        &self,
        stream: &str,
        shard: u64,
        from_lsn: u64,
        max_batches: usize,
        wait: Duration,
    ) -> Result<ReadChunk, ConnectorError> {
        let s = self.streams.catalog().shard_of(stream, shard).map_err(external)?;
        let mut rx = s.log.subscribe();
        rx.borrow_and_update();
        let read = || async { s.log.read(from_lsn, max_batches, 4 << 20).await.map_err(external) };
        let mut batches = read().await?;
        if batches.is_empty() && !wait.is_zero() && tokio::time::timeout(wait, rx.changed()).await.is_ok() {
            batches = read().await?;
        }
        let mut chunk = ReadChunk {
            records: Vec::new(),
            next_lsn: from_lsn.max(s.log.start_lsn()),
        };
        for b in batches {
            let lsn = b.lsn;
            let batch = pb::BatchedRecord {
                compression_type: b.compression as i32,
                publish_time: None,
                batch_size: b.batch_size,
                payload: b.payload,
            };
            // Stored batches were validated on append: one that does not decode is damage, which
            // retrying cannot fix.
            let decoded = crate::batch::decode_records(&batch, usize::MAX)
                .map_err(|e| ConnectorError::internal(format!("shard {shard} lsn {lsn}")).with_source(e))?;
            for (i, r) in decoded.records.into_iter().enumerate() {
                chunk.records.push(to_sink_record(shard, lsn, i as u32, r));
            }
            chunk.next_lsn = lsn + 1;
        }
        Ok(chunk)
    }
}
