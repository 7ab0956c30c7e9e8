//! Differentiable building blocks that candle-nn provides only as fused forward-only kernels.
//!
//! candle-nn's `layer_norm`, `rms_norm` and `softmax_last_dim` have no backward; the versions here
//! are fused CPU kernels with their own backward (f32 on CPU) and, elsewhere, chains of candle ops
//! that all have one.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, D};

use crate::fused;
pub use crate::head::check_targets;
use crate::precision::MatmulPrecision;

/// `a[m, k] · b[k, n]` for row-major slices on all threads, at precision `prec`: the gemm the
/// fused kernels run, exposed for benchmarks.
pub fn matmul_slices(
    prec: MatmulPrecision,
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    crate::gemm::matmul_rows(prec, &mut out, a, b, (m, k, n));
    out
}

/// [`matmul_slices`] into `out` (`m·n` values, overwritten): for benchmarks that reuse their
/// output, as a training step reuses its buffers. Panics when a slice's length is not its shape's.
pub fn matmul_slices_into(
    prec: MatmulPrecision,
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    dims: (usize, usize, usize),
) {
    crate::gemm::matmul_rows(prec, out, a, b, dims);
}

/// A mask or bias the fused attention kernels read but do not differentiate, as f32 on the host.
fn host(t: &Tensor) -> Result<Arc<Vec<f32>>> {
    Ok(Arc::new(
        t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
    ))
}

fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Whether the GPU kernels of [`crate::gpu`] apply: an f32 tensor on a CUDA device of a build
/// with the `cuda` feature.
fn on_gpu(x: &Tensor) -> bool {
    cfg!(feature = "cuda") && x.device().is_cuda() && x.dtype() == DType::F32
}

/// Layer normalization over the last dimension:
/// `y = (x − μ) / √(σ² + ε) · γ + β`, with `μ`, `σ²` the mean and (biased) variance.
/// One fused pass on CPU for f32, the composite form elsewhere.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    match beta {
        Some(beta) if fused(x) && gamma.dtype() == DType::F32 => x.contiguous()?.apply_op3(
            &gamma.contiguous()?,
            &beta.contiguous()?,
            fused::LayerNorm { eps: eps as f32 },
        ),
        #[cfg(feature = "cuda")]
        Some(beta) if on_gpu(x) && gamma.dtype() == DType::F32 && beta.dtype() == DType::F32 => {
            x.contiguous()?.apply_op3(
                &gamma.contiguous()?,
                &beta.contiguous()?,
                crate::gpu::LayerNorm { eps: eps as f32 },
            )
        }
        _ => composite::layer_norm(x, gamma, beta, eps),
    }
}

/// RMS normalization over the last dimension (T5): `y = x / √(mean(x²) + ε) · γ`, no mean, no bias.
/// One fused pass on CPU for f32 (and one for its backward), candle-kernels' `rmsnorm_f32` with a
/// closed-form backward on a GPU for f32, the composite form elsewhere.
pub fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f64) -> Result<Tensor> {
    if fused(x) && gamma.dtype() == DType::F32 {
        return x
            .contiguous()?
            .apply_op2(&gamma.contiguous()?, fused::RmsNorm { eps: eps as f32 });
    }
    #[cfg(feature = "cuda")]
    if on_gpu(x) && gamma.dtype() == DType::F32 {
        return x.contiguous()?.apply_op2(
            &gamma.contiguous()?,
            crate::gpu::RmsNorm { eps: eps as f32 },
        );
    }
    composite::rms_norm(x, gamma, eps)
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        x.contiguous()?.apply_op1(fused::Softmax {
            scale: 1.0,
            causal: false,
        })
    } else if on_gpu(x) {
        #[cfg(feature = "cuda")]
        return x.contiguous()?.apply_op1(crate::gpu::Softmax);
        #[cfg(not(feature = "cuda"))]
        composite::softmax_last_dim(x)
    } else {
        composite::softmax_last_dim(x)
    }
}

/// The exact GELU, `x·Φ(x)` (BERT, BART): one fused pass each way on CPU for f32 (erf to
/// 1.5e−7), one CUDA kernel each way on a GPU for f32, candle's erf-based op elsewhere.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        x.contiguous()?.apply_op1(fused::GeluErf)
    } else {
        gpu_gelu(x, Gelu::Erf).unwrap_or_else(|| composite::gelu_erf(x))
    }
}

/// Which GELU: GPT-2's tanh approximation or the exact `x·Φ(x)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gelu {
    /// `½x(1 + tanh(√(2/π)(x + 0.044715x³)))` (GPT-2, T5 v1.1's gated GELU).
    Tanh,
    /// `x·Φ(x)` (BERT, BART).
    Erf,
}

/// GELU of `x` by this crate's CUDA kernel (one kernel each way) on an f32 CUDA tensor; `None`
/// elsewhere.
fn gpu_gelu(x: &Tensor, kind: Gelu) -> Option<Result<Tensor>> {
    if !on_gpu(x) {
        return None;
    }
    #[cfg(feature = "cuda")]
    return Some(x.contiguous().and_then(|x| {
        x.apply_op1(crate::gpu::Gelu {
            exact: kind == Gelu::Erf,
        })
    }));
    #[cfg(not(feature = "cuda"))]
    {
        let _ = kind;
        None
    }
}

/// `gelu(x·W + b)`, a linear layer ([`linear`]) and its activation. On CPU the fused linear and
/// GELU kernels; on a CUDA device the product without its bias, then the bias and GELU in one
/// kernel each way (`crate::gpu::BiasGelu`).
pub fn linear_gelu(
    x: &Tensor,
    (w, b): (&Tensor, Option<&Tensor>),
    transposed: bool,
    kind: Gelu,
    prec: MatmulPrecision,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(b) = b.filter(|b| on_gpu(x) && w.dtype() == DType::F32 && b.dtype() == DType::F32) {
        let y = linear(x, w, None, transposed, prec)?;
        return y.contiguous()?.apply_op2(
            &b.contiguous()?,
            crate::gpu::BiasGelu {
                exact: kind == Gelu::Erf,
            },
        );
    }
    let y = linear(x, w, b, transposed, prec)?;
    match kind {
        Gelu::Tanh => gelu(&y),
        Gelu::Erf => gelu_erf(&y),
    }
}

/// Causal attention probabilities from raw scores `[.., q, k]`: `softmax(scale·s + M)` where `M`
/// masks the future (`−∞` above the diagonal, aligned to the last `q` of `k` positions).
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    if fused(scores) {
        scores.contiguous()?.apply_op1(fused::Softmax {
            scale: scale as f32,
            causal: true,
        })
    } else {
        composite::causal_softmax(scores, scale)
    }
}

/// Causal multi-head self-attention from the packed projection `qkv: [b, t, 3·d]` (`[q | k | v]`)
/// to the merged heads `[b, t, d]`: `softmax(scale·QKᵀ + M) V` per head. One fused kernel on CPU
/// for f32 (no head split/merge copies, probabilities kept for the backward), the composite
/// form elsewhere. Products at precision `prec`.
pub fn causal_attention(
    qkv: &Tensor,
    n_head: usize,
    scale: f64,
    prec: MatmulPrecision,
) -> Result<Tensor> {
    if fused(qkv) {
        qkv.contiguous()?
            .apply_op1(fused::CausalAttention::new(n_head, scale as f32, prec))
    } else {
        composite::causal_attention(qkv, n_head, scale, prec)
    }
}

/// Per-row `−log softmax(h Wᵀ)[y]` for hidden states `h [n, c]`, the head's weight `W [v, c]`
/// and targets `y [n]` (i64; 0 on rows whose target is `ignore_index`), without holding the
/// `[n, v]` logits: computed over chunks of the vocabulary with an online log-sum-exp, the
/// chunk's logits made again in the backward (the head's product once more). CPU f32 only
/// (`None` elsewhere: the caller computes the logits). Products at precision `prec`.
pub fn head_nll(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    ignore_index: i64,
    prec: MatmulPrecision,
) -> Result<Option<Tensor>> {
    if !(fused(h) && fused(w)) {
        return Ok(None);
    }
    let targets = Arc::new(
        targets
            .flatten_all()?
            .to_dtype(DType::I64)?
            .to_vec1::<i64>()?,
    );
    let op = crate::head::HeadNll {
        targets,
        ignore_index,
        prec,
        chunk: 0,
        lse: std::sync::Mutex::new(None),
    };
    Ok(Some(h.contiguous()?.apply_op2(&w.contiguous()?, op)?))
}

/// Bidirectional multi-head self-attention (BERT) from the packed projection
/// `qkv: [b, t, 3·d]` (`[q | k | v]`) to the merged heads `[b, t, d]`:
/// `(softmax(scale·QKᵀ + key_bias) ⊙ keep) V` per head. `key_bias [b, t]` is added to every
/// query's scores for each key (the padding mask: 0, or a large negative number on padding);
/// `keep [b, h, t, t]` is the dropout mask on the probabilities (0 or `1/(1−p)`). Neither gets a
/// gradient. One fused kernel on CPU for f32 (probabilities kept for the backward), the
/// composite form elsewhere. Products at precision `prec`.
pub fn self_attention(
    qkv: &Tensor,
    (n_head, scale): (usize, f64),
    key_bias: Option<&Tensor>,
    keep: Option<&Tensor>,
    prec: MatmulPrecision,
) -> Result<Tensor> {
    if fused(qkv) {
        qkv.contiguous()?.apply_op1(fused::BiAttention {
            n_head,
            scale: scale as f32,
            prec,
            key_bias: key_bias.map(host).transpose()?,
            keep: keep.map(host).transpose()?,
            keep_probs: None,
            probs: std::sync::Mutex::new(None),
        })
    } else {
        composite::self_attention(qkv, (n_head, scale), key_bias, keep, prec)
    }
}

/// Multi-head attention with a learned additive bias (T5) from queries `q: [b, tq, d]` and the
/// packed keys and values `kv: [b, tk, 2·d]` (`[k | v]`) to the merged heads `[b, tq, d]`:
/// `(softmax(scale·QKᵀ + bias (+ causal mask)) ⊙ keep) V` per head. `bias` broadcasts to
/// `[b, h, tq, tk]` (relative position bias `[1, h, tq, tk]` plus padding `[b, 1, 1, tk]`) and
/// gets its gradient; with `causal`, query `i` sees keys `≤ i + tk − tq`; `keep` is an optional
/// dropout mask `[b, h, tq, tk]`. One fused kernel on CPU for f32, the composite form elsewhere.
/// Products at precision `prec`.
pub fn biased_attention(
    (q, kv): (&Tensor, &Tensor),
    bias: &Tensor,
    (n_head, scale): (usize, f64),
    causal: bool,
    keep: Option<&Tensor>,
    prec: MatmulPrecision,
) -> Result<Tensor> {
    let (b, tq, _) = q.dims3()?;
    let tk = kv.dim(1)?;
    if fused(q) && kv.dtype() == DType::F32 && bias.dtype() == DType::F32 {
        let keep = keep.map(host).transpose()?;
        let bias = bias.broadcast_as((b, n_head, tq, tk))?.contiguous()?;
        q.contiguous()?.apply_op3(
            &kv.contiguous()?,
            &bias,
            fused::BiasedAttention {
                n_head,
                scale: scale as f32,
                prec,
                causal,
                keep,
                probs: std::sync::Mutex::new(None),
            },
        )
    } else {
        composite::biased_attention((q, kv), bias, (n_head, scale), causal, keep, prec)
    }
}

/// `a·b` (candle's batched matmul) at precision `prec` on a GPU: with `Bf16`
/// (`F16`), f32 operands are rounded to bf16 (f16) and multiplied by cuBLAS's half-precision
/// gemm, which accumulates in f32, and the product comes back as f32 — as the CPU kernels do;
/// gradients flow through the casts to the f32 masters. On the CPU (where the fused kernels
/// apply the precision themselves) and for other dtypes it is `a.matmul(b)`.
pub fn matmul(a: &Tensor, b: &Tensor, prec: MatmulPrecision) -> Result<Tensor> {
    let half = match prec {
        MatmulPrecision::Highest => None,
        MatmulPrecision::Bf16 => Some(DType::BF16),
        MatmulPrecision::F16 => Some(DType::F16),
    };
    match half {
        Some(h) if !a.device().is_cpu() && a.dtype() == DType::F32 && b.dtype() == DType::F32 => {
            a.to_dtype(h)?.matmul(&b.to_dtype(h)?)?.to_dtype(DType::F32)
        }
        _ => a.matmul(b),
    }
}

/// `y = x·W (+ b)` over the last axis of `x: [.., in]`, with `W` stored `[in, out]` (GPT-2's
/// `Conv1D`) or, when `transposed`, `[out, in]` (`nn.Linear`). On CPU for f32: one gemm onto the
/// broadcast bias, and a backward that computes `dx`, `dW`, `db` in one kernel without transposed
/// copies; elsewhere candle's matmul and broadcast add. Products at precision `prec`.
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    transposed: bool,
    prec: MatmulPrecision,
) -> Result<Tensor> {
    let n_out = w.dim(if transposed { 0 } else { 1 })?;
    if fused(x) && w.dtype() == DType::F32 && w.rank() == 2 {
        let zeros;
        let b = match b {
            Some(b) => b,
            None => {
                zeros = Tensor::zeros(n_out, DType::F32, x.device())?;
                &zeros
            }
        };
        return x.contiguous()?.apply_op3(
            &w.contiguous()?,
            &b.contiguous()?,
            fused::Linear { transposed, prec },
        );
    }
    let dims = x.dims().to_vec();
    let n_in = *dims.last().unwrap_or(&1);
    let x2 = x.reshape((x.elem_count() / n_in.max(1), n_in))?;
    let y = if transposed {
        matmul(&x2, &w.t()?, prec)?
    } else {
        matmul(&x2, w, prec)?
    };
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = n_out;
    }
    y.reshape(out)
}

/// `x + b` for a `b` whose shape is the trailing part of `x`'s (a bias, or position embeddings
/// over a batch). On CPU for f32 its backward sums `dy` over the leading axes in one streaming
/// pass; elsewhere it is candle's broadcast add.
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (xd, bd) = (x.dims(), b.dims());
    if fused(x) && b.dtype() == DType::F32 && xd.len() >= bd.len() && xd.ends_with(bd) {
        x.contiguous()?.apply_op2(&b.contiguous()?, fused::AddBias)
    } else {
        x.broadcast_add(b)
    }
}

/// `a + b` for tensors of one shape (a residual connection): on CPU for f32 on all threads,
/// elsewhere candle's add.
pub fn residual_add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fused(a) && b.dtype() == DType::F32 && a.dims() == b.dims() {
        a.contiguous()?.apply_op2(&b.contiguous()?, fused::Add)
    } else {
        a + b
    }
}

/// `x · mask` for a constant `mask` of `x`'s shape (no gradient flows to it: dropout's scaled
/// mask): on CPU for f32 on all threads, elsewhere candle's mul.
pub fn mul_mask(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if fused(x) && mask.dtype() == DType::F32 && x.dims() == mask.dims() {
        x.contiguous()?
            .apply_op2(&mask.contiguous()?.detach(), fused::MulMask)
    } else {
        x.mul(&mask.detach())
    }
}

/// GPT-2's GELU, `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`: fused on CPU and on a GPU for f32,
/// candle's op elsewhere.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        x.contiguous()?.apply_op1(fused::GeluTanh)
    } else {
        gpu_gelu(x, Gelu::Tanh).unwrap_or_else(|| composite::gelu(x))
    }
}

/// The same functions as chains of candle ops, each with candle's own backward. They run on every
/// device and dtype, and are the reference the fused kernels are tested against.
pub mod composite {
    use super::*;

    /// The exact GELU through candle's `gelu_erf` op (its backward: candle's ops).
    pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
        x.gelu_erf()
    }

    /// RMS norm from the mean square and broadcasts.
    pub fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f64) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(gamma)
    }

    /// Layer norm from mean, variance and broadcasts.
    pub fn layer_norm(
        x: &Tensor,
        gamma: &Tensor,
        beta: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
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

    /// Softmax, `exp(x − max) / Σ exp(x − max)`. The max is detached: it cancels out of the
    /// result, so it needs no gradient.
    pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
        let max = x.max_keepdim(D::Minus1)?.detach();
        let e = x.broadcast_sub(&max)?.exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
    }

    /// GPT-2's GELU from `tanh`, `mul` and `add`, whose backward is exact (candle's fused
    /// `gelu` backward uses six-digit constants).
    pub fn gelu(x: &Tensor) -> Result<Tensor> {
        let inner = ((x + (x.powf(3.0)? * 0.044_715)?)? * (2.0 / std::f64::consts::PI).sqrt())?;
        ((inner.tanh()? + 1.0)? * x)? * 0.5
    }

    /// Scale, add the causal mask, softmax.
    pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
        let (q, k) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
        let mask = causal_mask(q, k, scores.dtype(), scores.device())?;
        softmax_last_dim(&(scores * scale)?.broadcast_add(&mask)?)
    }

    /// Split the heads, add the key bias to the scaled scores, softmax, drop, merge the heads.
    pub fn self_attention(
        qkv: &Tensor,
        (n_head, scale): (usize, f64),
        key_bias: Option<&Tensor>,
        keep: Option<&Tensor>,
        prec: MatmulPrecision,
    ) -> Result<Tensor> {
        let (b, t, c3) = qkv.dims3()?;
        let c = c3 / 3;
        let heads = |i: usize| split_heads(&qkv.narrow(D::Minus1, i * c, c)?, n_head);
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let mut scores = (matmul(&q, &k.t()?, prec)? * scale)?;
        if let Some(kb) = key_bias {
            scores = scores.broadcast_add(&kb.reshape((b, 1, 1, t))?.to_dtype(qkv.dtype())?)?;
        }
        let mut probs = softmax_last_dim(&scores)?;
        if let Some(keep) = keep {
            probs = (probs * keep.to_dtype(qkv.dtype())?)?;
        }
        merge_heads(&matmul(&probs, &v, prec)?)?.reshape((b, t, c))
    }

    /// Split the heads, scaled scores plus the bias (and the causal mask), softmax, drop,
    /// merge the heads.
    pub fn biased_attention(
        (q, kv): (&Tensor, &Tensor),
        bias: &Tensor,
        (n_head, scale): (usize, f64),
        causal: bool,
        keep: Option<&Tensor>,
        prec: MatmulPrecision,
    ) -> Result<Tensor> {
        let (b, tq, c) = q.dims3()?;
        let tk = kv.dim(1)?;
        let qh = split_heads(q, n_head)?;
        let kh = split_heads(&kv.narrow(D::Minus1, 0, c)?, n_head)?;
        let vh = split_heads(&kv.narrow(D::Minus1, c, c)?, n_head)?;
        let mut scores =
            (matmul(&qh, &kh.t()?, prec)? * scale)?.broadcast_add(&bias.to_dtype(q.dtype())?)?;
        if causal {
            scores = scores.broadcast_add(&causal_mask(tq, tk, q.dtype(), q.device())?)?;
        }
        let mut probs = softmax_last_dim(&scores)?;
        if let Some(keep) = keep {
            probs = (probs * keep.to_dtype(q.dtype())?)?;
        }
        merge_heads(&matmul(&probs, &vh, prec)?)?.reshape((b, tq, c))
    }

    /// Split the heads, attend causally, merge the heads.
    pub fn causal_attention(
        qkv: &Tensor,
        n_head: usize,
        scale: f64,
        prec: MatmulPrecision,
    ) -> Result<Tensor> {
        let (b, t, c3) = qkv.dims3()?;
        let c = c3 / 3;
        let heads = |i: usize| split_heads(&qkv.narrow(D::Minus1, i * c, c)?, n_head);
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let probs = causal_softmax(&matmul(&q, &k.t()?, prec)?, scale)?;
        merge_heads(&matmul(&probs, &v, prec)?)?.reshape((b, t, c))
    }
}

/// The additive causal mask `[q, k]` for `q` queries that are the last `q` of `k` positions:
/// 0 where query `i` may attend (`j ≤ i + k − q`), −∞ elsewhere.
pub fn causal_mask(q: usize, k: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let offset = k.saturating_sub(q);
    let data: Vec<f32> = (0..q)
        .flat_map(|i| {
            (0..k).map(move |j| {
                if j > i + offset {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(data, (q, k), device)?.to_dtype(dtype)
}

/// `[b, t, h·d] → [b, h, t, d]`, contiguous.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, hd) = x.dims3()?;
    x.reshape((b, t, heads, hd / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// `[b, h, t, d] → [b, t, h·d]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, t, h * d))
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
        let p = composite::causal_softmax(&x, 1.0)?.to_vec2::<f32>()?;
        assert_eq!(p[0], vec![1.0, 0.0, 0.0]);
        assert!((p[1][0] - 1.0 / (1.0 + 1f32.exp())).abs() < 1e-6 && p[1][2] == 0.0);
        assert!((p[2].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        Ok(())
    }
}
