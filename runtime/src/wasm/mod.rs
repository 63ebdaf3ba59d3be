//! WASM plugins (decision 013): sources, sinks and transforms compiled to WebAssembly
//! components against `wit/plugin.wit` (package `hstream:plugin@1.0.0`, the ABI version), run
//! in wasmtime.
//!
//! One [`wasmtime::Engine`] for the process, with epoch interruption: a ticker thread advances
//! the epoch every [`TICK`], and every call into a plugin gets a deadline of its
//! `call_timeout_ms`, so a plugin that spins is trapped, not waited on. Each instance has its own
//! `Store` with a memory limit ([`Limiter`]) and a WASI context that grants nothing (no files,
//! no sockets, no environment, no arguments) beyond the directories and TCP addresses its config
//! names. An instance lives on its own thread ([`instance::Instance`]), so plugin code never runs
//! on the async executor. Compiled components are cached in memory by content hash.

pub mod connectors;
pub mod instance;
mod output;
pub mod transforms;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use md5::{Digest, Md5};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

use crate::error::ConnectorError;
use crate::options::NameList;

/// The ABI this host implements: the WIT package and version plugins are built against.
pub const ABI_PACKAGE: &str = "hstream:plugin";
pub const ABI_VERSION: &str = "1.0.0";

/// How often the epoch advances; call deadlines are counted in these.
const TICK: Duration = Duration::from_millis(10);
/// Largest module accepted (bytes).
pub const MAX_MODULE_BYTES: u64 = 64 << 20;

/// Bindings generated from the WIT, one module per world; `types` is shared.
pub(crate) mod bindings {
    pub mod source {
        wasmtime::component::bindgen!({ path: "wit", world: "source-plugin" });
    }
    pub mod sink {
        wasmtime::component::bindgen!({
            path: "wit",
            world: "sink-plugin",
            with: { "hstream:plugin/types": super::source::hstream::plugin::types },
        });
    }
    pub mod transform {
        wasmtime::component::bindgen!({
            path: "wit",
            world: "transform-plugin",
            with: { "hstream:plugin/types": super::source::hstream::plugin::types },
        });
    }
    pub use source::hstream::plugin::types;
}

/// What a plugin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    Source,
    Sink,
    Transform,
}

impl PluginKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Source => "source",
            PluginKind::Sink => "sink",
            PluginKind::Transform => "transform",
        }
    }
}

/// A compiled plugin and what it said about itself.
pub struct Loaded {
    pub component: Component,
    pub kind: PluginKind,
    pub name: String,
    pub description: String,
    /// The JSON Schema of its config.
    pub config_schema: Value,
    /// Where it was loaded from (for messages).
    pub origin: String,
}

/// What a plugin instance may touch and use. Nothing is granted unless named.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    pub memory_limit_bytes: usize,
    pub call_timeout: Duration,
    /// Host directories the plugin may read and write, each at the same path inside.
    pub dirs: Vec<PathBuf>,
    /// TCP addresses (`host:port`) the plugin may connect to.
    pub connect: Vec<String>,
}

pub const DEFAULT_MEMORY_LIMIT_MB: u32 = 64;
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 10_000;

/// The sandbox options every WASM connector and transform config has.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxOptions {
    /// Memory the plugin may use, in MiB (default 64); growing past it stops the task (FAILED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub memory_limit_mb: Option<u32>,
    /// The longest one call into the plugin may run, in ms (default 10000); a plugin that runs
    /// longer is stopped and the task FAILED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub call_timeout_ms: Option<u64>,
    /// Host directories the plugin may read and write (list or comma-separated), seen at the
    /// same paths inside. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_dirs: Option<NameList>,
    /// TCP addresses `host:port` the plugin may connect to (list or comma-separated). None by
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_connect: Option<NameList>,
}

impl SandboxOptions {
    pub fn sandbox(&self) -> Sandbox {
        Sandbox {
            memory_limit_bytes: (self.memory_limit_mb.unwrap_or(DEFAULT_MEMORY_LIMIT_MB) as usize) << 20,
            call_timeout: Duration::from_millis(self.call_timeout_ms.unwrap_or(DEFAULT_CALL_TIMEOUT_MS)),
            dirs: self
                .grant_dirs
                .as_ref()
                .map(|d| d.names().into_iter().map(PathBuf::from).collect())
                .unwrap_or_default(),
            connect: self.grant_connect.as_ref().map(NameList::names).unwrap_or_default(),
        }
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        SandboxOptions::default().sandbox()
    }
}

impl Sandbox {
    /// Checks the grants exist (directories) and resolve (addresses).
    /// A relative path or an address without a port is the config's fault; a directory not
    /// there (yet: a mount) or a name that does not resolve (now) is the outside's, retried.
    pub fn check(&self) -> Result<(), ConnectorError> {
        for d in &self.dirs {
            if !d.is_absolute() {
                return Err(ConnectorError::config(format!(
                    "grant_dirs: {} is not an absolute path",
                    d.display()
                )));
            }
            if !d.is_dir() {
                return Err(ConnectorError::external(format!(
                    "grant_dirs: {} is not a directory",
                    d.display()
                )));
            }
            if let (Some(p), Ok(real)) = (PROTECTED_DIR.get(), d.canonicalize())
                && (real.starts_with(p) || p.starts_with(&real))
            {
                return Err(ConnectorError::config(format!(
                    "grant_dirs: {} would give the plugin the server's data directory",
                    d.display()
                )));
            }
        }
        self.connect_addrs().map(|_| ())
    }

    /// [`check`](Self::check) off the executor (it resolves names).
    pub async fn check_async(&self) -> Result<(), ConnectorError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.check())
            .await
            .map_err(|e| ConnectorError::internal("grant check panicked").with_source(e))?
    }

    fn connect_addrs(&self) -> Result<Vec<SocketAddr>, ConnectorError> {
        let mut out = Vec::new();
        for a in &self.connect {
            let port_ok = a.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok());
            if !port_ok {
                return Err(ConnectorError::config(format!("grant_connect: {a:?} is not host:port")));
            }
            let addrs = a
                .to_socket_addrs()
                .map_err(|e| ConnectorError::external(format!("grant_connect: {a}")).with_source(e))?;
            out.extend(addrs);
        }
        Ok(out)
    }

    /// The WASI context: only what is granted. With `log`, the plugin's stdout and stderr
    /// become log lines of that span (its task's); without, they go nowhere.
    fn wasi(&self, log: Option<(Arc<str>, tracing::Span)>) -> Result<wasmtime_wasi::WasiCtx, ConnectorError> {
        let mut b = wasmtime_wasi::WasiCtxBuilder::new();
        if let Some((plugin, span)) = log {
            b.stdout(output::LogOutput {
                plugin: plugin.clone(),
                stream: "stdout",
                span: span.clone(),
            });
            b.stderr(output::LogOutput {
                plugin,
                stream: "stderr",
                span,
            });
        }
        for d in &self.dirs {
            let guest = d.to_string_lossy().into_owned();
            b.preopened_dir(d, &guest, wasmtime_wasi::FsPerms::ReadWrite)
                .map_err(|e| {
                    ConnectorError::external(format!("grant_dirs: {}", d.display()))
                        .with_boxed_source(e.into_boxed_dyn_error())
                })?;
        }
        let allowed = self.connect_addrs()?;
        if !allowed.is_empty() {
            b.allow_tcp(true).allow_ip_name_lookup(true);
            let allowed = Arc::new(allowed);
            b.socket_addr_check(move |addr, usage| {
                use wasmtime_wasi::sockets::SocketAddrUse;
                let ok = match usage {
                    SocketAddrUse::TcpConnect => allowed.contains(&addr),
                    // The implicit bind of a connect: any local address, any port.
                    SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                    _ => false,
                };
                Box::pin(async move { ok })
            });
        }
        Ok(b.build())
    }
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut c = Config::new();
        c.wasm_component_model(true);
        c.epoch_interruption(true);
        let engine = Engine::new(&c).expect("the wasmtime configuration is valid");
        let ticker = engine.weak();
        // The epoch clock: without it no deadline would ever pass.
        let _ = std::thread::Builder::new().name("wasm-epoch".into()).spawn(move || {
            while let Some(e) = ticker.upgrade() {
                e.increment_epoch();
                drop(e);
                std::thread::sleep(TICK);
            }
        });
        engine
    })
}

/// Where plugins uploaded by name live (set by the server at start; `None`: names are refused).
static PLUGIN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Sets the directory of uploaded plugins (`<name>.wasm`).
pub fn set_plugin_dir(dir: PathBuf) {
    let _ = PLUGIN_DIR.set(dir);
}

/// A directory no plugin may be granted, nor any directory holding it (the server's data).
static PROTECTED_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Sets the directory plugins may never reach (the server's data directory).
pub fn set_protected_dir(dir: &Path) {
    let _ = PROTECTED_DIR.set(dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()));
}

/// The directory of uploaded plugins, if the host has one.
pub fn plugin_dir() -> Option<&'static Path> {
    PLUGIN_DIR.get().map(PathBuf::as_path)
}

/// Whether a plugin name (for upload) is acceptable: letters, digits, `-`, `_`.
pub fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A `module` option: a path (it has a `/` or ends in `.wasm`) or the name of an uploaded plugin.
pub fn resolve_module(module: &str) -> Result<PathBuf, ConnectorError> {
    if module.contains('/') || module.ends_with(".wasm") {
        return Ok(PathBuf::from(module));
    }
    if !valid_plugin_name(module) {
        return Err(ConnectorError::config(format!(
            "module: {module:?} is neither a path to a .wasm file nor a plugin name"
        )));
    }
    match plugin_dir() {
        Some(d) => Ok(d.join(format!("{module}.wasm"))),
        None => Err(ConnectorError::config(format!(
            "module: {module:?} names an uploaded plugin, and this runtime has no plugin directory"
        ))),
    }
}

#[derive(Default)]
struct Cache {
    /// Compiled plugins by the MD5 of their bytes.
    by_hash: HashMap<[u8; 16], Arc<Loaded>>,
    /// The last plugin loaded from each path.
    by_path: HashMap<PathBuf, Arc<Loaded>>,
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(Cache::default()))
}

/// The plugin last loaded from `module`, if any (no IO: for redaction schemas).
pub fn cached(module: &str) -> Option<Arc<Loaded>> {
    let path = resolve_module(module).ok()?;
    cache().lock().expect("lock").by_path.get(&path).cloned()
}

/// Records that `path` now holds `loaded` (after an upload replaced it).
pub fn remember(path: PathBuf, loaded: Arc<Loaded>) {
    cache().lock().expect("lock").by_path.insert(path, loaded);
}

/// How many compiled plugins are kept beyond those a path or a running instance still uses.
const CACHE_SPARE: usize = 16;
/// The longest a load (compile, instantiate, describe) may take before its caller gives up.
const LOAD_LIMIT: Duration = Duration::from_secs(60);

/// Loads (compiles, inspects and describes) the plugin at `module`; compiled components are
/// cached by content. Blocking: CPU-heavy on a first load.
pub fn load_blocking(module: &str) -> Result<Arc<Loaded>, ConnectorError> {
    let path = resolve_module(module)?;
    let unreadable =
        |e: std::io::Error| ConnectorError::config(format!("module: cannot read {}", path.display())).with_source(e);
    let meta = std::fs::metadata(&path).map_err(unreadable)?;
    // Not a device or a pipe (which could be endless or never end).
    if !meta.is_file() {
        return Err(ConnectorError::config(format!(
            "module: {} is not a file",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::open(&path).map_err(unreadable)?, MAX_MODULE_BYTES + 1),
        &mut bytes,
    )
    .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_MODULE_BYTES {
        return Err(ConnectorError::config(format!(
            "module: {} is over the {MAX_MODULE_BYTES}-byte limit",
            path.display()
        )));
    }
    let loaded = load_bytes(&bytes, &path.display().to_string())?;
    cache().lock().expect("lock").by_path.insert(path, loaded.clone());
    Ok(loaded)
}

/// [`load_blocking`] off the async executor, given up after [`LOAD_LIMIT`] (a plugin blocked in
/// a host call while it describes itself).
pub async fn load(module: &str) -> Result<Arc<Loaded>, ConnectorError> {
    let m = module.to_owned();
    match tokio::time::timeout(LOAD_LIMIT, tokio::task::spawn_blocking(move || load_blocking(&m))).await {
        Ok(r) => r.map_err(|e| ConnectorError::internal("plugin loader panicked").with_source(e))?,
        Err(_) => Err(ConnectorError::config(format!(
            "module: {module} did not load within {LOAD_LIMIT:?}"
        ))),
    }
}

/// Loads a plugin from its bytes (`origin` names it in messages).
pub fn load_bytes(bytes: &[u8], origin: &str) -> Result<Arc<Loaded>, ConnectorError> {
    let key: [u8; 16] = Md5::digest(bytes).into();
    if let Some(l) = cache().lock().expect("lock").by_hash.get(&key) {
        return Ok(l.clone());
    }
    let engine = engine();
    let component = Component::new(engine, bytes).map_err(|e| {
        let what = if bytes.starts_with(b"\0asm\x01\0\0\0") {
            "is a core WebAssembly module, not a component (build it for wasm32-wasip2)".to_owned()
        } else if bytes.starts_with(b"\0asm") {
            format!("is not a valid WebAssembly component: {e}")
        } else {
            "is not WebAssembly".to_owned()
        };
        ConnectorError::config(format!("module: {origin} {what}"))
    })?;
    let kind = abi_kind(engine, &component, origin)?;
    let info = instance::describe(engine, &component, kind, origin)?;
    let config_schema: Value = serde_json::from_str(&info.config_schema).map_err(|e| {
        ConnectorError::config(format!(
            "module: {origin} declares a config schema that is not JSON: {e}"
        ))
    })?;
    if jsonschema::validator_for(&config_schema).is_err() {
        return Err(ConnectorError::config(format!(
            "module: {origin} declares a config schema that is not a valid JSON Schema"
        )));
    }
    if !valid_plugin_name(&info.name) {
        return Err(ConnectorError::config(format!(
            "module: {origin} names itself {:?}; a plugin name is letters, digits, '-' and '_' (at most 128)",
            info.name.chars().take(64).collect::<String>()
        )));
    }
    let declared = match info.kind {
        bindings::types::Kind::Source => PluginKind::Source,
        bindings::types::Kind::Sink => PluginKind::Sink,
        bindings::types::Kind::Transform => PluginKind::Transform,
    };
    if declared != kind {
        return Err(ConnectorError::config(format!(
            "module: {origin} exports the {} interface but describes itself as a {}",
            kind.as_str(),
            declared.as_str()
        )));
    }
    let loaded = Arc::new(Loaded {
        component,
        kind,
        name: info.name,
        description: info.description,
        config_schema,
        origin: origin.to_owned(),
    });
    let mut c = cache().lock().expect("lock");
    if c.by_hash.len() >= CACHE_SPARE {
        // Keep what a path or an instance still holds; forget the rest.
        c.by_hash.retain(|_, l| Arc::strong_count(l) > 1);
    }
    c.by_hash.insert(key, loaded.clone());
    Ok(loaded)
}

/// The plugin's kind, from the `hstream:plugin` interface it exports; a module built against
/// another ABI version is refused naming both versions.
fn abi_kind(engine: &Engine, component: &Component, origin: &str) -> Result<PluginKind, ConnectorError> {
    let ty = component.component_type();
    let names: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    let mut kinds = Vec::new();
    for n in &names {
        let Some(rest) = n.strip_prefix(ABI_PACKAGE).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        let (iface, version) = rest.split_once('@').unwrap_or((rest, "(none)"));
        if version != ABI_VERSION {
            return Err(ConnectorError::config(format!(
                "module: {origin} was built for plugin ABI {ABI_PACKAGE}@{version}; this runtime \
                 implements {ABI_PACKAGE}@{ABI_VERSION} (rebuild the plugin with a matching SDK)"
            )));
        }
        kinds.push(match iface {
            "source" => PluginKind::Source,
            "sink" => PluginKind::Sink,
            "transform" => PluginKind::Transform,
            other => {
                return Err(ConnectorError::config(format!(
                    "module: {origin} exports {ABI_PACKAGE}/{other}, which is not a plugin kind"
                )));
            }
        });
    }
    match kinds.as_slice() {
        [k] => Ok(*k),
        [] => Err(ConnectorError::config(format!(
            "module: {origin} is not an HStream plugin: it exports no {ABI_PACKAGE}@{ABI_VERSION} \
             interface (exports: {})",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        ))),
        _ => Err(ConnectorError::config(format!(
            "module: {origin} exports more than one plugin kind"
        ))),
    }
}

/// Refuses a plugin of another kind than the place it is used in needs.
pub fn expect_kind(loaded: &Loaded, want: PluginKind, used_as: &str) -> Result<(), ConnectorError> {
    if loaded.kind == want {
        return Ok(());
    }
    Err(ConnectorError::config(format!(
        "module: {} is a {} plugin ({:?}); {used_as} needs a {} plugin",
        loaded.origin,
        loaded.kind.as_str(),
        loaded.name,
        want.as_str()
    )))
}

/// Checks a plugin's config against the schema the plugin declares; errors name the field under
/// `field.` (e.g. `config.limit`).
pub fn check_plugin_config(loaded: &Loaded, field: &str, config: &Value) -> Result<(), ConnectorError> {
    crate::options::check_nested(&loaded.config_schema, field, config)
}

#[cfg(test)]
mod tests;
