//! Subscriptions: consumer groups reading a stream with acks, redelivery and durable progress.
//!
//! Guarantees: every record appended to the stream after the subscription's start offset is
//! delivered to a consumer at least once, and exactly once when consumers ack within the ack
//! timeout and nothing fails; within a shard, first deliveries follow LSN order; the committed
//! progress never passes an unacked record, so a restart (graceful or not) loses nothing, and a
//! graceful one does not deliver acked records again.

mod actor;
mod checkpoint;
mod metrics;
mod service;
mod tracker;

#[cfg(test)]
mod tests;

pub use actor::{CONSUMER_BUFFER, Command, ConsumerInfo, Delivery, FetchTx};
pub use service::{Leave, Session, SubscriptionSpec, Subscriptions};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{ApiError, ApiResult};
use crate::meta::{MetaStore, Ownership, ShardProgress, SubscriptionMeta};
use crate::store::Shard;

#[derive(Clone)]
pub struct Handle {
    /// The definition the actor started with (its stream may be archived since: ask the
    /// MetaStore for the current one).
    pub meta: SubscriptionMeta,
    /// The ownership the actor runs under (fencing its commits).
    pub held: Option<Ownership>,
    tx: mpsc::Sender<Command>,
    pub stats: Arc<Stats>,
}

/// Counters of a subscription since this node started it, for the metrics endpoint.
#[derive(Default)]
pub struct Stats {
    pub delivered: std::sync::atomic::AtomicU64,
    pub acked: std::sync::atomic::AtomicU64,
    /// Records taken back (ack timeout, consumer gone) to be sent again.
    pub redelivered: std::sync::atomic::AtomicU64,
    /// Per shard: its log and the committed position (the first LSN not fully acked), so the
    /// backlog can be read at any time against the log's tail.
    pub committed: std::sync::Mutex<Vec<(Arc<dyn Shard>, u64)>>,
    /// The backlog in records, as last counted.
    backlog_records: std::sync::atomic::AtomicU64,
}

impl Stats {
    /// Stored batches between the committed positions and the tails, now.
    pub fn backlog(&self) -> u64 {
        let shards = self.committed.lock().expect("lock");
        shards
            .iter()
            .map(|(log, committed)| (log.visible_lsn() + 1).saturating_sub(*committed))
            .sum()
    }

    /// Counts the records between the committed positions and the tails now (the store may
    /// read a few entry headers per shard, all shards at once) and keeps the figure for
    /// [`Self::backlog_records`]. A shard whose count cannot be read counts 0.
    pub async fn count_backlog_records(&self) -> u64 {
        let shards: Vec<(Arc<dyn Shard>, u64)> = self.committed.lock().expect("lock").clone();
        let counts =
            futures::future::join_all(shards.iter().map(|(log, committed)| log.records_from(*committed))).await;
        let sum = counts.into_iter().map(|c| c.unwrap_or(0)).sum();
        self.backlog_records.store(sum, std::sync::atomic::Ordering::Relaxed);
        sum
    }

    /// The backlog in records as last counted by [`Self::count_backlog_records`].
    pub fn backlog_records(&self) -> u64 {
        self.backlog_records.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Handle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> ApiResult<T> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| ApiError::SubscriptionNotFound(self.meta.id.clone()))?;
        rx.await
            .map_err(|_| ApiError::SubscriptionNotFound(self.meta.id.clone()))
    }

    pub async fn join(
        &self,
        info: ConsumerInfo,
        conn: u64,
        acks: Vec<hstream_proto::RecordId>,
        tx: FetchTx,
        closed: CancellationToken,
    ) -> ApiResult<()> {
        self.ask(|reply| Command::Join {
            info,
            conn,
            acks,
            tx,
            closed,
            reply,
        })
        .await?
    }

    pub async fn ack(&self, conn: u64, ids: Vec<hstream_proto::RecordId>) {
        let _ = self.tx.send(Command::Ack { conn, ids }).await;
    }

    /// Sends `Leave` for `conn` without waiting (usable from `Drop`); when the inbox is full
    /// the send is finished by a task on `tasks`.
    pub fn leave_now(&self, conn: u64, tasks: &TaskTracker) {
        if let Err(mpsc::error::TrySendError::Full(cmd)) = self.tx.try_send(Command::Leave { conn }) {
            let tx = self.tx.clone();
            tasks.spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }

    pub async fn consumers(&self) -> ApiResult<Vec<ConsumerInfo>> {
        self.ask(|reply| Command::Consumers { reply }).await
    }

    pub async fn progress(&self) -> ApiResult<Vec<ShardProgress>> {
        self.ask(|reply| Command::Progress { reply }).await
    }

    pub async fn stop(&self, force: bool) -> ApiResult<()> {
        self.ask(|reply| Command::Stop { force, reply }).await?
    }

    /// Ends the actor after its last commit, its consumers told to look the subscription up
    /// again (it moves to another node). An actor already gone is no error.
    pub async fn hand_over(&self) {
        let _ = self.ask(|reply| Command::Move { reply }).await;
    }

    /// Whether the actor has ended (deleted, moved, or fenced out by another node's claim).
    pub fn ended(&self) -> bool {
        self.tx.is_closed()
    }

    #[cfg(test)]
    pub async fn footprint(&self) -> ApiResult<actor::Footprint> {
        self.ask(|reply| Command::Footprint { reply }).await
    }
}

/// The running subscriptions of this node.
#[derive(Default)]
pub struct Registry {
    running: Mutex<HashMap<String, Handle>>,
}

impl Registry {
    /// Starts the actor of a subscription over the given shards.
    pub async fn start(
        &self,
        sub: SubscriptionMeta,
        meta: Arc<dyn MetaStore>,
        held: Option<Ownership>,
        logs: Vec<Arc<dyn Shard>>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> ApiResult<Handle> {
        let (tx, rx) = mpsc::channel(1024);
        let stats = Arc::new(Stats::default());
        let a = actor::Actor::start(sub.clone(), meta, held.clone(), logs, rx, shutdown, stats.clone()).await?;
        tasks.spawn(a.run());
        let handle = Handle {
            meta: sub.clone(),
            held,
            tx,
            stats,
        };
        self.running.lock().expect("lock").insert(sub.id, handle.clone());
        Ok(handle)
    }

    /// The running actor of `id` (one that ended is forgotten here).
    pub fn get(&self, id: &str) -> ApiResult<Handle> {
        let mut running = self.running.lock().expect("lock");
        if running.get(id).is_some_and(Handle::ended) {
            running.remove(id);
        }
        running
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::SubscriptionNotFound(id.to_owned()))
    }

    pub fn remove(&self, id: &str) {
        self.running.lock().expect("lock").remove(id);
    }

    /// Every running subscription, by id.
    pub fn all(&self) -> Vec<(String, Handle)> {
        let mut running = self.running.lock().expect("lock");
        running.retain(|_, h| !h.ended());
        running.iter().map(|(k, h)| (k.clone(), h.clone())).collect()
    }
}
