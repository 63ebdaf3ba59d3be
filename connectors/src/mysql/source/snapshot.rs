//! The initial snapshot: every table read in one consistent read, whose binlog position is where
//! streaming starts.
//!
//! MariaDB reports the binlog position of a `START TRANSACTION WITH CONSISTENT SNAPSHOT` itself
//! (`binlog_snapshot_file`/`_position`), without locking. MySQL has no such status: the position
//! is read under `FLUSH TABLES WITH READ LOCK`, held only until the snapshot has started.

use futures::TryStreamExt;
use hstream_runtime::{ConnectorError, Done, SourceOutput};
use mysql_async::prelude::Queryable;
use mysql_async::{Row, Value};

use super::records::{Origin, change};
use super::{MAX_BATCH, MySqlOffset, MySqlSource, current_position, gtid_at};
use crate::cdc::{Op, now_ms};
use crate::mysql::values::{Cell, Kind};
use crate::mysql::{ident, query_error, query_rows};

/// One snapshot value as a cell of `kind` (binary protocol: numbers and temporal values arrive
/// binary, strings as bytes in the session's utf8mb4).
pub(super) fn cell<'a>(kind: &Kind, v: &'a Value) -> Cell<'a> {
    match v {
        Value::NULL => Cell::Null,
        Value::Bytes(b) => Cell::Bytes(b),
        Value::Int(i) => Cell::Int(*i),
        Value::UInt(u) => Cell::UInt(*u),
        Value::Float(f) => Cell::Float(*f),
        Value::Double(d) => Cell::Double(*d),
        Value::Date(y, mo, d, h, mi, s, us) => match kind {
            Kind::Date => Cell::Date { y: *y, m: *mo, d: *d },
            _ => Cell::DateTime {
                y: *y,
                mo: *mo,
                d: *d,
                h: *h,
                mi: *mi,
                s: *s,
                us: *us,
            },
        },
        Value::Time(neg, days, h, m, s, us) => Cell::Time {
            neg: *neg,
            h: days * 24 + u32::from(*h),
            m: *m,
            s: *s,
            us: *us,
        },
    }
}

impl MySqlSource {
    /// A table as a snapshot reads it.
    pub(super) fn snapshot_table(
        &self,
        db: &str,
        name: &str,
        described: &super::schema::Described,
    ) -> Result<super::schema::Table, ConnectorError> {
        // Snapshot strings arrive in the session's utf8mb4, whatever the column's charset.
        let kinds: Vec<Kind> = described
            .kinds
            .iter()
            .map(|k| match k {
                Kind::Text(_) => Kind::Text(None),
                k => k.clone(),
            })
            .collect();
        Ok(super::schema::Table {
            attributes: crate::cdc::source_attributes(db, None, name),
            db: db.to_owned(),
            name: name.to_owned(),
            rules: self
                .selection
                .column_rules(&format!("{db}.{name}"), &described.columns, &described.key)?,
            selection: self.selection.clone(),
            columns: described.columns.clone(),
            kinds,
            key: described.key.clone(),
        })
    }

    /// Copies every table; returns the offset streaming starts from, and `Some(done)` when the
    /// task stopped meanwhile.
    ///
    /// `replay_from`: a position the stream already holds rows from (an earlier snapshot cut
    /// short, or an `always` restart). Those rows may since have changed or gone, and no row of
    /// this snapshot says so, so streaming starts there rather than at this snapshot's
    /// position: the changes since replay after the copy (those of the gap twice,
    /// at-least-once) and the stream ends equal to the table. Until the copy is complete the
    /// checkpoint stays at it too, so a crash meanwhile does not lose it.
    pub(super) async fn snapshot(
        &mut self,
        out: &mut SourceOutput<MySqlOffset>,
        replay_from: Option<MySqlOffset>,
    ) -> Result<(MySqlOffset, Option<Done>), ConnectorError> {
        let mut conn = self
            .ep
            .connect(&["SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"])
            .await?;
        let snap = |e| query_error("snapshot", e);
        let (file, pos, gtid) = if self.mariadb {
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                .await
                .map_err(snap)?;
            let status = query_rows(&mut conn, "SHOW STATUS LIKE 'binlog_snapshot_%'", "snapshot").await?;
            let get = |name: &str| {
                status
                    .iter()
                    .find(|r| r.first().cloned().flatten().as_deref() == Some(name))
                    .and_then(|r| r.get(1).cloned().flatten())
                    .unwrap_or_default()
            };
            let file = get("Binlog_snapshot_file");
            let pos: u64 = get("Binlog_snapshot_position").parse().unwrap_or(4);
            let gtid = gtid_at(&mut conn, &file, pos).await?;
            (file, pos, gtid)
        } else {
            conn.query_drop("FLUSH TABLES WITH READ LOCK")
                .await
                .map_err(|e| query_error("snapshot: FLUSH TABLES WITH READ LOCK (needs the RELOAD privilege)", e))?;
            let started = conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT").await;
            let position = match started {
                Ok(()) => current_position(&mut conn, false).await,
                Err(e) => Err(snap(e)),
            };
            conn.query_drop("UNLOCK TABLES").await.map_err(snap)?;
            position?
        };
        if file.is_empty() {
            return Err(ConnectorError::config(
                "snapshot: the server reported no binlog position: the binary log is off (log_bin)",
            ));
        }
        tracing::info!(file = %file, pos, gtid = ?gtid, "consistent snapshot begins");
        let at = match &replay_from {
            Some(o) => MySqlOffset {
                snapshot_done: false,
                tables: self.offset(String::new(), 0, None, false).tables,
                incremental: None,
                ..o.clone()
            },
            None => self.offset(file.clone(), pos, gtid.clone(), false),
        };
        if replay_from.is_none() {
            // Checkpointed before any row goes out: a crash from the first row on takes the
            // snapshot again and replays the changes since this position (deletes included),
            // never a new snapshot from a later position that would leave deleted rows behind.
            out.emit(Vec::new(), at.clone()).await?;
            if !out.wait_committed(&at).await {
                return Ok((at, Some(Done::Cancelled)));
            }
        } else if self.cfg.capture.snapshot_mode == crate::cdc::SnapshotMode::InitialOnly {
            // initial_only taken again: complete only once the stream, replayed from the stored
            // position, has reached this snapshot's.
            self.catch_up = Some(super::incremental::BinlogPos {
                file: file.clone(),
                pos,
            });
        }
        let origin = Origin {
            file: &file,
            pos,
            gtid: gtid.as_deref(),
            server_id: 0,
            ts_ms: now_ms(),
            snapshot: true,
        };
        let tables = Self::tables(&mut conn, &self.cfg, &self.selection).await?;
        let cancel = out.cancelled();
        let format = self.cfg.capture.format;
        let mut total = 0u64;
        let count = tables.len();
        for (db, name, described) in tables {
            let table = self.snapshot_table(&db, &name, &described)?;
            let list = table.columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
            let sql = format!("SELECT {list} FROM {}.{}", ident(&db), ident(&name));
            let estimate = described.estimated_rows;
            let mut rows = conn
                .exec_stream::<Row, _, _>(sql, ())
                .await
                .map_err(|e| query_error(&format!("snapshot of {db}.{name}"), e))?;
            let mut batch = Vec::with_capacity(MAX_BATCH);
            let mut n = 0u64;
            loop {
                if cancel.is_cancelled() {
                    return Ok((at, Some(Done::Cancelled)));
                }
                let next = rows
                    .try_next()
                    .await
                    .map_err(|e| query_error(&format!("snapshot of {db}.{name}"), e))?;
                let Some(row) = next else { break };
                let values = row.unwrap();
                let cells: Vec<Cell<'_>> = values.iter().zip(&table.kinds).map(|(v, k)| cell(k, v)).collect();
                batch.push(change(format, &table, Op::Read, None, Some(&cells), &origin));
                n += 1;
                if batch.len() >= MAX_BATCH {
                    out.emit(std::mem::take(&mut batch), at.clone()).await?;
                    out.report(format!("snapshot {db}.{name}: {n}/~{estimate} rows"));
                }
            }
            drop(rows);
            if !batch.is_empty() {
                out.emit(batch, at.clone()).await?;
            }
            total += n;
            tracing::info!(table = %format!("{db}.{name}"), rows = n, "table snapshot done");
        }
        conn.query_drop("COMMIT").await.map_err(snap)?;
        let _ = conn.disconnect().await;
        let done = match replay_from {
            Some(o) => MySqlOffset {
                // initial_only taken again is not done before it has caught up.
                snapshot_done: self.catch_up.is_none(),
                tables: self.offset(String::new(), 0, None, false).tables,
                incremental: None,
                ..o
            },
            None => self.offset(file, pos, gtid, true),
        };
        out.emit(Vec::new(), done.clone()).await?;
        out.report(format!("snapshot done: {count} tables, {total} rows"));
        Ok((done, None))
    }
}
