//! `lm-train data prepare | verify | import`: the command line over lm-data, with the run's
//! tokenizers (a `tokenizer.json`, a run directory or a Hugging Face model directory).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};

use crate::tokenizer::TextTokenizer;

/// What `lm-train data` does.
#[derive(Debug, Subcommand)]
pub enum DataAction {
    /// Tokenize a corpus once into a dataset of token shards (docs/data.md).
    Prepare {
        /// A tokenizer.json, or a directory holding one (a run, a Hugging Face model).
        #[arg(long)]
        tokenizer: PathBuf,
        /// The dataset's directory (new, empty, or an interrupted prepare of the same inputs).
        #[arg(long)]
        out: PathBuf,
        /// The JSON Lines field or Parquet column holding the text.
        #[arg(long, default_value = "text")]
        text_field: String,
        /// Fraction of the documents held out for validation, evenly spread (at least one).
        #[arg(long, default_value_t = 0.005)]
        val_fraction: f64,
        /// Plain text: each file is one document (else documents end at blank lines).
        #[arg(long)]
        doc_per_file: bool,
        /// Skip (and count) lines or records with invalid UTF-8 instead of stopping.
        #[arg(long)]
        skip_invalid: bool,
        /// Tokens per shard (a shard closes at the first document after this many).
        #[arg(long, default_value_t = 100_000_000)]
        shard_tokens: u64,
        /// Files, directories or globs: .txt/.md, .jsonl[.gz|.zst], .parquet.
        #[arg(required = true)]
        inputs: Vec<String>,
    },
    /// Check every shard of a dataset: checksum, boundaries, ids below the vocabulary size.
    Verify {
        /// The dataset's directory.
        dir: PathBuf,
    },
    /// Import nanoGPT's or llm.c's token files into a dataset (files named *val* are validation).
    Import {
        /// Whose files.
        #[arg(long)]
        from: ImportFrom,
        /// The tokenizer the ids are of (a tokenizer.json or a directory holding one).
        #[arg(long)]
        tokenizer: PathBuf,
        /// The dataset's directory.
        #[arg(long)]
        out: PathBuf,
        /// The id that separates documents (default: the tokenizer's <|endoftext|>, if any).
        #[arg(long)]
        eot: Option<u32>,
        /// The token files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// The formats `data import` reads.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ImportFrom {
    /// nanoGPT's train.bin / val.bin (bare uint16).
    Nanogpt,
    /// llm.c's .bin shards (256 × int32 header, then uint16).
    Llmc,
}

/// A tokenizer given as a file or a directory holding `tokenizer.json`.
pub fn tokenizer_at(path: &Path) -> crate::Result<(TextTokenizer, Vec<u8>)> {
    let file = match path.is_dir() {
        true => path.join("tokenizer.json"),
        false => path.to_path_buf(),
    };
    let tok = TextTokenizer::load(&file)?;
    let json = tok.to_json()?.into_bytes();
    Ok((tok, json))
}

/// Shows a prepare's progress: a bar on a terminal, a plain line every 10 s otherwise.
struct ProgressView {
    bar: Option<indicatif::ProgressBar>,
    last_line: f64,
}

impl ProgressView {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Self {
            bar,
            last_line: 0.0,
        }
    }

    fn show(&mut self, p: &lm_data::Progress) {
        let msg = format!("{} documents, {} tokens", p.documents, p.tokens);
        if let Some(b) = &self.bar {
            b.set_position(p.bytes);
            b.set_message(msg);
        } else if p.seconds - self.last_line >= 10.0 {
            self.last_line = p.seconds;
            let mbs = p.bytes as f64 / 1e6 / p.seconds.max(1e-9);
            let eta = (p.total_bytes.saturating_sub(p.bytes)) as f64 / 1e6 / mbs.max(1e-9);
            eprintln!(
                "prepare: {:.0}/{:.0} MB, {msg}, {mbs:.1} MB/s, ETA {eta:.0} s",
                p.bytes as f64 / 1e6,
                p.total_bytes as f64 / 1e6
            );
        }
    }
}

/// Runs `lm-train data ACTION`.
pub fn run(action: DataAction) -> anyhow::Result<()> {
    match action {
        DataAction::Prepare {
            tokenizer,
            out,
            text_field,
            val_fraction,
            doc_per_file,
            skip_invalid,
            shard_tokens,
            inputs,
        } => {
            let (tok, json) = tokenizer_at(&tokenizer)?;
            let mut opts = lm_data::PrepareOptions::new(inputs);
            opts.read = lm_data::ReadOptions {
                text_field,
                doc_per_file,
                skip_invalid,
            };
            opts.split = lm_data::ValSplit::Every(val_fraction);
            opts.shard_tokens = shard_tokens;
            let total = lm_data::resolve_inputs(&opts.inputs)?
                .iter()
                .map(|f| f.bytes)
                .sum();
            let mut view = ProgressView::new(total);
            let started = std::time::Instant::now();
            let m = lm_data::prepare(&out, &opts, &tok, &json, &mut |p| view.show(p))?;
            if let Some(b) = view.bar {
                b.finish_and_clear();
            }
            println!(
                "{}: {} training tokens in {} documents, {} validation tokens in {} documents, {} shard pair(s); skipped {} empty document(s), {} with invalid UTF-8; {:.1} s",
                out.display(),
                m.train.tokens,
                m.train.documents,
                m.val.tokens,
                m.val.documents,
                m.train.shards.len(),
                m.skipped.empty_documents,
                m.skipped.invalid_utf8,
                started.elapsed().as_secs_f64()
            );
        }
        DataAction::Verify { dir } => {
            let d = lm_data::Dataset::verify(&dir)?;
            let m = d.manifest();
            println!(
                "{}: {} shard(s) verified: {} training and {} validation tokens, tokenizer sha256 {}",
                dir.display(),
                m.train.shards.len() + m.val.shards.len(),
                m.train.tokens,
                m.val.tokens,
                m.params.tokenizer.sha256
            );
        }
        DataAction::Import {
            from,
            tokenizer,
            out,
            eot,
            files,
        } => {
            let (tok, json) = tokenizer_at(&tokenizer)?;
            let eot = eot.or_else(|| tok.token_id("<|endoftext|>"));
            let format = match from {
                ImportFrom::Nanogpt => lm_data::ImportFormat::NanoGpt,
                ImportFrom::Llmc => lm_data::ImportFormat::LlmC,
            };
            let m = lm_data::import(&out, format, &files, &json, tok.vocab_size(), eot)?;
            println!(
                "{}: imported {} training and {} validation tokens ({} and {} documents)",
                out.display(),
                m.train.tokens,
                m.val.tokens,
                m.train.documents,
                m.val.documents
            );
        }
    }
    Ok(())
}
