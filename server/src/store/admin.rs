//! What start-up and shutdown need of a store beyond the interface (`api.rs`): the shards it
//! holds, the cluster it belongs to, removing what the metastore does not account for, and
//! how to stop it. `node::reconcile` works through this alone, the same for the local store
//! (a data directory) and JetStream (a prefix shared by every node).

use std::sync::Arc;

use async_trait::async_trait;

use super::jetstream::JetStreamStore;
use super::{LocalShard, LocalStore, LogStore, Shard, Store, StoreError};

#[async_trait]
pub trait StoreAdmin: Send + Sync {
    /// How messages name it: "data directory /x", "JetStream store nats://…/HSTREAM".
    fn describe(&self) -> String;
    /// The flag that chooses it, for messages saying which setting may be wrong.
    fn flag(&self) -> &'static str;
    /// Ids of the shards it holds.
    fn shard_ids(&self) -> Vec<u64>;
    async fn cluster_id(&self) -> Result<Option<String>, StoreError>;
    /// Ties it to a cluster (once: a store tied to another id is an error).
    async fn set_cluster_id(&self, id: &str) -> Result<(), StoreError>;
    /// Whether a shard the metastore does not list, below its next shard id (an interrupted
    /// create or delete), may be removed now. A shared store keeps young ones: another node
    /// may be creating that stream.
    async fn orphan_removable(&self, id: u64) -> bool;
    async fn remove_shard(&self, id: u64) -> Result<(), StoreError>;
    /// Sets aside a shard the metastore never handed out; returns where it went.
    async fn quarantine_shard(&self, id: u64) -> Result<String, StoreError>;
    /// The shard's handle; for a listed shard the store lacks, one that answers every call
    /// with `Unavailable` (never recreated empty). Logs what is wrong.
    fn shard_or_missing(&self, stream: &str, id: u64) -> Arc<dyn Shard>;
    /// The store behind the interface.
    fn store(&self) -> Arc<dyn Store>;
    /// Flushes and stops (shutdown's last phase).
    async fn shutdown(&self);
}

/// The local segment store in a data directory.
pub struct LocalAdmin(pub Arc<LogStore>);

#[async_trait]
impl StoreAdmin for LocalAdmin {
    fn describe(&self) -> String {
        format!("data directory {}", self.0.root().display())
    }
    fn flag(&self) -> &'static str {
        "--data-dir"
    }
    fn shard_ids(&self) -> Vec<u64> {
        self.0.shard_ids()
    }
    async fn cluster_id(&self) -> Result<Option<String>, StoreError> {
        self.0.cluster_id()
    }
    async fn set_cluster_id(&self, id: &str) -> Result<(), StoreError> {
        self.0.set_cluster_id(id)
    }
    async fn orphan_removable(&self, _id: u64) -> bool {
        // One node owns its data directory: nobody else is creating anything in it.
        true
    }
    async fn remove_shard(&self, id: u64) -> Result<(), StoreError> {
        self.0.delete_shard(id)
    }
    async fn quarantine_shard(&self, id: u64) -> Result<String, StoreError> {
        Ok(self.0.quarantine_shard(id)?.display().to_string())
    }
    fn shard_or_missing(&self, stream: &str, id: u64) -> Arc<dyn Shard> {
        let log = match self.0.shard(id) {
            Some(l) => l,
            None => {
                tracing::error!(
                    stream,
                    shard = id,
                    "shard directory missing; the shard is unavailable (not recreated)"
                );
                self.0.missing_shard(id)
            }
        };
        if let Some(reason) = log.unavailable_reason() {
            tracing::error!(stream, shard = id, %reason, "shard unavailable");
        }
        Arc::new(LocalShard(log))
    }
    fn store(&self) -> Arc<dyn Store> {
        Arc::new(LocalStore(self.0.clone()))
    }
    async fn shutdown(&self) {
        let s = self.0.clone();
        let _ = tokio::task::spawn_blocking(move || s.shutdown()).await;
    }
}

#[async_trait]
impl StoreAdmin for JetStreamStore {
    fn describe(&self) -> String {
        format!("JetStream store {}", self.uri())
    }
    fn flag(&self) -> &'static str {
        "--store"
    }
    fn shard_ids(&self) -> Vec<u64> {
        JetStreamStore::shard_ids(self)
    }
    async fn cluster_id(&self) -> Result<Option<String>, StoreError> {
        JetStreamStore::cluster_id(self).await
    }
    async fn set_cluster_id(&self, id: &str) -> Result<(), StoreError> {
        JetStreamStore::set_cluster_id(self, id).await
    }
    async fn orphan_removable(&self, id: u64) -> bool {
        self.created_long_ago(id).await
    }
    async fn remove_shard(&self, id: u64) -> Result<(), StoreError> {
        Store::delete_shard(self, id).await
    }
    async fn quarantine_shard(&self, id: u64) -> Result<String, StoreError> {
        Err(StoreError::Backend(format!(
            "shard {id} of the JetStream store is not moved aside: remove its JetStream stream with the \
             nats CLI if it is not needed, or start with the metastore that lists it"
        )))
    }
    fn shard_or_missing(&self, stream: &str, id: u64) -> Arc<dyn Shard> {
        match Store::shard(self, id) {
            Some(s) => s,
            None => {
                tracing::error!(
                    stream,
                    shard = id,
                    "the shard's JetStream stream is missing; the shard is unavailable"
                );
                self.missing_shard(id)
            }
        }
    }
    fn store(&self) -> Arc<dyn Store> {
        self.self_arc()
    }
    async fn shutdown(&self) {
        self.flush().await;
    }
}
