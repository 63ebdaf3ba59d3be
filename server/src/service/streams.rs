//! Stream and shard RPCs: requests translated into the streams service's terms, its answers
//! into responses.

use std::collections::BTreeMap;

use hstream_proto as pb;

use super::HStreamService;
use super::read::{self, timestamp};
use crate::batch;
use crate::error::{ApiError, ApiResult};
use crate::meta::{ShardMeta, StreamMeta};
use crate::streams::{DeleteMode, StreamSpec};

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

impl HStreamService {
    pub(super) async fn create_stream_rpc(&self, req: pb::Stream) -> ApiResult<pb::Stream> {
        let spec = StreamSpec {
            name: req.stream_name,
            replication_factor: req.replication_factor,
            backlog_secs: req.backlog_duration,
            shard_count: req.shard_count,
        };
        Ok(stream_pb(&self.api.streams.create(spec).await?))
    }

    pub(super) async fn delete_stream_rpc(&self, req: pb::DeleteStreamRequest) -> ApiResult<()> {
        let mode = DeleteMode {
            ignore_missing: req.ignore_non_exist,
            force: req.force,
        };
        self.api.streams.delete(&req.stream_name, mode).await
    }

    pub(super) fn get_stream_rpc(&self, name: &str) -> ApiResult<pb::GetStreamResponse> {
        let s = self.api.streams.get(name)?;
        Ok(pb::GetStreamResponse {
            stream: Some(stream_pb(&s.meta)),
        })
    }

    pub(super) fn list_streams_rpc(&self, prefix: &str) -> pb::ListStreamsResponse {
        pb::ListStreamsResponse {
            streams: self
                .api
                .streams
                .list(prefix)
                .iter()
                .map(|s| stream_pb(&s.meta))
                .collect(),
        }
    }

    pub(super) fn list_shards_rpc(&self, stream: &str) -> ApiResult<pb::ListShardsResponse> {
        let s = self.api.streams.get(stream)?;
        Ok(pb::ListShardsResponse {
            shards: s.shards.iter().map(|sh| shard_pb(&sh.meta)).collect(),
        })
    }

    pub(super) async fn append_rpc(&self, req: pb::AppendRequest) -> ApiResult<pb::AppendResponse> {
        let streams = &self.api.streams;
        let shard = streams.catalog().shard_of(&req.stream_name, req.shard_id)?;
        batch::check(req.records.as_ref(), streams.limits()).await?;
        let records = req.records.expect("validated");
        let appended = streams
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

    pub(super) async fn get_tail_record_id_rpc(
        &self,
        req: pb::GetTailRecordIdRequest,
    ) -> ApiResult<pb::GetTailRecordIdResponse> {
        let tail = self.api.streams.tail(&req.stream_name, req.shard_id).await?;
        Ok(pb::GetTailRecordIdResponse {
            tail_record_id: Some(pb::RecordId {
                shard_id: req.shard_id,
                batch_id: tail,
                batch_index: 0,
            }),
        })
    }

    pub(super) async fn trim_stream_rpc(&self, req: pb::TrimStreamRequest) -> ApiResult<()> {
        self.api.streams.get(&req.stream_name)?;
        let point = req
            .trim_point
            .as_ref()
            .ok_or_else(|| ApiError::InvalidOffset("trimPoint is missing".into()))?;
        let point = read::stream_from(Some(point))?;
        self.api.streams.trim(&req.stream_name, point).await
    }

    pub(super) async fn trim_shard_rpc(&self, req: pb::TrimShardRequest) -> ApiResult<()> {
        self.api.streams.catalog().shard_of(&req.stream_name, req.shard_id)?;
        let point = req
            .trim_point
            .as_ref()
            .ok_or_else(|| ApiError::InvalidOffset("trimPoint is missing".into()))?;
        let point = read::shard_from(req.shard_id, Some(point))?;
        self.api.streams.trim_shard(&req.stream_name, req.shard_id, point).await
    }

    /// For each shard named, trims every batch before the oldest record id given for it.
    pub(super) async fn trim_shards_rpc(&self, req: pb::TrimShardsRequest) -> ApiResult<pb::TrimShardsResponse> {
        self.api.streams.get(&req.stream_name)?;
        let mut oldest: BTreeMap<u64, (u64, u32)> = BTreeMap::new();
        for s in &req.record_ids {
            let (shard, batch, index) = parse_record_id(s)?;
            let e = oldest.entry(shard).or_insert((batch, index));
            if (batch, index) < *e {
                *e = (batch, index);
            }
        }
        self.api.streams.trim_before(&req.stream_name, &oldest).await?;
        let trim_points = oldest
            .iter()
            .map(|(shard, (batch, index))| (*shard, format!("{shard}-{batch}-{index}")))
            .collect();
        Ok(pb::TrimShardsResponse { trim_points })
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
