//! The `wasm` source and sink: a plugin component named by `module` runs as the connector.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::instance::{Instance, WitWritten, from_wit, to_wit};
use super::{Loaded, PluginKind, SandboxOptions};
use crate::connector::{ConnectorConfig, Done, Offset, Sink, SinkRecord, Source, SourceOutput, Written};
use crate::error::ConnectorError;
use crate::options::{ConnectorJson, NameList};

/// The longest pause between `next` calls of a source that has nothing (its `idle-ms` is capped).
const MAX_IDLE: Duration = Duration::from_secs(1);
/// The shortest: a source that says 0 while it has nothing is not spun on.
const MIN_IDLE: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WasmSourceConfig {
    /// The plugin: a path to a WebAssembly component (`.wasm`, built for wasm32-wasip2 against
    /// hstream:plugin@1.0.0), or the name of a plugin uploaded to the server.
    pub module: String,
    /// The stream records go to (created if missing); a plugin may route batches to others.
    pub stream: String,
    /// The plugin's own config (an object or JSON text), checked against the schema the plugin
    /// declares. Shown with only the fields that schema marks secret masked once the plugin is
    /// loaded; masked whole until then.
    #[serde(default)]
    #[schemars(extend("airbyte_secret" = true))]
    pub config: ConnectorJson,
    /// Most records one `next` call may return (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub batch_size: Option<u32>,
    /// Memory the plugin may use, in MiB (default 64); growing past it stops the task (FAILED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub memory_limit_mb: Option<u32>,
    /// The longest one call into the plugin may run, in ms (default 10000); longer stops the
    /// task (FAILED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub call_timeout_ms: Option<u64>,
    /// Host directories the plugin may read and write (list or comma-separated), at the same
    /// paths inside. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_dirs: Option<NameList>,
    /// TCP addresses `host:port` the plugin may connect to (list or comma-separated). None by
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_connect: Option<NameList>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WasmSinkConfig {
    /// The plugin: a path to a WebAssembly component (`.wasm`, built for wasm32-wasip2 against
    /// hstream:plugin@1.0.0), or the name of a plugin uploaded to the server.
    pub module: String,
    /// The stream records come from.
    pub stream: String,
    /// The plugin's own config (an object or JSON text), checked against the schema the plugin
    /// declares. Shown with only the fields that schema marks secret masked once the plugin is
    /// loaded; masked whole until then.
    #[serde(default)]
    #[schemars(extend("airbyte_secret" = true))]
    pub config: ConnectorJson,
    /// Memory the plugin may use, in MiB (default 64); growing past it stops the task (FAILED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub memory_limit_mb: Option<u32>,
    /// The longest one call into the plugin may run, in ms (default 10000); longer stops the
    /// task (FAILED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub call_timeout_ms: Option<u64>,
    /// Host directories the plugin may read and write (list or comma-separated), at the same
    /// paths inside. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_dirs: Option<NameList>,
    /// TCP addresses `host:port` the plugin may connect to (list or comma-separated). None by
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_connect: Option<NameList>,
}

macro_rules! sandbox_options {
    ($t:ty) => {
        impl $t {
            fn sandbox_options(&self) -> SandboxOptions {
                SandboxOptions {
                    memory_limit_mb: self.memory_limit_mb,
                    call_timeout_ms: self.call_timeout_ms,
                    grant_dirs: self.grant_dirs.clone(),
                    grant_connect: self.grant_connect.clone(),
                }
            }
        }
    };
}
sandbox_options!(WasmSourceConfig);
sandbox_options!(WasmSinkConfig);

impl ConnectorConfig for WasmSourceConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        if self.stream.is_empty() {
            return Err(ConnectorError::config("stream: must not be empty"));
        }
        super::resolve_module(&self.module).map(|_| ())
    }
}

impl ConnectorConfig for WasmSinkConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        super::resolve_module(&self.module).map(|_| ())
    }
}

/// Loads the plugin, checks its kind, its config against its schema and the grants; returns the
/// plugin and its config as JSON text.
async fn prepare(
    module: &str,
    config: &ConnectorJson,
    options: &SandboxOptions,
    want: PluginKind,
    used_as: &str,
) -> Result<(Arc<Loaded>, String), ConnectorError> {
    let loaded = super::load(module).await?;
    super::expect_kind(&loaded, want, used_as)?;
    let config = config.object()?;
    super::check_plugin_config(&loaded, "config", &config)?;
    options.sandbox().check_async().await?;
    Ok((loaded, config.to_string()))
}

/// Our schema with `config` described by the plugin's own, where the plugin is loaded.
fn schema_with_plugin(module: &str, schema: &mut Value) {
    if let Some(l) = super::cached(module) {
        crate::options::embed_schema(schema, "config", &l.config_schema);
    }
}

/// The offset of a `wasm` source: the plugin's own position, as it gave it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WasmOffset {
    pub plugin: Option<Value>,
}

impl Offset for WasmOffset {
    const VERSION: u32 = 1;
}

pub struct WasmSource {
    instance: Instance,
    offset: WasmOffset,
    batch_size: u32,
}

#[async_trait]
impl Source for WasmSource {
    type Config = WasmSourceConfig;
    type Offset = WasmOffset;

    async fn check(config: &WasmSourceConfig) -> Result<(), ConnectorError> {
        let o = config.sandbox_options();
        prepare(
            &config.module,
            &config.config,
            &o,
            PluginKind::Source,
            "a wasm source connector",
        )
        .await?;
        Ok(())
    }

    async fn open(config: WasmSourceConfig, offset: Option<WasmOffset>) -> Result<Self, ConnectorError> {
        let o = config.sandbox_options();
        let (loaded, text) = prepare(
            &config.module,
            &config.config,
            &o,
            PluginKind::Source,
            "a wasm source connector",
        )
        .await?;
        let instance = Instance::start(loaded, o.sandbox()).await?;
        let offset = offset.unwrap_or_default();
        let at = offset.plugin.as_ref().map(Value::to_string);
        instance.call(move |g| g.source_open(&text, at.as_deref())).await?;
        Ok(WasmSource {
            instance,
            offset,
            batch_size: config.batch_size.unwrap_or(1000),
        })
    }

    fn stream(config: &WasmSourceConfig) -> &str {
        &config.stream
    }

    fn normalize(config: &mut Value) {
        crate::options::normalize_json_field(config, "config");
    }

    fn schema_for(config: &WasmSourceConfig, schema: &mut Value) {
        schema_with_plugin(&config.module, schema);
    }

    async fn run(&mut self, out: &mut SourceOutput<WasmOffset>) -> Result<Done, ConnectorError> {
        let cancel = out.cancelled();
        let max = self.batch_size;
        loop {
            let batch = tokio::select! {
                b = self.instance.call(move |g| g.source_next(max)) => b?,
                _ = cancel.cancelled() => return Ok(Done::Cancelled),
            };
            let name = self.instance.name.clone();
            // A record over the stream's size limit is the pipeline's to refuse (or dead-letter).
            let mut records = Vec::with_capacity(batch.records.len());
            for r in batch.records {
                records.push(from_wit(&name, r)?);
            }
            let moved = match batch.offset {
                Some(o) => {
                    let v: Value = serde_json::from_str(&o).map_err(|e| {
                        ConnectorError::internal(format!("plugin {name} gave an offset that is not JSON"))
                            .with_source(e)
                    })?;
                    self.offset.plugin = Some(v);
                    true
                }
                None => false,
            };
            let empty = records.is_empty();
            if !empty || moved {
                let r = match batch.stream {
                    Some(s) => out.emit_to(s.into(), records, self.offset.clone()).await,
                    None => out.emit(records, self.offset.clone()).await,
                };
                if r.is_err() && cancel.is_cancelled() {
                    return Ok(Done::Cancelled);
                }
                r?;
            }
            if batch.done {
                return Ok(Done::Completed);
            }
            if empty {
                let idle = Duration::from_millis(u64::from(batch.idle_ms)).clamp(MIN_IDLE, MAX_IDLE);
                tokio::select! {
                    _ = tokio::time::sleep(idle) => {}
                    _ = cancel.cancelled() => return Ok(Done::Cancelled),
                }
            }
        }
    }
}

pub struct WasmSink {
    instance: Instance,
}

#[async_trait]
impl Sink for WasmSink {
    type Config = WasmSinkConfig;

    async fn check(config: &WasmSinkConfig) -> Result<(), ConnectorError> {
        let o = config.sandbox_options();
        prepare(
            &config.module,
            &config.config,
            &o,
            PluginKind::Sink,
            "a wasm sink connector",
        )
        .await?;
        Ok(())
    }

    async fn open(config: WasmSinkConfig) -> Result<Self, ConnectorError> {
        let o = config.sandbox_options();
        let (loaded, text) = prepare(
            &config.module,
            &config.config,
            &o,
            PluginKind::Sink,
            "a wasm sink connector",
        )
        .await?;
        let instance = Instance::start(loaded, o.sandbox()).await?;
        instance.call(move |g| g.sink_open(&text)).await?;
        Ok(WasmSink { instance })
    }

    fn stream(config: &WasmSinkConfig) -> &str {
        &config.stream
    }

    fn normalize(config: &mut Value) {
        crate::options::normalize_json_field(config, "config");
    }

    fn schema_for(config: &WasmSinkConfig, schema: &mut Value) {
        schema_with_plugin(&config.module, schema);
    }

    async fn write(&mut self, records: &[SinkRecord]) -> Result<Written, ConnectorError> {
        let wit = records
            .iter()
            .map(|r| to_wit(&r.key, r.flag, &r.payload, &r.attributes))
            .collect::<Result<Vec<_>, _>>()?;
        let w = self.instance.call(move |g| g.sink_write(&wit)).await?;
        Ok(match w {
            WitWritten::Accepted => Written::Accepted,
            WitWritten::Durable => Written::Durable,
        })
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        self.instance.call(|g| g.sink_flush()).await
    }
}
