//! Subcommands that do without SQL: `hstream stream …`, `hstream subscription …`,
//! `hstream connector …` (HStreamDB's CLI has the same).

use clap::Subcommand;
use hstream_proto as pb;

use crate::exec::{Client, table};

#[derive(Subcommand)]
pub enum StreamCmd {
    /// List streams.
    List,
    /// Create a stream.
    Create {
        name: String,
        #[arg(short = 'r', long, default_value_t = 1)]
        replication_factor: u32,
        /// Seconds records are kept (0: until trimmed).
        #[arg(short = 'b', long, default_value_t = 0)]
        backlog_duration: u32,
        #[arg(short = 's', long, default_value_t = 1)]
        shards: u32,
    },
    /// Show one stream.
    Describe { name: String },
    /// Delete a stream.
    Delete {
        name: String,
        /// Delete even with subscriptions (they keep reading the archived data).
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// List a stream's shards and their key ranges.
    ListShard { name: String },
}

#[derive(Subcommand)]
pub enum SubscriptionCmd {
    List,
    Create {
        id: String,
        #[arg(long)]
        stream: String,
        #[arg(long, default_value_t = 60)]
        ack_timeout: i32,
        #[arg(long, default_value_t = 10_000)]
        max_unacked_records: i32,
        /// earliest or latest.
        #[arg(long, default_value = "latest")]
        offset: String,
    },
    Describe {
        id: String,
    },
    Delete {
        id: String,
        #[arg(short = 'f', long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum ConnectorCmd {
    List,
    Describe {
        name: String,
    },
    Create {
        name: String,
        /// source or sink.
        #[arg(long = "type")]
        kind: String,
        #[arg(long)]
        target: String,
        /// The connector's options, a JSON object.
        #[arg(long)]
        config: String,
    },
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Merge keys into a connector's config and restart it.
    AlterConfig {
        name: String,
        #[arg(long)]
        config_json: String,
    },
}

pub async fn stream(c: &mut Client, cmd: StreamCmd) -> Result<String, tonic::Status> {
    Ok(match cmd {
        StreamCmd::List => crate::exec::execute(c, crate::sql::Statement::ShowStreams).await?,
        StreamCmd::Create {
            name,
            replication_factor,
            backlog_duration,
            shards,
        } => {
            let stmt = crate::sql::Statement::CreateStream {
                name,
                replication: replication_factor,
                shards,
                backlog_secs: backlog_duration,
            };
            crate::exec::execute(c, stmt).await?
        }
        StreamCmd::Describe { name } => {
            let s = c
                .get_stream(pb::GetStreamRequest { name })
                .await?
                .into_inner()
                .stream
                .unwrap_or_default();
            let row = vec![
                s.stream_name,
                s.shard_count.to_string(),
                s.replication_factor.to_string(),
                s.backlog_duration.to_string(),
            ];
            table(&["name", "shards", "replication", "backlog_seconds"], &[row])
        }
        StreamCmd::Delete { name, force } => {
            c.delete_stream(pb::DeleteStreamRequest {
                stream_name: name.clone(),
                ignore_non_exist: false,
                force,
            })
            .await?;
            format!("deleted stream {name}")
        }
        StreamCmd::ListShard { name } => {
            let shards = c
                .list_shards(pb::ListShardsRequest { stream_name: name })
                .await?
                .into_inner()
                .shards;
            let rows: Vec<Vec<String>> = shards
                .iter()
                .map(|s| {
                    vec![
                        s.shard_id.to_string(),
                        s.start_hash_range_key.clone(),
                        s.end_hash_range_key.clone(),
                    ]
                })
                .collect();
            table(&["shard_id", "start_hash_key", "end_hash_key"], &rows)
        }
    })
}

pub async fn subscription(c: &mut Client, cmd: SubscriptionCmd) -> Result<String, tonic::Status> {
    Ok(match cmd {
        SubscriptionCmd::List => crate::exec::execute(c, crate::sql::Statement::ShowSubscriptions).await?,
        SubscriptionCmd::Create {
            id,
            stream,
            ack_timeout,
            max_unacked_records,
            offset,
        } => {
            let offset = match offset.to_ascii_lowercase().as_str() {
                "earliest" => pb::SpecialOffset::Earliest,
                "latest" => pb::SpecialOffset::Latest,
                other => {
                    return Err(tonic::Status::invalid_argument(format!(
                        "--offset must be earliest or latest, got {other}"
                    )));
                }
            };
            let req = pb::Subscription {
                subscription_id: id.clone(),
                stream_name: stream,
                ack_timeout_seconds: ack_timeout,
                max_unacked_records,
                offset: offset as i32,
                creation_time: None,
            };
            c.create_subscription(req).await?;
            format!("created subscription {id}")
        }
        SubscriptionCmd::Describe { id } => {
            let r = c
                .get_subscription(pb::GetSubscriptionRequest { id })
                .await?
                .into_inner();
            let s = r.subscription.unwrap_or_default();
            let progress: Vec<String> = r
                .offsets
                .iter()
                .map(|o| format!("{}:{}", o.shard_id, o.batch_id))
                .collect();
            let row = vec![
                s.subscription_id,
                s.stream_name,
                s.ack_timeout_seconds.to_string(),
                progress.join(" "),
            ];
            table(
                &["id", "stream", "ack_timeout_seconds", "acked_up_to (shard:batch)"],
                &[row],
            )
        }
        SubscriptionCmd::Delete { id, force } => {
            c.delete_subscription(pb::DeleteSubscriptionRequest {
                subscription_id: id.clone(),
                force,
            })
            .await?;
            format!("deleted subscription {id}")
        }
    })
}

pub async fn connector(c: &mut Client, cmd: ConnectorCmd) -> Result<String, tonic::Status> {
    use crate::sql::Statement;
    Ok(match cmd {
        ConnectorCmd::List => crate::exec::execute(c, Statement::ShowConnectors).await?,
        ConnectorCmd::Describe { name } => {
            let k = c.get_connector(pb::GetConnectorRequest { name }).await?.into_inner();
            // The task's report: records moved and what it is doing (snapshot progress).
            let report = k.offsets.first().cloned().unwrap_or_default();
            let field = |name: &str| match report.fields.get(name).and_then(|v| v.kind.clone()) {
                Some(prost_types::value::Kind::StringValue(s)) => s,
                Some(prost_types::value::Kind::NumberValue(n)) => format!("{n}"),
                _ => String::new(),
            };
            table(
                &["name", "type", "target", "status", "records", "progress", "config"],
                &[vec![
                    k.name,
                    k.r#type,
                    k.target,
                    k.status,
                    field("deliveredRecords"),
                    field("progress"),
                    k.config,
                ]],
            )
        }
        ConnectorCmd::Create {
            name,
            kind,
            target,
            config,
        } => {
            let req = pb::CreateConnectorRequest {
                name: name.clone(),
                r#type: kind,
                target,
                config,
            };
            c.create_connector(req).await?;
            format!("created connector {name}")
        }
        ConnectorCmd::Pause { name } => crate::exec::execute(c, Statement::PauseConnector(name)).await?,
        ConnectorCmd::Resume { name } => crate::exec::execute(c, Statement::ResumeConnector(name)).await?,
        ConnectorCmd::Delete { name } => {
            crate::exec::execute(c, Statement::DropConnector { name, if_exists: false }).await?
        }
        ConnectorCmd::AlterConfig { name, config_json } => {
            c.alter_connector_config(pb::AlterConnectorConfigRequest {
                name: name.clone(),
                config: config_json,
            })
            .await?;
            format!("altered connector {name}")
        }
    })
}
