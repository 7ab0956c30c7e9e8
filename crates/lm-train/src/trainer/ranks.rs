//! A run on several ranks: starting and joining them, the global batch kept across resumes, the
//! optimizer rebuilt over a rank's shard. The collectives themselves — gradients reduced,
//! parameters broadcast and checked equal, updates shared — are lm-dist's [`Strategy`].

use super::*;

impl Trainer {
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
        // A new run: its global batch is `batch_size` × these ranks.
        t.state.global_batch = 0;
        t.setup_ranks(comm)?;
        t.strategy.broadcast_parameters(&t.vars)?;
        Ok(t)
    }

    /// Reopens a run as one rank of a data-parallel job: rank 0 as [`Trainer::resume`] (holding
    /// the lock), the others read-only; every rank's parameters are then checked equal to rank 0's.
    ///
    /// `run_dir` may be one of the run's checkpoints (`RUN/checkpoints/step-N`): the run goes on
    /// from there, and its later checkpoints are set aside (moved to
    /// `checkpoints/superseded-after-step-N-<time>/`, not deleted), its metrics after that step
    /// dropped.
    pub fn resume_distributed(
        run_dir: &Path,
        max_iters: Option<u64>,
        device: Device,
        comm: Arc<dyn Collective>,
    ) -> Result<Self> {
        let (run_dir, from) = match checkpoint::checkpoint_of_run(run_dir)? {
            Some((run, ckpt)) => (run, Some(ckpt)),
            None => (run_dir.to_path_buf(), None),
        };
        let run_dir = run_dir.as_path();
        if !run_dir.join("config.toml").is_file() {
            return Err(TrainError::Checkpoint {
                path: run_dir.into(),
                problem: "is not a run directory (it has no config.toml); resume takes the \
                          directory a `train` run wrote (its --out)"
                    .into(),
            });
        }
        let ckpt = match &from {
            Some(c) => c.clone(),
            None => checkpoint::latest_checkpoint(run_dir)?,
        };
        let mut t = if comm.rank() == 0 {
            let lock = RunLock::acquire(run_dir)?;
            let mut t = Self::reopen(run_dir, &ckpt, device, Opened::Writer)?;
            t.lock = Some(lock);
            if let Some(aside) = checkpoint::set_aside_after(run_dir, t.state.step)? {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "resuming from step {}: the later checkpoints are set aside in {}",
                    t.state.step,
                    aside.display()
                );
            }
            t.metrics.truncate_after(t.state.step)?;
            t
        } else {
            Self::reopen(run_dir, &ckpt, device, Opened::Rank)?
        };
        if let Some(n) = max_iters {
            t.stop_at(n)?;
        }
        let saved = (t.state.world, t.state.sharded_optimizer);
        t.setup_ranks(comm)?;
        if saved.1 {
            t.load_sharded_optimizer(&ckpt, saved.0)?;
        }
        t.check_parameters_equal()?;
        Ok(t)
    }

    /// Records the world and global batch in the state, sets the strategy over `comm`, and with
    /// `train.zero_stage` 1 or 2 rebuilds the optimizer over this rank's share of the
    /// parameters. A run resumed on another number of ranks keeps its global
    /// batch: each rank takes global / ranks (`train.batch_size` is per rank), and a number of
    /// ranks that does not divide it is refused, naming those that do.
    pub(super) fn setup_ranks(&mut self, comm: Arc<dyn Collective>) -> Result<()> {
        let world = comm.world_size();
        let saved = self.state.global_batch;
        if saved != 0 && saved != self.cfg.train().batch_size * world {
            if !saved.is_multiple_of(world) {
                let fits: Vec<String> = (1..=saved)
                    .filter(|m| saved.is_multiple_of(*m))
                    .map(|m| m.to_string())
                    .collect();
                return Err(TrainError::Config {
                    source_name: self.run_dir.join("config.toml").display().to_string(),
                    key: "train.batch_size".into(),
                    problem: format!(
                        "the run's global batch is {saved} sequences, which {world} ranks cannot share equally; resume it on {} ranks",
                        fits.join(", ")
                    ),
                });
            }
            self.cfg.train_mut().batch_size = saved / world;
        }
        let global = self.cfg.train().batch_size * world;
        self.state.world = world;
        self.state.global_batch = global;
        let sizes: Vec<usize> = self.vars.iter().map(|v| v.elem_count()).collect();
        self.strategy = Arc::new(Strategy::new(
            comm,
            self.cfg.train().zero_stage().into(),
            &sizes,
        ));
        self.block_plan = None;
        if !self.strategy.sharded() {
            return Ok(());
        }
        let mine = self.strategy.owned(&self.vars);
        let groups = self
            .groups
            .iter()
            .map(|g| {
                let mut g = g.clone();
                g.params.retain(|(_, v)| mine.contains(&v.as_tensor().id()));
                g
            })
            .collect();
        let steps = self.opt.steps()?;
        self.opt = self
            .cfg
            .optim()
            .preset(self.cfg.train())?
            .build_groups(groups)?;
        if steps != 0 && !self.state.sharded_optimizer {
            return Err(TrainError::Checkpoint {
                path: self.run_dir.clone(),
                problem: "its optimizer state is not sharded; resume it with train.zero_stage = 0"
                    .into(),
            });
        }
        self.state.sharded_optimizer = true;
        Ok(())
    }

    /// A run that rank 0 has just set up, opened by another rank: config, tokenizer and token
    /// cache (or a task's data) read from the run directory, nothing written, the state at step 0.
    pub(super) fn join(run_dir: &Path, device: Device) -> Result<Self> {
        let cfg = RunConfig::from_file(&run_dir.join("config.toml"))?;
        let parts = match &cfg {
            RunConfig::Pretrain(c) => {
                let tokenizer = TextTokenizer::load(&run_dir.join("tokenizer.json"))?;
                let dataset = reopened_run_data(c, &tokenizer, run_dir, false)?;
                pretraining_parts(c, tokenizer, dataset, &device)?
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
        self.strategy.world_size()
    }

    /// Refuses a resume whose ranks loaded different parameters (a checkpoint that differs
    /// between machines).
    pub(super) fn check_parameters_equal(&self) -> Result<()> {
        let differing = self.strategy.ranks_differing(&self.vars)?;
        if differing > 0 {
            return Err(TrainError::Checkpoint {
                path: self.run_dir.clone(),
                problem: format!(
                    "{differing} rank(s) loaded parameters different from rank 0's; every rank must read the same checkpoint"
                ),
            });
        }
        Ok(())
    }
}
