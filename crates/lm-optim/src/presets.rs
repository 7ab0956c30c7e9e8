//! Named optimizer compositions from the papers: an update rule, weight decay, clipping and a
//! schedule (and GPT-3's batch-size ramp), each a plain value the caller can change.

use crate::{
    AdaFactor, AdaFactorConfig, AdaFactorLr, Adam, AdamConfig, BatchSizeRamp, Optimizer,
    ParamGroup, Result, Schedule, Sgd, SgdConfig,
};

pub use crate::optimizer::NamedVars;

/// Which update rule.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateRule {
    /// Minibatch SGD.
    Sgd(SgdConfig),
    /// Adam or AdamW.
    Adam(AdamConfig),
    /// AdaFactor.
    AdaFactor(AdaFactorConfig),
}

/// What the schedule is indexed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleUnit {
    /// Optimizer steps.
    Steps,
    /// Training tokens seen.
    Tokens,
}

/// A complete optimization recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    /// The update rule.
    pub rule: UpdateRule,
    /// λ for the decaying group (matrices, embeddings); biases and norms get 0.
    pub weight_decay: f64,
    /// Global-norm clipping threshold.
    pub clip_norm: Option<f64>,
    /// The learning rate.
    pub schedule: Schedule,
    /// Whether the schedule counts steps or tokens.
    pub unit: ScheduleUnit,
    /// Batch-size ramp, if any.
    pub batch_ramp: Option<BatchSizeRamp>,
}

impl Preset {
    /// The optimizer over a decaying and a non-decaying group.
    pub fn build(&self, decay: NamedVars, no_decay: NamedVars) -> Result<Box<dyn Optimizer>> {
        self.build_groups(vec![
            ParamGroup::new("decay", decay, self.weight_decay),
            ParamGroup::new("no_decay", no_decay, 0.0),
        ])
    }

    /// The optimizer over groups the caller made (e.g. a fine-tuning head with its own lr
    /// scale); each group keeps its own weight decay.
    pub fn build_groups(&self, groups: Vec<ParamGroup>) -> Result<Box<dyn Optimizer>> {
        Ok(match &self.rule {
            UpdateRule::Sgd(c) => Box::new(Sgd::new(groups, *c)?),
            UpdateRule::Adam(c) => Box::new(Adam::new(groups, *c)?),
            UpdateRule::AdaFactor(c) => Box::new(AdaFactor::new(groups, *c)?),
        })
    }
}

/// GPT-3 (Brown et al. 2020, appendix B): Adam β = (0.9, 0.95), ε = 1e−8, decoupled weight decay
/// 0.1, clipping at 1.0, linear warmup over the first 375 M tokens then cosine decay to 10% of the
/// peak over 260 B tokens, and the batch grown linearly from 32 k tokens over the first 4–12 B
/// tokens (here: from `ramp_start` to `batch` sequences over `ramp_tokens`).
pub fn gpt3(peak_lr: f64, batch: usize, ramp_start: usize, ramp_tokens: f64) -> Result<Preset> {
    Ok(Preset {
        rule: UpdateRule::Adam(AdamConfig::adamw().with_betas(0.9, 0.95).with_eps(1e-8)),
        weight_decay: 0.1,
        clip_norm: Some(1.0),
        schedule: Schedule::warmup_cosine(peak_lr, 0.1 * peak_lr, 375e6, 260e9)?,
        unit: ScheduleUnit::Tokens,
        batch_ramp: Some(BatchSizeRamp {
            start: ramp_start,
            end: batch,
            ramp_tokens,
            multiple: ramp_start.max(1),
        }),
    })
}

/// BERT's warmup (Devlin et al. 2019): 10,000 steps.
pub const BERT_WARMUP_STEPS: f64 = 1e4;
/// BERT's training length, where its linear decay reaches 0: 1 M steps.
pub const BERT_TOTAL_STEPS: f64 = 1e6;

/// BERT (Devlin et al. 2019): Adam β = (0.9, 0.999), weight decay 0.01, clipping at 1.0, lr 1e−4
/// with [`BERT_WARMUP_STEPS`] then linear decay to 0 at [`BERT_TOTAL_STEPS`] (HuggingFace's
/// AdamW with ε = 1e−6).
pub fn bert(peak_lr: f64, warmup_steps: f64, total_steps: f64) -> Result<Preset> {
    Ok(Preset {
        rule: UpdateRule::Adam(AdamConfig::adamw().with_eps(1e-6)),
        weight_decay: 0.01,
        clip_norm: Some(1.0),
        schedule: Schedule::warmup_linear(peak_lr, warmup_steps, total_steps)?,
        unit: ScheduleUnit::Steps,
        batch_ramp: None,
    })
}

/// T5 (Raffel et al. 2020): AdaFactor with the inverse-square-root schedule
/// `1/√max(n, k)`, k = 10⁴ (a constant 0.01 for the first 10⁴ steps), no weight decay, no
/// gradient clipping (AdaFactor clips its own update at RMS 1). Each update is scaled by the
/// parameter's RMS, as Mesh TensorFlow's `AdafactorOptimizer` does by default
/// (`multiply_by_parameter_scale`), which T5's pretraining used; fine-tuning with an external
/// rate usually turns it off.
pub fn t5() -> Preset {
    Preset {
        rule: UpdateRule::AdaFactor(AdaFactorConfig {
            lr: AdaFactorLr::External,
            scale_parameter: true,
            ..Default::default()
        }),
        weight_decay: 0.0,
        clip_norm: None,
        schedule: Schedule::InverseSqrt {
            peak: 0.01,
            warmup: 1e4,
        },
        unit: ScheduleUnit::Steps,
        batch_ramp: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt3_schedule_is_in_tokens() {
        let p = gpt3(6e-4, 512, 32, 4e9).unwrap();
        assert_eq!(p.unit, ScheduleUnit::Tokens);
        assert!((p.schedule.value(375e6) - 6e-4).abs() < 1e-15);
        assert!((p.schedule.value(260e9) - 6e-5).abs() < 1e-15);
        assert_eq!(p.batch_ramp.as_ref().unwrap().batch_size(0.0), 32);
        assert!((t5().schedule.value(4e4) - 0.005).abs() < 1e-15);
    }
}
