//! Subscriptions: consumer groups, acks, redelivery, limits, durable progress and bad input.

use std::collections::HashSet;
use std::time::Duration;

use hstream_integration_tests::*;
use hstream_proto as pb;
use tonic::Code;

fn sub_req(id: &str, stream: &str, ack_timeout: i32, max_unacked: i32) -> pb::Subscription {
    pb::Subscription {
        subscription_id: id.into(),
        stream_name: stream.into(),
        ack_timeout_seconds: ack_timeout,
        max_unacked_records: max_unacked,
        offset: pb::SpecialOffset::Earliest as i32,
        creation_time: None,
    }
}

/// Appends `n` one-record batches round-robin over `shards`, payloads "<tag>-<i>".
async fn append_each(c: &mut Client, stream: &str, shards: &[u64], tag: &str, n: usize) {
    for i in 0..n {
        let shard = shards[i % shards.len()];
        let records = batch(
            &format!("k{}", i % 7),
            &[format!("{tag}-{i}").into_bytes()],
            pb::CompressionType::None,
        );
        c.append(pb::AppendRequest {
            stream_name: stream.into(),
            shard_id: shard,
            records: Some(records),
        })
        .await
        .unwrap();
    }
}

fn payload_set(consumers: &[&TestConsumer]) -> (usize, HashSet<Vec<u8>>) {
    let mut all = Vec::new();
    for c in consumers {
        all.extend(c.received.lock().unwrap().iter().map(|(_, p)| p.clone()));
    }
    let n = all.len();
    (n, all.into_iter().collect())
}

async fn wait_total(consumers: &[&TestConsumer], n: usize, what: &str) {
    wait_until(Duration::from_secs(60), what, || {
        let total: usize = consumers.iter().map(|c| c.count()).sum();
        async move { total >= n }
    })
    .await;
}

/// The official Python client consumes 100,000 records from several producers: all of them,
/// once each, in per-key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_consumes_everything_once_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let v = run_python(
        "subscribe.py",
        &["--port", &server.addr.port().to_string(), "--records", "100000"],
    )
    .await;
    assert_eq!(
        (v["received"].as_u64(), v["duplicates"].as_u64()),
        (Some(100_000), Some(0)),
        "{v}"
    );
}

/// Two, then three consumers share a subscription: each record goes to exactly one of them; a
/// consumer whose connection dies hands its unacked records to the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_group_shares_shards_and_takes_over_from_a_dead_member() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let shards = make_stream(&mut c, "group", 6).await;
    c.create_subscription(sub_req("g", "group", 600, 100_000))
        .await
        .unwrap();

    let a = TestConsumer::start(&c, "g", "a", true).await.unwrap();
    let b = TestConsumer::start(&c, "g", "b", true).await.unwrap();
    append_each(&mut c, "group", &shards, "one", 300).await;
    wait_total(&[&a, &b], 300, "300 records over two consumers").await;
    assert!(
        a.count() > 0 && b.count() > 0,
        "both consumers get shards: {} / {}",
        a.count(),
        b.count()
    );

    let cc = TestConsumer::start(&c, "g", "c", true).await.unwrap();
    append_each(&mut c, "group", &shards, "two", 300).await;
    wait_total(&[&a, &b, &cc], 600, "600 records over three consumers").await;
    assert!(cc.count() > 0, "the third consumer gets shards");
    let (n, distinct) = payload_set(&[&a, &b, &cc]);
    assert_eq!((n, distinct.len()), (600, 600), "every record exactly once");

    // A consumer that never acks, then dies: what it held goes to the others.
    let list = c
        .list_consumers(pb::ListConsumersRequest {
            subscription_id: "g".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.consumers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    drop(list);
    cc.kill();
    let d = TestConsumer::start(&c, "g", "d", false).await.unwrap();
    append_each(&mut c, "group", &shards, "three", 300).await;
    wait_until(Duration::from_secs(60), "the silent consumer to hold records", || {
        let n = d.count();
        async move { n > 0 }
    })
    .await;
    let held: HashSet<Vec<u8>> = d.received.lock().unwrap().iter().map(|(_, p)| p.clone()).collect();
    d.kill();
    wait_until(Duration::from_secs(60), "the others to get every record", || {
        let (_, got) = payload_set(&[&a, &b]);
        let all_three = (0..300).all(|i| got.contains(format!("three-{i}").as_bytes()));
        async move { all_three }
    })
    .await;
    let (_, got) = payload_set(&[&a, &b]);
    assert!(
        held.iter().all(|p| got.contains(p)),
        "records held by the dead consumer were handed over"
    );
    // Dead consumers leave the subscription responsive: a forced delete completes promptly.
    let del = c.delete_subscription(pb::DeleteSubscriptionRequest {
        subscription_id: "g".into(),
        force: true,
    });
    tokio::time::timeout(Duration::from_secs(10), del)
        .await
        .expect("delete completes")
        .unwrap();
}

/// maxUnackedRecords stops delivery at the limit; unacked records come back after the ack
/// timeout; acks let delivery continue; GetSubscription reports progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_limit_and_redelivery_after_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let shards = make_stream(&mut c, "slow", 1).await;
    c.create_subscription(sub_req("s", "slow", 1, 10)).await.unwrap();
    append_each(&mut c, "slow", &shards, "r", 30).await;
    let lazy = TestConsumer::start(&c, "s", "lazy", false).await.unwrap();
    wait_total(&[&lazy], 10, "the first 10 records").await;
    // After the 1 s ack timeout the same 10 come again, and nothing beyond them: the limit held
    // through a whole timeout period.
    wait_total(&[&lazy], 20, "redelivery of the 10 unacked records").await;
    let ids = lazy.ids();
    let first: Vec<_> = ids[..10].to_vec();
    assert_eq!(&ids[10..20], &first[..], "the same records come back");
    assert!(
        ids.iter().all(|id| id.batch_id <= 10),
        "nothing past the limit was sent: {ids:?}"
    );
    // Out-of-order acks; progress advances only over the contiguous prefix.
    lazy.ack(first[3..].to_vec()).await;
    let prog = |mut c: Client| async move {
        let r = c
            .get_subscription(pb::GetSubscriptionRequest { id: "s".into() })
            .await
            .unwrap()
            .into_inner();
        r.offsets[0].batch_id
    };
    wait_total(&[&lazy], 27, "7 new records after 7 acks").await;
    assert_eq!(prog(c.clone()).await, 0, "records 1-3 are unacked, so no progress yet");
    lazy.ack(first[..3].to_vec()).await;
    let probe = c.clone();
    wait_until(Duration::from_secs(10), "progress past the first 10", || {
        let c = probe.clone();
        async move { prog(c).await >= 10 }
    })
    .await;
}

/// Restarts in the middle of consumption: after a graceful one no acked record comes again; after
/// SIGKILL nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_survives_graceful_restart_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let shards = make_stream(&mut c, "durable", 3).await;
    c.create_subscription(sub_req("d", "durable", 600, 100_000))
        .await
        .unwrap();
    append_each(&mut c, "durable", &shards, "x", 600).await;

    // Ack every other record we get; the rest stay unacked across the restart.
    let first = TestConsumer::start(&c, "d", "one", false).await.unwrap();
    wait_total(&[&first], 600, "all 600 records").await;
    let ids = first.ids();
    let acked: Vec<pb::RecordId> = ids.iter().step_by(2).copied().collect();
    first.ack(acked.clone()).await;
    let probe = c.clone();
    wait_until(Duration::from_secs(10), "some progress to be committed", || {
        let mut c = probe.clone();
        async move {
            let r = c
                .get_subscription(pb::GetSubscriptionRequest { id: "d".into() })
                .await
                .unwrap()
                .into_inner();
            r.offsets.iter().any(|o| o.batch_id > 0)
        }
    })
    .await;
    assert!(server.terminate().success());
    let _ = first.ended().await;
    server.restart();
    let c = server.client().await;
    let second = TestConsumer::start(&c, "d", "two", true).await.unwrap();
    wait_total(&[&second], 300, "the 300 unacked records").await;
    let acked_set: HashSet<(u64, u64, u32)> = acked.iter().map(|i| (i.shard_id, i.batch_id, i.batch_index)).collect();
    let again: Vec<_> = second
        .ids()
        .into_iter()
        .filter(|i| acked_set.contains(&(i.shard_id, i.batch_id, i.batch_index)))
        .collect();
    assert!(
        again.is_empty(),
        "acked records came back after a graceful restart: {again:?}"
    );
    assert_eq!(second.count(), 300);

    // Now more records, acked as they come, and a SIGKILL midway: nothing may be lost. A record
    // the killed consumer got may come again (its ack may not have been committed); one it never
    // got must come to the next consumer.
    let mut c2 = c.clone();
    append_each(&mut c2, "durable", &shards, "y", 600).await;
    wait_total(&[&second], 500, "part of the new records").await;
    server.kill();
    let before: std::collections::HashSet<Vec<u8>> =
        second.received.lock().unwrap().iter().map(|(_, p)| p.clone()).collect();
    let _ = second.ended().await;
    server.restart();
    let c = server.client().await;
    let third = TestConsumer::start(&c, "d", "three", true).await.unwrap();
    wait_until(Duration::from_secs(60), "every y record after the crash", || {
        let got: HashSet<Vec<u8>> = third.received.lock().unwrap().iter().map(|(_, p)| p.clone()).collect();
        let all = (0..600).all(|i| {
            let p = format!("y-{i}").into_bytes();
            got.contains(&p) || before.contains(&p)
        });
        async move { all }
    })
    .await;
}

/// A consumer may ack, right after a restart, records it received before it: that is not an
/// ack for a record never delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_for_records_delivered_before_a_restart_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let shards = make_stream(&mut c, "early", 1).await;
    c.create_subscription(sub_req("e", "early", 600, 1000)).await.unwrap();
    append_each(&mut c, "early", &shards, "old", 5).await;
    let before = TestConsumer::start(&c, "e", "a", false).await.unwrap();
    wait_total(&[&before], 5, "the first 5 records").await;
    let old_ids = before.ids();
    assert!(server.terminate().success());
    let _ = before.ended().await;
    server.restart();
    let mut c = server.client().await;
    // The acks ride on the first request, so they are in before anything is delivered again.
    let after = TestConsumer::start_acking(&c, "e", "a", true, old_ids).await.unwrap();
    append_each(&mut c, "early", &shards, "new", 1).await;
    wait_until(Duration::from_secs(30), "the new record", || {
        let got = after.received.lock().unwrap().iter().any(|(_, p)| p == b"new-0");
        async move { got }
    })
    .await;
    let probe = c.clone();
    wait_until(Duration::from_secs(10), "progress over all 6 batches", || {
        let mut c = probe.clone();
        async move {
            let r = c
                .get_subscription(pb::GetSubscriptionRequest { id: "e".into() })
                .await
                .unwrap()
                .into_inner();
            r.offsets[0].batch_id == 6
        }
    })
    .await;
    let list = c
        .list_consumers(pb::ListConsumersRequest {
            subscription_id: "e".into(),
        })
        .await
        .unwrap();
    assert_eq!(list.into_inner().consumers.len(), 1, "the consumer was not rejected");
    let again: Vec<_> = after
        .received
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, p)| p.starts_with(b"old"))
        .cloned()
        .collect();
    assert!(again.is_empty(), "acked records came again: {again:?}");
}

/// Bad input: unknown subscription, acks for records never delivered, a consumer name in use,
/// invalid definitions, deletion with live consumers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscription_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let shards = make_stream(&mut c, "bad", 2).await;

    let e = c
        .create_subscription(sub_req("x", "missing", 60, 10))
        .await
        .unwrap_err();
    assert_eq!((e.code(), error_code(&e)), (Code::NotFound, 302));
    let e = c.create_subscription(sub_req("9x", "bad", 60, 10)).await.unwrap_err();
    assert_eq!((e.code(), error_code(&e)), (Code::InvalidArgument, 304));
    let e = c.create_subscription(sub_req("x", "bad", 0, 10)).await.unwrap_err();
    assert!(e.message().contains("ackTimeoutSeconds"), "{}", e.message());
    let e = c.create_subscription(sub_req("x", "bad", 60, 0)).await.unwrap_err();
    assert!(e.message().contains("maxUnackedRecords"), "{}", e.message());
    c.create_subscription(sub_req("x", "bad", 60, 1000)).await.unwrap();
    let e = c.create_subscription(sub_req("x", "bad", 60, 10)).await.unwrap_err();
    assert_eq!((e.code(), error_code(&e)), (Code::AlreadyExists, 301));

    let e = TestConsumer::start(&c, "nope", "c", true)
        .await
        .err()
        .expect("unknown subscription");
    assert_eq!((e.code(), error_code(&e)), (Code::NotFound, 300));

    let good = TestConsumer::start(&c, "x", "good", true).await.unwrap();
    let e = TestConsumer::start(&c, "x", "good", true)
        .await
        .err()
        .expect("name in use");
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().contains("already connected"), "{}", e.message());

    let rogue = TestConsumer::start(&c, "x", "rogue", false).await.unwrap();
    rogue
        .ack(vec![pb::RecordId {
            shard_id: shards[0],
            batch_id: 999,
            batch_index: 0,
        }])
        .await;
    let end = rogue
        .ended()
        .await
        .expect_err("the rogue consumer's stream ends with an error");
    assert_eq!(end.code(), Code::InvalidArgument);
    assert!(end.message().contains("never delivered"), "{}", end.message());
    // The other consumer is unaffected and now gets everything.
    append_each(&mut c, "bad", &shards, "after", 20).await;
    wait_total(&[&good], 20, "records after the rogue left").await;

    let e = c
        .delete_subscription(pb::DeleteSubscriptionRequest {
            subscription_id: "x".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!((e.code(), error_code(&e)), (Code::FailedPrecondition, 305));
    let exists = |mut c: Client| async move {
        c.check_subscription_exist(pb::CheckSubscriptionExistRequest {
            subscription_id: "x".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .exists
    };
    assert!(exists(c.clone()).await);
    c.delete_subscription(pb::DeleteSubscriptionRequest {
        subscription_id: "x".into(),
        force: true,
    })
    .await
    .unwrap();
    assert!(
        good.ended().await.is_err(),
        "a forced delete ends live consumers' streams"
    );
    assert!(!exists(c.clone()).await);
}

/// A stream force-deleted under a live subscription keeps serving it; its data goes with the
/// last subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_deleted_stream_keeps_feeding_its_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let shards = make_stream(&mut c, "doomed", 1).await;
    c.create_subscription(sub_req("keep", "doomed", 60, 1000))
        .await
        .unwrap();
    append_each(&mut c, "doomed", &shards, "z", 10).await;
    let del = |force| pb::DeleteStreamRequest {
        stream_name: "doomed".into(),
        ignore_non_exist: false,
        force,
    };
    let e = c.delete_stream(del(false)).await.unwrap_err();
    assert_eq!((e.code(), error_code(&e)), (Code::FailedPrecondition, 202));
    c.delete_stream(del(true)).await.unwrap();
    let subs = c
        .list_subscriptions(pb::ListSubscriptionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .subscription;
    assert_eq!(subs[0].stream_name, "__deleted_stream__");
    c.create_subscription(sub_req("other", "survivor", 60, 10))
        .await
        .unwrap_err();
    make_stream(&mut c, "survivor", 1).await;
    c.create_subscription(sub_req("other", "survivor", 60, 10))
        .await
        .unwrap();
    let with_prefix = c
        .list_subscriptions_with_prefix(pb::ListSubscriptionsWithPrefixRequest { prefix: "ke".into() })
        .await
        .unwrap()
        .into_inner()
        .subscription;
    assert_eq!(
        with_prefix
            .iter()
            .map(|s| s.subscription_id.as_str())
            .collect::<Vec<_>>(),
        ["keep"]
    );
    let consumer = TestConsumer::start(&c, "keep", "k", true).await.unwrap();
    wait_total(&[&consumer], 10, "the archived records").await;
    // The name is free again.
    make_stream(&mut c, "doomed", 1).await;
    c.delete_subscription(pb::DeleteSubscriptionRequest {
        subscription_id: "keep".into(),
        force: true,
    })
    .await
    .unwrap();
    let _ = consumer.ended().await;
    if on_local_store() {
        let archived = std::fs::read_dir(dir.path().join("shards")).unwrap().count();
        assert_eq!(archived, 2, "only the live streams' shards remain on disk");
    }
}
