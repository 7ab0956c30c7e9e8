//! `lm-bench soak [STEPS]`: the reliability soak. A tiny GPT (the demo recipe, 2 layers of width
//! 64) trains `STEPS` steps (default 20 000) with a checkpoint every 100 and three kept, while a
//! reader runs `lm-train eval` on the run in a loop beside it. Reports the trainer's resident set
//! a tenth of the way in and at its last sample (the growth must stay under 5%), the
//! readers' calls and failures (0 expected: a reader never fails on a checkpoint the trainer
//! prunes or is writing), and the whole run's time. Uses the `lm-train` binary next to this one
//! (`cargo build --release -p lm-train`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The resident set of process `pid` in KiB (`VmRSS`), if it still runs.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The `lm-train` binary beside this one.
fn lm_train_binary() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("lm-train");
    if !bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p lm-train)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The step of `run`'s newest finished checkpoint, if any.
fn newest_checkpoint(run: &Path) -> Option<u64> {
    std::fs::read_dir(run.join("checkpoints"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_prefix("step-")?.parse::<u64>().ok()
        })
        .max()
}

/// Runs the soak; `args` are the words after `soak`.
pub fn soak(args: &[String]) -> Result<()> {
    let steps: u64 = args.first().map_or(Ok(20_000), |s| s.parse())?;
    let bin = lm_train_binary()?;
    let dir = tempfile_dir()?;
    let run = dir.join("run");
    let start = Instant::now();
    let mut trainer = spawn_trainer(&bin, &run, steps)?;
    let pid = trainer.id();
    let (mut first, mut last) = (None, None);
    let mut curve: Vec<(u64, u64)> = vec![];
    let (mut reads, mut failures, mut failure_text) = (0u64, 0u64, String::new());
    let status = loop {
        if let Some(status) = trainer.try_wait()? {
            break status;
        }
        if let Some(step) = newest_checkpoint(&run) {
            // The start is taken a tenth of the way in, once the allocator has warmed up.
            let rss = rss_kib(pid);
            if first.is_none() && step >= steps / 10 {
                first = rss.map(|r| (step, r));
            }
            last = rss.map(|r| (step, r)).or(last);
            // One sample per tenth of the run, for the curve.
            if let Some(r) = rss {
                let tenth = (steps / 10).max(1);
                if curve.last().is_none_or(|(s, _)| step / tenth > s / tenth) {
                    curve.push((step, r));
                }
            }
            let out = Command::new(&bin)
                .args(["eval"])
                .arg(&run)
                .args(["--threads", "1"])
                .output()?;
            reads += 1;
            if !out.status.success() {
                failures += 1;
                failure_text = String::from_utf8_lossy(&out.stderr).to_string();
            }
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let stderr = trainer
        .stderr
        .take()
        .map(std::io::read_to_string)
        .transpose()?
        .unwrap_or_default();
    if !status.success() {
        bail!("the training run failed: {stderr}");
    }
    let (Some((s0, first)), Some((s1, last))) = (first, last) else {
        bail!("the run ended before a tenth of it could be read");
    };
    let growth = last as f64 / first as f64 - 1.0;
    println!(
        "soak: {steps} steps, a checkpoint every 100 (3 kept), {:.0} s; trainer RSS {:.1} MiB \
         at step {s0}, {:.1} MiB at step {s1} ({:+.2}%); {reads} reader calls of `lm-train \
         eval`, {failures} failed",
        start.elapsed().as_secs_f64(),
        first as f64 / 1024.0,
        last as f64 / 1024.0,
        100.0 * growth
    );
    let points: Vec<String> = curve
        .iter()
        .map(|(s, r)| format!("{s}: {:.1}", *r as f64 / 1024.0))
        .collect();
    println!("trainer RSS (MiB) by step: {}", points.join(", "));
    if failures > 0 {
        println!("last reader failure: {failure_text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    if failures > 0 || growth > 0.05 {
        bail!(
            "soak failed: {failures} reader failures, RSS growth {:+.2}%",
            100.0 * growth
        );
    }
    Ok(())
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("lm-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `lm-train train` of the soak's tiny GPT into `run` for `steps` steps.
fn spawn_trainer(bin: &Path, run: &Path, steps: u64) -> Result<std::process::Child> {
    Command::new(bin)
        .args([
            "train",
            "--recipe",
            "gpt-shakespeare-char",
            "--quiet",
            "--threads",
            "1",
        ])
        .arg("--out")
        .arg(run)
        .args(["--max-iters", &steps.to_string()])
        .args(["--set", "model.n_layer=2", "--set", "model.n_embd=64"])
        .args(["--set", &format!("train.max_iters={steps}")])
        .args(["--set", &format!("optim.lr_decay_iters={steps}")])
        .args([
            "--set",
            "train.eval_interval=100",
            "--set",
            "train.eval_iters=2",
        ])
        .args([
            "--set",
            "train.log_interval=100",
            "--set",
            "train.keep_checkpoints=3",
        ])
        .args(["--set", "train.sample_tokens=0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting lm-train")
}
