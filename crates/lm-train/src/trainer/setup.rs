//! Setting a run up: its tokenizer and token cache, the pieces of a pretraining or fine-tuning
//! run, and the check that a checkpoint belongs to the run.

use super::*;

/// Bytes of text a tokenizer is trained on, at most (the first of the training part).
pub const TOKENIZER_SAMPLE_BYTES: usize = 256 << 20;

/// A new run's tokenizer and datasets: the dataset's own (`data.dataset`, or the first of a
/// mixture's `data.sources`), or `tokenizer_file`, or one trained on the corpus (a character
/// alphabet from all of it; the others on a sample of its training part), with the corpus
/// prepared into the cache.
pub(super) fn new_run_data(cfg: &TrainConfig, run_dir: &Path) -> Result<(TextTokenizer, Datasets)> {
    if let Some(dir) = &cfg.data.dataset {
        let dataset = Dataset::open(Path::new(dir))?;
        let tokenizer = TextTokenizer::load(&dataset.tokenizer_path())?;
        check_tokenizer_fits(
            cfg,
            &tokenizer,
            &dataset.tokenizer_path().display().to_string(),
        )?;
        return Ok((tokenizer, vec![(Arc::new(dataset), 1.0)]));
    }
    if !cfg.data.sources.is_empty() {
        let datasets = mixture(cfg)?;
        let path = datasets[0].0.tokenizer_path();
        let tokenizer = TextTokenizer::load(&path)?;
        check_tokenizer_fits(cfg, &tokenizer, &path.display().to_string())?;
        return Ok((tokenizer, datasets));
    }
    let cache = crate::data::cache_dir(run_dir);
    let corpus = crate::data::Corpus::open(&cfg.data.corpus, &cache)?;
    let tokenizer = if let Some(f) = &cfg.data.tokenizer_file {
        let t = TextTokenizer::load(&crate::model_ref::tokenizer_path(f)?)?;
        check_tokenizer_fits(cfg, &t, f)?;
        t
    } else {
        trained_tokenizer(cfg, &corpus, &cache)?
    };
    let dataset = corpus.prepared(&tokenizer, cfg.data.val_fraction(), &cache)?;
    Ok((tokenizer, vec![(Arc::new(dataset), 1.0)]))
}

/// A run's datasets and their weights in its mixture.
pub(super) type Datasets = Vec<(Arc<Dataset>, f64)>;

/// The datasets of `[[data.sources]]`, refused unless all were prepared with one tokenizer.
fn mixture(cfg: &TrainConfig) -> Result<Datasets> {
    let mut out: Datasets = vec![];
    for s in &cfg.data.sources {
        let d = Dataset::open(Path::new(&s.path))?;
        if let Some((first, _)) = out.first() {
            let (a, b) = (
                &first.manifest().params.tokenizer,
                &d.manifest().params.tokenizer,
            );
            if a.sha256 != b.sha256 {
                return Err(TrainError::Config {
                    source_name: s.path.clone(),
                    key: "data.sources".into(),
                    problem: format!(
                        "{} was prepared with another tokenizer than {} (sha256 {} vs {}); a mixture's datasets share one",
                        s.path,
                        first.dir().display(),
                        &b.sha256[..12],
                        &a.sha256[..12]
                    ),
                });
            }
        }
        out.push((Arc::new(d), s.weight));
    }
    Ok(out)
}

/// The tokenizer a run trains on its corpus (a character alphabet from all of it; the others on
/// a sample of its training part), kept in the cache under the corpus's content and the
/// settings that shape it: a second run on the same corpus reads it instead of training again
/// (WordPiece and Unigram training is not deterministic, so it would also differ, and with it
/// the prepared corpus).
fn trained_tokenizer(
    cfg: &TrainConfig,
    corpus: &crate::data::Corpus,
    cache: &Path,
) -> Result<TextTokenizer> {
    let inputs = &corpus.inputs;
    let (kind, vocab) = (cfg.data.tokenizer, cfg.data.vocab_size.unwrap_or(2000));
    // Where the training pipeline changed after caches were written: Unigram tokenizers gained
    // T5's whitespace normalizer (2026-12-07), so those cached before are not reused.
    let pipeline = match kind {
        TokenizerKind::Unigram => "\nnormalizer: t5 whitespace",
        _ => "",
    };
    let key = lm_data::sha256_hex(
        format!(
            "{}\n{}\n{kind}\n{vocab}\n{}\n{TOKENIZER_SAMPLE_BYTES}{pipeline}",
            corpus.hash,
            cfg.model.family,
            cfg.data.val_fraction()
        )
        .as_bytes(),
    );
    let path = cache
        .join("tokenizers")
        .join(format!("{}.json", &key[..24]));
    if let Ok(t) = TextTokenizer::load(&path) {
        return Ok(t);
    }
    let t = if kind == TokenizerKind::Char {
        let alphabet = crate::data::corpus_alphabet(inputs)?;
        TextTokenizer::train(kind, cfg.model.family, 0, &[&alphabet])?
    } else {
        let sample =
            crate::data::training_sample(inputs, cfg.data.val_fraction(), TOKENIZER_SAMPLE_BYTES)?;
        let lines: Vec<&str> = sample.lines().collect();
        TextTokenizer::train(kind, cfg.model.family, vocab, &lines)?
    };
    std::fs::create_dir_all(cache.join("tokenizers")).map_err(io_err(cache))?;
    lm_data::write_atomic(&path, t.to_json()?.as_bytes())?;
    // As read back, so that this run and the next (and a resume, which reads the run's copy)
    // hold the same tokenizer, down to its JSON: the prepared corpus is keyed by it.
    TextTokenizer::load(&path)
}

/// A tokenizer read from `source` (a `tokenizer_file`, a dataset's) against what the config
/// declares beside it: its kind ("char", the default, counts as not declared), its vocabulary
/// size, and — beside a dataset — a `tokenizer_file` with the same bytes.
fn check_tokenizer_fits(cfg: &TrainConfig, t: &TextTokenizer, source: &str) -> Result<()> {
    let kind = cfg.data.tokenizer;
    let refuse = |key: &str, problem: String| TrainError::Config {
        source_name: source.to_string(),
        key: key.into(),
        problem,
    };
    if kind != TokenizerKind::Char && kind != t.kind() {
        return Err(refuse("data.tokenizer", format!(
            "is {kind} but {source} is a {} tokenizer; remove data.tokenizer (the file's kind is used) or fix it",
            t.kind()
        )));
    }
    if let Some(v) = cfg.data.vocab_size.filter(|&v| v != t.vocab_size()) {
        return Err(refuse("data.vocab_size", format!(
            "{source} has {} tokens but the config asks for {v}; remove data.vocab_size or use a matching tokenizer",
            t.vocab_size()
        )));
    }
    let prepared = cfg.data.dataset.is_some() || !cfg.data.sources.is_empty();
    if let Some(file) = cfg.data.tokenizer_file.as_ref().filter(|_| prepared) {
        if TextTokenizer::load(&crate::model_ref::tokenizer_path(file)?)?.to_json()?
            != t.to_json()?
        {
            return Err(refuse("data.tokenizer_file", format!(
                "{file} is not the tokenizer the dataset was prepared with ({source}); remove tokenizer_file (the dataset's is used) or prepare the data with {file}"
            )));
        }
    }
    Ok(())
}

/// The dataset of a run being reopened: `data.dataset` (refused when prepared with another
/// tokenizer than the run's), or the corpus from the cache — prepared again when missing, into
/// the cache or, when it is not writable, into the run directory (`writable`) or a temporary
/// directory removed once mapped.
pub(super) fn reopened_run_data(
    cfg: &TrainConfig,
    tokenizer: &TextTokenizer,
    run_dir: &Path,
    writable: bool,
) -> Result<Datasets> {
    let given = match (&cfg.data.dataset, cfg.data.sources.is_empty()) {
        (Some(dir), _) => Some(vec![(Arc::new(Dataset::open(Path::new(dir))?), 1.0)]),
        (None, false) => Some(mixture(cfg)?),
        (None, true) => None,
    };
    if let Some(datasets) = given {
        let run_json = tokenizer.to_json()?;
        for (dataset, _) in &datasets {
            let (run_tok, ds_tok) = (run_dir.join("tokenizer.json"), dataset.tokenizer_path());
            if TextTokenizer::load(&ds_tok)?.to_json()? != run_json {
                return Err(TrainError::Checkpoint {
                    path: ds_tok,
                    problem: format!(
                        "the dataset was prepared with another tokenizer than the run's ({}); train on the dataset the run began with",
                        run_tok.display()
                    ),
                });
            }
        }
        return Ok(datasets);
    }
    let tmp;
    let fallback = if writable {
        run_dir.to_path_buf()
    } else {
        tmp = std::env::temp_dir().join(format!("lm-train-data-{}", std::process::id()));
        tmp.clone()
    };
    let cache = crate::data::cache_dir(&fallback);
    let d =
        crate::data::prepared_corpus(&cfg.data.corpus, tokenizer, cfg.data.val_fraction(), &cache);
    if !writable && cache.starts_with(&fallback) {
        let _ = std::fs::remove_dir_all(&fallback); // the mappings stay valid
    }
    Ok(vec![(Arc::new(d?), 1.0)])
}

/// Pretraining's pieces from a tokenizer and its token cache: the objective's batch source, the
/// model from random weights, and the decay / no-decay groups.
pub(super) fn pretraining_parts(
    cfg: &TrainConfig,
    tokenizer: TextTokenizer,
    datasets: Datasets,
    device: &Device,
) -> Result<Parts> {
    let specials = Specials::of(cfg.model.family, &tokenizer, tokenizer.kind())?;
    let vocab = tokenizer.vocab_size();
    let source = BatchSource::mixture(cfg, datasets, specials.clone(), vocab)?;
    let (model, store) = (cfg.model.family.build)(&cfg.model_shape(vocab), &specials, device)?;
    let (decay, no_decay) = param_groups(model.as_ref(), &store);
    Ok(Parts {
        tokenizer,
        work: Work::Pretrain(Arc::new(source)),
        model,
        store,
        groups: vec![
            ParamGroup::new("decay", decay, cfg.optim.weight_decay),
            ParamGroup::new("no_decay", no_decay, 0.0),
        ],
        eos: specials.eos,
    })
}

pub(super) fn finetuning_parts(p: crate::finetune::Prepared) -> Parts {
    let eos = ["<|endoftext|>", "</s>", "[SEP]"]
        .iter()
        .find_map(|n| p.tokenizer.token_id(n))
        .unwrap_or(0);
    Parts {
        tokenizer: p.tokenizer,
        work: Work::Finetune(Arc::new(p.task)),
        model: p.model,
        store: p.store,
        groups: p.groups,
        eos,
    }
}

/// Checks that checkpoint `ckpt` belongs to the run as `run_dir` describes it now: the same
/// tokenizer file, and the same model, data and objective sections (or fine-tuning task) as the
/// configuration saved with the checkpoint. A difference is refused naming the key.
pub(super) fn check_same_run(run_dir: &Path, ckpt: &Path, cfg: &RunConfig) -> Result<()> {
    let (run_tok, ckpt_tok) = (run_dir.join("tokenizer.json"), ckpt.join("tokenizer.json"));
    if let (Ok(a), Ok(b)) = (std::fs::read(&run_tok), std::fs::read(&ckpt_tok)) {
        if a != b {
            return Err(TrainError::Checkpoint {
                path: run_tok,
                problem: format!(
                    "differs from the tokenizer the checkpoint was trained with ({}); restore the run's own tokenizer.json",
                    ckpt_tok.display()
                ),
            });
        }
    }
    let saved_path = ckpt.join("run_config.toml");
    let Ok(saved_text) = std::fs::read_to_string(&saved_path) else {
        return Ok(()); // a checkpoint from before run_config.toml was kept
    };
    let saved: toml::Table =
        crate::config::parse_toml(&saved_text, &saved_path.display().to_string())?;
    let now: toml::Table = toml::from_str(&cfg.to_toml()).map_err(|e| TrainError::Config {
        source_name: run_dir.join("config.toml").display().to_string(),
        key: "(document)".into(),
        problem: e.to_string(),
    })?;
    for section in ["model", "data", "objective", "finetune"] {
        let empty = toml::Table::new();
        let table = |t: &toml::Table| {
            t.get(section)
                .and_then(|v| v.as_table())
                .cloned()
                .unwrap_or_else(|| empty.clone())
        };
        let (was, is) = (table(&saved), table(&now));
        let keys: std::collections::BTreeSet<&String> = was.keys().chain(is.keys()).collect();
        for key in keys {
            if was.get(key) != is.get(key) {
                let show = |v: Option<&toml::Value>| v.map_or("(unset)".into(), |v| v.to_string());
                return Err(TrainError::Config {
                    source_name: run_dir.join("config.toml").display().to_string(),
                    key: format!("{section}.{key}"),
                    problem: format!(
                        "is {} but the checkpoint {} was trained with {}; a run's model, data and objective cannot change on resume (start a new run)",
                        show(is.get(key)),
                        ckpt.display(),
                        show(was.get(key))
                    ),
                });
            }
        }
    }
    Ok(())
}
