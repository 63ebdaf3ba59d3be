//! The writes an owner makes and the cluster's primitives on SQLite: fenced commits checked
//! in the same transaction, ownership claims and releases, and leases as wall-clock deadlines
//! (swept, with the node records bound to them, by the calls that would see them).

use sqlx::{Row, SqliteConnection};

use super::super::*;
use super::{SqliteMetaStore, backend, like_prefix};

impl SqliteMetaStore {
    pub(super) async fn ownership_in(conn: &mut SqliteConnection, resource: &str) -> MetaResult<Option<Ownership>> {
        let row = sqlx::query("SELECT owner, epoch FROM owners WHERE resource = ?")
            .bind(resource)
            .fetch_optional(conn)
            .await
            .map_err(backend)?;
        Ok(row.map(|r| Ownership {
            resource: resource.to_owned(),
            owner: r.get::<Option<i64>, _>(0).map(|o| o as u32),
            epoch: r.get::<i64, _>(1) as u64,
        }))
    }

    pub(super) async fn set_ownership(conn: &mut SqliteConnection, o: &Ownership) -> MetaResult<()> {
        sqlx::query(
            "INSERT INTO owners (resource, owner, epoch) VALUES (?, ?, ?) \
             ON CONFLICT(resource) DO UPDATE SET owner = excluded.owner, epoch = excluded.epoch",
        )
        .bind(&o.resource)
        .bind(o.owner.map(i64::from))
        .bind(o.epoch as i64)
        .execute(conn)
        .await
        .map_err(backend)?;
        Ok(())
    }

    /// Removes the leases past their deadline and the node records bound to them.
    pub(super) async fn sweep_leases(conn: &mut SqliteConnection) -> MetaResult<()> {
        let now = now_ms();
        sqlx::query("DELETE FROM nodes WHERE lease IN (SELECT id FROM leases WHERE expires_ms <= ?)")
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM leases WHERE expires_ms <= ?")
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// `Fenced` unless `f` is still the resource's current ownership.
    pub(super) async fn check_fence_in(conn: &mut SqliteConnection, f: &Ownership) -> MetaResult<()> {
        let current = Self::ownership_in(conn, &f.resource).await?;
        if current.as_ref() != Some(f) {
            return Err(Ownership::fenced(
                &f.resource,
                Ownership::describe(Some(f)),
                current.as_ref(),
            ));
        }
        Ok(())
    }

    pub(super) async fn commit_fenced(&self, c: &Commit<'_>) -> MetaResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        for f in c.fences {
            Self::check_fence_in(&mut tx, f).await?;
        }
        if let Some((sub, progress)) = c.progress {
            for p in progress {
                sqlx::query(
                    "INSERT INTO sub_progress (sub, shard_id, next_lsn) VALUES (?, ?, ?) \
                     ON CONFLICT(sub, shard_id) DO UPDATE SET next_lsn = max(next_lsn, excluded.next_lsn)",
                )
                .bind(sub)
                .bind(p.shard_id as i64)
                .bind(p.next_lsn as i64)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            }
        }
        for cp in c.checkpoints {
            sqlx::query(
                "INSERT INTO checkpoints (owner, version, data) VALUES (?, ?, ?) \
                 ON CONFLICT(owner) DO UPDATE SET version = excluded.version, data = excluded.data",
            )
            .bind(&cp.owner)
            .bind(cp.version as i64)
            .bind(&cp.data)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    pub(super) async fn claim_resource(&self, resource: &str, owner: u32, expected: u64) -> MetaResult<Ownership> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let current = Self::ownership_in(&mut tx, resource).await?;
        if current.as_ref().map_or(0, |c| c.epoch) != expected {
            return Err(Ownership::fenced(
                resource,
                format!("epoch {expected}"),
                current.as_ref(),
            ));
        }
        let next = Ownership {
            resource: resource.to_owned(),
            owner: Some(owner),
            epoch: expected + 1,
        };
        Self::set_ownership(&mut tx, &next).await?;
        tx.commit().await.map_err(backend)?;
        Ok(next)
    }

    pub(super) async fn release_resource(&self, held: &Ownership) -> MetaResult<Ownership> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let current = Self::ownership_in(&mut tx, &held.resource).await?;
        if current.as_ref() != Some(held) {
            return Err(Ownership::fenced(
                &held.resource,
                Ownership::describe(Some(held)),
                current.as_ref(),
            ));
        }
        let next = Ownership {
            owner: None,
            epoch: held.epoch + 1,
            ..held.clone()
        };
        Self::set_ownership(&mut tx, &next).await?;
        tx.commit().await.map_err(backend)?;
        Ok(next)
    }

    pub(super) async fn ownerships_under(&self, prefix: &str) -> MetaResult<Vec<Ownership>> {
        let rows = sqlx::query(
            "SELECT resource, owner, epoch FROM owners WHERE resource LIKE ? ESCAPE '\\' ORDER BY resource",
        )
        .bind(like_prefix(prefix))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| Ownership {
                resource: r.get(0),
                owner: r.get::<Option<i64>, _>(1).map(|o| o as u32),
                epoch: r.get::<i64, _>(2) as u64,
            })
            .collect())
    }

    pub(super) async fn new_lease(&self, ttl: std::time::Duration) -> MetaResult<LeaseId> {
        let ttl_ms = ttl.as_millis().div_ceil(1000).max(1) as i64 * 1000;
        let row = sqlx::query("INSERT INTO leases (ttl_ms, expires_ms) VALUES (?, ?) RETURNING id")
            .bind(ttl_ms)
            .bind(now_ms() + ttl_ms)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.get(0))
    }

    pub(super) async fn renew_lease(&self, lease: LeaseId) -> MetaResult<bool> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        Self::sweep_leases(&mut tx).await?;
        let res = sqlx::query("UPDATE leases SET expires_ms = ? + ttl_ms WHERE id = ?")
            .bind(now_ms())
            .bind(lease)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(res.rows_affected() > 0)
    }

    pub(super) async fn end_lease(&self, lease: LeaseId) -> MetaResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("DELETE FROM nodes WHERE lease = ?")
            .bind(lease)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM leases WHERE id = ?")
            .bind(lease)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    pub(super) async fn put_node(&self, node: &NodeMeta, lease: Option<LeaseId>) -> MetaResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        Self::sweep_leases(&mut tx).await?;
        if let Some(id) = lease {
            let alive = sqlx::query("SELECT 1 FROM leases WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            if alive.is_none() {
                return Err(MetaError::NotFound {
                    kind: "lease",
                    name: id.to_string(),
                });
            }
        }
        sqlx::query(
            "INSERT INTO nodes (id, host, port, state, updated_ms, lease) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT(id) DO UPDATE SET host = excluded.host, port = excluded.port, \
             state = excluded.state, updated_ms = excluded.updated_ms, lease = excluded.lease",
        )
        .bind(node.id as i64)
        .bind(&node.host)
        .bind(node.port as i64)
        .bind(&node.state)
        .bind(node.updated_ms)
        .bind(lease)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    pub(super) async fn live_nodes(&self) -> MetaResult<Vec<NodeMeta>> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        Self::sweep_leases(&mut tx).await?;
        let rows = sqlx::query("SELECT id, host, port, state, updated_ms FROM nodes ORDER BY id")
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| NodeMeta {
                id: r.get::<i64, _>(0) as u32,
                host: r.get(1),
                port: r.get::<i64, _>(2) as u32,
                state: r.get(3),
                updated_ms: r.get(4),
            })
            .collect())
    }
}
