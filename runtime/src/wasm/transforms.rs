//! Transforms: WASM plugins that map each record to zero or more, attached to any connector by
//! its `transforms` option (as Kafka Connect's SMTs). On a source they run between the source
//! and the append (and may route records to other streams); on a sink, between the read and the
//! write. Offsets are unaffected: a source's offset still follows the records it covers, and a
//! sink's position moves over records a transform dropped.
//!
//! SQL gives options flat, as Kafka Connect does:
//! `"transforms" = 'keep,rename', "transforms.keep.module" = '/p/filter.wasm',
//! "transforms.keep.config" = '{"filter": …}'`; the stored form is a list of objects
//! (`[{"name": "keep", "module": …, "config": {…}}]`), which JSON clients may give directly.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::instance::{Instance, WitRecord, from_wit, to_wit};
use super::{PluginKind, SandboxOptions};
use crate::connector::{Record, SinkRecord};
use crate::error::ConnectorError;
use crate::options::{ConnectorJson, NameList};
use crate::spec::FieldError;

/// The option naming a connector's transforms.
pub const KEY: &str = "transforms";

/// Whether a config key belongs to the transforms (the list or a flat per-transform option).
pub fn is_transform_key(key: &str) -> bool {
    key == KEY || key.strip_prefix(KEY).is_some_and(|rest| rest.starts_with('.'))
}

/// One transform of a connector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    /// Its name among the connector's transforms.
    pub name: String,
    /// The plugin: a path to a transform component, or an uploaded plugin's name.
    pub module: String,
    /// The plugin's config (an object or JSON text), checked against the plugin's schema.
    #[serde(default)]
    pub config: ConnectorJson,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mb: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_dirs: Option<NameList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_connect: Option<NameList>,
}

impl TransformSpec {
    fn sandbox_options(&self) -> SandboxOptions {
        SandboxOptions {
            memory_limit_mb: self.memory_limit_mb,
            call_timeout_ms: self.call_timeout_ms,
            grant_dirs: self.grant_dirs.clone(),
            grant_connect: self.grant_connect.clone(),
        }
    }
}

/// Folds SQL's flat `transforms.<name>.<option>` keys into the stored list form, and JSON text
/// in each transform's `config` into an object. No IO.
pub fn normalize(config: &mut Value) {
    let Value::Object(map) = config else { return };
    if let Some(Value::String(text)) = map.get(KEY) {
        let names = NameList::Text(text.clone()).names();
        let mut list = Vec::new();
        for name in names {
            let prefix = format!("{KEY}.{name}.");
            let mut t = Map::new();
            t.insert("name".into(), Value::String(name.clone()));
            let keys: Vec<String> = map.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
            for k in keys {
                if let Some(v) = map.remove(&k) {
                    let option = k[prefix.len()..].to_owned();
                    // SQL gives every value as text: numbers where the option is one.
                    let v = match (option.as_str(), &v) {
                        ("memory_limit_mb" | "call_timeout_ms", Value::String(s)) => {
                            s.parse::<u64>().map(Value::from).unwrap_or(v)
                        }
                        _ => v,
                    };
                    t.insert(option, v);
                }
            }
            list.push(Value::Object(t));
        }
        map.insert(KEY.into(), Value::Array(list));
    }
    if let Some(Value::Array(list)) = map.get_mut(KEY) {
        for t in list {
            crate::options::normalize_json_field(t, "config");
        }
    }
}

/// Splits a connector's config into its own part and its transforms (shape checked; no IO).
pub fn split(config: &Value) -> Result<(Value, Vec<TransformSpec>), Vec<FieldError>> {
    let mut own = config.clone();
    let Value::Object(map) = &mut own else {
        return Ok((own, Vec::new()));
    };
    let mut errors = Vec::new();
    let stray: Vec<String> = map
        .keys()
        .filter(|k| *k != KEY && is_transform_key(k))
        .cloned()
        .collect();
    for k in stray {
        map.remove(&k);
        errors.push(FieldError {
            path: k,
            message: "not an option of a listed transform (name it in \"transforms\")".into(),
        });
    }
    let mut specs = Vec::new();
    match map.remove(KEY) {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (i, t) in list.into_iter().enumerate() {
                match serde_json::from_value::<TransformSpec>(t) {
                    Ok(s) if s.name.is_empty() || s.module.is_empty() => errors.push(FieldError {
                        path: format!("{KEY}.{i}"),
                        message: "a transform needs a name and a module".into(),
                    }),
                    Ok(s) if specs.iter().any(|o: &TransformSpec| o.name == s.name) => errors.push(FieldError {
                        path: format!("{KEY}.{i}"),
                        message: format!("transform {:?} is listed twice", s.name),
                    }),
                    Ok(s) if s.memory_limit_mb.is_some_and(|m| !(1..=4096).contains(&m)) => errors.push(FieldError {
                        path: format!("{KEY}.{}.memory_limit_mb", s.name),
                        message: "must be 1 to 4096 (MiB)".into(),
                    }),
                    Ok(s) if s.call_timeout_ms.is_some_and(|t| !(1..=3_600_000).contains(&t)) => {
                        errors.push(FieldError {
                            path: format!("{KEY}.{}.call_timeout_ms", s.name),
                            message: "must be 1 to 3600000 (ms)".into(),
                        })
                    }
                    Ok(s) => specs.push(s),
                    // serde's words name the field and the expected type, not a secret's value
                    // (configs are objects or text, which it does not quote).
                    Err(e) => errors.push(FieldError {
                        path: format!("{KEY}.{i}"),
                        message: e.to_string(),
                    }),
                }
            }
        }
        Some(_) => errors.push(FieldError {
            path: KEY.into(),
            message: "must be a list of transforms or comma-separated names".into(),
        }),
    }
    if errors.is_empty() {
        Ok((own, specs))
    } else {
        Err(errors)
    }
}

/// Describes the transforms' configs in a connector's config schema, for redaction: each
/// transform's `config` is masked whole unless every listed plugin is loaded, then by what
/// their schemas mark secret (any of them).
pub fn schema_for(config: &Value, schema: &mut Value) {
    let Ok((_, specs)) = split(config) else { return };
    if specs.is_empty() {
        return;
    }
    let schemas: Option<Vec<Value>> = specs
        .iter()
        .map(|s| super::cached(&s.module).map(|l| l.config_schema.clone()))
        .collect();
    let config_schema = match schemas {
        Some(list) => serde_json::json!({ "anyOf": list }),
        None => serde_json::json!({ "airbyte_secret": true }),
    };
    if !schema["properties"].is_object() {
        schema["properties"] = Value::Object(Map::new());
    }
    schema["properties"][KEY] = serde_json::json!({
        "type": "array",
        "items": { "type": "object", "properties": { "config": config_schema } },
    });
}

/// Loads every transform, checks it is one, its config against its schema and its grants (IO).
pub async fn check(specs: &[TransformSpec]) -> Result<(), ConnectorError> {
    for s in specs {
        prepare(s).await?;
    }
    Ok(())
}

async fn prepare(s: &TransformSpec) -> Result<(Arc<super::Loaded>, String), ConnectorError> {
    let at = |e: ConnectorError| ConnectorError {
        message: format!("{KEY}.{}: {}", s.name, e.message),
        ..e
    };
    let loaded = super::load(&s.module).await.map_err(at)?;
    super::expect_kind(&loaded, PluginKind::Transform, "a transform").map_err(at)?;
    let config = s.config.object().map_err(at)?;
    super::check_plugin_config(&loaded, "config", &config).map_err(at)?;
    s.sandbox_options().sandbox().check_async().await.map_err(at)?;
    Ok((loaded, config.to_string()))
}

/// Most records handed to a transform in one call.
const MAX_CALL_RECORDS: usize = 4096;

struct Step {
    name: String,
    instance: Instance,
    /// Most payload bytes handed over in one call: an eighth of the plugin's memory, so a
    /// big batch never runs it out of memory by itself (JSON text is larger than the bytes).
    call_bytes: usize,
}

/// A connector's transforms, running, in order.
pub struct Chain {
    steps: Vec<Step>,
}

/// A record on its way through the chain: the input it came from and where it is routed.
type Item = (usize, Option<String>, WitRecord);

impl Chain {
    /// Starts every transform (each in its own instance).
    pub async fn open(specs: &[TransformSpec]) -> Result<Chain, ConnectorError> {
        let mut steps = Vec::with_capacity(specs.len());
        for s in specs {
            let (loaded, text) = prepare(s).await?;
            let instance = Instance::start(loaded, s.sandbox_options().sandbox()).await?;
            instance.call(move |g| g.transform_open(&text)).await?;
            steps.push(Step {
                name: s.name.clone(),
                instance,
                call_bytes: s.sandbox_options().sandbox().memory_limit_bytes / 8,
            });
        }
        Ok(Chain { steps })
    }

    async fn run(&self, records: Vec<WitRecord>) -> Result<Vec<Item>, ConnectorError> {
        let mut items: Vec<Item> = records.into_iter().enumerate().map(|(i, r)| (i, None, r)).collect();
        for step in &self.steps {
            if items.is_empty() {
                break;
            }
            let mut next = Vec::with_capacity(items.len());
            let mut rest = items.into_iter().peekable();
            while rest.peek().is_some() {
                // One call's worth: bounded in records and in bytes (at least one record).
                let (mut chunk, mut bytes) = (Vec::new(), 0usize);
                while let Some(item) = rest.next_if(|(_, _, r)| {
                    chunk.is_empty() || (chunk.len() < MAX_CALL_RECORDS && bytes + r.payload.len() <= step.call_bytes)
                }) {
                    bytes += item.2.payload.len();
                    chunk.push(item);
                }
                let (origins, inputs): (Vec<(usize, Option<String>)>, Vec<WitRecord>) =
                    chunk.into_iter().map(|(i, s, r)| ((i, s), r)).unzip();
                let outputs = step.instance.call(move |g| g.transform_apply(&inputs)).await?;
                let mut last = 0usize;
                for o in outputs {
                    let i = o.input as usize;
                    // Outputs come in input order, each naming an input it was given.
                    if i >= origins.len() || i < last {
                        return Err(ConnectorError::internal(format!(
                            "transform {} (plugin {}) gave an output for input {i} out of order or out of range",
                            step.name, step.instance.name
                        )));
                    }
                    last = i;
                    let (origin, routed) = &origins[i];
                    next.push((*origin, o.stream.or_else(|| routed.clone()), o.record));
                }
            }
            items = next;
        }
        Ok(items)
    }

    /// A source's records on their way to the streams. `segments` are the emitted batches in
    /// emit order (target stream, records; `None`: the source's own stream, `default`); what
    /// comes out is grouped by target stream, each group in emit order.
    pub async fn apply_source(
        &self,
        segments: Vec<(Option<Arc<str>>, Vec<Record>)>,
        default: &str,
    ) -> Result<Vec<(Option<Arc<str>>, Vec<Record>)>, ConnectorError> {
        let mut wit = Vec::new();
        let mut segment_of = Vec::new();
        for (k, (_, records)) in segments.iter().enumerate() {
            for r in records {
                wit.push(to_wit(&r.key, r.flag, &r.payload, &r.attributes)?);
                segment_of.push(k);
            }
        }
        let mut out: Vec<(Option<Arc<str>>, Vec<Record>)> = Vec::new();
        for (origin, routed, r) in self.run(wit).await? {
            let target = match routed {
                Some(s) if s == default => None,
                Some(s) => Some(Arc::<str>::from(s)),
                None => segments[segment_of[origin]].0.clone().filter(|s| s.as_ref() != default),
            };
            let record = from_wit(&self.last_name(), r)?;
            match out.iter_mut().find(|(s, _)| *s == target) {
                Some((_, rs)) => rs.push(record),
                None => out.push((target, vec![record])),
            }
        }
        Ok(out)
    }

    /// A sink's records on their way to the sink: what comes out keeps the position of the
    /// record it came from. Routing is refused (a sink writes to one place).
    pub async fn apply_sink(&self, records: Vec<SinkRecord>) -> Result<Vec<SinkRecord>, ConnectorError> {
        let wit = records
            .iter()
            .map(|r| to_wit(&r.key, r.flag, &r.payload, &r.attributes))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::new();
        for (i, routed, r) in self.run(wit).await? {
            if let Some(s) = routed {
                return Err(ConnectorError::config(format!(
                    "{KEY}: a transform routed a record to stream {s:?}; a sink's transforms cannot route"
                )));
            }
            let from = &records[i];
            let r = from_wit(&self.last_name(), r)?;
            out.push(SinkRecord {
                shard_id: from.shard_id,
                lsn: from.lsn,
                index: from.index,
                key: r.key,
                flag: r.flag,
                payload: r.payload,
                attributes: r.attributes,
            });
        }
        Ok(out)
    }

    fn last_name(&self) -> String {
        self.steps
            .last()
            .map(|s| s.instance.name.to_string())
            .unwrap_or_default()
    }
}

/// WASM plugins as the transforms of every connector (the `transforms` option above).
pub struct WasmTransforms;

#[async_trait::async_trait]
impl crate::transform::TransformOption for WasmTransforms {
    fn is_key(&self, key: &str) -> bool {
        is_transform_key(key)
    }

    fn validate(&self, config: &Value) -> Result<(), Vec<FieldError>> {
        split(config).map(drop)
    }

    fn normalize(&self, config: &mut Value) {
        normalize(config)
    }

    fn schema_for(&self, config: &Value, schema: &mut Value) {
        schema_for(config, schema)
    }

    async fn check(&self, config: &Value) -> Result<(), ConnectorError> {
        let (_, specs) = split(config).map_err(field_errors)?;
        check(&specs).await
    }

    async fn open(&self, config: &Value) -> Result<Option<Arc<dyn crate::transform::Transform>>, ConnectorError> {
        let (_, specs) = split(config).map_err(field_errors)?;
        if specs.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Chain::open(&specs).await?)))
    }
}

fn field_errors(errors: Vec<FieldError>) -> ConnectorError {
    ConnectorError::config(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
}

#[async_trait::async_trait]
impl crate::transform::Transform for Chain {
    async fn apply_source(
        &self,
        segments: crate::transform::Segments,
        default: &str,
    ) -> Result<crate::transform::Segments, ConnectorError> {
        Chain::apply_source(self, segments, default).await
    }

    async fn apply_sink(&self, records: Vec<SinkRecord>) -> Result<Vec<SinkRecord>, ConnectorError> {
        Chain::apply_sink(self, records).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sql_options_fold_into_the_list_form() {
        let mut c = json!({
            "stream": "s",
            "transforms": "keep, rename",
            "transforms.keep.module": "/p/f.wasm",
            "transforms.keep.config": "{\"filter\": {\"field\": \"n\"}}",
            "transforms.keep.memory_limit_mb": "16",
            "transforms.rename.module": "f",
        });
        normalize(&mut c);
        assert_eq!(
            c,
            json!({"stream": "s", "transforms": [
                {"name": "keep", "module": "/p/f.wasm", "config": {"filter": {"field": "n"}}, "memory_limit_mb": 16},
                {"name": "rename", "module": "f"},
            ]})
        );
        let (own, specs) = split(&c).unwrap();
        assert_eq!(own, json!({"stream": "s"}));
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].memory_limit_mb, Some(16));
        // Normalizing the stored form again changes nothing.
        let before = c.clone();
        normalize(&mut c);
        assert_eq!(c, before);
    }

    #[test]
    fn bad_transform_options_name_the_field() {
        let e = split(&json!({"stream": "s", "transforms.x.module": "/m.wasm"})).unwrap_err();
        assert_eq!(e[0].path, "transforms.x.module", "{e:?}");
        let e = split(&json!({"transforms": [{"name": "a"}]})).unwrap_err();
        assert!(e[0].path == "transforms.0" && e[0].message.contains("module"), "{e:?}");
        let e =
            split(&json!({"transforms": [{"name": "a", "module": "m"}, {"name": "a", "module": "m"}]})).unwrap_err();
        assert!(e[0].message.contains("twice"), "{e:?}");
        let e = split(&json!({"transforms": 5})).unwrap_err();
        assert_eq!(e[0].path, "transforms");
        let e = split(&json!({"transforms": [{"name": "a", "module": "m", "bogus": 1}]})).unwrap_err();
        assert!(e[0].message.contains("bogus"), "{e:?}");
        assert_eq!(split(&json!({"stream": "s"})).unwrap().1, vec![]);
    }
}
