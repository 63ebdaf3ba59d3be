//! A persistent query (filter + projection) over a stream of JSON records, beside the bare
//! subscription read of the same stream in the same run: records/s and the server's CPU per
//! record. The query reads in process, evaluates every record, and appends the matching half
//! durably; the subscription only reads and ships the records to a client.

use std::time::{Duration, Instant};

use hstream_integration_tests::Server;
use hstream_proto as pb;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// JSON records in the stream read.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
}

impl Args {
    pub fn default_args() -> Args {
        Args { records: 1_000_000 }
    }
}

const QUERY: &str = "CREATE STREAM evens AS SELECT key, seq, n * 2 AS twice FROM src WHERE n % 2 = 0;";

/// Records query `id` has read, from the server's metrics (its task's record counter).
fn query_records_read(server: &Server, id: &str) -> f64 {
    let text = hstream_integration_tests::http_blocking(server.http, "GET", "/metrics", "").unwrap_or_default();
    let label = format!("connector=\"query:{id}\"");
    text.lines()
        .filter(|l| l.starts_with("hstream_connector_records") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .next()
        .unwrap_or(0.0)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let dir = hstream_integration_tests::repo_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let data = tempfile::tempdir_in(&dir)?;
    let server = Server::start(data.path(), &["--fsync", "always"]);
    let mut c = server.client().await;
    let n = args.records;
    println!("queries: {n} JSON records ({{key, seq, n, data}}, 16 keys); query: {QUERY}");
    let source =
        serde_json::json!({"stream": "src", "count": n, "rate": 0, "keys": 16, "batchSize": 1000, "payloadBytes": 32});
    c.create_connector(pb::CreateConnectorRequest {
        name: "gen".into(),
        r#type: "source".into(),
        target: "generator".into(),
        config: source.to_string(),
    })
    .await?;
    let t = Instant::now();
    loop {
        let g = c
            .get_connector(pb::GetConnectorRequest { name: "gen".into() })
            .await?
            .into_inner();
        if g.status == "COMPLETED" {
            break;
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "the generator did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Peer: the bare subscription read of the same records, acknowledged as they come.
    c.create_subscription(pb::Subscription {
        subscription_id: "bare".into(),
        stream_name: "src".into(),
        ack_timeout_seconds: 600,
        max_unacked_records: 100_000,
        offset: pb::SpecialOffset::Earliest as i32,
        creation_time: None,
    })
    .await?;
    let cpu0 = server.cpu_seconds();
    let t = Instant::now();
    crate::subscribe::consume(&c, "bare", n as usize, |_| {}).await?;
    let read_secs = t.elapsed().as_secs_f64();
    let read_us = (server.cpu_seconds() - cpu0) * 1e6 / n as f64;

    // The query: from its creation until it has read every record (its results durable).
    let cpu0 = server.cpu_seconds();
    let t = Instant::now();
    c.create_query(pb::CreateQueryRequest {
        sql: QUERY.into(),
        query_name: "q".into(),
    })
    .await?;
    loop {
        if query_records_read(&server, "q") >= n as f64 {
            break;
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "the query did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let query_secs = t.elapsed().as_secs_f64();
    let query_us = (server.cpu_seconds() - cpu0) * 1e6 / n as f64;
    let out = hstream_integration_tests::count_stream_records(&c, "evens").await;
    anyhow::ensure!(
        out as u64 == n.div_ceil(2),
        "the query wrote {out} records, not {}",
        n.div_ceil(2)
    );

    println!();
    println!(
        "| {:<52} | {:>12} | {:>18} |",
        "run (records read)", "records/s", "server CPU us/rec"
    );
    println!("|{:-<54}|{:-<14}|{:-<20}|", "", "", "");
    println!(
        "| {:<52} | {:>12.0} | {:>18.3} |",
        "peer: bare subscription read (StreamingFetch, acked)",
        n as f64 / read_secs,
        read_us
    );
    println!(
        "| {:<52} | {:>12.0} | {:>18.3} |",
        format!("filter + projection query ({:.2}x peer)", read_secs / query_secs),
        n as f64 / query_secs,
        query_us
    );
    println!(
        "\nThe query also writes its {out} results durably (fsync=always); the read ships every record to a client."
    );
    Ok(())
}
