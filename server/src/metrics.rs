//! Prometheus metrics, served as OpenMetrics text at `GET /metrics` on the REST port.
//!
//! Names follow `hstream_<area>_<name>_<unit>[_total]`; labels are bounded (stream,
//! subscription and connector names, error class, state). Each part of the server registers its
//! own metrics in one registry while `node.rs` builds it, and this module knows none of them:
//! - the streams service updates its append instruments per stream ([`StreamMetrics`]: records,
//!   bytes, latency);
//! - the connectors and subscriptions services register collectors that read their live state
//!   at scrape time (`connectors/metrics.rs`: progress counters, state, restarts, errors,
//!   checkpoint age, source lag; `subscription/metrics.rs`: delivered, acked, redelivered,
//!   backlog);
//! - the store registers its own (`hstream_store_*`: fsync latency, bytes on disk) through
//!   `Store::register_metrics`;
//! - [`Metrics::new`] adds the process (CPU, memory, open files) and the build.
//!
//! `METRICS` (the file `server/metrics.txt`) lists every metric name; a test fails when one of
//! them is missing from a scrape.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Every metric this server exposes, one name per line (as scraped: counters with `_total`).
pub const METRICS: &str = include_str!("../metrics.txt");

/// Latency buckets: 50 µs to ~52 s, doubling.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 21))
}

type StreamLabels = Vec<(&'static str, String)>;
type LatencyFamily = Family<StreamLabels, Histogram, fn() -> Histogram>;

/// The instruments of the append path, per stream; the streams service updates them.
#[derive(Clone)]
pub struct StreamMetrics {
    appended_records: Family<StreamLabels, Counter>,
    appended_bytes: Family<StreamLabels, Counter>,
    append_latency: LatencyFamily,
}

impl StreamMetrics {
    /// Creates the families and registers them.
    pub fn register(registry: &mut Registry) -> StreamMetrics {
        let m = StreamMetrics {
            appended_records: Family::default(),
            appended_bytes: Family::default(),
            append_latency: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "hstream_stream_appended_records",
            "Records appended to a stream",
            m.appended_records.clone(),
        );
        registry.register(
            "hstream_stream_appended_bytes",
            "Bytes of stored batches appended to a stream",
            m.appended_bytes.clone(),
        );
        registry.register(
            "hstream_stream_append_latency_seconds",
            "Time from an append's arrival at the store to its durable acknowledgement",
            m.append_latency.clone(),
        );
        m
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
}

/// The registry every part of the server registered its metrics in, frozen for scraping.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Freezes `registry` after adding the process and build metrics.
    pub fn new(mut registry: Registry) -> Metrics {
        registry.register_collector(Box::new(Process));
        Metrics { registry }
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

/// The process and build metrics, read at scrape time.
#[derive(Debug)]
struct Process;

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &process() {
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

/// One metric family of values read at scrape time (the collectors of connectors and
/// subscriptions build these).
pub struct ConstFamily {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    rows: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl ConstFamily {
    pub fn new(name: &'static str, help: &'static str, kind: MetricType) -> Self {
        ConstFamily {
            name,
            help,
            kind,
            rows: Vec::new(),
        }
    }

    pub fn add(&mut self, labels: Vec<(&'static str, String)>, v: f64) {
        self.rows.push((labels, v));
    }

    pub fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
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

/// Encodes families read at scrape time, in order.
pub fn encode_families(families: &[ConstFamily], encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    for f in families {
        f.encode(encoder)?;
    }
    Ok(())
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
