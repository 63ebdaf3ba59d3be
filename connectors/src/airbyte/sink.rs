//! The `airbyte` sink: feeds a stream's records to an Airbyte destination's `write` as RECORD
//! messages of one catalog stream, with STATE messages of our own between them.
//!
//! A destination echoes a STATE once everything before it is durable on its side; only then does
//! our read position advance ([`Sink::flush`] returns when the STATE it sent came back). A
//! destination that holds its echoes until the end of its input is given the end: after
//! `state_timeout_secs` without the echo the sink closes `write`'s input, waits for the echoes
//! and the exit, and starts a new `write` for the records that follow.

use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use hstream_runtime::{ConnectorConfig, ConnectorError, PayloadFlag, Sink, SinkRecord, Written};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::ContainerRun;
use super::host::{Invocation, Launcher, Role};
use super::protocol::{self, Message, Trace};
use super::{COMMAND_LIMIT, ConnectorJson};

/// Configuration of the `airbyte` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "airbyte",
    description = "Writes a stream's records to an Airbyte destination (a PyPI package, an executable or a container image)."
)]
pub struct AirbyteSinkConfig {
    /// Stream whose records are written.
    pub stream: String,
    /// A PyPI requirement of an Airbyte destination package, e.g. `airbyte-destination-duckdb`.
    #[serde(default)]
    pub package: Option<String>,
    /// An executable speaking the Airbyte protocol: a name on PATH or a path.
    #[serde(default)]
    pub command: Option<String>,
    /// A container image following Airbyte's image conventions, run with docker or podman.
    #[serde(default)]
    pub image: Option<String>,
    /// With image: `docker` or `podman` (default: podman where installed, else docker).
    #[serde(default)]
    pub engine: Option<String>,
    /// With image: the container's memory limit, as docker and podman take it (`512m`, `2g`). A
    /// connector going over it is killed (exit 137) and the task says so.
    #[serde(default)]
    pub memory_limit: Option<String>,
    /// With image: how many CPUs the container may use (`0.5`, `2`).
    #[serde(default)]
    pub cpu_limit: Option<f64>,
    /// With image: the container's network: `host` (the default: the connector reaches what
    /// this server reaches), `bridge`, `none`, or a network's name.
    #[serde(default)]
    pub network: Option<String>,
    /// With image: a directory of this machine mounted read-write at `/local` in the container,
    /// as Airbyte mounts its `LOCAL_ROOT`, for connectors that read or write local files (it
    /// must be writable by the image's user: `airbyte`, uid 1000, in Airbyte's images).
    #[serde(default)]
    pub local_root: Option<String>,
    /// The destination's own config, as an object or JSON text.
    /// Shown with only the fields its spec marks `airbyte_secret` masked once that spec is known
    /// to the server; masked whole until then.
    #[serde(default)]
    #[schemars(extend("airbyte_secret" = true))]
    pub config: ConnectorJson,
    /// The Airbyte stream name the destination sees (default: the stream's name).
    #[serde(default)]
    pub destination_stream: Option<String>,
    /// The Airbyte namespace the destination sees.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `append` or `append_dedup` (which needs `primary_key`). (`overwrite` is refused: every
    /// `write` is a sync of its own, which would replace what the ones before wrote.)
    #[serde(default = "default_sync_mode")]
    pub destination_sync_mode: String,
    /// Top-level fields of the primary key, comma separated (for `append_dedup`).
    #[serde(default)]
    pub primary_key: Option<String>,
    /// How often a STATE is sent (and the read position advanced once it is echoed), in ms.
    #[serde(default = "default_flush_ms")]
    #[schemars(range(min = 10))]
    pub flush_interval_ms: u64,
    /// How long to wait for an echo before ending the `write` to get it.
    #[serde(default = "default_state_timeout")]
    #[schemars(range(min = 1))]
    pub state_timeout_secs: u64,
}

fn default_sync_mode() -> String {
    "append".into()
}

fn default_flush_ms() -> u64 {
    1000
}

fn default_state_timeout() -> u64 {
    30
}

impl ConnectorConfig for AirbyteSinkConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        self.launcher()?;
        self.config.object()?;
        match self.destination_sync_mode.as_str() {
            "append" => {}
            "append_dedup" if self.primary_key.is_some() => {}
            "append_dedup" => {
                return Err(ConnectorError::config(
                    "primary_key: append_dedup needs the primary key fields",
                ));
            }
            other => {
                return Err(ConnectorError::config(format!(
                    "destination_sync_mode: {other:?} is not append or append_dedup (overwrite would replace earlier writes)"
                )));
            }
        }
        Ok(())
    }
}

impl AirbyteSinkConfig {
    pub fn launcher(&self) -> Result<Launcher, ConnectorError> {
        super::launcher(
            &self.package,
            &self.command,
            &self.image,
            &self.engine,
            ContainerRun {
                memory: self.memory_limit.clone(),
                cpus: self.cpu_limit,
                network: self.network.clone(),
                local_root: self.local_root.clone(),
            },
        )
    }

    fn catalog(&self) -> Value {
        let name = self.destination_stream.clone().unwrap_or_else(|| self.stream.clone());
        let mut stream = json!({
            "name": name,
            "json_schema": {"type": "object", "additionalProperties": true},
            "supported_sync_modes": ["full_refresh", "incremental"],
        });
        if let Some(ns) = &self.namespace {
            stream["namespace"] = Value::from(ns.clone());
        }
        let pk: Vec<Vec<String>> = self
            .primary_key
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| vec![s.to_owned()])
            .collect();
        json!({"streams": [{
            "stream": stream,
            "sync_mode": "incremental",
            "destination_sync_mode": self.destination_sync_mode,
            "primary_key": pk,
        }]})
    }
}

/// What a running `write` says back.
enum Said {
    /// Our STATE number `n` was echoed.
    Echo(u64),
    Error(String, Option<String>),
}

/// A running `write`.
struct Writer {
    child: tokio::process::Child,
    stdin: Option<BufWriter<tokio::process::ChildStdin>>,
    said: mpsc::UnboundedReceiver<Said>,
    stderr: super::host::Stderr,
    /// Removes the container (for an image) once the writer is gone.
    _container: Option<super::container::ContainerGuard>,
}

pub struct AirbyteSink {
    config: AirbyteSinkConfig,
    inv: Invocation,
    connector_config: Value,
    catalog: Value,
    stream_name: String,
    writer: Option<Writer>,
    /// Our STATE numbers: the last sent and the last echoed.
    sent: u64,
    echoed: u64,
    /// Records written since the last STATE sent.
    unsent: u64,
    line: String,
}

#[async_trait]
impl Sink for AirbyteSink {
    type Config = AirbyteSinkConfig;

    async fn check(config: &AirbyteSinkConfig) -> Result<(), ConnectorError> {
        let cc = config.config.object()?;
        let launcher = config.launcher()?;
        let inv = Invocation::new(&launcher, Role::Destination).await?;
        let spec = super::connector_spec(&launcher, &inv).await?;
        super::validate_against(&spec, &cc)?;
        super::check_cached(&inv, &cc).await
    }

    async fn open(config: AirbyteSinkConfig) -> Result<AirbyteSink, ConnectorError> {
        let cc = config.config.object()?;
        let launcher = config.launcher()?;
        let inv = Invocation::new(&launcher, Role::Destination).await?;
        let spec = super::connector_spec(&launcher, &inv).await?;
        super::validate_against(&spec, &cc)?;
        let catalog = config.catalog();
        let stream_name = config
            .destination_stream
            .clone()
            .unwrap_or_else(|| config.stream.clone());
        Ok(AirbyteSink {
            config,
            inv,
            connector_config: cc,
            catalog,
            stream_name,
            writer: None,
            sent: 0,
            echoed: 0,
            unsent: 0,
            line: String::new(),
        })
    }

    fn stream(config: &AirbyteSinkConfig) -> &str {
        &config.stream
    }

    fn normalize(config: &mut Value) {
        super::normalize_config(config);
    }

    fn schema_for(config: &AirbyteSinkConfig, schema: &mut Value) {
        super::schema_with_connector(config.launcher(), schema);
    }

    fn flush_every(config: &AirbyteSinkConfig) -> Duration {
        Duration::from_millis(config.flush_interval_ms)
    }

    async fn write(&mut self, records: &[SinkRecord]) -> Result<Written, ConnectorError> {
        if self.writer.is_none() {
            self.writer = Some(self.start().await?);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let w = self.writer.as_mut().expect("started");
        let stdin = w
            .stdin
            .as_mut()
            .ok_or_else(|| ConnectorError::internal("the destination's input is closed"))?;
        for r in records {
            let data = record_data(r)?;
            self.line.clear();
            self.line.push_str(&protocol::record_line(
                &self.stream_name,
                self.config.namespace.as_deref(),
                &data,
                now,
            ));
            self.line.push('\n');
            if let Err(e) = stdin.write_all(self.line.as_bytes()).await {
                return Err(self.ended(format!("writing to the destination: {e}")).await);
            }
        }
        self.unsent += records.len() as u64;
        Ok(Written::Accepted)
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        if self.unsent == 0 && self.echoed == self.sent {
            return Ok(());
        }
        if self.writer.is_none() {
            return Err(ConnectorError::internal(
                "records were written with no destination running",
            ));
        }
        self.send_state().await?;
        // Wait for the echo; a destination that keeps it until its input ends gets the end.
        let limit = Duration::from_secs(self.config.state_timeout_secs);
        if self.wait_echo(limit).await? {
            return Ok(());
        }
        tracing::info!("no echo within {limit:?}: ending this write to have the destination flush");
        self.end_input(limit).await
    }

    async fn close(&mut self) -> Result<(), ConnectorError> {
        if self.writer.is_none() {
            return Ok(());
        }
        self.send_state().await?;
        self.end_input(Duration::from_secs(self.config.state_timeout_secs))
            .await
    }
}

impl AirbyteSink {
    /// Ends `write`'s input: the destination flushes, echoes what it holds and exits.
    async fn end_input(&mut self, limit: Duration) -> Result<(), ConnectorError> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        if let Some(mut stdin) = w.stdin.take() {
            let _ = stdin.shutdown().await;
        }
        if self.wait_echo(limit).await? {
            self.finish().await?;
            return Ok(());
        }
        Err(self
            .ended(format!(
                "the destination did not echo our state within {limit:?} after its input ended"
            ))
            .await)
    }
}

/// A record as Airbyte RECORD data: a JSON record's object; a RAW record's payload when it is a
/// JSON object, else `{"key": …, "payload": text}`.
fn record_data(r: &SinkRecord) -> Result<Value, ConnectorError> {
    Ok(match r.flag {
        PayloadFlag::Json => hstream_runtime::structs::decode_json(&r.payload).map_err(|e| {
            ConnectorError::config(format!(
                "record {}:{}#{} is flagged JSON but is not a Struct: {e}",
                r.shard_id, r.lsn, r.index
            ))
        })?,
        PayloadFlag::Raw => match serde_json::from_slice::<Value>(&r.payload) {
            Ok(v @ Value::Object(_)) => v,
            _ => json!({"key": r.key, "payload": String::from_utf8_lossy(&r.payload)}),
        },
    })
}

impl AirbyteSink {
    /// Sends a STATE of ours after the records written since the last one.
    async fn send_state(&mut self) -> Result<(), ConnectorError> {
        if self.unsent > 0 {
            self.sent += 1;
            self.unsent = 0;
            let state = json!({
                "type": "STREAM",
                "stream": {
                    "stream_descriptor": {"name": self.stream_name, "namespace": self.config.namespace},
                    "stream_state": {"hstream_state": self.sent},
                },
            });
            let line = protocol::state_line(&state) + "\n";
            let w = self.writer.as_mut().expect("checked");
            let stdin = w
                .stdin
                .as_mut()
                .ok_or_else(|| ConnectorError::internal("the destination's input is closed"))?;
            let sent = async {
                stdin.write_all(line.as_bytes()).await?;
                stdin.flush().await
            }
            .await;
            if let Err(e) = sent {
                return Err(self.ended(format!("writing to the destination: {e}")).await);
            }
        }
        Ok(())
    }

    async fn start(&mut self) -> Result<Writer, ConnectorError> {
        let args = vec![
            "--config".to_owned(),
            self.inv.file(Role::Destination.config_file(), &self.connector_config)?,
            "--catalog".to_owned(),
            self.inv.file(Role::Destination.catalog_file(), &self.catalog)?,
        ];
        let (mut cmd, container) = self.inv.command("write", &args);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ConnectorError::external("starting the destination's write").with_source(e))?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(ConnectorError::internal("the destination's pipes are missing"));
        };
        let (tx, said) = mpsc::unbounded_channel();
        let stream = self.stream_name.clone();
        tokio::spawn(
            async move {
                let mut reader = BufReader::new(stdout);
                let mut raw = Vec::new();
                // Lossy and bounded, so a stray byte cannot stop us reading the echoes.
                while let Ok(n) = super::host::read_line_bounded(&mut reader, &mut raw, 64 << 20).await {
                    if n == 0 {
                        break;
                    }
                    let line = String::from_utf8_lossy(&raw).trim_end().to_owned();
                    raw.clear();
                    if line.is_empty() {
                        continue;
                    }
                    match protocol::parse(&line) {
                        Ok(Message::State(s)) => {
                            let st = &s.body["stream"];
                            let n = st["stream_state"]["hstream_state"].as_u64();
                            match n {
                                Some(n) if st["stream_descriptor"]["name"] == stream.as_str() => {
                                    let _ = tx.send(Said::Echo(n));
                                }
                                _ => tracing::warn!("the destination echoed a state we did not send; ignored"),
                            }
                        }
                        Ok(Message::Log { level, message }) => super::host::log(level, &message),
                        Ok(Message::Trace(Trace::Error {
                            message, failure_type, ..
                        })) => {
                            tracing::error!(target: "airbyte", "{message}");
                            let _ = tx.send(Said::Error(message, failure_type));
                        }
                        Ok(_) => {}
                        Err(protocol::ParseError::NotJson(_)) => tracing::info!(target: "airbyte", "{line}"),
                        Err(e) => {
                            let _ = tx.send(Said::Error(
                                format!("the destination wrote a malformed message: {e}"),
                                None,
                            ));
                        }
                    }
                }
            }
            .in_current_span(),
        );
        let stderr = super::host::Stderr::drain(stderr, true);
        Ok(Writer {
            child,
            stdin: Some(BufWriter::with_capacity(1 << 20, stdin)),
            said,
            stderr,
            _container: container,
        })
    }

    /// Waits until our last STATE is echoed (true) or `limit` passes (false); errs when the
    /// destination reports an error or ends first.
    async fn wait_echo(&mut self, limit: Duration) -> Result<bool, ConnectorError> {
        let deadline = tokio::time::Instant::now() + limit;
        while self.echoed < self.sent {
            let w = self.writer.as_mut().expect("running");
            match tokio::time::timeout_at(deadline, w.said.recv()).await {
                Err(_) => return Ok(false),
                Ok(Some(Said::Echo(n))) => {
                    if n <= self.echoed || n > self.sent {
                        return Err(self
                            .ended(format!(
                                "the destination echoed state {n} out of order (after {}, of {} sent)",
                                self.echoed, self.sent
                            ))
                            .await);
                    }
                    self.echoed = n;
                }
                Ok(Some(Said::Error(m, t))) => {
                    let e = self.ended(format!("the destination reported an error: {m}")).await;
                    return Err(match t.as_deref() {
                        Some("config_error") => ConnectorError {
                            kind: hstream_runtime::ErrorKind::Config,
                            retry: false,
                            ..e
                        },
                        _ => e,
                    });
                }
                Ok(None) => {
                    return Err(self
                        .ended("the destination closed its output before echoing our state".into())
                        .await);
                }
            }
        }
        Ok(true)
    }

    /// After the last echo of an ended input: the exit.
    async fn finish(&mut self) -> Result<(), ConnectorError> {
        let Some(mut w) = self.writer.take() else {
            return Ok(());
        };
        match tokio::time::timeout(COMMAND_LIMIT, w.child.wait()).await {
            Ok(Ok(s)) if s.success() => Ok(()),
            Ok(Ok(s)) => Err(ConnectorError::external(format!(
                "the destination's write exited with {}: {}",
                self.inv.exit(s),
                w.stderr.last_words().await
            ))),
            Ok(Err(e)) => Err(ConnectorError::external("waiting for the destination").with_source(e)),
            Err(_) => Err(ConnectorError::external(
                "the destination did not exit after its input ended",
            )),
        }
    }

    /// The error for a `write` that failed: stops it, with its exit status and last words.
    async fn ended(&mut self, what: String) -> ConnectorError {
        let Some(mut w) = self.writer.take() else {
            return ConnectorError::external(what);
        };
        drop(w.stdin.take());
        let status = match tokio::time::timeout(Duration::from_secs(5), w.child.wait()).await {
            Ok(Ok(s)) => self.inv.exit(s),
            _ => {
                let _ = w.child.kill().await;
                "killed".to_owned()
            }
        };
        let tail = w.stderr.last_words().await;
        ConnectorError::external(format!("{what} (write {status}; {tail})"))
    }
}
