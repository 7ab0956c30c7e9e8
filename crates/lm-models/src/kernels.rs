//! Fused CPU kernels with their backward, as candle custom ops (f32, contiguous inputs).
//!
//! Each replaces a chain of candle ops — each of which allocates its output and makes a pass over
//! memory — by one pass forward and one backward. [`crate::ops`] picks them on CPU for f32 and
//! falls back to the composite forms elsewhere; tests check both agree in value and gradient.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use lm_objectives::fastmath::{self, simd};

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
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

// ---------------------------------------------------------------- GELU (tanh approximation)

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
        let y = simd(|| {
            x.iter()
                .map(|&x| {
                    0.5 * x * (1.0 + fastmath::tanh(SQRT_2_OVER_PI * (x + GELU_C * x * x * x)))
                })
                .collect::<Vec<f32>>()
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluTanhGrad)?,
        ))
    }
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
        let x = slice(s1, l1, "gelu-grad x")?;
        let g = slice(s2, l2, "gelu-grad g")?;
        let dx = simd(|| {
            x.iter()
                .zip(g)
                .map(|(&x, &g)| {
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
                })
                .collect::<Vec<f32>>()
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
                let max = xr[..n].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * self.scale;
                let mut sum = 0f32;
                for (yv, &xv) in yr[..n].iter_mut().zip(&xr[..n]) {
                    *yv = fastmath::exp(xv * self.scale - max);
                    sum += *yv;
                }
                let inv = 1.0 / sum;
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
                let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                for ((d, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                    *d = self.scale * yv * (gv - dot);
                }
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- layer norm

/// `y = (x − μ)/√(σ² + ε) · γ + β` over the last dimension.
pub(crate) struct LayerNorm {
    pub eps: f32,
}

fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
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
        let mut y = vec![0f32; x.len()];
        simd(|| {
            for (xr, yr) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
                let (mean, rstd) = row_stats(xr, self.eps);
                for (((yv, &xv), &g), &b) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
                    *yv = (xv - mean) * rstd * g + b;
                }
            }
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
        let n = x.elem_count();
        // One kernel computes all three gradients, packed as [dx (n) | dγ (c) | dβ (c)].
        let packed =
            x.apply_op3_no_bwd(gamma, &grad.contiguous()?, &LayerNormGrad { eps: self.eps })?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dgamma = packed.narrow(0, n, c)?.reshape(gamma.shape())?;
        let dbeta = packed.narrow(0, n + c, c)?.reshape(gamma.shape())?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// With `x̂ = (x − μ)·r` and `d = g ⊙ γ`: `dx = r·(d − mean(d) − x̂·mean(d ⊙ x̂))`,
/// `dγ = Σ_rows g ⊙ x̂`, `dβ = Σ_rows g`.
struct LayerNormGrad {
    eps: f32,
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
        let mut out = vec![0f32; n + 2 * c];
        let (dx, rest) = out.split_at_mut(n);
        let (dgamma, dbeta) = rest.split_at_mut(c);
        let mut xhat = vec![0f32; c];
        simd(|| {
            for ((xr, gr), dr) in x
                .chunks_exact(c)
                .zip(g.chunks_exact(c))
                .zip(dx.chunks_exact_mut(c))
            {
                let (mean, rstd) = row_stats(xr, self.eps);
                let (mut sum_d, mut sum_dx) = (0f32, 0f32);
                for (((h, &xv), &gv), &gm) in xhat.iter_mut().zip(xr).zip(gr).zip(gamma) {
                    *h = (xv - mean) * rstd;
                    let d = gv * gm;
                    sum_d += d;
                    sum_dx += d * *h;
                }
                let (mean_d, mean_dx) = (sum_d / c as f32, sum_dx / c as f32);
                for (i, out) in dr.iter_mut().enumerate() {
                    let d = gr[i] * gamma[i];
                    *out = rstd * (d - mean_d - xhat[i] * mean_dx);
                    dgamma[i] += gr[i] * xhat[i];
                    dbeta[i] += gr[i];
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from(n + 2 * c)))
    }
}
