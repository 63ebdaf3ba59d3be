//! The replication slot: its state, creation and drop, and the end of an initial_only run.

use hstream_runtime::{ConnectorError, Done, SourceOutput};

use super::{DROP_SLOT_WAIT, PgOffset, PgSource};
use crate::postgres::query_error;
use crate::postgres::wire::{self, Connection, ident, literal};

impl PgSource {
    /// The slot's row: `(active, confirmed_flush_lsn)`, `None` if it does not exist.
    pub(super) async fn slot_state(conn: &mut Connection, slot: &str) -> Result<Option<(bool, u64)>, ConnectorError> {
        let rows = conn
            .query(&format!(
                "SELECT active::text, coalesce(confirmed_flush_lsn, restart_lsn)::text, plugin::text, database::text \
                 FROM pg_replication_slots WHERE slot_name = {}",
                literal(slot)
            ))
            .await
            .map_err(|e| query_error("reading pg_replication_slots", e))?;
        let Some(r) = rows.first() else { return Ok(None) };
        if r[2].as_deref() != Some("pgoutput") {
            return Err(ConnectorError::config(format!(
                "slotName: slot {slot:?} exists with plugin {:?}, not pgoutput",
                r[2].as_deref().unwrap_or("none (physical)")
            )));
        }
        let lsn = r[1].as_deref().and_then(wire::parse_lsn).unwrap_or(0);
        Ok(Some((r[0].as_deref() == Some("true"), lsn)))
    }

    /// Whether the slot was invalidated (`wal_status = 'lost'`: the server removed WAL it still
    /// needed, past `max_slot_wal_keep_size`; or, PostgreSQL 16+, a conflict or another
    /// invalidation reason): it exists, but streaming from it fails.
    pub(super) async fn slot_lost(
        conn: &mut Connection,
        slot: &str,
        server_version: u32,
    ) -> Result<bool, ConnectorError> {
        if server_version < 130_000 {
            return Ok(false);
        }
        let rows = conn
            .query(&format!(
                "SELECT (s.wal_status = 'lost' OR coalesce((to_jsonb(s) ->> 'conflicting')::bool, false) \
                 OR to_jsonb(s) ->> 'invalidation_reason' IS NOT NULL)::text \
                 FROM pg_replication_slots s WHERE s.slot_name = {}",
                literal(slot)
            ))
            .await
            .map_err(|e| query_error("reading pg_replication_slots", e))?;
        Ok(rows.first().and_then(|r| r[0].as_deref()) == Some("true"))
    }

    pub(super) async fn drop_slot(conn: &mut Connection, slot: &str) -> Result<(), ConnectorError> {
        match Self::slot_state(conn, slot).await? {
            None => Ok(()),
            Some((true, _)) => Err(ConnectorError::external(format!(
                "slotName: slot {slot:?} is in use by another connection"
            ))),
            Some((false, _)) => conn
                .query(&format!("DROP_REPLICATION_SLOT {}", ident(slot)))
                .await
                .map(|_| ())
                .map_err(|e| query_error("dropping the replication slot", e)),
        }
    }

    /// Creates the (permanent) slot; with `export`, also an exported snapshot (valid until the
    /// next command on `conn`). Returns the consistent point and the snapshot name.
    pub(super) async fn create_slot(
        conn: &mut Connection,
        slot: &str,
        export: bool,
    ) -> Result<(u64, Option<String>), ConnectorError> {
        let rows = conn
            .query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {}",
                ident(slot),
                if export { "EXPORT_SNAPSHOT" } else { "NOEXPORT_SNAPSHOT" }
            ))
            .await
            .map_err(|e| match e.code() {
                Some("53400") | Some("55000") => ConnectorError::config("slotName").with_source(e),
                _ => query_error("creating the replication slot", e),
            })?;
        let row = rows
            .first()
            .ok_or_else(|| ConnectorError::internal("CREATE_REPLICATION_SLOT returned no row"))?;
        let lsn = row
            .get(1)
            .and_then(|v| v.as_deref())
            .and_then(wire::parse_lsn)
            .ok_or_else(|| ConnectorError::internal("CREATE_REPLICATION_SLOT returned no consistent point"))?;
        Ok((lsn, row.get(2).cloned().flatten()))
    }

    /// Ends an initial_only run: the offset that says so committed first, then the slot dropped
    /// (a crash in between finds the run complete and drops it then).
    pub(super) async fn complete(
        &mut self,
        mut repl: Connection,
        out: &mut SourceOutput<PgOffset>,
        lsn: u64,
    ) -> Result<Done, ConnectorError> {
        let last = self.offset(lsn, true);
        out.emit(Vec::new(), last.clone()).await?;
        if !out.wait_committed(&last).await {
            repl.close().await;
            return Ok(Done::Cancelled);
        }
        // A walsender of this task that has just stopped may still hold the slot: wait for it.
        let dropped = tokio::time::timeout(
            DROP_SLOT_WAIT,
            repl.query(&format!("DROP_REPLICATION_SLOT {} WAIT", ident(&self.slot))),
        )
        .await;
        match dropped {
            Ok(Ok(_)) => tracing::info!(slot = %self.slot, "snapshot complete; slot dropped"),
            Ok(Err(e)) if e.code() == Some("42704") => {}
            Ok(Err(e)) => return Err(query_error("dropping the replication slot", e)),
            Err(_) => {
                return Err(ConnectorError::external(format!(
                    "slotName: slot {:?} was still in use after {DROP_SLOT_WAIT:?}",
                    self.slot
                )));
            }
        }
        repl.close().await;
        Ok(Done::Completed)
    }
}
