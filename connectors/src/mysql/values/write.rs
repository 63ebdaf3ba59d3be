//! Values as text (partition keys) and as JSON (protobuf `Value` bodies), the same for the
//! snapshot's and the binlog's cells.

use base64::Engine;

use super::decode::{DIG2BYTES, be};
use super::{Cell, Kind, decimal_size};
use crate::pbstruct as pb;

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
    if let Cell::JsonBin(b) = cell {
        return json_text(b);
    }
    text_into(&mut out, kind, cell);
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// MySQL's binary JSON as text. A document the decoder cannot read is kept whole, as MySQL
/// shows an opaque value (`base64:type245:…`), with a warning: never dropped or nulled.
fn json_text(doc: &[u8]) -> String {
    crate::mysql::jsonb::to_text(doc).unwrap_or_else(|| {
        use base64::Engine;
        tracing::warn!(
            bytes = doc.len(),
            "a binary JSON document could not be decoded; kept as base64"
        );
        format!(
            "base64:type245:{}",
            base64::engine::general_purpose::STANDARD.encode(doc)
        )
    })
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
        // A JSON document is its exact text (MariaDB stores it as text; MySQL's binary form is
        // printed as MySQL prints it): numbers never pass through a double.
        (Kind::Json, Cell::Bytes(b)) => pb::string(buf, &String::from_utf8_lossy(b)),
        (_, Cell::JsonBin(b)) => pb::string(buf, &json_text(b)),
        (Kind::Text(None), Cell::Bytes(b)) if std::str::from_utf8(b).is_ok() => pb::string_bytes(buf, b),
        (kind, cell) => pb::message(buf, 0x1a, |out| {
            text_into(out, kind, cell);
        }),
    }
}
