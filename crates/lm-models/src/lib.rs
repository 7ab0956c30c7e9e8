//! # lm-models
//!
//! Trainable language models in candle, one readable file per architecture, with HuggingFace
//! parameter names so checkpoints move between this project and the tools people already use.
//!
//! - [`gpt`]: decoder-only GPT (GPT-2 layout).
//! - [`context`]: what a forward pass runs under ([`StepContext`]: matmul precision, dropout key),
//!   passed explicitly to every layer.
//! - [`layers`]: the shared HF layers (linear, layer norm, embeddings, attention, seeded dropout).
//! - [`params`]: the parameter store (a `VarBuilder` backend with keyed initialization).
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

pub mod bart;
pub mod bert;
pub mod context;
mod error;
pub mod gpt;
pub mod hf;
pub mod layers;
pub mod params;
mod sampling;
pub mod seq2seq;
pub mod t5;

pub use context::{DropoutKey, MatmulPrecision, Recompute, StepContext};
pub use error::{ModelError, Result};
pub use params::ParamStore;
pub use sampling::Sampling;
pub use seq2seq::EncoderDecoder;
