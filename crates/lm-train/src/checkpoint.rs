//! Checkpoints: atomic, self-describing, pruned to the last K plus the best.
//!
//! A run directory holds `checkpoints/step-NNNNNNNN/` directories, each with
//! `model.safetensors` (HuggingFace names), `optimizer.safetensors`, `state.json` (step, RNG,
//! tokens seen, best validation loss) and `config.json`. A checkpoint is written into a temporary
//! directory and renamed into place only when complete, so a crash or a full disk never leaves a
//! half-written checkpoint under a real name and never touches the previous ones.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, TrainError};

/// Everything besides weights and optimizer moments that an exact resume needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    /// The run's generator state at the start. Batches are keyed by (seed, step), so `step` is
    /// the data position and this state never advances; kept so the file is self-describing.
    pub rng: [u64; 4],
    /// Training tokens consumed.
    pub tokens_seen: u64,
    /// Wall-clock training seconds so far.
    pub elapsed_s: f64,
    /// The step and value of the best evaluation so far by the run's selection metric: the
    /// validation loss (lower is better) in pretraining, the task's validation metric (higher is
    /// better) in fine-tuning.
    pub best: Option<(u64, f64)>,
    /// Evaluations since the best one (for early stopping).
    #[serde(default)]
    pub evals_since_best: usize,
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(&tmp)(e)
    })?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// The checkpoints directory of a run.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Complete checkpoints of a run, by step, oldest first.
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = checkpoints_dir(run_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mut out = vec![];
    for entry in entries {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint of a run.
pub fn latest_checkpoint(run_dir: &Path) -> Result<PathBuf> {
    list_checkpoints(run_dir)?
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| TrainError::Checkpoint {
            path: checkpoints_dir(run_dir),
            problem: "no checkpoint to resume from (is this a run directory?)".into(),
        })
}

/// Files of one checkpoint, written by the trainer into a temporary directory.
pub struct CheckpointWriter {
    tmp: PathBuf,
    dest: PathBuf,
}

impl CheckpointWriter {
    /// Starts the checkpoint of `step` in `run_dir`.
    pub fn begin(run_dir: &Path, step: u64) -> Result<Self> {
        let parent = checkpoints_dir(run_dir);
        std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let dest = parent.join(step_dir_name(step));
        let tmp = tmp_path(&dest);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        Ok(Self { tmp, dest })
    }

    /// The temporary directory being written.
    pub fn dir(&self) -> &Path {
        &self.tmp
    }

    /// Where to write a file of the checkpoint.
    pub fn path(&self, file: &str) -> PathBuf {
        self.tmp.join(file)
    }

    /// Moves the complete checkpoint into place and returns its directory.
    pub fn commit(self) -> Result<PathBuf> {
        if self.dest.exists() {
            // Same step written again (e.g. after a resume): swap, then drop the old one.
            let old = self.dest.with_extension("old");
            std::fs::rename(&self.dest, &old).map_err(io_err(&self.dest))?;
            std::fs::rename(&self.tmp, &self.dest).map_err(io_err(&self.dest))?;
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        } else {
            std::fs::rename(&self.tmp, &self.dest).map_err(io_err(&self.dest))?;
        }
        Ok(self.dest.clone())
    }

    /// Removes the unfinished temporary directory.
    pub fn abort(self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// Deletes all but the newest `keep` checkpoints, never the one at step `best`.
pub fn prune(run_dir: &Path, keep: usize, best: Option<u64>) -> Result<()> {
    let all = list_checkpoints(run_dir)?;
    let n = all.len();
    for (i, (step, path)) in all.into_iter().enumerate() {
        if i + keep.max(1) < n && Some(step) != best {
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// Reads `state.json` of a checkpoint.
pub fn read_state(ckpt: &Path) -> Result<TrainerState> {
    let path = ckpt.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path,
        problem: format!("unreadable trainer state ({e})"),
    })
}
