//! Gradient clipping.
//!
//! By global L2 norm: `g ← g · min(1, c / ‖g‖)` where `‖g‖` is the norm of all gradients
//! concatenated. The chapter prints `g / min(1, ‖g‖)`, which would *scale small gradients up*;
//! the form above, PyTorch's `clip_grad_norm_`, only ever shrinks them.

use candle_core::{backprop::GradStore, Tensor, Var};

use crate::error::{check, Result};

/// The global L2 norm of the gradients of `vars` (missing gradients count as zero).
pub fn grad_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut sum_sq = 0f64;
    for var in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            sum_sq += g
                .to_dtype(candle_core::DType::F32)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()? as f64;
        }
    }
    Ok(sum_sq.sqrt())
}

/// Scales all gradients by `min(1, max_norm / (‖g‖ + 1e-6))` and returns the pre-clip norm `‖g‖`
/// for logging. Gradients whose norm is at most `max_norm` are left untouched.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    check(max_norm > 0.0, "max_norm", max_norm, "> 0")?;
    let norm = grad_norm(grads, vars)?;
    if norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        scale_grads(grads, vars, scale)?;
    }
    Ok(norm)
}

/// Clamps every gradient coordinate into `[−clip_value, clip_value]` (PyTorch's
/// `clip_grad_value_`).
pub fn clip_grad_value(grads: &mut GradStore, vars: &[Var], clip_value: f64) -> Result<()> {
    check(clip_value > 0.0, "clip_value", clip_value, "> 0")?;
    for var in vars {
        if let Some(g) = grads.remove(var.as_tensor()) {
            grads.insert(var.as_tensor(), g.clamp(-clip_value, clip_value)?);
        }
    }
    Ok(())
}

/// Multiplies the gradients of `vars` by `scale` (used by clipping and loss-scale unscaling).
pub fn scale_grads(grads: &mut GradStore, vars: &[Var], scale: f64) -> Result<()> {
    for var in vars {
        if let Some(g) = grads.remove(var.as_tensor()) {
            let scaled: Tensor = (g * scale)?;
            grads.insert(var.as_tensor(), scaled);
        }
    }
    Ok(())
}
