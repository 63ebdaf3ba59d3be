//! GET /metrics: after a generator → stream → blackhole run, a subscription and a PostgreSQL CDC
//! run, the exposition parses with the Prometheus client's strict OpenMetrics parser, every
//! metric of `server/metrics.txt` is there, and the counters equal the records moved; a source
//! falling behind shows it in its lag; the Grafana dashboard only queries listed metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use hstream_integration_tests::pg::{DATABASE, Postgres};
use hstream_integration_tests::*;
use hstream_proto as pb;
use serde_json::{Value, json};

/// The families of `server/metrics.txt`: name → type.
fn listed() -> BTreeMap<String, String> {
    std::fs::read_to_string(repo_root().join("server/metrics.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (n, t) = l.split_once(' ').unwrap();
            (n.to_owned(), t.trim().to_owned())
        })
        .collect()
}

async fn subscribe_earliest(c: &mut Client, id: &str, stream: &str) {
    c.create_subscription(pb::Subscription {
        subscription_id: id.into(),
        stream_name: stream.into(),
        ack_timeout_seconds: 60,
        max_unacked_records: 100_000,
        offset: pb::SpecialOffset::Earliest as i32,
        ..Default::default()
    })
    .await
    .unwrap();
}

pub(super) async fn scrape(server: &Server) -> Value {
    run_python("metrics_parse.py", &[&format!("http://{}/metrics", server.http)]).await
}

/// The value of the sample `name` whose labels include every pair of `labels`.
pub(super) fn sample(m: &Value, family: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    m[family]["samples"].as_array()?.iter().find_map(|s| {
        let ok = s[0] == name && labels.iter().all(|(k, v)| s[1][*k] == *v);
        ok.then(|| s[2].as_f64()).flatten()
    })
}

#[tokio::test]
async fn metrics_parse_list_everything_and_count_what_moved() {
    const N: u64 = 5_000;
    let pg = Postgres::start();
    pg.psql(
        DATABASE,
        "CREATE TABLE t (id int PRIMARY KEY, v text); ALTER TABLE t OWNER TO cdc",
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    create_connector(
        &mut c,
        "gen",
        "SOURCE",
        "generator",
        &json!({"stream": "gen", "count": N, "rate": 0}),
    )
    .await
    .unwrap();
    wait_connector_status(&c, "gen", "COMPLETED").await;
    create_connector(&mut c, "hole", "SINK", "blackhole", &json!({"stream": "gen"}))
        .await
        .unwrap();
    subscribe_earliest(&mut c, "sub", "gen").await;
    let consumer = TestConsumer::start(&c, "sub", "reader", true).await.unwrap();
    // A subscription nobody reads: its backlog is the whole stream.
    subscribe_earliest(&mut c, "idle", "gen").await;
    // An MQTT source, for its in-flight gauge.
    let broker = hstream_integration_tests::mosquitto::Mosquitto::start();
    let mq = config_with(
        broker.connector_config(),
        "mq",
        json!({"topic": "m/#", "client_id": "hs-metrics"}),
    );
    create_connector(&mut c, "mqsrc", "SOURCE", "mqtt", &mq).await.unwrap();
    // An Airbyte source that stops talking 50 records after its last STATE: its records since
    // the last STATE stay at 50.
    let script = repo_root().join("integration-tests/python/airbyte_fake_source.py");
    let ab = json!({"command": script.display().to_string(), "stream_prefix": "ab_",
        "config": {"count": 1000, "state_every": 100, "mode": "hang", "fail_at": 251, "hang_secs": 120}});
    create_connector(&mut c, "absrc", "SOURCE", "airbyte", &ab)
        .await
        .unwrap();
    let pg_cfg = config_with(pg.connector_config(), "pgcdc", json!({"table": "t"}));
    create_connector(&mut c, "pgsrc", "SOURCE", "postgresql", &pg_cfg)
        .await
        .unwrap();
    wait_connector_status(&c, "pgsrc", "RUNNING").await;
    pg.psql(DATABASE, "INSERT INTO t SELECT g, 'v' FROM generate_series(1, 1000) g");
    let moved = holds_within(Duration::from_secs(60), || async {
        consumer.count() as u64 == N
            && connector_report(&c, "hole").await["deliveredRecords"] == json!(N as f64)
            && connector_report(&c, "pgsrc").await["deliveredRecords"] == json!(1000.0)
    })
    .await;
    assert!(
        moved,
        "consumer {} of {N}; hole {}; pgsrc {}",
        consumer.count(),
        connector_report(&c, "hole").await,
        connector_report(&c, "pgsrc").await
    );
    // Acks are applied by the subscription's actor: wait until the metric shows them all.
    let probe = &server;
    wait_until(Duration::from_secs(30), "acks in the metrics", || async {
        let m = scrape(probe).await;
        sample(
            &m,
            "hstream_subscription_acked_records",
            "hstream_subscription_acked_records_total",
            &[("subscription", "sub")],
        ) == Some(N as f64)
    })
    .await;
    wait_until(Duration::from_secs(30), "the MQTT source subscribed", || async {
        connector_report(&c, "mqsrc").await["progress"]
            .as_str()
            .is_some_and(|p| p.contains("subscribed"))
    })
    .await;
    // Its in-flight gauge is set once a batch went out.
    hstream_integration_tests::mosquitto::publish(
        broker.port,
        "pub-metrics",
        vec![("m/1".to_owned(), bytes::Bytes::from_static(b"x"))],
        rumqttc::QoS::AtLeastOnce,
    )
    .await;
    wait_until(Duration::from_secs(30), "the MQTT record", || async {
        count_stream_records(&c, "mq").await == 1
    })
    .await;
    wait_until(Duration::from_secs(60), "the Airbyte source's 250 records", || async {
        count_stream_records(&c, "ab_events").await == 250
    })
    .await;
    let probe = &server;
    wait_until(Duration::from_secs(30), "records since the Airbyte STATE", || async {
        let m = scrape(probe).await;
        sample(
            &m,
            "hstream_connector_source_uncheckpointed_records",
            "hstream_connector_source_uncheckpointed_records",
            &[("connector", "absrc")],
        ) == Some(50.0)
    })
    .await;
    let m = scrape(&server).await;

    // Every listed family, with its type, and with samples (MySQL's lag needs a MySQL source,
    // which this test does not run).
    // The local store's own families (disk bytes, fsyncs, …) exist only on the local store.
    for (name, ty) in listed()
        .into_iter()
        // The local store's families on the local store, JetStream's on JetStream.
        .filter(|(n, _)| {
            if on_local_store() {
                !n.starts_with("hstream_jetstream_")
            } else {
                !n.starts_with("hstream_store_")
            }
        })
    {
        assert_eq!(m[&name]["type"], json!(ty), "{name} missing or of another type");
        let samples = m[&name]["samples"].as_array().map_or(0, Vec::len);
        assert!(
            samples > 0 || name == "hstream_connector_source_lag_seconds",
            "{name} has no sample"
        );
    }
    let backlog = sample(
        &m,
        "hstream_subscription_backlog_batches",
        "hstream_subscription_backlog_batches",
        &[("subscription", "idle")],
    );
    assert!(backlog.unwrap() >= 1.0, "the idle subscription's backlog: {backlog:?}");
    // In records: the whole stream for the idle one, nothing for the one read and acked.
    let backlog_records = |sub: &str| {
        sample(
            &m,
            "hstream_subscription_backlog_records",
            "hstream_subscription_backlog_records",
            &[("subscription", sub)],
        )
    };
    assert_eq!(backlog_records("idle"), Some(N as f64));
    assert_eq!(backlog_records("sub"), Some(0.0));
    assert_eq!(
        sample(
            &m,
            "hstream_subscription_backlog_batches",
            "hstream_subscription_backlog_batches",
            &[("subscription", "sub")]
        ),
        Some(0.0),
        "everything acked"
    );
    let records = |conn: &str| {
        sample(
            &m,
            "hstream_connector_records",
            "hstream_connector_records_total",
            &[("connector", conn)],
        )
    };
    assert_eq!(records("gen"), Some(N as f64));
    assert_eq!(records("hole"), Some(N as f64));
    assert_eq!(records("pgsrc"), Some(1000.0));
    let appended = |stream: &str| {
        sample(
            &m,
            "hstream_stream_appended_records",
            "hstream_stream_appended_records_total",
            &[("stream", stream)],
        )
    };
    assert_eq!(appended("gen"), Some(N as f64));
    assert_eq!(appended("pgcdc"), Some(1000.0));
    let latency_count = sample(
        &m,
        "hstream_stream_append_latency_seconds",
        "hstream_stream_append_latency_seconds_count",
        &[("stream", "gen")],
    )
    .unwrap();
    assert!(latency_count >= 1.0, "append latency observed");
    assert_eq!(
        sample(
            &m,
            "hstream_subscription_delivered_records",
            "hstream_subscription_delivered_records_total",
            &[("subscription", "sub")]
        ),
        Some(N as f64)
    );
    assert_eq!(
        sample(
            &m,
            "hstream_subscription_redelivered_records",
            "hstream_subscription_redelivered_records_total",
            &[("subscription", "sub")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &m,
            "hstream_connector_state",
            "hstream_connector_state",
            &[("connector", "gen"), ("state", "COMPLETED")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "hstream_connector_state",
            "hstream_connector_state",
            &[("connector", "gen"), ("state", "RUNNING")]
        ),
        Some(0.0)
    );
    assert!(
        sample(
            &m,
            "hstream_connector_source_lag_bytes",
            "hstream_connector_source_lag_bytes",
            &[("connector", "pgsrc")]
        )
        .is_some()
    );
    if on_local_store() {
        assert!(
            sample(
                &m,
                "hstream_store_fsync_latency_seconds",
                "hstream_store_fsync_latency_seconds_count",
                &[]
            )
            .unwrap()
                >= 1.0
        );
        assert!(sample(&m, "hstream_store_disk_bytes", "hstream_store_disk_bytes", &[]).unwrap() > 0.0);
    }
    assert!(sample(&m, "hstream_process_open_fds", "hstream_process_open_fds", &[]).unwrap() > 0.0);
    assert!(
        sample(
            &m,
            "hstream_process_resident_memory_bytes",
            "hstream_process_resident_memory_bytes",
            &[]
        )
        .unwrap()
            > 1e6
    );
    assert_eq!(
        sample(
            &m,
            "hstream_build",
            "hstream_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    // The CLI's live status: state, records, rates and lag, one line per refresh.
    let out = tokio::process::Command::new(workspace_bin("hstream"))
        .args([
            "--port",
            &server.addr.port().to_string(),
            "connector",
            "status",
            "pgsrc",
        ])
        .args(["--watch", "--interval", "0.2", "--count", "2"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("pgsrc RUNNING  1000 records") && lines[0].contains("lag "),
        "{text}"
    );
    assert!(lines[1].contains("rec/s") && lines[1].contains("B/s"), "{text}");
    drop(consumer);
}

#[tokio::test]
async fn metrics_show_a_source_falling_behind() {
    let pg = Postgres::start();
    pg.psql(
        DATABASE,
        "CREATE TABLE big (id int PRIMARY KEY, v text); ALTER TABLE big OWNER TO cdc",
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let cfg = config_with(pg.connector_config(), "bigcdc", json!({"table": "big"}));
    create_connector(&mut c, "pgsrc", "SOURCE", "postgresql", &cfg)
        .await
        .unwrap();
    // Past its (empty) snapshot: paused now, it resumes streaming rather than snapshotting.
    wait_until(Duration::from_secs(60), "pgsrc streaming", || async {
        connector_report(&c, "pgsrc").await["progress"]
            .as_str()
            .is_some_and(|p| p.starts_with("streaming"))
    })
    .await;
    let lag = |m: &Value| {
        sample(
            m,
            "hstream_connector_source_lag_bytes",
            "hstream_connector_source_lag_bytes",
            &[("connector", "pgsrc")],
        )
        .unwrap_or(0.0)
    };
    // While the source is paused the server's WAL grows; once resumed, the source reports
    // how far behind it is until it caught up.
    c.pause_connector(pb::PauseConnectorRequest { name: "pgsrc".into() })
        .await
        .unwrap();
    wait_connector_status(&c, "pgsrc", "STOPPED").await;
    pg.psql(
        DATABASE,
        "INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 200000) g",
    );
    c.resume_connector(pb::ResumeConnectorRequest { name: "pgsrc".into() })
        .await
        .unwrap();
    let max_seen = std::cell::Cell::new(0.0f64);
    let probe = &server;
    let caught_up = holds_within(Duration::from_secs(120), || {
        let seen = &max_seen;
        async move {
            let m = scrape(probe).await;
            let l = lag(&m);
            seen.set(seen.get().max(l));
            let done = sample(
                &m,
                "hstream_connector_records",
                "hstream_connector_records_total",
                &[("connector", "pgsrc")],
            ) == Some(200_000.0);
            done && l < 1_000_000.0
        }
    })
    .await;
    let max_seen = max_seen.get();
    assert!(caught_up, "the source caught up (max lag seen {max_seen})");
    assert!(max_seen > 10_000_000.0, "lag while behind: {max_seen} bytes");
}

/// Metric names an expression refers to.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(p) = expr[i..].find("hstream_") {
        let start = i + p;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.push(expr[start..end].to_owned());
        i = end;
    }
    out
}

#[test]
fn the_dashboard_imports_and_queries_only_listed_metrics() {
    let text = std::fs::read_to_string(repo_root().join("deploy/grafana/hstream-dashboard.json")).unwrap();
    let d: Value = serde_json::from_str(&text).expect("valid JSON");
    assert!(d["title"].is_string() && d["uid"].is_string() && d["schemaVersion"].is_number());
    let families = listed();
    let panels = d["panels"].as_array().unwrap();
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(rows, ["Server", "Streams", "Subscriptions", "Connectors"]);
    let mut queried = 0;
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {} has no targets", p["title"]));
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "panel {}: {expr} names no metric", p["title"]);
            for n in names {
                let family = ["_total", "_bucket", "_sum", "_count", "_info"]
                    .iter()
                    .find_map(|s| n.strip_suffix(s).filter(|f| families.contains_key(*f)))
                    .unwrap_or(&n);
                assert!(
                    families.contains_key(family),
                    "panel {}: {n} is not a listed metric",
                    p["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(
        queried >= families.len() - 1,
        "the dashboard shows (nearly) every metric: {queried}"
    );
    // The scrape config example points at the REST port's /metrics.
    let prom = std::fs::read_to_string(repo_root().join("deploy/prometheus/prometheus.yml")).unwrap();
    assert!(prom.contains("metrics_path: /metrics") && prom.contains(":6580"));
}

#[tokio::test]
async fn json_logs_write_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let data = dir.path().join("data");
    let server = Server::start_logged(&data, &["--log-format", "json"], &log, "info");
    let mut c = server.client().await;
    create_connector(
        &mut c,
        "gen",
        "SOURCE",
        "generator",
        &json!({"stream": "g", "count": 10, "rate": 0}),
    )
    .await
    .unwrap();
    wait_connector_status(&c, "gen", "COMPLETED").await;
    drop(c);
    // Off the runtime: the client's connection must be able to see the server's GOAWAY.
    let mut server = server;
    let status = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{text}");
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string() && v["target"].is_string(),
            "{l}"
        );
    }
    assert!(lines.iter().any(|l| l.contains("shutting down")), "{text}");
}
