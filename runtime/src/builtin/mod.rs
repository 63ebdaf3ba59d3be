//! Connectors built into the runtime, as HStream IO ships them: `generator` (a source of
//! synthetic records) and `blackhole` (a sink that counts and discards).

pub mod blackhole;
pub mod generator;
