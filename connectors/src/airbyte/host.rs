//! Running an Airbyte connector: as an executable (on PATH or at a path), as a Python package
//! installed into a managed venv on first use (with `uv` when present, else `python3 -m venv` and
//! pip), or as a container image through `docker`/`podman` with the Airbyte image conventions.
//! The one-shot commands (`spec`, `check`, `discover`) are run here; their outcome is classified
//! into the runtime's errors (config, external) with the connector's own words.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hstream_runtime::ConnectorError;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::protocol::{self, LogLevel, Message, Trace};

/// Bytes of a memory size as docker and podman read one (go-units' RAMInBytes): a number,
/// optionally with a fraction, one optional space, then optionally k, m, g, t or p (powers of
/// 1024) followed by nothing, `b` or `ib`; or just `b`.
fn memory_bytes(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, rest) = t.split_at(split);
    let rest = rest.strip_prefix(' ').unwrap_or(rest);
    let (unit, rest) = match rest.chars().next() {
        Some(u @ ('k' | 'm' | 'g' | 't' | 'p')) => (Some(u), &rest[1..]),
        _ => (None, rest),
    };
    // After a unit, nothing, `b` or `ib` (KiB, MB); without one, nothing or `b`.
    let suffix_ok = match unit {
        Some(_) => matches!(rest, "" | "b" | "ib"),
        None => matches!(rest, "" | "b"),
    };
    if !suffix_ok || num.is_empty() || num.starts_with('.') || num.matches('.').count() > 1 {
        return None;
    }
    let scale = match unit {
        None => 1u64,
        Some('k') => 1 << 10,
        Some('m') => 1 << 20,
        Some('g') => 1 << 30,
        Some('t') => 1 << 40,
        _ => 1 << 50,
    };
    let n: f64 = num.parse().ok()?;
    let bytes = n * scale as f64;
    // The engines hold it in an int64.
    (bytes.is_finite() && bytes < i64::MAX as f64).then_some(bytes as u64)
}

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

/// How an image's container runs: the options `memory_limit`, `cpu_limit` and `network`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContainerRun {
    /// `--memory` (`512m`, `2g`): a connector going over it is killed (exit 137).
    pub memory: Option<String>,
    /// `--cpus` (`0.5`, `2`).
    pub cpus: Option<f64>,
    /// `--network`: `host` (the default) reaches what this server reaches.
    pub network: Option<String>,
    /// A directory of this machine mounted read-write at `/local`, as Airbyte's platform mounts
    /// its `LOCAL_ROOT` for connectors that read or write local files.
    pub local_root: Option<String>,
}

impl ContainerRun {
    /// Refuses values the engine would refuse (or misread), naming the option.
    pub fn validate(&self) -> Result<(), ConnectorError> {
        if let Some(m) = &self.memory {
            match memory_bytes(m) {
                Some(b) if b >= 6 << 20 => {}
                Some(_) => {
                    return Err(ConnectorError::config(format!(
                        "memory_limit: {m:?} is under the engines' minimum of 6m"
                    )));
                }
                None => {
                    return Err(ConnectorError::config(format!(
                        "memory_limit: {m:?} is not a size such as 512m, 1.5g or 2GiB"
                    )));
                }
            }
        }
        if let Some(c) = self.cpus
            && !(c.is_finite() && c > 0.0 && c <= 1024.0)
        {
            return Err(ConnectorError::config(format!(
                "cpu_limit: {c} is not a number of CPUs above 0 (e.g. 0.5 or 2)"
            )));
        }
        if let Some(d) = &self.local_root
            && (!d.starts_with('/') || d.contains([':', ',']) || d.chars().any(char::is_control))
        {
            return Err(ConnectorError::config(format!(
                "local_root: {d:?} is not an absolute directory path (without ':' or ',')"
            )));
        }
        if let Some(n) = &self.network
            && (n.is_empty()
                || n.starts_with('-')
                || !n.chars().all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c)))
        {
            return Err(ConnectorError::config(format!(
                "network: {n:?} is not a network mode (host, bridge, none, container:<name>) or a network's name"
            )));
        }
        Ok(())
    }

    /// The engine's `run` options for these limits.
    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--network".to_owned(),
            self.network.clone().unwrap_or_else(|| "host".into()),
        ];
        if let Some(m) = &self.memory {
            a.extend(["--memory".to_owned(), m.trim().to_owned()]);
        }
        if let Some(c) = self.cpus {
            a.extend(["--cpus".to_owned(), c.to_string()]);
        }
        if let Some(d) = &self.local_root {
            a.extend(["-v".to_owned(), format!("{d}:/local")]);
        }
        a
    }
}

/// The console script of an Airbyte package: `airbyte-source-faker==7.2.1` → `source-faker`.
pub fn package_executable(requirement: &str) -> Result<String, ConnectorError> {
    let name = requirement
        .split(['=', '<', '>', '~', '!', '[', ';', ' '])
        .next()
        .unwrap_or_default()
        .trim();
    match name.strip_prefix("airbyte-") {
        Some(exe) if !exe.is_empty() && exe.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') => {
            Ok(exe.to_owned())
        }
        _ => Err(ConnectorError::config(format!(
            "package: {requirement:?} is not an Airbyte connector package (airbyte-source-… or airbyte-destination-…)"
        ))),
    }
}

/// The venv directory of a requirement: one per exact requirement, so a version change installs
/// anew and the old one stays usable until then.
fn venv_dir(root: &Path, requirement: &str) -> Result<PathBuf, ConnectorError> {
    use md5::Digest;
    let exe = package_executable(requirement)?;
    let h = md5::Md5::digest(requirement.as_bytes());
    let tag: String = h.iter().take(4).map(|b| format!("{b:02x}")).collect();
    Ok(root.join(format!(".venv-{exe}-{tag}")))
}

/// How long one install step (venv, pip) may take.
const INSTALL_LIMIT: Duration = Duration::from_secs(900);

async fn run_tool(cmd: &mut Command, what: &str) -> Result<(), ConnectorError> {
    let out = tokio::time::timeout(INSTALL_LIMIT, cmd.stdin(Stdio::null()).kill_on_drop(true).output())
        .await
        .map_err(|_| ConnectorError::external(format!("{what} did not finish within {INSTALL_LIMIT:?}")))?
        .map_err(|e| ConnectorError::external(what.to_string()).with_source(e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(ConnectorError::external(format!(
            "{what} failed ({}): {}",
            out.status,
            tail.join(" | ")
        )));
    }
    Ok(())
}

/// Serializes installs within this process (two tasks of one package install it once).
static INSTALLS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The executable of a package, installed first if missing. A venv is complete once its
/// `.complete` marker exists (scripts in a venv name its path, so it cannot be built elsewhere
/// and moved); an incomplete one is removed and built again.
pub async fn ensure_package(requirement: &str, root: &Path) -> Result<PathBuf, ConnectorError> {
    let exe_name = package_executable(requirement)?;
    let dir = venv_dir(root, requirement)?;
    // The console script is `<name>` (`source-faker`), or for some packages `airbyte-<name>`.
    let exe = || {
        let bin = dir.join("bin");
        [bin.join(&exe_name), bin.join(format!("airbyte-{exe_name}"))]
            .into_iter()
            .find(|p| p.is_file())
    };
    let marker = dir.join(".complete");
    let _one = INSTALLS.lock().await;
    if marker.is_file()
        && let Some(exe) = exe()
    {
        return Ok(exe);
    }
    std::fs::create_dir_all(root)
        .map_err(|e| ConnectorError::external(format!("{}", root.display())).with_source(e))?;
    // And across processes (servers sharing the directory): an exclusive lock on a file there.
    let lock_path = root.join(".install.lock");
    let _locked = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::create(&lock_path)?;
        f.lock()?;
        Ok::<_, std::io::Error>(f)
    })
    .await
    .map_err(|e| ConnectorError::internal(e.to_string()))?
    .map_err(|e| ConnectorError::external(format!("locking {}", root.display())).with_source(e))?;
    if marker.is_file()
        && let Some(exe) = exe()
    {
        return Ok(exe);
    }
    let _ = std::fs::remove_dir_all(&dir);
    tracing::info!(requirement, dir = %dir.display(), "installing the connector package");
    match which("uv") {
        Some(uv) => {
            run_tool(Command::new(&uv).arg("venv").arg("--quiet").arg(&dir), "uv venv").await?;
            run_tool(
                Command::new(&uv)
                    .args(["pip", "install", "--quiet", "--python"])
                    .arg(dir.join("bin/python"))
                    .arg(requirement),
                &format!("uv pip install {requirement}"),
            )
            .await?;
        }
        None => {
            run_tool(
                Command::new("python3").arg("-m").arg("venv").arg(&dir),
                "python3 -m venv",
            )
            .await?;
            run_tool(
                Command::new(dir.join("bin/pip"))
                    .args(["install", "--quiet", "--disable-pip-version-check"])
                    .arg(requirement),
                &format!("pip install {requirement}"),
            )
            .await?;
        }
    }
    let Some(exe) = exe() else {
        return Err(ConnectorError::config(format!(
            "package: {requirement} installed no executable {exe_name} (or airbyte-{exe_name})"
        )));
    };
    std::fs::write(&marker, requirement)
        .map_err(|e| ConnectorError::external(format!("{}", marker.display())).with_source(e))?;
    Ok(exe)
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

/// How long `image inspect` may take (a stuck engine or socket).
const INSPECT_LIMIT: Duration = Duration::from_secs(60);

/// The image's ID, pulled first if it is not on this machine.
async fn image_id(program: &Path, engine: &str, image: &str) -> Result<String, ConnectorError> {
    let inspect = || async {
        let out = tokio::time::timeout(
            INSPECT_LIMIT,
            Command::new(program)
                .args(["image", "inspect", "--format", "{{.Id}}", "--", image])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| {
            ConnectorError::external(format!(
                "{engine} image inspect did not answer within {INSPECT_LIMIT:?}"
            ))
        })?
        .map_err(|e| ConnectorError::external(format!("running {engine} image inspect")).with_source(e))?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok::<_, ConnectorError>((out.status.success() && !id.is_empty()).then_some(id))
    };
    if let Some(id) = inspect().await? {
        return Ok(id);
    }
    tracing::info!(image, engine, "pulling the connector image");
    let out = tokio::time::timeout(
        INSTALL_LIMIT,
        Command::new(program)
            .args(["pull", "-q", "--", image])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| {
        ConnectorError::external(format!(
            "image: pulling {image} did not finish within {INSTALL_LIMIT:?}"
        ))
    })?
    .map_err(|e| ConnectorError::external(format!("running {engine} pull")).with_source(e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        let message = format!("image: {image} is not on this machine and {engine} could not pull it: {last}");
        // The registry's answer about the image itself is the user's to fix; anything else
        // (a registry or network down) may pass.
        let lower = last.to_ascii_lowercase();
        let final_answer = [
            "not found",
            "manifest unknown",
            "unauthorized",
            "denied",
            "does not exist",
            "invalid reference",
            "repository name must",
            "did not resolve to an alias",
            "short-name",
        ]
        .iter()
        .any(|w| lower.contains(w));
        return Err(if final_answer {
            ConnectorError::config(message)
        } else {
            ConnectorError::external(message)
        });
    }
    inspect()
        .await?
        .ok_or_else(|| ConnectorError::external(format!("image: {engine} pulled {image} but cannot inspect it")))
}

/// The group that may read a container's files in `dir`: a group no account of this machine
/// has (the first gid from 47000 up that /etc/group does not list), to which `dir` is given
/// (mode 0750). Not root (files cannot be given to another group): our own group if it is ours
/// alone, else None: `dir` stays ours alone (0700), and only an image running as our user (or
/// as root) reads it.
fn files_group(dir: &Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let listed: std::collections::HashSet<u32> = std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect();
    let free = (47_000u32..).find(|g| !listed.contains(g)).unwrap_or(47_000);
    match std::os::unix::fs::chown(dir, None, Some(free)) {
        Ok(()) => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
            Ok(Some(free))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // Not root. A group that is ours alone (a user-private group: no other account has
            // it, as primary group or as member) may read; otherwise nobody but us.
            let gid = std::fs::metadata(dir)?.gid();
            let private = private_group(gid);
            std::fs::set_permissions(
                dir,
                std::fs::Permissions::from_mode(if private { 0o750 } else { 0o700 }),
            )?;
            Ok(private.then_some(gid))
        }
        Err(e) => Err(e),
    }
}

/// Whether `gid` is a user-private group: the primary group of exactly one account in
/// /etc/passwd, with no members listed in /etc/group.
fn private_group(gid: u32) -> bool {
    let g = gid.to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let primary = passwd.lines().filter(|l| l.split(':').nth(3) == Some(&g)).count();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let no_members = group
        .lines()
        .find(|l| l.split(':').nth(2) == Some(&g))
        .is_some_and(|l| l.split(':').nth(3).is_none_or(|m| m.trim().is_empty()));
    primary == 1 && no_members
}

/// The label naming the host (by its boot) a container was started on, so that a sweep on a
/// shared engine only judges containers whose server it can see.
const HOST_LABEL: &str = "io.hstream.airbyte.boot";

fn boot_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into())
    })
}

/// A random token of this process, for container names.
fn process_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        format!("{:06x}", h.finish() & 0xff_ffff)
    })
}

/// Removes, once per process, the containers that servers before this one left through the
/// docker CLI (which runs them without `--rm`, and with a Docker daemon a killed server's source
/// container even runs on): those started on this host since its boot (our label) whose name's
/// server process is gone. Best effort, in the background.
fn sweep_leftovers(engine: &Path) {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    let engine = engine.to_owned();
    SWEPT.call_once(|| {
        std::thread::spawn(move || {
            let Ok(out) = std::process::Command::new(&engine)
                .args(["ps", "-a", "--filter"])
                .arg(format!("label={HOST_LABEL}={}", boot_id()))
                .args(["--filter", "name=hstream-airbyte-", "--format", "{{.Names}}"])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
            else {
                return;
            };
            for name in String::from_utf8_lossy(&out.stdout).lines().map(str::trim) {
                let pid = name
                    .strip_prefix("hstream-airbyte-")
                    .and_then(|r| r.split('-').next())
                    .and_then(|p| p.parse::<u32>().ok());
                let gone = pid.is_some_and(|p| p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists());
                if gone {
                    let _ = std::process::Command::new(&engine)
                        .args(["rm", "-f", name])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        });
    });
}

/// Removes a connector's container when dropped (in the background; a container that already
/// ended and was removed makes this a no-op).
pub struct ContainerGuard {
    engine: PathBuf,
    name: String,
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let (engine, name) = (self.engine.clone(), self.name.clone());
        std::thread::spawn(move || {
            let _ = std::process::Command::new(engine)
                .args(["rm", "-f", &name])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        });
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

    #[test]
    fn container_options_are_checked_naming_the_option() {
        let ok = ContainerRun {
            memory: Some("512m".into()),
            cpus: Some(0.5),
            network: Some("bridge".into()),
            local_root: Some("/srv/airbyte".into()),
        };
        ok.validate().unwrap();
        assert_eq!(
            ok.args(),
            [
                "--network",
                "bridge",
                "--memory",
                "512m",
                "--cpus",
                "0.5",
                "-v",
                "/srv/airbyte:/local"
            ]
        );
        assert_eq!(ContainerRun::default().args(), ["--network", "host"]);
        for (run, field) in [
            (
                ContainerRun {
                    memory: Some("lots".into()),
                    ..Default::default()
                },
                "memory_limit:",
            ),
            (
                ContainerRun {
                    memory: Some("5m".into()),
                    ..Default::default()
                },
                "memory_limit:",
            ),
            (
                ContainerRun {
                    memory: Some("1x".into()),
                    ..Default::default()
                },
                "memory_limit:",
            ),
            (
                ContainerRun {
                    memory: Some("99999999999999999999g".into()),
                    ..Default::default()
                },
                "memory_limit:",
            ),
            (
                ContainerRun {
                    cpus: Some(0.0),
                    ..Default::default()
                },
                "cpu_limit:",
            ),
            (
                ContainerRun {
                    cpus: Some(f64::NAN),
                    ..Default::default()
                },
                "cpu_limit:",
            ),
            (
                ContainerRun {
                    network: Some("--privileged".into()),
                    ..Default::default()
                },
                "network:",
            ),
            (
                ContainerRun {
                    network: Some("a b".into()),
                    ..Default::default()
                },
                "network:",
            ),
            (
                ContainerRun {
                    local_root: Some("relative/dir".into()),
                    ..Default::default()
                },
                "local_root:",
            ),
            (
                ContainerRun {
                    local_root: Some("/tmp/x:/etc".into()),
                    ..Default::default()
                },
                "local_root:",
            ),
        ] {
            let e = run.validate().unwrap_err();
            assert_eq!(e.kind, hstream_runtime::ErrorKind::Config);
            assert!(e.message.starts_with(field), "{e}");
        }
        ContainerRun {
            memory: Some("2G".into()),
            ..Default::default()
        }
        .validate()
        .unwrap();
        ContainerRun {
            memory: Some("6291456".into()),
            ..Default::default()
        }
        .validate()
        .unwrap();
        // As the engines read sizes (go-units).
        assert_eq!(memory_bytes("1.5g"), Some(3 << 29));
        assert_eq!(memory_bytes("2GiB"), Some(2 << 30));
        assert_eq!(memory_bytes("512 m"), Some(512 << 20));
        assert_eq!(memory_bytes("1t"), Some(1 << 40));
        assert_eq!(memory_bytes("100"), Some(100));
        for bad in [
            "", "m", ".5g", "1..5g", "1gx", "-1g", "1 g b", "10gi", "100i", "1\tg", "1  g", "10000p",
        ] {
            assert_eq!(memory_bytes(bad), None, "{bad:?}");
        }
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

    #[test]
    fn package_names() {
        assert_eq!(
            package_executable("airbyte-source-faker==7.2.1").unwrap(),
            "source-faker"
        );
        assert_eq!(
            package_executable("airbyte-destination-duckdb>=0.4").unwrap(),
            "destination-duckdb"
        );
        assert!(package_executable("requests==2.0").is_err());
        assert!(package_executable("airbyte-").is_err());
        let root = Path::new("/r");
        assert_ne!(
            venv_dir(root, "airbyte-source-faker==7.2.1").unwrap(),
            venv_dir(root, "airbyte-source-faker==7.2.0").unwrap()
        );
    }
}
