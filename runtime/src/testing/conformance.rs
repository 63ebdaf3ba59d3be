//! The conformance suite every source and sink runs: the runtime's contract for connectors,
//! checked through the registry (as the supervisor runs them) on [`MemoryStreams`].
//!
//! A source must: deliver every change made before and while it runs; end promptly with
//! `Done::Cancelled` when stopped; after a stop, resume with the changes made meanwhile and
//! deliver nothing again; when the store refuses an append mid-load, fail the attempt and lose
//! nothing on restart; when killed without a stop (a crash), lose nothing on restart (repeats
//! allowed: at-least-once).
//!
//! A sink must: write every record of its stream (all shards); end promptly when stopped; after
//! a stop, write exactly what came meanwhile (no repeats); after a crash, lose nothing.
//!
//! Each check panics with what went wrong, so a test is one call.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{MemoryCheckpoints, MemoryStreams};
use crate::connector::{Done, Record};
use crate::error::ConnectorError;
use crate::pipeline::RunContext;
use crate::progress::Progress;
use crate::registry::ConnectorType;

/// The longest any one step may take.
const STEP: Duration = Duration::from_secs(60);
/// The longest a stop may take: "promptly".
const STOP: Duration = Duration::from_secs(10);

/// The upstream system of a source under test.
#[async_trait]
pub trait Upstream: Send {
    /// Makes `n` new changes upstream (rows written, messages published) and returns their
    /// identities. A source that makes its own changes (the generator) names the next `n`.
    async fn produce(&mut self, n: usize) -> Vec<String>;

    /// The change a stream record carries; `None` for records that carry none (schema events,
    /// markers).
    fn identity(&self, record: &Record) -> Option<String>;
}

/// The downstream system of a sink under test.
#[async_trait]
pub trait Downstream: Send {
    /// A record for the sink's stream carrying change `i`, and that change's identity.
    fn record(&self, i: u64) -> (Record, String);

    /// Identities of what the sink made durable downstream so far, repeats included; `None`
    /// when there is nothing downstream to look at (the suite then counts what the runtime
    /// saw written).
    async fn written(&mut self) -> Option<Vec<String>>;
}

/// What a run of the source suite saw.
#[derive(Debug, Default)]
pub struct SourceReport {
    pub delivered: usize,
    /// Changes delivered again after the crash (at-least-once, allowed).
    pub repeats_after_crash: usize,
    /// Changes delivered again after the refused append.
    pub repeats_after_refusal: usize,
}

/// What a run of the sink suite saw.
#[derive(Debug, Default)]
pub struct SinkReport {
    pub written: usize,
    pub repeats_after_crash: usize,
}

struct Attempt {
    cancel: CancellationToken,
    progress: Arc<Progress>,
    handle: JoinHandle<Result<Done, ConnectorError>>,
}

/// What every attempt of one check runs: the connector, its config, and the streams and
/// checkpoints it keeps across attempts.
struct Rig {
    connector: Arc<dyn ConnectorType>,
    config: Value,
    streams: Arc<MemoryStreams>,
    checkpoints: Arc<MemoryCheckpoints>,
}

impl Rig {
    /// Runs the connector as the supervisor would: a retryable failure (an upstream still
    /// busy with the previous connection, say) starts it again after a short pause.
    fn start(&self) -> Attempt {
        Attempt::spawn(&self.connector, &self.config, &self.streams, &self.checkpoints, true)
    }

    /// One run, its failure returned as it is.
    fn once(&self) -> Attempt {
        Attempt::spawn(&self.connector, &self.config, &self.streams, &self.checkpoints, false)
    }
}

impl Attempt {
    fn spawn(
        connector: &Arc<dyn ConnectorType>,
        config: &Value,
        streams: &Arc<MemoryStreams>,
        checkpoints: &Arc<MemoryCheckpoints>,
        retry: bool,
    ) -> Attempt {
        let (cancel, progress) = (CancellationToken::new(), Arc::<Progress>::default());
        let (connector, config) = (connector.clone(), config.clone());
        let (streams, checkpoints) = (streams.clone(), checkpoints.clone());
        let (c, p) = (cancel.clone(), progress.clone());
        let handle = tokio::spawn(async move {
            loop {
                let ctx = RunContext {
                    task: "conformance".into(),
                    config: config.clone(),
                    streams: streams.clone(),
                    checkpoints: checkpoints.clone(),
                    cancel: c.clone(),
                    progress: p.clone(),
                };
                match connector.run(ctx).await {
                    Err(e) if retry && e.retryable() && !c.is_cancelled() => {
                        tracing::info!(error = %e, "conformance: restarting after a retryable failure");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    other => return other,
                }
            }
        });
        Attempt {
            cancel,
            progress,
            handle,
        }
    }

    /// Stops it and expects `Done::Cancelled` within [`STOP`].
    async fn stop(self, what: &str) {
        self.cancel.cancel();
        let done = tokio::time::timeout(STOP, self.handle)
            .await
            .unwrap_or_else(|_| panic!("{what}: the attempt did not end within {STOP:?} of the stop"))
            .expect("the attempt panicked");
        assert_eq!(
            done.unwrap_or_else(|e| panic!("{what}: the stopped attempt failed: {e}")),
            Done::Cancelled,
            "{what}"
        );
    }

    /// Ends it the way a crash would: no stop, no final checkpoint.
    async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

/// Identity → times seen, over every record of every stream.
fn census(streams: &MemoryStreams, up: &dyn Upstream) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in streams.all_records() {
        if let Some(id) = up.identity(&r) {
            *seen.entry(id).or_insert(0) += 1;
        }
    }
    seen
}

/// Waits until `done` holds, re-checking after every append and at least every 20 ms (for
/// conditions outside the streams).
async fn wait_until(streams: &MemoryStreams, what: &str, mut done: impl FnMut() -> bool) {
    let mut appended = streams.appended.subscribe();
    tokio::time::timeout(STEP, async {
        while !done() {
            let _ = tokio::time::timeout(Duration::from_millis(20), appended.changed()).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {STEP:?}"));
}

/// Waits until every expected change is in the streams; fails at once if the attempt ends.
async fn arrive(streams: &MemoryStreams, up: &dyn Upstream, a: &mut Attempt, expected: &[String], what: &str) {
    let mut ended = None;
    let arrived = tokio::time::timeout(STEP, async {
        let mut appended = streams.appended.subscribe();
        loop {
            let seen = census(streams, up);
            if expected.iter().all(|id| seen.contains_key(id)) {
                return;
            }
            tokio::select! {
                _ = appended.changed() => {}
                r = &mut a.handle => {
                    ended = Some(r);
                    return;
                }
            }
        }
    })
    .await;
    if let Some(r) = ended {
        panic!(
            "{what}: the attempt ended first, with {:?}",
            r.map(|r| r.map_err(|e| e.to_string()))
        );
    }
    if arrived.is_err() {
        let seen = census(streams, up);
        let missing: Vec<_> = expected.iter().filter(|id| !seen.contains_key(*id)).take(10).collect();
        panic!(
            "{what}: not within {STEP:?}; missing (first 10) {missing:?}, {} records stored",
            streams.stored()
        );
    }
}

/// Changes seen more than once, in all.
fn repeats(seen: &HashMap<String, usize>) -> usize {
    seen.values().map(|n| n - 1).sum()
}

/// Runs the source suite (see the module doc) on `config`, a valid config of `connector`.
pub async fn check_source(connector: Arc<dyn ConnectorType>, config: Value, up: &mut dyn Upstream) -> SourceReport {
    if let Err(e) = connector.validate(&config) {
        panic!("the case's config is invalid: {e:?}");
    }
    let streams = MemoryStreams::new();
    let checkpoints = MemoryCheckpoints::new();
    let rig = Rig {
        connector,
        config,
        streams: streams.clone(),
        checkpoints: checkpoints.clone(),
    };
    let mut expected = up.produce(20).await;

    // Before and while it runs.
    let mut a = rig.start();
    expected.extend(up.produce(20).await);
    arrive(
        &streams,
        up,
        &mut a,
        &expected,
        "changes made before and during the first attempt arrive",
    )
    .await;
    a.stop("the first stop").await;

    // Made while stopped: they arrive after the restart, and nothing arrives twice.
    expected.extend(up.produce(20).await);
    let mut a = rig.start();
    arrive(
        &streams,
        up,
        &mut a,
        &expected,
        "changes made while stopped arrive after a restart",
    )
    .await;
    a.stop("the second stop").await;
    let seen = census(&streams, up);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
    assert!(twice.is_empty(), "delivered again after a graceful restart: {twice:?}");

    // The store refuses appends mid-load: the attempt fails, and the restart loses nothing.
    streams.refuse_appends_after(Some(streams.stored() + 5));
    expected.extend(up.produce(40).await);
    let refused = streams.refused();
    loop {
        let a = rig.once();
        let failed = tokio::time::timeout(STEP, a.handle)
            .await
            .expect("an attempt whose appends are refused ends")
            .expect("the attempt panicked");
        match failed {
            _ if streams.refused() > refused => {
                assert!(
                    failed.is_err(),
                    "an attempt whose appends were refused ended with {failed:?}"
                );
                break;
            }
            // Failed before it appended (an upstream still busy with the last connection):
            // as the supervisor would, try again.
            Err(e) if e.retryable() => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("an attempt whose appends would be refused ended with {other:?} before appending"),
        }
    }
    streams.refuse_appends_after(None);
    let mut a = rig.start();
    arrive(
        &streams,
        up,
        &mut a,
        &expected,
        "changes whose append was refused arrive after a restart",
    )
    .await;
    a.stop("the stop after the refusal").await;
    let repeats_after_refusal = repeats(&census(&streams, up));

    // A crash mid-load: nothing is lost.
    let a = rig.start();
    let stored = streams.stored();
    expected.extend(up.produce(200).await);
    wait_until(&streams, "the load starts arriving", || streams.stored() > stored).await;
    a.kill().await;
    let mut a = rig.start();
    arrive(
        &streams,
        up,
        &mut a,
        &expected,
        "changes around a crash arrive after a restart",
    )
    .await;
    a.stop("the stop after the crash").await;
    let seen = census(&streams, up);
    SourceReport {
        delivered: seen.len(),
        repeats_after_crash: repeats(&seen) - repeats_after_refusal,
        repeats_after_refusal,
    }
}

/// Appends `n` records of the next changes to `stream` (spread over its shards by key).
async fn feed(streams: &MemoryStreams, stream: &str, down: &dyn Downstream, expected: &mut Vec<String>, n: u64) {
    use crate::streams::Streams;
    let start = expected.len() as u64;
    let mut records = Vec::new();
    for i in start..start + n {
        let (r, id) = down.record(i);
        records.push(r);
        expected.push(id);
    }
    streams
        .append(stream, records)
        .await
        .expect("append to a memory stream");
}

/// Records the runtime saw written, over `attempts`.
fn counted(attempts: &[Arc<Progress>]) -> usize {
    attempts
        .iter()
        .map(|p| p.records.load(Ordering::Relaxed) as usize)
        .sum()
}

/// Waits until every expected change is downstream (or, with nothing to look at downstream,
/// until the runtime saw as many written); returns the downstream census if there is one.
async fn written(
    down: &mut dyn Downstream,
    attempts: &[Arc<Progress>],
    expected: &[String],
    what: &str,
) -> Option<HashMap<String, usize>> {
    tokio::time::timeout(STEP, async {
        loop {
            match down.written().await {
                Some(ids) => {
                    let mut seen = HashMap::new();
                    for id in ids {
                        *seen.entry(id).or_insert(0) += 1;
                    }
                    if expected.iter().all(|id| seen.contains_key(id)) {
                        return Some(seen);
                    }
                }
                None if counted(attempts) >= expected.len() => return None,
                None => {}
            }
            // Downstream is outside the streams: look again shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {STEP:?}"))
}

/// Records in `stream` at or past the sink's checkpointed position.
async fn records_past_checkpoint(streams: &MemoryStreams, checkpoints: &MemoryCheckpoints, stream: &str) -> usize {
    use crate::streams::{Checkpoints, Streams};
    let position: crate::pipeline::SinkPosition = match checkpoints.load("conformance").await.expect("load") {
        Some((_, data)) => serde_json::from_slice(&data).expect("a sink position"),
        None => Default::default(),
    };
    let mut owed = 0;
    for shard in streams.shards(stream).await.expect("shards") {
        let from = position.shards.get(&shard).copied().unwrap_or(1);
        owed += streams
            .read(stream, shard, from, usize::MAX, Duration::ZERO)
            .await
            .expect("read")
            .records
            .len();
    }
    owed
}

/// After a graceful stop the sink's checkpointed position is every shard's end.
async fn position_at_end(streams: &MemoryStreams, checkpoints: &MemoryCheckpoints, stream: &str, what: &str) {
    use crate::streams::{Checkpoints, Streams};
    let (_, data) = checkpoints
        .load("conformance")
        .await
        .expect("load")
        .unwrap_or_else(|| panic!("{what}: no checkpoint"));
    let position: crate::pipeline::SinkPosition = serde_json::from_slice(&data).expect("a sink position");
    for shard in streams.shards(stream).await.expect("shards") {
        let (_, end) = streams.bounds(stream, shard).await.expect("bounds");
        assert_eq!(
            position.shards.get(&shard),
            Some(&end),
            "{what}: the checkpointed position of shard {shard} is not its end"
        );
    }
}

/// Runs the sink suite (see the module doc) on `config`, a valid config of `connector` whose
/// stream is `stream`; the suite creates the stream with 4 shards.
pub async fn check_sink(
    connector: Arc<dyn ConnectorType>,
    config: Value,
    stream: &str,
    down: &mut dyn Downstream,
) -> SinkReport {
    if let Err(e) = connector.validate(&config) {
        panic!("the case's config is invalid: {e:?}");
    }
    let streams = MemoryStreams::new();
    streams.create(stream, 4);
    let checkpoints = MemoryCheckpoints::new();
    let rig = Rig {
        connector,
        config,
        streams: streams.clone(),
        checkpoints: checkpoints.clone(),
    };
    let mut expected = Vec::new();
    let mut attempts = Vec::new();

    // Before and while it runs.
    feed(&streams, stream, down, &mut expected, 40).await;
    let a = rig.start();
    attempts.push(a.progress.clone());
    feed(&streams, stream, down, &mut expected, 40).await;
    written(
        down,
        &attempts,
        &expected,
        "records before and during the first attempt are written",
    )
    .await;
    a.stop("the first stop").await;

    // Appended while stopped: written after the restart, and nothing twice.
    feed(&streams, stream, down, &mut expected, 40).await;
    let a = rig.start();
    attempts.push(a.progress.clone());
    written(
        down,
        &attempts,
        &expected,
        "records appended while stopped are written after a restart",
    )
    .await;
    a.stop("the second stop").await;
    position_at_end(&streams, &checkpoints, stream, "the second stop").await;
    // Counted after the stop, so repeats written late are seen too.
    match down.written().await {
        Some(ids) => {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for id in ids {
                *seen.entry(id).or_insert(0) += 1;
            }
            let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
            assert!(twice.is_empty(), "written again after a graceful restart: {twice:?}");
        }
        None => assert_eq!(
            counted(&attempts),
            expected.len(),
            "written again after a graceful restart"
        ),
    }

    // A crash mid-load: nothing is lost.
    let a = rig.start();
    attempts.push(a.progress.clone());
    let progress = a.progress.clone();
    feed(&streams, stream, down, &mut expected, 400).await;
    wait_until(&streams, "the load starts being written", || {
        progress.records.load(Ordering::Relaxed) > 0
    })
    .await;
    a.kill().await;
    // What lies past the checkpoint the crash left is the restart's to write.
    let owed = records_past_checkpoint(&streams, &checkpoints, stream).await;
    let a = rig.start();
    attempts.push(a.progress.clone());
    let progress = a.progress.clone();
    wait_until(&streams, "the restart writes what lies past the checkpoint", || {
        progress.records.load(Ordering::Relaxed) as usize >= owed
    })
    .await;
    let seen = written(
        down,
        &attempts,
        &expected,
        "records around a crash are written after a restart",
    )
    .await;
    a.stop("the stop after the crash").await;
    // The restart read to the end and checkpointed it, so whatever the killed attempt left
    // unwritten was written by the restart.
    position_at_end(&streams, &checkpoints, stream, "the stop after the crash").await;
    let total = seen.as_ref().map_or(counted(&attempts), |s| s.values().sum());
    SinkReport {
        written: total,
        repeats_after_crash: total - expected.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::PayloadFlag;
    use crate::registry::Kind;
    use serde_json::json;

    /// The generator makes its own changes: change `i` is the record with sequence number `i`.
    struct Sequence(u64);

    #[async_trait]
    impl Upstream for Sequence {
        async fn produce(&mut self, n: usize) -> Vec<String> {
            let ids = (self.0..self.0 + n as u64).map(|i| i.to_string()).collect();
            self.0 += n as u64;
            ids
        }
        fn identity(&self, record: &Record) -> Option<String> {
            // "k0:<seq>:xxx…"
            let text = std::str::from_utf8(&record.payload).ok()?;
            text.split(':').nth(1).map(str::to_owned)
        }
    }

    #[tokio::test]
    async fn generator_conforms() {
        let t = crate::builtin().get(Kind::Source, "generator").unwrap();
        let config = json!({"stream": "gen", "rate": 5000, "shape": "bytes", "payloadBytes": 16, "batchSize": 10});
        let report = check_source(t, config, &mut Sequence(0)).await;
        // A graceful stop checkpoints what is durable, so only the crash and the refusal may
        // bring repeats.
        assert!(report.delivered >= 300, "{report:?}");
    }

    /// The blackhole keeps nothing: the suite counts what the runtime saw written.
    struct Nothing;

    #[async_trait]
    impl Downstream for Nothing {
        fn record(&self, i: u64) -> (Record, String) {
            (
                Record::new(format!("k{i}"), PayloadFlag::Raw, i.to_string().into_bytes()),
                i.to_string(),
            )
        }
        async fn written(&mut self) -> Option<Vec<String>> {
            None
        }
    }

    #[tokio::test]
    async fn blackhole_conforms() {
        let t = crate::builtin().get(Kind::Sink, "blackhole").unwrap();
        let report = check_sink(t, json!({"stream": "bh"}), "bh", &mut Nothing).await;
        assert!(report.written >= 520, "{report:?}");
    }
}
