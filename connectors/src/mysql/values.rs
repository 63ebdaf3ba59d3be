//! Column values: what a column holds ([`Kind`]), one value as the binlog or the snapshot gives
//! it ([`Cell`], borrowing the bytes), decoding of the binlog's row-image format, and writing a
//! value as JSON into protobuf Struct bytes.
//!
//! JSON mapping (the same from the snapshot and the binlog): integers → numbers (beyond ±2^53 →
//! strings), DECIMAL → exact string, FLOAT/DOUBLE → numbers (FLOAT by its shortest decimal),
//! text → string (converted from the column's charset), binary → base64, JSON → JSON, DATE →
//! `YYYY-MM-DD`, TIME → `[-]HH:MM:SS[.f]`, DATETIME → `YYYY-MM-DDTHH:MM:SS[.f]`, TIMESTAMP → the
//! same in UTC with `Z`, ENUM → its string, SET → comma-separated strings, BIT(1) → boolean,
//! BIT(n) → number, YEAR → number. Fractions have the column's precision in digits.

use std::sync::Arc;

use base64::Engine;
use encoding_rs::Encoding;

use crate::pbstruct as pb;

/// Column type codes of the binlog and the protocol.
pub mod ty {
    pub const DECIMAL: u8 = 0;
    pub const TINY: u8 = 1;
    pub const SHORT: u8 = 2;
    pub const LONG: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const DOUBLE: u8 = 5;
    pub const TIMESTAMP: u8 = 7;
    pub const LONGLONG: u8 = 8;
    pub const INT24: u8 = 9;
    pub const DATE: u8 = 10;
    pub const TIME: u8 = 11;
    pub const DATETIME: u8 = 12;
    pub const YEAR: u8 = 13;
    pub const VARCHAR: u8 = 15;
    pub const BIT: u8 = 16;
    pub const TIMESTAMP2: u8 = 17;
    pub const DATETIME2: u8 = 18;
    pub const TIME2: u8 = 19;
    pub const JSON: u8 = 245;
    pub const NEWDECIMAL: u8 = 246;
    pub const ENUM: u8 = 247;
    pub const SET: u8 = 248;
    pub const TINY_BLOB: u8 = 249;
    pub const MEDIUM_BLOB: u8 = 250;
    pub const LONG_BLOB: u8 = 251;
    pub const BLOB: u8 = 252;
    pub const VAR_STRING: u8 = 253;
    pub const STRING: u8 = 254;
    pub const GEOMETRY: u8 = 255;

    /// Numeric types: the ones TABLE_MAP's signedness bitmap covers.
    pub fn is_numeric(t: u8) -> bool {
        matches!(
            t,
            TINY | SHORT | INT24 | LONG | LONGLONG | FLOAT | DOUBLE | NEWDECIMAL | DECIMAL
        )
    }

    /// Types with a charset in TABLE_MAP's charset metadata (ENUM/SET are counted apart).
    pub fn is_character(t: u8) -> bool {
        matches!(
            t,
            STRING | VAR_STRING | VARCHAR | BLOB | TINY_BLOB | MEDIUM_BLOB | LONG_BLOB
        )
    }
}

/// What a column holds, which decides how its value is written.
#[derive(Debug, Clone)]
pub enum Kind {
    Int {
        unsigned: bool,
    },
    Float,
    Double,
    Decimal {
        precision: u8,
        scale: u8,
    },
    /// Text in a charset; `None`: UTF-8 already (utf8mb4, utf8mb3, ascii).
    Text(Option<&'static Encoding>),
    /// Binary strings and blobs (base64); a BINARY(n) column is padded with zeros to `pad`.
    Bytes {
        pad: usize,
    },
    Json,
    Date,
    Time {
        fsp: u8,
    },
    DateTime {
        fsp: u8,
    },
    Timestamp {
        fsp: u8,
    },
    Enum(Arc<[String]>),
    Set(Arc<[String]>),
    Bit {
        bits: u16,
    },
    Year,
}

/// One value, borrowing the bytes it came in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Null,
    /// Not in this row image (a minimal image): left out of the object.
    Absent,
    Int(i64),
    UInt(u64),
    Float(f32),
    Double(f64),
    /// The binlog's packed DECIMAL, with its precision and scale.
    DecimalBin(&'a [u8], u8, u8),
    /// Strings, blobs, DECIMAL/ENUM/SET as text, BIT bytes, JSON text.
    Bytes(&'a [u8]),
    /// MySQL's binary JSON.
    JsonBin(&'a [u8]),
    Date {
        y: u16,
        m: u8,
        d: u8,
    },
    Time {
        neg: bool,
        h: u32,
        m: u8,
        s: u8,
        us: u32,
    },
    DateTime {
        y: u16,
        mo: u8,
        d: u8,
        h: u8,
        mi: u8,
        s: u8,
        us: u32,
    },
    /// Seconds since the Unix epoch (UTC).
    Timestamp {
        secs: i64,
        us: u32,
    },
    EnumIndex(u16),
    SetBits(u64),
    Bit(u64),
}

/// The charset of a MySQL charset name: `None` for UTF-8 compatible ones.
pub fn encoding_of(charset: &str) -> Option<&'static Encoding> {
    let label = match charset {
        "utf8mb4" | "utf8mb3" | "utf8" | "ascii" | "binary" | "" => return None,
        "latin1" => "windows-1252",
        "latin2" => "iso-8859-2",
        "latin7" => "iso-8859-13",
        "greek" => "iso-8859-7",
        "hebrew" => "iso-8859-8",
        "cp1250" => "windows-1250",
        "cp1251" => "windows-1251",
        "cp1256" => "windows-1256",
        "cp1257" => "windows-1257",
        "koi8r" => "koi8-r",
        "koi8u" => "koi8-u",
        "gbk" | "gb2312" => "gbk",
        "gb18030" => "gb18030",
        "big5" => "big5",
        "sjis" | "cp932" => "shift_jis",
        "ujis" | "eucjpms" => "euc-jp",
        "euckr" => "euc-kr",
        "utf16" | "ucs2" => "utf-16be",
        "utf16le" => "utf-16le",
        other => other,
    };
    Encoding::for_label(label.as_bytes())
}

/// A column's kind from the SQL type text (`information_schema.COLUMNS.COLUMN_TYPE`), its data
/// type and charset. `json` marks MariaDB's JSON (LONGTEXT with a `json_valid` check).
pub fn kind_from_sql(data_type: &str, column_type: &str, charset: Option<&str>, json: bool) -> Kind {
    let unsigned = column_type.contains("unsigned");
    let paren = |s: &str| -> Vec<u32> {
        s.split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .map(|(inside, _)| inside.split(',').filter_map(|p| p.trim().parse().ok()).collect())
            .unwrap_or_default()
    };
    let fsp = || paren(column_type).first().copied().unwrap_or(0).min(6) as u8;
    match data_type {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => Kind::Int { unsigned },
        "float" => Kind::Float,
        "double" | "real" | "double precision" => Kind::Double,
        "decimal" | "numeric" => {
            let p = paren(column_type);
            Kind::Decimal {
                precision: p.first().copied().unwrap_or(10) as u8,
                scale: p.get(1).copied().unwrap_or(0) as u8,
            }
        }
        "year" => Kind::Year,
        "date" => Kind::Date,
        "time" => Kind::Time { fsp: fsp() },
        "datetime" => Kind::DateTime { fsp: fsp() },
        "timestamp" => Kind::Timestamp { fsp: fsp() },
        "bit" => Kind::Bit {
            bits: paren(column_type).first().copied().unwrap_or(1) as u16,
        },
        "enum" => Kind::Enum(sql_list(column_type).into()),
        "set" => Kind::Set(sql_list(column_type).into()),
        "json" => Kind::Json,
        "binary" => Kind::Bytes {
            pad: paren(column_type).first().copied().unwrap_or(0) as usize,
        },
        "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "geometry" | "point" | "linestring"
        | "polygon" | "multipoint" | "multilinestring" | "multipolygon" | "geometrycollection" => {
            Kind::Bytes { pad: 0 }
        }
        _ if json => Kind::Json,
        _ => match charset {
            Some("binary") => Kind::Bytes { pad: 0 },
            Some(cs) => Kind::Text(encoding_of(cs)),
            None => Kind::Text(None),
        },
    }
}

/// The quoted items of `enum('a','b''c')` / `set(...)`.
pub fn sql_list(column_type: &str) -> Vec<String> {
    let Some(start) = column_type.find('(') else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut chars = column_type[start + 1..].chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut item = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    item.push('\'');
                }
                '\'' => break,
                '\\' => {
                    if let Some(n) = chars.next() {
                        item.push(n);
                    }
                }
                c => item.push(c),
            }
        }
        out.push(item);
    }
    out
}

// ---- binlog row image decoding ----

/// Why a row image could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn short() -> DecodeError {
    DecodeError("row image ends early".into())
}

#[inline]
fn take<'a>(data: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], DecodeError> {
    let end = pos.checked_add(n).filter(|&e| e <= data.len()).ok_or_else(short)?;
    let s = &data[*pos..end];
    *pos = end;
    Ok(s)
}

#[inline]
fn le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

#[inline]
fn be(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

/// Bytes of a packed DECIMAL's group of `digits` leftover digits.
const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];

pub fn decimal_size(precision: u8, scale: u8) -> usize {
    let intg = usize::from(precision.saturating_sub(scale));
    let frac = usize::from(scale);
    (intg / 9) * 4 + DIG2BYTES[intg % 9] + (frac / 9) * 4 + DIG2BYTES[frac % 9]
}

/// Decodes one column of type `t` with TABLE_MAP metadata `meta` (and the column's kind for
/// signedness and fraction digits).
pub fn decode<'a>(t: u8, meta: [u8; 2], kind: &Kind, data: &'a [u8], pos: &mut usize) -> Result<Cell<'a>, DecodeError> {
    let unsigned = matches!(kind, Kind::Int { unsigned: true });
    let int = |raw: u64, bytes: u32| -> Cell<'a> {
        if unsigned {
            Cell::UInt(raw)
        } else {
            let shift = 64 - bytes * 8;
            Cell::Int(((raw << shift) as i64) >> shift)
        }
    };
    let frac_len = |fsp: u8| usize::from(fsp).div_ceil(2);
    Ok(match t {
        ty::TINY => int(le(take(data, pos, 1)?), 1),
        ty::SHORT => int(le(take(data, pos, 2)?), 2),
        ty::INT24 => int(le(take(data, pos, 3)?), 3),
        ty::LONG => int(le(take(data, pos, 4)?), 4),
        ty::LONGLONG => int(le(take(data, pos, 8)?), 8),
        ty::FLOAT => Cell::Float(f32::from_le_bytes(take(data, pos, 4)?.try_into().expect("4 bytes"))),
        ty::DOUBLE => Cell::Double(f64::from_le_bytes(take(data, pos, 8)?.try_into().expect("8 bytes"))),
        ty::YEAR => {
            let y = take(data, pos, 1)?[0];
            Cell::Int(if y == 0 { 0 } else { 1900 + i64::from(y) })
        }
        ty::NEWDECIMAL => Cell::DecimalBin(take(data, pos, decimal_size(meta[0], meta[1]))?, meta[0], meta[1]),
        ty::DATE => {
            let v = le(take(data, pos, 3)?);
            Cell::Date {
                y: (v >> 9) as u16,
                m: ((v >> 5) & 15) as u8,
                d: (v & 31) as u8,
            }
        }
        ty::TIME => {
            // Old format: HHMMSS as a signed 3-byte integer.
            let raw = le(take(data, pos, 3)?);
            let v = ((raw << 40) as i64) >> 40;
            let a = v.unsigned_abs();
            Cell::Time {
                neg: v < 0,
                h: (a / 10000) as u32,
                m: ((a / 100) % 100) as u8,
                s: (a % 100) as u8,
                us: 0,
            }
        }
        ty::TIME2 => time2(take(data, pos, 3 + frac_len(meta[0]))?, meta[0]),
        ty::DATETIME => {
            let v = le(take(data, pos, 8)?);
            let (date, time) = (v / 1_000_000, v % 1_000_000);
            Cell::DateTime {
                y: (date / 10000) as u16,
                mo: ((date / 100) % 100) as u8,
                d: (date % 100) as u8,
                h: (time / 10000) as u8,
                mi: ((time / 100) % 100) as u8,
                s: (time % 100) as u8,
                us: 0,
            }
        }
        ty::DATETIME2 => {
            let b = take(data, pos, 5 + frac_len(meta[0]))?;
            let int = be(&b[..5]).wrapping_sub(0x80_0000_0000);
            let ymd = int >> 17;
            let ym = ymd >> 5;
            let hms = int % (1 << 17);
            Cell::DateTime {
                y: (ym / 13) as u16,
                mo: (ym % 13) as u8,
                d: (ymd % 32) as u8,
                h: (hms >> 12) as u8,
                mi: ((hms >> 6) % 64) as u8,
                s: (hms % 64) as u8,
                us: frac(&b[5..]),
            }
        }
        ty::TIMESTAMP => Cell::Timestamp {
            secs: le(take(data, pos, 4)?) as i64,
            us: 0,
        },
        ty::TIMESTAMP2 => {
            let b = take(data, pos, 4 + frac_len(meta[0]))?;
            Cell::Timestamp {
                secs: be(&b[..4]) as i64,
                us: frac(&b[4..]),
            }
        }
        ty::VARCHAR | ty::VAR_STRING => {
            let max = u16::from_le_bytes(meta);
            let n = le(take(data, pos, if max < 256 { 1 } else { 2 })?) as usize;
            Cell::Bytes(take(data, pos, n)?)
        }
        ty::STRING => {
            let (real, max) = string_meta(meta);
            match real {
                ty::ENUM => Cell::EnumIndex(le(take(data, pos, usize::from(meta[1]))?) as u16),
                ty::SET => Cell::SetBits(le(take(data, pos, usize::from(meta[1]))?)),
                _ => {
                    let n = le(take(data, pos, if max < 256 { 1 } else { 2 })?) as usize;
                    Cell::Bytes(take(data, pos, n)?)
                }
            }
        }
        ty::ENUM => Cell::EnumIndex(le(take(data, pos, usize::from(meta[1]))?) as u16),
        ty::SET => Cell::SetBits(le(take(data, pos, usize::from(meta[1]))?)),
        ty::BIT => {
            let n = usize::from(meta[1]) + usize::from(meta[0] > 0);
            Cell::Bit(be(take(data, pos, n)?))
        }
        ty::BLOB | ty::TINY_BLOB | ty::MEDIUM_BLOB | ty::LONG_BLOB | ty::GEOMETRY => {
            let n = le(take(data, pos, usize::from(meta[0]))?) as usize;
            Cell::Bytes(take(data, pos, n)?)
        }
        ty::JSON => {
            let n = le(take(data, pos, usize::from(meta[0]))?) as usize;
            Cell::JsonBin(take(data, pos, n)?)
        }
        other => return Err(DecodeError(format!("column type {other} is not supported"))),
    })
}

/// The real type and maximum length of a STRING column (CHAR, BINARY, ENUM, SET).
pub fn string_meta(meta: [u8; 2]) -> (u8, u16) {
    let (b0, b1) = (meta[0], meta[1]);
    if b0 & 0x30 != 0x30 {
        (b0 | 0x30, u16::from(b1) | (u16::from((b0 & 0x30) ^ 0x30) << 4))
    } else {
        (b0, u16::from(b1))
    }
}

/// A temporal fraction of 0–3 bytes (big endian) as microseconds.
fn frac(b: &[u8]) -> u32 {
    match b.len() {
        0 => 0,
        1 => u32::from(b[0]) * 10_000,
        2 => (be(b) as u32) * 100,
        _ => be(&b[..3]) as u32,
    }
}

fn time2<'a>(b: &[u8], fsp: u8) -> Cell<'a> {
    let int = be(&b[..3]) as i64 - 0x80_0000;
    let packed: i64 = match fsp {
        1 | 2 => {
            let (mut i, mut f) = (int, i64::from(b[3]));
            if i < 0 && f != 0 {
                i += 1;
                f -= 0x100;
            }
            (i << 24) + f * 10_000
        }
        3 | 4 => {
            let (mut i, mut f) = (int, be(&b[3..5]) as i64);
            if i < 0 && f != 0 {
                i += 1;
                f -= 0x10000;
            }
            (i << 24) + f * 100
        }
        5 | 6 => be(&b[..6]) as i64 - 0x8000_0000_0000,
        _ => int << 24,
    };
    let neg = packed < 0;
    let a = packed.unsigned_abs();
    let hms = a >> 24;
    Cell::Time {
        neg,
        h: ((hms >> 12) % (1 << 10)) as u32,
        m: ((hms >> 6) % 64) as u8,
        s: (hms % 64) as u8,
        us: (a % (1 << 24)) as u32,
    }
}

// ---- writing ----

const MAX_SAFE: u64 = 1 << 53;

/// Appends the text of a packed DECIMAL (as MySQL prints it: `scale` fraction digits), with no
/// allocation. Bytes of the wrong length for the precision and scale read as `0`.
pub fn decimal_text(out: &mut Vec<u8>, raw: &[u8], precision: u8, scale: u8) {
    let intg = usize::from(precision.saturating_sub(scale));
    let frac = usize::from(scale);
    if raw.is_empty() || raw.len() != decimal_size(precision, scale) {
        out.push(b'0');
        return;
    }
    // Negative numbers are stored inverted; the first byte's top bit is the sign, flipped.
    let neg = raw[0] & 0x80 == 0;
    let mask = if neg { 0xff } else { 0 };
    let read = |pos: &mut usize, n: usize| -> u64 {
        let mut v = 0u64;
        for (k, &byte) in raw.iter().enumerate().skip(*pos).take(n) {
            let b = byte ^ mask ^ if k == 0 { 0x80 } else { 0 };
            v = (v << 8) | u64::from(b);
        }
        *pos += n;
        v
    };
    let start = out.len();
    if neg {
        out.push(b'-');
    }
    let mut pos = 0;
    let mut started = false;
    let mut int_group = |out: &mut Vec<u8>, v: u64, width: usize| {
        if started {
            push_num(out, v, width);
        } else if v != 0 {
            push_num(out, v, 0);
            started = true;
        }
    };
    if intg % 9 > 0 {
        let v = read(&mut pos, DIG2BYTES[intg % 9]);
        int_group(out, v, intg % 9);
    }
    for _ in 0..intg / 9 {
        let v = read(&mut pos, 4);
        int_group(out, v, 9);
    }
    if !started {
        out.push(b'0');
    }
    if frac > 0 {
        out.push(b'.');
        for _ in 0..frac / 9 {
            let v = read(&mut pos, 4);
            push_num(out, v, 9);
        }
        if frac % 9 > 0 {
            let v = read(&mut pos, DIG2BYTES[frac % 9]);
            push_num(out, v, frac % 9);
        }
    }
    // No negative zero.
    if neg && out[start + 1..].iter().all(|&c| c == b'0' || c == b'.') {
        out.remove(start);
    }
}

fn push_num(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut tmp = [b'0'; 20];
    let mut i = tmp.len();
    let mut v = v;
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for _ in (tmp.len() - i)..width {
        out.push(b'0');
    }
    out.extend_from_slice(&tmp[i..]);
}

fn push_frac(out: &mut Vec<u8>, us: u32, fsp: u8) {
    if fsp == 0 {
        return;
    }
    out.push(b'.');
    let mut digits = [b'0'; 6];
    let mut v = us.min(999_999);
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&digits[..usize::from(fsp.min(6))]);
}

#[allow(clippy::too_many_arguments)]
fn push_datetime(out: &mut Vec<u8>, y: u16, mo: u8, d: u8, h: u8, mi: u8, s: u8, us: u32, fsp: u8) {
    push_num(out, u64::from(y), 4);
    out.push(b'-');
    push_num(out, u64::from(mo), 2);
    out.push(b'-');
    push_num(out, u64::from(d), 2);
    out.push(b'T');
    push_num(out, u64::from(h), 2);
    out.push(b':');
    push_num(out, u64::from(mi), 2);
    out.push(b':');
    push_num(out, u64::from(s), 2);
    push_frac(out, us, fsp);
}

/// Civil date of a day count since 1970-01-01 (proleptic Gregorian).
fn civil(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Appends the text form of a non-null value (strings unquoted); `false` when the value is
/// not text-like (JSON) and was not written.
fn text_into(out: &mut Vec<u8>, kind: &Kind, cell: &Cell<'_>) -> bool {
    match (kind, cell) {
        (_, Cell::Int(v)) => out.extend_from_slice(v.to_string().as_bytes()),
        (_, Cell::UInt(v)) => out.extend_from_slice(v.to_string().as_bytes()),
        (_, Cell::DecimalBin(raw, precision, scale)) => decimal_text(out, raw, *precision, *scale),
        (Kind::Text(Some(enc)), Cell::Bytes(b)) => {
            out.extend_from_slice(enc.decode_without_bom_handling(b).0.as_bytes())
        }
        (Kind::Text(None), Cell::Bytes(b)) => match std::str::from_utf8(b) {
            Ok(_) => out.extend_from_slice(b),
            Err(_) => out.extend_from_slice(String::from_utf8_lossy(b).as_bytes()),
        },
        (Kind::Bytes { pad }, Cell::Bytes(b)) => {
            let engine = base64::engine::general_purpose::STANDARD;
            if b.len() < *pad {
                let mut v = b.to_vec();
                v.resize(*pad, 0);
                out.extend_from_slice(engine.encode(v).as_bytes());
            } else {
                out.extend_from_slice(engine.encode(b).as_bytes());
            }
        }
        (Kind::Decimal { .. } | Kind::Enum(_) | Kind::Set(_), Cell::Bytes(b)) => out.extend_from_slice(b),
        (Kind::Enum(values), Cell::EnumIndex(i)) => {
            // 0 is the empty string MySQL stores for an invalid value.
            if let Some(v) = usize::from(*i).checked_sub(1).and_then(|i| values.get(i)) {
                out.extend_from_slice(v.as_bytes());
            }
        }
        (Kind::Set(values), Cell::SetBits(bits)) => {
            let mut first = true;
            for (i, v) in values.iter().enumerate().take(64) {
                if bits & (1 << i) != 0 {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.extend_from_slice(v.as_bytes());
                }
            }
        }
        (_, Cell::Date { y, m, d }) => {
            push_num(out, u64::from(*y), 4);
            out.push(b'-');
            push_num(out, u64::from(*m), 2);
            out.push(b'-');
            push_num(out, u64::from(*d), 2);
        }
        (kind, Cell::Time { neg, h, m, s, us }) => {
            if *neg {
                out.push(b'-');
            }
            push_num(out, u64::from(*h), 2);
            out.push(b':');
            push_num(out, u64::from(*m), 2);
            out.push(b':');
            push_num(out, u64::from(*s), 2);
            let fsp = if let Kind::Time { fsp } = kind { *fsp } else { 6 };
            push_frac(out, *us, fsp);
        }
        (kind, Cell::DateTime { y, mo, d, h, mi, s, us }) => {
            let fsp = match kind {
                Kind::DateTime { fsp } | Kind::Timestamp { fsp } => *fsp,
                _ => 6,
            };
            push_datetime(out, *y, *mo, *d, *h, *mi, *s, *us, fsp);
            // From the snapshot session, which runs in UTC.
            if matches!(kind, Kind::Timestamp { .. }) {
                out.push(b'Z');
            }
        }
        (kind, Cell::Timestamp { secs, us }) => {
            let fsp = match kind {
                Kind::DateTime { fsp } | Kind::Timestamp { fsp } => *fsp,
                _ => 6,
            };
            if *secs == 0 && *us == 0 {
                // MySQL's zero timestamp.
                out.extend_from_slice(b"0000-00-00T00:00:00");
                push_frac(out, 0, fsp);
            } else {
                let (date, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
                let (y, m, d) = civil(date);
                push_datetime(
                    out,
                    y as u16,
                    m,
                    d,
                    (sod / 3600) as u8,
                    ((sod / 60) % 60) as u8,
                    (sod % 60) as u8,
                    *us,
                    fsp,
                );
            }
            out.push(b'Z');
        }
        (_, Cell::Bytes(b)) => out.extend_from_slice(b),
        (_, Cell::Bit(v)) => out.extend_from_slice(v.to_string().as_bytes()),
        (_, Cell::Float(v)) => out.extend_from_slice(v.to_string().as_bytes()),
        (_, Cell::Double(v)) => out.extend_from_slice(v.to_string().as_bytes()),
        _ => return false,
    }
    true
}

/// The value as text (for partition keys).
pub fn text(kind: &Kind, cell: &Cell<'_>) -> String {
    let mut out = Vec::new();
    if !text_into(&mut out, kind, cell) && matches!(cell, Cell::JsonBin(_)) {
        let mut v = Vec::new();
        write(&mut v, kind, cell);
        return String::from_utf8_lossy(&v).into_owned();
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn bit_bytes(b: &[u8]) -> u64 {
    be(&b[b.len().saturating_sub(8)..])
}

fn number_or_string_u(buf: &mut Vec<u8>, v: u64) {
    if v <= MAX_SAFE {
        pb::number(buf, v as f64)
    } else {
        pb::string(buf, &v.to_string())
    }
}

/// Writes one value as the body of a protobuf `Value`.
pub fn write(buf: &mut Vec<u8>, kind: &Kind, cell: &Cell<'_>) {
    match (kind, cell) {
        (_, Cell::Null | Cell::Absent) => pb::null(buf),
        (_, Cell::Int(v)) => {
            if v.unsigned_abs() <= MAX_SAFE {
                pb::number(buf, *v as f64)
            } else {
                pb::string(buf, &v.to_string())
            }
        }
        (_, Cell::UInt(v)) => number_or_string_u(buf, *v),
        // FLOAT by its shortest decimal, as MySQL shows it.
        (_, Cell::Float(v)) => pb::number(buf, v.to_string().parse::<f64>().unwrap_or(f64::from(*v))),
        (_, Cell::Double(v)) => pb::number(buf, *v),
        (Kind::Bit { bits }, Cell::Bit(v)) if *bits == 1 => pb::boolean(buf, *v != 0),
        (Kind::Bit { bits }, Cell::Bytes(b)) if *bits == 1 => pb::boolean(buf, bit_bytes(b) != 0),
        (_, Cell::Bit(v)) => number_or_string_u(buf, *v),
        (Kind::Bit { .. }, Cell::Bytes(b)) => number_or_string_u(buf, bit_bytes(b)),
        (Kind::Year, Cell::Bytes(b)) => match std::str::from_utf8(b).ok().and_then(|s| s.parse::<f64>().ok()) {
            Some(n) => pb::number(buf, n),
            None => pb::string_bytes(buf, b),
        },
        (Kind::Json, Cell::Bytes(b)) => match serde_json::from_slice::<serde_json::Value>(b) {
            Ok(v) => pb::json(buf, &v),
            Err(_) => pb::string(buf, &String::from_utf8_lossy(b)),
        },
        (_, Cell::JsonBin(b)) => {
            if super::jsonb::write(buf, b).is_none() {
                pb::null(buf)
            }
        }
        (Kind::Text(None), Cell::Bytes(b)) if std::str::from_utf8(b).is_ok() => pb::string_bytes(buf, b),
        (kind, cell) => pb::message(buf, 0x1a, |out| {
            text_into(out, kind, cell);
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(raw: &[u8], p: u8, s: u8) -> String {
        let mut out = Vec::new();
        decimal_text(&mut out, raw, p, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn packed_decimals() {
        // DECIMAL(12,2): 10 integer digits = 1 group of 9 (4 bytes) + 1 digit (1 byte); 2 fraction
        // digits (1 byte).
        assert_eq!(decimal_size(12, 2), 6);
        // 1234.56 → int 0 | 1234, frac 56.
        let mut raw = vec![0x00, 0x00, 0x00, 0x04, 0xd2, 56];
        raw[0] ^= 0x80;
        assert_eq!(dec(&raw, 12, 2), "1234.56");
        let neg: Vec<u8> = raw.iter().map(|b| !b).collect();
        assert_eq!(dec(&neg, 12, 2), "-1234.56");
        let mut zero = vec![0u8; 6];
        zero[0] ^= 0x80;
        assert_eq!(dec(&zero, 12, 2), "0.00");
        // DECIMAL(4,0) = 2 bytes.
        assert_eq!(dec(&[0x80, 0x07], 4, 0), "7");
        // Bytes of the wrong length are not read past.
        assert_eq!(dec(&[0x80], 12, 2), "0");
        // DECIMAL(20,10): 10 int digits (1+4 bytes), 10 frac digits (4+1 bytes).
        let mut raw = vec![0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05, 0x00];
        raw[0] ^= 0x80;
        assert_eq!(dec(&raw, 20, 10), "1.0000000050");
    }

    #[test]
    fn temporal_values() {
        // DATETIME2(0) 2024-02-29 13:14:15: ym = 2024*13+2, ymd = ym<<5 | 29, hms = 13<<12|14<<6|15.
        let ym: u64 = 2024 * 13 + 2;
        let int = ((ym << 5 | 29) << 17) | (13 << 12 | 14 << 6 | 15);
        let v = int + 0x80_0000_0000;
        let bytes = v.to_be_bytes();
        let mut pos = 0;
        let c = decode(ty::DATETIME2, [0, 0], &Kind::DateTime { fsp: 0 }, &bytes[3..], &mut pos).unwrap();
        assert_eq!(text(&Kind::DateTime { fsp: 0 }, &c), "2024-02-29T13:14:15");
        // TIMESTAMP2(3): 1700000000.123
        let mut b = 1_700_000_000u32.to_be_bytes().to_vec();
        b.extend_from_slice(&(1230u16).to_be_bytes());
        let mut pos = 0;
        let k = Kind::Timestamp { fsp: 3 };
        let c = decode(ty::TIMESTAMP2, [3, 0], &k, &b, &mut pos).unwrap();
        assert_eq!(text(&k, &c), "2023-11-14T22:13:20.123Z");
        // TIME2(0) -01:02:03 and 838:59:59.
        for (h, m, s, neg, want) in [(1u64, 2u64, 3u64, true, "-01:02:03"), (838, 59, 59, false, "838:59:59")] {
            let hms = (h << 12) | (m << 6) | s;
            let v: i64 = if neg { -(hms as i64) } else { hms as i64 };
            let raw = (v + 0x80_0000) as u32;
            let b = &raw.to_be_bytes()[1..];
            let mut pos = 0;
            let k = Kind::Time { fsp: 0 };
            assert_eq!(text(&k, &decode(ty::TIME2, [0, 0], &k, b, &mut pos).unwrap()), want);
        }
        // TIME2(2) -00:00:01.10: the fraction byte is unsigned, borrowed from the seconds.
        let k = Kind::Time { fsp: 2 };
        let mut pos = 0;
        let c = decode(ty::TIME2, [2, 0], &k, &[0x7f, 0xff, 0xfe, 0xf6], &mut pos).unwrap();
        assert_eq!(text(&k, &c), "-00:00:01.10");
        // DATE 2000-01-31.
        let v: u32 = (2000 << 9) | (1 << 5) | 31;
        let mut pos = 0;
        let bytes = v.to_le_bytes();
        let c = decode(ty::DATE, [0, 0], &Kind::Date, &bytes[..3], &mut pos).unwrap();
        assert_eq!(text(&Kind::Date, &c), "2000-01-31");
    }

    #[test]
    fn strings_enums_sets_and_ints() {
        let k = Kind::Int { unsigned: false };
        let mut pos = 0;
        assert_eq!(decode(ty::TINY, [0, 0], &k, &[0xff], &mut pos).unwrap(), Cell::Int(-1));
        let u = Kind::Int { unsigned: true };
        let mut pos = 0;
        assert_eq!(
            decode(ty::INT24, [0, 0], &u, &[0xff, 0xff, 0xff], &mut pos).unwrap(),
            Cell::UInt(0xff_ffff)
        );
        // ENUM in a STRING column: meta [ENUM, pack length 1].
        let e = Kind::Enum(vec!["a".to_owned(), "b".to_owned()].into());
        let mut pos = 0;
        let c = decode(ty::STRING, [ty::ENUM, 1], &e, &[2], &mut pos).unwrap();
        assert_eq!(text(&e, &c), "b");
        let s = Kind::Set(vec!["x".to_owned(), "y".to_owned(), "z".to_owned()].into());
        assert_eq!(text(&s, &Cell::SetBits(0b101)), "x,z");
        // CHAR(255) in utf8mb4 (1020 bytes): meta encodes the length's high bits in byte 0.
        let (real, max) = string_meta([0xfe ^ ((1020u16 >> 4) as u8 & 0x30), (1020 & 0xff) as u8]);
        assert_eq!((real, max), (ty::STRING, 1020));
        let latin1 = Kind::Text(encoding_of("latin1"));
        assert_eq!(text(&latin1, &Cell::Bytes(&[0x63, 0x61, 0x66, 0xe9])), "café");
        assert_eq!(text(&Kind::Bytes { pad: 4 }, &Cell::Bytes(b"ab")), "YWIAAA==");
        assert_eq!(
            sql_list("enum('a','it''s','c,d')"),
            vec!["a".to_owned(), "it's".to_owned(), "c,d".to_owned()]
        );
    }
}
