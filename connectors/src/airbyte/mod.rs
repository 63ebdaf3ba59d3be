//! Airbyte connectors (decision 012): any Airbyte source or destination, run as an executable, a
//! venv-installed PyPI package or a container image (`host`), speaking the protocol's messages
//! (`protocol`). The `airbyte` source (`source`) maps each catalog stream to a stream of ours and
//! stores the connector's STATE as its checkpoint; the `airbyte` sink (`sink`) feeds a stream to a
//! destination's `write`.
//!
//! What both share lives here: how the user names the connector (package, command or image),
//! the connector's own config (a JSON object, or JSON text from SQL), and the connector's SPEC,
//! cached in memory and on disk so that validating a config and redacting its secrets need no
//! Python start-up after the first time.

pub mod catalog;
pub mod container;
pub mod host;
pub mod package;
pub mod protocol;
pub mod sink;
pub mod source;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use hstream_runtime::ConnectorError;
use serde_json::Value;

pub use container::ContainerRun;
pub use host::Launcher;

/// Time limit of `spec`, `check` and `discover` (Python connectors take ~3 s to start).
pub const COMMAND_LIMIT: Duration = Duration::from_secs(180);

/// Where packages are installed and specs cached: `$HSTREAM_AIRBYTE_DIR`, else
/// `$XDG_CACHE_HOME/hstream/airbyte`, else `~/.cache/hstream/airbyte`.
pub fn install_root() -> PathBuf {
    if let Some(d) = std::env::var_os("HSTREAM_AIRBYTE_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("hstream").join("airbyte")
}

pub use hstream_runtime::options::{ConnectorJson, NameList};

/// The launcher named by a config's `package` / `command` / `image` (exactly one), and for an
/// image its `engine` and container options.
pub fn launcher(
    package: &Option<String>,
    command: &Option<String>,
    image: &Option<String>,
    engine: &Option<String>,
    run: ContainerRun,
) -> Result<Launcher, ConnectorError> {
    let given = [package.is_some(), command.is_some(), image.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if given != 1 {
        return Err(ConnectorError::config(
            "package: give exactly one of package, command or image",
        ));
    }
    if image.is_none() {
        let only_with_image = [
            ("engine", engine.is_some()),
            ("memory_limit", run.memory.is_some()),
            ("cpu_limit", run.cpus.is_some()),
            ("network", run.network.is_some()),
            ("local_root", run.local_root.is_some()),
        ];
        if let Some((field, _)) = only_with_image.iter().find(|(_, set)| *set) {
            return Err(ConnectorError::config(format!("{field}: only with image")));
        }
    }
    run.validate()?;
    if let Some(p) = package {
        package::package_executable(p)?;
        return Ok(Launcher::Package {
            requirement: p.trim().to_owned(),
            root: install_root(),
        });
    }
    if let Some(c) = command {
        if c.trim().is_empty() {
            return Err(ConnectorError::config("command: must not be empty"));
        }
        return Ok(Launcher::Command(c.clone()));
    }
    let image = image.clone().unwrap_or_default();
    if image.trim().is_empty() {
        return Err(ConnectorError::config("image: must not be empty"));
    }
    if image.starts_with('-') || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConnectorError::config(format!(
            "image: {image:?} is not an image name (no spaces, not starting with '-')"
        )));
    }
    let engine = match engine.as_deref() {
        Some(e @ ("docker" | "podman")) => e.to_owned(),
        Some(other) => {
            return Err(ConnectorError::config(format!(
                "engine: {other:?} is not docker or podman"
            )));
        }
        None if host::which("podman").is_some() => "podman".to_owned(),
        None => "docker".to_owned(),
    };
    Ok(Launcher::Image { image, engine, run })
}

/// What identifies one connector build, for its cached SPEC.
fn spec_key(l: &Launcher) -> String {
    match l {
        Launcher::Package { requirement, .. } => format!("package {requirement}"),
        // The spec last seen of an image of this name; `connector_spec` keys by the image's ID.
        Launcher::Image { image, engine, .. } => format!("image {engine} {image}"),
        Launcher::Command(c) => {
            let path = if c.contains('/') {
                Some(PathBuf::from(c))
            } else {
                host::which(c)
            };
            // A command is re-asked when its file changes.
            let stamp = path
                .as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .map(|m| format!("{:?} {}", m.modified().ok(), m.len()))
                .unwrap_or_default();
            format!("command {c} {stamp}")
        }
    }
}

static SPECS: Mutex<Option<HashMap<String, Value>>> = Mutex::new(None);

fn spec_file(key: &str) -> PathBuf {
    use md5::Digest;
    let h = md5::Md5::digest(key.as_bytes());
    let name: String = h.iter().map(|b| format!("{b:02x}")).collect();
    install_root().join("specs").join(format!("{name}.json"))
}

/// The connector's SPEC if it was asked for before (in this process, or on this machine).
pub fn cached_spec(l: &Launcher) -> Option<Value> {
    cached_spec_of(&spec_key(l))
}

/// The connector's SPEC: cached, or asked for (and then cached). An image's is kept under its
/// ID, so a tag moved to another build asks again.
pub async fn connector_spec(l: &Launcher, inv: &host::Invocation) -> Result<Value, ConnectorError> {
    let by_id = inv.image_id().map(|id| format!("image-id {id}"));
    match &by_id {
        Some(key) => {
            if let Some(v) = cached_spec_of(key) {
                // The name's spec follows the ID's (written only when it changed).
                let name = spec_key(l);
                if cached_spec_of(&name).as_ref() != Some(&v) {
                    remember_spec(&name, &v);
                }
                return Ok(v);
            }
        }
        None => {
            if let Some(v) = cached_spec(l) {
                return Ok(v);
            }
        }
    }
    let v = host::spec(inv, COMMAND_LIMIT).await?;
    for key in by_id.iter().chain([&spec_key(l)]) {
        remember_spec(key, &v);
    }
    Ok(v)
}

/// A spec cached under `key`, in this process or on this machine.
fn cached_spec_of(key: &str) -> Option<Value> {
    if let Some(v) = SPECS.lock().expect("lock").as_ref().and_then(|m| m.get(key)) {
        return Some(v.clone());
    }
    let v: Value = serde_json::from_slice(&std::fs::read(spec_file(key)).ok()?).ok()?;
    SPECS
        .lock()
        .expect("lock")
        .get_or_insert_with(HashMap::new)
        .insert(key.to_owned(), v.clone());
    Some(v)
}

/// Keeps a spec under `key`, in memory and on disk.
fn remember_spec(key: &str, v: &Value) {
    let file = spec_file(key);
    if let Some(dir) = file.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        // Written beside and renamed, so a reader never sees half a file.
        let tmp = file.with_extension("tmp");
        if std::fs::write(&tmp, v.to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, &file);
        }
    }
    SPECS
        .lock()
        .expect("lock")
        .get_or_insert_with(HashMap::new)
        .insert(key.to_owned(), v.clone());
}

/// How long an image's successful `check` and its `discover` catalog are reused for the same
/// config (creating a connector runs check and discover, and its first start discover again:
/// each a container start).
const IMAGE_RESULTS_FOR: Duration = Duration::from_secs(600);

static IMAGE_RESULTS: Mutex<Option<HashMap<String, (std::time::Instant, Value)>>> = Mutex::new(None);

/// The key of an image's `verb` result for `config`: the image's ID, how it runs, and the
/// config itself (kept in memory only).
fn result_key(inv: &host::Invocation, verb: &str, config: &Value) -> Option<String> {
    let id = inv.image_run()?;
    Some(format!("{verb} {id} {config}"))
}

fn recent_result(key: &Option<String>, verb: &str) -> Option<Value> {
    let key = key.as_ref()?;
    let mut g = IMAGE_RESULTS.lock().expect("lock");
    let m = g.get_or_insert_with(HashMap::new);
    m.retain(|_, (at, _)| at.elapsed() < IMAGE_RESULTS_FOR);
    let (at, v) = m.get(key)?;
    tracing::info!(target: "airbyte", "the image's {verb} for this config, from {}s ago", at.elapsed().as_secs());
    Some(v.clone())
}

fn keep_result(key: Option<String>, v: &Value) {
    if let Some(key) = key {
        IMAGE_RESULTS
            .lock()
            .expect("lock")
            .get_or_insert_with(HashMap::new)
            .insert(key, (std::time::Instant::now(), v.clone()));
    }
}

/// Forgets an image's check and discover for `config`: a sync failed, so the next start asks
/// again (the catalog may have changed upstream).
pub fn forget_results(inv: &host::Invocation, config: &Value) {
    let keys = [result_key(inv, "check", config), result_key(inv, "discover", config)];
    if let Some(m) = IMAGE_RESULTS.lock().expect("lock").as_mut() {
        for k in keys.into_iter().flatten() {
            m.remove(&k);
        }
    }
}

/// `check`, reusing an image's recent success for the same config (a failure is never reused).
pub async fn check_cached(inv: &host::Invocation, config: &Value) -> Result<(), ConnectorError> {
    let key = result_key(inv, "check", config);
    if recent_result(&key, "check").is_some() {
        return Ok(());
    }
    host::check(inv, config, COMMAND_LIMIT).await?;
    keep_result(key, &Value::Bool(true));
    Ok(())
}

/// `discover`, reusing an image's recent catalog for the same config.
pub async fn discover_cached(inv: &host::Invocation, config: &Value) -> Result<Value, ConnectorError> {
    let key = result_key(inv, "discover", config);
    if let Some(v) = recent_result(&key, "discover") {
        return Ok(v);
    }
    let v = host::discover(inv, config, COMMAND_LIMIT).await?;
    keep_result(key, &v);
    Ok(v)
}

/// Checks the connector's config against its own spec; errors name the field under `config.`.
pub fn validate_against(spec: &Value, config: &Value) -> Result<(), ConnectorError> {
    hstream_runtime::options::check_nested(&spec["connectionSpecification"], "config", config)
}

/// Our config schema with `config` described by the connector's own spec where it is known (so
/// only its `airbyte_secret` fields are redacted). Otherwise `config` stays as our spec has it:
/// secret as a whole.
pub fn schema_with_connector(l: Result<Launcher, ConnectorError>, schema: &mut Value) {
    let Some(spec) = l.ok().and_then(|l| cached_spec(&l)) else {
        return;
    };
    hstream_runtime::options::embed_schema(schema, "config", &spec["connectionSpecification"]);
}

/// JSON text in `config` becomes the object it holds (so secrets inside are found and stored
/// configs have one shape); text that is not an object is left for validation to refuse.
pub fn normalize_config(config: &mut Value) {
    hstream_runtime::options::normalize_json_field(config, "config");
}

#[cfg(test)]
mod tests {
    use super::*;
    use hstream_runtime::{Kind, secret};
    use serde_json::json;

    #[test]
    fn connector_configs_are_masked_whole_until_their_spec_is_known() {
        let r = crate::registry();
        let t = r.get(Kind::Source, "airbyte").unwrap();
        let cmd = "/nonexistent/hstream-test-connector";
        let cfg = json!({"command": cmd, "config": {"host": "h", "password": "pw"}});
        let shown = secret::redact(&t.config_schema(&cfg), &cfg);
        assert_eq!(shown["config"], json!(secret::MASK), "{shown}");
        assert!(
            secret::secret_values(&t.config_schema(&cfg), &cfg)
                .iter()
                .any(|v| v.contains("pw"))
        );
        // Once the connector's spec is known, only what it marks is masked (also through its
        // own definitions).
        let spec = json!({"connectionSpecification": {"type": "object", "properties": {
            "host": {"type": "string"},
            "password": {"type": "string", "airbyte_secret": true},
            "auth": {"$ref": "#/definitions/Auth"}},
            "definitions": {"Auth": {"type": "object", "properties": {"token": {"type": "string", "airbyte_secret": true}}}}}});
        SPECS
            .lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .insert(spec_key(&Launcher::Command(cmd.into())), spec);
        let cfg = json!({"command": cmd, "config": {"host": "h", "password": "pw", "auth": {"token": "tk"}}});
        let shown = secret::redact(&t.config_schema(&cfg), &cfg);
        assert_eq!(shown["config"]["host"], "h");
        assert_eq!(shown["config"]["password"], json!(secret::MASK));
        assert_eq!(shown["config"]["auth"]["token"], json!(secret::MASK), "{shown}");
        // A config that does not even parse is masked whole.
        let bad = json!({"command": cmd, "package": "x", "config": {"password": "pw"}});
        assert_eq!(
            secret::redact(&t.config_schema(&bad), &bad)["config"],
            json!(secret::MASK)
        );
    }

    #[test]
    fn config_text_becomes_an_object() {
        let mut c = json!({"config": "{\"count\": 3}"});
        normalize_config(&mut c);
        assert_eq!(c["config"], json!({"count": 3}));
        let mut c = json!({"config": "not json"});
        normalize_config(&mut c);
        assert_eq!(c["config"], json!("not json"));
    }
}
