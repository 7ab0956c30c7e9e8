//! # lm-train
//!
//! The trainer: corpus and tokenizer, the training loop over lm-models, lm-objectives and
//! lm-optim, evaluation, `metrics.jsonl`, atomic checkpoints and exact resume. The `lm-train`
//! binary is a thin command line over [`Trainer`].
//!
//! ```no_run
//! use lm_train::{config::TrainConfig, trainer::{default_device, Trainer}};
//! let mut cfg = TrainConfig::recipe("gpt-shakespeare-char").unwrap();
//! cfg.train.max_iters = 100;
//! let mut trainer = Trainer::new(cfg, "runs/example".as_ref(), default_device()).unwrap();
//! let summary = trainer.train().unwrap();
//! println!("val loss {:?}", summary.last_eval);
//! ```
//!
//! ## Outside this workspace
//!
//! The crate is not on crates.io: depend on it by path (or git), candle pinned as the workspace pins it:
//!
//! ```toml
//! [dependencies]
//! lm-train = { path = "…/lm-train/crates/lm-train" }
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
//! A program to copy: `examples/trainer.rs` (run by `cargo xtask test`).

pub mod batches;
pub mod checkpoint;
pub mod choices;
pub mod config;
pub mod data;
pub mod datacmd;
pub mod embedding;
mod error;
pub mod families;
pub mod family;
pub mod finetune;
pub mod generate;
pub mod lock;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod model_ref;
pub mod plot;
pub mod registry;
pub mod tasks;
pub mod tensorboard;
pub mod tokenizer;
pub mod trainer;
pub mod zero3;
pub mod zero_shot;

pub use error::{Result, TrainError};
pub use trainer::Trainer;
