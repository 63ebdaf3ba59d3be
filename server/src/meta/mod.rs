//! The MetaStore: everything about the system that is not record data — streams and their
//! shards, subscriptions and their committed progress, shard readers, connectors and their
//! checkpoints, cluster members, and a small key-value space per owner.
//!
//! Guarantees every implementation gives (checked by [`contract::run`]):
//! - each call is atomic: a stream is created with all of its shards or not at all, and deleting
//!   it removes its shards in the same step;
//! - creating something that exists fails with [`MetaError::AlreadyExists`], and never overwrites;
//! - a successful write is durable when the call returns;
//! - listings are ordered by name (or id) so callers see a stable order;
//! - ownership epochs of a resource only grow, and a write fenced by an ownership that is no
//!   longer current writes nothing ([`MetaError::Fenced`]);
//! - a node record bound to a lease vanishes once the lease is not renewed within its time to
//!   live.
//!
//! The trait is shaped so a ZooKeeper implementation would fit as well as etcd's: a call is a
//! `multi` of znode writes, a claim is a versioned `setData`, a fence is a `check` op, and a lease
//! is a session (ephemeral znodes vanish with it).

pub mod contract;
pub mod copy;
mod etcd;
mod sqlite;

pub use etcd::{EtcdMetaStore, EtcdOptions};
pub use sqlite::SqliteMetaStore;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("metastore value is invalid: {0}")]
    Invalid(String),
    #[error("metastore backend failed: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The backend cannot be reached or cannot commit now (etcd down or without a quorum).
    /// Retrying later is the remedy; a write that timed out may still have been applied.
    #[error("metastore unavailable: {0}")]
    Unavailable(String),
    /// The backend refused us: a password or certificate it does not accept, a user without
    /// the permission. Retrying will not help; the configuration must change.
    #[error("metastore refused access: {0}")]
    Denied(String),
    /// A claim or a fenced write found the ownership it was conditioned on no longer current
    /// (another node took the resource, or the caller's view is stale). Nothing was written.
    #[error("{resource:?} is not held as the write expected ({expected}); now {current}")]
    Fenced {
        resource: String,
        expected: String,
        current: String,
    },
}

pub type MetaResult<T> = Result<T, MetaError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMeta {
    pub name: String,
    pub replication_factor: u32,
    /// Seconds records are kept; 0 keeps them until trimmed.
    pub backlog_secs: u32,
    pub shard_count: u32,
    pub created_ms: i64,
    /// Set when the stream was deleted with `force` while subscriptions still read it.
    pub archived: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMeta {
    pub id: u64,
    pub stream: String,
    pub start_key: u128,
    pub end_key: u128,
    pub epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    Earliest,
    Latest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionMeta {
    pub id: String,
    pub stream: String,
    pub ack_timeout_secs: i32,
    pub max_unacked: i32,
    pub offset: StartOffset,
    pub created_ms: i64,
}

/// Committed progress of a subscription on one shard: every LSN below `next_lsn` is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardProgress {
    pub shard_id: u64,
    pub next_lsn: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderMeta {
    pub id: String,
    pub stream: String,
    pub shard_id: u64,
    /// First LSN the reader returns when (re)opened.
    pub start_lsn: u64,
    pub timeout_ms: u32,
    /// The offset as the client sent it, encoded by the caller (echoed back on create).
    pub offset_spec: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorMeta {
    pub name: String,
    /// "SOURCE" or "SINK".
    pub kind: String,
    pub target: String,
    /// JSON object text of the connector options.
    pub config: String,
    pub status: String,
    pub created_ms: i64,
    pub node: u32,
}

/// A typed, versioned position blob owned by a task (a connector, a subscription, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub owner: String,
    pub version: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMeta {
    pub id: u32,
    pub host: String,
    pub port: u32,
    pub state: String,
    pub updated_ms: i64,
}

/// Who holds a resource (a subscription, a shard reader, a connector task, …) and under which
/// epoch. A resource's epoch only grows: each claim and each release makes the next one, and
/// the record stays when the resource is deleted, so an epoch is never seen twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    pub resource: String,
    /// The holding node; `None` once released.
    pub owner: Option<u32>,
    pub epoch: u64,
}

impl Ownership {
    /// How `current` reads in a [`MetaError::Fenced`] message.
    pub fn describe(current: Option<&Ownership>) -> String {
        match current {
            None => "never claimed".into(),
            Some(Ownership {
                owner: Some(node),
                epoch,
                ..
            }) => format!("node {node} under epoch {epoch}"),
            Some(Ownership { owner: None, epoch, .. }) => format!("nobody under epoch {epoch}"),
        }
    }

    /// The error of a claim or write that expected `expected` and found `current`.
    pub fn fenced(resource: &str, expected: String, current: Option<&Ownership>) -> MetaError {
        MetaError::Fenced {
            resource: resource.to_owned(),
            expected,
            current: Self::describe(current),
        }
    }
}

/// A lease: what is bound to it vanishes when it is not renewed within its time to live.
pub type LeaseId = i64;

/// The writes an owner makes at each tick, as one atomic step: a subscription's progress and
/// any checkpoints (its ack checkpoint; or the checkpoints of several connector tasks), written
/// only if every fence is still current.
#[derive(Debug, Clone, Copy, Default)]
pub struct Commit<'a> {
    /// A subscription and its progress on some of its shards (progress never moves back).
    pub progress: Option<(&'a str, &'a [ShardProgress])>,
    pub checkpoints: &'a [Checkpoint],
    /// Ownerships that must still be current, holder and epoch, for anything to be written.
    pub fences: &'a [Ownership],
}

/// A change to the streams, as [`MetaStore::watch_streams`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamChange {
    /// Created or rewritten (archived under a new name, …): the stream as it is now, with its
    /// shards in id order.
    Put(StreamMeta, Vec<ShardMeta>),
    /// Removed, with its shards (a stream archived under a new name is removed under the old):
    /// its name and, when the backend says, the shard ids it had (so a follower does not
    /// remove a newer stream of the same name).
    Deleted { name: String, shard_ids: Option<Vec<u64>> },
    /// Changes may have been missed: re-read every stream. Also the first event, once the
    /// watch is in place, so what changed before it is read once.
    Resync,
}

pub type StreamChanges = futures::stream::BoxStream<'static, StreamChange>;

/// Wall-clock unix milliseconds (lease deadlines).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Owner of a connector task's checkpoint, which lives and dies with the connector.
pub fn connector_checkpoint(name: &str) -> String {
    format!("connector/{name}")
}

/// Owner of a subscription's ack checkpoint, which lives and dies with the subscription.
pub fn subscription_checkpoint(id: &str) -> String {
    format!("subscription/{id}")
}

#[async_trait]
pub trait MetaStore: Send + Sync {
    // --- identity
    /// The id of the cluster whose metadata this store holds. With `proposed`, sets it when
    /// none is set yet (atomically: of two racing proposals one wins, and a set id is never
    /// overwritten); returns the id in effect either way (`None`: never set).
    async fn cluster_id(&self, proposed: Option<&str>) -> MetaResult<Option<String>>;

    // --- streams and shards
    /// Hands out `count` fresh shard ids, never returned again; with `count` 0, returns the
    /// next id it would hand out (every id below it was handed out at some time).
    async fn allocate_shard_ids(&self, count: u32) -> MetaResult<u64>;
    async fn create_stream(&self, stream: &StreamMeta, shards: &[ShardMeta]) -> MetaResult<()>;
    /// Live (not archived) stream by name.
    async fn get_stream(&self, name: &str) -> MetaResult<Option<StreamMeta>>;
    /// Live streams whose name starts with `prefix`.
    async fn list_streams(&self, prefix: &str) -> MetaResult<Vec<StreamMeta>>;
    /// Streams archived by a forced delete, still read by their subscriptions.
    async fn list_archived_streams(&self) -> MetaResult<Vec<StreamMeta>>;
    /// Removes a stream (live or archived) and its shards; returns the removed shards.
    async fn delete_stream(&self, name: &str) -> MetaResult<Vec<ShardMeta>>;
    /// Renames a stream out of the live namespace, keeping its shards for its subscriptions.
    async fn archive_stream(&self, name: &str, archived_name: &str) -> MetaResult<()>;
    async fn list_shards(&self, stream: &str) -> MetaResult<Vec<ShardMeta>>;
    /// Changes to the streams committed by any node from now on, in commit order, beginning
    /// with a `Resync`; the stream reconnects by itself and ends only when dropped. A
    /// single-node store (SQLite) reports only the `Resync`: its node mirrors its own changes.
    async fn watch_streams(&self) -> MetaResult<StreamChanges>;
    async fn get_shard(&self, id: u64) -> MetaResult<Option<ShardMeta>>;
    async fn all_shard_ids(&self) -> MetaResult<Vec<u64>>;

    // --- subscriptions
    /// Creates a subscription together with its starting progress on each shard (clearing any
    /// progress or ack checkpoint a deleted subscription of that name left).
    async fn create_subscription(&self, sub: &SubscriptionMeta, start: &[ShardProgress]) -> MetaResult<()>;
    async fn get_subscription(&self, id: &str) -> MetaResult<Option<SubscriptionMeta>>;
    async fn list_subscriptions(&self, prefix: &str) -> MetaResult<Vec<SubscriptionMeta>>;
    async fn subscriptions_of_stream(&self, stream: &str) -> MetaResult<Vec<SubscriptionMeta>>;
    /// Removes a subscription, its progress and its ack checkpoint
    /// ([`subscription_checkpoint`]), and, when it was the last subscription of an archived
    /// stream, that stream and its shards, all in one step. `None` when it did not exist; else
    /// the shards removed with an archived stream (usually none).
    async fn delete_subscription(&self, id: &str) -> MetaResult<Option<Vec<ShardMeta>>>;
    /// Writes a [`Commit`] all or nothing: `Fenced` (and nothing written) when one of its fences
    /// is not current.
    async fn commit(&self, commit: &Commit<'_>) -> MetaResult<()>;
    /// Stores progress for several shards at once (all or nothing). Progress never moves back.
    async fn commit_progress(&self, sub: &str, progress: &[ShardProgress]) -> MetaResult<()> {
        self.commit(&Commit {
            progress: Some((sub, progress)),
            ..Default::default()
        })
        .await
    }
    async fn get_progress(&self, sub: &str) -> MetaResult<Vec<ShardProgress>>;

    // --- shard readers
    async fn create_reader(&self, reader: &ReaderMeta) -> MetaResult<()>;
    async fn get_reader(&self, id: &str) -> MetaResult<Option<ReaderMeta>>;
    async fn list_readers(&self) -> MetaResult<Vec<ReaderMeta>>;
    async fn delete_reader(&self, id: &str) -> MetaResult<bool>;

    // --- connectors and checkpoints
    /// Creates a connector, clearing any checkpoint or key-value an earlier connector of that
    /// name left (a write still in flight when it was deleted).
    async fn create_connector(&self, c: &ConnectorMeta) -> MetaResult<()>;
    async fn get_connector(&self, name: &str) -> MetaResult<Option<ConnectorMeta>>;
    async fn list_connectors(&self) -> MetaResult<Vec<ConnectorMeta>>;
    /// Replaces config and status of an existing connector.
    async fn update_connector(&self, c: &ConnectorMeta) -> MetaResult<()>;
    /// Sets only the config (JSON text) of an existing connector.
    async fn set_connector_config(&self, name: &str, config: &str) -> MetaResult<()>;
    /// Sets only the status of an existing connector; with `fence`, only while that ownership
    /// is still current (`Fenced`, and nothing written, otherwise), so a copy that lost its
    /// task cannot overwrite what the new holder reports.
    async fn set_connector_status(&self, name: &str, status: &str, fence: Option<&Ownership>) -> MetaResult<()>;
    /// Removes a connector and the checkpoints and key-values it owns.
    async fn delete_connector(&self, name: &str) -> MetaResult<bool>;
    async fn put_checkpoint(&self, cp: &Checkpoint) -> MetaResult<()> {
        self.commit(&Commit {
            checkpoints: std::slice::from_ref(cp),
            ..Default::default()
        })
        .await
    }
    async fn get_checkpoint(&self, owner: &str) -> MetaResult<Option<Checkpoint>>;
    async fn delete_checkpoint(&self, owner: &str) -> MetaResult<bool>;
    async fn kv_set(&self, owner: &str, key: &str, value: &[u8]) -> MetaResult<()>;
    async fn kv_get(&self, owner: &str, key: &str) -> MetaResult<Option<Vec<u8>>>;

    // --- ownership (fencing) and leases
    /// Makes `owner` hold `resource` if the resource's epoch is still `expected` (0: never
    /// claimed), moving it to `expected + 1`; `Fenced`, naming the current holder, otherwise.
    async fn claim(&self, resource: &str, owner: u32, expected: u64) -> MetaResult<Ownership>;
    /// Gives `held` up if it is still current: nobody holds the resource, under the next epoch.
    async fn release(&self, held: &Ownership) -> MetaResult<Ownership>;
    async fn ownership(&self, resource: &str) -> MetaResult<Option<Ownership>>;
    /// Ownership records of the resources whose name starts with `prefix`, by resource.
    async fn list_ownerships(&self, prefix: &str) -> MetaResult<Vec<Ownership>>;
    /// A new lease living `ttl` (rounded up to whole seconds; a backend may impose a minimum).
    async fn grant_lease(&self, ttl: std::time::Duration) -> MetaResult<LeaseId>;
    /// Renews a lease for another time to live; `false` when it had already expired (what
    /// was bound to it is gone).
    async fn keep_lease_alive(&self, lease: LeaseId) -> MetaResult<bool>;
    /// Ends a lease now (a lease already gone is no error); what was bound to it vanishes.
    async fn revoke_lease(&self, lease: LeaseId) -> MetaResult<()>;

    // --- cluster
    /// Writes a node's record; with a lease, the record vanishes with it (`NotFound` when the
    /// lease has expired).
    async fn upsert_node(&self, node: &NodeMeta, lease: Option<LeaseId>) -> MetaResult<()>;
    async fn list_nodes(&self) -> MetaResult<Vec<NodeMeta>>;
    async fn remove_node(&self, id: u32) -> MetaResult<bool>;

    async fn close(&self);
}
