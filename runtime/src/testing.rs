//! In-memory streams and checkpoints for testing connectors and the pipeline without a server.
//!
//! [`MemoryStreams`] keeps what [`Streams`] promises: a stream has a fixed set of shards (ids
//! 1..=n), records of one key go to one shard in append order, every `append` call stores one
//! batch per shard it touches (LSNs dense from 1), and a watch names every shard that got a
//! batch since its last answer. It also counts reads per shard, so a test can tell which shards
//! a reader touched, and can refuse appends past a count, to stand for a store failing mid-load.
//! [`MemoryCheckpoints`] keeps the last checkpoint of each task.
//!
//! [`conformance`] is the suite every source and sink runs: the runtime's contract (durable
//! before checkpointed, prompt stops, resumption without loss or repeats) checked on these
//! in-memory streams.

pub mod conformance;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::connector::{Record, SinkRecord};
use crate::error::ConnectorError;
use crate::producer::ProducerTag;
use crate::streams::{Checkpoints, ReadChunk, ShardWatch, Streams, TaggedChunk};

#[derive(Default)]
struct Shard {
    /// Batch `i` has LSN `i + 1`.
    batches: Vec<Vec<Record>>,
    /// Each batch's producer tag (`append_tagged`).
    tags: Vec<Option<ProducerTag>>,
    reads: u64,
}

#[derive(Default)]
struct State {
    streams: HashMap<String, BTreeMap<u64, Shard>>,
    /// Appends are refused once this many records are stored in all streams together.
    refuse_after: Option<u64>,
    stored: u64,
    /// Appends refused so far.
    refused: u64,
}

/// Streams held in memory (see the module doc).
pub struct MemoryStreams {
    state: Arc<Mutex<State>>,
    /// Bumped on every append, for watches.
    appended: watch::Sender<u64>,
    /// Shards of a stream created by `ensure_stream`.
    default_shards: u64,
}

impl Default for MemoryStreams {
    fn default() -> Self {
        MemoryStreams {
            state: Arc::default(),
            appended: watch::Sender::new(0),
            default_shards: 1,
        }
    }
}

impl MemoryStreams {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Stores one batch per shard the records touch, each with its producer tag when given.
    fn store(&self, stream: &str, records: Vec<Record>, tag: Option<(&str, &[u64])>) -> Result<(), ConnectorError> {
        let max = self.max_record_size();
        if let Some(r) = records.iter().find(|r| r.payload.len() > max) {
            return Err(ConnectorError::external(format!(
                "record of {} bytes is over the {max}-byte record limit",
                r.payload.len()
            )));
        }
        if tag.is_some_and(|(_, seqs)| seqs.len() != records.len()) {
            return Err(ConnectorError::internal("append: one number per record"));
        }
        {
            let mut st = self.state.lock().expect("lock");
            if !st.streams.contains_key(stream) {
                return Err(Self::unknown(stream));
            }
            let total = st.stored + records.len() as u64;
            if st.refuse_after.is_some_and(|limit| total > limit) {
                st.refused += 1;
                return Err(ConnectorError::external(
                    "the store refused the append (a test's fault)",
                ));
            }
            st.stored = total;
            let s = st.streams.get_mut(stream).expect("checked above");
            let n = s.len() as u64;
            let mut by_shard: BTreeMap<u64, (Vec<Record>, Vec<u64>)> = BTreeMap::new();
            for (i, r) in records.into_iter().enumerate() {
                let slot = by_shard.entry(shard_of(&r.key, n)).or_default();
                slot.0.push(r);
                slot.1.push(tag.map_or(0, |(_, seqs)| seqs[i]));
            }
            for (id, (batch, seqs)) in by_shard {
                let shard = s.get_mut(&id).expect("shard ids are 1..=n");
                shard.batches.push(batch);
                shard.tags.push(tag.map(|(p, _)| ProducerTag::new(p, &seqs)));
            }
        }
        self.appended.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Creates `name` with shards 1..=`shards` (replacing any stream of that name).
    pub fn create(&self, name: &str, shards: u64) {
        let mut st = self.state.lock().expect("lock");
        st.streams
            .insert(name.to_owned(), (1..=shards).map(|id| (id, Shard::default())).collect());
    }

    /// Refuses every append that would take the records stored (in all streams) past `records`
    /// (`None`: accept again). A refused append stores nothing.
    pub fn refuse_appends_after(&self, records: Option<u64>) {
        self.state.lock().expect("lock").refuse_after = records;
    }

    /// Appends `records` as one batch to one shard, whatever their keys.
    pub fn append_to(&self, stream: &str, shard: u64, records: Vec<Record>) {
        let mut st = self.state.lock().expect("lock");
        let s = st
            .streams
            .get_mut(stream)
            .and_then(|s| s.get_mut(&shard))
            .expect("append_to an existing shard");
        let n = records.len() as u64;
        s.batches.push(records);
        s.tags.push(None);
        st.stored += n;
        drop(st);
        self.appended.send_modify(|v| *v += 1);
    }

    /// Every record of a stream, shard by shard in LSN order.
    pub fn records(&self, stream: &str) -> Vec<Record> {
        let st = self.state.lock().expect("lock");
        st.streams
            .get(stream)
            .map(|s| s.values().flat_map(|sh| sh.batches.iter().flatten().cloned()).collect())
            .unwrap_or_default()
    }

    /// Every record of every stream.
    pub fn all_records(&self) -> Vec<Record> {
        let st = self.state.lock().expect("lock");
        st.streams
            .values()
            .flat_map(|s| s.values().flat_map(|sh| sh.batches.iter().flatten().cloned()))
            .collect()
    }

    /// Appends refused so far (see [`Self::refuse_appends_after`]).
    pub fn refused(&self) -> u64 {
        self.state.lock().expect("lock").refused
    }

    /// Records stored in all streams together.
    pub fn stored(&self) -> u64 {
        self.state.lock().expect("lock").stored
    }

    /// Reads served per shard of a stream.
    pub fn reads(&self, stream: &str) -> BTreeMap<u64, u64> {
        let st = self.state.lock().expect("lock");
        st.streams
            .get(stream)
            .map(|s| s.iter().map(|(id, sh)| (*id, sh.reads)).collect())
            .unwrap_or_default()
    }

    fn unknown(stream: &str) -> ConnectorError {
        ConnectorError::external(format!("stream {stream:?} does not exist"))
    }

    /// Batches per shard now.
    fn lengths(&self, stream: &str, shards: &[u64]) -> Vec<usize> {
        let st = self.state.lock().expect("lock");
        let s = st.streams.get(stream);
        shards
            .iter()
            .map(|id| s.and_then(|s| s.get(id)).map_or(0, |sh| sh.batches.len()))
            .collect()
    }
}

/// The shard a key goes to (stable for a stream's lifetime).
fn shard_of(key: &str, shards: u64) -> u64 {
    use md5::{Digest, Md5};
    let d = Md5::digest(key.as_bytes());
    let v = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
    v % shards + 1
}

#[async_trait]
impl Streams for MemoryStreams {
    async fn ensure_stream(&self, name: &str) -> Result<(), ConnectorError> {
        let exists = self.state.lock().expect("lock").streams.contains_key(name);
        if !exists {
            self.create(name, self.default_shards);
        }
        Ok(())
    }

    async fn stream_exists(&self, name: &str) -> Result<bool, ConnectorError> {
        Ok(self.state.lock().expect("lock").streams.contains_key(name))
    }

    async fn append(&self, stream: &str, records: Vec<Record>) -> Result<(), ConnectorError> {
        self.store(stream, records, None)
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
        self.store(stream, records, Some((producer, seqs)))
    }

    async fn read_tagged(
        &self,
        stream: &str,
        shard: u64,
        from_lsn: u64,
        max_batches: usize,
    ) -> Result<Option<TaggedChunk>, ConnectorError> {
        let st = self.state.lock().expect("lock");
        let s = st
            .streams
            .get(stream)
            .and_then(|s| s.get(&shard))
            .ok_or_else(|| Self::unknown(stream))?;
        let from = from_lsn.max(1);
        let mut chunk = TaggedChunk {
            batches: Vec::new(),
            next_lsn: from,
        };
        for (i, batch) in s.batches.iter().enumerate().skip(from as usize - 1).take(max_batches) {
            chunk.batches.push((s.tags[i].clone(), batch.clone()));
            chunk.next_lsn = i as u64 + 2;
        }
        Ok(Some(chunk))
    }

    async fn shards(&self, stream: &str) -> Result<Vec<u64>, ConnectorError> {
        let st = self.state.lock().expect("lock");
        let s = st.streams.get(stream).ok_or_else(|| Self::unknown(stream))?;
        Ok(s.keys().copied().collect())
    }

    async fn bounds(&self, stream: &str, shard: u64) -> Result<(u64, u64), ConnectorError> {
        let st = self.state.lock().expect("lock");
        let s = st
            .streams
            .get(stream)
            .and_then(|s| s.get(&shard))
            .ok_or_else(|| Self::unknown(stream))?;
        Ok((1, s.batches.len() as u64 + 1))
    }

    async fn read(
        &self,
        stream: &str,
        shard: u64,
        from_lsn: u64,
        max_batches: usize,
        _wait: Duration,
    ) -> Result<ReadChunk, ConnectorError> {
        let mut st = self.state.lock().expect("lock");
        let s = st
            .streams
            .get_mut(stream)
            .and_then(|s| s.get_mut(&shard))
            .ok_or_else(|| Self::unknown(stream))?;
        s.reads += 1;
        let from = from_lsn.max(1);
        let mut chunk = ReadChunk {
            records: Vec::new(),
            next_lsn: from,
        };
        for (i, batch) in s.batches.iter().enumerate().skip(from as usize - 1).take(max_batches) {
            let lsn = i as u64 + 1;
            for (index, r) in batch.iter().enumerate() {
                chunk.records.push(SinkRecord {
                    shard_id: shard,
                    lsn,
                    index: index as u32,
                    key: r.key.clone(),
                    flag: r.flag,
                    payload: r.payload.clone(),
                    attributes: r.attributes.clone(),
                });
            }
            chunk.next_lsn = lsn + 1;
        }
        Ok(chunk)
    }

    async fn watch(&self, stream: &str, shards: &[u64]) -> Result<Box<dyn ShardWatch>, ConnectorError> {
        let mut rx = self.appended.subscribe();
        rx.borrow_and_update();
        Ok(Box::new(MemoryWatch {
            seen: self.lengths(stream, shards),
            streams: MemoryStreams {
                state: self.state.clone(),
                appended: self.appended.clone(),
                default_shards: self.default_shards,
            },
            stream: stream.to_owned(),
            shards: shards.to_vec(),
            rx,
        }))
    }
}

struct MemoryWatch {
    streams: MemoryStreams,
    stream: String,
    shards: Vec<u64>,
    /// Batches per shard at the last answer.
    seen: Vec<usize>,
    rx: watch::Receiver<u64>,
}

#[async_trait]
impl ShardWatch for MemoryWatch {
    async fn ready(&mut self, timeout: Duration) -> Result<Vec<u64>, ConnectorError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.rx.borrow_and_update();
            let now = self.streams.lengths(&self.stream, &self.shards);
            let moved: Vec<u64> = (0..now.len())
                .filter(|&i| now[i] > self.seen[i])
                .map(|i| self.shards[i])
                .collect();
            self.seen = now;
            if !moved.is_empty() {
                return Ok(moved);
            }
            if tokio::time::timeout_at(deadline, self.rx.changed()).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }
}

/// Checkpoints held in memory: the last one stored per task.
#[derive(Default)]
pub struct MemoryCheckpoints(Mutex<HashMap<String, (u32, Vec<u8>)>>);

impl MemoryCheckpoints {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

#[async_trait]
impl Checkpoints for MemoryCheckpoints {
    async fn load(&self, task: &str) -> Result<Option<(u32, Vec<u8>)>, ConnectorError> {
        Ok(self.0.lock().expect("lock").get(task).cloned())
    }

    async fn store(&self, task: &str, version: u32, data: Vec<u8>) -> Result<(), ConnectorError> {
        self.0.lock().expect("lock").insert(task.to_owned(), (version, data));
        Ok(())
    }
}
