//! The shard readers service: a named position in one shard that clients advance read by read.
//!
//! A reader's definition (stream, shard, start, timeout) is kept in the MetaStore, so it can be
//! looked up and read after a restart; its position is in memory and restarts from the start
//! offset, as HStreamDB's does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hstream_proto::ErrorCode;
use tokio_util::sync::CancellationToken;

use crate::catalog::{ShardEntry, validate_name};
use crate::error::{ApiError, ApiResult};
use crate::meta::{MetaError, MetaStore, ReaderMeta};
use crate::store::StoredBatch;
use crate::streams::{From, ShardCursor, Streams, Until, resolve_from};

/// A reader to create.
#[derive(Debug, Clone)]
pub struct ReaderSpec {
    pub id: String,
    pub stream: String,
    pub shard_id: u64,
    pub from: From,
    /// How long a read waits for a batch when none is there (0 = not at all).
    pub timeout_ms: u32,
    /// The start offset as the client sent it, kept with the definition.
    pub offset_spec: Vec<u8>,
}

struct ReaderState {
    cursor: ShardCursor,
    timeout: Duration,
}

type Open = Arc<tokio::sync::Mutex<ReaderState>>;

pub struct Readers {
    meta: Arc<dyn MetaStore>,
    streams: Arc<Streams>,
    open: Mutex<HashMap<String, Open>>,
    shutdown: CancellationToken,
}

impl Readers {
    pub fn new(meta: Arc<dyn MetaStore>, streams: Arc<Streams>, shutdown: CancellationToken) -> Self {
        Readers {
            meta,
            streams,
            open: Mutex::new(HashMap::new()),
            shutdown,
        }
    }

    /// Checks a new reader's id and that its shard exists, as `create` does first (a front door
    /// that reads the start offset checks these before it).
    pub fn check_spec(&self, id: &str, stream: &str, shard_id: u64) -> ApiResult<ShardEntry> {
        validate_name("shard reader", ErrorCode::ShardReaderInvalidObjectIdentifier, id)?;
        self.streams.catalog().shard_of(stream, shard_id)
    }

    pub async fn create(&self, spec: ReaderSpec) -> ApiResult<ReaderMeta> {
        let shard = self.check_spec(&spec.id, &spec.stream, spec.shard_id)?;
        let start_lsn = resolve_from(&*shard.log, spec.from).await?;
        let meta = ReaderMeta {
            id: spec.id.clone(),
            stream: spec.stream,
            shard_id: spec.shard_id,
            start_lsn,
            timeout_ms: spec.timeout_ms,
            offset_spec: spec.offset_spec,
        };
        self.meta.create_reader(&meta).await.map_err(|e| match e {
            MetaError::AlreadyExists { .. } => ApiError::ReaderExists(spec.id.clone()),
            e => e.into(),
        })?;
        let state = ReaderState {
            cursor: ShardCursor::new(shard, start_lsn, Until::Forever),
            timeout: Duration::from_millis(spec.timeout_ms as u64),
        };
        self.open
            .lock()
            .expect("lock")
            .insert(spec.id, Arc::new(tokio::sync::Mutex::new(state)));
        Ok(meta)
    }

    async fn reader(&self, id: &str) -> ApiResult<Open> {
        if let Some(r) = self.open.lock().expect("lock").get(id) {
            return Ok(r.clone());
        }
        // Defined before a restart: reopen at its start offset.
        let meta = self
            .meta
            .get_reader(id)
            .await?
            .ok_or_else(|| ApiError::ReaderNotFound(id.to_owned()))?;
        let shard = self.streams.catalog().shard(meta.shard_id)?;
        let state = Arc::new(tokio::sync::Mutex::new(ReaderState {
            cursor: ShardCursor::new(shard, meta.start_lsn, Until::Forever),
            timeout: Duration::from_millis(meta.timeout_ms as u64),
        }));
        Ok(self
            .open
            .lock()
            .expect("lock")
            .entry(id.to_owned())
            .or_insert(state)
            .clone())
    }

    /// Returns up to `max` batches (0 = no count limit) under `max_bytes`, with the id of the
    /// reader's shard; waits up to the reader's timeout when none is there.
    pub async fn read(&self, id: &str, max: u32, max_bytes: usize) -> ApiResult<(u64, Vec<StoredBatch>)> {
        let reader = self.reader(id).await?;
        let mut state = reader.lock().await;
        let max = if max == 0 { usize::MAX } else { max as usize };
        let mut batches = state.cursor.read_chunk(max, max_bytes).await?;
        if batches.is_empty() && !state.timeout.is_zero() {
            let timeout = state.timeout;
            let woken = tokio::select! {
                w = tokio::time::timeout(timeout, state.cursor.wait()) => w.is_ok(),
                _ = self.shutdown.cancelled() => false,
            };
            if woken {
                batches = state.cursor.read_chunk(max, max_bytes).await?;
            }
        }
        Ok((state.cursor.shard.meta.id, batches))
    }

    pub async fn delete(&self, id: &str) -> ApiResult<()> {
        let removed_mem = self.open.lock().expect("lock").remove(id).is_some();
        let removed_meta = self.meta.delete_reader(id).await?;
        if !removed_mem && !removed_meta {
            return Err(ApiError::ReaderNotFound(id.to_owned()));
        }
        Ok(())
    }

    /// The ids of every reader defined.
    pub async fn list(&self) -> ApiResult<Vec<String>> {
        Ok(self.meta.list_readers().await?.into_iter().map(|r| r.id).collect())
    }
}
