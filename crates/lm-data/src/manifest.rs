//! `manifest.json`: what a prepared dataset holds — its shards with their counts and checksums,
//! the tokenizer's identity, the sources and how they were read and split. Written last, so a
//! directory with a manifest is a finished dataset.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{bad, io_err, Result};
use crate::inputs::Skipped;

/// The `format` of the manifests this version writes and reads.
pub const FORMAT: &str = "lm-data/1";

/// The hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How documents are assigned to the validation split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValSplit {
    /// Evenly spread: document `i` is a validation document when `⌊(i+1)·f⌋ > ⌊i·f⌋`; and when
    /// that leaves none, the last document.
    Every(f64),
    /// The tail of the plain text: documents that start at or after `(1 − f)` of its bytes (the
    /// `corpus` key's split, as before prepared datasets).
    Tail(f64),
    /// By file (imports): files whose name contains `val` are the validation split.
    Files,
}

impl ValSplit {
    /// Whether document `index`, starting at byte `offset` of `total` bytes of plain text, is a
    /// validation document.
    pub fn is_val(&self, index: u64, offset: u64, total: u64) -> bool {
        match *self {
            Self::Every(f) => ((index + 1) as f64 * f).floor() > (index as f64 * f).floor(),
            Self::Tail(f) => offset as f64 >= (1.0 - f) * total as f64,
            Self::Files => false,
        }
    }
}

/// The tokenizer a dataset was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// SHA-256 of its `tokenizer.json` (copied beside the manifest).
    pub sha256: String,
    /// Its vocabulary size.
    pub vocab_size: usize,
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// As found (given, or under a given directory or glob).
    pub path: String,
    /// Its size.
    pub bytes: u64,
}

/// What a prepare was asked to do; a resumed prepare must be asked the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepareParams {
    /// The tokenizer.
    pub tokenizer: TokenizerInfo,
    /// The input files in order.
    pub sources: Vec<SourceInfo>,
    /// The validation split.
    pub split: ValSplit,
    /// The JSON Lines field or Parquet column read.
    pub text_field: String,
    /// Plain text files were one document each.
    pub doc_per_file: bool,
    /// Invalid UTF-8 was skipped.
    pub skip_invalid: bool,
    /// Tokens after which a shard is closed (at the next document).
    pub shard_tokens: u64,
}

/// One shard file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name in the dataset's directory.
    pub file: String,
    /// Token ids.
    pub tokens: u64,
    /// Sentences.
    pub sentences: u64,
    /// Documents.
    pub documents: u64,
    /// File size.
    pub bytes: u64,
    /// CRC-32 of the whole file.
    pub crc32: u32,
}

/// One split's shards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// Token ids in all its shards.
    pub tokens: u64,
    /// Documents.
    pub documents: u64,
    /// Its shards in order.
    pub shards: Vec<ShardInfo>,
}

impl SplitInfo {
    /// Adds a shard.
    pub fn push(&mut self, s: ShardInfo) {
        self.tokens += s.tokens;
        self.documents += s.documents;
        self.shards.push(s);
    }
}

/// The manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// How it was made.
    pub params: PrepareParams,
    /// Bytes per token id (2 when the vocabulary fits in u16, else 4).
    pub token_bytes: u32,
    /// Documents read (not skipped).
    pub input_documents: u64,
    /// What reading skipped.
    pub skipped: Skipped,
    /// The training split.
    pub train: SplitInfo,
    /// The validation split.
    pub val: SplitInfo,
}

impl Manifest {
    /// Reads `dir/manifest.json`; returns it with the SHA-256 of its bytes (the dataset's
    /// identity).
    pub fn read(dir: &Path) -> Result<(Self, String)> {
        let path = dir.join("manifest.json");
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let m: Self = serde_json::from_slice(&bytes)
            .map_err(|e| bad(&path, format!("not an lm-data manifest: {e}")))?;
        if m.format != FORMAT {
            return Err(bad(
                &path,
                format!("format {:?}, but this version reads {FORMAT:?}", m.format),
            ));
        }
        Ok((m, sha256_hex(&bytes)))
    }

    /// The manifest as written (pretty JSON, newline-terminated).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = serde_json::to_vec_pretty(self).unwrap_or_default();
        b.push(b'\n');
        b
    }
}
