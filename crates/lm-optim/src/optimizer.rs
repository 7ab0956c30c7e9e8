//! The optimizer interface shared by every update rule, and parameter groups.
//!
//! Any candle model works: an optimizer holds the model's [`Var`]s, reads their gradients from
//! the [`GradStore`] that `loss.backward()` returns, and is told the learning rate of each step by
//! the caller (normally from a [`crate::Schedule`]), so schedules, clipping and loss scaling stay
//! separate pieces.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};

use crate::error::{check, OptimError, Result};

/// A named set of parameters sharing weight decay and a learning-rate multiplier
/// (e.g. "decay" for matrices and "no_decay" for biases and norm gains).
#[derive(Debug, Clone)]
pub struct ParamGroup {
    /// The group's name, used in errors and logs.
    pub name: String,
    /// The parameters, each with a unique name (used as the key of its saved state).
    pub params: Vec<(String, Var)>,
    /// Weight-decay coefficient λ of the group.
    pub weight_decay: f64,
    /// The group's learning rate is `lr · lr_scale`.
    pub lr_scale: f64,
}

/// Parameters with their names.
pub type NamedVars = Vec<(String, Var)>;

/// The weight-decay rule of GPT-2/3, BERT and nanoGPT: matrices and embeddings (rank ≥ 2)
/// decay; vectors (biases, norm gains) do not. The one place the rule is written.
pub fn decays(var: &Var) -> bool {
    var.rank() >= 2
}

/// `vars` split by [`decays`] into (decayed, not decayed), order kept.
pub fn split_by_decay(vars: NamedVars) -> (NamedVars, NamedVars) {
    vars.into_iter().partition(|(_, v)| decays(v))
}

impl ParamGroup {
    /// A group with the given weight decay and `lr_scale` 1.
    pub fn new(name: impl Into<String>, params: Vec<(String, Var)>, weight_decay: f64) -> Self {
        Self {
            name: name.into(),
            params,
            weight_decay,
            lr_scale: 1.0,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        check(
            self.weight_decay >= 0.0,
            "weight_decay",
            self.weight_decay,
            "≥ 0",
        )?;
        check(self.lr_scale >= 0.0, "lr_scale", self.lr_scale, "≥ 0")
    }
}

/// An update rule over parameter groups.
pub trait Optimizer: Send {
    /// Applies one update with base learning rate `lr`, reading gradients from `grads`.
    /// Parameters without a gradient are left as they are.
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()>;

    /// [`Optimizer::step`] on the gradients times `grad_scale` (the factor of gradient clipping
    /// or of loss-scale unscaling). The default scales the gradients in `grads` first; Adam folds
    /// the factor into its update instead (no pass over the gradients).
    fn step_scaled(&mut self, grads: &mut GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        if grad_scale != 1.0 {
            crate::clip::scale_grads(grads, &self.vars(), grad_scale)?;
        }
        self.step(grads, lr)
    }

    /// Whether [`Optimizer::step_gated`] decides and applies the update on the parameters'
    /// device. Where it does not, a caller with its factor on a device reads the factor back and
    /// calls [`Optimizer::step_scaled`] (or skips the step).
    fn gates_on_device(&self) -> bool {
        false
    }

    /// [`Optimizer::step_scaled`] with its factor as a one-element f32 tensor on the parameters'
    /// device, decided there without reading anything back (on a GPU a read is a
    /// synchronisation): a finite factor scales the gradients; a non-finite one (from a NaN or
    /// infinite loss or gradient norm) skips the step — parameters, state and step count are
    /// left as they were, as PyTorch's fused Adam does with `found_inf`. Optimizers whose
    /// [`Optimizer::gates_on_device`] is false refuse it.
    fn step_gated(&mut self, _grads: &GradStore, _lr: f64, _factor: &Tensor) -> Result<()> {
        Err(OptimError::Unsupported(
            "a step gated on the device: read the factor and call step_scaled",
        ))
    }

    /// Number of updates applied so far (`t` in the chapter's bias correction). After
    /// [`Optimizer::step_gated`], the count lives on the device and is read back here.
    fn steps(&self) -> Result<u64>;

    /// All state as named tensors (for [`save_state`]).
    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>>;

    /// Restores state produced by [`Optimizer::state_tensors`] on the same parameters.
    fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;

    /// Bytes of optimizer state held (not counting parameters and gradients).
    fn state_bytes(&self) -> usize;

    /// All parameters, in group order.
    fn vars(&self) -> Vec<Var>;
}

/// Bytes of an optimizer's state (moments and the like; the step counter is not counted): what
/// sharding the state over N data-parallel ranks divides by N. Counted
/// ([`Optimizer::state_bytes`]), not read: nothing is copied, so asking costs no memory.
pub fn state_bytes(opt: &dyn Optimizer) -> Result<usize> {
    Ok(opt.state_bytes())
}

/// Writes an optimizer's state to a safetensors file.
pub fn save_state(opt: &dyn Optimizer, path: &Path) -> Result<()> {
    let tensors: HashMap<String, Tensor> = opt.state_tensors()?.into_iter().collect();
    candle_core::safetensors::save(&tensors, path)?;
    Ok(())
}

/// Reads state written by [`save_state`] into an optimizer built over the same parameters.
pub fn load_state(opt: &mut dyn Optimizer, path: &Path, device: &Device) -> Result<()> {
    let tensors = candle_core::safetensors::load(path, device)?;
    opt.load_state_tensors(&tensors)
}

/// The step counter as a tensor, so that it travels with the rest of the state.
pub(crate) fn step_tensor(t: u64) -> Result<Tensor> {
    Ok(Tensor::new(&[t as i64], &Device::Cpu)?)
}

pub(crate) fn read_step(state: &HashMap<String, Tensor>) -> Result<u64> {
    let t = state.get("step").ok_or_else(|| OptimError::BadState {
        key: "step".into(),
        problem: "missing".into(),
    })?;
    let values = t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
    match values.as_slice() {
        [step] if *step >= 0 => Ok(*step as u64),
        _ => Err(OptimError::BadState {
            key: "step".into(),
            problem: format!("expected one step count ≥ 0, got {values:?}"),
        }),
    }
}

/// Reads one state tensor and checks its shape.
pub(crate) fn take_state(
    state: &HashMap<String, Tensor>,
    key: &str,
    like: &Tensor,
) -> Result<Tensor> {
    let t = state.get(key).ok_or_else(|| OptimError::BadState {
        key: key.into(),
        problem: "missing".into(),
    })?;
    if t.dims() != like.dims() {
        return Err(OptimError::BadState {
            key: key.into(),
            problem: format!("shape {:?}, expected {:?}", t.dims(), like.dims()),
        });
    }
    let t = t.to_dtype(DType::F32)?;
    // A moment with a NaN or infinity would poison every later step: refuse it here.
    if !(t.clone() * 0.0)?
        .sum_all()?
        .to_scalar::<f32>()?
        .is_finite()
    {
        return Err(OptimError::BadState {
            key: key.into(),
            problem: "holds NaN or infinite values".into(),
        });
    }
    Ok(t)
}

/// Checks that parameter names are unique across groups (they key the saved state).
pub(crate) fn check_unique_names(groups: &[ParamGroup]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for g in groups {
        g.validate()?;
        for (name, _) in &g.params {
            if !seen.insert(name.as_str()) {
                return Err(OptimError::BadState {
                    key: name.clone(),
                    problem: "parameter name appears twice".into(),
                });
            }
        }
    }
    Ok(())
}
