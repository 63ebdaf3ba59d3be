//! Checks an appended `BatchedRecord` before anything is stored: it is not empty, its encoded
//! size is within `max-record-size`, it claims no more than `max-batch-records` records, and its
//! payload decompresses (to at most [`MAX_EXPANSION`] times `max-record-size`) into a
//! `BatchHStreamRecords` holding exactly `batchSize` well-formed records. The stored bytes are
//! still the client's, untouched.
//!
//! Guarantee: checking a batch costs memory bounded by the limits, not by what the payload
//! expands to. The payload is decompressed as a stream and walked in the protobuf wire format
//! ([`scan`]); records are counted, never materialized, a record's header (at most
//! `max-record-size` bytes) is the largest piece held at once, and the walk stops at the first
//! record beyond `batchSize`. A few-KB compression bomb therefore costs a few KB of buffers and
//! at most `MAX_EXPANSION × max-record-size` bytes of decompression work; a zstd frame cannot
//! make the decoder allocate a window over 8 MiB.

use std::io::{self, BufRead, BufReader, Read};

use hstream_proto::{BatchHStreamRecords, BatchedRecord, CompressionType, HStreamRecordHeader};
use prost::Message;

use crate::error::{ApiError, ApiResult};

/// Decompressed batches may be this many times `max-record-size` at most.
pub const MAX_EXPANSION: usize = 64;

/// Records one batch may hold unless `max-batch-records` says otherwise.
pub const DEFAULT_MAX_BATCH_RECORDS: u32 = 100_000;

/// Largest zstd window accepted, as a power of two: 8 MiB, what compression levels 1 to 19 use
/// at most (the "ultra" levels 20 to 22 ask for more and are refused).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Payloads below this size and uncompressed are checked on the calling task; anything else on
/// the blocking pool, so decompression never runs on the async executor.
const INLINE_CHECK_BYTES: usize = 64 << 10;

/// Batches checked on the blocking pool at once (the rest wait their turn).
static CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(8);

/// What one appended batch may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded `BatchedRecord`, in bytes (`max-record-size`).
    pub max_record_size: usize,
    /// Most records one batch may hold (`max-batch-records`); also bounds an Append's response.
    pub max_batch_records: u32,
}

impl Limits {
    /// Most bytes a batch's payload may decompress to.
    pub fn max_decoded(&self) -> usize {
        self.max_record_size.saturating_mul(MAX_EXPANSION)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_record_size: 1 << 20,
            max_batch_records: DEFAULT_MAX_BATCH_RECORDS,
        }
    }
}

/// Checks a batch; big or compressed payloads are checked on the blocking pool.
pub async fn check(batch: Option<&BatchedRecord>, limits: Limits) -> ApiResult<()> {
    let Some(b) = batch else {
        return validate(None, &limits);
    };
    if b.compression_type == CompressionType::None as i32 && b.payload.len() <= INLINE_CHECK_BYTES {
        return validate(Some(b), &limits);
    }
    // Cheap refusals first, so a refused batch never waits for a blocking thread.
    check_envelope(b, &limits)?;
    // Each check may hold a decompressor's window (up to 8 MiB): only a few run at once.
    let _slot = CHECKS.acquire().await.expect("the semaphore is never closed");
    let b = b.clone(); // payload is `Bytes`: a reference count, not a copy
    tokio::task::spawn_blocking(move || validate(Some(&b), &limits))
        .await
        .map_err(|e| ApiError::MalformedBatch(format!("checking the batch failed: {e}")))?
}

/// Checks a batch on the calling thread.
pub fn validate(batch: Option<&BatchedRecord>, limits: &Limits) -> ApiResult<()> {
    let batch = batch.ok_or(ApiError::EmptyBatch("records is missing"))?;
    check_envelope(batch, limits)?;
    let held = count_records(batch, limits)?;
    if held != u64::from(batch.batch_size) {
        return Err(ApiError::MalformedBatch(format!(
            "batchSize is {} but the payload holds {held} records",
            batch.batch_size
        )));
    }
    Ok(())
}

/// What can be refused without looking into the payload.
fn check_envelope(batch: &BatchedRecord, limits: &Limits) -> ApiResult<()> {
    if batch.batch_size == 0 {
        return Err(ApiError::EmptyBatch("batchSize is 0"));
    }
    if batch.payload.is_empty() {
        return Err(ApiError::EmptyBatch("payload is empty"));
    }
    let size = batch.encoded_len();
    if size > limits.max_record_size {
        return Err(ApiError::RecordTooLarge {
            size,
            max: limits.max_record_size,
        });
    }
    if batch.batch_size > limits.max_batch_records {
        return Err(ApiError::TooManyRecords {
            count: batch.batch_size,
            max: limits.max_batch_records,
        });
    }
    compression(batch)?;
    Ok(())
}

fn compression(batch: &BatchedRecord) -> ApiResult<CompressionType> {
    CompressionType::try_from(batch.compression_type)
        .map_err(|_| ApiError::MalformedBatch(format!("unknown compressionType {}", batch.compression_type)))
}

/// Counts the records of a batch's payload (stopping at the first beyond `batchSize`) without
/// holding the decompressed payload.
fn count_records(batch: &BatchedRecord, limits: &Limits) -> ApiResult<u64> {
    let at_most = u64::from(batch.batch_size);
    let (limit, header_limit) = (limits.max_decoded(), limits.max_record_size);
    let what = match compression(batch)? {
        CompressionType::None => return scan_result(scan(&batch.payload[..], at_most, header_limit), "payload", limit),
        CompressionType::Gzip => "gzip",
        CompressionType::Zstd => "zstd",
    };
    let decoder: Box<dyn Read> = match what {
        "gzip" => Box::new(flate2::read::MultiGzDecoder::new(&batch.payload[..])),
        _ => Box::new(zstd_decoder(&batch.payload[..])?),
    };
    let reader = BufReader::with_capacity(32 << 10, Capped::new(decoder, limit));
    scan_result(scan(reader, at_most, header_limit), what, limit)
}

fn scan_result(r: Result<u64, ScanError>, what: &str, limit: usize) -> ApiResult<u64> {
    r.map_err(|e| match e {
        ScanError::Io(e) if e.get_ref().is_some_and(|i| i.is::<OverLimit>()) => {
            ApiError::MalformedBatch(format!("{what} payload decompresses to more than {limit} bytes"))
        }
        ScanError::Io(e) => ApiError::MalformedBatch(format!("{what} payload does not decompress: {e}")),
        ScanError::Malformed(m) => ApiError::MalformedBatch(format!("payload is not a BatchHStreamRecords: {m}")),
        ScanError::MoreThan(n) => {
            ApiError::MalformedBatch(format!("batchSize is {n} but the payload holds more than {n} records"))
        }
    })
}

/// A zstd decoder whose window (the memory a frame can make it allocate) is at most
/// 2^[`ZSTD_WINDOW_LOG_MAX`] bytes.
fn zstd_decoder(payload: &[u8]) -> ApiResult<zstd::stream::read::Decoder<'static, BufReader<&[u8]>>> {
    let err = |e: io::Error| ApiError::MalformedBatch(format!("zstd payload does not decompress: {e}"));
    let mut dec = zstd::stream::read::Decoder::new(payload).map_err(err)?;
    dec.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(err)?;
    Ok(dec)
}

/// Decompresses and decodes a stored batch's records (no more than `limit` decompressed bytes).
/// Only for batches that passed [`validate`] (read paths that must rebuild a batch).
pub fn decode_records(batch: &BatchedRecord, limit: usize) -> ApiResult<BatchHStreamRecords> {
    let decoded = match compression(batch)? {
        CompressionType::None => BatchHStreamRecords::decode(batch.payload.clone()),
        CompressionType::Gzip => {
            let raw = read_bounded(flate2::read::MultiGzDecoder::new(&batch.payload[..]), limit, "gzip")?;
            BatchHStreamRecords::decode(&raw[..])
        }
        CompressionType::Zstd => {
            let raw = read_bounded(zstd_decoder(&batch.payload[..])?, limit, "zstd")?;
            BatchHStreamRecords::decode(&raw[..])
        }
    };
    decoded.map_err(|e| ApiError::MalformedBatch(format!("payload is not a BatchHStreamRecords: {e}")))
}

fn read_bounded(r: impl Read, limit: usize, what: &str) -> ApiResult<Vec<u8>> {
    let mut out = Vec::new();
    r.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::MalformedBatch(format!("{what} payload does not decompress: {e}")))?;
    if out.len() > limit {
        return Err(ApiError::MalformedBatch(format!(
            "{what} payload decompresses to more than {limit} bytes"
        )));
    }
    Ok(out)
}

/// The marker error of a decompressed stream that passed its cap.
#[derive(Debug)]
struct OverLimit;

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("decompressed size limit reached")
    }
}

impl std::error::Error for OverLimit {}

/// A reader that fails with [`OverLimit`] once more than `left` bytes came out of it.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R> Capped<R> {
    fn new(inner: R, limit: usize) -> Self {
        Capped {
            inner,
            left: limit as u64,
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = buf
            .len()
            .min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..room])?;
        if n as u64 > self.left {
            return Err(io::Error::other(OverLimit));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

const WT_VARINT: u8 = 0;
const WT_FIXED64: u8 = 1;
const WT_LEN: u8 = 2;
const WT_START_GROUP: u8 = 3;
const WT_END_GROUP: u8 = 4;
const WT_FIXED32: u8 = 5;

/// Deepest nesting of unknown groups skipped (prost's recursion limit).
const MAX_GROUP_DEPTH: u32 = 100;

#[derive(Debug)]
enum ScanError {
    Io(io::Error),
    Malformed(String),
    /// More records than the number given.
    MoreThan(u64),
}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> Self {
        ScanError::Io(e)
    }
}

fn malformed(m: impl Into<String>) -> ScanError {
    ScanError::Malformed(m.into())
}

/// Walks a serialized `BatchHStreamRecords` and counts its records, accepting exactly what
/// prost's decoder accepts (a property test holds the two equal) except record headers over
/// `header_limit` bytes, and failing with [`ScanError::MoreThan`] at record `at_most + 1`.
/// Record payloads are skipped, never copied; only a header is held at a time.
fn scan<R: BufRead>(r: R, at_most: u64, header_limit: usize) -> Result<u64, ScanError> {
    let mut w = Wire { r, pos: 0 };
    let mut count = 0u64;
    while let Some((field, wt)) = w.key()? {
        match (field, wt) {
            (1, WT_LEN) => {
                let len = w.varint()?;
                w.record(len, header_limit)?;
                count += 1;
                if count > at_most {
                    return Err(ScanError::MoreThan(at_most));
                }
            }
            (1, _) => return Err(malformed(format!("field records has wire type {wt}"))),
            _ => w.skip_field(field, wt, None, 0)?,
        }
    }
    Ok(count)
}

/// A pull reader of protobuf wire format over a buffered stream.
struct Wire<R> {
    r: R,
    /// Bytes consumed so far.
    pos: u64,
}

impl<R: BufRead> Wire<R> {
    fn byte(&mut self) -> Result<Option<u8>, ScanError> {
        let Some(&b) = self.r.fill_buf()?.first() else {
            return Ok(None);
        };
        self.r.consume(1);
        self.pos += 1;
        Ok(Some(b))
    }

    /// A varint, or `None` at a clean end of input.
    fn varint_or_end(&mut self) -> Result<Option<u64>, ScanError> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some(b) = self.byte()? else {
                return if i == 0 {
                    Ok(None)
                } else {
                    Err(malformed("truncated varint"))
                };
            };
            if i == 9 && b > 1 {
                return Err(malformed("invalid varint"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(Some(v));
            }
        }
        Err(malformed("invalid varint"))
    }

    fn varint(&mut self) -> Result<u64, ScanError> {
        self.varint_or_end()?.ok_or_else(|| malformed("truncated"))
    }

    /// A field key (field number, wire type), or `None` at a clean end of input.
    fn key(&mut self) -> Result<Option<(u32, u8)>, ScanError> {
        let Some(key) = self.varint_or_end()? else {
            return Ok(None);
        };
        let key = u32::try_from(key).map_err(|_| malformed(format!("invalid key value {key}")))?;
        let wt = (key & 7) as u8;
        if wt > WT_FIXED32 {
            return Err(malformed(format!("invalid wire type value {wt}")));
        }
        if key >> 3 == 0 {
            return Err(malformed("invalid tag value 0"));
        }
        Ok(Some((key >> 3, wt)))
    }

    fn skip(&mut self, mut n: u64) -> Result<(), ScanError> {
        while n > 0 {
            let buf = self.r.fill_buf()?;
            if buf.is_empty() {
                return Err(malformed("truncated"));
            }
            let k = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            self.r.consume(k);
            self.pos += k as u64;
            n -= k as u64;
        }
        Ok(())
    }

    /// `n` bytes, grown as they arrive (a claimed length is not allocated up front).
    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, ScanError> {
        let mut v = Vec::new();
        (&mut self.r).take(n).read_to_end(&mut v)?;
        self.pos += v.len() as u64;
        if (v.len() as u64) < n {
            return Err(malformed("truncated"));
        }
        Ok(v)
    }

    /// A length prefix whose field must end by `end`.
    fn len_within(&mut self, end: u64) -> Result<u64, ScanError> {
        let n = self.varint()?;
        if self.pos.checked_add(n).is_none_or(|e| e > end) {
            return Err(malformed("a field runs past the end of its record"));
        }
        Ok(n)
    }

    /// One `HStreamRecord` of `len` bytes: its header is decoded, its payload skipped.
    fn record(&mut self, len: u64, header_limit: usize) -> Result<(), ScanError> {
        let end = self
            .pos
            .checked_add(len)
            .ok_or_else(|| malformed("record length overflows"))?;
        while self.pos < end {
            let (field, wt) = self.key()?.ok_or_else(|| malformed("truncated record"))?;
            match (field, wt) {
                (1, WT_LEN) => {
                    let n = self.len_within(end)?;
                    if n > header_limit as u64 {
                        return Err(malformed(format!("a record header is over {header_limit} bytes")));
                    }
                    let header = self.bytes(n)?;
                    HStreamRecordHeader::decode(&header[..])
                        .map_err(|e| malformed(format!("bad record header: {e}")))?;
                }
                (2, WT_LEN) => {
                    let n = self.len_within(end)?;
                    self.skip(n)?;
                }
                (1 | 2, _) => return Err(malformed(format!("record field {field} has wire type {wt}"))),
                _ => self.skip_field(field, wt, Some(end), 1)?,
            }
        }
        if self.pos != end {
            return Err(malformed("a record's fields run past its length"));
        }
        Ok(())
    }

    /// Skips an unknown field (inside a record when `end` is given).
    fn skip_field(&mut self, field: u32, wt: u8, end: Option<u64>, depth: u32) -> Result<(), ScanError> {
        match wt {
            WT_VARINT => {
                self.varint()?;
            }
            WT_FIXED64 => self.skip(8)?,
            WT_FIXED32 => self.skip(4)?,
            WT_LEN => {
                let n = match end {
                    Some(end) => self.len_within(end)?,
                    None => self.varint()?,
                };
                self.skip(n)?;
            }
            WT_START_GROUP => {
                if depth >= MAX_GROUP_DEPTH {
                    return Err(malformed("groups nested too deep"));
                }
                loop {
                    let (f, w) = self.key()?.ok_or_else(|| malformed("truncated group"))?;
                    if w == WT_END_GROUP {
                        if f != field {
                            return Err(malformed("unexpected end group tag"));
                        }
                        break;
                    }
                    self.skip_field(f, w, end, depth + 1)?;
                }
            }
            _ => return Err(malformed("unexpected end group tag")),
        }
        Ok(())
    }
}

/// A unix-ms instant as a protobuf Timestamp.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A stored batch as a reader receives it: its record ids (one per record, sharing the
/// batch's LSN) and the batch as appended, stamped with its append time.
pub fn received(shard_id: u64, b: crate::store::StoredBatch) -> hstream_proto::ReceivedRecord {
    let record_ids = (0..b.batch_size)
        .map(|i| hstream_proto::RecordId {
            shard_id,
            batch_id: b.lsn,
            batch_index: i,
        })
        .collect();
    hstream_proto::ReceivedRecord {
        record_ids,
        record: Some(BatchedRecord {
            compression_type: b.compression as i32,
            publish_time: Some(timestamp(b.timestamp_ms)),
            batch_size: b.batch_size,
            payload: b.payload,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hstream_proto::{HStreamRecord, HStreamRecordHeader};
    use std::io::Write;

    fn records(n: usize) -> Vec<u8> {
        let recs = (0..n)
            .map(|i| HStreamRecord {
                header: Some(HStreamRecordHeader {
                    flag: 1,
                    attributes: Default::default(),
                    key: format!("k{i}"),
                }),
                payload: format!("p{i}").into_bytes().into(),
            })
            .collect();
        BatchHStreamRecords { records: recs }.encode_to_vec()
    }

    fn batch(compression: CompressionType, payload: Vec<u8>, n: u32) -> BatchedRecord {
        BatchedRecord {
            compression_type: compression as i32,
            publish_time: None,
            batch_size: n,
            payload: payload.into(),
        }
    }

    fn limits(max_record_size: usize) -> Limits {
        Limits {
            max_record_size,
            ..Limits::default()
        }
    }

    fn gzip(raw: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(raw).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn accepts_all_three_compressions() {
        let raw = records(3);
        let zs = zstd::encode_all(&raw[..], 1).unwrap();
        let l = limits(1 << 20);
        validate(Some(&batch(CompressionType::None, raw.clone(), 3)), &l).unwrap();
        validate(Some(&batch(CompressionType::Gzip, gzip(&raw), 3)), &l).unwrap();
        validate(Some(&batch(CompressionType::Zstd, zs, 3)), &l).unwrap();
    }

    #[test]
    fn rejects_bad_batches_with_reasons() {
        let raw = records(2);
        let l = limits(1 << 20);
        assert!(matches!(validate(None, &l), Err(ApiError::EmptyBatch(_))));
        assert!(matches!(
            validate(Some(&batch(CompressionType::None, raw.clone(), 0)), &l),
            Err(ApiError::EmptyBatch(_))
        ));
        assert!(
            matches!(validate(Some(&batch(CompressionType::None, raw.clone(), 3)), &l), Err(ApiError::MalformedBatch(m)) if m.contains("batchSize is 3 but the payload holds 2"))
        );
        assert!(
            matches!(validate(Some(&batch(CompressionType::None, raw.clone(), 1)), &l), Err(ApiError::MalformedBatch(m)) if m.contains("batchSize is 1 but the payload holds more than 1"))
        );
        assert!(matches!(
            validate(Some(&batch(CompressionType::None, raw.clone(), 2)), &limits(10)),
            Err(ApiError::RecordTooLarge { .. })
        ));
        assert!(
            matches!(validate(Some(&batch(CompressionType::Gzip, raw.clone(), 2)), &l), Err(ApiError::MalformedBatch(m)) if m.contains("gzip"))
        );
        assert!(
            matches!(validate(Some(&batch(CompressionType::Zstd, raw.clone(), 2)), &l), Err(ApiError::MalformedBatch(m)) if m.contains("zstd"))
        );
        assert!(matches!(
            validate(Some(&batch(CompressionType::None, vec![0xff, 0xff, 0xff], 1)), &l),
            Err(ApiError::MalformedBatch(_))
        ));
        let mut unknown = batch(CompressionType::None, raw, 2);
        unknown.compression_type = 9;
        assert!(
            matches!(validate(Some(&unknown), &l), Err(ApiError::MalformedBatch(m)) if m.contains("compressionType 9"))
        );
    }

    #[test]
    fn compression_bomb_is_bounded() {
        let rec = HStreamRecord {
            header: None,
            payload: vec![0u8; 4 << 20].into(),
        };
        let raw = BatchHStreamRecords { records: vec![rec] }.encode_to_vec();
        let zs = zstd::encode_all(&raw[..], 3).unwrap();
        let err = validate(Some(&batch(CompressionType::Zstd, zs, 1)), &limits(8192)).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
    }

    /// The measured attack: a few KB of zstd holding tens of millions of empty records. Claimed
    /// honestly it is refused by count before any decompression; claimed as a small batch the
    /// walk stops at the first record past the claim.
    #[test]
    fn empty_record_bomb_is_refused_by_count() {
        let empties = [0x0a, 0x00].repeat(8 << 20); // 8M empty HStreamRecords
        let zs = zstd::encode_all(&empties[..], 19).unwrap();
        assert!(zs.len() < 16 << 10, "{}", zs.len());
        let l = Limits::default();
        let honest = batch(CompressionType::Zstd, zs.clone(), 8 << 20);
        let err = validate(Some(&honest), &l).unwrap_err();
        assert!(
            matches!(err, ApiError::TooManyRecords { count, max } if count == 8 << 20 && max == DEFAULT_MAX_BATCH_RECORDS),
            "{err}"
        );
        assert_eq!(err.error_code(), hstream_proto::ErrorCode::StreamInvalidRecordSize);
        assert!(err.to_string().contains("max-batch-records"), "{err}");
        let lying = batch(CompressionType::Zstd, zs, 1000);
        let err = validate(Some(&lying), &l).unwrap_err();
        assert!(err.to_string().contains("holds more than 1000 records"), "{err}");
        // At the limit exactly, empty records are fine.
        let at = [0x0a, 0x00].repeat(DEFAULT_MAX_BATCH_RECORDS as usize);
        validate(
            Some(&batch(CompressionType::Gzip, gzip(&at), DEFAULT_MAX_BATCH_RECORDS)),
            &l,
        )
        .unwrap();
    }

    /// One record whose payload decompresses to 60 MiB passes without the payload being held:
    /// the walk skips payload bytes as they stream out of the decompressor.
    #[test]
    fn large_decompressed_payload_is_streamed() {
        let rec = HStreamRecord {
            header: None,
            payload: vec![0u8; 60 << 20].into(),
        };
        let raw = BatchHStreamRecords { records: vec![rec] }.encode_to_vec();
        let zs = zstd::encode_all(&raw[..], 3).unwrap();
        drop(raw);
        validate(Some(&batch(CompressionType::Zstd, zs, 1)), &Limits::default()).unwrap();
    }

    #[test]
    fn zstd_window_is_bounded() {
        let rec = HStreamRecord {
            header: None,
            payload: (0..(40u32 << 20))
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect::<Vec<_>>()
                .into(),
        };
        let raw = BatchHStreamRecords { records: vec![rec] }.encode_to_vec();
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        enc.window_log(ZSTD_WINDOW_LOG_MAX + 2).unwrap();
        enc.long_distance_matching(true).unwrap();
        enc.write_all(&raw).unwrap();
        let zs = enc.finish().unwrap();
        let err = validate(Some(&batch(CompressionType::Zstd, zs, 1)), &limits(32 << 20)).unwrap_err();
        assert!(err.to_string().contains("zstd payload does not decompress"), "{err}");
    }

    #[test]
    fn oversized_header_is_refused() {
        let rec = HStreamRecord {
            header: Some(HStreamRecordHeader {
                flag: 0,
                attributes: Default::default(),
                key: "k".repeat(8192),
            }),
            payload: Default::default(),
        };
        let raw = BatchHStreamRecords { records: vec![rec] }.encode_to_vec();
        let err = validate(Some(&batch(CompressionType::Gzip, gzip(&raw), 1)), &limits(4096)).unwrap_err();
        assert!(err.to_string().contains("record header is over 4096 bytes"), "{err}");
    }

    #[tokio::test]
    async fn check_runs_compressed_batches_off_the_executor() {
        let raw = records(5);
        let l = Limits::default();
        check(
            Some(&batch(CompressionType::Zstd, zstd::encode_all(&raw[..], 1).unwrap(), 5)),
            l,
        )
        .await
        .unwrap();
        check(Some(&batch(CompressionType::None, raw, 5)), l).await.unwrap();
        let err = check(Some(&batch(CompressionType::Gzip, vec![1, 2, 3], 500_000)), l)
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::TooManyRecords { .. }), "{err}");
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use hstream_proto::HStreamRecord;
    use proptest::prelude::*;

    /// What prost's full decode says of `bytes`: the record count, or an error.
    fn prost_count(bytes: &[u8]) -> Option<u64> {
        BatchHStreamRecords::decode(bytes).ok().map(|b| b.records.len() as u64)
    }

    fn scan_count(bytes: &[u8]) -> Option<u64> {
        scan(bytes, u64::MAX, usize::MAX).ok()
    }

    fn valid_batch() -> impl Strategy<Value = Vec<u8>> {
        let header = (
            any::<i32>(),
            "[a-z]{0,6}",
            proptest::collection::hash_map("[a-z]{0,3}", "[a-z]{0,3}", 0..3),
        )
            .prop_map(|(flag, key, attributes)| HStreamRecordHeader { flag, attributes, key });
        let record = (
            proptest::option::of(header),
            proptest::collection::vec(any::<u8>(), 0..20),
        )
            .prop_map(|(header, payload)| HStreamRecord {
                header,
                payload: payload.into(),
            });
        proptest::collection::vec(record, 0..6).prop_map(|records| BatchHStreamRecords { records }.encode_to_vec())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// Arbitrary client bytes never panic the validator, whatever the claimed compression.
        #[test]
        fn arbitrary_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512),
                                          compression in 0i32..4, size in 0u32..8) {
            let b = BatchedRecord { compression_type: compression, publish_time: None, batch_size: size, payload: payload.into() };
            let _ = validate(Some(&b), &Limits::default());
        }

        /// The streaming walk accepts exactly what prost's decoder accepts, with the same count.
        #[test]
        fn scan_agrees_with_prost_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(scan_count(&bytes), prost_count(&bytes));
        }

        /// ... and on valid batches, truncated or with one byte changed.
        #[test]
        fn scan_agrees_with_prost_on_damaged_batches(bytes in valid_batch(), at in any::<prop::sample::Index>(),
                                                     byte in any::<u8>(), cut in any::<bool>()) {
            prop_assert_eq!(scan_count(&bytes), prost_count(&bytes));
            if !bytes.is_empty() {
                let mut damaged = bytes.clone();
                let i = at.index(damaged.len());
                if cut { damaged.truncate(i) } else { damaged[i] = byte }
                prop_assert_eq!(scan_count(&damaged), prost_count(&damaged), "{:?}", damaged);
            }
        }
    }
}
