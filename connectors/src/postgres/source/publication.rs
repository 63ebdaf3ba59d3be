//! The publication: created when missing, kept to the configured tables when it is ours, and
//! which relations it sends belong to the captured tables.

use hstream_runtime::ConnectorError;

use super::{OWN_PUBLICATION, PgSource};
use crate::postgres::query_error;
use crate::postgres::wire::{ident, literal};

impl PgSource {
    /// Creates the publication if missing; with autocreate keeps its tables equal to ours.
    pub(super) async fn ensure_publication(&mut self, tables: &[(String, String)]) -> Result<(), ConnectorError> {
        let publication = self.publication.clone();
        let autocreate = self.cfg.publication_autocreate;
        let named = self.cfg.publication_name.is_some();
        let conn = self.control().await?;
        let list = tables
            .iter()
            .map(|(s, t)| format!("{}.{}", ident(s), ident(t)))
            .collect::<Vec<_>>()
            .join(", ");
        let exists = !conn
            .query(&format!(
                "SELECT 1 FROM pg_publication WHERE pubname = {}",
                literal(&publication)
            ))
            .await
            .map_err(|e| query_error("reading pg_publication", e))?
            .is_empty();
        let perr = |e| query_error("publicationName", e);
        if !exists {
            if !autocreate {
                return Err(ConnectorError::config(format!(
                    "publicationName: publication {publication:?} does not exist and publicationAutocreate is false"
                )));
            }
            conn.query(&format!("CREATE PUBLICATION {} FOR TABLE {list}", ident(&publication)))
                .await
                .map_err(perr)?;
            // Marked, so a later start knows the publication's table list is ours to keep.
            conn.query(&format!(
                "COMMENT ON PUBLICATION {} IS {}",
                ident(&publication),
                literal(OWN_PUBLICATION)
            ))
            .await
            .map_err(perr)?;
            tracing::info!(publication = %publication, tables = %list, "created publication");
            return Ok(());
        }
        let ours = !named
            || !conn
                .query(&format!(
                    "SELECT 1 FROM pg_publication p JOIN pg_description d \
                     ON d.objoid = p.oid AND d.classoid = 'pg_publication'::regclass \
                     WHERE p.pubname = {} AND d.description = {}",
                    literal(&publication),
                    literal(OWN_PUBLICATION)
                ))
                .await
                .map_err(perr)?
                .is_empty();
        // The tables named in the publication (a partitioned table is one entry, not its
        // partitions); a FOR ALL TABLES publication names none and holds every table.
        let all = conn
            .query(&format!(
                "SELECT puballtables::text FROM pg_publication WHERE pubname = {}",
                literal(&publication)
            ))
            .await
            .map_err(perr)?;
        if all.first().and_then(|r| r[0].as_deref()) == Some("true") {
            return Ok(());
        }
        let have = conn
            .query(&format!(
                "SELECT n.nspname::text, c.relname::text FROM pg_publication_rel r \
                 JOIN pg_publication p ON p.oid = r.prpubid JOIN pg_class c ON c.oid = r.prrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.pubname = {}",
                literal(&publication)
            ))
            .await
            .map_err(perr)?;
        let have: Vec<(String, String)> = have
            .into_iter()
            .map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default()))
            .collect();
        let missing: Vec<_> = tables.iter().filter(|t| !have.contains(t)).collect();
        if autocreate && ours {
            // Our own publication holds exactly the configured tables: one no longer listed
            // goes (its changes would only be decoded to be dropped).
            let extra: Vec<_> = have.iter().filter(|t| !tables.contains(t)).collect();
            if !extra.is_empty() || !missing.is_empty() {
                conn.query(&format!("ALTER PUBLICATION {} SET TABLE {list}", ident(&publication)))
                    .await
                    .map_err(perr)?;
                tracing::info!(publication = %publication, tables = %list, "publication tables set");
            }
            return Ok(());
        }
        if missing.is_empty() {
            return Ok(());
        }
        if !autocreate {
            return Err(ConnectorError::config(format!(
                "publicationName: publication {publication:?} does not include {}.{}",
                missing[0].0, missing[0].1
            )));
        }
        // Only what is missing is added: other tables of the publication are someone's too.
        let add = missing
            .iter()
            .map(|(s, t)| format!("{}.{}", ident(s), ident(t)))
            .collect::<Vec<_>>()
            .join(", ");
        conn.query(&format!("ALTER PUBLICATION {} ADD TABLE {add}", ident(&publication)))
            .await
            .map_err(perr)?;
        tracing::info!(publication = %publication, tables = %add, "tables added to the publication");
        Ok(())
    }

    /// The configured table that changes of relation `id` (`schema.table`) belong to: itself,
    /// or the table it is a partition or inheritance child of (a publication without
    /// publish_via_partition_root sends a partition's changes under its own name); `None` for
    /// a relation not captured.
    pub(super) async fn captures(
        &mut self,
        id: u32,
        schema: &str,
        table: &str,
    ) -> Result<Option<(String, String)>, ConnectorError> {
        let own = (schema.to_owned(), table.to_owned());
        if self.captured.contains(&own) {
            return Ok(Some(own));
        }
        let rows = self
            .control()
            .await?
            .query(&format!(
                "WITH RECURSIVE up(oid) AS (SELECT {id}::oid UNION \
                   SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.oid) \
                 SELECT n.nspname::text, c.relname::text FROM up JOIN pg_class c ON c.oid = up.oid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace"
            ))
            .await;
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                self.control = None;
                return Err(query_error("reading the catalog", e));
            }
        };
        Ok(rows
            .iter()
            .map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default()))
            .find(|st| self.captured.contains(st)))
    }
}
