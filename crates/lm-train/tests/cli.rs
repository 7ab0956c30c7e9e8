//! The `lm-train` binary: bad input gives a one-line error and a non-zero exit, and never
//! overwrites an existing checkpoint.

use std::path::Path;
use std::process::{Command, Output};

fn lm_train(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lm-train"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn tiny_config(dir: &Path, corpus: &str) -> std::path::PathBuf {
    let text = lm_train::config::TrainConfig::recipe("gpt-shakespeare-char")
        .unwrap()
        .to_toml();
    let text = text
        .replace("builtin:tinyshakespeare", corpus)
        .replace("n_embd = 128", "n_embd = 16")
        .replace("block_size = 64", "block_size = 8")
        .replace("batch_size = 12", "batch_size = 2")
        .replace("eval_iters = 20", "eval_iters = 1")
        .replace("sample_tokens = 400", "sample_tokens = 20");
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected failure");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {err}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{err}"
    );
}

#[test]
fn bad_inputs_fail_with_one_line_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = lm_train(&["train", "--recipe", "no-such-recipe"], d);
    assert_one_line_error(&out, "unknown recipe \"no-such-recipe\"");

    let cfg = tiny_config(d, "missing.txt");
    assert_one_line_error(
        &lm_train(&["train", "--config", cfg.to_str().unwrap()], d),
        "missing.txt",
    );

    std::fs::write(d.join("empty.txt"), "").unwrap();
    let cfg = tiny_config(d, "empty.txt");
    assert_one_line_error(
        &lm_train(&["train", "--config", cfg.to_str().unwrap()], d),
        "empty.txt: the file is empty",
    );

    std::fs::write(d.join("short.txt"), "To be, or not to be").unwrap();
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
