use serde::{Deserialize, Serialize};

use crate::connector::Offset;

/// How many records the generator has emitted: record `i` has key `k{i % keys}` and sequence
/// number `i / keys` within its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratorOffset {
    pub next: u64,
}

impl Offset for GeneratorOffset {
    const VERSION: u32 = 1;
}
