//! The Kafka family's configuration: the cluster (`bootstrapServers`, librdkafka properties)
//! the source and the sink share, and each one's options. Every error names the option.

use std::borrow::Cow;
use std::collections::BTreeMap;

use hstream_runtime::{ConnectorConfig, ConnectorError};
use rdkafka::ClientConfig;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use super::{check_topic, is_secret, property_error};

/// librdkafka properties (`"kafka.<property>"` options), passed to the client as they are.
/// `Debug` masks the values of secret ones ([`is_secret`]).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Properties(pub BTreeMap<String, String>);

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if is_secret(k) {
                    hstream_runtime::secret::MASK
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

impl JsonSchema for Properties {
    fn schema_name() -> Cow<'static, str> {
        "KafkaProperties".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // librdkafka's sensitive properties are named here, so a value of theirs is masked (and
        // never quoted by a validation error) whether or not the rest of the config parses.
        let secrets: serde_json::Map<String, serde_json::Value> = super::SECRET_PROPERTIES
            .iter()
            .map(|p| {
                (
                    (*p).to_owned(),
                    serde_json::json!({"type": "string", "airbyte_secret": true}),
                )
            })
            .collect();
        json_schema!({
            "type": "object",
            "description": "librdkafka properties (https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md), as `\"kafka.<property>\"` options or this object: security.protocol, sasl.*, ssl.*, compression.type, linger.ms, … Values of librdkafka's sensitive properties and of any whose name holds `password`, `secret`, `passphrase` or `private.key` are masked wherever the config is shown.",
            "properties": secrets,
            "additionalProperties": { "type": "string" }
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

impl Properties {
    /// Refuses the properties the connector sets itself (`reserved`: property, what to use
    /// instead) and any librdkafka does not take, naming them. No IO.
    fn check(&self, reserved: &[(&str, &str)]) -> Result<(), ConnectorError> {
        for k in self.0.keys() {
            if let Some((_, instead)) = reserved.iter().find(|(r, _)| r == k) {
                return Err(ConnectorError::config(format!("kafka.{k}: {instead}")));
            }
        }
        let mut c = ClientConfig::new();
        for (k, v) in &self.0 {
            c.set(k, v);
        }
        c.create_native_config().map(drop).map_err(|e| match e {
            rdkafka::error::KafkaError::ClientConfig(_, desc, key, _) => property_error(&key, &desc),
            e => super::error("kafka", e),
        })
    }
}

/// The properties every client gets, before the user's (which may override them).
const BOOTSTRAP: [(&str, &str); 2] = [
    ("bootstrap.servers", "set with the bootstrapServers option"),
    ("metadata.broker.list", "set with the bootstrapServers option"),
];

fn check_bootstrap(servers: &str) -> Result<(), ConnectorError> {
    let list: Vec<&str> = servers.split(',').map(str::trim).collect();
    if list.iter().any(|s| s.is_empty()) {
        return Err(ConnectorError::config(format!(
            "bootstrapServers: {servers:?} is not a comma-separated list of host:port"
        )));
    }
    if let Some(s) = list.iter().find(|s| s.contains(char::is_whitespace)) {
        return Err(ConnectorError::config(format!("bootstrapServers: {s:?} holds a space")));
    }
    Ok(())
}

/// A client config: the bootstrap servers, then `ours`, then the user's properties.
pub(crate) fn client_config(servers: &str, ours: &[(&str, &str)], props: &Properties) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", servers);
    // librdkafka logs through the `log` crate, which our tracing subscriber takes.
    c.set("client.id", "hstream");
    for (k, v) in ours {
        c.set(*k, *v);
    }
    for (k, v) in &props.0 {
        c.set(k, v);
    }
    c
}

/// How the sink picks a record's partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Partitioning {
    /// By the record's key, with librdkafka's partitioner (`kafka.partitioner`; its default,
    /// consistent_random, is a CRC32 of the key; `murmur2_random` is the Java client's). An
    /// empty key is sent as no key (spread over the partitions).
    #[default]
    Key,
    /// All records of a stream shard to one partition: the shard id modulo the partition count.
    Shard,
}

fn default_offsets_topic() -> String {
    "hstream-sink-offsets".into()
}

fn default_txn_prefix() -> String {
    "hstream-".into()
}

/// Configuration of the `kafka` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(
    title = "kafka",
    description = "Produces a stream's records to a Kafka topic: key to key, payload to value (JSON records as JSON text, RAW as is), attributes to headers."
)]
pub struct KafkaSinkConfig {
    /// Stream whose records are produced.
    pub stream: String,
    /// Kafka brokers to start from, `host:port` separated by commas.
    pub bootstrap_servers: String,
    /// Topic to produce to (it must exist, with the partitions wanted).
    pub topic: String,
    #[serde(default)]
    pub partitioning: Partitioning,
    /// Exactly-once into Kafka: each flush is a transaction (transactional.id
    /// `<transactionalIdPrefix><connector name>`) that also writes the sink's position to
    /// `offsetsTopic`; consumers with
    /// isolation.level=read_committed see every record once.
    #[serde(default)]
    pub transactional: bool,
    /// With transactional: the topic holding the sink's positions (keyed by transactional.id;
    /// one partition, cleanup.policy=compact recommended).
    #[serde(default = "default_offsets_topic")]
    pub offsets_topic: String,
    /// With transactional: the transactional.id is this followed by the connector name. Give
    /// each HStream cluster writing to one Kafka cluster its own, or same-named connectors of
    /// two clusters fence each other.
    #[serde(default = "default_txn_prefix")]
    pub transactional_id_prefix: String,
    /// librdkafka producer properties. Defaults: acks=all, enable.idempotence=true,
    /// allow.auto.create.topics=false.
    #[serde(default)]
    pub kafka: Properties,
}

impl ConnectorConfig for KafkaSinkConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        check_bootstrap(&self.bootstrap_servers)?;
        check_topic("topic", &self.topic)?;
        check_topic("offsetsTopic", &self.offsets_topic)?;
        if self.transactional && self.offsets_topic == self.topic {
            return Err(ConnectorError::config(
                "offsetsTopic: must not be the topic records go to",
            ));
        }
        let mut reserved = BOOTSTRAP.to_vec();
        reserved.push((
            "transactional.id",
            "set transactional = true instead; the id is derived from the connector name",
        ));
        if self.transactional {
            reserved.push(("enable.idempotence", "transactions need idempotence; leave it unset"));
        }
        if matches!(self.kafka.0.get("acks").map(String::as_str), Some("0")) {
            return Err(ConnectorError::config(
                "kafka.acks: 0 asks for no acknowledgement, so no delivery could be confirmed before the stream position moves; use 1 or all",
            ));
        }
        if self.transactional_id_prefix.contains(char::is_whitespace) {
            return Err(ConnectorError::config("transactionalIdPrefix: must not hold spaces"));
        }
        self.kafka.check(&reserved)
    }
}

impl KafkaSinkConfig {
    pub(crate) fn client_config(&self, transactional_id: Option<&str>) -> ClientConfig {
        // The topic must exist (check says so): no creation as a side effect of a metadata
        // request, unless the user's properties ask for it.
        let mut ours = vec![
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("allow.auto.create.topics", "false"),
        ];
        if let Some(id) = transactional_id {
            ours.push(("transactional.id", id));
        }
        client_config(&self.bootstrap_servers, &ours, &self.kafka)
    }
}

/// How a message's value becomes a record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A JSON object becomes a JSON record; anything else (including an object with a number a
    /// double cannot hold exactly) a RAW record with the value as it is.
    #[default]
    Auto,
    /// Every value must be a JSON object whose numbers a double holds exactly; another is a
    /// failed record (`errors.tolerance`: the task fails, or it is dead-lettered).
    Json,
    /// Every value as it is, a RAW record.
    Raw,
}

/// Where a source without a checkpoint starts in each partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The oldest message the partition still holds.
    #[default]
    Earliest,
    /// The end, as it is when the connector first starts (fixed then, so a restart before the
    /// first message misses nothing).
    Latest,
    /// The first message at or after `startTimestampMs`.
    Timestamp,
}

fn default_refresh() -> u32 {
    30
}

/// Configuration of the `kafka` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(
    title = "kafka",
    description = "Reads Kafka topics into a stream: key to partition key, value to payload (JSON objects as JSON records, else RAW), headers to attributes."
)]
pub struct KafkaSourceConfig {
    /// Stream the messages are appended to (created if missing).
    pub stream: String,
    /// Kafka brokers to start from, `host:port` separated by commas.
    pub bootstrap_servers: String,
    /// Topics to read, separated by commas (or `topicPattern`).
    #[serde(default)]
    pub topics: Option<String>,
    /// A regular expression (Rust `regex` syntax) that whole topic names must match; new
    /// matching topics and partitions are picked up (every `topicRefreshSecs`) from their
    /// start. Topics whose names start with `__` (Kafka's own) are left out.
    #[serde(default)]
    pub topic_pattern: Option<String>,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub start_from: StartFrom,
    /// With startFrom = timestamp: milliseconds since the Unix epoch.
    #[serde(default)]
    pub start_timestamp_ms: Option<i64>,
    /// A consumer group to commit the source's durable position to, for monitoring with
    /// Kafka's tools (never read back: the checkpoint is where the source resumes).
    #[serde(default)]
    pub group_id: Option<String>,
    /// How often partitions (and, with topicPattern, topics) are looked up again, in seconds.
    #[serde(default = "default_refresh")]
    #[schemars(range(min = 1))]
    pub topic_refresh_secs: u32,
    /// librdkafka consumer properties (auto.offset.reset=earliest by default: where a stored
    /// position is gone from the partition).
    #[serde(default)]
    pub kafka: Properties,
}

impl ConnectorConfig for KafkaSourceConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        check_bootstrap(&self.bootstrap_servers)?;
        match (&self.topics, &self.topic_pattern) {
            (Some(_), Some(_)) => {
                return Err(ConnectorError::config(
                    "topicPattern: give topics or topicPattern, not both",
                ));
            }
            (None, None) => return Err(ConnectorError::config("topics: give topics or topicPattern")),
            (Some(_), None) => {
                for t in self.topic_list() {
                    check_topic("topics", &t)?;
                }
            }
            (None, Some(p)) => {
                self.pattern().map_err(|e| {
                    ConnectorError::config(format!("topicPattern: {p:?} is not a regular expression: {e}"))
                })?;
            }
        }
        match (self.start_from, self.start_timestamp_ms) {
            (StartFrom::Timestamp, None) => {
                return Err(ConnectorError::config(
                    "startTimestampMs: needed with startFrom = timestamp",
                ));
            }
            (StartFrom::Timestamp, Some(ms)) if ms < 0 => {
                return Err(ConnectorError::config(format!("startTimestampMs: {ms} is before 1970")));
            }
            (StartFrom::Earliest | StartFrom::Latest, Some(_)) => {
                return Err(ConnectorError::config(
                    "startTimestampMs: only with startFrom = timestamp",
                ));
            }
            _ => {}
        }
        if self.group_id.as_deref() == Some("") {
            return Err(ConnectorError::config("groupId: must not be empty"));
        }
        let mut reserved = BOOTSTRAP.to_vec();
        reserved.extend([
            ("group.id", "set with the groupId option"),
            (
                "enable.auto.commit",
                "the source commits its durable position itself (with groupId)",
            ),
            (
                "enable.auto.offset.store",
                "the source keeps its position in its checkpoint",
            ),
            ("enable.partition.eof", "the source reads on past a partition's end"),
        ]);
        self.kafka.check(&reserved)
    }
}

impl KafkaSourceConfig {
    /// The listed topics (with `topics`).
    pub fn topic_list(&self) -> Vec<String> {
        self.topics
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(|t| t.trim().to_owned())
            .collect()
    }

    /// `topicPattern`, anchored to whole names.
    pub(crate) fn pattern(&self) -> Result<Option<regex::Regex>, regex::Error> {
        self.topic_pattern
            .as_deref()
            .map(|p| regex::Regex::new(&format!("^(?:{p})$")))
            .transpose()
    }

    pub(crate) fn client_config(&self) -> ClientConfig {
        // Without groupId: a group of its own, never joined (partitions are assigned, not
        // subscribed) and never committed to.
        let group = match &self.group_id {
            Some(g) => g.clone(),
            None => format!("hstream-{}", crate::mqtt::short_hash(&["kafka", &self.stream])),
        };
        client_config(
            &self.bootstrap_servers,
            &[
                ("group.id", &group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "false"),
                ("auto.offset.reset", "earliest"),
            ],
            &self.kafka,
        )
    }
}
