//! lm-data with your own tokenizer: a byte-level `Encoder` (one id per byte) prepares a folder
//! of JSON Lines and plain-text files into checksummed, memory-mapped shards; the dataset is
//! then verified, opened and read back document by document, as a training loop would.
//!
//! `cargo run --release -p lm-data --example bytes [OUT_DIR]`

use lm_data::{Dataset, Encoded, Encoder, PrepareOptions, Split, ValSplit};

/// One id per byte: the simplest tokenizer, enough to show the `Encoder` contract.
struct Bytes;

impl Encoder for Bytes {
    fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Encoded>, String> {
        Ok(texts
            .iter()
            .map(|t| Encoded {
                ids: t.bytes().map(u32::from).collect(),
                starts: (0..t.len() as u32).collect(),
            })
            .collect())
    }

    fn vocab_size(&self) -> usize {
        256
    }
}

fn main() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let out = std::env::args()
        .nth(1)
        .map_or(scratch.path().join("data"), Into::into);

    // Inputs: a JSON Lines file (one document per line, its `text` field) and a plain-text file
    // (documents separated by blank lines; a line is a sentence).
    let corpus = scratch.path().join("corpus");
    std::fs::create_dir_all(&corpus)?;
    let lines: Vec<String> = (0..40)
        .map(|i| format!("{{\"text\": \"document {i}\\nits second sentence\"}}"))
        .collect();
    std::fs::write(corpus.join("part.jsonl"), lines.join("\n"))?;
    std::fs::write(
        corpus.join("notes.txt"),
        "To be, or not to be.\nThat is the question.\n\nWhether 'tis nobler.\n",
    )?;

    let mut opts = PrepareOptions::new(vec![corpus.display().to_string()]);
    opts.split = ValSplit::Every(0.1);
    // The tokenizer file the dataset records (its SHA-256 goes into the manifest).
    let tokenizer_json = br#"{"byte-level": true}"#;
    let manifest = lm_data::prepare(&out, &opts, &Bytes, tokenizer_json, &mut |_| {})?;
    println!(
        "prepared {}: {} training and {} validation documents",
        out.display(),
        manifest.train.documents,
        manifest.val.documents
    );

    let data = Dataset::verify(&out)?; // checksums, boundaries, ids below the vocabulary
    let train = data.split(Split::Train);
    for d in 0..2 {
        // A document is its sentences (here: lines) of ids; bytes back to text.
        let bytes: Vec<u8> = train
            .document(d)
            .concat()
            .iter()
            .map(|&b| b as u8)
            .collect();
        println!(
            "training document {d}: {:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
    anyhow::ensure!(
        manifest.train.documents + manifest.val.documents == 42,
        "40 JSON lines and 2 text documents"
    );
    Ok(())
}
