//! MQTT: the `mqtt` source (broker → stream) and sink (stream → broker), over rumqttc, speaking
//! MQTT 3.1.1 or 5 to any broker (EMQX, Mosquitto, HiveMQ, …).
//!
//! Durability: the source takes QoS 1/2 messages with manual acknowledgements and sends a
//! message's PUBACK (PUBREC for QoS 2) only once its record is durable in the stream, in the
//! order the messages came. With a persistent session (the default: clean session off, a stable
//! client id) the broker keeps what we have not acknowledged, and what arrives while we are
//! down, and delivers it when we are back. The sink counts its records as written only once the
//! broker has acknowledged every publish of the batch.

mod client;
pub mod config;
pub mod sink;
pub mod source;
mod template;

pub use config::{MqttSinkConfig, MqttSourceConfig};
pub use sink::MqttSink;
pub use source::MqttSource;

use hstream_runtime::ConnectorError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Protocol {
    #[serde(rename = "3.1.1")]
    V311,
    #[default]
    #[serde(rename = "5")]
    V5,
}

/// MQTT's largest packet (the remaining-length field's limit).
const MAX_PACKET: u32 = 268_435_455;

/// 14 hex digits of the MD5 of `parts`: a stable suffix for derived client ids.
pub(crate) fn short_hash(parts: &[&str]) -> String {
    use md5::Digest;
    let d = md5::Md5::digest(parts.join("\n").as_bytes());
    d.iter().take(7).map(|b| format!("{b:02x}")).collect()
}

/// Checks an MQTT topic filter (`a/+/c`, `a/#`): not empty, no NUL, `#` only as the whole last
/// level, `+` only as a whole level.
pub(crate) fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("an empty topic filter".into());
    }
    if filter.len() > 65_535 {
        return Err(format!("topic filter of {} bytes is over 65535", filter.len()));
    }
    if filter.contains('\0') {
        return Err(format!("topic filter {filter:?} contains NUL"));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "topic filter {filter:?}: '#' must be a whole level and the last one"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("topic filter {filter:?}: '+' must be a whole level"));
        }
    }
    Ok(())
}

/// Checks a topic name to publish to: a filter without wildcards.
pub(crate) fn check_topic_name(topic: &str) -> Result<(), String> {
    if topic.contains(['+', '#']) {
        return Err(format!("topic {topic:?} contains a wildcard"));
    }
    check_filter(topic).map_err(|e| e.replace("topic filter", "topic"))
}

/// The topic filters of a `topic` option: one, or several separated by commas.
pub(crate) fn filters(topic: &str) -> Result<Vec<String>, ConnectorError> {
    let list: Vec<String> = topic.split(',').map(|t| t.trim().to_owned()).collect();
    for f in &list {
        check_filter(f).map_err(|e| ConnectorError::config(format!("topic: {e}")))?;
    }
    Ok(list)
}

fn check_qos(qos: u8) -> Result<(), ConnectorError> {
    if qos > 2 {
        return Err(ConnectorError::config(format!("qos: {qos} is not 0, 1 or 2")));
    }
    Ok(())
}

fn check_tls(tls: bool, ca_file: &Option<String>) -> Result<(), ConnectorError> {
    if ca_file.is_some() && !tls {
        return Err(ConnectorError::config("tls_ca_file: given without tls = true"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_follow_the_mqtt_rules() {
        for ok in ["a", "a/b", "a/+/c", "+", "#", "a/#", "+/+/#", "/a", "a//b", "$SYS/#"] {
            assert!(check_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a/b#", "a+", "a/+b/c", "#/a", "a\0b"] {
            assert!(check_filter(bad).is_err(), "{bad:?}");
        }
        assert!(check_topic_name("a/b").is_ok());
        assert!(check_topic_name("a/+").is_err());
        assert!(check_topic_name("").is_err());
        assert_eq!(filters("a/+, b/#").unwrap(), vec!["a/+", "b/#"]);
        let e = filters("a/+,b/#/c").unwrap_err();
        assert!(e.message.starts_with("topic: "), "{e}");
        assert!(e.message.contains("b/#/c"), "{e}");
        assert!(filters("a,,b").is_err());
    }
}
