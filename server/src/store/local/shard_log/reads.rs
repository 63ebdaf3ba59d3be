//! The read side of a shard: ranged reads, record counts and seeks by time, all over the
//! visible part of the log (nothing past the visible LSN, nothing below the trim point).

use std::io;
use std::sync::atomic::Ordering;

use super::super::durable::covers;
use super::super::segment;
use super::ShardLog;
use crate::store::{StoreError, StoredBatch};

impl ShardLog {
    /// Records (sum of the batches' sizes) in the visible batches from LSN `from` (clamped to
    /// the first untrimmed one) to the tail: a subscription's backlog in records. Reads a few
    /// entry headers beside two index points. Blocking IO: call from a blocking thread.
    pub fn records_from(&self, from: u64) -> Result<u64, StoreError> {
        let visible = self.visible_lsn();
        let (segments, start) = {
            let inner = self.lock()?;
            (inner.segments.clone(), inner.trim_point + 1)
        };
        let from = from.max(start);
        if from > visible {
            return Ok(0);
        }
        // The segment holding `lsn`: the last one starting at or before it.
        let before = |lsn: u64| -> Result<u64, StoreError> {
            let i = segments.partition_point(|s| s.base <= lsn).max(1) - 1;
            let seg = &segments[i];
            seg.records_before(lsn).map_err(|e| StoreError::io(&seg.path, e))
        };
        Ok(before(visible + 1)?.saturating_sub(before(from)?))
    }

    /// Reads up to `max_batches` visible batches starting at `from` (clamped to the first
    /// untrimmed LSN). Blocking IO: call from a blocking thread.
    pub fn read(&self, from: u64, max_batches: usize, max_bytes: usize) -> Result<Vec<StoredBatch>, StoreError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let visible = self.visible_lsn();
        let (segments, start) = {
            let inner = self.lock()?;
            (inner.segments.clone(), inner.trim_point + 1)
        };
        let mut from = from.max(start);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for seg in &segments {
            if from > visible || out.len() >= max_batches || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
            if seg.last_lsn() < from {
                continue;
            }
            // A trim since the list was taken may have moved the start past `from`.
            from = from.max(self.trim_point() + 1);
            if from < seg.base && covers(&self.gaps, from, seg.base - 1) {
                // Lost in an unclean stop and recorded so: nothing to return for them.
                from = seg.base;
            }
            if from < seg.base {
                // Damage in the previous segment (or a missing file) lost these LSNs: fail rather
                // than skip over them.
                return Err(StoreError::Corrupt(format!(
                    "shard {} lost lsns {from}..{} before {}",
                    self.id,
                    seg.base - 1,
                    seg.path.display()
                )));
            }
            let end = seg.committed_len.load(Ordering::Acquire);
            let offset = seg.seek_lsn(from);
            let file = match seg.reader() {
                Ok(f) => f,
                // Trimmed away since the list was taken: its LSNs are no longer readable.
                Err(e) if e.kind() == io::ErrorKind::NotFound && seg.last_lsn() <= self.trim_point() => {
                    from = from.max(seg.last_lsn() + 1);
                    continue;
                }
                Err(e) => return Err(StoreError::io(&seg.path, e)),
            };
            let got = segment::read_range(
                &file,
                offset,
                end,
                from,
                max_batches - out.len(),
                max_bytes - bytes.min(max_bytes),
            )
            .map_err(|e| StoreError::io(&seg.path, e))?;
            for b in got {
                if b.lsn > visible {
                    break;
                }
                from = b.lsn + 1;
                bytes += b.wire_len();
                out.push(b);
            }
        }
        Ok(out)
    }

    /// First visible LSN whose append timestamp is at or after `ts`; `visible + 1` if none is.
    pub fn lsn_at_or_after(&self, ts: i64) -> Result<u64, StoreError> {
        let visible = self.visible_lsn();
        let (segments, start) = {
            let inner = self.lock()?;
            (inner.segments.clone(), inner.trim_point + 1)
        };
        for seg in segments.iter().filter(|s| s.last_lsn() >= start) {
            if seg.last_ts.load(Ordering::Acquire) < ts {
                continue;
            }
            let end = seg.committed_len.load(Ordering::Acquire);
            let offset = seg.seek_timestamp(ts);
            let file = match seg.reader() {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound && seg.last_lsn() <= self.trim_point() => continue,
                Err(e) => return Err(StoreError::io(&seg.path, e)),
            };
            let found = segment::find_entry(&file, offset, end, |h| h.timestamp_ms >= ts && h.lsn >= start)
                .map_err(|e| StoreError::io(&seg.path, e))?;
            if let Some((_, head)) = found {
                return Ok(head.lsn.min(visible + 1));
            }
        }
        Ok(visible + 1)
    }
}
