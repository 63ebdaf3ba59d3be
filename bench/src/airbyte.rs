//! Airbyte: `source-hardcoded-records` (PyPI, installed by the server with uv) reading N
//! `products` records, three ways in one run on the same machine:
//! - bare: the connector's `read` piped into `wc -l` (the connector's own speed);
//! - ours: the `airbyte` source appending them to a durable stream (fsync=always), timed from
//!   the start of `read` to the sync's end, both from the task's log;
//! - PyAirbyte (`airbyte` from PyPI, in its own venv): `read` of the same executable into its
//!   default DuckDB cache.
//!
//! Printed: records/s of each, ours against bare, and the consumer's CPU per record: our server
//! process against PyAirbyte's own process (each without the connector's CPU).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hstream_integration_tests::{Server, connector_report, repo_root};
use hstream_proto as pb;

const PACKAGE: &str = "airbyte-source-hardcoded-records==0.0.48";

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Records of the `products` stream.
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// Skip PyAirbyte (its install takes a minute or more the first time).
    #[arg(long)]
    no_pyairbyte: bool,
    /// Skip the image (`scripts/airbyte-image.sh` builds it; it is skipped, saying so, when
    /// podman or the image is missing).
    #[arg(long)]
    no_image: bool,
}

impl Args {
    pub fn default_args() -> Args {
        Args {
            records: 200_000,
            no_pyairbyte: false,
            no_image: false,
        }
    }
}

fn installed(root: &Path, exe: &str) -> anyhow::Result<PathBuf> {
    for e in std::fs::read_dir(root)? {
        let p = e?.path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!(".venv-{exe}-")))
            && p.join(".complete").is_file()
        {
            return Ok(p.join("bin").join(exe));
        }
    }
    anyhow::bail!("{exe} is not installed under {}", root.display())
}

async fn create(
    c: &mut hstream_integration_tests::Client,
    name: &str,
    config: serde_json::Value,
) -> anyhow::Result<()> {
    c.create_connector(pb::CreateConnectorRequest {
        name: name.into(),
        r#type: "source".into(),
        target: "airbyte".into(),
        config: config.to_string(),
    })
    .await?;
    Ok(())
}

async fn wait_completed(c: &mut hstream_integration_tests::Client, name: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let s = c
            .get_connector(pb::GetConnectorRequest { name: name.into() })
            .await?
            .into_inner()
            .status;
        if s == "COMPLETED" {
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(900) && s != "FAILED",
            "{name} is {s}: {}",
            connector_report(c, name).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The unix time (s) of the task's first log line containing `what`.
async fn logged_at(c: &mut hstream_integration_tests::Client, name: &str, what: &str) -> anyhow::Result<f64> {
    let logs = c
        .get_connector_logs(pb::GetConnectorLogsRequest {
            name: name.into(),
            begin: 0,
            count: 1000,
        })
        .await?
        .into_inner()
        .logs;
    logs.lines()
        .find(|l| l.contains(what))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|t| t.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no {what:?} in the task log:\n{logs}"))
}

/// The image `scripts/airbyte-image.sh` builds from PACKAGE.
const IMAGE: &str = "localhost/airbyte/source-hardcoded-records:0.0.48";

/// The read duration of a finished sync, from the task's log.
async fn read_secs(c: &mut hstream_integration_tests::Client, name: &str) -> anyhow::Result<f64> {
    Ok(logged_at(c, name, "sync completed").await? - logged_at(c, name, "starting read").await?)
}

/// The same sync through the image (podman), beside the package run above: records/s, and the
/// start-up a container adds to each command and to each sync.
async fn image(
    c: &mut hstream_integration_tests::Client,
    exe: &Path,
    n: u64,
    package_secs: f64,
    files: &Path,
) -> anyhow::Result<()> {
    let have = std::process::Command::new("podman")
        .args(["image", "exists", IMAGE])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        println!("  image: NOT RUN ({IMAGE} is not built: scripts/airbyte-image.sh {PACKAGE})");
        return Ok(());
    }
    // A container's own start and end: /bin/true in the image, as the server runs images.
    let mut start = f64::MAX;
    for _ in 0..3 {
        let (t, _, _) = shell(&format!(
            "podman run --rm -i --log-driver passthrough --network host --entrypoint /bin/true {IMAGE}"
        ))?;
        start = start.min(t);
    }
    println!("  a container's start and end alone (/bin/true in the image, best of 3): {start:.2} s");
    // `spec` as a process and in a container (the image's Python is Debian's; the package's venv
    // uses this machine's python3, so the two differ beyond the container).
    let (proc_spec, _, _) = shell(&format!("{} spec >/dev/null", exe.display()))?;
    let (img_spec, _, _) = shell(&format!(
        "podman run --rm -i --log-driver passthrough --network host {IMAGE} spec >/dev/null"
    ))?;
    println!(
        "  spec: process {proc_spec:.2} s, container {img_spec:.2} s ({:+.2} s)",
        img_spec - proc_spec
    );
    // The connector's own rate in its image: read into wc -l (the bench's files, made readable
    // to the image's user: they hold no secret).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(files, std::fs::Permissions::from_mode(0o755))?;
        for f in ["config.json", "catalog.json"] {
            std::fs::set_permissions(files.join(f), std::fs::Permissions::from_mode(0o644))?;
        }
    }
    let (bare_img_secs, lines, _) = shell(&format!(
        "podman run --rm -i --log-driver passthrough --network host -v {}:/config:ro {IMAGE} read \
         --config /config/config.json --catalog /config/catalog.json | wc -l",
        files.display()
    ))?;
    let bare_img_rate = n as f64 / bare_img_secs;
    println!(
        "  bare image read | wc -l      : {bare_img_secs:6.2} s {bare_img_rate:9.0} rec/s  ({} lines)",
        lines.trim()
    );
    // A 1-record sync each way (spec, check and discover are cached by then: only the read).
    let one = |name: &str, launcher: serde_json::Value| {
        let mut cfg =
            serde_json::json!({"config": {"count": 1}, "streams": "products", "stream_prefix": format!("{name}_")});
        for (k, v) in launcher.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        cfg
    };
    let mut sync_secs = Vec::new();
    for (name, launcher) in [
        ("one_img", serde_json::json!({"image": IMAGE})),
        ("one_img2", serde_json::json!({"image": IMAGE})),
        ("one_pkg", serde_json::json!({"package": PACKAGE})),
    ] {
        create(c, name, one(name, launcher)).await?;
        wait_completed(c, name).await?;
        sync_secs.push(read_secs(c, name).await?);
    }
    println!(
        "  a 1-record sync's read: process {:.2} s, container {:.2} s ({:+.2} s a sync)",
        sync_secs[2],
        sync_secs[1],
        sync_secs[1] - sync_secs[2]
    );
    create(
        c,
        "hc_img",
        serde_json::json!({"image": IMAGE, "config": {"count": n}, "streams": "products", "stream_prefix": "img_"}),
    )
    .await?;
    wait_completed(c, "hc_img").await?;
    let secs = read_secs(c, "hc_img").await?;
    let stored = hstream_integration_tests::count_stream_records(c, "img_products").await as u64;
    anyhow::ensure!(stored == n, "{stored} records stored from the image, {n} expected");
    println!(
        "  hstream airbyte image -> stream: {secs:6.2} s {:9.0} rec/s",
        n as f64 / secs
    );
    println!(
        "    image / package: {:.3}x the rate (same server, same run); ours / bare image: {:.3}x",
        package_secs / secs,
        (n as f64 / secs) / bare_img_rate
    );
    Ok(())
}

/// Runs a shell line; returns (wall seconds, its stdout, the children's CPU seconds from `times`).
fn shell(line: &str) -> anyhow::Result<(f64, String, f64)> {
    let t = Instant::now();
    let o = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("{line}; times >&2"))
        .output()?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(o.status.success(), "{line}: {}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    // `times` prints the shell's then the children's user/system times, "0m1.234s 0m0.100s".
    let cpu = err
        .lines()
        .last()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|t| {
                    let (m, s) = t.trim_end_matches('s').split_once('m')?;
                    Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
                })
                .sum()
        })
        .unwrap_or(0.0);
    Ok((secs, String::from_utf8_lossy(&o.stdout).into_owned(), cpu))
}

const PYAIRBYTE: &str = r#"
import json, os, resource, sys, time
import airbyte as ab
exe, n = sys.argv[1], int(sys.argv[2])
src = ab.get_source("source-hardcoded-records", config={"count": n}, local_executable=exe, streams=["products"])
def cpu(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime
t, own, kids = time.perf_counter(), cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
result = src.read(cache=ab.get_default_cache(), force_full_refresh=True)
secs = time.perf_counter() - t
rows = len(result["products"].to_pandas()) if hasattr(result["products"], "to_pandas") else None
print(json.dumps({"secs": secs, "own_cpu": cpu(resource.RUSAGE_SELF) - own,
                  "connector_cpu": cpu(resource.RUSAGE_CHILDREN) - kids, "rows": rows}))
"#;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let n = args.records;
    println!("airbyte: source-hardcoded-records, {n} products records (PyPI {PACKAGE})");
    let out_dir = repo_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let data = tempfile::tempdir_in(&out_dir)?;
    let server = Server::start(data.path(), &["--fsync", "always"]);
    let mut c = server.client().await;
    let root = hstream_integration_tests::airbyte_dir();
    // Installed (and its spec cached) by a first small sync.
    let warm = Instant::now();
    create(
        &mut c,
        "warm",
        serde_json::json!({"package": PACKAGE, "config": {"count": 1}, "streams": "products", "stream_prefix": "warm_"}),
    )
    .await?;
    wait_completed(&mut c, "warm").await?;
    println!(
        "  install (first time only) + spec/check/discover + a 1-record sync: {:.1} s",
        warm.elapsed().as_secs_f64()
    );
    let exe = installed(&root, "source-hardcoded-records")?;
    // The fixed server CPU of a sync (spawning check/discover/read, reading their output): a
    // second 1-record sync.
    let cpu0 = server.cpu_seconds();
    create(
        &mut c,
        "fixed",
        serde_json::json!({"package": PACKAGE, "config": {"count": 1}, "streams": "products", "stream_prefix": "fixed_"}),
    )
    .await?;
    wait_completed(&mut c, "fixed").await?;
    let fixed_cpu = server.cpu_seconds() - cpu0;

    // Bare: the connector's stdout into wc -l.
    let files = tempfile::tempdir_in(&out_dir)?;
    let config = files.path().join("config.json");
    std::fs::write(&config, serde_json::json!({"count": n}).to_string())?;
    let catalog = files.path().join("catalog.json");
    std::fs::write(
        &catalog,
        serde_json::json!({"streams": [{"stream": {"name": "products", "json_schema": {}, "supported_sync_modes": ["full_refresh"]},
            "sync_mode": "full_refresh", "destination_sync_mode": "append"}]})
        .to_string(),
    )?;
    let (bare_secs, lines, bare_cpu) = shell(&format!(
        "{} read --config {} --catalog {} | wc -l",
        exe.display(),
        config.display(),
        catalog.display()
    ))?;
    let bare_rate = n as f64 / bare_secs;
    println!(
        "  bare read | wc -l            : {bare_secs:6.2} s {bare_rate:9.0} rec/s  ({} lines; connector CPU {:.1} us/rec)",
        lines.trim(),
        bare_cpu * 1e6 / n as f64
    );

    // Ours: into a durable stream.
    let cpu0 = server.cpu_seconds();
    create(
        &mut c,
        "hc",
        serde_json::json!({"package": PACKAGE, "config": {"count": n}, "streams": "products", "stream_prefix": "bench_"}),
    )
    .await?;
    wait_completed(&mut c, "hc").await?;
    let ours_cpu = server.cpu_seconds() - cpu0;
    let started = logged_at(&mut c, "hc", "starting read").await?;
    let ended = logged_at(&mut c, "hc", "sync completed").await?;
    let ours_secs = ended - started;
    let stored = hstream_integration_tests::count_stream_records(&c, "bench_products").await as u64;
    anyhow::ensure!(stored == n, "{stored} records stored, {n} expected");
    let ours_rate = n as f64 / ours_secs;
    let ours_us = (ours_cpu - fixed_cpu).max(0.0) * 1e6 / n as f64;
    println!(
        "  hstream airbyte -> stream    : {ours_secs:6.2} s {ours_rate:9.0} rec/s  server CPU {ours_us:.2} us/rec (fsync=always; \
         {:.2} us/rec with the sync's fixed {:.0} ms of check/discover/spawn)",
        ours_cpu * 1e6 / n as f64,
        fixed_cpu * 1e3
    );
    println!("    ours / bare: {:.3}x the rate", ours_rate / bare_rate);

    if !args.no_image {
        image(&mut c, &exe, n, ours_secs, files.path()).await?;
    }

    if args.no_pyairbyte {
        return Ok(());
    }
    let venv = out_dir.join("pyairbyte");
    let python = venv.join("bin/python");
    if !python.is_file()
        || !std::process::Command::new(&python)
            .args(["-c", "import airbyte"])
            .status()?
            .success()
    {
        let uv = hstream_integration_tests::repo_root().join(".venv/bin/uv");
        println!("  installing PyAirbyte (airbyte from PyPI) into {}", venv.display());
        anyhow::ensure!(
            std::process::Command::new(&uv)
                .arg("venv")
                .arg("-q")
                .arg(&venv)
                .status()?
                .success()
        );
        anyhow::ensure!(
            std::process::Command::new(&uv)
                .args(["pip", "install", "-q", "--python"])
                .arg(&python)
                .arg("airbyte")
                .status()?
                .success()
        );
    }
    let project = tempfile::tempdir_in(&out_dir)?;
    let o = std::process::Command::new(&python)
        .arg("-c")
        .arg(PYAIRBYTE)
        .arg(&exe)
        .arg(n.to_string())
        .env("AIRBYTE_OFFLINE_MODE", "true")
        .env("DO_NOT_TRACK", "1")
        .env("AIRBYTE_PROJECT_DIR", project.path())
        .env("PATH", hstream_integration_tests::path_with_venv())
        .output()?;
    anyhow::ensure!(o.status.success(), "PyAirbyte: {}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))?;
    let py_secs = v["secs"].as_f64().unwrap_or(f64::NAN);
    let py_rate = n as f64 / py_secs;
    let py_us = v["own_cpu"].as_f64().unwrap_or(f64::NAN) * 1e6 / n as f64;
    println!(
        "  PyAirbyte -> DuckDB cache    : {py_secs:6.2} s {py_rate:9.0} rec/s  PyAirbyte CPU {py_us:.2} us/rec ({} rows)",
        v["rows"]
    );
    println!(
        "    ours / PyAirbyte: {:.2}x the rate, {:.4} of its CPU per record (1/{:.0})",
        ours_rate / py_rate,
        ours_us / py_us,
        py_us / ours_us
    );
    Ok(())
}
