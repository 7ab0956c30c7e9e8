//! Fused CPU kernels with their backward, as candle custom ops (f32, contiguous inputs).
//!
//! Each replaces a chain of candle ops — each of which allocates its output and makes a pass over
//! memory — by one pass forward and one backward. [`crate::ops`] picks them on CPU for f32 and
//! falls back to the composite forms elsewhere; tests check both agree in value and gradient.

use crate::fastmath::{self, simd};
use crate::gemm::{
    gemm_bf16_bias, has_avx512f, matmul_into, mm, mm_causal, output_buffer, uses_bf16, Mat, Tri,
};
use crate::precision::MatmulPrecision;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// The f32 values of a contiguous CPU tensor (`what` names it in the error).
pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: expected f32 storage")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: expected a contiguous tensor")
    };
    Ok(&v[a..b])
}

fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

/// `out[i] = f(a[i], b[i])`, in chunks on rayon's threads, each chunk's loop compiled for AVX2
/// (a plain loop into a preallocated buffer: `collect` would run outside the AVX2 code).
fn par_map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = output_buffer(a.len());
    par_zip(&mut out, a, b, |o, a, b| {
        simd(|| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = f(a, b);
            }
        })
    });
    out
}

/// `f(out, a, b)` on matching chunks of the three slices (equal lengths), on rayon's threads.
fn par_zip(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync) {
    const CHUNK: usize = 1 << 14;
    assert!(a.len() == out.len() && b.len() == out.len());
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| f(o, a, b));
}

// ---------------------------------------------------------------- GELU (tanh approximation)

/// GELU and its gradient with AVX-512, 16 lanes. With `e = exp(2u)` and `s = e/(e+1)`:
/// `½(1 + tanh u) = s`, so `GELU(x) = x·s`, and `½(1 − tanh² u) = 2·s/(e+1)`. `1/(e+1)` is
/// `vrcp14ps` refined by one Newton step (relative error ≈ 2⁻²⁸ before rounding) instead of a
/// division, whose latency bound the 8-lane loop (forward pass: −47% in a micro-benchmark).
#[cfg(target_arch = "x86_64")]
mod gelu512 {
    use super::{GELU_C, SQRT_2_OVER_PI};
    use std::arch::x86_64::*;

    /// `e^x` for `x` in [−80, 80] (Cephes' polynomial, as `fastmath::exp`; 2^n by `vscalefps`).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn exp(x: __m512) -> __m512 {
        let n = _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let e = _mm512_fmadd_ps(
            _mm512_mul_ps(p, r),
            r,
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        _mm512_scalef_ps(e, n)
    }

    /// `(s, 1/(e+1))` with `s = e/(e+1)` (as a product: `1 − 1/(e+1)` cancels for negative x) for
    /// `e = exp(2u)`, `u = √(2/π)(x + 0.044715x³)`. `2u` is clamped to ±80, where `tanh` is ±1
    /// in f32 already.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn sigmoid_2u(x: __m512) -> (__m512, __m512) {
        let x2 = _mm512_mul_ps(x, x);
        let inner = _mm512_fmadd_ps(_mm512_mul_ps(x2, _mm512_set1_ps(GELU_C)), x, x);
        let two_u = _mm512_mul_ps(inner, _mm512_set1_ps(2.0 * SQRT_2_OVER_PI));
        let two_u = _mm512_min_ps(
            _mm512_max_ps(two_u, _mm512_set1_ps(-80.0)),
            _mm512_set1_ps(80.0),
        );
        let e = exp(two_u);
        let d = _mm512_add_ps(e, _mm512_set1_ps(1.0));
        let r = _mm512_rcp14_ps(d);
        // Newton: r·(2 − d·r).
        let inv = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0)));
        (_mm512_mul_ps(e, inv), inv)
    }

    /// Lanes `i..` of `v` (up to 16), zero past its end.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn load(v: &[f32], i: usize) -> (__m512, __mmask16) {
        let n = (v.len() - i).min(16);
        let m = ((1u32 << n) - 1) as __mmask16;
        // SAFETY: the mask covers the `n` floats of `v` from i.
        (unsafe { _mm512_maskz_loadu_ps(m, v.as_ptr().add(i)) }, m)
    }

    /// `y = GELU(x)`, `y.len() == x.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) fn forward(y: &mut [f32], x: &[f32]) {
        assert_eq!(y.len(), x.len());
        for i in (0..x.len()).step_by(16) {
            let (xv, m) = load(x, i);
            let out = _mm512_mul_ps(xv, sigmoid_2u(xv).0);
            // SAFETY: the same lanes as the load, inside `y` (same length as `x`).
            unsafe { _mm512_mask_storeu_ps(y.as_mut_ptr().add(i), m, out) };
        }
    }

    /// `dx = GELU'(x)·g`, all three of one length.
    #[target_feature(enable = "avx512f")]
    pub(super) fn backward(dx: &mut [f32], x: &[f32], g: &[f32]) {
        assert!(dx.len() == x.len() && g.len() == x.len());
        for i in (0..x.len()).step_by(16) {
            let ((xv, m), (gv, _)) = (load(x, i), load(g, i));
            let (s, inv) = sigmoid_2u(xv);
            // GELU' = s + x·(2·s/(e+1))·√(2/π)(1 + 3·0.044715·x²).
            let x2 = _mm512_mul_ps(xv, xv);
            let du = _mm512_fmadd_ps(
                x2,
                _mm512_set1_ps(3.0 * GELU_C * SQRT_2_OVER_PI),
                _mm512_set1_ps(SQRT_2_OVER_PI),
            );
            let half_sech2 = _mm512_mul_ps(_mm512_mul_ps(s, inv), _mm512_set1_ps(2.0));
            let d = _mm512_fmadd_ps(_mm512_mul_ps(xv, half_sech2), du, s);
            // SAFETY: the same lanes as the loads, inside `dx`.
            unsafe { _mm512_mask_storeu_ps(dx.as_mut_ptr().add(i), m, _mm512_mul_ps(d, gv)) };
        }
    }
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// `GELU(x) = ½x(1 + tanh(√(2/π)(x + 0.044715x³)))`, GPT-2's `gelu_new`.
pub(crate) struct GeluTanh;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "gelu")?;
        #[cfg(target_arch = "x86_64")]
        if has_avx512f() {
            let mut y = output_buffer(x.len());
            par_zip(&mut y, x, x, |y, x, _| {
                // SAFETY: AVX-512F was just detected.
                unsafe { gelu512::forward(y, x) }
            });
            return Ok((CpuStorage::F32(y), l.shape().clone()));
        }
        let y = par_map2(x, x, |x, _| {
            0.5 * x * (1.0 + fastmath::tanh(SQRT_2_OVER_PI * (x + GELU_C * x * x * x)))
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluTanhGrad)?,
        ))
    }
}

/// The input `x` and incoming gradient `g` of an elementwise op's backward, checked to match.
fn input_and_grad<'a>(
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
    op: &str,
) -> Result<(&'a [f32], &'a [f32])> {
    let x = slice(s1, l1, &format!("{op} x"))?;
    let g = slice(s2, l2, &format!("{op} g"))?;
    if x.len() != g.len() {
        candle_core::bail!("{op}: x has {} elements, g {}", x.len(), g.len())
    }
    Ok((x, g))
}

/// `dGELU/dx = ½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²)`, times the incoming gradient.
struct GeluTanhGrad;

impl CustomOp2 for GeluTanhGrad {
    fn name(&self) -> &'static str {
        "gelu-tanh-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = input_and_grad(s1, l1, s2, l2, "gelu-grad")?;
        #[cfg(target_arch = "x86_64")]
        if has_avx512f() {
            let mut dx = output_buffer(x.len());
            par_zip(&mut dx, x, g, |dx, x, g| {
                // SAFETY: AVX-512F was just detected.
                unsafe { gelu512::backward(dx, x, g) }
            });
            return Ok((CpuStorage::F32(dx), l1.shape().clone()));
        }
        let dx = par_map2(x, g, |x, g| {
            // With e = exp(2u): 1 + t = 2e/(e+1) and 1 − t² = 4e/(e+1)², free of the
            // cancellation in 1 − t·t near saturation.
            let e = fastmath::exp(2.0 * SQRT_2_OVER_PI * (x + GELU_C * x * x * x));
            let inv = 1.0 / (e + 1.0);
            let (one_plus_t, one_minus_t2) = if e.is_finite() {
                (2.0 * e * inv, 4.0 * e * inv * inv)
            } else {
                (2.0, 0.0)
            };
            let d = 0.5 * one_plus_t
                + 0.5 * x * one_minus_t2 * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * x * x);
            d * g
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- GELU (exact, erf)

/// The exact GELU `x·Φ(x) = ½x(1 + erf(x/√2))` (BERT, BART), with `fastmath::erf`.
pub(crate) struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "gelu-erf")?;
        let y = par_map2(x, x, |x, _| {
            0.5 * x * (1.0 + fastmath::erf(x * std::f32::consts::FRAC_1_SQRT_2))
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluErfGrad)?,
        ))
    }
}

/// `d/dx x·Φ(x) = Φ(x) + x·φ(x)`, `φ(x) = e^{−x²/2}/√(2π)`, times the incoming gradient.
struct GeluErfGrad;

impl CustomOp2 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "gelu-erf-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = input_and_grad(s1, l1, s2, l2, "gelu-erf-grad")?;
        // 1/√(2π)
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        let dx = par_map2(x, g, |x, g| {
            let cdf = 0.5 * (1.0 + fastmath::erf(x * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = INV_SQRT_2PI * fastmath::exp(-0.5 * x * x);
            (cdf + x * pdf) * g
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- softmax, optionally causal

/// Softmax over the last dimension of `scale · x`. With `causal`, row `i` of each `[q, k]` matrix
/// only sees columns `j ≤ i + (k − q)`; the others get probability exactly 0.
pub(crate) struct Softmax {
    pub scale: f32,
    pub causal: bool,
}

impl Softmax {
    fn visible(&self, row: usize, q: usize, k: usize) -> usize {
        if self.causal {
            (row % q + 1 + (k - q.min(k))).min(k)
        } else {
            k
        }
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "softmax")?;
        let k = last_dim(l);
        let q = if l.dims().len() >= 2 {
            l.dims()[l.dims().len() - 2]
        } else {
            1
        };
        let mut y = vec![0f32; x.len()];
        simd(|| {
            for (row, (xr, yr)) in x.chunks_exact(k).zip(y.chunks_exact_mut(k)).enumerate() {
                let n = self.visible(row, q, k);
                let max = fastmath::max(&xr[..n]) * self.scale;
                for (yv, &xv) in yr[..n].iter_mut().zip(&xr[..n]) {
                    *yv = fastmath::exp(xv * self.scale - max);
                }
                let inv = 1.0 / fastmath::sum(&yr[..n]);
                yr[..n].iter_mut().for_each(|v| *v *= inv);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(
            &grad.contiguous()?,
            &SoftmaxGrad { scale: self.scale },
        )?))
    }
}

/// `dx = scale · y ⊙ (g − ⟨g, y⟩)` per row.
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice(s1, l1, "softmax-grad y")?;
        let g = slice(s2, l2, "softmax-grad g")?;
        let k = last_dim(l1);
        let mut dx = vec![0f32; y.len()];
        simd(|| {
            for ((yr, gr), dr) in y
                .chunks_exact(k)
                .zip(g.chunks_exact(k))
                .zip(dx.chunks_exact_mut(k))
            {
                let dot = fastmath::dot(yr, gr);
                for ((d, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                    *d = self.scale * yv * (gv - dot);
                }
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- layer norm

/// Rows of a layer norm per parallel task.
const ROWS_PER_TASK: usize = 64;

/// `y = (x − μ)/√(σ² + ε) · γ + β` over the last dimension.
pub(crate) struct LayerNorm {
    pub eps: f32,
}

fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = fastmath::sum(x) / n;
    let var = fastmath::sum_map(x, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "layer-norm x")?;
        let gamma = slice(s2, l2, "layer-norm gamma")?;
        let beta = slice(s3, l3, "layer-norm beta")?;
        let c = last_dim(l1);
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!("layer-norm: gamma and beta need {c} elements")
        }
        let mut y = output_buffer(x.len());
        let rows = ROWS_PER_TASK * c;
        y.par_chunks_mut(rows)
            .zip(x.par_chunks(rows))
            .for_each(|(y, x)| {
                simd(|| {
                    for (xr, yr) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
                        let (mean, rstd) = row_stats(xr, self.eps);
                        for (((yv, &xv), &g), &b) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
                            *yv = (xv - mean) * rstd * g + b;
                        }
                    }
                })
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = gamma.elem_count();
        // One kernel computes all three gradients: dx in a buffer of its own, [dγ (c) | dβ (c)]
        // packed in another.
        let op = LayerNormGrad {
            eps: self.eps,
            dx: InputGrad::default(),
        };
        let packed = x.apply_op3_no_bwd(gamma, &grad.contiguous()?, &op)?;
        let dx = op.dx.take(x)?;
        let dgamma = packed.narrow(0, 0, c)?.reshape(gamma.shape())?;
        let dbeta = packed.narrow(0, c, c)?.reshape(gamma.shape())?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// With `x̂ = (x − μ)·r` and `d = g ⊙ γ`: `dx = r·(d − mean(d) − x̂·mean(d ⊙ x̂))`,
/// `dγ = Σ_rows g ⊙ x̂`, `dβ = Σ_rows g`.
struct LayerNormGrad {
    eps: f32,
    dx: InputGrad,
}

/// The input gradient a `…Grad` kernel makes beside the parameter gradients it returns packed:
/// in a buffer of its own, so that it is freed once the backward pass has used it, while the
/// parameter gradients — kept until the optimizer step — hold only theirs (a view into one
/// buffer with it kept both alive: at GPT-2 small × 1 024 tokens, 27 MiB per block).
#[derive(Default)]
struct InputGrad(std::sync::Mutex<Option<Vec<f32>>>);

impl InputGrad {
    fn put(&self, dx: Vec<f32>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(dx);
    }

    /// The kernel's input gradient, shaped and placed as `x`.
    fn take(&self, x: &Tensor) -> Result<Tensor> {
        match self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(dx) => Tensor::from_vec(dx, x.shape(), x.device()),
            None => candle_core::bail!("a gradient kernel returned no input gradient"),
        }
    }
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "layer-norm-grad x")?;
        let gamma = slice(s2, l2, "layer-norm-grad gamma")?;
        let g = slice(s3, l3, "layer-norm-grad g")?;
        let c = gamma.len();
        let n = x.len();
        // dx is written in full; dγ and dβ are sums.
        let mut dx_buf = output_buffer(n);
        let dx = &mut dx_buf[..];
        let mut out = vec![0f32; 2 * c];
        let (dgamma, dbeta) = out.split_at_mut(c);
        // Row chunks in parallel, each with its own partial dγ, dβ, summed at the end.
        let rows = ROWS_PER_TASK * c;
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(rows)
            .zip(x.par_chunks(rows).zip(g.par_chunks(rows)))
            .map(|(dx, (x, g))| {
                let mut part = vec![0f32; 2 * c];
                let (pg, pb) = part.split_at_mut(c);
                let (mut xhat, mut dh) = (vec![0f32; c], vec![0f32; c]);
                // Element-wise loops and lane-parallel sums only, so that every loop vectorizes
                // (a running scalar sum is one long dependency chain).
                simd(|| {
                    for ((xr, gr), dr) in x
                        .chunks_exact(c)
                        .zip(g.chunks_exact(c))
                        .zip(dx.chunks_exact_mut(c))
                    {
                        let (mean, rstd) = row_stats(xr, self.eps);
                        for (h, &xv) in xhat.iter_mut().zip(xr) {
                            *h = (xv - mean) * rstd;
                        }
                        for ((d, &gv), &gm) in dh.iter_mut().zip(gr).zip(gamma) {
                            *d = gv * gm;
                        }
                        let mean_d = fastmath::sum(&dh) / c as f32;
                        let mean_dx = fastmath::dot(&dh, &xhat) / c as f32;
                        for ((out, &d), &h) in dr.iter_mut().zip(&dh).zip(&xhat) {
                            *out = rstd * (d - mean_d - h * mean_dx);
                        }
                        for (((pg, pb), &gv), &h) in
                            pg.iter_mut().zip(pb.iter_mut()).zip(gr).zip(&xhat)
                        {
                            *pg += gv * h;
                            *pb += gv;
                        }
                    }
                });
                part
            })
            .collect();
        for part in partials {
            dgamma.iter_mut().zip(&part[..c]).for_each(|(a, b)| *a += b);
            dbeta.iter_mut().zip(&part[c..]).for_each(|(a, b)| *a += b);
        }
        self.dx.put(dx_buf);
        Ok((CpuStorage::F32(out), Shape::from(2 * c)))
    }
}

/// RMS normalization over the last dimension (T5): `y = x·r·γ`, `r = 1/√(mean(x²) + ε)`.
pub(crate) struct RmsNorm {
    pub eps: f32,
}

/// `r = 1/√(mean(x²) + ε)` of one row.
fn row_rms_inv(x: &[f32], eps: f32) -> f32 {
    let ms = fastmath::dot(x, x) / x.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "rms-norm x")?;
        let gamma = slice(s2, l2, "rms-norm gamma")?;
        let c = last_dim(l1);
        if gamma.len() != c {
            candle_core::bail!("rms-norm: gamma needs {c} elements")
        }
        let mut y = output_buffer(x.len());
        let rows = ROWS_PER_TASK * c;
        y.par_chunks_mut(rows)
            .zip(x.par_chunks(rows))
            .for_each(|(y, x)| {
                simd(|| {
                    for (xr, yr) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
                        let r = row_rms_inv(xr, self.eps);
                        for ((yv, &xv), &g) in yr.iter_mut().zip(xr).zip(gamma) {
                            *yv = xv * r * g;
                        }
                    }
                })
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One kernel computes both gradients, dx and dγ, each in a buffer of its own.
        let op = RmsNormGrad {
            eps: self.eps,
            dx: InputGrad::default(),
        };
        let dgamma = x.apply_op3_no_bwd(gamma, &grad.contiguous()?, &op)?;
        let dx = op.dx.take(x)?;
        Ok((Some(dx), Some(dgamma.reshape(gamma.shape())?)))
    }
}

/// With `x̂ = x·r` and `d = g ⊙ γ`: `dx = r·(d − x̂·mean(d ⊙ x̂))` (from `∂r/∂xⱼ = −r³xⱼ/c`),
/// `dγ = Σ_rows g ⊙ x̂`.
struct RmsNormGrad {
    eps: f32,
    dx: InputGrad,
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "rms-norm-grad x")?;
        let gamma = slice(s2, l2, "rms-norm-grad gamma")?;
        let g = slice(s3, l3, "rms-norm-grad g")?;
        let (n, c) = (x.len(), gamma.len());
        let mut dx_buf = output_buffer(n);
        let dx = &mut dx_buf[..];
        let mut out = vec![0f32; c];
        let dgamma = &mut out[..];
        let rows = ROWS_PER_TASK * c;
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(rows)
            .zip(x.par_chunks(rows).zip(g.par_chunks(rows)))
            .map(|(dx, (x, g))| {
                let mut part = vec![0f32; c];
                let (mut xhat, mut dh) = (vec![0f32; c], vec![0f32; c]);
                simd(|| {
                    for ((xr, gr), dr) in x
                        .chunks_exact(c)
                        .zip(g.chunks_exact(c))
                        .zip(dx.chunks_exact_mut(c))
                    {
                        let r = row_rms_inv(xr, self.eps);
                        for (h, &xv) in xhat.iter_mut().zip(xr) {
                            *h = xv * r;
                        }
                        for ((d, &gv), &gm) in dh.iter_mut().zip(gr).zip(gamma) {
                            *d = gv * gm;
                        }
                        let mean_dx = fastmath::dot(&dh, &xhat) / c as f32;
                        for ((out, &d), &h) in dr.iter_mut().zip(&dh).zip(&xhat) {
                            *out = r * (d - h * mean_dx);
                        }
                        for ((p, &gv), &h) in part.iter_mut().zip(gr).zip(&xhat) {
                            *p += gv * h;
                        }
                    }
                });
                part
            })
            .collect();
        for part in partials {
            dgamma.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
        }
        self.dx.put(dx_buf);
        Ok((CpuStorage::F32(out), Shape::from(c)))
    }
}

// ---------------------------------------------------------------- causal self-attention

/// Causal multi-head self-attention straight from the packed projection `qkv: [b, t, 3·h·d]`
/// (GPT-2's `c_attn` output, `[q | k | v]` along the last axis) to the merged heads `[b, t, h·d]`:
/// `y_i = Σ_{j≤i} softmax_j(scale·q_i·k_j) v_j` per head. It replaces splitting the heads (three
/// transposed copies), two batched matmuls, the softmax and merging the heads, and the backward of
/// each. Per (sequence, head) the products are gemm calls on strided views of `qkv` — no copies;
/// sequences run in parallel; the products skip the zero triangles of the `b·h` probability
/// matrices (`t × t`, zero above the diagonal). Those are kept for the backward while they are
/// small ([`keeps_probs`]); beyond, each is made in a scratch matrix and dropped, and the
/// backward recomputes it head by head — no `O(t²)` activation is stored (flash attention's
/// trade: `QKᵀ` and the softmax once more in the backward).
pub(crate) struct CausalAttention {
    pub n_head: usize,
    pub scale: f32,
    /// Precision of the products (f32, or bf16 / f16 inputs with f32 accumulation).
    pub prec: MatmulPrecision,
    /// Keep the probabilities (`Some`), or decide by [`keeps_probs`] (`None`).
    pub keep_probs: Option<bool>,
    /// The forward's probabilities `[b, h, t, t]`, kept for the backward (which lives as long
    /// as this op does: only while a graph needs it).
    pub probs: std::sync::Mutex<Option<Arc<Vec<f32>>>>,
}

impl CausalAttention {
    pub fn new(n_head: usize, scale: f32, prec: MatmulPrecision) -> Self {
        Self {
            n_head,
            scale,
            prec,
            keep_probs: None,
            probs: std::sync::Mutex::new(None),
        }
    }
}

/// Whether an attention call keeps its probabilities `[b, h, t, t]` for the backward: while
/// they hold at most four values per token and width (`h·t ≤ 4·h·d`, i.e. `t ≤ 4d`) — then they
/// cost about as much as the layer's other saved activations (≈ 16 per token and width), and
/// keeping them saves the recomputation. Past that (GPT-2 small at 1024 tokens: 50 MB per
/// layer) they are recomputed in the backward.
pub(crate) fn keeps_probs(t: usize, head_dim: usize) -> bool {
    t <= 4 * head_dim
}

/// Sizes of one attention call: time, heads, head width.
#[derive(Clone, Copy)]
struct AttnDims {
    t: usize,
    h: usize,
    d: usize,
}

impl AttnDims {
    fn of(l: &Layout, n_head: usize) -> Result<(usize, Self)> {
        let &[b, t, c3] = l.dims() else {
            candle_core::bail!(
                "causal-attention: qkv must be [batch, time, 3·d], got {:?}",
                l.dims()
            )
        };
        if n_head == 0 || c3 % (3 * n_head) != 0 {
            candle_core::bail!(
                "causal-attention: last dim {c3} is not 3·n_head·head_dim for n_head {n_head}"
            )
        }
        Ok((
            b,
            Self {
                t,
                h: n_head,
                d: c3 / (3 * n_head),
            },
        ))
    }

    /// Width of the model, `h·d`.
    fn c(&self) -> usize {
        self.h * self.d
    }

    /// Head `head`'s queries (`part` 0), keys (1) or values (2) in one sequence's `qkv` rows:
    /// `[t, d]` with row stride `3c`.
    fn part<'a>(&self, qkv: &'a [f32], part: usize, head: usize) -> Mat<'a> {
        Mat {
            data: &qkv[part * self.c() + head * self.d..],
            cs: 1,
            rs: 3 * self.c() as isize,
        }
    }

    /// The same, transposed: `[d, t]`.
    fn part_t<'a>(&self, qkv: &'a [f32], part: usize, head: usize) -> Mat<'a> {
        Mat {
            data: &qkv[part * self.c() + head * self.d..],
            cs: 3 * self.c() as isize,
            rs: 1,
        }
    }
}

/// `row ← softmax(row)` (entries of −∞ become exactly 0).
#[inline(always)]
fn softmax_in_place(row: &mut [f32]) {
    let max = fastmath::max(row);
    for r in row.iter_mut() {
        *r = fastmath::exp(*r - max);
    }
    let inv = 1.0 / fastmath::sum(row);
    row.iter_mut().for_each(|r| *r *= inv);
}

/// The softmax backward over rows of `n`, in place: `ds ← scale·p ⊙ (ds − rowsum(p ⊙ ds))`,
/// from the probabilities `p` and their gradient `ds`.
#[inline(always)]
fn softmax_backward_rows(p: &[f32], ds: &mut [f32], n: usize, scale: f32) {
    for (pr, dr) in p.chunks_exact(n).zip(ds.chunks_exact_mut(n)) {
        let dot = fastmath::dot(pr, dr);
        for (o, &pij) in dr.iter_mut().zip(pr) {
            *o = scale * pij * (*o - dot);
        }
    }
}

/// `P = softmax(scale·QKᵀ + M)` of head `head` of one sequence into `p` (`t × t`, zero above the
/// diagonal).
fn attn_probs(
    qkv: &[f32],
    dims: AttnDims,
    head: usize,
    scale: f32,
    prec: MatmulPrecision,
    p: &mut [f32],
) {
    let AttnDims { t, d, .. } = dims;
    let (q, kt) = (dims.part(qkv, 0, head), dims.part_t(qkv, 1, head));
    // Only j ≤ i is computed; the rest is set to 0 below.
    mm_causal(prec, p, t, q, kt, (t, d, t), scale, Tri::LowerC);
    simd(|| {
        for (i, row) in p.chunks_exact_mut(t).enumerate() {
            // Row i sees columns ..=i. The loops run over whole 16-lane chunks: the columns
            // past i in the last chunk are set to −∞, whose exp is exactly 0.
            let (seen, future) = row.split_at_mut((i + 1).next_multiple_of(16).min(t));
            future.fill(0.0);
            seen[i + 1..].fill(f32::NEG_INFINITY);
            softmax_in_place(seen);
        }
    })
}

impl CustomOp1 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = slice(s, l, "causal-attention qkv")?;
        let prec = self.prec;
        let (b, dims) = AttnDims::of(l, self.n_head)?;
        let AttnDims { t, h, d } = dims;
        let c = dims.c();
        let keep = self.keep_probs.unwrap_or_else(|| keeps_probs(t, d));
        // Each head writes its columns of every row, and its probabilities in full (kept, or
        // one scratch matrix per sequence).
        let mut y = output_buffer(b * t * c);
        let mut probs = output_buffer(if keep { b * h * t * t } else { 0 });
        let one_head = |qkv: &[f32], y: &mut [f32], head: usize, p: &mut [f32]| {
            attn_probs(qkv, dims, head, self.scale, prec, p);
            // Y_h = P V, written straight into the merged-heads layout.
            let v = dims.part(qkv, 2, head);
            let y = &mut y[head * d..];
            mm_causal(prec, y, c, Mat::rows(p, t), v, (t, t, d), 1.0, Tri::LowerA);
        };
        let rows = y.par_chunks_mut(t * c).zip(qkv.par_chunks(t * 3 * c));
        if keep {
            rows.zip(probs.par_chunks_mut(h * t * t))
                .for_each(|((y, qkv), probs)| {
                    for (head, p) in probs.chunks_exact_mut(t * t).enumerate() {
                        one_head(qkv, y, head, p);
                    }
                });
            if let Ok(mut kept) = self.probs.lock() {
                *kept = Some(Arc::new(probs));
            }
        } else {
            rows.for_each(|(y, qkv)| {
                let mut p = vec![0f32; t * t];
                for head in 0..h {
                    one_head(qkv, y, head, &mut p);
                }
            });
        }
        Ok((CpuStorage::F32(y), Shape::from((b, t, c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad.contiguous()?,
            &CausalAttentionGrad {
                n_head: self.n_head,
                scale: self.scale,
                prec: self.prec,
                probs: self.probs.lock().ok().and_then(|p| p.clone()),
            },
        )?))
    }
}

/// With `P` from the forward (recomputed if absent) and `dY` the incoming gradient, per head:
/// `dV = Pᵀ dY`, `dP = dY Vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`,
/// `dQ = scale·dS K`, `dK = scale·dSᵀ Q`, written into `dqkv` laid out like `qkv`.
struct CausalAttentionGrad {
    n_head: usize,
    scale: f32,
    prec: MatmulPrecision,
    probs: Option<Arc<Vec<f32>>>,
}

impl CustomOp2 for CausalAttentionGrad {
    fn name(&self) -> &'static str {
        "causal-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = slice(s1, l1, "causal-attention-grad qkv")?;
        let dy = slice(s2, l2, "causal-attention-grad dy")?;
        let (b, dims) = AttnDims::of(l1, self.n_head)?;
        let AttnDims { t, h, d } = dims;
        let c = dims.c();
        if dy.len() != b * t * c {
            candle_core::bail!(
                "causal-attention-grad: dy has {} elements, expected {}",
                dy.len(),
                b * t * c
            )
        }
        let (scale, prec) = (self.scale, self.prec);
        // Each head writes its q, k and v columns of every row.
        let mut dqkv = output_buffer(qkv.len());
        let kept = self.probs.as_deref().filter(|p| p.len() == b * h * t * t);
        dqkv.par_chunks_mut(t * 3 * c)
            .zip(qkv.par_chunks(t * 3 * c))
            .zip(dy.par_chunks(t * c))
            .enumerate()
            .for_each(|(bi, ((dqkv, qkv), dy))| {
                let (mut recomputed, mut ds) = (vec![0f32; t * t], vec![0f32; t * t]);
                for head in 0..h {
                    let p: &[f32] = match kept {
                        Some(all) => &all[(bi * h + head) * t * t..][..t * t],
                        None => {
                            attn_probs(qkv, dims, head, scale, prec, &mut recomputed);
                            &recomputed
                        }
                    };
                    let dy_h = Mat {
                        data: &dy[head * d..],
                        cs: 1,
                        rs: c as isize,
                    };
                    // dP = dY Vᵀ, then dS in place.
                    let vt = dims.part_t(qkv, 2, head);
                    // Only j ≤ i of dP is computed (P is 0 above the diagonal, and so is dS).
                    mm_causal(prec, &mut ds, t, dy_h, vt, (t, d, t), 1.0, Tri::LowerC);
                    simd(|| {
                        for (i, (pr, dr)) in
                            p.chunks_exact(t).zip(ds.chunks_exact_mut(t)).enumerate()
                        {
                            // Whole 16-lane chunks, as in `attn_probs` (P is 0 past i).
                            let (dr, above) = dr.split_at_mut((i + 1).next_multiple_of(16).min(t));
                            above.fill(0.0);
                            dr[i + 1..].fill(0.0);
                            let dot = fastmath::dot(&pr[..dr.len()], dr);
                            for (o, &pij) in dr.iter_mut().zip(pr) {
                                *o = scale * pij * (*o - dot);
                            }
                        }
                    });
                    let (dsm, dst, pt) = (Mat::rows(&ds, t), Mat::cols(&ds, t), Mat::cols(p, t));
                    let (q, k) = (dims.part(qkv, 0, head), dims.part(qkv, 1, head));
                    let rs3 = 3 * c;
                    // dQ = dS K, dK = dSᵀ Q, dV = Pᵀ dY.
                    // dS and P are lower triangular, so dSᵀ and Pᵀ upper.
                    let dq = &mut dqkv[head * d..];
                    mm_causal(prec, dq, rs3, dsm, k, (t, t, d), 1.0, Tri::LowerA);
                    let dk = &mut dqkv[c + head * d..];
                    mm_causal(prec, dk, rs3, dst, q, (t, t, d), 1.0, Tri::UpperA);
                    let dv = &mut dqkv[2 * c + head * d..];
                    mm_causal(prec, dv, rs3, pt, dy_h, (t, t, d), 1.0, Tri::UpperA);
                }
            });
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- bidirectional attention

/// Bidirectional multi-head self-attention (BERT, RoBERTa) from the packed projection
/// `qkv: [b, t, 3·h·d]` to the merged heads `[b, t, h·d]`:
/// `Y = (softmax(scale·QKᵀ + key_bias) ⊙ keep) V` per head, where `key_bias [b, t]` is the
/// additive padding mask of each sequence's keys and `keep [b, h, t, t]` the dropout mask on the
/// probabilities (0 or `1/(1−p)`), both constants. Per (sequence, head), gemm calls on strided
/// views of `qkv`, sequences in parallel, the probabilities kept for the backward — as in
/// [`CausalAttention`], whose layout helpers it shares.
pub(crate) struct BiAttention {
    pub n_head: usize,
    pub scale: f32,
    pub prec: MatmulPrecision,
    pub key_bias: Option<Arc<Vec<f32>>>,
    pub keep: Option<Arc<Vec<f32>>>,
    /// Keep the probabilities (`Some`), or decide by [`keeps_probs`] (`None`).
    pub keep_probs: Option<bool>,
    /// The forward's probabilities `[b, h, t, t]` before dropout, when kept.
    pub probs: std::sync::Mutex<Option<Arc<Vec<f32>>>>,
}

impl BiAttention {
    /// Checks the constants' sizes against `qkv`'s and returns the call's sizes.
    fn dims(&self, l: &Layout) -> Result<(usize, AttnDims)> {
        let (b, dims) = AttnDims::of(l, self.n_head)?;
        let t = dims.t;
        if self.key_bias.as_ref().is_some_and(|kb| kb.len() != b * t) {
            candle_core::bail!("attention: key bias needs {b}·{t} values")
        }
        if self
            .keep
            .as_ref()
            .is_some_and(|m| m.len() != b * dims.h * t * t)
        {
            candle_core::bail!("attention: dropout mask needs [{b}, {}, {t}, {t}]", dims.h)
        }
        Ok((b, dims))
    }
}

/// `P = softmax(scale·QKᵀ + key_bias)` of head `head` of sequence `bi` into `p` (`t × t`).
fn bi_attn_probs(
    op: &BiAttention,
    qkv: &[f32],
    dims: AttnDims,
    (bi, head): (usize, usize),
    p: &mut [f32],
) {
    let AttnDims { t, d, .. } = dims;
    let (q, kt) = (dims.part(qkv, 0, head), dims.part_t(qkv, 1, head));
    mm_causal(op.prec, p, t, q, kt, (t, d, t), op.scale, Tri::Full);
    let bias = op.key_bias.as_ref().map(|kb| &kb[bi * t..(bi + 1) * t]);
    simd(|| {
        for row in p.chunks_exact_mut(t) {
            if let Some(bias) = bias {
                row.iter_mut().zip(bias).for_each(|(r, &b)| *r += b);
            }
            softmax_in_place(row);
        }
    })
}

/// `out = p ⊙ keep` for one head's `t × t` block (or `p` itself without dropout).
fn dropped<'a>(p: &'a [f32], keep: Option<&[f32]>, out: &'a mut [f32]) -> &'a [f32] {
    match keep {
        Some(keep) => {
            simd(|| {
                for ((o, &pv), &kv) in out.iter_mut().zip(p).zip(keep) {
                    *o = pv * kv;
                }
            });
            out
        }
        None => p,
    }
}

impl CustomOp1 for BiAttention {
    fn name(&self) -> &'static str {
        "bi-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = slice(s, l, "attention qkv")?;
        let (b, dims) = self.dims(l)?;
        let AttnDims { t, h, d } = dims;
        let c = dims.c();
        let keep_probs = self.keep_probs.unwrap_or_else(|| keeps_probs(t, d));
        let mut y = output_buffer(b * t * c);
        let mut probs = output_buffer(if keep_probs { b * h * t * t } else { 0 });
        // Head `head` of sequence `bi` into `y`, its probabilities in `p`.
        let one_head = |bi: usize,
                        head: usize,
                        (qkv, y): (&[f32], &mut [f32]),
                        p: &mut [f32],
                        scratch: &mut [f32]| {
            bi_attn_probs(self, qkv, dims, (bi, head), p);
            let keep = self
                .keep
                .as_ref()
                .map(|m| &m[(bi * h + head) * t * t..][..t * t]);
            let pd = dropped(p, keep, scratch);
            let v = dims.part(qkv, 2, head);
            let y = &mut y[head * d..];
            mm_causal(
                self.prec,
                y,
                c,
                Mat::rows(pd, t),
                v,
                (t, t, d),
                1.0,
                Tri::Full,
            );
        };
        let rows = y.par_chunks_mut(t * c).zip(qkv.par_chunks(t * 3 * c));
        if keep_probs {
            rows.zip(probs.par_chunks_mut(h * t * t))
                .enumerate()
                .for_each(|(bi, ((y, qkv), probs))| {
                    let mut scratch = vec![0f32; t * t];
                    for (head, p) in probs.chunks_exact_mut(t * t).enumerate() {
                        one_head(bi, head, (qkv, &mut *y), p, &mut scratch);
                    }
                });
            if let Ok(mut kept) = self.probs.lock() {
                *kept = Some(Arc::new(probs));
            }
        } else {
            rows.enumerate().for_each(|(bi, (y, qkv))| {
                let (mut p, mut scratch) = (vec![0f32; t * t], vec![0f32; t * t]);
                for head in 0..h {
                    one_head(bi, head, (qkv, &mut *y), &mut p, &mut scratch);
                }
            });
        }
        Ok((CpuStorage::F32(y), Shape::from((b, t, c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = BiAttention {
            n_head: self.n_head,
            scale: self.scale,
            prec: self.prec,
            key_bias: self.key_bias.clone(),
            keep: self.keep.clone(),
            keep_probs: self.keep_probs,
            probs: std::sync::Mutex::new(self.probs.lock().ok().and_then(|p| p.clone())),
        };
        Ok(Some(arg.apply_op2_no_bwd(
            &grad.contiguous()?,
            &BiAttentionGrad(op),
        )?))
    }
}

/// With `P` from the forward (recomputed if absent), `P' = P ⊙ keep` and `dY`, per head:
/// `dV = P'ᵀ dY`, `dP = (dY Vᵀ) ⊙ keep`, `dS = scale·P ⊙ (dP − rowsum(P ⊙ dP))`,
/// `dQ = dS K`, `dK = dSᵀ Q`, written into `dqkv` laid out like `qkv`.
struct BiAttentionGrad(BiAttention);

impl CustomOp2 for BiAttentionGrad {
    fn name(&self) -> &'static str {
        "bi-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = &self.0;
        let qkv = slice(s1, l1, "attention-grad qkv")?;
        let dy = slice(s2, l2, "attention-grad dy")?;
        let (b, dims) = op.dims(l1)?;
        let AttnDims { t, h, d } = dims;
        let c = dims.c();
        if dy.len() != b * t * c {
            candle_core::bail!(
                "attention-grad: dy has {} elements, expected {}",
                dy.len(),
                b * t * c
            )
        }
        let (scale, prec) = (op.scale, op.prec);
        let kept = op.probs.lock().ok().and_then(|p| p.clone());
        let kept = kept.as_deref().filter(|p| p.len() == b * h * t * t);
        let mut dqkv = output_buffer(qkv.len());
        dqkv.par_chunks_mut(t * 3 * c)
            .zip(qkv.par_chunks(t * 3 * c))
            .zip(dy.par_chunks(t * c))
            .enumerate()
            .for_each(|(bi, ((dqkv, qkv), dy))| {
                let (mut recomputed, mut ds, mut pd) =
                    (vec![0f32; t * t], vec![0f32; t * t], vec![0f32; t * t]);
                for head in 0..h {
                    let p: &[f32] = match kept {
                        Some(all) => &all[(bi * h + head) * t * t..][..t * t],
                        None => {
                            bi_attn_probs(op, qkv, dims, (bi, head), &mut recomputed);
                            &recomputed
                        }
                    };
                    let keep = op
                        .keep
                        .as_ref()
                        .map(|m| &m[(bi * h + head) * t * t..][..t * t]);
                    let dy_h = Mat {
                        data: &dy[head * d..],
                        cs: 1,
                        rs: c as isize,
                    };
                    let vt = dims.part_t(qkv, 2, head);
                    mm_causal(prec, &mut ds, t, dy_h, vt, (t, d, t), 1.0, Tri::Full);
                    simd(|| {
                        if let Some(keep) = keep {
                            ds.iter_mut().zip(keep).for_each(|(o, &k)| *o *= k);
                        }
                        softmax_backward_rows(p, &mut ds, t, scale);
                    });
                    let pd = dropped(p, keep, &mut pd);
                    let (dsm, dst, pt) = (Mat::rows(&ds, t), Mat::cols(&ds, t), Mat::cols(pd, t));
                    let (q, k) = (dims.part(qkv, 0, head), dims.part(qkv, 1, head));
                    let rs3 = 3 * c;
                    let dq = &mut dqkv[head * d..];
                    mm_causal(prec, dq, rs3, dsm, k, (t, t, d), 1.0, Tri::Full);
                    let dk = &mut dqkv[c + head * d..];
                    mm_causal(prec, dk, rs3, dst, q, (t, t, d), 1.0, Tri::Full);
                    let dv = &mut dqkv[2 * c + head * d..];
                    mm_causal(prec, dv, rs3, pt, dy_h, (t, t, d), 1.0, Tri::Full);
                }
            });
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- attention with a learned bias

/// Multi-head attention with an additive bias on the scores that has a gradient (T5's relative
/// position bias plus padding), from queries `q: [b, tq, h·d]` and the packed keys and values
/// `kv: [b, tk, 2·h·d]` (`[k | v]`), to the merged heads `[b, tq, h·d]`:
/// `Y = (softmax(scale·QKᵀ + B (+ causal mask)) ⊙ keep) V` per head, `B: [b, h, tq, tk]`.
/// Inputs `(q, kv, B)`; the backward gives all three. Per (sequence, head) gemm calls on strided
/// views; the probabilities are kept for the backward.
pub(crate) struct BiasedAttention {
    pub n_head: usize,
    pub scale: f32,
    pub prec: MatmulPrecision,
    pub causal: bool,
    pub keep: Option<Arc<Vec<f32>>>,
    /// The forward's probabilities `[b, h, tq, tk]`, kept for the backward.
    pub probs: std::sync::Mutex<Option<Arc<Vec<f32>>>>,
}

/// Sizes of one biased-attention call.
#[derive(Clone, Copy)]
struct BiasedDims {
    b: usize,
    tq: usize,
    tk: usize,
    h: usize,
    d: usize,
}

impl BiasedAttention {
    fn dims(&self, lq: &Layout, lkv: &Layout, lb: &Layout) -> Result<BiasedDims> {
        let (&[b, tq, c], &[bk, tk, c2]) = (lq.dims(), lkv.dims()) else {
            candle_core::bail!("attention: q must be [b, tq, c] and kv [b, tk, 2c]")
        };
        let h = self.n_head;
        if b != bk || c2 != 2 * c || h == 0 || c % h != 0 {
            candle_core::bail!(
                "attention: q {:?} and kv {:?} do not fit {h} heads",
                lq.dims(),
                lkv.dims()
            )
        }
        if lb.dims() != [b, h, tq, tk] {
            candle_core::bail!(
                "attention: bias {:?} is not [{b}, {h}, {tq}, {tk}]",
                lb.dims()
            )
        }
        if self
            .keep
            .as_ref()
            .is_some_and(|m| m.len() != b * h * tq * tk)
        {
            candle_core::bail!("attention: dropout mask needs [{b}, {h}, {tq}, {tk}]")
        }
        Ok(BiasedDims {
            b,
            tq,
            tk,
            h,
            d: c / h,
        })
    }
}

impl CustomOp3 for BiasedAttention {
    fn name(&self) -> &'static str {
        "biased-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, kv, bias) = (
            slice(s1, l1, "attention q")?,
            slice(s2, l2, "attention kv")?,
            slice(s3, l3, "attention bias")?,
        );
        let BiasedDims { b, tq, tk, h, d } = self.dims(l1, l2, l3)?;
        let c = h * d;
        let (prec, scale, off) = (self.prec, self.scale, tk.saturating_sub(tq));
        let mut y = output_buffer(b * tq * c);
        let mut probs = output_buffer(b * h * tq * tk);
        y.par_chunks_mut(tq * c)
            .zip(q.par_chunks(tq * c).zip(kv.par_chunks(tk * 2 * c)))
            .zip(
                probs
                    .par_chunks_mut(h * tq * tk)
                    .zip(bias.par_chunks(h * tq * tk)),
            )
            .enumerate()
            .for_each(|(bi, ((y, (q, kv)), (probs, bias)))| {
                let mut scratch = vec![0f32; tq * tk];
                for head in 0..h {
                    let p = &mut probs[head * tq * tk..][..tq * tk];
                    let qh = Mat {
                        data: &q[head * d..],
                        cs: 1,
                        rs: c as isize,
                    };
                    let kt = Mat {
                        data: &kv[head * d..],
                        cs: 2 * c as isize,
                        rs: 1,
                    };
                    mm_causal(prec, p, tk, qh, kt, (tq, d, tk), scale, Tri::Full);
                    let bh = &bias[head * tq * tk..][..tq * tk];
                    simd(|| {
                        for (i, (row, brow)) in
                            p.chunks_exact_mut(tk).zip(bh.chunks_exact(tk)).enumerate()
                        {
                            row.iter_mut().zip(brow).for_each(|(r, &bv)| *r += bv);
                            if self.causal {
                                row[(i + off + 1).min(tk)..].fill(f32::NEG_INFINITY);
                            }
                            softmax_in_place(row);
                        }
                    });
                    let keep = self
                        .keep
                        .as_ref()
                        .map(|m| &m[(bi * h + head) * tq * tk..][..tq * tk]);
                    let pd = dropped(p, keep, &mut scratch);
                    let v = Mat {
                        data: &kv[c + head * d..],
                        cs: 1,
                        rs: 2 * c as isize,
                    };
                    let y = &mut y[head * d..];
                    mm_causal(
                        prec,
                        y,
                        c,
                        Mat::rows(pd, tk),
                        v,
                        (tq, tk, d),
                        1.0,
                        Tri::Full,
                    );
                }
            });
        if let Ok(mut kept) = self.probs.lock() {
            *kept = Some(Arc::new(probs));
        }
        Ok((CpuStorage::F32(y), Shape::from((b, tq, c))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        kv: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(probs) = self.probs.lock().ok().and_then(|p| p.clone()) else {
            candle_core::bail!("biased-attention: backward without a forward")
        };
        let grad_op = BiasedAttentionGrad {
            scale: self.scale,
            prec: self.prec,
            keep: self.keep.clone(),
            probs,
            bias_dims: bias.dims().to_vec(),
        };
        let (nq, nkv, nb) = (q.elem_count(), kv.elem_count(), bias.elem_count());
        let packed = q.apply_op3_no_bwd(kv, &grad.contiguous()?, &grad_op)?;
        Ok((
            Some(packed.narrow(0, 0, nq)?.reshape(q.shape())?),
            Some(packed.narrow(0, nq, nkv)?.reshape(kv.shape())?),
            Some(packed.narrow(0, nq + nkv, nb)?.reshape(bias.shape())?),
        ))
    }
}

/// With `P`, `P' = P ⊙ keep` and `dY`, per head: `dV = P'ᵀ dY`, `dP = (dY Vᵀ) ⊙ keep`,
/// `dS = P ⊙ (dP − rowsum(P ⊙ dP))` (also `dB`), `dQ = scale·dS K`, `dK = scale·dSᵀ Q`; packed
/// as `[dq | dkv | dB]`. Inputs `(q, kv, dY)`.
struct BiasedAttentionGrad {
    scale: f32,
    prec: MatmulPrecision,
    keep: Option<Arc<Vec<f32>>>,
    probs: Arc<Vec<f32>>,
    bias_dims: Vec<usize>,
}

impl CustomOp3 for BiasedAttentionGrad {
    fn name(&self) -> &'static str {
        "biased-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = slice(s1, l1, "attention-grad q")?;
        let (kv, dy) = (
            slice(s2, l2, "attention-grad kv")?,
            slice(s3, l3, "attention-grad dy")?,
        );
        let &[b, h, tq, tk] = self.bias_dims.as_slice() else {
            candle_core::bail!("attention-grad: bias must be 4-d")
        };
        let probs = self.probs.as_slice();
        let c = q.len() / (b * tq).max(1);
        let d = c / h;
        if kv.len() != b * tk * 2 * c || dy.len() != q.len() || probs.len() != b * h * tq * tk {
            candle_core::bail!("attention-grad: sizes do not match the forward")
        }
        let (nq, nkv) = (q.len(), kv.len());
        let (prec, scale) = (self.prec, self.scale);
        let mut out = output_buffer(nq + nkv + probs.len());
        let (dq_all, rest) = out.split_at_mut(nq);
        let (dkv_all, db_all) = rest.split_at_mut(nkv);
        dq_all
            .par_chunks_mut(tq * c)
            .zip(
                dkv_all
                    .par_chunks_mut(tk * 2 * c)
                    .zip(db_all.par_chunks_mut(h * tq * tk)),
            )
            .zip(q.par_chunks(tq * c).zip(kv.par_chunks(tk * 2 * c)))
            .zip(dy.par_chunks(tq * c).zip(probs.par_chunks(h * tq * tk)))
            .enumerate()
            .for_each(|(bi, (((dq, (dkv, db)), (q, kv)), (dy, probs)))| {
                let mut pd = vec![0f32; tq * tk];
                for head in 0..h {
                    let p = &probs[head * tq * tk..][..tq * tk];
                    let ds = &mut db[head * tq * tk..][..tq * tk];
                    let keep = self
                        .keep
                        .as_ref()
                        .map(|m| &m[(bi * h + head) * tq * tk..][..tq * tk]);
                    let dy_h = Mat {
                        data: &dy[head * d..],
                        cs: 1,
                        rs: c as isize,
                    };
                    let vt = Mat {
                        data: &kv[c + head * d..],
                        cs: 2 * c as isize,
                        rs: 1,
                    };
                    mm_causal(prec, ds, tk, dy_h, vt, (tq, d, tk), 1.0, Tri::Full);
                    simd(|| {
                        if let Some(keep) = keep {
                            ds.iter_mut().zip(keep).for_each(|(o, &k)| *o *= k);
                        }
                        softmax_backward_rows(p, ds, tk, 1.0);
                    });
                    let pdv = dropped(p, keep, &mut pd);
                    let ds: &[f32] = ds;
                    let k = Mat {
                        data: &kv[head * d..],
                        cs: 1,
                        rs: 2 * c as isize,
                    };
                    let qh = Mat {
                        data: &q[head * d..],
                        cs: 1,
                        rs: c as isize,
                    };
                    let dq_h = &mut dq[head * d..];
                    mm_causal(
                        prec,
                        dq_h,
                        c,
                        Mat::rows(ds, tk),
                        k,
                        (tq, tk, d),
                        scale,
                        Tri::Full,
                    );
                    let dk_h = &mut dkv[head * d..];
                    mm_causal(
                        prec,
                        dk_h,
                        2 * c,
                        Mat::cols(ds, tk),
                        qh,
                        (tk, tq, d),
                        scale,
                        Tri::Full,
                    );
                    let dv_h = &mut dkv[c + head * d..];
                    mm_causal(
                        prec,
                        dv_h,
                        2 * c,
                        Mat::cols(pdv, tk),
                        dy_h,
                        (tk, tq, d),
                        1.0,
                        Tri::Full,
                    );
                }
            });
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

// ---------------------------------------------------------------- bias add

/// `y = x + b` where `b`'s shape is the trailing part of `x`'s (a bias `[n]` on `[.., n]`, or
/// positions `[t, d]` on `[b, t, d]`). The forward is candle's broadcast add; the point is the
/// backward: `db = Σ_rows dy` as one streaming pass over `dy`, where candle's generic reduction
/// over the leading axes walks it with a stride (≈ 10× slower, and paid by every linear layer).
pub(crate) struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "add-bias x")?;
        let b = slice(s2, l2, "add-bias b")?;
        if b.is_empty() || x.len() % b.len() != 0 {
            candle_core::bail!(
                "add-bias: bias of {} elements does not tile x of {}",
                b.len(),
                x.len()
            )
        }
        let mut y = x.to_vec();
        for row in y.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(y, &b)| *y += b);
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = grad
            .contiguous()?
            .apply_op1_no_bwd(&RowSum { n: b.elem_count() })?;
        Ok((Some(grad.clone()), Some(db.reshape(b.shape())?)))
    }
}

/// `a + b` for two tensors of one shape (a residual connection), on rayon's threads; the
/// gradient reaches both unchanged. candle's own add runs on one thread, and the other waits.
pub(crate) struct Add;

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = slice(s1, l1, "add a")?;
        let b = slice(s2, l2, "add b")?;
        if l1.dims() != l2.dims() {
            candle_core::bail!("add: shapes {:?} and {:?} differ", l1.dims(), l2.dims())
        }
        Ok((
            CpuStorage::F32(par_map2(a, b, |a, b| a + b)),
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(grad.clone())))
    }
}

/// `x · mask` elementwise for a constant `mask` of `x`'s shape (dropout's scaled mask), on all
/// threads; its backward is the same product with the incoming gradient.
pub(crate) struct MulMask;

impl CustomOp2 for MulMask {
    fn name(&self) -> &'static str {
        "mul-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "mul-mask x")?;
        let m = slice(s2, l2, "mul-mask mask")?;
        if l1.dims() != l2.dims() {
            candle_core::bail!(
                "mul-mask: shapes {:?} and {:?} differ",
                l1.dims(),
                l2.dims()
            )
        }
        Ok((
            CpuStorage::F32(par_map2(x, m, |x, m| x * m)),
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        mask: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = grad.contiguous()?.apply_op2_no_bwd(mask, &MulMask)?;
        Ok((Some(dx), None))
    }
}

/// Sum of the rows of `x` viewed as `[rows, n]`.
struct RowSum {
    n: usize,
}

impl CustomOp1 for RowSum {
    fn name(&self) -> &'static str {
        "row-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "row-sum")?;
        let mut acc = vec![0f32; self.n];
        for row in x.chunks_exact(self.n) {
            acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
        }
        Ok((CpuStorage::F32(acc), Shape::from(self.n)))
    }
}

// ---------------------------------------------------------------- linear layer

/// `y = x·W + b` over the last axis of `x: [.., in]`, with `W` stored `[in, out]` (GPT-2's
/// `Conv1D`) or, with `transposed`, `[out, in]` (PyTorch's `nn.Linear`). Forward: the bias is
/// broadcast into the output and one gemm accumulates onto it. Backward, one kernel:
/// `dx = dy·Wᵀ`, `dW = xᵀ·dy` (or `dyᵀ·x`), `db = Σ_rows dy` — three passes, no transposed copies.
pub(crate) struct Linear {
    pub transposed: bool,
    /// Precision of the products (f32, or bf16 / f16 inputs with f32 accumulation).
    pub prec: MatmulPrecision,
}

struct LinearDims {
    rows: usize,
    n_in: usize,
    n_out: usize,
}

impl Linear {
    fn dims(&self, x: &Layout, w: &Layout, b: usize) -> Result<LinearDims> {
        let n_in = last_dim(x);
        let &[w0, w1] = w.dims() else {
            candle_core::bail!("linear: weight must be a matrix, got {:?}", w.dims())
        };
        let (wi, wo) = if self.transposed { (w1, w0) } else { (w0, w1) };
        if wi != n_in || b != wo {
            candle_core::bail!(
                "linear: x [.., {n_in}], weight {:?} and bias [{b}] do not fit",
                w.dims()
            )
        }
        Ok(LinearDims {
            rows: x.shape().elem_count() / n_in.max(1),
            n_in,
            n_out: wo,
        })
    }

    /// The weight as the `[in, out]` operand of the forward product.
    fn w_in_out<'a>(&self, w: &'a [f32], d: &LinearDims) -> Mat<'a> {
        if self.transposed {
            Mat::cols(w, d.n_in)
        } else {
            Mat::rows(w, d.n_out)
        }
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "linear x")?;
        let w = slice(s2, l2, "linear weight")?;
        let b = slice(s3, l3, "linear bias")?;
        let d = self.dims(l1, l2, b.len())?;
        let dims = (d.rows, d.n_in, d.n_out);
        let (xm, wm) = (Mat::rows(x, d.n_in), self.w_in_out(w, &d));
        let y = if uses_bf16(self.prec, dims) {
            let mut y = output_buffer(d.rows * d.n_out);
            gemm_bf16_bias(&mut y, xm, wm, dims, b, true);
            y
        } else if self.prec != MatmulPrecision::F16 && has_avx512f() {
            // The bias is added as each tile is stored.
            #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
            let mut y = output_buffer(d.rows * d.n_out);
            #[cfg(target_arch = "x86_64")]
            crate::gemm::avx512_f32::gemm_bias(&mut y, xm, wm, dims, b, true);
            y
        } else {
            let mut y = Vec::with_capacity(d.rows * d.n_out);
            for _ in 0..d.rows {
                y.extend_from_slice(b);
            }
            matmul_into(self.prec, &mut y, xm, wm, dims, true);
            y
        };
        let mut shape = l1.dims().to_vec();
        // INVARIANT: a linear's input has rank ≥ 1 (its last axis is `d.n_in`, checked when the op was built).
        *shape.last_mut().expect("rank ≥ 1") = d.n_out;
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let nw = w.elem_count();
        // One kernel: dx in a buffer of its own, [dW | db] packed in another, viewed apart.
        let op = LinearGrad {
            transposed: self.transposed,
            prec: self.prec,
            n_bias: b.elem_count(),
            dx: InputGrad::default(),
        };
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &op)?;
        let dx = op.dx.take(x)?;
        let dw = packed.narrow(0, 0, nw)?.reshape(w.shape())?;
        let db = packed.narrow(0, nw, b.elem_count())?.reshape(b.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

struct LinearGrad {
    transposed: bool,
    prec: MatmulPrecision,
    n_bias: usize,
    dx: InputGrad,
}

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "linear-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "linear-grad x")?;
        let w = slice(s2, l2, "linear-grad weight")?;
        let dy = slice(s3, l3, "linear-grad dy")?;
        let lin = Linear {
            transposed: self.transposed,
            prec: self.prec,
        };
        let d = lin.dims(l1, l2, self.n_bias)?;
        if dy.len() != d.rows * d.n_out {
            candle_core::bail!(
                "linear-grad: dy has {} elements, expected {}",
                dy.len(),
                d.rows * d.n_out
            )
        }
        // dx and dW are written in full; db is a sum.
        let mut dx_buf = output_buffer(x.len());
        let dx = &mut dx_buf[..];
        let mut out = output_buffer(w.len() + d.n_out);
        out[w.len()..].fill(0.0);
        let (dw, db) = out.split_at_mut(w.len());
        // dx[rows, in] = dy[rows, out] · Wᵀ[out, in].
        let wt = if self.transposed {
            Mat::rows(w, d.n_in)
        } else {
            Mat::cols(w, d.n_out)
        };
        let prec = self.prec;
        let grad_x = |dx: &mut [f32], par: bool| {
            let dims = (d.rows, d.n_out, d.n_in);
            mm(
                prec,
                dx,
                d.n_in,
                Mat::rows(dy, d.n_out),
                wt,
                dims,
                false,
                1.0,
                par,
            )
        };
        let grad_w = |dw: &mut [f32], db: &mut [f32], par: bool| {
            if self.transposed {
                // dW[out, in] = dyᵀ[out, rows] · x[rows, in].
                let (a, b) = (Mat::cols(dy, d.n_out), Mat::rows(x, d.n_in));
                let dims = (d.n_out, d.rows, d.n_in);
                mm(prec, dw, d.n_in, a, b, dims, false, 1.0, par);
            } else {
                // dW[in, out] = xᵀ[in, rows] · dy[rows, out].
                let (a, b) = (Mat::cols(x, d.n_in), Mat::rows(dy, d.n_out));
                let dims = (d.n_in, d.rows, d.n_out);
                mm(prec, dw, d.n_out, a, b, dims, false, 1.0, par);
            }
            for row in dy.chunks_exact(d.n_out) {
                db.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
            }
        };
        // The two products have the same number of multiply-adds and run side by side, each on
        // its own operands (on two threads, one each beats splitting both over the threads);
        // with more threads each product also splits its rows.
        let par = rayon::current_num_threads() > 2;
        rayon::join(|| grad_x(dx, par), || grad_w(dw, db, par));
        self.dx.put(dx_buf);
        Ok((CpuStorage::F32(out), Shape::from(w.len() + d.n_out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// An attention call that recomputes its probabilities in the backward gives the output and
    /// the gradient of one that keeps them, bit for bit (causal and bidirectional, with a
    /// padding bias on the latter).
    #[test]
    fn attention_recomputing_its_probabilities_equals_keeping_them() {
        let (b, t, h, d) = (2, 24, 3, 4);
        let n = b * t * 3 * h * d;
        let data: Vec<f32> = (0..n).map(|i| (i * 37 % 101) as f32 / 50.0 - 1.0).collect();
        let weights: Vec<f32> = (0..b * t * h * d).map(|i| (i % 7) as f32 - 3.0).collect();
        let bias: Vec<f32> = (0..b * t)
            .map(|i| if i % t >= t - 3 { -1e9 } else { 0.0 })
            .collect();
        assert!(!keeps_probs(t, d) && keeps_probs(4 * d, d));
        for causal in [true, false] {
            let mut runs = vec![];
            for keep in [true, false] {
                let x = Var::from_vec(data.clone(), (b, t, 3 * h * d), &Device::Cpu).unwrap();
                let y = if causal {
                    let op = CausalAttention {
                        keep_probs: Some(keep),
                        ..CausalAttention::new(h, 0.5, MatmulPrecision::Highest)
                    };
                    x.as_tensor().apply_op1(op).unwrap()
                } else {
                    let op = BiAttention {
                        n_head: h,
                        scale: 0.5,
                        prec: MatmulPrecision::Highest,
                        key_bias: Some(Arc::new(bias.clone())),
                        keep: None,
                        keep_probs: Some(keep),
                        probs: std::sync::Mutex::new(None),
                    };
                    x.as_tensor().apply_op1(op).unwrap()
                };
                let w = Tensor::from_vec(weights.clone(), y.shape(), &Device::Cpu).unwrap();
                let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let read = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                runs.push((read(&y), read(grads.get(x.as_tensor()).unwrap())));
            }
            assert_eq!(runs[0], runs[1], "causal {causal}");
            assert!(runs[0].1.iter().any(|g| *g != 0.0));
        }
    }
}
