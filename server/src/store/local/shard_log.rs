//! The log of one shard: a directory of segment files, an in-memory sparse index per segment,
//! a trim point, and the LSN of the last batch readers may see.
//!
//! Guarantees:
//! - LSNs increase by one per stored batch, starting at 1, and are never reused, not even after
//!   trims, restarts or a power loss. Under `--fsync interval|never` an acknowledged batch may be
//!   lost with the page cache, so its LSN must not be handed out again (a subscription or
//!   connector may have committed past it): before a batch gets an LSN above the durable
//!   *reservation* (`reserved`), the reservation moves `RESERVE_STEP` ahead, fsynced. Recovery
//!   continues numbering after the reservation; the LSNs between the recovered tail and it are a
//!   recorded *gap* (`gaps`) that readers step over. A clean shutdown shrinks the reservation to
//!   the tail, so LSNs stay dense across clean restarts; under `always` nothing is reserved.
//! - Append timestamps never decrease within a shard, so timestamp seeks can binary search.
//! - Readers see a batch only after the writer has made it visible, which under the `always`
//!   fsync policy is after it is on disk; nothing beyond the visible LSN is ever returned.
//! - Recovery keeps the longest valid prefix of the last segment and cuts the rest. Anything
//!   else that is wrong (a bad segment header, a bad trim file, an unreadable file) is
//!   corruption: the shard is opened [`unavailable`](ShardLog::unavailable), its files untouched,
//!   and every read or write of it fails with [`StoreError::Unavailable`].
//! - Every failed fsync (of a group commit, a flush, a segment roll, a trim, or a directory)
//!   poisons the shard: it refuses writes until restart recovery re-establishes its state.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use tokio::sync::watch;

use super::durable::{
    covers, create_segment_file, injected, read_gaps, read_u64_file, sync_data, sync_dir, write_gaps, write_u64_file,
};
use super::handles::{self, ActiveFile};
use super::segment::{self, FILE_HEADER_LEN, IndexPoint};
use super::summary::{self, Summary};
use super::{StoreError, StoreOptions};

mod reads;
mod recover;
mod trim;

const TRIM_FILE: &str = "trim";
/// The highest LSN that may have been handed out (under `--fsync interval|never`).
const RESERVED_FILE: &str = "reserved";
/// LSNs reserved at once: one small fsynced write per this many batches.
const RESERVE_STEP: u64 = 1 << 16;

pub struct Segment {
    pub base: u64,
    path: PathBuf,
    /// Bytes readers may read.
    committed_len: AtomicU64,
    /// Last visible LSN in this segment (`base - 1` when none).
    last_lsn: AtomicU64,
    last_ts: AtomicI64,
    index: RwLock<Vec<IndexPoint>>,
    /// Records in the shard before this segment's first entry (same origin as the index's).
    records_at_base: u64,
}

impl Segment {
    fn empty(base: u64, path: PathBuf, records_at_base: u64) -> Segment {
        Segment {
            base,
            path,
            committed_len: AtomicU64::new(FILE_HEADER_LEN),
            last_lsn: AtomicU64::new(base - 1),
            last_ts: AtomicI64::new(i64::MIN),
            index: RwLock::new(Vec::new()),
            records_at_base,
        }
    }

    /// Records in the shard before `lsn` (which this segment holds, or follows).
    fn records_before(&self, lsn: u64) -> io::Result<u64> {
        let (offset, base) = {
            let index = self.index.read().expect("index lock");
            match index.partition_point(|p| p.lsn <= lsn) {
                0 => (FILE_HEADER_LEN, self.records_at_base),
                i => (index[i - 1].offset, index[i - 1].records_before),
            }
        };
        let end = self.committed_len.load(Ordering::Acquire);
        Ok(base + segment::records_until(&*self.reader()?, offset, end, lsn)?)
    }

    /// A read handle on the segment's file, from the process-wide cache of open segments.
    fn reader(&self) -> io::Result<Arc<File>> {
        super::handles::reader(&self.path)
    }

    fn last_lsn(&self) -> u64 {
        self.last_lsn.load(Ordering::Acquire)
    }

    /// Offset of the index point at or before `lsn`.
    fn seek_lsn(&self, lsn: u64) -> u64 {
        let index = self.index.read().expect("index lock");
        match index.partition_point(|p| p.lsn <= lsn) {
            0 => FILE_HEADER_LEN,
            i => index[i - 1].offset,
        }
    }

    fn seek_timestamp(&self, ts: i64) -> u64 {
        let index = self.index.read().expect("index lock");
        match index.partition_point(|p| p.timestamp_ms < ts) {
            0 => FILE_HEADER_LEN,
            i => index[i - 1].offset,
        }
    }
}

struct Inner {
    segments: Vec<Arc<Segment>>,
    /// Append handle of the last segment, opened on the first write and closed by the store's
    /// janitor when the shard is idle and synced (`handles`).
    active: Option<ActiveFile>,
    /// Bytes written to the active segment (may be ahead of what is committed).
    active_len: u64,
    bytes_since_index: u64,
    /// Records written (same origin as the index points').
    records_written: u64,
    next_lsn: u64,
    last_ts: i64,
    trim_point: u64,
    /// LSNs up to this one may be handed out without moving the durable reservation.
    reserved: u64,
    /// Set after a failed write or fsync: the file state is unknown, so the shard refuses
    /// appends until restart recovery has re-established it.
    poisoned: Option<String>,
}

pub struct ShardLog {
    pub id: u64,
    dir: PathBuf,
    opts: StoreOptions,
    /// `Err(reason)` for a shard that could not be opened: it serves nothing and touches no file.
    inner: Result<Mutex<Inner>, String>,
    /// LSN ranges (inclusive) lost in unclean stops; fixed at open.
    gaps: Vec<(u64, u64)>,
    /// Mirrors of `Inner::trim_point` and `Inner::next_lsn - 1`, read without the lock.
    trim_point: AtomicU64,
    written: AtomicU64,
    /// Held by a trim from start to end, so trims are ordered without holding the shard lock.
    trimming: Mutex<()>,
    /// Wall-clock ms of the last write, for the janitor that closes idle append handles.
    last_write_ms: AtomicI64,
    /// Segments whose entry headers were walked at open (no usable summary): for tests.
    pub scanned_at_open: usize,
    visible: watch::Sender<u64>,
    /// Readers of many shards, told when `visible` moves.
    listeners: crate::store::ready::Listeners,
    /// Calls of [`Self::read`], so tests can tell which shards a reader touched.
    reads: AtomicU64,
    unsynced: AtomicBool,
    deleted: AtomicBool,
}

/// The part of an append the writer computes under the shard lock.
pub struct PendingWrite {
    pub lsn: u64,
    pub timestamp_ms: i64,
}

/// A group of entries written to the active segment but not yet visible.
pub struct WrittenGroup {
    segment: Arc<Segment>,
    end_offset: u64,
    last_lsn: u64,
    last_ts: i64,
    sync_handle: File,
}

pub(super) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

impl ShardLog {
    /// Creates the directory of a new, empty shard.
    pub fn create(dir: PathBuf, id: u64, opts: StoreOptions) -> Result<Self, StoreError> {
        fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        if let Some(parent) = dir.parent() {
            sync_dir(id, parent).map_err(|e| StoreError::io(parent, e))?;
        }
        Self::open(dir, id, opts)
    }

    /// A shard that could not be opened (`reason`): it keeps its directory as it is, reads as
    /// empty in its positions, and fails every read, write and trim with
    /// [`StoreError::Unavailable`].
    pub fn unavailable(dir: PathBuf, id: u64, opts: StoreOptions, reason: String) -> Self {
        ShardLog {
            id,
            dir,
            opts,
            inner: Err(reason),
            gaps: Vec::new(),
            trim_point: AtomicU64::new(0),
            written: AtomicU64::new(0),
            trimming: Mutex::new(()),
            last_write_ms: AtomicI64::new(0),
            scanned_at_open: 0,
            visible: watch::Sender::new(0),
            listeners: Default::default(),
            reads: AtomicU64::new(0),
            unsynced: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
        }
    }

    /// Why the shard serves nothing, if it does not.
    pub fn unavailable_reason(&self) -> Option<&str> {
        self.inner.as_ref().err().map(String::as_str)
    }

    /// `Ok` unless the shard is unavailable: read paths that might otherwise see an empty
    /// shard (its positions read as 0) call this first.
    pub fn check_available(&self) -> Result<(), StoreError> {
        self.lock().map(drop)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        match &self.inner {
            Ok(m) => Ok(m.lock().expect("shard lock poisoned")),
            Err(reason) => Err(StoreError::Unavailable {
                shard: self.id,
                reason: reason.clone(),
            }),
        }
    }

    /// Stops writes after an IO failure whose effect on the files is unknown.
    fn poison(&self, inner: &mut Inner, why: String) {
        tracing::error!(shard = self.id, reason = %why, "shard refuses writes until restart");
        inner.poisoned.get_or_insert(why);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Last LSN readers may see (0 when the shard has never held a batch).
    pub fn visible_lsn(&self) -> u64 {
        *self.visible.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
    }

    /// How many reads this shard served since it was opened.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Marks `key` in `set` whenever the visible tail moves or the shard is deleted, for as long
    /// as the set lives. Register before the first read, so no append is missed.
    pub fn notify_on_append(&self, set: &std::sync::Arc<super::ReadySet>, key: usize) {
        self.listeners.register(set, key);
    }

    /// First LSN that may still be read.
    pub fn start_lsn(&self) -> u64 {
        self.trim_point.load(Ordering::Acquire) + 1
    }

    pub fn trim_point(&self) -> u64 {
        self.trim_point.load(Ordering::Acquire)
    }

    /// Last LSN written to the file, visible or not yet.
    pub fn written_lsn(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Marks the shard deleted (no further rolls, trims or appends) and wakes its readers.
    pub fn mark_deleted(&self) {
        let _inner = self.lock().ok();
        self.deleted.store(true, Ordering::Release);
        self.visible.send_modify(|_| {});
        self.listeners.wake();
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Writes a group of batches to the active segment (rolling it first when full). Called
    /// only by this shard's writer thread. Nothing becomes visible until [`Self::commit`].
    pub fn write_group(
        &self,
        batches: &[(&[u8], u32, u8)],
        buf: &mut Vec<u8>,
    ) -> Result<(Vec<PendingWrite>, WrittenGroup), StoreError> {
        if let Some((p, _, _)) = batches.iter().find(|(p, _, _)| p.len() > segment::MAX_PAYLOAD_LEN) {
            return Err(StoreError::Failed(format!(
                "a {}-byte batch exceeds the store's {}-byte entry limit",
                p.len(),
                segment::MAX_PAYLOAD_LEN
            )));
        }
        let mut inner = self.lock()?;
        // Stamped under the lock so that a reader that sees the written tail and a clock past its
        // bound knows no later batch can carry an earlier stamp.
        let now_ms = super::now_ms();
        if let Some(reason) = &inner.poisoned {
            return Err(StoreError::Poisoned(reason.clone()));
        }
        if self.is_deleted() {
            return Err(StoreError::ShardDeleted(self.id));
        }
        if inner.active_len >= self.opts.segment_bytes {
            self.roll(&mut inner)?;
        }
        let segment = inner.segments.last().expect("active segment").clone();
        if inner.active.is_none() {
            inner.active = Some(handles::open_active(&segment.path).map_err(|e| StoreError::io(&segment.path, e))?);
        }
        self.last_write_ms.store(super::now_ms(), Ordering::Relaxed);
        let active = inner.active.as_mut().expect("opened above");
        let sync_handle = active.try_clone().map_err(|e| StoreError::io(&segment.path, e))?;
        buf.clear();
        let start_len = inner.active_len;
        let mut pending = Vec::with_capacity(batches.len());
        let mut new_points = Vec::new();
        let mut ts = inner.last_ts;
        let mut lsn = inner.next_lsn;
        let mut since_index = inner.bytes_since_index;
        let mut records = inner.records_written;
        for (payload, batch_size, compression) in batches {
            ts = ts.max(now_ms);
            let offset = start_len + buf.len() as u64;
            let len = segment::encode_entry(buf, lsn, ts, *batch_size, *compression, payload) as u64;
            if since_index >= self.opts.index_interval_bytes {
                new_points.push(IndexPoint {
                    lsn,
                    offset,
                    timestamp_ms: ts,
                    records_before: records,
                });
                since_index = 0;
            }
            since_index = since_index.saturating_add(len);
            records += u64::from(*batch_size);
            pending.push(PendingWrite { lsn, timestamp_ms: ts });
            lsn += 1;
        }
        if self.opts.fsync != super::FsyncPolicy::Always && lsn - 1 > inner.reserved {
            let target = (lsn - 1).saturating_add(RESERVE_STEP);
            if let Err(e) = write_u64_file(self.id, &self.dir, RESERVED_FILE, target, "store::reserve-fsync") {
                self.poison(&mut inner, format!("could not reserve lsns: {e}"));
                return Err(e);
            }
            inner.reserved = target;
        }
        let active = inner.active.as_mut().expect("opened above");
        let written = match injected(self.id, "store::write") {
            Ok(()) => active.write_all(buf),
            // A test's torn write: half the group reaches the file before the error.
            Err(e) => active.write_all(&buf[..buf.len() / 2]).and(Err(e)),
        };
        if let Err(e) = written {
            // Undo a partial write so the file never holds half an entry we did not ack.
            let undo = injected(self.id, "store::undo").and_then(|()| active.set_len(start_len));
            if let Err(u) = undo {
                self.poison(&mut inner, format!("write failed ({e}) and could not be undone ({u})"));
            }
            return Err(StoreError::io(&segment.path, e));
        }
        inner.active_len += buf.len() as u64;
        inner.next_lsn = lsn;
        self.written.store(lsn - 1, Ordering::Release);
        inner.last_ts = ts;
        inner.bytes_since_index = since_index;
        inner.records_written = records;
        if !new_points.is_empty() {
            segment.index.write().expect("index lock").extend(new_points);
        }
        self.unsynced.store(true, Ordering::Release);
        Ok((
            pending,
            WrittenGroup {
                segment,
                end_offset: inner.active_len,
                last_lsn: lsn - 1,
                last_ts: ts,
                sync_handle,
            },
        ))
    }

    /// Makes a written group durable (when `fsync`) and then visible to readers.
    pub fn commit(&self, group: &WrittenGroup, fsync: bool) -> Result<(), StoreError> {
        if fsync {
            self.unsynced.store(false, Ordering::Release);
            let started = std::time::Instant::now();
            let synced = sync_data(self.id, &group.sync_handle, &group.segment.path, "store::commit-fsync");
            super::FSYNC_SECONDS.observe(started.elapsed().as_secs_f64());
            if let Err(e) = synced {
                // After a failed fsync the page cache may have dropped the dirty pages: the
                // data's fate is unknown, so the shard stops taking writes.
                self.poison(&mut *self.lock()?, format!("fsync failed: {e}"));
                return Err(StoreError::io(&group.segment.path, e));
            }
        }
        let seg = &group.segment;
        seg.committed_len.fetch_max(group.end_offset, Ordering::AcqRel);
        seg.last_lsn.fetch_max(group.last_lsn, Ordering::AcqRel);
        seg.last_ts.fetch_max(group.last_ts, Ordering::AcqRel);
        self.visible.send_modify(|v| *v = (*v).max(group.last_lsn));
        self.listeners.wake();
        Ok(())
    }

    /// Fsyncs the active segment if anything was written since the last sync.
    pub fn sync_if_dirty(&self) -> Result<(), StoreError> {
        if !self.unsynced.load(Ordering::Acquire) {
            return Ok(());
        }
        let (handle, path) = {
            // Cleared under the lock, in one step with taking the handle: the janitor (which
            // closes only synced handles, under the lock) cannot slip in between.
            let inner = self.lock()?;
            if !self.unsynced.swap(false, Ordering::AcqRel) {
                return Ok(());
            }
            let seg = inner.segments.last().expect("active segment");
            // A handle is closed only once synced, and a write reopens it: nothing to flush.
            let Some(active) = &inner.active else { return Ok(()) };
            (
                active.try_clone().map_err(|e| StoreError::io(&seg.path, e))?,
                seg.path.clone(),
            )
        };
        let started = std::time::Instant::now();
        let synced = sync_data(self.id, &handle, &path, "store::flush-fsync");
        super::FSYNC_SECONDS.observe(started.elapsed().as_secs_f64());
        synced.map_err(|e| {
            if let Ok(mut inner) = self.lock() {
                self.poison(&mut inner, format!("fsync failed: {e}"));
            }
            StoreError::io(&path, e)
        })
    }

    /// Seals the active segment and starts a new one at the next LSN. Any failure poisons the
    /// shard: the sealed segment's fsync, or the new segment's file or directory entry, is in
    /// an unknown state.
    fn roll(&self, inner: &mut Inner) -> Result<(), StoreError> {
        let old = inner.segments.last().expect("active segment").clone();
        // Sealed segments are whole on disk before the next begins, whoever else may be syncing
        // this file right now (a flusher holding its own handle): fsync it here in any case.
        let sealed = match &inner.active {
            Some(active) => sync_data(self.id, active, &old.path, "store::roll-fsync"),
            None => File::open(&old.path).and_then(|f| sync_data(self.id, &f, &old.path, "store::roll-fsync")),
        };
        if let Err(e) = sealed {
            self.poison(inner, format!("fsync failed sealing a segment: {e}"));
            return Err(StoreError::io(&old.path, e));
        }
        // Cache its summary, so start-up need not walk its headers.
        summary::store(
            &old.path,
            &Summary {
                len: inner.active_len,
                last_lsn: old.last_lsn(),
                last_ts: old.last_ts.load(Ordering::Acquire),
                records: inner.records_written - old.records_at_base,
                index: old
                    .index
                    .read()
                    .expect("index lock")
                    .iter()
                    .map(|p| IndexPoint {
                        records_before: p.records_before - old.records_at_base,
                        ..*p
                    })
                    .collect(),
            },
        );
        if self.is_deleted() {
            return Err(StoreError::ShardDeleted(self.id));
        }
        let base = inner.next_lsn;
        let path = match create_segment_file(self.id, &self.dir, base) {
            Ok(created) => created,
            Err(e) => {
                self.poison(inner, format!("could not start a new segment: {e}"));
                return Err(e);
            }
        };
        let records = inner.records_written;
        inner.segments.push(Arc::new(Segment::empty(base, path, records)));
        // The next write opens the new segment's append handle.
        inner.active = None;
        inner.active_len = FILE_HEADER_LEN;
        inner.bytes_since_index = u64::MAX;
        Ok(())
    }

    /// After a clean flush: shrinks the durable reservation to the tail, so the next start
    /// continues densely.
    pub fn release_reservation(&self) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let tail = inner.next_lsn - 1;
        if inner.reserved <= tail
            || inner.poisoned.is_some()
            || self.is_deleted()
            || self.unsynced.load(Ordering::Acquire)
        {
            return Ok(());
        }
        write_u64_file(self.id, &self.dir, RESERVED_FILE, tail, "store::reserve-fsync")?;
        inner.reserved = tail;
        Ok(())
    }

    /// Closes the append handle if the shard has written nothing for `idle_ms`, fsyncing it
    /// first if anything is unsynced (so a closed handle always means a synced file); never
    /// waits for the shard lock. Runs on the janitor thread. Returns whether it closed one.
    pub fn close_idle_handle(&self, idle_ms: i64) -> bool {
        let Ok(m) = &self.inner else { return false };
        let Ok(mut inner) = m.try_lock() else { return false };
        if inner.active.is_none()
            || inner.poisoned.is_some()
            || super::now_ms() - self.last_write_ms.load(Ordering::Relaxed) < idle_ms
        {
            return false;
        }
        if self.unsynced.swap(false, Ordering::AcqRel) {
            let path = inner.segments.last().expect("active segment").path.clone();
            let synced = sync_data(
                self.id,
                inner.active.as_ref().expect("checked above"),
                &path,
                "store::flush-fsync",
            );
            if let Err(e) = synced {
                self.poison(&mut inner, format!("fsync failed: {e}"));
                return false;
            }
        }
        inner.active = None;
        true
    }

    /// When the shard last wrote (wall-clock ms; 0 if not since open).
    pub fn last_write_ms(&self) -> i64 {
        self.last_write_ms.load(Ordering::Relaxed)
    }

    /// LSN ranges lost in unclean stops (for tests and stats).
    pub fn gaps(&self) -> &[(u64, u64)] {
        &self.gaps
    }

    /// Number of segment files (for tests and stats).
    pub fn segment_count(&self) -> usize {
        self.lock().map_or(0, |i| i.segments.len())
    }
}
