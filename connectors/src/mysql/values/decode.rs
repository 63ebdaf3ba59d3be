//! Decoding of the binlog's row-image format into [`Cell`]s.

use super::{Cell, Kind, ty};

/// Why a row image could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

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

/// `N` bytes at `pos` as an array.
#[inline]
fn take_array<const N: usize>(data: &[u8], pos: &mut usize) -> Result<[u8; N], DecodeError> {
    let mut a = [0u8; N];
    a.copy_from_slice(take(data, pos, N)?);
    Ok(a)
}

#[inline]
fn le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

#[inline]
pub(super) fn be(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

/// Bytes of a packed DECIMAL's group of `digits` leftover digits.
pub(super) const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];

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
        ty::FLOAT => Cell::Float(f32::from_le_bytes(take_array(data, pos)?)),
        ty::DOUBLE => Cell::Double(f64::from_le_bytes(take_array(data, pos)?)),
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
