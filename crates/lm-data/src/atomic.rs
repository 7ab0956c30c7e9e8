//! Files written to a temporary name and renamed into place: a reader never sees a partial file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{io_err, Result};

/// The temporary name `path` is written under: `NAME.tmp-PID-N` beside it, N counting this
/// process's temporary files, so that two threads writing one path never share one.
pub fn tmp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `bytes` to `path` through a temporary file, synced and renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    rename_synced(&tmp, path)
}

/// Renames `tmp` to `path` and syncs the directory, so the rename survives a crash.
pub fn rename_synced(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path).map_err(io_err(path))?;
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Flushes a directory's entries (a rename into it) to the disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    match std::fs::File::open(dir).and_then(|f| f.sync_all()) {
        Ok(()) => Ok(()),
        // Some file systems cannot sync a directory handle; the rename itself stands.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// Removes the temporary files (`*.tmp-PID-N`) a killed writer left in `dir`.
pub fn remove_stray_tmp(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if entry.file_name().to_string_lossy().contains(".tmp-") {
            std::fs::remove_file(entry.path()).map_err(io_err(entry.path()))?;
            removed += 1;
        }
    }
    Ok(removed)
}
