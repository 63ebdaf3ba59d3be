//! The Kafka sink and source against librdkafka's mock cluster (a Kafka-protocol broker inside
//! librdkafka, run in this test process; not Apache Kafka, which no package here provides),
//! read back and fed with rdkafka's own producer and consumer: 200k records each way, once
//! each in per-key order; the brokers down mid-load; kill -9 of our server mid-load for the
//! sink (at-least-once, and exactly-once in transactional mode) and the source (resumed from
//! its checkpoint); bad configs and a broker that never answers; secrets masked.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt as _;
use hstream_integration_tests::kafka::{Kafka, Msg, Outgoing};
use hstream_integration_tests::*;
use hstream_proto as pb;
use prost::Message as _;
use serde_json::{Value, json};

const FAST_RETRY: &[&str] = &["--connector-retry-base-ms", "50", "--connector-retry-max-ms", "500"];
const KEYS: usize = 200;
const PER_KEY: usize = 1_000;

mod configs;
mod live;
mod sink;
mod source;

/// Record `seq` of key `k`: even seqs JSON `{"k": k, "seq": seq}`, odd ones RAW `k/seq`; both
/// with attributes `seq` and `src`.
fn record(k: &str, seq: usize) -> pb::HStreamRecord {
    let (flag, payload) = if seq.is_multiple_of(2) {
        let s = json_struct(&json!({"k": k, "seq": seq}));
        (pb::h_stream_record_header::Flag::Json, Bytes::from(s.encode_to_vec()))
    } else {
        (pb::h_stream_record_header::Flag::Raw, Bytes::from(format!("{k}/{seq}")))
    };
    pb::HStreamRecord {
        header: Some(pb::HStreamRecordHeader {
            flag: flag as i32,
            attributes: [
                ("seq".to_owned(), seq.to_string()),
                ("src".to_owned(), "test".to_owned()),
            ]
            .into_iter()
            .collect(),
            key: k.to_owned(),
        }),
        payload,
    }
}

/// Appends KEYS × PER_KEY records (keys interleaved, 250 per append) to `stream` (one shard).
async fn fill_stream(c: &mut Client, stream: &str) {
    let shard_id = make_stream(c, stream, 1).await[0];
    for chunk in 0..PER_KEY / 250 {
        for k in 0..KEYS {
            let key = format!("k{k}");
            let records: Vec<pb::HStreamRecord> =
                (chunk * 250..(chunk + 1) * 250).map(|seq| record(&key, seq)).collect();
            let raw = pb::BatchHStreamRecords { records }.encode_to_vec();
            c.append(pb::AppendRequest {
                stream_name: stream.into(),
                shard_id,
                records: Some(pb::BatchedRecord {
                    compression_type: pb::CompressionType::None as i32,
                    publish_time: None,
                    batch_size: 250,
                    payload: raw.into(),
                }),
            })
            .await
            .unwrap();
        }
    }
}

/// The (key, seq) a sink wrote, checking the value and headers against what was appended.
fn sent_by_sink(m: &Msg) -> (String, usize) {
    let key = String::from_utf8(m.key.clone().expect("a key")).unwrap();
    let seq: usize = m.headers["seq"].parse().unwrap();
    assert_eq!(m.headers.get("src").map(String::as_str), Some("test"), "{m:?}");
    let value = m.value.as_deref().expect("a value");
    if seq.is_multiple_of(2) {
        let v: Value = serde_json::from_slice(value).unwrap();
        assert_eq!(v["k"], json!(key));
        assert_eq!(v["seq"].as_f64(), Some(seq as f64), "{v}");
    } else {
        assert_eq!(value, format!("{key}/{seq}").as_bytes());
    }
    (key, seq)
}

/// Every (key, seq) is there, each key's first deliveries in seq order (records of one key share
/// a partition: offset order is delivery order); returns how many were there more than once.
fn assert_complete(msgs: &[Msg]) -> usize {
    let mut seen = BTreeSet::new();
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut dup = 0;
    let mut partitions: HashMap<String, i32> = HashMap::new();
    for m in msgs {
        let (key, seq) = sent_by_sink(m);
        assert_eq!(
            *partitions.entry(key.clone()).or_insert(m.partition),
            m.partition,
            "{key} in one partition"
        );
        if !seen.insert((key.clone(), seq)) {
            dup += 1;
            continue;
        }
        let prev = last.insert(key.clone(), seq);
        assert_eq!(
            prev.map_or(0, |p| p + 1),
            seq,
            "key {key}: first deliveries out of order"
        );
    }
    assert_eq!(seen.len(), KEYS * PER_KEY, "every record");
    dup
}

fn sink_config(kafka: &Kafka, stream: &str, extra: Value) -> Value {
    config_with(
        json!({"bootstrapServers": kafka.bootstrap(), "topic": "out"}),
        stream,
        extra,
    )
}

/// Waits until `topic` holds `n` messages (its high watermarks summed).
async fn wait_end_offsets(kafka: &Kafka, c: &Client, topic: &str, n: i64, within: Duration) {
    if !holds_within(within, || async { kafka.end_offsets(topic) >= n }).await {
        panic!(
            "{topic} holds {} of {n} after {within:?}; sink report {}",
            kafka.end_offsets(topic),
            connector_report(c, "k").await
        );
    }
}

/// Waits until every record of [`fill_stream`] is in `topic` (read as `committed` says), and
/// returns what the topic holds then.
async fn wait_every_record(kafka: &Kafka, c: &Client, topic: &str, committed: bool, within: Duration) -> Vec<Msg> {
    let mut last = Vec::new();
    let complete = holds_within(within, || {
        last = kafka.read_all(topic, committed);
        let distinct: BTreeSet<(String, usize)> = last.iter().map(sent_by_sink).collect();
        std::future::ready(distinct.len() == KEYS * PER_KEY)
    })
    .await;
    if !complete {
        panic!(
            "{topic} holds {} messages, not every record, after {within:?}; report {}",
            last.len(),
            connector_report(c, "k").await
        );
    }
    last
}
