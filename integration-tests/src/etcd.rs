//! A throw-away single-member etcd for tests (Debian's `etcd-server`, which `scripts/test.sh`
//! installs), on free loopback ports (never the machine's own 2379), with its data in a
//! temporary directory; killed when dropped.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Etcd {
    dir: tempfile::TempDir,
    pub client: SocketAddr,
    child: Child,
}

impl Etcd {
    /// Starts etcd and waits until it reports itself healthy.
    pub async fn start() -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("hstream-etcd")
            .tempdir()
            .expect("tempdir");
        let (client, peer) = (super::free_port(), super::free_port());
        let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("etcd is not installed: scripts/test.sh installs Debian's etcd-server");
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(bin)
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("t={peer_url}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("etcd.log")).expect("log file"))
            .spawn()
            .expect("starting etcd");
        let etcd = Etcd {
            dir,
            client: SocketAddr::from(([127, 0, 0, 1], client)),
            child,
        };
        let addr = etcd.client;
        let healthy = super::holds_within(Duration::from_secs(30), || async move {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                return false;
            }
            let (status, body) = super::http(addr, "GET", "/health", None).await;
            status == 200 && body["health"] == "true"
        })
        .await;
        assert!(healthy, "etcd did not become healthy:\n{}", etcd.log());
        etcd
    }

    /// A metastore URI for this etcd under `prefix`.
    pub fn uri(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.client)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
