//! One optimizer step: forward and backward over the micro-batches, the factor the optimizer
//! applies (clipping, and whether to apply at all), decided without reading the device, and the
//! one read of a logged step.
//!
//! A step's loss, gradient norm and non-finite outcome stay on the device until the step is
//! logged (or evaluated, checkpointed, stopped at): a NaN or infinite loss or gradient norm makes
//! the factor NaN, and the optimizer then skips the update on the device (Adam: in its kernel;
//! a factor in CPU memory is read where it lies, no transfer). The skipped steps are counted on
//! the device and settled at the next read: `on_nonfinite_loss = "stop"` stops there, naming the
//! first such step; `"skip"` reports them. With f16 products the dynamic loss scale is decided
//! on the host, so that path reads its loss and norm every step (as PyTorch's `GradScaler` does
//! with an unfused optimizer).

use super::*;
use crate::zero3::Zero3Gate;
use lm_models::Recompute;
use std::rc::Rc;

/// `f()`, a backward pass, with the ZeRO-3 gate (when there is one) around the recomputations.
fn gated<T>(gate: &Option<Rc<Zero3Gate>>, f: impl FnOnce() -> T) -> T {
    match gate {
        Some(g) => g.backward(f),
        None => f(),
    }
}

/// What a step leaves for its log line.
pub(super) enum StepReport {
    /// Read on the host already (f16 products).
    Read {
        /// The loss (summed over the ranks).
        loss: f32,
        /// The gradients' global norm, unscaled.
        norm: f64,
        /// The step's learning rate.
        lr: f64,
    },
    /// Still on the device, read when the step is logged.
    OnDevice {
        /// This rank's loss.
        loss: Tensor,
        /// `Σ g²` of the f32 CPU gradients, summed on the host.
        host_sq: f64,
        /// `Σ g²` of the others, on their device.
        device_sq: Option<Tensor>,
        /// The step's learning rate.
        lr: f64,
    },
}

impl Trainer {
    /// Forward and backward over this rank's rows of the micro-batches of one step; the loss is
    /// the mean over the global batches and the gradients are those of the mean, summed over
    /// the ranks. With `loss_scale` (f16 products) each micro-batch's loss is multiplied by it
    /// before backward, so the gradients are that many times the true ones. Returns the loss,
    /// the gradients and the global batches' tokens.
    fn forward_backward(
        &mut self,
        batches: &[Share],
        loss_scale: Option<f64>,
    ) -> Result<(Tensor, GradStore, u64)> {
        // ZeRO-3: the parameters whole for the forward passes (the backward pass frees them
        // again) — with checkpointing, block by block as the blocks run (`zero3.rs`).
        let recompute: Recompute = self.cfg.train().activation_checkpointing.into();
        let gate = match self.strategy.parameters_sharded() && recompute != Recompute::Nothing {
            true => Some(Zero3Gate::start(
                self.strategy.clone(),
                &self.vars,
                self.block_plan.clone(),
            )?),
            false => {
                self.strategy.gather_parameters(&self.vars)?;
                None
            }
        };
        let accum = batches.len();
        let first_key = self.state.step * accum as u64;
        let mut total: Option<GradStore> = None;
        let mut tokens = 0;
        // This rank's loss, summed on its device (read once per step, with the gradient norm).
        let mut loss_sum: Option<Tensor> = None;
        for (m, share) in batches.iter().enumerate() {
            let key = self.dropout_key(first_key + m as u64);
            let (w, global_tokens) = self.share_weights(share)?;
            tokens += global_tokens;
            let b = &share.batch;
            let ctx = StepContext::train(self.matmul_precision(), key, share.first_row)
                .with_recompute(recompute);
            let loss = match &gate {
                Some(g) => g.forward(|| self.model.weighted_loss(b, w, &ctx))?,
                None => self.model.weighted_loss(b, w, &ctx)?,
            };
            let loss = if accum > 1 {
                (loss / accum as f64)?
            } else {
                loss
            };
            loss_sum = Some(match loss_sum {
                None => loss.detach(),
                Some(s) => (s + loss.detach())?,
            });
            // Scaled up so that small gradients survive f16's range. The graph is freed as the
            // backward pass goes (each activation once used), not when it ends.
            let loss = match loss_scale {
                Some(scale) => (loss * scale)?,
                None => loss,
            };
            if self.strategy.world_size() > 1 && m + 1 == accum {
                // The step's last micro-batch: its gradients, with the earlier ones', are reduced
                // in buckets while the backward pass goes on (none before: an accumulation step
                // communicates once).
                let mut reduction = self.strategy.reduction(&self.vars, total.take());
                let mut grads = gated(&gate, || {
                    loss.backward_freeing_graph_with(&mut |id, grads| {
                        reduction.ready(id, grads).map_err(candle_core::Error::wrap)
                    })
                })?;
                reduction.finish(&mut grads)?;
                total = Some(grads);
                continue;
            }
            let grads = gated(&gate, || loss.backward_freeing_graph())?;
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
        let total = total.ok_or_else(|| TrainError::Corpus {
            corpus: "batch".into(),
            problem: "a step needs at least one micro-batch".into(),
        })?;
        let loss_sum = loss_sum.ok_or_else(|| TrainError::Corpus {
            corpus: "batch".into(),
            problem: "a step needs at least one micro-batch".into(),
        })?;
        if let Some(plan) = gate.and_then(|g| g.learned_plan()) {
            self.block_plan = Some(plan);
        }
        Ok((loss_sum, total, tokens))
    }

    /// One optimizer step on prepared batches; `None` for a step skipped on the host (an f16
    /// overflow).
    pub(super) fn train_step(&mut self, batches: &[Share]) -> Result<Option<StepReport>> {
        on_compute_threads(|| {
            if self.loss_scaler()?.is_some() {
                self.scaled_step(batches)
            } else {
                self.deferred_step(batches).map(Some)
            }
        })
    }

    /// A step that reads nothing back: the factor is made on the device and the optimizer
    /// applies or skips the update there.
    fn deferred_step(&mut self, batches: &[Share]) -> Result<StepReport> {
        let lr = self.schedule.value(self.schedule_position());
        let (loss, mut grads, tokens) = self.forward_backward(batches, None)?;
        self.state.tokens_seen += tokens;
        let (host_sq, device_sq) = self.grad_sum_squares(&grads)?;
        let factor = self.step_factor(&loss, host_sq, device_sq.as_ref())?;
        match lm_kernels::host::cpu_scalar(&factor) {
            // In CPU memory: read where it lies.
            Some(f) if f.is_finite() => self.opt.step_scaled(&mut grads, lr, f as f64)?,
            Some(_) => {}
            None if self.opt.gates_on_device() => self.opt.step_gated(&grads, lr, &factor)?,
            // An optimizer that decides on the host (SGD, AdaFactor) on a device: one read.
            None => {
                let f = lm_kernels::host::read_scalar::<f32>(&factor.squeeze(0)?)?;
                if f.is_finite() {
                    self.opt.step_scaled(&mut grads, lr, f as f64)?;
                }
            }
        }
        self.strategy.after_step(&self.vars)?;
        self.state.step += 1;
        self.count_nonfinite(&factor, &loss)?;
        Ok(StepReport::OnDevice {
            loss,
            host_sq,
            device_sq,
            lr,
        })
    }

    /// `Σ g²` over the step's reduced gradients, as a host part and a device part
    /// ([`lm_optim::clip::sum_squares`]); with ZeRO-2, where each rank holds its share of them,
    /// summed over the ranks.
    fn grad_sum_squares(&self, grads: &GradStore) -> Result<(f64, Option<Tensor>)> {
        let (host_sq, device_sq) = lm_optim::clip::sum_squares(grads, &self.vars)?;
        Ok(self
            .strategy
            .sum_squares(host_sq, device_sq, &self.device)?)
    }

    /// The factor the optimizer applies to this step's gradients, a one-element f32 tensor on
    /// the loss's device: the clipping factor `min(1, c / (‖g‖ + 1e−6))` (1 without clipping),
    /// NaN where the step must be skipped — a non-finite gradient norm, or on one process a
    /// non-finite loss (with several ranks the norm, equal on all of them after the reduction,
    /// decides alone, so that they skip alike). The norm's host part is a host number already;
    /// where it is all on the host the factor is computed there in f64, as before.
    fn step_factor(
        &self,
        loss: &Tensor,
        host_sq: f64,
        device_sq: Option<&Tensor>,
    ) -> Result<Tensor> {
        let dev = loss.device();
        let factor = match device_sq {
            None => {
                let norm = host_sq.sqrt();
                let f = match self.clip_norm {
                    _ if !norm.is_finite() => f32::NAN,
                    Some(c) => lm_optim::clip::clip_factor(norm, c)? as f32,
                    None => 1.0,
                };
                Tensor::new(&[f], dev)?
            }
            Some(d) => {
                let norm = (d.to_dtype(candle_core::DType::F32)? + host_sq)?
                    .sqrt()?
                    .reshape(1)?;
                let f = match self.clip_norm {
                    // Exactly 1 when ‖g‖ ≤ c, as `clip_factor`.
                    Some(c) => {
                        let shrink = ((&norm + 1e-6)?.recip()? * c)?;
                        norm.le(c)?.where_cond(&norm.ones_like()?, &shrink)?
                    }
                    None => norm.ones_like()?,
                };
                // x − x is NaN for a non-finite x, 0 otherwise.
                (f + norm.sub(&norm)?)?
            }
        };
        if self.strategy.world_size() > 1 {
            return Ok(factor);
        }
        let loss = loss.to_dtype(candle_core::DType::F32)?.reshape(1)?;
        Ok((factor + loss.sub(&loss)?)?)
    }

    /// Counts a step the factor skips, on the device: `[skipped, first skipped step, its loss]`,
    /// read at the next settle.
    fn count_nonfinite(&mut self, factor: &Tensor, loss: &Tensor) -> Result<()> {
        let dev = factor.device();
        let skipped = factor.sub(factor)?.ne(0f32)?;
        let skipped_f = skipped.to_dtype(candle_core::DType::F32)?;
        let counts = match self.nonfinite.take() {
            Some(c) => c,
            None => Tensor::zeros(3, candle_core::DType::F32, dev)?,
        };
        let (count, first, first_loss) = (
            counts.narrow(0, 0, 1)?,
            counts.narrow(0, 1, 1)?,
            counts.narrow(0, 2, 1)?,
        );
        let is_first = first
            .eq(0f32)?
            .to_dtype(candle_core::DType::F32)?
            .mul(&skipped_f)?;
        let first = (first + (is_first.clone() * self.state.step as f64)?)?;
        let loss = loss.to_dtype(candle_core::DType::F32)?.reshape(1)?;
        let first_loss = is_first.ne(0f32)?.where_cond(&loss, &first_loss)?;
        self.nonfinite = Some(Tensor::cat(
            &[&(count + skipped_f)?, &first, &first_loss],
            0,
        )?);
        Ok(())
    }

    /// The one read of a logged step: its loss (summed over the ranks) and gradient norm, and
    /// the steps skipped since the last read, which `on_nonfinite_loss` then judges. `None` when
    /// the step itself was skipped (nothing to log as trained).
    pub(super) fn settle(&mut self, report: &StepReport) -> Result<Option<(f32, f64, f64)>> {
        let (loss, host_sq, device_sq, lr) = match report {
            StepReport::Read { loss, norm, lr } => return Ok(Some((*loss, *norm, *lr))),
            StepReport::OnDevice {
                loss,
                host_sq,
                device_sq,
                lr,
            } => (loss, *host_sq, device_sq, *lr),
        };
        let f32_ = candle_core::DType::F32;
        let dev = loss.device();
        let parts = [
            loss.to_dtype(f32_)?.reshape(1)?,
            match device_sq {
                Some(d) => d.to_dtype(f32_)?.reshape(1)?,
                None => Tensor::zeros(1, f32_, dev)?,
            },
            match &self.nonfinite {
                Some(c) => c.clone(),
                None => Tensor::zeros(3, f32_, dev)?,
            },
        ];
        let v = lm_kernels::host::read_vec::<f32>(&Tensor::cat(&parts, 0)?)?;
        let loss = if self.strategy.world_size() > 1 {
            self.strategy.sum(v[0] as f64)? as f32
        } else {
            v[0]
        };
        let norm = (host_sq + v[1] as f64).sqrt();
        let (skipped, first, first_loss) = (v[2] as u64, v[3] as u64, v[4]);
        if skipped > 0 {
            self.nonfinite = None;
            self.state.skipped_steps += skipped;
            if self.cfg.train().on_nonfinite_loss == NonFinitePolicy::Stop {
                return Err(TrainError::NonFiniteLoss {
                    step: first,
                    loss: first_loss,
                });
            }
            use std::io::Write;
            let steps = match skipped {
                1 => format!("step {first}"),
                n => format!("{n} steps, the first at step {first},"),
            };
            let _ = writeln!(
                std::io::stderr(),
                "{steps}: non-finite loss or gradient norm, skipped (the first's loss: {first_loss})"
            );
        }
        Ok((loss.is_finite() && norm.is_finite()).then_some((loss, norm, lr)))
    }

    /// A step with f16 products: the loss and norm are read every step, the dynamic loss scale
    /// updated on the host.
    fn scaled_step(&mut self, batches: &[Share]) -> Result<Option<StepReport>> {
        let lr = self.schedule.value(self.schedule_position());
        let scaler = self.loss_scaler()?;
        let (loss, mut grads, tokens) =
            self.forward_backward(batches, scaler.as_ref().map(|s| s.scale()))?;
        let (loss, mut norm) = self.loss_and_norm(&loss, &grads)?;
        self.state.tokens_seen += tokens;
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
        let scale = match self.clip_norm {
            Some(clip) => lm_optim::clip::clip_factor(norm, clip)?,
            None => 1.0,
        };
        self.opt.step_scaled(&mut grads, lr, scale * unscale)?;
        self.strategy.after_step(&self.vars)?;
        self.state.step += 1;
        Ok(Some(StepReport::Read { loss, norm, lr }))
    }

    /// The step's loss (summed over the ranks) and the gradients' global norm, with one read
    /// from the device: the loss and the device part of `Σ g²` stacked into one tensor
    /// ([`lm_kernels::host`] counts it); f32 CPU gradients' squares are summed on the host.
    fn loss_and_norm(&self, loss: &Tensor, grads: &GradStore) -> Result<(f32, f64)> {
        let (host_sq, device_sq) = self.grad_sum_squares(grads)?;
        let (loss, sum_sq) = match device_sq {
            None => (lm_kernels::host::read_scalar::<f32>(loss)?, host_sq),
            Some(d) => {
                let both = Tensor::stack(&[loss.to_dtype(candle_core::DType::F32)?, d], 0)?;
                let v = lm_kernels::host::read_vec::<f32>(&both)?;
                (v[0], host_sq + v[1] as f64)
            }
        };
        let loss = if self.strategy.world_size() > 1 {
            self.strategy.sum(loss as f64)? as f32
        } else {
            loss
        };
        Ok((loss, sum_sq.sqrt()))
    }
}
