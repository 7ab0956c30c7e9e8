//! `prepare`: inputs → token shards, streaming and in parallel, resumable.
//!
//! One thread reads documents in order and hands them over in batches of about
//! [`PrepareOptions::batch_bytes`] through a channel of two batches; the caller's thread
//! tokenizes each batch (the [`Encoder`] uses all cores) and writes the shards. Memory is bounded
//! by a few batches plus one shard's boundaries, whatever the corpus size.
//!
//! Shards come in pairs (`train-K.bin`, `val-K.bin`) covering consecutive documents of the
//! input; a pair is closed at the first document after its training shard reaches
//! [`PrepareOptions::shard_tokens`] tokens, and its header records where in the input it ends.
//! Each file is written under a temporary name and renamed, the validation file first, so a
//! prepare killed at any point and run again skips the finished pairs, reads on from where the
//! last one ended, and writes the same bytes an uninterrupted prepare would.

use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use crate::atomic::{remove_stray_tmp, write_atomic};
use crate::error::{bad, io_err, DataError, Result};
use crate::inputs::{for_each_document, resolve_inputs, InputFormat, ReadOptions, Skipped};
use crate::manifest::{
    sha256_hex, Manifest, PrepareParams, ShardInfo, SourceInfo, SplitInfo, TokenizerInfo, ValSplit,
    FORMAT,
};
use crate::shard::{Shard, ShardWriter};

/// A text's token ids and where each token starts in it (byte offset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded {
    /// The ids.
    pub ids: Vec<u32>,
    /// The byte offset in the text where each token starts (non-decreasing).
    pub starts: Vec<u32>,
}

impl Encoded {
    /// The ids cut into the text's lines: a token belongs to the line it starts in.
    pub fn into_sentences(self, text: &str) -> Vec<Vec<u32>> {
        let mut out = Vec::new();
        let mut at = 0;
        let mut line_end = 0;
        for line in text.split_inclusive('\n') {
            line_end += line.len();
            let end = at + self.starts[at..].partition_point(|&s| (s as usize) < line_end);
            out.push(self.ids[at..end].to_vec());
            at = end;
        }
        if at < self.ids.len() {
            // Offsets past the text's end (a tokenizer that adds tokens): the last line's.
            match out.last_mut() {
                Some(last) => last.extend_from_slice(&self.ids[at..]),
                None => out.push(self.ids[at..].to_vec()),
            }
        }
        out
    }
}

/// What `prepare` needs of a tokenizer.
pub trait Encoder: Sync {
    /// Each whole text's ids and their start offsets, without special tokens (an
    /// implementation runs the texts on all cores). Documents are tokenized whole, as the
    /// tokenizer sees a text, and cut into sentences (lines) by the offsets.
    fn encode_batch(&self, texts: &[&str]) -> std::result::Result<Vec<Encoded>, String>;
    /// The vocabulary size.
    fn vocab_size(&self) -> usize;
}

/// How to prepare.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareOptions {
    /// Files, directories or globs.
    pub inputs: Vec<String>,
    /// How documents are read.
    pub read: ReadOptions,
    /// The validation split.
    pub split: ValSplit,
    /// Tokens after which a shard pair is closed (default 100 M).
    pub shard_tokens: u64,
    /// Text handed to the tokenizer at once (default 2 MiB).
    pub batch_bytes: usize,
}

impl PrepareOptions {
    /// Defaults for `inputs`: field `text`, 0.5 % of the documents for validation.
    pub fn new(inputs: Vec<String>) -> Self {
        Self {
            inputs,
            read: ReadOptions::default(),
            split: ValSplit::Every(0.005),
            shard_tokens: 100_000_000,
            batch_bytes: 2 << 20,
        }
    }
}

/// Where a prepare stands, for a progress display.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Bytes of the input files behind the documents read so far (plain text exactly; other
    /// formats by whole files).
    pub bytes: u64,
    /// Bytes of all inputs.
    pub total_bytes: u64,
    /// Documents read.
    pub documents: u64,
    /// Tokens written.
    pub tokens: u64,
    /// Seconds since the start.
    pub seconds: f64,
}

struct Batch {
    docs: Vec<(String, u64)>,
    bytes_done: u64,
}

/// A pair of shards being written.
struct Pair {
    index: usize,
    train: ShardWriter,
    val: ShardWriter,
}

struct Writer<'a> {
    dir: &'a Path,
    token_bytes: u32,
    shard_tokens: u64,
    pair: Option<Pair>,
    next_pair: usize,
    train: SplitInfo,
    val: SplitInfo,
    /// The inputs as given, for errors about all of them.
    inputs: String,
    /// Documents read so far.
    index: u64,
    /// Documents before this index are in the pairs an interrupted prepare finished.
    resume_at: u64,
    /// Validation documents written.
    val_docs: u64,
    /// Tokens written or held.
    tokens: u64,
    /// The last document read (index, validation?, sentences), not yet written: at the end it
    /// may become the one validation document, and a pair is only closed before a document,
    /// so that it ends exactly there.
    held: Option<(u64, bool, Vec<Vec<u32>>)>,
}

fn shard_name(split: &str, k: usize) -> String {
    format!("{split}-{k:05}.bin")
}

fn info(name: String, header: crate::shard::ShardHeader, crc32: u32) -> ShardInfo {
    ShardInfo {
        file: name,
        tokens: header.tokens,
        sentences: header.sentences,
        documents: header.documents,
        bytes: header.file_len(),
        crc32,
    }
}

impl Writer<'_> {
    fn pair(&mut self) -> Result<&mut Pair> {
        if self.pair.is_none() {
            let k = self.next_pair;
            self.pair = Some(Pair {
                index: k,
                train: ShardWriter::create(
                    &self.dir.join(shard_name("train", k)),
                    self.token_bytes,
                )?,
                val: ShardWriter::create(&self.dir.join(shard_name("val", k)), self.token_bytes)?,
            });
            self.next_pair += 1;
        }
        // INVARIANT: set just above when it was None.
        Ok(self.pair.as_mut().expect("a pair is open"))
    }

    /// Closes the open pair: validation shard first, so a training shard on disk means its pair
    /// is complete.
    fn close_pair(&mut self, input_documents_end: u64) -> Result<()> {
        if let Some(p) = self.pair.take() {
            let (vh, vcrc) = p.val.finish(input_documents_end)?;
            let (th, tcrc) = p.train.finish(input_documents_end)?;
            self.val.push(info(shard_name("val", p.index), vh, vcrc));
            self.train
                .push(info(shard_name("train", p.index), th, tcrc));
        }
        Ok(())
    }

    /// Tokenizes the documents of `batch` (but those of finished pairs) and writes them,
    /// holding the last one back.
    fn add_batch(
        &mut self,
        batch: &Batch,
        encoder: &dyn Encoder,
        split: ValSplit,
        text_total: u64,
    ) -> Result<()> {
        let first = self.index;
        self.index += batch.docs.len() as u64;
        let skip = self
            .resume_at
            .saturating_sub(first)
            .min(batch.docs.len() as u64) as usize;
        let todo = &batch.docs[skip..];
        let texts: Vec<&str> = todo.iter().map(|(d, _)| d.as_str()).collect();
        let encoded = encoder.encode_batch(&texts).map_err(DataError::Tokenizer)?;
        if encoded.len() != texts.len() || encoded.iter().any(|e| e.ids.len() != e.starts.len()) {
            return Err(DataError::Tokenizer(
                "the encoder gave a wrong number of texts or offsets".into(),
            ));
        }
        for (j, ((d, off), e)) in todo.iter().zip(encoded).enumerate() {
            let doc = e.into_sentences(d);
            let i = first + (skip + j) as u64;
            let val = split.is_val(i, *off, text_total);
            self.tokens += doc.iter().map(|s| s.len() as u64).sum::<u64>();
            if let Some((hi, hval, hdoc)) = self.held.replace((i, val, doc)) {
                self.val_docs += u64::from(hval);
                self.write(hi, hval, &hdoc)?;
            }
        }
        Ok(())
    }

    /// Writes the held document — as the one validation document when none was chosen — and
    /// closes the last pair.
    fn finish(&mut self, split: ValSplit) -> Result<()> {
        let Some((hi, hval, hdoc)) = self.held.take() else {
            return Err(no_documents(&self.inputs, self.index, self.resume_at));
        };
        let hval = hval || (self.val_docs == 0 && !matches!(split, ValSplit::Files));
        self.write(hi, hval, &hdoc)?;
        self.close_pair(self.index)?;
        if self.train.documents == 0 {
            return Err(DataError::Input {
                path: self.inputs.clone().into(),
                problem: format!("holds {} document(s), all of them in the validation split: no training document (give more text, or a smaller validation fraction)", self.index),
            });
        }
        Ok(())
    }

    /// Writes document `index`; closes the pair first when its training shard is full.
    fn write(&mut self, index: u64, val: bool, sentences: &[Vec<u32>]) -> Result<()> {
        if self
            .pair
            .as_ref()
            .is_some_and(|p| p.train.tokens() >= self.shard_tokens)
        {
            self.close_pair(index)?;
        }
        let p = self.pair()?;
        match val {
            true => p.val.push_document(sentences),
            false => p.train.push_document(sentences),
        }
    }
}

/// The finished pairs of an interrupted prepare in `dir`: their shards (checked) and where in
/// the input they end. An incomplete pair (a validation shard without its training shard) is
/// removed.
fn finished_pairs(dir: &Path, train: &mut SplitInfo, val: &mut SplitInfo) -> Result<(usize, u64)> {
    let mut k = 0;
    let mut end = 0;
    loop {
        let (tp, vp) = (
            dir.join(shard_name("train", k)),
            dir.join(shard_name("val", k)),
        );
        if !tp.exists() {
            if vp.exists() {
                std::fs::remove_file(&vp).map_err(io_err(&vp))?;
            }
            return Ok((k, end));
        }
        let (t, v) = (Shard::open(&tp)?, Shard::open(&vp)?);
        end = t.header().input_documents_end;
        val.push(info(shard_name("val", k), v.header(), v.crc32()));
        train.push(info(shard_name("train", k), t.header(), t.crc32()));
        k += 1;
    }
}

/// The parameters of preparing `opts` with a tokenizer whose `tokenizer.json` is
/// `tokenizer_json`.
pub fn params(
    opts: &PrepareOptions,
    tokenizer_json: &[u8],
    vocab_size: usize,
) -> Result<(PrepareParams, Vec<crate::inputs::InputFile>)> {
    let files = resolve_inputs(&opts.inputs)?;
    if let ValSplit::Tail(_) = opts.split {
        if let Some(f) = files
            .iter()
            .find(|f| f.format != InputFormat::Text(crate::inputs::Compression::None))
        {
            return Err(DataError::Input {
                path: f.path.clone(),
                problem: "a split by position (tail) needs plain, uncompressed text inputs".into(),
            });
        }
    }
    let params = PrepareParams {
        tokenizer: TokenizerInfo {
            sha256: sha256_hex(tokenizer_json),
            vocab_size,
        },
        sources: files
            .iter()
            .map(|f| SourceInfo {
                path: f.path.display().to_string(),
                bytes: f.bytes,
            })
            .collect(),
        split: opts.split,
        text_field: opts.read.text_field.clone(),
        doc_per_file: opts.read.doc_per_file,
        skip_invalid: opts.read.skip_invalid,
        shard_tokens: opts.shard_tokens,
    };
    Ok((params, files))
}

/// Prepares `opts.inputs` into `dir` with `encoder` (whose `tokenizer.json` bytes are
/// `tokenizer_json`, copied into `dir`). An existing finished dataset of the same parameters is
/// returned as it is; an interrupted one is completed; a directory holding anything else is
/// refused.
pub fn prepare(
    dir: &Path,
    opts: &PrepareOptions,
    encoder: &dyn Encoder,
    tokenizer_json: &[u8],
    progress: &mut dyn FnMut(&Progress),
) -> Result<Manifest> {
    check_fraction(dir, opts.split)?;
    let (params, files) = params(opts, tokenizer_json, encoder.vocab_size())?;
    let created = !dir.exists();
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    if let Some(m) = existing(dir, &params)? {
        return Ok(m);
    }
    let written = write_dataset(dir, opts, encoder, tokenizer_json, params, &files, progress);
    // Bad input: what was written from it is of no use (the input must change, and a prepare
    // of other input is refused here), so none of it is left. A failed write (a full disk)
    // keeps the finished pairs for the prepare run again.
    if matches!(&written, Err(e) if !matches!(e, DataError::Io { .. })) {
        remove_unfinished(dir, created);
    }
    written
}

/// Removes what a prepare writes into `dir` (and `dir` itself when the prepare made it).
fn remove_unfinished(dir: &Path, created: bool) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = (name.starts_with("train-") || name.starts_with("val-"))
                || name.starts_with("prepare.json")
                || name.starts_with("tokenizer.json");
            if ours {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if created {
        let _ = std::fs::remove_dir(dir);
    }
}

fn write_dataset(
    dir: &Path,
    opts: &PrepareOptions,
    encoder: &dyn Encoder,
    tokenizer_json: &[u8],
    params: PrepareParams,
    files: &[crate::inputs::InputFile],
    progress: &mut dyn FnMut(&Progress),
) -> Result<Manifest> {
    remove_stray_tmp(dir)?;
    let params_path = dir.join("prepare.json");
    let params_bytes = serde_json::to_vec_pretty(&params).unwrap_or_default();
    write_atomic(&dir.join("tokenizer.json"), tokenizer_json)?;
    write_atomic(&params_path, &params_bytes)?;
    let token_bytes = if encoder.vocab_size() <= 1 << 16 {
        2
    } else {
        4
    };
    let mut w = Writer {
        dir,
        token_bytes,
        shard_tokens: opts.shard_tokens.max(1),
        pair: None,
        next_pair: 0,
        train: SplitInfo::default(),
        val: SplitInfo::default(),
        inputs: opts.inputs.join(", "),
        index: 0,
        resume_at: 0,
        val_docs: 0,
        tokens: 0,
        held: None,
    };
    let (done_pairs, resume_at) = finished_pairs(dir, &mut w.train, &mut w.val)?;
    (w.next_pair, w.resume_at) = (done_pairs, resume_at);
    (w.val_docs, w.tokens) = (w.val.documents, w.train.tokens + w.val.tokens);
    let total_bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let text_total: u64 = files
        .iter()
        .filter(|f| matches!(f.format, InputFormat::Text(_)))
        .map(|f| f.bytes)
        .sum();
    let started = Instant::now();
    let skipped = std::thread::scope(|s| -> Result<Skipped> {
        let (tx, rx) = sync_channel::<Batch>(2);
        let reader = s.spawn(|| read_batches(files, &opts.read, opts.batch_bytes, tx));
        for batch in rx.iter() {
            w.add_batch(&batch, encoder, opts.split, text_total)?;
            progress(&Progress {
                bytes: batch.bytes_done,
                total_bytes,
                documents: w.index,
                tokens: w.tokens,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        reader
            .join()
            .map_err(|_| DataError::Tokenizer("the reader thread panicked".into()))?
    })?;
    w.finish(opts.split)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        params,
        token_bytes,
        input_documents: w.index,
        skipped,
        train: w.train,
        val: w.val,
    };
    write_atomic(&dir.join("manifest.json"), &manifest.to_bytes())?;
    let _ = std::fs::remove_file(&params_path);
    Ok(manifest)
}

/// The reader thread: documents of `files` in order, in batches of about `batch_bytes`, each
/// document with its offset in the plain text (for a split by position).
fn read_batches(
    files: &[crate::inputs::InputFile],
    read: &ReadOptions,
    batch_bytes: usize,
    tx: std::sync::mpsc::SyncSender<Batch>,
) -> Result<Skipped> {
    let mut skipped = Skipped::default();
    let mut batch = Batch {
        docs: vec![],
        bytes_done: 0,
    };
    let mut size = 0;
    // Bytes of the files before this one, and of the plain text files among them (a
    // document's offset for a split by position counts plain text only).
    let (mut done_before, mut text_before) = (0u64, 0u64);
    // Set when the writer has stopped (it failed and says why): nothing more to read.
    let mut stopped = false;
    for (i, f) in files.iter().enumerate() {
        for_each_document(&files[i..=i], read, &mut skipped, &mut |d, off| {
            size += d.len();
            batch.docs.push((d, text_before + off));
            if size >= batch_bytes {
                batch.bytes_done = done_before + off;
                size = 0;
                let full = std::mem::replace(
                    &mut batch,
                    Batch {
                        docs: vec![],
                        bytes_done: 0,
                    },
                );
                if tx.send(full).is_err() {
                    stopped = true;
                    return Err(DataError::Stopped);
                }
            }
            Ok(())
        })?;
        if stopped {
            return Ok(skipped);
        }
        done_before += f.bytes;
        if matches!(f.format, InputFormat::Text(_)) {
            text_before += f.bytes;
        }
    }
    batch.bytes_done = done_before;
    let _ = tx.send(batch);
    Ok(skipped)
}

fn check_fraction(dir: &Path, split: ValSplit) -> Result<()> {
    match split {
        ValSplit::Every(f) | ValSplit::Tail(f) if !(f > 0.0 && f < 1.0) => Err(DataError::Input {
            path: dir.to_path_buf(),
            problem: format!("the validation fraction {f} is not in (0, 1)"),
        }),
        _ => Ok(()),
    }
}

fn no_documents(inputs: &str, index: u64, resume_at: u64) -> DataError {
    let problem = match resume_at > 0 && index <= resume_at {
        true => "holds fewer documents than the shards already written from it: it changed since the prepare began; remove the directory and prepare again",
        false => "holds no document (the files are empty, or every document is blank or skipped)",
    };
    DataError::Input {
        path: inputs.into(),
        problem: problem.into(),
    }
}

/// A finished dataset in `dir` made with `params` (returned), or nothing yet; a directory holding
/// a dataset or prepare of other parameters, or other files, is refused.
fn existing(dir: &Path, params: &PrepareParams) -> Result<Option<Manifest>> {
    if dir.join("manifest.json").exists() {
        let (m, _) = Manifest::read(dir)?;
        if &m.params == params {
            return Ok(Some(m));
        }
        return Err(bad(dir, "holds a dataset prepared from other inputs, tokenizer or options; choose another --out (or remove it)"));
    }
    let params_path = dir.join("prepare.json");
    if params_path.exists() {
        let was: PrepareParams =
            serde_json::from_slice(&std::fs::read(&params_path).map_err(io_err(&params_path))?)
                .map_err(|e| bad(&params_path, format!("cannot read: {e}")))?;
        if &was != params {
            return Err(bad(dir, "holds an unfinished prepare of other inputs, tokenizer or options; run that one again, or remove the directory"));
        }
        return Ok(None);
    }
    let mut entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    if let Some(e) = entries.next() {
        let e = e.map_err(io_err(dir))?;
        return Err(bad(
            dir,
            format!(
                "is not empty (holds {:?}) and is not a dataset: choose an empty or new directory",
                e.file_name()
            ),
        ));
    }
    Ok(None)
}
