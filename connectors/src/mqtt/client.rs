//! One MQTT connection, whichever protocol version: rumqttc's client and event loop for 3.1.1
//! (`rumqttc`) or 5 (`rumqttc::v5`) behind one small interface.
//!
//! The event loop runs in a task of its own and hands events over a channel, so the connector
//! can batch what is ready without cancelling a poll mid-packet. A connection is never reused
//! after an error: acknowledgements queued for one connection must not reach the next one,
//! where the broker may have given the same packet id to another message.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hstream_runtime::{ConnectorError, Secret};
use rumqttc::v5 as r5;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::{MAX_PACKET, Protocol};

/// Events handed from the event loop task.
const EVENT_QUEUE: usize = 4096;
/// Requests (acks, publishes) queued towards the event loop.
const REQUEST_QUEUE: usize = 4096;

/// Where and how to connect.
pub(crate) struct Broker<'a> {
    pub host: &'a str,
    pub port: u16,
    pub client_id: String,
    pub username: Option<&'a str>,
    pub password: Option<&'a Secret>,
    pub tls: bool,
    pub tls_ca_file: Option<&'a str>,
    pub protocol: Protocol,
    pub keep_alive: Duration,
    /// Start without the broker's stored session (and, with 3.1.1, end it at disconnect).
    pub clean_session: bool,
    /// MQTT 5: how long the broker keeps the session after a disconnect.
    pub session_expiry: u32,
    /// MQTT 5 Receive Maximum: QoS 1/2 messages the broker may have unacknowledged with us.
    pub receive_maximum: u16,
    /// Our own QoS 1/2 publishes in flight at most.
    pub outgoing_inflight: u16,
    pub manual_acks: bool,
}

/// A received message, kept whole so it can be acknowledged.
pub(crate) enum Msg {
    V4(rumqttc::Publish),
    V5(r5::mqttbytes::v5::Publish),
}

impl Msg {
    pub fn topic(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Msg::V4(p) => std::borrow::Cow::Borrowed(&p.topic),
            Msg::V5(p) => String::from_utf8_lossy(&p.topic),
        }
    }

    pub fn payload(&self) -> &Bytes {
        match self {
            Msg::V4(p) => &p.payload,
            Msg::V5(p) => &p.payload,
        }
    }

    pub fn qos(&self) -> u8 {
        match self {
            Msg::V4(p) => p.qos as u8,
            Msg::V5(p) => p.qos as u8,
        }
    }

    pub fn retain(&self) -> bool {
        match self {
            Msg::V4(p) => p.retain,
            Msg::V5(p) => p.retain,
        }
    }

    /// MQTT 5 user properties, in order (names may repeat).
    pub fn user_properties(&self) -> &[(String, String)] {
        match self {
            Msg::V4(_) => &[],
            Msg::V5(p) => p.properties.as_ref().map_or(&[], |pp| pp.user_properties.as_slice()),
        }
    }
}

pub(crate) enum Event {
    Publish(Msg),
    /// Per subscribed filter: the QoS granted, or why it was refused.
    SubAck(Vec<Result<u8, String>>),
    /// The broker acknowledged one of our QoS 1/2 publishes (`Err`: refused it, MQTT 5).
    Acked(Result<(), String>),
}

#[derive(Clone)]
enum Handle {
    V4(rumqttc::AsyncClient),
    V5(r5::AsyncClient),
}

pub(crate) struct Conn {
    handle: Handle,
    pub events: mpsc::Receiver<Result<Event, ConnectorError>>,
    pub session_present: bool,
    _task: AbortOnDropHandle<()>,
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> r5::mqttbytes::QoS {
    match q {
        0 => r5::mqttbytes::QoS::AtMostOnce,
        1 => r5::mqttbytes::QoS::AtLeastOnce,
        _ => r5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// A rustls client config with ring, trusting `ca_file` (PEM) or the system's roots.
fn tls_config(ca_file: Option<&str>) -> Result<Arc<rustls::ClientConfig>, ConnectorError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ConnectorError::config(format!("tls_ca_file: cannot read {path}")).with_source(e))?;
            for cert in certs {
                let cert = cert.map_err(|e| ConnectorError::config(format!("tls_ca_file: {path}")).with_source(e))?;
                roots
                    .add(cert)
                    .map_err(|e| ConnectorError::config(format!("tls_ca_file: {path}")).with_source(e))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(ConnectorError::config(
            "tls_ca_file: no CA certificate to verify the broker with",
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectorError::internal("TLS setup").with_source(e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn transport(b: &Broker<'_>) -> Result<rumqttc::Transport, ConnectorError> {
    Ok(if b.tls {
        rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls_config(b.tls_ca_file)?))
    } else {
        rumqttc::Transport::tcp()
    })
}

/// Who we are talking to, for error messages (owned by the event loop task).
#[derive(Clone)]
struct Peer {
    at: String,
    client_id: String,
    protocol: Protocol,
}

impl Peer {
    /// What a refused CONNECT means for the user.
    fn refused(&self, code: &str) -> ConnectorError {
        let at = &self.at;
        match code {
            "BadUserNamePassword" | "NotAuthorized" | "BadAuthenticationMethod" | "Banned" => ConnectorError::config(
                format!("username/password: the broker at {at} refused the login ({code})"),
            ),
            "BadClientId" | "ClientIdentifierNotValid" => ConnectorError::config(format!(
                "client_id: the broker at {at} refused client id {:?} ({code})",
                self.client_id
            )),
            "RefusedProtocolVersion" | "UnsupportedProtocolVersion" => ConnectorError::config(format!(
                "protocol: the broker at {at} does not speak MQTT {} ({code})",
                match self.protocol {
                    Protocol::V311 => "3.1.1",
                    Protocol::V5 => "5",
                }
            )),
            _ => ConnectorError::external(format!("the broker at {at} refused the connection ({code})")),
        }
    }

    fn lost(&self, e: impl std::error::Error + Send + Sync + 'static) -> ConnectorError {
        ConnectorError::external(format!("MQTT connection to {}", self.at)).with_source(e)
    }

    fn disconnected(&self, reason: impl std::fmt::Debug) -> ConnectorError {
        ConnectorError::external(format!(
            "MQTT connection to {}: the broker disconnected us ({reason:?})",
            self.at
        ))
    }
}

/// One step of the event loop: an event to hand over, nothing, or the end.
enum Step {
    Connected(bool),
    Event(Event),
    Skip,
    Failed(ConnectorError),
}

async fn pump<F>(
    tx: mpsc::Sender<Result<Event, ConnectorError>>,
    connected: tokio::sync::oneshot::Sender<Result<bool, ConnectorError>>,
    mut next: F,
) where
    F: AsyncFnMut() -> Step,
{
    let mut connected = Some(connected);
    loop {
        match next().await {
            Step::Skip => {}
            Step::Connected(session_present) => {
                if let Some(c) = connected.take() {
                    let _ = c.send(Ok(session_present));
                }
            }
            Step::Event(e) => {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            Step::Failed(e) => {
                // Before the CONNACK the error goes to `connect`, after it to the event reader.
                match connected.take() {
                    Some(c) => {
                        let _ = c.send(Err(e));
                    }
                    None => {
                        let _ = tx.send(Err(e)).await;
                    }
                }
                return;
            }
        }
    }
}

/// Connects and waits for the broker's CONNACK.
pub(crate) async fn connect(b: &Broker<'_>) -> Result<Conn, ConnectorError> {
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let (ctx, crx) = tokio::sync::oneshot::channel();
    let peer = Peer {
        at: format!("{}:{}", b.host, b.port),
        client_id: b.client_id.clone(),
        protocol: b.protocol,
    };
    let (handle, task) = match b.protocol {
        Protocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(b.client_id.clone(), b.host, b.port);
            o.set_keep_alive(b.keep_alive)
                .set_clean_session(b.clean_session)
                .set_manual_acks(b.manual_acks)
                .set_max_packet_size(MAX_PACKET as usize, MAX_PACKET as usize)
                .set_inflight(b.outgoing_inflight.max(1))
                .set_request_channel_capacity(REQUEST_QUEUE)
                .set_transport(transport(b)?);
            if let Some(u) = b.username {
                o.set_credentials(u, b.password.map_or("", |p| p.expose()));
            }
            let (client, mut el) = rumqttc::AsyncClient::new(o, REQUEST_QUEUE);
            let task = tokio::spawn(pump(tx, ctx, async move || {
                use rumqttc::{Packet, SubscribeReasonCode};
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(p)) => match p {
                        Packet::ConnAck(c) => Step::Connected(c.session_present),
                        Packet::Publish(p) => Step::Event(Event::Publish(Msg::V4(p))),
                        Packet::SubAck(s) => Step::Event(Event::SubAck(
                            s.return_codes
                                .iter()
                                .map(|c| match c {
                                    SubscribeReasonCode::Success(q) => Ok(*q as u8),
                                    SubscribeReasonCode::Failure => Err("Failure".to_owned()),
                                })
                                .collect(),
                        )),
                        Packet::PubAck(_) | Packet::PubComp(_) => Step::Event(Event::Acked(Ok(()))),
                        _ => Step::Skip,
                    },
                    Ok(_) => Step::Skip,
                    Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                        Step::Failed(peer.refused(&format!("{code:?}")))
                    }
                    Err(e) => Step::Failed(peer.lost(e)),
                }
            }));
            (Handle::V4(client), task)
        }
        Protocol::V5 => {
            let mut o = r5::MqttOptions::new(b.client_id.clone(), b.host, b.port);
            o.set_keep_alive(b.keep_alive)
                .set_clean_start(b.clean_session)
                .set_manual_acks(b.manual_acks)
                .set_max_packet_size(Some(MAX_PACKET))
                .set_receive_maximum(Some(b.receive_maximum.max(1)))
                .set_outgoing_inflight_upper_limit(b.outgoing_inflight.max(1))
                .set_request_channel_capacity(REQUEST_QUEUE)
                .set_transport(transport(b)?);
            if !b.clean_session {
                o.set_session_expiry_interval(Some(b.session_expiry));
            }
            if let Some(u) = b.username {
                o.set_credentials(u, b.password.map_or("", |p| p.expose()));
            }
            let (client, mut el) = r5::AsyncClient::new(o, REQUEST_QUEUE);
            let task = tokio::spawn(pump(tx, ctx, async move || {
                use r5::mqttbytes::v5::{Packet, PubAckReason, PubRecReason, SubscribeReasonCode};
                match el.poll().await {
                    Ok(r5::Event::Incoming(p)) => match p {
                        Packet::ConnAck(c) => Step::Connected(c.session_present),
                        Packet::Publish(p) => Step::Event(Event::Publish(Msg::V5(p))),
                        Packet::SubAck(s) => Step::Event(Event::SubAck(
                            s.return_codes
                                .iter()
                                .map(|c| match c {
                                    SubscribeReasonCode::Success(q) => Ok(*q as u8),
                                    other => Err(format!("{other:?}")),
                                })
                                .collect(),
                        )),
                        Packet::PubAck(a) => Step::Event(Event::Acked(match a.reason {
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                            other => Err(format!("{other:?}")),
                        })),
                        // A refused QoS 2 publish ends at PUBREC; an accepted one at PUBCOMP.
                        Packet::PubRec(r) => match r.reason {
                            PubRecReason::Success | PubRecReason::NoMatchingSubscribers => Step::Skip,
                            other => Step::Event(Event::Acked(Err(format!("{other:?}")))),
                        },
                        Packet::PubComp(_) => Step::Event(Event::Acked(Ok(()))),
                        Packet::Disconnect(d) => Step::Failed(peer.disconnected(d.reason_code)),
                        _ => Step::Skip,
                    },
                    Ok(_) => Step::Skip,
                    Err(r5::ConnectionError::ConnectionRefused(code)) => {
                        Step::Failed(peer.refused(&format!("{code:?}")))
                    }
                    Err(e) => Step::Failed(peer.lost(e)),
                }
            }));
            (Handle::V5(client), task)
        }
    };
    let task = AbortOnDropHandle::new(task);
    let session_present = crx
        .await
        .map_err(|_| ConnectorError::external("the MQTT connection ended before the broker's CONNACK"))??;
    Ok(Conn {
        handle,
        events: rx,
        session_present,
        _task: task,
    })
}

/// Acknowledges received messages (PUBACK for QoS 1, PUBREC for QoS 2), in the order given.
pub(crate) struct Acker {
    tx: Option<mpsc::UnboundedSender<Msg>>,
    task: Option<AbortOnDropHandle<()>>,
}

impl Acker {
    pub fn ack(&self, m: Msg) {
        if let Some(tx) = &self.tx {
            // A closed queue means the connection is gone; the broker will send the message again.
            let _ = tx.send(m);
        }
    }

    /// Hands every queued acknowledgement to the connection (before a DISCONNECT), briefly.
    pub async fn finish(mut self) {
        self.tx = None;
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
    }
}

fn gone(e: impl std::error::Error + Send + Sync + 'static) -> ConnectorError {
    ConnectorError::external("MQTT connection closed").with_source(e)
}

impl Conn {
    pub async fn subscribe(&self, filters: &[String], qos: u8) -> Result<(), ConnectorError> {
        match &self.handle {
            Handle::V4(c) => c
                .subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos4(qos))),
                )
                .await
                .map_err(gone),
            Handle::V5(c) => c
                .subscribe_many(
                    filters
                        .iter()
                        .map(|f| r5::mqttbytes::v5::Filter::new(f.clone(), qos5(qos))),
                )
                .await
                .map_err(gone),
        }
    }

    /// A sender of acknowledgements that never blocks its caller, so the connector keeps
    /// draining events while acknowledgements queue towards the event loop (which may itself be
    /// waiting for the connector to take events).
    pub fn acker(&self) -> Acker {
        let handle = self.handle.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let task = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let sent = match (&handle, &m) {
                    (Handle::V4(c), Msg::V4(p)) => c.ack(p).await.is_ok(),
                    (Handle::V5(c), Msg::V5(p)) => c.ack(p).await.is_ok(),
                    _ => false,
                };
                if !sent {
                    return;
                }
            }
        });
        Acker {
            tx: Some(tx),
            task: Some(AbortOnDropHandle::new(task)),
        }
    }

    pub async fn publish(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        payload: Bytes,
        user_properties: Vec<(String, String)>,
    ) -> Result<(), ConnectorError> {
        match &self.handle {
            Handle::V4(c) => c.publish_bytes(topic, qos4(qos), retain, payload).await.map_err(gone),
            Handle::V5(c) => {
                if user_properties.is_empty() {
                    c.publish_bytes(topic, qos5(qos), retain, payload).await.map_err(gone)
                } else {
                    let props = r5::mqttbytes::v5::PublishProperties {
                        user_properties,
                        ..Default::default()
                    };
                    c.publish_bytes_with_properties(topic, qos5(qos), retain, payload, props)
                        .await
                        .map_err(gone)
                }
            }
        }
    }

    /// Says goodbye (a normal DISCONNECT keeps a persistent session), briefly.
    pub async fn disconnect(self) {
        let bye = async {
            match &self.handle {
                Handle::V4(c) => c.disconnect().await.is_ok(),
                Handle::V5(c) => c.disconnect().await.is_ok(),
            }
        };
        if tokio::time::timeout(Duration::from_secs(1), bye).await.unwrap_or(false) {
            // Let the event loop write it out; it ends when the connection closes.
            let mut events = self.events;
            let _ =
                tokio::time::timeout(Duration::from_secs(1), async { while events.recv().await.is_some() {} }).await;
        }
    }
}
