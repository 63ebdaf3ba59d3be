//! Several server processes as one cluster: membership by gossip (`--gossip-port`,
//! `--seed-nodes`), seen through DescribeCluster, `SHOW NODES` and `hstream node list`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hstream_integration_tests::*;
use hstream_proto as pb;

/// Node id → state name, as DescribeCluster reports them.
async fn states(c: &Client) -> BTreeMap<u32, String> {
    let Ok(cluster) = c.clone().describe_cluster(()).await else {
        return BTreeMap::new();
    };
    cluster
        .into_inner()
        .server_nodes_status
        .iter()
        .map(|s| {
            let state = pb::NodeState::try_from(s.state).map_or("?", |st| st.as_str_name());
            (s.node.as_ref().map_or(0, |n| n.id), state.to_owned())
        })
        .collect()
}

async fn wait_states(c: &Client, what: &str, want: &[(u32, &str)]) {
    let want: BTreeMap<u32, String> = want.iter().map(|(i, s)| (*i, s.to_string())).collect();
    wait_until(Duration::from_secs(30), what, || {
        let want = want.clone();
        async move { states(c).await == want }
    })
    .await;
}

/// Three servers joined through the first one's gossip port (the third started before the
/// first): each lists all three Running with their client addresses; one stopped with
/// SIGTERM is Dead (left) to the others at once, one killed with SIGKILL within seconds; a
/// restarted one is Running again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_gossip_their_membership() {
    let tmp = tempfile::tempdir().unwrap();
    let ports: Vec<String> = (0..3).map(|_| free_port().to_string()).collect();
    let seed = format!("127.0.0.1:{}", ports[0]);
    let start = |i: usize| {
        let id = (i + 1).to_string();
        Server::start(
            &tmp.path().join(format!("n{id}")),
            &["--server-id", &id, "--gossip-port", &ports[i], "--seed-nodes", &seed],
        )
    };
    let mut three = start(2);
    let one = start(0);
    let mut two = start(1);
    let c1 = one.client().await;
    let all = [(1, "Running"), (2, "Running"), (3, "Running")];
    for c in [&c1, &two.client().await, &three.client().await] {
        wait_states(c, "all three running", &all).await;
    }
    let cluster = c1.clone().describe_cluster(()).await.unwrap().into_inner();
    let two_addr = cluster.server_nodes.iter().find(|n| n.id == 2).expect("node 2 listed");
    assert_eq!(
        (two_addr.host.as_str(), two_addr.port),
        ("127.0.0.1", u32::from(two.addr.port())),
        "the address clients dial"
    );

    // The shell and the CLI show the same.
    let out = tokio::process::Command::new(workspace_bin("hstream"))
        .args(["--port", &one.addr.port().to_string(), "node", "list"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for id in 1..=3 {
        assert!(text.contains(&format!("| {id}  | 127.0.0.1:")), "{text}");
    }
    assert_eq!(text.matches("Running").count(), 3, "{text}");
    let shell = sql(&one, "SHOW NODES;").await;
    assert_eq!(shell.matches("Running").count(), 3, "{shell}");

    // SIGTERM: node 2 leaves, and says so.
    let left = Instant::now();
    two.terminate();
    wait_states(&c1, "node 2 gone", &[(1, "Running"), (2, "Dead"), (3, "Running")]).await;
    let leaving = left.elapsed();
    // It said so: the others knew before any probe of it could have failed.
    assert!(
        leaving < Duration::from_secs(2),
        "a leaving node was gone only after {leaving:?}"
    );

    // SIGKILL: node 3 says nothing; the others find out by probing it.
    let killed = Instant::now();
    three.kill();
    wait_states(&c1, "node 3 dead", &[(1, "Running"), (2, "Dead"), (3, "Dead")]).await;
    let dying = killed.elapsed();
    assert!(
        dying < Duration::from_secs(15),
        "a killed node was noticed after {dying:?}"
    );

    // Back: a new process on the same ports replaces its dead self.
    let back = Instant::now();
    three.restart();
    wait_states(&c1, "node 3 back", &[(1, "Running"), (2, "Dead"), (3, "Running")]).await;
    println!(
        "membership: a leaving node gone after {leaving:?}, a killed one dead after {dying:?}, a restarted one back after {:?}",
        back.elapsed()
    );
}

/// Three servers sharing one etcd and one JetStream server, gossiping through the first.
struct Cluster {
    _tmp: tempfile::TempDir,
    _etcd: hstream_integration_tests::etcd::Etcd,
    _nats: hstream_integration_tests::nats::Nats,
    nodes: Vec<Server>,
}

impl Cluster {
    async fn start(extra: &[&str]) -> Cluster {
        let etcd = hstream_integration_tests::etcd::Etcd::start().await;
        let nats = hstream_integration_tests::nats::Nats::start().await;
        let tmp = tempfile::tempdir().unwrap();
        let gossip: Vec<String> = (0..3).map(|_| free_port().to_string()).collect();
        let seed = format!("127.0.0.1:{}", gossip[0]);
        let (meta, store) = (etcd.uri("cluster"), nats.uri("cluster"));
        let nodes: Vec<Server> = (0..3)
            .map(|i| {
                let id = (i + 1).to_string();
                let mut args = vec![
                    "--server-id",
                    &id,
                    "--gossip-port",
                    &gossip[i],
                    "--seed-nodes",
                    &seed,
                    "--metastore-uri",
                    &meta,
                    "--store",
                    &store,
                ];
                args.extend_from_slice(extra);
                Server::start(&tmp.path().join(format!("n{id}")), &args)
            })
            .collect();
        let all = [(1, "Running"), (2, "Running"), (3, "Running")];
        for n in &nodes {
            wait_states(&n.client().await, "all three running", &all).await;
        }
        Cluster {
            _tmp: tmp,
            _etcd: etcd,
            _nats: nats,
            nodes,
        }
    }
}

/// The official Python client on three nodes: a producer appends through LookupShard, two
/// consumers bootstrapped through different nodes consume one subscription through
/// LookupSubscription; the subscription's node is SIGKILLed mid-load. Every record the server
/// acknowledged is delivered (redeliveries allowed), records flow again within 10 s, and the
/// subscription's lookup names a surviving node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_consumers_follow_their_subscription_across_a_kill() {
    let cluster = Cluster::start(&[]).await;
    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.addr.to_string()).collect();
    let pids: Vec<String> = cluster.nodes.iter().map(|n| n.pid().to_string()).collect();
    let out = run_python(
        "cluster_failover.py",
        &["--nodes", &nodes.join(","), "--pids", &pids.join(","), "--records", "20000"],
    )
    .await;
    println!("subscription failover: {out}");
    assert_eq!(out["lost"], 0, "{out}");
    assert!(out["acked"].as_u64().unwrap() >= 20_000, "{out}");
    let resumed = out["resumed_after_s"].as_f64().expect("records flowed after the kill");
    assert!(resumed < 10.0, "records flowed again only {resumed:.1} s after the kill: {out}");
    assert_ne!(out["owner_after"], out["killed"], "{out}");
}
