//! Who runs what: each node's placer claims, in the metastore, the resources the placement
//! puts on it, starts them under the ownership it got, and stops and releases what moved
//! away. Decision 027.
//!
//! Guarantees:
//! - **One owner at a time, fenced.** A resource runs on a node only under an ownership that
//!   node claimed (`MetaStore::claim`, which moves the resource's epoch on by one), and every
//!   write a running copy makes (subscription progress, connector checkpoints and status)
//!   carries that
//!   ownership as a fence: once another node claimed the resource, the old copy commits
//!   nothing, and stops when its commit is refused.
//! - **Hand-over before take-over.** A node claims a resource only when nobody holds it, when
//!   its holder is this node (an earlier run of it), or when the holder is gone: dead or left
//!   in the gossip, or missing from a view that has had time to settle — and only while it
//!   sees a majority of the members it knows alive (the small side of a partition sees the
//!   others dead). A live holder whose resource the placement moves stops its copy (its last
//!   commit included) and releases it first; so a membership change never has a resource
//!   running twice.
//! - **A node that cannot reach the metastore stops writing.** In a cluster, when the
//!   metastore has not answered for [`STALE_AFTER`] (a watchdog reads it twice a second), the
//!   others may be about to take this node's resources: its connector tasks' appends are
//!   refused and every local copy is stopped, before a gossip death lets anyone claim them (a
//!   node alone keeps them: nobody else would).
//! - **Every node agrees on the placement** given the same view: it is [`placement::place`]
//!   over the serving members (alive or suspect), sticky to the stored holders.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::membership::{Membership, State};
use super::placement::{self, NodeId};
use crate::error::{ApiError, ApiResult};
use crate::meta::{MetaError, MetaStore, Ownership};

/// How often the placer looks again without being asked (membership changes wake it at
/// once; a creation, or a request for something not running yet, runs a pass itself).
pub const PLACE_EVERY: Duration = Duration::from_secs(1);

/// A node whose metastore has not answered for this long stops what it runs and refuses its
/// connector tasks' appends (cluster only): others claim only after a gossip death (3 s of
/// suspicion after a failed probe, about 5 s in all), so the copy here is quiet by then.
pub const STALE_AFTER: Duration = Duration::from_secs(4);

/// How often the watchdog reads the metastore, and how long a read may take before it counts
/// as unanswered.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// After a resource failed to start here, this node claims it again after 1 s, doubling with
/// each further failure up to 30 s.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// How long a placement read from the metastore answers lookups ([`Assignments::lookup`])
/// before they read it again: passes refresh it every [`PLACE_EVERY`] and on every membership
/// change.
const LOOKUP_FRESH: Duration = Duration::from_secs(2);

/// How long after joining a node waits before it treats a holder missing from its view as
/// gone (its view may not have every member yet).
pub const SETTLE: Duration = Duration::from_secs(6);

/// Why a local copy stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// It moves to another node: its last commit is made before it is released.
    Moved,
    /// It is gone from the metastore.
    Deleted,
    /// Another node holds it now, or may: it must write nothing more, at once (its last
    /// commit is fenced out or cannot reach the metastore anyway).
    Lost,
}

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
    /// Stops the local copy of `name` (see [`Stop`]); the resource keeps its stored state
    /// unless deleted.
    async fn stop(&self, name: &str, how: Stop);
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
    /// One pass at a time (the loop's, those a request asks for), and deletes exclude them.
    pass: tokio::sync::Mutex<()>,
    /// When this node joined, last regained the metastore after losing it, or last saw itself
    /// in a minority: its view of the others (who is dead) may be stale until then +
    /// [`SETTLE`].
    started: Mutex<Instant>,
    /// When the metastore last answered (a pass's reads, or the watchdog's heartbeat).
    last_ok: Mutex<Instant>,
    /// Resources that failed to start here: not before when to claim them again, how often in
    /// a row, and the last error.
    failed: Mutex<BTreeMap<String, Failed>>,
    /// Members registered in the metastore and not stopped gracefully (refreshed each pass):
    /// counted as known by the majority rule even once the gossip forgot them.
    registered: Mutex<BTreeSet<NodeId>>,
    /// The last placement read of each kind (by prefix), for lookups.
    last_read: Mutex<BTreeMap<&'static str, Arc<PlacementRead>>>,
    /// The ring of the serving members, kept while they stay the same (spread lookups).
    ring: Mutex<Option<(BTreeSet<NodeId>, Arc<placement::Ring>)>>,
    /// Membership changes seen so far ([`view`](Self::view)).
    views: std::sync::atomic::AtomicU64,
}

/// A kind's resources, their ownership records and the placement, as one read found them.
struct PlacementRead {
    at: Instant,
    stored: BTreeSet<String>,
    owners: BTreeMap<String, Ownership>,
    placed: BTreeMap<String, NodeId>,
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
            pass: tokio::sync::Mutex::new(()),
            started: Mutex::new(Instant::now()),
            last_ok: Mutex::new(Instant::now()),
            failed: Mutex::new(BTreeMap::new()),
            registered: Mutex::new(BTreeSet::new()),
            last_read: Mutex::new(BTreeMap::new()),
            ring: Mutex::new(None),
            views: std::sync::atomic::AtomicU64::new(0),
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

    /// Whether this node may claim: alone, always; in a cluster once it sees another member
    /// alive, or after [`SETTLE`] (the first node of a cluster).
    fn settled(&self) -> bool {
        let Some(m) = &self.membership else {
            return true;
        };
        self.started.lock().expect("lock").elapsed() >= SETTLE
            || m.view().values().any(|(n, s)| n.id != self.me && *s == State::Alive)
    }

    /// Whether this node sees more than half of the members it knows (those that did not
    /// leave) alive or suspect. A node on the small side of a partition sees the rest dead:
    /// it must not take over what they hold.
    fn in_majority(&self) -> bool {
        let Some(m) = &self.membership else {
            return true;
        };
        // Known: every member in the view that did not leave, and every member registered in
        // the metastore (the gossip forgets the dead after a while; a node whose gossip
        // never reached anyone sees only itself).
        let mut known: BTreeMap<NodeId, bool> = self
            .registered
            .lock()
            .expect("lock")
            .iter()
            .map(|&id| (id, false))
            .collect();
        for (n, s) in m.view().into_values() {
            if s == State::Left {
                continue;
            }
            let serving = matches!(s, State::Alive | State::Suspect);
            *known.entry(n.id).or_default() |= serving;
        }
        let serving = known.values().filter(|s| **s).count();
        2 * serving > known.len()
    }

    /// Whether `holder` no longer runs what it holds, as far as this node can tell.
    fn gone(&self, holder: NodeId) -> bool {
        if holder == self.me {
            return true; // an earlier run of this node: nothing of it runs now
        }
        let Some(m) = &self.membership else {
            return true; // alone: no other node runs anything
        };
        if !self.in_majority() {
            return false;
        }
        let view = m.view();
        let mut states = view.values().filter(|(n, _)| n.id == holder).map(|(_, s)| *s);
        match states.next() {
            None => self.started.lock().expect("lock").elapsed() >= SETTLE,
            Some(first) => {
                let states: Vec<State> = std::iter::once(first).chain(states).collect();
                // Left is the holder's own word. Dead is this node's opinion, trusted only
                // once it has been in touch for a while: a node back from a partition may
                // still see the others dead after some have rejoined (seen in a test).
                states.iter().all(|s| *s == State::Left)
                    || (states.iter().all(|s| matches!(s, State::Dead | State::Left))
                        && self.started.lock().expect("lock").elapsed() >= SETTLE)
            }
        }
    }

    /// Runs the placer until `shutdown`: a pass every [`PLACE_EVERY`] and whenever the
    /// membership changes; in a cluster also the watchdog, which stops every local copy once
    /// the metastore has been silent for [`STALE_AFTER`].
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.membership.is_some() {
            tokio::spawn(self.clone().watchdog(shutdown.clone()));
        }
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
                _ = changed => {
                    self.views.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
            if shutdown.is_cancelled() {
                return; // what this node holds is released by `release_all`
            }
            if let Err(e) = self.place_now().await {
                tracing::warn!(error = %e, "placing resources failed");
            }
        }
    }

    /// Reads the metastore every second, independently of passes (which may wait on a slow
    /// stop); when it has not answered for [`STALE_AFTER`], stops every local copy as lost.
    async fn watchdog(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            }
            let sent = Instant::now();
            if let Ok(Ok(_)) = tokio::time::timeout(HEARTBEAT_TIMEOUT, self.meta.cluster_id(None)).await {
                self.answered_at(sent);
            }
            if !self.in_majority() {
                // Whatever this node now sees dead it may see wrongly for a while after.
                *self.started.lock().expect("lock") = Instant::now();
            }
            if !self.fresh() {
                self.stop_all_lost().await;
            }
        }
    }

    /// Notes that the metastore answered. Back from being cut off (stale), the node's view of
    /// the others is stale too (it may see them dead): it settles again before claiming.
    fn answered_at(&self, sent: Instant) {
        let mut last_ok = self.last_ok.lock().expect("lock");
        if sent <= *last_ok {
            return;
        }
        if self.membership.is_some() && last_ok.elapsed() >= STALE_AFTER {
            tracing::info!("the metastore answers again: settling before claiming anything");
            *self.started.lock().expect("lock") = Instant::now();
        }
        *last_ok = sent;
    }

    /// A number that changes whenever this node's view of the membership changed (so what the
    /// ring names may have moved): what was settled under an older one is worth checking again.
    pub fn view(&self) -> u64 {
        self.views.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forgets the last placement read of `kind` (after a delete through this node: its
    /// lookups answer NotFound at once).
    pub fn forget_reads(&self, kind: &dyn Hosted) {
        self.last_read.lock().expect("lock").remove(kind.prefix());
    }

    /// One pass over every kind, now.
    pub async fn place_now(&self) -> ApiResult<()> {
        let _one = self.pass.lock().await;
        for kind in self.kinds() {
            self.pass(kind.as_ref()).await?;
        }
        Ok(())
    }

    /// Holds off passes (for a delete, which must not see this node's placer start or release
    /// what it is deleting). Never call a pass while holding it.
    pub async fn exclusive(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.pass.lock().await
    }

    /// The placement of one kind now: stored holders that still serve stay (within the
    /// bound), the rest go where the ring says.
    async fn placement(
        &self,
        kind: &dyn Hosted,
    ) -> ApiResult<(BTreeSet<String>, BTreeMap<String, Ownership>, BTreeMap<String, NodeId>)> {
        let prefix = kind.prefix();
        let sent = Instant::now();
        let stored = kind.stored().await?;
        let owners: BTreeMap<String, Ownership> = self
            .meta
            .list_ownerships(prefix)
            .await?
            .into_iter()
            .filter_map(|o| Some((o.resource.strip_prefix(prefix)?.to_owned(), o)))
            .collect();
        self.answered_at(sent);
        if self.membership.is_some() {
            let nodes = self.meta.list_nodes().await?;
            *self.registered.lock().expect("lock") =
                nodes.into_iter().filter(|n| n.state != "Dead").map(|n| n.id).collect();
        }
        let members: BTreeSet<NodeId> = self.serving().into_keys().collect();
        let previous: BTreeMap<String, NodeId> = owners
            .iter()
            .filter_map(|(name, o)| o.owner.filter(|h| members.contains(h)).map(|h| (name.clone(), h)))
            .collect();
        let placed = placement::place(&members, &stored, &previous, self.slack_percent);
        // Reads run concurrently (passes, and lookups that read afresh): the newest stays.
        let read = Arc::new(PlacementRead {
            at: sent,
            stored: stored.clone(),
            owners: owners.clone(),
            placed: placed.clone(),
        });
        let mut reads = self.last_read.lock().expect("lock");
        if reads.get(prefix).is_none_or(|r| r.at <= sent) {
            reads.insert(prefix, read);
        }
        drop(reads);
        Ok((stored, owners, placed))
    }

    async fn pass(&self, kind: &dyn Hosted) -> ApiResult<()> {
        let prefix = kind.prefix();
        let (stored, owners, placed) = self.placement(kind).await?;
        let running = kind.running();
        // A failed start of something deleted since is forgotten (a new one of that name
        // starts afresh).
        self.failed
            .lock()
            .expect("lock")
            .retain(|r, _| r.strip_prefix(prefix).is_none_or(|n| stored.contains(n)));
        // What is gone or placed elsewhere: stop here, then let go.
        for (name, held) in &running {
            if !stored.contains(name) {
                tracing::info!(resource = %held.resource, "deleted: stopping");
                kind.stop(name, Stop::Deleted).await;
                continue;
            }
            if owners.get(name).is_some_and(|o| o != held) {
                // Claimed by another node meanwhile (this one was thought gone), or by a
                // delete made through another node after `stored` was read: look again, so a
                // deleted one is stopped as deleted (its delete hook runs).
                if !kind.stored().await?.contains(name) {
                    kind.stop(name, Stop::Deleted).await;
                    continue;
                }
                tracing::warn!(resource = %held.resource, epoch = held.epoch, "taken over by another node: stopping");
                kind.stop(name, Stop::Lost).await;
                continue;
            }
            if placed.get(name) == Some(&self.me) {
                continue;
            }
            tracing::info!(resource = %held.resource, to = ?placed.get(name), "stopping what moved away");
            kind.stop(name, Stop::Moved).await;
            self.release(held).await;
        }
        // A node that just started and sees nobody else yet claims nothing: it would take
        // everything nobody holds.
        if !self.settled() {
            return Ok(());
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
            if self
                .failed
                .lock()
                .expect("lock")
                .get(&resource)
                .is_some_and(|f| Instant::now() < f.retry_at)
            {
                continue; // failed to start here a moment ago: not claimed again yet
            }
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
            match kind.start(name, held.clone()).await {
                Ok(()) => {
                    self.failed.lock().expect("lock").remove(&resource);
                }
                Err(e) => {
                    let retry_in = {
                        let mut failed = self.failed.lock().expect("lock");
                        let streak = failed.get(&resource).map_or(0, |f| f.streak + 1);
                        let retry_in = RETRY_FIRST.saturating_mul(1 << streak.min(5)).min(RETRY_MAX);
                        failed.insert(
                            resource.clone(),
                            Failed {
                                retry_at: Instant::now() + retry_in,
                                streak,
                                error: e.to_string(),
                            },
                        );
                        retry_in
                    };
                    tracing::warn!(resource = %resource, error = %e, retry_in_ms = retry_in.as_millis() as u64,
                        "could not start what was claimed");
                    self.release(&held).await;
                }
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

    /// Whether this node may act on what it holds: alone, always; in a cluster, while its
    /// metastore answered a whole pass within [`STALE_AFTER`] (else the others may have taken
    /// it over). Connector appends check it, so a node cut off or paused stops writing before
    /// anyone else claims its tasks.
    pub fn fresh(&self) -> bool {
        self.membership.is_none() || self.last_ok.lock().expect("lock").elapsed() < STALE_AFTER
    }

    /// Stops every local copy at once, as lost (the metastore has been silent too long).
    async fn stop_all_lost(&self) {
        let silent_ms = self.last_ok.lock().expect("lock").elapsed().as_millis() as u64;
        for kind in self.kinds() {
            for name in kind.running().into_keys() {
                tracing::warn!(resource = %format!("{}{name}", kind.prefix()), silent_ms,
                    "the metastore has not answered: stopping, others may hold this now");
                kind.stop(&name, Stop::Lost).await;
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
                kind.stop(&name, Stop::Moved).await;
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
        Ok(self.located(owners.get(name), placed.get(name)))
    }

    /// [`locate`](Self::locate) for lookups (LookupSubscription, LookupResource): answered
    /// from the last placement read, under [`LOOKUP_FRESH`] old, when it has `name` and names
    /// a node that serves now; read afresh otherwise. A client sent to a node that no longer
    /// holds the resource gets WrongServer from it, naming the holder.
    pub async fn lookup(&self, kind: &dyn Hosted, name: &str) -> ApiResult<Option<Location>> {
        let last = self.last_read.lock().expect("lock").get(kind.prefix()).cloned();
        if let Some(read) = last.filter(|r| r.at.elapsed() < LOOKUP_FRESH && r.stored.contains(name))
            && let Some(at) = self.located(read.owners.get(name), read.placed.get(name))
        {
            return Ok(Some(at));
        }
        self.locate(kind, name).await
    }

    /// The holder when it serves, else the node placed; `None` when that one does not serve.
    fn located(&self, owner: Option<&Ownership>, placed: Option<&NodeId>) -> Option<Location> {
        let serving = self.serving();
        let node = owner
            .and_then(|o| o.owner)
            .filter(|h| serving.contains_key(h))
            .or_else(|| placed.copied())?;
        serving.get(&node).map(|(host, port)| Location {
            node,
            host: host.clone(),
            port: *port,
        })
    }

    /// The serving member the ring gives `resource`, for what is served by any node but best
    /// by one (appends to a shard, a shard reader's position): no claim, no fencing, the
    /// same answer on every node with the same view.
    pub fn spread(&self, resource: &str) -> Location {
        let serving = self.serving();
        let members: BTreeSet<NodeId> = serving.keys().copied().collect();
        let ring = {
            let mut kept = self.ring.lock().expect("lock");
            match &*kept {
                Some((m, ring)) if *m == members => ring.clone(),
                _ => {
                    let ring = Arc::new(placement::Ring::new(&members));
                    *kept = Some((members, ring.clone()));
                    ring
                }
            }
        };
        let node = ring.owner(resource).unwrap_or(self.me);
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
            Ok(Some(l)) if l.node == self.me => {
                // It belongs here but did not start: say why, not "go here".
                let resource = format!("{}{name}", kind.prefix());
                let why = self
                    .failed
                    .lock()
                    .expect("lock")
                    .get(&resource)
                    .map(|f| f.error.clone());
                return ApiError::NotRunning(match why {
                    Some(e) => format!("{what} could not start on this node: {e}"),
                    None => format!("{what} is starting on this node; try again"),
                });
            }
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
        // A node that just started claims nothing before it settled: wait that out.
        while !self.settled() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.place_now().await?;
        Ok(kind.running().contains_key(name))
    }

    /// Takes `name` of `kind` from whoever holds it, so that nothing it runs can commit any
    /// more (after deleting it on another node's behalf: that node's placer then stops its
    /// copy as deleted); the caller releases what it got.
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

/// A resource that failed to start here.
struct Failed {
    retry_at: Instant,
    /// Failures in a row, minus one.
    streak: u32,
    error: String,
}

/// `host:port` into its parts (port 0 when absent).
fn split_address(address: &str) -> (String, u32) {
    match address.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), port.parse().unwrap_or(0)),
        None => (address.to_owned(), 0),
    }
}
