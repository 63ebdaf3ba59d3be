//! PostgreSQL text-format values to JSON (as Struct `Value`s): the type mapping of the CDC source.
//!
//! | PostgreSQL | JSON |
//! |---|---|
//! | bool | boolean |
//! | int2, int4, oid, float4, float8 | number (NaN/±Infinity as strings) |
//! | int8 | number within ±2^53, else a string (doubles cannot hold it exactly) |
//! | numeric | string, exact (`NaN`, `Infinity` as PostgreSQL prints them) |
//! | money | string, exact, without currency sign or grouping (`-1234.56`; read with `lc_monetary=C`) |
//! | interval | ISO 8601 duration string (`P1Y2M3DT4H5M6.5S`; read with `IntervalStyle=iso_8601`) |
//! | bytea | base64 string |
//! | json, jsonb | the document's exact text, a string (as Debezium's `io.debezium.data.Json`; decision 020) |
//! | date, time | ISO 8601 string as PostgreSQL prints it |
//! | timestamp | ISO 8601 string without zone (`2024-01-02T03:04:05.5`) |
//! | timestamptz, timetz | ISO 8601 string with offset, `Z` for UTC |
//! | arrays of any of these | lists (nested for multi-dimensional arrays) |
//! | bit, varbit | string of `0`/`1` |
//! | inet, cidr, macaddr, point, line, lseg, box, path, polygon, circle | string as PostgreSQL prints it |
//! | enums, text, varchar, uuid and everything else | string |
//!
//! Arrays of a type whose elements are separated by something other than a comma (`box[]`,
//! separated by `;`) stay the array's text rather than risk a wrong split.

use std::collections::HashMap;

use base64::Engine;

use crate::pbstruct as pb;

/// How a column's text is turned into JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Bool,
    /// Integers that always fit a double exactly, and floats.
    Number,
    Int8,
    Numeric,
    /// money as `lc_monetary=C` prints it (`-$1,234.56`): written as an exact decimal.
    Money,
    Bytea,
    Json,
    Timestamp,
    /// timestamptz and timetz: the offset is normalised.
    WithZone,
    Array(Box<Kind>),
    Text,
}

/// The kind of a built-in type; `None` for types this table does not know (look them up).
pub fn builtin(oid: u32) -> Option<Kind> {
    use Kind::*;
    Some(match oid {
        16 => Bool,
        21 | 23 | 26 | 700 | 701 => Number,
        20 => Int8,
        1700 => Numeric,
        790 => Money,
        791 => Array(Box::new(Money)),
        17 => Bytea,
        114 | 3802 => Json,
        1114 => Timestamp,
        1184 | 1266 => WithZone,
        18 | 19 | 25 | 1042 | 1043 | 1082 | 1083 | 1186 | 2950 | 142 | 869 | 650 | 829 | 774 | 3614 | 3615 => Text,
        1000 => Array(Box::new(Bool)),
        1005 | 1007 | 1028 | 1021 | 1022 => Array(Box::new(Number)),
        1016 => Array(Box::new(Int8)),
        1231 => Array(Box::new(Numeric)),
        1001 => Array(Box::new(Bytea)),
        199 | 3807 => Array(Box::new(Json)),
        1115 => Array(Box::new(Timestamp)),
        1185 | 1270 => Array(Box::new(WithZone)),
        1002 | 1003 | 1009 | 1014 | 1015 | 1182 | 1183 | 1187 | 2951 | 143 | 1041 | 651 | 1040 => Array(Box::new(Text)),
        _ => return None,
    })
}

/// Kinds of user-defined types (enums, domains, their arrays), learnt from `pg_type`.
#[derive(Debug, Default, Clone)]
pub struct TypeMap {
    known: HashMap<u32, Kind>,
    /// The array delimiter of each learnt type other than a comma (box: `;`).
    delims: HashMap<u32, u8>,
}

/// One `pg_type` row: oid, typtype, typelem, typcategory, typbasetype, typdelim.
pub struct PgType {
    pub oid: u32,
    pub typtype: u8,
    pub elem: u32,
    pub category: u8,
    pub base: u32,
    /// The separator of this type's values inside an array's text.
    pub delim: u8,
}

impl TypeMap {
    pub fn kind(&self, oid: u32) -> Kind {
        builtin(oid)
            .or_else(|| self.known.get(&oid).cloned())
            .unwrap_or(Kind::Text)
    }

    pub fn is_known(&self, oid: u32) -> bool {
        builtin(oid).is_some() || self.known.contains_key(&oid)
    }

    /// Learns types from `pg_type` rows (which may refer to each other or to built-ins).
    pub fn learn(&mut self, rows: &[PgType]) {
        let by_oid: HashMap<u32, &PgType> = rows.iter().map(|r| (r.oid, r)).collect();
        fn resolve(oid: u32, by: &HashMap<u32, &PgType>, map: &TypeMap, depth: u32) -> Kind {
            if let Some(k) = builtin(oid).or_else(|| map.known.get(&oid).cloned()) {
                return k;
            }
            let Some(t) = by.get(&oid) else { return Kind::Text };
            if depth > 8 {
                return Kind::Text;
            }
            match (t.typtype, t.category) {
                (b'd', _) => resolve(t.base, by, map, depth + 1),
                // Only comma-separated elements are split (box[] uses ';').
                (_, b'A')
                    if t.elem != 0
                        && by
                            .get(&t.elem)
                            .map(|e| e.delim)
                            .or_else(|| map.delims.get(&t.elem).copied())
                            .is_none_or(|d| d == b',') =>
                {
                    Kind::Array(Box::new(resolve(t.elem, by, map, depth + 1)))
                }
                _ => Kind::Text,
            }
        }
        for r in rows {
            let k = resolve(r.oid, &by_oid, self, 0);
            self.known.insert(r.oid, k);
            if r.delim != b',' {
                self.delims.insert(r.oid, r.delim);
            }
        }
    }
}

/// Writes the JSON of one non-null text value of `kind`.
pub fn write_value(buf: &mut Vec<u8>, kind: &Kind, text: &[u8]) {
    match kind {
        Kind::Bool => pb::boolean(buf, text == b"t"),
        Kind::Number => match parse_f64(text) {
            Some(n) => pb::number(buf, n),
            None => pb::string_bytes(buf, text),
        },
        Kind::Int8 => match std::str::from_utf8(text).ok().and_then(|s| s.parse::<i64>().ok()) {
            Some(n) if n.unsigned_abs() <= 1 << 53 => pb::number(buf, n as f64),
            _ => pb::string_bytes(buf, text),
        },
        Kind::Numeric | Kind::Text => pb::string_bytes(buf, text),
        Kind::Money => match money_decimal(text) {
            Some(d) => pb::string(buf, &d),
            None => pb::string_bytes(buf, text),
        },
        Kind::Bytea => pb::string(buf, &bytea_base64(text)),
        // The document's exact text, as Debezium's io.debezium.data.Json: a number in it that a
        // double cannot hold keeps its value.
        Kind::Json => pb::string_bytes(buf, text),
        Kind::Timestamp => match text.iter().position(|&c| c == b' ') {
            // Written in place: date, 'T', time (no copy of the text first).
            Some(i) => pb::message(buf, 0x1a, |b| {
                b.extend_from_slice(&text[..i]);
                b.push(b'T');
                b.extend_from_slice(&text[i + 1..]);
            }),
            None => pb::string_bytes(buf, text),
        },
        Kind::WithZone => pb::message(buf, 0x1a, |b| with_zone_into(b, text)),
        Kind::Array(elem) => {
            if write_array(buf, elem, text).is_none() {
                // Not an array text we understand: keep the text rather than guess.
                pb::string_bytes(buf, text);
            }
        }
    }
}

/// `-$1,234.56` (or `($1,234.56)`) → `-1234.56`: the digits and the decimal point, signed.
/// `None` for text that is not such an amount.
fn money_decimal(text: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    if text.iter().any(|&c| c == b'-' || c == b'(') {
        out.push('-');
    }
    let mut digits = false;
    for &c in text {
        match c {
            b'0'..=b'9' => {
                digits = true;
                out.push(c as char);
            }
            b'.' => out.push('.'),
            b'$' | b',' | b'-' | b'(' | b')' | b' ' => {}
            _ => return None,
        }
    }
    digits.then_some(out)
}

fn parse_f64(text: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(text).ok()?;
    let n: f64 = s.parse().ok()?;
    n.is_finite().then_some(n)
}

/// `\x0a0b` → base64 of the bytes.
pub fn bytea_base64(text: &[u8]) -> String {
    let hex = text.strip_prefix(b"\\x").unwrap_or(text);
    let mut out = Vec::with_capacity(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        let d = |c: u8| match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => 0,
        };
        out.push((d(pair[0]) << 4) | d(pair[1]));
    }
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// `2024-01-02 03:04:05.5+00` → `2024-01-02T03:04:05.5Z`; `+05:30` stays, `+05` → `+05:00`.
pub fn with_zone(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 3);
    with_zone_into(&mut out, text);
    out
}

/// [`with_zone`] appending to `out`, with no allocation of its own.
fn with_zone_into(out: &mut Vec<u8>, text: &[u8]) {
    // Dates have a space before the time (after the date, whatever the year's width); times
    // (timetz) have none, and " BC" is not that space.
    let sep = text
        .iter()
        .position(|&c| c == b' ')
        .filter(|&i| !text[i + 1..].starts_with(b"BC"));
    let put = |out: &mut Vec<u8>, part: &[u8]| {
        // Copies `part` (a prefix of the text), with the date's space as 'T'.
        match sep {
            Some(i) if i < part.len() => {
                out.extend_from_slice(&part[..i]);
                out.push(b'T');
                out.extend_from_slice(&part[i + 1..]);
            }
            _ => out.extend_from_slice(part),
        }
    };
    // The offset starts at the last '+' or '-' after the time part.
    let time_start = sep.map_or(0, |i| i + 1);
    let Some(rel) = text[time_start..].iter().rposition(|&c| c == b'+' || c == b'-') else {
        put(out, text);
        return;
    };
    let at = time_start + rel;
    let mut offset = &text[at + 1..];
    let bc = offset.ends_with(b" BC");
    if bc {
        offset = &offset[..offset.len() - 3];
    }
    put(out, &text[..at]);
    if offset.iter().all(|&c| c == b'0' || c == b':') {
        out.push(b'Z');
    } else {
        out.push(text[at]);
        out.extend_from_slice(offset);
        if offset.len() == 2 {
            out.extend_from_slice(b":00");
        }
    }
    if bc {
        out.extend_from_slice(b" BC");
    }
}

/// Parses PostgreSQL's array text (`{1,2,"a b",NULL}`, nested, with an optional `[1:2]=`
/// bounds prefix) and writes it as a list. `None` on text it cannot parse.
pub fn write_array(buf: &mut Vec<u8>, elem: &Kind, text: &[u8]) -> Option<()> {
    let mut t = text;
    if t.first() == Some(&b'[') {
        let eq = t.iter().position(|&c| c == b'=')?;
        t = &t[eq + 1..];
    }
    let mut p = ArrayParser { t, i: 0 };
    let mut out = Vec::new();
    p.list(&mut out, elem)?;
    if p.i != p.t.len() {
        return None;
    }
    buf.extend_from_slice(&out);
    Some(())
}

struct ArrayParser<'a> {
    t: &'a [u8],
    i: usize,
}

impl ArrayParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.t.get(self.i).copied()
    }

    /// `{ item (, item)* }` or `{}`.
    fn list(&mut self, buf: &mut Vec<u8>, elem: &Kind) -> Option<()> {
        if self.peek()? != b'{' {
            return None;
        }
        self.i += 1;
        let mut items: Vec<u8> = Vec::new();
        if self.peek()? == b'}' {
            self.i += 1;
            pb::list(buf, |_| {});
            return Some(());
        }
        loop {
            match self.peek()? {
                b'{' => {
                    let mut inner = Vec::new();
                    self.list(&mut inner, elem)?;
                    pb::item(&mut items, |b| b.extend_from_slice(&inner));
                }
                b'"' => {
                    self.i += 1;
                    let mut s = Vec::new();
                    loop {
                        let c = self.peek()?;
                        self.i += 1;
                        match c {
                            b'\\' => {
                                s.push(self.peek()?);
                                self.i += 1;
                            }
                            b'"' => break,
                            c => s.push(c),
                        }
                    }
                    pb::item(&mut items, |b| write_value(b, elem, &s));
                }
                _ => {
                    let start = self.i;
                    while !matches!(self.peek()?, b',' | b'}') {
                        self.i += 1;
                    }
                    let raw = &self.t[start..self.i];
                    if raw.eq_ignore_ascii_case(b"NULL") {
                        pb::item(&mut items, pb::null);
                    } else {
                        pb::item(&mut items, |b| write_value(b, elem, raw));
                    }
                }
            }
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    break;
                }
                _ => return None,
            }
        }
        pb::list(buf, |b| b.extend_from_slice(&items));
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use prost_types::value::Kind as K;

    fn json_of(kind: &Kind, text: &str) -> serde_json::Value {
        let mut buf = Vec::new();
        write_value(&mut buf, kind, text.as_bytes());
        let v = prost_types::Value::decode(buf.as_slice()).unwrap();
        fn to_json(v: &prost_types::Value) -> serde_json::Value {
            match v.kind.as_ref().unwrap() {
                K::NullValue(_) => serde_json::Value::Null,
                K::BoolValue(b) => (*b).into(),
                K::NumberValue(n) => (*n).into(),
                K::StringValue(s) => s.clone().into(),
                K::ListValue(l) => l.values.iter().map(to_json).collect(),
                K::StructValue(s) => s.fields.iter().map(|(k, v)| (k.clone(), to_json(v))).collect(),
            }
        }
        to_json(&v)
    }

    #[test]
    fn scalars() {
        assert_eq!(json_of(&Kind::Bool, "t"), true);
        assert_eq!(json_of(&Kind::Number, "-12"), -12.0);
        assert_eq!(json_of(&Kind::Number, "NaN"), "NaN");
        assert_eq!(json_of(&Kind::Int8, "9007199254740992"), 9007199254740992.0);
        assert_eq!(json_of(&Kind::Int8, "9007199254740993"), "9007199254740993");
        assert_eq!(
            json_of(&Kind::Numeric, "12345678901234567890.12"),
            "12345678901234567890.12"
        );
        assert_eq!(json_of(&Kind::Bytea, "\\x00ff10"), "AP8Q");
        assert_eq!(json_of(&Kind::Money, "-$1,234.56"), "-1234.56");
        assert_eq!(
            json_of(&Kind::Money, "($92,233,720,368,547,758.07)"),
            "-92233720368547758.07"
        );
        assert_eq!(json_of(&Kind::Money, "$0.00"), "0.00");
        assert_eq!(
            json_of(&Kind::Money, "1,00 €"),
            "1,00 €",
            "not C's format: kept as text"
        );
        assert_eq!(
            json_of(&Kind::Json, r#"{"a": [1, null], "n": 12345678901234567890}"#),
            r#"{"a": [1, null], "n": 12345678901234567890}"#
        );
        assert_eq!(
            json_of(&Kind::Timestamp, "2024-01-02 03:04:05.5"),
            "2024-01-02T03:04:05.5"
        );
        assert_eq!(
            json_of(&Kind::WithZone, "2024-01-02 03:04:05.5+00"),
            "2024-01-02T03:04:05.5Z"
        );
        assert_eq!(
            json_of(&Kind::WithZone, "2024-01-02 03:04:05-05"),
            "2024-01-02T03:04:05-05:00"
        );
        assert_eq!(
            json_of(&Kind::WithZone, "2024-01-02 03:04:05+05:30"),
            "2024-01-02T03:04:05+05:30"
        );
        assert_eq!(json_of(&Kind::WithZone, "03:04:05+00"), "03:04:05Z");
        assert_eq!(json_of(&Kind::WithZone, "infinity"), "infinity");
        assert_eq!(json_of(&Kind::WithZone, "-infinity"), "-infinity");
        assert_eq!(
            json_of(&Kind::WithZone, "12024-01-02 03:04:05+00"),
            "12024-01-02T03:04:05Z"
        );
        assert_eq!(
            json_of(&Kind::WithZone, "0044-03-15 12:00:00+00 BC"),
            "0044-03-15T12:00:00Z BC"
        );
    }

    #[test]
    fn arrays() {
        let int = Kind::Array(Box::new(Kind::Number));
        assert_eq!(json_of(&int, "{1,2,NULL}"), serde_json::json!([1.0, 2.0, null]));
        assert_eq!(
            json_of(&int, "{{1,2},{3,4}}"),
            serde_json::json!([[1.0, 2.0], [3.0, 4.0]])
        );
        assert_eq!(json_of(&int, "[0:1]={5,6}"), serde_json::json!([5.0, 6.0]));
        assert_eq!(json_of(&int, "{}"), serde_json::json!([]));
        let text = Kind::Array(Box::new(Kind::Text));
        assert_eq!(
            json_of(&text, r#"{plain,"with space","quote\"d","back\\slash","NULL",NULL}"#),
            serde_json::json!(["plain", "with space", "quote\"d", "back\\slash", "NULL", null])
        );
        let js = Kind::Array(Box::new(Kind::Json));
        assert_eq!(json_of(&js, r#"{"{\"a\": 1}"}"#), serde_json::json!([r#"{"a": 1}"#]));
        let by = Kind::Array(Box::new(Kind::Bytea));
        assert_eq!(json_of(&by, r#"{"\\x00ff"}"#), serde_json::json!(["AP8="]));
        // Not an array: kept as text.
        assert_eq!(json_of(&int, "{1,2"), "{1,2");
    }

    #[test]
    fn user_types_resolve_through_domains_and_arrays() {
        let mut m = TypeMap::default();
        m.learn(&[
            PgType {
                oid: 90001,
                typtype: b'e',
                elem: 0,
                category: b'E',
                base: 0,
                delim: b',',
            },
            PgType {
                oid: 90002,
                typtype: b'b',
                elem: 90001,
                category: b'A',
                base: 0,
                delim: b',',
            },
            PgType {
                oid: 90003,
                typtype: b'd',
                elem: 0,
                category: b'N',
                base: 20,
                delim: b',',
            },
            // box and box[]: elements separated by ';'.
            PgType {
                oid: 603,
                typtype: b'b',
                elem: 0,
                category: b'G',
                base: 0,
                delim: b';',
            },
            PgType {
                oid: 1020,
                typtype: b'b',
                elem: 603,
                category: b'A',
                base: 0,
                delim: b',',
            },
        ]);
        assert_eq!(m.kind(1020), Kind::Text, "box[] is not split at commas");
        // box learnt first (a column of its own), box[] later: still not split.
        let mut later = TypeMap::default();
        let boxed = |oid, elem, category, delim| PgType {
            oid,
            typtype: b'b',
            elem,
            category,
            base: 0,
            delim,
        };
        later.learn(&[boxed(603, 0, b'G', b';')]);
        later.learn(&[boxed(1020, 603, b'A', b',')]);
        assert_eq!(later.kind(1020), Kind::Text);
        assert_eq!(m.kind(90001), Kind::Text);
        assert_eq!(m.kind(90002), Kind::Array(Box::new(Kind::Text)));
        assert_eq!(m.kind(90003), Kind::Int8);
        assert_eq!(m.kind(23), Kind::Number);
        assert!(!m.is_known(90004));
    }
}
