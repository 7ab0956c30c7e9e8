//! Dynamic loss scaling for mixed-precision training (PyTorch `GradScaler`'s defaults).
//!
//! In f16 small gradients underflow to zero. Multiplying the loss by a scale `S` multiplies every
//! gradient by `S`; the gradients are divided by `S` again before the update, which is applied to
//! the FP32 master weights. If any gradient is inf or NaN the step is skipped and `S` halves; after
//! `growth_interval` good steps in a row `S` doubles.

use candle_core::{backprop::GradStore, DType, Tensor, Var};

use crate::clip::scale_grads;
use crate::error::{check, Result};

/// The loss scaler's settings and state.
#[derive(Debug, Clone, PartialEq)]
pub struct LossScaler {
    scale: f64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u64,
    good_steps: u64,
    skipped: u64,
}

impl Default for LossScaler {
    /// Start at 2^16, ×2 after 2000 good steps, ×½ on overflow.
    fn default() -> Self {
        Self {
            scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            good_steps: 0,
            skipped: 0,
        }
    }
}

impl LossScaler {
    /// A scaler with explicit settings.
    pub fn new(
        init_scale: f64,
        growth_factor: f64,
        backoff_factor: f64,
        growth_interval: u64,
    ) -> Result<Self> {
        check(init_scale > 0.0, "init_scale", init_scale, "> 0")?;
        check(growth_factor > 1.0, "growth_factor", growth_factor, "> 1")?;
        check(
            backoff_factor > 0.0 && backoff_factor < 1.0,
            "backoff_factor",
            backoff_factor,
            "in (0, 1)",
        )?;
        check(
            growth_interval > 0,
            "growth_interval",
            growth_interval as f64,
            "> 0",
        )?;
        Ok(Self {
            scale: init_scale,
            growth_factor,
            backoff_factor,
            growth_interval,
            good_steps: 0,
            skipped: 0,
        })
    }

    /// The current scale `S`.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Steps skipped so far because of non-finite gradients.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped
    }

    /// Finite steps in a row since the scale last changed.
    pub fn good_steps(&self) -> u64 {
        self.good_steps
    }

    /// This scaler's settings with the state of a checkpoint: the scale, the good steps in a
    /// row and the skipped steps, as [`Self::scale`], [`Self::good_steps`] and
    /// [`Self::skipped_steps`] gave them.
    pub fn resumed(mut self, scale: f64, good_steps: u64, skipped: u64) -> Result<Self> {
        check(
            scale > 0.0 && scale.is_finite(),
            "scale",
            scale,
            "> 0 and finite",
        )?;
        self.scale = scale;
        self.good_steps = good_steps;
        self.skipped = skipped;
        Ok(self)
    }

    /// `S · loss`, to call `backward` on.
    pub fn scale_loss(&self, loss: &Tensor) -> Result<Tensor> {
        Ok((loss * self.scale)?)
    }

    /// Divides the gradients by `S` and reports whether they are all finite.
    pub fn unscale(&self, grads: &mut GradStore, vars: &[Var]) -> Result<bool> {
        scale_grads(grads, vars, 1.0 / self.scale)?;
        for v in vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let s = g
                    .to_dtype(DType::F32)?
                    .abs()?
                    .sum_all()?
                    .to_scalar::<f32>()?;
                if !s.is_finite() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Records the outcome of a step: halves `S` after an overflow, doubles it after
    /// `growth_interval` finite steps in a row.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale *= self.growth_factor;
                self.good_steps = 0;
            }
        } else {
            self.scale *= self.backoff_factor;
            self.good_steps = 0;
            self.skipped += 1;
        }
    }

    /// Unscales, applies `opt.step` only if every gradient is finite, updates `S`; returns whether
    /// the step was applied.
    pub fn step(
        &mut self,
        opt: &mut dyn crate::Optimizer,
        grads: &mut GradStore,
        lr: f64,
    ) -> Result<bool> {
        let vars = opt.vars();
        let finite = self.unscale(grads, &vars)?;
        if finite {
            opt.step(grads, lr)?;
        }
        self.update(finite);
        Ok(finite)
    }
}

/// Bytes per parameter of training state with FP32 master weights and a half-precision working
/// copy: master θ (4) + half θ (2) + half gradient (2) + optimizer state, against full FP32
/// training: θ (4) + g (4) + optimizer state.
pub fn mixed_precision_bytes_per_param(optimizer_state_bytes_per_param: usize) -> (usize, usize) {
    (
        4 + 2 + 2 + optimizer_state_bytes_per_param,
        4 + 4 + optimizer_state_bytes_per_param,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_and_grows_like_grad_scaler() {
        let mut s = LossScaler::new(8.0, 2.0, 0.5, 3).unwrap();
        s.update(false);
        assert_eq!(s.scale(), 4.0);
        for _ in 0..3 {
            s.update(true);
        }
        assert_eq!(s.scale(), 8.0);
        assert_eq!(s.skipped_steps(), 1);
        assert_eq!(LossScaler::default().scale(), 65536.0);
        assert_eq!(mixed_precision_bytes_per_param(8), (16, 16));
        assert!(LossScaler::new(0.0, 2.0, 0.5, 1).is_err());
    }

    #[test]
    fn a_resumed_scaler_goes_on_where_the_saved_one_stood() {
        let mut a = LossScaler::new(8.0, 2.0, 0.5, 3).unwrap();
        for finite in [false, true, true] {
            a.update(finite);
        }
        let fresh = LossScaler::new(8.0, 2.0, 0.5, 3).unwrap();
        let mut b = fresh
            .clone()
            .resumed(a.scale(), a.good_steps(), a.skipped_steps())
            .unwrap();
        assert_eq!((b.scale(), b.good_steps(), b.skipped_steps()), (4.0, 2, 1));
        // One more good step doubles both (the third in a row).
        a.update(true);
        b.update(true);
        assert_eq!(a, b);
        assert_eq!(b.scale(), 8.0);
        assert!(fresh.clone().resumed(0.0, 0, 0).is_err());
        assert!(fresh.resumed(f64::INFINITY, 0, 0).is_err());
    }
}
