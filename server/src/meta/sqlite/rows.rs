//! The SQLite MetaStore's schema and how its rows map to the metadata types.

use sqlx::Row;

use super::super::*;

pub(super) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS streams (name TEXT PRIMARY KEY, replication_factor INTEGER NOT NULL,
        backlog_secs INTEGER NOT NULL, shard_count INTEGER NOT NULL, created_ms INTEGER NOT NULL,
        archived INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS shards (id INTEGER PRIMARY KEY, stream TEXT NOT NULL,
        start_key TEXT NOT NULL, end_key TEXT NOT NULL, epoch INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS shards_by_stream ON shards(stream)",
    "CREATE TABLE IF NOT EXISTS subscriptions (id TEXT PRIMARY KEY, stream TEXT NOT NULL,
        ack_timeout_secs INTEGER NOT NULL, max_unacked INTEGER NOT NULL, start_offset INTEGER NOT NULL,
        created_ms INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS subscriptions_by_stream ON subscriptions(stream)",
    "CREATE TABLE IF NOT EXISTS sub_progress (sub TEXT NOT NULL, shard_id INTEGER NOT NULL,
        next_lsn INTEGER NOT NULL, PRIMARY KEY (sub, shard_id))",
    "CREATE TABLE IF NOT EXISTS readers (id TEXT PRIMARY KEY, stream TEXT NOT NULL, shard_id INTEGER NOT NULL,
        start_lsn INTEGER NOT NULL, timeout_ms INTEGER NOT NULL, offset_spec BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS connectors (name TEXT PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL,
        config TEXT NOT NULL, status TEXT NOT NULL, created_ms INTEGER NOT NULL, node INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS checkpoints (owner TEXT PRIMARY KEY, version INTEGER NOT NULL, data BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kv (owner TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
        PRIMARY KEY (owner, key))",
    "CREATE TABLE IF NOT EXISTS nodes (id INTEGER PRIMARY KEY, host TEXT NOT NULL, port INTEGER NOT NULL,
        state TEXT NOT NULL, updated_ms INTEGER NOT NULL)",
    // A resource's holder (NULL once released) and epoch; rows are never deleted.
    "CREATE TABLE IF NOT EXISTS owners (resource TEXT PRIMARY KEY, owner INTEGER, epoch INTEGER NOT NULL)",
    // Leases by wall-clock deadline; expired ones are swept (with what is bound to them) by the
    // calls that would see them.
    "CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY AUTOINCREMENT, ttl_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL)",
];

/// Columns added after a table was first released: (table, column, definition), added to a
/// database that lacks them when it is opened.
pub(super) const ADDED_COLUMNS: &[(&str, &str, &str)] = &[("nodes", "lease", "INTEGER")];

pub(super) fn parse_key(s: &str) -> MetaResult<u128> {
    s.parse()
        .map_err(|_| MetaError::Invalid(format!("hash key {s:?} is not a decimal u128")))
}

pub(super) fn shard_from_row(r: &sqlx::sqlite::SqliteRow) -> MetaResult<ShardMeta> {
    Ok(ShardMeta {
        id: r.get::<i64, _>(0) as u64,
        stream: r.get(1),
        start_key: parse_key(r.get::<&str, _>(2))?,
        end_key: parse_key(r.get::<&str, _>(3))?,
        epoch: r.get::<i64, _>(4) as u64,
    })
}

pub(super) fn stream_from_row(r: &sqlx::sqlite::SqliteRow) -> StreamMeta {
    StreamMeta {
        name: r.get(0),
        replication_factor: r.get::<i64, _>(1) as u32,
        backlog_secs: r.get::<i64, _>(2) as u32,
        shard_count: r.get::<i64, _>(3) as u32,
        created_ms: r.get(4),
        archived: r.get::<i64, _>(5) != 0,
    }
}

pub(super) fn sub_from_row(r: &sqlx::sqlite::SqliteRow) -> SubscriptionMeta {
    SubscriptionMeta {
        id: r.get(0),
        stream: r.get(1),
        ack_timeout_secs: r.get::<i64, _>(2) as i32,
        max_unacked: r.get::<i64, _>(3) as i32,
        offset: if r.get::<i64, _>(4) == 0 {
            StartOffset::Earliest
        } else {
            StartOffset::Latest
        },
        created_ms: r.get(5),
    }
}

pub(super) fn reader_from_row(r: &sqlx::sqlite::SqliteRow) -> ReaderMeta {
    ReaderMeta {
        id: r.get(0),
        stream: r.get(1),
        shard_id: r.get::<i64, _>(2) as u64,
        start_lsn: r.get::<i64, _>(3) as u64,
        timeout_ms: r.get::<i64, _>(4) as u32,
        offset_spec: r.get(5),
    }
}

pub(super) fn connector_from_row(r: &sqlx::sqlite::SqliteRow) -> ConnectorMeta {
    ConnectorMeta {
        name: r.get(0),
        kind: r.get(1),
        target: r.get(2),
        config: r.get(3),
        status: r.get(4),
        created_ms: r.get(5),
        node: r.get::<i64, _>(6) as u32,
    }
}

pub(super) const STREAM_COLS: &str = "name, replication_factor, backlog_secs, shard_count, created_ms, archived";
pub(super) const SUB_COLS: &str = "id, stream, ack_timeout_secs, max_unacked, start_offset, created_ms";
pub(super) const READER_COLS: &str = "id, stream, shard_id, start_lsn, timeout_ms, offset_spec";
pub(super) const CONNECTOR_COLS: &str = "name, kind, target, config, status, created_ms, node";
