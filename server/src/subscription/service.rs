//! The subscriptions service: create, describe, list and delete subscriptions, start their
//! actors, and open one consumer's session.
//!
//! Guarantees: a subscription is in the MetaStore before its actor starts; creating one and
//! deleting its stream are serialized (the streams service's DDL lock), so a subscription never
//! starts on a stream being deleted; the data of a force-deleted stream goes with its last
//! subscription, in one MetaStore step.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hstream_proto::ErrorCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{CONSUMER_BUFFER, ConsumerInfo, FetchTx, Handle, Registry};
use crate::catalog::validate_name;
use crate::cluster::assign::{Assignments, Hosted};
use crate::error::{ApiError, ApiResult};
use crate::meta::{MetaError, MetaStore, Ownership, ShardProgress, StartOffset, SubscriptionMeta};
use crate::store::now_ms;
use crate::streams::Streams;

/// HStreamDB's bounds on ackTimeoutSeconds.
const MAX_ACK_TIMEOUT_SECS: i32 = 36_000;

/// A subscription to create.
#[derive(Debug, Clone)]
pub struct SubscriptionSpec {
    pub id: String,
    pub stream: String,
    pub ack_timeout_secs: i32,
    pub max_unacked: i32,
    pub offset: StartOffset,
}

pub struct Subscriptions {
    meta: Arc<dyn MetaStore>,
    streams: Arc<Streams>,
    /// Where each subscription runs (this node's placer starts and stops actors through
    /// [`Hosted`]).
    assignments: Arc<Assignments>,
    running: Arc<Registry>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Numbers consumer sessions.
    next_conn: AtomicU64,
}

/// One consumer's open session: deliveries arrive on `rx`; the subscription has it as `conn`.
/// Dropping it (or its [`Leave`] guard) tells the subscription the consumer left.
pub struct Session {
    pub handle: Handle,
    pub conn: u64,
    pub deliveries: mpsc::Receiver<super::Delivery>,
    /// Cancelled when the subscription drops the consumer.
    pub closed: CancellationToken,
    pub leave: Leave,
}

/// Tells the subscription its consumer left, however the session ends (even when the future
/// that opened it is dropped mid-way).
pub struct Leave {
    handle: Handle,
    conn: u64,
    tasks: TaskTracker,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.handle.leave_now(self.conn, &self.tasks);
    }
}

impl Subscriptions {
    /// The service; the caller adds it to `assignments` (which holds it weakly).
    pub fn new(
        meta: Arc<dyn MetaStore>,
        streams: Arc<Streams>,
        assignments: Arc<Assignments>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Subscriptions {
            meta,
            streams,
            assignments,
            running: Arc::new(Registry::default()),
            tasks,
            shutdown,
            next_conn: AtomicU64::new(1),
        }
    }

    /// Registers the collector of the subscriptions' metrics.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(super::metrics::Live(self.running.clone())));
    }

    /// Counts every running subscription's backlog in records (the store may read), all at
    /// once, so a scrape that follows reports them.
    pub async fn count_backlogs(&self) {
        let all = self.running.all();
        futures::future::join_all(all.iter().map(|(_, h)| h.stats.count_backlog_records())).await;
    }

    /// The running subscriptions of this node, by id.
    pub fn running(&self) -> &Registry {
        &self.running
    }

    /// Checks a new subscription's id and limits, as `create` does first (a front door that
    /// reads more of the request checks these before it).
    pub fn check_spec(id: &str, ack_timeout_secs: i32, max_unacked: i32) -> ApiResult<()> {
        validate_name("subscription", ErrorCode::SubscriptionInvalidObjectIdentifier, id)?;
        if !(1..=MAX_ACK_TIMEOUT_SECS).contains(&ack_timeout_secs) {
            return Err(ApiError::InvalidSubscription(format!(
                "ackTimeoutSeconds must be between 1 and {MAX_ACK_TIMEOUT_SECS}, got {ack_timeout_secs}"
            )));
        }
        if max_unacked < 1 {
            return Err(ApiError::InvalidSubscription(format!(
                "maxUnackedRecords must be at least 1, got {max_unacked}"
            )));
        }
        Ok(())
    }

    pub async fn create(&self, spec: SubscriptionSpec) -> ApiResult<SubscriptionMeta> {
        Self::check_spec(&spec.id, spec.ack_timeout_secs, spec.max_unacked)?;
        let _ddl = self.streams.ddl().lock().await;
        let stream = self
            .streams
            .get(&spec.stream)
            .map_err(|_| ApiError::SubscriptionOnMissingStream(spec.stream.clone()))?;
        let meta = SubscriptionMeta {
            id: spec.id,
            stream: spec.stream,
            ack_timeout_secs: spec.ack_timeout_secs,
            max_unacked: spec.max_unacked,
            offset: spec.offset,
            created_ms: now_ms(),
        };
        if meta.offset == StartOffset::Latest {
            // After every append acknowledged so far, through any node.
            let synced = futures::future::join_all(stream.shards.iter().map(|s| s.log.sync_tail())).await;
            synced.into_iter().collect::<Result<Vec<()>, _>>()?;
        }
        let start: Vec<ShardProgress> = stream
            .shards
            .iter()
            .map(|s| ShardProgress {
                shard_id: s.meta.id,
                next_lsn: match meta.offset {
                    StartOffset::Earliest => s.log.start_lsn(),
                    StartOffset::Latest => s.log.visible_lsn() + 1,
                },
            })
            .collect();
        self.meta
            .create_subscription(&meta, &start)
            .await
            .map_err(|e| match e {
                MetaError::AlreadyExists { .. } => ApiError::SubscriptionExists(meta.id.clone()),
                e => e.into(),
            })?;
        tracing::info!(subscription = %meta.id, stream = %meta.stream, "subscription created");
        drop(_ddl);
        // Its actor starts where the placement puts it: here at once, or on the node whose
        // placer runs next (which also retries if this pass fails).
        if let Err(e) = self.assignments.place_now().await {
            tracing::warn!(subscription = %meta.id, error = %e, "placing the new subscription failed; the placer retries");
        }
        Ok(meta)
    }

    /// The stored definition (its stream may have been archived since the actor started) and
    /// the committed progress of each shard.
    pub async fn get(&self, id: &str) -> ApiResult<(SubscriptionMeta, Vec<ShardProgress>)> {
        let meta = self
            .meta
            .get_subscription(id)
            .await?
            .ok_or_else(|| ApiError::SubscriptionNotFound(id.to_owned()))?;
        // Running here: what its actor holds (acks up to now); elsewhere: what was committed.
        let progress = match self.running.get(id) {
            Ok(handle) => handle.progress().await?,
            Err(_) => self.meta.get_progress(id).await?,
        };
        Ok((meta, progress))
    }

    pub async fn list(&self, prefix: &str) -> ApiResult<Vec<SubscriptionMeta>> {
        Ok(self.meta.list_subscriptions(prefix).await?)
    }

    pub async fn exists(&self, id: &str) -> ApiResult<bool> {
        Ok(self.meta.get_subscription(id).await?.is_some())
    }

    /// The running actor of `id` on this node, started now if the placement puts it here;
    /// WrongServer naming its node when it runs elsewhere.
    async fn here(&self, id: &str) -> ApiResult<Handle> {
        if let Ok(handle) = self.running.get(id) {
            return Ok(handle);
        }
        if !self.exists(id).await? {
            return Err(ApiError::SubscriptionNotFound(id.to_owned()));
        }
        if self.assignments.ensure_here(self, id).await? {
            return self.running.get(id);
        }
        Err(self
            .assignments
            .wrong_server(self, format!("subscription {id:?}"), id)
            .await)
    }

    pub async fn consumers(&self, id: &str) -> ApiResult<Vec<ConsumerInfo>> {
        self.here(id).await?.consumers().await
    }

    /// Where subscription `id` runs (or will), as its lookup answers.
    pub async fn locate(&self, id: &str) -> ApiResult<Option<crate::cluster::assign::Location>> {
        self.assignments.locate(self, id).await
    }

    pub async fn delete(&self, id: &str, force: bool) -> ApiResult<()> {
        // No pass of this node's placer may start or release it meanwhile (taken before the
        // DDL lock: a pass may wait on a connector task that waits on that lock).
        let _no_pass = self.assignments.exclusive().await;
        let _ddl = self.streams.ddl().lock().await;
        let Some(sub) = self.meta.get_subscription(id).await? else {
            return Err(ApiError::SubscriptionNotFound(id.to_owned()));
        };
        let elsewhere = self.locate(id).await?.filter(|l| l.node != self.assignments.me());
        // A subscription whose stream was gone at start-up has no actor; it can still go.
        let mut on_other_node = false;
        if let Ok(handle) = self.running.get(id) {
            handle.stop(force).await?;
            self.running.remove(id);
        } else if let Some(owner) = elsewhere {
            // Running on another node: only its node knows its consumers.
            if !force {
                return Err(ApiError::WrongServer {
                    what: format!("subscription {id:?}"),
                    owner: Some(format!("{}:{}", owner.host, owner.port)),
                });
            }
            on_other_node = true;
        }
        // The data of a force-deleted stream goes with its last subscription (one metastore
        // step; its files after it, or as orphans at the next start).
        let removed = self.meta.delete_subscription(id).await?;
        self.assignments.forget_reads(self);
        if on_other_node {
            // Its node's placer stops the actor when it sees the subscription gone; taking
            // the ownership makes sure nothing it commits meanwhile lands.
            let held = self.assignments.fence(self, id).await?;
            self.assignments.unfence(&held).await;
        }
        if let Some(shards) = removed.filter(|s| !s.is_empty()) {
            self.streams
                .drop_archived(&sub.stream, shards.iter().map(|s| s.id).collect())
                .await;
        }
        tracing::info!(subscription = %id, "subscription deleted");
        Ok(())
    }

    /// Joins a consumer to a subscription, acking `acks` first (as StreamingFetch's first
    /// request may).
    pub async fn open_session(
        &self,
        id: &str,
        info: ConsumerInfo,
        acks: Vec<hstream_proto::RecordId>,
    ) -> ApiResult<Session> {
        if info.name.is_empty() {
            return Err(ApiError::InvalidRequest("consumerName is empty".into()));
        }
        let handle = self.here(id).await?;
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx): (FetchTx, _) = mpsc::channel(CONSUMER_BUFFER);
        let closed = CancellationToken::new();
        // Armed before joining: however this session ends, the subscription hears that the
        // consumer left.
        let leave = Leave {
            handle: handle.clone(),
            conn,
            tasks: self.tasks.clone(),
        };
        handle.join(info, conn, acks, tx, closed.clone()).await?;
        Ok(Session {
            handle,
            conn,
            deliveries: rx,
            closed,
            leave,
        })
    }
}

#[async_trait::async_trait]
impl Hosted for Subscriptions {
    fn prefix(&self) -> &'static str {
        "subscription/"
    }

    async fn stored(&self) -> ApiResult<std::collections::BTreeSet<String>> {
        Ok(self
            .meta
            .list_subscriptions("")
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect())
    }

    fn running(&self) -> std::collections::BTreeMap<String, Ownership> {
        self.running
            .all()
            .into_iter()
            .filter_map(|(id, h)| Some((id, h.held?)))
            .collect()
    }

    async fn start(&self, id: &str, held: Ownership) -> ApiResult<()> {
        let sub = self
            .meta
            .get_subscription(id)
            .await?
            .ok_or_else(|| ApiError::SubscriptionNotFound(id.to_owned()))?;
        // Its stream, even archived by a forced delete (this node's catalog follows every
        // node's changes).
        let Some(stream) = self.streams.catalog().any_stream(&sub.stream) else {
            return Err(ApiError::StreamNotFound(sub.stream));
        };
        let logs = stream.shards.iter().map(|s| s.log.clone()).collect();
        self.running
            .start(
                sub,
                self.meta.clone(),
                Some(held),
                logs,
                &self.tasks,
                self.shutdown.clone(),
            )
            .await?;
        tracing::info!(subscription = %id, "subscription runs here");
        Ok(())
    }

    async fn stop(&self, id: &str, how: crate::cluster::assign::Stop) {
        use crate::cluster::assign::Stop;
        if let Ok(handle) = self.running.get(id) {
            match how {
                Stop::Deleted => {
                    let _ = handle.stop(true).await;
                }
                Stop::Moved => handle.hand_over().await,
                // Its last commit is fenced out or cannot reach the metastore: not waited for.
                Stop::Lost => {
                    self.tasks.spawn(async move { handle.hand_over().await });
                }
            }
        }
        self.running.remove(id);
    }
}
