//! The `hstream.server.HStreamApi` gRPC service: the edge where protobuf requests become calls
//! of the domain services (`streams`, `subscription`, `readers`, `connectors`) and their answers
//! become responses and statuses. One file per area translates; the work is in the services.

mod connectors;
mod queries;
pub mod read;
mod readers;
mod streams;
mod subscriptions;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use hstream_proto as pb;
use hstream_proto::h_stream_api_server::HStreamApi;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::connectors::Connectors;
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::readers::Readers;
use crate::streams::Streams;
use crate::subscription::Subscriptions;
use read::{ShardCursor, pump};

pub use streams::{parse_record_id, stream_pb};

/// This node as clients must reach it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: u32,
    pub host: String,
    pub port: u32,
}

/// What both front doors (this gRPC service and `rest.rs`) serve: the domain services, which
/// `node.rs` builds with what each needs, and what the doors themselves need.
pub struct Api {
    pub node: NodeInfo,
    pub started: Instant,
    pub streams: Arc<Streams>,
    pub subscriptions: Arc<Subscriptions>,
    pub readers: Arc<Readers>,
    pub connectors: Arc<Connectors>,
    pub queries: Arc<crate::connectors::queries::Queries>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server begins to shut down; long-lived streams end on it.
    pub shutdown: CancellationToken,
    /// Every request-spawned task (server-stream pumps, fetch sessions), awaited at shutdown.
    pub tasks: TaskTracker,
    /// The cluster's gossip (`--gossip-port`), or `None` for a node running alone.
    pub membership: Option<Arc<crate::cluster::membership::Membership>>,
    /// Where resources run, for lookups.
    pub assignments: Arc<crate::cluster::assign::Assignments>,
}

impl Api {
    /// The node at `at`, as lookups answer (with this node's version when it is this node).
    fn node_at(&self, at: crate::cluster::assign::Location) -> pb::ServerNode {
        if at.node == self.node.id {
            return self.server_node();
        }
        pb::ServerNode {
            id: at.node,
            host: at.host,
            port: at.port,
            version: None,
        }
    }

    fn server_node(&self) -> pb::ServerNode {
        pb::ServerNode {
            id: self.node.id,
            host: self.node.host.clone(),
            port: self.node.port,
            version: Some(pb::HStreamVersion {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                commit: option_env!("HSTREAM_COMMIT").unwrap_or("").to_owned(),
            }),
        }
    }
}

#[derive(Clone)]
pub struct HStreamService {
    api: Arc<Api>,
}

impl HStreamService {
    pub fn new(api: Arc<Api>) -> Self {
        HStreamService { api }
    }
}

type RpcResult<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn ok<T>(r: ApiResult<T>) -> RpcResult<T> {
    r.map(Response::new).map_err(Status::from)
}

fn unimplemented<T>(what: &'static str) -> RpcResult<T> {
    Err(ApiError::Unimplemented(what).into())
}

/// Starts a pump task feeding a server stream; the stream ends when the pump returns.
fn spawn_pump<R: Send + 'static>(
    api: &Api,
    cursors: Vec<ShardCursor>,
    max_batches: u64,
    wrap: fn(Vec<pb::ReceivedRecord>) -> R,
) -> BoxStream<R> {
    let (tx, rx) = mpsc::channel(4);
    api.tasks
        .spawn(pump(api.shutdown.clone(), cursors, max_batches, tx, wrap));
    Box::pin(ReceiverStream::new(rx))
}

impl HStreamService {
    async fn shard_cursor(
        &self,
        shard: crate::catalog::ShardEntry,
        from: read::From,
        until: read::Until,
    ) -> ApiResult<ShardCursor> {
        let next = read::resolve_from(&*shard.log, from).await?;
        Ok(ShardCursor::new(shard, next, until))
    }

    async fn single_shard_cursor(
        &self,
        shard: crate::catalog::ShardEntry,
        from: Option<&pb::ShardOffset>,
        until: Option<&pb::ShardOffset>,
    ) -> ApiResult<ShardCursor> {
        let start = read::shard_from(shard.meta.id, from)?;
        // A LATEST or timed end includes appends acknowledged through other nodes (a LATEST
        // start is synced where it is resolved).
        if read::shard_until_needs_tail(until) {
            shard.log.sync_tail().await?;
        }
        let until = read::shard_until(&*shard.log, until)?;
        self.shard_cursor(shard, start, until).await
    }
}

#[tonic::async_trait]
impl HStreamApi for HStreamService {
    async fn echo(&self, req: Request<pb::EchoRequest>) -> RpcResult<pb::EchoResponse> {
        Ok(Response::new(pb::EchoResponse {
            msg: req.into_inner().msg,
        }))
    }

    async fn create_stream(&self, req: Request<pb::Stream>) -> RpcResult<pb::Stream> {
        ok(self.create_stream_rpc(req.into_inner()).await)
    }

    async fn delete_stream(&self, req: Request<pb::DeleteStreamRequest>) -> RpcResult<()> {
        ok(self.delete_stream_rpc(req.into_inner()).await)
    }

    async fn trim_stream(&self, req: Request<pb::TrimStreamRequest>) -> RpcResult<()> {
        ok(self.trim_stream_rpc(req.into_inner()).await)
    }

    async fn trim_shards(&self, req: Request<pb::TrimShardsRequest>) -> RpcResult<pb::TrimShardsResponse> {
        ok(self.trim_shards_rpc(req.into_inner()).await)
    }

    async fn get_stream(&self, req: Request<pb::GetStreamRequest>) -> RpcResult<pb::GetStreamResponse> {
        ok(self.get_stream_rpc(&req.into_inner().name))
    }

    async fn list_streams(&self, _req: Request<pb::ListStreamsRequest>) -> RpcResult<pb::ListStreamsResponse> {
        Ok(Response::new(self.list_streams_rpc("")))
    }

    async fn list_streams_with_prefix(
        &self,
        req: Request<pb::ListStreamsWithPrefixRequest>,
    ) -> RpcResult<pb::ListStreamsResponse> {
        Ok(Response::new(self.list_streams_rpc(&req.into_inner().prefix)))
    }

    async fn lookup_shard(&self, req: Request<pb::LookupShardRequest>) -> RpcResult<pb::LookupShardResponse> {
        // Any node appends to any shard (the store is shared); the ring spreads the shards'
        // clients over the nodes.
        let shard_id = req.into_inner().shard_id;
        let at = self.api.assignments.spread(&format!("shard/{shard_id}"));
        Ok(Response::new(pb::LookupShardResponse {
            shard_id,
            server_node: Some(self.api.node_at(at)),
        }))
    }

    async fn append(&self, req: Request<pb::AppendRequest>) -> RpcResult<pb::AppendResponse> {
        ok(self.append_rpc(req.into_inner()).await)
    }

    async fn get_tail_record_id(
        &self,
        req: Request<pb::GetTailRecordIdRequest>,
    ) -> RpcResult<pb::GetTailRecordIdResponse> {
        ok(self.get_tail_record_id_rpc(req.into_inner()).await)
    }

    async fn list_shards(&self, req: Request<pb::ListShardsRequest>) -> RpcResult<pb::ListShardsResponse> {
        ok(self.list_shards_rpc(&req.into_inner().stream_name))
    }

    async fn trim_shard(&self, req: Request<pb::TrimShardRequest>) -> RpcResult<()> {
        ok(self.trim_shard_rpc(req.into_inner()).await)
    }

    async fn create_shard_reader(
        &self,
        req: Request<pb::CreateShardReaderRequest>,
    ) -> RpcResult<pb::CreateShardReaderResponse> {
        ok(self.create_shard_reader_rpc(req.into_inner()).await)
    }

    async fn lookup_shard_reader(
        &self,
        req: Request<pb::LookupShardReaderRequest>,
    ) -> RpcResult<pb::LookupShardReaderResponse> {
        let reader_id = req.into_inner().reader_id;
        let at = self.api.assignments.spread(&reader_resource(&reader_id));
        Ok(Response::new(pb::LookupShardReaderResponse {
            reader_id,
            server_node: Some(self.api.node_at(at)),
        }))
    }

    async fn read_shard(&self, req: Request<pb::ReadShardRequest>) -> RpcResult<pb::ReadShardResponse> {
        ok(self.read_shard_rpc(req.into_inner()).await)
    }

    type ReadShardStreamStream = BoxStream<pb::ReadShardStreamResponse>;

    async fn read_shard_stream(
        &self,
        req: Request<pb::ReadShardStreamRequest>,
    ) -> RpcResult<Self::ReadShardStreamStream> {
        let req = req.into_inner();
        let shard = if req.stream_name.is_empty() {
            self.api.streams.catalog().shard(req.shard_id)
        } else {
            self.api.streams.catalog().shard_of(&req.stream_name, req.shard_id)
        }?;
        let cursor = self
            .single_shard_cursor(shard, req.from.as_ref(), req.until.as_ref())
            .await?;
        Ok(Response::new(spawn_pump(
            &self.api,
            vec![cursor],
            req.max_read_batches,
            |r| pb::ReadShardStreamResponse { received_records: r },
        )))
    }

    async fn list_shard_readers(
        &self,
        _req: Request<pb::ListShardReadersRequest>,
    ) -> RpcResult<pb::ListShardReadersResponse> {
        ok(self.list_shard_readers_rpc().await)
    }

    async fn delete_shard_reader(&self, req: Request<pb::DeleteShardReaderRequest>) -> RpcResult<()> {
        ok(self.delete_shard_reader_rpc(req.into_inner()).await)
    }

    type ReadStreamStream = BoxStream<pb::ReadStreamResponse>;

    async fn read_stream(&self, req: Request<pb::ReadStreamRequest>) -> RpcResult<Self::ReadStreamStream> {
        let req = req.into_inner();
        let stream = self.api.streams.catalog().stream(&req.stream_name)?;
        let from = read::stream_from(req.from.as_ref())?;
        if read::stream_until_needs_tail(req.until.as_ref()) {
            let synced = futures::future::join_all(stream.shards.iter().map(|s| s.log.sync_tail())).await;
            synced
                .into_iter()
                .collect::<Result<Vec<()>, _>>()
                .map_err(ApiError::from)?;
        }
        let mut cursors = Vec::with_capacity(stream.shards.len());
        for shard in &stream.shards {
            let until = read::stream_until(&*shard.log, req.until.as_ref())?;
            cursors.push(self.shard_cursor(shard.clone(), from, until).await?);
        }
        Ok(Response::new(spawn_pump(
            &self.api,
            cursors,
            req.max_read_batches,
            |r| pb::ReadStreamResponse { received_records: r },
        )))
    }

    type ReadSingleShardStreamStream = BoxStream<pb::ReadSingleShardStreamResponse>;

    async fn read_single_shard_stream(
        &self,
        req: Request<pb::ReadSingleShardStreamRequest>,
    ) -> RpcResult<Self::ReadSingleShardStreamStream> {
        let req = req.into_inner();
        let stream = self.api.streams.catalog().stream(&req.stream_name)?;
        if stream.shards.len() != 1 {
            return Err(ApiError::TooManyShards(req.stream_name).into());
        }
        let cursor = self
            .single_shard_cursor(stream.shards[0].clone(), req.from.as_ref(), req.until.as_ref())
            .await?;
        Ok(Response::new(spawn_pump(
            &self.api,
            vec![cursor],
            req.max_read_batches,
            |r| pb::ReadSingleShardStreamResponse { received_records: r },
        )))
    }

    type ReadStreamByKeyStream = BoxStream<pb::ReadStreamByKeyResponse>;

    async fn read_stream_by_key(
        &self,
        _req: Request<Streaming<pb::ReadStreamByKeyRequest>>,
    ) -> RpcResult<Self::ReadStreamByKeyStream> {
        unimplemented("ReadStreamByKey")
    }

    async fn create_subscription(&self, req: Request<pb::Subscription>) -> RpcResult<pb::Subscription> {
        ok(self.create_subscription_rpc(req.into_inner()).await)
    }

    async fn get_subscription(
        &self,
        req: Request<pb::GetSubscriptionRequest>,
    ) -> RpcResult<pb::GetSubscriptionResponse> {
        ok(self.get_subscription_rpc(&req.into_inner().id).await)
    }

    async fn list_subscriptions(
        &self,
        _req: Request<pb::ListSubscriptionsRequest>,
    ) -> RpcResult<pb::ListSubscriptionsResponse> {
        ok(self.list_subscriptions_rpc("").await)
    }

    async fn list_subscriptions_with_prefix(
        &self,
        req: Request<pb::ListSubscriptionsWithPrefixRequest>,
    ) -> RpcResult<pb::ListSubscriptionsResponse> {
        ok(self.list_subscriptions_rpc(&req.into_inner().prefix).await)
    }

    async fn list_consumers(&self, req: Request<pb::ListConsumersRequest>) -> RpcResult<pb::ListConsumersResponse> {
        ok(self.list_consumers_rpc(&req.into_inner().subscription_id).await)
    }

    async fn check_subscription_exist(
        &self,
        req: Request<pb::CheckSubscriptionExistRequest>,
    ) -> RpcResult<pb::CheckSubscriptionExistResponse> {
        let exists = self.api.subscriptions.exists(&req.into_inner().subscription_id).await?;
        Ok(Response::new(pb::CheckSubscriptionExistResponse { exists }))
    }

    async fn delete_subscription(&self, req: Request<pb::DeleteSubscriptionRequest>) -> RpcResult<()> {
        let req = req.into_inner();
        ok(self.api.subscriptions.delete(&req.subscription_id, req.force).await)
    }

    async fn lookup_subscription(
        &self,
        req: Request<pb::LookupSubscriptionRequest>,
    ) -> RpcResult<pb::LookupSubscriptionResponse> {
        let id = req.into_inner().subscription_id;
        let node = match self.api.assignments.lookup(&*self.api.subscriptions, &id).await? {
            Some(at) => self.api.node_at(at),
            None => return Err(ApiError::SubscriptionNotFound(id).into()),
        };
        Ok(Response::new(pb::LookupSubscriptionResponse {
            subscription_id: id,
            server_node: Some(node),
        }))
    }

    type StreamingFetchStream = BoxStream<pb::StreamingFetchResponse>;

    async fn streaming_fetch(
        &self,
        req: Request<Streaming<pb::StreamingFetchRequest>>,
    ) -> RpcResult<Self::StreamingFetchStream> {
        let uri = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let user_agent = req
            .metadata()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let stream = self.streaming_fetch_rpc(req.into_inner(), uri, user_agent).await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn describe_cluster(&self, _req: Request<()>) -> RpcResult<pb::DescribeClusterResponse> {
        let me = self.api.server_node();
        // Alone: this node. In a cluster: every member the gossip knows, with its state;
        // `serverNodes` holds those that serve (alive or suspected), as HStreamDB's does.
        let statuses: Vec<pb::ServerNodeStatus> = match &self.api.membership {
            None => vec![pb::ServerNodeStatus {
                node: Some(me.clone()),
                state: pb::NodeState::Running as i32,
            }],
            Some(m) => {
                use crate::cluster::membership::State;
                let mut view: Vec<_> = m.view().into_values().collect();
                view.sort_by_key(|(n, _)| n.id);
                view.into_iter()
                    .map(|(n, state)| pb::ServerNodeStatus {
                        node: Some(pb::ServerNode {
                            // Only this node's version is known here.
                            version: (n.id == me.id).then(|| me.version.clone()).flatten(),
                            id: n.id,
                            host: n.host,
                            port: n.port,
                        }),
                        state: match state {
                            State::Alive => pb::NodeState::Running,
                            State::Suspect => pb::NodeState::Unavailable,
                            State::Dead | State::Left => pb::NodeState::Dead,
                        } as i32,
                    })
                    .collect()
            }
        };
        let serving = statuses
            .iter()
            .filter(|s| s.state != pb::NodeState::Dead as i32)
            .filter_map(|s| s.node.clone())
            .collect();
        Ok(Response::new(pb::DescribeClusterResponse {
            protocol_version: "0.1.0".to_owned(),
            server_nodes: serving,
            server_nodes_status: statuses,
            cluster_up_time: self.api.started.elapsed().as_secs(),
        }))
    }

    async fn lookup_resource(&self, req: Request<pb::LookupResourceRequest>) -> RpcResult<pb::ServerNode> {
        let req = req.into_inner();
        let id = req.res_id;
        let spread = |what: &str| Ok(Response::new(self.api.node_at(self.api.assignments.spread(what))));
        match pb::ResourceType::try_from(req.res_type) {
            Ok(pb::ResourceType::ResStream) => spread(&format!("stream/{id}")),
            Ok(pb::ResourceType::ResShard) => spread(&format!("shard/{id}")),
            Ok(pb::ResourceType::ResShardReader) => spread(&reader_resource(&id)),
            Ok(pb::ResourceType::ResSubscription) => {
                match self.api.assignments.lookup(&*self.api.subscriptions, &id).await? {
                    Some(at) => Ok(Response::new(self.api.node_at(at))),
                    None => Err(ApiError::SubscriptionNotFound(id).into()),
                }
            }
            Ok(pb::ResourceType::ResConnector) => {
                match self.api.assignments.lookup(&*self.api.connectors, &id).await? {
                    Some(at) => Ok(Response::new(self.api.node_at(at))),
                    None => Err(ApiError::ConnectorNotFound(id).into()),
                }
            }
            // Queries and views do not exist here yet: this node answers for them.
            // A query runs where its task is placed, as a connector's does.
            Ok(pb::ResourceType::ResQuery) => {
                let task = crate::connectors::queries::task_name(&id);
                match self.api.assignments.lookup(&*self.api.connectors, &task).await? {
                    Some(at) => Ok(Response::new(self.api.node_at(at))),
                    None => Err(ApiError::Query {
                        code: pb::ErrorCode::QueryNotFound,
                        message: format!("query {id:?} not found"),
                    }
                    .into()),
                }
            }
            Ok(pb::ResourceType::ResView) => Ok(Response::new(self.api.server_node())),
            Err(_) => Err(ApiError::InvalidRequest(format!("unknown resType {}", req.res_type)).into()),
        }
    }

    async fn lookup_key(&self, req: Request<pb::LookupKeyRequest>) -> RpcResult<pb::ServerNode> {
        let key = req.into_inner().partition_key;
        let at = self.api.assignments.spread(&format!("key/{key}"));
        Ok(Response::new(self.api.node_at(at)))
    }

    async fn send_admin_command(&self, _req: Request<pb::AdminCommandRequest>) -> RpcResult<pb::AdminCommandResponse> {
        unimplemented("SendAdminCommand")
    }

    async fn per_stream_time_series_stats(
        &self,
        _req: Request<pb::PerStreamTimeSeriesStatsRequest>,
    ) -> RpcResult<pb::PerStreamTimeSeriesStatsResponse> {
        unimplemented("PerStreamTimeSeriesStats")
    }

    async fn per_stream_time_series_stats_all(
        &self,
        _req: Request<pb::PerStreamTimeSeriesStatsAllRequest>,
    ) -> RpcResult<pb::PerStreamTimeSeriesStatsAllResponse> {
        unimplemented("PerStreamTimeSeriesStatsAll")
    }

    async fn get_stats(&self, _req: Request<pb::GetStatsRequest>) -> RpcResult<pb::GetStatsResponse> {
        unimplemented("GetStats")
    }

    async fn execute_query(&self, _req: Request<pb::CommandQuery>) -> RpcResult<pb::CommandQueryResponse> {
        unimplemented("ExecuteQuery")
    }

    async fn create_query(&self, req: Request<pb::CreateQueryRequest>) -> RpcResult<pb::Query> {
        let req = req.into_inner();
        ok(self.create_query_rpc(&req.sql, &req.query_name).await)
    }

    async fn create_query_with_namespace(
        &self,
        _req: Request<pb::CreateQueryWithNamespaceRequest>,
    ) -> RpcResult<pb::Query> {
        unimplemented("CreateQueryWithNamespace")
    }

    async fn list_queries(&self, _req: Request<pb::ListQueriesRequest>) -> RpcResult<pb::ListQueriesResponse> {
        ok(self.list_queries_rpc().await)
    }

    async fn get_query(&self, req: Request<pb::GetQueryRequest>) -> RpcResult<pb::Query> {
        ok(self.get_query_rpc(&req.into_inner().id).await)
    }

    async fn terminate_query(&self, req: Request<pb::TerminateQueryRequest>) -> RpcResult<()> {
        ok(self.api.queries.terminate(&req.into_inner().query_id).await)
    }

    async fn delete_query(&self, req: Request<pb::DeleteQueryRequest>) -> RpcResult<()> {
        ok(self.api.queries.delete(&req.into_inner().id).await)
    }

    async fn resume_query(&self, req: Request<pb::ResumeQueryRequest>) -> RpcResult<()> {
        ok(self.api.queries.resume(&req.into_inner().id).await)
    }

    async fn pause_query(&self, req: Request<pb::PauseQueryRequest>) -> RpcResult<()> {
        ok(self.api.queries.pause(&req.into_inner().id).await)
    }

    async fn parse_sql(&self, _req: Request<pb::ParseSqlRequest>) -> RpcResult<pb::ParseSqlResponse> {
        unimplemented("ParseSql")
    }

    async fn register_schema(&self, _req: Request<pb::Schema>) -> RpcResult<()> {
        unimplemented("RegisterSchema")
    }

    async fn get_schema(&self, _req: Request<pb::GetSchemaRequest>) -> RpcResult<pb::Schema> {
        unimplemented("GetSchema")
    }

    async fn unregister_schema(&self, _req: Request<pb::UnregisterSchemaRequest>) -> RpcResult<()> {
        unimplemented("UnregisterSchema")
    }

    async fn create_connector(&self, req: Request<pb::CreateConnectorRequest>) -> RpcResult<pb::Connector> {
        ok(self.create_connector_rpc(req.into_inner()).await)
    }

    async fn list_connectors(&self, _req: Request<pb::ListConnectorsRequest>) -> RpcResult<pb::ListConnectorsResponse> {
        ok(self.list_connectors_rpc().await)
    }

    async fn get_connector(&self, req: Request<pb::GetConnectorRequest>) -> RpcResult<pb::Connector> {
        ok(self.get_connector_rpc(&req.into_inner().name).await)
    }

    async fn get_connector_spec(
        &self,
        req: Request<pb::GetConnectorSpecRequest>,
    ) -> RpcResult<pb::GetConnectorSpecResponse> {
        let req = req.into_inner();
        ok(self.connector_spec_rpc(&req.r#type, &req.target))
    }

    async fn get_connector_logs(
        &self,
        req: Request<pb::GetConnectorLogsRequest>,
    ) -> RpcResult<pb::GetConnectorLogsResponse> {
        ok(self.connector_logs_rpc(req.into_inner()).await)
    }

    async fn delete_connector(&self, req: Request<pb::DeleteConnectorRequest>) -> RpcResult<()> {
        ok(self.api.connectors.delete(&req.into_inner().name).await)
    }

    async fn pause_connector(&self, req: Request<pb::PauseConnectorRequest>) -> RpcResult<()> {
        ok(self.api.connectors.pause(&req.into_inner().name).await)
    }

    async fn resume_connector(&self, req: Request<pb::ResumeConnectorRequest>) -> RpcResult<()> {
        ok(self.api.connectors.resume(&req.into_inner().name).await)
    }

    async fn alter_connector_config(&self, req: Request<pb::AlterConnectorConfigRequest>) -> RpcResult<()> {
        ok(self.alter_connector_rpc(req.into_inner()).await)
    }

    async fn list_views(&self, _req: Request<pb::ListViewsRequest>) -> RpcResult<pb::ListViewsResponse> {
        unimplemented("ListViews")
    }

    async fn get_view(&self, _req: Request<pb::GetViewRequest>) -> RpcResult<pb::View> {
        unimplemented("GetView")
    }

    async fn delete_view(&self, _req: Request<pb::DeleteViewRequest>) -> RpcResult<()> {
        unimplemented("DeleteView")
    }

    async fn execute_view_query(
        &self,
        _req: Request<pb::ExecuteViewQueryRequest>,
    ) -> RpcResult<pb::ExecuteViewQueryResponse> {
        unimplemented("ExecuteViewQuery")
    }

    async fn execute_view_query_with_namespace(
        &self,
        _req: Request<pb::ExecuteViewQueryWithNamespaceRequest>,
    ) -> RpcResult<pb::ExecuteViewQueryResponse> {
        unimplemented("ExecuteViewQueryWithNamespace")
    }
}

/// A shard reader's name on the ring: its position lives in one node's memory, so its reads
/// go to one node.
pub(crate) fn reader_resource(id: &str) -> String {
    format!("reader/{id}")
}

#[cfg(test)]
mod tests;
