//! The GPU paths of the fused ops: one kernel for the forward where candle-kernels has one
//! (`softmax_f32`, `layernorm_f32`, the kernels behind candle-nn's inference-only ops), with
//! the backward written out as its closed form in candle ops — instead of autograd through the
//! six to ten ops of the composite form; and this crate's own kernels (`cuda/kernels.cu`,
//! compiled to PTX by build.rs) for the cross-entropy over the vocabulary, forward and backward
//! in one pass each, which never materialize the log-probabilities.
//!
//! The backward formulas are plain functions of tensors, tested on the CPU against autograd of
//! the composite forms; the CUDA forwards are tested against the composite forms on a GPU
//! (`tests/cuda.rs`).

use candle_core::{Result, Tensor, D};

/// `∂L/∂x` of `y = softmax(x)` over the last dimension: `y ⊙ (dy − Σⱼ dyⱼ yⱼ)`.
pub fn softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let dot = (dy * y)?.sum_keepdim(D::Minus1)?;
    y * dy.broadcast_sub(&dot)?
}

/// `(∂L/∂x, ∂L/∂γ, ∂L/∂β)` of layer norm `y = x̂·γ + β`, `x̂ = (x − μ)·r`, `r = 1/√(σ² + ε)`:
/// with `g = dy ⊙ γ`, `dx = r·(g − mean(g) − x̂ ⊙ mean(g ⊙ x̂))`, `dγ = Σ dy ⊙ x̂` and
/// `dβ = Σ dy` over all leading axes.
pub fn layer_norm_backward(
    x: &Tensor,
    gamma: &Tensor,
    dy: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let r = (centered.sqr()?.mean_keepdim(D::Minus1)? + eps)?
        .sqrt()?
        .recip()?;
    let xhat = centered.broadcast_mul(&r)?;
    let g = dy.broadcast_mul(gamma)?;
    let dx = g
        .broadcast_sub(&g.mean_keepdim(D::Minus1)?)?
        .sub(&xhat.broadcast_mul(&(&g * &xhat)?.mean_keepdim(D::Minus1)?)?)?
        .broadcast_mul(&r)?;
    let n = gamma.elem_count();
    let rows = dy.elem_count() / n.max(1);
    let dgamma = (dy * &xhat)?
        .reshape((rows, n))?
        .sum(0)?
        .reshape(gamma.shape())?;
    let dbeta = dy.reshape((rows, n))?.sum(0)?.reshape(gamma.shape())?;
    Ok((dx, dgamma, dbeta))
}

#[cfg(feature = "cuda")]
pub(crate) use cuda::{LayerNorm, Softmax};

/// Per-row negative log-likelihood `log Σⱼ exp(zⱼ) − z_y` of f32 `logits [rows, V]` on a CUDA
/// device against i64 `targets [rows]` (0 on rows whose target is `ignore_index`), with its
/// backward `(softmax(z) − onehot(y))·g` — one kernel each. Targets must already be checked to
/// lie in `[0, V)` or equal `ignore_index`.
#[cfg(feature = "cuda")]
pub fn nll_rows(logits: &Tensor, targets: &Tensor, ignore_index: i64) -> Result<Tensor> {
    logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, cuda::Nll { ignore_index })
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{kernels, WrapErr};
    use candle_core::{bail, CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3};
    use candle_core::{Layout, Result, Shape, Tensor};

    /// This crate's kernels (`cuda/kernels.cu`), as PTX.
    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));
    const MODULE: &str = "lm_kernels";

    /// Threads per row-block for rows of `n`: enough to cover long vocabularies in few passes.
    fn row_threads(n: usize) -> u32 {
        if n >= 4096 {
            1024
        } else if n >= 512 {
            256
        } else {
            64
        }
    }

    fn ids<'a>(
        s: &'a CudaStorage,
        l: &Layout,
    ) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, i64>> {
        match l.contiguous_offsets() {
            Some((a, b)) => Ok(s.as_cuda_slice::<i64>()?.slice(a..b)),
            None => bail!("cross-entropy: the targets must be contiguous i64"),
        }
    }

    /// `lm_nll_fwd_f32`: one loss per row.
    pub(crate) struct Nll {
        pub(crate) ignore_index: i64,
    }

    impl CustomOp2 for Nll {
        fn name(&self) -> &'static str {
            "lm-nll-cuda"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            bail!("lm-nll-cuda is the GPU path; the CPU uses lm-objectives' fused kernel")
        }

        fn cuda_fwd(
            &self,
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let dev = s1.device().clone();
            let (rows, vocab) = l1.shape().dims2()?;
            if l2.shape().elem_count() != rows {
                bail!(
                    "cross-entropy: {rows} rows of logits but {} targets",
                    l2.shape().elem_count()
                );
            }
            let (z, y) = (view(s1, l1, "cross-entropy logits")?, ids(s2, l2)?);
            let func = dev.get_or_load_custom_func("lm_nll_fwd_f32", MODULE, PTX)?;
            // SAFETY: every element (one per row) is written by the kernel.
            let loss = unsafe { dev.alloc::<f32>(rows)? };
            let mut b = func.builder();
            b.arg(&z);
            b.arg(&y);
            b.arg(&loss);
            candle_core::builder_arg!(b, vocab as i32, self.ignore_index);
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (row_threads(vocab), 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: reads rows × vocab logits and rows targets (checked in range by the
            // caller), writes rows losses.
            unsafe { b.launch(cfg) }.w()?;
            Ok((CudaStorage::wrap_cuda_slice(loss, dev), Shape::from(rows)))
        }

        fn bwd(
            &self,
            logits: &Tensor,
            targets: &Tensor,
            _loss: &Tensor,
            grad: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let d = logits.apply_op3_no_bwd(
                targets,
                &grad.contiguous()?,
                &NllGrad {
                    ignore_index: self.ignore_index,
                },
            )?;
            Ok((Some(d), None))
        }
    }

    /// `lm_nll_bwd_f32`: the logits' gradient from the per-row upstream gradient.
    struct NllGrad {
        ignore_index: i64,
    }

    impl CustomOp3 for NllGrad {
        fn name(&self) -> &'static str {
            "lm-nll-grad-cuda"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            bail!("lm-nll-grad-cuda is the GPU path")
        }

        fn cuda_fwd(
            &self,
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
            s3: &CudaStorage,
            l3: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let dev = s1.device().clone();
            let (rows, vocab) = l1.shape().dims2()?;
            let (z, y, g) = (
                view(s1, l1, "cross-entropy logits")?,
                ids(s2, l2)?,
                view(s3, l3, "cross-entropy gradient")?,
            );
            let func = dev.get_or_load_custom_func("lm_nll_bwd_f32", MODULE, PTX)?;
            // SAFETY: every element is written by the kernel (zeros on ignored rows).
            let dz = unsafe { dev.alloc::<f32>(rows * vocab)? };
            let mut b = func.builder();
            b.arg(&z);
            b.arg(&y);
            b.arg(&g);
            b.arg(&dz);
            candle_core::builder_arg!(b, vocab as i32, self.ignore_index);
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (row_threads(vocab), 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: reads rows × vocab logits, rows targets and rows gradients; writes
            // rows × vocab gradients.
            unsafe { b.launch(cfg) }.w()?;
            Ok((CudaStorage::wrap_cuda_slice(dz, dev), l1.shape().clone()))
        }
    }

    /// The contiguous f32 elements of a tensor's storage, as a device view.
    fn view<'a>(
        s: &'a CudaStorage,
        l: &Layout,
        what: &str,
    ) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>> {
        match l.contiguous_offsets() {
            Some((a, b)) => Ok(s.as_cuda_slice::<f32>()?.slice(a..b)),
            None => bail!("{what}: the GPU kernel needs a contiguous f32 tensor"),
        }
    }

    /// Softmax over the last dimension: candle-kernels' `softmax_f32` (one warp per row, f32
    /// accumulation), backward in closed form.
    pub(crate) struct Softmax;

    impl CustomOp1 for Softmax {
        fn name(&self) -> &'static str {
            "lm-softmax-cuda"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            bail!("lm-softmax-cuda is the GPU path; the CPU uses the fused CPU kernel")
        }

        fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
            let dev = s.device().clone();
            let x = view(s, l, "softmax")?;
            let n = l.shape().elem_count();
            let cols = l.shape().dims().last().copied().unwrap_or(1).max(1);
            let func = dev.get_or_load_func("softmax_f32", &kernels::REDUCE)?;
            // SAFETY: every element is written by the kernel before it is read.
            let dst = unsafe { dev.alloc::<f32>(n)? };
            let mut b = func.builder();
            b.arg(&x);
            b.arg(&dst);
            candle_core::builder_arg!(b, cols as i32);
            let cfg = LaunchConfig {
                grid_dim: ((n / cols) as u32, 1, 1),
                block_dim: (1, 32, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the kernel reads `n` floats of `x` and writes `n` of `dst`, rows of `cols`.
            unsafe { b.launch(cfg) }.w()?;
            Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
        }

        fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
            super::softmax_backward(y, dy).map(Some)
        }
    }

    /// Layer norm over the last dimension with weight and bias: candle-kernels' `layernorm_f32`
    /// (f32 sums of x and x² per row), backward in closed form.
    pub(crate) struct LayerNorm {
        pub(crate) eps: f32,
    }

    impl CustomOp3 for LayerNorm {
        fn name(&self) -> &'static str {
            "lm-layer-norm-cuda"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            bail!("lm-layer-norm-cuda is the GPU path; the CPU uses the fused CPU kernel")
        }

        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
            g: &CudaStorage,
            gl: &Layout,
            b: &CudaStorage,
            bl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let dev = s.device().clone();
            let (x, gamma, beta) = (
                view(s, l, "layer norm x")?,
                view(g, gl, "layer norm weight")?,
                view(b, bl, "layer norm bias")?,
            );
            let n = l.shape().elem_count();
            let cols = l.shape().dims().last().copied().unwrap_or(1).max(1);
            if gl.shape().elem_count() != cols || bl.shape().elem_count() != cols {
                bail!("layer norm: weight and bias must have {cols} elements");
            }
            // candle-nn's launch: one block per row, a warp for short rows, 1024 threads else.
            let block = if cols < 1024 { 32 } else { 1024 };
            let func = dev.get_or_load_func("layernorm_f32", &kernels::REDUCE)?;
            // SAFETY: every element is written by the kernel before it is read.
            let dst = unsafe { dev.alloc::<f32>(n)? };
            let mut builder = func.builder();
            builder.arg(&x);
            builder.arg(&dst);
            builder.arg(&gamma);
            builder.arg(&beta);
            candle_core::builder_arg!(builder, cols as i32, block as i32, self.eps);
            let cfg = LaunchConfig {
                grid_dim: ((n / cols) as u32, 1, 1),
                block_dim: (block, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the kernel reads rows of `cols` floats of x and `cols` of weight and bias,
            // and writes the same rows of `dst`.
            unsafe { builder.launch(cfg) }.w()?;
            Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
        }

        fn bwd(
            &self,
            x: &Tensor,
            gamma: &Tensor,
            _beta: &Tensor,
            _y: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let (dx, dg, db) = super::layer_norm_backward(x, gamma, dy, self.eps as f64)?;
            Ok((Some(dx), Some(dg), Some(db)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::composite;
    use candle_core::{Device, Var};

    fn randn(shape: (usize, usize, usize), seed: u64) -> Tensor {
        let dtype = candle_core::DType::F32;
        lm_optim::init::normal(shape, 1.0, seed, "x", dtype, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn the_closed_form_softmax_backward_equals_autograd() {
        let x = Var::from_tensor(&randn((2, 3, 17), 1)).unwrap();
        let w = randn((2, 3, 17), 2);
        let y = composite::softmax_last_dim(x.as_tensor()).unwrap();
        let auto = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let want = auto.get(x.as_tensor()).unwrap();
        let got = softmax_backward(&y, &w).unwrap();
        assert!(max_diff(want, &got) < 1e-6, "{}", max_diff(want, &got));
    }

    #[test]
    fn the_closed_form_layer_norm_backward_equals_autograd() {
        let x = Var::from_tensor(&randn((2, 3, 24), 3).affine(3.0, 1.5).unwrap()).unwrap();
        let g = Var::from_tensor(&(randn((1, 1, 24), 4).flatten_all().unwrap() + 1.0).unwrap())
            .unwrap();
        let b = Var::from_tensor(&randn((1, 1, 24), 5).flatten_all().unwrap()).unwrap();
        let w = randn((2, 3, 24), 6);
        let y =
            composite::layer_norm(x.as_tensor(), g.as_tensor(), Some(b.as_tensor()), 1e-5).unwrap();
        let auto = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (dx, dg, db) = layer_norm_backward(x.as_tensor(), g.as_tensor(), &w, 1e-5).unwrap();
        for (name, var, got) in [("x", &x, &dx), ("gamma", &g, &dg), ("beta", &b, &db)] {
            let want = auto.get(var.as_tensor()).unwrap();
            let d = max_diff(want, got);
            assert!(d < 1e-5, "d{name}: {d}");
        }
    }
}
