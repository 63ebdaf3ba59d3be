//! Kafka: our `kafka` source and sink beside rdkafka's own consumer and producer moving the same
//! records through the same broker in the same run. The broker is librdkafka's mock cluster (in
//! this process; no Kafka broker is packaged here), so both sides pay the same broker costs.
//!
//! - source: N messages already in a 16-partition topic, read into a durable stream (fsync
//!   always) by our source, beside a bare rdkafka consumer reading them to nothing;
//! - sink: N records already in a stream, produced to a 16-partition topic by our sink (acks=all,
//!   idempotent, position moved only past delivered records), beside a bare rdkafka producer
//!   (the same settings) producing the same records from memory.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hstream_integration_tests::Server;
use hstream_integration_tests::kafka::{Kafka, Outgoing};
use hstream_proto as pb;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Records each way.
    #[arg(long, default_value_t = 400_000)]
    records: usize,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
}

impl Args {
    pub fn default_args() -> Args {
        Args {
            records: 400_000,
            payload: 100,
            keys: 1000,
        }
    }
}

fn payload(args: &Args, i: usize) -> Vec<u8> {
    let mut p = format!("{i}:").into_bytes();
    p.resize(args.payload.max(p.len()), b'x');
    p
}

/// Partitions per topic: librdkafka's mock broker keeps at most 5 MB (or 100k message sets) per
/// partition and drops the oldest beyond that, so the records are spread wide enough to stay.
const PARTITIONS: i32 = 16;

/// Reads every message of `topic` from the start with a bare consumer; seconds.
fn bare_consume(kafka: &Kafka, topic: &str, n: usize) -> anyhow::Result<f64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("group.id", "bench-peer")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    let t = Instant::now();
    consumer.assign(&tpl)?;
    let mut got = 0;
    while got < n {
        if let Some(m) = consumer.poll(Duration::from_secs(1)) {
            m?;
            got += 1;
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "timed out");
    }
    Ok(t.elapsed().as_secs_f64())
}

async fn delivered(c: &mut hstream_integration_tests::Client, name: &str) -> anyhow::Result<f64> {
    let conn = c
        .get_connector(pb::GetConnectorRequest { name: name.into() })
        .await?
        .into_inner();
    Ok(crate::cdc::delivered(&conn))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let n = args.records;
    println!(
        "kafka: {n} records of {} bytes over {} keys, librdkafka mock cluster (1 broker, in process), {PARTITIONS} partitions",
        args.payload, args.keys
    );
    let kafka = Kafka::start(1);
    kafka.create_topic("in", PARTITIONS);
    kafka.create_topic("out", PARTITIONS);
    kafka.create_topic("peer", PARTITIONS);
    let messages: Vec<Outgoing> = (0..n)
        .map(|i| (Some(format!("k{}", i % args.keys)), payload(&args, i), Vec::new()))
        .collect();

    // The bare producer (acks=all, idempotent, linger 5 ms: the settings of our sink).
    let t = Instant::now();
    kafka.produce("peer", &messages).await;
    let peer_produce = t.elapsed().as_secs_f64();
    kafka.produce("in", &messages).await;
    let peer_consume = bare_consume(&kafka, "in", n)?;

    let out_dir = hstream_integration_tests::repo_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let data = tempfile::tempdir_in(&out_dir)?;
    let server = Server::start(data.path(), &["--fsync", "always"]);
    let mut c = server.client().await;

    // Source: the topic into a durable stream.
    let cpu0 = server.cpu_seconds();
    let t = Instant::now();
    c.create_connector(pb::CreateConnectorRequest {
        name: "ks".into(),
        r#type: "source".into(),
        target: "kafka".into(),
        config: serde_json::json!({"stream": "fromk", "bootstrapServers": kafka.bootstrap(), "topics": "in", "format": "raw"})
            .to_string(),
    })
    .await?;
    while delivered(&mut c, "ks").await? < n as f64 {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "the source timed out");
        // A benchmark's progress probe, not a test's synchronisation.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ours_source = t.elapsed().as_secs_f64();
    let source_cpu = server.cpu_seconds() - cpu0;

    // Sink: a stream of the same records (appended first, not timed) out to a topic.
    let shard = hstream_integration_tests::make_stream(&mut c, "tok", 1).await[0];
    for chunk in messages.chunks(1000) {
        let records: Vec<pb::HStreamRecord> = chunk
            .iter()
            .map(|(k, v, _)| pb::HStreamRecord {
                header: Some(pb::HStreamRecordHeader {
                    flag: pb::h_stream_record_header::Flag::Raw as i32,
                    attributes: Default::default(),
                    key: k.clone().unwrap_or_default(),
                }),
                payload: Bytes::from(v.clone()),
            })
            .collect();
        let payload = pb::BatchHStreamRecords { records }.encode_to_vec();
        c.append(pb::AppendRequest {
            stream_name: "tok".into(),
            shard_id: shard,
            records: Some(pb::BatchedRecord {
                compression_type: pb::CompressionType::None as i32,
                publish_time: None,
                batch_size: chunk.len() as u32,
                payload: payload.into(),
            }),
        })
        .await?;
    }
    let cpu0 = server.cpu_seconds();
    let t = Instant::now();
    c.create_connector(pb::CreateConnectorRequest {
        name: "kk".into(),
        r#type: "sink".into(),
        target: "kafka".into(),
        config: serde_json::json!({"stream": "tok", "bootstrapServers": kafka.bootstrap(), "topic": "out", "kafka.linger.ms": "5"})
            .to_string(),
    })
    .await?;
    while kafka.end_offsets("out") < n as i64 {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "the sink timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ours_sink = t.elapsed().as_secs_f64();
    let sink_cpu = server.cpu_seconds() - cpu0;

    let rate = |s: f64| n as f64 / s;
    let us = |cpu: f64| cpu * 1e6 / n as f64;
    println!("  source (topic -> consumer):");
    println!(
        "    rdkafka BaseConsumer -> nothing : {peer_consume:6.2} s {:9.0} rec/s",
        rate(peer_consume)
    );
    println!(
        "    hstream kafka -> durable stream  : {ours_source:6.2} s {:9.0} rec/s  server CPU {:.2} us/rec (fsync=always)",
        rate(ours_source),
        us(source_cpu)
    );
    println!("    ratio ours/bare: {:.2}x rec/s", peer_consume / ours_source);
    println!("  sink (records -> topic, acks=all, idempotent):");
    println!(
        "    rdkafka FutureProducer from memory: {peer_produce:6.2} s {:9.0} rec/s",
        rate(peer_produce)
    );
    println!(
        "    hstream stream -> kafka sink      : {ours_sink:6.2} s {:9.0} rec/s  server CPU {:.2} us/rec",
        rate(ours_sink),
        us(sink_cpu)
    );
    println!("    ratio ours/bare: {:.2}x rec/s", peer_produce / ours_sink);
    Ok(())
}
