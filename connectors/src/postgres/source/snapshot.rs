//! The initial snapshot: every table read in the snapshot the slot exported.

use std::ops::ControlFlow;

use hstream_runtime::{ConnectorError, Done, SourceOutput};

use super::records::{Op, Origin, Rel, change, now_ms};
use super::{PgOffset, PgSource, SNAPSHOT_FETCH, SnapshotMode, learn_types};
use crate::postgres::pgoutput::Col;
use crate::postgres::query_error;
use crate::postgres::wire::{ident, literal};

impl PgSource {
    /// A table as the snapshot reads it (its types learnt already).
    pub(super) fn table_rel(
        &self,
        schema: &str,
        table: &str,
        info: &crate::postgres::TableInfo,
    ) -> Result<Rel, ConnectorError> {
        let names: Vec<String> = info.columns.iter().map(|c| c.0.clone()).collect();
        Ok(Rel {
            attributes: crate::cdc::source_attributes(&self.cfg.endpoint.database, Some(schema), table),
            schema: schema.to_owned(),
            table: table.to_owned(),
            rules: self
                .selection
                .column_rules(&format!("{schema}.{table}"), &names, &info.key)?,
            names,
            kinds: info.columns.iter().map(|c| self.types.kind(c.1)).collect(),
            key: info.key.clone(),
            selection: self.selection.clone(),
        })
    }

    /// Copies every table's rows as of the snapshot the slot exported (`snapshot`), or, taken
    /// again over an existing slot (`None`), as of now. The last rows go out in one emit with
    /// the offset that marks the snapshot done, so there is no moment at which every row is in
    /// the stream but the snapshot counts as unfinished (a stop or crash there would make the
    /// restart take the snapshot again). Each batch is held until the next fetch shows whether
    /// it is the last.
    ///
    /// Taken again, it returns the WAL position after every transaction it sees; an
    /// initial_only run streams up to there before it is done, so its snapshot does not count
    /// as done here yet.
    pub(super) async fn snapshot(
        &mut self,
        snapshot: Option<&str>,
        at: u64,
        out: &mut SourceOutput<PgOffset>,
    ) -> Result<ControlFlow<Done, Option<u64>>, ConnectorError> {
        let mut conn = self.ep.connect(false, "hstream-cdc-snapshot").await?;
        let snap_err = |e| query_error("snapshot", e);
        conn.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(snap_err)?;
        let mut end = None;
        match snapshot {
            Some(name) => {
                conn.query(&format!("SET TRANSACTION SNAPSHOT {}", literal(name)))
                    .await
                    .map_err(snap_err)?;
            }
            None if self.cfg.capture.snapshot_mode == SnapshotMode::InitialOnly => {
                // The transaction's snapshot is taken by its first query; the WAL insert
                // position read after it lies past the commit record of every transaction the
                // snapshot sees (even an asynchronous commit not yet written).
                conn.query("SELECT 1").await.map_err(snap_err)?;
                end = conn
                    .query("SELECT pg_current_wal_insert_lsn()::text")
                    .await
                    .map_err(snap_err)?
                    .first()
                    .and_then(|r| r[0].as_deref().and_then(crate::postgres::wire::parse_lsn));
            }
            None => {}
        }
        let finished = snapshot.is_some() || self.cfg.capture.snapshot_mode != SnapshotMode::InitialOnly;
        let tables = self.tables.clone();
        let cancel = out.cancelled();
        let origin = Origin {
            lsn: at,
            tx_id: 0,
            ts_ms: now_ms(),
            snapshot: true,
            db: &self.cfg.endpoint.database.clone(),
        };
        let mut total = 0u64;
        let mut held: Option<Vec<_>> = None;
        for (schema, table) in &tables {
            let info = crate::postgres::table_info(&mut conn, schema, table)
                .await
                .map_err(snap_err)?
                .ok_or_else(|| ConnectorError::config(format!("table: {schema}.{table} disappeared")))?;
            let oids: Vec<u32> = info.columns.iter().map(|c| c.1).collect();
            learn_types(&mut conn, &mut self.types, &oids).await?;
            let rel = self.table_rel(schema, table, &info)?;
            let estimate = conn
                .query(&format!(
                    "SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = {}",
                    info.oid
                ))
                .await
                .map_err(snap_err)?
                .first()
                .and_then(|r| r[0].as_deref().and_then(|s| s.parse::<u64>().ok()))
                .unwrap_or(0);
            let cols = rel.names.iter().map(|n| ident(n)).collect::<Vec<_>>().join(", ");
            conn.query(&format!(
                "DECLARE hstream_snapshot NO SCROLL CURSOR FOR SELECT {cols} FROM {}.{}",
                ident(schema),
                ident(table)
            ))
            .await
            .map_err(snap_err)?;
            let started = std::time::Instant::now();
            let mut done = 0u64;
            tracing::info!(table = %format!("{schema}.{table}"), estimate, "snapshot started");
            loop {
                if cancel.is_cancelled() {
                    conn.close().await;
                    return Ok(ControlFlow::Break(Done::Cancelled));
                }
                let mut records = Vec::with_capacity(SNAPSHOT_FETCH);
                let format = self.cfg.capture.format;
                conn.query_each(
                    &format!("FETCH FORWARD {SNAPSHOT_FETCH} FROM hstream_snapshot"),
                    |row| {
                        let cols: Vec<Col<'_>> = (0..row.len())
                            .map(|i| row.get(i).map_or(Col::Null, Col::Text))
                            .collect();
                        records.push(change(format, &rel, Op::Read, None, Some(&cols), &origin));
                        Ok(())
                    },
                )
                .await
                .map_err(snap_err)?;
                if records.is_empty() {
                    break;
                }
                done += records.len() as u64;
                if let Some(previous) = held.replace(records) {
                    out.emit(previous, self.offset(at, false)).await?;
                }
                out.report(format!("snapshot {schema}.{table}: {done}/{} rows", estimate.max(done)));
            }
            conn.query("CLOSE hstream_snapshot").await.map_err(snap_err)?;
            total += done;
            tracing::info!(
                table = %format!("{schema}.{table}"),
                rows = done,
                seconds = started.elapsed().as_secs_f64(),
                "snapshot finished"
            );
        }
        conn.query("COMMIT").await.map_err(snap_err)?;
        conn.close().await;
        out.emit(held.unwrap_or_default(), self.offset(at, finished)).await?;
        out.report(format!("snapshot done: {} tables, {total} rows", tables.len()));
        Ok(ControlFlow::Continue(end))
    }
}
