use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::connector::ConnectorConfig;
use crate::error::ConnectorError;

/// Configuration of the `blackhole` sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(
    title = "blackhole",
    description = "Reads a stream and discards the records (counts them)."
)]
pub struct BlackholeConfig {
    /// Stream to read.
    pub stream: String,
}

impl ConnectorConfig for BlackholeConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        if self.stream.is_empty() {
            return Err(ConnectorError::config("stream: must not be empty"));
        }
        Ok(())
    }
}
