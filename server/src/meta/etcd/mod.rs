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
//! - `readers/<id>`, `connectors/<name>`, `nodes/<id>` (ids zero-padded, so keys sort as ids;
//!   a node record written with a lease is bound to it and vanishes with it);
//! - `owners/<resource>`: `{"owner", "epoch"}`, which fenced writes compare byte for byte
//!   (etcd's value compare), so a write by a node whose ownership moved on is refused inside
//!   the same transaction;
//! - `checkpoints/<owner>` and `kv/<owner>/<key>`: raw bytes (a checkpoint is its version, 4
//!   bytes big-endian, then its data).
//!
//! Guarantees (the trait's, checked by `contract.rs` against a real etcd): each call is one etcd
//! transaction, so it is atomic; creates compare the key's create revision with 0, so they never
//! overwrite; read-modify-write calls compare the mod revisions of what they read and retry when
//! another writer came first; a write returns once etcd committed it (its Raft log is fsynced by
//! a quorum); ranges come back sorted by key, which is the name or the padded id.
//!
//! Faults (checked by `integration-tests/tests/server/etcd_faults.rs` on three members): a call
//! retries what etcd could not serve — on another member, until the connect timeout — so
//! losing a member or the leader shows as latency, not errors. A request etcd never received
//! (no connection, no leader) is simply sent again; a read is always safe to repeat; a
//! transaction whose outcome is unknown (the connection broke, the leader changed under it) is
//! first checked: if every key it writes holds what it wrote and every key it deletes is gone,
//! it took effect and the call succeeds (a delete then reports that it deleted); otherwise its
//! guards make sending it again safe. Only when etcd cannot serve for the whole timeout (no
//! quorum) does a call fail, with `Unavailable`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use hstream_proto::etcd::kv_client::KvClient;
use hstream_proto::etcd::lease_client::LeaseClient;
use hstream_proto::mvccpb::KeyValue;

use super::*;

mod auth;
mod client;
mod ops;
mod owners;
mod records;
mod watch;

use auth::{Auth, Authed};
use client::*;
use ops::*;
use records::*;

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
        return Err(
            "an etcd metastore URI cannot carry user:password@: give --metastore-user, and the password in \
             --metastore-password-file or HSTREAM_METASTORE_PASSWORD"
                .into(),
        );
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

/// How to reach etcd beyond its URI: the call timeout, TLS and a user.
#[derive(Clone, Default)]
pub struct EtcdOptions {
    /// How long one call may keep retrying (default 10 s).
    pub timeout: Option<std::time::Duration>,
    /// PEM file of the CA that signed etcd's certificate: TLS to every endpoint (https).
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM files of a client certificate and its key, for etcd's `--client-cert-auth`.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// etcd user and password (etcd's auth); the password is never logged or echoed.
    pub user: Option<String>,
    pub password: Option<crate::secret::Secret>,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("timeout", &self.timeout)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("user", &self.user)
            .field("password", &self.password)
            .finish()
    }
}

pub struct EtcdMetaStore {
    kv: KvClient<Authed>,
    watches: hstream_proto::etcd::watch_client::WatchClient<Authed>,
    leases: LeaseClient<Authed>,
    auth: std::sync::Arc<Auth>,
    prefix: String,
    /// `host:port,…` as configured, for messages.
    hosts: String,
    /// How long one call keeps retrying what etcd could not serve (a member down, an
    /// election) before it answers `Unavailable`.
    timeout: std::time::Duration,
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

    async fn commit(&self, c: &Commit<'_>) -> MetaResult<()> {
        self.commit_fenced(c).await
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
        // A checkpoint or key-value left by an earlier connector of this name is not this one's.
        let ops = vec![
            put(key.clone(), json(&rec)),
            delete(self.key(&format!("checkpoints/{}", connector_checkpoint(&c.name)))),
            delete_prefix(self.key(&format!("kv/{}/", c.name))),
        ];
        if !self.txn(vec![absent(key)], ops).await?.succeeded {
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
        self.connector_rmw_fenced(
            &c.name,
            |r| {
                r.config = c.config.clone();
                r.status = c.status.clone();
                r.node = c.node;
            },
            None,
        )
        .await
    }

    async fn set_connector_config(&self, name: &str, config: &str) -> MetaResult<()> {
        self.connector_rmw_fenced(name, |r| r.config = config.to_owned(), None)
            .await
    }

    async fn set_connector_status(&self, name: &str, status: &str, fence: Option<&Ownership>) -> MetaResult<()> {
        self.connector_rmw_fenced(name, |r| r.status = status.to_owned(), fence)
            .await
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

    async fn watch_streams(&self) -> MetaResult<StreamChanges> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(watch::follow(
            self.watches.clone(),
            self.auth.clone(),
            self.timeout,
            self.key("streams/"),
            tx,
        ));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn claim(&self, resource: &str, owner: u32, expected: u64) -> MetaResult<Ownership> {
        self.claim_resource(resource, owner, expected).await
    }

    async fn release(&self, held: &Ownership) -> MetaResult<Ownership> {
        self.release_resource(held).await
    }

    async fn ownership(&self, resource: &str) -> MetaResult<Option<Ownership>> {
        Ok(self.ownership_rec(resource).await?.0)
    }

    async fn list_ownerships(&self, prefix: &str) -> MetaResult<Vec<Ownership>> {
        self.ownerships_under(prefix).await
    }

    async fn grant_lease(&self, ttl: std::time::Duration) -> MetaResult<LeaseId> {
        self.lease_grant(ttl.as_millis().div_ceil(1000).max(1) as i64).await
    }

    async fn keep_lease_alive(&self, lease: LeaseId) -> MetaResult<bool> {
        self.lease_keep_alive(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> MetaResult<()> {
        self.lease_revoke(lease).await
    }

    async fn upsert_node(&self, node: &NodeMeta, lease: Option<LeaseId>) -> MetaResult<()> {
        self.put_node(node, lease).await
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
mod tests;
