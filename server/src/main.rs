use clap::Parser;
use hstream_server::config::{Flags, LogFormat, Settings};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

fn main() -> anyhow::Result<()> {
    let settings = Settings::resolve(Flags::parse())?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log_level));
    // stderr as text or JSON lines, plus each connector's own log (GetConnectorLogs).
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match settings.log_format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(true).boxed(),
    };
    // The connector logs keep INFO and above whatever stderr's filter says.
    let task_logs = hstream_runtime::logs::TaskLogLayer.with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(task_logs)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Some(to) = &settings.copy_metastore_to {
        let c = rt.block_on(hstream_server::node::copy_metastore(
            &settings.metastore_uri,
            to,
            &settings.etcd,
        ))?;
        println!(
            "copied {} stream(s) with {} shard(s), {} subscription(s), {} reader(s), {} connector(s), \
             {} checkpoint(s) and {} node(s) from {} into {to}",
            c.streams,
            c.shards,
            c.subscriptions,
            c.readers,
            c.connectors,
            c.checkpoints,
            c.nodes,
            settings.metastore_uri
        );
        return Ok(());
    }
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received, shutting down");
            signals.cancel();
        });
        hstream_server::node::run(settings, shutdown, |addr, http| {
            // Machine-readable readiness lines for scripts and tests (REST first).
            println!("hstream-server rest listening on {http}");
            println!("hstream-server listening on {addr}");
        })
        .await
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
