//! A project outside the workspace that uses lm-optim and lm-objectives as a candle user would
//! (built by `cargo xtask outside`, part of `cargo xtask test`): a bigram language model in
//! candle-nn learns a repeating token sequence — lm-objectives makes the causal-LM pairs and
//! scores them, lm-optim's AdamW steps through candle-nn's `backward_step`.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, Optimizer as _, VarBuilder, VarMap};
use lm_objectives::causal::shift_for_causal_lm;
use lm_objectives::loss::{cross_entropy, CrossEntropy};
use lm_optim::candle_nn_bridge::{CandleNn, CandleNnConfig};
use lm_optim::{Adam, AdamConfig};

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    // "0 1 2 3 4 5 6 7" repeated: each token determines the next.
    let tokens: Vec<u32> = (0..256).map(|i| i % 8).collect();
    let pairs = shift_for_causal_lm(&tokens)?;
    let inputs = Tensor::new(pairs.input_ids.as_slice(), &dev)?;
    let targets = Tensor::new(pairs.targets.as_slice(), &dev)?;

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let bigram = candle_nn::embedding(8, 8, vb.pp("bigram"))?;
    // Seeded values (lm-optim's keyed initializer), so every run prints the same losses.
    for (name, var) in varmap.data().lock().map_err(|_| anyhow::anyhow!("poisoned"))?.iter() {
        var.set(&lm_optim::init::normal(var.shape().clone(), 1.0, 7, name, DType::F32, &dev)?)?;
    }
    let cfg = CandleNnConfig { optimizer: AdamConfig::adamw(), lr: 0.1, weight_decay: 0.0 };
    let mut opt = CandleNn::<Adam>::from_varmap(&varmap, cfg)?;

    let loss = || -> anyhow::Result<Tensor> {
        Ok(cross_entropy(&bigram.forward(&inputs)?, &targets, &CrossEntropy::default())?)
    };
    let first = loss()?.to_scalar::<f32>()?;
    for _ in 0..100 {
        opt.backward_step(&loss()?)?;
    }
    let last = loss()?.to_scalar::<f32>()?;
    println!("outside the workspace: bigram cross-entropy {first:.3} -> {last:.4} nats");
    // A deterministic sequence: the loss goes from about ln 8 ≈ 2.08 to near 0.
    anyhow::ensure!(last < 0.1 && last < first, "the bigram model did not learn: {first} -> {last}");
    Ok(())
}
