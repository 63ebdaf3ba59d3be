//! Streams and shards: create, delete (with archiving under `force`), list, trim, tail, retention,
//! and the append path.

use std::collections::BTreeMap;
use std::sync::Arc;

use hstream_proto as pb;
use hstream_proto::ErrorCode;

use super::ServerCtx;
use super::read::{From, now_ms, resolve_from, timestamp};
use crate::batch;
use crate::catalog::{ARCHIVED_PREFIX, ShardEntry, StreamEntry, validate_name};
use crate::connectors::StreamHost;
use crate::error::{ApiError, ApiResult};
use crate::keyspace;
use crate::meta::{ShardMeta, StreamMeta};
use crate::store::Shard;

/// Largest shardCount accepted (each shard is a directory and open files).
pub const MAX_SHARDS: u32 = 4096;

pub fn stream_pb(m: &StreamMeta) -> pb::Stream {
    pb::Stream {
        stream_name: m.name.clone(),
        replication_factor: m.replication_factor,
        backlog_duration: m.backlog_secs,
        shard_count: m.shard_count,
        creation_time: Some(timestamp(m.created_ms)),
    }
}

fn shard_pb(m: &ShardMeta) -> pb::Shard {
    pb::Shard {
        stream_name: m.stream.clone(),
        shard_id: m.id,
        start_hash_range_key: m.start_key.to_string(),
        end_hash_range_key: m.end_key.to_string(),
        epoch: m.epoch,
        is_active: true,
    }
}

fn validate_stream_name(name: &str) -> ApiResult<()> {
    validate_name("stream", ErrorCode::StreamInvalidObjectIdentifier, name)
}

impl ServerCtx {
    pub async fn create_stream(&self, req: pb::Stream) -> ApiResult<pb::Stream> {
        validate_stream_name(&req.stream_name)?;
        if req.replication_factor == 0 {
            return Err(ApiError::InvalidReplicationFactor);
        }
        if req.shard_count == 0 || req.shard_count > MAX_SHARDS {
            return Err(ApiError::InvalidShardCount {
                got: req.shard_count,
                max: MAX_SHARDS,
            });
        }
        let _ddl = self.ddl.lock().await;
        if self.catalog.stream(&req.stream_name).is_ok() {
            return Err(ApiError::StreamExists(req.stream_name));
        }
        let meta = StreamMeta {
            name: req.stream_name.clone(),
            replication_factor: req.replication_factor,
            backlog_secs: req.backlog_duration,
            shard_count: req.shard_count,
            created_ms: now_ms(),
            archived: false,
        };
        let first = self.meta.allocate_shard_ids(req.shard_count).await?;
        let shards: Vec<ShardMeta> = keyspace::split(req.shard_count)
            .into_iter()
            .enumerate()
            .map(|(i, (start_key, end_key))| ShardMeta {
                id: first + i as u64,
                stream: meta.name.clone(),
                start_key,
                end_key,
                epoch: req.shard_count as u64,
            })
            .collect();
        // Shard directories first: a crash before the metadata commit leaves orphans that the next
        // start removes, never a stream whose shards are missing.
        let mut created = Vec::with_capacity(shards.len());
        let mut failed = None;
        for s in &shards {
            match self.store.create_shard(s.id).await {
                Ok(log) => created.push(log),
                Err(e) => {
                    failed = Some(e.into());
                    break;
                }
            }
        }
        let logs = match failed.map_or(Ok(created), Err) {
            Ok(l) => l,
            Err(e) => {
                self.drop_shard_files(shards.iter().map(|s| s.id).collect()).await;
                return Err(e);
            }
        };
        if let Err(e) = self.meta.create_stream(&meta, &shards).await {
            self.drop_shard_files(shards.iter().map(|s| s.id).collect()).await;
            return Err(match e {
                crate::meta::MetaError::AlreadyExists { .. } => ApiError::StreamExists(meta.name),
                e => e.into(),
            });
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
        Ok(stream_pb(&meta))
    }

    pub(super) async fn drop_shard_files(&self, ids: Vec<u64>) {
        for id in ids {
            if let Err(e) = self.store.delete_shard(id).await {
                tracing::warn!(shard = id, error = %e, "could not remove shard files");
            }
        }
    }

    pub async fn delete_stream(&self, req: pb::DeleteStreamRequest) -> ApiResult<()> {
        validate_stream_name(&req.stream_name)?;
        let _ddl = self.ddl.lock().await;
        let entry = match self.catalog.stream(&req.stream_name) {
            Ok(e) => e,
            Err(_) if req.ignore_non_exist => return Ok(()),
            Err(e) => return Err(e),
        };
        let subs = self.meta.subscriptions_of_stream(&req.stream_name).await?;
        if !subs.is_empty() {
            if !req.force {
                return Err(ApiError::StreamHasSubscriptions(req.stream_name));
            }
            // Subscriptions keep reading the archived data; it goes with the last of them.
            let archived = format!("{ARCHIVED_PREFIX}{}_{}", req.stream_name, now_ms());
            self.meta.archive_stream(&req.stream_name, &archived).await?;
            self.catalog.remove(&req.stream_name);
            self.metrics.stream_deleted(&req.stream_name);
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
            tracing::info!(stream = %req.stream_name, archived = %archived, "stream archived");
            return Ok(());
        }
        self.meta.delete_stream(&req.stream_name).await?;
        self.catalog.remove(&req.stream_name);
        self.metrics.stream_deleted(&req.stream_name);
        self.drop_shard_files(entry.shards.iter().map(|s| s.meta.id).collect())
            .await;
        tracing::info!(stream = %req.stream_name, "stream deleted");
        Ok(())
    }

    pub fn get_stream(&self, name: &str) -> ApiResult<pb::GetStreamResponse> {
        let s = self.catalog.stream(name)?;
        Ok(pb::GetStreamResponse {
            stream: Some(stream_pb(&s.meta)),
        })
    }

    pub fn list_streams(&self, prefix: &str) -> pb::ListStreamsResponse {
        pb::ListStreamsResponse {
            streams: self
                .catalog
                .live_streams(prefix)
                .iter()
                .map(|s| stream_pb(&s.meta))
                .collect(),
        }
    }

    pub fn list_shards(&self, stream: &str) -> ApiResult<pb::ListShardsResponse> {
        let s = self.catalog.stream(stream)?;
        Ok(pb::ListShardsResponse {
            shards: s.shards.iter().map(|sh| shard_pb(&sh.meta)).collect(),
        })
    }

    pub async fn append(&self, req: pb::AppendRequest) -> ApiResult<pb::AppendResponse> {
        let shard = self.catalog.shard_of(&req.stream_name, req.shard_id)?;
        batch::check(req.records.as_ref(), self.limits).await?;
        let records = req.records.expect("validated");
        let appended = self
            .append_batch(
                &req.stream_name,
                shard.meta.id,
                records.payload,
                records.batch_size,
                records.compression_type as u8,
            )
            .await?;
        let record_ids = (0..records.batch_size)
            .map(|i| pb::RecordId {
                shard_id: req.shard_id,
                batch_id: appended.lsn,
                batch_index: i,
            })
            .collect();
        Ok(pb::AppendResponse {
            stream_name: req.stream_name,
            shard_id: req.shard_id,
            record_ids,
        })
    }

    pub fn get_tail_record_id(&self, req: pb::GetTailRecordIdRequest) -> ApiResult<pb::GetTailRecordIdResponse> {
        let shard = self.catalog.shard_of(&req.stream_name, req.shard_id)?;
        shard.log.check_available()?;
        Ok(pb::GetTailRecordIdResponse {
            tail_record_id: Some(pb::RecordId {
                shard_id: req.shard_id,
                batch_id: shard.log.visible_lsn(),
                batch_index: 0,
            }),
        })
    }

    /// Trims one shard up to and including the LSN `from` resolves to (EARLIEST trims nothing).
    async fn trim_to(log: Arc<dyn Shard>, point: From) -> ApiResult<u64> {
        let upto = match point {
            From::Earliest => return Ok(log.start_lsn().saturating_sub(1)),
            From::Latest => log.visible_lsn(),
            other => resolve_from(&*log, other).await?,
        };
        Ok(log.trim(upto).await?)
    }

    pub async fn trim_stream(&self, req: pb::TrimStreamRequest) -> ApiResult<()> {
        let stream = self.catalog.stream(&req.stream_name)?;
        let point = req
            .trim_point
            .as_ref()
            .ok_or_else(|| ApiError::InvalidOffset("trimPoint is missing".into()))?;
        let point = super::read::stream_from(Some(point))?;
        for s in &stream.shards {
            Self::trim_to(s.log.clone(), point).await?;
        }
        Ok(())
    }

    pub async fn trim_shard(&self, req: pb::TrimShardRequest) -> ApiResult<()> {
        let shard = self.catalog.shard_of(&req.stream_name, req.shard_id)?;
        let point = req
            .trim_point
            .as_ref()
            .ok_or_else(|| ApiError::InvalidOffset("trimPoint is missing".into()))?;
        let point = super::read::shard_from(req.shard_id, Some(point))?;
        Self::trim_to(shard.log, point).await?;
        Ok(())
    }

    /// For each shard named, trims every batch before the oldest record id given for it.
    pub async fn trim_shards(&self, req: pb::TrimShardsRequest) -> ApiResult<pb::TrimShardsResponse> {
        let stream = self.catalog.stream(&req.stream_name)?;
        let mut oldest: BTreeMap<u64, (u64, u32)> = BTreeMap::new();
        for s in &req.record_ids {
            let (shard, batch, index) = parse_record_id(s)?;
            let e = oldest.entry(shard).or_insert((batch, index));
            if (batch, index) < *e {
                *e = (batch, index);
            }
        }
        let mut targets = Vec::new();
        for (&shard, &(batch, index)) in &oldest {
            let entry =
                stream
                    .shards
                    .iter()
                    .find(|s| s.meta.id == shard)
                    .ok_or_else(|| ApiError::ShardNotInStream {
                        shard,
                        stream: req.stream_name.clone(),
                    })?;
            targets.push((entry.log.clone(), shard, batch, index));
        }
        let mut trim_points = std::collections::HashMap::new();
        for (log, shard, batch, index) in targets {
            if batch > 1 {
                log.trim(batch - 1).await?;
            }
            trim_points.insert(shard, format!("{shard}-{batch}-{index}"));
        }
        Ok(pb::TrimShardsResponse { trim_points })
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
                    Ok::<(), crate::store::StoreError>(())
                }
                .await;
                if let Err(e) = res {
                    tracing::warn!(shard = s.meta.id, error = %e, "retention trim failed");
                }
            }
        }
    }
}

/// Parses HStreamDB's record id text form `"<shardId>-<batchId>-<batchIndex>"`.
pub fn parse_record_id(s: &str) -> ApiResult<(u64, u64, u32)> {
    let bad = || ApiError::InvalidRecordId(s.to_owned());
    let mut parts = s.split('-');
    let shard = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let batch = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let index = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok((shard, batch, index))
}

#[async_trait::async_trait]
impl crate::connectors::StreamHost for ServerCtx {
    fn catalog(&self) -> &crate::catalog::Catalog {
        &self.catalog
    }

    fn limits(&self) -> crate::batch::Limits {
        self.limits
    }

    async fn create_stream(&self, name: &str) -> ApiResult<()> {
        ServerCtx::create_stream(
            self,
            pb::Stream {
                stream_name: name.to_owned(),
                replication_factor: 1,
                backlog_duration: 0,
                shard_count: 1,
                creation_time: None,
            },
        )
        .await
        .map(drop)
    }

    async fn append_batch(
        &self,
        stream: &str,
        shard: u64,
        payload: bytes::Bytes,
        batch_size: u32,
        compression: u8,
    ) -> Result<crate::store::Appended, crate::store::StoreError> {
        let started = std::time::Instant::now();
        let bytes = payload.len() as u64;
        let appended = self.store.append(shard, payload, batch_size, compression).await?;
        self.metrics
            .appended(stream, u64::from(batch_size), bytes, started.elapsed());
        Ok(appended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_id_text() {
        assert_eq!(parse_record_id("12-345-6").unwrap(), (12, 345, 6));
        for bad in ["", "1-2", "1-2-3-4", "a-2-3", "1--3", "-1-2-3", "1-2-x"] {
            assert!(
                matches!(parse_record_id(bad), Err(ApiError::InvalidRecordId(_))),
                "{bad}"
            );
        }
    }
}
