use super::*;

#[tokio::test]
async fn kafka_bad_configs_are_refused_naming_the_field_and_secrets_stay_hidden() {
    let kafka = Kafka::start(1);
    kafka.create_topic("out", 1);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let c = server.client().await;
    let refused = |kind: &'static str, cfg: Value| {
        let mut c = c.clone();
        async move {
            create_connector(&mut c, "bad", kind, "kafka", &cfg)
                .await
                .expect_err("refused")
                .message()
                .to_owned()
        }
    };
    let e = refused("SINK", json!({"stream": "s", "topic": "out"})).await;
    assert!(e.contains("bootstrapServers"), "{e}");
    let e = refused(
        "SINK",
        json!({"stream": "s", "topic": "out", "bootstrapServers": kafka.bootstrap(), "kafka.no.such.property": "1"}),
    )
    .await;
    assert!(e.contains("kafka.no.such.property"), "{e}");
    let e = refused(
        "SOURCE",
        json!({"stream": "s", "topicPattern": "orders[", "bootstrapServers": kafka.bootstrap()}),
    )
    .await;
    assert!(e.contains("topicPattern"), "{e}");
    let e = refused(
        "SINK",
        json!({"stream": "s", "topic": "bad topic", "bootstrapServers": kafka.bootstrap()}),
    )
    .await;
    assert!(e.contains("topic") && e.contains("bad topic"), "{e}");
    let e = refused(
        "SINK",
        json!({"stream": "s", "topic": "missing", "bootstrapServers": kafka.bootstrap()}),
    )
    .await;
    assert!(e.contains("missing") && e.contains("does not exist"), "{e}");
    // A value librdkafka refuses is named with librdkafka's reason.
    let e = refused(
        "SINK",
        json!({"stream": "s", "topic": "out", "bootstrapServers": kafka.bootstrap(), "kafka.linger.ms": "not-a-number"}),
    )
    .await;
    assert!(e.contains("kafka.linger.ms") && e.contains("Invalid value"), "{e}");
    // A secret of the wrong shape (REST JSON), of librdkafka's own and of a name that only looks
    // secret: whatever happens to the config, its value is never shown.
    for (prop, value) in [
        ("sasl.password", json!({"nested": "hunter2-secret"})),
        ("sasl.password", json!(["hunter2-secret"])),
        ("custom.password", json!(["hunter2-secret"])),
        ("custom.password", json!("hunter2-secret")),
    ] {
        let mut cc = c.clone();
        let cfg = json!({"stream": "s", "topic": "out", "bootstrapServers": kafka.bootstrap(), "kafka": {prop: value}});
        let shown = match create_connector(&mut cc, "shape", "SINK", "kafka", &cfg).await {
            Err(e) => e.message().to_owned(),
            Ok(conn) => {
                let (_, listed) = http(server.http, "GET", "/connectors/shape", None).await;
                cc.delete_connector(pb::DeleteConnectorRequest { name: "shape".into() })
                    .await
                    .unwrap();
                format!("{conn:?} {listed}")
            }
        };
        assert!(!shown.contains("hunter2"), "{prop}: {shown}");
    }
    // A broker that takes connections and never answers: refused within a bounded time.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let started = Instant::now();
    let e = refused(
        "SOURCE",
        json!({"stream": "s", "topics": "in", "bootstrapServers": addr.to_string()}),
    )
    .await;
    assert!(e.contains("no Kafka broker answered"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    drop(silent);
}

#[tokio::test]
async fn kafka_secrets_are_masked_in_show_connectors_and_rest() {
    let kafka = Kafka::start(1);
    kafka.create_topic("out", 1);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    make_stream(&mut c, "s", 1).await;
    // librdkafka takes the property; the mock cluster has no SASL listener, so no
    // security.protocol here: the password is only carried.
    create_connector(
        &mut c,
        "masked",
        "SINK",
        "kafka",
        &json!({"stream": "s", "topic": "out", "bootstrapServers": kafka.bootstrap(),
                "kafka.sasl.password": "hunter2-secret", "kafka.ssl.key.password": "other-secret-pw"}),
    )
    .await
    .unwrap();
    let shown = sql(&server, "SHOW CONNECTORS;").await;
    assert!(shown.contains("masked"), "{shown}");
    let got = c
        .get_connector(pb::GetConnectorRequest { name: "masked".into() })
        .await
        .unwrap()
        .into_inner();
    let (status, rest) = http(server.http, "GET", "/connectors/masked", None).await;
    assert_eq!(status, 200, "{rest}");
    let (_, rest_list) = http(server.http, "GET", "/connectors", None).await;
    let text = format!("{got:?}{shown}{rest}{rest_list}");
    assert!(!text.contains("hunter2") && !text.contains("other-secret-pw"), "{text}");
    assert!(rest.to_string().contains("**********"), "{rest}");
}
