use super::*;

/// The live tier: the sink (transactional) and the source through a real Kafka broker named by
/// `HSTREAM_TEST_KAFKA` (`host:port`). scripts/test.sh runs it (with `--ignored`) only when
/// that is set, and otherwise prints that it was not run.
#[tokio::test]
#[ignore = "needs a live Kafka broker: set HSTREAM_TEST_KAFKA=host:port (scripts/test.sh runs it then)"]
async fn kafka_live_broker_round_trip() {
    let kafka = Kafka::live().expect("HSTREAM_TEST_KAFKA names the broker");
    let tag = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let (t_out, t_offsets) = (format!("hstream-live-{tag}-out"), format!("hstream-live-{tag}-offsets"));
    kafka.create_topic(&t_out, 6);
    kafka.create_topic(&t_offsets, 1);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    fill_stream(&mut c, "src").await;
    create_connector(
        &mut c,
        "k",
        "SINK",
        "kafka",
        &json!({"stream": "src", "bootstrapServers": kafka.bootstrap(), "topic": t_out,
                "transactional": true, "offsetsTopic": t_offsets}),
    )
    .await
    .unwrap();
    let msgs = wait_every_record(&kafka, &c, &t_out, true, Duration::from_secs(300)).await;
    assert_eq!(assert_complete(&msgs), 0);
    // And back: the topic the sink wrote, read by the source into a stream.
    create_connector(
        &mut c,
        "ks",
        "SOURCE",
        "kafka",
        &json!({"stream": "back", "bootstrapServers": kafka.bootstrap(), "topics": t_out}),
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(300), "every record back", || async {
        count_stream_records(&c, "back").await >= KEYS * PER_KEY
    })
    .await;
    assert_eq!(count_stream_records(&c, "back").await, KEYS * PER_KEY);
}
