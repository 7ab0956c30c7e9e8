//! Data parallelism inside the trainer: joining and starting ranks, parameters broadcast and
//! checked equal, gradients all-reduced, each rank's rows of a global batch.

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
    pub(super) fn setup_ranks(&mut self) -> Result<()> {
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
            .preset(self.cfg.train())?
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
    pub(super) fn gather_owned_parameters(&self) -> Result<()> {
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
    pub(super) fn join(run_dir: &Path, device: Device) -> Result<Self> {
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
    pub(super) fn is_writer(&self) -> bool {
        self.comm.rank() == 0
    }

    /// Every parameter, flattened in order.
    pub(super) fn flat_parameters(&self) -> Result<Vec<f32>> {
        let mut flat = vec![];
        for v in &self.vars {
            flat.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(flat)
    }

    /// Rank 0's parameters on every rank.
    pub(super) fn broadcast_parameters(&mut self) -> Result<()> {
        if self.comm.world_size() == 1 {
            return Ok(());
        }
        let all: Vec<&Var> = self.vars.iter().collect();
        self.broadcast_vars(&all, 0)?;
        Ok(())
    }

    /// `vars` ← rank `root`'s values, as one flat buffer.
    pub(super) fn broadcast_vars(&self, vars: &[&Var], root: usize) -> Result<()> {
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
    pub(super) fn check_parameters_equal(&self) -> Result<()> {
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
    pub(super) fn all_reduce_gradients(&self, grads: &mut GradStore) -> Result<()> {
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
    pub(super) fn sum_over_ranks(&self, x: f64) -> Result<f64> {
        let mut v = [x];
        self.comm.all_reduce_sum_f64(&mut v)?;
        Ok(v[0])
    }

    /// This rank's rows of a global batch, the weights of their loss terms and their first row.
    pub(super) fn my_rows(&self, global: &Batch) -> Result<(Option<Batch>, LossWeights, usize)> {
        let world = self.comm.world_size();
        if world == 1 {
            return Ok((None, LossWeights::ONE, 0));
        }
        let rows = lm_dist::share(global.input_ids.dim(0)?, world, self.comm.rank());
        let part = global.rows(rows.clone())?;
        let w = global.share_weights(&part)?;
        Ok((Some(part), w, rows.start))
    }
}

/// The rank that owns each parameter (sizes in order) when the optimizer state is sharded over
/// `world` ranks: each goes to the rank holding the fewest values so far, so the shares are
/// balanced within one parameter.
pub(super) fn shard_owners(sizes: &[usize], world: usize) -> Vec<usize> {
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
