//! Prepared token datasets.
//!
//! A corpus — files, directories or globs of plain text, JSON Lines (optionally gzip or zstd)
//! and Parquet — is tokenized once ([`prepare()`]) into shards of token ids with their sentence
//! and document boundaries, a checksum per shard and a manifest naming the tokenizer and the
//! sources. Training memory-maps the shards ([`Dataset`]); nothing is tokenized again. The
//! field's existing token files (nanoGPT, llm.c) import into the same format ([`import()`]).
//!
//! The crate knows no tokenizer type: [`Encoder`] is what `prepare` needs of one.
//!
//! ## Outside this workspace
//!
//! The crate is not on crates.io: depend on it by path (or git):
//!
//! ```toml
//! [dependencies]
//! lm-data = { path = "…/lm-train/crates/lm-data" }
//! ```
//!
//! It does not use candle.
//! A program to copy: `examples/bytes.rs` (run by `cargo xtask test`).

mod atomic;
mod dataset;
mod error;
mod import;
mod inputs;
mod manifest;
mod parquet_input;
mod prepare;
mod shard;

pub use atomic::{remove_stray_tmp, rename_synced, sync_dir, tmp_path, write_atomic};
pub use dataset::{Dataset, Split, SplitView};
pub use error::{io_err, DataError, Result};
pub use import::{import, ImportFormat};
pub use inputs::{
    for_each_document, format_of, read_all_documents, resolve_inputs, Compression, InputFile,
    InputFormat, ReadOptions, Skipped,
};
pub use manifest::{
    sha256_hex, Manifest, PrepareParams, ShardInfo, SourceInfo, SplitInfo, TokenizerInfo, ValSplit,
    FORMAT,
};
pub use parquet_input::write_parquet_texts;
pub use prepare::{params, prepare, Encoded, Encoder, PrepareOptions, Progress};
pub use shard::{Shard, ShardHeader, ShardWriter, HEADER, MAGIC};
