//! A Kafka cluster for tests: librdkafka's mock cluster, a Kafka-protocol broker implemented
//! inside librdkafka (not Apache Kafka: no Kafka broker is packaged for these machines), run in
//! the test process on loopback ports, so the server under test reaches it over TCP and
//! survives its kill -9. Also a real Kafka client (rdkafka) to produce and read back with.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// librdkafka's mock broker keeps at most 5 MB (or 100k message sets) per partition and drops
/// the oldest beyond that: tests spread their messages so that every one stays.
///
/// The tests' Kafka: librdkafka's mock cluster (what the README calls the mock-cluster tier),
/// or a live broker named by `HSTREAM_TEST_KAFKA` (the live tier).
pub struct Kafka {
    cluster: Option<MockCluster<'static, DefaultProducerContext>>,
    bootstrap: String,
    pub brokers: i32,
}

/// A message to produce: key, value, headers.
pub type Outgoing = (Option<String>, Vec<u8>, Vec<(String, String)>);

/// One message as a consumer read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
    /// CreateTime, milliseconds since the epoch.
    pub timestamp: i64,
}

impl Kafka {
    /// A cluster of `brokers` brokers (ids 1..=brokers).
    pub fn start(brokers: i32) -> Kafka {
        println!("[tier: librdkafka mock cluster, not Apache Kafka]");
        let cluster = MockCluster::new(brokers).expect("mock cluster");
        Kafka {
            bootstrap: cluster.bootstrap_servers(),
            cluster: Some(cluster),
            brokers,
        }
    }

    /// The live broker `HSTREAM_TEST_KAFKA` names (`host:port,…`), if it is set.
    pub fn live() -> Option<Kafka> {
        let bootstrap = std::env::var("HSTREAM_TEST_KAFKA").ok()?;
        println!("[tier: live Kafka broker at {bootstrap}]");
        Some(Kafka {
            cluster: None,
            bootstrap,
            brokers: 1,
        })
    }

    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    /// Creates a topic (on a live broker with the admin API, replication factor 1).
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        match &self.cluster {
            Some(c) => c
                .create_topic(topic, partitions, self.brokers.min(3))
                .expect("create topic"),
            None => {
                use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
                let admin: AdminClient<rdkafka::client::DefaultClientContext> =
                    self.config().create().expect("admin client");
                let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
                let r = futures::executor::block_on(admin.create_topics([&t], &AdminOptions::new()))
                    .expect("create topics");
                for r in r {
                    r.expect("topic created");
                }
            }
        }
    }

    fn mock(&self) -> &MockCluster<'static, DefaultProducerContext> {
        self.cluster.as_ref().expect("fault injection needs the mock cluster")
    }

    /// Disconnects every broker and refuses connections until [`Kafka::up`].
    pub fn down(&self) {
        self.mock().broker_down(-1).expect("broker down");
    }

    pub fn up(&self) {
        self.mock().broker_up(-1).expect("broker up");
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap());
        c
    }

    /// Produces `(key, value, headers)` messages to `topic` (partitioned by key) and waits
    /// for every delivery.
    pub async fn produce(&self, topic: &str, messages: &[Outgoing]) {
        let p: FutureProducer = self
            .config()
            .set("linger.ms", "5")
            .set("enable.idempotence", "true")
            .create()
            .expect("producer");
        let mut pending = Vec::with_capacity(messages.len());
        for (k, v, h) in messages {
            let mut headers = OwnedHeaders::new();
            for (hk, hv) in h {
                headers = headers.insert(Header {
                    key: hk,
                    value: Some(hv.as_str()),
                });
            }
            let mut rec = FutureRecord::<str, [u8]>::to(topic).payload(v).headers(headers);
            if let Some(k) = k {
                rec = rec.key(k.as_str());
            }
            loop {
                match p.send_result(rec) {
                    Ok(f) => {
                        pending.push(f);
                        break;
                    }
                    Err((_, back)) => {
                        rec = back;
                        // The queue is full: wait for what is in flight.
                        for f in pending.drain(..) {
                            f.await.expect("delivery").expect("delivered");
                        }
                    }
                }
            }
        }
        for f in pending {
            f.await.expect("delivery").expect("delivered");
        }
    }

    /// Every message of `topic` up to the partitions' ends (with `committed`: as a
    /// read_committed consumer sees them, aborted transactions left out), in partition and
    /// offset order.
    pub fn read_all(&self, topic: &str, committed: bool) -> Vec<Msg> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", "test-reader")
            .set("enable.auto.commit", "false")
            .set(
                "isolation.level",
                if committed {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            )
            .create()
            .expect("consumer");
        let meta = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let partitions = meta.topics()[0].partitions().len() as i32;
        let mut tpl = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            ends.insert(p, high);
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let pos = consumer.position().unwrap();
            let done = ends.iter().all(|(p, high)| {
                *high == 0
                    || match pos.find_partition(topic, *p).map(|e| e.offset()) {
                        Some(Offset::Offset(n)) => n >= *high,
                        _ => false,
                    }
            });
            if done {
                break;
            }
            assert!(Instant::now() < deadline, "could not read {topic} to its end");
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                let m = m.expect("message");
                out.push(Msg {
                    timestamp: m.timestamp().to_millis().unwrap_or(0),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
        }
        out.sort_by_key(|m| (m.partition, m.offset));
        out
    }

    /// How many messages `topic` holds (its high watermarks summed; with transactions this
    /// counts control records and aborted messages too).
    pub fn end_offsets(&self, topic: &str) -> i64 {
        let consumer: BaseConsumer = self.config().create().expect("consumer");
        let meta = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        (0..meta.topics()[0].partitions().len() as i32)
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .expect("watermarks")
                    .1
            })
            .sum()
    }
}
