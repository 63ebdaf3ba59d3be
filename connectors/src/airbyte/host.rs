//! Running an Airbyte connector: as an executable (on PATH or at a path), as a Python package
//! (`package`: installed into a managed venv on first use), or as a container image (`container`:
//! through `docker`/`podman` with the Airbyte image conventions). The one-shot commands (`spec`,
//! `check`, `discover`) are run here; their outcome is classified into the runtime's errors
//! (config, external) with the connector's own words.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hstream_runtime::ConnectorError;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::container::{
    ContainerGuard, ContainerRun, HOST_LABEL, boot_id, files_group, image_id, process_token, sweep_leftovers,
};
use super::package::ensure_package;
use super::protocol::{self, LogLevel, Message, Trace};

/// How a connector is started.
#[derive(Debug, Clone, PartialEq)]
pub enum Launcher {
    /// An executable: a name found on PATH, or a path.
    Command(String),
    /// A PyPI requirement such as `airbyte-source-faker==7.2.1`, installed into a venv under
    /// `root`; the executable is the package's console script (`source-faker`).
    Package { requirement: String, root: PathBuf },
    /// A container image run with `engine` (`docker` or `podman`), under `run`'s limits.
    Image {
        image: String,
        engine: String,
        run: ContainerRun,
    },
}

/// `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Which side of the protocol a connector is: it names the files it is given, as Airbyte's
/// platform names them (`source_config.json`, `source_catalog.json`, `input_state.json`;
/// `destination_config.json`, `destination_catalog.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Source,
    Destination,
}

impl Role {
    pub fn config_file(self) -> &'static str {
        match self {
            Role::Source => "source_config.json",
            Role::Destination => "destination_config.json",
        }
    }

    pub fn catalog_file(self) -> &'static str {
        match self {
            Role::Source => "source_catalog.json",
            Role::Destination => "destination_catalog.json",
        }
    }
}

/// Where an image's container finds its files: Airbyte's platform mounts them at `/config`.
const CONTAINER_FILES: &str = "/config";

/// A connector command ready to spawn: the program, its leading arguments, and how files
/// given as arguments are seen by it (a container sees them under a mount).
pub struct Invocation {
    program: PathBuf,
    args: Vec<String>,
    pub role: Role,
    /// Files for `--config`/`--catalog`/`--state`, written here.
    files: tempfile::TempDir,
    /// The path prefix the connector sees for `files` (a container mount point).
    seen_as: Option<String>,
    /// An image's ID (the digest of its configuration): what its cached spec, check and
    /// discover are kept under, with how it runs (engine and container options; a check
    /// without network is not a check with it).
    image_id: Option<String>,
    run_key: String,
    /// The group that may read `files`, given to the container (`--group-add`), so an image
    /// running as a user of its own (Airbyte's run as `airbyte`, uid 1000) reads its config
    /// while no account of this machine but ours can. None when this server may not give files
    /// to another group (not root): the files are then ours alone.
    files_group: Option<u32>,
    /// The memory limit an image runs under, to explain an exit 137.
    memory_limit: Option<String>,
}

impl Invocation {
    pub async fn new(launcher: &Launcher, role: Role) -> Result<Invocation, ConnectorError> {
        let files = tempfile::Builder::new()
            .prefix("hstream-airbyte")
            .tempdir()
            .map_err(|e| ConnectorError::external("temporary directory").with_source(e))?;
        let plain = |program, files| Invocation {
            program,
            args: Vec::new(),
            role,
            files,
            seen_as: None,
            image_id: None,
            run_key: String::new(),
            files_group: None,
            memory_limit: None,
        };
        Ok(match launcher {
            Launcher::Command(c) => {
                let program = if c.contains('/') {
                    PathBuf::from(c)
                } else {
                    which(c).ok_or_else(|| ConnectorError::config(format!("command: {c:?} is not on PATH")))?
                };
                plain(program, files)
            }
            Launcher::Package { requirement, root } => plain(ensure_package(requirement, root).await?, files),
            Launcher::Image { image, engine, run } => {
                let program = which(engine).ok_or_else(|| {
                    ConnectorError::config(format!("image: {engine} is not installed here, so images cannot run"))
                })?;
                if let Some(d) = &run.local_root
                    && !Path::new(d).is_dir()
                {
                    return Err(ConnectorError::config(format!(
                        "local_root: {d} is not a directory of this machine"
                    )));
                }
                if engine == "docker" {
                    sweep_leftovers(&program);
                }
                let image_id = image_id(&program, engine, image).await?;
                let group = files_group(files.path())
                    .map_err(|e| ConnectorError::external("the connector's file directory").with_source(e))?;
                // The Airbyte convention: the image's ENTRYPOINT is the connector (and equals
                // AIRBYTE_ENTRYPOINT); arguments follow the image name. Files are mounted
                // read-only at /config.
                // podman removes its container at the end (--rm), so one left by a killed server
                // goes too. Not so through the docker CLI: against podman's API socket, `docker
                // run --rm` exits 0 whatever the container's exit code was (a connector killed
                // at its memory limit would look like a clean end). There the container is
                // removed by the guard once its client has returned the true exit code.
                //
                // The container's output reaches us without a copy in between: podman hands it
                // our pipe (`--log-driver passthrough`; conmon would otherwise log every record
                // to a file), so it also gets EPIPE and ends when this server is gone. Docker has
                // no such mode; `none` at least keeps no log. It runs by the image's ID, so what
                // runs is what was inspected (a tag moved meanwhile does not mix two builds).
                let mut args = vec!["run".into(), "-i".into()];
                if engine == "podman" {
                    args.extend(["--rm".into(), "--log-driver".into(), "passthrough".into()]);
                } else {
                    args.extend(["--log-driver".into(), "none".into()]);
                }
                args.extend(run.args());
                if let Some(g) = group {
                    args.extend(["--group-add".into(), g.to_string()]);
                }
                args.extend([
                    "-v".into(),
                    format!("{}:{CONTAINER_FILES}:ro", files.path().display()),
                    image_id.clone(),
                ]);
                Invocation {
                    program,
                    args,
                    role,
                    files,
                    seen_as: Some(CONTAINER_FILES.into()),
                    image_id: Some(image_id),
                    run_key: format!("{engine} {}", run.args().join(" ")),
                    files_group: group,
                    memory_limit: run.memory.clone(),
                }
            }
        })
    }

    /// The image's ID, for an image.
    pub fn image_id(&self) -> Option<&str> {
        self.image_id.as_deref()
    }

    /// For an image: its ID, the engine and the container options, which a check's or a
    /// discover's outcome depends on beside the config.
    pub fn image_run(&self) -> Option<String> {
        self.image_id.as_ref().map(|id| format!("{id} {}", self.run_key))
    }

    /// Writes `value` as file `name` and returns the path the connector sees.
    pub fn file(&self, name: &str, value: &Value) -> Result<String, ConnectorError> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = self.files.path().join(name);
        let write = || {
            // Written whole beside and renamed over the old one, so a reader sees one or the
            // other; readable by the owner and, for an image, by the group the container is
            // given (the mode is set after creating, so no umask narrows it).
            let tmp = self.files.path().join(format!(".{name}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            if let Some(g) = self.files_group {
                std::os::unix::fs::fchown(&f, None, Some(g))?;
                f.set_permissions(std::fs::Permissions::from_mode(0o640))?;
            }
            f.write_all(value.to_string().as_bytes())?;
            drop(f);
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| ConnectorError::external(format!("{}", path.display())).with_source(e))?;
        Ok(match &self.seen_as {
            Some(prefix) => format!("{prefix}/{name}"),
            None => path.display().to_string(),
        })
    }

    /// For an image: whether the engine refused the container's options (exit 125 with its
    /// words for an option it does not take, such as more CPUs than the machine has), which no
    /// retry mends. Its other errors exit 125 too (its daemon unreachable, an image gone since
    /// the inspect): those may pass, and a restart inspects again.
    pub fn engine_refused(&self, status: std::process::ExitStatus, stderr: &str) -> bool {
        let said = stderr.to_ascii_lowercase();
        self.image_id.is_some()
            && status.code() == Some(125)
            && [
                "invalid argument",
                "range of cpus",
                "minimum memory",
                "unknown flag",
                "invalid reference format",
                "no such network",
                "network not found",
                "invalid volume",
                "invalid mount",
            ]
            .iter()
            .any(|w| said.contains(w))
    }

    /// How a connector's exit reads in an error: the status, and for an image killed at its
    /// memory limit, which limit.
    pub fn exit(&self, status: std::process::ExitStatus) -> String {
        match (&self.memory_limit, status.code()) {
            (Some(m), Some(137)) => {
                format!("{status} (killed: the container went over its memory_limit of {m}, or was stopped)")
            }
            (_, Some(125)) if self.image_id.is_some() => format!("{status} (the container engine could not run it)"),
            _ => status.to_string(),
        }
    }

    /// A command running `verb` with `args`.
    /// A command running `verb` with `args`, and for an image the guard that removes its
    /// container when dropped (killing the `docker`/`podman` client does not stop the
    /// container itself). Keep the guard as long as the child.
    pub fn command(&self, verb: &str, args: &[String]) -> (Command, Option<ContainerGuard>) {
        let mut c = Command::new(&self.program);
        let guard = match self.seen_as {
            Some(_) => {
                static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                // The server's pid (the sweep reads it), a token of this process (a pid comes
                // back, in a container it is always the same), and a counter.
                let name = format!(
                    "hstream-airbyte-{}-{}-{}",
                    std::process::id(),
                    process_token(),
                    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                );
                // `run` first, then the name and this host's label, then the rest (which ends
                // with the image).
                c.arg(&self.args[0])
                    .arg("--name")
                    .arg(&name)
                    .arg("--label")
                    .arg(format!("{HOST_LABEL}={}", boot_id()))
                    .args(&self.args[1..]);
                Some(ContainerGuard {
                    engine: self.program.clone(),
                    name,
                })
            }
            None => {
                c.args(&self.args);
                None
            }
        };
        c.arg(verb).args(args).kill_on_drop(true);
        (c, guard)
    }
}

/// A connector's stderr, drained beside its stdout (a connector that fills the pipe would block):
/// lossy and bounded per line, so a stray byte or a huge line never stops the draining; each
/// line logged when asked (the connector's own logging), the last three kept for errors.
pub struct Stderr(tokio_util::task::AbortOnDropHandle<String>);

impl Stderr {
    pub fn drain(stderr: tokio::process::ChildStderr, log: bool) -> Stderr {
        use tracing::Instrument;
        let task = async move {
            let mut reader = BufReader::new(stderr);
            let mut tail = std::collections::VecDeque::new();
            let mut raw = Vec::new();
            loop {
                match read_line_bounded(&mut reader, &mut raw, 64 << 10).await {
                    Ok(0) => break,
                    // A line over the bound is cut there; the rest comes as the next line.
                    Ok(_) | Err(_) if !raw.is_empty() => {}
                    _ => break,
                }
                let line = String::from_utf8_lossy(&raw).trim_end().to_owned();
                raw.clear();
                if log {
                    tracing::info!(target: "airbyte", "{line}");
                }
                tail.push_back(line);
                if tail.len() > 3 {
                    tail.pop_front();
                }
            }
            Vec::from(tail).join(" | ")
        };
        Stderr(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            task.in_current_span(),
        )))
    }

    /// The last lines, waiting briefly for the pipe's end (a leftover process may hold it).
    pub async fn last_words(self) -> String {
        tokio::time::timeout(Duration::from_secs(2), self.0)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    }
}

/// A connector's LOG message into our log (and so the task's), at its level.
pub fn log(level: LogLevel, message: &str) {
    match level {
        LogLevel::Fatal | LogLevel::Error => tracing::error!(target: "airbyte", "{message}"),
        LogLevel::Warn => tracing::warn!(target: "airbyte", "{message}"),
        LogLevel::Info => tracing::info!(target: "airbyte", "{message}"),
        LogLevel::Debug | LogLevel::Trace => tracing::debug!(target: "airbyte", "{message}"),
    }
}

/// `read_until(b'\n')` that refuses (InvalidData) a line longer than `limit` instead of
/// buffering it whole. Returns the bytes read (0 at the end).
pub async fn read_line_bounded<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let (done, used) = {
            let buf = reader.fill_buf().await?;
            if buf.is_empty() {
                return Ok(total);
            }
            match memchr::memchr(b'\n', buf) {
                Some(i) => {
                    line.extend_from_slice(&buf[..=i]);
                    (true, i + 1)
                }
                None => {
                    line.extend_from_slice(buf);
                    (false, buf.len())
                }
            }
        };
        reader.consume(used);
        total += used;
        if line.len() > limit {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "line too long"));
        }
        if done {
            return Ok(total);
        }
    }
}

/// What a one-shot command said.
#[derive(Debug, Default)]
pub struct Outcome {
    pub messages: Vec<Value>,
    pub spec: Option<Value>,
    pub catalog: Option<Value>,
    pub status: Option<(bool, Option<String>)>,
    /// The last TRACE error: (message, failure_type).
    pub error: Option<(String, Option<String>)>,
    /// Lines that were not AirbyteMessages (kept as log lines).
    pub noise: usize,
    pub logs: Vec<String>,
}

/// Runs a one-shot command (`spec`, `check`, `discover`) to its end, within `limit`.
pub async fn run_once(
    inv: &Invocation,
    verb: &str,
    args: &[String],
    limit: Duration,
) -> Result<Outcome, ConnectorError> {
    let (mut cmd, _container) = inv.command(verb, args);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ConnectorError::external(format!("starting the connector ({verb})")).with_source(e))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(ConnectorError::internal("the connector's output pipes are missing"));
    };
    let stderr = Stderr::drain(stderr, false);
    let collect = async {
        let mut out = Outcome::default();
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines
            .next_line()
            .await
            .map_err(|e| ConnectorError::external("reading the connector's output").with_source(e))?
        {
            if line.trim().is_empty() {
                continue;
            }
            match protocol::parse(&line) {
                Ok(Message::Spec(v)) => out.spec = Some(v),
                Ok(Message::Catalog(v)) => out.catalog = Some(v),
                Ok(Message::ConnectionStatus { succeeded, message }) => out.status = Some((succeeded, message)),
                Ok(Message::Trace(Trace::Error {
                    message, failure_type, ..
                })) => out.error = Some((message, failure_type)),
                Ok(Message::Log { level, message }) => {
                    if matches!(level, LogLevel::Fatal | LogLevel::Error | LogLevel::Warn) {
                        out.logs.push(message);
                    }
                }
                Ok(_) => {}
                Err(protocol::ParseError::NotJson(_)) => out.noise += 1,
                Err(e) => {
                    return Err(ConnectorError::external(format!(
                        "the connector ({verb}) wrote a malformed message: {e}"
                    )));
                }
            }
        }
        let status = child
            .wait()
            .await
            .map_err(|e| ConnectorError::external("waiting for the connector").with_source(e))?;
        Ok::<_, ConnectorError>((out, status))
    };
    let (out, status) = match tokio::time::timeout(limit, collect).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ConnectorError::external(format!(
                "the connector's {verb} did not finish within {limit:?}; stopped"
            )));
        }
    };
    if !status.success() {
        let why = match &out.error {
            Some((m, _)) => m.clone(),
            None => stderr.last_words().await,
        };
        let message = format!("the connector's {verb} exited with {}: {why}", inv.exit(status));
        if inv.engine_refused(status, &why) {
            return Err(ConnectorError::config(message));
        }
        return Err(classify(&out, message));
    }
    Ok(out)
}

/// A config error when the connector blamed its config, else external (retryable).
fn classify(out: &Outcome, message: String) -> ConnectorError {
    match out.error.as_ref().and_then(|(_, t)| t.as_deref()) {
        Some("config_error") => ConnectorError::config(message),
        _ => ConnectorError::external(message),
    }
}

/// The connector's SPEC.
pub async fn spec(inv: &Invocation, limit: Duration) -> Result<Value, ConnectorError> {
    let out = run_once(inv, "spec", &[], limit).await?;
    out.spec
        .ok_or_else(|| ConnectorError::external("the connector's spec printed no SPEC message"))
}

/// `check`: Ok when the connector says SUCCEEDED; a FAILED status is a config error with the
/// connector's message.
pub async fn check(inv: &Invocation, config: &Value, limit: Duration) -> Result<(), ConnectorError> {
    let path = inv.file(inv.role.config_file(), config)?;
    let out = run_once(inv, "check", &["--config".into(), path], limit).await?;
    match out.status {
        Some((true, _)) => Ok(()),
        Some((false, m)) => Err(ConnectorError::config(format!(
            "config: the connector's check failed: {}",
            m.unwrap_or_else(|| "no message".into())
        ))),
        None => Err(classify(
            &out,
            match &out.error {
                Some((m, _)) => format!("the connector's check failed: {m}"),
                None => "the connector's check printed no CONNECTION_STATUS".into(),
            },
        )),
    }
}

/// `discover`: the CATALOG.
pub async fn discover(inv: &Invocation, config: &Value, limit: Duration) -> Result<Value, ConnectorError> {
    let path = inv.file(inv.role.config_file(), config)?;
    let out = run_once(inv, "discover", &["--config".into(), path], limit).await?;
    match out.catalog {
        Some(c) => Ok(c),
        None => Err(classify(
            &out,
            match &out.error {
                Some((m, _)) => format!("the connector's discover failed: {m}"),
                None => "the connector's discover printed no CATALOG".into(),
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A connector written as a shell script obeying (or not) the protocol.
    fn script(body: &str) -> (tempfile::TempDir, Launcher) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake-connector");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&path)
            .status()
            .unwrap();
        let l = Launcher::Command(path.display().to_string());
        (dir, l)
    }

    const FAKE: &str = r#"
case "$1" in
  spec) echo 'Starting...'; echo '{"type":"SPEC","spec":{"connectionSpecification":{"type":"object","required":["count"],"properties":{"count":{"type":"integer"},"token":{"type":"string","airbyte_secret":true}}}}}' ;;
  check) if grep -q '"count": *-1' "$3" || grep -q '"count":-1' "$3"; then
           echo '{"type":"CONNECTION_STATUS","connectionStatus":{"status":"FAILED","message":"count must be positive"}}'
         else
           echo '{"type":"LOG","log":{"level":"INFO","message":"ok"}}'
           echo '{"type":"CONNECTION_STATUS","connectionStatus":{"status":"SUCCEEDED"}}'
         fi ;;
  discover) echo '{"type":"CATALOG","catalog":{"streams":[{"name":"users","json_schema":{},"supported_sync_modes":["full_refresh","incremental"]}]}}' ;;
esac
"#;

    #[tokio::test]
    async fn spec_check_and_discover_of_a_connector_that_obeys() {
        let (_d, l) = script(FAKE);
        let inv = Invocation::new(&l, Role::Source).await.unwrap();
        let t = Duration::from_secs(10);
        let spec = spec(&inv, t).await.unwrap();
        assert_eq!(spec["connectionSpecification"]["required"], json!(["count"]));
        check(&inv, &json!({"count": 5}), t).await.unwrap();
        let e = check(&inv, &json!({"count": -1}), t).await.unwrap_err();
        assert_eq!(e.kind, hstream_runtime::ErrorKind::Config);
        assert!(e.message.contains("count must be positive"), "{e}");
        let cat = discover(&inv, &json!({"count": 5}), t).await.unwrap();
        assert_eq!(cat["streams"][0]["name"], json!("users"));
    }

    #[tokio::test]
    async fn failures_are_classified_with_the_connectors_words() {
        let t = Duration::from_secs(10);
        // Exits non-zero after a TRACE error that blames the config.
        let (_d, l) = script(
            r#"echo '{"type":"TRACE","trace":{"type":"ERROR","emitted_at":1,"error":{"message":"API key rejected","failure_type":"config_error"}}}'; exit 1"#,
        );
        let inv = Invocation::new(&l, Role::Source).await.unwrap();
        let e = check(&inv, &json!({}), t).await.unwrap_err();
        assert_eq!(e.kind, hstream_runtime::ErrorKind::Config);
        assert!(
            e.message.contains("API key rejected") && e.message.contains("exit status: 1"),
            "{e}"
        );
        // Crashes with only stderr to say why: external, with the stderr tail.
        let (_d, l) = script("echo 'Traceback: boom' >&2; exit 3");
        let inv = Invocation::new(&l, Role::Source).await.unwrap();
        let e = spec(&inv, t).await.unwrap_err();
        assert_eq!(e.kind, hstream_runtime::ErrorKind::External);
        assert!(
            e.message.contains("boom") && e.message.contains("exit status: 3"),
            "{e}"
        );
        // A malformed AirbyteMessage is an error; plain text lines are log noise.
        let (_d, l) = script(r#"echo 'hello'; echo '{"type":"RECORD","record":{"data":{}}}'"#);
        let inv = Invocation::new(&l, Role::Source).await.unwrap();
        let e = spec(&inv, t).await.unwrap_err();
        assert!(e.message.contains("malformed message"), "{e}");
        // Floods stderr (beyond a pipe's buffer) and still answers.
        let (_d, l) = script(
            r#"i=0; while [ $i -lt 2000 ]; do echo "log line $i with some padding to fill the pipe" >&2; i=$((i+1)); done
echo '{"type":"SPEC","spec":{"connectionSpecification":{}}}'"#,
        );
        let inv = Invocation::new(&l, Role::Source).await.unwrap();
        spec(&inv, t).await.unwrap();
        // Says nothing useful.
        let (_d, l) = script("echo 'just text'");
        let inv = Invocation::new(&l, Role::Source).await.unwrap();
        let e = spec(&inv, t).await.unwrap_err();
        assert!(e.message.contains("no SPEC"), "{e}");
        // Hangs: stopped at the limit.
        let (_d, l) = script("sleep 30");
        let inv = Invocation::new(&l, Role::Source).await.unwrap();
        let started = std::time::Instant::now();
        let e = spec(&inv, Duration::from_millis(300)).await.unwrap_err();
        assert!(e.message.contains("did not finish"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // Not there.
        let e = Invocation::new(&Launcher::Command("no-such-airbyte-connector".into()), Role::Source)
            .await
            .err()
            .unwrap();
        assert!(e.message.starts_with("command:"), "{e}");
    }

    /// Files for an image are readable by the group the container is given (whatever the
    /// umask) and by no other account; without such a group they are the owner's alone.
    #[tokio::test]
    async fn container_files_are_readable_by_their_group_only() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let g = files_group(dir.path()).unwrap();
        let root = std::fs::metadata(dir.path()).unwrap().uid() == 0;
        assert_eq!(g.is_some(), root);
        let listed = std::fs::read_to_string("/etc/group").unwrap_or_default();
        if let Some(g) = g {
            assert_eq!(std::fs::metadata(dir.path()).unwrap().gid(), g);
            assert_eq!(mode(dir.path()), 0o750);
            assert!(
                !listed.lines().any(|l| l.split(':').nth(2) == Some(&g.to_string())),
                "{g}"
            );
        } else {
            assert_eq!(mode(dir.path()), 0o700);
        }
        // The files an invocation writes, with a group, and rewritten.
        let inv = Invocation {
            program: PathBuf::from("/bin/true"),
            args: Vec::new(),
            role: Role::Source,
            files: tempfile::tempdir().unwrap(),
            seen_as: Some(CONTAINER_FILES.into()),
            image_id: Some("sha256:x".into()),
            run_key: String::new(),
            files_group: g,
            memory_limit: None,
        };
        for v in [json!({"a": 1}), json!({"a": 2})] {
            assert_eq!(
                inv.file("source_config.json", &v).unwrap(),
                "/config/source_config.json"
            );
            let p = inv.files.path().join("source_config.json");
            assert_eq!(std::fs::read_to_string(&p).unwrap(), v.to_string());
            let m = std::fs::metadata(&p).unwrap();
            match g {
                Some(g) => assert_eq!((m.gid(), mode(&p)), (g, 0o640)),
                None => assert_eq!(mode(&p), 0o600),
            }
        }
    }
}
