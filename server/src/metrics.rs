//! Prometheus metrics, served as OpenMetrics text at `GET /metrics` on the REST port.
//!
//! Names follow `hstream_<area>_<name>_<unit>[_total]`; labels are bounded (stream,
//! subscription and connector names, error class, state). Two kinds of source:
//! - instruments updated where things happen: appends per stream (records, bytes, latency);
//! - a collector that reads the live state at scrape time: connectors (the runtime's progress
//!   counters, state, restarts, errors, checkpoint age, source lag), subscriptions (delivered,
//!   acked, redelivered, backlog), the process (CPU, memory, open files) and the build;
//! - the store's own metrics (`hstream_store_*`: fsync latency, bytes on disk), which it
//!   registers itself (`Store::register_metrics`).
//!
//! `METRICS` (the file `server/metrics.txt`) lists every metric name; a test fails when one of
//! them is missing from a scrape.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What the scrape-time collector reads: the running connectors and subscriptions. The service
/// implements it; this module does not know the service.
pub trait LiveState: Send + Sync {
    fn connectors(&self) -> &crate::connectors::Connectors;
    fn subscriptions(&self) -> &crate::subscription::Registry;
}

/// Every metric this server exposes, one name per line (as scraped: counters with `_total`).
pub const METRICS: &str = include_str!("../metrics.txt");

/// Latency buckets: 50 µs to ~52 s, doubling.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 21))
}

type StreamLabels = Vec<(&'static str, String)>;
type LatencyFamily = Family<StreamLabels, Histogram, fn() -> Histogram>;

/// The instruments updated on the request paths.
pub struct Metrics {
    registry: Registry,
    appended_records: Family<StreamLabels, Counter>,
    appended_bytes: Family<StreamLabels, Counter>,
    append_latency: LatencyFamily,
}

impl Metrics {
    pub fn new(ctx: Weak<dyn LiveState>, store: &dyn crate::store::Store) -> Metrics {
        let mut registry = Registry::default();
        let appended_records = Family::<StreamLabels, Counter>::default();
        let appended_bytes = Family::<StreamLabels, Counter>::default();
        let append_latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "hstream_stream_appended_records",
            "Records appended to a stream",
            appended_records.clone(),
        );
        registry.register(
            "hstream_stream_appended_bytes",
            "Bytes of stored batches appended to a stream",
            appended_bytes.clone(),
        );
        registry.register(
            "hstream_stream_append_latency_seconds",
            "Time from an append's arrival at the store to its durable acknowledgement",
            append_latency.clone(),
        );
        store.register_metrics(&mut registry);
        registry.register_collector(Box::new(Live { ctx }));
        Metrics {
            registry,
            appended_records,
            appended_bytes,
            append_latency,
        }
    }

    /// Records one durable append of `records` records (`bytes` stored) to `stream`.
    pub fn appended(&self, stream: &str, records: u64, bytes: u64, took: Duration) {
        let labels = vec![("stream", stream.to_owned())];
        self.appended_records.get_or_create(&labels).inc_by(records);
        self.appended_bytes.get_or_create(&labels).inc_by(bytes);
        self.append_latency.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Forgets a deleted stream's series.
    pub fn stream_deleted(&self, stream: &str) {
        let labels = vec![("stream", stream.to_owned())];
        self.appended_records.remove(&labels);
        self.appended_bytes.remove(&labels);
        self.append_latency.remove(&labels);
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Reads the live state at scrape time.
struct Live {
    ctx: Weak<dyn LiveState>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

/// One metric family of values read at scrape time.
struct ConstFamily {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    rows: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl ConstFamily {
    fn new(name: &'static str, help: &'static str, kind: MetricType) -> Self {
        ConstFamily {
            name,
            help,
            kind,
            rows: Vec::new(),
        }
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, v: f64) {
        self.rows.push((labels, v));
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = encoder.encode_descriptor(self.name, self.help, None, self.kind)?;
        for (labels, v) in &self.rows {
            let e = m.encode_family(labels)?;
            match self.kind {
                MetricType::Counter => ConstCounter::new(*v).encode(e)?,
                _ => ConstGauge::new(*v).encode(e)?,
            }
        }
        Ok(())
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut families = Vec::new();
        if let Some(ctx) = self.ctx.upgrade() {
            families.extend(connectors(ctx.connectors()));
            families.extend(subscriptions(ctx.subscriptions()));
        }
        families.extend(process());
        for f in &families {
            f.encode(&mut encoder)?;
        }
        let info = encoder.encode_descriptor("hstream_build", "Version of this server", None, MetricType::Info)?;
        let labels = vec![
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            ("commit", option_env!("HSTREAM_COMMIT").unwrap_or("unknown").to_owned()),
        ];
        prometheus_client::metrics::info::Info::new(labels).encode(info)?;
        Ok(())
    }
}

const STATES: [&str; 6] = ["NEW", "RUNNING", "STOPPED", "FAILED", "COMPLETED", "DELETED"];

fn connectors(running: &crate::connectors::Connectors) -> Vec<ConstFamily> {
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
    for (name, kind, task) in running.tasks() {
        let l = |extra: Option<(&'static str, String)>| {
            let mut v = vec![("connector", name.clone()), ("kind", kind.to_owned())];
            v.extend(extra);
            v
        };
        let p = &task.handle.progress;
        records.add(l(None), p.records.load(Ordering::Relaxed) as f64);
        bytes.add(l(None), p.bytes.load(Ordering::Relaxed) as f64);
        for (i, class) in ["config", "external", "internal"].iter().enumerate() {
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
        restarts,
        state,
        checkpoint,
        lag_bytes,
        lag_seconds,
        inflight,
        uncheckpointed,
    ]
}

fn subscriptions(running: &crate::subscription::Registry) -> Vec<ConstFamily> {
    use MetricType::{Counter as C, Gauge as G};
    let mut delivered = ConstFamily::new("hstream_subscription_delivered_records", "Records sent to consumers", C);
    let mut acked = ConstFamily::new(
        "hstream_subscription_acked_records",
        "Records consumers acknowledged",
        C,
    );
    let mut redelivered = ConstFamily::new(
        "hstream_subscription_redelivered_records",
        "Records sent again (ack timeout or a consumer leaving)",
        C,
    );
    let mut backlog = ConstFamily::new(
        "hstream_subscription_backlog_batches",
        "Stored batches between a subscription's committed position and the tail",
        G,
    );
    let mut backlog_records = ConstFamily::new(
        "hstream_subscription_backlog_records",
        "Records between a subscription's committed position and the tail",
        G,
    );
    for (id, h) in running.all() {
        let l = vec![("subscription", id), ("stream", h.meta.stream.clone())];
        backlog_records.add(l.clone(), h.stats.backlog_records() as f64);
        delivered.add(l.clone(), h.stats.delivered.load(Ordering::Relaxed) as f64);
        acked.add(l.clone(), h.stats.acked.load(Ordering::Relaxed) as f64);
        redelivered.add(l.clone(), h.stats.redelivered.load(Ordering::Relaxed) as f64);
        backlog.add(l, h.stats.backlog() as f64);
    }
    vec![delivered, acked, redelivered, backlog, backlog_records]
}

/// CPU, memory and open files of this process, from /proc.
fn process() -> Vec<ConstFamily> {
    use MetricType::{Counter as C, Gauge as G};
    let mut out = Vec::new();
    let tick = 100.0; // USER_HZ: /proc reports CPU time in 1/100 s on every Linux architecture
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces) start after the last ')'.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
            let mut cpu = ConstFamily::new(
                "hstream_process_cpu_seconds",
                "User and system CPU time of the server process",
                C,
            );
            cpu.add(vec![], (num(11) + num(12)) / tick);
            out.push(cpu);
        }
    }
    // VmRSS is in kB whatever the page size.
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    {
        let mut rss = ConstFamily::new(
            "hstream_process_resident_memory_bytes",
            "Resident memory of the server process",
            G,
        );
        rss.add(vec![], kb * 1024.0);
        out.push(rss);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let mut open = ConstFamily::new(
            "hstream_process_open_fds",
            "Open file descriptors of the server process",
            G,
        );
        open.add(vec![], fds.count() as f64);
        out.push(open);
    }
    out
}
