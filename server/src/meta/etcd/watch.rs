//! Following streams as every node changes them: etcd's watch on `streams/`, resumed after the
//! revision last seen when the connection breaks, and a `Resync` when etcd compacted what was
//! missed.

use std::time::Duration;

use hstream_proto::etcd::watch_client::WatchClient;
use hstream_proto::etcd::watch_request::RequestUnion;
use hstream_proto::etcd::{WatchCreateRequest, WatchRequest};
use hstream_proto::mvccpb::event::EventType;
use tokio::sync::mpsc;

use super::super::*;
use super::auth::{Auth, Authed};
use super::ops::prefix_end;
use super::records::*;

/// Feeds `out` with the changes under `prefix` (the store's `streams/` key prefix) from now
/// on, until `out` is dropped; reconnects (and authenticates again) by itself.
pub(super) async fn follow(
    mut client: WatchClient<Authed>,
    auth: std::sync::Arc<Auth>,
    timeout: Duration,
    prefix: Vec<u8>,
    out: mpsc::Sender<StreamChange>,
) {
    let mut from = 0;
    let mut pause = Duration::from_millis(50);
    loop {
        let (tx, rx) = mpsc::channel(1);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: prefix.clone(),
                range_end: prefix_end(&prefix),
                start_revision: from,
                prev_kv: true,
                ..Default::default()
            })),
        };
        if tx.send(create).await.is_err() {
            return;
        }
        let stream = client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
        let mut answers = match stream {
            Ok(s) => s.into_inner(),
            Err(e) => {
                tracing::debug!(error = %e, "etcd watch: cannot start; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = out.closed() => return,
                }
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        loop {
            let msg = tokio::select! {
                m = answers.message() => m,
                _ = out.closed() => return,
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => break,
            };
            if resp.compact_revision > 0 {
                // What was missed is gone from etcd's history: watched again from now, which
                // begins with a Resync (the follower re-reads everything).
                tracing::info!(
                    compacted = resp.compact_revision,
                    "etcd watch: history compacted; resyncing"
                );
                from = 0;
                break;
            }
            if resp.canceled {
                // Refused (an expired token, a permission taken away): authenticate again
                // where a user is configured, then watch again after a pause.
                tracing::warn!(reason = %resp.cancel_reason, "etcd refused the watch of streams; watching again");
                if auth.user.is_some()
                    && let Err(e) = auth.authenticate(timeout).await
                {
                    tracing::warn!(error = %e.message(), "authenticating to etcd again failed");
                }
                break;
            }
            pause = Duration::from_millis(50);
            if resp.created && from == 0 {
                // Watching from now: what changed before is read by the follower once now.
                if out.send(StreamChange::Resync).await.is_err() {
                    return;
                }
                continue;
            }
            for ev in resp.events {
                let Some(kv) = ev.kv else { continue };
                from = kv.mod_revision + 1;
                let change = if ev.r#type == EventType::Delete as i32 {
                    let name = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
                    let shard_ids = ev
                        .prev_kv
                        .as_ref()
                        .and_then(|prev| parse::<StreamRec>("stream", prev).ok())
                        .map(|rec| rec.shards().iter().map(|s| s.id).collect());
                    StreamChange::Deleted { name, shard_ids }
                } else {
                    match parse::<StreamRec>("stream", &kv) {
                        Ok(rec) => StreamChange::Put(rec.meta(), rec.shards()),
                        Err(e) => {
                            tracing::error!(error = %e, "etcd watch: unreadable stream record; resyncing");
                            StreamChange::Resync
                        }
                    }
                };
                if out.send(change).await.is_err() {
                    return;
                }
            }
        }
        // The connection broke or the watch was refused: resume after the last revision seen
        // (a missed change then arrives; one compacted away gives a Resync), after a pause.
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = out.closed() => return,
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}
