//! The MetaStore on etcd (`--metastore-uri etcd://host1:2379,host2:2379[/prefix]`): metadata every
//! node of a cluster sees, surviving the loss of any minority of etcd members. We write no
//! consensus of our own; etcd's Raft does it.
//!
//! Layout under the prefix (default `/hstream`), one key per object, values JSON unless said:
//! - `cluster-id`, `next-shard-id` (decimal text); `shard-ids/<id / 64>`: the shard ids in use
//!   in that chunk (written with the stream that owns them, so uniqueness costs a few keys, not
//!   a read of every stream);
//! - `streams/<name>`: the stream and all its shards in one value (live and archived alike), so
//!   creating or deleting a stream of 4096 shards is one put or delete of it plus at most 65
//!   writes of its id chunks, within etcd's default limit of 128 operations per transaction
//!   (each chunk is read first, one round trip each);
//! - `subscriptions/<id>`; `progress/<id>/<chunk>`: the committed progress of the shards whose
//!   id divided by [`PROGRESS_CHUNK`] is `chunk` (a map shard → next LSN), so a commit of a
//!   subscription's every shard is one transaction of at most 4096 / 64 puts;
//! - `readers/<id>`, `connectors/<name>`, `nodes/<id>` (ids zero-padded, so keys sort as ids);
//! - `checkpoints/<owner>` and `kv/<owner>/<key>`: raw bytes (a checkpoint is its version, 4
//!   bytes big-endian, then its data).
//!
//! Guarantees (the trait's, checked by `contract.rs` against a real etcd): each call is one etcd
//! transaction, so it is atomic; creates compare the key's create revision with 0, so they never
//! overwrite; read-modify-write calls compare the mod revisions of what they read and retry when
//! another writer came first; a write returns once etcd committed it (its Raft log is fsynced by
//! a quorum); ranges come back sorted by key, which is the name or the padded id.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use hstream_proto::etcd::compare::{CompareResult, CompareTarget, TargetUnion};
use hstream_proto::etcd::kv_client::KvClient;
use hstream_proto::etcd::request_op::Request as Op;
use hstream_proto::etcd::response_op::Response as OpResponse;
use hstream_proto::etcd::{Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse};
use hstream_proto::mvccpb::KeyValue;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use super::*;

/// Shards per progress key.
pub const PROGRESS_CHUNK: u64 = 64;
/// Keys per range request (a listing pages through larger ranges).
const PAGE: i64 = 1000;
/// Attempts of a read-modify-write against concurrent writers before giving up.
const RETRIES: usize = 64;
/// etcd's default `--max-txn-ops`: operations (and compares) per transaction.
const MAX_TXN_OPS: usize = 128;

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> MetaError {
    MetaError::Backend(Box::new(e))
}

fn invalid(what: &str, e: impl std::fmt::Display) -> MetaError {
    MetaError::Invalid(format!("{what}: {e}"))
}

/// `etcd://host:port,host:port[/prefix]` → (endpoints, prefix).
pub fn parse_uri(uri: &str) -> Result<(Vec<String>, String), String> {
    let rest = uri
        .strip_prefix("etcd://")
        .ok_or_else(|| format!("{uri:?}: an etcd metastore URI starts with etcd://"))?;
    let (hosts, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let prefix = if prefix.is_empty() { "/hstream" } else { prefix };
    if hosts.contains('@') {
        // Never echoed: what precedes '@' may be a password.
        return Err("an etcd metastore URI with user:password@ is not supported yet (etcd auth is not built)".into());
    }
    let endpoints: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("http://{h}"))
        .collect();
    if endpoints.is_empty() {
        return Err(format!("{uri:?}: name at least one etcd host:port"));
    }
    Ok((endpoints, prefix.to_owned()))
}

/// The key right after every key starting with `prefix` (etcd's `range_end` of a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn put(key: Vec<u8>, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key,
            value,
            ..Default::default()
        })),
    }
}

fn delete(key: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
            key,
            ..Default::default()
        })),
    }
}

fn delete_prefix(prefix: Vec<u8>) -> RequestOp {
    let range_end = prefix_end(&prefix);
    RequestOp {
        request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
            key: prefix,
            range_end,
            ..Default::default()
        })),
    }
}

/// The key does not exist.
fn absent(key: Vec<u8>) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key,
        range_end: Vec::new(),
        target_union: Some(TargetUnion::CreateRevision(0)),
    }
}

/// The key is as it was read: modified last at `rev` (0: it did not exist).
fn unchanged(key: Vec<u8>, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key,
        range_end: Vec::new(),
        target_union: Some(TargetUnion::ModRevision(rev)),
    }
}

/// No key under `prefix` was created or changed after revision `rev`.
fn range_unchanged(prefix: Vec<u8>, rev: i64) -> Compare {
    let range_end = prefix_end(&prefix);
    Compare {
        result: CompareResult::Less as i32,
        target: CompareTarget::Mod as i32,
        key: prefix,
        range_end,
        target_union: Some(TargetUnion::ModRevision(rev + 1)),
    }
}

/// How many keys the `i`th operation of a succeeded transaction deleted.
fn deleted(resp: &TxnResponse, i: usize) -> i64 {
    match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(OpResponse::ResponseDeleteRange(d)) => d.deleted,
        _ => 0,
    }
}

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
struct ShardRec {
    id: u64,
    #[serde(with = "u128_text")]
    start_key: u128,
    #[serde(with = "u128_text")]
    end_key: u128,
    epoch: u64,
}

#[derive(Serialize, Deserialize)]
struct StreamRec {
    name: String,
    replication_factor: u32,
    backlog_secs: u32,
    shard_count: u32,
    created_ms: i64,
    archived: bool,
    shards: Vec<ShardRec>,
}

impl StreamRec {
    fn new(s: &StreamMeta, shards: &[ShardMeta]) -> Self {
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

    fn meta(&self) -> StreamMeta {
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
    fn shards(&self) -> Vec<ShardMeta> {
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
struct SubRec {
    id: String,
    stream: String,
    ack_timeout_secs: i32,
    max_unacked: i32,
    earliest: bool,
    created_ms: i64,
}

impl SubRec {
    fn new(s: &SubscriptionMeta) -> Self {
        SubRec {
            id: s.id.clone(),
            stream: s.stream.clone(),
            ack_timeout_secs: s.ack_timeout_secs,
            max_unacked: s.max_unacked,
            earliest: s.offset == StartOffset::Earliest,
            created_ms: s.created_ms,
        }
    }

    fn meta(self) -> SubscriptionMeta {
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
struct ReaderRec {
    id: String,
    stream: String,
    shard_id: u64,
    start_lsn: u64,
    timeout_ms: u32,
    offset_spec: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct ConnectorRec {
    name: String,
    kind: String,
    target: String,
    config: String,
    status: String,
    created_ms: i64,
    node: u32,
}

#[derive(Serialize, Deserialize)]
struct NodeRec {
    id: u32,
    host: String,
    port: u32,
    state: String,
    updated_ms: i64,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("metadata serializes")
}

fn parse<T: for<'de> Deserialize<'de>>(what: &str, kv: &KeyValue) -> MetaResult<T> {
    serde_json::from_slice(&kv.value).map_err(|e| invalid(&format!("{what} {}", String::from_utf8_lossy(&kv.key)), e))
}

/// One key of the shard ids in use (`shard-ids/<id / 64>`), as read.
struct IdChunk {
    chunk: u64,
    key: Vec<u8>,
    ids: std::collections::BTreeSet<u64>,
    guard: Compare,
}

impl IdChunk {
    /// The write that leaves the chunk with its ids now (a delete when none is left).
    fn write(&self) -> RequestOp {
        if self.ids.is_empty() {
            delete(self.key.clone())
        } else {
            put(self.key.clone(), json(&self.ids))
        }
    }
}

/// Guards and writes that take `ids` out of the chunks of shard ids in use.
fn release_ids(chunks: &mut [IdChunk], ids: &[u64], guards: &mut Vec<Compare>, ops: &mut Vec<RequestOp>) {
    for c in chunks.iter_mut() {
        for id in ids {
            c.ids.remove(id);
        }
        guards.push(c.guard.clone());
        ops.push(c.write());
    }
}

pub struct EtcdMetaStore {
    kv: KvClient<Channel>,
    prefix: String,
    /// `host:port,…` as configured, for messages.
    hosts: String,
}

impl EtcdMetaStore {
    /// Connects to the etcd cluster `uri` names (no request is made yet: an unreachable etcd
    /// shows at the first call, within `timeout`).
    pub async fn connect(uri: &str, timeout: Duration) -> MetaResult<Self> {
        let (endpoints, prefix) = parse_uri(uri).map_err(MetaError::Invalid)?;
        let endpoints = endpoints
            .iter()
            .map(|e| {
                Endpoint::from_shared(e.clone())
                    .map(|e| e.connect_timeout(timeout).timeout(timeout).tcp_nodelay(true))
                    .map_err(|err| MetaError::Invalid(format!("etcd endpoint {e:?}: {err}")))
            })
            .collect::<MetaResult<Vec<_>>>()?;
        let hosts = endpoints
            .iter()
            .map(|e| e.uri().authority().map_or(String::new(), |a| a.to_string()))
            .collect::<Vec<_>>()
            .join(",");
        let channel = Channel::balance_list(endpoints.into_iter());
        let kv = KvClient::new(channel).max_decoding_message_size(usize::MAX);
        let store = EtcdMetaStore { kv, prefix, hosts };
        // Reachable now, or a clear error now rather than at the first request.
        store.get(store.key("cluster-id")).await?;
        Ok(store)
    }

    /// etcd's answer as a MetaError: one that says etcd cannot serve now (unreachable, no
    /// leader, a timed-out request) is `Unavailable`, naming the endpoints.
    fn failed(&self, s: tonic::Status) -> MetaError {
        use tonic::Code;
        match s.code() {
            // Unknown: a request in flight when the connection broke (h2 I/O errors).
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::Unknown
            | Code::ResourceExhausted => MetaError::Unavailable(format!(
                "etcd at {} cannot serve the request now: {}",
                self.hosts,
                s.message()
            )),
            _ => backend(s),
        }
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}/{rest}", self.prefix).into_bytes()
    }

    fn progress_chunk_key(&self, sub: &str, chunk: u64) -> Vec<u8> {
        self.key(&format!("progress/{sub}/{chunk:020}"))
    }

    /// The shard ids in use whose id divided by [`PROGRESS_CHUNK`] is the chunk, for each chunk
    /// that `ids` fall in: its key, its ids now, and a guard that it is still so.
    async fn id_chunks(&self, ids: impl Iterator<Item = u64>) -> MetaResult<Vec<IdChunk>> {
        let mut wanted: Vec<u64> = ids.map(|id| id / PROGRESS_CHUNK).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut out = Vec::with_capacity(wanted.len());
        for chunk in wanted {
            let key = self.key(&format!("shard-ids/{chunk:020}"));
            let (ids, guard) = match self.get(key.clone()).await? {
                Some(kv) => (parse("shard ids", &kv)?, unchanged(key.clone(), kv.mod_revision)),
                None => (std::collections::BTreeSet::new(), absent(key.clone())),
            };
            out.push(IdChunk { chunk, key, ids, guard });
        }
        Ok(out)
    }

    async fn get(&self, key: Vec<u8>) -> MetaResult<Option<KeyValue>> {
        let resp = self
            .kv
            .clone()
            .range(RangeRequest {
                key,
                ..Default::default()
            })
            .await
            .map_err(|e| self.failed(e))?
            .into_inner();
        Ok(resp.kvs.into_iter().next())
    }

    /// Every key under `prefix` in key order, and the revision the listing was read at.
    async fn list(&self, prefix: Vec<u8>) -> MetaResult<(Vec<KeyValue>, i64)> {
        let end = prefix_end(&prefix);
        let mut from = prefix.clone();
        let mut out = Vec::new();
        let mut revision = 0;
        loop {
            let resp = self
                .kv
                .clone()
                .range(RangeRequest {
                    key: from.clone(),
                    range_end: end.clone(),
                    limit: PAGE,
                    // Later pages at the first page's revision: one consistent listing.
                    revision,
                    ..Default::default()
                })
                .await;
            let resp = match resp {
                // The first page's revision was compacted away while paging: start again.
                Err(e) if e.code() == tonic::Code::OutOfRange && revision != 0 => {
                    (from, revision) = (prefix.clone(), 0);
                    out.clear();
                    continue;
                }
                r => r.map_err(|e| self.failed(e))?.into_inner(),
            };
            if revision == 0 {
                revision = resp.header.as_ref().map_or(0, |h| h.revision);
            }
            let more = resp.more;
            if let Some(last) = resp.kvs.last() {
                from = last.key.clone();
                from.push(0);
            }
            out.extend(resp.kvs);
            if !more {
                return Ok((out, revision));
            }
        }
    }

    async fn txn(&self, compare: Vec<Compare>, success: Vec<RequestOp>) -> MetaResult<TxnResponse> {
        Ok(self
            .kv
            .clone()
            .txn(TxnRequest {
                compare,
                success,
                failure: Vec::new(),
            })
            .await
            .map_err(|e| self.failed(e))?
            .into_inner())
    }

    async fn stream_rec(&self, name: &str) -> MetaResult<Option<(StreamRec, i64)>> {
        match self.get(self.key(&format!("streams/{name}"))).await? {
            Some(kv) => Ok(Some((parse("stream", &kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    async fn all_streams(&self) -> MetaResult<Vec<StreamRec>> {
        let (kvs, _) = self.list(self.key("streams/")).await?;
        kvs.iter().map(|kv| parse("stream", kv)).collect()
    }

    async fn subs_with_revision(&self) -> MetaResult<(Vec<(SubRec, i64)>, i64)> {
        let (kvs, rev) = self.list(self.key("subscriptions/")).await?;
        let subs = kvs
            .iter()
            .map(|kv| Ok((parse::<SubRec>("subscription", kv)?, kv.mod_revision)))
            .collect::<MetaResult<Vec<_>>>()?;
        Ok((subs, rev))
    }

    async fn connector_rmw(&self, name: &str, change: impl Fn(&mut ConnectorRec)) -> MetaResult<()> {
        let key = self.key(&format!("connectors/{name}"));
        for _ in 0..RETRIES {
            let Some(kv) = self.get(key.clone()).await? else {
                return Err(MetaError::NotFound {
                    kind: "connector",
                    name: name.to_owned(),
                });
            };
            let mut rec: ConnectorRec = parse("connector", &kv)?;
            change(&mut rec);
            let resp = self
                .txn(
                    vec![unchanged(key.clone(), kv.mod_revision)],
                    vec![put(key.clone(), json(&rec))],
                )
                .await?;
            if resp.succeeded {
                return Ok(());
            }
        }
        Err(contended("connector", name))
    }
}

/// Other writers changed what a call read, `RETRIES` times in a row: retryable.
fn contended(kind: &str, name: &str) -> MetaError {
    MetaError::Unavailable(format!(
        "{kind} {name:?} changed under {RETRIES} attempts in a row; try again"
    ))
}

fn connector_meta(r: ConnectorRec) -> ConnectorMeta {
    ConnectorMeta {
        name: r.name,
        kind: r.kind,
        target: r.target,
        config: r.config,
        status: r.status,
        created_ms: r.created_ms,
        node: r.node,
    }
}

fn reader_meta(r: ReaderRec) -> ReaderMeta {
    ReaderMeta {
        id: r.id,
        stream: r.stream,
        shard_id: r.shard_id,
        start_lsn: r.start_lsn,
        timeout_ms: r.timeout_ms,
        offset_spec: r.offset_spec,
    }
}

#[async_trait]
impl MetaStore for EtcdMetaStore {
    async fn cluster_id(&self, proposed: Option<&str>) -> MetaResult<Option<String>> {
        let key = self.key("cluster-id");
        if let Some(id) = proposed {
            self.txn(
                vec![absent(key.clone())],
                vec![put(key.clone(), id.as_bytes().to_vec())],
            )
            .await?;
        }
        self.get(key)
            .await?
            .map(|kv| String::from_utf8(kv.value).map_err(|_| MetaError::Invalid("cluster id is not UTF-8".into())))
            .transpose()
    }

    async fn allocate_shard_ids(&self, count: u32) -> MetaResult<u64> {
        let key = self.key("next-shard-id");
        for _ in 0..RETRIES {
            let (next, guard) = match self.get(key.clone()).await? {
                Some(kv) => {
                    let text = String::from_utf8_lossy(&kv.value).into_owned();
                    let next: u64 = text.parse().map_err(|e| invalid("next shard id", e))?;
                    (next, unchanged(key.clone(), kv.mod_revision))
                }
                None => (1, absent(key.clone())),
            };
            if count == 0 {
                return Ok(next);
            }
            let after = next + u64::from(count);
            let resp = self
                .txn(vec![guard], vec![put(key.clone(), after.to_string().into_bytes())])
                .await?;
            if resp.succeeded {
                return Ok(next);
            }
        }
        Err(contended("counter", "next-shard-id"))
    }

    async fn create_stream(&self, stream: &StreamMeta, shards: &[ShardMeta]) -> MetaResult<()> {
        let key = self.key(&format!("streams/{}", stream.name));
        let exists = || MetaError::AlreadyExists {
            kind: "stream",
            name: stream.name.clone(),
        };
        let mut seen = std::collections::HashSet::new();
        if let Some(s) = shards.iter().find(|s| !seen.insert(s.id)) {
            return Err(MetaError::AlreadyExists {
                kind: "shard",
                name: s.id.to_string(),
            });
        }
        for _ in 0..RETRIES {
            if self.get(key.clone()).await?.is_some() {
                return Err(exists());
            }
            // Shard ids are unique across streams: the ids in use are kept in chunks
            // (`shard-ids/<id / 64>`), read and written with the stream in one transaction.
            let mut chunks = self.id_chunks(shards.iter().map(|s| s.id)).await?;
            let mut guards = vec![absent(key.clone())];
            let mut ops = vec![put(key.clone(), json(&StreamRec::new(stream, shards)))];
            for c in &mut chunks {
                for s in shards.iter().filter(|s| s.id / PROGRESS_CHUNK == c.chunk) {
                    if !c.ids.insert(s.id) {
                        return Err(MetaError::AlreadyExists {
                            kind: "shard",
                            name: s.id.to_string(),
                        });
                    }
                }
                guards.push(c.guard.clone());
                ops.push(c.write());
            }
            if self.txn(guards, ops).await?.succeeded {
                return Ok(());
            }
        }
        Err(contended("stream", &stream.name))
    }

    async fn get_stream(&self, name: &str) -> MetaResult<Option<StreamMeta>> {
        Ok(self
            .stream_rec(name)
            .await?
            .map(|(r, _)| r.meta())
            .filter(|m| !m.archived))
    }

    async fn list_streams(&self, prefix: &str) -> MetaResult<Vec<StreamMeta>> {
        let (kvs, _) = self.list(self.key(&format!("streams/{prefix}"))).await?;
        let mut out = Vec::new();
        for kv in &kvs {
            let r: StreamRec = parse("stream", kv)?;
            if !r.archived {
                out.push(r.meta());
            }
        }
        Ok(out)
    }

    async fn list_archived_streams(&self) -> MetaResult<Vec<StreamMeta>> {
        Ok(self
            .all_streams()
            .await?
            .into_iter()
            .filter(|r| r.archived)
            .map(|r| r.meta())
            .collect())
    }

    async fn delete_stream(&self, name: &str) -> MetaResult<Vec<ShardMeta>> {
        let key = self.key(&format!("streams/{name}"));
        for _ in 0..RETRIES {
            let Some((rec, rev)) = self.stream_rec(name).await? else {
                return Err(MetaError::NotFound {
                    kind: "stream",
                    name: name.to_owned(),
                });
            };
            let shards = rec.shards();
            let ids: Vec<u64> = shards.iter().map(|s| s.id).collect();
            let mut chunks = self.id_chunks(ids.iter().copied()).await?;
            let mut guards = vec![unchanged(key.clone(), rev)];
            let mut ops = vec![delete(key.clone())];
            release_ids(&mut chunks, &ids, &mut guards, &mut ops);
            if self.txn(guards, ops).await?.succeeded {
                return Ok(shards);
            }
        }
        Err(contended("stream", name))
    }

    async fn archive_stream(&self, name: &str, archived_name: &str) -> MetaResult<()> {
        let key = self.key(&format!("streams/{name}"));
        let archived_key = self.key(&format!("streams/{archived_name}"));
        for _ in 0..RETRIES {
            let Some((mut rec, rev)) = self.stream_rec(name).await?.filter(|(r, _)| !r.archived) else {
                return Err(MetaError::NotFound {
                    kind: "stream",
                    name: name.to_owned(),
                });
            };
            if self.get(archived_key.clone()).await?.is_some() {
                return Err(MetaError::AlreadyExists {
                    kind: "stream",
                    name: archived_name.to_owned(),
                });
            }
            // Subscriptions and readers of the stream follow it to its archived name.
            let (subs, subs_rev) = self.subs_with_revision().await?;
            let (readers, readers_rev) = self.list(self.key("readers/")).await?;
            let mut ops = vec![delete(key.clone())];
            rec.name = archived_name.to_owned();
            rec.archived = true;
            ops.push(put(archived_key.clone(), json(&rec)));
            // Each rewritten key is guarded by its own revision too: a range compare sees no
            // deletion, and a deleted subscription or reader must not come back.
            let mut guards = vec![
                unchanged(key.clone(), rev),
                absent(archived_key.clone()),
                range_unchanged(self.key("subscriptions/"), subs_rev),
                range_unchanged(self.key("readers/"), readers_rev),
            ];
            for (mut s, sub_rev) in subs.into_iter().filter(|(s, _)| s.stream == name) {
                s.stream = archived_name.to_owned();
                let k = self.key(&format!("subscriptions/{}", s.id));
                guards.push(unchanged(k.clone(), sub_rev));
                ops.push(put(k, json(&s)));
            }
            for kv in &readers {
                let mut r: ReaderRec = parse("reader", kv)?;
                if r.stream == name {
                    r.stream = archived_name.to_owned();
                    guards.push(unchanged(kv.key.clone(), kv.mod_revision));
                    ops.push(put(kv.key.clone(), json(&r)));
                }
            }
            if ops.len() > MAX_TXN_OPS {
                return Err(MetaError::Invalid(format!(
                    "stream {name:?} has {} subscriptions and readers; archiving rewrites them in one \
                     etcd transaction, which holds at most {MAX_TXN_OPS} operations by default",
                    ops.len() - 2
                )));
            }
            if self.txn(guards, ops).await?.succeeded {
                return Ok(());
            }
        }
        Err(contended("stream", name))
    }

    async fn list_shards(&self, stream: &str) -> MetaResult<Vec<ShardMeta>> {
        Ok(self
            .stream_rec(stream)
            .await?
            .map(|(r, _)| r.shards())
            .unwrap_or_default())
    }

    async fn get_shard(&self, id: u64) -> MetaResult<Option<ShardMeta>> {
        for r in self.all_streams().await? {
            if let Some(s) = r.shards().into_iter().find(|s| s.id == id) {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    async fn all_shard_ids(&self) -> MetaResult<Vec<u64>> {
        let (kvs, _) = self.list(self.key("shard-ids/")).await?;
        let mut ids = Vec::new();
        for kv in &kvs {
            let chunk: std::collections::BTreeSet<u64> = parse("shard ids", kv)?;
            ids.extend(chunk);
        }
        ids.sort_unstable();
        Ok(ids)
    }

    async fn create_subscription(&self, sub: &SubscriptionMeta, start: &[ShardProgress]) -> MetaResult<()> {
        let key = self.key(&format!("subscriptions/{}", sub.id));
        let progress_prefix = self.key(&format!("progress/{}/", sub.id));
        let mut chunks: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
        for p in start {
            chunks
                .entry(p.shard_id / PROGRESS_CHUNK)
                .or_default()
                .insert(p.shard_id, p.next_lsn);
        }
        let exists = || MetaError::AlreadyExists {
            kind: "subscription",
            name: sub.id.clone(),
        };
        for _ in 0..RETRIES {
            // Whatever a deleted subscription of this name left goes first, in a step of its
            // own while the name is free (etcd refuses a delete range overlapping a put of the
            // same transaction); the create then commits only if nothing wrote there since.
            let (stale, _) = self.list(progress_prefix.clone()).await?;
            if !stale.is_empty()
                || self
                    .get(self.key(&format!("checkpoints/{}", subscription_checkpoint(&sub.id))))
                    .await?
                    .is_some()
            {
                let cleared = self
                    .txn(
                        vec![absent(key.clone())],
                        vec![
                            delete_prefix(progress_prefix.clone()),
                            delete(self.key(&format!("checkpoints/{}", subscription_checkpoint(&sub.id)))),
                        ],
                    )
                    .await?;
                if !cleared.succeeded {
                    return Err(exists());
                }
            }
            let (_, rev) = self.list(progress_prefix.clone()).await?;
            let mut ops = vec![put(key.clone(), json(&SubRec::new(sub)))];
            for (chunk, map) in &chunks {
                ops.push(put(self.progress_chunk_key(&sub.id, *chunk), json(map)));
            }
            let guards = vec![
                absent(key.clone()),
                range_unchanged(progress_prefix.clone(), rev),
                absent(self.key(&format!("checkpoints/{}", subscription_checkpoint(&sub.id)))),
            ];
            if self.txn(guards, ops).await?.succeeded {
                return Ok(());
            }
            if self.get(key.clone()).await?.is_some() {
                return Err(exists());
            }
        }
        Err(contended("subscription", &sub.id))
    }

    async fn get_subscription(&self, id: &str) -> MetaResult<Option<SubscriptionMeta>> {
        match self.get(self.key(&format!("subscriptions/{id}"))).await? {
            Some(kv) => Ok(Some(parse::<SubRec>("subscription", &kv)?.meta())),
            None => Ok(None),
        }
    }

    async fn list_subscriptions(&self, prefix: &str) -> MetaResult<Vec<SubscriptionMeta>> {
        let (kvs, _) = self.list(self.key(&format!("subscriptions/{prefix}"))).await?;
        kvs.iter()
            .map(|kv| Ok(parse::<SubRec>("subscription", kv)?.meta()))
            .collect()
    }

    async fn subscriptions_of_stream(&self, stream: &str) -> MetaResult<Vec<SubscriptionMeta>> {
        let (subs, _) = self.subs_with_revision().await?;
        Ok(subs
            .into_iter()
            .filter(|(s, _)| s.stream == stream)
            .map(|(s, _)| s.meta())
            .collect())
    }

    async fn delete_subscription(&self, id: &str) -> MetaResult<Option<Vec<ShardMeta>>> {
        let key = self.key(&format!("subscriptions/{id}"));
        for _ in 0..RETRIES {
            let (subs, subs_rev) = self.subs_with_revision().await?;
            let mut ops = vec![
                delete(key.clone()),
                delete_prefix(self.key(&format!("progress/{id}/"))),
                delete(self.key(&format!("checkpoints/{}", subscription_checkpoint(id)))),
            ];
            let mut guards = vec![range_unchanged(self.key("subscriptions/"), subs_rev)];
            let Some((sub, _)) = subs.iter().find(|(s, _)| s.id == id) else {
                if self.txn(guards, ops).await?.succeeded {
                    return Ok(None);
                }
                continue;
            };
            // The data of a force-deleted stream goes with its last subscription, in this step.
            // The others of its stream are guarded one by one (a range compare sees no
            // deletion): two last subscriptions deleted at once must not each see the other.
            let mut removed = Vec::new();
            let others: Vec<_> = subs
                .iter()
                .filter(|(s, _)| s.id != id && s.stream == sub.stream)
                .collect();
            let last = others.is_empty();
            for (s, rev) in &others {
                guards.push(unchanged(self.key(&format!("subscriptions/{}", s.id)), *rev));
            }
            let stream_key = self.key(&format!("streams/{}", sub.stream));
            match self.stream_rec(&sub.stream).await? {
                Some((rec, rev)) if rec.archived && last => {
                    removed = rec.shards();
                    guards.push(unchanged(stream_key.clone(), rev));
                    ops.push(delete(stream_key));
                    let ids: Vec<u64> = removed.iter().map(|s| s.id).collect();
                    let mut chunks = self.id_chunks(ids.iter().copied()).await?;
                    release_ids(&mut chunks, &ids, &mut guards, &mut ops);
                }
                Some((_, rev)) => guards.push(unchanged(stream_key, rev)),
                None => guards.push(absent(stream_key)),
            }
            if self.txn(guards, ops).await?.succeeded {
                return Ok(Some(removed));
            }
        }
        Err(contended("subscription", id))
    }

    async fn commit_progress(&self, sub: &str, progress: &[ShardProgress]) -> MetaResult<()> {
        let mut wanted: BTreeMap<u64, Vec<ShardProgress>> = BTreeMap::new();
        for p in progress {
            wanted.entry(p.shard_id / PROGRESS_CHUNK).or_default().push(*p);
        }
        for _ in 0..RETRIES {
            let mut guards = Vec::new();
            let mut ops = Vec::new();
            for (chunk, moves) in &wanted {
                let key = self.progress_chunk_key(sub, *chunk);
                let (mut map, guard): (BTreeMap<u64, u64>, Compare) = match self.get(key.clone()).await? {
                    Some(kv) => (parse("progress", &kv)?, unchanged(key.clone(), kv.mod_revision)),
                    None => (BTreeMap::new(), absent(key.clone())),
                };
                let before = map.clone();
                for p in moves {
                    // Progress never moves back.
                    let e = map.entry(p.shard_id).or_insert(p.next_lsn);
                    *e = (*e).max(p.next_lsn);
                }
                if map != before {
                    guards.push(guard);
                    ops.push(put(key, json(&map)));
                }
            }
            if ops.is_empty() || self.txn(guards, ops).await?.succeeded {
                return Ok(());
            }
        }
        Err(contended("subscription progress", sub))
    }

    async fn get_progress(&self, sub: &str) -> MetaResult<Vec<ShardProgress>> {
        let (kvs, _) = self.list(self.key(&format!("progress/{sub}/"))).await?;
        let mut all = BTreeMap::new();
        for kv in &kvs {
            let map: BTreeMap<u64, u64> = parse("progress", kv)?;
            all.extend(map);
        }
        Ok(all
            .into_iter()
            .map(|(shard_id, next_lsn)| ShardProgress { shard_id, next_lsn })
            .collect())
    }

    async fn create_reader(&self, reader: &ReaderMeta) -> MetaResult<()> {
        let key = self.key(&format!("readers/{}", reader.id));
        let rec = ReaderRec {
            id: reader.id.clone(),
            stream: reader.stream.clone(),
            shard_id: reader.shard_id,
            start_lsn: reader.start_lsn,
            timeout_ms: reader.timeout_ms,
            offset_spec: reader.offset_spec.clone(),
        };
        if !self
            .txn(vec![absent(key.clone())], vec![put(key, json(&rec))])
            .await?
            .succeeded
        {
            return Err(MetaError::AlreadyExists {
                kind: "reader",
                name: reader.id.clone(),
            });
        }
        Ok(())
    }

    async fn get_reader(&self, id: &str) -> MetaResult<Option<ReaderMeta>> {
        match self.get(self.key(&format!("readers/{id}"))).await? {
            Some(kv) => Ok(Some(reader_meta(parse("reader", &kv)?))),
            None => Ok(None),
        }
    }

    async fn list_readers(&self) -> MetaResult<Vec<ReaderMeta>> {
        let (kvs, _) = self.list(self.key("readers/")).await?;
        kvs.iter().map(|kv| Ok(reader_meta(parse("reader", kv)?))).collect()
    }

    async fn delete_reader(&self, id: &str) -> MetaResult<bool> {
        let resp = self
            .txn(Vec::new(), vec![delete(self.key(&format!("readers/{id}")))])
            .await?;
        Ok(deleted(&resp, 0) > 0)
    }

    async fn create_connector(&self, c: &ConnectorMeta) -> MetaResult<()> {
        let key = self.key(&format!("connectors/{}", c.name));
        let rec = ConnectorRec {
            name: c.name.clone(),
            kind: c.kind.clone(),
            target: c.target.clone(),
            config: c.config.clone(),
            status: c.status.clone(),
            created_ms: c.created_ms,
            node: c.node,
        };
        if !self
            .txn(vec![absent(key.clone())], vec![put(key, json(&rec))])
            .await?
            .succeeded
        {
            return Err(MetaError::AlreadyExists {
                kind: "connector",
                name: c.name.clone(),
            });
        }
        Ok(())
    }

    async fn get_connector(&self, name: &str) -> MetaResult<Option<ConnectorMeta>> {
        match self.get(self.key(&format!("connectors/{name}"))).await? {
            Some(kv) => Ok(Some(connector_meta(parse("connector", &kv)?))),
            None => Ok(None),
        }
    }

    async fn list_connectors(&self) -> MetaResult<Vec<ConnectorMeta>> {
        let (kvs, _) = self.list(self.key("connectors/")).await?;
        kvs.iter()
            .map(|kv| Ok(connector_meta(parse("connector", kv)?)))
            .collect()
    }

    async fn update_connector(&self, c: &ConnectorMeta) -> MetaResult<()> {
        self.connector_rmw(&c.name, |r| {
            r.config = c.config.clone();
            r.status = c.status.clone();
            r.node = c.node;
        })
        .await
    }

    async fn set_connector_config(&self, name: &str, config: &str) -> MetaResult<()> {
        self.connector_rmw(name, |r| r.config = config.to_owned()).await
    }

    async fn set_connector_status(&self, name: &str, status: &str) -> MetaResult<()> {
        self.connector_rmw(name, |r| r.status = status.to_owned()).await
    }

    async fn delete_connector(&self, name: &str) -> MetaResult<bool> {
        let resp = self
            .txn(
                Vec::new(),
                vec![
                    delete(self.key(&format!("connectors/{name}"))),
                    delete(self.key(&format!("checkpoints/{}", connector_checkpoint(name)))),
                    delete_prefix(self.key(&format!("kv/{name}/"))),
                ],
            )
            .await?;
        Ok(deleted(&resp, 0) > 0)
    }

    async fn put_checkpoint(&self, cp: &Checkpoint) -> MetaResult<()> {
        let mut value = cp.version.to_be_bytes().to_vec();
        value.extend_from_slice(&cp.data);
        self.txn(
            Vec::new(),
            vec![put(self.key(&format!("checkpoints/{}", cp.owner)), value)],
        )
        .await
        .map(drop)
    }

    async fn get_checkpoint(&self, owner: &str) -> MetaResult<Option<Checkpoint>> {
        let Some(kv) = self.get(self.key(&format!("checkpoints/{owner}"))).await? else {
            return Ok(None);
        };
        if kv.value.len() < 4 {
            return Err(MetaError::Invalid(format!(
                "checkpoint of {owner:?} is shorter than its version"
            )));
        }
        let (version, data) = kv.value.split_at(4);
        Ok(Some(Checkpoint {
            owner: owner.to_owned(),
            version: u32::from_be_bytes(version.try_into().expect("4 bytes")),
            data: data.to_vec(),
        }))
    }

    async fn delete_checkpoint(&self, owner: &str) -> MetaResult<bool> {
        let resp = self
            .txn(Vec::new(), vec![delete(self.key(&format!("checkpoints/{owner}")))])
            .await?;
        Ok(deleted(&resp, 0) > 0)
    }

    async fn kv_set(&self, owner: &str, key: &str, value: &[u8]) -> MetaResult<()> {
        self.txn(
            Vec::new(),
            vec![put(self.key(&format!("kv/{owner}/{key}")), value.to_vec())],
        )
        .await
        .map(drop)
    }

    async fn kv_get(&self, owner: &str, key: &str) -> MetaResult<Option<Vec<u8>>> {
        Ok(self
            .get(self.key(&format!("kv/{owner}/{key}")))
            .await?
            .map(|kv| kv.value))
    }

    async fn upsert_node(&self, node: &NodeMeta) -> MetaResult<()> {
        let rec = NodeRec {
            id: node.id,
            host: node.host.clone(),
            port: node.port,
            state: node.state.clone(),
            updated_ms: node.updated_ms,
        };
        self.txn(
            Vec::new(),
            vec![put(self.key(&format!("nodes/{:010}", node.id)), json(&rec))],
        )
        .await
        .map(drop)
    }

    async fn list_nodes(&self) -> MetaResult<Vec<NodeMeta>> {
        let (kvs, _) = self.list(self.key("nodes/")).await?;
        kvs.iter()
            .map(|kv| {
                let r: NodeRec = parse("node", kv)?;
                Ok(NodeMeta {
                    id: r.id,
                    host: r.host,
                    port: r.port,
                    state: r.state,
                    updated_ms: r.updated_ms,
                })
            })
            .collect()
    }

    async fn remove_node(&self, id: u32) -> MetaResult<bool> {
        let resp = self
            .txn(Vec::new(), vec![delete(self.key(&format!("nodes/{id:010}")))])
            .await?;
        Ok(deleted(&resp, 0) > 0)
    }

    async fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    use hstream_integration_tests::etcd::Etcd;

    /// Connects to `etcd` under `prefix`.
    async fn store(etcd: &Etcd, prefix: &str) -> EtcdMetaStore {
        EtcdMetaStore::connect(&etcd.uri(prefix), Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("etcd is healthy but refuses us: {e}\n{}", etcd.log()))
    }

    #[test]
    fn uris_name_hosts_and_prefix() {
        assert_eq!(
            parse_uri("etcd://a:2379,b:2379/cluster1").unwrap(),
            (
                vec!["http://a:2379".to_owned(), "http://b:2379".to_owned()],
                "/cluster1".to_owned()
            )
        );
        assert_eq!(parse_uri("etcd://a:2379").unwrap().1, "/hstream");
        assert!(parse_uri("etcd:///x").is_err());
        assert!(parse_uri("sqlite:///x").is_err());
        // Credentials are refused (not built yet) and never echoed.
        let err = parse_uri("etcd://root:s3cret@a:2379").unwrap_err();
        assert!(err.contains("not supported") && !err.contains("s3cret"), "{err}");
    }

    /// The same suite SQLite passes, against a real etcd; then a crash of etcd (SIGKILL) loses
    /// nothing a call returned from.
    #[tokio::test]
    async fn contract_on_etcd_and_data_survives_an_etcd_crash() {
        let etcd = Etcd::start().await;
        let s = store(&etcd, "contract").await;
        contract::run(&s).await;
        contract::seed_durable(&s).await;
        drop(s);
        // SIGKILL: nothing flushed on the way out; then the same data again.
        let etcd = tokio::task::spawn_blocking(move || {
            let mut etcd = etcd;
            etcd.restart();
            etcd
        })
        .await
        .unwrap();
        let s = store(&etcd, "contract").await;
        contract::check_durable(&s).await;
        // Another prefix is another cluster's metadata.
        let other = store(&etcd, "other").await;
        assert!(other.list_streams("").await.unwrap().is_empty());
        assert_eq!(other.cluster_id(None).await.unwrap(), None);
    }

    /// A stream of 4096 shards and a subscription committing all of them stay within etcd's
    /// default of 128 operations per transaction.
    #[tokio::test]
    async fn the_largest_stream_and_its_progress_fit_etcd_transactions() {
        let etcd = Etcd::start().await;
        let store = store(&etcd, "big").await;
        let first = store.allocate_shard_ids(4096).await.unwrap();
        let stream = StreamMeta {
            name: "wide".into(),
            replication_factor: 1,
            backlog_secs: 0,
            shard_count: 4096,
            created_ms: 1,
            archived: false,
        };
        let shards: Vec<ShardMeta> = crate::keyspace::split(4096)
            .into_iter()
            .enumerate()
            .map(|(i, (start_key, end_key))| ShardMeta {
                id: first + i as u64,
                stream: "wide".into(),
                start_key,
                end_key,
                epoch: 4096,
            })
            .collect();
        store.create_stream(&stream, &shards).await.unwrap();
        assert_eq!(store.list_shards("wide").await.unwrap(), shards);
        let sub = SubscriptionMeta {
            id: "all".into(),
            stream: "wide".into(),
            ack_timeout_secs: 60,
            max_unacked: 100,
            offset: StartOffset::Earliest,
            created_ms: 1,
        };
        let start: Vec<ShardProgress> = shards
            .iter()
            .map(|s| ShardProgress {
                shard_id: s.id,
                next_lsn: 1,
            })
            .collect();
        store.create_subscription(&sub, &start).await.unwrap();
        let moved: Vec<ShardProgress> = start.iter().map(|p| ShardProgress { next_lsn: 7, ..*p }).collect();
        store.commit_progress("all", &moved).await.unwrap();
        assert_eq!(store.get_progress("all").await.unwrap(), moved);
        assert_eq!(store.delete_stream("wide").await.unwrap().len(), 4096);
    }
}
