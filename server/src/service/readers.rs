//! Shard readers: a named position in one shard that clients advance with `ReadShard`.
//!
//! A reader's definition (stream, shard, start, timeout) is kept in the MetaStore, so it can be
//! looked up and read after a restart; its position is in memory and restarts from the start
//! offset, as HStreamDB's does.

use std::sync::Arc;
use std::time::Duration;

use hstream_proto as pb;
use hstream_proto::ErrorCode;
use prost::Message;

use super::ServerCtx;
use super::read::{self, RESPONSE_BYTES, ShardCursor, Until};
use crate::catalog::validate_name;
use crate::error::{ApiError, ApiResult};
use crate::meta::{MetaError, ReaderMeta};

pub struct ReaderState {
    cursor: ShardCursor,
    timeout: Duration,
}

impl ServerCtx {
    pub async fn create_shard_reader(
        &self,
        req: pb::CreateShardReaderRequest,
    ) -> ApiResult<pb::CreateShardReaderResponse> {
        validate_name(
            "shard reader",
            ErrorCode::ShardReaderInvalidObjectIdentifier,
            &req.reader_id,
        )?;
        let shard = self.catalog.shard_of(&req.stream_name, req.shard_id)?;
        let offset = req
            .shard_offset
            .as_ref()
            .ok_or_else(|| ApiError::InvalidOffset("shardOffset is missing".into()))?;
        let from = read::shard_from(req.shard_id, Some(offset))?;
        let start_lsn = read::resolve_from(&*shard.log, from).await?;
        let meta = ReaderMeta {
            id: req.reader_id.clone(),
            stream: req.stream_name.clone(),
            shard_id: req.shard_id,
            start_lsn,
            timeout_ms: req.timeout,
            offset_spec: offset.encode_to_vec(),
        };
        self.meta.create_reader(&meta).await.map_err(|e| match e {
            MetaError::AlreadyExists { .. } => ApiError::ReaderExists(req.reader_id.clone()),
            e => e.into(),
        })?;
        let state = ReaderState {
            cursor: ShardCursor::new(shard, start_lsn, Until::Forever),
            timeout: Duration::from_millis(req.timeout as u64),
        };
        self.readers
            .lock()
            .expect("lock")
            .insert(req.reader_id.clone(), Arc::new(tokio::sync::Mutex::new(state)));
        Ok(pb::CreateShardReaderResponse {
            stream_name: req.stream_name,
            shard_id: req.shard_id,
            shard_offset: req.shard_offset,
            reader_id: req.reader_id,
            timeout: req.timeout,
        })
    }

    async fn reader(&self, id: &str) -> ApiResult<Arc<tokio::sync::Mutex<ReaderState>>> {
        if let Some(r) = self.readers.lock().expect("lock").get(id) {
            return Ok(r.clone());
        }
        // Defined before a restart: reopen at its start offset.
        let meta = self
            .meta
            .get_reader(id)
            .await?
            .ok_or_else(|| ApiError::ReaderNotFound(id.to_owned()))?;
        let shard = self.catalog.shard(meta.shard_id)?;
        let state = Arc::new(tokio::sync::Mutex::new(ReaderState {
            cursor: ShardCursor::new(shard, meta.start_lsn, Until::Forever),
            timeout: Duration::from_millis(meta.timeout_ms as u64),
        }));
        Ok(self
            .readers
            .lock()
            .expect("lock")
            .entry(id.to_owned())
            .or_insert(state)
            .clone())
    }

    /// Returns up to `maxRecords` batches; waits up to the reader's timeout when none is there.
    pub async fn read_shard(&self, req: pb::ReadShardRequest) -> ApiResult<pb::ReadShardResponse> {
        let reader = self.reader(&req.reader_id).await?;
        let mut state = reader.lock().await;
        let max = if req.max_records == 0 {
            usize::MAX
        } else {
            req.max_records as usize
        };
        let mut batches = state.cursor.read_chunk(max, RESPONSE_BYTES).await?;
        if batches.is_empty() && !state.timeout.is_zero() {
            let timeout = state.timeout;
            let woken = tokio::select! {
                w = tokio::time::timeout(timeout, state.cursor.wait()) => w.is_ok(),
                _ = self.shutdown.cancelled() => false,
            };
            if woken {
                batches = state.cursor.read_chunk(max, RESPONSE_BYTES).await?;
            }
        }
        let shard_id = state.cursor.shard.meta.id;
        Ok(pb::ReadShardResponse {
            received_records: batches.into_iter().map(|b| read::received(shard_id, b)).collect(),
        })
    }

    pub async fn delete_shard_reader(&self, id: &str) -> ApiResult<()> {
        let removed_mem = self.readers.lock().expect("lock").remove(id).is_some();
        let removed_meta = self.meta.delete_reader(id).await?;
        if !removed_mem && !removed_meta {
            return Err(ApiError::ReaderNotFound(id.to_owned()));
        }
        Ok(())
    }

    pub async fn list_shard_readers(&self) -> ApiResult<pb::ListShardReadersResponse> {
        Ok(pb::ListShardReadersResponse {
            reader_id: self.meta.list_readers().await?.into_iter().map(|r| r.id).collect(),
        })
    }
}
