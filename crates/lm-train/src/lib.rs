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
pub mod config;
pub mod data;
mod error;
pub mod finetune;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod tasks;
pub mod tokenizer;
pub mod trainer;

pub use error::{Result, TrainError};
pub use trainer::Trainer;

/// Keeps freed tensor buffers in the process instead of returning them to the kernel: glibc
/// serves large blocks with mmap and unmaps them on free, so every step's fresh activations and
/// gradients page-fault again (a profile of the training step showed it; ~8% of the step).
/// Call once at the start of a training program.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
