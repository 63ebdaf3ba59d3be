//! Who runs what: each node's placer claims, in the metastore, the resources the placement
//! puts on it, starts them under the ownership it got, and stops and releases what moved
//! away. Decision 027.
//!
//! Guarantees:
//! - **One owner at a time, fenced.** A resource runs on a node only under an ownership that
//!   node claimed (`MetaStore::claim`, which moves the resource's epoch on by one), and every
//!   write a running copy makes (subscription progress, connector checkpoints) carries that
//!   ownership as a fence: once another node claimed the resource, the old copy commits
//!   nothing, and stops when its commit is refused.
//! - **Hand-over before take-over.** A node claims a resource only when nobody holds it, when
//!   its holder is this node (an earlier run of it), or when the holder is gone: dead or left
//!   in the gossip, or missing from a view that has had time to settle. A live holder whose
//!   resource the placement moves stops its copy (its last commit included) and releases it
//!   first; so a membership change never has a resource running twice, except on a node cut
//!   off from everything, whose commits the fences refuse.
//! - **A node that cannot read its assignments stops.** In a cluster, when the metastore has
//!   not answered for [`STALE_AFTER`], the others may have taken this node's resources: it
//!   stops every local copy rather than run on (a node alone keeps them: nobody else would).
//! - **Every node agrees on the placement** given the same view: it is [`placement::place`]
//!   over the serving members (alive or suspect), sticky to the stored holders.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::membership::{Membership, State};
use super::placement::{self, NodeId};
use crate::error::{ApiError, ApiResult};
use crate::meta::{MetaError, MetaStore, Ownership};

/// How often the placer looks again without being asked (membership changes and local
/// creations wake it at once).
pub const PLACE_EVERY: Duration = Duration::from_secs(1);

/// A node whose metastore has not answered for this long stops what it runs (cluster only):
/// after a gossip death (about 5 s) others claim it.
pub const STALE_AFTER: Duration = Duration::from_secs(4);

/// How long after joining a node waits before it treats a holder missing from its view as
/// gone (its view may not have every member yet).
pub const SETTLE: Duration = Duration::from_secs(6);

/// A kind of resource the placer places (subscriptions, connector tasks).
#[async_trait]
pub trait Hosted: Send + Sync {
    /// The kind's prefix in ownership records: `subscription/`, `connector/`.
    fn prefix(&self) -> &'static str;
    /// Every resource of this kind in the metastore, by name.
    async fn stored(&self) -> ApiResult<BTreeSet<String>>;
    /// The resources running on this node, each with the ownership it runs under.
    fn running(&self) -> BTreeMap<String, Ownership>;
    /// Starts `name` here under `held`.
    async fn start(&self, name: &str, held: Ownership) -> ApiResult<()>;
    /// Stops the local copy of `name`, its last commit made: `deleted` when the resource is
    /// gone from the metastore, else it moves to another node and keeps its stored state.
    async fn stop(&self, name: &str, deleted: bool);
}

/// This node's placer and the lookups that follow the placement.
pub struct Assignments {
    meta: Arc<dyn MetaStore>,
    me: NodeId,
    /// This node as clients reach it (`host:port`), for lookups that land here.
    my_address: String,
    membership: Option<Arc<Membership>>,
    slack_percent: u32,
    kinds: Mutex<Vec<Weak<dyn Hosted>>>,
    /// Wakes the placer now.
    kick: Notify,
    /// One pass at a time (the loop's, and those a request asks for).
    pass: tokio::sync::Mutex<()>,
    started: Instant,
    /// When the metastore last answered a whole pass.
    last_ok: Mutex<Instant>,
}

/// Where a resource is, for lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub node: NodeId,
    pub host: String,
    pub port: u32,
}

impl Assignments {
    pub fn new(
        meta: Arc<dyn MetaStore>,
        me: NodeId,
        my_address: String,
        membership: Option<Arc<Membership>>,
        slack_percent: u32,
    ) -> Self {
        Assignments {
            meta,
            me,
            my_address,
            membership,
            slack_percent,
            kinds: Mutex::new(Vec::new()),
            kick: Notify::new(),
            pass: tokio::sync::Mutex::new(()),
            started: Instant::now(),
            last_ok: Mutex::new(Instant::now()),
        }
    }

    /// Adds a kind to place (held weakly: the kind's service holds this).
    pub fn add(&self, kind: Weak<dyn Hosted>) {
        self.kinds.lock().expect("lock").push(kind);
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    fn kinds(&self) -> Vec<Arc<dyn Hosted>> {
        self.kinds
            .lock()
            .expect("lock")
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// The members that may hold resources (alive or suspect), by id, with their address;
    /// alone: this node.
    fn serving(&self) -> BTreeMap<NodeId, (String, u32)> {
        let Some(m) = &self.membership else {
            let (host, port) = split_address(&self.my_address);
            return BTreeMap::from([(self.me, (host, port))]);
        };
        m.view()
            .into_values()
            .filter(|(_, s)| matches!(s, State::Alive | State::Suspect))
            .map(|(n, _)| (n.id, (n.host, n.port)))
            .collect()
    }

    /// Whether `holder` no longer runs what it holds, as far as this node can tell.
    fn gone(&self, holder: NodeId) -> bool {
        if holder == self.me {
            return true; // an earlier run of this node: nothing of it runs now
        }
        let Some(m) = &self.membership else {
            return true; // alone: no other node runs anything
        };
        let view = m.view();
        let mut states = view.values().filter(|(n, _)| n.id == holder).map(|(_, s)| *s);
        match states.next() {
            None => self.started.elapsed() >= SETTLE,
            Some(first) => std::iter::once(first)
                .chain(states)
                .all(|s| matches!(s, State::Dead | State::Left)),
        }
    }

    /// Runs the placer until `shutdown`: a pass every [`PLACE_EVERY`], when asked, and when
    /// the membership changes; stops every local copy when the metastore stays silent for
    /// [`STALE_AFTER`] in a cluster.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut view = self.membership.as_ref().map(|m| m.watch());
        loop {
            let changed = async {
                match view.as_mut() {
                    Some(v) => {
                        if v.changed().await.is_err() {
                            std::future::pending::<()>().await
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PLACE_EVERY) => {}
                _ = self.kick.notified() => {}
                _ = changed => {}
            }
            if shutdown.is_cancelled() {
                return; // what this node holds is released by `release_all`
            }
            if let Err(e) = self.place_now().await {
                tracing::warn!(error = %e, "placing resources failed");
                self.stop_if_stale().await;
            }
        }
    }

    /// Wakes the placer for a pass soon.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// One pass over every kind, now.
    pub async fn place_now(&self) -> ApiResult<()> {
        let _one = self.pass.lock().await;
        for kind in self.kinds() {
            self.pass(kind.as_ref()).await?;
        }
        *self.last_ok.lock().expect("lock") = Instant::now();
        Ok(())
    }

    /// The placement of one kind now: stored holders that still serve stay (within the
    /// bound), the rest go where the ring says.
    async fn placement(
        &self,
        kind: &dyn Hosted,
    ) -> ApiResult<(BTreeSet<String>, BTreeMap<String, Ownership>, BTreeMap<String, NodeId>)> {
        let prefix = kind.prefix();
        let stored = kind.stored().await?;
        let owners: BTreeMap<String, Ownership> = self
            .meta
            .list_ownerships(prefix)
            .await?
            .into_iter()
            .filter_map(|o| Some((o.resource.strip_prefix(prefix)?.to_owned(), o)))
            .collect();
        let members: BTreeSet<NodeId> = self.serving().into_keys().collect();
        let previous: BTreeMap<String, NodeId> = owners
            .iter()
            .filter_map(|(name, o)| o.owner.filter(|h| members.contains(h)).map(|h| (name.clone(), h)))
            .collect();
        let placed = placement::place(&members, &stored, &previous, self.slack_percent);
        Ok((stored, owners, placed))
    }

    async fn pass(&self, kind: &dyn Hosted) -> ApiResult<()> {
        let prefix = kind.prefix();
        let (stored, owners, placed) = self.placement(kind).await?;
        let running = kind.running();
        // What is gone or placed elsewhere: stop here, then let go.
        for (name, held) in &running {
            if owners.get(name).is_some_and(|o| o != held) {
                // Claimed by another node meanwhile (this one was thought gone): its copy
                // here can commit nothing more; stop it without touching the new holder's.
                tracing::warn!(resource = %held.resource, epoch = held.epoch, "taken over by another node: stopping");
                kind.stop(name, false).await;
                continue;
            }
            if placed.get(name) == Some(&self.me) {
                continue;
            }
            let deleted = !stored.contains(name);
            tracing::info!(resource = %held.resource, to = ?placed.get(name), deleted, "stopping what moved away");
            kind.stop(name, deleted).await;
            if !deleted {
                self.release(held).await;
            }
        }
        for (name, target) in &placed {
            if *target != self.me || running.contains_key(name) {
                continue;
            }
            let current = owners.get(name);
            if let Some(holder) = current.and_then(|o| o.owner)
                && !self.gone(holder)
            {
                continue; // its holder stops and releases it first
            }
            let resource = format!("{prefix}{name}");
            let held = match self
                .meta
                .claim(&resource, self.me, current.map_or(0, |o| o.epoch))
                .await
            {
                Ok(held) => held,
                Err(MetaError::Fenced { .. }) => continue, // another node came first
                Err(e) => return Err(e.into()),
            };
            tracing::info!(resource = %resource, epoch = held.epoch, "claimed");
            if let Err(e) = kind.start(name, held.clone()).await {
                tracing::warn!(resource = %resource, error = %e, "could not start what was claimed");
                self.release(&held).await;
            }
        }
        // Held by an earlier run of this node but placed elsewhere: let go at once.
        for (name, o) in &owners {
            if o.owner == Some(self.me)
                && !running.contains_key(name)
                && stored.contains(name)
                && placed.get(name) != Some(&self.me)
            {
                self.release(o).await;
            }
        }
        Ok(())
    }

    async fn release(&self, held: &Ownership) {
        match self.meta.release(held).await {
            Ok(_) | Err(MetaError::Fenced { .. }) => {}
            Err(e) => tracing::warn!(resource = %held.resource, error = %e, "could not release"),
        }
    }

    async fn stop_if_stale(&self) {
        if self.membership.is_none() {
            return;
        }
        let silent = self.last_ok.lock().expect("lock").elapsed();
        if silent < STALE_AFTER {
            return;
        }
        for kind in self.kinds() {
            for name in kind.running().into_keys() {
                tracing::warn!(resource = %format!("{}{name}", kind.prefix()), silent_ms = silent.as_millis() as u64,
                    "the metastore has not answered: stopping, others may hold this now");
                kind.stop(&name, false).await;
            }
        }
    }

    /// Stops every local copy, its last commit made, then releases everything this node
    /// holds, so other nodes take over at once (graceful shutdown, before leaving the gossip:
    /// until then nobody else claims what this node holds).
    pub async fn release_all(&self) {
        let _one = self.pass.lock().await;
        for kind in self.kinds() {
            for name in kind.running().into_keys() {
                kind.stop(&name, false).await;
            }
            match self.meta.list_ownerships(kind.prefix()).await {
                Ok(all) => {
                    for o in all.iter().filter(|o| o.owner == Some(self.me)) {
                        self.release(o).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not release what this node holds"),
            }
        }
    }

    /// Where `name` of `kind` runs, or will: its holder when that node serves, else where
    /// the placement puts it. `None` when the resource does not exist.
    pub async fn locate(&self, kind: &dyn Hosted, name: &str) -> ApiResult<Option<Location>> {
        let (stored, owners, placed) = self.placement(kind).await?;
        if !stored.contains(name) {
            return Ok(None);
        }
        let serving = self.serving();
        let node = owners
            .get(name)
            .and_then(|o| o.owner)
            .filter(|h| serving.contains_key(h))
            .or_else(|| placed.get(name).copied());
        Ok(node.and_then(|n| {
            serving.get(&n).map(|(host, port)| Location {
                node: n,
                host: host.clone(),
                port: *port,
            })
        }))
    }

    /// The serving member the ring gives `resource`, for what is served by any node but best
    /// by one (appends to a shard, a shard reader's position): no claim, no fencing, the
    /// same answer on every node with the same view.
    pub fn spread(&self, resource: &str) -> Location {
        let serving = self.serving();
        let members: BTreeSet<NodeId> = serving.keys().copied().collect();
        let node = placement::place(&members, &BTreeSet::from([resource.to_owned()]), &BTreeMap::new(), 0)
            .into_values()
            .next()
            .unwrap_or(self.me);
        match serving.get(&node) {
            Some((host, port)) => Location {
                node,
                host: host.clone(),
                port: *port,
            },
            None => {
                let (host, port) = split_address(&self.my_address);
                Location {
                    node: self.me,
                    host,
                    port,
                }
            }
        }
    }

    /// Where each held resource of `kind` runs (`host:port`), for the holders that serve.
    pub async fn holders(&self, kind: &dyn Hosted) -> ApiResult<BTreeMap<String, String>> {
        let prefix = kind.prefix();
        let serving = self.serving();
        Ok(self
            .meta
            .list_ownerships(prefix)
            .await?
            .into_iter()
            .filter_map(|o| {
                let (host, port) = serving.get(&o.owner?)?;
                Some((o.resource.strip_prefix(prefix)?.to_owned(), format!("{host}:{port}")))
            })
            .collect())
    }

    /// The error for a request about `name` of `kind` that landed on a node not running it:
    /// WrongServer naming the node that does (or will).
    pub async fn wrong_server(&self, kind: &dyn Hosted, what: String, name: &str) -> ApiError {
        let owner = match self.locate(kind, name).await {
            Ok(loc) => loc.map(|l| format!("{}:{}", l.host, l.port)),
            Err(e) => return e,
        };
        ApiError::WrongServer { what, owner }
    }

    /// Makes sure `name` of `kind` runs here if the placement puts it here: a pass now when it
    /// does not run yet (a resource just created elsewhere). Whether it runs here after.
    pub async fn ensure_here(&self, kind: &dyn Hosted, name: &str) -> ApiResult<bool> {
        if kind.running().contains_key(name) {
            return Ok(true);
        }
        self.place_now().await?;
        Ok(kind.running().contains_key(name))
    }

    /// Takes `name` of `kind` from whoever holds it, so that nothing it runs can commit any
    /// more (before deleting it from another node); the caller releases what it got.
    pub async fn fence(&self, kind: &dyn Hosted, name: &str) -> ApiResult<Ownership> {
        let resource = format!("{}{name}", kind.prefix());
        let mut attempts = 0;
        loop {
            let current = self.meta.ownership(&resource).await?;
            match self
                .meta
                .claim(&resource, self.me, current.map_or(0, |o| o.epoch))
                .await
            {
                Ok(held) => return Ok(held),
                Err(MetaError::Fenced { .. }) if attempts < 8 => attempts += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Releases what [`fence`](Self::fence) took.
    pub async fn unfence(&self, held: &Ownership) {
        self.release(held).await;
    }
}

/// `host:port` into its parts (port 0 when absent).
fn split_address(address: &str) -> (String, u32) {
    match address.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), port.parse().unwrap_or(0)),
        None => (address.to_owned(), 0),
    }
}
