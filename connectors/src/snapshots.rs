//! What the CDC sources' incremental snapshots share: the queue of tables waiting for one
//! ([`SnapshotQueue`], kept in the offset) and Debezium's signals that steer it ([`Signal`],
//! rows inserted into the signal table named by `signalDataCollection`). How a chunk is read and
//! placed in the stream is each source's own (decision 029).
//!
//! Signals are Debezium's: a row `(id, type, data)` of the signal table, read from the change
//! stream like any change, and acted on when its transaction commits, so a signal is exactly as
//! durable as the position after it: a crash before that position is checkpointed reads the row
//! again. Types: `execute-snapshot` (`{"data-collections": [patterns], "type": "incremental"}`),
//! `stop-snapshot` (the same; without `data-collections`, every waiting table), `pause-snapshot`,
//! `resume-snapshot` and `log` (`{"message": …}`). A pattern is a regular expression matched
//! whole and case-insensitively against `schema.table` (`database.table` for MySQL), as the
//! table patterns are; only captured tables are snapshotted.

use std::collections::VecDeque;

use crate::cdc::IncrementalOffset;

/// Signals held for transactions not yet committed, at most: more are ignored (with a warning)
/// rather than held without bound.
pub const MAX_SIGNALS: usize = 1000;

/// A signal's data, at most (Debezium's column is `varchar(2048)`).
const MAX_DATA: usize = 64 * 1024;
/// Patterns of one signal, at most, and the length of each.
const MAX_PATTERNS: usize = 256;
const MAX_PATTERN_LEN: usize = 1024;

/// A table: `(schema or database, name)`.
pub type TableName = (String, String);

/// The tables waiting for an incremental snapshot, and how far the first one is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SnapshotQueue {
    pending: VecDeque<TableName>,
    /// The key of the last row sent of the first table (each source's own encoding).
    pub after: Option<Vec<String>>,
    /// Rows of the first table sent in this run, and the estimate of its size.
    pub rows: u64,
    pub estimate: u64,
    /// Paused by a signal: no chunk is read until it is resumed.
    pub paused: bool,
}

impl SnapshotQueue {
    /// The queue a run starts with: the one `stored` left (tables no longer captured dropped, the
    /// first one's progress kept while it is still first), then every captured table that
    /// `known` (the tables of the stored offset) did not list, when `snapshot_new` is set.
    pub fn resume(
        stored: Option<&IncrementalOffset>,
        known: Option<&[[String; 2]]>,
        captured: &[TableName],
        snapshot_new: bool,
    ) -> SnapshotQueue {
        let mut q = SnapshotQueue::default();
        if let Some(inc) = stored {
            for [s, t] in &inc.pending {
                let t = (s.clone(), t.clone());
                if captured.contains(&t) && !q.pending.contains(&t) {
                    q.pending.push_back(t);
                }
            }
            // The first table still first: its copy goes on after the stored key.
            if inc.pending.first().map(|[s, t]| (s.clone(), t.clone())).as_ref() == q.pending.front() {
                q.after = inc.after.clone();
            }
            q.paused = inc.paused;
        }
        if let Some(known) = known
            && snapshot_new
        {
            for t in captured {
                if !known.iter().any(|[s, n]| *s == t.0 && *n == t.1) && !q.pending.contains(t) {
                    tracing::info!(table = %format!("{}.{}", t.0, t.1), "table added: an incremental snapshot follows");
                    q.pending.push_back(t.clone());
                }
            }
        }
        q
    }

    /// `None` once nothing is left to remember: no table waits and no pause holds.
    pub fn offset(&self) -> Option<IncrementalOffset> {
        if self.pending.is_empty() && !self.paused {
            return None;
        }
        Some(IncrementalOffset {
            pending: self.pending.iter().map(|(s, t)| [s.clone(), t.clone()]).collect(),
            after: self.after.clone(),
            paused: self.paused,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn front(&self) -> Option<&TableName> {
        self.pending.front()
    }

    pub fn contains(&self, t: &TableName) -> bool {
        self.pending.contains(t)
    }

    pub fn iter(&self) -> impl Iterator<Item = &TableName> {
        self.pending.iter()
    }

    /// A chunk may be read (tables wait and no signal paused them).
    pub fn ready(&self) -> bool {
        !self.pending.is_empty() && !self.paused
    }

    /// The first table is complete, or gone: the next one's turn.
    pub fn pop_front(&mut self) -> Option<TableName> {
        self.after = None;
        self.rows = 0;
        self.estimate = 0;
        self.pending.pop_front()
    }

    /// A chunk of the first table went out: `rows` more, the last key `after`.
    pub fn advance(&mut self, rows: usize, after: Option<Vec<String>>) {
        self.rows += rows as u64;
        self.after = after;
    }

    /// The progress line of the first table (`done`: its last chunk went out).
    pub fn report(&self, name: &str, done: bool) -> String {
        if done {
            return format!("incremental snapshot {name}: done, {} rows", self.rows);
        }
        format!(
            "incremental snapshot {name}: {} rows of ~{}{}{}",
            self.rows,
            self.estimate.max(self.rows),
            match self.pending.len() {
                0 | 1 => String::new(),
                n => format!(", {} more tables waiting", n - 1),
            },
            if self.paused { " (paused)" } else { "" }
        )
    }

    /// Acts on a signal: returns what changed, for the log and the task's report, and whether
    /// the first table was removed (the chunk in flight, if any, is then dropped).
    pub fn apply(&mut self, signal: &Signal, captured: &[TableName]) -> Applied {
        match signal {
            Signal::ExecuteSnapshot { collections } => {
                let mut added = Vec::new();
                for t in matching(collections, captured) {
                    if !self.pending.contains(&t) {
                        self.pending.push_back(t.clone());
                        added.push(t);
                    }
                }
                Applied {
                    message: if added.is_empty() {
                        format!(
                            "signal execute-snapshot: no captured table matches {collections:?} that is not already waiting"
                        )
                    } else {
                        format!("signal execute-snapshot: {} queued", names(&added))
                    },
                    added,
                    front_removed: false,
                }
            }
            Signal::StopSnapshot { collections } => {
                let first = self.pending.front().cloned();
                let before = self.pending.len();
                match collections {
                    None => self.pending.clear(),
                    Some(c) => {
                        let stop = matching(c, &self.pending.iter().cloned().collect::<Vec<_>>());
                        self.pending.retain(|t| !stop.contains(t));
                    }
                }
                let front_removed = first.is_some() && self.pending.front() != first.as_ref();
                if front_removed {
                    self.after = None;
                    self.rows = 0;
                    self.estimate = 0;
                }
                Applied {
                    message: format!(
                        "signal stop-snapshot: {} tables no longer waiting, {} left",
                        before - self.pending.len(),
                        self.pending.len()
                    ),
                    added: Vec::new(),
                    front_removed,
                }
            }
            Signal::Pause | Signal::Resume => {
                self.paused = matches!(signal, Signal::Pause);
                Applied {
                    message: format!(
                        "signal {}: incremental snapshots {}",
                        if self.paused {
                            "pause-snapshot"
                        } else {
                            "resume-snapshot"
                        },
                        if self.paused { "paused" } else { "resumed" }
                    ),
                    added: Vec::new(),
                    front_removed: false,
                }
            }
            Signal::Log(m) => Applied {
                message: format!("signal log: {m}"),
                added: Vec::new(),
                front_removed: false,
            },
        }
    }
}

/// What [`SnapshotQueue::apply`] did.
#[derive(Debug, PartialEq)]
pub struct Applied {
    pub message: String,
    /// Tables that joined the queue.
    pub added: Vec<TableName>,
    /// The first table left the queue: its chunk in flight must not go out.
    pub front_removed: bool,
}

/// One of Debezium's signals.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// Incremental snapshots of the captured tables matching these patterns.
    ExecuteSnapshot {
        collections: Vec<String>,
    },
    /// Stop the snapshots of these tables (all when `None`).
    StopSnapshot {
        collections: Option<Vec<String>>,
    },
    Pause,
    Resume,
    Log(String),
}

impl Signal {
    /// A signal row's `type` and `data` columns; the error says why it is ignored.
    pub fn parse(kind: &str, data: Option<&str>) -> Result<Signal, String> {
        if data.is_some_and(|d| d.len() > MAX_DATA) {
            return Err(format!("data longer than {MAX_DATA} bytes"));
        }
        let data: serde_json::Value = match data.map(str::trim) {
            None | Some("") => serde_json::Value::Null,
            Some(d) => serde_json::from_str(d).map_err(|e| format!("data is not JSON: {e}"))?,
        };
        if !(data.is_null() || data.is_object()) {
            return Err("data must be a JSON object".to_owned());
        }
        let collections = || -> Result<Option<Vec<String>>, String> {
            match data.get("data-collections") {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| "data-collections must be a list of strings".to_owned())
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(_) => Err("data-collections must be a list of strings".to_owned()),
            }
        };
        let check_type = || match data.get("type").and_then(|t| t.as_str()) {
            None => Ok(()),
            Some(t) if t.eq_ignore_ascii_case("incremental") => Ok(()),
            Some(t) => Err(format!("snapshot type {t:?} is not supported (only \"incremental\")")),
        };
        let check_patterns = |c: &[String]| {
            if c.len() > MAX_PATTERNS || c.iter().any(|p| p.len() > MAX_PATTERN_LEN) {
                return Err(format!(
                    "data-collections: at most {MAX_PATTERNS} patterns of {MAX_PATTERN_LEN} bytes"
                ));
            }
            for p in c {
                regex::Regex::new(p).map_err(|e| format!("data-collections: {p:?}: {e}"))?;
            }
            Ok::<(), String>(())
        };
        match kind.trim().to_ascii_lowercase().as_str() {
            "execute-snapshot" => {
                check_type()?;
                if data
                    .get("additional-conditions")
                    .is_some_and(|c| !c.is_null() && c.as_array().is_none_or(|a| !a.is_empty()))
                {
                    return Err("additional-conditions are not supported: whole tables are snapshotted".to_owned());
                }
                let collections = collections()?
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| "execute-snapshot needs data-collections".to_owned())?;
                check_patterns(&collections)?;
                Ok(Signal::ExecuteSnapshot { collections })
            }
            "stop-snapshot" => {
                check_type()?;
                let collections = collections()?.filter(|c| !c.is_empty());
                if let Some(c) = &collections {
                    check_patterns(c)?;
                }
                Ok(Signal::StopSnapshot { collections })
            }
            "pause-snapshot" => Ok(Signal::Pause),
            "resume-snapshot" => Ok(Signal::Resume),
            "log" => Ok(Signal::Log(
                data.get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or_default()
                    .chars()
                    .take(1024)
                    .collect(),
            )),
            other => Err(format!(
                "unknown signal type {:?}",
                other.chars().take(64).collect::<String>()
            )),
        }
    }
}

/// A signal to be written into a signal table (sent through the REST API), checked as the
/// source will read it: its fresh id, its type as the source spells it, and the data column's
/// text.
pub fn outgoing(
    kind: &str,
    data: &serde_json::Value,
) -> Result<(String, String, Option<String>), hstream_runtime::ConnectorError> {
    let text = (!data.is_null()).then(|| data.to_string());
    Signal::parse(kind, text.as_deref())
        .map_err(|why| hstream_runtime::ConnectorError::config(format!("signal: {why}")))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Ok((format!("rest-{nanos:x}"), kind.trim().to_ascii_lowercase(), text))
}

/// The tables among `tables` that a pattern matches (whole name, case-insensitively), in order.
fn matching(patterns: &[String], tables: &[TableName]) -> Vec<TableName> {
    let Ok(Some(set)) = crate::selection::compile(patterns, "data-collections") else {
        return Vec::new();
    };
    tables
        .iter()
        .filter(|(s, t)| set.is_match(&format!("{s}.{t}")))
        .cloned()
        .collect()
}

fn names(tables: &[TableName]) -> String {
    tables
        .iter()
        .map(|(s, t)| format!("{s}.{t}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str, n: &str) -> TableName {
        (s.to_owned(), n.to_owned())
    }

    #[test]
    fn signals_parse_as_debezium_writes_them() {
        assert_eq!(
            Signal::parse(
                "execute-snapshot",
                Some(r#"{"data-collections": ["public\\.orders", "app.*"], "type": "INCREMENTAL"}"#)
            ),
            Ok(Signal::ExecuteSnapshot {
                collections: vec!["public\\.orders".into(), "app.*".into()]
            })
        );
        assert_eq!(
            Signal::parse("stop-snapshot", Some(r#"{"type": "incremental"}"#)),
            Ok(Signal::StopSnapshot { collections: None })
        );
        assert_eq!(Signal::parse("pause-snapshot", None), Ok(Signal::Pause));
        assert_eq!(
            Signal::parse("log", Some(r#"{"message": "hello"}"#)),
            Ok(Signal::Log("hello".into()))
        );
        let long = format!("{{\"message\": \"{}\"}}", "x".repeat(70_000));
        for (kind, data, why) in [
            ("execute-snapshot", "{}", "needs data-collections"),
            (
                "execute-snapshot",
                r#"{"data-collections": ["a"], "type": "blocking"}"#,
                "not supported",
            ),
            (
                "execute-snapshot",
                r#"{"data-collections": ["("]}"#,
                "data-collections: \"(\"",
            ),
            (
                "execute-snapshot",
                r#"{"data-collections": ["a"], "additional-conditions": [{"data-collection": "a", "filter": "x"}]}"#,
                "additional-conditions",
            ),
            ("execute-snapshot", "not json", "not JSON"),
            ("execute-snapshot", "[1]", "JSON object"),
            ("drop-everything", "{}", "unknown signal type"),
            ("log", long.as_str(), "longer than"),
        ] {
            let e = Signal::parse(kind, Some(data)).unwrap_err();
            assert!(e.contains(why), "{kind} {data}: {e}");
        }
    }

    #[test]
    fn the_queue_follows_signals() {
        let captured = [t("public", "a"), t("public", "b"), t("other", "c")];
        let mut q = SnapshotQueue::default();
        let a = q.apply(
            &Signal::ExecuteSnapshot {
                collections: vec!["PUBLIC\\..*".into()],
            },
            &captured,
        );
        assert_eq!(a.added, vec![t("public", "a"), t("public", "b")]);
        // Already waiting, or not captured: nothing more.
        let a = q.apply(
            &Signal::ExecuteSnapshot {
                collections: vec!["public.a".into(), "x.y".into()],
            },
            &captured,
        );
        assert!(a.added.is_empty(), "{a:?}");
        q.advance(10, Some(vec!["10".into()]));
        q.estimate = 100;
        assert_eq!(
            q.report("public.a", false),
            "incremental snapshot public.a: 10 rows of ~100, 1 more tables waiting"
        );
        // Stopping the second keeps the first's progress; stopping the first drops it.
        let a = q.apply(
            &Signal::StopSnapshot {
                collections: Some(vec!["public.b".into()]),
            },
            &captured,
        );
        assert!(!a.front_removed);
        assert_eq!(q.after, Some(vec!["10".into()]));
        q.apply(&Signal::Pause, &captured);
        assert!(!q.ready());
        assert!(q.offset().unwrap().paused);
        q.apply(&Signal::Resume, &captured);
        assert!(q.ready());
        let a = q.apply(&Signal::StopSnapshot { collections: None }, &captured);
        assert!(a.front_removed);
        assert!(q.is_empty() && q.after.is_none() && q.offset().is_none());
        // A pause with nothing waiting is kept (in the offset) for what is asked later.
        q.apply(&Signal::Pause, &captured);
        assert!(q.offset().is_some_and(|o| o.paused && o.pending.is_empty()));
        let back = SnapshotQueue::resume(q.offset().as_ref(), None, &captured, false);
        assert!(back.paused);
    }

    #[test]
    fn a_run_resumes_the_stored_queue_and_adds_new_tables() {
        let stored = IncrementalOffset {
            pending: vec![["s".into(), "gone".into()], ["s".into(), "b".into()]],
            after: Some(vec!["5".into()]),
            paused: false,
        };
        let known = [["s".to_owned(), "a".to_owned()], ["s".to_owned(), "b".to_owned()]];
        let captured = [t("s", "a"), t("s", "b"), t("s", "new")];
        let q = SnapshotQueue::resume(Some(&stored), Some(&known), &captured, true);
        // `gone` is no longer captured, so `b` is first now and starts over.
        assert_eq!(q.iter().cloned().collect::<Vec<_>>(), vec![t("s", "b"), t("s", "new")]);
        assert_eq!(q.after, None);
        let q = SnapshotQueue::resume(None, Some(&known), &captured, false);
        assert!(q.is_empty());
    }
}
