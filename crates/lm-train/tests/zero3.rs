//! ZeRO-2 and 3 with every block recomputed, on two thread ranks (no MPI needed): each block's
//! gradients are announced (reduced to their owners, dropped elsewhere) as soon as its
//! recomputation is done, and at stage 3 each rank gathers a block's parameters as the block
//! runs and frees the previous block's. For the four families the trained parameters equal one
//! process with the whole batch and no checkpointing (within rounding: two ranks sum in another
//! order), and the plan gates every block, keeping whole only what is read outside them. A
//! stage-3 checkpoint is one model shard per rank, read back whole by one process.

use std::sync::Arc;

use candle_core::Device;
use lm_dist::{Collective, ThreadRank};
use lm_train::choices::{ActivationCheckpointing, ZeroStage};
use lm_train::config::TrainConfig;
use lm_train::Trainer;

fn shrunk(recipe: &str, corpus: &str, batch: usize) -> TrainConfig {
    let mut cfg = TrainConfig::recipe(recipe).unwrap();
    cfg.data.corpus = corpus.into();
    if cfg.data.tokenizer != lm_train::config::TokenizerKind::Char {
        cfg.data.vocab_size = Some(300);
    }
    (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd) = (2, 2, 16);
    (cfg.model.d_ff, cfg.model.block_size) = (Some(32), 24);
    (cfg.train.batch_size, cfg.train.max_iters) = (batch, 3);
    (cfg.train.eval_interval, cfg.train.eval_iters) = (3, 1);
    (cfg.train.log_interval, cfg.train.sample_tokens) = (1, 0);
    // f32 products: a rank's share of a product can fall under the size where bf16 starts.
    cfg.train.matmul_precision = lm_train::config::Precision::Highest;
    (cfg.optim.warmup_iters, cfg.optim.lr_decay_iters) = (1, Some(3));
    // A smooth T5 (see data_parallel.rs: ReLU zeros make two summation orders diverge).
    if cfg.model.family == lm_train::config::Family::named("t5").unwrap() {
        cfg.model.t5_feed_forward = Some(lm_train::choices::T5FeedForward::GatedGelu);
    }
    cfg
}

fn values(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    t.params()
        .vars()
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect()
}

#[test]
fn zero_2_and_3_with_checkpointing_equal_one_process_for_the_four_families() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(&corpus, &lm_train::data::SHAKESPEARE[..40_000]).unwrap();
    let corpus = corpus.display().to_string();
    for recipe in [
        "gpt-shakespeare-char",
        "bert-mlm-nsp",
        "bart-denoising",
        "t5-span-corruption",
    ] {
        let one_dir = tmp.path().join(format!("{recipe}-one"));
        let mut one = Trainer::new(shrunk(recipe, &corpus, 6), &one_dir, Device::Cpu).unwrap();
        one.train().unwrap();
        assert_eq!(one.zero3_extent(), None);
        let single = values(&one);
        // The same tokenizer (trainers are not deterministic from run to run).
        for stage in [ZeroStage::Zero2, ZeroStage::Zero3] {
            let mut cfg = shrunk(recipe, &corpus, 3);
            cfg.data.tokenizer_file = Some(one_dir.join("tokenizer.json").display().to_string());
            cfg.train.zero_stage = stage;
            cfg.train.activation_checkpointing = ActivationCheckpointing::Blocks;
            let run = tmp.path().join(format!("{recipe}-{stage:?}"));
            let ranks = ThreadRank::run(2, |c| {
                let c: Arc<dyn Collective> = Arc::new(c);
                let mut t = Trainer::new_distributed(cfg.clone(), &run, Device::Cpu, c).unwrap();
                t.train().unwrap();
                (t.zero3_extent(), values(&t))
            });
            let what = format!("{recipe} {stage:?}");
            assert_eq!(
                ranks[0].1, ranks[1].1,
                "{what}: the ranks' parameters differ"
            );
            for ((name, a), (_, b)) in ranks[0].1.iter().zip(&single) {
                for (x, y) in a.iter().zip(b) {
                    assert!(
                        (x - y).abs() <= 1e-5 * x.abs().max(y.abs()) + 1e-6,
                        "{what} {name}: {x} vs {y}"
                    );
                }
            }
            if stage == ZeroStage::Zero2 {
                assert_eq!(ranks[0].0, None, "{what}: a plan without ZeRO-3");
                continue;
            }
            // The step-3 checkpoint: each rank wrote the parameters it owns as one shard of
            // transformers' sharded layout, and one process reads them back as the model.
            let ckpt = run.join("checkpoints/step-00000003");
            assert!(!ckpt.join("model.safetensors").exists(), "{what}");
            let map =
                lm_models::weights::read_index(&ckpt.join("model.safetensors.index.json")).unwrap();
            assert_eq!(map.len(), single.len(), "{what}");
            let shards: std::collections::BTreeSet<&str> =
                map.values().map(String::as_str).collect();
            let want = [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
            ];
            assert_eq!(shards, want.into(), "{what}");
            let opened = Trainer::open(&run, Device::Cpu).unwrap();
            assert_eq!(
                values(&opened),
                ranks[0].1,
                "{what}: read back from the shards"
            );
            let extent = ranks[0].0.expect("a plan after the first step");
            eprintln!("{recipe}: {extent:?}");
            // Every block of every stack is gated (2 per stack).
            let stacks = match recipe {
                "bart-denoising" | "t5-span-corruption" => 2,
                _ => 1,
            };
            assert_eq!(extent.blocks, 2 * stacks, "{recipe}: {extent:?}");
            assert!(extent.largest_block_values > 0, "{recipe}: {extent:?}");
            assert_eq!(ranks[0].0, ranks[1].0);
        }
    }
}
