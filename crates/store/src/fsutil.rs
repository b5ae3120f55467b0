//! Small filesystem helpers for crash-safe file replacement.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// Makes a directory entry change (create, rename, unlink) durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Replaces `path` with `bytes` atomically: write a temp file, fsync, rename, fsync dir.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    fsync_dir(dir)
}

/// Saves `bytes` under `quarantine_dir` with a name derived from `original`, durably.
pub fn move_to_quarantine(
    quarantine_dir: &Path,
    original: &Path,
    suffix: &str,
    bytes: &[u8],
) -> Result<PathBuf> {
    fs::create_dir_all(quarantine_dir).map_err(|e| Error::io(quarantine_dir, e))?;
    let target = quarantine_name(quarantine_dir, original, suffix);
    write_atomically(&target, bytes)?;
    Ok(target)
}

/// Moves a whole file aside into `quarantine_dir` (rename, so nothing is copied or lost).
pub fn rename_to_quarantine(quarantine_dir: &Path, original: &Path) -> Result<PathBuf> {
    fs::create_dir_all(quarantine_dir).map_err(|e| Error::io(quarantine_dir, e))?;
    let target = quarantine_name(quarantine_dir, original, "");
    fs::rename(original, &target).map_err(|e| Error::io(original, e))?;
    fsync_dir(quarantine_dir)?;
    if let Some(parent) = original.parent() {
        fsync_dir(parent)?;
    }
    Ok(target)
}

fn quarantine_name(quarantine_dir: &Path, original: &Path, suffix: &str) -> PathBuf {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = original
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unnamed".into());
    quarantine_dir.join(format!("{stamp}-{name}{suffix}"))
}

/// Total size of the regular files directly inside `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.metadata().ok())
                .filter(|meta| meta.is_file())
                .map(|meta| meta.len())
                .sum()
        })
        .unwrap_or(0)
}
