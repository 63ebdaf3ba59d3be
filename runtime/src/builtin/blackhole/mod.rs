//! The `blackhole` sink: reads a stream, counts, and discards. Its read position is the runtime's
//! sink position (next LSN per shard), so a restart resumes where it stopped.

mod config;
mod sink;

pub use config::BlackholeConfig;
pub use sink::BlackholeSink;
