//! One writer per run directory: `train` and `train --resume` hold an exclusive lock file,
//! `RUN/lock`, with the holder's process id and host, created with `O_EXCL` and removed when the
//! trainer is dropped. A lock left by a process that no longer runs on this host is reported and
//! taken over; any other holder is refused.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::checkpoint::process_alive;
use crate::error::{io_err, Result, TrainError};

/// The held lock of a run directory; released on drop.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

/// This machine's host name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

impl RunLock {
    /// Takes the lock of `run_dir` (which must exist).
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join("lock");
        let host = host_name();
        let me = format!("pid {} host {host}\n", std::process::id());
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(me.as_bytes())
                        .and_then(|()| f.sync_all())
                        .map_err(io_err(&path))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let held = std::fs::read_to_string(&path).unwrap_or_default();
                    let mut words = held.split_whitespace();
                    let pid = words.nth(1).and_then(|p| p.parse::<u32>().ok());
                    let holder_host = words.nth(1).unwrap_or("");
                    let stale = holder_host == host && pid.is_some_and(|p| !process_alive(p));
                    if !stale {
                        return Err(TrainError::Checkpoint {
                            path,
                            problem: format!(
                                "the run is locked by {} (another `train` or `--resume` is writing it); wait for it to finish, or delete the lock file if that process is gone",
                                held.trim()
                            ),
                        });
                    }
                    eprintln!(
                        "note: {} was left by {} which no longer runs; taking it over",
                        path.display(),
                        held.trim()
                    );
                    std::fs::remove_file(&path).map_err(io_err(&path))?;
                }
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Err(TrainError::Checkpoint {
            path,
            problem: "another process took the lock at the same moment".into(),
        })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
