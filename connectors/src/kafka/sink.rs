//! The `kafka` sink: produces a stream's records to a topic. Writes hand records to
//! librdkafka's queue and return; a flush waits until librdkafka confirmed the delivery of
//! every one of them (acks=all, idempotent), and only then may the runtime move the stream
//! position: at-least-once, per-key order kept (idempotence keeps order across retries).
//!
//! Transactional mode: a flush is one Kafka transaction holding the records since the last one
//! and the sink's position (the last record per shard) in `offsetsTopic`. A restarted sink
//! reads that position back (read_committed) and skips what it covers, so what a committed
//! transaction holds is never produced again, whatever the runtime's checkpoint says.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use hstream_runtime::{ConnectorError, PayloadFlag, Sink, SinkContext, SinkRecord, Written};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::config::{KafkaSinkConfig, Partitioning};
use super::{METADATA_TIMEOUT, OffThread, blocking, error};

/// How long a transaction's init, commit or abort may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(60);

/// The sink's position as a transaction stores it: the last record produced per shard.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Stored {
    stream: String,
    shards: BTreeMap<u64, (u64, u32)>,
}

struct Txn {
    id: String,
    /// A transaction is open (begun, not yet committed).
    open: bool,
    /// What the last committed transaction holds: records at or before it are skipped.
    committed: BTreeMap<u64, (u64, u32)>,
    /// The last record produced per shard, committed or not.
    written: BTreeMap<u64, (u64, u32)>,
}

pub struct KafkaSink {
    config: KafkaSinkConfig,
    producer: OffThread<FutureProducer>,
    /// Deliveries not yet confirmed, in produce order.
    pending: VecDeque<DeliveryFuture>,
    partitions: i32,
    txn: Option<Txn>,
    json: Vec<u8>,
}

/// The transactional id of a connector's producer.
fn transactional_id(config: &KafkaSinkConfig, task: &str) -> String {
    format!("{}{task}", config.transactional_id_prefix)
}

/// The partition count of `topic`, which must exist.
async fn partitions(producer: &FutureProducer, field: &'static str, topic: &str) -> Result<i32, ConnectorError> {
    let p = producer.clone();
    let t = topic.to_owned();
    let meta = blocking(move || p.client().fetch_metadata(Some(&t), METADATA_TIMEOUT).map_err(no_answer)).await?;
    let Some(m) = meta.topics().iter().find(|m| m.name() == topic) else {
        return Err(ConnectorError::config(format!(
            "{field}: topic {topic:?} does not exist"
        )));
    };
    if let Some(e) = m.error() {
        let code = RDKafkaErrorCode::from(e);
        return Err(match code {
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                ConnectorError::config(format!("{field}: topic {topic:?} does not exist; create it first"))
            }
            RDKafkaErrorCode::TopicAuthorizationFailed => {
                ConnectorError::config(format!("{field}: not authorized for topic {topic:?}"))
            }
            _ => ConnectorError::external(format!("{field}: topic {topic:?}: {code}")),
        });
    }
    Ok(m.partitions().len().max(1) as i32)
}

/// A metadata request that failed: most often no broker answered in time.
pub(crate) fn no_answer(e: KafkaError) -> ConnectorError {
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure,
        ) => ConnectorError::external(format!(
            "bootstrapServers: no Kafka broker answered within {} s ({e})",
            METADATA_TIMEOUT.as_secs()
        )),
        _ => error("asking the brokers for metadata", e),
    }
}

fn producer(config: &KafkaSinkConfig, transactional_id: Option<&str>) -> Result<FutureProducer, ConnectorError> {
    config
        .client_config(transactional_id)
        .create()
        .map_err(|e| error("creating the Kafka producer", e))
}

/// Reads the position the last committed transaction of `id` stored: a read_committed
/// consumer reads partition 0 of `offsetsTopic` up to its high watermark as it is now (after
/// `init_transactions` ended our own open transaction), waiting out other producers' open
/// transactions there (a read_committed reader stops at the first of them) for up to
/// [`TXN_TIMEOUT`], so an older position is never taken for the last one.
async fn read_stored(
    config: &KafkaSinkConfig,
    producer: &FutureProducer,
    id: &str,
) -> Result<Option<Stored>, ConnectorError> {
    let topic = config.offsets_topic.clone();
    let p = producer.clone();
    let t = topic.clone();
    let (_, high) = blocking(move || {
        let w = p.client().fetch_watermarks(&t, 0, METADATA_TIMEOUT).map_err(no_answer);
        drop(p);
        w
    })
    .await?;
    if high == 0 {
        return Ok(None);
    }
    // The user's properties (security, TLS and the rest: producer-only ones are ignored with a
    // warning), then what this reader must be.
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap_servers);
    for (k, v) in &config.kafka.0 {
        c.set(k, v);
    }
    for (k, v) in [
        ("group.id", id),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("isolation.level", "read_committed"),
        ("enable.partition.eof", "false"),
    ] {
        c.set(k, v);
    }
    let consumer: BaseConsumer = c.create().map_err(|e| error("creating the Kafka consumer", e))?;
    let id = id.to_owned();
    blocking(move || {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)
            .map_err(|e| error("reading offsetsTopic", e))?;
        consumer.assign(&tpl).map_err(|e| error("reading offsetsTopic", e))?;
        let mut found = None;
        let deadline = std::time::Instant::now() + TXN_TIMEOUT;
        loop {
            if let Ok(pos) = consumer.position()
                && let Some(Offset::Offset(n)) = pos.find_partition(&topic, 0).map(|e| e.offset())
                && n >= high
            {
                return Ok(found);
            }
            if std::time::Instant::now() > deadline {
                return Err(ConnectorError::external(format!(
                    "offsetsTopic: could not read {topic:?} to offset {high} within {} s (an open transaction of another producer holds it back)",
                    TXN_TIMEOUT.as_secs()
                )));
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) if m.key() == Some(id.as_bytes()) => {
                    found = match m.payload() {
                        None => None,
                        Some(v) => Some(serde_json::from_slice::<Stored>(v).map_err(|e| {
                            ConnectorError::internal(format!(
                                "offsetsTopic: an unreadable position at offset {}",
                                m.offset()
                            ))
                            .with_source(e)
                        })?),
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(error("reading offsetsTopic", e)),
                None => {}
            }
        }
    })
    .await
}

/// Waits for one delivery report.
async fn delivered(topic: &str, f: DeliveryFuture) -> Result<(), ConnectorError> {
    match f.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(error(&format!("delivering to topic {topic:?}"), e)),
        Err(_) => Err(ConnectorError::external("the Kafka producer closed")),
    }
}

#[async_trait]
impl Sink for KafkaSink {
    type Config = KafkaSinkConfig;

    /// Reaches a broker and finds the topic (and, transactional, offsetsTopic).
    async fn check(config: &KafkaSinkConfig) -> Result<(), ConnectorError> {
        let p = OffThread::new(producer(config, None)?);
        partitions(&p, "topic", &config.topic).await?;
        if config.transactional {
            partitions(&p, "offsetsTopic", &config.offsets_topic).await?;
        }
        Ok(())
    }

    async fn open(_config: KafkaSinkConfig) -> Result<Self, ConnectorError> {
        Err(ConnectorError::internal(
            "the kafka sink is opened with its task's name",
        ))
    }

    async fn open_in(config: KafkaSinkConfig, ctx: SinkContext) -> Result<Self, ConnectorError> {
        let id = config.transactional.then(|| transactional_id(&config, &ctx.task));
        let producer = OffThread::new(producer(&config, id.as_deref())?);
        let n = partitions(&producer, "topic", &config.topic).await?;
        let txn = match id {
            None => None,
            Some(id) => {
                partitions(&producer, "offsetsTopic", &config.offsets_topic).await?;
                // Fences an older producer of this id and ends its open transaction.
                let p = OffThread::new((*producer).clone());
                blocking(move || {
                    p.init_transactions(TXN_TIMEOUT)
                        .map_err(|e| error("starting transactions", e))
                })
                .await?;
                let committed = read_stored(&config, &producer, &id)
                    .await?
                    .filter(|s| s.stream == config.stream)
                    .map(|s| s.shards)
                    .unwrap_or_default();
                tracing::info!(transactional_id = %id, shards = committed.len(), "transactional kafka sink: resuming after the position its last transaction committed");
                Some(Txn {
                    id,
                    open: false,
                    written: committed.clone(),
                    committed,
                })
            }
        };
        Ok(KafkaSink {
            config,
            producer,
            pending: VecDeque::new(),
            partitions: n,
            txn,
            json: Vec::new(),
        })
    }

    fn stream(config: &KafkaSinkConfig) -> &str {
        &config.stream
    }

    fn normalize(config: &mut serde_json::Value) {
        super::normalize(config)
    }

    fn schema_for(config: &KafkaSinkConfig, schema: &mut serde_json::Value) {
        super::schema_for(&config.kafka, schema)
    }

    async fn write(&mut self, records: &[SinkRecord]) -> Result<Written, ConnectorError> {
        if let Some(t) = &mut self.txn
            && !t.open
        {
            self.producer
                .begin_transaction()
                .map_err(|e| error("beginning a transaction", e))?;
            t.open = true;
        }
        let topic = self.config.topic.as_str();
        for r in records {
            if let Some(t) = &mut self.txn {
                let at = (r.lsn, r.index);
                if t.committed.get(&r.shard_id).is_some_and(|c| at <= *c) {
                    continue;
                }
                t.written.insert(r.shard_id, at);
            }
            let value: &[u8] = match r.flag {
                PayloadFlag::Raw => &r.payload,
                PayloadFlag::Json => {
                    self.json.clear();
                    hstream_runtime::pbstruct::struct_to_json(&r.payload, &mut self.json).map_err(|e| {
                        ConnectorError::internal(format!(
                            "record at shard {} lsn {} index {}: not a JSON record: {e}",
                            r.shard_id, r.lsn, r.index
                        ))
                    })?;
                    &self.json
                }
            };
            let mut headers = OwnedHeaders::new_with_capacity(r.attributes.len());
            for (k, v) in &r.attributes {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_str()),
                });
            }
            let mut rec = FutureRecord::<[u8], [u8]>::to(topic).payload(value).headers(headers);
            if !r.key.is_empty() {
                rec = rec.key(r.key.as_bytes());
            }
            if self.config.partitioning == Partitioning::Shard {
                rec = rec.partition((r.shard_id % self.partitions as u64) as i32);
            }
            loop {
                match self.producer.send_result(rec) {
                    Ok(f) => {
                        self.pending.push_back(f);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // librdkafka's queue is full: the oldest delivery frees room.
                        rec = back;
                        match self.pending.pop_front() {
                            Some(f) => delivered(topic, f).await?,
                            None => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                    Err((e, _)) => return Err(error(&format!("producing to topic {topic:?}"), e)),
                }
            }
        }
        // Take the reports that are in, so the list stays short.
        while let Some(f) = self.pending.front_mut() {
            match f.now_or_never() {
                Some(r) => {
                    self.pending.pop_front();
                    match r {
                        Ok(Ok(_)) => {}
                        Ok(Err((e, _))) => return Err(error(&format!("delivering to topic {topic:?}"), e)),
                        Err(_) => return Err(ConnectorError::external("the Kafka producer closed")),
                    }
                }
                None => break,
            }
        }
        Ok(Written::Accepted)
    }

    /// Waits for every delivery; transactional, writes the position and commits.
    async fn flush(&mut self) -> Result<(), ConnectorError> {
        let result = self.settle().await;
        if result.is_err()
            && let Some(t) = &mut self.txn
            && t.open
        {
            // What the aborted transaction held is not written: a later commit must not cover it.
            t.open = false;
            t.written = t.committed.clone();
            self.pending.clear();
            let p = OffThread::new((*self.producer).clone());
            // Best effort: the restarted task fences this producer anyway.
            let _ = blocking(move || p.abort_transaction(TXN_TIMEOUT).map_err(|e| error("aborting", e))).await;
        }
        result
    }

    /// Clears the position a transactional sink stored, so a connector created later under the
    /// same name starts from its own.
    async fn on_delete(config: &KafkaSinkConfig, task: &str) -> Result<(), ConnectorError> {
        if !config.transactional {
            return Ok(());
        }
        let id = transactional_id(config, task);
        let p = producer(config, Some(&id))?;
        let topic = config.offsets_topic.clone();
        // Within the supervisor's 20 s for a release.
        let within = Duration::from_secs(8);
        blocking(move || {
            p.init_transactions(within)
                .map_err(|e| error("starting transactions", e))?;
            p.begin_transaction().map_err(|e| error("beginning a transaction", e))?;
            let f = p
                .send_result(FutureRecord::<str, [u8]>::to(&topic).key(id.as_str()).partition(0))
                .map_err(|(e, _)| error("producing to offsetsTopic", e))?;
            p.commit_transaction(within)
                .map_err(|e| error("committing a transaction", e))?;
            match futures::executor::block_on(f) {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(error("clearing the position in offsetsTopic", e)),
                Err(_) => Err(ConnectorError::external("the Kafka producer closed")),
            }
        })
        .await
    }
}

impl KafkaSink {
    async fn settle(&mut self) -> Result<(), ConnectorError> {
        let topic = self.config.topic.clone();
        // A report leaves the list only once it is in: a stop that interrupts this wait leaves
        // the rest for `close` to wait for.
        while let Some(f) = self.pending.front_mut() {
            let r = f.await;
            self.pending.pop_front();
            match r {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(error(&format!("delivering to topic {topic:?}"), e)),
                Err(_) => return Err(ConnectorError::external("the Kafka producer closed")),
            }
        }
        let Some(t) = &mut self.txn else { return Ok(()) };
        if !t.open {
            return Ok(());
        }
        let stored = Stored {
            stream: self.config.stream.clone(),
            shards: t.written.clone(),
        };
        let value = serde_json::to_vec(&stored).expect("a position serializes");
        let rec = FutureRecord::<str, [u8]>::to(&self.config.offsets_topic)
            .key(t.id.as_str())
            .payload(&value)
            .partition(0);
        let f = self
            .producer
            .send_result(rec)
            .map_err(|(e, _)| error("producing to offsetsTopic", e))?;
        delivered(&self.config.offsets_topic, f).await?;
        let p = OffThread::new((*self.producer).clone());
        blocking(move || {
            p.commit_transaction(TXN_TIMEOUT)
                .map_err(|e| error("committing a transaction", e))
        })
        .await?;
        t.open = false;
        t.committed = t.written.clone();
        Ok(())
    }
}
