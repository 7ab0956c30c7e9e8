//! The precision of the matrix products inside the fused kernels: an argument of every op that
//! multiplies matrices (no hidden per-thread setting).

/// Precision of the matrix products inside the fused CPU kernels (linear layers, causal
/// attention) for f32 tensors — PyTorch's `torch.set_float32_matmul_precision`. Passed to each
/// op when it is built (its backward uses the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MatmulPrecision {
    /// f32 products (the default).
    #[default]
    Highest,
    /// Inputs rounded to bf16, products and sums in f32: mixed precision with the weights,
    /// activations and gradients kept in f32. Runs on AVX512-BF16 (`vdpbf16ps`) where the CPU
    /// has it, and as rounded inputs through the f32 gemm elsewhere.
    Bf16,
    /// Inputs rounded to IEEE half (f16), products and sums in f32: the chapter's FP16 mixed
    /// precision, with f16's narrow range (±65504, nothing below 2^-24) — run it with a loss
    /// scaler. Every product rounds (also the small ones that `Bf16` leaves in f32), so an
    /// overflow shows.
    F16,
}
