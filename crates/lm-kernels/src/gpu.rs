//! The GPU paths of the fused ops: one kernel for the forward where candle-kernels has one
//! (`softmax_f32`, `layernorm_f32`, `rmsnorm_f32`, the kernels behind candle-nn's inference-only ops), with
//! the backward written out as its closed form in candle ops — instead of autograd through the
//! six to ten ops of the composite form; and this crate's own kernels (`cuda/kernels.cu`,
//! compiled to PTX by build.rs) for the cross-entropy over the vocabulary, forward and backward
//! in one pass each, which never materialize the log-probabilities; for bias + GELU (either
//! form), one kernel each way instead of candle's add, GELU and the ~10 ops of GELU's backward;
//! and for the Adam/AdamW update, one in-place kernel per parameter instead of a dozen.
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

/// `(∂L/∂x, ∂L/∂γ)` of RMS norm `y = x̂·γ`, `x̂ = x·r`, `r = 1/√(mean(x²) + ε)` (T5): with
/// `g = dy ⊙ γ`, `dx = r·(g − x̂ ⊙ mean(g ⊙ x̂))` and `dγ = Σ dy ⊙ x̂` over all leading axes.
pub fn rms_norm_backward(
    x: &Tensor,
    gamma: &Tensor,
    dy: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let xhat = x.broadcast_mul(&r)?;
    let g = dy.broadcast_mul(gamma)?;
    let dx = g
        .sub(&xhat.broadcast_mul(&(&g * &xhat)?.mean_keepdim(D::Minus1)?)?)?
        .broadcast_mul(&r)?;
    let n = gamma.elem_count();
    let rows = dy.elem_count() / n.max(1);
    let dgamma = (dy * &xhat)?
        .reshape((rows, n))?
        .sum(0)?
        .reshape(gamma.shape())?;
    Ok((dx, dgamma))
}

#[cfg(feature = "cuda")]
pub(crate) use cuda::{BiasGelu, Gelu, LayerNorm, RmsNorm, Softmax};

/// The scalars of one Adam/AdamW step (`adam_step`, with the `cuda` feature), as lm-optim's CPU kernel uses them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamScalars {
    /// β1.
    pub beta1: f32,
    /// β2.
    pub beta2: f32,
    /// 1 − β1 (computed in f64 before rounding).
    pub one_minus_beta1: f32,
    /// 1 − β2 (computed in f64 before rounding).
    pub one_minus_beta2: f32,
    /// ε.
    pub eps: f32,
    /// η / (1 − β1^t).
    pub step_size: f32,
    /// 1 / √(1 − β2^t).
    pub inv_sqrt_bc2: f32,
    /// λ added to the gradient (coupled decay), else 0.
    pub l2: f32,
    /// 1 − ηλ (decoupled decay), else 1.
    pub decay: f32,
    /// Factor on the gradient (clipping, loss scale), applied first.
    pub grad_scale: f32,
}

/// The moments an Adam step updates in place.
#[derive(Debug, Clone, Copy)]
pub struct AdamState<'a> {
    /// First moment.
    pub m: &'a Tensor,
    /// Second moment.
    pub v: &'a Tensor,
    /// AMSGrad's running maximum of the second moment.
    pub v_max: Option<&'a Tensor>,
}

/// One Adam/AdamW step on a CUDA device, in one kernel: with `g ← g·grad_scale + l2·θ`,
/// `m ← β1 m + (1 − β1) g`, `v ← β2 v + (1 − β2) g²`, `v̂ = max(v_max, v)` with AMSGrad else `v`,
/// `θ ← θ·decay − step_size·m / (√v̂·inv_sqrt_bc2 + ε)`. `theta`, `m`, `v` (and `v_max`) are
/// updated in place: contiguous f32 tensors of one size on one CUDA device, each with storage of
/// its own (the moments must not share storage with anything else). With `on_device` (4 f32
/// on the device: step size, 1/√(1 − β2^t), grad scale, apply), the kernel takes those from
/// there instead of `s` and leaves everything as it was where apply is 0: a step decided on
/// the device, without reading anything back.
#[cfg(feature = "cuda")]
pub fn adam_step(
    theta: &Tensor,
    grad: &Tensor,
    state: AdamState<'_>,
    s: AdamScalars,
    on_device: Option<&Tensor>,
) -> Result<()> {
    theta.inplace_op2(
        &grad.contiguous()?,
        &cuda::Adam {
            m: state.m.clone(),
            v: state.v.clone(),
            v_max: state.v_max.cloned(),
            s,
            on_device: on_device.map(|t| t.contiguous()).transpose()?,
        },
    )
}

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
    use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{kernels, CudaDevice, WrapErr};
    use candle_core::{bail, CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, InplaceOp2};
    use candle_core::{Layout, Result, Shape, Tensor};

    /// `name` and a `cpu_fwd` that refuses: the ops below are the GPU paths; on the CPU the
    /// fused CPU kernels run instead. The last argument is the op's kind (inputs, or in-place).
    macro_rules! gpu_only {
        ($name:literal, 1) => {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
                bail!(concat!($name, " runs on a CUDA device only"))
            }
        };
        ($name:literal, 2) => {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                _: &CpuStorage,
                _: &Layout,
                _: &CpuStorage,
                _: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                bail!(concat!($name, " runs on a CUDA device only"))
            }
        };
        ($name:literal, 3) => {
            fn name(&self) -> &'static str {
                $name
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
                bail!(concat!($name, " runs on a CUDA device only"))
            }
        };
        ($name:literal, inplace2) => {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                _: &mut CpuStorage,
                _: &Layout,
                _: &CpuStorage,
                _: &Layout,
            ) -> Result<()> {
                bail!(concat!($name, " runs on a CUDA device only"))
            }
        };
    }

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
        gpu_only!("lm-nll-cuda", 2);

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
        gpu_only!("lm-nll-grad-cuda", 3);

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

    /// A grid-stride launch over `n` elements: 256 threads a block, at most 2^16 blocks.
    fn elementwise(n: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (n.div_ceil(256).clamp(1, 1 << 16) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Runs GELU kernel `name` (`lm_bias_gelu_fwd_f32`: inputs x, b; `lm_bias_gelu_bwd_f32`:
    /// x, b, dy) over `n` elements into a new buffer; `cols` 0 means no bias (`b` unread).
    fn gelu_kernel(
        dev: &CudaDevice,
        name: &str,
        inputs: &[&CudaView<'_, f32>],
        n: usize,
        cols: usize,
        exact: bool,
    ) -> Result<CudaStorage> {
        let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
        // SAFETY: the kernel writes every one of the n elements.
        let out = unsafe { dev.alloc::<f32>(n)? };
        let mut b = func.builder();
        for x in inputs {
            b.arg(*x);
        }
        b.arg(&out);
        candle_core::builder_arg!(b, n, cols as i32, exact as i32);
        // SAFETY: every input holds n elements (b: `cols`, read only when cols > 0, at i mod
        // cols), the output n.
        unsafe { b.launch(elementwise(n)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }

    /// The bias of `gelu(x + b)`: as many elements as `x`'s last axis.
    fn bias_columns(l: &Layout, bl: &Layout) -> Result<usize> {
        let cols = bl.shape().elem_count();
        if cols == 0 || l.shape().dims().last() != Some(&cols) {
            bail!(
                "bias-gelu: a bias of {cols} for an input of shape {:?}",
                l.shape().dims()
            );
        }
        Ok(cols)
    }

    /// `gelu(x + b)` over the last axis (`exact`: erf form, else tanh form), with its backward.
    pub(crate) struct BiasGelu {
        pub(crate) exact: bool,
    }

    impl CustomOp2 for BiasGelu {
        gpu_only!("lm-bias-gelu-cuda", 2);

        fn cuda_fwd(
            &self,
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let cols = bias_columns(l1, l2)?;
            let (x, b) = (
                view(s1, l1, "bias-gelu input")?,
                view(s2, l2, "bias-gelu bias")?,
            );
            let n = l1.shape().elem_count();
            let y = gelu_kernel(
                s1.device(),
                "lm_bias_gelu_fwd_f32",
                &[&x, &b],
                n,
                cols,
                self.exact,
            )?;
            Ok((y, l1.shape().clone()))
        }

        fn bwd(
            &self,
            x: &Tensor,
            b: &Tensor,
            _y: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let dx =
                x.apply_op3_no_bwd(b, &dy.contiguous()?, &BiasGeluGrad { exact: self.exact })?;
            let cols = b.elem_count();
            let db = dx
                .reshape((dx.elem_count() / cols, cols))?
                .sum(0)?
                .reshape(b.shape())?;
            Ok((Some(dx), Some(db)))
        }
    }

    /// `dy ⊙ gelu'(x + b)`.
    struct BiasGeluGrad {
        exact: bool,
    }

    impl CustomOp3 for BiasGeluGrad {
        gpu_only!("lm-bias-gelu-grad-cuda", 3);

        fn cuda_fwd(
            &self,
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
            s3: &CudaStorage,
            l3: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let cols = bias_columns(l1, l2)?;
            let (x, b, dy) = (
                view(s1, l1, "bias-gelu input")?,
                view(s2, l2, "bias-gelu bias")?,
                view(s3, l3, "bias-gelu gradient")?,
            );
            let n = l1.shape().elem_count();
            let name = "lm_bias_gelu_bwd_f32";
            let dx = gelu_kernel(s1.device(), name, &[&x, &b, &dy], n, cols, self.exact)?;
            Ok((dx, l1.shape().clone()))
        }
    }

    /// `gelu(x)` without a bias, with its backward.
    pub(crate) struct Gelu {
        pub(crate) exact: bool,
    }

    impl CustomOp1 for Gelu {
        gpu_only!("lm-gelu-cuda", 1);

        fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
            let x = view(s, l, "gelu input")?;
            let n = l.shape().elem_count();
            // No bias (cols = 0): x stands in for the unread bias pointer.
            let y = gelu_kernel(
                s.device(),
                "lm_bias_gelu_fwd_f32",
                &[&x, &x],
                n,
                0,
                self.exact,
            )?;
            Ok((y, l.shape().clone()))
        }

        fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
            x.apply_op2_no_bwd(&dy.contiguous()?, &GeluGrad { exact: self.exact })
                .map(Some)
        }
    }

    /// `dy ⊙ gelu'(x)`.
    struct GeluGrad {
        exact: bool,
    }

    impl CustomOp2 for GeluGrad {
        gpu_only!("lm-gelu-grad-cuda", 2);

        fn cuda_fwd(
            &self,
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let (x, dy) = (view(s1, l1, "gelu input")?, view(s2, l2, "gelu gradient")?);
            let n = l1.shape().elem_count();
            if l2.shape().elem_count() != n {
                bail!(
                    "gelu backward: {n} inputs but {} gradients",
                    l2.shape().elem_count()
                );
            }
            let name = "lm_bias_gelu_bwd_f32";
            let dx = gelu_kernel(s1.device(), name, &[&x, &x, &dy], n, 0, self.exact)?;
            Ok((dx, l1.shape().clone()))
        }
    }

    /// The in-place Adam update of θ (the tensor it is applied to) from the gradient, with the
    /// moments' storage written by the kernel.
    pub(crate) struct Adam {
        pub(crate) m: Tensor,
        pub(crate) v: Tensor,
        pub(crate) v_max: Option<Tensor>,
        pub(crate) s: super::AdamScalars,
        /// Step size, 1/√(1 − β2^t), grad scale and apply (4 f32), read by the kernel.
        pub(crate) on_device: Option<Tensor>,
    }

    /// The whole f32 buffer of a moment tensor, checked to be `n` contiguous elements on the GPU.
    fn moment<'a>(
        guard: &'a std::sync::RwLockReadGuard<'_, candle_core::Storage>,
        l: &Layout,
        n: usize,
    ) -> Result<CudaView<'a, f32>> {
        let candle_core::Storage::Cuda(s) = &**guard else {
            bail!("adam: the moments must be on the parameter's CUDA device")
        };
        match l.contiguous_offsets() {
            Some((a, b)) if b - a == n => Ok(s.as_cuda_slice::<f32>()?.slice(a..b)),
            _ => bail!("adam: the moments must be contiguous f32 of {n} elements"),
        }
    }

    impl InplaceOp2 for Adam {
        gpu_only!("lm-adam-cuda", inplace2);

        fn cuda_fwd(
            &self,
            s1: &mut CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
        ) -> Result<()> {
            let dev = s1.device().clone();
            let n = l1.shape().elem_count();
            if l2.shape().elem_count() != n {
                bail!(
                    "adam: {n} parameters but {} gradients",
                    l2.shape().elem_count()
                );
            }
            let Some((t0, t1)) = l1.contiguous_offsets() else {
                bail!("adam: the parameter must be contiguous")
            };
            let g = view(s2, l2, "adam gradient")?;
            let (ms, ml) = self.m.storage_and_layout();
            let (vs, vl) = self.v.storage_and_layout();
            let (m, v) = (moment(&ms, ml, n)?, moment(&vs, vl, n)?);
            let vm_guard = self.v_max.as_ref().map(|t| t.storage_and_layout());
            let v_max = match &vm_guard {
                Some((guard, l)) => Some(moment(guard, l, n)?),
                None => None,
            };
            let dev_guard = self.on_device.as_ref().map(|t| t.storage_and_layout());
            let on_device = match &dev_guard {
                Some((guard, l)) => Some(moment(guard, l, 4)?),
                None => None,
            };
            let mut theta = s1.as_cuda_slice_mut::<f32>()?.slice_mut(t0..t1);
            let func = dev.get_or_load_custom_func("lm_adam_f32", MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&mut theta);
            b.arg(&g);
            b.arg(&m);
            b.arg(&v);
            let null = 0u64;
            match &v_max {
                Some(vm) => b.arg(vm),
                None => b.arg(&null),
            };
            match &on_device {
                Some(d) => b.arg(d),
                None => b.arg(&null),
            };
            let s = self.s;
            candle_core::builder_arg!(
                b,
                n,
                s.beta1,
                s.beta2,
                s.one_minus_beta1,
                s.one_minus_beta2,
                s.eps,
                s.step_size,
                s.inv_sqrt_bc2,
                s.l2,
                s.decay,
                s.grad_scale
            );
            // SAFETY: θ, g, m, v (and v_max) hold n f32 each and the device scalars 4 (checked);
            // the kernel reads g and the scalars and writes θ, m, v, v_max element-wise, which
            // no other tensor shares (the caller's contract).
            unsafe { b.launch(elementwise(n)) }.w()?;
            Ok(())
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
        gpu_only!("lm-softmax-cuda", 1);

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

    /// A candle-kernels normalization (`layernorm_f32`: weight and bias; `rmsnorm_f32`: weight)
    /// over the rows of `x`: one block per row — a warp for rows under 1024, else 1024 threads, as
    /// candle-nn launches them — with f32 sums.
    fn norm_rows(
        s: &CudaStorage,
        l: &Layout,
        name: &str,
        params: &[&CudaView<'_, f32>],
        eps: f32,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let x = view(s, l, name)?;
        let n = l.shape().elem_count();
        let cols = l.shape().dims().last().copied().unwrap_or(1).max(1);
        let block = if cols < 1024 { 32 } else { 1024 };
        let func = dev.get_or_load_func(name, &kernels::REDUCE)?;
        // SAFETY: every element is written by the kernel before it is read.
        let dst = unsafe { dev.alloc::<f32>(n)? };
        let mut builder = func.builder();
        builder.arg(&x);
        builder.arg(&dst);
        for p in params {
            builder.arg(*p);
        }
        candle_core::builder_arg!(builder, cols as i32, block as i32, eps);
        let cfg = LaunchConfig {
            grid_dim: ((n / cols) as u32, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the kernel reads rows of `cols` floats of x and `cols` of each parameter (the
        // callers check), and writes the same rows of `dst`.
        unsafe { builder.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }

    /// Layer norm over the last dimension with weight and bias: candle-kernels' `layernorm_f32`
    /// (f32 sums of x and x² per row), backward in closed form.
    pub(crate) struct LayerNorm {
        pub(crate) eps: f32,
    }

    impl CustomOp3 for LayerNorm {
        gpu_only!("lm-layer-norm-cuda", 3);

        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
            g: &CudaStorage,
            gl: &Layout,
            b: &CudaStorage,
            bl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let (gamma, beta) = (
                view(g, gl, "layer norm weight")?,
                view(b, bl, "layer norm bias")?,
            );
            let cols = l.shape().dims().last().copied().unwrap_or(1).max(1);
            if gl.shape().elem_count() != cols || bl.shape().elem_count() != cols {
                bail!("layer norm: weight and bias must have {cols} elements");
            }
            norm_rows(s, l, "layernorm_f32", &[&gamma, &beta], self.eps)
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

    /// RMS norm over the last dimension with a weight (T5): candle-kernels' `rmsnorm_f32` (f32
    /// sum of x² per row), backward in closed form.
    pub(crate) struct RmsNorm {
        pub(crate) eps: f32,
    }

    impl CustomOp2 for RmsNorm {
        gpu_only!("lm-rms-norm-cuda", 2);

        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
            g: &CudaStorage,
            gl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let gamma = view(g, gl, "rms norm weight")?;
            let cols = l.shape().dims().last().copied().unwrap_or(1).max(1);
            if gl.shape().elem_count() != cols {
                bail!("rms norm: the weight must have {cols} elements");
            }
            norm_rows(s, l, "rmsnorm_f32", &[&gamma], self.eps)
        }

        fn bwd(
            &self,
            x: &Tensor,
            gamma: &Tensor,
            _y: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let (dx, dg) = super::rms_norm_backward(x, gamma, dy, self.eps as f64)?;
            Ok((Some(dx), Some(dg)))
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
    fn the_closed_form_rms_norm_backward_equals_autograd() {
        let x = Var::from_tensor(&randn((2, 3, 24), 7).affine(3.0, 0.5).unwrap()).unwrap();
        let g = Var::from_tensor(&(randn((1, 1, 24), 8).flatten_all().unwrap() + 1.0).unwrap())
            .unwrap();
        let w = randn((2, 3, 24), 9);
        let y = composite::rms_norm(x.as_tensor(), g.as_tensor(), 1e-6).unwrap();
        let auto = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (dx, dg) = rms_norm_backward(x.as_tensor(), g.as_tensor(), &w, 1e-6).unwrap();
        for (name, var, got) in [("x", &x, &dx), ("gamma", &g, &dg)] {
            let want = auto.get(var.as_tensor()).unwrap();
            let d = max_diff(want, got);
            assert!(d < 1e-5, "d{name}: {d}");
        }
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
