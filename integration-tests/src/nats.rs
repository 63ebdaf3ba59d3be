//! Throw-away NATS servers with JetStream for tests (Debian's `nats-server`, which
//! `scripts/test.sh` installs): one server for most tests, a three-node JetStream cluster
//! (routes between them) for the fault tests; on free loopback ports (never the machine's own
//! 4222), with their stores in a temporary directory and `max_payload` raised to 8 MiB (a batch
//! may be up to `max-record-size`); killed when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Nats {
    dir: tempfile::TempDir,
    /// The first member's client address.
    pub client: SocketAddr,
    members: Vec<Member>,
    die_with_thread: bool,
}

struct Member {
    name: String,
    client: SocketAddr,
    monitor: SocketAddr,
    /// Route port (clusters only).
    route: u16,
    child: Option<Child>,
}

impl Nats {
    /// Starts one JetStream server and waits until it reports itself healthy.
    pub async fn start() -> Nats {
        tokio::task::spawn_blocking(|| Self::launch(1, false))
            .await
            .expect("nats launcher")
    }

    /// Starts a JetStream cluster of `members` servers and waits until each is healthy.
    pub async fn start_cluster(members: usize) -> Nats {
        tokio::task::spawn_blocking(move || Self::launch(members, false))
            .await
            .expect("nats launcher")
    }

    /// One JetStream server for the whole test process, started on first use; it dies with
    /// the process (the kernel kills it when the thread that started it, which lives as long
    /// as the process, goes).
    pub fn shared() -> &'static Nats {
        static SHARED: std::sync::OnceLock<Nats> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| Self::launch_for_process(1))
    }

    /// A three-node JetStream cluster for the whole test process, like [`shared`](Self::shared).
    pub fn shared_cluster() -> &'static Nats {
        static SHARED: std::sync::OnceLock<Nats> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| Self::launch_for_process(3))
    }

    /// Servers started from a thread that lives as long as the process, so that they die with it.
    fn launch_for_process(members: usize) -> Nats {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            tx.send(Self::launch(members, true)).expect("send nats");
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("nats launcher thread")
    }

    /// Servers in a temporary directory; with `die_with_thread` they get SIGKILL when the
    /// thread that starts them ends.
    ///
    /// A cluster that is not healthy within 30 s is started again from nothing, on new ports,
    /// up to three times: NATS 2.9 can, when its members start at once, leave one member never
    /// in contact with the meta leader (seen once in CI: a member elected itself before its
    /// routes came up), and a free port can be taken between our pick and the server's bind.
    /// Each failed attempt's logs are printed, so the retry is visible.
    fn launch(members: usize, die_with_thread: bool) -> Nats {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let mut nats = Self::spawn_all(members, die_with_thread);
            let unhealthy = (0..members).find(|&i| !nats.became_healthy(i, Duration::from_secs(30)));
            match unhealthy {
                None => return nats,
                Some(i) if attempt < ATTEMPTS => {
                    eprintln!(
                        "nats-server {i} not healthy after 30 s (attempt {attempt} of {ATTEMPTS}); starting the servers again on new ports:\n{}",
                        nats.log()
                    );
                    nats.kill();
                }
                Some(i) => panic!(
                    "nats-server {i} did not become healthy in {ATTEMPTS} attempts:\n{}",
                    nats.log()
                ),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn_all(members: usize, die_with_thread: bool) -> Nats {
        let dir = tempfile::Builder::new()
            .prefix("hstream-nats")
            .tempdir()
            .expect("tempdir");
        let port = || SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        let members: Vec<Member> = (0..members)
            .map(|i| Member {
                name: format!("n{i}"),
                client: port(),
                monitor: port(),
                route: super::free_port(),
                child: None,
            })
            .collect();
        let mut nats = Nats {
            client: members[0].client,
            dir,
            members,
            die_with_thread,
        };
        for i in 0..nats.members.len() {
            nats.spawn(i);
        }
        nats
    }

    fn spawn(&mut self, i: usize) {
        let bin = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nats-server is not installed: scripts/test.sh installs Debian's nats-server");
        let m = &self.members[i];
        let home = self.dir.path().join(&m.name);
        std::fs::create_dir_all(&home).expect("member dir");
        let mut conf = format!(
            "server_name: {}\nlisten: {}\nhttp: {}\nmax_payload: 8388608\njetstream {{\n  store_dir: \"{}\"\n}}\n",
            m.name,
            m.client,
            m.monitor,
            home.join("js").display()
        );
        if self.members.len() > 1 {
            let routes: Vec<String> = self
                .members
                .iter()
                .filter(|o| o.name != m.name)
                .map(|o| format!("nats://127.0.0.1:{}", o.route))
                .collect();
            conf.push_str(&format!(
                "cluster {{\n  name: hstream-test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                m.route,
                routes.join(", ")
            ));
        }
        let conf_file = home.join("nats.conf");
        std::fs::write(&conf_file, conf).expect("nats.conf");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.join("nats.log"))
            .expect("log file");
        let mut command = Command::new(bin);
        command.arg("-c").arg(&conf_file).stdout(Stdio::null()).stderr(log);
        if self.die_with_thread {
            crate::etcd::die_with_parent_thread(&mut command);
        }
        self.members[i].child = Some(command.spawn().expect("starting nats-server"));
    }

    fn became_healthy(&self, i: usize, within: Duration) -> bool {
        let monitor = self.members[i].monitor;
        super::holds_within_blocking(within, || healthy(monitor))
    }

    fn wait_healthy(&self, i: usize) {
        assert!(
            self.became_healthy(i, Duration::from_secs(60)),
            "nats-server {i} did not become healthy:\n{}",
            self.log()
        );
    }

    /// SIGKILL to every server: gone until [`restart`](Self::restart).
    pub fn kill(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }

    /// Starts every server again on the same ports and stores, and waits until healthy.
    pub fn restart(&mut self) {
        self.kill();
        for i in 0..self.members.len() {
            self.spawn(i);
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i);
        }
    }

    /// SIGKILL to server `i`.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts server `i` again and waits until it is healthy.
    pub fn start_member(&mut self, i: usize) {
        self.kill_member(i);
        self.spawn(i);
        self.wait_healthy(i);
    }

    /// The index of the server named `name` (`n0`, `n1`, …: JetStream's names for them).
    pub fn member_named(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == name)
    }

    /// A store URI naming every server, under `prefix`.
    pub fn uri(&self, prefix: &str) -> String {
        let hosts: Vec<String> = self.members.iter().map(|m| m.client.to_string()).collect();
        format!("nats://{}/{prefix}", hosts.join(","))
    }

    /// Every server's log, each headed by its name.
    pub fn log(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let log = std::fs::read_to_string(self.dir.path().join(&m.name).join("nats.log")).unwrap_or_default();
                format!("--- nats-server {}\n{log}", m.name)
            })
            .collect()
    }
}

/// `GET /healthz` on the monitoring port answers `{"status":"ok"}` (in a cluster: JetStream
/// is current).
fn healthy(monitor: SocketAddr) -> bool {
    super::http_blocking(monitor, "GET", "/healthz", "").is_some_and(|body| body.contains(r#""status":"ok""#))
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}
