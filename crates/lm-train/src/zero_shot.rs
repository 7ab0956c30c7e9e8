//! Zero-shot evaluation (`lm-train eval MODEL --task FILE`): multiple choice scored by the
//! log-likelihood of each choice given the context — HellaSwag's JSONL, a generic
//! `{"context", "choices", "label"}` JSONL — and LAMBADA's last word, as lm-evaluation-harness
//! scores them. GPT scores `context + choice` as one sequence; BART and T5 read the context with
//! the encoder and score the choice as the decoder's target. BERT is not a generative model:
//! its pseudo-log-likelihood scoring is not built, and it is refused saying so.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lm_models::seq2seq::EncoderDecoder;
use lm_models::StepContext;

use crate::error::{io_err, Result, TrainError};
use crate::model_ref::ModelRef;
use crate::tokenizer::TextTokenizer;

/// A task file's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskFormat {
    /// HellaSwag: `ctx` (or `ctx_a` and `ctx_b`), four `endings`, `label`; each ending is
    /// scored after a space, as lm-evaluation-harness does.
    Hellaswag,
    /// LAMBADA: `text`, whose last word is predicted from the rest (accuracy: every token of it
    /// is the model's greedy choice).
    Lambada,
    /// `{"context": str, "choices": [str], "label": int}`, choices scored as written.
    Choices,
}

impl std::str::FromStr for TaskFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "hellaswag" => Ok(Self::Hellaswag),
            "lambada" => Ok(Self::Lambada),
            "choices" => Ok(Self::Choices),
            _ => Err(format!(
                "unknown task format {s:?}: expected hellaswag, lambada or choices"
            )),
        }
    }
}

/// One item: a context, its choices, and the index of the right one.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The text the choices continue.
    pub context: String,
    /// The continuations scored.
    pub choices: Vec<String>,
    /// The right choice.
    pub label: usize,
}

fn bad_line(path: &Path, line: usize, problem: impl Into<String>) -> TrainError {
    TrainError::Input {
        path: format!("{}:{line}", path.display()),
        problem: problem.into(),
    }
}

/// One JSON line as an item of `format`; `None` for what the line lacks.
fn item_of(v: &serde_json::Value, format: TaskFormat) -> std::result::Result<Item, &'static str> {
    let text = |k: &str| v.get(k).and_then(|x| x.as_str());
    let label = || {
        v.get("label")
            .and_then(|l| l.as_u64().or_else(|| l.as_str()?.parse().ok()))
            .map(|l| l as usize)
    };
    let strings = |k: &str| -> Option<Vec<String>> {
        v.get(k)?
            .as_array()?
            .iter()
            .map(|c| c.as_str().map(String::from))
            .collect()
    };
    match format {
        TaskFormat::Hellaswag => {
            let context = text("ctx").map(String::from).or_else(|| {
                Some(
                    format!("{} {}", text("ctx_a")?, text("ctx_b")?)
                        .trim_end()
                        .to_string(),
                )
            });
            let endings = strings("endings").ok_or("no \"endings\" array of strings")?;
            Ok(Item {
                context: context.ok_or("no \"ctx\" (or \"ctx_a\" and \"ctx_b\")")?,
                choices: endings.iter().map(|e| format!(" {e}")).collect(),
                label: label().ok_or("no integer \"label\"")?,
            })
        }
        TaskFormat::Lambada => {
            let t = text("text").ok_or("no \"text\"")?.trim_end();
            let cut = t
                .rfind(' ')
                .ok_or("a \"text\" of one word has no context")?;
            Ok(Item {
                context: t[..cut].to_string(),
                choices: vec![t[cut..].to_string()],
                label: 0,
            })
        }
        TaskFormat::Choices => Ok(Item {
            context: text("context").ok_or("no \"context\"")?.to_string(),
            choices: strings("choices").ok_or("no \"choices\" array of strings")?,
            label: label().ok_or("no integer \"label\"")?,
        }),
    }
}

/// The items of a task file; a line of another shape, or a label outside its choices, is an
/// error naming the file and line; an empty file is an error.
pub fn read_task(path: &Path, format: TaskFormat) -> Result<Vec<Item>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut items = vec![];
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| bad_line(path, i + 1, format!("not JSON ({e})")))?;
        let item = item_of(&v, format).map_err(|p| bad_line(path, i + 1, p))?;
        if item.choices.is_empty() || item.label >= item.choices.len() {
            return Err(bad_line(
                path,
                i + 1,
                format!("label {} but {} choices", item.label, item.choices.len()),
            ));
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err(TrainError::Input {
            path: path.display().to_string(),
            problem: "no task items in it".into(),
        });
    }
    Ok(items)
}

/// The model under evaluation.
pub enum Scorer {
    /// A causal LM: the choice continues the context in one sequence.
    Gpt(lm_models::gpt::Gpt),
    /// An encoder-decoder: the encoder reads the context, the decoder is scored on the choice.
    Seq2Seq(Box<dyn EncoderDecoder>),
}

/// The log-likelihood of one choice: the sum over its tokens, their count, and whether every
/// one of them is the model's most likely token there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChoiceScore {
    /// Σ log p(token | everything before), in nats.
    pub loglik: f64,
    /// Tokens of the choice.
    pub tokens: usize,
    /// Every token is the argmax of its position.
    pub greedy: bool,
}

/// Log-probabilities at `positions` of each row of `logits` `[rows, t, V]` for `targets`:
/// row r's choice is scored at positions `first[r]..first[r] + targets[r].len()`.
fn gather(logits: &Tensor, first: &[usize], targets: &[Vec<u32>]) -> Result<Vec<ChoiceScore>> {
    let logp = lm_objectives::loss::log_softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
    let mut out = vec![];
    for (r, (start, want)) in first.iter().zip(targets).enumerate() {
        let rows: Vec<Vec<f32>> = logp.get(r)?.narrow(0, *start, want.len())?.to_vec2()?;
        let mut score = ChoiceScore {
            loglik: 0.0,
            tokens: want.len(),
            greedy: true,
        };
        for (row, &t) in rows.iter().zip(want) {
            score.loglik += f64::from(row[t as usize]);
            let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            score.greedy &= row[t as usize] >= best;
        }
        out.push(score);
    }
    Ok(out)
}

/// Scores each choice (token ids) after `context` (token ids), all choices in one batch.
/// GPT: `context + choice`, cut from the left to the model's context length. Encoder-decoders:
/// the decoder starts from its start token, right-padded. A choice of no tokens is an error.
pub fn score_choices(
    scorer: &Scorer,
    device: &Device,
    context: &[u32],
    choices: &[Vec<u32>],
) -> Result<Vec<ChoiceScore>> {
    let refuse = |problem: &str| TrainError::Input {
        path: "(task item)".into(),
        problem: problem.into(),
    };
    if choices.iter().any(Vec::is_empty) || context.is_empty() {
        return Err(refuse(
            "a context or choice that encodes to no tokens cannot be scored",
        ));
    }
    let ctx = &StepContext::EVAL;
    match scorer {
        Scorer::Gpt(m) => {
            let room = m.config().n_positions + 1;
            if choices.iter().any(|c| c.len() >= room) {
                return Err(refuse("a choice longer than the model's context"));
            }
            let seqs: Vec<Vec<u32>> = choices
                .iter()
                .map(|c| {
                    let all: Vec<u32> = context.iter().chain(c).copied().collect();
                    all[all.len().saturating_sub(room)..].to_vec()
                })
                .collect();
            let t = seqs.iter().map(Vec::len).max().unwrap_or(1) - 1;
            let ids: Vec<u32> = seqs
                .iter()
                .flat_map(|s| {
                    s[..s.len() - 1]
                        .iter()
                        .copied()
                        .chain(std::iter::repeat_n(0, t + 1 - s.len()))
                })
                .collect();
            let ids = Tensor::from_vec(ids, (seqs.len(), t), device)?;
            // No graph: scoring needs no gradients.
            let logits = candle_core::recompute::no_grad(|| m.forward(&ids, ctx))?;
            let first: Vec<usize> = seqs
                .iter()
                .zip(choices)
                .map(|(s, c)| s.len() - 1 - c.len())
                .collect();
            gather(&logits, &first, choices)
        }
        Scorer::Seq2Seq(m) => {
            let gen = m.generation_config(0);
            let longest = choices.iter().map(Vec::len).max().unwrap_or(1);
            let dec: Vec<u32> = choices
                .iter()
                .flat_map(|c| {
                    std::iter::once(gen.decoder_start_token_id)
                        .chain(c[..c.len() - 1].iter().copied())
                        .chain(std::iter::repeat_n(gen.pad_token_id, longest - c.len()))
                })
                .collect();
            let rows = choices.len();
            let enc: Vec<u32> = (0..rows).flat_map(|_| context.iter().copied()).collect();
            let enc = Tensor::from_vec(enc, (rows, context.len()), device)?;
            let dec = Tensor::from_vec(dec, (rows, longest), device)?;
            let logits = candle_core::recompute::no_grad(|| m.forward(&enc, None, &dec, ctx))?;
            gather(&logits, &vec![0; rows], choices)
        }
    }
}

/// The scorer and tokenizer of `model` (any model reference), by its `config.json`'s
/// `model_type`.
pub fn load(model: &ModelRef, device: &Device) -> Result<(Scorer, TextTokenizer)> {
    let dir = model.weights_dir()?;
    let tokenizer = TextTokenizer::load(&model.tokenizer_file()?)?;
    let scorer = match lm_models::hf::model_type(&dir)?.as_str() {
        "gpt2" => Scorer::Gpt(lm_models::gpt::Gpt::from_hf_dir(&dir, device)?.0),
        "bart" => Scorer::Seq2Seq(Box::new(lm_models::bart::Bart::from_hf_dir(&dir, device)?.0)),
        "t5" => Scorer::Seq2Seq(Box::new(lm_models::t5::T5::from_hf_dir(&dir, device)?.0)),
        other => {
            return Err(TrainError::Checkpoint {
                path: dir,
                problem: format!("a {other} model does not generate: zero-shot scoring needs GPT, BART or T5 (scoring a masked LM by pseudo-log-likelihood is not built)"),
            })
        }
    };
    Ok((scorer, tokenizer))
}

/// A task's results, as `eval-<task>.json` holds them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// The task file.
    pub task: String,
    /// Its format.
    pub format: String,
    /// The model reference evaluated.
    pub model: String,
    /// Items scored.
    pub items: usize,
    /// Accuracy: the right choice has the highest log-likelihood (LAMBADA: the last word is the
    /// greedy continuation).
    pub accuracy: f64,
    /// Its standard error, √(p(1−p)/(n−1)) (lm-evaluation-harness's).
    pub accuracy_stderr: f64,
    /// Accuracy with each choice's log-likelihood divided by its length in bytes
    /// (lm-evaluation-harness's `acc_norm`); none for LAMBADA.
    pub accuracy_norm: Option<f64>,
    /// Its standard error.
    pub accuracy_norm_stderr: Option<f64>,
    /// Mean log-likelihood of the right choice, in nats.
    pub mean_loglik: f64,
}

fn stderr_of(p: f64, n: usize) -> f64 {
    if n < 2 {
        return 0.0;
    }
    (p * (1.0 - p) / (n - 1) as f64).sqrt()
}

fn argmax(v: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in v.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

/// Scores every item of `task` with the model `model` names (resolved as `reference`), a
/// progress bar on the terminal.
pub fn evaluate(
    (model, reference): (&Path, &ModelRef),
    task: &Path,
    format: TaskFormat,
    device: &Device,
) -> Result<Report> {
    let items = read_task(task, format)?;
    let (scorer, tokenizer) = load(reference, device)?;
    let seq2seq = matches!(scorer, Scorer::Seq2Seq(_));
    let bar = indicatif::ProgressBar::new(items.len() as u64);
    let (mut right, mut right_norm, mut loglik) = (0usize, 0usize, 0.0);
    for item in &items {
        // An encoder reads its input with the tokenizer's special tokens, as in training.
        let context = match seq2seq {
            true => tokenizer.encode_for_model(&item.context)?,
            false => tokenizer.encode(&item.context)?,
        };
        let choices: Vec<Vec<u32>> = item
            .choices
            .iter()
            .map(|c| tokenizer.encode(c))
            .collect::<Result<_>>()?;
        let scores = score_choices(&scorer, device, &context, &choices)?;
        loglik += scores[item.label].loglik;
        let hit = match format {
            TaskFormat::Lambada => scores[0].greedy,
            _ => argmax(scores.iter().map(|s| s.loglik)) == item.label,
        };
        let by_bytes = scores
            .iter()
            .zip(&item.choices)
            .map(|(s, c)| s.loglik / c.len().max(1) as f64);
        right += usize::from(hit);
        right_norm += usize::from(argmax(by_bytes) == item.label);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n = items.len();
    let (acc, acc_norm) = (right as f64 / n as f64, right_norm as f64 / n as f64);
    let lambada = format == TaskFormat::Lambada;
    Ok(Report {
        task: task.display().to_string(),
        format: format!("{format:?}").to_lowercase(),
        model: model.display().to_string(),
        items: n,
        accuracy: acc,
        accuracy_stderr: stderr_of(acc, n),
        accuracy_norm: (!lambada).then_some(acc_norm),
        accuracy_norm_stderr: (!lambada).then_some(stderr_of(acc_norm, n)),
        mean_loglik: loglik / n as f64,
    })
}

/// Where a report goes: `RUN/eval-<task>.json` for a run or one of its checkpoints (written
/// atomically; `results.json` is never touched), `None` for a HuggingFace directory or hub
/// model, whose report is printed instead.
pub fn report_path(model: &ModelRef, task: &Path) -> Option<PathBuf> {
    let stem = task
        .file_stem()
        .map_or("task".into(), |s| s.to_string_lossy().into_owned());
    model.run().map(|run| run.join(format!("eval-{stem}.json")))
}

/// The format a task file's first item has: `endings` (HellaSwag), `choices` (generic), or only
/// `text` (LAMBADA).
pub fn detect_format(path: &Path) -> Result<TaskFormat> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(first).unwrap_or_default();
    let has = |k: &str| v.get(k).is_some();
    if has("endings") {
        Ok(TaskFormat::Hellaswag)
    } else if has("choices") {
        Ok(TaskFormat::Choices)
    } else if has("text") {
        Ok(TaskFormat::Lambada)
    } else {
        Err(TrainError::Input {
            path: format!("{}:1", path.display()),
            problem: "neither HellaSwag (\"endings\"), generic multiple choice (\"choices\") nor LAMBADA (\"text\"); name it with --format".into(),
        })
    }
}

/// `lm-train eval MODEL --task FILE`: evaluates, writes the report beside the run (or, for a
/// model outside a run or a run that cannot be written, returns it to print), and returns the
/// lines to print.
pub fn run_task(
    model: &Path,
    task: &Path,
    format: Option<TaskFormat>,
    device: &Device,
) -> Result<Vec<String>> {
    let format = match format {
        Some(f) => f,
        None => detect_format(task)?,
    };
    let reference = ModelRef::parse(model)?;
    let report = evaluate((model, &reference), task, format, device)?;
    let json = serde_json::to_string_pretty(&report).unwrap_or_default() + "\n";
    let mut lines = vec![format!(
        "{}: {} items, accuracy {:.4} ± {:.4}{}",
        report.task,
        report.items,
        report.accuracy,
        report.accuracy_stderr,
        report
            .accuracy_norm
            .zip(report.accuracy_norm_stderr)
            .map_or(String::new(), |(a, e)| format!(
                ", length-normalized {a:.4} ± {e:.4}"
            ))
    )];
    match report_path(&reference, task) {
        Some(path) => match crate::checkpoint::write_atomic(&path, json.as_bytes()) {
            Ok(()) => lines.push(format!("written to {}", path.display())),
            Err(e) => lines.extend([format!("not written ({e}):"), json]),
        },
        None => lines.push(json),
    }
    Ok(lines)
}
