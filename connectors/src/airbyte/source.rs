//! The `airbyte` source: runs an Airbyte source's `read` and appends its RECORDs, each catalog
//! stream to a stream of ours (`stream_prefix` + the stream's name, created if missing), as JSON
//! records keyed by the primary key.
//!
//! The connector's STATE messages are the checkpoint: a STATE is emitted to the runtime after the
//! records before it, so it is stored only once they are all durable, and the stored states go back
//! to the next `read` with `--state`. A sync cut short (pause, crash, failure) therefore resumes at
//! the last durable STATE; records after it are read again (at-least-once).
//!
//! A sync runs once (`sync_interval_secs` absent: the task then completes), continuously (0), or
//! every N seconds. A CONTROL message with a new connector config is validated against the spec
//! and kept in the checkpoint, replacing the user's config for later syncs.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hstream_runtime::tolerance::Stage;
use hstream_runtime::{ConnectorError, Done, Lag, Offset, PayloadFlag, Record, Source, SourceOutput};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::BufReader;

pub use super::catalog::{AirbyteSourceConfig, SyncMode, stream_name};
use super::catalog::{Target, configure};
use super::host::{self, Invocation, Launcher, Role};
use super::protocol::{self, Message, StateKind, Trace};

/// Records per emitted batch at most (a batch also goes out whenever the pipe is drained).
const MAX_BATCH: usize = 4096;
/// How long a connector may take to exit after closing its output.
const EXIT_LIMIT: Duration = Duration::from_secs(30);
/// The connector's stdout pipe capacity we ask for.
const PIPE_BYTES: usize = 1 << 20;
/// Progress is re-reported at most this often.
const REPORT_EVERY: Duration = Duration::from_millis(500);

/// The checkpoint: the connector's latest STATE per scope, whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AirbyteOffset {
    /// What `--state` gets: the latest STATE message per stream (or the one GLOBAL/LEGACY state).
    pub states: Vec<Value>,
    /// A config the connector sent (CONTROL), which replaces the user's while the user's stays
    /// the one it replaced (an ALTER of the config wins). Shown masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_config: Option<ControlConfig>,
    /// Syncs completed.
    pub syncs: u64,
    /// Unix ms when the last sync completed.
    pub last_sync_ms: i64,
    /// Records appended, as of this checkpoint.
    pub records: u64,
}

/// A connector's own config update (CONTROL message) and the user config it replaces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlConfig {
    pub config: Value,
    /// md5 of the user's config it replaced.
    pub replaces: String,
}

fn digest(v: &Value) -> String {
    use md5::Digest;
    md5::Md5::digest(v.to_string().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The config to run with: the connector's own update if it replaced this user config.
fn effective_config(config: &AirbyteSourceConfig, offset: &AirbyteOffset) -> Result<Value, ConnectorError> {
    let user = config.config.object()?;
    Ok(match &offset.control_config {
        Some(c) if c.replaces == digest(&user) => c.config.clone(),
        _ => user,
    })
}

impl Offset for AirbyteOffset {
    const VERSION: u32 = 1;

    /// A restart reads again from the stored STATEs (with the config they were taken under),
    /// in a new sync once a sync completed: the record count does not move it.
    fn resume_point(&self) -> Value {
        serde_json::json!([self.states, self.control_config, self.syncs])
    }
}

impl AirbyteOffset {
    /// Takes a STATE: a stream's replaces that stream's; a global or legacy one replaces all.
    fn take(&mut self, state: protocol::State) {
        match state.kind() {
            StateKind::Stream { name, namespace } => {
                let same = |v: &Value| {
                    let d = &v["stream"]["stream_descriptor"];
                    v["type"] == "STREAM"
                        && d["name"].as_str() == Some(name.as_str())
                        && d["namespace"].as_str() == namespace.as_deref()
                };
                match self.states.iter_mut().find(|v| same(v)) {
                    Some(slot) => *slot = state.body,
                    None => {
                        // A per-stream state ends any global or legacy one.
                        self.states.retain(|v| v["type"] == "STREAM");
                        self.states.push(state.body);
                    }
                }
            }
            StateKind::Global | StateKind::Legacy => self.states = vec![state.body],
        }
    }
}

pub struct AirbyteSource {
    config: AirbyteSourceConfig,
    inv: Invocation,
    spec: Value,
    catalog: Value,
    targets: HashMap<String, Target>,
    offset: AirbyteOffset,
    /// The connector's estimate of the whole sync's records (TRACE ESTIMATE of type SYNC).
    sync_estimate: Option<u64>,
    /// The connector config `open` discovered with.
    opened_with: Value,
}

/// Spec, config validation against it, and the catalog: what `check` and `open` share.
async fn prepare(
    config: &AirbyteSourceConfig,
    connector_config: &Value,
) -> Result<(Launcher, Invocation, Value), ConnectorError> {
    let launcher = config.launcher()?;
    let inv = Invocation::new(&launcher, Role::Source).await?;
    let spec = super::connector_spec(&launcher, &inv).await?;
    super::validate_against(&spec, connector_config)?;
    Ok((launcher, inv, spec))
}

#[async_trait]
impl Source for AirbyteSource {
    type Config = AirbyteSourceConfig;
    type Offset = AirbyteOffset;
    const REPLAYS: bool = true;

    async fn check(config: &AirbyteSourceConfig) -> Result<(), ConnectorError> {
        let cc = config.config.object()?;
        let (_, inv, _) = prepare(config, &cc).await?;
        super::check_cached(&inv, &cc).await?;
        let catalog = super::discover_cached(&inv, &cc).await?;
        configure(config, &catalog)?;
        Ok(())
    }

    async fn open(config: AirbyteSourceConfig, offset: Option<AirbyteOffset>) -> Result<AirbyteSource, ConnectorError> {
        let offset = offset.unwrap_or_default();
        let cc = effective_config(&config, &offset)?;
        let (_, inv, spec) = prepare(&config, &cc).await?;
        let discovered = super::discover_cached(&inv, &cc).await?;
        let (catalog, targets) = configure(&config, &discovered)?;
        Ok(AirbyteSource {
            config,
            inv,
            spec,
            catalog,
            targets,
            offset,
            sync_estimate: None,
            opened_with: cc,
        })
    }

    fn stream(_config: &AirbyteSourceConfig) -> &str {
        // Every batch names its stream.
        ""
    }

    fn normalize(config: &mut Value) {
        super::normalize_config(config);
    }

    fn schema_for(config: &AirbyteSourceConfig, schema: &mut Value) {
        super::schema_with_connector(config.launcher(), schema);
    }

    async fn run(&mut self, out: &mut SourceOutput<AirbyteOffset>) -> Result<Done, ConnectorError> {
        let cancel = out.cancelled();
        loop {
            if self.offset.syncs > 0 {
                let Some(every) = self.config.sync_interval_secs else {
                    return Ok(Done::Completed);
                };
                let since = unix_ms() - self.offset.last_sync_ms;
                let wait = Duration::from_millis(every.saturating_mul(1000).saturating_sub(since.max(0) as u64));
                if !wait.is_zero() {
                    out.report(format!(
                        "synced {} time(s); next sync in {} s",
                        self.offset.syncs,
                        wait.as_secs()
                    ));
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(Done::Cancelled),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
            match self.sync(out).await {
                Ok(Done::Cancelled) => return Ok(Done::Cancelled),
                Ok(Done::Completed) => {}
                Err(e) => {
                    // The next start asks an image for its catalog again (under the config it
                    // was opened with, and the one now, should a CONTROL message have changed it).
                    super::forget_results(&self.inv, &self.opened_with);
                    if let Ok(cc) = effective_config(&self.config, &self.offset) {
                        super::forget_results(&self.inv, &cc);
                    }
                    return Err(e);
                }
            }
            self.offset.syncs += 1;
            self.offset.last_sync_ms = unix_ms();
            out.emit(Vec::new(), self.offset.clone()).await?;
            tracing::info!(
                sync = self.offset.syncs,
                records = self.offset.records,
                "sync completed"
            );
        }
    }
}

/// Whether a line that failed to parse was meant as a RECORD or STATE message.
fn looks_like_data(text: &str) -> bool {
    let t = text.trim_start();
    t.starts_with('{') && (t.contains("\"RECORD\"") || t.contains("\"STATE\""))
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl AirbyteSource {
    /// Sends every target's buffered records, with the current offset (unchanged since the last
    /// STATE, so nothing new is claimed by it).
    async fn flush(&mut self, out: &mut SourceOutput<AirbyteOffset>, since_state: u64) -> Result<(), ConnectorError> {
        for t in self.targets.values_mut() {
            if !t.batch.is_empty() {
                let records = std::mem::take(&mut t.batch);
                out.emit_to(t.stream.clone(), records, self.offset.clone()).await?;
            }
        }
        out.set_lag(Lag::Records(since_state));
        Ok(())
    }

    fn progress(&self) -> String {
        let mut parts: Vec<String> = self
            .targets
            .iter()
            .map(|(name, t)| match t.estimate {
                Some(e) => format!("{name}: {}/~{e} rows", t.count),
                None => format!("{name}: {} rows", t.count),
            })
            .collect();
        parts.sort();
        // A whole-sync estimate (when streams have none of their own) shows as one bar.
        let total: u64 = self.targets.values().map(|t| t.count).sum();
        match self.sync_estimate {
            Some(e) if self.targets.values().all(|t| t.estimate.is_none()) => {
                format!(
                    "sync {}: {total}/~{e} rows ({})",
                    self.offset.syncs + 1,
                    parts.join(" | ")
                )
            }
            _ => format!("sync {}: {}", self.offset.syncs + 1, parts.join(" | ")),
        }
    }

    /// One `read` to its end. Ok(Completed) when the connector finished well.
    async fn sync(&mut self, out: &mut SourceOutput<AirbyteOffset>) -> Result<Done, ConnectorError> {
        let cancel = out.cancelled();
        let cc = effective_config(&self.config, &self.offset)?;
        let mut args = vec![
            "--config".to_owned(),
            self.inv.file(Role::Source.config_file(), &cc)?,
            "--catalog".to_owned(),
            self.inv.file(Role::Source.catalog_file(), &self.catalog)?,
        ];
        if !self.offset.states.is_empty() {
            args.push("--state".into());
            args.push(
                self.inv
                    .file("input_state.json", &Value::Array(self.offset.states.clone()))?,
            );
        }
        for t in self.targets.values_mut() {
            t.count = 0;
            t.estimate = None;
        }
        self.sync_estimate = None;
        tracing::info!(
            "starting read (sync {}, {} stored state(s))",
            self.offset.syncs + 1,
            self.offset.states.len()
        );
        let (mut cmd, _container) = self.inv.command("read", &args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ConnectorError::external("starting the connector's read").with_source(e))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(ConnectorError::internal("the connector's output pipes are missing"));
        };
        // A 1 MiB pipe (Linux default 64 KiB): the connector keeps writing while we append.
        if let Err(e) = rustix::pipe::fcntl_setpipe_size(&stdout, PIPE_BYTES) {
            tracing::debug!("pipe size not raised: {e}");
        }
        // stderr carries the connector's own logging: into our log (and the task's).
        let stderr = host::Stderr::drain(stderr, true);

        let idle = Duration::from_secs(self.config.idle_timeout_secs);
        let max_record = out.max_record_size();
        // A RECORD line may be longer than its record (JSON text against protobuf), not unboundedly.
        let max_line = max_record.saturating_mul(4).max(1 << 20);
        let mut reader = BufReader::with_capacity(1 << 20, stdout);
        let mut line: Vec<u8> = Vec::with_capacity(4096);
        let mut line_no = 0u64;
        let mut pending = 0usize;
        let mut since_state = 0u64;
        let mut last_error: Option<(String, Option<String>)> = None;
        let mut reported = Instant::now();
        let mut last_len = 256;
        out.report(self.progress());
        loop {
            line.clear();
            // A whole line already buffered is taken without waiting; otherwise wait, within the
            // idle limit, and ready to stop.
            let n = if memchr::memchr(b'\n', reader.buffer()).is_some() {
                host::read_line_bounded(&mut reader, &mut line, max_line).await
            } else {
                if pending > 0 {
                    self.flush(out, since_state).await?;
                    pending = 0;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(Done::Cancelled),
                    r = tokio::time::timeout(idle, host::read_line_bounded(&mut reader, &mut line, max_line)) => match r {
                        Ok(r) => r,
                        Err(_) => return Err(ConnectorError::external(format!(
                            "the connector wrote nothing for {} s; stopped as hung", idle.as_secs()
                        ))),
                    },
                }
            }
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData => ConnectorError::config(format!(
                    "the connector's line {} is over {max_line} bytes (max-record-size {max_record}); stopped",
                    line_no + 1
                )),
                _ => ConnectorError::external("reading the connector's output").with_source(e),
            })?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let text = match std::str::from_utf8(&line) {
                Ok(t) => t.trim_end(),
                Err(_) => {
                    return Err(ConnectorError::external(format!(
                        "the connector's line {line_no} is not UTF-8; stopped (nothing after the last STATE is kept)"
                    )));
                }
            };
            if text.is_empty() {
                continue;
            }
            match protocol::parse(text) {
                Ok(Message::Record(r)) => {
                    let Some(t) = self.targets.get_mut(r.stream.as_ref()) else {
                        tracing::debug!(stream = %r.stream, "record of a stream not in the catalog ignored");
                        continue;
                    };
                    // The record's own buffer, sized like the last one.
                    let mut buf = Vec::with_capacity(last_len + 16);
                    let mut keys = match crate::pbstruct::struct_from_json(&mut buf, r.data.get(), &t.primary_key) {
                        Ok(keys) => keys,
                        Err(e) => {
                            // A failed record (errors.tolerance): the task's error, or a dead
                            // letter holding the data as the connector wrote it.
                            let error = ConnectorError::data(format!(
                                "the connector's line {line_no}: RECORD data cannot be stored as a JSON record: {e}"
                            ));
                            let data = bytes::Bytes::copy_from_slice(r.data.get().as_bytes());
                            let at = serde_json::json!({ "stream": r.stream.as_ref(), "line": line_no });
                            out.reject(
                                Record::new(String::new(), PayloadFlag::Raw, data),
                                Stage::Convert,
                                at,
                                &error,
                            )
                            .await?;
                            continue;
                        }
                    };
                    last_len = buf.len();
                    let key = match keys.as_mut_slice() {
                        [] => String::new(),
                        [one] => one.take().unwrap_or_default(),
                        many => many
                            .iter()
                            .map(|k| k.as_deref().unwrap_or(""))
                            .collect::<Vec<_>>()
                            .join(","),
                    };
                    // One over the stream's size limit is the runtime's to refuse (or dead-letter).
                    t.batch.push(Record::new(key, PayloadFlag::Json, buf));
                    t.count += 1;
                    pending += 1;
                    since_state += 1;
                    self.offset.records += 1;
                    if pending >= MAX_BATCH {
                        self.flush(out, since_state).await?;
                        pending = 0;
                    }
                }
                Ok(Message::State(state)) => {
                    // Every record before this state goes out first; the state rides behind them.
                    self.flush(out, 0).await?;
                    pending = 0;
                    since_state = 0;
                    self.offset.take(state);
                    out.emit(Vec::new(), self.offset.clone()).await?;
                }
                Ok(Message::Log { level, message }) => host::log(level, &message),
                Ok(Message::Trace(Trace::Error {
                    message,
                    internal_message,
                    failure_type,
                })) => {
                    tracing::error!(
                        target: "airbyte",
                        failure_type = failure_type.as_deref().unwrap_or("unknown"),
                        internal = internal_message.as_deref().unwrap_or(""),
                        "{message}"
                    );
                    last_error = Some((message, failure_type));
                }
                Ok(Message::Trace(Trace::Estimate { name, scope, rows, .. })) => {
                    if scope == "SYNC" {
                        self.sync_estimate = rows;
                    } else if let Some(t) = name.and_then(|n| self.targets.get_mut(&n)) {
                        t.estimate = rows;
                    }
                    tracing::debug!(sync_estimate = ?self.sync_estimate, "estimate");
                }
                Ok(Message::Trace(Trace::StreamStatus { name, status })) => {
                    tracing::info!(target: "airbyte", stream = %name, "stream {status}");
                }
                Ok(Message::ControlConfig(new)) => match super::validate_against(&self.spec, &new) {
                    Ok(()) => {
                        tracing::info!("the connector updated its config (kept with the checkpoint)");
                        self.offset.control_config = Some(ControlConfig {
                            config: new,
                            replaces: digest(&self.config.config.object()?),
                        });
                        // Stored at once (behind the records before it): a single-use
                        // credential must not be lost to a pause.
                        self.flush(out, since_state).await?;
                        pending = 0;
                        out.emit(Vec::new(), self.offset.clone()).await?;
                    }
                    Err(e) => tracing::warn!("the connector sent a config its spec refuses; ignored: {e}"),
                },
                Ok(_) => {}
                // Plain text, or JSON that is no AirbyteMessage: log lines, as Airbyte's platform
                // takes them. But a line that means to be a RECORD or STATE and is not one is an
                // error: skipping it could checkpoint a later STATE past lost data.
                Err(protocol::ParseError::NotJson(e)) if !looks_like_data(text) => {
                    let _ = e;
                    tracing::info!(target: "airbyte", "{text}");
                }
                Err(protocol::ParseError::NoType) => {
                    tracing::info!(target: "airbyte", "{text}");
                }
                Err(e) => {
                    return Err(ConnectorError::external(format!(
                        "the connector's line {line_no} is a malformed message: {e}; stopped (nothing after the last STATE is kept)"
                    )));
                }
            }
            if reported.elapsed() >= REPORT_EVERY {
                reported = Instant::now();
                out.report(self.progress());
            }
        }
        self.flush(out, since_state).await?;
        let status = tokio::select! {
            _ = cancel.cancelled() => return Ok(Done::Cancelled),
            s = tokio::time::timeout(EXIT_LIMIT, child.wait()) => match s {
                Ok(s) => s.map_err(|e| ConnectorError::external("waiting for the connector").with_source(e))?,
                Err(_) => return Err(ConnectorError::external(format!(
                    "the connector closed its output but did not exit within {EXIT_LIMIT:?}; stopped"
                ))),
            },
        };
        out.report(self.progress());
        let classify = |message: String, failure_type: Option<&str>| match failure_type {
            Some("config_error") => ConnectorError::config(message),
            _ => ConnectorError::external(message),
        };
        if !status.success() {
            let tail = stderr.last_words().await;
            if self.inv.engine_refused(status, &tail) {
                return Err(ConnectorError::config(format!(
                    "the connector's read exited with {}: {tail}",
                    self.inv.exit(status)
                )));
            }
            let status = self.inv.exit(status);
            return Err(match &last_error {
                Some((m, t)) => classify(format!("the connector's read exited with {status}: {m}"), t.as_deref()),
                None => classify(format!("the connector's read exited with {status}: {tail}"), None),
            });
        }
        if let Some((m, t)) = last_error {
            return Err(classify(
                format!("the connector's read reported an error: {m}"),
                t.as_deref(),
            ));
        }
        Ok(Done::Completed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn lines_are_bounded_and_broken_data_lines_recognised() {
        let mut r = tokio::io::BufReader::with_capacity(8, &b"short\nthis line is long\nend"[..]);
        let mut line = Vec::new();
        assert_eq!(host::read_line_bounded(&mut r, &mut line, 10).await.unwrap(), 6);
        assert_eq!(line, b"short\n");
        line.clear();
        let e = host::read_line_bounded(&mut r, &mut line, 10).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(looks_like_data(r#"{"type":"RECORD","record":{"data":{"v":NaN}}}"#));
        assert!(!looks_like_data("Traceback: RECORD"));
        assert!(!looks_like_data(r#"{"level":"info","msg":"hello"}"#));
    }

    #[tokio::test]
    async fn progress_shows_estimates_per_stream_or_for_the_sync() {
        let target = |count, estimate| Target {
            stream: "s".into(),
            primary_key: Vec::new(),
            batch: Vec::new(),
            count,
            estimate,
        };
        let mut src = AirbyteSource {
            config: serde_json::from_value(json!({"command": "/bin/sh"})).unwrap(),
            inv: Invocation::new(&Launcher::Command("/bin/sh".into()), Role::Source)
                .await
                .unwrap(),
            spec: Value::Null,
            catalog: Value::Null,
            targets: HashMap::from([("a".to_owned(), target(10, None)), ("b".to_owned(), target(20, None))]),
            offset: AirbyteOffset::default(),
            sync_estimate: Some(1000),
            opened_with: Value::Null,
        };
        assert_eq!(src.progress(), "sync 1: 30/~1000 rows (a: 10 rows | b: 20 rows)");
        src.targets.get_mut("a").unwrap().estimate = Some(50);
        assert_eq!(src.progress(), "sync 1: a: 10/~50 rows | b: 20 rows");
    }

    #[test]
    fn states_are_kept_per_scope() {
        let st = |v: Value| protocol::State { body: v };
        let mut o = AirbyteOffset::default();
        o.take(st(
            json!({"type": "STREAM", "stream": {"stream_descriptor": {"name": "a"}, "stream_state": {"n": 1}}}),
        ));
        o.take(st(json!({"type": "STREAM", "stream": {"stream_descriptor": {"name": "b"}, "stream_state": {"n": 1}}, "id": 7})));
        o.take(st(
            json!({"type": "STREAM", "stream": {"stream_descriptor": {"name": "a"}, "stream_state": {"n": 2}}}),
        ));
        assert_eq!(o.states.len(), 2);
        assert_eq!(o.states[0]["stream"]["stream_state"]["n"], 2);
        assert_eq!(o.states[1]["id"], 7, "private fields are kept");
        o.take(st(
            json!({"type": "GLOBAL", "global": {"shared_state": {"lsn": 5}, "stream_states": []}}),
        ));
        assert_eq!(o.states.len(), 1);
        o.take(st(json!({"data": {"cursor": 3}})));
        assert_eq!(o.states, vec![json!({"data": {"cursor": 3}})]);
    }
}
