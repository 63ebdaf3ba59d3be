//! A connector's lifecycle over the in-process runtime: create (validate, check, persist,
//! start), describe, list, spec, logs, pause, resume, restart, alter, reset offsets, delete.
//!
//! Secrets: every config leaving this module (views, errors, logs) is redacted by the
//! connector's spec (`airbyte_secret` fields).

use hstream_proto::ErrorCode;
use hstream_runtime::secret;
use hstream_runtime::supervisor::{Control, State};
use serde_json::Value;

use super::Connectors;
use crate::catalog::validate_name;
use crate::error::{ApiError, ApiResult};
use crate::meta::{ConnectorMeta, MetaError, connector_checkpoint};
use crate::store::now_ms;

/// How long a pause, resume or delete waits for the task to reach its new state.
const STATE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A connector to create. No `Debug`: its config holds secrets in the clear.
#[derive(Clone)]
pub struct ConnectorSpec {
    pub name: String,
    /// `source` or `sink` (any case).
    pub kind: String,
    pub target: String,
    /// Must be a JSON object.
    pub config: Value,
}

/// A connector as the front doors show it: config redacted, status the task's own.
#[derive(Debug, Clone)]
pub struct ConnectorView {
    pub name: String,
    /// `SOURCE` or `SINK`.
    pub kind: String,
    pub target: String,
    pub created_ms: i64,
    pub status: String,
    /// The stored config with its secrets masked (null when the type is not in this build).
    pub config: Value,
    /// Position, counters and health of the running task (asked for in detail, and running).
    pub report: Option<Value>,
    /// The node running it (`host:port`).
    pub node: String,
}

/// Connector doors do not reach queries' tasks (their own service keeps their rules: a
/// terminated query stays terminated, a running one is not deleted).
fn no_query(name: &str) -> ApiResult<()> {
    if crate::connectors::queries::is_query_task(name) {
        return Err(ApiError::ConnectorNotFound(name.to_owned()));
    }
    Ok(())
}

fn object(config: &Value, what: &str) -> ApiResult<()> {
    if !config.is_object() {
        return Err(ApiError::InvalidConnectorConfig(format!(
            "{what} must be a JSON object"
        )));
    }
    Ok(())
}

impl Connectors {
    /// Where connector `name`'s task runs (or will), as its lookup answers.
    pub async fn locate(&self, name: &str) -> ApiResult<Option<crate::cluster::assign::Location>> {
        self.assignments.locate(self, name).await
    }

    /// The task of `name` on this node, started now if the placement puts it here;
    /// WrongServer naming its node when it runs elsewhere.
    async fn here(&self, name: &str) -> ApiResult<std::sync::Arc<super::Task>> {
        if let Some(task) = self.task(name) {
            return Ok(task);
        }
        if self.assignments.ensure_here(self, name).await?
            && let Some(task) = self.task(name)
        {
            return Ok(task);
        }
        Err(self
            .assignments
            .wrong_server(self, format!("connector {name:?}"), name)
            .await)
    }

    fn view(&self, c: &ConnectorMeta, detail: bool, node: Option<&String>) -> ConnectorView {
        let task = self.task(&c.name);
        let task_here = task.is_some();
        let status = task
            .as_ref()
            .map_or(c.status.clone(), |t| t.handle.status.borrow().state.as_str().to_owned());
        let config: Value = serde_json::from_str(&c.config).unwrap_or(Value::Null);
        let redacted = match self.connector_type(&c.kind, &c.target) {
            Some(t) => secret::redact(&t.config_schema(&config), &config),
            None => Value::Null,
        };
        let report = task.filter(|_| detail).map(|t| {
            let p = &t.handle.progress;
            let mut offset = p.offset.lock().expect("lock").clone().unwrap_or(Value::Null);
            // A connector's own config update kept in its offset (Airbyte CONTROL) is a config:
            // never shown.
            if let Some(c) = offset.get_mut("control_config") {
                *c = Value::from(secret::MASK);
            }
            serde_json::json!({
                "offset": offset,
                "deliveredRecords": p.records.load(std::sync::atomic::Ordering::Relaxed),
                "deliveredBytes": p.bytes.load(std::sync::atomic::Ordering::Relaxed),
                // Records that failed and were tolerated (errors.tolerance=all).
                "deadLetters": p.dead_letters.load(std::sync::atomic::Ordering::Relaxed),
                "restarts": t.handle.status.borrow().restarts,
                // Health by progress: when the task last moved a record (unix ms, 0 = never).
                "lastProgressMs": p.last_progress_ms.load(std::sync::atomic::Ordering::Relaxed),
                "lastError": t.handle.status.borrow().last_error.clone(),
                // What the task says it is doing (e.g. snapshot progress).
                "progress": p.status.lock().expect("lock").clone(),
                // How far behind its upstream a source is, in its own terms.
                "lag": match *p.lag.lock().expect("lock") {
                    Some(hstream_runtime::Lag::Bytes(n)) => serde_json::json!({ "bytes": n }),
                    Some(hstream_runtime::Lag::Seconds(s)) => serde_json::json!({ "seconds": s }),
                    Some(hstream_runtime::Lag::Messages(n)) => serde_json::json!({ "inflightMessages": n }),
                    Some(hstream_runtime::Lag::Records(n)) => serde_json::json!({ "uncheckpointedRecords": n }),
                    None => Value::Null,
                },
            })
        });
        ConnectorView {
            name: c.name.clone(),
            kind: c.kind.clone(),
            target: c.target.clone(),
            created_ms: c.created_ms,
            status,
            config: redacted,
            report,
            node: match node {
                Some(n) => n.clone(),
                None if task_here => self.hosting.node_address.clone(),
                None => String::new(),
            },
        }
    }

    /// Checks a new connector's name, kind and target, as `create` does before it reads the
    /// config; returns the connector type.
    pub fn check_identity(
        &self,
        name: &str,
        kind: &str,
        target: &str,
    ) -> ApiResult<(
        hstream_runtime::Kind,
        std::sync::Arc<dyn hstream_runtime::ConnectorType>,
    )> {
        validate_name("connector", ErrorCode::ConnectorInvalidObjectIdentifier, name)?;
        let kind = hstream_runtime::Kind::parse(kind).ok_or_else(|| ApiError::ConnectorInvalidType(kind.to_owned()))?;
        let connector = self
            .registry
            .get(kind, target)
            // Queries run as tasks of their own type, created through the query service only.
            .filter(|_| target != crate::connectors::queries::TARGET)
            .ok_or_else(|| ApiError::ConnectorUnknown {
                kind: kind.as_str(),
                target: target.to_owned(),
            })?;
        Ok((kind, connector))
    }

    /// Fails with ConnectorNotFound unless the connector is stored.
    pub async fn check_exists(&self, name: &str) -> ApiResult<()> {
        no_query(name)?;
        self.stored(name).await.map(drop)
    }

    /// Whether a task of this name is stored (a connector, or a query by its task name).
    pub(crate) async fn task_exists(&self, name: &str) -> ApiResult<bool> {
        Ok(self.meta.get_connector(name).await?.is_some())
    }

    pub async fn create(&self, spec: ConnectorSpec) -> ApiResult<ConnectorView> {
        let (kind, connector) = self.check_identity(&spec.name, &spec.kind, &spec.target)?;
        self.create_as(spec, kind, connector).await
    }

    /// Creates a task whose name and type were checked by the caller (a connector by
    /// [`check_identity`](Self::check_identity), a query by the query service).
    pub(crate) async fn create_as(
        &self,
        spec: ConnectorSpec,
        kind: hstream_runtime::Kind,
        connector: std::sync::Arc<dyn hstream_runtime::ConnectorType>,
    ) -> ApiResult<ConnectorView> {
        let mut config = spec.config;
        object(&config, "config")?;
        connector.normalize(&mut config);
        connector.validate(&config).map_err(|errors| {
            ApiError::InvalidConnectorConfig(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        })?;
        // The stream it reads or writes must be one a stream can be named, or the task would
        // only fail once started.
        if let Ok(stream) = connector.stream(&config)
            && !stream.is_empty()
        {
            validate_name("stream", ErrorCode::StreamInvalidObjectIdentifier, &stream)
                .map_err(|e| ApiError::InvalidConnectorConfig(format!("stream: {e}")))?;
        }
        let _ddl = self.ddl.lock().await;
        if self.meta.get_connector(&spec.name).await?.is_some() {
            return Err(ApiError::ConnectorExists(spec.name));
        }
        connector.check(&config).await.map_err(|e| {
            // The check's words may quote the config (a connector's own message): scrubbed.
            let secrets = secret::secret_values(&connector.config_schema(&config), &config);
            ApiError::ConnectorCheckFailed(secret::scrub(&e.to_string(), &secrets))
        })?;
        let meta = ConnectorMeta {
            name: spec.name.clone(),
            kind: kind.as_str().to_owned(),
            target: spec.target.clone(),
            config: config.to_string(),
            status: State::New.as_str().to_owned(),
            created_ms: now_ms(),
            node: self.hosting.node_id,
        };
        self.meta.create_connector(&meta).await.map_err(|e| match e {
            MetaError::AlreadyExists { .. } => ApiError::ConnectorExists(spec.name.clone()),
            e => e.into(),
        })?;
        tracing::info!(connector = %meta.name, kind = %meta.kind, target = %meta.target, "connector created");
        drop(_ddl);
        // Its task starts where the placement puts it: here at once, or on the node whose
        // placer runs next (which also retries if this pass fails).
        if let Err(e) = self.assignments.place_now().await {
            tracing::warn!(connector = %meta.name, error = %e, "placing the new connector failed; the placer retries");
        }
        let holders = self.assignments.holders(self).await?;
        Ok(self.view(&meta, true, holders.get(&meta.name)))
    }

    /// The type of a stored connector.
    fn type_of(&self, stored: &ConnectorMeta) -> ApiResult<std::sync::Arc<dyn hstream_runtime::ConnectorType>> {
        self.connector_type(&stored.kind, &stored.target)
            .ok_or_else(|| ApiError::ConnectorUnknown {
                kind: "",
                target: stored.target.clone(),
            })
    }

    async fn stored(&self, name: &str) -> ApiResult<ConnectorMeta> {
        self.meta
            .get_connector(name)
            .await?
            .ok_or_else(|| ApiError::ConnectorNotFound(name.to_owned()))
    }

    pub async fn get(&self, name: &str) -> ApiResult<ConnectorView> {
        no_query(name)?;
        self.get_task(name).await
    }

    /// [`get`](Self::get) of any task, a query's included.
    pub(crate) async fn get_task(&self, name: &str) -> ApiResult<ConnectorView> {
        let c = self.stored(name).await?;
        let holders = self.assignments.holders(self).await?;
        Ok(self.view(&c, true, holders.get(name)))
    }

    /// Every connector not deleted, without the task reports (queries are not connectors).
    pub async fn list(&self) -> ApiResult<Vec<ConnectorView>> {
        let mut all = self.list_all().await?;
        all.retain(|c| !crate::connectors::queries::is_query_task(&c.name));
        Ok(all)
    }

    /// Every task not deleted, queries included, with the reports of those running here.
    pub(crate) async fn list_all(&self) -> ApiResult<Vec<ConnectorView>> {
        let all = self.meta.list_connectors().await?;
        let holders = self.assignments.holders(self).await?;
        Ok(all
            .iter()
            .map(|c| {
                self.view(
                    c,
                    crate::connectors::queries::is_query_task(&c.name),
                    holders.get(&c.name),
                )
            })
            .filter(|c| c.status != State::Deleted.as_str())
            .collect())
    }

    /// Sets one key of a stored config without restarting the task (a flag of the task's
    /// owner, such as a query's `terminated`).
    pub(crate) async fn set_config_key(&self, name: &str, key: &str, value: Value) -> ApiResult<()> {
        let _ddl = self.ddl.lock().await;
        let stored = self.stored(name).await?;
        let mut config: Value = serde_json::from_str(&stored.config).unwrap_or_else(|_| serde_json::json!({}));
        config[key] = value;
        Ok(self.meta.set_connector_config(name, &config.to_string()).await?)
    }

    /// A connector type's config schema (the spec's `connectionSpecification`).
    pub fn config_spec(&self, kind: &str, target: &str) -> ApiResult<Value> {
        let t = self
            .connector_type(kind, target)
            .filter(|_| target != crate::connectors::queries::TARGET)
            .ok_or_else(|| ApiError::ConnectorUnknown {
                kind: "",
                target: format!("{kind} {target}"),
            })?;
        Ok(t.spec()["connectionSpecification"].clone())
    }

    /// Up to `count` of a connector's recent log lines from the `begin`th, oldest first.
    pub async fn logs(&self, name: &str, begin: usize, count: usize) -> ApiResult<Vec<String>> {
        no_query(name)?;
        self.stored(name).await?;
        // The log lives with the task: on the node running it (none when it could not start).
        let task = match self.here(name).await {
            Ok(task) => task,
            Err(ApiError::NotRunning(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let log = task.log.lock().expect("lock");
        Ok(log.iter().skip(begin).take(count).cloned().collect())
    }

    /// Sends a command and waits until the task reports, after the send, a state `done` accepts
    /// (or its supervisor ends).
    async fn command(&self, name: &str, c: Control, done: impl Fn(State) -> bool) -> ApiResult<()> {
        self.here(name).await?;
        self.command_here(name, c, done).await
    }

    /// [`command`](Self::command) to a task known to run here (no placement pass: callers may
    /// hold off passes).
    async fn command_here(&self, name: &str, c: Control, done: impl Fn(State) -> bool) -> ApiResult<()> {
        let task = self
            .task(name)
            .ok_or_else(|| ApiError::ConnectorNotFound(name.to_owned()))?;
        let mut rx = task.handle.status.clone();
        rx.borrow_and_update();
        if task.handle.control.send(c).await.is_err() {
            return Ok(()); // the supervisor is gone: nothing left to change
        }
        let wait = async {
            loop {
                if rx.changed().await.is_err() {
                    return;
                }
                if done(rx.borrow_and_update().state) {
                    return;
                }
            }
        };
        tokio::time::timeout(STATE_WAIT, wait)
            .await
            .map_err(|_| ApiError::ConnectorInvalidStatus(format!("connector {name:?} did not change state in time")))
    }

    fn current_state(&self, name: &str) -> Option<State> {
        self.task(name).map(|t| t.handle.status.borrow().state)
    }

    pub async fn pause(&self, name: &str) -> ApiResult<()> {
        no_query(name)?;
        self.pause_task(name).await
    }

    /// [`pause`](Self::pause) of any task, a query's included.
    pub(crate) async fn pause_task(&self, name: &str) -> ApiResult<()> {
        self.stored(name).await?;
        self.here(name).await?;
        match self.current_state(name) {
            Some(State::Stopped | State::Failed | State::Completed) => Ok(()),
            _ => self.command(name, Control::Pause, |s| s == State::Stopped).await,
        }
    }

    /// Resumes a STOPPED, FAILED or COMPLETED task; returns once its next attempt started (which
    /// may fail again: the status says). A running task is left alone.
    pub async fn resume(&self, name: &str) -> ApiResult<()> {
        no_query(name)?;
        self.resume_task(name).await
    }

    /// [`resume`](Self::resume) of any task, a query's included.
    pub(crate) async fn resume_task(&self, name: &str) -> ApiResult<()> {
        self.stored(name).await?;
        self.here(name).await?;
        match self.current_state(name) {
            Some(State::Running | State::New) => Ok(()),
            _ => self.command(name, Control::Resume, |s| s != State::Stopped).await,
        }
    }

    /// Restarts the task: a running one starts a new attempt (an empty alter), a stopped or
    /// failed one is resumed.
    pub async fn restart(&self, name: &str) -> ApiResult<()> {
        no_query(name)?;
        let c = self.get(name).await?;
        if c.status == State::Running.as_str() || c.status == State::New.as_str() {
            self.alter(name, serde_json::json!({})).await
        } else {
            self.resume(name).await
        }
    }

    pub async fn delete(&self, name: &str) -> ApiResult<()> {
        no_query(name)?;
        self.delete_task(name).await
    }

    /// [`delete`](Self::delete) of any task, a query's included.
    pub(crate) async fn delete_task(&self, name: &str) -> ApiResult<()> {
        let _ddl = self.ddl.lock().await;
        self.stored(name).await?;
        // No pass of this node's placer may start or release it meanwhile.
        let _no_pass = self.assignments.exclusive().await;
        let here = self.task(name).is_some();
        if here {
            // Even a task that is slow to stop is deleted: the supervisor acts on the command
            // when it gets to it, and nothing brings the task back once its row is gone.
            if let Err(e) = self.command_here(name, Control::Delete, |s| s == State::Deleted).await {
                tracing::warn!(connector = %name, error = %e, "deleting a task that has not stopped yet");
                if let Some(task) = self.task(name) {
                    // Whatever it still does, it writes nothing more.
                    task.revoked.store(true, std::sync::atomic::Ordering::SeqCst);
                    task.stop.cancel();
                }
            }
            self.remove(name);
        }
        self.meta.delete_connector(name).await?;
        self.assignments.forget_reads(self);
        if !here {
            // Running on another node (or nowhere): its node's placer stops it as deleted
            // (letting go of what it holds upstream); taking the ownership makes sure no
            // checkpoint it commits meanwhile lands.
            let held = self.assignments.fence(self, name).await?;
            self.assignments.unfence(&held).await;
        }
        tracing::info!(connector = %name, "connector deleted");
        Ok(())
    }

    /// Merges the given top-level keys over the config, validates, stores, and restarts the task;
    /// returns once the new attempt started (a paused task keeps the config for its resume).
    pub async fn alter(&self, name: &str, mut patch: Value) -> ApiResult<()> {
        no_query(name)?;
        let _ddl = self.ddl.lock().await;
        let stored = self.stored(name).await?;
        object(&patch, "config")?;
        // Only where the task runs: it must restart with the new config.
        self.here(name).await?;
        let mut config: Value = serde_json::from_str(&stored.config).unwrap_or_else(|_| serde_json::json!({}));
        let t = self.type_of(&stored)?;
        t.normalize(&mut patch);
        // Clients send back what they were shown: a masked secret means "unchanged".
        secret::unmask(&t.config_schema(&config), &config, &mut patch);
        for (k, v) in patch.as_object().expect("checked object") {
            config[k] = v.clone();
        }
        t.validate(&config).map_err(|errors| {
            ApiError::InvalidConnectorConfig(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        })?;
        // Only the config: the status belongs to the task, which may have moved meanwhile.
        self.meta
            .set_connector_config(&stored.name, &config.to_string())
            .await?;
        match self.current_state(name) {
            // A paused task takes the new config when resumed.
            Some(State::Stopped) => {
                if !self.control(name, Control::Alter(config)).await {
                    return Err(ApiError::ConnectorNotFound(name.to_owned()));
                }
                Ok(())
            }
            // Otherwise wait until the task restarted with it (or failed with it).
            _ => {
                self.command(name, Control::Alter(config), |s| s != State::Stopped)
                    .await
            }
        }
    }

    /// Sends a source a signal through its upstream (a CDC source's signal table), from this
    /// node, whichever runs the task; returns the signal's id.
    pub async fn signal(&self, name: &str, kind: &str, data: &Value) -> ApiResult<String> {
        no_query(name)?;
        let stored = self.stored(name).await?;
        let t = self.type_of(&stored)?;
        let config: Value = serde_json::from_str(&stored.config).unwrap_or_else(|_| serde_json::json!({}));
        t.signal(&config, kind, data).await.map_err(|e| {
            let secrets = secret::secret_values(&t.config_schema(&config), &config);
            let text = secret::scrub(&e.to_string(), &secrets);
            // A database that cannot be reached is no fault of the request.
            match e.kind {
                hstream_runtime::ErrorKind::External => ApiError::UpstreamUnavailable(text),
                _ => ApiError::InvalidRequest(text),
            }
        })
    }

    /// Forgets a paused connector's checkpoint: on resume it starts from its configured
    /// beginning. Returns whether there was one.
    pub async fn reset_offsets(&self, name: &str) -> ApiResult<bool> {
        let c = self.get(name).await?;
        if c.status != State::Stopped.as_str() {
            return Err(ApiError::ConnectorInvalidStatus(format!(
                "connector {name:?} must be paused to reset its offsets"
            )));
        }
        Ok(self.meta.delete_checkpoint(&connector_checkpoint(name)).await?)
    }
}

#[async_trait::async_trait]
impl crate::cluster::assign::Hosted for Connectors {
    fn prefix(&self) -> &'static str {
        "connector/"
    }

    async fn stored(&self) -> ApiResult<std::collections::BTreeSet<String>> {
        Ok(self.meta.list_connectors().await?.into_iter().map(|c| c.name).collect())
    }

    fn running(&self) -> std::collections::BTreeMap<String, crate::meta::Ownership> {
        let tasks = self.tasks.lock().expect("lock");
        tasks.iter().map(|(n, t)| (n.clone(), t.held.clone())).collect()
    }

    async fn start(&self, name: &str, held: crate::meta::Ownership) -> ApiResult<()> {
        let c = self.stored(name).await?;
        if self.connector_type(&c.kind, &c.target).is_none() {
            return Err(ApiError::ConnectorUnknown {
                kind: "",
                target: c.target,
            });
        }
        let config: Value = serde_json::from_str(&c.config)
            .map_err(|e| ApiError::InvalidConnectorConfig(format!("stored config is unreadable: {e}")))?;
        self.start(&c, config, held);
        tracing::info!(connector = %name, status = %c.status, "connector runs here");
        Ok(())
    }

    async fn stop(&self, name: &str, how: crate::cluster::assign::Stop) {
        use crate::cluster::assign::Stop;
        let Some(task) = self.task(name) else {
            return;
        };
        if how == Stop::Lost {
            // Another node may run it already: nothing more from this copy, at once; its
            // attempt ends in the background (its last checkpoint is fenced out).
            task.revoked.store(true, std::sync::atomic::Ordering::SeqCst);
            task.stop.cancel();
        } else if how == Stop::Deleted {
            // Deleted through another node: the task lets go of what it holds upstream.
            if let Err(e) = self.command_here(name, Control::Delete, |s| s == State::Deleted).await {
                tracing::warn!(connector = %name, error = %e, "deleting a task that has not stopped yet");
            }
        } else {
            // Moving: the attempt stops as at shutdown (its checkpoint written), the stored
            // status stays for the next node.
            task.stop.cancel();
            let mut status = task.handle.status.clone();
            let ended = async { while status.changed().await.is_ok() {} };
            if tokio::time::timeout(STATE_WAIT, ended).await.is_err() {
                // Whatever it still does, it writes nothing more.
                task.revoked.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::warn!(connector = %name, "task did not stop in time; moving it anyway");
            }
            // Its last status reaches the metastore before the next node reads it.
            let writer = task.status_writer.lock().expect("lock").take();
            if let Some(writer) = writer {
                let _ = tokio::time::timeout(STATE_WAIT, writer).await;
            }
        }
        self.remove(name);
    }
}
