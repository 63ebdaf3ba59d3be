//! Airbyte connector images as Airbyte runs them: the published packages airbyte-source-faker and
//! airbyte-source-hardcoded-records inside real images (`scripts/airbyte-image.sh`: a Debian base
//! made by debootstrap, the package pip-installed, the connector as ENTRYPOINT, run as the
//! non-root user `airbyte`), read through SQL with counts equal to the same packages run as local
//! processes; a kill -9 of the server mid-sync; a destination image (AI-Lake) beside its package;
//! the docker CLI against podman's API socket; the container options (memory, CPUs, network,
//! local_root); spec, check and discover cached by image ID.
//!
//! Ignored by default: `scripts/test.sh` builds the images and runs these (`--ignored
//! airbyte_images::`) where podman can build and run them, and prints why they are not run
//! elsewhere. Containers are counted from podman's own event log, by the names our server gives
//! them (`hstream-airbyte-<server pid>-<n>`).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hstream_integration_tests::*;
use serde_json::json;

use super::airbyte::{
    FAKER, FAST_RETRY, HARDCODED, SLOW, bare_counts, configured, discover, ids, installed, script, wait_report,
};

const FAKER_IMAGE: &str = "localhost/airbyte/source-faker:7.2.1";
const HARDCODED_IMAGE: &str = "localhost/airbyte/source-hardcoded-records:0.0.48";
/// A destination published on PyPI that runs offline: AI-Lake (Iceberg tables of Parquet files
/// with a vector index; a third party's, built on Airbyte's CDK). Airbyte's own PyPI
/// destinations need a cloud service (glassflow) or cannot be installed (every pgvector release
/// pins an airbyte-cdk its own PyAirbyte pin excludes).
const AILAKE: &str = "airbyte-destination-ailake==0.1.16";
const AILAKE_IMAGE: &str = "localhost/airbyte/destination-ailake:0.1.16";
/// AI-Lake's `cmd` embedder: a JSON array of texts in, one vector per text out.
const EMBED: &str = "python3 -c 'import sys,json; t=json.load(sys.stdin); json.dump([[float(len(x)),1.0,0.0,0.5] for x in t], sys.stdout)'";

fn require_podman() {
    assert!(
        std::env::var_os("CONTAINERS_CONF").is_some(),
        "run through scripts/test.sh (CONTAINERS_CONF names integration-tests/container/containers.conf, and the images are built there)"
    );
}

/// Now, as podman's `--since` takes it (Unix seconds with nanoseconds).
fn engine_now() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// Containers of `server` started since `since`, from podman's event log.
fn containers_started(server: &Server, since: &str) -> usize {
    let out = Command::new("podman")
        .args(["events", "--stream=false", "--since", since, "--filter", "event=start"])
        .args(["--format", "{{.Name}}"])
        .stderr(Stdio::inherit())
        .output()
        .expect("podman events");
    assert!(out.status.success());
    let prefix = format!("hstream-airbyte-{}-", server.pid());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|n| n.trim().starts_with(&prefix))
        .count()
}

/// Record counts per catalog stream of a connector's streams (`<prefix><stream>`).
async fn stream_counts(c: &Client, prefix: &str, streams: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for s in streams {
        m.insert(s.clone(), count_stream_records(c, &format!("{prefix}{s}")).await);
    }
    m
}

async fn create_sql(server: &Server, name: &str, with: &str) -> String {
    sql(
        server,
        &format!("CREATE SOURCE CONNECTOR {name} FROM airbyte WITH ({with});\n"),
    )
    .await
}

/// Both images through SQL, each beside the same package run as a local process (our `package`
/// launcher) and the bare executable: equal counts per stream; a config the image's own spec
/// refuses names its field; spec, check and discover are asked of an image once per config
/// (a second connector of the same image and config starts one container: its read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs podman and the images: scripts/test.sh builds them and runs these"]
async fn images_read_what_their_packages_read() {
    require_podman();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let c = server.client().await;

    let out = create_sql(
        &server,
        "bad",
        &format!("\"image\" = '{FAKER_IMAGE}', \"config\" = '{{\"count\": \"many\"}}'"),
    )
    .await;
    assert!(out.contains("config.count"), "{out}");

    let hc = json!({"count": 3000});
    let fk = json!({"count": 4000, "seed": 11, "records_per_slice": 500, "parallelism": 1});
    for (name, launcher, cfg, prefix) in [
        ("hc_img", format!("\"image\" = '{HARDCODED_IMAGE}'"), &hc, "hci_"),
        ("hc_pkg", format!("\"package\" = '{HARDCODED}'"), &hc, "hcp_"),
        (
            "fk_img",
            format!("\"image\" = '{FAKER_IMAGE}', \"memory_limit\" = '1g', \"cpu_limit\" = 1.5"),
            &fk,
            "fki_",
        ),
        ("fk_pkg", format!("\"package\" = '{FAKER}'"), &fk, "fkp_"),
    ] {
        let streams = if name.starts_with("fk") {
            ", \"streams\" = 'users,products'"
        } else {
            ""
        };
        let out = create_sql(
            &server,
            name,
            &format!("{launcher}, \"config\" = '{cfg}', \"stream_prefix\" = '{prefix}'{streams}"),
        )
        .await;
        assert!(out.contains(&format!("created connector {name}")), "{out}");
    }
    for name in ["hc_img", "hc_pkg", "fk_img", "fk_pkg"] {
        wait_status(&c, name, "COMPLETED", SLOW).await;
    }

    // hardcoded-records: three streams, the same counts from the image, the package and the bare
    // executable.
    let exe = installed("source-hardcoded-records");
    let discovered = discover(&exe, &hc).await;
    let names: Vec<String> = discovered["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let bare = bare_counts(&exe, &hc, &configured(&discovered, &refs, "full_refresh")).await;
    assert_eq!(bare.len(), 3, "{bare:?}");
    assert_eq!(stream_counts(&c, "hci_", &names).await, bare, "image");
    assert_eq!(stream_counts(&c, "hcp_", &names).await, bare, "package");

    // faker: the same users and products (by id, each once) from the image and the package,
    // and the bare executable's counts.
    let exe = installed("source-faker");
    let catalog = configured(&discover(&exe, &fk).await, &["users", "products"], "incremental");
    let bare = bare_counts(&exe, &fk, &catalog).await;
    assert_eq!(bare.get("users"), Some(&4000));
    let mut c2 = c.clone();
    for stream in ["users", "products"] {
        let img = ids(&mut c2, &format!("fki_{stream}")).await;
        let pkg = ids(&mut c2, &format!("fkp_{stream}")).await;
        assert_eq!(img, pkg, "{stream}");
        assert_eq!(Some(&img.values().sum::<usize>()), bare.get(stream), "{stream}");
        assert!(img.values().all(|n| *n == 1), "{stream}");
    }

    // Spec, check and discover of this image and config are known: one container, the read.
    let since = engine_now();
    let out = create_sql(
        &server,
        "fk_img2",
        &format!(
            "\"image\" = '{FAKER_IMAGE}', \"memory_limit\" = '1g', \"cpu_limit\" = 1.5, \"config\" = '{fk}', \
             \"stream_prefix\" = 'fkj_', \"streams\" = 'users,products'"
        ),
    )
    .await;
    assert!(out.contains("created connector fk_img2"), "{out}");
    wait_status(&c, "fk_img2", "COMPLETED", SLOW).await;
    assert_eq!(ids(&mut c2, "fkj_users").await.len(), 4000);
    assert_eq!(containers_started(&server, &since), 1);
    let logs = task_logs(&c, "fk_img2").await;
    assert!(logs.contains("the image's discover for this config"), "{logs}");
}

/// kill -9 of the server while an image's read is mid-sync: the restarted task runs the image
/// again with the stored STATE, and every user is in the stream. (Faker re-emits every user when
/// resumed with `always_updated`, its default, so records are counted by id.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs podman and the images: scripts/test.sh builds them and runs these"]
async fn image_killed_mid_sync_resumes_from_the_stored_state() {
    require_podman();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), FAST_RETRY);
    let c = server.client().await;
    // Faker makes about 9,000 users a second in its image here: the users left after the kill
    // keep a container that ignored the kill busy for well over the 8 s allowed below.
    let count = 150_000;
    let cfg = json!({"count": count, "seed": 3, "records_per_slice": 1000, "parallelism": 1});
    let out = create_sql(
        &server,
        "fk",
        &format!("\"image\" = '{FAKER_IMAGE}', \"config\" = '{cfg}', \"stream_prefix\" = 'k_', \"streams\" = 'users'"),
    )
    .await;
    assert!(out.contains("created connector fk"), "{out}");
    let r = wait_report(&c, "fk", SLOW, "a checkpointed state mid-sync", |r| {
        r["offset"]["states"].as_array().is_some_and(|s| !s.is_empty())
            && r["offset"]["records"].as_f64() > Some(2000.0)
    })
    .await;
    let first_pid = server.pid();
    server.kill();
    assert!(
        r["offset"]["records"].as_f64() < Some(count as f64),
        "the sync finished before the kill: {r}"
    );
    // The killed server's container ends with it: its output is the server's pipe (podman's
    // passthrough log driver), so its next write fails.
    let prefix = format!("hstream-airbyte-{first_pid}-");
    let names = |running_only: bool| container_names(&prefix, running_only);
    let stopped = holds_within_blocking(Duration::from_secs(8), || names(true).is_empty());
    assert!(stopped, "the killed server's container still runs: {:?}", names(true));
    let removed = holds_within_blocking(Duration::from_secs(60), || names(false).is_empty());
    assert!(
        removed,
        "the killed server's container was not removed: {:?}",
        names(false)
    );
    server.restart();
    let mut c = server.client().await;
    wait_status(&c, "fk", "COMPLETED", SLOW).await;
    assert_read_given_stored_state(&task_logs(&c, "fk").await);
    let users = ids(&mut c, "k_users").await;
    assert_eq!(users.len(), count);
    assert_eq!(users.keys().next(), Some(&1));
    assert_eq!(users.keys().last(), Some(&(count as i64)));
}

/// The `id`s of the rows AI-Lake wrote under `table` (its Parquet data files), with how often
/// each occurs, read with the pyarrow of the destination's own package venv.
fn lake_ids(table: &std::path::Path) -> BTreeMap<i64, usize> {
    let python = installed("destination-ailake").with_file_name("python");
    let out = Command::new(python)
        .arg("-c")
        .arg(
            "import sys, glob, json, pyarrow.parquet as pq\n\
             ids = [i for f in glob.glob(sys.argv[1] + '/data/*.parquet') for i in pq.read_table(f, columns=['id']).column('id').to_pylist()]\n\
             print(json.dumps(ids))",
        )
        .arg(table)
        .output()
        .expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Our JSON records hold numbers as doubles, so the destination wrote them as such.
    let ids: Vec<f64> = serde_json::from_slice(&out.stdout).unwrap();
    let mut m = BTreeMap::new();
    for i in ids {
        *m.entry(i as i64).or_insert(0) += 1;
    }
    m
}

/// A destination image: AI-Lake in an image (run as `airbyte`, writing into `local_root`
/// mounted at /local, as Airbyte mounts its LOCAL_ROOT) and the same package run as a local
/// process are fed one stream: each writes every record once, and our position reaches the end
/// of the stream only through the destination's echoed states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs podman and the images: scripts/test.sh builds them and runs these"]
async fn destination_image_writes_what_its_package_writes() {
    require_podman();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let count = 5000;
    let src = json!({"command": script("airbyte_fake_source.py"), "config": {"count": count, "state_every": 500},
        "stream_prefix": "d_"});
    create_connector(&mut c, "dsrc", "SOURCE", "airbyte", &src)
        .await
        .unwrap();
    wait_status(&c, "dsrc", "COMPLETED", SLOW).await;
    let end: BTreeMap<String, u64> = {
        let mut m = BTreeMap::new();
        for s in stream_shards(&mut c, "d_events").await {
            let r = read_shard_to_tail(&mut c, "d_events", s.shard_id).await;
            m.insert(s.shard_id.to_string(), r.len() as u64 + 1);
        }
        m
    };
    // The image's user (uid 1000) writes into local_root.
    let local = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(local.path(), Some(1000), Some(1000)).unwrap();
    let by_package = dir.path().join("lake-by-package");
    let lake = |path: &str| {
        json!({"table_base_path": path, "embed_mode": "cmd", "embed_cmd": EMBED, "embedding_dim": 4,
            "text_field": "body", "batch_size": 500, "openai_api_key": "sk-unused-secret"})
    };
    for (name, sink) in [
        (
            "dimg",
            json!({"stream": "d_events", "image": AILAKE_IMAGE, "local_root": local.path().display().to_string(),
                "config": lake("/local/lake")}),
        ),
        (
            "dpkg",
            json!({"stream": "d_events", "package": AILAKE, "config": lake(&by_package.display().to_string())}),
        ),
    ] {
        create_connector(&mut c, name, "SINK", "airbyte", &sink).await.unwrap();
    }
    for name in ["dimg", "dpkg"] {
        let r = wait_report(&c, name, SLOW, "the position at the end", |r| {
            end.iter()
                .all(|(s, n)| r["offset"]["shards"][s].as_f64().map(|f| f as u64) == Some(*n))
        })
        .await;
        assert_eq!(r["deliveredRecords"], count as f64, "{name}: {r}");
    }
    let img = lake_ids(&local.path().join("lake/d_events"));
    let pkg = lake_ids(&by_package.join("d_events"));
    assert_eq!(img.len(), count, "distinct ids from the image");
    assert!(img.values().all(|n| *n == 1), "an id written twice by the image");
    assert_eq!(img, pkg);
    // The destination's spec (read from the image) marks its API key secret: never shown.
    let shown = c
        .get_connector(hstream_proto::GetConnectorRequest { name: "dimg".into() })
        .await
        .unwrap()
        .into_inner()
        .config;
    assert!(
        !shown.contains("sk-unused-secret") && shown.contains("embedding_dim"),
        "{shown}"
    );
    // A local_root that is not a directory here is refused at create, naming the option.
    let e = create_connector(
        &mut c,
        "dbad",
        "SINK",
        "airbyte",
        &json!({"stream": "d_events", "image": AILAKE_IMAGE, "local_root": "/nonexistent/lake", "config": lake("/local/x")}),
    )
    .await
    .unwrap_err();
    assert!(e.message().contains("local_root:"), "{e:?}");
}

/// Names of the containers (running ones only, if asked) whose names start with `prefix`.
fn container_names(prefix: &str, running_only: bool) -> Vec<String> {
    let mut ps = Command::new("podman");
    ps.args(["ps", "-a", "--format", "{{.Names}}"]);
    if running_only {
        ps.args(["--filter", "status=running"]);
    }
    let out = ps.output().unwrap();
    assert!(
        out.status.success(),
        "podman ps: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// The restarted sync's read was handed the states stored before the kill.
fn assert_read_given_stored_state(logs: &str) {
    assert!(
        logs.split("starting read (sync 1, ")
            .nth(1)
            .is_some_and(|t| !t.starts_with('0')),
        "the restarted read was not given the stored state: {logs}"
    );
}

/// Removes, when dropped (a failed test too), the containers whose names start with its prefix:
/// the docker CLI runs them without `--rm`.
struct RemoveContainers(String);

impl Drop for RemoveContainers {
    fn drop(&mut self) {
        let Ok(out) = Command::new("podman")
            .args(["ps", "-a", "--format", "{{.Names}}"])
            .output()
        else {
            return;
        };
        for name in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|n| n.starts_with(&self.0))
        {
            let _ = Command::new("podman").args(["rm", "-f", name]).output();
        }
    }
}

/// podman's Docker-compatible API socket, served for one test.
struct PodmanSocket {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl PodmanSocket {
    fn start() -> PodmanSocket {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("podman.sock");
        let url = format!("unix://{}", sock.display());
        // In its own directory: podman's conmon leaves a file `oom` in its working directory
        // when a container is killed for memory.
        let child = Command::new("podman")
            .args(["system", "service", "--time=0", &url])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .spawn()
            .expect("podman system service");
        assert!(
            holds_within_blocking(Duration::from_secs(30), || sock.exists()),
            "podman's API socket did not appear"
        );
        PodmanSocket { child, _dir: dir, url }
    }
}

impl Drop for PodmanSocket {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `"engine" = 'docker'`: the docker CLI, pointed at podman's API socket by `DOCKER_HOST` in the
/// server's environment, runs the image (no network, one CPU) with the same counts as podman;
/// an image over its memory limit is killed and the error names the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs podman, the docker CLI and the images: scripts/test.sh runs it where they are"]
async fn images_run_through_the_docker_cli_against_podmans_socket() {
    require_podman();
    let docker = Command::new("docker").arg("--version").output();
    assert!(
        docker.is_ok_and(|o| o.status.success()),
        "the docker CLI is not installed"
    );
    let socket = PodmanSocket::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), FAST_RETRY, &[("DOCKER_HOST", socket.url.as_str())]);
    let _cleanup = RemoveContainers(format!("hstream-airbyte-{}-", server.pid()));
    let c = server.client().await;
    let since = engine_now();
    let hc = json!({"count": 2500});
    for (name, extra, prefix) in [
        (
            "hc_docker",
            "\"engine\" = 'docker', \"network\" = 'none', \"cpu_limit\" = 1",
            "hcd_",
        ),
        ("hc_podman", "\"engine\" = 'podman'", "hcq_"),
    ] {
        let out = create_sql(
            &server,
            name,
            &format!("\"image\" = '{HARDCODED_IMAGE}', {extra}, \"config\" = '{hc}', \"stream_prefix\" = '{prefix}'"),
        )
        .await;
        assert!(out.contains(&format!("created connector {name}")), "{out}");
    }
    wait_status(&c, "hc_docker", "COMPLETED", SLOW).await;
    wait_status(&c, "hc_podman", "COMPLETED", SLOW).await;
    let r = connector_report(&c, "hc_docker").await;
    let total = r["offset"]["records"].as_f64().unwrap() as usize;
    assert_eq!(total, 3 * 2500, "{r}");
    let names = streams_with_prefix(&c, "hcd_").await;
    assert_eq!(names.len(), 3, "{names:?}");
    for n in &names {
        let other = n.replacen("hcd_", "hcq_", 1);
        assert_eq!(
            count_stream_records(&c, n).await,
            count_stream_records(&c, &other).await,
            "{n}"
        );
    }
    // The docker CLI's containers are podman's (named by our server).
    assert!(containers_started(&server, &since) >= 2);

    // 8 MiB cannot hold Python: the check is killed, and the refusal says which limit.
    let out = create_sql(
        &server,
        "tiny",
        &format!(
            "\"image\" = '{HARDCODED_IMAGE}', \"engine\" = 'docker', \"memory_limit\" = '8m', \"config\" = '{hc}'"
        ),
    )
    .await;
    assert!(out.contains("memory_limit of 8m"), "{out}");
    // A limit the engines refuse is refused at create, naming the option.
    let out = create_sql(
        &server,
        "tiny2",
        &format!("\"image\" = '{HARDCODED_IMAGE}', \"memory_limit\" = '2m', \"config\" = '{hc}'"),
    )
    .await;
    assert!(out.contains("memory_limit:"), "{out}");
    let out = create_sql(
        &server,
        "nolimit",
        &format!("\"package\" = '{HARDCODED}', \"network\" = 'none', \"config\" = '{hc}'"),
    )
    .await;
    assert!(out.contains("network: only with image"), "{out}");
}

/// kill -9 of the server while a faker image runs through the docker CLI (against podman's
/// socket): the restarted task resumes from the stored STATE with every user in the stream, and
/// the killed server's container (docker has no passthrough: it may run on) is removed by the
/// restarted server, which sees that its server process is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs podman, the docker CLI and the images: scripts/test.sh runs it where they are"]
async fn docker_image_killed_mid_sync_resumes_and_its_leftover_is_removed() {
    require_podman();
    let docker = Command::new("docker").arg("--version").output();
    assert!(
        docker.is_ok_and(|o| o.status.success()),
        "the docker CLI is not installed"
    );
    let socket = PodmanSocket::start();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with_env(dir.path(), FAST_RETRY, &[("DOCKER_HOST", socket.url.as_str())]);
    let first_pid = server.pid();
    let _cleanup = RemoveContainers(format!("hstream-airbyte-{first_pid}-"));
    let c = server.client().await;
    let count = 60_000;
    let cfg = json!({"count": count, "seed": 5, "records_per_slice": 1000, "parallelism": 1});
    let out = create_sql(
        &server,
        "fkd",
        &format!(
            "\"image\" = '{FAKER_IMAGE}', \"engine\" = 'docker', \"config\" = '{cfg}', \"stream_prefix\" = 'kd_', \
             \"streams\" = 'users'"
        ),
    )
    .await;
    assert!(out.contains("created connector fkd"), "{out}");
    let r = wait_report(&c, "fkd", SLOW, "a checkpointed state mid-sync", |r| {
        r["offset"]["states"].as_array().is_some_and(|s| !s.is_empty())
            && r["offset"]["records"].as_f64() > Some(2000.0)
    })
    .await;
    server.kill();
    assert!(
        r["offset"]["records"].as_f64() < Some(count as f64),
        "the sync finished before the kill: {r}"
    );
    let left = || container_names(&format!("hstream-airbyte-{first_pid}-"), false);
    assert!(!left().is_empty(), "the killed server's container is already gone");
    server.restart();
    let _cleanup2 = RemoveContainers(format!("hstream-airbyte-{}-", server.pid()));
    let mut c = server.client().await;
    wait_status(&c, "fkd", "COMPLETED", SLOW).await;
    assert_read_given_stored_state(&task_logs(&c, "fkd").await);
    let users = ids(&mut c, "kd_users").await;
    assert_eq!(users.len(), count);
    let removed = holds_within_blocking(Duration::from_secs(60), || left().is_empty());
    assert!(removed, "the killed server's container is still there: {:?}", left());
}

/// Streams whose names start with `prefix`.
async fn streams_with_prefix(c: &Client, prefix: &str) -> Vec<String> {
    let mut c = c.clone();
    let list = c
        .list_streams(hstream_proto::ListStreamsRequest {})
        .await
        .unwrap()
        .into_inner()
        .streams;
    let mut names: Vec<String> = list
        .into_iter()
        .map(|s| s.stream_name)
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}
