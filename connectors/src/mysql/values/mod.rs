//! Column values: what a column holds ([`Kind`]), one value as the binlog or the snapshot gives
//! it ([`Cell`], borrowing the bytes), decoding of the binlog's row-image format, and writing a
//! value as JSON into protobuf Struct bytes.
//!
//! JSON mapping (the same from the snapshot and the binlog): integers → numbers (beyond ±2^53 →
//! strings), DECIMAL → exact string, FLOAT/DOUBLE → numbers (FLOAT by its shortest decimal),
//! text → string (converted from the column's charset), binary → base64, JSON → its exact text as a string
//! (decision 020), DATE →
//! `YYYY-MM-DD`, TIME → `[-]HH:MM:SS[.f]`, DATETIME → `YYYY-MM-DDTHH:MM:SS[.f]`, TIMESTAMP → the
//! same in UTC with `Z`, ENUM → its string, SET → comma-separated strings, BIT(1) → boolean,
//! BIT(n) → number, YEAR → number. Fractions have the column's precision in digits.
//!
//! `kind.rs`: column kinds (from TABLE_MAP or `information_schema`); `decode.rs`: the binlog's
//! row-image format; `write.rs`: text and JSON output, shared by snapshot and binlog.

mod decode;
mod kind;
mod write;

pub use decode::{DecodeError, decimal_size, decode, string_meta};
pub use kind::{Kind, encoding_of, kind_from_sql, sql_list, ty};
pub use write::{decimal_text, text, write};

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
