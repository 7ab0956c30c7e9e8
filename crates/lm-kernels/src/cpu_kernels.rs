//! Which matrix-product kernels this CPU runs, and the precision that trains fastest on it.
//!
//! Kept apart from [`crate::precision`] (the setting) so that the setting does not depend on the
//! kernels that read it: `gemm` reads `precision`, this module reads both.

use std::fmt;

use crate::precision::MatmulPrecision;

/// The kernel behind [`MatmulPrecision::Bf16`] products on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// Intel AMX tiles (`tdpbf16ps`).
    Amx,
    /// AVX512-BF16 (`vdpbf16ps`).
    Avx512Bf16,
    /// Inputs rounded to bf16, then the f32 gemm (the portable fallback).
    RoundedF32,
}

impl fmt::Display for Bf16Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Amx => "AMX-BF16",
            Self::Avx512Bf16 => "AVX512-BF16",
            Self::RoundedF32 => "rounded f32",
        })
    }
}

/// The kernel behind f32 products of the fused ops on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum F32Kernel {
    /// This crate's AVX-512 kernel.
    Avx512,
    /// The gemm crate (AVX2 + FMA where the CPU has them).
    GemmCrate,
}

impl fmt::Display for F32Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Avx512 => "AVX-512",
            Self::GemmCrate => "gemm crate",
        })
    }
}

/// Which kernel runs the `Bf16` products on this machine (after `LM_KERNELS_MAX_ISA`'s cap).
pub fn bf16_matmul_kernel() -> Bf16Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::gemm::amx::available() {
            return Bf16Kernel::Amx;
        }
    }
    if crate::gemm::has_avx512_bf16() {
        Bf16Kernel::Avx512Bf16
    } else {
        Bf16Kernel::RoundedF32
    }
}

/// Which kernel runs the f32 products of the fused ops on this machine.
pub fn f32_matmul_kernel() -> F32Kernel {
    if crate::gemm::has_avx512f() {
        F32Kernel::Avx512
    } else {
        F32Kernel::GemmCrate
    }
}

/// Whether this CPU's `vdpbf16ps` (32 bf16 multiply-adds) issues at the rate of its f32 FMAs
/// (16), so that bf16 products have twice f32's arithmetic peak: AMD's cores with AVX512-BF16
/// (Zen 4 and Zen 5) run it on both vector pipes — measured by `lm_kernels::peak`'s loops at
/// 462 against 234 GFLOP/s on a 2-core Zen 4 (2026-12-08) and 985 against 535 on a Zen 5
/// (2026-12-07). Intel's (Cooper Lake, Sapphire Rapids and later) run it on one port, the same
/// FLOP/s as f32 FMAs on two: there bf16 only adds the packing (docs/performance.md: 1.38–1.81×
/// the f32 step time on the six recipes). Told by the vendor, not timed, so that a run's
/// precision never depends on how busy the machine was.
pub fn bf16_dot_outpaces_f32() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // Asked once: CPUID traps to the hypervisor in a VM (microseconds), and the trainer
        // resolves its precision as it builds each step's ops.
        static OUTPACES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OUTPACES.get_or_init(|| {
            // CPUID leaf 0: the vendor string in EBX, EDX, ECX.
            let id = std::arch::x86_64::__cpuid(0);
            let amd = [id.ebx, id.edx, id.ecx]
                .iter()
                .flat_map(|r| r.to_le_bytes())
                .eq(*b"AuthenticAMD");
            amd && bf16_matmul_kernel() == Bf16Kernel::Avx512Bf16
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The precision that trains fastest on this CPU: bf16 products where the CPU has AMX tiles
/// (measured 2026-11-29 on an AMX Xeon, docs/performance.md: 0.63–0.85× the f32 step time over
/// the six pretraining recipes) or a `vdpbf16ps` at twice f32's peak
/// ([`bf16_dot_outpaces_f32`]: on a Zen 4, 2026-12-08, 0.72–0.90× the f32 step time over the
/// same recipes), f32 elsewhere — on Intel's AVX512-BF16 without AMX the same recipes took
/// 1.38–1.81× as long as f32, and the rounded-input fallback only adds work. Never f16: no CPU
/// measured multiplies f16 into f32 sums faster than f32.
pub fn fastest_training_precision() -> MatmulPrecision {
    if bf16_matmul_kernel() == Bf16Kernel::Amx || bf16_dot_outpaces_f32() {
        MatmulPrecision::Bf16
    } else {
        MatmulPrecision::Highest
    }
}
