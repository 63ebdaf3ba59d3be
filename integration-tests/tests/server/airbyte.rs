//! Airbyte connectors end to end: the PyPI packages airbyte-source-faker and
//! airbyte-source-hardcoded-records installed by the server on first use (uv), read into streams
//! with per-stream counts equal to the bare connector's; pause/resume and SIGKILL mid-sync resume
//! from the last durable STATE; a destination that obeys the protocol gets every record and our
//! position moves only on its echoes; malformed output, a non-zero exit and a hang are classified,
//! restarted, and store no state past the last good one. Images: `airbyte_images.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use hstream_integration_tests::*;
use hstream_proto as pb;
use serde_json::{Value, json};

pub(crate) const FAKER: &str = "airbyte-source-faker==7.2.1";
pub(crate) const HARDCODED: &str = "airbyte-source-hardcoded-records==0.0.48";
pub(crate) const FAST_RETRY: &[&str] = &["--connector-retry-base-ms", "50", "--connector-retry-max-ms", "500"];
/// Installing a package and Python's start-up (~3 s a command) make first steps slow.
pub(crate) const SLOW: Duration = Duration::from_secs(300);

pub(crate) fn script(name: &str) -> String {
    repo_root()
        .join("integration-tests/python")
        .join(name)
        .display()
        .to_string()
}

/// The executable the server installed for a package (`.airbyte/.venv-<exe>-<hash>/bin/<exe>`).
pub(crate) fn installed(exe: &str) -> std::path::PathBuf {
    let dir = std::fs::read_dir(airbyte_dir())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!(".venv-{exe}-")))
        })
        .unwrap_or_else(|| panic!("{exe} is not installed under {}", airbyte_dir().display()));
    dir.join("bin").join(exe)
}

/// RECORD counts per stream of the bare connector's `read` with this config and catalog.
pub(crate) async fn bare_counts(exe: &std::path::Path, config: &Value, catalog: &Value) -> BTreeMap<String, usize> {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("config.json"), dir.path().join("catalog.json"));
    std::fs::write(&c, config.to_string()).unwrap();
    std::fs::write(&k, catalog.to_string()).unwrap();
    let out = tokio::process::Command::new(exe)
        .arg("read")
        .arg("--config")
        .arg(&c)
        .arg("--catalog")
        .arg(&k)
        .stderr(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "bare read failed");
    let mut counts = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Ok(m) = serde_json::from_str::<Value>(line)
            && m["type"] == "RECORD"
        {
            *counts
                .entry(m["record"]["stream"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
    }
    counts
}

/// A configured catalog of `streams` of a discovered catalog (as the connector configures it).
pub(crate) fn configured(discovered: &Value, streams: &[&str], mode: &str) -> Value {
    let list: Vec<Value> = discovered["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| streams.contains(&s["name"].as_str().unwrap()))
        .map(|s| json!({"stream": s, "sync_mode": mode, "destination_sync_mode": "append"}))
        .collect();
    json!({ "streams": list })
}

pub(crate) async fn discover(exe: &std::path::Path, config: &Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("config.json");
    std::fs::write(&c, config.to_string()).unwrap();
    let out = tokio::process::Command::new(exe)
        .arg("discover")
        .arg("--config")
        .arg(&c)
        .stderr(Stdio::null())
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|m| m["type"] == "CATALOG")
        .map(|m| m["catalog"].clone())
        .expect("a CATALOG")
}

pub(crate) async fn wait_report(
    c: &Client,
    name: &str,
    within: Duration,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    let ok = holds_within(within, || async {
        let r = connector_report(c, name).await;
        let hit = cond(&r);
        *last.lock().unwrap() = r;
        hit
    })
    .await;
    let last = last.into_inner().unwrap();
    assert!(ok, "timed out waiting for {what}; last report {last}");
    last
}

/// Record ids (`id` field) of a JSON stream, with how often each occurs.
pub(crate) async fn ids(c: &mut Client, stream: &str) -> BTreeMap<i64, usize> {
    let mut m = BTreeMap::new();
    for (_, v) in read_json_stream(c, stream).await {
        *m.entry(v["id"].as_f64().expect("id") as i64).or_insert(0) += 1;
    }
    m
}

/// Faker through SQL: spec/check/discover at create (a bad config names its field), every record
/// of the chosen streams arrives with counts equal to the bare connector's; paused mid-sync and
/// resumed, the next read is given the stored STATE and nothing is lost. (Faker itself re-emits
/// every user when resumed with `always_updated`, its default; exact resumption is shown with
/// the protocol-obeying source below.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faker_from_sql_reads_every_record_and_resumes_after_a_pause() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    // A config the connector's own spec refuses: named under `config.`, nothing created.
    let out = sql(
        &server,
        &format!(
            "CREATE SOURCE CONNECTOR bad FROM airbyte WITH (\"package\" = '{FAKER}', \"config\" = '{{\"count\": \"many\"}}');\n"
        ),
    )
    .await;
    assert!(out.contains("config.count"), "{out}");
    let count = 20_000;
    let cfg = json!({"count": count, "seed": 7, "records_per_slice": 500, "parallelism": 1});
    let out = sql(
        &server,
        &format!(
            "CREATE SOURCE CONNECTOR fk FROM airbyte WITH (\"package\" = '{FAKER}', \"config\" = '{cfg}', \
             \"streams\" = 'users,products', \"stream_prefix\" = 'faker_');\n"
        ),
    )
    .await;
    assert!(out.contains("created connector fk"), "{out}");
    // Mid-sync: some users are in and a STATE is checkpointed.
    let before = wait_report(&c, "fk", SLOW, "a checkpointed state", |r| {
        r["offset"]["states"].as_array().is_some_and(|s| !s.is_empty())
            && r["offset"]["records"].as_f64() > Some(1000.0)
    })
    .await;
    c.pause_connector(pb::PauseConnectorRequest { name: "fk".into() })
        .await
        .unwrap();
    wait_status(&c, "fk", "STOPPED", Duration::from_secs(60)).await;
    let stored_states = connector_report(&c, "fk").await["offset"]["states"]
        .as_array()
        .map_or(0, Vec::len);
    assert!(stored_states > 0);
    assert!(
        count_stream_records(&c, "faker_users").await < count,
        "the sync finished before the pause: {before}"
    );
    c.resume_connector(pb::ResumeConnectorRequest { name: "fk".into() })
        .await
        .unwrap();
    wait_status(&c, "fk", "COMPLETED", SLOW).await;
    let logs = task_logs(&c, "fk").await;
    assert!(
        logs.contains(&format!("starting read (sync 1, {stored_states} stored state(s))")),
        "{logs}"
    );
    // Every user, keyed by its id.
    let users = ids(&mut c, "faker_users").await;
    assert_eq!(users.len(), count, "distinct users");
    assert_eq!(users.keys().next(), Some(&1));
    let recs = read_json_stream(&mut c, "faker_users").await;
    assert!(
        recs.iter()
            .all(|(k, v)| *k == (v["id"].as_f64().unwrap() as i64).to_string())
    );
    // Counts equal the bare connector's for the same config; the unchosen stream is not read.
    let exe = installed("source-faker");
    let catalog = configured(&discover(&exe, &cfg).await, &["users", "products"], "incremental");
    let bare = bare_counts(&exe, &cfg, &catalog).await;
    assert_eq!(bare.get("users"), Some(&count));
    assert_eq!(Some(&ids(&mut c, "faker_products").await.len()), bare.get("products"));
    assert!(!bare.contains_key("purchases"));
    assert_eq!(count_stream_records(&c, "faker_purchases").await, 0);
}

/// Paused mid-sync and resumed, a source that honours its state continues exactly from the
/// stored STATE: what is read again is only what came after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_continue_from_the_stored_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let count = 200_000;
    let config = json!({"command": script("airbyte_fake_source.py"),
        "config": {"count": count, "state_every": 1000}, "stream_prefix": "p_"});
    create_connector(&mut c, "ps", "SOURCE", "airbyte", &config)
        .await
        .unwrap();
    wait_report(&c, "ps", SLOW, "records past 20000", |r| {
        r["offset"]["records"].as_f64() > Some(20_000.0)
    })
    .await;
    c.pause_connector(pb::PauseConnectorRequest { name: "ps".into() })
        .await
        .unwrap();
    wait_status(&c, "ps", "STOPPED", Duration::from_secs(60)).await;
    let appended = count_stream_records(&c, "p_events").await;
    let r = connector_report(&c, "ps").await;
    let next = r["offset"]["states"][0]["stream"]["stream_state"]["next"]
        .as_f64()
        .unwrap() as usize;
    assert!(appended < count && next > 1, "{r}");
    c.resume_connector(pb::ResumeConnectorRequest { name: "ps".into() })
        .await
        .unwrap();
    wait_status(&c, "ps", "COMPLETED", SLOW).await;
    let got = ids(&mut c, "p_events").await;
    assert_eq!(got.len(), count);
    // The resumed read started at the stored state, and what it read again (what followed the
    // state) was recognised as stored: each record once (exactly-once appends).
    let total: usize = got.values().sum();
    assert_eq!(total, count, "{} records stored twice", total - count);
    assert!(appended >= next - 1, "{appended} appended, state at {next}");
    let logs = task_logs(&c, "ps").await;
    assert!(logs.contains(&format!("reading from {next}")), "{logs}");
}

/// hardcoded-records over REST with the config as an object: three streams, exact counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardcoded_records_over_rest_counts_exact() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let c = server.client().await;
    let cfg = json!({"count": 5000});
    let (code, body) = http(
        server.http,
        "POST",
        "/connectors",
        Some(&json!({"name": "hc", "type": "source", "target": "airbyte",
            "config": {"package": HARDCODED, "config": cfg, "stream_prefix": "hc_"}})),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    wait_status(&c, "hc", "COMPLETED", SLOW).await;
    let exe = installed("source-hardcoded-records");
    let discovered = discover(&exe, &cfg).await;
    let names: Vec<&str> = discovered["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    let bare = bare_counts(&exe, &cfg, &configured(&discovered, &names, "full_refresh")).await;
    assert_eq!(bare.len(), 3, "{bare:?}");
    for (stream, n) in &bare {
        assert_eq!(count_stream_records(&c, &format!("hc_{stream}")).await, *n, "{stream}");
    }
    let r = connector_report(&c, "hc").await;
    assert_eq!(r["offset"]["syncs"], 1.0);
    assert_eq!(
        r["offset"]["records"].as_f64().map(|f| f as u64),
        Some(bare.values().sum::<usize>() as u64)
    );
}

/// SIGKILL of our server mid-sync: after the restart the task resumes from the last durable
/// STATE and every record is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_sync_resumes_from_the_last_durable_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let count = 200_000;
    let config = json!({"command": script("airbyte_fake_source.py"),
        "config": {"count": count, "state_every": 1000}, "stream_prefix": "k_"});
    create_connector(&mut c, "ks", "SOURCE", "airbyte", &config)
        .await
        .unwrap();
    wait_report(&c, "ks", SLOW, "records past 20000", |r| {
        r["offset"]["records"].as_f64().map(|f| f as u64) > Some(20_000)
    })
    .await;
    server.kill();
    server.restart();
    let mut c = server.client().await;
    wait_status(&c, "ks", "COMPLETED", SLOW).await;
    let got = ids(&mut c, "k_events").await;
    assert_eq!(got.len(), count);
    assert_eq!(got.keys().next(), Some(&1));
    assert_eq!(got.keys().last(), Some(&(count as i64)));
    // Read again only what came after the last durable state: under one state interval plus
    // what was in flight, never the whole sync.
    let total: usize = got.values().sum();
    assert!(total < count + 40_000, "{} records re-read", total - count);
    let logs = task_logs(&c, "ks").await;
    assert!(
        logs.contains("1 stored state(s)")
            && logs.split("reading from ").skip(1).any(|t| {
                t.split(|ch: char| !ch.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    > Some(1)
            }),
        "the restarted read did not resume from a state: {logs}"
    );
}

/// Malformed output, a non-zero exit and a hang: classified errors, restarts, and the stored
/// state is the last good one (nothing after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_connectors_are_classified_restarted_and_store_no_partial_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    for (name, mode, extra, want) in [
        ("mal", "malformed", json!({}), "malformed message"),
        ("nan", "nan", json!({}), "malformed message: not JSON"),
        (
            "ex",
            "exit",
            json!({}),
            "exited with exit status: 3: the upstream went away",
        ),
        ("hang", "hang", json!({"idle_timeout_secs": 2}), "wrote nothing for 2 s"),
    ] {
        let mut config = json!({"command": script("airbyte_fake_source.py"),
            "config": {"count": 1000, "state_every": 100, "mode": mode, "fail_at": 550, "token": "s3cr3t-tok"},
            "stream_prefix": format!("{name}_")});
        for (k, v) in extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        create_connector(&mut c, name, "SOURCE", "airbyte", &config)
            .await
            .unwrap();
        let r = wait_report(&c, name, SLOW, "restarts after the failure", |r| {
            r["restarts"].as_f64().map(|f| f as u64) >= Some(2)
                && r["lastError"].as_str().is_some_and(|e| e.contains(want))
        })
        .await;
        // The last state stored is the one before record 550: `next` 501.
        let states = r["offset"]["states"].as_array().unwrap();
        assert_eq!(states.len(), 1, "{r}");
        assert_eq!(states[0]["stream"]["stream_state"]["next"], 501.0, "{r}");
        // Records 1..=500 (what the state covers) are in, some of 501..=549 perhaps (records
        // after the last state are dropped or kept, and read again), nothing at or past 550.
        let got = ids(&mut c, &format!("{name}_events")).await;
        assert!((1..=500).all(|i| got.contains_key(&i)), "{name}");
        assert!(got.keys().all(|i| *i < 550), "{name}");
        // The secret in the connector's config is not shown (its spec marks it).
        let shown = c
            .get_connector(pb::GetConnectorRequest { name: name.into() })
            .await
            .unwrap()
            .into_inner()
            .config;
        assert!(
            !shown.contains("s3cr3t-tok") && shown.contains("\"count\":1000"),
            "{shown}"
        );
        c.delete_connector(pb::DeleteConnectorRequest { name: name.into() })
            .await
            .unwrap();
    }
}

/// A destination obeying the protocol: every record written once per echo round; our position
/// (the checkpoint) moves only when the destination echoes a state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_gets_every_record_and_position_moves_only_on_echoes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    // 5,000 JSON records from the fake source into stream d_events.
    let src = json!({"command": script("airbyte_fake_source.py"), "config": {"count": 5000, "state_every": 500}, "stream_prefix": "d_"});
    create_connector(&mut c, "dsrc", "SOURCE", "airbyte", &src)
        .await
        .unwrap();
    wait_status(&c, "dsrc", "COMPLETED", SLOW).await;
    assert_eq!(count_stream_records(&c, "d_events").await, 5000);

    // Echoes at once: every record arrives, the position reaches the end.
    let out = dir.path().join("always.jsonl");
    let sink = json!({"stream": "d_events", "command": script("airbyte_fake_destination.py"),
        "config": {"path": out.display().to_string(), "echo": "always", "token": "hunter2-tok"}});
    create_connector(&mut c, "dall", "SINK", "airbyte", &sink)
        .await
        .unwrap();
    let lines = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default().lines().count();
    wait_until(Duration::from_secs(60), "5000 records at the destination", || async {
        lines(&out) >= 5000
    })
    .await;
    let end: BTreeMap<String, u64> = {
        let shards = stream_shards(&mut c, "d_events").await;
        let mut m = BTreeMap::new();
        for s in shards {
            let r = read_shard_to_tail(&mut c, "d_events", s.shard_id).await;
            m.insert(s.shard_id.to_string(), r.len() as u64 + 1);
        }
        m
    };
    let r = wait_report(&c, "dall", Duration::from_secs(60), "the position at the end", |r| {
        end.iter()
            .all(|(s, n)| r["offset"]["shards"][s].as_f64().map(|f| f as u64) == Some(*n))
    })
    .await;
    assert_eq!(r["deliveredRecords"], 5000.0);
    let written: BTreeSet<i64> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_f64().unwrap() as i64)
        .collect();
    assert_eq!(written.len(), 5000);
    let shown = c
        .get_connector(pb::GetConnectorRequest { name: "dall".into() })
        .await
        .unwrap()
        .into_inner()
        .config;
    assert!(!shown.contains("hunter2-tok"), "{shown}");

    // Echoes only at the end of its input (and our wait for an echo is long): the records are
    // delivered, yet the position stays where it was, until a pause ends the input.
    let held = dir.path().join("held.jsonl");
    let sink = json!({"stream": "d_events", "command": script("airbyte_fake_destination.py"),
        "config": {"path": held.display().to_string(), "echo": "at_end"}, "state_timeout_secs": 3600});
    create_connector(&mut c, "dheld", "SINK", "airbyte", &sink)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "5000 records at the held destination",
        || async { lines(&held) >= 5000 },
    )
    .await;
    let stuck = holds_within(Duration::from_secs(2), || async {
        let r = connector_report(&c, "dheld").await;
        end.iter()
            .any(|(s, n)| r["offset"]["shards"][s].as_f64().map(|f| f as u64) == Some(*n))
    })
    .await;
    assert!(!stuck, "the position moved without an echo");
    c.pause_connector(pb::PauseConnectorRequest { name: "dheld".into() })
        .await
        .unwrap();
    wait_status(&c, "dheld", "STOPPED", Duration::from_secs(60)).await;
    let r = connector_report(&c, "dheld").await;
    assert!(
        end.iter()
            .all(|(s, n)| r["offset"]["shards"][s].as_f64().map(|f| f as u64) == Some(*n)),
        "after the echoes at the end of input the position is at the end: {r}"
    );
}
