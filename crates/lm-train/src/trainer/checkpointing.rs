//! Checkpoints: writing them (atomically, with checksums and the optimizer's shards), loading
//! weights and optimizer state back, and the evaluate-then-checkpoint step of the loop.

use super::*;

impl Trainer {
    /// The weights of checkpoint `ckpt` (its vocabulary checked against the run's tokenizer).
    pub(super) fn load_weights(&mut self, ckpt: &Path) -> Result<()> {
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
        Ok(())
    }

    /// The optimizer state of checkpoint `ckpt` (this rank's shard when it is sharded).
    pub(super) fn load_optimizer(&mut self, ckpt: &Path) -> Result<()> {
        let opt_path = ckpt.join(self.optimizer_file());
        lm_optim::load_state(self.opt.as_mut(), &opt_path, &self.device).map_err(|e| {
            TrainError::Checkpoint {
                path: opt_path.clone(),
                problem: format!("cannot restore the optimizer: {e}"),
            }
        })?;
        if self.opt.steps()? + self.state.skipped_steps != self.state.step {
            return Err(TrainError::Checkpoint {
                path: opt_path,
                problem: format!(
                    "optimizer is at step {} but state.json says {} ({} skipped)",
                    self.opt.steps()?,
                    self.state.step,
                    self.state.skipped_steps
                ),
            });
        }
        Ok(())
    }

    /// This rank's share of a sharded optimizer state written by `saved_world` ranks: its own
    /// file when the number of ranks (and the placement) is the same; else the state of every
    /// old rank's file,
    /// merged by parameter name, from which the optimizer takes the parameters this rank owns
    /// now (ZeRO-1 resumed on another number of ranks; each rank reads the whole state once).
    pub(super) fn load_sharded_optimizer(&mut self, ckpt: &Path, saved_world: usize) -> Result<()> {
        // Its own file, unless the shards were placed by another rule (checkpoints written
        // before parameters were placed largest first): then from all of them.
        if saved_world == self.strategy.world_size() && self.load_optimizer(ckpt).is_ok() {
            return Ok(());
        }
        let mut merged = std::collections::HashMap::new();
        for r in 0..saved_world {
            let path = ckpt.join(format!("optimizer-rank{r}.safetensors"));
            let part = candle_core::safetensors::load(&path, &self.device).map_err(|e| {
                TrainError::Checkpoint {
                    path: path.clone(),
                    problem: format!("cannot read the optimizer shard of rank {r}: {e}"),
                }
            })?;
            merged.extend(part);
        }
        let path = ckpt.join(format!("optimizer-rank{{0..{saved_world}}}.safetensors"));
        self.opt
            .load_state_tensors(&merged)
            .map_err(|e| TrainError::Checkpoint {
                path: path.clone(),
                problem: format!("cannot restore the optimizer from its {saved_world} shards: {e}"),
            })?;
        if self.opt.steps()? + self.state.skipped_steps != self.state.step {
            return Err(TrainError::Checkpoint {
                path,
                problem: format!(
                    "optimizer is at step {} but state.json says {}",
                    self.opt.steps()?,
                    self.state.step
                ),
            });
        }
        Ok(())
    }

    /// The optimizer state's file in a checkpoint: one per rank when sharded.
    pub(super) fn optimizer_file(&self) -> String {
        if self.state.sharded_optimizer {
            format!("optimizer-rank{}.safetensors", self.strategy.rank())
        } else {
            "optimizer.safetensors".into()
        }
    }

    /// Bytes of optimizer state this rank holds (lm-optim's accounting).
    pub fn optimizer_state_bytes(&self) -> Result<usize> {
        Ok(lm_optim::state_bytes(self.opt.as_ref())?)
    }

    /// Writes a checkpoint of the current step and prunes old ones. Weights that are NaN or
    /// infinite are never written: the previous checkpoints stay, and this is an error. Under
    /// ZeRO each rank writes its optimizer shard, and under ZeRO-3 its model shard too (the
    /// parameters it owns, in transformers' sharded layout, indexed by rank 0): nothing is
    /// gathered, and any reader loads the shards as one model at any number of ranks.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let dest =
            checkpoint::checkpoints_dir(&self.run_dir).join(format!("step-{:08}", self.state.step));
        let sharded = self.strategy.sharded();
        if !sharded && !self.strategy.is_writer() {
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
        let w = if self.strategy.is_writer() {
            Some(CheckpointWriter::begin(&self.run_dir, self.state.step)?)
        } else {
            None
        };
        let model_sharded = self.strategy.parameters_sharded();
        if sharded {
            self.write_shards(w.as_ref(), model_sharded)?;
        }
        let Some(w) = w else {
            return Ok(dest);
        };
        let written = (|| -> Result<()> {
            let config = self.model.hf_config();
            if model_sharded {
                let owner = self.owner_of_parameter();
                let world = self.strategy.world_size();
                lm_models::hf::save_sharded_index(&self.store, &config, w.dir(), world, owner)?;
            } else {
                lm_models::hf::save_dir(&self.store, &config, w.dir())?;
            }
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
            let world = self.strategy.world_size();
            let shards = (0..world)
                .map(|r| format!("optimizer-rank{r}.safetensors"))
                .filter(|_| sharded)
                .chain(
                    (0..world)
                        .map(|r| lm_models::weights::shard_name(r, world))
                        .filter(|_| model_sharded),
                );
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
                if let Some(f) = self.after_checkpoint {
                    f();
                }
                Ok(dir)
            }
            Err(e) => {
                w.abort();
                Err(e)
            }
        }
    }

    /// Every rank writes its optimizer shard — and with `model` (ZeRO-3) the parameters it
    /// owns as its model shard — into the checkpoint that rank 0 (holding `w`) has begun, then
    /// waits for the others.
    pub(super) fn write_shards(&self, w: Option<&CheckpointWriter>, model: bool) -> Result<()> {
        // Rank 0's temporary directory, named by its process id.
        let pid = self
            .strategy
            .sum(w.map_or(0.0, |_| std::process::id() as f64))? as u32;
        let tmp = checkpoint::checkpoints_dir(&self.run_dir)
            .join(format!("step-{:08}.tmp-{pid}", self.state.step));
        lm_optim::save_state(self.opt.as_ref(), &tmp.join(self.optimizer_file()))?;
        if model {
            let owner = self.owner_of_parameter();
            let (rank, world) = (self.strategy.rank(), self.strategy.world_size());
            lm_models::hf::save_shard(&self.store, &tmp, rank, world, |n| owner(n) == rank)?;
        }
        Ok(self.strategy.barrier()?)
    }

    /// The rank that owns each parameter of the store, by name, under ZeRO (rank 0 for a
    /// parameter outside the optimizer's groups: every rank holds it whole).
    fn owner_of_parameter(&self) -> impl Fn(&str) -> usize {
        let owners = self.strategy.owners().unwrap_or(&[]);
        let by_id: std::collections::HashMap<_, usize> = self
            .vars
            .iter()
            .zip(owners)
            .map(|(v, &o)| (v.as_tensor().id(), o))
            .collect();
        let by_name: std::collections::HashMap<String, usize> = self
            .store
            .vars()
            .into_iter()
            .map(|(n, v)| {
                let o = by_id.get(&v.as_tensor().id()).copied().unwrap_or(0);
                (n, o)
            })
            .collect();
        move |n: &str| by_name.get(n).copied().unwrap_or(0)
    }

    pub(super) fn eval_and_checkpoint(
        &mut self,
        lr: f64,
        elapsed: f64,
        pb: &ProgressBar,
    ) -> Result<(Evaluation, PathBuf)> {
        // ZeRO-3: the evaluation reads every parameter (the checkpoint only each rank's own).
        self.strategy.gather_parameters(&self.vars)?;
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
            peak_rss_mib: None,
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

    /// Whether every parameter is finite (`0·x` sums to NaN if any `x` is NaN or infinite).
    /// Under ZeRO-3 each rank looks at the parameters it owns and the ranks agree (every rank
    /// calls it).
    pub(super) fn weights_finite(&self) -> Result<bool> {
        let owned = self.strategy.owned(&self.vars);
        let mine = |v: &&Var| !self.strategy.parameters_sharded() || owned.contains(&v.id());
        let mut finite = true;
        for v in self.vars.iter().filter(mine) {
            let probe = (v.as_tensor() * 0.0)?
                .sum_all()?
                .to_dtype(candle_core::DType::F32)?;
            if !probe.to_scalar::<f32>()?.is_finite() {
                finite = false;
                break;
            }
        }
        if self.strategy.parameters_sharded() {
            let bad = self.strategy.sum(if finite { 0.0 } else { 1.0 })?;
            return Ok(bad == 0.0);
        }
        Ok(finite)
    }
}
