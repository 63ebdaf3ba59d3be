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

/// Writes the Struct of a JSON object given as text, in one pass over the text (no tree): how
/// Airbyte RECORD data becomes a record. The values of the top-level fields named in `keys` are
/// also returned, in that order, as text (strings unquoted, other values as JSON), `None` where
/// absent. Errs when the text is not a JSON object.
pub fn struct_from_json(
    buf: &mut Vec<u8>,
    text: &str,
    keys: &[String],
) -> Result<Vec<Option<String>>, serde_json::Error> {
    use serde::Deserializer as _;
    let mut found = vec![None; keys.len()];
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(TopLevel {
        buf,
        keys,
        found: &mut found,
    })?;
    de.end()?;
    Ok(found)
}

struct TopLevel<'b> {
    buf: &'b mut Vec<u8>,
    keys: &'b [String],
    found: &'b mut Vec<Option<String>>,
}

impl<'de> serde::de::Visitor<'de> for TopLevel<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match self.keys.iter().position(|k| *k == name) {
                Some(i) => {
                    let raw: &'de serde_json::value::RawValue = map.next_value()?;
                    let mut err = None;
                    field(self.buf, &name, |b| {
                        let mut de = serde_json::Deserializer::from_str(raw.get());
                        if let Err(e) = serde::de::DeserializeSeed::deserialize(ValueBody(b), &mut de) {
                            err = Some(e);
                        }
                    });
                    if let Some(e) = err {
                        return Err(serde::de::Error::custom(e));
                    }
                    let text = raw.get();
                    self.found[i] = Some(match serde_json::from_str::<std::borrow::Cow<'_, str>>(text) {
                        Ok(s) => s.into_owned(),
                        Err(_) => text.to_owned(),
                    });
                }
                None => {
                    let mut err = None;
                    field(self.buf, &name, |b| {
                        if let Err(e) = map.next_value_seed(ValueBody(b)) {
                            err = Some(e);
                        }
                    });
                    if let Some(e) = err {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Writes the body of a `google.protobuf.Value` for whatever JSON value comes next.
struct ValueBody<'b>(&'b mut Vec<u8>);

impl<'de> serde::de::DeserializeSeed<'de> for ValueBody<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ValueBody<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        boolean(self.0, v);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        number(self.0, v as f64);
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        number(self.0, v as f64);
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        number(self.0, v);
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        string(self.0, v);
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        null(self.0);
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        null(self.0);
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut result = Ok(());
        list(self.0, |b| {
            loop {
                let mut got = Ok(false);
                item(b, |b| got = seq.next_element_seed(ValueBody(b)).map(|o| o.is_some()));
                match got {
                    Ok(true) => {}
                    Ok(false) => {
                        // The item written for the end of the list is not one: take it back.
                        b.truncate(b.len() - 2);
                        break;
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        });
        result
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut result = Ok(());
        object(self.0, |b| {
            loop {
                match map.next_key::<std::borrow::Cow<'de, str>>() {
                    Ok(Some(name)) => {
                        let mut got = Ok(());
                        field(b, &name, |b| got = map.next_value_seed(ValueBody(b)));
                        if let Err(e) = got {
                            result = Err(e);
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        });
        result
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

    #[test]
    fn struct_from_json_matches_the_tree_writer() {
        let text = r#"{"id": 42, "name": "a\"b", "tags": ["x", 1.5, null, true, [], {}], "addr": {"zip": "0123", "geo": {"lat": -1e3}}, "empty": {}, "n": null}"#;
        let mut buf = Vec::new();
        let keys = vec!["name".to_owned(), "id".to_owned(), "missing".to_owned()];
        let found = struct_from_json(&mut buf, text, &keys).unwrap();
        assert_eq!(found, vec![Some("a\"b".to_owned()), Some("42".to_owned()), None]);
        let decoded = prost_types::Struct::decode(buf.as_slice()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let mut want = Vec::new();
        for (k, v) in v.as_object().unwrap() {
            field(&mut want, k, |b| json(b, v));
        }
        assert_eq!(decoded, prost_types::Struct::decode(want.as_slice()).unwrap());
        assert!(struct_from_json(&mut Vec::new(), "[1]", &[]).is_err());
        assert!(struct_from_json(&mut Vec::new(), r#"{"a": [1,}"#, &[]).is_err());
        assert!(struct_from_json(&mut Vec::new(), r#"{"a": 1} x"#, &[]).is_err());
        // Long strings and deep nesting take multi-byte lengths.
        let long = format!(
            r#"{{"s": "{}", "l": [{}]}}"#,
            "y".repeat(1000),
            vec!["{\"k\": [1, 2]}"; 100].join(",")
        );
        let mut buf = Vec::new();
        struct_from_json(&mut buf, &long, &[]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&long).unwrap();
        let mut want = Vec::new();
        for (k, v) in v.as_object().unwrap() {
            field(&mut want, k, |b| json(b, v));
        }
        assert_eq!(
            prost_types::Struct::decode(buf.as_slice()).unwrap(),
            prost_types::Struct::decode(want.as_slice()).unwrap()
        );
    }
}
