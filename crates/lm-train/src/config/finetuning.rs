//! `[finetune]`: a fine-tuning run's configuration and its recipes.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{
    config_err, parse_missing_last, recipe_text, written_optim, Freeze, OptimSection, TaskKind,
    TrainSection,
};
use crate::error::{io_err, Result};

/// A fine-tuning run's configuration: a pretrained checkpoint adapted to a labelled task, trained
/// by the same loop as pretraining (`[optim]` and `[train]` are the same sections).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Task, starting point and options.
    pub finetune: FinetuneSection,
    /// Optimizer and schedule (AdamW with warmup and linear decay is the usual choice).
    pub optim: OptimSection,
    /// Loop, evaluation and checkpoints.
    pub train: TrainSection,
}

/// `[finetune]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneSection {
    /// The task.
    pub task: TaskKind,
    /// The pretrained model: a run directory (its newest checkpoint), a checkpoint directory, or a
    /// HuggingFace directory with `tokenizer.json`.
    pub init: String,
    /// Keep the architecture and tokenizer of `init` but start from random weights (the baseline).
    #[serde(default)]
    pub scratch: bool,
    /// Training examples (JSONL) for task = "jsonl".
    #[serde(default)]
    pub train_file: Option<String>,
    /// Validation JSONL.
    #[serde(default)]
    pub val_file: Option<String>,
    /// Test JSONL.
    #[serde(default)]
    pub test_file: Option<String>,
    /// Generated training examples.
    #[serde(default = "d_train")]
    pub train_examples: usize,
    /// Generated validation examples.
    #[serde(default = "d_val")]
    pub val_examples: usize,
    /// Generated test examples.
    #[serde(default = "d_test")]
    pub test_examples: usize,
    /// Which pretrained weights stay fixed.
    #[serde(default = "d_freeze")]
    pub freeze: Freeze,
    /// Learning-rate multiplier of the new head relative to the body.
    #[serde(default = "d_one")]
    pub head_lr_scale: f64,
    /// Longest input in tokens.
    #[serde(default = "d_len")]
    pub max_len: usize,
    /// Longest target in tokens.
    #[serde(default = "d_tlen")]
    pub max_target_len: usize,
}

fn d_train() -> usize {
    2000
}
fn d_val() -> usize {
    100
}
fn d_test() -> usize {
    200
}
fn d_freeze() -> Freeze {
    Freeze::None
}
fn d_one() -> f64 {
    1.0
}
fn d_len() -> usize {
    64
}
fn d_tlen() -> usize {
    40
}

/// The fine-tuning recipes shipped with the project.
pub const FINETUNE_RECIPES: &[(&str, &str)] = &[
    (
        "bert-finetune-pairs",
        include_str!("../../../../recipes/bert-finetune-pairs.toml"),
    ),
    (
        "t5-table-to-text",
        include_str!("../../../../recipes/t5-table-to-text.toml"),
    ),
    (
        "bart-table-to-text",
        include_str!("../../../../recipes/bart-table-to-text.toml"),
    ),
    (
        "gpt-table-to-text",
        include_str!("../../../../recipes/gpt-table-to-text.toml"),
    ),
    (
        "minilm-finetune-pairs",
        include_str!("../../../../recipes/minilm-finetune-pairs.toml"),
    ),
];

impl FinetuneConfig {
    /// Parses and validates a TOML config; `source` names it in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Self> {
        const FINETUNE_REQUIRED: &[(&str, &[&str])] = &[
            ("finetune", &["task", "init"]),
            ("optim", &["lr"]),
            ("train", &["batch_size", "max_iters", "eval_interval"]),
        ];
        let mut cfg: Self = parse_missing_last(text, source, FINETUNE_REQUIRED)?;
        cfg.optim.fill_from_preset(&written_optim(text), source)?;
        cfg.validate(source)?;
        Ok(cfg)
    }

    /// A bundled fine-tuning recipe.
    pub fn recipe(name: &str) -> Result<Self> {
        Self::from_toml(
            recipe_text(FINETUNE_RECIPES, name)?,
            &format!("recipe {name}"),
        )
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_toml(
            &std::fs::read_to_string(path).map_err(io_err(path))?,
            &path.display().to_string(),
        )
    }

    /// Checks values that parse but cannot work, naming the key.
    pub fn validate(&self, source: &str) -> Result<()> {
        let err = |key: &str, problem: String| Err(config_err(source, key, problem));
        let f = &self.finetune;
        if f.task == TaskKind::Jsonl
            && (f.train_file.is_none() || f.val_file.is_none() || f.test_file.is_none())
        {
            return err(
                "finetune.train_file",
                "task \"jsonl\" needs train_file, val_file and test_file".into(),
            );
        }
        if f.max_len < 4 {
            return err(
                "finetune.max_len",
                format!(
                    "{} leaves no room for text beside the special tokens; use ≥ 4",
                    f.max_len
                ),
            );
        }
        if f.max_target_len < 2 {
            return err(
                "finetune.max_target_len",
                format!(
                    "{} leaves no room for a target before its end token; use ≥ 2",
                    f.max_target_len
                ),
            );
        }
        if !(f.head_lr_scale.is_finite() && f.head_lr_scale >= 0.0) {
            return err(
                "finetune.head_lr_scale",
                format!("{} must be finite and ≥ 0", f.head_lr_scale),
            );
        }
        self.optim.validate(self.train.max_iters, source)?;
        self.train.validate(source)
    }

    /// The config as TOML, as saved in a run directory.
    pub fn to_toml(&self) -> String {
        // INVARIANT: a config of numbers, strings, enums and tables always serializes to TOML.
        toml::to_string_pretty(self).expect("a config serializes")
    }
}
