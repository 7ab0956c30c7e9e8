//! Setting a run up: its tokenizer and token cache, the pieces of a pretraining or fine-tuning
//! run, and the check that a checkpoint belongs to the run.

use super::*;

/// The run's tokenizer: `tokenizer_file` when given, else trained on the corpus (character-level
/// on all of it; the others on the training part only).
pub(super) fn pretraining_tokenizer(cfg: &TrainConfig, corpus: &str) -> Result<TextTokenizer> {
    let kind = cfg.data.tokenizer;
    if let Some(f) = &cfg.data.tokenizer_file {
        let t = TextTokenizer::load(Path::new(f))?;
        // The file says what it is; a kind declared besides it must agree ("char", the default,
        // counts as not declared).
        if kind != TokenizerKind::Char && kind != t.kind() {
            return Err(TrainError::Config {
                source_name: f.clone(),
                key: "data.tokenizer".into(),
                problem: format!(
                    "is {kind} but the file is a {} tokenizer; remove data.tokenizer (the file's kind is used) or fix it",
                    t.kind()
                ),
            });
        }
        if let Some(v) = cfg.data.vocab_size.filter(|&v| v != t.vocab_size()) {
            return Err(TrainError::Config {
                source_name: f.clone(),
                key: "data.vocab_size".into(),
                problem: format!("the tokenizer has {} tokens but the config asks for {v}; remove data.vocab_size or use a matching tokenizer", t.vocab_size()),
            });
        }
        return Ok(t);
    }
    if kind == TokenizerKind::Char {
        return TextTokenizer::train(kind, cfg.model.family, 0, &[corpus]);
    }
    let cut =
        corpus.floor_char_boundary((corpus.len() as f64 * (1.0 - cfg.data.val_fraction)) as usize);
    let lines: Vec<&str> = corpus[..cut].lines().collect();
    let vocab = cfg.data.vocab_size.unwrap_or(2000);
    TextTokenizer::train(kind, cfg.model.family, vocab, &lines)
}

/// Pretraining's pieces from a tokenizer and its token cache: the objective's batch source, the
/// model from random weights, and the decay / no-decay groups.
pub(super) fn pretraining_parts(
    cfg: &TrainConfig,
    tokenizer: TextTokenizer,
    tokens: TokenizedCorpus,
    device: &Device,
) -> Result<Parts> {
    let specials = Specials::of(cfg.model.family, &tokenizer, tokenizer.kind())?;
    let vocab = tokenizer.vocab_size();
    let source = BatchSource::new(cfg, Arc::new(tokens), specials.clone(), vocab)?;
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

/// The run's token cache: `tokens.bin` when present, else rebuilt from the corpus — into the run
/// directory when `writable`, else into a temporary file (a reader never writes to a run).
pub(super) fn open_token_cache(
    cfg: &TrainConfig,
    tokenizer: &TextTokenizer,
    run_dir: &Path,
    writable: bool,
) -> Result<TokenizedCorpus> {
    let cache = run_dir.join("tokens.bin");
    if let Ok(t) = TokenizedCorpus::open(&cache) {
        return Ok(t);
    }
    let corpus = load_corpus(&cfg.data.corpus)?;
    if writable {
        return TokenizedCorpus::build(&corpus, tokenizer, &cache);
    }
    let tmp = std::env::temp_dir().join(format!("lm-train-tokens-{}.bin", std::process::id()));
    let tokens = TokenizedCorpus::build(&corpus, tokenizer, &tmp);
    let _ = std::fs::remove_file(&tmp); // the mapping stays valid
    tokens
}
