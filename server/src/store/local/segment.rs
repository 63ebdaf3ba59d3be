//! On-disk format of one segment file of a shard log.
//!
//! Guarantees: an entry is either returned whole with a matching checksum or not at all; a scan
//! stops at the first entry that is incomplete, fails its checksum or breaks the LSN sequence, and
//! reports the length of the valid prefix so recovery can cut a torn tail.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! file   := header entry*
//! header := magic "HSSEG\0\0\x01" (8) | base_lsn u64
//! entry  := body_len u32 | crc32c(body) u32 | body
//! body   := lsn u64 | timestamp_ms i64 | batch_size u32 | compression u8 | version u8 | 0u16 | payload
//! ```
//!
//! The payload is the client's `BatchedRecord.payload`, byte for byte (never recompressed).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use bytes::Bytes;

use crate::store::StoredBatch;

pub const MAGIC: &[u8; 8] = b"HSSEG\0\0\x01";
pub const FILE_HEADER_LEN: u64 = 16;
pub const ENTRY_HEADER_LEN: usize = 8;
pub const BODY_FIXED_LEN: usize = 24;
const ENTRY_VERSION: u8 = 1;
/// Upper bound on one entry's body; anything larger in a length field is corruption.
pub const MAX_BODY_LEN: usize = 64 << 20;
/// Largest payload an entry can carry.
pub const MAX_PAYLOAD_LEN: usize = MAX_BODY_LEN - BODY_FIXED_LEN;

/// A seek point in the sparse in-memory index of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexPoint {
    pub lsn: u64,
    pub offset: u64,
    pub timestamp_ms: i64,
    /// Records (the batches' `batch_size`s) in the shard before this entry, counted from an
    /// arbitrary origin fixed when the shard was opened: only differences mean anything.
    pub records_before: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("entry at offset {offset} has checksum {found:#010x}, expected {expected:#010x}")]
    Checksum { offset: u64, expected: u32, found: u32 },
    #[error("entry at offset {offset} has an impossible length {len}")]
    Length { offset: u64, len: u64 },
    #[error("entry at offset {offset} has unknown format version {version}")]
    Version { offset: u64, version: u8 },
}

pub fn file_header(base_lsn: u64) -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&base_lsn.to_le_bytes());
    h
}

/// Checks a segment file header; returns the base LSN it records.
pub fn parse_file_header(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < FILE_HEADER_LEN as usize || &bytes[..8] != MAGIC {
        return None;
    }
    Some(u64::from_le_bytes(bytes[8..16].try_into().ok()?))
}

/// Appends one encoded entry to `buf`; returns its encoded length.
pub fn encode_entry(
    buf: &mut Vec<u8>,
    lsn: u64,
    timestamp_ms: i64,
    batch_size: u32,
    compression: u8,
    payload: &[u8],
) -> usize {
    let body_len = BODY_FIXED_LEN + payload.len();
    let start = buf.len();
    buf.reserve(ENTRY_HEADER_LEN + body_len);
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]);
    let body_start = buf.len();
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(&timestamp_ms.to_le_bytes());
    buf.extend_from_slice(&batch_size.to_le_bytes());
    buf.push(compression);
    buf.push(ENTRY_VERSION);
    buf.extend_from_slice(&[0u8; 2]);
    buf.extend_from_slice(payload);
    let crc = crc32c::crc32c(&buf[body_start..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    buf.len() - start
}

/// The fixed fields of an entry, read from its header and the start of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHead {
    pub lsn: u64,
    pub timestamp_ms: i64,
    pub batch_size: u32,
    pub compression: u8,
    /// Whole encoded length (header + body).
    pub len: usize,
}

fn parse_head(buf: &[u8], offset: u64) -> Result<Option<(EntryHead, u32)>, DecodeError> {
    if buf.len() < ENTRY_HEADER_LEN + BODY_FIXED_LEN {
        return Ok(None);
    }
    let body_len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if !(BODY_FIXED_LEN..=MAX_BODY_LEN).contains(&body_len) {
        return Err(DecodeError::Length {
            offset,
            len: body_len as u64,
        });
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let b = &buf[ENTRY_HEADER_LEN..];
    let version = b[21];
    if version != ENTRY_VERSION {
        return Err(DecodeError::Version { offset, version });
    }
    let head = EntryHead {
        lsn: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
        timestamp_ms: i64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
        batch_size: u32::from_le_bytes(b[16..20].try_into().expect("4 bytes")),
        compression: b[20],
        len: ENTRY_HEADER_LEN + body_len,
    };
    Ok(Some((head, crc)))
}

/// Decodes the entry at the start of `buf`. `Ok(None)` means `buf` holds only part of it.
/// `offset` is the entry's position in the file, for error messages.
pub fn decode_entry(buf: &Bytes, offset: u64) -> Result<Option<StoredBatch>, DecodeError> {
    let Some((head, crc)) = parse_head(buf, offset)? else {
        return Ok(None);
    };
    if buf.len() < head.len {
        return Ok(None);
    }
    let body = &buf[ENTRY_HEADER_LEN..head.len];
    let found = crc32c::crc32c(body);
    if found != crc {
        return Err(DecodeError::Checksum {
            offset,
            expected: crc,
            found,
        });
    }
    Ok(Some(StoredBatch {
        lsn: head.lsn,
        timestamp_ms: head.timestamp_ms,
        batch_size: head.batch_size,
        compression: head.compression,
        payload: buf.slice(ENTRY_HEADER_LEN + BODY_FIXED_LEN..head.len),
    }))
}

/// What a scan of a segment found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Bytes from the start of the file that hold the header and whole, valid entries.
    pub valid_len: u64,
    /// Last valid LSN, or `base - 1` when the segment holds no entry.
    pub last_lsn: u64,
    pub first_timestamp_ms: Option<i64>,
    pub last_timestamp_ms: Option<i64>,
    pub index: Vec<IndexPoint>,
    /// Records in the valid entries (index points count from 0 at the segment's start).
    pub records: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub stopped: Option<String>,
}

/// Walks a segment from its first entry. With `verify` every body is read and checksummed (used
/// on the segment that was being written when the process stopped); without it only headers are
/// read (sealed segments, which were fsynced before the next one began; readers still verify).
pub fn scan(file: &File, base_lsn: u64, verify: bool, index_interval: u64) -> io::Result<ScanOutcome> {
    let file_len = file.metadata()?.len();
    let mut out = ScanOutcome {
        valid_len: FILE_HEADER_LEN,
        last_lsn: base_lsn - 1,
        first_timestamp_ms: None,
        last_timestamp_ms: None,
        index: Vec::new(),
        records: 0,
        stopped: None,
    };
    let mut offset = FILE_HEADER_LEN;
    let mut since_index = u64::MAX;
    let mut head_buf = [0u8; ENTRY_HEADER_LEN + BODY_FIXED_LEN];
    let mut body = Vec::new();
    while offset < file_len {
        if file_len - offset < head_buf.len() as u64 {
            out.stopped = Some(format!("incomplete entry header at offset {offset}"));
            break;
        }
        file.read_exact_at(&mut head_buf, offset)?;
        let (head, crc) = match parse_head(&head_buf, offset) {
            Ok(Some(h)) => h,
            Ok(None) => unreachable!("buffer holds a whole header"),
            Err(e) => {
                out.stopped = Some(e.to_string());
                break;
            }
        };
        if offset + head.len as u64 > file_len {
            out.stopped = Some(format!("incomplete entry at offset {offset}"));
            break;
        }
        if head.lsn != out.last_lsn + 1 {
            out.stopped = Some(format!(
                "entry at offset {offset} has lsn {} after lsn {}",
                head.lsn, out.last_lsn
            ));
            break;
        }
        if verify {
            body.resize(head.len - ENTRY_HEADER_LEN, 0);
            file.read_exact_at(&mut body, offset + ENTRY_HEADER_LEN as u64)?;
            let found = crc32c::crc32c(&body);
            if found != crc {
                out.stopped = Some(
                    DecodeError::Checksum {
                        offset,
                        expected: crc,
                        found,
                    }
                    .to_string(),
                );
                break;
            }
        }
        if since_index >= index_interval {
            out.index.push(IndexPoint {
                lsn: head.lsn,
                offset,
                timestamp_ms: head.timestamp_ms,
                records_before: out.records,
            });
            since_index = 0;
        }
        since_index = since_index.saturating_add(head.len as u64);
        out.first_timestamp_ms.get_or_insert(head.timestamp_ms);
        out.last_timestamp_ms = Some(head.timestamp_ms);
        out.last_lsn = head.lsn;
        out.records += u64::from(head.batch_size);
        offset += head.len as u64;
        out.valid_len = offset;
    }
    Ok(out)
}

/// Reads the file header of a segment.
pub fn read_file_header(file: &mut File) -> io::Result<Option<u64>> {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    match file.read_exact(&mut h) {
        Ok(()) => Ok(parse_file_header(&h)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads whole entries from `offset` up to `end` (exclusive), skipping those below `from_lsn`,
/// stopping after `max_batches` entries or once `max_bytes` of payload have been gathered (at
/// least one entry is always returned when one is available).
pub fn read_range(
    file: &File,
    mut offset: u64,
    end: u64,
    from_lsn: u64,
    max_batches: usize,
    max_bytes: usize,
) -> io::Result<Vec<StoredBatch>> {
    const CHUNK: u64 = 1 << 20;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while offset < end && out.len() < max_batches && (bytes < max_bytes || out.is_empty()) {
        let want = (end - offset).min(CHUNK.max(ENTRY_HEADER_LEN as u64));
        let mut buf = vec![0u8; want as usize];
        file.read_exact_at(&mut buf, offset)?;
        // A single entry may be larger than the chunk: grow to its full length.
        let head = parse_head(&buf, offset).map_err(invalid_data)?;
        if let Some((h, _)) = head
            && h.len > buf.len()
        {
            if offset + h.len as u64 > end {
                return Err(invalid_data(DecodeError::Length {
                    offset,
                    len: h.len as u64,
                }));
            }
            buf.resize(h.len, 0);
            file.read_exact_at(&mut buf, offset)?;
        }
        let chunk = Bytes::from(buf);
        let mut pos = 0usize;
        while pos < chunk.len() && out.len() < max_batches && (bytes < max_bytes || out.is_empty()) {
            let rest = chunk.slice(pos..);
            match decode_entry(&rest, offset + pos as u64).map_err(invalid_data)? {
                None => break,
                Some(batch) => {
                    let len = ENTRY_HEADER_LEN + BODY_FIXED_LEN + batch.payload.len();
                    pos += len;
                    if batch.lsn >= from_lsn {
                        bytes += batch.wire_len();
                        out.push(batch);
                    }
                }
            }
        }
        if pos == 0 {
            return Err(invalid_data(DecodeError::Length {
                offset,
                len: end - offset,
            }));
        }
        offset += pos as u64;
    }
    Ok(out)
}

/// Walks entry headers from `offset` to `end` and returns the offset and head of the first entry
/// for which `stop` is true.
pub fn find_entry(
    file: &File,
    mut offset: u64,
    end: u64,
    mut stop: impl FnMut(&EntryHead) -> bool,
) -> io::Result<Option<(u64, EntryHead)>> {
    let mut head_buf = [0u8; ENTRY_HEADER_LEN + BODY_FIXED_LEN];
    while offset + head_buf.len() as u64 <= end {
        file.read_exact_at(&mut head_buf, offset)?;
        let (head, _) = parse_head(&head_buf, offset)
            .map_err(invalid_data)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short entry header"))?;
        if stop(&head) {
            return Ok(Some((offset, head)));
        }
        offset += head.len as u64;
    }
    Ok(None)
}

fn invalid_data(e: DecodeError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The records (sum of `batch_size`) of the entries from `offset` (an entry boundary) up to,
/// not including, LSN `before` or `end` (a committed length), reading headers only.
pub fn records_until(file: &File, mut offset: u64, end: u64, before: u64) -> io::Result<u64> {
    let mut head_buf = [0u8; ENTRY_HEADER_LEN + BODY_FIXED_LEN];
    let mut records = 0u64;
    while offset + head_buf.len() as u64 <= end {
        file.read_exact_at(&mut head_buf, offset)?;
        let head = match parse_head(&head_buf, offset) {
            Ok(Some((h, _))) => h,
            Ok(None) => break,
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        };
        if head.lsn >= before {
            break;
        }
        records += u64::from(head.batch_size);
        offset += head.len as u64;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    fn write_segment(entries: &[(i64, Vec<u8>)], base: u64) -> (tempfile::NamedTempFile, Vec<u64>) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&file_header(base)).unwrap();
        let mut buf = Vec::new();
        let mut offsets = Vec::new();
        for (i, (ts, p)) in entries.iter().enumerate() {
            offsets.push(FILE_HEADER_LEN + buf.len() as u64);
            encode_entry(&mut buf, base + i as u64, *ts, 3, 1, p);
        }
        f.write_all(&buf).unwrap();
        (f, offsets)
    }

    #[test]
    fn header_round_trip() {
        assert_eq!(parse_file_header(&file_header(42)), Some(42));
        assert_eq!(parse_file_header(b"garbage garbage!"), None);
    }

    #[test]
    fn checksum_mismatch_is_reported_not_returned() {
        let (f, offsets) = write_segment(&[(1, b"hello".to_vec()), (2, b"world".to_vec())], 10);
        // Flip one payload byte of the second entry.
        let pos = offsets[1] + (ENTRY_HEADER_LEN + BODY_FIXED_LEN) as u64;
        let file = f.reopen().unwrap();
        file.write_all_at(b"W", pos).unwrap();
        let len = file.metadata().unwrap().len();
        let err = read_range(&file, FILE_HEADER_LEN, len, 0, 10, usize::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("checksum"), "{err}");
        // A verifying scan keeps the first entry only.
        let s = scan(&file, 10, true, 0).unwrap();
        assert_eq!(s.last_lsn, 10);
        assert_eq!(s.valid_len, offsets[1]);
        assert!(s.stopped.unwrap().contains("checksum"));
    }

    #[test]
    fn lsn_discontinuity_stops_scan() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&file_header(1)).unwrap();
        let mut buf = Vec::new();
        encode_entry(&mut buf, 1, 0, 1, 0, b"a");
        encode_entry(&mut buf, 3, 0, 1, 0, b"b");
        f.write_all(&buf).unwrap();
        let s = scan(f.as_file(), 1, true, 0).unwrap();
        assert_eq!(s.last_lsn, 1);
        assert!(s.stopped.unwrap().contains("lsn 3"));
    }

    #[test]
    fn large_entry_beyond_chunk_is_read_whole() {
        let big = vec![7u8; (1 << 20) + 4096];
        let (f, _) = write_segment(&[(5, big.clone()), (6, b"x".to_vec())], 1);
        let file = f.reopen().unwrap();
        let len = file.metadata().unwrap().len();
        let got = read_range(&file, FILE_HEADER_LEN, len, 0, 10, usize::MAX).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(&got[0].payload[..], &big[..]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever is written reads back identically, and every index point leads to its entry.
        #[test]
        fn round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..40),
                      base in 1u64..1_000_000) {
            let entries: Vec<(i64, Vec<u8>)> = payloads.iter().enumerate().map(|(i, p)| (i as i64 * 3, p.clone())).collect();
            let (f, offsets) = write_segment(&entries, base);
            let file = f.reopen().unwrap();
            let len = file.metadata().unwrap().len();
            let s = scan(&file, base, true, 4096).unwrap();
            prop_assert_eq!(s.valid_len, len);
            prop_assert_eq!(s.last_lsn, base + entries.len() as u64 - 1);
            prop_assert!(s.stopped.is_none());
            for p in &s.index {
                prop_assert_eq!(offsets[(p.lsn - base) as usize], p.offset);
            }
            let got = read_range(&file, FILE_HEADER_LEN, len, 0, usize::MAX, usize::MAX).unwrap();
            prop_assert_eq!(got.len(), entries.len());
            for (i, b) in got.iter().enumerate() {
                prop_assert_eq!(b.lsn, base + i as u64);
                prop_assert_eq!(b.timestamp_ms, entries[i].0);
                prop_assert_eq!(&b.payload[..], &entries[i].1[..]);
            }
            // Reading from the middle skips earlier entries.
            let mid = base + entries.len() as u64 / 2;
            let got = read_range(&file, FILE_HEADER_LEN, len, mid, usize::MAX, usize::MAX).unwrap();
            prop_assert_eq!(got.first().map(|b| b.lsn), Some(mid));
        }

        /// Cutting the file anywhere (a torn write) leaves a valid prefix of whole entries, and
        /// appending garbage after it never yields an extra entry.
        #[test]
        fn torn_tail_keeps_whole_prefix(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..500), 1..20),
                                        cut_frac in 0.0f64..1.0, garbage in proptest::collection::vec(any::<u8>(), 0..64)) {
            let entries: Vec<(i64, Vec<u8>)> = payloads.iter().map(|p| (0, p.clone())).collect();
            let (f, offsets) = write_segment(&entries, 1);
            let file = f.reopen().unwrap();
            let len = file.metadata().unwrap().len();
            let cut = FILE_HEADER_LEN + ((len - FILE_HEADER_LEN) as f64 * cut_frac) as u64;
            file.set_len(cut).unwrap();
            file.write_all_at(&garbage, cut).unwrap();
            let s = scan(&file, 1, true, 4096).unwrap();
            let whole = offsets.iter().zip(offsets.iter().skip(1).chain(std::iter::once(&len)))
                .filter(|(_, end)| **end <= cut).count() as u64;
            // Garbage could only extend the prefix if it formed a valid entry with lsn whole+1 and
            // a matching crc32c; that is what the assertion rules out.
            prop_assert_eq!(s.last_lsn, whole);
            prop_assert!(s.valid_len <= cut);
        }
    }
}
