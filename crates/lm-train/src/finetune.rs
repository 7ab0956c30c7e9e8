//! Pre-train, then fine-tune: the task definitions that plug a labelled task into the trainer's
//! one loop ([`crate::Trainer`]). A pretrained checkpoint (a run of this project or a local
//! HuggingFace directory) is adapted to the task:
//!
//! - BERT classifies from the pooled `[CLS]` with a new `classifier` head (single texts or pairs
//!   with segment ids); metrics accuracy and macro-F1.
//! - T5 and BART learn text-to-text by teacher forcing and are evaluated by greedy generation;
//!   metrics exact match and token F1.
//! - GPT learns `p(target | prompt)` with the loss on the target only (prompt positions get the
//!   ignore index), and classifies by generating the label word.
//!
//! What a task defines: how examples are encoded, the batch of each key (a pure function of
//! (seed, split, key), so a resumed run sees the same batches), how the model predicts, and the
//! metric that selects the best checkpoint. Everything else — the step, accumulation, clipping,
//! schedule, checkpoints, exact resume, early stopping, metrics — is the trainer's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use lm_dist::Collective;
use lm_models::{MatmulPrecision, ParamStore, Sampling, StepContext};
use lm_objectives::collate::{pad_batch, pad_labels, shift_right};
use lm_objectives::{Rng, IGNORE_INDEX};
use lm_optim::ParamGroup;
use serde::{Deserialize, Serialize};

use crate::checkpoint::write_atomic;
use crate::config::Family;
use crate::config::{Freeze, TaskKind};
use crate::data::Split;
use crate::error::{io_err, Result, TrainError};
use crate::family::Loaded;
use crate::model::{labels_tensor, Batch, Head as ModelHead, LanguageModel};
use crate::tasks::{self, Example, TaskData};
use crate::tokenizer::TextTokenizer;

pub use crate::config::{FinetuneConfig, FinetuneSection, FINETUNE_RECIPES};

/// How the model family turns an example into a loss and a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// BERT: a class from the pooled `[CLS]`.
    Classify,
    /// GPT: the target continues the prompt.
    Causal,
    /// BART / T5: the target is decoded from the encoded input.
    Seq2Seq,
}

/// One encoded example.
#[derive(Debug, Clone)]
struct Encoded {
    input: Vec<u32>,
    segments: Vec<u32>,
    /// Class index (classification).
    label: usize,
    /// Target ids ending in the end token (generation).
    target: Vec<u32>,
}

/// Special ids the encodings use.
#[derive(Debug, Clone, Copy)]
struct Ids {
    cls: u32,
    sep: u32,
    eos: u32,
    pad: u32,
    decoder_start: u32,
}

/// A fine-tuning task bound to a model family and tokenizer: encoded splits, batches, predictions
/// and metrics.
#[derive(Debug)]
pub struct FinetuneTask {
    cfg: FinetuneConfig,
    head: Head,
    ids: Ids,
    tokenizer: TextTokenizer,
    labels: Vec<String>,
    data: TaskData,
    encoded: [Vec<Encoded>; 3],
    /// GPT's context length (`usize::MAX` for the others).
    context: usize,
    fresh: Vec<String>,
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
    /// The checkpoint with that value (its weights gave the test metrics).
    pub best_checkpoint: String,
    /// Test metrics of the best model.
    pub test: BTreeMap<String, f64>,
    /// The same metrics for the trivial baseline (majority class, or copying the input).
    pub baseline: BTreeMap<String, f64>,
    /// Names of tensors that were freshly initialized.
    pub fresh_tensors: Vec<String>,
    /// (step, validation metric) after each evaluation.
    pub curve: Vec<(u64, f64)>,
}

/// The model, its parameters and optimizer groups, as a task builds them for the trainer.
pub(crate) struct Prepared {
    pub tokenizer: TextTokenizer,
    pub task: FinetuneTask,
    pub model: Box<dyn LanguageModel>,
    pub store: ParamStore,
    pub groups: Vec<ParamGroup>,
}

/// The weights `finetune.init` names: a HuggingFace directory, a run (its newest checkpoint) or
/// one of a run's checkpoints ([`crate::model_ref`]).
fn resolve_init(init: &Path) -> Result<PathBuf> {
    crate::model_ref::ModelRef::parse(init)
        .and_then(|m| m.weights_dir())
        .map_err(|_| TrainError::Checkpoint {
            path: init.to_path_buf(),
            problem: "no pretrained model here; run its pretraining recipe first (e.g. `cargo xtask recipe bert-mlm-nsp`) or point finetune.init at a run, one of its checkpoints (RUN/checkpoints/step-N) or a HuggingFace directory".into(),
        })
}

/// Whether parameter `name` stays fixed under `freeze`.
fn is_frozen(name: &str, freeze: Freeze) -> bool {
    let embedding = name.contains("embeddings")
        || name.contains(".wte.")
        || name.contains(".wpe.")
        || name.contains("shared")
        || name.contains("embed_positions");
    match freeze {
        Freeze::None => false,
        Freeze::Embeddings => embedding,
        // The whole body below the task's output: BERT's encoder, T5's and BART's encoder with
        // the shared embedding. (GPT has no encoder: only its embeddings are frozen.)
        Freeze::Encoder => {
            name.starts_with("bert.")
                || name.starts_with("encoder.")
                || name.starts_with("model.encoder.")
                || embedding
        }
    }
}

const SPLIT_FILES: [&str; 3] = ["train", "val", "test"];

/// The task's examples: generated, or read from the configured JSONL files.
fn task_data(cfg: &FinetuneConfig) -> Result<TaskData> {
    let f = &cfg.finetune;
    let seed = cfg.train.seed;
    Ok(match f.task {
        TaskKind::Pairs => tasks::next_line_pairs(
            crate::data::SHAKESPEARE,
            seed,
            f.train_examples,
            f.val_examples,
            f.test_examples,
        )?,
        TaskKind::TableToText => {
            tasks::table_to_text(seed, f.train_examples, f.val_examples, f.test_examples)
        }
        TaskKind::Jsonl => {
            let read =
                |p: &Option<String>| tasks::read_jsonl(Path::new(p.as_deref().unwrap_or("")));
            TaskData {
                train: read(&f.train_file)?,
                val: read(&f.val_file)?,
                test: read(&f.test_file)?,
            }
        }
    })
}

/// Refuses a task with an empty split.
fn check_splits(data: &TaskData, cfg: &FinetuneConfig) -> Result<()> {
    if data.train.is_empty() || data.val.is_empty() || data.test.is_empty() {
        return Err(TrainError::Corpus {
            corpus: format!("task {}", cfg.finetune.task),
            problem: format!(
                "{} training, {} validation and {} test examples; each split needs at least one",
                data.train.len(),
                data.val.len(),
                data.test.len()
            ),
        });
    }
    Ok(())
}

/// Class labels of the training examples, sorted; `None` for a text-to-text task.
fn class_labels(data: &TaskData) -> Result<Option<Vec<String>>> {
    let label = |e: &Example| match e {
        Example::Pair { label, .. } | Example::Single { label, .. } => Some(label.clone()),
        Example::TextToText { .. } => None,
    };
    let all: Vec<Option<String>> = data.train.iter().map(label).collect();
    if all.iter().all(Option::is_none) {
        return Ok(None);
    }
    if all.iter().any(Option::is_none) {
        return Err(TrainError::Corpus {
            corpus: "training examples".into(),
            problem: "mix labelled examples and input/target pairs; a task is one or the other"
                .into(),
        });
    }
    let mut labels: Vec<String> = all.into_iter().flatten().collect();
    labels.sort();
    labels.dedup();
    for (split, ex) in [("val", &data.val), ("test", &data.test)] {
        for e in ex {
            match label(e) {
                Some(l) if labels.contains(&l) => {}
                Some(l) => {
                    return Err(TrainError::Corpus {
                        corpus: format!("{split} examples"),
                        problem: format!(
                            "label {l:?} never occurs in training (labels: {labels:?})"
                        ),
                    })
                }
                None => {
                    return Err(TrainError::Corpus {
                        corpus: format!("{split} examples"),
                        problem: "an input/target pair in a classification task".into(),
                    })
                }
            }
        }
    }
    Ok(Some(labels))
}

/// The model `dir` holds (its `config.json`'s `model_type` names the family), random with
/// `scratch`; for BERT a classifier over `labels`. Returns the family and the model with the
/// names of freshly initialized tensors.
fn load_model(
    dir: &Path,
    labels: Option<&[String]>,
    scratch: bool,
    seed: u64,
    device: &Device,
) -> Result<(Family, Loaded)> {
    let model_type = lm_models::hf::model_type(dir)?;
    let family = Family::of_hf_model_type(&model_type);
    let Some((family, load)) = family.and_then(|f| Some((f, f.load_for_finetune?))) else {
        return Err(TrainError::Checkpoint {
            path: dir.into(),
            problem: format!("cannot fine-tune model_type {model_type:?}"),
        });
    };
    Ok((family, load(dir, labels, scratch, seed, device)?))
}

/// The special ids a task's encodings use: the family's own ([`Family::specials`]), looked up in
/// the tokenizer at `tok_path` (an error names it and the missing token).
fn special_ids(
    family: Family,
    tokenizer: &TextTokenizer,
    tok_path: &Path,
    decoder_start: u32,
) -> Result<Ids> {
    let id = |t: &str| {
        tokenizer.token_id(t).ok_or_else(|| TrainError::Checkpoint {
            path: tok_path.into(),
            problem: format!(
                "has no {t} token, which a {} model's inputs need",
                family.name
            ),
        })
    };
    let sp = family.specials(&id, tokenizer.kind())?;
    Ok(Ids {
        cls: sp.bos,
        sep: sp.sep,
        eos: sp.eos,
        pad: sp.pad,
        decoder_start,
    })
}

/// Optimizer groups: the new head (its own lr scale, no decay), matrices (decay) and vectors
/// (no decay); frozen tensors and buffers are left out.
fn param_groups(
    model: &dyn LanguageModel,
    store: &ParamStore,
    cfg: &FinetuneConfig,
) -> Vec<ParamGroup> {
    let (mut head, mut decay, mut no_decay) = (vec![], vec![], vec![]);
    for (n, v) in store.vars() {
        if is_frozen(&n, cfg.finetune.freeze) || model.is_buffer(&n) {
            continue;
        }
        if n.starts_with("classifier.") {
            head.push((n, v));
        } else if lm_optim::decays(&v) {
            decay.push((n, v));
        } else {
            no_decay.push((n, v));
        }
    }
    let mut head = ParamGroup::new("head", head, 0.0);
    head.lr_scale = cfg.finetune.head_lr_scale;
    vec![
        ParamGroup::new("decay", decay, cfg.optim.weight_decay),
        ParamGroup::new("no_decay", no_decay, 0.0),
        head,
    ]
}

impl FinetuneTask {
    /// Refuses gold labels outside the task's classes (`inputs` as [`crate::tasks::read_inputs`]
    /// gives them, from `path`), naming them; text-to-text tasks have no classes to check.
    pub fn check_gold_labels(&self, inputs: &[(Example, bool)], path: &Path) -> Result<()> {
        if self.labels.is_empty() {
            return Ok(());
        }
        let unknown: std::collections::BTreeSet<&str> = inputs
            .iter()
            .filter(|(e, gold)| *gold && e.is_labelled())
            .map(|(e, _)| e.gold())
            .filter(|g| !self.labels.iter().any(|l| l == g))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        Err(TrainError::Input {
            path: path.display().to_string(),
            problem: format!(
                "label(s) {unknown:?} are not among the task's classes {:?}",
                self.labels
            ),
        })
    }

    /// A new run: the task's data written to `run_dir/data`, the tokenizer copied beside it, the
    /// model from `finetune.init`.
    pub(crate) fn prepare(
        cfg: &FinetuneConfig,
        run_dir: &Path,
        device: &Device,
    ) -> Result<Prepared> {
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
        let tokenizer = TextTokenizer::load(&tok_path)?;
        let data = task_data(cfg)?;
        check_splits(&data, cfg)?;
        let labels = class_labels(&data)?;
        let (family, (model, store, fresh)) =
            load_model(&ckpt, labels.as_deref(), f.scratch, cfg.train.seed, device)?;
        // A tokenizer with ids the model has no embedding for would index out of its table.
        let vocab = model.hf_config()["vocab_size"].as_u64().unwrap_or(u64::MAX) as usize;
        if tokenizer.vocab_size() > vocab {
            return Err(TrainError::Checkpoint {
                path: tok_path,
                problem: format!(
                    "has {} tokens but the model's vocabulary has {vocab}: it is not this model's tokenizer",
                    tokenizer.vocab_size()
                ),
            });
        }
        // The checkpoint's generation settings travel with the run (into each checkpoint).
        let gen = ckpt.join("generation_config.json");
        if gen.exists() {
            std::fs::create_dir_all(run_dir).map_err(io_err(run_dir))?;
            std::fs::copy(&gen, run_dir.join("generation_config.json")).map_err(io_err(&gen))?;
        }
        let data_dir = run_dir.join("data");
        std::fs::create_dir_all(&data_dir).map_err(io_err(&data_dir))?;
        for (name, ex) in SPLIT_FILES.iter().zip([&data.train, &data.val, &data.test]) {
            tasks::write_jsonl(&data_dir.join(format!("{name}.jsonl")), ex)?;
        }
        // INVARIANT: a list of strings always serializes to JSON.
        let fresh_json = serde_json::to_string(&fresh).expect("names serialize");
        write_atomic(&data_dir.join("fresh_tensors.json"), fresh_json.as_bytes())?;
        let tok = (tokenizer, tok_path.as_path());
        Self::assemble(cfg, family, tok, data, labels, (model, store, fresh))
    }

    /// An existing run: data and tokenizer from `run_dir`, the model from checkpoint `ckpt`, or
    /// with `None` as the run started (`finetune.init`; another rank joining a new run).
    pub(crate) fn reopen(
        cfg: &FinetuneConfig,
        run_dir: &Path,
        ckpt: Option<&Path>,
        device: &Device,
    ) -> Result<Prepared> {
        let tok_path = run_dir.join("tokenizer.json");
        let tokenizer = TextTokenizer::load(&tok_path)?;
        let data_dir = run_dir.join("data");
        let read = |name: &str| tasks::read_jsonl(&data_dir.join(format!("{name}.jsonl")));
        let data = TaskData {
            train: read("train")?,
            val: read("val")?,
            test: read("test")?,
        };
        let fresh_path = data_dir.join("fresh_tensors.json");
        let fresh: Vec<String> = std::fs::read_to_string(&fresh_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        check_splits(&data, cfg)?;
        let labels = class_labels(&data)?;
        let seed = cfg.train.seed;
        let (family, (model, store, _)) = match ckpt {
            Some(ckpt) => load_model(ckpt, labels.as_deref(), false, seed, device)?,
            None => {
                let init = resolve_init(Path::new(&cfg.finetune.init))?;
                let scratch = cfg.finetune.scratch;
                load_model(&init, labels.as_deref(), scratch, seed, device)?
            }
        };
        let tok = (tokenizer, tok_path.as_path());
        Self::assemble(cfg, family, tok, data, labels, (model, store, fresh))
    }

    fn assemble(
        cfg: &FinetuneConfig,
        family: Family,
        (tokenizer, tok_path): (TextTokenizer, &Path),
        data: TaskData,
        labels: Option<Vec<String>>,
        (model, store, fresh): Loaded,
    ) -> Result<Prepared> {
        let (head, context, decoder_start) = match model.head() {
            ModelHead::Classifier(_) | ModelHead::Encoder => (Head::Classify, usize::MAX, 0),
            ModelHead::Causal(m) => (Head::Causal, m.context_len(), 0),
            ModelHead::Seq2Seq(m) => (
                Head::Seq2Seq,
                usize::MAX,
                m.generation_config(0).decoder_start_token_id,
            ),
        };
        let ids = special_ids(family, &tokenizer, tok_path, decoder_start)?;
        let mut task = Self {
            cfg: cfg.clone(),
            head,
            ids,
            tokenizer: tokenizer.clone(),
            labels: labels.unwrap_or_default(),
            data,
            encoded: [vec![], vec![], vec![]],
            context,
            fresh,
        };
        let encode_all = |ex: &[Example]| -> Result<Vec<Encoded>> {
            ex.iter().map(|e| task.encode(e)).collect()
        };
        let encoded = [
            encode_all(&task.data.train)?,
            encode_all(&task.data.val)?,
            encode_all(&task.data.test)?,
        ];
        task.encoded = encoded;
        let groups = param_groups(model.as_ref(), &store, cfg);
        Ok(Prepared {
            tokenizer,
            task,
            model,
            store,
            groups,
        })
    }

    /// The longest input, within GPT's context.
    fn max_len(&self) -> usize {
        self.cfg.finetune.max_len.min(self.context)
    }

    fn class_index(&self, label: &str) -> usize {
        // Every label was checked against the training labels when the data was read.
        self.labels.iter().position(|l| l == label).unwrap_or(0)
    }

    fn encode(&self, e: &Example) -> Result<Encoded> {
        let enc = self.encode_unchecked(e)?;
        if enc.input.is_empty() || (self.head != Head::Classify && enc.target.is_empty()) {
            return Err(TrainError::Corpus {
                corpus: format!("task {}", self.cfg.finetune.task),
                problem: format!(
                    "example {} encodes to no input tokens",
                    serde_json::to_string(e).unwrap_or_default()
                ),
            });
        }
        Ok(enc)
    }

    fn encode_unchecked(&self, e: &Example) -> Result<Encoded> {
        let tok = &self.tokenizer;
        let (max_len, ids) = (self.max_len(), self.ids);
        let max_target = self.cfg.finetune.max_target_len;
        Ok(match (e, self.head) {
            // GPT classifies by generating the label word after the texts.
            (Example::Pair { label, .. } | Example::Single { label, .. }, Head::Causal) => {
                let prompt = match e {
                    Example::Pair { text_a, text_b, .. } => format!("{text_a} | {text_b} ?"),
                    Example::Single { text, .. } => format!("{text} ?"),
                    // INVARIANT: the outer match arm only admits labelled examples.
                    Example::TextToText { .. } => unreachable!("matched a labelled example"),
                };
                let mut input = tok.encode(&prompt)?;
                input.truncate(max_len.saturating_sub(3).max(1));
                Encoded {
                    input,
                    segments: vec![],
                    label: self.class_index(label),
                    target: [tok.encode(&format!(" {label}"))?, vec![ids.eos]].concat(),
                }
            }
            // [CLS] a [SEP] b [SEP], the longer text trimmed first.
            (
                Example::Pair {
                    text_a,
                    text_b,
                    label,
                },
                _,
            ) => {
                let (mut a, mut b) = (tok.encode(text_a)?, tok.encode(text_b)?);
                while a.len() + b.len() + 3 > max_len {
                    if a.len() > b.len() {
                        a.pop();
                    } else {
                        b.pop();
                    }
                }
                let segments = [vec![0u32; a.len() + 2], vec![1u32; b.len() + 1]].concat();
                Encoded {
                    input: [vec![ids.cls], a, vec![ids.sep], b, vec![ids.sep]].concat(),
                    segments,
                    label: self.class_index(label),
                    target: vec![],
                }
            }
            (Example::Single { text, label }, _) => {
                let mut a = tok.encode(text)?;
                a.truncate(max_len - 2);
                let input: Vec<u32> = [vec![ids.cls], a, vec![ids.sep]].concat();
                Encoded {
                    segments: vec![0; input.len()],
                    input,
                    label: self.class_index(label),
                    target: vec![],
                }
            }
            (Example::TextToText { input, target }, head) => {
                let causal = head == Head::Causal;
                let mut x = tok.encode(&if causal {
                    format!("{input} =")
                } else {
                    input.clone()
                })?;
                let mut y = tok.encode(&if causal {
                    format!(" {target}")
                } else {
                    target.clone()
                })?;
                y.truncate(max_target - 1);
                y.push(ids.eos);
                if causal {
                    // Prompt and target share the context; keep the end of the prompt.
                    let room = max_len.saturating_sub(y.len()).max(1);
                    if x.len() > room {
                        x.drain(..x.len() - room);
                    }
                } else {
                    x.truncate(max_len - 1);
                    x.push(ids.eos);
                }
                Encoded {
                    input: x,
                    segments: vec![],
                    label: 0,
                    target: y,
                }
            }
        })
    }

    /// Whether this is a classification task.
    pub fn is_classification(&self) -> bool {
        !self.labels.is_empty()
    }

    /// The validation metric that selects the best checkpoint (higher is better).
    pub fn metric(&self) -> &'static str {
        if self.is_classification() {
            "accuracy"
        } else {
            "token_f1"
        }
    }

    /// The batch of `key` in `split`: `batch` examples drawn uniformly with replacement, a pure
    /// function of (seed, split, key).
    pub fn batch(&self, split: Split, key: u64, batch: usize, device: &Device) -> Result<Batch> {
        let pool = match split {
            Split::Train => &self.encoded[0],
            Split::Val => &self.encoded[1],
        };
        let stream = if split == Split::Train { 0 } else { 0x5A17 };
        let mut rng = Rng::seed_from_u64(
            (self.cfg.train.seed ^ stream) ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let items: Vec<&Encoded> = (0..batch)
            .map(|_| &pool[rng.below(pool.len() as u64) as usize])
            .collect();
        match self.head {
            Head::Classify => self.classify_batch(&items, device),
            Head::Causal => self.causal_batch(&items, device),
            Head::Seq2Seq => self.seq2seq_batch(&items, device),
        }
    }

    fn classify_batch(&self, items: &[&Encoded], device: &Device) -> Result<Batch> {
        let mut b = self.encoder_inputs(items, device)?;
        let labels: Vec<i64> = items.iter().map(|e| e.label as i64).collect();
        (b.labels, b.host_labels) = labels_tensor(labels, items.len(), device)?;
        Ok(b)
    }

    /// Inputs (and segment ids) padded, attention mask from the padding; labels left empty.
    fn encoder_inputs(&self, items: &[&Encoded], device: &Device) -> Result<Batch> {
        let ids = pad_batch(
            &items.iter().map(|e| e.input.as_slice()).collect::<Vec<_>>(),
            self.ids.pad,
            None,
        )?;
        let (b, t) = (ids.batch, ids.len);
        let token_type_ids = if self.head == Head::Classify {
            let segs = pad_batch(
                &items
                    .iter()
                    .map(|e| e.segments.as_slice())
                    .collect::<Vec<_>>(),
                0,
                Some(t),
            )?;
            Some(Tensor::from_vec(segs.input_ids, (b, t), device)?)
        } else {
            None
        };
        Ok(Batch {
            input_ids: Tensor::from_vec(ids.input_ids, (b, t), device)?,
            attention_mask: Some(Tensor::from_vec(ids.attention_mask, (b, t), device)?),
            token_type_ids,
            labels: Tensor::zeros(b, candle_core::DType::I64, device)?,
            host_labels: Some(vec![0; b].into()),
            nsp_labels: None,
            decoder_input_ids: None,
            prefix_len: None,
            tokens: items.iter().map(|e| e.input.len()).sum(),
        })
    }

    /// Sequence = prompt + target, inputs all but its last token; the targets shifted by one,
    /// with the prompt's positions ignored.
    fn causal_batch(&self, items: &[&Encoded], device: &Device) -> Result<Batch> {
        let inputs: Vec<Vec<u32>> = items
            .iter()
            .map(|e| {
                let mut s = [e.input.as_slice(), e.target.as_slice()].concat();
                s.pop();
                s
            })
            .collect();
        let labels: Vec<Vec<i64>> = items
            .iter()
            .map(|e| {
                let mut l = vec![IGNORE_INDEX; e.input.len().saturating_sub(1)];
                l.extend(e.target.iter().map(|&t| t as i64));
                l
            })
            .collect();
        let ids = pad_batch(&inputs, self.ids.pad, None)?;
        let (b, t) = (ids.batch, ids.len);
        let (labels_t, host_labels) = labels_tensor(pad_labels(&labels, t)?, (b, t), device)?;
        Ok(Batch {
            input_ids: Tensor::from_vec(ids.input_ids, (b, t), device)?,
            attention_mask: None,
            token_type_ids: None,
            labels: labels_t,
            host_labels,
            nsp_labels: None,
            decoder_input_ids: None,
            prefix_len: None,
            tokens: inputs.iter().map(Vec::len).sum(),
        })
    }

    /// Encoder inputs padded with their mask; decoder inputs the targets shifted right after the
    /// decoder start token.
    fn seq2seq_batch(&self, items: &[&Encoded], device: &Device) -> Result<Batch> {
        let mut batch = self.encoder_inputs(items, device)?;
        let targets: Vec<Vec<i64>> = items
            .iter()
            .map(|e| e.target.iter().map(|&t| t as i64).collect())
            .collect();
        let tlen = targets.iter().map(Vec::len).max().unwrap_or(1);
        let labels = pad_labels(&targets, tlen)?;
        let dec = shift_right(&labels, tlen, self.ids.decoder_start, self.ids.pad)?;
        let b = items.len();
        (batch.labels, batch.host_labels) = labels_tensor(labels, (b, tlen), device)?;
        batch.decoder_input_ids = Some(Tensor::from_vec(dec, (b, tlen), device)?);
        batch.tokens += b * tlen;
        Ok(batch)
    }

    /// Names of the tensors that started from fresh initialization.
    pub fn fresh_tensors(&self) -> &[String] {
        &self.fresh
    }

    /// The task's configuration.
    pub fn config(&self) -> &FinetuneConfig {
        &self.cfg
    }
}

/// Runs a fine-tuning configuration into `out` through the trainer and returns the results (also
/// in `out/results.json`). With `verbose`, progress and evaluations are printed.
pub fn finetune(
    cfg: &FinetuneConfig,
    out: &Path,
    device: &Device,
    verbose: bool,
) -> Result<FinetuneResults> {
    let mut trainer = crate::Trainer::new(cfg.clone(), out, device.clone())?;
    trainer.verbose = verbose;
    let summary = trainer.train()?;
    summary.results.ok_or_else(|| TrainError::Checkpoint {
        path: out.to_path_buf(),
        problem: "the run ended without an evaluation".into(),
    })
}

mod predict;

#[cfg(test)]
mod tests;
