//! What the sinks share: the change records they understand, and a batch reduced to the final
//! state of each key.
//!
//! Understood record shapes (JSON records; RAW records holding JSON text too):
//! - HStream IO's CDC form `{"key": {…}, "value": {…} | null}`;
//! - Debezium envelopes `{"op", "before", "after"}` (`t` truncates the table);
//! - any other object: upserted as a whole row.

use std::collections::HashMap;

use hstream_runtime::{ConnectorError, PayloadFlag, SinkRecord, structs};
use serde_json::{Map, Value};

/// The last change of one key within a batch.
pub enum Final {
    Upsert(Map<String, Value>),
    /// Delete by these key columns.
    Delete(Map<String, Value>),
}

/// A run of a batch's changes, reduced per key; a truncate starts a new one.
#[derive(Default)]
pub struct Segment {
    pub truncate_first: bool,
    pub changes: HashMap<String, Final>,
}

/// Reduces `records` to the final state per key, in segments cut by truncates. `key_of` gives a
/// row's identity text and its key columns as the table reads them; `row_for_table` keeps (and
/// converts) the columns the table has. A record that cannot be applied fails the batch, naming
/// it.
pub fn reduce(
    records: &[SinkRecord],
    table: &str,
    key_of: impl Fn(&Map<String, Value>) -> Result<(String, Map<String, Value>), String>,
    row_for_table: impl Fn(Map<String, Value>) -> Map<String, Value>,
) -> Result<Vec<Segment>, ConnectorError> {
    let mut segments = Vec::new();
    let mut seg = Segment::default();
    for r in records {
        let bad = |why: String| {
            ConnectorError::config(format!(
                "record {}-{}-{} cannot be applied to {table}: {why}",
                r.shard_id, r.lsn, r.index
            ))
        };
        match parse(r).and_then(classify).map_err(bad)? {
            Change::Upsert(row) => {
                let (id, _) = key_of(&row).map_err(bad)?;
                let row = row_for_table(row);
                match seg.changes.get_mut(&id) {
                    // A partial row (an unchanged value left out) merges over the earlier one.
                    Some(Final::Upsert(prev)) => prev.extend(row),
                    _ => {
                        seg.changes.insert(id, Final::Upsert(row));
                    }
                }
            }
            Change::Delete(k) => {
                let (id, key) = key_of(&k).map_err(bad)?;
                seg.changes.insert(id, Final::Delete(key));
            }
            Change::Truncate => segments.push(std::mem::replace(
                &mut seg,
                Segment {
                    truncate_first: true,
                    ..Segment::default()
                },
            )),
        }
    }
    segments.push(seg);
    Ok(segments)
}

/// What one record asks for.
#[derive(Debug, PartialEq)]
enum Change {
    Upsert(Map<String, Value>),
    /// Delete by key (the key columns of the object).
    Delete(Map<String, Value>),
    Truncate,
}

fn parse(record: &SinkRecord) -> Result<Value, String> {
    match record.flag {
        PayloadFlag::Json => structs::decode_json(&record.payload).map_err(|e| format!("not a JSON record: {e}")),
        PayloadFlag::Raw => serde_json::from_slice(&record.payload).map_err(|e| format!("not JSON: {e}")),
    }
}

fn classify(v: Value) -> Result<Change, String> {
    let Value::Object(mut o) = v else {
        return Err("not a JSON object".into());
    };
    if o.contains_key("key") && o.contains_key("value") {
        let key = match o.remove("key") {
            Some(Value::Object(k)) => k,
            Some(Value::Null) | None => Map::new(),
            Some(_) => return Err("\"key\" is not an object".into()),
        };
        return match o.remove("value") {
            Some(Value::Object(mut row)) => {
                for (k, v) in key {
                    row.entry(k).or_insert(v);
                }
                Ok(Change::Upsert(row))
            }
            Some(Value::Null) | None => Ok(Change::Delete(key)),
            Some(_) => Err("\"value\" is neither an object nor null".into()),
        };
    }
    let op = match o.get("op") {
        Some(Value::String(op)) if o.contains_key("after") || o.contains_key("before") || op == "t" => Some(op.clone()),
        _ => None,
    };
    if let Some(op) = op {
        return match op.as_str() {
            "c" | "r" | "u" => match o.remove("after") {
                Some(Value::Object(row)) => Ok(Change::Upsert(row)),
                _ => Err(format!("op {op:?} without an \"after\" object")),
            },
            "d" => match o.remove("before") {
                Some(Value::Object(row)) => Ok(Change::Delete(row)),
                _ => Err("op \"d\" without a \"before\" object".into()),
            },
            "t" => Ok(Change::Truncate),
            other => Err(format!("unknown op {other:?}")),
        };
    }
    Ok(Change::Upsert(o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn record_shapes() {
        let up = classify(json!({"key": {"id": 1.0}, "value": {"id": 1.0, "n": "a"}})).unwrap();
        assert_eq!(
            up,
            Change::Upsert(json!({"id": 1.0, "n": "a"}).as_object().unwrap().clone())
        );
        let del = classify(json!({"key": {"id": 1.0}, "value": null})).unwrap();
        assert_eq!(del, Change::Delete(json!({"id": 1.0}).as_object().unwrap().clone()));
        let dbz = classify(json!({"op": "d", "before": {"id": 2.0}, "after": null})).unwrap();
        assert_eq!(dbz, Change::Delete(json!({"id": 2.0}).as_object().unwrap().clone()));
        assert_eq!(classify(json!({"op": "t", "source": {}})).unwrap(), Change::Truncate);
        let plain = classify(json!({"id": 3.0})).unwrap();
        assert_eq!(plain, Change::Upsert(json!({"id": 3.0}).as_object().unwrap().clone()));
        assert!(classify(json!([1])).is_err());
        assert!(classify(json!({"op": "c", "after": 5})).is_err());
    }
}
