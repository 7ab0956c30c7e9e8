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

pub use error::{Result, TrainError};
pub use trainer::Trainer;
