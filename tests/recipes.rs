//! Every bundled recipe runs end to end on a tiny version of itself, and the trainer's failure
//! modes behave: a failed save leaves the previous checkpoint intact, a non-finite loss stops
//! (or is skipped) naming the step, a tokenizer that disagrees with the config is refused.

use candle_core::Device;
use lm_train::batches::{BatchSource, Specials};
use lm_train::config::{
    ActivationCheckpointing, NonFinitePolicy, ObjectiveKind, OptimizerKind, TokenizerKind,
    TrainConfig, RECIPES,
};
use lm_train::data::{prepared_corpus, Split};
use lm_train::metrics::MetricsLog;
use lm_train::{TrainError, Trainer};

/// The first 40 kB of tinyshakespeare as a corpus file.
fn small_corpus(dir: &std::path::Path) -> String {
    let path = dir.join("corpus.txt");
    std::fs::write(&path, &lm_train::data::SHAKESPEARE[..40_000]).unwrap();
    path.display().to_string()
}

/// A recipe shrunk to seconds: one small layer, short blocks, a small vocabulary.
fn shrink(mut cfg: TrainConfig, corpus: &str, steps: u64) -> TrainConfig {
    cfg.data.corpus = corpus.into();
    if cfg.data.tokenizer != TokenizerKind::Char {
        cfg.data.vocab_size = Some(300);
    }
    lm_integration_tests::shrink_model(cfg, steps)
}

#[test]
fn every_recipe_trains_a_tiny_version_of_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = small_corpus(tmp.path());
    assert_eq!(RECIPES.len(), 7);
    for (name, _) in RECIPES {
        let cfg = shrink(TrainConfig::recipe(name).unwrap(), &corpus, 6);
        let dir = tmp.path().join(name);
        let mut t = Trainer::new(cfg, &dir, Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
        let summary = t.train().unwrap_or_else(|e| panic!("{name}: {e}"));
        let (_, val) = summary.last_eval.unwrap();
        let uniform = (t.tokenizer().vocab_size() as f32).ln();
        assert!(
            val.is_finite() && val < uniform + 1.0,
            "{name}: val loss {val} (uniform {uniform})"
        );
        assert_eq!(summary.step, 6);
        assert!(
            dir.join("checkpoints/step-00000006/model.safetensors")
                .exists(),
            "{name}"
        );
        assert!(
            dir.join("checkpoints/step-00000006/tokenizer.json")
                .exists(),
            "{name}"
        );
        let sample = t.sample(4, 0).unwrap();
        assert_eq!(
            sample.is_some(),
            !name.starts_with("bert") && !name.starts_with("roberta"),
            "{name}"
        );
    }
}

/// Prefix LM selected by `objective.kind` trains GPT (bidirectional prefix), T5 and BART (prefix
/// to the encoder, the rest to the decoder); each batch is a window split into a prefix and its
/// continuation, and a kind that does not fit a family is refused naming the key.
#[test]
fn prefix_lm_trains_gpt_t5_and_bart_from_config() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = small_corpus(tmp.path());
    for name in [
        "gpt-shakespeare-char",
        "t5-span-corruption",
        "bart-denoising",
    ] {
        let text = TrainConfig::recipe(name).unwrap().to_toml();
        let text =
            format!("{text}\n").replace("[objective]\n", "[objective]\nkind = \"prefix-lm\"\n");
        let text = if text.contains("kind = ") {
            text
        } else {
            format!("{text}\n[objective]\nkind = \"prefix-lm\"\n")
        };
        let cfg = TrainConfig::from_toml(&text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(cfg.objective_kind(), ObjectiveKind::PrefixLm, "{name}");
        let cfg = shrink(cfg, &corpus, 6);
        let dir = tmp.path().join(format!("{name}-prefix"));
        let mut t =
            Trainer::new(cfg.clone(), &dir, Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
        let summary = t.train().unwrap_or_else(|e| panic!("{name}: {e}"));
        let (_, val) = summary.last_eval.unwrap();
        let uniform = (t.tokenizer().vocab_size() as f32).ln();
        assert!(
            val.is_finite() && val < uniform + 1.0,
            "{name}: val loss {val} (uniform {uniform})"
        );
        check_prefix_batches(&t, &cfg, &dir, name);
    }
    let mut bert = TrainConfig::recipe("bert-mlm-nsp").unwrap();
    bert.objective.kind = Some(ObjectiveKind::PrefixLm);
    let e = bert.validate("bert").unwrap_err().to_string();
    assert!(e.contains("objective.kind") && e.contains("bert"), "{e}");
}

/// Every example of a prefix-LM batch is a window of the corpus split once: GPT scores exactly
/// the positions from its prefix on; T5 and BART encode the prefix and decode the rest.
fn check_prefix_batches(t: &Trainer, cfg: &TrainConfig, dir: &std::path::Path, name: &str) {
    let tok = t.tokenizer();
    let specials = Specials::of(cfg.model.family, tok, cfg.data.tokenizer).unwrap();
    let _ = dir;
    let cache = lm_train::data::cache_root().unwrap();
    let dataset = prepared_corpus(&cfg.data.corpus, tok, cfg.data.val_fraction(), &cache).unwrap();
    let corpus = std::sync::Arc::new(dataset);
    let vocab = tok.vocab_size();
    let src = BatchSource::new(cfg, corpus, specials.clone(), vocab).unwrap();
    let b = src.batch(Split::Train, 3, 8, 0..8, &Device::Cpu).unwrap();
    let block = cfg.model.block_size;
    let labels: Vec<Vec<i64>> = b.labels.to_vec2().unwrap();
    if let Some(p) = &b.prefix_len {
        let p: Vec<u32> = p.to_vec1().unwrap();
        for (row, &p) in labels.iter().zip(&p) {
            let p = p as usize;
            assert!((1..=block).contains(&p), "{name}: prefix {p}");
            assert!(
                row[..p - 1].iter().all(|&l| l == -100),
                "{name}: {row:?} {p}"
            );
            assert!(row[p - 1..].iter().all(|&l| l >= 0), "{name}: {row:?} {p}");
        }
        return;
    }
    let inputs: Vec<Vec<u32>> = b.input_ids.to_vec2().unwrap();
    let mut lengths = std::collections::BTreeSet::new();
    for (x, y) in inputs.iter().zip(&labels) {
        let x: Vec<u32> = x.iter().copied().filter(|&i| i != specials.pad).collect();
        let y: Vec<i64> = y.iter().copied().filter(|&l| l != -100).collect();
        assert_eq!(
            x.last(),
            Some(&specials.eos),
            "{name}: the input ends with EOS"
        );
        assert_eq!(
            y.last(),
            Some(&(specials.eos as i64)),
            "{name}: the target ends with EOS"
        );
        let opened = usize::from(name.starts_with("bart"));
        assert_eq!(
            opened == 1,
            x[0] == specials.bos,
            "{name}: BART opens with <s>"
        );
        // Prefix and continuation together are one window of block_size tokens.
        assert_eq!(x.len() - 1 - opened + y.len() - 1, block, "{name}");
        lengths.insert(y.len());
    }
    assert!(
        lengths.len() > 1,
        "{name}: the split point varies: {lengths:?}"
    );
}

#[test]
fn a_failed_save_leaves_the_previous_checkpoint_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = small_corpus(tmp.path());
    let mut cfg = shrink(
        TrainConfig::recipe("gpt-shakespeare-char").unwrap(),
        &corpus,
        8,
    );
    cfg.train.eval_interval = 4;
    let dir = tmp.path().join("run");
    // Stop at 4 (a checkpoint), then make the next checkpoint's temporary path unusable, as a
    // full or read-only disk would.
    let mut first = Trainer::new(cfg, &dir, Device::Cpu).unwrap();
    first.stop_at(4).unwrap();
    first.train().unwrap();
    drop(first);
    let before = std::fs::read(dir.join("checkpoints/step-00000004/model.safetensors")).unwrap();
    let blocker = dir.join(format!(
        "checkpoints/step-00000008.tmp-{}",
        std::process::id()
    ));
    std::fs::write(&blocker, "not a directory").unwrap();
    let mut t = Trainer::resume(&dir, None, Device::Cpu).unwrap();
    let err = t.train().unwrap_err().to_string();
    assert!(err.contains("step-00000008"), "{err}");
    assert_eq!(
        std::fs::read(dir.join("checkpoints/step-00000004/model.safetensors")).unwrap(),
        before
    );
    assert!(!dir.join("checkpoints/step-00000008").exists());
    // With the disk "fixed" the run resumes from 4 and finishes (the failed trainer, which
    // holds the run's lock, is gone first).
    drop(t);
    std::fs::remove_file(&blocker).unwrap();
    let mut t = Trainer::resume(&dir, None, Device::Cpu).unwrap();
    assert_eq!(t.step(), 4);
    assert_eq!(t.train().unwrap().step, 8);
}

#[test]
fn a_non_finite_loss_stops_or_is_skipped_per_config() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = small_corpus(tmp.path());
    let mut cfg = shrink(
        TrainConfig::recipe("gpt-shakespeare-char").unwrap(),
        &corpus,
        12,
    );
    cfg.optim.name = OptimizerKind::Sgd;
    cfg.optim.lr = 1e12;
    cfg.optim.min_lr = 1e12;
    cfg.optim.warmup_iters = 0;
    cfg.optim.grad_clip = 0.0;
    let err = Trainer::new(cfg.clone(), &tmp.path().join("stop"), Device::Cpu)
        .unwrap()
        .train()
        .unwrap_err();
    match &err {
        TrainError::NonFiniteLoss { step, .. } => assert!(*step >= 2 && *step <= 12, "{err}"),
        other => panic!("expected a non-finite loss, got {other}"),
    }
    assert!(err.to_string().contains(&format!(
        "step {}",
        match err {
            TrainError::NonFiniteLoss { step, .. } => step,
            _ => 0,
        }
    )));
    cfg.train.on_nonfinite_loss = NonFinitePolicy::Skip;
    // With "skip" the steps whose loss or gradient norm is not finite change nothing: the run
    // ends at 12 with finite (huge) weights, the skipped steps counted in the checkpoint and
    // not logged as trained.
    let summary = Trainer::new(cfg.clone(), &tmp.path().join("skip"), Device::Cpu)
        .unwrap()
        .train()
        .unwrap();
    assert_eq!(summary.step, 12);
    let last = summary.checkpoint.unwrap();
    let state = lm_train::checkpoint::read_state(&last).unwrap();
    assert!(state.skipped_steps >= 1, "{}", state.skipped_steps);
    let logged = MetricsLog::read(&tmp.path().join("skip/metrics.jsonl")).unwrap();
    let trained = logged.iter().filter(|r| r.val_loss.is_none()).count() as u64;
    assert!(
        trained + state.skipped_steps <= 12,
        "skipped steps are not logged as trained: {trained} logged, {} skipped",
        state.skipped_steps
    );
    // An update that overflows f32 (lr·g = ∞ for lr = 1e300) makes the weights infinite in a
    // step whose loss and gradient norm were still finite: the later steps are skipped, and
    // the checkpoint at the end is refused rather than written with NaN weights — the step-0
    // checkpoint stays the newest.
    cfg.optim.lr = 1e300;
    cfg.optim.min_lr = 1e300;
    let err = Trainer::new(cfg, &tmp.path().join("overflow"), Device::Cpu)
        .unwrap()
        .train()
        .unwrap_err();
    assert!(
        matches!(err, TrainError::NonFiniteWeights { step: 12, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("step-00000000"), "{err}");
    let kept = lm_train::checkpoint::list_checkpoints(&tmp.path().join("overflow")).unwrap();
    assert_eq!(kept.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0]);
}

#[test]
fn a_tokenizer_that_disagrees_with_the_config_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = small_corpus(tmp.path());
    let lines: Vec<&str> = lm_train::data::SHAKESPEARE[..40_000].lines().collect();
    let tok = lm_train::tokenizer::TextTokenizer::train(
        lm_train::tokenizer::TokenizerKind::Bpe,
        lm_train::config::Family::named("gpt").unwrap(),
        300,
        &lines,
    )
    .unwrap();
    let path = tmp.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    let mut cfg = shrink(
        TrainConfig::recipe("gpt-shakespeare-bpe").unwrap(),
        &corpus,
        2,
    );
    cfg.data.tokenizer_file = Some(path.display().to_string());
    cfg.data.vocab_size = Some(500);
    let e = Trainer::new(cfg.clone(), &tmp.path().join("run"), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("data.vocab_size")
            && e.contains("500")
            && e.contains(&tok.vocab_size().to_string()),
        "{e}"
    );
    cfg.data.vocab_size = None;
    assert!(Trainer::new(cfg, &tmp.path().join("run"), Device::Cpu).is_ok());
}

#[test]
fn each_family_fine_tunes_from_its_pretraining_checkpoint() {
    use lm_train::finetune::{finetune, FinetuneConfig, FINETUNE_RECIPES};
    let tmp = tempfile::tempdir().unwrap();
    let corpus = small_corpus(tmp.path());
    for (ft, pre) in [
        ("bert-finetune-pairs", "bert-mlm-nsp"),
        ("t5-table-to-text", "t5-span-corruption"),
        ("bart-table-to-text", "bart-denoising"),
        ("gpt-table-to-text", "gpt-shakespeare-bpe"),
    ] {
        assert!(FINETUNE_RECIPES.iter().any(|(n, _)| *n == ft));
        let pre_dir = tmp.path().join(pre);
        Trainer::new(
            shrink(TrainConfig::recipe(pre).unwrap(), &corpus, 4),
            &pre_dir,
            Device::Cpu,
        )
        .unwrap()
        .train()
        .unwrap();
        let mut cfg = FinetuneConfig::recipe(ft).unwrap();
        cfg.finetune.init = pre_dir.display().to_string();
        cfg.finetune.train_examples = 64;
        cfg.finetune.val_examples = 4;
        cfg.finetune.test_examples = 6;
        cfg.finetune.max_len = 24;
        cfg.finetune.max_target_len = 6;
        cfg.train.max_iters = 3;
        cfg.train.eval_interval = 3;
        cfg.train.batch_size = 4;
        cfg.optim.warmup_iters = 1;
        let out = tmp.path().join(ft);
        let r = finetune(&cfg, &out, &Device::Cpu, false).unwrap_or_else(|e| panic!("{ft}: {e}"));
        assert_eq!(r.steps, 3);
        // Evaluated before the first step (as pretraining is) and at the end.
        assert_eq!(r.curve.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 3]);
        let keys: Vec<&String> = r.test.keys().collect();
        assert_eq!(keys, r.baseline.keys().collect::<Vec<_>>());
        assert!(r.test.values().all(|v| (0.0..=1.0).contains(v)));
        if ft.starts_with("bert") {
            // A BERT pretraining checkpoint has no classifier: it is new, and named.
            assert_eq!(
                r.fresh_tensors,
                vec![
                    "classifier.bias".to_string(),
                    "classifier.weight".to_string()
                ]
            );
            assert!(
                (r.baseline["accuracy"] - 0.5).abs() < 1e-9,
                "balanced pairs: majority is 50%"
            );
        }
        for f in ["results.json", "metrics.jsonl", "data/train.jsonl"] {
            assert!(out.join(f).exists(), "{ft}: {f}");
        }
        // The test metrics come from the best checkpoint, a complete HuggingFace directory.
        let best = std::path::Path::new(&r.best_checkpoint);
        for f in ["model.safetensors", "tokenizer.json", "config.json"] {
            assert!(best.join(f).exists(), "{ft}: {}", best.join(f).display());
        }
        // Scratch: same architecture, random weights — every tensor is fresh.
        cfg.finetune.scratch = true;
        let r = finetune(
            &cfg,
            &tmp.path().join(format!("{ft}-scratch")),
            &Device::Cpu,
            false,
        )
        .unwrap();
        assert!(r.scratch);
    }
}

#[test]
fn fine_tuning_without_a_pretrained_checkpoint_says_what_to_run() {
    let mut cfg = lm_train::finetune::FinetuneConfig::recipe("bert-finetune-pairs").unwrap();
    cfg.finetune.init = "/nonexistent/run".into();
    let e = lm_train::finetune::finetune(
        &cfg,
        &tempfile::tempdir().unwrap().path().join("x"),
        &Device::Cpu,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("/nonexistent/run") && e.contains("recipe"),
        "{e}"
    );
}

#[test]
fn bf16_matmuls_train_like_f32_and_bad_precisions_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = small_corpus(tmp.path());
    let run = |precision: &str| {
        let mut cfg = shrink(
            TrainConfig::recipe("gpt-shakespeare-char").unwrap(),
            &corpus,
            30,
        );
        cfg.train.matmul_precision = precision.parse().unwrap();
        // Wide enough that the linear layers' products (1024 rows × 64 × 256) take the bf16
        // path; products under 2^20 multiply-adds stay in f32.
        cfg.model.n_embd = 64;
        cfg.model.block_size = 64;
        cfg.train.batch_size = 16;
        let mut t = Trainer::new(cfg, &tmp.path().join(precision), Device::Cpu).unwrap();
        let first = t.evaluate().unwrap().1;
        let summary = t.train().unwrap();
        (first, summary.last_eval.unwrap().1)
    };
    let (f32_start, f32_end) = run("highest");
    let (bf16_start, bf16_end) = run("bf16");
    // Same seed and batches: the runs differ only by bf16 rounding of the products' inputs
    // (relative error ≤ 2⁻⁸ per product), so the losses are close but not identical.
    assert!(
        bf16_end < bf16_start - 0.1,
        "bf16 run did not learn: {bf16_start} → {bf16_end}"
    );
    assert!(
        (bf16_end - f32_end).abs() < 0.02 * f32_end,
        "bf16 {bf16_end} vs f32 {f32_end}"
    );
    assert!(
        f32_start != bf16_start || f32_end != bf16_end,
        "bf16 precision had no effect"
    );

    let text = RECIPES[0]
        .1
        .replace("[train]", "[train]\nmatmul_precision = \"fp8\"");
    let err = TrainConfig::from_toml(&text, "fp8.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("train.matmul_precision"), "{err}");
}

#[test]
fn a_tokenizer_file_alone_sets_the_kind_and_a_wrong_declared_kind_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = small_corpus(tmp.path());
    let lines: Vec<&str> = lm_train::data::SHAKESPEARE[..40_000].lines().collect();
    let tok = lm_train::tokenizer::TextTokenizer::train(
        TokenizerKind::Wordpiece,
        lm_train::config::Family::named("bert").unwrap(),
        300,
        &lines,
    )
    .unwrap();
    let file = tmp.path().join("wp.json");
    tok.save(&file).unwrap();
    // BERT with only `tokenizer_file` (the kind left at its default): the file's kind is used and
    // recorded in the run's config.
    let mut cfg = shrink(TrainConfig::recipe("bert-mlm-nsp").unwrap(), &corpus, 2);
    cfg.data.tokenizer = TokenizerKind::Char;
    cfg.data.tokenizer_file = Some(file.display().to_string());
    cfg.data.vocab_size = None;
    let text = cfg.to_toml();
    let cfg = TrainConfig::from_toml(&text, "bert.toml").unwrap();
    let run = tmp.path().join("run");
    Trainer::new(cfg.clone(), &run, Device::Cpu)
        .unwrap()
        .train()
        .unwrap();
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("tokenizer = \"wordpiece\""), "{saved}");
    // A declared kind that the file contradicts is refused naming both.
    let mut wrong = cfg;
    wrong.data.tokenizer = TokenizerKind::Unigram;
    let e = Trainer::new(wrong, &tmp.path().join("wrong"), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("data.tokenizer") && e.contains("wordpiece"),
        "{e}"
    );
    // A path given as the kind gets a hint.
    let e = TrainConfig::from_toml(
        &text.replace("tokenizer = \"char\"", "tokenizer = \"tok/bpe.json\""),
        "x.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("data.tokenizer_file"), "{e}");
}

#[test]
fn task_files_take_numeric_labels_and_impossible_combinations_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let jsonl = d.join("t.jsonl");
    std::fs::write(
        &jsonl,
        "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": true}\n",
    )
    .unwrap();
    let ex = lm_train::tasks::read_jsonl(&jsonl).unwrap();
    assert_eq!(
        ex.iter().map(|e| e.gold()).collect::<Vec<_>>(),
        ["1", "true"]
    );
    // A BART checkpoint on a classification file: refused with the reason, before training.
    let corpus = small_corpus(d);
    let pre = d.join("bart");
    Trainer::new(
        shrink(TrainConfig::recipe("bart-denoising").unwrap(), &corpus, 1),
        &pre,
        Device::Cpu,
    )
    .unwrap()
    .train()
    .unwrap();
    let mut cfg = lm_train::config::FinetuneConfig::recipe("bart-table-to-text").unwrap();
    cfg.finetune.task = lm_train::config::TaskKind::Jsonl;
    cfg.finetune.init = pre.display().to_string();
    for f in [
        &mut cfg.finetune.train_file,
        &mut cfg.finetune.val_file,
        &mut cfg.finetune.test_file,
    ] {
        *f = Some(jsonl.display().to_string());
    }
    let e = Trainer::new(cfg, &d.join("ft"), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("fine-tunes on input/target pairs") && e.contains("labelled"),
        "{e}"
    );
}

#[test]
fn fine_tuning_keeps_generation_settings_and_refuses_a_foreign_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let corpus = small_corpus(d);
    let pre = d.join("bart");
    Trainer::new(
        shrink(TrainConfig::recipe("bart-denoising").unwrap(), &corpus, 1),
        &pre,
        Device::Cpu,
    )
    .unwrap()
    .train()
    .unwrap();
    let ckpt = lm_train::checkpoint::latest_checkpoint(&pre).unwrap();
    let settings = r#"{"forced_eos_token_id": 2, "num_beams": 4}"#;
    std::fs::write(ckpt.join("generation_config.json"), settings).unwrap();
    let mut cfg = lm_train::config::FinetuneConfig::recipe("bart-table-to-text").unwrap();
    cfg.finetune.init = ckpt.display().to_string();
    (cfg.finetune.train_examples, cfg.finetune.val_examples) = (16, 2);
    (cfg.finetune.test_examples, cfg.finetune.max_len) = (2, 24);
    cfg.finetune.max_target_len = 4;
    (
        cfg.train.max_iters,
        cfg.train.eval_interval,
        cfg.train.eval_iters,
    ) = (1, 1, 1);
    (cfg.train.batch_size, cfg.optim.warmup_iters) = (2, 0);
    let run = d.join("ft");
    Trainer::new(cfg.clone(), &run, Device::Cpu)
        .unwrap()
        .train()
        .unwrap();
    let saved = lm_train::checkpoint::latest_checkpoint(&run).unwrap();
    assert_eq!(
        std::fs::read_to_string(saved.join("generation_config.json")).unwrap(),
        settings
    );
    // A tokenizer with more tokens than the model's vocabulary is refused by name.
    let lines: Vec<&str> = lm_train::data::SHAKESPEARE[..40_000].lines().collect();
    let big = lm_train::tokenizer::TextTokenizer::train(
        TokenizerKind::Bpe,
        lm_train::config::Family::named("bart").unwrap(),
        900,
        &lines,
    )
    .unwrap();
    big.save(&ckpt.join("tokenizer.json")).unwrap();
    let e = Trainer::new(cfg, &d.join("ft2"), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not this model's tokenizer"), "{e}");
}

/// A tokenizer a run trains on its corpus is kept in the cache: a second run on the same corpus
/// reads it (WordPiece training is not deterministic, so before, the two runs differed from the
/// first token on) and so trains on the same prepared corpus, with the same losses.
#[test]
fn a_second_run_on_the_same_corpus_reuses_its_trained_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = small_corpus(tmp.path());
    let cfg = shrink(TrainConfig::recipe("bert-mlm-nsp").unwrap(), &corpus, 2);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for run in [&a, &b] {
        Trainer::new(cfg.clone(), run, Device::Cpu)
            .unwrap()
            .train()
            .unwrap();
    }
    let read = |d: &std::path::Path| std::fs::read(d.join("tokenizer.json")).unwrap();
    assert_eq!(read(&a), read(&b));
    let losses = |d: &std::path::Path| -> Vec<f32> {
        MetricsLog::read(&d.join("metrics.jsonl"))
            .unwrap()
            .into_iter()
            .map(|r| r.train_loss)
            .collect()
    };
    assert_eq!(losses(&a), losses(&b));
}

#[test]
fn the_memory_account_adds_up() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = small_corpus(tmp.path());
    let cfg = shrink(
        TrainConfig::recipe("gpt-shakespeare-char").unwrap(),
        &corpus,
        2,
    );
    let t = Trainer::new(cfg.clone(), &tmp.path().join("gpt"), Device::Cpu).unwrap();
    let a = t.memory_account().unwrap();
    // f32 weights, every one trained; AdamW keeps m and v of each.
    let p = t.params().num_params() as u64;
    assert_eq!(
        (a.parameters, a.gradients, a.optimizer_state),
        (4 * p, 4 * p, 8 * p)
    );
    let m = &cfg.model;
    let (rows, t_, d, h) = (
        cfg.train.batch_size as f64,
        m.block_size as f64,
        m.n_embd as f64,
        m.n_head as f64,
    );
    // Korthikanti's count in f32 (docs: `activation_bytes`): the probabilities are kept at
    // this length (t ≤ 4·head_dim), there is no dropout, and the head holds 3 values per token
    // and vocabulary entry.
    assert!(m.block_size <= 4 * m.n_embd / m.n_head && m.dropout == 0.0);
    let vocab = t.tokenizer().vocab_size() as f64;
    let want =
        rows * t_ * m.n_layer as f64 * (68.0 * d + 4.0 * h * t_) + 3.0 * rows * t_ * vocab * 4.0;
    assert_eq!(a.activations, Some(want));
    // AdaFactor without β1 keeps a row and a column per matrix: far less than Adam's 2 per
    // weight.
    let cfg = shrink(
        TrainConfig::recipe("t5-span-corruption").unwrap(),
        &corpus,
        2,
    );
    let t = Trainer::new(cfg, &tmp.path().join("t5"), Device::Cpu).unwrap();
    let a = t.memory_account().unwrap();
    assert!(
        a.optimizer_state * 4 < a.gradients,
        "{} vs {}",
        a.optimizer_state,
        a.gradients
    );
}

#[test]
fn activation_checkpointing_leaves_each_familys_losses_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = small_corpus(tmp.path());
    for recipe in [
        "gpt-shakespeare-char",
        "bert-mlm-nsp",
        "t5-span-corruption",
        "bart-denoising",
    ] {
        let mut cfg = shrink(TrainConfig::recipe(recipe).unwrap(), &corpus, 4);
        cfg.model.n_layer = 3;
        cfg.model.dropout = 0.1;
        cfg.train.sample_tokens = 0;
        let losses = |checkpointing, name: &str| {
            let mut cfg = cfg.clone();
            cfg.train.activation_checkpointing = checkpointing;
            let dir = tmp.path().join(format!("{recipe}-{name}"));
            Trainer::new(cfg, &dir, Device::Cpu)
                .unwrap()
                .train()
                .unwrap();
            MetricsLog::read(&dir.join("metrics.jsonl"))
                .unwrap()
                .iter()
                .map(|r| (r.step, r.train_loss, r.val_loss))
                .collect::<Vec<_>>()
        };
        let kept = losses(ActivationCheckpointing::None, "none");
        assert_eq!(kept.iter().filter(|r| r.2.is_none()).count(), 4, "{kept:?}");
        for (c, name) in [
            (ActivationCheckpointing::Blocks, "blocks"),
            (ActivationCheckpointing::EveryNth(2), "every-2"),
        ] {
            let got = losses(c, name);
            assert_eq!(got.len(), kept.len());
            for (g, k) in got.iter().zip(&kept) {
                let close = |a: f32, b: f32| (a - b).abs() <= 1e-6 * b.abs();
                assert!(
                    g.0 == k.0 && close(g.1, k.1) && g.2.zip(k.2).is_none_or(|(a, b)| close(a, b)),
                    "{recipe} {name}: {g:?} vs {k:?}"
                );
            }
        }
    }
}
