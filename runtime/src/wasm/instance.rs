//! One plugin instance: its `Store` (memory limit, WASI context of its grants) and its bindings,
//! owned by a thread of its own. Async callers send it jobs ([`Instance::call`]), so plugin code
//! never runs on the executor; every call has an epoch deadline, and a call that traps (deadline,
//! memory limit, a bug) leaves the instance unusable: later calls fail with the first reason.

use std::sync::{Arc, OnceLock};

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, types};
use super::{Loaded, PluginKind, Sandbox, TICK};
use crate::connector::{PayloadFlag, Record};
use crate::error::ConnectorError;

pub use bindings::sink::exports::hstream::plugin::sink::Written as WitWritten;
pub use bindings::source::exports::hstream::plugin::source::Batch as WitBatch;
pub use bindings::transform::exports::hstream::plugin::transform::Output as WitOutput;
pub use types::Record as WitRecord;

/// What a store holds: the WASI context and the memory limiter.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Refuses memory growth past the limit with a trap, remembering the size asked for. The limit
/// is the instance's total over all its linear memories (a component holds several core
/// instances).
struct Limiter {
    max: usize,
    used: usize,
    denied: Option<usize>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.used.saturating_add(desired.saturating_sub(current));
        if total > self.max {
            self.denied = Some(total);
            wasmtime::bail!("memory limit of {} bytes reached", self.max);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Table elements are pointers: bound them by the same budget.
        Ok(desired.saturating_mul(8) <= self.max)
    }

    fn instances(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        64
    }
}

fn linker() -> &'static Linker<HostState> {
    static LINKER: OnceLock<Linker<HostState>> = OnceLock::new();
    LINKER.get_or_init(|| {
        let mut l = Linker::new(super::engine());
        wasmtime_wasi::p2::add_to_linker_sync(&mut l).expect("WASI links into a fresh linker");
        l
    })
}

enum Plugin {
    Source(bindings::source::SourcePlugin),
    Sink(bindings::sink::SinkPlugin),
    Transform(bindings::transform::TransformPlugin),
}

/// The instance as its thread sees it.
pub struct Guest {
    store: Store<HostState>,
    plugin: Plugin,
    name: Arc<str>,
    sandbox: Sandbox,
    /// Why the instance stopped (a trap): it is not entered again.
    trapped: Option<String>,
}

fn new_store(
    engine: &Engine,
    sandbox: &Sandbox,
    log: Option<(Arc<str>, tracing::Span)>,
) -> Result<Store<HostState>, ConnectorError> {
    let state = HostState {
        wasi: sandbox.wasi(log)?,
        table: ResourceTable::new(),
        limiter: Limiter {
            max: sandbox.memory_limit_bytes,
            used: 0,
            denied: None,
        },
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.epoch_deadline_trap();
    // Instantiation runs the plugin's initializers: they get a call's time too.
    store.set_epoch_deadline(deadline_ticks(sandbox));
    Ok(store)
}

fn instantiate(store: &mut Store<HostState>, component: &Component, kind: PluginKind) -> wasmtime::Result<Plugin> {
    let l = linker();
    Ok(match kind {
        PluginKind::Source => Plugin::Source(bindings::source::SourcePlugin::instantiate(store, component, l)?),
        PluginKind::Sink => Plugin::Sink(bindings::sink::SinkPlugin::instantiate(store, component, l)?),
        PluginKind::Transform => {
            Plugin::Transform(bindings::transform::TransformPlugin::instantiate(store, component, l)?)
        }
    })
}

fn deadline_ticks(sandbox: &Sandbox) -> u64 {
    (sandbox.call_timeout.as_millis() / TICK.as_millis()).max(1) as u64 + 1
}

/// Instantiates a plugin in a default sandbox and asks what it is.
pub(super) fn describe(
    engine: &Engine,
    component: &Component,
    kind: PluginKind,
    origin: &str,
) -> Result<types::PluginInfo, ConnectorError> {
    let sandbox = Sandbox::default();
    let mut store = new_store(engine, &sandbox, None)?;
    let fail = |e: wasmtime::Error| {
        ConnectorError::config(format!("module: {origin}")).with_boxed_source(e.into_boxed_dyn_error())
    };
    let plugin = instantiate(&mut store, component, kind).map_err(fail)?;
    store.set_epoch_deadline(deadline_ticks(&sandbox));
    match &plugin {
        Plugin::Source(p) => p.hstream_plugin_source().call_describe(&mut store),
        Plugin::Sink(p) => p.hstream_plugin_sink().call_describe(&mut store),
        Plugin::Transform(p) => p.hstream_plugin_transform().call_describe(&mut store),
    }
    .map_err(fail)
}

fn guest_error(name: &str, what: &str, e: types::Error) -> ConnectorError {
    match e {
        types::Error::Config(m) => ConnectorError::config(format!("plugin {name}: {m}")),
        types::Error::External(m) => ConnectorError::external(format!("plugin {name}: {m}")),
        types::Error::Internal(m) => ConnectorError::internal(format!("plugin {name} failed in {what}: {m}")),
    }
}

impl Guest {
    fn new(loaded: &Loaded, sandbox: &Sandbox, span: tracing::Span) -> Result<Guest, ConnectorError> {
        let log = Some((Arc::<str>::from(loaded.name.as_str()), span));
        let mut store = new_store(super::engine(), sandbox, log)?;
        let plugin = instantiate(&mut store, &loaded.component, loaded.kind).map_err(|e| {
            ConnectorError::internal(format!("plugin {}: cannot instantiate", loaded.name))
                .with_boxed_source(e.into_boxed_dyn_error())
        })?;
        Ok(Guest {
            store,
            plugin,
            name: loaded.name.as_str().into(),
            sandbox: sandbox.clone(),
            trapped: None,
        })
    }

    /// One call into the plugin under the deadline; a trap is classified and remembered.
    fn invoke<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Store<HostState>, &Plugin) -> Option<wasmtime::Result<Result<T, types::Error>>>,
    ) -> Result<T, ConnectorError> {
        if let Some(t) = &self.trapped {
            return Err(ConnectorError::internal(format!(
                "plugin {} was stopped: {t}",
                self.name
            )));
        }
        self.store.set_epoch_deadline(deadline_ticks(&self.sandbox));
        let Some(result) = f(&mut self.store, &self.plugin) else {
            return Err(ConnectorError::internal(format!(
                "plugin {}: {what} called on a plugin of another kind",
                self.name
            )));
        };
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(guest_error(&self.name, what, e)),
            Err(e) => {
                let err = self.classify(e, what);
                self.trapped = Some(err.full_message());
                Err(err)
            }
        }
    }

    fn classify(&self, e: wasmtime::Error, what: &str) -> ConnectorError {
        let name = &self.name;
        if let Some(asked) = self.store.data().limiter.denied {
            return ConnectorError::internal(format!(
                "plugin {name} exceeded its memory limit of {} MiB in {what} (it asked for {} MiB; \
                 memory_limit_mb): stopped",
                self.sandbox.memory_limit_bytes >> 20,
                asked.div_ceil(1 << 20)
            ));
        }
        if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            return ConnectorError::internal(format!(
                "plugin {name} exceeded its time limit of {} ms in {what} (call_timeout_ms): stopped",
                self.sandbox.call_timeout.as_millis()
            ));
        }
        ConnectorError::internal(format!("plugin {name} trapped in {what}")).with_boxed_source(e.into_boxed_dyn_error())
    }

    pub fn source_open(&mut self, config: &str, offset: Option<&str>) -> Result<(), ConnectorError> {
        self.invoke("open", |s, p| match p {
            Plugin::Source(p) => Some(p.hstream_plugin_source().call_open(s, config, offset)),
            _ => None,
        })
    }

    pub fn source_next(&mut self, max: u32) -> Result<WitBatch, ConnectorError> {
        self.invoke("next", |s, p| match p {
            Plugin::Source(p) => Some(p.hstream_plugin_source().call_next(s, max)),
            _ => None,
        })
    }

    pub fn sink_open(&mut self, config: &str) -> Result<(), ConnectorError> {
        self.invoke("open", |s, p| match p {
            Plugin::Sink(p) => Some(p.hstream_plugin_sink().call_open(s, config)),
            _ => None,
        })
    }

    pub fn sink_write(&mut self, records: &[WitRecord]) -> Result<WitWritten, ConnectorError> {
        self.invoke("write", |s, p| match p {
            Plugin::Sink(p) => Some(p.hstream_plugin_sink().call_write(s, records)),
            _ => None,
        })
    }

    pub fn sink_flush(&mut self) -> Result<(), ConnectorError> {
        self.invoke("flush", |s, p| match p {
            Plugin::Sink(p) => Some(p.hstream_plugin_sink().call_flush(s)),
            _ => None,
        })
    }

    pub fn transform_open(&mut self, config: &str) -> Result<(), ConnectorError> {
        self.invoke("open", |s, p| match p {
            Plugin::Transform(p) => Some(p.hstream_plugin_transform().call_open(s, config)),
            _ => None,
        })
    }

    pub fn transform_apply(&mut self, records: &[WitRecord]) -> Result<Vec<WitOutput>, ConnectorError> {
        self.invoke("apply", |s, p| match p {
            Plugin::Transform(p) => Some(p.hstream_plugin_transform().call_apply(s, records)),
            _ => None,
        })
    }
}

type Job = Box<dyn FnOnce(&mut Guest) + Send>;

/// A plugin instance on its own thread. Dropping it ends the thread once its current call
/// returns (a spinning call ends at its deadline).
pub struct Instance {
    tx: std::sync::mpsc::Sender<Job>,
    pub name: Arc<str>,
    /// How long the host waits for a call: the deadline cannot interrupt a plugin blocked in a
    /// host call (a sleep, a read on a granted socket), so the caller stops waiting here.
    wait: std::time::Duration,
    /// Set once a call outlived `wait`: the instance is abandoned (its thread ends when the
    /// blocked call returns).
    abandoned: std::sync::atomic::AtomicBool,
}

/// How long the host waits for a call with deadline `timeout` before it abandons the instance.
pub fn host_wait(timeout: std::time::Duration) -> std::time::Duration {
    timeout * 2 + std::time::Duration::from_secs(1)
}

impl Instance {
    /// Starts an instance of `loaded` in `sandbox`.
    pub async fn start(loaded: Arc<Loaded>, sandbox: Sandbox) -> Result<Instance, ConnectorError> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let name: Arc<str> = loaded.name.as_str().into();
        let wait = host_wait(sandbox.call_timeout);
        // The plugin's output is logged in the caller's span (its task's).
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name(format!("wasm-{}", loaded.name))
            .spawn(move || {
                let mut guest = match Guest::new(&loaded, &sandbox, span) {
                    Ok(g) => {
                        let _ = ready_tx.send(Ok(()));
                        g
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    job(&mut guest);
                }
            })
            .map_err(|e| ConnectorError::internal("cannot start a plugin thread").with_source(e))?;
        match tokio::time::timeout(wait, ready_rx).await {
            Ok(r) => r.map_err(|_| ConnectorError::internal("the plugin thread ended while starting"))??,
            Err(_) => {
                return Err(ConnectorError::internal(format!(
                    "plugin {name} did not finish starting within {wait:?}: abandoned"
                )));
            }
        }
        Ok(Instance {
            tx,
            name,
            wait,
            abandoned: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Runs `f` on the instance's thread.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Guest) -> Result<R, ConnectorError> + Send + 'static,
    ) -> Result<R, ConnectorError> {
        use std::sync::atomic::Ordering;
        if self.abandoned.load(Ordering::Relaxed) {
            return Err(ConnectorError::internal(format!(
                "plugin {} was abandoned: an earlier call did not return",
                self.name
            )));
        }
        let (rtx, rrx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Box::new(move |g| {
                let _ = rtx.send(f(g));
            }))
            .map_err(|_| ConnectorError::internal(format!("plugin {}: its thread is gone", self.name)))?;
        match tokio::time::timeout(self.wait, rrx).await {
            Ok(r) => r.map_err(|_| {
                ConnectorError::internal(format!("plugin {}: its thread ended during a call", self.name))
            })?,
            Err(_) => {
                self.abandoned.store(true, Ordering::Relaxed);
                Err(ConnectorError::internal(format!(
                    "plugin {} did not return within {:?} (blocked outside its code, where its \
                     deadline cannot stop it): abandoned",
                    self.name, self.wait
                )))
            }
        }
    }
}

/// A record as a plugin sees it: a JSON record's Struct bytes become JSON text.
pub fn to_wit(
    key: &str,
    flag: PayloadFlag,
    payload: &[u8],
    attributes: &crate::connector::Attributes,
) -> Result<WitRecord, ConnectorError> {
    let (encoding, payload) = match flag {
        PayloadFlag::Json => {
            let mut text = Vec::with_capacity(payload.len() + payload.len() / 2);
            crate::pbstruct::struct_to_json(payload, &mut text).map_err(|e| {
                ConnectorError::internal(format!(
                    "record {key:?} is flagged JSON but is not a protobuf Struct: {e}"
                ))
            })?;
            (types::Encoding::Json, text)
        }
        PayloadFlag::Raw => (types::Encoding::Raw, payload.to_vec()),
    };
    Ok(WitRecord {
        key: key.to_owned(),
        encoding,
        payload,
        attributes: attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    })
}

/// A plugin's record as ours: JSON text becomes Struct bytes; anything but one JSON object is the
/// plugin's bug.
pub fn from_wit(plugin: &str, r: WitRecord) -> Result<Record, ConnectorError> {
    let (flag, payload) = match r.encoding {
        types::Encoding::Json => {
            let mut buf = Vec::with_capacity(r.payload.len());
            let written = std::str::from_utf8(&r.payload)
                .ok()
                .and_then(|text| crate::pbstruct::struct_from_json(&mut buf, text, &[]).ok());
            if written.is_none() {
                return Err(ConnectorError::internal(format!(
                    "plugin {plugin} produced a JSON record (key {:?}) that is not one JSON object",
                    r.key
                )));
            }
            (PayloadFlag::Json, bytes::Bytes::from(buf))
        }
        types::Encoding::Raw => (PayloadFlag::Raw, bytes::Bytes::from(r.payload)),
    };
    Ok(Record {
        key: r.key,
        flag,
        payload,
        attributes: r.attributes.into_iter().collect(),
    })
}
