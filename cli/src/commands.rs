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
    /// State, records, rates, lag and progress of a connector; with --watch, refreshed.
    Status {
        name: String,
        /// Refresh until interrupted.
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// With --watch: stop after this many refreshes.
        #[arg(long)]
        count: Option<u64>,
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
        StreamCmd::List => crate::exec::execute(c, hstream_sql::Statement::ShowStreams, "").await?,
        StreamCmd::Create {
            name,
            replication_factor,
            backlog_duration,
            shards,
        } => {
            let stmt = hstream_sql::Statement::CreateStream {
                name,
                replication: replication_factor,
                shards,
                backlog_secs: backlog_duration,
            };
            crate::exec::execute(c, stmt, "").await?
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
        SubscriptionCmd::List => crate::exec::execute(c, hstream_sql::Statement::ShowSubscriptions, "").await?,
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
            crate::exec::on_owner(c, |mut c| {
                let req = pb::DeleteSubscriptionRequest {
                    subscription_id: id.clone(),
                    force,
                };
                async move { c.delete_subscription(req).await }
            })
            .await?;
            format!("deleted subscription {id}")
        }
    })
}

pub async fn connector(c: &mut Client, cmd: ConnectorCmd) -> Result<String, tonic::Status> {
    use hstream_sql::Statement;
    Ok(match cmd {
        ConnectorCmd::List => crate::exec::execute(c, Statement::ShowConnectors, "").await?,
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
        ConnectorCmd::Status {
            name,
            watch,
            interval,
            count,
        } => {
            let every = std::time::Duration::from_secs_f64(interval.max(0.1));
            let mut last: Option<Sample> = None;
            let mut shown = 0u64;
            loop {
                let k = c
                    .get_connector(pb::GetConnectorRequest { name: name.clone() })
                    .await?
                    .into_inner();
                let line = status_line(&k, &mut last);
                shown += 1;
                // The last line is the command's output; earlier ones are printed as they come.
                if !watch || count.is_some_and(|n| shown >= n) {
                    break line;
                }
                println!("{line}");
                tokio::time::sleep(every).await;
            }
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
        ConnectorCmd::Pause { name } => crate::exec::execute(c, Statement::PauseConnector(name), "").await?,
        ConnectorCmd::Resume { name } => crate::exec::execute(c, Statement::ResumeConnector(name), "").await?,
        ConnectorCmd::Delete { name } => {
            crate::exec::execute(c, Statement::DropConnector { name, if_exists: false }, "").await?
        }
        ConnectorCmd::AlterConfig { name, config_json } => {
            crate::exec::on_owner(c, |mut c| {
                let req = pb::AlterConnectorConfigRequest {
                    name: name.clone(),
                    config: config_json.clone(),
                };
                async move { c.alter_connector_config(req).await }
            })
            .await?;
            format!("altered connector {name}")
        }
    })
}

/// What the previous status line saw: when, records, bytes, and progress `n` of `n/N`.
type Sample = (std::time::Instant, f64, f64, Option<f64>);

/// One status line: state, records and bytes (with rates since the previous line), lag, and the
/// task's progress, with a bar and an estimate of the time left when it says `n/~N`.
fn status_line(k: &pb::Connector, last: &mut Option<Sample>) -> String {
    use prost_types::value::Kind;
    let report = k.offsets.first().cloned().unwrap_or_default();
    let num = |name: &str| match report.fields.get(name).and_then(|v| v.kind.clone()) {
        Some(Kind::NumberValue(n)) => n,
        _ => 0.0,
    };
    let records = num("deliveredRecords");
    let bytes = num("deliveredBytes");
    let progress_text = match report.fields.get("progress").and_then(|v| v.kind.clone()) {
        Some(Kind::StringValue(p)) => Some(p),
        _ => None,
    };
    let fraction = progress_text.as_deref().and_then(done_of_total);
    let now = std::time::Instant::now();
    let mut eta = String::new();
    let rates = match last.replace((now, records, bytes, fraction.map(|(d, _)| d))) {
        Some((t, r, b, prev_done)) if now > t => {
            let secs = (now - t).as_secs_f64();
            if let (Some(p), Some((done, total))) = (prev_done, fraction) {
                let speed = (done - p) / secs;
                if speed > 0.0 && total > done {
                    eta = format!(" ~{:.0}s left", (total - done) / speed);
                }
            }
            format!("  {:.0} rec/s  {:.0} B/s", (records - r) / secs, (bytes - b) / secs)
        }
        _ => String::new(),
    };
    let lag = match report.fields.get("lag").and_then(|v| v.kind.clone()) {
        Some(Kind::StructValue(s)) => s
            .fields
            .iter()
            .filter_map(|(k, v)| match &v.kind {
                Some(Kind::NumberValue(n)) => Some(format!("  lag {n:.0} {k}")),
                _ => None,
            })
            .collect::<String>(),
        _ => String::new(),
    };
    let progress = match &progress_text {
        Some(p) => format!("  {}{p}{eta}", bar(p)),
        None => String::new(),
    };
    let dead = match num("deadLetters") {
        0.0 => String::new(),
        n => format!("  {n:.0} dead letters"),
    };
    format!(
        "{} {}  {records:.0} records{rates}{dead}{lag}{progress}",
        k.name, k.status
    )
}

/// `(n, N)` of a progress text holding `n/~N rows` or `n/N records` (decimal counts followed
/// by a word; an LSN such as `0/1500000` is not a count).
fn done_of_total(progress: &str) -> Option<(f64, f64)> {
    let words: Vec<&str> = progress.split_whitespace().collect();
    words.windows(2).find_map(|w| {
        if !w[1].chars().all(|c| c.is_ascii_alphabetic()) {
            return None;
        }
        let (a, b) = w[0].split_once('/')?;
        let b = b.trim_start_matches('~');
        let digits = |x: &str| !x.is_empty() && x.chars().all(|c| c.is_ascii_digit());
        if !digits(a) || !digits(b) {
            return None;
        }
        Some((a.parse().ok()?, b.parse().ok()?))
    })
}

/// `[#####.....] 50% ` for a progress text holding `n/~N` or `n/N`, else nothing.
fn bar(progress: &str) -> String {
    let Some((done, total)) = done_of_total(progress) else {
        return String::new();
    };
    if total <= 0.0 {
        return String::new();
    }
    let f = (done / total).clamp(0.0, 1.0);
    let filled = (f * 20.0).round() as usize;
    format!(
        "[{}{}] {:>3.0}% ",
        "#".repeat(filled),
        ".".repeat(20 - filled),
        f * 100.0
    )
}

#[cfg(test)]
mod status_tests {
    use super::bar;

    #[test]
    fn progress_bars_from_snapshot_reports() {
        assert_eq!(bar("snapshot app.t: 500/~1000 rows"), "[##########..........]  50% ");
        assert_eq!(bar("snapshot done: 1 tables, 10 rows"), "");
        assert_eq!(bar("streaming at mysql-bin.000001:4"), "");
        assert_eq!(bar("copied 30/20 records"), "[####################] 100% ");
        assert_eq!(bar("streaming from 0/1500000"), "");
        assert_eq!(bar("streaming from 0/1E5 now"), "");
    }
}
