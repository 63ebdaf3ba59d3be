//! The query RPCs (HStreamDB's CreateQuery, ListQueries, GetQuery, TerminateQuery, DeleteQuery,
//! PauseQuery, ResumeQuery) in the query service's terms.

use hstream_proto as pb;

use super::HStreamService;
use crate::connectors::queries::QueryView;
use crate::error::ApiResult;

impl HStreamService {
    fn query_pb(&self, q: QueryView) -> pb::Query {
        let here = format!("{}:{}", self.api.node.host, self.api.node.port);
        pb::Query {
            id: q.id,
            status: q.status as i32,
            created_time: q.created_ms,
            query_text: q.sql,
            sources: vec![q.source],
            result_name: q.result,
            r#type: pb::QueryType::CreateStreamAs as i32,
            node_id: if q.node == here { self.api.node.id } else { 0 },
        }
    }

    pub(super) async fn create_query_rpc(&self, sql: &str, name: &str) -> ApiResult<pb::Query> {
        Ok(self.query_pb(self.api.queries.create(sql, name).await?))
    }

    pub(super) async fn list_queries_rpc(&self) -> ApiResult<pb::ListQueriesResponse> {
        let queries = self.api.queries.list().await?;
        Ok(pb::ListQueriesResponse {
            queries: queries.into_iter().map(|q| self.query_pb(q)).collect(),
        })
    }

    pub(super) async fn get_query_rpc(&self, id: &str) -> ApiResult<pb::Query> {
        Ok(self.query_pb(self.api.queries.get(id).await?))
    }
}
