//! What the source knows about a captured table: its columns and key, from
//! `information_schema` and, while streaming, from each TABLE_MAP event (whose full metadata
//! describes the table as of that point of the binlog, so DDL mid-stream is followed).

use std::collections::HashMap;
use std::sync::Arc;

use hstream_runtime::ConnectorError;
use mysql_async::Conn;

use crate::mysql::binlog::TableMap;
use crate::mysql::values::{self, Kind, ty};
use crate::mysql::{literal, query_rows};

/// A captured table as records encode it.
#[derive(Debug)]
pub struct Table {
    pub db: String,
    pub name: String,
    pub columns: Vec<String>,
    pub kinds: Vec<Kind>,
    pub key: Vec<usize>,
    /// Set on each of its records: the table's identity (`cdc::source_attributes`).
    pub attributes: hstream_runtime::Attributes,
    /// What each column shows (empty: every column as it is), by `selection`.
    pub rules: Vec<crate::selection::ColumnRule>,
    pub selection: Arc<crate::selection::Selection>,
}

/// A table as `information_schema` describes it now.
#[derive(Debug, Clone)]
pub struct Described {
    pub columns: Vec<String>,
    /// Kinds for the binlog (text in the column's charset).
    pub kinds: Vec<Kind>,
    pub key: Vec<usize>,
    /// Columns holding JSON (MariaDB's JSON is LONGTEXT with a `json_valid` check).
    pub json: Vec<String>,
    pub estimated_rows: u64,
}

/// Reads a table's description; `None` when it does not exist.
pub async fn describe(conn: &mut Conn, db: &str, table: &str) -> Result<Option<Described>, ConnectorError> {
    let rows = query_rows(
        conn,
        &format!(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} ORDER BY ORDINAL_POSITION",
            literal(db),
            literal(table)
        ),
        "reading information_schema.COLUMNS",
    )
    .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let json = json_columns(conn, db, table).await;
    let mut columns = Vec::new();
    let mut kinds = Vec::new();
    for r in rows {
        let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        let name = get(0);
        let is_json = json.contains(&name);
        kinds.push(values::kind_from_sql(
            &get(1).to_lowercase(),
            &get(2).to_lowercase(),
            r.get(3).cloned().flatten().as_deref(),
            is_json,
        ));
        columns.push(name);
    }
    let key_rows = query_rows(
        conn,
        &format!(
            "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} \
             AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
            literal(db),
            literal(table)
        ),
        "reading information_schema.STATISTICS",
    )
    .await?;
    let key = key_rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .filter_map(|k| columns.iter().position(|c| *c == k))
        .collect();
    let estimated_rows = query_rows(
        conn,
        &format!(
            "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
            literal(db),
            literal(table)
        ),
        "reading information_schema.TABLES",
    )
    .await?
    .first()
    .and_then(|r| r.first().cloned().flatten())
    .and_then(|s| s.parse().ok())
    .unwrap_or(0);
    Ok(Some(Described {
        columns,
        kinds,
        key,
        json,
        estimated_rows,
    }))
}

/// Columns holding JSON by MariaDB's convention: LONGTEXT with a `json_valid` check, kept as a
/// constraint named after the column (MySQL has a real JSON type instead).
pub async fn json_columns(conn: &mut Conn, db: &str, table: &str) -> Vec<String> {
    query_rows(
        conn,
        &format!(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = {} AND TABLE_NAME = {}",
            literal(db),
            literal(table)
        ),
        "reading information_schema.CHECK_CONSTRAINTS",
    )
    .await
    .unwrap_or_default()
    .into_iter()
    .filter_map(|r| r.into_iter().next().flatten())
    .filter_map(|clause| {
        let rest = clause.trim().strip_prefix("json_valid(`")?;
        let (name, tail) = rest.split_once('`')?;
        (tail.trim() == ")").then(|| name.replace("``", "`"))
    })
    .collect()
}

/// Collation id → charset name, as the server knows them.
pub async fn collations(conn: &mut Conn) -> Result<HashMap<u16, String>, ConnectorError> {
    let rows = query_rows(
        conn,
        "SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS WHERE ID IS NOT NULL",
        "reading information_schema.COLLATIONS",
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let id = r.first().cloned().flatten()?.parse().ok()?;
            Some((id, r.get(1).cloned().flatten()?))
        })
        .collect())
}

/// The table as of a TABLE_MAP event. With full metadata the event names every column; without
/// it, `described` (the table now) must have the same number of columns.
pub fn from_table_map(
    tm: &TableMap,
    described: &Described,
    collations: &HashMap<u16, String>,
    selection: &Arc<crate::selection::Selection>,
) -> Result<Arc<Table>, ConnectorError> {
    let n = tm.types.len();
    if tm.names.len() != n {
        // binlog_row_metadata was turned down while we stream (start-up refuses it): decoding
        // against today's columns could mislabel them, so stop instead.
        return Err(ConnectorError::config(format!(
            "table: the binlog's TABLE_MAP of {}.{} carries no column names; CDC needs \
             binlog_row_metadata=FULL (SET GLOBAL binlog_row_metadata=FULL and in the server's configuration). \
             If it is FULL now, this part of the binlog was written before: re-create the connector so that it \
             takes a new snapshot and streams from after the change",
            tm.schema, tm.table
        )));
    }
    let (mut numeric, mut character, mut enums, mut sets) = (0usize, 0usize, 0usize, 0usize);
    let mut kinds = Vec::with_capacity(n);
    for i in 0..n {
        let real = tm.real_type(i);
        let meta = tm.metas[i];
        let unsigned = if ty::is_numeric(real) {
            numeric += 1;
            tm.unsigned.get(numeric - 1).copied().unwrap_or(false)
        } else {
            false
        };
        let charset = if ty::is_character(real) {
            character += 1;
            tm.charsets.get(character - 1).map(|id| {
                if *id == 63 {
                    "binary"
                } else {
                    collations.get(id).map_or("utf8mb4", String::as_str)
                }
            })
        } else {
            None
        };
        let kind = match real {
            ty::TINY | ty::SHORT | ty::INT24 | ty::LONG | ty::LONGLONG => Kind::Int { unsigned },
            ty::FLOAT => Kind::Float,
            ty::DOUBLE => Kind::Double,
            ty::NEWDECIMAL | ty::DECIMAL => Kind::Decimal {
                precision: meta[0],
                scale: meta[1],
            },
            ty::YEAR => Kind::Year,
            ty::DATE => Kind::Date,
            ty::TIME | ty::TIME2 => Kind::Time {
                fsp: if real == ty::TIME2 { meta[0] } else { 0 },
            },
            ty::DATETIME | ty::DATETIME2 => Kind::DateTime {
                fsp: if real == ty::DATETIME2 { meta[0] } else { 0 },
            },
            ty::TIMESTAMP | ty::TIMESTAMP2 => Kind::Timestamp {
                fsp: if real == ty::TIMESTAMP2 { meta[0] } else { 0 },
            },
            ty::ENUM => {
                enums += 1;
                Kind::Enum(tm.enum_values.get(enums - 1).cloned().unwrap_or_default().into())
            }
            ty::SET => {
                sets += 1;
                Kind::Set(tm.set_values.get(sets - 1).cloned().unwrap_or_default().into())
            }
            ty::BIT => Kind::Bit {
                bits: u16::from(meta[1]) * 8 + u16::from(meta[0]),
            },
            ty::JSON => Kind::Json,
            ty::GEOMETRY => Kind::Bytes { pad: 0 },
            _ if described.json.contains(&tm.names[i]) => Kind::Json,
            _ => match charset {
                Some("binary") => Kind::Bytes {
                    pad: if real == ty::STRING {
                        usize::from(values::string_meta(meta).1)
                    } else {
                        0
                    },
                },
                Some(cs) => Kind::Text(values::encoding_of(cs)),
                None => Kind::Text(None),
            },
        };
        kinds.push(kind);
    }
    let key = match &tm.primary_key {
        Some(k) => k.clone(),
        // Map the key by name: the table now may differ in column order.
        None => described
            .key
            .iter()
            .filter_map(|&i| described.columns.get(i))
            .filter_map(|name| tm.names.iter().position(|c| c == name))
            .collect(),
    };
    Ok(Arc::new(Table {
        rules: selection.column_rules(&format!("{}.{}", tm.schema, tm.table), &tm.names, &key)?,
        selection: selection.clone(),
        attributes: crate::cdc::source_attributes(&tm.schema, None, &tm.table),
        db: tm.schema.clone(),
        name: tm.table.clone(),
        columns: tm.names.clone(),
        kinds,
        key,
    }))
}
