//! The `kafka` source: reads the partitions of the configured topics into a stream.
//!
//! It assigns itself every partition of its topics (no consumer group joins or rebalances:
//! one task reads them all) at the position its checkpoint holds, the next offset per
//! partition, so after a crash it reads again from the last durable position (at-least-once;
//! what came after it may be appended twice). Partitions and topics that appear later are read
//! from their start. Records of one partition are emitted in offset order, so a key (which
//! Kafka keeps to one partition) keeps its order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use futures::FutureExt;
use hstream_runtime::tolerance::Stage;
use hstream_runtime::{Attributes, ConnectorError, Done, Offset, PayloadFlag, Record, Source, SourceOutput};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset as KOffset, TopicPartitionList};
use serde::{Deserialize, Serialize};

pub use super::config::{Format, KafkaSourceConfig, StartFrom};
use super::sink::no_answer;
use super::{METADATA_TIMEOUT, OffThread, blocking, error};

/// Messages per emitted batch at most (a batch also goes out whenever nothing more is ready).
const MAX_BATCH: usize = 4096;
/// Attribute names of a record, beside the message's own headers.
pub const ATTR_TOPIC: &str = "kafka.topic";
pub const ATTR_PARTITION: &str = "kafka.partition";
pub const ATTR_OFFSET: &str = "kafka.offset";
pub const ATTR_TIMESTAMP: &str = "kafka.timestamp";
/// Set to `base64` when the message key was not UTF-8 (the record key is then its base64).
pub const ATTR_KEY_ENCODING: &str = "kafka.key.encoding";
/// Set to `true` for a message without a value (a tombstone), which becomes an empty RAW record.
pub const ATTR_TOMBSTONE: &str = "kafka.tombstone";
/// The message's headers as a JSON list of `[name, value]` (value: text, `null`, or
/// `{"base64": …}`), set only when attributes alone cannot hold them exactly.
pub const ATTR_HEADERS: &str = "kafka.headers";

/// The next offset to read, per topic and partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaOffset {
    pub next: BTreeMap<String, BTreeMap<i32, i64>>,
}

impl Offset for KafkaOffset {
    const VERSION: u32 = 1;
}

pub struct KafkaSource {
    config: KafkaSourceConfig,
    pattern: Option<regex::Regex>,
    position: KafkaOffset,
    /// No checkpoint yet: the start positions are resolved and stored before anything else.
    fresh: bool,
    /// Messages that could not become records, since the last emit: failed records for the
    /// runtime's error policy (`errors.tolerance`), with the reason and where they were.
    rejected: Vec<(Record, String, serde_json::Value)>,
}

type KConsumer = StreamConsumer;

/// The partitions of the configured topics that exist now (topics missing are reported).
fn discover(
    consumer: &KConsumer,
    config: &KafkaSourceConfig,
    pattern: Option<&regex::Regex>,
) -> Result<(BTreeMap<String, i32>, Vec<String>), ConnectorError> {
    let mut found = BTreeMap::new();
    let mut missing = Vec::new();
    match pattern {
        Some(p) => {
            let meta = consumer.fetch_metadata(None, METADATA_TIMEOUT).map_err(no_answer)?;
            for t in meta.topics() {
                if !t.name().starts_with("__") && p.is_match(t.name()) && t.error().is_none() {
                    found.insert(t.name().to_owned(), t.partitions().len() as i32);
                }
            }
        }
        None => {
            for name in config.topic_list() {
                let meta = consumer
                    .fetch_metadata(Some(&name), METADATA_TIMEOUT)
                    .map_err(no_answer)?;
                match meta.topics().iter().find(|t| t.name() == name) {
                    Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                        found.insert(name, t.partitions().len() as i32);
                    }
                    Some(t)
                        if t.error().map(RDKafkaErrorCode::from)
                            == Some(RDKafkaErrorCode::TopicAuthorizationFailed) =>
                    {
                        return Err(ConnectorError::config(format!(
                            "topics: not authorized for topic {name:?}"
                        )));
                    }
                    _ => missing.push(name),
                }
            }
        }
    }
    Ok((found, missing))
}

/// Where reading starts in a partition without a stored position.
fn start_offset(
    consumer: &KConsumer,
    topic: &str,
    partition: i32,
    start: StartFrom,
    timestamp: Option<i64>,
) -> Result<i64, ConnectorError> {
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
        .map_err(no_answer)?;
    Ok(match (start, timestamp) {
        (StartFrom::Earliest, _) => low,
        (StartFrom::Latest, _) => high,
        (StartFrom::Timestamp, ts) => {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, partition, KOffset::Offset(ts.unwrap_or(0)))
                .map_err(|e| error("looking up startTimestampMs", e))?;
            let got = consumer
                .offsets_for_times(tpl, METADATA_TIMEOUT)
                .map_err(|e| error("looking up startTimestampMs", e))?;
            match got.find_partition(topic, partition).map(|e| e.offset()) {
                Some(KOffset::Offset(n)) => n,
                // No message at or after it: from the end.
                _ => high,
            }
        }
    })
}

#[async_trait]
impl Source for KafkaSource {
    type Config = KafkaSourceConfig;
    type Offset = KafkaOffset;

    /// Reaches a broker and finds the listed topics.
    async fn check(config: &KafkaSourceConfig) -> Result<(), ConnectorError> {
        let consumer: KConsumer = config
            .client_config()
            .create()
            .map_err(|e| error("creating the Kafka consumer", e))?;
        let config = config.clone();
        blocking(move || {
            let pattern = config.pattern().ok().flatten();
            let (_, missing) = discover(&consumer, &config, pattern.as_ref())?;
            if !missing.is_empty() {
                return Err(ConnectorError::config(format!(
                    "topics: {} not found on the cluster",
                    missing.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ")
                )));
            }
            Ok(())
        })
        .await
    }

    async fn open(config: KafkaSourceConfig, offset: Option<KafkaOffset>) -> Result<Self, ConnectorError> {
        let pattern = config
            .pattern()
            .map_err(|e| ConnectorError::config(format!("topicPattern: {e}")))?;
        Ok(KafkaSource {
            config,
            pattern,
            fresh: offset.is_none(),
            position: offset.unwrap_or_default(),
            rejected: Vec::new(),
        })
    }

    fn stream(config: &KafkaSourceConfig) -> &str {
        &config.stream
    }

    fn normalize(config: &mut serde_json::Value) {
        super::normalize(config)
    }

    fn schema_for(config: &KafkaSourceConfig, schema: &mut serde_json::Value) {
        super::schema_for(&config.kafka, schema)
    }

    async fn run(&mut self, out: &mut SourceOutput<KafkaOffset>) -> Result<Done, ConnectorError> {
        let cancel = out.cancelled();
        // Dropped off the async threads (a consumer's drop closes it, waiting).
        let consumer: OffThread<Arc<KConsumer>> = OffThread::new(Arc::new(
            self.config
                .client_config()
                .create()
                .map_err(|e| error("creating the Kafka consumer", e))?,
        ));
        let mut assigned = BTreeSet::new();
        tokio::select! {
            r = self.refresh(&consumer, &mut assigned) => r?,
            _ = cancel.cancelled() => return Ok(Done::Cancelled),
        }
        if self.fresh {
            // Where "latest" or a timestamp led, stored before any message: a restart before
            // the first one must not start from a later "latest".
            self.fresh = false;
            if out.emit(Vec::new(), self.position.clone()).await.is_err() || !out.wait_committed(&self.position).await {
                return Ok(Done::Cancelled);
            }
        }
        let mut committed = out.committed();
        committed.borrow_and_update();
        let mut refresh = tokio::time::interval(Duration::from_secs(u64::from(self.config.topic_refresh_secs)));
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await;
        let mut batch: Vec<Record> = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(Done::Cancelled),
                changed = committed.changed(), if self.config.group_id.is_some() => {
                    if changed.is_err() {
                        return Ok(Done::Cancelled);
                    }
                    let position = committed.borrow_and_update().clone();
                    if let Some(p) = position {
                        commit(&consumer, &p);
                    }
                }
                _ = refresh.tick() => {
                    // The assignment stands meanwhile; a broker away is librdkafka's to wait out.
                    if let Err(e) = self.refresh(&consumer, &mut assigned).await {
                        if !e.retry {
                            return Err(e);
                        }
                        tracing::warn!(error = %e, "could not look the Kafka partitions up again");
                        out.report(format!("last consumer error: {e}"));
                    }
                }
                m = consumer.recv() => {
                    let mut next = Some(m);
                    while let Some(m) = next.take() {
                        match m {
                            Ok(m) => self.take(&m, &mut batch),
                            Err(e) => self.consume_error(e, out)?,
                        }
                        if batch.len() < MAX_BATCH {
                            next = consumer.recv().now_or_never();
                        }
                    }
                    // Rejected messages first: their dead letters are durable before the
                    // position that passes them.
                    for (r, why, at) in std::mem::take(&mut self.rejected) {
                        let error = ConnectorError::data(format!("Kafka message at {at}: {why}"));
                        out.reject(r, Stage::Decode, at, &error).await?;
                    }
                    if out.emit(std::mem::take(&mut batch), self.position.clone()).await.is_err() {
                        return Ok(Done::Cancelled);
                    }
                }
            }
        }
    }
}

/// Commits a durable position to Kafka (groupId), for monitoring; failures are only logged.
fn commit(consumer: &KConsumer, position: &KafkaOffset) {
    let mut tpl = TopicPartitionList::new();
    for (topic, parts) in &position.next {
        for (p, next) in parts {
            if tpl.add_partition_offset(topic, *p, KOffset::Offset(*next)).is_err() {
                return;
            }
        }
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(error = %e, "could not commit the position to Kafka");
    }
}

impl KafkaSource {
    /// Looks the partitions up again; new ones get a start position and the assignment grows.
    async fn refresh(
        &mut self,
        consumer: &Arc<KConsumer>,
        assigned: &mut BTreeSet<(String, i32)>,
    ) -> Result<(), ConnectorError> {
        let c = consumer.clone();
        let config = self.config.clone();
        let pattern = self.pattern.clone();
        let mut position = self.position.clone();
        let first = self.fresh;
        let known: BTreeSet<(String, i32)> = assigned.clone();
        let (position, all, missing) = blocking(move || {
            let (found, missing) = discover(&c, &config, pattern.as_ref())?;
            let mut all = BTreeSet::new();
            for (topic, n) in found {
                for p in 0..n {
                    let stored = position.next.get(&topic).and_then(|m| m.get(&p)).copied();
                    if stored.is_none() {
                        // Partitions that appear after the first start are read from their start.
                        let (start, ts) = if first {
                            (config.start_from, config.start_timestamp_ms)
                        } else {
                            (StartFrom::Earliest, None)
                        };
                        let at = start_offset(&c, &topic, p, start, ts)?;
                        position.next.entry(topic.clone()).or_default().insert(p, at);
                    }
                    all.insert((topic.clone(), p));
                }
            }
            if all != known {
                let mut tpl = TopicPartitionList::new();
                for (topic, p) in &all {
                    let next = position.next[topic][p];
                    tpl.add_partition_offset(topic, *p, KOffset::Offset(next))
                        .map_err(|e| error("assigning partitions", e))?;
                }
                // An assignment replaces the previous one: partitions already read continue
                // from where the consumer is, given here as the position taken so far.
                c.assign(&tpl).map_err(|e| error("assigning partitions", e))?;
            }
            Ok((position, all, missing))
        })
        .await?;
        if !missing.is_empty() {
            tracing::warn!(topics = ?missing, "Kafka topics not found; looking again in {} s", self.config.topic_refresh_secs);
        }
        self.position = position;
        *assigned = all;
        Ok(())
    }

    /// A consumer error: one retrying cannot help stops the task; others (a broker away for a
    /// while) are librdkafka's to recover from, and only reported.
    fn consume_error(
        &mut self,
        e: rdkafka::error::KafkaError,
        out: &SourceOutput<KafkaOffset>,
    ) -> Result<(), ConnectorError> {
        // A topic deleted under us: the next refresh drops it from the assignment.
        let gone = matches!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
        );
        let err = error("reading from Kafka", e);
        if !err.retry && !gone {
            return Err(err);
        }
        tracing::warn!(error = %err, "Kafka consumer error");
        out.report(format!("last consumer error: {err}"));
        Ok(())
    }

    /// Turns a message into a record (or sets it aside as rejected) and moves the position past
    /// it. A record over the stream's size limit is the runtime's to refuse.
    fn take(&mut self, m: &BorrowedMessage<'_>, batch: &mut Vec<Record>) {
        // No allocation for a topic already known (every message but a topic's first).
        match self.position.next.get_mut(m.topic()) {
            Some(parts) => {
                parts.insert(m.partition(), m.offset() + 1);
            }
            None => {
                self.position
                    .next
                    .insert(m.topic().to_owned(), BTreeMap::from([(m.partition(), m.offset() + 1)]));
            }
        }
        match self.record(m) {
            Ok(r) => batch.push(r),
            Err(why) => {
                // The message as it came: its key (base64 when not UTF-8), the value as is.
                let key = match m.key() {
                    None => String::new(),
                    Some(k) => std::str::from_utf8(k)
                        .map(str::to_owned)
                        .unwrap_or_else(|_| base64::engine::general_purpose::STANDARD.encode(k)),
                };
                let r = Record::new(
                    key,
                    PayloadFlag::Raw,
                    Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                );
                let at = serde_json::json!({ "topic": m.topic(), "partition": m.partition(), "offset": m.offset() });
                self.rejected.push((r, why, at));
            }
        }
    }

    fn record(&self, m: &BorrowedMessage<'_>) -> Result<Record, String> {
        let mut attributes = Attributes::with_capacity(4 + m.headers().map_or(0, |h| h.count()));
        if let Some(h) = m.headers() {
            // Attributes are text pairs: headers that are not (a value that is not UTF-8, no
            // value, a name given twice) are also kept exactly, as one JSON list.
            let mut exact = false;
            for h in h.iter() {
                match h.value.map(std::str::from_utf8) {
                    Some(Ok(v)) => {
                        if attributes.insert(h.key.to_owned(), v.to_owned()).is_some() {
                            exact = true;
                        }
                    }
                    _ => exact = true,
                }
            }
            if exact {
                let list: Vec<serde_json::Value> = h
                    .iter()
                    .map(|h| {
                        let v = match h.value {
                            None => serde_json::Value::Null,
                            Some(b) => match std::str::from_utf8(b) {
                                Ok(s) => serde_json::Value::String(s.to_owned()),
                                Err(_) => serde_json::json!({
                                    "base64": base64::engine::general_purpose::STANDARD.encode(b)
                                }),
                            },
                        };
                        serde_json::json!([h.key, v])
                    })
                    .collect();
                attributes.insert(ATTR_HEADERS.into(), serde_json::Value::Array(list).to_string());
            }
        }
        let key = match m.key() {
            None => String::new(),
            Some(k) => match std::str::from_utf8(k) {
                Ok(s) => s.to_owned(),
                Err(_) => {
                    attributes.insert(ATTR_KEY_ENCODING.into(), "base64".into());
                    base64::engine::general_purpose::STANDARD.encode(k)
                }
            },
        };
        let (flag, payload) = match m.payload() {
            None => {
                attributes.insert(ATTR_TOMBSTONE.into(), "true".into());
                (PayloadFlag::Raw, Bytes::new())
            }
            Some(v) => match self.config.format {
                Format::Raw => (PayloadFlag::Raw, Bytes::copy_from_slice(v)),
                Format::Auto => match json_record(v) {
                    Ok(b) => (PayloadFlag::Json, b),
                    Err(_) => (PayloadFlag::Raw, Bytes::copy_from_slice(v)),
                },
                Format::Json => (PayloadFlag::Json, json_record(v)?),
            },
        };
        attributes.insert(ATTR_TOPIC.into(), m.topic().to_owned());
        attributes.insert(ATTR_PARTITION.into(), m.partition().to_string());
        attributes.insert(ATTR_OFFSET.into(), m.offset().to_string());
        if let Some(ms) = m.timestamp().to_millis() {
            attributes.insert(ATTR_TIMESTAMP.into(), ms.to_string());
        }
        Ok(Record {
            key,
            flag,
            payload,
            attributes,
        })
    }
}

/// The JSON record of a value that is a JSON object whose numbers a double holds exactly.
fn json_record(v: &[u8]) -> Result<Bytes, String> {
    if v.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("the value is not a JSON object".into());
    }
    let mut buf = Vec::with_capacity(v.len() + v.len() / 4);
    hstream_runtime::pbstruct::struct_from_json_exact(&mut buf, v)
        .map_err(|e| format!("the value is not a JSON object a record can hold exactly: {e}"))?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_become_records_only_when_exact() {
        assert!(json_record(br#" {"a": 1, "b": [true, null, "x"]}"#).is_ok());
        assert!(json_record(b"[1]").is_err());
        assert!(json_record(b"plain text").is_err());
        assert!(json_record(br#"{"a": 1"#).is_err());
        let e = json_record(br#"{"id": 12345678901234567890}"#).unwrap_err();
        assert!(e.contains("exactly"), "{e}");
    }
}
