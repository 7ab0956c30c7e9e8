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
use lm_dist::{Collective, SingleProcess};
use lm_kernels::precision::{with_matmul_precision, MatmulPrecision};
use lm_kernels::threads::on_compute_threads;
use lm_models::layers::with_dropout_key;
use lm_models::{ParamStore, Sampling};
use lm_objectives::Rng;
use lm_optim::{BatchSizeRamp, Optimizer, ParamGroup, Schedule};

use crate::batches::{BatchSource, Specials};
use crate::checkpoint::{self, CheckpointWriter, LossScaleState, TrainerState};
use crate::config::{NonFinitePolicy, RunConfig, ScheduleUnit, TokenizerKind, TrainConfig};
use crate::data::{load_corpus, Split, TokenizedCorpus};
use crate::error::{io_err, Result, TrainError};
use crate::finetune::{FinetuneResults, FinetuneTask};
use crate::lock::RunLock;
use crate::metrics::{MetricRecord, MetricsLog};
use crate::model::{param_groups, Batch, Head, LanguageModel, LossWeights};
use crate::tokenizer::TextTokenizer;

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

/// What a run trains on.
#[derive(Debug, Clone)]
pub enum Work {
    /// A tokenized corpus through the family's pretraining objective.
    Pretrain(Arc<BatchSource>),
    /// A labelled task.
    Finetune(Arc<FinetuneTask>),
}

impl Work {
    /// The batch of `key` in `split`: `batch` examples, a pure function of (seed, split, key).
    pub fn batch(&self, split: Split, key: u64, batch: usize, device: &Device) -> Result<Batch> {
        match self {
            Self::Pretrain(s) => s.batch(split, key, batch, device),
            Self::Finetune(t) => t.batch(split, key, batch, device),
        }
    }
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
    ramp: Option<BatchSizeRamp>,
    state: TrainerState,
    metrics: MetricsLog,
    /// The run directory's lock, held by a trainer that writes the run.
    lock: Option<RunLock>,
    /// Stop after this step instead of `train.max_iters` (a run-time override, not saved).
    stop_at: Option<u64>,
    /// Set (e.g. by a SIGINT handler) to stop after the current step with a checkpoint.
    stop_flag: Option<Arc<AtomicBool>>,
    /// The data-parallel ranks (a single process by default); rank 0 alone writes the run.
    comm: Arc<dyn Collective>,
    /// The optimizer's parameter groups (to rebuild it over a rank's shard).
    groups: Vec<ParamGroup>,
    /// With a sharded optimizer state: the rank that owns each of `vars`.
    owners: Option<Vec<usize>>,
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
/// and one opens (driver and libraries present), else the CPU.
pub fn default_device() -> Device {
    lm_kernels::device::cuda(0)
        .or_else(|_| lm_kernels::device::metal(0))
        .unwrap_or(Device::Cpu)
}

/// The run's tokenizer: `tokenizer_file` when given, else trained on the corpus (character-level
/// on all of it; the others on the training part only).
fn pretraining_tokenizer(cfg: &TrainConfig, corpus: &str) -> Result<TextTokenizer> {
    let kind = cfg.data.tokenizer;
    if let Some(f) = &cfg.data.tokenizer_file {
        let t = TextTokenizer::load(Path::new(f))?;
        // The file says what it is; a kind declared besides it must agree ("char", the default,
        // counts as not declared).
        if kind != TokenizerKind::Char && kind != t.kind() {
            return Err(TrainError::Config {
                source_name: f.clone(),
                key: "data.tokenizer".into(),
                problem: format!(
                    "is {kind} but the file is a {} tokenizer; remove data.tokenizer (the file's kind is used) or fix it",
                    t.kind()
                ),
            });
        }
        if let Some(v) = cfg.data.vocab_size.filter(|&v| v != t.vocab_size()) {
            return Err(TrainError::Config {
                source_name: f.clone(),
                key: "data.vocab_size".into(),
                problem: format!("the tokenizer has {} tokens but the config asks for {v}; remove data.vocab_size or use a matching tokenizer", t.vocab_size()),
            });
        }
        return Ok(t);
    }
    if kind == TokenizerKind::Char {
        return TextTokenizer::train(kind, cfg.model.family, 0, &[corpus]);
    }
    let cut =
        corpus.floor_char_boundary((corpus.len() as f64 * (1.0 - cfg.data.val_fraction)) as usize);
    let lines: Vec<&str> = corpus[..cut].lines().collect();
    let vocab = cfg.data.vocab_size.unwrap_or(2000);
    TextTokenizer::train(kind, cfg.model.family, vocab, &lines)
}

/// Pretraining's pieces from a tokenizer and its token cache: the objective's batch source, the
/// model from random weights, and the decay / no-decay groups.
fn pretraining_parts(
    cfg: &TrainConfig,
    tokenizer: TextTokenizer,
    tokens: TokenizedCorpus,
    device: &Device,
) -> Result<Parts> {
    let specials = Specials::of(cfg.model.family, &tokenizer, tokenizer.kind())?;
    let vocab = tokenizer.vocab_size();
    let source = BatchSource::new(cfg, Arc::new(tokens), specials.clone(), vocab)?;
    let (model, store) = (cfg.model.family.build)(&cfg.model_shape(vocab), &specials, device)?;
    let (decay, no_decay) = param_groups(model.as_ref(), &store);
    Ok(Parts {
        tokenizer,
        work: Work::Pretrain(Arc::new(source)),
        model,
        store,
        groups: vec![
            ParamGroup::new("decay", decay, cfg.optim.weight_decay),
            ParamGroup::new("no_decay", no_decay, 0.0),
        ],
        eos: specials.eos,
    })
}

fn finetuning_parts(p: crate::finetune::Prepared) -> Parts {
    let eos = ["<|endoftext|>", "</s>", "[SEP]"]
        .iter()
        .find_map(|n| p.tokenizer.token_id(n))
        .unwrap_or(0);
    Parts {
        tokenizer: p.tokenizer,
        work: Work::Finetune(Arc::new(p.task)),
        model: p.model,
        store: p.store,
        groups: p.groups,
        eos,
    }
}

/// The rank that owns each parameter (sizes in order) when the optimizer state is sharded over
/// `world` ranks: each goes to the rank holding the fewest values so far, so the shares are
/// balanced within one parameter.
fn shard_owners(sizes: &[usize], world: usize) -> Vec<usize> {
    let mut load = vec![0usize; world];
    sizes
        .iter()
        .map(|&n| {
            let r = (0..world).min_by_key(|&r| (load[r], r)).unwrap_or(0);
            load[r] += n;
            r
        })
        .collect()
}

/// Checks that checkpoint `ckpt` belongs to the run as `run_dir` describes it now: the same
/// tokenizer file, and the same model, data and objective sections (or fine-tuning task) as the
/// configuration saved with the checkpoint. A difference is refused naming the key.
fn check_same_run(run_dir: &Path, ckpt: &Path, cfg: &RunConfig) -> Result<()> {
    let (run_tok, ckpt_tok) = (run_dir.join("tokenizer.json"), ckpt.join("tokenizer.json"));
    if let (Ok(a), Ok(b)) = (std::fs::read(&run_tok), std::fs::read(&ckpt_tok)) {
        if a != b {
            return Err(TrainError::Checkpoint {
                path: run_tok,
                problem: format!(
                    "differs from the tokenizer the checkpoint was trained with ({}); restore the run's own tokenizer.json",
                    ckpt_tok.display()
                ),
            });
        }
    }
    let saved_path = ckpt.join("run_config.toml");
    let Ok(saved_text) = std::fs::read_to_string(&saved_path) else {
        return Ok(()); // a checkpoint from before run_config.toml was kept
    };
    let saved: toml::Table =
        crate::config::parse_toml(&saved_text, &saved_path.display().to_string())?;
    let now: toml::Table = toml::from_str(&cfg.to_toml()).map_err(|e| TrainError::Config {
        source_name: run_dir.join("config.toml").display().to_string(),
        key: "(document)".into(),
        problem: e.to_string(),
    })?;
    for section in ["model", "data", "objective", "finetune"] {
        let empty = toml::Table::new();
        let table = |t: &toml::Table| {
            t.get(section)
                .and_then(|v| v.as_table())
                .cloned()
                .unwrap_or_else(|| empty.clone())
        };
        let (was, is) = (table(&saved), table(&now));
        let keys: std::collections::BTreeSet<&String> = was.keys().chain(is.keys()).collect();
        for key in keys {
            if was.get(key) != is.get(key) {
                let show = |v: Option<&toml::Value>| v.map_or("(unset)".into(), |v| v.to_string());
                return Err(TrainError::Config {
                    source_name: run_dir.join("config.toml").display().to_string(),
                    key: format!("{section}.{key}"),
                    problem: format!(
                        "is {} but the checkpoint {} was trained with {}; a run's model, data and objective cannot change on resume (start a new run)",
                        show(is.get(key)),
                        ckpt.display(),
                        show(was.get(key))
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The run's token cache: `tokens.bin` when present, else rebuilt from the corpus — into the run
/// directory when `writable`, else into a temporary file (a reader never writes to a run).
fn open_token_cache(
    cfg: &TrainConfig,
    tokenizer: &TextTokenizer,
    run_dir: &Path,
    writable: bool,
) -> Result<TokenizedCorpus> {
    let cache = run_dir.join("tokens.bin");
    if let Ok(t) = TokenizedCorpus::open(&cache) {
        return Ok(t);
    }
    let corpus = load_corpus(&cfg.data.corpus)?;
    if writable {
        return TokenizedCorpus::build(&corpus, tokenizer, &cache);
    }
    let tmp = std::env::temp_dir().join(format!("lm-train-tokens-{}.bin", std::process::id()));
    let tokens = TokenizedCorpus::build(&corpus, tokenizer, &tmp);
    let _ = std::fs::remove_file(&tmp); // the mapping stays valid
    tokens
}

/// Batches of one optimizer step, made ahead on a background thread.
struct Prefetch {
    rx: Receiver<Result<Vec<Batch>>>,
}

/// Shape of a step's batches: micro-batch size (or the ramp that sets it) and micro-batches.
#[derive(Clone)]
struct StepShape {
    batch: usize,
    accum: usize,
    ramp: Option<BatchSizeRamp>,
    /// The ramp's sizes are per rank.
    ranks: usize,
}

impl StepShape {
    /// The micro-batches of optimizer step `step`: keys `step·accum + m`, the batch size from the
    /// ramp at `tokens_seen` (or `batch`).
    fn batches(
        &self,
        work: &Work,
        step: u64,
        tokens_seen: u64,
        device: &Device,
    ) -> Result<Vec<Batch>> {
        let b = self.ramp.as_ref().map_or(self.batch, |r| {
            r.batch_size(tokens_seen as f64) * self.ranks
        });
        (0..self.accum)
            .map(|m| work.batch(Split::Train, step * self.accum as u64 + m as u64, b, device))
            .collect()
    }
}

impl Prefetch {
    fn spawn(
        work: Work,
        shape: StepShape,
        steps: std::ops::Range<u64>,
        tokens_seen: u64,
        device: Device,
    ) -> Self {
        let (tx, rx) = sync_channel(2);
        std::thread::spawn(move || {
            let mut tokens = tokens_seen;
            for step in steps {
                let batches = shape.batches(&work, step, tokens, &device);
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
    /// Starts a new run (pretraining or fine-tuning) in `run_dir`, which must not already hold
    /// one.
    pub fn new(cfg: impl Into<RunConfig>, run_dir: &Path, device: Device) -> Result<Self> {
        let mut cfg = cfg.into();
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
                let corpus = load_corpus(&c.data.corpus)?;
                let tokenizer = pretraining_tokenizer(c, &corpus)?;
                // The run's config records the kind of the tokenizer it uses.
                c.data.tokenizer = tokenizer.kind();
                let tokens =
                    TokenizedCorpus::build(&corpus, &tokenizer, &run_dir.join("tokens.bin"))?;
                pretraining_parts(c, tokenizer, tokens, &device)?
            }
            RunConfig::Finetune(c) => finetuning_parts(FinetuneTask::prepare(c, run_dir, &device)?),
        };
        parts.tokenizer.save(&run_dir.join("tokenizer.json"))?;
        checkpoint::write_atomic(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
        let state = TrainerState::fresh(cfg.train().seed);
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
    /// nothing in the run directory is written, and no lock is taken.
    pub fn open(run_dir: &Path, device: Device) -> Result<Self> {
        Self::reopen(run_dir, device, false)
    }

    fn reopen(run_dir: &Path, device: Device, writable: bool) -> Result<Self> {
        let cfg = RunConfig::from_file(&run_dir.join("config.toml"))?;
        let ckpt = checkpoint::latest_checkpoint(run_dir)?;
        let state = checkpoint::read_state(&ckpt)?;
        checkpoint::verify_checksums(&ckpt, &state)?;
        check_same_run(run_dir, &ckpt, &cfg)?;
        let parts = match &cfg {
            RunConfig::Pretrain(c) => {
                let tokenizer = TextTokenizer::load(&run_dir.join("tokenizer.json"))?;
                let tokens = open_token_cache(c, &tokenizer, run_dir, writable)?;
                pretraining_parts(c, tokenizer, tokens, &device)?
            }
            RunConfig::Finetune(c) => {
                finetuning_parts(FinetuneTask::reopen(c, run_dir, Some(&ckpt), &device)?)
            }
        };
        let mut t = Self::build(cfg, run_dir, device, parts, state)?;
        t.load_weights_and_optimizer(&ckpt)?;
        Ok(t)
    }

    /// Stops this call of [`Trainer::train`] after `step` instead of `train.max_iters` (the saved
    /// config and the learning-rate schedule are unchanged).
    pub fn stop_at(&mut self, step: u64) {
        self.stop_at = Some(step);
    }

    /// When `flag` becomes true (e.g. from a SIGINT handler), training stops after the current
    /// step and writes a checkpoint of it.
    pub fn stop_when(&mut self, flag: Arc<AtomicBool>) {
        self.stop_flag = Some(flag);
    }

    /// Starts a new run as one rank of a data-parallel job: rank 0 sets the run up (tokenizer,
    /// token cache, config) as [`Trainer::new`] does, the other ranks open what it wrote; then the
    /// parameters are broadcast from rank 0. Each rank trains on its share of every global batch
    /// (`train.batch_size` per rank).
    pub fn new_distributed(
        cfg: impl Into<RunConfig>,
        run_dir: &Path,
        device: Device,
        comm: Arc<dyn Collective>,
    ) -> Result<Self> {
        let cfg = cfg.into();
        let mut t = if comm.rank() == 0 {
            let t = Self::new(cfg, run_dir, device)?;
            comm.barrier()?;
            t
        } else {
            comm.barrier()?;
            Self::join(run_dir, device)?
        };
        t.comm = comm;
        t.setup_ranks()?;
        t.broadcast_parameters()?;
        Ok(t)
    }

    /// Reopens a run as one rank of a data-parallel job: rank 0 as [`Trainer::resume`] (holding
    /// the lock), the others read-only; every rank's parameters are then checked equal to rank 0's.
    pub fn resume_distributed(
        run_dir: &Path,
        max_iters: Option<u64>,
        device: Device,
        comm: Arc<dyn Collective>,
    ) -> Result<Self> {
        let mut t = if comm.rank() == 0 {
            let lock = RunLock::acquire(run_dir)?;
            let mut t = Self::reopen(run_dir, device, true)?;
            t.lock = Some(lock);
            t.metrics.truncate_after(t.state.step)?;
            t
        } else {
            Self::open(run_dir, device)?
        };
        t.stop_at = max_iters;
        let saved = (t.state.world, t.state.sharded_optimizer);
        if saved.1 && saved.0 != comm.world_size() {
            return Err(TrainError::Checkpoint {
                path: run_dir.to_path_buf(),
                problem: format!(
                    "its optimizer state is sharded over {} ranks; resume it with `mpirun -np {}`",
                    saved.0, saved.0
                ),
            });
        }
        t.comm = comm;
        t.setup_ranks()?;
        if saved.1 {
            let ckpt = checkpoint::latest_checkpoint(run_dir)?;
            t.load_optimizer(&ckpt)?;
        }
        t.check_parameters_equal()?;
        Ok(t)
    }

    /// Records the world and global batch in the state (refusing a resume whose global batch
    /// differs), and with `train.shard_optimizer_state` rebuilds the optimizer over this rank's
    /// share of the parameters (ZeRO stage 1).
    fn setup_ranks(&mut self) -> Result<()> {
        let world = self.comm.world_size();
        let global = self.cfg.train().batch_size * world;
        if self.state.global_batch != 0 && self.state.global_batch != global {
            return Err(TrainError::Config {
                source_name: self.run_dir.join("config.toml").display().to_string(),
                key: "train.batch_size".into(),
                problem: format!(
                    "{} per rank × {world} ranks = {global} sequences per step, but the run was trained with {}; resume with batch_size = {} (when it divides), or with its own number of ranks",
                    self.cfg.train().batch_size,
                    self.state.global_batch,
                    self.state.global_batch as f64 / world as f64
                ),
            });
        }
        self.state.world = world;
        self.state.global_batch = global;
        if !(self.cfg.train().shard_optimizer_state && world > 1) {
            return Ok(());
        }
        let owners = shard_owners(
            &self.vars.iter().map(|v| v.elem_count()).collect::<Vec<_>>(),
            world,
        );
        let rank = self.comm.rank();
        let mine: std::collections::HashSet<candle_core::TensorId> = self
            .vars
            .iter()
            .zip(&owners)
            .filter(|(_, &o)| o == rank)
            .map(|(v, _)| v.as_tensor().id())
            .collect();
        let groups = self
            .groups
            .iter()
            .map(|g| {
                let mut g = g.clone();
                g.params.retain(|(_, v)| mine.contains(&v.as_tensor().id()));
                g
            })
            .collect();
        let steps = self.opt.steps();
        self.opt = self
            .cfg
            .optim()
            .preset(self.cfg.train().max_iters)?
            .build_groups(groups)?;
        if steps != 0 && !self.state.sharded_optimizer {
            return Err(TrainError::Checkpoint {
                path: self.run_dir.clone(),
                problem: "its optimizer state is not sharded; resume it with shard_optimizer_state = false".into(),
            });
        }
        self.owners = Some(owners);
        self.state.sharded_optimizer = true;
        Ok(())
    }

    /// With a sharded optimizer: each owner sends the parameters it updated to every rank.
    fn gather_owned_parameters(&self) -> Result<()> {
        let Some(owners) = &self.owners else {
            return Ok(());
        };
        for owner in 0..self.comm.world_size() {
            let vars: Vec<&Var> = self
                .vars
                .iter()
                .zip(owners)
                .filter(|(_, &o)| o == owner)
                .map(|(v, _)| v)
                .collect();
            self.broadcast_vars(&vars, owner)?;
        }
        Ok(())
    }

    /// A run that rank 0 has just set up, opened by another rank: config, tokenizer and token
    /// cache (or a task's data) read from the run directory, nothing written, the state at step 0.
    fn join(run_dir: &Path, device: Device) -> Result<Self> {
        let cfg = RunConfig::from_file(&run_dir.join("config.toml"))?;
        let parts = match &cfg {
            RunConfig::Pretrain(c) => {
                let tokenizer = TextTokenizer::load(&run_dir.join("tokenizer.json"))?;
                let tokens = open_token_cache(c, &tokenizer, run_dir, false)?;
                pretraining_parts(c, tokenizer, tokens, &device)?
            }
            RunConfig::Finetune(c) => {
                finetuning_parts(FinetuneTask::reopen(c, run_dir, None, &device)?)
            }
        };
        let state = TrainerState::fresh(cfg.train().seed);
        Self::build(cfg, run_dir, device, parts, state)
    }

    /// Ranks training this run together.
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// Whether this process writes the run (metrics, checkpoints): rank 0.
    fn is_writer(&self) -> bool {
        self.comm.rank() == 0
    }

    /// Every parameter, flattened in order.
    fn flat_parameters(&self) -> Result<Vec<f32>> {
        let mut flat = vec![];
        for v in &self.vars {
            flat.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(flat)
    }

    /// Rank 0's parameters on every rank.
    fn broadcast_parameters(&mut self) -> Result<()> {
        if self.comm.world_size() == 1 {
            return Ok(());
        }
        let all: Vec<&Var> = self.vars.iter().collect();
        self.broadcast_vars(&all, 0)?;
        Ok(())
    }

    /// `vars` ← rank `root`'s values, as one flat buffer.
    fn broadcast_vars(&self, vars: &[&Var], root: usize) -> Result<()> {
        let mut flat = vec![];
        for v in vars {
            flat.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        self.comm.broadcast(&mut flat, root)?;
        let mut at = 0;
        for v in vars {
            let n = v.elem_count();
            v.set(&Tensor::from_slice(
                &flat[at..at + n],
                v.shape(),
                v.device(),
            )?)?;
            at += n;
        }
        Ok(())
    }

    /// Refuses a resume whose ranks loaded different parameters (a checkpoint that differs
    /// between machines).
    fn check_parameters_equal(&self) -> Result<()> {
        if self.comm.world_size() == 1 {
            return Ok(());
        }
        let mine = self.flat_parameters()?;
        let mut theirs = mine.clone();
        self.comm.broadcast(&mut theirs, 0)?;
        let differ = mine
            .iter()
            .zip(&theirs)
            .any(|(a, b)| a.to_bits() != b.to_bits()) as u8 as f64;
        let mut any = [differ];
        self.comm.all_reduce_sum_f64(&mut any)?;
        if any[0] > 0.0 {
            return Err(TrainError::Checkpoint {
                path: self.run_dir.clone(),
                problem: format!(
                    "{} rank(s) loaded parameters different from rank 0's; every rank must read the same checkpoint",
                    any[0]
                ),
            });
        }
        Ok(())
    }

    /// `grads ← Σ_ranks grads`, as one flat buffer reduced in buckets of 4 Mi values.
    fn all_reduce_gradients(&self, grads: &mut GradStore) -> Result<()> {
        const BUCKET: usize = 1 << 22;
        let mut flat = Vec::with_capacity(self.vars.iter().map(|v| v.elem_count()).sum());
        for v in &self.vars {
            match grads.get(v.as_tensor()) {
                Some(g) => flat.extend(
                    g.flatten_all()?
                        .to_dtype(candle_core::DType::F32)?
                        .to_vec1::<f32>()?,
                ),
                None => flat.extend(std::iter::repeat_n(0f32, v.elem_count())),
            }
        }
        for bucket in flat.chunks_mut(BUCKET) {
            self.comm.all_reduce_sum(bucket)?;
        }
        let mut at = 0;
        for v in &self.vars {
            let n = v.elem_count();
            let g = Tensor::from_slice(&flat[at..at + n], v.shape(), v.device())?;
            grads.insert(v.as_tensor(), g.to_dtype(v.dtype())?);
            at += n;
        }
        Ok(())
    }

    /// `Σ_ranks x`.
    fn sum_over_ranks(&self, x: f64) -> Result<f64> {
        let mut v = [x];
        self.comm.all_reduce_sum_f64(&mut v)?;
        Ok(v[0])
    }

    /// This rank's rows of a global batch, the weights of their loss terms and their first row.
    fn my_rows(&self, global: &Batch) -> Result<(Option<Batch>, LossWeights, usize)> {
        let world = self.comm.world_size();
        if world == 1 {
            return Ok((None, LossWeights::ONE, 0));
        }
        let rows = lm_dist::share(global.input_ids.dim(0)?, world, self.comm.rank());
        let part = global.rows(rows.clone())?;
        let w = global.share_weights(&part)?;
        Ok((Some(part), w, rows.start))
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
        let preset = cfg.optim().preset(cfg.train().max_iters)?;
        let groups = parts.groups.clone();
        let opt = preset.build_groups(parts.groups)?;
        let t = cfg.train();
        let ramp = t.batch_ramp_start.map(|start| BatchSizeRamp {
            start,
            end: t.batch_size,
            ramp_tokens: t.batch_ramp_tokens,
            multiple: start,
        });
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
            ramp,
            state,
            lock: None,
            stop_at: None,
            stop_flag: None,
            comm: Arc::new(SingleProcess),
            groups,
            owners: None,
            verbose: false,
            cfg,
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
        if self.state.sharded_optimizer {
            return Ok(()); // each rank loads its shard once it knows its rank
        }
        self.load_optimizer(ckpt)
    }

    /// The optimizer state of checkpoint `ckpt` (this rank's shard when it is sharded).
    fn load_optimizer(&mut self, ckpt: &Path) -> Result<()> {
        let opt_path = ckpt.join(self.optimizer_file());
        lm_optim::load_state(self.opt.as_mut(), &opt_path, &self.device).map_err(|e| {
            TrainError::Checkpoint {
                path: opt_path.clone(),
                problem: format!("cannot restore the optimizer: {e}"),
            }
        })?;
        if self.opt.steps() + self.state.skipped_steps != self.state.step {
            return Err(TrainError::Checkpoint {
                path: opt_path,
                problem: format!(
                    "optimizer is at step {} but state.json says {} ({} skipped)",
                    self.opt.steps(),
                    self.state.step,
                    self.state.skipped_steps
                ),
            });
        }
        Ok(())
    }

    /// The optimizer state's file in a checkpoint: one per rank when sharded.
    fn optimizer_file(&self) -> String {
        if self.state.sharded_optimizer {
            format!("optimizer-rank{}.safetensors", self.comm.rank())
        } else {
            "optimizer.safetensors".into()
        }
    }

    /// Bytes of optimizer state this rank holds (lm-optim's accounting).
    pub fn optimizer_state_bytes(&self) -> Result<usize> {
        Ok(lm_optim::state_bytes(self.opt.as_ref())?)
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
        match self.cfg.optim().schedule_unit {
            ScheduleUnit::Tokens => self.state.tokens_seen as f64,
            ScheduleUnit::Steps => self.state.step as f64,
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

    /// Forward and backward over the micro-batches of one step (global batches: this rank takes
    /// its rows); the loss is their mean and the gradients are those of the mean, summed over the
    /// ranks. With `loss_scale` (f16 products) each micro-batch's loss is multiplied by it
    /// before backward, so the gradients are that many times the true ones.
    fn forward_backward(
        &mut self,
        batches: &[Batch],
        loss_scale: Option<f64>,
    ) -> Result<(f32, GradStore)> {
        let accum = batches.len();
        let first_key = self.state.step * accum as u64;
        let mut total: Option<GradStore> = None;
        let mut loss_sum = 0f32;
        for (m, global) in batches.iter().enumerate() {
            let key = self.dropout_key(first_key + m as u64);
            let (part, w, first_row) = self.my_rows(global)?;
            let b = part.as_ref().unwrap_or(global);
            let loss = with_dropout_key(key, first_row, || self.model.weighted_loss(b, w))?;
            let loss = if accum > 1 {
                (loss / accum as f64)?
            } else {
                loss
            };
            loss_sum += loss.to_scalar::<f32>()?;
            // Scaled up so that small gradients survive f16's range.
            let grads = match loss_scale {
                Some(scale) => (loss * scale)?.backward()?,
                None => loss.backward()?,
            };
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
        let mut total = total.ok_or_else(|| TrainError::Corpus {
            corpus: "batch".into(),
            problem: "a step needs at least one micro-batch".into(),
        })?;
        if self.comm.world_size() > 1 {
            self.all_reduce_gradients(&mut total)?;
            loss_sum = self.sum_over_ranks(loss_sum as f64)? as f32;
        }
        Ok((loss_sum, total))
    }

    /// One optimizer step on prepared batches. Returns the loss, pre-clip norm and lr, or `None`
    /// for a skipped non-finite step.
    fn train_step(&mut self, batches: &[Batch]) -> Result<Option<(f32, f64, f64)>> {
        let p = self.matmul_precision();
        on_compute_threads(|| with_matmul_precision(p, || self.train_step_on_pool(batches)))
    }

    fn train_step_on_pool(&mut self, batches: &[Batch]) -> Result<Option<(f32, f64, f64)>> {
        let lr = self.schedule.value(self.schedule_position());
        self.model.set_training(true);
        let scaler = self.loss_scaler()?;
        let (loss, mut grads) =
            self.forward_backward(batches, scaler.as_ref().map(|s| s.scale()))?;
        self.state.tokens_seen += batches.iter().map(|b| b.tokens as u64).sum::<u64>();
        if !loss.is_finite() {
            self.state.step += 1;
            if self.cfg.train().on_nonfinite_loss == NonFinitePolicy::Skip {
                self.state.skipped_steps += 1;
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "step {}: loss is {loss}, step skipped",
                    self.state.step
                );
                return Ok(None);
            }
            return Err(TrainError::NonFiniteLoss {
                step: self.state.step,
                loss,
            });
        }
        let clip = self.cfg.optim().grad_clip;
        let mut norm = lm_optim::clip::grad_norm(&grads, &self.vars)?;
        // Dynamic loss scaling (f16 products): the gradients are S times the true ones. A
        // non-finite norm means one overflowed: skip the step and halve S. Else the 1/S goes
        // into the factor the optimizer applies, with the clipping.
        let mut unscale = 1.0;
        if let Some(mut scaler) = scaler {
            let (s, finite) = (scaler.scale(), norm.is_finite());
            scaler.update(finite);
            self.state.loss_scale = Some(LossScaleState {
                scale: scaler.scale(),
                good_steps: scaler.good_steps(),
                overflows: scaler.skipped_steps(),
            });
            if !finite {
                self.state.step += 1;
                self.state.skipped_steps += 1;
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "step {}: a gradient overflowed f16 at loss scale {s}; step skipped, the \
                     scale is now {}",
                    self.state.step,
                    scaler.scale()
                );
                return Ok(None);
            }
            norm /= s;
            unscale = 1.0 / s;
        }
        // Clipping as a factor the optimizer applies (Adam: inside its fused update).
        let scale = if clip > 0.0 {
            lm_optim::clip::clip_factor(norm, clip)?
        } else {
            1.0
        };
        self.opt.step_scaled(&mut grads, lr, scale * unscale)?;
        self.gather_owned_parameters()?;
        self.state.step += 1;
        Ok(Some((loss, norm, lr)))
    }

    /// Global batches: `train.batch_size` per rank × ranks, `grad_accum` of them per step.
    fn step_shape(&self) -> StepShape {
        StepShape {
            batch: self.cfg.train().batch_size * self.comm.world_size(),
            accum: self.cfg.train().grad_accum,
            ramp: self.ramp.clone(),
            ranks: self.comm.world_size(),
        }
    }

    /// One optimizer step outside the loop (no logging, evaluation or checkpoint); returns the
    /// training loss, or `None` for a skipped non-finite step. For benchmarks and custom loops.
    pub fn train_one_step(&mut self) -> Result<Option<f32>> {
        let batches = self.step_shape().batches(
            &self.work,
            self.state.step,
            self.state.tokens_seen,
            &self.device,
        )?;
        Ok(self.train_step(&batches)?.map(|(loss, _, _)| loss))
    }

    /// Model FLOPs of one optimizer step at the configured batch size.
    pub fn flops_per_step(&self) -> f64 {
        let t = self.context_len();
        self.model.flops_per_token(t)
            * (self.cfg.train().batch_size * t * self.cfg.train().grad_accum) as f64
    }

    /// Mean loss over the fixed evaluation batches of `split`, dropout off.
    pub fn evaluate_split(&mut self, split: Split) -> Result<f32> {
        let p = self.matmul_precision();
        on_compute_threads(|| with_matmul_precision(p, || self.evaluate_split_inner(split)))
    }

    fn evaluate_split_inner(&mut self, split: Split) -> Result<f32> {
        self.model.set_training(false);
        let t = self.cfg.train();
        let batch = t.batch_size * self.comm.world_size();
        let mut sum = 0f32;
        for i in 0..t.eval_iters {
            let global = self
                .work
                .batch(split, (1 << 40) + i as u64, batch, &self.device)?;
            let (part, w, _) = self.my_rows(&global)?;
            let b = part.as_ref().unwrap_or(&global);
            sum += self.model.weighted_loss(b, w)?.to_scalar::<f32>()?;
        }
        if self.comm.world_size() > 1 {
            sum = self.sum_over_ranks(sum as f64)? as f32;
        }
        self.model.set_training(true);
        Ok(sum / t.eval_iters as f32)
    }

    /// (train, val) evaluation losses.
    pub fn evaluate(&mut self) -> Result<(f32, f32)> {
        Ok((
            self.evaluate_split(Split::Train)?,
            self.evaluate_split(Split::Val)?,
        ))
    }

    /// Loss estimates on both splits and, when fine-tuning, the task's validation metrics.
    pub fn evaluate_all(&mut self) -> Result<Evaluation> {
        let (train_loss, val_loss) = self.evaluate()?;
        let metrics = match &self.work {
            Work::Pretrain(_) => BTreeMap::new(),
            Work::Finetune(task) => {
                let p = self.matmul_precision();
                let (model, device) = (self.model.as_ref(), &self.device);
                let comm = self.comm.as_ref();
                model.set_training(false);
                let m = on_compute_threads(|| {
                    with_matmul_precision(p, || task.validate(model, device, comm))
                });
                model.set_training(true);
                m?.into_iter()
                    .map(|(k, v)| (format!("val_{k}"), v))
                    .collect()
            }
        };
        Ok(Evaluation {
            train_loss,
            val_loss,
            metrics,
        })
    }

    /// The value that selects the best checkpoint, and whether higher is better: the validation
    /// loss in pretraining, the task's validation metric in fine-tuning.
    fn selection(&self, e: &Evaluation) -> (f64, bool) {
        match &self.work {
            Work::Pretrain(_) => (e.val_loss as f64, false),
            Work::Finetune(task) => {
                let key = format!("val_{}", task.metric());
                (e.metrics.get(&key).copied().unwrap_or(f64::NAN), true)
            }
        }
    }

    /// Whether every parameter is finite (`0·x` sums to NaN if any `x` is NaN or infinite).
    fn weights_finite(&self) -> Result<bool> {
        for v in &self.vars {
            let probe = (v.as_tensor() * 0.0)?
                .sum_all()?
                .to_dtype(candle_core::DType::F32)?;
            if !probe.to_scalar::<f32>()?.is_finite() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes a checkpoint of the current step and prunes old ones. Weights that are NaN or
    /// infinite are never written: the previous checkpoints stay, and this is an error.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let dest =
            checkpoint::checkpoints_dir(&self.run_dir).join(format!("step-{:08}", self.state.step));
        let sharded = self.owners.is_some();
        if !sharded && !self.is_writer() {
            return Ok(dest); // rank 0 writes it
        }
        if !self.weights_finite()? {
            let last = checkpoint::latest_checkpoint(&self.run_dir)
                .map_or("none".into(), |p| p.display().to_string());
            return Err(TrainError::NonFiniteWeights {
                step: self.state.step,
                last,
            });
        }
        let w = if self.is_writer() {
            Some(CheckpointWriter::begin(&self.run_dir, self.state.step)?)
        } else {
            None
        };
        if sharded {
            self.write_optimizer_shard(w.as_ref())?;
        }
        let Some(w) = w else {
            return Ok(dest);
        };
        let written = (|| -> Result<()> {
            lm_models::hf::save_dir(&self.store, &self.model.hf_config(), w.dir())?;
            if !sharded {
                lm_optim::save_state(self.opt.as_ref(), &w.path("optimizer.safetensors"))?;
            }
            self.tokenizer.save(&w.path("tokenizer.json"))?;
            checkpoint::write_atomic(&w.path("run_config.toml"), self.cfg.to_toml().as_bytes())?;
            // A fine-tuned model keeps its pretrained checkpoint's generation settings.
            let gen = self.run_dir.join("generation_config.json");
            if gen.exists() {
                std::fs::copy(&gen, w.path("generation_config.json")).map_err(io_err(&gen))?;
            }
            let shards = (0..self.comm.world_size())
                .map(|r| format!("optimizer-rank{r}.safetensors"))
                .filter(|_| sharded);
            self.state.checksums = checkpoint::CHECKSUMMED
                .iter()
                .map(|f| f.to_string())
                .filter(|f| w.path(f).exists())
                .chain(shards)
                .map(|f| Ok((f.clone(), checkpoint::FileSum::of(&w.path(&f))?)))
                .collect::<Result<_>>()?;
            // INVARIANT: the run state (numbers, strings, checksums) always serializes to JSON.
            let state = serde_json::to_string_pretty(&self.state).expect("state serializes");
            checkpoint::write_atomic(&w.path("state.json"), state.as_bytes())?;
            Ok(())
        })();
        match written {
            Ok(()) => {
                let dir = w.commit()?;
                self.metrics.sync()?;
                checkpoint::prune(
                    &self.run_dir,
                    self.cfg.train().keep_checkpoints,
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

    /// Every rank writes its optimizer shard into the checkpoint that rank 0 (holding `w`) has
    /// begun, then waits for the others.
    fn write_optimizer_shard(&self, w: Option<&CheckpointWriter>) -> Result<()> {
        // Rank 0's temporary directory, named by its process id.
        let pid = self.sum_over_ranks(w.map_or(0.0, |_| std::process::id() as f64))? as u32;
        let tmp = checkpoint::checkpoints_dir(&self.run_dir)
            .join(format!("step-{:08}.tmp-{pid}", self.state.step));
        let file = tmp.join(self.optimizer_file());
        lm_optim::save_state(self.opt.as_ref(), &file)?;
        Ok(self.comm.barrier()?)
    }

    fn eval_and_checkpoint(
        &mut self,
        lr: f64,
        elapsed: f64,
        pb: &ProgressBar,
    ) -> Result<(Evaluation, PathBuf)> {
        let e = self.evaluate_all()?;
        let (value, higher_is_better) = self.selection(&e);
        let improved = self.state.best.is_none_or(|(_, b)| {
            if higher_is_better {
                value > b
            } else {
                value < b
            }
        });
        if improved {
            self.state.best = Some((self.state.step, value));
            self.state.evals_since_best = 0;
        } else {
            self.state.evals_since_best += 1;
        }
        self.append_metrics(&MetricRecord {
            step: self.state.step,
            lr,
            train_loss: e.train_loss,
            tokens_per_sec: 0.0,
            elapsed_s: elapsed,
            val_loss: Some(e.val_loss),
            grad_norm: None,
            mfu: None,
            metrics: e.metrics.clone(),
        })?;
        let extra: String = e
            .metrics
            .iter()
            .map(|(k, v)| format!(", {} {v:.4}", k.replace('_', " ")))
            .collect();
        self.say(
            pb,
            format!(
                "step {:>5}: train loss {:.4}, val loss {:.4}{extra}",
                self.state.step, e.train_loss, e.val_loss
            ),
        );
        let dir = self.save_checkpoint()?;
        Ok((e, dir))
    }

    /// Appends a metrics line (rank 0 only).
    fn append_metrics(&self, rec: &MetricRecord) -> Result<()> {
        if self.is_writer() {
            self.metrics.append(rec)?;
        }
        Ok(())
    }

    fn say(&self, pb: &ProgressBar, line: String) {
        if self.verbose {
            // A closed pipe (`| head`) only stops the printing, never the training.
            pb.suspend(|| {
                use std::io::Write;
                let _ = writeln!(std::io::stdout(), "{line}");
            });
        }
    }

    fn progress_bar(&self, until: u64) -> ProgressBar {
        let pb = if self.verbose {
            ProgressBar::new(until)
        } else {
            ProgressBar::hidden()
        };
        pb.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            // INVARIANT: the template is a valid literal, checked by every run that shows a bar.
            .expect("a valid template"),
        );
        pb.set_position(self.state.step);
        pb
    }

    /// Appends a training line for the steps since `window`, and starts a new window.
    fn log_training(
        &mut self,
        (loss, norm, lr): (f32, f64, f64),
        window: &mut (Instant, u64),
        elapsed_s: f64,
        pb: &ProgressBar,
    ) -> Result<()> {
        let secs = window.0.elapsed().as_secs_f64();
        let tokens_per_sec = window.1 as f64 / secs;
        self.state.elapsed_s = elapsed_s;
        let flops = self.model.flops_per_token(self.context_len()) * window.1 as f64;
        self.append_metrics(&MetricRecord {
            step: self.state.step,
            lr,
            train_loss: loss,
            tokens_per_sec,
            elapsed_s,
            val_loss: None,
            grad_norm: Some(norm),
            mfu: Some(flops / secs / self.cfg.train().peak_flops),
            metrics: BTreeMap::new(),
        })?;
        pb.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} {tokens_per_sec:.0} tok/s"
        ));
        *window = (Instant::now(), 0);
        Ok(())
    }

    /// Trains until `max_iters` steps are done, evaluating and checkpointing every
    /// `eval_interval` steps and at the end; stops early when the selection metric has not
    /// improved for `early_stopping_patience` evaluations. A fine-tuning run then reports the
    /// test metrics of its best checkpoint.
    pub fn train(&mut self) -> Result<TrainSummary> {
        let until = self.stop_at.unwrap_or(self.cfg.train().max_iters);
        let pb = self.progress_bar(until);
        let mut summary = TrainSummary {
            step: self.state.step,
            last_eval: None,
            checkpoint: None,
            stopped_early: false,
            interrupted: false,
            results: None,
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
            let batches = prefetch.next()?;
            window.1 += batches.iter().map(|b| b.tokens as u64).sum::<u64>();
            let outcome = self.train_step(&batches)?;
            let step = self.state.step;
            if let Some(o) = outcome.filter(|_| step.is_multiple_of(log_every) || step == until) {
                self.log_training(o, &mut window, elapsed(), &pb)?;
            }
            pb.set_position(step);
            let stop = self.stop_requested();
            if step.is_multiple_of(eval_every) || step == until {
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

    fn stop_requested(&self) -> bool {
        self.stop_flag
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
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
        self.comm.barrier()?;
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
        let p = self.matmul_precision();
        let (model, device, run_dir, step) = (
            self.model.as_ref(),
            &self.device,
            &self.run_dir,
            self.state.step,
        );
        let comm = self.comm.as_ref();
        model.set_training(false);
        let results = on_compute_threads(|| {
            with_matmul_precision(p, || {
                task.report(
                    model,
                    device,
                    run_dir,
                    step,
                    (best_step, best_value, best_dir),
                    comm,
                )
            })
        });
        model.set_training(true);
        results.map(Some)
    }

    /// A sample from the model at the end of training: GPT continues a newline (nanoGPT's
    /// `sample.py`: temperature 0.8, top-k 200); BART and T5 decode the first validation example,
    /// shown with its input. BERT has no generation and gives `None`.
    pub fn sample(&self, n_tokens: usize, seed: u64) -> Result<Option<String>> {
        let sampling = Sampling {
            temperature: 0.8,
            top_k: Some(200),
            top_p: None,
        };
        self.sample_with(None, n_tokens, &sampling, seed)
    }

    /// Generated text: GPT continues `prompt` (default a newline) and the result starts with the
    /// prompt; BART and T5 take `prompt` as the encoder's input (default the first validation
    /// example) and show input and output. BERT gives `None`.
    pub fn sample_with(
        &self,
        prompt: Option<&str>,
        n_tokens: usize,
        sampling: &Sampling,
        seed: u64,
    ) -> Result<Option<String>> {
        let mut rng = Rng::seed_from_u64(seed);
        let show = |ids: &[u32]| match &self.tokenizer {
            TextTokenizer::Hf(t) => t.decode(ids, false).unwrap_or_default(),
            other => other.decode(ids),
        };
        Ok(match self.model.head() {
            Head::Causal(m) => {
                // A given prompt must encode (a character outside a char vocabulary is an
                // error); the default newline falls back to the end-of-text token.
                let ids = match prompt {
                    Some(p) => self.tokenizer.encode(p)?,
                    None => self.tokenizer.encode("\n").unwrap_or_default(),
                };
                let prompt_ids = if ids.is_empty() { vec![self.eos] } else { ids };
                let ids = m.generate(&prompt_ids, n_tokens, sampling, &mut rng)?;
                let continuation = self.tokenizer.decode(&ids[prompt_ids.len()..]);
                Some(format!("{}{continuation}", prompt.unwrap_or("")))
            }
            Head::Seq2Seq(m) => {
                let input: Vec<u32> = match prompt {
                    Some(p) => {
                        let mut ids = self.tokenizer.encode(p)?;
                        ids.push(self.eos);
                        ids
                    }
                    None => self
                        .work
                        .batch(Split::Val, 1 << 40, 1, &self.device)?
                        .input_ids
                        .flatten_all()?
                        .to_vec1()?,
                };
                let input_t = Tensor::new(input.as_slice(), &self.device)?.unsqueeze(0)?;
                let out = m.generate(&input_t, n_tokens, sampling, &mut rng, true)?;
                Some(format!("input:  {}\noutput: {}", show(&input), show(&out)))
            }
            Head::Classifier(_) | Head::Encoder => None,
        })
    }

    /// A fine-tuned run's predictions for `examples` (class labels or generated text), with its
    /// task's encoding; `None` for a pretraining run.
    pub fn predict(&self, examples: &[crate::tasks::Example]) -> Result<Option<Vec<String>>> {
        let Work::Finetune(task) = &self.work else {
            return Ok(None);
        };
        let p = self.matmul_precision();
        let (model, device) = (self.model.as_ref(), &self.device);
        model.set_training(false);
        let out = on_compute_threads(|| {
            with_matmul_precision(p, || task.predict_examples(model, examples, device))
        });
        model.set_training(true);
        out.map(Some)
    }

    /// What the run's last [`Trainer::train`] call measured: wall-clock seconds of training so
    /// far, tokens seen, and the best evaluation (step, value).
    pub fn progress(&self) -> (f64, u64, Option<(u64, f64)>) {
        (
            self.state.elapsed_s,
            self.state.tokens_seen,
            self.state.best,
        )
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
    let vocab = model.config().vocab_size;
    if tokenizer.vocab_size() != vocab {
        return Err(TrainError::Checkpoint {
            path: tok_path,
            problem: format!(
                "has {} tokens but the model's vocabulary has {vocab}: it is not this model's tokenizer",
                tokenizer.vocab_size()
            ),
        });
    }
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
