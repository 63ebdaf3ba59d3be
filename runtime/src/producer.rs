//! Producer tags: which task appended a stored batch, and the task's numbers for its records,
//! kept with the batch so that a restarted source can tell which of its records already landed
//! (exactly-once appends, decision 035).
//!
//! The tag rides in the batch's own payload as field 4000 of `BatchHStreamRecords`, a field
//! HStreamDB's schema does not have: protobuf readers (every HStreamDB client, our server)
//! skip it, so clients see the records they always saw, and every store keeps it, since a
//! store keeps payloads as they came.

use prost::Message;

/// The field number of the tag in a `BatchHStreamRecords` payload.
pub const TAG_FIELD: u32 = 4000;

/// A batch's producer and its records' numbers.
#[derive(Clone, PartialEq, Message)]
pub struct ProducerTag {
    /// The task that appended the batch.
    #[prost(string, tag = "1")]
    pub producer: String,
    /// The number of the batch's first record.
    #[prost(uint64, tag = "2")]
    pub first: u64,
    /// For each later record, its number minus its predecessor's; empty when they follow each
    /// other (the usual case: every record of one emit to one shard).
    #[prost(uint64, repeated, tag = "3")]
    pub deltas: Vec<u64>,
}

/// The tag as a payload sees it: only the tag's field, so decoding skips the records.
#[derive(Clone, PartialEq, Message)]
struct Tagged {
    #[prost(message, optional, tag = "4000")]
    tag: Option<ProducerTag>,
}

impl ProducerTag {
    /// The tag of records numbered `seqs` (increasing).
    pub fn new(producer: &str, seqs: &[u64]) -> ProducerTag {
        let first = seqs.first().copied().unwrap_or(0);
        let contiguous = seqs.windows(2).all(|w| w[1] == w[0] + 1);
        let deltas = if contiguous {
            Vec::new()
        } else {
            seqs.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect()
        };
        ProducerTag {
            producer: producer.to_owned(),
            first,
            deltas,
        }
    }

    /// The numbers of a batch of `n` records.
    pub fn seqs(&self, n: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(n);
        let mut s = self.first;
        for i in 0..n {
            if i > 0 {
                s = s.wrapping_add(self.deltas.get(i - 1).copied().unwrap_or(1));
            }
            out.push(s);
        }
        out
    }

    /// Appends the tag to an encoded `BatchHStreamRecords` (a message's fields may come in any
    /// order, so the result decodes as the records plus the tag).
    pub fn append_to(&self, payload: &mut Vec<u8>) {
        Tagged {
            tag: Some(self.clone()),
        }
        .encode(payload)
        .expect("a Vec grows");
    }

    /// The tag of an uncompressed `BatchHStreamRecords` payload, if it has one.
    pub fn of(payload: &[u8]) -> Option<ProducerTag> {
        Tagged::decode(payload).ok()?.tag
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hstream_proto as pb;

    #[test]
    fn a_tag_rides_with_the_records_and_readers_skip_it() {
        let records = vec![pb::HStreamRecord {
            header: Some(pb::HStreamRecordHeader {
                key: "k".into(),
                ..Default::default()
            }),
            payload: b"x".to_vec().into(),
        }];
        let plain = pb::BatchHStreamRecords {
            records: records.clone(),
        };
        let mut payload = plain.encode_to_vec();
        let tag = ProducerTag::new("task", &[7, 8, 9]);
        assert!(tag.deltas.is_empty(), "contiguous numbers cost nothing per record");
        tag.append_to(&mut payload);
        assert_eq!(
            pb::BatchHStreamRecords::decode(&payload[..]).unwrap(),
            plain,
            "readers see the records"
        );
        assert_eq!(ProducerTag::of(&payload), Some(tag.clone()));
        assert_eq!(tag.seqs(3), [7, 8, 9]);
        assert_eq!(ProducerTag::of(&plain.encode_to_vec()), None, "an untagged batch");
        let gapped = ProducerTag::new("task", &[3, 5, 6, 10]);
        assert_eq!(gapped.seqs(4), [3, 5, 6, 10]);
    }
}
