//! The contract every [`MetaStore`] implementation must pass. Run [`run`] against a fresh,
//! empty store from the implementation's tests; [`seed_durable`] then [`check_durable`] across a
//! reopen proves writes outlive the process.
//!
//! Panics with a message naming the broken rule; it is test support, compiled always so that
//! implementations in other crates can call it.

use super::*;

fn stream(name: &str, shards: u32) -> StreamMeta {
    StreamMeta {
        name: name.into(),
        replication_factor: 1,
        backlog_secs: 60,
        shard_count: shards,
        created_ms: 1_700_000_000_000,
        archived: false,
    }
}

fn shard(id: u64, stream: &str, start: u128, end: u128) -> ShardMeta {
    ShardMeta {
        id,
        stream: stream.into(),
        start_key: start,
        end_key: end,
        epoch: 2,
    }
}

fn sub(id: &str, stream: &str) -> SubscriptionMeta {
    SubscriptionMeta {
        id: id.into(),
        stream: stream.into(),
        ack_timeout_secs: 60,
        max_unacked: 100,
        offset: StartOffset::Earliest,
        created_ms: 1,
    }
}

pub async fn run(store: &dyn MetaStore) {
    identity(store).await;
    streams_and_shards(store).await;
    subscriptions_and_progress(store).await;
    readers(store).await;
    connectors_checkpoints_kv(store).await;
    nodes(store).await;
    ownership_and_fencing(store).await;
    leases(store).await;
}

async fn identity(store: &dyn MetaStore) {
    assert_eq!(
        store.cluster_id(None).await.unwrap(),
        None,
        "a new store has no cluster id"
    );
    assert_eq!(store.cluster_id(None).await.unwrap(), None, "reading does not set it");
    assert_eq!(store.cluster_id(Some("c-1")).await.unwrap().as_deref(), Some("c-1"));
    assert_eq!(
        store.cluster_id(Some("c-2")).await.unwrap().as_deref(),
        Some("c-1"),
        "a set cluster id is never overwritten"
    );
    assert_eq!(store.cluster_id(None).await.unwrap().as_deref(), Some("c-1"));
    // No connector's name reaches it: deleting a connector named "cluster" leaves it alone.
    store.kv_set("cluster", "id", b"x").await.unwrap();
    store.delete_connector("cluster").await.unwrap();
    assert_eq!(store.cluster_id(None).await.unwrap().as_deref(), Some("c-1"));
}

async fn streams_and_shards(store: &dyn MetaStore) {
    let next = store.allocate_shard_ids(0).await.unwrap();
    assert_eq!(
        store.allocate_shard_ids(0).await.unwrap(),
        next,
        "count 0 allocates nothing"
    );
    let a = store.allocate_shard_ids(2).await.unwrap();
    assert!(a >= next, "ids start at the announced next id");
    let b = store.allocate_shard_ids(3).await.unwrap();
    assert!(b >= a + 2, "shard id ranges must not overlap: {a} then {b}");
    assert!(
        store.allocate_shard_ids(0).await.unwrap() >= b + 3,
        "next id follows the last range"
    );

    let shards = vec![
        shard(a, "s1", 0, u128::MAX / 2),
        shard(a + 1, "s1", u128::MAX / 2 + 1, u128::MAX),
    ];
    store.create_stream(&stream("s1", 2), &shards).await.unwrap();
    store
        .create_stream(&stream("s2", 1), &[shard(b, "s2", 0, u128::MAX)])
        .await
        .unwrap();
    store
        .create_stream(&stream("t_1", 1), &[shard(b + 1, "t_1", 0, u128::MAX)])
        .await
        .unwrap();

    let dup = store.create_stream(&stream("s1", 1), &[shard(b + 2, "s1", 0, 1)]).await;
    assert!(
        matches!(dup, Err(MetaError::AlreadyExists { .. })),
        "duplicate stream must fail: {dup:?}"
    );
    assert!(
        store.get_shard(b + 2).await.unwrap().is_none(),
        "a failed create must not leave shards behind"
    );
    let clash = store.create_stream(&stream("s9", 1), &[shard(a, "s9", 0, 1)]).await;
    assert!(clash.is_err(), "a shard id in use must not be reused");
    assert!(
        store.get_stream("s9").await.unwrap().is_none(),
        "a failed create must not leave a stream behind"
    );

    assert_eq!(store.get_stream("s1").await.unwrap(), Some(stream("s1", 2)));
    assert_eq!(
        store.list_shards("s1").await.unwrap(),
        shards,
        "shards keep exact u128 bounds, ordered by id"
    );
    assert_eq!(store.get_shard(a + 1).await.unwrap(), Some(shards[1].clone()));
    let names: Vec<_> = store
        .list_streams("")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["s1", "s2", "t_1"]);
    let names: Vec<_> = store
        .list_streams("s")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["s1", "s2"]);
    // LIKE wildcards in a prefix are literal.
    let names: Vec<_> = store
        .list_streams("t_")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["t_1"]);
    assert!(store.list_streams("_").await.unwrap().is_empty());

    let removed = store.delete_stream("s2").await.unwrap();
    assert_eq!(removed.len(), 1);
    assert!(store.get_stream("s2").await.unwrap().is_none());
    assert!(store.get_shard(b).await.unwrap().is_none());
    assert!(matches!(
        store.delete_stream("s2").await,
        Err(MetaError::NotFound { .. })
    ));

    // Archiving hides the stream but keeps its shards reachable under the archived name.
    store.create_subscription(&sub("arch_sub", "t_1"), &[]).await.unwrap();
    store.archive_stream("t_1", "__deleted__t_1_1").await.unwrap();
    assert!(store.get_stream("t_1").await.unwrap().is_none());
    assert!(
        store
            .list_streams("")
            .await
            .unwrap()
            .iter()
            .all(|s| s.name != "__deleted__t_1_1")
    );
    assert_eq!(store.list_shards("__deleted__t_1_1").await.unwrap().len(), 1);
    let archived = store.list_archived_streams().await.unwrap();
    assert_eq!(archived.len(), 1);
    assert!(archived[0].archived && archived[0].name == "__deleted__t_1_1");
    assert_eq!(
        store.get_subscription("arch_sub").await.unwrap().unwrap().stream,
        "__deleted__t_1_1"
    );
    // The live name is free again.
    store
        .create_stream(&stream("t_1", 1), &[shard(b + 2, "t_1", 0, u128::MAX)])
        .await
        .unwrap();
    let all = store.all_shard_ids().await.unwrap();
    for id in [a, a + 1, b + 1, b + 2] {
        assert!(all.contains(&id), "all_shard_ids must include archived and live shards");
    }
    // An archived stream goes with its last subscription, in the same step.
    let removed = store
        .delete_subscription("arch_sub")
        .await
        .unwrap()
        .expect("it existed");
    assert_eq!(removed.iter().map(|s| s.id).collect::<Vec<_>>(), [b + 1]);
    assert!(store.list_archived_streams().await.unwrap().is_empty());
    assert!(store.list_shards("__deleted__t_1_1").await.unwrap().is_empty());
}

async fn subscriptions_and_progress(store: &dyn MetaStore) {
    let start = [ShardProgress {
        shard_id: 1,
        next_lsn: 3,
    }];
    store.create_subscription(&sub("sub_a", "s1"), &start).await.unwrap();
    assert_eq!(
        store.get_progress("sub_a").await.unwrap(),
        start,
        "starting progress is stored with it"
    );
    let mut latest = sub("sub_b", "s1");
    latest.offset = StartOffset::Latest;
    store.create_subscription(&latest, &[]).await.unwrap();
    assert!(matches!(
        store.create_subscription(&sub("sub_a", "other"), &[]).await,
        Err(MetaError::AlreadyExists { .. })
    ));
    assert_eq!(store.get_subscription("sub_a").await.unwrap(), Some(sub("sub_a", "s1")));
    assert_eq!(
        store.get_subscription("sub_b").await.unwrap().unwrap().offset,
        StartOffset::Latest
    );
    assert_eq!(store.list_subscriptions("sub_").await.unwrap().len(), 2);
    assert_eq!(store.subscriptions_of_stream("s1").await.unwrap().len(), 2);

    store
        .commit_progress(
            "sub_a",
            &[
                ShardProgress {
                    shard_id: 1,
                    next_lsn: 10,
                },
                ShardProgress {
                    shard_id: 2,
                    next_lsn: 5,
                },
            ],
        )
        .await
        .unwrap();
    store
        .commit_progress(
            "sub_a",
            &[ShardProgress {
                shard_id: 1,
                next_lsn: 7,
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_progress("sub_a").await.unwrap(),
        vec![
            ShardProgress {
                shard_id: 1,
                next_lsn: 10
            },
            ShardProgress {
                shard_id: 2,
                next_lsn: 5
            }
        ],
        "progress never moves back"
    );
    store
        .put_checkpoint(&Checkpoint {
            owner: subscription_checkpoint("sub_a"),
            version: 1,
            data: vec![1],
        })
        .await
        .unwrap();
    assert_eq!(store.delete_subscription("sub_a").await.unwrap(), Some(vec![]));
    assert_eq!(store.delete_subscription("sub_a").await.unwrap(), None);
    assert!(
        store
            .get_checkpoint(&subscription_checkpoint("sub_a"))
            .await
            .unwrap()
            .is_none(),
        "the ack checkpoint goes with its subscription"
    );
    assert!(
        store.get_progress("sub_a").await.unwrap().is_empty(),
        "progress goes with its subscription"
    );
    // A subscription created under a deleted one's name starts clean, even if that one's
    // checkpoint was left behind (by an older version).
    store
        .put_checkpoint(&Checkpoint {
            owner: subscription_checkpoint("sub_c"),
            version: 1,
            data: vec![1],
        })
        .await
        .unwrap();
    store.create_subscription(&sub("sub_c", "s1"), &[]).await.unwrap();
    assert!(
        store
            .get_checkpoint(&subscription_checkpoint("sub_c"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.delete_subscription("sub_c").await.unwrap().is_some());
    assert!(store.delete_subscription("sub_b").await.unwrap().is_some());
}

async fn readers(store: &dyn MetaStore) {
    let r = ReaderMeta {
        id: "r1".into(),
        stream: "s1".into(),
        shard_id: 1,
        start_lsn: 42,
        timeout_ms: 100,
        offset_spec: vec![1, 2, 3],
    };
    store.create_reader(&r).await.unwrap();
    assert!(matches!(
        store.create_reader(&r).await,
        Err(MetaError::AlreadyExists { .. })
    ));
    assert_eq!(store.get_reader("r1").await.unwrap(), Some(r.clone()));
    assert_eq!(store.list_readers().await.unwrap(), vec![r]);
    assert!(store.delete_reader("r1").await.unwrap());
    assert!(!store.delete_reader("r1").await.unwrap());
}

async fn connectors_checkpoints_kv(store: &dyn MetaStore) {
    let mut c = ConnectorMeta {
        name: "pg1".into(),
        kind: "SOURCE".into(),
        target: "postgresql".into(),
        config: r#"{"host":"x"}"#.into(),
        status: "RUNNING".into(),
        created_ms: 5,
        node: 1,
    };
    store.create_connector(&c).await.unwrap();
    assert!(matches!(
        store.create_connector(&c).await,
        Err(MetaError::AlreadyExists { .. })
    ));
    c.status = "PAUSED".into();
    store.update_connector(&c).await.unwrap();
    assert_eq!(store.get_connector("pg1").await.unwrap(), Some(c.clone()));
    assert_eq!(store.list_connectors().await.unwrap(), vec![c.clone()]);
    let mut ghost = c.clone();
    ghost.name = "nope".into();
    assert!(matches!(
        store.update_connector(&ghost).await,
        Err(MetaError::NotFound { .. })
    ));

    let cp = Checkpoint {
        owner: connector_checkpoint("pg1"),
        version: 1,
        data: b"lsn=0/16B3748".to_vec(),
    };
    store.put_checkpoint(&cp).await.unwrap();
    let cp2 = Checkpoint {
        version: 2,
        data: b"lsn=0/16B4000".to_vec(),
        ..cp.clone()
    };
    store.put_checkpoint(&cp2).await.unwrap();
    assert_eq!(
        store.get_checkpoint(&connector_checkpoint("pg1")).await.unwrap(),
        Some(cp2)
    );
    store.set_connector_config("pg1", r#"{"host":"y"}"#).await.unwrap();
    let changed = store.get_connector("pg1").await.unwrap().unwrap();
    assert_eq!(
        (changed.config.as_str(), changed.status.as_str()),
        (r#"{"host":"y"}"#, "PAUSED"),
        "config alone changes"
    );
    store.set_connector_config("pg1", &c.config).await.unwrap();
    store.set_connector_status("pg1", "FAILED", None).await.unwrap();
    assert_eq!(store.get_connector("pg1").await.unwrap().unwrap().status, "FAILED");
    assert_eq!(
        store.get_connector("pg1").await.unwrap().unwrap().config,
        c.config,
        "status alone changes"
    );
    assert!(matches!(
        store.set_connector_status("nope", "NEW", None).await,
        Err(MetaError::NotFound { .. })
    ));
    store
        .put_checkpoint(&Checkpoint {
            owner: "other".into(),
            version: 1,
            data: vec![1],
        })
        .await
        .unwrap();
    assert!(store.delete_checkpoint("other").await.unwrap());
    assert!(!store.delete_checkpoint("other").await.unwrap());
    assert!(store.get_checkpoint("other").await.unwrap().is_none());
    store.kv_set("pg1", "k", b"v1").await.unwrap();
    store.kv_set("pg1", "k", b"v2").await.unwrap();
    assert_eq!(store.kv_get("pg1", "k").await.unwrap(), Some(b"v2".to_vec()));
    assert_eq!(store.kv_get("pg1", "missing").await.unwrap(), None);

    assert!(store.delete_connector("pg1").await.unwrap());
    assert!(
        store
            .get_checkpoint(&connector_checkpoint("pg1"))
            .await
            .unwrap()
            .is_none(),
        "checkpoints go with their connector"
    );
    assert!(
        store.kv_get("pg1", "k").await.unwrap().is_none(),
        "key-values go with their connector"
    );
    assert!(!store.delete_connector("pg1").await.unwrap());
    // A checkpoint written after its connector was deleted (a store still in flight) is not
    // the next connector's of that name.
    store
        .put_checkpoint(&Checkpoint {
            owner: connector_checkpoint("pg1"),
            version: 1,
            data: vec![7],
        })
        .await
        .unwrap();
    store.kv_set("pg1", "k", b"stale").await.unwrap();
    store.create_connector(&c).await.unwrap();
    assert_eq!(store.get_checkpoint(&connector_checkpoint("pg1")).await.unwrap(), None);
    assert_eq!(store.kv_get("pg1", "k").await.unwrap(), None);
    assert!(store.delete_connector("pg1").await.unwrap());
}

fn node(id: u32) -> NodeMeta {
    NodeMeta {
        id,
        host: format!("10.0.0.{id}"),
        port: 6570,
        state: "Running".into(),
        updated_ms: 1,
    }
}

async fn nodes(store: &dyn MetaStore) {
    let mut n = node(1);
    store.upsert_node(&n, None).await.unwrap();
    n.state = "Dead".into();
    store.upsert_node(&n, None).await.unwrap();
    assert_eq!(store.list_nodes().await.unwrap(), vec![n]);
    assert!(store.remove_node(1).await.unwrap());
    assert!(store.list_nodes().await.unwrap().is_empty());
}

fn fenced<T: std::fmt::Debug>(r: MetaResult<T>, what: &str) -> String {
    match r {
        Err(e @ MetaError::Fenced { .. }) => e.to_string(),
        other => panic!("{what}: expected Fenced, got {other:?}"),
    }
}

/// Claims move the epoch one at a time and only from the epoch the claimant saw; a write
/// fenced by an ownership that moved on writes nothing, even alongside valid writes.
async fn ownership_and_fencing(store: &dyn MetaStore) {
    let res = "subscription/owned";
    assert_eq!(store.ownership(res).await.unwrap(), None);
    let first = store.claim(res, 1, 0).await.unwrap();
    assert_eq!((first.owner, first.epoch), (Some(1), 1));
    // Node 2 saw the resource unclaimed: too late, and told who holds it.
    let msg = fenced(store.claim(res, 2, 0).await, "a claim from a stale epoch");
    assert!(msg.contains("node 1 under epoch 1"), "{msg}");
    let second = store.claim(res, 2, 1).await.unwrap();
    assert_eq!((second.owner, second.epoch), (Some(2), 2));
    assert_eq!(store.ownership(res).await.unwrap(), Some(second.clone()));

    // Node 1 does not know yet: its progress and checkpoint are refused, all of them.
    let id = store.allocate_shard_ids(1).await.unwrap();
    store
        .create_stream(&stream("owned", 1), &[shard(id, "owned", 0, u128::MAX)])
        .await
        .unwrap();
    store.create_subscription(&sub("owned", "owned"), &[]).await.unwrap();
    let moved = [ShardProgress {
        shard_id: id,
        next_lsn: 5,
    }];
    let acks = Checkpoint {
        owner: subscription_checkpoint("owned"),
        version: 1,
        data: vec![1],
    };
    let stale = Commit {
        progress: Some(("owned", &moved)),
        checkpoints: std::slice::from_ref(&acks),
        fences: std::slice::from_ref(&first),
    };
    fenced(store.commit(&stale).await, "a commit fenced by a lost ownership");
    assert!(
        store.get_progress("owned").await.unwrap().is_empty(),
        "fenced progress was written"
    );
    assert_eq!(store.get_checkpoint(&acks.owner).await.unwrap(), None);
    // The holder's commit goes through, progress and checkpoint together.
    let current = Commit {
        fences: std::slice::from_ref(&second),
        ..stale
    };
    store.commit(&current).await.unwrap();
    assert_eq!(store.get_progress("owned").await.unwrap(), moved);
    assert_eq!(store.get_checkpoint(&acks.owner).await.unwrap(), Some(acks.clone()));

    // Several owners' checkpoints in one commit: one stale fence refuses the whole batch.
    let other = store.claim("connector/a", 2, 0).await.unwrap();
    let batch = [
        Checkpoint {
            owner: connector_checkpoint("a"),
            version: 1,
            data: vec![2],
        },
        Checkpoint {
            owner: connector_checkpoint("b"),
            version: 1,
            data: vec![3],
        },
    ];
    let both = [other.clone(), first.clone()];
    let refused = Commit {
        checkpoints: &batch,
        fences: &both,
        ..Default::default()
    };
    fenced(store.commit(&refused).await, "a batch with one stale fence");
    assert_eq!(store.get_checkpoint(&connector_checkpoint("a")).await.unwrap(), None);
    let both = [other, second.clone()];
    store
        .commit(&Commit {
            checkpoints: &batch,
            fences: &both,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store.get_checkpoint(&connector_checkpoint("b")).await.unwrap(),
        Some(batch[1].clone())
    );

    // A connector's status: written by its holder, refused to the copy that lost it.
    let meta = ConnectorMeta {
        name: "a".into(),
        kind: "SOURCE".into(),
        target: "generator".into(),
        config: "{}".into(),
        status: "NEW".into(),
        created_ms: 1,
        node: 2,
    };
    store.create_connector(&meta).await.unwrap();
    let a = store.ownership("connector/a").await.unwrap().unwrap();
    store.set_connector_status("a", "RUNNING", Some(&a)).await.unwrap();
    let stale_a = Ownership {
        epoch: a.epoch - 1,
        ..a.clone()
    };
    fenced(
        store.set_connector_status("a", "FAILED", Some(&stale_a)).await,
        "a status written under a lost ownership",
    );
    assert_eq!(store.get_connector("a").await.unwrap().unwrap().status, "RUNNING");
    fenced(
        store.set_connector_status("a", "FAILED", Some(&first)).await,
        "a status fenced by another resource's lost ownership",
    );
    store.delete_connector("a").await.unwrap();

    // Releasing: only by the holder; the epoch still moves on, and nobody holds it.
    fenced(store.release(&first).await, "a release by a former holder");
    let released = store.release(&second).await.unwrap();
    assert_eq!((released.owner, released.epoch), (None, 3));
    fenced(
        store
            .commit(&Commit {
                fences: std::slice::from_ref(&second),
                ..Default::default()
            })
            .await,
        "an empty commit fenced by a released ownership",
    );
    assert_eq!(store.claim(res, 1, 3).await.unwrap().epoch, 4);
    let listed = store.list_ownerships("subscription/").await.unwrap();
    assert_eq!(listed.iter().map(|o| o.resource.as_str()).collect::<Vec<_>>(), [res]);
    assert_eq!(store.list_ownerships("").await.unwrap().len(), 2);
    store.delete_subscription("owned").await.unwrap();
    store.delete_stream("owned").await.unwrap();
    store.delete_connector("a").await.unwrap();
    store.delete_checkpoint(&connector_checkpoint("b")).await.unwrap();
}

/// Polls `cond` every 100 ms for up to `within`.
async fn within(within: std::time::Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A node record bound to a lease lives while the lease is renewed, and vanishes when it
/// expires or is revoked; an expired lease cannot be renewed or bound to.
async fn leases(store: &dyn MetaStore) {
    use std::time::Duration;
    let kept = store.grant_lease(Duration::from_secs(2)).await.unwrap();
    let lapsing = store.grant_lease(Duration::from_secs(1)).await.unwrap();
    store.upsert_node(&node(7), Some(kept)).await.unwrap();
    store.upsert_node(&node(8), Some(lapsing)).await.unwrap();
    store.upsert_node(&node(9), None).await.unwrap();
    let ids = async || {
        store
            .list_nodes()
            .await
            .unwrap()
            .iter()
            .map(|n| n.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids().await, [7, 8, 9]);
    // Renewing `kept` twice a second outlives both time-to-lives; `lapsing` goes.
    let started = std::time::Instant::now();
    let gone = within(Duration::from_secs(15), async || {
        assert!(store.keep_lease_alive(kept).await.unwrap(), "a renewed lease expired");
        ids().await == [7, 9] && started.elapsed() > Duration::from_secs(3)
    })
    .await;
    assert!(
        gone,
        "a lease not renewed did not take its node record: {:?}",
        ids().await
    );
    assert!(
        !store.keep_lease_alive(lapsing).await.unwrap(),
        "an expired lease was renewed"
    );
    match store.upsert_node(&node(8), Some(lapsing)).await {
        Err(MetaError::NotFound { kind: "lease", .. }) => {}
        other => panic!("binding to an expired lease: {other:?}"),
    }
    store.revoke_lease(kept).await.unwrap();
    assert_eq!(ids().await, [9]);
    store.revoke_lease(kept).await.unwrap();
    assert!(store.remove_node(9).await.unwrap());
}

/// Writes a little of everything; [`check_durable`] reads it back after a reopen.
pub async fn seed_durable(store: &dyn MetaStore) {
    assert!(store.cluster_id(Some("durable-cluster")).await.unwrap().is_some());
    let id = store.allocate_shard_ids(1).await.unwrap();
    store
        .create_stream(&stream("durable", 1), &[shard(id, "durable", 0, u128::MAX)])
        .await
        .unwrap();
    store
        .create_subscription(&sub("durable_sub", "durable"), &[])
        .await
        .unwrap();
    store
        .commit_progress(
            "durable_sub",
            &[ShardProgress {
                shard_id: id,
                next_lsn: 99,
            }],
        )
        .await
        .unwrap();
    store
        .put_checkpoint(&Checkpoint {
            owner: "durable_task".into(),
            version: 3,
            data: vec![9],
        })
        .await
        .unwrap();
}

pub async fn check_durable(store: &dyn MetaStore) {
    let s = store
        .get_stream("durable")
        .await
        .unwrap()
        .expect("stream survives reopen");
    assert_eq!(s.shard_count, 1);
    let id = store.cluster_id(None).await.unwrap();
    assert!(id.is_some(), "the cluster id survives reopen");
    assert_eq!(store.cluster_id(Some("after-reopen")).await.unwrap(), id);
    let shards = store.list_shards("durable").await.unwrap();
    assert_eq!(shards.len(), 1);
    assert_eq!(shards[0].end_key, u128::MAX);
    let next = store.allocate_shard_ids(1).await.unwrap();
    assert!(next > shards[0].id, "shard ids are not reused after reopen");
    assert_eq!(store.get_progress("durable_sub").await.unwrap()[0].next_lsn, 99);
    assert_eq!(store.get_checkpoint("durable_task").await.unwrap().unwrap().version, 3);
}
