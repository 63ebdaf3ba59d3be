//! hstream-server: a stream server wire-compatible with HStreamDB's `hstream.server.HStreamApi`.
//!
//! Guarantees before APIs: an acknowledged append is durable under the configured fsync policy
//! and survives a crash; every record is stored as the client encoded it; per-shard order is the
//! order of acknowledgement. See `ARCHITECTURE.md` for the map.

pub mod batch;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod connectors;
pub mod error;
pub mod keyspace;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod readers;
pub mod rest;
pub mod secret;
pub mod service;
pub mod store;
pub mod streams;
pub mod subscription;
