//! The summary of a sealed segment — its valid length, last LSN and timestamp, record count and
//! sparse index — cached in `<base>.idx` beside it, so that start-up reads one small file per
//! sealed segment instead of walking every entry header (decision 002, addendum 2).
//!
//! A cache, never a source of truth: written when a segment is sealed (or after a scan at open),
//! without fsync; used only if its magic, checksum and recorded segment length all match, and
//! otherwise ignored and rebuilt from a scan. Sealed segments never change, so a matching summary
//! describes its segment exactly.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::segment::IndexPoint;

const MAGIC: &[u8; 8] = b"HSIDX\0\0\x01";
const FIXED: usize = 8 + 5 * 8;
const POINT: usize = 4 * 8;

/// What a scan of a sealed segment would find. Index points count records from the segment's
/// start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub len: u64,
    pub last_lsn: u64,
    pub last_ts: i64,
    pub records: u64,
    pub index: Vec<IndexPoint>,
}

pub fn path(segment: &Path) -> PathBuf {
    segment.with_extension("idx")
}

/// The summary of the sealed segment at `segment`, if one is cached and matches a file of
/// `segment_len` bytes.
pub fn load(segment: &Path, segment_len: u64) -> Option<Summary> {
    let b = fs::read(path(segment)).ok()?;
    if b.len() < FIXED + 4 || &b[..8] != MAGIC {
        return None;
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().expect("8 bytes"));
    let (len, last_lsn, last_ts, records, n) = (word(8), word(16), word(24) as i64, word(32), word(40));
    if len != segment_len || body.len() != FIXED + usize::try_from(n).ok()?.checked_mul(POINT)? {
        return None;
    }
    let index = (0..n as usize)
        .map(|k| {
            let at = FIXED + k * POINT;
            IndexPoint {
                lsn: word(at),
                offset: word(at + 8),
                timestamp_ms: word(at + 16) as i64,
                records_before: word(at + 24),
            }
        })
        .collect::<Vec<_>>();
    if index.iter().any(|p| p.offset >= len || p.lsn > last_lsn) {
        return None;
    }
    Some(Summary {
        len,
        last_lsn,
        last_ts,
        records,
        index,
    })
}

/// Caches `summary` for the sealed segment at `segment` (best effort: a failure only means the
/// next start scans it).
pub fn store(segment: &Path, summary: &Summary) {
    let mut b = Vec::with_capacity(FIXED + summary.index.len() * POINT + 4);
    b.extend_from_slice(MAGIC);
    for v in [
        summary.len,
        summary.last_lsn,
        summary.last_ts as u64,
        summary.records,
        summary.index.len() as u64,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for p in &summary.index {
        for v in [p.lsn, p.offset, p.timestamp_ms as u64, p.records_before] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let target = path(segment);
    let tmp = target.with_extension("idx.tmp");
    let written = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&b))
        .and_then(|()| fs::rename(&tmp, &target));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        tracing::debug!(path = %target.display(), error = %e, "could not cache a segment summary");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_mismatch_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join("00000000000000000001.seg");
        let s = Summary {
            len: 9000,
            last_lsn: 40,
            last_ts: 1_700_000_000_123,
            records: 400,
            index: vec![
                IndexPoint {
                    lsn: 1,
                    offset: 16,
                    timestamp_ms: 1_700_000_000_000,
                    records_before: 0,
                },
                IndexPoint {
                    lsn: 21,
                    offset: 4500,
                    timestamp_ms: 1_700_000_000_100,
                    records_before: 200,
                },
            ],
        };
        assert_eq!(load(&seg, 9000), None, "nothing cached yet");
        store(&seg, &s);
        assert_eq!(load(&seg, 9000), Some(s.clone()));
        assert_eq!(load(&seg, 9001), None, "a segment of another length");
        let mut b = fs::read(path(&seg)).unwrap();
        b[30] ^= 1;
        fs::write(path(&seg), &b).unwrap();
        assert_eq!(load(&seg, 9000), None, "a damaged summary");
        fs::write(path(&seg), &b[..20]).unwrap();
        assert_eq!(load(&seg, 9000), None, "a torn summary");
    }
}
