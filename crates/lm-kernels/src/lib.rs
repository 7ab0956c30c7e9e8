//! # lm-kernels
//!
//! The CPU compute layer under lm-models: what a training step spends its time in, kept apart
//! from the models so that a reader of "the BERT model" never meets assembly.
//!
//! - [`ops`]: differentiable layer norm, RMS norm, softmax, GELU, linear, causal attention and
//!   adds — fused CPU kernels with their backward for f32, candle's composite ops elsewhere
//!   ([`ops::composite`], the reference they are tested against).
//! - `gemm` (internal): matrix products split by instruction set — f32 AVX-512, AVX512-BF16
//!   (`vdpbf16ps`), AMX tiles (`tdpbf16ps`), and the gemm crate as the portable fallback, chosen
//!   at run time.
//! - [`gpu`]: the GPU paths of the fused ops (candle-kernels' forward kernels, closed-form
//!   backward).
//! - [`precision`]: the per-thread matmul precision (f32 or bf16 products with f32 accumulation).
//! - [`cpu_kernels`]: which product kernels this CPU runs, and the precision that trains fastest.
//! - [`host`]: reading tensors back to the host, counted (each is a synchronisation on a GPU).
//! - [`isa`]: the instruction sets the kernels may use (`LM_KERNELS_MAX_ISA` caps them, to run a
//!   smaller CPU's paths on a bigger one).
//! - [`threads`]: running a step on rayon's workers; a machine's cores shared between its ranks.
//! - [`fastmath`]: vectorizable `exp`, `tanh`, sums and dot products.
//! - [`device`]: opening a GPU with an error, not a panic, where the driver or a CUDA library
//!   is missing.
//! - [`memory`]: the allocator knobs a training binary may turn (freed memory kept, huge pages off).
//! - [`peak`]: the measured f32 FMA peak of this CPU.
//!
//! All of the workspace's `unsafe` SIMD and `asm!` lives here, each block with its SAFETY note.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let x = Tensor::new(&[[1f32, 2.0, 4.0]], &Device::Cpu).unwrap();
//! let g = Tensor::ones(3, candle_core::DType::F32, &Device::Cpu).unwrap();
//! let y = lm_kernels::ops::layer_norm(&x, &g, None, 1e-5).unwrap();
//! let mean: f32 = y.sum_all().unwrap().to_scalar().unwrap();
//! assert!(mean.abs() < 1e-5);
//! ```
//!
//! ## Outside this workspace
//!
//! The crate is not on crates.io: depend on it by path (or git), candle pinned as the workspace pins it:
//!
//! ```toml
//! [dependencies]
//! lm-kernels = { path = "…/lm-train/crates/lm-kernels" }
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
//! A program to copy: `examples/fused_block.rs` (run by `cargo xtask test`).

pub mod cpu_kernels;
pub mod device;
pub mod fastmath;
mod fused;
mod gemm;
pub mod gpu;
mod head;
pub mod host;
pub mod isa;
pub mod memory;
pub mod ops;
pub mod peak;
pub mod precision;
pub mod threads;
