//! The connectors' metrics: a collector that reads every task's progress counters and status at
//! scrape time.

use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::Tasks;
use crate::metrics::{ConstFamily, encode_families};

/// Registered by the connectors service; holds the task table, not the service.
pub(super) struct Live(pub(super) std::sync::Arc<Tasks>);

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connectors")
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_families(&families(&self.0), &mut encoder)
    }
}

const STATES: [&str; 6] = ["NEW", "RUNNING", "STOPPED", "FAILED", "COMPLETED", "DELETED"];

fn families(running: &Tasks) -> Vec<ConstFamily> {
    use MetricType::{Counter as C, Gauge as G};
    let mut records = ConstFamily::new(
        "hstream_connector_records",
        "Records a connector moved (appended by a source, written by a sink)",
        C,
    );
    let mut bytes = ConstFamily::new("hstream_connector_bytes", "Payload bytes a connector moved", C);
    let mut errors = ConstFamily::new(
        "hstream_connector_errors",
        "Failed attempts of a connector by error class",
        C,
    );
    let mut dead_letters = ConstFamily::new(
        "hstream_connector_dead_letters",
        "Records that failed and were tolerated (errors.tolerance=all): dead-lettered or skipped",
        C,
    );
    let mut restarts = ConstFamily::new(
        "hstream_connector_restarts",
        "Restarts of a connector since its last healthy run",
        G,
    );
    let mut state = ConstFamily::new("hstream_connector_state", "1 for a connector's current state", G);
    let mut checkpoint = ConstFamily::new(
        "hstream_connector_checkpoint_age_seconds",
        "Seconds since a connector last stored a checkpoint",
        G,
    );
    let mut lag_bytes = ConstFamily::new(
        "hstream_connector_source_lag_bytes",
        "Bytes of upstream log a source has not taken yet (PostgreSQL WAL)",
        G,
    );
    let mut lag_seconds = ConstFamily::new(
        "hstream_connector_source_lag_seconds",
        "Age of the newest upstream event a source took while behind (MySQL binlog)",
        G,
    );
    let mut inflight = ConstFamily::new(
        "hstream_connector_source_inflight_messages",
        "Messages a source took and has not acknowledged upstream yet (MQTT)",
        G,
    );
    let mut uncheckpointed = ConstFamily::new(
        "hstream_connector_source_uncheckpointed_records",
        "Records a source appended since the last state its upstream gave (Airbyte STATE)",
        G,
    );
    let now = crate::store::now_ms();
    for (name, kind, task) in super::task_list(running) {
        let l = |extra: Option<(&'static str, String)>| {
            let mut v = vec![("connector", name.clone()), ("kind", kind.to_owned())];
            v.extend(extra);
            v
        };
        let p = &task.handle.progress;
        records.add(l(None), p.records.load(Ordering::Relaxed) as f64);
        dead_letters.add(l(None), p.dead_letters.load(Ordering::Relaxed) as f64);
        bytes.add(l(None), p.bytes.load(Ordering::Relaxed) as f64);
        for (i, class) in ["config", "external", "internal", "data"].iter().enumerate() {
            errors.add(
                l(Some(("class", (*class).to_owned()))),
                p.errors[i].load(Ordering::Relaxed) as f64,
            );
        }
        let status = task.handle.status.borrow().clone();
        restarts.add(l(None), f64::from(status.restarts));
        for s in STATES {
            state.add(
                l(Some(("state", s.to_owned()))),
                if status.state.as_str() == s { 1.0 } else { 0.0 },
            );
        }
        let last = p.last_checkpoint_ms.load(Ordering::Relaxed);
        if last > 0 {
            checkpoint.add(l(None), (now - last).max(0) as f64 / 1000.0);
        }
        match *p.lag.lock().expect("lock") {
            Some(hstream_runtime::Lag::Bytes(b)) => lag_bytes.add(l(None), b as f64),
            Some(hstream_runtime::Lag::Seconds(s)) => lag_seconds.add(l(None), s),
            Some(hstream_runtime::Lag::Messages(m)) => inflight.add(l(None), m as f64),
            Some(hstream_runtime::Lag::Records(r)) => uncheckpointed.add(l(None), r as f64),
            None => {}
        }
    }
    vec![
        records,
        bytes,
        errors,
        dead_letters,
        restarts,
        state,
        checkpoint,
        lag_bytes,
        lag_seconds,
        inflight,
        uncheckpointed,
    ]
}
