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

/// Keeps freed tensor buffers in the process instead of returning them to the kernel, so every
/// step's fresh activations and gradients do not page-fault again (profiles of the training step
/// showed ~8% in page faults with glibc's defaults, ~10% with mimalloc's). For glibc: no mmap for
/// large blocks, no trimming. For mimalloc (the binaries' allocator): no purging of freed memory
/// (its default returns it to the OS after 10 ms). Call once at the start of a training program.
pub fn keep_freed_memory() {
    /// `mi_option_purge_delay` in mimalloc's `mi_option_t` (mimalloc.h; the Rust bindings name
    /// the options around it but not this one).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets a process-wide allocator option; -1 means "never purge".
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
