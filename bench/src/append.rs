//! Append throughput: N writers, each on its own connection, append batches of 1 KiB records as
//! fast as acks come back, against a release `hstream-server` under `--fsync always` and
//! `--fsync interval`. Beside them: `dd` writing the same disk sequentially, with O_DIRECT in
//! 1 MiB blocks (raw bandwidth) and with O_DSYNC in batch-sized blocks (one synchronous write per
//! batch, the limit a non-grouping fsync-per-append design would hit).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hstream_integration_tests::{Server, batch};
use hstream_proto as pb;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Concurrent writers (each with its own gRPC connection).
    #[arg(long, default_value_t = 8)]
    pub(crate) writers: usize,
    /// Records per appended batch.
    #[arg(long, default_value_t = 100)]
    pub(crate) batch_records: usize,
    /// Bytes per record.
    #[arg(long, default_value_t = 1024)]
    pub(crate) record_bytes: usize,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// Shards of the stream.
    #[arg(long, default_value_t = 4)]
    pub(crate) shards: u32,
    /// Directory on the disk under test (default: target/bench).
    #[arg(long)]
    pub(crate) dir: Option<std::path::PathBuf>,
}

impl Args {
    pub fn default_args() -> Args {
        Args {
            writers: 8,
            batch_records: 100,
            record_bytes: 1024,
            seconds: 10,
            shards: 4,
            dir: None,
        }
    }

    /// `--dir`, or `target/bench`, created if missing.
    pub(crate) fn data_dir(&self) -> std::io::Result<std::path::PathBuf> {
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| hstream_integration_tests::repo_root().join("target/bench"));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

pub(crate) struct Run {
    pub(crate) label: String,
    pub(crate) records_per_s: f64,
    pub(crate) mb_per_s: f64,
    pub(crate) batches_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

fn dd(dir: &Path, block: usize, count: usize, oflag: &str) -> anyhow::Result<f64> {
    let file = dir.join("dd.bin");
    let t = Instant::now();
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .arg(format!("bs={block}"))
        .arg(format!("count={count}"))
        .arg(format!("oflag={oflag}"))
        .arg("conv=fsync")
        .output()?;
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&file);
    anyhow::ensure!(
        out.status.success(),
        "dd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((block * count) as f64 / secs / 1e6)
}

async fn measure(args: &Args, dir: &Path, label: &str, flags: &[&str]) -> anyhow::Result<Run> {
    measure_replicated(args, dir, label, flags, 1).await
}

/// One measured run against a server started with `flags`, on a stream of `replicas` copies.
pub(crate) async fn measure_replicated(
    args: &Args,
    dir: &Path,
    label: &str,
    flags: &[&str],
    replicas: u32,
) -> anyhow::Result<Run> {
    let data = tempfile::tempdir_in(dir)?;
    let server = Server::start(data.path(), flags);
    let mut c = server.client().await;
    c.create_stream(pb::Stream {
        stream_name: "bench".into(),
        replication_factor: replicas,
        backlog_duration: 0,
        shard_count: args.shards,
        creation_time: None,
    })
    .await?;
    let shards: Vec<u64> = c
        .list_shards(pb::ListShardsRequest {
            stream_name: "bench".into(),
        })
        .await?
        .into_inner()
        .shards
        .iter()
        .map(|s| s.shard_id)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let mut client = server.client().await;
        let stop = stop.clone();
        let shard = shards[w % shards.len()];
        // Incompressible payloads, built once: the run measures the server, not the encoder.
        let payloads: Vec<Vec<u8>> = (0..args.batch_records)
            .map(|i| {
                (0..args.record_bytes)
                    .map(|j| ((i * 131 + j * 7 + w) % 251) as u8)
                    .collect()
            })
            .collect();
        let records = batch(&format!("w{w}"), &payloads, pb::CompressionType::None);
        tasks.push(tokio::spawn(async move {
            // (completion time, latency) of every append.
            let mut done = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let req = pb::AppendRequest {
                    stream_name: "bench".into(),
                    shard_id: shard,
                    records: Some(records.clone()),
                };
                client.append(req).await.expect("append");
                let now = Instant::now();
                done.push((now, now - t));
            }
            done
        }));
    }
    measured(args, label, "append", stop, tasks).await
}

/// Per-operation (completion time, latency) of every writer.
pub(crate) type Timings = tokio::task::JoinHandle<Vec<(Instant, Duration)>>;

/// Lets the writers warm up for a second, then counts only the operations completed inside
/// the measured window of `args.seconds`; stops the writers and sums up.
pub(crate) async fn measured(
    args: &Args,
    label: &str,
    what: &str,
    stop: Arc<AtomicBool>,
    tasks: Vec<Timings>,
) -> anyhow::Result<Run> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let elapsed = (end - start).as_secs_f64();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(
            t.await?
                .into_iter()
                .filter(|(at, _)| *at >= start && *at <= end)
                .map(|(_, l)| l),
        );
    }
    anyhow::ensure!(!lat.is_empty(), "no {what} completed in the measured window");
    let batches = lat.len();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    let records = batches * args.batch_records;
    Ok(Run {
        label: label.to_owned(),
        records_per_s: records as f64 / elapsed,
        mb_per_s: (records * args.record_bytes) as f64 / elapsed / 1e6,
        batches_per_s: batches as f64 / elapsed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    })
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let dir = args.data_dir()?;
    let batch_bytes = args.batch_records * args.record_bytes;
    println!(
        "append: {} writers, batches of {} x {} B records, {} shards, {} s per run, data in {}",
        args.writers,
        args.batch_records,
        args.record_bytes,
        args.shards,
        args.seconds,
        dir.display()
    );
    let direct = dd(&dir, 1 << 20, 512, "direct")?;
    let dsync_count = 400;
    let dsync = dd(&dir, batch_bytes, dsync_count, "dsync")?;
    let always = measure(&args, &dir, "hstream fsync=always", &["--fsync", "always"]).await?;
    let interval = measure(&args, &dir, "hstream fsync=interval (100 ms)", &["--fsync", "interval"]).await?;

    println!();
    println!(
        "| {:<38} | {:>11} | {:>9} | {:>10} | {:>7} | {:>7} | {:>22} |",
        "run", "records/s", "MB/s", "batches/s", "p50 ms", "p99 ms", "vs limit"
    );
    println!(
        "|{:-<40}|{:-<13}|{:-<11}|{:-<12}|{:-<9}|{:-<9}|{:-<24}|",
        "", "", "", "", "", "", ""
    );
    println!(
        "| {:<38} | {:>11} | {:>9.1} | {:>10} | {:>7} | {:>7} | {:>22} |",
        "disk: dd oflag=direct bs=1M", "-", direct, "-", "-", "-", "limit (bandwidth)"
    );
    println!(
        "| {:<38} | {:>11} | {:>9.1} | {:>10.0} | {:>7} | {:>7} | {:>22} |",
        format!("disk: dd oflag=dsync bs={}K", batch_bytes / 1024),
        "-",
        dsync,
        dsync * 1e6 / batch_bytes as f64,
        "-",
        "-",
        "limit (sync per batch)"
    );
    for (r, limit, name) in [(&always, dsync, "dsync"), (&interval, direct, "direct")] {
        println!(
            "| {:<38} | {:>11.0} | {:>9.1} | {:>10.0} | {:>7.2} | {:>7.2} | {:>22} |",
            r.label,
            r.records_per_s,
            r.mb_per_s,
            r.batches_per_s,
            r.p50_ms,
            r.p99_ms,
            format!("{:.2}x dd {name}", r.mb_per_s / limit)
        );
    }
    println!("\nClient and server share this machine's cores; MB/s counts record payload bytes only.");
    Ok(())
}
