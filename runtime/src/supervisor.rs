//! One supervisor per task: runs attempts of the connector, restarts retryable failures with
//! exponential backoff, parks on fatal ones (FAILED, with the reason), and obeys pause, resume
//! and delete. Its state is published on a `watch` channel.
//!
//! States follow HStream IO: NEW → RUNNING → (STOPPED on pause | FAILED | COMPLETED) and
//! DELETED at the end. A task under restart backoff stays RUNNING with `last_error` set, until
//! a checkpoint of a later attempt moves (it has recovered) and the error is cleared.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::connector::Done;
use crate::error::ConnectorError;
use crate::pipeline::RunContext;
use crate::progress::Progress;
use crate::registry::ConnectorType;
use crate::streams::{Checkpoints, Streams};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    New,
    Running,
    Stopped,
    Failed,
    Completed,
    Deleted,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::New => "NEW",
            State::Running => "RUNNING",
            State::Stopped => "STOPPED",
            State::Failed => "FAILED",
            State::Completed => "COMPLETED",
            State::Deleted => "DELETED",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "NEW" => State::New,
            "RUNNING" => State::Running,
            "STOPPED" | "PAUSED" => State::Stopped,
            "FAILED" => State::Failed,
            "COMPLETED" => State::Completed,
            "DELETED" => State::Deleted,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    /// Why the last attempt failed (kept while retrying and in FAILED).
    pub last_error: Option<String>,
    pub restarts: u32,
}

/// The restart policy, a pure function of the error and the attempt number: `None` means do not
/// retry; otherwise wait this long first.
pub fn backoff(error: &ConnectorError, attempt: u32, base: Duration, max: Duration) -> Option<Duration> {
    if !error.retryable() {
        return None;
    }
    let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
    Some(base.saturating_mul(factor).min(max))
}

#[derive(Debug)]
pub enum Control {
    Pause,
    Resume,
    /// Replace the config and restart the current attempt.
    Alter(Value),
    Delete,
}

pub struct TaskSpec {
    pub name: String,
    pub connector: Arc<dyn ConnectorType>,
    pub config: Value,
    pub streams: Arc<dyn Streams>,
    pub checkpoints: Arc<dyn Checkpoints>,
    /// The state the task had (after a server restart): NEW and RUNNING run, STOPPED stays
    /// paused, FAILED and COMPLETED stay parked until resumed or altered.
    pub initial: State,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// The handle of a running supervisor.
#[derive(Clone)]
pub struct TaskHandle {
    pub control: mpsc::Sender<Control>,
    pub status: watch::Receiver<Status>,
    pub progress: Arc<Progress>,
}

/// Starts a supervisor on `tasks`; it ends when the task is deleted or `shutdown` fires (after
/// the running attempt stopped gracefully).
/// An attempt that ran this long resets the restart count.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

pub fn spawn(spec: TaskSpec, tasks: &tokio_util::task::TaskTracker, shutdown: CancellationToken) -> TaskHandle {
    let (control, rx) = mpsc::channel(16);
    let state = match spec.initial {
        State::Running | State::Deleted => State::New,
        s => s,
    };
    let initial = Status {
        state,
        last_error: None,
        restarts: 0,
    };
    let (status_tx, status) = watch::channel(initial);
    let progress = Arc::new(Progress::default());
    tasks.spawn(supervise(
        spec,
        rx,
        status_tx,
        progress.clone(),
        shutdown,
        tasks.clone(),
    ));
    TaskHandle {
        control,
        status,
        progress,
    }
}

enum Outcome {
    Ended(Result<Done, ConnectorError>),
    Control(Option<Control>),
    Shutdown,
}

/// Bound on a deleted task's release of its upstream resources.
const RELEASE_WAIT: Duration = Duration::from_secs(20);

/// Lets the connector release what it holds upstream once its task is deleted; a failure is
/// logged (with secrets scrubbed), not fatal: the task is deleted either way.
async fn release(spec: &TaskSpec) {
    let released = tokio::time::timeout(RELEASE_WAIT, spec.connector.on_delete(&spec.name, &spec.config))
        .await
        .unwrap_or_else(|_| Err(ConnectorError::external(format!("gave up after {RELEASE_WAIT:?}"))));
    if let Err(e) = released {
        let secrets = crate::secret::secret_values(&spec.connector.config_schema(&spec.config), &spec.config);
        let message = crate::secret::scrub(&e.to_string(), &secrets);
        tracing::warn!(task = %spec.name, error = %message, "could not release the deleted task's upstream resources");
    }
}

async fn supervise(
    mut spec: TaskSpec,
    mut control: mpsc::Receiver<Control>,
    status: watch::Sender<Status>,
    progress: Arc<Progress>,
    shutdown: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
) {
    let set = |state: State, err: Option<String>, restarts: u32| {
        status.send_replace(Status {
            state,
            last_error: err,
            restarts,
        });
    };
    let mut restarts = 0u32;
    let mut paused = spec.initial == State::Stopped;
    // FAILED or COMPLETED: waiting for resume, alter or delete.
    let mut parked = matches!(spec.initial, State::Failed | State::Completed);
    loop {
        if paused || parked {
            let cmd = tokio::select! {
                c = control.recv() => c,
                _ = shutdown.cancelled() => return,
            };
            match cmd {
                Some(Control::Resume) => {
                    paused = false;
                    parked = false;
                    restarts = 0;
                }
                Some(Control::Alter(config)) => {
                    spec.config = config;
                    parked = false;
                    restarts = 0;
                }
                Some(Control::Pause) => {
                    if !parked {
                        set(State::Stopped, None, restarts);
                    }
                }
                Some(Control::Delete) => {
                    release(&spec).await;
                    set(State::Deleted, None, restarts);
                    return;
                }
                None => {
                    set(State::Deleted, None, restarts);
                    return;
                }
            }
            if paused || parked {
                continue;
            }
        }
        let prev_error = status.borrow().last_error.clone();
        set(State::Running, prev_error, restarts);
        let cancel = CancellationToken::new();
        let ctx = RunContext {
            task: spec.name.clone(),
            config: spec.config.clone(),
            streams: spec.streams.clone(),
            checkpoints: spec.checkpoints.clone(),
            cancel: cancel.clone(),
            progress: progress.clone(),
        };
        let connector = spec.connector.clone();
        // The attempt runs as its own task, so a panic in a connector is an internal error of
        // that attempt rather than the end of the supervisor.
        // Everything the attempt logs lands in the task's log too (see `logs`).
        let span = tracing::info_span!(crate::logs::SPAN, task = %spec.name);
        let joined = tasks.spawn(tracing::Instrument::instrument(
            async move { connector.run(ctx).await },
            span,
        ));
        let mut attempt = Box::pin(async move {
            joined
                .await
                .unwrap_or_else(|e| Err(ConnectorError::internal("connector task panicked").with_source(e)))
        });
        let started = tokio::time::Instant::now();
        let started_ms = crate::progress::unix_ms();
        // Drive the attempt until it ends or a command/shutdown interrupts it; an interruption
        // cancels the attempt and lets it stop gracefully (flush and checkpoint).
        let outcome = loop {
            break tokio::select! {
                r = &mut attempt => Outcome::Ended(r),
                // Recovered: a checkpoint of this attempt moved, so the last failure is history.
                _ = progress.moved_on.notified(), if status.borrow().last_error.is_some() => {
                    if progress.last_checkpoint_ms.load(std::sync::atomic::Ordering::Relaxed) >= started_ms {
                        set(State::Running, None, restarts);
                    }
                    continue;
                }
                c = control.recv() => match c {
                    // Already running: nothing to resume.
                    Some(Control::Resume) => continue,
                    other => Outcome::Control(other),
                },
                _ = shutdown.cancelled() => Outcome::Shutdown,
            };
        };
        // A source's lag is its own report while it runs; stopped, it says nothing.
        *progress.lag.lock().expect("lock") = None;
        if started.elapsed() >= HEALTHY_RUN {
            // A long healthy stretch: the next failure starts the backoff afresh.
            restarts = 0;
        }
        let outcome = match outcome {
            Outcome::Ended(r) => Outcome::Ended(r),
            other => {
                cancel.cancel();
                let r = attempt.await;
                if let Err(e) = &r {
                    let secrets =
                        crate::secret::secret_values(&spec.connector.config_schema(&spec.config), &spec.config);
                    let message = crate::secret::scrub(&e.to_string(), &secrets);
                    tracing::warn!(task = %spec.name, error = %message, "task did not stop cleanly");
                }
                other
            }
        };
        match outcome {
            Outcome::Shutdown => return,
            Outcome::Control(Some(Control::Pause)) => {
                paused = true;
                set(State::Stopped, None, restarts);
            }
            Outcome::Control(Some(Control::Resume)) => {}
            Outcome::Control(Some(Control::Alter(config))) => {
                spec.config = config;
                restarts = 0;
            }
            Outcome::Control(Some(Control::Delete)) => {
                release(&spec).await;
                set(State::Deleted, None, restarts);
                return;
            }
            Outcome::Control(None) => {
                set(State::Deleted, None, restarts);
                return;
            }
            Outcome::Ended(Ok(Done::Completed)) => {
                parked = true;
                set(State::Completed, None, restarts);
            }
            Outcome::Ended(Ok(Done::Cancelled)) => {
                // The connector stopped on its own without finishing: run it again.
                restarts += 1;
            }
            Outcome::Ended(Err(e)) => {
                progress.failed(e.kind);
                // A connector's error may quote its input: secrets are scrubbed before the text
                // reaches a log, the status, or an API response.
                let secrets = crate::secret::secret_values(&spec.connector.config_schema(&spec.config), &spec.config);
                let message = crate::secret::scrub(&e.to_string(), &secrets);
                tracing::warn!(task = %spec.name, error = %message, restarts, "task attempt failed");
                match backoff(&e, restarts, spec.backoff_base, spec.backoff_max) {
                    None => {
                        parked = true;
                        set(State::Failed, Some(message), restarts);
                    }
                    Some(wait) => {
                        restarts += 1;
                        set(State::Running, Some(message.clone()), restarts);
                        // Commands still work while waiting to retry.
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            c = control.recv() => match c {
                                Some(Control::Pause) => {
                                    paused = true;
                                    set(State::Stopped, Some(message.clone()), restarts);
                                }
                                Some(Control::Alter(config)) => spec.config = config,
                                Some(Control::Resume) => {}
                                Some(Control::Delete) => {
                                    release(&spec).await;
                                    set(State::Deleted, None, restarts);
                                    return;
                                }
                                None => {
                                    set(State::Deleted, None, restarts);
                                    return;
                                }
                            },
                            _ = shutdown.cancelled() => return,
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::Record;
    use crate::registry::Kind;
    use crate::spec::FieldError;
    use crate::streams::ReadChunk;
    use async_trait::async_trait;

    type Attempt = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Done, ConnectorError>> + Send>>;

    /// A source connector type whose attempts run `run`.
    struct TestType {
        spec: Value,
        run: Box<dyn Fn(RunContext) -> Attempt + Send + Sync>,
    }

    #[async_trait]
    impl ConnectorType for TestType {
        fn kind(&self) -> Kind {
            Kind::Source
        }
        fn spec(&self) -> &Value {
            &self.spec
        }
        fn validate(&self, _: &Value) -> Result<(), Vec<FieldError>> {
            Ok(())
        }
        fn stream(&self, _: &Value) -> Result<String, ConnectorError> {
            Ok("s".into())
        }
        async fn check(&self, _: &Value) -> Result<(), ConnectorError> {
            Ok(())
        }
        async fn run(&self, ctx: RunContext) -> Result<Done, ConnectorError> {
            (self.run)(ctx).await
        }
    }

    /// Streams and checkpoints the failing connector never reaches.
    struct Unused;

    #[async_trait]
    impl Streams for Unused {
        async fn ensure_stream(&self, _: &str) -> Result<(), ConnectorError> {
            Err(ConnectorError::internal("unused"))
        }
        async fn stream_exists(&self, _: &str) -> Result<bool, ConnectorError> {
            Err(ConnectorError::internal("unused"))
        }
        async fn append(&self, _: &str, _: Vec<Record>) -> Result<(), ConnectorError> {
            Err(ConnectorError::internal("unused"))
        }
        async fn shards(&self, _: &str) -> Result<Vec<u64>, ConnectorError> {
            Err(ConnectorError::internal("unused"))
        }
        async fn bounds(&self, _: &str, _: u64) -> Result<(u64, u64), ConnectorError> {
            Err(ConnectorError::internal("unused"))
        }
        async fn read(&self, _: &str, _: u64, _: u64, _: usize, _: Duration) -> Result<ReadChunk, ConnectorError> {
            Err(ConnectorError::internal("unused"))
        }
    }

    #[async_trait]
    impl Checkpoints for Unused {
        async fn load(&self, _: &str) -> Result<Option<(u32, Vec<u8>)>, ConnectorError> {
            Ok(None)
        }
        async fn store(&self, _: &str, _: u32, _: Vec<u8>) -> Result<(), ConnectorError> {
            Ok(())
        }
    }

    /// Starts a task of `connector` whose streams and checkpoints are never reached.
    fn spawn_test(
        name: &str,
        connector: Arc<TestType>,
        config: Value,
        tasks: &tokio_util::task::TaskTracker,
    ) -> TaskHandle {
        let spec = TaskSpec {
            name: name.into(),
            connector,
            config,
            streams: Arc::new(Unused),
            checkpoints: Arc::new(Unused),
            initial: State::New,
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(1),
        };
        spawn(spec, tasks, CancellationToken::new())
    }

    #[tokio::test]
    async fn failure_messages_never_carry_secrets() {
        let spec = serde_json::json!({"connectionSpecification": {"properties": {"password": {"type": "string", "airbyte_secret": true}}}});
        let tasks = tokio_util::task::TaskTracker::new();
        // Fails quoting the configured password, as a careless database driver might.
        let connector = Arc::new(TestType {
            spec,
            run: Box::new(|ctx| {
                Box::pin(async move {
                    let pw = ctx.config["password"].as_str().unwrap_or_default().to_owned();
                    Err(ConnectorError::config(format!("login failed: password={pw}")))
                })
            }),
        });
        let handle = spawn_test("leaky", connector, serde_json::json!({"password": "hunter2"}), &tasks);
        let mut rx = handle.status.clone();
        let failed = rx.wait_for(|s| s.state == State::Failed).await.unwrap().clone();
        let reason = failed.last_error.unwrap();
        assert!(
            reason.contains("login failed") && !reason.contains("hunter2"),
            "{reason}"
        );
        handle.control.send(Control::Delete).await.unwrap();
        tasks.close();
        tasks.wait().await;
    }

    #[tokio::test]
    async fn a_recovered_task_clears_its_last_error_once_it_moves() {
        let tasks = tokio_util::task::TaskTracker::new();
        // Fails its first attempt; the second stores the same offset (no progress), then, when
        // told to, a moved one, and runs until stopped.
        let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let proceed = Arc::new(tokio::sync::Notify::new());
        let (go, same_stored) = (proceed.clone(), Arc::new(tokio::sync::Notify::new()));
        let same = same_stored.clone();
        let connector = Arc::new(TestType {
            spec: serde_json::json!({}),
            run: Box::new(move |ctx| {
                let (attempts, go, same) = (attempts.clone(), go.clone(), same.clone());
                Box::pin(async move {
                    if attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        return Err(ConnectorError::external("db down"));
                    }
                    ctx.progress.checkpointed(None);
                    same.notify_one();
                    go.notified().await;
                    ctx.progress.checkpointed(Some(serde_json::json!({"lsn": 2})));
                    ctx.cancel.cancelled().await;
                    Ok(Done::Cancelled)
                })
            }),
        });
        let handle = spawn_test("rec", connector, serde_json::json!({}), &tasks);
        let mut rx = handle.status.clone();
        // Restarted after the failure: RUNNING, the error still shown (nothing moved yet).
        rx.wait_for(|s| s.state == State::Running && s.restarts == 1)
            .await
            .unwrap();
        // The same offset stored again is no progress: the error stays. (The test runs on one
        // thread: yielding lets the supervisor act on a notification, had there been one.)
        same_stored.notified().await;
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(
            rx.borrow().last_error.as_deref().is_some_and(|e| e.contains("db down")),
            "{:?}",
            *rx.borrow()
        );
        proceed.notify_one();
        let cleared = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| s.last_error.is_none())).await;
        let s = cleared
            .expect("the error was not cleared once the task moved")
            .unwrap()
            .clone();
        assert_eq!(s.state, State::Running);
        handle.control.send(Control::Delete).await.unwrap();
        tasks.close();
        tasks.wait().await;
    }

    #[test]
    fn restart_policy_is_a_function_of_the_error() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        let ext = ConnectorError::external("db down");
        assert_eq!(backoff(&ext, 0, base, max), Some(Duration::from_millis(100)));
        assert_eq!(backoff(&ext, 3, base, max), Some(Duration::from_millis(800)));
        assert_eq!(backoff(&ext, 30, base, max), Some(max));
        assert_eq!(backoff(&ConnectorError::config("bad port"), 0, base, max), None);
        assert_eq!(backoff(&ConnectorError::internal("bug"), 0, base, max), None);
    }
}
