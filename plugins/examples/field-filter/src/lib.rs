//! A JSON field filter/rename transform: keeps the records whose field matches, renames and
//! removes fields, and can route each record to a stream named after a field's value.

use std::collections::BTreeMap;

use hstream_plugin_sdk::serde_json::Value;
use hstream_plugin_sdk::{Error, Outputs, Record, Transform, export_transform};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Filter {
    field: String,
    #[serde(default)]
    equals: Option<Value>,
    #[serde(default)]
    not_equals: Option<Value>,
    #[serde(default)]
    greater_than: Option<f64>,
    #[serde(default)]
    less_than: Option<f64>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Route {
    /// The field whose value names the stream ("$key": the record's key).
    field: String,
    #[serde(default)]
    prefix: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    filter: Option<Filter>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    route: Option<Route>,
}

struct FieldFilter(Config);

impl Filter {
    fn keeps(&self, value: Option<&Value>) -> bool {
        let Some(v) = value else { return false };
        if self.equals.as_ref().is_some_and(|e| e != v) {
            return false;
        }
        if self.not_equals.as_ref().is_some_and(|e| e == v) {
            return false;
        }
        let num = v.as_f64();
        if self.greater_than.is_some_and(|g| num.is_none_or(|n| n <= g)) {
            return false;
        }
        if self.less_than.is_some_and(|l| num.is_none_or(|n| n >= l)) {
            return false;
        }
        true
    }
}

impl Transform for FieldFilter {
    const NAME: &'static str = "field-filter";
    const DESCRIPTION: &'static str = "Keeps JSON records whose field matches; renames, removes fields; routes by a field";
    const CONFIG_SCHEMA: &'static str = r#"{
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "filter": {
                "type": "object",
                "required": ["field"],
                "additionalProperties": false,
                "properties": {
                    "field": {"type": "string"},
                    "equals": {},
                    "not_equals": {},
                    "greater_than": {"type": "number"},
                    "less_than": {"type": "number"}
                }
            },
            "rename": {"type": "object", "additionalProperties": {"type": "string"}},
            "remove": {"type": "array", "items": {"type": "string"}},
            "route": {
                "type": "object",
                "required": ["field"],
                "additionalProperties": false,
                "properties": {"field": {"type": "string"}, "prefix": {"type": "string"}}
            }
        }
    }"#;
    type Config = Config;

    fn open(config: Config) -> Result<Self, Error> {
        Ok(FieldFilter(config))
    }

    fn map(&mut self, mut record: Record, out: &mut Outputs) -> Result<(), Error> {
        let Value::Object(mut fields) = record.value()? else {
            return Err(Error::Config(format!("record {:?} is not a JSON object", record.key)));
        };
        if let Some(f) = &self.0.filter {
            if !f.keeps(fields.get(&f.field)) {
                return Ok(());
            }
        }
        let stream = match &self.0.route {
            Some(r) if r.field == "$key" => Some(format!("{}{}", r.prefix, record.key)),
            Some(r) => match fields.get(&r.field) {
                Some(Value::String(s)) => Some(format!("{}{s}", r.prefix)),
                Some(v) => Some(format!("{}{v}", r.prefix)),
                None => None,
            },
            None => None,
        };
        for (from, to) in &self.0.rename {
            if let Some(v) = fields.remove(from) {
                fields.insert(to.clone(), v);
            }
        }
        for f in &self.0.remove {
            fields.remove(f);
        }
        record.set_value(&Value::Object(fields));
        out.route(record, stream);
        Ok(())
    }
}

export_transform!(FieldFilter);
