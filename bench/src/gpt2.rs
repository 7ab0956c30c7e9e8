//! `lm-bench gpt2` (part of `cargo xtask bench`): the GPT-2 small training step on the CPU, one
//! process, at the two shapes — 4 × 64 and 1 × 1 024 tokens — with f32 products and with
//! bf16 products (f32 masters), as the trainer runs it: AdamW (λ 0.1), clip 1.0, no dropout, the
//! head in chunks past the trainer's threshold, the graph freed during backward.
//! `bench/pytorch/gpt2_cpu_step.py` times nanoGPT's model at the same shapes (f32, and autocast
//! bf16), by hand; docs/performance.md puts the two side by side.

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use lm_models::gpt::{Gpt, GptConfig};
use lm_models::{MatmulPrecision, ParamStore, StepContext};
use lm_objectives::loss::{cross_entropy, head_cross_entropy, CrossEntropy};
use lm_optim::{Adam, AdamConfig, Optimizer, ParamGroup};
use lm_train::families::gpt::HEAD_IN_CHUNKS_FROM;

use crate::{median_secs, Report};

/// The shapes measured: (batch, tokens per row).
pub const SHAPES: [(usize, usize); 2] = [(4, 64), (1, 1024)];

/// GPT-2 small (vocabulary 50 257) with AdamW (λ 0.1) and a batch of random tokens, stepped
/// as the trainer steps it; `lm-bench gpt2-memory` measures the same steps.
pub struct Gpt2Run {
    cfg: GptConfig,
    model: Gpt,
    /// The trained parameters.
    pub vars: Vec<Var>,
    /// Their optimizer.
    pub opt: Adam,
    x: Tensor,
    y: Tensor,
}

impl Gpt2Run {
    /// The model, its optimizer and `batch × t` random tokens (seed 1337 for the weights).
    pub fn new(batch: usize, t: usize) -> Result<Self> {
        let cfg = GptConfig::gpt2_small();
        let store = ParamStore::new(1337);
        let model = Gpt::new(&cfg, store.var_builder(DType::F32, &Device::Cpu))?;
        let vars: Vec<Var> = store.vars().into_iter().map(|(_, v)| v).collect();
        let opt = Adam::new(
            vec![ParamGroup::new("all", store.vars(), 0.1)],
            AdamConfig::adamw(),
        )?;
        let (x, y) = super::random_batch(cfg.vocab_size, batch, t, &Device::Cpu)?;
        Ok(Self {
            cfg,
            model,
            vars,
            opt,
            x,
            y,
        })
    }

    /// The loss as the trainer computes it: the head in chunks past the trainer's threshold,
    /// unless `whole_head` (the logits made whole).
    pub fn loss(&self, ctx: &StepContext, whole_head: bool) -> Result<Tensor> {
        let ce = CrossEntropy::default();
        let chunked = self.x.elem_count() * self.cfg.vocab_size >= HEAD_IN_CHUNKS_FROM;
        Ok(match chunked && !whole_head {
            true => {
                let hidden = self.model.hidden_states(&self.x, None, ctx)?;
                let w = self.model.head_weight();
                head_cross_entropy(&hidden, w, &self.y, &ce, ctx.precision)?
                    .ok_or_else(|| anyhow::anyhow!("the chunked head applies on the CPU"))?
            }
            false => cross_entropy(&self.model.forward(&self.x, ctx)?, &self.y, &ce)?,
        })
    }

    /// Clipping at 1.0 as the trainer does it — a factor AdamW applies inside its fused
    /// update — and the update.
    pub fn update(&mut self, grads: &mut GradStore) -> Result<()> {
        let (host_sq, _) = lm_optim::clip::sum_squares(grads, &self.vars)?;
        let factor = lm_optim::clip::clip_factor(host_sq.sqrt(), 1.0)?;
        self.opt.step_scaled(grads, 6e-4, factor)?;
        Ok(())
    }
}

/// Seconds per step (median of 3 after a warm-up) of GPT-2 small at `batch × t` tokens with
/// products at `prec`.
pub fn step_secs(batch: usize, t: usize, prec: MatmulPrecision) -> Result<f64> {
    let mut run = Gpt2Run::new(batch, t)?;
    let ctx = StepContext::train(prec, 0, 0);
    let mut step = || -> Result<()> {
        let mut grads = run.loss(&ctx, false)?.backward_freeing_graph()?;
        run.update(&mut grads)
    };
    let mut failed = None;
    let secs = median_secs(3, || {
        if let Err(e) = step() {
            failed.get_or_insert(e);
        }
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(secs),
    }
}

/// The rows of the `gpt2` suite.
pub fn gpt2(r: &mut Report) -> Result<()> {
    let cfg = GptConfig::gpt2_small();
    for (batch, t) in SHAPES {
        for (prec, name) in [
            (MatmulPrecision::Highest, "f32"),
            (MatmulPrecision::Bf16, "bf16"),
        ] {
            // `LM_BENCH_GPT2=4x64_bf16` (say): that row alone, e.g. under a profiler.
            let key = format!("{batch}x{t}_{name}");
            if std::env::var("LM_BENCH_GPT2").is_ok_and(|only| only != key) {
                continue;
            }
            let secs = step_secs(batch, t, prec)?;
            let tokens = (batch * t) as f64;
            let flops = cfg.flops_per_token(t) * tokens / secs;
            let mfu = crate::mfu_against_peak(prec, flops);
            r.row(
                "gpt2",
                &format!("GPT-2 small step {batch}×{t}, {name} products, AdamW"),
                format!("{:.0} ms/step", secs * 1e3),
                format!("{:.0} tok/s{mfu}", tokens / secs),
                &format!("gpt2_step_s_{key}"),
                secs,
            );
        }
    }
    Ok(())
}
