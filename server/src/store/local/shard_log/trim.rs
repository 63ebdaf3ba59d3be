//! Trimming a shard: the trim point moves forward, durable before whole segments below it are
//! removed; one trim at a time, its fsyncs outside the shard lock.

use super::*;

impl ShardLog {
    /// Makes every LSN up to and including `upto` unreadable and frees whole segments below it.
    /// Returns the trim point in effect afterwards.
    pub fn trim(&self, upto: u64) -> Result<u64, StoreError> {
        // One trim at a time. Its fsyncs happen outside the shard lock, so appends (and the
        // other shards of the same writer thread) and position lookups never wait on them.
        let _trimming = self.trimming.lock().expect("trim lock poisoned");
        let (upto, unsynced) = {
            let inner = self.lock()?;
            if self.is_deleted() {
                return Err(StoreError::ShardDeleted(self.id));
            }
            if let Some(reason) = &inner.poisoned {
                return Err(StoreError::Poisoned(reason.clone()));
            }
            let upto = upto.min(self.visible_lsn());
            if upto <= inner.trim_point {
                return Ok(inner.trim_point);
            }
            let unsynced = match &inner.active {
                Some(active) if self.unsynced.load(Ordering::Acquire) => {
                    let seg = inner.segments.last().expect("active segment").path.clone();
                    let handle = active.try_clone().map_err(|e| StoreError::io(&seg, e))?;
                    Some((handle, seg))
                }
                _ => None,
            };
            (upto, unsynced)
        };
        // The trim point must never be durable ahead of the data it refers to (everything up
        // to it was written before this fsync began).
        if let Some((handle, seg)) = unsynced
            && let Err(e) = sync_data(self.id, &handle, &seg, "store::trim-fsync")
        {
            self.poison(&mut *self.lock()?, format!("fsync failed before a trim: {e}"));
            return Err(StoreError::io(&seg, e));
        }
        if let Err(e) = write_u64_file(self.id, &self.dir, TRIM_FILE, upto, "store::trim-file-fsync") {
            // The old or the new trim point may be on disk.
            self.poison(&mut *self.lock()?, format!("could not store the trim point: {e}"));
            return Err(e);
        }
        let doomed = {
            let mut inner = self.lock()?;
            inner.trim_point = upto;
            self.trim_point.store(upto, Ordering::Release);
            // A fully trimmed active segment is rolled so that its file can go too (its data is
            // already synced, so the roll's fsync has nothing to write).
            let active_last = inner.segments.last().expect("active segment").last_lsn();
            let active_base = inner.segments.last().expect("active segment").base;
            if active_last >= active_base && active_last <= upto && inner.next_lsn == active_last + 1 {
                self.roll(&mut inner)?;
            }
            Self::take_trimmed(&mut inner)
        };
        self.remove_segments(&doomed)?;
        Ok(upto)
    }

    /// Takes the segments wholly at or below the trim point (never the active one) out of the
    /// list; readers that hold them keep reading their open files.
    pub(super) fn take_trimmed(inner: &mut Inner) -> Vec<Arc<Segment>> {
        let trim = inner.trim_point;
        let last = inner.segments.len() - 1;
        let mut doomed = Vec::new();
        let mut i = 0;
        inner.segments.retain(|seg| {
            let drop = i < last && seg.last_lsn() <= trim;
            i += 1;
            if drop {
                doomed.push(seg.clone());
            }
            !drop
        });
        doomed
    }

    /// Deletes the files of segments taken out of the list, then fsyncs the directory (a failure
    /// of that poisons the shard). A file that cannot be removed is left for the next start.
    pub(super) fn remove_segments(&self, doomed: &[Arc<Segment>]) -> Result<(), StoreError> {
        if doomed.is_empty() {
            return Ok(());
        }
        for seg in doomed {
            handles::forget(&seg.path);
            let _ = fs::remove_file(summary::path(&seg.path));
            if let Err(e) = fs::remove_file(&seg.path) {
                tracing::warn!(shard = self.id, path = %seg.path.display(), error = %e,
                    "could not remove a trimmed segment; the next start removes it");
            }
        }
        if let Err(e) = sync_dir(self.id, &self.dir) {
            if let Ok(mut inner) = self.lock() {
                self.poison(
                    &mut inner,
                    format!("fsync of the shard directory failed after removing segments: {e}"),
                );
            }
            return Err(StoreError::io(&self.dir, e));
        }
        Ok(())
    }
}
