//! MQTT: QoS 1 messages through a throw-away Mosquitto into a durable stream by our `mqtt`
//! source (acknowledging each message only once its record is fsynced), beside `mosquitto_sub`
//! (Mosquitto's own C subscriber, QoS 1, writing to /dev/null) receiving the same messages from
//! the same broker in the same run. Both speak MQTT 3.1.1 with persistent sessions, under the
//! broker's in-flight window of 1000.
//!
//! Two scenarios: draining a backlog the broker queued for the session while it was away (the
//! consumer's own capacity), and live, with the publisher running (end to end).

use std::time::{Duration, Instant};

use bytes::Bytes;
use hstream_integration_tests::Server;
use hstream_integration_tests::mosquitto::{self, Mosquitto};
use hstream_proto as pb;
use rumqttc::QoS;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Messages per scenario.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Topics the messages are spread over.
    #[arg(long, default_value_t = 16)]
    topics: usize,
}

impl Args {
    pub fn default_args() -> Args {
        Args {
            messages: 200_000,
            payload: 100,
            topics: 16,
        }
    }
}

fn workload(args: &Args, round: &str) -> Vec<(String, Bytes)> {
    (0..args.messages)
        .map(|i| {
            let mut p = format!("{round}:{i}:").into_bytes();
            p.resize(args.payload.max(p.len()), b'x');
            (format!("bench/{round}/{}", i % args.topics), Bytes::from(p))
        })
        .collect()
}

/// Runs `mosquitto_sub` until it received `count` messages of session `id`; returns (seconds,
/// CPU seconds) of the process.
fn mosquitto_sub(port: u16, id: &str, count: usize) -> anyhow::Result<(f64, f64)> {
    let script =
        format!("mosquitto_sub -h 127.0.0.1 -p {port} -i {id} -c -q 1 -t 'bench/#' -C {count} > /dev/null && times");
    let t = Instant::now();
    let o = std::process::Command::new("bash").arg("-c").arg(&script).output()?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        o.status.success(),
        "mosquitto_sub: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let times = String::from_utf8_lossy(&o.stdout);
    Ok((secs, times.lines().nth(1).map(crate::cdc::parse_times).unwrap_or(0.0)))
}

/// Makes session `id` exist with its subscription, then leaves it.
fn mosquitto_sub_session(port: u16, id: &str) -> anyhow::Result<()> {
    let o = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-i",
            id,
            "-c",
            "-q",
            "1",
            "-t",
            "bench/#",
            "-E",
        ])
        .output()?;
    anyhow::ensure!(
        o.status.success(),
        "mosquitto_sub -E: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

async fn delivered(c: &mut hstream_integration_tests::Client) -> anyhow::Result<f64> {
    let conn = c
        .get_connector(pb::GetConnectorRequest { name: "mq".into() })
        .await?
        .into_inner();
    Ok(crate::cdc::delivered(&conn))
}

/// Waits until the source delivered `target` records in all; returns the seconds since `t`.
async fn wait_delivered(c: &mut hstream_integration_tests::Client, target: f64, t: Instant) -> anyhow::Result<f64> {
    loop {
        if delivered(c).await? >= target {
            return Ok(t.elapsed().as_secs_f64());
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "timed out");
        // A benchmark's progress probe, not a test's synchronisation.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn set_paused(c: &mut hstream_integration_tests::Client, paused: bool) -> anyhow::Result<()> {
    let want = if paused { "STOPPED" } else { "RUNNING" };
    if paused {
        c.pause_connector(pb::PauseConnectorRequest { name: "mq".into() })
            .await?;
    } else {
        c.resume_connector(pb::ResumeConnectorRequest { name: "mq".into() })
            .await?;
    }
    let t = Instant::now();
    loop {
        let s = c
            .get_connector(pb::GetConnectorRequest { name: "mq".into() })
            .await?
            .into_inner()
            .status;
        if s == want {
            return Ok(());
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "connector stayed {s}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    println!(
        "mqtt: {} QoS 1 messages of {} bytes over {} topics, Mosquitto (in-flight window 1000), MQTT 3.1.1",
        args.messages, args.payload, args.topics
    );
    let broker = Mosquitto::start();
    let n = args.messages;
    let out_dir = hstream_integration_tests::repo_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let data = tempfile::tempdir_in(&out_dir)?;
    let server = Server::start(data.path(), &["--fsync", "always"]);
    let mut c = server.client().await;
    let config = serde_json::json!({
        "stream": "mqtt", "host": "127.0.0.1", "port": broker.port, "topic": "bench/#",
        "protocol": "3.1.1", "client_id": "ours",
    });
    c.create_connector(pb::CreateConnectorRequest {
        name: "mq".into(),
        r#type: "source".into(),
        target: "mqtt".into(),
        config: config.to_string(),
    })
    .await?;
    // Paused only once subscribed: the broker queues for the session from then on.
    let t = Instant::now();
    while !hstream_integration_tests::connector_report(&c, "mq").await["progress"]
        .as_str()
        .is_some_and(|p| p.contains("subscribed to"))
    {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "the source did not subscribe");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    set_paused(&mut c, true).await?;
    mosquitto_sub_session(broker.port, "peer")?;

    // Backlog: both sessions get the messages queued while away, then drain them.
    let t = Instant::now();
    mosquitto::publish(broker.port, "pub-backlog", workload(&args, "b"), QoS::AtLeastOnce).await;
    let publish_secs = t.elapsed().as_secs_f64();
    let (peer_secs, peer_cpu) = mosquitto_sub(broker.port, "peer", n)?;
    let base = delivered(&mut c).await?;
    let cpu0 = server.cpu_seconds();
    let t = Instant::now();
    set_paused(&mut c, false).await?;
    let ours_secs = wait_delivered(&mut c, base + n as f64, t).await?;
    let ours_cpu = server.cpu_seconds() - cpu0;
    let us = |cpu: f64| cpu * 1e6 / n as f64;
    println!(
        "  publisher alone (QoS 1, acked by the broker): {:9.0} msg/s",
        n as f64 / publish_secs
    );
    println!("  backlog drain:");
    println!(
        "    mosquitto_sub -> /dev/null   : {peer_secs:6.2} s {:9.0} msg/s  client CPU {:.2} us/msg",
        n as f64 / peer_secs,
        us(peer_cpu)
    );
    println!(
        "    hstream mqtt -> durable stream: {ours_secs:6.2} s {:9.0} msg/s  server CPU {:.2} us/msg (fsync=always)",
        n as f64 / ours_secs,
        us(ours_cpu)
    );
    println!(
        "    ratio ours/mosquitto_sub: {:.2}x msg/s, {:.2}x CPU per message",
        peer_secs / ours_secs,
        ours_cpu / peer_cpu.max(1e-9)
    );

    // Live: the publisher runs while each consumer takes the messages, one consumer at a time
    // (the other is paused and then drops its queued copies: a new topic per round).
    let port = broker.port;
    set_paused(&mut c, true).await?;
    let t = Instant::now();
    let peer = tokio::task::spawn_blocking(move || mosquitto_sub(port, "peer", n));
    // mosquitto_sub's session is subscribed already: publish right away.
    mosquitto::publish(broker.port, "pub-live-peer", workload(&args, "lp"), QoS::AtLeastOnce).await;
    peer.await??;
    let peer_live = t.elapsed().as_secs_f64();
    // Ours takes what was queued for it meanwhile first (not timed).
    let base = delivered(&mut c).await?;
    set_paused(&mut c, false).await?;
    wait_delivered(&mut c, base + n as f64, Instant::now()).await?;
    let base = delivered(&mut c).await?;
    let t = Instant::now();
    mosquitto::publish(broker.port, "pub-live-ours", workload(&args, "lo"), QoS::AtLeastOnce).await;
    let ours_live = wait_delivered(&mut c, base + n as f64, t).await?;
    println!("  live (publisher running, first publish to last message taken):");
    println!(
        "    mosquitto_sub -> /dev/null   : {peer_live:6.2} s {:9.0} msg/s",
        n as f64 / peer_live
    );
    println!(
        "    hstream mqtt -> durable stream: {ours_live:6.2} s {:9.0} msg/s",
        n as f64 / ours_live
    );
    println!("    ratio ours/mosquitto_sub: {:.2}x msg/s", peer_live / ours_live);
    // Ours took the backlog, the peer's live round (queued while paused) and its own.
    let stored = hstream_integration_tests::count_stream_records(&c, "mqtt").await;
    anyhow::ensure!(stored >= 3 * n, "the stream holds {stored} records, want {}", 3 * n);
    println!("  checked: {stored} records in the stream");
    Ok(())
}
