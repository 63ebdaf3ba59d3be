//! Decoder of the `pgoutput` logical replication messages (protocol versions 1 and 2), borrowing
//! column values from the message bytes.
//!
//! Reference: PostgreSQL's "Logical Replication Message Formats". In version 2, messages inside a
//! streamed transaction (between Stream Start and Stream Stop) carry the transaction id first.

use std::fmt;

#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed pgoutput message: {}", self.0)
    }
}

type Result<T> = std::result::Result<T, DecodeError>;

/// One column of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col<'a> {
    Null,
    /// A TOASTed value that did not change (its value is not sent).
    Unchanged,
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity (the primary key by default).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_mod: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Begin {
        final_lsn: u64,
        commit_ts_us: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        commit_ts_us: i64,
    },
    Origin,
    Relation(Relation),
    Type {
        oid: u32,
    },
    Insert {
        rel: u32,
        new: Vec<Col<'a>>,
    },
    Update {
        rel: u32,
        /// The old key (`K`) or whole old row (`O`), when sent.
        old: Option<Vec<Col<'a>>>,
        new: Vec<Col<'a>>,
    },
    Delete {
        rel: u32,
        old: Vec<Col<'a>>,
    },
    Truncate {
        rels: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`; sent with the `messages` option).
    Message {
        transactional: bool,
        prefix: String,
        content: &'a [u8],
    },
    StreamStart {
        xid: u32,
    },
    StreamStop,
    StreamCommit {
        xid: u32,
        commit_lsn: u64,
        end_lsn: u64,
        commit_ts_us: i64,
    },
    StreamAbort {
        xid: u32,
        subxid: u32,
    },
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(DecodeError(format!("needs {n} more bytes, has {}", self.b.len())));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32> {
        Ok(self.u32()? as i32)
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(self.u64()? as i64)
    }
    fn cstr(&mut self) -> Result<String> {
        let end = self
            .b
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| DecodeError("unterminated string".into()))?;
        let s = String::from_utf8_lossy(&self.b[..end]).into_owned();
        self.b = &self.b[end + 1..];
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Col<'a>>> {
        let n = self.u16()? as usize;
        let mut cols = Vec::with_capacity(n);
        for _ in 0..n {
            cols.push(match self.u8()? {
                b'n' => Col::Null,
                b'u' => Col::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    Col::Text(self.take(len)?)
                }
                b'b' => {
                    let len = self.u32()? as usize;
                    Col::Binary(self.take(len)?)
                }
                k => return Err(DecodeError(format!("unknown tuple column kind {:?}", k as char))),
            });
        }
        Ok(cols)
    }
}

/// Decodes one message. `streaming` says whether it sits inside Stream Start/Stop (version 2+),
/// where data messages carry a transaction id first.
pub fn decode(data: &[u8], streaming: bool) -> Result<Message<'_>> {
    let mut r = Reader { b: data };
    let tag = r.u8()?;
    let skip_xid = |r: &mut Reader<'_>| -> Result<()> {
        if streaming {
            r.u32()?;
        }
        Ok(())
    };
    Ok(match tag {
        b'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_ts_us: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit {
                commit_lsn: r.u64()?,
                end_lsn: r.u64()?,
                commit_ts_us: r.i64()?,
            }
        }
        b'O' => Message::Origin,
        b'R' => {
            skip_xid(&mut r)?;
            let id = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            let replica_identity = r.u8()?;
            let n = r.u16()? as usize;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let flags = r.u8()?;
                columns.push(Column {
                    key: flags & 1 == 1,
                    name: r.cstr()?,
                    type_oid: r.u32()?,
                    type_mod: r.i32()?,
                });
            }
            Message::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => {
            skip_xid(&mut r)?;
            Message::Type { oid: r.u32()? }
        }
        b'I' => {
            skip_xid(&mut r)?;
            let rel = r.u32()?;
            match r.u8()? {
                b'N' => Message::Insert { rel, new: r.tuple()? },
                k => return Err(DecodeError(format!("insert without new tuple ({:?})", k as char))),
            }
        }
        b'U' => {
            skip_xid(&mut r)?;
            let rel = r.u32()?;
            let mut old = None;
            let mut kind = r.u8()?;
            if kind == b'K' || kind == b'O' {
                old = Some(r.tuple()?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(DecodeError(format!("update without new tuple ({:?})", kind as char)));
            }
            Message::Update {
                rel,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            skip_xid(&mut r)?;
            let rel = r.u32()?;
            match r.u8()? {
                b'K' | b'O' => Message::Delete { rel, old: r.tuple()? },
                k => return Err(DecodeError(format!("delete without old tuple ({:?})", k as char))),
            }
        }
        b'T' => {
            skip_xid(&mut r)?;
            let n = r.u32()? as usize;
            let _options = r.u8()?;
            let mut rels = Vec::with_capacity(n);
            for _ in 0..n {
                rels.push(r.u32()?);
            }
            Message::Truncate { rels }
        }
        b'M' => {
            skip_xid(&mut r)?;
            let flags = r.u8()?;
            let _lsn = r.u64()?;
            let prefix = r.cstr()?;
            let len = r.u32()? as usize;
            Message::Message {
                transactional: flags & 1 == 1,
                prefix,
                content: r.take(len)?,
            }
        }
        b'S' => Message::StreamStart { xid: r.u32()? },
        b'E' => Message::StreamStop,
        b'c' => {
            let xid = r.u32()?;
            let _flags = r.u8()?;
            Message::StreamCommit {
                xid,
                commit_lsn: r.u64()?,
                end_lsn: r.u64()?,
                commit_ts_us: r.i64()?,
            }
        }
        b'A' => Message::StreamAbort {
            xid: r.u32()?,
            subxid: r.u32()?,
        },
        other => return Err(DecodeError(format!("unknown message type {:?}", other as char))),
    })
}

/// The transaction id of a data message inside a streamed transaction (its first field).
pub fn streamed_xid(data: &[u8]) -> Option<u32> {
    match data.first()? {
        b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M' => Some(u32::from_be_bytes(data.get(1..5)?.try_into().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(cols: &[Option<&str>]) -> Vec<u8> {
        let mut b = (cols.len() as u16).to_be_bytes().to_vec();
        for c in cols {
            match c {
                None => b.push(b'n'),
                Some("<u>") => b.push(b'u'),
                Some(s) => {
                    b.push(b't');
                    b.extend((s.len() as u32).to_be_bytes());
                    b.extend(s.as_bytes());
                }
            }
        }
        b
    }

    #[test]
    fn logical_messages() {
        let mut m = vec![b'M', 0];
        m.extend(0x1234u64.to_be_bytes());
        m.extend(b"hstream-cdc\0");
        m.extend(5u32.to_be_bytes());
        m.extend(b"s/1/2");
        assert_eq!(
            decode(&m, false).unwrap(),
            Message::Message {
                transactional: false,
                prefix: "hstream-cdc".into(),
                content: b"s/1/2"
            }
        );
        // Inside a streamed transaction the xid comes first.
        let mut s = vec![b'M'];
        s.extend(77u32.to_be_bytes());
        s.extend(&m[1..]);
        s[5] = 1;
        assert!(matches!(
            decode(&s, true).unwrap(),
            Message::Message {
                transactional: true,
                ..
            }
        ));
        assert!(decode(&m[..m.len() - 1], false).is_err(), "a cut message is an error");
    }

    #[test]
    fn relation_and_rows() {
        let mut m = vec![b'R'];
        m.extend(16385u32.to_be_bytes());
        m.extend(b"public\0orders\0");
        m.push(b'd');
        m.extend(2u16.to_be_bytes());
        m.push(1);
        m.extend(b"id\0");
        m.extend(20u32.to_be_bytes());
        m.extend((-1i32).to_be_bytes());
        m.push(0);
        m.extend(b"name\0");
        m.extend(25u32.to_be_bytes());
        m.extend((-1i32).to_be_bytes());
        let Message::Relation(rel) = decode(&m, false).unwrap() else {
            panic!()
        };
        assert_eq!(rel.name, "orders");
        assert!(rel.columns[0].key && !rel.columns[1].key);
        assert_eq!(rel.columns[1].type_oid, 25);

        let mut ins = vec![b'I'];
        ins.extend(16385u32.to_be_bytes());
        ins.push(b'N');
        ins.extend(tuple(&[Some("1"), None]));
        assert_eq!(
            decode(&ins, false).unwrap(),
            Message::Insert {
                rel: 16385,
                new: vec![Col::Text(b"1"), Col::Null]
            }
        );

        let mut upd = vec![b'U'];
        upd.extend(16385u32.to_be_bytes());
        upd.push(b'K');
        upd.extend(tuple(&[Some("1"), None]));
        upd.push(b'N');
        upd.extend(tuple(&[Some("2"), Some("<u>")]));
        assert_eq!(
            decode(&upd, false).unwrap(),
            Message::Update {
                rel: 16385,
                old: Some(vec![Col::Text(b"1"), Col::Null]),
                new: vec![Col::Text(b"2"), Col::Unchanged]
            }
        );

        // In a streamed transaction the xid comes first.
        let mut streamed = vec![b'D'];
        streamed.extend(77u32.to_be_bytes());
        streamed.extend(16385u32.to_be_bytes());
        streamed.push(b'K');
        streamed.extend(tuple(&[Some("2"), None]));
        assert_eq!(streamed_xid(&streamed), Some(77));
        assert_eq!(
            decode(&streamed, true).unwrap(),
            Message::Delete {
                rel: 16385,
                old: vec![Col::Text(b"2"), Col::Null]
            }
        );
    }

    #[test]
    fn commit_and_truncated_input() {
        let mut c = vec![b'C', 0];
        c.extend(100u64.to_be_bytes());
        c.extend(120u64.to_be_bytes());
        c.extend(5i64.to_be_bytes());
        assert_eq!(
            decode(&c, false).unwrap(),
            Message::Commit {
                commit_lsn: 100,
                end_lsn: 120,
                commit_ts_us: 5
            }
        );
        assert!(decode(&c[..10], false).is_err());
        assert!(decode(b"Z", false).is_err());
        let mut bad = vec![b'I'];
        bad.extend(1u32.to_be_bytes());
        bad.push(b'N');
        bad.extend(1u16.to_be_bytes());
        bad.push(b't');
        bad.extend(100u32.to_be_bytes());
        bad.extend(b"short");
        assert!(decode(&bad, false).is_err());
    }
}
