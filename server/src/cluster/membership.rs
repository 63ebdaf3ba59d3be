//! Who is in the cluster: SWIM gossip (the `foca` crate) over UDP on the gossip port, as
//! HStreamDB's servers do since they left ZooKeeper.
//!
//! Guarantees:
//! - A node knows itself from the start, and every node reachable from a seed (directly or
//!   through others) within a few probe periods; it keeps asking every seed that is not an
//!   active member (names resolved again each time), so nodes may start in any order and a
//!   restarted seed is back at once.
//! - A member that stops answering is `Suspect` after a failed probe and `Dead` once the
//!   suspicion times out ([`SUSPECT_TO_DEAD`]); a member that stops with SIGTERM says so
//!   first and is `Left` at once.
//! - A restarted node (a new `boot`) replaces its earlier self wherever it is known, and a node
//!   declared dead while alive (a pause, a partition) rejoins under a new `boot`.
//! - Membership is an opinion, not a decision: it only says which nodes *seem* alive. Who owns
//!   what is decided in the metastore under owner epochs (fencing), never from this view alone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use foca::{AccumulatingRuntime, Config, Foca, OwnedNotification, PostcardCodec, Timer};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::placement::NodeId;

/// How long a suspected member has to refute the suspicion before it is declared dead.
pub const SUSPECT_TO_DEAD: Duration = Duration::from_secs(3);
/// How often a node asks the seeds that are not active members (again).
const RESEED: Duration = Duration::from_secs(2);
/// How long dead and departed members stay in the view.
const FORGET_AFTER: Duration = Duration::from_secs(120);
/// Largest datagram sent (fits an Ethernet MTU).
const MAX_PACKET: std::num::NonZeroUsize = std::num::NonZeroUsize::new(1400).unwrap();
/// The cluster size foca tunes its dissemination for (three nodes, as the clusters).
const CLUSTER_SIZE: std::num::NonZeroU32 = std::num::NonZeroU32::new(3).unwrap();

/// A member as gossiped: its server id, where its gossip and its clients reach it, and when
/// this process started (so a restart is a new identity that wins over the old one).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub gossip: SocketAddr,
    /// Host and port of its gRPC service, as clients should dial them.
    pub host: String,
    pub port: u32,
    /// Process start in unix ms; 0 only for a seed not yet heard from.
    pub boot: u64,
    /// Set by a node leaving on purpose, so others tell a departure from a death.
    pub leaving: bool,
}

impl foca::Identity for Node {
    /// A member is its gossip address: two identities there are one member, the later winning.
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Node {
            boot: self.boot + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    fn win_addr_conflict(&self, other: &Self) -> bool {
        (self.boot, self.leaving) > (other.boot, other.leaving)
    }
}

/// What this node thinks of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Alive,
    Suspect,
    Dead,
    Left,
}

/// The membership as this node sees it, itself included, by gossip address.
pub type View = BTreeMap<SocketAddr, (Node, State)>;

/// The running gossip: its view, updated as it changes, and its task.
pub struct Membership {
    view: watch::Receiver<View>,
    me: Node,
    /// The gossip task (tests abort it to play a crash).
    #[cfg_attr(not(test), allow(dead_code))]
    task: tokio::task::JoinHandle<()>,
}

impl Membership {
    /// Binds `bind` (UDP) and runs the gossip until `shutdown`, then leaves (telling the
    /// members it knows). `seeds` are gossip addresses (`host:port`) of nodes to join through
    /// (any may be down, not resolve yet, or be this node). A gossip port of 0 in `me`
    /// becomes the port bound.
    pub async fn start(
        mut me: Node,
        bind: SocketAddr,
        seeds: Vec<String>,
        shutdown: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> std::io::Result<Membership> {
        let socket = UdpSocket::bind(bind).await?;
        if me.gossip.port() == 0 {
            me.gossip.set_port(socket.local_addr()?.port());
        }
        let mut config = Config::new_lan(CLUSTER_SIZE);
        config.suspect_to_down_after = SUSPECT_TO_DEAD;
        config.remove_down_after = Some(FORGET_AFTER);
        config.max_packet_size = MAX_PACKET;
        let foca = Foca::new(
            me.clone(),
            config,
            rand::make_rng::<rand::rngs::StdRng>(),
            PostcardCodec,
        );
        let (tx, view) = watch::channel(View::new());
        let task = tasks.spawn(run(foca, socket, seeds, tx, shutdown));
        Ok(Membership { view, me, task })
    }

    /// Stops the gossip without a word, as a crash would (tests).
    #[cfg(test)]
    fn crash(&self) {
        self.task.abort();
    }

    /// This node.
    pub fn me(&self) -> &Node {
        &self.me
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// The view, to wait for changes.
    pub fn watch(&self) -> watch::Receiver<View> {
        self.view.clone()
    }
}

type Gossip = Foca<Node, PostcardCodec, rand::rngs::StdRng, foca::NoCustomBroadcast>;

/// A seed known only by its address: announcing to it gets its real identity back.
fn seed(addr: SocketAddr) -> Node {
    Node {
        id: 0,
        gossip: addr,
        host: String::new(),
        port: 0,
        boot: 0,
        leaving: false,
    }
}

async fn run(
    mut foca: Gossip,
    socket: UdpSocket,
    seeds: Vec<String>,
    view: watch::Sender<View>,
    shutdown: CancellationToken,
) {
    let mut rt = AccumulatingRuntime::new();
    // Timers foca asked for, by due time (a sequence number keeps equal times apart).
    let mut timers: BTreeMap<(tokio::time::Instant, u64), Timer<Node>> = BTreeMap::new();
    let mut seq = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut reseed = tokio::time::interval(RESEED);
    publish(&foca, &view);
    loop {
        let next = timers
            .keys()
            .next()
            .map(|(at, _)| *at)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        let result = tokio::select! {
            _ = shutdown.cancelled() => {
                leave(&mut foca, &socket, &mut rt).await;
                return;
            }
            got = socket.recv_from(&mut buf) => match got {
                Ok((n, _)) => foca.handle_data(&buf[..n], &mut rt),
                Err(e) => {
                    tracing::debug!(error = %e, "gossip receive failed");
                    Ok(())
                }
            },
            _ = tokio::time::sleep_until(next) => {
                let now = tokio::time::Instant::now();
                let mut result = Ok(());
                while let Some(entry) = timers.first_entry() && entry.key().0 <= now {
                    result = result.and(foca.handle_timer(entry.remove(), &mut rt));
                }
                result
            }
            _ = reseed.tick() => {
                // The seeds not among the active members: started after us, restarted, or
                // not resolvable before.
                let active: std::collections::HashSet<SocketAddr> =
                    foca.iter_members().map(|m| m.id().gossip).collect();
                let family = socket.local_addr().map(|a| a.is_ipv4()).unwrap_or(true);
                let mut result = Ok(());
                for name in &seeds {
                    let Some(addr) = resolve(name, family).await else { continue };
                    if addr != foca.identity().gossip && !active.contains(&addr) {
                        result = result.and(foca.announce(seed(addr), &mut rt));
                    }
                }
                result
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "gossip message refused");
        }
        drain(&mut rt, &socket, &mut timers, &mut seq, foca.identity()).await;
        publish(&foca, &view);
    }
}

/// The first address `name` (`host:port`) resolves to in the socket's family (IPv4 or not),
/// `None` while it does not resolve.
async fn resolve(name: &str, ipv4: bool) -> Option<SocketAddr> {
    match tokio::net::lookup_host(name).await {
        Ok(addrs) => addrs.into_iter().find(|a| a.is_ipv4() == ipv4),
        Err(e) => {
            tracing::debug!(seed = name, error = %e, "seed does not resolve (yet)");
            None
        }
    }
}

/// Sends what foca asked to send, schedules its timers, logs its notifications.
async fn drain(
    rt: &mut AccumulatingRuntime<Node>,
    socket: &UdpSocket,
    timers: &mut BTreeMap<(tokio::time::Instant, u64), Timer<Node>>,
    seq: &mut u64,
    me: &Node,
) {
    while let Some((to, data)) = rt.to_send() {
        // Lost datagrams are SWIM's normal weather: a failed send is a missed probe.
        let _ = socket.send_to(&data, to.gossip).await;
    }
    let now = tokio::time::Instant::now();
    while let Some((after, timer)) = rt.to_schedule() {
        *seq += 1;
        timers.insert((now + after, *seq), timer);
    }
    while let Some(n) = rt.to_notify() {
        match n {
            OwnedNotification::MemberUp(m) if m.id == me.id => tracing::error!(
                node = m.id,
                gossip = %m.gossip,
                "another cluster member has this node's --server-id: give every node its own"
            ),
            OwnedNotification::MemberUp(m) => tracing::info!(node = m.id, gossip = %m.gossip, "cluster member up"),
            OwnedNotification::MemberDown(m) if m.leaving => {
                tracing::info!(node = m.id, gossip = %m.gossip, "cluster member left")
            }
            OwnedNotification::MemberDown(m) => tracing::warn!(node = m.id, gossip = %m.gossip, "cluster member dead"),
            OwnedNotification::Rejoin(m) => {
                tracing::warn!(node = m.id, boot = m.boot, "declared dead while alive: rejoined")
            }
            other => tracing::debug!(notification = ?other, "gossip"),
        }
    }
}

/// Says goodbye: marks this identity as leaving (the others learn it replaces the old one),
/// then leaves, and sends it all before returning.
async fn leave(foca: &mut Gossip, socket: &UdpSocket, rt: &mut AccumulatingRuntime<Node>) {
    let leaving = Node {
        leaving: true,
        ..foca.identity().clone()
    };
    let _ = foca.change_identity(leaving, &mut *rt);
    let _ = foca.leave_cluster(&mut *rt);
    while let Some((to, data)) = rt.to_send() {
        let _ = socket.send_to(&data, to.gossip).await;
    }
}

/// Publishes the view: every member foca knows (seeds not yet heard from left out), and this
/// node as alive.
fn publish(foca: &Gossip, view: &watch::Sender<View>) {
    let mut next = View::new();
    for m in foca.iter_membership_state() {
        let node = m.id();
        if node.boot == 0 {
            continue;
        }
        let state = match m.state() {
            foca::State::Alive => State::Alive,
            foca::State::Suspect => State::Suspect,
            foca::State::Down if node.leaving => State::Left,
            foca::State::Down => State::Dead,
        };
        next.insert(node.gossip, (node.clone(), state));
    }
    let me = foca.identity();
    next.insert(me.gossip, (me.clone(), State::Alive));
    view.send_if_modified(|v| {
        if *v == next {
            false
        } else {
            *v = next;
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId, gossip: SocketAddr) -> Node {
        Node {
            id,
            gossip,
            host: "127.0.0.1".into(),
            port: 7000 + id,
            boot: 1_000 + u64::from(id),
            leaving: false,
        }
    }

    /// A free UDP port on loopback.
    fn free_udp() -> SocketAddr {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
    }

    async fn until(m: &Membership, what: &str, pred: impl Fn(&View) -> bool) {
        let mut w = m.watch();
        tokio::time::timeout(Duration::from_secs(20), w.wait_for(|v| pred(v)))
            .await
            .unwrap_or_else(|_| panic!("node {}: {what}; view {:?}", m.me().id, m.view()))
            .unwrap();
    }

    fn states(v: &View) -> BTreeMap<NodeId, State> {
        v.values().map(|(n, s)| (n.id, *s)).collect()
    }

    /// Three nodes joined through one seed (the third starting before the seed exists) see
    /// each other alive; one stopping on purpose is Left to the others, one whose gossip
    /// dies is Suspect then Dead; a restarted node (a new boot on the same address) is alive
    /// again in place of its old self.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_join_leave_die_and_return() {
        let tasks = tokio_util::task::TaskTracker::new();
        let addrs = [free_udp(), free_udp(), free_udp()];
        let stops: Vec<CancellationToken> = (0..3).map(|_| CancellationToken::new()).collect();
        let seeds = vec![addrs[0].to_string()];
        // Node 3 first: its seed is not there yet.
        let three = Membership::start(node(3, addrs[2]), addrs[2], seeds.clone(), stops[2].clone(), &tasks)
            .await
            .unwrap();
        let one = Membership::start(node(1, addrs[0]), addrs[0], seeds.clone(), stops[0].clone(), &tasks)
            .await
            .unwrap();
        let two = Membership::start(node(2, addrs[1]), addrs[1], seeds.clone(), stops[1].clone(), &tasks)
            .await
            .unwrap();
        let all_alive =
            |v: &View| states(v) == BTreeMap::from([(1, State::Alive), (2, State::Alive), (3, State::Alive)]);
        for m in [&one, &two, &three] {
            until(m, "all three alive", all_alive).await;
        }
        assert_eq!(one.view()[&addrs[1]].0.port, 7002);

        // Node 2 leaves on purpose.
        stops[1].cancel();
        for m in [&one, &three] {
            until(m, "node 2 left", |v| states(v).get(&2) == Some(&State::Left)).await;
        }

        // Node 3's gossip dies without a word, as in a crash.
        three.crash();
        let died = std::time::Instant::now();
        until(&one, "node 3 dead", |v| states(v).get(&3) == Some(&State::Dead)).await;
        let took = died.elapsed();
        assert!(took < Duration::from_secs(15), "declared dead after {took:?}");

        // Node 3 again on the same address, a new process.
        let again = CancellationToken::new();
        let mut back = node(3, addrs[2]);
        back.boot += 100;
        let three = Membership::start(back, addrs[2], seeds.clone(), again.clone(), &tasks)
            .await
            .unwrap();
        until(&one, "node 3 back", |v| states(v).get(&3) == Some(&State::Alive)).await;
        until(&three, "node 1 seen", |v| states(v).get(&1) == Some(&State::Alive)).await;

        // The seed itself crashes and restarts: it has no one to ask (it is its own seed), so
        // the others' asking their seeds again brings it back, well before a down member is
        // announced to at random (every 65 s).
        one.crash();
        until(&three, "node 1 dead", |v| states(v).get(&1) == Some(&State::Dead)).await;
        let mut seed_back = node(1, addrs[0]);
        seed_back.boot += 100;
        let stop_one = CancellationToken::new();
        let one = Membership::start(seed_back, addrs[0], seeds, stop_one.clone(), &tasks)
            .await
            .unwrap();
        until(&one, "the restarted seed sees node 3", |v| {
            states(v).get(&3) == Some(&State::Alive)
        })
        .await;
        until(&three, "node 3 sees the seed back", |v| {
            states(v).get(&1) == Some(&State::Alive)
        })
        .await;
        println!("a silent member was declared dead after {took:?}");
        stop_one.cancel();
        again.cancel();
        tasks.close();
        tasks.wait().await;
    }
}
