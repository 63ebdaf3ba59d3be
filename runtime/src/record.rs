//! Records as connectors see them: what a source emits and what a sink receives (re-exported
//! by [`crate::connector`]).

use bytes::Bytes;

/// How a record's payload is encoded, as HStreamDB's record header flag says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFlag {
    /// A protobuf `google.protobuf.Struct` (what HStreamDB calls a JSON record).
    Json,
    Raw,
}

/// A record's attributes (HStreamDB's record header attributes): string pairs beside the payload,
/// such as an MQTT message's topic.
pub type Attributes = std::collections::HashMap<String, String>;

/// One record a source emits.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Partition key: records with one key keep their order.
    pub key: String,
    pub flag: PayloadFlag,
    pub payload: Bytes,
    pub attributes: Attributes,
}

impl Record {
    /// A record without attributes.
    pub fn new(key: impl Into<String>, flag: PayloadFlag, payload: impl Into<Bytes>) -> Record {
        Record {
            key: key.into(),
            flag,
            payload: payload.into(),
            attributes: Attributes::new(),
        }
    }

    /// An upper bound of the record's encoded size in a stored batch (payload, key, attributes
    /// and their protobuf framing): what is compared with the stream's max record size.
    pub fn encoded_size_bound(&self) -> usize {
        let attrs: usize = self.attributes.iter().map(|(k, v)| k.len() + v.len() + 18).sum();
        self.payload.len() + self.key.len() + attrs + 32
    }
}

/// One record a sink receives, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkRecord {
    pub shard_id: u64,
    pub lsn: u64,
    pub index: u32,
    pub key: String,
    pub flag: PayloadFlag,
    pub payload: Bytes,
    pub attributes: Attributes,
}
