//! Connector tasks hosted in the server process: the table of supervisors, their persisted status,
//! and a bounded log of each task's lifecycle events (GetConnectorLogs).
//!
//! Guarantees: a connector exists in the MetaStore before its task starts; a task runs only on
//! the node holding its ownership (`cluster::assign`), and its checkpoints and status writes
//! are fenced by it; status changes are written back as they happen; wherever a task starts again (a restarted
//! server, another node after a failover) it resumes in the state it had (RUNNING tasks
//! restart from their checkpoints, STOPPED ones stay paused, FAILED ones stay failed until
//! resumed or altered).

mod checkpoints;
mod manage;
mod metrics;
pub mod queries;
mod streams;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hstream_runtime::registry::Kind;
use hstream_runtime::supervisor::{self, Control, State, Status, TaskHandle, TaskSpec};
use hstream_runtime::{ConnectorType, Registry};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::assign::Assignments;
use crate::meta::{ConnectorMeta, MetaError, MetaStore, Ownership};
pub use checkpoints::MetaCheckpoints;
pub use manage::{ConnectorSpec, ConnectorView};
pub use streams::LocalStreams;

pub struct Task {
    pub handle: TaskHandle,
    pub connector: Arc<dyn ConnectorType>,
    pub log: Arc<Mutex<VecDeque<String>>>,
    /// The ownership the task runs under (fencing its checkpoints and status writes).
    pub held: Ownership,
    /// Stops the task here without changing its stored state (it moves to another node).
    pub stop: CancellationToken,
    /// Set when this copy must write nothing more (another node holds the task now, or this
    /// node lost touch): its appends are refused from then on.
    pub revoked: Arc<std::sync::atomic::AtomicBool>,
    /// The task writing its status changes to the metastore (awaited before a hand-over, so
    /// the next node reads the last one).
    pub status_writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The running tasks by connector name (shared with the metrics collector).
type Tasks = Mutex<HashMap<String, Arc<Task>>>;

/// Where this node's connectors run and how they restart.
#[derive(Debug, Clone)]
pub struct Hosting {
    /// This node's id, stored with each connector.
    pub node_id: u32,
    /// This node as clients reach it (`host:port`), shown as a connector's node.
    pub node_address: String,
    /// Restart backoff of failed attempts: first wait, and the cap.
    pub backoff: (Duration, Duration),
    /// Every task runs on this tracker (awaited at shutdown) and stops on this token.
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

/// The connectors service: connector types of this build, the tasks that run them, and their
/// lifecycle (`manage.rs`).
pub struct Connectors {
    pub registry: Registry,
    tasks: Arc<Tasks>,
    streams: Arc<LocalStreams>,
    checkpoints: Arc<MetaCheckpoints>,
    meta: Arc<dyn MetaStore>,
    hosting: Hosting,
    /// Where each connector's task runs (this node's placer starts and stops tasks through
    /// [`crate::cluster::assign::Hosted`]).
    assignments: Arc<Assignments>,
    /// Serializes create, delete and alter.
    ddl: tokio::sync::Mutex<()>,
}

fn task_list(tasks: &Tasks) -> Vec<(String, &'static str, Arc<Task>)> {
    let tasks = tasks.lock().expect("lock");
    tasks
        .iter()
        .map(|(n, t)| {
            let kind = match t.connector.kind() {
                hstream_runtime::Kind::Source => "source",
                hstream_runtime::Kind::Sink => "sink",
            };
            (n.clone(), kind, t.clone())
        })
        .collect()
}

impl Connectors {
    /// The service; the caller adds it to `assignments` (which holds it weakly).
    pub fn new(
        registry: Registry,
        streams: Arc<crate::streams::Streams>,
        meta: Arc<dyn MetaStore>,
        hosting: Hosting,
        assignments: Arc<Assignments>,
    ) -> Self {
        let mut registry = registry;
        // Persistent queries run as tasks of this service.
        registry.sink::<crate::connectors::queries::QueryTask>(crate::connectors::queries::TARGET);
        Connectors {
            registry,
            tasks: Arc::new(Mutex::new(HashMap::new())),
            streams: Arc::new(LocalStreams { streams }),
            checkpoints: Arc::new(MetaCheckpoints::new(meta.clone())),
            meta,
            hosting,
            assignments,
            ddl: tokio::sync::Mutex::new(()),
        }
    }

    /// Registers the collector of the connectors' metrics.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(metrics::Live(self.tasks.clone())));
    }

    pub fn connector_type(&self, kind: &str, target: &str) -> Option<Arc<dyn ConnectorType>> {
        self.registry.get(Kind::parse(kind)?, target)
    }

    pub fn task(&self, name: &str) -> Option<Arc<Task>> {
        self.tasks.lock().expect("lock").get(name).cloned()
    }

    fn remove(&self, name: &str) {
        self.tasks.lock().expect("lock").remove(name);
        hstream_runtime::logs::unregister(name);
    }

    /// Starts the supervisor of a connector stored in the MetaStore, in the state it had,
    /// under `held` (its checkpoints are fenced by it).
    fn start(&self, meta: &ConnectorMeta, config: serde_json::Value, held: Ownership) -> Arc<Task> {
        let tasks = &self.hosting.tasks;
        let stop = self.hosting.shutdown.child_token();
        let revoked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connector = self
            .connector_type(&meta.kind, &meta.target)
            .expect("validated connector type");
        let initial = State::parse(&meta.status).unwrap_or(State::New);
        // The task's log, registered before it runs so its first lines land there.
        let log: hstream_runtime::logs::TaskLog = Arc::new(Mutex::new(VecDeque::new()));
        let secrets = hstream_runtime::secret::secret_values(&connector.config_schema(&config), &config);
        hstream_runtime::logs::register(&meta.name, log.clone(), secrets);
        let handle = supervisor::spawn(
            TaskSpec {
                name: meta.name.clone(),
                connector: connector.clone(),
                config,
                streams: Arc::new(streams::TaskStreams {
                    inner: self.streams.clone(),
                    revoked: revoked.clone(),
                    assignments: self.assignments.clone(),
                }),
                checkpoints: Arc::new(checkpoints::TaskCheckpoints {
                    inner: self.checkpoints.clone(),
                    fence: held.clone(),
                }),
                initial,
                backoff_base: self.hosting.backoff.0,
                backoff_max: self.hosting.backoff.1,
            },
            tasks,
            stop.clone(),
        );
        let task = Arc::new(Task {
            handle: handle.clone(),
            connector,
            log: log.clone(),
            held,
            stop,
            revoked,
            status_writer: Mutex::new(None),
        });
        self.tasks.lock().expect("lock").insert(meta.name.clone(), task.clone());
        let writer = tasks.spawn(persist_status(
            meta.clone(),
            task.held.clone(),
            handle,
            log,
            self.meta.clone(),
        ));
        *task.status_writer.lock().expect("lock") = Some(writer);
        task
    }

    async fn control(&self, name: &str, c: Control) -> bool {
        match self.task(name) {
            Some(t) => t.handle.control.send(c).await.is_ok(),
            None => false,
        }
    }
}

fn push_log(log: &Mutex<VecDeque<String>>, line: String) {
    hstream_runtime::logs::push(log, line);
}

/// Follows a task's status: writes each change to the MetaStore, under the copy's ownership,
/// and to the task's log. A copy whose ownership moved on writes no more status: what the
/// MetaStore shows is the new holder's.
async fn persist_status(
    mut meta: ConnectorMeta,
    held: Ownership,
    handle: TaskHandle,
    log: Arc<Mutex<VecDeque<String>>>,
    store: Arc<dyn MetaStore>,
) {
    let mut rx = handle.status.clone();
    let mut last: Option<Status> = None;
    loop {
        let status = rx.borrow_and_update().clone();
        if last.as_ref() != Some(&status) {
            let now = hstream_runtime::logs::timestamp();
            let line = match &status.last_error {
                Some(e) if status.state == State::Running => {
                    format!(
                        "{now} {} (restart {} after error: {e})",
                        status.state.as_str(),
                        status.restarts
                    )
                }
                Some(e) => format!("{now} {}: {e}", status.state.as_str()),
                None => format!("{now} {}", status.state.as_str()),
            };
            push_log(&log, line);
            if status.state != State::Deleted && meta.status != status.state.as_str() {
                meta.status = status.state.as_str().to_owned();
                match store.set_connector_status(&meta.name, &meta.status, Some(&held)).await {
                    Ok(()) => {}
                    Err(e @ MetaError::Fenced { .. }) => {
                        tracing::info!(connector = %meta.name, reason = %e, "status no longer written: this copy lost the task");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(connector = %meta.name, error = %e, "could not persist connector status")
                    }
                }
            }
            last = Some(status.clone());
        }
        if status.state == State::Deleted || rx.changed().await.is_err() {
            return;
        }
    }
}
