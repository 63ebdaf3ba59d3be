//! `hstream-runtime`: runs one connector task standalone against a remote server over gRPC, with
//! checkpoints in a local directory. Exits 0 when the task completes, 1 when it fails; Ctrl-C or
//! SIGTERM stops it gracefully (drain, checkpoint).
//!
//! hstream-runtime --server http://127.0.0.1:6570 --checkpoints ./cp \
//!     --name gen1 --type source --target generator --config '{"stream":"s","count":1000}'

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hstream_runtime::remote::{FileCheckpoints, GrpcStreams};
use hstream_runtime::supervisor::{self, State, TaskSpec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Parser)]
#[command(
    name = "hstream-runtime",
    about = "Run one connector task against a remote hstream server"
)]
struct Args {
    /// Server gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:6570")]
    server: String,
    /// Directory for the task's checkpoint.
    #[arg(long)]
    checkpoints: std::path::PathBuf,
    /// Task name (owns the checkpoint).
    #[arg(long)]
    name: String,
    /// source or sink.
    #[arg(long = "type")]
    kind: String,
    /// Connector type, e.g. generator.
    #[arg(long)]
    target: String,
    /// Connector config, a JSON object.
    #[arg(long)]
    config: String,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let code = rt.block_on(run(args))?;
    std::process::exit(code)
}

async fn run(args: Args) -> anyhow::Result<i32> {
    let registry = hstream_runtime::builtin();
    let kind = hstream_runtime::Kind::parse(&args.kind).context("--type must be source or sink")?;
    let connector = registry
        .get(kind, &args.target)
        .with_context(|| format!("unknown connector type {}", args.target))?;
    let config: serde_json::Value = serde_json::from_str(&args.config).context("--config is not JSON")?;
    if let Err(errors) = connector.validate(&config) {
        for e in &errors {
            eprintln!("invalid config: {e}");
        }
        return Ok(2);
    }
    let streams = Arc::new(GrpcStreams::connect(&args.server).await?);
    let checkpoints = Arc::new(FileCheckpoints::new(&args.checkpoints)?);
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let handle = supervisor::spawn(
        TaskSpec {
            name: args.name.clone(),
            connector,
            config,
            streams,
            checkpoints,
            initial: State::New,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        },
        &tasks,
        shutdown.clone(),
    );
    let mut status = handle.status.clone();
    let ended = status.wait_for(|s| matches!(s.state, State::Completed | State::Failed));
    let code = tokio::select! {
        s = ended => match s.map(|s| s.clone()) {
            Ok(s) if s.state == State::Completed => 0,
            Ok(s) => {
                eprintln!("task failed: {}", s.last_error.unwrap_or_default());
                1
            }
            Err(_) => 1,
        },
        _ = tokio::signal::ctrl_c() => 0,
    };
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    println!(
        "{}",
        serde_json::json!({
            "state": handle.status.borrow().state.as_str(),
            "records": handle.progress.records.load(std::sync::atomic::Ordering::Relaxed),
        })
    );
    Ok(code)
}
