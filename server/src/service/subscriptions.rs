//! Subscription RPCs: requests translated into the subscriptions service's terms, and the
//! StreamingFetch session of one consumer (its acks forwarded until it goes away).

use hstream_proto as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::HStreamService;
use super::read::timestamp;
use crate::catalog::ARCHIVED_PREFIX;
use crate::error::{ApiError, ApiResult};
use crate::meta::{StartOffset, SubscriptionMeta};
use crate::subscription::{ConsumerInfo, Delivery, SubscriptionSpec, Subscriptions};

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
        creation_time: Some(timestamp(m.created_ms)),
    }
}

impl HStreamService {
    pub(super) async fn create_subscription_rpc(&self, req: pb::Subscription) -> ApiResult<pb::Subscription> {
        // The id and limits are checked before the offset, as the request reads.
        Subscriptions::check_spec(&req.subscription_id, req.ack_timeout_seconds, req.max_unacked_records)?;
        let offset = match pb::SpecialOffset::try_from(req.offset) {
            Ok(pb::SpecialOffset::Earliest) => StartOffset::Earliest,
            Ok(pb::SpecialOffset::Latest) => StartOffset::Latest,
            Err(_) => return Err(ApiError::InvalidSubscription(format!("unknown offset {}", req.offset))),
        };
        let spec = SubscriptionSpec {
            id: req.subscription_id,
            stream: req.stream_name,
            ack_timeout_secs: req.ack_timeout_seconds,
            max_unacked: req.max_unacked_records,
            offset,
        };
        Ok(subscription_pb(&self.api.subscriptions.create(spec).await?))
    }

    pub(super) async fn get_subscription_rpc(&self, id: &str) -> ApiResult<pb::GetSubscriptionResponse> {
        let (meta, progress) = self.api.subscriptions.get(id).await?;
        let offsets = progress
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

    pub(super) async fn list_subscriptions_rpc(&self, prefix: &str) -> ApiResult<pb::ListSubscriptionsResponse> {
        let subs = self.api.subscriptions.list(prefix).await?;
        Ok(pb::ListSubscriptionsResponse {
            subscription: subs.iter().map(subscription_pb).collect(),
        })
    }

    pub(super) async fn list_consumers_rpc(&self, id: &str) -> ApiResult<pb::ListConsumersResponse> {
        let consumers = self.api.subscriptions.consumers(id).await?;
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

    /// Opens one consumer's session and forwards its acks until it goes away, is dropped by the
    /// subscription, or the server shuts down.
    pub(super) async fn streaming_fetch_rpc(
        &self,
        mut inbound: Streaming<pb::StreamingFetchRequest>,
        uri: String,
        user_agent: String,
    ) -> ApiResult<ReceiverStream<Delivery>> {
        let first = inbound
            .message()
            .await
            .map_err(|e| ApiError::InvalidRequest(format!("reading the first StreamingFetchRequest: {e}")))?
            .ok_or_else(|| ApiError::InvalidRequest("StreamingFetch sent no request".into()))?;
        let info = ConsumerInfo {
            name: first.consumer_name.clone(),
            uri,
            user_agent,
        };
        let session = self
            .api
            .subscriptions
            .open_session(&first.subscription_id, info, first.ack_ids)
            .await?;
        let (handle, conn, closed, leave) = (session.handle, session.conn, session.closed, session.leave);
        let shutdown = self.api.shutdown.clone();
        self.api.tasks.spawn(async move {
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
        Ok(ReceiverStream::new(session.deliveries))
    }
}
