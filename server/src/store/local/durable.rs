//! Every fsync of the store and the files it replaces atomically. Each fsync carries a
//! failpoint (`fail`, compiled in for tests only) that fails it for one shard, and, in tests,
//! records what it made durable ([`power`]) so a test can cut files back as a power loss would.
//! The shard's small files (trim point, LSN reservation, recorded gaps) are checksummed and
//! replaced whole: written and fsynced under a temporary name, renamed, directory fsynced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::StoreError;
use super::segment;
use super::shard_log::segment_path;

/// LSN ranges lost in an unclean stop, skipped by readers.
const GAPS_FILE: &str = "gaps";

pub(super) fn sync_dir(id: u64, dir: &Path) -> io::Result<()> {
    injected(id, "store::dir-fsync")?;
    File::open(dir)?.sync_all()
}

/// Under the `failpoints` feature (tests), a failpoint named `site` configured as
/// `return(<shard id>)` fails this IO for that shard only. Otherwise nothing.
pub(super) fn injected(id: u64, site: &str) -> io::Result<()> {
    let _ = id; // read only by the failpoint
    let hit = || -> bool {
        fail::fail_point!(site, |shard: Option<String>| shard.is_some_and(|s| s == id.to_string()));
        false
    };
    if hit() {
        return Err(io::Error::other(format!("injected failure at {site}")));
    }
    Ok(())
}

/// `fsync` of a segment's data, with its failpoint (and, in tests, a record of what it made
/// durable: [`power`]).
pub(super) fn sync_data(id: u64, file: &File, path: &Path, site: &str) -> io::Result<()> {
    injected(id, site)?;
    #[cfg(test)]
    let len = file.metadata()?.len();
    file.sync_data()?;
    #[cfg(test)]
    power::synced(path, len);
    let _ = path;
    Ok(())
}

/// Creates a segment file with its header. It appears under its final name only once complete
/// (written and fsynced under a `.tmp` name, then renamed), and is removed again if the
/// directory cannot be synced, so a failure never leaves a stray segment behind.
pub(super) fn create_segment_file(id: u64, dir: &Path, base: u64) -> Result<PathBuf, StoreError> {
    let path = segment_path(dir, base);
    let tmp = path.with_extension("seg.tmp");
    let prepare = || -> io::Result<File> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(&segment::file_header(base))?;
        injected(id, "store::segment-fsync")?;
        file.sync_all()?;
        Ok(file)
    };
    let file = prepare().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        StoreError::io(&tmp, e)
    })?;
    if path.exists() {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::Corrupt(format!(
            "segment {} already exists",
            path.display()
        )));
    }
    fs::rename(&tmp, &path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        StoreError::io(&path, e)
    })?;
    if let Err(e) = sync_dir(id, dir) {
        let _ = fs::remove_file(&path);
        return Err(StoreError::io(dir, e));
    }
    drop(file);
    Ok(path)
}

/// Whether recorded gaps cover every LSN of `first..=last`.
pub(super) fn covers(gaps: &[(u64, u64)], first: u64, last: u64) -> bool {
    gaps.iter().any(|&(a, b)| a <= first && last <= b)
}

/// A checksummed u64 file (the trim point, the reservation); 0 when absent.
pub(super) fn read_u64_file(dir: &Path, name: &str) -> Result<u64, StoreError> {
    let path = dir.join(name);
    match fs::read(&path) {
        Ok(b) if b.len() == 12 => {
            let v = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
            let crc = u32::from_le_bytes(b[8..].try_into().expect("4 bytes"));
            if crc32c::crc32c(&b[..8]) == crc {
                Ok(v)
            } else {
                Err(StoreError::Corrupt(format!("{} fails its checksum", path.display())))
            }
        }
        Ok(_) => Err(StoreError::Corrupt(format!("{} has a bad length", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(StoreError::io(&path, e)),
    }
}

/// Replaces a checksummed u64 file atomically (write, fsync, rename, fsync dir).
pub(super) fn write_u64_file(id: u64, dir: &Path, name: &str, v: u64, site: &str) -> Result<(), StoreError> {
    let mut bytes = v.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32c::crc32c(&v.to_le_bytes()).to_le_bytes());
    replace_file(id, dir, name, &bytes, site)
}

/// The recorded gaps: pairs of u64 (first, last) and a CRC32C of them all.
pub(super) fn read_gaps(dir: &Path) -> Result<Vec<(u64, u64)>, StoreError> {
    let path = dir.join(GAPS_FILE);
    let b = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    let body = b.len().checked_sub(4).filter(|n| n % 16 == 0);
    let Some(n) = body else {
        return Err(StoreError::Corrupt(format!("{} has a bad length", path.display())));
    };
    let crc = u32::from_le_bytes(b[n..].try_into().expect("4 bytes"));
    if crc32c::crc32c(&b[..n]) != crc {
        return Err(StoreError::Corrupt(format!("{} fails its checksum", path.display())));
    }
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8 bytes"));
    Ok(b[..n]
        .chunks_exact(16)
        .map(|c| (word(&c[..8]), word(&c[8..])))
        .collect())
}

pub(super) fn write_gaps(id: u64, dir: &Path, gaps: &[(u64, u64)]) -> Result<(), StoreError> {
    let mut bytes: Vec<u8> = gaps
        .iter()
        .flat_map(|(a, b)| [a.to_le_bytes(), b.to_le_bytes()])
        .flatten()
        .collect();
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    replace_file(id, dir, GAPS_FILE, &bytes, "store::gaps-fsync")
}

/// Replaces `dir/name` atomically: written and fsynced under a temporary name, renamed, and
/// the directory fsynced.
pub(super) fn replace_file(id: u64, dir: &Path, name: &str, bytes: &[u8], site: &str) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| StoreError::io(&tmp, e))?;
    injected(id, site)
        .and_then(|()| f.sync_all())
        .map_err(|e| StoreError::io(&tmp, e))?;
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
    sync_dir(id, dir).map_err(|e| StoreError::io(dir, e))
}

/// A test-only model of the disk under the page cache: what each segment file's fsyncs made
/// durable, so that a test can cut the files back to it as a power loss would.
#[cfg(test)]
pub(crate) mod power {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static SYNCED: Mutex<BTreeMap<PathBuf, u64>> = Mutex::new(BTreeMap::new());

    pub fn synced(path: &Path, len: u64) {
        let mut m = SYNCED.lock().unwrap();
        let e = m.entry(path.to_owned()).or_insert(0);
        *e = (*e).max(len);
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for shard in std::fs::read_dir(dir.join("shards")).unwrap().flatten() {
            for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
                if f.path().extension().is_some_and(|e| e == "seg") {
                    out.push(f.path());
                }
            }
        }
        out
    }

    /// Counts every segment file under the store root `dir` durable as it is now.
    pub fn settle(dir: &Path) {
        for p in segments(dir) {
            synced(&p, std::fs::metadata(&p).unwrap().len());
        }
    }

    /// Cuts every segment file under the store root `dir` back to what was fsynced (its header
    /// if nothing was: segments are created with a synced header). Files written with a
    /// rename after an fsync (trim point, reservation, gaps) are durable as they are.
    pub fn lose_unsynced(dir: &Path) {
        let m = SYNCED.lock().unwrap();
        for p in segments(dir) {
            let durable = m.get(&p).copied().unwrap_or(super::segment::FILE_HEADER_LEN);
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            if f.metadata().unwrap().len() > durable {
                f.set_len(durable).unwrap();
            }
        }
    }
}
