//! Incremental snapshots of the MySQL/MariaDB source: a table that joins the capture after the
//! initial snapshot is copied while the binlog streams, in primary-key chunks, each checkpointed
//! with the stream's position, so a restart goes on from the last chunk (decision 029).
//!
//! Each chunk is read at a known binlog position P: every transaction before P is in what the
//! chunk read, none after it. The chunk then goes out when the stream reaches P, after every
//! change before P and before every change after it, so each key's last record is its latest
//! state with no key tracking at all. MariaDB gives P without a lock: a `START TRANSACTION WITH
//! CONSISTENT SNAPSHOT` reports its own binlog position (`binlog_snapshot_file/_position`).
//! MySQL has no such status: the chunk is read under `LOCK TABLES <t> READ` (writers of that
//! table wait for the chunk's read, a few milliseconds) with the binlog position read under the
//! same lock. (MySQL's path runs only against MySQL, which these machines do not have.)

use std::sync::Arc;

use futures::TryStreamExt;
use hstream_runtime::{ConnectorError, Record};
use mysql_async::prelude::Queryable;
use mysql_async::{Row, Value};

use super::records::{Origin, change};
use super::schema::Table;
use super::{MySqlSource, current_position};
use crate::cdc::{IncrementalOffset, Op, now_ms};
use crate::mysql::values::{Cell, Kind};
use crate::mysql::{ident, query_error, query_rows};
use crate::snapshots::{Applied, Signal, SnapshotQueue, TableName};

/// A binlog position, ordered by file number then position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BinlogPos {
    pub file: String,
    pub pos: u64,
}

impl BinlogPos {
    /// The file's sequence number (`mysql-bin.000012` → 12).
    fn seq(&self) -> u64 {
        self.file.rsplit('.').next().and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    /// Whether `self` is at or past `other`.
    pub(super) fn reached(&self, other: &BinlogPos) -> bool {
        (self.seq(), self.pos) >= (other.seq(), other.pos)
    }
}

struct Chunk {
    at: BinlogPos,
    table: Arc<Table>,
    rows: Vec<Vec<Value>>,
    last: bool,
    key_literals: Option<Vec<String>>,
}

/// The incremental snapshots of one run of the task.
pub(super) struct Incremental {
    pub(super) queue: SnapshotQueue,
    chunk: Option<Chunk>,
    chunk_size: usize,
}

impl Incremental {
    pub(super) fn new(queue: SnapshotQueue, chunk_size: usize) -> Self {
        Incremental {
            queue,
            chunk: None,
            chunk_size: chunk_size.max(1),
        }
    }

    pub(super) fn offset(&self) -> Option<IncrementalOffset> {
        self.queue.offset()
    }

    pub(super) fn wants_chunk(&self) -> bool {
        self.queue.ready() && self.chunk.is_none()
    }

    /// Acts on a signal; a chunk of a table no longer waiting does not go out.
    pub(super) fn apply(&mut self, signal: &Signal, captured: &[TableName]) -> Applied {
        let applied = self.queue.apply(signal, captured);
        if applied.front_removed {
            self.chunk = None;
        }
        applied
    }

    /// Whether the chunk in flight can go out once the stream stands at `at` (outside a
    /// transaction).
    pub(super) fn ready_at(&self, at: &BinlogPos) -> bool {
        self.chunk.as_ref().is_some_and(|c| at.reached(&c.at))
    }

    /// The chunk's rows as records, and the progress moved past them; with a report line.
    pub(super) fn take_chunk(&mut self, format: crate::cdc::RecordFormat) -> (Vec<Record>, String) {
        let Some(c) = self.chunk.take() else {
            return (Vec::new(), String::new());
        };
        let origin = Origin {
            file: &c.at.file,
            pos: c.at.pos,
            gtid: None,
            server_id: 0,
            ts_ms: now_ms(),
            snapshot: true,
        };
        let mut records = Vec::with_capacity(c.rows.len());
        for values in &c.rows {
            let cells: Vec<Cell<'_>> = values
                .iter()
                .zip(&c.table.kinds)
                .map(|(v, k)| super::snapshot::cell(k, v))
                .collect();
            records.push(change(format, &c.table, Op::Read, None, Some(&cells), &origin));
        }
        let table = format!("{}.{}", c.table.db, c.table.name);
        self.queue.advance(c.rows.len(), c.key_literals);
        let report = self.queue.report(&table, c.last);
        if c.last {
            tracing::info!(table = %table, rows = self.queue.rows, "incremental snapshot finished");
            self.queue.pop_front();
        }
        (records, report)
    }
}

impl MySqlSource {
    /// Reads the next chunk of the first pending table at a known binlog position.
    pub(super) async fn read_chunk(&mut self) -> Result<(), ConnectorError> {
        let result = self.read_chunk_inner().await;
        if result.is_err() {
            // Maybe inside a transaction or holding a lock: start afresh.
            if let Some(c) = self.chunk_conn.take() {
                let _ = c.disconnect().await;
            }
        }
        result
    }

    async fn read_chunk_inner(&mut self) -> Result<(), ConnectorError> {
        let Some(inc) = self.inc.as_ref() else { return Ok(()) };
        let Some((db, name)) = inc.queue.front().cloned() else {
            return Ok(());
        };
        let after = inc.queue.after.clone();
        let limit = inc.chunk_size;
        let first = after.is_none() && inc.queue.rows == 0;
        if self.chunk_conn.is_none() {
            self.chunk_conn = Some(
                self.ep
                    .connect(&["SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"])
                    .await?,
            );
        }
        let conn = self.chunk_conn.as_mut().expect("just set");
        let described = super::schema::describe(conn, &db, &name).await?;
        let Some(described) = described else {
            tracing::warn!(table = %format!("{db}.{name}"), "table gone before its incremental snapshot finished");
            self.inc.as_mut().expect("checked above").queue.pop_front();
            return Ok(());
        };
        if described.key.is_empty() {
            return Err(ConnectorError::config(format!(
                "tables: {db}.{name} has no primary key: an incremental snapshot copies by key"
            )));
        }
        let table = Arc::new(self.snapshot_table(&db, &name, &described)?);
        let conn = self.chunk_conn.as_mut().expect("just set");
        let cols = table.columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
        let keys = table
            .key
            .iter()
            .map(|&i| ident(&table.columns[i]))
            .collect::<Vec<_>>()
            .join(", ");
        // Keys compared as the server orders them: types whose `>` against a parameter follows
        // ORDER BY (DECIMAL cast to itself: a string would be compared as a double).
        let mut marks = Vec::with_capacity(table.key.len());
        for &i in &table.key {
            marks.push(match &table.kinds[i] {
                Kind::Decimal { precision, scale } => format!("CAST(? AS DECIMAL({precision}, {scale}))"),
                Kind::Int { .. }
                | Kind::Text(_)
                | Kind::Bytes { .. }
                | Kind::Date
                | Kind::DateTime { .. }
                | Kind::Timestamp { .. }
                | Kind::Time { .. }
                | Kind::Year => "?".to_owned(),
                other => {
                    return Err(ConnectorError::config(format!(
                        "tables: {db}.{name}: key column {} is of a kind ({other:?}) an incremental snapshot cannot page \
                         by (integers, decimals, strings, binary, dates and times can)",
                        table.columns[i]
                    )));
                }
            });
        }
        let params: Vec<Value> = match &after {
            Some(k) => k
                .iter()
                .map(|v| {
                    decode_key_value(v)
                        .ok_or_else(|| ConnectorError::internal(format!("stored incremental key {v:?} unreadable")))
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let filter = if params.is_empty() {
            String::new()
        } else {
            format!(" WHERE ({keys}) > ({})", marks.join(", "))
        };
        let select = format!(
            "SELECT {cols} FROM {}.{}{filter} ORDER BY {keys} LIMIT {limit}",
            ident(&db),
            ident(&name)
        );
        let err = |e| query_error(&format!("incremental snapshot of {db}.{name}"), e);
        let (at, rows) = if self.mariadb {
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                .await
                .map_err(err)?;
            let status = query_rows(conn, "SHOW STATUS LIKE 'binlog_snapshot_%'", "incremental snapshot").await?;
            let get = |n: &str| {
                status
                    .iter()
                    .find(|r| r.first().cloned().flatten().as_deref() == Some(n))
                    .and_then(|r| r.get(1).cloned().flatten())
                    .unwrap_or_default()
            };
            let at = BinlogPos {
                file: get("Binlog_snapshot_file"),
                pos: get("Binlog_snapshot_position").parse().unwrap_or(4),
            };
            let rows = read_rows(conn, &select, params.clone()).await.map_err(err)?;
            conn.query_drop("COMMIT").await.map_err(err)?;
            (at, rows)
        } else {
            // Waiting behind a long transaction would hold every writer queued behind the lock:
            // give up after a few seconds and try again later.
            conn.query_drop("SET SESSION lock_wait_timeout = 5")
                .await
                .map_err(err)?;
            conn.query_drop(format!("LOCK TABLES {}.{} READ", ident(&db), ident(&name)))
                .await
                .map_err(err)?;
            let read = async {
                let (file, pos, _) = current_position(conn, false).await?;
                let rows = read_rows(conn, &select, params.clone()).await.map_err(err)?;
                Ok::<_, ConnectorError>((BinlogPos { file, pos }, rows))
            }
            .await;
            conn.query_drop("UNLOCK TABLES").await.map_err(err)?;
            read?
        };
        let estimate = if first { Some(described.estimated_rows) } else { None };
        let key_literals = rows.last().map(|r: &Vec<Value>| {
            table
                .key
                .iter()
                .map(|&i| encode_key_value(r.get(i).unwrap_or(&Value::NULL)))
                .collect()
        });
        let inc = self.inc.as_mut().expect("checked above");
        if let Some(e) = estimate {
            inc.queue.estimate = e;
            tracing::info!(table = %format!("{db}.{name}"), estimate = e, "incremental snapshot started");
        }
        let last = rows.len() < limit;
        inc.chunk = Some(Chunk {
            at,
            table,
            rows,
            last,
            key_literals,
        });
        Ok(())
    }
}

async fn read_rows(
    conn: &mut mysql_async::Conn,
    select: &str,
    params: Vec<Value>,
) -> Result<Vec<Vec<Value>>, mysql_async::Error> {
    let params = if params.is_empty() {
        mysql_async::Params::Empty
    } else {
        mysql_async::Params::Positional(params)
    };
    let stream = conn.exec_stream::<Row, _, _>(select, params).await?;
    stream.map_ok(Row::unwrap).try_collect().await
}

/// A key value as the offset keeps it: typed, so that it is bound back as the same value (never
/// pasted into SQL).
fn encode_key_value(v: &Value) -> String {
    match v {
        Value::NULL => "n".to_owned(),
        Value::Int(i) => format!("i:{i}"),
        Value::UInt(u) => format!("u:{u}"),
        Value::Float(f) => format!("f:{}", f.to_bits()),
        Value::Double(d) => format!("g:{}", d.to_bits()),
        Value::Bytes(b) => {
            let mut s = String::with_capacity(2 + 2 * b.len());
            s.push_str("x:");
            for byte in b {
                s.push_str(&format!("{byte:02x}"));
            }
            s
        }
        Value::Date(y, mo, d, h, mi, sec, us) => format!("d:{y}:{mo}:{d}:{h}:{mi}:{sec}:{us}"),
        Value::Time(neg, days, h, m, sec, us) => format!("t:{}:{days}:{h}:{m}:{sec}:{us}", u8::from(*neg)),
    }
}

fn decode_key_value(s: &str) -> Option<Value> {
    let (tag, rest) = s.split_once(':').unwrap_or((s, ""));
    let nums = |n: usize| -> Option<Vec<u64>> {
        let v: Vec<u64> = rest.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
        (v.len() == n).then_some(v)
    };
    Some(match tag {
        "n" => Value::NULL,
        "i" => Value::Int(rest.parse().ok()?),
        "u" => Value::UInt(rest.parse().ok()?),
        "f" => Value::Float(f32::from_bits(rest.parse().ok()?)),
        "g" => Value::Double(f64::from_bits(rest.parse().ok()?)),
        "x" => {
            if rest.len() % 2 != 0 {
                return None;
            }
            let bytes = (0..rest.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(rest.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            Value::Bytes(bytes)
        }
        "d" => {
            let v = nums(7)?;
            Value::Date(
                u16::try_from(v[0]).ok()?,
                u8::try_from(v[1]).ok()?,
                u8::try_from(v[2]).ok()?,
                u8::try_from(v[3]).ok()?,
                u8::try_from(v[4]).ok()?,
                u8::try_from(v[5]).ok()?,
                u32::try_from(v[6]).ok()?,
            )
        }
        "t" => {
            let v = nums(6)?;
            Value::Time(
                v[0] == 1,
                u32::try_from(v[1]).ok()?,
                u8::try_from(v[2]).ok()?,
                u8::try_from(v[3]).ok()?,
                u8::try_from(v[4]).ok()?,
                u32::try_from(v[5]).ok()?,
            )
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_round_trip_typed() {
        for v in [
            Value::NULL,
            Value::Int(-5),
            Value::UInt(u64::MAX),
            Value::Bytes(b"it's a \\ key".to_vec()),
            Value::Bytes(vec![0, 255, 7]),
            Value::Date(2024, 2, 29, 23, 59, 58, 123_456),
            Value::Time(true, 3, 4, 5, 6, 7),
            Value::Double(0.1),
        ] {
            assert_eq!(decode_key_value(&encode_key_value(&v)), Some(v.clone()), "{v:?}");
        }
        assert_eq!(decode_key_value("x:0"), None);
        assert_eq!(decode_key_value("d:1:2"), None);
    }

    #[test]
    fn positions_order_by_file_number_then_offset() {
        let p = |f: &str, pos| BinlogPos { file: f.into(), pos };
        assert!(p("mysql-bin.000002", 4).reached(&p("mysql-bin.000001", 90000)));
        assert!(p("mysql-bin.000002", 400).reached(&p("mysql-bin.000002", 400)));
        assert!(!p("mysql-bin.000002", 399).reached(&p("mysql-bin.000002", 400)));
        assert!(!p("mysql-bin.000009", 4).reached(&p("mysql-bin.000010", 4)));
    }
}
