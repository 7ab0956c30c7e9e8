//! The precision of the matrix products inside the fused kernels, a per-thread setting.

/// Precision of the matrix products inside the fused CPU kernels (linear layers, causal
/// attention) for f32 tensors — PyTorch's `torch.set_float32_matmul_precision`, and like
/// autocast, a per-thread setting read when an op is built (its backward uses the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

thread_local! {
    static PRECISION: std::cell::Cell<MatmulPrecision> = const { std::cell::Cell::new(MatmulPrecision::Highest) };
}

/// Sets the matmul precision of the ops this thread builds from now on.
pub fn set_matmul_precision(p: MatmulPrecision) {
    PRECISION.with(|c| c.set(p));
}

/// This thread's matmul precision.
pub fn matmul_precision() -> MatmulPrecision {
    PRECISION.with(|c| c.get())
}

/// Runs `f` with this thread's matmul precision set to `p`, restoring the previous one after.
pub fn with_matmul_precision<R>(p: MatmulPrecision, f: impl FnOnce() -> R) -> R {
    struct Restore(MatmulPrecision);
    impl Drop for Restore {
        fn drop(&mut self) {
            set_matmul_precision(self.0);
        }
    }
    let _restore = Restore(matmul_precision());
    set_matmul_precision(p);
    f()
}
