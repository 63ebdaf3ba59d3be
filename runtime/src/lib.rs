//! The HStream IO runtime: connector API, registry, supervisor, checkpoints (filled by issue 4).
