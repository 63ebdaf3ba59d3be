use async_trait::async_trait;

use super::BlackholeConfig;
use crate::connector::{Sink, SinkRecord, Written};
use crate::error::ConnectorError;

pub struct BlackholeSink;

#[async_trait]
impl Sink for BlackholeSink {
    type Config = BlackholeConfig;

    async fn check(_: &BlackholeConfig) -> Result<(), ConnectorError> {
        Ok(())
    }

    async fn open(_: BlackholeConfig) -> Result<Self, ConnectorError> {
        Ok(BlackholeSink)
    }

    fn stream(config: &BlackholeConfig) -> &str {
        &config.stream
    }

    /// Discarding is as durable as it gets: the runtime counts what passed.
    async fn write(&mut self, _: &[SinkRecord]) -> Result<Written, ConnectorError> {
        Ok(Written::Durable)
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}
