//! A subscription actor driven through its handle over a real store and metastore: its
//! bookkeeping stays bounded however consumers ack.

use std::time::Duration;

use bytes::Bytes;
use hstream_proto as pb;

use super::*;
use crate::meta::{SqliteMetaStore, StartOffset};
use crate::store::{LocalShard, LogStore, ShardLog, StoreOptions};

fn sub(id: &str, max_unacked: i32) -> SubscriptionMeta {
    SubscriptionMeta {
        id: id.into(),
        stream: "s".into(),
        ack_timeout_secs: 3600,
        max_unacked,
        offset: StartOffset::Earliest,
        created_ms: 0,
    }
}

/// One record per batch: the payload is a valid `BatchHStreamRecords` of one empty record.
async fn fill(store: &LogStore, log: &Arc<ShardLog>, n: usize) {
    let one = Bytes::from_static(&[0x0a, 0x00]);
    for _ in 0..n {
        store.append(log, one.clone(), 1, 0).await.unwrap();
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    registry: Registry,
    meta: Arc<dyn MetaStore>,
    log: Arc<ShardLog>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

async fn setup(batches: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), StoreOptions::default()).unwrap();
    let log = store.create_shard(1).unwrap();
    fill(&store, &log, batches).await;
    let meta: Arc<dyn MetaStore> = Arc::new(SqliteMetaStore::in_memory().await.unwrap());
    Setup {
        _dir: dir,
        registry: Registry::default(),
        meta,
        log,
        tasks: TaskTracker::new(),
        shutdown: CancellationToken::new(),
    }
}

impl Setup {
    async fn start(&self, s: SubscriptionMeta) -> Handle {
        self.meta.create_subscription(&s, &[]).await.unwrap();
        self.registry
            .start(
                s,
                self.meta.clone(),
                None,
                vec![Arc::new(LocalShard(self.log.clone()))],
                &self.tasks,
                self.shutdown.clone(),
            )
            .await
            .unwrap()
    }
}

async fn join(h: &Handle, conn: u64) -> mpsc::Receiver<Result<pb::StreamingFetchResponse, tonic::Status>> {
    let (tx, rx) = mpsc::channel(CONSUMER_BUFFER);
    let info = ConsumerInfo {
        name: format!("c{conn}"),
        uri: String::new(),
        user_agent: String::new(),
    };
    h.join(info, conn, vec![], tx, CancellationToken::new()).await.unwrap();
    rx
}

fn id(lsn: u64, index: u32) -> pb::RecordId {
    pb::RecordId {
        shard_id: 1,
        batch_id: lsn,
        batch_index: index,
    }
}

/// Every batch delivered and acked: no ack deadline, no sent entry and no per-batch state is
/// left; one batch never acked in front of them keeps one batch and one range.
#[tokio::test]
async fn acked_batches_leave_no_bookkeeping() {
    let s = setup(1000).await;
    let h = s.start(sub("all", 10_000)).await;
    let mut rx = join(&h, 1).await;
    let mut got = Vec::new();
    while got.len() < 1000 {
        let resp = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.extend(resp.received_records.unwrap().record_ids);
    }
    // The first stays unacked; the others are acked, out of order and twice.
    let mut rest: Vec<_> = got[1..].to_vec();
    rest.reverse();
    h.ack(1, rest.clone()).await;
    h.ack(1, rest).await;
    let f = h.footprint().await.unwrap();
    assert_eq!(f.sent, 1, "{f:?}");
    assert_eq!(f.deadlines, 1, "ack deadlines leave with their batches: {f:?}");
    assert_eq!((f.inflight, f.done_ranges), (1, 1), "{f:?}");
    assert_eq!(h.progress().await.unwrap()[0].next_lsn, 1);
    h.ack(1, vec![got[0]]).await;
    let f = h.footprint().await.unwrap();
    assert_eq!((f.sent, f.deadlines, f.inflight, f.done_ranges), (0, 0, 0, 0), "{f:?}");
    assert_eq!(h.progress().await.unwrap()[0].next_lsn, 1001);
    s.shutdown.cancel();
}

/// Acks for batches not delivered since the actor started are kept for a restarted consumer,
/// but repeats take no room and a flood of made-up ones ends the consumer.
#[tokio::test]
async fn early_acks_are_bounded() {
    let s = setup(3000).await;
    let h = s.start(sub("early", 1)).await;
    let mut rx = join(&h, 1).await;
    // maxUnackedRecords 1: only batch 1 goes out; acks for 2..=3000 are "early".
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.received_records.unwrap().record_ids[0].batch_id, 1);
    for _ in 0..100 {
        h.ack(1, vec![id(500, 0)]).await;
    }
    assert_eq!(h.footprint().await.unwrap().early_acks, 1, "repeats take no room");
    h.ack(1, (2..=2000).map(|l| id(l, 0)).collect()).await;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap() {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("closed without a reason"),
        }
    };
    assert_eq!(end.code(), tonic::Code::InvalidArgument);
    assert!(
        end.message().contains("not delivered since the subscription started"),
        "{}",
        end.message()
    );
    assert!(h.footprint().await.unwrap().early_acks <= 1025);
    s.shutdown.cancel();
}

/// A subscription over many idle shards spends on an append to one of them a few delivery
/// turns, not one per shard, and never reads the idle ones; it commits only the shards whose
/// position moved.
#[tokio::test]
async fn idle_shards_cost_an_append_nothing() {
    const SHARDS: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), StoreOptions::default()).unwrap();
    let logs: Vec<Arc<ShardLog>> = (1..=SHARDS).map(|i| store.create_shard(i).unwrap()).collect();
    let meta: Arc<dyn MetaStore> = Arc::new(SqliteMetaStore::in_memory().await.unwrap());
    let (registry, tasks, shutdown) = (Registry::default(), TaskTracker::new(), CancellationToken::new());
    let s = sub("wide", 100);
    meta.create_subscription(&s, &[]).await.unwrap();
    let h = registry
        .start(
            s,
            meta.clone(),
            None,
            logs.iter()
                .map(|l| Arc::new(LocalShard(l.clone())) as Arc<dyn crate::store::Shard>)
                .collect(),
            &tasks,
            shutdown.clone(),
        )
        .await
        .unwrap();
    let mut rx = join(&h, 1).await;
    // Joining gives every shard one turn; the empty ones leave the queue.
    let joined = h.footprint().await.unwrap();
    assert!(joined.turns <= SHARDS, "{joined:?}");
    let busy = &logs[200];
    const APPENDS: u64 = 100;
    for _ in 0..APPENDS {
        fill(&store, busy, 1).await;
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("delivered")
            .unwrap()
            .unwrap();
        let ids = got.received_records.unwrap().record_ids;
        h.ack(1, ids).await;
    }
    let f = h.footprint().await.unwrap();
    let per_append = (f.turns - joined.turns) as f64 / APPENDS as f64;
    assert!(per_append <= 4.0, "{per_append} turns per append: {f:?}");
    assert!(f.active <= 1, "{f:?}");
    let idle_reads: u64 = logs.iter().filter(|l| l.id != busy.id).map(|l| l.reads()).sum();
    assert_eq!(idle_reads, 0);
    // The commits (on the tick, and the final one at shutdown) write the one shard that moved.
    shutdown.cancel();
    tasks.close();
    tokio::time::timeout(Duration::from_secs(10), tasks.wait())
        .await
        .expect("the actor commits and ends");
    let progress = meta.get_progress("wide").await.unwrap();
    assert_eq!(progress.len(), 1, "{progress:?}");
    assert_eq!((progress[0].shard_id, progress[0].next_lsn), (busy.id, APPENDS + 1));
}

/// A shard that got data while another shard's backlog keeps the consumer (and its acks) busy
/// is delivered within a few turns, not after the backlog: delivery takes the shards that got
/// data at every round, not only when the actor finds nothing else to do.
#[tokio::test]
async fn a_busy_shard_does_not_starve_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), StoreOptions::default()).unwrap();
    let busy = store.create_shard(1).unwrap();
    let late = store.create_shard(2).unwrap();
    fill(&store, &busy, 3000).await;
    let meta: Arc<dyn MetaStore> = Arc::new(SqliteMetaStore::in_memory().await.unwrap());
    let (registry, tasks, shutdown) = (Registry::default(), TaskTracker::new(), CancellationToken::new());
    let s = sub("two", 100);
    meta.create_subscription(&s, &[]).await.unwrap();
    let shards = [&busy, &late]
        .iter()
        .map(|l| Arc::new(LocalShard((*l).clone())) as Arc<dyn crate::store::Shard>)
        .collect();
    let h = registry
        .start(s, meta.clone(), None, shards, &tasks, shutdown.clone())
        .await
        .unwrap();
    let mut rx = join(&h, 1).await;
    let mut received = 0;
    loop {
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("delivered")
            .unwrap()
            .unwrap();
        received += 1;
        let ids = got.received_records.unwrap().record_ids;
        if ids[0].shard_id == 2 {
            break;
        }
        if received == 1 {
            fill(&store, &late, 1).await;
        }
        h.ack(1, ids).await;
        assert!(received < 300, "shard 2 waited behind {received} batches of shard 1");
    }
    shutdown.cancel();
}
