//! A configuration value that must never be shown: `Debug` and `Display` print a mask, and the
//! JSON Schema marks it `airbyte_secret`, which is how responses know to redact it.
//!
//! Schema walking follows what schemars emits: `properties`, `$ref` into `$defs`, `items`, and
//! `oneOf`/`anyOf`/`allOf` alternatives (a value is secret if any alternative says so).

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const MASK: &str = "**********";
/// Bound on `$ref` hops, against recursive schemas.
const MAX_DEPTH: usize = 32;

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

/// `node` with `$ref`s into the root's `$defs` resolved.
fn resolve<'a>(root: &'a Value, mut node: &'a Value) -> &'a Value {
    for _ in 0..MAX_DEPTH {
        match node
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/"))
        {
            Some(path) => match root.pointer(&format!("/{path}")) {
                Some(next) => node = next,
                None => return node,
            },
            None => return node,
        }
    }
    node
}

/// The schema alternatives that describe a value at `node`: itself and its combinators.
fn alternatives<'a>(root: &'a Value, node: &'a Value) -> Vec<&'a Value> {
    // Keys beside a `$ref` (such as `airbyte_secret`) count as well as the target's.
    let mut out = if node.get("$ref").is_some() {
        vec![node]
    } else {
        Vec::new()
    };
    let node = resolve(root, node);
    out.push(node);
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(list) = node.get(key).and_then(Value::as_array) {
            out.extend(list.iter().map(|n| resolve(root, n)));
        }
    }
    out
}

fn marked(node: &Value) -> bool {
    node.get("airbyte_secret").and_then(Value::as_bool) == Some(true)
}

/// Schemas for the child `key` (object property) or for array items.
fn children<'a>(root: &'a Value, node: &'a Value, key: Option<&str>) -> Vec<&'a Value> {
    alternatives(root, node)
        .into_iter()
        .filter_map(|alt| match key {
            Some(k) => alt.get("properties").and_then(|p| p.get(k)),
            None => alt.get("items"),
        })
        .collect()
}

fn is_marked(root: &Value, node: &Value) -> bool {
    alternatives(root, node).into_iter().any(marked)
}

/// Replaces every value the schema marks `airbyte_secret` in `config` by [`MASK`].
pub fn redact(schema: &Value, config: &Value) -> Value {
    let mut out = config.clone();
    redact_in(schema, &[schema], &mut out, 0);
    out
}

fn redact_in(root: &Value, nodes: &[&Value], value: &mut Value, depth: usize) {
    if depth > MAX_DEPTH || nodes.is_empty() {
        return;
    }
    if nodes.iter().any(|n| is_marked(root, n)) {
        if !value.is_null() {
            *value = Value::String(MASK.into());
        }
        return;
    }
    match value {
        Value::Object(obj) => {
            for (k, v) in obj.iter_mut() {
                let child: Vec<&Value> = nodes.iter().flat_map(|n| children(root, n, Some(k))).collect();
                redact_in(root, &child, v, depth + 1);
            }
        }
        Value::Array(items) => {
            let child: Vec<&Value> = nodes.iter().flat_map(|n| children(root, n, None)).collect();
            for v in items {
                redact_in(root, &child, v, depth + 1);
            }
        }
        _ => {}
    }
}

/// Whether the value at a JSON pointer, or anything below it, is marked secret: error messages
/// about such a value must not quote it.
pub fn touches_secret(schema: &Value, pointer: &str) -> bool {
    let mut nodes = vec![schema];
    for part in pointer.split('/').filter(|p| !p.is_empty()) {
        if nodes.iter().any(|n| is_marked(schema, n)) {
            return true;
        }
        let key = if part.parse::<usize>().is_ok() {
            None
        } else {
            Some(part)
        };
        nodes = nodes.iter().flat_map(|n| children(schema, n, key)).collect();
        if nodes.is_empty() {
            return false;
        }
    }
    nodes.iter().any(|n| contains_secret(schema, n, 0))
}

fn contains_secret(root: &Value, node: &Value, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    alternatives(root, node).into_iter().any(|alt| {
        marked(alt)
            || alt
                .get("properties")
                .and_then(Value::as_object)
                .is_some_and(|p| p.values().any(|c| contains_secret(root, c, depth + 1)))
            || alt.get("items").is_some_and(|i| contains_secret(root, i, depth + 1))
    })
}

/// For a config update: wherever `patch` holds [`MASK`] at a secret position, keep the stored
/// value (clients send back what they were shown).
pub fn unmask(schema: &Value, stored: &Value, patch: &mut Value) {
    unmask_in(schema, &[schema], stored, patch, 0);
}

fn unmask_in(root: &Value, nodes: &[&Value], stored: &Value, patch: &mut Value, depth: usize) {
    if depth > MAX_DEPTH || nodes.is_empty() {
        return;
    }
    if nodes.iter().any(|n| is_marked(root, n)) {
        if patch.as_str() == Some(MASK) {
            *patch = stored.clone();
        }
        return;
    }
    if let (Value::Object(p), Some(s)) = (patch, stored.as_object()) {
        for (k, v) in p.iter_mut() {
            let child: Vec<&Value> = nodes.iter().flat_map(|n| children(root, n, Some(k))).collect();
            unmask_in(root, &child, s.get(k).unwrap_or(&Value::Null), v, depth + 1);
        }
    }
}

/// The values at secret positions of `config` (to scrub from any text).
pub fn secret_values(schema: &Value, config: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect(schema, &[schema], config, &mut out, 0);
    out.retain(|v| !v.is_empty() && v != MASK);
    out.sort_by_key(|v| std::cmp::Reverse(v.len()));
    out
}

fn collect(root: &Value, nodes: &[&Value], value: &Value, out: &mut Vec<String>, depth: usize) {
    if depth > MAX_DEPTH || nodes.is_empty() {
        return;
    }
    if nodes.iter().any(|n| is_marked(root, n)) {
        match value {
            Value::String(s) => out.push(s.clone()),
            Value::Null => {}
            other => out.push(other.to_string()),
        }
        return;
    }
    match value {
        Value::Object(obj) => {
            for (k, v) in obj {
                let child: Vec<&Value> = nodes.iter().flat_map(|n| children(root, n, Some(k))).collect();
                collect(root, &child, v, out, depth + 1);
            }
        }
        Value::Array(items) => {
            let child: Vec<&Value> = nodes.iter().flat_map(|n| children(root, n, None)).collect();
            for v in items {
                collect(root, &child, v, out, depth + 1);
            }
        }
        _ => {}
    }
}

/// `text` with every secret value replaced by [`MASK`] (for errors that quote their input).
pub fn scrub(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_owned(), |t, s| t.replace(s.as_str(), MASK))
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

    #[derive(Serialize, Deserialize, JsonSchema)]
    struct Tls {
        key: Secret,
        ca: String,
    }

    #[derive(Serialize, Deserialize, JsonSchema)]
    #[serde(tag = "mode")]
    enum Auth {
        None,
        Basic { user: String, password: Secret },
    }

    #[derive(Serialize, Deserialize, JsonSchema)]
    struct Deep {
        tls: Option<Tls>,
        auth: Auth,
        tokens: Vec<Secret>,
    }

    #[test]
    fn nested_refs_enums_and_arrays_are_redacted() {
        let schema = crate::spec::schema_of::<Deep>();
        let cfg = json!({"tls": {"key": "k3y", "ca": "ca.pem"}, "auth": {"mode": "Basic", "user": "u", "password": "pw"},
                         "tokens": ["t1", "t2"]});
        let r = redact(&schema, &cfg).to_string();
        for leaked in ["k3y", "\"pw\"", "t1", "t2"] {
            assert!(!r.contains(leaked), "{leaked} leaked in {r}");
        }
        assert!(r.contains("ca.pem") && r.contains("\"u\""), "non-secrets stay: {r}");
        assert!(
            touches_secret(&schema, "/tls") && touches_secret(&schema, "/tls/key") && touches_secret(&schema, "/auth")
        );
        assert!(!touches_secret(&schema, "/tls/ca"));
        let values = secret_values(&schema, &cfg);
        for v in ["k3y", "pw", "t1", "t2"] {
            assert!(values.iter().any(|x| x == v), "{v} not found in {values:?}");
        }
        assert_eq!(
            scrub("connect failed: user=u password=pw key=k3y", &values),
            format!("connect failed: user=u password={MASK} key={MASK}")
        );
        let mut patch = json!({"tls": {"key": MASK, "ca": "new.pem"}});
        unmask(&schema, &cfg, &mut patch);
        assert_eq!(patch, json!({"tls": {"key": "k3y", "ca": "new.pem"}}));
    }
}
