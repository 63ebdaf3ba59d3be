//! The HStream IO plugin SDK: implement [`Source`], [`Sink`] or [`Transform`] and export it with
//! [`export_source!`], [`export_sink!`] or [`export_transform!`]; build with
//! `cargo build --release --target wasm32-wasip2`. The result is a component the runtime loads
//! with `CREATE SOURCE CONNECTOR x FROM wasm WITH ("module" = '/path/x.wasm', …)` or attaches as
//! a transform (`"transforms" = 'f'`, `"transforms.f.module" = '/path/f.wasm'`).
//!
//! ```ignore
//! struct Upper;
//! impl hstream_plugin_sdk::Transform for Upper {
//!     const NAME: &'static str = "upper";
//!     type Config = serde_json::Value;
//!     fn open(_: Self::Config) -> Result<Self, Error> { Ok(Upper) }
//!     fn map(&mut self, mut r: Record, out: &mut Outputs) -> Result<(), Error> {
//!         r.key = r.key.to_uppercase();
//!         out.push(r);
//!         Ok(())
//!     }
//! }
//! hstream_plugin_sdk::export_transform!(Upper);
//! ```
//!
//! The ABI is `runtime/wit/plugin.wit` (package `hstream:plugin@1.0.0`).

use std::any::Any;
use std::cell::RefCell;

use serde::de::DeserializeOwned;
pub use serde_json;
use serde_json::Value;

#[doc(hidden)]
pub mod source_world {
    wit_bindgen::generate!({
        world: "source-plugin",
        path: "../../runtime/wit",
        default_bindings_module: "hstream_plugin_sdk::source_world",
        pub_export_macro: true,
        export_macro_name: "__export_source_world",
    });
}

#[doc(hidden)]
pub mod sink_world {
    wit_bindgen::generate!({
        world: "sink-plugin",
        path: "../../runtime/wit",
        default_bindings_module: "hstream_plugin_sdk::sink_world",
        pub_export_macro: true,
        export_macro_name: "__export_sink_world",
        with: { "hstream:plugin/types@1.0.0": crate::source_world::hstream::plugin::types },
    });
}

#[doc(hidden)]
pub mod transform_world {
    wit_bindgen::generate!({
        world: "transform-plugin",
        path: "../../runtime/wit",
        default_bindings_module: "hstream_plugin_sdk::transform_world",
        pub_export_macro: true,
        export_macro_name: "__export_transform_world",
        with: { "hstream:plugin/types@1.0.0": crate::source_world::hstream::plugin::types },
    });
}

use source_world::hstream::plugin::types as wit;
pub use wit::Encoding;

/// Why a call failed; the runtime acts on the class (see the WIT's `error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The configuration is wrong: the task stops (FAILED).
    Config(String),
    /// Something outside failed: the task is restarted with backoff.
    External(String),
    /// A bug: the task stops (FAILED).
    Internal(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(m) => write!(f, "config error: {m}"),
            Error::External(m) => write!(f, "external error: {m}"),
            Error::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl From<Error> for wit::Error {
    fn from(e: Error) -> wit::Error {
        match e {
            Error::Config(m) => wit::Error::Config(m),
            Error::External(m) => wit::Error::External(m),
            Error::Internal(m) => wit::Error::Internal(m),
        }
    }
}

/// One record: a JSON record's payload is the UTF-8 JSON text of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub key: String,
    pub encoding: Encoding,
    pub payload: Vec<u8>,
    pub attributes: Vec<(String, String)>,
}

impl Record {
    /// A JSON record holding `value` (an object).
    pub fn json(key: impl Into<String>, value: &Value) -> Record {
        Record {
            key: key.into(),
            encoding: Encoding::Json,
            payload: serde_json::to_vec(value).unwrap_or_default(),
            attributes: Vec::new(),
        }
    }

    /// A raw record.
    pub fn raw(key: impl Into<String>, payload: impl Into<Vec<u8>>) -> Record {
        Record {
            key: key.into(),
            encoding: Encoding::Raw,
            payload: payload.into(),
            attributes: Vec::new(),
        }
    }

    /// The payload parsed as JSON (a JSON record's object; a raw record's bytes if they are JSON).
    pub fn value(&self) -> Result<Value, Error> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| Error::Internal(format!("record {:?} is not JSON: {e}", self.key)))
    }

    /// Replaces the payload with `value` as a JSON record.
    pub fn set_value(&mut self, value: &Value) {
        self.encoding = Encoding::Json;
        self.payload = serde_json::to_vec(value).unwrap_or_default();
    }
}

impl From<wit::Record> for Record {
    fn from(r: wit::Record) -> Record {
        Record {
            key: r.key,
            encoding: r.encoding,
            payload: r.payload,
            attributes: r.attributes,
        }
    }
}

impl From<Record> for wit::Record {
    fn from(r: Record) -> wit::Record {
        wit::Record {
            key: r.key,
            encoding: r.encoding,
            payload: r.payload,
            attributes: r.attributes,
        }
    }
}

/// What a source's `next` produced.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<Record>,
    /// The position after these records (checkpointed once they are durable); None: unchanged.
    pub offset: Option<Value>,
    /// Nothing more will ever come: the task completes.
    pub done: bool,
    /// With no records: wait this long before the next call (ms).
    pub idle_ms: u32,
    /// Send the records to this stream instead of the connector's own.
    pub stream: Option<String>,
}

/// A source: produces records with the position after them.
pub trait Source: Sized + 'static {
    const NAME: &'static str;
    const DESCRIPTION: &'static str = "";
    /// The JSON Schema of [`Source::Config`], as JSON text.
    const CONFIG_SCHEMA: &'static str = r#"{"type": "object"}"#;
    type Config: DeserializeOwned;
    /// Resumes after `offset` (what an earlier [`Batch::offset`] said), or starts.
    fn open(config: Self::Config, offset: Option<Value>) -> Result<Self, Error>;
    /// Up to `max` records.
    fn next(&mut self, max: u32) -> Result<Batch, Error>;
}

/// Whether written records are durable already or only after [`Sink::flush`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Accepted,
    Durable,
}

/// A sink: writes records in order and says when they are durable.
pub trait Sink: Sized + 'static {
    const NAME: &'static str;
    const DESCRIPTION: &'static str = "";
    const CONFIG_SCHEMA: &'static str = r#"{"type": "object"}"#;
    type Config: DeserializeOwned;
    fn open(config: Self::Config) -> Result<Self, Error>;
    fn write(&mut self, records: Vec<Record>) -> Result<Written, Error>;
    fn flush(&mut self) -> Result<(), Error>;
}

/// Where a transform puts its output for one input record.
#[derive(Debug, Default)]
pub struct Outputs {
    input: u32,
    out: Vec<transform_world::exports::hstream::plugin::transform::Output>,
}

impl Outputs {
    /// Emits `record` (to the record's own stream).
    pub fn push(&mut self, record: Record) {
        self.route(record, None);
    }

    /// Emits `record` to `stream` (for a source's records; a sink refuses routed records).
    pub fn route(&mut self, record: Record, stream: Option<String>) {
        self.out.push(transform_world::exports::hstream::plugin::transform::Output {
            input: self.input,
            record: record.into(),
            stream,
        });
    }
}

/// A transform: maps one record to zero or more (filter, reshape, route).
pub trait Transform: Sized + 'static {
    const NAME: &'static str;
    const DESCRIPTION: &'static str = "";
    const CONFIG_SCHEMA: &'static str = r#"{"type": "object"}"#;
    type Config: DeserializeOwned;
    fn open(config: Self::Config) -> Result<Self, Error>;
    fn map(&mut self, record: Record, out: &mut Outputs) -> Result<(), Error>;
}

thread_local! {
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

fn parse<C: DeserializeOwned>(config: &str) -> Result<C, Error> {
    serde_json::from_str(config).map_err(|e| Error::Config(format!("config: {e}")))
}

fn with<T: 'static, R>(f: impl FnOnce(&mut T) -> Result<R, Error>) -> Result<R, wit::Error> {
    INSTANCE.with(|i| match i.borrow_mut().as_mut().and_then(|b| b.downcast_mut::<T>()) {
        Some(t) => f(t).map_err(Into::into),
        None => Err(wit::Error::Internal("called before open".into())),
    })
}

fn install<T: 'static>(t: T) {
    INSTANCE.with(|i| *i.borrow_mut() = Some(Box::new(t)));
}

#[doc(hidden)]
pub fn __info(name: &str, kind: wit::Kind, schema: &str, description: &str) -> wit::PluginInfo {
    wit::PluginInfo {
        name: name.into(),
        kind,
        config_schema: schema.into(),
        description: description.into(),
    }
}

#[doc(hidden)]
pub fn __source_open<S: Source>(config: String, offset: Option<String>) -> Result<(), wit::Error> {
    let open = || {
        let offset = match offset {
            Some(o) => Some(serde_json::from_str(&o).map_err(|e| Error::Internal(format!("offset: {e}")))?),
            None => None,
        };
        S::open(parse(&config)?, offset)
    };
    install(open()?);
    Ok(())
}

#[doc(hidden)]
pub fn __source_next<S: Source>(
    max: u32,
) -> Result<source_world::exports::hstream::plugin::source::Batch, wit::Error> {
    with::<S, _>(|s| s.next(max)).map(|b| source_world::exports::hstream::plugin::source::Batch {
        records: b.records.into_iter().map(Into::into).collect(),
        offset: b.offset.map(|o| o.to_string()),
        done: b.done,
        idle_ms: b.idle_ms,
        stream: b.stream,
    })
}

#[doc(hidden)]
pub fn __sink_open<K: Sink>(config: String) -> Result<(), wit::Error> {
    install(K::open(parse(&config)?)?);
    Ok(())
}

#[doc(hidden)]
pub fn __sink_write<K: Sink>(
    records: Vec<wit::Record>,
) -> Result<sink_world::exports::hstream::plugin::sink::Written, wit::Error> {
    use sink_world::exports::hstream::plugin::sink::Written as W;
    with::<K, _>(|k| k.write(records.into_iter().map(Into::into).collect())).map(|w| match w {
        Written::Accepted => W::Accepted,
        Written::Durable => W::Durable,
    })
}

#[doc(hidden)]
pub fn __sink_flush<K: Sink>() -> Result<(), wit::Error> {
    with::<K, _>(|k| k.flush())
}

#[doc(hidden)]
pub fn __transform_open<T: Transform>(config: String) -> Result<(), wit::Error> {
    install(T::open(parse(&config)?)?);
    Ok(())
}

#[doc(hidden)]
pub fn __transform_map<T: Transform>(
    records: Vec<wit::Record>,
) -> Result<Vec<transform_world::exports::hstream::plugin::transform::Output>, wit::Error> {
    with::<T, _>(|t| {
        let mut out = Outputs {
            input: 0,
            out: Vec::with_capacity(records.len()),
        };
        for (i, r) in records.into_iter().enumerate() {
            out.input = i as u32;
            t.map(r.into(), &mut out)?;
        }
        Ok(out.out)
    })
}

/// Exports a [`Source`] implementation as the component's source.
#[macro_export]
macro_rules! export_source {
    ($t:ty) => {
        struct __HStreamSource;
        impl $crate::source_world::exports::hstream::plugin::source::Guest for __HStreamSource {
            fn describe() -> $crate::source_world::hstream::plugin::types::PluginInfo {
                $crate::__info(
                    <$t as $crate::Source>::NAME,
                    $crate::source_world::hstream::plugin::types::Kind::Source,
                    <$t as $crate::Source>::CONFIG_SCHEMA,
                    <$t as $crate::Source>::DESCRIPTION,
                )
            }
            fn open(
                config: String,
                offset: Option<String>,
            ) -> Result<(), $crate::source_world::hstream::plugin::types::Error> {
                $crate::__source_open::<$t>(config, offset)
            }
            fn next(
                max: u32,
            ) -> Result<
                $crate::source_world::exports::hstream::plugin::source::Batch,
                $crate::source_world::hstream::plugin::types::Error,
            > {
                $crate::__source_next::<$t>(max)
            }
        }
        $crate::source_world::__export_source_world!(__HStreamSource with_types_in $crate::source_world);
    };
}

/// Exports a [`Sink`] implementation as the component's sink.
#[macro_export]
macro_rules! export_sink {
    ($t:ty) => {
        struct __HStreamSink;
        impl $crate::sink_world::exports::hstream::plugin::sink::Guest for __HStreamSink {
            fn describe() -> $crate::source_world::hstream::plugin::types::PluginInfo {
                $crate::__info(
                    <$t as $crate::Sink>::NAME,
                    $crate::source_world::hstream::plugin::types::Kind::Sink,
                    <$t as $crate::Sink>::CONFIG_SCHEMA,
                    <$t as $crate::Sink>::DESCRIPTION,
                )
            }
            fn open(config: String) -> Result<(), $crate::source_world::hstream::plugin::types::Error> {
                $crate::__sink_open::<$t>(config)
            }
            fn write(
                records: Vec<$crate::source_world::hstream::plugin::types::Record>,
            ) -> Result<
                $crate::sink_world::exports::hstream::plugin::sink::Written,
                $crate::source_world::hstream::plugin::types::Error,
            > {
                $crate::__sink_write::<$t>(records)
            }
            fn flush() -> Result<(), $crate::source_world::hstream::plugin::types::Error> {
                $crate::__sink_flush::<$t>()
            }
        }
        $crate::sink_world::__export_sink_world!(__HStreamSink with_types_in $crate::sink_world);
    };
}

/// Exports a [`Transform`] implementation as the component's transform.
#[macro_export]
macro_rules! export_transform {
    ($t:ty) => {
        struct __HStreamTransform;
        impl $crate::transform_world::exports::hstream::plugin::transform::Guest for __HStreamTransform {
            fn describe() -> $crate::source_world::hstream::plugin::types::PluginInfo {
                $crate::__info(
                    <$t as $crate::Transform>::NAME,
                    $crate::source_world::hstream::plugin::types::Kind::Transform,
                    <$t as $crate::Transform>::CONFIG_SCHEMA,
                    <$t as $crate::Transform>::DESCRIPTION,
                )
            }
            fn open(config: String) -> Result<(), $crate::source_world::hstream::plugin::types::Error> {
                $crate::__transform_open::<$t>(config)
            }
            fn apply(
                records: Vec<$crate::source_world::hstream::plugin::types::Record>,
            ) -> Result<
                Vec<$crate::transform_world::exports::hstream::plugin::transform::Output>,
                $crate::source_world::hstream::plugin::types::Error,
            > {
                $crate::__transform_map::<$t>(records)
            }
        }
        $crate::transform_world::__export_transform_world!(__HStreamTransform with_types_in $crate::transform_world);
    };
}
