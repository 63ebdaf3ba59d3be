//! SQL queries as users run them: HStreamDB's quick start through the real shell in a
//! pseudo-terminal; persistent queries (`CREATE STREAM … AS SELECT`, `INSERT INTO … SELECT`)
//! through the shell and HStreamDB's query RPCs, their lifecycle and errors; a persistent query
//! over 1,000,000 records killed mid-way, ending with every matching record and none other.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hstream_integration_tests::*;
use hstream_proto as pb;
use serde_json::{Value, json};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hstream_quick_start_through_the_shell() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let bin = workspace_bin("hstream");
    let port = server.addr.port().to_string();
    let summary = run_python("quickstart_pty.py", &[bin.to_str().unwrap(), &port]).await;
    assert_eq!(summary["exit"], json!([0, 0]), "{summary}");
    assert_eq!(summary["shown"].as_array().map(Vec::len), Some(4), "{summary}");
}

fn json_record(key: &str, v: Value) -> pb::HStreamRecord {
    hstream_integration_tests::json_record(key, &v, &[("origin", "test")])
}

async fn append(c: &mut Client, stream: &str, shard: u64, records: Vec<pb::HStreamRecord>) {
    append_batch(c, stream, shard, records).await;
}

async fn query(c: &mut Client, id: &str) -> Result<pb::Query, tonic::Status> {
    c.get_query(pb::GetQueryRequest { id: id.into() })
        .await
        .map(|r| r.into_inner())
}

/// Creation, results (filter, projection, JSON access, key and attributes kept, records the
/// query cannot evaluate skipped), listing, pause/resume, terminate, delete, and each error
/// a client can meet, through HStreamDB's query RPCs and the shell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_query_lifecycle_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let shards = make_stream(&mut c, "readings", 1).await;
    let rows = vec![
        json_record("a", json!({"id": 1, "humidity": 80, "meta": {"site": "north"}})),
        json_record("b", json!({"id": 2, "humidity": 20, "meta": {"site": "south"}})),
        // A type error for this record only: skipped, the query goes on.
        json_record("a", json!({"id": 3, "humidity": "wet"})),
        // No humidity: compares as NULL, filtered out, no error.
        json_record("b", json!({"id": 4})),
        json_record("b", json!({"id": 5, "humidity": 99.5, "meta": {"site": "east"}})),
    ];
    append(&mut c, "readings", shards[0], rows).await;

    let created = c
        .create_query(pb::CreateQueryRequest {
            sql: "CREATE STREAM wet AS SELECT id, humidity * 2 AS double_h, meta->>'site' AS site \
                  FROM readings WHERE humidity > 70 WITH (SHARD_COUNT = 2);"
                .into(),
            query_name: "q1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            created.id.as_str(),
            created.result_name.as_str(),
            created.sources.clone()
        ),
        ("q1", "wet", vec!["readings".to_owned()])
    );
    // Clients look a query up before they call its node, as HStreamDB's do.
    let node = c
        .lookup_resource(pb::LookupResourceRequest {
            res_type: pb::ResourceType::ResQuery as i32,
            res_id: "q1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node.port, server.addr.port() as u32);
    let e = c
        .lookup_resource(pb::LookupResourceRequest {
            res_type: pb::ResourceType::ResQuery as i32,
            res_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), 400);
    let wet_shards = stream_shards(&mut c, "wet").await;
    assert_eq!(wet_shards.len(), 2, "the result stream takes the WITH options");
    let probe = c.clone();
    wait_until(WAIT, "the query's two results", || {
        let c = probe.clone();
        async move { count_stream_records(&c, "wet").await >= 2 }
    })
    .await;
    // A record appended while it runs is seen too.
    append(
        &mut c,
        "readings",
        shards[0],
        vec![json_record("c", json!({"id": 6, "humidity": 71}))],
    )
    .await;
    let probe = c.clone();
    wait_until(WAIT, "the third result", || {
        let c = probe.clone();
        async move { count_stream_records(&c, "wet").await >= 3 }
    })
    .await;
    let mut got: Vec<(String, Value)> = read_json_stream(&mut c, "wet").await;
    got.sort_by_key(|(_, v)| v["id"].as_f64().map(|f| f as i64));
    assert_eq!(
        got,
        vec![
            ("a".to_owned(), json!({"id": 1.0, "double_h": 160.0, "site": "north"})),
            ("b".to_owned(), json!({"id": 5.0, "double_h": 199.0, "site": "east"})),
            (
                "c".to_owned(),
                json!({"id": 6.0, "double_h": 142.0, "site": Value::Null})
            ),
        ]
    );
    // Attributes are kept.
    let raw = read_stream_records(&c, "wet").await;
    assert!(
        raw.iter()
            .all(|r| r.header.as_ref().unwrap().attributes.get("origin").map(String::as_str) == Some("test"))
    );

    // REST shows what the query read and what it skipped (the record it could not evaluate).
    let (code, body) = http(server.http, "GET", "/queries", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (
            body[0]["id"].as_str(),
            body[0]["recordsSkipped"].as_u64(),
            body[0]["status"].as_str()
        ),
        (Some("q1"), Some(1), Some("TASK_RUNNING")),
        "{body}"
    );
    let rest = server.http;
    wait_until(WAIT, "the query's count of records read", || async move {
        http(rest, "GET", "/queries", None).await.1[0]["recordsRead"].as_u64() >= Some(6)
    })
    .await;
    // Listing, through RPC and the shell; queries are no connectors.
    let list = c
        .list_queries(pb::ListQueriesRequest {})
        .await
        .unwrap()
        .into_inner()
        .queries;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].status, pb::TaskStatusPb::TaskRunning as i32);
    let connectors = c
        .list_connectors(pb::ListConnectorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .connectors;
    assert!(connectors.is_empty(), "{connectors:?}");
    let out = sql(&server, "SHOW QUERIES;\nSHOW CONNECTORS;\n").await;
    assert!(
        out.contains("| q1 ") && out.contains("RUNNING") && out.contains("CREATE STREAM wet AS SELECT"),
        "{out}"
    );

    // INSERT INTO … SELECT through the shell, into an existing stream.
    let out = sql(
        &server,
        "INSERT INTO wet SELECT id, humidity AS double_h FROM readings WHERE id = 2;\n",
    )
    .await;
    assert!(out.contains("created query cli_generated_"), "{out}");
    let probe = c.clone();
    wait_until(WAIT, "the INSERT query's result", || {
        let c = probe.clone();
        async move { count_stream_records(&c, "wet").await >= 4 }
    })
    .await;

    // Errors a client meets, each with HStreamDB's code.
    let cases: Vec<(&str, &str, Code, i64, &str)> = vec![
        (
            "CREATE STREAM wet AS SELECT * FROM readings;",
            "q2",
            Code::AlreadyExists,
            201,
            "wet",
        ),
        (
            "CREATE STREAM x AS SELECT * FROM nope;",
            "q2",
            Code::NotFound,
            200,
            "nope",
        ),
        (
            "INSERT INTO nope SELECT * FROM readings;",
            "q2",
            Code::NotFound,
            200,
            "nope",
        ),
        (
            "INSERT INTO readings SELECT * FROM readings;",
            "q2",
            Code::InvalidArgument,
            402,
            "its own results",
        ),
        (
            "CREATE STREAM y AS SELECT * FROM readings WHERE humidity >> 1;",
            "q2",
            Code::InvalidArgument,
            402,
            "line 1, column 59",
        ),
        (
            "CREATE STREAM y AS SELECT 1 + 'a' FROM readings;",
            "q2",
            Code::InvalidArgument,
            402,
            "+ needs numbers",
        ),
        (
            "SHOW STREAMS;",
            "q2",
            Code::InvalidArgument,
            402,
            "a query is CREATE STREAM",
        ),
        (
            "INSERT INTO readings SELECT * FROM wet;",
            "q2",
            Code::InvalidArgument,
            402,
            "feeds",
        ),
        (
            "CREATE STREAM y AS SELECT * FROM readings;",
            "q1",
            Code::AlreadyExists,
            401,
            "q1",
        ),
        (
            "CREATE STREAM y AS SELECT * FROM readings;",
            "9bad",
            Code::InvalidArgument,
            404,
            "must start with a letter",
        ),
    ];
    for (sql, name, code, error, text) in cases {
        let e = c
            .create_query(pb::CreateQueryRequest {
                sql: sql.into(),
                query_name: name.into(),
            })
            .await
            .unwrap_err();
        assert!(
            e.code() == code && error_code(&e) == error && error_message(&e).contains(text),
            "{sql}: {:?} {} {}",
            e.code(),
            error_code(&e),
            error_message(&e)
        );
    }
    assert!(
        stream_shards(&mut c, "y").await.is_empty(),
        "a refused query creates no stream"
    );
    let e = query(&mut c, "nope").await.unwrap_err();
    assert_eq!((e.code(), error_code(&e)), (Code::NotFound, 400));
    let e = c
        .delete_query(pb::DeleteQueryRequest { id: "q1".into() })
        .await
        .unwrap_err();
    assert_eq!(
        error_code(&e),
        407,
        "a running query is terminated before it is deleted"
    );
    // Connector doors do not create queries.
    let e = c
        .create_connector(super::connectors::create(
            "sneak",
            "sink",
            "query",
            json!({"sql": "x", "stream": "readings", "resultStream": "wet", "id": "x"}),
        ))
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), 605, "{e:?}");
    // Nor reach the tasks of queries: their rules (terminated stays terminated) hold.
    for e in [
        c.resume_connector(pb::ResumeConnectorRequest {
            name: "query:q1".into(),
        })
        .await
        .unwrap_err(),
        c.delete_connector(pb::DeleteConnectorRequest {
            name: "query:q1".into(),
        })
        .await
        .unwrap_err(),
        c.get_connector(pb::GetConnectorRequest {
            name: "query:q1".into(),
        })
        .await
        .unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }
    assert_eq!(http(server.http, "GET", "/connectors/query:q1", None).await.0, 404);
    let e = c
        .get_connector_spec(pb::GetConnectorSpecRequest {
            r#type: "sink".into(),
            target: "query".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), 605, "queries are no connector type: {e:?}");

    // Pause, resume, terminate, delete.
    c.pause_query(pb::PauseQueryRequest { id: "q1".into() }).await.unwrap();
    assert_eq!(
        query(&mut c, "q1").await.unwrap().status,
        pb::TaskStatusPb::TaskPaused as i32
    );
    c.resume_query(pb::ResumeQueryRequest { id: "q1".into() })
        .await
        .unwrap();
    assert_eq!(
        query(&mut c, "q1").await.unwrap().status,
        pb::TaskStatusPb::TaskRunning as i32
    );
    let out = sql(&server, "TERMINATE QUERY q1;\n").await;
    assert!(out.contains("terminated query q1"), "{out}");
    assert_eq!(
        query(&mut c, "q1").await.unwrap().status,
        pb::TaskStatusPb::TaskTerminated as i32
    );
    let e = c
        .resume_query(pb::ResumeQueryRequest { id: "q1".into() })
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), 408);
    // A terminated query stays terminated across a restart.
    let mut server = server;
    server.kill();
    server.restart();
    let mut c = server.client().await;
    assert_eq!(
        query(&mut c, "q1").await.unwrap().status,
        pb::TaskStatusPb::TaskTerminated as i32
    );
    let out = sql(&server, "DROP QUERY q1;\nDROP QUERY q1 IF EXISTS;\n").await;
    assert!(
        out.contains("dropped query q1") && out.contains("query q1 does not exist"),
        "{out}"
    );
    let e = query(&mut c, "q1").await.unwrap_err();
    assert_eq!(error_code(&e), 400);
    assert!(
        !stream_shards(&mut c, "wet").await.is_empty(),
        "the result stream stays"
    );
}

/// Per key, the `seq`s of records in stream order.
fn seqs_by_key(records: &[(String, Value)]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (key, v) in records {
        out.entry(key.clone())
            .or_default()
            .push(v["seq"].as_f64().unwrap() as u64);
    }
    out
}

/// 1,000,000 generated records filtered by a persistent query, the server killed (SIGKILL)
/// while the query runs: after the restart every matching record is in the result stream, no
/// other record is, and each key's records keep their order (a replay after the kill may
/// repeat records after the last checkpoint: counted, never a gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_query_over_a_million_records_survives_sigkill() {
    const N: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let cfg = json!({"stream": "big", "count": N, "rate": 0, "keys": 8, "batchSize": 1000, "payloadBytes": 0});
    c.create_connector(super::connectors::create("gen", "source", "generator", cfg))
        .await
        .unwrap();
    wait_status(&c, "gen", "COMPLETED", Duration::from_secs(300)).await;
    c.create_query(pb::CreateQueryRequest {
        sql: "CREATE STREAM big_third AS SELECT key, seq, n FROM big WHERE n % 3 = 0;".into(),
        query_name: "third".into(),
    })
    .await
    .unwrap();
    let want = N.div_ceil(3) as usize;
    let probe = c.clone();
    wait_until(Duration::from_secs(300), "the query part-way", || {
        let c = probe.clone();
        async move { count_stream_records(&c, "big_third").await >= want / 4 }
    })
    .await;
    let before = count_stream_records(&c, "big_third").await;
    assert!(before < want, "killed mid-way: {before} of {want}");
    server.kill();
    server.restart();
    let mut c = server.client().await;
    let probe = c.clone();
    wait_until(Duration::from_secs(300), "every matching record", || {
        let c = probe.clone();
        async move {
            let mut c2 = c.clone();
            let got = read_json_stream(&mut c2, "big_third").await;
            got.iter()
                .map(|(k, v)| (k.clone(), v["seq"].as_f64().unwrap() as u64))
                .collect::<BTreeSet<_>>()
                .len()
                >= want
        }
    })
    .await;
    // It has caught up: pause so nothing more moves while the result is read.
    c.pause_query(pb::PauseQueryRequest { id: "third".into() })
        .await
        .unwrap();
    let got = read_json_stream(&mut c, "big_third").await;
    let source = read_json_stream(&mut c, "big").await;
    let expected: Vec<(String, Value)> = source
        .into_iter()
        .filter(|(_, v)| (v["n"].as_f64().unwrap() as u64).is_multiple_of(3))
        .collect();
    assert_eq!(expected.len(), want);
    let (want_by_key, got_by_key) = (seqs_by_key(&expected), seqs_by_key(&got));
    let mut duplicates = 0usize;
    for (key, want_seqs) in &want_by_key {
        let got_seqs = got_by_key.get(key).cloned().unwrap_or_default();
        // First occurrences, in stream order, must be the expected sequence exactly.
        let mut seen = BTreeSet::new();
        let firsts: Vec<u64> = got_seqs.iter().copied().filter(|s| seen.insert(*s)).collect();
        assert!(
            firsts == *want_seqs,
            "key {key}: {} results, {} expected, order or set differs",
            firsts.len(),
            want_seqs.len()
        );
        duplicates += got_seqs.len() - firsts.len();
    }
    assert_eq!(got_by_key.len(), want_by_key.len(), "no other keys");
    assert!(
        got.iter().all(|(_, v)| v.as_object().unwrap().len() == 3),
        "the projection: key, seq, n"
    );
    eprintln!(
        "persistent query: {want} of {N} records matched; killed at {before}; {duplicates} repeated after the restart"
    );
}
