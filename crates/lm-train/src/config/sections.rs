//! `[optim]` and `[train]`: the sections pretraining and fine-tuning share, with their defaults
//! and the checks of values that parse but cannot work.

use lm_optim::presets::{self, Preset, UpdateRule};
use lm_optim::{
    AdaFactorConfig, AdaFactorLr, AdamConfig, BatchSizeRamp, Schedule, SgdConfig, WeightDecay,
};
use serde::{Deserialize, Serialize};

use super::{
    config_err, yes, ActivationCheckpointing, NonFinitePolicy, OptimizerKind, PaperPreset,
    Precision, ScheduleKind, ScheduleUnit, ZeroStage,
};
use crate::error::Result;

/// `[optim]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    /// A paper's recipe filling the keys this section leaves out ([`Self::fill_from_preset`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<PaperPreset>,
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
    /// Peak FLOP/s that MFU is measured against; unset, the measured peak of the products'
    /// precision on the run's CPU threads, or a CUDA GPU's data-sheet bf16 peak (none for AMX
    /// products or other GPUs: then no MFU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_flops: Option<f64>,
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
    /// Data parallelism: what the ranks shard — 0 nothing (DDP), 1 the optimizer state (each
    /// rank keeps and updates the state of its share of the parameters, then sends them to the
    /// others), 2 also the reduced gradients, 3 also the parameters (each rank keeps its share
    /// between uses; they are gathered for a step's forward pass, an evaluation or a
    /// checkpoint, and freed as their gradients are reduced). Read through
    /// [`TrainSection::zero_stage`].
    #[serde(default)]
    pub zero_stage: ZeroStage,
    /// The old spelling of `zero_stage = 1`: `true` asks for at least stage 1 (kept so that the
    /// configs of earlier runs still read; no longer written).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shard_optimizer_state: bool,
    /// Write TensorBoard event files in the run's `tb/` (rank 0).
    #[serde(default = "yes")]
    pub tensorboard: bool,
    /// Which blocks recompute their activations in backward (memory for compute).
    #[serde(default)]
    pub activation_checkpointing: ActivationCheckpointing,
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
/// PyTorch `GradScaler`'s defaults (with [`default_loss_scale_init`]).
fn default_loss_scale_growth_interval() -> u64 {
    2000
}
fn default_loss_scale_init() -> f64 {
    65536.0
}
fn default_matmul_precision() -> Precision {
    Precision::Auto
}
fn default_on_nonfinite() -> NonFinitePolicy {
    NonFinitePolicy::Stop
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
fn one() -> usize {
    1
}
fn ten() -> u64 {
    10
}
fn three() -> usize {
    3
}
fn twenty() -> usize {
    20
}

impl OptimSection {
    /// The step at which the learning rate reaches its floor (default: the run's last step).
    pub fn lr_decay_iters(&self, max_iters: u64) -> u64 {
        self.lr_decay_iters.unwrap_or(max_iters)
    }

    /// Gives every key of the section that `given` (the `[optim]` table as written) leaves out
    /// the value of `preset`, taken from lm-optim's preset of that name at this section's `lr`:
    /// the update rule and its constants, weight decay, clipping, the schedule's kind, unit,
    /// floor and lengths. Nothing changes without a preset.
    pub fn fill_from_preset(&mut self, given: &toml::Table, source_name: &str) -> Result<()> {
        let Some(which) = self.preset else {
            return Ok(());
        };
        let bad = |problem: String| config_err(source_name, "optim.preset", problem);
        let paper = match which {
            // The batch ramp is `train.batch_ramp_*`: the preset's is not taken.
            PaperPreset::Gpt3 => presets::gpt3(self.lr, 1, 1, 0.0),
            PaperPreset::Bert => presets::bert(
                self.lr,
                presets::BERT_WARMUP_STEPS,
                presets::BERT_TOTAL_STEPS,
            ),
            PaperPreset::T5 => Ok(presets::t5()),
        }
        .map_err(|e| bad(e.to_string()))?;
        let filled = self.with_preset_values(&paper).map_err(bad)?;
        let as_table =
            |s: &Self| toml::Table::try_from(s).map_err(|e| bad(format!("cannot apply: {e}")));
        let mut mine = as_table(self)?;
        for (key, value) in as_table(&filled)? {
            if !given.contains_key(&key) {
                mine.insert(key, value);
            }
        }
        *self = mine
            .try_into()
            .map_err(|e| bad(format!("cannot apply: {e}")))?;
        Ok(())
    }

    /// This section with every value `paper` sets.
    fn with_preset_values(&self, paper: &Preset) -> std::result::Result<Self, String> {
        let mut s = self.clone();
        match &paper.rule {
            UpdateRule::Sgd(c) => {
                s.name = OptimizerKind::Sgd;
                s.momentum = c.momentum;
            }
            UpdateRule::Adam(c) => {
                s.name = match c.weight_decay {
                    WeightDecay::Coupled => OptimizerKind::Adam,
                    WeightDecay::Decoupled => OptimizerKind::Adamw,
                };
                (s.beta1, s.beta2, s.eps) = (c.beta1, c.beta2, c.eps);
            }
            UpdateRule::AdaFactor(c) => {
                s.name = OptimizerKind::Adafactor;
                s.scale_parameter = c.scale_parameter;
            }
        }
        s.weight_decay = paper.weight_decay;
        s.grad_clip = paper.clip_norm.unwrap_or(0.0);
        // (kind, warmup, end of the decay, floor)
        let (kind, warmup, end, floor) = match &paper.schedule {
            Schedule::InverseSqrt { warmup, .. } => (ScheduleKind::InverseSqrt, *warmup, None, 0.0),
            Schedule::Sequence(phases) => match phases.as_slice() {
                [Schedule::Linear { length: w, .. }, Schedule::Cosine { to, length, .. }] => {
                    (ScheduleKind::Cosine, *w, Some(w + length), *to)
                }
                [Schedule::Linear { length: w, .. }, Schedule::Linear { length, to, .. }]
                    if *to == 0.0 =>
                {
                    (ScheduleKind::Linear, *w, Some(w + length), 0.0)
                }
                other => return Err(format!("a schedule of phases {other:?} has no keys")),
            },
            other => return Err(format!("the schedule {other:?} has no keys")),
        };
        s.schedule = kind;
        s.min_lr = floor;
        match paper.unit {
            presets::ScheduleUnit::Steps => {
                s.schedule_unit = ScheduleUnit::Steps;
                s.warmup_iters = warmup as u64;
                s.lr_decay_iters = end.map(|e| e as u64);
            }
            presets::ScheduleUnit::Tokens => {
                s.schedule_unit = ScheduleUnit::Tokens;
                s.warmup_tokens = Some(warmup);
                s.decay_tokens = end;
            }
        }
        Ok(s)
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

    /// The optimization recipe this section and `train` describe (lm-optim's [`Preset`]):
    /// update rule, weight decay, clipping, the learning-rate schedule over `train.max_iters`
    /// steps (or the configured tokens) and the batch-size ramp. The trainer takes all of it from
    /// here: the one optimizer builder of pretraining and fine-tuning.
    pub fn preset(&self, train: &TrainSection) -> Result<Preset> {
        let max_iters = train.max_iters;
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
            batch_ramp: train.batch_ramp_start.map(|start| BatchSizeRamp {
                start,
                end: train.batch_size,
                ramp_tokens: train.batch_ramp_tokens,
                multiple: start,
            }),
        })
    }
}

impl TrainSection {
    /// The ZeRO stage in effect: `zero_stage`, at least 1 with the old
    /// `shard_optimizer_state = true`.
    pub fn zero_stage(&self) -> ZeroStage {
        match self.shard_optimizer_state {
            true => self.zero_stage.max(ZeroStage::Zero1),
            false => self.zero_stage,
        }
    }

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
