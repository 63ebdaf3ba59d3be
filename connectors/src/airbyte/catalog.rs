//! What the `airbyte` source reads and where it goes: its configuration, the configured catalog
//! built from the connector's discovered one (streams chosen, sync modes, cursors, primary keys),
//! and the stream of ours each catalog stream feeds.

use std::collections::HashMap;
use std::sync::Arc;

use hstream_runtime::{ConnectorConfig, ConnectorError, Record};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ContainerRun;
use super::host::Launcher;
use super::{ConnectorJson, NameList};

/// Which sync mode to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    FullRefresh,
    Incremental,
}

/// Configuration of the `airbyte` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "airbyte",
    description = "Runs an Airbyte source (a PyPI package, an executable or a container image) and appends each catalog stream to a stream."
)]
pub struct AirbyteSourceConfig {
    /// A PyPI requirement of an Airbyte source package, e.g. `airbyte-source-faker==7.2.1`,
    /// installed into a managed venv on first use (with uv where installed).
    #[serde(default)]
    pub package: Option<String>,
    /// An executable speaking the Airbyte protocol: a name on PATH or a path.
    #[serde(default)]
    pub command: Option<String>,
    /// A container image following Airbyte's image conventions, run with docker or podman.
    #[serde(default)]
    pub image: Option<String>,
    /// With image: `docker` or `podman` (default: podman where installed, else docker).
    #[serde(default)]
    pub engine: Option<String>,
    /// With image: the container's memory limit, as docker and podman take it (`512m`, `2g`). A
    /// connector going over it is killed (exit 137) and the task says so.
    #[serde(default)]
    pub memory_limit: Option<String>,
    /// With image: how many CPUs the container may use (`0.5`, `2`).
    #[serde(default)]
    pub cpu_limit: Option<f64>,
    /// With image: the container's network: `host` (the default: the connector reaches what
    /// this server reaches), `bridge`, `none`, or a network's name.
    #[serde(default)]
    pub network: Option<String>,
    /// With image: a directory of this machine mounted read-write at `/local` in the container,
    /// as Airbyte mounts its `LOCAL_ROOT`, for connectors that read or write local files (it
    /// must be writable by the image's user: `airbyte`, uid 1000, in Airbyte's images).
    #[serde(default)]
    pub local_root: Option<String>,
    /// The connector's own config (its spec's connectionSpecification), as an object or JSON text.
    /// Shown with only the fields its spec marks `airbyte_secret` masked once that spec is known
    /// to the server; masked whole until then.
    #[serde(default)]
    #[schemars(extend("airbyte_secret" = true))]
    pub config: ConnectorJson,
    /// Catalog streams to read, as a list or comma-separated text (default: every stream).
    #[serde(default)]
    pub streams: Option<NameList>,
    /// Prefix of our stream names: a catalog stream `users` goes to `<prefix>users` (with a
    /// namespace, `<prefix><namespace>_users`); characters a stream name cannot hold become `_`.
    #[serde(default)]
    pub stream_prefix: String,
    /// `incremental` or `full_refresh` (default: incremental where the stream supports it).
    #[serde(default)]
    pub sync_mode: Option<SyncMode>,
    /// Absent: one sync, then the task completes. 0: sync continuously. N: a sync every N seconds.
    #[serde(default)]
    pub sync_interval_secs: Option<u64>,
    /// A connector that writes nothing for this long is taken as hung and stopped.
    #[serde(default = "default_idle_timeout")]
    #[schemars(range(min = 1))]
    pub idle_timeout_secs: u64,
}

fn default_idle_timeout() -> u64 {
    600
}

impl ConnectorConfig for AirbyteSourceConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        self.launcher()?;
        self.config.object()?;
        if !self.stream_prefix.is_empty() && !self.stream_prefix.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(ConnectorError::config("stream_prefix: must start with a letter"));
        }
        if let Some(s) = &self.streams
            && s.names().is_empty()
        {
            return Err(ConnectorError::config("streams: names no stream"));
        }
        Ok(())
    }
}

impl AirbyteSourceConfig {
    pub fn launcher(&self) -> Result<Launcher, ConnectorError> {
        super::launcher(
            &self.package,
            &self.command,
            &self.image,
            &self.engine,
            ContainerRun {
                memory: self.memory_limit.clone(),
                cpus: self.cpu_limit,
                network: self.network.clone(),
                local_root: self.local_root.clone(),
            },
        )
    }
}

/// Our stream for a catalog stream.
pub fn stream_name(prefix: &str, namespace: Option<&str>, name: &str) -> String {
    let raw = match namespace {
        Some(ns) if !ns.is_empty() => format!("{prefix}{ns}_{name}"),
        _ => format!("{prefix}{name}"),
    };
    let mut s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        s.insert_str(0, "s_");
    }
    s.truncate(255);
    s
}

/// One configured stream: where its records go and what keys them.
pub(super) struct Target {
    pub(super) stream: Arc<str>,
    pub(super) primary_key: Vec<String>,
    pub(super) batch: Vec<Record>,
    /// Records this sync, and the connector's estimate.
    pub(super) count: u64,
    pub(super) estimate: Option<u64>,
}

/// The configured catalog for the selected streams, and each one's target.
pub(super) fn configure(
    config: &AirbyteSourceConfig,
    catalog: &Value,
) -> Result<(Value, HashMap<String, Target>), ConnectorError> {
    let streams = catalog["streams"].as_array().cloned().unwrap_or_default();
    let wanted = config.streams.as_ref().map(NameList::names);
    if let Some(w) = &wanted {
        let have: Vec<&str> = streams.iter().filter_map(|s| s["name"].as_str()).collect();
        if let Some(missing) = w.iter().find(|n| !have.contains(&n.as_str())) {
            return Err(ConnectorError::config(format!(
                "streams: the connector has no stream {missing:?} (it has: {})",
                have.join(", ")
            )));
        }
    }
    let mut configured = Vec::new();
    let mut targets = HashMap::new();
    for s in streams {
        let Some(name) = s["name"].as_str().map(str::to_owned) else {
            continue;
        };
        if wanted.as_ref().is_some_and(|w| !w.contains(&name)) {
            continue;
        }
        let namespace = s["namespace"].as_str().map(str::to_owned);
        let modes: Vec<&str> = s["supported_sync_modes"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mode = match config.sync_mode {
            Some(SyncMode::Incremental) if !modes.contains(&"incremental") => {
                return Err(ConnectorError::config(format!(
                    "sync_mode: stream {name:?} does not support incremental syncs"
                )));
            }
            Some(SyncMode::Incremental) => "incremental",
            Some(SyncMode::FullRefresh) => "full_refresh",
            None if modes.contains(&"incremental") => "incremental",
            None => "full_refresh",
        };
        let primary_key: Vec<Vec<String>> =
            serde_json::from_value(s["source_defined_primary_key"].clone()).unwrap_or_default();
        let mut c = json!({
            "stream": s,
            "sync_mode": mode,
            "destination_sync_mode": "append",
            "primary_key": primary_key,
        });
        if mode == "incremental" && s["source_defined_cursor"] != Value::Bool(true) {
            match s["default_cursor_field"].as_array() {
                Some(f) if !f.is_empty() => c["cursor_field"] = Value::Array(f.clone()),
                // Chosen by default: the stream is read in full instead.
                _ if config.sync_mode.is_none() => c["sync_mode"] = Value::from("full_refresh"),
                _ => {
                    return Err(ConnectorError::config(format!(
                        "sync_mode: stream {name:?} has no cursor for incremental syncs; use full_refresh"
                    )));
                }
            }
        }
        configured.push(c);
        // Records are matched by stream name (connectors often omit the namespace on them).
        targets.insert(
            name.clone(),
            Target {
                stream: stream_name(&config.stream_prefix, namespace.as_deref(), &name).into(),
                // Top-level key fields (a nested path is keyed by its first field).
                primary_key: primary_key.iter().filter_map(|p| p.first().cloned()).collect(),
                batch: Vec::new(),
                count: 0,
                estimate: None,
            },
        );
    }
    if configured.is_empty() {
        return Err(ConnectorError::config("streams: the connector's catalog has no stream"));
    }
    Ok((json!({ "streams": configured }), targets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_valid() {
        assert_eq!(stream_name("faker_", None, "users"), "faker_users");
        assert_eq!(stream_name("", Some("public"), "my.table"), "public_my_table");
        assert_eq!(stream_name("", None, "1st"), "s_1st");
    }

    #[test]
    fn catalogs_are_configured_for_the_chosen_streams() {
        let catalog = json!({"streams": [
            {"name": "users", "json_schema": {}, "supported_sync_modes": ["full_refresh", "incremental"], "source_defined_cursor": true, "source_defined_primary_key": [["id"]]},
            {"name": "items", "json_schema": {}, "supported_sync_modes": ["full_refresh"]},
        ]});
        let mut config: AirbyteSourceConfig =
            serde_json::from_value(json!({"command": "x", "streams": "users", "stream_prefix": "f_"})).unwrap();
        let (c, t) = configure(&config, &catalog).unwrap();
        assert_eq!(c["streams"].as_array().unwrap().len(), 1);
        assert_eq!(c["streams"][0]["sync_mode"], "incremental");
        assert_eq!(c["streams"][0]["primary_key"], json!([["id"]]));
        assert_eq!(&*t["users"].stream, "f_users");
        config.streams = Some(NameList::Text("users, nope".into()));
        let e = configure(&config, &catalog).err().unwrap();
        assert!(e.message.starts_with("streams:") && e.message.contains("nope"), "{e}");
        config.streams = Some(NameList::List(vec!["items".into()]));
        config.sync_mode = Some(SyncMode::Incremental);
        assert!(
            configure(&config, &catalog)
                .err()
                .unwrap()
                .message
                .starts_with("sync_mode:")
        );
        config.sync_mode = None;
        let (c, _) = configure(&config, &catalog).unwrap();
        assert_eq!(c["streams"][0]["sync_mode"], "full_refresh");
    }
}
