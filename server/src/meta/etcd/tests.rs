//! The etcd MetaStore against a real, throw-away etcd: the contract suite, a crash of etcd,
//! the largest stream, and the URI rules.

use std::time::Duration;

use super::*;

use hstream_integration_tests::etcd::Etcd;

/// Connects to `etcd` under `prefix`.
async fn store(etcd: &Etcd, prefix: &str) -> EtcdMetaStore {
    let opts = EtcdOptions {
        timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    EtcdMetaStore::connect(&etcd.uri(prefix), &opts)
        .await
        .unwrap_or_else(|e| panic!("etcd is healthy but refuses us: {e}\n{}", etcd.log()))
}

#[test]
fn uris_name_hosts_and_prefix() {
    assert_eq!(
        parse_uri("etcd://a:2379,b:2379/cluster1").unwrap(),
        (
            vec!["http://a:2379".to_owned(), "http://b:2379".to_owned()],
            "/cluster1".to_owned()
        )
    );
    assert_eq!(parse_uri("etcd://a:2379").unwrap().1, "/hstream");
    assert!(parse_uri("etcd:///x").is_err());
    assert!(parse_uri("sqlite:///x").is_err());
    // Credentials belong in their own settings, never in the URI, and are never echoed.
    let err = parse_uri("etcd://root:s3cret@a:2379").unwrap_err();
    assert!(err.contains("--metastore-user") && !err.contains("s3cret"), "{err}");
}

/// The same suite SQLite passes, against a real etcd; then a crash of etcd (SIGKILL) loses
/// nothing a call returned from.
#[tokio::test]
async fn contract_on_etcd_and_data_survives_an_etcd_crash() {
    let etcd = Etcd::start().await;
    let s = store(&etcd, "contract").await;
    contract::run(&s).await;
    contract::seed_durable(&s).await;
    drop(s);
    // SIGKILL: nothing flushed on the way out; then the same data again.
    let etcd = tokio::task::spawn_blocking(move || {
        let mut etcd = etcd;
        etcd.restart();
        etcd
    })
    .await
    .unwrap();
    let s = store(&etcd, "contract").await;
    contract::check_durable(&s).await;
    // Another prefix is another cluster's metadata.
    let other = store(&etcd, "other").await;
    assert!(other.list_streams("").await.unwrap().is_empty());
    assert_eq!(other.cluster_id(None).await.unwrap(), None);
}

/// A stream of 4096 shards and a subscription committing all of them stay within etcd's
/// default of 128 operations per transaction.
#[tokio::test]
async fn the_largest_stream_and_its_progress_fit_etcd_transactions() {
    let etcd = Etcd::start().await;
    let store = store(&etcd, "big").await;
    let first = store.allocate_shard_ids(4096).await.unwrap();
    let stream = StreamMeta {
        name: "wide".into(),
        replication_factor: 1,
        backlog_secs: 0,
        shard_count: 4096,
        created_ms: 1,
        archived: false,
    };
    let shards: Vec<ShardMeta> = crate::keyspace::split(4096)
        .into_iter()
        .enumerate()
        .map(|(i, (start_key, end_key))| ShardMeta {
            id: first + i as u64,
            stream: "wide".into(),
            start_key,
            end_key,
            epoch: 4096,
        })
        .collect();
    store.create_stream(&stream, &shards).await.unwrap();
    assert_eq!(store.list_shards("wide").await.unwrap(), shards);
    let sub = SubscriptionMeta {
        id: "all".into(),
        stream: "wide".into(),
        ack_timeout_secs: 60,
        max_unacked: 100,
        offset: StartOffset::Earliest,
        created_ms: 1,
    };
    let start: Vec<ShardProgress> = shards
        .iter()
        .map(|s| ShardProgress {
            shard_id: s.id,
            next_lsn: 1,
        })
        .collect();
    store.create_subscription(&sub, &start).await.unwrap();
    let moved: Vec<ShardProgress> = start.iter().map(|p| ShardProgress { next_lsn: 7, ..*p }).collect();
    store.commit_progress("all", &moved).await.unwrap();
    assert_eq!(store.get_progress("all").await.unwrap(), moved);
    assert_eq!(store.delete_stream("wide").await.unwrap().len(), 4096);
}

/// A watch sees the stream changes another connection (another node) commits, in order,
/// beginning with a Resync; deletions name the shards they took; after etcd restarts the watch
/// resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_follows_every_nodes_stream_changes_across_an_etcd_restart() {
    use futures::StreamExt;
    let etcd = Etcd::start().await;
    let (a, b) = (store(&etcd, "w").await, store(&etcd, "w").await);
    let mut changes = b.watch_streams().await.unwrap();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), changes.next())
            .await
            .expect("a change within 20 s")
            .expect("the watch goes on")
    };
    assert_eq!(next().await, StreamChange::Resync);
    let stream = |name: &str| StreamMeta {
        name: name.into(),
        replication_factor: 1,
        backlog_secs: 0,
        shard_count: 1,
        created_ms: 5,
        archived: false,
    };
    let shard = |id: u64, name: &str| ShardMeta {
        id,
        stream: name.into(),
        start_key: 0,
        end_key: u128::MAX,
        epoch: 1,
    };
    let id = a.allocate_shard_ids(2).await.unwrap();
    a.create_stream(&stream("s1"), &[shard(id, "s1")]).await.unwrap();
    assert_eq!(next().await, StreamChange::Put(stream("s1"), vec![shard(id, "s1")]));
    a.delete_stream("s1").await.unwrap();
    assert_eq!(
        next().await,
        StreamChange::Deleted {
            name: "s1".into(),
            shard_ids: Some(vec![id])
        }
    );
    let etcd = tokio::task::spawn_blocking(move || {
        let mut etcd = etcd;
        etcd.restart();
        etcd
    })
    .await
    .unwrap();
    a.create_stream(&stream("s2"), &[shard(id + 1, "s2")]).await.unwrap();
    assert_eq!(next().await, StreamChange::Put(stream("s2"), vec![shard(id + 1, "s2")]));
    drop(etcd);
}
