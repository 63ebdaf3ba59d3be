//! What the benchmarks measuring connectors share.

use std::time::{Duration, Instant};

use hstream_integration_tests::Client;
use hstream_proto as pb;

/// Records a connector has delivered, from its report.
pub fn delivered(conn: &pb::Connector) -> f64 {
    let s = conn.offsets.first().cloned().unwrap_or_default();
    match s.fields.get("deliveredRecords").and_then(|v| v.kind.clone()) {
        Some(prost_types::value::Kind::NumberValue(n)) => n,
        _ => 0.0,
    }
}

/// Children's user+system CPU seconds as bash's `times` prints them (`0m1.234s 0m0.567s`).
pub fn parse_times(line: &str) -> f64 {
    line.split_whitespace()
        .filter_map(|t| {
            let (m, s) = t.trim_end_matches('s').split_once('m')?;
            Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
        })
        .sum()
}

/// Creates source connector `cdc` of `target` and waits until it has delivered `total` records;
/// returns the seconds from creation.
pub async fn drain_source(c: &mut Client, target: &str, config: &serde_json::Value, total: u64) -> anyhow::Result<f64> {
    let t = Instant::now();
    c.create_connector(pb::CreateConnectorRequest {
        name: "cdc".into(),
        r#type: "source".into(),
        target: target.into(),
        config: config.to_string(),
    })
    .await?;
    loop {
        let conn = c
            .get_connector(pb::GetConnectorRequest { name: "cdc".into() })
            .await?
            .into_inner();
        if delivered(&conn) >= total as f64 {
            return Ok(t.elapsed().as_secs_f64());
        }
        anyhow::ensure!(conn.status == "RUNNING", "connector {}", conn.status);
        anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "timed out");
        // A benchmark's progress probe, not a test's synchronisation.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
