//! Starting and stopping one server node.
//!
//! Start: open the metastore, recover the log store, reconcile the two ([`reconcile`]: the data
//! directory must belong to the metastore's cluster; orphan shard directories of an interrupted
//! create or delete are removed, unknown ones refused), bind, join the gossip, start what the
//! placement puts here, then announce readiness.
//!
//! Shutdown phases (on the cancellation token, from SIGTERM/SIGINT):
//! 1. stop intake: the listener closes and new RPCs are refused; tailing reads end;
//!    subscriptions and connector tasks make their last commits; in-flight gRPC calls finish;
//! 2. release: everything this node holds is released, then it leaves the cluster's gossip
//!    (the others see it Left, not dead, and claim what it held at once);
//! 3. drain: the REST server and request-spawned tasks are awaited;
//! 4. flush: writer threads commit what is queued, then every shard is fsynced and its LSN
//!    reservation released;
//! 5. close: the metastore is closed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use hstream_proto::h_stream_api_server::HStreamApiServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;

use crate::catalog::{Catalog, ShardEntry, StreamEntry};
use crate::cluster::assign::{Assignments, Hosted};
use crate::cluster::membership::Membership;
use crate::config::Settings;
use crate::connectors::{Connectors, Hosting};
use crate::meta::{EtcdMetaStore, EtcdOptions, MetaStore, NodeMeta, SqliteMetaStore};
use crate::metrics::Metrics;
use crate::readers::Readers;
use crate::service::{Api, HStreamService, NodeInfo};
use crate::store::admin::{LocalAdmin, StoreAdmin};
use crate::store::jetstream::{JetStreamStore, NatsOptions};
use crate::store::{LogStore, Store, now_ms};
use crate::streams::Streams;
use crate::subscription::Subscriptions;

/// Opens the metastore at `uri`; `etcd` says how to reach an etcd one (TLS, user).
pub async fn open_meta(uri: &str, etcd: &EtcdOptions) -> anyhow::Result<Arc<dyn MetaStore>> {
    if let Some(path) = uri.strip_prefix("sqlite://") {
        let path = std::path::Path::new(path);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        return Ok(Arc::new(
            SqliteMetaStore::open(path)
                .await
                .with_context(|| format!("opening metastore {uri}"))?,
        ));
    }
    if uri.starts_with("etcd://") {
        return Ok(Arc::new(
            EtcdMetaStore::connect(uri, etcd)
                .await
                .with_context(|| format!("opening metastore {uri}"))?,
        ));
    }
    anyhow::bail!("metastore-uri {uri:?} is not supported (use sqlite://<path> or etcd://host:port,...[/prefix])")
}

/// Copies the metastore at `from` into the one at `to` (`--copy-metastore-to`); the server
/// must not be running on either. `etcd` applies to whichever of the two is on etcd.
pub async fn copy_metastore(from: &str, to: &str, etcd: &EtcdOptions) -> anyhow::Result<crate::meta::copy::Copied> {
    let source = open_meta(from, etcd).await?;
    let target = open_meta(to, etcd).await?;
    let copied = crate::meta::copy::copy(source.as_ref(), target.as_ref())
        .await
        .with_context(|| format!("copying metastore {from} into {to}"))?;
    source.close().await;
    target.close().await;
    Ok(copied)
}

/// Ties the data directory to the metastore and builds the catalog from the two, or refuses to
/// start (naming the directory, the metastore and the way out) when they do not belong together.
/// Never deletes data the metastore does not account for:
/// - the data directory's `cluster-id` must equal the metastore's; a side without one adopts the
///   other's only if it holds nothing, or (a data directory) only shards the metastore lists (a
///   first start that stopped between tying the two); a new metastore beside shard data, or a
///   new data directory beside a metastore that lists shards, is refused;
/// - a shard directory the metastore does not list is removed only if its id is below the
///   metastore's next shard id (an interrupted create or delete of this cluster); any other is
///   refused, or moved to `quarantine/` under `--quarantine-unknown-shards`;
/// - a listed shard whose directory is missing, or that cannot be opened, is served as
///   unavailable (DATA_LOSS), never recreated empty.
pub async fn reconcile(
    meta: &dyn MetaStore,
    store: &dyn StoreAdmin,
    metastore_uri: &str,
    quarantine_unknown: bool,
) -> anyhow::Result<Catalog> {
    let dir = store.describe();
    let flag = store.flag();
    let mut streams = meta.list_streams("").await?;
    let archived = meta.list_archived_streams().await?;
    streams.extend(archived.iter().cloned());
    let mut listed = Vec::new();
    for s in &streams {
        listed.push(meta.list_shards(&s.name).await?);
    }
    let known: HashSet<u64> = listed.iter().flatten().map(|sm| sm.id).collect();
    let on_disk = store.shard_ids();
    let next_id = meta.allocate_shard_ids(0).await?;

    let dir_id = store.cluster_id().await?;
    let meta_id = meta.cluster_id(None).await?;
    let id = match (&dir_id, &meta_id) {
        (Some(d), Some(m)) if d != m => anyhow::bail!(
            "{dir} belongs to cluster {d}, but metastore {metastore_uri} belongs to cluster {m}: \
             one of {flag} and --metastore-uri is wrong; start with the pair that belong together"
        ),
        (Some(d), None) if !on_disk.is_empty() => anyhow::bail!(
            "{dir} belongs to cluster {d} and holds {} shard(s), but metastore {metastore_uri} \
             has no cluster id (a new or wrong metastore?): start with the metastore that lists its \
             streams; nothing was changed",
            on_disk.len()
        ),
        // Holding shards, all of them this metastore's: the first start of this directory with
        // a cluster id stopped between tying the metastore and tying the directory.
        (None, Some(m)) if !on_disk.is_empty() && on_disk.iter().all(|s| known.contains(s)) => m.clone(),
        (None, Some(m)) if !known.is_empty() => anyhow::bail!(
            "metastore {metastore_uri} (cluster {m}) lists {} shard(s), but {dir} has no cluster id \
             and {} of them (a new or wrong {flag}?): start with the {flag} that holds them; \
             nothing was changed",
            known.len(),
            if on_disk.is_empty() { "none" } else { "not all" }
        ),
        (None, Some(m)) if !on_disk.is_empty() => anyhow::bail!(
            "{dir} holds {} shard(s) but no cluster id, and metastore {metastore_uri} belongs to \
             cluster {m}: they do not belong together; nothing was changed",
            on_disk.len()
        ),
        (Some(d), _) => d.clone(),
        (None, Some(m)) => m.clone(),
        (None, None) => new_cluster_id(),
    };

    // Shard directories the metastore does not list.
    let mut orphans = Vec::new();
    let mut unknown = Vec::new();
    for &sid in &on_disk {
        if !known.contains(&sid) {
            if sid < next_id {
                orphans.push(sid)
            } else {
                unknown.push(sid)
            }
        }
    }
    unknown.sort_unstable();
    if !unknown.is_empty() && !quarantine_unknown {
        anyhow::bail!(
            "{dir} holds shard(s) {unknown:?} that metastore {metastore_uri} never handed out \
             (its next shard id is {next_id}): is --metastore-uri right? Nothing was changed. To start anyway, \
             pass --quarantine-unknown-shards to set them aside (a data directory's go to quarantine/)"
        );
    }

    // Everything checks out: tie the two together, then tidy.
    if meta.cluster_id(Some(&id)).await?.as_deref() != Some(id.as_str()) {
        anyhow::bail!("metastore {metastore_uri} took another cluster id while this node started; restart it");
    }
    // An archived stream no subscription reads any more (left by a crash between deleting its
    // last subscription and it, in older versions) goes now; its directories are orphans below.
    let mut gone = HashSet::new();
    for a in &archived {
        if meta.subscriptions_of_stream(&a.name).await?.is_empty() {
            tracing::info!(stream = %a.name, "removing an archived stream no subscription reads");
            for sm in meta.delete_stream(&a.name).await? {
                gone.insert(sm.id);
                if store.shard_ids().contains(&sm.id) {
                    store.remove_shard(sm.id).await?;
                }
            }
        }
    }
    if dir_id.is_none() {
        store.set_cluster_id(&id).await?;
        tracing::info!(cluster = %id, store = %dir, "store tied to its metastore");
    }
    for sid in unknown {
        let to = store.quarantine_shard(sid).await?;
        tracing::warn!(shard = sid, %to, "unknown shard quarantined");
    }
    for sid in orphans {
        if !store.orphan_removable(sid).await {
            tracing::info!(
                shard = sid,
                "keeping a young shard the metastore does not list (another node may be creating it)"
            );
            continue;
        }
        tracing::info!(shard = sid, "removing a shard whose create or delete was interrupted");
        store.remove_shard(sid).await?;
    }
    let catalog = Catalog::default();
    for (s, shard_metas) in streams.into_iter().zip(listed) {
        if shard_metas.iter().any(|sm| gone.contains(&sm.id)) {
            continue;
        }
        let shards = shard_metas
            .into_iter()
            .map(|sm| ShardEntry {
                log: store.shard_or_missing(&s.name, sm.id),
                meta: sm,
            })
            .collect();
        catalog.insert(StreamEntry { meta: s, shards });
    }
    Ok(catalog)
}

/// The store `--store` names: the local segment store in the data directory (the default),
/// or JetStream.
async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn StoreAdmin>> {
    match &settings.store_uri {
        None => {
            let (root, opts) = (settings.data_dir.clone(), settings.store.clone());
            let store = tokio::task::spawn_blocking(move || LogStore::open(&root, opts)).await??;
            Ok(Arc::new(LocalAdmin(store)))
        }
        Some(uri) => {
            let opts = NatsOptions {
                max_batch_bytes: settings.max_record_size,
                min_replicas: settings.min_replication_factor,
                ..settings.nats.clone()
            };
            let store = JetStreamStore::connect(uri, &opts)
                .await
                .with_context(|| format!("opening store {uri}"))?;
            Ok(store)
        }
    }
}

/// Starts this node's gossip on `port` (UDP, on the bind address), joining through the seeds;
/// it leaves the cluster when `shutdown` is cancelled.
async fn join_cluster(
    settings: &Settings,
    node: &NodeInfo,
    port: u16,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<Membership> {
    let resolve = |host_port: String| async move {
        tokio::net::lookup_host(&host_port)
            .await
            .ok()
            .and_then(|addrs| addrs.into_iter().find(|a| a.is_ipv4()))
            .with_context(|| format!("{host_port} does not resolve to an IPv4 address"))
    };
    let bind = resolve(format!("{}:{port}", settings.bind_address)).await?;
    let gossip = resolve(format!("{}:{port}", settings.advertised_address))
        .await
        .context("--advertised-address must resolve to the address the others gossip to")?;
    // Others reach this node at its advertised address: a loopback one only works when every
    // node runs on this machine.
    for seed in &settings.seed_nodes {
        if let Ok(addr) = resolve(seed.clone()).await
            && gossip.ip().is_loopback()
            && !addr.ip().is_loopback()
        {
            anyhow::bail!(
                "--advertised-address {} is a loopback address but seed {seed} is not: give this node's \
                 address as the others reach it",
                settings.advertised_address
            );
        }
    }
    let me = crate::cluster::membership::Node {
        id: node.id,
        gossip,
        host: node.host.clone(),
        port: node.port,
        boot: next_boot(&settings.data_dir)?,
        leaving: false,
    };
    let membership = Membership::start(me, bind, settings.seed_nodes.clone(), shutdown.clone(), tasks)
        .await
        .with_context(|| format!("binding the gossip port {bind} (UDP)"))?;
    tracing::info!(gossip = %membership.me().gossip, seeds = ?settings.seed_nodes, "gossiping");
    Ok(membership)
}

/// This process's gossip incarnation: the clock in ms, but always above the last one used
/// over this data directory (`<data-dir>/gossip-boot`), so a restart wins over its earlier
/// self even when the clock stepped back.
fn next_boot(data_dir: &std::path::Path) -> anyhow::Result<u64> {
    let file = data_dir.join("gossip-boot");
    let last = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let boot = (now_ms() as u64).max(last + 1);
    std::fs::write(&file, boot.to_string()).with_context(|| format!("writing {}", file.display()))?;
    Ok(boot)
}

/// A fresh cluster id (a random UUID).
fn new_cluster_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Runs a node until `shutdown` is cancelled; `ready` gets the bound gRPC and REST addresses
/// once clients can connect.
pub async fn run(
    settings: Settings,
    shutdown: CancellationToken,
    ready: impl FnOnce(SocketAddr, SocketAddr),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
    // Uploaded WASM plugins (`PUT /wasm-plugins/{name}`), named by `"module" = '<name>'`.
    let plugins = settings.data_dir.join("plugins");
    std::fs::create_dir_all(&plugins).with_context(|| format!("creating {}", plugins.display()))?;
    hstream_runtime::wasm::set_plugin_dir(plugins);
    hstream_runtime::wasm::set_protected_dir(&settings.data_dir);
    let meta = open_meta(&settings.metastore_uri, &settings.etcd).await?;
    let store = open_store(&settings).await?;
    let catalog = reconcile(
        meta.as_ref(),
        store.as_ref(),
        &settings.metastore_uri,
        settings.quarantine_unknown_shards,
    )
    .await?;

    let listener = TcpListener::bind((settings.bind_address.as_str(), settings.port))
        .await
        .with_context(|| format!("binding {}:{}", settings.bind_address, settings.port))?;
    let addr = listener.local_addr()?;
    let node = NodeInfo {
        id: settings.server_id,
        host: settings.advertised_address.clone(),
        port: addr.port() as u32,
    };
    meta.upsert_node(
        &NodeMeta {
            id: node.id,
            host: node.host.clone(),
            port: node.port,
            state: "Running".into(),
            updated_ms: now_ms(),
        },
        None,
    )
    .await?;
    // The services, each built with what it needs; metrics registered as they are built.
    let tasks = TaskTracker::new();
    // The gossip outlives the rest of the shutdown: this node leaves only once it released
    // what it holds (until then nobody else claims it); however `run` ends, it leaves.
    let gossip_stop = CancellationToken::new();
    let _leave_on_exit = gossip_stop.clone().drop_guard();
    let membership = match settings.gossip_port {
        None => None,
        Some(port) => Some(Arc::new(
            join_cluster(&settings, &node, port, &gossip_stop, &tasks).await?,
        )),
    };
    let assignments = Arc::new(Assignments::new(
        meta.clone(),
        node.id,
        format!("{}:{}", node.host, node.port),
        membership.clone(),
        settings.placement_slack_percent,
    ));
    let shared_store: Arc<dyn Store> = store.store();
    let mut registry = prometheus_client::registry::Registry::default();
    let stream_metrics = crate::metrics::StreamMetrics::register(&mut registry);
    shared_store.register_metrics(&mut registry);
    let streams = Arc::new(Streams::new(
        meta.clone(),
        shared_store,
        catalog,
        crate::batch::Limits {
            max_record_size: settings.max_record_size,
            max_batch_records: settings.max_batch_records,
        },
        settings.min_replication_factor,
        stream_metrics,
    ));
    // Streams other nodes create and delete reach this node's catalog through the watch.
    let changes = meta.watch_streams().await?;
    tasks.spawn(streams.clone().follow(changes, shutdown.clone()));
    let connectors = Arc::new(Connectors::new(
        hstream_connectors::registry(),
        streams.clone(),
        meta.clone(),
        Hosting {
            node_id: node.id,
            node_address: format!("{}:{}", node.host, node.port),
            backoff: (settings.connector_retry_base, settings.connector_retry_max),
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
        },
        assignments.clone(),
    ));
    connectors.register_metrics(&mut registry);
    let subscriptions = Arc::new(Subscriptions::new(
        meta.clone(),
        streams.clone(),
        assignments.clone(),
        tasks.clone(),
        shutdown.clone(),
    ));
    assignments.add(Arc::downgrade(&subscriptions) as std::sync::Weak<dyn Hosted>);
    assignments.add(Arc::downgrade(&connectors) as std::sync::Weak<dyn Hosted>);
    subscriptions.register_metrics(&mut registry);
    let readers = Arc::new(Readers::new(meta.clone(), streams.clone(), shutdown.clone()));
    let api = Arc::new(Api {
        node,
        started: std::time::Instant::now(),
        streams: streams.clone(),
        subscriptions: subscriptions.clone(),
        readers,
        connectors: connectors.clone(),
        queries: Arc::new(crate::connectors::queries::Queries::new(
            connectors.clone(),
            streams.clone(),
        )),
        metrics: Arc::new(Metrics::new(registry)),
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
        membership,
        assignments: assignments.clone(),
    });

    // What the placement puts here starts before clients are served; the placer then
    // follows membership changes, creations and deletions.
    assignments.place_now().await?;
    tasks.spawn(assignments.clone().run(shutdown.clone()));

    let every = settings.retention_interval;
    let retention_shutdown = shutdown.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = retention_shutdown.cancelled() => return,
                _ = tick.tick() => streams.enforce_retention().await,
            }
        }
    });

    // Room for a batch of max-record-size plus request framing, so that an oversized batch
    // reaches our own size check and gets its clear error.
    let max_message = settings.max_record_size.saturating_mul(2).max(4 << 20);
    let service = HStreamApiServer::new(HStreamService::new(api.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(usize::MAX);
    let http = TcpListener::bind((settings.bind_address.as_str(), settings.http_port))
        .await
        .with_context(|| format!("binding {}:{} (REST)", settings.bind_address, settings.http_port))?;
    let http_addr = http.local_addr()?;
    let rest = crate::rest::router(api.clone());
    let rest_shutdown = shutdown.clone();
    tasks.spawn(async move {
        let served = axum::serve(http, rest)
            .with_graceful_shutdown(rest_shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "REST server failed");
        }
    });
    tracing::info!(%addr, %http_addr, data_dir = %settings.data_dir.display(), fsync = ?settings.store.fsync, "serving");
    ready(addr, http_addr);
    tonic::transport::Server::builder()
        // A client whose host or network vanished (no FIN, no RST) is noticed by its unanswered
        // pings, so its StreamingFetch sessions end and their shards go to other consumers
        // within interval + timeout, not the kernel's retransmission timeout (~15 min).
        .http2_keepalive_interval(Some(settings.grpc_keepalive_interval))
        .http2_keepalive_timeout(Some(settings.grpc_keepalive_timeout))
        .add_service(service)
        .serve_with_incoming_shutdown(
            // Small request/response exchanges must not wait on Nagle's algorithm.
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(settings.grpc_keepalive_interval)),
            shutdown.cancelled(),
        )
        .await
        .context("grpc server failed")?;

    tracing::info!("shutdown: releasing what this node holds");
    assignments.release_all().await;
    gossip_stop.cancel();
    tracing::info!("shutdown: draining");
    tasks.close();
    tasks.wait().await;
    tracing::info!("shutdown: flushing log store");
    store.shutdown().await;
    meta.upsert_node(
        &NodeMeta {
            id: api.node.id,
            host: api.node.host.clone(),
            port: api.node.port,
            state: "Dead".into(),
            updated_ms: now_ms(),
        },
        None,
    )
    .await?;
    meta.close().await;
    tracing::info!("shutdown: done");
    Ok(())
}
