//! Reading a prepared dataset: its shards memory-mapped, each split seen as one token stream with
//! its documents and sentences. Opening reads the manifest and every shard's header (checked
//! against the manifest and the file's size) and nothing more, so it takes the same time for a
//! megabyte or a terabyte; [`Dataset::verify`] reads everything.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{bad, Result};
use crate::manifest::{Manifest, SplitInfo};
use crate::shard::Shard;

/// Which split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// Training documents.
    Train,
    /// Validation documents.
    Val,
}

/// One split: its shards as one stream of tokens, sentences and documents.
#[derive(Debug)]
pub struct SplitView {
    shards: Vec<Shard>,
    /// First token of each shard in the stream, then the total.
    token_starts: Vec<usize>,
    /// First document of each shard, then the total.
    doc_starts: Vec<usize>,
}

impl SplitView {
    fn open(dir: &Path, info: &SplitInfo, token_bytes: u32) -> Result<Self> {
        let (mut shards, mut token_starts, mut doc_starts) = (vec![], vec![0], vec![0]);
        for s in &info.shards {
            let path = dir.join(&s.file);
            let shard = Shard::open(&path)?;
            let h = shard.header();
            if (h.tokens, h.sentences, h.documents, h.token_bytes)
                != (s.tokens, s.sentences, s.documents, token_bytes)
            {
                return Err(bad(&path, format!(
                    "its header ({} tokens, {} sentences, {} documents, {}-byte ids) does not match the manifest ({}, {}, {}, {}): damaged, or from another dataset",
                    h.tokens, h.sentences, h.documents, h.token_bytes, s.tokens, s.sentences, s.documents, token_bytes
                )));
            }
            if h.documents == 0 {
                continue;
            }
            token_starts.push(token_starts[token_starts.len() - 1] + h.tokens as usize);
            doc_starts.push(doc_starts[doc_starts.len() - 1] + h.documents as usize);
            shards.push(shard);
        }
        Ok(Self {
            shards,
            token_starts,
            doc_starts,
        })
    }

    /// Tokens in the split.
    pub fn len(&self) -> usize {
        self.token_starts[self.shards.len()]
    }

    /// Whether the split has no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Documents in the split.
    pub fn num_documents(&self) -> usize {
        self.doc_starts[self.shards.len()]
    }

    /// The shards.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The shard holding stream position `at` (of `starts`) and the position's offset in it.
    fn locate(starts: &[usize], at: usize) -> (usize, usize) {
        let k = starts.partition_point(|&s| s <= at).saturating_sub(1);
        let k = k.min(starts.len().saturating_sub(2));
        (k, at - starts[k])
    }

    /// Appends tokens `range` of the stream to `out` (across shards where it spans them).
    pub fn extend_into(&self, range: Range<usize>, out: &mut Vec<u32>) {
        let mut at = range.start;
        while at < range.end.min(self.len()) {
            let (k, off) = Self::locate(&self.token_starts, at);
            let take = (range.end - at).min(self.token_starts[k + 1] - at);
            self.shards[k].extend_into(off..off + take, out);
            at += take;
        }
    }

    /// Tokens `range` of the stream.
    pub fn tokens(&self, range: Range<usize>) -> Vec<u32> {
        let mut out = Vec::with_capacity(range.len());
        self.extend_into(range, &mut out);
        out
    }

    /// The stream range of document `d`.
    pub fn document_range(&self, d: usize) -> Range<usize> {
        let (k, local) = Self::locate(&self.doc_starts, d);
        let s = &self.shards[k];
        let (first, end) = (
            s.document_first_sentence(local),
            s.document_first_sentence(local + 1),
        );
        let base = self.token_starts[k];
        base + s.sentence_start(first)..base + s.sentence_start(end).max(s.sentence_start(first))
    }

    /// Document `d` as its sentences' ids.
    pub fn document(&self, d: usize) -> Vec<Vec<u32>> {
        let (k, local) = Self::locate(&self.doc_starts, d);
        let s = &self.shards[k];
        (s.document_first_sentence(local)..s.document_first_sentence(local + 1))
            .map(|i| {
                let mut v = vec![];
                s.extend_into(s.sentence_start(i)..s.sentence_start(i + 1), &mut v);
                v
            })
            .collect()
    }
}

/// A prepared dataset.
#[derive(Debug)]
pub struct Dataset {
    dir: PathBuf,
    manifest: Manifest,
    manifest_sha256: String,
    splits: [SplitView; 2],
}

impl Dataset {
    /// Opens the dataset in `dir`: the manifest and every shard's header and size.
    pub fn open(dir: &Path) -> Result<Self> {
        let (manifest, manifest_sha256) = Manifest::read(dir)?;
        let splits = [
            SplitView::open(dir, &manifest.train, manifest.token_bytes)?,
            SplitView::open(dir, &manifest.val, manifest.token_bytes)?,
        ];
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            manifest_sha256,
            splits,
        })
    }

    /// Opens the dataset and checks every shard's checksum, boundaries and ids (< vocabulary).
    pub fn verify(dir: &Path) -> Result<Self> {
        let d = Self::open(dir)?;
        for info in [&d.manifest.train, &d.manifest.val] {
            for s in &info.shards {
                let shard = Shard::open(&dir.join(&s.file))?;
                let got = shard.crc32();
                if got != s.crc32 {
                    return Err(bad(shard.path(), format!("checksum {got:08x}, but the manifest says {:08x}: the shard is damaged", s.crc32)));
                }
                shard.check_contents(d.manifest.params.tokenizer.vocab_size)?;
            }
        }
        Ok(d)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// SHA-256 of `manifest.json`: the dataset's identity.
    pub fn manifest_sha256(&self) -> &str {
        &self.manifest_sha256
    }

    /// What the dataset holds, as a number: the first 8 bytes of SHA-256 over its tokenizer's
    /// hash and each shard's counts and checksum. Two datasets of the same tokens under other
    /// paths or names have the same id; a batch order seeded with it changes with the data.
    pub fn content_id(&self) -> u64 {
        let m = &self.manifest;
        let mut text = format!("{}\n{}\n", m.params.tokenizer.sha256, m.token_bytes);
        for (name, split) in [("train", &m.train), ("val", &m.val)] {
            for s in &split.shards {
                text.push_str(&format!(
                    "{name} {} {} {} {:08x}\n",
                    s.tokens, s.sentences, s.documents, s.crc32
                ));
            }
        }
        let hex = crate::manifest::sha256_hex(text.as_bytes());
        u64::from_str_radix(&hex[..16], 16).unwrap_or(0)
    }

    /// A split.
    pub fn split(&self, split: Split) -> &SplitView {
        match split {
            Split::Train => &self.splits[0],
            Split::Val => &self.splits[1],
        }
    }

    /// The vocabulary size of its tokenizer.
    pub fn vocab_size(&self) -> usize {
        self.manifest.params.tokenizer.vocab_size
    }

    /// The dataset's copy of its tokenizer.
    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }
}
