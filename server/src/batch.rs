//! Checks an appended `BatchedRecord` before anything is stored: it is not empty, its encoded
//! size is within `max-record-size`, its payload decompresses (within a bound, so a compression
//! bomb cannot exhaust memory) into a `BatchHStreamRecords` holding exactly `batchSize` records.
//! The stored bytes are still the client's, untouched.

use std::io::Read;

use hstream_proto::{BatchHStreamRecords, BatchedRecord, CompressionType};
use prost::Message;

use crate::error::{ApiError, ApiResult};

/// Decompressed batches may be this many times `max-record-size` at most.
pub const MAX_EXPANSION: usize = 64;

pub fn validate(batch: Option<&BatchedRecord>, max_record_size: usize) -> ApiResult<()> {
    let batch = batch.ok_or(ApiError::EmptyBatch("records is missing"))?;
    if batch.batch_size == 0 {
        return Err(ApiError::EmptyBatch("batchSize is 0"));
    }
    if batch.payload.is_empty() {
        return Err(ApiError::EmptyBatch("payload is empty"));
    }
    let size = batch.encoded_len();
    if size > max_record_size {
        return Err(ApiError::RecordTooLarge {
            size,
            max: max_record_size,
        });
    }
    let limit = max_record_size.saturating_mul(MAX_EXPANSION);
    let records = decode_records(batch, limit)?;
    if records.records.len() != batch.batch_size as usize {
        return Err(ApiError::MalformedBatch(format!(
            "batchSize is {} but the payload holds {} records",
            batch.batch_size,
            records.records.len()
        )));
    }
    Ok(())
}

/// Decompresses and decodes a batch's records (no more than `limit` decompressed bytes).
pub fn decode_records(batch: &BatchedRecord, limit: usize) -> ApiResult<BatchHStreamRecords> {
    let compression = CompressionType::try_from(batch.compression_type)
        .map_err(|_| ApiError::MalformedBatch(format!("unknown compressionType {}", batch.compression_type)))?;
    let decoded = match compression {
        CompressionType::None => BatchHStreamRecords::decode(batch.payload.clone()),
        CompressionType::Gzip => {
            let raw = read_bounded(flate2::read::MultiGzDecoder::new(&batch.payload[..]), limit, "gzip")?;
            BatchHStreamRecords::decode(&raw[..])
        }
        CompressionType::Zstd => {
            let dec = zstd::stream::read::Decoder::new(&batch.payload[..])
                .map_err(|e| ApiError::MalformedBatch(format!("zstd payload does not decompress: {e}")))?;
            let raw = read_bounded(dec, limit, "zstd")?;
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

    #[test]
    fn accepts_all_three_compressions() {
        let raw = records(3);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&raw).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&raw[..], 1).unwrap();
        validate(Some(&batch(CompressionType::None, raw, 3)), 1 << 20).unwrap();
        validate(Some(&batch(CompressionType::Gzip, gz, 3)), 1 << 20).unwrap();
        validate(Some(&batch(CompressionType::Zstd, zs, 3)), 1 << 20).unwrap();
    }

    #[test]
    fn rejects_bad_batches_with_reasons() {
        let raw = records(2);
        assert!(matches!(validate(None, 100), Err(ApiError::EmptyBatch(_))));
        assert!(matches!(
            validate(Some(&batch(CompressionType::None, raw.clone(), 0)), 1 << 20),
            Err(ApiError::EmptyBatch(_))
        ));
        assert!(
            matches!(validate(Some(&batch(CompressionType::None, raw.clone(), 3)), 1 << 20), Err(ApiError::MalformedBatch(m)) if m.contains("batchSize is 3"))
        );
        assert!(matches!(
            validate(Some(&batch(CompressionType::None, raw.clone(), 2)), 10),
            Err(ApiError::RecordTooLarge { .. })
        ));
        assert!(
            matches!(validate(Some(&batch(CompressionType::Gzip, raw.clone(), 2)), 1 << 20), Err(ApiError::MalformedBatch(m)) if m.contains("gzip"))
        );
        assert!(
            matches!(validate(Some(&batch(CompressionType::Zstd, raw.clone(), 2)), 1 << 20), Err(ApiError::MalformedBatch(m)) if m.contains("zstd"))
        );
        assert!(matches!(
            validate(Some(&batch(CompressionType::None, vec![0xff, 0xff, 0xff], 1)), 1 << 20),
            Err(ApiError::MalformedBatch(_))
        ));
        let mut unknown = batch(CompressionType::None, raw, 2);
        unknown.compression_type = 9;
        assert!(
            matches!(validate(Some(&unknown), 1 << 20), Err(ApiError::MalformedBatch(m)) if m.contains("compressionType 9"))
        );
    }

    #[test]
    fn compression_bomb_is_bounded() {
        let zeros = vec![0u8; 4 << 20];
        let zs = zstd::encode_all(&zeros[..], 3).unwrap();
        let err = validate(Some(&batch(CompressionType::Zstd, zs, 1)), 8192).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Arbitrary client bytes never panic the validator, whatever the claimed compression.
        #[test]
        fn arbitrary_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512),
                                          compression in 0i32..4, size in 0u32..8) {
            let b = BatchedRecord { compression_type: compression, publish_time: None, batch_size: size, payload: payload.into() };
            let _ = validate(Some(&b), 1 << 20);
        }
    }
}
