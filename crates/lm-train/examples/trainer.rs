//! lm-train's `Trainer` from Rust instead of the `lm-train` command: a run configured in code
//! (the bundled character-level GPT recipe, shrunk to seconds), trained on the bundled corpus,
//! evaluated, sampled, then opened again read-only from its directory as `eval` and `sample` do.
//!
//! `cargo run --release -p lm-train --example trainer [RUN_DIR]`

use std::path::PathBuf;

use lm_train::config::TrainConfig;
use lm_train::trainer::{default_device, Trainer};

fn main() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let run_dir = std::env::args()
        .nth(1)
        .map_or(scratch.path().join("run"), PathBuf::from);

    let mut cfg = TrainConfig::recipe("gpt-shakespeare-char")?;
    cfg.model.n_layer = 2;
    cfg.model.n_embd = 64;
    cfg.model.block_size = 64;
    cfg.train.max_iters = 60;
    cfg.train.eval_interval = 30;
    cfg.train.eval_iters = 4;
    cfg.train.sample_tokens = 0;
    cfg.optim.warmup_iters = 10;
    cfg.optim.lr_decay_iters = Some(60);

    let mut trainer = Trainer::new(cfg, &run_dir, default_device())?;
    let summary = trainer.train()?;
    let (train, val) = summary
        .last_eval
        .ok_or_else(|| anyhow::anyhow!("no evaluation"))?;
    println!(
        "{} steps: train loss {train:.3}, val loss {val:.3}",
        summary.step
    );
    // 65 characters: a model that predicts nothing scores ln 65 ≈ 4.17 nats.
    anyhow::ensure!(
        val < 3.5,
        "60 steps should take the val loss well below ln 65: {val}"
    );

    let reader = Trainer::open(&run_dir, default_device())?;
    let text = reader.sample(120, 1)?.unwrap_or_default();
    println!("sample from {}:\n{text}", run_dir.display());
    Ok(())
}
