//! Test support for end-to-end tests: real `hstream-server` processes on free ports with their own
//! data directories, gRPC clients, record encoding as HStreamDB clients do it, and the Python venv
//! that `scripts/test.sh` prepares.
//!
//! Nothing here sleeps to synchronise: readiness is the server's own "listening on" line, and
//! waits are polls of a condition under a deadline.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hstream_proto as pb;
use hstream_proto::h_stream_api_client::HStreamApiClient;
use prost::Message;
use tonic::transport::Channel;

mod connectors;
pub mod etcd;
pub mod kafka;
pub mod mariadb;
pub mod mosquitto;
pub mod nats;
pub mod pg;
pub mod proxy;
mod records;
mod server;
pub mod tls;

pub use connectors::*;
pub use records::*;
pub use server::*;

/// Whether servers started by tests keep records in their data directory (the local store),
/// not in JetStream (`HSTREAM_TEST_STORE=nats` or `nats3`): the few checks of files on disk
/// and of the local store's own metrics apply only then.
pub fn on_local_store() -> bool {
    !matches!(std::env::var("HSTREAM_TEST_STORE").as_deref(), Ok("nats" | "nats3"))
}

/// The replicationFactor a stream created with `requested` reports: at least three with
/// `HSTREAM_TEST_STORE=nats3`, whose servers run with `--min-replication-factor 3`.
pub fn reported_replication(requested: u32) -> u32 {
    if std::env::var("HSTREAM_TEST_STORE").as_deref() == Ok("nats3") {
        requested.max(3)
    } else {
        requested
    }
}

/// The body of a 200 answer to one HTTP/1.1 request (a health or admin endpoint of a server a
/// test runs), `None` for anything else.
pub fn http_blocking(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    if !out.starts_with("HTTP/1.1 200") {
        return None;
    }
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// A free TCP port on 127.0.0.1 (for servers that cannot bind port 0 themselves).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The uid/gid of system account `user` when the tests run as root (database servers refuse
/// to run as root); `None` when not root or the account does not exist.
pub(crate) fn service_account(user: &str) -> Option<(u32, u32)> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with(&format!("{user}:")))?;
    let f: Vec<&str> = line.split(':').collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

pub type Client = HStreamApiClient<Channel>;

/// The repository root (this crate lives in `<root>/integration-tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_owned()
}

fn target_dir() -> PathBuf {
    // Test binaries run from <target>/<profile>/deps/, other binaries from <target>/<profile>/.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    if dir.ends_with("deps") {
        dir.parent().expect("target profile dir").to_owned()
    } else {
        dir.to_owned()
    }
}

/// Path of a workspace binary built next to the running test, e.g. `hstream-server`.
pub fn workspace_bin(name: &str) -> PathBuf {
    let env_key = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Ok(p) = std::env::var(&env_key) {
        return PathBuf::from(p);
    }
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p {name}`; scripts/test.sh does) or set {env_key}",
        path.display()
    );
    path
}

/// The venv's Python made by `scripts/test.sh` (or `HSTREAM_TEST_PYTHON`).
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("HSTREAM_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let p = repo_root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test.sh, which creates the venv with the hstreamdb client",
        p.display()
    );
    p
}

/// Runs `integration-tests/python/<script>` with the venv's Python; returns the JSON object it
/// prints as its last line. Panics with the script's output when it fails.
pub async fn run_python(script: &str, args: &[&str]) -> serde_json::Value {
    let out = tokio::process::Command::new(python())
        .arg(repo_root().join("integration-tests/python").join(script))
        .args(args)
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{script} printed no JSON summary ({e}): {stdout}"))
}

/// Where test servers install Airbyte packages (`.airbyte/` in the repo).
pub fn airbyte_dir() -> PathBuf {
    repo_root().join(".airbyte")
}

/// PATH with the test venv's `bin` appended (for `uv`).
pub fn path_with_venv() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(repo_root().join(".venv/bin"));
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Polls `cond` until it holds or `within` passes.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(
        holds_within(within, cond).await,
        "timed out after {within:?} waiting for {what}"
    );
}

/// Polls `cond` until it holds (true) or `within` passes (false), for callers that explain a
/// timeout themselves.
pub async fn holds_within<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`holds_within`] for synchronous code (e.g. starting a database server).
pub fn holds_within_blocking(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(20);

/// The JSON error object HStreamDB puts in a status message.
pub fn error_code(status: &tonic::Status) -> i64 {
    let v: serde_json::Value = serde_json::from_str(status.message())
        .unwrap_or_else(|e| panic!("status message is not JSON ({e}): {}", status.message()));
    v["error"].as_i64().expect("error code")
}

/// The human message inside the JSON error object of a status.
pub fn error_message(status: &tonic::Status) -> String {
    let v: serde_json::Value = serde_json::from_str(status.message())
        .unwrap_or_else(|e| panic!("status message is not JSON ({e}): {}", status.message()));
    v["message"].as_str().unwrap_or_default().to_owned()
}

/// One HTTP/1.1 request to `addr` (no client library needed): returns status and JSON body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect REST");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let payload = if chunked { dechunk(rest) } else { rest.to_owned() };
    (
        status,
        serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
    )
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
