//! Embedded SQLite MetaStore (the default): one file in the data directory, WAL journal,
//! `synchronous=FULL` so a returned write survives power loss, one connection so every call is
//! a serialized transaction.

use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection};

use super::*;

mod owners;
mod rows;

use rows::*;

pub struct SqliteMetaStore {
    pool: SqlitePool,
}

fn backend(e: sqlx::Error) -> MetaError {
    MetaError::Backend(Box::new(e))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn like_prefix(prefix: &str) -> String {
    let escaped = prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("{escaped}%")
}

impl SqliteMetaStore {
    /// Opens (creating if missing) the database file at `path`.
    pub async fn open(path: &Path) -> MetaResult<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true);
        Self::with_options(opts).await
    }

    /// A private in-memory database (tests).
    pub async fn in_memory() -> MetaResult<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:").map_err(backend)?;
        Self::with_options(opts).await
    }

    async fn with_options(opts: SqliteConnectOptions) -> MetaResult<Self> {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await
            .map_err(backend)?;
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&pool).await.map_err(backend)?;
        }
        for (table, column, def) in ADDED_COLUMNS {
            let present: i64 = sqlx::query("SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = ?")
                .bind(table)
                .bind(column)
                .fetch_one(&pool)
                .await
                .map_err(backend)?
                .get(0);
            if present == 0 {
                sqlx::query(&format!("ALTER TABLE {table} ADD COLUMN {column} {def}"))
                    .execute(&pool)
                    .await
                    .map_err(backend)?;
            }
        }
        Ok(SqliteMetaStore { pool })
    }

    /// Sets one text column of an existing connector (`column` is one of ours, never input).
    /// Sets one column of a connector; with `fence`, only while that ownership is current (in
    /// the same transaction).
    async fn set_connector_column(
        &self,
        column: &'static str,
        name: &str,
        value: &str,
        fence: Option<&Ownership>,
    ) -> MetaResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        if let Some(fence) = fence {
            Self::check_fence_in(&mut tx, fence).await?;
        }
        let res = sqlx::query(&format!("UPDATE connectors SET {column} = ? WHERE name = ?"))
            .bind(value)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if res.rows_affected() == 0 {
            return Err(MetaError::NotFound {
                kind: "connector",
                name: name.to_owned(),
            });
        }
        tx.commit().await.map_err(backend)
    }

    async fn shards_where(conn: &mut SqliteConnection, stream: &str) -> MetaResult<Vec<ShardMeta>> {
        let rows = sqlx::query("SELECT id, stream, start_key, end_key, epoch FROM shards WHERE stream = ? ORDER BY id")
            .bind(stream)
            .fetch_all(conn)
            .await
            .map_err(backend)?;
        rows.iter().map(shard_from_row).collect()
    }
}

#[async_trait]
impl MetaStore for SqliteMetaStore {
    /// Kept in `kv` under an owner no connector can be named (names start with a letter), so
    /// deleting a connector never takes it.
    async fn cluster_id(&self, proposed: Option<&str>) -> MetaResult<Option<String>> {
        if let Some(id) = proposed {
            sqlx::query("INSERT INTO kv (owner, key, value) VALUES ('__cluster__', 'id', ?) ON CONFLICT DO NOTHING")
                .bind(id.as_bytes())
                .execute(&self.pool)
                .await
                .map_err(backend)?;
        }
        let row = sqlx::query("SELECT value FROM kv WHERE owner = '__cluster__' AND key = 'id'")
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|r| {
            String::from_utf8(r.get::<Vec<u8>, _>(0)).map_err(|_| MetaError::Invalid("cluster id is not UTF-8".into()))
        })
        .transpose()
    }

    async fn allocate_shard_ids(&self, count: u32) -> MetaResult<u64> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let row = sqlx::query(
            "INSERT INTO counters (name, value) VALUES ('shard_id', 1 + ?) \
             ON CONFLICT(name) DO UPDATE SET value = value + ? RETURNING value",
        )
        .bind(count as i64)
        .bind(count as i64)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        let next: i64 = row.get(0);
        Ok(next as u64 - count as u64)
    }

    async fn create_stream(&self, stream: &StreamMeta, shards: &[ShardMeta]) -> MetaResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let res = sqlx::query(&format!(
            "INSERT INTO streams ({STREAM_COLS}) VALUES (?, ?, ?, ?, ?, ?)"
        ))
        .bind(&stream.name)
        .bind(stream.replication_factor as i64)
        .bind(stream.backlog_secs as i64)
        .bind(stream.shard_count as i64)
        .bind(stream.created_ms)
        .bind(stream.archived as i64)
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(MetaError::AlreadyExists {
                    kind: "stream",
                    name: stream.name.clone(),
                });
            }
            r => r.map_err(backend)?,
        };
        for s in shards {
            sqlx::query("INSERT INTO shards (id, stream, start_key, end_key, epoch) VALUES (?, ?, ?, ?, ?)")
                .bind(s.id as i64)
                .bind(&s.stream)
                .bind(s.start_key.to_string())
                .bind(s.end_key.to_string())
                .bind(s.epoch as i64)
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        MetaError::AlreadyExists {
                            kind: "shard",
                            name: s.id.to_string(),
                        }
                    } else {
                        backend(e)
                    }
                })?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn get_stream(&self, name: &str) -> MetaResult<Option<StreamMeta>> {
        let row = sqlx::query(&format!(
            "SELECT {STREAM_COLS} FROM streams WHERE name = ? AND archived = 0"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.as_ref().map(stream_from_row))
    }

    async fn list_streams(&self, prefix: &str) -> MetaResult<Vec<StreamMeta>> {
        let rows = sqlx::query(&format!(
            "SELECT {STREAM_COLS} FROM streams WHERE archived = 0 AND name LIKE ? ESCAPE '\\' ORDER BY name"
        ))
        .bind(like_prefix(prefix))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows.iter().map(stream_from_row).collect())
    }

    async fn list_archived_streams(&self) -> MetaResult<Vec<StreamMeta>> {
        let rows = sqlx::query(&format!(
            "SELECT {STREAM_COLS} FROM streams WHERE archived = 1 ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows.iter().map(stream_from_row).collect())
    }

    async fn delete_stream(&self, name: &str) -> MetaResult<Vec<ShardMeta>> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let shards = Self::shards_where(&mut tx, name).await?;
        let res = sqlx::query("DELETE FROM streams WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if res.rows_affected() == 0 {
            return Err(MetaError::NotFound {
                kind: "stream",
                name: name.to_owned(),
            });
        }
        sqlx::query("DELETE FROM shards WHERE stream = ?")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(shards)
    }

    async fn archive_stream(&self, name: &str, archived_name: &str) -> MetaResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let res = sqlx::query("UPDATE streams SET name = ?, archived = 1 WHERE name = ? AND archived = 0")
            .bind(archived_name)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    MetaError::AlreadyExists {
                        kind: "stream",
                        name: archived_name.to_owned(),
                    }
                } else {
                    backend(e)
                }
            })?;
        if res.rows_affected() == 0 {
            return Err(MetaError::NotFound {
                kind: "stream",
                name: name.to_owned(),
            });
        }
        for table in ["shards", "subscriptions", "readers"] {
            sqlx::query(&format!("UPDATE {table} SET stream = ? WHERE stream = ?"))
                .bind(archived_name)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn list_shards(&self, stream: &str) -> MetaResult<Vec<ShardMeta>> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        Self::shards_where(&mut conn, stream).await
    }

    async fn get_shard(&self, id: u64) -> MetaResult<Option<ShardMeta>> {
        let row = sqlx::query("SELECT id, stream, start_key, end_key, epoch FROM shards WHERE id = ?")
            .bind(id as i64)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(shard_from_row).transpose()
    }

    async fn all_shard_ids(&self) -> MetaResult<Vec<u64>> {
        let rows = sqlx::query("SELECT id FROM shards ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(|r| r.get::<i64, _>(0) as u64).collect())
    }

    async fn create_subscription(&self, sub: &SubscriptionMeta, start: &[ShardProgress]) -> MetaResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let res = sqlx::query(&format!(
            "INSERT INTO subscriptions ({SUB_COLS}) VALUES (?, ?, ?, ?, ?, ?)"
        ))
        .bind(&sub.id)
        .bind(&sub.stream)
        .bind(sub.ack_timeout_secs as i64)
        .bind(sub.max_unacked as i64)
        .bind(if sub.offset == StartOffset::Earliest { 0i64 } else { 1 })
        .bind(sub.created_ms)
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(MetaError::AlreadyExists {
                    kind: "subscription",
                    name: sub.id.clone(),
                });
            }
            r => r.map_err(backend)?,
        };
        // A deleted subscription of the same name must not leave its progress or acks behind.
        sqlx::query("DELETE FROM sub_progress WHERE sub = ?")
            .bind(&sub.id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM checkpoints WHERE owner = ?")
            .bind(super::subscription_checkpoint(&sub.id))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        for p in start {
            sqlx::query("INSERT INTO sub_progress (sub, shard_id, next_lsn) VALUES (?, ?, ?)")
                .bind(&sub.id)
                .bind(p.shard_id as i64)
                .bind(p.next_lsn as i64)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn get_subscription(&self, id: &str) -> MetaResult<Option<SubscriptionMeta>> {
        let row = sqlx::query(&format!("SELECT {SUB_COLS} FROM subscriptions WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.as_ref().map(sub_from_row))
    }

    async fn list_subscriptions(&self, prefix: &str) -> MetaResult<Vec<SubscriptionMeta>> {
        let rows = sqlx::query(&format!(
            "SELECT {SUB_COLS} FROM subscriptions WHERE id LIKE ? ESCAPE '\\' ORDER BY id"
        ))
        .bind(like_prefix(prefix))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows.iter().map(sub_from_row).collect())
    }

    async fn subscriptions_of_stream(&self, stream: &str) -> MetaResult<Vec<SubscriptionMeta>> {
        let rows = sqlx::query(&format!(
            "SELECT {SUB_COLS} FROM subscriptions WHERE stream = ? ORDER BY id"
        ))
        .bind(stream)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows.iter().map(sub_from_row).collect())
    }

    async fn delete_subscription(&self, id: &str) -> MetaResult<Option<Vec<ShardMeta>>> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let stream: Option<String> = sqlx::query("SELECT stream FROM subscriptions WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .map(|r| r.get(0));
        for sql in [
            "DELETE FROM subscriptions WHERE id = ?",
            "DELETE FROM sub_progress WHERE sub = ?",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await.map_err(backend)?;
        }
        sqlx::query("DELETE FROM checkpoints WHERE owner = ?")
            .bind(super::subscription_checkpoint(id))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let Some(stream) = stream else {
            tx.commit().await.map_err(backend)?;
            return Ok(None);
        };
        // The data of a force-deleted stream goes with its last subscription, in this step.
        let orphaned = sqlx::query(
            "SELECT 1 FROM streams WHERE name = ? AND archived = 1 \
             AND NOT EXISTS (SELECT 1 FROM subscriptions WHERE stream = ?)",
        )
        .bind(&stream)
        .bind(&stream)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?
        .is_some();
        let mut removed = Vec::new();
        if orphaned {
            removed = Self::shards_where(&mut tx, &stream).await?;
            for sql in [
                "DELETE FROM streams WHERE name = ?",
                "DELETE FROM shards WHERE stream = ?",
            ] {
                sqlx::query(sql)
                    .bind(&stream)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(Some(removed))
    }

    async fn commit(&self, c: &Commit<'_>) -> MetaResult<()> {
        self.commit_fenced(c).await
    }

    async fn get_progress(&self, sub: &str) -> MetaResult<Vec<ShardProgress>> {
        let rows = sqlx::query("SELECT shard_id, next_lsn FROM sub_progress WHERE sub = ? ORDER BY shard_id")
            .bind(sub)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| ShardProgress {
                shard_id: r.get::<i64, _>(0) as u64,
                next_lsn: r.get::<i64, _>(1) as u64,
            })
            .collect())
    }

    async fn create_reader(&self, reader: &ReaderMeta) -> MetaResult<()> {
        let res = sqlx::query(&format!(
            "INSERT INTO readers ({READER_COLS}) VALUES (?, ?, ?, ?, ?, ?)"
        ))
        .bind(&reader.id)
        .bind(&reader.stream)
        .bind(reader.shard_id as i64)
        .bind(reader.start_lsn as i64)
        .bind(reader.timeout_ms as i64)
        .bind(&reader.offset_spec)
        .execute(&self.pool)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => Err(MetaError::AlreadyExists {
                kind: "shard reader",
                name: reader.id.clone(),
            }),
            r => r.map(|_| ()).map_err(backend),
        }
    }

    async fn get_reader(&self, id: &str) -> MetaResult<Option<ReaderMeta>> {
        let row = sqlx::query(&format!("SELECT {READER_COLS} FROM readers WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.as_ref().map(reader_from_row))
    }

    async fn list_readers(&self) -> MetaResult<Vec<ReaderMeta>> {
        let rows = sqlx::query(&format!("SELECT {READER_COLS} FROM readers ORDER BY id"))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(reader_from_row).collect())
    }

    async fn delete_reader(&self, id: &str) -> MetaResult<bool> {
        let res = sqlx::query("DELETE FROM readers WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(res.rows_affected() > 0)
    }

    async fn create_connector(&self, c: &ConnectorMeta) -> MetaResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let res = sqlx::query(&format!(
            "INSERT INTO connectors ({CONNECTOR_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&c.name)
        .bind(&c.kind)
        .bind(&c.target)
        .bind(&c.config)
        .bind(&c.status)
        .bind(c.created_ms)
        .bind(c.node as i64)
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(MetaError::AlreadyExists {
                    kind: "connector",
                    name: c.name.clone(),
                });
            }
            r => r.map_err(backend)?,
        };
        // A checkpoint or key-value left by an earlier connector of this name is not this one's.
        sqlx::query("DELETE FROM checkpoints WHERE owner = ?")
            .bind(connector_checkpoint(&c.name))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM kv WHERE owner = ?")
            .bind(&c.name)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn get_connector(&self, name: &str) -> MetaResult<Option<ConnectorMeta>> {
        let row = sqlx::query(&format!("SELECT {CONNECTOR_COLS} FROM connectors WHERE name = ?"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.as_ref().map(connector_from_row))
    }

    async fn list_connectors(&self) -> MetaResult<Vec<ConnectorMeta>> {
        let rows = sqlx::query(&format!("SELECT {CONNECTOR_COLS} FROM connectors ORDER BY name"))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(connector_from_row).collect())
    }

    async fn update_connector(&self, c: &ConnectorMeta) -> MetaResult<()> {
        let res = sqlx::query("UPDATE connectors SET config = ?, status = ?, node = ? WHERE name = ?")
            .bind(&c.config)
            .bind(&c.status)
            .bind(c.node as i64)
            .bind(&c.name)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        if res.rows_affected() == 0 {
            return Err(MetaError::NotFound {
                kind: "connector",
                name: c.name.clone(),
            });
        }
        Ok(())
    }

    async fn set_connector_config(&self, name: &str, config: &str) -> MetaResult<()> {
        self.set_connector_column("config", name, config, None).await
    }

    async fn set_connector_status(&self, name: &str, status: &str, fence: Option<&Ownership>) -> MetaResult<()> {
        self.set_connector_column("status", name, status, fence).await
    }

    async fn delete_connector(&self, name: &str) -> MetaResult<bool> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let res = sqlx::query("DELETE FROM connectors WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM checkpoints WHERE owner = ?")
            .bind(connector_checkpoint(name))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM kv WHERE owner = ?")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(res.rows_affected() > 0)
    }

    async fn get_checkpoint(&self, owner: &str) -> MetaResult<Option<Checkpoint>> {
        let row = sqlx::query("SELECT owner, version, data FROM checkpoints WHERE owner = ?")
            .bind(owner)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.map(|r| Checkpoint {
            owner: r.get(0),
            version: r.get::<i64, _>(1) as u32,
            data: r.get(2),
        }))
    }

    async fn delete_checkpoint(&self, owner: &str) -> MetaResult<bool> {
        let res = sqlx::query("DELETE FROM checkpoints WHERE owner = ?")
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(res.rows_affected() > 0)
    }

    async fn kv_set(&self, owner: &str, key: &str, value: &[u8]) -> MetaResult<()> {
        sqlx::query(
            "INSERT INTO kv (owner, key, value) VALUES (?, ?, ?) \
             ON CONFLICT(owner, key) DO UPDATE SET value = excluded.value",
        )
        .bind(owner)
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn kv_get(&self, owner: &str, key: &str) -> MetaResult<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT value FROM kv WHERE owner = ? AND key = ?")
            .bind(owner)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn watch_streams(&self) -> MetaResult<StreamChanges> {
        // One process writes this file: the node's own changes are in its catalog already.
        use futures::StreamExt;
        Ok(futures::stream::once(async { StreamChange::Resync })
            .chain(futures::stream::pending())
            .boxed())
    }

    async fn claim(&self, resource: &str, owner: u32, expected: u64) -> MetaResult<Ownership> {
        self.claim_resource(resource, owner, expected).await
    }

    async fn release(&self, held: &Ownership) -> MetaResult<Ownership> {
        self.release_resource(held).await
    }

    async fn ownership(&self, resource: &str) -> MetaResult<Option<Ownership>> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        Self::ownership_in(&mut conn, resource).await
    }

    async fn list_ownerships(&self, prefix: &str) -> MetaResult<Vec<Ownership>> {
        self.ownerships_under(prefix).await
    }

    async fn grant_lease(&self, ttl: std::time::Duration) -> MetaResult<LeaseId> {
        self.new_lease(ttl).await
    }

    async fn keep_lease_alive(&self, lease: LeaseId) -> MetaResult<bool> {
        self.renew_lease(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> MetaResult<()> {
        self.end_lease(lease).await
    }

    async fn upsert_node(&self, node: &NodeMeta, lease: Option<LeaseId>) -> MetaResult<()> {
        self.put_node(node, lease).await
    }

    async fn list_nodes(&self) -> MetaResult<Vec<NodeMeta>> {
        self.live_nodes().await
    }

    async fn remove_node(&self, id: u32) -> MetaResult<bool> {
        let res = sqlx::query("DELETE FROM nodes WHERE id = ?")
            .bind(id as i64)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(res.rows_affected() > 0)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests;
