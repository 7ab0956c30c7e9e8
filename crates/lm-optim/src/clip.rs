//! Gradient clipping.
//!
//! By global L2 norm: `g ← g · min(1, c / ‖g‖)` where `‖g‖` is the norm of all gradients
//! concatenated. The chapter prints `g / min(1, ‖g‖)`, which would *scale small gradients up*;
//! the form above, PyTorch's `clip_grad_norm_`, only ever shrinks them.

use candle_core::{backprop::GradStore, Tensor, Var};

use crate::error::{check, Result};

/// `Σ g²` over the gradients of `vars`, without reading anything back from a device: the
/// f32 CPU gradients' part summed on the host (as [`grad_norm`] does), the others' as a scalar
/// f32 tensor on their device (`None` when there are none), for the caller to read together with
/// whatever else it reads. `‖g‖ = √(host + device)`.
pub fn sum_squares(grads: &GradStore, vars: &[Var]) -> Result<(f64, Option<Tensor>)> {
    let (mut host, mut device): (f64, Option<Tensor>) = (0.0, None);
    for var in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            match sum_squares_cpu(g) {
                Some(s) => host += s,
                None => {
                    let s = g.to_dtype(candle_core::DType::F32)?.sqr()?.sum_all()?;
                    device = Some(match device {
                        None => s,
                        Some(d) => (d + s)?,
                    });
                }
            }
        }
    }
    Ok((host, device))
}

/// The global L2 norm of the gradients of `vars` (missing gradients count as zero).
pub fn grad_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut sum_sq = 0f64;
    for var in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            sum_sq += match sum_squares_cpu(g) {
                Some(s) => s,
                None => g
                    .to_dtype(candle_core::DType::F32)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f32>()? as f64,
            };
        }
    }
    Ok(sum_sq.sqrt())
}

/// `Σ g²` read straight from a contiguous f32 tensor in CPU memory (no squared copy), in f32
/// lanes summed into f64 per block of 4096; `None` for any other tensor.
fn sum_squares_cpu(g: &Tensor) -> Option<f64> {
    use candle_core::{CpuStorage, Storage};
    let (storage, layout) = g.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) = (&*storage, layout.contiguous_offsets())
    else {
        return None;
    };
    use rayon::prelude::*;
    const LANES: usize = 16;
    // Blocks on all threads; their sums are added in order, so the norm does not depend on the
    // thread count or on scheduling.
    let blocks: Vec<f64> = v[a..b]
        .par_chunks(4096)
        .map(|block| {
            let mut acc = [0f32; LANES];
            let chunks = block.chunks_exact(LANES);
            let tail: f32 = chunks.remainder().iter().map(|x| x * x).sum();
            for c in chunks {
                for (s, &x) in acc.iter_mut().zip(c) {
                    *s += x * x;
                }
            }
            (acc.iter().sum::<f32>() + tail) as f64
        })
        .collect();
    Some(blocks.iter().sum())
}

/// Scales all gradients by `min(1, max_norm / (‖g‖ + 1e-6))` and returns the pre-clip norm `‖g‖`
/// for logging. Gradients whose norm is at most `max_norm` are left untouched.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let norm = grad_norm(grads, vars)?;
    let scale = clip_factor(norm, max_norm)?;
    if scale != 1.0 {
        scale_grads(grads, vars, scale)?;
    }
    Ok(norm)
}

/// The factor [`clip_grad_norm`] scales gradients of global norm `norm` by:
/// `min(1, max_norm / (norm + 1e-6))` (exactly 1 when `norm ≤ max_norm`). For optimizers that
/// take it as [`crate::Optimizer::step_scaled`]'s `grad_scale` instead of a pass over the gradients.
pub fn clip_factor(norm: f64, max_norm: f64) -> Result<f64> {
    check(max_norm > 0.0, "max_norm", max_norm, "> 0")?;
    Ok(if norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{backprop::GradStore, Device};

    /// The norm against Σ g² in f64, over a contiguous gradient longer than one 4096-block
    /// (the direct read) and a transposed one (the candle-ops path), plus a var without a
    /// gradient.
    #[test]
    fn grad_norm_is_the_l2_norm_of_all_gradients() {
        let dev = Device::Cpu;
        let a: Vec<f32> = (0..5000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..12).map(|i| i as f32 - 5.5).collect();
        let vars: Vec<Var> = [(5000, 1), (3, 4), (2, 2)]
            .iter()
            .map(|&s| Var::zeros(s, candle_core::DType::F32, &dev).unwrap())
            .collect();
        let loss = (vars[0].as_tensor().sum_all().unwrap()
            + vars[1].as_tensor().sum_all().unwrap())
        .unwrap();
        let mut grads: GradStore = loss.backward().unwrap();
        let ga = Tensor::from_vec(a.clone(), (5000, 1), &dev).unwrap();
        let gb = Tensor::from_vec(b.clone(), (4, 3), &dev)
            .unwrap()
            .t()
            .unwrap();
        assert!(!gb.is_contiguous());
        grads.insert(vars[0].as_tensor(), ga);
        grads.insert(vars[1].as_tensor(), gb);
        grads.remove(vars[2].as_tensor());
        let want = a
            .iter()
            .chain(&b)
            .map(|&x| (x as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let got = grad_norm(&grads, &vars).unwrap();
        assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
    }
}
