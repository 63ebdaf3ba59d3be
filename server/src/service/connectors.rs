//! HStream IO's connector RPCs over the in-process runtime: create (validate, check, persist,
//! start), list, get, spec, logs, delete, pause, resume, alter.
//!
//! Secrets: every config leaving the server (responses, errors, logs) is redacted by the
//! connector's spec (`airbyte_secret` fields).

use hstream_proto as pb;
use hstream_proto::ErrorCode;
use hstream_runtime::secret;
use hstream_runtime::supervisor::{Control, State};
use serde_json::Value;

use super::ServerCtx;
use super::read::now_ms;
use crate::catalog::validate_name;
use crate::error::{ApiError, ApiResult};
use crate::meta::{ConnectorMeta, MetaError};

/// How long a pause, resume or delete waits for the task to reach its new state.
const STATE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn parse_config(text: &str) -> ApiResult<Value> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| ApiError::InvalidConnectorConfig(format!("config is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::InvalidConnectorConfig("config must be a JSON object".into()));
    }
    Ok(v)
}

impl ServerCtx {
    /// Resumes every stored connector in the state it had (at node start).
    pub fn start_connectors<'a>(&'a self, stored: &'a [ConnectorMeta]) {
        for c in stored {
            if self.connectors.connector_type(&c.kind, &c.target).is_none() {
                tracing::error!(connector = %c.name, target = %c.target, "connector type is not in this build");
                continue;
            }
            match serde_json::from_str(&c.config) {
                Ok(config) => {
                    self.connectors.start(c, config, &self.tasks, &self.shutdown);
                }
                Err(e) => tracing::error!(connector = %c.name, error = %e, "stored config is unreadable"),
            }
        }
    }

    fn connector_pb(&self, c: &ConnectorMeta, detail: bool) -> pb::Connector {
        let task = self.connectors.task(&c.name);
        let status = task
            .as_ref()
            .map_or(c.status.clone(), |t| t.handle.status.borrow().state.as_str().to_owned());
        let config: Value = serde_json::from_str(&c.config).unwrap_or(Value::Null);
        let redacted = match self.connectors.connector_type(&c.kind, &c.target) {
            Some(t) => secret::redact(&t.config_schema(&config), &config),
            None => Value::Null,
        };
        let mut offsets = Vec::new();
        if detail && let Some(t) = &task {
            let p = &t.handle.progress;
            let mut offset = p.offset.lock().expect("lock").clone().unwrap_or(Value::Null);
            // A connector's own config update kept in its offset (Airbyte CONTROL) is a config:
            // never shown.
            if let Some(c) = offset.get_mut("control_config") {
                *c = Value::from(secret::MASK);
            }
            let report = serde_json::json!({
                "offset": offset,
                "deliveredRecords": p.records.load(std::sync::atomic::Ordering::Relaxed),
                "deliveredBytes": p.bytes.load(std::sync::atomic::Ordering::Relaxed),
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
            });
            offsets.push(json_to_struct(&report));
        }
        pb::Connector {
            name: c.name.clone(),
            r#type: c.kind.clone(),
            target: c.target.clone(),
            creation_time: Some(super::read::timestamp(c.created_ms)),
            status,
            config: redacted.to_string(),
            offsets,
            task_id: c.name.clone(),
            node: format!("{}:{}", self.node.host, self.node.port),
            docker_status: String::new(),
            image: String::new(),
        }
    }

    pub async fn create_connector(&self, req: pb::CreateConnectorRequest) -> ApiResult<pb::Connector> {
        validate_name("connector", ErrorCode::ConnectorInvalidObjectIdentifier, &req.name)?;
        let kind = hstream_runtime::Kind::parse(&req.r#type)
            .ok_or_else(|| ApiError::ConnectorInvalidType(req.r#type.clone()))?;
        let connector = self
            .connectors
            .registry
            .get(kind, &req.target)
            .ok_or_else(|| ApiError::ConnectorUnknown {
                kind: kind.as_str(),
                target: req.target.clone(),
            })?;
        let mut config = parse_config(&req.config)?;
        connector.normalize(&mut config);
        connector.validate(&config).map_err(|errors| {
            ApiError::InvalidConnectorConfig(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        })?;
        let _ddl = self.ddl.lock().await;
        if self.meta.get_connector(&req.name).await?.is_some() {
            return Err(ApiError::ConnectorExists(req.name));
        }
        connector.check(&config).await.map_err(|e| {
            // The check's words may quote the config (a connector's own message): scrubbed.
            let secrets = secret::secret_values(&connector.config_schema(&config), &config);
            ApiError::ConnectorCheckFailed(secret::scrub(&e.to_string(), &secrets))
        })?;
        let meta = ConnectorMeta {
            name: req.name.clone(),
            kind: kind.as_str().to_owned(),
            target: req.target.clone(),
            config: config.to_string(),
            status: State::New.as_str().to_owned(),
            created_ms: now_ms(),
            node: self.node.id,
        };
        self.meta.create_connector(&meta).await.map_err(|e| match e {
            MetaError::AlreadyExists { .. } => ApiError::ConnectorExists(req.name.clone()),
            e => e.into(),
        })?;
        self.connectors.start(&meta, config, &self.tasks, &self.shutdown);
        tracing::info!(connector = %meta.name, kind = %meta.kind, target = %meta.target, "connector created");
        Ok(self.connector_pb(&meta, true))
    }

    async fn stored_connector(&self, name: &str) -> ApiResult<ConnectorMeta> {
        self.meta
            .get_connector(name)
            .await?
            .ok_or_else(|| ApiError::ConnectorNotFound(name.to_owned()))
    }

    pub async fn get_connector(&self, name: &str) -> ApiResult<pb::Connector> {
        Ok(self.connector_pb(&self.stored_connector(name).await?, true))
    }

    pub async fn list_connectors(&self) -> ApiResult<pb::ListConnectorsResponse> {
        let all = self.meta.list_connectors().await?;
        let connectors = all
            .iter()
            .map(|c| self.connector_pb(c, false))
            .filter(|c| c.status != State::Deleted.as_str())
            .collect();
        Ok(pb::ListConnectorsResponse { connectors })
    }

    pub fn connector_spec(&self, kind: &str, target: &str) -> ApiResult<pb::GetConnectorSpecResponse> {
        let t = self
            .connectors
            .connector_type(kind, target)
            .ok_or_else(|| ApiError::ConnectorUnknown {
                kind: "connector",
                target: format!("{kind} {target}"),
            })?;
        Ok(pb::GetConnectorSpecResponse {
            spec: t.spec()["connectionSpecification"].to_string(),
        })
    }

    pub async fn connector_logs(&self, req: pb::GetConnectorLogsRequest) -> ApiResult<pb::GetConnectorLogsResponse> {
        self.stored_connector(&req.name).await?;
        let Some(task) = self.connectors.task(&req.name) else {
            return Ok(pb::GetConnectorLogsResponse::default());
        };
        let log = task.log.lock().expect("lock");
        let begin = req.begin.max(0) as usize;
        let count = if req.count <= 0 { usize::MAX } else { req.count as usize };
        let logs = log
            .iter()
            .skip(begin)
            .take(count)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        Ok(pb::GetConnectorLogsResponse { logs })
    }

    /// Sends a command and waits until the task reports, after the send, a state `done` accepts
    /// (or its supervisor ends).
    async fn command(&self, name: &str, c: Control, done: impl Fn(State) -> bool) -> ApiResult<()> {
        let task = self
            .connectors
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
        self.connectors.task(name).map(|t| t.handle.status.borrow().state)
    }

    pub async fn pause_connector(&self, name: &str) -> ApiResult<()> {
        self.stored_connector(name).await?;
        match self.current_state(name) {
            Some(State::Stopped | State::Failed | State::Completed) => Ok(()),
            _ => self.command(name, Control::Pause, |s| s == State::Stopped).await,
        }
    }

    /// Resumes a STOPPED, FAILED or COMPLETED task; returns once its next attempt started (which
    /// may fail again: the status says). A running task is left alone.
    pub async fn resume_connector(&self, name: &str) -> ApiResult<()> {
        self.stored_connector(name).await?;
        match self.current_state(name) {
            Some(State::Running | State::New) => Ok(()),
            _ => self.command(name, Control::Resume, |s| s != State::Stopped).await,
        }
    }

    pub async fn delete_connector(&self, name: &str) -> ApiResult<()> {
        let _ddl = self.ddl.lock().await;
        self.stored_connector(name).await?;
        if self.connectors.task(name).is_some() {
            // Even a task that is slow to stop is deleted: the supervisor acts on the command
            // when it gets to it, and nothing brings the task back once its row is gone.
            if let Err(e) = self.command(name, Control::Delete, |s| s == State::Deleted).await {
                tracing::warn!(connector = %name, error = %e, "deleting a task that has not stopped yet");
            }
            self.connectors.remove(name);
        }
        self.meta.delete_connector(name).await?;
        tracing::info!(connector = %name, "connector deleted");
        Ok(())
    }

    /// Merges the given top-level keys over the config, validates, stores, and restarts the task;
    /// returns once the new attempt started (a paused task keeps the config for its resume).
    pub async fn alter_connector(&self, req: pb::AlterConnectorConfigRequest) -> ApiResult<()> {
        let _ddl = self.ddl.lock().await;
        let stored = self.stored_connector(&req.name).await?;
        let mut patch = parse_config(&req.config)?;
        let mut config: Value = serde_json::from_str(&stored.config).unwrap_or_else(|_| serde_json::json!({}));
        let t = self
            .connectors
            .connector_type(&stored.kind, &stored.target)
            .ok_or_else(|| ApiError::ConnectorUnknown {
                kind: "connector",
                target: stored.target.clone(),
            })?;
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
        match self.current_state(&req.name) {
            // A paused task takes the new config when resumed.
            Some(State::Stopped) => {
                if !self.connectors.control(&req.name, Control::Alter(config)).await {
                    return Err(ApiError::ConnectorNotFound(req.name));
                }
                Ok(())
            }
            // Otherwise wait until the task restarted with it (or failed with it).
            _ => {
                self.command(&req.name, Control::Alter(config), |s| s != State::Stopped)
                    .await
            }
        }
    }
}

fn json_to_struct(v: &Value) -> prost_types::Struct {
    let bytes = hstream_runtime::structs::encode_json(v);
    <prost_types::Struct as prost::Message>::decode(bytes).unwrap_or_default()
}
