//! Per-connector logs: every attempt of a task runs inside a `connector` span carrying its name
//! (`task`), and [`TaskLogLayer`] copies each event inside such a span into that task's ring
//! buffer, which GetConnectorLogs and `GET /connectors/{name}/logs` return. The host registers
//! a buffer per task ([`register`]) and adds the layer to its subscriber.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, Mutex, RwLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Lines kept per task.
pub const LOG_LINES: usize = 1000;
/// The span every attempt of a task runs in.
pub const SPAN: &str = "connector";

pub type TaskLog = Arc<Mutex<VecDeque<String>>>;

/// A task's log and the secret values of its config, scrubbed from every line.
struct Sink {
    log: TaskLog,
    secrets: Vec<String>,
}

static LOGS: LazyLock<RwLock<HashMap<String, Arc<Sink>>>> = LazyLock::new(Default::default);

/// Routes the log lines of task `name` to `log`, with `secrets` (the config's secret values,
/// see [`crate::secret::secret_values`]) masked.
pub fn register(name: &str, log: TaskLog, secrets: Vec<String>) {
    LOGS.write()
        .expect("lock")
        .insert(name.to_owned(), Arc::new(Sink { log, secrets }));
}

pub fn unregister(name: &str) {
    LOGS.write().expect("lock").remove(name);
}

/// Appends a line, dropping the oldest beyond [`LOG_LINES`].
pub fn push(log: &Mutex<VecDeque<String>>, line: String) {
    let mut log = log.lock().expect("lock");
    if log.len() == LOG_LINES {
        log.pop_front();
    }
    log.push_back(line);
}

/// Unix seconds with milliseconds, as the task log lines start.
pub fn timestamp() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The task a `connector` span belongs to (kept in the span's extensions).
struct TaskName(String);

#[derive(Default)]
struct Fields {
    task: Option<String>,
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "task" => self.task = Some(value.to_owned()),
            "message" => self.message.push_str(value),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "task" => self.task = Some(format!("{value:?}")),
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

/// Copies events inside a `connector` span into the task's log.
pub struct TaskLogLayer;

impl<S> Layer<S> for TaskLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != SPAN {
            return;
        }
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let (Some(task), Some(span)) = (f.task, ctx.span(id)) {
            span.extensions_mut().insert(TaskName(task));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else { return };
        let Some(task) = scope
            .from_root()
            .find_map(|span| span.extensions().get::<TaskName>().map(|t| t.0.clone()))
        else {
            return;
        };
        let Some(sink) = LOGS.read().expect("lock").get(&task).cloned() else {
            return;
        };
        let mut f = Fields::default();
        event.record(&mut f);
        let meta = event.metadata();
        // One entry per event: line breaks inside a message are escaped.
        let line = format!(
            "{} {} {}: {}{}",
            timestamp(),
            meta.level(),
            meta.target(),
            f.message,
            f.rest
        )
        .replace('\n', "\\n");
        push(&sink.log, crate::secret::scrub(&line, &sink.secrets));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    #[test]
    fn events_in_a_connector_span_reach_that_tasks_log_only() {
        let a: TaskLog = Default::default();
        let b: TaskLog = Default::default();
        register("layer-test-a", a.clone(), vec!["hunter2".into()]);
        register("layer-test-b", b.clone(), vec![]);
        let subscriber = tracing_subscriber::registry().with(TaskLogLayer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("connector", task = "layer-test-a");
            let _g = span.enter();
            let inner = tracing::debug_span!("inner");
            let _i = inner.enter();
            tracing::warn!(topic = "t/1", "message rejected");
            tracing::info!("two\nlines with hunter2");
        });
        tracing::subscriber::with_default(tracing_subscriber::registry().with(TaskLogLayer), || {
            tracing::info!("outside any connector");
        });
        let a = a.lock().unwrap();
        assert_eq!(a.len(), 2, "{a:?}");
        assert!(a[1].ends_with("two\\nlines with **********"), "{}", a[1]);
        assert!(
            a[0].contains("WARN") && a[0].ends_with("message rejected topic=t/1"),
            "{}",
            a[0]
        );
        assert!(b.lock().unwrap().is_empty());
        unregister("layer-test-a");
        unregister("layer-test-b");
    }
}
