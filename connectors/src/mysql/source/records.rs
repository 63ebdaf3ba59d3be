//! Change records of MySQL rows, through the shared CDC record writer.

use hstream_runtime::Record;

use super::schema::Table;
use crate::cdc::{self, Op, RecordFormat, RowImage};
use crate::mysql::values::{self, Cell};
use crate::pbstruct as pb;
use crate::selection::{self, ColumnRule};

/// Where a change came from (Debezium's `source` block for MySQL).
pub struct Origin<'a> {
    pub file: &'a str,
    pub pos: u64,
    pub gtid: Option<&'a str>,
    pub server_id: u32,
    pub ts_ms: i64,
    pub snapshot: bool,
}

pub struct Image<'r, 'c> {
    pub table: &'r Table,
    pub cells: &'r [Cell<'c>],
}

impl RowImage for Image<'_, '_> {
    fn has_key(&self) -> bool {
        !self.table.key.is_empty()
    }

    fn write_row(&self, buf: &mut Vec<u8>) {
        let t = self.table;
        for (i, ((name, kind), cell)) in t.columns.iter().zip(&t.kinds).zip(self.cells).enumerate() {
            match (selection::rule(&t.rules, i), cell) {
                (ColumnRule::Exclude, _) | (_, Cell::Absent) => {}
                (ColumnRule::Keep, _) | (_, Cell::Null) => pb::field(buf, name, |b| values::write(b, kind, cell)),
                (ColumnRule::Mask, _) => pb::field(buf, name, |b| pb::string(b, t.selection.mask())),
                (ColumnRule::Hash, _) => {
                    let text = values::text(kind, cell);
                    pb::field(buf, name, |b| pb::string(b, &t.selection.hash(text.as_bytes())))
                }
            }
        }
    }

    fn write_key(&self, buf: &mut Vec<u8>) {
        for &i in &self.table.key {
            if let (Some(name), Some(kind), Some(cell)) =
                (self.table.columns.get(i), self.table.kinds.get(i), self.cells.get(i))
            {
                pb::field(buf, name, |b| values::write(b, kind, cell));
            }
        }
    }

    fn partition_key(&self) -> String {
        let mut k = String::new();
        for (n, &i) in self.table.key.iter().enumerate() {
            if n > 0 {
                k.push(',');
            }
            if let (Some(kind), Some(cell)) = (self.table.kinds.get(i), self.cells.get(i))
                && !matches!(cell, Cell::Null | Cell::Absent)
            {
                k.push_str(&values::text(kind, cell));
            }
        }
        k
    }
}

/// Whether two images have the same key.
pub fn same_key(table: &Table, a: &[Cell<'_>], b: &[Cell<'_>]) -> bool {
    table.key.iter().all(|&i| a.get(i) == b.get(i))
}

pub fn change(
    format: RecordFormat,
    table: &Table,
    op: Op,
    before: Option<&[Cell<'_>]>,
    after: Option<&[Cell<'_>]>,
    origin: &Origin<'_>,
) -> Record {
    let img = |cells| Image { table, cells };
    let mut r = cdc::change(format, op, before.map(img).as_ref(), after.map(img).as_ref(), |b| {
        pb::field(b, "connector", |b| pb::string(b, "mysql"));
        pb::field(b, "db", |b| pb::string(b, &table.db));
        pb::field(b, "table", |b| pb::string(b, &table.name));
        pb::field(b, "server_id", |b| pb::number(b, f64::from(origin.server_id)));
        pb::field(b, "file", |b| pb::string(b, origin.file));
        pb::field(b, "pos", |b| pb::number(b, origin.pos as f64));
        if let Some(g) = origin.gtid {
            pb::field(b, "gtid", |b| pb::string(b, g));
        }
        pb::field(b, "ts_ms", |b| pb::number(b, origin.ts_ms as f64));
        pb::field(b, "snapshot", |b| {
            pb::string(b, if origin.snapshot { "true" } else { "false" })
        });
    });
    r.attributes = table.attributes.clone();
    r
}
