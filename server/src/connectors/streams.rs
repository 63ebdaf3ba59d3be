//! The runtime's view of streams and checkpoints, served in-process from the log store, the
//! catalog and the MetaStore.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hstream_proto as pb;
use hstream_runtime::producer::ProducerTag;
use hstream_runtime::remote::{to_hstream_record, to_sink_record};
use hstream_runtime::{ConnectorError, ReadChunk, Record, ShardWatch, Streams, TaggedChunk};
use prost::Message;

use crate::error::ApiError;
use crate::keyspace;

/// Appends are split so that each stored batch stays well under `max-record-size`.
const BATCH_BUDGET_DIVISOR: usize = 2;

fn external(e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::external(e.to_string())
}

/// The records of a stored batch. Stored batches were validated on append: one that does not
/// decode is damage, which retrying cannot fix.
fn stored_records(shard: u64, b: crate::store::StoredBatch) -> Result<Vec<pb::HStreamRecord>, ConnectorError> {
    let lsn = b.lsn;
    let batch = pb::BatchedRecord {
        compression_type: b.compression as i32,
        publish_time: None,
        batch_size: b.batch_size,
        payload: b.payload,
    };
    crate::batch::decode_records(&batch, usize::MAX)
        .map(|d| d.records)
        .map_err(|e| ConnectorError::internal(format!("shard {shard} lsn {lsn}")).with_source(e))
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

impl LocalStreams {
    /// Appends records, each to the shard its key maps to, in batches under the size budget;
    /// with `tag` (producer, one number per record) each batch carries its records' numbers.
    async fn append_with(
        &self,
        stream: &str,
        records: Vec<Record>,
        tag: Option<(&str, &[u64])>,
    ) -> Result<(), ConnectorError> {
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
        if let Some((_, seqs)) = tag
            && seqs.len() != records.len()
        {
            return Err(ConnectorError::internal("append: one number per record"));
        }
        let seq_of = |i: usize| tag.map_or(0, |(_, seqs)| seqs[i]);
        // Group by shard, keeping the order of each key; each record with its number.
        let mut per_shard: Vec<Vec<(u64, pb::HStreamRecord)>> = vec![Vec::new(); entry.shards.len()];
        if entry.shards.len() == 1 {
            // One shard owns every key: no hashing.
            per_shard[0].extend(
                records
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| (seq_of(i), to_hstream_record(r))),
            );
        } else {
            for (i, r) in records.into_iter().enumerate() {
                let h = keyspace::key_hash(&r.key);
                let at = entry
                    .shards
                    .iter()
                    .position(|s| s.meta.start_key <= h && h <= s.meta.end_key)
                    .unwrap_or(0);
                per_shard[at].push((seq_of(i), to_hstream_record(r)));
            }
        }
        let budget = ctx.limits().max_record_size / BATCH_BUDGET_DIVISOR;
        let max_records = ctx.limits().max_batch_records as usize;
        let mut appends = Vec::new();
        for (shard, recs) in entry.shards.iter().zip(per_shard) {
            let mut chunk = Vec::new();
            let mut size = 0usize;
            for rec in recs {
                let len = rec.1.encoded_len() + 8;
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
        let producer = tag.map(|(p, _)| p);
        let results = futures::future::join_all(by_shard.into_iter().map(|batches| {
            let ctx = ctx.clone();
            async move {
                for (shard, recs) in batches {
                    let n = recs.len() as u32;
                    let (seqs, records): (Vec<u64>, Vec<pb::HStreamRecord>) = recs.into_iter().unzip();
                    let mut payload = pb::BatchHStreamRecords { records }.encode_to_vec();
                    if let Some(p) = producer {
                        ProducerTag::new(p, &seqs).append_to(&mut payload);
                    }
                    ctx.append_batch(stream, shard, payload.into(), n, pb::CompressionType::None as u8)
                        .await?;
                }
                Ok::<(), crate::store::StoreError>(())
            }
        }))
        .await;
        results.into_iter().collect::<Result<(), _>>().map_err(external)
    }
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

impl TaskStreams {
    fn may_append(&self) -> Result<(), ConnectorError> {
        if self.revoked.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(external("not appending: this task runs elsewhere now"));
        }
        if !self.assignments.fresh() {
            return Err(external(format!(
                "not appending: this node has not heard from the metastore for {} s and may no longer hold this task",
                crate::cluster::assign::STALE_AFTER.as_secs()
            )));
        }
        Ok(())
    }
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
        self.may_append()?;
        self.inner.append(stream, records).await
    }

    fn tags_supported(&self) -> bool {
        self.inner.tags_supported()
    }

    async fn append_tagged(
        &self,
        stream: &str,
        records: Vec<Record>,
        producer: &str,
        seqs: &[u64],
    ) -> Result<(), ConnectorError> {
        self.may_append()?;
        self.inner.append_tagged(stream, records, producer, seqs).await
    }

    async fn read_tagged(
        &self,
        stream: &str,
        shard: u64,
        from_lsn: u64,
        max_batches: usize,
    ) -> Result<Option<TaggedChunk>, ConnectorError> {
        self.inner.read_tagged(stream, shard, from_lsn, max_batches).await
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
        self.append_with(stream, records, None).await
    }

    fn tags_supported(&self) -> bool {
        true
    }

    async fn append_tagged(
        &self,
        stream: &str,
        records: Vec<Record>,
        producer: &str,
        seqs: &[u64],
    ) -> Result<(), ConnectorError> {
        self.append_with(stream, records, Some((producer, seqs))).await
    }

    async fn read_tagged(
        &self,
        stream: &str,
        shard: u64,
        from_lsn: u64,
        max_batches: usize,
    ) -> Result<Option<TaggedChunk>, ConnectorError> {
        let s = self.streams.catalog().shard_of(stream, shard).map_err(external)?;
        let batches = s.log.read(from_lsn, max_batches, 4 << 20).await.map_err(external)?;
        let mut chunk = TaggedChunk {
            batches: Vec::with_capacity(batches.len()),
            next_lsn: from_lsn.max(s.log.start_lsn()),
        };
        for b in batches {
            let lsn = b.lsn;
            chunk.next_lsn = lsn + 1;
            // Our own appends are never compressed: a compressed batch is a client's. Only a
            // tagged batch's records are decoded (no one asks for the others').
            let tag = (b.compression == pb::CompressionType::None as u8)
                .then(|| ProducerTag::of(&b.payload))
                .flatten();
            if tag.is_none() {
                chunk.batches.push((None, Vec::new()));
                continue;
            }
            let records = stored_records(shard, b)?
                .into_iter()
                .map(|r| {
                    let s = to_sink_record(shard, lsn, 0, r);
                    Record {
                        key: s.key,
                        flag: s.flag,
                        payload: s.payload,
                        attributes: s.attributes,
                    }
                })
                .collect();
            chunk.batches.push((tag, records));
        }
        Ok(Some(chunk))
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
            for (i, r) in stored_records(shard, b)?.into_iter().enumerate() {
                chunk.records.push(to_sink_record(shard, lsn, i as u32, r));
            }
            chunk.next_lsn = lsn + 1;
        }
        Ok(chunk)
    }
}
