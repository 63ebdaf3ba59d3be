//! The JetStream store against a real, throw-away nats-server: the store contract, batches
//! outliving a reopen, the URI rules and the checks made at connect.

use std::time::Duration;

use super::*;
use crate::store::contract;

use hstream_integration_tests::nats::Nats;

fn opts() -> NatsOptions {
    NatsOptions {
        timeout: Some(Duration::from_secs(5)),
        max_batch_bytes: 1 << 20,
        ..Default::default()
    }
}

async fn store(nats: &Nats, prefix: &str) -> Arc<JetStreamStore> {
    JetStreamStore::connect(&nats.uri(prefix), &opts())
        .await
        .unwrap_or_else(|e| panic!("nats-server is healthy but refuses us: {e}\n{}", nats.log()))
}

#[test]
fn uris_name_servers_and_prefix() {
    assert_eq!(
        parse_uri("nats://a:4222,b:4222/cluster1").unwrap(),
        (
            vec!["nats://a:4222".to_owned(), "nats://b:4222".to_owned()],
            "cluster1".to_owned()
        )
    );
    assert_eq!(parse_uri("nats://a:4222").unwrap().1, "HSTREAM");
    assert!(parse_uri("nats:///x").is_err());
    assert!(
        parse_uri("nats://a:4222/has.dot").is_err(),
        "a prefix names JetStream streams"
    );
    let err = parse_uri("nats://u:s3cret@a:4222").unwrap_err();
    assert!(!err.contains("s3cret"), "{err}");
}

/// The contract every store passes; then a reopen (a new connection) finds every acknowledged
/// batch, and another prefix is another store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_on_jetstream_and_batches_outlive_a_reopen() {
    let nats = Nats::start().await;
    let s = store(&nats, "contract").await;
    contract::run(s.as_ref()).await;
    let written = contract::seed_durable(s.as_ref()).await;
    drop(s);
    let s = store(&nats, "contract").await;
    contract::check_durable(s.as_ref(), &written).await;
    let other = store(&nats, "other").await;
    assert!(other.shard_ids().is_empty());
}

/// Servers whose max_payload cannot hold a batch of max-record-size are refused at connect,
/// naming both sizes; so is one server where every stream must have three replicas; an
/// unreachable server is refused within the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_what_cannot_work() {
    let nats = Nats::start().await;
    let big = NatsOptions {
        max_batch_bytes: 32 << 20,
        ..opts()
    };
    let err = JetStreamStore::connect(&nats.uri("x"), &big)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("max_payload"), "{err}");
    let floor = NatsOptions {
        min_replicas: 3,
        ..opts()
    };
    let err = JetStreamStore::connect(&nats.uri("x"), &floor)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("--min-replication-factor 3 needs a NATS cluster"),
        "{err}"
    );
    let nowhere = format!("nats://127.0.0.1:{}/x", hstream_integration_tests::free_port());
    let err = JetStreamStore::connect(&nowhere, &opts()).await.err().expect("refused");
    assert!(err.to_string().contains("connecting to NATS"), "{err}");
}

/// Two nodes on one JetStream: a batch one appends wakes and reaches the other's readers
/// (tail announcements), appends through both interleave on dense LSNs, and a shard deleted
/// through one is refused by the other with a clear error, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_sees_appends_and_deletions() {
    let nats = Nats::start().await;
    let a = store(&nats, "two").await;
    a.create_shard(1, 1).await.unwrap();
    let b = store(&nats, "two").await;
    let on_b = b.shard(1).expect("b opened the shard a created");
    let ready = crate::store::ReadySet::new();
    on_b.notify_on_append(&ready, 9);
    let lsn = a.append(1, Bytes::from_static(b"from a"), 1, 0).await.unwrap().lsn;
    tokio::time::timeout(Duration::from_secs(10), ready.ready())
        .await
        .expect("b's reader woke for a's append");
    assert_eq!(on_b.visible_lsn(), lsn);
    assert_eq!(
        on_b.read(1, 10, 1 << 20).await.unwrap()[0].payload,
        Bytes::from_static(b"from a")
    );
    let lsns: Vec<u64> = futures::future::join_all((0..20u8).map(|i| {
        let target = if i % 2 == 0 { &a } else { &b };
        async move { target.append(1, Bytes::from(vec![i]), 1, 0).await.unwrap().lsn }
    }))
    .await;
    let mut sorted = lsns.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (2..=21).collect::<Vec<_>>(),
        "appends through two nodes share one dense sequence"
    );
    // A shard created through a after b opened is opened by b on demand.
    a.create_shard(2, 1).await.unwrap();
    assert!(b.shard(2).is_none());
    assert!(
        b.open_shard(2).await.unwrap().is_some(),
        "b opens a shard a created since"
    );
    assert!(
        b.open_shard(3).await.unwrap().is_none(),
        "a shard nobody created is not there"
    );
    a.delete_shard(1).await.unwrap();
    match b.append(1, Bytes::from_static(b"late"), 1, 0).await {
        Err(StoreError::Unavailable { shard: 1, reason }) => assert!(reason.contains("gone"), "{reason}"),
        other => panic!("appending to a shard deleted elsewhere: {other:?}"),
    }
}

/// A batch stored without its tail announcement (an appender that died between JetStream's
/// ack and its announcement, a reconnect that lost it) still wakes a reader waiting on
/// another node within a refresh; a shard nobody reads is not asked until a LATEST is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_announcement_is_made_up_by_the_refresh() {
    let nats = Nats::start().await;
    let a = store(&nats, "lost").await;
    a.create_shard(1, 1).await.unwrap();
    a.create_shard(2, 1).await.unwrap();
    let b = store(&nats, "lost").await;
    let watched = b.shard(1).expect("b opened shard 1");
    let unwatched = b.shard(2).expect("b opened shard 2");
    let ready = crate::store::ReadySet::new();
    watched.notify_on_append(&ready, 1);
    // Published straight to JetStream, as our append does, but announced to nobody.
    let js = jetstream::new(async_nats::connect(nats.client.to_string()).await.unwrap());
    for shard in [1, 2] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(RECORDS, "1");
        headers.insert(COMPRESSION, "0");
        js.publish_with_headers(format!("lost.s.{shard}"), headers, Bytes::from_static(b"quiet"))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let waited = std::time::Instant::now();
    tokio::time::timeout(REFRESH * 5, ready.ready())
        .await
        .expect("the watched shard learned of the unannounced batch");
    assert_eq!(watched.visible_lsn(), 1);
    assert_eq!(
        watched.read(1, 10, 1 << 20).await.unwrap()[0].payload,
        Bytes::from_static(b"quiet")
    );
    // Within a few refresh periods (a loaded 2-core CI machine once took 3.0 of them).
    assert!(waited.elapsed() <= REFRESH * 4, "took {:?}", waited.elapsed());
    assert_eq!(unwatched.visible_lsn(), 0, "a shard nobody reads is not polled");
    // A LATEST asked for now (a read's end, a subscription's start) includes it.
    unwatched.sync_tail().await.unwrap();
    assert_eq!(unwatched.visible_lsn(), 1);
}
