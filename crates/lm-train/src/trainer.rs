//! The training loop, one for pretraining and fine-tuning. One step reads like the chapter's
//! pseudo-code:
//!
//! ```text
//! η_t  ← schedule(t)                                 (t in steps or tokens seen)
//! g    ← ∇_θ mean over the batch of the objective's negative log-likelihood
//!                                                     (summed over grad_accum micro-batches)
//! g    ← g · min(1, c/‖g‖)                           (global-norm clipping)
//! θ    ← update(θ, g, η_t)                            (SGD, Adam, AdamW or AdaFactor)
//! ```
//!
//! What is trained on is a [`Work`]: a corpus with the family's pretraining objective
//! ([`BatchSource`]) or a fine-tuning task ([`FinetuneTask`]). Both give the batch of a key as a
//! pure function of (seed, split, key), and dropout masks are keyed the same way, so a run killed
//! at any point resumes bit for bit. Batches are prepared on a background thread. The gradient
//! store between backward and the optimizer step is where a data-parallel backend would
//! all-reduce gradients; such a backend shards data by giving each rank its own keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{backprop::GradStore, Device, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use lm_dist::{Collective, SingleProcess, Strategy};
use lm_kernels::threads::on_compute_threads;
use lm_models::{MatmulPrecision, ParamStore, Sampling, StepContext};
use lm_objectives::Rng;
use lm_optim::presets::ScheduleUnit as PresetUnit;
use lm_optim::{BatchSizeRamp, Optimizer, ParamGroup, Schedule};

use crate::batches::{BatchSource, Specials};
use crate::checkpoint::{self, CheckpointWriter, LossScaleState, TrainerState};
use crate::config::{NonFinitePolicy, RunConfig, TokenizerKind, TrainConfig};
use crate::data::{Dataset, Split};
use crate::error::{io_err, Result, TrainError};
use crate::finetune::{FinetuneResults, FinetuneTask};
use crate::lock::RunLock;
use crate::metrics::{MetricRecord, MetricsLog};
use crate::model::{param_groups, Batch, Head, LanguageModel, LossWeights};
use crate::model_ref::ModelRef;
use crate::tokenizer::TextTokenizer;

mod batching;
mod checkpointing;
mod evaluation;
mod logging;
mod ranks;
mod setup;
mod step;

use batching::{Prefetch, StepShape};
pub use batching::{Share, Work};
pub use evaluation::score_text;
use setup::{check_same_run, finetuning_parts, new_run_data, pretraining_parts, reopened_run_data};

/// What a finished (or stopped) training call reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// Optimizer steps done in total.
    pub step: u64,
    /// Last evaluation: (train, val) loss.
    pub last_eval: Option<(f32, f32)>,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Whether the stop flag ended the run (after a checkpoint of the current step).
    pub interrupted: bool,
    /// A fine-tuning run's test results (of its best checkpoint).
    pub results: Option<FinetuneResults>,
    /// Seconds this call's steps waited for their batches (made ahead on a background thread),
    /// and seconds of those steps in all.
    pub data_wait_s: (f64, f64),
}

/// One evaluation: loss estimates on both splits, and a fine-tuning task's validation metrics
/// (`val_accuracy`, `val_token_f1`, …; empty in pretraining).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Mean loss over the evaluation batches of the training split.
    pub train_loss: f32,
    /// Mean loss over the evaluation batches of the validation split.
    pub val_loss: f32,
    /// Task metrics on the validation examples.
    pub metrics: BTreeMap<String, f64>,
}

/// The pieces a run is built from, made by pretraining or fine-tuning set-up.
struct Parts {
    tokenizer: TextTokenizer,
    work: Work,
    model: Box<dyn LanguageModel>,
    store: ParamStore,
    groups: Vec<ParamGroup>,
    /// The end-of-text id (GPT's sampling prompt when none is given).
    eos: u32,
}

/// A training run: model, optimizer, data and run directory.
pub struct Trainer {
    cfg: RunConfig,
    run_dir: PathBuf,
    device: Device,
    tokenizer: TextTokenizer,
    eos: u32,
    work: Work,
    model: Box<dyn LanguageModel>,
    store: ParamStore,
    vars: Vec<Var>,
    opt: Box<dyn Optimizer>,
    schedule: Schedule,
    /// What the schedule counts (steps or tokens).
    schedule_unit: PresetUnit,
    /// Global-norm clipping threshold.
    clip_norm: Option<f64>,
    ramp: Option<BatchSizeRamp>,
    state: TrainerState,
    metrics: MetricsLog,
    /// The run directory's lock, held by a trainer that writes the run.
    lock: Option<RunLock>,
    /// Stop after this step instead of `train.max_iters` (a run-time override, not saved).
    stop_at: Option<u64>,
    /// Opened for reading ([`Trainer::open`]): no optimizer state, no training.
    read_only: bool,
    /// This process's TensorBoard event file, opened at the first record (rank 0).
    tensorboard: Option<crate::tensorboard::EventWriter>,
    /// Set (e.g. by a SIGINT handler) to stop after the current step with a checkpoint.
    stop_flag: Option<Arc<AtomicBool>>,
    /// Called after each checkpoint is written (the binary's allocator housekeeping).
    after_checkpoint: Option<fn()>,
    /// Steps skipped on the device since the last read: `[count, first step, its loss]`.
    nonfinite: Option<Tensor>,
    /// How the data-parallel ranks share a step (a single process by default): gradient
    /// reduction, optimizer-state placement, parameters kept equal; rank 0 alone writes the run.
    strategy: Arc<Strategy>,
    /// ZeRO-3 with activation checkpointing: which parameters each recomputed block reads,
    /// learned on the first step (`zero3.rs`).
    block_plan: Option<Arc<crate::zero3::BlockPlan>>,
    /// The optimizer's parameter groups (to rebuild it over a rank's shard).
    groups: Vec<ParamGroup>,
    /// Show a progress bar and print evaluation lines.
    pub verbose: bool,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("run_dir", &self.run_dir)
            .field("step", &self.state.step)
            .finish()
    }
}

impl Trainer {
    /// Refuses a trainer opened for reading.
    fn check_trainable(&self) -> Result<()> {
        if !self.read_only {
            return Ok(());
        }
        Err(TrainError::Checkpoint {
            path: self.run_dir.clone(),
            problem: "was opened for reading (no optimizer state, no lock); resume it to train \
                      (`Trainer::resume`, `lm-train train --resume`)"
                .into(),
        })
    }
}

/// How an existing run is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opened {
    /// To train on (rank 0 of a resumed run, holding the lock): weights and optimizer state.
    Writer,
    /// As another rank of a resumed run: weights and optimizer state, nothing written.
    Rank,
    /// To read (eval, sample, predict): weights only.
    Reader,
}

/// Whether a run whose `train.max_iters` is `max_iters` may stop at `step`
/// ([`Trainer::stop_at`]): not at 0 (nothing to train), not past `max_iters` (the length the
/// run was configured, and its schedule made, for). A caller checks it before creating anything.
pub fn check_stop_step(step: u64, max_iters: u64) -> Result<()> {
    let problem = if step == 0 {
        "there would be nothing to train; give a step of at least 1".to_string()
    } else if step > max_iters {
        format!(
            "the run ends at train.max_iters = {max_iters} (its schedule was made for that \
             length); to train longer, start a new run with train.max_iters = {step} (`--set \
             train.max_iters={step}`)"
        )
    } else {
        return Ok(());
    };
    Err(TrainError::StopStep { step, problem })
}

/// The device training runs on: the first CUDA or Metal device when built with that feature
/// and one opens (driver and libraries present), else the CPU.
pub fn default_device() -> Device {
    lm_kernels::device::cuda(0)
        .or_else(|_| lm_kernels::device::metal(0))
        .unwrap_or(Device::Cpu)
}

impl Trainer {
    /// Starts a new run (pretraining or fine-tuning) in `run_dir`, which must not already hold
    /// one.
    pub fn new(cfg: impl Into<RunConfig>, run_dir: &Path, device: Device) -> Result<Self> {
        // A start that fails (bad data, a refused key) leaves no directory it made behind.
        let created = !run_dir.exists();
        let started = Self::start(cfg.into(), run_dir, device);
        if started.is_err() && created {
            let _ = std::fs::remove_dir_all(run_dir);
        }
        started
    }

    fn start(cfg: RunConfig, run_dir: &Path, device: Device) -> Result<Self> {
        let mut cfg = cfg;
        // A directory whose earlier start failed before its first checkpoint holds nothing to keep.
        if !checkpoint::list_checkpoints(run_dir)?.is_empty() {
            return Err(TrainError::Checkpoint {
                path: run_dir.to_path_buf(),
                problem:
                    "already holds a run; resume it with `train --resume` or choose another --out"
                        .into(),
            });
        }
        // Fix the schedule's length now, so that changing max_iters on resume cannot change it.
        let decay_iters = cfg.optim().lr_decay_iters(cfg.train().max_iters);
        cfg.optim_mut().lr_decay_iters = Some(decay_iters);
        std::fs::create_dir_all(run_dir).map_err(io_err(run_dir))?;
        let lock = RunLock::acquire(run_dir)?;
        if !checkpoint::list_checkpoints(run_dir)?.is_empty() {
            return Err(TrainError::Checkpoint {
                path: run_dir.to_path_buf(),
                problem: "already holds a run; resume it with `train --resume`".into(),
            });
        }
        let parts = match &mut cfg {
            RunConfig::Pretrain(c) => {
                let (tokenizer, datasets) = new_run_data(c, run_dir)?;
                // The run's config records the kind of the tokenizer it uses.
                c.data.tokenizer = tokenizer.kind();
                pretraining_parts(c, tokenizer, datasets, &device)?
            }
            RunConfig::Finetune(c) => finetuning_parts(FinetuneTask::prepare(c, run_dir, &device)?),
        };
        parts.tokenizer.save(&run_dir.join("tokenizer.json"))?;
        checkpoint::write_atomic(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
        let mut state = TrainerState::fresh(cfg.train().seed);
        // One process: the global batch is the batch (new_distributed sets it for ranks).
        (state.world, state.global_batch) = (1, cfg.train().batch_size);
        let mut t = Self::build(cfg, run_dir, device, parts, state)?;
        t.lock = Some(lock);
        Ok(t)
    }

    /// Reopens the run in `run_dir` at its newest checkpoint to train on, holding its lock;
    /// `max_iters` replaces the saved stopping point for this call (the saved config is not
    /// changed). Metrics lines after the checkpoint's step (from a killed run) are dropped.
    pub fn resume(run_dir: &Path, max_iters: Option<u64>, device: Device) -> Result<Self> {
        Self::resume_distributed(run_dir, max_iters, device, Arc::new(SingleProcess))
    }

    /// Opens the run in `run_dir` at its newest checkpoint for reading (evaluation, sampling):
    /// nothing in the run directory is written, no lock is taken, and only the weights are
    /// loaded (not the optimizer state). A checkpoint that a training process prunes while it is
    /// being read is given up for the newest one then (at most three tries). Such a trainer
    /// does not train.
    ///
    /// `run_dir` may also be one of the run's checkpoints (`RUN/checkpoints/step-N`): that one
    /// is opened instead of the newest.
    pub fn open(run_dir: &Path, device: Device) -> Result<Self> {
        match crate::model_ref::ModelRef::parse(run_dir)? {
            ModelRef::Checkpoint { run, checkpoint } => {
                return Self::reopen(&run, &checkpoint, device, Opened::Reader)
            }
            ModelRef::Hf(dir) => {
                return Err(TrainError::Checkpoint {
                    path: dir,
                    problem: "is a HuggingFace directory, not a run: eval, sample and predict read a run or one of its checkpoints; `score` and `embed` read this directory, and `finetune --init` trains from it".into(),
                })
            }
            ModelRef::Run(_) => {}
        }
        let mut attempt = 1;
        loop {
            let ckpt = checkpoint::latest_checkpoint(run_dir)?;
            match Self::reopen(run_dir, &ckpt, device.clone(), Opened::Reader) {
                Err(_) if attempt < 3 && !ckpt.exists() => attempt += 1,
                done => return done,
            }
        }
    }

    fn reopen(run_dir: &Path, ckpt: &Path, device: Device, how: Opened) -> Result<Self> {
        let writable = how == Opened::Writer;
        let cfg = RunConfig::from_file(&run_dir.join("config.toml"))?;
        let ckpt = ckpt.to_path_buf();
        let state = checkpoint::read_state(&ckpt)?;
        checkpoint::verify_checksums_of(&ckpt, &state, |file| {
            how != Opened::Reader || !file.starts_with("optimizer")
        })?;
        check_same_run(run_dir, &ckpt, &cfg)?;
        let parts = match &cfg {
            RunConfig::Pretrain(c) => {
                let tokenizer = TextTokenizer::load(&run_dir.join("tokenizer.json"))?;
                let dataset = reopened_run_data(c, &tokenizer, run_dir, writable)?;
                pretraining_parts(c, tokenizer, dataset, &device)?
            }
            RunConfig::Finetune(c) => {
                finetuning_parts(FinetuneTask::reopen(c, run_dir, Some(&ckpt), &device)?)
            }
        };
        let mut t = Self::build(cfg, run_dir, device, parts, state)?;
        t.load_weights(&ckpt)?;
        if how == Opened::Reader {
            t.read_only = true;
        } else if !t.state.sharded_optimizer {
            // (a sharded state is loaded by each rank once it knows its rank)
            t.load_optimizer(&ckpt)?;
        }
        Ok(t)
    }

    /// Stops this call of [`Trainer::train`] after `step` instead of `train.max_iters` (the saved
    /// config and the learning-rate schedule are unchanged). Refused: step 0 (nothing to train)
    /// and a step past `train.max_iters` — a longer run is a new run with a larger
    /// `train.max_iters`.
    pub fn stop_at(&mut self, step: u64) -> Result<()> {
        check_stop_step(step, self.cfg.train().max_iters)?;
        self.stop_at = Some(step);
        Ok(())
    }

    /// When `flag` becomes true (e.g. from a SIGINT handler), training stops after the current
    /// step and writes a checkpoint of it. On several ranks every rank must be given a flag: at
    /// each step boundary they sum theirs (one collective of one number), so that a flag raised
    /// on any rank stops all of them at the same step, with one consistent checkpoint.
    pub fn stop_when(&mut self, flag: Arc<AtomicBool>) {
        self.stop_flag = Some(flag);
    }

    /// Calls `f` after each checkpoint is written: a moment where work that would slow a step
    /// (returning the allocator's freed memory, say) costs nothing that matters.
    pub fn after_checkpoint(&mut self, f: fn()) {
        self.after_checkpoint = Some(f);
    }

    fn build(
        cfg: RunConfig,
        run_dir: &Path,
        device: Device,
        parts: Parts,
        state: TrainerState,
    ) -> Result<Self> {
        let vars = parts
            .groups
            .iter()
            .flat_map(|g| g.params.iter().map(|(_, v)| v.clone()))
            .collect();
        let preset = cfg.optim().preset(cfg.train())?;
        let groups = parts.groups.clone();
        let opt = preset.build_groups(parts.groups)?;
        Ok(Self {
            metrics: MetricsLog::new(&run_dir.join("metrics.jsonl")),
            run_dir: run_dir.to_path_buf(),
            device,
            tokenizer: parts.tokenizer,
            eos: parts.eos,
            work: parts.work,
            model: parts.model,
            store: parts.store,
            vars,
            opt,
            schedule: preset.schedule,
            schedule_unit: preset.unit,
            clip_norm: preset.clip_norm,
            ramp: preset.batch_ramp,
            state,
            lock: None,
            stop_at: None,
            read_only: false,
            tensorboard: None,
            stop_flag: None,
            after_checkpoint: None,
            nonfinite: None,
            strategy: Arc::new(Strategy::single()),
            block_plan: None,
            groups,
            verbose: false,
            cfg,
        })
    }

    /// The run's configuration.
    pub fn config(&self) -> &RunConfig {
        &self.cfg
    }

    /// Optimizer steps done.
    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// The device the run computes on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The model's parameters.
    pub fn params(&self) -> &ParamStore {
        &self.store
    }

    /// The model.
    pub fn model(&self) -> &dyn LanguageModel {
        self.model.as_ref()
    }

    /// The run's tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// What the run trains on.
    pub fn work(&self) -> &Work {
        &self.work
    }

    /// Tokens per example: the block size in pretraining, the longest input in fine-tuning.
    fn context_len(&self) -> usize {
        match &self.cfg {
            RunConfig::Pretrain(c) => c.model.block_size,
            RunConfig::Finetune(c) => c.finetune.max_len,
        }
    }

    fn schedule_position(&self) -> f64 {
        match self.schedule_unit {
            PresetUnit::Tokens => self.state.tokens_seen as f64,
            PresetUnit::Steps => self.state.step as f64,
        }
    }

    /// The configured precision of the matrix products on this run's device.
    /// The dynamic loss scaler where the products run in f16 (its state from the checkpoint,
    /// its settings from `train.loss_scale_*`); `None` at any other precision.
    fn loss_scaler(&self) -> Result<Option<lm_optim::LossScaler>> {
        if self.matmul_precision() != MatmulPrecision::F16 {
            return Ok(None);
        }
        let t = self.cfg.train();
        let bad = |e: lm_optim::OptimError| TrainError::Config {
            source_name: "train".into(),
            key: "train.loss_scale_init".into(),
            problem: e.to_string(),
        };
        let scaler =
            lm_optim::LossScaler::new(t.loss_scale_init, 2.0, 0.5, t.loss_scale_growth_interval)
                .map_err(bad)?;
        Ok(Some(match self.state.loss_scale {
            Some(st) => scaler
                .resumed(st.scale, st.good_steps, st.overflows)
                .map_err(bad)?,
            None => scaler,
        }))
    }

    fn matmul_precision(&self) -> MatmulPrecision {
        self.cfg.train().matmul_precision.resolve_on(&self.device)
    }

    /// The dropout key of micro-batch `key`: dropout masks are a function of (seed, key).
    fn dropout_key(&self, key: u64) -> u64 {
        self.cfg.train().seed.wrapping_mul(0xA24B_AED4_963E_E407) ^ key
    }

    /// The weights that make this rank's rows contribute their share of the global batch's
    /// loss (scored labels over those of all ranks, rows over rows), and the global batch's
    /// tokens: one all-reduce of two numbers on several ranks, nothing on one.
    pub(super) fn share_weights(&self, share: &Share) -> Result<(LossWeights, u64)> {
        let b = &share.batch;
        if self.strategy.world_size() == 1 {
            return Ok((LossWeights::ONE, b.tokens as u64));
        }
        let scored = b.scored_labels()?;
        let mut sums = [scored as f64, b.tokens as f64];
        self.strategy.sums(&mut sums)?;
        let w = LossWeights {
            tokens: if sums[0] == 0.0 {
                0.0
            } else {
                scored as f64 / sums[0]
            },
            sequences: b.input_ids.dim(0)? as f64 / share.global_rows.max(1) as f64,
        };
        Ok((w, sums[1] as u64))
    }

    /// Global batches: `train.batch_size` per rank × ranks, `grad_accum` of them per step.
    fn step_shape(&self) -> StepShape {
        StepShape {
            batch: self.cfg.train().batch_size * self.strategy.world_size(),
            accum: self.cfg.train().grad_accum,
            ramp: self.ramp.clone(),
            ranks: self.strategy.world_size(),
            rank: self.strategy.rank(),
        }
    }

    /// One optimizer step outside the loop (no logging, evaluation or checkpoint); returns the
    /// training loss, or `None` for a skipped non-finite step. For benchmarks and custom loops.
    /// Under ZeRO-3 a rank holds only its share of the parameters when it returns:
    /// [`Trainer::gather_parameters`] (on every rank) before reading the model.
    pub fn train_one_step(&mut self) -> Result<Option<f32>> {
        self.check_trainable()?;
        let batches = self.step_shape().batches(
            &self.work,
            self.state.step,
            self.state.tokens_seen,
            &self.device,
        )?;
        let Some(report) = self.train_step(&batches)? else {
            return Ok(None);
        };
        Ok(self.settle(&report)?.map(|(loss, _, _)| loss))
    }

    /// Every parameter whole on this rank again after a ZeRO-3 step (a collective: every rank
    /// calls it); nothing to do otherwise, or when they are whole already. [`Trainer::train`]
    /// returns with them whole.
    pub fn gather_parameters(&mut self) -> Result<()> {
        Ok(self.strategy.gather_parameters(&self.vars)?)
    }

    /// ZeRO-3 with activation checkpointing, once a step has learned which parameters each
    /// recomputed block reads: how the step gathers them; `None` otherwise (every parameter is
    /// gathered for the step).
    pub fn zero3_extent(&self) -> Option<crate::zero3::Zero3Extent> {
        self.block_plan.as_ref().map(|p| p.extent(&self.vars))
    }

    /// Model FLOPs of one optimizer step at the configured batch size.
    pub fn flops_per_step(&self) -> f64 {
        let t = self.context_len();
        self.model.flops_per_token(t)
            * (self.cfg.train().batch_size * t * self.cfg.train().grad_accum) as f64
    }

    /// Trains until `max_iters` steps are done, evaluating and checkpointing every
    /// `eval_interval` steps and at the end; stops early when the selection metric has not
    /// improved for `early_stopping_patience` evaluations. A fine-tuning run then reports the
    /// test metrics of its best checkpoint.
    pub fn train(&mut self) -> Result<TrainSummary> {
        self.check_trainable()?;
        let until = self.stop_at.unwrap_or(self.cfg.train().max_iters);
        let pb = self.progress_bar(until);
        let mut summary = TrainSummary {
            step: self.state.step,
            last_eval: None,
            checkpoint: None,
            stopped_early: false,
            interrupted: false,
            results: None,
            data_wait_s: (0.0, 0.0),
        };
        let started = Instant::now();
        let base_elapsed = self.state.elapsed_s;
        let elapsed = || base_elapsed + started.elapsed().as_secs_f64();
        if self.state.step == 0 && until > 0 {
            let (e, dir) = self.eval_and_checkpoint(self.schedule.value(0.0), 0.0, &pb)?;
            summary.last_eval = Some((e.train_loss, e.val_loss));
            summary.checkpoint = Some(dir);
        }
        let prefetch = Prefetch::spawn(
            self.work.clone(),
            self.step_shape(),
            self.state.step..until,
            self.state.tokens_seen,
            self.device.clone(),
        );
        let mut window = (Instant::now(), 0u64);
        let (log_every, eval_every) = (
            self.cfg.train().log_interval,
            self.cfg.train().eval_interval,
        );
        while self.state.step < until {
            let waited = Instant::now();
            let batches = prefetch.next()?;
            summary.data_wait_s.0 += waited.elapsed().as_secs_f64();
            let tokens_before = self.state.tokens_seen;
            let report = self.train_step(&batches)?;
            summary.data_wait_s.1 += waited.elapsed().as_secs_f64();
            window.1 += self.state.tokens_seen - tokens_before;
            let step = self.state.step;
            let logged = step.is_multiple_of(log_every) || step == until;
            let evaluated = step.is_multiple_of(eval_every) || step == until;
            let stop = self.stop_requested()?;
            // The step's values and the skipped steps are read from the device here only.
            let settled = match &report {
                Some(r) if logged || evaluated || stop => self.settle(r)?,
                _ => None,
            };
            if let Some(o) = settled.filter(|_| logged) {
                self.log_training(o, &mut window, elapsed(), &pb)?;
            }
            pb.set_position(step);
            if evaluated {
                self.state.elapsed_s = elapsed();
                let lr = self.schedule.value(self.schedule_position());
                let (e, dir) = self.eval_and_checkpoint(lr, self.state.elapsed_s, &pb)?;
                summary.last_eval = Some((e.train_loss, e.val_loss));
                summary.checkpoint = Some(dir);
                window = (Instant::now(), 0);
                let patience = self.cfg.train().early_stopping_patience;
                if patience > 0 && self.state.evals_since_best >= patience {
                    self.say(&pb, format!("early stopping at step {step}: no improvement in {patience} evaluations"));
                    summary.stopped_early = true;
                    break;
                }
            } else if stop {
                self.state.elapsed_s = elapsed();
                summary.checkpoint = Some(self.save_checkpoint()?);
            }
            if stop {
                summary.interrupted = true;
                break;
            }
        }
        pb.finish_and_clear();
        summary.step = self.state.step;
        if !summary.interrupted {
            summary.results = self.finish()?;
        }
        Ok(summary)
    }

    /// Whether this rank's stop flag, or any rank's, is raised.
    fn stop_requested(&self) -> Result<bool> {
        let Some(flag) = &self.stop_flag else {
            return Ok(false);
        };
        let mine = flag.load(Ordering::Relaxed);
        if self.strategy.world_size() == 1 {
            return Ok(mine);
        }
        Ok(self.strategy.sum(f64::from(u8::from(mine)))? > 0.0)
    }

    /// After the loop: a fine-tuning run loads its best checkpoint's weights and reports its test
    /// metrics (`results.json`); pretraining has nothing to add.
    fn finish(&mut self) -> Result<Option<FinetuneResults>> {
        let Work::Finetune(task) = &self.work else {
            return Ok(None);
        };
        let Some((best_step, best_value)) = self.state.best else {
            return Ok(None);
        };
        // Rank 0 may still be writing the last checkpoint: the others look after this.
        self.strategy.barrier()?;
        self.strategy.gather_parameters(&self.vars)?;
        let best_dir = checkpoint::list_checkpoints(&self.run_dir)?
            .into_iter()
            .find(|(s, _)| *s == best_step)
            .map(|(_, d)| d)
            .ok_or_else(|| TrainError::Checkpoint {
                path: self.run_dir.clone(),
                problem: format!("the best checkpoint (step {best_step}) is missing"),
            })?;
        self.store
            .load_safetensors(&best_dir.join("model.safetensors"), |n| Some(n.to_string()))?;
        let model = (self.model.as_ref(), self.matmul_precision());
        let (device, run_dir, step) = (&self.device, &self.run_dir, self.state.step);
        let comm = self.strategy.comm();
        let best = (best_step, best_value, best_dir);
        let report = || task.report(model, device, run_dir, step, best, comm);
        on_compute_threads(|| candle_core::recompute::no_grad(report)).map(Some)
    }
}
