//! Connectors as a client drives them: create, status, reports, task logs, the SQL shell, and
//! the plugins and configs the connector tests use.

use super::*;

/// The task report GetConnector carries: {offset, deliveredRecords, deliveredBytes, restarts,
/// lastError, progress}.
pub fn report(conn: &pb::Connector) -> serde_json::Value {
    let s = conn.offsets.first().cloned().unwrap_or_default();
    struct_to_json(&s)
}

/// [`report`] of connector `name`.
pub async fn connector_report(c: &Client, name: &str) -> serde_json::Value {
    match c
        .clone()
        .get_connector(pb::GetConnectorRequest { name: name.into() })
        .await
    {
        Ok(r) => report(&r.into_inner()),
        Err(_) => serde_json::Value::Null,
    }
}

/// A connector config: `base` (a harness's connection options) with `stream` and `extra` set.
pub fn config_with(mut base: serde_json::Value, stream: &str, extra: serde_json::Value) -> serde_json::Value {
    base["stream"] = serde_json::json!(stream);
    for (k, v) in extra.as_object().expect("object") {
        base[k] = v.clone();
    }
    base
}

pub async fn create_connector(
    c: &mut Client,
    name: &str,
    kind: &str,
    target: &str,
    config: &serde_json::Value,
) -> Result<pb::Connector, tonic::Status> {
    c.create_connector(pb::CreateConnectorRequest {
        name: name.into(),
        r#type: kind.into(),
        target: target.into(),
        config: config.to_string(),
    })
    .await
    .map(|r| r.into_inner())
}

/// Waits (60 s at most) until connector `name` reports status `want`.
pub async fn wait_connector_status(c: &Client, name: &str, want: &str) {
    wait_status(c, name, want, Duration::from_secs(60)).await;
}

/// Connector `name`'s status ("" when there is none).
pub async fn connector_status(c: &Client, name: &str) -> String {
    let mut c = c.clone();
    c.get_connector(pb::GetConnectorRequest { name: name.into() })
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or_default()
}

/// Waits until connector `name` is `want`, failing with its report after `within`.
pub async fn wait_status(c: &Client, name: &str, want: &str, within: Duration) {
    let ok = holds_within(within, || async { connector_status(c, name).await == want }).await;
    assert!(
        ok,
        "{name} did not become {want} within {within:?}: {} {}",
        connector_status(c, name).await,
        connector_report(c, name).await
    );
}

/// Runs `script` through `hstream sql` against `server`; returns stdout and stderr.
pub async fn sql(server: &Server, script: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(workspace_bin("hstream"))
        .args(["--port", &server.addr.port().to_string(), "sql"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run hstream sql");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(script.as_bytes()).await.expect("write the script");
    drop(stdin);
    let out = child.wait_with_output().await.expect("hstream sql");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Connector `name`'s task log lines.
pub async fn task_logs(c: &Client, name: &str) -> String {
    let mut c = c.clone();
    c.get_connector_logs(pb::GetConnectorLogsRequest {
        name: name.into(),
        begin: 0,
        count: 1000,
    })
    .await
    .expect("connector logs")
    .into_inner()
    .logs
}

/// A WASM plugin of `plugins/` built by scripts/build-plugins.sh (`counter_source`, …).
pub fn wasm_plugin(name: &str) -> String {
    let p = repo_root()
        .join("plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run scripts/build-plugins.sh", p.display());
    p.display().to_string()
}
