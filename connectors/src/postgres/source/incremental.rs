//! Incremental snapshots (Debezium's, after Netflix's DBLog): a table that joins the capture
//! after the initial snapshot is copied while streaming goes on, in primary-key chunks, each
//! checkpointed with the stream's position, so a restart goes on from the last chunk.
//!
//! A chunk is read in its own REPEATABLE READ transaction together with that transaction's
//! snapshot (`pg_current_snapshot()`); after it commits, a watermark goes into the WAL
//! (`pg_logical_emit_message`, not transactional, so it is decoded at its place). Every
//! transaction the chunk's snapshot saw ended before the snapshot, so its commit comes before the
//! watermark in the stream; a change that comes after the watermark is newer than the chunk.
//! When the watermark arrives, the chunk's rows go out, less those a transaction the snapshot did
//! not see has changed: such a transaction committed before the watermark has already been
//! streamed, and its change is newer than the chunk's row. The rows of transactions since are
//! streamed after the chunk, so each key's last record is its latest state. No lock is taken and
//! no window of DBLog's low and high watermarks is needed: the snapshot says exactly which
//! transactions the chunk holds, whatever the order of commit records and visibility (a
//! synchronous standby can hold a commit invisible long after its record).
//!
//! Keys are tracked for the waiting tables, by transaction id, and forgotten once every later
//! snapshot sees the transaction. A transaction streamed while in progress (protocol 2) may abort
//! parts of itself, so its keys are not trusted: when the chunk's snapshot did not see it, the
//! chunk is read again instead.
//!
//! Tracking starts when a table starts waiting: at the stream's start, or when a signal queues
//! it. A transaction whose commit was decoded before a signal, but which the chunk's snapshot
//! does not see yet (a synchronous standby holds its visibility), changed keys nobody noted. With
//! a signal table configured, the xids of the last [`RECENT_COMMITS`] commits decoded are kept
//! ([`Decoded`]); a chunk whose snapshot misses one decoded before its table started waiting is
//! read again, a little later, until that commit shows.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use hstream_runtime::{ConnectorError, Record};

use super::records::{Op, Origin, Rel, change, now_ms};
use super::{PgSource, learn_types};
use crate::postgres::pgoutput::Col;
use crate::postgres::query_error;
use crate::postgres::wire::{ident, literal};
use crate::snapshots::{Applied, Signal, SnapshotQueue, TableName};

/// The prefix of our watermark messages (their content names the slot, the run and the chunk).
pub(super) const WATERMARK_PREFIX: &str = "hstream-cdc";

pub use crate::cdc::IncrementalOffset;

/// A key: each key column's name and text, by name (a partition may order its columns
/// differently from its parent).
pub(super) type Key = Vec<(String, Option<Vec<u8>>)>;

/// The key of a row of `rel` (`cols` in `rel`'s column order).
fn key_of(rel: &Rel, cols: impl Fn(usize) -> Option<Vec<u8>>) -> Key {
    let mut k: Key = rel.key.iter().map(|&i| (rel.names[i].clone(), cols(i))).collect();
    k.sort_by(|a, b| a.0.cmp(&b.0));
    k
}

/// Which transactions a snapshot sees, on the 32-bit transaction ids pgoutput sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Visibility {
    xmin: u32,
    xmax: u32,
    xip: HashSet<u32>,
}

/// `a` is older than `b`, modulo wraparound (PostgreSQL's TransactionIdPrecedes).
fn precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl Visibility {
    /// `pg_current_snapshot()` as text: `xmin:xmax:xip,xip,…` of 64-bit ids.
    pub(super) fn parse(text: &str) -> Option<Visibility> {
        let mut parts = text.trim().splitn(3, ':');
        let low = |s: &str| s.parse::<u64>().ok().map(|x| x as u32);
        let xmin = low(parts.next()?)?;
        let xmax = low(parts.next()?)?;
        let xip = match parts.next() {
            Some("") | None => HashSet::new(),
            Some(list) => list.split(',').map(low).collect::<Option<HashSet<u32>>>()?,
        };
        Some(Visibility { xmin, xmax, xip })
    }

    /// Whether a transaction's committed changes are in what the snapshot saw.
    pub(super) fn sees(&self, xid: u32) -> bool {
        precedes(xid, self.xmin) || (precedes(xid, self.xmax) && !self.xip.contains(&xid))
    }
}

/// A chunk read, waiting for its watermark.
pub(super) struct Chunk {
    seq: u64,
    rel: Arc<Rel>,
    rows: Vec<(Key, Vec<Option<Vec<u8>>>)>,
    visibility: Visibility,
    /// Fewer rows than asked: the table is complete with this chunk.
    last: bool,
}

/// How long a chunk waits before it is read again because a commit it must see is not visible.
const INVISIBLE_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// How many decoded commits [`Decoded`] remembers (12 bytes each, about 1 MiB in all).
pub(super) const RECENT_COMMITS: usize = 1 << 16;

/// The xids of the commits decoded lately, each with its decoding order: what a table queued by
/// a signal needs to know of the time before it was tracked.
#[derive(Default)]
pub(super) struct Decoded {
    seq: u64,
    by_xid: HashMap<u32, u64>,
    order: std::collections::VecDeque<u32>,
}

impl Decoded {
    pub(super) fn note(&mut self, xid: u32) {
        self.seq += 1;
        if self.order.len() >= RECENT_COMMITS
            && let Some(old) = self.order.pop_front()
        {
            self.by_xid.remove(&old);
        }
        self.order.push_back(xid);
        self.by_xid.insert(xid, self.seq);
    }

    pub(super) fn seq(&self) -> u64 {
        self.seq
    }

    /// Forgets what a snapshot sees: every later snapshot sees it too.
    fn forget_seen(&mut self, v: &Visibility) {
        self.by_xid.retain(|xid, _| !v.sees(*xid));
        self.order.retain(|xid| self.by_xid.contains_key(xid));
    }
}

/// The state of the incremental snapshots of one run of the task.
pub(super) struct Incremental {
    pub(super) queue: SnapshotQueue,
    chunk: Option<Chunk>,
    /// The watermark of `chunk` has arrived: its rows go out before anything decoded after it.
    ready: bool,
    /// Keys of the pending tables changed by committed transactions, by table and transaction
    /// id: kept for every pending table from the stream's start, so a transaction decoded before
    /// its table's turn (still invisible, as behind a synchronous standby) is known at that turn.
    touched: HashMap<(String, String), HashMap<u32, Vec<Key>>>,
    /// Committed transactions that changed a pending table in a way whose keys are not known
    /// (streamed while in progress, or a TRUNCATE): a chunk whose snapshot did not see one is
    /// read again.
    touched_unknown: HashSet<u32>,
    /// Transactions streamed while in progress that changed a pending table, not committed yet.
    streaming: HashSet<u32>,
    /// The decoding order ([`Decoded`]) from which each table queued by a signal is tracked.
    since: HashMap<TableName, u64>,
    /// A chunk read again because of a commit not yet visible waits until then.
    pub(super) retry_at: Option<tokio::time::Instant>,
    /// Tells this run's watermarks from an earlier run's still in the WAL.
    nonce: u64,
    seq: u64,
    chunk_size: usize,
}

impl Incremental {
    pub(super) fn new(queue: SnapshotQueue, chunk_size: usize) -> Self {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        Incremental {
            queue,
            chunk: None,
            ready: false,
            touched: HashMap::new(),
            touched_unknown: HashSet::new(),
            streaming: HashSet::new(),
            since: HashMap::new(),
            retry_at: None,
            nonce,
            seq: 0,
            chunk_size: chunk_size.max(1),
        }
    }

    pub(super) fn offset(&self) -> Option<IncrementalOffset> {
        self.queue.offset()
    }

    /// A chunk should be read now.
    pub(super) fn wants_chunk(&self) -> bool {
        self.queue.ready() && self.chunk.is_none() && self.retry_at.is_none_or(|t| t <= tokio::time::Instant::now())
    }

    /// Acts on a signal, `decoded` commits having been decoded so far and the transactions
    /// `open_streams` being streamed while in progress. Tables it queues are tracked from here
    /// on. While paused nothing is tracked (so nothing grows) and no chunk is in flight; a resume
    /// starts tracking afresh.
    pub(super) fn apply(
        &mut self,
        signal: &Signal,
        captured: &[TableName],
        decoded: u64,
        open_streams: &HashSet<u32>,
    ) -> Applied {
        let applied = self.queue.apply(signal, captured);
        for t in &applied.added {
            self.since.insert(t.clone(), decoded);
        }
        if !applied.added.is_empty() || matches!(signal, Signal::Resume) {
            // Their changes before now were not noted: treated as changing every key.
            self.streaming.extend(open_streams.iter().copied());
        }
        if applied.front_removed || self.queue.paused {
            // Its rows would go out with keys changed meanwhile unknown (or it is gone).
            self.chunk = None;
            self.ready = false;
        }
        if self.queue.paused {
            self.touched.clear();
            self.touched_unknown.clear();
        } else if matches!(signal, Signal::Resume) {
            for t in self.queue.iter() {
                self.since.insert(t.clone(), decoded);
            }
        }
        applied
    }

    /// The watermark of the chunk in flight has arrived.
    pub(super) fn is_ready(&self) -> bool {
        self.ready
    }

    fn is_pending(&self, rel: &Rel) -> bool {
        self.queue.iter().any(|(s, t)| *s == rel.schema && *t == rel.table)
    }

    /// A change of `rel` by transaction `xid` (streamed while in progress or not).
    pub(super) fn note_change(&mut self, rel: &Rel, xid: u32, streamed: bool, cols: &[Col<'_>]) {
        if !self.is_pending(rel) {
            return;
        }
        if streamed {
            self.streaming.insert(xid);
            return;
        }
        if self.queue.paused {
            return;
        }
        let key = key_of(rel, |i| match cols.get(i) {
            Some(Col::Text(t) | Col::Binary(t)) => Some(t.to_vec()),
            _ => None,
        });
        self.touched
            .entry((rel.schema.clone(), rel.table.clone()))
            .or_default()
            .entry(xid)
            .or_default()
            .push(key);
    }

    /// A TRUNCATE of `rel` by transaction `xid`: every key of it changed.
    pub(super) fn note_truncate(&mut self, rel: &Rel, xid: u32) {
        if self.is_pending(rel) && !self.queue.paused {
            self.touched_unknown.insert(xid);
        }
    }

    pub(super) fn stream_committed(&mut self, xid: u32) {
        if self.streaming.remove(&xid) {
            self.touched_unknown.insert(xid);
        }
    }

    pub(super) fn stream_aborted(&mut self, xid: u32, subxid: u32) {
        // A subtransaction's abort keeps the mark: the rest may still commit.
        if xid == subxid {
            self.streaming.remove(&xid);
        }
    }

    fn watermark(&self, slot: &str, seq: u64) -> String {
        format!("{slot}/{:x}/{seq}", self.nonce)
    }

    /// A logical message decoded: whether it is the watermark of the chunk in flight.
    pub(super) fn on_message(&mut self, slot: &str, prefix: &str, content: &[u8]) {
        if prefix != WATERMARK_PREFIX {
            return;
        }
        if let Some(c) = &self.chunk
            && content == self.watermark(slot, c.seq).as_bytes()
        {
            self.ready = true;
        }
    }

    /// The rows of the chunk whose watermark came, as records, and the progress moved past them;
    /// `None` when the chunk must be read again (a transaction streamed while in progress, which
    /// its snapshot did not see, changed the table: its keys are not known). A report line too.
    pub(super) fn take_chunk(
        &mut self,
        format: crate::cdc::RecordFormat,
        origin: &Origin<'_>,
        decoded: Option<&Decoded>,
    ) -> (Option<Vec<Record>>, String) {
        self.ready = false;
        let Some(c) = self.chunk.take() else {
            return (Some(Vec::new()), String::new());
        };
        let unseen = |xid: &u32| !c.visibility.sees(*xid);
        if self.touched_unknown.iter().any(unseen) {
            return (
                None,
                format!(
                    "incremental snapshot {}.{}: chunk read again",
                    c.rel.schema, c.rel.table
                ),
            );
        }
        let table = (c.rel.schema.clone(), c.rel.table.clone());
        let since = self.since.get(&table).copied();
        // Any xid the snapshot does not see: in its in-progress list, or at or past its xmax (a
        // held commit does not move xmax).
        if let (Some(since), Some(decoded)) = (since, decoded)
            && let Some(x) = decoded
                .by_xid
                .iter()
                .find(|(x, at)| **at <= since && !c.visibility.sees(**x))
                .map(|(x, _)| *x)
        {
            // Committed before this table was tracked, and still invisible: its keys are not
            // known. Read again once it shows.
            self.retry_at = Some(tokio::time::Instant::now() + INVISIBLE_RETRY);
            return (
                None,
                format!(
                    "incremental snapshot {}.{}: chunk read again (transaction {x} committed but not visible yet)",
                    c.rel.schema, c.rel.table
                ),
            );
        }
        self.retry_at = None;
        let changed: HashSet<&Key> = self
            .touched
            .get(&table)
            .into_iter()
            .flat_map(|by_xid| by_xid.iter())
            .filter(|(xid, _)| unseen(xid))
            .flat_map(|(_, keys)| keys.iter())
            .collect();
        let mut records = Vec::with_capacity(c.rows.len());
        for (key, values) in &c.rows {
            if changed.contains(key) {
                continue;
            }
            let cols: Vec<Col<'_>> = values
                .iter()
                .map(|v| v.as_deref().map_or(Col::Null, Col::Text))
                .collect();
            records.push(change(format, &c.rel, Op::Read, None, Some(&cols), origin));
        }
        let name = format!("{}.{}", c.rel.schema, c.rel.table);
        // In the key's own column order, as the next chunk's query compares it.
        let after = if c.last {
            None
        } else {
            c.rows.last().map(|(_, values)| {
                c.rel
                    .key
                    .iter()
                    .map(|&i| {
                        String::from_utf8_lossy(values.get(i).cloned().flatten().as_deref().unwrap_or_default())
                            .into_owned()
                    })
                    .collect()
            })
        };
        self.queue.advance(c.rows.len(), after);
        let report = self.queue.report(&name, c.last);
        if c.last {
            tracing::info!(table = %name, rows = self.queue.rows, "incremental snapshot finished");
            self.skip_current();
        }
        (Some(records), report)
    }

    /// The first table is done, or gone (dropped since it was listed): the next one's turn.
    fn skip_current(&mut self) {
        if let Some(t) = self.queue.pop_front() {
            self.touched.remove(&t);
            self.since.remove(&t);
        }
    }
}

impl PgSource {
    /// Reads the next chunk of the first pending table in a snapshot of its own, then writes the
    /// chunk's watermark into the WAL.
    pub(super) async fn read_chunk(&mut self) -> Result<(), ConnectorError> {
        let result = self.read_chunk_inner().await;
        if result.is_err() {
            // The catalog connection may be inside a failed transaction: start afresh.
            self.control = None;
        }
        result
    }

    async fn read_chunk_inner(&mut self) -> Result<(), ConnectorError> {
        let Some(inc) = self.inc.as_ref() else { return Ok(()) };
        let Some((schema, table)) = inc.queue.front().cloned() else {
            return Ok(());
        };
        let after = inc.queue.after.clone();
        let limit = inc.chunk_size;
        let first = after.is_none() && inc.queue.rows == 0;
        let mut types = std::mem::take(&mut self.types);
        let looked = async {
            let conn = self.control().await?;
            let info = crate::postgres::table_info(conn, &schema, &table)
                .await
                .map_err(|e| query_error("reading the catalog", e))?;
            if let Some(info) = &info {
                let oids: Vec<u32> = info.columns.iter().map(|c| c.1).collect();
                learn_types(conn, &mut types, &oids).await?;
            }
            Ok::<_, ConnectorError>(info)
        }
        .await;
        self.types = types;
        let Some(info) = looked? else {
            tracing::warn!(table = %format!("{schema}.{table}"), "table gone before its incremental snapshot finished");
            if let Some(inc) = self.inc.as_mut() {
                inc.skip_current();
            }
            return Ok(());
        };
        if info.key.is_empty() {
            return Err(ConnectorError::config(format!(
                "tables: {schema}.{table} has no primary key (nor replica identity index): an incremental snapshot \
                 copies by key"
            )));
        }
        let rel = Arc::new(self.table_rel(&schema, &table, &info)?);
        let cols = rel.names.iter().map(|n| ident(n)).collect::<Vec<_>>().join(", ");
        let keys = rel
            .key
            .iter()
            .map(|&i| ident(&rel.names[i]))
            .collect::<Vec<_>>()
            .join(", ");
        let filter = match &after {
            Some(k) => format!(
                " WHERE ({keys}) > ({})",
                k.iter().map(|v| literal(v)).collect::<Vec<_>>().join(", ")
            ),
            None => String::new(),
        };
        let select = format!(
            "SELECT {cols} FROM {}.{}{filter} ORDER BY {keys} LIMIT {limit}",
            ident(&schema),
            ident(&table)
        );
        let conn = self.control().await?;
        let err = |e| query_error("incremental snapshot", e);
        conn.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(err)?;
        let visibility = conn
            .query("SELECT pg_current_snapshot()::text")
            .await
            .map_err(err)?
            .first()
            .and_then(|r| r[0].as_deref().and_then(Visibility::parse))
            .ok_or_else(|| ConnectorError::internal("pg_current_snapshot() gave nothing readable"))?;
        let estimate = if first {
            conn.query(&format!(
                "SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = {}",
                info.oid
            ))
            .await
            .map_err(err)?
            .first()
            .and_then(|r| r[0].as_deref().and_then(|s| s.parse::<u64>().ok()))
        } else {
            None
        };
        let mut rows = Vec::with_capacity(limit);
        conn.query_each(&select, |row| {
            let values: Vec<Option<Vec<u8>>> = (0..row.len()).map(|i| row.get(i).map(<[u8]>::to_vec)).collect();
            let key = key_of(&rel, |i| values.get(i).cloned().flatten());
            rows.push((key, values));
            Ok(())
        })
        .await
        .map_err(err)?;
        conn.query("COMMIT").await.map_err(err)?;
        let inc = self.inc.as_mut().expect("checked above");
        if let Some(e) = estimate {
            inc.queue.estimate = e;
            tracing::info!(table = %format!("{schema}.{table}"), estimate = e, "incremental snapshot started");
        }
        // Transactions every later snapshot sees can no longer matter.
        for by_xid in inc.touched.values_mut() {
            by_xid.retain(|xid, _| !precedes(*xid, visibility.xmin));
        }
        inc.touched_unknown.retain(|xid| !precedes(*xid, visibility.xmin));
        if let Some(d) = self.decoded.as_mut() {
            d.forget_seen(&visibility);
        }
        let inc = self.inc.as_mut().expect("checked above");
        inc.seq += 1;
        inc.retry_at = None;
        let seq = inc.seq;
        let last = rows.len() < limit;
        inc.chunk = Some(Chunk {
            seq,
            rel,
            rows,
            visibility,
            last,
        });
        let content = inc.watermark(&self.slot, seq);
        let conn = self.control().await?;
        // A message alone is not flushed: the walsender would send it only after the WAL
        // writer's next flush (wal_writer_delay, 200 ms by default: one chunk per 200 ms). A
        // transaction with an xid flushes at its commit, locally (a synchronous standby is not
        // waited for; the message needs no durability).
        conn.query(&format!(
            "BEGIN; SET LOCAL synchronous_commit = local; SELECT txid_current(); \
             SELECT pg_logical_emit_message(false, {}, {}); COMMIT",
            literal(WATERMARK_PREFIX),
            literal(&content)
        ))
        .await
        .map_err(err)?;
        Ok(())
    }

    /// The chunk whose watermark came, as records (`None`: to be read again), with the report.
    pub(super) fn chunk_records(&mut self, lsn: u64) -> (Option<Vec<Record>>, String) {
        let format = self.cfg.capture.format;
        let db = self.cfg.endpoint.database.clone();
        let origin = Origin {
            lsn,
            tx_id: 0,
            ts_ms: now_ms(),
            snapshot: true,
            db: &db,
        };
        match self.inc.as_mut() {
            Some(inc) => inc.take_chunk(format, &origin, self.decoded.as_ref()),
            None => (Some(Vec::new()), String::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_distrusts_transactions_streamed_before_it() {
        let captured = [("public".to_owned(), "t".to_owned())];
        let mut inc = Incremental::new(SnapshotQueue::default(), 10);
        let open: HashSet<u32> = [5, 9].into_iter().collect();
        let a = inc.apply(
            &Signal::ExecuteSnapshot {
                collections: vec!["public.t".into()],
            },
            &captured,
            3,
            &open,
        );
        assert_eq!(a.added.len(), 1);
        assert_eq!(inc.since.get(&captured[0]), Some(&3));
        // Streamed before the signal, committed after it: its keys of `t` were never noted.
        inc.stream_committed(5);
        assert!(inc.touched_unknown.contains(&5));
        inc.stream_aborted(9, 9);
        assert!(!inc.touched_unknown.contains(&9));
        // Paused: the chunk in flight and what was tracked go.
        inc.apply(&Signal::Pause, &captured, 4, &HashSet::new());
        assert!(inc.touched_unknown.is_empty() && !inc.wants_chunk());
        assert!(inc.offset().is_some_and(|o| o.paused));
    }

    #[test]
    fn decoded_commits_are_bounded_and_forgotten_once_seen() {
        let mut d = Decoded::default();
        for x in 0..(RECENT_COMMITS as u32 + 10) {
            d.note(x);
        }
        assert_eq!(d.by_xid.len(), RECENT_COMMITS);
        assert!(!d.by_xid.contains_key(&0) && d.by_xid.contains_key(&(RECENT_COMMITS as u32 + 9)));
        d.forget_seen(&Visibility::parse(&format!("{0}:{0}:", RECENT_COMMITS + 5)).unwrap());
        assert_eq!(d.by_xid.len(), 5);
        assert_eq!(d.order.len(), 5);
    }

    #[test]
    fn visibility_follows_the_snapshot_and_wraps_around() {
        let v = Visibility::parse("100:110:102,105").unwrap();
        assert!(v.sees(99) && v.sees(101) && v.sees(109));
        assert!(!v.sees(102) && !v.sees(105) && !v.sees(110) && !v.sees(200));
        assert_eq!(Visibility::parse("7:7:").unwrap().xip.len(), 0);
        // 64-bit ids of a later epoch: compared on their low 32 bits, modulo wraparound.
        let epoch = 1u64 << 32;
        let v = Visibility::parse(&format!("{}:{}:", epoch - 5, epoch + 3)).unwrap();
        assert!(v.sees((epoch - 6) as u32) && v.sees(1) && !v.sees(3) && !v.sees(4));
        assert!(Visibility::parse("x:1:").is_none());
    }
}
