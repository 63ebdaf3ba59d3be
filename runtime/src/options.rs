//! Option shapes several connector types share: a nested JSON config given as an object or as
//! JSON text (SQL's `WITH` gives text), and a list given as an array or comma-separated text.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ConnectorError;

/// A nested config: an object, or JSON text of one (as SQL's `WITH` gives it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ConnectorJson {
    Object(Map<String, Value>),
    Text(String),
}

impl Default for ConnectorJson {
    fn default() -> Self {
        ConnectorJson::Object(Map::new())
    }
}

impl ConnectorJson {
    pub fn object(&self) -> Result<Value, ConnectorError> {
        match self {
            ConnectorJson::Object(m) => Ok(Value::Object(m.clone())),
            ConnectorJson::Text(t) => match serde_json::from_str::<Value>(t) {
                Ok(v @ Value::Object(_)) => Ok(v),
                // serde's message gives the position, never the text (which may hold secrets).
                Ok(_) => Err(ConnectorError::config("config: must be a JSON object")),
                Err(e) => Err(ConnectorError::config(format!("config: not JSON ({e})"))),
            },
        }
    }
}

/// Puts a nested config given as JSON text of an object (SQL) into its stored form, an object.
pub fn normalize_json_field(config: &mut Value, field: &str) {
    if let Some(Value::String(t)) = config.get(field)
        && let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(t)
    {
        config[field] = v;
    }
}

/// A list given as an array or as comma-separated text (`'users,products'` in SQL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum NameList {
    List(Vec<String>),
    Text(String),
}

impl NameList {
    pub fn names(&self) -> Vec<String> {
        let items: Vec<&str> = match self {
            NameList::List(l) => l.iter().map(String::as_str).collect(),
            NameList::Text(t) => t.split(',').collect(),
        };
        items
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Checks a nested config against the schema its owner declares (an Airbyte connector's SPEC, a
/// plugin's schema); errors name the field under `field.` (`config.count`), never quoting a
/// value the schema marks secret.
pub fn check_nested(schema: &Value, field: &str, config: &Value) -> Result<(), ConnectorError> {
    crate::spec::check_schema(schema, config).map_err(|errors| {
        ConnectorError::config(
            errors
                .iter()
                .map(|e| {
                    if e.path.is_empty() {
                        format!("{field}: {}", e.message)
                    } else {
                        format!("{field}.{}: {}", e.path, e.message)
                    }
                })
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

/// Describes the nested config `field` of `schema` by its owner's own schema `inner` (so only the
/// fields `inner` marks secret are redacted), keeping `inner`'s `#/definitions/…` and
/// `#/$defs/…` references resolvable from our root. An `inner` that is not an object is ignored.
pub fn embed_schema(schema: &mut Value, field: &str, inner: &Value) {
    if !inner.is_object() {
        return;
    }
    schema["properties"][field] = inner.clone();
    for key in ["definitions", "$defs"] {
        if let Some(Value::Object(defs)) = inner.get(key) {
            let slot = &mut schema[key];
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            if let Value::Object(ours) = slot {
                for (k, v) in defs {
                    ours.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
    }
}
