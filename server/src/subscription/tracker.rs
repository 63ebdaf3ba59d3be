//! Ack bookkeeping of one subscription on one shard.
//!
//! Guarantees: `committed()` only ever grows, and every LSN below it had every record of its
//! batch acknowledged; acks may arrive in any order and more than once; an ack for a record that
//! was never delivered is refused without changing anything.
//!
//! State stays small however acks arrive: a batch is kept record by record only while it is
//! partly acked; fully acked batches beyond the committed prefix are merged into LSN ranges, so
//! one record never acked in front of millions of acked batches costs one batch and one range.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("record {lsn}-{index} was never delivered")]
    NotDelivered { lsn: u64, index: u32 },
}

/// A delivered (or restored) batch that is not yet below the committed prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    pub size: u32,
    acked: Vec<bool>,
    pub n_acked: u32,
    /// Delivered to a consumer and not yet acked in full (false for a batch restored from a
    /// checkpoint or taken from a consumer that left, until it is sent again).
    pub outstanding: bool,
}

impl InFlight {
    fn new(size: u32) -> Self {
        InFlight {
            size,
            acked: vec![false; size as usize],
            n_acked: 0,
            outstanding: false,
        }
    }

    pub fn complete(&self) -> bool {
        self.n_acked == self.size
    }

    pub fn unacked(&self) -> u32 {
        self.size - self.n_acked
    }

    /// Indices still waiting for an ack.
    pub fn unacked_indices(&self) -> Vec<u32> {
        (0..self.size).filter(|i| !self.acked[*i as usize]).collect()
    }

    pub fn acked_indices(&self) -> Vec<u32> {
        (0..self.size).filter(|i| self.acked[*i as usize]).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckTracker {
    /// Every LSN below this is fully acked.
    committed: u64,
    /// Next LSN to read for first delivery.
    pub read_next: u64,
    /// Batches delivered (or restored) and not yet fully acked.
    inflight: BTreeMap<u64, InFlight>,
    /// Fully acked batches at or beyond `committed`, as merged ranges `start -> end` (exclusive).
    done: BTreeMap<u64, u64>,
    /// Unacked records of outstanding batches.
    outstanding: u64,
}

impl AckTracker {
    pub fn new(committed: u64) -> Self {
        AckTracker {
            committed,
            read_next: committed,
            inflight: BTreeMap::new(),
            done: BTreeMap::new(),
            outstanding: 0,
        }
    }

    /// Whether batch `lsn` is fully acked beyond the committed prefix.
    pub fn is_done(&self, lsn: u64) -> bool {
        self.done.range(..=lsn).next_back().is_some_and(|(_, &end)| lsn < end)
    }

    /// Fully acked ranges beyond the committed prefix, `(start, end)` with `end` exclusive.
    pub fn done_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.done.iter().map(|(s, e)| (*s, *e))
    }

    /// Adds `start..end` to the done ranges, merging neighbours.
    fn mark_done(&mut self, mut start: u64, mut end: u64) {
        if let Some((&s, &e)) = self.done.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
        }
        while let Some((&s, &e)) = self.done.range(start..).next() {
            if s > end {
                break;
            }
            end = end.max(e);
            self.done.remove(&s);
        }
        self.done.insert(start, end);
    }

    /// Moves a batch that just became fully acked from `inflight` to the done ranges.
    fn complete(&mut self, lsn: u64) {
        if let Some(f) = self.inflight.remove(&lsn)
            && f.outstanding
        {
            self.outstanding -= f.unacked() as u64;
        }
        self.mark_done(lsn, lsn + 1);
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    pub fn get(&self, lsn: u64) -> Option<&InFlight> {
        self.inflight.get(&lsn)
    }

    pub fn inflight(&self) -> impl Iterator<Item = (u64, &InFlight)> {
        self.inflight.iter().map(|(l, f)| (*l, f))
    }

    /// Records a first delivery of batch `lsn` (at `read_next`), or, for a batch restored from a
    /// checkpoint, marks it outstanding again. Returns the indices to send.
    pub fn deliver(&mut self, lsn: u64, size: u32) -> Vec<u32> {
        self.read_next = self.read_next.max(lsn + 1);
        if self.is_done(lsn) || size == 0 {
            self.advance();
            return Vec::new();
        }
        let f = self.inflight.entry(lsn).or_insert_with(|| InFlight::new(size));
        if !f.outstanding {
            f.outstanding = true;
            self.outstanding += f.unacked() as u64;
        }
        f.unacked_indices()
    }

    /// Takes a batch back from the consumer that had it (it left, or its ack timeout passed):
    /// its records stop counting as out until it is delivered again.
    pub fn withdraw(&mut self, lsn: u64) {
        if let Some(f) = self.inflight.get_mut(&lsn)
            && f.outstanding
        {
            f.outstanding = false;
            self.outstanding -= f.unacked() as u64;
        }
    }

    /// Skips LSNs that no longer exist (trimmed) before `lsn`. Batches below it that are not
    /// with a consumer (restored from a checkpoint, or waiting to be sent again) are gone with the
    /// data; outstanding ones stay until acked or timed out.
    pub fn skip_to(&mut self, lsn: u64) {
        if lsn > self.read_next {
            self.read_next = lsn;
        }
        self.inflight.retain(|&l, f| l >= lsn || f.outstanding);
        self.prune_done(lsn);
        self.advance();
    }

    /// Drops a batch whose data is gone (trimmed) while it waited to be sent again.
    pub fn forget(&mut self, lsn: u64) {
        if let Some(f) = self.inflight.get(&lsn)
            && !f.outstanding
        {
            self.inflight.remove(&lsn);
            self.advance();
        }
    }

    /// Applies one ack. Returns true when it acked a record that was not acked before.
    pub fn ack(&mut self, lsn: u64, index: u32) -> Result<bool, AckError> {
        if lsn < self.committed || self.is_done(lsn) {
            return Ok(false); // a repeat of an ack already folded into the prefix or a range
        }
        let Some(f) = self.inflight.get_mut(&lsn) else {
            // Below `read_next` every batch not in flight is done: acked, or trimmed after it was
            // taken back. A late ack for it changes nothing and is no fault of the consumer.
            return if lsn < self.read_next {
                Ok(false)
            } else {
                Err(AckError::NotDelivered { lsn, index })
            };
        };
        if index >= f.size {
            return Err(AckError::NotDelivered { lsn, index });
        }
        if f.acked[index as usize] {
            return Ok(false);
        }
        f.acked[index as usize] = true;
        f.n_acked += 1;
        if f.outstanding {
            self.outstanding -= 1;
        }
        if f.complete() {
            f.outstanding = false;
            self.complete(lsn);
            self.advance();
        }
        Ok(true)
    }

    /// Restores acks of a batch beyond the committed prefix (from a checkpoint).
    pub fn restore(&mut self, lsn: u64, size: u32, acked: &[u32]) {
        if lsn < self.committed || size == 0 {
            return;
        }
        let mut f = InFlight::new(size);
        for &i in acked {
            if i < size && !f.acked[i as usize] {
                f.acked[i as usize] = true;
                f.n_acked += 1;
            }
        }
        if f.complete() {
            self.mark_done(lsn, lsn + 1);
        } else {
            self.inflight.insert(lsn, f);
        }
    }

    /// Restores a range of fully acked batches beyond the committed prefix (from a checkpoint).
    pub fn restore_done(&mut self, start: u64, end: u64) {
        let start = start.max(self.committed);
        if start < end {
            self.mark_done(start, end);
        }
    }

    /// Drops done ranges below `lsn`.
    fn prune_done(&mut self, lsn: u64) {
        while let Some((&s, &e)) = self.done.first_key_value() {
            if s >= lsn {
                break;
            }
            self.done.remove(&s);
            if e > lsn {
                self.done.insert(lsn, e);
                break;
            }
        }
    }

    /// Recomputes the committed prefix. Every LSN in `committed..read_next` is either in flight
    /// or done (acked, or skipped as trimmed), so the prefix ends at the first in-flight batch
    /// that is not fully acked, or at `read_next`.
    fn advance(&mut self) {
        // Done ranges beyond `read_next` (restored) are kept until the delivery pass reaches
        // them; one starting at it is passed over without reading its batches again.
        while let Some((&s, &e)) = self.done.range(..=self.read_next).next_back() {
            if s <= self.read_next && self.read_next < e {
                self.read_next = e;
            } else {
                break;
            }
        }
        // Every batch in `inflight` is open, so the prefix ends at the first one or at
        // `read_next`.
        let first_open = self.inflight.first_key_value().map(|(l, _)| *l);
        let prefix = first_open.map_or(self.read_next, |l| l.min(self.read_next));
        self.committed = self.committed.max(prefix);
        self.prune_done(self.committed);
    }

    /// Records unacked by consumers across this shard (outstanding deliveries only).
    pub fn outstanding_records(&self) -> u64 {
        self.outstanding
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prefix_waits_for_the_gap() {
        let mut t = AckTracker::new(1);
        assert_eq!(t.deliver(1, 2), vec![0, 1]);
        assert_eq!(t.deliver(2, 1), vec![0]);
        assert_eq!(t.deliver(3, 1), vec![0]);
        assert!(t.ack(2, 0).unwrap());
        assert!(t.ack(3, 0).unwrap());
        assert_eq!(t.committed(), 1, "batch 1 still unacked");
        assert!(t.ack(1, 1).unwrap());
        assert_eq!(t.committed(), 1);
        assert!(t.ack(1, 0).unwrap());
        assert_eq!(t.committed(), 4);
        assert!(!t.ack(2, 0).unwrap(), "repeats are harmless");
    }

    #[test]
    fn acks_for_undelivered_records_are_refused() {
        let mut t = AckTracker::new(1);
        t.deliver(1, 2);
        assert_eq!(t.ack(1, 2), Err(AckError::NotDelivered { lsn: 1, index: 2 }));
        assert_eq!(t.ack(5, 0), Err(AckError::NotDelivered { lsn: 5, index: 0 }));
        assert_eq!(t.committed(), 1);
    }

    /// A batch taken back from its consumer (ack timeout) and then trimmed before it was sent
    /// again: the first consumer's late ack for it is a harmless no-op, not a protocol error.
    #[test]
    fn a_late_ack_for_a_trimmed_batch_is_harmless() {
        let mut t = AckTracker::new(1);
        t.deliver(1, 1);
        t.deliver(2, 1);
        t.withdraw(2);
        t.skip_to(3);
        assert_eq!(t.ack(2, 0), Ok(false));
        assert_eq!(t.ack(2, 7), Ok(false));
        assert_eq!(t.committed(), 1, "batch 1 is still out");
        assert!(t.ack(1, 0).unwrap());
        assert_eq!(t.committed(), 3);
        assert_eq!(
            t.ack(9, 0),
            Err(AckError::NotDelivered { lsn: 9, index: 0 }),
            "beyond what was read"
        );
    }

    /// One record never acked in front of 10,000 fully acked batches: the state is one open
    /// batch and one range, and so is the checkpoint.
    #[test]
    fn acked_batches_fold_into_ranges() {
        let mut t = AckTracker::new(1);
        t.deliver(1, 10);
        for lsn in 2..=10_001 {
            t.deliver(lsn, 10);
            for i in 0..10 {
                assert!(t.ack(lsn, i).unwrap());
                assert!(!t.ack(lsn, i).unwrap(), "a repeat changes nothing");
            }
        }
        assert_eq!(t.committed(), 1);
        assert_eq!(t.inflight().count(), 1);
        assert_eq!(t.done_ranges().collect::<Vec<_>>(), [(2, 10_002)]);
        let cp = super::super::checkpoint::encode("s", [(7u64, &t)].into_iter());
        assert!(cp.data.len() < 256, "checkpoint of {} bytes", cp.data.len());
        // Restored elsewhere: nothing acked is sent again, and the prefix moves over the range
        // as soon as the open batch is acked.
        let back = super::super::checkpoint::decode(&cp).unwrap();
        let mut r = AckTracker::new(1);
        back[&7].restore_into(&mut r);
        assert_eq!(r.deliver(1, 10), (0..10).collect::<Vec<_>>());
        for i in 0..10 {
            r.ack(1, i).unwrap();
        }
        assert_eq!(r.committed(), 10_002);
        assert_eq!(r.done_ranges().count(), 0);
        assert_eq!(r.deliver(10_002, 1), vec![0]);
    }

    #[test]
    fn done_ranges_merge_from_any_side() {
        let mut t = AckTracker::new(1);
        for lsn in [5, 7, 6, 9, 3, 4, 8] {
            t.restore_done(lsn, lsn + 1);
        }
        assert_eq!(t.done_ranges().collect::<Vec<_>>(), [(3, 10)]);
        t.restore_done(20, 30);
        t.restore_done(12, 21);
        assert_eq!(t.done_ranges().collect::<Vec<_>>(), [(3, 10), (12, 30)]);
        assert!(t.is_done(12) && t.is_done(29) && !t.is_done(30) && !t.is_done(10));
        t.skip_to(15);
        assert_eq!(t.committed(), 30, "the range at the trim point is passed over");
        assert_eq!(t.read_next, 30);
        assert_eq!(t.done_ranges().count(), 0, "ranges go once the prefix passes them");
    }

    #[test]
    fn restored_acks_are_not_sent_again() {
        let mut t = AckTracker::new(10);
        t.restore(12, 3, &[0, 2]);
        t.restore(13, 1, &[0]);
        assert_eq!(t.deliver(10, 1), vec![0]);
        assert_eq!(t.deliver(11, 1), vec![0]);
        assert_eq!(t.deliver(12, 3), vec![1], "only the unacked record");
        assert_eq!(t.deliver(13, 1), Vec::<u32>::new(), "fully acked: nothing to send");
        t.ack(10, 0).unwrap();
        t.ack(11, 0).unwrap();
        assert_eq!(t.committed(), 12);
        t.ack(12, 1).unwrap();
        assert_eq!(t.committed(), 14);
    }

    #[test]
    fn trim_under_a_restored_batch_does_not_pin_progress() {
        let mut t = AckTracker::new(5);
        t.restore(6, 3, &[0]);
        t.skip_to(20);
        assert_eq!(t.committed(), 20, "the restored batch went with the trimmed data");
        assert_eq!(t.inflight().count(), 0);
    }

    #[test]
    fn outstanding_batches_survive_a_trim_until_acked() {
        let mut t = AckTracker::new(1);
        t.deliver(1, 2);
        t.skip_to(10);
        assert_eq!(t.committed(), 1);
        t.ack(1, 0).unwrap();
        t.ack(1, 1).unwrap();
        assert_eq!(t.committed(), 10);
        assert_eq!(t.outstanding_records(), 0);
    }

    #[test]
    fn trimmed_lsns_are_skipped() {
        let mut t = AckTracker::new(1);
        t.skip_to(50);
        assert_eq!(t.committed(), 50);
        t.deliver(50, 1);
        t.ack(50, 0).unwrap();
        assert_eq!(t.committed(), 51);
    }

    proptest! {
        /// Whatever order acks arrive in, the committed prefix never moves back, never passes an
        /// unacked record, and reaches the end once everything is acked.
        #[test]
        fn committed_is_the_contiguous_acked_prefix(sizes in proptest::collection::vec(1u32..5, 1..30), seed in any::<u64>()) {
            let mut t = AckTracker::new(1);
            let mut all = Vec::new();
            for (i, &s) in sizes.iter().enumerate() {
                let lsn = 1 + i as u64;
                t.deliver(lsn, s);
                all.extend((0..s).map(|j| (lsn, j)));
            }
            // Deterministic shuffle from the seed.
            let mut x = seed | 1;
            for i in (1..all.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                all.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut acked = std::collections::HashSet::new();
            let mut last = t.committed();
            for (lsn, j) in all {
                t.ack(lsn, j).unwrap();
                acked.insert((lsn, j));
                let c = t.committed();
                prop_assert!(c >= last);
                last = c;
                for (i, &s) in sizes.iter().enumerate() {
                    let l = 1 + i as u64;
                    if l < c {
                        for k in 0..s { prop_assert!(acked.contains(&(l, k)), "committed {c} passes unacked {l}-{k}"); }
                    }
                }
            }
            prop_assert_eq!(t.committed(), 1 + sizes.len() as u64);
            prop_assert_eq!(t.outstanding_records(), 0);
        }
    }
}
