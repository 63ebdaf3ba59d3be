//! The `mqtt` sink: publishes a stream's records to a topic rendered per record, with a chosen
//! QoS. A batch counts as written once the broker has acknowledged every one of its QoS 1/2
//! publishes; with QoS 0 once the connection they were queued on was closed after them (at
//! most once, as QoS 0 is).
//! After a failure the task restarts from its last durable position, so a broker may see a
//! record again (at-least-once).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hstream_runtime::{ConnectorConfig, ConnectorError, PayloadFlag, Secret, Sink, SinkRecord, Written};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::client::{self, Broker, Conn, Event};
use super::template::{Side, Template, Var, push_field};
use super::{Protocol, default_host, default_keep_alive, default_port, default_qos};

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
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    #[schemars(range(min = 1))]
    pub port: u16,
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
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    /// QoS 1/2 publishes awaiting the broker's acknowledgement at most.
    #[serde(default = "default_inflight")]
    #[schemars(range(min = 1))]
    pub inflight: u16,
    #[serde(default = "default_keep_alive")]
    #[schemars(range(min = 5))]
    pub keep_alive_secs: u16,
}

fn default_inflight() -> u16 {
    1000
}

impl ConnectorConfig for MqttSinkConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        super::check_qos(self.qos)?;
        super::check_tls(self.tls, &self.tls_ca_file)?;
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
    fn client_id(&self) -> String {
        match &self.client_id {
            Some(id) => id.clone(),
            None => format!("hstream-{}", super::short_hash(&["sink", &self.stream, &self.topic])),
        }
    }

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
            // Our position is our own checkpoint, not a broker session.
            clean_session: true,
            session_expiry: 0,
            receive_maximum: 16,
            outgoing_inflight: self.inflight,
            manual_acks: false,
        }
    }
}

pub struct MqttSink {
    config: MqttSinkConfig,
    topic: Template,
    /// None after a flush (which closes the connection to drain it) until the next write.
    conn: Option<Conn>,
}

#[async_trait]
impl Sink for MqttSink {
    type Config = MqttSinkConfig;

    async fn check(config: &MqttSinkConfig) -> Result<(), ConnectorError> {
        let id = format!("hsck-{}", super::short_hash(&["check", &config.client_id()]));
        let conn = client::connect(&config.broker(id)).await?;
        conn.disconnect().await;
        Ok(())
    }

    async fn open(config: MqttSinkConfig) -> Result<Self, ConnectorError> {
        let topic = Template::parse(&config.topic, Side::Sink, "topic").map_err(ConnectorError::config)?;
        let conn = client::connect(&config.broker(config.client_id())).await?;
        Ok(MqttSink {
            config,
            topic,
            conn: Some(conn),
        })
    }

    fn stream(config: &MqttSinkConfig) -> &str {
        &config.stream
    }

    async fn write(&mut self, records: &[SinkRecord]) -> Result<Written, ConnectorError> {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => client::connect(&self.config.broker(self.config.client_id())).await?,
        };
        let conn = self.conn.insert(conn);
        let mut expected = 0usize;
        let mut acked = 0usize;
        for r in records {
            let (topic, payload) = render(&self.topic, &self.config.stream, r)?;
            let props: Vec<(String, String)> = r
                .attributes
                .iter()
                .filter(|(k, _)| !k.starts_with("mqtt."))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            conn.publish(topic, self.config.qos, self.config.retain, payload, props)
                .await?;
            if self.config.qos > 0 {
                expected += 1;
            }
            // Take acknowledgements as they come, so the event queue never fills up.
            while let Ok(ev) = conn.events.try_recv() {
                acked += acked_count(ev)?;
            }
        }
        while acked < expected {
            let ev = conn
                .events
                .recv()
                .await
                .ok_or_else(|| ConnectorError::external("MQTT connection ended"))?;
            acked += acked_count(ev)?;
        }
        // QoS 0: handed to the connection; `flush` makes sure it went out.
        Ok(if self.config.qos == 0 {
            Written::Accepted
        } else {
            Written::Durable
        })
    }

    /// Closes the connection after everything queued on it went out (the DISCONNECT follows the
    /// publishes); the next write connects again.
    async fn flush(&mut self) -> Result<(), ConnectorError> {
        if let Some(c) = self.conn.take() {
            c.disconnect().await;
        }
        Ok(())
    }
}

/// 1 for an acknowledged publish, 0 for other events.
fn acked_count(ev: Result<Event, ConnectorError>) -> Result<usize, ConnectorError> {
    match ev? {
        Event::Acked(Ok(())) => Ok(1),
        // MQTT 5 reason codes: those that retrying cannot change park the task.
        Event::Acked(Err(reason)) => {
            let message = format!("the broker refused a publish ({reason})");
            Err(match reason.as_str() {
                "NotAuthorized" | "TopicNameInvalid" | "PayloadFormatInvalid" => {
                    ConnectorError::config(format!("topic: {message}"))
                }
                _ => ConnectorError::external(message),
            })
        }
        Event::Publish(_) | Event::SubAck(_) => Ok(0),
    }
}

/// The topic and payload for a record: a JSON record is published as JSON text.
fn render(topic: &Template, stream: &str, r: &SinkRecord) -> Result<(String, Bytes), ConnectorError> {
    let doc = match r.flag {
        PayloadFlag::Json => Some(hstream_runtime::structs::decode_json(&r.payload).map_err(|e| {
            ConnectorError::internal(format!(
                "record at shard {} lsn {} index {}: not a JSON record: {e}",
                r.shard_id, r.lsn, r.index
            ))
        })?),
        PayloadFlag::Raw if topic.uses_fields() => serde_json::from_slice(&r.payload).ok(),
        PayloadFlag::Raw => None,
    };
    let payload = match (&doc, r.flag) {
        (Some(v), PayloadFlag::Json) => Bytes::from(v.to_string()),
        _ => r.payload.clone(),
    };
    let name = topic.render(|v, out| match v {
        Var::Key => out.push_str(&r.key),
        Var::Stream => out.push_str(stream),
        Var::Payload => out.push_str(&String::from_utf8_lossy(&payload)),
        Var::Field(path) => push_field(doc.as_ref(), path, out),
        Var::Topic | Var::Qos | Var::UserProperty(_) => {}
    });
    super::check_topic_name(&name).map_err(|e| {
        ConnectorError::config(format!(
            "topic: record at shard {} lsn {} index {} renders {e}",
            r.shard_id, r.lsn, r.index
        ))
    })?;
    Ok((name, payload))
}
