//! The `lm-train` binary: bad input gives a one-line error and a non-zero exit, and never
//! overwrites an existing checkpoint.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

#[test]
fn bad_inputs_fail_with_one_line_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = lm_train(&["train", "--recipe", "no-such-recipe"], d);
    assert_one_line_error(&out, "unknown recipe \"no-such-recipe\"");
    // Exit status (README): 1 for an error, 2 for a command line that does not parse.
    assert_eq!(out.status.code(), Some(1));
    let usage = lm_train(
        &[
            "train",
            "--recipe",
            "gpt-shakespeare-char",
            "--no-such-flag",
        ],
        d,
    );
    assert_eq!(usage.status.code(), Some(2));

    let cfg = tiny_config(d, "missing.txt");
    assert_one_line_error(
        &lm_train(&["train", "--config", cfg.to_str().unwrap()], d),
        "missing.txt",
    );

    std::fs::write(d.join("empty.txt"), "").unwrap();
    let cfg = tiny_config(d, "empty.txt");
    assert_one_line_error(
        &lm_train(&["train", "--config", cfg.to_str().unwrap()], d),
        "empty.txt: holds no document",
    );

    std::fs::write(d.join("one.txt"), "To be, or not to be").unwrap();
    let cfg = tiny_config(d, "one.txt");
    assert_one_line_error(
        &lm_train(&["train", "--config", cfg.to_str().unwrap()], d),
        "one.txt: holds 1 document(s), all of them in the validation split",
    );

    std::fs::write(
        d.join("short.txt"),
        "To be,
or not
to be",
    )
    .unwrap();
    let cfg = tiny_config(d, "short.txt");
    assert_one_line_error(
        &lm_train(&["train", "--config", cfg.to_str().unwrap()], d),
        "shorter than one block",
    );

    assert_one_line_error(&lm_train(&["train", "--resume", "nowhere"], d), "nowhere");
}

#[test]
fn truncated_checkpoint_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("corpus.txt"), &lm_train::data::SHAKESPEARE[..20_000]).unwrap();
    let cfg = tiny_config(d, "corpus.txt");
    let out = lm_train(
        &[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            "run",
            "--max-iters",
            "3",
            "--quiet",
        ],
        d,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("final: step 3") && stdout.contains("--- sample ---"),
        "{stdout}"
    );

    // Starting a new run into the same directory is refused.
    let again = lm_train(
        &["train", "--config", cfg.to_str().unwrap(), "--out", "run"],
        d,
    );
    assert_one_line_error(&again, "already holds a run");

    // Truncate the newest checkpoint's weights: resume must refuse and must not rewrite them.
    let weights = d.join("run/checkpoints/step-00000003/model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let out = lm_train(&["train", "--resume", "run", "--max-iters", "6"], d);
    assert_one_line_error(&out, "model.safetensors");
    assert_eq!(std::fs::read(&weights).unwrap().len(), bytes.len() / 2);

    // Resuming at k continues from k.
    std::fs::write(&weights, &bytes).unwrap();
    let out = lm_train(
        &["train", "--resume", "run", "--max-iters", "6", "--quiet"],
        d,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("resuming run at step 3") && stdout.contains("final: step 6"),
        "{stdout}"
    );
}

#[test]
fn a_run_killed_with_sigkill_resumes_to_the_same_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = kill_config(d);
    let cfg = cfg.to_str().unwrap();
    let out = lm_train(&["train", "--config", cfg, "--out", "whole", "--quiet"], d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let killed = kill_after_checkpoint(d, cfg, "killed", "step-00000010");
    let killed_at = losses(&d.join("killed")).last().map(|r| r.0).unwrap_or(0);
    assert!(
        killed && killed_at < 60,
        "the run finished before the kill (step {killed_at})"
    );

    let out = lm_train(&["train", "--resume", "killed", "--quiet"], d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(losses(&d.join("killed")), losses(&d.join("whole")));
}

#[test]
fn eval_sample_score_plot_and_tokenizer_verbs_work_on_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("corpus.txt"), &lm_train::data::SHAKESPEARE[..20_000]).unwrap();
    let cfg = tiny_config(d, "corpus.txt");
    let out = lm_train(
        &[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            "run",
            "--max-iters",
            "4",
            "--quiet",
        ],
        d,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = |o: Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(text(lm_train(&["eval", "run"], d)).contains("step 4: train loss"));
    assert!(
        text(lm_train(
            &["sample", "run", "--tokens", "10", "--prompt", "ROMEO:"],
            d
        ))
        .chars()
        .count()
            >= 10
    );
    // 13 characters, 12 predicted; longer than the 8-token context, so later tokens slide it.
    let scored = text(lm_train(&["score", "run", "First Citizen"], d));
    assert!(
        scored.contains("mean NLL") && scored.lines().count() == 13,
        "{scored}"
    );
    let plots = text(lm_train(&["plot", "run"], d));
    assert_eq!(plots.lines().count(), 4);
    // The PNG is a real 800×500 image with the series' colors in it; the SVG has the lines.
    let png = std::fs::read(d.join("run/loss.png")).unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(&png));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (800, 500));
    let colors: std::collections::HashSet<&[u8]> = buf.chunks(3).collect();
    assert!(
        colors.contains(&[31u8, 119, 180][..])
            && colors.contains(&[214u8, 39, 40][..])
            && colors.len() > 4
    );
    let svg = std::fs::read_to_string(d.join("run/loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() == 3);
    let tok = text(lm_train(
        &[
            "tokenizer",
            "train",
            "--kind",
            "wordpiece",
            "--family",
            "bert",
            "--vocab-size",
            "300",
            "--corpus",
            "corpus.txt",
            "--out",
            "wp.json",
        ],
        d,
    ));
    assert!(
        tok.contains("WordPiece") || tok.contains("Wordpiece"),
        "{tok}"
    );
    assert!(d.join("wp.json").exists());
}

/// A tiny BERT pretrained for a few steps into `dir/pre` (dropout 0.1, as the recipe has), and
/// the bert-finetune-pairs recipe pointed at it, shrunk so 200 steps take a second or two.
fn finetune_config(dir: &Path) -> lm_train::config::FinetuneConfig {
    use lm_train::config::FinetuneConfig;
    let pre = pretrain_tiny_bert(dir, 32, 4);
    let mut ft = FinetuneConfig::recipe("bert-finetune-pairs").unwrap();
    ft.finetune.init = pre.display().to_string();
    (ft.finetune.train_examples, ft.finetune.val_examples) = (200, 16);
    (ft.finetune.test_examples, ft.finetune.max_len) = (16, 32);
    (ft.train.max_iters, ft.train.eval_interval) = (200, 10);
    (ft.train.eval_iters, ft.train.log_interval) = (2, 1);
    ft.optim.warmup_iters = 5;
    ft
}

/// Everything a metrics line says about training, without its timings.
fn metric_lines(run: &Path) -> Vec<String> {
    lm_train::metrics::MetricsLog::read(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .map(|r| {
            format!(
                "{} {} {:?} {:?} {:?} {:?}",
                r.step, r.lr, r.train_loss, r.val_loss, r.grad_norm, r.metrics
            )
        })
        .collect()
}

#[test]
fn a_fine_tuning_run_killed_with_sigkill_resumes_to_the_same_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = d.join("ft.toml");
    std::fs::write(&cfg, finetune_config(d).to_toml()).unwrap();
    let cfg = cfg.to_str().unwrap();
    let out = lm_train(&["train", "--config", cfg, "--out", "whole", "--quiet"], d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let killed = kill_after_checkpoint(d, cfg, "killed", "step-00000010");
    assert!(
        killed && !d.join("killed/results.json").exists(),
        "the run finished before the kill"
    );

    let out = lm_train(&["train", "--resume", "killed", "--quiet"], d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (whole, killed) = (
        metric_lines(&d.join("whole")),
        metric_lines(&d.join("killed")),
    );
    assert_eq!(whole.len(), 200 + 21, "a line per step and per evaluation");
    assert!(whole.iter().any(|l| l.contains("val_accuracy")));
    assert_eq!(killed, whole);
    let results = |run: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(d.join(run).join("results.json")).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["best_checkpoint"] = serde_json::Value::Null; // the paths differ by run directory
        v
    };
    assert_eq!(results("killed"), results("whole"));
}

#[test]
fn a_fine_tuning_recipe_follows_its_configured_schedule() {
    use lm_train::config::ScheduleKind;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = finetune_config(tmp.path());
    cfg.optim.schedule = ScheduleKind::Cosine;
    (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_iters) = (1e-3, 1e-4, 4);
    (cfg.train.max_iters, cfg.train.eval_interval) = (20, 20);
    let run = tmp.path().join("cosine");
    lm_train::Trainer::new(cfg, &run, candle_core::Device::Cpu)
        .unwrap()
        .train()
        .unwrap();
    let lines: Vec<(u64, f64)> = lm_train::metrics::MetricsLog::read(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| r.val_loss.is_none())
        .map(|r| (r.step, r.lr))
        .collect();
    assert_eq!(lines.len(), 20);
    for (step, lr) in lines {
        // The line of step s reports the rate its update used, at position t = s − 1:
        // warmup 1e-3·t/4, then 1e-4 + ½(1e-3 − 1e-4)(1 + cos(π(t − 4)/16)).
        let t = (step - 1) as f64;
        let want = if t < 4.0 {
            1e-3 * t / 4.0
        } else {
            1e-4 + 0.5 * (1e-3 - 1e-4) * (1.0 + (std::f64::consts::PI * (t - 4.0) / 16.0).cos())
        };
        assert!(
            (lr - want).abs() < 1e-12,
            "step {step}: lr {lr}, cosine gives {want}"
        );
    }
}

/// `predict` on the run's test examples (with metrics), on them without gold (predictions
/// only), with a label the task never had (refused) and on an empty file (refused).
fn check_predict(d: &std::path::Path, run: &str, ft: &str) {
    let text = |o: Output, what: &str| {
        assert!(
            o.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let test_file = d.join(run).join("data/test.jsonl");
    let predicted = text(
        lm_train(&["predict", run, "--input", test_file.to_str().unwrap()], d),
        ft,
    );
    assert_eq!(predicted.lines().count(), 4, "{ft}: {predicted}");
    assert!(predicted.lines().all(|l| l.starts_with("{\"prediction\":")));
    // Without gold answers: the predictions, no metrics.
    let bare: String = std::fs::read_to_string(&test_file)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("label");
            o.remove("target");
            format!("{v}\n")
        })
        .collect();
    std::fs::write(d.join("bare.jsonl"), bare).unwrap();
    let out = lm_train(&["predict", run, "--input", "bare.jsonl"], d);
    assert!(
        out.status.success(),
        "{ft}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        4,
        "{ft}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).is_empty(), "{ft}");
    if ft.starts_with("bert") {
        // A gold label the task never had is refused, named.
        let text = std::fs::read_to_string(&test_file).unwrap();
        let first = text.lines().next().unwrap();
        let mut v: serde_json::Value = serde_json::from_str(first).unwrap();
        v["label"] = serde_json::json!("zzz");
        std::fs::write(d.join("odd.jsonl"), format!("{v}\n")).unwrap();
        assert_one_line_error(
            &lm_train(&["predict", run, "--input", "odd.jsonl"], d),
            "label(s) {\"zzz\"} are not among the task's classes",
        );
    }
    std::fs::write(d.join("none.jsonl"), "").unwrap();
    assert_one_line_error(
        &lm_train(&["predict", run, "--input", "none.jsonl"], d),
        "none.jsonl: holds no example to predict",
    );
}

#[test]
fn fine_tuned_runs_of_every_family_eval_sample_predict_plot_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("corpus.txt"), &lm_train::data::SHAKESPEARE[..30_000]).unwrap();
    let text = |o: Output, what: &str| {
        assert!(
            o.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    for (ft, pre) in [
        ("bert-finetune-pairs", "bert-mlm-nsp"),
        ("t5-table-to-text", "t5-span-corruption"),
        ("bart-table-to-text", "bart-denoising"),
        ("gpt-table-to-text", "gpt-shakespeare-bpe"),
    ] {
        let init = pretrained(d, pre);
        let mut c = lm_train::config::FinetuneConfig::recipe(ft).unwrap();
        c.finetune.init = init.display().to_string();
        (c.finetune.train_examples, c.finetune.val_examples) = (32, 4);
        (c.finetune.test_examples, c.finetune.max_len) = (4, 24);
        c.finetune.max_target_len = 4;
        (c.train.max_iters, c.train.eval_interval, c.train.eval_iters) = (6, 2, 1);
        (c.train.batch_size, c.optim.warmup_iters) = (4, 1);
        let cfg = d.join(format!("{ft}.toml"));
        std::fs::write(&cfg, c.to_toml()).unwrap();
        let run = format!("ft-{ft}");
        // Stopped at 4 of its 6 steps, resumed to the end below.
        let args = [
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            &run,
            "--max-iters",
            "4",
            "--quiet",
        ];
        let out = text(lm_train(&args, d), ft);
        assert!(
            out.contains("best val") && out.contains("test "),
            "{ft}: {out}"
        );
        assert!(
            text(lm_train(&["eval", &run], d), ft).contains("val_"),
            "{ft}"
        );
        let sample = lm_train(&["sample", &run, "--tokens", "3", "--temperature", "0"], d);
        if ft.starts_with("bert") {
            assert_one_line_error(&sample, "lm-train predict");
        } else {
            assert!(
                text(sample, ft).contains("output:") || ft.starts_with("gpt"),
                "{ft}"
            );
        }
        check_predict(d, &run, ft);
        assert_eq!(
            text(lm_train(&["plot", &run], d), ft).lines().count(),
            4,
            "{ft}"
        );
        let resumed = text(lm_train(&["train", "--resume", &run, "--quiet"], d), ft);
        assert!(resumed.contains("final: step 6"), "{ft}: {resumed}");
    }
}

#[test]
fn recipes_show_round_trips_through_train_config_and_overrides_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let shown = lm_train(&["recipes", "show", "gpt-shakespeare-char"], d);
    assert!(shown.status.success());
    std::fs::write(d.join("shown.toml"), &shown.stdout).unwrap();
    let parsed = lm_train::config::RunConfig::from_file(&d.join("shown.toml")).unwrap();
    assert_eq!(
        parsed,
        lm_train::config::RunConfig::recipe("gpt-shakespeare-char").unwrap()
    );
    std::fs::write(d.join("corpus.txt"), &lm_train::data::SHAKESPEARE[..20_000]).unwrap();
    let out = lm_train(
        &[
            "train",
            "--config",
            "shown.toml",
            "--out",
            "run",
            "--quiet",
            "--seed",
            "7",
            "--set",
            "data.corpus=corpus.txt",
            "--set",
            "model.n_embd=16",
            "--set",
            "model.block_size=8",
            "--set",
            "train.max_iters=2",
            "--set",
            "optim.warmup_iters=1",
            "--set",
            "optim.lr_decay_iters=2",
            "--set",
            "train.sample_tokens=0",
            "--threads",
            "1",
            "--device",
            "cpu",
        ],
        d,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("done: step 2 in "), "{said}");
    // The memory account at the start; the peak resident set at the end and in the metrics
    // (Linux, where the kernel reports it).
    assert!(
        said.contains("memory per rank: parameters ") && said.contains("optimizer state "),
        "{said}"
    );
    if lm_train::memory::peak_rss_bytes().is_some() {
        assert!(said.contains("; peak RSS "), "{said}");
        let log = lm_train::metrics::MetricsLog::read(&d.join("run/metrics.jsonl")).unwrap();
        let trained = log.iter().filter(|r| r.val_loss.is_none());
        assert!(trained.clone().count() > 0);
        assert!(trained
            .into_iter()
            .all(|r| r.peak_rss_mib.is_some_and(|m| m > 1.0)));
    }
    let saved = std::fs::read_to_string(d.join("run/config.toml")).unwrap();
    assert!(
        saved.contains("seed = 7") && saved.contains("n_embd = 16"),
        "{saved}"
    );
    assert_one_line_error(
        &lm_train(
            &[
                "train",
                "--config",
                "shown.toml",
                "--set",
                "model.family=gtp",
            ],
            d,
        ),
        "--set: model.family: unknown variant `gtp`",
    );
    assert_one_line_error(
        &lm_train(&["eval", "run", "--device", "tpu"], d),
        "--device",
    );
}

#[test]
fn stopping_steps_the_run_cannot_take_and_missing_runs_are_refused_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("c.txt"), &lm_train::data::SHAKESPEARE[..20_000]).unwrap();
    let cfg = tiny_config(d, "c.txt");
    let cfg = cfg.to_str().unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--config", cfg, "--out", "run", "--quiet"];
        args.extend_from_slice(extra);
        lm_train(&args, d)
    };
    assert_one_line_error(&train(&["--max-iters", "0"]), "nothing to train");
    assert_one_line_error(
        &train(&["--max-iters", "2001"]),
        "the run ends at train.max_iters = 2000",
    );
    assert!(!d.join("run").exists(), "a refused run wrote its directory");
    // A run shorter than its warmup trains, and says it never reaches the peak rate.
    let short = lm_train(
        &[
            "train",
            "--config",
            cfg,
            "--quiet",
            "--set",
            "train.max_iters=2",
            "--set",
            "optim.warmup_iters=5",
            "--set",
            "optim.lr_decay_iters=10",
            "--out",
            "short",
        ],
        d,
    );
    assert!(
        short.status.success(),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );
    let said = String::from_utf8_lossy(&short.stderr);
    assert!(
        said.contains("warning: optim.warmup_iters = 5 is not below train.max_iters = 2"),
        "{said}"
    );
    let out = train(&["--max-iters", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_one_line_error(
        &lm_train(&["train", "--resume", "run", "--max-iters", "5000"], d),
        "--set train.max_iters=5000",
    );
    assert_one_line_error(
        &lm_train(&["train", "--resume", "nowhere"], d),
        "nowhere: is not a run directory",
    );
    assert!(!d.join("nowhere").exists());
}
