//! A throw-away single-member etcd for tests (Debian's `etcd-server`, which `scripts/test.sh`
//! installs), on free loopback ports (never the machine's own 2379), with its data in a
//! temporary directory; killed when dropped.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub struct Etcd {
    dir: tempfile::TempDir,
    pub client: SocketAddr,
    peer: u16,
    child: Child,
}

fn spawn(dir: &Path, client: u16, peer: u16, die_with_thread: bool) -> Child {
    let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("etcd is not installed: scripts/test.sh installs Debian's etcd-server");
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))
        .expect("log file");
    let mut command = Command::new(bin);
    command
        .args(["--name", "t", "--data-dir"])
        .arg(dir.join("data"))
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
        .stderr(log);
    if die_with_thread {
        die_with_parent_thread(&mut command);
    }
    command.spawn().expect("starting etcd")
}

/// The child gets SIGKILL when the thread that spawned it ends.
#[allow(unsafe_code)]
fn die_with_parent_thread(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and calls only prctl(2), which is
    // async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

impl Etcd {
    /// Starts etcd and waits until it reports itself healthy.
    pub async fn start() -> Etcd {
        tokio::task::spawn_blocking(|| Self::launch(None))
            .await
            .expect("etcd launcher")
    }

    /// One etcd for the whole test process, started on first use; it dies with the process
    /// (the kernel kills it when the thread that started it, which lives as long as the
    /// process, goes).
    pub fn shared() -> &'static Etcd {
        static SHARED: OnceLock<Etcd> = OnceLock::new();
        SHARED.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            // Statics are never dropped, so a shared etcd's directory outlives its process:
            // each one is named by the pid, and those of processes gone are removed here.
            let tmp = std::env::temp_dir();
            for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("hstream-etcd-shared-")
                    && !Path::new("/proc").join(pid).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            let dir = tmp.join(format!("hstream-etcd-shared-{}", std::process::id()));
            std::thread::spawn(move || {
                tx.send(Self::launch(Some(dir))).expect("send etcd");
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("etcd launcher thread")
        })
    }

    /// A member of its own in a temporary directory, or (`shared`) in that directory, dying
    /// with the thread that starts it.
    fn launch(shared: Option<std::path::PathBuf>) -> Etcd {
        let die_with_thread = shared.is_some();
        let dir = match shared {
            Some(path) => {
                std::fs::create_dir_all(&path).expect("etcd dir");
                tempfile::TempDir::with_prefix_in("data", &path).expect("tempdir")
            }
            None => tempfile::Builder::new()
                .prefix("hstream-etcd")
                .tempdir()
                .expect("tempdir"),
        };
        let (client, peer) = (super::free_port(), super::free_port());
        let child = spawn(dir.path(), client, peer, die_with_thread);
        let etcd = Etcd {
            dir,
            client: SocketAddr::from(([127, 0, 0, 1], client)),
            peer,
            child,
        };
        etcd.wait_healthy();
        etcd
    }

    fn wait_healthy(&self) {
        let healthy = super::holds_within_blocking(Duration::from_secs(30), || self.healthy());
        assert!(healthy, "etcd did not become healthy:\n{}", self.log());
    }

    /// `GET /health` answers `{"health":"true"}`.
    fn healthy(&self) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(self.client) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!(
            "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.client
        );
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200") && out.contains(r#""health":"true""#)
    }

    /// SIGKILL: etcd is gone until [`restart`](Self::restart).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts etcd again on the same ports and data, and waits until it is healthy.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.dir.path(), self.client.port(), self.peer, false);
        self.wait_healthy();
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
