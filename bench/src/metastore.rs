//! MetaStore operations per second, the embedded SQLite (a file in a temporary directory,
//! `synchronous=FULL`) beside etcd (one throw-away member on the same disk, Debian's
//! `etcd-server`), in one run, through the `MetaStore` trait the server calls.
//!
//! Each operation is what a hot path does: create a one-shard stream, commit the progress of a
//! subscription's every shard (one transaction per tick), store a connector checkpoint. Callers
//! are sequential (`concurrency` 1) or concurrent, as several subscriptions and tasks are.
//! Printed: operations/s and mean latency of each, and etcd's rate as a ratio of SQLite's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hstream_server::meta::{
    Checkpoint, EtcdMetaStore, MetaStore, ShardMeta, ShardProgress, SqliteMetaStore, StartOffset, StreamMeta,
    SubscriptionMeta,
};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Operations of each kind per store.
    #[arg(long, default_value_t = 400)]
    ops: usize,
    /// Concurrent callers.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Shards of the subscription whose progress is committed.
    #[arg(long, default_value_t = 64)]
    shards: u64,
}

impl Args {
    pub fn default_args() -> Args {
        Args {
            ops: 400,
            concurrency: 4,
            shards: 64,
        }
    }
}

/// Runs `op(i)` for i in 0..n over `concurrency` callers; returns the elapsed time.
async fn timed<F, Fut>(n: usize, concurrency: usize, op: F) -> anyhow::Result<Duration>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let mut callers = Vec::new();
    for c in 0..concurrency {
        let op = op.clone();
        callers.push(tokio::spawn(async move {
            let mut i = c;
            while i < n {
                op(i).await?;
                i += concurrency;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for c in callers {
        c.await??;
    }
    Ok(started.elapsed())
}

struct Rates {
    create_stream: f64,
    commit_progress: f64,
    checkpoint: f64,
}

async fn measure(store: Arc<dyn MetaStore>, a: &Args, concurrency: usize) -> anyhow::Result<Rates> {
    let n = a.ops;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let s = store.clone();
    let tag = format!("c{concurrency}");
    let t = tag.clone();
    let create = timed(n, concurrency, move |i| {
        let (s, t) = (s.clone(), t.clone());
        async move {
            let id = s.allocate_shard_ids(1).await?;
            let name = format!("{t}s{i}");
            let meta = StreamMeta {
                name: name.clone(),
                replication_factor: 1,
                backlog_secs: 0,
                shard_count: 1,
                created_ms: 1,
                archived: false,
            };
            let shard = ShardMeta {
                id,
                stream: name,
                start_key: 0,
                end_key: u128::MAX,
                epoch: 1,
            };
            s.create_stream(&meta, &[shard]).await?;
            Ok(())
        }
    })
    .await?;
    let first = store.allocate_shard_ids(a.shards as u32).await?;
    let sub = format!("{tag}sub");
    store
        .create_subscription(
            &SubscriptionMeta {
                id: sub.clone(),
                stream: format!("{tag}s0"),
                ack_timeout_secs: 60,
                max_unacked: 100,
                offset: StartOffset::Earliest,
                created_ms: 1,
            },
            &[],
        )
        .await?;
    let (s, shards) = (store.clone(), a.shards);
    let commit = timed(n, concurrency, move |i| {
        let (s, sub) = (s.clone(), sub.clone());
        async move {
            let moved: Vec<ShardProgress> = (0..shards)
                .map(|k| ShardProgress {
                    shard_id: first + k,
                    next_lsn: i as u64 + 2,
                })
                .collect();
            s.commit_progress(&sub, &moved).await?;
            Ok(())
        }
    })
    .await?;
    let s = store.clone();
    let checkpoint = timed(n, concurrency, move |i| {
        let (s, t) = (s.clone(), tag.clone());
        async move {
            let cp = Checkpoint {
                owner: format!("connector/{t}task{}", i % 8),
                version: 1,
                data: format!("{{\"lsn\":{i}}}").into_bytes(),
            };
            s.put_checkpoint(&cp).await?;
            Ok(())
        }
    })
    .await?;
    Ok(Rates {
        create_stream: rate(create),
        commit_progress: rate(commit),
        checkpoint: rate(checkpoint),
    })
}

/// Stores per second of `tasks` connector tasks checkpointing at once: each straight to the
/// metastore, then through the node's group-commit writer (`MetaCheckpoints`).
async fn measure_tasks(store: Arc<dyn MetaStore>, n: usize, tasks: usize) -> anyhow::Result<(f64, f64)> {
    use hstream_runtime::Checkpoints;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let s = store.clone();
    let direct = timed(n, tasks, move |i| {
        let s = s.clone();
        async move {
            let cp = Checkpoint {
                owner: format!("connector/direct{}", i % tasks),
                version: 1,
                data: format!("{{\"lsn\":{i}}}").into_bytes(),
            };
            s.put_checkpoint(&cp).await?;
            Ok(())
        }
    })
    .await?;
    let writer = Arc::new(hstream_server::connectors::MetaCheckpoints::new(store));
    let batched = timed(n, tasks, move |i| {
        let w = writer.clone();
        async move {
            w.store(
                &format!("grouped{}", i % tasks),
                1,
                format!("{{\"lsn\":{i}}}").into_bytes(),
            )
            .await?;
            Ok(())
        }
    })
    .await?;
    Ok((rate(direct), rate(batched)))
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sqlite: Arc<dyn MetaStore> = Arc::new(SqliteMetaStore::open(&dir.path().join("meta.db")).await?);
    let etcd = hstream_integration_tests::etcd::Etcd::start().await;
    let remote: Arc<dyn MetaStore> = Arc::new(EtcdMetaStore::connect(&etcd.uri("bench"), &Default::default()).await?);
    println!(
        "metastore: {} operations of each kind, SQLite (file, synchronous=FULL) beside etcd (1 member), same disk",
        a.ops
    );
    for concurrency in [1, a.concurrency] {
        let q = measure(sqlite.clone(), &a, concurrency).await?;
        let e = measure(remote.clone(), &a, concurrency).await?;
        println!("  {concurrency} caller(s):");
        for (what, q, e) in [
            ("create stream (1 shard)", q.create_stream, e.create_stream),
            ("commit progress (all shards)", q.commit_progress, e.commit_progress),
            ("connector checkpoint", q.checkpoint, e.checkpoint),
        ] {
            println!(
                "    {what:<30} SQLite {q:>8.0}/s ({:>6.2} ms)   etcd {e:>8.0}/s ({:>6.2} ms)   etcd/SQLite {:.2}x",
                1000.0 * concurrency as f64 / q,
                1000.0 * concurrency as f64 / e,
                e / q
            );
        }
    }
    let tasks = 100;
    let (qd, qb) = measure_tasks(sqlite.clone(), a.ops, tasks).await?;
    let (ed, eb) = measure_tasks(remote.clone(), a.ops, tasks).await?;
    println!("  {tasks} connector tasks checkpointing at once:");
    for (what, q, e) in [
        ("each its own transaction", qd, ed),
        ("node's group-commit writer", qb, eb),
    ] {
        println!(
            "    {what:<30} SQLite {q:>8.0}/s   etcd {e:>8.0}/s   etcd/SQLite {:.2}x",
            e / q
        );
    }
    println!("    writer/direct: SQLite {:.2}x, etcd {:.2}x", qb / qd, eb / ed);
    println!("  (commit progress: {} shards per commit, one transaction)", a.shards);
    Ok(())
}
