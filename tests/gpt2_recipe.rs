//! The `gpt2-124m` recipe at its full size — GPT-2 small, 12 layers, width 768, context 1 024,
//! a 50 257-entry BPE — trains two steps on a generated corpus with a tokenizer made on it, as
//! a user's first run on a fresh machine would (batch 1 instead of 8 × 8, to stay small), and
//! writes its checkpoint where the disk has room for it.

use candle_core::Device;
use lm_train::config::{Family, TokenizerKind, TrainConfig};
use lm_train::tokenizer::TextTokenizer;
use lm_train::Trainer;

/// Text of `words` pseudo-words (2–9 letters, drawn by a fixed LCG), lines of 12: enough
/// distinct letter pairs for a BPE to make 50 000 merges.
fn generated_corpus(words: usize) -> String {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let mut text = String::new();
    for i in 0..words {
        let len = 2 + next(8);
        for _ in 0..len {
            text.push((b'a' + next(26) as u8) as char);
        }
        text.push(if i % 12 == 11 { '\n' } else { ' ' });
    }
    text
}

#[test]
fn the_gpt2_124m_recipe_trains_at_full_size_on_a_generated_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let text = generated_corpus(400_000);
    std::fs::write(tmp.path().join("corpus.txt"), &text).unwrap();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let gpt = Family::named("gpt").unwrap();
    let tok = TextTokenizer::train(TokenizerKind::Bpe, gpt, 50_257, &lines).unwrap();
    assert_eq!(tok.vocab_size(), 50_257);
    tok.save(&tmp.path().join("tokenizer.json")).unwrap();

    let mut c = TrainConfig::recipe("gpt2-124m").unwrap();
    assert_eq!(
        (
            c.model.n_layer,
            c.model.n_head,
            c.model.n_embd,
            c.model.block_size
        ),
        (12, 12, 768, 1024)
    );
    assert_eq!(c.data.vocab_size, Some(50_257));
    c.data.corpus = tmp.path().join("corpus.txt").display().to_string();
    c.data.tokenizer_file = Some(tmp.path().join("tokenizer.json").display().to_string());
    (c.train.batch_size, c.train.grad_accum, c.train.max_iters) = (1, 1, 2);
    (
        c.train.eval_interval,
        c.train.eval_iters,
        c.train.sample_tokens,
    ) = (2, 1, 0);
    let run = tmp.path().join("run");
    let mut t = Trainer::new(c, &run, Device::Cpu).unwrap();
    // GPT-2 small's 124 M parameters: 85 M in the blocks, the 50 257 × 768 embedding (tied to
    // the head) and the 1 024 × 768 positions.
    let params = t.params().num_params();
    assert!((124_000_000..124_500_000).contains(&params), "{params}");
    // Its checkpoint: the weights and AdamW's two moments in f32 (1.5 GB), written beside the
    // previous files before the rename; a disk without that room trains and evaluates the
    // same two steps and says that it left the checkpoint out.
    let needed = 3 * 4 * params as u64 + (256 << 20);
    let free = free_bytes(tmp.path());
    let (train, val) = match free {
        Some(free) if free < needed => {
            println!(
                "skipped: the checkpoint of step 2 ({} MiB free in {}, {} MiB needed); the two steps and the evaluation ran",
                free >> 20,
                tmp.path().display(),
                needed >> 20
            );
            for _ in 0..2 {
                assert!(t.train_one_step().unwrap().is_some_and(f32::is_finite));
            }
            assert_eq!(t.step(), 2);
            t.evaluate().unwrap()
        }
        _ => {
            let summary = t.train().unwrap();
            assert_eq!(summary.step, 2);
            let saved =
                std::fs::read_to_string(run.join("checkpoints/step-00000002/config.json")).unwrap();
            assert!(saved.contains("50257"), "{saved}");
            summary.last_eval.unwrap()
        }
    };
    // From uniform (ln 50 257 = 10.83) downwards.
    assert!(
        train.is_finite() && val.is_finite() && val < 11.0,
        "{train} {val}"
    );
}

/// Bytes available to this user on the file system holding `dir`, as `df` reports them (`None`
/// where `df` is missing or says something else).
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-Pk"])
        .arg(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}
