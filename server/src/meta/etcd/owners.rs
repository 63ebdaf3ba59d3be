//! The writes an owner makes and the cluster's primitives on etcd: fenced commits (progress
//! and checkpoints, each fence a value compare in the same transaction), ownership claims and
//! releases guarded by the owner key's mod revision, and node records bound to leases.

use std::collections::BTreeMap;

use hstream_proto::etcd::{Compare, RequestOp};

use super::super::*;
use super::ops::*;
use super::records::*;
use super::{EtcdMetaStore, PROGRESS_CHUNK, RETRIES, contended};

impl EtcdMetaStore {
    pub(super) async fn commit_fenced(&self, c: &Commit<'_>) -> MetaResult<()> {
        let mut wanted: BTreeMap<u64, Vec<ShardProgress>> = BTreeMap::new();
        for p in c.progress.iter().flat_map(|(_, p)| p.iter()) {
            wanted.entry(p.shard_id / PROGRESS_CHUNK).or_default().push(*p);
        }
        let fences: Vec<Compare> = c
            .fences
            .iter()
            .map(|f| value_is(self.owner_key(&f.resource), json(&OwnerRec::of(f))))
            .collect();
        let checkpoints: Vec<RequestOp> = c
            .checkpoints
            .iter()
            .map(|cp| {
                let mut value = cp.version.to_be_bytes().to_vec();
                value.extend_from_slice(&cp.data);
                put(self.key(&format!("checkpoints/{}", cp.owner)), value)
            })
            .collect();
        for _ in 0..RETRIES {
            let mut guards = fences.clone();
            let mut ops = checkpoints.clone();
            if let Some((sub, _)) = c.progress {
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
            }
            if ops.is_empty() {
                return self.check_fences(c.fences).await;
            }
            if self.txn(guards, ops).await?.succeeded {
                return Ok(());
            }
            // A fence that moved is final; a progress key another writer changed is retried.
            self.check_fences(c.fences).await?;
        }
        Err(contended("commit of", c.progress.map_or("checkpoints", |(sub, _)| sub)))
    }

    pub(super) async fn claim_resource(&self, resource: &str, owner: u32, expected: u64) -> MetaResult<Ownership> {
        let key = self.owner_key(resource);
        for _ in 0..RETRIES {
            let (current, guard) = self.ownership_rec(resource).await?;
            if current.as_ref().map_or(0, |c| c.epoch) != expected {
                return Err(Ownership::fenced(
                    resource,
                    format!("epoch {expected}"),
                    current.as_ref(),
                ));
            }
            let next = Ownership {
                resource: resource.to_owned(),
                owner: Some(owner),
                epoch: expected + 1,
            };
            // Another claim between the read and here fails the guard; the next read names it.
            if self
                .txn(vec![guard], vec![put(key.clone(), json(&OwnerRec::of(&next)))])
                .await?
                .succeeded
            {
                return Ok(next);
            }
        }
        Err(contended("ownership of", resource))
    }

    pub(super) async fn release_resource(&self, held: &Ownership) -> MetaResult<Ownership> {
        let key = self.owner_key(&held.resource);
        for _ in 0..RETRIES {
            let (current, guard) = self.ownership_rec(&held.resource).await?;
            if current.as_ref() != Some(held) {
                return Err(Ownership::fenced(
                    &held.resource,
                    Ownership::describe(Some(held)),
                    current.as_ref(),
                ));
            }
            let next = Ownership {
                owner: None,
                epoch: held.epoch + 1,
                ..held.clone()
            };
            if self
                .txn(vec![guard], vec![put(key.clone(), json(&OwnerRec::of(&next)))])
                .await?
                .succeeded
            {
                return Ok(next);
            }
        }
        Err(contended("ownership of", &held.resource))
    }

    pub(super) async fn ownerships_under(&self, prefix: &str) -> MetaResult<Vec<Ownership>> {
        let base = self.owner_key("");
        let (kvs, _) = self.list(self.owner_key(prefix)).await?;
        kvs.iter()
            .map(|kv| {
                let resource = String::from_utf8_lossy(&kv.key[base.len()..]).into_owned();
                Ok(parse::<OwnerRec>("ownership", kv)?.ownership(&resource))
            })
            .collect()
    }

    pub(super) async fn put_node(&self, node: &NodeMeta, lease: Option<LeaseId>) -> MetaResult<()> {
        let rec = NodeRec {
            id: node.id,
            host: node.host.clone(),
            port: node.port,
            state: node.state.clone(),
            updated_ms: node.updated_ms,
        };
        let key = self.key(&format!("nodes/{:010}", node.id));
        let op = match lease {
            Some(lease) => put_leased(key, json(&rec), lease),
            None => put(key, json(&rec)),
        };
        match self.txn(Vec::new(), vec![op]).await {
            Err(MetaError::Backend(e)) if e.to_string().contains("lease not found") => Err(MetaError::NotFound {
                kind: "lease",
                name: lease.unwrap_or_default().to_string(),
            }),
            r => r.map(drop),
        }
    }
}
