//! The REST API on `--http-port`, shaped like Kafka Connect's: connectors, connector plugins,
//! streams, subscriptions and health. It is a second front door onto the same domain services
//! the gRPC service calls (`service::Api`), so what one door does the other sees. Errors are JSON
//! `{"code": <http status>, "error": <HStreamDB ErrorCode>, "message": …}`; configs in responses
//! are redacted.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use hstream_proto as pb;
use hstream_runtime::Kind;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::connectors::{ConnectorSpec, ConnectorView};
use crate::error::ApiError;
use crate::service::Api;

type Ctx = State<Arc<Api>>;

/// Every route, for the router and the OpenAPI document alike: (method, path, summary).
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("get", "/connectors", "List connector names"),
    (
        "post",
        "/connectors",
        "Create a connector from {name, type, target, config}",
    ),
    ("get", "/connectors/{name}", "Describe a connector"),
    ("delete", "/connectors/{name}", "Delete a connector"),
    (
        "get",
        "/connectors/{name}/config",
        "A connector's config (secrets redacted)",
    ),
    (
        "put",
        "/connectors/{name}/config",
        "Merge keys into a connector's config and restart it",
    ),
    ("get", "/connectors/{name}/status", "A connector's state"),
    ("get", "/connectors/{name}/logs", "A connector's recent log lines"),
    ("put", "/connectors/{name}/pause", "Pause a connector"),
    ("put", "/connectors/{name}/resume", "Resume a connector"),
    ("post", "/connectors/{name}/restart", "Restart a connector's task"),
    (
        "get",
        "/connectors/{name}/offsets",
        "A connector's checkpointed position and counters",
    ),
    (
        "delete",
        "/connectors/{name}/offsets",
        "Reset a paused connector's position",
    ),
    (
        "post",
        "/connectors/{name}/signals",
        "Send a CDC source a signal, as Debezium's signal table does (`{\"type\": \"execute-snapshot\", \"data\": {\"data-collections\": [...]}}`): written to its signal table, acted on by its task",
    ),
    ("get", "/connector-plugins", "Connector types of this build"),
    (
        "get",
        "/connector-plugins/{type}/spec",
        "A connector type's spec (Airbyte ConnectorSpecification)",
    ),
    (
        "put",
        "/connector-plugins/{type}/config/validate",
        "Validate a config, field by field",
    ),
    ("get", "/wasm-plugins", "Uploaded WASM plugins"),
    (
        "put",
        "/wasm-plugins/{name}",
        "Upload a WASM plugin (the component's bytes, application/wasm); connectors name it by `module`",
    ),
    (
        "get",
        "/queries",
        "Persistent queries: status, SQL, streams, and records read and skipped (those it could not evaluate) where they run",
    ),
    ("get", "/streams", "List streams"),
    ("get", "/subscriptions", "List subscriptions"),
    ("get", "/health", "Liveness"),
    ("get", "/metrics", "Prometheus metrics (OpenMetrics text)"),
    ("get", "/openapi.json", "This document"),
];

pub struct RestError(ApiError);

impl From<ApiError> for RestError {
    fn from(e: ApiError) -> Self {
        RestError(e)
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let grpc = self.0.code();
        let status = match grpc {
            tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
            tonic::Code::NotFound | tonic::Code::Unimplemented => StatusCode::NOT_FOUND,
            tonic::Code::AlreadyExists | tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
            tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = json!({ "code": status.as_u16(), "error": self.0.error_code() as i32, "message": self.0.message() });
        (status, Json(body)).into_response()
    }
}

type RestResult<T> = Result<T, RestError>;

/// Prometheus scrape endpoint (OpenMetrics text).
async fn metrics(State(ctx): Ctx) -> Response {
    // Backlogs in records are counted by the store (it may read), before the encoding.
    ctx.subscriptions.count_backlogs().await;
    // Reading /proc and the store's directory is blocking work.
    let metrics = ctx.metrics.clone();
    let body = tokio::task::spawn_blocking(move || metrics.encode())
        .await
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

pub fn router(ctx: Arc<Api>) -> Router {
    Router::new()
        .route("/connectors", get(list_connectors).post(create_connector))
        .route("/connectors/{name}", get(get_connector).delete(delete_connector))
        .route("/connectors/{name}/config", get(get_config).put(put_config))
        .route("/connectors/{name}/status", get(get_status))
        .route("/connectors/{name}/logs", get(get_logs))
        .route("/connectors/{name}/pause", put(pause))
        .route("/connectors/{name}/resume", put(resume))
        .route("/connectors/{name}/restart", post(restart))
        .route("/connectors/{name}/offsets", get(get_offsets).delete(reset_offsets))
        .route("/connectors/{name}/signals", post(send_signal))
        .route("/connector-plugins", get(plugins))
        .route("/connector-plugins/{type}/spec", get(plugin_spec))
        .route("/connector-plugins/{type}/config/validate", put(validate))
        .route("/wasm-plugins", get(wasm_plugins))
        .route(
            "/wasm-plugins/{name}",
            put(upload_wasm_plugin).layer(axum::extract::DefaultBodyLimit::max(
                hstream_runtime::wasm::MAX_MODULE_BYTES as usize,
            )),
        )
        .route("/queries", get(queries))
        .route("/streams", get(streams))
        .route("/subscriptions", get(subscriptions))
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .with_state(ctx)
}

/// OpenAPI 3.1 document listing every route in [`ROUTES`].
pub fn openapi() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary) in ROUTES {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({ "name": p, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let mut op = json!({
            "summary": summary,
            "responses": {
                "200": { "description": "OK" },
                "400": { "description": "Invalid request; the message names the field" },
                "404": { "description": "Not found" },
                "409": { "description": "Conflict" }
            }
        });
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if path.starts_with("/wasm-plugins/") {
            op["requestBody"] = json!({ "required": true, "content": { "application/wasm": {
                "schema": { "type": "string", "contentMediaType": "application/wasm" } } } });
        } else if matches!(*method, "post" | "put") {
            op["requestBody"] =
                json!({ "required": false, "content": { "application/json": { "schema": { "type": "object" } } } });
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "hstream-server REST API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
    })
}

fn info(c: &ConnectorView) -> Value {
    json!({ "name": c.name, "type": c.kind.to_lowercase(), "target": c.target, "config": c.config, "status": c.status })
}

async fn list_connectors(State(ctx): Ctx) -> RestResult<Json<Value>> {
    let list = ctx.connectors.list().await?;
    Ok(Json(json!(list.iter().map(|c| c.name.clone()).collect::<Vec<_>>())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    target: String,
    #[serde(default)]
    config: Value,
}

async fn create_connector(
    State(ctx): Ctx,
    body: Result<Json<CreateBody>, axum::extract::rejection::JsonRejection>,
) -> RestResult<Response> {
    let Json(body) = body.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let spec = ConnectorSpec {
        name: body.name,
        kind: body.kind,
        target: body.target,
        config: body.config,
    };
    let created = ctx.connectors.create(spec).await?;
    Ok((StatusCode::CREATED, Json(info(&created))).into_response())
}

async fn get_connector(State(ctx): Ctx, Path(name): Path<String>) -> RestResult<Json<Value>> {
    Ok(Json(info(&ctx.connectors.get(&name).await?)))
}

async fn delete_connector(State(ctx): Ctx, Path(name): Path<String>) -> RestResult<StatusCode> {
    ctx.connectors.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_config(State(ctx): Ctx, Path(name): Path<String>) -> RestResult<Json<Value>> {
    Ok(Json(ctx.connectors.get(&name).await?.config))
}

async fn put_config(
    State(ctx): Ctx,
    Path(name): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> RestResult<Json<Value>> {
    let Json(patch) = body.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let config = patch.to_string();
    on_owner(ctx.connectors.alter(&name, patch).await, |mut c| {
        let req = pb::AlterConnectorConfigRequest {
            name: name.clone(),
            config,
        };
        async move { c.alter_connector_config(req).await.map(drop) }
    })
    .await?;
    Ok(Json(info(&ctx.connectors.get(&name).await?)))
}

/// How long a forwarded request may wait to connect, and in all (a pause or alter waits up to
/// 30 s for the task).
const FORWARD_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(40);

/// A gRPC client of another node.
type NodeClient = hstream_proto::h_stream_api_client::HStreamApiClient<tonic::transport::Channel>;

/// `local`'s answer; when it is WrongServer naming another node (what runs there must be
/// asked there), `remote`'s answer from that node: the REST API works against any node.
async fn on_owner<T, F, Fut>(local: Result<T, ApiError>, remote: F) -> Result<T, ApiError>
where
    F: FnOnce(NodeClient) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    match local {
        Err(ApiError::WrongServer { owner: Some(owner), .. }) => {
            let unreachable = |e: tonic::transport::Error| {
                ApiError::Remote(tonic::Status::unavailable(format!("connecting to {owner}: {e}")))
            };
            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{owner}"))
                .map_err(unreachable)?
                .connect_timeout(FORWARD_CONNECT_TIMEOUT)
                .timeout(FORWARD_TIMEOUT);
            let client = NodeClient::new(endpoint.connect().await.map_err(unreachable)?);
            remote(client).await.map_err(ApiError::Remote)
        }
        other => other,
    }
}

fn report(c: &ConnectorView) -> Value {
    c.report.clone().unwrap_or(Value::Null)
}

/// The connector's recent log lines (its lifecycle and what it logged), oldest first.
async fn get_logs(State(ctx): Ctx, Path(name): Path<String>) -> RestResult<Json<Value>> {
    let local = ctx.connectors.logs(&name, 0, usize::MAX).await;
    let lines = on_owner(local, |mut c| {
        let req = pb::GetConnectorLogsRequest {
            name: name.clone(),
            begin: 0,
            count: 0,
        };
        async move {
            let logs = c.get_connector_logs(req).await?.into_inner().logs;
            Ok(logs.lines().map(str::to_owned).collect())
        }
    })
    .await?;
    Ok(Json(json!({ "name": name, "logs": lines })))
}

async fn get_status(State(ctx): Ctx, Path(name): Path<String>) -> RestResult<Json<Value>> {
    let c = ctx.connectors.get(&name).await?;
    let r = report(&c);
    Ok(Json(json!({
        "name": c.name,
        "connector": { "state": c.status, "worker_id": c.node },
        "restarts": r["restarts"],
        "lastError": r["lastError"],
        "lastProgressMs": r["lastProgressMs"],
        "deliveredRecords": r["deliveredRecords"],
        "progress": r["progress"],
    })))
}

async fn pause(State(ctx): Ctx, Path(name): Path<String>) -> RestResult<StatusCode> {
    let req = pb::PauseConnectorRequest { name: name.clone() };
    on_owner(ctx.connectors.pause(&name).await, |mut c| async move {
        c.pause_connector(req).await.map(drop)
    })
    .await?;
    Ok(StatusCode::ACCEPTED)
}

async fn resume(State(ctx): Ctx, Path(name): Path<String>) -> RestResult<StatusCode> {
    let req = pb::ResumeConnectorRequest { name: name.clone() };
    on_owner(ctx.connectors.resume(&name).await, |mut c| async move {
        c.resume_connector(req).await.map(drop)
    })
    .await?;
    Ok(StatusCode::ACCEPTED)
}

/// Restarts the task: a running one starts a new attempt (an empty alter), a stopped or failed
/// one is resumed.
async fn restart(State(ctx): Ctx, Path(name): Path<String>) -> RestResult<StatusCode> {
    on_owner(ctx.connectors.restart(&name).await, |mut c| async move {
        // The same choice, made on the node running it (its task's state, not the stored
        // one): an empty alter, or a resume.
        let state = c
            .get_connector(pb::GetConnectorRequest { name: name.clone() })
            .await?
            .into_inner()
            .status;
        if state == "RUNNING" || state == "NEW" {
            let req = pb::AlterConnectorConfigRequest {
                name,
                config: "{}".into(),
            };
            c.alter_connector_config(req).await.map(drop)
        } else {
            c.resume_connector(pb::ResumeConnectorRequest { name }).await.map(drop)
        }
    })
    .await?;
    Ok(StatusCode::ACCEPTED)
}

async fn get_offsets(State(ctx): Ctx, Path(name): Path<String>) -> RestResult<Json<Value>> {
    Ok(Json(report(&ctx.connectors.get(&name).await?)))
}

/// A signal for a source (`{"type", "data"}`), written to its upstream's signal table.
async fn send_signal(
    State(ctx): Ctx,
    Path(name): Path<String>,
    Json(body): Json<Value>,
) -> RestResult<(StatusCode, Json<Value>)> {
    let kind = body["type"]
        .as_str()
        .ok_or_else(|| ApiError::InvalidRequest("type: the signal's type, e.g. \"execute-snapshot\"".into()))?;
    let data = body.get("data").cloned().unwrap_or(Value::Null);
    let id = ctx.connectors.signal(&name, kind, &data).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "name": name, "id": id }))))
}

/// Forgets a paused connector's checkpoint: on resume it starts from its configured beginning.
async fn reset_offsets(State(ctx): Ctx, Path(name): Path<String>) -> RestResult<Json<Value>> {
    let removed = ctx.connectors.reset_offsets(&name).await?;
    Ok(Json(json!({ "name": name, "reset": removed })))
}

fn wasm_plugin_dir() -> Result<&'static std::path::Path, RestError> {
    hstream_runtime::wasm::plugin_dir()
        .ok_or_else(|| ApiError::InvalidRequest("this server keeps no uploaded plugins".into()).into())
}

fn wasm_plugin_info(name: &str, l: &hstream_runtime::wasm::Loaded, bytes: usize) -> Value {
    json!({
        "name": name,
        "kind": l.kind.as_str(),
        "plugin": l.name,
        "description": l.description,
        "abi": format!("{}@{}", hstream_runtime::wasm::ABI_PACKAGE, hstream_runtime::wasm::ABI_VERSION),
        "bytes": bytes,
        "configSchema": l.config_schema,
    })
}

/// Stores an uploaded plugin as `<plugin dir>/<name>.wasm` once it loads (a component of this
/// ABI, of a known kind, describing itself); a bad module is refused and nothing is written.
async fn upload_wasm_plugin(Path(name): Path<String>, body: axum::body::Bytes) -> RestResult<Json<Value>> {
    if !hstream_runtime::wasm::valid_plugin_name(&name) {
        return Err(ApiError::InvalidRequest(format!(
            "plugin name {name:?}: use letters, digits, '-' and '_' (at most 128)"
        ))
        .into());
    }
    let dir = wasm_plugin_dir()?;
    let origin = format!("upload {name:?}");
    let shown = name.clone();
    let task = tokio::task::spawn_blocking(move || {
        let loaded = hstream_runtime::wasm::load_bytes(&body, &origin)
            .map_err(|e| ApiError::InvalidRequest(e.full_message()))?;
        let path = dir.join(format!("{name}.wasm"));
        // Concurrent uploads of one name each write their own file; the last rename wins whole.
        static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.wasm.{}.{n}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(ApiError::InvalidRequest(format!("storing plugin {name:?}: {e}")));
        }
        hstream_runtime::wasm::remember(path, loaded.clone());
        tracing::info!(plugin = %name, kind = loaded.kind.as_str(), bytes = body.len(), "wasm plugin uploaded");
        Ok::<_, ApiError>(wasm_plugin_info(&name, &loaded, body.len()))
    });
    // A plugin that blocks while it describes itself is not waited on for ever.
    let info = tokio::time::timeout(std::time::Duration::from_secs(60), task)
        .await
        .map_err(|_| ApiError::InvalidRequest(format!("plugin {shown:?} did not load within 60 s")))?
        .map_err(|e| ApiError::InvalidRequest(format!("plugin loader failed: {e}")))??;
    Ok(Json(info))
}

async fn wasm_plugins() -> RestResult<Json<Value>> {
    let dir = wasm_plugin_dir()?;
    let list = tokio::task::spawn_blocking(move || {
        let mut list = Vec::new();
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".wasm"))
                            .map(str::to_owned)
                    })
                    .filter(|n| hstream_runtime::wasm::valid_plugin_name(n))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        for name in names {
            let size = std::fs::metadata(dir.join(format!("{name}.wasm")))
                .map(|m| m.len() as usize)
                .unwrap_or(0);
            match hstream_runtime::wasm::load_blocking(&name) {
                Ok(l) => list.push(wasm_plugin_info(&name, &l, size)),
                Err(e) => list.push(json!({ "name": name, "error": e.full_message() })),
            }
        }
        list
    })
    .await
    .unwrap_or_default();
    Ok(Json(Value::Array(list)))
}

async fn plugins(State(ctx): Ctx) -> Json<Value> {
    let list: Vec<Value> = ctx
        .connectors
        .registry
        .iter()
        .filter(|(_, target, _)| *target != crate::connectors::queries::TARGET)
        .map(|(kind, target, _)| json!({ "id": plugin_id(kind, target), "type": kind.as_str().to_lowercase(), "target": target }))
        .collect();
    Json(Value::Array(list))
}

fn plugin_id(kind: Kind, target: &str) -> String {
    format!("{}-{target}", kind.as_str().to_lowercase())
}

/// A plugin by id (`source-generator`) or by a target name that only one kind has.
fn plugin(ctx: &Api, id: &str) -> Result<Arc<dyn hstream_runtime::ConnectorType>, RestError> {
    let found: Vec<_> = ctx
        .connectors
        .registry
        .iter()
        .filter(|(_, t, _)| *t != crate::connectors::queries::TARGET)
        .filter(|(k, t, _)| plugin_id(*k, t) == id || *t == id)
        .map(|(k, t, c)| (plugin_id(k, t), c.clone()))
        .collect();
    match found.as_slice() {
        [(_, one)] => Ok(one.clone()),
        [] => Err(ApiError::ConnectorUnknown {
            kind: "",
            target: crate::error::cut(id),
        }
        .into()),
        several => {
            let ids: Vec<&str> = several.iter().map(|(id, _)| id.as_str()).collect();
            Err(ApiError::InvalidRequest(format!(
                "{id:?} is more than one connector type: name one of {}",
                ids.join(", ")
            ))
            .into())
        }
    }
}

async fn plugin_spec(State(ctx): Ctx, Path(id): Path<String>) -> RestResult<Json<Value>> {
    Ok(Json(plugin(&ctx, &id)?.spec().clone()))
}

async fn validate(
    State(ctx): Ctx,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> RestResult<Json<Value>> {
    let Json(mut config) = body.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let t = plugin(&ctx, &id)?;
    t.normalize(&mut config);
    let errors: Vec<Value> = match t.validate(&config) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| json!({ "field": crate::error::cut(&e.path), "message": crate::error::bounded(&e.message) }))
            .collect(),
    };
    Ok(Json(json!({ "valid": errors.is_empty(), "errors": errors })))
}

async fn queries(State(ctx): Ctx) -> RestResult<Json<Value>> {
    let list = ctx.queries.list().await?;
    Ok(Json(Value::Array(
        list.iter()
            .map(|q| {
                json!({
                    "id": q.id,
                    "status": q.status.as_str_name(),
                    "sql": q.sql,
                    "stream": q.source,
                    "resultStream": q.result,
                    "node": q.node,
                    "createdMs": q.created_ms,
                    "recordsRead": q.records_in,
                    "recordsSkipped": q.skipped,
                })
            })
            .collect(),
    )))
}

async fn streams(State(ctx): Ctx) -> Json<Value> {
    let list: Vec<Value> = ctx
        .streams
        .list("")
        .iter()
        .map(|s| &s.meta)
        .map(|s| json!({ "name": s.name, "shardCount": s.shard_count, "replicationFactor": s.replication_factor, "backlogDuration": s.backlog_secs }))
        .collect();
    Json(Value::Array(list))
}

async fn subscriptions(State(ctx): Ctx) -> RestResult<Json<Value>> {
    let list = ctx.subscriptions.list("").await?;
    Ok(Json(Value::Array(
        list.iter()
            .map(|s| json!({ "id": s.id, "stream": shown_stream(&s.stream), "ackTimeoutSeconds": s.ack_timeout_secs, "maxUnackedRecords": s.max_unacked }))
            .collect(),
    )))
}

/// A subscription's stream as HStreamDB shows it: the archived name of a force-deleted stream
/// is shown as the bare archive prefix.
fn shown_stream(stream: &str) -> &str {
    if stream.starts_with(crate::catalog::ARCHIVED_PREFIX) {
        crate::catalog::ARCHIVED_PREFIX
    } else {
        stream
    }
}
