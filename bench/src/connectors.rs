//! generator → stream → blackhole at full speed, in-process: records/s end to end and the
//! server's CPU per record (all of it: runtime, encoding, log store, reading back), beside the
//! raw append path measured in the same run with the same record sizes.

use std::time::{Duration, Instant};

use hstream_integration_tests::{Server, batch};
use hstream_proto as pb;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Records the generator produces.
    #[arg(long, default_value_t = 2_000_000)]
    records: u64,
    /// Records per generator batch.
    #[arg(long, default_value_t = 1000)]
    batch_size: u32,
    /// Payload bytes per record (bytes shape).
    #[arg(long, default_value_t = 100)]
    payload_bytes: u32,
}

impl Args {
    pub fn default_args() -> Args {
        Args {
            records: 2_000_000,
            batch_size: 1000,
            payload_bytes: 100,
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let dir = hstream_integration_tests::repo_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let data = tempfile::tempdir_in(&dir)?;
    let server = Server::start(data.path(), &["--fsync", "always"]);
    let mut c = server.client().await;
    println!(
        "connectors: generator -> blackhole, {} records of {} B in batches of {}, fsync=always",
        args.records, args.payload_bytes, args.batch_size
    );
    c.create_stream(pb::Stream {
        stream_name: "bench".into(),
        replication_factor: 1,
        shard_count: 1,
        ..Default::default()
    })
    .await?;
    let sink = serde_json::json!({"stream": "bench"});
    c.create_connector(pb::CreateConnectorRequest {
        name: "hole".into(),
        r#type: "sink".into(),
        target: "blackhole".into(),
        config: sink.to_string(),
    })
    .await?;
    let cpu0 = server.cpu_seconds();
    let t = Instant::now();
    let source = serde_json::json!({"stream": "bench", "count": args.records, "rate": 0, "keys": 16, "batchSize": args.batch_size,
                                    "shape": "bytes", "payloadBytes": args.payload_bytes});
    c.create_connector(pb::CreateConnectorRequest {
        name: "gen".into(),
        r#type: "source".into(),
        target: "generator".into(),
        config: source.to_string(),
    })
    .await?;
    loop {
        let hole = c
            .get_connector(pb::GetConnectorRequest { name: "hole".into() })
            .await?
            .into_inner();
        if crate::cdc::delivered(&hole) >= args.records as f64 {
            break;
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "pipeline did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds() - cpu0;
    let pipeline_rate = args.records as f64 / secs;
    let us_per_record = cpu * 1e6 / args.records as f64;

    // Peer: the same records appended over gRPC by one client (no runtime), same server.
    c.create_stream(pb::Stream {
        stream_name: "peer".into(),
        replication_factor: 1,
        shard_count: 1,
        ..Default::default()
    })
    .await?;
    let shard = c
        .list_shards(pb::ListShardsRequest {
            stream_name: "peer".into(),
        })
        .await?
        .into_inner()
        .shards[0]
        .shard_id;
    let payloads: Vec<Vec<u8>> = (0..args.batch_size)
        .map(|i| vec![i as u8; args.payload_bytes as usize])
        .collect();
    let records = batch("k", &payloads, pb::CompressionType::None);
    let peer_batches = (args.records / args.batch_size as u64).min(500);
    let cpu1 = server.cpu_seconds();
    let t = Instant::now();
    for _ in 0..peer_batches {
        c.append(pb::AppendRequest {
            stream_name: "peer".into(),
            shard_id: shard,
            records: Some(records.clone()),
        })
        .await?;
    }
    let peer_secs = t.elapsed().as_secs_f64();
    let peer_n = peer_batches as f64 * args.batch_size as f64;
    let peer_us = (server.cpu_seconds() - cpu1) * 1e6 / peer_n;

    println!();
    println!("| {:<46} | {:>12} | {:>18} |", "run", "records/s", "server CPU us/rec");
    println!("|{:-<48}|{:-<14}|{:-<20}|", "", "", "");
    println!(
        "| {:<46} | {:>12.0} | {:>18.3} |",
        "peer: gRPC Append, one client, no runtime",
        peer_n / peer_secs,
        peer_us
    );
    println!(
        "| {:<46} | {:>12.0} | {:>18.3} |",
        format!(
            "generator -> stream -> blackhole ({:.2}x peer)",
            pipeline_rate / (peer_n / peer_secs)
        ),
        pipeline_rate,
        us_per_record
    );
    println!("\nThe pipeline row counts each record once, though the server writes and reads it back.");

    // Exactly-once appends on and off (decision 035): the generator alone into a stream, the
    // two settings taking turns so that drift in the machine hits both alike.
    let mut rates: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for round in 0..2 {
        for (i, on) in [false, true].into_iter().enumerate() {
            let name = format!("eo{round}{i}");
            let source = serde_json::json!({"stream": name, "count": args.records, "rate": 0, "keys": 16,
                                            "batchSize": args.batch_size, "shape": "bytes",
                                            "payloadBytes": args.payload_bytes, "exactly.once": on});
            let cpu0 = server.cpu_seconds();
            let t = Instant::now();
            c.create_connector(pb::CreateConnectorRequest {
                name: name.clone(),
                r#type: "source".into(),
                target: "generator".into(),
                config: source.to_string(),
            })
            .await?;
            loop {
                let g = c
                    .get_connector(pb::GetConnectorRequest { name: name.clone() })
                    .await?
                    .into_inner();
                if g.status == "COMPLETED" {
                    break;
                }
                anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "source did not finish");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let secs = t.elapsed().as_secs_f64();
            let cpu = server.cpu_seconds() - cpu0;
            rates[i].push((args.records as f64 / secs, cpu * 1e6 / args.records as f64));
        }
    }
    let best = |v: &[(f64, f64)]| {
        v.iter()
            .copied()
            .fold((0.0f64, f64::MAX), |a, b| (a.0.max(b.0), a.1.min(b.1)))
    };
    let (off, on) = (best(&rates[0]), best(&rates[1]));
    println!();
    println!(
        "| {:<46} | {:>12} | {:>18} |",
        "generator -> stream (best of 2)", "records/s", "server CPU us/rec"
    );
    println!("|{:-<48}|{:-<14}|{:-<20}|", "", "", "");
    println!(
        "| {:<46} | {:>12.0} | {:>18.3} |",
        "exactly.once = false (at-least-once)", off.0, off.1
    );
    println!(
        "| {:<46} | {:>12.0} | {:>18.3} |",
        format!("exactly.once = true ({:.3}x off)", on.0 / off.0),
        on.0,
        on.1
    );
    Ok(())
}
