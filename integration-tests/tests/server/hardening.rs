//! What a hostile client, a crash or an operator's bad day does to one server: it is refused or
//! survived without losing a record or the node.

use std::time::Duration;

use hstream_integration_tests::*;
use hstream_proto as pb;
use prost::Message;
use tonic::Code;

const MIB: u64 = 1 << 20;

fn append_req(stream: &str, shard: u64, compression: pb::CompressionType, raw: &[u8], n: u32) -> pb::AppendRequest {
    pb::AppendRequest {
        stream_name: stream.into(),
        shard_id: shard,
        records: Some(pb::BatchedRecord {
            compression_type: compression as i32,
            publish_time: None,
            batch_size: n,
            payload: compress_hard(raw, compression).into(),
        }),
    }
}

fn compress_hard(raw: &[u8], compression: pb::CompressionType) -> Vec<u8> {
    match compression {
        pb::CompressionType::Zstd => zstd::encode_all(raw, 19).expect("zstd"),
        other => compress(raw, other),
    }
}

/// A few KB of compressed request must not cost the server more than a few MB, whether it is
/// refused (tens of millions of empty records, claimed honestly or not) or accepted (one record
/// whose payload decompresses to 60 MiB; the most records a batch may hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_hostile_appends_cost_little_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut client = server.client().await;
    let shard = make_stream(&mut client, "bombs", 1).await[0];

    // 33.5M empty records: the measured attack (64 MiB of decoded payload, 5.6 KB of zstd).
    let empties = [0x0a, 0x00].repeat(32 << 20);
    let n_empties = (32u32) << 20;
    let big = pb::BatchHStreamRecords {
        records: vec![pb::HStreamRecord {
            header: None,
            payload: vec![0u8; 60 << 20].into(),
        }],
    }
    .encode_to_vec();
    let at_limit = [0x0a, 0x00].repeat(100_000);

    // Warm the request path once so that the measurement sees only what the bombs cost.
    client
        .append(append_req(
            "bombs",
            shard,
            pb::CompressionType::Zstd,
            &at_limit[..20],
            10,
        ))
        .await
        .unwrap();
    let refused = [
        (pb::CompressionType::Zstd, n_empties, "max-batch-records"),
        (pb::CompressionType::Zstd, 100, "holds more than 100 records"),
        (pb::CompressionType::Gzip, 100_000, "holds more than 100000 records"),
    ];
    // gzip cannot shrink more than ~1000:1, so its bomb holds fewer (200,000) records.
    let gzip_empties = [0x0a, 0x00].repeat(200_000);
    let requests: Vec<_> = refused
        .iter()
        .map(|(c, n, _)| {
            let raw = if *c == pb::CompressionType::Gzip {
                &gzip_empties
            } else {
                &empties
            };
            append_req("bombs", shard, *c, raw, *n)
        })
        .collect();
    let big_req = append_req("bombs", shard, pb::CompressionType::Zstd, &big, 1);
    let limit_req = append_req("bombs", shard, pb::CompressionType::Zstd, &at_limit, 100_000);
    drop((empties, big));
    for r in requests.iter().chain([&big_req, &limit_req]) {
        let size = r.records.as_ref().unwrap().payload.len();
        assert!(size < 64 << 10, "request of {size} bytes is not small");
    }

    let before = server.rss_bytes();
    server.reset_peak_rss();
    for (req, (_, _, words)) in requests.into_iter().zip(refused) {
        let e = client.append(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(words), "{}", e.message());
    }
    let refused_peak = server.peak_rss_bytes().saturating_sub(before);
    let ok = client.append(big_req).await.unwrap().into_inner();
    assert_eq!(ok.record_ids.len(), 1);
    let big_peak = server.peak_rss_bytes().saturating_sub(before);
    let ok = client.append(limit_req).await.unwrap().into_inner();
    assert_eq!(ok.record_ids.len(), 100_000);
    let peak = server.peak_rss_bytes().saturating_sub(before);
    eprintln!(
        "peak RSS over the idle server: {:.1} MiB for the refused bombs, {:.1} MiB after the 60 MiB record, {:.1} MiB after the 100,000 records too",
        refused_peak as f64 / MIB as f64,
        big_peak as f64 / MIB as f64,
        peak as f64 / MIB as f64
    );
    assert!(
        refused_peak < 4 * MIB,
        "refused bombs raised RSS by {refused_peak} bytes"
    );
    assert!(peak < 16 * MIB, "small requests raised RSS by {peak} bytes");

    // Reading the shard back costs what is stored (a few KB a batch), not what it expands to.
    server.reset_peak_rss();
    let before = server.rss_bytes();
    let batches = read_shard_to_tail(&mut client, "bombs", shard).await;
    assert_eq!(batches.len(), 3);
    let read_peak = server.peak_rss_bytes().saturating_sub(before);
    assert!(read_peak < 8 * MIB, "reading raised RSS by {read_peak} bytes");
    tokio::time::timeout(
        Duration::from_secs(5),
        client.list_streams(pb::ListStreamsRequest::default()),
    )
    .await
    .expect("server still answers")
    .unwrap();
}

/// Runs the server binary over `data_dir` expecting it to refuse to start; returns what it
/// printed on stderr.
pub(crate) fn refused_start(data_dir: &std::path::Path, extra: &[&str]) -> String {
    let mut child = std::process::Command::new(workspace_bin("hstream-server"))
        .args(["--port", "0", "--http-port", "0", "--bind-address", "127.0.0.1"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn hstream-server");
    let exited = holds_within_blocking(Duration::from_secs(30), || child.try_wait().expect("wait").is_some());
    if !exited {
        let _ = child.kill();
        panic!("the server started where it must refuse to");
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "refusal must exit non-zero");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file under `dir` (recursively) with its bytes.
fn tree(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.insert(
                    e.path().strip_prefix(dir).unwrap().to_owned(),
                    std::fs::read(e.path()).unwrap(),
                );
            }
        }
    }
    out
}

pub(crate) async fn append_one(
    client: &mut Client,
    stream: &str,
    shard: u64,
    payload: &str,
) -> Result<u64, tonic::Status> {
    client
        .append(pb::AppendRequest {
            stream_name: stream.into(),
            shard_id: shard,
            records: Some(batch("k", &[payload.as_bytes().to_vec()], pb::CompressionType::None)),
        })
        .await
        .map(|r| r.into_inner().record_ids[0].batch_id)
}

pub(crate) fn payload_strings(batches: &[pb::ReceivedRecord]) -> Vec<String> {
    batches
        .iter()
        .flat_map(decode)
        .map(|(_, _, p)| String::from_utf8(p).unwrap())
        .collect()
}

/// A data directory started against a missing, new or foreign metastore, unknown shard
/// directories, a missing shard directory and a damaged segment header: the node refuses to
/// start, or serves the healthy shards and answers DATA_LOSS for the damaged one, and never
/// deletes, truncates or recreates a byte of shard data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directory_is_tied_to_its_metastore_and_never_wiped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start(&data, &[]);
    let mut client = server.client().await;
    let a = make_stream(&mut client, "a", 1).await[0];
    let b = make_stream(&mut client, "b", 1).await[0];
    for i in 0..3 {
        append_one(&mut client, "a", a, &format!("a{i}")).await.unwrap();
        append_one(&mut client, "b", b, &format!("b{i}")).await.unwrap();
    }
    server.terminate();
    let shards = data.join("shards");
    let cluster_id = std::fs::read_to_string(data.join("cluster-id")).unwrap();
    let stored = tree(&shards);

    // A mistyped metastore URI: a new, empty metastore.
    let err = refused_start(
        &data,
        &[
            "--metastore-uri",
            &format!("sqlite://{}", tmp.path().join("typo.db").display()),
        ],
    );
    assert!(
        err.contains("has no cluster id") && err.contains(&data.display().to_string()),
        "{err}"
    );
    // A missing metastore file.
    let aside = tmp.path().join("meta-aside");
    std::fs::create_dir(&aside).unwrap();
    for e in std::fs::read_dir(&data).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("meta.db") {
            std::fs::rename(e.path(), aside.join(e.file_name())).unwrap();
        }
    }
    let err = refused_start(&data, &[]);
    assert!(err.contains("has no cluster id"), "{err}");
    // Another cluster's metastore.
    let other = tmp.path().join("other");
    drop(Server::start(&other, &[]));
    let err = refused_start(
        &data,
        &[
            "--metastore-uri",
            &format!("sqlite://{}", other.join("meta.db").display()),
        ],
    );
    assert!(
        err.contains("belongs to cluster") && err.contains(cluster_id.trim()),
        "{err}"
    );
    // A new data directory beside the metastore that lists the shards.
    for e in std::fs::read_dir(&aside).unwrap().flatten() {
        std::fs::rename(e.path(), data.join(e.file_name())).unwrap();
    }
    let err = refused_start(
        &tmp.path().join("new-data"),
        &[
            "--metastore-uri",
            &format!("sqlite://{}", data.join("meta.db").display()),
        ],
    );
    assert!(err.contains("lists 2 shard(s)") && err.contains("new-data"), "{err}");
    assert_eq!(tree(&shards), stored, "refusals changed nothing");

    // The first start of this directory stopped after tying the metastore, before tying the
    // directory (its cluster-id file is missing): every shard on disk is the metastore's, so it
    // is adopted.
    std::fs::remove_file(data.join("cluster-id")).unwrap();
    drop(Server::start(&data, &[]));
    assert_eq!(std::fs::read_to_string(data.join("cluster-id")).unwrap(), cluster_id);

    // A shard directory the metastore never handed out: refused, then quarantined on request.
    let stray = shards.join("999999");
    std::fs::create_dir(&stray).unwrap();
    for (name, bytes) in tree(&shards.join(b.to_string())) {
        std::fs::write(stray.join(name), bytes).unwrap();
    }
    let err = refused_start(&data, &[]);
    assert!(
        err.contains("999999") && err.contains("--quarantine-unknown-shards"),
        "{err}"
    );
    assert!(stray.exists());
    let server = Server::start(&data, &["--quarantine-unknown-shards"]);
    assert!(!stray.exists() && data.join("quarantine/999999").is_dir());
    let mut client = server.client().await;
    assert_eq!(
        payload_strings(&read_shard_to_tail(&mut client, "a", a).await),
        ["a0", "a1", "a2"]
    );
    assert_eq!(
        payload_strings(&read_shard_to_tail(&mut client, "b", b).await),
        ["b0", "b1", "b2"]
    );
    drop(client);
    drop(server);

    // A's shard directory goes missing: the node serves b, answers DATA_LOSS for a, and does
    // not recreate a's directory (its LSNs would start again at 1).
    let a_dir = shards.join(a.to_string());
    let a_aside = tmp.path().join("a-aside");
    std::fs::rename(&a_dir, &a_aside).unwrap();
    let server = Server::start(&data, &[]);
    let mut client = server.client().await;
    let e = append_one(&mut client, "a", a, "lost").await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert!(e.message().contains("missing"), "{}", e.message());
    let e = client
        .get_tail_record_id(pb::GetTailRecordIdRequest {
            stream_name: "a".into(),
            shard_id: a,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DataLoss);
    assert_eq!(append_one(&mut client, "b", b, "b3").await.unwrap(), 4);
    assert!(!a_dir.exists(), "a missing shard directory is not recreated");
    drop(client);
    drop(server);

    // Back, but with a damaged header on its last segment: kept as it is, DATA_LOSS, b served.
    std::fs::rename(&a_aside, &a_dir).unwrap();
    let seg = std::fs::read_dir(&a_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .unwrap();
    let good = std::fs::read(&seg).unwrap();
    let mut bad = good.clone();
    bad[0] ^= 0xff;
    std::fs::write(&seg, &bad).unwrap();
    let a_files = tree(&a_dir);
    let server = Server::start(&data, &[]);
    let mut client = server.client().await;
    let mut read = client
        .read_shard_stream(pb::ReadShardStreamRequest {
            reader_id: String::new(),
            shard_id: a,
            from: Some(earliest()),
            max_read_batches: 0,
            until: Some(latest()),
            stream_name: "a".into(),
        })
        .await;
    let e = match &mut read {
        Err(e) => e.clone(),
        Ok(s) => s.get_mut().message().await.unwrap_err(),
    };
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert!(e.message().contains("bad header"), "{}", e.message());
    assert_eq!(
        append_one(&mut client, "a", a, "no").await.unwrap_err().code(),
        Code::DataLoss
    );
    assert_eq!(append_one(&mut client, "b", b, "b4").await.unwrap(), 5);
    drop(client);
    drop(server);
    assert_eq!(tree(&a_dir), a_files, "the damaged shard's files are untouched");

    // Repaired by the operator: everything is there.
    std::fs::write(&seg, &good).unwrap();
    let server = Server::start(&data, &[]);
    let mut client = server.client().await;
    assert_eq!(
        payload_strings(&read_shard_to_tail(&mut client, "a", a).await),
        ["a0", "a1", "a2"]
    );
    assert_eq!(
        payload_strings(&read_shard_to_tail(&mut client, "b", b).await),
        ["b0", "b1", "b2", "b3", "b4"]
    );
    assert_eq!(append_one(&mut client, "a", a, "a3").await.unwrap(), 4);
}

/// A TCP proxy that, once cut, forwards nothing in either direction while keeping both
/// connections open: a network that silently drops everything (no FIN, no RST).
struct BlackholeProxy {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl BlackholeProxy {
    async fn start(target: std::net::SocketAddr) -> BlackholeProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                tokio::spawn(Self::pipe(ir, ow, watch.clone()));
                tokio::spawn(Self::pipe(or, iw, watch.clone()));
            }
        });
        BlackholeProxy { addr, cut }
    }

    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut cut: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 << 10];
        loop {
            tokio::select! {
                _ = async { drop(cut.wait_for(|c| *c).await) } => {
                    // Hold both sockets open and forward nothing, for ever.
                    let _keep = (from, to);
                    std::future::pending::<()>().await;
                    return;
                }
                n = from.read(&mut buf) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => if to.write_all(&buf[..n]).await.is_err() { return },
                },
            }
        }
    }

    fn cut(&self) {
        self.cut.send_replace(true);
    }
}

/// A consumer whose network vanishes (its packets silently dropped) gives its shards back
/// within the keepalive bound, and may connect again under the same name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_whose_network_vanishes_gives_its_shards_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--grpc-keepalive-interval-ms",
            "500",
            "--grpc-keepalive-timeout-ms",
            "1000",
        ],
    );
    let mut client = server.client().await;
    let shards = make_stream(&mut client, "ka", 2).await;
    client
        .create_subscription(pb::Subscription {
            subscription_id: "ka_sub".into(),
            stream_name: "ka".into(),
            ack_timeout_seconds: 600,
            max_unacked_records: 10_000,
            offset: pb::SpecialOffset::Earliest as i32,
            creation_time: None,
        })
        .await
        .unwrap();
    let proxy = BlackholeProxy::start(server.addr).await;
    let via_proxy: Client =
        hstream_proto::h_stream_api_client::HStreamApiClient::connect(format!("http://{}", proxy.addr))
            .await
            .unwrap();
    let a = TestConsumer::start(&via_proxy, "ka_sub", "a", true).await.unwrap();
    let b = TestConsumer::start(&client, "ka_sub", "b", true).await.unwrap();
    for i in 0..20 {
        append_one(&mut client, "ka", shards[i % 2], &format!("before-{i}"))
            .await
            .unwrap();
    }
    wait_until(
        Duration::from_secs(20),
        "both consumers get their shard's records",
        || {
            let (na, nb) = (a.count(), b.count());
            async move { na + nb == 20 && na > 0 && nb > 0 }
        },
    )
    .await;

    proxy.cut();
    let cut_at = std::time::Instant::now();
    for i in 0..20 {
        append_one(&mut client, "ka", shards[i % 2], &format!("after-{i}"))
            .await
            .unwrap();
    }
    let after = |c: &TestConsumer| {
        c.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| p.starts_with(b"after-"))
            .count()
    };
    wait_until(
        Duration::from_secs(30),
        "b gets every record appended after the cut",
        || {
            let n = after(&b);
            async move { n == 20 }
        },
    )
    .await;
    let took = cut_at.elapsed();
    eprintln!("shards of the vanished consumer reassigned {took:?} after the cut (keepalive 0.5 s + 1 s)");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(after(&a), 0);

    // Its name is free again: the consumer reconnects (directly) under it.
    let again = TestConsumer::start(&client, "ka_sub", "a", true).await.unwrap();
    drop((a, again, b));
}

/// Runs SQL against a stopped server's SQLite metastore (Python's sqlite3), as an older
/// version's crash or an operator's hand would leave it.
fn metastore_sql(data_dir: &std::path::Path, sql: &str) {
    let db = data_dir.join("meta.db");
    let script =
        "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\nc.executescript(sys.argv[2])\nc.commit()\nc.close()";
    let out = std::process::Command::new(python())
        .args(["-c", script])
        .arg(&db)
        .arg(sql)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

pub(crate) fn sub_req(id: &str, stream: &str) -> pb::Subscription {
    pb::Subscription {
        subscription_id: id.into(),
        stream_name: stream.into(),
        ack_timeout_seconds: 60,
        max_unacked_records: 100,
        offset: pb::SpecialOffset::Earliest as i32,
        creation_time: None,
    }
}

/// Subscriptions survive what a crash between two metastore steps left behind: one whose
/// stream is gone can still be deleted, an archived stream no subscription reads is removed at
/// start, and recreating a deleted subscription under the same name replays everything (the
/// acks the old one had beyond its committed prefix went with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_leftovers_can_be_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let gone = make_stream(&mut c, "gone", 1).await[0];
    let kept = make_stream(&mut c, "kept", 1).await[0];
    let replay = make_stream(&mut c, "replay", 1).await[0];
    for i in 0..4 {
        append_one(&mut c, "gone", gone, &format!("g{i}")).await.unwrap();
        append_one(&mut c, "kept", kept, &format!("k{i}")).await.unwrap();
        append_one(&mut c, "replay", replay, &format!("r{i}")).await.unwrap();
    }
    c.create_subscription(sub_req("orphan_sub", "gone")).await.unwrap();
    c.create_subscription(sub_req("arch_sub", "kept")).await.unwrap();
    c.delete_stream(pb::DeleteStreamRequest {
        stream_name: "kept".into(),
        ignore_non_exist: false,
        force: true,
    })
    .await
    .unwrap();
    // Acks out of order (kept in the ack checkpoint, beyond the committed prefix).
    c.create_subscription(sub_req("again", "replay")).await.unwrap();
    let first = TestConsumer::start(&c, "again", "c1", false).await.unwrap();
    wait_until(Duration::from_secs(10), "four records delivered", || {
        let n = first.count();
        async move { n == 4 }
    })
    .await;
    let ids = first.ids();
    first.ack(vec![ids[1], ids[3]]).await;
    drop(first);
    server.terminate();
    // What a crash between two steps (or an older version) could leave: a subscription whose
    // stream is gone, an archived stream whose last subscription is gone.
    metastore_sql(
        dir.path(),
        "DELETE FROM streams WHERE name = 'gone'; DELETE FROM shards WHERE stream = 'gone'; \
         DELETE FROM subscriptions WHERE id = 'arch_sub'; DELETE FROM sub_progress WHERE sub = 'arch_sub';",
    );
    server.restart();
    let c = server.client().await;
    assert!(
        !dir.path().join(format!("shards/{kept}")).exists(),
        "the unread archived stream's files went"
    );
    assert!(!dir.path().join(format!("shards/{gone}")).exists());
    let mut c2 = c.clone();
    c2.delete_subscription(pb::DeleteSubscriptionRequest {
        subscription_id: "orphan_sub".into(),
        force: false,
    })
    .await
    .expect("a subscription whose stream is gone can be deleted");
    c2.create_subscription(sub_req("orphan_sub", "replay"))
        .await
        .expect("and its name reused");

    c2.delete_subscription(pb::DeleteSubscriptionRequest {
        subscription_id: "again".into(),
        force: true,
    })
    .await
    .unwrap();
    c2.create_subscription(sub_req("again", "replay")).await.unwrap();
    let second = TestConsumer::start(&c, "again", "c2", true).await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "every record, the ones acked before the delete included",
        || {
            let n = second.count();
            async move { n == 4 }
        },
    )
    .await;
    let got: Vec<_> = second.received.lock().unwrap().iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(got, [b"r0".to_vec(), b"r1".to_vec(), b"r2".to_vec(), b"r3".to_vec()]);
}

/// A read bounded by a client timestamp at the ends of i64 neither panics nor ends early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_client_timestamps_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let shard = make_stream(&mut c, "ts", 1).await[0];
    append_one(&mut c, "ts", shard, "x0").await.unwrap();
    for t in [i64::MAX, i64::MIN] {
        let until = pb::ShardOffset {
            offset: Some(pb::shard_offset::Offset::TimestampOffset(pb::TimestampOffset {
                timestamp_in_ms: t,
                strict_accuracy: false,
            })),
        };
        let mut s = c
            .read_shard_stream(pb::ReadShardStreamRequest {
                reader_id: String::new(),
                shard_id: shard,
                from: Some(earliest()),
                max_read_batches: 0,
                until: Some(until),
                stream_name: "ts".into(),
            })
            .await
            .unwrap()
            .into_inner();
        if t == i64::MAX {
            let got = tokio::time::timeout(Duration::from_secs(10), s.message())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(payload_strings(&got.unwrap().received_records), ["x0"]);
        } else {
            // Everything is after i64::MIN: the read ends with nothing.
            let end = tokio::time::timeout(Duration::from_secs(10), s.message())
                .await
                .unwrap();
            assert!(matches!(end, Ok(None)), "{end:?}");
        }
    }
    // The server is alive and appends go on.
    assert_eq!(append_one(&mut c, "ts", shard, "x1").await.unwrap(), 2);
}

/// Open files follow what is in use, not how many shards exist: under an open-file limit of
/// 512, a node with 1,200 shards (each written and read) runs, restarts and serves them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_shards_fit_a_small_open_file_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with_nofile(dir.path(), &[], 512);
    let mut c = server.client().await;
    let mut shards = make_stream(&mut c, "wide", 600).await;
    shards.extend(make_stream(&mut c, "wider", 600).await);
    for (i, &s) in shards.iter().enumerate() {
        let stream = if i < 600 { "wide" } else { "wider" };
        append_one(&mut c, stream, s, &format!("r{i}")).await.unwrap();
    }
    eprintln!("1,200 shards written: {} open fds", server.open_fds());
    assert!(server.open_fds() < 512);
    server.terminate();
    server.restart();
    let mut c = server.client().await;
    let after_start = server.open_fds();
    eprintln!("restarted over 1,200 shards: {after_start} open fds");
    assert!(after_start < 128, "{after_start} fds open after start");
    for (i, &s) in shards.iter().enumerate() {
        let stream = if i < 600 { "wide" } else { "wider" };
        assert_eq!(
            payload_strings(&read_shard_to_tail(&mut c, stream, s).await),
            [format!("r{i}")]
        );
        assert_eq!(append_one(&mut c, stream, s, "again").await.unwrap(), 2);
    }
    assert!(server.open_fds() < 512);
}
