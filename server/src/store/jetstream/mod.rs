//! The store on NATS JetStream (`--store nats://host1:4222,host2:4222[/prefix]`): shards kept in
//! a replicated log engine every node shares, so any node can serve any stream and losing a
//! machine loses nothing. We write no replication of our own; JetStream's Raft does it.
//!
//! Mapping (decision 024):
//! - one JetStream stream per shard, `<prefix>_<shard id>`, bound to the one subject
//!   `<prefix>.s.<shard id>`: JetStream's dense per-stream sequence *is* the shard's LSN, a
//!   purge up to a sequence is a trim, the replica count is the stream's replication factor;
//! - one message per appended batch, the payload as the client encoded it, with headers for the
//!   record count (`Hs-Records`) and compression (`Hs-Compression`) and a `Nats-Msg-Id` unique
//!   to the append, so a publish retried after a lost acknowledgement is stored once (within
//!   JetStream's duplicate window);
//! - a batch's timestamp is the time JetStream stored it (the stream leader's clock), as reads
//!   and seeks see it; the `timestamp_ms` an append returns is the appending node's clock
//!   (informational: nothing relies on it);
//! - reads go to the stream's leader (a replica may be behind), and a batch found missing means
//!   a purge: the shard's start is refreshed from the leader (another node's trim, the age
//!   limit);
//! - tails: after each acknowledged append the appending node announces the new LSN on the
//!   core-NATS subject `<prefix>.t.<shard id>` (not stored); every node listens on
//!   `<prefix>.t.*`, so readers anywhere wake without polling. An announcement is not stored:
//!   one lost (a reconnect, the appender dying between its ack and its announcement) would
//!   leave other nodes' readers behind until the shard's next append, so the shards some
//!   reader on this node waits on ask their stream's leader for its last sequence: every
//!   [`REFRESH`] while they move, backing off to [`MAX_REFRESH`] while they are idle (shards
//!   nobody reads are never asked); where a client asks for LATEST the shard asks at once
//!   (`Shard::sync_tail`).
//!
//! Guarantees (the store contract, `../contract.rs`, run against a real nats-server): an append
//! resolves once JetStream acknowledged it, which means a majority of the stream's replicas
//! hold it; how soon that reaches a disk is JetStream's `sync_interval` (lazy before
//! nats-server 2.10: see the README's durability section).

mod shard;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;

use super::api::{Shard, Store};
use super::{Appended, StoreError, now_ms};
use shard::JsShard;

/// Header holding a batch's record count.
const RECORDS: &str = "Hs-Records";
/// Header holding a batch's compression code.
const COMPRESSION: &str = "Hs-Compression";
/// How long JetStream remembers message ids for deduplication.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Largest batch the store accepts beside the headers (JetStream's `max_payload` must allow
/// it, checked at connect).
const HEADROOM: usize = 1024;

/// How to reach NATS beyond its URI.
#[derive(Clone, Default)]
pub struct NatsOptions {
    /// Connect and request timeout (default 10 s).
    pub timeout: Option<Duration>,
    /// PEM file of the CA that signed the servers' certificates: TLS required.
    pub ca_file: Option<std::path::PathBuf>,
    pub user: Option<String>,
    pub password: Option<crate::secret::Secret>,
    pub token: Option<crate::secret::Secret>,
    /// The largest appended batch to expect (`max-record-size`): the servers' `max_payload`
    /// must hold it.
    pub max_batch_bytes: usize,
    /// The fewest replicas every stream must get (`--min-replication-factor`): above one, a
    /// single NATS server (which keeps one copy) is refused at connect.
    pub min_replicas: u32,
}

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsOptions")
            .field("timeout", &self.timeout)
            .field("ca_file", &self.ca_file)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("token", &self.token)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("min_replicas", &self.min_replicas)
            .finish()
    }
}

/// `nats://host:port,host:port[/prefix]` → (server addresses, prefix).
pub fn parse_uri(uri: &str) -> Result<(Vec<String>, String), String> {
    let rest = uri
        .strip_prefix("nats://")
        .ok_or_else(|| format!("{uri:?}: a JetStream store URI starts with nats://"))?;
    let (hosts, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i + 1..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if hosts.contains('@') {
        // Never echoed: what precedes '@' may be a password.
        return Err("a JetStream store URI cannot carry credentials: give --store-user and \
                    --store-password-file (or HSTREAM_STORE_PASSWORD), or a token"
            .into());
    }
    let prefix = if prefix.is_empty() { "HSTREAM" } else { prefix };
    if !prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "{uri:?}: the prefix may hold only letters, digits, '_' and '-' (it names JetStream streams)"
        ));
    }
    let servers: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("nats://{h}"))
        .collect();
    if servers.is_empty() {
        return Err(format!("{uri:?}: name at least one NATS host:port"));
    }
    Ok((servers, prefix.to_owned()))
}

pub struct JetStreamStore {
    me: std::sync::Weak<JetStreamStore>,
    /// The URI as given (it holds no credentials), for messages.
    uri: String,
    client: async_nats::Client,
    js: jetstream::Context,
    /// The contexts appends go through (a shorter acknowledgement timeout), each on its own
    /// connection; a shard's appends always take the same one, so they keep their order.
    publishers: Vec<jetstream::Context>,
    prefix: String,
    /// How long an append may wait for JetStream's acknowledgement, resends included.
    timeout: Duration,
    shards: RwLock<HashMap<u64, Arc<JsShard>>>,
    /// The task that turns tail announcements into visible LSNs.
    tails: tokio::task::JoinHandle<()>,
    /// The task that asks where watched shards end, every [`REFRESH`].
    refresher: tokio::task::JoinHandle<()>,
    metrics: JsMetrics,
}

/// The store's own counters (`hstream_jetstream_*` in `server/metrics.txt`).
#[derive(Default)]
struct JsMetrics {
    /// Publishes sent again (same message id): no acknowledgement in time, or no leader.
    resends: Counter,
    /// Appends that failed (JetStream unreachable past the timeout, a stream gone, a refusal).
    failures: Counter,
    /// Refreshes that found a watched shard longer than its announcements had said.
    refresh_advances: Counter,
}

/// `hstream_jetstream_connected`: 1 while every connection to NATS is up.
#[derive(Debug)]
struct Connected(Vec<async_nats::Client>);

impl prometheus_client::collector::Collector for Connected {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let up = self
            .0
            .iter()
            .all(|c| c.connection_state() == async_nats::connection::State::Connected);
        let gauge = prometheus_client::metrics::gauge::ConstGauge::new(i64::from(up));
        let metric = encoder.encode_descriptor(
            "hstream_jetstream_connected",
            "1 while every connection of this node to NATS is up, else 0",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// Connections appends are spread over (by shard): a NATS server reads each connection on
/// one goroutine, so one connection caps a node's appends at one core of the server's.
const PUBLISH_CONNECTIONS: usize = 4;

/// How often shards with a waiting reader ask their stream's leader where the stream ends,
/// behind the tail announcements (which may be lost), while they move.
pub const REFRESH: Duration = Duration::from_secs(1);
/// The longest wait between refreshes of a shard whose refreshes find nothing new.
pub const MAX_REFRESH: Duration = Duration::from_secs(16);

impl Drop for JetStreamStore {
    fn drop(&mut self) {
        self.tails.abort();
        self.refresher.abort();
    }
}

/// Whether a stream lookup failed because the stream does not exist.
fn not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// How long ago a time of `unix_nanos` was (zero for a time in the future).
fn time_since(unix_nanos: i128) -> Duration {
    let now_ns = now_ms() as i128 * 1_000_000;
    Duration::from_nanos((now_ns - unix_nanos).max(0) as u64)
}

fn failed(what: impl std::fmt::Display, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{what}: {e}"))
}

fn down(what: impl std::fmt::Display, e: impl std::fmt::Display) -> StoreError {
    StoreError::Down(format!("{what}: {e}"))
}

impl JetStreamStore {
    /// Publishes one batch to `shard`'s stream and waits for JetStream's acknowledgement. A
    /// publish whose acknowledgement was lost is sent again with the same message id (JetStream
    /// stores it once); "no responders" (a stream between leaders) is asked again until the
    /// stream is known gone; both within the store's timeout.
    async fn publish(
        &self,
        shard: u64,
        headers: async_nats::HeaderMap,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck, StoreError> {
        let subject = self.subject(shard);
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            let sent = self.publishers[shard as usize % self.publishers.len()]
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await;
            let acked = match sent {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match acked {
                Ok(ack) => return Ok(ack),
                // Nobody answered for the stream: deleted, or between leaders (a server lost).
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
                    if self.stream_gone(shard).await {
                        return Err(StoreError::Unavailable {
                            shard,
                            reason: format!("its JetStream stream {} is gone", self.stream_name(shard)),
                        });
                    }
                    if std::time::Instant::now() >= deadline {
                        return Err(down(format!("appending to shard {shard}"), e));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    self.metrics.resends.inc();
                }
                Err(e)
                    if e.kind() == jetstream::context::PublishErrorKind::TimedOut
                        && std::time::Instant::now() < deadline =>
                {
                    tracing::debug!(shard, error = %e, "append not acknowledged in time: sending again");
                    self.metrics.resends.inc();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        jetstream::context::PublishErrorKind::TimedOut
                            | jetstream::context::PublishErrorKind::BrokenPipe
                    ) =>
                {
                    return Err(down(format!("appending to shard {shard}"), e));
                }
                Err(e) => return Err(failed(format!("appending to shard {shard}"), e)),
            }
        }
    }

    /// Connects to the NATS servers `uri` names and opens every shard stored under its prefix.
    /// Fails at once (naming the servers) when none answers, when JetStream is not enabled, or
    /// when the servers' `max_payload` cannot hold a batch of `opts.max_batch_bytes`.
    pub async fn connect(uri: &str, opts: &NatsOptions) -> Result<Arc<Self>, StoreError> {
        let (servers, prefix) = parse_uri(uri).map_err(StoreError::Backend)?;
        let timeout = opts.timeout.unwrap_or(Duration::from_secs(10));
        let options = || -> Result<async_nats::ConnectOptions, StoreError> {
            let mut connect = async_nats::ConnectOptions::new()
                .name("hstream-server")
                .connection_timeout(timeout)
                .request_timeout(Some(timeout));
            if let Some(ca) = &opts.ca_file {
                connect = connect.add_root_certificates(ca.clone()).require_tls(true);
            }
            match (&opts.user, &opts.password, &opts.token) {
                (Some(user), Some(password), None) => {
                    connect = connect.user_and_password(user.clone(), password.0.clone());
                }
                (None, None, Some(token)) => connect = connect.token(token.0.clone()),
                (None, None, None) => {}
                _ => {
                    return Err(StoreError::Backend(
                        "NATS credentials: give a user with a password, or a token, not both".into(),
                    ));
                }
            }
            Ok(connect)
        };
        let addrs: Vec<async_nats::ServerAddr> = servers
            .iter()
            .map(|s| s.parse().map_err(|e| failed(format!("NATS server {s:?}"), e)))
            .collect::<Result<_, _>>()?;
        let hosts = servers.join(",");
        let client = options()?
            .connect(addrs.clone())
            .await
            .map_err(|e| down(format!("connecting to NATS at {hosts}"), e))?;
        if opts.min_replicas > 1 && client.server_info().cluster.is_none() {
            return Err(StoreError::Backend(format!(
                "--min-replication-factor {} needs a NATS cluster, but {hosts} is one server (it keeps \
                 one copy of each stream)",
                opts.min_replicas
            )));
        }
        let max_payload = client.server_info().max_payload;
        if max_payload < opts.max_batch_bytes + HEADROOM {
            return Err(StoreError::Backend(format!(
                "NATS at {hosts} takes messages of at most {max_payload} bytes (its max_payload), but a \
                 batch may be {} bytes (max-record-size): raise max_payload in the NATS servers' \
                 configuration or lower max-record-size",
                opts.max_batch_bytes
            )));
        }
        let mut js = jetstream::new(client.clone());
        js.set_timeout(timeout);
        // Appends wait a quarter of the timeout for each acknowledgement, so an ack lost to a
        // leader change is resent (same message id) within the timeout.
        let mut publishers = Vec::with_capacity(PUBLISH_CONNECTIONS);
        for i in 0..PUBLISH_CONNECTIONS {
            let conn = if i == 0 {
                client.clone()
            } else {
                options()?
                    .connect(addrs.clone())
                    .await
                    .map_err(|e| down(format!("connecting to NATS at {hosts}"), e))?
            };
            let mut publisher = jetstream::new(conn);
            publisher.set_timeout(timeout / 4);
            publishers.push(publisher);
        }
        let tails = client
            .subscribe(format!("{prefix}.t.*"))
            .await
            .map_err(|e| failed("listening for tails", e))?;
        let store = Arc::new_cyclic(|weak: &std::sync::Weak<JetStreamStore>| {
            let me = weak.clone();
            JetStreamStore {
                tails: tokio::spawn(follow_tails(me.clone(), tails)),
                refresher: tokio::spawn(refresh_watched(me.clone())),
                metrics: JsMetrics::default(),
                me,
                uri: uri.to_owned(),
                client,
                js,
                publishers,
                prefix,
                timeout,
                shards: RwLock::new(HashMap::new()),
            }
        });
        store
            .open_all()
            .await
            .map_err(|e| StoreError::Backend(format!("JetStream at {hosts} (is it enabled, -js?): {e}")))?;
        Ok(store)
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub(super) fn self_arc(&self) -> Arc<dyn Store> {
        let me: Arc<dyn Store> = self.me.upgrade().expect("the store is alive while used");
        me
    }

    /// Sends what is buffered (shutdown).
    pub async fn flush(&self) {
        if let Err(e) = self.client.flush().await {
            tracing::warn!(error = %e, "flushing the NATS connection failed");
        }
    }

    /// A handle for a listed shard whose stream is missing: every call answers `Unavailable`.
    pub fn missing_shard(&self, id: u64) -> Arc<dyn Shard> {
        Arc::new(shard::Missing {
            id,
            stream: self.stream_name(id),
        })
    }

    fn marker_name(&self) -> String {
        format!("{}_CLUSTER", self.prefix)
    }

    /// The cluster this store is tied to: the one message of `<prefix>_CLUSTER`.
    /// Asked again while JetStream cannot answer (a leader being elected), for up to three
    /// timeouts.
    pub async fn cluster_id(&self) -> Result<Option<String>, StoreError> {
        let deadline = std::time::Instant::now() + 3 * self.timeout;
        loop {
            let err = match self.publishers[0].get_stream(self.marker_name()).await {
                Ok(stream) => match stream.direct_get(1).await {
                    Ok(msg) => return Ok(Some(String::from_utf8_lossy(&msg.payload).into_owned())),
                    Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => return Ok(None),
                    Err(e) => e.to_string(),
                },
                Err(e) if not_found(&e) => return Ok(None),
                Err(e) => e.to_string(),
            };
            if std::time::Instant::now() >= deadline {
                return Err(down("reading the store's cluster id", err));
            }
            tracing::debug!(error = %err, "JetStream cannot give the cluster id yet");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ties the store to cluster `id`: the first message of `<prefix>_CLUSTER`, written only
    /// where there is none (expected last sequence 0), so of two racing nodes one wins.
    pub async fn set_cluster_id(&self, id: &str) -> Result<(), StoreError> {
        let subject = format!("{}.cluster", self.prefix);
        // Three copies where NATS is a cluster (the marker must outlive any one server), one
        // on a single server.
        let config = |replicas: usize| stream::Config {
            name: self.marker_name(),
            subjects: vec![subject.clone()],
            allow_direct: true,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        match self.js.create_stream(config(3)).await {
            Ok(_) => {}
            // There already (made with other settings by an earlier start).
            Err(e)
                if matches!(e.kind(), jetstream::context::CreateStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST) => {}
            Err(e)
                if matches!(e.kind(), jetstream::context::CreateStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED) =>
            {
                self.js
                    .create_stream(config(1))
                    .await
                    .map_err(|e| failed("creating the store's cluster marker", e))?;
            }
            Err(e) => return Err(failed("creating the store's cluster marker", e)),
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_SEQUENCE, "0");
        let acked = match self
            .js
            .publish_with_headers(subject, headers, id.to_owned().into())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                match self.cluster_id().await? {
                    Some(current) if current == id => Ok(()),
                    current => Err(StoreError::Backend(format!(
                        "JetStream store {} belongs to cluster {}, not {id}",
                        self.uri,
                        current.unwrap_or_default()
                    ))),
                }
            }
            Err(e) => Err(down("writing the store's cluster id", e)),
        }
    }

    /// Whether shard `id`'s stream was created long enough ago that no node can still be
    /// creating its stream (10 minutes).
    pub async fn created_long_ago(&self, id: u64) -> bool {
        match self.js.get_stream(self.stream_name(id)).await {
            Ok(s) => {
                let age = time_since(s.cached_info().created.unix_timestamp_nanos());
                age > Duration::from_secs(600)
            }
            Err(_) => false,
        }
    }

    fn stream_name(&self, id: u64) -> String {
        format!("{}_{id}", self.prefix)
    }

    fn subject(&self, id: u64) -> String {
        format!("{}.s.{id}", self.prefix)
    }

    /// Opens every shard stream under the prefix.
    async fn open_all(&self) -> Result<(), StoreError> {
        let head = format!("{}_", self.prefix);
        // Asked again while JetStream cannot answer (its meta leader being elected after a
        // server was lost), for up to three timeouts.
        let deadline = std::time::Instant::now() + 3 * self.timeout;
        let ids = 'listing: loop {
            let mut names = self.publishers[0].stream_names();
            let mut ids = Vec::new();
            while let Some(name) = names.next().await {
                match name {
                    Ok(name) => {
                        if let Some(id) = name.strip_prefix(&head).and_then(|i| i.parse::<u64>().ok()) {
                            ids.push(id);
                        }
                    }
                    Err(e) if std::time::Instant::now() < deadline => {
                        tracing::debug!(error = %e, "JetStream cannot list streams yet");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue 'listing;
                    }
                    Err(e) => return Err(down("listing JetStream streams", e)),
                }
            }
            break ids;
        };
        for id in ids {
            let stream = self.stream_info(id).await?;
            self.insert(id, stream).await?;
        }
        Ok(())
    }

    /// A shard's stream with its state, asked again while JetStream cannot answer (a stream
    /// between leaders), for up to three timeouts.
    async fn stream_info(&self, id: u64) -> Result<stream::Stream, StoreError> {
        let deadline = std::time::Instant::now() + 3 * self.timeout;
        loop {
            match self.publishers[0].get_stream(self.stream_name(id)).await {
                Ok(stream) => return Ok(stream),
                Err(e) if !not_found(&e) && std::time::Instant::now() < deadline => {
                    tracing::debug!(shard = id, error = %e, "JetStream cannot describe the shard's stream yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(down(format!("opening shard {id}"), e)),
            }
        }
    }

    /// Whether shard `id`'s stream is gone from JetStream (not merely between leaders).
    async fn stream_gone(&self, id: u64) -> bool {
        matches!(self.publishers[0].get_stream(self.stream_name(id)).await, Err(e) if not_found(&e))
    }

    /// The shard's one handle: a second opening of it (racing) gets the first.
    async fn insert(&self, id: u64, stream: stream::Stream) -> Result<Arc<JsShard>, StoreError> {
        let state = stream.cached_info().state.clone();
        // Reads go through the shard's publishing context: short requests, asked again on
        // timeout, spread over the connections as appends are.
        let reads = self.publishers[id as usize % self.publishers.len()]
            .get_stream_no_info(self.stream_name(id))
            .await
            .map_err(|e| failed(format!("opening shard {id}"), e))?;
        Ok(self
            .shards
            .write()
            .expect("lock")
            .entry(id)
            .or_insert_with(|| Arc::new(JsShard::new(id, reads, &state, self.timeout)))
            .clone())
    }

    /// Ids of the shards the store holds (for start-up reconciliation).
    pub fn shard_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.shards.read().expect("lock").keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Creates a shard's stream with `replicas` copies; `ShardExists` if it is there.
    async fn create_replicated(&self, id: u64, replicas: u32) -> Result<Arc<dyn Shard>, StoreError> {
        if self.shards.read().expect("lock").contains_key(&id) {
            return Err(StoreError::ShardExists(id));
        }
        let name = self.stream_name(id);
        match self.js.get_stream(&name).await {
            Ok(_) => return Err(StoreError::ShardExists(id)),
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(down(format!("looking up JetStream stream {name}"), e)),
        }
        let config = |replicas: u32| stream::Config {
            name: name.clone(),
            subjects: vec![self.subject(id)],
            num_replicas: replicas.max(1) as usize,
            storage: stream::StorageType::File,
            allow_direct: true,
            duplicate_window: DUPLICATE_WINDOW,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        };
        let stream = match self.js.create_stream(config(replicas)).await {
            Ok(stream) => stream,
            // A single NATS server keeps one copy, as the local store does; a cluster with too
            // few servers for the replicas is refused below, naming the cause.
            Err(e)
                if replicas > 1
                    && matches!(e.kind(), jetstream::context::CreateStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED) =>
            {
                tracing::info!(
                    shard = id,
                    replicas,
                    "NATS is one server, not a cluster: keeping one copy"
                );
                self.js
                    .create_stream(config(1))
                    .await
                    .map_err(|e| failed(format!("creating JetStream stream {name}"), e))?
            }
            Err(e) => {
                return Err(failed(
                    format!("creating JetStream stream {name} with {replicas} replica(s)"),
                    e,
                ));
            }
        };
        let shard: Arc<dyn Shard> = self.insert(id, stream).await?;
        Ok(shard)
    }
}

/// Applies the tail announcements of every node (`<prefix>.t.<id>`, payload the LSN in
/// decimal) to the shards this node has open, while the store lives.
async fn follow_tails(store: std::sync::Weak<JetStreamStore>, mut tails: async_nats::Subscriber) {
    while let Some(msg) = tails.next().await {
        let Some(store) = store.upgrade() else { return };
        let id = msg.subject.rsplit('.').next().and_then(|i| i.parse::<u64>().ok());
        let lsn = std::str::from_utf8(&msg.payload)
            .ok()
            .and_then(|l| l.parse::<u64>().ok());
        if let (Some(id), Some(lsn)) = (id, lsn)
            && let Some(shard) = store.shards.read().expect("lock").get(&id).cloned()
        {
            shard.advance(lsn);
        }
    }
}

/// Every [`REFRESH`], asks where the shards some reader on this node waits on end (behind the
/// tail announcements, which may be lost), while the store lives.
async fn refresh_watched(store: std::sync::Weak<JetStreamStore>) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { return };
        let now = std::time::Instant::now();
        let watched: Vec<Arc<JsShard>> = store
            .shards
            .read()
            .expect("lock")
            .values()
            .filter(|s| !s.is_deleted() && s.refresh_due(now))
            .cloned()
            .collect();
        let store = Arc::downgrade(&store);
        // A failure (JetStream unreachable, a stream between leaders) waits for the next
        // round; readers meet the outage on their own reads.
        let mut advanced = 0;
        for some in watched.chunks(64) {
            let results = futures::future::join_all(some.iter().map(|s| s.refresh_once())).await;
            for (shard, result) in some.iter().zip(results) {
                let moved = matches!(result, Ok(true));
                shard.refreshed(moved);
                advanced += u64::from(moved);
            }
        }
        if advanced > 0
            && let Some(store) = store.upgrade()
        {
            store.metrics.refresh_advances.inc_by(advanced);
        }
    }
}

#[async_trait]
impl Store for JetStreamStore {
    async fn create_shard(&self, id: u64, replicas: u32) -> Result<Arc<dyn Shard>, StoreError> {
        self.create_replicated(id, replicas).await
    }

    async fn delete_shard(&self, id: u64) -> Result<(), StoreError> {
        let shard = self.shards.write().expect("lock").remove(&id);
        if let Some(shard) = &shard {
            shard.mark_deleted();
        }
        match self.js.delete_stream(self.stream_name(id)).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("stream not found") => Ok(()),
            Err(e) => Err(failed(format!("deleting JetStream stream {}", self.stream_name(id)), e)),
        }
    }

    fn shard(&self, id: u64) -> Option<Arc<dyn Shard>> {
        let shard: Arc<dyn Shard> = self.shards.read().expect("lock").get(&id)?.clone();
        Some(shard)
    }

    async fn open_shard(&self, id: u64) -> Result<Option<Arc<dyn Shard>>, StoreError> {
        if let Some(s) = Store::shard(self, id) {
            return Ok(Some(s));
        }
        match self.js.get_stream(self.stream_name(id)).await {
            Ok(stream) => {
                let shard: Arc<dyn Shard> = self.insert(id, stream).await?;
                Ok(Some(shard))
            }
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(down(format!("opening shard {id}"), e)),
        }
    }

    async fn append(
        &self,
        shard: u64,
        payload: Bytes,
        batch_size: u32,
        compression: u8,
    ) -> Result<Appended, StoreError> {
        let Some(target) = self.shards.read().expect("lock").get(&shard).cloned() else {
            return Err(StoreError::ShardDeleted(shard));
        };
        if target.is_deleted() {
            return Err(StoreError::ShardDeleted(shard));
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(RECORDS, batch_size.to_string().as_str());
        headers.insert(COMPRESSION, compression.to_string().as_str());
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            uuid::Uuid::new_v4().to_string().as_str(),
        );
        let ack = match self.publish(shard, headers, payload).await {
            Ok(ack) => ack,
            Err(e) => {
                self.metrics.failures.inc();
                return Err(e);
            }
        };
        target.advance(ack.sequence);
        // Other nodes' readers learn of it from the announcement; losing one only delays them
        // until the next, or the refresh.
        let _ = self
            .client
            .publish(format!("{}.t.{shard}", self.prefix), ack.sequence.to_string().into())
            .await;
        Ok(Appended {
            lsn: ack.sequence,
            timestamp_ms: now_ms(),
        })
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "hstream_jetstream_append_resends",
            "Appends published again (same message id, stored once): no acknowledgement came in time, or the stream had no leader",
            self.metrics.resends.clone(),
        );
        registry.register(
            "hstream_jetstream_append_failures",
            "Appends that failed: JetStream unreachable past the timeout, a stream gone, a refusal",
            self.metrics.failures.clone(),
        );
        registry.register(
            "hstream_jetstream_refresh_advances",
            "Periodic refreshes that found a watched shard longer than its tail announcements said (late or lost)",
            self.metrics.refresh_advances.clone(),
        );
        let connections = self.publishers.iter().map(|p| p.client()).collect();
        registry.register_collector(Box::new(Connected(connections)));
    }
}
