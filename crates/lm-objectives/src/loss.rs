//! Losses on candle tensors. Every function here is built from differentiable candle ops, so
//! `loss.backward()` reaches the logits.
//!
//! Token cross-entropy is the negative log-likelihood of the chapter:
//! `ℓ_i = −log softmax(z_i)[y_i]`, averaged over the positions whose target is not the ignore index.

use candle_core::{DType, Tensor, D};

use crate::{ObjectiveError, Result, IGNORE_INDEX};

/// How per-token losses are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// Mean over counted (non-ignored) tokens; 0 when none is counted.
    #[default]
    Mean,
    /// Sum over counted tokens.
    Sum,
}

/// Options of [`cross_entropy`], with PyTorch's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrossEntropy {
    /// Targets equal to this are not scored (PyTorch: −100).
    pub ignore_index: i64,
    /// ε of label smoothing: the target distribution is `(1−ε)·onehot + ε/V` (0 disables it).
    pub label_smoothing: f64,
    /// Mean or sum over counted tokens.
    pub reduction: Reduction,
}

impl Default for CrossEntropy {
    fn default() -> Self {
        Self {
            ignore_index: IGNORE_INDEX,
            label_smoothing: 0.0,
            reduction: Reduction::Mean,
        }
    }
}

/// `log softmax` over the last dimension, in a form whose backward candle knows. The max is
/// detached: subtracting it changes nothing mathematically, so it needs no gradient.
pub fn log_softmax_last_dim(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_sum_exp = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&log_sum_exp)?)
}

/// Token cross-entropy of `logits` (`[..., V]`, any float dtype; computed in f32) against
/// `targets` (`[...]`, integer), skipping targets equal to `cfg.ignore_index`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, cfg: &CrossEntropy) -> Result<Tensor> {
    if !(0.0..1.0).contains(&cfg.label_smoothing) {
        return Err(ObjectiveError::InvalidConfig {
            key: "label_smoothing",
            value: cfg.label_smoothing.to_string(),
            expected: "a value in [0, 1)",
        });
    }
    let vocab = logits.dim(D::Minus1)?;
    let logits = logits.reshape(((), vocab))?;
    // Half precision is widened: the log-sum-exp needs f32's range. f32 and f64 stay as they are.
    let logits = match logits.dtype() {
        DType::F16 | DType::BF16 => logits.to_dtype(DType::F32)?,
        _ => logits,
    };
    let targets = targets.flatten_all()?.to_dtype(DType::I64)?;
    if logits.dim(0)? != targets.dim(0)? {
        return Err(ObjectiveError::BadTensor {
            name: "targets",
            expected: format!("{} positions, one per row of logits", logits.dim(0)?),
            got: format!("{} positions", targets.dim(0)?),
        });
    }
    let counted = targets.ne(cfg.ignore_index)?;
    let weight = counted.to_dtype(logits.dtype())?;
    let safe_targets = counted.where_cond(&targets, &targets.zeros_like()?)?;
    let log_probs = log_softmax_last_dim(&logits)?;
    let picked = log_probs
        .gather(&safe_targets.unsqueeze(1)?, 1)?
        .squeeze(1)?;
    let mut per_token = picked.neg()?;
    if cfg.label_smoothing > 0.0 {
        let uniform = log_probs.mean(1)?.neg()?;
        per_token =
            ((per_token * (1.0 - cfg.label_smoothing))? + (uniform * cfg.label_smoothing)?)?;
    }
    let total = (per_token * &weight)?.sum_all()?;
    Ok(match cfg.reduction {
        Reduction::Sum => total,
        Reduction::Mean => {
            let count = weight.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            (total / count.max(1.0) as f64)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_matches_hand_computation() -> Result<()> {
        // Two positions over a 3-token vocabulary; the second is ignored.
        let logits = Tensor::new(&[[1.0f32, 2.0, 3.0], [0.0, 0.0, 0.0]], &Device::Cpu)?;
        let targets = Tensor::new(&[0i64, IGNORE_INDEX], &Device::Cpu)?;
        let loss =
            cross_entropy(&logits, &targets, &CrossEntropy::default())?.to_scalar::<f32>()?;
        // −log(e^1 / (e^1 + e^2 + e^3))
        let expected = -(1f64.exp() / (1f64.exp() + 2f64.exp() + 3f64.exp())).ln();
        assert!(
            (loss as f64 - expected).abs() < 1e-6,
            "{loss} vs {expected}"
        );
        Ok(())
    }

    #[test]
    fn label_smoothing_matches_pytorch_definition() -> Result<()> {
        let logits = Tensor::new(&[[0.5f32, -1.0, 2.0, 0.0]], &Device::Cpu)?;
        let targets = Tensor::new(&[2u32], &Device::Cpu)?;
        let eps = 0.1;
        let cfg = CrossEntropy {
            label_smoothing: eps,
            ..Default::default()
        };
        let loss = cross_entropy(&logits, &targets, &cfg)?.to_scalar::<f32>()? as f64;
        let z = [0.5f64, -1.0, 2.0, 0.0];
        let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
        let logp: Vec<f64> = z.iter().map(|v| v - lse).collect();
        let expected = (1.0 - eps) * -logp[2] + eps * -logp.iter().sum::<f64>() / 4.0;
        assert!((loss - expected).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn gradient_is_softmax_minus_onehot_over_count() -> Result<()> {
        let var = candle_core::Var::new(&[[1.0f32, 2.0, 3.0], [3.0, 1.0, 0.0]], &Device::Cpu)?;
        let targets = Tensor::new(&[2i64, 0], &Device::Cpu)?;
        let loss = cross_entropy(var.as_tensor(), &targets, &CrossEntropy::default())?;
        let grads = loss.backward()?;
        let g = grads.get(&var).unwrap().to_vec2::<f32>()?;
        let rows = [[1.0f64, 2.0, 3.0], [3.0, 1.0, 0.0]];
        for (r, (row, t)) in rows.iter().zip([2usize, 0]).enumerate() {
            let s: f64 = row.iter().map(|v| v.exp()).sum();
            for c in 0..3 {
                let p = row[c].exp() / s;
                let expected = (p - if c == t { 1.0 } else { 0.0 }) / 2.0;
                assert!((g[r][c] as f64 - expected).abs() < 1e-6);
            }
        }
        Ok(())
    }

    #[test]
    fn mismatched_shapes_are_a_typed_error() {
        let logits = Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap();
        let targets = Tensor::zeros(2, DType::I64, &Device::Cpu).unwrap();
        let err = cross_entropy(&logits, &targets, &CrossEntropy::default()).unwrap_err();
        assert!(err.to_string().contains("targets"), "{err}");
    }
}
