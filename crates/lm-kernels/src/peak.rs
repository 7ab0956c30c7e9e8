//! The machine's arithmetic limit, measured: what MFU and kernel efficiency are stated against.

use crate::precision::MatmulPrecision;

/// `iters` times twelve independent `op zmmI, zmm14, zmm15` (I = 0‥11) on registers zeroed
/// first (no denormal operands, which take microcode assists): a register-only loop at the
/// instruction's throughput. Only inside `unsafe`, with the instruction set checked.
#[cfg(target_arch = "x86_64")]
macro_rules! zmm_loop {
    ($op:literal, $iters:expr) => {
        std::arch::asm!(
            "vpxord zmm0, zmm0, zmm0", "vpxord zmm1, zmm1, zmm1", "vpxord zmm2, zmm2, zmm2", "vpxord zmm3, zmm3, zmm3", "vpxord zmm4, zmm4, zmm4", "vpxord zmm5, zmm5, zmm5", "vpxord zmm6, zmm6, zmm6", "vpxord zmm7, zmm7, zmm7", "vpxord zmm8, zmm8, zmm8", "vpxord zmm9, zmm9, zmm9", "vpxord zmm10, zmm10, zmm10", "vpxord zmm11, zmm11, zmm11", "vpxord zmm14, zmm14, zmm14", "vpxord zmm15, zmm15, zmm15",
            "2:",
            concat!($op, " zmm0, zmm14, zmm15"), concat!($op, " zmm1, zmm14, zmm15"),
            concat!($op, " zmm2, zmm14, zmm15"), concat!($op, " zmm3, zmm14, zmm15"),
            concat!($op, " zmm4, zmm14, zmm15"), concat!($op, " zmm5, zmm14, zmm15"),
            concat!($op, " zmm6, zmm14, zmm15"), concat!($op, " zmm7, zmm14, zmm15"),
            concat!($op, " zmm8, zmm14, zmm15"), concat!($op, " zmm9, zmm14, zmm15"),
            concat!($op, " zmm10, zmm14, zmm15"), concat!($op, " zmm11, zmm14, zmm15"),
            "dec {n}", "jnz 2b",
            n = inout(reg) $iters => _,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
            out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
            out("zmm10") _, out("zmm11") _, out("zmm14") _, out("zmm15") _,
            options(nostack),
        )
    };
}

/// f32 FMA throughput of one core in a register-only loop (12 independent accumulators, no
/// memory operands): the arithmetic limit any matmul kernel works against. 512-bit FMA where the
/// CPU has AVX-512, else 256-bit with AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
pub fn fma_flops_one_core() -> Option<f64> {
    fma_flops_one_core_for(50_000_000, std::arch::is_x86_feature_detected!("avx512f"))
}

/// [`fma_flops_one_core`] over `iters` iterations of 12 FMAs, 512-bit ones with `zmm` (else
/// 256-bit); `None` where the CPU lacks them.
#[cfg(target_arch = "x86_64")]
fn fma_flops_one_core_for(iters: usize, zmm: bool) -> Option<f64> {
    use std::arch::asm;
    let have = match zmm {
        true => std::arch::is_x86_feature_detected!("avx512f"),
        false => std::arch::is_x86_feature_detected!("fma"),
    };
    if !have {
        return None;
    }
    let start = std::time::Instant::now();
    // SAFETY: the loops touch only the clobbered vector registers and the counter; the
    // instruction set was checked above.
    unsafe {
        if zmm {
            zmm_loop!("vfmadd231ps", iters);
        } else {
            // Zeros throughout: no denormal operands (which take microcode assists).
            asm!(
                "vxorps ymm0, ymm0, ymm0", "vxorps ymm1, ymm1, ymm1", "vxorps ymm2, ymm2, ymm2", "vxorps ymm3, ymm3, ymm3", "vxorps ymm4, ymm4, ymm4", "vxorps ymm5, ymm5, ymm5", "vxorps ymm6, ymm6, ymm6", "vxorps ymm7, ymm7, ymm7", "vxorps ymm8, ymm8, ymm8", "vxorps ymm9, ymm9, ymm9", "vxorps ymm10, ymm10, ymm10", "vxorps ymm11, ymm11, ymm11", "vxorps ymm14, ymm14, ymm14", "vxorps ymm15, ymm15, ymm15",
                "2:",
                "vfmadd231ps ymm0, ymm14, ymm15", "vfmadd231ps ymm1, ymm14, ymm15",
                "vfmadd231ps ymm2, ymm14, ymm15", "vfmadd231ps ymm3, ymm14, ymm15",
                "vfmadd231ps ymm4, ymm14, ymm15", "vfmadd231ps ymm5, ymm14, ymm15",
                "vfmadd231ps ymm6, ymm14, ymm15", "vfmadd231ps ymm7, ymm14, ymm15",
                "vfmadd231ps ymm8, ymm14, ymm15", "vfmadd231ps ymm9, ymm14, ymm15",
                "vfmadd231ps ymm10, ymm14, ymm15", "vfmadd231ps ymm11, ymm14, ymm15",
                "dec {n}", "jnz 2b",
                n = inout(reg) iters => _,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _,
                out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _,
                out("ymm10") _, out("ymm11") _, out("ymm14") _, out("ymm15") _,
                options(nostack),
            );
        }
    }
    let lanes = if zmm { 16.0 } else { 8.0 };
    Some(iters as f64 * 12.0 * 2.0 * lanes / start.elapsed().as_secs_f64())
}

/// The f32 FMA peak of one core: not measured off x86-64.
#[cfg(not(target_arch = "x86_64"))]
pub fn fma_flops_one_core() -> Option<f64> {
    None
}

/// The f32 FMA peak of all cores: the register-only loop on every core at once.
pub fn fma_peak() -> Option<f64> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runs: Vec<Option<f64>> = std::thread::scope(|s| {
        let h: Vec<_> = (0..cores).map(|_| s.spawn(fma_flops_one_core)).collect();
        h.into_iter().map(|h| h.join().ok().flatten()).collect()
    });
    runs.into_iter().sum()
}

/// bf16 dot-product throughput of one core with AVX512-BF16: `vdpbf16ps` in a register-only
/// loop (12 independent accumulators), 64 FLOP per instruction (16 lanes, each two products and
/// two sums). `None` without AVX512-BF16.
#[cfg(target_arch = "x86_64")]
fn bf16_dot_flops_one_core(iters: usize) -> Option<f64> {
    if !crate::gemm::has_avx512_bf16() {
        return None;
    }
    let start = std::time::Instant::now();
    // SAFETY: the loop touches only the clobbered vector registers and the counter; AVX512-BF16
    // was checked above.
    unsafe {
        zmm_loop!("vdpbf16ps", iters);
    }
    Some(iters as f64 * 12.0 * 64.0 / start.elapsed().as_secs_f64())
}

/// The arithmetic peak a run's MFU is stated against: FLOP/s and what they are.
#[derive(Debug, Clone, PartialEq)]
pub struct Peak {
    /// FLOP/s.
    pub flops: f64,
    /// What was measured (or set), for the run's log.
    pub what: String,
}

/// Which register-only loop bounds products at `precision` on this CPU: f32 FMA (f32 and f16
/// products, and bf16 ones on the rounded-f32 fallback), AVX512-BF16's dot product, or none
/// (AMX's tiles: a tile loop is not built, so no peak is claimed).
pub fn peak_loop(precision: MatmulPrecision) -> Option<&'static str> {
    use crate::cpu_kernels::{bf16_matmul_kernel, Bf16Kernel};
    match (precision, bf16_matmul_kernel()) {
        (MatmulPrecision::Bf16, Bf16Kernel::Amx) => None,
        (MatmulPrecision::Bf16, Bf16Kernel::Avx512Bf16) => Some("AVX512-BF16 vdpbf16ps"),
        _ if crate::gemm::has_avx512f() => Some("AVX-512 f32 FMA"),
        _ => Some("AVX2 f32 FMA"),
    }
}

/// The peak of `threads` cores for products at `precision` on this CPU: [`peak_loop`]'s loop
/// run on `threads` cores at once, the best of five rounds (about 100 ms), measured once per
/// process and precision.
/// `None` off x86-64, without FMA, or for AMX products.
pub fn cpu_peak(precision: MatmulPrecision, threads: usize) -> Option<Peak> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Measured = HashMap<(MatmulPrecision, usize), Option<Peak>>;
    static MEASURED: Mutex<Option<Measured>> = Mutex::new(None);
    let mut cache = MEASURED.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .get_or_insert_with(HashMap::new)
        .entry((precision, threads))
        .or_insert_with(|| measure(precision, threads.max(1)))
        .clone()
}

#[cfg(target_arch = "x86_64")]
fn measure(precision: MatmulPrecision, threads: usize) -> Option<Peak> {
    let what = peak_loop(precision)?;
    // The instruction width the products run at (the ISA cap included).
    let one: fn() -> Option<f64> = if what.starts_with("AVX512-BF16") {
        || bf16_dot_flops_one_core(4_000_000)
    } else if what.starts_with("AVX-512") {
        || fma_flops_one_core_for(4_000_000, true)
    } else {
        || fma_flops_one_core_for(4_000_000, false)
    };
    // The best of five rounds: a round that shares a core with another thread (a pool's
    // worker still spinning after a step, a neighbour on the VM) measures low, never high, and
    // a low peak would overstate the MFU (measured: 312 against 545 GFLOP/s in one round).
    let round = || -> Option<f64> {
        let runs: Vec<Option<f64>> = std::thread::scope(|s| {
            let h: Vec<_> = (0..threads).map(|_| s.spawn(one)).collect();
            h.into_iter().map(|h| h.join().ok().flatten()).collect()
        });
        runs.into_iter().sum::<Option<f64>>()
    };
    let flops = (0..5)
        .filter_map(|_| round())
        .fold(None, |best: Option<f64>, f| {
            Some(best.map_or(f, |b| b.max(f)))
        })?;
    Some(Peak {
        flops,
        what: format!(
            "{what} peak of {threads} core{}, measured ({:.0} GFLOP/s)",
            if threads == 1 { "" } else { "s" },
            flops / 1e9
        ),
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn measure(_: MatmulPrecision, _: usize) -> Option<Peak> {
    None
}

/// Dense bf16 tensor-core peaks (FLOP/s, without sparsity) of NVIDIA data-center GPUs, from
/// NVIDIA's data sheets, by a part of the device name; the more specific names first.
const GPU_BF16_PEAKS: [(&str, f64); 10] = [
    ("GH200", 989e12),
    ("H200 NVL", 835e12),
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
];

/// The dense bf16 peak of the GPU called `name` (as the driver names it, e.g. "NVIDIA H100
/// 80GB HBM3"), from a table of data-sheet figures; `None` for a GPU not in the table.
pub fn gpu_bf16_peak(name: &str) -> Option<Peak> {
    let (k, flops) = GPU_BF16_PEAKS.into_iter().find(|(k, _)| name.contains(k))?;
    Some(Peak {
        flops,
        what: format!(
            "dense bf16 peak of {name} ({k}: {:.0} TFLOP/s, data sheet)",
            flops / 1e12
        ),
    })
}

/// The driver's name of a CUDA device; `None` for any other device or where the driver does
/// not answer.
pub fn gpu_name(device: &candle_core::Device) -> Option<String> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = device {
        return d.cuda_stream().context().name().ok();
    }
    let _ = device;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each precision's peak names the loop that bounds its products on this CPU, is measured
    /// once (the same value again), and is positive; AMX products claim none.
    #[test]
    fn each_precision_has_its_peak_loop() {
        for p in [
            MatmulPrecision::Highest,
            MatmulPrecision::Bf16,
            MatmulPrecision::F16,
        ] {
            let Some(what) = peak_loop(p) else {
                assert_eq!(
                    crate::cpu_kernels::bf16_matmul_kernel(),
                    crate::cpu_kernels::Bf16Kernel::Amx
                );
                assert!(cpu_peak(p, 1).is_none());
                continue;
            };
            let bf16_dot = p == MatmulPrecision::Bf16
                && crate::cpu_kernels::bf16_matmul_kernel()
                    == crate::cpu_kernels::Bf16Kernel::Avx512Bf16;
            assert_eq!(what.contains("vdpbf16ps"), bf16_dot, "{p:?}: {what}");
            let peak = cpu_peak(p, 1).unwrap();
            assert!(peak.flops > 0.0 && peak.what.starts_with(what), "{peak:?}");
            assert_eq!(cpu_peak(p, 1), Some(peak));
        }
    }

    /// Data-center GPUs by the names their drivers report, the more specific name winning.
    #[test]
    fn gpu_peaks_by_device_name() {
        let tf = |n: &str| gpu_bf16_peak(n).map(|p| p.flops / 1e12);
        assert_eq!(tf("NVIDIA H100 80GB HBM3"), Some(989.0));
        assert_eq!(tf("NVIDIA H100 PCIe"), Some(756.0));
        assert_eq!(tf("NVIDIA H100 NVL"), Some(835.0));
        assert_eq!(tf("NVIDIA H200"), Some(989.0));
        assert_eq!(tf("NVIDIA H200 NVL"), Some(835.0));
        assert_eq!(tf("NVIDIA GH200 480GB"), Some(989.0));
        assert_eq!(tf("NVIDIA A100-SXM4-80GB"), Some(312.0));
        assert_eq!(tf("NVIDIA L40S"), Some(362.0));
        assert_eq!(tf("NVIDIA L4"), Some(121.0));
        assert_eq!(tf("NVIDIA A10"), Some(125.0));
        assert_eq!(tf("Tesla V100-SXM2-16GB"), None);
        assert!(gpu_bf16_peak("NVIDIA H100 PCIe")
            .unwrap()
            .what
            .contains("H100 PCIe"));
        assert_eq!(gpu_name(&candle_core::Device::Cpu), None);
    }
}
