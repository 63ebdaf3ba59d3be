//! Transactions streamed while in progress (pgoutput protocol 2), held until they commit or
//! abort, within a memory budget: past it, a transaction's changes go to a temporary file
//! (unnamed, gone with the process) and are read back in chunks when it commits. So a
//! transaction larger than memory costs disk, not memory.
//!
//! The file is written and read with buffered std IO on the task's thread: page-cache writes of
//! a path taken only by oversized transactions.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};

use bytes::Bytes;
use hstream_runtime::{PayloadFlag, Record};

/// Changes of one in-progress transaction.
#[derive(Default)]
struct Txn {
    /// In memory, with their subtransaction ids.
    mem: Vec<(u32, Record)>,
    bytes: usize,
    file: Option<BufWriter<std::fs::File>>,
    /// Subtransactions aborted after some of their changes were spilled.
    aborted: HashSet<u32>,
}

/// The in-progress transactions of one replication stream.
pub(super) struct InProgress {
    budget: usize,
    used: usize,
    txns: HashMap<u32, Txn>,
}

/// A committed transaction's changes, in order.
pub(super) enum Committed {
    Memory(Vec<Record>),
    Spilled(SpillReader),
}

impl InProgress {
    pub(super) fn new(budget: usize) -> InProgress {
        InProgress {
            budget,
            used: 0,
            txns: HashMap::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }

    /// Memory held by changes not yet committed.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.used
    }

    /// Adds changes of subtransaction `sub` of `xid`; spills `xid` once the budget is passed.
    pub(super) fn add(&mut self, xid: u32, sub: u32, records: &mut Vec<Record>) -> io::Result<()> {
        let txn = self.txns.entry(xid).or_default();
        if let Some(w) = &mut txn.file {
            for r in records.drain(..) {
                write_record(w, sub, &r)?;
            }
            return Ok(());
        }
        for r in records.drain(..) {
            let size = held_size(&r);
            txn.bytes += size;
            self.used += size;
            txn.mem.push((sub, r));
        }
        if self.used > self.budget {
            let mut w = BufWriter::with_capacity(1 << 16, tempfile::tempfile()?);
            for (s, r) in txn.mem.drain(..) {
                write_record(&mut w, s, &r)?;
            }
            tracing::info!(
                xid,
                bytes = txn.bytes,
                budget = self.budget,
                "in-progress transaction over the streaming memory budget: spilled to a temporary file"
            );
            self.used -= txn.bytes;
            txn.bytes = 0;
            txn.mem = Vec::new();
            txn.file = Some(w);
        }
        Ok(())
    }

    /// A whole transaction (`sub == xid`) or one subtransaction aborted.
    pub(super) fn abort(&mut self, xid: u32, sub: u32) {
        if xid == sub {
            if let Some(t) = self.txns.remove(&xid) {
                self.used -= t.bytes;
            }
            return;
        }
        if let Some(t) = self.txns.get_mut(&xid) {
            let mut removed = 0;
            t.mem.retain(|(s, r)| {
                let keep = *s != sub;
                if !keep {
                    removed += held_size(r);
                }
                keep
            });
            t.bytes -= removed;
            self.used -= removed;
            if t.file.is_some() {
                t.aborted.insert(sub);
            }
        }
    }

    /// The changes of `xid`, which committed; `None` if it had none.
    pub(super) fn commit(&mut self, xid: u32) -> io::Result<Option<Committed>> {
        let Some(t) = self.txns.remove(&xid) else {
            return Ok(None);
        };
        self.used -= t.bytes;
        match t.file {
            None => Ok(Some(Committed::Memory(t.mem.into_iter().map(|(_, r)| r).collect()))),
            Some(w) => {
                let mut file = w.into_inner().map_err(io::IntoInnerError::into_error)?;
                file.rewind()?;
                Ok(Some(Committed::Spilled(SpillReader {
                    r: BufReader::with_capacity(1 << 16, file),
                    aborted: t.aborted,
                })))
            }
        }
    }
}

/// Memory a held record takes: its encoded size plus the record itself and its attributes'
/// allocations (estimated), so that many small rows count for what they cost.
fn held_size(r: &Record) -> usize {
    r.encoded_size_bound() + std::mem::size_of::<(u32, Record)>() + 64 * r.attributes.len()
}

/// Reads a spilled transaction back, in order, skipping aborted subtransactions.
pub(super) struct SpillReader {
    r: BufReader<std::fs::File>,
    aborted: HashSet<u32>,
}

impl SpillReader {
    /// Up to `n` more records; empty at the end.
    pub(super) fn next_chunk(&mut self, n: usize) -> io::Result<Vec<Record>> {
        let mut out = Vec::with_capacity(n.min(4096));
        while out.len() < n {
            let Some((sub, r)) = read_record(&mut self.r)? else {
                break;
            };
            if !self.aborted.contains(&sub) {
                out.push(r);
            }
        }
        Ok(out)
    }
}

/// `sub u32, key, flag u8, payload, attribute count u32, (name, value)…`; byte strings are a
/// u32 length and the bytes (little-endian throughout).
fn write_record(w: &mut impl Write, sub: u32, r: &Record) -> io::Result<()> {
    let bytes = |w: &mut dyn Write, b: &[u8]| -> io::Result<()> {
        w.write_all(&(b.len() as u32).to_le_bytes())?;
        w.write_all(b)
    };
    w.write_all(&sub.to_le_bytes())?;
    bytes(w, r.key.as_bytes())?;
    w.write_all(&[u8::from(r.flag == PayloadFlag::Raw)])?;
    bytes(w, &r.payload)?;
    w.write_all(&(r.attributes.len() as u32).to_le_bytes())?;
    for (k, v) in &r.attributes {
        bytes(w, k.as_bytes())?;
        bytes(w, v.as_bytes())?;
    }
    Ok(())
}

fn read_record(r: &mut impl Read) -> io::Result<Option<(u32, Record)>> {
    let mut word = [0u8; 4];
    match r.read_exact(&mut word) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let sub = u32::from_le_bytes(word);
    let bytes = |r: &mut dyn Read| -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len)?;
        let mut b = vec![0u8; u32::from_le_bytes(len) as usize];
        r.read_exact(&mut b)?;
        Ok(b)
    };
    let text = |b: Vec<u8>| String::from_utf8(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
    let key = text(bytes(r)?)?;
    let mut flag = [0u8; 1];
    r.read_exact(&mut flag)?;
    let flag = if flag[0] == 1 {
        PayloadFlag::Raw
    } else {
        PayloadFlag::Json
    };
    let payload = Bytes::from(bytes(r)?);
    r.read_exact(&mut word)?;
    let mut record = Record::new(key, flag, payload);
    for _ in 0..u32::from_le_bytes(word) {
        let k = text(bytes(r)?)?;
        let v = text(bytes(r)?)?;
        record.attributes.insert(k, v);
    }
    Ok(Some((sub, record)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize) -> Record {
        let mut r = Record::new(format!("k{i}"), PayloadFlag::Json, vec![b'x'; 100]);
        if i.is_multiple_of(2) {
            r.attributes.insert("n".into(), i.to_string());
        }
        r
    }

    fn drain(c: Committed) -> Vec<Record> {
        match c {
            Committed::Memory(v) => v,
            Committed::Spilled(mut s) => {
                let mut all = Vec::new();
                loop {
                    let chunk = s.next_chunk(7).unwrap();
                    if chunk.is_empty() {
                        return all;
                    }
                    all.extend(chunk);
                }
            }
        }
    }

    #[test]
    fn over_the_budget_a_transaction_spills_and_reads_back_in_order() {
        let mut ip = InProgress::new(10_000);
        // Transaction 1 stays small; transaction 2 passes the budget, with subtransaction 3
        // aborted after it spilled and subtransaction 4 before the end.
        ip.add(1, 1, &mut vec![rec(0), rec(1)]).unwrap();
        for i in 0..200 {
            let sub = if (50..60).contains(&i) { 3 } else { 2 };
            ip.add(2, sub, &mut vec![rec(i)]).unwrap();
        }
        assert!(ip.used() < 10_000, "spilled: {}", ip.used());
        ip.abort(2, 3);
        ip.add(2, 4, &mut vec![rec(1000)]).unwrap();
        let got = drain(ip.commit(2).unwrap().unwrap());
        let want: Vec<Record> = (0..200)
            .filter(|i| !(50..60).contains(i))
            .map(rec)
            .chain([rec(1000)])
            .collect();
        assert_eq!(got, want);
        assert!(matches!(ip.commit(1).unwrap(), Some(Committed::Memory(v)) if v == vec![rec(0), rec(1)]));
        assert!(ip.is_empty());
        assert_eq!(ip.used(), 0);
        // An aborted transaction leaves nothing behind.
        ip.add(5, 5, &mut vec![rec(1)]).unwrap();
        ip.abort(5, 5);
        assert!(ip.commit(5).unwrap().is_none());
        assert_eq!(ip.used(), 0);
    }
}
