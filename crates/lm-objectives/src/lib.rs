//! # lm-objectives
//!
//! Pretraining objectives of the three model families, as plain token transforms (token ids in,
//! model-ready examples out) plus the losses that score them on candle tensors.
//!
//! - [`causal`]: decoder-only causal LM (GPT): shift-by-one pairs, document packing.
//! - [`loss`]: token cross-entropy with an ignore index and label smoothing.
//! - [`rng`]: the seedable generator every random transform takes, for reproducible pipelines.
//!
//! ```
//! use lm_objectives::causal::shift_for_causal_lm;
//! let ex = shift_for_causal_lm(&[10, 11, 12, 13]).unwrap();
//! assert_eq!(ex.targets, vec![11, 12, 13]);
//! ```

pub mod causal;
mod error;
pub mod fastmath;
pub mod loss;
pub mod rng;

pub use error::{ObjectiveError, Result};
pub use rng::Rng;

/// The target value that losses skip (PyTorch's and HuggingFace's −100).
pub const IGNORE_INDEX: i64 = -100;
