//! The binlog events a CDC reader needs, decoded from an event's bytes (post-header and body,
//! checksum removed): TABLE_MAP with its optional metadata, rows events v1 and v2, MariaDB's and
//! MySQL's GTID events, QUERY, XID and ROTATE.

use super::values::{self, Cell, DecodeError, Kind, ty};

pub mod event {
    pub const QUERY: u8 = 2;
    pub const ROTATE: u8 = 4;
    pub const FORMAT_DESCRIPTION: u8 = 15;
    pub const XID: u8 = 16;
    pub const TABLE_MAP: u8 = 19;
    pub const WRITE_ROWS_V1: u8 = 23;
    pub const UPDATE_ROWS_V1: u8 = 24;
    pub const DELETE_ROWS_V1: u8 = 25;
    pub const HEARTBEAT: u8 = 27;
    pub const WRITE_ROWS: u8 = 30;
    pub const UPDATE_ROWS: u8 = 31;
    pub const DELETE_ROWS: u8 = 32;
    pub const MYSQL_GTID: u8 = 33;
    pub const MYSQL_ANONYMOUS_GTID: u8 = 34;
    pub const TRANSACTION_PAYLOAD: u8 = 40;
    pub const PARTIAL_UPDATE_ROWS: u8 = 39;
    pub const MARIADB_GTID: u8 = 162;
    /// MariaDB's compressed QUERY (165) and row events (166–171), written with log_bin_compress.
    pub const MARIADB_QUERY_COMPRESSED: u8 = 165;
    pub const MARIADB_DELETE_ROWS_COMPRESSED: u8 = 171;
}

fn err(what: &str) -> DecodeError {
    DecodeError(format!("malformed {what} event"))
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Reader { b, pos: 0 }
    }
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn uint(&mut self, n: usize) -> Option<u64> {
        Some(self.bytes(n)?.iter().rev().fold(0u64, |a, &x| (a << 8) | u64::from(x)))
    }
    /// A length-encoded integer.
    fn lenenc(&mut self) -> Option<u64> {
        match self.uint(1)? {
            n @ 0..=250 => Some(n),
            252 => self.uint(2),
            253 => self.uint(3),
            254 => self.uint(8),
            _ => None,
        }
    }
    fn lenenc_bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.lenenc()? as usize;
        self.bytes(n)
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.pos.min(self.b.len())..];
        self.pos = self.b.len();
        s
    }
    fn done(&self) -> bool {
        self.pos >= self.b.len()
    }
}

/// TABLE_MAP: the layout of a table's rows in the events that follow, and (with
/// `binlog_row_metadata=FULL`) its column names, signedness, charsets, ENUM/SET values and key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableMap {
    pub table_id: u64,
    pub schema: String,
    pub table: String,
    /// Column types as the row images hold them.
    pub types: Vec<u8>,
    pub metas: Vec<[u8; 2]>,
    pub names: Vec<String>,
    /// One per numeric column, in order (empty when not sent).
    pub unsigned: Vec<bool>,
    /// Collation id per character column, in order (empty when not sent).
    pub charsets: Vec<u16>,
    pub enum_values: Vec<Vec<String>>,
    pub set_values: Vec<Vec<String>>,
    pub primary_key: Option<Vec<usize>>,
}

impl TableMap {
    /// Real type of column `i` (ENUM/SET/CHAR hide in STRING).
    pub fn real_type(&self, i: usize) -> u8 {
        match self.types[i] {
            ty::STRING => values::string_meta(self.metas[i]).0,
            t => t,
        }
    }

    pub fn parse(data: &[u8]) -> Result<TableMap, DecodeError> {
        Self::parse_inner(data).ok_or_else(|| err("TABLE_MAP"))
    }

    fn parse_inner(data: &[u8]) -> Option<TableMap> {
        let mut r = Reader::new(data);
        let table_id = r.uint(6)?;
        r.uint(2)?;
        let n = r.uint(1)? as usize;
        let schema = String::from_utf8_lossy(r.bytes(n)?).into_owned();
        r.uint(1)?;
        let n = r.uint(1)? as usize;
        let table = String::from_utf8_lossy(r.bytes(n)?).into_owned();
        r.uint(1)?;
        let count = r.lenenc()? as usize;
        let types = r.bytes(count)?.to_vec();
        let meta_block = r.lenenc_bytes()?;
        let mut m = Reader::new(meta_block);
        let mut metas = Vec::with_capacity(count);
        for &t in &types {
            let meta = match t {
                ty::FLOAT
                | ty::DOUBLE
                | ty::BLOB
                | ty::TINY_BLOB
                | ty::MEDIUM_BLOB
                | ty::LONG_BLOB
                | ty::GEOMETRY
                | ty::JSON
                | ty::TIME2
                | ty::DATETIME2
                | ty::TIMESTAMP2 => [m.uint(1)? as u8, 0],
                ty::VARCHAR | ty::VAR_STRING => (m.uint(2)? as u16).to_le_bytes(),
                ty::STRING | ty::NEWDECIMAL | ty::BIT | ty::ENUM | ty::SET => {
                    let b = m.bytes(2)?;
                    [b[0], b[1]]
                }
                _ => [0, 0],
            };
            metas.push(meta);
        }
        // Nullability bitmap (not needed: row images carry their own null bits).
        r.bytes(count.div_ceil(8))?;
        let mut tm = TableMap {
            table_id,
            schema,
            table,
            types,
            metas,
            ..TableMap::default()
        };
        let numeric = (0..count).filter(|&i| ty::is_numeric(tm.real_type(i))).count();
        let character: Vec<usize> = (0..count).filter(|&i| ty::is_character(tm.real_type(i))).collect();
        let mut default_charset: Option<(u16, Vec<(usize, u16)>)> = None;
        while !r.done() {
            let t = r.uint(1)?;
            let v = r.lenenc_bytes()?;
            let mut f = Reader::new(v);
            match t {
                // SIGNEDNESS: one bit per numeric column, high bit first; set = unsigned.
                1 => {
                    tm.unsigned = (0..numeric)
                        .map(|i| v.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0))
                        .collect()
                }
                // DEFAULT_CHARSET: a default, then (character column index, collation) pairs.
                2 => {
                    let def = f.lenenc()? as u16;
                    let mut pairs = Vec::new();
                    while !f.done() {
                        pairs.push((f.lenenc()? as usize, f.lenenc()? as u16));
                    }
                    default_charset = Some((def, pairs));
                }
                // COLUMN_CHARSET: one collation per character column.
                3 => {
                    while !f.done() {
                        tm.charsets.push(f.lenenc()? as u16);
                    }
                }
                4 => {
                    while !f.done() {
                        tm.names.push(String::from_utf8_lossy(f.lenenc_bytes()?).into_owned());
                    }
                }
                5 | 6 => {
                    let mut all = Vec::new();
                    while !f.done() {
                        let k = f.lenenc()? as usize;
                        let mut vals = Vec::with_capacity(k);
                        for _ in 0..k {
                            vals.push(String::from_utf8_lossy(f.lenenc_bytes()?).into_owned());
                        }
                        all.push(vals);
                    }
                    if t == 5 {
                        tm.set_values = all;
                    } else {
                        tm.enum_values = all;
                    }
                }
                8 => {
                    let mut pk = Vec::new();
                    while !f.done() {
                        pk.push(f.lenenc()? as usize);
                    }
                    tm.primary_key = Some(pk);
                }
                9 => {
                    let mut pk = Vec::new();
                    while !f.done() {
                        pk.push(f.lenenc()? as usize);
                        f.lenenc()?;
                    }
                    tm.primary_key = Some(pk);
                }
                _ => {}
            }
        }
        if let Some((def, pairs)) = default_charset {
            tm.charsets = vec![def; character.len()];
            for (i, c) in pairs {
                if let Some(slot) = tm.charsets.get_mut(i) {
                    *slot = c;
                }
            }
        }
        Some(tm)
    }
}

/// A rows event: which table, which columns each image holds, and the images' bytes.
#[derive(Debug)]
pub struct Rows<'a> {
    pub table_id: u64,
    pub columns: usize,
    pub present: &'a [u8],
    /// The after image's columns (updates only).
    pub present_after: Option<&'a [u8]>,
    pub data: &'a [u8],
}

impl<'a> Rows<'a> {
    /// `v2`: the MySQL 5.6+ form with an extra-data block.
    pub fn parse(data: &'a [u8], v2: bool, update: bool) -> Result<Rows<'a>, DecodeError> {
        let bad = || err("rows");
        let mut r = Reader::new(data);
        let table_id = r.uint(6).ok_or_else(bad)?;
        r.uint(2).ok_or_else(bad)?;
        if v2 {
            let extra = r.uint(2).ok_or_else(bad)? as usize;
            r.bytes(extra.saturating_sub(2)).ok_or_else(bad)?;
        }
        let columns = r.lenenc().ok_or_else(bad)? as usize;
        let present = r.bytes(columns.div_ceil(8)).ok_or_else(bad)?;
        let present_after = if update {
            Some(r.bytes(columns.div_ceil(8)).ok_or_else(bad)?)
        } else {
            None
        };
        Ok(Rows {
            table_id,
            columns,
            present,
            present_after,
            data: r.rest(),
        })
    }
}

#[inline]
fn bit(map: &[u8], i: usize) -> bool {
    map.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// Decodes one row image at `pos` into `out` (one cell per column; absent ones `Absent`).
pub fn read_image<'a>(
    data: &'a [u8],
    pos: &mut usize,
    present: &[u8],
    types: &[u8],
    metas: &[[u8; 2]],
    kinds: &[Kind],
    out: &mut Vec<Cell<'a>>,
) -> Result<(), DecodeError> {
    out.clear();
    let n = types.len();
    let present_count = (0..n).filter(|&i| bit(present, i)).count();
    let nulls = data
        .get(*pos..*pos + present_count.div_ceil(8))
        .ok_or_else(|| DecodeError("row image ends early".into()))?;
    *pos += nulls.len();
    let mut k = 0;
    for i in 0..n {
        if !bit(present, i) {
            out.push(Cell::Absent);
            continue;
        }
        let is_null = bit(nulls, k);
        k += 1;
        if is_null {
            out.push(Cell::Null);
        } else {
            out.push(values::decode(types[i], metas[i], &kinds[i], data, pos)?);
        }
    }
    Ok(())
}

/// MariaDB's GTID event: `domain-server-seq`, and whether a transaction follows (or one
/// statement, standalone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MariaGtid {
    pub domain: u32,
    pub seq: u64,
    pub standalone: bool,
}

impl MariaGtid {
    pub fn parse(data: &[u8]) -> Result<MariaGtid, DecodeError> {
        let mut r = Reader::new(data);
        let seq = r.uint(8).ok_or_else(|| err("GTID"))?;
        let domain = r.uint(4).ok_or_else(|| err("GTID"))? as u32;
        let flags = r.uint(1).ok_or_else(|| err("GTID"))?;
        Ok(MariaGtid {
            domain,
            seq,
            standalone: flags & 1 != 0,
        })
    }
}

/// MySQL's GTID event: the source's UUID and the transaction number.
pub fn mysql_gtid(data: &[u8]) -> Result<([u8; 16], u64), DecodeError> {
    let mut r = Reader::new(data);
    r.uint(1).ok_or_else(|| err("GTID"))?;
    let sid: [u8; 16] = r.bytes(16).and_then(|b| b.try_into().ok()).ok_or_else(|| err("GTID"))?;
    let gno = r.uint(8).ok_or_else(|| err("GTID"))?;
    Ok((sid, gno))
}

/// A QUERY event's default schema and statement text.
pub fn query(data: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
    let bad = || err("QUERY");
    let mut r = Reader::new(data);
    r.uint(8).ok_or_else(bad)?;
    let schema_len = r.uint(1).ok_or_else(bad)? as usize;
    r.uint(2).ok_or_else(bad)?;
    let status_len = r.uint(2).ok_or_else(bad)? as usize;
    r.bytes(status_len).ok_or_else(bad)?;
    let schema = r.bytes(schema_len).ok_or_else(bad)?;
    r.uint(1).ok_or_else(bad)?;
    Ok((schema, r.rest()))
}

/// ROTATE: the next file and the position in it. `header` is the event's 19-byte header.
///
/// The artificial ROTATE a server sends first comes before the FORMAT_DESCRIPTION that says
/// whether events carry a CRC32, so the client library cannot strip it: the file name would end
/// in four checksum bytes (and could not be resumed from). A trailing CRC32 that matches the
/// event is therefore removed here.
pub fn rotate(header: &[u8; 19], data: &[u8]) -> Result<(String, u64), DecodeError> {
    let data = match data.len().checked_sub(4) {
        Some(n) if n >= 8 => {
            let mut crc = crc32fast::Hasher::new();
            crc.update(header);
            crc.update(&data[..n]);
            let stored = u32::from_le_bytes([data[n], data[n + 1], data[n + 2], data[n + 3]]);
            if crc.finalize() == stored { &data[..n] } else { data }
        }
        _ => data,
    };
    let mut r = Reader::new(data);
    let pos = r.uint(8).ok_or_else(|| err("ROTATE"))?;
    let name = std::str::from_utf8(r.rest()).map_err(|_| err("ROTATE file name"))?;
    Ok((name.to_owned(), pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ROTATE event's header and body (position, file name), with or without its CRC32.
    fn rotate_event(name: &str, crc: bool) -> ([u8; 19], Vec<u8>) {
        let mut body = 4u64.to_le_bytes().to_vec();
        body.extend_from_slice(name.as_bytes());
        let size = 19 + body.len() as u32 + if crc { 4 } else { 0 };
        let mut header = [0u8; 19];
        header[4] = event::ROTATE;
        header[5..9].copy_from_slice(&1u32.to_le_bytes());
        header[9..13].copy_from_slice(&size.to_le_bytes());
        header[17..19].copy_from_slice(&0x20u16.to_le_bytes());
        if crc {
            let mut h = crc32fast::Hasher::new();
            h.update(&header);
            h.update(&body);
            body.extend_from_slice(&h.finalize().to_le_bytes());
        }
        (header, body)
    }

    #[test]
    fn rotate_names_lose_a_checksum_the_library_left_on() {
        for crc in [true, false] {
            let (header, body) = rotate_event("binlog.000001", crc);
            assert_eq!(
                rotate(&header, &body).unwrap(),
                ("binlog.000001".to_owned(), 4),
                "crc {crc}"
            );
        }
        // Four trailing bytes that are no checksum of the event stay part of the name.
        let (header, mut body) = rotate_event("mysql-bin.000002", false);
        body.truncate(body.len() - 4);
        body.extend_from_slice(b"abcd");
        assert_eq!(rotate(&header, &body).unwrap().0, "mysql-bin.00abcd");
        // Trailing bytes that are neither a checksum nor UTF-8 are refused, not stored as a name.
        let (header, mut body) = rotate_event("x", false);
        body.extend_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
        assert!(rotate(&header, &body).is_err());
    }

    /// A TABLE_MAP for `app.t (id BIGINT UNSIGNED PK, name VARCHAR(10) latin1, e ENUM('x','y'))`
    /// with full metadata.
    fn table_map() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&[7, 0, 0, 0, 0, 0]);
        b.extend_from_slice(&[1, 0]);
        b.push(3);
        b.extend_from_slice(b"app\0");
        b.push(1);
        b.extend_from_slice(b"t\0");
        b.push(3);
        b.extend_from_slice(&[ty::LONGLONG, ty::VARCHAR, ty::STRING]);
        b.push(4);
        b.extend_from_slice(&[10, 0, ty::ENUM, 1]);
        b.push(0b110);
        // SIGNEDNESS: one numeric column, unsigned.
        b.extend_from_slice(&[1, 1, 0x80]);
        // DEFAULT_CHARSET: latin1_swedish_ci (8).
        b.extend_from_slice(&[2, 1, 8]);
        // COLUMN_NAME.
        b.extend_from_slice(&[4, 10, 2, b'i', b'd', 4, b'n', b'a', b'm', b'e', 1, b'e']);
        // ENUM_STR_VALUE.
        b.extend_from_slice(&[6, 5, 2, 1, b'x', 1, b'y']);
        // SIMPLE_PRIMARY_KEY.
        b.extend_from_slice(&[8, 1, 0]);
        b
    }

    #[test]
    fn table_map_with_full_metadata() {
        let tm = TableMap::parse(&table_map()).unwrap();
        assert_eq!(tm.table_id, 7);
        assert_eq!((tm.schema.as_str(), tm.table.as_str()), ("app", "t"));
        assert_eq!(tm.names, vec!["id", "name", "e"]);
        assert_eq!(tm.unsigned, vec![true]);
        assert_eq!(tm.charsets, vec![8]);
        assert_eq!(tm.enum_values, vec![vec!["x".to_owned(), "y".to_owned()]]);
        assert_eq!(tm.primary_key, Some(vec![0]));
        assert_eq!(tm.real_type(2), ty::ENUM);
        assert!(TableMap::parse(&table_map()[..20]).is_err());
    }

    #[test]
    fn rows_images() {
        // WRITE_ROWS v1 for the table above: one row (2^63, 'ab', 'y').
        let mut b = vec![7, 0, 0, 0, 0, 0, 0, 0, 3, 0b111];
        b.push(0);
        b.extend_from_slice(&(1u64 << 63).to_le_bytes());
        b.extend_from_slice(&[2, b'a', b'b']);
        b.push(2);
        let rows = Rows::parse(&b, false, false).unwrap();
        assert_eq!(rows.columns, 3);
        let tm = TableMap::parse(&table_map()).unwrap();
        let kinds = vec![
            Kind::Int { unsigned: true },
            Kind::Text(None),
            Kind::Enum(vec!["x".to_owned(), "y".to_owned()].into()),
        ];
        let mut out = Vec::new();
        let mut pos = 0;
        read_image(
            rows.data,
            &mut pos,
            rows.present,
            &tm.types,
            &tm.metas,
            &kinds,
            &mut out,
        )
        .unwrap();
        assert_eq!(out[0], Cell::UInt(1 << 63));
        assert_eq!(out[1], Cell::Bytes(b"ab"));
        assert_eq!(out[2], Cell::EnumIndex(2));
        assert_eq!(pos, rows.data.len());
        // A truncated image is an error, not a short row.
        let mut pos = 0;
        assert!(
            read_image(
                &rows.data[..5],
                &mut pos,
                rows.present,
                &tm.types,
                &tm.metas,
                &kinds,
                &mut out
            )
            .is_err()
        );
    }

    #[test]
    fn gtid_and_query_events() {
        let mut g = 42u64.to_le_bytes().to_vec();
        g.extend_from_slice(&3u32.to_le_bytes());
        g.push(1);
        assert_eq!(
            MariaGtid::parse(&g).unwrap(),
            MariaGtid {
                domain: 3,
                seq: 42,
                standalone: true
            }
        );
        let mut q = vec![0; 8];
        q.push(3);
        q.extend_from_slice(&[0, 0]);
        q.extend_from_slice(&[0, 0]);
        q.extend_from_slice(b"app\0ALTER TABLE t ADD c INT");
        assert_eq!(query(&q).unwrap(), (&b"app"[..], &b"ALTER TABLE t ADD c INT"[..]));
    }
}
