//! # lm-models
//!
//! Trainable language models in candle, one readable file per architecture, with HuggingFace
//! parameter names so checkpoints move between this project and the tools people already use.
//!
//! - [`gpt`]: decoder-only GPT (GPT-2 layout).
//! - [`context`]: what a forward pass runs under ([`StepContext`]: matmul precision, dropout key),
//!   passed explicitly to every layer.
//! - [`gate`]: a hook around each recomputed block (ZeRO-3 gathers its parameters there).
//! - [`layers`]: the shared HF layers (linear, layer norm, embeddings, attention, seeded dropout).
//! - [`params`]: the parameter store (a `VarBuilder` backend with keyed initialization).
//! - [`weights`]: weight files, one `model.safetensors` or transformers' sharded layout.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lm_models::gpt::{Gpt, GptConfig};
//! use lm_models::StepContext;
//!
//! let (model, params) = Gpt::init(&GptConfig::tiny(10), 0, &Device::Cpu).unwrap();
//! let idx = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
//! let logits = model.forward(&idx, &StepContext::EVAL).unwrap();
//! assert_eq!(logits.dims(), &[1, 3, 10]);
//! assert_eq!(params.num_params(), GptConfig::tiny(10).num_params());
//! ```
//!
//! ## Outside this workspace
//!
//! The crate is not on crates.io: depend on it by path (or git), candle pinned as the workspace pins it:
//!
//! ```toml
//! [dependencies]
//! lm-models = { path = "…/lm-train/crates/lm-models" }
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
//! A program to copy: `examples/generate.rs` (run by `cargo xtask test`).

pub mod bart;
pub mod bert;
pub mod context;
mod error;
pub mod gate;
pub mod gpt;
pub mod hf;
pub mod layers;
pub mod params;
mod sampling;
pub mod seq2seq;
pub mod t5;
pub mod weights;

pub use context::{DropoutKey, MatmulPrecision, Recompute, StepContext};
pub use error::{ModelError, Result};
pub use params::ParamStore;
pub use sampling::Sampling;
pub use seq2seq::EncoderDecoder;
