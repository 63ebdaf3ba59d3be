//! Executes parsed statements against a server over gRPC and renders results as tables.

use hstream_proto as pb;
use hstream_proto::h_stream_api_client::HStreamApiClient;
use md5::{Digest, Md5};
use prost::Message;
use serde_json::Value;
use tonic::transport::Channel;

use hstream_sql::Statement;

pub type Client = HStreamApiClient<Channel>;

/// The node a WrongServer (800) answer names (`host:port`), HStreamDB's way of saying "this
/// runs on another node of the cluster".
pub fn wrong_server(s: &tonic::Status) -> Option<String> {
    if s.code() != tonic::Code::FailedPrecondition {
        return None;
    }
    let v: Value = serde_json::from_str(s.message()).ok()?;
    (v["error"].as_i64() == Some(pb::ErrorCode::WrongServer as i64))
        .then(|| v["extra"].as_str().map(str::to_owned))
        .flatten()
}

/// A client of the node at `host:port`.
pub async fn connect_to(host_port: &str) -> Result<Client, tonic::Status> {
    let unreachable =
        |e: tonic::transport::Error| tonic::Status::unavailable(format!("connecting to {host_port}: {e}"));
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{host_port}"))
        .map_err(unreachable)?
        .connect_timeout(std::time::Duration::from_secs(5));
    Ok(Client::new(endpoint.connect().await.map_err(unreachable)?))
}

/// Runs `call` on `c`; when the node answers WrongServer naming another node, runs it there
/// (once), as HStreamDB's clients follow lookups: the CLI works against any node.
pub async fn on_owner<T, F, Fut>(c: &Client, mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    match call(c.clone()).await {
        Err(s) => match wrong_server(&s) {
            Some(owner) => call(connect_to(&owner).await?).await,
            None => Err(s),
        },
        ok => ok,
    }
}

/// The human message of a server error (HStreamDB puts a JSON object in the status message).
pub fn error_text(s: &tonic::Status) -> String {
    serde_json::from_str::<Value>(s.message())
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| s.message().to_owned())
}

pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = format!(
        "+{}+",
        widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+")
    );
    let row = |cells: Vec<&str>| {
        format!(
            "|{}|",
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!(" {c:<w$} ", w = *w))
                .collect::<Vec<_>>()
                .join("|")
        )
    };
    let mut out = vec![line.clone(), row(headers.to_vec()), line.clone()];
    for r in rows {
        out.push(row(r.iter().map(String::as_str).collect()));
    }
    out.push(line);
    out.join("\n")
}

fn json_to_pb(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_pb).collect(),
        }),
        Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), json_to_pb(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

pub fn pb_to_json(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(pb_to_json).collect()),
        Some(Kind::StructValue(s)) => Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), pb_to_json(v))).collect()),
        _ => Value::Null,
    }
}

/// A name for a query the shell creates, as HStreamDB's CLI names them.
fn generated_query_name() -> String {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("cli_generated_{}_{nonce}", std::process::id())
}

fn query_status(code: i32) -> &'static str {
    match pb::TaskStatusPb::try_from(code) {
        Ok(pb::TaskStatusPb::TaskCreating) => "CREATING",
        Ok(pb::TaskStatusPb::TaskRunning) => "RUNNING",
        Ok(pb::TaskStatusPb::TaskAborted) => "ABORTED",
        Ok(pb::TaskStatusPb::TaskPaused) => "PAUSED",
        Ok(pb::TaskStatusPb::TaskResuming) => "RESUMING",
        Ok(pb::TaskStatusPb::TaskTerminated) => "TERMINATED",
        _ => "UNKNOWN",
    }
}

/// Runs one statement (`text` is its SQL, which persistent queries carry to the server);
/// returns what to print.
pub async fn execute(c: &mut Client, stmt: Statement, text: &str) -> Result<String, tonic::Status> {
    use Statement::*;
    Ok(match stmt {
        CreateStreamAs { .. } | InsertSelect { .. } => {
            let q = c
                .create_query(pb::CreateQueryRequest {
                    sql: text.to_owned(),
                    query_name: generated_query_name(),
                })
                .await?
                .into_inner();
            format!("created query {} writing to {}", q.id, q.result_name)
        }
        ShowQueries => {
            let list = c.list_queries(pb::ListQueriesRequest {}).await?.into_inner().queries;
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|q| vec![q.id.clone(), query_status(q.status).to_owned(), q.query_text.clone()])
                .collect();
            table(&["query_id", "status", "sql"], &rows)
        }
        TerminateQuery(id) => {
            on_owner(c, |mut c| {
                let query_id = id.clone();
                async move { c.terminate_query(pb::TerminateQueryRequest { query_id }).await }
            })
            .await?;
            format!("terminated query {id}")
        }
        PauseQuery(id) => {
            on_owner(c, |mut c| {
                let id = id.clone();
                async move { c.pause_query(pb::PauseQueryRequest { id }).await }
            })
            .await?;
            format!("paused query {id}")
        }
        ResumeQuery(id) => {
            on_owner(c, |mut c| {
                let id = id.clone();
                async move { c.resume_query(pb::ResumeQueryRequest { id }).await }
            })
            .await?;
            format!("resumed query {id}")
        }
        DropQuery { name, if_exists } => match c.delete_query(pb::DeleteQueryRequest { id: name.clone() }).await {
            Ok(_) => format!("dropped query {name}"),
            Err(s) if if_exists && s.code() == tonic::Code::NotFound => format!("query {name} does not exist"),
            Err(s) => return Err(s),
        },
        CreateStream {
            name,
            replication,
            shards,
            backlog_secs,
        } => {
            let req = pb::Stream {
                stream_name: name.clone(),
                replication_factor: replication,
                backlog_duration: backlog_secs,
                shard_count: shards,
                creation_time: None,
            };
            c.create_stream(req).await?;
            format!("created stream {name}")
        }
        ShowStreams => {
            let streams = c.list_streams(pb::ListStreamsRequest {}).await?.into_inner().streams;
            let rows: Vec<Vec<String>> = streams
                .iter()
                .map(|s| {
                    vec![
                        s.stream_name.clone(),
                        s.shard_count.to_string(),
                        s.replication_factor.to_string(),
                        s.backlog_duration.to_string(),
                    ]
                })
                .collect();
            table(&["name", "shards", "replication", "backlog_seconds"], &rows)
        }
        ShowNodes => {
            let cluster = c.describe_cluster(()).await?.into_inner();
            let rows: Vec<Vec<String>> = cluster
                .server_nodes_status
                .iter()
                .map(|s| {
                    let n = s.node.clone().unwrap_or_default();
                    let state = pb::NodeState::try_from(s.state).map_or("unknown", |st| st.as_str_name());
                    vec![n.id.to_string(), format!("{}:{}", n.host, n.port), state.to_owned()]
                })
                .collect();
            table(&["id", "address", "state"], &rows)
        }
        ShowSubscriptions => {
            let subs = c
                .list_subscriptions(pb::ListSubscriptionsRequest {})
                .await?
                .into_inner()
                .subscription;
            let rows: Vec<Vec<String>> = subs
                .iter()
                .map(|s| {
                    vec![
                        s.subscription_id.clone(),
                        s.stream_name.clone(),
                        s.ack_timeout_seconds.to_string(),
                    ]
                })
                .collect();
            table(&["id", "stream", "ack_timeout_seconds"], &rows)
        }
        DropStream { name, if_exists } => {
            c.delete_stream(pb::DeleteStreamRequest {
                stream_name: name.clone(),
                ignore_non_exist: if_exists,
                force: false,
            })
            .await?;
            format!("dropped stream {name}")
        }
        CreateConnector {
            name,
            kind,
            target,
            options,
            if_not_exist,
        } => {
            let req = pb::CreateConnectorRequest {
                name: name.clone(),
                r#type: kind.into(),
                target,
                config: Value::Object(options).to_string(),
            };
            match c.create_connector(req).await {
                Ok(_) => format!("created connector {name}"),
                Err(s) if if_not_exist && s.code() == tonic::Code::AlreadyExists => format!("connector {name} exists"),
                Err(s) => return Err(s),
            }
        }
        ShowConnectors => {
            let list = c
                .list_connectors(pb::ListConnectorsRequest {})
                .await?
                .into_inner()
                .connectors;
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|k| vec![k.name.clone(), k.r#type.clone(), k.target.clone(), k.status.clone()])
                .collect();
            table(&["name", "type", "target", "status"], &rows)
        }
        PauseConnector(name) => {
            on_owner(c, |mut c| {
                let name = name.clone();
                async move { c.pause_connector(pb::PauseConnectorRequest { name }).await }
            })
            .await?;
            format!("paused connector {name}")
        }
        ResumeConnector(name) => {
            on_owner(c, |mut c| {
                let name = name.clone();
                async move { c.resume_connector(pb::ResumeConnectorRequest { name }).await }
            })
            .await?;
            format!("resumed connector {name}")
        }
        DropConnector { name, if_exists } => match c
            .delete_connector(pb::DeleteConnectorRequest { name: name.clone() })
            .await
        {
            Ok(_) => format!("dropped connector {name}"),
            Err(s) if if_exists && s.code() == tonic::Code::NotFound => format!("connector {name} does not exist"),
            Err(s) => return Err(s),
        },
        Insert { stream, row } => {
            let shards = c
                .list_shards(pb::ListShardsRequest {
                    stream_name: stream.clone(),
                })
                .await?
                .into_inner()
                .shards;
            // The empty partition key, hashed as every HStreamDB client does.
            let h = u128::from_be_bytes(Md5::digest(b"").into());
            let shard = shards
                .iter()
                .find(|s| {
                    s.start_hash_range_key.parse::<u128>().is_ok_and(|a| a <= h)
                        && s.end_hash_range_key.parse::<u128>().is_ok_and(|b| h <= b)
                })
                .ok_or_else(|| tonic::Status::not_found(format!("stream {stream} has no shard for the empty key")))?;
            let Some(prost_types::value::Kind::StructValue(record)) = json_to_pb(&Value::Object(row)).kind else {
                unreachable!("an object encodes as a struct")
            };
            let rec = pb::HStreamRecord {
                header: Some(pb::HStreamRecordHeader {
                    flag: pb::h_stream_record_header::Flag::Json as i32,
                    attributes: Default::default(),
                    key: String::new(),
                }),
                payload: record.encode_to_vec().into(),
            };
            let batch = pb::BatchedRecord {
                compression_type: pb::CompressionType::None as i32,
                publish_time: None,
                batch_size: 1,
                payload: pb::BatchHStreamRecords { records: vec![rec] }.encode_to_vec().into(),
            };
            c.append(pb::AppendRequest {
                stream_name: stream.clone(),
                shard_id: shard.shard_id,
                records: Some(batch),
            })
            .await?;
            format!("inserted 1 row into {stream}")
        }
        Select(_) => unreachable!("push queries are run by the shell"),
    })
}
