//! The shard readers service: a named position in one shard that clients advance read by read.
//!
//! A reader's definition (stream, shard, start, timeout) is kept in the MetaStore, so it can be
//! looked up and read after a restart; its position is in memory and restarts from the start
//! offset, as HStreamDB's does.
//!
//! In a cluster a reader lives on the node its lookup names, which moves with the membership:
//! a cursor opened before the membership last changed (the caller's `view`) is checked
//! against the MetaStore before it is read again, so a reader deleted or re-created through
//! another node meanwhile is not read from its old cursor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// A reader open on this node: its definition, the membership view it was last checked
/// under, and its cursor.
struct OpenReader {
    definition: ReaderMeta,
    checked: AtomicU64,
    state: tokio::sync::Mutex<ReaderState>,
}

type Open = Arc<OpenReader>;

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

    /// Creates a reader and opens it here; `view` is the caller's membership view (see the
    /// module doc).
    pub async fn create(&self, spec: ReaderSpec, view: u64) -> ApiResult<ReaderMeta> {
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
        let opened = Self::opened(meta.clone(), shard, view);
        self.open.lock().expect("lock").insert(spec.id, opened);
        Ok(meta)
    }

    fn opened(definition: ReaderMeta, shard: ShardEntry, view: u64) -> Open {
        Arc::new(OpenReader {
            state: tokio::sync::Mutex::new(ReaderState {
                cursor: ShardCursor::new(shard, definition.start_lsn, Until::Forever),
                timeout: Duration::from_millis(definition.timeout_ms as u64),
            }),
            definition,
            checked: AtomicU64::new(view),
        })
    }

    async fn reader(&self, id: &str, view: u64) -> ApiResult<Open> {
        let open = self.open.lock().expect("lock").get(id).cloned();
        if let Some(r) = &open
            && r.checked.load(Ordering::SeqCst) == view
        {
            return Ok(r.clone());
        }
        // Defined before a restart, or open since before the membership changed (deleted or
        // re-created through another node meanwhile?): as the MetaStore has it.
        let Some(meta) = self.meta.get_reader(id).await? else {
            self.open.lock().expect("lock").remove(id);
            return Err(ApiError::ReaderNotFound(id.to_owned()));
        };
        if let Some(r) = open.filter(|r| r.definition == meta) {
            r.checked.store(view, Ordering::SeqCst);
            return Ok(r);
        }
        let shard = self.streams.catalog().shard(meta.shard_id)?;
        let opened = Self::opened(meta, shard, view);
        self.open.lock().expect("lock").insert(id.to_owned(), opened.clone());
        Ok(opened)
    }

    /// Returns up to `max` batches (0 = no count limit) under `max_bytes`, with the id of the
    /// reader's shard; waits up to the reader's timeout when none is there. `view`: the
    /// caller's membership view (see the module doc).
    pub async fn read(&self, id: &str, max: u32, max_bytes: usize, view: u64) -> ApiResult<(u64, Vec<StoredBatch>)> {
        let reader = self.reader(id, view).await?;
        let mut state = reader.state.lock().await;
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
