//! The one grammar of model references, through the `lm-train` binary: a run, one of its
//! checkpoints, a HuggingFace directory, or a hub id in the local Hugging Face cache.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// Copies a checkpoint's HuggingFace files (config.json, model.safetensors, tokenizer.json)
/// into `to`, a directory outside any run.
fn as_hf_dir(checkpoint: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(checkpoint.join(f), to.join(f)).unwrap();
    }
}

/// One grammar of model references: `score` (GPT) and `embed` (BERT) give the same answer for a
/// run, its newest checkpoint and a HuggingFace directory holding the same files; a fine-tuning
/// run's init takes all three; `eval` of a HuggingFace directory says which commands read one;
/// something that is none of the three is named with the three forms.
#[test]
fn every_command_that_takes_a_model_takes_a_run_a_checkpoint_or_an_hf_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("corpus.txt"), &lm_train::data::SHAKESPEARE[..30_000]).unwrap();
    let stdout = |o: Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    for (recipe, verb, arg) in [
        ("gpt-shakespeare-bpe", "score", "First Citizen"),
        ("bert-mlm-nsp", "embed", "First Citizen"),
    ] {
        let run = pretrained(d, recipe);
        let ckpt = lm_train::checkpoint::latest_checkpoint(&run).unwrap();
        let hf = d.join(format!("{recipe}-hf"));
        as_hf_dir(&ckpt, &hf);
        let answers: Vec<String> = [&run, &ckpt, &hf]
            .iter()
            .map(|m| stdout(lm_train(&[verb, m.to_str().unwrap(), arg], d)))
            .collect();
        assert!(!answers[0].is_empty(), "{recipe}");
        assert!(
            answers.iter().all(|a| *a == answers[0]),
            "{recipe}: {answers:?}"
        );
        assert_one_line_error(
            &lm_train(&["eval", hf.to_str().unwrap()], d),
            "is a HuggingFace directory, not a run",
        );
    }
    assert_one_line_error(
        &lm_train(&["score", "corpus.txt", "x"], d),
        "a run directory (config.toml, checkpoints/), one of its checkpoints",
    );
    assert_one_line_error(
        &lm_train(&["embed", "nowhere", "x"], d),
        "nowhere: does not exist",
    );
    // Fine-tuning starts from the run, its checkpoint or the HuggingFace copy alike.
    let run = d.join("bert-mlm-nsp");
    let ckpt = lm_train::checkpoint::latest_checkpoint(&run).unwrap();
    for (i, init) in [&run, &ckpt, &d.join("bert-mlm-nsp-hf")].iter().enumerate() {
        let mut c = lm_train::config::FinetuneConfig::recipe("bert-finetune-pairs").unwrap();
        c.finetune.init = init.display().to_string();
        (c.finetune.train_examples, c.finetune.val_examples) = (16, 4);
        (c.finetune.test_examples, c.finetune.max_len) = (4, 24);
        (c.train.max_iters, c.train.eval_interval, c.train.eval_iters) = (2, 2, 1);
        (c.train.batch_size, c.optim.warmup_iters) = (4, 1);
        let cfg = d.join(format!("ft-{i}.toml"));
        std::fs::write(&cfg, c.to_toml()).unwrap();
        let args = [
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            &format!("ft-{i}"),
            "--quiet",
        ];
        assert!(
            stdout(lm_train(&args, d)).contains("final: step 2"),
            "{init:?}"
        );
    }
}

/// Lays `files` (a HuggingFace directory) out in `hub` as huggingface_hub's cache does for
/// model `id`: `models--org--name/blobs/<hash>`, `snapshots/<commit>/<file>` links to the
/// blobs, `refs/main` holding the commit.
fn cache_as_hub(hub: &Path, id: &str, files: &Path) {
    let repo = hub.join(format!("models--{}", id.replace('/', "--")));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    for (i, entry) in std::fs::read_dir(files).unwrap().enumerate() {
        let entry = entry.unwrap();
        let blob = format!("blob{i:04}");
        std::fs::copy(entry.path(), repo.join("blobs").join(&blob)).unwrap();
        let link = snapshot.join(entry.file_name());
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&blob), link).unwrap();
    }
    std::fs::write(repo.join("refs/main"), commit).unwrap();
}

/// `lm-train ARGS` in `d` with `hub` as the Hugging Face cache.
fn lm_train_with_hub(d: &Path, hub: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lm-train"))
        .args(args)
        .current_dir(d)
        .env("HF_HUB_CACHE", hub)
        .env_remove("HF_HOME")
        .output()
        .unwrap()
}

fn stdout(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Zero-shot evaluation reads hub model `id` as it reads its directory `files` (the report
/// printed: no run).
fn eval_from_the_hub(d: &Path, hub: &Path, id: &str, files: &Path) {
    let with_hub = |args: &[&str]| lm_train_with_hub(d, hub, args);
    // Zero-shot evaluation reads the hub model too (its report printed: no run).
    let task = "{\"context\": \"First\", \"choices\": [\" Citizen\", \" zz\"], \"label\": 0}";
    std::fs::write(d.join("mc.jsonl"), task).unwrap();
    let eval = |m: &str| stdout(with_hub(&["eval", m, "--task", "mc.jsonl"]));
    let (hub_report, dir_report) = (eval(id), eval(files.to_str().unwrap()));
    assert!(hub_report.contains("\"items\": 1"), "{hub_report}");
    let accuracy = |r: &str| {
        r.lines()
            .find(|l| l.contains("\"accuracy\""))
            .map(String::from)
    };
    assert_eq!(accuracy(&hub_report), accuracy(&dir_report));
}

/// A hub id resolves from the local cache (HF_HUB_CACHE) wherever a model is taken: `score`,
/// `embed`, `sample`, `finetune.init` and `tokenizer_file` read the snapshot as they read the
/// directory; `eval` (without `--task`) and `predict` resolve it and say it is not a run; a model not in the cache
/// names where it was looked for and the command that fetches it. Nothing is downloaded.
#[test]
fn hub_ids_resolve_from_the_local_cache_for_every_command_that_takes_a_model() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("corpus.txt"), &lm_train::data::SHAKESPEARE[..30_000]).unwrap();
    let hub = d.join("hub");
    let with_hub = |args: &[&str]| lm_train_with_hub(d, &hub, args);
    for (recipe, verb, id) in [
        ("gpt-shakespeare-bpe", "score", "lm-train-tests/tiny-gpt"),
        ("bert-mlm-nsp", "embed", "lm-train-tests/tiny-bert"),
    ] {
        let ckpt = lm_train::checkpoint::latest_checkpoint(&pretrained(d, recipe)).unwrap();
        let files = d.join(format!("{recipe}-files"));
        as_hf_dir(&ckpt, &files);
        cache_as_hub(&hub, id, &files);
        let direct = stdout(with_hub(&[verb, files.to_str().unwrap(), "First Citizen"]));
        assert_eq!(
            stdout(with_hub(&[verb, id, "First Citizen"])),
            direct,
            "{id}"
        );
        for reader in [&["eval", id][..], &["predict", id, "--input", "x.jsonl"]] {
            assert_one_line_error(&with_hub(reader), "is a HuggingFace directory, not a run");
        }
        // `sample` generates from the hub model as from its directory (GPT), or says BERT
        // does not generate.
        let sample = |m: &str| with_hub(&["sample", m, "--tokens", "5", "--prompt", "ROMEO:"]);
        if verb == "score" {
            let text = stdout(sample(id));
            assert!(text.starts_with("ROMEO:") && text.len() > 6, "{text}");
            assert_eq!(text, stdout(sample(files.to_str().unwrap())));
            eval_from_the_hub(d, &hub, id, &files);
        } else {
            assert_one_line_error(&sample(id), "a bert model does not generate");
        }
    }
    // Fine-tuning from a hub id, and a tokenizer named by one.
    let mut c = lm_train::config::FinetuneConfig::recipe("bert-finetune-pairs").unwrap();
    c.finetune.init = "lm-train-tests/tiny-bert".into();
    (c.finetune.train_examples, c.finetune.val_examples) = (16, 4);
    (c.finetune.test_examples, c.finetune.max_len) = (4, 24);
    (c.train.max_iters, c.train.eval_interval, c.train.eval_iters) = (2, 2, 1);
    (c.train.batch_size, c.optim.warmup_iters) = (4, 1);
    std::fs::write(d.join("ft.toml"), c.to_toml()).unwrap();
    let out = stdout(with_hub(&[
        "train", "--config", "ft.toml", "--out", "ft", "--quiet",
    ]));
    assert!(out.contains("final: step 2"), "{out}");
    let gpt = recipe_with(d, "tok.toml", &[("builtin:tinyshakespeare", "corpus.txt")]);
    let args = [
        "train",
        "--config",
        gpt.to_str().unwrap(),
        "--out",
        "tok",
        "--max-iters",
        "1",
        "--quiet",
        "--set",
        "data.tokenizer = \"bpe\"",
        "--set",
        "data.tokenizer_file = \"lm-train-tests/tiny-gpt\"",
    ];
    stdout(with_hub(&args));
    assert_eq!(
        std::fs::read(d.join("tok/tokenizer.json")).unwrap(),
        std::fs::read(d.join("gpt-shakespeare-bpe-files/tokenizer.json")).unwrap()
    );
    // Not in the cache: where it looked, and how to fetch it.
    assert_one_line_error(
        &with_hub(&["score", "lm-train-tests/absent", "x"]),
        "no model \"lm-train-tests/absent\" (revision main) is in the Hugging Face cache",
    );
    let said =
        String::from_utf8_lossy(&with_hub(&["embed", "org/absent@v2", "x"]).stderr).into_owned();
    assert!(
        said.contains(&hub.join("models--org--absent").display().to_string())
            && said.contains("huggingface-cli download org/absent"),
        "{said}"
    );
}
