//! One attempt of a task: the source → append pipeline and the read → sink pipeline.
//!
//! Guarantees: a source offset is checkpointed (and reported as committed) only after every
//! record emitted before it was appended durably; a sink position only after the sink said its
//! records are durable (or flushed them). On a graceful stop both pipelines drain what was already
//! emitted or read, then checkpoint, so nothing is redone that was done.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::connector::{
    CHECKPOINT_EVERY, Done, Emitted, Offset, Record, Sink, SinkRecord, Source, SourceOutput, Written,
};
use crate::error::ConnectorError;
use crate::once::{self, Producer, SourceCheckpoint};
use crate::tolerance::{DeadLetters, Position, Stage};
use crate::transform::Transform;

/// Emitted batches buffered between a source and its appender.
const PIPELINE_DEPTH: usize = 16;
const SINK_READ_BATCHES: usize = 64;
/// Queued source batches are merged into one append up to this many records.
const COALESCE_RECORDS: usize = 16_384;
const SINK_IDLE_WAIT: Duration = Duration::from_millis(200);
/// How long a stop waits for a sink's write in progress.
const WRITE_GRACE: Duration = Duration::from_secs(10);
/// How long a stopping sink may take to make its writes durable.
const CLOSE_LIMIT: Duration = Duration::from_secs(60);

pub use crate::context::RunContext;

async fn load<O: Offset>(ctx: &RunContext) -> Result<Option<O>, ConnectorError> {
    let Some((version, data)) = ctx.checkpoints.load(&ctx.task).await? else {
        return Ok(None);
    };
    if version != O::VERSION {
        return Err(ConnectorError::internal(format!(
            "checkpoint of task {} has version {version}, this build reads version {}",
            ctx.task,
            O::VERSION
        )));
    }
    let offset: O = serde_json::from_slice(&data).map_err(|e| {
        ConnectorError::internal(format!("checkpoint of task {} is unreadable", ctx.task)).with_source(e)
    })?;
    *ctx.progress.offset.lock().expect("lock") = serde_json::to_value(&offset).ok();
    Ok(Some(offset))
}

async fn save<O: Offset>(ctx: &RunContext, offset: &O) -> Result<(), ConnectorError> {
    let data = serde_json::to_vec(offset).map_err(|e| ConnectorError::internal(e.to_string()))?;
    ctx.checkpoints.store(&ctx.task, O::VERSION, data).await?;
    ctx.progress.checkpointed(serde_json::to_value(offset).ok());
    Ok(())
}

/// Records on their way to one stream (`None`: the source's own), in emit order, with their
/// numbers (empty when appends are not numbered: see [`crate::once`]).
struct Group {
    stream: Option<Arc<str>>,
    records: Vec<Record>,
    seqs: Vec<u64>,
}

/// Where the appender stands: the offset whose records are all durable and not yet stored, and
/// the last stored one, each with the number a restart at it starts from.
struct Standing<O> {
    pending: Option<(O, u64)>,
    saved: (Option<O>, u64),
}

impl<O: Offset> Standing<O> {
    /// The checkpoint that covers what is durable now.
    fn checkpoint(&self, once: &mut Producer) -> SourceCheckpoint<O> {
        let (offset, next_seq) = match &self.pending {
            Some((o, seq)) => (Some(o.clone()), *seq),
            None => self.saved.clone(),
        };
        SourceCheckpoint {
            offset,
            next_seq,
            tails: once.tails_for(next_seq).clone(),
        }
    }
}

/// Appends each group to its stream (creating a named stream on first use), tagged with its
/// records' numbers when exactly-once is on, after dropping the records a replay brought
/// again. A stream appended to for the first time is added to the tails, which are stored
/// before that append. Returns (records, bytes) appended.
async fn append_groups<O: Offset>(
    ctx: &RunContext,
    default: &str,
    groups: Vec<Group>,
    ensured: &mut std::collections::HashSet<Arc<str>>,
    once: &mut Producer,
    standing: &Standing<O>,
) -> Result<(u64, u64), ConnectorError> {
    let (mut n, mut bytes) = (0u64, 0u64);
    for Group {
        stream,
        mut records,
        mut seqs,
    } in groups
    {
        if records.is_empty() {
            continue;
        }
        let name = match &stream {
            Some(s) => {
                if !ensured.contains(s) {
                    ctx.streams.ensure_stream(s).await?;
                    ensured.insert(s.clone());
                }
                s.as_ref()
            }
            None if default.is_empty() => {
                return Err(ConnectorError::internal(
                    "the source emitted records without a stream and has no stream of its own",
                ));
            }
            None => default,
        };
        if once.on && seqs.len() == records.len() {
            if once.track(ctx, name).await? {
                once::save(ctx, &standing.checkpoint(once), true).await?;
            }
            once.drop_landed(name, &mut records, &mut seqs);
            if records.is_empty() {
                continue;
            }
            n += records.len() as u64;
            bytes += records.iter().map(|r| r.payload.len() as u64).sum::<u64>();
            ctx.streams.append_tagged(name, records, &ctx.task, &seqs).await?;
        } else {
            n += records.len() as u64;
            bytes += records.iter().map(|r| r.payload.len() as u64).sum::<u64>();
            ctx.streams.append(name, records).await?;
        }
    }
    Ok((n, bytes))
}

/// Takes the records over the stream's max record size out of `groups`: each is the task's
/// error, or (tolerated) a dead letter pushed to `dead` under the record's number. `offset` is
/// the source position after them, which is what a dead letter can tell of where it was.
fn take_oversized(
    groups: &mut [Group],
    max: usize,
    letters: &DeadLetters,
    offset: Option<&Value>,
    dead: &mut Group,
) -> Result<(), ConnectorError> {
    for g in groups.iter_mut() {
        if g.records.iter().all(|r| r.encoded_size_bound() <= max) {
            continue;
        }
        let numbered = g.seqs.len() == g.records.len();
        let (mut kept, mut kept_seqs) = (Vec::with_capacity(g.records.len()), Vec::new());
        for (i, r) in g.records.drain(..).enumerate() {
            let seq = numbered.then(|| g.seqs[i]);
            let size = r.encoded_size_bound();
            if size <= max {
                kept.push(r);
                kept_seqs.extend(seq);
                continue;
            }
            let why = ConnectorError::data(format!(
                "a record of {size} bytes is over the stream's max record size of {max} \
                 (raise the server's max-record-size, or set errors.tolerance=all to dead-letter such records)"
            ));
            let position = Position::Source(serde_json::json!({ "before": offset }));
            if let Some(letter) =
                letters.fail((r.key, r.flag, r.payload, r.attributes), Stage::Write, position, &why)?
            {
                dead.records.push(letter);
                dead.seqs.extend(seq);
            }
        }
        g.records = kept;
        g.seqs = kept_seqs;
    }
    Ok(())
}

pub async fn run_source<S: Source>(
    ctx: RunContext,
    config: S::Config,
    chain: Option<Arc<dyn Transform>>,
    letters: DeadLetters,
    exactly_once: bool,
) -> Result<Done, ConnectorError> {
    let stream = S::stream(&config).to_owned();
    if !stream.is_empty() {
        ctx.streams.ensure_stream(&stream).await?;
    }
    let (start, state) = once::load::<S::Offset>(&ctx).await?;
    // Exactly-once needs records numbered as the source emitted them: a transform may reorder
    // them across streams, so a task with transforms appends at least once.
    let first_run = state.is_none();
    let mut producer = Producer::start(&ctx, start.as_ref(), state, exactly_once && chain.is_none()).await?;
    let mut standing = Standing {
        pending: None,
        saved: (start.clone(), producer.resume_seq()),
    };
    if producer.on && !stream.is_empty() && (producer.track(&ctx, &stream).await? || first_run) {
        once::save(&ctx, &standing.checkpoint(&mut producer), true).await?;
    }
    // Opening may take long (a connector install): a stop does not wait for it.
    let mut source = tokio::select! {
        s = S::open(config, start.clone()) => s?,
        _ = ctx.cancel.cancelled() => return Ok(Done::Cancelled),
    };
    let (tx, mut rx) = mpsc::channel::<Emitted<S::Offset>>(PIPELINE_DEPTH);
    let (committed_tx, committed_rx) = watch::channel(start.clone());
    let (durable_tx, durable_rx) = watch::channel(start);
    // The source stops on the task's cancellation or when the appender fails.
    let stop = ctx.cancel.child_token();
    let mut out = SourceOutput {
        tx,
        committed: committed_rx,
        durable: durable_rx,
        max_record_size: ctx.streams.max_record_size(),
        cancel: stop.clone(),
        progress: ctx.progress.clone(),
        letters: letters.clone(),
    };

    // The appender runs as its own task, so encoding and appending overlap with the source's
    // decoding on another core.
    let max_record_size = ctx.streams.max_record_size();
    let ctx = Arc::new(ctx);
    let actx = ctx.clone();
    let astop = stop.clone();
    let appender =
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(tracing::Instrument::in_current_span(async move {
            // However the appender ends (even by a panic), the source stops.
            let _stop_source = astop.drop_guard();
            let ctx = actx;
            let mut saved_at = Instant::now();
            let mut ensured = std::collections::HashSet::new();
            let save = async |ctx: &RunContext,
                              standing: &mut Standing<S::Offset>,
                              producer: &mut Producer|
                   -> Result<Option<S::Offset>, ConnectorError> {
                let Some((p, seq)) = standing.pending.take() else {
                    return Ok(None);
                };
                standing.saved = (Some(p.clone()), seq);
                once::save(ctx, &standing.checkpoint(producer), producer.on).await?;
                Ok(Some(p))
            };
            let result = async {
                loop {
                    // A quiet source still gets its last offset committed within CHECKPOINT_EVERY.
                    let next = if standing.pending.is_some() {
                        let due = tokio::time::sleep_until((saved_at + CHECKPOINT_EVERY).into());
                        tokio::select! {
                            m = rx.recv() => Some(m),
                            _ = due => None,
                        }
                    } else {
                        Some(rx.recv().await)
                    };
                    match next {
                        Some(None) => break,
                        Some(Some(first)) => {
                            // Batches that queued up while the last append was in flight go out
                            // together (one append, one fsync, per stream), in order, with the
                            // last offset. Dead letters go to their stream beside them,
                            // untransformed, and are as durable before the offset moves.
                            // Records are numbered as they were emitted.
                            let mut offset = None;
                            let mut queued = 0;
                            let mut groups: Vec<Group> = Vec::new();
                            let mut dead = Group {
                                stream: letters.policy.deadletter.as_deref().map(Arc::from),
                                records: Vec::new(),
                                seqs: Vec::new(),
                            };
                            let mut next = Some(first);
                            while let Some(more) = next.take() {
                                queued += more.records.len();
                                let seqs = if producer.on {
                                    producer.number(more.records.len(), more.offset.as_ref())
                                } else {
                                    Vec::new()
                                };
                                if more.offset.is_some() {
                                    offset = more.offset;
                                }
                                if more.dead {
                                    dead.records.extend(more.records);
                                    dead.seqs.extend(seqs);
                                } else {
                                    // Transforms see emits in order (they may route several
                                    // streams' records together); otherwise each stream's
                                    // records form one group.
                                    let slot = if chain.is_some() {
                                        groups.last_mut().filter(|g| g.stream == more.stream)
                                    } else {
                                        groups.iter_mut().find(|g| g.stream == more.stream)
                                    };
                                    match slot {
                                        Some(g) => {
                                            g.records.extend(more.records);
                                            g.seqs.extend(seqs);
                                        }
                                        None => groups.push(Group {
                                            stream: more.stream,
                                            records: more.records,
                                            seqs,
                                        }),
                                    }
                                }
                                if queued < COALESCE_RECORDS {
                                    next = rx.try_recv().ok();
                                }
                            }
                            if let Some(c) = chain.as_ref().filter(|_| !groups.is_empty()) {
                                let segments = groups.into_iter().map(|g| (g.stream, g.records)).collect();
                                groups = c
                                    .apply_source(segments, &stream)
                                    .await?
                                    .into_iter()
                                    .map(|(stream, records)| Group {
                                        stream,
                                        records,
                                        seqs: Vec::new(),
                                    })
                                    .collect();
                            }
                            // Every record appended from here on has at least this number.
                            let first = groups
                                .iter()
                                .chain([&dead])
                                .filter_map(|g| g.seqs.first().copied())
                                .min()
                                .unwrap_or(producer.next_seq());
                            producer.before_append(&ctx, first).await?;
                            let shown = offset.as_ref().and_then(|o| serde_json::to_value(o).ok());
                            take_oversized(&mut groups, max_record_size, &letters, shown.as_ref(), &mut dead)?;
                            let (n, bytes) =
                                append_groups(&ctx, &stream, groups, &mut ensured, &mut producer, &standing).await?;
                            if dead.stream.is_some() && !dead.records.is_empty() {
                                append_groups(&ctx, &stream, vec![dead], &mut ensured, &mut producer, &standing)
                                    .await?;
                            }
                            producer.appended();
                            if n > 0 {
                                ctx.progress.moved(n, bytes);
                            }
                            if let Some(offset) = offset {
                                let _ = durable_tx.send(Some(offset.clone()));
                                standing.pending = Some((offset, producer.resume_seq()));
                            }
                        }
                        None => {}
                    }
                    if standing.pending.is_some() && saved_at.elapsed() >= CHECKPOINT_EVERY {
                        if let Some(p) = save(&ctx, &mut standing, &mut producer).await? {
                            let _ = committed_tx.send(Some(p));
                        }
                        saved_at = Instant::now();
                    }
                }
                Ok::<(), ConnectorError>(())
            }
            .await;
            if result.is_err() {
                // Stop the source first: a failing save below must not leave it blocked in emit.
                stop.cancel();
            }
            // Whatever was appended durably is checkpointed, even when a later append failed.
            if let Some(p) = save(&ctx, &mut standing, &mut producer).await? {
                let _ = committed_tx.send(Some(p));
            }
            result
        })));
    let runner = async {
        let r = source.run(&mut out).await;
        drop(out); // closes the pipeline: the appender drains it and finishes
        r
    };
    let ran = runner.await;
    appender
        .await
        .unwrap_or_else(|e| Err(ConnectorError::internal("appender panicked").with_source(e)))?;
    match ran {
        // A cancellation the task did not ask for came from a failed append, reported above.
        Err(_) if ctx.cancel.is_cancelled() => Ok(Done::Cancelled),
        other => other,
    }
}

/// A sink's read position: the next LSN per shard of `stream`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkPosition {
    pub stream: String,
    pub shards: BTreeMap<u64, u64>,
}

impl Offset for SinkPosition {
    const VERSION: u32 = 1;
}

/// First wait between retries in place of a failed write.
const RETRY_DELAY_FIRST: Duration = Duration::from_millis(100);

/// One write, with a retryable failure retried in place for up to `errors.retry.timeout`
/// (waits doubling up to `errors.retry.delay.max.ms`).
async fn write_retrying<K: Sink>(
    sink: &mut K,
    records: &[SinkRecord],
    letters: &DeadLetters,
) -> Result<Written, ConnectorError> {
    let policy = &letters.policy;
    let started = Instant::now();
    let mut delay = RETRY_DELAY_FIRST.min(policy.retry_delay_max);
    loop {
        match sink.write(records).await {
            Err(e) if e.retryable() => {
                let left = match policy.retry_timeout {
                    None => delay,
                    Some(limit) => limit.saturating_sub(started.elapsed()),
                };
                if left.is_zero() {
                    return Err(e);
                }
                tracing::warn!(error = %e, "write failed; retrying in place (errors.retry.timeout)");
                tokio::time::sleep(delay.min(left)).await;
                delay = (delay * 2).min(policy.retry_delay_max);
            }
            other => return other,
        }
    }
}

/// Writes `records` in order under the task's error policy. A write refused for a record's
/// content ([`crate::ErrorKind::Data`]; such a write has no effect) is split in halves, in
/// order, until each refused record stands alone. Under `errors.tolerance=all` those become
/// dead letters, durable in the dead-letter stream before this returns, and the rest is
/// written; under `none` the first one fails the task, named, with what came before it
/// written. Anything else that fails the write fails it.
async fn write_tolerant<K: Sink>(
    ctx: &RunContext,
    sink: &mut K,
    stream: &str,
    records: &[SinkRecord],
    letters: &DeadLetters,
    dlq_ready: &mut bool,
) -> Result<Written, ConnectorError> {
    let mut written = Written::Durable;
    let mut dead = Vec::new();
    // Ranges still to write, the next one last.
    let mut todo: Vec<std::ops::Range<usize>> = Vec::with_capacity(16);
    todo.push(0..records.len());
    while let Some(range) = todo.pop() {
        match write_retrying(sink, &records[range.clone()], letters).await {
            Ok(w) => {
                if w == Written::Accepted {
                    written = Written::Accepted;
                }
            }
            Err(e) if DeadLetters::is_record_failure(&e) => {
                if range.len() == 1 {
                    dead.extend(letters.fail_read(stream, &records[range.start], Stage::Write, &e)?);
                } else {
                    let mid = range.start + range.len() / 2;
                    todo.push(mid..range.end);
                    todo.push(range.start..mid);
                }
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(d) = letters.policy.deadletter.as_deref().filter(|_| !dead.is_empty()) {
        if !*dlq_ready {
            ctx.streams.ensure_stream(d).await?;
            *dlq_ready = true;
        }
        ctx.streams.append(d, dead).await?;
    }
    Ok(written)
}

pub async fn run_sink<K: Sink>(
    ctx: RunContext,
    config: K::Config,
    chain: Option<Arc<dyn Transform>>,
    letters: DeadLetters,
) -> Result<Done, ConnectorError> {
    let stream = K::stream(&config).to_owned();
    if !ctx.streams.stream_exists(&stream).await? {
        return Err(ConnectorError::config(format!(
            "stream: stream {stream:?} does not exist"
        )));
    }
    // A position is kept only for the stream it was taken on, and only for that stream's
    // current shards, within what they hold now.
    let stored = load::<SinkPosition>(&ctx)
        .await?
        .filter(|p| p.stream == stream)
        .unwrap_or_default();
    let mut position = SinkPosition {
        stream: stream.clone(),
        shards: BTreeMap::new(),
    };
    for shard in ctx.streams.shards(&stream).await? {
        let (start, end) = ctx.streams.bounds(&stream, shard).await?;
        let at = stored.shards.get(&shard).copied().unwrap_or(start).clamp(start, end);
        position.shards.insert(shard, at);
    }
    let flush_every = K::flush_every(&config);
    let mut sink = tokio::select! {
        s = K::open_in(config, crate::connector::SinkContext { task: ctx.task.clone(), streams: ctx.streams.clone() }) => s?,
        _ = ctx.cancel.cancelled() => return Ok(Done::Cancelled),
    };
    let shards: Vec<u64> = position.shards.keys().copied().collect();
    // Positions of what was written; `durable` is what may be checkpointed.
    let mut written = position.clone();
    let mut saved = position.clone();
    let mut durable = position;
    let mut unflushed = false;
    let mut saved_at = Instant::now();
    let mut dlq_ready = false;
    // Shards take turns, a chunk each; one that came back empty sits out until the watch
    // (started before the first read, so it misses nothing) names it again.
    let mut watch = ctx.streams.watch(&stream, &shards).await?;
    let mut turns: std::collections::VecDeque<u64> = shards.iter().copied().collect();
    let mut queued: std::collections::BTreeSet<u64> = shards.iter().copied().collect();
    // Turns since the watch was last asked: while shards keep having data it is asked (without
    // waiting) once per pass, so a busy shard cannot keep the others waiting.
    let mut since_asked = 0usize;
    loop {
        if ctx.cancel.is_cancelled() {
            break;
        }
        if let Some(shard) = turns.pop_front() {
            queued.remove(&shard);
            let from = written.shards[&shard];
            let chunk = tokio::select! {
                c = ctx.streams.read(&stream, shard, from, SINK_READ_BATCHES, Duration::ZERO) => c?,
                _ = ctx.cancel.cancelled() => break,
            };
            if !chunk.records.is_empty() {
                // It may have more: another turn after the others.
                if queued.insert(shard) {
                    turns.push_back(shard);
                }
                since_asked += 1;
                if since_asked >= turns.len() {
                    since_asked = 0;
                    let woke = tokio::select! {
                        w = watch.ready(Duration::ZERO) => w?,
                        _ = ctx.cancel.cancelled() => break,
                    };
                    for s in woke {
                        if written.shards.contains_key(&s) && queued.insert(s) {
                            turns.push_back(s);
                        }
                    }
                }
                // Transforms may drop records: a chunk left empty is passed over as written.
                let records = match &chain {
                    Some(c) => tokio::select! {
                        r = c.apply_sink(chunk.records) => r?,
                        _ = ctx.cancel.cancelled() => break,
                    },
                    None => chunk.records,
                };
                let n = records.len() as u64;
                let bytes = records.iter().map(|r| r.payload.len() as u64).sum();
                // A sink blocked downstream holds up a stop for WRITE_GRACE at most. A write cut
                // short is not asked to finish: the position stays at the last checkpoint and what
                // followed it is written again by the next attempt.
                let written_now = if records.is_empty() {
                    Written::Durable
                } else {
                    let write = write_tolerant(&ctx, &mut sink, &stream, &records, &letters, &mut dlq_ready);
                    tokio::pin!(write);
                    tokio::select! {
                        w = &mut write => w?,
                        _ = ctx.cancel.cancelled() => match tokio::time::timeout(WRITE_GRACE, &mut write).await {
                            Ok(w) => w?,
                            Err(_) => return Ok(Done::Cancelled),
                        },
                    }
                };
                match written_now {
                    Written::Durable if !unflushed => {
                        written.shards.insert(shard, chunk.next_lsn);
                        durable.shards.insert(shard, chunk.next_lsn);
                    }
                    _ => {
                        written.shards.insert(shard, chunk.next_lsn);
                        unflushed = true;
                    }
                }
                ctx.progress.moved(n, bytes);
            } else {
                written.shards.insert(shard, chunk.next_lsn.max(from));
                if !unflushed {
                    durable.shards.insert(shard, chunk.next_lsn.max(from));
                }
            }
        } else {
            let woke = tokio::select! {
                w = watch.ready(SINK_IDLE_WAIT) => w?,
                _ = ctx.cancel.cancelled() => break,
            };
            for shard in woke {
                if written.shards.contains_key(&shard) && queued.insert(shard) {
                    turns.push_back(shard);
                }
            }
            since_asked = 0;
        }
        if saved_at.elapsed() >= flush_every {
            if unflushed {
                // A stop does not wait for a slow flush: close() below finishes the job.
                tokio::select! {
                    r = sink.flush() => r?,
                    _ = ctx.cancel.cancelled() => break,
                }
                unflushed = false;
                durable = written.clone();
            }
            if durable != saved {
                save(&ctx, &durable).await?;
                saved = durable.clone();
            }
            saved_at = Instant::now();
        }
    }
    // Graceful stop: make what was written durable, then record it. A sink that cannot within
    // CLOSE_LIMIT leaves the position where it was (what follows is written again).
    match tokio::time::timeout(CLOSE_LIMIT, sink.close()).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ConnectorError::external(format!(
                "the sink did not finish its writes within {CLOSE_LIMIT:?} of the stop"
            )));
        }
    }
    save(&ctx, &written).await?;
    Ok(Done::Cancelled)
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::connector::{ConnectorConfig, PayloadFlag, Record, SinkRecord};
    use crate::progress::Progress;
    use crate::testing::{MemoryCheckpoints, MemoryStreams};

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    struct CountConfig {
        stream: String,
    }
    impl ConnectorConfig for CountConfig {}

    /// Tells its test the shard of every record it is given; each write is durable.
    struct Count(mpsc::UnboundedSender<Vec<u64>>);

    /// Each test's channel, by the stream its sink reads.
    static COUNTED: std::sync::Mutex<BTreeMap<String, mpsc::UnboundedSender<Vec<u64>>>> =
        std::sync::Mutex::new(BTreeMap::new());

    fn counted(stream: &str) -> mpsc::UnboundedReceiver<Vec<u64>> {
        let (tx, rx) = mpsc::unbounded_channel();
        COUNTED.lock().unwrap().insert(stream.to_owned(), tx);
        rx
    }

    fn start(
        streams: &Arc<MemoryStreams>,
        stream: &str,
    ) -> (CancellationToken, tokio::task::JoinHandle<Result<Done, ConnectorError>>) {
        let ctx = RunContext {
            task: "count".into(),
            config: Value::Null,
            streams: streams.clone(),
            checkpoints: MemoryCheckpoints::new(),
            cancel: CancellationToken::new(),
            progress: Arc::default(),
        };
        let cancel = ctx.cancel.clone();
        let config = CountConfig { stream: stream.into() };
        let letters = DeadLetters::none("count", ctx.progress.clone());
        (cancel, tokio::spawn(run_sink::<Count>(ctx, config, None, letters)))
    }

    #[async_trait::async_trait]
    impl Sink for Count {
        type Config = CountConfig;
        async fn check(_: &CountConfig) -> Result<(), ConnectorError> {
            Ok(())
        }
        async fn open(config: CountConfig) -> Result<Self, ConnectorError> {
            Ok(Count(COUNTED.lock().unwrap()[&config.stream].clone()))
        }
        fn stream(config: &CountConfig) -> &str {
            &config.stream
        }
        async fn write(&mut self, records: &[SinkRecord]) -> Result<Written, ConnectorError> {
            let _ = self.0.send(records.iter().map(|r| r.shard_id).collect());
            Ok(Written::Durable)
        }
        async fn flush(&mut self) -> Result<(), ConnectorError> {
            Ok(())
        }
    }

    /// A sink over many idle shards reads, once it has caught up, only the shards the watch
    /// names: appends to one shard cost the idle ones no read.
    #[tokio::test]
    async fn a_sink_reads_only_shards_that_got_data() {
        let mut rx = counted("wide");
        let streams = MemoryStreams::new();
        streams.create("wide", 300);
        let (cancel, run) = start(&streams, "wide");
        // The first pass reads every shard once.
        while streams.reads("wide").values().any(|&r| r == 0) {
            tokio::task::yield_now().await;
        }
        for i in 0..50 {
            let r = Record::new(format!("k{i}"), PayloadFlag::Raw, vec![1u8]);
            streams.append_to("wide", 150, vec![r]);
            let n = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("the append reaches the sink")
                .unwrap();
            assert_eq!(n, vec![150]);
        }
        let reads = streams.reads("wide");
        let idle: Vec<_> = reads.iter().filter(|(id, r)| **id != 150 && **r != 1).collect();
        assert!(idle.is_empty(), "idle shards read again: {idle:?}");
        assert!(reads[&150] <= 1 + 2 * 50, "{}", reads[&150]);
        cancel.cancel();
        assert_eq!(run.await.unwrap().unwrap(), Done::Cancelled);
    }

    /// A shard with a standing backlog does not keep a shard that got data later waiting: the
    /// sink asks which shards got data once per pass, not only when every shard ran dry.
    #[tokio::test]
    async fn a_busy_shard_does_not_starve_the_others() {
        let mut rx = counted("two");
        let streams = MemoryStreams::new();
        streams.create("two", 2);
        // A backlog of many reads' worth on shard 1.
        for i in 0..(SINK_READ_BATCHES * 50) {
            let r = Record::new(format!("k{i}"), PayloadFlag::Raw, vec![1u8]);
            streams.append_to("two", 1, vec![r]);
        }
        let (cancel, run) = start(&streams, "two");
        let next = async |rx: &mut mpsc::UnboundedReceiver<Vec<u64>>| {
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a write")
                .unwrap()
        };
        // Two writes of shard 1: shard 2 had its first turn (and was empty) between them.
        assert_eq!(next(&mut rx).await[0], 1);
        assert_eq!(next(&mut rx).await[0], 1);
        streams.append_to("two", 2, vec![Record::new("late", PayloadFlag::Raw, vec![2u8])]);
        let mut writes = 0;
        loop {
            writes += 1;
            if next(&mut rx).await.contains(&2) {
                break;
            }
            assert!(writes < 5, "shard 2 waited behind {writes} writes of shard 1");
        }
        cancel.cancel();
        assert_eq!(run.await.unwrap().unwrap(), Done::Cancelled);
    }

    /// Refuses (with a data error, writing nothing) any batch holding a record whose payload is
    /// `bad`; otherwise writes it. Tells its test each payload written, and each write tried.
    struct Picky(Tried);

    /// (payload, written) of each record written, or (empty, false) for a refused write.
    type Tried = mpsc::UnboundedSender<(Vec<u8>, bool)>;

    static PICKY: std::sync::Mutex<Option<Tried>> = std::sync::Mutex::new(None);

    #[async_trait::async_trait]
    impl Sink for Picky {
        type Config = CountConfig;
        async fn check(_: &CountConfig) -> Result<(), ConnectorError> {
            Ok(())
        }
        async fn open(_: CountConfig) -> Result<Self, ConnectorError> {
            Ok(Picky(PICKY.lock().unwrap().clone().unwrap()))
        }
        fn stream(config: &CountConfig) -> &str {
            &config.stream
        }
        async fn write(&mut self, records: &[SinkRecord]) -> Result<Written, ConnectorError> {
            if records.iter().any(|r| &r.payload[..] == b"bad") {
                let _ = self.0.send((Vec::new(), false));
                return Err(ConnectorError::data("refused"));
            }
            for r in records {
                let _ = self.0.send((r.payload.to_vec(), true));
            }
            Ok(Written::Durable)
        }
        async fn flush(&mut self) -> Result<(), ConnectorError> {
            Ok(())
        }
    }

    /// Under errors.tolerance=all a refused batch is split until each refused record stands
    /// alone: every other record is written once, in order, and each refused one is a dead
    /// letter, durable before the position passes it.
    #[tokio::test]
    async fn a_refused_batch_is_split_until_the_refused_records_stand_alone() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        *PICKY.lock().unwrap() = Some(tx);
        let streams = MemoryStreams::new();
        streams.create("in", 1);
        let bad: Vec<usize> = vec![0, 1, 500, 777, 778, 999];
        let records: Vec<Record> = (0..1000)
            .map(|i| {
                let p = if bad.contains(&i) {
                    b"bad".to_vec()
                } else {
                    i.to_string().into_bytes()
                };
                Record::new(format!("k{i}"), PayloadFlag::Raw, p)
            })
            .collect();
        streams.append_to("in", 1, records);
        let progress = Arc::new(Progress::default());
        let policy = serde_json::json!({"errors.tolerance": "all", "errors.deadletter.stream": "dlq"});
        let letters = DeadLetters::new(
            crate::tolerance::ErrorPolicy::parse(&policy).unwrap(),
            "picky",
            Vec::new(),
            progress.clone(),
            usize::MAX,
        );
        let ctx = RunContext {
            task: "picky".into(),
            config: Value::Null,
            streams: streams.clone(),
            checkpoints: MemoryCheckpoints::new(),
            cancel: CancellationToken::new(),
            progress: progress.clone(),
        };
        let cancel = ctx.cancel.clone();
        let run = tokio::spawn(run_sink::<Picky>(
            ctx,
            CountConfig { stream: "in".into() },
            None,
            letters,
        ));
        let (mut written, mut refused) = (Vec::new(), 0);
        while written.len() < 1000 - bad.len() {
            let (p, ok) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            if ok {
                written.push(String::from_utf8(p).unwrap());
            } else {
                refused += 1;
            }
        }
        let want: Vec<String> = (0..1000).filter(|i| !bad.contains(i)).map(|i| i.to_string()).collect();
        assert_eq!(written, want, "every other record once, in order");
        // A few writes per refused record, not one per record.
        assert!(refused < 6 * 12, "{refused} refused writes");
        let dead = streams.records("dlq");
        let keys: Vec<&str> = dead.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["k0", "k1", "k500", "k777", "k778", "k999"]);
        assert!(dead.iter().all(|r| &r.payload[..] == b"bad"));
        assert_eq!(dead[2].attributes["__connect.errors.batch.index"], "500");
        assert_eq!(progress.dead_letters.load(std::sync::atomic::Ordering::Relaxed), 6);
        cancel.cancel();
        assert_eq!(run.await.unwrap().unwrap(), Done::Cancelled);
    }
}
