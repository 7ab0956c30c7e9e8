//! Training from prepared datasets: every recipe (four families, their objectives) from a
//! dataset of mixed formats, imported nanoGPT token files, and the refusals of a dataset that
//! does not fit the run.

use candle_core::Device;
use lm_train::config::{TokenizerKind, TrainConfig, RECIPES};
use lm_train::tokenizer::TextTokenizer;
use lm_train::Trainer;

const TEXT: &str = lm_train::data::SHAKESPEARE;

/// A recipe shrunk to seconds (as tests/recipes.rs), reading `dataset`.
fn shrink(mut cfg: TrainConfig, dataset: &std::path::Path, steps: u64) -> TrainConfig {
    cfg.data.dataset = Some(dataset.display().to_string());
    cfg.data.vocab_size = None;
    cfg.data.tokenizer = TokenizerKind::Char; // not declared: the dataset's tokenizer counts
    lm_integration_tests::shrink_model(cfg, steps)
}

/// The first 40 kB of tinyshakespeare as three files: plain text, JSON Lines (one speech per
/// record) and Parquet.
fn mixed_corpus(dir: &std::path::Path) -> std::path::PathBuf {
    let root = dir.join("corpus");
    std::fs::create_dir_all(&root).unwrap();
    let docs: Vec<String> = lm_train::data::documents(&TEXT[..40_000])
        .into_iter()
        .map(|d| d.concat())
        .collect();
    let third = docs.len() / 3;
    std::fs::write(root.join("a.txt"), docs[..third].concat()).unwrap();
    let jsonl: String = docs[third..2 * third]
        .iter()
        .map(|d| format!("{}\n", serde_json::json!({ "text": d })))
        .collect();
    std::fs::write(root.join("b.jsonl"), jsonl).unwrap();
    lm_data::write_parquet_texts(&root.join("c.parquet"), "text", &docs[2 * third..], 64).unwrap();
    root
}

fn tokenizer_for(cfg: &TrainConfig) -> TextTokenizer {
    let lines: Vec<&str> = TEXT[..40_000].lines().collect();
    match cfg.data.tokenizer {
        TokenizerKind::Char => {
            TextTokenizer::train(TokenizerKind::Char, cfg.model.family, 0, &[TEXT])
        }
        kind => TextTokenizer::train(kind, cfg.model.family, 300, &lines),
    }
    .unwrap()
}

fn prepare(tok: &TextTokenizer, inputs: &std::path::Path, out: &std::path::Path) {
    let mut opts = lm_data::PrepareOptions::new(vec![inputs.display().to_string()]);
    opts.split = lm_data::ValSplit::Every(0.1);
    let json = tok.to_json().unwrap();
    lm_data::prepare(out, &opts, tok, json.as_bytes(), &mut |_| {}).unwrap();
}

#[test]
fn every_recipe_trains_from_a_prepared_dataset_of_mixed_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = mixed_corpus(tmp.path());
    for (name, _) in RECIPES {
        let recipe = TrainConfig::recipe(name).unwrap();
        let tok = tokenizer_for(&recipe);
        let data = tmp.path().join(format!("{name}-data"));
        prepare(&tok, &corpus, &data);
        let cfg = shrink(recipe, &data, 4);
        let run = tmp.path().join(name);
        let mut t = Trainer::new(cfg, &run, Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
        let summary = t.train().unwrap_or_else(|e| panic!("{name}: {e}"));
        let (_, val) = summary.last_eval.unwrap();
        let uniform = (tok.vocab_size() as f32).ln();
        assert!(
            val.is_finite() && val < uniform + 1.0,
            "{name}: val loss {val} (uniform {uniform})"
        );
        // Reopened for reading, the run finds its dataset and scores the same.
        let (_, again) = Trainer::open(&run, Device::Cpu)
            .unwrap()
            .evaluate()
            .unwrap();
        assert!((again - val).abs() < 1e-5, "{name}: {again} vs {val}");
    }
}

#[test]
fn a_dataset_that_does_not_fit_the_run_is_refused_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = mixed_corpus(tmp.path());
    let recipe = TrainConfig::recipe("gpt-shakespeare-bpe").unwrap();
    let tok = tokenizer_for(&recipe);
    let data = tmp.path().join("data");
    prepare(&tok, &corpus, &data);
    // A tokenizer file beside the dataset that is not the dataset's.
    let lines: Vec<&str> = TEXT[..20_000].lines().collect();
    let other = TextTokenizer::train(TokenizerKind::Bpe, recipe.model.family, 280, &lines).unwrap();
    let other_path = tmp.path().join("other.json");
    other.save(&other_path).unwrap();
    let mut cfg = shrink(recipe.clone(), &data, 2);
    cfg.data.tokenizer_file = Some(other_path.display().to_string());
    let e = Trainer::new(cfg, &tmp.path().join("r1"), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("other.json") && e.contains("data/tokenizer.json"),
        "{e}"
    );
    assert!(
        !tmp.path().join("r1").exists(),
        "a failed start leaves no run directory"
    );
    // val_fraction is the dataset's.
    let mut cfg = shrink(recipe.clone(), &data, 2);
    cfg.data.val_fraction = Some(0.2);
    let e = cfg.validate("cfg").unwrap_err().to_string();
    assert!(
        e.contains("data.val_fraction") && e.contains("--val-fraction"),
        "{e}"
    );
    // A kind declared beside it must be the dataset tokenizer's.
    let mut cfg = shrink(recipe.clone(), &data, 2);
    cfg.data.tokenizer = TokenizerKind::Wordpiece;
    let e = Trainer::new(cfg, &tmp.path().join("r2"), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("data.tokenizer") && e.contains("bpe"), "{e}");
    // The dataset replaced by one of another tokenizer under a run: its resume is refused.
    let cfg = shrink(recipe, &data, 2);
    Trainer::new(cfg, &tmp.path().join("r3"), Device::Cpu)
        .unwrap()
        .train()
        .unwrap();
    std::fs::remove_dir_all(&data).unwrap();
    prepare(&other, &corpus, &data);
    let e = Trainer::resume(&tmp.path().join("r3"), None, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("data/tokenizer.json") && e.contains("another tokenizer"),
        "{e}"
    );
}

#[test]
fn nanogpt_and_llmc_token_files_import_and_train() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = TrainConfig::recipe("gpt-shakespeare-char").unwrap();
    let tok = tokenizer_for(&recipe);
    // nanoGPT's shakespeare_char/prepare.py: the first 90% of the ids to train.bin, the rest to val.bin.
    let ids = tok.encode(&TEXT[..40_000]).unwrap();
    let cut = ids.len() * 9 / 10;
    let bin = |ids: &[u32]| {
        ids.iter()
            .flat_map(|&t| (t as u16).to_le_bytes())
            .collect::<Vec<u8>>()
    };
    std::fs::write(tmp.path().join("train.bin"), bin(&ids[..cut])).unwrap();
    std::fs::write(tmp.path().join("val.bin"), bin(&ids[cut..])).unwrap();
    let data = tmp.path().join("data");
    let json = tok.to_json().unwrap();
    let files = [tmp.path().join("train.bin"), tmp.path().join("val.bin")];
    lm_data::import(
        &data,
        lm_data::ImportFormat::NanoGpt,
        &files,
        json.as_bytes(),
        tok.vocab_size(),
        None,
    )
    .unwrap();
    let d = lm_data::Dataset::verify(&data).unwrap();
    assert_eq!(d.split(lm_data::Split::Val).tokens(0..5), ids[cut..cut + 5]);
    let run = tmp.path().join("run");
    let mut t = Trainer::new(shrink(recipe.clone(), &data, 4), &run, Device::Cpu).unwrap();
    let (_, val) = t.train().unwrap().last_eval.unwrap();
    assert!(
        val.is_finite() && val < (tok.vocab_size() as f32).ln() + 1.0,
        "{val}"
    );
    // llm.c's shards: a header of 256 int32 (magic, version 1, token count), then the ids.
    let llmc = |name: &str, ids: &[u32]| {
        let mut b: Vec<u8> = [20240520i32, 1, ids.len() as i32]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        b.resize(1024, 0);
        b.extend(bin(ids));
        let p = tmp.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    let files = [
        llmc("sc_train_000001.bin", &ids[..cut]),
        llmc("sc_val_000000.bin", &ids[cut..]),
    ];
    let data = tmp.path().join("llmc");
    lm_data::import(
        &data,
        lm_data::ImportFormat::LlmC,
        &files,
        json.as_bytes(),
        tok.vocab_size(),
        None,
    )
    .unwrap();
    let run = tmp.path().join("run-llmc");
    let mut t = Trainer::new(shrink(recipe, &data, 4), &run, Device::Cpu).unwrap();
    let (_, val) = t.train().unwrap().last_eval.unwrap();
    assert!(
        val.is_finite() && val < (tok.vocab_size() as f32).ln() + 1.0,
        "{val}"
    );
}

#[test]
fn a_mixture_keeps_each_source_within_one_example_of_its_weight_in_every_batch() {
    let tmp = tempfile::tempdir().unwrap();
    // Source A is letters, source B digits: a window tells which it came from.
    let text = |alphabet: &[u8], seed: u64| -> String {
        let mut x = seed;
        (0..20_000)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                match i % 40 {
                    39 => '\n',
                    _ if i % 400 == 399 => '\n',
                    _ => alphabet[(x >> 33) as usize % alphabet.len()] as char,
                }
            })
            .collect()
    };
    let (a, b) = (text(b"abcdefgh ", 1), text(b"0123456789 ", 2));
    let tok = TextTokenizer::train(
        TokenizerKind::Char,
        lm_train::config::Family::named("gpt").unwrap(),
        0,
        &[&format!("{a}{b}")],
    )
    .unwrap();
    for (name, body) in [("a", &a), ("b", &b)] {
        std::fs::write(tmp.path().join(format!("{name}.txt")), body).unwrap();
        prepare(
            &tok,
            &tmp.path().join(format!("{name}.txt")),
            &tmp.path().join(name),
        );
    }
    let mut cfg = shrink(
        TrainConfig::recipe("gpt-shakespeare-char").unwrap(),
        tmp.path(),
        4,
    );
    cfg.data.dataset = None;
    cfg.data.sources = ["a", "b"]
        .iter()
        .zip([2.0, 1.0])
        .map(|(n, weight)| lm_train::config::DataSource {
            path: tmp.path().join(n).display().to_string(),
            weight,
        })
        .collect();
    cfg.validate("mixture").unwrap();
    let datasets = ["a", "b"]
        .iter()
        .zip([2.0, 1.0])
        .map(|(n, w)| {
            (
                std::sync::Arc::new(lm_data::Dataset::open(&tmp.path().join(n)).unwrap()),
                w,
            )
        })
        .collect();
    let specials = lm_train::batches::Specials::of(cfg.model.family, &tok, tok.kind()).unwrap();
    let src = lm_train::batches::BatchSource::mixture(&cfg, datasets, specials, tok.vocab_size())
        .unwrap();
    // 10 rows at weights 2:1: quotas 6.67 and 3.33, so 7 and 3 in every batch, on any ranks.
    assert_eq!(src.source_counts(10), vec![7, 3]);
    let digit = |id: u32| tok.decode(&[id]).chars().all(|c| c.is_ascii_digit());
    for key in 0..200 {
        for ranks in [1, 3] {
            let from_b: usize = (0..ranks)
                .map(|r| {
                    let b = src
                        .batch(
                            lm_data::Split::Train,
                            key,
                            10,
                            lm_dist::share(10, ranks, r),
                            &Device::Cpu,
                        )
                        .unwrap();
                    let ids: Vec<Vec<u32>> = b.input_ids.to_vec2().unwrap();
                    ids.iter()
                        .filter(|row| row.iter().any(|&t| digit(t)))
                        .count()
                })
                .sum();
            assert_eq!(from_b, 3, "batch {key} on {ranks} ranks");
        }
    }
    // And a run trains on the mixture.
    let mut t = Trainer::new(cfg, &tmp.path().join("run"), Device::Cpu).unwrap();
    let (_, val) = t.train().unwrap().last_eval.unwrap();
    assert!(val.is_finite(), "{val}");
}

#[test]
fn ids_a_damaged_shard_gives_are_refused_naming_the_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = mixed_corpus(tmp.path());
    for recipe in ["gpt-shakespeare-char", "bert-mlm-nsp"] {
        let recipe = TrainConfig::recipe(recipe).unwrap();
        let tok = tokenizer_for(&recipe);
        let data = tmp.path().join(format!("{}-data", recipe.model.family));
        prepare(&tok, &corpus, &data);
        // Every id of the training shard out of the vocabulary; same length, same boundaries.
        let shard = data.join("train-00000.bin");
        let mut bytes = std::fs::read(&shard).unwrap();
        let h = lm_data::ShardHeader::parse(&bytes, &shard).unwrap();
        let ids = lm_data::HEADER..lm_data::HEADER + (h.tokens * h.token_bytes as u64) as usize;
        bytes[ids].fill(0xff);
        std::fs::write(&shard, bytes).unwrap();
        let run = tmp.path().join(format!("{}-run", recipe.model.family));
        let e = match Trainer::new(shrink(recipe, &data, 2), &run, Device::Cpu) {
            Ok(mut t) => t.train().unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("not below the vocabulary size")
                && e.contains("data verify")
                && e.contains(&data.display().to_string()),
            "{e}"
        );
    }
}
