//! The training loop. One step reads like the chapter's pseudo-code:
//!
//! ```text
//! η_t  ← schedule(t)                                 (t in steps or tokens seen)
//! g    ← ∇_θ mean over the batch of the objective's negative log-likelihood
//!                                                     (summed over grad_accum micro-batches)
//! g    ← g · min(1, c/‖g‖)                           (global-norm clipping)
//! θ    ← update(θ, g, η_t)                            (SGD, Adam, AdamW or AdaFactor)
//! ```
//!
//! Batches are prepared on a background thread. The gradient store between backward and the
//! optimizer step is where a data-parallel backend would all-reduce gradients; batches are keyed
//! by step, so such a backend shards data by giving each rank its own keys.

use lm_kernels::precision::{with_matmul_precision, MatmulPrecision};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{backprop::GradStore, Device, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use lm_models::{ParamStore, Sampling};
use lm_objectives::Rng;
use lm_optim::{
    AdaFactor, AdaFactorConfig, AdaFactorLr, Adam, AdamConfig, BatchSizeRamp, Optimizer,
    ParamGroup, Schedule, Sgd, SgdConfig,
};

use crate::batches::{BatchSource, Specials};
use crate::checkpoint::{self, CheckpointWriter, TrainerState};
use crate::config::TrainConfig;
use crate::data::{load_corpus, Split, TokenizedCorpus};
use crate::error::{io_err, Result, TrainError};
use crate::metrics::{MetricRecord, MetricsLog};
use crate::model::{AnyModel, Batch};
use crate::tokenizer::{TextTokenizer, TokenizerKind};

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
}

/// A training run: model, optimizer, data and run directory.
pub struct Trainer {
    cfg: TrainConfig,
    run_dir: PathBuf,
    device: Device,
    tokenizer: TextTokenizer,
    specials: Specials,
    source: Arc<BatchSource>,
    model: AnyModel,
    store: ParamStore,
    vars: Vec<Var>,
    opt: Box<dyn Optimizer>,
    schedule: Schedule,
    ramp: Option<BatchSizeRamp>,
    state: TrainerState,
    metrics: MetricsLog,
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

/// The device training runs on: the first CUDA or Metal device when built with that feature
/// and one is present, else the CPU.
pub fn default_device() -> Device {
    if candle_core::utils::cuda_is_available() {
        Device::new_cuda(0).unwrap_or(Device::Cpu)
    } else if candle_core::utils::metal_is_available() {
        Device::new_metal(0).unwrap_or(Device::Cpu)
    } else {
        Device::Cpu
    }
}

fn tokenizer_kind(name: &str) -> TokenizerKind {
    match name {
        "bpe" => TokenizerKind::Bpe,
        "wordpiece" => TokenizerKind::Wordpiece,
        "unigram" => TokenizerKind::Unigram,
        _ => TokenizerKind::Char,
    }
}

fn family_for_tokens(family: &str) -> &str {
    if family == "roberta" {
        "roberta"
    } else {
        family
    }
}

/// The learning-rate schedule a config describes (positions in steps or tokens).
pub fn schedule_of(cfg: &TrainConfig) -> Result<Schedule> {
    let o = &cfg.optim;
    let (warmup, total) = if o.schedule_unit == "tokens" {
        (
            o.warmup_tokens.unwrap_or(0.0),
            o.decay_tokens.unwrap_or(0.0),
        )
    } else {
        (o.warmup_iters as f64, cfg.lr_decay_iters() as f64)
    };
    let warm = Schedule::Linear {
        from: 0.0,
        to: o.lr,
        length: warmup,
    };
    Ok(match o.schedule.as_str() {
        "cosine" => Schedule::warmup_cosine(o.lr, o.min_lr, warmup, total)?,
        "linear" => Schedule::warmup_linear(o.lr, warmup, total)?,
        "inverse_sqrt" => Schedule::InverseSqrt {
            peak: o.lr,
            warmup: warmup.max(1.0),
        },
        _ => Schedule::Sequence(vec![warm, Schedule::Constant(o.lr)]),
    })
}

fn build_optimizer(
    cfg: &TrainConfig,
    decay: Vec<(String, Var)>,
    no_decay: Vec<(String, Var)>,
) -> Result<Box<dyn Optimizer>> {
    let o = &cfg.optim;
    let groups = vec![
        ParamGroup::new("decay", decay, o.weight_decay),
        ParamGroup::new("no_decay", no_decay, 0.0),
    ];
    Ok(match o.name.as_str() {
        "sgd" => Box::new(Sgd::new(
            groups,
            SgdConfig {
                momentum: o.momentum,
                ..Default::default()
            },
        )?),
        // The schedule gives the relative step; each update is scaled by the parameter's RMS, as
        // in Mesh TensorFlow's T5 (`multiply_by_parameter_scale`). Without that scaling, a step of
        // 1e−2 grows T5's small-initialized query weights ~9× in a few hundred steps, saturating
        // its unscaled attention (the checkpoint then fine-tunes badly).
        "adafactor" => Box::new(AdaFactor::new(
            groups,
            AdaFactorConfig {
                lr: AdaFactorLr::External,
                scale_parameter: true,
                ..Default::default()
            },
        )?),
        name => {
            let base = if name == "adam" {
                AdamConfig::adam()
            } else {
                AdamConfig::adamw()
            };
            Box::new(Adam::new(
                groups,
                base.with_betas(o.beta1, o.beta2).with_eps(o.eps),
            )?)
        }
    })
}

/// Batches of one optimizer step, made ahead on a background thread.
struct Prefetch {
    rx: Receiver<Result<Vec<Batch>>>,
}

/// The micro-batches of optimizer step `step`: keys `step·accum + m`, the batch size from the ramp
/// at `tokens_seen` (or `batch`).
fn step_batches(
    source: &BatchSource,
    ramp: Option<&BatchSizeRamp>,
    batch: usize,
    accum: usize,
    step: u64,
    tokens_seen: u64,
    device: &Device,
) -> Result<Vec<Batch>> {
    let b = ramp.map_or(batch, |r| r.batch_size(tokens_seen as f64));
    (0..accum)
        .map(|m| source.batch(Split::Train, step * accum as u64 + m as u64, b, device))
        .collect()
}

impl Prefetch {
    fn spawn(
        source: Arc<BatchSource>,
        cfg: &TrainConfig,
        ramp: Option<BatchSizeRamp>,
        from: u64,
        until: u64,
        tokens_seen: u64,
        device: Device,
    ) -> Self {
        let (tx, rx) = sync_channel(2);
        let (accum, batch) = (cfg.train.grad_accum, cfg.train.batch_size);
        std::thread::spawn(move || {
            let mut tokens = tokens_seen;
            for step in from..until {
                let batches =
                    step_batches(&source, ramp.as_ref(), batch, accum, step, tokens, &device);
                // Count what the trainer will count, so the ramp sees the same tokens on resume.
                if let Ok(bs) = &batches {
                    tokens += bs.iter().map(|b| b.tokens as u64).sum::<u64>();
                }
                if tx.send(batches).is_err() {
                    return; // the trainer stopped early
                }
            }
        });
        Self { rx }
    }

    fn next(&self) -> Result<Vec<Batch>> {
        self.rx.recv().unwrap_or_else(|_| {
            Err(TrainError::Corpus {
                corpus: "batch thread".into(),
                problem: "stopped unexpectedly".into(),
            })
        })
    }
}

impl Trainer {
    /// Starts a new run in `run_dir`, which must not already hold one.
    pub fn new(mut cfg: TrainConfig, run_dir: &Path, device: Device) -> Result<Self> {
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
        cfg.optim.lr_decay_iters = Some(cfg.lr_decay_iters());
        let corpus = load_corpus(&cfg.data.corpus)?;
        let kind = tokenizer_kind(&cfg.data.tokenizer);
        let family = family_for_tokens(&cfg.model.family).to_string();
        let tokenizer = match &cfg.data.tokenizer_file {
            Some(f) => {
                let t = TextTokenizer::load(Path::new(f))?;
                if let Some(v) = cfg.data.vocab_size.filter(|&v| v != t.vocab_size()) {
                    return Err(TrainError::Config {
                        source_name: f.clone(),
                        key: "data.vocab_size".into(),
                        problem: format!("the tokenizer has {} tokens but the config asks for {v}; remove data.vocab_size or use a matching tokenizer", t.vocab_size()),
                    });
                }
                t
            }
            None if kind == TokenizerKind::Char => {
                TextTokenizer::train(kind, &family, 0, &[&corpus])?
            }
            None => {
                // Trained on the training part of the corpus only.
                let cut = corpus.floor_char_boundary(
                    (corpus.len() as f64 * (1.0 - cfg.data.val_fraction)) as usize,
                );
                let lines: Vec<&str> = corpus[..cut].lines().collect();
                TextTokenizer::train(kind, &family, cfg.data.vocab_size.unwrap_or(2000), &lines)?
            }
        };
        std::fs::create_dir_all(run_dir).map_err(io_err(run_dir))?;
        tokenizer.save(&run_dir.join("tokenizer.json"))?;
        let tokens = TokenizedCorpus::build(&corpus, &tokenizer, &run_dir.join("tokens.bin"))?;
        checkpoint::write_atomic(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
        let state = TrainerState {
            step: 0,
            rng: Rng::seed_from_u64(cfg.train.seed).state(),
            tokens_seen: 0,
            elapsed_s: 0.0,
            best: None,
            evals_since_best: 0,
        };
        Self::build(cfg, run_dir, device, tokenizer, tokens, state)
    }

    /// Reopens the run in `run_dir` at its newest checkpoint; `max_iters` replaces the saved
    /// stopping point when given.
    pub fn resume(run_dir: &Path, max_iters: Option<u64>, device: Device) -> Result<Self> {
        let mut cfg = TrainConfig::from_file(&run_dir.join("config.toml"))?;
        if let Some(n) = max_iters {
            cfg.train.max_iters = n;
        }
        let ckpt = checkpoint::latest_checkpoint(run_dir)?;
        let state = checkpoint::read_state(&ckpt)?;
        let tokenizer = TextTokenizer::load(&run_dir.join("tokenizer.json"))?;
        let tokens = match TokenizedCorpus::open(&run_dir.join("tokens.bin")) {
            Ok(t) => t,
            Err(_) => TokenizedCorpus::build(
                &load_corpus(&cfg.data.corpus)?,
                &tokenizer,
                &run_dir.join("tokens.bin"),
            )?,
        };
        let mut t = Self::build(cfg, run_dir, device, tokenizer, tokens, state)?;
        t.load_weights_and_optimizer(&ckpt)?;
        t.metrics.truncate_after(t.state.step)?;
        checkpoint::write_atomic(&run_dir.join("config.toml"), t.cfg.to_toml().as_bytes())?;
        Ok(t)
    }

    fn build(
        cfg: TrainConfig,
        run_dir: &Path,
        device: Device,
        tokenizer: TextTokenizer,
        tokens: TokenizedCorpus,
        state: TrainerState,
    ) -> Result<Self> {
        let kind = tokenizer_kind(&cfg.data.tokenizer);
        let family = family_for_tokens(&cfg.model.family);
        let specials = Specials::of(
            if family == "roberta" { "bart" } else { family },
            &tokenizer,
            kind,
        )?;
        let vocab = tokenizer.vocab_size();
        let source = Arc::new(BatchSource::new(
            &cfg,
            Arc::new(tokens),
            specials.clone(),
            vocab,
        )?);
        let (model, store) = AnyModel::build(
            &cfg,
            vocab,
            specials.pad,
            specials.eos,
            specials.bos,
            &device,
        )?;
        let (decay, no_decay) = model.param_groups(&store);
        let vars = decay
            .iter()
            .chain(&no_decay)
            .map(|(_, v)| v.clone())
            .collect();
        let opt = build_optimizer(&cfg, decay, no_decay)?;
        let schedule = schedule_of(&cfg)?;
        let ramp = cfg.train.batch_ramp_start.map(|start| BatchSizeRamp {
            start,
            end: cfg.train.batch_size,
            ramp_tokens: cfg.train.batch_ramp_tokens,
            multiple: start,
        });
        Ok(Self {
            metrics: MetricsLog::new(&run_dir.join("metrics.jsonl")),
            run_dir: run_dir.to_path_buf(),
            cfg,
            device,
            tokenizer,
            specials,
            source,
            model,
            store,
            vars,
            opt,
            schedule,
            ramp,
            state,
            verbose: false,
        })
    }

    fn load_weights_and_optimizer(&mut self, ckpt: &Path) -> Result<()> {
        let config = ckpt.join("config.json");
        if let Ok(text) = std::fs::read_to_string(&config) {
            let saved: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(v) = saved.get("vocab_size").and_then(|v| v.as_u64()) {
                if v as usize != self.tokenizer.vocab_size() {
                    return Err(TrainError::Checkpoint {
                        path: config,
                        problem: format!("the model has vocab_size {v} but the run's tokenizer.json has {} tokens; restore the run's own tokenizer.json", self.tokenizer.vocab_size()),
                    });
                }
            }
        }
        self.store
            .load_safetensors(&ckpt.join("model.safetensors"), |n| Some(n.to_string()))?;
        let opt_path = ckpt.join("optimizer.safetensors");
        lm_optim::load_state(self.opt.as_mut(), &opt_path, &self.device).map_err(|e| {
            TrainError::Checkpoint {
                path: opt_path.clone(),
                problem: format!("cannot restore the optimizer: {e}"),
            }
        })?;
        if self.opt.steps() != self.state.step {
            return Err(TrainError::Checkpoint {
                path: opt_path,
                problem: format!(
                    "optimizer is at step {} but state.json says {}",
                    self.opt.steps(),
                    self.state.step
                ),
            });
        }
        Ok(())
    }

    /// The run's configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Optimizer steps done.
    pub fn step(&self) -> u64 {
        self.state.step
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
    pub fn model(&self) -> &AnyModel {
        &self.model
    }

    /// The run's tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    fn schedule_position(&self) -> f64 {
        if self.cfg.optim.schedule_unit == "tokens" {
            self.state.tokens_seen as f64
        } else {
            self.state.step as f64
        }
    }

    /// Forward and backward over the micro-batches of one step; the loss is their mean and the
    /// gradients are those of the mean.
    fn forward_backward(&mut self, batches: &[Batch]) -> Result<(f32, GradStore)> {
        with_matmul_precision(self.matmul_precision(), || {
            self.forward_backward_inner(batches)
        })
    }

    /// The configured precision of the matrix products.
    fn matmul_precision(&self) -> MatmulPrecision {
        if self.cfg.train.matmul_precision == "bf16" {
            MatmulPrecision::Bf16
        } else {
            MatmulPrecision::Highest
        }
    }

    fn forward_backward_inner(&mut self, batches: &[Batch]) -> Result<(f32, GradStore)> {
        let accum = batches.len();
        let mut total: Option<GradStore> = None;
        let mut loss_sum = 0f32;
        for b in batches {
            let loss = self.model.loss(b)?;
            let loss = if accum > 1 {
                (loss / accum as f64)?
            } else {
                loss
            };
            loss_sum += loss.to_scalar::<f32>()?;
            let grads = loss.backward()?;
            total = Some(match total {
                None => grads,
                Some(mut acc) => {
                    for v in &self.vars {
                        if let (Some(a), Some(g)) =
                            (acc.remove(v.as_tensor()), grads.get(v.as_tensor()))
                        {
                            acc.insert(v.as_tensor(), (a + g)?);
                        }
                    }
                    acc
                }
            });
        }
        Ok((loss_sum, total.expect("grad_accum ≥ 1")))
    }

    /// One optimizer step on prepared batches. Returns the loss, pre-clip norm and lr, or `None`
    /// for a skipped non-finite step.
    fn train_step(&mut self, batches: &[Batch]) -> Result<Option<(f32, f64, f64)>> {
        lm_kernels::threads::on_compute_threads(|| self.train_step_on_pool(batches))
    }

    fn train_step_on_pool(&mut self, batches: &[Batch]) -> Result<Option<(f32, f64, f64)>> {
        let lr = self.schedule.value(self.schedule_position());
        self.model.set_training(true);
        let (loss, mut grads) = self.forward_backward(batches)?;
        self.state.tokens_seen += batches.iter().map(|b| b.tokens as u64).sum::<u64>();
        if !loss.is_finite() {
            self.state.step += 1;
            if self.cfg.train.on_nonfinite_loss == "skip" {
                eprintln!("step {}: loss is {loss}, step skipped", self.state.step);
                return Ok(None);
            }
            return Err(TrainError::NonFiniteLoss {
                step: self.state.step,
                loss,
            });
        }
        let clip = self.cfg.optim.grad_clip;
        let norm = lm_optim::clip::grad_norm(&grads, &self.vars)?;
        // Clipping as a factor the optimizer applies (Adam: inside its fused update).
        let scale = if clip > 0.0 {
            lm_optim::clip::clip_factor(norm, clip)?
        } else {
            1.0
        };
        self.opt.step_scaled(&mut grads, lr, scale)?;
        self.state.step += 1;
        Ok(Some((loss, norm, lr)))
    }

    /// One optimizer step outside the loop (no logging, evaluation or checkpoint); returns the
    /// training loss, or `None` for a skipped non-finite step. For benchmarks and custom loops.
    pub fn train_one_step(&mut self) -> Result<Option<f32>> {
        let t = &self.cfg.train;
        let batches = step_batches(
            &self.source,
            self.ramp.as_ref(),
            t.batch_size,
            t.grad_accum,
            self.state.step,
            self.state.tokens_seen,
            &self.device,
        )?;
        Ok(self.train_step(&batches)?.map(|(loss, _, _)| loss))
    }

    /// Model FLOPs of one optimizer step at the configured batch size.
    pub fn flops_per_step(&self) -> f64 {
        let t = self.cfg.model.block_size;
        self.model.flops_per_token(t)
            * (self.cfg.train.batch_size * t * self.cfg.train.grad_accum) as f64
    }

    /// Mean loss over the fixed evaluation batches of `split`, dropout off.
    pub fn evaluate_split(&mut self, split: Split) -> Result<f32> {
        let p = self.matmul_precision();
        lm_kernels::threads::on_compute_threads(|| {
            with_matmul_precision(p, || self.evaluate_split_inner(split))
        })
    }

    fn evaluate_split_inner(&mut self, split: Split) -> Result<f32> {
        self.model.set_training(false);
        let mut sum = 0f32;
        for i in 0..self.cfg.train.eval_iters {
            let b = self.source.batch(
                split,
                (1 << 40) + i as u64,
                self.cfg.train.batch_size,
                &self.device,
            )?;
            sum += self.model.loss(&b)?.to_scalar::<f32>()?;
        }
        self.model.set_training(true);
        Ok(sum / self.cfg.train.eval_iters as f32)
    }

    /// (train, val) evaluation losses.
    pub fn evaluate(&mut self) -> Result<(f32, f32)> {
        Ok((
            self.evaluate_split(Split::Train)?,
            self.evaluate_split(Split::Val)?,
        ))
    }

    /// Writes a checkpoint of the current step and prunes old ones.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let w = CheckpointWriter::begin(&self.run_dir, self.state.step)?;
        let written = (|| -> Result<()> {
            lm_models::hf::save_dir(&self.store, &self.model.hf_config(), w.dir())?;
            lm_optim::save_state(self.opt.as_ref(), &w.path("optimizer.safetensors"))?;
            let state = serde_json::to_string_pretty(&self.state).expect("state serializes");
            checkpoint::write_atomic(&w.path("state.json"), state.as_bytes())?;
            self.tokenizer.save(&w.path("tokenizer.json"))?;
            Ok(())
        })();
        match written {
            Ok(()) => {
                let dir = w.commit()?;
                checkpoint::prune(
                    &self.run_dir,
                    self.cfg.train.keep_checkpoints,
                    self.state.best.map(|b| b.0),
                )?;
                Ok(dir)
            }
            Err(e) => {
                w.abort();
                Err(e)
            }
        }
    }

    fn eval_and_checkpoint(
        &mut self,
        lr: f64,
        elapsed: f64,
        pb: &ProgressBar,
    ) -> Result<(f32, f32, PathBuf)> {
        let (train, val) = self.evaluate()?;
        if self.state.best.is_none_or(|(_, b)| val < b) {
            self.state.best = Some((self.state.step, val));
            self.state.evals_since_best = 0;
        } else {
            self.state.evals_since_best += 1;
        }
        self.metrics.append(&MetricRecord {
            step: self.state.step,
            lr,
            train_loss: train,
            tokens_per_sec: 0.0,
            elapsed_s: elapsed,
            val_loss: Some(val),
            grad_norm: None,
            mfu: None,
        })?;
        self.say(
            pb,
            format!(
                "step {:>5}: train loss {train:.4}, val loss {val:.4}",
                self.state.step
            ),
        );
        let dir = self.save_checkpoint()?;
        Ok((train, val, dir))
    }

    fn say(&self, pb: &ProgressBar, line: String) {
        if self.verbose {
            pb.suspend(|| println!("{line}"));
        }
    }

    /// Trains until `max_iters` steps are done, evaluating and checkpointing every
    /// `eval_interval` steps and at the end; stops early when the validation loss has not
    /// improved for `early_stopping_patience` evaluations.
    pub fn train(&mut self) -> Result<TrainSummary> {
        let until = self.cfg.train.max_iters;
        let pb = if self.verbose {
            ProgressBar::new(until)
        } else {
            ProgressBar::hidden()
        };
        pb.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .expect("a valid template"),
        );
        pb.set_position(self.state.step);
        let mut summary = TrainSummary {
            step: self.state.step,
            last_eval: None,
            checkpoint: None,
            stopped_early: false,
        };
        let started = Instant::now();
        let base_elapsed = self.state.elapsed_s;
        let elapsed = || base_elapsed + started.elapsed().as_secs_f64();
        if self.state.step == 0 && until > 0 {
            let (tr, va, dir) = self.eval_and_checkpoint(self.schedule.value(0.0), 0.0, &pb)?;
            summary.last_eval = Some((tr, va));
            summary.checkpoint = Some(dir);
        }
        let prefetch = Prefetch::spawn(
            self.source.clone(),
            &self.cfg,
            self.ramp.clone(),
            self.state.step,
            until,
            self.state.tokens_seen,
            self.device.clone(),
        );
        let mut window_start = Instant::now();
        let mut window_tokens = 0u64;
        while self.state.step < until {
            let batches = prefetch.next()?;
            let tokens: u64 = batches.iter().map(|b| b.tokens as u64).sum();
            let outcome = self.train_step(&batches)?;
            window_tokens += tokens;
            let step = self.state.step;
            if let Some((loss, norm, lr)) = outcome {
                if step.is_multiple_of(self.cfg.train.log_interval) || step == until {
                    let secs = window_start.elapsed().as_secs_f64();
                    let tokens_per_sec = window_tokens as f64 / secs;
                    self.state.elapsed_s = elapsed();
                    let flops = self.model.flops_per_token(self.cfg.model.block_size)
                        * window_tokens as f64;
                    self.metrics.append(&MetricRecord {
                        step,
                        lr,
                        train_loss: loss,
                        tokens_per_sec,
                        elapsed_s: self.state.elapsed_s,
                        val_loss: None,
                        grad_norm: Some(norm),
                        mfu: Some(flops / secs / self.cfg.train.peak_flops),
                    })?;
                    pb.set_message(format!(
                        "loss {loss:.4} lr {lr:.2e} {tokens_per_sec:.0} tok/s"
                    ));
                    window_start = Instant::now();
                    window_tokens = 0;
                }
            }
            pb.set_position(step);
            if step.is_multiple_of(self.cfg.train.eval_interval) || step == until {
                self.state.elapsed_s = elapsed();
                let lr = self.schedule.value(self.schedule_position());
                let (tr, va, dir) = self.eval_and_checkpoint(lr, self.state.elapsed_s, &pb)?;
                summary.last_eval = Some((tr, va));
                summary.checkpoint = Some(dir);
                window_start = Instant::now();
                window_tokens = 0;
                let patience = self.cfg.train.early_stopping_patience;
                if patience > 0 && self.state.evals_since_best >= patience {
                    self.say(&pb, format!("early stopping at step {step}: no improvement in {patience} evaluations"));
                    summary.stopped_early = true;
                    break;
                }
            }
        }
        pb.finish_and_clear();
        summary.step = self.state.step;
        Ok(summary)
    }

    /// A sample from the model: GPT continues a newline (nanoGPT's `sample.py`: temperature 0.8,
    /// top-k 200); BART and T5 reconstruct the first validation example, shown with its input.
    /// BERT has no generation and gives `None`.
    pub fn sample(&self, n_tokens: usize, seed: u64) -> Result<Option<String>> {
        self.sample_from(None, n_tokens, seed)
    }

    /// Like [`Trainer::sample`], GPT continuing `prompt` when given.
    pub fn sample_from(
        &self,
        prompt: Option<&str>,
        n_tokens: usize,
        seed: u64,
    ) -> Result<Option<String>> {
        let sampling = Sampling {
            temperature: 0.8,
            top_k: Some(200),
            top_p: None,
        };
        let mut rng = Rng::seed_from_u64(seed);
        Ok(match &self.model {
            AnyModel::Gpt(m) => {
                let prompt = self
                    .tokenizer
                    .encode(prompt.unwrap_or("\n"))
                    .ok()
                    .filter(|p| !p.is_empty())
                    .unwrap_or(vec![self.specials.eos]);
                let ids = m.generate(&prompt, n_tokens, &sampling, &mut rng)?;
                Some(self.tokenizer.decode(&ids[prompt.len()..]))
            }
            AnyModel::Bart(_) | AnyModel::T5(_) => {
                let b = self.source.batch(Split::Val, 1 << 40, 1, &self.device)?;
                let input: Vec<u32> = b.input_ids.flatten_all()?.to_vec1()?;
                let input_t = Tensor::new(input.as_slice(), &self.device)?.unsqueeze(0)?;
                let out = match &self.model {
                    AnyModel::Bart(m) => {
                        m.generate(&input_t, n_tokens, &Sampling::greedy(), &mut rng, true)?
                    }
                    AnyModel::T5(m) => {
                        m.generate(&input_t, n_tokens, &Sampling::greedy(), &mut rng, true)?
                    }
                    _ => unreachable!(),
                };
                let show = |ids: &[u32]| match &self.tokenizer {
                    TextTokenizer::Hf(t) => t.decode(ids, false).unwrap_or_default(),
                    other => other.decode(ids),
                };
                Some(format!("input:  {}\noutput: {}", show(&input), show(&out)))
            }
            AnyModel::Bert(_) => None,
        })
    }
}

/// Per-token negative log-likelihood (nats) of `text` under a causal LM: a run directory (its
/// newest checkpoint), a checkpoint directory, or a HuggingFace GPT-2 directory with a
/// `tokenizer.json`. Returns each predicted token's text and NLL (the first token has no context
/// and is not scored).
pub fn score_text(dir: &Path, text: &str, device: &Device) -> Result<Vec<(String, f32)>> {
    let ckpt = if dir.join("model.safetensors").exists() {
        dir.to_path_buf()
    } else {
        checkpoint::latest_checkpoint(dir)?
    };
    let tok_path = if ckpt.join("tokenizer.json").exists() {
        ckpt.join("tokenizer.json")
    } else {
        dir.join("tokenizer.json")
    };
    let tokenizer = TextTokenizer::load(&tok_path)?;
    let (model, _) = lm_models::gpt::Gpt::from_hf_dir(&ckpt, device)?;
    model.set_training(false);
    let ids = tokenizer.encode(text)?;
    if ids.len() < 2 {
        return Err(TrainError::Corpus {
            corpus: "text to score".into(),
            problem: format!("{} token(s); scoring needs at least 2", ids.len()),
        });
    }
    // The first context-length window scores its tokens in one pass; each later token is scored
    // with the context-length window that ends just before it.
    let ctx = model.config().n_positions;
    let logp = |window: &[u32]| -> Result<Vec<Vec<f32>>> {
        let logits = model
            .forward(&Tensor::new(window, device)?.unsqueeze(0)?)?
            .squeeze(0)?;
        Ok(
            lm_objectives::loss::log_softmax_last_dim(&logits.to_dtype(candle_core::DType::F32)?)?
                .to_vec2()?,
        )
    };
    let first = logp(&ids[..ids.len().min(ctx)])?;
    let mut out: Vec<(String, f32)> = (1..ids.len().min(ctx))
        .map(|i| {
            (
                tokenizer.decode(&ids[i..i + 1]),
                -first[i - 1][ids[i] as usize],
            )
        })
        .collect();
    for i in ctx..ids.len() {
        let rows = logp(&ids[i - ctx..i])?;
        out.push((
            tokenizer.decode(&ids[i..i + 1]),
            -rows[ctx - 1][ids[i] as usize],
        ));
    }
    Ok(out)
}
