//! Exactly-once appends of a source (decision 035): after any crash or restart, each record a
//! source emits is in its stream once.
//!
//! How: the pipeline numbers every record a source emits, in emit order (a task's records are
//! numbered 0, 1, 2, … across its whole life), and appends each batch tagged with its records'
//! numbers ([`crate::producer`]). A checkpoint stores, with the offset, the number a restart at
//! that offset starts from, and where in each stream the task's later records can lie (the
//! *tails*: each shard's next LSN at a moment when no record numbered past the checkpoint had
//! been appended). A restarted task reads its own tagged records from the tails on ("landed"),
//! numbers the replayed records from the checkpoint's number again, and drops a replayed record
//! whose number landed *with the same content* (key, flag, payload, attributes): a source that
//! replays from its offset as it emitted ([`crate::connector::Source::REPLAYS`]: CDC from a
//! transaction end, Airbyte from its STATEs, the generator) gets each record once; one that
//! replays differently (a snapshot taken again over changed rows) gets what differs appended
//! again, never a record dropped that is not stored.
//!
//! The number a restart starts from is that of the first emit whose offset reached the
//! checkpoint's [`Offset::resume_point`]: records a source emits with an unchanged resume point
//! (the rows of a transaction still open) are not covered by it, and come again.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::connector::{Offset, Record};
use crate::context::RunContext;
use crate::error::ConnectorError;

/// The option that turns exactly-once appends off for a source (`false`); on by default.
pub const KEY: &str = "exactly.once";

/// Whether a config asks for exactly-once appends (the default), its error naming the key.
pub fn enabled(config: &Value) -> Result<bool, crate::error::FieldError> {
    match config.get(KEY) {
        None | Some(Value::Bool(true)) => Ok(true),
        Some(Value::Bool(false)) => Ok(false),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        Some(_) => Err(crate::error::FieldError {
            path: KEY.into(),
            message: "must be true or false".into(),
        }),
    }
}

/// Adds the option to a source's spec.
pub fn add_to_spec(spec: &mut Value) {
    let props = &mut spec["connectionSpecification"]["properties"];
    if props.is_object() {
        props[KEY] = serde_json::json!({
            "description": "Each record the source emits is stored once, also across crashes and restarts (records numbered and checked on replay; decision 035). false: at-least-once, as before.",
            "type": ["boolean", "string"], "default": true,
        });
    }
}

/// A source checkpoint that carries the producer state is stored with this bit set over the
/// offset's own version (a checkpoint of an older build has the offset's version alone).
pub(crate) const WITH_PRODUCER: u32 = 1 << 20;

/// Per stream, per shard: the LSN from which the task's records past the checkpoint may lie.
pub(crate) type Tails = BTreeMap<String, BTreeMap<u64, u64>>;

/// How often the tails are taken again (older tails only make a restart read more); often in
/// the unit tests, so that their short runs replace tails too.
const TAILS_EVERY: Duration = if cfg!(test) {
    Duration::from_millis(30)
} else {
    Duration::from_secs(2)
};
/// Batches read per call while collecting what landed.
const RECOVERY_READ: usize = 64;

#[derive(Serialize, Deserialize)]
#[serde(bound = "O: Offset")]
pub(crate) struct SourceCheckpoint<O> {
    pub offset: Option<O>,
    /// The number the first record emitted after `offset` gets.
    pub next_seq: u64,
    pub tails: Tails,
}

/// Loads a source's checkpoint: its offset and, when it has one, the producer state.
pub(crate) async fn load<O: Offset>(ctx: &RunContext) -> Result<(Option<O>, Option<(u64, Tails)>), ConnectorError> {
    let Some((version, data)) = ctx.checkpoints.load(&ctx.task).await? else {
        return Ok((None, None));
    };
    let unreadable = |e: serde_json::Error| {
        ConnectorError::internal(format!("checkpoint of task {} is unreadable", ctx.task)).with_source(e)
    };
    let (offset, state) = if version == O::VERSION {
        (Some(serde_json::from_slice::<O>(&data).map_err(unreadable)?), None)
    } else if version == WITH_PRODUCER | O::VERSION {
        let c: SourceCheckpoint<O> = serde_json::from_slice(&data).map_err(unreadable)?;
        (c.offset, Some((c.next_seq, c.tails)))
    } else {
        return Err(ConnectorError::internal(format!(
            "checkpoint of task {} has version {version}, this build reads version {}",
            ctx.task,
            O::VERSION
        )));
    };
    *ctx.progress.offset.lock().expect("lock") = offset.as_ref().and_then(|o| serde_json::to_value(o).ok());
    Ok((offset, state))
}

/// Stores a source's checkpoint: with the producer state while records are numbered (`on`),
/// else the offset alone, so that numbering turned on later starts afresh rather than from a
/// state its appends did not keep up.
pub(crate) async fn save<O: Offset>(ctx: &RunContext, c: &SourceCheckpoint<O>, on: bool) -> Result<(), ConnectorError> {
    let (version, data) = match (&c.offset, on) {
        (_, true) => (WITH_PRODUCER | O::VERSION, serde_json::to_vec(c)),
        (Some(o), false) => (O::VERSION, serde_json::to_vec(o)),
        (None, false) => return Ok(()),
    };
    let data = data.map_err(|e| ConnectorError::internal(e.to_string()))?;
    ctx.checkpoints.store(&ctx.task, version, data).await?;
    ctx.progress
        .checkpointed(c.offset.as_ref().and_then(|o| serde_json::to_value(o).ok()));
    Ok(())
}

/// What a record is, for telling a replayed record from the one stored under its number:
/// everything stored of it but what a dead letter says of its failure (`__connect.errors.*`:
/// its position reads the offset after the batch it was in, and batches form differently in a
/// replay).
fn content(r: &Record) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    r.key.hash(&mut h);
    matches!(r.flag, crate::connector::PayloadFlag::Json).hash(&mut h);
    r.payload.hash(&mut h);
    let mut attrs: Vec<(&String, &String)> = r
        .attributes
        .iter()
        .filter(|(k, _)| !k.starts_with("__connect.errors."))
        .collect();
    attrs.sort_unstable();
    attrs.hash(&mut h);
    h.finish()
}

/// The appender's numbering of a source's records.
pub(crate) struct Producer {
    /// Whether appends are tagged and replays checked (the streams can keep tags, and no
    /// transform reorders what the source emitted).
    pub on: bool,
    /// The number of the next record emitted.
    next_seq: u64,
    /// The number a restart at the last emitted offset starts from.
    resume_seq: u64,
    /// The resume point of the last emitted offset.
    last_point: Option<Value>,
    /// The tails the checkpoints carry.
    tails: Tails,
    /// Tails taken later, with the smallest number any record appended since can have: they
    /// replace `tails` in the first checkpoint that resumes at or past that number.
    next_tails: Option<(Tails, u64)>,
    tails_at: Instant,
    /// This task's records stored past its checkpoint, by number: (stream, content).
    landed: HashMap<u64, Vec<(Arc<str>, u64)>>,
    /// The highest number in `landed`: once the numbering passes it, nothing is left to match.
    landed_max: u64,
    /// Replayed records dropped as already stored, and replayed records whose number held
    /// another record.
    pub skipped: u64,
    pub differed: u64,
}

impl Producer {
    /// The state a task starts with: the checkpoint's numbering, and its records stored since.
    pub(crate) async fn start<O: Offset>(
        ctx: &RunContext,
        offset: Option<&O>,
        state: Option<(u64, Tails)>,
        on: bool,
    ) -> Result<Producer, ConnectorError> {
        let on = on && ctx.streams.tags_supported();
        let (next_seq, tails) = state.unwrap_or_default();
        let mut p = Producer {
            on,
            next_seq,
            resume_seq: next_seq,
            last_point: offset.map(Offset::resume_point),
            tails,
            next_tails: None,
            tails_at: Instant::now(),
            landed: HashMap::new(),
            landed_max: 0,
            skipped: 0,
            differed: 0,
        };
        if on {
            p.collect_landed(ctx).await?;
            if !p.landed.is_empty() {
                tracing::info!(
                    records = p.landed.len(),
                    "records of this task stored past its checkpoint; replayed copies are dropped"
                );
            }
        }
        Ok(p)
    }

    async fn collect_landed(&mut self, ctx: &RunContext) -> Result<(), ConnectorError> {
        let producer = ctx.task.as_str();
        for (stream, shards) in &self.tails {
            if !ctx.streams.stream_exists(stream).await? {
                continue;
            }
            let name: Arc<str> = stream.as_str().into();
            // The stream's shards now: a shard the tails do not know (the stream was deleted
            // and made again under the task) is read from its start.
            for shard in ctx.streams.shards(stream).await? {
                // Up to the end as of now: nothing of this task is appended meanwhile.
                let (start, end) = ctx.streams.bounds(stream, shard).await?;
                let mut at = shards.get(&shard).copied().unwrap_or(start);
                while at < end {
                    let Some(chunk) = ctx.streams.read_tagged(stream, shard, at, RECOVERY_READ).await? else {
                        self.on = false;
                        return Ok(());
                    };
                    if chunk.batches.is_empty() {
                        break;
                    }
                    for (tag, records) in chunk.batches {
                        let Some(tag) = tag.filter(|t| t.producer == producer) else {
                            continue;
                        };
                        for (seq, r) in tag.seqs(records.len()).into_iter().zip(&records) {
                            if seq >= self.next_seq {
                                self.landed.entry(seq).or_default().push((name.clone(), content(r)));
                                self.landed_max = self.landed_max.max(seq);
                            }
                        }
                    }
                    at = chunk.next_lsn;
                }
            }
        }
        Ok(())
    }

    /// Numbers the `n` records of one emit; `offset` is the offset emitted after them.
    pub(crate) fn number<O: Offset>(&mut self, n: usize, offset: Option<&O>) -> Vec<u64> {
        let seqs: Vec<u64> = (self.next_seq..self.next_seq + n as u64).collect();
        self.next_seq += n as u64;

        if let Some(o) = offset {
            let point = o.resume_point();
            if self.last_point.as_ref() != Some(&point) {
                self.resume_seq = self.next_seq;
                self.last_point = Some(point);
            }
        }
        seqs
    }

    /// After every record numbered so far was appended (or dropped): once the numbering passed
    /// every stored record, what is left of them was not emitted again and can match nothing.
    pub(crate) fn appended(&mut self) {
        if !self.landed.is_empty() && self.next_seq > self.landed_max {
            tracing::info!(left = self.landed.len(), "stored records the replay did not emit again");
            self.landed.clear();
        }
    }

    /// The number a restart at the last emitted offset starts from.
    pub(crate) fn resume_seq(&self) -> u64 {
        self.resume_seq
    }

    /// The tails for a checkpoint that resumes at number `resume`: later ones once every
    /// record that number covers came before them.
    pub(crate) fn tails_for(&mut self, resume: u64) -> &Tails {
        if let Some((_, from)) = &self.next_tails
            && *from <= resume
            && let Some((t, _)) = self.next_tails.take()
        {
            self.tails = t;
        }
        &self.tails
    }

    /// Drops the records of a batch for `stream` already stored under their numbers.
    pub(crate) fn drop_landed(&mut self, stream: &str, records: &mut Vec<Record>, seqs: &mut Vec<u64>) {
        if self.landed.is_empty() {
            return;
        }
        let mut keep_r = Vec::with_capacity(records.len());
        let mut keep_s = Vec::with_capacity(seqs.len());
        for (r, seq) in records.drain(..).zip(seqs.drain(..)) {
            let stored = match self.landed.get_mut(&seq) {
                Some(copies) => {
                    let c = content(&r);
                    let at = copies.iter().position(|(s, h)| &**s == stream && *h == c);
                    let found = at.map(|i| copies.swap_remove(i)).is_some();
                    if !found {
                        self.differed += 1;
                    }
                    if copies.is_empty() {
                        self.landed.remove(&seq);
                    }
                    found
                }
                None => false,
            };
            if stored {
                self.skipped += 1;
            } else {
                keep_r.push(r);
                keep_s.push(seq);
            }
        }
        *records = keep_r;
        *seqs = keep_s;
        if self.landed.is_empty() && (self.skipped > 0 || self.differed > 0) {
            tracing::info!(
                dropped = self.skipped,
                differed = self.differed,
                "replay past what was stored: dropped the records stored before, appended the ones that differed"
            );
        }
    }

    /// Adds a stream the task is about to append to for the first time to the tails (its
    /// shards' ends now); true when it was not there, and the caller must store the tails
    /// before that append.
    pub(crate) async fn track(&mut self, ctx: &RunContext, stream: &str) -> Result<bool, ConnectorError> {
        if self.tails.contains_key(stream) {
            return Ok(false);
        }
        // Nothing of this task is in the stream yet: its ends now hold for any checkpoint.
        let ends = ends(ctx, stream).await?;
        if let Some((t, _)) = self.next_tails.as_mut() {
            t.insert(stream.to_owned(), ends.clone());
        }
        self.tails.insert(stream.to_owned(), ends);
        Ok(true)
    }

    /// Before an append whose smallest record number is `first` (every record appended from
    /// now on has a number at least that): takes the tails again when due, to replace the
    /// checkpoints' tails once a checkpoint resumes at or past `first`. So a restart reads
    /// only a few seconds of the streams, however long the task ran.
    pub(crate) async fn before_append(&mut self, ctx: &RunContext, first: u64) -> Result<(), ConnectorError> {
        // Not while a replay is still matching what was stored: those records lie before any
        // tails taken now, and a crash before the replay passed them must find them again.
        if !self.on || self.next_tails.is_some() || !self.landed.is_empty() || self.tails_at.elapsed() < TAILS_EVERY {
            return Ok(());
        }
        let mut fresh = Tails::new();
        for stream in self.tails.keys() {
            if ctx.streams.stream_exists(stream).await? {
                fresh.insert(stream.clone(), ends(ctx, stream).await?);
            }
        }
        self.next_tails = Some((fresh, first));
        self.tails_at = Instant::now();
        Ok(())
    }

    /// The number of the next record emitted.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// Each shard's next LSN.
async fn ends(ctx: &RunContext, stream: &str) -> Result<BTreeMap<u64, u64>, ConnectorError> {
    let mut out = BTreeMap::new();
    for shard in ctx.streams.shards(stream).await? {
        out.insert(shard, ctx.streams.bounds(stream, shard).await?.1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::connector::{ConnectorConfig, Done, PayloadFlag, Source, SourceOutput};
    use crate::streams::{Checkpoints, Streams};
    use crate::testing::{MemoryCheckpoints, MemoryStreams};
    use crate::tolerance::DeadLetters;

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    struct ReplayConfig {
        stream: String,
        records: u64,
    }
    impl ConnectorConfig for ReplayConfig {}

    /// Where a replaying source resumes: after transaction `end` (record numbers below it).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct TxEnd {
        end: u64,
    }
    impl Offset for TxEnd {
        const VERSION: u32 = 1;
    }

    /// Emits records 0, 1, 2, … (key `k{i % 5}`, payload `i`) in transactions of 3 emits of 7
    /// records: the first two emits of a transaction carry the previous transaction's end (the
    /// rows of a transaction still open), the third its own. A restart replays from the end.
    struct Replay {
        next: u64,
        records: u64,
    }

    #[async_trait]
    impl Source for Replay {
        type Config = ReplayConfig;
        type Offset = TxEnd;
        const REPLAYS: bool = true;
        async fn check(_: &ReplayConfig) -> Result<(), ConnectorError> {
            Ok(())
        }
        async fn open(config: ReplayConfig, offset: Option<TxEnd>) -> Result<Self, ConnectorError> {
            Ok(Replay {
                next: offset.map_or(0, |o| o.end),
                records: config.records,
            })
        }
        fn stream(config: &ReplayConfig) -> &str {
            &config.stream
        }
        async fn run(&mut self, out: &mut SourceOutput<TxEnd>) -> Result<Done, ConnectorError> {
            let mut end = self.next;
            while self.next < self.records {
                for part in 0..3 {
                    let upto = (self.next + 7).min(self.records);
                    let records = (self.next..upto)
                        .map(|i| Record::new(format!("k{}", i % 5), PayloadFlag::Raw, i.to_string().into_bytes()))
                        .collect();
                    self.next = upto;
                    if part == 2 || self.next == self.records {
                        end = self.next;
                    }
                    out.emit(records, TxEnd { end }).await?;
                    if self.next == self.records {
                        break;
                    }
                }
                // Slow enough that checkpoints are cut along the way.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(Done::Completed)
        }
    }

    /// Keeps the first `keep` checkpoints stored and loses the rest (a crash before they were
    /// written): the next run starts from an early one, with much of its output stored.
    struct Lossy {
        inner: Arc<MemoryCheckpoints>,
        keep: Mutex<usize>,
    }

    impl Lossy {
        fn keeping(stored: &Arc<MemoryCheckpoints>, keep: usize) -> Arc<Lossy> {
            Arc::new(Lossy {
                inner: stored.clone(),
                keep: Mutex::new(keep),
            })
        }
    }

    #[async_trait]
    impl Checkpoints for Lossy {
        async fn load(&self, task: &str) -> Result<Option<(u32, Vec<u8>)>, ConnectorError> {
            self.inner.load(task).await
        }
        async fn store(&self, task: &str, version: u32, data: Vec<u8>) -> Result<(), ConnectorError> {
            let kept = {
                let mut keep = self.keep.lock().unwrap();
                let kept = *keep > 0;
                *keep = keep.saturating_sub(1);
                kept
            };
            if kept {
                self.inner.store(task, version, data).await?;
            }
            Ok(())
        }
    }

    /// The streams without tags: what an access that cannot keep them does.
    struct Untagged(Arc<MemoryStreams>);

    #[async_trait]
    impl Streams for Untagged {
        async fn ensure_stream(&self, name: &str) -> Result<(), ConnectorError> {
            self.0.ensure_stream(name).await
        }
        async fn stream_exists(&self, name: &str) -> Result<bool, ConnectorError> {
            self.0.stream_exists(name).await
        }
        async fn append(&self, stream: &str, records: Vec<Record>) -> Result<(), ConnectorError> {
            self.0.append(stream, records).await
        }
        async fn shards(&self, stream: &str) -> Result<Vec<u64>, ConnectorError> {
            self.0.shards(stream).await
        }
        async fn bounds(&self, stream: &str, shard: u64) -> Result<(u64, u64), ConnectorError> {
            self.0.bounds(stream, shard).await
        }
        async fn read(
            &self,
            stream: &str,
            shard: u64,
            from_lsn: u64,
            max_batches: usize,
            wait: Duration,
        ) -> Result<crate::streams::ReadChunk, ConnectorError> {
            self.0.read(stream, shard, from_lsn, max_batches, wait).await
        }
    }

    async fn run(streams: Arc<dyn Streams>, checkpoints: Arc<dyn Checkpoints>, records: u64) {
        let progress = Arc::new(crate::progress::Progress::default());
        let ctx = RunContext {
            task: "replay".into(),
            config: Value::Null,
            streams,
            checkpoints,
            cancel: CancellationToken::new(),
            progress: progress.clone(),
        };
        let config = ReplayConfig {
            stream: "out".into(),
            records,
        };
        let letters = DeadLetters::none("replay", progress);
        let done = crate::pipeline::run_source::<Replay>(ctx, config, None, letters, true).await;
        assert_eq!(done.unwrap(), Done::Completed);
    }

    /// Payloads of the stream, sorted, and how many times each is there.
    fn copies(streams: &MemoryStreams) -> BTreeMap<u64, usize> {
        let mut out = BTreeMap::new();
        for r in streams.records("out") {
            let n: u64 = std::str::from_utf8(&r.payload).unwrap().parse().unwrap();
            *out.entry(n).or_default() += 1;
        }
        out
    }

    /// A run whose later checkpoints were lost, then a run from the early one: every record
    /// once, also those of the transaction that was open at the stored checkpoint.
    #[tokio::test]
    async fn a_replay_from_an_old_checkpoint_appends_nothing_twice() {
        const N: u64 = 5_000;
        let streams = MemoryStreams::new();
        streams.create("out", 3);
        let stored = MemoryCheckpoints::new();
        let lossy = Lossy::keeping(&stored, 2);
        run(streams.clone(), lossy, N).await;
        assert_eq!(copies(&streams).len() as u64, N);
        let (version, data) = stored.load("replay").await.unwrap().expect("an early checkpoint");
        assert_eq!(version, WITH_PRODUCER | 1);
        let early: SourceCheckpoint<TxEnd> = serde_json::from_slice(&data).unwrap();
        let at = early
            .offset
            .as_ref()
            .map(|o| o.end)
            .expect("a checkpoint cut along the way");
        assert!(at > 0 && at < N, "{at}");
        assert!(early.next_seq >= at, "{} numbered before {at}", early.next_seq);
        assert!(
            early.tails["out"].values().any(|&l| l > 1),
            "tails taken along the way: {:?}",
            early.tails
        );
        // The replay loses its later checkpoints too (a second crash during the replay), and
        // a third run replays from what the second stored.
        let lossy = Lossy::keeping(&stored, 1);
        run(streams.clone(), lossy, N).await;
        run(streams.clone(), stored.clone(), N).await;
        let c = copies(&streams);
        let twice: Vec<_> = c.iter().filter(|(_, n)| **n > 1).map(|(k, _)| *k).take(5).collect();
        assert!(twice.is_empty(), "records stored twice: {twice:?}");
        assert_eq!(c.len() as u64, N, "every record");
        // More records later: numbered on from where the replay ended, appended once.
        run(streams.clone(), stored, N + 100).await;
        let c = copies(&streams);
        assert_eq!(c.len() as u64, N + 100);
        assert!(c.values().all(|&n| n == 1));
    }

    /// The same crash without tags: the replayed records are there twice (what the test above
    /// would see if the mechanism did nothing).
    #[tokio::test]
    async fn without_tags_a_replay_appends_again() {
        const N: u64 = 5_000;
        let streams = MemoryStreams::new();
        streams.create("out", 3);
        let stored = MemoryCheckpoints::new();
        let lossy = Lossy::keeping(&stored, 2);
        let untagged = Arc::new(Untagged(streams.clone()));
        run(untagged.clone(), lossy, N).await;
        let (version, data) = stored.load("replay").await.unwrap().expect("an early checkpoint");
        assert_eq!(version, 1, "without numbering, the offset alone");
        let at = serde_json::from_slice::<TxEnd>(&data).unwrap().end;
        assert!(at < N, "{at}");
        run(untagged, stored, N).await;
        let twice = copies(&streams).values().filter(|&&n| n > 1).count() as u64;
        assert_eq!(twice, N - at, "every record after the checkpoint, twice");
    }
}
