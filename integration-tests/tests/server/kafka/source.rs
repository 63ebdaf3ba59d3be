use super::*;

/// KEYS × PER_KEY messages for the source: key `k<i>`, value JSON `{"k":…, "seq":…}` for even
/// seqs and text `k/seq` for odd ones, header `seq`.
fn source_messages() -> Vec<Outgoing> {
    let mut v = Vec::with_capacity(KEYS * PER_KEY);
    for seq in 0..PER_KEY {
        for k in 0..KEYS {
            let key = format!("k{k}");
            let value = if seq.is_multiple_of(2) {
                json!({"k": key, "seq": seq}).to_string().into_bytes()
            } else {
                format!("{key}/{seq}").into_bytes()
            };
            v.push((Some(key), value, vec![("seq".to_owned(), seq.to_string())]));
        }
    }
    v
}

fn attr<'a>(r: &'a pb::HStreamRecord, name: &str) -> Option<&'a str> {
    r.header.as_ref()?.attributes.get(name).map(String::as_str)
}

/// Every message is in the stream, each key's first copies in order; returns the duplicates.
fn assert_stream_complete(records: &[pb::HStreamRecord]) -> usize {
    let mut seen = BTreeSet::new();
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut dup = 0;
    for r in records {
        let h = r.header.as_ref().unwrap();
        let seq: usize = attr(r, "seq").unwrap().parse().unwrap();
        assert!(attr(r, "kafka.topic") == Some("in") && attr(r, "kafka.offset").is_some());
        if seq.is_multiple_of(2) {
            assert_eq!(
                h.flag,
                pb::h_stream_record_header::Flag::Json as i32,
                "JSON objects become JSON records"
            );
            let s = prost_types::Struct::decode(r.payload.clone()).unwrap();
            assert_eq!(struct_to_json(&s), json!({"k": h.key, "seq": seq as f64}));
        } else {
            assert_eq!(h.flag, pb::h_stream_record_header::Flag::Raw as i32);
            assert_eq!(&r.payload[..], format!("{}/{seq}", h.key).as_bytes());
        }
        if !seen.insert((h.key.clone(), seq)) {
            dup += 1;
            continue;
        }
        let prev = last.insert(h.key.clone(), seq);
        assert_eq!(prev.map_or(0, |p| p + 1), seq, "key {}: out of order", h.key);
    }
    assert_eq!(seen.len(), KEYS * PER_KEY);
    dup
}

/// The stream's records ordered as appended per shard (read_stream_records reads shard by shard).
async fn wait_stream_distinct(c: &Client, stream: &str, within: Duration) -> Vec<pb::HStreamRecord> {
    let records = std::cell::RefCell::new(Vec::new());
    let complete = holds_within(within, || async {
        if count_stream_records(c, stream).await < KEYS * PER_KEY {
            return false;
        }
        let read = read_stream_records(c, stream).await;
        let distinct: BTreeSet<(String, String)> = read
            .iter()
            .map(|r| {
                (
                    r.header.as_ref().unwrap().key.clone(),
                    attr(r, "seq").unwrap().to_owned(),
                )
            })
            .collect();
        *records.borrow_mut() = read;
        distinct.len() == KEYS * PER_KEY
    })
    .await;
    if !complete {
        panic!(
            "{} records in {stream} after {within:?}; report {}",
            count_stream_records(c, stream).await,
            connector_report(c, "ks").await
        );
    }
    records.into_inner()
}

#[tokio::test]
async fn kafka_source_reads_200k_messages_once_in_key_order() {
    let kafka = Kafka::start(3);
    kafka.create_topic("in", 6);
    kafka.produce("in", &source_messages()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let c = server.client().await;
    // Through the SQL shell, as users create it.
    let out = sql(
        &server,
        &format!(
            "CREATE SOURCE CONNECTOR ks FROM kafka WITH (\"bootstrapServers\" = '{}', \"topics\" = 'in', \"stream\" = 'fromk', \"kafka.fetch.min.bytes\" = 1);",
            kafka.bootstrap()
        ),
    )
    .await;
    assert!(!out.to_lowercase().contains("error"), "{out}");
    let records = wait_stream_distinct(&c, "fromk", Duration::from_secs(180)).await;
    assert_eq!(assert_stream_complete(&records), 0, "no duplicates without a failure");
    assert_eq!(records.len(), KEYS * PER_KEY);
    // More messages later are read too; the offset is per partition.
    kafka
        .produce(
            "in",
            &[(Some("late".into()), b"{\"n\": 12345678901234567890}".to_vec(), vec![])],
        )
        .await;
    wait_until(Duration::from_secs(60), "the late message", || async {
        count_stream_records(&c, "fromk").await > KEYS * PER_KEY
    })
    .await;
    let late = read_stream_records(&c, "fromk")
        .await
        .into_iter()
        .find(|r| r.header.as_ref().unwrap().key == "late")
        .unwrap();
    // A number a double cannot hold: kept exactly, as a RAW record.
    assert_eq!(late.header.unwrap().flag, pb::h_stream_record_header::Flag::Raw as i32);
    assert_eq!(&late.payload[..], b"{\"n\": 12345678901234567890}");
    let r = connector_report(&c, "ks").await;
    let offset = &r["offset"]["next"]["in"];
    let total: f64 = (0..6).map(|p| offset[p.to_string()].as_f64().unwrap_or(0.0)).sum();
    assert_eq!(total, (KEYS * PER_KEY + 1) as f64, "{r}");
}

#[tokio::test]
async fn kafka_source_resumes_from_its_checkpoint_after_kill_9() {
    let kafka = Kafka::start(1);
    kafka.create_topic("in", 4);
    let messages = source_messages();
    let (first, second) = messages.split_at(messages.len() / 2);
    kafka.produce("in", first).await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let cfg = json!({"bootstrapServers": kafka.bootstrap(), "topics": "in", "stream": "fromk"});
    create_connector(&mut c, "ks", "SOURCE", "kafka", &cfg).await.unwrap();
    let delivered = |c: Client| async move {
        connector_report(&c, "ks").await["deliveredRecords"]
            .as_f64()
            .unwrap_or(0.0)
    };
    wait_until(Duration::from_secs(120), "30k records in", || {
        delivered(c.clone()).map(|n| n >= 30_000.0)
    })
    .await;
    let before_kill = delivered(c.clone()).await;
    server.kill();
    assert!(
        before_kill < first.len() as f64,
        "mid-load: {before_kill} delivered just before the kill"
    );
    // The rest arrives while the server is down.
    kafka.produce("in", second).await;
    server.restart();
    let c = server.client().await;
    let records = wait_stream_distinct(&c, "fromk", Duration::from_secs(180)).await;
    let dup = assert_stream_complete(&records);
    println!("kill -9 mid-load: {dup} messages appended twice (after the last checkpoint)");
}

/// A topic pattern matches whole names and leaves the rest alone; a matching topic created
/// later is picked up from its start; `latest` starts at the end as it was at the first start,
/// and a non-UTF-8 key and a tombstone are carried exactly.
#[tokio::test]
async fn kafka_source_follows_a_topic_pattern_and_starts_where_asked() {
    let kafka = Kafka::start(1);
    kafka.create_topic("orders.eu", 2);
    kafka.create_topic("orders.us", 2);
    kafka.create_topic("orders.eu.audit", 1);
    kafka.create_topic("xorders.eu", 1);
    let msg = |k: &str, v: &str| (Some(k.to_owned()), v.as_bytes().to_vec(), vec![]);
    for t in ["orders.eu", "orders.us", "orders.eu.audit", "xorders.eu"] {
        kafka.produce(t, &[msg("old", &format!("{t}:old"))]).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let all = json!({"bootstrapServers": kafka.bootstrap(), "topicPattern": "orders\\.[a-z]+",
                     "stream": "all", "topicRefreshSecs": 1});
    create_connector(&mut c, "ks", "SOURCE", "kafka", &all).await.unwrap();
    let latest = json!({"bootstrapServers": kafka.bootstrap(), "topics": "orders.eu", "stream": "new",
                        "startFrom": "latest"});
    create_connector(&mut c, "kl", "SOURCE", "kafka", &latest)
        .await
        .unwrap();
    wait_until(Duration::from_secs(60), "the old messages", || async {
        count_stream_records(&c, "all").await >= 2
    })
    .await;
    // Only once "latest" is fixed (its first checkpoint) does a new message count as new.
    wait_until(
        Duration::from_secs(60),
        "the latest source's first checkpoint",
        || async { connector_report(&c, "kl").await["offset"]["next"]["orders.eu"].is_object() },
    )
    .await;
    kafka.create_topic("orders.asia", 3);
    kafka
        .produce("orders.asia", &[msg("a", "orders.asia:1"), msg("b", "orders.asia:2")])
        .await;
    kafka.produce("orders.eu", &[msg("n", "orders.eu:new")]).await;
    // A tombstone and a key that is not UTF-8, through a producer of our own.
    {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let p: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka.bootstrap())
            .create()
            .unwrap();
        p.send(
            FutureRecord::<[u8], [u8]>::to("orders.us").key(&[0xff, 0xfe][..]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    wait_until(
        Duration::from_secs(60),
        "the later topic, the new and the odd message",
        || async { count_stream_records(&c, "all").await >= 6 },
    )
    .await;
    let mut got: Vec<(String, String)> = read_stream_records(&c, "all")
        .await
        .iter()
        .map(|r| {
            (
                attr(r, "kafka.topic").unwrap().to_owned(),
                String::from_utf8_lossy(&r.payload).into_owned(),
            )
        })
        .collect();
    got.sort();
    let want: Vec<(String, String)> = [
        ("orders.asia", "orders.asia:1"),
        ("orders.asia", "orders.asia:2"),
        ("orders.eu", "orders.eu:new"),
        ("orders.eu", "orders.eu:old"),
        ("orders.us", ""),
        ("orders.us", "orders.us:old"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want, "whole-name matches only, the later topic from its start");
    let odd = read_stream_records(&c, "all")
        .await
        .into_iter()
        .find(|r| r.payload.is_empty())
        .unwrap();
    assert_eq!(attr(&odd, "kafka.tombstone"), Some("true"));
    assert_eq!(attr(&odd, "kafka.key.encoding"), Some("base64"));
    assert_eq!(odd.header.as_ref().unwrap().key, "//4=");
    wait_until(Duration::from_secs(60), "the latest source's message", || async {
        count_stream_records(&c, "new").await >= 1
    })
    .await;
    let new = read_stream_records(&c, "new").await;
    assert_eq!(new.len(), 1, "latest: nothing from before the start");
    assert_eq!(&new[0].payload[..], b"orders.eu:new");
}

/// `format: json` refuses a value that is not a JSON object: by default the task fails naming
/// the message; with `errors.tolerance=all` it is a dead letter (the value as it came) and the
/// rest goes on.
#[tokio::test]
async fn kafka_source_undecodable_messages_fail_the_task_or_are_dead_lettered() {
    let kafka = Kafka::start(1);
    kafka.create_topic("events", 1);
    let msg = |k: &str, v: &str| (Some(k.to_owned()), v.as_bytes().to_vec(), vec![]);
    kafka
        .produce(
            "events",
            &[
                msg("a", r#"{"n": 1}"#),
                msg("b", "not json"),
                msg("c", "[1]"),
                msg("d", r#"{"n": 4}"#),
            ],
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let base = json!({"bootstrapServers": kafka.bootstrap(), "topics": "events", "format": "json"});
    let strict = config_with(base.clone(), "strict", json!({}));
    create_connector(&mut c, "strict", "SOURCE", "kafka", &strict)
        .await
        .unwrap();
    let tolerant = config_with(
        base,
        "tolerant",
        json!({"errors.tolerance": "all", "errors.deadletter.stream": "tolerant-dlq"}),
    );
    create_connector(&mut c, "tolerant", "SOURCE", "kafka", &tolerant)
        .await
        .unwrap();
    wait_status(&c, "strict", "FAILED", Duration::from_secs(60)).await;
    let error = connector_report(&c, "strict").await["lastError"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        error.starts_with("data error: the record at {")
            && error.contains("\"offset\":1")
            && error.contains("not a JSON object"),
        "{error}"
    );
    wait_until(
        Duration::from_secs(60),
        "the good messages and the dead letters",
        || async {
            count_stream_records(&c, "tolerant").await >= 2 && count_stream_records(&c, "tolerant-dlq").await >= 2
        },
    )
    .await;
    let keys =
        |rs: Vec<pb::HStreamRecord>| -> Vec<String> { rs.iter().map(|r| r.header.clone().unwrap().key).collect() };
    assert_eq!(keys(read_stream_records(&c, "tolerant").await), ["a", "d"]);
    let dead = read_stream_records(&c, "tolerant-dlq").await;
    assert_eq!(keys(dead.clone()), ["b", "c"]);
    assert_eq!(&dead[0].payload[..], b"not json", "the value as it came");
    assert_eq!(&dead[1].payload[..], b"[1]");
    let a = &dead[1].header.as_ref().unwrap().attributes;
    assert_eq!(a["__connect.errors.stage"], "decode");
    let at: serde_json::Value = serde_json::from_str(&a["__connect.errors.source.position"]).unwrap();
    assert_eq!(at, json!({"topic": "events", "partition": 0, "offset": 2}));
    assert_eq!(connector_report(&c, "tolerant").await["deadLetters"], json!(2.0));
}
