//! Losses on candle tensors. Every function here is built from differentiable candle ops, so
//! `loss.backward()` reaches the logits.
//!
//! Token cross-entropy is the negative log-likelihood of the chapter:
//! `ℓ_i = −log softmax(z_i)[y_i]`, averaged over the positions whose target is not the ignore index.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};

use crate::{ObjectiveError, Result, IGNORE_INDEX};
use lm_kernels::fastmath;

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
    let fused_here =
        logits.device().is_cpu() || (cfg!(feature = "cuda") && logits.device().is_cuda());
    if cfg.label_smoothing == 0.0 && fused_here && logits.dtype() == DType::F32 {
        return fused_cross_entropy(&logits, &targets, cfg);
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
        // Counted on the device, as in the fused path: no read back to the host.
        Reduction::Mean => total.mul(&weight.sum_all()?.maximum(1.0)?.recip()?)?,
    })
}

/// [`cross_entropy`] of the logits `hidden · Wᵀ` of a language-model head (`hidden [.., c]`,
/// `W [V, c]`), computed by lm-kernels' chunked head (`lm_kernels::ops::head_nll`) without the
/// logits ever held whole: the memory of one chunk of the vocabulary instead of three `[n, V]`
/// tensors, for the head's product once more in the backward. `None` where that kernel does not
/// apply (not CPU f32, or label smoothing): the caller then computes the logits. Products at
/// `prec`.
pub fn head_cross_entropy(
    hidden: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    cfg: &CrossEntropy,
    prec: lm_kernels::precision::MatmulPrecision,
) -> Result<Option<Tensor>> {
    if cfg.label_smoothing != 0.0 {
        return Ok(None);
    }
    let c = hidden.dim(D::Minus1)?;
    let h = hidden.reshape(((), c))?;
    let targets = targets.flatten_all()?.to_dtype(DType::I64)?;
    if h.dim(0)? != targets.dim(0)? {
        return Err(ObjectiveError::BadTensor {
            name: "targets",
            expected: format!("{} positions, one per hidden state", h.dim(0)?),
            got: format!("{} positions", targets.dim(0)?),
        });
    }
    match lm_kernels::ops::head_nll(&h, w, &targets, cfg.ignore_index, prec)? {
        Some(per_token) => Ok(Some(reduce_rows(&per_token, &targets, cfg)?)),
        None => Ok(None),
    }
}

/// BERT's next-sentence-prediction loss: cross-entropy of the `[batch, 2]` logits of the NSP head
/// against labels 0 (IsNext) / 1 (NotNext).
pub fn nsp_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    if logits.dims().last() != Some(&2) {
        return Err(ObjectiveError::BadTensor {
            name: "nsp logits",
            expected: "[batch, 2]".into(),
            got: format!("{:?}", logits.dims()),
        });
    }
    cross_entropy(logits, labels, &CrossEntropy::default())
}

/// BERT's pretraining loss: the masked-LM cross-entropy (on labelled positions only) plus the NSP
/// loss, as `BertForPreTraining` computes it.
pub fn bert_pretraining_loss(
    mlm_logits: &Tensor,
    mlm_labels: &Tensor,
    nsp_logits: &Tensor,
    nsp_labels: &Tensor,
) -> Result<Tensor> {
    let mlm = cross_entropy(mlm_logits, mlm_labels, &CrossEntropy::default())?;
    Ok((mlm + nsp_loss(nsp_logits, nsp_labels)?)?)
}

fn fused_cross_entropy(logits: &Tensor, targets: &Tensor, cfg: &CrossEntropy) -> Result<Tensor> {
    let targets = targets.contiguous()?;
    // Nothing is read back to the host (on a GPU a read is a synchronisation): the kernels check
    // the targets (the CPU kernel refuses an id outside the vocabulary; the CUDA kernel makes its
    // row's loss NaN), and the mean's divisor is counted on the device.
    let per_token = nll_rows(logits, &targets, cfg.ignore_index)?;
    reduce_rows(&per_token, &targets, cfg)
}

/// The per-row losses summed, or averaged over the rows whose target is not ignored.
fn reduce_rows(per_token: &Tensor, targets: &Tensor, cfg: &CrossEntropy) -> Result<Tensor> {
    let total = per_token.sum_all()?;
    Ok(match cfg.reduction {
        Reduction::Sum => total,
        Reduction::Mean => {
            // `total · (1 / max(count, 1))`: the reciprocal of an integer below 2^24 rounds to
            // the same f32 as `total / count as f64` does, so either form gives the same bits.
            let count = targets
                .ne(cfg.ignore_index)?
                .to_dtype(DType::F32)?
                .sum_all()?
                .maximum(1f32)?;
            total.mul(&count.recip()?)?
        }
    })
}

/// Per-row `−log softmax(z)[y]`: this crate's fused CPU kernel, or lm-kernels' CUDA kernels.
fn nll_rows(logits: &Tensor, targets: &Tensor, ignore_index: i64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if logits.device().is_cuda() {
        return Ok(lm_kernels::gpu::nll_rows(logits, targets, ignore_index)?);
    }
    Ok(logits
        .contiguous()?
        .apply_op2(targets, FusedNll { ignore_index })?)
}

/// Per-row `−log softmax(z)[y]` in one pass (0 on ignored rows); backward `(softmax(z) − onehot(y))·g`.
struct FusedNll {
    ignore_index: i64,
}

/// The logits rows, the targets (each checked: a token id or the ignore index) and the vocabulary.
fn rows_and_ids<'a>(
    ignore_index: i64,
    l1: &Layout,
    s1: &'a CpuStorage,
    s2: &'a CpuStorage,
    l2: &Layout,
) -> candle_core::Result<(&'a [f32], &'a [i64], usize)> {
    let (CpuStorage::F32(z), CpuStorage::I64(y)) = (s1, s2) else {
        candle_core::bail!("fused cross-entropy: expected f32 logits and i64 targets")
    };
    let (Some((a, b)), Some((c, d))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
        candle_core::bail!("fused cross-entropy: expected contiguous inputs")
    };
    let (y, vocab) = (&y[c..d], l1.dims()[1]);
    lm_kernels::ops::check_targets(y, vocab, ignore_index)?;
    Ok((&z[a..b], y, vocab))
}

/// `log Σ_j exp(z_j)` of one row, and the row's max.
#[inline(always)]
fn log_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = fastmath::max(row);
    let sum = fastmath::sum_map(row, |v| fastmath::exp(v - max));
    (max + sum.ln(), max)
}

impl CustomOp2 for FusedNll {
    fn name(&self) -> &'static str {
        "fused-nll"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (z, y, v) = rows_and_ids(self.ignore_index, l1, s1, s2, l2)?;
        // A loop into a preallocated buffer: `collect` would run outside the AVX2 code.
        let mut out = vec![0f32; y.len()];
        fastmath::simd(|| {
            for ((o, row), &t) in out.iter_mut().zip(z.chunks_exact(v)).zip(y) {
                if t != self.ignore_index {
                    *o = log_sum_exp(row).0 - row[t as usize];
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from(y.len())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = logits.apply_op3_no_bwd(
            targets,
            &grad.contiguous()?,
            &FusedNllGrad {
                ignore_index: self.ignore_index,
            },
        )?;
        Ok((Some(d), None))
    }
}

struct FusedNllGrad {
    ignore_index: i64,
}

impl CustomOp3 for FusedNllGrad {
    fn name(&self) -> &'static str {
        "fused-nll-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (z, y, v) = rows_and_ids(self.ignore_index, l1, s1, s2, l2)?;
        let (CpuStorage::F32(g), Some((a, b))) = (s3, l3.contiguous_offsets()) else {
            candle_core::bail!("fused cross-entropy: expected a contiguous f32 gradient")
        };
        let g = &g[a..b];
        let mut dz = vec![0f32; z.len()];
        fastmath::simd(|| {
            for (((row, drow), &t), &gi) in
                z.chunks_exact(v).zip(dz.chunks_exact_mut(v)).zip(y).zip(g)
            {
                if t == self.ignore_index {
                    continue;
                }
                let (lse, _) = log_sum_exp(row);
                for (d, &zv) in drow.iter_mut().zip(row) {
                    *d = fastmath::exp(zv - lse) * gi;
                }
                drow[t as usize] -= gi;
            }
        });
        Ok((CpuStorage::F32(dz), l1.shape().clone()))
    }
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
    fn causal_lm_loss_of_a_tiny_sequence_by_hand() -> Result<()> {
        // Tokens [0, 1, 1] over V = 2: inputs [0, 1], targets [1, 1]. A model that gives logits
        // (0, ln 3) after token 0 and (0, 0) after token 1 assigns p = 3/4 and 1/2 to the targets:
        // NLL = (−ln ¾ − ln ½)/2.
        let ex = crate::causal::shift_for_causal_lm(&[0, 1, 1])?;
        assert_eq!(ex.input_ids, vec![0, 1]);
        let logits = Tensor::new(&[[0.0f32, 3f32.ln()], [0.0, 0.0]], &Device::Cpu)?;
        let targets = Tensor::new(ex.targets.as_slice(), &Device::Cpu)?;
        let loss =
            cross_entropy(&logits, &targets, &CrossEntropy::default())?.to_scalar::<f32>()? as f64;
        let expected = (-(0.75f64).ln() - (0.5f64).ln()) / 2.0;
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
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
    fn fused_path_equals_composite_in_value_and_gradient() -> Result<()> {
        // f32 on CPU takes the fused kernel; f64 takes the composite ops.
        let data: Vec<f32> = (0..6 * 11)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7)
            .collect();
        let targets = Tensor::new(&[3i64, IGNORE_INDEX, 0, 10, 5, IGNORE_INDEX], &Device::Cpu)?;
        let z32 = candle_core::Var::from_tensor(&Tensor::from_vec(data, (6, 11), &Device::Cpu)?)?;
        let z64 = candle_core::Var::from_tensor(&z32.as_tensor().to_dtype(DType::F64)?)?;
        for reduction in [Reduction::Mean, Reduction::Sum] {
            let cfg = CrossEntropy {
                reduction,
                ..Default::default()
            };
            let l32 = cross_entropy(z32.as_tensor(), &targets, &cfg)?;
            let l64 = cross_entropy(z64.as_tensor(), &targets, &cfg)?;
            assert!((l32.to_scalar::<f32>()? as f64 - l64.to_scalar::<f64>()?).abs() < 1e-5);
            let g32 = l32
                .backward()?
                .get(&z32)
                .unwrap()
                .flatten_all()?
                .to_vec1::<f32>()?;
            let g64 = l64
                .backward()?
                .get(&z64)
                .unwrap()
                .flatten_all()?
                .to_vec1::<f64>()?;
            for (a, b) in g32.iter().zip(&g64) {
                assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
            }
        }
        let bad = Tensor::new(&[11i64, 0, 0, 0, 0, 0], &Device::Cpu)?;
        assert!(cross_entropy(z32.as_tensor(), &bad, &CrossEntropy::default()).is_err());
        Ok(())
    }

    #[test]
    fn mismatched_shapes_are_a_typed_error() {
        let logits = Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap();
        let targets = Tensor::zeros(2, DType::I64, &Device::Cpu).unwrap();
        let err = cross_entropy(&logits, &targets, &CrossEntropy::default()).unwrap_err();
        assert!(err.to_string().contains("targets"), "{err}");
    }

    #[test]
    fn a_target_outside_the_vocabulary_is_refused_naming_it() {
        let logits = Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap();
        for bad in [5i64, -1, 1 << 40] {
            let targets = Tensor::new(&[0i64, IGNORE_INDEX, bad], &Device::Cpu).unwrap();
            let err = cross_entropy(&logits, &targets, &CrossEntropy::default()).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("{bad} is neither a token id in [0, 5)")),
                "{msg}"
            );
        }
        // The ignore index itself and the vocabulary's ends are fine.
        let targets = Tensor::new(&[0i64, IGNORE_INDEX, 4], &Device::Cpu).unwrap();
        let loss = cross_entropy(&logits, &targets, &CrossEntropy::default()).unwrap();
        // Uniform logits: −log(1/5) per scored target, mean over the 2 scored.
        let v = loss.to_scalar::<f32>().unwrap();
        assert!((v as f64 - 5f64.ln()).abs() < 1e-6, "{v}");
    }
}
