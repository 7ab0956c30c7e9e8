//! Vectorizable element-wise math for fused CPU kernels.
//!
//! libm's `expf`/`tanhf` are scalar calls that stop the compiler from vectorizing a loop. The
//! versions here are branch-free polynomials (Cephes' `expf`, max relative error ≈ 2e−7), and
//! [`simd`] runs a kernel compiled for AVX2 + FMA when the CPU has them, so the same loop becomes
//! 8-wide without `unsafe` in the callers.

/// `e^x` for f32; exactly 0 below −87 (where `expf` underflows to subnormals anyway), +∞ above 88.7.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting rounds to an integer
    let xc = x.clamp(-87.0, 88.5);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    let y = e * scale;
    if x < -87.0 {
        0.0
    } else if x > 88.5 {
        f32::INFINITY
    } else {
        y
    }
}

/// `tanh(x) = 1 − 2/(e^{2x} + 1)`, saturating to ±1.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Runs `f` — which should be a loop over slices calling the `#[inline(always)]` functions of this
/// module — compiled for AVX2 + FMA when the CPU supports them, and as plain code otherwise.
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features `run_avx2` is compiled for were just detected on this CPU.
            return unsafe { run_avx2(f) };
        }
    }
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_tanh_match_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp(x), x.exp());
            assert!(((a - b) / b).abs() < 5e-7, "exp({x}) = {a}, libm {b}");
            let (a, b) = (tanh(x / 8.0), (x / 8.0).tanh());
            assert!((a - b).abs() < 1e-6, "tanh({}) = {a}, libm {b}", x / 8.0);
            x += 0.0137;
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(tanh(50.0), 1.0);
        assert_eq!(tanh(-50.0), -1.0);
    }

    #[test]
    fn simd_runs_the_kernel() {
        let xs: Vec<f32> = (0..100).map(|i| i as f32 * 0.1 - 5.0).collect();
        let ys = simd(|| xs.iter().map(|&x| exp(x)).collect::<Vec<_>>());
        for (x, y) in xs.iter().zip(ys) {
            assert!(((y - x.exp()) / x.exp()).abs() < 5e-7);
        }
    }
}
