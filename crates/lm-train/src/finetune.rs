//! Pre-train, then fine-tune: a pretrained checkpoint (a run of this project or a local
//! HuggingFace directory) adapted to a labelled task.
//!
//! - BERT classifies from the pooled `[CLS]` with a new `classifier` head (single texts or pairs
//!   with segment ids); metrics accuracy and macro-F1.
//! - T5 and BART learn text-to-text by teacher forcing and are evaluated by greedy generation;
//!   metrics exact match and token F1.
//! - GPT learns `p(target | prompt)` with the loss on the target only (prompt positions get the
//!   ignore index), and classifies by generating the label word.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use lm_models::bart::Bart;
use lm_models::bert::BertForSequenceClassification;
use lm_models::gpt::Gpt;
use lm_models::t5::T5;
use lm_models::Sampling;
use lm_objectives::collate::{pad_batch, pad_labels, shift_right};
use lm_objectives::loss::{cross_entropy, CrossEntropy};
use lm_objectives::{Rng, IGNORE_INDEX};
use lm_optim::{
    clip::clip_grad_norm, AdaFactor, AdaFactorConfig, AdaFactorLr, Adam, AdamConfig, Optimizer,
    ParamGroup, Sgd, SgdConfig,
};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, write_atomic};
use crate::config::OptimSection;
use crate::error::{io_err, Result, TrainError};
use crate::tasks::{self, Example, TaskData};
use crate::tokenizer::TextTokenizer;

/// A fine-tuning run's configuration (TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Task, starting point and options.
    pub finetune: FinetuneSection,
    /// Optimizer and schedule (AdamW with warmup and linear decay is the usual choice).
    pub optim: OptimSection,
    /// Loop.
    pub train: FinetuneTrainSection,
}

/// `[finetune]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneSection {
    /// `"pairs"`, `"table-to-text"` (both generated) or `"jsonl"` (the files below).
    pub task: String,
    /// The pretrained model: a run directory (its newest checkpoint), a checkpoint directory, or a
    /// HuggingFace directory with `tokenizer.json`.
    pub init: String,
    /// Keep the architecture and tokenizer of `init` but start from random weights (the baseline).
    #[serde(default)]
    pub scratch: bool,
    /// JSONL files for task = "jsonl".
    #[serde(default)]
    pub train_file: Option<String>,
    /// Validation JSONL.
    #[serde(default)]
    pub val_file: Option<String>,
    /// Test JSONL.
    #[serde(default)]
    pub test_file: Option<String>,
    /// Generated training examples.
    #[serde(default = "d_train")]
    pub train_examples: usize,
    /// Generated validation examples.
    #[serde(default = "d_val")]
    pub val_examples: usize,
    /// Generated test examples.
    #[serde(default = "d_test")]
    pub test_examples: usize,
    /// `"none"`, `"embeddings"` or `"encoder"` (all but the head / decoder).
    #[serde(default = "d_freeze")]
    pub freeze: String,
    /// Learning-rate multiplier of the new head relative to the body.
    #[serde(default = "d_one")]
    pub head_lr_scale: f64,
    /// Longest input in tokens.
    #[serde(default = "d_len")]
    pub max_len: usize,
    /// Longest target in tokens.
    #[serde(default = "d_tlen")]
    pub max_target_len: usize,
}

/// `[train]` of a fine-tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneTrainSection {
    /// Examples per step.
    pub batch_size: usize,
    /// Optimizer steps.
    pub max_iters: u64,
    /// Evaluate on the validation set every this many steps.
    pub eval_interval: u64,
    /// Seed of head initialization and batch order.
    #[serde(default)]
    pub seed: u64,
    /// Stop when the validation metric has not improved for this many evaluations (0: never).
    #[serde(default)]
    pub early_stopping_patience: usize,
}

fn d_train() -> usize {
    2000
}
fn d_val() -> usize {
    100
}
fn d_test() -> usize {
    200
}
fn d_freeze() -> String {
    "none".into()
}
fn d_one() -> f64 {
    1.0
}
fn d_len() -> usize {
    64
}
fn d_tlen() -> usize {
    40
}

/// The fine-tuning recipes shipped with the project.
pub const FINETUNE_RECIPES: &[(&str, &str)] = &[
    (
        "bert-finetune-pairs",
        include_str!("../../../recipes/bert-finetune-pairs.toml"),
    ),
    (
        "t5-table-to-text",
        include_str!("../../../recipes/t5-table-to-text.toml"),
    ),
    (
        "bart-table-to-text",
        include_str!("../../../recipes/bart-table-to-text.toml"),
    ),
    (
        "gpt-table-to-text",
        include_str!("../../../recipes/gpt-table-to-text.toml"),
    ),
];

impl FinetuneConfig {
    /// Parses a TOML config; `source` names it in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Self> {
        let cfg: Self = crate::config::parse_toml(text, source)?;
        let err = |key: &str, problem: String| {
            Err(TrainError::Config {
                source_name: source.into(),
                key: key.into(),
                problem,
            })
        };
        if !matches!(
            cfg.finetune.task.as_str(),
            "pairs" | "table-to-text" | "jsonl"
        ) {
            return err(
                "finetune.task",
                format!(
                    "{:?} is not \"pairs\", \"table-to-text\" or \"jsonl\"",
                    cfg.finetune.task
                ),
            );
        }
        if cfg.finetune.task == "jsonl"
            && (cfg.finetune.train_file.is_none()
                || cfg.finetune.val_file.is_none()
                || cfg.finetune.test_file.is_none())
        {
            return err(
                "finetune.train_file",
                "task \"jsonl\" needs train_file, val_file and test_file".into(),
            );
        }
        if !matches!(
            cfg.finetune.freeze.as_str(),
            "none" | "embeddings" | "encoder"
        ) {
            return err(
                "finetune.freeze",
                format!(
                    "{:?} is not \"none\", \"embeddings\" or \"encoder\"",
                    cfg.finetune.freeze
                ),
            );
        }
        if cfg.train.batch_size == 0 || cfg.train.eval_interval == 0 {
            return err(
                "train",
                "batch_size and eval_interval must be positive".into(),
            );
        }
        Ok(cfg)
    }

    /// A bundled fine-tuning recipe.
    pub fn recipe(name: &str) -> Result<Self> {
        Self::from_toml(
            crate::config::recipe_text(FINETUNE_RECIPES, name)?,
            &format!("recipe {name}"),
        )
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_toml(
            &std::fs::read_to_string(path).map_err(io_err(path))?,
            &path.display().to_string(),
        )
    }
}

/// The model being fine-tuned.
enum FtModel {
    Bert(BertForSequenceClassification),
    Gpt(Gpt),
    Bart(Bart),
    T5(T5),
}

/// One encoded example.
struct Encoded {
    input: Vec<u32>,
    segments: Vec<u32>,
    /// Class index (classification) or target ids (generation).
    label: usize,
    target: Vec<u32>,
}

/// Outcome of a fine-tuning run (`results.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneResults {
    /// Task name.
    pub task: String,
    /// The starting checkpoint.
    pub init: String,
    /// Whether the weights started random.
    pub scratch: bool,
    /// Steps trained.
    pub steps: u64,
    /// The metric used for model selection.
    pub metric: String,
    /// Best validation value of it.
    pub best_val: f64,
    /// Test metrics of the best model.
    pub test: std::collections::BTreeMap<String, f64>,
    /// The same metrics for the trivial baseline (majority class, or copying the input).
    pub baseline: std::collections::BTreeMap<String, f64>,
    /// Names of tensors that were freshly initialized.
    pub fresh_tensors: Vec<String>,
    /// (step, validation metric) after each evaluation.
    pub curve: Vec<(u64, f64)>,
}

fn resolve_init(init: &Path) -> Result<PathBuf> {
    if init.join("model.safetensors").exists() {
        return Ok(init.to_path_buf());
    }
    checkpoint::latest_checkpoint(init).map_err(|_| TrainError::Checkpoint {
        path: init.to_path_buf(),
        problem: "no pretrained checkpoint here; run its pretraining recipe first (e.g. `cargo xtask recipe bert-mlm-nsp`) or point finetune.init at a checkpoint".into(),
    })
}

fn is_frozen(name: &str, freeze: &str) -> bool {
    match freeze {
        "embeddings" => {
            name.contains("embeddings")
                || name.contains(".wte.")
                || name.contains(".wpe.")
                || name.contains("shared")
                || name.contains("embed_positions")
        }
        // The whole body below the task's output: BERT's encoder, T5's and BART's encoder with
        // the shared embedding. (GPT has no encoder: nothing extra is frozen.)
        "encoder" => {
            name.starts_with("bert.")
                || name.starts_with("encoder.")
                || name.starts_with("model.encoder.")
                || is_frozen(name, "embeddings")
        }
        _ => false,
    }
}

/// Runs a fine-tuning configuration into `out`; returns the results (also in `out/results.json`).
pub fn finetune(
    cfg: &FinetuneConfig,
    out: &Path,
    device: &Device,
    verbose: bool,
) -> Result<FinetuneResults> {
    let f = &cfg.finetune;
    let ckpt = resolve_init(Path::new(&f.init))?;
    let tok_path = [
        ckpt.join("tokenizer.json"),
        Path::new(&f.init).join("tokenizer.json"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .ok_or_else(|| TrainError::Checkpoint {
        path: ckpt.clone(),
        problem: "no tokenizer.json next to the model".into(),
    })?;
    let tok = TextTokenizer::load(&tok_path)?;
    let model_type = lm_models::hf::model_type(&ckpt)?;
    std::fs::create_dir_all(out.join("data")).map_err(io_err(out))?;

    // Data: generated or read, and kept in the run directory as JSONL.
    let data = match f.task.as_str() {
        "pairs" => tasks::next_line_pairs(
            crate::data::SHAKESPEARE,
            cfg.train.seed,
            f.train_examples,
            f.val_examples,
            f.test_examples,
        )?,
        "table-to-text" => tasks::table_to_text(
            cfg.train.seed,
            f.train_examples,
            f.val_examples,
            f.test_examples,
        ),
        _ => TaskData {
            train: tasks::read_jsonl(Path::new(f.train_file.as_deref().unwrap_or_default()))?,
            val: tasks::read_jsonl(Path::new(f.val_file.as_deref().unwrap_or_default()))?,
            test: tasks::read_jsonl(Path::new(f.test_file.as_deref().unwrap_or_default()))?,
        },
    };
    for (name, ex) in [
        ("train", &data.train),
        ("val", &data.val),
        ("test", &data.test),
    ] {
        tasks::write_jsonl(&out.join("data").join(format!("{name}.jsonl")), ex)?;
    }
    let classification = data
        .train
        .iter()
        .all(|e| !matches!(e, Example::TextToText { .. }));
    let mut labels: Vec<String> = data
        .train
        .iter()
        .filter_map(|e| match e {
            Example::Pair { label, .. } | Example::Single { label, .. } => Some(label.clone()),
            _ => None,
        })
        .collect();
    labels.sort();
    labels.dedup();

    // Model.
    let seed = cfg.train.seed;
    let (model, store, fresh) = match model_type.as_str() {
        "bert" => {
            if !classification {
                return Err(TrainError::Config { source_name: f.init.clone(), key: "finetune.task".into(), problem: "a BERT checkpoint fine-tunes on classification tasks (pairs or labelled JSONL)".into() });
            }
            let (m, s, fresh) = if f.scratch {
                let c: lm_models::bert::BertConfig = lm_models::hf::read_config(&ckpt, &["bert"])?;
                let (m, s) = BertForSequenceClassification::init(&c, labels.len(), seed, device)?;
                let names = s.vars().into_iter().map(|(n, _)| n).collect();
                (m, s, names)
            } else {
                BertForSequenceClassification::from_hf_dir(&ckpt, labels.len(), seed, device)?
            };
            (FtModel::Bert(m), s, fresh)
        }
        "gpt2" => {
            let (m, s) = if f.scratch {
                Gpt::init(&lm_models::hf::read_config(&ckpt, &["gpt2"])?, seed, device)?
            } else {
                Gpt::from_hf_dir(&ckpt, device)?
            };
            (FtModel::Gpt(m), s, vec![])
        }
        "bart" => {
            let (m, s) = if f.scratch {
                Bart::init(&lm_models::hf::read_config(&ckpt, &["bart"])?, seed, device)?
            } else {
                Bart::from_hf_dir(&ckpt, device)?
            };
            (FtModel::Bart(m), s, vec![])
        }
        "t5" => {
            let (m, s) = if f.scratch {
                T5::init(&lm_models::hf::read_config(&ckpt, &["t5"])?, seed, device)?
            } else {
                T5::from_hf_dir(&ckpt, device)?
            };
            (FtModel::T5(m), s, vec![])
        }
        other => {
            return Err(TrainError::Checkpoint {
                path: ckpt.clone(),
                problem: format!("cannot fine-tune model_type {other:?}"),
            })
        }
    };
    if verbose && !fresh.is_empty() && !f.scratch {
        println!("freshly initialized: {}", fresh.join(", "));
    }

    // Special ids.
    let id = |names: &[&str]| names.iter().find_map(|n| tok.token_id(n));
    let (cls, sep) = (
        id(&["[CLS]", "<s>"]).unwrap_or(0),
        id(&["[SEP]", "</s>"]).unwrap_or(0),
    );
    let eos = id(&["</s>", "<|endoftext|>", "[SEP]"]).unwrap_or(0);
    let pad = id(&["<pad>", "[PAD]", "<|endoftext|>"]).unwrap_or(0);
    let gpt_ctx = if let FtModel::Gpt(m) = &model {
        m.config().n_positions
    } else {
        usize::MAX
    };
    let max_len = f.max_len.min(gpt_ctx);

    let encode = |e: &Example| -> Result<Encoded> {
        Ok(match e {
            Example::Pair {
                text_a,
                text_b,
                label,
            } => {
                let (mut a, mut b) = (tok.encode(text_a)?, tok.encode(text_b)?);
                if let FtModel::Gpt(_) = model {
                    let mut input = tok.encode(&format!("{text_a} | {text_b} ?"))?;
                    input.truncate(max_len.saturating_sub(3));
                    return Ok(Encoded {
                        input,
                        segments: vec![],
                        label: labels.iter().position(|l| l == label).unwrap_or(0),
                        target: [tok.encode(&format!(" {label}"))?, vec![eos]].concat(),
                    });
                }
                while a.len() + b.len() + 3 > max_len {
                    if a.len() > b.len() {
                        a.pop();
                    } else {
                        b.pop();
                    }
                }
                let input: Vec<u32> =
                    [vec![cls], a.clone(), vec![sep], b.clone(), vec![sep]].concat();
                let segments = [vec![0u32; a.len() + 2], vec![1u32; b.len() + 1]].concat();
                Encoded {
                    input,
                    segments,
                    label: labels.iter().position(|l| l == label).unwrap_or(0),
                    target: vec![],
                }
            }
            Example::Single { text, label } => {
                let mut a = tok.encode(text)?;
                a.truncate(max_len - 2);
                let input: Vec<u32> = [vec![cls], a.clone(), vec![sep]].concat();
                Encoded {
                    segments: vec![0; input.len()],
                    input,
                    label: labels.iter().position(|l| l == label).unwrap_or(0),
                    target: vec![],
                }
            }
            Example::TextToText { input, target } => {
                let mut x = tok.encode(&if matches!(model, FtModel::Gpt(_)) {
                    format!("{input} =")
                } else {
                    input.clone()
                })?;
                let mut y = tok.encode(&if matches!(model, FtModel::Gpt(_)) {
                    format!(" {target}")
                } else {
                    target.clone()
                })?;
                y.truncate(f.max_target_len - 1);
                y.push(eos);
                if let FtModel::Gpt(_) = model {
                    // Prompt and target share the context; keep the end of the prompt.
                    let room = max_len.saturating_sub(y.len()).max(1);
                    if x.len() > room {
                        x.drain(..x.len() - room);
                    }
                } else {
                    x.truncate(max_len - 1);
                    x.push(eos);
                }
                Encoded {
                    input: x,
                    segments: vec![],
                    label: 0,
                    target: y,
                }
            }
        })
    };
    let train: Vec<Encoded> = data.train.iter().map(encode).collect::<Result<_>>()?;
    let val: Vec<Encoded> = data.val.iter().map(encode).collect::<Result<_>>()?;
    let test: Vec<Encoded> = data.test.iter().map(encode).collect::<Result<_>>()?;

    // Optimizer: head and body groups, frozen tensors left out.
    let is_head = |n: &str| n.starts_with("classifier.");
    let mut head: Vec<(String, Var)> = vec![];
    let mut decay: Vec<(String, Var)> = vec![];
    let mut no_decay: Vec<(String, Var)> = vec![];
    for (n, v) in store.vars() {
        if is_frozen(&n, &f.freeze) || Bart::is_buffer(&n) {
            continue;
        }
        if is_head(&n) {
            head.push((n, v));
        } else if v.rank() >= 2 {
            decay.push((n, v));
        } else {
            no_decay.push((n, v));
        }
    }
    let vars: Vec<Var> = head
        .iter()
        .chain(&decay)
        .chain(&no_decay)
        .map(|(_, v)| v.clone())
        .collect();
    let o = &cfg.optim;
    let mut head_group = ParamGroup::new("head", head, 0.0);
    head_group.lr_scale = f.head_lr_scale;
    let groups = vec![
        ParamGroup::new("decay", decay, o.weight_decay),
        ParamGroup::new("no_decay", no_decay, 0.0),
        head_group,
    ];
    let mut opt: Box<dyn Optimizer> = match o.name.as_str() {
        // T5's own fine-tuning recipe: AdaFactor with an explicit learning rate, no parameter scaling.
        "adafactor" => Box::new(AdaFactor::new(
            groups,
            AdaFactorConfig {
                lr: AdaFactorLr::External,
                scale_parameter: false,
                ..Default::default()
            },
        )?),
        "sgd" => Box::new(Sgd::new(
            groups,
            SgdConfig {
                momentum: o.momentum,
                ..Default::default()
            },
        )?),
        _ => Box::new(Adam::new(
            groups,
            AdamConfig::adamw()
                .with_betas(o.beta1, o.beta2)
                .with_eps(o.eps),
        )?),
    };
    let total = o.lr_decay_iters.unwrap_or(cfg.train.max_iters) as f64;
    let schedule =
        lm_optim::Schedule::warmup_linear(o.lr, (o.warmup_iters as f64).min(total), total)?;

    // Batches.
    let ce = CrossEntropy::default();
    let batch_loss = |items: &[&Encoded]| -> Result<Tensor> {
        let inputs: Vec<Vec<u32>> = items.iter().map(|e| e.input.clone()).collect();
        Ok(match &model {
            FtModel::Bert(m) => {
                let logits = bert_logits(m, items.iter().copied(), pad, device)?;
                let labels: Vec<i64> = items.iter().map(|e| e.label as i64).collect();
                cross_entropy(
                    &logits,
                    &Tensor::from_vec(labels, items.len(), device)?,
                    &ce,
                )?
            }
            FtModel::Gpt(m) => {
                // Sequence = prompt + target; targets shifted by one, the prompt's masked.
                let seqs: Vec<Vec<u32>> = items
                    .iter()
                    .map(|e| [e.input.clone(), e.target.clone()].concat())
                    .collect();
                let labels: Vec<Vec<i64>> = items
                    .iter()
                    .map(|e| {
                        let mut l = vec![IGNORE_INDEX; e.input.len() - 1];
                        l.extend(e.target.iter().map(|&t| t as i64));
                        l
                    })
                    .collect();
                let ids = pad_batch(
                    &seqs
                        .iter()
                        .map(|s| s[..s.len() - 1].to_vec())
                        .collect::<Vec<_>>(),
                    pad,
                    None,
                )?;
                let lab = pad_labels(&labels, ids.len)?;
                let logits = m.forward(&Tensor::from_vec(
                    ids.input_ids,
                    (ids.batch, ids.len),
                    device,
                )?)?;
                cross_entropy(
                    &logits,
                    &Tensor::from_vec(lab, (ids.batch, ids.len), device)?,
                    &ce,
                )?
            }
            FtModel::Bart(_) | FtModel::T5(_) => {
                let ids = pad_batch(&inputs, pad, None)?;
                let targets: Vec<Vec<i64>> = items
                    .iter()
                    .map(|e| e.target.iter().map(|&t| t as i64).collect())
                    .collect();
                let tlen = targets.iter().map(Vec::len).max().unwrap_or(1);
                let lab = pad_labels(&targets, tlen)?;
                let start = if let FtModel::Bart(m) = &model {
                    m.config().decoder_start_token_id
                } else {
                    pad
                };
                let dec = shift_right(&lab, tlen, start, pad)?;
                let (b, t) = (ids.batch, ids.len);
                let x = Tensor::from_vec(ids.input_ids, (b, t), device)?;
                let mask = Tensor::from_vec(ids.attention_mask, (b, t), device)?;
                let d = Tensor::from_vec(dec, (b, tlen), device)?;
                let logits = match &model {
                    FtModel::Bart(m) => m.forward(&x, Some(&mask), &d)?,
                    FtModel::T5(m) => m.forward(&x, Some(&mask), &d)?,
                    _ => unreachable!(),
                };
                cross_entropy(&logits, &Tensor::from_vec(lab, (b, tlen), device)?, &ce)?
            }
        })
    };
    let set_training = |on: bool| match &model {
        FtModel::Bert(m) => m.set_training(on),
        FtModel::Gpt(m) => m.set_training(on),
        FtModel::Bart(m) => m.set_training(on),
        FtModel::T5(m) => m.set_training(on),
    };
    // Predictions as strings (labels or generated text).
    let predict = |items: &[Encoded]| -> Result<Vec<String>> {
        set_training(false);
        let mut out = vec![];
        let mut rng = Rng::seed_from_u64(0);
        for chunk in items.chunks(32) {
            match &model {
                FtModel::Bert(m) => {
                    let logits = bert_logits(m, chunk.iter(), pad, device)?;
                    let am: Vec<u32> = logits.argmax(1)?.to_vec1()?;
                    out.extend(am.into_iter().map(|i| labels[i as usize].clone()));
                }
                _ => {
                    for e in chunk {
                        let n = f.max_target_len;
                        let ids = match &model {
                            FtModel::Gpt(m) => {
                                let all = m.generate(
                                    &e.input,
                                    n.min(gpt_ctx.saturating_sub(e.input.len())),
                                    &Sampling::greedy(),
                                    &mut rng,
                                )?;
                                let gen = &all[e.input.len()..];
                                gen[..gen.iter().position(|&t| t == eos).unwrap_or(gen.len())]
                                    .to_vec()
                            }
                            FtModel::Bart(m) => m.generate(
                                &Tensor::new(e.input.as_slice(), device)?.unsqueeze(0)?,
                                n,
                                &Sampling::greedy(),
                                &mut rng,
                                true,
                            )?,
                            FtModel::T5(m) => m.generate(
                                &Tensor::new(e.input.as_slice(), device)?.unsqueeze(0)?,
                                n,
                                &Sampling::greedy(),
                                &mut rng,
                                true,
                            )?,
                            FtModel::Bert(_) => unreachable!(),
                        };
                        out.push(tok.decode(&ids).trim().to_string());
                    }
                }
            }
        }
        set_training(true);
        Ok(out)
    };
    let gold = |ex: &[Example]| -> Vec<String> {
        ex.iter()
            .map(|e| match e {
                Example::Pair { label, .. } | Example::Single { label, .. } => label.clone(),
                Example::TextToText { target, .. } => target.clone(),
            })
            .collect()
    };
    let score = |pred: &[String], gold: &[String]| -> std::collections::BTreeMap<String, f64> {
        let mut m = std::collections::BTreeMap::new();
        if classification {
            m.insert("accuracy".into(), tasks::accuracy(pred, gold));
            m.insert("macro_f1".into(), tasks::macro_f1(pred, gold));
        } else {
            m.insert("exact_match".into(), tasks::exact_match(pred, gold));
            m.insert("token_f1".into(), tasks::token_f1(pred, gold));
        }
        m
    };
    let metric = if classification {
        "accuracy"
    } else {
        "token_f1"
    };
    let (val_gold, test_gold) = (gold(&data.val), gold(&data.test));

    // The loop.
    let best_dir = out.join("best");
    let mut best = f64::NEG_INFINITY;
    let mut since_best = 0;
    let mut curve = vec![];
    let mut log = String::new();
    let mut step = 0;
    while step < cfg.train.max_iters {
        let mut rng = Rng::seed_from_u64(seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let items: Vec<&Encoded> = (0..cfg.train.batch_size)
            .map(|_| &train[rng.below(train.len() as u64) as usize])
            .collect();
        let lr = schedule.value(step as f64);
        let loss = batch_loss(&items)?;
        let mut grads = loss.backward()?;
        if o.grad_clip > 0.0 {
            clip_grad_norm(&mut grads, &vars, o.grad_clip)?;
        }
        opt.step(&grads, lr)?;
        step += 1;
        let loss = loss.to_scalar::<f32>()?;
        log += &format!("{{\"step\":{step},\"lr\":{lr},\"train_loss\":{loss}}}\n");
        if step % cfg.train.eval_interval == 0 || step == cfg.train.max_iters {
            let v = score(&predict(&val)?, &val_gold)[metric];
            curve.push((step, v));
            log += &format!("{{\"step\":{step},\"val_{metric}\":{v}}}\n");
            if verbose {
                println!("step {step:>5}: train loss {loss:.4}, val {metric} {v:.4}");
            }
            if v > best {
                best = v;
                since_best = 0;
                lm_models::hf::save_dir(&store, &hf_config(&model), &best_dir)?;
                std::fs::copy(&tok_path, best_dir.join("tokenizer.json"))
                    .map_err(io_err(&best_dir))?;
            } else {
                since_best += 1;
                if cfg.train.early_stopping_patience > 0
                    && since_best >= cfg.train.early_stopping_patience
                {
                    if verbose {
                        println!("early stopping at step {step}");
                    }
                    break;
                }
            }
        }
    }
    write_atomic(&out.join("metrics.jsonl"), log.as_bytes())?;
    // Test with the best weights.
    store.load_safetensors(&best_dir.join("model.safetensors"), |n| Some(n.to_string()))?;
    let test_pred = predict(&test)?;
    let baseline_pred: Vec<String> = if classification {
        let majority = labels
            .iter()
            .max_by_key(|l| gold(&data.train).iter().filter(|g| g == l).count())
            .cloned()
            .unwrap_or_default();
        vec![majority; test_gold.len()]
    } else {
        data.test
            .iter()
            .map(|e| match e {
                Example::TextToText { input, .. } => input.clone(),
                _ => String::new(),
            })
            .collect()
    };
    let samples: String = data
        .test
        .iter()
        .zip(&test_pred)
        .take(5)
        .map(|(e, p)| {
            format!(
                "{}\n  => {p}\n",
                serde_json::to_string(e).unwrap_or_default()
            )
        })
        .collect();
    write_atomic(&out.join("test_predictions.txt"), samples.as_bytes())?;
    let results = FinetuneResults {
        task: f.task.clone(),
        init: f.init.clone(),
        scratch: f.scratch,
        steps: step,
        metric: metric.into(),
        best_val: best,
        test: score(&test_pred, &test_gold),
        baseline: score(&baseline_pred, &test_gold),
        fresh_tensors: fresh,
        curve,
    };
    write_atomic(
        &out.join("results.json"),
        serde_json::to_string_pretty(&results)
            .expect("serializes")
            .as_bytes(),
    )?;
    Ok(results)
}

/// Class logits for encoded examples: inputs and segment ids padded, attention mask from the padding.
fn bert_logits<'a>(
    m: &BertForSequenceClassification,
    items: impl Iterator<Item = &'a Encoded>,
    pad: u32,
    device: &Device,
) -> Result<Tensor> {
    let items: Vec<&Encoded> = items.collect();
    let ids = pad_batch(
        &items.iter().map(|e| e.input.clone()).collect::<Vec<_>>(),
        pad,
        None,
    )?;
    let segs = pad_batch(
        &items.iter().map(|e| e.segments.clone()).collect::<Vec<_>>(),
        0,
        Some(ids.len),
    )?;
    let (b, t) = (ids.batch, ids.len);
    Ok(m.forward(
        &Tensor::from_vec(ids.input_ids, (b, t), device)?,
        Some(&Tensor::from_vec(segs.input_ids, (b, t), device)?),
        Some(&Tensor::from_vec(ids.attention_mask, (b, t), device)?),
    )?)
}

fn hf_config(model: &FtModel) -> serde_json::Value {
    match model {
        FtModel::Bert(m) => m.hf_config(),
        FtModel::Gpt(m) => m.config().to_hf_json(),
        FtModel::Bart(m) => m.config().to_hf_json(),
        FtModel::T5(m) => m.config().to_hf_json(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freezing_the_encoder_keeps_the_decoder_and_head_trainable() {
        for frozen in [
            "bert.encoder.layer.0.output.dense.weight",
            "bert.embeddings.word_embeddings.weight",
            "encoder.block.0.layer.0.SelfAttention.q.weight",
            "shared.weight",
            "model.encoder.layers.0.fc1.weight",
            "model.shared.weight",
        ] {
            assert!(is_frozen(frozen, "encoder"), "{frozen}");
        }
        for trained in [
            "classifier.weight",
            "decoder.block.0.layer.1.EncDecAttention.q.weight",
            "model.decoder.layers.0.fc1.weight",
            "transformer.h.0.mlp.c_fc.weight",
        ] {
            assert!(!is_frozen(trained, "encoder"), "{trained}");
        }
        assert!(
            is_frozen("transformer.wte.weight", "embeddings")
                && !is_frozen("transformer.h.0.attn.c_attn.weight", "embeddings")
        );
        assert!(!is_frozen("bert.embeddings.word_embeddings.weight", "none"));
    }
}
