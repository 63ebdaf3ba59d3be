//! Persistent queries: `CREATE STREAM s2 AS SELECT … FROM s [WHERE …]` and `INSERT INTO s2
//! SELECT …`, and the query RPCs (CreateQuery, ListQueries, GetQuery, TerminateQuery,
//! DeleteQuery, PauseQuery, ResumeQuery).
//!
//! A query is a supervised task like a connector (decision 031): stored beside the connectors
//! under the name `query:<id>` (a name no connector can have, and left out of every connector
//! listing), run by the runtime's read → sink pipeline with [`QueryTask`] as its sink, placed
//! by the cluster like any task, checkpointed and resumed the same way.
//!
//! Guarantees: the query reads its stream from the start (HStreamDB's queries see the records
//! already there); it appends each chunk's results durably before its read position is
//! checkpointed, so after a crash nothing is lost and records after the last checkpoint may be
//! appended again (the runtime's at-least-once); results keep their record's partition key and
//! attributes, hence their order per key. A record the query cannot evaluate (a type error, a
//! RAW payload that is not a JSON object, a result over the record size limit) is skipped and
//! counted, never fails the task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use hstream_proto::ErrorCode;
use hstream_runtime::connector::{ConnectorConfig, PayloadFlag, Record, Sink, SinkContext, SinkRecord, Written};
use hstream_runtime::supervisor::State;
use hstream_runtime::{ConnectorError, Kind, Streams};
use hstream_sql::{Select, Statement};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{ConnectorSpec, ConnectorView, Connectors};
use crate::catalog::validate_name;
use crate::error::{ApiError, ApiResult};
use crate::streams::StreamSpec;

/// The connector type queries run as (registered by the server, refused at CREATE CONNECTOR).
pub const TARGET: &str = "query";
const PREFIX: &str = "query:";

/// The stored task name of query `id`.
pub fn task_name(id: &str) -> String {
    format!("{PREFIX}{id}")
}

/// Whether a stored task is a query (and so no connector).
pub fn is_query_task(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// A query's stored config.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QueryConfig {
    /// The query's id.
    pub id: String,
    /// The statement, as the client sent it.
    pub sql: String,
    /// The stream the query reads.
    pub stream: String,
    /// The stream its results go to.
    pub result_stream: String,
    /// Set by TerminateQuery: a terminated query is not resumed.
    #[serde(default)]
    pub terminated: bool,
}

impl ConnectorConfig for QueryConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        let plan = plan(&self.sql).map_err(|e| ConnectorError::config(format!("sql: {e}")))?;
        if plan.select.from != self.stream || plan.target != self.result_stream {
            return Err(ConnectorError::config("sql: does not match stream and resultStream"));
        }
        Ok(())
    }
}

/// A parsed persistent query.
pub struct Plan {
    pub select: Select,
    pub target: String,
    /// For CREATE STREAM … AS: the new stream's (replication, shards, backlog seconds).
    pub create: Option<(u32, u32, u32)>,
}

/// Parses the one statement of a persistent query.
pub fn plan(sql: &str) -> Result<Plan, String> {
    let mut statements = hstream_sql::parse(sql).map_err(|e| e.to_string())?;
    if statements.len() != 1 {
        return Err(format!("a query is one statement, got {}", statements.len()));
    }
    let plan = match statements.remove(0) {
        Statement::CreateStreamAs {
            name,
            select,
            replication,
            shards,
            backlog_secs,
        } => Plan {
            select,
            target: name,
            create: Some((replication, shards, backlog_secs)),
        },
        Statement::InsertSelect { stream, select } => Plan {
            select,
            target: stream,
            create: None,
        },
        _ => {
            return Err(
                "a query is CREATE STREAM … AS SELECT … or INSERT INTO … SELECT … (push queries run in the client)"
                    .into(),
            );
        }
    };
    if plan.select.from == plan.target {
        return Err(format!(
            "the query would read its own results: it reads and writes stream {:?}",
            plan.target
        ));
    }
    Ok(plan)
}

/// A running query: the sink of its task.
pub struct QueryTask {
    select: Select,
    /// The fields the query reads (`None`: all of them).
    columns: Option<std::collections::BTreeSet<String>>,
    identity: bool,
    target: String,
    streams: Arc<dyn Streams>,
    max_record_size: usize,
    skipped: Arc<AtomicU64>,
    id: String,
}

impl QueryTask {
    /// The result of one record: `Ok(None)` when filtered out.
    fn apply(&self, r: &SinkRecord) -> Result<Option<Record>, String> {
        let payload = match r.flag {
            // `SELECT * FROM s`: the record as it came.
            PayloadFlag::Json if self.identity => r.payload.clone(),
            _ => {
                let record: Map<String, Value> = match r.flag {
                    // Only the fields the query reads are decoded.
                    PayloadFlag::Json => {
                        let wanted = self.columns.as_ref().map(|c| move |k: &str| c.contains(k));
                        let wanted = wanted.as_ref().map(|w| w as &dyn Fn(&str) -> bool);
                        hstream_runtime::pbstruct::struct_fields(&r.payload, wanted)
                            .map_err(|e| format!("the payload is not a well-formed JSON record ({e})"))?
                    }
                    PayloadFlag::Raw => match serde_json::from_slice::<Value>(&r.payload) {
                        Ok(Value::Object(m)) => m,
                        _ => return Err("a RAW payload that is not a JSON object".into()),
                    },
                };
                let Some(out) = self.select.apply(&record).map_err(|e| e.to_string())? else {
                    return Ok(None);
                };
                let mut buf = Vec::with_capacity(r.payload.len());
                for (k, v) in &out {
                    hstream_runtime::pbstruct::field(&mut buf, k, |b| hstream_runtime::pbstruct::json(b, v));
                }
                buf.into()
            }
        };
        let record = Record {
            key: r.key.clone(),
            flag: PayloadFlag::Json,
            payload,
            attributes: r.attributes.clone(),
        };
        if record.encoded_size_bound() > self.max_record_size {
            return Err(format!(
                "its result is {} bytes, over max-record-size",
                record.encoded_size_bound()
            ));
        }
        Ok(Some(record))
    }
}

/// Records each query skipped, by query id (shown as its execute errors).
static SKIPPED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Arc<AtomicU64>>>> =
    std::sync::LazyLock::new(Default::default);

fn skipped_counter(task: &str) -> Arc<AtomicU64> {
    SKIPPED
        .lock()
        .expect("lock")
        .entry(task.to_owned())
        .or_default()
        .clone()
}

#[async_trait]
impl Sink for QueryTask {
    type Config = QueryConfig;

    async fn check(_config: &QueryConfig) -> Result<(), ConnectorError> {
        Ok(())
    }

    async fn open(_config: QueryConfig) -> Result<Self, ConnectorError> {
        Err(ConnectorError::internal(
            "a query runs inside the server, with its streams",
        ))
    }

    async fn open_in(config: QueryConfig, ctx: SinkContext) -> Result<Self, ConnectorError> {
        let streams = ctx.streams;
        let plan = plan(&config.sql).map_err(|e| ConnectorError::config(format!("sql: {e}")))?;
        if !streams.stream_exists(&plan.target).await? {
            return Err(ConnectorError::config(format!(
                "resultStream: stream {:?} does not exist",
                plan.target
            )));
        }
        Ok(QueryTask {
            identity: plan.select.is_identity(),
            columns: plan.select.columns(),
            select: plan.select,
            target: plan.target,
            max_record_size: streams.max_record_size(),
            streams,
            skipped: skipped_counter(&config.id),
            id: config.id,
        })
    }

    fn stream(config: &QueryConfig) -> &str {
        &config.stream
    }

    async fn write(&mut self, records: &[SinkRecord]) -> Result<Written, ConnectorError> {
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            match self.apply(r) {
                Ok(Some(rec)) => out.push(rec),
                Ok(None) => {}
                Err(e) => {
                    let n = self.skipped.fetch_add(1, Ordering::Relaxed) + 1;
                    // The first few, then one in ten thousand: a bad stream cannot flood the log.
                    if n <= 10 || n.is_multiple_of(10_000) {
                        tracing::warn!(query = %self.id, shard = r.shard_id, lsn = r.lsn, index = r.index, skipped = n, "query skipped a record: {e}");
                    }
                }
            }
        }
        if !out.is_empty() {
            self.streams.append(&self.target, out).await?;
        }
        Ok(Written::Durable)
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// A query as the front doors show it.
#[derive(Debug, Clone)]
pub struct QueryView {
    pub id: String,
    /// HStreamDB's task status.
    pub status: hstream_proto::TaskStatusPb,
    pub created_ms: i64,
    pub sql: String,
    pub source: String,
    pub result: String,
    pub node: String,
    /// Records read and skipped (execute errors), when it runs here.
    pub records_in: u64,
    pub skipped: u64,
}

fn query_not_found(id: &str) -> ApiError {
    ApiError::Query {
        code: ErrorCode::QueryNotFound,
        message: format!("query {id:?} not found"),
    }
}

/// The query service over the connectors' task machinery.
pub struct Queries {
    connectors: Arc<Connectors>,
    streams: Arc<crate::streams::Streams>,
    /// Serializes this node's query changes (create, pause, resume, terminate, delete), so a
    /// check and the change it guards are not interleaved with another.
    ddl: tokio::sync::Mutex<()>,
}

fn not_running(id: &str) -> ApiError {
    ApiError::Query {
        code: ErrorCode::QueryNotRunning,
        message: format!("query {id:?} is not running"),
    }
}

impl Queries {
    pub fn new(connectors: Arc<Connectors>, streams: Arc<crate::streams::Streams>) -> Self {
        Queries {
            connectors,
            streams,
            ddl: tokio::sync::Mutex::new(()),
        }
    }

    fn view(&self, c: ConnectorView) -> Option<QueryView> {
        let id = c.name.strip_prefix(PREFIX)?.to_owned();
        let config: QueryConfig = serde_json::from_value(c.config.clone()).ok()?;
        use hstream_proto::TaskStatusPb as S;
        let status = match State::parse(&c.status) {
            Some(State::Stopped) if config.terminated => S::TaskTerminated,
            Some(State::Stopped) => S::TaskPaused,
            Some(State::Running) => S::TaskRunning,
            Some(State::New) => S::TaskCreating,
            Some(State::Failed) if config.terminated => S::TaskTerminated,
            Some(State::Failed) => S::TaskAborted,
            Some(State::Completed) | Some(State::Deleted) => S::TaskTerminated,
            None => S::TaskUnknown,
        };
        let records_in = c
            .report
            .as_ref()
            .and_then(|r| r["deliveredRecords"].as_u64())
            .unwrap_or(0);
        Some(QueryView {
            status,
            created_ms: c.created_ms,
            source: config.stream,
            result: config.result_stream,
            skipped: SKIPPED
                .lock()
                .expect("lock")
                .get(&config.id)
                .map_or(0, |n| n.load(Ordering::Relaxed)),
            sql: config.sql,
            node: c.node,
            records_in,
            id,
        })
    }

    /// Creates and starts a query (`CREATE STREAM … AS SELECT …` creates its stream first; a
    /// query refused after that takes its stream away again).
    pub async fn create(&self, sql: &str, id: &str) -> ApiResult<QueryView> {
        validate_name("query", ErrorCode::QueryInvalidObjectIdentifier, id)?;
        let plan = plan(sql).map_err(|message| ApiError::Query {
            code: ErrorCode::QueryInvalidSql,
            message,
        })?;
        let _ddl = self.ddl.lock().await;
        let name = task_name(id);
        let exists = || ApiError::Query {
            code: ErrorCode::QueryExists,
            message: format!("query {id:?} already exists"),
        };
        if self.connectors.task_exists(&name).await? {
            return Err(exists());
        }
        self.streams.catalog().stream(&plan.select.from)?;
        // Queries feeding each other in a circle would append forever.
        let existing = self.list().await?;
        let mut reached = vec![plan.target.clone()];
        let mut i = 0;
        while i < reached.len() {
            if reached[i] == plan.select.from {
                return Err(ApiError::Query {
                    code: ErrorCode::QueryInvalidSql,
                    message: format!(
                        "the query would read its own results: {:?} feeds {:?} through other queries",
                        plan.target, plan.select.from
                    ),
                });
            }
            let from = reached[i].clone();
            // A terminated query never runs again: it closes no loop.
            let live = |q: &&QueryView| q.status != hstream_proto::TaskStatusPb::TaskTerminated;
            for q in existing.iter().filter(live).filter(|q| q.source == from) {
                if !reached.contains(&q.result) {
                    reached.push(q.result.clone());
                }
            }
            i += 1;
        }
        let connector = self
            .connectors
            .registry
            .get(Kind::Sink, TARGET)
            .ok_or(ApiError::Unimplemented("queries"))?;
        match plan.create {
            Some((replication_factor, shard_count, backlog_secs)) => {
                self.streams
                    .create(StreamSpec {
                        name: plan.target.clone(),
                        replication_factor,
                        backlog_secs,
                        shard_count,
                    })
                    .await?;
            }
            None => {
                self.streams.catalog().stream(&plan.target)?;
            }
        }
        let config = QueryConfig {
            id: id.to_owned(),
            sql: sql.trim().to_owned(),
            stream: plan.select.from.clone(),
            result_stream: plan.target.clone(),
            terminated: false,
        };
        let spec = ConnectorSpec {
            name,
            kind: "SINK".into(),
            target: TARGET.into(),
            config: serde_json::to_value(&config).expect("serializable"),
        };
        let view = match self.connectors.create_as(spec, Kind::Sink, connector).await {
            Ok(view) => view,
            Err(e) => {
                // The stream goes only if the query was not stored after all (a failure after
                // the task's row was written leaves a query that needs it).
                let stored = self.connectors.task_exists(&task_name(id)).await.unwrap_or(true);
                if plan.create.is_some() && !stored {
                    let mode = crate::streams::DeleteMode {
                        ignore_missing: true,
                        force: false,
                    };
                    if let Err(d) = self.streams.delete(&plan.target, mode).await {
                        tracing::warn!(query = %id, stream = %plan.target, error = %d, "could not remove the stream of a refused query");
                    }
                }
                return Err(match e {
                    ApiError::ConnectorExists(_) => exists(),
                    e => e,
                });
            }
        };
        tracing::info!(query = %id, "query created");
        self.view(view).ok_or_else(|| query_not_found(id))
    }

    pub async fn list(&self) -> ApiResult<Vec<QueryView>> {
        let all = self.connectors.list_all().await?;
        Ok(all.into_iter().filter_map(|c| self.view(c)).collect())
    }

    pub async fn get(&self, id: &str) -> ApiResult<QueryView> {
        match self.connectors.get_task(&task_name(id)).await {
            Ok(c) => self.view(c).ok_or_else(|| query_not_found(id)),
            Err(ApiError::ConnectorNotFound(_)) => Err(query_not_found(id)),
            Err(e) => Err(e),
        }
    }

    fn renamed(id: &str, e: ApiError) -> ApiError {
        match e {
            ApiError::ConnectorNotFound(_) => query_not_found(id),
            e => e,
        }
    }

    /// Stops a query for good (it can be deleted then, not resumed). The mark comes first, so
    /// whatever happens to the task after it, the query reads as terminated.
    pub async fn terminate(&self, id: &str) -> ApiResult<()> {
        let _ddl = self.ddl.lock().await;
        let q = self.get(id).await?;
        if q.status == hstream_proto::TaskStatusPb::TaskTerminated {
            return Err(ApiError::Query {
                code: ErrorCode::QueryAlreadyTerminated,
                message: format!("query {id:?} is already terminated"),
            });
        }
        let name = task_name(id);
        self.connectors
            .set_config_key(&name, "terminated", Value::Bool(true))
            .await
            .map_err(|e| Self::renamed(id, e))?;
        self.connectors
            .pause_task(&name)
            .await
            .map_err(|e| Self::renamed(id, e))
    }

    pub async fn pause(&self, id: &str) -> ApiResult<()> {
        let _ddl = self.ddl.lock().await;
        if self.get(id).await?.status != hstream_proto::TaskStatusPb::TaskRunning {
            return Err(not_running(id));
        }
        self.connectors
            .pause_task(&task_name(id))
            .await
            .map_err(|e| Self::renamed(id, e))
    }

    pub async fn resume(&self, id: &str) -> ApiResult<()> {
        let _ddl = self.ddl.lock().await;
        match self.get(id).await?.status {
            hstream_proto::TaskStatusPb::TaskTerminated => Err(ApiError::Query {
                code: ErrorCode::QueryAlreadyTerminated,
                message: format!("query {id:?} is terminated; create it again"),
            }),
            hstream_proto::TaskStatusPb::TaskRunning => Err(ApiError::Query {
                code: ErrorCode::QueryStillRunning,
                message: format!("query {id:?} is running"),
            }),
            _ => self
                .connectors
                .resume_task(&task_name(id))
                .await
                .map_err(|e| Self::renamed(id, e)),
        }
    }

    /// Deletes a query that is not running (terminate or pause it first); its result stream
    /// stays.
    pub async fn delete(&self, id: &str) -> ApiResult<()> {
        let _ddl = self.ddl.lock().await;
        let q = self.get(id).await?;
        if matches!(
            q.status,
            hstream_proto::TaskStatusPb::TaskRunning | hstream_proto::TaskStatusPb::TaskCreating
        ) {
            return Err(ApiError::Query {
                code: ErrorCode::QueryNotTerminated,
                message: format!("query {id:?} is running: terminate it first"),
            });
        }
        self.connectors
            .delete_task(&task_name(id))
            .await
            .map_err(|e| Self::renamed(id, e))?;
        SKIPPED.lock().expect("lock").remove(id);
        Ok(())
    }
}
