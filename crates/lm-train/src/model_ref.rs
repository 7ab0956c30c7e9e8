//! The one grammar of model references: every command that takes a model (`eval`, `sample`,
//! `predict`, `score`, `embed`, `train --resume`, a fine-tuning run's `init`, `tokenizer_file`)
//! resolves its argument here, to a run directory, one of a run's checkpoints, or a HuggingFace
//! directory — given as a path, or as a hub id (`org/name`, `org/name@revision`) found in the
//! local Hugging Face cache. Nothing is ever downloaded.

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
    /// A HuggingFace directory (`config.json` and `model.safetensors`, or the sharded layout's
    /// `model.safetensors.index.json` and the files it names) outside any run.
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
        if path.join("config.json").is_file() && lm_models::weights::present(path) {
            return Ok(Self::Hf(path.to_path_buf()));
        }
        if !path.exists() {
            if let Some((id, revision)) = path.to_str().and_then(hub_id) {
                return hub_snapshot(id, revision).map(Self::Hf).map_err(|looked| {
                    TrainError::Checkpoint {
                        path: path.into(),
                        problem: format!(
                            "does not exist, and no model {id:?} (revision {}) is in the Hugging Face cache ({looked}); a model is a run directory, one of its checkpoints, a HuggingFace directory, or a hub id fetched beforehand with `huggingface-cli download {id}`",
                            revision.unwrap_or("main")
                        ),
                    }
                });
            }
        }
        let problem = if path.exists() {
            "is not a model: expected a run directory (config.toml, checkpoints/), one of its \
             checkpoints (RUN/checkpoints/step-N) or a HuggingFace directory (config.json, \
             model.safetensors)"
        } else {
            "does not exist (a model is a run directory, one of its checkpoints, a \
             HuggingFace directory or a hub id)"
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

/// A `tokenizer_file` value: a `tokenizer.json` file, a directory holding one (a run, a
/// checkpoint, a HuggingFace directory) or a hub id whose snapshot holds one.
pub fn tokenizer_path(value: &str) -> Result<PathBuf> {
    let path = Path::new(value);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    ModelRef::parse(path)?.tokenizer_file()
}

/// The Hugging Face hub cache, where huggingface_hub looks: `HF_HUB_CACHE`, else
/// `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/huggingface/hub")))
}

/// `name`, `org/name`, optionally `@revision`: the hub's repository id grammar (letters,
/// digits, `-`, `_`, `.`; no `..`, nothing that starts like a path).
fn hub_id(s: &str) -> Option<(&str, Option<&str>)> {
    let (id, revision) = match s.split_once('@') {
        Some((id, rev)) if !rev.is_empty() && !rev.contains("..") => (id, Some(rev)),
        Some(_) => return None,
        None => (s, None),
    };
    let part_ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && !p.contains("..")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let parts: Vec<&str> = id.split('/').collect();
    (parts.len() <= 2 && parts.iter().all(|p| part_ok(p))).then_some((id, revision))
}

/// The snapshot directory of hub model `id` at `revision` (a branch or tag under `refs/`, as
/// huggingface_hub lays the cache out), through hf-hub's cache reader; the error says where it
/// looked.
fn hub_snapshot(id: &str, revision: Option<&str>) -> std::result::Result<PathBuf, String> {
    let Some(root) = hub_cache_dir() else {
        return Err("no HF_HUB_CACHE, HF_HOME or HOME to find it in".into());
    };
    let repo = match revision {
        Some(r) => hf_hub::Repo::with_revision(id.into(), hf_hub::RepoType::Model, r.into()),
        None => hf_hub::Repo::model(id.into()),
    };
    let looked = root.join(repo.folder_name());
    hf_hub::Cache::new(root)
        .repo(repo)
        .get("config.json")
        .and_then(|config| config.parent().map(Path::to_path_buf))
        .ok_or_else(|| format!("looked for {}", looked.display()))
}

#[cfg(test)]
mod tests {
    use super::hub_id;

    #[test]
    fn hub_ids_are_told_from_paths() {
        assert_eq!(hub_id("gpt2"), Some(("gpt2", None)));
        assert_eq!(
            hub_id("sentence-transformers/all-MiniLM-L6-v2"),
            Some(("sentence-transformers/all-MiniLM-L6-v2", None))
        );
        assert_eq!(hub_id("org/name@v1.0"), Some(("org/name", Some("v1.0"))));
        for path in [
            "./x",
            "../x",
            "/abs/x",
            "a/b/c",
            "a/../b",
            "",
            "org/na me",
            "x@",
            "x@../y",
        ] {
            assert_eq!(hub_id(path), None, "{path}");
        }
    }
}
