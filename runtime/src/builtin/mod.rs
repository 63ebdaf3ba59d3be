//! Connectors built into the runtime, as HStream IO ships them: `generator` (a source of
//! synthetic records) and `blackhole` (a sink that counts and discards), and [`registry`], the
//! runtime's registry (these two and the `wasm` source and sink).

pub mod blackhole;
pub mod generator;

use std::sync::Arc;

use crate::registry::Registry;

/// The runtime's connector types, one line each, with WASM plugins as the transforms every
/// connector takes.
pub fn registry() -> Registry {
    let mut r = Registry::with_transforms(Arc::new(crate::wasm::transforms::WasmTransforms));
    r.source::<generator::GeneratorSource>("generator");
    r.sink::<blackhole::BlackholeSink>("blackhole");
    r.source::<crate::wasm::connectors::WasmSource>("wasm");
    r.sink::<crate::wasm::connectors::WasmSink>("wasm");
    r
}
