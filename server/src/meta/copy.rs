//! Copying one MetaStore into another (`hstream-server --copy-metastore-to <uri>`): how a
//! single-node user on embedded SQLite moves to etcd without losing streams, subscriptions,
//! readers or connectors.
//!
//! Guarantees: the cluster id is copied last, so a target without it is never mistaken for a
//! finished copy (a server refuses to start on it with the data directory, which names the
//! cluster); a copy that stopped half-way can be run again (an object the target already holds
//! must equal the source's); a target that holds a cluster id, a finished copy or another
//! cluster's metadata, is refused before anything is written, so a copy never rolls back what
//! servers wrote to the target since; subscription progress only moves forward, as everywhere.
//!
//! Not copied: the per-owner key-value space (`kv_*`), which nothing uses yet and the trait
//! cannot list; ownership records and leases, which belong to running nodes (a node claims
//! afresh where it runs; node records are copied unbound).

use super::*;

/// What was copied, for the operator.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    pub streams: usize,
    pub shards: usize,
    pub subscriptions: usize,
    pub readers: usize,
    pub connectors: usize,
    pub checkpoints: usize,
    pub nodes: usize,
}

fn differs(kind: &'static str, name: &str) -> MetaError {
    MetaError::Invalid(format!(
        "the target already holds {kind} {name:?} and it differs from the source's: is it another cluster's metadata?"
    ))
}

/// Creates with `create`; on AlreadyExists, requires `same` of the target's copy.
async fn create_or_same<F, G>(kind: &'static str, name: &str, create: F, same: G) -> MetaResult<()>
where
    F: std::future::Future<Output = MetaResult<()>>,
    G: std::future::Future<Output = MetaResult<bool>>,
{
    match create.await {
        Ok(()) => Ok(()),
        Err(MetaError::AlreadyExists { .. }) => {
            if same.await? {
                Ok(())
            } else {
                Err(differs(kind, name))
            }
        }
        Err(e) => Err(e),
    }
}

async fn copy_checkpoint(from: &dyn MetaStore, to: &dyn MetaStore, owner: &str) -> MetaResult<bool> {
    match from.get_checkpoint(owner).await? {
        Some(cp) => {
            to.put_checkpoint(&cp).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Copies everything `from` holds into `to`.
pub async fn copy(from: &dyn MetaStore, to: &dyn MetaStore) -> MetaResult<Copied> {
    let Some(cluster) = from.cluster_id(None).await? else {
        return Err(MetaError::Invalid(
            "the source metastore has no cluster id: no server ever started on it".into(),
        ));
    };
    // A target with a cluster id was copied into already (or served a cluster): copying
    // again would roll back what its servers wrote since (checkpoints, statuses, deletions).
    match to.cluster_id(None).await? {
        Some(other) if other == cluster => {
            return Err(MetaError::Invalid(format!(
                "the target already holds cluster {cluster}: it was copied into before, and servers \
                 may have written to it since; nothing was copied"
            )));
        }
        Some(other) => {
            return Err(MetaError::Invalid(format!(
                "the target belongs to cluster {other}, the source to {cluster}; nothing was copied"
            )));
        }
        None => {}
    }
    let mut done = Copied::default();
    // Shard ids the source handed out are never handed out again by the target.
    let next = from.allocate_shard_ids(0).await?;
    let have = to.allocate_shard_ids(0).await?;
    if next > have {
        to.allocate_shard_ids(
            u32::try_from(next - have)
                .map_err(|_| MetaError::Invalid(format!("shard id counter {next} is out of range")))?,
        )
        .await?;
    }
    let mut streams = from.list_streams("").await?;
    streams.extend(from.list_archived_streams().await?);
    for s in &streams {
        let shards = from.list_shards(&s.name).await?;
        create_or_same("stream", &s.name, to.create_stream(s, &shards), async {
            let meta = if s.archived {
                to.list_archived_streams().await?.into_iter().find(|a| a.name == s.name)
            } else {
                to.get_stream(&s.name).await?
            };
            Ok(meta.as_ref() == Some(s) && to.list_shards(&s.name).await? == shards)
        })
        .await?;
        done.streams += 1;
        done.shards += shards.len();
    }
    for sub in from.list_subscriptions("").await? {
        let progress = from.get_progress(&sub.id).await?;
        create_or_same(
            "subscription",
            &sub.id,
            to.create_subscription(&sub, &progress),
            async { Ok(to.get_subscription(&sub.id).await?.as_ref() == Some(&sub)) },
        )
        .await?;
        to.commit_progress(&sub.id, &progress).await?;
        done.checkpoints += usize::from(copy_checkpoint(from, to, &subscription_checkpoint(&sub.id)).await?);
        done.subscriptions += 1;
    }
    for r in from.list_readers().await? {
        create_or_same("reader", &r.id, to.create_reader(&r), async {
            Ok(to.get_reader(&r.id).await?.as_ref() == Some(&r))
        })
        .await?;
        done.readers += 1;
    }
    for c in from.list_connectors().await? {
        create_or_same("connector", &c.name, to.create_connector(&c), async {
            let t = to.get_connector(&c.name).await?;
            Ok(t.is_some_and(|t| (t.kind, t.target, t.created_ms) == (c.kind.clone(), c.target.clone(), c.created_ms)))
        })
        .await?;
        // The source's config and status win: it is the newer of the two.
        to.update_connector(&c).await?;
        done.checkpoints += usize::from(copy_checkpoint(from, to, &connector_checkpoint(&c.name)).await?);
        done.connectors += 1;
    }
    for n in from.list_nodes().await? {
        to.upsert_node(&n, None).await?;
        done.nodes += 1;
    }
    // Last: a target with the cluster id holds everything.
    let set = to.cluster_id(Some(&cluster)).await?;
    if set.as_deref() != Some(cluster.as_str()) {
        return Err(MetaError::Invalid(format!(
            "the target took cluster id {set:?} while copying cluster {cluster}"
        )));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(name: &str, shards: u32) -> StreamMeta {
        StreamMeta {
            name: name.into(),
            replication_factor: 1,
            backlog_secs: 0,
            shard_count: shards,
            created_ms: 7,
            archived: false,
        }
    }

    fn shard(id: u64, stream: &str) -> ShardMeta {
        ShardMeta {
            id,
            stream: stream.into(),
            start_key: 0,
            end_key: u128::MAX,
            epoch: 1,
        }
    }

    fn sub(id: &str, stream: &str) -> SubscriptionMeta {
        SubscriptionMeta {
            id: id.into(),
            stream: stream.into(),
            ack_timeout_secs: 30,
            max_unacked: 100,
            offset: StartOffset::Earliest,
            created_ms: 8,
        }
    }

    async fn seeded() -> SqliteMetaStore {
        let m = SqliteMetaStore::in_memory().await.unwrap();
        m.cluster_id(Some("c1")).await.unwrap();
        let a = m.allocate_shard_ids(2).await.unwrap();
        m.create_stream(&stream("live", 1), &[shard(a, "live")]).await.unwrap();
        m.create_stream(&stream("old", 1), &[shard(a + 1, "old")])
            .await
            .unwrap();
        m.create_subscription(
            &sub("s1", "live"),
            &[ShardProgress {
                shard_id: a,
                next_lsn: 1,
            }],
        )
        .await
        .unwrap();
        m.commit_progress(
            "s1",
            &[ShardProgress {
                shard_id: a,
                next_lsn: 42,
            }],
        )
        .await
        .unwrap();
        m.put_checkpoint(&Checkpoint {
            owner: subscription_checkpoint("s1"),
            version: 1,
            data: vec![1, 2],
        })
        .await
        .unwrap();
        m.create_subscription(&sub("s2", "old"), &[]).await.unwrap();
        m.archive_stream("old", "__deleted_stream__old_1").await.unwrap();
        m.create_reader(&ReaderMeta {
            id: "r".into(),
            stream: "live".into(),
            shard_id: a,
            start_lsn: 3,
            timeout_ms: 10,
            offset_spec: vec![5],
        })
        .await
        .unwrap();
        let c = ConnectorMeta {
            name: "gen".into(),
            kind: "SOURCE".into(),
            target: "generator".into(),
            config: "{\"stream\":\"live\"}".into(),
            status: "RUNNING".into(),
            created_ms: 9,
            node: 1,
        };
        m.create_connector(&c).await.unwrap();
        m.put_checkpoint(&Checkpoint {
            owner: connector_checkpoint("gen"),
            version: 2,
            data: b"{\"n\":17}".to_vec(),
        })
        .await
        .unwrap();
        m.upsert_node(
            &NodeMeta {
                id: 1,
                host: "h".into(),
                port: 6570,
                state: "Dead".into(),
                updated_ms: 10,
            },
            None,
        )
        .await
        .unwrap();
        m
    }

    /// Everything the source holds is in the target after a copy, equal; a second copy (as
    /// after one that stopped half-way) changes nothing; a copy into another cluster's
    /// metadata is refused.
    #[tokio::test]
    async fn a_copy_holds_everything_and_can_run_again() {
        let from = seeded().await;
        let to = SqliteMetaStore::in_memory().await.unwrap();
        let want = Copied {
            streams: 2,
            shards: 2,
            subscriptions: 2,
            readers: 1,
            connectors: 1,
            checkpoints: 2,
            nodes: 1,
        };
        assert_eq!(copy(&from, &to).await.unwrap(), want);
        // A finished copy is not repeated: it would roll back what servers wrote since.
        to.put_checkpoint(&Checkpoint {
            owner: connector_checkpoint("gen"),
            version: 2,
            data: b"{\"n\":99}".to_vec(),
        })
        .await
        .unwrap();
        let err = copy(&from, &to).await.unwrap_err();
        assert!(err.to_string().contains("copied into before"), "{err}");
        assert_eq!(
            to.get_checkpoint(&connector_checkpoint("gen"))
                .await
                .unwrap()
                .unwrap()
                .data,
            b"{\"n\":99}"
        );
        // A copy that stopped before the cluster id runs again to the end.
        let half = SqliteMetaStore::in_memory().await.unwrap();
        half.create_stream(
            &from.get_stream("live").await.unwrap().unwrap(),
            &from.list_shards("live").await.unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(
            copy(&from, &half).await.unwrap(),
            want,
            "a copy completing a half-done one"
        );
        assert_eq!(to.cluster_id(None).await.unwrap().as_deref(), Some("c1"));
        assert_eq!(to.list_streams("").await.unwrap(), from.list_streams("").await.unwrap());
        assert_eq!(
            to.list_archived_streams().await.unwrap(),
            from.list_archived_streams().await.unwrap()
        );
        assert_eq!(
            to.list_shards("live").await.unwrap(),
            from.list_shards("live").await.unwrap()
        );
        assert_eq!(
            to.list_subscriptions("").await.unwrap(),
            from.list_subscriptions("").await.unwrap()
        );
        assert_eq!(
            to.get_progress("s1").await.unwrap(),
            from.get_progress("s1").await.unwrap()
        );
        assert_eq!(to.list_readers().await.unwrap(), from.list_readers().await.unwrap());
        assert_eq!(
            to.list_connectors().await.unwrap(),
            from.list_connectors().await.unwrap()
        );
        for owner in [subscription_checkpoint("s1")] {
            assert_eq!(
                to.get_checkpoint(&owner).await.unwrap(),
                from.get_checkpoint(&owner).await.unwrap()
            );
        }
        assert_eq!(to.list_nodes().await.unwrap(), from.list_nodes().await.unwrap());
        let next = to.allocate_shard_ids(1).await.unwrap();
        assert!(next > to.all_shard_ids().await.unwrap().into_iter().max().unwrap());

        let other = SqliteMetaStore::in_memory().await.unwrap();
        other.cluster_id(Some("c2")).await.unwrap();
        let err = copy(&from, &other).await.unwrap_err();
        assert!(err.to_string().contains("cluster c2"), "{err}");
        let empty = SqliteMetaStore::in_memory().await.unwrap();
        assert!(copy(&empty, &to).await.is_err(), "a source no server started on");
    }
}
