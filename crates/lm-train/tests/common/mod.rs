//! Helpers shared by the `lm-train` binary's test files.
#![allow(dead_code)] // each test file uses some of them

use std::path::Path;
use std::process::{Command, Output};

pub fn lm_train(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lm-train"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// The gpt-shakespeare-char recipe with `edits` (each `from` must occur) written to `dir/file`.
pub fn recipe_with<S: AsRef<str>>(
    dir: &Path,
    file: &str,
    edits: &[(&str, S)],
) -> std::path::PathBuf {
    let mut text = lm_train::config::TrainConfig::recipe("gpt-shakespeare-char")
        .unwrap()
        .to_toml();
    for (from, to) in edits {
        assert!(text.contains(from), "the recipe has no {from:?}");
        text = text.replace(from, to.as_ref());
    }
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn tiny_config(dir: &Path, corpus: &str) -> std::path::PathBuf {
    recipe_with(
        dir,
        "tiny.toml",
        &[
            ("builtin:tinyshakespeare", corpus),
            ("n_embd = 128", "n_embd = 16"),
            ("block_size = 64", "block_size = 8"),
            ("batch_size = 12", "batch_size = 2"),
            ("eval_iters = 20", "eval_iters = 1"),
            ("sample_tokens = 400", "sample_tokens = 20"),
        ],
    )
}

pub fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected failure");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {err}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{err}"
    );
}

/// A 2-layer, 64-wide GPT on the corpus's first 60,000 characters (written to `dir`), `steps`
/// steps with warmup `warmup`, evaluated every `eval_interval` on `eval_iters` batches, a loss
/// logged every step, as `dir/file`.
pub fn small_gpt(
    dir: &Path,
    file: &str,
    steps: u64,
    warmup: u64,
    (eval_interval, eval_iters): (u64, usize),
) -> std::path::PathBuf {
    std::fs::write(
        dir.join("corpus.txt"),
        &lm_train::data::SHAKESPEARE[..60_000],
    )
    .unwrap();
    recipe_with(
        dir,
        file,
        &[
            ("builtin:tinyshakespeare", "corpus.txt".to_string()),
            ("n_layer = 4", "n_layer = 2".into()),
            ("n_embd = 128", "n_embd = 64".into()),
            ("block_size = 64", "block_size = 32".into()),
            ("max_iters = 2000", format!("max_iters = {steps}")),
            ("warmup_iters = 100", format!("warmup_iters = {warmup}")),
            ("lr_decay_iters = 2000", format!("lr_decay_iters = {steps}")),
            (
                "eval_interval = 250",
                format!("eval_interval = {eval_interval}"),
            ),
            ("eval_iters = 20", format!("eval_iters = {eval_iters}")),
            ("log_interval = 10", "log_interval = 1".into()),
            ("sample_tokens = 400", "sample_tokens = 0".into()),
        ],
    )
}

/// A GPT big enough that 60 steps take about a second, so a kill lands mid-run.
pub fn kill_config(dir: &Path) -> std::path::PathBuf {
    small_gpt(dir, "kill.toml", 60, 5, (10, 2))
}

/// Starts `lm-train train --config cfg --out out` in `d` and kills it (SIGKILL) as soon as
/// checkpoint `ckpt` exists, i.e. mid-run; returns whether it had still been running.
pub fn kill_after_checkpoint(d: &Path, cfg: &str, out: &str, ckpt: &str) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lm-train"))
        .args(["train", "--config", cfg, "--out", out, "--quiet"])
        .current_dir(d)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !d.join(out).join("checkpoints").join(ckpt).exists() {
        assert!(started.elapsed().as_secs() < 60, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    !child.wait().unwrap().success()
}

pub fn losses(run: &Path) -> Vec<(u64, f32, Option<f32>)> {
    lm_train::metrics::MetricsLog::read(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .map(|r| (r.step, r.train_loss, r.val_loss))
        .collect()
}

/// A tiny BERT (bert-mlm-nsp recipe: 2 layers, width 32, a 300-token WordPiece vocabulary)
/// pretrained for `iters` steps on 30,000 characters of the corpus into `dir/pre`, to fine-tune
/// from. `block_size` must cover the fine-tuning run's `max_len`.
pub fn pretrain_tiny_bert(dir: &Path, block_size: usize, iters: u64) -> std::path::PathBuf {
    let mut pre = lm_train::config::TrainConfig::recipe("bert-mlm-nsp").unwrap();
    std::fs::write(
        dir.join("corpus.txt"),
        &lm_train::data::SHAKESPEARE[..30_000],
    )
    .unwrap();
    pre.data.corpus = dir.join("corpus.txt").display().to_string();
    pre.data.vocab_size = Some(300);
    (pre.model.n_layer, pre.model.n_embd, pre.model.d_ff) = (2, 32, Some(64));
    pre.model.block_size = block_size;
    (pre.train.max_iters, pre.train.eval_interval) = (iters, iters);
    pre.train.eval_iters = 1;
    (pre.optim.warmup_iters, pre.optim.lr_decay_iters) = (iters / 4, Some(iters));
    lm_train::Trainer::new(pre, &dir.join("pre"), candle_core::Device::Cpu)
        .unwrap()
        .train()
        .unwrap();
    dir.join("pre")
}

/// A tiny pretraining checkpoint of `recipe` (library calls: 1 layer, width 16, 2 steps on
/// `d/corpus.txt`) in `d/recipe`, to fine-tune from.
pub fn pretrained(d: &Path, recipe: &str) -> std::path::PathBuf {
    let mut c = lm_train::config::TrainConfig::recipe(recipe).unwrap();
    c.data.corpus = d.join("corpus.txt").display().to_string();
    if c.data.tokenizer != lm_train::config::TokenizerKind::Char {
        c.data.vocab_size = Some(300);
    }
    (c.model.n_layer, c.model.n_head, c.model.n_embd) = (1, 2, 16);
    (c.model.d_ff, c.model.block_size) = (Some(32), 24);
    (c.train.max_iters, c.train.eval_interval, c.train.eval_iters) = (2, 2, 1);
    (c.optim.warmup_iters, c.optim.lr_decay_iters) = (1, Some(2));
    let dir = d.join(recipe);
    lm_train::Trainer::new(c, &dir, candle_core::Device::Cpu)
        .unwrap()
        .train()
        .unwrap();
    dir
}
