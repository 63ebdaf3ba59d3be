//! Append-to-delivery through one subscription.
//!
//! Throughput: N records are appended first, then one consumer that acks everything drains the
//! subscription; records/s is measured from the first to the last delivery. Beside it, the same
//! records read back with ReadStream (no acks, no subscription state): the peer that shows what
//! the subscription machinery costs.
//! Latency: a producer appends at a fixed rate (batches of 10) with the send time in each
//! payload; the consumer computes append-to-delivery latency per record (p50/p99).
//! Idle shards: the same latency run on a stream of `--wide-shards` shards (4096) of which
//! one gets the appends; idle shards must cost an append nothing, so the figures should match
//! the 4-shard run.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hstream_integration_tests::{Client, Server, batch, decode};
use hstream_proto as pb;
use tokio_stream::wrappers::ReceiverStream;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Records for the throughput run.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Records per appended batch in the throughput run.
    #[arg(long, default_value_t = 100)]
    batch_records: usize,
    /// Bytes per record.
    #[arg(long, default_value_t = 256)]
    record_bytes: usize,
    /// Records per second in the latency run.
    #[arg(long, default_value_t = 10_000)]
    rate: usize,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Shards of the stream in the idle-shards run (at most 4096, a stream's limit).
    #[arg(long, default_value_t = 4096)]
    wide_shards: u32,
}

impl Args {
    pub fn default_args() -> Args {
        Args {
            records: 200_000,
            batch_records: 100,
            record_bytes: 256,
            rate: 10_000,
            seconds: 10,
            wide_shards: 4096,
        }
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn setup(server: &Server, name: &str, sub: &str, shard_count: u32) -> anyhow::Result<(Client, Vec<u64>)> {
    let mut c = server.client().await;
    c.create_stream(pb::Stream {
        stream_name: name.into(),
        replication_factor: 1,
        backlog_duration: 0,
        shard_count,
        creation_time: None,
    })
    .await?;
    c.create_subscription(pb::Subscription {
        subscription_id: sub.into(),
        stream_name: name.into(),
        ack_timeout_seconds: 600,
        max_unacked_records: 100_000,
        offset: pb::SpecialOffset::Earliest as i32,
        creation_time: None,
    })
    .await?;
    let shards = c
        .list_shards(pb::ListShardsRequest {
            stream_name: name.into(),
        })
        .await?
        .into_inner()
        .shards;
    Ok((c, shards.iter().map(|s| s.shard_id).collect()))
}

/// Consumes until `want` records arrived, acking each batch; calls `seen` per record payload.
pub(crate) async fn consume(c: &Client, sub: &str, want: usize, mut seen: impl FnMut(&[u8])) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tx.send(pb::StreamingFetchRequest {
        subscription_id: sub.into(),
        consumer_name: "bench".into(),
        ack_ids: vec![],
    })
    .await?;
    let mut inbound = c.clone().streaming_fetch(ReceiverStream::new(rx)).await?.into_inner();
    let mut got = 0;
    while got < want {
        let Some(resp) = inbound.message().await? else {
            anyhow::bail!("stream ended after {got} records")
        };
        let rr = resp.received_records.expect("batch");
        let recs = decode(&rr);
        for (_, _, p) in &recs {
            seen(p);
        }
        got += recs.len();
        let ack_ids = recs.into_iter().map(|(id, _, _)| id).collect();
        tx.send(pb::StreamingFetchRequest {
            subscription_id: sub.into(),
            consumer_name: "bench".into(),
            ack_ids,
        })
        .await?;
    }
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let dir = hstream_integration_tests::repo_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let data = tempfile::tempdir_in(&dir)?;
    let server = Server::start(data.path(), &["--fsync", "always"]);
    println!(
        "subscribe: {} records of {} B in batches of {} (throughput); {} records/s for {} s in batches of 10 (latency)",
        args.records, args.record_bytes, args.batch_records, args.rate, args.seconds
    );

    // Throughput: preload, then drain.
    let (mut c, shards) = setup(&server, "tput", "tput_sub", 4).await?;
    let n_batches = args.records / args.batch_records;
    for i in 0..n_batches {
        let payloads: Vec<Vec<u8>> = (0..args.batch_records)
            .map(|j| vec![(i + j) as u8; args.record_bytes])
            .collect();
        let records = batch(&format!("k{i}"), &payloads, pb::CompressionType::None);
        c.append(pb::AppendRequest {
            stream_name: "tput".into(),
            shard_id: shards[i % shards.len()],
            records: Some(records),
        })
        .await?;
    }
    let total = n_batches * args.batch_records;
    let t = Instant::now();
    consume(&c, "tput_sub", total, |_| {}).await?;
    let sub_rate = total as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut read = 0usize;
    let mut s = c
        .read_stream(pb::ReadStreamRequest {
            stream_name: "tput".into(),
            until: Some(pb::StreamOffset {
                offset: Some(pb::stream_offset::Offset::SpecialOffset(
                    pb::SpecialOffset::Latest as i32,
                )),
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    while let Some(m) = s.message().await? {
        read += m.received_records.iter().map(|r| decode(r).len()).sum::<usize>();
    }
    anyhow::ensure!(read == total, "ReadStream returned {read} of {total}");
    let read_rate = total as f64 / t.elapsed().as_secs_f64();

    // Latency at a fixed rate: over 4 shards, then into one of many idle ones.
    let (p50, p99) = latency(&server, "lat", 4, &args).await?;
    let (wide50, wide99) = latency(&server, "wide", args.wide_shards, &args).await?;
    println!();
    println!(
        "| {:<52} | {:>12} | {:>9} | {:>9} |",
        "run", "records/s", "p50 ms", "p99 ms"
    );
    println!("|{:-<54}|{:-<14}|{:-<11}|{:-<11}|", "", "", "", "");
    println!(
        "| {:<52} | {:>12.0} | {:>9} | {:>9} |",
        "peer: ReadStream of the same records (no acks)", read_rate, "-", "-"
    );
    println!(
        "| {:<52} | {:>12.0} | {:>9} | {:>9} |",
        format!(
            "subscription, 1 consumer acking ({:.2}x ReadStream)",
            sub_rate / read_rate
        ),
        sub_rate,
        "-",
        "-"
    );
    println!(
        "| {:<52} | {:>12} | {:>9.2} | {:>9.2} |",
        format!("append->delivery at {} records/s (fsync=always)", args.rate),
        "-",
        p50,
        p99
    );
    println!(
        "| {:<52} | {:>12} | {:>9.2} | {:>9.2} |",
        format!("same, 1 busy of {} shards ({:.2}x p50)", args.wide_shards, wide50 / p50),
        "-",
        wide50,
        wide99
    );
    Ok(())
}

/// p50 and p99 append-to-delivery latency (ms) at `args.rate` on a new stream of `shard_count`
/// shards; a stream of more than 4 shards gets appends on its first shard only.
async fn latency(server: &Server, name: &str, shard_count: u32, args: &Args) -> anyhow::Result<(f64, f64)> {
    let sub = format!("{name}_sub");
    let (c2, mut shards) = setup(server, name, &sub, shard_count).await?;
    if shards.len() > 4 {
        shards.truncate(1);
    }
    let per_batch = 10usize;
    let batches = args.rate * args.seconds as usize / per_batch;
    let interval = Duration::from_secs_f64(per_batch as f64 / args.rate as f64);
    let mut producer = c2.clone();
    let stream = name.to_owned();
    let prod = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for i in 0..batches {
            tick.tick().await;
            let stamp = now_us().to_le_bytes().to_vec();
            let payloads: Vec<Vec<u8>> = (0..per_batch).map(|_| stamp.clone()).collect();
            let records = batch(&format!("k{i}"), &payloads, pb::CompressionType::None);
            let req = pb::AppendRequest {
                stream_name: stream.clone(),
                shard_id: shards[i % shards.len()],
                records: Some(records),
            };
            producer.append(req).await.expect("append");
        }
    });
    let mut lat = Vec::with_capacity(batches * per_batch);
    consume(&c2, &sub, batches * per_batch, |p| {
        let sent = u64::from_le_bytes(p[..8].try_into().expect("stamp"));
        lat.push(now_us().saturating_sub(sent));
    })
    .await?;
    prod.await?;
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    Ok((pct(0.5), pct(0.99)))
}
