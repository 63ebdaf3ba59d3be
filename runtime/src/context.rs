//! What one attempt of a task runs with (the pipeline's and exactly-once's common ground).

use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::progress::Progress;
use crate::streams::{Checkpoints, Streams};

pub struct RunContext {
    /// The task (connector) name, which owns the checkpoint.
    pub task: String,
    pub config: Value,
    pub streams: Arc<dyn Streams>,
    pub checkpoints: Arc<dyn Checkpoints>,
    pub cancel: CancellationToken,
    pub progress: Arc<Progress>,
}
