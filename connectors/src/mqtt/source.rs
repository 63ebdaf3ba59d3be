//! The `mqtt` source: subscribes to topic filters and appends each message as a record (the
//! payload, with the topic, QoS, retain flag and MQTT 5 user properties as attributes).
//!
//! A QoS 1/2 message is acknowledged only once its record is durable, in the order messages came
//! (MQTT's rule for acknowledgements). The broker holds our place: with a persistent session it
//! re-sends what we had not acknowledged when we went away, so after a crash such messages may
//! appear twice in the stream (at-least-once), never zero times. The offset the runtime stores is
//! only a counter of messages taken, for people watching.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hstream_runtime::tolerance::Stage;
use hstream_runtime::{Attributes, ConnectorError, Done, Offset, PayloadFlag, Record, Source, SourceOutput};
use serde::{Deserialize, Serialize};

use super::client::{self, Conn, Event, Msg};
pub use super::config::{MqttSourceConfig, PayloadFormat};
use super::template::{Side, Template, Var, push_field};

/// Messages per emitted batch at most (a batch also goes out whenever nothing more is ready).
const MAX_BATCH: usize = 4096;
/// How long a stopping source waits for its last records to be durable, to acknowledge them.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Attribute names of a record, beside the message's own user properties.
pub const ATTR_TOPIC: &str = "mqtt.topic";
pub const ATTR_QOS: &str = "mqtt.qos";
pub const ATTR_RETAIN: &str = "mqtt.retain";

/// Messages taken so far (by this connector, across runs), and the filters the broker session
/// is subscribed to (a resumed session with the same filters is not subscribed again, which
/// would make the broker send its retained messages again).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttOffset {
    pub messages: u64,
    #[serde(default)]
    pub filters: Vec<String>,
}

impl Offset for MqttOffset {
    const VERSION: u32 = 1;
}

pub struct MqttSource {
    config: MqttSourceConfig,
    filters: Vec<String>,
    /// The filters the broker session had at the last checkpoint.
    subscribed: Vec<String>,
    key: Template,
    taken: u64,
    /// Messages that could not become records, since the last emit: failed records for the
    /// runtime's error policy (`errors.tolerance`), with the reason, the message count, and how
    /// many records of the round's batch came before it.
    rejected: Vec<(Record, String, u64, usize)>,
}

/// The QoS to subscribe with: QoS 2 is taken as QoS 1. A QoS 2 delivery ends with the broker's
/// PUBREL, which a resumed session repeats and rumqttc (fresh state per connection) refuses as
/// unsolicited; at-least-once into the stream is what either gives.
fn subscribe_qos(qos: u8) -> u8 {
    qos.min(1)
}

/// Waits for the SUBACK of a subscription, taking publishes that come first (a persistent
/// session's backlog may) into `early`.
/// Returns the filters the broker granted a lower QoS than asked.
async fn subscribed(
    conn: &mut Conn,
    filters: &[String],
    qos: u8,
    early: &mut Vec<Msg>,
) -> Result<Vec<String>, ConnectorError> {
    loop {
        match conn.events.recv().await {
            None => return Err(ConnectorError::external("MQTT connection ended before the SUBACK")),
            Some(Err(e)) => return Err(e),
            Some(Ok(Event::Publish(m))) => early.push(m),
            Some(Ok(Event::Acked(_))) => {}
            Some(Ok(Event::SubAck(codes))) => {
                let mut downgraded = Vec::new();
                for (f, c) in filters.iter().zip(codes) {
                    match c {
                        Err(reason) => {
                            return Err(ConnectorError::config(format!(
                                "topic: the broker refused the subscription to {f:?} ({reason})"
                            )));
                        }
                        Ok(granted) if granted < qos => {
                            tracing::warn!(filter = %f, granted, asked = qos, "the broker granted a lower QoS");
                            downgraded.push(format!("{f} (QoS {granted})"));
                        }
                        Ok(_) => {}
                    }
                }
                return Ok(downgraded);
            }
        }
    }
}

#[async_trait]
impl Source for MqttSource {
    type Config = MqttSourceConfig;
    type Offset = MqttOffset;

    /// Connects with a throw-away clean session under a client id of its own (so a running
    /// task's session is left alone) and subscribes, which proves the login and the ACLs.
    async fn check(config: &MqttSourceConfig) -> Result<(), ConnectorError> {
        let filters = super::filters(&config.topic)?;
        let qos = subscribe_qos(config.qos);
        let mut conn = client::connect(&config.broker(config.check_client_id(), true)).await?;
        conn.subscribe(&filters, qos).await?;
        let mut early = Vec::new();
        let r = subscribed(&mut conn, &filters, qos, &mut early).await;
        conn.disconnect().await;
        r.map(|_| ())
    }

    async fn open(config: MqttSourceConfig, offset: Option<MqttOffset>) -> Result<Self, ConnectorError> {
        let filters = super::filters(&config.topic)?;
        let key =
            Template::parse(&config.key_template, Side::Source, "key_template").map_err(ConnectorError::config)?;
        let (taken, subscribed) = offset.map_or((0, Vec::new()), |o| (o.messages, o.filters));
        Ok(MqttSource {
            config,
            filters,
            subscribed,
            key,
            taken,
            rejected: Vec::new(),
        })
    }

    fn stream(config: &MqttSourceConfig) -> &str {
        &config.stream
    }

    /// Ends the broker session, which would otherwise queue messages for ever.
    async fn on_delete(config: &MqttSourceConfig) -> Result<(), ConnectorError> {
        if config.clean_session {
            return Ok(());
        }
        let conn = client::connect(&config.broker(config.client_id(), true)).await?;
        conn.disconnect().await;
        Ok(())
    }

    async fn run(&mut self, out: &mut SourceOutput<MqttOffset>) -> Result<Done, ConnectorError> {
        let cancel = out.cancelled();
        let qos = subscribe_qos(self.config.qos);
        let connecting = async {
            let client_id = self.config.client_id();
            let mut conn = client::connect(&self.config.broker(client_id, self.config.clean_session)).await?;
            let mut early = Vec::new();
            let mut downgraded = Vec::new();
            // A resumed session keeps its subscriptions; subscribing again would bring the
            // retained messages again (MQTT 3.1.1 has no option against it).
            if !(conn.session_present && self.subscribed == self.filters) {
                conn.subscribe(&self.filters, qos).await?;
                downgraded = subscribed(&mut conn, &self.filters, qos, &mut early).await?;
            }
            Ok::<_, ConnectorError>((conn, early, downgraded))
        };
        let (mut conn, early, downgraded) = tokio::select! {
            c = connecting => c?,
            _ = cancel.cancelled() => return Ok(Done::Cancelled),
        };
        self.subscribed = self.filters.clone();
        let mut status = format!(
            "connected to {}:{} as {} (session {}), subscribed to {}",
            self.config.endpoint.host,
            self.config.endpoint.port,
            self.config.client_id(),
            if conn.session_present { "resumed" } else { "new" },
            self.filters.join(", ")
        );
        if !downgraded.is_empty() {
            status.push_str(&format!(
                "; the broker granted less than QoS {qos} for {}",
                downgraded.join(", ")
            ));
        }
        out.report(status);
        let mut durable = out.durable();
        durable.borrow_and_update();
        let acker = conn.acker();
        // QoS 1/2 messages taken and not yet acknowledged, with the count they were taken at.
        let mut unacked: VecDeque<(u64, Msg)> = VecDeque::new();
        let mut batch: Vec<Record> = Vec::new();
        for m in early {
            self.take(m, &mut batch, &mut unacked);
        }
        if !self.reject_taken(&mut batch, out).await? {
            return Ok(Done::Cancelled);
        }
        if !batch.is_empty() && out.emit(std::mem::take(&mut batch), self.offset()).await.is_err() {
            return Ok(Done::Cancelled);
        }
        // The count of the last emitted batch: what a stop waits to see durable.
        let mut emitted = self.taken;
        let ack_upto = |upto: u64, unacked: &mut VecDeque<(u64, Msg)>| {
            while unacked.front().is_some_and(|(n, _)| *n <= upto) {
                if let Some((_, m)) = unacked.pop_front() {
                    acker.ack(m);
                }
            }
        };
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                changed = durable.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let upto = durable.borrow_and_update().as_ref().map_or(0, |o| o.messages);
                    ack_upto(upto, &mut unacked);
                    out.set_lag(hstream_runtime::Lag::Messages(unacked.len() as u64));
                }
                ev = conn.events.recv() => {
                    let mut next = ev;
                    let mut failed = None;
                    // Take what is ready, then emit it as one batch.
                    loop {
                        match next {
                            None => failed = Some(ConnectorError::external("MQTT connection ended")),
                            Some(Err(e)) => failed = Some(e),
                            Some(Ok(Event::Publish(m))) => self.take(m, &mut batch, &mut unacked),
                            Some(Ok(Event::SubAck(_) | Event::Acked(_))) => {}
                        }
                        if failed.is_some() || batch.len() >= MAX_BATCH {
                            break;
                        }
                        match conn.events.try_recv() {
                            Ok(e) => next = Some(e),
                            Err(_) => break,
                        }
                    }
                    // Also when every message of the round was rejected: the new count lets
                    // their acknowledgements go out in order. What was taken before a failure
                    // is kept (QoS 0 messages would not come again).
                    if !self.reject_taken(&mut batch, out).await? {
                        break; // stopping
                    }
                    if out.emit(std::mem::take(&mut batch), self.offset()).await.is_err() {
                        break; // stopping
                    }
                    emitted = self.taken;
                    out.set_lag(hstream_runtime::Lag::Messages(unacked.len() as u64));
                    if let Some(e) = failed {
                        return Err(e);
                    }
                }
            }
        }
        // Stopping: what was emitted is still being appended. Acknowledge it once durable, so
        // a pause and resume does not bring it back; give up after a while (it would only come
        // back as a duplicate).
        let last = emitted;
        let settled = tokio::time::timeout(
            STOP_GRACE,
            durable.wait_for(|d| d.as_ref().map_or(0, |o| o.messages) >= last),
        )
        .await
        .is_ok();
        if !settled {
            tracing::warn!("stopping before the last messages were durable; they will be delivered again");
        }
        // Whatever is durable by now, even when the wait gave up.
        let upto = durable.borrow().as_ref().map_or(0, |o| o.messages);
        ack_upto(upto, &mut unacked);
        acker.finish().await;
        conn.disconnect().await;
        Ok(Done::Cancelled)
    }
}

impl MqttSource {
    fn offset(&self) -> MqttOffset {
        MqttOffset {
            messages: self.taken,
            filters: self.subscribed.clone(),
        }
    }

    /// Turns a message into a record (or sets it aside as rejected) and queues its
    /// acknowledgement. A record over the stream's size limit is the runtime's to refuse.
    fn take(&mut self, m: Msg, batch: &mut Vec<Record>, unacked: &mut VecDeque<(u64, Msg)>) {
        self.taken += 1;
        match self.record(&m) {
            Ok(r) => batch.push(r),
            Err(why) => {
                // The message as it came: its topic as the key, the payload as is.
                let mut r = Record::new(m.topic().into_owned(), PayloadFlag::Raw, Bytes::clone(m.payload()));
                r.attributes.insert(ATTR_TOPIC.into(), m.topic().into_owned());
                self.rejected.push((r, why, self.taken, batch.len()));
            }
        }
        if m.qos() > 0 {
            unacked.push_back((self.taken, m));
        }
    }

    /// Hands the round's rejected messages to the error policy. Tolerated, each becomes a dead
    /// letter, durable before the count that acknowledges it. Not tolerated, the records taken
    /// before the first one are emitted with the count before it (so it is not acknowledged,
    /// and QoS 0 messages before it are not lost) and its error is returned. `Ok(false)`: the
    /// task is stopping.
    async fn reject_taken(
        &mut self,
        batch: &mut Vec<Record>,
        out: &mut SourceOutput<MqttOffset>,
    ) -> Result<bool, ConnectorError> {
        for (r, why, n, before) in std::mem::take(&mut self.rejected) {
            let topic = r.key.clone();
            let error = ConnectorError::data(format!("MQTT message on topic {topic}: {why}"));
            let at = serde_json::json!({ "topic": topic, "message": n });
            if !out.tolerates_errors() {
                let Err(e) = out.reject(r, Stage::Decode, at, &error).await else {
                    continue;
                };
                batch.truncate(before);
                let upto = MqttOffset {
                    messages: n - 1,
                    filters: self.subscribed.clone(),
                };
                if out.emit(std::mem::take(batch), upto).await.is_err() {
                    return Ok(false);
                }
                return Err(e);
            }
            if out.reject(r, Stage::Decode, at, &error).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn record(&self, m: &Msg) -> Result<Record, String> {
        let topic = m.topic();
        let doc = match self.config.payload_format {
            PayloadFormat::Json => match serde_json::from_slice::<serde_json::Value>(m.payload()) {
                Ok(v @ serde_json::Value::Object(_)) => Some(v),
                Ok(_) => return Err("the payload is JSON but not an object".into()),
                Err(e) => return Err(format!("the payload is not JSON: {e}")),
            },
            PayloadFormat::Raw if self.key.uses_fields() => serde_json::from_slice(m.payload()).ok(),
            PayloadFormat::Raw => None,
        };
        let key = match self.key.only() {
            Some(Var::Topic) => topic.clone().into_owned(),
            _ => self.key.render(|v, out| match v {
                Var::Topic => out.push_str(&topic),
                Var::Qos => out.push(char::from(b'0' + m.qos())),
                Var::Payload => out.push_str(&String::from_utf8_lossy(m.payload())),
                Var::Field(path) => push_field(doc.as_ref(), path, out),
                Var::UserProperty(name) => {
                    if let Some((_, v)) = m.user_properties().iter().find(|(k, _)| k == name) {
                        out.push_str(v);
                    }
                }
                Var::Key | Var::Stream => {}
            }),
        };
        let (flag, payload) = match &doc {
            Some(v) if self.config.payload_format == PayloadFormat::Json => {
                (PayloadFlag::Json, hstream_runtime::structs::encode_json(v))
            }
            _ => (PayloadFlag::Raw, Bytes::clone(m.payload())),
        };
        let mut attributes = Attributes::with_capacity(3 + m.user_properties().len());
        for (k, v) in m.user_properties() {
            attributes.insert(k.clone(), v.clone());
        }
        attributes.insert(ATTR_TOPIC.into(), topic.into_owned());
        attributes.insert(ATTR_QOS.into(), m.qos().to_string());
        attributes.insert(ATTR_RETAIN.into(), m.retain().to_string());
        Ok(Record {
            key,
            flag,
            payload,
            attributes,
        })
    }
}
