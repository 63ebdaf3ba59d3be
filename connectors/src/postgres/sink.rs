//! The `postgresql` sink: applies a stream of change records to a table — upsert on the primary
//! key, delete when the value is null — one transaction per batch, idempotent on redelivery.
//!
//! Understood record shapes (JSON records; RAW records holding JSON text too):
//! - HStream IO's CDC form `{"key": {…}, "value": {…} | null}`;
//! - Debezium envelopes `{"op", "before", "after"}` (`t` truncates the table);
//! - any other object: upserted as a whole row.
//!
//! A batch is reduced to the final state of each key before it is written (so a key appears once
//! per statement), then written with `json_populate_recordset`, which lets PostgreSQL convert
//! every value to its column type. Columns a record leaves out (an unchanged TOASTed value) are
//! left as they are in the table.

use std::collections::BTreeMap;

use async_trait::async_trait;
use base64::Engine;
use hstream_runtime::{ConnectorError, Sink, SinkRecord, Written};
use serde_json::{Map, Value};
use tokio_postgres::config::SslMode;

pub use super::config::PgSinkConfig;
use super::split_table;
use super::wire::ident;
use crate::changes::{self, Final};

/// The target table as the sink needs it.
#[derive(Debug)]
struct Target {
    /// `"schema"."table"`.
    qualified: String,
    /// Column name → type name (`bytea`, `int4`, …).
    columns: BTreeMap<String, String>,
    key: Vec<String>,
}

fn pg_error(context: &str, e: tokio_postgres::Error) -> ConnectorError {
    let Some(db) = e.as_db_error() else {
        return ConnectorError::external(context.to_string()).with_source(e);
    };
    let code = db.code().code();
    let msg = format!("{context}: {} (SQLSTATE {code})", db.message());
    match code {
        "28P01" => ConnectorError::config("password: authentication failed"),
        "3D000" => ConnectorError::config(format!("database: {msg}")),
        c if super::retryable_sqlstate(c) => ConnectorError::external(msg),
        // A value a column cannot take (22), a constraint (23), a trigger's RAISE (P0001): the
        // records' content, not the setup, is refused.
        // An index entry too big for one row (54000) too.
        c if c.starts_with("22") || c.starts_with("23") || c == "P0001" || c == "54000" => ConnectorError::data(msg),
        _ => ConnectorError::config(msg),
    }
}

async fn connect(cfg: &PgSinkConfig) -> Result<tokio_postgres::Client, ConnectorError> {
    let ep = cfg.endpoint.clone();
    let mut pc = tokio_postgres::Config::new();
    pc.host(&ep.host)
        .port(ep.port)
        .user(&ep.user)
        .dbname(&ep.database)
        .application_name("hstream-sink")
        .connect_timeout(std::time::Duration::from_secs(10));
    if let Some(p) = &ep.password {
        pc.password(p.expose());
    }
    let tls = match ep.tls()? {
        Some(t) => {
            pc.ssl_mode(if t.required { SslMode::Require } else { SslMode::Prefer });
            crate::tls::PgRustls {
                config: t.config,
                server_name: t.server_name,
            }
        }
        None => {
            pc.ssl_mode(SslMode::Disable);
            // Never used with sslmode=disable; tokio-postgres wants one connector type.
            crate::tls::PgRustls {
                config: crate::tls::client_config(crate::tls::Check::Nothing, &crate::tls::Files::none())?,
                server_name: crate::tls::server_name("localhost", "host")?,
            }
        }
    };
    let prefer = pc.get_ssl_mode() == SslMode::Prefer;
    let connected = match pc.connect(tls.clone()).await {
        // prefer: a handshake that fails (not a refusal by the server) is followed by a plain
        // connection, as libpq does.
        Err(e) if prefer && e.as_db_error().is_none() && e.to_string().contains("TLS handshake") => {
            tracing::debug!(error = %e, "TLS failed; sslmode=prefer goes on in plain text");
            pc.ssl_mode(SslMode::Disable);
            pc.connect(tls).await
        }
        other => other,
    };
    let (client, conn) = connected.map_err(|e| match e.as_db_error() {
        Some(_) => pg_error("connect", e),
        None if crate::tls::is_certificate_error(&e) => ConnectorError::config(format!(
            "sslmode: {} refused: {e} (check sslrootcert, sslcert and sslkey)",
            ep.sslmode.as_str()
        )),
        None if e.to_string().contains("server does not support TLS") => ConnectorError::config(format!(
            "sslmode: {}: the server does not accept TLS connections",
            ep.sslmode.as_str()
        )),
        None => {
            ConnectorError::external(format!("host/port: could not connect to {}:{}", ep.host, ep.port)).with_source(e)
        }
    })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "sink connection ended");
        }
    });
    Ok(client)
}

async fn target(client: &tokio_postgres::Client, cfg: &PgSinkConfig, name: &str) -> Result<Target, ConnectorError> {
    let field = cfg.targets.routing().option();
    let (schema, table) = split_table(name, &cfg.schema);
    let qualified = format!("{}.{}", ident(&schema), ident(&table));
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, NULL), \
                    coalesce(a.attnum = ANY(i.indkey), false) \
             FROM pg_attribute a LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&qualified],
        )
        .await
        .map_err(|e| pg_error("reading the table's columns", e))?;
    if rows.is_empty() {
        return Err(ConnectorError::config(format!(
            "{field}: relation {qualified} does not exist in database {:?}",
            cfg.endpoint.database
        )));
    }
    let mut columns = BTreeMap::new();
    let mut key = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        if r.get::<_, bool>(2) {
            key.push(name.clone());
        }
        columns.insert(name, r.get::<_, String>(1));
    }
    if key.is_empty() {
        return Err(ConnectorError::config(format!(
            "{field}: {qualified} has no primary key"
        )));
    }
    Ok(Target {
        qualified,
        columns,
        key,
    })
}

pub struct PgSink {
    client: tokio_postgres::Client,
    cfg: PgSinkConfig,
    routing: changes::Routing,
    /// Target tables by the name records are routed to, read on first use.
    targets: std::collections::HashMap<String, Target>,
}

/// Whether `s` is a JSON document's text: what CDC sources (ours, Debezium's) send for a json
/// or jsonb column.
fn is_document(s: &str) -> bool {
    serde_json::from_str::<&serde_json::value::RawValue>(s).is_ok()
}

/// Rows as the JSON array `json_populate_recordset` reads. A string for a json/jsonb column that
/// holds a JSON document is put in as the document itself, byte for byte, so that every number
/// in it keeps its exact value (a parsed `Value` would round big ones to doubles).
fn rows_text(t: &Target, rows: &[Value]) -> String {
    let mut out = String::from("[");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let Value::Object(fields) = row else {
            out.push_str(&row.to_string());
            continue;
        };
        out.push('{');
        for (n, (k, v)) in fields.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str(&Value::from(k.as_str()).to_string());
            out.push(':');
            let ty = t.columns.get(k).map(String::as_str);
            match (ty, v) {
                (Some("json" | "jsonb"), Value::String(doc)) if is_document(doc) => out.push_str(doc),
                // json[]/jsonb[]: each element that is a document's text is that document.
                (Some("json[]" | "jsonb[]"), Value::Array(docs)) => {
                    out.push('[');
                    for (i, d) in docs.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        match d {
                            Value::String(doc) if is_document(doc) => out.push_str(doc),
                            d => out.push_str(&d.to_string()),
                        }
                    }
                    out.push(']');
                }
                (_, v) => out.push_str(&v.to_string()),
            }
        }
        out.push('}');
    }
    out.push(']');
    out
}

/// A value as `json_populate_recordset` reads it into a column of type `ty`.
fn for_column(ty: &str, v: Value) -> Value {
    match v {
        // Struct numbers are doubles: integral ones are written without a fraction.
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() <= 9.007_199_254_740_992e15 => Value::from(f as i64),
            _ => Value::Number(n),
        },
        // Sources write bytea as base64; PostgreSQL reads `\x` hex.
        Value::String(s) if ty == "bytea" => match base64::engine::general_purpose::STANDARD.decode(&s) {
            Ok(bytes) => {
                let mut hex = String::with_capacity(2 + bytes.len() * 2);
                hex.push_str("\\x");
                for b in bytes {
                    hex.push_str(&format!("{b:02x}"));
                }
                Value::String(hex)
            }
            Err(_) => Value::String(s),
        },
        Value::Array(a) => {
            let elem = ty.strip_suffix("[]").unwrap_or("");
            Value::Array(a.into_iter().map(|x| for_column(elem, x)).collect())
        }
        // Inside json/jsonb documents too.
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, x)| (k, for_column("", x))).collect()),
        other => other,
    }
}

impl Target {
    /// The key of a row: its key columns as the table reads them, and their text (the identity
    /// of the row within a batch). Errs when a key column is missing.
    fn key_of(&self, row: &Map<String, Value>) -> Result<(String, Map<String, Value>), String> {
        let mut key = Map::new();
        for k in &self.key {
            let ty = self.columns.get(k).map_or("", String::as_str);
            match row.get(k) {
                Some(v) if !v.is_null() => {
                    key.insert(k.clone(), for_column(ty, v.clone()));
                }
                _ => return Err(format!("key column {k:?} is missing")),
            }
        }
        let text = Value::Array(key.values().cloned().collect()).to_string();
        Ok((text, key))
    }

    fn row_for_table(&self, row: Map<String, Value>) -> Map<String, Value> {
        row.into_iter()
            .filter_map(|(k, v)| {
                let ty = self.columns.get(&k)?;
                let v = for_column(ty, v);
                Some((k, v))
            })
            .collect()
    }
}

impl PgSink {
    /// Writes the final state of each upserted key in `rows` within `tx`.
    async fn apply(
        t: &Target,
        tx: &tokio_postgres::Transaction<'_>,
        rows: Vec<Map<String, Value>>,
    ) -> Result<(), ConnectorError> {
        let mut upserts: BTreeMap<Vec<String>, Vec<Value>> = BTreeMap::new();
        for row in rows.into_iter().filter(|r| !r.is_empty()) {
            let cols: Vec<String> = row.keys().cloned().collect();
            upserts.entry(cols).or_default().push(Value::Object(row));
        }
        for (cols, rows) in upserts {
            let list = cols.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
            let key = t.key.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
            let updates: Vec<String> = cols
                .iter()
                .filter(|c| !t.key.contains(c))
                .map(|c| format!("{0} = EXCLUDED.{0}", ident(c)))
                .collect();
            let on_conflict = if updates.is_empty() {
                "DO NOTHING".to_owned()
            } else {
                format!("DO UPDATE SET {}", updates.join(", "))
            };
            let sql = format!(
                "INSERT INTO {q} ({list}) SELECT {list} FROM json_populate_recordset(NULL::{q}, $1::text::json) \
                 ON CONFLICT ({key}) {on_conflict}",
                q = t.qualified
            );
            let json = rows_text(t, &rows);
            tx.execute(&sql, &[&json]).await.map_err(|e| pg_error("upsert", e))?;
        }
        Ok(())
    }

    async fn delete(t: &Target, tx: &tokio_postgres::Transaction<'_>, keys: Vec<Value>) -> Result<(), ConnectorError> {
        if keys.is_empty() {
            return Ok(());
        }
        let cond = t
            .key
            .iter()
            .map(|c| format!("t.{0} = d.{0}", ident(c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let sql = format!(
            "DELETE FROM {q} AS t USING json_populate_recordset(NULL::{q}, $1::text::json) AS d WHERE {cond}",
            q = t.qualified
        );
        let json = Value::Array(keys).to_string();
        tx.execute(&sql, &[&json]).await.map_err(|e| pg_error("delete", e))?;
        Ok(())
    }
}

#[async_trait]
impl Sink for PgSink {
    type Config = PgSinkConfig;

    async fn check(cfg: &PgSinkConfig) -> Result<(), ConnectorError> {
        let client = connect(cfg).await?;
        // Routed targets are known only from the records; a fixed one is checked now.
        if let Some(t) = &cfg.targets.table {
            target(&client, cfg, t).await?;
        }
        Ok(())
    }

    async fn open(cfg: PgSinkConfig) -> Result<Self, ConnectorError> {
        let client = connect(&cfg).await?;
        let mut targets = std::collections::HashMap::new();
        if let Some(t) = &cfg.targets.table {
            targets.insert(t.clone(), target(&client, &cfg, t).await?);
        }
        Ok(PgSink {
            client,
            routing: cfg.targets.routing(),
            cfg,
            targets,
        })
    }

    fn stream(cfg: &PgSinkConfig) -> &str {
        &cfg.stream
    }

    async fn write(&mut self, records: &[SinkRecord]) -> Result<Written, ConnectorError> {
        // A connection lost in an earlier write: connect again (a retry in place).
        if self.client.is_closed() {
            self.client = connect(&self.cfg).await?;
        }
        let parts = changes::route(records, &mut self.routing)?;
        for p in &parts {
            if !self.targets.contains_key(&p.target) {
                let t = target(&self.client, &self.cfg, &p.target).await?;
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
        let tx = self.client.transaction().await.map_err(|e| pg_error("begin", e))?;
        for (target, segments) in work {
            for seg in segments {
                if seg.truncate_first {
                    tx.execute(&format!("TRUNCATE {}", target.qualified), &[])
                        .await
                        .map_err(|e| pg_error("truncate", e))?;
                }
                let (mut keys, mut rows) = (Vec::new(), Vec::new());
                for change in seg.changes.into_values() {
                    match change {
                        Final::Delete(key) => keys.push(Value::Object(key)),
                        Final::Upsert(row) => rows.push(row),
                    }
                }
                // Deletes first: a key is either deleted or upserted in its final state.
                Self::delete(target, &tx, keys).await?;
                Self::apply(target, &tx, rows).await?;
            }
        }
        tx.commit().await.map_err(|e| pg_error("commit", e))?;
        Ok(Written::Durable)
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_go_in_byte_for_byte() {
        let t = Target {
            qualified: "t".into(),
            columns: [("doc", "jsonb"), ("name", "text"), ("docs", "json[]")]
                .into_iter()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect(),
            key: vec![],
        };
        let doc = r#"{"n": 123456789012345678901234567890, "f": 0.1000000000000000055511151231257827}"#;
        let rows = [
            json!({"doc": doc, "name": "{\"not\": \"a doc\"}"}),
            json!({"doc": "plain", "docs": [doc, "x"]}),
        ];
        assert_eq!(
            rows_text(&t, &rows),
            format!(r#"[{{"doc":{doc},"name":"{{\"not\": \"a doc\"}}"}},{{"doc":"plain","docs":[{doc},"x"]}}]"#)
        );
    }

    #[test]
    fn values_for_columns() {
        assert_eq!(for_column("integer", json!(5.0)), json!(5));
        assert_eq!(for_column("double precision", json!(5.5)), json!(5.5));
        assert_eq!(for_column("bytea", json!("AP8Q")), json!("\\x00ff10"));
        assert_eq!(for_column("bytea[]", json!(["AP8="])), json!(["\\x00ff"]));
        assert_eq!(
            for_column("jsonb", json!({"g": 2.0, "l": [2.0, 2.5]})),
            json!({"g": 2, "l": [2, 2.5]})
        );
    }
}
