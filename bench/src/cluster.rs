//! Three server processes on this machine sharing one etcd and one JetStream server.
//!
//! - **Lookups per second**: concurrent clients spread over the three nodes call LookupShard,
//!   LookupKey, LookupSubscription and LookupResource, each beside Echo on the same channels:
//!   a gRPC round trip, the floor every lookup pays.
//! - **Failover**: connector tasks spread over the three nodes; a node other than the first is
//!   SIGKILLed, then restarted, several times in turn. For each kill: the time until gossip
//!   declares it dead (the floor: nothing may move before a node is known gone) and until
//!   every task it ran is RUNNING elsewhere.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hstream_integration_tests::etcd::Etcd;
use hstream_integration_tests::nats::Nats;
use hstream_integration_tests::{Client, Server, cluster_node_args, free_port};
use hstream_proto as pb;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Concurrent lookup clients, each with its own channel, spread over the nodes.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds each lookup kind runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Generator tasks spread over the nodes.
    #[arg(long, default_value_t = 30)]
    tasks: usize,
    /// Kills (each followed by a restart and a settle).
    #[arg(long, default_value_t = 3)]
    kills: usize,
}

impl Args {
    pub fn default_args() -> Args {
        Args {
            clients: 16,
            seconds: 5,
            tasks: 30,
            kills: 3,
        }
    }
}

struct Cluster {
    _tmp: tempfile::TempDir,
    _etcd: Etcd,
    _nats: Nats,
    nodes: Vec<Server>,
}

async fn start_cluster() -> anyhow::Result<Cluster> {
    let etcd = Etcd::start().await;
    let nats = Nats::start().await;
    let dir = hstream_integration_tests::repo_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let tmp = tempfile::tempdir_in(&dir)?;
    let gossip: Vec<String> = (0..3).map(|_| free_port().to_string()).collect();
    let (meta, store) = (etcd.uri("bench"), nats.uri("bench"));
    let nodes: Vec<Server> = (0..3)
        .map(|i| {
            let args = cluster_node_args(i, &gossip, &meta, &store);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Server::start(&tmp.path().join(format!("n{}", i + 1)), &args)
        })
        .collect();
    let c = nodes[0].client().await;
    wait(Duration::from_secs(60), "three nodes running", || {
        let c = c.clone();
        async move { running_nodes(&c).await.len() == 3 }
    })
    .await?;
    Ok(Cluster {
        _tmp: tmp,
        _etcd: etcd,
        _nats: nats,
        nodes,
    })
}

async fn wait<F, Fut>(within: Duration, what: &str, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !cond().await {
        anyhow::ensure!(t.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The ids of the nodes DescribeCluster reports in `state`.
async fn nodes_in(c: &Client, state: pb::NodeState) -> Vec<u32> {
    let Ok(cluster) = c.clone().describe_cluster(()).await else {
        return Vec::new();
    };
    cluster
        .into_inner()
        .server_nodes_status
        .iter()
        .filter(|s| s.state == state as i32)
        .filter_map(|s| s.node.as_ref().map(|n| n.id))
        .collect()
}

async fn running_nodes(c: &Client) -> Vec<u32> {
    nodes_in(c, pb::NodeState::Running).await
}

async fn dead_nodes(c: &Client) -> Vec<u32> {
    nodes_in(c, pb::NodeState::Dead).await
}

/// Connector name → (node `host:port`, status).
async fn placed(c: &Client) -> BTreeMap<String, (String, String)> {
    let Ok(list) = c.clone().list_connectors(pb::ListConnectorsRequest {}).await else {
        return BTreeMap::new();
    };
    list.into_inner()
        .connectors
        .into_iter()
        .map(|c| (c.name, (c.node, c.status)))
        .collect()
}

fn all_running_on(p: &BTreeMap<String, (String, String)>, n: usize, on: &[String]) -> bool {
    p.len() == n && p.values().all(|(node, s)| s == "RUNNING" && on.contains(node))
}

/// One lookup kind: `clients` loops for `seconds`, each on its own channel to node
/// `i % 3`; returns calls per second.
async fn rate<F, Fut>(cluster: &Cluster, args: &Args, call: F) -> anyhow::Result<f64>
where
    F: Fn(Client, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut loops = Vec::new();
    for i in 0..args.clients {
        let c = cluster.nodes[i % cluster.nodes.len()].client().await;
        let (done, call) = (done.clone(), call.clone());
        loops.push(tokio::spawn(async move {
            let mut n = i as u64;
            while Instant::now() < deadline {
                call(c.clone(), n).await?;
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), tonic::Status>(())
        }));
    }
    let t = Instant::now();
    for l in loops {
        l.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64())
}

async fn lookups(cluster: &Cluster, args: &Args, shards: Arc<Vec<u64>>) -> anyhow::Result<()> {
    let echo = |mut c: Client, _| async move { c.echo(pb::EchoRequest { msg: "x".into() }).await.map(|_| ()) };
    // The first run warms the channels and the servers up; the second is the floor.
    rate(cluster, args, echo).await?;
    let echo = rate(cluster, args, echo).await?;
    println!(
        "  Echo (the gRPC floor)    {echo:>9.0} calls/s  ({} clients over 3 nodes)",
        args.clients
    );
    let report = |name: &str, r: f64| println!("  {name:<24} {r:>9.0} calls/s  {:.2}x Echo", r / echo);
    let s = shards.clone();
    let r = rate(cluster, args, move |mut c, n| {
        let shard_id = s[n as usize % s.len()];
        async move { c.lookup_shard(pb::LookupShardRequest { shard_id }).await.map(|_| ()) }
    })
    .await?;
    report("LookupShard", r);
    let r = rate(cluster, args, |mut c, n| async move {
        c.lookup_key(pb::LookupKeyRequest {
            partition_key: format!("key-{n}"),
        })
        .await
        .map(|_| ())
    })
    .await?;
    report("LookupKey", r);
    let r = rate(cluster, args, |mut c, n| async move {
        c.lookup_subscription(pb::LookupSubscriptionRequest {
            subscription_id: format!("bsub{}", n % 4),
        })
        .await
        .map(|_| ())
    })
    .await?;
    report("LookupSubscription", r);
    let tasks = args.tasks as u64;
    let r = rate(cluster, args, move |mut c, n| async move {
        c.lookup_resource(pb::LookupResourceRequest {
            res_type: pb::ResourceType::ResConnector as i32,
            res_id: format!("t{:02}", n % tasks),
        })
        .await
        .map(|_| ())
    })
    .await?;
    report("LookupResource(connector)", r);
    Ok(())
}

async fn failover(cluster: &mut Cluster, args: &Args) -> anyhow::Result<()> {
    let c1 = cluster.nodes[0].client().await;
    let mut dead_after = Vec::new();
    let mut moved_after = Vec::new();
    for k in 0..args.kills {
        // A restarted node listens on a new port.
        let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.to_string()).collect();
        let spread = wait(Duration::from_secs(60), "every task running on three nodes", || {
            let (c, addrs) = (c1.clone(), addrs.clone());
            async move {
                let p = placed(&c).await;
                all_running_on(&p, args.tasks, &addrs)
                    && p.values()
                        .map(|(n, _)| n)
                        .collect::<std::collections::BTreeSet<_>>()
                        .len()
                        == 3
            }
        })
        .await;
        if let Err(e) = spread {
            let mut loads: BTreeMap<String, usize> = BTreeMap::new();
            for (n, s) in placed(&c1).await.into_values() {
                *loads.entry(format!("{n} {s}")).or_default() += 1;
            }
            anyhow::bail!("{e}: {loads:?}, nodes running: {:?}", running_nodes(&c1).await);
        }
        let victim = 1 + k % 2;
        let before = placed(&c1).await;
        let on_victim = before.values().filter(|(n, _)| *n == addrs[victim]).count();
        let survivors: Vec<String> = addrs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != victim)
            .map(|(_, a)| a.clone())
            .collect();
        let killed = Instant::now();
        cluster.nodes[victim].kill();
        let mut dead = None;
        loop {
            if dead.is_none() && dead_nodes(&c1).await.contains(&(victim as u32 + 1)) {
                dead = Some(killed.elapsed());
            }
            if all_running_on(&placed(&c1).await, args.tasks, &survivors) {
                break;
            }
            anyhow::ensure!(killed.elapsed() < Duration::from_secs(60), "tasks did not move");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let moved = killed.elapsed();
        let dead = dead.unwrap_or(moved);
        println!(
            "  kill {}: node {} ({on_victim} tasks) dead to gossip after {:.2} s, its tasks running elsewhere after {:.2} s",
            k + 1,
            victim + 1,
            dead.as_secs_f64(),
            moved.as_secs_f64()
        );
        dead_after.push(dead.as_secs_f64());
        moved_after.push(moved.as_secs_f64());
        cluster.nodes[victim].restart();
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut gaps: Vec<f64> = moved_after.iter().zip(&dead_after).map(|(m, d)| m - d).collect();
    let mut ratios: Vec<f64> = moved_after.iter().zip(&dead_after).map(|(m, d)| m / d).collect();
    let (d, m, g, r) = (
        median(&mut dead_after),
        median(&mut moved_after),
        median(&mut gaps),
        median(&mut ratios),
    );
    println!(
        "  medians: dead to gossip {d:.2} s, tasks running elsewhere {m:.2} s, {g:.2} s after the node was known gone ({r:.2}x the detection floor)"
    );
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    println!(
        "cluster: 3 nodes (release build), one etcd, one JetStream server; {} lookup clients, {} s per kind; {} generator tasks, {} kills",
        args.clients, args.seconds, args.tasks, args.kills
    );
    let mut cluster = start_cluster().await?;
    let mut c = cluster.nodes[0].client().await;
    c.create_stream(pb::Stream {
        stream_name: "lk".into(),
        replication_factor: 1,
        shard_count: 8,
        ..Default::default()
    })
    .await?;
    let shards: Vec<u64> = c
        .list_shards(pb::ListShardsRequest {
            stream_name: "lk".into(),
        })
        .await?
        .into_inner()
        .shards
        .iter()
        .map(|s| s.shard_id)
        .collect();
    for i in 0..4 {
        c.create_subscription(pb::Subscription {
            subscription_id: format!("bsub{i}"),
            stream_name: "lk".into(),
            ack_timeout_seconds: 30,
            max_unacked_records: 100,
            offset: pb::SpecialOffset::Earliest as i32,
            creation_time: None,
        })
        .await?;
    }
    for i in 0..args.tasks {
        let cfg = serde_json::json!({"stream": format!("ts{i:02}"), "rate": 20, "batchSize": 10});
        c.create_connector(pb::CreateConnectorRequest {
            name: format!("t{i:02}"),
            r#type: "source".into(),
            target: "generator".into(),
            config: cfg.to_string(),
        })
        .await?;
    }
    println!("lookups:");
    lookups(&cluster, &args, Arc::new(shards)).await?;
    println!("failover (kill -9 of one node, then restart; {} times):", args.kills);
    failover(&mut cluster, &args).await
}
