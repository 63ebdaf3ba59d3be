//! Writes `google.protobuf.Struct` bytes (HStreamDB's JSON records) directly, without building a
//! tree of `prost_types::Value`s first: CDC sources encode every row through here.
//!
//! Each writer appends to a `Vec<u8>`; nested messages are written in place and their length
//! prefix is inserted afterwards (a short move, as rows are small).

/// Appends a length-delimited field `tag` whose body `body` writes. One byte is reserved for the
/// length; only a body of 128 bytes or more moves to make room for a longer varint.
#[inline]
pub fn message(buf: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    buf.push(tag);
    let at = buf.len();
    buf.push(0);
    body(buf);
    let len = buf.len() - at - 1;
    if len < 0x80 {
        buf[at] = len as u8;
    } else {
        let mut v = [0u8; 10];
        let n = varint(&mut v, len as u64);
        buf[at] = v[0];
        buf.splice(at + 1..at + 1, v[1..n].iter().copied());
    }
}

fn varint(out: &mut [u8; 10], mut v: u64) -> usize {
    let mut i = 0;
    while v >= 0x80 {
        out[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
    i + 1
}

#[inline]
fn bytes_field(buf: &mut Vec<u8>, tag: u8, b: &[u8]) {
    buf.push(tag);
    let mut v = [0u8; 10];
    let n = varint(&mut v, b.len() as u64);
    buf.extend_from_slice(&v[..n]);
    buf.extend_from_slice(b);
}

/// One `name: value` entry of a Struct; `value` writes the body of a `Value`.
#[inline]
pub fn field(buf: &mut Vec<u8>, name: &str, value: impl FnOnce(&mut Vec<u8>)) {
    message(buf, 0x0a, |b| {
        bytes_field(b, 0x0a, name.as_bytes());
        message(b, 0x12, value);
    });
}

// Bodies of a `google.protobuf.Value`.

#[inline]
pub fn null(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[0x08, 0x00]);
}

#[inline]
pub fn number(buf: &mut Vec<u8>, n: f64) {
    buf.push(0x11);
    buf.extend_from_slice(&n.to_le_bytes());
}

#[inline]
pub fn string(buf: &mut Vec<u8>, s: &str) {
    bytes_field(buf, 0x1a, s.as_bytes());
}

/// A string from bytes the caller knows to be UTF-8 (PostgreSQL sends UTF-8 text).
#[inline]
pub fn string_bytes(buf: &mut Vec<u8>, s: &[u8]) {
    bytes_field(buf, 0x1a, s);
}

#[inline]
pub fn boolean(buf: &mut Vec<u8>, v: bool) {
    buf.extend_from_slice(&[0x20, u8::from(v)]);
}

/// A nested Struct whose fields `fields` writes with [`field`].
#[inline]
pub fn object(buf: &mut Vec<u8>, fields: impl FnOnce(&mut Vec<u8>)) {
    message(buf, 0x2a, fields);
}

/// A list whose items `items` writes with [`item`].
#[inline]
pub fn list(buf: &mut Vec<u8>, items: impl FnOnce(&mut Vec<u8>)) {
    message(buf, 0x32, items);
}

/// One item of a list.
#[inline]
pub fn item(buf: &mut Vec<u8>, value: impl FnOnce(&mut Vec<u8>)) {
    message(buf, 0x0a, value);
}

/// Any JSON value.
pub fn json(buf: &mut Vec<u8>, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Null => null(buf),
        Value::Bool(b) => boolean(buf, *b),
        Value::Number(n) => number(buf, n.as_f64().unwrap_or(0.0)),
        Value::String(s) => string(buf, s),
        Value::Array(a) => list(buf, |b| {
            for v in a {
                item(b, |b| json(b, v));
            }
        }),
        Value::Object(o) => object(buf, |b| {
            for (k, v) in o {
                field(b, k, |b| json(b, v));
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn matches_prost_types() {
        let long = "x".repeat(300);
        let mut buf = Vec::new();
        field(&mut buf, "key", |b| {
            object(b, |b| field(b, "id", |b| number(b, 7.0)));
        });
        field(&mut buf, "value", |b| {
            object(b, |b| {
                field(b, "s", |b| string(b, &long));
                field(b, "n", null);
                field(b, "t", |b| boolean(b, true));
                field(b, "l", |b| {
                    list(b, |b| {
                        item(b, |b| number(b, 1.5));
                        item(b, |b| json(b, &serde_json::json!({"a": [1, "b"]})));
                    })
                });
            })
        });
        let decoded = prost_types::Struct::decode(buf.as_slice()).unwrap();
        let want = serde_json::json!({
            "key": {"id": 7.0},
            "value": {"s": long, "n": null, "t": true, "l": [1.5, {"a": [1.0, "b"]}]}
        });
        let mut again = Vec::new();
        json(&mut again, &want);
        // `json` of an object writes a Value; its Struct body starts after tag and length.
        let as_value = prost_types::Value::decode(again.as_slice()).unwrap();
        match as_value.kind {
            Some(prost_types::value::Kind::StructValue(s)) => assert_eq!(s, decoded),
            other => panic!("{other:?}"),
        }
    }
}
