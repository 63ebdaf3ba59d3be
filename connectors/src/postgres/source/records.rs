//! Change records as the stream holds them: HStream IO's `{"key", "value"}` or Debezium's
//! envelope, written straight to protobuf Struct bytes.

use hstream_runtime::Record;

use crate::cdc::{self, RecordFormat, RowImage};
pub(super) use crate::cdc::{Op, now_ms};
use crate::pbstruct as pb;
use crate::postgres::pgoutput::Col;
use crate::postgres::types::{self, Kind};
use crate::selection::{self, ColumnRule, Selection};
use std::sync::Arc;

/// A captured table as the stream encodes it.
#[derive(Debug)]
pub(super) struct Rel {
    pub(super) schema: String,
    pub(super) table: String,
    pub(super) names: Vec<String>,
    pub(super) kinds: Vec<Kind>,
    pub(super) key: Vec<usize>,
    /// Set on each of its records: the table's identity (`cdc::source_attributes`).
    pub(super) attributes: hstream_runtime::Attributes,
    /// What each column shows (empty: every column as it is), by `selection`.
    pub(super) rules: Vec<ColumnRule>,
    pub(super) selection: Arc<Selection>,
}

/// Where a change came from (Debezium's `source` block).
pub(super) struct Origin<'a> {
    pub(super) lsn: u64,
    pub(super) tx_id: u32,
    pub(super) ts_ms: i64,
    pub(super) snapshot: bool,
    pub(super) db: &'a str,
}

pub(super) fn write_row(buf: &mut Vec<u8>, rel: &Rel, cols: &[Col<'_>]) {
    for (i, c) in cols.iter().enumerate() {
        let (Some(name), Some(kind)) = (rel.names.get(i), rel.kinds.get(i)) else {
            break;
        };
        match (selection::rule(&rel.rules, i), c) {
            (ColumnRule::Exclude, _) => {}
            (_, Col::Null) => pb::field(buf, name, pb::null),
            // An unchanged TOASTed value is not sent: the column is left out, not nulled.
            (_, Col::Unchanged) => {}
            (ColumnRule::Mask, _) => pb::field(buf, name, |b| pb::string(b, rel.selection.mask())),
            (ColumnRule::Hash, Col::Text(t) | Col::Binary(t)) => {
                pb::field(buf, name, |b| pb::string(b, &rel.selection.hash(t)))
            }
            (_, Col::Text(t)) => pb::field(buf, name, |b| types::write_value(b, kind, t)),
            (_, Col::Binary(t)) => pb::field(buf, name, |b| pb::string_bytes(b, t)),
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

/// One row image of `rel`, as the shared record writer takes it.
struct Image<'r, 'c> {
    rel: &'r Rel,
    cols: &'r [Col<'c>],
}

impl RowImage for Image<'_, '_> {
    fn has_key(&self) -> bool {
        !self.rel.key.is_empty()
    }
    fn write_row(&self, buf: &mut Vec<u8>) {
        write_row(buf, self.rel, self.cols)
    }
    fn write_key(&self, buf: &mut Vec<u8>) {
        write_key(buf, self.rel, self.cols)
    }
    fn partition_key(&self) -> String {
        partition_key(self.rel, self.cols)
    }
}

pub(super) fn change(
    format: RecordFormat,
    rel: &Rel,
    op: Op,
    before: Option<&[Col<'_>]>,
    after: Option<&[Col<'_>]>,
    origin: &Origin<'_>,
) -> Record {
    let img = |cols| Image { rel, cols };
    let mut r = cdc::change(format, op, before.map(img).as_ref(), after.map(img).as_ref(), |b| {
        write_source_fields(b, rel, origin)
    });
    r.attributes = rel.attributes.clone();
    r
}

pub(super) fn write_source_fields(b: &mut Vec<u8>, rel: &Rel, origin: &Origin<'_>) {
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
}
