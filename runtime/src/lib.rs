//! The HStream IO runtime: how connectors are declared, run, checkpointed and controlled.
//!
//! Guarantees before APIs (details on each item):
//! - a source's position is checkpointed, and offered back to it as committed, only after every
//!   record before it is durable in the stream ([`connector`], [`pipeline`]);
//! - a source's records are numbered as emitted and a replay after a crash drops those already
//!   stored with the same content, so each record is stored once ([`once`], decision 035);
//! - a record a connector cannot handle fails the task with the reason or, under
//!   `errors.tolerance=all`, goes to a dead-letter stream ([`tolerance`], decision 034);
//! - a sink's read position is checkpointed only after the sink made the records durable;
//! - a task whose attempt fails with a retryable error is restarted with exponential backoff; a
//!   config or internal error parks it as FAILED with the reason ([`supervisor`]);
//! - configs are validated (schema, then types, then the type's checks) before anything starts,
//!   and errors name the field; secrets never appear in errors or `Debug` output ([`secret`]).

pub mod builtin;
pub mod connector;
pub mod context;
pub mod error;
pub mod logs;
pub mod once;
pub mod options;
pub mod pbstruct;
pub mod pipeline;
pub mod producer;
pub mod progress;
pub mod record;
pub mod registry;
pub mod remote;
pub mod secret;
pub mod spec;
pub mod streams;
pub mod structs;
pub mod supervisor;
pub mod testing;
pub mod tolerance;
pub mod transform;
pub mod wasm;

pub use builtin::registry as builtin;
pub use connector::{
    Attributes, ConnectorConfig, Done, Offset, PayloadFlag, Record, Sink, SinkContext, SinkRecord, Source,
    SourceOutput, Written,
};
pub use error::{ConnectorError, ErrorKind};
pub use progress::{Lag, Progress};
pub use registry::{ConnectorType, Kind, Registry};
pub use secret::Secret;
pub use streams::{Checkpoints, ReadChunk, ShardWatch, Streams, TaggedChunk};
