//! What a run shows and records: `metrics.jsonl`, the progress bar and its log lines.

use super::*;

impl Trainer {
    /// Appends a metrics line (rank 0 only).
    pub(super) fn append_metrics(&self, rec: &MetricRecord) -> Result<()> {
        if self.strategy.is_writer() {
            self.metrics.append(rec)?;
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
            mfu: Some(flops / secs / self.cfg.train().peak_flops),
            peak_rss_mib: crate::memory::peak_rss_bytes().map(|b| crate::memory::mib(b as f64)),
            metrics: BTreeMap::new(),
        })?;
        pb.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} {tokens_per_sec:.0} tok/s"
        ));
        *window = (Instant::now(), 0);
        Ok(())
    }

    /// What this rank holds: parameters and buffers, the trained parameters' gradients, the
    /// optimizer state (lm-optim's accounting), and for pretraining the activation estimate of
    /// one micro-batch of this rank's rows.
    pub fn memory_account(&self) -> Result<crate::memory::MemoryAccount> {
        let bytes = |t: &Tensor| (t.elem_count() * t.dtype().size_in_bytes()) as u64;
        let parameters = self.store.vars().iter().map(|(_, v)| bytes(v)).sum();
        let gradients = self.vars.iter().map(|v| bytes(v)).sum();
        let rows = self
            .cfg
            .train()
            .batch_size
            .div_ceil(self.strategy.world_size());
        let activations = match &self.cfg {
            RunConfig::Pretrain(c) => Some(c.activation_bytes(rows as f64)),
            RunConfig::Finetune(_) => None,
        };
        Ok(crate::memory::MemoryAccount {
            parameters,
            gradients,
            optimizer_state: self.optimizer_state_bytes()? as u64,
            activations,
        })
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
