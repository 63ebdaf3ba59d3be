//! End-to-end tests against real `hstream-server` processes (one test binary, to link once).

mod airbyte;
mod cli;
mod cluster;
mod cluster_cdc;
mod connectors;
mod db_tls;
mod etcd;
mod etcd_faults;
mod hardening;
mod jetstream;
mod jetstream_faults;
mod kafka;
mod metrics;
mod mqtt;
mod mysql;
mod mysql_capture;
mod mysql_snapshots;
mod postgres;
mod postgres_capture;
mod postgres_crashes;
mod postgres_snapshots;
mod queries;
mod rest;
mod streams;
mod subscriptions;
mod wasm;
