//! What a column holds: type codes, [`Kind`], and kinds from SQL type text.

use std::sync::Arc;

use encoding_rs::Encoding;

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
