//! Shard-log behaviour across restarts, rolls, trims and torn tails.

use super::*;
use crate::store::StoredBatch;
use std::io::Write;

pub(super) fn opts(segment_bytes: u64) -> StoreOptions {
    StoreOptions {
        segment_bytes,
        index_interval_bytes: 256,
        ..StoreOptions::default()
    }
}

pub(super) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub(super) async fn append_n(store: &LogStore, shard: &Arc<ShardLog>, n: usize, tag: &str) -> Vec<u64> {
    let mut lsns = Vec::new();
    for i in 0..n {
        let a = store
            .append(shard, Bytes::from(format!("{tag}-{i}")), 1, 0)
            .await
            .unwrap();
        lsns.push(a.lsn);
    }
    lsns
}

pub(super) fn payloads(batches: &[StoredBatch]) -> Vec<String> {
    batches
        .iter()
        .map(|b| String::from_utf8(b.payload.to_vec()).unwrap())
        .collect()
}

#[test]
fn lsns_are_dense_and_survive_restart_and_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let store = LogStore::open(dir.path(), opts(300)).unwrap();
        let shard = store.create_shard(7).unwrap();
        let lsns = rt.block_on(append_n(&store, &shard, 50, "a"));
        assert_eq!(lsns, (1..=50).collect::<Vec<_>>());
        assert!(shard.segment_count() > 3, "small segments roll");
        store.shutdown();
    }
    let store = LogStore::open(dir.path(), opts(300)).unwrap();
    let shard = store.shard(7).unwrap();
    assert_eq!(shard.visible_lsn(), 50);
    let lsns = rt.block_on(append_n(&store, &shard, 5, "b"));
    assert_eq!(lsns, (51..=55).collect::<Vec<_>>());
    let all = shard.read(1, usize::MAX, usize::MAX).unwrap();
    assert_eq!(all.len(), 55);
    assert_eq!(payloads(&all)[0], "a-0");
    assert_eq!(payloads(&all)[54], "b-4");
    // Reads from any LSN start exactly there, across segment boundaries.
    for from in [1u64, 13, 27, 50, 51, 55] {
        let got = shard.read(from, 3, usize::MAX).unwrap();
        assert_eq!(got[0].lsn, from);
        assert!(got.windows(2).all(|w| w[1].lsn == w[0].lsn + 1));
    }
    assert!(shard.read(56, 10, usize::MAX).unwrap().is_empty());
    store.shutdown();
}

#[test]
fn torn_tail_is_cut_and_lsn_reused_only_for_unacked_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let seg_path;
    {
        let store = LogStore::open(dir.path(), opts(1 << 20)).unwrap();
        let shard = store.create_shard(1).unwrap();
        rt.block_on(append_n(&store, &shard, 10, "x"));
        seg_path = shard.dir().join(format!("{:020}.seg", 1));
        store.shutdown();
    }
    // Simulate a crash mid-write: half an entry, then junk.
    let mut buf = Vec::new();
    segment::encode_entry(&mut buf, 11, 0, 1, 0, b"never acked");
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg_path).unwrap();
    f.write_all(&buf[..buf.len() / 2]).unwrap();
    drop(f);
    let before = std::fs::metadata(&seg_path).unwrap().len();
    let store = LogStore::open(dir.path(), opts(1 << 20)).unwrap();
    let shard = store.shard(1).unwrap();
    assert!(std::fs::metadata(&seg_path).unwrap().len() < before, "tail truncated");
    assert_eq!(shard.visible_lsn(), 10);
    let got = shard.read(1, usize::MAX, usize::MAX).unwrap();
    assert_eq!(payloads(&got).last().unwrap(), "x-9");
    let lsns = rt.block_on(append_n(&store, &shard, 1, "y"));
    assert_eq!(lsns, vec![11]);
    store.shutdown();
}

#[test]
fn corrupt_sealed_entry_is_an_error_on_read_not_data() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = LogStore::open(dir.path(), opts(1 << 20)).unwrap();
    let shard = store.create_shard(3).unwrap();
    rt.block_on(append_n(&store, &shard, 3, "z"));
    let seg_path = shard.dir().join(format!("{:020}.seg", 1));
    let data = std::fs::read(&seg_path).unwrap();
    let mut bad = data.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(&seg_path, &bad).unwrap();
    let err = shard.read(1, 10, usize::MAX).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    store.shutdown();
}

#[test]
fn trim_hides_records_frees_segments_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let store = LogStore::open(dir.path(), opts(200)).unwrap();
        let shard = store.create_shard(9).unwrap();
        rt.block_on(append_n(&store, &shard, 30, "t"));
        let segs = shard.segment_count();
        assert_eq!(shard.trim(20).unwrap(), 20);
        assert!(shard.segment_count() < segs);
        assert_eq!(shard.read(1, 1, usize::MAX).unwrap()[0].lsn, 21);
        // Trimming everything rolls the active segment so no file is left holding only dead data.
        assert_eq!(shard.trim(u64::MAX).unwrap(), 30);
        assert!(shard.read(1, 10, usize::MAX).unwrap().is_empty());
        assert_eq!(shard.segment_count(), 1);
        store.shutdown();
    }
    let store = LogStore::open(dir.path(), opts(200)).unwrap();
    let shard = store.shard(9).unwrap();
    assert_eq!(shard.start_lsn(), 31);
    assert_eq!(rt.block_on(append_n(&store, &shard, 1, "u")), vec![31]);
    store.shutdown();
}

#[test]
fn timestamp_seek_finds_first_batch_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = LogStore::open(dir.path(), opts(300)).unwrap();
    let shard = store.create_shard(4).unwrap();
    rt.block_on(append_n(&store, &shard, 20, "p"));
    let all = shard.read(1, usize::MAX, usize::MAX).unwrap();
    assert!(all.windows(2).all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
    for b in &all {
        let lsn = shard.lsn_at_or_after(b.timestamp_ms).unwrap();
        let first = all.iter().find(|x| x.timestamp_ms >= b.timestamp_ms).unwrap();
        assert_eq!(lsn, first.lsn);
    }
    assert_eq!(shard.lsn_at_or_after(i64::MAX).unwrap(), 21);
    assert_eq!(shard.lsn_at_or_after(0).unwrap(), 1);
    store.shutdown();
}

#[test]
fn concurrent_appends_to_many_shards_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = LogStore::open(dir.path(), opts(4096)).unwrap();
    let shards: Vec<_> = (0..4).map(|i| store.create_shard(i).unwrap()).collect();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let store = store.clone();
            let shard = shards[(t % 4) as usize].clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..100 {
                    store
                        .append(&shard, Bytes::from(format!("{t}:{i}")), 1, 0)
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    for s in &shards {
        let got = s.read(1, usize::MAX, usize::MAX).unwrap();
        assert_eq!(got.len(), 200);
        // Per-writer order is kept within a shard.
        for t in 0..8u64 {
            let mine: Vec<u64> = payloads(&got)
                .iter()
                .filter_map(|p| p.strip_prefix(&format!("{t}:")).map(|i| i.parse().unwrap()))
                .collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]));
        }
    }
    store.shutdown();
}

#[test]
fn deleted_shard_rejects_appends() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = LogStore::open(dir.path(), opts(1 << 20)).unwrap();
    let shard = store.create_shard(5).unwrap();
    store.delete_shard(5).unwrap();
    let err = rt
        .block_on(store.append(&shard, Bytes::from_static(b"x"), 1, 0))
        .unwrap_err();
    assert!(matches!(err, StoreError::ShardDeleted(5)));
    assert!(!shard.dir().exists());
    store.shutdown();
}

#[test]
fn overlapping_segments_refuse_to_open_instead_of_reusing_lsns() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let shard_dir;
    {
        let store = LogStore::open(dir.path(), opts(1 << 20)).unwrap();
        let shard = store.create_shard(2).unwrap();
        rt.block_on(append_n(&store, &shard, 10, "o"));
        shard_dir = shard.dir().to_owned();
        store.shutdown();
    }
    // A stray segment starting inside the range the first one holds.
    std::fs::write(shard_dir.join(format!("{:020}.seg", 5)), segment::file_header(5)).unwrap();
    let store = LogStore::open(dir.path(), opts(1 << 20)).unwrap();
    let shard = store.shard(2).unwrap();
    let reason = shard.unavailable_reason().expect("shard must be unavailable");
    assert!(reason.contains("previous one reaches lsn 10"), "{reason}");
    assert!(matches!(
        shard.read(1, 10, usize::MAX),
        Err(StoreError::Unavailable { shard: 2, .. })
    ));
}

#[test]
fn lsns_continue_after_a_trim_point_beyond_the_recovered_tail() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let store = LogStore::open(dir.path(), opts(1 << 20)).unwrap();
        let shard = store.create_shard(3).unwrap();
        rt.block_on(append_n(&store, &shard, 10, "a"));
        store.shutdown();
    }
    // As if batches 11..=50 were trimmed, then lost unsynced in a power failure.
    let shard_dir = dir.path().join("shards/3");
    let mut bytes = 50u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32c::crc32c(&50u64.to_le_bytes()).to_le_bytes());
    std::fs::write(shard_dir.join("trim"), bytes).unwrap();
    let store = LogStore::open(dir.path(), opts(1 << 20)).unwrap();
    let shard = store.shard(3).unwrap();
    assert_eq!(rt.block_on(append_n(&store, &shard, 1, "b")), vec![51]);
    assert_eq!(shard.read(1, 10, usize::MAX).unwrap()[0].lsn, 51);
    store.shutdown();
}

#[test]
fn damage_inside_a_sealed_segment_fails_reads_of_the_lost_range() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let store = LogStore::open(dir.path(), opts(400)).unwrap();
        let shard = store.create_shard(4).unwrap();
        rt.block_on(append_n(&store, &shard, 40, "d"));
        assert!(shard.segment_count() > 2);
        store.shutdown();
    }
    let shard_dir = dir.path().join("shards/4");
    let first = shard_dir.join(format!("{:020}.seg", 1));
    // Break the format-version byte of the first segment's last entry: a header walk stops
    // there, so the segment opens as damaged with its last entry lost.
    let file = std::fs::File::open(&first).unwrap();
    let entries = segment::scan(&file, 1, true, 0).unwrap().index;
    let last = entries.last().unwrap();
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[last.offset as usize + segment::ENTRY_HEADER_LEN + 21] = 99;
    std::fs::write(&first, &bytes).unwrap();
    // With the segment's summary (cached when it was sealed), open trusts it and the damage
    // shows on reading: every read verifies its entries, so it fails as data loss, not data.
    {
        let store = LogStore::open(dir.path(), opts(400)).unwrap();
        let shard = store.shard(4).unwrap();
        assert_eq!(
            shard.read(1, (last.lsn - 1) as usize, usize::MAX).unwrap().len() as u64,
            last.lsn - 1
        );
        let err = shard.read(last.lsn, 10, usize::MAX).unwrap_err();
        assert_eq!(crate::error::ApiError::from(err).code(), tonic::Code::DataLoss);
        assert_eq!(shard.read(last.lsn + 1, 1, usize::MAX).unwrap()[0].lsn, last.lsn + 1);
        store.shutdown();
    }
    // Without it, open walks the headers and finds the damage up front.
    std::fs::remove_file(super::summary::path(&first)).unwrap();
    let store = LogStore::open(dir.path(), opts(400)).unwrap();
    let shard = store.shard(4).unwrap();
    // Reads before the damage work; reading into the lost range fails instead of skipping it.
    assert_eq!(
        shard.read(1, (last.lsn - 1) as usize, usize::MAX).unwrap().len() as u64,
        last.lsn - 1
    );
    let err = shard.read(last.lsn, 10, usize::MAX).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains(&format!("lost lsns {}..{}", last.lsn, last.lsn))),
        "{err}"
    );
    let err = shard.read(1, usize::MAX, usize::MAX).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    // Batches after the damage stay readable.
    assert_eq!(shard.read(last.lsn + 1, 1, usize::MAX).unwrap()[0].lsn, last.lsn + 1);
    store.shutdown();
}

#[test]
fn delete_wakes_waiting_readers() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), opts(1 << 20)).unwrap();
    let shard = store.create_shard(6).unwrap();
    let mut rx = shard.subscribe();
    rx.borrow_and_update();
    store.delete_shard(6).unwrap();
    assert!(rx.has_changed().unwrap(), "deletion bumps the visible-LSN channel");
    assert!(shard.is_deleted());
    assert!(matches!(shard.trim(1), Err(StoreError::ShardDeleted(6))));
    store.shutdown();
}

#[test]
fn records_from_counts_batch_sizes_across_rolls_restarts_and_trims() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    // Batch i (LSN i) holds i records.
    let sum = |from: u64, to: u64| (from..=to).sum::<u64>();
    let append = |store: &LogStore, shard: &Arc<ShardLog>, lsns: std::ops::RangeInclusive<u64>| {
        for i in lsns {
            let a = rt
                .block_on(store.append(shard, Bytes::from(format!("b{i}")), i as u32, 0))
                .unwrap();
            assert_eq!(a.lsn, i);
        }
    };
    {
        let store = LogStore::open(dir.path(), opts(300)).unwrap();
        let shard = store.create_shard(11).unwrap();
        assert_eq!(shard.records_from(1).unwrap(), 0);
        append(&store, &shard, 1..=60);
        assert!(shard.segment_count() > 3, "small segments roll");
        for from in [1, 2, 17, 33, 59, 60] {
            assert_eq!(shard.records_from(from).unwrap(), sum(from, 60), "from {from}");
        }
        assert_eq!(shard.records_from(61).unwrap(), 0);
        store.shutdown();
    }
    // After a restart the index is rebuilt from the headers: the same answers, and appends go on.
    let store = LogStore::open(dir.path(), opts(300)).unwrap();
    let shard = store.shard(11).unwrap();
    assert_eq!(shard.records_from(1).unwrap(), sum(1, 60));
    append(&store, &shard, 61..=70);
    assert_eq!(shard.records_from(45).unwrap(), sum(45, 70));
    // Trimmed batches are not counted.
    shard.trim(30).unwrap();
    assert_eq!(shard.records_from(1).unwrap(), sum(31, 70));
    assert_eq!(shard.records_from(50).unwrap(), sum(50, 70));
    store.shutdown();
}

/// The local store keeps the store contract, and its batches and LSNs outlive a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_keeps_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), StoreOptions::default()).unwrap();
    crate::store::contract::run(&LocalStore(store.clone())).await;
    let written = crate::store::contract::seed_durable(&LocalStore(store.clone())).await;
    store.shutdown();
    drop(store);
    let store = LogStore::open(dir.path(), StoreOptions::default()).unwrap();
    crate::store::contract::check_durable(&LocalStore(store.clone()), &written).await;
    store.shutdown();
}
