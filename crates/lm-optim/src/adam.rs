//! Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019), with PyTorch's semantics.
//!
//! With gradient `g_t` at step `t` (from 1):
//!
//! ```text
//! m_t = β1·m_{t−1} + (1 − β1)·g_t            first moment
//! v_t = β2·v_{t−1} + (1 − β2)·g_t²           second moment
//! m̂_t = m_t / (1 − β1^t),  v̂_t = v_t / (1 − β2^t)    bias correction
//! θ_t = θ_{t−1} − η·m̂_t / (√v̂_t + ε)
//! ```
//!
//! Weight decay is either coupled L2 (`g_t ← g_t + λθ`, Adam) or decoupled
//! (`θ ← θ − ηλθ` before the update, AdamW). AMSGrad replaces `v̂` by its running maximum.
//!
//! On CPU with f32 parameters the whole update is one fused in-place pass over
//! (θ, g, m, v): ~28 bytes moved per parameter, no temporary tensors. On a CUDA device (feature
//! `cuda`) the same pass is one kernel per parameter (lm-kernels' `gpu::adam_step`) instead of a
//! dozen candle ops. Elsewhere it is the same math in candle ops.

use std::cell::RefCell;
use std::collections::HashMap;

use rayon::prelude::*;

use candle_core::{
    backprop::GradStore, CpuStorage, DType, Device, InplaceOp2, Layout, Tensor, Var,
};

use crate::error::{check, OptimError, Result};
use crate::optimizer::{
    check_unique_names, read_step, step_tensor, take_state, Optimizer, ParamGroup,
};

/// How weight decay enters the update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDecay {
    /// L2 regularization: `λθ` is added to the gradient (PyTorch `Adam(weight_decay=λ)`).
    Coupled,
    /// Decoupled: `θ ← θ·(1 − ηλ)` before the Adam step (PyTorch `AdamW`).
    Decoupled,
}

/// Hyperparameters of [`Adam`]. `weight_decay` λ itself lives in each [`ParamGroup`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// β1, the first-moment decay.
    pub beta1: f64,
    /// β2, the second-moment decay.
    pub beta2: f64,
    /// ε added to `√v̂`.
    pub eps: f64,
    /// How the groups' λ is applied.
    pub weight_decay: WeightDecay,
    /// Use the running maximum of `v̂` (Reddi et al. 2018).
    pub amsgrad: bool,
    /// Use the fused in-place kernel for f32 parameters on CPU (on by default; off runs the same
    /// math in candle ops, for comparison).
    pub fused: bool,
}

impl AdamConfig {
    /// PyTorch's `Adam` defaults: β = (0.9, 0.999), ε = 1e−8, coupled decay.
    pub fn adam() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: WeightDecay::Coupled,
            amsgrad: false,
            fused: true,
        }
    }

    /// PyTorch's `AdamW` defaults: as [`AdamConfig::adam`] with decoupled decay.
    pub fn adamw() -> Self {
        Self {
            weight_decay: WeightDecay::Decoupled,
            ..Self::adam()
        }
    }

    /// With the given betas.
    pub fn with_betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }

    /// With the given ε.
    pub fn with_eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }

    fn validate(&self) -> Result<()> {
        check(
            (0.0..1.0).contains(&self.beta1),
            "beta1",
            self.beta1,
            "a value in [0, 1)",
        )?;
        check(
            (0.0..1.0).contains(&self.beta2),
            "beta2",
            self.beta2,
            "a value in [0, 1)",
        )?;
        check(self.eps > 0.0, "eps", self.eps, "> 0")
    }
}

/// A moment buffer: host memory for the fused CPU path, a tensor elsewhere.
#[derive(Debug)]
enum Moment {
    Host(Vec<f32>),
    Device(Tensor),
}

impl Moment {
    fn zeros(var: &Var, fused: bool) -> Result<Self> {
        Ok(if fused && fused_path(var) {
            Moment::Host(vec![0.0; var.elem_count()])
        } else {
            Moment::Device(var.zeros_like()?.to_dtype(DType::F32)?)
        })
    }

    fn to_tensor(&self, like: &Var) -> Result<Tensor> {
        Ok(match self {
            Moment::Host(v) => Tensor::from_slice(v, like.shape(), &Device::Cpu)?,
            // A copy: the GPU kernel would change a shared tensor under its holder.
            Moment::Device(t) => t.copy()?,
        })
    }

    fn from_tensor(t: Tensor, var: &Var, fused: bool) -> Result<Self> {
        Ok(if fused && fused_path(var) {
            Moment::Host(t.flatten_all()?.to_vec1::<f32>()?)
        } else {
            // A copy: the GPU kernel writes the moments in place, so they own their storage.
            Moment::Device(t.to_device(var.device())?.copy()?)
        })
    }
}

fn fused_path(var: &Var) -> bool {
    var.device().is_cpu() && var.dtype() == DType::F32
}

#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    m: Moment,
    v: Moment,
    v_max: Option<Moment>,
}

/// Adam or AdamW over parameter groups.
#[derive(Debug)]
pub struct Adam {
    cfg: AdamConfig,
    groups: Vec<(ParamGroup, Vec<Slot>)>,
    /// Steps applied, as the host knows them.
    t: u64,
    /// Once a step was gated on the device ([`Optimizer::step_gated`]): the steps applied, as an
    /// f32 scalar there (`t` is then stale until read back).
    t_device: Option<Tensor>,
}

/// The per-step values of a gated step, as tensors on the parameters' device.
struct DeviceScalars {
    /// 1 (u8) where the step is applied, 0 where it is skipped; shape `[1]`.
    apply: Tensor,
    /// The factor on the gradient, 0 on a skipped step; `[1]`.
    grad_scale: Tensor,
    /// η / (1 − β1^t); `[1]`.
    step_size: Tensor,
    /// 1 / √(1 − β2^t); `[1]`.
    inv_sqrt_bc2: Tensor,
}

/// Per-step scalars of the update, shared by both paths.
#[derive(Debug, Clone, Copy)]
struct StepScalars {
    beta1: f32,
    beta2: f32,
    /// 1 − β1 and 1 − β2, computed in f64 before rounding: rounding β2 = 0.9999 to f32 first
    /// would make 1 − β2 wrong by 1.7e−4 relative (PyTorch computes them in double too).
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    eps: f32,
    /// η / (1 − β1^t)
    step_size: f32,
    /// 1 / √(1 − β2^t)
    inv_sqrt_bc2: f32,
    /// λ added to the gradient (coupled), else 0.
    l2: f32,
    /// 1 − ηλ (decoupled), else 1.
    decay: f32,
    /// Factor on the gradient (clipping), applied before anything else.
    grad_scale: f32,
}

impl Adam {
    /// Adam/AdamW over `groups`. Refuses β outside [0, 1), ε ≤ 0, negative λ or lr scale, and
    /// duplicate parameter names.
    pub fn new(groups: Vec<ParamGroup>, cfg: AdamConfig) -> Result<Self> {
        cfg.validate()?;
        check_unique_names(&groups)?;
        let groups = groups
            .into_iter()
            .map(|g| {
                let slots = g
                    .params
                    .iter()
                    .map(|(name, var)| {
                        Ok(Slot {
                            name: name.clone(),
                            var: var.clone(),
                            m: Moment::zeros(var, cfg.fused)?,
                            v: Moment::zeros(var, cfg.fused)?,
                            v_max: if cfg.amsgrad {
                                Some(Moment::zeros(var, cfg.fused)?)
                            } else {
                                None
                            },
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((g, slots))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg,
            groups,
            t: 0,
            t_device: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }

    fn scalars(&self, group: &ParamGroup, lr: f64) -> StepScalars {
        let t = self.t as i32;
        let lr = lr * group.lr_scale;
        let (l2, decay) = match self.cfg.weight_decay {
            WeightDecay::Coupled => (group.weight_decay, 1.0),
            WeightDecay::Decoupled => (0.0, 1.0 - lr * group.weight_decay),
        };
        StepScalars {
            beta1: self.cfg.beta1 as f32,
            beta2: self.cfg.beta2 as f32,
            one_minus_beta1: (1.0 - self.cfg.beta1) as f32,
            one_minus_beta2: (1.0 - self.cfg.beta2) as f32,
            eps: self.cfg.eps as f32,
            step_size: (lr / (1.0 - self.cfg.beta1.powi(t))) as f32,
            inv_sqrt_bc2: (1.0 / (1.0 - self.cfg.beta2.powi(t)).sqrt()) as f32,
            l2: l2 as f32,
            decay: decay as f32,
            grad_scale: 1.0,
        }
    }

    fn step_with(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        check(lr >= 0.0 && lr.is_finite(), "lr", lr, "a finite value ≥ 0")?;
        check(
            grad_scale >= 0.0 && grad_scale.is_finite(),
            "grad_scale",
            grad_scale,
            "a finite value ≥ 0",
        )?;
        // A host step after gated ones continues from their count.
        if self.t_device.is_some() {
            self.t = self.steps()?;
            self.t_device = None;
        }
        self.t += 1;
        for gi in 0..self.groups.len() {
            let s = StepScalars {
                grad_scale: grad_scale as f32,
                ..self.scalars(&self.groups[gi].0, lr)
            };
            for slot in &mut self.groups[gi].1 {
                let Some(g) = grads.get(slot.var.as_tensor()) else {
                    continue;
                };
                if g.dims() != slot.var.dims() {
                    return Err(OptimError::BadState {
                        key: slot.name.clone(),
                        problem: format!(
                            "gradient shape {:?} differs from parameter shape {:?}",
                            g.dims(),
                            slot.var.dims()
                        ),
                    });
                }
                if self.cfg.fused && fused_path(&slot.var) {
                    fused_step(slot, g, s)?;
                } else if self.cfg.fused && gpu_path(&slot.var) {
                    gpu_step(slot, g, s)?;
                } else {
                    composite_step(slot, g, s)?;
                }
            }
        }
        Ok(())
    }
}

/// Whether the CUDA kernel applies: an f32 parameter on a CUDA device, in a `cuda` build.
fn gpu_path(var: &Var) -> bool {
    cfg!(feature = "cuda") && var.device().is_cuda() && var.dtype() == DType::F32
}

/// The update on a CUDA device in one kernel (lm-kernels' `adam_step`): θ, m and v in place.
#[cfg(feature = "cuda")]
fn gpu_step(slot: &mut Slot, g: &Tensor, s: StepScalars) -> Result<()> {
    let g = g.to_dtype(DType::F32)?;
    // `Slot::new` gives a parameter on a device its moments there: the composite form is only
    // a fallback.
    if !kernel_step(slot, &g, s, None)? {
        composite_step(slot, &g, s)?;
    }
    Ok(())
}

/// lm-kernels' `adam_step` on `slot` with the f32 gradient `g`; `on_device`: the step size, the
/// bias correction, the factor and whether to apply, read by the kernel from the device (a
/// gated step). `false` (nothing done) when the moments are not on the device.
#[cfg(feature = "cuda")]
fn kernel_step(
    slot: &mut Slot,
    g: &Tensor,
    s: StepScalars,
    on_device: Option<&Tensor>,
) -> Result<bool> {
    let (Moment::Device(m), Moment::Device(v)) = (&slot.m, &slot.v) else {
        return Ok(false);
    };
    let v_max = match &slot.v_max {
        Some(Moment::Device(vm)) => Some(vm),
        _ => None,
    };
    let scalars = lm_kernels::gpu::AdamScalars {
        beta1: s.beta1,
        beta2: s.beta2,
        one_minus_beta1: s.one_minus_beta1,
        one_minus_beta2: s.one_minus_beta2,
        eps: s.eps,
        step_size: s.step_size,
        inv_sqrt_bc2: s.inv_sqrt_bc2,
        l2: s.l2,
        decay: s.decay,
        grad_scale: s.grad_scale,
    };
    let state = lm_kernels::gpu::AdamState { m, v, v_max };
    lm_kernels::gpu::adam_step(slot.var.as_tensor(), g, state, scalars, on_device)?;
    Ok(true)
}

#[cfg(not(feature = "cuda"))]
fn gpu_step(slot: &mut Slot, g: &Tensor, s: StepScalars) -> Result<()> {
    composite_step(slot, g, s)
}

fn composite_step(slot: &mut Slot, g: &Tensor, s: StepScalars) -> Result<()> {
    let theta = slot.var.as_tensor().to_dtype(DType::F32)?;
    let mut g = g.to_dtype(DType::F32)?;
    if s.grad_scale != 1.0 {
        g = (g * s.grad_scale as f64)?;
    }
    if s.l2 != 0.0 {
        g = (g + (&theta * s.l2 as f64)?)?;
    }
    let (Moment::Device(m), Moment::Device(v)) = (&slot.m, &slot.v) else {
        // INVARIANT: `Slot::new` gives a parameter on a device moments on the same device.
        unreachable!("device parameters have device moments")
    };
    let m = ((m * s.beta1 as f64)? + (&g * s.one_minus_beta1 as f64)?)?;
    let v = ((v * s.beta2 as f64)? + (g.sqr()? * s.one_minus_beta2 as f64)?)?;
    let v_hat_src = match &mut slot.v_max {
        Some(Moment::Device(vm)) => {
            *vm = vm.maximum(&v)?;
            vm.clone()
        }
        _ => v.clone(),
    };
    let denom = ((v_hat_src.sqrt()? * s.inv_sqrt_bc2 as f64)? + s.eps as f64)?;
    let update = (m.div(&denom)? * s.step_size as f64)?;
    let new_theta = ((theta * s.decay as f64)? - update)?;
    slot.var.set(&new_theta.to_dtype(slot.var.dtype())?)?;
    slot.m = Moment::Device(m);
    slot.v = Moment::Device(v);
    Ok(())
}

/// [`composite_step`] decided on the device: the per-step values are tensors there, and a skipped
/// step (`d.apply` 0) leaves θ, m, v (and v_max) as they were.
fn gated_composite_step(
    slot: &mut Slot,
    g: &Tensor,
    s: StepScalars,
    d: &DeviceScalars,
) -> Result<()> {
    let theta = slot.var.as_tensor().to_dtype(DType::F32)?;
    let mut g = g.to_dtype(DType::F32)?.broadcast_mul(&d.grad_scale)?;
    if s.l2 != 0.0 {
        g = (g + (&theta * s.l2 as f64)?)?;
    }
    let (Moment::Device(m), Moment::Device(v)) = (&slot.m, &slot.v) else {
        return Err(OptimError::BadState {
            key: slot.name.clone(),
            problem: "a step gated on the device needs the moments there (this parameter's \
                      are in host memory: give the factor as a host value to step_scaled)"
                .into(),
        });
    };
    let apply = d.apply.broadcast_as(theta.shape())?;
    let keep = |new: &Tensor, old: &Tensor| apply.where_cond(new, old);
    let new_m = ((m * s.beta1 as f64)? + (&g * s.one_minus_beta1 as f64)?)?;
    let new_v = ((v * s.beta2 as f64)? + (g.sqr()? * s.one_minus_beta2 as f64)?)?;
    let v_hat_src = match &mut slot.v_max {
        Some(Moment::Device(vm)) => {
            let new_vm = vm.maximum(&new_v)?;
            let src = new_vm.clone();
            *vm = keep(&new_vm, vm)?;
            src
        }
        _ => new_v.clone(),
    };
    let denom = (v_hat_src.sqrt()?.broadcast_mul(&d.inv_sqrt_bc2)? + s.eps as f64)?;
    let update = new_m.div(&denom)?.broadcast_mul(&d.step_size)?;
    let new_theta = ((&theta * s.decay as f64)? - update)?;
    slot.var
        .set(&keep(&new_theta, &theta)?.to_dtype(slot.var.dtype())?)?;
    slot.m = Moment::Device(keep(&new_m, m)?);
    slot.v = Moment::Device(keep(&new_v, v)?);
    Ok(())
}

/// The gated update on a CUDA device in one kernel: the kernel reads the step size, the bias
/// correction, the factor and whether to apply from the device.
#[cfg(feature = "cuda")]
fn gpu_gated_step(slot: &mut Slot, g: &Tensor, s: StepScalars, d: &DeviceScalars) -> Result<()> {
    let g = g.to_dtype(DType::F32)?;
    let on_device = Tensor::cat(
        &[
            &d.step_size,
            &d.inv_sqrt_bc2,
            &d.grad_scale,
            &d.apply.to_dtype(DType::F32)?,
        ],
        0,
    )?;
    if !kernel_step(slot, &g, s, Some(&on_device))? {
        gated_composite_step(slot, &g, s, d)?;
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn gpu_gated_step(slot: &mut Slot, g: &Tensor, s: StepScalars, d: &DeviceScalars) -> Result<()> {
    gated_composite_step(slot, g, s, d)
}

/// The fused CPU update: one pass over θ (mutated in place) and g, updating m and v.
struct FusedAdam<'a> {
    m: RefCell<&'a mut [f32]>,
    v: RefCell<&'a mut [f32]>,
    v_max: Option<RefCell<&'a mut [f32]>>,
    s: StepScalars,
}

impl InplaceOp2 for FusedAdam<'_> {
    fn name(&self) -> &'static str {
        "fused-adam"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(theta), CpuStorage::F32(grad)) = (s1, s2) else {
            candle_core::bail!("fused-adam: parameter and gradient must be f32")
        };
        let (Some((t0, t1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("fused-adam: parameter and gradient must be contiguous")
        };
        let theta = &mut theta[t0..t1];
        let grad = &grad[g0..g1];
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        if theta.len() != grad.len() || m.len() != theta.len() {
            candle_core::bail!("fused-adam: parameter, gradient and state sizes differ")
        }
        let s = self.s;
        let v_max = self.v_max.as_ref().map(|vm| vm.borrow_mut());
        // Chunks of 8 Ki parameters across the thread pool: the step is memory-bound and one
        // core cannot saturate the memory bus; chunks this small also split the 16–64 Ki
        // matrices of a small model (64 Ki ran each of them on one core).
        const CHUNK: usize = 1 << 13;
        match v_max {
            None => theta
                .par_chunks_mut(CHUNK)
                .zip(grad.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| adam_kernel(p, g, m, v, None, s)),
            Some(mut vm) => theta
                .par_chunks_mut(CHUNK)
                .zip(grad.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .zip(vm.par_chunks_mut(CHUNK))
                .for_each(|((((p, g), m), v), vm)| adam_kernel(p, g, m, v, Some(vm), s)),
        }
        Ok(())
    }
}

/// The update of one chunk; `v_max` for AMSGrad.
#[inline]
fn adam_kernel(
    theta: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    v_max: Option<&mut [f32]>,
    s: StepScalars,
) {
    let (one_m_b1, one_m_b2) = (s.one_minus_beta1, s.one_minus_beta2);
    match v_max {
        None => {
            for (((p, &g), m), v) in theta
                .iter_mut()
                .zip(grad)
                .zip(m.iter_mut())
                .zip(v.iter_mut())
            {
                let g = g * s.grad_scale + s.l2 * *p;
                *m = s.beta1 * *m + one_m_b1 * g;
                *v = s.beta2 * *v + one_m_b2 * g * g;
                let denom = v.sqrt() * s.inv_sqrt_bc2 + s.eps;
                *p = *p * s.decay - s.step_size * *m / denom;
            }
        }
        Some(v_max) => {
            for ((((p, &g), m), v), vm) in theta
                .iter_mut()
                .zip(grad)
                .zip(m.iter_mut())
                .zip(v.iter_mut())
                .zip(v_max.iter_mut())
            {
                let g = g * s.grad_scale + s.l2 * *p;
                *m = s.beta1 * *m + one_m_b1 * g;
                *v = s.beta2 * *v + one_m_b2 * g * g;
                *vm = vm.max(*v);
                let denom = vm.sqrt() * s.inv_sqrt_bc2 + s.eps;
                *p = *p * s.decay - s.step_size * *m / denom;
            }
        }
    }
}

fn fused_step(slot: &mut Slot, g: &Tensor, s: StepScalars) -> Result<()> {
    let g = if g.dtype() == DType::F32 {
        g.clone()
    } else {
        g.to_dtype(DType::F32)?
    };
    let g = if g.is_contiguous() {
        g
    } else {
        g.contiguous()?
    };
    let (Moment::Host(m), Moment::Host(v)) = (&mut slot.m, &mut slot.v) else {
        // INVARIANT: `Slot::new` gives a CPU f32 parameter host moments.
        unreachable!("cpu f32 parameters have host moments")
    };
    let v_max = match &mut slot.v_max {
        Some(Moment::Host(vm)) => Some(RefCell::new(vm.as_mut_slice())),
        _ => None,
    };
    let op = FusedAdam {
        m: RefCell::new(m.as_mut_slice()),
        v: RefCell::new(v.as_mut_slice()),
        v_max,
        s,
    };
    slot.var.as_tensor().inplace_op2(&g, &op)?;
    Ok(())
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step_with(grads, lr, 1.0)
    }

    fn step_scaled(&mut self, grads: &mut GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.step_with(grads, lr, grad_scale)
    }

    fn gates_on_device(&self) -> bool {
        true
    }

    fn step_gated(&mut self, grads: &GradStore, lr: f64, factor: &Tensor) -> Result<()> {
        check(lr >= 0.0 && lr.is_finite(), "lr", lr, "a finite value ≥ 0")?;
        let factor = factor.flatten_all()?.to_dtype(DType::F32)?;
        if factor.elem_count() != 1 {
            return Err(OptimError::BadState {
                key: "factor".into(),
                problem: format!("a gated step takes one value, got {:?}", factor.dims()),
            });
        }
        // x − x is 0 for a finite x and NaN otherwise: 1 where the step applies.
        let apply = factor.sub(&factor)?.eq(0f32)?;
        let grad_scale = apply.where_cond(&factor, &factor.zeros_like()?)?;
        let t = match self.t_device.take() {
            Some(t) => t,
            None => Tensor::new(&[self.t as f32], factor.device())?,
        };
        let t = (t + apply.to_dtype(DType::F32)?)?;
        self.t_device = Some(t.clone());
        // β^t as exp(t·ln β), on the device (the host path uses powi in f64).
        let bias_correction = |beta: f64| -> Result<Tensor> {
            Ok((t.clone() * beta.ln())?.exp()?.affine(-1.0, 1.0)?)
        };
        let (bc1, bc2) = (
            bias_correction(self.cfg.beta1)?,
            bias_correction(self.cfg.beta2)?,
        );
        for gi in 0..self.groups.len() {
            let s = self.scalars(&self.groups[gi].0, lr);
            let lr = lr * self.groups[gi].0.lr_scale;
            let d = DeviceScalars {
                apply: apply.clone(),
                grad_scale: grad_scale.clone(),
                step_size: (bc1.recip()? * lr)?,
                inv_sqrt_bc2: bc2.sqrt()?.recip()?,
            };
            for slot in &mut self.groups[gi].1 {
                let Some(g) = grads.get(slot.var.as_tensor()) else {
                    continue;
                };
                if g.dims() != slot.var.dims() {
                    return Err(OptimError::BadState {
                        key: slot.name.clone(),
                        problem: format!(
                            "gradient shape {:?} differs from parameter shape {:?}",
                            g.dims(),
                            slot.var.dims()
                        ),
                    });
                }
                if self.cfg.fused && gpu_path(&slot.var) {
                    gpu_gated_step(slot, g, s, &d)?;
                } else {
                    gated_composite_step(slot, g, s, &d)?;
                }
            }
        }
        Ok(())
    }

    fn steps(&self) -> Result<u64> {
        Ok(match &self.t_device {
            Some(t) => t
                .flatten_all()?
                .to_vec1::<f32>()?
                .first()
                .copied()
                .unwrap_or(0.0) as u64,
            None => self.t,
        })
    }

    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("step".to_string(), step_tensor(self.steps()?)?)];
        for (_, slots) in &self.groups {
            for slot in slots {
                out.push((
                    format!("{}.exp_avg", slot.name),
                    slot.m.to_tensor(&slot.var)?,
                ));
                out.push((
                    format!("{}.exp_avg_sq", slot.name),
                    slot.v.to_tensor(&slot.var)?,
                ));
                if let Some(vm) = &slot.v_max {
                    out.push((
                        format!("{}.max_exp_avg_sq", slot.name),
                        vm.to_tensor(&slot.var)?,
                    ));
                }
            }
        }
        Ok(out)
    }

    fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let t = read_step(state)?;
        for (_, slots) in &mut self.groups {
            for slot in slots {
                let like = slot.var.as_tensor();
                let m = take_state(state, &format!("{}.exp_avg", slot.name), like)?;
                let v = take_state(state, &format!("{}.exp_avg_sq", slot.name), like)?;
                slot.m = Moment::from_tensor(m, &slot.var, self.cfg.fused)?;
                slot.v = Moment::from_tensor(v, &slot.var, self.cfg.fused)?;
                if slot.v_max.is_some() {
                    let vm = take_state(state, &format!("{}.max_exp_avg_sq", slot.name), like)?;
                    slot.v_max = Some(Moment::from_tensor(vm, &slot.var, self.cfg.fused)?);
                }
            }
        }
        self.t = t;
        self.t_device = None;
        Ok(())
    }

    fn state_bytes(&self) -> usize {
        let per = if self.cfg.amsgrad { 3 } else { 2 };
        self.groups
            .iter()
            .flat_map(|(_, s)| s.iter())
            .map(|s| per * 4 * s.var.elem_count())
            .sum()
    }

    fn vars(&self) -> Vec<Var> {
        self.groups
            .iter()
            .flat_map(|(_, s)| s.iter().map(|s| s.var.clone()))
            .collect()
    }
}
