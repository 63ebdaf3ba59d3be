//! The `generator` source: synthetic records at a set rate, spread over keys, each carrying a
//! sequence number per key, optionally stopping after a count.

mod config;
mod offset;
mod source;

pub use config::{GeneratorConfig, PayloadShape};
pub use offset::GeneratorOffset;
pub use source::GeneratorSource;
