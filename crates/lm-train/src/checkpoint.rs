//! Checkpoints: atomic, self-describing, pruned to the last K plus the best.
//!
//! A run directory holds `checkpoints/step-NNNNNNNN/` directories, each with
//! `model.safetensors` (HuggingFace names), `optimizer.safetensors`, `state.json` (step, RNG,
//! tokens seen, best validation loss) and `config.json`. Under ZeRO the optimizer state is one
//! `optimizer-rankN.safetensors` per rank, and under ZeRO-3 the model too is one shard per rank
//! in transformers' sharded layout (`model.safetensors.index.json`,
//! `model-0000I-of-0000N.safetensors`), which every reader takes as it takes one file. A checkpoint is written into a temporary
//! directory and renamed into place only when complete, so a crash or a full disk never leaves a
//! half-written checkpoint under a real name and never touches the previous ones.

use std::collections::BTreeMap;
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
    /// Steps skipped for a non-finite loss (`on_nonfinite_loss = "skip"`): counted in `step`,
    /// not in the optimizer's own step count.
    #[serde(default)]
    pub skipped_steps: u64,
    /// Data-parallel ranks that wrote the checkpoint (1: one process).
    #[serde(default = "one_rank")]
    pub world: usize,
    /// Sequences per optimizer step over all ranks (0: not recorded).
    #[serde(default)]
    pub global_batch: usize,
    /// Whether the optimizer state is sharded over the ranks (`optimizer-rank{r}.safetensors`).
    #[serde(default)]
    pub sharded_optimizer: bool,
    /// The dynamic loss scaler's state, in runs with `matmul_precision = "f16"`.
    #[serde(default)]
    pub loss_scale: Option<LossScaleState>,
    /// CRC-32 and length of each file of the checkpoint (`model.safetensors`, …), verified when
    /// the checkpoint is loaded.
    #[serde(default)]
    pub checksums: BTreeMap<String, FileSum>,
}

fn one_rank() -> usize {
    1
}

impl TrainerState {
    /// The state of a run that has not trained yet.
    pub fn fresh(seed: u64) -> Self {
        Self {
            step: 0,
            rng: lm_objectives::Rng::seed_from_u64(seed).state(),
            tokens_seen: 0,
            elapsed_s: 0.0,
            best: None,
            evals_since_best: 0,
            skipped_steps: 0,
            world: 1,
            global_batch: 0,
            sharded_optimizer: false,
            loss_scale: None,
            checksums: BTreeMap::new(),
        }
    }
}

/// Where dynamic loss scaling stands (see `lm_optim::LossScaler`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaleState {
    /// The scale the next step multiplies its loss by.
    pub scale: f64,
    /// Finite steps in a row since the scale last changed.
    pub good_steps: u64,
    /// Steps skipped so far because a gradient overflowed (also counted in `skipped_steps`).
    pub overflows: u64,
}

/// A file's CRC-32 (IEEE) and length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// CRC-32 of the contents.
    pub crc32: u32,
    /// Length in bytes.
    pub len: u64,
}

impl FileSum {
    /// The sum of the file at `path`.
    pub fn of(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        Ok(Self {
            crc32: crc32fast::hash(&bytes),
            len: bytes.len() as u64,
        })
    }
}

/// The files of a checkpoint that carry a checksum in its `state.json` (those it has; a
/// checkpoint written before a file was listed has no checksum for it).
pub const CHECKSUMMED: [&str; 7] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "optimizer.safetensors",
    "tokenizer.json",
    "config.json",
    "run_config.toml",
    "generation_config.json",
];

/// Checks every file that `state` has a checksum for against it; a mismatch names the file.
pub fn verify_checksums(ckpt: &Path, state: &TrainerState) -> Result<()> {
    verify_checksums_of(ckpt, state, |_| true)
}

/// [`verify_checksums`] for the files `wanted` keeps (a reader skips the optimizer state it
/// does not load).
pub fn verify_checksums_of(
    ckpt: &Path,
    state: &TrainerState,
    wanted: impl Fn(&str) -> bool,
) -> Result<()> {
    for (file, want) in state.checksums.iter().filter(|(f, _)| wanted(f)) {
        let path = ckpt.join(file);
        let got = FileSum::of(&path)?;
        if got != *want {
            return Err(TrainError::Checkpoint {
                path,
                problem: format!(
                    "damaged: CRC-32 {:08x} over {} bytes, state.json recorded {:08x} over {} bytes; use an earlier checkpoint by its directory (`lm-train eval RUN/checkpoints/step-N`, `lm-train train --resume RUN/checkpoints/step-N`)",
                    got.crc32, got.len, want.crc32, want.len
                ),
            });
        }
    }
    Ok(())
}

/// Flushes a file's contents to the disk.
fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

/// Writes `bytes` to `path` through a temporary file in the same directory, flushed to the disk,
/// and a rename (then the directory is flushed too).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(lm_data::write_atomic(path, bytes)?)
}

/// Flushes a directory's entries (a rename into it) to the disk.
fn sync_dir(dir: &Path) -> Result<()> {
    Ok(lm_data::sync_dir(dir)?)
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

/// When `path` is one of a run's checkpoints (`RUN/checkpoints/step-N`, with `RUN/config.toml`):
/// the run directory and the checkpoint. `None` for any other directory; an error for a
/// checkpoint outside its run.
pub fn checkpoint_of_run(path: &Path) -> Result<Option<(PathBuf, PathBuf)>> {
    if !path.join("state.json").is_file() {
        return Ok(None);
    }
    let run = path
        .parent()
        .and_then(Path::parent)
        .filter(|r| r.join("config.toml").is_file());
    match run {
        Some(run) => Ok(Some((run.to_path_buf(), path.to_path_buf()))),
        None => Err(TrainError::Checkpoint {
            path: path.into(),
            problem: "is a checkpoint outside its run directory (RUN/checkpoints/step-N, with \
                      RUN/config.toml)"
                .into(),
        }),
    }
}

/// Moves the run's checkpoints after `step` into `checkpoints/superseded-after-step-N-<time>/`
/// (nothing is deleted): a run resumed from an earlier checkpoint goes another way. Returns
/// where they went, `None` when there were none.
pub fn set_aside_after(run_dir: &Path, step: u64) -> Result<Option<PathBuf>> {
    let later: Vec<PathBuf> = list_checkpoints(run_dir)?
        .into_iter()
        .filter(|(s, _)| *s > step)
        .map(|(_, p)| p)
        .collect();
    if later.is_empty() {
        return Ok(None);
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside =
        checkpoints_dir(run_dir).join(format!("superseded-after-{}-{secs}", step_dir_name(step)));
    std::fs::create_dir_all(&aside).map_err(io_err(&aside))?;
    for dir in later {
        let name = dir.file_name().map(PathBuf::from).unwrap_or_default();
        std::fs::rename(&dir, aside.join(name)).map_err(io_err(&dir))?;
    }
    Ok(Some(aside))
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
    /// Starts the checkpoint of `step` in `run_dir` (removing what killed writers left behind).
    pub fn begin(run_dir: &Path, step: u64) -> Result<Self> {
        let parent = checkpoints_dir(run_dir);
        std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        remove_abandoned(&parent)?;
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

    /// Flushes the files to the disk, moves the complete checkpoint into place and returns its
    /// directory.
    pub fn commit(self) -> Result<PathBuf> {
        for entry in std::fs::read_dir(&self.tmp).map_err(io_err(&self.tmp))? {
            let path = entry.map_err(io_err(&self.tmp))?.path();
            if path.is_file() {
                sync_file(&path)?;
            }
        }
        sync_dir(&self.tmp)?;
        if self.dest.exists() {
            // Same step written again (e.g. after a resume): swap, then drop the old one.
            let old = self.dest.with_extension("old");
            std::fs::rename(&self.dest, &old).map_err(io_err(&self.dest))?;
            std::fs::rename(&self.tmp, &self.dest).map_err(io_err(&self.dest))?;
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        } else {
            std::fs::rename(&self.tmp, &self.dest).map_err(io_err(&self.dest))?;
        }
        if let Some(parent) = self.dest.parent() {
            sync_dir(parent)?;
        }
        Ok(self.dest.clone())
    }

    /// Removes the unfinished temporary directory.
    pub fn abort(self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// Whether process `pid` runs on this machine.
pub(crate) fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists() || !Path::new("/proc/self").exists()
}

/// Removes `step-*.tmp-PID` directories under `dir` whose writer process is gone (a write that
/// was killed); those of a live process are left alone.
fn remove_abandoned(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .rsplit_once(".tmp-")
            .and_then(|(_, p)| p.parse::<u32>().ok());
        if pid.is_some_and(|p| p != std::process::id() && !process_alive(p)) {
            std::fs::remove_dir_all(entry.path()).map_err(io_err(&entry.path()))?;
        }
    }
    Ok(())
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
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: path.clone(),
        problem: format!("unreadable trainer state ({e})"),
    })?;
    // A checksum names a file of the checkpoint, never a path elsewhere.
    let sharded_optimizer = |f: &str| {
        f.strip_prefix("optimizer-rank")
            .and_then(|f| f.strip_suffix(".safetensors"))
            .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
    };
    // A ZeRO-3 checkpoint's model shards: `model-00001-of-00002.safetensors`.
    let model_shard = |f: &str| {
        f.strip_prefix("model-")
            .and_then(|f| f.strip_suffix(".safetensors"))
            .and_then(|f| f.split_once("-of-"))
            .is_some_and(|(i, n)| {
                [i, n]
                    .iter()
                    .all(|s| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit()))
            })
    };
    let foreign = |f: &&String| {
        !CHECKSUMMED.contains(&f.as_str()) && !sharded_optimizer(f) && !model_shard(f)
    };
    if let Some(file) = state.checksums.keys().find(foreign) {
        return Err(TrainError::Checkpoint {
            path,
            problem: format!(
                "a checksum for {file:?}, which is not a checkpoint file (those are {}, optimizer-rankN.safetensors and model-0000I-of-0000N.safetensors): damaged",
                CHECKSUMMED.join(", ")
            ),
        });
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `state.json` lists checksums of the checkpoint's own files only (a ZeRO shard's
    /// `optimizer-rankN.safetensors` included), never of a path elsewhere.
    #[test]
    fn checksums_name_only_files_of_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let sum = FileSum { crc32: 0, len: 0 };
        for (file, accepted) in [
            ("model.safetensors", true),
            ("optimizer-rank12.safetensors", true),
            ("optimizer-rank.safetensors", false),
            ("model-00002-of-00003.safetensors", true),
            ("model.safetensors.index.json", true),
            ("model-2-of-3.safetensors", false),
            ("model-00002-of-00003.safetensors/../x", false),
            ("../../etc/passwd", false),
            ("/etc/passwd", false),
        ] {
            let mut state = TrainerState::fresh(1);
            state.checksums.insert(file.into(), sum);
            std::fs::write(
                dir.path().join("state.json"),
                serde_json::to_vec(&state).unwrap(),
            )
            .unwrap();
            let read = read_state(dir.path());
            assert_eq!(read.is_ok(), accepted, "{file}: {read:?}");
            if let Err(e) = read {
                assert!(e.to_string().contains("not a checkpoint file"), "{e}");
            }
        }
    }
}
