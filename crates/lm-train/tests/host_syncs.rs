//! Reads from the device in a training step, counted by `lm_kernels::host` (each one is a
//! synchronisation on a GPU; the count is the same on the CPU, so the GPU path is held to it
//! here). A step reads once, for its loss and gradient norm together — whatever the number of
//! parameters and of micro-batches and losses (the cross-entropy counts its scored targets on the
//! device, and BERT's masked positions are not read back). One test in this binary: the counter
//! is process-wide.

use candle_core::Device;
use lm_train::config::TrainConfig;
use lm_train::Trainer;

/// A recipe shrunk to one small layer, two micro-batches per step.
fn tiny(recipe: &str, corpus: &str) -> TrainConfig {
    let mut cfg = TrainConfig::recipe(recipe).unwrap();
    cfg.data.corpus = corpus.into();
    if cfg.data.tokenizer != lm_train::config::TokenizerKind::Char {
        cfg.data.vocab_size = Some(300);
    }
    cfg.model.n_layer = 1;
    cfg.model.n_head = 2;
    cfg.model.n_embd = 16;
    cfg.model.d_ff = Some(32);
    cfg.model.block_size = 24;
    cfg.train.batch_size = 4;
    cfg.train.grad_accum = 2;
    cfg.train.max_iters = 10;
    cfg.optim.warmup_iters = 2;
    cfg.optim.lr_decay_iters = Some(10);
    cfg
}

#[test]
fn a_step_reads_the_device_once() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(&corpus, &lm_train::data::SHAKESPEARE[..40_000]).unwrap();
    let corpus = corpus.display().to_string();
    // BERT's step has two cross-entropies per micro-batch (masked LM and NSP), the others one.
    for recipe in [
        "gpt-shakespeare-char",
        "bert-mlm-nsp",
        "roberta-mlm",
        "t5-span-corruption",
        "bart-denoising",
    ] {
        let cfg = tiny(recipe, &corpus);
        let mut t = Trainer::new(cfg, &tmp.path().join(recipe), Device::Cpu).unwrap();
        for step in 0..3 {
            let before = lm_kernels::host::reads();
            t.train_one_step().unwrap();
            let reads = lm_kernels::host::reads() - before;
            assert_eq!(reads, 1, "{recipe}, step {step}");
        }
    }
}
