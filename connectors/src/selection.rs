//! What a CDC source captures beyond named tables, as Debezium's filters: tables by pattern
//! (include and exclude lists), and per column: left out, masked or hashed.
//!
//! Patterns are regular expressions matched, whole and case-insensitively (as Debezium's), against
//! `schema.table` (`database.table` for MySQL) and `schema.table.column`. A key column cannot be
//! left out, masked or hashed: the key and the partition key carry it as it is, so the rule
//! would not hold (the check refuses it, naming the option and the column).

use regex::RegexSet;
use sha2::{Digest, Sha256};

use hstream_runtime::ConnectorError;

use crate::cdc::Capture;

/// What a record shows of one column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnRule {
    Keep,
    /// Left out of every row image.
    Exclude,
    /// A non-null value becomes `mask_chars` asterisks.
    Mask,
    /// A non-null value becomes the hex SHA-256 of the salt followed by the value's text.
    Hash,
}

/// The compiled filters of a [`Capture`].
#[derive(Debug)]
pub struct Selection {
    include: Option<RegexSet>,
    exclude: Option<RegexSet>,
    columns_excluded: Option<RegexSet>,
    columns_masked: Option<RegexSet>,
    columns_hashed: Option<RegexSet>,
    mask: String,
    /// A secret: masked in `Debug`.
    salt: hstream_runtime::Secret,
}

pub(crate) fn compile(patterns: &[String], option: &str) -> Result<Option<RegexSet>, ConnectorError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    for p in patterns {
        // Compiled one by one first, so that the error names the pattern.
        regex::Regex::new(p).map_err(|e| ConnectorError::config(format!("{option}: {p:?}: {e}")))?;
    }
    regex::RegexSetBuilder::new(patterns.iter().map(|p| format!("^(?:{p})$")))
        .case_insensitive(true)
        .build()
        .map(Some)
        .map_err(|e| ConnectorError::config(format!("{option}: {e}")))
}

impl Selection {
    pub fn new(c: &Capture) -> Result<Selection, ConnectorError> {
        Ok(Selection {
            include: compile(&c.table_include_list, "tableIncludeList")?,
            exclude: compile(&c.table_exclude_list, "tableExcludeList")?,
            columns_excluded: compile(&c.column_exclude_list, "columnExcludeList")?,
            columns_masked: compile(&c.column_mask_list, "columnMaskList")?,
            columns_hashed: compile(&c.column_hash_list, "columnHashList")?,
            mask: "*".repeat(c.column_mask_chars as usize),
            salt: c
                .column_hash_salt
                .clone()
                .unwrap_or_else(|| hstream_runtime::Secret::new("")),
        })
    }

    /// Whether tables are chosen by pattern (the catalog is listed to find them).
    pub fn has_patterns(&self) -> bool {
        self.include.is_some()
    }

    /// Whether `qualified` (`schema.table`) matches the include list.
    pub fn included(&self, qualified: &str) -> bool {
        self.include.as_ref().is_some_and(|s| s.is_match(qualified))
    }

    /// Whether `qualified` matches the exclude list (left out, even when named in `tables`).
    pub fn excluded(&self, qualified: &str) -> bool {
        self.exclude.as_ref().is_some_and(|s| s.is_match(qualified))
    }

    fn has_column_rules(&self) -> bool {
        self.columns_excluded.is_some() || self.columns_masked.is_some() || self.columns_hashed.is_some()
    }

    /// The rule of each column of `qualified` (`schema.table`); empty when every column is kept.
    /// A rule on a key column is refused, naming the option.
    pub fn column_rules(
        &self,
        qualified: &str,
        columns: &[String],
        key: &[usize],
    ) -> Result<Vec<ColumnRule>, ConnectorError> {
        if !self.has_column_rules() {
            return Ok(Vec::new());
        }
        let mut rules = Vec::with_capacity(columns.len());
        for (i, c) in columns.iter().enumerate() {
            let name = format!("{qualified}.{c}");
            let hit = |s: &Option<RegexSet>| s.as_ref().is_some_and(|s| s.is_match(&name));
            let (rule, option) = if hit(&self.columns_excluded) {
                (ColumnRule::Exclude, "columnExcludeList")
            } else if hit(&self.columns_hashed) {
                (ColumnRule::Hash, "columnHashList")
            } else if hit(&self.columns_masked) {
                (ColumnRule::Mask, "columnMaskList")
            } else {
                (ColumnRule::Keep, "")
            };
            if rule != ColumnRule::Keep && key.contains(&i) {
                return Err(ConnectorError::config(format!(
                    "{option}: {name} is a key column; the key cannot be left out, masked or hashed"
                )));
            }
            rules.push(rule);
        }
        if rules.iter().all(|r| *r == ColumnRule::Keep) {
            rules.clear();
        }
        Ok(rules)
    }

    /// The text a masked value shows.
    pub fn mask(&self) -> &str {
        &self.mask
    }

    /// The hex SHA-256 of the salt followed by `value`.
    pub fn hash(&self, value: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(self.salt.expose().as_bytes());
        h.update(value);
        let digest = h.finalize();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in digest {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        out
    }
}

/// The rule of column `i` in a rule list ([`Selection::column_rules`]; empty keeps all).
pub fn rule(rules: &[ColumnRule], i: usize) -> ColumnRule {
    rules.get(i).copied().unwrap_or(ColumnRule::Keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(v: serde_json::Value) -> Capture {
        let mut base = serde_json::json!({"table": "t"});
        for (k, x) in v.as_object().unwrap() {
            base[k] = x.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn table_patterns_match_whole_names_case_insensitively() {
        let s = Selection::new(&capture(serde_json::json!({
            "tableIncludeList": ["public\\.orders_.*", "shop\\.items"],
            "tableExcludeList": [".*_archive"]
        })))
        .unwrap();
        assert!(s.has_patterns());
        assert!(s.included("public.orders_2024"));
        assert!(s.included("SHOP.Items"));
        assert!(!s.included("public.orders"), "anchored at both ends");
        assert!(!s.included("xpublic.orders_1"));
        assert!(!s.included("shop.items2"));
        assert!(s.excluded("public.orders_archive"));
        assert!(!s.excluded("public.orders_archived"));
    }

    #[test]
    fn column_rules_and_their_values() {
        let s = Selection::new(&capture(serde_json::json!({
            "columnExcludeList": ["public\\.users\\.password"],
            "columnMaskList": ["public\\.users\\.(card|phone)"],
            "columnMaskChars": 4,
            "columnHashList": ["public\\.users\\.email"],
            "columnHashSalt": "pepper"
        })))
        .unwrap();
        let cols: Vec<String> = ["id", "password", "card", "email", "name"].map(String::from).to_vec();
        let rules = s.column_rules("public.users", &cols, &[0]).unwrap();
        assert_eq!(
            rules,
            [
                ColumnRule::Keep,
                ColumnRule::Exclude,
                ColumnRule::Mask,
                ColumnRule::Hash,
                ColumnRule::Keep
            ]
        );
        assert!(s.column_rules("public.other", &cols, &[0]).unwrap().is_empty());
        assert_eq!(s.mask(), "****");
        // sha256("pepper" + "a@b.c"), as `printf 'peppera@b.c' | sha256sum` prints it.
        assert_eq!(
            s.hash(b"a@b.c"),
            "0430ccee28a2ef77a5405f545d9fdcd5f34a6a949517df97fd8722289ffa1f33"
        );
        let e = s.column_rules("public.users", &cols, &[1]).unwrap_err();
        assert!(e.to_string().contains("columnExcludeList") && e.to_string().contains("public.users.password"));
    }

    #[test]
    fn a_bad_pattern_is_named() {
        let e = Selection::new(&capture(serde_json::json!({"tableIncludeList": ["ok", "bad("]}))).unwrap_err();
        assert!(
            e.to_string().contains("tableIncludeList") && e.to_string().contains("bad("),
            "{e}"
        );
    }
}
