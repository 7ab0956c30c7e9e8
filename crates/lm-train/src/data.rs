//! The corpus: loading, documents and sentences, tokenization into a cached memory-mapped token
//! file, and the deterministic train/validation split.
//!
//! A text is read as lines (each line, newline included, is a sentence) and blank lines end
//! documents, so the concatenation of all sentences is the original text exactly. The token file
//! (`tokens.bin`) holds the ids as u16 when the vocabulary fits, else u32, after a small header
//! and before the sentence and document boundaries; it is written once per run directory and
//! memory-mapped afterwards.

use std::path::Path;

use crate::error::{io_err, Result, TrainError};
use crate::tokenizer::TextTokenizer;

/// The name of the bundled corpus in configs.
pub const BUILTIN_SHAKESPEARE: &str = "builtin:tinyshakespeare";

/// The bundled corpus: tinyshakespeare (1,115,394 bytes), compiled into the binary.
pub const SHAKESPEARE: &str = include_str!("../../../data/tinyshakespeare.txt");

/// Reads a corpus: a UTF-8 text file, or the bundled one by its `builtin:` name.
pub fn load_corpus(spec: &str) -> Result<String> {
    let text = if spec == BUILTIN_SHAKESPEARE {
        SHAKESPEARE.to_string()
    } else if let Some(name) = spec.strip_prefix("builtin:") {
        return Err(TrainError::Corpus {
            corpus: spec.into(),
            problem: format!(
                "no built-in corpus {name:?}; the bundled one is {BUILTIN_SHAKESPEARE}"
            ),
        });
    } else {
        std::fs::read_to_string(spec).map_err(io_err(spec))?
    };
    if text.is_empty() {
        return Err(TrainError::Corpus {
            corpus: spec.into(),
            problem: "the file is empty".into(),
        });
    }
    Ok(text)
}

/// Sentences (lines, newline included) grouped into documents (ended by blank lines). A text
/// without any blank line has no document boundaries: each line is then a document, so that the
/// train/validation split (by documents) and the objectives that pair documents still work.
pub fn documents(text: &str) -> Vec<Vec<&str>> {
    if !text.split_inclusive('\n').any(|l| l.trim().is_empty()) {
        return text.split_inclusive('\n').map(|l| vec![l]).collect();
    }
    let mut docs = vec![];
    let mut cur = vec![];
    for line in text.split_inclusive('\n') {
        cur.push(line);
        if line.trim().is_empty() {
            docs.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        docs.push(cur);
    }
    docs
}

/// Which part of the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The first documents, up to `1 − val_fraction` of the tokens.
    Train,
    /// The rest.
    Val,
}

enum Ids {
    U16Mapped(memmap2::Mmap),
    U32Mapped(memmap2::Mmap),
}

/// A tokenized corpus: the token stream with sentence and document boundaries.
pub struct TokenizedCorpus {
    ids: Ids,
    len: usize,
    /// Start of each sentence in the stream, plus the end.
    sentence_starts: Vec<usize>,
    /// Index of the first sentence of each document, plus the sentence count.
    doc_starts: Vec<usize>,
}

impl std::fmt::Debug for TokenizedCorpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TokenizedCorpus({} tokens, {} documents)",
            self.len,
            self.doc_starts.len() - 1
        )
    }
}

const MAGIC: &[u8; 8] = b"LMTOK\x00\x01\x00";
const HEADER: usize = 64;

impl TokenizedCorpus {
    /// Tokenizes `text` sentence by sentence and writes `path` (atomically).
    pub fn build(text: &str, tokenizer: &TextTokenizer, path: &Path) -> Result<Self> {
        let mut ids: Vec<u32> = Vec::with_capacity(text.len() / 3);
        let mut sentence_starts = vec![0usize];
        let mut doc_starts = vec![0usize];
        for doc in documents(text) {
            for s in doc {
                ids.extend(tokenizer.encode(s)?);
                sentence_starts.push(ids.len());
            }
            doc_starts.push(sentence_starts.len() - 1);
        }
        let wide = tokenizer.vocab_size() > u16::MAX as usize + 1;
        let mut bytes = Vec::with_capacity(HEADER + ids.len() * 4);
        bytes.extend_from_slice(MAGIC);
        for v in [
            ids.len() as u64,
            u64::from(wide),
            sentence_starts.len() as u64,
            doc_starts.len() as u64,
        ] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes.resize(HEADER, 0);
        if wide {
            ids.iter()
                .for_each(|t| bytes.extend_from_slice(&t.to_le_bytes()));
        } else {
            ids.iter()
                .for_each(|&t| bytes.extend_from_slice(&(t as u16).to_le_bytes()));
        }
        bytes.resize(bytes.len().next_multiple_of(8), 0);
        for &v in sentence_starts.iter().chain(&doc_starts) {
            bytes.extend_from_slice(&(v as u64).to_le_bytes());
        }
        crate::checkpoint::write_atomic(path, &bytes)?;
        Self::open(path)
    }

    /// Memory-maps a token file written by [`TokenizedCorpus::build`].
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(io_err(path))?;
        // SAFETY: the file is private to the run directory and only ever replaced by a rename,
        // never modified in place, so the mapping stays valid and unchanged.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
        let bad = |p: &str| TrainError::Checkpoint {
            path: path.to_path_buf(),
            problem: format!("token file: {p}"),
        };
        if map.len() < HEADER || &map[..8] != MAGIC {
            return Err(bad("not a token file"));
        }
        let word = |i: usize| {
            // INVARIANT: the slice is 8 bytes long by construction.
            u64::from_le_bytes(map[8 + 8 * i..16 + 8 * i].try_into().expect("8 bytes")) as usize
        };
        let (len, wide, n_sent, n_doc) = (word(0), word(1) == 1, word(2), word(3));
        let ids_bytes = len * if wide { 4 } else { 2 };
        let bounds_at = (HEADER + ids_bytes).next_multiple_of(8);
        if map.len() != bounds_at + 8 * (n_sent + n_doc) {
            return Err(bad("truncated"));
        }
        let read = |at: usize, n: usize| -> Vec<usize> {
            (0..n)
                .map(|i| {
                    // INVARIANT: the slice is 8 bytes long by construction.
                    u64::from_le_bytes(map[at + 8 * i..at + 8 * i + 8].try_into().expect("8 bytes"))
                        as usize
                })
                .collect()
        };
        let sentence_starts = read(bounds_at, n_sent);
        let doc_starts = read(bounds_at + 8 * n_sent, n_doc);
        let ids = if wide {
            Ids::U32Mapped(map)
        } else {
            Ids::U16Mapped(map)
        };
        Ok(Self {
            ids,
            len,
            sentence_starts,
            doc_starts,
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens `range` of the stream.
    pub fn tokens(&self, range: std::ops::Range<usize>) -> Vec<u32> {
        match &self.ids {
            Ids::U16Mapped(m) => {
                let s: &[u16] = bytemuck::cast_slice(&m[HEADER..HEADER + 2 * self.len]);
                s[range].iter().map(|&t| t as u32).collect()
            }
            Ids::U32Mapped(m) => {
                let s: &[u32] = bytemuck::cast_slice(&m[HEADER..HEADER + 4 * self.len]);
                s[range].to_vec()
            }
        }
    }

    /// Appends tokens `range` to `out` without an intermediate vector.
    pub fn extend_into(&self, range: std::ops::Range<usize>, out: &mut Vec<u32>) {
        match &self.ids {
            Ids::U16Mapped(m) => {
                let s: &[u16] = bytemuck::cast_slice(&m[HEADER..HEADER + 2 * self.len]);
                out.extend(s[range].iter().map(|&t| t as u32));
            }
            Ids::U32Mapped(m) => {
                let s: &[u32] = bytemuck::cast_slice(&m[HEADER..HEADER + 4 * self.len]);
                out.extend_from_slice(&s[range]);
            }
        }
    }

    /// Number of documents.
    pub fn num_documents(&self) -> usize {
        self.doc_starts.len() - 1
    }

    /// Document `d` as its sentences' token ids.
    pub fn document(&self, d: usize) -> Vec<Vec<u32>> {
        (self.doc_starts[d]..self.doc_starts[d + 1])
            .map(|s| self.tokens(self.sentence_starts[s]..self.sentence_starts[s + 1]))
            .collect()
    }

    /// Token range of document `d`.
    pub fn document_range(&self, d: usize) -> std::ops::Range<usize> {
        self.sentence_starts[self.doc_starts[d]]..self.sentence_starts[self.doc_starts[d + 1]]
    }

    /// The first document of the validation split: the first whose start is at or after
    /// `(1 − val_fraction)` of the tokens.
    pub fn split_document(&self, val_fraction: f64) -> usize {
        let cut = (self.len as f64 * (1.0 - val_fraction)) as usize;
        (0..self.num_documents())
            .find(|&d| self.document_range(d).start >= cut)
            .unwrap_or(self.num_documents())
    }

    /// The token range of a split: documents before/after [`TokenizedCorpus::split_document`].
    pub fn split_range(&self, split: Split, val_fraction: f64) -> std::ops::Range<usize> {
        let d = self.split_document(val_fraction);
        let at = if d < self.num_documents() {
            self.document_range(d).start
        } else {
            self.len
        };
        match split {
            Split::Train => 0..at,
            Split::Val => at..self.len,
        }
    }

    /// The documents of a split.
    pub fn split_documents(&self, split: Split, val_fraction: f64) -> std::ops::Range<usize> {
        let d = self.split_document(val_fraction);
        match split {
            Split::Train => 0..d,
            Split::Val => d..self.num_documents(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::CharTokenizer;

    #[test]
    fn documents_reassemble_the_text() {
        let text = "First:\nhello\n\nSecond:\nworld\n";
        let docs = documents(text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs.concat().concat(), text);
        let tok = TextTokenizer::Char(CharTokenizer::fit(text));
        let dir = tempfile::tempdir().unwrap();
        let c = TokenizedCorpus::build(text, &tok, &dir.path().join("t.bin")).unwrap();
        assert_eq!(c.len(), text.chars().count());
        assert_eq!(tok.decode(&c.tokens(0..c.len())), text);
        assert_eq!(tok.decode(&c.document(1).concat()), "Second:\nworld\n");
        assert_eq!(c.split_range(Split::Val, 0.5), 14..c.len());
        let again = TokenizedCorpus::open(&dir.path().join("t.bin")).unwrap();
        assert_eq!(again.tokens(0..again.len()), c.tokens(0..c.len()));
        std::fs::write(dir.path().join("bad.bin"), b"LMTOK\x00\x01\x00short").unwrap();
        assert!(TokenizedCorpus::open(&dir.path().join("bad.bin")).is_err());
    }
}
