//! A throw-away Mosquitto for tests, on a free port (never the machine's own 1883), with
//! persistence in a temporary directory so a restart keeps sessions and queued messages; and a
//! small MQTT publisher and subscriber (rumqttc, MQTT 3.1.1) to drive it.
//!
//! Broker settings a connector with acknowledgements-after-durability needs, as an operator
//! would set them: `max_inflight_messages 1000` (3.1.1 clients get 20 by default),
//! `max_queued_messages 0` (no cap: the default of 1000 drops QoS 1 messages of an offline
//! persistent session beyond it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

pub struct Mosquitto {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    /// Extra lines of `mosquitto.conf`.
    extra: Vec<String>,
    /// TLS: the CA certificate (PEM) that signed the broker's certificate.
    pub ca_file: Option<PathBuf>,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Self::start_with(&[])
    }

    /// As [`start`](Self::start), with extra configuration lines.
    pub fn start_with(extra: &[&str]) -> Mosquitto {
        let dir = tempfile::Builder::new()
            .prefix("hstream-mosquitto")
            .tempdir()
            .expect("tempdir");
        let mut m = Mosquitto {
            dir,
            port: 0,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ca_file: None,
        };
        m.launch();
        m
    }

    /// A broker that speaks only TLS (a certificate for 127.0.0.1 and localhost, signed by a
    /// [`TestCa`](crate::tls::TestCa) of its own) and accepts only `user` with `password`.
    pub fn start_tls(user: &str, password: &str) -> Mosquitto {
        let dir = tempfile::Builder::new()
            .prefix("hstream-mosquitto")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let ca = crate::tls::TestCa::make(d);
        let out = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(d.join("passwd"))
            .args([user, password])
            .output()
            .expect("run mosquitto_passwd");
        assert!(
            out.status.success(),
            "mosquitto_passwd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let extra = vec![
            format!("certfile {}", ca.server_cert.display()),
            format!("keyfile {}", ca.server_key.display()),
            format!("password_file {}/passwd", d.display()),
            "allow_anonymous false".to_owned(),
        ];
        let mut m = Mosquitto {
            ca_file: Some(ca.ca),
            dir,
            port: 0,
            child: None,
            extra,
        };
        m.launch();
        m
    }

    fn launch(&mut self) {
        let m = self;
        // A free port may be taken between the probe and the bind: try a few.
        for _ in 0..5 {
            m.port = crate::free_port();
            if m.spawn() {
                return;
            }
        }
        panic!("Mosquitto did not start: {}", m.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn spawn(&mut self) -> bool {
        let d = self.dir.path();
        let mut conf = format!(
            "listener {} 127.0.0.1\npersistence true\npersistence_location {}/\n\
             max_inflight_messages 1000\nmax_queued_messages 0\nlog_dest file {}/mosquitto.log\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
            self.port,
            d.display(),
            d.display()
        );
        if !self.extra.iter().any(|l| l.starts_with("allow_anonymous")) {
            conf.push_str("allow_anonymous true\n");
        }
        if crate::service_account("root").is_some() {
            // Run as root rather than drop to the `mosquitto` account (it owns nothing here).
            conf.push_str("user root\n");
        }
        for l in &self.extra {
            conf.push_str(l);
            conf.push('\n');
        }
        let path = d.join("mosquitto.conf");
        std::fs::write(&path, conf).expect("write mosquitto.conf");
        let mut child = Command::new(binary())
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        let mut exited = false;
        let port = self.port;
        let up = crate::holds_within_blocking(Duration::from_secs(30), || {
            exited = matches!(child.try_wait(), Ok(Some(_)));
            exited || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "Mosquitto not listening in 30 s: {}", self.log());
        if exited {
            return false;
        }
        self.child = Some(child);
        true
    }

    /// Stops the broker cleanly (it saves its sessions and queues), and returns once it exited.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::signal(&c, libc::SIGTERM);
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, with the saved state.
    pub fn start_again(&mut self) {
        assert!(self.spawn(), "Mosquitto did not restart: {}", self.log());
    }

    /// Connector options reaching this broker.
    pub fn connector_config(&self) -> serde_json::Value {
        serde_json::json!({ "host": "127.0.0.1", "port": self.port })
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `mosquitto` from PATH, or where Debian puts it (/usr/sbin is not on every user's PATH).
fn binary() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/mosquitto");
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("mosquitto").is_file()))
        .unwrap_or(false);
    if !on_path && sbin.is_file() {
        sbin
    } else {
        PathBuf::from("mosquitto")
    }
}

fn options(port: u16, client_id: &str, clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(clean)
        .set_max_packet_size(16 << 20, 16 << 20)
        .set_inflight(1000);
    o
}

/// Publishes `messages` (topic, payload) in order with `qos` from a persistent session, and
/// returns once the broker acknowledged every one (QoS 1/2). Survives broker restarts: the
/// session's unacknowledged publishes are sent again on reconnect.
pub async fn publish(port: u16, client_id: impl Into<String>, messages: Vec<(String, Bytes)>, qos: QoS) {
    let (client, mut el) = AsyncClient::new(options(port, &client_id.into(), false), 1024);
    let total = messages.len();
    let sender = tokio::spawn(async move {
        for (t, p) in messages {
            client.publish_bytes(t, qos, false, p).await.expect("queue publish");
        }
        client
    });
    let mut acked = 0usize;
    while qos != QoS::AtMostOnce && acked < total || qos == QoS::AtMostOnce && !sender.is_finished() {
        match el.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => acked += 1,
            Ok(_) => {}
            // The broker went away: the next poll reconnects once it listens again.
            Err(_) => {
                let back = crate::holds_within(Duration::from_secs(60), || async {
                    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
                })
                .await;
                assert!(back, "the broker on port {port} did not come back");
            }
        }
    }
    let client = sender.await.expect("sender");
    let _ = client.disconnect().await;
    // Let the DISCONNECT go out.
    while let Ok(ev) = tokio::time::timeout(Duration::from_secs(1), el.poll()).await {
        if ev.is_err() {
            break;
        }
    }
}

/// Whether the broker still has a session for `client_id` (connects without ending it).
pub async fn session_present(port: u16, client_id: &str) -> bool {
    let (client, mut el) = AsyncClient::new(options(port, client_id, false), 16);
    let present = loop {
        match el.poll().await.expect("connect") {
            Event::Incoming(Packet::ConnAck(c)) => break c.session_present,
            _ => continue,
        }
    };
    let _ = client.disconnect().await;
    while let Ok(ev) = tokio::time::timeout(Duration::from_secs(1), el.poll()).await {
        if ev.is_err() {
            break;
        }
    }
    present
}

/// A subscriber collecting every message of a topic filter (QoS 1, automatic acks).
pub struct Subscriber {
    pub received: Arc<Mutex<Vec<(String, Bytes)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Subscribes with a clean session and returns once the broker confirmed the subscription.
    pub async fn start(port: u16, client_id: &str, filter: &str) -> Subscriber {
        Self::connect(port, client_id, filter, true).await
    }

    /// As [`start`](Self::start), taking over the persistent session of `client_id` (and what
    /// the broker still holds for it).
    pub async fn start_session(port: u16, client_id: &str, filter: &str) -> Subscriber {
        Self::connect(port, client_id, filter, false).await
    }

    async fn connect(port: u16, client_id: &str, filter: &str, clean: bool) -> Subscriber {
        let (client, mut el) = AsyncClient::new(options(port, client_id, clean), 1024);
        client.subscribe(filter, QoS::AtLeastOnce).await.expect("subscribe");
        let received = Arc::new(Mutex::new(Vec::new()));
        // A resumed session's backlog may come before the SUBACK.
        loop {
            match el.poll().await.expect("subscriber connects") {
                Event::Incoming(Packet::SubAck(_)) => break,
                Event::Incoming(Packet::Publish(p)) => received.lock().expect("lock").push((p.topic, p.payload)),
                _ => continue,
            }
        }
        let sink = received.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            while let Ok(ev) = el.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = ev {
                    sink.lock().expect("lock").push((p.topic, p.payload));
                }
            }
        });
        Subscriber { received, task }
    }

    pub fn count(&self) -> usize {
        self.received.lock().expect("lock").len()
    }

    pub fn take(&self) -> Vec<(String, Bytes)> {
        std::mem::take(&mut *self.received.lock().expect("lock"))
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}
