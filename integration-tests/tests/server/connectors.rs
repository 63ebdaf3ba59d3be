//! HStream IO connectors over gRPC: lifecycle, at-least-once across crashes, restart policy,
//! config validation.

use std::collections::BTreeMap;
use std::time::Duration;

use hstream_integration_tests::*;
use hstream_proto as pb;
use prost::Message;
use tonic::Code;

pub(crate) fn create(name: &str, kind: &str, target: &str, config: serde_json::Value) -> pb::CreateConnectorRequest {
    pb::CreateConnectorRequest {
        name: name.into(),
        r#type: kind.into(),
        target: target.into(),
        config: config.to_string(),
    }
}

async fn get(c: &mut Client, name: &str) -> pb::Connector {
    c.get_connector(pb::GetConnectorRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn wait_status(c: &Client, name: &str, want: &str) {
    let probe = c.clone();
    wait_until(Duration::from_secs(30), &format!("{name} to be {want}"), || {
        let mut c = probe.clone();
        let name = name.to_owned();
        let want = want.to_owned();
        async move { get(&mut c, &name).await.status == want }
    })
    .await;
}

/// Every generator record of a one-shard stream, in append order: (key, seq, n).
pub(crate) async fn generated(c: &mut Client, stream: &str) -> Vec<(String, u64, u64)> {
    let shards = c
        .list_shards(pb::ListShardsRequest {
            stream_name: stream.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .shards;
    assert_eq!(shards.len(), 1, "the generator creates one-shard streams");
    let mut out = Vec::new();
    for rr in read_shard_to_tail(c, stream, shards[0].shard_id).await {
        for (_, _, payload) in decode(&rr) {
            let s = prost_types::Struct::decode(&payload[..]).expect("a JSON record");
            let j = struct_to_json(&s);
            out.push((
                j["key"].as_str().unwrap().to_owned(),
                j["seq"].as_f64().unwrap() as u64,
                j["n"].as_f64().unwrap() as u64,
            ));
        }
    }
    out
}

/// generator → stream → blackhole created over gRPC; counts add up; pause, resume, alter and
/// delete work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_to_blackhole_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let n = 20_000u64;
    let gen_cfg = serde_json::json!({"stream": "gen", "count": n, "rate": 0, "keys": 10, "batchSize": 500});
    let created = c
        .create_connector(create("gen1", "source", "generator", gen_cfg))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (created.r#type.as_str(), created.target.as_str()),
        ("SOURCE", "generator")
    );
    wait_status(&c, "gen1", "COMPLETED").await;
    let records = generated(&mut c, "gen").await;
    assert_eq!(records.len() as u64, n, "exactly count records");
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (k, seq, _) in &records {
        per_key.entry(k.clone()).or_default().push(*seq);
    }
    assert_eq!(per_key.len(), 10);
    assert!(
        per_key.values().all(|s| *s == (0..n / 10).collect::<Vec<_>>()),
        "a sequence number per key, in order"
    );

    c.create_connector(create(
        "hole",
        "SINK",
        "blackhole",
        serde_json::json!({"stream": "gen"}),
    ))
    .await
    .unwrap();
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "the blackhole to count every record", || {
        let mut c = probe.clone();
        async move { report(&get(&mut c, "hole").await)["deliveredRecords"] == serde_json::json!(n as f64) }
    })
    .await;
    assert_eq!(get(&mut c, "hole").await.status, "RUNNING");

    // Pause stops an unbounded generator: after STOPPED, the stream holds exactly what was
    // checkpointed (a graceful stop drains and checkpoints).
    let fast = serde_json::json!({"stream": "gen2", "rate": 20000, "keys": 3, "batchSize": 100});
    c.create_connector(create("gen2", "source", "generator", fast))
        .await
        .unwrap();
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "gen2 to write", || {
        let mut c = probe.clone();
        async move {
            report(&get(&mut c, "gen2").await)["deliveredRecords"]
                .as_f64()
                .unwrap_or(0.0)
                > 1000.0
        }
    })
    .await;
    c.pause_connector(pb::PauseConnectorRequest { name: "gen2".into() })
        .await
        .unwrap();
    let paused = get(&mut c, "gen2").await;
    assert_eq!(paused.status, "STOPPED");
    let checkpointed = report(&paused)["offset"]["next"].as_f64().unwrap() as usize;
    let in_stream = generated(&mut c, "gen2").await.len();
    assert_eq!(
        in_stream, checkpointed,
        "nothing appended after the pause, all of it checkpointed"
    );
    c.resume_connector(pb::ResumeConnectorRequest { name: "gen2".into() })
        .await
        .unwrap();
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "gen2 to write again", || {
        let mut c = probe.clone();
        async move { generated(&mut c, "gen2").await.len() > in_stream }
    })
    .await;
    let seqs: Vec<u64> = generated(&mut c, "gen2").await.iter().map(|r| r.2).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "resume continued exactly where the pause stopped"
    );

    // Alter: merged over the config, validated, and the task restarts with it.
    c.alter_connector_config(pb::AlterConnectorConfigRequest {
        name: "gen2".into(),
        config: r#"{"keys": 7}"#.into(),
    })
    .await
    .unwrap();
    let altered = get(&mut c, "gen2").await;
    assert_eq!(
        altered.status, "RUNNING",
        "alter returns once the task runs with the new config"
    );
    let cfg: serde_json::Value = serde_json::from_str(&altered.config).unwrap();
    assert_eq!((cfg["keys"].as_u64(), cfg["rate"].as_u64()), (Some(7), Some(20000)));
    let e = c
        .alter_connector_config(pb::AlterConnectorConfigRequest {
            name: "gen2".into(),
            config: r#"{"keys": "many"}"#.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("keys"), "{}", e.message());

    let names = |r: pb::ListConnectorsResponse| r.connectors.into_iter().map(|c| c.name).collect::<Vec<_>>();
    assert_eq!(
        names(
            c.list_connectors(pb::ListConnectorsRequest {})
                .await
                .unwrap()
                .into_inner()
        ),
        ["gen1", "gen2", "hole"]
    );
    for name in ["gen2", "hole", "gen1"] {
        c.delete_connector(pb::DeleteConnectorRequest { name: name.into() })
            .await
            .unwrap();
    }
    assert!(
        names(
            c.list_connectors(pb::ListConnectorsRequest {})
                .await
                .unwrap()
                .into_inner()
        )
        .is_empty()
    );
    let e = c
        .get_connector(pb::GetConnectorRequest { name: "gen2".into() })
        .await
        .unwrap_err();
    assert_eq!((e.code(), error_code(&e)), (Code::NotFound, 600));
    let spec = c
        .get_connector_spec(pb::GetConnectorSpecRequest {
            r#type: "source".into(),
            target: "generator".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .spec;
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    assert_eq!(spec["required"], serde_json::json!(["stream"]));
}

/// SIGKILL while a generator writes, several times: the task resumes from its checkpoint, no
/// sequence number is missing, and records repeat only from the checkpoint on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_resumes_from_its_checkpoint_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let cfg = serde_json::json!({"stream": "crashy", "rate": 20000, "keys": 4, "batchSize": 50});
    c.create_connector(create("g", "source", "generator", cfg))
        .await
        .unwrap();
    let mut checkpoints_before_kill = Vec::new();
    for round in 1..=3u64 {
        let probe = c.clone();
        let floor = checkpoints_before_kill.last().copied().unwrap_or(0) as f64 + 500.0;
        wait_until(Duration::from_secs(30), "a checkpoint past the last one", || {
            let mut c = probe.clone();
            async move {
                report(&get(&mut c, "g").await)["offset"]["next"]
                    .as_f64()
                    .unwrap_or(0.0)
                    > floor
            }
        })
        .await;
        let cp = report(&get(&mut c, "g").await)["offset"]["next"].as_f64().unwrap() as u64;
        checkpoints_before_kill.push(cp);
        server.kill();
        server.restart();
        c = server.client().await;
        wait_status(&c, "g", "RUNNING").await;
        let _ = round;
    }
    let probe = c.clone();
    let last = *checkpoints_before_kill.last().unwrap() as usize;
    wait_until(Duration::from_secs(30), "writing after the last restart", || {
        let mut c = probe.clone();
        async move { generated(&mut c, "crashy").await.len() > last + 500 }
    })
    .await;
    c.pause_connector(pb::PauseConnectorRequest { name: "g".into() })
        .await
        .unwrap();

    let records = generated(&mut c, "crashy").await;
    let ns: Vec<u64> = records.iter().map(|r| r.2).collect();
    // Restart points: where n does not follow its predecessor, it must restart at or after the
    // checkpoint seen before that kill (never earlier: nothing acknowledged is redone).
    let restarts: Vec<(u64, u64)> = ns
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        restarts.len() <= checkpoints_before_kill.len(),
        "one restart point per kill at most: {restarts:?}"
    );
    for ((_, resumed_at), cp) in restarts.iter().zip(&checkpoints_before_kill) {
        assert!(
            *resumed_at >= *cp,
            "resumed at {resumed_at}, before the checkpoint {cp} seen before the kill"
        );
    }
    let max = *ns.iter().max().unwrap();
    let present: std::collections::HashSet<u64> = ns.iter().copied().collect();
    let missing: Vec<u64> = (0..=max).filter(|n| !present.contains(n)).take(5).collect();
    assert!(missing.is_empty(), "sequence numbers missing: {missing:?}");
}

/// A retryable failure is retried with backoff; a config error parks the task as FAILED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policy_follows_the_error_class() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--connector-retry-base-ms", "50", "--connector-retry-max-ms", "500"],
    );
    let mut c = server.client().await;
    let cfg = serde_json::json!({"stream": "victim", "rate": 5000, "keys": 2});
    c.create_connector(create("g", "source", "generator", cfg))
        .await
        .unwrap();
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "the generator to write", || {
        let mut c = probe.clone();
        async move {
            report(&get(&mut c, "g").await)["deliveredRecords"]
                .as_f64()
                .unwrap_or(0.0)
                > 100.0
        }
    })
    .await;
    // Deleting its stream under it makes appends fail: an outside failure, so retried; the next
    // attempt recreates the stream.
    c.delete_stream(pb::DeleteStreamRequest {
        stream_name: "victim".into(),
        ignore_non_exist: false,
        force: false,
    })
    .await
    .unwrap();
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "a restart after the failure", || {
        let mut c = probe.clone();
        async move { report(&get(&mut c, "g").await)["restarts"].as_f64().unwrap_or(0.0) >= 1.0 }
    })
    .await;
    wait_until(Duration::from_secs(30), "the stream to be written again", || {
        let mut c = probe.clone();
        async move {
            c.get_stream(pb::GetStreamRequest { name: "victim".into() })
                .await
                .is_ok()
                && !generated(&mut c, "victim").await.is_empty()
        }
    })
    .await;
    let logs = c
        .get_connector_logs(pb::GetConnectorLogsRequest {
            name: "g".into(),
            begin: 0,
            count: 100,
        })
        .await
        .unwrap();
    let logs = logs.into_inner().logs;
    assert!(logs.contains("restart 1 after error"), "{logs}");
    assert_eq!(get(&mut c, "g").await.status, "RUNNING");

    // A sink on a stream that does not exist: a config error, not retried.
    c.create_connector(create("h", "sink", "blackhole", serde_json::json!({"stream": "ghost"})))
        .await
        .unwrap();
    wait_status(&c, "h", "FAILED").await;
    let logs = c
        .get_connector_logs(pb::GetConnectorLogsRequest {
            name: "h".into(),
            begin: 0,
            count: 100,
        })
        .await
        .unwrap();
    let logs = logs.into_inner().logs;
    assert!(
        logs.contains("FAILED") && logs.contains("\"ghost\" does not exist"),
        "{logs}"
    );
    assert_eq!(report(&get(&mut c, "h").await)["restarts"], serde_json::json!(0.0));
    // It stays failed across a restart of the server, until resumed.
    c.resume_connector(pb::ResumeConnectorRequest { name: "h".into() })
        .await
        .unwrap();
    wait_status(&c, "h", "FAILED").await;
}

/// Invalid configs are refused with the field path, and nothing starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_connector_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let bad = |cfg: &str| pb::CreateConnectorRequest {
        name: "x".into(),
        r#type: "source".into(),
        target: "generator".into(),
        config: cfg.into(),
    };
    for (cfg, mention) in [
        (r#"{"rate": 5}"#, "\"stream\" is a required property"),
        (r#"{"stream": "s", "rate": "fast"}"#, "rate: "),
        (r#"{"stream": "s", "bogus": 1}"#, "bogus"),
        (r#"{"stream": "s", "keys": 0}"#, "keys: "),
        ("not json", "config is not JSON"),
        ("[1]", "must be a JSON object"),
    ] {
        let e = c.create_connector(bad(cfg)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{cfg}: {e:?}");
        assert!(error_message(&e).contains(mention), "{cfg}: {}", e.message());
    }
    let mut req = bad(r#"{"stream": "s"}"#);
    req.target = "nope".into();
    let e = c.create_connector(req).await.unwrap_err();
    assert_eq!((e.code(), error_code(&e)), (Code::Unimplemented, 605));
    let mut req = bad(r#"{"stream": "s"}"#);
    req.r#type = "both".into();
    let e = c.create_connector(req).await.unwrap_err();
    assert_eq!(error_code(&e), 602);
    let mut req = bad(r#"{"stream": "s"}"#);
    req.name = "1x".into();
    assert_eq!(error_code(&c.create_connector(req).await.unwrap_err()), 603);
    assert!(
        c.list_connectors(pb::ListConnectorsRequest {})
            .await
            .unwrap()
            .into_inner()
            .connectors
            .is_empty()
    );
    assert!(
        c.get_stream(pb::GetStreamRequest { name: "s".into() }).await.is_err(),
        "nothing started"
    );
    c.create_connector(bad(r#"{"stream": "s", "count": 10}"#))
        .await
        .unwrap();
    let e = c.create_connector(bad(r#"{"stream": "s"}"#)).await.unwrap_err();
    assert_eq!((e.code(), error_code(&e)), (Code::AlreadyExists, 601));
}

/// The runtime runs standalone against a remote server over gRPC: a bounded generator completes,
/// and a second run with the same checkpoint directory resumes at the end instead of redoing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_runtime_over_grpc_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let cp = dir.path().join("runtime-checkpoints");
    let run = |count: u64| {
        let cfg =
            serde_json::json!({"stream": "remote", "count": count, "rate": 0, "keys": 3, "batchSize": 250}).to_string();
        let (endpoint, cp) = (server.endpoint(), cp.clone());
        async move {
            tokio::process::Command::new(workspace_bin("hstream-runtime"))
                .args([
                    "--server",
                    &endpoint,
                    "--name",
                    "g",
                    "--type",
                    "source",
                    "--target",
                    "generator",
                ])
                .arg("--checkpoints")
                .arg(&cp)
                .args(["--config", &cfg])
                .output()
                .await
                .expect("run hstream-runtime")
        }
    };
    let out = run(5000).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut c = server.client().await;
    assert_eq!(generated(&mut c, "remote").await.len(), 5000);
    // Same task, larger count: it continues from its checkpoint, so nothing repeats.
    let out = run(6000).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ns: Vec<u64> = generated(&mut c, "remote").await.iter().map(|r| r.2).collect();
    assert_eq!(ns, (0..6000).collect::<Vec<_>>());
    let bad = tokio::process::Command::new(workspace_bin("hstream-runtime"))
        .args([
            "--server",
            &server.endpoint(),
            "--name",
            "b",
            "--type",
            "source",
            "--target",
            "generator",
        ])
        .arg("--checkpoints")
        .arg(&cp)
        .args(["--config", r#"{"stream": "x", "rate": "fast"}"#])
        .output()
        .await
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("rate: "));
}
