//! Differentiable building blocks that candle-nn provides only as fused forward-only kernels.
//!
//! candle-nn's `layer_norm`, `rms_norm` and `softmax_last_dim` have no backward; the versions here
//! are written in candle ops that all have one.

use std::sync::Mutex;

use candle_core::{DType, Device, Result, Tensor, D};
use lm_objectives::Rng;

/// Layer normalization over the last dimension:
/// `y = (x − μ) / √(σ² + ε) · γ + β`, with `μ`, `σ²` the mean and (biased) variance.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    let y = normed.broadcast_mul(gamma)?;
    match beta {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// RMS normalization over the last dimension (T5): `y = x / √(mean(x²) + ε) · γ`, no mean, no bias.
pub fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(gamma)
}

/// Softmax over the last dimension, `exp(x − max) / Σ exp(x − max)`. The max is detached: it
/// cancels out of the result, so it needs no gradient.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// The additive causal mask `[t, t]`: 0 on and below the diagonal, −∞ above, so position `i`
/// attends to positions `≤ i` only.
pub fn causal_mask(t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(data, (t, t), device)?.to_dtype(dtype)
}

/// Inverted dropout with a seeded generator: each element is zeroed with probability `p` and the
/// survivors scaled by `1/(1−p)`, so the expectation is unchanged.
#[derive(Debug)]
pub struct Dropout {
    p: f64,
    rng: Mutex<Rng>,
}

impl Dropout {
    /// Dropout with rate `p` whose masks come from `seed`.
    pub fn new(p: f64, seed: u64) -> Self {
        Self {
            p,
            rng: Mutex::new(Rng::seed_from_u64(seed)),
        }
    }

    /// Applies dropout when `train` is true and `p > 0`; the identity otherwise.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let scale = (1.0 / keep) as f32;
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| if rng.bernoulli(keep) { scale } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x.mul(&mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_matches_definition() -> Result<()> {
        let x = Tensor::new(&[[1.0f32, 2.0, 4.0]], &Device::Cpu)?;
        let g = Tensor::new(&[1.0f32, 2.0, 1.0], &Device::Cpu)?;
        let b = Tensor::new(&[0.0f32, 0.0, 1.0], &Device::Cpu)?;
        let y = layer_norm(&x, &g, Some(&b), 1e-5)?.to_vec2::<f32>()?;
        let mean = 7.0 / 3.0;
        let var = ((1.0f64 - mean).powi(2) + (2.0 - mean).powi(2) + (4.0 - mean).powi(2)) / 3.0;
        let sd = (var + 1e-5).sqrt();
        let expected = [
            (1.0 - mean) / sd,
            2.0 * (2.0 - mean) / sd,
            (4.0 - mean) / sd + 1.0,
        ];
        for (a, e) in y[0].iter().zip(expected) {
            assert!((*a as f64 - e).abs() < 1e-5);
        }
        Ok(())
    }

    #[test]
    fn causal_softmax_rows_sum_to_one_and_ignore_the_future() -> Result<()> {
        let x = Tensor::new(
            &[[0.5f32, 9.0, 9.0], [1.0, 2.0, 9.0], [1.0, 1.0, 1.0]],
            &Device::Cpu,
        )?;
        let p = softmax_last_dim(&x.add(&causal_mask(3, DType::F32, &Device::Cpu)?)?)?
            .to_vec2::<f32>()?;
        assert_eq!(p[0], vec![1.0, 0.0, 0.0]);
        assert!((p[1][0] - 1.0 / (1.0 + 1f32.exp())).abs() < 1e-6 && p[1][2] == 0.0);
        assert!((p[2].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        Ok(())
    }
}
