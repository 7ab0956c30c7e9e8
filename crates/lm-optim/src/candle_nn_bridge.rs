//! lm-optim for candle-nn code (feature `candle-nn`, on by default): any of its update rules as
//! a [`candle_nn::Optimizer`] — so `backward_step` and code written for candle-nn's `AdamW` work
//! unchanged — and parameter groups straight from a [`candle_nn::VarMap`].
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{Module, Optimizer as _, VarBuilder, VarMap};
//! use lm_optim::candle_nn_bridge::{CandleNn, CandleNnConfig};
//! use lm_optim::{Adam, AdamConfig};
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let layer = candle_nn::linear(2, 1, vb.pp("fc")).unwrap();
//! let cfg = CandleNnConfig { optimizer: AdamConfig::adamw(), lr: 1e-2, weight_decay: 0.01 };
//! let mut opt = CandleNn::<Adam>::from_varmap(&varmap, cfg).unwrap();
//! let x = Tensor::new(&[[1f32, 2.0]], &Device::Cpu).unwrap();
//! let loss = layer.forward(&x).unwrap().sqr().unwrap().sum_all().unwrap();
//! opt.backward_step(&loss).unwrap();
//! ```

use candle_core::backprop::GradStore;
use candle_core::Var;

use crate::optimizer::{split_by_decay, NamedVars, Optimizer, ParamGroup};
use crate::{AdaFactor, AdaFactorConfig, Adam, AdamConfig, Result, Sgd, SgdConfig};

/// An update rule built from parameter groups and its hyperparameters.
pub trait FromGroups: Optimizer + Sized {
    /// The hyperparameters (`AdamConfig`, …).
    type Config: Clone;
    /// The optimizer over `groups`.
    fn from_groups(groups: Vec<ParamGroup>, cfg: Self::Config) -> Result<Self>;
}

impl FromGroups for Adam {
    type Config = AdamConfig;
    fn from_groups(groups: Vec<ParamGroup>, cfg: AdamConfig) -> Result<Self> {
        Adam::new(groups, cfg)
    }
}

impl FromGroups for Sgd {
    type Config = SgdConfig;
    fn from_groups(groups: Vec<ParamGroup>, cfg: SgdConfig) -> Result<Self> {
        Sgd::new(groups, cfg)
    }
}

impl FromGroups for AdaFactor {
    type Config = AdaFactorConfig;
    fn from_groups(groups: Vec<ParamGroup>, cfg: AdaFactorConfig) -> Result<Self> {
        AdaFactor::new(groups, cfg)
    }
}

/// What [`candle_nn::Optimizer::new`] takes for a [`CandleNn`]: the update rule's
/// hyperparameters, the learning rate (set again with `set_learning_rate`, e.g. from a
/// [`crate::Schedule`]) and λ for the decaying group.
#[derive(Debug, Clone)]
pub struct CandleNnConfig<C> {
    /// The update rule's hyperparameters.
    pub optimizer: C,
    /// The learning rate of the next steps.
    pub lr: f64,
    /// λ of the matrices and embeddings ([`crate::optimizer::decays`]); vectors get none.
    pub weight_decay: f64,
}

/// An lm-optim update rule with the learning rate candle-nn's interface keeps in the optimizer.
#[derive(Debug)]
pub struct CandleNn<O> {
    inner: O,
    lr: f64,
}

impl<O: FromGroups> CandleNn<O> {
    /// Over `vars` (named, as their saved state is keyed), split into a decaying group and one
    /// without decay.
    pub fn from_named(vars: NamedVars, cfg: CandleNnConfig<O::Config>) -> Result<Self> {
        Ok(Self {
            inner: O::from_groups(groups(vars, cfg.weight_decay), cfg.optimizer)?,
            lr: cfg.lr,
        })
    }

    /// Over every variable of `varmap`, by its name.
    pub fn from_varmap(varmap: &candle_nn::VarMap, cfg: CandleNnConfig<O::Config>) -> Result<Self> {
        Self::from_named(named_vars(varmap), cfg)
    }

    /// The lm-optim optimizer (for its state, `step_scaled`, …).
    pub fn inner(&mut self) -> &mut O {
        &mut self.inner
    }
}

/// `varmap`'s variables with their names, sorted by name (a stable order).
pub fn named_vars(varmap: &candle_nn::VarMap) -> NamedVars {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut vars: NamedVars = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// `vars` as a "decay" group (λ = `weight_decay`) and a "no_decay" one, by lm-optim's rule.
pub fn groups(vars: NamedVars, weight_decay: f64) -> Vec<ParamGroup> {
    let (decay, no_decay) = split_by_decay(vars);
    vec![
        ParamGroup::new("decay", decay, weight_decay),
        ParamGroup::new("no_decay", no_decay, 0.0),
    ]
}

impl<O: FromGroups> candle_nn::Optimizer for CandleNn<O> {
    type Config = CandleNnConfig<O::Config>;

    fn new(vars: Vec<Var>, config: Self::Config) -> candle_core::Result<Self> {
        let named = vars
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("param{i}"), v))
            .collect();
        Self::from_named(named, config).map_err(candle_core::Error::wrap)
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        Optimizer::step(&mut self.inner, grads, self.lr).map_err(candle_core::Error::wrap)
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
}
