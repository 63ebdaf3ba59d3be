use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::connector::ConnectorConfig;
use crate::error::ConnectorError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PayloadShape {
    /// A JSON record (protobuf Struct): {"key", "seq", "n", "data"}.
    Json,
    /// Raw bytes: "<key>:<seq>:" padded to `payloadBytes`.
    Bytes,
}

/// Configuration of the `generator` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "generator", description = "Synthetic records for testing pipelines.")]
pub struct GeneratorConfig {
    /// Stream the records are appended to (created if missing).
    pub stream: String,
    /// Records per second, 10 unless set (a gentle default, as other data generators have);
    /// 0 means as fast as the stream takes them.
    #[serde(default = "default_rate")]
    #[schemars(range(max = 100000000))]
    pub rate: u64,
    /// Stop after this many records (the task then completes); unset runs forever.
    #[serde(default)]
    pub count: Option<u64>,
    /// Number of distinct partition keys, used round-robin.
    #[serde(default = "default_keys")]
    #[schemars(range(min = 1))]
    pub keys: u32,
    /// Records per emitted batch.
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1, max = 10000))]
    pub batch_size: u32,
    /// Payload form.
    #[serde(default = "default_shape")]
    pub shape: PayloadShape,
    /// Payload size in bytes for the `bytes` shape (padding for `json`).
    #[serde(default = "default_bytes")]
    #[schemars(range(max = 1048576))]
    pub payload_bytes: u32,
}

/// Highest accepted `rate` (records per second).
pub const MAX_RATE: u64 = 100_000_000;

/// The default `rate`: records per second.
pub const DEFAULT_RATE: u64 = 10;

fn default_rate() -> u64 {
    DEFAULT_RATE
}
fn default_keys() -> u32 {
    1
}
fn default_batch() -> u32 {
    100
}
fn default_shape() -> PayloadShape {
    PayloadShape::Json
}
fn default_bytes() -> u32 {
    64
}

impl ConnectorConfig for GeneratorConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        if self.stream.is_empty() {
            return Err(ConnectorError::config("stream: must not be empty"));
        }
        if self.keys == 0 {
            return Err(ConnectorError::config("keys: must be at least 1"));
        }
        if self.rate > MAX_RATE {
            return Err(ConnectorError::config(format!("rate: must be at most {MAX_RATE}")));
        }
        if self.batch_size == 0 {
            return Err(ConnectorError::config("batchSize: must be at least 1"));
        }
        Ok(())
    }
}
