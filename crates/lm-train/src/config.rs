//! Training configuration: a TOML file (or an embedded recipe) with every hyperparameter visible.
//! Unknown keys and wrong types are refused with the key's name.

use std::path::Path;

use lm_optim::presets::{Preset, UpdateRule};
use lm_optim::{AdaFactorConfig, AdaFactorLr, AdamConfig, Schedule, SgdConfig};
use serde::{Deserialize, Serialize};

pub use crate::choices::{
    Family, Freeze, Infilling, MlmSelection, NonFinitePolicy, ObjectiveKind, OptimizerKind,
    Precision, ScheduleKind, ScheduleUnit, T5FeedForward, TaskKind, TokenizerKind,
};
use crate::error::{io_err, Result, TrainError};

/// The whole configuration of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The model.
    pub model: ModelSection,
    /// Corpus and tokenizer.
    pub data: DataSection,
    /// Objective options.
    #[serde(default)]
    pub objective: ObjectiveSection,
    /// Optimizer and learning-rate schedule.
    pub optim: OptimSection,
    /// Loop, evaluation and checkpoints.
    pub train: TrainSection,
}

/// `[model]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Architecture family.
    pub family: Family,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Model width.
    pub n_embd: usize,
    /// Context length of training examples (and of the learned positions).
    pub block_size: usize,
    /// Dropout rate.
    #[serde(default)]
    pub dropout: f64,
    /// Feed-forward width (default 4·n_embd).
    #[serde(default)]
    pub d_ff: Option<usize>,
    /// T5's feed-forward (default relu, v1.0).
    #[serde(default)]
    pub t5_feed_forward: Option<T5FeedForward>,
}

/// `[data]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// A text file, or `builtin:tinyshakespeare` for the bundled corpus.
    #[serde(default = "default_corpus")]
    pub corpus: String,
    /// Tokenizer, trained on the training split (unless `tokenizer_file` is given).
    #[serde(default = "default_tokenizer")]
    pub tokenizer: TokenizerKind,
    /// Vocabulary size of a trained tokenizer (default 2000); with `tokenizer_file`, the size the
    /// file must have.
    #[serde(default)]
    pub vocab_size: Option<usize>,
    /// An existing `tokenizer.json` to use instead of training one.
    #[serde(default)]
    pub tokenizer_file: Option<String>,
    /// Fraction of the token stream held out at its end for validation.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
}

/// `[objective]`: options of the family's pretraining objective (lm-objectives' defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveSection {
    /// The objective (default: the family's own, [`Family::default_objective`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ObjectiveKind>,
    /// MLM: fraction of tokens selected.
    #[serde(default = "default_mlm_rate")]
    pub mlm_rate: f64,
    /// MLM: exact count or Bernoulli per token.
    #[serde(default = "default_selection")]
    pub mlm_selection: MlmSelection,
    /// BERT: add next sentence prediction.
    #[serde(default = "yes")]
    pub nsp: bool,
    /// T5: noise density.
    #[serde(default = "default_density")]
    pub noise_density: f64,
    /// T5: mean noise span length.
    #[serde(default = "default_span")]
    pub mean_span_length: f64,
    /// BART: fraction of tokens infilled.
    #[serde(default = "default_mask_ratio")]
    pub mask_ratio: f64,
    /// BART: Poisson λ of span lengths.
    #[serde(default = "default_lambda")]
    pub poisson_lambda: f64,
    /// BART: shuffle sentences.
    #[serde(default = "yes")]
    pub permute_sentences: bool,
    /// BART: where infilling puts its spans.
    #[serde(default = "default_infilling")]
    pub infilling: Infilling,
}

impl Default for ObjectiveSection {
    fn default() -> Self {
        // INVARIANT: every key of the section has a serde default, so the empty table parses.
        toml::from_str("").expect("every key has a default")
    }
}

/// `[optim]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    /// Update rule.
    #[serde(default = "default_optimizer")]
    pub name: OptimizerKind,
    /// Schedule after warmup.
    #[serde(default = "default_schedule")]
    pub schedule: ScheduleKind,
    /// Position the schedule counts (with `"tokens"`, `warmup_tokens` and `decay_tokens` give its
    /// phases).
    #[serde(default = "default_unit")]
    pub schedule_unit: ScheduleUnit,
    /// Warmup length in tokens (schedule_unit = "tokens").
    #[serde(default)]
    pub warmup_tokens: Option<f64>,
    /// End of the decay in tokens (schedule_unit = "tokens").
    #[serde(default)]
    pub decay_tokens: Option<f64>,
    /// SGD momentum.
    #[serde(default)]
    pub momentum: f64,
    /// Peak learning rate.
    pub lr: f64,
    /// Floor of the cosine decay.
    #[serde(default)]
    pub min_lr: f64,
    /// Steps of linear warmup from 0.
    #[serde(default)]
    pub warmup_iters: u64,
    /// Step at which the cosine reaches `min_lr` (defaults to `train.max_iters`).
    #[serde(default)]
    pub lr_decay_iters: Option<u64>,
    /// β1.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// β2.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// ε.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Weight decay λ on 2-D parameters (matrices and embeddings).
    #[serde(default)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0 disables clipping).
    #[serde(default)]
    pub grad_clip: f64,
    /// AdaFactor: scale each update by the parameter's RMS (Mesh TensorFlow's
    /// `multiply_by_parameter_scale`; T5's pretraining). Fine-tuning usually turns it off.
    #[serde(default = "yes")]
    pub scale_parameter: bool,
}

/// `[train]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before each optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Optimizer steps in the run.
    pub max_iters: u64,
    /// Evaluate (and checkpoint) every this many steps, and at the end.
    pub eval_interval: u64,
    /// Batches per evaluation loss estimate.
    #[serde(default = "twenty")]
    pub eval_iters: usize,
    /// Write a metrics line every this many steps.
    #[serde(default = "ten")]
    pub log_interval: u64,
    /// Seed of initialization, batch sampling and dropout.
    #[serde(default)]
    pub seed: u64,
    /// Checkpoints kept besides the best one.
    #[serde(default = "three")]
    pub keep_checkpoints: usize,
    /// Characters sampled from the model at the end (0: none).
    #[serde(default)]
    pub sample_tokens: usize,
    /// What a NaN or infinite loss does.
    #[serde(default = "default_on_nonfinite")]
    pub on_nonfinite_loss: NonFinitePolicy,
    /// Stop when the validation loss has not improved for this many evaluations (0: never).
    #[serde(default)]
    pub early_stopping_patience: usize,
    /// Grow the batch from this many sequences to `batch_size` over `batch_ramp_tokens` (GPT-3).
    #[serde(default)]
    pub batch_ramp_start: Option<usize>,
    /// Tokens over which the batch grows.
    #[serde(default)]
    pub batch_ramp_tokens: f64,
    /// Peak FLOP/s that MFU is measured against (default: fp32 matmul peak of a 2-core Zen 5
    /// machine, 250 GFLOP/s).
    #[serde(default = "default_peak_flops")]
    pub peak_flops: f64,
    /// Matrix products of linear layers and attention.
    #[serde(default = "default_matmul_precision")]
    pub matmul_precision: Precision,
    /// With `matmul_precision = "f16"`: the loss scale of the first step (dynamic loss scaling
    /// halves it after an overflow and doubles it after `loss_scale_growth_interval` good steps).
    #[serde(default = "default_loss_scale_init")]
    pub loss_scale_init: f64,
    /// With `matmul_precision = "f16"`: good steps in a row before the loss scale doubles.
    #[serde(default = "default_loss_scale_growth_interval")]
    pub loss_scale_growth_interval: u64,
    /// Data parallelism: shard the optimizer state over the ranks (ZeRO stage 1): each rank
    /// keeps and updates the state of its share of the parameters, then sends them to the others.
    #[serde(default)]
    pub shard_optimizer_state: bool,
}

fn default_matmul_precision() -> Precision {
    Precision::Auto
}
/// PyTorch `GradScaler`'s defaults.
fn default_loss_scale_init() -> f64 {
    65536.0
}
fn default_loss_scale_growth_interval() -> u64 {
    2000
}

fn default_corpus() -> String {
    crate::data::BUILTIN_SHAKESPEARE.into()
}
fn default_tokenizer() -> TokenizerKind {
    TokenizerKind::Char
}
fn default_val_fraction() -> f64 {
    0.1
}
fn default_optimizer() -> OptimizerKind {
    OptimizerKind::Adamw
}
fn default_schedule() -> ScheduleKind {
    ScheduleKind::Cosine
}
fn default_unit() -> ScheduleUnit {
    ScheduleUnit::Steps
}
fn default_mlm_rate() -> f64 {
    0.15
}
fn default_selection() -> MlmSelection {
    MlmSelection::Exact
}
fn default_density() -> f64 {
    0.15
}
fn default_span() -> f64 {
    3.0
}
fn default_mask_ratio() -> f64 {
    0.3
}
fn default_infilling() -> Infilling {
    Infilling::Fairseq
}
fn default_lambda() -> f64 {
    3.0
}
fn yes() -> bool {
    true
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_on_nonfinite() -> NonFinitePolicy {
    NonFinitePolicy::Stop
}
fn default_peak_flops() -> f64 {
    250e9
}
fn one() -> usize {
    1
}
fn three() -> usize {
    3
}
fn ten() -> u64 {
    10
}
fn twenty() -> usize {
    20
}

/// The recipes shipped with the project, by name.
pub const RECIPES: &[(&str, &str)] = &[
    (
        "gpt-shakespeare-char",
        include_str!("../../../recipes/gpt-shakespeare-char.toml"),
    ),
    (
        "gpt-shakespeare-bpe",
        include_str!("../../../recipes/gpt-shakespeare-bpe.toml"),
    ),
    (
        "bert-mlm-nsp",
        include_str!("../../../recipes/bert-mlm-nsp.toml"),
    ),
    (
        "roberta-mlm",
        include_str!("../../../recipes/roberta-mlm.toml"),
    ),
    (
        "t5-span-corruption",
        include_str!("../../../recipes/t5-span-corruption.toml"),
    ),
    (
        "bart-denoising",
        include_str!("../../../recipes/bart-denoising.toml"),
    ),
];

/// Parses TOML into `T`. A syntax error, unknown key, unknown value or wrong type is a
/// [`TrainError::Config`] naming `source`, the key's dotted path (`model.family`), its line and
/// column, and what was expected (for a closed set: the allowed values).
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, source: &str) -> Result<T> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = inner
            .span()
            .map(|s| {
                let before = &text[..s.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
                format!(" (line {line}, column {col})")
            })
            .unwrap_or_default();
        let hint = if path == "data.tokenizer" {
            " (a tokenizer.json file goes in data.tokenizer_file)"
        } else {
            ""
        };
        TrainError::Config {
            source_name: source.into(),
            key: if path == "." {
                "(document)".into()
            } else {
                path
            },
            problem: format!("{}{at}{hint}", inner.message().trim()),
        }
    })
}

/// The text of recipe `name` in `recipes`, or an error listing the ones that exist.
pub(crate) fn recipe_text(recipes: &[(&str, &'static str)], name: &str) -> Result<&'static str> {
    recipes
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| TrainError::UnknownRecipe {
            name: name.into(),
            available: recipes
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The keys without a default, by section: a config missing any of them is refused with all of
/// them named at once.
const REQUIRED: &[(&str, &[&str])] = &[
    (
        "model",
        &["family", "n_layer", "n_head", "n_embd", "block_size"],
    ),
    ("optim", &["lr"]),
    ("train", &["batch_size", "max_iters", "eval_interval"]),
];

/// Every required key `text` lacks (after a successful TOML parse), as `section.key`.
fn missing_required(text: &str, required: &[(&str, &[&str])]) -> Vec<String> {
    let Ok(doc) = toml::from_str::<toml::Table>(text) else {
        return vec![];
    };
    required
        .iter()
        .flat_map(|(section, keys)| {
            let table = doc.get(*section).and_then(|v| v.as_table());
            keys.iter()
                .filter(move |k| table.is_none_or(|t| !t.contains_key(**k)))
                .map(move |k| format!("{section}.{k}"))
        })
        .collect()
}

impl TrainConfig {
    /// Parses and validates a TOML text; `source_name` (a path or recipe) appears in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<Self> {
        let missing = missing_required(text, REQUIRED);
        if !missing.is_empty() {
            return Err(config_err(
                source_name,
                &missing.join(", "),
                "missing: these keys have no default (docs/config.md lists every key)".into(),
            ));
        }
        let cfg: Self = parse_toml(text, source_name)?;
        cfg.validate(source_name)?;
        Ok(cfg)
    }

    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// An embedded recipe by name.
    pub fn recipe(name: &str) -> Result<Self> {
        Self::from_toml(recipe_text(RECIPES, name)?, &format!("recipe {name}"))
    }

    /// The step at which the learning rate reaches its floor.
    pub fn lr_decay_iters(&self) -> u64 {
        self.optim.lr_decay_iters(self.train.max_iters)
    }

    /// Checks values that parse but cannot work, naming the key and a fix.
    pub fn validate(&self, source_name: &str) -> Result<()> {
        let err = |key: &str, problem: String| {
            Err(TrainError::Config {
                source_name: source_name.into(),
                key: key.into(),
                problem,
            })
        };
        let m = &self.model;
        if m.n_head == 0 || !m.n_embd.is_multiple_of(m.n_head) {
            return err(
                "model.n_embd",
                format!(
                    "n_embd = {} is not divisible by n_head = {}; pick n_embd a multiple of n_head",
                    m.n_embd, m.n_head
                ),
            );
        }
        if m.n_layer == 0 || m.block_size == 0 {
            return err(
                "model.n_layer",
                "n_layer and block_size must be positive".into(),
            );
        }
        if !(0.0..1.0).contains(&m.dropout) {
            return err("model.dropout", format!("{} is not in [0, 1)", m.dropout));
        }
        // With a tokenizer file, its own kind counts (checked when the file is read).
        if self.data.tokenizer == TokenizerKind::Char
            && self.data.tokenizer_file.is_none()
            && m.family != Family::Gpt
        {
            return err("data.tokenizer", format!("the {} family needs special tokens; use a trained tokenizer (\"bpe\", \"wordpiece\" or \"unigram\")", m.family));
        }
        if !(self.data.val_fraction > 0.0 && self.data.val_fraction < 1.0) {
            return err(
                "data.val_fraction",
                format!("{} is not in (0, 1)", self.data.val_fraction),
            );
        }
        let ob = &self.objective;
        if !self.objective_kind().fits(m.family) {
            return err(
                "objective.kind",
                format!(
                    "{:?} does not train the {} family (it fits: {})",
                    self.objective_kind().as_str(),
                    m.family,
                    ObjectiveKind::ALL
                        .iter()
                        .filter(|k| k.parse::<ObjectiveKind>().is_ok_and(|k| k.fits(m.family)))
                        .map(|k| format!("{k:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        if !(0.0 < ob.mlm_rate
            && ob.mlm_rate < 1.0
            && 0.0 < ob.noise_density
            && ob.noise_density < 1.0)
        {
            return err(
                "objective",
                "mlm_rate and noise_density must be in (0, 1)".into(),
            );
        }
        if ob.poisson_lambda <= 0.0
            || !(0.0..1.0).contains(&ob.mask_ratio)
            || ob.mean_span_length < 1.0
        {
            return err(
                "objective",
                "need poisson_lambda > 0, mask_ratio in [0, 1) and mean_span_length ≥ 1".into(),
            );
        }
        self.optim.validate(self.train.max_iters, source_name)?;
        self.train.validate(source_name)?;
        self.check_memory(source_name)
    }

    /// The objective this run trains: `objective.kind`, or the family's default.
    pub fn objective_kind(&self) -> ObjectiveKind {
        self.objective
            .kind
            .unwrap_or_else(|| self.model.family.default_objective())
    }

    /// Training memory in bytes, estimated before anything is allocated: parameters ×
    /// 16 bytes (f32 weights, gradients and two Adam moments) and activations kept for the
    /// backward pass, ≈ batch · block · layers · (34·d + 5·heads·block) · 4 bytes (Korthikanti et
    /// al. 2022's count, in f32). Returns (parameters, parameter bytes, activation bytes), in f64
    /// so that absurd sizes cannot overflow.
    pub fn memory_estimate(&self) -> (f64, f64, f64) {
        let m = &self.model;
        let (d, layers, block) = (m.n_embd as f64, m.n_layer as f64, m.block_size as f64);
        let d_ff = m.d_ff.map_or(4.0 * d, |f| f as f64);
        let vocab = self.data.vocab_size.unwrap_or(2000) as f64;
        let per_layer = 4.0 * d * d + 2.0 * d * d_ff;
        // Encoder-decoders: a decoder stack with cross-attention beside the encoder.
        let stacks = match m.family {
            Family::Bart | Family::T5 => 2.0 * per_layer + 4.0 * d * d,
            _ => per_layer,
        };
        let params = vocab * d + block * d + layers * stacks;
        let batch = (self.train.batch_size * self.train.grad_accum.max(1)) as f64;
        let acts = batch * block * layers * (34.0 * d + 5.0 * m.n_head as f64 * block) * 4.0;
        (params, params * 16.0, acts)
    }

    /// Refuses a model whose estimated training memory exceeds what the machine has available.
    fn check_memory(&self, source_name: &str) -> Result<()> {
        let (params, param_bytes, act_bytes) = self.memory_estimate();
        let available = available_memory_bytes();
        let need = param_bytes + act_bytes;
        if need.is_finite() && need <= available {
            return Ok(());
        }
        let gib = |b: f64| b / f64::from(1u32 << 30);
        // Blame the size furthest above the bundled GPT recipe's (4 layers, width 128, context
        // 64, batch 12).
        let m = &self.model;
        let key = [
            ("model.n_layer", m.n_layer as f64 / 4.0),
            ("model.n_embd", m.n_embd as f64 / 128.0),
            ("model.block_size", m.block_size as f64 / 64.0),
            ("train.batch_size", self.train.batch_size as f64 / 12.0),
        ]
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or("model", |k| k.0);
        Err(config_err(
            source_name,
            key,
            format!(
                "training this model needs about {:.3e} GiB ({params:.3e} parameters: {:.3e} GiB of weights, gradients and Adam moments; {:.3e} GiB of activations) but {:.1} GiB are available; make n_layer, n_embd, block_size or batch_size smaller",
                gib(need),
                gib(param_bytes),
                gib(act_bytes),
                gib(available)
            ),
        ))
    }

    /// The config as TOML, as saved in a run directory.
    pub fn to_toml(&self) -> String {
        // INVARIANT: a config of numbers, strings, enums and tables always serializes to TOML.
        toml::to_string_pretty(self).expect("a config serializes")
    }
}

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
        include_str!("../../../recipes/bert-finetune-pairs.toml"),
    ),
    (
        "t5-table-to-text",
        include_str!("../../../recipes/t5-table-to-text.toml"),
    ),
    (
        "bart-table-to-text",
        include_str!("../../../recipes/bart-table-to-text.toml"),
    ),
    (
        "gpt-table-to-text",
        include_str!("../../../recipes/gpt-table-to-text.toml"),
    ),
    (
        "minilm-finetune-pairs",
        include_str!("../../../recipes/minilm-finetune-pairs.toml"),
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
        let missing = missing_required(text, FINETUNE_REQUIRED);
        if !missing.is_empty() {
            return Err(config_err(
                source,
                &missing.join(", "),
                "missing: these keys have no default (docs/config.md lists every key)".into(),
            ));
        }
        let cfg: Self = parse_toml(text, source)?;
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

/// The configuration of any run: pretraining (`[model]`, `[data]`, `[objective]`) or fine-tuning
/// (`[finetune]`), both with `[optim]` and `[train]`.
#[derive(Debug, Clone, PartialEq)]
pub enum RunConfig {
    /// Pretraining from random weights on a corpus.
    Pretrain(TrainConfig),
    /// Fine-tuning a checkpoint on a task.
    Finetune(FinetuneConfig),
}

impl RunConfig {
    /// Parses either kind: a document with a `[finetune]` table is a fine-tuning config.
    pub fn from_toml(text: &str, source: &str) -> Result<Self> {
        let table: toml::Table = parse_toml(text, source)?;
        Ok(if table.contains_key("finetune") {
            Self::Finetune(FinetuneConfig::from_toml(text, source)?)
        } else {
            Self::Pretrain(TrainConfig::from_toml(text, source)?)
        })
    }

    /// Reads a TOML file of either kind.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_toml(
            &std::fs::read_to_string(path).map_err(io_err(path))?,
            &path.display().to_string(),
        )
    }

    /// A bundled recipe of either kind.
    pub fn recipe(name: &str) -> Result<Self> {
        if let Ok(text) = recipe_text(FINETUNE_RECIPES, name) {
            return Ok(Self::Finetune(FinetuneConfig::from_toml(
                text,
                &format!("recipe {name}"),
            )?));
        }
        let all: Vec<(&str, &'static str)> =
            RECIPES.iter().chain(FINETUNE_RECIPES).copied().collect();
        Ok(Self::Pretrain(TrainConfig::from_toml(
            recipe_text(&all, name)?,
            &format!("recipe {name}"),
        )?))
    }

    /// `[optim]`.
    pub fn optim(&self) -> &OptimSection {
        match self {
            Self::Pretrain(c) => &c.optim,
            Self::Finetune(c) => &c.optim,
        }
    }

    /// `[train]`.
    pub fn train(&self) -> &TrainSection {
        match self {
            Self::Pretrain(c) => &c.train,
            Self::Finetune(c) => &c.train,
        }
    }

    /// `[optim]`, to change.
    pub fn optim_mut(&mut self) -> &mut OptimSection {
        match self {
            Self::Pretrain(c) => &mut c.optim,
            Self::Finetune(c) => &mut c.optim,
        }
    }

    /// `[train]`, to change.
    pub fn train_mut(&mut self) -> &mut TrainSection {
        match self {
            Self::Pretrain(c) => &mut c.train,
            Self::Finetune(c) => &mut c.train,
        }
    }

    /// The config as TOML, as saved in a run directory.
    pub fn to_toml(&self) -> String {
        match self {
            Self::Pretrain(c) => c.to_toml(),
            Self::Finetune(c) => c.to_toml(),
        }
    }
}

impl From<TrainConfig> for RunConfig {
    fn from(c: TrainConfig) -> Self {
        Self::Pretrain(c)
    }
}

impl From<FinetuneConfig> for RunConfig {
    fn from(c: FinetuneConfig) -> Self {
        Self::Finetune(c)
    }
}

/// Bytes of memory available to a new process: `MemAvailable` of /proc/meminfo, or 1 TiB where
/// the system does not say.
pub fn available_memory_bytes() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::from(1u32 << 30) * 1024.0, |kib| kib * 1024.0)
}

/// A configuration error at `key` of `source_name`.
fn config_err(source_name: &str, key: &str, problem: String) -> TrainError {
    TrainError::Config {
        source_name: source_name.into(),
        key: key.into(),
        problem,
    }
}

impl OptimSection {
    /// The step at which the learning rate reaches its floor (default: the run's last step).
    pub fn lr_decay_iters(&self, max_iters: u64) -> u64 {
        self.lr_decay_iters.unwrap_or(max_iters)
    }

    /// Checks values that parse but cannot work, naming the key.
    pub fn validate(&self, max_iters: u64, source_name: &str) -> Result<()> {
        let err = |key: &str, problem: String| Err(config_err(source_name, key, problem));
        if self.schedule_unit == ScheduleUnit::Tokens
            && (self.warmup_tokens.is_none() || self.decay_tokens.is_none())
        {
            return err(
                "optim.schedule_unit",
                "\"tokens\" needs warmup_tokens and decay_tokens".into(),
            );
        }
        if !(self.lr.is_finite() && self.min_lr.is_finite()) {
            return err(
                "optim.lr",
                format!(
                    "lr = {} and min_lr = {} must be finite",
                    self.lr, self.min_lr
                ),
            );
        }
        if !(self.lr >= 0.0 && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return err(
                "optim.min_lr",
                format!(
                    "need 0 ≤ min_lr ≤ lr, got lr = {}, min_lr = {}",
                    self.lr, self.min_lr
                ),
            );
        }
        if self.warmup_iters > self.lr_decay_iters(max_iters) {
            return err(
                "optim.warmup_iters",
                "warmup_iters exceeds lr_decay_iters".into(),
            );
        }
        if self.grad_clip.is_nan() || self.grad_clip < 0.0 {
            return err(
                "optim.grad_clip",
                "must be ≥ 0 (0 disables clipping)".into(),
            );
        }
        Ok(())
    }

    /// The optimization recipe this section describes (lm-optim's [`Preset`]): update rule,
    /// weight decay, clipping and the learning-rate schedule over `max_iters` steps (or the
    /// configured tokens). The one optimizer builder of pretraining and fine-tuning.
    pub fn preset(&self, max_iters: u64) -> Result<Preset> {
        let rule = match self.name {
            OptimizerKind::Sgd => UpdateRule::Sgd(SgdConfig {
                momentum: self.momentum,
                ..Default::default()
            }),
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                let base = if self.name == OptimizerKind::Adam {
                    AdamConfig::adam()
                } else {
                    AdamConfig::adamw()
                };
                UpdateRule::Adam(base.with_betas(self.beta1, self.beta2).with_eps(self.eps))
            }
            // The schedule gives the relative step. With `scale_parameter`, each update is scaled
            // by the parameter's RMS, as in Mesh TensorFlow's T5 pretraining: without it, a step
            // of 1e−2 grows T5's small-initialized query weights ~9× in a few hundred steps,
            // saturating its unscaled attention.
            OptimizerKind::Adafactor => UpdateRule::AdaFactor(AdaFactorConfig {
                lr: AdaFactorLr::External,
                scale_parameter: self.scale_parameter,
                ..Default::default()
            }),
        };
        let (warmup, total) = match self.schedule_unit {
            ScheduleUnit::Tokens => (
                self.warmup_tokens.unwrap_or(0.0),
                self.decay_tokens.unwrap_or(0.0),
            ),
            ScheduleUnit::Steps => (
                self.warmup_iters as f64,
                self.lr_decay_iters(max_iters) as f64,
            ),
        };
        let schedule = match self.schedule {
            ScheduleKind::Cosine => Schedule::warmup_cosine(self.lr, self.min_lr, warmup, total)?,
            ScheduleKind::Linear => Schedule::warmup_linear(self.lr, warmup, total)?,
            ScheduleKind::InverseSqrt => Schedule::InverseSqrt {
                peak: self.lr,
                warmup: warmup.max(1.0),
            },
            ScheduleKind::Constant => Schedule::Sequence(vec![
                Schedule::Linear {
                    from: 0.0,
                    to: self.lr,
                    length: warmup,
                },
                Schedule::Constant(self.lr),
            ]),
        };
        Ok(Preset {
            rule,
            weight_decay: self.weight_decay,
            clip_norm: (self.grad_clip > 0.0).then_some(self.grad_clip),
            schedule,
            unit: self.schedule_unit.into(),
            batch_ramp: None,
        })
    }
}

impl TrainSection {
    /// Checks values that parse but cannot work, naming the key.
    pub fn validate(&self, source_name: &str) -> Result<()> {
        let err = |key: &str, problem: String| Err(config_err(source_name, key, problem));
        if let Some(start) = self.batch_ramp_start {
            if start == 0 || start > self.batch_size {
                return err(
                    "train.batch_ramp_start",
                    format!("{start} must be in 1..=batch_size"),
                );
            }
        }
        for (key, v) in [
            ("train.batch_size", self.batch_size as u64),
            ("train.grad_accum", self.grad_accum as u64),
            ("train.eval_interval", self.eval_interval),
            ("train.eval_iters", self.eval_iters as u64),
            ("train.log_interval", self.log_interval),
            (
                "train.loss_scale_growth_interval",
                self.loss_scale_growth_interval,
            ),
        ] {
            if v == 0 {
                return err(key, "must be positive".into());
            }
        }
        let init = self.loss_scale_init;
        if !(init.is_finite() && init > 0.0) {
            return err(
                "train.loss_scale_init",
                format!("{init} must be a positive finite number"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
