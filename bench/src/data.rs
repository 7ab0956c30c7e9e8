//! The data suite: `lm-train data prepare`'s end-to-end rate against the tokenizers crate's
//! `encode_batch` alone on the same documents, and `corpus`, which writes a generated corpus of
//! any size in mixed formats (a directory of .txt, .jsonl.zst, .parquet) for the memory and
//! start-up measurements of docs/data.md.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use lm_train::tokenizer::{TextTokenizer, TokenizerKind};

use crate::Report;

/// Deterministic text from tinyshakespeare's words: documents of 5–40 lines of 4–16 words.
struct Words {
    words: Vec<&'static str>,
    x: u64,
}

impl Words {
    fn new(seed: u64) -> Self {
        let mut words: Vec<&'static str> = lm_train::data::SHAKESPEARE.split_whitespace().collect();
        words.sort_unstable();
        words.dedup();
        Self { words, x: seed }
    }

    fn next(&mut self, n: u64) -> u64 {
        self.x = self
            .x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.x >> 33) % n
    }

    fn document(&mut self) -> String {
        let mut d = String::new();
        for _ in 0..5 + self.next(36) {
            for w in 0..4 + self.next(13) {
                if w > 0 {
                    d.push(' ');
                }
                let i = self.next(self.words.len() as u64) as usize;
                d.push_str(self.words[i]);
            }
            d.push('\n');
        }
        d
    }
}

/// Writes about `bytes` of text into `dir`: a third each as .txt files (documents separated by
/// blank lines), .jsonl.zst files and .parquet files, of at most 64 MB each.
pub fn write_corpus(dir: &Path, bytes: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut words = Words::new(42);
    let per_file = (bytes / 3).clamp(1, 64 << 20);
    for (kind, share) in [
        ("txt", bytes / 3),
        ("jsonl.zst", bytes / 3),
        ("parquet", bytes - 2 * (bytes / 3)),
    ] {
        let mut written = 0;
        let mut k = 0;
        while written < share {
            let mut docs = vec![];
            let mut size = 0;
            while size < per_file.min(share - written) {
                let d = words.document();
                size += d.len() as u64;
                docs.push(d);
            }
            let path = dir.join(format!("part-{k:04}.{kind}"));
            match kind {
                "txt" => std::fs::write(&path, docs.join("\n"))?,
                "jsonl.zst" => {
                    let lines: String = docs
                        .iter()
                        .map(|d| format!("{}\n", serde_json::json!({ "text": d })))
                        .collect();
                    std::fs::write(&path, zstd_bytes(lines.as_bytes())?)?;
                }
                _ => lm_data::write_parquet_texts(&path, "text", &docs, 4096)?,
            }
            written += size;
            k += 1;
        }
    }
    Ok(())
}

/// `bytes` as a Zstandard frame (level 3) by the C library.
#[cfg(not(target_vendor = "apple"))]
fn zstd_bytes(bytes: &[u8]) -> Result<Vec<u8>> {
    Ok(zstd::encode_all(bytes, 3)?)
}

/// `bytes` as a Zstandard frame by ruzstd, on Apple targets where the C library is not built.
#[cfg(target_vendor = "apple")]
fn zstd_bytes(bytes: &[u8]) -> Result<Vec<u8>> {
    Ok(ruzstd::encoding::compress_to_vec(
        bytes,
        ruzstd::encoding::CompressionLevel::Default,
    ))
}

/// A BPE tokenizer (8 192 tokens, GPT's special tokens) trained on tinyshakespeare.
pub fn bpe_tokenizer() -> Result<TextTokenizer> {
    let lines: Vec<&str> = lm_train::data::SHAKESPEARE.lines().collect();
    let family = lm_train::config::Family::named("gpt").map_err(anyhow::Error::msg)?;
    Ok(TextTokenizer::train(
        TokenizerKind::Bpe,
        family,
        8192,
        &lines,
    )?)
}

/// Prepare's tokens/s (read, tokenize, write) over `encode_batch`'s on the same documents.
pub fn data(r: &mut Report) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("lm-bench-data-{}", std::process::id()));
    let corpus = tmp.join("corpus");
    write_corpus(&corpus, 48 << 20)?;
    let tok = bpe_tokenizer()?;
    let json = tok.to_json()?;
    let inputs = vec![corpus.display().to_string()];
    let docs =
        lm_data::read_all_documents(&lm_data::resolve_inputs(&inputs)?, &Default::default())?;
    let TextTokenizer::Hf(hf) = &tok else {
        anyhow::bail!("a BPE tokenizer is a tokenizers one");
    };
    let (mut prepare_rates, mut encode_rates) = (vec![], vec![]);
    for run in 0..3 {
        // Interleaved: encode_batch alone, then prepare, each on the whole corpus.
        let started = Instant::now();
        let mut tokens = 0;
        for chunk in docs.chunks(4096) {
            let enc = hf
                .encode_batch_fast(chunk.iter().map(String::as_str).collect::<Vec<_>>(), false)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            tokens += enc.iter().map(|e| e.get_ids().len()).sum::<usize>();
        }
        encode_rates.push(tokens as f64 / started.elapsed().as_secs_f64());
        let out = tmp.join(format!("ds{run}"));
        let started = Instant::now();
        let m = lm_data::prepare(
            &out,
            &lm_data::PrepareOptions::new(inputs.clone()),
            &tok,
            json.as_bytes(),
            &mut |_| {},
        )?;
        prepare_rates
            .push((m.train.tokens + m.val.tokens) as f64 / started.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::remove_dir_all(&tmp)?;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (p, e) = (median(prepare_rates), median(encode_rates));
    r.row(
        "data",
        "prepare 48 MB (txt+jsonl.zst+parquet), BPE 8k",
        format!("{:.2} Mtok/s", p / 1e6),
        format!("{:.2}× encode_batch ({:.2} Mtok/s)", p / e, e / 1e6),
        "data_prepare_vs_encode_batch",
        p / e,
    );
    Ok(())
}
