//! The server on a three-member etcd through the faults a cluster's metadata must survive: its
//! leader killed under load, its quorum lost and regained, and the server killed while it
//! creates streams.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hstream_integration_tests::etcd::Etcd;
use hstream_integration_tests::*;
use hstream_proto as pb;
use tonic::Code;

use crate::hardening::{append_one, sub_req};

fn stream_req(name: &str, shards: u32) -> pb::Stream {
    pb::Stream {
        stream_name: name.into(),
        replication_factor: 1,
        backlog_duration: 0,
        shard_count: shards,
        creation_time: None,
    }
}

/// What the stream-creating load saw: each name with its answer's code (`Ok` as `Code::Ok`).
type Outcomes = Arc<std::sync::Mutex<Vec<(String, Code)>>>;

/// Creates streams `{prefix}{i}` of `shards` shards one after another until `stop`, keeping
/// each answer.
fn create_streams(
    client: &Client,
    prefix: &str,
    shards: u32,
    stop: Arc<AtomicBool>,
) -> (Outcomes, tokio::task::JoinHandle<()>) {
    let outcomes: Outcomes = Default::default();
    let (mut client, out, prefix) = (client.clone(), outcomes.clone(), prefix.to_owned());
    let task = tokio::spawn(async move {
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let name = format!("{prefix}{i}");
            let code = match client.create_stream(stream_req(&name, shards)).await {
                Ok(_) => Code::Ok,
                Err(e) => e.code(),
            };
            out.lock().unwrap().push((name, code));
            i += 1;
        }
    });
    (outcomes, task)
}

fn succeeded(outcomes: &Outcomes) -> usize {
    outcomes.lock().unwrap().iter().filter(|(_, c)| *c == Code::Ok).count()
}

/// Every stream the load tried to create is whole: one whose creation succeeded is listed, and
/// each listed has all of its shards (one whose creation failed may be listed: a write etcd
/// timed out on may still have been applied).
async fn streams_are_whole(client: &mut Client, outcomes: &Outcomes, shards: u32) {
    let listed: BTreeSet<String> = client
        .list_streams(pb::ListStreamsRequest {})
        .await
        .unwrap()
        .into_inner()
        .streams
        .into_iter()
        .map(|s| s.stream_name)
        .collect();
    let outcomes = outcomes.lock().unwrap().clone();
    for (name, code) in outcomes {
        assert!(
            matches!(code, Code::Ok | Code::Unavailable),
            "creating {name} answered {code:?}: only UNAVAILABLE may fail it"
        );
        if code == Code::Ok {
            assert!(listed.contains(&name), "{name} was created but is not listed");
        }
        if listed.contains(&name) {
            let got = stream_shards(client, &name).await.len() as u32;
            assert_eq!(got, shards, "stream {name} is listed with {got} of its {shards} shards");
        }
    }
}

/// Appends `a{i}` round-robin over `shards` until `stop`; returns the payloads acknowledged.
/// Appends need no metadata, so every one must succeed whatever etcd does.
fn append_load(client: &Client, shards: Vec<u64>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<String>> {
    let mut client = client.clone();
    tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let payload = format!("a{i}");
            append_one(&mut client, "load", shards[i % shards.len()], &payload)
                .await
                .unwrap_or_else(|e| panic!("append {payload} failed: {e:?}"));
            acked.push(payload);
        }
        acked
    })
}

/// With three etcd members under a running server: SIGKILL of etcd's leader under load (appends,
/// a consuming subscription, stream creations) costs nothing acknowledged and the server keeps
/// serving; with two members stopped a metadata request fails with UNAVAILABLE naming etcd
/// while appends go on, and once they are back the server serves again without a restart; a
/// server killed while creating streams comes back with every stream whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_etcd_loses_its_leader_then_its_quorum() {
    let mut etcd = Etcd::start_cluster(3).await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let uri = etcd.uri("faults");
    let mut server = Server::start(&data, &["--metastore-uri", uri.as_str()]);
    let mut client = server.client().await;
    let shards = make_stream(&mut client, "load", 2).await;
    client.create_subscription(sub_req("sub", "load")).await.unwrap();
    let consumer = TestConsumer::start(&client, "sub", "c1", true).await.unwrap();

    // Load, then the leader killed under it, then load until the server has created streams
    // again.
    let stop = Arc::new(AtomicBool::new(false));
    let appends = append_load(&client, shards.clone(), stop.clone());
    let (created, creator) = create_streams(&client, "c", 3, stop.clone());
    let counts = || (consumer.count(), succeeded(&created));
    wait_until(Duration::from_secs(60), "load before the kill", || async {
        let (consumed, made) = counts();
        consumed >= 300 && made >= 5
    })
    .await;
    let leader = tokio::task::block_in_place(|| etcd.leader()).expect("a leader");
    tokio::task::block_in_place(|| etcd.kill_member(leader));
    let (consumed_at_kill, made_at_kill) = counts();
    let killed_at = Instant::now();
    wait_until(Duration::from_secs(60), "load after the kill", || async {
        let (consumed, made) = counts();
        consumed >= consumed_at_kill + 300 && made >= made_at_kill + 5
    })
    .await;
    let recovered_in = killed_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    let acked = appends.await.unwrap();
    creator.await.unwrap();
    streams_are_whole(&mut client, &created, 3).await;
    // Every acknowledged append reaches the subscription (at least once).
    let want: BTreeSet<String> = acked.iter().cloned().collect();
    wait_until(
        Duration::from_secs(30),
        "every acknowledged append consumed",
        || async {
            let got: BTreeSet<String> = consumer
                .received
                .lock()
                .unwrap()
                .iter()
                .map(|(_, p)| String::from_utf8(p.clone()).unwrap())
                .collect();
            got.is_superset(&want)
        },
    )
    .await;
    let failed = created.lock().unwrap().iter().filter(|(_, c)| *c != Code::Ok).count();
    println!(
        "etcd leader killed: {} appends, {} stream creations ({failed} UNAVAILABLE); serving again within {recovered_in:?}",
        acked.len(),
        created.lock().unwrap().len()
    );

    // The killed member back, then two stopped: no quorum.
    tokio::task::block_in_place(|| {
        etcd.start_member(leader);
        etcd.wait_member_healthy(leader);
    });
    let down = [(leader + 1) % 3, (leader + 2) % 3];
    tokio::task::block_in_place(|| down.iter().for_each(|&i| etcd.kill_member(i)));
    let asked = Instant::now();
    let err = client.create_stream(stream_req("q", 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(error_message(&err).contains("etcd at 127.0.0.1"), "{err:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "UNAVAILABLE took {:?}",
        asked.elapsed()
    );
    println!(
        "etcd without quorum: create stream UNAVAILABLE after {:?} ({}); list streams (from the catalog): {:?}",
        asked.elapsed(),
        error_message(&err),
        client
            .list_streams(pb::ListStreamsRequest {})
            .await
            .map(|_| "served")
            .map_err(|e| e.code())
    );
    append_one(&mut client, "load", shards[0], "during").await.unwrap();
    tokio::task::block_in_place(|| {
        down.iter().for_each(|&i| etcd.start_member(i));
        down.iter().for_each(|&i| etcd.wait_member_healthy(i));
    });
    // Served again by the same server process. The create etcd timed out on may have been
    // applied after all (a leader without quorum keeps its proposal): then it exists whole.
    let answer = Arc::new(std::sync::Mutex::new(Code::Unavailable));
    wait_until(Duration::from_secs(30), "an answer other than UNAVAILABLE", || {
        let (mut client, answer) = (client.clone(), answer.clone());
        async move {
            let code = match client.create_stream(stream_req("q", 1)).await {
                Ok(_) => Code::Ok,
                Err(e) => e.code(),
            };
            *answer.lock().unwrap() = code;
            code != Code::Unavailable
        }
    })
    .await;
    let answer = *answer.lock().unwrap();
    assert!(matches!(answer, Code::Ok | Code::AlreadyExists), "{answer:?}");
    // Whole either way: listed with its shard, and the shard's storage there.
    let q = stream_shards(&mut client, "q").await;
    assert_eq!(q.len(), 1);
    append_one(&mut client, "q", q[0].shard_id, "q").await.unwrap();

    // The server killed while creating streams of 16 shards: after a restart every stream is
    // whole and takes appends.
    let stop = Arc::new(AtomicBool::new(false));
    let (made, creator) = create_streams(&client, "m", 16, stop.clone());
    wait_until(
        Duration::from_secs(60),
        "streams created before the server is killed",
        || async { succeeded(&made) >= 3 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    server.kill();
    creator.await.unwrap();
    // The creation the kill cut off (if one was in flight) failed with whatever a broken
    // connection gives; if its stream is listed, it must be whole like the others.
    let cut = {
        let mut made = made.lock().unwrap();
        match made.last() {
            Some((_, code)) if *code != Code::Ok => made.pop(),
            _ => None,
        }
    };
    server.restart();
    let mut client = server.client().await;
    streams_are_whole(&mut client, &made, 16).await;
    streams_are_whole(&mut client, &created, 3).await;
    let listed = client
        .list_streams(pb::ListStreamsRequest {})
        .await
        .unwrap()
        .into_inner()
        .streams;
    for s in listed.iter().filter(|s| s.stream_name.starts_with('m')) {
        let shard = stream_shards(&mut client, &s.stream_name).await[0].shard_id;
        append_one(&mut client, &s.stream_name, shard, "after").await.unwrap();
    }
    if let Some((name, _)) = cut
        && listed.iter().any(|s| s.stream_name == name)
    {
        assert_eq!(stream_shards(&mut client, &name).await.len(), 16, "{name} half created");
    }
    server.terminate();
}
