//! Training configuration: a TOML file (or an embedded recipe) with every hyperparameter visible.
//! Unknown keys and wrong types are refused with the key's name.

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use crate::choices::{
    ActivationCheckpointing, Freeze, Infilling, MlmSelection, NonFinitePolicy, ObjectiveKind,
    OptimizerKind, PaperPreset, Precision, ScheduleKind, ScheduleUnit, T5FeedForward, TaskKind,
    TokenizerKind, ZeroStage,
};
use crate::error::{io_err, Result, TrainError};
use crate::family::{Architecture, ModelShape};
pub use crate::registry::Family;

mod finetuning;
mod overrides;
mod sections;
pub use finetuning::{FinetuneConfig, FinetuneSection, FINETUNE_RECIPES};
pub use sections::{OptimSection, TrainSection};

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
    /// The text to train on: a file, directory or glob of plain text, JSON Lines or Parquet (as
    /// `lm-train data prepare` takes), or `builtin:tinyshakespeare` for the bundled corpus;
    /// prepared once into the cache (docs/data.md).
    #[serde(default = "default_corpus")]
    pub corpus: String,
    /// A dataset made by `lm-train data prepare` (or `data import`), instead of `corpus`: its
    /// tokenizer and validation split come with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
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
    /// Fraction of the corpus held out for validation (default 0.1): its last part (plain
    /// text), or documents evenly spread (other formats). Not with `dataset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_fraction: Option<f64>,
    /// `[[data.sources]]`: a deterministic mixture of prepared datasets (one tokenizer), instead
    /// of `corpus` or `dataset`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<DataSource>,
}

/// The `[data]` keys that describe a corpus and how to tokenize it. A dataset given on the command
/// line (`--set data.dataset=…`) replaces a recipe's: they would otherwise be checked against the
/// dataset's tokenizer, and refused.
pub const CORPUS_KEYS: &[&str] = &[
    "corpus",
    "tokenizer",
    "vocab_size",
    "tokenizer_file",
    "val_fraction",
];

/// Removes [`CORPUS_KEYS`] from config `doc` when command-line overrides `sets` (`KEY=VALUE`)
/// name `data.dataset`; those overrides are applied after, so a key they set is kept.
pub fn dataset_replaces_corpus(doc: &mut toml::Table, sets: &[String]) {
    if sets
        .iter()
        .any(|s| s.trim_start().starts_with("data.dataset="))
    {
        if let Some(data) = doc.get_mut("data").and_then(|d| d.as_table_mut()) {
            for k in CORPUS_KEYS {
                data.remove(*k);
            }
        }
    }
}

/// `[[data.sources]]`: one dataset of a mixture and its weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// A directory made by `lm-train data prepare` or `data import`.
    pub path: String,
    /// Its share of every global batch (weights are normalized).
    pub weight: f64,
}

/// `[objective]`: options of the family's pretraining objective (lm-objectives' defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveSection {
    /// The objective (default: the family's own, its spec's `default_objective`).
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

fn default_corpus() -> String {
    crate::data::BUILTIN_SHAKESPEARE.into()
}
fn default_tokenizer() -> TokenizerKind {
    TokenizerKind::Char
}
impl DataSection {
    /// `dataset` and `[[data.sources]]` against the keys they exclude, and the sources' weights.
    fn validate_sources(&self, err: &dyn Fn(&str, String) -> Result<()>) -> Result<()> {
        if !self.sources.is_empty() {
            let beside = [
                ("data.dataset", self.dataset.is_some()),
                ("data.corpus", self.corpus != default_corpus()),
                ("data.val_fraction", self.val_fraction.is_some()),
            ];
            if let Some((key, _)) = beside.iter().find(|(_, set)| *set) {
                return err(key, "give a mixture ([[data.sources]]) or this, not both; each source brings its own validation split".into());
            }
            if let Some(s) = self
                .sources
                .iter()
                .find(|s| !(s.weight > 0.0 && s.weight.is_finite()))
            {
                return err(
                    "data.sources.weight",
                    format!("{} for {:?} is not a positive number", s.weight, s.path),
                );
            }
        }
        if let Some(d) = &self.dataset {
            if self.val_fraction.is_some() {
                return err("data.val_fraction", format!("a dataset brings its own validation split (made by `lm-train data prepare --val-fraction`); remove val_fraction, or prepare {d} again"));
            }
            if self.corpus != default_corpus() {
                return err(
                    "data.corpus",
                    format!("give corpus or dataset, not both (dataset = {d:?})"),
                );
            }
        }
        Ok(())
    }

    /// The validation fraction of a `corpus` (default 0.1).
    pub fn val_fraction(&self) -> f64 {
        self.val_fraction.unwrap_or(0.1)
    }
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
    ("gpt2-124m", include_str!("../../../recipes/gpt2-124m.toml")),
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
            " (a tokenizer.json file goes in data.tokenizer_file)".to_string()
        } else {
            closest_known(inner.message())
                .map_or(String::new(), |k| format!(" (did you mean `{k}`?)"))
        };
        TrainError::Config {
            source_name: source.into(),
            key: if path == "." {
                "(document)".into()
            } else {
                path
            },
            problem: format!("{}{at}{hint}", toml_reason(inner.message())),
        }
    })
}

/// For serde's "unknown field `x`, expected one of `a`, `b`, …": the expected name closest to
/// `x` in edit distance, when it is close (at most a third of its letters differ).
fn closest_known(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut diagonal = row[0];
            row[0] = i + 1;
            for (j, &cb) in b.iter().enumerate() {
                let next = (diagonal + usize::from(ca != cb))
                    .min(row[j] + 1)
                    .min(row[j + 1] + 1);
                diagonal = row[j + 1];
                row[j + 1] = next;
            }
        }
        row[b.len()]
    };
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (distance(unknown, k), k))
        .min()
        .filter(|(d, _)| 3 * d <= unknown.chars().count().max(3))
        .map(|(_, k)| k.to_string())
}

/// The TOML parser's reason on one line; it gives none where a value is missing at the end of
/// the text (a file cut off mid-value).
fn toml_reason(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "a value is missing here (is the file cut off?)".into()
    } else {
        lines.join("; ")
    }
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

/// Parses `text`; an unknown key, a wrong type or bad syntax is reported first, then every
/// `required` key it lacks at once.
pub(crate) fn parse_missing_last<T: serde::de::DeserializeOwned>(
    text: &str,
    source_name: &str,
    required: &[(&str, &[&str])],
) -> Result<T> {
    let missing = missing_required(text, required);
    match parse_toml(text, source_name) {
        Err(TrainError::Config { problem, .. })
            if !missing.is_empty() && problem.starts_with("missing field") =>
        {
            Err(config_err(
                source_name,
                &missing.join(", "),
                "missing: these keys have no default (docs/config.md lists every key)".into(),
            ))
        }
        parsed => parsed,
    }
}

/// The `[optim]` table as `text` writes it (empty when absent): the keys an `optim.preset`
/// leaves alone.
pub(crate) fn written_optim(text: &str) -> toml::Table {
    toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|mut doc| match doc.remove("optim") {
            Some(toml::Value::Table(t)) => Some(t),
            _ => None,
        })
        .unwrap_or_default()
}

impl TrainConfig {
    /// Parses and validates a TOML text; `source_name` (a path or recipe) appears in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<Self> {
        let mut cfg: Self = parse_missing_last(text, source_name, REQUIRED)?;
        cfg.optim
            .fill_from_preset(&written_optim(text), source_name)?;
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
        self.data.validate_sources(&err)?;
        // With a tokenizer file, its own kind counts (checked when the file is read).
        if self.data.tokenizer == TokenizerKind::Char
            && self.data.tokenizer_file.is_none()
            && self.data.dataset.is_none()
            && self.data.sources.is_empty()
            && !m.family.takes_char_tokenizer()
        {
            return err("data.tokenizer", format!("the {} family needs special tokens; use a trained tokenizer (\"bpe\", \"wordpiece\" or \"unigram\")", m.family));
        }
        if !(self.data.val_fraction() > 0.0 && self.data.val_fraction() < 1.0) {
            return err(
                "data.val_fraction",
                format!("{} is not in (0, 1)", self.data.val_fraction()),
            );
        }
        let ob = &self.objective;
        if !m.family.fits(self.objective_kind()) {
            let fitting: Vec<String> = m
                .family
                .objectives
                .iter()
                .map(|k| format!("{:?}", k.as_str()))
                .collect();
            return err(
                "objective.kind",
                format!(
                    "{:?} does not train the {} family (it fits: {})",
                    self.objective_kind().as_str(),
                    m.family,
                    fitting.join(", ")
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

    /// The `[model]` sizes with the vocabulary and seed, as the family builds from them.
    pub fn model_shape(&self, vocab: usize) -> ModelShape {
        let m = &self.model;
        ModelShape {
            vocab,
            n_layer: m.n_layer,
            n_head: m.n_head,
            n_embd: m.n_embd,
            block_size: m.block_size,
            dropout: m.dropout,
            d_ff: m.d_ff.unwrap_or(4 * m.n_embd),
            t5_feed_forward: m.t5_feed_forward,
            seed: self.train.seed,
        }
    }

    /// The objective this run trains: `objective.kind`, or the family's default.
    pub fn objective_kind(&self) -> ObjectiveKind {
        self.objective
            .kind
            .unwrap_or(self.model.family.default_objective)
    }

    /// Training memory in bytes, estimated before anything is allocated: parameters ×
    /// 16 bytes (f32 weights, gradients and two Adam moments) and the activations one
    /// micro-batch keeps for the backward pass ([`Self::activation_bytes`]). Returns
    /// (parameters, parameter bytes, activation bytes), in f64 so that absurd sizes cannot
    /// overflow.
    pub fn memory_estimate(&self) -> (f64, f64, f64) {
        let m = &self.model;
        let (d, layers, block) = (m.n_embd as f64, m.n_layer as f64, m.block_size as f64);
        let d_ff = m.d_ff.map_or(4.0 * d, |f| f as f64);
        let vocab = self.data.vocab_size.unwrap_or(2000) as f64;
        let per_layer = 4.0 * d * d + 2.0 * d * d_ff;
        // Encoder-decoders: a decoder stack with cross-attention beside the encoder.
        let stacks = match m.family.architecture {
            Architecture::EncoderDecoder => 2.0 * per_layer + 4.0 * d * d,
            _ => per_layer,
        };
        let params = vocab * d + block * d + layers * stacks;
        let acts = self.activation_bytes(self.train.batch_size as f64, vocab);
        (params, params * 16.0, acts)
    }

    /// Bytes of activations `rows` sequences keep for the backward pass, in f32, after
    /// Korthikanti et al. 2022's count per layer — `s·b·(34·d + 5·a·s)` bytes for 16-bit values
    /// and 1-byte dropout masks — taken to f32: `s·b·(68·d + 4·a·s·k)`, where `k` counts the
    /// `[a, s, s]` tensors kept (the probabilities while the fused attention keeps them,
    /// `s ≤ 4·head_dim`, and a dropout mask on them); blocks that recompute
    /// (`train.activation_checkpointing`) keep only their input `s·b·d`, plus one block's
    /// activations while it is recomputed; and the language-model head's logits, their
    /// log-softmax and their gradient, `3·s·b·V` values for a vocabulary of `vocab` (one chunk
    /// of 2^22 where a decoder-only model computes its head in chunks). An
    /// encoder-decoder counts two stacks. Micro-batches run one after another, so a step holds
    /// one micro-batch's.
    pub fn activation_bytes(&self, rows: f64, vocab: f64) -> f64 {
        let m = &self.model;
        let (d, layers, s) = (m.n_embd as f64, m.n_layer as f64, m.block_size as f64);
        let head_dim = m.n_embd / m.n_head.max(1);
        let kept = f64::from(u8::from(m.block_size <= 4 * head_dim))
            + f64::from(u8::from(m.dropout > 0.0));
        let full = rows * s * (68.0 * d + 4.0 * m.n_head as f64 * s * kept);
        let input = rows * s * d * 4.0;
        let recomputed = match self.train.activation_checkpointing {
            ActivationCheckpointing::None => 0.0,
            ActivationCheckpointing::Blocks => layers,
            ActivationCheckpointing::EveryNth(n) => (layers / n as f64).ceil(),
        };
        let stack = (layers - recomputed) * full
            + recomputed * input
            + if recomputed > 0.0 { full } else { 0.0 };
        let stacks = match m.family.architecture {
            Architecture::EncoderDecoder => 2.0,
            _ => 1.0,
        };
        // A decoder-only model's head past its threshold runs in chunks of the vocabulary
        // (`families::gpt::HEAD_IN_CHUNKS_FROM`): one chunk of 2^22 logits, not three `[n, V]`.
        let logits = rows * s * vocab;
        let chunked = m.family.architecture == Architecture::DecoderOnly
            && logits >= crate::families::gpt::HEAD_IN_CHUNKS_FROM as f64;
        let head = if chunked {
            4.0 * f64::from(1u32 << 22)
        } else {
            3.0 * logits * 4.0
        };
        stacks * stack + head
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

#[cfg(test)]
mod tests;
