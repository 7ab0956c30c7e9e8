//! AdaFactor (Shazeer & Stern 2018) with HuggingFace transformers' semantics.
//!
//! For a matrix gradient `G ∈ R^{m×n}` the second moment is not stored in full (`O(mn)`) but as
//! running means of its rows `R ∈ R^m` and columns `C ∈ R^n` (`O(m + n)`), rebuilt as the rank-1
//! estimate `V̂ = R Cᵀ / mean(R)`:
//!
//! ```text
//! β2_t = 1 − t^(−0.8)
//! R ← β2_t·R + (1 − β2_t)·mean_cols(G² + ε1)      C ← β2_t·C + (1 − β2_t)·mean_rows(G² + ε1)
//! U = G / √V̂           (vectors: V ← β2_t·V + (1 − β2_t)(G² + ε1), U = G / √V)
//! U ← U / max(1, RMS(U)/d)                          update clipping, d = 1
//! η_t = min(1e−2, 1/√t) · max(ε2, RMS(θ))           relative step, when no lr is given
//! θ ← θ − η_t·U      (optionally with momentum β1 on η_t·U and weight decay θ ← θ − λη_tθ)
//! ```

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Tensor, Var, D};

use crate::error::{check, Result};
use crate::optimizer::{
    check_unique_names, read_step, step_tensor, take_state, Optimizer, ParamGroup,
};

/// Where the step size comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AdaFactorLr {
    /// `min(1e−2, 1/√t)` (or `1e−6·t` with warmup init), ignoring the lr passed to `step`.
    Relative {
        /// HuggingFace's `warmup_init`.
        warmup_init: bool,
    },
    /// The lr passed to `step` (from a schedule).
    External,
}

/// AdaFactor hyperparameters; the defaults are HuggingFace's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaFactorConfig {
    /// ε1, added to the squared gradient (1e−30).
    pub eps1: f64,
    /// ε2, the floor of the parameter scale (1e−3).
    pub eps2: f64,
    /// Update clipping threshold d (1.0).
    pub clip_threshold: f64,
    /// Exponent of `β2_t = 1 − t^decay_rate` (−0.8).
    pub decay_rate: f64,
    /// First-moment decay; `None` (the default) keeps no first moment.
    pub beta1: Option<f64>,
    /// Multiply the step by `max(ε2, RMS(θ))`.
    pub scale_parameter: bool,
    /// The step-size rule.
    pub lr: AdaFactorLr,
}

impl Default for AdaFactorConfig {
    fn default() -> Self {
        Self {
            eps1: 1e-30,
            eps2: 1e-3,
            clip_threshold: 1.0,
            decay_rate: -0.8,
            beta1: None,
            scale_parameter: true,
            lr: AdaFactorLr::Relative { warmup_init: false },
        }
    }
}

#[derive(Debug)]
enum SecondMoment {
    Factored { row: Tensor, col: Tensor },
    Full(Tensor),
}

#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    v: SecondMoment,
    m: Option<Tensor>,
    group: usize,
}

/// AdaFactor over parameter groups.
#[derive(Debug)]
pub struct AdaFactor {
    cfg: AdaFactorConfig,
    groups: Vec<ParamGroup>,
    slots: Vec<Slot>,
    t: u64,
}

fn rms(t: &Tensor) -> Result<f64> {
    Ok((t.sqr()?.mean_all()?.to_scalar::<f32>()? as f64).sqrt())
}

fn factored_shapes(dims: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let r = dims.len();
    let row = dims[..r - 1].to_vec();
    let mut col = dims[..r - 2].to_vec();
    col.push(dims[r - 1]);
    (row, col)
}

impl AdaFactor {
    /// AdaFactor over `groups`.
    pub fn new(groups: Vec<ParamGroup>, cfg: AdaFactorConfig) -> Result<Self> {
        check(cfg.eps1 >= 0.0, "eps1", cfg.eps1, "≥ 0")?;
        check(cfg.eps2 > 0.0, "eps2", cfg.eps2, "> 0")?;
        check(
            cfg.clip_threshold > 0.0,
            "clip_threshold",
            cfg.clip_threshold,
            "> 0",
        )?;
        check(cfg.decay_rate < 0.0, "decay_rate", cfg.decay_rate, "< 0")?;
        if let Some(b1) = cfg.beta1 {
            check((0.0..1.0).contains(&b1), "beta1", b1, "a value in [0, 1)")?;
        }
        check_unique_names(&groups)?;
        let mut slots = vec![];
        for (gi, g) in groups.iter().enumerate() {
            for (name, var) in &g.params {
                let dev = var.device();
                let v = if var.rank() >= 2 {
                    let (row, col) = factored_shapes(var.dims());
                    SecondMoment::Factored {
                        row: Tensor::zeros(row, DType::F32, dev)?,
                        col: Tensor::zeros(col, DType::F32, dev)?,
                    }
                } else {
                    SecondMoment::Full(Tensor::zeros(var.shape(), DType::F32, dev)?)
                };
                let m = match cfg.beta1 {
                    Some(_) => Some(Tensor::zeros(var.shape(), DType::F32, dev)?),
                    None => None,
                };
                slots.push(Slot {
                    name: name.clone(),
                    var: var.clone(),
                    v,
                    m,
                    group: gi,
                });
            }
        }
        Ok(Self {
            cfg,
            groups,
            slots,
            t: 0,
        })
    }

    fn step_size(&self, lr: f64, param_rms: f64) -> f64 {
        let t = self.t as f64;
        let base = match self.cfg.lr {
            AdaFactorLr::Relative { warmup_init } => {
                let min_step = if warmup_init { 1e-6 * t } else { 1e-2 };
                min_step.min(1.0 / t.sqrt())
            }
            AdaFactorLr::External => lr,
        };
        let scale = if self.cfg.scale_parameter {
            self.cfg.eps2.max(param_rms)
        } else {
            1.0
        };
        scale * base
    }
}

impl Optimizer for AdaFactor {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        check(lr >= 0.0 && lr.is_finite(), "lr", lr, "a finite value ≥ 0")?;
        self.t += 1;
        let beta2t = 1.0 - (self.t as f64).powf(self.cfg.decay_rate);
        for i in 0..self.slots.len() {
            let Some(g) = grads.get(self.slots[i].var.as_tensor()) else {
                continue;
            };
            let g = g.to_dtype(DType::F32)?;
            let theta = self.slots[i].var.as_tensor().to_dtype(DType::F32)?;
            let step = self.step_size(lr * self.groups[self.slots[i].group].lr_scale, rms(&theta)?);
            let sq = (g.sqr()? + self.cfg.eps1)?;
            let slot = &mut self.slots[i];
            let update = match &mut slot.v {
                SecondMoment::Factored { row, col } => {
                    *row = ((&*row * beta2t)? + (sq.mean(D::Minus1)? * (1.0 - beta2t))?)?;
                    *col = ((&*col * beta2t)? + (sq.mean(D::Minus2)? * (1.0 - beta2t))?)?;
                    let r = row
                        .broadcast_div(&row.mean_keepdim(D::Minus1)?)?
                        .sqrt()?
                        .recip()?
                        .unsqueeze(D::Minus1)?;
                    let c = col.unsqueeze(D::Minus2)?.sqrt()?.recip()?;
                    r.broadcast_mul(&c)?.mul(&g)?
                }
                SecondMoment::Full(v) => {
                    *v = ((&*v * beta2t)? + (sq * (1.0 - beta2t))?)?;
                    v.sqrt()?.recip()?.mul(&g)?
                }
            };
            let clip = (rms(&update)? / self.cfg.clip_threshold).max(1.0);
            let mut update = (update * (step / clip))?;
            if let (Some(m), Some(b1)) = (&mut slot.m, self.cfg.beta1) {
                *m = ((&*m * b1)? + (update * (1.0 - b1))?)?;
                update = m.clone();
            }
            let wd = self.groups[slot.group].weight_decay;
            let theta = if wd != 0.0 {
                (&theta - (&theta * (wd * step))?)?
            } else {
                theta
            };
            slot.var
                .set(&(theta - update)?.to_dtype(slot.var.dtype())?)?;
        }
        Ok(())
    }

    fn steps(&self) -> Result<u64> {
        Ok(self.t)
    }

    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("step".to_string(), step_tensor(self.t)?)];
        for s in &self.slots {
            match &s.v {
                SecondMoment::Factored { row, col } => {
                    out.push((format!("{}.exp_avg_sq_row", s.name), row.clone()));
                    out.push((format!("{}.exp_avg_sq_col", s.name), col.clone()));
                }
                SecondMoment::Full(v) => out.push((format!("{}.exp_avg_sq", s.name), v.clone())),
            }
            if let Some(m) = &s.m {
                out.push((format!("{}.exp_avg", s.name), m.clone()));
            }
        }
        Ok(out)
    }

    fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let t = read_step(state)?;
        for s in &mut self.slots {
            let dev = s.var.device().clone();
            match &mut s.v {
                SecondMoment::Factored { row, col } => {
                    *row = take_state(state, &format!("{}.exp_avg_sq_row", s.name), row)?
                        .to_device(&dev)?;
                    *col = take_state(state, &format!("{}.exp_avg_sq_col", s.name), col)?
                        .to_device(&dev)?;
                }
                SecondMoment::Full(v) => {
                    *v = take_state(state, &format!("{}.exp_avg_sq", s.name), v)?.to_device(&dev)?
                }
            }
            if let Some(m) = &mut s.m {
                *m = take_state(state, &format!("{}.exp_avg", s.name), m)?.to_device(&dev)?;
            }
        }
        self.t = t;
        Ok(())
    }

    fn state_bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|s| {
                let v = match &s.v {
                    SecondMoment::Factored { row, col } => row.elem_count() + col.elem_count(),
                    SecondMoment::Full(v) => v.elem_count(),
                };
                4 * (v + s.m.as_ref().map_or(0, |m| m.elem_count()))
            })
            .sum()
    }

    fn vars(&self) -> Vec<Var> {
        self.slots.iter().map(|s| s.var.clone()).collect()
    }
}
