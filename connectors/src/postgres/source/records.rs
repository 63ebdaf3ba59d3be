//! Change records as the stream holds them: HStream IO's `{"key", "value"}` or Debezium's
//! envelope, written straight to protobuf Struct bytes.

use bytes::Bytes;
use hstream_runtime::{PayloadFlag, Record};

use super::RecordFormat;
use crate::pbstruct as pb;
use crate::postgres::pgoutput::Col;
use crate::postgres::types::{self, Kind};

/// A captured table as the stream encodes it.
#[derive(Debug)]
pub(super) struct Rel {
    pub(super) schema: String,
    pub(super) table: String,
    pub(super) names: Vec<String>,
    pub(super) kinds: Vec<Kind>,
    pub(super) key: Vec<usize>,
}

/// Where a change came from (Debezium's `source` block).
pub(super) struct Origin<'a> {
    pub(super) lsn: u64,
    pub(super) tx_id: u32,
    pub(super) ts_ms: i64,
    pub(super) snapshot: bool,
    pub(super) db: &'a str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Read,
    Create,
    Update,
    Delete,
}

impl Op {
    fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
        }
    }
}

pub(super) fn write_row(buf: &mut Vec<u8>, rel: &Rel, cols: &[Col<'_>]) {
    for (i, c) in cols.iter().enumerate() {
        let (Some(name), Some(kind)) = (rel.names.get(i), rel.kinds.get(i)) else {
            break;
        };
        match c {
            Col::Null => pb::field(buf, name, pb::null),
            // An unchanged TOASTed value is not sent: the column is left out, not nulled.
            Col::Unchanged => {}
            Col::Text(t) => pb::field(buf, name, |b| types::write_value(b, kind, t)),
            Col::Binary(t) => pb::field(buf, name, |b| pb::string_bytes(b, t)),
        }
    }
}

pub(super) fn write_key(buf: &mut Vec<u8>, rel: &Rel, cols: &[Col<'_>]) {
    for &i in &rel.key {
        let name = &rel.names[i];
        match cols.get(i) {
            Some(Col::Text(t)) => pb::field(buf, name, |b| types::write_value(b, &rel.kinds[i], t)),
            _ => pb::field(buf, name, pb::null),
        }
    }
}

/// The partition key: the key columns' text, comma separated.
pub(super) fn partition_key(rel: &Rel, cols: &[Col<'_>]) -> String {
    let mut k = String::new();
    for (n, &i) in rel.key.iter().enumerate() {
        if n > 0 {
            k.push(',');
        }
        if let Some(Col::Text(t)) = cols.get(i) {
            match std::str::from_utf8(t) {
                Ok(text) => k.push_str(text),
                Err(_) => k.push_str(&String::from_utf8_lossy(t)),
            }
        }
    }
    k
}

pub(super) fn same_key(rel: &Rel, a: &[Col<'_>], b: &[Col<'_>]) -> bool {
    rel.key.iter().all(|&i| a.get(i) == b.get(i))
}

pub(super) fn change(
    format: RecordFormat,
    rel: &Rel,
    op: Op,
    before: Option<&[Col<'_>]>,
    after: Option<&[Col<'_>]>,
    origin: &Origin<'_>,
) -> Record {
    let keyed = after.or(before).unwrap_or(&[]);
    let key = partition_key(rel, keyed);
    let mut buf = Vec::with_capacity(256);
    match format {
        RecordFormat::Hstream => {
            pb::field(&mut buf, "key", |b| {
                if rel.key.is_empty() {
                    pb::null(b)
                } else {
                    pb::object(b, |b| write_key(b, rel, keyed))
                }
            });
            pb::field(&mut buf, "value", |b| match after {
                Some(cols) => pb::object(b, |b| write_row(b, rel, cols)),
                None => pb::null(b),
            });
        }
        RecordFormat::Debezium => {
            for (name, cols) in [("before", before), ("after", after)] {
                pb::field(&mut buf, name, |b| match cols {
                    Some(cols) => pb::object(b, |b| write_row(b, rel, cols)),
                    None => pb::null(b),
                });
            }
            pb::field(&mut buf, "op", |b| pb::string(b, op.code()));
            pb::field(&mut buf, "ts_ms", |b| pb::number(b, now_ms() as f64));
            pb::field(&mut buf, "source", |b| write_source(b, rel, origin));
        }
    }
    Record {
        key,
        flag: PayloadFlag::Json,
        payload: Bytes::from(buf),
    }
}

pub(super) fn write_source(b: &mut Vec<u8>, rel: &Rel, origin: &Origin<'_>) {
    pb::object(b, |b| {
        pb::field(b, "connector", |b| pb::string(b, "postgresql"));
        pb::field(b, "db", |b| pb::string(b, origin.db));
        pb::field(b, "schema", |b| pb::string(b, &rel.schema));
        pb::field(b, "table", |b| pb::string(b, &rel.table));
        pb::field(b, "lsn", |b| pb::number(b, origin.lsn as f64));
        pb::field(b, "txId", |b| pb::number(b, f64::from(origin.tx_id)));
        pb::field(b, "ts_ms", |b| pb::number(b, origin.ts_ms as f64));
        pb::field(b, "snapshot", |b| {
            pb::string(b, if origin.snapshot { "true" } else { "false" })
        });
    })
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
