//! A configuration value that must never be shown: `Debug` and `Display` print a mask, and the
//! JSON Schema marks it `airbyte_secret`, which is how responses know to redact it.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

pub const MASK: &str = "**********";

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The value itself, for the one place that needs it (the connection).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

impl JsonSchema for Secret {
    fn schema_name() -> Cow<'static, str> {
        "Secret".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "airbyte_secret": true })
    }

    fn inline_schema() -> bool {
        true
    }
}

/// Replaces every value the connector's spec marks `airbyte_secret` in `config` by [`MASK`].
pub fn redact(spec: &serde_json::Value, config: &serde_json::Value) -> serde_json::Value {
    let mut out = config.clone();
    redact_in(spec, &mut out);
    out
}

fn redact_in(schema: &serde_json::Value, value: &mut serde_json::Value) {
    if schema.get("airbyte_secret").and_then(|v| v.as_bool()) == Some(true) {
        if !value.is_null() {
            *value = serde_json::Value::String(MASK.into());
        }
        return;
    }
    if let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(|p| p.as_object()),
        value.as_object_mut(),
    ) {
        for (k, v) in obj.iter_mut() {
            if let Some(s) = props.get(k) {
                redact_in(s, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masked_in_debug_display_and_redaction() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), format!("{MASK} {MASK}"));
        let spec = json!({"properties": {"password": {"type": "string", "airbyte_secret": true},
                                          "nested": {"properties": {"token": {"airbyte_secret": true}}}}});
        let cfg = json!({"password": "hunter2", "user": "u", "nested": {"token": "t0k"}});
        let r = redact(&spec, &cfg);
        assert_eq!(r, json!({"password": MASK, "user": "u", "nested": {"token": MASK}}));
        assert!(!r.to_string().contains("hunter2"));
    }
}
