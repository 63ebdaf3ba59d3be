//! Airbyte connectors (in progress, issue 8): the protocol's messages (`protocol`) and running a
//! connector as an executable, a venv-installed package or a container image (`host`). The
//! `airbyte` source and sink build on them.

pub mod host;
pub mod protocol;
