//! The chapter's FP16 mixed precision in the trainer: f16 products, dynamic loss scaling that
//! skips overflowed steps (replayed here step by step against `lm_optim::LossScaler`), f32
//! masters, and the scaler's state in checkpoints so a resumed run goes on exactly.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// The GPT of `common::small_gpt`, 20 steps.
fn small_run(dir: &Path) -> std::path::PathBuf {
    small_gpt(dir, "f16.toml", 20, 2, (10, 1))
}

/// `lm-train train` with `args` in `d`; returns its standard error (it must succeed).
fn train(d: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lm-train"))
        .arg("train")
        .args(args)
        .args(["--threads", "2", "--quiet"])
        .current_dir(d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {err}");
    err
}

/// The (step, scale) of each "overflowed" line a run printed.
fn overflows(stderr: &str) -> Vec<(u64, f64)> {
    stderr
        .lines()
        .filter(|l| l.contains("a gradient overflowed f16"))
        .map(|l| {
            let step = l["step ".len()..l.find(':').unwrap()].parse().unwrap();
            let at = l.find("loss scale ").unwrap() + "loss scale ".len();
            let scale = l[at..].split(';').next().unwrap().parse().unwrap();
            (step, scale)
        })
        .collect()
}

/// The loss scaler's state in a run's newest checkpoint.
fn saved_scale(run: &Path) -> lm_train::checkpoint::LossScaleState {
    let ckpt = lm_train::checkpoint::latest_checkpoint(run).unwrap();
    let text = std::fs::read_to_string(ckpt.join("state.json")).unwrap();
    let state: lm_train::checkpoint::TrainerState = serde_json::from_str(&text).unwrap();
    state.loss_scale.expect("an f16 run saves its loss scale")
}

/// Replays `steps` steps of dynamic loss scaling with overflows exactly at `overflowed` (each
/// with the scale it reported) and returns the scaler at the end.
fn replay(init: f64, interval: u64, steps: u64, overflowed: &[(u64, f64)]) -> lm_optim::LossScaler {
    let mut s = lm_optim::LossScaler::new(init, 2.0, 0.5, interval).unwrap();
    for step in 1..=steps {
        match overflowed.iter().find(|(at, _)| *at == step) {
            Some((_, reported)) => {
                assert_eq!(
                    *reported,
                    s.scale(),
                    "step {step}: the scale it overflowed at"
                );
                s.update(false);
            }
            None => s.update(true),
        }
    }
    s
}

#[test]
fn f16_trains_like_f32_and_overflowed_steps_are_skipped_and_the_scale_adapts() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = small_run(d);
    let cfg = cfg.to_str().unwrap();
    train(
        d,
        &[
            "--config",
            cfg,
            "--out",
            "f32",
            "--set",
            "train.matmul_precision=highest",
        ],
    );
    let err = train(
        d,
        &[
            "--config",
            cfg,
            "--out",
            "f16",
            "--set",
            "train.matmul_precision=f16",
        ],
    );
    let (l32, l16) = (losses(&d.join("f32")), losses(&d.join("f16")));
    // From 65536 no step of this small model overflows: the same steps, within f16 rounding.
    assert!(overflows(&err).is_empty(), "{err}");
    assert_eq!(l32.len(), l16.len());
    let mut largest = 0f32;
    for ((s, a, _), (_, b, _)) in l32.iter().zip(&l16) {
        let rel = (a - b).abs() / a.abs();
        largest = largest.max(rel);
        assert!(rel < 1e-2, "step {s}: f32 {a} vs f16 {b}");
    }
    println!("f16 against f32 over 20 steps: largest relative loss difference {largest:.2e}");
    assert!(largest > 0.0, "the f16 run computed nothing in f16");
    let st = saved_scale(&d.join("f16"));
    assert_eq!((st.scale, st.good_steps, st.overflows), (65536.0, 20, 0));

    // From 2^28 the scaled gradients overflow f16 (past 65504) until the scale has come down;
    // after 4 good steps in a row it doubles, and may overflow again.
    let init = 2f64.powi(28);
    let err = train(
        d,
        &[
            "--config",
            cfg,
            "--out",
            "high",
            "--set",
            "train.matmul_precision=f16",
            "--set",
            &format!("train.loss_scale_init={init}"),
            "--set",
            "train.loss_scale_growth_interval=4",
        ],
    );
    let over = overflows(&err);
    println!("from 2^28: overflows at {over:?}");
    assert!(over.len() >= 5 && over[0] == (1, init), "{err}");
    let want = replay(init, 4, 20, &over);
    let st = saved_scale(&d.join("high"));
    assert_eq!(
        (st.scale, st.good_steps, st.overflows),
        (want.scale(), want.good_steps(), want.skipped_steps())
    );
    // The skipped steps changed nothing: the optimizer took 20 − skipped steps, and the loss
    // still fell.
    let l = losses(&d.join("high"));
    let (first, last) = (l.first().unwrap().1, l.last().unwrap().1);
    println!("from 2^28: loss {first} → {last}");
    assert!(last < first - 0.1, "{first} → {last}");
}

#[test]
fn an_f16_run_resumes_with_its_loss_scale() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = small_run(d);
    let cfg = cfg.to_str().unwrap();
    let sets = [
        "--set",
        "train.matmul_precision=f16",
        "--set",
        "train.loss_scale_init=268435456",
        "--set",
        "train.loss_scale_growth_interval=4",
    ];
    let mut whole = vec!["--config", cfg, "--out", "whole"];
    whole.extend(sets);
    train(d, &whole);
    // Stopped at step 10 (a checkpoint), then resumed to 20.
    let mut half = vec!["--config", cfg, "--out", "half", "--max-iters", "10"];
    half.extend(sets);
    train(d, &half);
    assert_eq!(
        lm_train::checkpoint::latest_checkpoint(&d.join("half"))
            .unwrap()
            .file_name()
            .unwrap(),
        "step-00000010"
    );
    train(d, &["--resume", "half"]);
    assert_eq!(losses(&d.join("half")), losses(&d.join("whole")));
    assert_eq!(saved_scale(&d.join("half")), saved_scale(&d.join("whole")));
}
