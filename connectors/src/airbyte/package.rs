//! Airbyte connectors as PyPI packages: the console script a requirement names, and its install
//! into a venv of its own on first use (with `uv` when present, else `python3 -m venv` and pip).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hstream_runtime::ConnectorError;
use tokio::process::Command;

use super::host::which;

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
pub(super) const INSTALL_LIMIT: Duration = Duration::from_secs(900);

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

#[cfg(test)]
mod tests {
    use super::*;

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
