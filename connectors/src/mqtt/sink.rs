//! The `mqtt` sink: publishes a stream's records to a topic rendered per record, with a chosen
//! QoS. A batch counts as written once the broker has acknowledged every one of its QoS 1/2
//! publishes; with QoS 0 once the connection they were queued on was closed after them (at
//! most once, as QoS 0 is).
//! After a failure the task restarts from its last durable position, so a broker may see a
//! record again (at-least-once).

use async_trait::async_trait;
use bytes::Bytes;
use hstream_runtime::{ConnectorError, PayloadFlag, Sink, SinkRecord, Written};

use super::client::{self, Conn, Event};
pub use super::config::MqttSinkConfig;
use super::template::{Side, Template, Var, push_field};

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
