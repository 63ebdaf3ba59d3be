//! The server on a three-node JetStream cluster, streams with three replicas, through the loss
//! of a stream's JetStream leader under a concurrent append load, and through its own SIGKILL;
//! a PostgreSQL CDC source through the loss of its stream's leader.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hstream_integration_tests::nats::Nats;
use hstream_integration_tests::pg::{DATABASE, Postgres};
use hstream_integration_tests::*;
use hstream_proto as pb;
use serde_json::json;

use super::postgres::{
    FAST_RETRY, assert_updates_in_commit_order, create, fold_debezium, orders_table, source_config,
    wait_debezium_equals_table, wait_streaming,
};

/// What one key's appender saw: payloads acknowledged (with when), and payloads whose append
/// failed (they may or may not be stored, at most once).
#[derive(Default)]
struct Outcome {
    acked: Vec<(u64, Instant)>,
    failed: Vec<u64>,
}

/// Appends `<key>-<i>` for i = 0, 1, … to `shard`, one at a time (each waits for its ack, so
/// the key's order is the order of its acks), until `stop`.
fn appender(client: &Client, shard: u64, key: &'static str, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Outcome> {
    let mut client = client.clone();
    tokio::spawn(async move {
        let mut out = Outcome::default();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let req = pb::AppendRequest {
                stream_name: "load".into(),
                shard_id: shard,
                records: Some(batch(
                    key,
                    &[format!("{key}-{i}").into_bytes()],
                    pb::CompressionType::None,
                )),
            };
            match client.append(req).await {
                Ok(_) => out.acked.push((i, Instant::now())),
                Err(_) => out.failed.push(i),
            }
            i += 1;
        }
        out
    })
}

/// The stream's records per key, in read order: `key → [i, …]`.
async fn stored(client: &mut Client, shards: &[u64]) -> BTreeMap<String, Vec<u64>> {
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for &shard in shards {
        for r in read_shard_to_tail(client, "load", shard).await {
            for (_, key, payload) in decode(&r) {
                let text = String::from_utf8(payload).unwrap();
                let (k, i) = text.rsplit_once('-').unwrap();
                assert_eq!(k, key, "record {text} carries key {key}");
                by_key.entry(key).or_default().push(i.parse().unwrap());
            }
        }
    }
    by_key
}

/// The JetStream leader of shard `shard`'s stream under `prefix`, as JetStream names it, with
/// the stream's replica count.
async fn shard_leader(nats: &Nats, prefix: &str, shard: u64) -> (String, usize) {
    let nc = async_nats::connect(nats.client.to_string()).await.unwrap();
    let js = async_nats::jetstream::new(nc);
    let info = js
        .get_stream(format!("{prefix}_{shard}"))
        .await
        .unwrap()
        .cached_info()
        .clone();
    let leader = info.cluster.and_then(|c| c.leader).expect("a leader");
    (leader, info.config.num_replicas)
}

/// Every acknowledged append is stored exactly once and in its key's order; a failed one is
/// stored at most once; nothing else is stored.
fn exactly_once_in_order(stored: &BTreeMap<String, Vec<u64>>, outcomes: &BTreeMap<&str, Outcome>) {
    for (key, out) in outcomes {
        let got = stored.get(*key).cloned().unwrap_or_default();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "key {key}: stored out of order or twice: {got:?}"
        );
        let acked: Vec<u64> = out.acked.iter().map(|(i, _)| *i).collect();
        let missing: Vec<&u64> = acked.iter().filter(|i| got.binary_search(i).is_err()).collect();
        assert!(missing.is_empty(), "key {key}: acknowledged appends lost: {missing:?}");
        let unknown: Vec<&u64> = got
            .iter()
            .filter(|i| acked.binary_search(i).is_err() && !out.failed.contains(i))
            .collect();
        assert!(unknown.is_empty(), "key {key}: stored but never appended: {unknown:?}");
    }
}

/// Under appends of four keys to a stream of two shards with three replicas on a three-node
/// JetStream cluster: SIGKILL of the JetStream leader of one shard's stream loses no
/// acknowledged append, doubles none and keeps every key's order, and appends resume within
/// seconds; SIGKILL of the hstream-server and a restart find exactly the same records, and
/// appends go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_leader_killed_under_load_loses_and_doubles_nothing() {
    let mut nats = Nats::start_cluster(3).await;
    let tmp = tempfile::tempdir().unwrap();
    let uri = nats.uri("f");
    let mut server = Server::start(&tmp.path().join("data"), &["--store", uri.as_str()]);
    let mut client = server.client().await;
    client
        .create_stream(pb::Stream {
            stream_name: "load".into(),
            replication_factor: 3,
            backlog_duration: 0,
            shard_count: 2,
            creation_time: None,
        })
        .await
        .unwrap();
    let shards: Vec<u64> = stream_shards(&mut client, "load")
        .await
        .iter()
        .map(|s| s.shard_id)
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let keys = [
        ("k0", shards[0]),
        ("k1", shards[0]),
        ("k2", shards[1]),
        ("k3", shards[1]),
    ];
    let tasks: Vec<_> = keys
        .iter()
        .map(|&(key, shard)| (key, appender(&client, shard, key, stop.clone())))
        .collect();
    // The progress of the load, read from the stream itself (none while reads are refused
    // during the failover).
    let count = || {
        let c = client.clone();
        async move { try_count_stream_records(&c, "load").await.unwrap_or(0) }
    };
    wait_until(Duration::from_secs(60), "400 appends before the kill", || async {
        count().await >= 400
    })
    .await;

    let (leader, replicas) = shard_leader(&nats, "f", shards[0]).await;
    assert_eq!(replicas, 3, "the stream's replication factor is its replica count");
    let at_kill = count_stream_records(&client, "load").await;
    let killed_at = Instant::now();
    let leader_index = nats.member_named(&leader).expect("a member");
    tokio::task::block_in_place(|| nats.kill_member(leader_index));
    wait_until(Duration::from_secs(90), "400 appends after the kill", || async {
        count().await >= at_kill + 400
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = BTreeMap::new();
    for (key, task) in tasks {
        outcomes.insert(key, task.await.unwrap());
    }
    // The longest a key waited between two acknowledgements from the kill on.
    let resumed = outcomes
        .values()
        .flat_map(|o| {
            o.acked
                .windows(2)
                .filter(|w| w[1].1 > killed_at)
                .map(|w| w[1].1 - w[0].1.max(killed_at))
                .collect::<Vec<_>>()
        })
        .max()
        .expect("appends after the kill");
    let (acked, failed): (usize, usize) = outcomes
        .values()
        .fold((0, 0), |(a, f), o| (a + o.acked.len(), f + o.failed.len()));
    println!(
        "JetStream leader {leader} killed: {acked} appends acknowledged, {failed} failed; no key waited longer than {resumed:?} between acknowledgements"
    );
    // Alone, 5–8 s: JetStream's own leader election (waiting 1 s instead of 2.5 s for each
    // acknowledgement changed nothing, decision 024); up to 10 s while other tests share the
    // two cores.
    assert!(
        resumed < Duration::from_secs(20),
        "appends resumed only after {resumed:?}"
    );

    let before = stored(&mut client, &shards).await;
    exactly_once_in_order(&before, &outcomes);
    // The publishes caught by the kill were sent again, and the connection to NATS is up.
    let metrics = tokio::task::block_in_place(|| http_blocking(server.http, "GET", "/metrics", "")).expect("/metrics");
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert!(value("hstream_jetstream_append_resends_total") >= 1.0, "{metrics}");
    assert_eq!(value("hstream_jetstream_connected"), 1.0);
    println!(
        "resends {}, failed appends {}",
        value("hstream_jetstream_append_resends_total"),
        value("hstream_jetstream_append_failures_total")
    );

    // The server killed and started again: the same records, and appends go on.
    server.kill();
    server.restart();
    let mut client = server.client().await;
    assert_eq!(
        stored(&mut client, &shards).await,
        before,
        "a restart changed the stream"
    );
    let req = pb::AppendRequest {
        stream_name: "load".into(),
        shard_id: shards[0],
        records: Some(batch("k0", &[b"k0-999999".to_vec()], pb::CompressionType::None)),
    };
    client.append(req).await.unwrap();
    tokio::task::block_in_place(|| nats.start_member(leader_index));
    server.terminate();
}

/// A PostgreSQL CDC source streaming a load of inserts, updates and deletes into a stream on a
/// three-node JetStream cluster: SIGKILL of the JetStream leader of the stream's shard makes
/// appends fail for a while; the task retries with backoff, resumes from its checkpoint, and
/// the stream ends equal to the table with every key's changes in commit order. The source
/// creates its stream with the client default of one replica: `--min-replication-factor 3`
/// gives it three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_source_keeps_the_table_across_a_stream_leader_kill() {
    let mut nats = Nats::start_cluster(3).await;
    let pg = Postgres::start();
    orders_table(&pg, "orders");
    pg.psql(
        DATABASE,
        "INSERT INTO orders (id, name, amount) SELECT g, 's', g FROM generate_series(1, 5000) g; \
         CREATE TABLE stop (x int);",
    );
    let tmp = tempfile::tempdir().unwrap();
    let uri = nats.uri("pg");
    let mut args = FAST_RETRY.to_vec();
    args.extend(["--store", uri.as_str(), "--min-replication-factor", "3"]);
    let mut server = Server::start(&tmp.path().join("data"), &args);
    let mut c = server.client().await;
    let cfg = source_config(&pg, "orders_cdc", json!({"table": "orders", "format": "debezium"}));
    create(&mut c, "pgsrc", "SOURCE", &cfg).await.unwrap();
    wait_streaming(&pg).await;
    // Until told to stop: insert a row, update one, delete one, one transaction each round.
    let mut load = pg
        .psql_command(
            DATABASE,
            "DO $$ DECLARE i int := 0; BEGIN LOOP i := i + 1; \
               INSERT INTO orders (id, name, amount) VALUES (100000 + i, 'during', i); \
               UPDATE orders SET name = 'upd' || i, amount = amount + 1 WHERE id = 1000 + i % 50; \
               DELETE FROM orders WHERE id = i * 11; \
               COMMIT; EXIT WHEN EXISTS (SELECT 1 FROM stop); PERFORM pg_sleep(0.002); END LOOP; END $$",
        )
        .spawn()
        .unwrap();
    // Inserts streamed so far; none while reads are refused (UNAVAILABLE during the failover).
    let streamed = |c: &Client| {
        let mut c = c.clone();
        async move {
            try_read_json_stream(&mut c, "orders_cdc")
                .await
                .map_or(0, |records| records.iter().filter(|(_, r)| r["op"] == "c").count())
        }
    };
    wait_until(Duration::from_secs(60), "streamed changes before the kill", || async {
        streamed(&c).await > 200
    })
    .await;

    let shards = stream_shards(&mut c, "orders_cdc").await;
    assert_eq!(shards.len(), 1);
    let (leader, replicas) = shard_leader(&nats, "pg", shards[0].shard_id).await;
    assert_eq!(
        replicas, 3,
        "--min-replication-factor raised the source's stream to three replicas"
    );
    let at_kill = streamed(&c).await;
    let leader_index = nats.member_named(&leader).expect("a member");
    tokio::task::block_in_place(|| nats.kill_member(leader_index));
    wait_until(Duration::from_secs(90), "streamed changes after the kill", || async {
        streamed(&c).await > at_kill + 200
    })
    .await;
    pg.psql(DATABASE, "INSERT INTO stop VALUES (1)");
    assert!(load.wait().unwrap().success());

    let records = wait_debezium_equals_table(&c, "orders_cdc", &pg, "orders", Duration::from_secs(90)).await;
    // Every insert of the load reached the stream, and each key's updates in commit order:
    // fifty keys are updated over and over, each raising its amount, so an update out of
    // order would go back (one sent again after the task's restart repeats an amount).
    let inserted: usize = pg
        .psql(DATABASE, "SELECT count(*) FROM orders WHERE id > 100000")
        .parse()
        .unwrap();
    let mut inserts: Vec<&String> = records.iter().filter(|(_, r)| r["op"] == "c").map(|(k, _)| k).collect();
    inserts.sort();
    inserts.dedup();
    assert!(
        inserts.len() >= inserted,
        "{} distinct inserts streamed, {inserted} in the table",
        inserts.len()
    );
    let (keys, updates) = assert_updates_in_commit_order(&records);
    assert!(
        keys <= 50 && updates > 4 * keys,
        "{updates} updates of {keys} keys: each key updated many times"
    );
    println!(
        "JetStream leader {leader} killed under a PostgreSQL CDC load: {} records, {} keys, stream equal to the table",
        records.len(),
        fold_debezium(&records).len()
    );
    assert_eq!(connector_status(&c, "pgsrc").await, "RUNNING");
    tokio::task::block_in_place(|| nats.start_member(leader_index));
    server.terminate();
}
