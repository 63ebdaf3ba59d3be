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

/// etcd's v3 API, client side (`etcdserverpb`), for the etcd MetaStore.
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's key-value messages (`mvccpb`), which `etcd` refers to.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's auth messages (`authpb`), which `etcd` refers to.
pub mod authpb {
    tonic::include_proto!("authpb");
}
