//! `hstream`: the command line for hstream-server. `hstream sql` runs HStreamDB's SQL: with
//! `-e "…"` one script (parsed whole before anything runs), otherwise statements read from the
//! terminal or a pipe, each run once its `;` arrives. `SELECT * FROM s EMIT CHANGES` tails new
//! records until Ctrl-C.

mod exec;
mod sql;

use std::io::{BufRead, IsTerminal, Write};

use clap::{Parser, Subcommand};
use hstream_proto as pb;
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Parser)]
#[command(name = "hstream", version, about = "Command line for hstream-server")]
struct Cli {
    /// Server host.
    #[arg(long, global = true, default_value = "127.0.0.1")]
    host: String,
    /// Server gRPC port.
    #[arg(long, global = true, default_value_t = 6570)]
    port: u16,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// HStreamDB SQL: an interactive shell, or one script with -e.
    Sql {
        /// Execute this script and exit.
        #[arg(short = 'e', long = "execute")]
        execute: Option<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(async move {
        let endpoint = format!("http://{}:{}", cli.host, cli.port);
        let client = match exec::Client::connect(endpoint.clone()).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot connect to {endpoint}: {e}");
                return 2;
            }
        };
        match cli.command {
            Command::Sql { execute: Some(script) } => run_script(client, &script).await,
            Command::Sql { execute: None } => shell(client).await,
        }
    });
    std::process::exit(code);
}

/// Parses the whole script, then runs it statement by statement; stops at the first failure.
async fn run_script(mut client: exec::Client, script: &str) -> i32 {
    let statements = match sql::parse(script) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    for stmt in statements {
        if run(&mut client, stmt).await.is_err() {
            return 1;
        }
    }
    0
}

async fn run(client: &mut exec::Client, stmt: sql::Statement) -> Result<(), ()> {
    let result = match stmt {
        sql::Statement::SelectEmitChanges { stream } => emit_changes(client, &stream).await,
        other => exec::execute(client, other).await.map(|out| println!("{out}")),
    };
    result.map_err(|s| eprintln!("error: {}", exec::error_text(&s)))
}

/// Reads statements line by line (a terminal shows a prompt); each runs when complete.
async fn shell(mut client: exec::Client) -> i32 {
    let interactive = std::io::stdin().is_terminal();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<String>>(1);
    // Blocking stdin on its own thread; one line at a time (the channel holds one).
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(Some(line)).is_err() {
                return;
            }
        }
        let _ = tx.blocking_send(None);
    });
    let mut buf = String::new();
    let mut failed = false;
    loop {
        if interactive {
            print!("{}", if buf.is_empty() { "> " } else { "| " });
            let _ = std::io::stdout().flush();
        }
        let Some(Some(line)) = rx.recv().await else { break };
        if buf.is_empty() && matches!(line.trim(), ":q" | "quit" | "exit") {
            break;
        }
        buf.push_str(&line);
        buf.push('\n');
        if !sql::complete(&buf) {
            continue;
        }
        let text = std::mem::take(&mut buf);
        match sql::parse(&text) {
            Ok(statements) => {
                for stmt in statements {
                    failed |= run(&mut client, stmt).await.is_err();
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if !buf.trim().is_empty() {
        eprintln!("error: incomplete statement at end of input (missing ';')");
        failed = true;
    }
    // A pipe's exit status tells whether every statement succeeded.
    if failed && !interactive { 1 } else { 0 }
}

/// Tails new records of a stream through a temporary subscription until Ctrl-C, printing each
/// as a JSON row; the subscription is deleted on the way out.
async fn emit_changes(client: &mut exec::Client, stream: &str) -> Result<(), tonic::Status> {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let sub = format!("cli_internal_subscription_{}_{nonce}", std::process::id());
    client
        .create_subscription(pb::Subscription {
            subscription_id: sub.clone(),
            stream_name: stream.to_owned(),
            ack_timeout_seconds: 60,
            max_unacked_records: 10_000,
            offset: pb::SpecialOffset::Latest as i32,
            creation_time: None,
        })
        .await?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let first = pb::StreamingFetchRequest {
        subscription_id: sub.clone(),
        consumer_name: "cli".into(),
        ack_ids: vec![],
    };
    let _ = tx.send(first).await;
    let result = async {
        let mut inbound = client.clone().streaming_fetch(ReceiverStream::new(rx)).await?.into_inner();
        eprintln!("-- tailing {stream}; Ctrl-C to stop");
        loop {
            tokio::select! {
                msg = inbound.message() => {
                    let Some(resp) = msg? else { return Ok(()) };
                    let Some(rr) = resp.received_records else { continue };
                    for line in rows(&rr) {
                        println!("{line}");
                    }
                    let _ = std::io::stdout().flush();
                    let ack = pb::StreamingFetchRequest { subscription_id: sub.clone(), consumer_name: "cli".into(), ack_ids: rr.record_ids };
                    let _ = tx.send(ack).await;
                }
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }
    .await;
    let _ = client
        .delete_subscription(pb::DeleteSubscriptionRequest {
            subscription_id: sub,
            force: true,
        })
        .await;
    result
}

/// Each record of a received batch as one line: JSON records as JSON, raw ones as text.
fn rows(rr: &pb::ReceivedRecord) -> Vec<String> {
    let Some(b) = &rr.record else { return Vec::new() };
    if b.compression_type != pb::CompressionType::None as i32 {
        return vec![format!("<{} compressed records>", b.batch_size)];
    }
    let Ok(recs) = pb::BatchHStreamRecords::decode(b.payload.clone()) else {
        return vec!["<undecodable batch>".into()];
    };
    recs.records
        .iter()
        .map(|r| {
            let json = r
                .header
                .as_ref()
                .is_some_and(|h| h.flag == pb::h_stream_record_header::Flag::Json as i32);
            if json {
                match prost_types::Struct::decode(r.payload.clone()) {
                    Ok(s) => Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), exec::pb_to_json(v))).collect())
                        .to_string(),
                    Err(_) => "<undecodable JSON record>".into(),
                }
            } else {
                String::from_utf8_lossy(&r.payload).into_owned()
            }
        })
        .collect()
}

use serde_json::Value;
