//! The explicit registry of connector types: one line per connector (the runtime's own in
//! [`crate::builtin`]). Each entry erases a typed [`Source`] or [`Sink`] behind
//! [`ConnectorType`]; the registry's [`TransformOption`] owns every config's transform keys.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::connector::{ConnectorConfig, Done, Sink, Source};
use crate::error::ConnectorError;
use crate::once;
use crate::pipeline::{self, RunContext};
use crate::spec::{self, FieldError};
use crate::tolerance::{self, DeadLetters, ErrorPolicy};
use crate::transform::{NoTransforms, Transform, TransformOption};

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
    async fn on_delete(&self, _task: &str, _config: &Value) -> Result<(), ConnectorError> {
        Ok(())
    }
    /// Sends a source a signal through its upstream ([`Source::signal`]); returns its id.
    async fn signal(&self, _config: &Value, _kind: &str, _data: &Value) -> Result<String, ConnectorError> {
        Err(ConnectorError::config("this connector takes no signals"))
    }
}

/// The connector's own part of a config: without the transform keys and the runtime's
/// `errors.*` and `exactly.once` options.
fn own(t: &dyn TransformOption, config: &Value) -> Value {
    let mut own = t.own(config);
    if let Value::Object(map) = &mut own {
        map.retain(|k, _| !tolerance::is_key(k) && k != once::KEY);
    }
    own
}

/// Validates the connector's own config, the shape of its transforms and its error options
/// (`stream` gives the connector's own stream from its parsed config).
fn validate_with_transforms<C: ConnectorConfig>(
    t: &dyn TransformOption,
    spec: &Value,
    config: &Value,
    stream: fn(&C) -> &str,
    replays: bool,
) -> Result<(), Vec<FieldError>> {
    t.validate(config)?;
    // `false` is what such a connector does anyway: accepted, so a config holding it stays
    // alterable.
    let exactly_once = match (replays, once::enabled(config)) {
        (false, Ok(true)) if config.get(once::KEY).is_some() => Err(FieldError {
            path: once::KEY.into(),
            message: "is an option of sources that replay from their offset (this connector's delivery is at-least-once, or its own)".into(),
        }),
        (_, e) => e.map(|_| ()),
    };
    // The runtime options' problems and the connector's own, at once.
    match (
        ErrorPolicy::parse(config),
        spec::validate::<C>(&spec["connectionSpecification"], &own(t, config)),
    ) {
        (Ok(policy), Ok(parsed)) if exactly_once.is_ok() => policy.check_stream(stream(&parsed)),
        (policy, parsed) => Err(policy
            .err()
            .unwrap_or_default()
            .into_iter()
            .chain(exactly_once.err())
            .chain(parsed.err().unwrap_or_default())
            .collect()),
    }
}

/// A task's error policy at work, with the secrets of its config to scrub from error texts.
fn dead_letters(ctx: &RunContext, schema: &Value) -> Result<DeadLetters, ConnectorError> {
    let policy = ErrorPolicy::parse(&ctx.config).map_err(|errors| {
        ConnectorError::config(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
    })?;
    Ok(DeadLetters::new(
        policy,
        &ctx.task,
        crate::secret::secret_values(schema, &ctx.config),
        ctx.progress.clone(),
        ctx.streams.max_record_size(),
    ))
}

/// Starts a task's transforms, unless the task is stopped first (`Ok(None)` then).
async fn open_chain(
    t: &dyn TransformOption,
    ctx: &RunContext,
) -> Result<Option<Option<Arc<dyn Transform>>>, ConnectorError> {
    tokio::select! {
        c = t.open(&ctx.config) => Ok(Some(c?)),
        _ = ctx.cancel.cancelled() => Ok(None),
    }
}

/// The connector's own part of `config`, parsed and checked.
fn parse<C: ConnectorConfig>(t: &dyn TransformOption, spec: &Value, config: &Value) -> Result<C, ConnectorError> {
    spec::validate::<C>(&spec["connectionSpecification"], &own(t, config))
        .map_err(|errors| ConnectorError::config(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))
}

struct SourceType<S: Source> {
    spec: Value,
    transforms: Arc<dyn TransformOption>,
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
        validate_with_transforms::<S::Config>(&*self.transforms, &self.spec, config, S::stream, S::REPLAYS)
    }
    fn stream(&self, config: &Value) -> Result<String, ConnectorError> {
        Ok(S::stream(&parse::<S::Config>(&*self.transforms, &self.spec, config)?).to_owned())
    }
    fn normalize(&self, config: &mut Value) {
        self.transforms.normalize(config);
        S::normalize(config)
    }
    fn config_schema(&self, config: &Value) -> Value {
        let mut schema = self.spec["connectionSpecification"].clone();
        if let Ok(c) = parse::<S::Config>(&*self.transforms, &self.spec, config) {
            S::schema_for(&c, &mut schema);
        }
        self.transforms.schema_for(config, &mut schema);
        schema
    }
    async fn check(&self, config: &Value) -> Result<(), ConnectorError> {
        S::check(&parse::<S::Config>(&*self.transforms, &self.spec, config)?).await?;
        self.transforms.check(config).await
    }
    async fn run(&self, ctx: RunContext) -> Result<Done, ConnectorError> {
        let config = parse::<S::Config>(&*self.transforms, &self.spec, &ctx.config)?;
        let letters = dead_letters(&ctx, &self.config_schema(&ctx.config))?;
        let Some(chain) = open_chain(&*self.transforms, &ctx).await? else {
            return Ok(Done::Cancelled);
        };
        let exactly_once =
            S::REPLAYS && once::enabled(&ctx.config).map_err(|e| ConnectorError::config(e.to_string()))?;
        pipeline::run_source::<S>(ctx, config, chain, letters, exactly_once).await
    }
    async fn signal(&self, config: &Value, kind: &str, data: &Value) -> Result<String, ConnectorError> {
        S::signal(&parse::<S::Config>(&*self.transforms, &self.spec, config)?, kind, data).await
    }
    async fn on_delete(&self, _task: &str, config: &Value) -> Result<(), ConnectorError> {
        S::on_delete(&parse::<S::Config>(&*self.transforms, &self.spec, config)?).await
    }
}

struct SinkType<K: Sink> {
    spec: Value,
    transforms: Arc<dyn TransformOption>,
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
        validate_with_transforms::<K::Config>(&*self.transforms, &self.spec, config, K::stream, false)
    }
    fn stream(&self, config: &Value) -> Result<String, ConnectorError> {
        Ok(K::stream(&parse::<K::Config>(&*self.transforms, &self.spec, config)?).to_owned())
    }
    fn normalize(&self, config: &mut Value) {
        self.transforms.normalize(config);
        K::normalize(config)
    }
    fn config_schema(&self, config: &Value) -> Value {
        let mut schema = self.spec["connectionSpecification"].clone();
        if let Ok(c) = parse::<K::Config>(&*self.transforms, &self.spec, config) {
            K::schema_for(&c, &mut schema);
        }
        self.transforms.schema_for(config, &mut schema);
        schema
    }
    async fn check(&self, config: &Value) -> Result<(), ConnectorError> {
        K::check(&parse::<K::Config>(&*self.transforms, &self.spec, config)?).await?;
        self.transforms.check(config).await
    }
    async fn run(&self, ctx: RunContext) -> Result<Done, ConnectorError> {
        let config = parse::<K::Config>(&*self.transforms, &self.spec, &ctx.config)?;
        let letters = dead_letters(&ctx, &self.config_schema(&ctx.config))?;
        let Some(chain) = open_chain(&*self.transforms, &ctx).await? else {
            return Ok(Done::Cancelled);
        };
        pipeline::run_sink::<K>(ctx, config, chain, letters).await
    }
    async fn on_delete(&self, task: &str, config: &Value) -> Result<(), ConnectorError> {
        K::on_delete(&parse::<K::Config>(&*self.transforms, &self.spec, config)?, task).await
    }
}

/// A connector type's spec: its config's, with the `errors.*` options every connector takes.
fn spec_of<C: ConnectorConfig>(name: &str) -> Value {
    let mut spec = spec::specification::<C>(name);
    ErrorPolicy::add_to_spec(&mut spec);
    spec
}

/// Connector types by (kind, name), and the transforms every one of them takes.
#[derive(Clone)]
pub struct Registry {
    types: BTreeMap<(Kind, String), Arc<dyn ConnectorType>>,
    transforms: Arc<dyn TransformOption>,
}

impl Default for Registry {
    /// No connector types, and no transforms.
    fn default() -> Self {
        Registry::with_transforms(Arc::new(NoTransforms))
    }
}

impl Registry {
    /// An empty registry whose connectors take `transforms`; register it before the types.
    pub fn with_transforms(transforms: Arc<dyn TransformOption>) -> Registry {
        Registry {
            types: BTreeMap::new(),
            transforms,
        }
    }

    pub fn source<S: Source>(&mut self, name: &str) -> &mut Self {
        let mut spec = spec_of::<S::Config>(name);
        if S::REPLAYS {
            once::add_to_spec(&mut spec);
        }
        let t = SourceType::<S> {
            spec,
            transforms: self.transforms.clone(),
            _s: PhantomData,
        };
        self.types.insert((Kind::Source, name.to_owned()), Arc::new(t));
        self
    }

    pub fn sink<K: Sink>(&mut self, name: &str) -> &mut Self {
        let t = SinkType::<K> {
            spec: spec_of::<K::Config>(name),
            transforms: self.transforms.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin;
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

    /// `exactly.once` is an option of sources that replay from their offset: refused elsewhere,
    /// and its value checked; the error options are checked beside the connector's own.
    #[test]
    fn runtime_options_are_checked_where_they_apply() {
        let e = errors(
            Kind::Source,
            "generator",
            json!({"stream": "s", "exactly.once": "maybe"}),
        );
        assert!(e.iter().any(|m| m == "exactly.once: must be true or false"), "{e:?}");
        let gen_spec = builtin().get(Kind::Source, "generator").unwrap().spec().clone();
        assert_eq!(
            gen_spec["connectionSpecification"]["properties"]["exactly.once"]["default"],
            true
        );
        let e = errors(Kind::Sink, "blackhole", json!({"stream": "s", "exactly.once": true}));
        assert!(
            e.iter()
                .any(|m| m.starts_with("exactly.once: is an option of sources that replay")),
            "{e:?}"
        );
        let e = errors(
            Kind::Source,
            "wasm",
            json!({"stream": "s", "module": "/nope.wasm", "exactly.once": true}),
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("exactly.once: is an option of sources that replay")),
            "{e:?}"
        );
        // `false` is what it does anyway.
        let wasm = builtin().get(Kind::Source, "wasm").unwrap();
        let r = wasm.validate(&json!({"stream": "s", "module": "/nope.wasm", "exactly.once": false}));
        assert!(r.is_ok(), "{r:?}");
        let wasm_spec = builtin().get(Kind::Source, "wasm").unwrap().spec().clone();
        assert!(
            wasm_spec["connectionSpecification"]["properties"]
                .get("exactly.once")
                .is_none()
        );
        let e = errors(
            Kind::Source,
            "generator",
            json!({"stream": "s", "rate": "x", "errors.tolerance": "some"}),
        );
        assert!(
            e.iter().any(|m| m.starts_with("rate: ")) && e.iter().any(|m| m.starts_with("errors.tolerance: ")),
            "{e:?}"
        );
    }

    /// A generator created with only its stream writes 10 records a second, and its spec says so.
    #[test]
    fn the_generator_is_gentle_by_default() {
        let cfg: crate::builtin::generator::GeneratorConfig = serde_json::from_value(json!({"stream": "s"})).unwrap();
        assert_eq!(cfg.rate, 10);
        let spec = builtin().get(Kind::Source, "generator").unwrap().spec().clone();
        assert_eq!(spec["connectionSpecification"]["properties"]["rate"]["default"], 10);
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
