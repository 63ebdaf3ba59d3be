//! Streams, appends, reads, trims, retention and crash safety.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hstream_integration_tests::*;
use hstream_proto as pb;
use pb::CompressionType::{Gzip, None as Plain, Zstd};
use tonic::Code;

fn stream_req(name: &str, shards: u32) -> pb::Stream {
    pb::Stream {
        stream_name: name.into(),
        replication_factor: 1,
        backlog_duration: 0,
        shard_count: shards,
        creation_time: None,
    }
}

async fn append(client: &mut Client, stream: &str, shard: u64, key: &str, payloads: &[Vec<u8>]) -> pb::AppendResponse {
    client
        .append(pb::AppendRequest {
            stream_name: stream.into(),
            shard_id: shard,
            records: Some(batch(key, payloads, Plain)),
        })
        .await
        .expect("append")
        .into_inner()
}

async fn shard_ids(client: &mut Client, stream: &str) -> Vec<u64> {
    let r = client
        .list_shards(pb::ListShardsRequest {
            stream_name: stream.into(),
        })
        .await
        .unwrap()
        .into_inner();
    r.shards.iter().map(|s| s.shard_id).collect()
}

/// The official Python client (hstreamdb 0.5.0) appends 100,000 records under 50 keys with each
/// compression and reads them back through every read path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let summary = run_python(
        "roundtrip.py",
        &[
            "--port",
            &server.addr.port().to_string(),
            "--records",
            "100000",
            "--keys",
            "50",
            "--shards",
            "4",
        ],
    )
    .await;
    for tag in ["none", "gzip", "zstd"] {
        assert_eq!(summary[tag]["appended"], 100_000, "{summary}");
        assert_eq!(summary[tag]["read_stream"], 100_000, "{summary}");
        assert_eq!(summary[tag]["read_shard_stream"], 100_000, "{summary}");
    }
    assert_eq!(summary["none"]["client_readers"], 100_000);
    assert_eq!(summary["gzip"]["client_readers"], 100_000);
}

/// (shard, lsn) -> (key, payloads) of every acknowledged append.
type AckedAppends = BTreeMap<(u64, u64), (String, Vec<Vec<u8>>)>;

/// SIGKILL in the middle of a concurrent append load, ten times over one data directory: every
/// acknowledged append is readable afterwards, byte for byte, and nothing else is returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_repeated_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments so that kills also land around segment rolls.
    let mut server = Server::start(dir.path(), &["--segment-bytes", "65536"]);
    let mut client = server.client().await;
    client.create_stream(stream_req("crash", 3)).await.unwrap();
    let shards = shard_ids(&mut client, "crash").await;
    let acked: Arc<Mutex<AckedAppends>> = Arc::default();
    let mut total_acked_before_kill = Vec::new();
    for round in 0..10u32 {
        let before = acked.lock().unwrap().len();
        let mut writers = Vec::new();
        for w in 0..4u64 {
            let mut c = server.client().await;
            let acked = acked.clone();
            let shard = shards[(w % 3) as usize];
            writers.push(tokio::spawn(async move {
                for i in 0u32.. {
                    let key = format!("r{round}w{w}");
                    let payloads: Vec<Vec<u8>> = (0..(1 + i % 7))
                        .map(|j| format!("{key}-{i}-{j}-{}", "x".repeat((i * 37 % 900) as usize)).into_bytes())
                        .collect();
                    let req = pb::AppendRequest {
                        stream_name: "crash".into(),
                        shard_id: shard,
                        records: Some(batch(&key, &payloads, [Plain, Gzip, Zstd][(i % 3) as usize])),
                    };
                    match c.append(req).await {
                        Ok(resp) => {
                            let ids = resp.into_inner().record_ids;
                            assert_eq!(ids.len(), payloads.len());
                            acked.lock().unwrap().insert((shard, ids[0].batch_id), (key, payloads));
                        }
                        Err(_) => return, // the server died under us: this one was never acked
                    }
                }
            }));
        }
        // Kill once this round has had a real load going.
        let acked_probe = acked.clone();
        wait_until(Duration::from_secs(60), "appends in flight", || {
            let n = acked_probe.lock().unwrap().len();
            async move { n >= before + 40 }
        })
        .await;
        server.kill();
        for w in writers {
            w.await.unwrap();
        }
        total_acked_before_kill.push(acked.lock().unwrap().len());
        server.restart();
        let mut client = server.client().await;
        // Every acknowledged append is there, identical; every stored batch was acknowledged or
        // was in flight at the kill (an append can be stored but its reply lost).
        let snapshot = acked.lock().unwrap().clone();
        let mut found = 0;
        for &shard in &shards {
            let batches = read_shard_to_tail(&mut client, "crash", shard).await;
            let mut prev = 0;
            for rr in &batches {
                let recs = decode(rr);
                let lsn = recs[0].0.batch_id;
                assert!(lsn > prev, "LSNs increase within a shard");
                prev = lsn;
                if let Some((key, payloads)) = snapshot.get(&(shard, lsn)) {
                    found += 1;
                    assert_eq!(recs.len(), payloads.len());
                    for ((_, k, p), want) in recs.iter().zip(payloads) {
                        assert_eq!(k, key);
                        assert_eq!(p, want, "payload of shard {shard} lsn {lsn} differs");
                    }
                }
            }
        }
        assert_eq!(
            found,
            snapshot.len(),
            "round {round}: an acknowledged append is missing after SIGKILL"
        );
    }
    assert!(
        total_acked_before_kill.windows(2).all(|w| w[1] > w[0]),
        "every round appended"
    );
}

/// Bad requests get clear errors, change nothing, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_without_storing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-record-size", "65536"]);
    let mut client = server.client().await;
    client.create_stream(stream_req("bad", 1)).await.unwrap();
    let shard = shard_ids(&mut client, "bad").await[0];
    let tail = |mut c: Client| async move {
        c.get_tail_record_id(pb::GetTailRecordIdRequest {
            stream_name: "bad".into(),
            shard_id: shard,
        })
        .await
        .unwrap()
        .into_inner()
        .tail_record_id
        .unwrap()
        .batch_id
    };
    append(&mut client, "bad", shard, "k", &[b"good".to_vec()]).await;
    assert_eq!(tail(client.clone()).await, 1);

    let good = batch("k", &[b"x".to_vec()], Plain);
    let try_append = |stream: &str, shard_id: u64, records: Option<pb::BatchedRecord>| {
        let mut c = client.clone();
        let req = pb::AppendRequest {
            stream_name: stream.into(),
            shard_id,
            records,
        };
        async move { c.append(req).await.unwrap_err() }
    };
    let e = try_append("nope", shard, Some(good.clone())).await;
    assert_eq!((e.code(), error_code(&e)), (Code::NotFound, 200), "{e:?}");
    let e = try_append("bad", shard + 1000, Some(good.clone())).await;
    assert_eq!((e.code(), error_code(&e)), (Code::NotFound, 210), "{e:?}");
    let e = try_append("bad", shard, None).await;
    assert_eq!((e.code(), error_code(&e)), (Code::InvalidArgument, 206), "{e:?}");
    let oversized = batch("k", &[vec![7u8; 70_000]], Plain);
    let e = try_append("bad", shard, Some(oversized)).await;
    assert_eq!((e.code(), error_code(&e)), (Code::InvalidArgument, 207), "{e:?}");
    assert!(e.message().contains("max-record-size"), "{}", e.message());
    let mut corrupt = good.clone();
    corrupt.payload = bytes::Bytes::from_static(&[0x0a, 0xff, 0xff, 0xff, 0x01]);
    let e = try_append("bad", shard, Some(corrupt)).await;
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("not a BatchHStreamRecords"), "{}", e.message());
    let mut lying = batch("k", &[b"a".to_vec(), b"b".to_vec()], Plain);
    lying.batch_size = 5;
    let e = try_append("bad", shard, Some(lying)).await;
    assert!(
        e.message().contains("batchSize is 5 but the payload holds 2"),
        "{}",
        e.message()
    );
    for (ct, what) in [(Gzip, "gzip"), (Zstd, "zstd")] {
        let mut b = good.clone();
        b.compression_type = ct as i32;
        b.payload = bytes::Bytes::from_static(b"definitely not compressed");
        let e = try_append("bad", shard, Some(b)).await;
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains(&format!("{what} payload does not decompress")),
            "{}",
            e.message()
        );
    }
    let mut weird = good.clone();
    weird.compression_type = 42;
    let e = try_append("bad", shard, Some(weird)).await;
    assert!(e.message().contains("unknown compressionType 42"), "{}", e.message());

    // Nothing above was stored; the server still takes good appends.
    assert_eq!(tail(client.clone()).await, 1);
    let r = append(&mut client, "bad", shard, "k", &[b"after".to_vec()]).await;
    assert_eq!(r.record_ids[0].batch_id, 2);
    let batches = read_shard_to_tail(&mut client, "bad", shard).await;
    let payloads: Vec<_> = batches.iter().flat_map(decode).map(|(_, _, p)| p).collect();
    assert_eq!(payloads, vec![b"good".to_vec(), b"after".to_vec()]);

    // Read-side bad input.
    let e = client
        .get_tail_record_id(pb::GetTailRecordIdRequest {
            stream_name: "bad".into(),
            shard_id: 999_999,
        })
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), 210);
    let conflict = pb::ShardOffset {
        offset: Some(pb::shard_offset::Offset::RecordOffset(pb::RecordId {
            shard_id: shard + 1,
            batch_id: 1,
            batch_index: 0,
        })),
    };
    let e = client
        .create_shard_reader(pb::CreateShardReaderRequest {
            stream_name: "bad".into(),
            shard_id: shard,
            shard_offset: Some(conflict),
            reader_id: "r1".into(),
            timeout: 10,
        })
        .await
        .unwrap_err();
    assert_eq!((e.code(), error_code(&e)), (Code::InvalidArgument, 901));
    let e = client
        .read_shard(pb::ReadShardRequest {
            reader_id: "ghost".into(),
            max_records: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = client
        .trim_shards(pb::TrimShardsRequest {
            stream_name: "bad".into(),
            record_ids: vec!["1-x-0".into()],
        })
        .await
        .unwrap_err();
    assert_eq!((e.code(), error_code(&e)), (Code::InvalidArgument, 209));
}

/// Stream management RPCs and their errors, shard key ranges, lookups and cluster description.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let created = c.create_stream(stream_req("orders", 3)).await.unwrap().into_inner();
    assert_eq!(created.shard_count, 3);
    assert!(created.creation_time.is_some());
    c.create_stream(stream_req("orders_eu", 1)).await.unwrap();
    c.create_stream(stream_req("users", 1)).await.unwrap();
    let e = c.create_stream(stream_req("orders", 1)).await.unwrap_err();
    assert_eq!((e.code(), error_code(&e)), (Code::AlreadyExists, 201));
    let e = c.create_stream(stream_req("1bad", 1)).await.unwrap_err();
    assert_eq!((e.code(), error_code(&e)), (Code::InvalidArgument, 204));
    let e = c.create_stream(stream_req("zero", 0)).await.unwrap_err();
    assert_eq!((e.code(), error_code(&e)), (Code::InvalidArgument, 205));
    let e = c
        .create_stream(pb::Stream {
            replication_factor: 0,
            ..stream_req("norep", 1)
        })
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), 203);

    let names = |r: pb::ListStreamsResponse| r.streams.into_iter().map(|s| s.stream_name).collect::<Vec<_>>();
    assert_eq!(
        names(c.list_streams(pb::ListStreamsRequest {}).await.unwrap().into_inner()),
        ["orders", "orders_eu", "users"]
    );
    let pre = c
        .list_streams_with_prefix(pb::ListStreamsWithPrefixRequest {
            prefix: "orders".into(),
        })
        .await
        .unwrap();
    assert_eq!(names(pre.into_inner()), ["orders", "orders_eu"]);
    let got = c
        .get_stream(pb::GetStreamRequest { name: "orders".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.stream.unwrap().shard_count, 3);
    let e = c
        .get_stream(pb::GetStreamRequest { name: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), 200);

    // Shards split the MD5 space evenly, as the clients compute it.
    let shards = c
        .list_shards(pb::ListShardsRequest {
            stream_name: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .shards;
    let cnt = u128::MAX / 3;
    let ranges: Vec<(u128, u128)> = shards
        .iter()
        .map(|s| {
            (
                s.start_hash_range_key.parse().unwrap(),
                s.end_hash_range_key.parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(ranges, vec![(0, cnt - 1), (cnt, 2 * cnt - 1), (2 * cnt, u128::MAX)]);
    assert!(
        shards
            .iter()
            .all(|s| s.is_active && s.epoch == 3 && s.stream_name == "orders")
    );

    let node = c.describe_cluster(()).await.unwrap().into_inner();
    assert_eq!(node.protocol_version, "0.1.0");
    assert_eq!(node.server_nodes[0].port, server.addr.port() as u32);
    assert_eq!(node.server_nodes_status[0].state, pb::NodeState::Running as i32);
    let look = c
        .lookup_shard(pb::LookupShardRequest {
            shard_id: shards[0].shard_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (look.shard_id, look.server_node.unwrap().host),
        (shards[0].shard_id, "127.0.0.1".to_string())
    );
    let res = c.lookup_resource(pb::LookupResourceRequest {
        res_type: pb::ResourceType::ResShard as i32,
        res_id: "1".into(),
    });
    assert_eq!(res.await.unwrap().into_inner().port, server.addr.port() as u32);
    assert_eq!(
        c.echo(pb::EchoRequest { msg: "hi".into() })
            .await
            .unwrap()
            .into_inner()
            .msg,
        "hi"
    );

    let del = |name: &str, ignore: bool| pb::DeleteStreamRequest {
        stream_name: name.into(),
        ignore_non_exist: ignore,
        force: false,
    };
    c.delete_stream(del("users", false)).await.unwrap();
    let e = c.delete_stream(del("users", false)).await.unwrap_err();
    assert_eq!((e.code(), error_code(&e)), (Code::NotFound, 200));
    c.delete_stream(del("users", true)).await.unwrap();
    // The name can be reused, and the new stream starts empty.
    c.create_stream(stream_req("users", 1)).await.unwrap();
    let sid = shard_ids(&mut c, "users").await[0];
    assert!(read_shard_to_tail(&mut c, "users", sid).await.is_empty());
}

/// Offsets (EARLIEST, LATEST, record id, timestamp), until bounds, maxReadBatches, tailing,
/// shard readers, trims and retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_offsets_trims_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--retention-interval-ms", "50"]);
    let mut c = server.client().await;
    c.create_stream(stream_req("r", 1)).await.unwrap();
    let shard = shard_ids(&mut c, "r").await[0];
    let mut lsns = Vec::new();
    for i in 0..10 {
        lsns.push(
            append(&mut c, "r", shard, "k", &[format!("m{i}").into_bytes()])
                .await
                .record_ids[0]
                .batch_id,
        );
    }
    assert_eq!(lsns, (1..=10).collect::<Vec<_>>());
    let reader_client = c.clone();
    let read = move |from: pb::ShardOffset, until: Option<pb::ShardOffset>, max: u64| {
        let mut c = reader_client.clone();
        async move {
            let mut s = c
                .read_single_shard_stream(pb::ReadSingleShardStreamRequest {
                    reader_id: String::new(),
                    stream_name: "r".into(),
                    from: Some(from),
                    until,
                    max_read_batches: max,
                })
                .await
                .unwrap()
                .into_inner();
            let mut out = Vec::new();
            while let Some(m) = s.message().await.unwrap() {
                out.extend(
                    m.received_records
                        .iter()
                        .flat_map(decode)
                        .map(|(_, _, p)| String::from_utf8(p).unwrap()),
                );
            }
            out
        }
    };
    let rid = |lsn| pb::ShardOffset {
        offset: Some(pb::shard_offset::Offset::RecordOffset(pb::RecordId {
            shard_id: shard,
            batch_id: lsn,
            batch_index: 0,
        })),
    };
    assert_eq!(read(earliest(), Some(latest()), 0).await.len(), 10);
    assert_eq!(
        read(rid(4), Some(rid(6)), 0).await,
        ["m3", "m4", "m5"],
        "until is inclusive"
    );
    assert_eq!(
        read(earliest(), Some(latest()), 2).await,
        ["m0", "m1"],
        "maxReadBatches"
    );

    // Timestamp offsets find the first batch at or after the time.
    let all = read_shard_to_tail(&mut c, "r", shard).await;
    let ts = |rr: &pb::ReceivedRecord| {
        let t = rr.record.as_ref().unwrap().publish_time.unwrap();
        t.seconds * 1000 + t.nanos as i64 / 1_000_000
    };
    let t5 = ts(&all[5]);
    let first_at_t5 = all.iter().position(|rr| ts(rr) >= t5).unwrap();
    let at = pb::ShardOffset {
        offset: Some(pb::shard_offset::Offset::TimestampOffset(pb::TimestampOffset {
            timestamp_in_ms: t5,
            strict_accuracy: true,
        })),
    };
    assert_eq!(read(at, Some(latest()), 0).await.len(), 10 - first_at_t5);

    // Without until the read tails: a later append arrives on the open stream.
    let mut tail = c
        .read_shard_stream(pb::ReadShardStreamRequest {
            reader_id: String::new(),
            shard_id: shard,
            from: Some(latest()),
            max_read_batches: 1,
            until: None,
            stream_name: "r".into(),
        })
        .await
        .unwrap()
        .into_inner();
    append(&mut c, "r", shard, "k", &[b"live".to_vec()]).await;
    let m = tail.message().await.unwrap().expect("tailed batch");
    assert_eq!(decode(&m.received_records[0])[0].2, b"live");
    assert!(tail.message().await.unwrap().is_none(), "ends after maxReadBatches");

    // A shard reader (the Python client's read path) with a timeout that returns empty.
    c.create_shard_reader(pb::CreateShardReaderRequest {
        stream_name: "r".into(),
        shard_id: shard,
        shard_offset: Some(rid(10)),
        reader_id: "rd".into(),
        timeout: 50,
    })
    .await
    .unwrap();
    let e = c
        .create_shard_reader(pb::CreateShardReaderRequest {
            stream_name: "r".into(),
            shard_id: shard,
            shard_offset: Some(earliest()),
            reader_id: "rd".into(),
            timeout: 50,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let r1 = c
        .read_shard(pb::ReadShardRequest {
            reader_id: "rd".into(),
            max_records: 100,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r1.received_records.len(), 2, "m9 and live");
    let r2 = c
        .read_shard(pb::ReadShardRequest {
            reader_id: "rd".into(),
            max_records: 100,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r2.received_records.is_empty(), "timeout with no data returns empty");
    let listed = c
        .list_shard_readers(pb::ListShardReadersRequest {})
        .await
        .unwrap()
        .into_inner()
        .reader_id;
    assert_eq!(listed, ["rd"]);
    c.delete_shard_reader(pb::DeleteShardReaderRequest { reader_id: "rd".into() })
        .await
        .unwrap();

    // Trims: TrimShards keeps the oldest given record and everything after it.
    let tr = c
        .trim_shards(pb::TrimShardsRequest {
            stream_name: "r".into(),
            record_ids: vec![format!("{shard}-7-0"), format!("{shard}-5-0")],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tr.trim_points, HashMap::from([(shard, format!("{shard}-5-0"))]));
    assert_eq!(
        read(earliest(), Some(latest()), 0).await.first().map(String::as_str),
        Some("m4")
    );
    c.trim_shard(pb::TrimShardRequest {
        stream_name: "r".into(),
        shard_id: shard,
        trim_point: Some(rid(8)),
    })
    .await
    .unwrap();
    assert_eq!(read(earliest(), Some(latest()), 0).await, ["m8", "m9", "live"]);

    // Retention: a stream with a 1 s backlog loses its records once they are older than that.
    c.create_stream(pb::Stream {
        backlog_duration: 1,
        ..stream_req("short", 1)
    })
    .await
    .unwrap();
    let s2 = shard_ids(&mut c, "short").await[0];
    append(&mut c, "short", s2, "k", &[b"fleeting".to_vec()]).await;
    assert_eq!(read_shard_to_tail(&mut c, "short", s2).await.len(), 1);
    let probe = c.clone();
    wait_until(Duration::from_secs(10), "retention to drop the record", || {
        let mut c = probe.clone();
        async move { read_shard_to_tail(&mut c, "short", s2).await.is_empty() }
    })
    .await;

    // TrimStream to LATEST empties every shard; appends continue after the old tail.
    c.trim_stream(pb::TrimStreamRequest {
        stream_name: "r".into(),
        trim_point: Some(pb::StreamOffset {
            offset: Some(pb::stream_offset::Offset::SpecialOffset(
                pb::SpecialOffset::Latest as i32,
            )),
        }),
    })
    .await
    .unwrap();
    assert!(read_shard_to_tail(&mut c, "r", shard).await.is_empty());
    assert_eq!(
        append(&mut c, "r", shard, "k", &[b"next".to_vec()]).await.record_ids[0].batch_id,
        12
    );

    c.create_stream(stream_req("multi", 2)).await.unwrap();
    let e = c
        .read_single_shard_stream(pb::ReadSingleShardStreamRequest {
            stream_name: "multi".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!((e.code(), error_code(&e)), (Code::InvalidArgument, 902));
}

/// SIGTERM shuts down cleanly (even with a tailing read open) and a restart serves the same data,
/// readers and metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--fsync", "interval", "--fsync-interval-ms", "20"]);
    let mut c = server.client().await;
    c.create_stream(stream_req("keep", 2)).await.unwrap();
    let shards = shard_ids(&mut c, "keep").await;
    for i in 0..50 {
        append(&mut c, "keep", shards[i % 2], "k", &[format!("v{i}").into_bytes()]).await;
    }
    c.create_shard_reader(pb::CreateShardReaderRequest {
        stream_name: "keep".into(),
        shard_id: shards[0],
        shard_offset: Some(earliest()),
        reader_id: "durable_reader".into(),
        timeout: 0,
    })
    .await
    .unwrap();
    let mut open_tail = c
        .read_stream(pb::ReadStreamRequest {
            stream_name: "keep".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = open_tail.message().await.unwrap().unwrap();
    assert!(!first.received_records.is_empty());
    assert!(server.terminate().success(), "clean exit on SIGTERM");
    server.restart();
    let mut c = server.client().await;
    let mut n = 0;
    for &s in &shards {
        n += read_shard_to_tail(&mut c, "keep", s).await.len();
    }
    assert_eq!(n, 50);
    let r = c
        .read_shard(pb::ReadShardRequest {
            reader_id: "durable_reader".into(),
            max_records: 1000,
        })
        .await
        .unwrap();
    assert_eq!(
        r.into_inner().received_records.len(),
        25,
        "reader definition survives restart"
    );
    let next = append(&mut c, "keep", shards[0], "k", &[b"after".to_vec()]).await;
    assert_eq!(next.record_ids[0].batch_id, 26, "LSNs continue after restart");
}
