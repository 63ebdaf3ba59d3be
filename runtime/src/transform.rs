//! Record transforms between a connector and its stream (as Kafka Connect's SMTs), as the
//! pipeline and the registry see them: a task's running [`Transform`], and the
//! [`TransformOption`] that owns the `transforms` keys of every connector's config. The one
//! implementation is WASM plugins (`wasm::transforms`), installed by [`crate::builtin`].
//!
//! Guarantees a transform keeps: a source's records come out grouped by target stream, each
//! group in emit order; a sink's records keep the position (shard, LSN, index) of the record
//! they came from, so offsets and positions are unaffected by what a transform drops or adds.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::connector::{Record, SinkRecord};
use crate::error::ConnectorError;
use crate::spec::FieldError;

/// Emitted batches on their way to the streams: (target stream, `None` for the source's own;
/// records).
pub type Segments = Vec<(Option<Arc<str>>, Vec<Record>)>;

/// A task's transforms, running.
#[async_trait]
pub trait Transform: Send + Sync {
    /// A source's records (`segments` in emit order; `default` is the source's own stream):
    /// what comes out is grouped by target stream, each group in emit order.
    async fn apply_source(&self, segments: Segments, default: &str) -> Result<Segments, ConnectorError>;

    /// A sink's records: each output keeps the position of the record it came from.
    async fn apply_sink(&self, records: Vec<SinkRecord>) -> Result<Vec<SinkRecord>, ConnectorError>;
}

/// The `transforms` part of a connector's config.
#[async_trait]
pub trait TransformOption: Send + Sync {
    /// Whether a config key belongs to the transforms rather than the connector.
    fn is_key(&self, key: &str) -> bool;

    /// Checks the shape of the transforms a config names (no IO); errors name the field.
    fn validate(&self, config: &Value) -> Result<(), Vec<FieldError>>;

    /// Rewrites the flat SQL form of the transform keys into the stored form.
    fn normalize(&self, config: &mut Value);

    /// Adds the transform keys a config uses to its schema.
    fn schema_for(&self, config: &Value, schema: &mut Value);

    /// Loads what the transforms name and checks it fits, without starting them.
    async fn check(&self, config: &Value) -> Result<(), ConnectorError>;

    /// Starts the transforms a config names; `None` when it names none.
    async fn open(&self, config: &Value) -> Result<Option<Arc<dyn Transform>>, ConnectorError>;

    /// The connector's own config: without the transform keys.
    fn own(&self, config: &Value) -> Value {
        let mut own = config.clone();
        if let Value::Object(map) = &mut own {
            map.retain(|k, _| !self.is_key(k));
        }
        own
    }
}

/// No transforms: every key is the connector's (a `transforms` key is then unknown to it).
pub struct NoTransforms;

#[async_trait]
impl TransformOption for NoTransforms {
    fn is_key(&self, _: &str) -> bool {
        false
    }
    fn validate(&self, _: &Value) -> Result<(), Vec<FieldError>> {
        Ok(())
    }
    fn normalize(&self, _: &mut Value) {}
    fn schema_for(&self, _: &Value, _: &mut Value) {}
    async fn check(&self, _: &Value) -> Result<(), ConnectorError> {
        Ok(())
    }
    async fn open(&self, _: &Value) -> Result<Option<Arc<dyn Transform>>, ConnectorError> {
        Ok(None)
    }
}
