//! Airbyte connectors (in progress, issue 8): the protocol's messages. The host that runs a
//! connector as a process or container image, and the `airbyte` source and sink, build on it.

pub mod protocol;
