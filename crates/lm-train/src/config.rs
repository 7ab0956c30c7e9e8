//! Training configuration: a TOML file (or an embedded recipe) with every hyperparameter visible.
//! Unknown keys and wrong types are refused with the key's name.

use std::path::Path;

use serde::{Deserialize, Serialize};

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
    /// Architecture family: `"gpt"`, `"bert"`, `"roberta"`, `"bart"` or `"t5"`.
    pub family: String,
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
    /// T5's feed-forward: `"relu"` (v1.0) or `"gated-gelu"` (v1.1).
    #[serde(default)]
    pub t5_feed_forward: Option<String>,
}

/// `[data]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// A text file, or `builtin:tinyshakespeare` for the bundled corpus.
    #[serde(default = "default_corpus")]
    pub corpus: String,
    /// Tokenizer: `"char"`, `"bpe"`, `"wordpiece"` or `"unigram"`, trained on the training split.
    #[serde(default = "default_tokenizer")]
    pub tokenizer: String,
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
    /// MLM: fraction of tokens selected.
    #[serde(default = "default_mlm_rate")]
    pub mlm_rate: f64,
    /// MLM: `"exact"` count or `"bernoulli"` per token.
    #[serde(default = "default_selection")]
    pub mlm_selection: String,
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
}

impl Default for ObjectiveSection {
    fn default() -> Self {
        toml::from_str("").expect("every key has a default")
    }
}

/// `[optim]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    /// Update rule: `"sgd"`, `"adam"`, `"adamw"` or `"adafactor"`.
    #[serde(default = "default_optimizer")]
    pub name: String,
    /// Schedule after warmup: `"cosine"` (to `min_lr`), `"linear"` (to 0), `"inverse_sqrt"` or
    /// `"constant"`.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// Position the schedule counts: `"steps"` or `"tokens"` (then `warmup_tokens` and
    /// `decay_tokens` give its phases).
    #[serde(default = "default_unit")]
    pub schedule_unit: String,
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
    pub min_lr: f64,
    /// Steps of linear warmup from 0.
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
    /// Batches per evaluation estimate.
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
    /// What a NaN or infinite loss does: `"stop"` (default) or `"skip"` the step.
    #[serde(default = "default_on_nonfinite")]
    pub on_nonfinite_loss: String,
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
    /// Matrix products of linear layers and attention: `"highest"` (f32) or `"bf16"` (mixed
    /// precision: bf16 inputs, f32 accumulation, f32 master weights, activations and gradients).
    #[serde(default = "default_matmul_precision")]
    pub matmul_precision: String,
}

fn default_matmul_precision() -> String {
    "highest".into()
}

fn default_corpus() -> String {
    crate::data::BUILTIN_SHAKESPEARE.into()
}
fn default_tokenizer() -> String {
    "char".into()
}
fn default_val_fraction() -> f64 {
    0.1
}
fn default_optimizer() -> String {
    "adamw".into()
}
fn default_schedule() -> String {
    "cosine".into()
}
fn default_unit() -> String {
    "steps".into()
}
fn default_mlm_rate() -> f64 {
    0.15
}
fn default_selection() -> String {
    "exact".into()
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
fn default_on_nonfinite() -> String {
    "stop".into()
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

/// Parses TOML into `T`; a syntax error, unknown key or wrong type names `source` and where.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, source: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| TrainError::Config {
        source_name: source.into(),
        key: e
            .span()
            .map(|s| format!("at bytes {}..{}", s.start, s.end))
            .unwrap_or_else(|| "(document)".into()),
        problem: e.message().trim().to_string(),
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

impl TrainConfig {
    /// Parses and validates a TOML text; `source_name` (a path or recipe) appears in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<Self> {
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
        self.optim.lr_decay_iters.unwrap_or(self.train.max_iters)
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
        let one_of = |v: &str, options: &[&str]| -> Option<String> {
            (!options.contains(&v)).then(|| {
                format!(
                    "{v:?} is not one of {}",
                    options
                        .iter()
                        .map(|o| format!("{o:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        };
        let m = &self.model;
        if let Some(p) = one_of(&m.family, &["gpt", "bert", "roberta", "bart", "t5"]) {
            return err("model.family", p);
        }
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
        if let Some(p) = m
            .t5_feed_forward
            .as_deref()
            .and_then(|f| one_of(f, &["relu", "gated-gelu"]))
        {
            return err("model.t5_feed_forward", p);
        }
        if let Some(p) = one_of(
            &self.data.tokenizer,
            &["char", "bpe", "wordpiece", "unigram"],
        ) {
            return err("data.tokenizer", p);
        }
        if self.data.tokenizer == "char" && m.family != "gpt" {
            return err("data.tokenizer", format!("the {} family needs special tokens; use a trained tokenizer (\"bpe\", \"wordpiece\" or \"unigram\")", m.family));
        }
        if !(self.data.val_fraction > 0.0 && self.data.val_fraction < 1.0) {
            return err(
                "data.val_fraction",
                format!("{} is not in (0, 1)", self.data.val_fraction),
            );
        }
        let ob = &self.objective;
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
        if let Some(p) = one_of(&ob.mlm_selection, &["exact", "bernoulli"]) {
            return err("objective.mlm_selection", p);
        }
        let o = &self.optim;
        if let Some(p) = one_of(&o.name, &["sgd", "adam", "adamw", "adafactor"]) {
            return err("optim.name", p);
        }
        if let Some(p) = one_of(
            &o.schedule,
            &["cosine", "linear", "inverse_sqrt", "constant"],
        ) {
            return err("optim.schedule", p);
        }
        if let Some(p) = one_of(&o.schedule_unit, &["steps", "tokens"]) {
            return err("optim.schedule_unit", p);
        }
        if o.schedule_unit == "tokens" && (o.warmup_tokens.is_none() || o.decay_tokens.is_none()) {
            return err(
                "optim.schedule_unit",
                "\"tokens\" needs warmup_tokens and decay_tokens".into(),
            );
        }
        if !(o.lr >= 0.0 && o.min_lr >= 0.0 && o.min_lr <= o.lr) {
            return err(
                "optim.min_lr",
                format!(
                    "need 0 ≤ min_lr ≤ lr, got lr = {}, min_lr = {}",
                    o.lr, o.min_lr
                ),
            );
        }
        if o.warmup_iters > self.lr_decay_iters() {
            return err(
                "optim.warmup_iters",
                "warmup_iters exceeds lr_decay_iters".into(),
            );
        }
        if o.grad_clip < 0.0 {
            return err(
                "optim.grad_clip",
                "must be ≥ 0 (0 disables clipping)".into(),
            );
        }
        let t = &self.train;
        if let Some(start) = t.batch_ramp_start {
            if start == 0 || start > t.batch_size {
                return err(
                    "train.batch_ramp_start",
                    format!("{start} must be in 1..=batch_size"),
                );
            }
        }
        if t.batch_size == 0
            || t.grad_accum == 0
            || t.eval_interval == 0
            || t.eval_iters == 0
            || t.log_interval == 0
        {
            return err("train", "batch_size, grad_accum, eval_interval, eval_iters and log_interval must be positive".into());
        }
        if let Some(p) = one_of(&t.on_nonfinite_loss, &["stop", "skip"]) {
            return err("train.on_nonfinite_loss", p);
        }
        if let Some(p) = one_of(&t.matmul_precision, &["highest", "bf16"]) {
            return err("train.matmul_precision", p);
        }
        Ok(())
    }

    /// The config as TOML, as saved in a run directory.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a config serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_parses_with_nanogpt_values() {
        let c = TrainConfig::recipe("gpt-shakespeare-char").unwrap();
        assert_eq!(
            (
                c.model.n_layer,
                c.model.n_head,
                c.model.n_embd,
                c.model.block_size
            ),
            (4, 4, 128, 64)
        );
        assert_eq!((c.train.batch_size, c.train.max_iters), (12, 2000));
        assert_eq!(
            (c.optim.beta2, c.optim.weight_decay, c.optim.grad_clip),
            (0.99, 0.1, 1.0)
        );
        let back = TrainConfig::from_toml(&c.to_toml(), "roundtrip").unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn errors_name_the_key() {
        let base = TrainConfig::recipe("gpt-shakespeare-char")
            .unwrap()
            .to_toml();
        let e = TrainConfig::from_toml(&base.replace("n_embd = 128", "n_embd = 130"), "x.toml")
            .unwrap_err();
        assert!(
            e.to_string().contains("model.n_embd") && e.to_string().contains("divisible"),
            "{e}"
        );
        let e = TrainConfig::from_toml(
            &base.replace("n_layer = 4", "n_layer = 4\nn_layers = 4"),
            "x.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("n_layers"), "{e}");
        let e =
            TrainConfig::from_toml(&base.replace("n_layer = 4", "n_layer = \"four\""), "x.toml")
                .unwrap_err();
        assert!(
            e.to_string().contains("x.toml") && e.to_string().contains("string"),
            "{e}"
        );
        let e = TrainConfig::recipe("nope").unwrap_err();
        assert!(e.to_string().contains("gpt-shakespeare-char"), "{e}");
    }
}
