//! MySQL's GTID sets (`3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7,…`): the executed set the
//! source resumes from by GTID (COM_BINLOG_DUMP_GTID), grown by each transaction's GTID event.
//! MariaDB's GTID positions are another thing (`parse_gtid_state` in `mod.rs`).
//!
//! Tagged GTIDs (MySQL 8.4's `uuid:tag:n`) are not read: a set holding one is refused when the
//! source starts, with the reason, rather than resumed from wrongly.

use std::collections::BTreeMap;
use std::fmt;

/// Executed transactions per source UUID, as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidSet(BTreeMap<[u8; 16], Vec<(u64, u64)>>);

impl GtidSet {
    /// Parses MySQL's text form (whitespace and newlines, as `@@gtid_executed` prints them,
    /// allowed); `None` if it is not one.
    pub fn parse(text: &str) -> Option<GtidSet> {
        let mut set = GtidSet::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let mut parts = entry.split(':');
            let uuid = parse_uuid(parts.next()?)?;
            let mut any = false;
            for interval in parts {
                let (a, b) = match interval.split_once('-') {
                    Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
                    None => {
                        let n = interval.trim().parse().ok()?;
                        (n, n)
                    }
                };
                if a == 0 || b < a {
                    return None;
                }
                set.add_range(uuid, a, b);
                any = true;
            }
            if !any {
                return None;
            }
        }
        Some(set)
    }

    /// Adds one transaction.
    pub fn add(&mut self, uuid: [u8; 16], gno: u64) {
        self.add_range(uuid, gno, gno);
    }

    fn add_range(&mut self, uuid: [u8; 16], a: u64, b: u64) {
        let ranges = self.0.entry(uuid).or_default();
        ranges.push((a, b));
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for &(s, e) in ranges.iter() {
            match merged.last_mut() {
                Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        *ranges = merged;
    }

    /// The set as COM_BINLOG_DUMP_GTID takes it (intervals end-exclusive).
    pub fn to_sids(&self) -> Vec<mysql_async::Sid<'static>> {
        self.0
            .iter()
            .map(|(uuid, ranges)| {
                let intervals = ranges
                    .iter()
                    .map(|&(a, b)| mysql_async::GnoInterval::new(a, b + 1))
                    .collect();
                mysql_async::Sid::new(*uuid).with_intervals(intervals)
            })
            .collect()
    }
}

impl fmt::Display for GtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (uuid, ranges)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&format_uuid(uuid))?;
            for &(a, b) in ranges {
                if a == b {
                    write!(f, ":{a}")?;
                } else {
                    write!(f, ":{a}-{b}")?;
                }
            }
        }
        Ok(())
    }
}

/// A server UUID as MySQL prints it: `8-4-4-4-12` lower-case hexadecimal digits.
pub fn format_uuid(uuid: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (n, b) in uuid.iter().enumerate() {
        if matches!(n, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `8-4-4-4-12` hexadecimal digits.
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let text = text.trim();
    let groups: Vec<&str> = text.split('-').collect();
    if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const B: &str = "00000000-0000-0000-0000-000000000001";

    #[test]
    fn sets_parse_merge_and_print_as_mysql_does() {
        let text = format!("{A}:1-5:7,\n{B}:3");
        let mut set = GtidSet::parse(&text).unwrap();
        assert_eq!(set.to_string(), format!("{B}:3,{A}:1-5:7"));
        let a = parse_uuid(A).unwrap();
        set.add(a, 6); // fills the gap: 1-7
        set.add(a, 9);
        assert_eq!(set.to_string(), format!("{B}:3,{A}:1-7:9"));
        assert_eq!(GtidSet::parse(&set.to_string()).unwrap(), set);
        assert_eq!(GtidSet::parse("").unwrap(), GtidSet::default());
        for bad in [
            "nonsense",
            A,
            &format!("{A}:0"),
            &format!("{A}:5-3"),
            &format!("{A}:tag:1"),
            "3e11fa47-71ca-11e1-9e33:1",
        ] {
            assert!(GtidSet::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_dump_request_gets_end_exclusive_intervals() {
        let set = GtidSet::parse(&format!("{A}:1-5:7")).unwrap();
        let sids = set.to_sids();
        assert_eq!(sids.len(), 1);
        assert_eq!(sids[0].uuid(), parse_uuid(A).unwrap());
        let iv: Vec<(u64, u64)> = sids[0].intervals().iter().map(|i| (i.start(), i.end())).collect();
        assert_eq!(iv, [(1, 6), (7, 8)]);
    }
}
