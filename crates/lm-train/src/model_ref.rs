//! The one grammar of model references: every command that takes a model (`eval`, `sample`,
//! `predict`, `score`, `embed`, `train --resume`, a fine-tuning run's `init`) resolves its
//! argument here, to a run directory, one of a run's checkpoints, or a HuggingFace directory.

use std::path::{Path, PathBuf};

use crate::checkpoint;
use crate::error::{Result, TrainError};

/// What a model argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// A run directory (`config.toml`, `checkpoints/`): its newest checkpoint.
    Run(PathBuf),
    /// One of a run's checkpoints (`RUN/checkpoints/step-N`).
    Checkpoint {
        /// The run it belongs to.
        run: PathBuf,
        /// The checkpoint directory.
        checkpoint: PathBuf,
    },
    /// A HuggingFace directory (`config.json` and `model.safetensors`) outside any run.
    Hf(PathBuf),
}

impl ModelRef {
    /// Classifies `path`; an error names it and the three forms a model reference takes.
    pub fn parse(path: &Path) -> Result<Self> {
        if let Some((run, checkpoint)) = checkpoint::checkpoint_of_run(path)? {
            return Ok(Self::Checkpoint { run, checkpoint });
        }
        if path.join("config.toml").is_file() {
            return Ok(Self::Run(path.to_path_buf()));
        }
        if path.join("config.json").is_file() && path.join("model.safetensors").is_file() {
            return Ok(Self::Hf(path.to_path_buf()));
        }
        let problem = if path.exists() {
            "is not a model: expected a run directory (config.toml, checkpoints/), one of its \
             checkpoints (RUN/checkpoints/step-N) or a HuggingFace directory (config.json, \
             model.safetensors)"
        } else {
            "does not exist (a model is a run directory, one of its checkpoints, or a \
             HuggingFace directory)"
        };
        Err(TrainError::Checkpoint {
            path: path.into(),
            problem: problem.into(),
        })
    }

    /// The directory holding the weights (`model.safetensors`, `config.json`): a run's newest
    /// checkpoint, the checkpoint, or the HuggingFace directory.
    pub fn weights_dir(&self) -> Result<PathBuf> {
        match self {
            Self::Run(run) => checkpoint::latest_checkpoint(run),
            Self::Checkpoint { checkpoint, .. } => Ok(checkpoint.clone()),
            Self::Hf(dir) => Ok(dir.clone()),
        }
    }

    /// The run directory, for a run or one of its checkpoints.
    pub fn run(&self) -> Option<&Path> {
        match self {
            Self::Run(run) | Self::Checkpoint { run, .. } => Some(run),
            Self::Hf(_) => None,
        }
    }

    /// The `tokenizer.json` that goes with the weights: the checkpoint's own, else the run's.
    pub fn tokenizer_file(&self) -> Result<PathBuf> {
        let dir = self.weights_dir()?;
        let own = dir.join("tokenizer.json");
        match self.run() {
            Some(run) if !own.is_file() => Ok(run.join("tokenizer.json")),
            _ => Ok(own),
        }
    }
}
