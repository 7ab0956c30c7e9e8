//! One shard file: a 64-byte header, the token ids (u16 or u32, little-endian), then the
//! sentence and document boundaries (u64). From numpy:
//!
//! ```text
//! h = np.fromfile(f, "<u8", count=8)                    # magic, (width, version), tokens, sentences, documents, …
//! ids = np.memmap(f, "<u2" if h[1] & 0xffffffff == 2 else "<u4", "r", 64, (h[2],))
//! sents = np.memmap(f, "<u8", "r", (64 + h[2] * (h[1] & 0xffffffff) + 7) // 8 * 8, (h[3] + 1 + h[4] + 1,))
//! ```
//!
//! `sents[:h[3]+1]` are the token offsets where sentences start (and the end); the next `h[4]+1`
//! are the indices of each document's first sentence (and the sentence count).

use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::atomic::{rename_synced, tmp_path};
use crate::error::{bad, io_err, Result};

/// The first 8 bytes of a shard.
pub const MAGIC: &[u8; 8] = b"LMDATA\0\x01";
/// Bytes before the first token.
pub const HEADER: usize = 64;

/// The counts a shard's header holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    /// Bytes per token id: 2 or 4.
    pub token_bytes: u32,
    /// Token ids.
    pub tokens: u64,
    /// Sentences.
    pub sentences: u64,
    /// Documents.
    pub documents: u64,
    /// The position in the input's document sequence after this shard's pair (for resuming a
    /// prepare); 0 for imported shards.
    pub input_documents_end: u64,
}

impl ShardHeader {
    fn to_bytes(self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&self.token_bytes.to_le_bytes());
        h[12..16].copy_from_slice(&1u32.to_le_bytes());
        for (i, v) in [
            self.tokens,
            self.sentences,
            self.documents,
            self.input_documents_end,
        ]
        .into_iter()
        .enumerate()
        {
            h[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        h
    }

    /// Parses a header; `path` names the file in the error.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err(bad(path, "not an lm-data shard (no LMDATA header)"));
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let h = Self {
            token_bytes: u32_at(8),
            tokens: u64_at(16),
            sentences: u64_at(24),
            documents: u64_at(32),
            input_documents_end: u64_at(40),
        };
        if !matches!(h.token_bytes, 2 | 4) || u32_at(12) != 1 {
            return Err(bad(
                path,
                format!(
                    "shard header: token width {} / version {} (expected 2 or 4 / 1)",
                    h.token_bytes,
                    u32_at(12)
                ),
            ));
        }
        if h.checked_file_len().is_none() {
            return Err(bad(
                path,
                format!(
                    "shard header: {} tokens, {} sentences, {} documents is past any file size: damaged",
                    h.tokens, h.sentences, h.documents
                ),
            ));
        }
        Ok(h)
    }

    /// [`ShardHeader::file_len`], or `None` where the counts overflow 64 bits (a damaged header,
    /// refused by [`ShardHeader::parse`]).
    fn checked_file_len(&self) -> Option<u64> {
        let tokens = self.tokens.checked_mul(u64::from(self.token_bytes))?;
        let bounds = (HEADER as u64)
            .checked_add(tokens)?
            .checked_next_multiple_of(8)?;
        let entries = self.sentences.checked_add(self.documents)?.checked_add(2)?;
        bounds.checked_add(entries.checked_mul(8)?)
    }

    /// Offset of the boundaries: after the tokens, aligned to 8.
    pub fn bounds_offset(&self) -> u64 {
        (HEADER as u64 + self.tokens * self.token_bytes as u64).next_multiple_of(8)
    }

    /// The file's size the header implies.
    pub fn file_len(&self) -> u64 {
        self.bounds_offset() + 8 * (self.sentences + 1 + self.documents + 1)
    }
}

/// Writes one shard: tokens go to a temporary file as they come, the sentence and document
/// boundaries to two temporary side files (so memory does not grow with the shard), which are
/// appended at the end; then the file is renamed into place.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<std::fs::File>,
    /// Side files: sentence starts, documents' first sentences (u64 each, the leading 0 included).
    bounds: [(PathBuf, BufWriter<std::fs::File>); 2],
    token_bytes: u32,
    tokens: u64,
    sentences: u64,
    documents: u64,
    crc: crc32fast::Hasher,
}

impl ShardWriter {
    /// Starts `path` (written as `path.tmp-PID-N` until [`ShardWriter::finish`]).
    pub fn create(path: &Path, token_bytes: u32) -> Result<Self> {
        let open = |p: &Path| -> Result<BufWriter<std::fs::File>> {
            let f = std::fs::File::create(p).map_err(io_err(p))?;
            Ok(BufWriter::with_capacity(1 << 20, f))
        };
        let tmp = tmp_path(path);
        let mut out = open(&tmp)?;
        // The header is rewritten with the counts at the end.
        out.write_all(&[0u8; HEADER]).map_err(io_err(&tmp))?;
        let side = |ext: &str| -> Result<(PathBuf, BufWriter<std::fs::File>)> {
            let p = tmp_path(&path.with_extension(ext));
            let mut w = open(&p)?;
            w.write_all(&0u64.to_le_bytes()).map_err(io_err(&p))?;
            Ok((p, w))
        };
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            out,
            bounds: [side("sentences")?, side("documents")?],
            token_bytes,
            tokens: 0,
            sentences: 0,
            documents: 0,
            crc: crc32fast::Hasher::new(),
        })
    }

    /// Tokens written so far.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Documents written so far.
    pub fn documents(&self) -> u64 {
        self.documents
    }

    /// Appends a document given as its sentences' ids.
    pub fn push_document(&mut self, sentences: &[Vec<u32>]) -> Result<()> {
        let mut buf = Vec::with_capacity(64);
        for s in sentences {
            buf.clear();
            if self.token_bytes == 2 {
                s.iter()
                    .for_each(|&t| buf.extend_from_slice(&(t as u16).to_le_bytes()));
            } else {
                s.iter()
                    .for_each(|&t| buf.extend_from_slice(&t.to_le_bytes()));
            }
            self.out.write_all(&buf).map_err(io_err(&self.tmp))?;
            self.crc.update(&buf);
            self.tokens += s.len() as u64;
            self.sentences += 1;
            let (p, w) = &mut self.bounds[0];
            w.write_all(&self.tokens.to_le_bytes())
                .map_err(io_err(&*p))?;
        }
        self.documents += 1;
        let (p, w) = &mut self.bounds[1];
        w.write_all(&self.sentences.to_le_bytes())
            .map_err(io_err(&*p))?;
        Ok(())
    }

    /// Writes the boundaries and the header, syncs and renames; returns the header and the
    /// CRC-32 of the whole file.
    pub fn finish(mut self, input_documents_end: u64) -> Result<(ShardHeader, u32)> {
        let header = ShardHeader {
            token_bytes: self.token_bytes,
            tokens: self.tokens,
            sentences: self.sentences,
            documents: self.documents,
            input_documents_end,
        };
        let pad = header.bounds_offset() - (HEADER as u64 + self.tokens * self.token_bytes as u64);
        let pad = vec![0u8; pad as usize];
        self.out.write_all(&pad).map_err(io_err(&self.tmp))?;
        self.crc.update(&pad);
        // The side files, in order, through the checksum.
        let mut chunk = vec![0u8; 1 << 20];
        for (p, w) in &mut self.bounds {
            w.flush().map_err(io_err(&*p))?;
            let mut r = std::fs::File::open(&*p).map_err(io_err(&*p))?;
            loop {
                let n = std::io::Read::read(&mut r, &mut chunk).map_err(io_err(&*p))?;
                if n == 0 {
                    break;
                }
                self.out.write_all(&chunk[..n]).map_err(io_err(&self.tmp))?;
                self.crc.update(&chunk[..n]);
            }
        }
        self.out.flush().map_err(io_err(&self.tmp))?;
        let file = self.out.get_mut();
        use std::io::{Seek, SeekFrom};
        let head = header.to_bytes();
        file.seek(SeekFrom::Start(0)).map_err(io_err(&self.tmp))?;
        file.write_all(&head).map_err(io_err(&self.tmp))?;
        file.sync_all().map_err(io_err(&self.tmp))?;
        // The CRC covers the file in order: header, tokens, boundaries.
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.combine(&self.crc);
        rename_synced(&self.tmp, &self.path)?;
        Ok((header, crc.finalize()))
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        // Finished: only the side files are left to remove; not finished (an error on the way):
        // no temporary file is left behind either.
        let _ = std::fs::remove_file(&self.tmp);
        for (p, _) in &self.bounds {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A memory-mapped shard, its header checked against the file's size.
pub struct Shard {
    path: PathBuf,
    map: memmap2::Mmap,
    header: ShardHeader,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shard({}, {:?})", self.path.display(), self.header)
    }
}

impl Shard {
    /// Maps `path` and checks its header and size (not its checksum: see [`Shard::crc32`]).
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(io_err(path))?;
        // SAFETY: shards are written under a temporary name and renamed into place, never
        // modified in place afterwards, so the mapped bytes do not change while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
        let header = ShardHeader::parse(&map, path)?;
        if map.len() as u64 != header.file_len() {
            return Err(bad(
                path,
                format!(
                    "is {} bytes but its header ({} tokens, {} sentences, {} documents) says {}: truncated or damaged",
                    map.len(),
                    header.tokens,
                    header.sentences,
                    header.documents,
                    header.file_len()
                ),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            map,
            header,
        })
    }

    /// The shard's header.
    pub fn header(&self) -> ShardHeader {
        self.header
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// CRC-32 of the whole file.
    pub fn crc32(&self) -> u32 {
        crc32fast::hash(&self.map)
    }

    /// Appends tokens `range` (shard-local) to `out`.
    pub fn extend_into(&self, range: Range<usize>, out: &mut Vec<u32>) {
        let n = self.header.tokens as usize;
        let start = range.start.min(n);
        let range = start..range.end.clamp(start, n);
        if self.header.token_bytes == 2 {
            let ids: &[u16] = bytemuck::cast_slice(&self.map[HEADER..HEADER + 2 * n]);
            out.extend(ids[range].iter().map(|&t| u32::from(t)));
        } else {
            let ids: &[u32] = bytemuck::cast_slice(&self.map[HEADER..HEADER + 4 * n]);
            out.extend_from_slice(&ids[range]);
        }
    }

    fn bound(&self, i: u64) -> usize {
        let at = (self.header.bounds_offset() + 8 * i) as usize;
        let mut b = [0u8; 8];
        if let Some(bytes) = self.map.get(at..at + 8) {
            b.copy_from_slice(bytes);
        }
        u64::from_le_bytes(b) as usize
    }

    /// Token offset (shard-local) where sentence `s` starts; `s = sentences` gives the end.
    /// Clamped to the tokens, so that a damaged boundary cannot index out of the shard (its
    /// checksum, [`Shard::check_contents`] and `lm-train data verify` say it is damaged).
    pub fn sentence_start(&self, s: usize) -> usize {
        self.bound(s as u64).min(self.header.tokens as usize)
    }

    /// Index of document `d`'s first sentence; `d = documents` gives the sentence count.
    /// Clamped to the sentences, as [`Shard::sentence_start`].
    pub fn document_first_sentence(&self, d: usize) -> usize {
        self.bound(self.header.sentences + 1 + d as u64)
            .min(self.header.sentences as usize)
    }

    /// Checks the boundaries (monotone, within the tokens) and every id (< `vocab`): what a
    /// damaged shard whose checksum was not checked could otherwise turn into a wrong index.
    pub fn check_contents(&self, vocab: usize) -> Result<()> {
        let h = self.header;
        let mut prev = 0;
        for s in 0..=h.sentences as usize {
            let v = self.bound(s as u64);
            if v < prev || v > h.tokens as usize || (s == 0 && v != 0) {
                return Err(bad(
                    &self.path,
                    format!("sentence boundary {s} is {v}: damaged"),
                ));
            }
            prev = v;
        }
        if self.sentence_start(h.sentences as usize) != h.tokens as usize {
            return Err(bad(
                &self.path,
                "the last sentence does not end at the last token: damaged",
            ));
        }
        let mut prev = 0;
        for d in 0..=h.documents as usize {
            let v = self.bound(h.sentences + 1 + d as u64);
            if v < prev || v > h.sentences as usize || (d == 0 && v != 0) {
                return Err(bad(
                    &self.path,
                    format!("document boundary {d} is {v}: damaged"),
                ));
            }
            prev = v;
        }
        if self.document_first_sentence(h.documents as usize) != h.sentences as usize {
            return Err(bad(
                &self.path,
                "the last document does not end at the last sentence: damaged",
            ));
        }
        let mut ids = Vec::with_capacity(1 << 16);
        let mut at = 0;
        while at < h.tokens as usize {
            let end = (at + (1 << 16)).min(h.tokens as usize);
            ids.clear();
            self.extend_into(at..end, &mut ids);
            if let Some(i) = ids.iter().position(|&t| t as usize >= vocab) {
                return Err(bad(
                    &self.path,
                    format!(
                        "token {} is id {}, not below the vocabulary size {vocab}",
                        at + i,
                        ids[i]
                    ),
                ));
            }
            at = end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header whose counts imply a file past 2^64 bytes is refused, not overflowed.
    #[test]
    fn counts_past_any_file_size_are_refused() {
        let path = Path::new("s.bin");
        let header = |tokens: u64, sentences: u64| {
            ShardHeader {
                token_bytes: 4,
                tokens,
                sentences,
                documents: 1,
                input_documents_end: 0,
            }
            .to_bytes()
        };
        let ok = ShardHeader::parse(&header(10, 2), path).unwrap();
        assert_eq!(ok.file_len(), 64 + 40 + 8 * (2 + 1 + 1 + 1));
        for (tokens, sentences) in [(u64::MAX / 4 + 1, 1), (1, u64::MAX - 1), (u64::MAX / 4, 1)] {
            let e = ShardHeader::parse(&header(tokens, sentences), path).unwrap_err();
            assert!(e.to_string().contains("past any file size"), "{e}");
        }
    }
}
