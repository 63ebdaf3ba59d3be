//! The typed, versioned checkpoint of acks beyond a subscription's committed prefix, so that a
//! graceful restart does not deliver acked records again. The prefix itself lives in the
//! MetaStore's progress table and alone decides what is never lost; this checkpoint only saves
//! redelivery.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::tracker::AckTracker;
use crate::meta::Checkpoint;

const VERSION: u32 = 1;

pub fn owner(subscription: &str) -> String {
    format!("subscription/{subscription}")
}

#[derive(Serialize, Deserialize)]
struct ShardAcks {
    shard: u64,
    /// (lsn, batch size, acked indices) of batches with some acks.
    batches: Vec<(u64, u32, Vec<u32>)>,
}

pub fn encode<'a>(subscription: &str, shards: impl Iterator<Item = (u64, &'a AckTracker)>) -> Checkpoint {
    let body: Vec<ShardAcks> = shards
        .map(|(shard, t)| ShardAcks {
            shard,
            batches: t
                .inflight()
                .filter(|(_, f)| f.n_acked > 0)
                .map(|(l, f)| (l, f.size, f.acked_indices()))
                .collect(),
        })
        .filter(|s| !s.batches.is_empty())
        .collect();
    Checkpoint {
        owner: owner(subscription),
        version: VERSION,
        data: serde_json::to_vec(&body).expect("checkpoint serializes"),
    }
}

pub type Restored = HashMap<u64, Vec<(u64, u32, Vec<u32>)>>;

pub fn decode(cp: &Checkpoint) -> Result<Restored, String> {
    if cp.version != VERSION {
        return Err(format!("unknown ack checkpoint version {}", cp.version));
    }
    let body: Vec<ShardAcks> = serde_json::from_slice(&cp.data).map_err(|e| e.to_string())?;
    Ok(body.into_iter().map(|s| (s.shard, s.batches)).collect())
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
        assert_eq!(back[&7], vec![(2, 3, vec![1, 2])]);
        assert!(decode(&Checkpoint { version: 9, ..cp }).is_err());
    }
}
