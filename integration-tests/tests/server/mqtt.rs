//! The MQTT source and sink against a throw-away Mosquitto, and EMQX's HStreamDB bridge call
//! sequence against our gRPC API: 100k QoS 1 messages in per-topic order, SIGKILL of our server
//! and a broker restart mid-load without loss, stream → sink → subscriber, attributes and user
//! properties, oversized and malformed input, and `check` errors.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use hstream_integration_tests::mosquitto::{self, Mosquitto};
use hstream_integration_tests::*;
use hstream_proto as pb;
use rumqttc::QoS;
use serde_json::{Value, json};

const FAST_RETRY: &[&str] = &["--connector-retry-base-ms", "50", "--connector-retry-max-ms", "500"];

fn source_config(broker: &Mosquitto, stream: &str, extra: Value) -> Value {
    config_with(broker.connector_config(), stream, extra)
}

/// Waits until source `name` is subscribed (what it reports once the broker's SUBACK came).
async fn wait_subscribed(c: &Client, name: &str) {
    wait_until(Duration::from_secs(60), &format!("{name} subscribed"), || async {
        connector_report(c, name).await["progress"]
            .as_str()
            .is_some_and(|p| p.contains("subscribed to"))
    })
    .await;
}

async fn wait_count(c: &Client, stream: &str, n: usize, within: Duration) {
    if !holds_within(within, || async { count_stream_records(c, stream).await >= n }).await {
        panic!(
            "timed out after {within:?} waiting for {n} records in {stream}: {} there; task report {}",
            count_stream_records(c, stream).await,
            connector_report(c, "mq").await
        );
    }
}

/// Waits until `n` distinct messages (by payload) are in `stream`: after a failure some may be
/// there twice, so the record count alone can run ahead.
async fn wait_unique(c: &Client, stream: &str, n: usize, within: Duration) {
    wait_count(c, stream, n, within).await;
    wait_until(within, &format!("{n} distinct messages in {stream}"), || async {
        let recs = read_stream_records(c, stream).await;
        recs.iter()
            .map(|r| r.payload.clone())
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= n
    })
    .await;
}

/// `messages` per topic over `topics` topics `sensors/<tag>-<t>/temp`, interleaved across topics;
/// payload `<tag>-<t>:<seq>`.
fn workload(tag: &str, topics: usize, per_topic: usize) -> Vec<(String, Bytes)> {
    let mut v = Vec::with_capacity(topics * per_topic);
    for seq in 0..per_topic {
        for t in 0..topics {
            v.push((
                format!("sensors/{tag}-{t}/temp"),
                Bytes::from(format!("{tag}-{t}:{seq}")),
            ));
        }
    }
    v
}

fn attr<'a>(r: &'a pb::HStreamRecord, name: &str) -> Option<&'a str> {
    r.header.as_ref()?.attributes.get(name).map(String::as_str)
}

/// Per topic, the sequence numbers in stream order (from payloads `<topic tag>:<seq>`), checking
/// that each record's key and topic attribute agree with its payload.
fn per_topic(records: &[pb::HStreamRecord]) -> BTreeMap<String, Vec<u64>> {
    let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in records {
        let p = std::str::from_utf8(&r.payload).expect("utf-8 payload");
        let (tag, seq) = p.rsplit_once(':').expect("tag:seq");
        let topic = format!("sensors/{tag}/temp");
        assert_eq!(attr(r, "mqtt.topic"), Some(topic.as_str()), "topic attribute of {p}");
        assert_eq!(
            r.header.as_ref().map(|h| h.key.as_str()),
            Some(topic.as_str()),
            "key of {p}"
        );
        assert_eq!(
            r.header.as_ref().map(|h| h.flag),
            Some(pb::h_stream_record_header::Flag::Raw as i32)
        );
        m.entry(topic).or_default().push(seq.parse().expect("seq"));
    }
    m
}

/// After a crash, redelivered messages may repeat: per topic, every seq is there, and the first
/// occurrences come in order.
fn assert_complete_in_order(records: &[pb::HStreamRecord], topics: usize, per_topic_n: u64) {
    let m = per_topic(records);
    assert_eq!(m.len(), topics, "every topic present");
    for (topic, seqs) in m {
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<u64> = seqs.iter().copied().filter(|s| seen.insert(*s)).collect();
        assert_eq!(
            firsts,
            (0..per_topic_n).collect::<Vec<_>>(),
            "{topic}: every message, first occurrences in order"
        );
    }
}

#[tokio::test]
async fn mqtt_source_takes_100k_qos1_messages_over_many_topics_in_order() {
    const TOPICS: usize = 100;
    const PER_TOPIC: usize = 1_000;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let cfg = source_config(
        &broker,
        "iot",
        json!({"topic": "sensors/+/temp, alerts/#", "client_id": "hs-iot"}),
    );
    create_connector(&mut c, "mq", "SOURCE", "mqtt", &cfg).await.unwrap();
    wait_subscribed(&c, "mq").await;
    // Four publishers, each with 25 topics of its own.
    let pubs: Vec<_> = (0..4)
        .map(|p| {
            let msgs = workload(&format!("p{p}"), TOPICS / 4, PER_TOPIC);
            tokio::spawn(mosquitto::publish(
                broker.port,
                format!("pub{p}"),
                msgs,
                QoS::AtLeastOnce,
            ))
        })
        .collect();
    for p in pubs {
        p.await.unwrap();
    }
    wait_count(&c, "iot", TOPICS * PER_TOPIC, Duration::from_secs(120)).await;
    let records = read_stream_records(&c, "iot").await;
    assert_eq!(records.len(), TOPICS * PER_TOPIC, "no duplicates without a failure");
    // Exactly every message, in publish order per topic.
    for (topic, seqs) in per_topic(&records) {
        assert_eq!(seqs, (0..PER_TOPIC as u64).collect::<Vec<_>>(), "{topic}");
    }
    assert!(
        records
            .iter()
            .all(|r| attr(r, "mqtt.qos") == Some("1") && attr(r, "mqtt.retain") == Some("false"))
    );
    // The second filter is live too, and MQTT 5 user properties become attributes.
    let out = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-V",
            "mqttv5",
            "-q",
            "1",
        ])
        .args([
            "-t",
            "alerts/fire",
            "-m",
            "hot",
            "-D",
            "publish",
            "user-property",
            "site",
            "north",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_count(&c, "iot", TOPICS * PER_TOPIC + 1, Duration::from_secs(30)).await;
    let records = read_stream_records(&c, "iot").await;
    let alert = records.iter().find(|r| &r.payload[..] == b"hot").expect("the alert");
    assert_eq!(attr(alert, "site"), Some("north"));
    assert_eq!(attr(alert, "mqtt.topic"), Some("alerts/fire"));
    assert_eq!(
        report(
            &c.get_connector(pb::GetConnectorRequest { name: "mq".into() })
                .await
                .unwrap()
                .into_inner()
        )["restarts"],
        json!(0.0)
    );
}

#[tokio::test]
async fn mqtt_source_loses_no_qos1_message_when_the_server_is_killed_mid_load() {
    const TOPICS: usize = 20;
    const PER_TOPIC: usize = 2_500;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    // MQTT 3.1.1 here (the other tests speak 5).
    let cfg = source_config(
        &broker,
        "iot",
        json!({"topic": "sensors/#", "protocol": "3.1.1", "client_id": "hs-kill"}),
    );
    create_connector(&mut c, "mq", "SOURCE", "mqtt", &cfg).await.unwrap();
    wait_subscribed(&c, "mq").await;
    let publisher = tokio::spawn(mosquitto::publish(
        broker.port,
        "pub-kill",
        workload("k", TOPICS, PER_TOPIC),
        QoS::AtLeastOnce,
    ));
    wait_count(&c, "iot", 5_000, Duration::from_secs(60)).await;
    server.kill();
    // The publisher goes on: the broker queues for our persistent session.
    publisher.await.unwrap();
    server.restart();
    let c = server.client().await;
    wait_unique(&c, "iot", TOPICS * PER_TOPIC, Duration::from_secs(120)).await;
    assert_complete_in_order(&read_stream_records(&c, "iot").await, TOPICS, PER_TOPIC as u64);
}

#[tokio::test]
async fn mqtt_source_reconnects_and_continues_across_a_broker_restart() {
    const TOPICS: usize = 10;
    const PER_TOPIC: usize = 2_000;
    let mut broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let cfg = source_config(&broker, "iot", json!({"topic": "sensors/#", "client_id": "hs-restart"}));
    create_connector(&mut c, "mq", "SOURCE", "mqtt", &cfg).await.unwrap();
    wait_subscribed(&c, "mq").await;
    let first = workload("r", TOPICS, PER_TOPIC / 2);
    mosquitto::publish(broker.port, "pub-restart", first, QoS::AtLeastOnce).await;
    wait_count(&c, "iot", TOPICS * PER_TOPIC / 2, Duration::from_secs(60)).await;
    broker.stop();
    // The source notices and retries until the broker is back.
    wait_until(Duration::from_secs(30), "the source to notice", || async {
        connector_report(&c, "mq").await["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("MQTT"))
    })
    .await;
    broker.start_again();
    // The second half: seqs continue per topic.
    let second: Vec<(String, Bytes)> = workload("r", TOPICS, PER_TOPIC)
        .into_iter()
        .skip(TOPICS * PER_TOPIC / 2)
        .collect();
    mosquitto::publish(broker.port, "pub-restart", second, QoS::AtLeastOnce).await;
    wait_unique(&c, "iot", TOPICS * PER_TOPIC, Duration::from_secs(60)).await;
    assert_complete_in_order(&read_stream_records(&c, "iot").await, TOPICS, PER_TOPIC as u64);
    let r = connector_report(&c, "mq").await;
    assert!(r["restarts"].as_f64().unwrap_or(0.0) >= 1.0, "{r}");
    assert!(r["progress"].as_str().unwrap_or("").contains("session resumed"), "{r}");
    wait_connector_status(&c, "mq", "RUNNING").await;
}

/// Appends RAW records under `keys` to shard `shard_id` of `stream` through the gRPC API.
async fn append_records(
    c: &mut Client,
    stream: &str,
    shard_id: u64,
    per_key: usize,
    keys: usize,
) -> Vec<(String, Vec<u8>)> {
    let mut sent = Vec::new();
    for k in 0..keys {
        let key = format!("k{k}");
        for chunk in (0..per_key).collect::<Vec<_>>().chunks(250) {
            let payloads: Vec<Vec<u8>> = chunk.iter().map(|i| format!("{key}/{i}").into_bytes()).collect();
            sent.extend(payloads.iter().map(|p| (key.clone(), p.clone())));
            c.append(pb::AppendRequest {
                stream_name: stream.into(),
                shard_id,
                records: Some(batch(&key, &payloads, pb::CompressionType::None)),
            })
            .await
            .unwrap();
        }
    }
    sent
}

#[tokio::test]
async fn mqtt_sink_publishes_every_record_of_a_stream() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let shard_id = make_stream(&mut c, "out", 1).await[0];
    let sent = append_records(&mut c, "out", shard_id, 2_000, 5).await;
    // A JSON record goes out as JSON text; its field can name the topic.
    let doc = json!({"room": "r1", "t": 21.5});
    let s = prost::Message::encode_to_vec(&json_struct(&doc));
    let rec = pb::HStreamRecord {
        header: Some(pb::HStreamRecordHeader {
            flag: pb::h_stream_record_header::Flag::Json as i32,
            key: "room".into(),
            ..Default::default()
        }),
        payload: s.into(),
    };
    c.append(pb::AppendRequest {
        stream_name: "out".into(),
        shard_id,
        records: Some(pb::BatchedRecord {
            compression_type: 0,
            publish_time: None,
            batch_size: 1,
            payload: prost::Message::encode_to_vec(&pb::BatchHStreamRecords { records: vec![rec] }).into(),
        }),
    })
    .await
    .unwrap();
    let sub = mosquitto::Subscriber::start(broker.port, "watcher", "out/#").await;
    let cfg = config_with(
        broker.connector_config(),
        "out",
        json!({"topic": "out/${key}${payload.room}", "qos": 1}),
    );
    create_connector(&mut c, "pubsink", "SINK", "mqtt", &cfg).await.unwrap();
    let want = sent.len() + 1;
    wait_until(
        Duration::from_secs(60),
        "the subscriber to get every record",
        || async { sub.count() >= want },
    )
    .await;
    let got = sub.take();
    assert_eq!(got.len(), want, "each record once");
    let mut by_topic: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for (t, p) in &got {
        by_topic.entry(t.clone()).or_default().push(p.to_vec());
    }
    for k in 0..5 {
        let key = format!("k{k}");
        let want: Vec<Vec<u8>> = sent
            .iter()
            .filter(|(kk, _)| *kk == key)
            .map(|(_, p)| p.clone())
            .collect();
        assert_eq!(by_topic[&format!("out/{key}")], want, "records of {key} in order");
    }
    let json_out: Value = serde_json::from_slice(&by_topic["out/roomr1"][0]).unwrap();
    assert_eq!(json_out, doc);
    // Everything was acknowledged, so the stored position reaches the tail.
    wait_until(Duration::from_secs(30), "the sink's position at the tail", || async {
        connector_report(&c, "pubsink").await["deliveredRecords"] == json!(want as f64)
    })
    .await;
}

#[tokio::test]
async fn mqtt_oversized_and_malformed_messages_are_dead_lettered_without_stopping_the_task() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    // A small max record size, so an oversized message is cheap to make.
    let server = Server::start(dir.path(), &["--max-record-size", "65536"]);
    let mut c = server.client().await;
    let cfg = source_config(
        &broker,
        "iot",
        json!({"topic": "dev/#", "payload_format": "json", "key_template": "${payload.device}", "client_id": "hs-bad",
               "errors.tolerance": "all", "errors.deadletter.stream": "iot-dlq", "errors.log.enable": true}),
    );
    create_connector(&mut c, "mq", "SOURCE", "mqtt", &cfg).await.unwrap();
    wait_subscribed(&c, "mq").await;
    let big = format!("{{\"device\": \"d1\", \"blob\": \"{}\"}}", "x".repeat(100_000));
    let msgs = vec![
        ("dev/a".to_owned(), Bytes::from_static(br#"{"device": "d1", "n": 1}"#)),
        ("dev/a".to_owned(), Bytes::from(big)),
        ("dev/b".to_owned(), Bytes::from_static(b"not json")),
        ("dev/b".to_owned(), Bytes::from_static(b"[1, 2]")),
        ("dev/a".to_owned(), Bytes::from_static(br#"{"device": "d2", "n": 2}"#)),
    ];
    mosquitto::publish(broker.port, "pub-bad", msgs, QoS::AtLeastOnce).await;
    wait_count(&c, "iot", 2, Duration::from_secs(30)).await;
    wait_count(&c, "iot-dlq", 3, Duration::from_secs(30)).await;
    let recs = read_json_stream(&mut c, "iot").await;
    assert_eq!(
        recs,
        vec![
            ("d1".to_owned(), json!({"device": "d1", "n": 1.0})),
            ("d2".to_owned(), json!({"device": "d2", "n": 2.0})),
        ]
    );
    // Each dead letter holds what came (the oversized one cut to fit, saying so) and why. The
    // oversized one is refused in the pipeline, the undecodable ones in the source: their order
    // in the dead-letter stream depends on how the messages arrived, so they are sorted here.
    let mut dead = read_stream_records(&c, "iot-dlq").await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    dead.sort_by_key(|r| r.payload.len() < 60_000);
    if dead[1].payload[..] != b"not json"[..] {
        dead.swap(1, 2);
    }
    let attrs = |i: usize| dead[i].header.as_ref().unwrap().attributes.clone();
    let a = attrs(0);
    assert_eq!(a["__connect.errors.stage"], "write", "{a:?}");
    assert_eq!(a["__connect.errors.class.name"], "data");
    assert_eq!(a["__connect.errors.connector.name"], "mq");
    assert!(
        a["__connect.errors.exception.message"].contains("over the stream's max record size of 65536"),
        "{a:?}"
    );
    assert!(
        a["__connect.errors.payload.truncated"].parse::<usize>().unwrap() > 100_000,
        "{a:?}"
    );
    assert_eq!(a["mqtt.topic"], "dev/a", "the original attributes are kept: {a:?}");
    assert!(dead[0].payload.len() > 60_000 && dead[0].payload.len() < 65536);
    for (i, payload) in [(1, &b"not json"[..]), (2, &b"[1, 2]"[..])] {
        let a = attrs(i);
        assert_eq!(a["__connect.errors.stage"], "decode", "{a:?}");
        assert!(a["__connect.errors.exception.message"].contains("topic dev/b"), "{a:?}");
        assert_eq!(&dead[i].payload[..], payload, "the original payload");
        assert_eq!(dead[i].header.as_ref().unwrap().key, "dev/b");
        let at: Value = serde_json::from_str(&a["__connect.errors.source.position"]).unwrap();
        assert_eq!(at["topic"], "dev/b", "{at}");
    }
    assert!(attrs(1)["__connect.errors.exception.message"].contains("not JSON"));
    assert!(attrs(2)["__connect.errors.exception.message"].contains("not an object"));
    let r = connector_report(&c, "mq").await;
    assert_eq!(r["deadLetters"], json!(3.0), "{r}");
    assert_eq!(r["restarts"], json!(0.0), "{r}");
    wait_connector_status(&c, "mq", "RUNNING").await;
    // With errors.log.enable, each failure is a line in the connector's own log, over gRPC and
    // REST.
    let logs = c
        .get_connector_logs(pb::GetConnectorLogsRequest {
            name: "mq".into(),
            begin: 0,
            count: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .logs;
    assert_eq!(logs.matches("failed: MQTT message on topic").count(), 2, "{logs}");
    assert_eq!(logs.matches("failed: a record of").count(), 1, "{logs}");
    let (status, body) = http(server.http, "GET", "/connectors/mq/logs", None).await;
    assert_eq!(status, 200);
    let lines = body["logs"].as_array().unwrap();
    let failed = lines
        .iter()
        .filter(|l| l.as_str().unwrap_or("").contains("stage=decode"))
        .count();
    assert_eq!(failed, 2, "{body}");
    // The rejected messages were acknowledged in turn, and a paused source acknowledges what
    // it appended before it disconnects: the session, taken over by a plain client, holds
    // nothing before a marker published now.
    c.pause_connector(pb::PauseConnectorRequest { name: "mq".into() })
        .await
        .unwrap();
    wait_connector_status(&c, "mq", "STOPPED").await;
    let leftover = mosquitto::Subscriber::start_session(broker.port, "hs-bad", "dev/#").await;
    mosquitto::publish(
        broker.port,
        "pub-marker",
        vec![("dev/marker".to_owned(), Bytes::from_static(b"marker"))],
        QoS::AtLeastOnce,
    )
    .await;
    wait_until(Duration::from_secs(30), "the marker", || async { leftover.count() > 0 }).await;
    let first = leftover.take();
    assert_eq!(&first[0].1[..], b"marker", "nothing left unacknowledged: {first:?}");
}

#[tokio::test]
async fn mqtt_pause_and_resume_mid_load_loses_and_repeats_nothing_at_qos2() {
    const TOPICS: usize = 10;
    const PER_TOPIC: usize = 2_000;
    let broker = Mosquitto::start();
    // A retained message waiting for new subscriptions: it must arrive once, not again on
    // every resume.
    let out = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1", "-r"])
        .args(["-t", "sensors/retained-0/temp", "-m", "retained-0:0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let cfg = source_config(
        &broker,
        "iot",
        json!({"topic": "sensors/#", "qos": 2, "client_id": "hs-pause"}),
    );
    create_connector(&mut c, "mq", "SOURCE", "mqtt", &cfg).await.unwrap();
    wait_subscribed(&c, "mq").await;
    let publisher = tokio::spawn(mosquitto::publish(
        broker.port,
        "pub-pause",
        workload("q", TOPICS, PER_TOPIC),
        QoS::ExactlyOnce,
    ));
    for round in 0..3 {
        wait_count(&c, "iot", 1 + (round + 1) * 3_000, Duration::from_secs(60)).await;
        c.pause_connector(pb::PauseConnectorRequest { name: "mq".into() })
            .await
            .unwrap();
        wait_connector_status(&c, "mq", "STOPPED").await;
        c.resume_connector(pb::ResumeConnectorRequest { name: "mq".into() })
            .await
            .unwrap();
        wait_subscribed(&c, "mq").await;
    }
    publisher.await.unwrap();
    wait_count(&c, "iot", 1 + TOPICS * PER_TOPIC, Duration::from_secs(60)).await;
    let mut recs = read_stream_records(&c, "iot").await;
    // A stop acknowledges what was appended before it disconnects: nothing came twice.
    assert_eq!(recs.len(), 1 + TOPICS * PER_TOPIC);
    let retained: Vec<_> = recs.iter().filter(|r| attr(r, "mqtt.retain") == Some("true")).collect();
    assert_eq!(retained.len(), 1, "the retained message once");
    recs.retain(|r| attr(r, "mqtt.retain") != Some("true"));
    assert_complete_in_order(&recs, TOPICS, PER_TOPIC as u64);
    let r = connector_report(&c, "mq").await;
    assert_eq!(r["restarts"], json!(0.0), "{r}");
    assert!(r["progress"].as_str().unwrap_or("").contains("session resumed"), "{r}");
    // Deleting the connector ends its broker session: a plain client taking the client id
    // finds no session.
    c.delete_connector(pb::DeleteConnectorRequest { name: "mq".into() })
        .await
        .unwrap();
    let probe = mosquitto::session_present(broker.port, "hs-pause").await;
    assert!(!probe, "the session outlived the connector");
}

#[tokio::test]
async fn mqtt_bad_configs_fail_check_with_a_clear_message() {
    let broker = Mosquitto::start_with(&["allow_anonymous false", "password_file /dev/null"]);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let c = server.client().await;
    let check = |cfg: Value, kind: &'static str| {
        let mut c = c.clone();
        async move {
            create_connector(&mut c, "bad", kind, "mqtt", &cfg)
                .await
                .expect_err("refused")
                .message()
                .to_owned()
        }
    };
    let base = broker.connector_config();
    let e = check(config_with(base.clone(), "s", json!({"topic": "a/#/b"})), "SOURCE").await;
    assert!(e.contains("topic") && e.contains("a/#/b"), "{e}");
    let e = check(
        config_with(base.clone(), "s", json!({"topic": "a", "key_template": "${topic"})),
        "SOURCE",
    )
    .await;
    assert!(e.contains("key_template") && e.contains("not closed"), "{e}");
    let e = check(
        config_with(base.clone(), "s", json!({"topic": "a", "key_template": "${nope}"})),
        "SOURCE",
    )
    .await;
    assert!(e.contains("key_template") && e.contains("${nope}"), "{e}");
    let e = check(
        config_with(base.clone(), "s", json!({"topic": "a", "qos": 3})),
        "SOURCE",
    )
    .await;
    assert!(e.contains("qos"), "{e}");
    let e = check(config_with(base.clone(), "s", json!({"topic": "out/${topic}"})), "SINK").await;
    assert!(e.contains("topic") && e.contains("${topic}"), "{e}");
    let e = check(config_with(base.clone(), "s", json!({"topic": "out/+"})), "SINK").await;
    assert!(e.contains("topic") && e.contains("wildcard"), "{e}");
    // The broker refuses anonymous logins and every password here.
    let e = check(
        config_with(
            base.clone(),
            "s",
            json!({"topic": "a", "username": "u", "password": "hunter2-secret"}),
        ),
        "SOURCE",
    )
    .await;
    assert!(e.contains("username/password") && e.contains("refused"), "{e}");
    assert!(!e.contains("hunter2"), "no password in messages: {e}");
    // Nobody listening.
    let closed = config_with(
        json!({"host": "127.0.0.1", "port": free_port()}),
        "s",
        json!({"topic": "a"}),
    );
    let e = check(closed, "SOURCE").await;
    assert!(e.contains("MQTT connection to 127.0.0.1"), "{e}");
}

#[tokio::test]
async fn mqtt_source_over_tls_with_a_password() {
    let broker = Mosquitto::start_tls("iot-user", "s3cret-pw");
    let ca = broker.ca_file.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let cfg = source_config(
        &broker,
        "iot",
        json!({"topic": "sec/#", "tls": true, "tls_ca_file": ca.to_str().unwrap(), "username": "iot-user",
               "password": "s3cret-pw", "client_id": "hs-tls"}),
    );
    create_connector(&mut c, "mq", "SOURCE", "mqtt", &cfg).await.unwrap();
    wait_subscribed(&c, "mq").await;
    let out = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "--cafile",
            ca.to_str().unwrap(),
        ])
        .args([
            "-u",
            "iot-user",
            "-P",
            "s3cret-pw",
            "-q",
            "1",
            "-t",
            "sec/door",
            "-m",
            "open",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_count(&c, "iot", 1, Duration::from_secs(30)).await;
    let recs = read_stream_records(&c, "iot").await;
    assert_eq!(&recs[0].payload[..], b"open");
    // The config shown back hides the password.
    let shown = c
        .get_connector(pb::GetConnectorRequest { name: "mq".into() })
        .await
        .unwrap()
        .into_inner()
        .config;
    assert!(!shown.contains("s3cret-pw"), "{shown}");
    // Trusting another certificate than the CA, the broker's is not trusted; with a wrong
    // password the login is refused.
    let mut untrusted = cfg.clone();
    untrusted["tls_ca_file"] = json!(broker.dir().join("server.pem").to_str().unwrap());
    let e = create_connector(&mut c, "x1", "SOURCE", "mqtt", &untrusted)
        .await
        .unwrap_err();
    assert!(
        e.message().contains("MQTT connection to 127.0.0.1") && e.message().contains("TLS"),
        "{}",
        e.message()
    );
    let mut wrong = cfg.clone();
    wrong["password"] = json!("nope");
    let e = create_connector(&mut c, "x2", "SOURCE", "mqtt", &wrong)
        .await
        .unwrap_err();
    assert!(e.message().contains("username/password"), "{}", e.message());
}

#[tokio::test]
async fn emqx_bridge_call_sequence_appends_and_reads_back_byte_equal() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    // EMQX's producer does not create the stream.
    make_stream(&mut c, "emqx", 4).await;
    let seed = format!("127.0.0.1:{}", server.addr.port());
    let out = run_python(
        "emqx_bridge.py",
        &[
            "--seed",
            &seed,
            "--stream",
            "emqx",
            "--bridges",
            "8",
            "--batches",
            "20",
            "--batch",
            "100",
        ],
    )
    .await;
    assert_eq!(out["appended"], json!(16_000));
    assert_eq!(out["lookups"], json!(8 * 4), "one LookupResource per shard per bridge");
    let mut want: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for r in out["records"].as_array().unwrap() {
        let (k, hex) = (r[0].as_str().unwrap(), r[1].as_str().unwrap());
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        want.entry(k.to_owned()).or_default().push(bytes);
    }
    let mut got: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for r in read_stream_records(&c, "emqx").await {
        let h = r.header.unwrap();
        assert_eq!(h.flag, pb::h_stream_record_header::Flag::Raw as i32);
        got.entry(h.key).or_default().push(r.payload.to_vec());
    }
    // Bridges interleave on shared keys: per key and bridge (the payload's `b<n>-` prefix) the
    // order is the bridge's append order; per key, the same payloads.
    let by_bridge = |m: &BTreeMap<String, Vec<Vec<u8>>>| {
        let mut out: BTreeMap<(String, Vec<u8>), Vec<Vec<u8>>> = BTreeMap::new();
        for (k, ps) in m {
            for p in ps {
                let bridge = p.split(|b| *b == b'-').next().unwrap().to_vec();
                out.entry((k.clone(), bridge)).or_default().push(p.clone());
            }
        }
        out
    };
    assert_eq!(by_bridge(&got), by_bridge(&want), "per key and bridge, in order");
    for v in want.values_mut().chain(got.values_mut()) {
        v.sort();
    }
    assert_eq!(got, want);
}
