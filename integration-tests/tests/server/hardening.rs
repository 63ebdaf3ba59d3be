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
