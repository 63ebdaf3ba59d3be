//! Open files of segments, bounded so that the number of shards does not decide the number of
//! open file descriptors (a node with 100,000 shards must start under a limit of 20,000).
//!
//! - Read handles come from one process-wide LRU cache of [`read_handles`] files, keyed by
//!   path; a handle stays valid while a reader holds it, even if the cache drops it or the file
//!   is unlinked. Whoever removes or replaces segment files at a path calls [`forget`] or
//!   [`forget_dir`] first, so a cached handle never outlives its file's name.
//! - Append handles of active segments are opened on a shard's first write ([`open_active`]) and
//!   counted; the store's janitor closes those of idle, fully synced shards, so that at most
//!   about [`active_budget`] are open at once.
//!
//! Both bounds follow the process's open-file limit (RLIMIT_NOFILE): an eighth of it for read
//! handles (at most 1024), a quarter for append handles (at most 4096).

use std::fs::{File, OpenOptions};
use std::io;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

/// The soft open-file limit of this process (1024 if it cannot be read).
fn nofile() -> usize {
    static LIMIT: LazyLock<usize> = LazyLock::new(|| {
        rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map_or(1 << 20, |v| usize::try_from(v).unwrap_or(usize::MAX))
    });
    *LIMIT
}

/// Read handles kept open at most.
pub fn read_handles() -> usize {
    (nofile() / 8).clamp(16, 1024)
}

/// Append handles the janitor keeps open at most (beyond it, idle shards' are closed).
pub fn active_budget() -> usize {
    (nofile() / 4).clamp(16, 4096)
}

static READERS: LazyLock<Mutex<lru::LruCache<PathBuf, Arc<File>>>> =
    LazyLock::new(|| Mutex::new(lru::LruCache::new(NonZeroUsize::new(read_handles()).expect("non-zero"))));

static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// A read handle on the file at `path`.
pub fn reader(path: &Path) -> io::Result<Arc<File>> {
    // Opened under the cache's lock, so a `forget` before an unlink cannot be overtaken by an
    // insert of the file it forgot.
    let mut cache = READERS.lock().expect("handle cache");
    if let Some(f) = cache.get(path) {
        return Ok(f.clone());
    }
    let f = Arc::new(File::open(path)?);
    cache.put(path.to_owned(), f.clone());
    Ok(f)
}

/// Drops the cached handle of `path` (its file is about to go or be replaced).
pub fn forget(path: &Path) {
    READERS.lock().expect("handle cache").pop(path);
}

/// Drops the cached handles of every file under `dir`.
pub fn forget_dir(dir: &Path) {
    let mut cache = READERS.lock().expect("handle cache");
    let doomed: Vec<PathBuf> = cache
        .iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with(dir))
        .cloned()
        .collect();
    for p in doomed {
        cache.pop(&p);
    }
}

/// Read handles open now (cached ones).
pub fn readers_open() -> usize {
    READERS.lock().expect("handle cache").len()
}

/// An append handle on a shard's active segment, counted while open.
pub struct ActiveFile(File);

impl std::ops::Deref for ActiveFile {
    type Target = File;
    fn deref(&self) -> &File {
        &self.0
    }
}

impl std::ops::DerefMut for ActiveFile {
    fn deref_mut(&mut self) -> &mut File {
        &mut self.0
    }
}

impl Drop for ActiveFile {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn open_active(path: &Path) -> io::Result<ActiveFile> {
    let f = OpenOptions::new().append(true).open(path)?;
    ACTIVE.fetch_add(1, Ordering::Relaxed);
    Ok(ActiveFile(f))
}

/// Append handles open now.
pub fn active_open() -> usize {
    ACTIVE.load(Ordering::Relaxed)
}
