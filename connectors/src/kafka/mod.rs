//! Kafka: the `kafka` sink (stream → topic) and source (topics → stream), over rdkafka
//! (librdkafka, built from the crate's bundled sources).
//!
//! Guarantees:
//! - The sink counts a record as written only once librdkafka confirmed its delivery (acks=all
//!   and idempotence by default), so the stream position moves only past delivered records:
//!   at-least-once. With `transactional`, each flush is one Kafka transaction that also holds
//!   the sink's position (a record in `offsetsTopic`); a restarted sink skips what a committed
//!   transaction already holds: exactly-once for `read_committed` consumers.
//! - The source assigns itself the partitions (no consumer-group rebalancing): its position
//!   per partition is its checkpoint, taken only once the records before it are durable, and
//!   where it resumes. It also commits that position to Kafka under `groupId` when one is given,
//!   for people watching lag with Kafka's tools; that copy is never read back.
//!
//! Any librdkafka property passes through as `"kafka.<property>"` (stored as the `kafka`
//! object); those that look secret are masked wherever a config is shown.

pub mod config;
pub mod sink;
pub mod source;

pub use config::{KafkaSinkConfig, KafkaSourceConfig, Properties};
pub use sink::KafkaSink;
pub use source::KafkaSource;

use std::time::Duration;

use hstream_runtime::ConnectorError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde_json::{Map, Value};

/// How long `check` (and a task's first metadata request) waits for a broker to answer.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The properties librdkafka 2.12 itself treats as sensitive: named in the config schema as
/// secrets, so they are masked even in a config that does not parse.
pub const SECRET_PROPERTIES: [&str; 9] = [
    "sasl.password",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl_key",
    "ssl.keystore.password",
];

/// Whether a librdkafka property holds a secret (its value is masked wherever a config is
/// shown): librdkafka's sensitive ones, and any whose name speaks of a password, a secret, a
/// passphrase or a private key.
pub fn is_secret(property: &str) -> bool {
    SECRET_PROPERTIES.contains(&property)
        || ["password", "secret", "passphrase", "private.key"]
            .iter()
            .any(|w| property.contains(w))
}

/// Folds SQL's flat `"kafka.<property>"` options into the stored `kafka` object, with every
/// value as text (librdkafka takes text: `5` becomes `"5"`, `true` becomes `"true"`). No IO.
pub fn normalize(config: &mut Value) {
    let Value::Object(map) = config else { return };
    let flat: Vec<String> = map.keys().filter(|k| k.starts_with("kafka.")).cloned().collect();
    if flat.is_empty() && !map.get("kafka").is_some_and(Value::is_object) {
        return;
    }
    let mut props = match map.remove("kafka") {
        Some(Value::Object(m)) => m,
        Some(other) => {
            // Not an object: left for validation to refuse, naming the option.
            map.insert("kafka".into(), other);
            return;
        }
        None => Map::new(),
    };
    for k in flat {
        if let Some(v) = map.remove(&k) {
            props.insert(k["kafka.".len()..].to_owned(), v);
        }
    }
    for (k, v) in props.iter_mut() {
        match v {
            Value::Number(n) => *v = Value::String(n.to_string()),
            Value::Bool(b) => *v = Value::String(b.to_string()),
            Value::String(_) => {}
            // Any other shape of a secret becomes text, so no error ever quotes it (librdkafka
            // then judges the text); others are left for validation to refuse.
            _ if is_secret(k) => *v = Value::String(v.to_string()),
            _ => {}
        }
    }
    map.insert("kafka".into(), Value::Object(props));
}

/// Marks the secret properties of `props` in a config schema, so they are masked.
pub(crate) fn schema_for(props: &Properties, schema: &mut Value) {
    let secrets: Vec<&String> = props.0.keys().filter(|k| is_secret(k)).collect();
    if secrets.is_empty() {
        return;
    }
    let node = &mut schema["properties"]["kafka"];
    if !node["properties"].is_object() {
        node["properties"] = Value::Object(Map::new());
    }
    for k in secrets {
        node["properties"][k.as_str()] = serde_json::json!({"type": "string", "airbyte_secret": true});
    }
}

/// Checks a topic name as Kafka does: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub(crate) fn check_topic(field: &str, topic: &str) -> Result<(), ConnectorError> {
    let bad = |why: &str| Err(ConnectorError::config(format!("{field}: {topic:?} {why}")));
    if topic.is_empty() {
        return Err(ConnectorError::config(format!("{field}: an empty topic name")));
    }
    if topic.len() > 249 {
        return bad("is longer than Kafka's 249 characters");
    }
    if topic == "." || topic == ".." {
        return bad("is not a topic name");
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return bad(&format!(
            "holds {c:?}; Kafka topic names are letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// A librdkafka failure as a connector error: what retrying cannot change (authentication,
/// authorization, a message too large, a topic that does not exist) parks the task; the rest
/// (a broker down, a timeout) is retried.
pub(crate) fn error(doing: &str, e: KafkaError) -> ConnectorError {
    if let KafkaError::ClientConfig(_, desc, key, _) = &e {
        // Its text holds the value, which may be a secret: never shown, never chained.
        return property_error(key, desc);
    }
    let code = e.rdkafka_error_code();
    let message = format!("{doing}: {e}");
    let permanent = matches!(
        code,
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::InvalidConfig
                | RDKafkaErrorCode::InvalidArgument
        )
    ) || matches!(e, KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_));
    if permanent {
        ConnectorError::config(message).with_source(e)
    } else {
        ConnectorError::external(message).with_source(e)
    }
}

/// librdkafka refused property `key` (`desc` says why, and may quote the value): the error
/// names the option, and shows the reason only for a property that is not a secret.
pub(crate) fn property_error(key: &str, desc: &str) -> ConnectorError {
    if is_secret(key) {
        ConnectorError::config(format!("kafka.{key}: librdkafka refused the value"))
    } else {
        ConnectorError::config(format!("kafka.{key}: {desc}"))
    }
}

/// Holds a librdkafka client whose drop blocks (a producer flushes, a consumer closes), and
/// drops it on a blocking thread instead of the async one.
pub(crate) struct OffThread<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> OffThread<T> {
    pub(crate) fn new(t: T) -> Self {
        OffThread(Some(t))
    }
}

impl<T: Send + 'static> std::ops::Deref for OffThread<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_ref().expect("present until dropped")
    }
}

impl<T: Send + 'static> Drop for OffThread<T> {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(h) => drop(h.spawn_blocking(move || drop(t))),
                Err(_) => drop(t),
            }
        }
    }
}

/// Runs a blocking librdkafka call (metadata, offsets, transactions) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ConnectorError> + Send + 'static,
) -> Result<T, ConnectorError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ConnectorError::internal("a Kafka call panicked").with_source(e))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flat_properties_fold_into_the_kafka_object_as_text() {
        let mut c = json!({"stream": "s", "kafka.linger.ms": 5, "kafka.enable.idempotence": true,
                           "kafka.sasl.password": "p", "kafka": {"acks": "1"}});
        normalize(&mut c);
        assert_eq!(
            c,
            json!({"stream": "s", "kafka": {"acks": "1", "linger.ms": "5", "enable.idempotence": "true", "sasl.password": "p"}})
        );
        let mut same = c.clone();
        normalize(&mut same);
        assert_eq!(same, c);
        let mut odd = json!({"kafka": "x"});
        normalize(&mut odd);
        assert_eq!(odd, json!({"kafka": "x"}));
    }

    #[test]
    fn topic_names_follow_kafka() {
        for ok in ["a", "orders.v1", "A_b-c", &"x".repeat(249)] {
            check_topic("topic", ok).unwrap();
        }
        for bad in ["", ".", "..", "a b", "a/b", "ü", &"x".repeat(250)] {
            let e = check_topic("topic", bad).unwrap_err();
            assert!(e.message.starts_with("topic: "), "{e}");
        }
    }

    fn errors(kind: hstream_runtime::Kind, mut v: Value) -> Vec<String> {
        let t = crate::registry().get(kind, "kafka").unwrap();
        t.normalize(&mut v);
        match t.validate(&v) {
            Ok(()) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn configs_name_the_field_at_fault() {
        use hstream_runtime::Kind::{Sink, Source};
        let sink = |extra: Value| {
            let mut v = json!({"stream": "s", "bootstrapServers": "b:9092", "topic": "t"});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            errors(Sink, v)
        };
        assert!(sink(json!({})).is_empty());
        assert!(sink(json!({"kafka.linger.ms": 5, "kafka.compression.type": "zstd"})).is_empty());
        let has = |e: Vec<String>, field: &str| {
            assert!(
                e.iter().any(|m| m.starts_with(field)
                    || m.contains(&format!("\"{field}\""))
                    || m.contains(&format!("'{field}'"))),
                "{field}: {e:?}"
            )
        };
        has(errors(Sink, json!({"stream": "s", "topic": "t"})), "bootstrapServers");
        has(sink(json!({"bootstrapServers": "a:1,,b:2"})), "bootstrapServers");
        has(sink(json!({"topic": "a/b"})), "topic");
        has(sink(json!({"kafka.no.such.thing": "1"})), "kafka.no.such.thing");
        has(sink(json!({"kafka.acks": "sometimes"})), "kafka.acks");
        has(
            sink(json!({"kafka.bootstrap.servers": "x:1"})),
            "kafka.bootstrap.servers",
        );
        has(sink(json!({"kafka.transactional.id": "x"})), "kafka.transactional.id");
        has(
            sink(json!({"transactional": true, "kafka.enable.idempotence": "false"})),
            "kafka.enable.idempotence",
        );
        has(
            sink(json!({"transactional": true, "offsetsTopic": "t"})),
            "offsetsTopic",
        );
        has(sink(json!({"partitioning": "random"})), "partitioning");
        has(sink(json!({"topics": "t"})), "topics");
        let source = |extra: Value| {
            let mut v = json!({"stream": "s", "bootstrapServers": "b:9092"});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            errors(Source, v)
        };
        assert!(source(json!({"topics": "a, b.c"})).is_empty());
        assert!(source(json!({"topicPattern": "orders\\..*"})).is_empty());
        has(source(json!({})), "topics");
        has(source(json!({"topics": "a", "topicPattern": "a"})), "topicPattern");
        has(source(json!({"topicPattern": "orders["})), "topicPattern");
        has(source(json!({"topics": "a,b c"})), "topics");
        has(
            source(json!({"topics": "a", "startFrom": "timestamp"})),
            "startTimestampMs",
        );
        has(
            source(json!({"topics": "a", "startTimestampMs": 5})),
            "startTimestampMs",
        );
        has(source(json!({"topics": "a", "kafka.group.id": "g"})), "kafka.group.id");
        has(
            source(json!({"topics": "a", "kafka.enable.auto.commit": true})),
            "kafka.enable.auto.commit",
        );
        has(source(json!({"topics": "a", "format": "xml"})), "format");
        // librdkafka's reasons quote the value: never for a secret property.
        let e = property_error("sasl.password", "Invalid value \"hunter2\" for configuration property");
        assert!(
            e.message.starts_with("kafka.sasl.password") && !e.message.contains("hunter2"),
            "{e}"
        );
        let e = property_error("acks", "Invalid value \"x\" for configuration property \"acks\"");
        assert!(e.message.contains("\"x\""), "{e}");
    }

    #[test]
    fn secret_properties_are_masked_in_shown_configs() {
        use hstream_runtime::Kind;
        let t = crate::registry().get(Kind::Sink, "kafka").unwrap();
        let mut v = json!({"stream": "s", "bootstrapServers": "b:9092", "topic": "t",
                           "kafka.sasl.username": "u", "kafka.sasl.password": "hunter2", "kafka.ssl.key.password": "pw2"});
        t.normalize(&mut v);
        let shown = hstream_runtime::secret::redact(&t.config_schema(&v), &v);
        assert_eq!(shown["kafka"]["sasl.password"], json!(hstream_runtime::secret::MASK));
        assert_eq!(shown["kafka"]["ssl.key.password"], json!(hstream_runtime::secret::MASK));
        assert_eq!(shown["kafka"]["sasl.username"], json!("u"));
        let parsed: KafkaSinkConfig = serde_json::from_value(v).unwrap();
        let debug = format!("{parsed:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("pw2") && debug.contains("sasl.username"),
            "{debug}"
        );
    }

    #[test]
    fn secret_properties() {
        for s in SECRET_PROPERTIES
            .iter()
            .chain(&["sasl.oauthbearer.assertion.private.key.file.passphrase"])
        {
            assert!(is_secret(s), "{s}");
        }
        for s in ["sasl.username", "ssl.ca.location", "acks", "ssl.certificate.pem"] {
            assert!(!is_secret(s), "{s}");
        }
    }
}
