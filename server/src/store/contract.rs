//! The contract every [`Store`] implementation must pass: the guarantees in `api.rs`. Run
//! [`run`] against a fresh, empty store from the implementation's tests; [`seed_durable`] then
//! [`check_durable`] across a reopen (a clean restart) prove acknowledged batches outlive the
//! store and LSNs are not handed out again. What a crash or a power loss may cost depends on
//! the store's durability setting; each store tests that itself (the local store: SIGKILL
//! tests and its power-loss model, decision 015).
//!
//! Panics with a message naming the broken rule; test support, compiled always so that stores
//! in other crates can run it. Shard ids 1–99 are used by `run`, 100 by the durability pair.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::api::{Shard, Store};
use super::{ReadySet, StoreError};

const WAIT: Duration = Duration::from_secs(10);

fn payload(shard: u64, i: u64) -> Bytes {
    Bytes::from(format!("shard {shard} batch {i}").into_bytes())
}

async fn append(store: &dyn Store, shard: u64, i: u64, records: u32) -> u64 {
    store
        .append(shard, payload(shard, i), records, 0)
        .await
        .unwrap_or_else(|e| panic!("append {i} to shard {shard}: {e}"))
        .lsn
}

async fn read_all(shard: &dyn Shard) -> Vec<super::StoredBatch> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let got = shard.read(from, 7, 1 << 20).await.expect("read");
        let Some(last) = got.last() else { return out };
        from = last.lsn + 1;
        out.extend(got);
    }
}

pub async fn run(store: &dyn Store) {
    dense_lsns(store).await;
    concurrent_appends(store).await;
    reads(store).await;
    timestamps_and_seek(store).await;
    trims(store).await;
    waiting_for_the_tail(store).await;
    deletion(store).await;
}

/// LSNs are 1, 2, 3, … in acknowledgement order; an acknowledged batch is visible.
async fn dense_lsns(store: &dyn Store) {
    let shard = store.create_shard(1, 1).await.expect("create shard 1");
    assert_eq!(
        (shard.id(), shard.visible_lsn(), shard.start_lsn()),
        (1, 0, 1),
        "a new shard is empty"
    );
    assert!(
        matches!(store.create_shard(1, 1).await, Err(StoreError::ShardExists(1))),
        "a shard is created once"
    );
    for i in 1..=50 {
        let lsn = append(store, 1, i, 1).await;
        assert_eq!(lsn, i, "LSNs are dense and in acknowledgement order");
        assert!(shard.visible_lsn() >= lsn, "an acknowledged batch is visible");
    }
    assert!(shard.written_lsn() >= 50);
    let batches = read_all(&*shard).await;
    let lsns: Vec<u64> = batches.iter().map(|b| b.lsn).collect();
    assert_eq!(
        lsns,
        (1..=50).collect::<Vec<_>>(),
        "reads return every batch in LSN order"
    );
    for b in &batches {
        assert_eq!(b.payload, payload(1, b.lsn), "a batch reads back as written");
        assert_eq!(b.batch_size, 1);
    }
    assert!(
        store.shard(1).is_some_and(|s| s.id() == 1),
        "a created shard is found by id"
    );
}

/// Appends racing on one shard get distinct, dense LSNs and all read back.
async fn concurrent_appends(store: &dyn Store) {
    let shard = store.create_shard(2, 1).await.expect("create shard 2");
    let lsns: Vec<u64> = futures::future::join_all((0..200u64).map(|i| append(store, 2, i, 1))).await;
    let distinct: BTreeSet<u64> = lsns.iter().copied().collect();
    assert_eq!(distinct.len(), 200, "no LSN is handed out twice");
    assert_eq!(distinct, (1..=200).collect(), "concurrent appends leave no gap");
    let payloads: BTreeSet<Bytes> = read_all(&*shard).await.into_iter().map(|b| b.payload).collect();
    assert_eq!(
        payloads,
        (0..200).map(|i| payload(2, i)).collect(),
        "every batch reads back once"
    );
}

/// Reads honour their limits, start at the first LSN held and never pass the visible LSN.
async fn reads(store: &dyn Store) {
    let shard = store.create_shard(3, 1).await.expect("create shard 3");
    assert!(
        shard.read(1, 10, 1 << 20).await.expect("read").is_empty(),
        "an empty shard reads empty"
    );
    for i in 1..=20 {
        append(store, 3, i, 3).await;
    }
    let got = shard.read(0, 5, 1 << 20).await.expect("read");
    assert_eq!(
        got.iter().map(|b| b.lsn).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "from 0 reads from the start"
    );
    let one = shard.read(7, 10, 1).await.expect("read");
    assert_eq!(one.len(), 1, "a byte budget below one batch still returns one");
    assert_eq!(one[0].lsn, 7);
    assert!(
        shard.read(21, 10, 1 << 20).await.expect("read").is_empty(),
        "nothing past the visible LSN"
    );
    assert_eq!(
        shard.records_from(1).await.expect("records"),
        60,
        "records are the batch sizes' sum"
    );
    assert_eq!(shard.records_from(11).await.expect("records"), 30);
    assert_eq!(shard.records_from(21).await.expect("records"), 0);
}

/// Timestamps never decrease, and seeking by time finds the first batch at or after it.
async fn timestamps_and_seek(store: &dyn Store) {
    let shard = store.create_shard(4, 1).await.expect("create shard 4");
    for i in 1..=30 {
        append(store, 4, i, 1).await;
        if i % 10 == 0 {
            // Let the clock move, so there are distinct timestamps to seek between.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let batches = read_all(&*shard).await;
    assert!(
        batches.windows(2).all(|w| w[0].timestamp_ms <= w[1].timestamp_ms),
        "timestamps never decrease"
    );
    let first = batches[0].timestamp_ms;
    assert_eq!(shard.lsn_at_or_after(first).await.expect("seek"), 1);
    assert_eq!(shard.lsn_at_or_after(i64::MIN).await.expect("seek"), 1);
    let last = batches.last().expect("batches").timestamp_ms;
    assert_eq!(
        shard.lsn_at_or_after(last + 1).await.expect("seek"),
        31,
        "past the last timestamp: the next LSN"
    );
    for b in batches.iter().filter(|b| b.timestamp_ms > first) {
        let found = shard.lsn_at_or_after(b.timestamp_ms).await.expect("seek");
        let at = &batches[(found - 1) as usize];
        assert!(
            found <= b.lsn && at.timestamp_ms >= b.timestamp_ms,
            "seek({}) found {found}, which is not the first batch at or after it",
            b.timestamp_ms
        );
        assert!(
            found == 1 || batches[(found - 2) as usize].timestamp_ms < b.timestamp_ms,
            "seek({}) found {found}, but an earlier batch qualifies",
            b.timestamp_ms
        );
    }
}

/// Trims move the start forward only, clamp to the visible LSN and keep later LSNs dense.
async fn trims(store: &dyn Store) {
    let shard = store.create_shard(5, 1).await.expect("create shard 5");
    for i in 1..=40 {
        append(store, 5, i, 1).await;
    }
    assert_eq!(shard.trim(10).await.expect("trim"), 10);
    assert_eq!(shard.start_lsn(), 11);
    assert_eq!(
        shard.read(1, 1, 1 << 20).await.expect("read")[0].lsn,
        11,
        "reads start past a trim"
    );
    assert!(shard.trim(5).await.expect("trim") >= 10, "a trim never moves back");
    assert_eq!(shard.start_lsn(), 11);
    assert_eq!(
        shard.records_from(1).await.expect("records"),
        30,
        "trimmed records are not counted"
    );
    assert_eq!(
        shard.trim(u64::MAX).await.expect("trim"),
        40,
        "a trim is clamped to the visible LSN"
    );
    assert_eq!(shard.start_lsn(), 41);
    assert!(shard.read(1, 10, 1 << 20).await.expect("read").is_empty());
    assert_eq!(append(store, 5, 41, 1).await, 41, "LSNs go on densely after a trim");
    assert_eq!(shard.read(1, 10, 1 << 20).await.expect("read")[0].lsn, 41);
}

/// A registered ready set is marked on every append and at deletion; the watch moves too.
async fn waiting_for_the_tail(store: &dyn Store) {
    let shard = store.create_shard(6, 1).await.expect("create shard 6");
    let ready = ReadySet::new();
    shard.notify_on_append(&ready, 42);
    let mut watch = shard.subscribe();
    watch.borrow_and_update();
    append(store, 6, 1, 1).await;
    tokio::time::timeout(WAIT, ready.ready())
        .await
        .expect("an append marks the set");
    assert_eq!(ready.take(), vec![42]);
    tokio::time::timeout(WAIT, watch.changed())
        .await
        .expect("an append moves the watch")
        .expect("watch open");
    assert!(*watch.borrow() >= 1);
    // Appends to other shards do not mark it.
    append(store, 1, 51, 1).await;
    assert!(ready.is_empty(), "another shard's append marked the set");
}

/// A deleted shard is gone: appends, reads and trims fail with `ShardDeleted`, and readers
/// waiting on it are woken.
async fn deletion(store: &dyn Store) {
    let shard = store.create_shard(7, 1).await.expect("create shard 7");
    append(store, 7, 1, 1).await;
    let ready = ReadySet::new();
    shard.notify_on_append(&ready, 7);
    store.delete_shard(7).await.expect("delete");
    tokio::time::timeout(WAIT, ready.ready())
        .await
        .expect("deletion wakes readers");
    assert!(shard.is_deleted());
    assert!(store.shard(7).is_none(), "a deleted shard is not found");
    assert!(
        matches!(
            store.append(7, payload(7, 2), 1, 0).await,
            Err(StoreError::ShardDeleted(7))
        ),
        "a deleted shard takes no appends"
    );
    assert!(
        matches!(shard.read(1, 1, 1 << 20).await, Err(StoreError::ShardDeleted(7))),
        "a deleted shard serves no reads"
    );
    assert!(
        matches!(shard.trim(1).await, Err(StoreError::ShardDeleted(7))),
        "a deleted shard takes no trims"
    );
    assert!(
        matches!(shard.lsn_at_or_after(0).await, Err(StoreError::ShardDeleted(7))),
        "a deleted shard answers no seeks"
    );
    assert!(
        matches!(shard.records_from(1).await, Err(StoreError::ShardDeleted(7))),
        "a deleted shard counts no records"
    );
    store.delete_shard(7).await.expect("deleting twice is harmless");
}

/// Appends to shard 100 to be checked by [`check_durable`] after the store is reopened.
pub async fn seed_durable(store: &dyn Store) -> Vec<Bytes> {
    store.create_shard(100, 1).await.expect("create shard 100");
    let mut written = Vec::new();
    for i in 1..=25 {
        append(store, 100, i, 2).await;
        written.push(payload(100, i));
    }
    written
}

/// Everything [`seed_durable`] appended reads back after a reopen, and new LSNs are above it.
pub async fn check_durable(store: &dyn Store, written: &[Bytes]) {
    let shard: Arc<dyn Shard> = store.shard(100).expect("shard 100 outlives the reopen");
    let got = read_all(&*shard).await;
    assert_eq!(
        got.iter().map(|b| b.payload.clone()).collect::<Vec<_>>(),
        written,
        "acknowledged batches outlive a reopen, in order"
    );
    let next = append(store, 100, 26, 1).await;
    assert!(
        next > got.last().expect("batches").lsn,
        "an LSN is never handed out again"
    );
}
