//! The server on the etcd MetaStore: metadata kept across restarts, etcd going away and coming
//! back under a running server, and a single node moving its metadata from SQLite to etcd.

use std::time::Duration;

use hstream_integration_tests::etcd::Etcd;
use hstream_integration_tests::*;
use hstream_proto as pb;
use tonic::Code;

use crate::hardening::{append_one, payload_strings, refused_start, sub_req};

/// The server on the etcd MetaStore (`--metastore-uri etcd://…/prefix`): streams and records
/// survive a restart; with etcd down, metadata requests fail with UNAVAILABLE, appends go on,
/// and the server recovers by itself when etcd is back; the data directory is tied to the etcd
/// cluster id as to SQLite's, a new data directory beside the metadata is refused, and another
/// prefix is another cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_keeps_its_metadata_in_etcd() {
    let etcd = Etcd::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let uri = etcd.uri("e2e");
    let flags = ["--metastore-uri", uri.as_str()];
    let mut server = Server::start(&data, &flags);
    let mut client = server.client().await;
    let shards = make_stream(&mut client, "s", 2).await;
    for i in 0..3 {
        append_one(&mut client, "s", shards[0], &format!("r{i}")).await.unwrap();
    }
    server.terminate();
    assert!(!data.join("meta.db").exists(), "no SQLite metastore beside etcd");

    let mut server = Server::start(&data, &flags);
    let mut client = server.client().await;
    let listed = client
        .list_streams(pb::ListStreamsRequest {})
        .await
        .unwrap()
        .into_inner()
        .streams;
    assert_eq!(listed.iter().map(|s| s.stream_name.as_str()).collect::<Vec<_>>(), ["s"]);
    assert_eq!(
        payload_strings(&read_shard_to_tail(&mut client, "s", shards[0]).await),
        ["r0", "r1", "r2"]
    );
    assert_eq!(append_one(&mut client, "s", shards[0], "r3").await.unwrap(), 4);

    // etcd gone: a request that needs metadata fails with UNAVAILABLE naming etcd, and changes
    // nothing; appends to known shards need no metadata and go on; once etcd is back the
    // server serves again without a restart.
    let mut etcd = etcd;
    tokio::task::block_in_place(|| etcd.kill());
    let new_stream = pb::Stream {
        stream_name: "t".into(),
        replication_factor: 1,
        backlog_duration: 0,
        shard_count: 1,
        creation_time: None,
    };
    let err = client.create_stream(new_stream.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(error_message(&err).contains("etcd at 127.0.0.1"), "{err:?}");
    assert_eq!(append_one(&mut client, "s", shards[0], "r4").await.unwrap(), 5);
    tokio::task::block_in_place(|| etcd.restart());
    client.create_stream(new_stream).await.unwrap();
    server.terminate();

    let err = refused_start(&tmp.path().join("new-data"), &flags);
    assert!(err.contains("lists 3 shard(s)"), "{err}");
    // Another prefix of the same etcd is another, empty cluster.
    let other_uri = etcd.uri("other");
    let mut other = Server::start(&tmp.path().join("other-data"), &["--metastore-uri", other_uri.as_str()]);
    let mut client = other.client().await;
    assert!(
        client
            .list_streams(pb::ListStreamsRequest {})
            .await
            .unwrap()
            .into_inner()
            .streams
            .is_empty()
    );
    other.terminate();
}

/// Moving from the embedded SQLite metastore to etcd (`--copy-metastore-to`): the stream and
/// its records, the subscription with its committed progress and the connector with its
/// checkpoint are all there on etcd, and the connector resumes from its checkpoint (no record
/// generated twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_moves_its_metadata_from_sqlite_to_etcd() {
    let etcd = Etcd::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start(&data, &[]);
    let h = server.http;
    let mut client = server.client().await;
    let generator = serde_json::json!({"name": "gen", "type": "source", "target": "generator",
        "config": {"stream": "moved", "rate": 2000, "keys": 3}});
    assert_eq!(http(h, "POST", "/connectors", Some(&generator)).await.0, 201);
    let next = |h| async move {
        http(h, "GET", "/connectors/gen/offsets", None).await.1["offset"]["next"]
            .as_u64()
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(30), "1000 generated records", || async move {
        next(h).await >= 1000
    })
    .await;
    assert_eq!(http(h, "PUT", "/connectors/gen/pause", None).await.0, 202);
    let before = next(h).await;
    assert_eq!(
        count_stream_records(&client, "moved").await as u64,
        before,
        "one record per step"
    );
    let shard = stream_shards(&mut client, "moved").await[0].shard_id;
    client.create_subscription(sub_req("sub", "moved")).await.unwrap();
    // A consumer acks 300 records; the graceful stop commits that progress. (With at most 100
    // unacked records out, the next 100 arriving proves the server took the acks.)
    let first = TestConsumer::start(&client, "sub", "c1", false).await.unwrap();
    let mut acked = std::collections::BTreeSet::new();
    for round in 1..=3 {
        wait_until(Duration::from_secs(30), "the next 100 records", || async {
            first.count() >= 100 * round
        })
        .await;
        let ids: Vec<pb::RecordId> = first.ids().into_iter().take(100 * round).collect();
        acked.extend(ids.iter().map(|id| (id.shard_id, id.batch_id, id.batch_index)));
        first.ack(ids).await;
    }
    wait_until(Duration::from_secs(30), "the acks taken", || async {
        first.count() >= 400
    })
    .await;
    first.kill();
    server.terminate();

    let out = std::process::Command::new(workspace_bin("hstream-server"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--copy-metastore-to", &etcd.uri("moved")])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        said.contains("1 stream(s)") && said.contains("1 connector(s)"),
        "{said}"
    );

    let uri = etcd.uri("moved");
    let mut server = Server::start(&data, &["--metastore-uri", uri.as_str()]);
    let h = server.http;
    let mut client = server.client().await;
    assert_eq!(count_stream_records(&client, "moved").await as u64, before);
    let got = client
        .get_subscription(pb::GetSubscriptionRequest { id: "sub".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.offsets.iter().map(|o| o.shard_id).collect::<Vec<_>>(), [shard]);
    // The subscription goes on from its copied progress: together the two consumers saw every
    // record, and what the first acked is not delivered again (all of it would be, had the
    // progress stayed behind).
    let second = TestConsumer::start(&client, "sub", "c2", true).await.unwrap();
    let total = before as usize;
    let all_seen = || {
        let mut seen = acked.clone();
        seen.extend(second.ids().iter().map(|id| (id.shard_id, id.batch_id, id.batch_index)));
        seen.len()
    };
    wait_until(
        Duration::from_secs(30),
        "every record seen once across the move",
        || async { all_seen() >= total },
    )
    .await;
    let again = second
        .ids()
        .iter()
        .filter(|id| acked.contains(&(id.shard_id, id.batch_id, id.batch_index)))
        .count();
    println!(
        "moved to etcd: {} of {total} records acked before, {again} of them delivered again after",
        acked.len()
    );
    assert!(
        again < acked.len() / 2,
        "{again} of the {} records acked before the move were delivered again",
        acked.len()
    );
    second.kill();
    assert_eq!(
        http(h, "GET", "/connectors/gen/status", None).await.1["connector"]["state"],
        "STOPPED"
    );
    assert_eq!(http(h, "PUT", "/connectors/gen/resume", None).await.0, 202);
    wait_until(Duration::from_secs(30), "500 more records", || async move {
        next(h).await >= before + 500
    })
    .await;
    assert_eq!(http(h, "PUT", "/connectors/gen/pause", None).await.0, 202);
    let after = next(h).await;
    assert_eq!(
        count_stream_records(&client, "moved").await as u64,
        after,
        "the generator went on from its checkpoint ({before}), not from the start"
    );
    server.terminate();
}

/// The server reaches etcd over TLS (its certificate from a CA of the test's own, a client
/// certificate for `--client-cert-auth`) as a user whose role covers only its prefix: it
/// serves, survives a restart, and authenticates again by itself when etcd refuses its token
/// (as once a simple token expired). A wrong password, a CA that did not sign etcd's certificate and
/// a prefix outside the user's role each stop the start with an error saying so, and the
/// password appears in no log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reaches_etcd_over_tls_as_a_user() {
    const PASSWORD: &str = "hs-s3cret-pw";
    let etcd = Etcd::start_tls(&[]).await;
    etcd.enable_auth("root-pw", "hstream", PASSWORD, "/secure").await;
    let ca = etcd.tls.as_ref().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let wrong_pw = tmp.path().join("wrong-pw");
    std::fs::write(&wrong_pw, "not-it\n").unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let flags = |uri: String, ca_file: String, password_file: String| {
        vec![
            "--metastore-uri".to_owned(),
            uri,
            "--metastore-ca-file".into(),
            ca_file,
            "--metastore-cert-file".into(),
            path(&ca.client_cert),
            "--metastore-key-file".into(),
            path(&ca.client_key),
            "--metastore-user".into(),
            "hstream".into(),
            "--metastore-password-file".into(),
            password_file,
        ]
    };
    let good = flags(etcd.uri("secure"), path(&ca.ca), path(&pw));
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    let log = tmp.path().join("server.log");
    let mut server = Server::start_logged(&data, &good, &log, "hstream_server=debug,info");
    let mut client = server.client().await;
    let shards = make_stream(&mut client, "s", 1).await;
    append_one(&mut client, "s", shards[0], "r0").await.unwrap();
    // The server's token is void (as after it expired): it authenticates again by itself.
    etcd.void_tokens("root-pw").await;
    make_stream(&mut client, "t", 1).await;
    server.terminate();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("authenticated to etcd again"), "{logged}");
    let mut server = Server::start_logged(&data, &good, &log, "info");
    let mut client = server.client().await;
    assert_eq!(
        payload_strings(&read_shard_to_tail(&mut client, "s", shards[0]).await),
        ["r0"]
    );
    server.terminate();

    let refused = |flags: Vec<String>| {
        let dir = tmp.path().join("refused");
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        refused_start(&dir, &flags)
    };
    let err = refused(flags(etcd.uri("secure"), path(&ca.ca), path(&wrong_pw)));
    println!("wrong password: {err}");
    assert!(
        err.contains(r#"refused user "hstream""#) && err.contains("authentication failed"),
        "{err}"
    );
    let other_ca = tmp.path().join("other-ca");
    std::fs::create_dir_all(&other_ca).unwrap();
    let other = hstream_integration_tests::tls::TestCa::make(&other_ca);
    let err = refused(flags(etcd.uri("secure"), path(&other.ca), path(&pw)));
    println!("CA that did not sign etcd's certificate: {err}");
    assert!(err.contains("certificate"), "{err}");
    let err = refused(flags(etcd.uri("elsewhere"), path(&ca.ca), path(&pw)));
    println!("prefix outside the user's role: {err}");
    assert!(
        err.contains("permission denied") && err.contains(r#"user "hstream""#),
        "{err}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    for text in [&logged, &err] {
        assert!(!text.contains(PASSWORD), "the password was logged");
    }
}
