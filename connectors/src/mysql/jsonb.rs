//! MySQL's binary JSON (the JSON column type in MySQL's binlog), written as a protobuf `Value`.
//!
//! Layout: a type byte, then the value. Objects and arrays have a small (16-bit offsets) and a
//! large (32-bit) form: element count, byte size, key entries (objects), value entries (type +
//! offset, or the value inlined when it fits), then keys and values. Offsets count from the
//! start of the object/array body.

use crate::pbstruct as pb;

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

/// Writes the document; `None` when it is malformed (nothing sensible was written then).
pub fn write(buf: &mut Vec<u8>, doc: &[u8]) -> Option<()> {
    if doc.is_empty() {
        // An empty value is JSON null (what MySQL writes for a NULL-equivalent document).
        pb::null(buf);
        return Some(());
    }
    let mut out = Vec::new();
    value(&mut out, doc[0], &doc[1..], 0)?;
    buf.extend_from_slice(&out);
    Some(())
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

fn value(out: &mut Vec<u8>, t: u8, body: &[u8], depth: usize) -> Option<()> {
    if depth > 100 {
        return None;
    }
    match t {
        SMALL_OBJ | LARGE_OBJ | SMALL_ARR | LARGE_ARR => container(out, t, body, depth),
        LITERAL => {
            match body.first()? {
                0 => pb::null(out),
                1 => pb::boolean(out, true),
                2 => pb::boolean(out, false),
                _ => return None,
            }
            Some(())
        }
        INT16 => num(out, u(body, 0, 2)? as u16 as i16 as f64),
        UINT16 => num(out, u(body, 0, 2)? as f64),
        INT32 => num(out, u(body, 0, 4)? as u32 as i32 as f64),
        UINT32 => num(out, u(body, 0, 4)? as f64),
        INT64 => {
            let v = u(body, 0, 8)? as i64;
            if v.unsigned_abs() <= 1 << 53 {
                num(out, v as f64)
            } else {
                pb::string(out, &v.to_string());
                Some(())
            }
        }
        UINT64 => {
            let v = u(body, 0, 8)?;
            if v <= 1 << 53 {
                num(out, v as f64)
            } else {
                pb::string(out, &v.to_string());
                Some(())
            }
        }
        DOUBLE => num(out, f64::from_bits(u(body, 0, 8)?)),
        STRING => {
            let (len, n) = varlen(body)?;
            let s = body.get(n..n + len)?;
            pb::string(out, &String::from_utf8_lossy(s));
            Some(())
        }
        OPAQUE => {
            // A MySQL type byte, then the value's bytes (DECIMAL, dates…): kept as text where it
            // is text, else base64.
            let (len, n) = varlen(body.get(1..)?)?;
            let s = body.get(1 + n..1 + n + len)?;
            match std::str::from_utf8(s) {
                Ok(text) => pb::string(out, text),
                Err(_) => {
                    use base64::Engine;
                    pb::string(out, &base64::engine::general_purpose::STANDARD.encode(s))
                }
            }
            Some(())
        }
        _ => None,
    }
}

fn num(out: &mut Vec<u8>, v: f64) -> Option<()> {
    pb::number(out, v);
    Some(())
}

fn container(out: &mut Vec<u8>, t: u8, body: &[u8], depth: usize) -> Option<()> {
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
    let mut failed = false;
    let elem = |out: &mut Vec<u8>, i: usize| -> Option<()> {
        let at = values_at + i * value_entry;
        let vt = *body.get(at)?;
        let inlined = match vt {
            LITERAL | INT16 | UINT16 => true,
            INT32 | UINT32 => large,
            _ => false,
        };
        if inlined {
            value(out, vt, body.get(at + 1..at + 1 + w)?, depth + 1)
        } else {
            let off = u(body, at + 1, w)? as usize;
            value(out, vt, body.get(off..)?, depth + 1)
        }
    };
    if is_obj {
        pb::object(out, |b| {
            for i in 0..count {
                let ka = keys_at + i * key_entry;
                let (Some(koff), Some(klen)) = (u(body, ka, w), u(body, ka + w, 2)) else {
                    failed = true;
                    return;
                };
                let Some(key) = body.get(koff as usize..koff as usize + klen as usize) else {
                    failed = true;
                    return;
                };
                let key = String::from_utf8_lossy(key);
                let mut v = Vec::new();
                if elem(&mut v, i).is_none() {
                    failed = true;
                    return;
                }
                pb::field(b, &key, |b| b.extend_from_slice(&v));
            }
        });
    } else {
        pb::list(out, |b| {
            for i in 0..count {
                let mut v = Vec::new();
                if elem(&mut v, i).is_none() {
                    failed = true;
                    return;
                }
                pb::item(b, |b| b.extend_from_slice(&v));
            }
        });
    }
    (!failed).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(doc: &[u8]) -> serde_json::Value {
        let mut buf = Vec::new();
        pb::field(&mut buf, "v", |b| {
            write(b, doc).expect("valid");
        });
        hstream_runtime::structs::decode_json(&buf).unwrap()["v"].clone()
    }

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
        assert_eq!(decode(&doc), serde_json::json!({"a": 1.0, "b": "xy"}));
        // A literal array [true, null].
        let arr = [SMALL_ARR, 2, 0, 10, 0, LITERAL, 1, 0, LITERAL, 0, 0];
        assert_eq!(decode(&arr), serde_json::json!([true, null]));
        // Truncated documents are refused, not half-written.
        let mut buf = Vec::new();
        assert!(write(&mut buf, &doc[..10]).is_none());
        assert!(buf.is_empty());
    }
}
