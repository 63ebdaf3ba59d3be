//! Where each resource (a subscription, a shard reader, a connector task) runs: consistent
//! hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, arXiv:1608.01350), made
//! sticky. Decision 025.
//!
//! Guarantees (each property-tested below):
//! - **Complete**: every resource is placed on a member (nothing, when there are no members).
//! - **Bounded**: no member holds more than [`capacity`] = ⌈(1+ε)·m/n⌉ of the m resources
//!   (n members).
//! - **Deterministic**: the result is a function of the members, the resources, the previous
//!   placement and ε alone (integer arithmetic, a fixed hash, canonical order), so every node
//!   computing it from the same metastore revision gets the same answer.
//! - **Sticky, moving only what must move**: a resource stays where it is while its node is a
//!   member and within the bound. So nothing moves when nothing changed; a member leaving
//!   moves exactly its own resources; a member joining lowers the bound and moves only each
//!   member's excess over it, Σ max(0, load − capacity). The bound is an upper one: a newcomer
//!   may get nothing until resources are added or members leave.
//!
//! What has to move (or was never placed) goes, in resource order, to the first member with
//! room clockwise from the resource's point on a ring of [`POINTS`] points per member: a
//! member's neighbours on the ring share its load when it leaves, and a resource that moves
//! lands where the plain consistent hash would put it unless that member is full.

use std::collections::{BTreeMap, BTreeSet};

use md5::{Digest, Md5};

/// A member of the cluster, by server id.
pub type NodeId = u32;

/// Ring points per member: enough that members' arcs are even (the spread of loads before
/// the bound applies), few enough that a walk is short.
pub const POINTS: u32 = 64;

/// The slack over a perfectly even spread, in percent (ε = 0.25): the paper's bound on moves
/// per change grows as 1/ε², the imbalance as ε.
pub const DEFAULT_SLACK_PERCENT: u32 = 25;

/// The most resources one of `members` members may hold: ⌈(100+slack)·resources / (100·members)⌉
/// (0 without members). At least ⌈resources/members⌉, so everything fits.
pub fn capacity(resources: usize, members: usize, slack_percent: u32) -> usize {
    if members == 0 {
        return 0;
    }
    let num = resources as u128 * (100 + slack_percent as u128);
    let den = 100 * members as u128;
    num.div_ceil(den) as usize
}

/// A stable 64-bit point for `text` (the first eight bytes of its MD5: the same on every
/// machine and Rust version, unlike `std`'s hasher).
fn point(text: &str) -> u64 {
    let digest = Md5::digest(text.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("eight bytes"))
}

/// The ring: [`POINTS`] points per member, sorted (ties broken by member id).
#[derive(Debug, Clone)]
pub struct Ring(Vec<(u64, NodeId)>);

impl Ring {
    pub fn new(members: &BTreeSet<NodeId>) -> Ring {
        let mut ring: Vec<(u64, NodeId)> = members
            .iter()
            .flat_map(|&m| (0..POINTS).map(move |i| (point(&format!("node-{m}-{i}")), m)))
            .collect();
        ring.sort_unstable();
        Ring(ring)
    }

    /// Members clockwise from `resource`'s point, each of its points in turn.
    fn clockwise(&self, resource: &str) -> impl Iterator<Item = NodeId> + '_ {
        let h = point(resource);
        let start = self.0.partition_point(|&(p, _)| p < h);
        (0..self.0.len()).map(move |i| self.0[(start + i) % self.0.len()].1)
    }

    /// The first member clockwise from `resource`: where [`place`] puts a resource alone.
    pub fn owner(&self, resource: &str) -> Option<NodeId> {
        self.clockwise(resource).next()
    }
}

/// Places `resources` on `members`, keeping what `previous` placed where it may stay.
/// Resources of `previous` that are no longer in `resources` are dropped.
pub fn place(
    members: &BTreeSet<NodeId>,
    resources: &BTreeSet<String>,
    previous: &BTreeMap<String, NodeId>,
    slack_percent: u32,
) -> BTreeMap<String, NodeId> {
    let mut placed = BTreeMap::new();
    if members.is_empty() {
        return placed;
    }
    let cap = capacity(resources.len(), members.len(), slack_percent);
    let mut load: BTreeMap<NodeId, usize> = members.iter().map(|&m| (m, 0)).collect();
    // Stay: in resource order, up to the bound.
    let mut homeless = Vec::new();
    for r in resources {
        match previous.get(r).and_then(|p| load.get_mut(p).map(|l| (p, l))) {
            Some((&p, l)) if *l < cap => {
                *l += 1;
                placed.insert(r.clone(), p);
            }
            _ => homeless.push(r),
        }
    }
    if homeless.is_empty() {
        return placed;
    }
    // Move: clockwise from the resource's point to the first member with room.
    let ring = Ring::new(members);
    for r in homeless {
        let owner = ring
            .clockwise(r)
            .find(|m| load[m] < cap)
            .expect("capacity × members ≥ resources: some member has room");
        *load.get_mut(&owner).expect("a member") += 1;
        placed.insert(r.clone(), owner);
    }
    placed
}

/// Resources per member in `placement`, members without any included.
pub fn loads(members: &BTreeSet<NodeId>, placement: &BTreeMap<String, NodeId>) -> BTreeMap<NodeId, usize> {
    let mut load: BTreeMap<NodeId, usize> = members.iter().map(|&m| (m, 0)).collect();
    for owner in placement.values() {
        *load.entry(*owner).or_default() += 1;
    }
    load
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("sub-{i}")).collect()
    }

    fn moved(a: &BTreeMap<String, NodeId>, b: &BTreeMap<String, NodeId>) -> usize {
        a.iter().filter(|(r, n)| b.get(*r) != Some(n)).count()
    }

    fn members_and_resources() -> impl Strategy<Value = (BTreeSet<NodeId>, BTreeSet<String>, u32)> {
        (
            prop::collection::btree_set(0u32..32, 1..9),
            0usize..400,
            prop::sample::select(vec![0u32, 10, 25, 50, 100]),
        )
            .prop_map(|(m, n, slack)| (m, names(n), slack))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// A ring's owner of a resource is where placement puts that resource alone (what
        /// lookups of spread resources answer from a ring kept between calls).
        #[test]
        fn the_ring_owner_is_the_lone_placement(
            members in prop::collection::btree_set(0u32..32, 1..9),
            resource in "[a-z]{1,8}/[0-9]{1,6}",
        ) {
            let alone = place(&members, &BTreeSet::from([resource.clone()]), &BTreeMap::new(), 0);
            prop_assert_eq!(Ring::new(&members).owner(&resource), alone.get(&resource).copied());
        }

        /// Complete and bounded from any previous placement, including one naming
        /// non-members, overloaded members and resources that are gone.
        #[test]
        fn every_resource_on_a_member_within_the_bound(
            (members, resources, slack) in members_and_resources(),
            previous in prop::collection::btree_map("sub-[0-9]{1,3}", 0u32..40, 0..400),
        ) {
            let placed = place(&members, &resources, &previous, slack);
            prop_assert_eq!(placed.keys().collect::<Vec<_>>(), resources.iter().collect::<Vec<_>>());
            prop_assert!(placed.values().all(|n| members.contains(n)));
            let cap = capacity(resources.len(), members.len(), slack);
            for (m, l) in loads(&members, &placed) {
                prop_assert!(l <= cap, "member {} holds {} > {}", m, l, cap);
            }
        }

        /// Nothing moves when nothing changed; the same inputs give the same answer.
        #[test]
        fn a_placement_is_its_own_fixpoint((members, resources, slack) in members_and_resources()) {
            let first = place(&members, &resources, &BTreeMap::new(), slack);
            prop_assert_eq!(&place(&members, &resources, &BTreeMap::new(), slack), &first);
            prop_assert_eq!(place(&members, &resources, &first, slack), first);
        }

        /// A member leaving moves exactly its own resources.
        #[test]
        fn a_leaving_member_moves_only_its_own(
            (members, resources, slack) in members_and_resources(),
            pick in any::<prop::sample::Index>(),
        ) {
            prop_assume!(members.len() >= 2);
            let before = place(&members, &resources, &BTreeMap::new(), slack);
            let gone = *pick.get(&members.iter().copied().collect::<Vec<_>>());
            let mut rest = members.clone();
            rest.remove(&gone);
            let after = place(&rest, &resources, &before, slack);
            let had = before.values().filter(|&&n| n == gone).count();
            prop_assert_eq!(moved(&before, &after), had);
        }

        /// A member joining moves only each member's excess over the new bound, and every
        /// resource that moves goes to the newcomer or away from an overloaded member.
        #[test]
        fn a_joining_member_moves_only_the_excess(
            (members, resources, slack) in members_and_resources(),
            newcomer in 32u32..40,
        ) {
            let before = place(&members, &resources, &BTreeMap::new(), slack);
            let mut more = members.clone();
            more.insert(newcomer);
            let after = place(&more, &resources, &before, slack);
            let cap = capacity(resources.len(), more.len(), slack);
            let excess: usize = loads(&members, &before).values().map(|&l| l.saturating_sub(cap)).sum();
            prop_assert_eq!(moved(&before, &after), excess);
        }
    }

    /// With the default slack the busiest member holds at most 1.25× the average, and the
    /// ring alone (before the bound) spreads resources roughly evenly.
    #[test]
    fn spread_on_three_members() {
        let members: BTreeSet<NodeId> = [1, 2, 3].into();
        let resources = names(300);
        let placed = place(&members, &resources, &BTreeMap::new(), DEFAULT_SLACK_PERCENT);
        let loads = loads(&members, &placed);
        assert!(loads.values().all(|&l| l <= 125), "{loads:?}");
        assert!(loads.values().all(|&l| l >= 50), "{loads:?}");
        assert_eq!(capacity(300, 3, 25), 125);
        assert_eq!(capacity(1, 3, 25), 1);
        assert_eq!(capacity(0, 3, 25), 0);
        assert_eq!(capacity(5, 0, 25), 0);
    }
}
