//! The host against the example and test plugins of `plugins/` (built by
//! scripts/build-plugins.sh, which scripts/test.sh runs first).

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::instance::{Instance, from_wit, to_wit};
use super::transforms::{Chain, TransformSpec};
use super::*;
use crate::connector::{PayloadFlag, Record};
use crate::options::ConnectorJson;

pub fn plugin(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: build the plugins with scripts/build-plugins.sh",
        p.display()
    );
    p.display().to_string()
}

async fn started(name: &str, sandbox: Sandbox) -> Instance {
    Instance::start(load(&plugin(name)).await.unwrap(), sandbox)
        .await
        .unwrap()
}

fn json_of(r: &Record) -> Value {
    assert_eq!(r.flag, PayloadFlag::Json);
    crate::structs::decode_json(&r.payload).unwrap()
}

#[tokio::test]
async fn counter_describes_itself_and_resumes_from_its_offset() {
    let l = load(&plugin("counter_source")).await.unwrap();
    assert_eq!((l.kind, l.name.as_str()), (PluginKind::Source, "counter"));
    assert!(check_plugin_config(&l, "config", &json!({"limit": 5})).is_ok());
    let e = check_plugin_config(&l, "config", &json!({"limit": -1})).unwrap_err();
    assert!(e.message.starts_with("config.limit: "), "{e}");
    let e = check_plugin_config(&l, "config", &json!({"bogus": 1})).unwrap_err();
    assert!(e.message.contains("bogus"), "{e}");
    // Cached by content: the same compiled plugin again.
    assert!(Arc::ptr_eq(&l, &load(&plugin("counter_source")).await.unwrap()));

    let i = started("counter_source", Sandbox::default()).await;
    i.call(|g| g.source_open(r#"{"limit": 5, "batch": 2}"#, None))
        .await
        .unwrap();
    let b = i.call(|g| g.source_next(100)).await.unwrap();
    assert_eq!(b.offset.as_deref(), Some(r#"{"next":2}"#));
    let recs: Vec<Record> = b.records.into_iter().map(|r| from_wit("counter", r).unwrap()).collect();
    assert_eq!(
        recs.iter().map(json_of).collect::<Vec<_>>(),
        vec![json!({"n": 0.0}), json!({"n": 1.0})]
    );
    assert_eq!((recs[0].key.as_str(), recs[1].key.as_str()), ("k0", "k1"));

    // A new instance opened at that offset goes on from it, and completes at the limit.
    let i = started("counter_source", Sandbox::default()).await;
    i.call(|g| g.source_open(r#"{"limit": 5, "batch": 2}"#, Some(r#"{"next":2}"#)))
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let b = i.call(|g| g.source_next(100)).await.unwrap();
        for r in b.records {
            seen.push(json_of(&from_wit("counter", r).unwrap())["n"].as_f64().unwrap() as u64);
        }
        if b.done {
            break;
        }
    }
    assert_eq!(seen, vec![2, 3, 4]);
}

#[tokio::test]
async fn wrong_abi_kind_and_non_components_are_refused_with_their_reason() {
    let e = load(&plugin("abi_v2")).await.err().unwrap();
    assert!(
        e.message.contains("built for plugin ABI hstream:plugin@2.0.0")
            && e.message.contains("implements hstream:plugin@1.0.0"),
        "{e}"
    );
    let f = load(&plugin("field_filter")).await.unwrap();
    let e = expect_kind(&f, PluginKind::Source, "a wasm source connector").unwrap_err();
    assert!(
        e.message
            .contains("is a transform plugin (\"field-filter\"); a wasm source connector needs a source plugin"),
        "{e}"
    );
    let e = load_bytes(b"\0asm\x01\0\0\0", "core.wasm").err().unwrap();
    assert!(e.message.contains("core WebAssembly module, not a component"), "{e}");
    let e = load_bytes(b"hello", "text.wasm").err().unwrap();
    assert!(e.message.contains("is not WebAssembly"), "{e}");
    let e = load("/nonexistent/x.wasm").await.err().unwrap();
    assert!(e.message.starts_with("module: cannot read /nonexistent/x.wasm"), "{e}");
    let e = resolve_module("no such!").unwrap_err();
    assert!(e.message.contains("neither a path"), "{e}");
}

fn limits(memory_mb: u32, timeout_ms: u64) -> Sandbox {
    SandboxOptions {
        memory_limit_mb: Some(memory_mb),
        call_timeout_ms: Some(timeout_ms),
        ..Default::default()
    }
    .sandbox()
}

#[tokio::test]
async fn a_runaway_loop_is_stopped_at_its_deadline() {
    let i = started("misbehave", limits(64, 300)).await;
    i.call(|g| g.source_open(r#"{"behaviour": "loop"}"#, None))
        .await
        .unwrap();
    let t = Instant::now();
    let e = i.call(|g| g.source_next(10)).await.unwrap_err();
    let took = t.elapsed();
    assert!(
        e.message
            .contains("exceeded its time limit of 300 ms in next (call_timeout_ms): stopped"),
        "{e}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(!e.retry, "a runaway plugin is not restarted: {e:?}");
    // The instance is not entered again.
    let e = i.call(|g| g.source_next(10)).await.unwrap_err();
    assert!(
        e.message
            .contains("was stopped: plugin misbehave exceeded its time limit"),
        "{e}"
    );
}

#[tokio::test]
async fn allocating_past_the_memory_limit_is_stopped() {
    let i = started("misbehave", limits(16, 10_000)).await;
    i.call(|g| g.source_open(r#"{"behaviour": "alloc"}"#, None))
        .await
        .unwrap();
    let e = i.call(|g| g.source_next(10)).await.unwrap_err();
    assert!(e.message.contains("exceeded its memory limit of 16 MiB in next"), "{e}");
    // Another instance of the same plugin is unaffected.
    let ok = started("counter_source", limits(16, 10_000)).await;
    ok.call(|g| g.source_open("{}", None)).await.unwrap();
    assert_eq!(ok.call(|g| g.source_next(3)).await.unwrap().records.len(), 3);
}

async fn misbehave(config: Value, sandbox: Sandbox) -> Result<Value, ConnectorError> {
    let i = started("misbehave", sandbox).await;
    let text = config.to_string();
    i.call(move |g| g.source_open(&text, None)).await?;
    let b = i.call(|g| g.source_next(1)).await?;
    Ok(json_of(
        &from_wit("misbehave", b.records.into_iter().next().unwrap()).unwrap(),
    ))
}

#[tokio::test]
async fn files_and_sockets_are_reachable_only_when_granted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.txt");
    std::fs::File::create(&path).unwrap().write_all(b"inside").unwrap();
    let cfg = json!({"behaviour": "open_file", "path": path.display().to_string()});
    let e = misbehave(cfg.clone(), Sandbox::default()).await.unwrap_err();
    assert!(
        e.message
            .starts_with(&format!("plugin misbehave: open {}: ", path.display())),
        "{e}"
    );
    let granted = SandboxOptions {
        grant_dirs: Some(crate::options::NameList::Text(dir.path().display().to_string())),
        ..Default::default()
    };
    assert_eq!(misbehave(cfg, granted.sandbox()).await.unwrap()["content"], "inside");
    // A granted directory gives nothing outside it.
    let other = tempfile::tempdir().unwrap();
    let beside = other.path().join("beside.txt");
    std::fs::write(&beside, "outside").unwrap();
    let outside = json!({"behaviour": "open_file", "path": beside.display().to_string()});
    let e = misbehave(outside, granted.sandbox()).await.unwrap_err();
    assert!(
        e.message
            .starts_with(&format!("plugin misbehave: open {}: ", beside.display())),
        "{e}"
    );

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cfg = json!({"behaviour": "connect", "addr": addr});
    let e = misbehave(cfg.clone(), Sandbox::default()).await.unwrap_err();
    assert!(
        e.message.starts_with(&format!("plugin misbehave: connect {addr}: ")),
        "{e}"
    );
    assert!(listener.accept().is_err(), "an ungranted connect reached the listener");
    let granted = SandboxOptions {
        grant_connect: Some(crate::options::NameList::Text(addr.clone())),
        ..Default::default()
    };
    assert_eq!(misbehave(cfg, granted.sandbox()).await.unwrap()["connected"], addr);
    // Granting one address does not open others.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = json!({"behaviour": "connect", "addr": other.local_addr().unwrap().to_string()});
    assert!(misbehave(cfg, granted.sandbox()).await.is_err());
}

#[tokio::test]
async fn a_transform_chain_filters_reshapes_and_routes() {
    let spec = |name: &str, config: Value| TransformSpec {
        name: name.into(),
        module: plugin("field_filter"),
        config: ConnectorJson::Object(config.as_object().unwrap().clone()),
        memory_limit_mb: None,
        call_timeout_ms: None,
        grant_dirs: None,
        grant_connect: None,
    };
    let chain = Chain::open(&[
        spec(
            "keep",
            json!({"filter": {"field": "n", "greater_than": 2}, "rename": {"n": "m"}}),
        ),
        spec(
            "route",
            json!({"route": {"field": "$key", "prefix": "to_"}, "remove": ["x"]}),
        ),
    ])
    .await
    .unwrap();
    let records: Vec<Record> = (0..6)
        .map(|n| {
            Record::new(
                format!("k{}", n % 2),
                PayloadFlag::Json,
                crate::structs::encode_json(&json!({"n": n, "x": "drop me"})),
            )
        })
        .collect();
    let out = chain.apply_source(vec![(None, records)], "own").await.unwrap();
    let shown: Vec<(String, Vec<Value>)> = out
        .iter()
        .map(|(s, rs)| (s.as_deref().unwrap().to_owned(), rs.iter().map(json_of).collect()))
        .collect();
    assert_eq!(
        shown,
        vec![
            ("to_k1".into(), vec![json!({"m": 3.0}), json!({"m": 5.0})]),
            ("to_k0".into(), vec![json!({"m": 4.0})]),
        ]
    );
    // A raw record is not JSON: the filter says so (its error names the record).
    let raw = vec![Record::new("r", PayloadFlag::Raw, bytes::Bytes::from_static(b"\x01"))];
    let e = chain.apply_source(vec![(None, raw)], "own").await.unwrap_err();
    assert!(e.message.contains("record \"r\" is not JSON"), "{e}");
    // The wire form of a record round-trips.
    let r = Record::new(
        "k",
        PayloadFlag::Json,
        crate::structs::encode_json(&json!({"a": [1, "b"]})),
    );
    let back = from_wit("t", to_wit(&r.key, r.flag, &r.payload, &r.attributes).unwrap()).unwrap();
    assert_eq!(json_of(&back), json!({"a": [1.0, "b"]}));
}

#[tokio::test]
async fn a_plugin_config_is_masked_whole_until_the_plugin_is_loaded() {
    // A copy at a path of its own: nothing has loaded it yet in this process.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("sink.wasm");
    std::fs::copy(plugin("file_sink"), &copy).unwrap();
    let module = copy.display().to_string();
    let t = crate::builtin().get(crate::Kind::Sink, "wasm").unwrap();
    let cfg = json!({"module": module, "stream": "s", "config": {"path": "/x/out.jsonl"}});
    let shown = crate::secret::redact(&t.config_schema(&cfg), &cfg);
    assert_eq!(shown["config"], json!(crate::secret::MASK), "{shown}");
    t.check(&json!({"module": module, "stream": "s", "config": {"path": "/x/out.jsonl"}}))
        .await
        .unwrap();
    // Loaded: only what the plugin's schema marks secret would be masked (nothing here).
    let shown = crate::secret::redact(&t.config_schema(&cfg), &cfg);
    assert_eq!(shown["config"], json!({"path": "/x/out.jsonl"}), "{shown}");
}

#[tokio::test]
async fn a_plugin_blocked_in_the_host_is_abandoned_not_waited_on() {
    let i = started("misbehave", limits(64, 200)).await;
    i.call(|g| g.source_open(r#"{"behaviour": "sleep"}"#, None))
        .await
        .unwrap();
    let t = Instant::now();
    let e = i.call(|g| g.source_next(1)).await.unwrap_err();
    assert!(
        e.message.contains("did not return within") && e.message.contains("abandoned"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let e = i.call(|g| g.source_next(1)).await.unwrap_err();
    assert!(e.message.contains("was abandoned"), "{e}");
}

fn filter_spec(name: &str, config: Value, memory_mb: Option<u32>) -> TransformSpec {
    TransformSpec {
        name: name.into(),
        module: plugin("field_filter"),
        config: ConnectorJson::Object(config.as_object().unwrap().clone()),
        memory_limit_mb: memory_mb,
        call_timeout_ms: None,
        grant_dirs: None,
        grant_connect: None,
    }
}

fn numbered(key: &str, n: u64, pad: usize) -> Record {
    Record::new(
        key,
        PayloadFlag::Json,
        crate::structs::encode_json(&json!({"n": n, "pad": "x".repeat(pad)})),
    )
}

#[tokio::test]
async fn routed_records_keep_their_emit_order_and_big_batches_are_split() {
    // Everything routed by key: emits to a, b, a come out in emit order, and a transform
    // naming the source's own stream is the same as naming none.
    let chain = Chain::open(&[filter_spec(
        "all",
        json!({"route": {"field": "$key", "prefix": ""}}),
        None,
    )])
    .await
    .unwrap();
    let segments = vec![
        (Some(Arc::<str>::from("a")), vec![numbered("x", 0, 0)]),
        (
            Some(Arc::<str>::from("b")),
            vec![numbered("x", 1, 0), numbered("own", 2, 0)],
        ),
        (
            Some(Arc::<str>::from("a")),
            vec![numbered("x", 3, 0), numbered("own", 4, 0)],
        ),
    ];
    let out = chain.apply_source(segments, "own").await.unwrap();
    let shown: Vec<(Option<String>, Vec<f64>)> = out
        .iter()
        .map(|(s, rs)| {
            (
                s.as_deref().map(str::to_owned),
                rs.iter().map(|r| json_of(r)["n"].as_f64().unwrap()).collect(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![(Some("x".into()), vec![0.0, 1.0, 3.0]), (None, vec![2.0, 4.0])]
    );

    // 24 MiB of records through a transform limited to 16 MiB: handed over in pieces.
    let chain = Chain::open(&[filter_spec(
        "keep",
        json!({"filter": {"field": "n", "less_than": 1e12}}),
        Some(16),
    )])
    .await
    .unwrap();
    let big: Vec<Record> = (0..24 * 1024).map(|n| numbered("k", n, 1000)).collect();
    let out = chain.apply_source(vec![(None, big)], "own").await.unwrap();
    assert_eq!(out.len(), 1);
    let ns: Vec<u64> = out[0]
        .1
        .iter()
        .map(|r| json_of(r)["n"].as_f64().unwrap() as u64)
        .collect();
    assert_eq!(ns, (0..24 * 1024).collect::<Vec<u64>>());
}

#[tokio::test]
async fn transform_configs_are_masked_until_their_plugins_are_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("filter.wasm");
    std::fs::copy(plugin("field_filter"), &copy).unwrap();
    let t = crate::builtin().get(crate::Kind::Source, "generator").unwrap();
    let cfg = json!({"stream": "s", "transforms": [
        {"name": "f", "module": copy.display().to_string(), "config": {"remove": ["token"]}}]});
    let shown = crate::secret::redact(&t.config_schema(&cfg), &cfg);
    assert_eq!(shown["transforms"][0]["config"], json!(crate::secret::MASK), "{shown}");
    assert_eq!(shown["transforms"][0]["module"], json!(copy.display().to_string()));
    t.check(&cfg).await.unwrap();
    let shown = crate::secret::redact(&t.config_schema(&cfg), &cfg);
    assert_eq!(
        shown["transforms"][0]["config"],
        json!({"remove": ["token"]}),
        "{shown}"
    );
    // Limits out of range are refused by name.
    let bad = json!({"stream": "s", "transforms": [{"name": "f", "module": "m.wasm", "memory_limit_mb": 0}]});
    let e = t.validate(&bad).unwrap_err();
    assert_eq!(e[0].path, "transforms.f.memory_limit_mb", "{e:?}");
}
