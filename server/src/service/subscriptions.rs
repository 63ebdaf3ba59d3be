//! Subscription RPCs: create, describe, list, delete, consumers, and the StreamingFetch session
//! of one consumer.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hstream_proto as pb;
use hstream_proto::ErrorCode;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use super::ServerCtx;
use super::read::now_ms;
use crate::catalog::{ARCHIVED_PREFIX, validate_name};
use crate::error::{ApiError, ApiResult};
use crate::meta::{MetaError, ShardProgress, StartOffset, SubscriptionMeta};
use crate::subscription::{CONSUMER_BUFFER, ConsumerInfo};

/// HStreamDB's bounds on ackTimeoutSeconds.
const MAX_ACK_TIMEOUT_SECS: i32 = 36_000;

fn subscription_pb(m: &SubscriptionMeta) -> pb::Subscription {
    // Subscriptions of a force-deleted stream show its archived name as HStreamDB does.
    let stream_name = if m.stream.starts_with(ARCHIVED_PREFIX) {
        ARCHIVED_PREFIX.to_owned()
    } else {
        m.stream.clone()
    };
    pb::Subscription {
        subscription_id: m.id.clone(),
        stream_name,
        ack_timeout_seconds: m.ack_timeout_secs,
        max_unacked_records: m.max_unacked,
        offset: match m.offset {
            StartOffset::Earliest => pb::SpecialOffset::Earliest as i32,
            StartOffset::Latest => pb::SpecialOffset::Latest as i32,
        },
        creation_time: Some(super::read::timestamp(m.created_ms)),
    }
}

impl ServerCtx {
    /// Starts the actors of every subscription in the MetaStore (at node start).
    pub async fn start_subscriptions(&self) -> ApiResult<()> {
        for sub in self.meta.list_subscriptions("").await? {
            let Some(stream) = self.catalog.any_stream(&sub.stream) else {
                tracing::error!(subscription = %sub.id, stream = %sub.stream, "stream of subscription is missing");
                continue;
            };
            let logs = stream.shards.iter().map(|s| s.log.clone()).collect();
            self.subscriptions
                .start(sub, self.meta.clone(), logs, &self.tasks, self.shutdown.clone())
                .await?;
        }
        Ok(())
    }

    pub async fn create_subscription(&self, req: pb::Subscription) -> ApiResult<pb::Subscription> {
        validate_name(
            "subscription",
            ErrorCode::SubscriptionInvalidObjectIdentifier,
            &req.subscription_id,
        )?;
        if !(1..=MAX_ACK_TIMEOUT_SECS).contains(&req.ack_timeout_seconds) {
            return Err(ApiError::InvalidSubscription(format!(
                "ackTimeoutSeconds must be between 1 and {MAX_ACK_TIMEOUT_SECS}, got {}",
                req.ack_timeout_seconds
            )));
        }
        if req.max_unacked_records < 1 {
            return Err(ApiError::InvalidSubscription(format!(
                "maxUnackedRecords must be at least 1, got {}",
                req.max_unacked_records
            )));
        }
        let offset = match pb::SpecialOffset::try_from(req.offset) {
            Ok(pb::SpecialOffset::Earliest) => StartOffset::Earliest,
            Ok(pb::SpecialOffset::Latest) => StartOffset::Latest,
            Err(_) => return Err(ApiError::InvalidSubscription(format!("unknown offset {}", req.offset))),
        };
        let _ddl = self.ddl.lock().await;
        let stream = self
            .catalog
            .stream(&req.stream_name)
            .map_err(|_| ApiError::SubscriptionOnMissingStream(req.stream_name.clone()))?;
        let meta = SubscriptionMeta {
            id: req.subscription_id.clone(),
            stream: req.stream_name.clone(),
            ack_timeout_secs: req.ack_timeout_seconds,
            max_unacked: req.max_unacked_records,
            offset,
            created_ms: now_ms(),
        };
        let start: Vec<ShardProgress> = stream
            .shards
            .iter()
            .map(|s| ShardProgress {
                shard_id: s.meta.id,
                next_lsn: match offset {
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
        let logs = stream.shards.iter().map(|s| s.log.clone()).collect();
        self.subscriptions
            .start(
                meta.clone(),
                self.meta.clone(),
                logs,
                &self.tasks,
                self.shutdown.clone(),
            )
            .await?;
        tracing::info!(subscription = %meta.id, stream = %meta.stream, "subscription created");
        Ok(subscription_pb(&meta))
    }

    pub async fn get_subscription(&self, id: &str) -> ApiResult<pb::GetSubscriptionResponse> {
        let handle = self.subscriptions.get(id)?;
        // The stored definition: its stream may have been archived since the actor started.
        let meta = self
            .meta
            .get_subscription(id)
            .await?
            .ok_or_else(|| ApiError::SubscriptionNotFound(id.to_owned()))?;
        let offsets = handle
            .progress()
            .await?
            .into_iter()
            // The last fully acked batch, as HStreamDB's checkpoint reports it.
            .map(|p| pb::SubscriptionOffset {
                shard_id: p.shard_id,
                batch_id: p.next_lsn.saturating_sub(1),
            })
            .collect();
        Ok(pb::GetSubscriptionResponse {
            subscription: Some(subscription_pb(&meta)),
            offsets,
        })
    }

    pub async fn list_subscriptions(&self, prefix: &str) -> ApiResult<pb::ListSubscriptionsResponse> {
        let subs = self.meta.list_subscriptions(prefix).await?;
        Ok(pb::ListSubscriptionsResponse {
            subscription: subs.iter().map(subscription_pb).collect(),
        })
    }

    pub fn subscription_exists(&self, id: &str) -> bool {
        self.subscriptions.get(id).is_ok()
    }

    pub async fn list_consumers(&self, id: &str) -> ApiResult<pb::ListConsumersResponse> {
        let consumers = self.subscriptions.get(id)?.consumers().await?;
        Ok(pb::ListConsumersResponse {
            consumers: consumers
                .into_iter()
                .map(|c| pb::Consumer {
                    name: c.name,
                    uri: c.uri,
                    user_agent: c.user_agent,
                })
                .collect(),
        })
    }

    pub async fn delete_subscription(&self, req: pb::DeleteSubscriptionRequest) -> ApiResult<()> {
        let _ddl = self.ddl.lock().await;
        let Some(sub) = self.meta.get_subscription(&req.subscription_id).await? else {
            return Err(ApiError::SubscriptionNotFound(req.subscription_id));
        };
        // A subscription whose stream was gone at start-up has no actor; it can still go.
        if let Ok(handle) = self.subscriptions.get(&req.subscription_id) {
            handle.stop(req.force).await?;
            self.subscriptions.remove(&req.subscription_id);
        }
        // The data of a force-deleted stream goes with its last subscription (one metastore
        // step; its files after it, or as orphans at the next start).
        let removed = self.meta.delete_subscription(&req.subscription_id).await?;
        if let Some(shards) = removed.filter(|s| !s.is_empty()) {
            self.catalog.remove(&sub.stream);
            self.drop_shard_files(shards.iter().map(|s| s.id).collect()).await;
        }
        tracing::info!(subscription = %req.subscription_id, "subscription deleted");
        Ok(())
    }

    /// Opens one consumer's session: registers it with the subscription and forwards its acks
    /// until it goes away, is dropped by the subscription, or the server shuts down.
    pub async fn streaming_fetch(
        self: &Arc<Self>,
        mut inbound: Streaming<pb::StreamingFetchRequest>,
        uri: String,
        user_agent: String,
    ) -> ApiResult<ReceiverStream<Result<pb::StreamingFetchResponse, tonic::Status>>> {
        let first = inbound
            .message()
            .await
            .map_err(|e| ApiError::InvalidRequest(format!("reading the first StreamingFetchRequest: {e}")))?
            .ok_or_else(|| ApiError::InvalidRequest("StreamingFetch sent no request".into()))?;
        let handle = self.subscriptions.get(&first.subscription_id)?;
        if first.consumer_name.is_empty() {
            return Err(ApiError::InvalidRequest("consumerName is empty".into()));
        }
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(CONSUMER_BUFFER);
        let closed = CancellationToken::new();
        let info = ConsumerInfo {
            name: first.consumer_name.clone(),
            uri,
            user_agent,
        };
        // Armed before joining: however this session ends, even if this future is dropped
        // mid-way, the subscription hears that the consumer left.
        let leave = LeaveOnDrop {
            handle: handle.clone(),
            conn,
            tasks: self.tasks.clone(),
        };
        handle.join(info, conn, first.ack_ids, tx, closed.clone()).await?;
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            let _leave = leave;
            loop {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => {
                            if !req.ack_ids.is_empty() {
                                handle.ack(conn, req.ack_ids).await;
                            }
                        }
                        // The client finished or the connection broke.
                        Ok(None) | Err(_) => break,
                    },
                    _ = closed.cancelled() => break,
                    _ = shutdown.cancelled() => break,
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

struct LeaveOnDrop {
    handle: crate::subscription::Handle,
    conn: u64,
    tasks: tokio_util::task::TaskTracker,
}

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        self.handle.leave_now(self.conn, &self.tasks);
    }
}
