//! Throw-away NATS servers with JetStream for tests (Debian's `nats-server`, which
//! `scripts/test.sh` installs), on free loopback ports (never the machine's own 4222), with
//! their store in a temporary directory and `max_payload` raised to 8 MiB (a batch may be up
//! to `max-record-size`); killed when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Nats {
    dir: tempfile::TempDir,
    pub client: SocketAddr,
    monitor: SocketAddr,
    child: Option<Child>,
    die_with_thread: bool,
}

impl Nats {
    /// Starts one JetStream server and waits until it reports itself healthy.
    pub async fn start() -> Nats {
        tokio::task::spawn_blocking(Self::launch).await.expect("nats launcher")
    }

    /// One JetStream server for the whole test process, started on first use; it dies with
    /// the process (the kernel kills it when the thread that started it, which lives as long
    /// as the process, goes).
    pub fn shared() -> &'static Nats {
        static SHARED: std::sync::OnceLock<Nats> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                tx.send(Self::launch_with(true)).expect("send nats");
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("nats launcher thread")
        })
    }

    fn launch() -> Nats {
        Self::launch_with(false)
    }

    /// A server in a temporary directory; with `die_with_thread` it gets SIGKILL when the
    /// thread that starts it ends.
    fn launch_with(die_with_thread: bool) -> Nats {
        let dir = tempfile::Builder::new()
            .prefix("hstream-nats")
            .tempdir()
            .expect("tempdir");
        let mut nats = Nats {
            client: SocketAddr::from(([127, 0, 0, 1], super::free_port())),
            monitor: SocketAddr::from(([127, 0, 0, 1], super::free_port())),
            dir,
            child: None,
            die_with_thread,
        };
        nats.spawn();
        nats
    }

    fn spawn(&mut self) {
        let bin = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nats-server is not installed: scripts/test.sh installs Debian's nats-server");
        let conf = self.dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: {}\nhttp: {}\nmax_payload: 8388608\njetstream {{\n  store_dir: \"{}\"\n}}\n",
                self.client,
                self.monitor,
                self.dir.path().join("js").display()
            ),
        )
        .expect("nats.conf");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .expect("log file");
        let mut command = Command::new(bin);
        command.arg("-c").arg(&conf).stdout(Stdio::null()).stderr(log);
        if self.die_with_thread {
            crate::etcd::die_with_parent_thread(&mut command);
        }
        let child = command.spawn().expect("starting nats-server");
        self.child = Some(child);
        let healthy = super::holds_within_blocking(Duration::from_secs(30), || self.healthy());
        assert!(healthy, "nats-server did not become healthy:\n{}", self.log());
    }

    /// `GET /healthz` on the monitoring port answers `{"status":"ok"}`.
    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(self.monitor) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!(
            "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.monitor
        );
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200") && out.contains(r#""status":"ok""#)
    }

    /// SIGKILL: the server is gone until [`restart`](Self::restart).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and store, and waits until it is healthy.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A store URI for this server under `prefix`.
    pub fn uri(&self, prefix: &str) -> String {
        format!("nats://{}/{prefix}", self.client)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}
