//! Every failure a client can see, mapped once to a gRPC status whose message is HStreamDB's JSON
//! error object `{"error": <ErrorCode>, "extra": <json>, "message": <text>}`.

use hstream_proto::ErrorCode;
use serde_json::json;
use tonic::Code;

use crate::meta::MetaError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("stream {0:?} not found")]
    StreamNotFound(String),
    #[error("stream {0:?} already exists")]
    StreamExists(String),
    #[error("stream {0:?} still has subscriptions; delete them or pass force")]
    StreamHasSubscriptions(String),
    #[error("replicationFactor must be at least 1")]
    InvalidReplicationFactor,
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        kind: &'static str,
        code: ErrorCode,
        name: String,
        reason: &'static str,
    },
    #[error("shardCount must be between 1 and {max}, got {got}")]
    InvalidShardCount { got: u32, max: u32 },
    #[error("batched record is empty: {0}")]
    EmptyBatch(&'static str),
    #[error("batched record is {size} bytes, over the {max}-byte limit (max-record-size)")]
    RecordTooLarge { size: usize, max: usize },
    #[error("batched record holds {count} records, over the {max}-record limit (max-batch-records)")]
    TooManyRecords { count: u32, max: u32 },
    #[error("batched record is malformed: {0}")]
    MalformedBatch(String),
    #[error("invalid offset: {0}")]
    InvalidOffset(String),
    #[error("invalid record id {0:?}: expected \"<shardId>-<batchId>-<batchIndex>\"")]
    InvalidRecordId(String),
    #[error("shard {shard} does not exist in stream {stream:?}")]
    ShardNotInStream { shard: u64, stream: String },
    #[error("shard {0} does not exist")]
    ShardNotFound(u64),
    #[error("shard reader {0:?} already exists")]
    ReaderExists(String),
    #[error("shard reader {0:?} not found")]
    ReaderNotFound(String),
    #[error("offset conflicts with the shard read: {0}")]
    ConflictOffset(String),
    #[error("stream {0:?} has more than one shard")]
    TooManyShards(String),
    #[error("subscription {0:?} not found")]
    SubscriptionNotFound(String),
    #[error("subscription {0:?} already exists")]
    SubscriptionExists(String),
    #[error("cannot subscribe to stream {0:?}: it does not exist")]
    SubscriptionOnMissingStream(String),
    #[error("subscription {0:?} still has consumers; stop them or pass force")]
    SubscriptionHasConsumers(String),
    #[error("consumer {consumer:?} is already connected to subscription {subscription:?}")]
    ConsumerExists { consumer: String, subscription: String },
    #[error("invalid subscription: {0}")]
    InvalidSubscription(String),
    #[error("connector {0:?} not found")]
    ConnectorNotFound(String),
    #[error("connector {0:?} already exists")]
    ConnectorExists(String),
    #[error("connector type must be SOURCE or SINK, got {0:?}")]
    ConnectorInvalidType(String),
    /// `kind` is SOURCE or SINK, or empty when the request named no kind.
    #[error("unknown {}connector type {target:?}", if kind.is_empty() { String::new() } else { format!("{} ", kind.to_lowercase()) })]
    ConnectorUnknown { kind: &'static str, target: String },
    #[error("invalid connector config: {0}")]
    InvalidConnectorConfig(String),
    #[error("connector check failed: {0}")]
    ConnectorCheckFailed(String),
    #[error("{0}")]
    ConnectorInvalidStatus(String),
    #[error("{message}")]
    Query { code: ErrorCode, message: String },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A system the request needs (a connector's database) cannot be reached now: try again.
    #[error("{0}")]
    UpstreamUnavailable(String),
    #[error("{0} is not implemented by this server yet")]
    Unimplemented(&'static str),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Another node's answer to a request forwarded there (the REST door serves any node): its
    /// status as it came.
    #[error("{}", remote_message(.0))]
    Remote(tonic::Status),
    /// What the request needs belongs to this node but does not run (it failed to start, or
    /// is starting).
    #[error("{0}")]
    NotRunning(String),
    /// The request must run on the node that holds `what` (HStreamDB's WrongServer): the
    /// answer names that node, as a lookup would, so a client can go there.
    #[error("{what} runs on {}; send this request there (look it up first)", owner.as_deref().unwrap_or("no node yet"))]
    WrongServer {
        what: String,
        /// The owner's advertised `host:port`, when one is known.
        owner: Option<String>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The human message of another node's status (HStreamDB's JSON error object, or the text).
fn remote_message(s: &tonic::Status) -> String {
    serde_json::from_str::<serde_json::Value>(s.message())
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| s.message().to_owned())
}

impl ApiError {
    /// The gRPC status code this error maps to.
    pub fn code(&self) -> Code {
        self.parts().0
    }

    /// HStreamDB's ErrorCode for this error.
    pub fn error_code(&self) -> ErrorCode {
        self.parts().1
    }

    fn parts(&self) -> (Code, ErrorCode, serde_json::Value) {
        use ApiError::*;
        match self {
            StreamNotFound(n) => (Code::NotFound, ErrorCode::StreamNotFound, json!(n)),
            StreamExists(n) => (Code::AlreadyExists, ErrorCode::StreamExists, json!(n)),
            StreamHasSubscriptions(n) => (Code::FailedPrecondition, ErrorCode::StreamFoundSubscription, json!(n)),
            InvalidReplicationFactor => (
                Code::InvalidArgument,
                ErrorCode::StreamInvalidReplicaFactor,
                json!(null),
            ),
            InvalidName { code, name, .. } => (Code::InvalidArgument, *code, json!(name)),
            InvalidShardCount { got, .. } => (Code::InvalidArgument, ErrorCode::StreamInvalidShardCount, json!(got)),
            EmptyBatch(_) => (Code::InvalidArgument, ErrorCode::StreamEmptyBatchedRecord, json!(null)),
            RecordTooLarge { size, .. } => (Code::InvalidArgument, ErrorCode::StreamInvalidRecordSize, json!(size)),
            TooManyRecords { count, .. } => (Code::InvalidArgument, ErrorCode::StreamInvalidRecordSize, json!(count)),
            MalformedBatch(_) => (Code::InvalidArgument, ErrorCode::InternalError, json!(null)),
            InvalidOffset(_) => (Code::InvalidArgument, ErrorCode::StreamInvalidOffset, json!(null)),
            InvalidRecordId(s) => (Code::InvalidArgument, ErrorCode::StreamInvalidRecordId, json!(s)),
            ShardNotInStream { shard, .. } => (Code::NotFound, ErrorCode::StreamShardNotExists, json!(shard)),
            ShardNotFound(s) => (Code::NotFound, ErrorCode::StreamShardNotExists, json!(s)),
            ReaderExists(r) => (Code::AlreadyExists, ErrorCode::InternalError, json!(r)),
            ReaderNotFound(r) => (Code::NotFound, ErrorCode::InternalError, json!(r)),
            ConflictOffset(_) => (Code::InvalidArgument, ErrorCode::ShardReaderConflictOffset, json!(null)),
            TooManyShards(s) => (Code::InvalidArgument, ErrorCode::ShardReaderTooManyShards, json!(s)),
            SubscriptionNotFound(s) => (Code::NotFound, ErrorCode::SubscriptionNotFound, json!(s)),
            SubscriptionExists(s) => (Code::AlreadyExists, ErrorCode::SubscriptionExists, json!(s)),
            SubscriptionOnMissingStream(s) => (
                Code::NotFound,
                ErrorCode::SubscriptionCreationOnNonExistentStream,
                json!(s),
            ),
            SubscriptionHasConsumers(s) => (
                Code::FailedPrecondition,
                ErrorCode::SubscriptionFoundActiveConsumers,
                json!(s),
            ),
            ConsumerExists { consumer, .. } => (Code::AlreadyExists, ErrorCode::InternalError, json!(consumer)),
            InvalidSubscription(_) => (Code::InvalidArgument, ErrorCode::InternalError, json!(null)),
            InvalidRequest(_) => (Code::InvalidArgument, ErrorCode::InternalError, json!(null)),
            UpstreamUnavailable(_) => (Code::Unavailable, ErrorCode::InternalError, json!(null)),
            Query { code, .. } => {
                let status = match code {
                    ErrorCode::QueryNotFound => Code::NotFound,
                    ErrorCode::QueryExists => Code::AlreadyExists,
                    ErrorCode::QueryInvalidSql | ErrorCode::QueryInvalidObjectIdentifier => Code::InvalidArgument,
                    _ => Code::FailedPrecondition,
                };
                (status, *code, json!(null))
            }
            ConnectorNotFound(n) => (Code::NotFound, ErrorCode::ConnectorNotFound, json!(n)),
            ConnectorExists(n) => (Code::AlreadyExists, ErrorCode::ConnectorExists, json!(n)),
            ConnectorInvalidType(t) => (Code::InvalidArgument, ErrorCode::ConnectorInvalidType, json!(t)),
            ConnectorUnknown { target, .. } => (Code::Unimplemented, ErrorCode::ConnectorUnimplemented, json!(target)),
            InvalidConnectorConfig(_) => (Code::InvalidArgument, ErrorCode::InternalError, json!(null)),
            ConnectorCheckFailed(_) => (Code::FailedPrecondition, ErrorCode::ConnectorCheckFailed, json!(null)),
            ConnectorInvalidStatus(_) => (Code::FailedPrecondition, ErrorCode::ConnectorInvalidStatus, json!(null)),
            Unimplemented(_) => (Code::Unimplemented, ErrorCode::InternalError, json!(null)),
            ShuttingDown => (Code::Unavailable, ErrorCode::InternalError, json!(null)),
            NotRunning(_) => (Code::FailedPrecondition, ErrorCode::InternalError, json!(null)),
            Remote(s) => {
                let v: serde_json::Value = serde_json::from_str(s.message()).unwrap_or_default();
                let error = v["error"]
                    .as_i64()
                    .and_then(|e| ErrorCode::try_from(e as i32).ok())
                    .unwrap_or(ErrorCode::InternalError);
                (s.code(), error, v["extra"].clone())
            }
            WrongServer { owner, .. } => (Code::FailedPrecondition, ErrorCode::WrongServer, json!(owner)),
            Store(e) => {
                let code = match e {
                    StoreError::ShardDeleted(_) => Code::NotFound,
                    StoreError::ShuttingDown | StoreError::Poisoned(_) | StoreError::Down(_) => Code::Unavailable,
                    StoreError::Corrupt(_) | StoreError::Unavailable { .. } => Code::DataLoss,
                    StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidData => Code::DataLoss,
                    _ => Code::Internal,
                };
                (code, ErrorCode::InternalError, json!(null))
            }
            Meta(e) => {
                let code = match e {
                    MetaError::AlreadyExists { .. } => Code::AlreadyExists,
                    MetaError::NotFound { .. } => Code::NotFound,
                    MetaError::Unavailable(_) => Code::Unavailable,
                    MetaError::Fenced { .. } => Code::FailedPrecondition,
                    MetaError::Denied(_) => Code::PermissionDenied,
                    _ => Code::Internal,
                };
                (code, ErrorCode::InternalError, json!(null))
            }
        }
    }
}

/// The longest quoted value an error repeats back; a longer one is cut (a 1 MB bad value must
/// not make a 1 MB error).
const QUOTED_MAX: usize = 64;
/// The longest error message sent.
const MESSAGE_MAX: usize = 4096;

/// A value as an error repeats it: cut after [`QUOTED_MAX`] characters, saying how much was
/// left out.
pub fn cut(value: &str) -> String {
    let n = value.chars().count();
    if n <= QUOTED_MAX {
        return value.to_owned();
    }
    let kept: String = value.chars().take(QUOTED_MAX - 16).collect();
    format!("{kept}…({} more characters)", n - (QUOTED_MAX - 16))
}

/// `text` with each quoted part ("…" or '…') cut as [`cut`] does, and the whole bounded.
pub fn bounded(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len().min(MESSAGE_MAX));
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        out.push(c);
        i += 1;
        // A `'` opens a quote only where a word does not continue (not in "it's").
        let opens = c == '"' || (c == '\'' && (i < 2 || !chars[i - 2].is_alphanumeric()));
        if !opens {
            continue;
        }
        // The quoted part: up to the closing quote (or the end); `\"` inside "…" is escaped.
        let start = i;
        while i < chars.len() && chars[i] != c {
            i += if c == '"' && chars[i] == '\\' { 2 } else { 1 };
        }
        let inner: String = chars[start..i.min(chars.len())].iter().collect();
        out.push_str(&cut(&inner));
        if i < chars.len() {
            out.push(c);
            i += 1;
        }
        if out.len() > MESSAGE_MAX {
            break;
        }
    }
    if out.len() > MESSAGE_MAX {
        let mut end = MESSAGE_MAX;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str("…(cut)");
    }
    out
}

impl ApiError {
    /// The error's text as clients get it: quoted values and the whole bounded.
    pub fn message(&self) -> String {
        bounded(&self.to_string())
    }

    /// HStreamDB's `extra` field, its text bounded.
    pub fn extra(&self) -> serde_json::Value {
        match self.parts().2 {
            serde_json::Value::String(s) => serde_json::Value::String(cut(&s)),
            other => other,
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let (code, error, _) = e.parts();
        if matches!(code, Code::Internal | Code::DataLoss) {
            tracing::error!(error = %e, "request failed");
        }
        let body = json!({ "error": error as i32, "message": e.message(), "extra": e.extra() });
        tonic::Status::new(code, body.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_message_is_hstream_json() {
        let s: tonic::Status = ApiError::StreamNotFound("s1".into()).into();
        assert_eq!(s.code(), Code::NotFound);
        let v: serde_json::Value = serde_json::from_str(s.message()).unwrap();
        assert_eq!(v["error"], 200);
        assert_eq!(v["extra"], "s1");
        assert_eq!(v["message"], "stream \"s1\" not found");
    }

    #[test]
    fn errors_cut_what_they_repeat() {
        let huge = "x".repeat(1 << 20);
        let s: tonic::Status = ApiError::StreamNotFound(huge.clone()).into();
        assert!(s.message().len() < 400, "{}", s.message().len());
        let v: serde_json::Value = serde_json::from_str(s.message()).unwrap();
        assert!(v["message"].as_str().unwrap().contains("more characters"), "{v}");
        assert!(v["extra"].as_str().unwrap().len() < 100);
        let text = format!("bad value '{huge}' and \"{huge}\" in {huge}");
        assert!(bounded(&text).len() <= MESSAGE_MAX + 16);
        assert_eq!(bounded("stream \"s1\" not found"), "stream \"s1\" not found");
        let apostrophes = format!("the record's value isn't '{}'", "v".repeat(100));
        assert!(
            bounded(&apostrophes).starts_with("the record's value isn't 'vvv"),
            "{}",
            bounded(&apostrophes)
        );
        assert!(bounded(&apostrophes).contains("more characters"));
        assert_eq!(bounded("it's \"a \\\"q\\\"\" ok"), "it's \"a \\\"q\\\"\" ok");
    }
}
