//! Reads from the device in training, counted by `lm_kernels::host` (each one is a
//! synchronisation on a GPU; the count is the same on the CPU, so the GPU path is held to it
//! here). A step that reports its loss reads once, for its loss and gradient norm together —
//! whatever the number of parameters and of micro-batches and losses (the cross-entropy counts
//! its scored targets on the device, and BERT's masked positions are not read back); in the
//! training loop only logged steps read (the clipping factor and the skip of a non-finite step
//! are decided on the device). Where the CPU path and a GPU's differ: the factor, a tensor in
//! both, is read in place from CPU memory here, while on a device Adam applies or skips the
//! step in its kernel (lm-optim's `tests/adam.rs` runs that gated path on the CPU) and SGD and
//! AdaFactor read the factor once per step. One test in this binary: the counter is
//! process-wide.

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
fn a_step_reads_the_device_once_and_the_loop_only_at_logged_steps() {
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
        let mut t = Trainer::new(cfg.clone(), &tmp.path().join(recipe), Device::Cpu).unwrap();
        for step in 0..3 {
            let before = lm_kernels::host::reads();
            t.train_one_step().unwrap();
            let reads = lm_kernels::host::reads() - before;
            assert_eq!(reads, 1, "{recipe}, step {step}");
        }
        // The loop: 20 steps logged every 5 (and evaluated every 10) read 4 times.
        let mut cfg = cfg;
        cfg.train.max_iters = 20;
        cfg.train.log_interval = 5;
        cfg.train.eval_interval = 10;
        cfg.optim.lr_decay_iters = Some(20);
        let mut t =
            Trainer::new(cfg, &tmp.path().join(format!("{recipe}-loop")), Device::Cpu).unwrap();
        t.verbose = false;
        let before = lm_kernels::host::reads();
        t.train().unwrap();
        let reads = lm_kernels::host::reads() - before;
        assert_eq!(reads, 4, "{recipe}: reads in 20 steps logged every 5");
    }
}
