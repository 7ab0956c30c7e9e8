//! Minibatch SGD, `θ ← θ − η·g`, with PyTorch's momentum, dampening, Nesterov and (coupled)
//! weight decay:
//!
//! ```text
//! g ← g + λθ
//! b ← g                          at the first step
//! b ← μ·b + (1 − dampening)·g    after
//! g ← g + μ·b (Nesterov)  or  g ← b
//! θ ← θ − η·g
//! ```

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Tensor, Var};

use crate::error::{check, Result};
use crate::optimizer::{
    check_unique_names, read_step, step_tensor, take_state, Optimizer, ParamGroup,
};

/// SGD hyperparameters (λ lives in each group).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SgdConfig {
    /// Momentum μ (0: plain SGD).
    pub momentum: f64,
    /// Dampening of the gradient in the momentum buffer.
    pub dampening: f64,
    /// Nesterov momentum (needs μ > 0 and no dampening).
    pub nesterov: bool,
}

/// SGD over parameter groups.
#[derive(Debug)]
pub struct Sgd {
    cfg: SgdConfig,
    groups: Vec<ParamGroup>,
    buffers: HashMap<String, Tensor>,
    t: u64,
}

impl Sgd {
    /// SGD over `groups`; refuses negative momentum or dampening and Nesterov without momentum.
    pub fn new(groups: Vec<ParamGroup>, cfg: SgdConfig) -> Result<Self> {
        check(cfg.momentum >= 0.0, "momentum", cfg.momentum, "≥ 0")?;
        check(cfg.dampening >= 0.0, "dampening", cfg.dampening, "≥ 0")?;
        check(
            !cfg.nesterov || (cfg.momentum > 0.0 && cfg.dampening == 0.0),
            "nesterov momentum",
            cfg.momentum,
            "momentum > 0 and dampening 0 with Nesterov",
        )?;
        check_unique_names(&groups)?;
        Ok(Self {
            cfg,
            groups,
            buffers: HashMap::new(),
            t: 0,
        })
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        check(lr >= 0.0 && lr.is_finite(), "lr", lr, "a finite value ≥ 0")?;
        self.t += 1;
        for group in &self.groups {
            let lr = lr * group.lr_scale;
            for (name, var) in &group.params {
                let Some(g) = grads.get(var.as_tensor()) else {
                    continue;
                };
                let theta = var.as_tensor().to_dtype(DType::F32)?;
                let mut g = g.to_dtype(DType::F32)?;
                if group.weight_decay != 0.0 {
                    g = (g + (&theta * group.weight_decay)?)?;
                }
                if self.cfg.momentum != 0.0 {
                    let buf = match self.buffers.get(name) {
                        None => g.clone(),
                        Some(b) => ((b * self.cfg.momentum)? + (&g * (1.0 - self.cfg.dampening))?)?,
                    };
                    g = if self.cfg.nesterov {
                        (g + (&buf * self.cfg.momentum)?)?
                    } else {
                        buf.clone()
                    };
                    self.buffers.insert(name.clone(), buf);
                }
                var.set(&(theta - (g * lr)?)?.to_dtype(var.dtype())?)?;
            }
        }
        Ok(())
    }

    fn steps(&self) -> Result<u64> {
        Ok(self.t)
    }

    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("step".to_string(), step_tensor(self.t)?)];
        let mut names: Vec<&String> = self.buffers.keys().collect();
        names.sort();
        for n in names {
            out.push((format!("{n}.momentum_buffer"), self.buffers[n].clone()));
        }
        Ok(out)
    }

    fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.t = read_step(state)?;
        self.buffers.clear();
        for group in &self.groups {
            for (name, var) in &group.params {
                let key = format!("{name}.momentum_buffer");
                if state.contains_key(&key) {
                    self.buffers.insert(
                        name.clone(),
                        take_state(state, &key, var.as_tensor())?.to_device(var.device())?,
                    );
                }
            }
        }
        Ok(())
    }

    fn state_bytes(&self) -> usize {
        self.buffers.values().map(|b| b.elem_count() * 4).sum()
    }

    fn vars(&self) -> Vec<Var> {
        self.groups
            .iter()
            .flat_map(|g| g.params.iter().map(|(_, v)| v.clone()))
            .collect()
    }
}
