//! The typed, versioned checkpoint of acks beyond a subscription's committed prefix, so that a
//! graceful restart does not deliver acked records again. The prefix itself lives in the
//! MetaStore's progress table and alone decides what is never lost; this checkpoint only saves
//! redelivery.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::tracker::AckTracker;
use crate::meta::Checkpoint;

/// Version 2: fully acked batches as LSN ranges, partly acked ones with index ranges. Version 1
/// (every batch with its acked indices) is still read.
const VERSION: u32 = 2;

pub fn owner(subscription: &str) -> String {
    crate::meta::subscription_checkpoint(subscription)
}

#[derive(Serialize, Deserialize)]
struct ShardAcksV1 {
    shard: u64,
    /// (lsn, batch size, acked indices) of batches with some acks.
    batches: Vec<(u64, u32, Vec<u32>)>,
}

/// (lsn, batch size, acked index ranges (first, end exclusive)) of a partly acked batch.
type PartialBatch = (u64, u32, Vec<(u32, u32)>);

#[derive(Serialize, Deserialize)]
struct ShardAcks {
    shard: u64,
    /// Fully acked batches beyond the committed prefix: (first lsn, end lsn exclusive).
    done: Vec<(u64, u64)>,
    /// Partly acked batches.
    partial: Vec<PartialBatch>,
}

/// What a checkpoint says of one shard.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ShardRestore {
    pub done: Vec<(u64, u64)>,
    pub partial: Vec<(u64, u32, Vec<u32>)>,
}

impl ShardRestore {
    pub fn restore_into(&self, t: &mut AckTracker) {
        for &(start, end) in &self.done {
            t.restore_done(start, end);
        }
        for (lsn, size, acked) in &self.partial {
            t.restore(*lsn, *size, acked);
        }
    }
}

fn index_ranges(indices: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &i in indices {
        match out.last_mut() {
            Some((_, end)) if *end == i => *end = i + 1,
            _ => out.push((i, i + 1)),
        }
    }
    out
}

pub fn encode<'a>(subscription: &str, shards: impl Iterator<Item = (u64, &'a AckTracker)>) -> Checkpoint {
    let body: Vec<ShardAcks> = shards
        .map(|(shard, t)| ShardAcks {
            shard,
            done: t.done_ranges().collect(),
            partial: t
                .inflight()
                .filter(|(_, f)| f.n_acked > 0)
                .map(|(l, f)| (l, f.size, index_ranges(&f.acked_indices())))
                .collect(),
        })
        .filter(|s| !s.done.is_empty() || !s.partial.is_empty())
        .collect();
    Checkpoint {
        owner: owner(subscription),
        version: VERSION,
        data: serde_json::to_vec(&body).expect("checkpoint serializes"),
    }
}

pub type Restored = HashMap<u64, ShardRestore>;

pub fn decode(cp: &Checkpoint) -> Result<Restored, String> {
    match cp.version {
        1 => {
            let body: Vec<ShardAcksV1> = serde_json::from_slice(&cp.data).map_err(|e| e.to_string())?;
            Ok(body
                .into_iter()
                .map(|s| {
                    let restore = ShardRestore {
                        done: Vec::new(),
                        partial: s.batches,
                    };
                    (s.shard, restore)
                })
                .collect())
        }
        VERSION => {
            let body: Vec<ShardAcks> = serde_json::from_slice(&cp.data).map_err(|e| e.to_string())?;
            Ok(body
                .into_iter()
                .map(|s| {
                    let partial = s
                        .partial
                        .into_iter()
                        .map(|(lsn, size, ranges)| {
                            // Ranges beyond the batch size are damage: clamp rather than allocate.
                            let acked = ranges.iter().flat_map(|&(a, b)| a..b.min(size)).collect();
                            (lsn, size, acked)
                        })
                        .collect();
                    (s.shard, ShardRestore { done: s.done, partial })
                })
                .collect())
        }
        v => Err(format!("unknown ack checkpoint version {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_acks_beyond_the_prefix() {
        let mut t = AckTracker::new(1);
        t.deliver(1, 2);
        t.deliver(2, 3);
        t.ack(2, 1).unwrap();
        t.ack(2, 2).unwrap();
        let cp = encode("s", [(7u64, &t)].into_iter());
        let back = decode(&cp).unwrap();
        assert_eq!(back[&7].partial, vec![(2, 3, vec![1, 2])]);
        assert!(decode(&Checkpoint { version: 9, ..cp }).is_err());
        // A version 1 checkpoint (before ranges) still restores.
        let v1 = Checkpoint {
            owner: owner("s"),
            version: 1,
            data: br#"[{"shard":7,"batches":[[2,3,[1,2]],[3,1,[0]]]}]"#.to_vec(),
        };
        let back = decode(&v1).unwrap();
        let mut r = AckTracker::new(1);
        back[&7].restore_into(&mut r);
        assert!(r.is_done(3));
        assert_eq!(r.deliver(1, 1), vec![0]);
        assert_eq!(r.deliver(2, 3), vec![0]);
    }
}
