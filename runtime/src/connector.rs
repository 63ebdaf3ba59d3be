//! The connector API.
//!
//! The one rule that makes or breaks a connector: **the upstream position (Postgres flush LSN,
//! binlog GTID, MQTT PUBACK, Airbyte STATE) advances only after our own append is durable.** The
//! runtime enforces its half: a source's offset is checkpointed, and reported back through
//! [`SourceOutput::committed`], only once every record emitted before it is durable in the
//! stream; a sink's read position is checkpointed only once the sink said its records are durable.
//!
//! Ordering: records of one `emit` call are appended in order, per partition key; batches are
//! appended in emit order. Duplicates: after a crash a source restarts from its last committed
//! offset and emits again what followed it; the runtime numbers records as they are emitted and
//! drops a replayed record already stored under its number with the same content
//! (exactly-once appends, [`crate::once`]), so a source that replays from an offset as it first
//! emitted appends each record once. For that, an offset covers the records emitted before it
//! only when its [`Offset::resume_point`] changed with that emit: records a restart at that
//! offset emits again (the rows of a transaction still open) go out after the covered ones,
//! with the unchanged offset. Concurrency: one task runs one connector instance at a time;
//! `run` is never called concurrently with itself.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::error::ConnectorError;
pub use crate::record::{Attributes, PayloadFlag, Record, SinkRecord};

/// A connector's typed configuration: parsed with serde (unknown fields refused), checked against
/// its JSON Schema (derived with schemars, published in `specs/`), then by [`validate`].
///
/// [`validate`]: ConnectorConfig::validate
pub trait ConnectorConfig: DeserializeOwned + Serialize + JsonSchema + Send + Sync + 'static {
    /// Checks the parts a schema cannot express; no IO. Errors name the field.
    fn validate(&self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// A typed, versioned position. Stored as JSON with its version; a stored version the code does
/// not know is refused rather than guessed at.
pub trait Offset: DeserializeOwned + Serialize + Clone + Send + Sync + std::fmt::Debug + 'static {
    const VERSION: u32;

    /// The part of the offset that says where a restart replays from. Records emitted while it
    /// stays the same (the rows of a transaction still open, behind the last transaction end)
    /// are not covered by it: a restart emits them again. The whole offset by default; an
    /// offset that also counts things for people watching leaves the counts out.
    fn resume_point(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// How a run ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Stopped because it was asked to (pause, delete, shutdown).
    Cancelled,
    /// Finished its work (a bounded source); the task becomes COMPLETED.
    Completed,
}

/// Checkpoints are written at most this often while running (and always at the end).
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// One `emit`: records for a stream (`None`: the source's own) and the offset after them, as
/// the pipeline receives it.
pub(crate) struct Emitted<O> {
    pub(crate) stream: Option<std::sync::Arc<str>>,
    pub(crate) records: Vec<Record>,
    /// `None`: no new position (dead letters sent on their own).
    pub(crate) offset: Option<O>,
    /// Dead letters for the dead-letter stream (`stream`): not transformed.
    pub(crate) dead: bool,
}

/// Where a source's output goes: a bounded pipeline, so a slow stream slows the source.
pub struct SourceOutput<O: Offset> {
    pub(crate) tx: mpsc::Sender<Emitted<O>>,
    pub(crate) committed: watch::Receiver<Option<O>>,
    pub(crate) durable: watch::Receiver<Option<O>>,
    pub(crate) max_record_size: usize,
    pub(crate) cancel: CancellationToken,
    pub(crate) progress: std::sync::Arc<crate::progress::Progress>,
    pub(crate) letters: crate::tolerance::DeadLetters,
}

impl<O: Offset> SourceOutput<O> {
    /// Queues records followed by the offset reached after them. Waits while the pipeline is
    /// full. Errs when the task is stopping.
    pub async fn emit(&mut self, records: Vec<Record>, offset: O) -> Result<(), ConnectorError> {
        self.send(None, records, offset).await
    }

    /// Like [`emit`](Self::emit), to the named stream instead of [`Source::stream`]'s (created
    /// on first use). Records keep their order per stream and key; a later offset is durable only
    /// once the records before it, to every stream, are.
    pub async fn emit_to(
        &mut self,
        stream: std::sync::Arc<str>,
        records: Vec<Record>,
        offset: O,
    ) -> Result<(), ConnectorError> {
        self.send(Some(stream), records, offset).await
    }

    async fn send(
        &mut self,
        stream: Option<std::sync::Arc<str>>,
        records: Vec<Record>,
        offset: O,
    ) -> Result<(), ConnectorError> {
        let e = Emitted {
            stream,
            records,
            offset: Some(offset),
            dead: false,
        };
        self.queue(e).await
    }

    async fn queue(&mut self, e: Emitted<O>) -> Result<(), ConnectorError> {
        tokio::select! {
            r = self.tx.send(e) => r.map_err(|_| ConnectorError::internal("the append pipeline stopped")),
            _ = self.cancel.cancelled() => Err(ConnectorError::internal("task is stopping")),
        }
    }

    /// A record the source could not produce (`record`: what it has of it, as close to what
    /// the upstream sent as it can; `position`: where it was upstream, in the source's terms).
    /// Under `errors.tolerance=none` this returns the task's error, which the source returns;
    /// under `all` the record becomes a dead letter, durable before any offset emitted after
    /// this call, and the source goes on.
    pub async fn reject(
        &mut self,
        record: Record,
        stage: crate::tolerance::Stage,
        position: serde_json::Value,
        error: &ConnectorError,
    ) -> Result<(), ConnectorError> {
        let letter = self.letters.fail(
            (record.key, record.flag, record.payload, record.attributes),
            stage,
            crate::tolerance::Position::Source(position),
            error,
        )?;
        match (letter, &self.letters.policy.deadletter) {
            (Some(letter), Some(stream)) => {
                let e = Emitted {
                    stream: Some(stream.as_str().into()),
                    records: vec![letter],
                    offset: None,
                    dead: true,
                };
                self.queue(e).await
            }
            _ => Ok(()),
        }
    }

    /// Whether failed records are tolerated (`errors.tolerance=all`): a source that can skip a
    /// record may then [`reject`](Self::reject) it and go on.
    pub fn tolerates_errors(&self) -> bool {
        self.letters.tolerates()
    }

    /// The latest offset whose records are all durable and checkpointed: only up to here may a
    /// source acknowledge upstream.
    pub fn committed(&self) -> watch::Receiver<Option<O>> {
        self.committed.clone()
    }

    /// Waits until `offset` (emitted before) is the committed one: what a source does before it
    /// lets anything depend on that checkpoint. False when the task stops first.
    pub async fn wait_committed(&self, offset: &O) -> bool
    where
        O: PartialEq,
    {
        let mut committed = self.committed.clone();
        loop {
            if committed.borrow_and_update().as_ref() == Some(offset) {
                return true;
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                changed = committed.changed() => if changed.is_err() { return false },
            }
        }
    }

    /// The latest offset whose records are all durable in the stream, which may run ahead of
    /// [`committed`](Self::committed) by up to one checkpoint interval. A source whose upstream
    /// keeps the position itself (an MQTT broker's session, not a checkpoint of ours) may
    /// acknowledge up to here.
    pub fn durable(&self) -> watch::Receiver<Option<O>> {
        self.durable.clone()
    }

    /// The largest record the stream accepts (compare [`Record::encoded_size_bound`]). A bigger
    /// one emitted is a failed record (stage `write`): the task's error, or a dead letter under
    /// `errors.tolerance=all`.
    pub fn max_record_size(&self) -> usize {
        self.max_record_size
    }

    /// Says what the source is doing, for people watching (e.g. snapshot progress); shown with
    /// the task's report.
    pub fn report(&self, status: impl Into<String>) {
        *self.progress.status.lock().expect("lock") = Some(status.into());
    }

    /// Says how far behind its upstream the source is (shown as a metric).
    pub fn set_lag(&self, lag: crate::progress::Lag) {
        *self.progress.lag.lock().expect("lock") = Some(lag);
    }

    /// Cancelled when the task must stop; `run` should return `Done::Cancelled` promptly.
    pub fn cancelled(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

#[async_trait]
pub trait Source: Send + 'static {
    type Config: ConnectorConfig;
    type Offset: Offset;

    /// Whether a restart at an offset emits again exactly what followed it, in the same order:
    /// then the runtime stores each record once ([`crate::once`]). Not for a source whose
    /// upstream resends by its own rules (an MQTT broker's session) or in another order (Kafka
    /// partitions interleaving differently on each read).
    const REPLAYS: bool = false;

    /// Tests connectivity and permissions without starting anything.
    async fn check(config: &Self::Config) -> Result<(), ConnectorError>;

    /// Builds an instance that resumes after `offset` (`None`: from the configured start).
    async fn open(config: Self::Config, offset: Option<Self::Offset>) -> Result<Self, ConnectorError>
    where
        Self: Sized;

    /// The stream records go to; empty for a source that names the stream of every batch
    /// ([`SourceOutput::emit_to`]).
    fn stream(config: &Self::Config) -> &str;

    /// Puts a config as given by a user into its stored form (e.g. JSON text into an object),
    /// before it is validated and stored. No IO.
    fn normalize(_config: &mut serde_json::Value) {}

    /// Adjusts this connector type's config schema for one config, for redaction of secrets
    /// (e.g. to describe the secrets of a config nested in it). No IO.
    fn schema_for(_config: &Self::Config, _schema: &mut serde_json::Value) {}

    /// Produces records until done or cancelled (select on cancellation first).
    async fn run(&mut self, out: &mut SourceOutput<Self::Offset>) -> Result<Done, ConnectorError>;

    /// Releases what the connector holds upstream once it is deleted (e.g. a replication slot).
    /// Called after the last attempt stopped.
    async fn on_delete(_config: &Self::Config) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Sends the source a signal (`kind`, `data`) through its upstream, where its running task
    /// reads it back in order (a CDC source: a row in the database's signal table), so the
    /// signal is as durable as the upstream's own changes; returns the signal's id. Works
    /// whether or not the task runs now, from any node. Sources without signals refuse.
    async fn signal(_config: &Self::Config, _kind: &str, _data: &serde_json::Value) -> Result<String, ConnectorError> {
        Err(ConnectorError::config("this connector takes no signals"))
    }
}

/// What a sink is opened with beside its config ([`Sink::open_in`]).
pub struct SinkContext {
    /// The task (connector) name: stable across restarts.
    pub task: String,
    pub streams: std::sync::Arc<dyn crate::streams::Streams>,
}

/// Whether a sink's write is merely accepted (buffered) or durable downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Accepted,
    Durable,
}

#[async_trait]
pub trait Sink: Send + 'static {
    type Config: ConnectorConfig;

    async fn check(config: &Self::Config) -> Result<(), ConnectorError>;

    async fn open(config: Self::Config) -> Result<Self, ConnectorError>
    where
        Self: Sized;

    /// What the runtime calls: [`open`](Self::open), with the task's name and access to the
    /// streams, for a sink that needs them (a persistent query writes into streams itself, its
    /// appends fenced like a source's; a transactional Kafka sink names its producer after the
    /// task).
    async fn open_in(config: Self::Config, _ctx: SinkContext) -> Result<Self, ConnectorError>
    where
        Self: Sized,
    {
        Self::open(config).await
    }

    /// The stream records come from.
    fn stream(config: &Self::Config) -> &str;

    /// As [`Source::normalize`].
    fn normalize(_config: &mut serde_json::Value) {}

    /// As [`Source::schema_for`].
    fn schema_for(_config: &Self::Config, _schema: &mut serde_json::Value) {}

    /// How often the runtime asks for [`Sink::flush`] (and checkpoints) while records flow.
    fn flush_every(_config: &Self::Config) -> std::time::Duration {
        CHECKPOINT_EVERY
    }

    /// Writes records in order. The runtime commits the read position after a `Durable` answer,
    /// or after the next successful [`Sink::flush`] following `Accepted` ones.
    ///
    /// A write refused for what the records hold (a value a column cannot take, a constraint)
    /// fails with a [`data`](ConnectorError::data) error, and then must have had no effect (one
    /// transaction per write): under `errors.tolerance=all` the runtime writes the batch again
    /// in halves to find the refused records, which become dead letters. A sink whose writes
    /// can half-succeed never returns data errors.
    async fn write(&mut self, records: &[SinkRecord]) -> Result<Written, ConnectorError>;

    /// Makes everything accepted so far durable.
    async fn flush(&mut self) -> Result<(), ConnectorError>;

    /// Releases what the connector (task `task`) holds downstream once it is deleted (e.g. a
    /// position stored there). Called after the last attempt stopped.
    async fn on_delete(_config: &Self::Config, _task: &str) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// At a graceful stop: makes everything accepted so far durable, promptly (a periodic
    /// [`Sink::flush`] may be interrupted by the stop; this one is awaited).
    async fn close(&mut self) -> Result<(), ConnectorError> {
        self.flush().await
    }
}
