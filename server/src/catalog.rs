//! The in-memory view of streams and shards that request paths consult (an append must not wait
//! on the MetaStore). The MetaStore is the source of truth: every change is written there first
//! and mirrored here only once it is committed.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use hstream_proto::ErrorCode;

use crate::error::{ApiError, ApiResult};
use crate::meta::{ShardMeta, StreamMeta};
use crate::store::Shard;

/// Prefix of the names that force-deleted streams are archived under.
pub const ARCHIVED_PREFIX: &str = "__deleted_stream__";

#[derive(Clone)]
pub struct ShardEntry {
    pub meta: ShardMeta,
    pub log: Arc<dyn Shard>,
}

#[derive(Clone)]
pub struct StreamEntry {
    pub meta: StreamMeta,
    pub shards: Vec<ShardEntry>,
}

#[derive(Default)]
pub struct Catalog {
    /// Live and archived streams by (stored) name.
    streams: RwLock<HashMap<String, Arc<StreamEntry>>>,
}

impl Catalog {
    pub fn insert(&self, entry: StreamEntry) {
        self.streams
            .write()
            .expect("lock")
            .insert(entry.meta.name.clone(), Arc::new(entry));
    }

    pub fn remove(&self, name: &str) -> Option<Arc<StreamEntry>> {
        self.streams.write().expect("lock").remove(name)
    }

    /// A live stream by name.
    pub fn stream(&self, name: &str) -> ApiResult<Arc<StreamEntry>> {
        self.streams
            .read()
            .expect("lock")
            .get(name)
            .filter(|s| !s.meta.archived)
            .cloned()
            .ok_or_else(|| ApiError::StreamNotFound(name.to_owned()))
    }

    /// A live or archived stream by its stored name.
    pub fn any_stream(&self, name: &str) -> Option<Arc<StreamEntry>> {
        self.streams.read().expect("lock").get(name).cloned()
    }

    pub fn live_streams(&self, prefix: &str) -> Vec<Arc<StreamEntry>> {
        let mut v: Vec<_> = self
            .streams
            .read()
            .expect("lock")
            .values()
            .filter(|s| !s.meta.archived && s.meta.name.starts_with(prefix))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        v
    }

    pub fn all_streams(&self) -> Vec<Arc<StreamEntry>> {
        self.streams.read().expect("lock").values().cloned().collect()
    }

    /// The shard `id` of the live stream `stream`.
    pub fn shard_of(&self, stream: &str, id: u64) -> ApiResult<ShardEntry> {
        let s = self.stream(stream)?;
        s.shards
            .iter()
            .find(|sh| sh.meta.id == id)
            .cloned()
            .ok_or_else(|| ApiError::ShardNotInStream {
                shard: id,
                stream: stream.to_owned(),
            })
    }

    /// A shard of any stream, live or archived.
    pub fn shard(&self, id: u64) -> ApiResult<ShardEntry> {
        self.streams
            .read()
            .expect("lock")
            .values()
            .flat_map(|s| s.shards.iter())
            .find(|sh| sh.meta.id == id)
            .cloned()
            .ok_or(ApiError::ShardNotFound(id))
    }
}

/// HStreamDB's rule for resource names: 1 to 255 characters, starting with a letter, then
/// letters, digits, `-` and `_`; "zookeeper" is reserved.
pub fn validate_name(kind: &'static str, code: ErrorCode, name: &str) -> ApiResult<()> {
    let reason = hstream_runtime::streams::name_problem(name).or((name == "zookeeper").then_some("is reserved"));
    match reason {
        Some(reason) => Err(ApiError::InvalidName {
            kind,
            code,
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let ok = |n: &str| validate_name("stream", ErrorCode::StreamInvalidObjectIdentifier, n).is_ok();
        assert!(ok("s1") && ok("a-b_c") && ok(&"a".repeat(255)));
        assert!(!ok("") && !ok("1s") && !ok("_s") && !ok("s.1") && !ok("s 1") && !ok("zookeeper"));
        assert!(!ok(&"a".repeat(256)) && !ok("é"));
    }
}
