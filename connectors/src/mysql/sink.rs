//! The `mysql` sink: applies a stream of change records to a MySQL/MariaDB table — upsert on the
//! primary key (`INSERT … ON DUPLICATE KEY UPDATE`), delete when the value is null — one
//! transaction per batch, idempotent on redelivery. Record shapes: see [`crate::changes`].
//!
//! Values are converted for their column: base64 back to bytes for binary columns, `…Z`
//! timestamps read in UTC (the session runs in UTC), JSON documents as JSON text.

use std::collections::BTreeMap;

use async_trait::async_trait;
use base64::Engine;
use hstream_runtime::{ConnectorError, Sink, SinkRecord, Written};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, Value as MyValue};
use serde_json::{Map, Value};

pub use super::config::MySqlSinkConfig;
use super::{ident, literal, query_error, query_rows, split_table};
use crate::changes::{self, Final};

/// Placeholders per statement at most (the protocol allows 65,535).
const MAX_PARAMS: usize = 30_000;

/// The target table as the sink needs it.
#[derive(Debug)]
struct Target {
    /// `` `db`.`table` ``.
    qualified: String,
    /// Column name → data type (`varbinary`, `int`, …).
    columns: BTreeMap<String, String>,
    key: Vec<String>,
}

async fn connect(cfg: &MySqlSinkConfig) -> Result<Conn, ConnectorError> {
    // Strict, so a value that does not fit fails rather than being cut; an id of 0 is kept as 0.
    cfg.endpoint
        .connect(&["SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION'"])
        .await
}

async fn target(conn: &mut Conn, cfg: &MySqlSinkConfig, name: &str) -> Result<Target, ConnectorError> {
    let field = cfg.targets.routing().option();
    let (db, table) = split_table(name, &cfg.endpoint.database);
    let rows = query_rows(
        conn,
        &format!(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_KEY FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} ORDER BY ORDINAL_POSITION",
            literal(&db),
            literal(&table)
        ),
        "reading the table's columns",
    )
    .await?;
    let qualified = format!("{}.{}", ident(&db), ident(&table));
    if rows.is_empty() {
        return Err(ConnectorError::config(format!("{field}: {qualified} does not exist")));
    }
    let mut columns = BTreeMap::new();
    for r in &rows {
        let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        columns.insert(get(0), get(1).to_lowercase());
    }
    let key: Vec<String> = query_rows(
        conn,
        &format!(
            "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} \
             AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
            literal(&db),
            literal(&table)
        ),
        "reading the table's primary key",
    )
    .await?
    .into_iter()
    .filter_map(|r| r.into_iter().next().flatten())
    .collect();
    if key.is_empty() {
        return Err(ConnectorError::config(format!(
            "{field}: {qualified} has no primary key"
        )));
    }
    for c in crate::mysql::source::schema::json_columns(conn, &db, &table).await {
        columns.insert(c, "json".to_owned());
    }
    Ok(Target {
        qualified,
        columns,
        key,
    })
}

/// A JSON value as a parameter for a column of data type `ty`.
fn param(ty: &str, v: &Value) -> MyValue {
    match v {
        Value::Null => MyValue::NULL,
        // A string holding a JSON document is the document (what CDC sources send for a JSON
        // column), taken byte for byte so every number keeps its value; any other value is
        // written as JSON text (a plain string as a JSON string).
        Value::String(s) if ty == "json" && serde_json::from_str::<&serde_json::value::RawValue>(s).is_ok() => {
            MyValue::Bytes(s.as_bytes().to_vec())
        }
        v if ty == "json" => MyValue::Bytes(normalized(v).to_string().into_bytes()),
        Value::Bool(b) => MyValue::Int(i64::from(*b)),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => MyValue::Int(i),
            (_, Some(u), _) => MyValue::UInt(u),
            // Struct numbers are doubles: integral ones are written as integers.
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() <= 9.007_199_254_740_992e15 => MyValue::Int(f as i64),
            (_, _, Some(f)) => MyValue::Double(f),
            _ => MyValue::NULL,
        },
        Value::String(s) => match ty {
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                match base64::engine::general_purpose::STANDARD.decode(s) {
                    Ok(bytes) => MyValue::Bytes(bytes),
                    Err(_) => MyValue::Bytes(s.as_bytes().to_vec()),
                }
            }
            "timestamp" | "datetime" => MyValue::Bytes(s.trim_end_matches('Z').replace('T', " ").into_bytes()),
            "bit" => match s.parse::<u64>() {
                Ok(n) => MyValue::UInt(n),
                Err(_) => MyValue::Bytes(s.as_bytes().to_vec()),
            },
            _ => MyValue::Bytes(s.as_bytes().to_vec()),
        },
        Value::Array(_) | Value::Object(_) => MyValue::Bytes(normalized(v).to_string().into_bytes()),
    }
}

/// JSON numbers that are integral written without a fraction (Struct numbers are doubles).
fn normalized(v: &Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() <= 9.007_199_254_740_992e15 => Value::from(f as i64),
            _ => v.clone(),
        },
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), normalized(x))).collect()),
        other => other.clone(),
    }
}

pub struct MySqlSink {
    conn: Conn,
    /// Set when a write failed for a reason a retry may fix: the next write connects again
    /// first (the connection may be gone).
    reconnect: bool,
    cfg: MySqlSinkConfig,
    routing: changes::Routing,
    /// Target tables by the name records are routed to, read on first use.
    targets: std::collections::HashMap<String, Target>,
}

impl Target {
    fn key_of(&self, row: &Map<String, Value>) -> Result<(String, Map<String, Value>), String> {
        let mut key = Map::new();
        for k in &self.key {
            match row.get(k) {
                Some(v) if !v.is_null() => {
                    key.insert(k.clone(), normalized(v));
                }
                _ => return Err(format!("key column {k:?} is missing")),
            }
        }
        let text = Value::Array(key.values().cloned().collect()).to_string();
        Ok((text, key))
    }

    fn row_for_table(&self, row: Map<String, Value>) -> Map<String, Value> {
        row.into_iter().filter(|(k, _)| self.columns.contains_key(k)).collect()
    }

    fn ty(&self, col: &str) -> &str {
        self.columns.get(col).map_or("", String::as_str)
    }
}

impl MySqlSink {
    async fn delete(conn: &mut Conn, t: &Target, keys: Vec<Map<String, Value>>) -> Result<(), ConnectorError> {
        let cols = t.key.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
        let tuple = format!("({})", vec!["?"; t.key.len()].join(", "));
        for chunk in keys.chunks((MAX_PARAMS / t.key.len()).max(1)) {
            let mut params = Vec::with_capacity(chunk.len() * t.key.len());
            for k in chunk {
                for c in &t.key {
                    params.push(param(t.ty(c), k.get(c).unwrap_or(&Value::Null)));
                }
            }
            let sql = format!(
                "DELETE FROM {} WHERE ({cols}) IN ({})",
                t.qualified,
                vec![tuple.as_str(); chunk.len()].join(", ")
            );
            conn.exec_drop(sql, Params::Positional(params))
                .await
                .map_err(|e| query_error("delete", e))?;
        }
        Ok(())
    }

    async fn upsert(conn: &mut Conn, t: &Target, rows: Vec<Map<String, Value>>) -> Result<(), ConnectorError> {
        let mut by_cols: BTreeMap<Vec<String>, Vec<Map<String, Value>>> = BTreeMap::new();
        for row in rows.into_iter().filter(|r| !r.is_empty()) {
            by_cols.entry(row.keys().cloned().collect()).or_default().push(row);
        }
        for (cols, rows) in by_cols {
            let list = cols.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
            let updates: Vec<String> = cols
                .iter()
                .filter(|c| !t.key.contains(c))
                .map(|c| format!("{0} = VALUES({0})", ident(c)))
                .collect();
            // All columns are key columns: re-setting one to itself makes the insert a no-op.
            let on_dup = if updates.is_empty() {
                format!("{0} = {0}", ident(&cols[0]))
            } else {
                updates.join(", ")
            };
            let tuple = format!("({})", vec!["?"; cols.len()].join(", "));
            for chunk in rows.chunks((MAX_PARAMS / cols.len()).max(1)) {
                let mut params = Vec::with_capacity(chunk.len() * cols.len());
                for row in chunk {
                    for c in &cols {
                        params.push(param(t.ty(c), &row[c]));
                    }
                }
                let sql = format!(
                    "INSERT INTO {} ({list}) VALUES {} ON DUPLICATE KEY UPDATE {on_dup}",
                    t.qualified,
                    vec![tuple.as_str(); chunk.len()].join(", ")
                );
                conn.exec_drop(sql, Params::Positional(params))
                    .await
                    .map_err(|e| query_error("upsert", e))?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for MySqlSink {
    type Config = MySqlSinkConfig;

    async fn check(cfg: &MySqlSinkConfig) -> Result<(), ConnectorError> {
        let mut conn = connect(cfg).await?;
        // Routed targets are known only from the records; a fixed one is checked now.
        if let Some(t) = &cfg.targets.table {
            target(&mut conn, cfg, t).await?;
        }
        let _ = conn.disconnect().await;
        Ok(())
    }

    async fn open(cfg: MySqlSinkConfig) -> Result<Self, ConnectorError> {
        let mut conn = connect(&cfg).await?;
        let mut targets = std::collections::HashMap::new();
        if let Some(t) = &cfg.targets.table {
            targets.insert(t.clone(), target(&mut conn, &cfg, t).await?);
        }
        Ok(MySqlSink {
            reconnect: false,
            conn,
            routing: cfg.targets.routing(),
            cfg,
            targets,
        })
    }

    fn stream(cfg: &MySqlSinkConfig) -> &str {
        &cfg.stream
    }

    async fn write(&mut self, records: &[SinkRecord]) -> Result<Written, ConnectorError> {
        if self.reconnect {
            self.conn = connect(&self.cfg).await?;
            self.reconnect = false;
        }
        let written = self.write_batch(records).await;
        if written.as_ref().is_err_and(ConnectorError::retryable) {
            self.reconnect = true;
        }
        written
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

impl MySqlSink {
    /// One batch in one transaction (see [`Sink::write`]).
    async fn write_batch(&mut self, records: &[SinkRecord]) -> Result<Written, ConnectorError> {
        let parts = changes::route(records, &mut self.routing)?;
        for p in &parts {
            if !self.targets.contains_key(&p.target) {
                let t = target(&mut self.conn, &self.cfg, &p.target).await?;
                self.targets.insert(p.target.clone(), t);
            }
        }
        // Every part reduced before anything is written: a bad record fails the whole batch.
        let mut work = Vec::with_capacity(parts.len());
        for part in parts {
            let t = &self.targets[&part.target];
            let segments = changes::reduce(
                records,
                part,
                &t.qualified,
                |row| t.key_of(row),
                |row| t.row_for_table(row),
            )?;
            work.push((t, segments));
        }
        let conn = &mut self.conn;
        conn.query_drop("START TRANSACTION")
            .await
            .map_err(|e| query_error("begin", e))?;
        let result = async {
            for (t, segments) in work {
                for seg in segments {
                    if seg.truncate_first {
                        // Not TRUNCATE: that would commit the transaction.
                        conn.query_drop(format!("DELETE FROM {}", t.qualified))
                            .await
                            .map_err(|e| query_error("truncate", e))?;
                    }
                    let (mut keys, mut rows) = (Vec::new(), Vec::new());
                    for change in seg.changes.into_values() {
                        match change {
                            Final::Delete(key) => keys.push(key),
                            Final::Upsert(row) => rows.push(row),
                        }
                    }
                    // Deletes first: a key is either deleted or upserted in its final state.
                    Self::delete(conn, t, keys).await?;
                    Self::upsert(conn, t, rows).await?;
                }
            }
            conn.query_drop("COMMIT").await.map_err(|e| query_error("commit", e))
        }
        .await;
        if result.is_err() {
            let _ = conn.query_drop("ROLLBACK").await;
        }
        result.map(|()| Written::Durable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_for_columns() {
        assert_eq!(param("int", &json!(5.0)), MyValue::Int(5));
        assert_eq!(param("double", &json!(5.5)), MyValue::Double(5.5));
        assert_eq!(param("varbinary", &json!("AP8Q")), MyValue::Bytes(vec![0, 255, 16]));
        assert_eq!(
            param("timestamp", &json!("2024-01-02T03:04:05.5Z")),
            MyValue::Bytes(b"2024-01-02 03:04:05.5".to_vec())
        );
        assert_eq!(param("bit", &json!(true)), MyValue::Int(1));
        assert_eq!(
            param("json", &json!({"a": 1.0})),
            MyValue::Bytes(br#"{"a":1}"#.to_vec())
        );
        assert_eq!(param("varchar", &Value::Null), MyValue::NULL);
        assert_eq!(param("json", &json!("abc")), MyValue::Bytes(br#""abc""#.to_vec()));
        // A document's text is the document, exact.
        let doc = r#"{"n": 12345678901234567890123, "f": 0.1000000000000000055511151231257827}"#;
        assert_eq!(param("json", &json!(doc)), MyValue::Bytes(doc.as_bytes().to_vec()));
    }
}
