//! How the runtime reaches streams and checkpoints: two small traits, implemented in-process by
//! the server (the default) and implementable over gRPC for a standalone runtime.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::ConnectorError;
use crate::record::{Record, SinkRecord};

/// A chunk read from one shard: its records and the LSN to read next.
#[derive(Debug, Clone, Default)]
pub struct ReadChunk {
    pub records: Vec<SinkRecord>,
    pub next_lsn: u64,
}

/// Stored batches with their producer tags (an untagged batch's records may be left out), and
/// the LSN to read next.
#[derive(Debug, Clone, Default)]
pub struct TaggedChunk {
    pub batches: Vec<(Option<crate::producer::ProducerTag>, Vec<Record>)>,
    pub next_lsn: u64,
}

/// What is wrong with a stream name by HStreamDB's rule (1 to 255 characters, a letter first,
/// then letters, digits, `-` and `_`), if anything: the server's rule for every resource name,
/// and what the runtime checks of the streams a config names.
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > 255 {
        Some("must be at most 255 characters")
    } else if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        Some("must start with a letter")
    } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        Some("may hold only letters, digits, '-' and '_'")
    } else {
        None
    }
}

/// HStreamDB's default `max-record-size`.
pub const DEFAULT_MAX_RECORD_SIZE: usize = 1 << 20;

#[async_trait]
pub trait Streams: Send + Sync {
    /// Creates the stream (one shard) unless it exists.
    async fn ensure_stream(&self, name: &str) -> Result<(), ConnectorError>;

    async fn stream_exists(&self, name: &str) -> Result<bool, ConnectorError>;

    /// The largest encoded record the server stores (its `max-record-size`).
    fn max_record_size(&self) -> usize {
        DEFAULT_MAX_RECORD_SIZE
    }

    /// Appends records, each to the shard its key maps to; returns once all are durable. A record
    /// over [`max_record_size`](Self::max_record_size) fails the whole call before anything is
    /// written.
    async fn append(&self, stream: &str, records: Vec<Record>) -> Result<(), ConnectorError>;

    /// Whether [`append_tagged`](Self::append_tagged) stores tags that
    /// [`read_tagged`](Self::read_tagged) gives back (what exactly-once appends need).
    fn tags_supported(&self) -> bool {
        false
    }

    /// Like [`append`](Self::append), with the records numbered `seqs` (increasing, one per
    /// record) by task `producer`; the numbers are stored with their batches
    /// ([`crate::producer`]) for [`read_tagged`](Self::read_tagged). An access that cannot
    /// store them appends plainly (and then answers `None` there).
    async fn append_tagged(
        &self,
        stream: &str,
        records: Vec<Record>,
        producer: &str,
        seqs: &[u64],
    ) -> Result<(), ConnectorError> {
        let _ = (producer, seqs);
        self.append(stream, records).await
    }

    /// Up to `max_batches` stored batches of a shard from `from_lsn` (not waiting), with their
    /// producer tags; `None` when this access cannot read tags (then a source's appends are
    /// at-least-once).
    async fn read_tagged(
        &self,
        stream: &str,
        shard: u64,
        from_lsn: u64,
        max_batches: usize,
    ) -> Result<Option<TaggedChunk>, ConnectorError> {
        let _ = (stream, shard, from_lsn, max_batches);
        Ok(None)
    }

    /// Shard ids of a stream.
    async fn shards(&self, stream: &str) -> Result<Vec<u64>, ConnectorError>;

    /// The first LSN still readable in a shard, and the next one to be appended.
    async fn bounds(&self, stream: &str, shard: u64) -> Result<(u64, u64), ConnectorError>;

    /// Reads up to `max_batches` stored batches of a shard from `from_lsn`, waiting up to `wait`
    /// when none is there yet.
    async fn read(
        &self,
        stream: &str,
        shard: u64,
        from_lsn: u64,
        max_batches: usize,
        wait: Duration,
    ) -> Result<ReadChunk, ConnectorError>;

    /// Starts watching `shards` of `stream` for appends. Call it before the first read of
    /// them, so no append after it is missed. The default watch polls: it names every shard
    /// once per timeout.
    async fn watch(&self, _stream: &str, shards: &[u64]) -> Result<Box<dyn ShardWatch>, ConnectorError> {
        Ok(Box::new(PollWatch(shards.to_vec())))
    }
}

/// Which shards of a stream got data: a reader of many shards reads only those, so idle shards
/// cost it nothing.
#[async_trait]
pub trait ShardWatch: Send {
    /// The shards whose tail moved since the last call (or since the watch started), once there
    /// is at least one or `timeout` passed (then possibly none). A shard may be named without
    /// new data (reading it finds nothing); a shard that got data is never left out.
    async fn ready(&mut self, timeout: Duration) -> Result<Vec<u64>, ConnectorError>;
}

/// Names every shard once per timeout, for stream access that cannot tell which shards moved.
struct PollWatch(Vec<u64>);

#[async_trait]
impl ShardWatch for PollWatch {
    async fn ready(&mut self, timeout: Duration) -> Result<Vec<u64>, ConnectorError> {
        tokio::time::sleep(timeout).await;
        Ok(self.0.clone())
    }
}

/// Durable storage of task checkpoints (the MetaStore, in the server).
#[async_trait]
pub trait Checkpoints: Send + Sync {
    async fn load(&self, task: &str) -> Result<Option<(u32, Vec<u8>)>, ConnectorError>;
    async fn store(&self, task: &str, version: u32, data: Vec<u8>) -> Result<(), ConnectorError>;
}
