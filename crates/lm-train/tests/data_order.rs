//! Data order is state, and a pure function: global batch k is the same whatever the number of
//! ranks that build it (each builds only its rows), so a run resumes at once, mid-epoch, on
//! another number of ranks, with the same losses.

use lm_train::choices::ZeroStage;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use candle_core::Device;
use lm_dist::{Collective, ThreadRank};
use lm_train::batches::{BatchSource, Specials};
use lm_train::config::{TokenizerKind, TrainConfig};
use lm_train::data::{prepared_corpus, Split};
use lm_train::model::Batch;
use lm_train::tokenizer::TextTokenizer;
use lm_train::Trainer;

const TEXT: &str = lm_train::data::SHAKESPEARE;

fn shrunk(recipe: &str, corpus: &str, batch: usize, steps: u64) -> TrainConfig {
    let mut cfg = TrainConfig::recipe(recipe).unwrap();
    cfg.data.corpus = corpus.into();
    if cfg.data.tokenizer != TokenizerKind::Char {
        cfg.data.vocab_size = Some(300);
    }
    (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd) = (1, 2, 16);
    (cfg.model.d_ff, cfg.model.block_size) = (Some(32), 24);
    (cfg.train.batch_size, cfg.train.max_iters) = (batch, steps);
    (cfg.train.eval_interval, cfg.train.eval_iters) = (4, 1);
    (cfg.train.log_interval, cfg.train.sample_tokens) = (1, 0);
    cfg.optim.warmup_iters = 2;
    cfg.optim.lr_decay_iters = Some(steps);
    cfg
}

/// Each example of `b` (padding removed): its inputs, segments and scored labels.
fn examples(b: &Batch) -> Vec<Vec<i64>> {
    let ids: Vec<Vec<u32>> = b.input_ids.to_vec2().unwrap();
    let labels: Vec<Vec<i64>> = b.labels.to_vec2().unwrap();
    let mask: Option<Vec<Vec<u32>>> = b.attention_mask.as_ref().map(|m| {
        m.to_dtype(candle_core::DType::U32)
            .unwrap()
            .to_vec2()
            .unwrap()
    });
    (0..ids.len())
        .map(|r| {
            let keep = |i: usize| mask.as_ref().is_none_or(|m| m[r][i] == 1);
            let mut e: Vec<i64> = (0..ids[r].len())
                .filter(|&i| keep(i))
                .map(|i| ids[r][i] as i64)
                .collect();
            e.push(-1);
            e.extend(labels[r].iter().filter(|&&l| l != -100));
            e
        })
        .collect()
}

#[test]
fn global_batches_are_the_same_on_1_2_3_and_4_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(&corpus, &TEXT[..40_000]).unwrap();
    let cache = tmp.path().join("cache");
    for recipe in [
        "gpt-shakespeare-char",
        "bert-mlm-nsp",
        "t5-span-corruption",
        "bart-denoising",
    ] {
        let cfg = shrunk(recipe, &corpus.display().to_string(), 12, 1);
        let lines: Vec<&str> = TEXT[..40_000].lines().collect();
        let tok = match cfg.data.tokenizer {
            TokenizerKind::Char => {
                TextTokenizer::train(TokenizerKind::Char, cfg.model.family, 0, &[TEXT])
            }
            kind => TextTokenizer::train(kind, cfg.model.family, 300, &lines),
        }
        .unwrap();
        let data = Arc::new(prepared_corpus(&cfg.data.corpus, &tok, 0.1, &cache).unwrap());
        let specials = Specials::of(cfg.model.family, &tok, tok.kind()).unwrap();
        let src = BatchSource::new(&cfg, data, specials, tok.vocab_size()).unwrap();
        // The 200 global batches after step 500 (and one far ahead: no replay to get there).
        for key in (500..700).chain([1 << 40]) {
            let one = examples(
                &src.batch(Split::Train, key, 12, 0..12, &Device::Cpu)
                    .unwrap(),
            );
            let mut h = DefaultHasher::new();
            one.hash(&mut h);
            for ranks in 2..=4 {
                let shared: Vec<Vec<i64>> = (0..ranks)
                    .flat_map(|r| {
                        examples(
                            &src.batch(
                                Split::Train,
                                key,
                                12,
                                lm_dist::share(12, ranks, r),
                                &Device::Cpu,
                            )
                            .unwrap(),
                        )
                    })
                    .collect();
                let mut g = DefaultHasher::new();
                shared.hash(&mut g);
                assert_eq!(
                    h.finish(),
                    g.finish(),
                    "{recipe}: batch {key} on {ranks} ranks"
                );
            }
        }
    }
}

/// Resuming on a number of ranks that cannot share the run's global batch is refused, naming
/// those that can. (Resuming with the same losses on other numbers of ranks is checked under
/// mpirun: tests/data_parallel.rs.)
#[test]
fn a_number_of_ranks_that_cannot_share_the_global_batch_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(&corpus, &TEXT[..40_000]).unwrap();
    let run = tmp.path().join("run");
    let cfg = shrunk("gpt-shakespeare-char", &corpus.display().to_string(), 6, 2);
    Trainer::new(cfg, &run, Device::Cpu)
        .unwrap()
        .train()
        .unwrap();
    let errors = ThreadRank::run(4, |c| {
        let c: Arc<dyn Collective> = Arc::new(c);
        Trainer::resume_distributed(&run, None, Device::Cpu, c)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    });
    assert!(
        errors[0].contains("global batch is 6") && errors[0].contains("1, 2, 3, 6"),
        "{errors:?}"
    );
}

/// ZeRO-2 and 3 on two thread ranks: each rank's memory account holds its share of the
/// gradients and of the optimizer state — at stage 3 of the parameters too — (the shares add up
/// to one process's), and the run trains, the ranks' parameters equal afterwards (whole again,
/// as `train` returns them) and equal to one process with the whole batch (within rounding: two
/// ranks sum in another order).
#[test]
fn zero_2_and_3_account_each_ranks_share_and_train_like_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(&corpus, &TEXT[..40_000]).unwrap();
    let corpus = corpus.display().to_string();
    let one = shrunk("gpt-shakespeare-char", &corpus, 6, 2);
    let values = |t: &Trainer| -> Vec<f32> {
        t.params()
            .vars()
            .iter()
            .flat_map(|(_, v)| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    };
    let mut t = Trainer::new(one, &tmp.path().join("one"), Device::Cpu).unwrap();
    let whole = t.memory_account().unwrap();
    t.train().unwrap();
    let single = values(&t);
    for stage in [ZeroStage::Zero2, ZeroStage::Zero3] {
        let mut cfg = shrunk("gpt-shakespeare-char", &corpus, 3, 2);
        cfg.train.zero_stage = stage;
        let run = tmp.path().join(format!("{stage:?}"));
        let ranks = ThreadRank::run(2, |c| {
            let c: Arc<dyn Collective> = Arc::new(c);
            let mut t = Trainer::new_distributed(cfg.clone(), &run, Device::Cpu, c).unwrap();
            let share = t.memory_account().unwrap();
            t.train().unwrap();
            (share, values(&t))
        });
        let (a, b) = (&ranks[0].0, &ranks[1].0);
        assert_eq!(a.gradients + b.gradients, whole.gradients, "{a:?} {b:?}");
        assert_eq!(a.optimizer_state + b.optimizer_state, whole.optimizer_state);
        assert!(a.gradients > 0 && b.gradients > 0 && a.gradients < whole.gradients);
        match stage {
            ZeroStage::Zero3 => {
                assert_eq!(a.parameters + b.parameters, whole.parameters, "{a:?} {b:?}");
                assert!(a.parameters > 0 && b.parameters > 0);
            }
            _ => assert_eq!(
                (a.parameters, b.parameters),
                (whole.parameters, whole.parameters)
            ),
        }
        assert_eq!(
            ranks[0].1, ranks[1].1,
            "{stage:?}: the ranks' parameters differ"
        );
        for (x, y) in ranks[0].1.iter().zip(&single) {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(y.abs()) + 1e-6,
                "{stage:?}: {x} vs {y}"
            );
        }
    }
}
