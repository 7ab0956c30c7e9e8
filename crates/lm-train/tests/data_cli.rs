//! `lm-train data`: a prepare killed with SIGKILL and run again writes the same bytes as one
//! never interrupted; bad input is one line naming the file; import and verify.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// `n` paragraphs of generated text (about 60 bytes each), deterministic.
fn corpus(path: &Path, n: usize) {
    let words = [
        "thou", "art", "the", "king", "of", "all", "that", "is", "fair", "and", "good",
    ];
    let mut text = String::with_capacity(n * 64);
    let mut x = 7u64;
    for p in 0..n {
        for _ in 0..10 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push_str(words[(x >> 33) as usize % words.len()]);
            text.push(' ');
        }
        text.push_str(&format!("{p}.\n\n"));
    }
    std::fs::write(path, text).unwrap();
}

fn char_tokenizer(path: &Path) {
    let tok = lm_train::tokenizer::TextTokenizer::Char(lm_train::tokenizer::CharTokenizer::fit(
        "abcdefghijklmnopqrstuvwxyz0123456789 .\n",
    ));
    tok.save(path).unwrap();
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_prepare_killed_and_run_again_writes_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    corpus(&d.join("corpus.txt"), 400_000); // ~25 MB
    char_tokenizer(&d.join("tok.json"));
    let args = |out: &str| -> Vec<String> {
        [
            "data",
            "prepare",
            "--tokenizer",
            "tok.json",
            "--shard-tokens",
            "500000",
            "--out",
            out,
            "corpus.txt",
        ]
        .map(String::from)
        .to_vec()
    };
    let whole = lm_train(
        &args("whole").iter().map(String::as_str).collect::<Vec<_>>(),
        d,
    );
    assert!(
        whole.status.success(),
        "{}",
        String::from_utf8_lossy(&whole.stderr)
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_lm-train"))
        .args(args("cut"))
        .current_dir(d)
        .spawn()
        .unwrap();
    // Kill it once a few shard pairs are on disk, before it finishes.
    let started = std::time::Instant::now();
    while !d.join("cut/train-00002.bin").exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the prepare finished before it could be killed"
        );
        assert!(started.elapsed().as_secs() < 120, "no shard after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !d.join("cut/manifest.json").exists(),
        "killed before it finished"
    );
    let again = lm_train(
        &args("cut").iter().map(String::as_str).collect::<Vec<_>>(),
        d,
    );
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(files(&d.join("cut")), files(&d.join("whole")));
    let verify = lm_train(&["data", "verify", "cut"], d);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn data_commands_refuse_bad_input_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    char_tokenizer(&d.join("tok.json"));
    std::fs::write(d.join("bad.txt"), b"fine\n\nnot \xc3\x28 fine\n").unwrap();
    let prep = |input: &str| {
        lm_train(
            &[
                "data",
                "prepare",
                "--tokenizer",
                "tok.json",
                "--out",
                "ds",
                input,
            ],
            d,
        )
    };
    assert_one_line_error(&prep("bad.txt"), "bad.txt: invalid UTF-8 at byte 10");
    std::fs::write(d.join("x.jsonl"), "{\"text\": \"a\"}\n{\"txt\": \"b\"}\n").unwrap();
    assert_one_line_error(&prep("x.jsonl"), "x.jsonl:2: no field \"text\"");
    assert_one_line_error(&prep("nothing/*.parquet"), "nothing/*.parquet");
    std::fs::write(d.join("x.json"), "[]").unwrap();
    assert_one_line_error(&prep("x.json"), "JSON Lines");
    assert!(!d.join("ds/manifest.json").exists());
    // A damaged shard: verify names it.
    std::fs::write(d.join("ok.txt"), "one two\n\nthree four\n\nfive six\n").unwrap();
    let out = lm_train(
        &[
            "data",
            "prepare",
            "--tokenizer",
            "tok.json",
            "--val-fraction",
            "0.4",
            "--out",
            "ok",
            "ok.txt",
        ],
        d,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shard = d.join("ok/train-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[70] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    assert_one_line_error(
        &lm_train(&["data", "verify", "ok"], d),
        "train-00000.bin: checksum",
    );
}

#[test]
fn an_unwritable_cache_prepares_the_corpus_in_the_run_directory_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("corpus.txt"), &lm_train::data::SHAKESPEARE[..20_000]).unwrap();
    std::fs::write(d.join("not-a-dir"), "").unwrap();
    let cfg = tiny_config(d, "corpus.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_lm-train"))
        .args([
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            "run",
            "--max-iters",
            "2",
            "--quiet",
        ])
        .env("LM_TRAIN_CACHE", d.join("not-a-dir/cache"))
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("is not writable").count(), 1, "{err}");
    let datasets: Vec<_> = std::fs::read_dir(d.join("run/cache/datasets"))
        .unwrap()
        .collect();
    assert_eq!(
        datasets.len(),
        1,
        "one prepared corpus, no temporary directory left"
    );
    // Resumed, the run finds it there.
    let out = Command::new(env!("CARGO_BIN_EXE_lm-train"))
        .args(["train", "--resume", "run", "--max-iters", "3", "--quiet"])
        .env("LM_TRAIN_CACHE", d.join("not-a-dir/cache"))
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_dir(d.join("run/cache/datasets"))
            .unwrap()
            .count(),
        1
    );
}

/// The README's path: a tokenizer, a prepared dataset, a recipe trained on it with `--set`
/// (the recipe's corpus keys give way to the dataset; one set beside it is still checked).
#[test]
fn a_recipe_trains_on_a_prepared_dataset_given_with_set() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let text = &lm_train::data::SHAKESPEARE[..30_000];
    std::fs::write(d.join("corpus.txt"), text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let family = lm_train::config::Family::named("gpt").unwrap();
    let kind = lm_train::tokenizer::TokenizerKind::Bpe;
    let tok = lm_train::tokenizer::TextTokenizer::train(kind, family, 400, &lines).unwrap();
    tok.save(&d.join("tok.json")).unwrap();
    let prep = lm_train(
        &[
            "data",
            "prepare",
            "--tokenizer",
            "tok.json",
            "--out",
            "data",
            "corpus.txt",
        ],
        d,
    );
    assert!(
        prep.status.success(),
        "{}",
        String::from_utf8_lossy(&prep.stderr)
    );
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--recipe",
            "gpt-shakespeare-bpe",
            "--quiet",
            "--max-iters",
            "1",
        ];
        args.extend_from_slice(&["--set", "data.dataset=\"data\"", "--set", "model.n_layer=1"]);
        args.extend_from_slice(extra);
        lm_train(&args, d)
    };
    let out = train(&["--out", "run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_one_line_error(
        &train(&["--out", "run2", "--set", "data.vocab_size=2000"]),
        "data.vocab_size",
    );
}
