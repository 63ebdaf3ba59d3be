//! Connector checkpoints in the MetaStore, written together: every task on the node stores its
//! checkpoint at most once per tick (`CHECKPOINT_EVERY`), and one writer commits all the
//! checkpoints stored while the previous commit was in flight in one transaction (group
//! commit), so a node with a hundred tasks makes a few metastore round trips a tick, not a
//! hundred.
//!
//! Guarantees: `store` returns only once a commit holding that checkpoint (or a later one of
//! the same task) is durable; a failed commit fails every `store` it carried (a commit is all
//! or nothing; one that failed as `Unavailable` may still have been written, as the MetaStore
//! says); the writer adds no wait of its own: a lone checkpoint is committed at once. A store
//! whose caller stopped waiting is still committed: a connector created again under the same
//! name starts without the old checkpoint because creating a connector clears it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use hstream_runtime::{Checkpoints, ConnectorError};
use tokio::sync::{mpsc, oneshot};

use crate::meta::{Checkpoint, Commit, MetaError, MetaStore, Ownership, connector_checkpoint};

/// Checkpoints per commit: etcd allows 128 operations in one transaction by default.
const PER_COMMIT: usize = 64;

type Reply = oneshot::Sender<Result<(), String>>;

pub struct MetaCheckpoints {
    meta: Arc<dyn MetaStore>,
    queue: mpsc::UnboundedSender<(Checkpoint, Option<Ownership>, Reply)>,
    /// Commits made so far.
    commits: Arc<AtomicU64>,
}

impl MetaCheckpoints {
    /// Starts the writer (it ends when this is dropped); needs a Tokio runtime.
    pub fn new(meta: Arc<dyn MetaStore>) -> Self {
        let (queue, inbox) = mpsc::unbounded_channel();
        let commits = Arc::new(AtomicU64::new(0));
        tokio::spawn(write(meta.clone(), inbox, commits.clone()));
        MetaCheckpoints { meta, queue, commits }
    }

    /// Stores `task`'s checkpoint, fenced by `fence` (nothing is written once the ownership
    /// moved on); returns once committed, as [`Checkpoints::store`].
    async fn store_fenced(
        &self,
        task: &str,
        version: u32,
        data: Vec<u8>,
        fence: Option<Ownership>,
    ) -> Result<(), ConnectorError> {
        let cp = Checkpoint {
            owner: connector_checkpoint(task),
            version,
            data,
        };
        let (reply, answer) = oneshot::channel();
        let stopped = || ConnectorError::external("the checkpoint writer has stopped");
        self.queue.send((cp, fence, reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?.map_err(ConnectorError::external)
    }

    /// Commits made so far (each holds one or more tasks' checkpoints).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

/// One task's checkpoints, fenced by the ownership that copy of the task runs under: a copy
/// that lost it (another node claimed the task) commits nothing, even if a newer copy of the
/// same task runs on this node later.
pub struct TaskCheckpoints {
    pub inner: Arc<MetaCheckpoints>,
    pub fence: Ownership,
}

#[async_trait]
impl Checkpoints for TaskCheckpoints {
    async fn load(&self, task: &str) -> Result<Option<(u32, Vec<u8>)>, ConnectorError> {
        self.inner.load(task).await
    }

    async fn store(&self, task: &str, version: u32, data: Vec<u8>) -> Result<(), ConnectorError> {
        self.inner
            .store_fenced(task, version, data, Some(self.fence.clone()))
            .await
    }
}

/// Commits whatever is queued, as one transaction per up to [`PER_COMMIT`] tasks, until every
/// sender is gone.
async fn write(
    meta: Arc<dyn MetaStore>,
    mut inbox: mpsc::UnboundedReceiver<(Checkpoint, Option<Ownership>, Reply)>,
    commits: Arc<AtomicU64>,
) {
    let mut queued = Vec::new();
    while inbox.recv_many(&mut queued, PER_COMMIT * 4).await > 0 {
        // A task that stored twice meanwhile: its latest checkpoint stands for both.
        let mut latest: BTreeMap<String, (Checkpoint, Option<Ownership>)> = BTreeMap::new();
        let mut replies: BTreeMap<String, Vec<Reply>> = BTreeMap::new();
        for (cp, fence, reply) in queued.drain(..) {
            replies.entry(cp.owner.clone()).or_default().push(reply);
            latest.insert(cp.owner.clone(), (cp, fence));
        }
        let all: Vec<(Checkpoint, Option<Ownership>)> = latest.into_values().collect();
        for part in all.chunks(PER_COMMIT) {
            let res = commit(&meta, part, &commits).await;
            // One task's lost ownership fails the whole transaction: each then alone, so
            // only the tasks fenced out fail.
            let results: Vec<Result<(), String>> = match res {
                Err(MetaError::Fenced { .. }) if part.len() > 1 => {
                    let mut each = Vec::with_capacity(part.len());
                    for one in part.chunks(1) {
                        each.push(commit(&meta, one, &commits).await.map_err(|e| e.to_string()));
                    }
                    each
                }
                res => vec![res.map_err(|e| e.to_string()); part.len()],
            };
            for ((cp, _), res) in part.iter().zip(results) {
                for reply in replies.remove(&cp.owner).unwrap_or_default() {
                    // A task that stopped waiting has nothing to learn.
                    let _ = reply.send(res.clone());
                }
            }
        }
    }
}

/// Commits `part`'s checkpoints in one transaction, fenced by their tasks' ownerships.
async fn commit(
    meta: &Arc<dyn MetaStore>,
    part: &[(Checkpoint, Option<Ownership>)],
    commits: &AtomicU64,
) -> Result<(), MetaError> {
    let checkpoints: Vec<Checkpoint> = part.iter().map(|(cp, _)| cp.clone()).collect();
    let fences: Vec<Ownership> = part.iter().filter_map(|(_, f)| f.clone()).collect();
    let res = meta
        .commit(&Commit {
            checkpoints: &checkpoints,
            fences: &fences,
            ..Default::default()
        })
        .await;
    commits.fetch_add(1, Ordering::Relaxed);
    res
}

#[async_trait]
impl Checkpoints for MetaCheckpoints {
    async fn load(&self, task: &str) -> Result<Option<(u32, Vec<u8>)>, ConnectorError> {
        let cp = self
            .meta
            .get_checkpoint(&connector_checkpoint(task))
            .await
            .map_err(|e| ConnectorError::external(e.to_string()))?;
        Ok(cp.map(|c| (c.version, c.data)))
    }

    async fn store(&self, task: &str, version: u32, data: Vec<u8>) -> Result<(), ConnectorError> {
        self.store_fenced(task, version, data, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::SqliteMetaStore;

    /// Many tasks storing at once: each store returns after its checkpoint is durable, and
    /// the stores share commits (fewer commits than stores).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_stores_share_commits() {
        let meta: Arc<dyn MetaStore> = Arc::new(SqliteMetaStore::in_memory().await.unwrap());
        let cps = Arc::new(MetaCheckpoints::new(meta.clone()));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let cps = cps.clone();
                tokio::spawn(async move {
                    for round in 0..5u8 {
                        cps.store(&format!("t{i}"), 1, vec![round]).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        for i in 0..200 {
            assert_eq!(
                cps.load(&format!("t{i}")).await.unwrap(),
                Some((1, vec![4])),
                "task t{i}"
            );
        }
        let commits = cps.commits();
        assert!(commits < 1000, "1000 stores took {commits} commits: none were shared");
        println!("1000 checkpoint stores by 200 tasks: {commits} commits");
    }
}
