//! What running a connector image takes beside the command itself (decision 033): the container
//! options and how the engines read them, the image's ID (pulled first if missing), the group that
//! may read the connector's files, container names and labels, and the removal of containers a
//! server leaves.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hstream_runtime::ConnectorError;
use tokio::process::Command;

use super::package::INSTALL_LIMIT;

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
    pub(super) fn args(&self) -> Vec<String> {
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

/// How long `image inspect` may take (a stuck engine or socket).
const INSPECT_LIMIT: Duration = Duration::from_secs(60);

/// The image's ID, pulled first if it is not on this machine.
pub(super) async fn image_id(program: &Path, engine: &str, image: &str) -> Result<String, ConnectorError> {
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
pub(super) fn files_group(dir: &Path) -> std::io::Result<Option<u32>> {
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
pub(super) const HOST_LABEL: &str = "io.hstream.airbyte.boot";

pub(super) fn boot_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into())
    })
}

/// A random token of this process, for container names.
pub(super) fn process_token() -> &'static str {
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
pub(super) fn sweep_leftovers(engine: &Path) {
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
    pub(super) engine: PathBuf,
    pub(super) name: String,
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let memory = |m: &str| ContainerRun {
            memory: Some(m.into()),
            ..Default::default()
        };
        let cpus = |c: f64| ContainerRun {
            cpus: Some(c),
            ..Default::default()
        };
        let network = |n: &str| ContainerRun {
            network: Some(n.into()),
            ..Default::default()
        };
        let local_root = |d: &str| ContainerRun {
            local_root: Some(d.into()),
            ..Default::default()
        };
        for (run, field) in [
            (memory("lots"), "memory_limit:"),
            (memory("5m"), "memory_limit:"),
            (memory("1x"), "memory_limit:"),
            (memory("99999999999999999999g"), "memory_limit:"),
            (cpus(0.0), "cpu_limit:"),
            (cpus(f64::NAN), "cpu_limit:"),
            (network("--privileged"), "network:"),
            (network("a b"), "network:"),
            (local_root("relative/dir"), "local_root:"),
            (local_root("/tmp/x:/etc"), "local_root:"),
        ] {
            let e = run.validate().unwrap_err();
            assert_eq!(e.kind, hstream_runtime::ErrorKind::Config);
            assert!(e.message.starts_with(field), "{e}");
        }
        memory("2G").validate().unwrap();
        memory("6291456").validate().unwrap();
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
}
