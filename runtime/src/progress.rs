//! What a running task tells the people watching it: counters, status, lag. Part of the
//! connector API (a source reports through [`crate::connector::SourceOutput`]); the pipeline
//! and the supervisor update and read it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde_json::Value;

use crate::error::ErrorKind;

/// Counters of a task, shared with its supervisor and the API.
#[derive(Debug, Default)]
pub struct Progress {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    /// Unix ms of the last record moved (0: none yet).
    pub last_progress_ms: AtomicI64,
    /// The last checkpointed offset, as JSON (shown by GetConnector).
    pub offset: std::sync::Mutex<Option<Value>>,
    /// What the source says it is doing (e.g. "snapshot public.t: 4096/100000 rows").
    pub status: std::sync::Mutex<Option<String>>,
    /// Unix ms of the last checkpoint stored (0: none yet).
    pub last_checkpoint_ms: AtomicI64,
    /// Failed attempts by error class: config, external, internal, data.
    pub errors: [AtomicU64; 4],
    /// Records that failed and were tolerated (`errors.tolerance=all`): dead-lettered, or
    /// skipped when no dead-letter stream is set.
    pub dead_letters: AtomicU64,
    /// How far behind its upstream the source is, in the source's own terms.
    pub lag: std::sync::Mutex<Option<Lag>>,
    /// Notified when a stored checkpoint moved: the supervisor clears a recovered task's last
    /// error then.
    pub(crate) moved_on: tokio::sync::Notify,
}

/// A source's distance from its upstream, in its own terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lag {
    /// WAL or log bytes not yet taken (PostgreSQL: server WAL end − our durable LSN).
    Bytes(u64),
    /// Age of the newest event taken, while events are waiting (MySQL: now − event time).
    Seconds(f64),
    /// Messages taken and not yet acknowledged upstream (MQTT in-flight).
    Messages(u64),
    /// Records produced upstream since the last durable checkpoint (Airbyte).
    Records(u64),
}

impl Progress {
    /// Counts a failed attempt by its error class.
    pub fn failed(&self, kind: ErrorKind) {
        let i = match kind {
            ErrorKind::Config => 0,
            ErrorKind::External => 1,
            ErrorKind::Internal => 2,
            ErrorKind::Data => 3,
        };
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A checkpoint was stored: shows it, and says so if it moved.
    pub(crate) fn checkpointed(&self, offset: Option<Value>) {
        let moved = {
            let mut current = self.offset.lock().expect("lock");
            let moved = *current != offset;
            *current = offset;
            moved
        };
        self.last_checkpoint_ms.store(unix_ms(), Ordering::Relaxed);
        if moved {
            self.moved_on.notify_one();
        }
    }

    pub(crate) fn moved(&self, records: u64, bytes: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.last_progress_ms.store(unix_ms(), Ordering::Relaxed);
    }
}

pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
