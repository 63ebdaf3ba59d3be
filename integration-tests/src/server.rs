//! A test's own `hstream-server` process: started on free ports with its own data directory,
//! stopped by signal, killed, restarted on the same directory.

use super::*;

/// A running `hstream-server` process.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The REST API's address.
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    args: Vec<String>,
    log: Option<(PathBuf, String)>,
    /// RLIMIT_NOFILE the process runs under (set with prlimit), if not inherited.
    nofile: Option<u64>,
    /// Environment variables set for the process beyond the test's own.
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts a server on a free port over `data_dir` with extra flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::spawn(data_dir, args, None, None, Vec::new())
    }

    /// As [`start`](Self::start), with these environment variables set for the server (and so
    /// for what it runs: `DOCKER_HOST` for the docker CLI, say).
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::spawn(data_dir, args, None, None, env)
    }

    /// As [`start`](Self::start), under an open-file limit of `nofile` (soft and hard).
    pub fn start_with_nofile(data_dir: &Path, extra: &[&str], nofile: u64) -> Server {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::spawn(data_dir, args, None, Some(nofile), Vec::new())
    }

    /// The process's peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Open file descriptors of the process now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |d| d.count())
    }

    /// As [`start`](Self::start), with the server's log (at `level`, e.g. `debug`) appended to
    /// `log` instead of the test's stderr, for tests that read what it logs.
    pub fn start_logged(data_dir: &Path, extra: &[&str], log: &Path, level: &str) -> Server {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::spawn(
            data_dir,
            args,
            Some((log.to_owned(), level.to_owned())),
            None,
            Vec::new(),
        )
    }

    fn spawn(
        data_dir: &Path,
        args: Vec<String>,
        log: Option<(PathBuf, String)>,
        nofile: Option<u64>,
        env: Vec<(String, String)>,
    ) -> Server {
        let stderr = match &log {
            Some((path, _)) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("open server log"),
            ),
            None => Stdio::inherit(),
        };
        let level = log
            .as_ref()
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| std::env::var("HSTREAM_TEST_LOG").unwrap_or_else(|_| "warn".into()));
        // prlimit sets the limit and then execs the server, so the child's pid is the server's.
        let mut command = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(workspace_bin("hstream-server"));
                c
            }
            None => Command::new(workspace_bin("hstream-server")),
        };
        let mut child = command
            .args([
                "--port",
                "0",
                "--http-port",
                "0",
                "--bind-address",
                "127.0.0.1",
                "--advertised-address",
                "127.0.0.1",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(&args)
            .args(etcd_metastore(data_dir, &args))
            .args(nats_store(data_dir, &args))
            .env("RUST_LOG", level)
            // Airbyte packages are installed once, beside the repo, for every test server; uv
            // (from the test venv) installs them.
            .env("HSTREAM_AIRBYTE_DIR", airbyte_dir())
            .env("PATH", path_with_venv())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn hstream-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut http = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("hstream-server rest listening on ") {
                    http = addr.parse::<SocketAddr>().ok();
                }
                if let Some(addr) = line.strip_prefix("hstream-server listening on ") {
                    let _ = tx.send((
                        addr.parse::<SocketAddr>().expect("address"),
                        http.expect("REST address first"),
                    ));
                }
            }
        });
        let (addr, http) = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "hstream-server did not report readiness within 60 s (status {:?})",
                    child.try_wait()
                );
            }
        };
        Server {
            child,
            addr,
            http,
            data_dir: data_dir.to_owned(),
            args,
            log,
            nofile,
            env,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user + system) the server process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let hz = 100.0; // USER_HZ on Linux
        (ticks(11) + ticks(12)) / hz
    }

    /// Resident set size now, in bytes (VmRSS).
    pub fn rss_bytes(&self) -> u64 {
        self.proc_status_kb("VmRSS:") * 1024
    }

    /// Highest resident set size since start or [`reset_peak_rss`](Self::reset_peak_rss).
    pub fn peak_rss_bytes(&self) -> u64 {
        self.proc_status_kb("VmHWM:") * 1024
    }

    /// Resets the peak RSS the kernel keeps for the process (clear_refs 5).
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").expect("reset peak RSS");
    }

    fn proc_status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("status field")
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> Client {
        HStreamApiClient::connect(self.endpoint())
            .await
            .expect("connect")
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(&self.child, libc::SIGTERM);
        wait_exit(&mut self.child, Duration::from_secs(30))
    }

    /// Starts a new process over the same data directory and flags (on a new free port).
    pub fn restart(&mut self) {
        let next = Self::spawn(
            &self.data_dir.clone(),
            self.args.clone(),
            self.log.clone(),
            self.nofile,
            self.env.clone(),
        );
        // Dropping the old handle reaps its (already stopped) process.
        drop(std::mem::replace(self, next));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn signal(child: &Child, sig: i32) {
    let pid = child.id() as i32;
    let rc = unsafe_kill(pid, sig);
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

#[allow(unsafe_code)]
fn unsafe_kill(pid: i32, sig: i32) -> i32 {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit within {within:?} of SIGTERM"
        );
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// With `HSTREAM_TEST_METASTORE=etcd`, servers started without their own `--metastore-uri` keep
/// their metadata in one etcd shared by the test process, under a prefix named after their data
/// directory (a restart over the same directory finds its metadata again): how `scripts/test.sh`
/// runs the end-to-end suites that matter for metadata on the etcd MetaStore.
fn etcd_metastore(data_dir: &Path, args: &[String]) -> Vec<String> {
    if std::env::var("HSTREAM_TEST_METASTORE").as_deref() != Ok("etcd") || args.iter().any(|a| a == "--metastore-uri") {
        return Vec::new();
    }
    let etcd = crate::etcd::Etcd::shared();
    let prefix: String = data_dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    vec!["--metastore-uri".into(), etcd.uri(&prefix)]
}

/// With `HSTREAM_TEST_STORE=nats`, servers started without their own `--store` keep their
/// records in one JetStream server shared by the test process, under a prefix named after
/// their data directory (a restart over the same directory finds its shards again); with
/// `HSTREAM_TEST_STORE=nats3` in a shared three-node JetStream cluster, every stream with three
/// replicas (`--min-replication-factor 3`, whatever the test asks for): how `scripts/test.sh`
/// runs the end-to-end suites on the JetStream store.
fn nats_store(data_dir: &Path, args: &[String]) -> Vec<String> {
    let cluster = match std::env::var("HSTREAM_TEST_STORE").as_deref() {
        Ok("nats") => false,
        Ok("nats3") => true,
        _ => return Vec::new(),
    };
    if args.iter().any(|a| a == "--store") {
        return Vec::new();
    }
    let prefix: String = data_dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if cluster {
        let nats = crate::nats::Nats::shared_cluster();
        vec![
            "--store".into(),
            nats.uri(&prefix),
            "--min-replication-factor".into(),
            "3".into(),
        ]
    } else {
        vec!["--store".into(), crate::nats::Nats::shared().uri(&prefix)]
    }
}

/// The flags of node `index` (id `index + 1`) of a cluster whose members gossip on the ports
/// `gossip` (one per node, the first the seed) and share `metastore` and `store`.
pub fn cluster_node_args(index: usize, gossip: &[String], metastore: &str, store: &str) -> Vec<String> {
    vec![
        "--server-id".into(),
        (index + 1).to_string(),
        "--gossip-port".into(),
        gossip[index].clone(),
        "--seed-nodes".into(),
        format!("127.0.0.1:{}", gossip[0]),
        "--metastore-uri".into(),
        metastore.into(),
        "--store".into(),
        store.into(),
    ]
}
