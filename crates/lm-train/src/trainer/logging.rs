//! What a run shows and records: `metrics.jsonl`, the progress bar and its log lines.

use super::*;

impl Trainer {
    /// Appends a metrics line and its TensorBoard scalars (rank 0 only).
    pub(super) fn append_metrics(&mut self, rec: &MetricRecord) -> Result<()> {
        if !self.strategy.is_writer() {
            return Ok(());
        }
        self.metrics.append(rec)?;
        let mut scalars: Vec<(String, f64)> = match rec.val_loss {
            // An evaluation line: both splits' estimates and a task's metrics.
            Some(val) => [
                ("eval/train_loss".to_string(), rec.train_loss as f64),
                ("eval/val_loss".into(), val as f64),
            ]
            .into_iter()
            .chain(rec.metrics.iter().map(|(k, v)| (format!("eval/{k}"), *v)))
            .collect(),
            None => [
                ("train/loss", Some(rec.train_loss as f64)),
                ("train/lr", Some(rec.lr)),
                ("train/grad_norm", rec.grad_norm),
                ("train/tokens_per_sec", Some(rec.tokens_per_sec)),
                ("train/mfu", rec.mfu),
                ("train/peak_rss_mib", rec.peak_rss_mib),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect(),
        };
        if rec.val_loss.is_none() {
            if let Some(s) = &self.state.loss_scale {
                scalars.push(("train/loss_scale".into(), s.scale));
            }
        }
        let pairs: Vec<(&str, f64)> = scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        if let Some(tb) = self.tensorboard_writer()? {
            tb.scalars(rec.step, &pairs)?;
        }
        Ok(())
    }

    /// The run's TensorBoard writer, opened on first use; `None` with `train.tensorboard = false`
    /// or on a rank other than 0.
    fn tensorboard_writer(&mut self) -> Result<Option<&crate::tensorboard::EventWriter>> {
        if !self.cfg.train().tensorboard || !self.strategy.is_writer() {
            return Ok(None);
        }
        if self.tensorboard.is_none() {
            let dir = self.run_dir.join("tb");
            self.tensorboard = Some(crate::tensorboard::EventWriter::create(&dir)?);
        }
        Ok(self.tensorboard.as_ref())
    }

    /// Records `text` under `tag` at the current step in TensorBoard (the end-of-training
    /// sample); nothing without TensorBoard or off rank 0.
    pub fn record_text(&mut self, tag: &str, text: &str) -> Result<()> {
        let step = self.state.step;
        if let Some(tb) = self.tensorboard_writer()? {
            tb.text(step, tag, text)?;
        }
        Ok(())
    }

    pub(super) fn say(&self, pb: &ProgressBar, line: String) {
        if self.verbose {
            // A closed pipe (`| head`) only stops the printing, never the training.
            pb.suspend(|| {
                use std::io::Write;
                let _ = writeln!(std::io::stdout(), "{line}");
            });
        }
    }

    pub(super) fn progress_bar(&self, until: u64) -> ProgressBar {
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
    pub(super) fn log_training(
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
            mfu: self.mfu_peak().map(|p| flops / secs / p.flops),
            peak_rss_mib: crate::memory::peak_rss_bytes().map(|b| crate::memory::mib(b as f64)),
            metrics: BTreeMap::new(),
        })?;
        pb.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} {tokens_per_sec:.0} tok/s"
        ));
        *window = (Instant::now(), 0);
        Ok(())
    }

    /// What this rank holds between steps: parameters and buffers (with ZeRO-3 the trained
    /// parameters of its share only), the trained parameters' gradients (with ZeRO-2 and 3 those
    /// of its share, kept after their bucket is reduced), the optimizer state
    /// (lm-optim's accounting), and for pretraining the activation estimate of one micro-batch
    /// of this rank's rows (`train.batch_size` is per rank).
    pub fn memory_account(&self) -> Result<crate::memory::MemoryAccount> {
        let bytes = |t: &Tensor| (t.elem_count() * t.dtype().size_in_bytes()) as u64;
        let owned = self.strategy.owned(&self.vars);
        let freed: u64 = match self.strategy.parameters_sharded() {
            true => self
                .vars
                .iter()
                .filter(|v| !owned.contains(&v.id()))
                .map(|v| bytes(v))
                .sum(),
            false => 0,
        };
        let parameters = self.store.vars().iter().map(|(_, v)| bytes(v)).sum::<u64>();
        let parameters = parameters.saturating_sub(freed);
        let gradients = self
            .vars
            .iter()
            .filter(|v| !self.strategy.gradients_sharded() || owned.contains(&v.id()))
            .map(|v| bytes(v))
            .sum();
        let rows = self.cfg.train().batch_size;
        let activations = match &self.cfg {
            RunConfig::Pretrain(c) => {
                Some(c.activation_bytes(rows as f64, self.tokenizer.vocab_size() as f64))
            }
            RunConfig::Finetune(_) => None,
        };
        Ok(crate::memory::MemoryAccount {
            parameters,
            gradients,
            optimizer_state: self.optimizer_state_bytes()? as u64,
            activations,
        })
    }

    /// The peak this run's MFU is stated against: `train.peak_flops` when set, else on the CPU
    /// the measured peak of the products' precision on the compute threads
    /// ([`lm_kernels::peak::cpu_peak`]), on a GPU with bf16 products its data-sheet dense bf16
    /// peak by name ([`lm_kernels::peak::gpu_bf16_peak`]); `None` (no MFU) for AMX products,
    /// whose tile peak is not measured, and for other GPUs or precisions.
    pub fn mfu_peak(&self) -> Option<lm_kernels::peak::Peak> {
        if let Some(flops) = self.cfg.train().peak_flops {
            let what = format!("train.peak_flops ({:.0} GFLOP/s)", flops / 1e9);
            return Some(lm_kernels::peak::Peak { flops, what });
        }
        if !self.device.is_cpu() {
            let bf16 = self.matmul_precision() == MatmulPrecision::Bf16;
            let name = lm_kernels::peak::gpu_name(&self.device).filter(|_| bf16)?;
            return lm_kernels::peak::gpu_bf16_peak(&name);
        }
        lm_kernels::peak::cpu_peak(self.matmul_precision(), rayon::current_num_threads())
    }

    /// The run-start line naming what MFU is stated against.
    pub fn mfu_line(&self) -> String {
        match self.mfu_peak() {
            Some(p) => format!("MFU against: {}", p.what),
            None => "MFU not reported: no measured peak for these products on this device (set train.peak_flops)".into(),
        }
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
