//! WASM plugins end to end (plugins built by scripts/build-plugins.sh): the counter source as a
//! connector resumes from its checkpoint after a pause and after SIGKILL; the field filter
//! transform on a generator source and on a blackhole sink gives exact counts; runaway loops,
//! memory hogs and ungranted files and sockets fail their task with the reason while the server
//! keeps serving; the file sink writes where it is granted; a wrong ABI or kind is refused at
//! create; plugins uploaded over REST are usable by name.

use std::collections::BTreeMap;
use std::time::Duration;

use hstream_integration_tests::*;
use hstream_proto as pb;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

fn n_of(v: &Value, field: &str) -> u64 {
    v[field].as_f64().unwrap_or_else(|| panic!("{field} in {v}")) as u64
}

/// Every `n` of a counter stream, with how often each occurs.
async fn counts(c: &mut Client, stream: &str) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for (_, v) in read_json_stream(c, stream).await {
        *m.entry(n_of(&v, "n")).or_insert(0) += 1;
    }
    m
}

fn checkpointed_next(report: &Value) -> Option<u64> {
    report["offset"]["plugin"]["next"].as_f64().map(|f| f as u64)
}

async fn wait_next_past(c: &Client, name: &str, past: u64) -> u64 {
    let ok = holds_within(WAIT, || async {
        checkpointed_next(&connector_report(c, name).await).unwrap_or(0) > past
    })
    .await;
    let r = connector_report(c, name).await;
    assert!(ok, "{name} did not checkpoint past {past}: {r}");
    checkpointed_next(&r).unwrap_or(0)
}

/// The counter plugin through SQL: paused, everything appended is checkpointed and the resumed
/// task goes on from there (no record twice); SIGKILL mid-load and a restart lose nothing and
/// re-read only what followed the last checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_source_resumes_from_its_checkpoint_after_pause_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let limit: u64 = 400_000;
    let out = sql(
        &server,
        &format!(
            "CREATE SOURCE CONNECTOR cnt FROM wasm WITH (\"module\" = '{}', \"stream\" = 'counts', \
             \"config\" = '{{\"limit\": {limit}, \"batch\": 500}}');\n",
            wasm_plugin("counter_source")
        ),
    )
    .await;
    assert!(!out.to_lowercase().contains("error"), "{out}");
    wait_next_past(&c, "cnt", 20_000).await;
    c.pause_connector(pb::PauseConnectorRequest { name: "cnt".into() })
        .await
        .unwrap();
    wait_status(&c, "cnt", "STOPPED", Duration::from_secs(60)).await;
    let paused_at = checkpointed_next(&connector_report(&c, "cnt").await).unwrap();
    assert!(paused_at < limit, "finished before the pause");
    let got = counts(&mut c, "counts").await;
    assert_eq!(
        got.len() as u64,
        paused_at,
        "a graceful pause checkpoints all it appended"
    );
    assert!(got.values().all(|&k| k == 1) && got.keys().last() == Some(&(paused_at - 1)));

    c.resume_connector(pb::ResumeConnectorRequest { name: "cnt".into() })
        .await
        .unwrap();
    let before_kill = wait_next_past(&c, "cnt", paused_at + 20_000).await;
    assert!(before_kill < limit, "finished before the kill");
    server.kill();
    server.restart();
    let mut c = server.client().await;
    wait_status(&c, "cnt", "COMPLETED", WAIT).await;
    let got = counts(&mut c, "counts").await;
    assert_eq!(got.len() as u64, limit, "every n arrived");
    assert_eq!((got.keys().next(), got.keys().last()), (Some(&0), Some(&(limit - 1))));
    // The pause resumed exactly; the kill re-reads only what followed the last checkpoint (a
    // restart from scratch would repeat all `before_kill` records at least).
    let twice: Vec<u64> = got.iter().filter(|(_, k)| **k > 1).map(|(n, _)| *n).collect();
    assert!(
        twice.iter().all(|&n| n >= paused_at),
        "records before the pause came twice"
    );
    assert!(
        (twice.len() as u64) < before_kill - paused_at,
        "{} re-read",
        twice.len()
    );
    assert!(got.values().all(|&k| k <= 2));
}

/// The field filter on a generator source (filter, rename, remove; and routing by key) and on a
/// blackhole sink: exact counts, exact shapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transforms_filter_and_reshape_records_into_streams_and_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let filter = wasm_plugin("field_filter");
    // SQL, Kafka Connect style: keep n >= 3000 of 10,000, n → num, data removed.
    let out = sql(
        &server,
        &format!(
            "CREATE SOURCE CONNECTOR gen FROM generator WITH (\"stream\" = 'kept', \"count\" = 10000, \"rate\" = 0, \
             \"keys\" = 4, \"transforms\" = 'keep', \"transforms.keep.module\" = '{filter}', \
             \"transforms.keep.config\" = '{{\"filter\": {{\"field\": \"n\", \"greater_than\": 2999}}, \
             \"rename\": {{\"n\": \"num\"}}, \"remove\": [\"data\"]}}');\n"
        ),
    )
    .await;
    assert!(!out.to_lowercase().contains("error"), "{out}");
    wait_status(&c, "gen", "COMPLETED", WAIT).await;
    let kept = read_json_stream(&mut c, "kept").await;
    assert_eq!(kept.len(), 7000);
    let mut nums: Vec<u64> = kept.iter().map(|(_, v)| n_of(v, "num")).collect();
    nums.sort_unstable();
    assert_eq!(nums, (3000..10_000).collect::<Vec<u64>>());
    for (key, v) in &kept {
        let fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(fields, ["key", "num", "seq"], "{v}");
        assert_eq!(v["key"].as_str(), Some(key.as_str()));
    }
    let shown = connector_report(&c, "gen").await;
    assert_eq!(shown["deliveredRecords"].as_f64(), Some(7000.0), "{shown}");

    // JSON config (REST/gRPC form): route each record to a stream named after its key.
    let config = json!({"stream": "unused", "count": 1000, "rate": 0, "keys": 3, "transforms": [
        {"name": "route", "module": filter, "config": {"route": {"field": "$key", "prefix": "by_"}}}]});
    create_connector(&mut c, "router", "SOURCE", "generator", &config)
        .await
        .unwrap();
    wait_status(&c, "router", "COMPLETED", WAIT).await;
    let mut per_key = Vec::new();
    for k in ["k0", "k1", "k2"] {
        let records = read_json_stream(&mut c, &format!("by_{k}")).await;
        assert!(records.iter().all(|(_, v)| v["key"] == k));
        per_key.push(records.len());
    }
    assert_eq!(per_key, vec![334, 333, 333]);
    assert_eq!(count_stream_records(&c, "unused").await, 0);

    // On a sink: of the 7,000 kept records those with num < 5000 reach the blackhole.
    let config = json!({"stream": "kept", "transforms": [
        {"name": "low", "module": filter, "config": {"filter": {"field": "num", "less_than": 5000}}}]});
    create_connector(&mut c, "hole", "SINK", "blackhole", &config)
        .await
        .unwrap();
    let ok = holds_within(WAIT, || async {
        connector_report(&c, "hole").await["deliveredRecords"].as_f64() == Some(2000.0)
    })
    .await;
    assert!(ok, "{}", connector_report(&c, "hole").await);
    // Every record was read: the position is past the last batch of each shard (dropped
    // records included), and no more were delivered.
    let mut ends = BTreeMap::new();
    for shard in stream_shards(&mut c, "kept").await {
        let last = read_shard_to_tail(&mut c, "kept", shard.shard_id)
            .await
            .iter()
            .filter_map(|r| r.record_ids.last().map(|id| id.batch_id))
            .max()
            .unwrap_or(0);
        ends.insert(shard.shard_id.to_string(), last + 1);
    }
    let ok = holds_within(WAIT, || async {
        let r = connector_report(&c, "hole").await;
        ends.iter()
            .all(|(shard, end)| r["offset"]["shards"][shard].as_f64() == Some(*end as f64))
    })
    .await;
    assert!(ok, "not at {ends:?}: {}", connector_report(&c, "hole").await);
    assert_eq!(
        connector_report(&c, "hole").await["deliveredRecords"].as_f64(),
        Some(2000.0)
    );

    // A transform on a sink may not route.
    let config = json!({"stream": "kept", "transforms": [
        {"name": "route", "module": filter, "config": {"route": {"field": "key"}}}]});
    create_connector(&mut c, "badhole", "SINK", "blackhole", &config)
        .await
        .unwrap();
    wait_status(&c, "badhole", "FAILED", WAIT).await;
    let r = connector_report(&c, "badhole").await;
    assert!(
        r["lastError"]
            .as_str()
            .unwrap_or_default()
            .contains("a sink's transforms cannot route"),
        "{r}"
    );
}

async fn failed_with(c: &Client, name: &str, words: &str) -> String {
    wait_status(c, name, "FAILED", WAIT).await;
    let r = connector_report(c, name).await;
    let e = r["lastError"].as_str().unwrap_or_default().to_owned();
    assert!(e.contains(words), "{name}: wanted {words:?} in {r}");
    e
}

/// A plugin that spins or allocates without end is stopped by its limits and its task FAILED
/// with that reason; one that reaches for a file or socket it was not granted gets an error;
/// the server keeps serving throughout; the file sink writes inside its grant and nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_limits_and_grants_fail_the_task_not_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let misbehave = wasm_plugin("misbehave");
    let source = |behaviour: Value, extra: Value| {
        let mut cfg = json!({"module": misbehave, "stream": "mis", "config": behaviour});
        for (k, v) in extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        cfg
    };
    create_connector(
        &mut c,
        "spin",
        "SOURCE",
        "wasm",
        &source(json!({"behaviour": "loop"}), json!({"call_timeout_ms": 300})),
    )
    .await
    .unwrap();
    failed_with(
        &c,
        "spin",
        "exceeded its time limit of 300 ms in next (call_timeout_ms)",
    )
    .await;
    create_connector(
        &mut c,
        "hog",
        "SOURCE",
        "wasm",
        &source(json!({"behaviour": "alloc"}), json!({"memory_limit_mb": 32})),
    )
    .await
    .unwrap();
    failed_with(&c, "hog", "exceeded its memory limit of 32 MiB in next").await;

    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, "do not read").unwrap();
    let cfg = source(
        json!({"behaviour": "open_file", "path": secret.display().to_string()}),
        json!({}),
    );
    create_connector(&mut c, "peek", "SOURCE", "wasm", &cfg).await.unwrap();
    failed_with(&c, "peek", &format!("open {}: ", secret.display())).await;
    // What the plugin printed is in its task's log.
    let ok = holds_within(WAIT, || async {
        let logs = task_logs(&c, "peek").await;
        logs.contains("misbehave: open_file (stdout)") && logs.contains("misbehave: open_file (stderr)")
    })
    .await;
    assert!(ok, "{}", task_logs(&c, "peek").await);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cfg = source(json!({"behaviour": "connect", "addr": addr}), json!({}));
    create_connector(&mut c, "dial", "SOURCE", "wasm", &cfg).await.unwrap();
    failed_with(&c, "dial", &format!("connect {addr}: ")).await;
    assert!(listener.accept().is_err(), "an ungranted connect reached the listener");
    assert_eq!(count_stream_records(&c, "mis").await, 0, "nothing was read");

    // The server is fine: a stream, an append, a working plugin.
    create_connector(
        &mut c,
        "ok",
        "SOURCE",
        "wasm",
        &json!({"module": wasm_plugin("counter_source"), "stream": "ok", "config": {"limit": 1000}}),
    )
    .await
    .unwrap();
    wait_status(&c, "ok", "COMPLETED", WAIT).await;
    assert_eq!(counts(&mut c, "ok").await.len(), 1000);

    // The file sink appends inside its granted directory: one line per record.
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.jsonl");
    let cfg = json!({"module": wasm_plugin("file_sink"), "stream": "ok",
        "config": {"path": out.display().to_string()}, "grant_dirs": out_dir.path().display().to_string()});
    create_connector(&mut c, "file", "SINK", "wasm", &cfg).await.unwrap();
    let ok = holds_within(WAIT, || async {
        std::fs::read_to_string(&out).is_ok_and(|t| t.lines().count() == 1000)
    })
    .await;
    assert!(ok, "{}", connector_report(&c, "file").await);
    let mut ns: Vec<u64> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| n_of(&serde_json::from_str::<Value>(l).unwrap()["value"], "n"))
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..1000).collect::<Vec<u64>>());
    // Outside its grant it cannot create the file.
    let elsewhere = secret_dir.path().join("out.jsonl");
    let cfg = json!({"module": wasm_plugin("file_sink"), "stream": "ok",
        "config": {"path": elsewhere.display().to_string()}, "grant_dirs": out_dir.path().display().to_string()});
    create_connector(&mut c, "file2", "SINK", "wasm", &cfg).await.unwrap();
    failed_with(&c, "file2", &format!("cannot open {}", elsewhere.display())).await;
    assert!(!elsewhere.exists());
}

/// A module built for another ABI, or of the wrong kind for its place, is refused at create with
/// a message that says so, and nothing is created; a plugin's config is checked against its
/// schema; uploaded plugins are named by `module`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_abi_or_kind_is_refused_at_create_and_uploads_work_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let out = sql(
        &server,
        &format!(
            "CREATE SOURCE CONNECTOR v2 FROM wasm WITH (\"module\" = '{}', \"stream\" = 's');\n",
            wasm_plugin("abi_v2")
        ),
    )
    .await;
    assert!(
        out.contains("was built for plugin ABI hstream:plugin@2.0.0; this runtime implements hstream:plugin@1.0.0"),
        "{out}"
    );
    let refused = |module: String, kind: &str, target: &str, extra: Value| {
        let mut cfg = json!({"module": module, "stream": "s"});
        for (k, v) in extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let mut c = c.clone();
        let (kind, target) = (kind.to_owned(), target.to_owned());
        async move {
            let e = create_connector(&mut c, "x", &kind, &target, &cfg).await.unwrap_err();
            error_message(&e)
        }
    };
    let e = refused(wasm_plugin("field_filter"), "SOURCE", "wasm", json!({})).await;
    assert!(
        e.contains("is a transform plugin (\"field-filter\"); a wasm source connector needs a source plugin"),
        "{e}"
    );
    let e = refused(wasm_plugin("counter_source"), "SINK", "wasm", json!({})).await;
    assert!(
        e.contains("is a source plugin (\"counter\"); a wasm sink connector needs a sink plugin"),
        "{e}"
    );
    let e = refused(
        wasm_plugin("counter_source"),
        "SOURCE",
        "wasm",
        json!({"config": {"limit": "many"}}),
    )
    .await;
    assert!(e.contains("config.limit: "), "{e}");
    let e = refused(
        wasm_plugin("counter_source"),
        "SOURCE",
        "wasm",
        json!({"transforms": [{"name": "t", "module": wasm_plugin("counter_source")}]}),
    )
    .await;
    assert!(
        e.contains("transforms.t: module: ") && e.contains("a transform needs a transform plugin"),
        "{e}"
    );
    let e = refused(
        wasm_plugin("counter_source"),
        "SOURCE",
        "wasm",
        json!({"transforms.t.module": "x"}),
    )
    .await;
    assert!(
        e.contains("transforms.t.module: not an option of a listed transform"),
        "{e}"
    );
    // Nothing may be granted the server's own data, nor a directory holding it.
    for dir in [dir.path().to_path_buf(), std::path::PathBuf::from("/")] {
        let grant = json!({"grant_dirs": dir.display().to_string(), "config": {"path": "/x"}});
        let e = refused(wasm_plugin("file_sink"), "SINK", "wasm", grant).await;
        assert!(e.contains("would give the plugin the server's data directory"), "{e}");
    }
    let e = refused("/nonexistent/p.wasm".into(), "SOURCE", "wasm", json!({})).await;
    assert!(e.contains("module: cannot read /nonexistent/p.wasm"), "{e}");
    let list = c
        .list_connectors(pb::ListConnectorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .connectors;
    assert!(list.is_empty(), "a refused connector was created: {list:?}");

    // Upload over REST, then use by name.
    let bytes = std::fs::read(wasm_plugin("counter_source")).unwrap();
    let (status, body) = put_bytes(server.http, "/wasm-plugins/counter", &bytes).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["kind"].as_str(), body["plugin"].as_str()),
        (Some("source"), Some("counter"))
    );
    let (status, body) = put_bytes(server.http, "/wasm-plugins/junk", b"not wasm").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("is not WebAssembly"),
        "{body}"
    );
    let (status, body) = put_bytes(
        server.http,
        "/wasm-plugins/old",
        &std::fs::read(wasm_plugin("abi_v2")).unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (_, list) = http(server.http, "GET", "/wasm-plugins", None).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["counter"], "only the valid upload is kept: {list}");
    let cfg = json!({"module": "counter", "stream": "by_name", "config": {"limit": 250}});
    create_connector(&mut c, "named", "SOURCE", "wasm", &cfg).await.unwrap();
    wait_status(&c, "named", "COMPLETED", WAIT).await;
    assert_eq!(counts(&mut c, "by_name").await.len(), 250);
}

/// PUT of raw bytes (application/wasm); returns status and JSON body.
async fn put_bytes(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/wasm\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap();
    let payload = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(payload).unwrap_or(Value::Null))
}
