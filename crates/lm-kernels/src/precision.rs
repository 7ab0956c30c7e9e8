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

/// Which kernel runs the `Bf16` products on this machine: `"AMX-BF16"` (Intel tile
/// instructions), `"AVX512-BF16"` (`vdpbf16ps`) or `"rounded f32"` (the fallback).
pub fn bf16_matmul_kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::gemm::amx::available() {
            return "AMX-BF16";
        }
    }
    if crate::gemm::has_avx512_bf16() {
        "AVX512-BF16"
    } else {
        "rounded f32"
    }
}

/// Which kernel runs the f32 products of the fused ops on this machine: `"AVX-512"` (ours) or
/// `"gemm crate"` (the portable fallback, AVX2 + FMA where the CPU has them).
pub fn f32_matmul_kernel() -> &'static str {
    if crate::gemm::has_avx512f() {
        "AVX-512"
    } else {
        "gemm crate"
    }
}

/// The precision that trains fastest on this CPU: bf16 products where the CPU has AMX tiles
/// (measured 2026-11-29 on an AMX Xeon, docs/performance.md: 0.63–0.85× the f32 step time over
/// the six pretraining recipes), f32 elsewhere — with AVX512-BF16's `vdpbf16ps` alone the same
/// recipes took 1.38–1.81× as long as f32, and the rounded-input fallback only adds work. Never
/// f16: no CPU measured multiplies f16 into f32 sums faster than f32.
pub fn fastest_training_precision() -> MatmulPrecision {
    if bf16_matmul_kernel() == "AMX-BF16" {
        MatmulPrecision::Bf16
    } else {
        MatmulPrecision::Highest
    }
}
