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

pub mod mariadb;
pub mod mosquitto;
pub mod pg;

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

/// A running `hstream-server` process.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The REST API's address.
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    args: Vec<String>,
    log: Option<(PathBuf, String)>,
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

impl Server {
    /// Starts a server on a free port over `data_dir` with extra flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::spawn(data_dir, args, None)
    }

    /// As [`start`](Self::start), with the server's log (at `level`, e.g. `debug`) appended to
    /// `log` instead of the test's stderr, for tests that read what it logs.
    pub fn start_logged(data_dir: &Path, extra: &[&str], log: &Path, level: &str) -> Server {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::spawn(data_dir, args, Some((log.to_owned(), level.to_owned())))
    }

    fn spawn(data_dir: &Path, args: Vec<String>, log: Option<(PathBuf, String)>) -> Server {
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
        let mut child = Command::new(workspace_bin("hstream-server"))
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
            .env("RUST_LOG", level)
            // Airbyte packages are installed once, beside the repo, for every test server; uv
            // (from the test venv) installs them.
            .env("HSTREAM_AIRBYTE_DIR", airbyte_dir())
            .env("PATH", path_with_venv())
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
        let next = Self::spawn(&self.data_dir.clone(), self.args.clone(), self.log.clone());
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

fn signal(child: &Child, sig: i32) {
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

/// Encodes records the way HStreamDB clients do (RAW flag, one partition key).
pub fn batch(key: &str, payloads: &[Vec<u8>], compression: pb::CompressionType) -> pb::BatchedRecord {
    let records = payloads
        .iter()
        .map(|p| pb::HStreamRecord {
            header: Some(pb::HStreamRecordHeader {
                flag: pb::h_stream_record_header::Flag::Raw as i32,
                attributes: Default::default(),
                key: key.to_owned(),
            }),
            payload: Bytes::from(p.clone()),
        })
        .collect();
    let raw = pb::BatchHStreamRecords { records }.encode_to_vec();
    let payload = compress(&raw, compression);
    pb::BatchedRecord {
        compression_type: compression as i32,
        publish_time: None,
        batch_size: payloads.len() as u32,
        payload: payload.into(),
    }
}

pub fn compress(raw: &[u8], compression: pb::CompressionType) -> Vec<u8> {
    use std::io::Write;
    match compression {
        pb::CompressionType::None => raw.to_vec(),
        pb::CompressionType::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(raw).expect("gzip");
            e.finish().expect("gzip")
        }
        pb::CompressionType::Zstd => zstd::encode_all(raw, 1).expect("zstd"),
    }
}

/// The task report GetConnector carries: {offset, deliveredRecords, deliveredBytes, restarts,
/// lastError, progress}.
pub fn report(conn: &pb::Connector) -> serde_json::Value {
    let s = conn.offsets.first().cloned().unwrap_or_default();
    struct_to_json(&s)
}

/// [`report`] of connector `name`.
pub async fn connector_report(c: &Client, name: &str) -> serde_json::Value {
    match c
        .clone()
        .get_connector(pb::GetConnectorRequest { name: name.into() })
        .await
    {
        Ok(r) => report(&r.into_inner()),
        Err(_) => serde_json::Value::Null,
    }
}

/// Creates a stream of `shards` shards; returns their ids.
pub async fn make_stream(c: &mut Client, name: &str, shards: u32) -> Vec<u64> {
    c.create_stream(pb::Stream {
        stream_name: name.into(),
        replication_factor: 1,
        backlog_duration: 0,
        shard_count: shards,
        creation_time: None,
    })
    .await
    .unwrap();
    stream_shards(c, name).await.iter().map(|s| s.shard_id).collect()
}

/// A stream's shards; none for a stream that does not exist (yet: tests poll before a connector
/// created it).
pub async fn stream_shards(client: &mut Client, stream: &str) -> Vec<pb::Shard> {
    match client
        .list_shards(pb::ListShardsRequest {
            stream_name: stream.to_owned(),
        })
        .await
    {
        Ok(r) => r.into_inner().shards,
        Err(s) if s.code() == tonic::Code::NotFound => Vec::new(),
        Err(s) => panic!("list shards: {s}"),
    }
}

/// Every record of every shard of a stream up to its tail, whole (header and payload), in order
/// within each shard.
pub async fn read_stream_records(client: &Client, stream: &str) -> Vec<pb::HStreamRecord> {
    let mut client = client.clone();
    let mut out = Vec::new();
    for shard in stream_shards(&mut client, stream).await {
        for r in read_shard_to_tail(&mut client, stream, shard.shard_id).await {
            out.extend(decode_records(&r).into_iter().map(|(_, rec)| rec));
        }
    }
    out
}

/// How many records a stream holds up to its tail (counted from record ids, nothing decoded).
pub async fn count_stream_records(client: &Client, stream: &str) -> usize {
    let mut client = client.clone();
    let mut n = 0;
    for shard in stream_shards(&mut client, stream).await {
        n += read_shard_to_tail(&mut client, stream, shard.shard_id)
            .await
            .iter()
            .map(|r| r.record_ids.len())
            .sum::<usize>();
    }
    n
}

/// Decodes a received batch into (record id, key, payload) triples.
pub fn decode(r: &pb::ReceivedRecord) -> Vec<(pb::RecordId, String, Vec<u8>)> {
    decode_records(r)
        .into_iter()
        .map(|(id, rec)| (id, rec.header.map(|h| h.key).unwrap_or_default(), rec.payload.to_vec()))
        .collect()
}

/// Decodes a received batch into its records, whole, with their ids.
pub fn decode_records(r: &pb::ReceivedRecord) -> Vec<(pb::RecordId, pb::HStreamRecord)> {
    use std::io::Read;
    let b = r.record.as_ref().expect("record");
    let raw = match pb::CompressionType::try_from(b.compression_type).expect("compression") {
        pb::CompressionType::None => b.payload.to_vec(),
        pb::CompressionType::Gzip => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&b.payload[..])
                .read_to_end(&mut out)
                .expect("gunzip");
            out
        }
        pb::CompressionType::Zstd => zstd::decode_all(&b.payload[..]).expect("unzstd"),
    };
    let recs = pb::BatchHStreamRecords::decode(&raw[..]).expect("BatchHStreamRecords");
    assert_eq!(recs.records.len(), r.record_ids.len(), "record ids match records");
    r.record_ids.iter().copied().zip(recs.records).collect()
}

/// A protobuf Struct (an HStreamDB JSON record) as JSON.
pub fn struct_to_json(s: &prost_types::Struct) -> serde_json::Value {
    use prost_types::value::Kind;
    fn v(x: &prost_types::Value) -> serde_json::Value {
        match &x.kind {
            Some(Kind::NumberValue(n)) => serde_json::json!(n),
            Some(Kind::StringValue(s)) => serde_json::json!(s),
            Some(Kind::BoolValue(b)) => serde_json::json!(b),
            Some(Kind::StructValue(s)) => struct_to_json(s),
            Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(v).collect()),
            _ => serde_json::Value::Null,
        }
    }
    serde_json::Value::Object(s.fields.iter().map(|(k, x)| (k.clone(), v(x))).collect())
}

/// Every record of every shard of a JSON stream up to its tail, as (partition key, JSON),
/// in order within each shard; none for a stream that does not exist (yet).
pub async fn read_json_stream(client: &mut Client, stream: &str) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for shard in stream_shards(client, stream).await {
        for r in read_shard_to_tail(client, stream, shard.shard_id).await {
            for (_, key, payload) in decode(&r) {
                let s = prost_types::Struct::decode(&payload[..]).expect("a JSON (Struct) record");
                out.push((key, struct_to_json(&s)));
            }
        }
    }
    out
}

pub fn earliest() -> pb::ShardOffset {
    pb::ShardOffset {
        offset: Some(pb::shard_offset::Offset::SpecialOffset(
            pb::SpecialOffset::Earliest as i32,
        )),
    }
}

pub fn latest() -> pb::ShardOffset {
    pb::ShardOffset {
        offset: Some(pb::shard_offset::Offset::SpecialOffset(
            pb::SpecialOffset::Latest as i32,
        )),
    }
}

/// Reads a shard from EARLIEST to its tail as of now, through ReadShardStream.
pub async fn read_shard_to_tail(client: &mut Client, stream: &str, shard_id: u64) -> Vec<pb::ReceivedRecord> {
    let mut s = client
        .read_shard_stream(pb::ReadShardStreamRequest {
            reader_id: String::new(),
            shard_id,
            from: Some(earliest()),
            max_read_batches: 0,
            until: Some(latest()),
            stream_name: stream.to_owned(),
        })
        .await
        .expect("read_shard_stream")
        .into_inner();
    let mut out = Vec::new();
    while let Some(resp) = s.message().await.expect("stream message") {
        out.extend(resp.received_records);
    }
    out
}

/// The JSON error object HStreamDB puts in a status message.
pub fn error_code(status: &tonic::Status) -> i64 {
    let v: serde_json::Value = serde_json::from_str(status.message())
        .unwrap_or_else(|e| panic!("status message is not JSON ({e}): {}", status.message()));
    v["error"].as_i64().expect("error code")
}

/// What a test consumer received, in order: (record id, payload).
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<(pb::RecordId, Vec<u8>)>>>;

/// A StreamingFetch consumer run by a test: everything it receives is recorded; it acks what it
/// receives unless told not to; dropping or [`TestConsumer::kill`]ing it breaks its connection.
pub struct TestConsumer {
    pub received: Received,
    acks: tokio::sync::mpsc::Sender<pb::StreamingFetchRequest>,
    task: tokio::task::JoinHandle<Result<(), tonic::Status>>,
    sub: String,
    name: String,
}

impl TestConsumer {
    /// Connects `name` to `sub`; with `auto_ack` every received record is acked at once.
    pub async fn start(client: &Client, sub: &str, name: &str, auto_ack: bool) -> Result<TestConsumer, tonic::Status> {
        Self::start_acking(client, sub, name, auto_ack, vec![]).await
    }

    /// Like [`TestConsumer::start`], with `acks` carried by the first request.
    pub async fn start_acking(
        client: &Client,
        sub: &str,
        name: &str,
        auto_ack: bool,
        acks: Vec<pb::RecordId>,
    ) -> Result<TestConsumer, tonic::Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let first = pb::StreamingFetchRequest {
            subscription_id: sub.into(),
            consumer_name: name.into(),
            ack_ids: acks,
        };
        tx.send(first).await.expect("queue first request");
        let mut c = client.clone();
        let mut inbound = c
            .streaming_fetch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let received: Received = Default::default();
        let (rec, acks, s, n) = (received.clone(), tx.clone(), sub.to_owned(), name.to_owned());
        let task = tokio::spawn(async move {
            while let Some(resp) = inbound.message().await? {
                let rr = resp.received_records.expect("a batch");
                let got = decode(&rr);
                let ids: Vec<pb::RecordId> = got.iter().map(|(id, _, _)| *id).collect();
                rec.lock().unwrap().extend(got.into_iter().map(|(id, _, p)| (id, p)));
                if auto_ack {
                    let req = pb::StreamingFetchRequest {
                        subscription_id: s.clone(),
                        consumer_name: n.clone(),
                        ack_ids: ids,
                    };
                    if acks.send(req).await.is_err() {
                        break;
                    }
                }
            }
            Ok(())
        });
        Ok(TestConsumer {
            received,
            acks: tx,
            task,
            sub: sub.into(),
            name: name.into(),
        })
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn ids(&self) -> Vec<pb::RecordId> {
        self.received.lock().unwrap().iter().map(|(id, _)| *id).collect()
    }

    pub async fn ack(&self, ids: Vec<pb::RecordId>) {
        let req = pb::StreamingFetchRequest {
            subscription_id: self.sub.clone(),
            consumer_name: self.name.clone(),
            ack_ids: ids,
        };
        self.acks.send(req).await.expect("consumer is connected");
    }

    /// Breaks the connection, as a crashed consumer would.
    pub fn kill(self) {
        self.task.abort();
    }

    /// Waits for the server to end this consumer's stream; returns how it ended.
    pub async fn ended(self) -> Result<(), tonic::Status> {
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("stream ends")
            .expect("task")
    }
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

/// CDC records (`{"key", "value"}`) folded into their final state: primary key text → row (absent once deleted).
pub fn fold_changes(records: &[(String, serde_json::Value)]) -> std::collections::BTreeMap<String, serde_json::Value> {
    use serde_json::{Value, json};
    let mut state = std::collections::BTreeMap::new();
    for (_, r) in records {
        let key = r["key"].to_string();
        match &r["value"] {
            Value::Null => {
                state.remove(&key);
            }
            v => {
                // A value without some column (an unchanged TOASTed one) keeps the earlier one.
                let entry = state.entry(key).or_insert_with(|| json!({}));
                for (k, x) in v.as_object().expect("row object") {
                    entry[k] = x.clone();
                }
            }
        }
    }
    state
}

/// A connector config: `base` (a harness's connection options) with `stream` and `extra` set.
pub fn config_with(mut base: serde_json::Value, stream: &str, extra: serde_json::Value) -> serde_json::Value {
    base["stream"] = serde_json::json!(stream);
    for (k, v) in extra.as_object().expect("object") {
        base[k] = v.clone();
    }
    base
}

pub async fn create_connector(
    c: &mut Client,
    name: &str,
    kind: &str,
    target: &str,
    config: &serde_json::Value,
) -> Result<pb::Connector, tonic::Status> {
    c.create_connector(pb::CreateConnectorRequest {
        name: name.into(),
        r#type: kind.into(),
        target: target.into(),
        config: config.to_string(),
    })
    .await
    .map(|r| r.into_inner())
}

/// Waits (60 s at most) until connector `name` reports status `want`.
pub async fn wait_connector_status(c: &Client, name: &str, want: &str) {
    let probe = c.clone();
    wait_until(Duration::from_secs(60), &format!("{name} to be {want}"), || {
        let mut c = probe.clone();
        let name = name.to_owned();
        async move {
            c.get_connector(pb::GetConnectorRequest { name })
                .await
                .is_ok_and(|r| r.into_inner().status == want)
        }
    })
    .await;
}

/// Connector `name`'s status ("" when there is none).
pub async fn connector_status(c: &Client, name: &str) -> String {
    let mut c = c.clone();
    c.get_connector(pb::GetConnectorRequest { name: name.into() })
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or_default()
}

/// Waits until connector `name` is `want`, failing with its report after `within`.
pub async fn wait_status(c: &Client, name: &str, want: &str, within: Duration) {
    let ok = holds_within(within, || async { connector_status(c, name).await == want }).await;
    assert!(
        ok,
        "{name} did not become {want} within {within:?}: {} {}",
        connector_status(c, name).await,
        connector_report(c, name).await
    );
}

/// Runs `script` through `hstream sql` against `server`; returns stdout and stderr.
pub async fn sql(server: &Server, script: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(workspace_bin("hstream"))
        .args(["--port", &server.addr.port().to_string(), "sql"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run hstream sql");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(script.as_bytes()).await.expect("write the script");
    drop(stdin);
    let out = child.wait_with_output().await.expect("hstream sql");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Connector `name`'s task log lines.
pub async fn task_logs(c: &Client, name: &str) -> String {
    let mut c = c.clone();
    c.get_connector_logs(pb::GetConnectorLogsRequest {
        name: name.into(),
        begin: 0,
        count: 1000,
    })
    .await
    .expect("connector logs")
    .into_inner()
    .logs
}

/// A WASM plugin of `plugins/` built by scripts/build-plugins.sh (`counter_source`, …).
pub fn wasm_plugin(name: &str) -> String {
    let p = repo_root()
        .join("plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run scripts/build-plugins.sh", p.display());
    p.display().to_string()
}
