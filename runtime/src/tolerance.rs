//! Error tolerance and dead-letter streams: Kafka Connect's `errors.*` options, for sources and
//! sinks alike. The keys belong to the runtime, not to any connector: every connector's spec
//! lists them and its own config never sees them.
//!
//! Guarantees:
//! - `errors.tolerance=none` (the default): a record that cannot be handled fails the task with
//!   the reason and where the record was, and nothing after it is done;
//! - `errors.tolerance=all`: such a record is counted, optionally logged, and appended to
//!   `errors.deadletter.stream` (when set) with its original key, flag, payload and attributes
//!   and `__connect.errors.*` attributes saying why; everything else goes on;
//! - a position (source offset, sink read position) moves past a failed record only after its
//!   dead letter is durable;
//! - only a record's own content makes it a dead letter ([`ErrorKind::Data`]): an outage of the
//!   stream, the upstream or the destination is retried (`errors.retry.timeout` in place, then
//!   by the supervisor's restarts), never dead-lettered;
//! - error texts in dead letters and logs have the config's secrets scrubbed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::error::FieldError;
use crate::error::{ConnectorError, ErrorKind};
use crate::progress::Progress;
use crate::record::{Attributes, PayloadFlag, Record, SinkRecord};

pub const TOLERANCE: &str = "errors.tolerance";
pub const DEADLETTER_STREAM: &str = "errors.deadletter.stream";
pub const RETRY_TIMEOUT: &str = "errors.retry.timeout";
pub const RETRY_DELAY_MAX: &str = "errors.retry.delay.max.ms";
pub const LOG_ENABLE: &str = "errors.log.enable";
const KEYS: [&str; 5] = [TOLERANCE, DEADLETTER_STREAM, RETRY_TIMEOUT, RETRY_DELAY_MAX, LOG_ENABLE];

/// Attributes a dead letter carries beside the original ones (Kafka Connect's header names,
/// where one exists).
pub mod attr {
    pub const CONNECTOR: &str = "__connect.errors.connector.name";
    pub const STAGE: &str = "__connect.errors.stage";
    pub const CLASS: &str = "__connect.errors.class.name";
    pub const MESSAGE: &str = "__connect.errors.exception.message";
    /// The stream, shard, LSN (HStreamDB's batch id) and index a sink read the record at.
    pub const STREAM: &str = "__connect.errors.topic";
    pub const SHARD: &str = "__connect.errors.partition";
    pub const LSN: &str = "__connect.errors.offset";
    pub const INDEX: &str = "__connect.errors.batch.index";
    /// Where a source took the record, as JSON in the source's own terms.
    pub const SOURCE_POSITION: &str = "__connect.errors.source.position";
    /// Set when the payload was cut to fit the dead-letter stream: the original size in bytes.
    pub const TRUNCATED: &str = "__connect.errors.payload.truncated";
    /// Set when the record's own attributes were left out to fit: how many there were.
    pub const ATTRIBUTES_DROPPED: &str = "__connect.errors.attributes.dropped";
    /// Set when the key was cut to fit: its original size in bytes.
    pub const KEY_TRUNCATED: &str = "__connect.errors.key.truncated";
}

/// Whether a failed record stops the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tolerance {
    #[default]
    None,
    All,
}

/// Where a record failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading what the upstream sent (a message that is not JSON, an undecodable row).
    Decode,
    /// Turning it into a record or a row (a value out of range, a missing key column).
    Convert,
    /// A transform failed on it.
    Transform,
    /// The stream or the destination refused it (over the max record size, a constraint).
    Write,
}

impl Stage {
    pub fn as_str(&self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Convert => "convert",
            Stage::Transform => "transform",
            Stage::Write => "write",
        }
    }
}

/// A connector's `errors.*` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPolicy {
    pub tolerance: Tolerance,
    pub deadletter: Option<String>,
    /// How long a retryable write failure is retried in place before it fails the attempt
    /// (`None`: without end). Zero: not retried in place (the supervisor restarts the task).
    pub retry_timeout: Option<Duration>,
    pub retry_delay_max: Duration,
    pub log: bool,
}

impl Default for ErrorPolicy {
    fn default() -> Self {
        ErrorPolicy {
            tolerance: Tolerance::None,
            deadletter: None,
            retry_timeout: Some(Duration::ZERO),
            retry_delay_max: Duration::from_secs(60),
            log: false,
        }
    }
}

/// Whether a config key is one of the runtime's `errors.*` options.
pub fn is_key(key: &str) -> bool {
    key.starts_with("errors.")
}

/// A millisecond count given as a number or as its text (SQL gives either).
fn millis(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

impl ErrorPolicy {
    /// The `errors.*` options of a whole connector config; errors name the field. An
    /// `errors.` key this build does not know is refused (a misspelt option must not silently
    /// leave the default in force).
    pub fn parse(config: &Value) -> Result<ErrorPolicy, Vec<FieldError>> {
        let mut policy = ErrorPolicy::default();
        let mut errors = Vec::new();
        let Some(map) = config.as_object() else {
            return Ok(policy);
        };
        let mut bad = |path: &str, message: String| {
            errors.push(FieldError {
                path: path.to_owned(),
                message,
            })
        };
        for (k, v) in map.iter().filter(|(k, _)| is_key(k)) {
            match k.as_str() {
                TOLERANCE => match v.as_str().map(|s| s.trim().to_ascii_lowercase()).as_deref() {
                    Some("none") => policy.tolerance = Tolerance::None,
                    Some("all") => policy.tolerance = Tolerance::All,
                    _ => bad(k, "must be \"none\" or \"all\"".into()),
                },
                DEADLETTER_STREAM => match v.as_str() {
                    Some(s) => match crate::streams::name_problem(s) {
                        None => policy.deadletter = Some(s.to_owned()),
                        Some(p) => bad(k, format!("a stream name that {p}")),
                    },
                    None => bad(k, "must be a stream name".into()),
                },
                RETRY_TIMEOUT => match millis(v) {
                    Some(-1) => policy.retry_timeout = None,
                    Some(ms) if ms >= 0 => policy.retry_timeout = Some(Duration::from_millis(ms as u64)),
                    _ => bad(k, "must be milliseconds (0 or more), or -1 to retry without end".into()),
                },
                RETRY_DELAY_MAX => match millis(v) {
                    Some(ms) if ms >= 1 => policy.retry_delay_max = Duration::from_millis(ms as u64),
                    _ => bad(k, "must be milliseconds, 1 or more".into()),
                },
                LOG_ENABLE => match boolean(v) {
                    Some(b) => policy.log = b,
                    None => bad(k, "must be true or false".into()),
                },
                _ => bad(k, format!("unknown option (the error options are {})", KEYS.join(", "))),
            }
        }
        if policy.deadletter.is_some() && policy.tolerance == Tolerance::None {
            bad(
                DEADLETTER_STREAM,
                format!("is used only with {TOLERANCE}=all (with none, a failed record fails the task)"),
            );
        }
        if errors.is_empty() { Ok(policy) } else { Err(errors) }
    }

    /// Checks the options against the connector's own stream: a dead-letter stream the
    /// connector also reads or writes would mix failures into its data.
    pub fn check_stream(&self, own: &str) -> Result<(), Vec<FieldError>> {
        match &self.deadletter {
            Some(d) if d == own => Err(vec![FieldError {
                path: DEADLETTER_STREAM.into(),
                message: format!("must differ from the connector's own stream {own:?}"),
            }]),
            _ => Ok(()),
        }
    }

    /// Adds the options to a connector's spec (every connector takes them).
    pub fn add_to_spec(spec: &mut Value) {
        let props = &mut spec["connectionSpecification"]["properties"];
        if !props.is_object() {
            return;
        }
        props[TOLERANCE] = json!({
            "description": "What a record the connector cannot handle does: none (the task fails with the reason) or all (the record is counted, logged when errors.log.enable, put in errors.deadletter.stream when set, and the task goes on).",
            "type": "string", "enum": ["none", "all"], "default": "none",
        });
        props[DEADLETTER_STREAM] = json!({
            "description": "With errors.tolerance=all: the stream failed records go to (created on first use), with their original payload and __connect.errors.* attributes saying why and where.",
            "type": "string",
        });
        props[RETRY_TIMEOUT] = json!({
            "description": "Sinks: how long (ms) a retryable write failure is retried in place (connecting again where the connection was lost) before the attempt fails and the supervisor restarts the task; -1: without end. A destination outage is never a dead letter.",
            "type": ["integer", "string"], "default": 0,
        });
        props[RETRY_DELAY_MAX] = json!({
            "description": "Sinks: the longest wait (ms) between retries in place.",
            "type": ["integer", "string"], "default": 60000,
        });
        props[LOG_ENABLE] = json!({
            "description": "Log a line for every failed record (its position and the reason, never its content).",
            "type": ["boolean", "string"], "default": false,
        });
    }
}

/// The longest error message, position or key text a dead letter keeps.
const MAX_TEXT: usize = 2048;

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
    text
}

/// Masks every `control_config` (a connector's own config kept in its offset) in `v`.
fn mask_configs(v: &mut Value, depth: usize) {
    if depth > 16 {
        return;
    }
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                if k == "control_config" && !x.is_null() {
                    *x = Value::from(crate::secret::MASK);
                } else {
                    mask_configs(x, depth + 1);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|x| mask_configs(x, depth + 1)),
        _ => {}
    }
}

/// Where a failed record was.
#[derive(Debug, Clone)]
pub enum Position {
    /// Read by a sink at (stream, shard, LSN, index).
    Stream {
        stream: String,
        shard: u64,
        lsn: u64,
        index: u32,
    },
    /// Taken by a source at this point of its upstream (in the source's own terms).
    Source(Value),
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Stream {
                stream,
                shard,
                lsn,
                index,
            } => write!(f, "record {shard}-{lsn}-{index} of stream {stream}"),
            Position::Source(v) => write!(f, "the record at {v}"),
        }
    }
}

/// A task's error policy at work: turns failed records into dead letters or into the task's
/// failure, and counts them.
#[derive(Clone)]
pub struct DeadLetters {
    pub policy: ErrorPolicy,
    task: Arc<str>,
    secrets: Arc<[String]>,
    progress: Arc<Progress>,
    max_record_size: usize,
}

impl DeadLetters {
    pub fn new(
        policy: ErrorPolicy,
        task: &str,
        secrets: Vec<String>,
        progress: Arc<Progress>,
        max_record_size: usize,
    ) -> DeadLetters {
        DeadLetters {
            policy,
            task: task.into(),
            secrets: secrets.into(),
            progress,
            max_record_size,
        }
    }

    /// The policy of a config none of whose failures are tolerated (tests, tools).
    pub fn none(task: &str, progress: Arc<Progress>) -> DeadLetters {
        DeadLetters::new(ErrorPolicy::default(), task, Vec::new(), progress, usize::MAX)
    }

    pub fn tolerates(&self) -> bool {
        self.policy.tolerance == Tolerance::All
    }

    /// Handles one failed record: with `none`, the task's error (naming where the record was);
    /// with `all`, `Ok` with its dead letter when a dead-letter stream is set. Counts it and
    /// logs it when asked.
    pub fn fail(
        &self,
        record: (String, PayloadFlag, Bytes, Attributes),
        stage: Stage,
        position: Position,
        error: &ConnectorError,
    ) -> Result<Option<Record>, ConnectorError> {
        let message = cut(crate::secret::scrub(&error.full_message(), &self.secrets), MAX_TEXT);
        let position = self.shown(position);
        if !self.tolerates() {
            return Err(ConnectorError {
                kind: error.kind,
                message: format!("{position} failed in stage {}: {message}", stage.as_str()),
                retry: false,
                source: None,
            });
        }
        self.progress.dead_letters.fetch_add(1, Ordering::Relaxed);
        if self.policy.log {
            tracing::warn!(stage = stage.as_str(), class = %error.kind, "{position} failed: {message}");
        }
        let Some(_) = &self.policy.deadletter else {
            return Ok(None);
        };
        let (key, mut flag, mut payload, mut attributes) = record;
        attributes.insert(attr::CONNECTOR.into(), self.task.to_string());
        attributes.insert(attr::STAGE.into(), stage.as_str().into());
        attributes.insert(attr::CLASS.into(), error.kind.to_string());
        attributes.insert(attr::MESSAGE.into(), message);
        match position {
            Position::Stream {
                stream,
                shard,
                lsn,
                index,
            } => {
                attributes.insert(attr::STREAM.into(), stream);
                attributes.insert(attr::SHARD.into(), shard.to_string());
                attributes.insert(attr::LSN.into(), lsn.to_string());
                attributes.insert(attr::INDEX.into(), index.to_string());
            }
            Position::Source(v) => {
                attributes.insert(attr::SOURCE_POSITION.into(), cut(v.to_string(), MAX_TEXT));
            }
        }
        let mut letter = Record {
            key,
            flag,
            payload: Bytes::new(),
            attributes,
        };
        // The dead letter must fit the stream, or it would fail the task it is there to keep
        // going: first the record's own attributes are left out, then the key is cut, then the
        // payload (and it is then RAW, as a cut Struct is no Struct).
        let fits = |l: &Record, extra: usize| l.encoded_size_bound() + extra + 64 <= self.max_record_size;
        if !fits(&letter, payload.len()) {
            let own: Vec<String> = letter
                .attributes
                .keys()
                .filter(|k| !k.starts_with("__connect.errors."))
                .cloned()
                .collect();
            if !own.is_empty() && !fits(&letter, 0) {
                for k in &own {
                    letter.attributes.remove(k);
                }
                letter
                    .attributes
                    .insert(attr::ATTRIBUTES_DROPPED.into(), own.len().to_string());
            }
            if !fits(&letter, 0) && letter.key.len() > MAX_TEXT {
                letter
                    .attributes
                    .insert(attr::KEY_TRUNCATED.into(), letter.key.len().to_string());
                letter.key = cut(std::mem::take(&mut letter.key), MAX_TEXT);
            }
            letter
                .attributes
                .insert(attr::TRUNCATED.into(), payload.len().to_string());
            let room = self.max_record_size.saturating_sub(letter.encoded_size_bound() + 64);
            payload = payload.slice(..room.min(payload.len()));
            flag = PayloadFlag::Raw;
        }
        letter.flag = flag;
        letter.payload = payload;
        Ok(Some(letter))
    }

    /// A position as dead letters and errors show it: a config a source keeps in its offset
    /// (an Airbyte connector's CONTROL config) masked, and the config's secrets scrubbed.
    fn shown(&self, position: Position) -> Position {
        match position {
            Position::Source(mut v) => {
                mask_configs(&mut v, 0);
                let text = crate::secret::scrub(&v.to_string(), &self.secrets);
                Position::Source(serde_json::from_str(&text).unwrap_or(Value::String(text)))
            }
            p => p,
        }
    }

    /// [`fail`](Self::fail) for a record a sink read.
    pub fn fail_read(
        &self,
        stream: &str,
        r: &SinkRecord,
        stage: Stage,
        error: &ConnectorError,
    ) -> Result<Option<Record>, ConnectorError> {
        self.fail(
            (r.key.clone(), r.flag, r.payload.clone(), r.attributes.clone()),
            stage,
            Position::Stream {
                stream: stream.to_owned(),
                shard: r.shard_id,
                lsn: r.lsn,
                index: r.index,
            },
            error,
        )
    }

    /// Whether an error is about a record's content (a dead letter under `all`), not an outage.
    pub fn is_record_failure(e: &ConnectorError) -> bool {
        e.kind == ErrorKind::Data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(e: Vec<FieldError>) -> Vec<String> {
        e.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn options_parse_and_bad_ones_name_the_field() {
        let p = ErrorPolicy::parse(&json!({"stream": "s"})).unwrap();
        assert_eq!(p, ErrorPolicy::default());
        let p = ErrorPolicy::parse(&json!({
            "errors.tolerance": "ALL", "errors.deadletter.stream": "dlq",
            "errors.retry.timeout": "30000", "errors.retry.delay.max.ms": 500, "errors.log.enable": "true",
        }))
        .unwrap();
        assert_eq!(
            p,
            ErrorPolicy {
                tolerance: Tolerance::All,
                deadletter: Some("dlq".into()),
                retry_timeout: Some(Duration::from_secs(30)),
                retry_delay_max: Duration::from_millis(500),
                log: true,
            }
        );
        assert_eq!(
            ErrorPolicy::parse(&json!({"errors.retry.timeout": -1}))
                .unwrap()
                .retry_timeout,
            None
        );
        let e = fields(
            ErrorPolicy::parse(&json!({
                "errors.tolerance": "some", "errors.retry.timeout": "soon", "errors.log.enable": 1,
                "errors.deadletterqueue.topic.name": "x", "errors.retry.delay.max.ms": 0,
            }))
            .unwrap_err(),
        );
        assert_eq!(e.len(), 5, "{e:?}");
        for k in [
            TOLERANCE,
            RETRY_TIMEOUT,
            LOG_ENABLE,
            "errors.deadletterqueue.topic.name",
            RETRY_DELAY_MAX,
        ] {
            assert!(e.iter().any(|m| m.starts_with(&format!("{k}: "))), "{k} in {e:?}");
        }
        let e = fields(
            ErrorPolicy::parse(&json!({"errors.tolerance": "all", "errors.deadletter.stream": "9 bad"})).unwrap_err(),
        );
        assert!(
            e[0].starts_with("errors.deadletter.stream: a stream name that must start"),
            "{e:?}"
        );
        // A dead-letter stream without tolerance would never be used: refused, not ignored.
        let e = fields(ErrorPolicy::parse(&json!({"errors.deadletter.stream": "dlq"})).unwrap_err());
        assert!(e[0].contains("errors.tolerance=all"), "{e:?}");
        let p = ErrorPolicy::parse(&json!({"errors.tolerance": "all", "errors.deadletter.stream": "s"})).unwrap();
        assert!(p.check_stream("s").is_err() && p.check_stream("t").is_ok());
    }

    fn letters(policy: Value, max: usize) -> (DeadLetters, Arc<Progress>) {
        let progress = Arc::new(Progress::default());
        let d = DeadLetters::new(
            ErrorPolicy::parse(&policy).unwrap(),
            "task1",
            vec!["hunter2".into()],
            progress.clone(),
            max,
        );
        (d, progress)
    }

    #[test]
    fn a_dead_letter_keeps_the_record_and_says_why() {
        let (d, progress) = letters(
            json!({"errors.tolerance": "all", "errors.deadletter.stream": "dlq"}),
            1 << 20,
        );
        let r = SinkRecord {
            shard_id: 7,
            lsn: 42,
            index: 3,
            key: "k".into(),
            flag: PayloadFlag::Json,
            payload: Bytes::from_static(b"\x0a\x01x"),
            attributes: Attributes::from([("a".to_owned(), "b".to_owned())]),
        };
        let e = ConnectorError::data("value too long (password hunter2)");
        let l = d.fail_read("s", &r, Stage::Write, &e).unwrap().expect("a letter");
        assert_eq!(
            (l.key.as_str(), l.flag, &l.payload[..]),
            ("k", PayloadFlag::Json, &b"\x0a\x01x"[..])
        );
        let a = &l.attributes;
        assert_eq!(a["a"], "b");
        assert_eq!(a[attr::CONNECTOR], "task1");
        assert_eq!(a[attr::STAGE], "write");
        assert_eq!(a[attr::CLASS], "data");
        assert_eq!(a[attr::MESSAGE], "value too long (password **********)");
        assert_eq!((a[attr::STREAM].as_str(), a[attr::SHARD].as_str()), ("s", "7"));
        assert_eq!((a[attr::LSN].as_str(), a[attr::INDEX].as_str()), ("42", "3"));
        assert!(!a.contains_key(attr::TRUNCATED));
        assert_eq!(progress.dead_letters.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_oversized_record_is_cut_to_fit_and_says_so() {
        let max = 4096;
        let (d, _) = letters(
            json!({"errors.tolerance": "all", "errors.deadletter.stream": "dlq"}),
            max,
        );
        let big = Bytes::from(vec![7u8; 10_000]);
        let e = ConnectorError::data("too big");
        let pos = Position::Source(json!({"lsn": "0/16"}));
        let l = d
            .fail(
                ("k".into(), PayloadFlag::Json, big, Attributes::new()),
                Stage::Write,
                pos,
                &e,
            )
            .unwrap()
            .unwrap();
        assert!(l.encoded_size_bound() <= max, "{}", l.encoded_size_bound());
        assert_eq!(l.flag, PayloadFlag::Raw);
        assert_eq!(l.attributes[attr::TRUNCATED], "10000");
        assert_eq!(l.attributes[attr::SOURCE_POSITION], r#"{"lsn":"0/16"}"#);
        assert!(l.payload.len() > 3000 && l.payload.iter().all(|&b| b == 7));
    }

    /// A record whose key and attributes alone are over the limit still makes a dead letter
    /// that fits; a config kept in the offset and the config's secrets never show.
    #[test]
    fn a_dead_letter_always_fits_and_shows_no_secret() {
        let max = 8192;
        let (d, _) = letters(
            json!({"errors.tolerance": "all", "errors.deadletter.stream": "dlq"}),
            max,
        );
        let attrs: Attributes = (0..100).map(|i| (format!("h{i}"), "v".repeat(200))).collect();
        let key = "k".repeat(20_000);
        let pos =
            Position::Source(json!({"before": {"states": [1], "control_config": {"token": "abc"}, "p": "hunter2"}}));
        let e = ConnectorError::data("too big");
        let l = d
            .fail(
                (key, PayloadFlag::Json, Bytes::from(vec![1u8; 50_000]), attrs),
                Stage::Write,
                pos,
                &e,
            )
            .unwrap()
            .unwrap();
        assert!(l.encoded_size_bound() <= max, "{}", l.encoded_size_bound());
        assert_eq!(l.attributes[attr::ATTRIBUTES_DROPPED], "100");
        assert_eq!(l.attributes[attr::KEY_TRUNCATED], "20000");
        assert_eq!(l.key.len(), MAX_TEXT);
        let shown = &l.attributes[attr::SOURCE_POSITION];
        assert!(
            !shown.contains("abc") && !shown.contains("hunter2") && shown.contains("states"),
            "{shown}"
        );
    }

    #[test]
    fn none_fails_with_where_and_why_and_all_without_a_stream_only_counts() {
        let (d, progress) = letters(json!({}), 1 << 20);
        let e = ConnectorError::data("bad value");
        let pos = Position::Source(json!({"offset": 5}));
        let err = d
            .fail(
                ("k".into(), PayloadFlag::Raw, Bytes::new(), Attributes::new()),
                Stage::Convert,
                pos.clone(),
                &e,
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Data);
        assert!(!err.retryable());
        assert_eq!(
            err.message,
            r#"the record at {"offset":5} failed in stage convert: bad value"#
        );
        assert_eq!(progress.dead_letters.load(Ordering::Relaxed), 0);
        let (d, progress) = letters(json!({"errors.tolerance": "all"}), 1 << 20);
        let none = d
            .fail(
                ("k".into(), PayloadFlag::Raw, Bytes::new(), Attributes::new()),
                Stage::Convert,
                pos,
                &e,
            )
            .unwrap();
        assert!(none.is_none());
        assert_eq!(progress.dead_letters.load(Ordering::Relaxed), 1);
    }
}
