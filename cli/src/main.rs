//! `hstream`: the command line for hstream-server. `hstream sql` runs HStreamDB's SQL: with
//! `-e "…"` one script (parsed whole before anything runs), otherwise statements read from the
//! terminal or a pipe, each run once its `;` arrives. `SELECT * FROM s EMIT CHANGES` tails new
//! records until Ctrl-C.

mod commands;
mod exec;

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
        // A script may start with '-' (a `--` comment).
        #[arg(short = 'e', long = "execute", allow_hyphen_values = true)]
        execute: Option<String>,
        /// History file of the interactive shell [default: ~/.hstream_history]
        #[arg(long)]
        history_file: Option<std::path::PathBuf>,
    },
    /// Streams without SQL.
    #[command(subcommand)]
    Stream(commands::StreamCmd),
    /// Subscriptions.
    #[command(subcommand, alias = "sub")]
    Subscription(commands::SubscriptionCmd),
    /// Connectors without SQL.
    #[command(subcommand)]
    Connector(commands::ConnectorCmd),
    /// The cluster's nodes.
    #[command(subcommand)]
    Node(NodeCmd),
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Every node with its address and state (SHOW NODES).
    List,
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
            Command::Sql {
                execute: Some(script), ..
            } => run_script(client, &script).await,
            Command::Sql {
                execute: None,
                history_file,
            } => {
                let history = history_file
                    .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".hstream_history")));
                shell(client, history).await
            }
            Command::Stream(cmd) => report(commands::stream(&mut client.clone(), cmd).await),
            Command::Subscription(cmd) => report(commands::subscription(&mut client.clone(), cmd).await),
            Command::Connector(cmd) => report(commands::connector(&mut client.clone(), cmd).await),
            Command::Node(NodeCmd::List) => {
                report(exec::execute(&mut client.clone(), hstream_sql::Statement::ShowNodes, "").await)
            }
        }
    });
    std::process::exit(code);
}

/// Prints a subcommand's result; the exit code says whether it worked.
fn report(r: Result<String, tonic::Status>) -> i32 {
    match r {
        Ok(out) => {
            println!("{out}");
            0
        }
        Err(s) => {
            eprintln!("error: {}", exec::error_text(&s));
            1
        }
    }
}

/// Parses the whole script, then runs it statement by statement; stops at the first failure.
async fn run_script(mut client: exec::Client, script: &str) -> i32 {
    let statements = match hstream_sql::parse_with_text(script) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    for (stmt, text) in statements {
        if run(&mut client, stmt, &text).await.is_err() {
            return 1;
        }
    }
    0
}

async fn run(client: &mut exec::Client, stmt: hstream_sql::Statement, text: &str) -> Result<(), ()> {
    let result = match stmt {
        hstream_sql::Statement::Select(select) => emit_changes(client, &select).await,
        other => exec::execute(client, other, text).await.map(|out| println!("{out}")),
    };
    result.map_err(|s| eprintln!("error: {}", exec::error_text(&s)))
}

/// Where shell input comes from: a line editor with history on a terminal, plain lines from a
/// pipe. Either runs on its own thread and is asked for one line at a time, so a prompt appears
/// only after the previous statement's output.
enum Input {
    Line(String),
    /// Ctrl-C at the prompt: drop the statement being typed.
    Interrupted,
    Eof,
}

type Reader = (
    std::sync::mpsc::Sender<String>,
    tokio::sync::mpsc::Receiver<Input>,
    std::thread::JoinHandle<()>,
);

fn spawn_reader(interactive: bool, history: Option<std::path::PathBuf>) -> Reader {
    let (ask_tx, ask_rx) = std::sync::mpsc::channel::<String>();
    let (tx, rx) = tokio::sync::mpsc::channel::<Input>(1);
    let handle = std::thread::spawn(move || {
        if interactive {
            let Ok(mut editor) = rustyline::DefaultEditor::new() else {
                let _ = tx.blocking_send(Input::Eof);
                return;
            };
            if let Some(h) = &history {
                let _ = editor.load_history(h);
            }
            while let Ok(prompt) = ask_rx.recv() {
                let input = match editor.readline(&prompt) {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                        }
                        Input::Line(line)
                    }
                    Err(rustyline::error::ReadlineError::Interrupted) => Input::Interrupted,
                    Err(_) => Input::Eof,
                };
                let eof = matches!(input, Input::Eof);
                if tx.blocking_send(input).is_err() || eof {
                    break;
                }
            }
            if let Some(h) = &history {
                let _ = editor.save_history(h);
            }
        } else {
            let mut lines = std::io::stdin().lock().lines();
            while ask_rx.recv().is_ok() {
                let input = match lines.next() {
                    Some(Ok(line)) => Input::Line(line),
                    _ => Input::Eof,
                };
                let eof = matches!(input, Input::Eof);
                if tx.blocking_send(input).is_err() || eof {
                    break;
                }
            }
        }
    });
    (ask_tx, rx, handle)
}

/// Reads statements (with a prompt and line editing on a terminal); each runs when complete.
async fn shell(mut client: exec::Client, history: Option<std::path::PathBuf>) -> i32 {
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        println!("hstream sql: statements end with ';'; :q to quit");
    }
    let (ask, mut rx, reader) = spawn_reader(interactive, history);
    let mut buf = String::new();
    let mut failed = false;
    loop {
        let prompt = if buf.is_empty() { "> " } else { "| " };
        if ask.send(prompt.to_owned()).is_err() {
            break;
        }
        let line = match rx.recv().await {
            Some(Input::Line(line)) => line,
            Some(Input::Interrupted) => {
                buf.clear();
                continue;
            }
            Some(Input::Eof) | None => break,
        };
        if buf.is_empty() && matches!(line.trim(), ":q" | "quit" | "exit") {
            break;
        }
        buf.push_str(&line);
        buf.push('\n');
        if !hstream_sql::complete(&buf) {
            continue;
        }
        let text = std::mem::take(&mut buf);
        match hstream_sql::parse_with_text(&text) {
            Ok(statements) => {
                for (stmt, text) in statements {
                    failed |= run(&mut client, stmt, &text).await.is_err();
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
    // Let the reader save the history before the process exits.
    drop(ask);
    drop(rx);
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    // A pipe's exit status tells whether every statement succeeded.
    if failed && !interactive { 1 } else { 0 }
}

/// A push query: tails new records of the stream through a temporary subscription until
/// Ctrl-C, and prints the query's result of each as a JSON row (evaluated here, by the same
/// evaluator as the server's persistent queries; a record the query cannot evaluate is
/// reported on stderr and skipped); the subscription is deleted on the way out.
async fn emit_changes(client: &mut exec::Client, select: &hstream_sql::Select) -> Result<(), tonic::Status> {
    let stream = select.from.as_str();
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
    // Opens the fetch on `node`: the channel acks go through, and the deliveries.
    let open = |mut node: exec::Client| {
        let sub = sub.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            let first = pb::StreamingFetchRequest {
                subscription_id: sub,
                consumer_name: "cli".into(),
                ack_ids: vec![],
            };
            let _ = tx.send(first).await;
            let inbound = node.streaming_fetch(ReceiverStream::new(rx)).await?.into_inner();
            Ok::<_, tonic::Status>((tx, inbound))
        }
    };
    let result = async {
        // In a cluster the subscription may run on another node: WrongServer names it.
        let (tx, mut inbound) = exec::on_owner(client, open).await?;
        // Registered before announcing, so a Ctrl-C right after the announcement is caught.
        let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| tonic::Status::internal(format!("cannot catch Ctrl-C: {e}")))?;
        eprintln!("-- tailing {stream}; Ctrl-C to stop");
        loop {
            tokio::select! {
                msg = inbound.message() => {
                    let Some(resp) = msg? else { return Ok(()) };
                    let Some(rr) = resp.received_records else { continue };
                    for row in rows(&rr) {
                        match apply(select, row) {
                            Ok(Some(line)) => println!("{line}"),
                            Ok(None) => {}
                            Err(e) => eprintln!("-- skipped a record: {e}"),
                        }
                    }
                    let _ = std::io::stdout().flush();
                    let ack = pb::StreamingFetchRequest { subscription_id: sub.clone(), consumer_name: "cli".into(), ack_ids: rr.record_ids };
                    let _ = tx.send(ack).await;
                }
                _ = interrupt.recv() => return Ok(()),
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

/// A received record: a JSON record's fields, or a RAW payload.
enum Row {
    Json(serde_json::Map<String, Value>),
    Raw(Vec<u8>),
    /// What cannot be shown (a compressed or undecodable batch), said as text.
    Note(String),
}

/// A query's result of one row as a line; `Ok(None)` when the row is filtered out. RAW
/// payloads pass a `SELECT *` as text; other queries read them as JSON objects.
fn apply(select: &hstream_sql::Select, row: Row) -> Result<Option<String>, String> {
    let fields = match row {
        Row::Note(n) => return Ok(Some(n)),
        Row::Raw(bytes) if select.is_identity() => return Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Row::Raw(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => m,
            _ => return Err("a RAW record that is not a JSON object".into()),
        },
        Row::Json(m) => m,
    };
    match select.apply(&fields) {
        // Whole numbers shown without a fraction (JSON records carry every number as a double).
        Ok(Some(out)) => Ok(Some(hstream_sql::integral(&Value::Object(out)).to_string())),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The records of a received batch.
fn rows(rr: &pb::ReceivedRecord) -> Vec<Row> {
    let Some(b) = &rr.record else { return Vec::new() };
    if b.compression_type != pb::CompressionType::None as i32 {
        return vec![Row::Note(format!("<{} compressed records>", b.batch_size))];
    }
    let Ok(recs) = pb::BatchHStreamRecords::decode(b.payload.clone()) else {
        return vec![Row::Note("<undecodable batch>".into())];
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
                    Ok(s) => Row::Json(s.fields.iter().map(|(k, v)| (k.clone(), exec::pb_to_json(v))).collect()),
                    Err(_) => Row::Note("<undecodable JSON record>".into()),
                }
            } else {
                Row::Raw(r.payload.to_vec())
            }
        })
        .collect()
}

use serde_json::Value;
