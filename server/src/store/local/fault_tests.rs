//! The store under failure: damaged and missing shards, failed fsyncs and writes (failpoints),
//! power loss (the `durable::power` model), slow trims, idle handles and segment summaries.

use super::tests::{append_n, opts, payloads, rt};
use super::*;
use std::path::Path;

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn a_bad_segment_header_leaves_that_shard_unavailable_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let damaged_dir;
    {
        let store = LogStore::open(dir.path(), opts(1 << 20)).unwrap();
        let damaged = store.create_shard(3).unwrap();
        let healthy = store.create_shard(4).unwrap();
        rt.block_on(append_n(&store, &damaged, 10, "d"));
        rt.block_on(append_n(&store, &healthy, 10, "h"));
        damaged_dir = damaged.dir().to_owned();
        store.shutdown();
    }
    // The last (only) segment's header loses its magic: no crash can do that.
    let seg = damaged_dir.join(format!("{:020}.seg", 1));
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let before = snapshot(&damaged_dir);

    let store = LogStore::open(dir.path(), opts(1 << 20)).unwrap();
    let healthy = store.shard(4).unwrap();
    assert_eq!(payloads(&healthy.read(1, 100, usize::MAX).unwrap()).len(), 10);
    assert_eq!(rt.block_on(append_n(&store, &healthy, 1, "h2")), vec![11]);
    let damaged = store.shard(3).unwrap();
    assert!(damaged.unavailable_reason().unwrap().contains("bad header"));
    let unavailable = |r: Result<_, StoreError>| matches!(r, Err(StoreError::Unavailable { shard: 3, .. }));
    assert!(unavailable(damaged.read(1, 10, usize::MAX).map(|_| ())));
    assert!(unavailable(damaged.trim(5).map(|_| ())));
    assert!(unavailable(damaged.lsn_at_or_after(0).map(|_| ())));
    assert!(unavailable(damaged.records_from(1).map(|_| ())));
    assert!(unavailable(
        rt.block_on(store.append(&damaged, Bytes::from_static(b"x"), 1, 0))
            .map(|_| ())
    ));
    let err = ApiErrorCode::of(damaged.read(1, 1, 1).unwrap_err());
    assert_eq!(err, tonic::Code::DataLoss);
    store.shutdown();
    assert_eq!(
        snapshot(&damaged_dir),
        before,
        "an unavailable shard's files are never touched"
    );
}

/// The gRPC code a store error reaches clients with.
struct ApiErrorCode;
impl ApiErrorCode {
    fn of(e: StoreError) -> tonic::Code {
        crate::error::ApiError::from(e).code()
    }
}

#[test]
fn missing_and_quarantined_shards() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = LogStore::open(dir.path(), opts(1 << 20)).unwrap();
    let missing = store.missing_shard(9);
    assert!(!missing.dir().exists(), "a missing shard is not recreated");
    assert!(matches!(
        rt.block_on(store.append(&missing, Bytes::from_static(b"x"), 1, 0)),
        Err(StoreError::Unavailable { shard: 9, .. })
    ));
    let kept = store.create_shard(10).unwrap();
    rt.block_on(append_n(&store, &kept, 3, "q"));
    let files = snapshot(kept.dir());
    let to = store.quarantine_shard(10).unwrap();
    assert_eq!(to, dir.path().join("quarantine").join("10"));
    assert!(store.shard(10).is_none() && !dir.path().join("shards/10").exists());
    let moved: Vec<_> = snapshot(&to)
        .into_iter()
        .map(|(p, b)| (p.file_name().unwrap().to_owned(), b))
        .collect();
    let orig: Vec<_> = files
        .into_iter()
        .map(|(p, b)| (p.file_name().unwrap().to_owned(), b))
        .collect();
    assert_eq!(moved, orig, "quarantine keeps every byte");
    assert_eq!(store.cluster_id().unwrap(), None);
    store.set_cluster_id("abc").unwrap();
    assert_eq!(store.cluster_id().unwrap().as_deref(), Some("abc"));
    store.shutdown();
}

/// Appends that fail once the failpoint `site` is set for `shard`: returns the error.
fn fail_at(site: &str, shard: u64) {
    fail::cfg(site, &format!("return({shard})")).unwrap();
}

#[test]
fn a_failed_fsync_at_a_roll_or_a_trim_poisons_the_shard() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let never = StoreOptions {
        fsync: FsyncPolicy::Never,
        ..opts(300)
    };
    let store = LogStore::open(dir.path(), never.clone()).unwrap();
    let other = store.create_shard(20).unwrap();
    for (id, site) in [
        (21, "store::roll-fsync"),
        (22, "store::segment-fsync"),
        (23, "store::dir-fsync"),
        (24, "store::trim-fsync"),
        (25, "store::trim-file-fsync"),
    ] {
        let shard = store.create_shard(id).unwrap();
        let acked = rt.block_on(append_n(&store, &shard, 5, "p"));
        fail_at(site, id);
        let failed = if site.contains("trim") {
            shard.trim(3).map(|_| ())
        } else {
            // Small segments: a few more appends roll.
            (0..20).try_for_each(|i| {
                rt.block_on(store.append(&shard, Bytes::from(format!("r{i}")), 1, 0))
                    .map(|_| ())
            })
        };
        assert!(failed.is_err(), "{site}: the injected failure must surface");
        fail::remove(site);
        let next = rt.block_on(store.append(&shard, Bytes::from_static(b"after"), 1, 0));
        assert!(matches!(next, Err(StoreError::Poisoned(_))), "{site}: {next:?}");
        assert!(matches!(shard.trim(2), Err(StoreError::Poisoned(_))), "{site}");
        assert!(shard.read(1, 100, usize::MAX).unwrap().len() >= acked.len());
        // Other shards go on.
        rt.block_on(append_n(&store, &other, 1, "o"));
    }
    store.shutdown();
    drop(store);
    // A restart recovers every poisoned shard: appends go on after what is on disk.
    let store = LogStore::open(dir.path(), never).unwrap();
    for id in 21..=25 {
        let shard = store.shard(id).unwrap();
        assert!(shard.unavailable_reason().is_none(), "shard {id}");
        let tail = shard.visible_lsn();
        assert!(tail >= 5, "shard {id} kept its acked batches");
        let lsn = rt
            .block_on(store.append(&shard, Bytes::from_static(b"again"), 1, 0))
            .unwrap()
            .lsn;
        assert_eq!(lsn, tail + 1);
    }
    store.shutdown();
    scenario.teardown();
}

#[test]
fn a_failed_write_is_undone_and_a_failed_undo_poisons() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = LogStore::open(dir.path(), opts(1 << 20)).unwrap();
    let undone = store.create_shard(30).unwrap();
    let stuck = store.create_shard(31).unwrap();
    rt.block_on(append_n(&store, &undone, 3, "u"));
    rt.block_on(append_n(&store, &stuck, 3, "s"));

    // Half of the group reaches the file, then the write fails; the undo cuts it off.
    fail_at("store::write", 30);
    let big = Bytes::from(vec![b'x'; 4096]);
    assert!(rt.block_on(store.append(&undone, big.clone(), 1, 0)).is_err());
    fail::remove("store::write");
    let lsn = rt
        .block_on(store.append(&undone, Bytes::from_static(b"next"), 1, 0))
        .unwrap()
        .lsn;
    assert_eq!(lsn, 4, "the failed batch took no LSN");
    assert_eq!(
        payloads(&undone.read(1, 10, usize::MAX).unwrap()),
        ["u-0", "u-1", "u-2", "next"]
    );

    // The undo fails too: the file holds half an entry, so the shard stops taking writes.
    fail::cfg("store::write", "return(31)").unwrap();
    fail::cfg("store::undo", "return(31)").unwrap();
    assert!(rt.block_on(store.append(&stuck, big, 1, 0)).is_err());
    fail::remove("store::write");
    fail::remove("store::undo");
    assert!(matches!(
        rt.block_on(store.append(&stuck, Bytes::from_static(b"no"), 1, 0)),
        Err(StoreError::Poisoned(_))
    ));
    store.shutdown();
    drop(store);
    // Recovery cuts the torn half entry; the acked batches stay and LSNs go on from them.
    let store = LogStore::open(dir.path(), opts(1 << 20)).unwrap();
    let stuck = store.shard(31).unwrap();
    assert_eq!(payloads(&stuck.read(1, 10, usize::MAX).unwrap()), ["s-0", "s-1", "s-2"]);
    assert_eq!(
        rt.block_on(store.append(&stuck, Bytes::from_static(b"ok"), 1, 0))
            .unwrap()
            .lsn,
        4
    );
    store.shutdown();
    scenario.teardown();
}

/// A power loss under `--fsync never` (simulated: every segment cut back to what fsync made
/// durable) drops acknowledged batches; the LSNs they had are never handed out again, and a
/// reader that had committed past them (a subscription at the old tail) gets the new batches.
#[test]
fn lsns_are_not_reused_after_a_power_loss() {
    use super::durable::power;
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let never = StoreOptions {
        fsync: FsyncPolicy::Never,
        ..opts(1 << 20)
    };
    let handed_out;
    {
        let store = LogStore::open(dir.path(), never.clone()).unwrap();
        let shard = store.create_shard(40).unwrap();
        power::settle(dir.path());
        handed_out = rt.block_on(append_n(&store, &shard, 10, "lost"));
        assert_eq!(handed_out, (1..=10).collect::<Vec<_>>());
        assert_eq!(
            shard.visible_lsn(),
            10,
            "acknowledged and visible before the power loss"
        );
        // No shutdown: the power goes.
    }
    power::lose_unsynced(dir.path());
    let committed = 11; // a subscription that acked all ten
    let first_gap_end;
    {
        let store = LogStore::open(dir.path(), never.clone()).unwrap();
        let shard = store.shard(40).unwrap();
        assert!(
            shard.read(1, 100, usize::MAX).unwrap().is_empty(),
            "the page cache lost them"
        );
        let gap = *shard.gaps().last().expect("the lost range is recorded");
        assert_eq!(gap.0, 1);
        first_gap_end = gap.1;
        power::settle(dir.path());
        let lsns = rt.block_on(append_n(&store, &shard, 3, "new"));
        assert!(
            lsns[0] > *handed_out.last().unwrap(),
            "no LSN handed out twice: {lsns:?}"
        );
        assert_eq!(lsns, (first_gap_end + 1..=first_gap_end + 3).collect::<Vec<_>>());
        // The reader at its committed position sees the new batches; so does one from the start.
        assert_eq!(
            payloads(&shard.read(committed, 100, usize::MAX).unwrap()),
            ["new-0", "new-1", "new-2"]
        );
        assert_eq!(payloads(&shard.read(1, 100, usize::MAX).unwrap()).len(), 3);
        // Some of it reaches the disk (a flush), the rest is lost again.
        shard.sync_if_dirty().unwrap();
        rt.block_on(append_n(&store, &shard, 2, "lost-again"));
    }
    power::lose_unsynced(dir.path());
    {
        let store = LogStore::open(dir.path(), never.clone()).unwrap();
        let shard = store.shard(40).unwrap();
        assert_eq!(
            payloads(&shard.read(committed, 100, usize::MAX).unwrap()),
            ["new-0", "new-1", "new-2"]
        );
        assert_eq!(shard.gaps().len(), 2);
        let next = rt.block_on(append_n(&store, &shard, 1, "after"))[0];
        assert!(next > first_gap_end + 5, "{next}");
        assert_eq!(
            payloads(&shard.read(first_gap_end + 4, 100, usize::MAX).unwrap()),
            ["after-0"]
        );
        // A clean shutdown releases the reservation: the next start continues densely.
        store.shutdown();
        drop(store);
        let store = LogStore::open(dir.path(), never).unwrap();
        let shard = store.shard(40).unwrap();
        assert_eq!(shard.gaps().len(), 2, "no gap after a clean stop");
        assert_eq!(rt.block_on(append_n(&store, &shard, 1, "dense"))[0], next + 1);
        store.shutdown();
    }
}

/// Under `always` nothing is reserved: no extra file, no fsync beyond the group commit.
#[test]
fn always_reserves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = LogStore::open(dir.path(), opts(1 << 20)).unwrap();
    let shard = store.create_shard(41).unwrap();
    rt.block_on(append_n(&store, &shard, 5, "a"));
    assert!(!shard.dir().join("reserved").exists());
    store.shutdown();
}

/// A trim held up in its fsync (a slow disk) blocks neither appends to its own shard nor those
/// of another shard on the same writer thread, nor lookups of positions.
#[test]
fn a_slow_trim_blocks_no_writer_and_no_lookup() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let one_writer = StoreOptions {
        writer_threads: 1,
        ..opts(1 << 20)
    };
    let store = LogStore::open(dir.path(), one_writer).unwrap();
    let a = store.create_shard(50).unwrap();
    let b = store.create_shard(51).unwrap();
    rt.block_on(append_n(&store, &a, 5, "a"));
    rt.block_on(append_n(&store, &b, 5, "b"));

    let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = std::sync::Mutex::new(released);
    fail::cfg_callback("store::trim-file-fsync", move || {
        let _ = entered_tx.send(());
        let _ = released.lock().unwrap().recv();
    })
    .unwrap();
    let trimmer = {
        let a = a.clone();
        std::thread::spawn(move || a.trim(3))
    };
    entered.recv().unwrap();
    // The trim sits in its fsync now. Appends to both shards (one writer thread) and position
    // lookups go through.
    let (done_tx, done) = std::sync::mpsc::channel();
    {
        let (store, a, b) = (store.clone(), a.clone(), b.clone());
        std::thread::spawn(move || {
            let rt = super::tests::rt();
            let la = rt
                .block_on(store.append(&a, Bytes::from_static(b"a-late"), 1, 0))
                .unwrap()
                .lsn;
            let lb = rt
                .block_on(store.append(&b, Bytes::from_static(b"b-late"), 1, 0))
                .unwrap()
                .lsn;
            let _ = done_tx.send((la, lb, a.start_lsn(), a.trim_point(), a.written_lsn()));
        });
    }
    let got = done.recv_timeout(std::time::Duration::from_secs(10));
    let _ = release.send(());
    let (la, lb, start, trim, written) = got.expect("appends and lookups waited for the trim's fsync");
    assert_eq!((la, lb), (6, 6));
    assert_eq!(
        (start, trim, written),
        (1, 0, 6),
        "the trim is not in effect until it is durable"
    );
    assert_eq!(trimmer.join().unwrap().unwrap(), 3);
    assert_eq!((a.start_lsn(), a.trim_point()), (4, 3));
    assert_eq!(payloads(&a.read(1, 10, usize::MAX).unwrap()), ["a-3", "a-4", "a-late"]);
    fail::remove("store::trim-file-fsync");
    store.shutdown();
    scenario.teardown();
}

/// The janitor closes an idle append handle only after fsyncing what it holds, so a closed
/// handle always means a synced file, even under `--fsync never`.
#[test]
fn closing_an_idle_handle_syncs_it_first() {
    use super::durable::power;
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let never = StoreOptions {
        fsync: FsyncPolicy::Never,
        ..opts(1 << 20)
    };
    {
        let store = LogStore::open(dir.path(), never.clone()).unwrap();
        let shard = store.create_shard(60).unwrap();
        power::settle(dir.path());
        rt.block_on(append_n(&store, &shard, 5, "kept"));
        assert!(
            shard.close_idle_handle(0),
            "an unsynced idle handle is synced and closed"
        );
        assert!(!shard.close_idle_handle(0), "nothing left to close");
        // The power goes.
    }
    power::lose_unsynced(dir.path());
    let store = LogStore::open(dir.path(), never).unwrap();
    let shard = store.shard(60).unwrap();
    assert_eq!(payloads(&shard.read(1, 10, usize::MAX).unwrap()).len(), 5);
    store.shutdown();
}

/// Sealed segments are summarized when sealed: a restart walks only the last segment's entry
/// headers, answers exactly as a full scan does, and falls back to a scan for a summary that
/// is damaged or missing.
#[test]
fn restart_reads_summaries_not_headers_of_sealed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let shard_dir;
    let (all, records, at_ts);
    {
        let store = LogStore::open(dir.path(), opts(400)).unwrap();
        let shard = store.create_shard(70).unwrap();
        rt.block_on(append_n(&store, &shard, 60, "s"));
        assert!(shard.segment_count() > 4);
        shard_dir = shard.dir().to_owned();
        all = payloads(&shard.read(1, 100, usize::MAX).unwrap());
        records = shard.records_from(17).unwrap();
        let t = shard.read(30, 1, usize::MAX).unwrap()[0].timestamp_ms;
        at_ts = (t, shard.lsn_at_or_after(t).unwrap());
        store.shutdown();
    }
    let check = |expect_scanned: usize| {
        let store = LogStore::open(dir.path(), opts(400)).unwrap();
        let shard = store.shard(70).unwrap();
        assert_eq!(shard.scanned_at_open, expect_scanned);
        assert_eq!(payloads(&shard.read(1, 100, usize::MAX).unwrap()), all);
        assert_eq!(shard.records_from(17).unwrap(), records);
        assert_eq!(shard.lsn_at_or_after(at_ts.0).unwrap(), at_ts.1);
        let n = shard.segment_count();
        store.shutdown();
        n
    };
    let segments = check(1);
    // A damaged summary and a missing one: those two are scanned (and summarized again).
    let mut idx: Vec<_> = std::fs::read_dir(&shard_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .collect();
    idx.sort();
    assert_eq!(idx.len(), segments - 1, "every sealed segment has a summary");
    let mut b = std::fs::read(&idx[0]).unwrap();
    b[20] ^= 0xff;
    std::fs::write(&idx[0], b).unwrap();
    std::fs::remove_file(&idx[1]).unwrap();
    check(3);
    check(1);
    // A trim removes summaries with their segments.
    let store = LogStore::open(dir.path(), opts(400)).unwrap();
    store.shard(70).unwrap().trim(40).unwrap();
    let left = std::fs::read_dir(&shard_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "idx"))
        .count();
    assert_eq!(left, store.shard(70).unwrap().segment_count() - 1);
    store.shutdown();
}
