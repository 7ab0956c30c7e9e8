//! # lm-optim
//!
//! Optimizers for any candle model, built from small pieces: an update rule ([`Sgd`], [`Adam`]
//! (and AdamW), [`AdaFactor`]) over [`ParamGroup`]s, a learning rate per step from a
//! [`Schedule`], gradient clipping ([`clip::clip_grad_norm`]), dynamic loss scaling for mixed
//! precision ([`LossScaler`]), keyed initialization ([`init`]) and the papers' compositions
//! ([`presets::gpt3`], [`presets::bert`], [`presets::t5`]).
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use lm_optim::{Adam, AdamConfig, Optimizer, ParamGroup, Schedule};
//!
//! let w = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
//! let mut opt = Adam::new(
//!     vec![ParamGroup::new("all", vec![("w".into(), w.clone())], 0.0)],
//!     AdamConfig::adamw(),
//! ).unwrap();
//! let schedule = Schedule::warmup_cosine(0.1, 0.01, 0.0, 10.0).unwrap();
//! let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
//! let grads = loss.backward().unwrap();
//! opt.step(&grads, schedule.value(0.0)).unwrap();
//! // Adam's first step moves each coordinate by lr against the sign of its gradient.
//! let w = w.as_tensor().to_vec1::<f32>().unwrap();
//! assert!((w[0] - 0.9).abs() < 1e-6 && (w[1] + 1.9).abs() < 1e-6);
//! ```
//!
//! ## Outside this workspace
//!
//! The crate is not on crates.io: depend on it by path (or git), candle pinned as the workspace pins it:
//!
//! ```toml
//! [dependencies]
//! lm-optim = { path = "…/lm-train/crates/lm-optim" }
//! candle-core = "=0.11.0"
//! candle-nn = "=0.11.0"      # for the `candle-nn` feature (default)
//!
//! [profile.dev.package."*"]
//! opt-level = 3   # candle is unusably slow unoptimized
//! ```
//!
//! It builds on crates.io's candle-core 0.11.0 as it is; the workspace's other crates use the
//! patched candle-core of `vendor/` (its grad mode), which a dependent must name in its own
//! `[patch.crates-io]` (a workspace's patches do not reach the projects that depend on it).
//! A program to copy: `examples/candle_nn_mlp.rs` (run by `cargo xtask test`).

pub mod adafactor;
pub mod adam;
#[cfg(feature = "candle-nn")]
pub mod candle_nn_bridge;
pub mod clip;
mod error;
pub mod init;
pub mod loss_scale;
pub mod optimizer;
pub mod presets;
pub mod schedule;
pub mod sgd;

pub use adafactor::{AdaFactor, AdaFactorConfig, AdaFactorLr};
pub use adam::{Adam, AdamConfig, WeightDecay};
pub use error::{OptimError, Result};
pub use loss_scale::LossScaler;
pub use optimizer::{
    decays, load_state, save_state, split_by_decay, state_bytes, NamedVars, Optimizer, ParamGroup,
};
pub use schedule::{BatchSizeRamp, Schedule};
pub use sgd::{Sgd, SgdConfig};
