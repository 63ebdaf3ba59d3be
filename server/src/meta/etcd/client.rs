//! The store's conversation with etcd: connecting, reads (single keys and paged, consistent
//! listings), transactions, error classification, and the read-modify-write helpers the
//! `MetaStore` calls share.

use std::time::{Duration, Instant};

use hstream_proto::etcd::auth_client::AuthClient;
use hstream_proto::etcd::kv_client::KvClient;
use hstream_proto::etcd::lease_client::LeaseClient;
use hstream_proto::etcd::request_op::Request as Op;
use hstream_proto::etcd::response_op::Response as OpResponse;
use hstream_proto::etcd::{
    Compare, DeleteRangeResponse, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, RangeRequest,
    RangeResponse, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};
use hstream_proto::mvccpb::KeyValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::super::*;
use super::auth::{Auth, TokenHeader};
use super::ops::*;
use super::records::*;
use super::{EtcdMetaStore, EtcdOptions, PAGE, PROGRESS_CHUNK, RETRIES, backend, contended, parse_uri};

/// HTTP/2 pings to etcd: how often, and how long an unanswered one may wait.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// One key of the shard ids in use (`shard-ids/<id / 64>`), as read.
pub(super) struct IdChunk {
    pub(super) chunk: u64,
    pub(super) key: Vec<u8>,
    pub(super) ids: std::collections::BTreeSet<u64>,
    pub(super) guard: Compare,
}

impl IdChunk {
    /// The write that leaves the chunk with its ids now (a delete when none is left).
    pub(super) fn write(&self) -> RequestOp {
        if self.ids.is_empty() {
            delete(self.key.clone())
        } else {
            put(self.key.clone(), json(&self.ids))
        }
    }
}

/// Guards and writes that take `ids` out of the chunks of shard ids in use.
pub(super) fn release_ids(chunks: &mut [IdChunk], ids: &[u64], guards: &mut Vec<Compare>, ops: &mut Vec<RequestOp>) {
    for c in chunks.iter_mut() {
        for id in ids {
            c.ids.remove(id);
        }
        guards.push(c.guard.clone());
        ops.push(c.write());
    }
}

/// TLS as `opts` ask for it: `None` without any TLS file; the CA is required with TLS.
fn tls_config(opts: &EtcdOptions) -> MetaResult<Option<ClientTlsConfig>> {
    if opts.ca_file.is_none() && opts.cert_file.is_none() && opts.key_file.is_none() {
        return Ok(None);
    }
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| MetaError::Invalid(format!("--{flag} {}: {e}", path.display())))
    };
    let ca = opts.ca_file.as_ref().ok_or_else(|| {
        MetaError::Invalid("TLS to etcd needs --metastore-ca-file, the CA that signed etcd's certificate".into())
    })?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("metastore-ca-file", ca)?));
    match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(
                read("metastore-cert-file", cert)?,
                read("metastore-key-file", key)?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(MetaError::Invalid(
                "--metastore-cert-file and --metastore-key-file go together".into(),
            ));
        }
    }
    Ok(Some(config))
}

/// How a request etcd could not serve failed, for deciding whether to send it again.
enum Failure {
    /// etcd never received it: no connection to the member, no leader to propose to.
    NotSent,
    /// etcd refused the auth token (simple tokens expire): authenticate again, then resend.
    Token,
    /// It may or may not have been applied (the connection broke, the leader changed or the
    /// request timed out meanwhile).
    Unknown,
    /// A real answer (refused, invalid, compacted): sending it again would not help.
    Final,
}

fn failure(s: &tonic::Status) -> Failure {
    use tonic::Code;
    let m = s.message();
    match s.code() {
        // A token that expired, or that predates a change of etcd's users and roles.
        Code::Unauthenticated | Code::InvalidArgument
            if m.contains("invalid auth token") || m.contains("revision of auth store is old") =>
        {
            Failure::Token
        }
        // A certificate etcd or we refused: no retry will change it.
        Code::Unavailable | Code::Unknown if m.contains("certificate") || m.contains("handshake") => Failure::Final,
        Code::Unavailable
            if m.contains("tcp connect")
                || m.contains("error trying to connect")
                || m.contains("Connection refused")
                || m.contains("no leader")
                || m.contains("not capable") =>
        {
            Failure::NotSent
        }
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Aborted
        | Code::Unknown
        | Code::ResourceExhausted => Failure::Unknown,
        _ => Failure::Final,
    }
}

/// The answer of a transaction found in effect after its answer was lost: succeeded, each
/// delete counted as having deleted one key.
fn took_effect_response(ops: &[RequestOp]) -> TxnResponse {
    let responses = ops
        .iter()
        .map(|op| ResponseOp {
            response: match op.request {
                Some(Op::RequestDeleteRange(_)) => Some(OpResponse::ResponseDeleteRange(DeleteRangeResponse {
                    deleted: 1,
                    ..Default::default()
                })),
                _ => None,
            },
        })
        .collect();
    TxnResponse {
        succeeded: true,
        responses,
        ..Default::default()
    }
}

impl EtcdMetaStore {
    /// Connects to the etcd cluster `uri` names, with TLS and a user as `opts` say, and
    /// authenticates; an unreachable etcd fails within the timeout, a refused certificate or
    /// password at once.
    pub async fn connect(uri: &str, opts: &EtcdOptions) -> MetaResult<Self> {
        let timeout = opts.timeout.unwrap_or(Duration::from_secs(10));
        let (endpoints, prefix) = parse_uri(uri).map_err(MetaError::Invalid)?;
        let tls = tls_config(opts)?;
        let endpoints = endpoints
            .iter()
            .map(|e| {
                let e = if tls.is_some() {
                    e.replacen("http://", "https://", 1)
                } else {
                    e.clone()
                };
                let endpoint = Endpoint::from_shared(e.clone())
                    .map(|e| {
                        // Pings find a connection that died without a word (a partition, a
                        // host gone): it is dropped and the next call reconnects, instead of
                        // every call timing out on it for as long as the kernel keeps it.
                        e.connect_timeout(timeout)
                            .timeout(timeout)
                            .tcp_nodelay(true)
                            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                            .keep_alive_while_idle(true)
                    })
                    .map_err(|err| MetaError::Invalid(format!("etcd endpoint {e:?}: {err}")))?;
                match &tls {
                    Some(tls) => endpoint.tls_config(tls.clone()).map_err(|err| {
                        MetaError::Invalid(format!(
                            "TLS to etcd (--metastore-ca-file, --metastore-cert-file, --metastore-key-file): {err}"
                        ))
                    }),
                    None => Ok(endpoint),
                }
            })
            .collect::<MetaResult<Vec<_>>>()?;
        let hosts = endpoints
            .iter()
            .map(|e| e.uri().authority().map_or(String::new(), |a| a.to_string()))
            .collect::<Vec<_>>()
            .join(",");
        let user = match (&opts.user, &opts.password) {
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(MetaError::Invalid(
                    "--metastore-user needs a password (--metastore-password-file or HSTREAM_METASTORE_PASSWORD)"
                        .into(),
                ));
            }
            (None, Some(_)) => return Err(MetaError::Invalid("a metastore password needs --metastore-user".into())),
        };
        let channel = Channel::balance_list(endpoints.into_iter());
        let token = TokenHeader::default();
        let store = EtcdMetaStore {
            kv: KvClient::with_interceptor(channel.clone(), token.clone()).max_decoding_message_size(usize::MAX),
            leases: LeaseClient::with_interceptor(channel.clone(), token.clone()),
            watches: hstream_proto::etcd::watch_client::WatchClient::with_interceptor(channel.clone(), token.clone())
                .max_decoding_message_size(usize::MAX),
            auth: std::sync::Arc::new(Auth {
                client: AuthClient::new(channel),
                user,
                token,
            }),
            prefix,
            hosts,
            timeout,
        };
        store.authenticate(Instant::now() + timeout).await?;
        // Reachable now, or a clear error now rather than at the first request.
        store.get(store.key("cluster-id")).await?;
        Ok(store)
    }

    /// Gets a token for the configured user (nothing without one), retrying what etcd did not
    /// receive until `deadline`; a refused password is `Invalid`, naming the user only.
    async fn authenticate(&self, deadline: Instant) -> MetaResult<()> {
        let mut pause = Duration::from_millis(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let err = match self.auth.authenticate(left.max(Duration::from_millis(1))).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if err.code() == tonic::Code::InvalidArgument || err.code() == tonic::Code::PermissionDenied {
                return Err(MetaError::Denied(format!(
                    "etcd at {} refused user {:?}: {}",
                    self.hosts,
                    self.auth.user().unwrap_or_default(),
                    err.message()
                )));
            }
            if !matches!(failure(&err), Failure::NotSent | Failure::Unknown) || Instant::now() + pause >= deadline {
                return Err(self.failed(err));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// etcd's answer as a MetaError: one that says etcd cannot serve now (unreachable, no
    /// leader, a timed-out request) is `Unavailable`, naming the endpoints.
    pub(super) fn failed(&self, s: tonic::Status) -> MetaError {
        use tonic::Code;
        let m = s.message();
        if matches!(s.code(), Code::Unavailable | Code::Unknown) && m.contains("certificate") {
            return MetaError::Denied(format!(
                "TLS with etcd at {} failed: {m} (check --metastore-ca-file, --metastore-cert-file and \
                 --metastore-key-file)",
                self.hosts
            ));
        }
        match s.code() {
            // Unknown: a request in flight when the connection broke (h2 I/O errors).
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::Unknown
            | Code::ResourceExhausted => MetaError::Unavailable(format!(
                "etcd at {} could not serve the request within {:?} (is a quorum of its members up?): {m}",
                self.hosts, self.timeout,
            )),
            Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument
                if m.contains("permission denied") || m.contains("user name") || m.contains("auth") =>
            {
                MetaError::Denied(format!(
                    "etcd at {} refused the request{}: {m}",
                    self.hosts,
                    self.auth.user().map(|u| format!(" for user {u:?}")).unwrap_or_default(),
                ))
            }
            _ => backend(s),
        }
    }

    /// Runs `call` until it succeeds, fails for good, or the call's time is up: a request etcd
    /// never received is sent again, and so is any other that etcd could not serve when
    /// `repeatable` (a read). Returns the last failure otherwise.
    async fn retrying<T, F, Fut>(&self, deadline: Instant, repeatable: bool, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut pause = Duration::from_millis(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let err = match call(left.max(Duration::from_millis(1))).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let again = match failure(&err) {
                Failure::Token if self.auth.user.is_some() => {
                    if let Err(e) = self.authenticate(deadline).await {
                        tracing::warn!(error = %e, "authenticating to etcd again failed");
                        return Err(err);
                    }
                    tracing::debug!(reason = %err.message(), "authenticated to etcd again");
                    // A fresh token: send at once.
                    continue;
                }
                Failure::Token => false,
                Failure::NotSent => true,
                Failure::Unknown => repeatable,
                Failure::Final => false,
            };
            if !again || Instant::now() + pause >= deadline {
                return Err(err);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    async fn range(&self, deadline: Instant, req: RangeRequest) -> Result<RangeResponse, tonic::Status> {
        self.retrying(deadline, true, |left| {
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(left);
            let mut kv = self.kv.clone();
            async move { kv.range(request).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Whether the writes of a transaction whose answer was lost are in effect: every key it
    /// puts holds what it put, every range it deletes is empty (one consistent read).
    async fn took_effect(
        &self,
        deadline: Instant,
        compare: &[Compare],
        ops: &[RequestOp],
    ) -> Result<bool, tonic::Status> {
        use hstream_proto::etcd::compare::{CompareTarget, TargetUnion};
        // Fences (value compares) are read too: a write whose owner moved on did not take
        // effect for this caller, whatever the keys hold.
        let fences: Vec<(&[u8], &[u8])> = compare
            .iter()
            .filter(|c| c.target == CompareTarget::Value as i32)
            .filter_map(|c| match &c.target_union {
                Some(TargetUnion::Value(v)) => Some((c.key.as_slice(), v.as_slice())),
                _ => None,
            })
            .collect();
        let writes: Vec<&RequestOp> = ops.iter().filter(|op| op.request.is_some()).collect();
        let reads: Vec<RequestOp> = writes
            .iter()
            .filter_map(|op| match &op.request {
                Some(Op::RequestPut(p)) => Some(RangeRequest {
                    key: p.key.clone(),
                    ..Default::default()
                }),
                Some(Op::RequestDeleteRange(d)) => Some(RangeRequest {
                    key: d.key.clone(),
                    range_end: d.range_end.clone(),
                    count_only: true,
                    ..Default::default()
                }),
                _ => None,
            })
            .chain(fences.iter().map(|(key, _)| RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            }))
            .map(|r| RequestOp {
                request: Some(Op::RequestRange(r)),
            })
            .collect();
        let resp = self
            .retrying(deadline, true, |left| {
                let mut request = tonic::Request::new(TxnRequest {
                    compare: Vec::new(),
                    success: reads.clone(),
                    failure: Vec::new(),
                });
                request.set_timeout(left);
                let mut kv = self.kv.clone();
                async move { kv.txn(request).await.map(tonic::Response::into_inner) }
            })
            .await?;
        let written = writes
            .iter()
            .zip(&resp.responses)
            .all(|(op, r)| match (&op.request, &r.response) {
                (Some(Op::RequestPut(p)), Some(OpResponse::ResponseRange(r))) => {
                    r.kvs.first().is_some_and(|kv| kv.value == p.value)
                }
                (Some(Op::RequestDeleteRange(_)), Some(OpResponse::ResponseRange(r))) => r.count == 0,
                _ => false,
            });
        let fences_hold = fences
            .iter()
            .zip(resp.responses.iter().skip(writes.len()))
            .all(|((_, want), r)| {
                matches!(&r.response, Some(OpResponse::ResponseRange(r)) if r.kvs.first().is_some_and(|kv| kv.value == *want))
            });
        Ok(written && fences_hold)
    }

    pub(super) fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}/{rest}", self.prefix).into_bytes()
    }

    pub(super) fn owner_key(&self, resource: &str) -> Vec<u8> {
        self.key(&format!("owners/{resource}"))
    }

    /// A resource's ownership as stored, and a guard that it is still so.
    pub(super) async fn ownership_rec(&self, resource: &str) -> MetaResult<(Option<Ownership>, Compare)> {
        let key = self.owner_key(resource);
        Ok(match self.get(key.clone()).await? {
            Some(kv) => (
                Some(parse::<OwnerRec>("ownership", &kv)?.ownership(resource)),
                unchanged(key, kv.mod_revision),
            ),
            None => (None, absent(key)),
        })
    }

    /// `Fenced` unless every one of `fences` is current.
    pub(super) async fn check_fences(&self, fences: &[Ownership]) -> MetaResult<()> {
        for f in fences {
            let (current, _) = self.ownership_rec(&f.resource).await?;
            if current.as_ref() != Some(f) {
                return Err(Ownership::fenced(
                    &f.resource,
                    Ownership::describe(Some(f)),
                    current.as_ref(),
                ));
            }
        }
        Ok(())
    }

    pub(super) async fn lease_grant(&self, ttl_secs: i64) -> MetaResult<i64> {
        // Not repeatable: a lost answer leaves a lease nobody renews, which expires by itself.
        let deadline = Instant::now() + self.timeout;
        let resp = self
            .retrying(deadline, false, |left| {
                let mut request = tonic::Request::new(LeaseGrantRequest { ttl: ttl_secs, id: 0 });
                request.set_timeout(left);
                let mut leases = self.leases.clone();
                async move { leases.lease_grant(request).await.map(tonic::Response::into_inner) }
            })
            .await
            .map_err(|e| self.failed(e))?;
        if !resp.error.is_empty() {
            return Err(MetaError::Backend(resp.error.into()));
        }
        Ok(resp.id)
    }

    /// One renewal over etcd's keep-alive stream: `false` when the lease is gone.
    pub(super) async fn lease_keep_alive(&self, id: i64) -> MetaResult<bool> {
        let deadline = Instant::now() + self.timeout;
        let resp = self
            .retrying(deadline, true, |left| {
                let mut request = tonic::Request::new(futures::stream::iter([LeaseKeepAliveRequest { id }]));
                request.set_timeout(left);
                let mut leases = self.leases.clone();
                async move {
                    let mut answers = leases.lease_keep_alive(request).await?.into_inner();
                    answers
                        .message()
                        .await?
                        .ok_or_else(|| tonic::Status::unavailable("etcd closed the keep-alive stream"))
                }
            })
            .await
            .map_err(|e| self.failed(e))?;
        Ok(resp.ttl > 0)
    }

    pub(super) async fn lease_revoke(&self, id: i64) -> MetaResult<()> {
        let deadline = Instant::now() + self.timeout;
        let res = self
            .retrying(deadline, true, |left| {
                let mut request = tonic::Request::new(LeaseRevokeRequest { id });
                request.set_timeout(left);
                let mut leases = self.leases.clone();
                async move { leases.lease_revoke(request).await.map(drop) }
            })
            .await;
        match res {
            Ok(()) => Ok(()),
            // Gone already (expired, or an earlier attempt revoked it).
            Err(e) if e.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(self.failed(e)),
        }
    }

    pub(super) fn progress_chunk_key(&self, sub: &str, chunk: u64) -> Vec<u8> {
        self.key(&format!("progress/{sub}/{chunk:020}"))
    }

    /// The shard ids in use whose id divided by [`PROGRESS_CHUNK`] is the chunk, for each chunk
    /// that `ids` fall in: its key, its ids now, and a guard that it is still so.
    pub(super) async fn id_chunks(&self, ids: impl Iterator<Item = u64>) -> MetaResult<Vec<IdChunk>> {
        let mut wanted: Vec<u64> = ids.map(|id| id / PROGRESS_CHUNK).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut out = Vec::with_capacity(wanted.len());
        for chunk in wanted {
            let key = self.key(&format!("shard-ids/{chunk:020}"));
            let (ids, guard) = match self.get(key.clone()).await? {
                Some(kv) => (parse("shard ids", &kv)?, unchanged(key.clone(), kv.mod_revision)),
                None => (std::collections::BTreeSet::new(), absent(key.clone())),
            };
            out.push(IdChunk { chunk, key, ids, guard });
        }
        Ok(out)
    }

    pub(super) async fn get(&self, key: Vec<u8>) -> MetaResult<Option<KeyValue>> {
        let deadline = Instant::now() + self.timeout;
        let resp = self
            .range(
                deadline,
                RangeRequest {
                    key,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.failed(e))?;
        Ok(resp.kvs.into_iter().next())
    }

    /// Every key under `prefix` in key order, and the revision the listing was read at.
    pub(super) async fn list(&self, prefix: Vec<u8>) -> MetaResult<(Vec<KeyValue>, i64)> {
        let end = prefix_end(&prefix);
        let mut from = prefix.clone();
        let mut out = Vec::new();
        let mut revision = 0;
        let deadline = Instant::now() + self.timeout;
        loop {
            let page = RangeRequest {
                key: from.clone(),
                range_end: end.clone(),
                limit: PAGE,
                // Later pages at the first page's revision: one consistent listing.
                revision,
                ..Default::default()
            };
            let resp = match self.range(deadline, page).await {
                // The first page's revision was compacted away while paging: start again.
                Err(e) if e.code() == tonic::Code::OutOfRange && revision != 0 => {
                    (from, revision) = (prefix.clone(), 0);
                    out.clear();
                    continue;
                }
                r => r.map_err(|e| self.failed(e))?,
            };
            if revision == 0 {
                revision = resp.header.as_ref().map_or(0, |h| h.revision);
            }
            let more = resp.more;
            if let Some(last) = resp.kvs.last() {
                from = last.key.clone();
                from.push(0);
            }
            out.extend(resp.kvs);
            if !more {
                return Ok((out, revision));
            }
        }
    }

    /// One transaction: its writes happen if every compare holds. When its answer is lost
    /// (the outcome is unknown), [`took_effect`](Self::took_effect) decides: in effect, it
    /// succeeded; if not, it is sent again, its compares guarding against a first attempt
    /// that lands late.
    pub(super) async fn txn(&self, compare: Vec<Compare>, success: Vec<RequestOp>) -> MetaResult<TxnResponse> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let attempt = self
                .retrying(deadline, false, |left| {
                    let mut request = tonic::Request::new(TxnRequest {
                        compare: compare.clone(),
                        success: success.clone(),
                        failure: Vec::new(),
                    });
                    request.set_timeout(left);
                    let mut kv = self.kv.clone();
                    async move { kv.txn(request).await.map(tonic::Response::into_inner) }
                })
                .await;
            let err = match attempt {
                Ok(resp) => return Ok(resp),
                Err(e) if matches!(failure(&e), Failure::Unknown) && Instant::now() < deadline => e,
                Err(e) => return Err(self.failed(e)),
            };
            match self.took_effect(deadline, &compare, &success).await {
                Ok(true) => return Ok(took_effect_response(&success)),
                Ok(false) => tracing::debug!(error = %err.message(), "etcd transaction lost, not in effect: again"),
                Err(_) => return Err(self.failed(err)),
            }
        }
    }

    pub(super) async fn stream_rec(&self, name: &str) -> MetaResult<Option<(StreamRec, i64)>> {
        match self.get(self.key(&format!("streams/{name}"))).await? {
            Some(kv) => Ok(Some((parse("stream", &kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    pub(super) async fn all_streams(&self) -> MetaResult<Vec<StreamRec>> {
        let (kvs, _) = self.list(self.key("streams/")).await?;
        kvs.iter().map(|kv| parse("stream", kv)).collect()
    }

    pub(super) async fn subs_with_revision(&self) -> MetaResult<(Vec<(SubRec, i64)>, i64)> {
        let (kvs, rev) = self.list(self.key("subscriptions/")).await?;
        let subs = kvs
            .iter()
            .map(|kv| Ok((parse::<SubRec>("subscription", kv)?, kv.mod_revision)))
            .collect::<MetaResult<Vec<_>>>()?;
        Ok((subs, rev))
    }

    /// Changes a connector's record in place; with `fence`, only while that ownership is
    /// current (in the same transaction).
    pub(super) async fn connector_rmw_fenced(
        &self,
        name: &str,
        change: impl Fn(&mut ConnectorRec),
        fence: Option<&Ownership>,
    ) -> MetaResult<()> {
        let key = self.key(&format!("connectors/{name}"));
        let fences: Vec<Ownership> = fence.into_iter().cloned().collect();
        for _ in 0..RETRIES {
            let Some(kv) = self.get(key.clone()).await? else {
                return Err(MetaError::NotFound {
                    kind: "connector",
                    name: name.to_owned(),
                });
            };
            let mut rec: ConnectorRec = parse("connector", &kv)?;
            change(&mut rec);
            let mut guards = vec![unchanged(key.clone(), kv.mod_revision)];
            guards.extend(
                fences
                    .iter()
                    .map(|f| value_is(self.owner_key(&f.resource), json(&OwnerRec::of(f)))),
            );
            let resp = self.txn(guards, vec![put(key.clone(), json(&rec))]).await?;
            if resp.succeeded {
                return Ok(());
            }
            // A fence that moved is final; a record changed by another writer is retried.
            self.check_fences(&fences).await?;
        }
        Err(contended("connector", name))
    }
}
