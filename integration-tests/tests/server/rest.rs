//! The REST API: connectors through Kafka Connect-shaped routes, seen identically over gRPC.

use std::time::Duration;

use hstream_integration_tests::*;
use hstream_proto as pb;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_over_rest_match_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let h = server.http;
    assert_eq!(http(h, "GET", "/health", None).await, (200, json!({"status": "ok"})));

    // Create over REST; gRPC sees it.
    let generator = json!({"name": "gen", "type": "source", "target": "generator",
                     "config": {"stream": "rest_s", "rate": 5000, "keys": 2}});
    let (code, body) = http(h, "POST", "/connectors", Some(&generator)).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["config"]["rate"], 5000);
    let (code, _) = http(h, "POST", "/connectors", Some(&generator)).await;
    assert_eq!(code, 409, "conflicting create");
    // The sink reads the stream the generator creates on its first append: created after it.
    wait_until(Duration::from_secs(30), "the generator's stream", || async move {
        http(h, "GET", "/streams", None)
            .await
            .1
            .as_array()
            .is_some_and(|l| l.iter().any(|s| s["name"] == "rest_s"))
    })
    .await;
    let sink = json!({"name": "hole", "type": "sink", "target": "blackhole", "config": {"stream": "rest_s"}});
    assert_eq!(http(h, "POST", "/connectors", Some(&sink)).await.0, 201);
    let mut c = server.client().await;
    let listed: Vec<String> = c
        .list_connectors(pb::ListConnectorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .connectors
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(listed, ["gen", "hole"]);
    assert_eq!(http(h, "GET", "/connectors", None).await.1, json!(["gen", "hole"]));

    // Pause over gRPC; REST sees it. Resume and restart over REST.
    c.pause_connector(pb::PauseConnectorRequest { name: "gen".into() })
        .await
        .unwrap();
    assert_eq!(
        http(h, "GET", "/connectors/gen/status", None).await.1["connector"]["state"],
        "STOPPED"
    );
    assert_eq!(http(h, "PUT", "/connectors/gen/resume", None).await.0, 202);
    let status = |mut c: Client| async move {
        c.get_connector(pb::GetConnectorRequest { name: "gen".into() })
            .await
            .unwrap()
            .into_inner()
            .status
    };
    assert_eq!(status(c.clone()).await, "RUNNING");
    assert_eq!(http(h, "POST", "/connectors/gen/restart", None).await.0, 202);
    assert_eq!(status(c.clone()).await, "RUNNING");
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "records through the blackhole", || {
        let _ = &probe;
        async move {
            http(h, "GET", "/connectors/hole/offsets", None).await.1["deliveredRecords"]
                .as_f64()
                .unwrap_or(0.0)
                > 100.0
        }
    })
    .await;

    // Config: merge over REST, validated; offsets reset only when paused.
    let (code, body) = http(h, "PUT", "/connectors/gen/config", Some(&json!({"keys": 5}))).await;
    assert_eq!((code, body["config"]["keys"].as_u64()), (200, Some(5)), "{body}");
    let (code, body) = http(h, "PUT", "/connectors/gen/config", Some(&json!({"keys": "five"}))).await;
    assert_eq!(code, 400);
    assert!(body["message"].as_str().unwrap().contains("keys"), "{body}");
    assert_eq!(
        http(h, "DELETE", "/connectors/gen/offsets", None).await.0,
        409,
        "not paused"
    );
    assert_eq!(http(h, "PUT", "/connectors/gen/pause", None).await.0, 202);
    let (code, body) = http(h, "DELETE", "/connectors/gen/offsets", None).await;
    assert_eq!((code, body["reset"].as_bool()), (200, Some(true)), "{body}");

    // Bad requests: field paths, 404s.
    let (code, body) = http(
        h,
        "POST",
        "/connectors",
        Some(&json!({"name": "x", "type": "source", "target": "generator",
                                                                    "config": {"rate": "fast"}})),
    )
    .await;
    assert_eq!(code, 400);
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("rate: ") && msg.contains("\"stream\" is a required property"),
        "{msg}"
    );
    let (code, body) = http(h, "POST", "/connectors", Some(&json!({"name": "x", "kind": "source"}))).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(http(h, "GET", "/connectors/nope", None).await.0, 404);
    assert_eq!(http(h, "GET", "/connector-plugins/source-nope/spec", None).await.0, 404);
    assert!(
        c.get_connector(pb::GetConnectorRequest { name: "x".into() })
            .await
            .is_err(),
        "nothing was created"
    );

    // Plugins, specs, per-field validation.
    let plugins = http(h, "GET", "/connector-plugins", None).await.1;
    assert!(
        plugins
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == "source-generator")
    );
    let spec = http(h, "GET", "/connector-plugins/source-generator/spec", None).await.1;
    assert_eq!(spec["connectionSpecification"]["required"], json!(["stream"]));
    let v = http(
        h,
        "PUT",
        "/connector-plugins/generator/config/validate",
        Some(&json!({"stream": "s", "keys": 0})),
    )
    .await
    .1;
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"][0]["field"], "keys");
    let v = http(
        h,
        "PUT",
        "/connector-plugins/source-generator/config/validate",
        Some(&json!({"stream": "s"})),
    )
    .await
    .1;
    assert_eq!(v, json!({"valid": true, "errors": []}));
    // A plain type both kinds have is named back as the choice; an unknown one says so once.
    let (code, body) = http(
        h,
        "PUT",
        "/connector-plugins/postgresql/config/validate",
        Some(&json!({})),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("source-postgresql") && msg.contains("sink-postgresql"),
        "{msg}"
    );
    let (code, body) = http(h, "PUT", "/connector-plugins/nope/config/validate", Some(&json!({}))).await;
    assert_eq!(
        (code, body["message"].as_str()),
        (404, Some("unknown connector type \"nope\"")),
        "{body}"
    );
    // Queries are no connector type.
    assert_eq!(http(h, "GET", "/connector-plugins/sink-query/spec", None).await.0, 404);
    // A connector whose stream cannot exist is refused at create, naming the field.
    let (code, body) = http(
        h,
        "POST",
        "/connectors",
        Some(&json!({"name": "badstream", "type": "source", "target": "generator", "config": {"stream": "no spaces allowed"}})),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("stream: invalid stream name"),
        "{body}"
    );
    // A huge bad value is not echoed back whole.
    let huge = "x".repeat(1 << 20);
    let (code, body) = http(
        h,
        "POST",
        "/connectors",
        Some(&json!({"name": "big", "type": "source", "target": "generator", "config": {"stream": "s", "rate": huge}})),
    )
    .await;
    assert_eq!(code, 400);
    assert!(body.to_string().len() < 8192, "a {}-byte error", body.to_string().len());
    let (code, body) = http(h, "GET", &format!("/connectors/{}", "y".repeat(4000)), None).await;
    assert_eq!(code, 404);
    assert!(body.to_string().len() < 8192, "a {}-byte error", body.to_string().len());

    assert!(
        http(h, "GET", "/streams", None)
            .await
            .1
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "rest_s")
    );
    assert_eq!(http(h, "GET", "/subscriptions", None).await.1, json!([]));

    // Drop over REST; gRPC sees it gone.
    assert_eq!(http(h, "DELETE", "/connectors/gen", None).await.0, 204);
    let e = c
        .get_connector(pb::GetConnectorRequest { name: "gen".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

/// The OpenAPI document passes a real validator and lists every route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_validates_and_lists_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (code, doc) = http(server.http, "GET", "/openapi.json", None).await;
    assert_eq!(code, 200);
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    let out = tokio::process::Command::new(python())
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let want = [
        ("get", "/connectors"),
        ("post", "/connectors"),
        ("get", "/connectors/{name}"),
        ("delete", "/connectors/{name}"),
        ("get", "/connectors/{name}/config"),
        ("put", "/connectors/{name}/config"),
        ("get", "/connectors/{name}/status"),
        ("put", "/connectors/{name}/pause"),
        ("put", "/connectors/{name}/resume"),
        ("post", "/connectors/{name}/restart"),
        ("get", "/connectors/{name}/offsets"),
        ("delete", "/connectors/{name}/offsets"),
        ("get", "/connector-plugins"),
        ("get", "/connector-plugins/{type}/spec"),
        ("put", "/connector-plugins/{type}/config/validate"),
        ("get", "/streams"),
        ("get", "/subscriptions"),
        ("get", "/health"),
    ];
    for (method, p) in want {
        assert!(
            doc["paths"][p][method].is_object(),
            "{method} {p} missing from the OpenAPI document"
        );
        // And the route is really served (a 404 for an unknown name is fine; 405 would not be).
        let concrete = p.replace("{name}", "nope").replace("{type}", "source-generator");
        let (code, _) = http(server.http, &method.to_uppercase(), &concrete, Some(&json!({}))).await;
        assert_ne!(code, 405, "{method} {p} is documented but not routed");
    }
}
