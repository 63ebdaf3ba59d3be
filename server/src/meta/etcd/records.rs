//! How each object is stored in etcd: JSON records mirroring the metadata types (shard keys as
//! decimal text, since JSON numbers cannot hold a u128).

use serde::{Deserialize, Serialize};

use super::super::*;
use super::{KeyValue, invalid};

mod u128_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct ShardRec {
    pub(super) id: u64,
    #[serde(with = "u128_text")]
    pub(super) start_key: u128,
    #[serde(with = "u128_text")]
    pub(super) end_key: u128,
    pub(super) epoch: u64,
}

#[derive(Serialize, Deserialize)]
pub(super) struct StreamRec {
    pub(super) name: String,
    pub(super) replication_factor: u32,
    pub(super) backlog_secs: u32,
    pub(super) shard_count: u32,
    pub(super) created_ms: i64,
    pub(super) archived: bool,
    pub(super) shards: Vec<ShardRec>,
}

impl StreamRec {
    pub(super) fn new(s: &StreamMeta, shards: &[ShardMeta]) -> Self {
        StreamRec {
            name: s.name.clone(),
            replication_factor: s.replication_factor,
            backlog_secs: s.backlog_secs,
            shard_count: s.shard_count,
            created_ms: s.created_ms,
            archived: s.archived,
            shards: shards
                .iter()
                .map(|sh| ShardRec {
                    id: sh.id,
                    start_key: sh.start_key,
                    end_key: sh.end_key,
                    epoch: sh.epoch,
                })
                .collect(),
        }
    }

    pub(super) fn meta(&self) -> StreamMeta {
        StreamMeta {
            name: self.name.clone(),
            replication_factor: self.replication_factor,
            backlog_secs: self.backlog_secs,
            shard_count: self.shard_count,
            created_ms: self.created_ms,
            archived: self.archived,
        }
    }

    /// Shards in id order.
    pub(super) fn shards(&self) -> Vec<ShardMeta> {
        let mut v: Vec<ShardMeta> = self
            .shards
            .iter()
            .map(|s| ShardMeta {
                id: s.id,
                stream: self.name.clone(),
                start_key: s.start_key,
                end_key: s.end_key,
                epoch: s.epoch,
            })
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct SubRec {
    pub(super) id: String,
    pub(super) stream: String,
    pub(super) ack_timeout_secs: i32,
    pub(super) max_unacked: i32,
    pub(super) earliest: bool,
    pub(super) created_ms: i64,
}

impl SubRec {
    pub(super) fn new(s: &SubscriptionMeta) -> Self {
        SubRec {
            id: s.id.clone(),
            stream: s.stream.clone(),
            ack_timeout_secs: s.ack_timeout_secs,
            max_unacked: s.max_unacked,
            earliest: s.offset == StartOffset::Earliest,
            created_ms: s.created_ms,
        }
    }

    pub(super) fn meta(self) -> SubscriptionMeta {
        SubscriptionMeta {
            id: self.id,
            stream: self.stream,
            ack_timeout_secs: self.ack_timeout_secs,
            max_unacked: self.max_unacked,
            offset: if self.earliest {
                StartOffset::Earliest
            } else {
                StartOffset::Latest
            },
            created_ms: self.created_ms,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct ReaderRec {
    pub(super) id: String,
    pub(super) stream: String,
    pub(super) shard_id: u64,
    pub(super) start_lsn: u64,
    pub(super) timeout_ms: u32,
    pub(super) offset_spec: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct ConnectorRec {
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) target: String,
    pub(super) config: String,
    pub(super) status: String,
    pub(super) created_ms: i64,
    pub(super) node: u32,
}

#[derive(Serialize, Deserialize)]
pub(super) struct NodeRec {
    pub(super) id: u32,
    pub(super) host: String,
    pub(super) port: u32,
    pub(super) state: String,
    pub(super) updated_ms: i64,
}

/// `owners/<resource>`: compared byte for byte by fenced writes, so its encoding is fixed
/// (field order, no optional fields left out).
#[derive(Serialize, Deserialize)]
pub(super) struct OwnerRec {
    pub(super) owner: Option<u32>,
    pub(super) epoch: u64,
}

impl OwnerRec {
    pub(super) fn of(o: &Ownership) -> Self {
        OwnerRec {
            owner: o.owner,
            epoch: o.epoch,
        }
    }

    pub(super) fn ownership(self, resource: &str) -> Ownership {
        Ownership {
            resource: resource.to_owned(),
            owner: self.owner,
            epoch: self.epoch,
        }
    }
}

pub(super) fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("metadata serializes")
}

pub(super) fn parse<T: for<'de> Deserialize<'de>>(what: &str, kv: &KeyValue) -> MetaResult<T> {
    serde_json::from_slice(&kv.value).map_err(|e| invalid(&format!("{what} {}", String::from_utf8_lossy(&kv.key)), e))
}
