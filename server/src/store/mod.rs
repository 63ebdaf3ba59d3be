//! The log store, our own product: what every store guarantees (`api.rs`, checked by
//! `contract.rs`), how readers of many shards learn which moved (`ready.rs`), the local
//! segment store (`local/`, the default) and the store on NATS JetStream (`jetstream/`).

pub mod admin;
mod api;
pub mod contract;
pub mod jetstream;
pub mod local;
mod ready;

pub use api::{Shard, Store};
pub use local::{
    CLUSTER_ID_FILE, FsyncPolicy, LocalShard, LocalStore, LogStore, MAX_PAYLOAD_LEN, ShardLog, StoreOptions,
};
pub use ready::ReadySet;

use std::path::{Path, PathBuf};

use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("shard {0} was deleted")]
    ShardDeleted(u64),
    #[error("shard {0} already exists in the store")]
    ShardExists(u64),
    #[error("shard refuses writes until restart: {0}")]
    Poisoned(String),
    #[error("shard {shard} is unavailable: {reason} (its files are kept as they are)")]
    Unavailable { shard: u64, reason: String },
    #[error("the store is shutting down")]
    ShuttingDown,
    #[error("append failed: {0}")]
    Failed(String),
    /// A remote store (JetStream) failed a request or was given something it cannot take.
    #[error("{0}")]
    Backend(String),
    /// A remote store cannot be reached or cannot answer now; retrying later may succeed.
    #[error("the store cannot serve now: {0}")]
    Down(String),
}

impl StoreError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub lsn: u64,
    pub timestamp_ms: i64,
}

/// One stored batch as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    pub lsn: u64,
    pub timestamp_ms: i64,
    pub batch_size: u32,
    pub compression: u8,
    pub payload: Bytes,
}

impl StoredBatch {
    /// Bytes this batch costs in a read response: its payload plus a record id per record.
    pub fn wire_len(&self) -> usize {
        self.payload.len() + 16 * self.batch_size as usize + 32
    }
}

/// Wall-clock unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
