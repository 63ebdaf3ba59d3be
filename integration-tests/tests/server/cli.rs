//! The `hstream` CLI as a user runs it: SQL piped in, scripts with -e, a tailing SELECT stopped
//! with Ctrl-C; and what SQL does, the other doors (gRPC, REST) see.

use std::process::Stdio;
use std::time::Duration;

use hstream_integration_tests::*;
use hstream_proto as pb;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The data rows of the tables in `out`, as trimmed cells.
fn rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect())
        .collect()
}

fn has_row(out: &str, want: &[&str]) -> bool {
    rows(out)
        .iter()
        .any(|r| r == &want.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

fn hstream(server: &Server) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(workspace_bin("hstream"));
    c.args(["--port", &server.addr.port().to_string(), "sql"]);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_sql_drives_the_pipeline_and_other_doors_see_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let script = "CREATE STREAM orders WITH (SHARD_COUNT = 2,\n  REPLICATE = 1);\nSHOW STREAMS;\n\
                  CREATE SOURCE CONNECTOR gen FROM generator WITH (\"stream\" = 'orders', \"count\" = 500, \"rate\" = 0);\n\
                  CREATE SINK CONNECTOR hole TO blackhole WITH (stream = \"orders\");\n\
                  PAUSE CONNECTOR hole;\nSHOW CONNECTORS;\n";
    let mut child = hstream(&server)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        has_row(&stdout, &["orders", "2", &reported_replication(1).to_string(), "0"]),
        "a table of streams: {stdout}"
    );
    assert!(has_row(&stdout, &["hole", "SINK", "blackhole", "STOPPED"]), "{stdout}");
    // gRPC and REST see what SQL did.
    let mut c = server.client().await;
    let s = c
        .get_stream(pb::GetStreamRequest { name: "orders".into() })
        .await
        .unwrap()
        .into_inner()
        .stream
        .unwrap();
    assert_eq!(s.shard_count, 2);
    assert_eq!(
        http(server.http, "GET", "/connectors/hole/status", None).await.1["connector"]["state"],
        "STOPPED"
    );
    // And SQL sees what REST does (and resumes through SQL too).
    assert_eq!(http(server.http, "PUT", "/connectors/hole/pause", None).await.0, 202);
    let out = hstream(&server)
        .args(["-e", "RESUME CONNECTOR hole;"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = hstream(&server)
        .args(["-e", "SHOW CONNECTORS;"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(has_row(&stdout, &["hole", "SINK", "blackhole", "RUNNING"]), "{stdout}");
    let out = hstream(&server)
        .args([
            "-e",
            "DROP CONNECTOR hole; DROP CONNECTOR gen; DROP CONNECTOR gen IF EXISTS;",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(http(server.http, "GET", "/connectors", None).await.1, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sql_names_the_position_and_executes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let out = hstream(&server)
        .args(["-e", "CREATE STREAM fine;\nCREATE STREEM broken;"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2, column 8") && stderr.contains("\"STREEM\""),
        "{stderr}"
    );
    let mut c = server.client().await;
    assert!(
        c.list_streams(pb::ListStreamsRequest {})
            .await
            .unwrap()
            .into_inner()
            .streams
            .is_empty(),
        "nothing executed"
    );
    // A script may start with '-' (a comment), as scripts do.
    let out = hstream(&server)
        .args(["-e", "-- made by a script\nCREATE STREAM commented;"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("created stream commented"));
    // Server-side errors come back as their message.
    let out = hstream(&server)
        .args(["-e", "DROP STREAM nope;"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stream \"nope\" not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_then_select_emit_changes_shows_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let ok = hstream(&server)
        .args(["-e", "CREATE STREAM s;"])
        .output()
        .await
        .unwrap();
    assert!(ok.status.success());
    let mut tail = hstream(&server)
        .args(["-e", "SELECT * FROM s EMIT CHANGES;"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = server.client().await;
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "the tailing query's subscription", || {
        let mut c = probe.clone();
        async move {
            !c.list_subscriptions(pb::ListSubscriptionsRequest {})
                .await
                .unwrap()
                .into_inner()
                .subscription
                .is_empty()
        }
    })
    .await;
    let out = hstream(&server)
        .args(["-e", "INSERT INTO s (id, name) VALUES (7, 'seven');"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let row = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a row")
        .unwrap()
        .unwrap();
    let row: serde_json::Value = serde_json::from_str(&row).unwrap();
    assert_eq!(row, json!({"id": 7, "name": "seven"}));
    // Ctrl-C ends the query cleanly and removes its subscription.
    let pid = tail.id().unwrap() as i32;
    assert_eq!(sigint(pid), 0);
    let status = tokio::time::timeout(Duration::from_secs(30), tail.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success());
    assert!(
        c.list_subscriptions(pb::ListSubscriptionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .subscription
            .is_empty()
    );
}

#[allow(unsafe_code)]
fn sigint(pid: i32) -> i32 {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGINT) }
}

/// An interactive session through a pseudo-terminal (pexpect): prompt, multi-line statement,
/// table, error, Ctrl-C out of EMIT CHANGES, quit; history is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_shell_through_a_pty() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let history = dir.path().join("history");
    let bin = workspace_bin("hstream");
    let port = server.addr.port().to_string();
    let summary = run_python(
        "shell_pty.py",
        &[bin.to_str().unwrap(), &port, history.to_str().unwrap()],
    )
    .await;
    assert_eq!(summary["exit"], 0, "{summary}");
    let mut c = server.client().await;
    assert!(
        c.list_subscriptions(pb::ListSubscriptionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .subscription
            .is_empty(),
        "Ctrl-C removed the tailing query's subscription"
    );
    let hist = std::fs::read_to_string(&history).unwrap();
    assert!(hist.contains("SHOW STREAMS;"), "{hist}");
}

/// The subcommands that do without SQL: streams, subscriptions and connectors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subcommands_without_sql() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let port = server.addr.port().to_string();
    let run = |args: &'static [&'static str]| {
        let port = port.clone();
        async move {
            let out = tokio::process::Command::new(workspace_bin("hstream"))
                .args(["--port", &port])
                .args(args)
                .output()
                .await
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    assert_eq!(run(&["stream", "create", "cmd_s", "-s", "3"]).await.0, Some(0));
    let (_, out, _) = run(&["stream", "list"]).await;
    assert!(
        has_row(&out, &["cmd_s", "3", &reported_replication(1).to_string(), "0"]),
        "{out}"
    );
    let (_, out, _) = run(&["stream", "list-shard", "cmd_s"]).await;
    assert_eq!(rows(&out).len(), 4, "header and three shards: {out}");
    assert_eq!(
        run(&["sub", "create", "cmd_sub", "--stream", "cmd_s", "--offset", "earliest"])
            .await
            .0,
        Some(0)
    );
    let (_, out, _) = run(&["subscription", "describe", "cmd_sub"]).await;
    assert!(rows(&out).iter().any(|r| r[0] == "cmd_sub" && r[1] == "cmd_s"), "{out}");
    let (code, _, err) = run(&["stream", "delete", "cmd_s"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("still has subscriptions"), "{err}");
    assert_eq!(run(&["subscription", "delete", "cmd_sub"]).await.0, Some(0));
    assert_eq!(
        run(&[
            "connector",
            "create",
            "g",
            "--type",
            "source",
            "--target",
            "generator",
            "--config",
            r#"{"stream":"cmd_s","rate":100}"#
        ])
        .await
        .0,
        Some(0)
    );
    assert_eq!(run(&["connector", "pause", "g"]).await.0, Some(0));
    assert_eq!(
        run(&["connector", "alter-config", "g", "--config-json", r#"{"rate":200}"#])
            .await
            .0,
        Some(0)
    );
    let (_, out, _) = run(&["connector", "describe", "g"]).await;
    // name, type, target, status, records (how many it moved so far), progress, config.
    assert!(
        rows(&out).iter().any(|r| r.len() == 7
            && r[..4] == ["g", "SOURCE", "generator", "STOPPED"]
            && r[4].parse::<u64>().is_ok()
            && r[6] == r#"{"rate":200,"stream":"cmd_s"}"#),
        "{out}"
    );
    assert_eq!(run(&["connector", "resume", "g"]).await.0, Some(0));
    assert_eq!(run(&["connector", "delete", "g"]).await.0, Some(0));
    assert_eq!(run(&["stream", "delete", "cmd_s"]).await.0, Some(0));
    let (_, out, _) = run(&["stream", "list"]).await;
    assert_eq!(rows(&out).len(), 1, "only the header is left: {out}");
}
