//! Importing the field's token files into a dataset: nanoGPT's `train.bin` / `val.bin` (bare
//! little-endian uint16 ids) and llm.c's shards (a header of 256 int32 — magic 20240520,
//! version 1, token count — then uint16 ids). A file whose name contains `val` is validation
//! data. Documents are cut at the end-of-text id when one is given (nanoGPT appends it to each
//! document, llm.c puts it first): each document keeps its end-of-text token, where the source
//! put it.

use std::path::{Path, PathBuf};

use crate::atomic::{remove_stray_tmp, write_atomic};
use crate::error::{bad, io_err, DataError, Result};
use crate::manifest::{
    sha256_hex, Manifest, PrepareParams, ShardInfo, SourceInfo, SplitInfo, TokenizerInfo, ValSplit,
    FORMAT,
};
use crate::shard::ShardWriter;

/// Whose token files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    /// nanoGPT's `prepare.py` output: bare uint16.
    NanoGpt,
    /// llm.c's `.bin` shards: 1 KiB header, then uint16.
    LlmC,
}

/// llm.c's header: 256 little-endian int32.
const LLMC_HEADER: usize = 256 * 4;
const LLMC_MAGIC: i32 = 20240520;

/// The ids of one file, checked (header, size) and mapped.
fn ids_of(path: &Path, format: ImportFormat) -> Result<(memmap2::Mmap, usize, usize)> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    // SAFETY: the input is only read; a writer changing it under us would give wrong ids, which
    // the id check below bounds to the vocabulary, never undefined behaviour in safe reads of u8.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
    let (start, count) = match format {
        ImportFormat::NanoGpt => {
            if map.len() % 2 != 0 {
                return Err(bad(
                    path,
                    format!(
                        "{} bytes is not a whole number of uint16 ids: not a nanoGPT token file",
                        map.len()
                    ),
                ));
            }
            (0, map.len() / 2)
        }
        ImportFormat::LlmC => {
            let word = |i: usize| -> Option<i32> {
                map.get(4 * i..4 * i + 4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            };
            if word(0) != Some(LLMC_MAGIC) {
                return Err(bad(
                    path,
                    format!(
                        "no llm.c header (magic {LLMC_MAGIC} expected, found {:?})",
                        word(0)
                    ),
                ));
            }
            if word(1) != Some(1) {
                return Err(bad(
                    path,
                    format!(
                        "llm.c version {:?}; only version 1 (uint16 ids) is known",
                        word(1)
                    ),
                ));
            }
            let n = word(2).unwrap_or(-1);
            if n < 0 || map.len() != LLMC_HEADER + 2 * n as usize {
                return Err(bad(path, format!("the header says {n} tokens but the file holds {} bytes after it: truncated or damaged", map.len().saturating_sub(LLMC_HEADER))));
            }
            (LLMC_HEADER, n as usize)
        }
    };
    Ok((map, start, count))
}

/// Writes the ids of `path` as the shard `out`; returns its entry (but the file name) and the
/// input's size.
fn import_file(
    path: &Path,
    format: ImportFormat,
    out: &Path,
    vocab_size: usize,
    eot: Option<u32>,
) -> Result<(ShardInfo, u64)> {
    let (map, start, count) = ids_of(path, format)?;
    let ids: &[u8] = &map[start..start + 2 * count];
    let id = |i: usize| u32::from(u16::from_le_bytes([ids[2 * i], ids[2 * i + 1]]));
    if let Some(at) = (0..count).find(|&i| id(i) as usize >= vocab_size) {
        return Err(bad(
            path,
            format!(
                "token {at} is id {}, not below the tokenizer's vocabulary size {vocab_size}",
                id(at)
            ),
        ));
    }
    let mut w = ShardWriter::create(out, 2)?;
    let push = |a: usize, b: usize, w: &mut ShardWriter| -> Result<()> {
        match b > a {
            true => w.push_document(&[(a..b).map(id).collect()]),
            false => Ok(()),
        }
    };
    let mut doc_start = 0;
    for i in 0..count {
        if Some(id(i)) == eot {
            let end = match format {
                ImportFormat::NanoGpt => i + 1, // the id ends its document
                ImportFormat::LlmC => i,        // the id starts the next
            };
            push(doc_start, end, &mut w)?;
            doc_start = end;
        }
    }
    push(doc_start, count, &mut w)?;
    let (h, crc32) = w.finish(0)?;
    let info = ShardInfo {
        file: String::new(),
        tokens: h.tokens,
        sentences: h.sentences,
        documents: h.documents,
        bytes: h.file_len(),
        crc32,
    };
    Ok((info, map.len() as u64))
}

/// Imports `files` into `dir`, refusing any id ≥ `vocab_size`; `eot` cuts documents.
pub fn import(
    dir: &Path,
    format: ImportFormat,
    files: &[PathBuf],
    tokenizer_json: &[u8],
    vocab_size: usize,
    eot: Option<u32>,
) -> Result<Manifest> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    if dir.join("manifest.json").exists() {
        return Err(bad(dir, "already holds a dataset; choose another --out"));
    }
    remove_stray_tmp(dir)?;
    if vocab_size > 1 << 16 {
        return Err(bad(
            dir,
            format!("a vocabulary of {vocab_size} does not fit the uint16 ids of these formats"),
        ));
    }
    write_atomic(&dir.join("tokenizer.json"), tokenizer_json)?;
    let (mut train, mut val) = (SplitInfo::default(), SplitInfo::default());
    let mut sources = vec![];
    let mut documents = 0u64;
    for path in files {
        let is_val = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().to_ascii_lowercase().contains("val"));
        let (split, name) = match is_val {
            true => (&mut val, "val"),
            false => (&mut train, "train"),
        };
        let file = format!("{name}-{:05}.bin", split.shards.len());
        let (shard, bytes) = import_file(path, format, &dir.join(&file), vocab_size, eot)?;
        documents += shard.documents;
        split.push(ShardInfo { file, ..shard });
        sources.push(SourceInfo {
            path: path.display().to_string(),
            bytes,
        });
    }
    for (s, name) in [(&train, "training"), (&val, "validation")] {
        if s.documents == 0 {
            return Err(DataError::Input {
                path: dir.to_path_buf(),
                problem: format!(
                    "no {name} data among the files (validation files have `val` in their name)"
                ),
            });
        }
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        params: PrepareParams {
            tokenizer: TokenizerInfo {
                sha256: sha256_hex(tokenizer_json),
                vocab_size,
            },
            sources,
            split: ValSplit::Files,
            text_field: String::new(),
            doc_per_file: false,
            skip_invalid: false,
            shard_tokens: 0,
        },
        token_bytes: 2,
        input_documents: documents,
        skipped: Default::default(),
        train,
        val,
    };
    write_atomic(&dir.join("manifest.json"), &manifest.to_bytes())?;
    Ok(manifest)
}
