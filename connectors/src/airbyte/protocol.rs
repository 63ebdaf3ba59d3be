//! The Airbyte protocol's messages (v0 schema, as `airbyte-protocol` 0.18 writes them): one
//! `AirbyteMessage` JSON object per stdout line, `type` naming the one payload field that is set.
//!
//! Parsing is lenient where the protocol is open (every object may carry fields we do not know)
//! and strict where a mistake would lose data (a RECORD without `stream` or an object `data`).
//! STATE messages are kept whole as JSON, so private fields (the platform's `id`, stats) pass
//! through untouched when the state is stored and handed back with `--state`.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// One parsed line of a connector's stdout.
#[derive(Debug)]
pub enum Message<'a> {
    Record(Record<'a>),
    State(State),
    Log {
        level: LogLevel,
        message: String,
    },
    Trace(Trace),
    /// A CONTROL message of type CONNECTOR_CONFIG: the connector's new config, to validate
    /// against its spec and persist (rotated credentials).
    ControlConfig(Value),
    Spec(Value),
    Catalog(Value),
    ConnectionStatus {
        succeeded: bool,
        message: Option<String>,
    },
    /// A message type this build does not act on (e.g. DESTINATION_CATALOG), kept whole.
    Other {
        kind: String,
        body: Value,
    },
}

/// A RECORD: borrowed from the line, `data` left as raw JSON for the caller to convert once.
#[derive(Debug)]
pub struct Record<'a> {
    pub stream: std::borrow::Cow<'a, str>,
    pub namespace: Option<std::borrow::Cow<'a, str>>,
    pub data: &'a RawValue,
    pub emitted_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Fatal,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// How a STATE message scopes its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateKind {
    /// `{"data": …}` (or `type: LEGACY`): one blob for the whole connector.
    Legacy,
    /// One stream's state (`stream.stream_descriptor`).
    Stream { name: String, namespace: Option<String> },
    /// Shared state plus per-stream states.
    Global,
}

/// A STATE message, whole.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub body: Value,
}

impl State {
    pub fn kind(&self) -> StateKind {
        match self.body.get("type").and_then(Value::as_str) {
            Some("GLOBAL") => StateKind::Global,
            Some("STREAM") => {
                let d = &self.body["stream"]["stream_descriptor"];
                StateKind::Stream {
                    name: d["name"].as_str().unwrap_or_default().to_owned(),
                    namespace: d["namespace"].as_str().map(str::to_owned),
                }
            }
            _ => StateKind::Legacy,
        }
    }

    /// The record count the source reports for this state's interval, if any.
    pub fn source_record_count(&self) -> Option<f64> {
        self.body["sourceStats"]["recordCount"].as_f64()
    }
}

/// A TRACE message.
#[derive(Debug, Clone, PartialEq)]
pub enum Trace {
    Error {
        message: String,
        internal_message: Option<String>,
        /// system_error, config_error or transient_error.
        failure_type: Option<String>,
    },
    Estimate {
        name: Option<String>,
        namespace: Option<String>,
        /// STREAM or SYNC.
        scope: String,
        rows: Option<u64>,
        bytes: Option<u64>,
    },
    StreamStatus {
        name: String,
        status: String,
    },
    /// ANALYTICS and anything newer.
    Other(Value),
}

/// Why a line is not an AirbyteMessage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("no \"type\" field: not an AirbyteMessage")]
    NoType,
    #[error("{kind} message without its {field:?} payload")]
    MissingPayload { kind: String, field: &'static str },
    #[error("malformed {kind} message: {reason}")]
    Malformed { kind: String, reason: String },
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    record: Option<&'a RawValue>,
    #[serde(borrow)]
    state: Option<&'a RawValue>,
    #[serde(borrow)]
    log: Option<&'a RawValue>,
    #[serde(borrow)]
    trace: Option<&'a RawValue>,
    #[serde(borrow)]
    control: Option<&'a RawValue>,
    #[serde(borrow)]
    spec: Option<&'a RawValue>,
    #[serde(borrow)]
    catalog: Option<&'a RawValue>,
    #[serde(rename = "connectionStatus", borrow)]
    connection_status: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawRecord<'a> {
    #[serde(borrow)]
    stream: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    namespace: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    emitted_at: Option<f64>,
}

fn malformed(kind: &str, e: impl std::fmt::Display) -> ParseError {
    ParseError::Malformed {
        kind: kind.to_owned(),
        reason: e.to_string(),
    }
}

fn payload<'a>(kind: &str, field: &'static str, v: Option<&'a RawValue>) -> Result<&'a RawValue, ParseError> {
    v.ok_or_else(|| ParseError::MissingPayload {
        kind: kind.to_owned(),
        field,
    })
}

fn value(kind: &str, raw: &RawValue) -> Result<Value, ParseError> {
    serde_json::from_str(raw.get()).map_err(|e| malformed(kind, e))
}

/// A RECORD line read in one pass (the common case, so it is tried first).
#[derive(Deserialize)]
struct RecordLine<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    record: RawRecord<'a>,
}

/// Parses one stdout line.
pub fn parse(line: &str) -> Result<Message<'_>, ParseError> {
    if let Ok(RecordLine { kind, record: r }) = serde_json::from_str::<RecordLine<'_>>(line)
        && kind == "RECORD"
        && r.data.get().starts_with('{')
    {
        return Ok(Message::Record(Record {
            stream: r.stream,
            namespace: r.namespace,
            data: r.data,
            emitted_at: r.emitted_at.unwrap_or(0.0) as i64,
        }));
    }
    let env: Envelope<'_> = serde_json::from_str(line).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let kind = env.kind.ok_or(ParseError::NoType)?;
    Ok(match kind.as_ref() {
        "RECORD" => {
            let raw = payload("RECORD", "record", env.record)?;
            let r: RawRecord<'_> = serde_json::from_str(raw.get()).map_err(|e| malformed("RECORD", e))?;
            if !r.data.get().trim_start().starts_with('{') {
                return Err(malformed("RECORD", "data is not an object"));
            }
            Message::Record(Record {
                stream: r.stream,
                namespace: r.namespace,
                data: r.data,
                emitted_at: r.emitted_at.unwrap_or(0.0) as i64,
            })
        }
        "STATE" => {
            let body = value("STATE", payload("STATE", "state", env.state)?)?;
            if !body.is_object() {
                return Err(malformed("STATE", "state is not an object"));
            }
            Message::State(State { body })
        }
        "LOG" => {
            let v = value("LOG", payload("LOG", "log", env.log)?)?;
            let level = match v["level"].as_str().unwrap_or("INFO") {
                "FATAL" => LogLevel::Fatal,
                "ERROR" => LogLevel::Error,
                "WARN" => LogLevel::Warn,
                "DEBUG" => LogLevel::Debug,
                "TRACE" => LogLevel::Trace,
                _ => LogLevel::Info,
            };
            let mut message = v["message"].as_str().unwrap_or_default().to_owned();
            if let Some(st) = v["stack_trace"].as_str() {
                message.push('\n');
                message.push_str(st);
            }
            Message::Log { level, message }
        }
        "TRACE" => Message::Trace(trace(value("TRACE", payload("TRACE", "trace", env.trace)?)?)),
        "CONTROL" => {
            let v = value("CONTROL", payload("CONTROL", "control", env.control)?)?;
            match (v["type"].as_str(), v["connectorConfig"]["config"].as_object()) {
                (Some("CONNECTOR_CONFIG"), Some(c)) => Message::ControlConfig(Value::Object(c.clone())),
                _ => Message::Other {
                    kind: "CONTROL".into(),
                    body: v,
                },
            }
        }
        "SPEC" => {
            let v = value("SPEC", payload("SPEC", "spec", env.spec)?)?;
            if !v["connectionSpecification"].is_object() {
                return Err(malformed("SPEC", "no connectionSpecification object"));
            }
            Message::Spec(v)
        }
        "CATALOG" => {
            let v = value("CATALOG", payload("CATALOG", "catalog", env.catalog)?)?;
            if !v["streams"].is_array() {
                return Err(malformed("CATALOG", "no streams array"));
            }
            Message::Catalog(v)
        }
        "CONNECTION_STATUS" => {
            let v = value(
                "CONNECTION_STATUS",
                payload("CONNECTION_STATUS", "connectionStatus", env.connection_status)?,
            )?;
            let succeeded = match v["status"].as_str() {
                Some("SUCCEEDED") => true,
                Some("FAILED") => false,
                other => return Err(malformed("CONNECTION_STATUS", format!("status {other:?}"))),
            };
            Message::ConnectionStatus {
                succeeded,
                message: v["message"].as_str().map(str::to_owned),
            }
        }
        other => {
            let body: Value = serde_json::from_str(line).map_err(|e| malformed(other, e))?;
            Message::Other {
                kind: other.to_owned(),
                body,
            }
        }
    })
}

fn trace(v: Value) -> Trace {
    let s = |x: &Value| x.as_str().map(str::to_owned);
    match v["type"].as_str() {
        Some("ERROR") => {
            let e = &v["error"];
            Trace::Error {
                message: s(&e["message"]).unwrap_or_default(),
                internal_message: s(&e["internal_message"]),
                failure_type: s(&e["failure_type"]),
            }
        }
        Some("ESTIMATE") => {
            let e = &v["estimate"];
            Trace::Estimate {
                name: s(&e["name"]),
                namespace: s(&e["namespace"]),
                scope: s(&e["type"]).unwrap_or_else(|| "STREAM".into()),
                rows: e["row_estimate"].as_u64(),
                bytes: e["byte_estimate"].as_u64(),
            }
        }
        Some("STREAM_STATUS") => {
            let e = &v["stream_status"];
            Trace::StreamStatus {
                name: s(&e["stream_descriptor"]["name"]).unwrap_or_default(),
                status: s(&e["status"]).unwrap_or_default(),
            }
        }
        _ => Trace::Other(v),
    }
}

/// A RECORD line for a destination's stdin.
pub fn record_line(stream: &str, namespace: Option<&str>, data: &Value, emitted_at: i64) -> String {
    let mut record = serde_json::json!({ "stream": stream, "data": data, "emitted_at": emitted_at });
    if let Some(ns) = namespace {
        record["namespace"] = Value::from(ns);
    }
    serde_json::json!({ "type": "RECORD", "record": record }).to_string()
}

/// A STATE line (a whole state object, private fields included).
pub fn state_line(state: &Value) -> String {
    serde_json::json!({ "type": "STATE", "state": state }).to_string()
}

/// The `--state` file for a source: the stored states as a JSON array (what current CDKs
/// require; a legacy single blob goes in as the one LEGACY element).
pub fn state_file(states: &[Value]) -> String {
    Value::Array(states.to_vec()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_borrow_their_data() {
        let line = r#"{"type":"RECORD","record":{"stream":"users","data":{"id":1,"name":"a"},"emitted_at":1700000000123,"meta":{"changes":[]}}}"#;
        let Message::Record(r) = parse(line).unwrap() else {
            panic!()
        };
        assert_eq!(r.stream, "users");
        assert_eq!(r.namespace, None);
        assert_eq!(r.emitted_at, 1_700_000_000_123);
        assert_eq!(r.data.get(), r#"{"id":1,"name":"a"}"#);
        let bad = parse(r#"{"type":"RECORD","record":{"stream":"u","data":[1]}}"#).unwrap_err();
        assert!(bad.to_string().contains("data is not an object"), "{bad}");
        let bad = parse(r#"{"type":"RECORD","record":{"data":{}}}"#).unwrap_err();
        assert!(bad.to_string().starts_with("malformed RECORD"), "{bad}");
        assert_eq!(
            parse(r#"{"type":"RECORD"}"#).unwrap_err(),
            ParseError::MissingPayload {
                kind: "RECORD".into(),
                field: "record"
            }
        );
    }

    #[test]
    fn states_keep_every_field_and_know_their_scope() {
        let line = r#"{"type":"STATE","state":{"type":"STREAM","stream":{"stream_descriptor":{"name":"users"},"stream_state":{"updated_at":"2024"}},"sourceStats":{"recordCount":100.0},"id":7}}"#;
        let Message::State(s) = parse(line).unwrap() else {
            panic!()
        };
        assert_eq!(
            s.kind(),
            StateKind::Stream {
                name: "users".into(),
                namespace: None
            }
        );
        assert_eq!(s.source_record_count(), Some(100.0));
        assert_eq!(s.body["id"], json!(7), "private fields pass through");
        let round: Value = serde_json::from_str(&state_line(&s.body)).unwrap();
        assert_eq!(round["state"], s.body);
        let Message::State(g) =
            parse(r#"{"type":"STATE","state":{"type":"GLOBAL","global":{"shared_state":{},"stream_states":[]}}}"#)
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(g.kind(), StateKind::Global);
        let Message::State(l) = parse(r#"{"type":"STATE","state":{"data":{"cursor":5}}}"#).unwrap() else {
            panic!()
        };
        assert_eq!(l.kind(), StateKind::Legacy);
        assert_eq!(state_file(std::slice::from_ref(&l.body)), r#"[{"data":{"cursor":5}}]"#);
    }

    #[test]
    fn logs_traces_and_control() {
        let Message::Log { level, message } =
            parse(r#"{"type":"LOG","log":{"level":"WARN","message":"slow","stack_trace":"at x"}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(level, LogLevel::Warn);
        assert_eq!(message, "slow\nat x");
        let Message::Trace(t) = parse(r#"{"type":"TRACE","trace":{"type":"ERROR","emitted_at":1.5,"error":{"message":"bad key","internal_message":"401","failure_type":"config_error"}}}"#).unwrap() else { panic!() };
        assert_eq!(
            t,
            Trace::Error {
                message: "bad key".into(),
                internal_message: Some("401".into()),
                failure_type: Some("config_error".into())
            }
        );
        let Message::Trace(t) = parse(r#"{"type":"TRACE","trace":{"type":"ESTIMATE","emitted_at":1,"estimate":{"name":"users","type":"STREAM","row_estimate":1000}}}"#).unwrap() else { panic!() };
        assert_eq!(
            t,
            Trace::Estimate {
                name: Some("users".into()),
                namespace: None,
                scope: "STREAM".into(),
                rows: Some(1000),
                bytes: None
            }
        );
        let Message::Trace(t) = parse(r#"{"type":"TRACE","trace":{"type":"STREAM_STATUS","emitted_at":1,"stream_status":{"stream_descriptor":{"name":"users"},"status":"COMPLETE"}}}"#).unwrap() else { panic!() };
        assert_eq!(
            t,
            Trace::StreamStatus {
                name: "users".into(),
                status: "COMPLETE".into()
            }
        );
        let Message::ControlConfig(c) = parse(r#"{"type":"CONTROL","control":{"type":"CONNECTOR_CONFIG","emitted_at":1,"connectorConfig":{"config":{"token":"new"}}}}"#).unwrap() else { panic!() };
        assert_eq!(c, json!({"token": "new"}));
    }

    #[test]
    fn spec_catalog_status_and_unknown_types() {
        assert!(matches!(
            parse(r#"{"type":"SPEC","spec":{"connectionSpecification":{"type":"object"}}}"#).unwrap(),
            Message::Spec(_)
        ));
        assert!(parse(r#"{"type":"SPEC","spec":{}}"#).is_err());
        assert!(matches!(
            parse(r#"{"type":"CATALOG","catalog":{"streams":[]}}"#).unwrap(),
            Message::Catalog(_)
        ));
        let Message::ConnectionStatus { succeeded, message } =
            parse(r#"{"type":"CONNECTION_STATUS","connectionStatus":{"status":"FAILED","message":"no route"}}"#)
                .unwrap()
        else {
            panic!()
        };
        assert!(!succeeded);
        assert_eq!(message.as_deref(), Some("no route"));
        let Message::Other { kind, body } =
            parse(r#"{"type":"DESTINATION_CATALOG","destination_catalog":{"operations":[]},"x":1}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(kind, "DESTINATION_CATALOG");
        assert_eq!(body["x"], json!(1));
        assert!(matches!(parse("Starting source..."), Err(ParseError::NotJson(_))));
        assert_eq!(parse(r#"{"record":{}}"#).unwrap_err(), ParseError::NoType);
    }

    #[test]
    fn destination_lines() {
        let l = record_line("users", Some("public"), &json!({"id": 1}), 42);
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(
            v,
            json!({"type": "RECORD", "record": {"stream": "users", "namespace": "public", "data": {"id": 1}, "emitted_at": 42}})
        );
        let Message::Record(r) = parse(&l).unwrap() else {
            panic!()
        };
        assert_eq!(r.namespace.as_deref(), Some("public"));
    }
}
