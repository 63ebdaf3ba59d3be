//! MySQL's binary JSON (the JSON column type in MySQL's binlog), written as JSON text the way
//! MySQL prints it (`{"a": 1, "b": [2, 3]}`), so that every number keeps its exact value: a
//! JSON document is carried as its text, never as protobuf numbers (doubles).
//!
//! Layout: a type byte, then the value. Objects and arrays have a small (16-bit offsets) and a
//! large (32-bit) form: element count, byte size, key entries (objects), value entries (type +
//! offset, or the value inlined when it fits), then keys and values. Offsets count from the
//! start of the object/array body.

use std::fmt::Write as _;

const SMALL_OBJ: u8 = 0x00;
const LARGE_OBJ: u8 = 0x01;
const SMALL_ARR: u8 = 0x02;
const LARGE_ARR: u8 = 0x03;
const LITERAL: u8 = 0x04;
const INT16: u8 = 0x05;
const UINT16: u8 = 0x06;
const INT32: u8 = 0x07;
const UINT32: u8 = 0x08;
const INT64: u8 = 0x09;
const UINT64: u8 = 0x0a;
const DOUBLE: u8 = 0x0b;
const STRING: u8 = 0x0c;
const OPAQUE: u8 = 0x0f;

/// MySQL field types an OPAQUE value may carry that MySQL prints as themselves.
const OPAQUE_NEWDECIMAL: u8 = 246;
const OPAQUE_DATE: u8 = 10;
const OPAQUE_TIME: u8 = 11;
const OPAQUE_DATETIME: u8 = 12;
const OPAQUE_TIMESTAMP: u8 = 7;

/// The document as JSON text; `None` when it is malformed.
pub fn to_text(doc: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(doc.len() + 16);
    match doc.split_first() {
        // An empty value is JSON null (what MySQL writes for a NULL-equivalent document).
        None => out.push_str("null"),
        Some((&t, body)) => value(&mut out, t, body, 0)?,
    }
    Some(out)
}

fn u(b: &[u8], at: usize, n: usize) -> Option<u64> {
    let s = b.get(at..at + n)?;
    Some(s.iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

/// A variable-length length: 7 bits per byte, low first.
fn varlen(b: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for (i, &x) in b.iter().enumerate().take(5) {
        len |= usize::from(x & 0x7f) << (7 * i);
        if x & 0x80 == 0 {
            return Some((len, i + 1));
        }
    }
    None
}

fn string(out: &mut String, s: &str) {
    // serde_json's escaping: quotes, backslashes and control characters.
    out.push_str(&serde_json::Value::from(s).to_string());
}

fn value(out: &mut String, t: u8, body: &[u8], depth: usize) -> Option<()> {
    if depth > 100 {
        return None;
    }
    match t {
        SMALL_OBJ | LARGE_OBJ | SMALL_ARR | LARGE_ARR => return container(out, t, body, depth),
        LITERAL => out.push_str(match body.first()? {
            0 => "null",
            1 => "true",
            2 => "false",
            _ => return None,
        }),
        INT16 => write!(out, "{}", u(body, 0, 2)? as u16 as i16).ok()?,
        UINT16 => write!(out, "{}", u(body, 0, 2)?).ok()?,
        INT32 => write!(out, "{}", u(body, 0, 4)? as u32 as i32).ok()?,
        UINT32 => write!(out, "{}", u(body, 0, 4)?).ok()?,
        INT64 => write!(out, "{}", u(body, 0, 8)? as i64).ok()?,
        UINT64 => write!(out, "{}", u(body, 0, 8)?).ok()?,
        DOUBLE => {
            let v = f64::from_bits(u(body, 0, 8)?);
            // The shortest text that reads back as the same double (MySQL stores no NaN/inf),
            // with MySQL's exponent form (`1e300`, not `1e+300`).
            out.push_str(&serde_json::Number::from_f64(v)?.to_string().replace("e+", "e"));
        }
        STRING => {
            let (len, n) = varlen(body)?;
            let s = body.get(n..n + len)?;
            string(out, &String::from_utf8_lossy(s));
        }
        OPAQUE => {
            let field_type = *body.first()?;
            let (len, n) = varlen(body.get(1..)?)?;
            let s = body.get(1 + n..1 + n + len)?;
            opaque(out, field_type, s)?;
        }
        _ => return None,
    }
    Some(())
}

/// An OPAQUE value: DECIMAL as its exact number, dates and times as MySQL prints them, anything
/// else as MySQL does (`"base64:type<N>:<base64>"`).
fn opaque(out: &mut String, field_type: u8, s: &[u8]) -> Option<()> {
    match field_type {
        OPAQUE_NEWDECIMAL => {
            let (&precision, rest) = s.split_first()?;
            let (&scale, raw) = rest.split_first()?;
            if raw.len() != super::values::decimal_size(precision, scale) {
                return None;
            }
            let mut text = Vec::new();
            super::values::decimal_text(&mut text, raw, precision, scale);
            out.push_str(std::str::from_utf8(&text).ok()?);
        }
        OPAQUE_DATE | OPAQUE_DATETIME | OPAQUE_TIMESTAMP if s.len() >= 8 => {
            let packed = u(s, 0, 8)? as i64;
            let int = packed >> 24;
            let micros = packed % (1 << 24);
            let ymd = int >> 17;
            let (ym, day) = (ymd >> 5, ymd % 32);
            let (year, month) = (ym / 13, ym % 13);
            let hms = int % (1 << 17);
            let (hour, minute, second) = (hms >> 12, (hms >> 6) % 64, hms % 64);
            if field_type == OPAQUE_DATE {
                write!(out, "\"{year:04}-{month:02}-{day:02}\"").ok()?;
            } else {
                write!(
                    out,
                    "\"{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}.{micros:06}\""
                )
                .ok()?;
            }
        }
        OPAQUE_TIME if s.len() >= 8 => {
            let packed = u(s, 0, 8)? as i64;
            let sign = if packed < 0 { "-" } else { "" };
            let packed = packed.unsigned_abs();
            let int = packed >> 24;
            let micros = packed % (1 << 24);
            let (hour, minute, second) = ((int >> 12) % (1 << 10), (int >> 6) % 64, int % 64);
            write!(out, "\"{sign}{hour:02}:{minute:02}:{second:02}.{micros:06}\"").ok()?;
        }
        t => {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(s);
            write!(out, "\"base64:type{t}:{b64}\"").ok()?;
        }
    }
    Some(())
}

fn container(out: &mut String, t: u8, body: &[u8], depth: usize) -> Option<()> {
    let large = t == LARGE_OBJ || t == LARGE_ARR;
    let is_obj = t == SMALL_OBJ || t == LARGE_OBJ;
    let w = if large { 4 } else { 2 };
    let count = u(body, 0, w)? as usize;
    let size = u(body, w, w)? as usize;
    if size > body.len() {
        return None;
    }
    let body = &body[..size];
    let keys_at = 2 * w;
    let key_entry = if large { 6 } else { 4 };
    let values_at = keys_at + if is_obj { count * key_entry } else { 0 };
    let value_entry = 1 + w;
    // Every entry must fit in the body: a hostile count cannot make us loop for long.
    if values_at.checked_add(count.checked_mul(value_entry)?)? > body.len() {
        return None;
    }
    out.push(if is_obj { '{' } else { '[' });
    for i in 0..count {
        if i > 0 {
            out.push_str(", ");
        }
        if is_obj {
            let ka = keys_at + i * key_entry;
            let koff = u(body, ka, w)? as usize;
            let klen = u(body, ka + w, 2)? as usize;
            let key = body.get(koff..koff + klen)?;
            string(out, &String::from_utf8_lossy(key));
            out.push_str(": ");
        }
        let at = values_at + i * value_entry;
        let vt = *body.get(at)?;
        let inlined = match vt {
            LITERAL | INT16 | UINT16 => true,
            INT32 | UINT32 => large,
            _ => false,
        };
        if inlined {
            value(out, vt, body.get(at + 1..at + 1 + w)?, depth + 1)?;
        } else {
            let off = u(body, at + 1, w)? as usize;
            value(out, vt, body.get(off..)?, depth + 1)?;
        }
    }
    out.push(if is_obj { '}' } else { ']' });
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_object_with_inlined_and_offset_values() {
        // {"a": 1, "b": "xy"} as MySQL writes it.
        let mut body = Vec::new();
        let count = 2u16;
        // header (4) + 2 key entries (8) + 2 value entries (6) = 18; keys at 18..20, string at 20.
        let size = 18 + 2 + 3;
        body.extend_from_slice(&count.to_le_bytes());
        body.extend_from_slice(&(size as u16).to_le_bytes());
        body.extend_from_slice(&18u16.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&19u16.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.push(INT16);
        body.extend_from_slice(&1u16.to_le_bytes());
        body.push(STRING);
        body.extend_from_slice(&20u16.to_le_bytes());
        body.extend_from_slice(b"ab");
        body.extend_from_slice(&[2, b'x', b'y']);
        let mut doc = vec![SMALL_OBJ];
        doc.extend_from_slice(&body);
        assert_eq!(to_text(&doc).unwrap(), r#"{"a": 1, "b": "xy"}"#);
        // A literal array [true, null].
        let arr = [SMALL_ARR, 2, 0, 10, 0, LITERAL, 1, 0, LITERAL, 0, 0];
        assert_eq!(to_text(&arr).unwrap(), "[true, null]");
        // Truncated documents and hostile counts are refused, not half-written.
        assert!(to_text(&doc[..10]).is_none());
        assert!(to_text(&[SMALL_ARR, 0xff, 0xff, 10, 0]).is_none());
        assert_eq!(to_text(&[]).unwrap(), "null");
    }

    /// Numbers keep their exact value: no 64-bit integer or decimal goes through a double.
    #[test]
    fn numbers_are_exact() {
        let scalar = |t: u8, body: &[u8]| {
            let mut d = vec![t];
            d.extend_from_slice(body);
            to_text(&d).unwrap()
        };
        assert_eq!(
            scalar(UINT64, &12345678901234567890u64.to_le_bytes()),
            "12345678901234567890"
        );
        assert_eq!(
            scalar(INT64, &(-9007199254740993i64).to_le_bytes()),
            "-9007199254740993"
        );
        assert_eq!(scalar(INT16, &(-2i16).to_le_bytes()), "-2");
        assert_eq!(scalar(DOUBLE, &0.1f64.to_bits().to_le_bytes()), "0.1");
        assert_eq!(scalar(DOUBLE, &1e300f64.to_bits().to_le_bytes()), "1e300");
        // DECIMAL(5,2) as an OPAQUE value: 123.45 and -123.45 (stored inverted).
        assert_eq!(to_text(&[OPAQUE, 246, 5, 5, 2, 0x80, 0x7b, 0x2d]).unwrap(), "123.45");
        assert_eq!(to_text(&[OPAQUE, 246, 5, 5, 2, 0x7f, 0x84, 0xd2]).unwrap(), "-123.45");
        assert!(to_text(&[OPAQUE, 246, 4, 5, 2, 0x80, 0x7b]).is_none(), "short decimal");
    }

    #[test]
    fn strings_are_escaped_and_opaque_values_printed_as_mysql_does() {
        let mut d = vec![STRING, 5];
        d.extend_from_slice(b"a\"b\n\\");
        assert_eq!(to_text(&d).unwrap(), r#""a\"b\n\\""#);
        // DATETIME 2015-01-15 23:24:25.000001 packed as MySQL does.
        let ymd: i64 = ((2015 * 13 + 1) << 5) | 15;
        let hms: i64 = (23 << 12) | (24 << 6) | 25;
        let packed = (((ymd << 17) | hms) << 24) | 1;
        let mut d = vec![OPAQUE, OPAQUE_DATETIME, 8];
        d.extend_from_slice(&packed.to_le_bytes());
        assert_eq!(to_text(&d).unwrap(), r#""2015-01-15 23:24:25.000001""#);
        let mut d = vec![OPAQUE, 252, 2, 0xff, 0x00];
        assert_eq!(to_text(&d).unwrap(), r#""base64:type252:/wA=""#);
        d.truncate(3);
        assert!(to_text(&d).is_none());
    }
}
