//! Several server processes as one cluster: membership by gossip (`--gossip-port`,
//! `--seed-nodes`), seen through DescribeCluster, `SHOW NODES` and `hstream node list`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hstream_integration_tests::proxy::CuttableProxy;
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
pub(super) struct Cluster {
    _tmp: tempfile::TempDir,
    _etcd: hstream_integration_tests::etcd::Etcd,
    _nats: hstream_integration_tests::nats::Nats,
    /// Each node's gossip port.
    gossip: Vec<String>,
    /// The proxy between one node and etcd (`start_with`).
    proxy: Option<CuttableProxy>,
    pub(super) nodes: Vec<Server>,
}

impl Cluster {
    pub(super) async fn start(extra: &[&str]) -> Cluster {
        Self::start_with(extra, None).await
    }

    /// With `behind_proxy`, that node reaches etcd through a [`CuttableProxy`] (`self.proxy`).
    async fn start_with(extra: &[&str], behind_proxy: Option<usize>) -> Cluster {
        let etcd = hstream_integration_tests::etcd::Etcd::start().await;
        let nats = hstream_integration_tests::nats::Nats::start().await;
        let tmp = tempfile::tempdir().unwrap();
        let gossip: Vec<String> = (0..3).map(|_| free_port().to_string()).collect();
        let (meta, store) = (etcd.uri("cluster"), nats.uri("cluster"));
        let proxy = match behind_proxy {
            Some(_) => {
                let target = meta.trim_start_matches("etcd://").trim_end_matches("/cluster");
                Some(CuttableProxy::start(target.parse().expect("one etcd address")).await)
            }
            None => None,
        };
        let nodes: Vec<Server> = (0..3)
            .map(|i| {
                let meta = match (&proxy, behind_proxy) {
                    (Some(p), Some(j)) if i == j => format!("etcd://{}/cluster", p.addr),
                    _ => meta.clone(),
                };
                let mut args = cluster_node_args(i, &gossip, &meta, &store);
                args.extend(extra.iter().map(|a| a.to_string()));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                Server::start(&tmp.path().join(format!("n{}", i + 1)), &args)
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
            gossip,
            proxy,
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
        &[
            "--nodes",
            &nodes.join(","),
            "--pids",
            &pids.join(","),
            "--records",
            "20000",
        ],
    )
    .await;
    println!("subscription failover: {out}");
    assert_eq!(out["lost"], 0, "{out}");
    assert!(out["acked"].as_u64().unwrap() >= 20_000, "{out}");
    let resumed = out["resumed_after_s"].as_f64().expect("records flowed after the kill");
    assert!(
        resumed < 10.0,
        "records flowed again only {resumed:.1} s after the kill: {out}"
    );
    assert_ne!(out["owner_after"], out["killed"], "{out}");
}

/// Connector name → the node running it (`host:port`) and its status, as ListConnectors says.
pub(super) async fn connector_nodes(c: &Client) -> BTreeMap<String, (String, String)> {
    let Ok(list) = c.clone().list_connectors(pb::ListConnectorsRequest {}).await else {
        return BTreeMap::new();
    };
    list.into_inner()
        .connectors
        .into_iter()
        .map(|c| (c.name, (c.node, c.status)))
        .collect()
}

pub(super) fn loads(placed: &BTreeMap<String, (String, String)>) -> BTreeMap<String, usize> {
    let mut loads = BTreeMap::new();
    for (node, _) in placed.values() {
        *loads.entry(node.clone()).or_default() += 1;
    }
    loads
}

/// Creates `n` generator sources `{name}00`, `{name}01`, … writing `rate` records/s into
/// `{stream}00`, `{stream}01`, … through `c`.
pub(super) async fn start_generators(c: &Client, name: &str, stream: &str, n: usize, rate: u32) {
    for i in 0..n {
        let cfg = serde_json::json!({"stream": format!("{stream}{i:02}"), "rate": rate, "batchSize": 10});
        let req = super::connectors::create(&format!("{name}{i:02}"), "source", "generator", cfg);
        c.clone().create_connector(req).await.unwrap();
    }
}

/// Whether ListConnectors shows `n` connectors, each RUNNING on one of the nodes `on`.
pub(super) fn running_on(placed: &BTreeMap<String, (String, String)>, n: usize, on: &[String]) -> bool {
    placed.len() == n && placed.values().all(|(node, s)| s == "RUNNING" && on.contains(node))
}

/// Waits until `c` lists `n` connectors, each RUNNING on one of the nodes `on`.
pub(super) async fn wait_running_on(c: &Client, n: usize, on: &[String], what: &str) {
    wait_until(Duration::from_secs(30), what, || {
        let (c, on) = (c.clone(), on.to_vec());
        async move { running_on(&connector_nodes(&c).await, n, &on) }
    })
    .await;
}

/// Pauses each `(connector, its stream, how often it moved)` where it runs, then reads its
/// stream: every sequence number is there, and the sequence restarts (a record repeated from
/// a checkpoint) only where the task moved — two copies writing at once would interleave two
/// sequences. Returns the restarts counted.
pub(super) async fn check_sequences(c: &Client, tasks: &[(String, String, usize)]) -> usize {
    let mut total = 0;
    for (name, stream, moves) in tasks {
        pause_where_it_runs(c, name).await;
        let ns: Vec<u64> = super::connectors::generated(&mut c.clone(), stream)
            .await
            .into_iter()
            .map(|r| r.2)
            .collect();
        let restarts = ns.windows(2).filter(|w| w[1] != w[0] + 1).count();
        assert!(
            restarts <= *moves,
            "{name}: {restarts} sequence restarts for {moves} moves (two copies wrote?)"
        );
        let present: std::collections::BTreeSet<u64> = ns.iter().copied().collect();
        let max = ns.iter().copied().max().unwrap_or(0);
        assert_eq!(present.len() as u64, max + 1, "{name}: sequence numbers missing");
        total += restarts;
    }
    total
}

/// Rolling restart under load: nine generator tasks; each node in turn is stopped with SIGTERM
/// and started again. Its tasks run on the others within 10 s of the signal (it hands them over
/// before it leaves), and since a graceful stop checkpoints what it appended, no stream repeats
/// or misses a sequence number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_hands_every_task_over_without_a_repeat() {
    const TASKS: usize = 9;
    let mut cluster = Cluster::start(&[]).await;
    let c = cluster.nodes[0].client().await;
    start_generators(&c, "r", "rs", TASKS, 200).await;
    let mut worst = Duration::ZERO;
    for victim in 0..3 {
        let others: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
        let on: Vec<String> = others.iter().map(|&i| cluster.nodes[i].addr.to_string()).collect();
        let probe = cluster.nodes[others[0]].client().await;
        let stopped = Instant::now();
        cluster.nodes[victim].terminate();
        wait_running_on(&probe, TASKS, &on, "every task running on the other two").await;
        worst = worst.max(stopped.elapsed());
        cluster.nodes[victim].restart();
        let all: Vec<String> = cluster.nodes.iter().map(|n| n.addr.to_string()).collect();
        wait_until(
            Duration::from_secs(30),
            "the restarted node back with its share",
            || {
                let (c, all) = (probe.clone(), all.clone());
                async move {
                    let placed = connector_nodes(&c).await;
                    running_on(&placed, TASKS, &all) && loads(&placed).len() == 3
                }
            },
        )
        .await;
    }
    assert!(worst < Duration::from_secs(10), "a task was down for up to {worst:?}");

    let c = cluster.nodes[0].client().await;
    let mut total = 0;
    for i in 0..TASKS {
        let name = format!("r{i:02}");
        pause_where_it_runs(&c, &name).await;
        let ns: Vec<u64> = super::connectors::generated(&mut c.clone(), &format!("rs{i:02}"))
            .await
            .into_iter()
            .map(|r| r.2)
            .collect();
        let expected: Vec<u64> = (0..ns.len() as u64).collect();
        assert_eq!(ns, expected, "{name}: every sequence number once, in order");
        total += ns.len();
    }
    println!(
        "rolling restart: {total} records over {TASKS} tasks, none repeated or missing; tasks ran elsewhere within {worst:?} of each SIGTERM"
    );
}

/// Drops every gossip packet from and to one UDP port on loopback, until dropped.
struct GossipCut {
    port: String,
}

impl GossipCut {
    /// Inserts (`-I`) or deletes (`-D`) the two rules; whether iptables took both.
    fn apply(&self, op: &str) -> bool {
        ["--sport", "--dport"].iter().all(|dir| {
            std::process::Command::new("iptables")
                .args([op, "OUTPUT", "-o", "lo", "-p", "udp", dir, &self.port, "-j", "DROP"])
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    fn cut(port: &str) -> GossipCut {
        let cut = GossipCut { port: port.to_owned() };
        assert!(
            cut.apply("-I"),
            "iptables could not drop gossip on port {port}: the partition test needs root and iptables (scripts/test.sh installs it)"
        );
        cut
    }
}

impl Drop for GossipCut {
    fn drop(&mut self) {
        self.apply("-D");
    }
}

/// Connector tasks a node runs now, from its own metrics (one gauge series per local task;
/// this needs no metastore, so it answers while the node is cut off); `None` without an answer.
fn local_tasks(http: std::net::SocketAddr) -> Option<usize> {
    let metrics = http_blocking(http, "GET", "/metrics", "")?;
    metrics.contains("# EOF").then(|| {
        metrics
            .lines()
            .filter(|l| l.starts_with("hstream_connector_restarts{"))
            .count()
    })
}

/// A node cut off from the others (its gossip dropped) and from etcd (its proxy cut) while it
/// runs and still reaches JetStream: within 10 s the others run its tasks. It refuses its
/// tasks' appends once its metastore has been silent for 4 s, before the others' gossip
/// declares it dead, and stops the tasks when its watchdog notices; so it writes nothing a new
/// owner also writes (no stream shows two interleaved sequences) and commits nothing (etcd is
/// out of reach, and its checkpoints are fenced once it is back). Healed, it rejoins within
/// the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_writes_nothing_after_its_tasks_moved() {
    const TASKS: usize = 12;
    const BOUND: usize = 5; // ⌈1.25·12/3⌉
    let cluster = Cluster::start_with(&[], Some(2)).await;
    let c1 = cluster.nodes[0].client().await;
    start_generators(&c1, "p", "ps", TASKS, 200).await;
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.to_string()).collect();
    wait_running_on(&c1, TASKS, &addrs, "every task running").await;
    let before = connector_nodes(&c1).await;
    let on_victim = loads(&before).get(&addrs[2]).copied().unwrap_or(0);
    assert!(on_victim > 0, "node 3 runs nothing to lose: {:?}", loads(&before));
    assert_eq!(
        local_tasks(cluster.nodes[2].http),
        Some(on_victim),
        "node 3's own metrics"
    );

    // Cut node 3 off: gossip dropped both ways, etcd unreachable (JetStream still reachable).
    let cut_at = Instant::now();
    let gossip_cut = GossipCut::cut(&cluster.gossip[2]);
    let proxy = cluster.proxy.as_ref().expect("node 3 behind the proxy");
    proxy.cut();
    let victim = &cluster.nodes[2];
    let stopped = tokio::task::spawn_blocking({
        let http = victim.http;
        move || {
            let stopped = holds_within_blocking(Duration::from_secs(30), || local_tasks(http) == Some(0));
            stopped.then(|| cut_at.elapsed())
        }
    });
    let survivors = addrs[..2].to_vec();
    wait_running_on(&c1, TASKS, &survivors, "node 3's tasks running on the others").await;
    let taken_over = cut_at.elapsed();
    let self_stopped = stopped
        .await
        .unwrap()
        .expect("node 3 kept running its tasks while cut off");
    assert!(
        self_stopped < Duration::from_secs(10),
        "node 3 stopped its tasks only {self_stopped:?} after the cut"
    );
    assert!(
        taken_over < Duration::from_secs(10),
        "its tasks ran elsewhere only after {taken_over:?}"
    );
    assert_eq!(local_tasks(victim.http), Some(0));
    let after_cut = connector_nodes(&c1).await;

    // Healed: node 3 rejoins and takes a share within the bound again.
    drop(gossip_cut);
    proxy.heal();
    wait_until(Duration::from_secs(60), "node 3 back with its share", || {
        let (c, on) = (c1.clone(), addrs.clone());
        async move {
            let placed = connector_nodes(&c).await;
            running_on(&placed, TASKS, &on) && loads(&placed).len() == 3 && loads(&placed).values().all(|&l| l <= BOUND)
        }
    })
    .await;
    let settled = connector_nodes(&c1).await;
    let tasks: Vec<(String, String, usize)> = (0..TASKS)
        .map(|i| {
            let name = format!("p{i:02}");
            let moves = usize::from(before[&name].0 != after_cut[&name].0)
                + usize::from(after_cut[&name].0 != settled[&name].0);
            (name, format!("ps{i:02}"), moves)
        })
        .collect();
    let restarts_total = check_sequences(&c1, &tasks).await;
    println!(
        "partition: {on_victim} tasks of the cut-off node ran elsewhere {taken_over:?} after the cut; it had stopped them itself {self_stopped:?} after the cut; {restarts_total} sequence restarts over {TASKS} streams"
    );
}

/// Pauses a connector through the node running it, following WrongServer as a client would
/// (its node is named in the error's `extra`; a task moving between nodes is asked again).
async fn pause_where_it_runs(any: &Client, name: &str) {
    wait_until(Duration::from_secs(10), &format!("{name} paused where it runs"), || {
        let (mut node, name) = (any.clone(), name.to_owned());
        async move {
            // At most one hop: the node asked names the one running it.
            for _ in 0..2 {
                let req = pb::PauseConnectorRequest { name: name.clone() };
                match node.pause_connector(req).await {
                    Ok(_) => return true,
                    Err(s) if s.code() == tonic::Code::FailedPrecondition && error_code(&s) == 800 => {
                        let v: serde_json::Value = serde_json::from_str(s.message()).unwrap();
                        let Some(owner) = v["extra"].as_str() else { return false };
                        node = hstream_proto::h_stream_api_client::HStreamApiClient::connect(format!("http://{owner}"))
                            .await
                            .unwrap();
                    }
                    Err(s) if s.code() == tonic::Code::Unavailable => return false,
                    Err(s) => panic!("pausing {name}: {s}"),
                }
            }
            false
        }
    })
    .await;
}

/// The REST API and the CLI work against any node: pausing, resuming, altering, restarting
/// and reading the logs of a connector through a node that does not run it reach the node
/// that does (REST forwards, the CLI follows WrongServer), while a gRPC client asking the
/// wrong node gets WrongServer (800) naming the right one, as HStreamDB answers. A shard
/// reader likewise lives on the node its lookup names: created, read and deleted there only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_cli_and_readers_reach_the_node_that_holds_them() {
    let cluster = Cluster::start(&[]).await;
    let c1 = cluster.nodes[0].client().await;
    let cfg = serde_json::json!({"stream": "fwd", "rate": 50, "batchSize": 5});
    c1.clone()
        .create_connector(super::connectors::create("fw", "source", "generator", cfg))
        .await
        .unwrap();
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.to_string()).collect();
    wait_until(Duration::from_secs(30), "the connector running", || {
        let (c, addrs) = (c1.clone(), addrs.clone());
        async move {
            connector_nodes(&c)
                .await
                .get("fw")
                .is_some_and(|(n, s)| s == "RUNNING" && addrs.contains(n))
        }
    })
    .await;
    let owner = connector_nodes(&c1).await["fw"].0.clone();
    let other = cluster.nodes.iter().find(|n| n.addr.to_string() != owner).unwrap();

    // gRPC to the wrong node: WrongServer naming the owner.
    let err = other
        .client()
        .await
        .pause_connector(pb::PauseConnectorRequest { name: "fw".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(error_code(&err), 800, "{err:?}");
    let v: serde_json::Value = serde_json::from_str(err.message()).unwrap();
    assert_eq!(v["extra"], owner.as_str(), "{v}");

    // REST on the wrong node: forwarded.
    let (code, body) = http(other.http, "PUT", "/connectors/fw/pause", None).await;
    assert_eq!(code, 202, "{body}");
    let status_is = |c: Client, want: &'static str| async move { connector_nodes(&c).await["fw"].1 == want };
    wait_until(Duration::from_secs(10), "paused through REST on another node", || {
        status_is(c1.clone(), "STOPPED")
    })
    .await;
    let (code, body) = http(other.http, "GET", "/connectors/fw/logs", None).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body["logs"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x.as_str().unwrap_or_default().contains("STOPPED"))),
        "{body}"
    );

    // The CLI on the wrong node: follows WrongServer.
    let cli = |args: &'static [&'static str]| {
        let port = other.addr.port().to_string();
        async move {
            let out = tokio::process::Command::new(workspace_bin("hstream"))
                .arg("--port")
                .arg(port)
                .args(args)
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    cli(&["connector", "resume", "fw"]).await;
    wait_until(
        Duration::from_secs(10),
        "resumed through the CLI on another node",
        || status_is(c1.clone(), "RUNNING"),
    )
    .await;
    cli(&["connector", "alter-config", "fw", "--config-json", r#"{"rate": 60}"#]).await;

    // REST alter and restart on the wrong node: forwarded; the config is stored as altered.
    let (code, body) = http(
        other.http,
        "PUT",
        "/connectors/fw/config",
        Some(&serde_json::json!({"rate": 70})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = http(other.http, "POST", "/connectors/fw/restart", None).await;
    assert_eq!(code, 202, "{body}");
    let (_, config) = http(other.http, "GET", "/connectors/fw/config", None).await;
    assert_eq!(config["rate"], 70, "{config}");
    wait_until(Duration::from_secs(10), "running after the forwarded restart", || {
        status_is(c1.clone(), "RUNNING")
    })
    .await;

    // A shard reader of the generator's stream, on the node LookupShardReader names.
    let shard = stream_shards(&mut c1.clone(), "fwd").await[0].shard_id;
    let looked = c1
        .clone()
        .lookup_shard_reader(pb::LookupShardReaderRequest { reader_id: "rd".into() })
        .await
        .unwrap()
        .into_inner()
        .server_node
        .unwrap();
    let holder = format!("{}:{}", looked.host, looked.port);
    let at = |holds: bool| {
        cluster
            .nodes
            .iter()
            .find(|n| (n.addr.to_string() == holder) == holds)
            .unwrap()
    };
    let (mut here, mut elsewhere) = (at(true).client().await, at(false).client().await);
    let wrong = |r: Result<_, tonic::Status>, what: &str| {
        let err = r.expect_err(what);
        assert_eq!(error_code(&err), 800, "{what}: {err:?}");
        let v: serde_json::Value = serde_json::from_str(err.message()).unwrap();
        assert_eq!(v["extra"], holder.as_str(), "{what}: {v}");
    };
    let create = pb::CreateShardReaderRequest {
        stream_name: "fwd".into(),
        shard_id: shard,
        shard_offset: Some(earliest()),
        reader_id: "rd".into(),
        timeout: 1000,
    };
    wrong(
        elsewhere.create_shard_reader(create.clone()).await.map(|_| ()),
        "a reader created elsewhere",
    );
    here.create_shard_reader(create).await.unwrap();
    let read = pb::ReadShardRequest {
        reader_id: "rd".into(),
        max_records: 10,
    };
    let got = here.read_shard(read.clone()).await.unwrap().into_inner();
    assert!(!got.received_records.is_empty(), "the holder reads the shard");
    wrong(elsewhere.read_shard(read.clone()).await.map(|_| ()), "a read elsewhere");
    let delete = pb::DeleteShardReaderRequest { reader_id: "rd".into() };
    wrong(
        elsewhere.delete_shard_reader(delete.clone()).await.map(|_| ()),
        "a delete elsewhere",
    );
    here.delete_shard_reader(delete).await.unwrap();
    let gone = here.read_shard(read).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
}
