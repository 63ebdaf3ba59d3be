//! The subscriptions' metrics: a collector that reads every running subscription's counters at
//! scrape time.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::Registry;
use crate::metrics::{ConstFamily, encode_families};

/// Registered by the subscriptions service; holds the table of running subscriptions.
pub(super) struct Live(pub(super) Arc<Registry>);

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("subscriptions")
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_families(&families(&self.0), &mut encoder)
    }
}

fn families(running: &Registry) -> Vec<ConstFamily> {
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
