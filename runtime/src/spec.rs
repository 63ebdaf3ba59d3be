//! Connector specs in Airbyte `ConnectorSpecification` form, derived from the Rust config types,
//! and validation of user configs against them. Errors name the field path.

use schemars::JsonSchema;
use serde_json::{Value, json};

use crate::connector::ConnectorConfig;
use crate::error::ConnectorError;

pub use crate::error::FieldError;

/// The JSON Schema of a config type.
pub fn schema_of<C: JsonSchema>() -> Value {
    let settings = schemars::generate::SchemaSettings::draft2020_12();
    let schema = settings.into_generator().into_root_schema_for::<C>();
    serde_json::to_value(schema).expect("schema serializes")
}

/// The Airbyte `ConnectorSpecification` of a connector type.
pub fn specification<C: JsonSchema>(name: &str) -> Value {
    json!({
        "documentationUrl": format!("https://github.com/hstream-rs/hstream-rs/tree/main/specs#{name}"),
        "connectionSpecification": schema_of::<C>(),
    })
}

fn pointer_to_path(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

/// Checks `config` against a JSON Schema; errors name the field path and never quote a value
/// the schema marks secret.
pub fn check_schema(schema: &Value, config: &Value) -> Result<(), Vec<FieldError>> {
    let validator = jsonschema::validator_for(schema).map_err(|e| {
        vec![FieldError {
            path: String::new(),
            message: format!("connector schema is invalid: {e}"),
        }]
    })?;
    let errors: Vec<FieldError> = validator
        .iter_errors(config)
        .map(|e| {
            let pointer = e.instance_path().to_string();
            // Messages quote the offending value: never for a secret. Missing and unknown
            // properties are named, not quoted, so they are always shown.
            let names_only = matches!(
                e.kind(),
                jsonschema::error::ValidationErrorKind::Required { .. }
                    | jsonschema::error::ValidationErrorKind::AdditionalProperties { .. }
            );
            let message = if !names_only && crate::secret::touches_secret(schema, &pointer) {
                "invalid value (secret, not shown)".to_owned()
            } else {
                e.to_string()
            };
            FieldError {
                path: pointer_to_path(&pointer),
                message,
            }
        })
        .collect();
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// Checks `config` against the schema, then parses it and runs the type's own checks.
pub fn validate<C: ConnectorConfig>(schema: &Value, config: &Value) -> Result<C, Vec<FieldError>> {
    check_schema(schema, config)?;
    // The schema already refused wrong types, so serde's message (which may quote a value) is
    // not shown as is.
    let parsed: C = serde_json::from_value(config.clone()).map_err(|_| {
        vec![FieldError {
            path: String::new(),
            message: "config does not match its type".into(),
        }]
    })?;
    parsed.validate().map_err(|e: ConnectorError| {
        vec![FieldError {
            path: String::new(),
            message: e.message,
        }]
    })?;
    Ok(parsed)
}
