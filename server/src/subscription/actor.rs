//! One task per subscription owns all of its delivery state: which consumer owns which shard,
//! what was sent to whom and when, and the ack trackers. Consumers and RPCs talk to it with
//! [`Command`]s, so no lock guards delivery state.
//!
//! Delivery rules: a shard is owned by one consumer at a time (shards are spread evenly over the
//! consumers, sorted by name); each response carries one stored batch; a batch goes again to the
//! shard's current owner when its ack timeout passes or its consumer leaves, holding only the
//! records still unacked; no new batch is sent while `maxUnackedRecords` records are out.
//! Progress (the contiguous acked prefix per shard) is committed to the MetaStore on a short
//! tick and at shutdown, together with a checkpoint of acks beyond the prefix.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hstream_proto as pb;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::checkpoint;
use super::tracker::AckTracker;
use crate::error::{ApiError, ApiResult};
use crate::meta::{Commit, MetaError, MetaStore, Ownership, ShardProgress, SubscriptionMeta};
use crate::store::{ReadySet, Shard};

mod deliver;

/// What a consumer's session receives: the StreamingFetch response itself, built once on the
/// delivery path (decision 021).
pub type Delivery = Result<pb::StreamingFetchResponse, Status>;
pub type FetchTx = mpsc::Sender<Delivery>;

/// Responses buffered per consumer before delivery to it pauses.
pub const CONSUMER_BUFFER: usize = 64;
const COMMIT_EVERY: Duration = Duration::from_millis(100);
/// Batches read from a shard per store read.
const READ_CHUNK: usize = 64;

/// How long a consumer with a full buffer has to take its stream's closing status.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub name: String,
    pub uri: String,
    pub user_agent: String,
}

pub enum Command {
    /// Registers a consumer; `acks` (from its first request) apply before anything is sent.
    Join {
        info: ConsumerInfo,
        conn: u64,
        acks: Vec<pb::RecordId>,
        tx: FetchTx,
        closed: CancellationToken,
        reply: oneshot::Sender<ApiResult<()>>,
    },
    Ack {
        conn: u64,
        ids: Vec<pb::RecordId>,
    },
    Leave {
        conn: u64,
    },
    Consumers {
        reply: oneshot::Sender<Vec<ConsumerInfo>>,
    },
    Progress {
        reply: oneshot::Sender<Vec<ShardProgress>>,
    },
    /// Ends the subscription (for deletion); refused while consumers are connected unless
    /// `force`.
    Stop {
        force: bool,
        reply: oneshot::Sender<ApiResult<()>>,
    },
    /// Ends the subscription here, its last commit made, because it moves to another node:
    /// consumers are told to look it up again.
    Move {
        reply: oneshot::Sender<()>,
    },
    /// The size of the actor's bookkeeping (tests hold it bounded).
    #[cfg(test)]
    Footprint {
        reply: oneshot::Sender<Footprint>,
    },
}

/// How much bookkeeping a subscription holds (for tests).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub deadlines: usize,
    pub sent: usize,
    pub early_acks: usize,
    pub inflight: usize,
    pub done_ranges: usize,
    /// Shards queued for delivery turns.
    pub active: usize,
    /// Delivery turns taken so far (one shard each).
    pub turns: u64,
}

struct Consumer {
    info: ConsumerInfo,
    conn: u64,
    tx: FetchTx,
    /// Cancelled when this side drops the consumer, so its request reader ends too.
    closed: CancellationToken,
}

struct SentTo {
    conn: u64,
    at: Instant,
    /// Its entry in `Actor::deadlines`, removed with it.
    due: Instant,
}

struct ShardSub {
    id: u64,
    log: Arc<dyn Shard>,
    tracker: AckTracker,
    /// In `Actor::active`: it may have something to send.
    active: bool,
    owner: Option<String>,
    /// Outstanding batches: who has them since when.
    sent: HashMap<u64, SentTo>,
    /// Batches to send again to the owner.
    resend: BTreeSet<u64>,
    /// Of those, the ones a consumer had (ack timeout, consumer gone): their next send is a
    /// redelivery.
    again: std::collections::HashSet<u64>,
    /// Acks for batches not yet (re)delivered since this actor started, which a consumer may
    /// have received before a restart; applied when the batch is read.
    early_acks: HashMap<u64, std::collections::BTreeSet<u32>>,
    /// Entries in `early_acks`, bounded by [`Actor::early_ack_limit`].
    early_count: usize,
    /// Batches up to this LSN existed before this actor started.
    visible_at_start: u64,
}

impl ShardSub {
    /// Drops early acks of batches the read pass skipped (trimmed): they will never be sent.
    fn prune_early(&mut self) {
        let next = self.tracker.read_next;
        let before = self.early_acks.len();
        if before == 0 {
            return;
        }
        let mut dropped = 0;
        self.early_acks.retain(|&lsn, acks| {
            let keep = lsn >= next;
            if !keep {
                dropped += acks.len();
            }
            keep
        });
        self.early_count -= dropped;
    }
}

enum Wake {
    Command(Command),
    Data,
    Due,
    Tick,
    Closed,
    Shutdown,
}

pub struct Actor {
    sub: SubscriptionMeta,
    meta: Arc<dyn MetaStore>,
    /// The ownership this node runs the subscription under: every commit is fenced by it.
    fence: Option<Ownership>,
    /// A commit found the fence no longer current: another node holds the subscription now.
    lost: bool,
    shards: Vec<ShardSub>,
    consumers: BTreeMap<String, Consumer>,
    inbox: mpsc::Receiver<Command>,
    /// Shard index by shard id.
    index: HashMap<u64, usize>,
    /// Shards whose tail moved since `active` last took them (marked by the store).
    ready: Arc<ReadySet>,
    /// Shards that may have something to send (new batches, resends), visited in turn; a shard
    /// leaves when a visit finds nothing to do, so idle shards cost delivery nothing.
    active: VecDeque<usize>,
    /// Sum of the trackers' outstanding records, kept in step with them.
    outstanding: u64,
    /// Shards whose acks or position changed since the last commit.
    touched: BTreeSet<usize>,
    /// Shards with acks beyond their committed prefix, as of the last commit (what the
    /// checkpoint holds).
    with_acks: BTreeSet<usize>,
    /// (due, shard index, lsn, conn) ack deadlines of the batches in the shards' `sent`; an
    /// entry leaves with its batch (acked, taken back, timed out).
    deadlines: BTreeSet<(Instant, usize, u64, u64)>,
    dirty: bool,
    /// Delivery turns taken (for tests: the work an append costs).
    turns: u64,
    shutdown: CancellationToken,
    stats: Arc<super::Stats>,
}

impl Actor {
    pub async fn start(
        sub: SubscriptionMeta,
        meta: Arc<dyn MetaStore>,
        fence: Option<Ownership>,
        logs: Vec<Arc<dyn Shard>>,
        inbox: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
        stats: Arc<super::Stats>,
    ) -> ApiResult<Actor> {
        let progress: HashMap<u64, u64> = meta
            .get_progress(&sub.id)
            .await?
            .into_iter()
            .map(|p| (p.shard_id, p.next_lsn))
            .collect();
        let restored = match meta.get_checkpoint(&checkpoint::owner(&sub.id)).await? {
            Some(cp) => checkpoint::decode(&cp).unwrap_or_else(|e| {
                tracing::warn!(subscription = %sub.id, error = %e, "ignoring unreadable ack checkpoint");
                HashMap::new()
            }),
            None => HashMap::new(),
        };
        let mut shards = Vec::with_capacity(logs.len());
        for log in logs {
            let committed = progress.get(&log.id()).copied().unwrap_or(1).max(1);
            let mut tracker = AckTracker::new(committed);
            if let Some(r) = restored.get(&log.id()) {
                r.restore_into(&mut tracker);
            }
            shards.push(ShardSub {
                id: log.id(),
                log,
                tracker,
                active: false,
                owner: None,
                sent: HashMap::new(),
                resend: BTreeSet::new(),
                again: Default::default(),
                early_acks: HashMap::new(),
                early_count: 0,
                visible_at_start: 0,
            });
            let s = shards.last_mut().expect("just pushed");
            s.visible_at_start = s.log.visible_lsn();
        }
        shards.sort_by_key(|s| s.id);
        let ready = ReadySet::new();
        for (i, s) in shards.iter().enumerate() {
            s.log.notify_on_append(&ready, i);
        }
        let with_acks = (0..shards.len()).filter(|&i| has_acks(&shards[i].tracker)).collect();
        *stats.committed.lock().expect("lock") =
            shards.iter().map(|s| (s.log.clone(), s.tracker.committed())).collect();
        Ok(Actor {
            sub,
            meta,
            fence,
            lost: false,
            index: shards.iter().enumerate().map(|(i, s)| (s.id, i)).collect(),
            shards,
            consumers: BTreeMap::new(),
            inbox,
            ready,
            active: VecDeque::new(),
            outstanding: 0,
            touched: BTreeSet::new(),
            with_acks,
            deadlines: BTreeSet::new(),
            dirty: false,
            turns: 0,
            shutdown,
            stats,
        })
    }

    /// Most acks a shard keeps for batches not delivered since this actor started: what
    /// consumers could have had out before a restart (maxUnackedRecords), with room to spare.
    fn early_ack_limit(&self) -> usize {
        (self.sub.max_unacked.max(1) as usize)
            .saturating_mul(2)
            .clamp(1024, 1 << 16)
    }

    fn ack_timeout(&self) -> Duration {
        Duration::from_secs(self.sub.ack_timeout_secs.max(1) as u64)
    }

    /// Queues shard `si` for the delivery rounds.
    fn activate(&mut self, si: usize) {
        let s = &mut self.shards[si];
        if !s.active {
            s.active = true;
            self.active.push_back(si);
        }
    }

    /// Notes that shard `si`'s acks or position changed, for the next commit.
    fn touch(&mut self, si: usize) {
        self.dirty = true;
        self.touched.insert(si);
    }

    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(COMMIT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.deliver().await;
            match self.wait(&mut tick).await {
                Wake::Command(Command::Stop { force, reply }) => {
                    if !force && !self.consumers.is_empty() {
                        let _ = reply.send(Err(ApiError::SubscriptionHasConsumers(self.sub.id.clone())));
                        continue;
                    }
                    self.close_all(Status::not_found(format!("subscription {} was deleted", self.sub.id)));
                    let _ = reply.send(Ok(()));
                    return;
                }
                Wake::Command(Command::Move { reply }) => {
                    self.dirty = true;
                    self.commit().await;
                    self.close_all(self.moved());
                    let _ = reply.send(());
                    return;
                }
                Wake::Command(cmd) => self.handle(cmd),
                Wake::Due => self.expire_deadlines(),
                Wake::Tick => {
                    self.commit().await;
                    if self.lost {
                        tracing::warn!(subscription = %self.sub.id, "another node holds this subscription now: stopping here");
                        self.close_all(self.moved());
                        return;
                    }
                }
                // `deliver` takes the shards that got data.
                Wake::Data => {}
                Wake::Closed => return,
                Wake::Shutdown => {
                    // Acks already queued count: apply them before the final commit.
                    let mut moves = Vec::new();
                    while let Ok(cmd) = self.inbox.try_recv() {
                        match cmd {
                            Command::Ack { conn, ids } => self.ack(conn, ids),
                            Command::Join { reply, .. } => {
                                let _ = reply.send(Err(ApiError::ShuttingDown));
                            }
                            Command::Stop { reply, .. } => {
                                let _ = reply.send(Err(ApiError::ShuttingDown));
                            }
                            // Answered once the last commit below is made: the node
                            // releases the subscription only after it.
                            Command::Move { reply } => moves.push(reply),
                            other => self.handle(other),
                        }
                    }
                    self.dirty = true;
                    self.commit().await;
                    self.close_all(Status::unavailable("server is shutting down"));
                    for reply in moves {
                        let _ = reply.send(());
                    }
                    return;
                }
            }
        }
    }

    /// Waits for the next thing that may let delivery continue.
    async fn wait(&mut self, tick: &mut tokio::time::Interval) -> Wake {
        let next_deadline = self.deadlines.first().map(|d| d.0);
        let blocked = self.blocked_consumers();
        let appended = self.ready.ready();
        let room = async move {
            if blocked.is_empty() {
                return futures::future::pending::<()>().await;
            }
            let _ = futures::future::select_all(blocked.iter().map(|tx| Box::pin(tx.reserve()))).await;
        };
        let due = async move {
            match next_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => Wake::Shutdown,
            cmd = self.inbox.recv() => cmd.map_or(Wake::Closed, Wake::Command),
            _ = appended => Wake::Data,
            _ = room => Wake::Data,
            _ = due => Wake::Due,
            _ = tick.tick() => Wake::Tick,
        }
    }

    fn blocked_consumers(&self) -> Vec<FetchTx> {
        self.consumers
            .values()
            .filter(|c| c.tx.capacity() == 0)
            .map(|c| c.tx.clone())
            .collect()
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Join {
                info,
                conn,
                acks,
                tx,
                closed,
                reply,
            } => {
                if self.consumers.contains_key(&info.name) {
                    let _ = reply.send(Err(ApiError::ConsumerExists {
                        consumer: info.name,
                        subscription: self.sub.id.clone(),
                    }));
                    return;
                }
                tracing::info!(subscription = %self.sub.id, consumer = %info.name, "consumer joined");
                self.consumers
                    .insert(info.name.clone(), Consumer { info, conn, tx, closed });
                self.rebalance();
                let _ = reply.send(Ok(()));
                if !acks.is_empty() {
                    self.ack(conn, acks);
                }
            }
            Command::Ack { conn, ids } => self.ack(conn, ids),
            Command::Leave { conn } => {
                if let Some(name) = self.consumer_name(conn) {
                    self.remove_consumer(&name);
                }
            }
            Command::Consumers { reply } => {
                let _ = reply.send(self.consumers.values().map(|c| c.info.clone()).collect());
            }
            Command::Progress { reply } => {
                let _ = reply.send(self.progress());
            }
            Command::Stop { .. } | Command::Move { .. } => unreachable!("handled by run"),
            #[cfg(test)]
            Command::Footprint { reply } => {
                debug_assert_eq!(
                    self.outstanding,
                    self.shards.iter().map(|s| s.tracker.outstanding_records()).sum::<u64>(),
                    "outstanding count out of step"
                );
                let _ = reply.send(Footprint {
                    deadlines: self.deadlines.len(),
                    sent: self.shards.iter().map(|s| s.sent.len()).sum(),
                    early_acks: self.shards.iter().map(|s| s.early_count).sum(),
                    inflight: self.shards.iter().map(|s| s.tracker.inflight().count()).sum(),
                    done_ranges: self.shards.iter().map(|s| s.tracker.done_ranges().count()).sum(),
                    active: self.active.len(),
                    turns: self.turns,
                });
            }
        }
    }

    fn consumer_name(&self, conn: u64) -> Option<String> {
        self.consumers
            .values()
            .find(|c| c.conn == conn)
            .map(|c| c.info.name.clone())
    }

    fn progress(&self) -> Vec<ShardProgress> {
        self.shards
            .iter()
            .map(|s| ShardProgress {
                shard_id: s.id,
                next_lsn: s.tracker.committed(),
            })
            .collect()
    }

    /// Spreads shards over consumers in name order. Batches already out stay with whoever has
    /// them (so a join never causes a second delivery); new and resent batches go to the owner.
    fn rebalance(&mut self) {
        let names: Vec<String> = self.consumers.keys().cloned().collect();
        for i in 0..self.shards.len() {
            self.shards[i].owner = if names.is_empty() {
                None
            } else {
                Some(names[i % names.len()].clone())
            };
            if !names.is_empty() {
                self.activate(i);
            }
        }
    }

    fn remove_consumer(&mut self, name: &str) {
        let Some(c) = self.consumers.remove(name) else { return };
        c.closed.cancel();
        tracing::info!(subscription = %self.sub.id, consumer = %name, "consumer left");
        // The consumer's batches, found through the deadlines (each outstanding batch has one).
        let theirs: Vec<(usize, u64)> = self
            .deadlines
            .iter()
            .filter(|d| d.3 == c.conn)
            .map(|d| (d.1, d.2))
            .collect();
        for (si, lsn) in theirs {
            let s = &mut self.shards[si];
            if let Some(st) = s.sent.remove(&lsn) {
                self.deadlines.remove(&(st.due, si, lsn, st.conn));
            }
            s.again.insert(lsn);
            let before = s.tracker.outstanding_records();
            s.tracker.withdraw(lsn);
            self.outstanding -= before - s.tracker.outstanding_records();
            s.resend.insert(lsn);
        }
        self.rebalance();
    }

    fn ack(&mut self, conn: u64, ids: Vec<pb::RecordId>) {
        let Some(name) = self.consumer_name(conn) else { return };
        let early_limit = self.early_ack_limit();
        for id in ids {
            let Some(&si) = self.index.get(&id.shard_id) else {
                return self.reject(
                    &name,
                    format!(
                        "ack for record {}-{}-{} of a shard this subscription does not read",
                        id.shard_id, id.batch_id, id.batch_index
                    ),
                );
            };
            let s = &mut self.shards[si];
            let before = s.tracker.outstanding_records();
            let acked = s.tracker.ack(id.batch_id, id.batch_index);
            self.outstanding -= before - s.tracker.outstanding_records();
            match acked {
                Ok(new) => {
                    if new {
                        // Repeats change nothing, so they do not cost a checkpoint write.
                        self.stats.acked.fetch_add(1, Ordering::Relaxed);
                        self.dirty = true;
                        self.touched.insert(si);
                    }
                    if s.tracker.get(id.batch_id).is_none_or(|f| f.complete()) {
                        if let Some(st) = s.sent.remove(&id.batch_id) {
                            self.deadlines.remove(&(st.due, si, id.batch_id, st.conn));
                        }
                        s.resend.remove(&id.batch_id);
                        s.again.remove(&id.batch_id);
                    }
                }
                Err(_) if id.batch_id >= s.tracker.read_next && id.batch_id <= s.visible_at_start => {
                    // Possibly delivered before a restart and not yet delivered again. At most
                    // what a consumer can have had out, so a flood of made-up acks is refused.
                    if s.early_acks.entry(id.batch_id).or_default().insert(id.batch_index) {
                        s.early_count += 1;
                    }
                    if s.early_count > early_limit {
                        return self.reject(
                            &name,
                            format!(
                                "more than {early_limit} acks for records not delivered since the subscription started"
                            ),
                        );
                    }
                }
                Err(e) => {
                    return self.reject(
                        &name,
                        format!("ack for record {}-{}-{}: {e}", id.shard_id, id.batch_id, id.batch_index),
                    );
                }
            }
        }
    }

    /// Ends one consumer's stream with an error; its outstanding batches go to the others.
    fn reject(&mut self, name: &str, message: String) {
        tracing::warn!(subscription = %self.sub.id, consumer = %name, %message, "rejecting consumer");
        if let Some(c) = self.consumers.get(name) {
            let body = serde_json::json!({ "error": hstream_proto::ErrorCode::InternalError as i32, "message": message, "extra": null });
            let _ = c.tx.try_send(Err(Status::invalid_argument(body.to_string())));
        }
        self.remove_consumer(name);
    }

    /// What consumers hear when the subscription moves to another node: WrongServer, so
    /// they look it up again.
    fn moved(&self) -> Status {
        ApiError::WrongServer {
            what: format!("subscription {:?}", self.sub.id),
            owner: None,
        }
        .into()
    }

    /// Ends every consumer's stream with `status`. A consumer whose buffer is full still gets
    /// it (a clean end would read as "nothing more", and the client would not look the
    /// subscription up again): sent once it takes it, for up to [`CLOSE_WAIT`].
    fn close_all(&mut self, status: Status) {
        for c in std::mem::take(&mut self.consumers).into_values() {
            if let Err(mpsc::error::TrySendError::Full(last)) = c.tx.try_send(Err(status.clone())) {
                let tx = c.tx.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(CLOSE_WAIT, tx.send(last)).await;
                });
            }
            c.closed.cancel();
        }
    }

    fn expire_deadlines(&mut self) {
        let now = Instant::now();
        let timeout = self.ack_timeout();
        while let Some(&(due, si, lsn, conn)) = self.deadlines.first() {
            if due > now {
                break;
            }
            self.deadlines.pop_first();
            let s = &mut self.shards[si];
            // Only a deadline still in `sent` reaches here: the others left with their batch.
            let still_out = matches!(s.sent.get(&lsn), Some(sent) if sent.conn == conn && sent.at + timeout <= now);
            if still_out && s.tracker.get(lsn).is_some_and(|f| !f.complete()) {
                s.sent.remove(&lsn);
                s.again.insert(lsn);
                let before = s.tracker.outstanding_records();
                s.tracker.withdraw(lsn);
                self.outstanding -= before - s.tracker.outstanding_records();
                s.resend.insert(lsn);
                self.activate(si);
            }
        }
    }

    /// Commits the positions of the shards touched since the last commit, and the checkpoint of
    /// acks beyond them; work in proportion to what changed, not to the shards read.
    async fn commit(&mut self) {
        if !self.dirty {
            return;
        }
        let touched = std::mem::take(&mut self.touched);
        let progress: Vec<ShardProgress> = touched
            .iter()
            .map(|&si| ShardProgress {
                shard_id: self.shards[si].id,
                next_lsn: self.shards[si].tracker.committed(),
            })
            .collect();
        for &si in &touched {
            if has_acks(&self.shards[si].tracker) {
                self.with_acks.insert(si);
            } else {
                self.with_acks.remove(&si);
            }
        }
        let cp = checkpoint::encode(
            &self.sub.id,
            self.with_acks
                .iter()
                .map(|&si| (self.shards[si].id, &self.shards[si].tracker)),
        );
        // Progress and the ack checkpoint in one transaction: one metastore round trip a tick.
        let res = self
            .meta
            .commit(&Commit {
                progress: Some((&self.sub.id, &progress)),
                checkpoints: std::slice::from_ref(&cp),
                fences: self.fence.as_slice(),
            })
            .await;
        {
            // The metrics endpoint's view of the committed positions (for the backlog).
            let mut committed = self.stats.committed.lock().expect("lock");
            for (&si, p) in touched.iter().zip(&progress) {
                committed[si].1 = p.next_lsn;
            }
        }
        match res {
            Ok(()) => self.dirty = false,
            Err(e @ MetaError::Fenced { .. }) => {
                tracing::warn!(subscription = %self.sub.id, error = %e, "progress not committed: fenced");
                self.lost = true;
            }
            Err(e) => {
                tracing::error!(subscription = %self.sub.id, error = %e, "committing progress failed");
                self.touched.extend(touched);
            }
        }
    }
}

/// Whether a tracker has acks beyond its committed prefix (what a checkpoint keeps).
fn has_acks(t: &AckTracker) -> bool {
    t.done_ranges().next().is_some() || t.inflight().any(|(_, f)| f.n_acked > 0)
}
