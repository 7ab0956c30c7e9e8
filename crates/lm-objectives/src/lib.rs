//! # lm-objectives
//!
//! Pretraining objectives of the three model families, as plain token transforms (token ids in,
//! model-ready examples out) plus the losses that score them on candle tensors.
//!
//! - [`causal`]: decoder-only causal LM (GPT): shift-by-one pairs, document packing.
//! - [`mlm`]: masked LM (BERT/RoBERTa): the 15% / 80-10-10 noise function, whole-word and dynamic.
//! - [`nsp`]: next sentence prediction pairs (BERT) and FULL-SENTENCES packing (RoBERTa).
//! - [`span_corruption`]: T5's span corruption with sentinels, its length helper, and prefix LM.
//! - [`bart`]: BART's text infilling, sentence permutation, token deletion, document rotation.
//! - [`collate`]: padding, attention masks, decoder inputs shifted right.
//! - [`loss`]: token cross-entropy with an ignore index and label smoothing; NSP and BERT losses.
//! - [`rng`]: the seedable generator every random transform takes, for reproducible pipelines.
//!
//! ```
//! use lm_objectives::causal::shift_for_causal_lm;
//! let ex = shift_for_causal_lm(&[10, 11, 12, 13]).unwrap();
//! assert_eq!(ex.targets, vec![11, 12, 13]);
//! ```
//!
//! ## Outside this workspace
//!
//! The crate is not on crates.io: depend on it by path (or git), candle pinned as the workspace pins it:
//!
//! ```toml
//! [dependencies]
//! lm-objectives = { path = "…/lm-train/crates/lm-objectives" }
//! candle-core = "=0.11.0"
//!
//! [patch.crates-io]
//! candle-core = { path = "…/lm-train/vendor/candle-core" }
//!
//! [profile.dev.package."*"]
//! opt-level = 3   # candle is unusably slow unoptimized
//! ```
//!
//! The patch is the workspace's candle-core with its grad mode and backward hooks
//! (`vendor/README.md`); a workspace's `[patch]` does not reach the projects that depend on
//! it, so a dependent names it in its own manifest.
//! A program to copy: `examples/noise.rs` (run by `cargo xtask test`).

pub mod bart;
pub mod causal;
pub mod collate;
mod error;
pub mod loss;
pub mod mlm;
pub mod nsp;
pub mod rng;
pub mod span_corruption;

pub use error::{ObjectiveError, Result};
pub use rng::Rng;

/// The target value that losses skip (PyTorch's and HuggingFace's −100).
pub const IGNORE_INDEX: i64 = -100;
