//! Appends on the JetStream store: the same writers, batches and records as the append bench,
//! against a server on `--store nats://` with one NATS server (R1) and a three-node cluster
//! (R3), each beside a bare async-nats JetStream publisher doing the same (one message per
//! batch, the same concurrency, each writer waiting for its ack) to the same servers, and
//! beside the local store. The bare publisher is the limit: goal ≥ 0.9× it. One 10 s run on
//! a 2-core machine shared by client, server and NATS varies by a third from one run to the
//! next, so each pair runs [`ROUNDS`] times, alternating, and the medians are compared.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use hstream_integration_tests::nats::Nats;

use crate::append::{Args, Run, measure_replicated, measured};

/// Runs of each pair (hstream, bare publisher), alternating.
const ROUNDS: usize = 3;

/// `args.writers` publishers, each waiting for JetStream's ack before its next batch-sized
/// message, on a stream of `replicas` copies per writer shard (like the server's shards);
/// `round` names a fresh set of streams.
async fn bare(args: &Args, nats: &Nats, label: &str, replicas: usize, round: usize) -> anyhow::Result<Run> {
    let client = async_nats::connect(nats.client.to_string()).await?;
    let js = async_nats::jetstream::new(client);
    let shards = args.shards as usize;
    for s in 0..shards {
        js.create_stream(async_nats::jetstream::stream::Config {
            name: format!("BARE{replicas}_{round}_{s}"),
            subjects: vec![format!("bare{replicas}.{round}.{s}")],
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
    }
    let payload: bytes::Bytes = (0..args.batch_records * args.record_bytes)
        .map(|j| (j * 7 % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        // Each writer its own connection, as each hstream writer has its own gRPC channel.
        let js = async_nats::jetstream::new(async_nats::connect(nats.client.to_string()).await?);
        let (stop, payload, subject) = (
            stop.clone(),
            payload.clone(),
            format!("bare{replicas}.{round}.{}", w % shards),
        );
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                js.publish(subject.clone(), payload.clone())
                    .await
                    .expect("publish")
                    .await
                    .expect("ack");
                let now = Instant::now();
                done.push((now, now - t));
            }
            done
        }));
    }
    measured(args, label, "publish", stop, tasks).await
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let dir = args.data_dir()?;
    println!(
        "jetstream: {} writers, batches of {} x {} B records, {} shards, {} s per run; nats-server {}",
        args.writers,
        args.batch_records,
        args.record_bytes,
        args.shards,
        args.seconds,
        String::from_utf8_lossy(
            &std::process::Command::new("nats-server")
                .arg("--version")
                .output()?
                .stdout
        )
        .trim()
    );
    let local = measure_replicated(&args, &dir, "hstream, local store (fsync always)", &[], 1).await?;
    let one = Nats::start().await;
    let (r1, b1) = pairs(&args, &dir, &one, 1).await?;
    drop(one);
    let three = Nats::start_cluster(3).await;
    let (r3, b3) = pairs(&args, &dir, &three, 3).await?;
    drop(three);

    println!();
    println!(
        "| {:<38} | {:>11} | {:>15} | {:>9} | {:>7} | {:>7} | {:>16} |",
        "run (median of rounds)", "records/s", "range", "MB/s", "p50 ms", "p99 ms", "vs bare"
    );
    println!(
        "|{:-<40}|{:-<13}|{:-<17}|{:-<11}|{:-<9}|{:-<9}|{:-<18}|",
        "", "", "", "", "", "", ""
    );
    let local = vec![local];
    for (runs, peer) in [
        (&local, None),
        (&b1, None),
        (&r1, Some(&b1)),
        (&b3, None),
        (&r3, Some(&b3)),
    ] {
        let r = median(runs);
        let (lo, hi) = runs.iter().fold((f64::MAX, 0f64), |(lo, hi), r| {
            (lo.min(r.records_per_s), hi.max(r.records_per_s))
        });
        println!(
            "| {:<38} | {:>11.0} | {:>15} | {:>9.1} | {:>7.2} | {:>7.2} | {:>16} |",
            r.label,
            r.records_per_s,
            format!("{:.0}k-{:.0}k", lo / 1e3, hi / 1e3),
            r.mb_per_s,
            r.p50_ms,
            r.p99_ms,
            peer.map_or("-".to_owned(), |p| format!(
                "{:.2}x",
                r.records_per_s / median(p).records_per_s
            ))
        );
    }
    println!(
        "\nOne machine: client, hstream-server and every NATS server share its cores. nats-server 2.9 \
         acknowledges before its disk write (no fsync); the local store fsyncs before every ack."
    );
    Ok(())
}

/// [`ROUNDS`] runs each of the server on `nats` (streams of `replicas` copies) and of the bare
/// publisher, alternating, each round on fresh JetStream streams.
async fn pairs(args: &Args, dir: &std::path::Path, nats: &Nats, replicas: u32) -> anyhow::Result<(Vec<Run>, Vec<Run>)> {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let nodes = if replicas == 1 {
        "".to_owned()
    } else {
        format!(" ({replicas} nodes)")
    };
    for round in 0..ROUNDS {
        let uri = nats.uri(&format!("bench{round}"));
        ours.push(
            measure_replicated(
                args,
                dir,
                &format!("hstream on JetStream R{replicas}{nodes}"),
                &["--store", uri.as_str()],
                replicas,
            )
            .await?,
        );
        theirs.push(
            bare(
                args,
                nats,
                &format!("bare async-nats publisher R{replicas}"),
                replicas as usize,
                round,
            )
            .await?,
        );
    }
    Ok((ours, theirs))
}

/// The run with the median throughput.
fn median(runs: &[Run]) -> &Run {
    let mut sorted: Vec<&Run> = runs.iter().collect();
    sorted.sort_by(|a, b| a.records_per_s.total_cmp(&b.records_per_s));
    sorted[sorted.len() / 2]
}
