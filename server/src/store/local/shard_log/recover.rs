//! Opening a shard: recovery from whatever state a crash left its directory in (the longest
//! valid prefix of the last segment kept, the reservation and gaps re-established), or the
//! unavailable state when something else is wrong.

use super::*;

impl ShardLog {
    /// Opens a shard directory, recovering from whatever state a crash left it in.
    pub fn open(dir: PathBuf, id: u64, opts: StoreOptions) -> Result<Self, StoreError> {
        let trim_point = read_u64_file(&dir, TRIM_FILE)?;
        let reserved = read_u64_file(&dir, RESERVED_FILE)?;
        let mut gaps = read_gaps(&dir)?;
        let mut bases = Vec::new();
        let mut summaries = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))? {
            let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(base) = name.strip_suffix(".seg").and_then(|b| b.parse::<u64>().ok()) {
                bases.push(base);
            } else if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            } else if let Some(base) = name.strip_suffix(".idx").and_then(|b| b.parse::<u64>().ok()) {
                summaries.push(base);
            }
        }
        bases.sort_unstable();
        // Summaries whose segment went (a trim that stopped between the two removals).
        for base in summaries.into_iter().filter(|b| bases.binary_search(b).is_err()) {
            let _ = fs::remove_file(summary::path(&segment_path(&dir, base)));
        }
        if bases.is_empty() {
            bases.push(trim_point + 1);
            create_segment_file(id, &dir, trim_point + 1)?;
        }
        let mut segments = Vec::with_capacity(bases.len());
        let mut records = 0u64;
        let mut scanned = 0usize;
        let last_i = bases.len() - 1;
        let mut expected_base = None;
        for (i, &base) in bases.iter().enumerate() {
            let path = segment_path(&dir, base);
            let is_last = i == last_i;
            let mut file = OpenOptions::new()
                .read(true)
                .write(is_last)
                .open(&path)
                .map_err(|e| StoreError::io(&path, e))?;
            match segment::read_file_header(&mut file).map_err(|e| StoreError::io(&path, e))? {
                Some(b) if b == base => {}
                // Segments appear under their name only once their header is on disk
                // (`create_segment_file`), so a bad header, even on the last one, is damage.
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "segment {} has a bad header",
                        path.display()
                    )));
                }
            }
            if let Some(exp) = expected_base {
                if base < exp {
                    // LSNs would be handed out twice: refuse rather than guess.
                    return Err(StoreError::Corrupt(format!(
                        "segment {} starts at lsn {base} but the previous one reaches lsn {}",
                        path.display(),
                        exp - 1
                    )));
                }
                if base > exp && !covers(&gaps, exp, base - 1) {
                    tracing::error!(shard = id, expected = exp, found = base, "gap between segments");
                }
            }
            let file_len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
            // A sealed segment's summary spares walking its entry headers.
            let cached = if is_last { None } else { summary::load(&path, file_len) };
            let scan = match cached {
                Some(s) => segment::ScanOutcome {
                    valid_len: s.len,
                    last_lsn: s.last_lsn,
                    first_timestamp_ms: None,
                    last_timestamp_ms: (s.last_ts != i64::MIN).then_some(s.last_ts),
                    index: s.index,
                    records: s.records,
                    stopped: None,
                },
                None => {
                    scanned += 1;
                    let scan = segment::scan(&file, base, is_last, opts.index_interval_bytes)
                        .map_err(|e| StoreError::io(&path, e))?;
                    if !is_last && scan.stopped.is_none() {
                        summary::store(
                            &path,
                            &Summary {
                                len: scan.valid_len,
                                last_lsn: scan.last_lsn,
                                last_ts: scan.last_timestamp_ms.unwrap_or(i64::MIN),
                                records: scan.records,
                                index: scan.index.clone(),
                            },
                        );
                    }
                    scan
                }
            };
            if let Some(reason) = &scan.stopped {
                if is_last {
                    tracing::warn!(shard = id, path = %path.display(), cut_bytes = file_len - scan.valid_len,
                        reason = %reason, "truncating torn tail");
                    file.set_len(scan.valid_len).map_err(|e| StoreError::io(&path, e))?;
                    file.sync_all().map_err(|e| StoreError::io(&path, e))?;
                } else {
                    tracing::error!(shard = id, path = %path.display(), reason = %reason,
                        "sealed segment is damaged; entries after the damage are unreadable");
                }
            }
            expected_base = Some(scan.last_lsn + 1);
            let records_at_base = records;
            records += scan.records;
            let index = scan
                .index
                .into_iter()
                .map(|p| IndexPoint {
                    records_before: p.records_before + records_at_base,
                    ..p
                })
                .collect();
            drop(file); // read handles are opened on demand (`handles`), not held per segment
            segments.push(Arc::new(Segment {
                base,
                path: path.clone(),
                committed_len: AtomicU64::new(scan.valid_len),
                last_lsn: AtomicU64::new(scan.last_lsn),
                last_ts: AtomicI64::new(scan.last_timestamp_ms.unwrap_or(i64::MIN)),
                index: RwLock::new(index),
                records_at_base,
            }));
        }
        // Unsynced batches lost in a crash may leave the tail below a trim point that was already
        // persisted: continue after the trim point so no trimmed LSN is handed out again.
        if segments.last().expect("at least one segment").last_lsn() < trim_point {
            let path = create_segment_file(id, &dir, trim_point + 1)?;
            segments.push(Arc::new(Segment::empty(trim_point + 1, path, records)));
        }
        // LSNs up to the reservation may have reached readers and been lost with the page cache:
        // record them as a gap (first, so a crash here redoes the same), then go on after them.
        let tail = segments.last().expect("at least one segment").last_lsn();
        if reserved > tail {
            let gap = (tail + 1, reserved);
            tracing::warn!(
                shard = id,
                first = gap.0,
                last = gap.1,
                "lsns that may have been handed out before an unclean stop are skipped"
            );
            if !gaps.contains(&gap) {
                gaps.push(gap);
                write_gaps(id, &dir, &gaps)?;
            }
            let path = create_segment_file(id, &dir, reserved + 1)?;
            segments.push(Arc::new(Segment::empty(reserved + 1, path, records)));
        }
        let last = segments.last().expect("at least one segment").clone();
        let active_len = last.committed_len.load(Ordering::Acquire);
        let next_lsn = last.last_lsn() + 1;
        let last_ts = segments
            .iter()
            .rev()
            .map(|s| s.last_ts.load(Ordering::Acquire))
            .find(|t| *t != i64::MIN)
            .unwrap_or(0);
        let visible = next_lsn - 1;
        let log = ShardLog {
            id,
            dir,
            opts,
            inner: Ok(Mutex::new(Inner {
                segments,
                active: None,
                active_len,
                bytes_since_index: u64::MAX,
                records_written: records,
                next_lsn,
                last_ts,
                trim_point,
                reserved,
                poisoned: None,
            })),
            gaps,
            trim_point: AtomicU64::new(trim_point),
            written: AtomicU64::new(next_lsn - 1),
            trimming: Mutex::new(()),
            last_write_ms: AtomicI64::new(0),
            scanned_at_open: scanned,
            visible: watch::Sender::new(visible),
            listeners: Default::default(),
            reads: AtomicU64::new(0),
            unsynced: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
        };
        // Segments wholly below the trim point may remain if a crash came between persisting the
        // trim point and deleting them.
        let doomed = Self::take_trimmed(&mut *log.lock()?);
        log.remove_segments(&doomed)?;
        Ok(log)
    }
}
