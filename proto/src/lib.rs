//! Generated `hstream.server` protobuf messages and the `HStreamApi` gRPC service.
//!
//! Only this crate knows the wire layout; the server converts to domain types at the edge.
//! Payload fields of `BatchedRecord` and `HStreamRecord` are `bytes::Bytes` so stored batches
//! are handed to the transport without copying.

#![allow(clippy::all, missing_docs)]

pub mod server {
    tonic::include_proto!("hstream.server");
}

pub use server::*;
