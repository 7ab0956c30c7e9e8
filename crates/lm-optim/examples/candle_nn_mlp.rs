//! lm-optim with a plain candle-nn model: a two-layer MLP built from a `VarMap` learns
//! y = sin(3x) on [-1, 1] with AdamW (decay on the weights, not the biases), GPT-3's warmup and
//! cosine schedule, through candle-nn's own `backward_step`.
//!
//! `cargo run --release -p lm-optim --example candle_nn_mlp`

use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, Optimizer as _, VarBuilder, VarMap};
use lm_optim::candle_nn_bridge::{CandleNn, CandleNnConfig};
use lm_optim::{Adam, AdamConfig, Schedule};

/// Seeded initial values (lm-optim's keyed initializer: each tensor's values depend only on the
/// seed and its name), so every run prints the same losses: weights N(0, 1/fan_in), biases 0.
fn seed_values(varmap: &VarMap) -> anyhow::Result<()> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("a poisoned VarMap"))?;
    for (name, var) in vars.iter() {
        let values = match var.dims() {
            [_, fan_in] => lm_optim::init::normal(
                var.shape().clone(),
                (*fan_in as f64).powf(-0.5),
                7,
                name,
                DType::F32,
                var.device(),
            )?,
            _ => var.zeros_like()?,
        };
        var.set(&values)?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let hidden = candle_nn::linear(1, 32, vb.pp("hidden"))?;
    let out = candle_nn::linear(32, 1, vb.pp("out"))?;
    seed_values(&varmap)?;
    let model =
        |x: &Tensor| -> candle_core::Result<Tensor> { out.forward(&hidden.forward(x)?.tanh()?) };

    // 64 points of the target function.
    let xs: Vec<f32> = (0..64).map(|i| -1.0 + 2.0 * i as f32 / 63.0).collect();
    let ys: Vec<f32> = xs.iter().map(|x| (3.0 * x).sin()).collect();
    let x = Tensor::from_vec(xs, (64, 1), &dev)?;
    let y = Tensor::from_vec(ys, (64, 1), &dev)?;

    // AdamW with weight decay 0.01 on matrices only (the bridge's groups follow the usual rule).
    let steps = 600;
    let schedule = Schedule::warmup_cosine(0.02, 0.002, 30.0, steps as f64)?;
    let cfg = CandleNnConfig {
        optimizer: AdamConfig::adamw(),
        lr: schedule.value(0.0),
        weight_decay: 0.01,
    };
    let mut opt = CandleNn::<Adam>::from_varmap(&varmap, cfg)?;

    let mse = |x: &Tensor| -> candle_core::Result<Tensor> { (model(x)? - &y)?.sqr()?.mean_all() };
    let first = mse(&x)?.to_scalar::<f32>()?;
    for step in 0..steps {
        opt.set_learning_rate(schedule.value(step as f64));
        let loss = mse(&x)?;
        opt.backward_step(&loss)?;
        if step % 150 == 0 {
            println!(
                "step {step:4}  lr {:.4}  loss {:.5}",
                opt.learning_rate(),
                loss.to_scalar::<f32>()?
            );
        }
    }
    let last = mse(&x)?.to_scalar::<f32>()?;
    println!("mean squared error {first:.4} -> {last:.5}");
    // The variance of sin(3x) on [-1, 1] is ≈ 0.4: a fit far below it has learnt the curve.
    anyhow::ensure!(
        last < 0.01,
        "the MLP did not fit sin(3x): {first} -> {last}"
    );
    Ok(())
}
