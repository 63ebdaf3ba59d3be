//! Writes `google.protobuf.Struct` bytes (HStreamDB's JSON records) directly, without building a
//! tree of `prost_types::Value`s first: CDC sources encode every row through here; and reads
//! them into JSON text likewise (how records reach WASM plugins).
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
    from_json(buf, text.as_bytes(), keys, false)
}

/// Like [`struct_from_json`] (no keys), but errs on a number a double cannot hold exactly (an
/// integer beyond ±2^53, written as an integer or not), rather than changing its value: for a
/// caller that can keep such a document as it is instead (a RAW record).
pub fn struct_from_json_exact(buf: &mut Vec<u8>, text: &[u8]) -> Result<(), serde_json::Error> {
    from_json(buf, text, &[], true).map(|_| ())
}

fn from_json(
    buf: &mut Vec<u8>,
    text: &[u8],
    keys: &[String],
    exact: bool,
) -> Result<Vec<Option<String>>, serde_json::Error> {
    use serde::Deserializer as _;
    let mut found = vec![None; keys.len()];
    let mut de = serde_json::Deserializer::from_slice(text);
    de.deserialize_map(TopLevel {
        buf,
        keys,
        found: &mut found,
        exact,
    })?;
    de.end()?;
    Ok(found)
}

/// The largest magnitude up to which every integer is a double.
const EXACT_INTEGERS: f64 = 9_007_199_254_740_992.0;

struct TopLevel<'b> {
    buf: &'b mut Vec<u8>,
    keys: &'b [String],
    found: &'b mut Vec<Option<String>>,
    exact: bool,
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
                    let exact = self.exact;
                    field(self.buf, &name, |b| {
                        let mut de = serde_json::Deserializer::from_str(raw.get());
                        if let Err(e) = serde::de::DeserializeSeed::deserialize(ValueBody(b, exact), &mut de) {
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
                    let exact = self.exact;
                    field(self.buf, &name, |b| {
                        if let Err(e) = map.next_value_seed(ValueBody(b, exact)) {
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

/// Writes the body of a `google.protobuf.Value` for whatever JSON value comes next; with `.1`,
/// errs on a number a double cannot hold exactly.
struct ValueBody<'b>(&'b mut Vec<u8>, bool);

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
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        if self.1 && v.unsigned_abs() > EXACT_INTEGERS as u64 {
            return Err(E::custom(format_args!("the number {v} does not fit a double exactly")));
        }
        number(self.0, v as f64);
        Ok(())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        if self.1 && v > EXACT_INTEGERS as u64 {
            return Err(E::custom(format_args!("the number {v} does not fit a double exactly")));
        }
        number(self.0, v as f64);
        Ok(())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        // An integer too long for u64 arrives here already rounded (2^53 + 1 arrives as 2^53):
        // refuse every integral value from 2^53 on, whether it was written as an integer or not.
        if self.1 && v.fract() == 0.0 && v.abs() >= EXACT_INTEGERS {
            return Err(E::custom(format_args!(
                "the number {v:e} may not be the one written: a double holds integers exactly only up to 2^53"
            )));
        }
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
        let exact = self.1;
        list(self.0, |b| {
            loop {
                let mut got = Ok(false);
                item(b, |b| {
                    got = seq.next_element_seed(ValueBody(b, exact)).map(|o| o.is_some())
                });
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
        let exact = self.1;
        object(self.0, |b| {
            loop {
                match map.next_key::<std::borrow::Cow<'de, str>>() {
                    Ok(Some(name)) => {
                        let mut got = Ok(());
                        field(b, &name, |b| got = map.next_value_seed(ValueBody(b, exact)));
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

/// Writes the JSON text of Struct bytes (a JSON record) into `out`, in one pass over the wire
/// format (no tree): how a record reaches a WASM plugin. Fields keep their wire order; numbers
/// are written as `serde_json` writes an `f64` (non-finite ones as `null`); unknown fields are
/// skipped. Errs on bytes that are not a well-formed Struct.
pub fn struct_to_json(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), StructError> {
    let mut r = Wire(bytes);
    write_struct(&mut r, out, 0)
}

/// Struct bytes that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf Struct: {0}")]
pub struct StructError(&'static str);

/// Nesting deeper than this is refused (a stack guard; an object level counts two).
const MAX_NESTING: usize = 300;

struct Wire<'a>(&'a [u8]);

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Result<u64, StructError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first().ok_or(StructError("truncated varint"))?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(StructError("varint too long"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], StructError> {
        let n = usize::try_from(self.varint()?).map_err(|_| StructError("length too large"))?;
        if n > self.0.len() {
            return Err(StructError("truncated field"));
        }
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(b)
    }

    fn fixed64(&mut self) -> Result<u64, StructError> {
        if self.0.len() < 8 {
            return Err(StructError("truncated fixed64"));
        }
        let (b, rest) = self.0.split_at(8);
        self.0 = rest;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn skip(&mut self, wire_type: u64) -> Result<(), StructError> {
        match wire_type {
            0 => self.varint().map(|_| ()),
            1 => self.fixed64().map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 if self.0.len() >= 4 => {
                self.0 = &self.0[4..];
                Ok(())
            }
            _ => Err(StructError("unsupported wire type")),
        }
    }

    /// One entry of a Struct's `fields` map (a length-delimited field 1): its key and its
    /// `Value`'s bytes (`None` when absent).
    fn map_entry(&mut self) -> Result<(&'a [u8], Option<&'a [u8]>), StructError> {
        let mut entry = Wire(self.bytes()?);
        let (mut key, mut value): (&[u8], Option<&[u8]>) = (b"", None);
        while let Some((f, wt)) = entry.tag()? {
            match (f, wt) {
                (1, 2) => key = entry.bytes()?,
                (2, 2) => value = Some(entry.bytes()?),
                _ => entry.skip(wt)?,
            }
        }
        Ok((key, value))
    }

    /// The one kind a `Value`'s bytes hold (its field number, then its bytes or its scalar);
    /// should several come, the last one counts (protobuf's rule). `None`: no kind (NULL).
    fn value_kind(&mut self) -> Result<Option<(u64, Wire<'a>, u64)>, StructError> {
        let mut kind = None;
        while let Some((field, wt)) = self.tag()? {
            match (field, wt) {
                (1 | 4, 0) => kind = Some((field, Wire(&[]), self.varint()?)),
                (2, 1) => kind = Some((2, Wire(&[]), self.fixed64()?)),
                (3 | 5 | 6, 2) => kind = Some((field, Wire(self.bytes()?), 0)),
                _ => self.skip(wt)?,
            }
        }
        Ok(kind)
    }

    /// The next field's number and wire type, or `None` at the end.
    fn tag(&mut self) -> Result<Option<(u64, u64)>, StructError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let t = self.varint()?;
        Ok(Some((t >> 3, t & 7)))
    }
}

fn json_str(out: &mut Vec<u8>, s: &[u8]) -> Result<(), StructError> {
    let s = std::str::from_utf8(s).map_err(|_| StructError("string is not UTF-8"))?;
    serde_json::to_writer(out, s).map_err(|_| StructError("string"))
}

fn write_struct(r: &mut Wire<'_>, out: &mut Vec<u8>, depth: usize) -> Result<(), StructError> {
    if depth > MAX_NESTING {
        return Err(StructError("nested too deep"));
    }
    out.push(b'{');
    let mut first = true;
    while let Some((field, wt)) = r.tag()? {
        if field != 1 || wt != 2 {
            r.skip(wt)?;
            continue;
        }
        // A map entry: key (1), value (2).
        let (key, value) = r.map_entry()?;
        if !first {
            out.push(b',');
        }
        first = false;
        json_str(out, key)?;
        out.push(b':');
        write_value(&mut Wire(value.unwrap_or_default()), out, depth + 1)?;
    }
    out.push(b'}');
    Ok(())
}

fn write_value(r: &mut Wire<'_>, out: &mut Vec<u8>, depth: usize) -> Result<(), StructError> {
    if depth > MAX_NESTING {
        return Err(StructError("nested too deep"));
    }
    let kind = r.value_kind()?;
    match kind {
        None | Some((1, _, _)) => out.extend_from_slice(b"null"),
        Some((2, _, bits)) => {
            serde_json::to_writer(&mut *out, &f64::from_bits(bits)).map_err(|_| StructError("number"))?
        }
        Some((3, w, _)) => json_str(out, w.0)?,
        Some((4, _, v)) => out.extend_from_slice(if v != 0 { b"true" } else { b"false" }),
        Some((5, mut w, _)) => write_struct(&mut w, out, depth + 1)?,
        Some((_, mut w, _)) => {
            out.push(b'[');
            let mut first = true;
            while let Some((f, wt)) = w.tag()? {
                if f != 1 || wt != 2 {
                    w.skip(wt)?;
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                write_value(&mut Wire(w.bytes()?), out, depth + 1)?;
            }
            out.push(b']');
        }
    }
    Ok(())
}

/// Reads the fields of Struct bytes (a JSON record) into a JSON object, in one pass over the
/// wire format; only the fields `wanted` accepts are decoded (the others are skipped by their
/// length), all of them when `wanted` is `None`. Numbers come as doubles, as every HStreamDB
/// client writes them; a repeated key keeps its last value (protobuf's map rule). Errs on bytes
/// that are not a well-formed Struct.
pub fn struct_fields(
    bytes: &[u8],
    wanted: Option<&dyn Fn(&str) -> bool>,
) -> Result<serde_json::Map<String, serde_json::Value>, StructError> {
    read_struct(&mut Wire(bytes), wanted, 0)
}

fn utf8(s: &[u8]) -> Result<&str, StructError> {
    std::str::from_utf8(s).map_err(|_| StructError("string is not UTF-8"))
}

fn read_struct(
    r: &mut Wire<'_>,
    wanted: Option<&dyn Fn(&str) -> bool>,
    depth: usize,
) -> Result<serde_json::Map<String, serde_json::Value>, StructError> {
    if depth > MAX_NESTING {
        return Err(StructError("nested too deep"));
    }
    let mut out = serde_json::Map::new();
    while let Some((field, wt)) = r.tag()? {
        if field != 1 || wt != 2 {
            r.skip(wt)?;
            continue;
        }
        let (key, value) = r.map_entry()?;
        let key = utf8(key)?;
        if wanted.is_some_and(|w| !w(key)) {
            continue;
        }
        let v = read_value(&mut Wire(value.unwrap_or_default()), depth + 1)?;
        out.insert(key.to_owned(), v);
    }
    Ok(out)
}

fn read_value(r: &mut Wire<'_>, depth: usize) -> Result<serde_json::Value, StructError> {
    use serde_json::Value;
    if depth > MAX_NESTING {
        return Err(StructError("nested too deep"));
    }
    let kind = r.value_kind()?;
    Ok(match kind {
        None | Some((1, _, _)) => Value::Null,
        Some((2, _, bits)) => serde_json::Number::from_f64(f64::from_bits(bits)).map_or(Value::Null, Value::Number),
        Some((3, w, _)) => Value::String(utf8(w.0)?.to_owned()),
        Some((4, _, v)) => Value::Bool(v != 0),
        Some((5, mut w, _)) => Value::Object(read_struct(&mut w, None, depth + 1)?),
        Some((_, mut w, _)) => {
            let mut items = Vec::new();
            while let Some((f, wt)) = w.tag()? {
                if f != 1 || wt != 2 {
                    w.skip(wt)?;
                    continue;
                }
                items.push(read_value(&mut Wire(w.bytes()?), depth + 1)?);
            }
            Value::Array(items)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn fields_read_as_prost_reads_them_and_only_those_wanted() {
        let v = serde_json::json!({"a": 1.5, "b": [true, null, "x", {"c": [2.0]}], "d": {"e": "f"}, "g": null});
        let bytes = crate::structs::encode_json(&v);
        let all = struct_fields(&bytes, None).unwrap();
        assert_eq!(
            serde_json::Value::Object(all),
            crate::structs::decode_json(&bytes).unwrap()
        );
        let only = struct_fields(&bytes, Some(&|k: &str| k == "a" || k == "d")).unwrap();
        assert_eq!(
            serde_json::Value::Object(only),
            serde_json::json!({"a": 1.5, "d": {"e": "f"}})
        );
        assert!(struct_fields(&[0x0a, 0x05, 0x0a], None).is_err(), "truncated");
        // Nesting past the guard is refused, not a stack overflow.
        let mut deep = serde_json::json!(1);
        for _ in 0..400 {
            deep = serde_json::json!([deep]);
        }
        let mut buf = Vec::new();
        field(&mut buf, "x", |b| json(b, &deep));
        assert!(struct_fields(&buf, None).is_err());
    }

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
    fn exact_refuses_numbers_a_double_would_change() {
        let mut buf = Vec::new();
        struct_from_json_exact(
            &mut buf,
            br#"{"a": 9007199254740992, "b": -9007199254740992, "c": [0.1, 1e300]}"#,
        )
        .unwrap_err();
        for ok in [
            r#"{"a": 9007199254740992, "b": -9007199254740992, "c": [0.1, 1.5e-300]}"#,
            r#"{"n": {"deep": [1, 2.5, -3]}}"#,
        ] {
            buf.clear();
            struct_from_json_exact(&mut buf, ok.as_bytes()).unwrap();
            let mut same = Vec::new();
            struct_from_json(&mut same, ok, &[]).unwrap();
            assert_eq!(buf, same, "{ok}");
        }
        for bad in [
            r#"{"a": 9007199254740993}"#,
            r#"{"a": -9007199254740993}"#,
            r#"{"a": 12345678901234567890}"#,
            r#"{"a": {"b": [123456789012345678901234567890]}}"#,
            r#"{"a": 1e300}"#,
            r#"{"a": 9007199254740993.0}"#,
        ] {
            let e = struct_from_json_exact(&mut Vec::new(), bad.as_bytes()).unwrap_err();
            assert!(e.to_string().contains("double"), "{bad}: {e}");
            // The lenient reader takes it, rounded.
            struct_from_json(&mut Vec::new(), bad, &[]).unwrap();
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

    #[test]
    fn struct_to_json_reads_what_the_writers_write() {
        let text = r#"{"id": 42, "name": "a\"b\u00e9\n", "tags": ["x", 1.5, null, true, false, [], {}], "addr": {"zip": "0123", "geo": {"lat": -1e3}}, "empty": {}, "n": null, "big": 1e300}"#;
        let mut buf = Vec::new();
        struct_from_json(&mut buf, text, &[]).unwrap();
        let mut out = Vec::new();
        struct_to_json(&buf, &mut out).unwrap();
        let got: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let want = hstream_structs_decode(&buf);
        assert_eq!(got, want);
        assert_eq!(got["tags"][1], serde_json::json!(1.5));
        // NaN (which JSON cannot hold) becomes null; garbage and truncation are errors.
        let mut nan = Vec::new();
        field(&mut nan, "x", |b| number(b, f64::NAN));
        let mut out = Vec::new();
        struct_to_json(&nan, &mut out).unwrap();
        assert_eq!(out, br#"{"x":null}"#);
        assert!(struct_to_json(&buf[..buf.len() - 1], &mut Vec::new()).is_err());
        assert!(struct_to_json(&[0x0a, 0x05, 0x0a], &mut Vec::new()).is_err());
        // Deep nesting is refused, not recursed into without end.
        fn nest(b: &mut Vec<u8>, levels: usize) {
            if levels == 0 {
                number(b, 1.0);
            } else {
                object(b, |b| field(b, "a", |b| nest(b, levels - 1)));
            }
        }
        let mut deep = Vec::new();
        field(&mut deep, "a", |b| nest(b, 200));
        assert!(struct_to_json(&deep, &mut Vec::new()).is_err());
        let mut ok = Vec::new();
        field(&mut ok, "a", |b| nest(b, 100));
        assert!(struct_to_json(&ok, &mut Vec::new()).is_ok());
    }

    fn hstream_structs_decode(buf: &[u8]) -> serde_json::Value {
        crate::structs::decode_json(buf).unwrap()
    }
}
