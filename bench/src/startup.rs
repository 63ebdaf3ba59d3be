//! Start-up at scale: how long a release `hstream-server` takes from spawn to serving, its RSS
//! and its open files, over (a) a data directory holding 1 GB and 10 GB in a few shards and (b)
//! 10,000 streams with 100,000 shards in total. Beside each: the same directory's files walked
//! and every segment header read by `find`/`head` (the floor of any recovery that looks at every
//! file), and an empty data directory's start (the fixed cost).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hstream_integration_tests::{Server, batch, make_stream};
use hstream_proto as pb;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Streams of the many-streams run.
    #[arg(long, default_value_t = 10_000)]
    streams: u32,
    /// Shards of each of those streams.
    #[arg(long, default_value_t = 10)]
    shards_per_stream: u32,
    /// Stored gigabytes of the big-data runs.
    #[arg(long, value_delimiter = ',', default_values_t = [1u64, 10])]
    gigabytes: Vec<u64>,
    /// Directory on the disk under test (default: target/bench).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

impl Args {
    pub fn default_args() -> Args {
        Args {
            streams: 10_000,
            shards_per_stream: 10,
            gigabytes: vec![1, 10],
            dir: None,
        }
    }
}

struct Start {
    seconds: f64,
    rss_mib: f64,
    fds: usize,
}

/// Restarts `server` (stopped cleanly first) and measures the new process.
async fn restart(server: &mut Server) -> Start {
    server.terminate();
    let t = Instant::now();
    server.restart();
    let seconds = t.elapsed().as_secs_f64();
    // Let lazily started work settle before reading memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Start {
        seconds,
        rss_mib: server.rss_bytes() as f64 / (1 << 20) as f64,
        fds: server.open_fds(),
    }
}

/// Seconds to list every file under `dir` and read the first 16 bytes (the header) of each
/// segment, with a cold page cache where the kernel lets us drop it.
fn walk_floor(dir: &Path) -> f64 {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    let t = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find {} -name '*.seg' -print0 | xargs -0 -n 512 head -qc 16 | wc -c",
            dir.display()
        ))
        .output()
        .expect("find");
    assert!(out.status.success());
    t.elapsed().as_secs_f64()
}

fn row(label: &str, s: &Start, floor: Option<f64>) {
    let vs = floor.map_or("-".to_string(), |f| {
        format!("{:.2} s ({:.1}x)", f, s.seconds / f.max(1e-3))
    });
    println!(
        "| {:<44} | {:>9.2} | {:>8.1} | {:>7} | {:>22} |",
        label, s.seconds, s.rss_mib, s.fds, vs
    );
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| hstream_integration_tests::repo_root().join("target/bench"));
    std::fs::create_dir_all(&dir)?;
    println!(
        "startup: release server, clean stop then start; {} streams x {} shards; {:?} GB stored; data in {}",
        args.streams,
        args.shards_per_stream,
        args.gigabytes,
        dir.display()
    );
    let mut rows = Vec::new();

    let empty = tempfile::tempdir_in(&dir)?;
    let mut server = Server::start(empty.path(), &[]);
    rows.push(("empty data directory".to_string(), restart(&mut server).await, None));
    drop(server);

    for &gb in &args.gigabytes {
        let data = tempfile::tempdir_in(&dir)?;
        let mut server = Server::start(data.path(), &["--fsync", "never"]);
        let mut c = server.client().await;
        let shards = make_stream(&mut c, "big", 4).await;
        // Batches of 100 x 1 KiB incompressible records, as the append bench writes.
        let payloads: Vec<Vec<u8>> = (0..100)
            .map(|i| (0..1024).map(|j| ((i * 131 + j * 7) % 251) as u8).collect())
            .collect();
        let records = batch("k", &payloads, pb::CompressionType::None);
        let per_batch = records.payload.len() as u64;
        let batches = gb * 1_000_000_000 / per_batch;
        let mut writers = Vec::new();
        for w in 0..4u64 {
            let mut c = server.client().await;
            let (records, shard) = (records.clone(), shards[w as usize % shards.len()]);
            writers.push(tokio::spawn(async move {
                for _ in 0..batches / 4 {
                    c.append(pb::AppendRequest {
                        stream_name: "big".into(),
                        shard_id: shard,
                        records: Some(records.clone()),
                    })
                    .await
                    .expect("append");
                }
            }));
        }
        for w in writers {
            w.await?;
        }
        let start = restart(&mut server).await;
        let floor = walk_floor(data.path());
        rows.push((format!("{gb} GB in 4 shards ({batches} batches)"), start, Some(floor)));
        drop(server);
    }

    let data = tempfile::tempdir_in(&dir)?;
    let mut server = Server::start(data.path(), &[]);
    let created = Instant::now();
    let mut makers = Vec::new();
    for w in 0..8u32 {
        let mut c = server.client().await;
        let (streams, per) = (args.streams, args.shards_per_stream);
        makers.push(tokio::spawn(async move {
            for i in (w..streams).step_by(8) {
                c.create_stream(pb::Stream {
                    stream_name: format!("s{i}"),
                    replication_factor: 1,
                    backlog_duration: 0,
                    shard_count: per,
                    creation_time: None,
                })
                .await
                .expect("create stream");
            }
        }));
    }
    for m in makers {
        m.await?;
    }
    let total = args.streams * args.shards_per_stream;
    println!(
        "created {} streams with {} shards in {:.1} s",
        args.streams,
        total,
        created.elapsed().as_secs_f64()
    );
    let start = restart(&mut server).await;
    let floor = walk_floor(data.path());
    rows.push((
        format!("{} streams, {} shards", args.streams, total),
        start,
        Some(floor),
    ));
    drop(server);

    println!();
    println!(
        "| {:<44} | {:>9} | {:>8} | {:>7} | {:>22} |",
        "data directory", "start s", "RSS MiB", "fds", "find+read headers"
    );
    println!("|{:-<46}|{:-<11}|{:-<10}|{:-<9}|{:-<24}|", "", "", "", "", "");
    for (label, s, floor) in &rows {
        row(label, s, *floor);
    }
    Ok(())
}
