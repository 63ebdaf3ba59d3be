//! The explicit registry of connector types: one line per connector in [`builtin`]. Each entry
//! erases a typed [`Source`] or [`Sink`] behind [`ConnectorType`].

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::connector::{Done, Sink, Source};
use crate::error::ConnectorError;
use crate::pipeline::{self, RunContext};
use crate::spec::{self, FieldError};
use crate::wasm::transforms;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Source,
    Sink,
}

impl Kind {
    /// HStream IO's spelling: "SOURCE" / "SINK" (accepted in any case).
    pub fn parse(s: &str) -> Option<Kind> {
        match s.to_ascii_uppercase().as_str() {
            "SOURCE" => Some(Kind::Source),
            "SINK" => Some(Kind::Sink),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Source => "SOURCE",
            Kind::Sink => "SINK",
        }
    }
}

/// What the runtime knows of one connector type, with its config type erased.
#[async_trait]
pub trait ConnectorType: Send + Sync {
    fn kind(&self) -> Kind;
    /// The Airbyte `ConnectorSpecification` document.
    fn spec(&self) -> &Value;
    /// Schema check, parse and the type's own checks; no IO.
    fn validate(&self, config: &Value) -> Result<(), Vec<FieldError>>;
    /// Puts a user's config into its stored form before validation (no IO).
    fn normalize(&self, _config: &mut Value) {}
    /// The config schema that describes this config, for redacting its secrets: the spec's
    /// `connectionSpecification`, adjusted by the type for configs that nest another's.
    fn config_schema(&self, _config: &Value) -> Value {
        self.spec()["connectionSpecification"].clone()
    }
    /// The stream the connector reads or writes (from a valid config).
    fn stream(&self, config: &Value) -> Result<String, ConnectorError>;
    /// Tests connectivity without starting a task.
    async fn check(&self, config: &Value) -> Result<(), ConnectorError>;
    /// Runs one attempt of a task until it ends, fails or is cancelled.
    async fn run(&self, ctx: RunContext) -> Result<Done, ConnectorError>;
    /// Releases upstream resources of a deleted task (after its last attempt stopped).
    async fn on_delete(&self, _config: &Value) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// A connector's own config: without its `transforms` (which the runtime applies).
fn own(config: &Value) -> Value {
    let mut own = config.clone();
    if let Value::Object(map) = &mut own {
        map.retain(|k, _| !transforms::is_transform_key(k));
    }
    own
}

/// Validates the connector's own config and the shape of its transforms.
fn validate_with_transforms<C: crate::ConnectorConfig>(spec: &Value, config: &Value) -> Result<(), Vec<FieldError>> {
    let (own, _) = transforms::split(config)?;
    spec::validate::<C>(&spec["connectionSpecification"], &own).map(|_| ())
}

/// Starts a task's transforms, unless the task is stopped first (`Ok(None)` then).
async fn open_chain(ctx: &RunContext) -> Result<Option<Option<Arc<transforms::Chain>>>, ConnectorError> {
    let (_, specs) = transforms::split(&ctx.config).map_err(field_errors)?;
    if specs.is_empty() {
        return Ok(Some(None));
    }
    tokio::select! {
        c = transforms::Chain::open(&specs) => Ok(Some(Some(Arc::new(c?)))),
        _ = ctx.cancel.cancelled() => Ok(None),
    }
}

async fn check_transforms(config: &Value) -> Result<(), ConnectorError> {
    let (_, specs) = transforms::split(config).map_err(field_errors)?;
    transforms::check(&specs).await
}

fn field_errors(errors: Vec<FieldError>) -> ConnectorError {
    ConnectorError::config(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
}

fn parse<C: crate::ConnectorConfig>(spec: &Value, config: &Value) -> Result<C, ConnectorError> {
    spec::validate::<C>(&spec["connectionSpecification"], &own(config))
        .map_err(|errors| ConnectorError::config(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))
}

struct SourceType<S: Source> {
    spec: Value,
    _s: PhantomData<fn() -> S>,
}

#[async_trait]
impl<S: Source> ConnectorType for SourceType<S> {
    fn kind(&self) -> Kind {
        Kind::Source
    }
    fn spec(&self) -> &Value {
        &self.spec
    }
    fn validate(&self, config: &Value) -> Result<(), Vec<FieldError>> {
        validate_with_transforms::<S::Config>(&self.spec, config)
    }
    fn stream(&self, config: &Value) -> Result<String, ConnectorError> {
        Ok(S::stream(&parse::<S::Config>(&self.spec, config)?).to_owned())
    }
    fn normalize(&self, config: &mut Value) {
        transforms::normalize(config);
        S::normalize(config)
    }
    fn config_schema(&self, config: &Value) -> Value {
        let mut schema = self.spec["connectionSpecification"].clone();
        if let Ok(c) = parse::<S::Config>(&self.spec, config) {
            S::schema_for(&c, &mut schema);
        }
        transforms::schema_for(config, &mut schema);
        schema
    }
    async fn check(&self, config: &Value) -> Result<(), ConnectorError> {
        S::check(&parse::<S::Config>(&self.spec, config)?).await?;
        check_transforms(config).await
    }
    async fn run(&self, ctx: RunContext) -> Result<Done, ConnectorError> {
        let config = parse::<S::Config>(&self.spec, &ctx.config)?;
        let Some(chain) = open_chain(&ctx).await? else {
            return Ok(Done::Cancelled);
        };
        pipeline::run_source::<S>(ctx, config, chain).await
    }
    async fn on_delete(&self, config: &Value) -> Result<(), ConnectorError> {
        S::on_delete(&parse::<S::Config>(&self.spec, config)?).await
    }
}

struct SinkType<K: Sink> {
    spec: Value,
    _k: PhantomData<fn() -> K>,
}

#[async_trait]
impl<K: Sink> ConnectorType for SinkType<K> {
    fn kind(&self) -> Kind {
        Kind::Sink
    }
    fn spec(&self) -> &Value {
        &self.spec
    }
    fn validate(&self, config: &Value) -> Result<(), Vec<FieldError>> {
        validate_with_transforms::<K::Config>(&self.spec, config)
    }
    fn stream(&self, config: &Value) -> Result<String, ConnectorError> {
        Ok(K::stream(&parse::<K::Config>(&self.spec, config)?).to_owned())
    }
    fn normalize(&self, config: &mut Value) {
        transforms::normalize(config);
        K::normalize(config)
    }
    fn config_schema(&self, config: &Value) -> Value {
        let mut schema = self.spec["connectionSpecification"].clone();
        if let Ok(c) = parse::<K::Config>(&self.spec, config) {
            K::schema_for(&c, &mut schema);
        }
        transforms::schema_for(config, &mut schema);
        schema
    }
    async fn check(&self, config: &Value) -> Result<(), ConnectorError> {
        K::check(&parse::<K::Config>(&self.spec, config)?).await?;
        check_transforms(config).await
    }
    async fn run(&self, ctx: RunContext) -> Result<Done, ConnectorError> {
        let config = parse::<K::Config>(&self.spec, &ctx.config)?;
        let Some(chain) = open_chain(&ctx).await? else {
            return Ok(Done::Cancelled);
        };
        pipeline::run_sink::<K>(ctx, config, chain).await
    }
}

/// Connector types by (kind, name).
#[derive(Default, Clone)]
pub struct Registry {
    types: BTreeMap<(Kind, String), Arc<dyn ConnectorType>>,
}

impl Registry {
    pub fn source<S: Source>(&mut self, name: &str) -> &mut Self {
        let t = SourceType::<S> {
            spec: spec::specification::<S::Config>(name),
            _s: PhantomData,
        };
        self.types.insert((Kind::Source, name.to_owned()), Arc::new(t));
        self
    }

    pub fn sink<K: Sink>(&mut self, name: &str) -> &mut Self {
        let t = SinkType::<K> {
            spec: spec::specification::<K::Config>(name),
            _k: PhantomData,
        };
        self.types.insert((Kind::Sink, name.to_owned()), Arc::new(t));
        self
    }

    pub fn get(&self, kind: Kind, name: &str) -> Option<Arc<dyn ConnectorType>> {
        self.types.get(&(kind, name.to_owned())).cloned()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Kind, &str, &Arc<dyn ConnectorType>)> {
        self.types.iter().map(|((k, n), t)| (*k, n.as_str(), t))
    }
}

/// Every connector type this build ships, one line each.
pub fn builtin() -> Registry {
    let mut r = Registry::default();
    r.source::<crate::builtin::generator::GeneratorSource>("generator");
    r.sink::<crate::builtin::blackhole::BlackholeSink>("blackhole");
    r.source::<crate::wasm::connectors::WasmSource>("wasm");
    r.sink::<crate::wasm::connectors::WasmSink>("wasm");
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // The specs in `specs/` are checked against every registered type, built-ins included, by
    // hstream-connectors' `specs_in_the_repo_match_the_config_types`.

    fn errors(kind: Kind, name: &str, config: serde_json::Value) -> Vec<String> {
        let t = builtin().get(kind, name).unwrap();
        t.validate(&config)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let e = errors(Kind::Source, "generator", json!({"rate": 5}));
        assert!(
            e.iter().any(|m| m.contains("\"stream\" is a required property")),
            "{e:?}"
        );
        let e = errors(Kind::Source, "generator", json!({"stream": "s", "rate": "fast"}));
        assert!(e.iter().any(|m| m.starts_with("rate: ")), "{e:?}");
        let e = errors(Kind::Source, "generator", json!({"stream": "s", "bogus": 1}));
        assert!(e.iter().any(|m| m.contains("bogus")), "{e:?}");
        let e = errors(Kind::Source, "generator", json!({"stream": "s", "keys": 0}));
        assert!(e.iter().any(|m| m.starts_with("keys: ")), "{e:?}");
        let e = errors(Kind::Sink, "blackhole", json!({}));
        assert!(e.iter().any(|m| m.contains("stream")), "{e:?}");
        assert!(
            builtin()
                .get(Kind::Source, "generator")
                .unwrap()
                .validate(&json!({"stream": "s"}))
                .is_ok()
        );
    }

    #[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct WithSecret {
        user: String,
        password: crate::Secret,
    }

    impl crate::ConnectorConfig for WithSecret {}

    #[test]
    fn secrets_stay_out_of_errors_and_debug() {
        let schema = crate::spec::schema_of::<WithSecret>();
        assert_eq!(schema["properties"]["password"]["airbyte_secret"], true);
        // A wrong type would quote the value: the message must not.
        let e = crate::spec::validate::<WithSecret>(&schema, &json!({"user": "u", "password": 123456789})).unwrap_err();
        let text = e.iter().map(ToString::to_string).collect::<Vec<_>>().join(";");
        assert!(text.starts_with("password: ") && !text.contains("123456789"), "{text}");
        let ok = crate::spec::validate::<WithSecret>(&schema, &json!({"user": "u", "password": "hunter2"})).unwrap();
        assert!(!format!("{:?}", ok.password).contains("hunter2"));
        let shown = crate::secret::redact(&schema, &json!({"user": "u", "password": "hunter2"}));
        assert!(!shown.to_string().contains("hunter2"));
    }
}
