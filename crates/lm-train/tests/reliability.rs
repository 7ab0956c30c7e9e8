//! The guarantees of docs/reliability.md, one test per failure a tester found: bad sizes and data
//! are refused before anything runs, output can be piped, readers never write, diverged weights
//! never reach a checkpoint, one writer per run, a resumed run is the run it claims to be, damage
//! is detected, and Ctrl-C saves.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// `lm-train ARGS` in `d`, which must succeed; its stdout.
fn ok(args: &[&str], d: &Path) -> String {
    let out = lm_train(args, d);
    assert!(
        out.status.success(),
        "lm-train {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 6-step tiny run in `d/run` (checkpoints at 0, 4 and 6), trained through the binary.
fn tiny_run(d: &Path) -> std::path::PathBuf {
    std::fs::write(d.join("corpus.txt"), &lm_train::data::SHAKESPEARE[..20_000]).unwrap();
    let cfg = recipe_with(
        d,
        "tiny.toml",
        &[
            ("builtin:tinyshakespeare", "corpus.txt"),
            ("n_embd = 128", "n_embd = 16"),
            ("block_size = 64", "block_size = 8"),
            ("batch_size = 12", "batch_size = 2"),
            ("max_iters = 2000", "max_iters = 6"),
            ("lr_decay_iters = 2000", "lr_decay_iters = 6"),
            ("warmup_iters = 100", "warmup_iters = 2"),
            ("eval_interval = 250", "eval_interval = 4"),
            ("eval_iters = 20", "eval_iters = 1"),
            ("sample_tokens = 400", "sample_tokens = 0"),
        ],
    );
    ok(
        &[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            "run",
            "--quiet",
        ],
        d,
    );
    cfg
}

#[test]
fn sizes_beyond_the_machine_are_refused_with_the_figure() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for (from, to, key) in [
        (
            "n_embd = 128",
            "n_embd = 4611686018427387904",
            "model.n_embd",
        ),
        (
            "batch_size = 12",
            "batch_size = 1000000000000",
            "train.batch_size",
        ),
        ("n_layer = 4", "n_layer = 100000000", "model.n_layer"),
    ] {
        let cfg = recipe_with(d, "big.toml", &[(from, to)]);
        let out = lm_train(&["train", "--config", cfg.to_str().unwrap()], d);
        assert_one_line_error(&out, key);
        assert_one_line_error(&out, "GiB are available");
    }
}

/// Writes the JSONL files and a fine-tuning config over them; returns the config's path.
fn jsonl_task(d: &Path, train: &str, val: &str, test: &str, edits: &[(&str, &str)]) -> String {
    for (name, text) in [("train", train), ("val", val), ("test", test)] {
        std::fs::write(d.join(format!("{name}.jsonl")), text).unwrap();
    }
    let mut text = lm_train::config::FinetuneConfig::recipe("bert-finetune-pairs")
        .unwrap()
        .to_toml()
        .replace("task = \"pairs\"", "task = \"jsonl\"\ntrain_file = \"train.jsonl\"\nval_file = \"val.jsonl\"\ntest_file = \"test.jsonl\"");
    for (from, to) in edits {
        assert!(text.contains(from), "{from}");
        text = text.replace(from, to);
    }
    std::fs::write(d.join("ft.toml"), text).unwrap();
    d.join("ft.toml").display().to_string()
}

#[test]
fn bad_fine_tuning_data_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    pretrain_tiny_bert(d, 24, 1);
    let init = ("init = \"runs/bert-mlm-nsp\"", "init = \"pre\"");
    let line = |t: &str, l: &str| format!("{{\"text\": \"{t}\", \"label\": \"{l}\"}}\n");
    let good = line("a", "x") + &line("b", "y");

    let cfg = jsonl_task(d, "", &good, &good, &[init]);
    assert_one_line_error(&lm_train(&["train", "--config", &cfg], d), "0 training");
    let cfg = jsonl_task(d, &good, &good, "", &[init]);
    assert_one_line_error(
        &lm_train(&["train", "--config", &cfg], d),
        "0 test examples",
    );
    let cfg = jsonl_task(d, &good, &line("c", "z"), &good, &[init]);
    assert_one_line_error(
        &lm_train(&["train", "--config", &cfg], d),
        "label \"z\" never occurs in training",
    );
    let cfg = jsonl_task(
        d,
        &good,
        &good,
        &good,
        &[init, ("max_len = 64", "max_len = 2")],
    );
    assert_one_line_error(
        &lm_train(&["train", "--config", &cfg], d),
        "finetune.max_len",
    );
    let cfg = jsonl_task(
        d,
        &good,
        &good,
        &good,
        &[init, ("max_target_len = 40", "max_target_len = 0")],
    );
    assert_one_line_error(
        &lm_train(&["train", "--config", &cfg], d),
        "finetune.max_target_len",
    );
    // A corrupt optimizer state: the step counter replaced by an empty tensor.
    let cfg = jsonl_task(
        d,
        &good,
        &good,
        &good,
        &[
            init,
            ("max_iters = 300", "max_iters = 2"),
            ("warmup_iters = 30", "warmup_iters = 1"),
        ],
    );
    ok(&["train", "--config", &cfg, "--out", "ft", "--quiet"], d);
    let ckpt = lm_train::checkpoint::latest_checkpoint(&d.join("ft")).unwrap();
    let opt = ckpt.join("optimizer.safetensors");
    let mut state = candle_core::safetensors::load(&opt, &candle_core::Device::Cpu).unwrap();
    state.insert(
        "step".into(),
        candle_core::Tensor::zeros(0, candle_core::DType::I64, &candle_core::Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&state, &opt).unwrap();
    // With its checksum updated, so that the loader itself meets the bad tensor.
    let mut st = lm_train::checkpoint::read_state(&ckpt).unwrap();
    st.checksums.insert(
        "optimizer.safetensors".into(),
        lm_train::checkpoint::FileSum::of(&opt).unwrap(),
    );
    std::fs::write(ckpt.join("state.json"), serde_json::to_string(&st).unwrap()).unwrap();
    let out = lm_train(&["train", "--resume", "ft"], d);
    assert_one_line_error(&out, "step count");
    assert_one_line_error(&out, "optimizer.safetensors");
    // A model directory whose tokenizer lacks a token the family's encodings need ([SEP],
    // renamed throughout tokenizer.json) is refused naming both, not encoded with id 0.
    let pre = lm_train::checkpoint::latest_checkpoint(&d.join("pre")).unwrap();
    let hf = d.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(pre.join(f), hf.join(f)).unwrap();
    }
    let tok = std::fs::read_to_string(pre.join("tokenizer.json")).unwrap();
    assert!(tok.contains("\"[SEP]\""));
    std::fs::write(
        hf.join("tokenizer.json"),
        tok.replace("\"[SEP]\"", "\"[SEQ]\""),
    )
    .unwrap();
    let cfg = jsonl_task(
        d,
        &good,
        &good,
        &good,
        &[("init = \"runs/bert-mlm-nsp\"", "init = \"hf\"")],
    );
    let out = lm_train(&["train", "--config", &cfg, "--out", "ft-hf"], d);
    assert_one_line_error(&out, "hf/tokenizer.json");
    assert_one_line_error(&out, "has no [SEP] token");
}

#[test]
fn a_closed_output_pipe_does_not_stop_training() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = kill_config(d);
    // `lm-train train … | head -1`: read one line, then close the pipe.
    let mut child = Command::new(env!("CARGO_BIN_EXE_lm-train"))
        .args(["train", "--config", cfg.to_str().unwrap(), "--out", "run"])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("training kill"), "{first}");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(d
        .join("run/checkpoints/step-00000060/model.safetensors")
        .exists());
}

/// Every file of the run directory with its contents.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn readers_never_write_to_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    tiny_run(d);
    // As if the trainer were still running: a line past the newest checkpoint.
    let metrics = d.join("run/metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str(
        "{\"step\":7,\"lr\":0.001,\"train_loss\":3.0,\"tokens_per_sec\":1.0,\"elapsed_s\":1.0}\n",
    );
    std::fs::write(&metrics, &text).unwrap();
    let before = snapshot(&d.join("run"));
    assert!(ok(&["eval", "run"], d).contains("step 6: train loss"));
    ok(&["sample", "run", "--tokens", "5"], d);
    ok(&["score", "run", "First Citizen"], d);
    assert_eq!(snapshot(&d.join("run")), before);
}

#[test]
fn diverged_weights_never_reach_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = tiny_run(d);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("lr = 0.001", "lr = 1000000.0")
        .replace("min_lr = 0.0001", "min_lr = 1000000.0")
        .replace("warmup_iters = 2", "warmup_iters = 0")
        .replace("grad_clip = 1.0", "grad_clip = 0.0");
    for policy in ["stop", "skip"] {
        let path = d.join(format!("{policy}.toml"));
        std::fs::write(
            &path,
            text.replace(
                "on_nonfinite_loss = \"stop\"",
                &format!("on_nonfinite_loss = \"{policy}\""),
            ),
        )
        .unwrap();
        let out = lm_train(
            &["train", "--config", path.to_str().unwrap(), "--out", policy],
            d,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        if policy == "stop" {
            assert!(!out.status.success(), "a diverged run stops");
            assert!(
                err.contains("NaN or infinite") || err.contains("loss is"),
                "{err}"
            );
        }
        // No checkpoint holds a NaN or infinite weight.
        let left = lm_train::checkpoint::list_checkpoints(&d.join(policy)).unwrap();
        assert!(!left.is_empty(), "{policy}: {err}");
        for (step, dir) in &left {
            let w = candle_core::safetensors::load(
                dir.join("model.safetensors"),
                &candle_core::Device::Cpu,
            )
            .unwrap();
            for (name, t) in w {
                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!(
                    v.iter().all(|x| x.is_finite()),
                    "{policy}: step {step}: {name}"
                );
            }
        }
        // `eval` prints finite losses or fails saying they are not.
        let e = lm_train(&["eval", policy], d);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&e.stdout),
            String::from_utf8_lossy(&e.stderr),
        );
        let finite = stdout
            .split("val loss ")
            .nth(1)
            .and_then(|v| v.split(|c: char| c == ',' || c.is_whitespace()).next())
            .and_then(|v| v.parse::<f32>().ok())
            .is_some_and(f32::is_finite);
        assert_eq!(e.status.success(), finite, "{policy}: {stdout} {stderr}");
        if !finite {
            assert!(stderr.contains("the evaluation is not finite"), "{stderr}");
        }
    }
}

#[test]
fn one_writer_per_run_and_stale_locks_are_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = kill_config(d);
    let cfg = cfg.to_str().unwrap();
    let mut first = Command::new(env!("CARGO_BIN_EXE_lm-train"))
        .args(["train", "--config", cfg, "--out", "run", "--quiet"])
        .current_dir(d)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    while !d.join("run/checkpoints/step-00000000").exists() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let second = lm_train(&["train", "--resume", "run", "--quiet"], d);
    assert_one_line_error(&second, &format!("locked by pid {}", first.id()));
    first.kill().unwrap(); // SIGKILL: its lock stays behind, stale
    first.wait().unwrap();
    assert!(d.join("run/lock").exists());
    let out = lm_train(&["train", "--resume", "run", "--quiet"], d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no longer runs; taking it over"));
    assert!(!d.join("run/lock").exists(), "released at the end");
}

#[test]
fn resume_refuses_a_changed_model_or_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    tiny_run(d);
    let config = d.join("run/config.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, original.replace("n_layer = 4", "n_layer = 2")).unwrap();
    for args in [&["train", "--resume", "run"][..], &["eval", "run"][..]] {
        assert_one_line_error(&lm_train(args, d), "model.n_layer: is 2 but the checkpoint");
    }
    std::fs::write(&config, &original).unwrap();
    // Another tokenizer in the run directory, then in the checkpoint that `score` reads.
    ok(
        &[
            "tokenizer",
            "train",
            "--kind",
            "bpe",
            "--vocab-size",
            "300",
            "--corpus",
            "corpus.txt",
            "--out",
            "bpe.json",
        ],
        d,
    );
    let run_tok = d.join("run/tokenizer.json");
    let saved = std::fs::read(&run_tok).unwrap();
    std::fs::copy(d.join("bpe.json"), &run_tok).unwrap();
    assert_one_line_error(&lm_train(&["eval", "run"], d), "tokenizer.json: differs");
    std::fs::write(&run_tok, saved).unwrap();
    let ckpt = d.join("run/checkpoints/step-00000006");
    std::fs::copy(d.join("bpe.json"), ckpt.join("tokenizer.json")).unwrap();
    assert_one_line_error(
        &lm_train(&["score", ckpt.to_str().unwrap(), "First Citizen"], d),
        "not this model's tokenizer",
    );
}

/// Flips one bit of one weight of a safetensors file (it still parses); again to mend it.
fn flip_a_weight_bit(weights: &Path) {
    let mut bytes = std::fs::read(weights).unwrap();
    let last = bytes.len() - 7;
    bytes[last] ^= 0x40;
    std::fs::write(weights, &bytes).unwrap();
}

/// A small GPT trained `steps` steps into `d/run`, evaluated and checkpointed every 2; its
/// corpus by full path, so that the library finds it from any directory.
fn small_run(d: &Path, steps: u64) {
    let cfg = small_gpt(d, "small.toml", steps, 1, (2, 1));
    let text = std::fs::read_to_string(&cfg).unwrap();
    let corpus = d.join("corpus.txt").display().to_string();
    std::fs::write(&cfg, text.replace("\"corpus.txt\"", &format!("{corpus:?}"))).unwrap();
    let cfg = cfg.to_str().unwrap();
    ok(&["train", "--config", cfg, "--out", "run", "--quiet"], d);
}

#[test]
fn a_damaged_checkpoint_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    tiny_run(d);
    let weights = d.join("run/checkpoints/step-00000006/model.safetensors");
    flip_a_weight_bit(&weights);
    for args in [&["eval", "run"][..], &["train", "--resume", "run"][..]] {
        assert_one_line_error(&lm_train(args, d), "model.safetensors: damaged");
    }
    // With the weights mended, the checkpoint's copy of the run's config changed without
    // changing its length is caught by its checksum too.
    flip_a_weight_bit(&weights);
    let saved = d.join("run/checkpoints/step-00000006/run_config.toml");
    let text = std::fs::read_to_string(&saved).unwrap();
    std::fs::write(&saved, text.replacen("seed = ", "seed=  ", 1)).unwrap();
    assert_one_line_error(&lm_train(&["eval", "run"], d), "run_config.toml: damaged");
}

#[test]
fn ctrl_c_finishes_the_step_checkpoints_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = kill_config(d);
    let cfg = cfg.to_str().unwrap();
    ok(&["train", "--config", cfg, "--out", "whole", "--quiet"], d);
    let child = Command::new(env!("CARGO_BIN_EXE_lm-train"))
        .args(["train", "--config", cfg, "--out", "stopped", "--quiet"])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while !d.join("stopped/checkpoints/step-00000010").exists() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("interrupted at step"),
        "{err}"
    );
    assert!(err.contains("lm-train train --resume"), "{err}");
    // The checkpoint of the interrupted step is the newest.
    let step: u64 = err
        .split("interrupted at step ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap()
        .parse()
        .unwrap();
    let newest = lm_train::checkpoint::list_checkpoints(&d.join("stopped")).unwrap();
    assert_eq!(newest.last().unwrap().0, step);
    ok(&["train", "--resume", "stopped", "--quiet"], d);
    assert_eq!(losses(&d.join("stopped")), losses(&d.join("whole")));
}

#[test]
fn smaller_cases_are_handled() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = tiny_run(d);
    let cfg = cfg.to_str().unwrap();
    // A prompt outside a char vocabulary, and an unbounded sample.
    assert_one_line_error(
        &lm_train(&["sample", "run", "--prompt", "ROMEO ☃"], d),
        "'☃' is not in the tokenizer's alphabet",
    );
    assert_one_line_error(
        &lm_train(&["sample", "run", "--tokens", "100000000"], d),
        "more than 100000",
    );
    // An infinite learning rate names its key and file.
    let text = std::fs::read_to_string(cfg)
        .unwrap()
        .replace("lr = 0.001", "lr = inf");
    std::fs::write(d.join("inf.toml"), text).unwrap();
    assert_one_line_error(
        &lm_train(&["train", "--config", "inf.toml"], d),
        "inf.toml: optim.lr",
    );
    // A corpus without blank lines: one document per line, and it trains.
    let lines: String = lm_train::data::SHAKESPEARE[..20_000]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(d.join("corpus.txt"), lines).unwrap();
    ok(&["train", "--config", cfg, "--out", "lines", "--quiet"], d);
    // --max-iters stops this call only: the saved config keeps max_iters, a resume goes on.
    ok(
        &[
            "train",
            "--config",
            cfg,
            "--out",
            "short",
            "--max-iters",
            "2",
            "--quiet",
        ],
        d,
    );
    let saved = std::fs::read_to_string(d.join("short/config.toml")).unwrap();
    assert!(saved.contains("max_iters = 6"), "{saved}");
    // A checkpoint write killed before (a leftover temporary directory of a dead process).
    let leftover = d.join("short/checkpoints/step-00000004.tmp-999999999");
    std::fs::create_dir_all(&leftover).unwrap();
    let out = ok(&["train", "--resume", "short", "--quiet"], d);
    assert!(out.contains("final: step 6"), "{out}");
    assert!(!leftover.exists());
}

#[test]
fn readers_load_weights_only_and_do_not_train() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    small_run(d, 2);
    // The optimizer state gone from the newest checkpoint: readers never needed it…
    let ckpt = lm_train::checkpoint::latest_checkpoint(&d.join("run")).unwrap();
    std::fs::remove_file(ckpt.join("optimizer.safetensors")).unwrap();
    let out = lm_train(&["eval", "run"], d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("val loss"));
    // …a resumed run does, and says which file is missing.
    assert_one_line_error(
        &lm_train(&["train", "--resume", "run"], d),
        "optimizer.safetensors",
    );
    // A trainer opened for reading refuses to train.
    let mut reader = lm_train::Trainer::open(&d.join("run"), candle_core::Device::Cpu).unwrap();
    let e = reader.train().unwrap_err().to_string();
    assert!(e.contains("opened for reading"), "{e}");
}

#[test]
fn an_earlier_checkpoint_is_read_by_its_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    small_run(d, 4);
    let said = ok(&["eval", "run/checkpoints/step-00000002"], d);
    assert!(said.starts_with("step 2:"), "{said}");
    // The newest damaged: the run is refused, saying how to read an earlier one, which works.
    flip_a_weight_bit(&d.join("run/checkpoints/step-00000004/model.safetensors"));
    assert_one_line_error(&lm_train(&["eval", "run"], d), "RUN/checkpoints/step-N");
    assert!(
        ok(
            &["sample", "run/checkpoints/step-00000002", "--tokens", "3"],
            d
        )
        .len()
            > 3
    );
    // A checkpoint copied out of its run is refused, naming what it needs.
    std::fs::create_dir_all(d.join("loose")).unwrap();
    for f in ["state.json", "model.safetensors"] {
        std::fs::copy(
            d.join("run/checkpoints/step-00000002").join(f),
            d.join("loose").join(f),
        )
        .unwrap();
    }
    assert_one_line_error(
        &lm_train(&["eval", "loose"], d),
        "outside its run directory",
    );
}

#[test]
fn a_run_resumes_from_an_earlier_checkpoint_setting_the_later_ones_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    small_run(d, 4);
    let log = d.join("run/metrics.jsonl");
    let losses = || {
        lm_train::metrics::MetricsLog::read(&log)
            .unwrap()
            .iter()
            .map(|r| (r.step, r.lr, r.train_loss, r.grad_norm, r.val_loss))
            .collect::<Vec<_>>()
    };
    let first = losses();
    let out = lm_train(
        &[
            "train",
            "--resume",
            "run/checkpoints/step-00000002",
            "--quiet",
        ],
        d,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("set aside"));
    // Steps 3 and 4 again, the same as the first time (resume is exact); the first step 4 is
    // kept aside, not deleted.
    assert_eq!(losses(), first);
    let aside: Vec<_> = std::fs::read_dir(d.join("run/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("superseded-after-step-00000002-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let kept = d
        .join("run/checkpoints")
        .join(&aside[0])
        .join("step-00000004");
    assert!(kept.join("model.safetensors").exists());
    assert!(d
        .join("run/checkpoints/step-00000004/model.safetensors")
        .exists());
}
