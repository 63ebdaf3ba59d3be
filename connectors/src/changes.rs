//! What the sinks share: the change records they understand, which table each goes to, and a
//! batch reduced to the final state of each key.
//!
//! Understood record shapes (JSON records; RAW records holding JSON text too):
//! - HStream IO's CDC form `{"key": {…}, "value": {…} | null}` (`"op": "t"` truncates);
//! - Debezium envelopes `{"op", "before", "after"}` (`t` truncates the table);
//! - any other object: upserted as a whole row.
//!
//! A record's source table comes from its attributes (`source.db`, `source.schema`,
//! `source.table`, set by our CDC sources in both formats) or a Debezium envelope's `source`.

use std::collections::HashMap;

use hstream_runtime::{ConnectorError, PayloadFlag, SinkRecord, structs};
use serde_json::{Map, Value};

use crate::cdc::{ATTR_DB, ATTR_SCHEMA, ATTR_TABLE};

/// The table a change was captured from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTable {
    pub db: String,
    /// PostgreSQL's schema; empty for MySQL.
    pub schema: String,
    pub table: String,
}

impl std::fmt::Display for SourceTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in [&self.db, &self.schema] {
            if !part.is_empty() {
                write!(f, "{part}.")?;
            }
        }
        f.write_str(&self.table)
    }
}

/// Which table of the destination each record goes to.
#[derive(Debug)]
pub enum Routing {
    /// Every record to this table (the `table` option): the stream must hold changes of one
    /// source table only, else rows of several tables would be mixed in one.
    Fixed { table: String, seen: Option<SourceTable> },
    /// Each record to the table this pattern names from its source (`tableNameFormat`, with
    /// `${db}`, `${schema}` and `${table}`); two source tables may not meet in one target.
    Format {
        format: String,
        sources: HashMap<String, SourceTable>,
    },
}

/// The placeholders of `tableNameFormat`.
const PLACEHOLDERS: [&str; 3] = ["${db}", "${schema}", "${table}"];

/// Where a sink writes: the `table` and `tableNameFormat` options both database sinks have,
/// flattened into their configs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Targets {
    /// One target table for every record (the stream must hold one source table's changes); it
    /// must have a primary key. An unqualified name is in the sink's default schema (`schema`
    /// for PostgreSQL, `database` for MySQL).
    #[serde(default)]
    pub table: Option<String>,
    /// Without `table`: the target of each record, named from its source table (`${db}`,
    /// `${schema}` of PostgreSQL sources, `${table}`; default `${table}`, in the default
    /// schema). Each target must exist and have a primary key.
    #[serde(default)]
    pub table_name_format: Option<String>,
}

impl Targets {
    /// Checks both options, naming the one at fault.
    pub fn validate(&self) -> Result<(), ConnectorError> {
        check_options(&self.table, &self.table_name_format)
    }

    /// The routing the options ask for.
    pub fn routing(&self) -> Routing {
        Routing::from_options(&self.table, &self.table_name_format)
    }
}

/// Checks a sink's `table` and `tableNameFormat` options, naming the one at fault.
pub fn check_options(table: &Option<String>, table_name_format: &Option<String>) -> Result<(), ConnectorError> {
    if table.as_deref() == Some("") {
        return Err(ConnectorError::config("table: must not be empty"));
    }
    if table.is_some() && table_name_format.is_some() {
        return Err(ConnectorError::config(
            "tableNameFormat: give either table (one target) or tableNameFormat (a target per source table)",
        ));
    }
    if let Some(f) = table_name_format {
        check_format(f).map_err(|e| ConnectorError::config(format!("tableNameFormat: {e}")))?;
    }
    Ok(())
}

/// Checks a `tableNameFormat`: not empty, and no placeholder but the known ones.
fn check_format(format: &str) -> Result<(), String> {
    if format.trim().is_empty() {
        return Err("must not be empty".into());
    }
    let mut rest = format;
    while let Some(at) = rest.find("${") {
        let tail = &rest[at..];
        match PLACEHOLDERS.iter().find(|p| tail.starts_with(*p)) {
            Some(p) => rest = &tail[p.len()..],
            None => {
                let end = tail.find('}').map_or(tail.len(), |i| i + 1);
                return Err(format!(
                    "unknown placeholder {:?} (use ${{db}}, ${{schema}}, ${{table}})",
                    &tail[..end]
                ));
            }
        }
    }
    Ok(())
}

impl Routing {
    /// The routing a sink's `table` and `tableNameFormat` options ask for (checked by
    /// [`check_options`]).
    pub fn from_options(table: &Option<String>, table_name_format: &Option<String>) -> Routing {
        match table {
            Some(table) => Routing::Fixed {
                table: table.clone(),
                seen: None,
            },
            None => Routing::Format {
                format: table_name_format.clone().unwrap_or_else(|| "${table}".to_owned()),
                sources: HashMap::new(),
            },
        }
    }

    /// The option that names the target tables (for errors about them).
    pub fn option(&self) -> &'static str {
        match self {
            Routing::Fixed { .. } => "table",
            Routing::Format { .. } => "tableNameFormat",
        }
    }

    /// The table `source`'s changes go to.
    fn target(&mut self, source: Option<SourceTable>) -> Result<String, String> {
        match self {
            Routing::Fixed { table, seen } => {
                if let Some(src) = source {
                    match seen {
                        None => *seen = Some(src),
                        Some(first) if *first != src => {
                            return Err(format!(
                                "the stream holds changes of {first} and of {src}, and `table` would write both \
                                 into {table}: set tableNameFormat (e.g. \"${{table}}\") instead of table to write \
                                 each into its own table (after a rename of the source table, re-create the sink)"
                            ));
                        }
                        Some(_) => {}
                    }
                }
                Ok(table.clone())
            }
            Routing::Format { format, sources } => {
                let src = source.ok_or_else(|| {
                    "it names no source table (no source.table attribute, no Debezium source block): set table \
                     to name the target"
                        .to_owned()
                })?;
                let target = format
                    .replace("${db}", &src.db)
                    .replace("${schema}", &src.schema)
                    .replace("${table}", &src.table);
                match sources.get(&target) {
                    Some(other) if *other != src => Err(format!(
                        "tableNameFormat {format:?} names {target} for both {other} and {src}: include ${{schema}} \
                         or ${{db}} so that each source table has its own target"
                    )),
                    Some(_) => Ok(target),
                    None => {
                        sources.insert(target.clone(), src);
                        Ok(target)
                    }
                }
            }
        }
    }
}

/// The part of a batch bound for one table: indexes into the batch and what each asks for, in
/// batch order.
pub struct Routed {
    pub target: String,
    changes: Vec<(usize, Change)>,
}

/// Splits a batch by target table (in the order tables first appear), each record parsed once.
/// A record that cannot be applied fails the batch, naming it (a data error).
pub fn route(records: &[SinkRecord], routing: &mut Routing) -> Result<Vec<Routed>, ConnectorError> {
    let mut parts: Vec<Routed> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let bad = |why: String| {
            ConnectorError::data(format!(
                "record {}-{}-{} cannot be applied: {why}",
                r.shard_id, r.lsn, r.index
            ))
        };
        let value = parse(r).map_err(bad)?;
        let source = source_of(r, &value);
        let change = classify(value).map_err(bad)?;
        let target = routing.target(source).map_err(bad)?;
        match parts.iter_mut().find(|p| p.target == target) {
            Some(p) => p.changes.push((i, change)),
            None => parts.push(Routed {
                target,
                changes: vec![(i, change)],
            }),
        }
    }
    Ok(parts)
}

/// The source table a record names: its attributes, else a Debezium envelope's `source`.
fn source_of(r: &SinkRecord, value: &Value) -> Option<SourceTable> {
    if let Some(table) = r.attributes.get(ATTR_TABLE) {
        let get = |k: &str| r.attributes.get(k).cloned().unwrap_or_default();
        return Some(SourceTable {
            db: get(ATTR_DB),
            schema: get(ATTR_SCHEMA),
            table: table.clone(),
        });
    }
    let source = value.get("source")?;
    let text = |k: &str| source.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let table = source.get("table")?.as_str()?.to_owned();
    Some(SourceTable {
        db: text("db"),
        schema: text("schema"),
        table,
    })
}

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

/// Reduces one table's part of a batch (`records` is the whole batch) to the final state per
/// key, in segments cut by truncates. `key_of` gives a row's identity text and its key columns
/// as the table reads them; `row_for_table` keeps (and converts) the columns the table has. A
/// record that cannot be applied fails the batch, naming it.
pub fn reduce(
    records: &[SinkRecord],
    part: Routed,
    table: &str,
    key_of: impl Fn(&Map<String, Value>) -> Result<(String, Map<String, Value>), String>,
    row_for_table: impl Fn(Map<String, Value>) -> Map<String, Value>,
) -> Result<Vec<Segment>, ConnectorError> {
    let mut segments = Vec::new();
    let mut seg = Segment::default();
    for (i, change) in part.changes {
        let r = &records[i];
        let bad = |why: String| {
            ConnectorError::data(format!(
                "record {}-{}-{} cannot be applied to {table}: {why}",
                r.shard_id, r.lsn, r.index
            ))
        };
        match change {
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
pub enum Change {
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
    // A truncate only in the two shapes CDC sources write: Debezium's (a `source` block, no row
    // image) and ours in HStream IO's shape (a null key and value). A user's row that happens
    // to have an "op" column is a row.
    if o.get("op").and_then(Value::as_str) == Some("t") {
        let no_image = ["key", "value", "before", "after"]
            .iter()
            .all(|k| o.get(*k).is_none_or(Value::is_null));
        let debezium = o.get("source").is_some_and(Value::is_object) && no_image;
        let hstream = o.get("key") == Some(&Value::Null) && o.get("value") == Some(&Value::Null);
        if debezium || hstream {
            return Ok(Change::Truncate);
        }
    }
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
        Some(Value::String(op)) if o.contains_key("after") || o.contains_key("before") => Some(op.clone()),
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
            "t" => Err("op \"t\" with a row image".into()),
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
        assert_eq!(
            classify(json!({"key": null, "value": null, "op": "t"})).unwrap(),
            Change::Truncate
        );
    }

    fn record(attrs: &[(&str, &str)], payload: Value) -> SinkRecord {
        SinkRecord {
            shard_id: 1,
            lsn: 2,
            index: 0,
            key: String::new(),
            flag: PayloadFlag::Raw,
            payload: payload.to_string().into(),
            attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn a_again() -> SinkRecord {
        record(
            &[(ATTR_DB, "app"), (ATTR_SCHEMA, "public"), (ATTR_TABLE, "a")],
            json!({"key": {"id": 1.0}, "value": {"id": 1.0}}),
        )
    }

    #[test]
    fn records_route_by_their_source_table() {
        let a = record(
            &[(ATTR_DB, "app"), (ATTR_SCHEMA, "public"), (ATTR_TABLE, "a")],
            json!({"key": {"id": 1.0}, "value": {"id": 1.0}}),
        );
        let b = record(&[], json!({"op": "t", "source": {"db": "app", "table": "b"}}));
        let anon = record(&[], json!({"id": 3.0}));
        let mut by_name = Routing::from_options(&None, &Some("${schema}_${table}_copy".into()));
        let parts = route(&[a.clone(), b.clone(), a.clone()], &mut by_name).unwrap();
        let seen: Vec<(&str, usize)> = parts.iter().map(|p| (p.target.as_str(), p.changes.len())).collect();
        assert_eq!(seen, [("public_a_copy", 2), ("_b_copy", 1)]);
        assert!(matches!(parts[1].changes[0].1, Change::Truncate));
        let e = route(std::slice::from_ref(&anon), &mut by_name)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("names no source table"), "{e}");
        // A fixed table takes records without a source, and one source table, not two.
        let mut fixed = Routing::Fixed {
            table: "dst".into(),
            seen: None,
        };
        assert_eq!(route(&[anon, a.clone(), a], &mut fixed).unwrap().len(), 1);
        let e = route(&[b], &mut fixed).err().unwrap().to_string();
        assert!(
            e.contains("app.public.a and of app.b") && e.contains("tableNameFormat"),
            "{e}"
        );
        // Two source tables meeting in one target are refused.
        let other_schema = record(
            &[(ATTR_DB, "app"), (ATTR_SCHEMA, "sales"), (ATTR_TABLE, "a")],
            json!({"key": {"id": 1.0}, "value": {"id": 1.0}}),
        );
        let mut by_table = Routing::from_options(&None, &None);
        assert_eq!(route(&[a_again()], &mut by_table).unwrap()[0].target, "a");
        let e = route(&[other_schema], &mut by_table).err().unwrap().to_string();
        assert!(e.contains("app.public.a and app.sales.a"), "{e}");
        // A user's row with an "op" column is a row, not a truncate.
        assert!(matches!(
            classify(json!({"id": 1.0, "op": "t"})).unwrap(),
            Change::Upsert(_)
        ));
        assert!(matches!(
            classify(json!({"key": {"id": 1.0}, "value": {"id": 1.0, "op": "t"}, "op": "t", "source": {}})).unwrap(),
            Change::Upsert(_)
        ));
        assert_eq!(
            classify(json!({"op": "t", "before": null, "after": null, "source": {"table": "a"}})).unwrap(),
            Change::Truncate
        );
        assert!(check_format("${db}.${table}").is_ok());
        assert!(check_format("${tabel}").unwrap_err().contains("${tabel}"));
        assert!(check_format(" ").is_err());
    }
}
