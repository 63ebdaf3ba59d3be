//! Service behaviour that needs state the public RPCs cannot create (subscriptions written to
//! the MetaStore directly), exercised through the gRPC service over real services, store and
//! metastore.

use super::*;
use crate::cluster::assign::{Assignments, Hosted};
use crate::meta::{MetaStore, SqliteMetaStore, StartOffset, SubscriptionMeta};
use crate::store::StoreOptions;

/// The gRPC service over real services, with the handles the tests look through.
struct Ctx {
    svc: HStreamService,
    meta: Arc<dyn MetaStore>,
    shutdown: CancellationToken,
}

impl Ctx {
    fn catalog(&self) -> &crate::catalog::Catalog {
        self.svc.api.streams.catalog()
    }
    async fn create_stream(&self, req: pb::Stream) -> ApiResult<pb::Stream> {
        self.svc.create_stream_rpc(req).await
    }
    async fn delete_stream(&self, req: pb::DeleteStreamRequest) -> ApiResult<()> {
        self.svc.delete_stream_rpc(req).await
    }
    async fn append(&self, req: pb::AppendRequest) -> ApiResult<pb::AppendResponse> {
        self.svc.append_rpc(req).await
    }
    fn list_streams(&self, prefix: &str) -> pb::ListStreamsResponse {
        self.svc.list_streams_rpc(prefix)
    }
}

async fn ctx(dir: &std::path::Path) -> Arc<Ctx> {
    let meta: Arc<dyn MetaStore> = Arc::new(SqliteMetaStore::in_memory().await.unwrap());
    let store = Arc::new(crate::store::LocalStore(
        crate::store::LogStore::open(dir, StoreOptions::default()).unwrap(),
    ));
    let node = NodeInfo {
        id: 1,
        host: "127.0.0.1".into(),
        // Not bound: the tests drive the service directly.
        port: 0,
    };
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut registry = prometheus_client::registry::Registry::default();
    let streams = Arc::new(Streams::new(
        meta.clone(),
        store,
        crate::catalog::Catalog::default(),
        crate::batch::Limits::default(),
        1,
        crate::metrics::StreamMetrics::register(&mut registry),
    ));
    let assignments = Arc::new(Assignments::new(meta.clone(), node.id, "127.0.0.1:0".into(), None, 25));
    let connectors = Arc::new(Connectors::new(
        hstream_connectors::registry(),
        streams.clone(),
        meta.clone(),
        crate::connectors::Hosting {
            node_id: node.id,
            node_address: "127.0.0.1:0".into(),
            backoff: (std::time::Duration::from_millis(100), std::time::Duration::from_secs(1)),
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
        },
        assignments.clone(),
    ));
    let subscriptions = Arc::new(Subscriptions::new(
        meta.clone(),
        streams.clone(),
        assignments.clone(),
        tasks.clone(),
        shutdown.clone(),
    ));
    assignments.add(Arc::downgrade(&subscriptions) as std::sync::Weak<dyn Hosted>);
    assignments.add(Arc::downgrade(&connectors) as std::sync::Weak<dyn Hosted>);
    let api = Arc::new(Api {
        node,
        started: Instant::now(),
        subscriptions,
        readers: Arc::new(Readers::new(meta.clone(), streams.clone(), shutdown.clone())),
        queries: Arc::new(crate::connectors::queries::Queries::new(
            connectors.clone(),
            streams.clone(),
        )),
        streams,
        connectors,
        metrics: Arc::new(Metrics::new(registry)),
        shutdown: shutdown.clone(),
        tasks,
        membership: None,
        assignments,
    });
    Arc::new(Ctx {
        svc: HStreamService::new(api),
        meta,
        shutdown,
    })
}

/// Where the local store keeps a shard's files.
fn shard_dir(root: &std::path::Path, id: u64) -> std::path::PathBuf {
    root.join("shards").join(id.to_string())
}

fn stream(name: &str) -> pb::Stream {
    pb::Stream {
        stream_name: name.into(),
        replication_factor: 1,
        backlog_duration: 0,
        shard_count: 2,
        creation_time: None,
    }
}

fn del(name: &str, force: bool) -> pb::DeleteStreamRequest {
    pb::DeleteStreamRequest {
        stream_name: name.into(),
        ignore_non_exist: false,
        force,
    }
}

#[tokio::test]
async fn delete_with_subscriptions_needs_force_and_then_archives() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path()).await;
    ctx.create_stream(stream("s")).await.unwrap();
    let shard = ctx.catalog().stream("s").unwrap().shards[0].clone();
    let rec = one_record();
    ctx.append(pb::AppendRequest {
        stream_name: "s".into(),
        shard_id: shard.meta.id,
        records: Some(rec),
    })
    .await
    .unwrap();
    ctx.meta
        .create_subscription(
            &SubscriptionMeta {
                id: "sub".into(),
                stream: "s".into(),
                ack_timeout_secs: 60,
                max_unacked: 100,
                offset: StartOffset::Earliest,
                created_ms: 0,
            },
            &[],
        )
        .await
        .unwrap();

    let err = ctx.delete_stream(del("s", false)).await.unwrap_err();
    assert!(matches!(err, ApiError::StreamHasSubscriptions(_)), "{err}");
    assert!(ctx.catalog().stream("s").is_ok(), "nothing changed");

    ctx.delete_stream(del("s", true)).await.unwrap();
    assert!(matches!(ctx.catalog().stream("s"), Err(ApiError::StreamNotFound(_))));
    assert!(
        ctx.list_streams("").streams.is_empty(),
        "archived streams are not listed"
    );
    // The subscription now points at the archived stream, whose data is kept for it.
    let sub = ctx.meta.get_subscription("sub").await.unwrap().unwrap();
    assert!(sub.stream.starts_with(crate::catalog::ARCHIVED_PREFIX));
    let archived = ctx.catalog().any_stream(&sub.stream).unwrap();
    assert!(archived.meta.archived);
    assert_eq!(archived.shards[0].log.read(1, 10, usize::MAX).await.unwrap().len(), 1);
    assert!(shard_dir(dir.path(), shard.meta.id).exists());
    // The name is free for a new stream.
    ctx.create_stream(stream("s")).await.unwrap();
}

#[tokio::test]
async fn delete_without_subscriptions_removes_files() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path()).await;
    ctx.create_stream(stream("gone")).await.unwrap();
    let dirs: Vec<_> = ctx
        .catalog()
        .stream("gone")
        .unwrap()
        .shards
        .iter()
        .map(|s| shard_dir(dir.path(), s.meta.id))
        .collect();
    assert!(dirs.iter().all(|d| d.exists()));
    ctx.delete_stream(del("gone", false)).await.unwrap();
    assert!(dirs.iter().all(|d| !d.exists()));
    assert!(ctx.meta.list_shards("gone").await.unwrap().is_empty());
    ctx.delete_stream(pb::DeleteStreamRequest {
        ignore_non_exist: true,
        ..del("gone", false)
    })
    .await
    .unwrap();
}

fn one_record() -> pb::BatchedRecord {
    pb::BatchedRecord {
        compression_type: 0,
        publish_time: None,
        batch_size: 1,
        payload: prost::Message::encode_to_vec(&pb::BatchHStreamRecords {
            records: vec![pb::HStreamRecord {
                header: None,
                payload: bytes::Bytes::from_static(b"x"),
            }],
        })
        .into(),
    }
}

async fn filled(ctx: &Ctx, name: &str, n: usize) -> crate::catalog::ShardEntry {
    ctx.create_stream(pb::Stream {
        shard_count: 1,
        ..stream(name)
    })
    .await
    .unwrap();
    let shard = ctx.catalog().stream(name).unwrap().shards[0].clone();
    for _ in 0..n {
        let req = pb::AppendRequest {
            stream_name: name.into(),
            shard_id: shard.meta.id,
            records: Some(one_record()),
        };
        ctx.append(req).await.unwrap();
    }
    shard
}

#[tokio::test]
async fn read_bounded_below_the_trim_point_ends_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path()).await;
    let shard = filled(&ctx, "t", 10).await;
    shard.log.trim(6).await.unwrap();
    let mut c = read::ShardCursor::new(shard, 2, read::Until::Lsn(4));
    assert!(c.read_chunk(100, 1 << 20).await.unwrap().is_empty());
    assert!(c.done, "nothing left below the bound");
}

#[tokio::test]
async fn read_bounded_by_a_future_time_ends_when_it_passes() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path()).await;
    let shard = filled(&ctx, "f", 3).await;
    let until = read::Until::Timestamp(read::now_ms() + 300);
    let cursor = read::ShardCursor::new(shard, 1, until);
    let (tx, mut rx) = mpsc::channel(4);
    let pumped = tokio::spawn(read::pump(ctx.shutdown.clone(), vec![cursor], 0, tx, |r| r));
    let mut got = 0;
    while let Some(msg) = rx.recv().await {
        got += msg.unwrap().len();
    }
    tokio::time::timeout(std::time::Duration::from_secs(10), pumped)
        .await
        .expect("pump ends")
        .unwrap();
    assert_eq!(got, 3);
}

#[tokio::test]
async fn tailing_read_of_a_deleted_stream_ends_with_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path()).await;
    let shard = filled(&ctx, "d", 1).await;
    let cursor = read::ShardCursor::new(shard, 1, read::Until::Forever);
    let (tx, mut rx) = mpsc::channel(4);
    let pumped = tokio::spawn(read::pump(ctx.shutdown.clone(), vec![cursor], 0, tx, |r| r));
    assert_eq!(rx.recv().await.unwrap().unwrap().len(), 1);
    ctx.delete_stream(del("d", false)).await.unwrap();
    let end = rx.recv().await.expect("an error, then the end").unwrap_err();
    assert_eq!(end.code(), tonic::Code::NotFound);
    tokio::time::timeout(std::time::Duration::from_secs(10), pumped)
        .await
        .expect("pump ends")
        .unwrap();
}

#[tokio::test]
async fn pump_stops_on_shutdown_even_if_the_client_stops_reading() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path()).await;
    let a = filled(&ctx, "s", 5).await;
    let b = filled(&ctx, "s2", 5).await;
    let cursors = vec![
        read::ShardCursor::new(a, 1, read::Until::Forever),
        read::ShardCursor::new(b, 1, read::Until::Forever),
    ];
    // A channel of one that nobody drains: the pump blocks sending the second shard's batches.
    let (tx, _rx) = mpsc::channel(1);
    let pumped = tokio::spawn(read::pump(ctx.shutdown.clone(), cursors, 0, tx.clone(), |r| r));
    // Wait until the channel is full, i.e. the pump is parked on its second send.
    while tx.capacity() > 0 {
        tokio::task::yield_now().await;
    }
    assert!(!pumped.is_finished());
    ctx.shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(10), pumped)
        .await
        .expect("pump ends")
        .unwrap();
}

/// A tailing read over many idle shards reads only the shard that got data: after the first
/// pass, appends to one shard cost the idle ones no read.
#[tokio::test]
async fn tailing_read_touches_only_shards_that_got_data() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path()).await;
    ctx.create_stream(pb::Stream {
        shard_count: 300,
        ..stream("wide")
    })
    .await
    .unwrap();
    let shards = ctx.catalog().stream("wide").unwrap().shards.clone();
    let cursors = shards
        .iter()
        .map(|s| read::ShardCursor::new(s.clone(), 1, read::Until::Forever))
        .collect();
    let (tx, mut rx) = mpsc::channel(4);
    let pumped = tokio::spawn(read::pump(ctx.shutdown.clone(), cursors, 0, tx, |r| r));
    // The first pass reads every shard once and finds nothing.
    while shards.iter().any(|s| s.log.reads() == 0) {
        tokio::task::yield_now().await;
    }
    let idle_reads = |busy: u64| -> u64 { shards.iter().filter(|s| s.meta.id != busy).map(|s| s.log.reads()).sum() };
    let before = idle_reads(shards[150].meta.id);
    assert_eq!(before, 299);
    for _ in 0..50 {
        ctx.append(pb::AppendRequest {
            stream_name: "wide".into(),
            shard_id: shards[150].meta.id,
            records: Some(one_record()),
        })
        .await
        .unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("the append is read")
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 1);
    }
    assert_eq!(idle_reads(shards[150].meta.id), before, "idle shards were read again");
    assert!(shards[150].log.reads() <= 1 + 2 * 50, "{}", shards[150].log.reads());
    ctx.shutdown.cancel();
    pumped.await.unwrap();
}

/// A reader's cursor is trusted while the membership view it was opened under holds; under a
/// newer view (the ring may have sent its clients to another node meanwhile) it is checked
/// against the MetaStore: deleted there, it is gone here too; re-created with another start,
/// it is read from that start.
#[tokio::test]
async fn a_reader_kept_from_an_older_view_is_checked_again() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path()).await;
    ctx.create_stream(stream("r")).await.unwrap();
    let shard = ctx.catalog().stream("r").unwrap().shards[0].meta.id;
    for _ in 0..3 {
        ctx.append(pb::AppendRequest {
            stream_name: "r".into(),
            shard_id: shard,
            records: Some(one_record()),
        })
        .await
        .unwrap();
    }
    let readers = &ctx.svc.api.readers;
    let spec = crate::readers::ReaderSpec {
        id: "rd".into(),
        stream: "r".into(),
        shard_id: shard,
        from: crate::streams::From::Earliest,
        timeout_ms: 0,
        offset_spec: Vec::new(),
    };
    readers.create(spec.clone(), 0).await.unwrap();
    let lsns = |b: &[crate::store::StoredBatch]| b.iter().map(|b| b.lsn).collect::<Vec<_>>();
    let (_, first) = readers.read("rd", 1, usize::MAX, 0).await.unwrap();
    assert_eq!(lsns(&first), [1]);

    // Deleted through another node: this node's view has not changed, its cursor stands…
    ctx.meta.delete_reader("rd").await.unwrap();
    assert_eq!(lsns(&readers.read("rd", 1, usize::MAX, 0).await.unwrap().1), [2]);
    // …until it has: then the reader is gone here too.
    let gone = readers.read("rd", 1, usize::MAX, 1).await.unwrap_err();
    assert!(matches!(gone, ApiError::ReaderNotFound(_)), "{gone}");

    // Re-created through another node, from the third batch: read from there under a newer
    // view, not from the old cursor (here at the second).
    readers.create(spec, 1).await.unwrap();
    assert_eq!(lsns(&readers.read("rd", 1, usize::MAX, 1).await.unwrap().1), [1]);
    let mut elsewhere = ctx.meta.get_reader("rd").await.unwrap().unwrap();
    ctx.meta.delete_reader("rd").await.unwrap();
    elsewhere.start_lsn = 3;
    ctx.meta.create_reader(&elsewhere).await.unwrap();
    assert_eq!(lsns(&readers.read("rd", 1, usize::MAX, 2).await.unwrap().1), [3]);
}
