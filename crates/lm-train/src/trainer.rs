//! The training loop. One step reads like the chapter's pseudo-code:
//!
//! ```text
//! η_t  ← schedule(t)
//! g    ← ∇_θ (1/B) Σ_{x ∈ batch} −log p_θ(x)       (summed over grad_accum micro-batches)
//! g    ← g · min(1, c/‖g‖)                           (global-norm clipping)
//! θ    ← AdamW(θ, g, η_t)
//! ```
//!
//! The gradient store between backward and the optimizer step is the seam where a data-parallel
//! backend would all-reduce gradients; batch sampling takes its own generator, which such a
//! backend would fork per rank.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{backprop::GradStore, Device, Var};
use indicatif::{ProgressBar, ProgressStyle};
use lm_models::gpt::{Gpt, GptConfig};
use lm_models::{ParamStore, Sampling};
use lm_objectives::loss::{cross_entropy, CrossEntropy};
use lm_objectives::Rng;
use lm_optim::{clip::clip_grad_norm, Adam, AdamConfig, Optimizer, ParamGroup, Schedule};

use crate::checkpoint::{self, CheckpointWriter, TrainerState};
use crate::config::TrainConfig;
use crate::data::{load_corpus, Split, TokenSplits};
use crate::error::{io_err, Result, TrainError};
use crate::metrics::{MetricRecord, MetricsLog};
use crate::tokenizer::CharTokenizer;

/// What a finished (or stopped) training call reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// Optimizer steps done in total.
    pub step: u64,
    /// Last evaluation: (train, val) loss.
    pub last_eval: Option<(f32, f32)>,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
}

/// A training run: model, optimizer, data and run directory.
pub struct Trainer {
    cfg: TrainConfig,
    run_dir: PathBuf,
    device: Device,
    tokenizer: CharTokenizer,
    data: TokenSplits,
    model: Gpt,
    store: ParamStore,
    vars: Vec<Var>,
    opt: Adam,
    schedule: Schedule,
    rng: Rng,
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

impl Trainer {
    /// Starts a new run in `run_dir`, which must not already hold one.
    pub fn new(mut cfg: TrainConfig, run_dir: &Path, device: Device) -> Result<Self> {
        if run_dir.join("config.toml").exists()
            || !checkpoint::list_checkpoints(run_dir)?.is_empty()
        {
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
        let tokenizer = CharTokenizer::fit(&corpus);
        std::fs::create_dir_all(run_dir).map_err(io_err(run_dir))?;
        checkpoint::write_atomic(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
        tokenizer.save(&run_dir.join("tokenizer.json"))?;
        let state = TrainerState {
            step: 0,
            rng: Rng::seed_from_u64(cfg.train.seed).state(),
            tokens_seen: 0,
            elapsed_s: 0.0,
            best: None,
        };
        Self::build(cfg, run_dir, device, tokenizer, &corpus, state)
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
        let tokenizer = CharTokenizer::load(&run_dir.join("tokenizer.json"))?;
        let corpus = load_corpus(&cfg.data.corpus)?;
        let mut t = Self::build(cfg, run_dir, device, tokenizer, &corpus, state)?;
        t.load_weights_and_optimizer(&ckpt)?;
        t.metrics.truncate_after(t.state.step)?;
        checkpoint::write_atomic(&run_dir.join("config.toml"), t.cfg.to_toml().as_bytes())?;
        Ok(t)
    }

    fn build(
        cfg: TrainConfig,
        run_dir: &Path,
        device: Device,
        tokenizer: CharTokenizer,
        corpus: &str,
        state: TrainerState,
    ) -> Result<Self> {
        let tokens = tokenizer.encode(corpus).map_err(|c| TrainError::Corpus {
            corpus: cfg.data.corpus.clone(),
            problem: format!("character {c:?} is not in the run's tokenizer"),
        })?;
        let data = TokenSplits::new(
            tokens,
            cfg.data.val_fraction,
            cfg.model.block_size,
            &cfg.data.corpus,
        )?;
        let m = &cfg.model;
        let mut gpt_cfg = GptConfig::new(
            tokenizer.vocab_size(),
            m.block_size,
            m.n_embd,
            m.n_layer,
            m.n_head,
        );
        gpt_cfg.dropout = m.dropout;
        let (model, store) = Gpt::init(&gpt_cfg, cfg.train.seed, &device)?;
        let (decay, no_decay) = Gpt::decay_groups(&store);
        let o = &cfg.optim;
        let adam = if o.name == "adam" {
            AdamConfig::adam()
        } else {
            AdamConfig::adamw()
        };
        let opt = Adam::new(
            vec![
                ParamGroup::new("decay", decay, o.weight_decay),
                ParamGroup::new("no_decay", no_decay, 0.0),
            ],
            adam.with_betas(o.beta1, o.beta2).with_eps(o.eps),
        )?;
        let schedule = Schedule::warmup_cosine(
            o.lr,
            o.min_lr,
            o.warmup_iters as f64,
            cfg.lr_decay_iters() as f64,
        )?;
        let vars = store.vars().into_iter().map(|(_, v)| v).collect();
        Ok(Self {
            rng: Rng::from_state(state.rng),
            metrics: MetricsLog::new(&run_dir.join("metrics.jsonl")),
            run_dir: run_dir.to_path_buf(),
            cfg,
            device,
            tokenizer,
            data,
            model,
            store,
            vars,
            opt,
            schedule,
            state,
            verbose: false,
        })
    }

    fn load_weights_and_optimizer(&mut self, ckpt: &Path) -> Result<()> {
        self.store
            .load_safetensors(&ckpt.join("model.safetensors"), |n| Some(n.to_string()))?;
        let opt_path = ckpt.join("optimizer.safetensors");
        lm_optim::load_state(&mut self.opt, &opt_path, &self.device).map_err(|e| {
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

    fn tokens_per_step(&self) -> u64 {
        (self.cfg.train.batch_size * self.cfg.model.block_size * self.cfg.train.grad_accum) as u64
    }

    /// Forward and backward over `grad_accum` micro-batches; the loss is their mean and the
    /// gradients are those of the mean.
    fn forward_backward(&mut self) -> Result<(f32, GradStore)> {
        let t = &self.cfg.train;
        let accum = t.grad_accum;
        let mut total: Option<GradStore> = None;
        let mut loss_sum = 0f32;
        for _ in 0..accum {
            let (x, y) = self.data.batch(
                Split::Train,
                t.batch_size,
                self.cfg.model.block_size,
                &mut self.rng,
                &self.device,
            )?;
            let logits = self.model.forward(&x)?;
            let loss = cross_entropy(&logits, &y, &CrossEntropy::default())?;
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

    /// One optimizer step. Returns the training loss, the pre-clip gradient norm and the lr.
    fn train_step(&mut self) -> Result<Option<(f32, f64, f64)>> {
        let lr = self.schedule.value(self.state.step as f64);
        self.model.set_training(true);
        let (loss, mut grads) = self.forward_backward()?;
        self.state.tokens_seen += self.tokens_per_step();
        if !loss.is_finite() {
            if self.cfg.train.on_nonfinite_loss == "skip" {
                self.state.step += 1;
                eprintln!("step {}: loss is {loss}, step skipped", self.state.step);
                return Ok(None);
            }
            return Err(TrainError::NonFiniteLoss {
                step: self.state.step + 1,
                loss,
            });
        }
        let clip = self.cfg.optim.grad_clip;
        let norm = if clip > 0.0 {
            clip_grad_norm(&mut grads, &self.vars, clip)?
        } else {
            lm_optim::clip::grad_norm(&grads, &self.vars)?
        };
        self.opt.step(&grads, lr)?;
        self.state.step += 1;
        Ok(Some((loss, norm, lr)))
    }

    /// One optimizer step outside the loop (no logging, evaluation or checkpoint); returns the
    /// training loss, or `None` for a skipped non-finite step. For benchmarks and custom loops.
    pub fn train_one_step(&mut self) -> Result<Option<f32>> {
        Ok(self.train_step()?.map(|(loss, _, _)| loss))
    }

    /// Model FLOPs of one optimizer step (6·N + 12·L·d·T per token, times the tokens of a step).
    pub fn flops_per_step(&self) -> f64 {
        self.model
            .config()
            .flops_per_token(self.cfg.model.block_size)
            * self.tokens_per_step() as f64
    }

    /// Mean loss over `eval_iters` batches of each split, with dropout off. The batches come
    /// from a generator seeded by the step, so evaluation never shifts the training stream.
    pub fn evaluate(&mut self) -> Result<(f32, f32)> {
        self.model.set_training(false);
        let mut rng = Rng::seed_from_u64(self.cfg.train.seed ^ 0xE7A1_5EED ^ self.state.step);
        let mut mean = |split| -> Result<f32> {
            let mut sum = 0f32;
            for _ in 0..self.cfg.train.eval_iters {
                let (x, y) = self.data.batch(
                    split,
                    self.cfg.train.batch_size,
                    self.cfg.model.block_size,
                    &mut rng,
                    &self.device,
                )?;
                let logits = self.model.forward(&x)?;
                sum += cross_entropy(&logits, &y, &CrossEntropy::default())?.to_scalar::<f32>()?;
            }
            Ok(sum / self.cfg.train.eval_iters as f32)
        };
        let train = mean(Split::Train)?;
        let val = mean(Split::Val)?;
        self.model.set_training(true);
        Ok((train, val))
    }

    /// Writes a checkpoint of the current step and prunes old ones.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        self.state.rng = self.rng.state();
        let w = CheckpointWriter::begin(&self.run_dir, self.state.step)?;
        let written = (|| -> Result<()> {
            self.store.save_safetensors(&w.path("model.safetensors"))?;
            lm_optim::save_state(&self.opt, &w.path("optimizer.safetensors"))?;
            let state = serde_json::to_string_pretty(&self.state).expect("state serializes");
            checkpoint::write_atomic(&w.path("state.json"), state.as_bytes())?;
            let config = serde_json::to_string_pretty(&self.model.config().to_hf_json())
                .expect("config serializes");
            checkpoint::write_atomic(&w.path("config.json"), config.as_bytes())?;
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
    /// `eval_interval` steps and at the end.
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
        };
        let started = Instant::now();
        let base_elapsed = self.state.elapsed_s;
        let elapsed = || base_elapsed + started.elapsed().as_secs_f64();
        if self.state.step == 0 && until > 0 {
            let (tr, va, dir) = self.eval_and_checkpoint(self.schedule.value(0.0), 0.0, &pb)?;
            summary.last_eval = Some((tr, va));
            summary.checkpoint = Some(dir);
        }
        let mut window_start = Instant::now();
        let mut window_steps = 0u64;
        let flops_per_step = self
            .model
            .config()
            .flops_per_token(self.cfg.model.block_size)
            * self.tokens_per_step() as f64;
        while self.state.step < until {
            let outcome = self.train_step()?;
            window_steps += 1;
            let step = self.state.step;
            if let Some((loss, norm, lr)) = outcome {
                if step.is_multiple_of(self.cfg.train.log_interval) || step == until {
                    let secs = window_start.elapsed().as_secs_f64();
                    let tokens_per_sec = (window_steps * self.tokens_per_step()) as f64 / secs;
                    self.state.elapsed_s = elapsed();
                    self.metrics.append(&MetricRecord {
                        step,
                        lr,
                        train_loss: loss,
                        tokens_per_sec,
                        elapsed_s: self.state.elapsed_s,
                        val_loss: None,
                        grad_norm: Some(norm),
                        mfu: Some(
                            flops_per_step * window_steps as f64 / secs / self.cfg.train.peak_flops,
                        ),
                    })?;
                    pb.set_message(format!(
                        "loss {loss:.4} lr {lr:.2e} {tokens_per_sec:.0} tok/s"
                    ));
                    window_start = Instant::now();
                    window_steps = 0;
                }
            }
            pb.set_position(step);
            if step.is_multiple_of(self.cfg.train.eval_interval) || step == until {
                self.state.elapsed_s = elapsed();
                let lr = self.schedule.value(step.saturating_sub(1) as f64);
                let (tr, va, dir) = self.eval_and_checkpoint(lr, self.state.elapsed_s, &pb)?;
                summary.last_eval = Some((tr, va));
                summary.checkpoint = Some(dir);
                window_start = Instant::now();
                window_steps = 0;
            }
        }
        pb.finish_and_clear();
        summary.step = self.state.step;
        Ok(summary)
    }

    /// Text sampled from the model, starting from a newline (nanoGPT's `sample.py`:
    /// temperature 0.8, top-k 200).
    pub fn sample(&self, n_chars: usize, seed: u64) -> Result<String> {
        let prompt = self.tokenizer.encode("\n").unwrap_or_else(|_| vec![0]);
        let sampling = Sampling {
            temperature: 0.8,
            top_k: Some(200),
            top_p: None,
        };
        let ids =
            self.model
                .generate(&prompt, n_chars, &sampling, &mut Rng::seed_from_u64(seed))?;
        Ok(self.tokenizer.decode(&ids[prompt.len()..]))
    }
}
