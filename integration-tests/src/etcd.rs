//! Throw-away etcd clusters for tests (Debian's `etcd-server`, which `scripts/test.sh`
//! installs): one member for most tests, three for the fault tests; on free loopback ports
//! (never the machine's own 2379), with their data in a temporary directory; killed when
//! dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::tls::TestCa;

/// One etcd cluster: a single member for most tests, three for the fault tests.
pub struct Etcd {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    die_with_thread: bool,
    /// With TLS: the CA and certificates (clients must present one signed by the CA).
    pub tls: Option<TestCa>,
    /// Extra etcd flags for every member.
    extra: Vec<String>,
}

struct Member {
    name: String,
    client: SocketAddr,
    peer: u16,
    /// Plain-HTTP `/health` (etcd's `--listen-metrics-urls`), which works with TLS too.
    health: SocketAddr,
    child: Option<Child>,
}

impl Member {
    fn dir(&self, root: &Path) -> std::path::PathBuf {
        root.join(&self.name)
    }
}

/// Starts `member` of the cluster `initial` names (`name=peer-url,…`).
fn spawn(
    root: &Path,
    member: &Member,
    initial: &str,
    die_with_thread: bool,
    tls: Option<&TestCa>,
    extra: &[String],
) -> Child {
    let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("etcd is not installed: scripts/test.sh installs Debian's etcd-server");
    let dir = member.dir(root);
    std::fs::create_dir_all(&dir).expect("member dir");
    let scheme = if tls.is_some() { "https" } else { "http" };
    let client_url = format!("{scheme}://{}", member.client);
    let peer_url = format!("http://127.0.0.1:{}", member.peer);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))
        .expect("log file");
    let mut command = Command::new(bin);
    command
        .args(["--name", &member.name, "--data-dir"])
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
        .args(["--initial-cluster", initial, "--initial-cluster-token", "hstream-test"])
        .args(["--listen-metrics-urls", &format!("http://{}", member.health)])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(ca) = tls {
        command
            .arg("--cert-file")
            .arg(&ca.server_cert)
            .arg("--key-file")
            .arg(&ca.server_key)
            .arg("--trusted-ca-file")
            .arg(&ca.ca)
            .arg("--client-cert-auth");
    }
    if die_with_thread {
        die_with_parent_thread(&mut command);
    }
    command.spawn().expect("starting etcd")
}

/// The child gets SIGKILL when the thread that spawned it ends.
#[allow(unsafe_code)]
pub(crate) fn die_with_parent_thread(command: &mut Command) {
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
    /// Starts a single-member etcd and waits until it reports itself healthy.
    pub async fn start() -> Etcd {
        Self::start_cluster(1).await
    }

    /// Starts an etcd cluster of `members` members and waits until each reports itself
    /// healthy (which needs a quorum).
    pub async fn start_cluster(members: usize) -> Etcd {
        tokio::task::spawn_blocking(move || Self::launch(None, members, false, Vec::new()))
            .await
            .expect("etcd launcher")
    }

    /// A single member that speaks only TLS (its certificate signed by a CA of the test's own,
    /// [`Etcd::tls`]) and wants a client certificate from that CA; `extra` etcd flags.
    pub async fn start_tls(extra: &[&str]) -> Etcd {
        let extra = extra.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || Self::launch(None, 1, true, extra))
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
                tx.send(Self::launch(Some(dir), 1, false, Vec::new()))
                    .expect("send etcd");
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("etcd launcher thread")
        })
    }

    /// A cluster of its own in a temporary directory, or (`shared`) in that directory, dying
    /// with the thread that starts it.
    fn launch(shared: Option<std::path::PathBuf>, members: usize, tls: bool, extra: Vec<String>) -> Etcd {
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
        let members = (0..members)
            .map(|i| Member {
                name: format!("m{i}"),
                client: SocketAddr::from(([127, 0, 0, 1], super::free_port())),
                peer: super::free_port(),
                health: SocketAddr::from(([127, 0, 0, 1], super::free_port())),
                child: None,
            })
            .collect();
        let tls = tls.then(|| {
            let certs = dir.path().join("certs");
            std::fs::create_dir_all(&certs).expect("certs dir");
            TestCa::make(&certs)
        });
        let mut etcd = Etcd {
            dir,
            members,
            die_with_thread,
            tls,
            extra,
        };
        for i in 0..etcd.members.len() {
            etcd.spawn_member(i);
        }
        for i in 0..etcd.members.len() {
            etcd.wait_healthy(i);
        }
        etcd
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn_member(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let child = spawn(
            self.dir.path(),
            &self.members[i],
            &initial,
            self.die_with_thread,
            self.tls.as_ref(),
            &self.extra,
        );
        self.members[i].child = Some(child);
    }

    fn wait_healthy(&self, i: usize) {
        let healthy = super::holds_within_blocking(Duration::from_secs(30), || healthy(self.members[i].health));
        assert!(healthy, "etcd member {i} did not become healthy:\n{}", self.log());
    }

    /// SIGKILL to every member: etcd is gone until [`restart`](Self::restart).
    pub fn kill(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }

    /// Starts every member again on the same ports and data, and waits until it is healthy.
    pub fn restart(&mut self) {
        self.kill();
        for i in 0..self.members.len() {
            self.spawn_member(i);
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i);
        }
    }

    /// SIGKILL to member `i` (0-based).
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its ports and data, without waiting for it (it is healthy
    /// only once a quorum of members runs).
    pub fn start_member(&mut self, i: usize) {
        self.kill_member(i);
        self.spawn_member(i);
    }

    /// Waits until member `i` reports itself healthy (it serves, in a cluster with a leader).
    pub fn wait_member_healthy(&self, i: usize) {
        self.wait_healthy(i);
    }

    /// The index of the member that leads now (`None` without a leader), as the members that
    /// answer see it (etcd's JSON gateway, `POST /v3/maintenance/status`).
    pub fn leader(&self) -> Option<usize> {
        let status = |m: &Member| -> Option<(String, String)> {
            let body = post(m.client, "/v3/maintenance/status", "{}")?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            Some((
                v["header"]["member_id"].as_str()?.to_owned(),
                v["leader"].as_str()?.to_owned(),
            ))
        };
        let seen: Vec<(usize, String, String)> = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.child.is_some())
            .filter_map(|(i, m)| status(m).map(|(id, leader)| (i, id, leader)))
            .collect();
        let leader = &seen.first()?.2;
        seen.iter().find(|(_, id, _)| id == leader).map(|(i, _, _)| *i)
    }

    /// Turns etcd's auth on with a `root` user (password `root_password`) and `user`, whose
    /// role may read and write only the keys under `prefix` (etcd's API, over TLS with the
    /// client certificate when the cluster has TLS).
    pub async fn enable_auth(&self, root_password: &str, user: &str, password: &str, prefix: &str) {
        use hstream_proto::etcd::auth_client::AuthClient;
        use hstream_proto::etcd::*;
        let mut auth = AuthClient::new(self.admin_channel().await);
        let role = |name: &str| AuthRoleAddRequest { name: name.into() };
        auth.role_add(role("root")).await.expect("add role root");
        auth.user_add(AuthUserAddRequest {
            name: "root".into(),
            password: root_password.into(),
            ..Default::default()
        })
        .await
        .expect("add user root");
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        })
        .await
        .expect("grant root");
        auth.role_add(role(user)).await.expect("add role");
        let key = format!("{prefix}/").into_bytes();
        let mut range_end = key.clone();
        *range_end.last_mut().expect("prefix") += 1;
        auth.role_grant_permission(AuthRoleGrantPermissionRequest {
            name: user.into(),
            perm: Some(hstream_proto::authpb::Permission {
                perm_type: hstream_proto::authpb::permission::Type::Readwrite as i32,
                key,
                range_end,
            }),
        })
        .await
        .expect("grant the prefix");
        auth.user_add(AuthUserAddRequest {
            name: user.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .expect("add user");
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: user.into(),
            role: user.into(),
        })
        .await
        .expect("grant role");
        auth.auth_enable(AuthEnableRequest {}).await.expect("enable auth");
    }

    /// Turns etcd's auth off and on again as `root`: every token handed out before is void.
    pub async fn void_tokens(&self, root_password: &str) {
        use hstream_proto::etcd::auth_client::AuthClient;
        use hstream_proto::etcd::*;
        let channel = self.admin_channel().await;
        let token = AuthClient::new(channel.clone())
            .authenticate(AuthenticateRequest {
                name: "root".into(),
                password: root_password.into(),
            })
            .await
            .expect("root authenticates")
            .into_inner()
            .token;
        let mut request = tonic::Request::new(AuthDisableRequest {});
        request
            .metadata_mut()
            .insert("token", token.parse().expect("ascii token"));
        let mut auth = AuthClient::new(channel);
        auth.auth_disable(request).await.expect("disable auth as root");
        auth.auth_enable(AuthEnableRequest {}).await.expect("enable auth again");
    }

    /// A connection to the first member (TLS with the client certificate when the cluster
    /// has TLS).
    async fn admin_channel(&self) -> tonic::transport::Channel {
        let member = &self.members[0];
        let mut endpoint = tonic::transport::Endpoint::from_shared(match &self.tls {
            Some(_) => format!("https://{}", member.client),
            None => format!("http://{}", member.client),
        })
        .expect("endpoint");
        if let Some(ca) = &self.tls {
            let read = |p: &Path| std::fs::read(p).expect("certificate file");
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(read(&ca.ca)))
                .identity(tonic::transport::Identity::from_pem(
                    read(&ca.client_cert),
                    read(&ca.client_key),
                ));
            endpoint = endpoint.tls_config(tls).expect("tls config");
        }
        endpoint.connect().await.expect("connect to etcd")
    }

    /// A metastore URI naming every member, under `prefix`.
    pub fn uri(&self, prefix: &str) -> String {
        let hosts = self
            .members
            .iter()
            .map(|m| m.client.to_string())
            .collect::<Vec<_>>()
            .join(",");
        format!("etcd://{hosts}/{prefix}")
    }

    /// Every member's log, each headed by its name.
    pub fn log(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let log = std::fs::read_to_string(m.dir(self.dir.path()).join("etcd.log")).unwrap_or_default();
                format!("--- etcd member {}\n{log}", m.name)
            })
            .collect()
    }
}

/// `GET /health` on the metrics listener answers `{"health":"true"}`.
fn healthy(health: SocketAddr) -> bool {
    super::http_blocking(health, "GET", "/health", "").is_some_and(|body| body.contains(r#""health":"true""#))
}

fn post(client: SocketAddr, path: &str, body: &str) -> Option<String> {
    super::http_blocking(client, "POST", path, body)
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
