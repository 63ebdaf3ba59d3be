//! HStreamDB's JSON records are protobuf `google.protobuf.Struct` messages, not JSON text.
//! Conversions both ways (numbers become doubles, as in every HStreamDB client).

use bytes::Bytes;
use prost::Message;
use prost_types::{ListValue, Struct, Value as PbValue, value::Kind};
use serde_json::Value;

fn to_pb(v: &Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(to_pb).collect(),
        }),
        Value::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), to_pb(v))).collect(),
        }),
    };
    PbValue { kind: Some(kind) }
}

fn from_pb(v: &PbValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(from_pb).collect()),
        Some(Kind::StructValue(s)) => Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), from_pb(v))).collect()),
    }
}

/// Encodes a JSON object as Struct bytes (a non-object is wrapped as `{"value": …}`).
pub fn encode_json(v: &Value) -> Bytes {
    let s = match to_pb(v).kind {
        Some(Kind::StructValue(s)) => s,
        _ => Struct {
            fields: [("value".to_owned(), to_pb(v))].into_iter().collect(),
        },
    };
    Bytes::from(s.encode_to_vec())
}

/// Decodes Struct bytes into a JSON object.
pub fn decode_json(bytes: &[u8]) -> Result<Value, prost::DecodeError> {
    let s = Struct::decode(bytes)?;
    Ok(Value::Object(
        s.fields.iter().map(|(k, v)| (k.clone(), from_pb(v))).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = serde_json::json!({"a": 1.5, "b": [true, null, "x"], "c": {"d": 2.0}});
        assert_eq!(decode_json(&encode_json(&v)).unwrap(), v);
    }
}
