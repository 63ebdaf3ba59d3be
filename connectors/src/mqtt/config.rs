//! The MQTT family's configuration: the broker endpoint the source and the sink share, and
//! each one's options (HStream IO's names). Every error names the option.

use std::time::Duration;

use hstream_runtime::{ConnectorConfig, ConnectorError, Secret};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Protocol;
use super::client::Broker;
use super::template::{Side, Template};

fn default_host() -> String {
    "127.0.0.1".into()
}

fn default_port() -> u16 {
    1883
}

fn default_qos() -> u8 {
    1
}

fn default_keep_alive() -> u16 {
    30
}

/// An MQTT broker, the login to it and how to speak to it, shared by the source and the sink.
/// Its secret (`password`) shows as a mask in `Debug`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Endpoint {
    /// Broker host name or address.
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    #[schemars(range(min = 1))]
    pub port: u16,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// Connect with TLS.
    #[serde(default)]
    pub tls: bool,
    /// With tls: a PEM file of the CA certificates to trust instead of the system's.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// MQTT version: "5" or "3.1.1".
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default = "default_keep_alive")]
    #[schemars(range(min = 5))]
    pub keep_alive_secs: u16,
}

impl Endpoint {
    fn validate(&self) -> Result<(), ConnectorError> {
        super::check_tls(self.tls, &self.tls_ca_file)
    }

    /// The connection's settings for `client_id`; the session and flow-control ones are the
    /// source's or the sink's to set.
    fn broker(&self, client_id: String) -> Broker<'_> {
        Broker {
            host: &self.host,
            port: self.port,
            client_id,
            username: self.username.as_deref(),
            password: self.password.as_ref(),
            tls: self.tls,
            tls_ca_file: self.tls_ca_file.as_deref(),
            protocol: self.protocol,
            keep_alive: Duration::from_secs(u64::from(self.keep_alive_secs)),
            clean_session: true,
            session_expiry: 0,
            receive_maximum: 16,
            outgoing_inflight: 1,
            manual_acks: false,
        }
    }
}

/// How a message's payload becomes a record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// The payload as is (a RAW record), as EMQX's HStreamDB bridge writes it.
    #[default]
    Raw,
    /// The payload parsed as a JSON object into a JSON record (a protobuf Struct), so SQL can
    /// read its fields; a message that is not a JSON object is a failed record
    /// (`errors.tolerance`: the task fails, or it is dead-lettered).
    Json,
}

/// Configuration of the `mqtt` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "mqtt",
    description = "Subscribes to MQTT topics (MQTT 3.1.1 or 5) and appends every message to a stream."
)]
pub struct MqttSourceConfig {
    /// Stream the messages are appended to (created if missing).
    pub stream: String,
    /// The broker, the login and the protocol.
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// Topic filter to subscribe to (`+` and `#` wildcards), or several separated by commas.
    pub topic: String,
    /// Subscription QoS: 0 at most once, 1 at least once, 2 (taken as at least once into the
    /// stream).
    #[serde(default = "default_qos")]
    #[schemars(range(max = 2))]
    pub qos: u8,
    /// Client id, which names the broker's session for us: keep it stable, and unique per
    /// connector. Default: derived from the stream and topic.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The record's partition key (records with one key keep their order), in `${…}` syntax:
    /// `${topic}`, `${qos}`, `${payload}`, `${payload.<field>}`, `${user_property.<name>}` and
    /// literal text.
    #[serde(default = "default_key_template")]
    pub key_template: String,
    /// Start a fresh session each time: messages published while the connector is away are
    /// lost. Default false (a persistent session).
    #[serde(default)]
    pub clean_session: bool,
    /// MQTT 5: how long the broker keeps our session while we are away, in seconds
    /// (4294967295: for ever).
    #[serde(default = "default_session_expiry")]
    pub session_expiry_secs: u32,
    /// MQTT 5 Receive Maximum: QoS 1/2 messages not yet durable (so not yet acknowledged) at most.
    /// With MQTT 3.1.1 the broker's own limit applies (Mosquitto: max_inflight_messages).
    #[serde(default = "default_inflight")]
    #[schemars(range(min = 1))]
    pub inflight: u16,
    #[serde(default)]
    pub payload_format: PayloadFormat,
}

fn default_key_template() -> String {
    "${topic}".into()
}

fn default_session_expiry() -> u32 {
    u32::MAX
}

fn default_inflight() -> u16 {
    1000
}

impl ConnectorConfig for MqttSourceConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        super::filters(&self.topic)?;
        super::check_qos(self.qos)?;
        self.endpoint.validate()?;
        Template::parse(&self.key_template, Side::Source, "key_template").map_err(ConnectorError::config)?;
        if self.client_id.as_deref() == Some("") {
            return Err(ConnectorError::config(
                "client_id: must not be empty (a persistent session needs a name)",
            ));
        }
        Ok(())
    }
}

impl MqttSourceConfig {
    /// The client id: as configured, or derived from the stream and topic (stable across runs;
    /// 22 bytes, within the 23 every MQTT 3.1.1 broker must accept).
    pub fn client_id(&self) -> String {
        match &self.client_id {
            Some(id) => id.clone(),
            None => format!("hstream-{}", super::short_hash(&["source", &self.stream, &self.topic])),
        }
    }

    /// The client id `check` uses: its own, so a running task's session is left alone.
    pub(crate) fn check_client_id(&self) -> String {
        format!("hsck-{}", super::short_hash(&["check", &self.client_id()]))
    }

    pub(crate) fn broker(&self, client_id: String, clean_session: bool) -> Broker<'_> {
        Broker {
            clean_session,
            session_expiry: self.session_expiry_secs,
            receive_maximum: self.inflight,
            outgoing_inflight: 1,
            manual_acks: true,
            ..self.endpoint.broker(client_id)
        }
    }
}

/// Configuration of the `mqtt` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "mqtt",
    description = "Publishes a stream's records to an MQTT broker (MQTT 3.1.1 or 5)."
)]
pub struct MqttSinkConfig {
    /// Stream whose records are published.
    pub stream: String,
    /// The broker, the login and the protocol.
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// Topic to publish to, in `${…}` syntax: literal text with `${key}`, `${stream}`,
    /// `${payload}` and `${payload.<field>}` (of a JSON record, or a RAW one holding JSON).
    pub topic: String,
    #[serde(default = "default_qos")]
    #[schemars(range(max = 2))]
    pub qos: u8,
    /// Publish with the retain flag.
    #[serde(default)]
    pub retain: bool,
    /// Default: derived from the stream and topic.
    #[serde(default)]
    pub client_id: Option<String>,
    /// QoS 1/2 publishes awaiting the broker's acknowledgement at most.
    #[serde(default = "default_inflight")]
    #[schemars(range(min = 1))]
    pub inflight: u16,
}

impl ConnectorConfig for MqttSinkConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        super::check_qos(self.qos)?;
        self.endpoint.validate()?;
        let t = Template::parse(&self.topic, Side::Sink, "topic").map_err(ConnectorError::config)?;
        // A template without placeholders is the topic itself: check it now; the text around
        // placeholders may hold no wildcard either.
        let text = t.text();
        if text == self.topic {
            super::check_topic_name(&self.topic).map_err(|e| ConnectorError::config(format!("topic: {e}")))?;
        } else if text.contains(['+', '#', '\0']) {
            return Err(ConnectorError::config(format!(
                "topic: {:?} holds a wildcard or NUL outside its placeholders",
                self.topic
            )));
        }
        if self.client_id.as_deref() == Some("") {
            return Err(ConnectorError::config("client_id: must not be empty"));
        }
        Ok(())
    }
}

impl MqttSinkConfig {
    pub(crate) fn client_id(&self) -> String {
        match &self.client_id {
            Some(id) => id.clone(),
            None => format!("hstream-{}", super::short_hash(&["sink", &self.stream, &self.topic])),
        }
    }

    pub(crate) fn broker(&self, client_id: String) -> Broker<'_> {
        Broker {
            // Our position is our own checkpoint, not a broker session.
            clean_session: true,
            session_expiry: 0,
            receive_maximum: 16,
            outgoing_inflight: self.inflight,
            manual_acks: false,
            ..self.endpoint.broker(client_id)
        }
    }
}
