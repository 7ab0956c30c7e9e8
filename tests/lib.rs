//! Shared helpers of the cross-crate integration tests.

use lm_train::config::TrainConfig;

pub mod fuzzing;

/// The gpt-shakespeare-char recipe shrunk to run in a fraction of a second per step.
pub fn tiny_config(corpus: &str, max_iters: u64) -> TrainConfig {
    let mut cfg = TrainConfig::recipe("gpt-shakespeare-char").expect("the recipe parses");
    cfg.data.corpus = corpus.to_string();
    cfg.model.n_layer = 2;
    cfg.model.n_head = 2;
    cfg.model.n_embd = 32;
    cfg.model.block_size = 16;
    cfg.train.batch_size = 4;
    cfg.train.max_iters = max_iters;
    cfg.optim.lr_decay_iters = Some(40);
    cfg.optim.warmup_iters = 4;
    cfg.train.eval_interval = 4;
    cfg.train.eval_iters = 2;
    cfg.train.log_interval = 1;
    cfg.train.sample_tokens = 0;
    cfg
}

/// A recipe's model and schedule shrunk to seconds: one small layer, short blocks, `steps` steps
/// evaluated at the end (its data is left as it is).
pub fn shrink_model(mut cfg: TrainConfig, steps: u64) -> TrainConfig {
    cfg.model.n_layer = 1;
    cfg.model.n_head = 2;
    cfg.model.n_embd = 16;
    cfg.model.d_ff = Some(32);
    cfg.model.block_size = 24;
    cfg.train.batch_size = 4;
    cfg.train.max_iters = steps;
    cfg.train.eval_interval = steps;
    cfg.train.eval_iters = 2;
    cfg.train.log_interval = 1;
    cfg.train.sample_tokens = 8;
    cfg.optim.warmup_iters = 2;
    cfg.optim.lr_decay_iters = Some(steps.max(2));
    cfg
}
