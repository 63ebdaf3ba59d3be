//! The local store: one append-only log per shard in segment files on this node's disk,
//! written by a small pool of group-commit writer threads. It keeps the store contract
//! (`../api.rs`) and, beyond it:
//!
//! - An append is acknowledged only after its bytes are written and, under
//!   [`FsyncPolicy::Always`], fsynced; under `Interval` a flusher fsyncs dirty shards every
//!   interval and under `Never` only rolls and shutdown do.
//! - Appends to one shard are stored in the order the writer received them; each gets the next
//!   LSN of its shard.
//! - A failed write is undone before it is reported; a failed fsync poisons the shard.
//! - One shard that cannot be opened does not stop the store: it is kept unavailable (its files
//!   untouched, every read and write failing with [`StoreError::Unavailable`]).
//! - The store never deletes a shard directory on its own: only [`LogStore::delete_shard`]
//!   does, when the caller asks; directories it is told are unknown go to `quarantine/`.
//!
//! The store's root also holds `cluster-id`, the id of the cluster (and so of the metastore)
//! whose shards it holds; `node.rs` refuses to start when the two disagree.
//!
//! Group commit: a writer thread takes every queued append (up to a byte budget), writes each
//! shard's share with one `write`, fsyncs each touched shard once, then makes the batches
//! visible and answers all of them.

mod adapter;
mod durable;
mod handles;
mod segment;
mod shard_log;
mod summary;

pub use adapter::{LocalShard, LocalStore};
pub use segment::MAX_PAYLOAD_LEN;
pub use shard_log::ShardLog;

use super::{Appended, ReadySet, StoreError, now_ms};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncPolicy {
    /// Fsync every group commit before acknowledging it.
    Always,
    /// Acknowledge after the write; fsync dirty shards every `fsync_interval`.
    Interval,
    /// Leave flushing to the OS (fsync only on segment roll and shutdown).
    Never,
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub segment_bytes: u64,
    pub index_interval_bytes: u64,
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
    pub writer_threads: usize,
    /// Bytes of appends a writer gathers into one group commit at most.
    pub group_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            segment_bytes: 256 << 20,
            index_interval_bytes: 4096,
            fsync: FsyncPolicy::Always,
            fsync_interval: Duration::from_millis(100),
            writer_threads: 2,
            group_bytes: 8 << 20,
        }
    }
}

struct Job {
    shard: Arc<ShardLog>,
    payload: Bytes,
    batch_size: u32,
    compression: u8,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
}

pub struct LogStore {
    root: PathBuf,
    opts: StoreOptions,
    shards: RwLock<HashMap<u64, Arc<ShardLog>>>,
    writers: RwLock<Vec<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Dropping these ends the background threads (flusher, janitor).
    stops: Mutex<Vec<std::sync::mpsc::Sender<()>>>,
    /// Wakes the janitor at once (the append handle budget is spent).
    janitor: Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

/// File in the store's root naming the cluster its shards belong to.
pub const CLUSTER_ID_FILE: &str = "cluster-id";

/// Fsync latency of shard logs, for the metrics endpoint.
pub static FSYNC_SECONDS: std::sync::LazyLock<prometheus_client::metrics::histogram::Histogram> =
    std::sync::LazyLock::new(|| {
        // The same buckets as the server's other latencies: 50 µs doubling up to about 52 s.
        prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 21),
        )
    });

impl LogStore {
    /// Opens (recovering) every shard found under `root/shards`.
    pub fn open(root: &Path, opts: StoreOptions) -> Result<Arc<Self>, StoreError> {
        let shards_dir = root.join("shards");
        if !shards_dir.exists() {
            std::fs::create_dir_all(&shards_dir).map_err(|e| StoreError::io(&shards_dir, e))?;
            std::fs::File::open(root)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io(root, e))?;
        }
        let mut shards = HashMap::new();
        for entry in std::fs::read_dir(&shards_dir).map_err(|e| StoreError::io(&shards_dir, e))? {
            let entry = entry.map_err(|e| StoreError::io(&shards_dir, e))?;
            let Some(id) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            let log = match ShardLog::open(entry.path(), id, opts.clone()) {
                Ok(log) => log,
                Err(e) => {
                    tracing::error!(shard = id, dir = %entry.path().display(), error = %e,
                        "shard cannot be opened; it stays unavailable and its files are kept as they are");
                    ShardLog::unavailable(entry.path(), id, opts.clone(), e.to_string())
                }
            };
            shards.insert(id, Arc::new(log));
        }
        let store = Arc::new(LogStore {
            root: root.to_owned(),
            opts: opts.clone(),
            shards: RwLock::new(shards),
            writers: RwLock::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            stops: Mutex::new(Vec::new()),
            janitor: Mutex::new(None),
        });
        let mut writers = Vec::new();
        let mut threads = Vec::new();
        for i in 0..opts.writer_threads.max(1) {
            let (tx, rx) = mpsc::channel::<Job>(4096);
            writers.push(tx);
            let opts = opts.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("log-writer-{i}"))
                    .spawn(move || writer_loop(rx, opts))
                    .map_err(|e| StoreError::io(root, e))?,
            );
        }
        if opts.fsync == FsyncPolicy::Interval {
            let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
            let weak = Arc::downgrade(&store);
            let every = opts.fsync_interval;
            threads.push(
                std::thread::Builder::new()
                    .name("log-flusher".into())
                    .spawn(move || {
                        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(every) {
                            let Some(store) = weak.upgrade() else { break };
                            store.sync_all();
                        }
                    })
                    .map_err(|e| StoreError::io(root, e))?,
            );
            store.stops.lock().expect("lock").push(stop_tx);
        }
        {
            let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
            let weak = Arc::downgrade(&store);
            threads.push(
                std::thread::Builder::new()
                    .name("log-janitor".into())
                    .spawn(move || {
                        let every = Duration::from_secs(1);
                        loop {
                            // A message is a kick; the sender's drop (shutdown) ends the thread.
                            if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) = stop_rx.recv_timeout(every) {
                                break;
                            }
                            let Some(store) = weak.upgrade() else { break };
                            store.close_idle_handles();
                        }
                    })
                    .map_err(|e| StoreError::io(root, e))?,
            );
            *store.janitor.lock().expect("lock") = Some(stop_tx);
        }
        *store.writers.write().expect("lock") = writers;
        *store.threads.lock().expect("lock") = threads;
        Ok(store)
    }

    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    fn shard_dir(&self, id: u64) -> PathBuf {
        self.root.join("shards").join(id.to_string())
    }

    pub fn create_shard(&self, id: u64) -> Result<Arc<ShardLog>, StoreError> {
        let mut shards = self.shards.write().expect("lock");
        if shards.contains_key(&id) {
            return Err(StoreError::ShardExists(id));
        }
        let log = Arc::new(ShardLog::create(self.shard_dir(id), id, self.opts.clone())?);
        shards.insert(id, log.clone());
        Ok(log)
    }

    /// Removes a shard and its files. Appends already queued for it fail.
    pub fn delete_shard(&self, id: u64) -> Result<(), StoreError> {
        let removed = self.shards.write().expect("lock").remove(&id);
        if let Some(log) = removed {
            log.mark_deleted();
        }
        let dir = self.shard_dir(id);
        handles::forget_dir(&dir);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&dir, e)),
        }
    }

    /// Registers a shard whose directory is missing as unavailable (never recreated empty:
    /// its LSNs would start again at 1).
    pub fn missing_shard(&self, id: u64) -> Arc<ShardLog> {
        let dir = self.shard_dir(id);
        let reason = format!("its directory {} is missing", dir.display());
        let log = Arc::new(ShardLog::unavailable(dir, id, self.opts.clone(), reason));
        self.shards.write().expect("lock").insert(id, log.clone());
        log
    }

    /// Moves a shard's directory to `<root>/quarantine/<id>` (or `<id>.<n>` if taken), out of
    /// the store, keeping every file.
    pub fn quarantine_shard(&self, id: u64) -> Result<PathBuf, StoreError> {
        let removed = self.shards.write().expect("lock").remove(&id);
        if let Some(log) = removed {
            log.mark_deleted();
        }
        let quarantine = self.root.join("quarantine");
        std::fs::create_dir_all(&quarantine).map_err(|e| StoreError::io(&quarantine, e))?;
        let mut to = quarantine.join(id.to_string());
        let mut n = 1;
        while to.exists() {
            to = quarantine.join(format!("{id}.{n}"));
            n += 1;
        }
        let from = self.shard_dir(id);
        handles::forget_dir(&from);
        std::fs::rename(&from, &to).map_err(|e| StoreError::io(&from, e))?;
        for dir in [&quarantine, &self.root.join("shards")] {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io(dir, e))?;
        }
        Ok(to)
    }

    /// The cluster id this store's root was tied to, if any.
    pub fn cluster_id(&self) -> Result<Option<String>, StoreError> {
        let path = self.root.join(CLUSTER_ID_FILE);
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
            Ok(_) => Err(StoreError::Corrupt(format!("{} is empty", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    /// Ties the store's root to a cluster id (written and fsynced under a temporary name, then
    /// renamed into place).
    pub fn set_cluster_id(&self, id: &str) -> Result<(), StoreError> {
        use std::io::Write;
        let path = self.root.join(CLUSTER_ID_FILE);
        let tmp = self.root.join(format!("{CLUSTER_ID_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{id}")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.root)?.sync_all()
        };
        write().map_err(|e| StoreError::io(&path, e))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn shard(&self, id: u64) -> Option<Arc<ShardLog>> {
        self.shards.read().expect("lock").get(&id).cloned()
    }

    pub fn shard_ids(&self) -> Vec<u64> {
        self.shards.read().expect("lock").keys().copied().collect()
    }

    /// Appends one batch; resolves once it is stored as the fsync policy requires.
    pub async fn append(
        &self,
        shard: &Arc<ShardLog>,
        payload: Bytes,
        batch_size: u32,
        compression: u8,
    ) -> Result<Appended, StoreError> {
        // A write opens its shard's append handle if closed: when the budget is spent, the
        // janitor makes room (it may fsync, so not here on the executor).
        if handles::active_open() >= handles::active_budget()
            && let Some(kick) = &*self.janitor.lock().expect("lock")
        {
            let _ = kick.send(());
        }
        let writer = {
            let writers = self.writers.read().expect("lock");
            if writers.is_empty() {
                return Err(StoreError::ShuttingDown);
            }
            writers[(shard.id % writers.len() as u64) as usize].clone()
        };
        let (reply, rx) = oneshot::channel();
        writer
            .send(Job {
                shard: shard.clone(),
                payload,
                batch_size,
                compression,
                reply,
            })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Bytes of every file under the store's root.
    pub fn disk_bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.root)
    }

    /// Fsyncs every shard with unsynced writes.
    pub fn sync_all(&self) {
        let shards: Vec<_> = self.shards.read().expect("lock").values().cloned().collect();
        for s in shards {
            if let Err(e) = s.sync_if_dirty() {
                tracing::error!(shard = s.id, error = %e, "fsync failed");
            }
        }
    }

    /// Closes the append handles of shards idle for a minute, and, while more than
    /// `handles::active_budget()` are open, of the longest idle (for a second at least).
    pub fn close_idle_handles(&self) {
        let shards: Vec<_> = self.shards.read().expect("lock").values().cloned().collect();
        for s in &shards {
            s.close_idle_handle(60_000);
        }
        if handles::active_open() > handles::active_budget() {
            Self::shed_handles(&shards, 0);
        }
    }

    /// Closes append handles (fsyncing what is unsynced), least recently written first, idle for
    /// at least `idle_ms`, until a quarter of the budget is free again. Janitor thread only.
    fn shed_handles(shards: &[Arc<ShardLog>], idle_ms: i64) {
        let mut by_age: Vec<_> = shards.iter().filter(|s| s.last_write_ms() > 0).collect();
        by_age.sort_by_key(|s| s.last_write_ms());
        for s in by_age {
            if handles::active_open() <= handles::active_budget() * 3 / 4 {
                break;
            }
            s.close_idle_handle(idle_ms);
        }
    }

    /// Segment files open now: (cached read handles, append handles).
    pub fn open_files() -> (usize, usize) {
        (handles::readers_open(), handles::active_open())
    }

    /// Stops taking appends, lets the writers finish what is queued, and fsyncs everything.
    pub fn shutdown(&self) {
        self.writers.write().expect("lock").clear();
        self.stops.lock().expect("lock").clear();
        self.janitor.lock().expect("lock").take();
        let threads = std::mem::take(&mut *self.threads.lock().expect("lock"));
        for t in threads {
            let _ = t.join();
        }
        self.sync_all();
        let shards: Vec<_> = self.shards.read().expect("lock").values().cloned().collect();
        for s in shards {
            if let Err(e) = s.release_reservation() {
                tracing::warn!(shard = s.id, error = %e, "could not release the lsn reservation; the next start skips it");
            }
        }
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        self.writers.get_mut().expect("lock").clear();
    }
}

fn writer_loop(mut rx: mpsc::Receiver<Job>, opts: StoreOptions) {
    let mut buf = Vec::with_capacity(1 << 20);
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        let mut bytes = jobs[0].payload.len();
        while bytes < opts.group_bytes {
            match rx.try_recv() {
                Ok(job) => {
                    bytes += job.payload.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        commit_group(jobs, &opts, &mut buf);
    }
}

fn commit_group(jobs: Vec<Job>, opts: &StoreOptions, buf: &mut Vec<u8>) {
    // Group by shard, keeping arrival order within each shard.
    let mut by_shard: Vec<(Arc<ShardLog>, Vec<Job>)> = Vec::new();
    for job in jobs {
        match by_shard.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &job.shard)) {
            Some((_, v)) => v.push(job),
            None => by_shard.push((job.shard.clone(), vec![job])),
        }
    }
    let mut written = Vec::with_capacity(by_shard.len());
    for (shard, jobs) in by_shard {
        let batches: Vec<(&[u8], u32, u8)> = jobs
            .iter()
            .map(|j| (&j.payload[..], j.batch_size, j.compression))
            .collect();
        match shard.write_group(&batches, buf) {
            Ok((pending, group)) => written.push((shard, jobs, pending, group)),
            Err(e) => fail_all(jobs, &e),
        }
    }
    let fsync = opts.fsync == FsyncPolicy::Always;
    for (shard, jobs, pending, group) in written {
        match shard.commit(&group, fsync) {
            Ok(()) => {
                for (job, p) in jobs.into_iter().zip(pending) {
                    let _ = job.reply.send(Ok(Appended {
                        lsn: p.lsn,
                        timestamp_ms: p.timestamp_ms,
                    }));
                }
            }
            Err(e) => fail_all(jobs, &e),
        }
    }
}

fn fail_all(jobs: Vec<Job>, e: &StoreError) {
    tracing::error!(error = %e, "append failed");
    for job in jobs {
        let err = match e {
            StoreError::ShardDeleted(id) => StoreError::ShardDeleted(*id),
            StoreError::ShuttingDown => StoreError::ShuttingDown,
            StoreError::Poisoned(r) => StoreError::Poisoned(r.clone()),
            StoreError::Unavailable { shard, reason } => StoreError::Unavailable {
                shard: *shard,
                reason: reason.clone(),
            },
            other => StoreError::Failed(other.to_string()),
        };
        let _ = job.reply.send(Err(err));
    }
}

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;
