//! The server on the JetStream store (`--store nats://…`): records kept in NATS, not in the
//! data directory; a second node on the same metastore and store serving the same stream;
//! JetStream going away and coming back under a running server (appends and a source
//! connector); the bad cases a user meets.

use std::time::{Duration, Instant};

use hstream_integration_tests::etcd::Etcd;
use hstream_integration_tests::nats::Nats;
use hstream_integration_tests::*;
use tonic::Code;

use crate::hardening::{append_one, payload_strings, refused_start};

/// Two nodes (their own data directories) on one etcd metastore and one JetStream: what one
/// appends the other reads, a stream one creates or deletes later reaches the other without a
/// restart, and the stream's records are in neither data directory; with
/// JetStream down an append fails with UNAVAILABLE and the server recovers by itself; a shard
/// whose JetStream stream was deleted behind the server's back answers with a clear error;
/// an unreachable JetStream stops the start with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_records_on_jetstream() {
    let etcd = Etcd::start().await;
    let mut nats = Nats::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (meta, store) = (etcd.uri("js"), nats.uri("js"));
    let flags = ["--metastore-uri", meta.as_str(), "--store", store.as_str()];
    let one = Server::start(
        &tmp.path().join("one"),
        &[
            &flags[..],
            &["--connector-retry-base-ms", "50", "--connector-retry-max-ms", "500"],
        ]
        .concat(),
    );
    let mut c1 = one.client().await;
    let shards = make_stream(&mut c1, "s", 2).await;
    append_one(&mut c1, "s", shards[0], "from one").await.unwrap();
    // The second node starts on the same metadata and records.
    let two = Server::start(
        &tmp.path().join("two"),
        &["--server-id", "2", flags[0], flags[1], flags[2], flags[3]],
    );
    let mut c2 = two.client().await;
    append_one(&mut c2, "s", shards[0], "from two").await.unwrap();
    for c in [&mut c1, &mut c2] {
        assert_eq!(
            payload_strings(&read_shard_to_tail(c, "s", shards[0]).await),
            ["from one", "from two"]
        );
    }
    // A stream created on one node after both started is served by the other (the metastore's
    // watch keeps its catalog current), and its deletion reaches it too.
    let later = make_stream(&mut c1, "later", 1).await[0];
    wait_until(
        Duration::from_secs(20),
        "node two serving a stream node one created",
        || {
            let mut c = c2.clone();
            async move { append_one(&mut c, "later", later, "on two").await.is_ok() }
        },
    )
    .await;
    assert_eq!(
        payload_strings(&read_shard_to_tail(&mut c1, "later", later).await),
        ["on two"]
    );
    c1.delete_stream(hstream_proto::DeleteStreamRequest {
        stream_name: "later".into(),
        ignore_non_exist: false,
        force: false,
    })
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(20),
        "node two forgetting the deleted stream",
        || {
            let mut c = c2.clone();
            async move {
                let listed = c
                    .list_streams(hstream_proto::ListStreamsRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .streams;
                !listed.iter().any(|s| s.stream_name == "later")
            }
        },
    )
    .await;

    for node in ["one", "two"] {
        let shards_dir = tmp.path().join(node).join("shards");
        let held = std::fs::read_dir(&shards_dir).map_or(0, |d| d.count());
        assert_eq!(held, 0, "node {node} keeps shard files beside JetStream");
    }

    // JetStream gone: appends fail with UNAVAILABLE within the timeout; a source connector's
    // task fails and is restarted with backoff; back: served again by the same processes, and
    // the connector finishes with every record in its stream.
    const GENERATED: u64 = 2000;
    create_connector(
        &mut c1,
        "gen",
        "SOURCE",
        "generator",
        &serde_json::json!({"stream": "gen", "count": GENERATED, "rate": 200, "batchSize": 10}),
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(20), "the generator under way", || async {
        count_stream_records(&c1, "gen").await >= 200
    })
    .await;
    tokio::task::block_in_place(|| nats.kill());
    let asked = Instant::now();
    let err = append_one(&mut c1, "s", shards[1], "lost").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "UNAVAILABLE took {:?}",
        asked.elapsed()
    );
    println!(
        "JetStream down: append UNAVAILABLE after {:?}: {}",
        asked.elapsed(),
        error_message(&err)
    );
    tokio::task::block_in_place(|| nats.restart());
    let second = shards[1];
    wait_until(Duration::from_secs(30), "appends served again", || {
        let mut c = c1.clone();
        async move { append_one(&mut c, "s", second, "back").await.is_ok() }
    })
    .await;
    wait_status(&c1, "gen", "COMPLETED", Duration::from_secs(60)).await;
    let report = connector_report(&c1, "gen").await;
    assert!(
        report["restarts"].as_f64() >= Some(1.0),
        "the generator's task was restarted: {report}"
    );
    let mut seqs: Vec<u64> = read_json_stream(&mut c1, "gen")
        .await
        .iter()
        .map(|(_, r)| r["n"].as_f64().expect("n") as u64)
        .collect();
    let appended = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs,
        (0..GENERATED).collect::<Vec<_>>(),
        "every generated record is in the stream"
    );
    println!(
        "generator across the outage: {GENERATED} records, {appended} appended ({} again after restarts), restarts {}",
        appended - GENERATED as usize,
        report["restarts"]
    );

    // The shard's JetStream stream deleted behind the servers' back.
    let nc = async_nats::connect(nats.client.to_string()).await.unwrap();
    async_nats::jetstream::new(nc)
        .delete_stream(format!("js_{}", shards[1]))
        .await
        .unwrap();
    let err = append_one(&mut c2, "s", shards[1], "late").await.unwrap_err();
    assert!(error_message(&err).contains("is gone"), "{err:?}");
    drop((one, two));

    let nowhere = format!("nats://127.0.0.1:{}/x", free_port());
    let err = refused_start(&tmp.path().join("three"), &["--store", nowhere.as_str()]);
    assert!(err.contains("connecting to NATS at nats://127.0.0.1"), "{err}");
}
