//! Differentiable building blocks that candle-nn provides only as fused forward-only kernels.
//!
//! candle-nn's `layer_norm`, `rms_norm` and `softmax_last_dim` have no backward; the versions here
//! are written in candle ops that all have one.

use std::sync::Mutex;

use candle_core::{DType, Device, Result, Tensor, D};
use lm_objectives::Rng;

use crate::kernels;

/// Precision of the matrix products inside the fused CPU kernels (linear layers, causal
/// attention) for f32 tensors — PyTorch's `torch.set_float32_matmul_precision`, and like
/// autocast, a per-thread setting read when an op is built (its backward uses the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulPrecision {
    /// f32 products (the default).
    #[default]
    Highest,
    /// Inputs rounded to bf16, products and sums in f32: mixed precision with the weights,
    /// activations and gradients kept in f32. Runs on AVX512-BF16 (`vdpbf16ps`) where the CPU
    /// has it, and as rounded inputs through the f32 gemm elsewhere.
    Bf16,
}

thread_local! {
    static PRECISION: std::cell::Cell<MatmulPrecision> = const { std::cell::Cell::new(MatmulPrecision::Highest) };
}

/// Sets the matmul precision of the ops this thread builds from now on.
pub fn set_matmul_precision(p: MatmulPrecision) {
    PRECISION.with(|c| c.set(p));
}

/// This thread's matmul precision.
pub fn matmul_precision() -> MatmulPrecision {
    PRECISION.with(|c| c.get())
}

/// Runs `f` with this thread's matmul precision set to `p`, restoring the previous one after.
pub fn with_matmul_precision<R>(p: MatmulPrecision, f: impl FnOnce() -> R) -> R {
    struct Restore(MatmulPrecision);
    impl Drop for Restore {
        fn drop(&mut self) {
            set_matmul_precision(self.0);
        }
    }
    let _restore = Restore(matmul_precision());
    set_matmul_precision(p);
    f()
}

/// Runs `f` on one of rayon's worker threads (with the caller's matmul precision), so that each
/// parallel kernel inside forks from a worker instead of waking the pool from outside and putting
/// the calling thread to sleep until it is done (two futex round trips per kernel call). Meanwhile
/// the other workers poll for work instead of going to sleep between kernels: a step is a few
/// hundred short parallel kernels, and a sleeping worker takes tens of µs to wake.
pub fn on_compute_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    struct Done(Arc<AtomicBool>);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    thread_local! {
        static POLLING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    /// A poller that finds no work for this long goes back to rayon (and to sleep).
    const IDLE_LIMIT: std::time::Duration = std::time::Duration::from_millis(2);
    let p = matmul_precision();
    rayon::scope(|_| {
        let done = Done(Arc::new(AtomicBool::new(false)));
        let (flag, owner) = (done.0.clone(), rayon::current_thread_index());
        rayon::spawn_broadcast(move |ctx| {
            // Not on the thread running `f` (it would only return once `f` has), and never
            // inside another poller: a thread can pick this job up while it waits inside a
            // job it took while polling, and that job's caller must not wait on this loop.
            if Some(ctx.index()) == owner || POLLING.with(|p| p.replace(true)) {
                return;
            }
            let mut idle_since = std::time::Instant::now();
            while !flag.load(Ordering::Acquire) && idle_since.elapsed() < IDLE_LIMIT {
                if rayon::yield_now() == Some(rayon::Yield::Executed) {
                    idle_since = std::time::Instant::now();
                } else {
                    std::hint::spin_loop();
                }
            }
            POLLING.with(|p| p.set(false));
        });
        with_matmul_precision(p, f)
    })
}

/// Which kernel runs the `Bf16` products on this machine: `"AMX-BF16"` (Intel tile
/// instructions), `"AVX512-BF16"` (`vdpbf16ps`) or `"rounded f32"` (the fallback).
pub fn bf16_matmul_kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::gemm::amx::available() {
            return "AMX-BF16";
        }
    }
    if crate::gemm::has_avx512_bf16() {
        "AVX512-BF16"
    } else {
        "rounded f32"
    }
}

/// `a[m, k] · b[k, n]` for row-major slices on all threads, at this thread's matmul precision: the
/// gemm the fused kernels run, exposed for benchmarks.
pub fn matmul_slices(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    kernels::matmul_rows(
        matmul_precision() == MatmulPrecision::Bf16,
        &mut out,
        a,
        b,
        (m, k, n),
    );
    out
}

fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Layer normalization over the last dimension:
/// `y = (x − μ) / √(σ² + ε) · γ + β`, with `μ`, `σ²` the mean and (biased) variance.
/// One fused pass on CPU for f32, the composite form elsewhere.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    match beta {
        Some(beta) if fused(x) && gamma.dtype() == DType::F32 => x.contiguous()?.apply_op3(
            &gamma.contiguous()?,
            &beta.contiguous()?,
            kernels::LayerNorm { eps: eps as f32 },
        ),
        _ => composite::layer_norm(x, gamma, beta, eps),
    }
}

/// RMS normalization over the last dimension (T5): `y = x / √(mean(x²) + ε) · γ`, no mean, no bias.
pub fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(gamma)
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        x.contiguous()?.apply_op1(kernels::Softmax {
            scale: 1.0,
            causal: false,
        })
    } else {
        composite::softmax_last_dim(x)
    }
}

/// The exact GELU, `x·Φ(x)` (BERT, BART), with candle's erf-based op and its backward.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

/// Causal attention probabilities from raw scores `[.., q, k]`: `softmax(scale·s + M)` where `M`
/// masks the future (`−∞` above the diagonal, aligned to the last `q` of `k` positions).
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    if fused(scores) {
        scores.contiguous()?.apply_op1(kernels::Softmax {
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
/// form elsewhere.
pub fn causal_attention(qkv: &Tensor, n_head: usize, scale: f64) -> Result<Tensor> {
    if fused(qkv) {
        qkv.contiguous()?.apply_op1(kernels::CausalAttention::new(
            n_head,
            scale as f32,
            matmul_precision() == MatmulPrecision::Bf16,
        ))
    } else {
        composite::causal_attention(qkv, n_head, scale)
    }
}

/// `y = x·W (+ b)` over the last axis of `x: [.., in]`, with `W` stored `[in, out]` (GPT-2's
/// `Conv1D`) or, when `transposed`, `[out, in]` (`nn.Linear`). On CPU for f32: one gemm onto the
/// broadcast bias, and a backward that computes `dx`, `dW`, `db` in one kernel without transposed
/// copies; elsewhere candle's matmul and broadcast add.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, transposed: bool) -> Result<Tensor> {
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
            kernels::Linear {
                transposed,
                bf16: matmul_precision() == MatmulPrecision::Bf16,
            },
        );
    }
    let dims = x.dims().to_vec();
    let n_in = *dims.last().unwrap_or(&1);
    let x2 = x.reshape((x.elem_count() / n_in.max(1), n_in))?;
    let y = if transposed {
        x2.matmul(&w.t()?)?
    } else {
        x2.matmul(w)?
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
        x.contiguous()?
            .apply_op2(&b.contiguous()?, kernels::AddBias)
    } else {
        x.broadcast_add(b)
    }
}

/// `a + b` for tensors of one shape (a residual connection): on CPU for f32 on all threads,
/// elsewhere candle's add.
pub fn residual_add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fused(a) && b.dtype() == DType::F32 && a.dims() == b.dims() {
        a.contiguous()?.apply_op2(&b.contiguous()?, kernels::Add)
    } else {
        a + b
    }
}

/// GPT-2's GELU, `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        x.contiguous()?.apply_op1(kernels::GeluTanh)
    } else {
        composite::gelu(x)
    }
}

/// The same functions as chains of candle ops, each with candle's own backward. They run on every
/// device and dtype, and are the reference the fused kernels are tested against.
pub mod composite {
    use super::*;

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

    /// Split the heads, attend causally, merge the heads.
    pub fn causal_attention(qkv: &Tensor, n_head: usize, scale: f64) -> Result<Tensor> {
        let (b, t, c3) = qkv.dims3()?;
        let c = c3 / 3;
        let heads =
            |i: usize| crate::layers::split_heads(&qkv.narrow(D::Minus1, i * c, c)?, n_head);
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let probs = causal_softmax(&q.matmul(&k.t()?)?, scale)?;
        crate::layers::merge_heads(&probs.matmul(&v)?)?.reshape((b, t, c))
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

    /// The dropout rate.
    pub fn rate(&self) -> f64 {
        self.p
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
        let p = composite::causal_softmax(&x, 1.0)?.to_vec2::<f32>()?;
        assert_eq!(p[0], vec![1.0, 0.0, 0.0]);
        assert!((p[1][0] - 1.0 / (1.0 + 1f32.exp())).abs() < 1e-6 && p[1][2] == 0.0);
        assert!((p[2].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        Ok(())
    }
}
