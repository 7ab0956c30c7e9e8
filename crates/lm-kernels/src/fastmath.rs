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
    // `t` holds round(x·log2 e) in its low mantissa bits (its ulp is 1), so the integer is
    // read from the bits: a float-to-int `as` cast saturates and does not vectorize.
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_int.wrapping_add(127) << 23);
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

/// `erf(x)` for f32 by Abramowitz & Stegun 7.1.26, `1 − t·P(t)·e^{−x²}` with `t = 1/(1 + p|x|)`:
/// absolute error ≤ 1.5e−7, branch-free (vectorizes).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// Lanes of the reductions below: independent partial results the compiler keeps in vector
/// registers. A plain `iter().sum()` or `fold(max)` is one sequential chain (IEEE order), which
/// the compiler may not vectorize.
const LANES: usize = 16;

/// `Σ f(x_i)` with 16 (`LANES`) partial sums.
#[inline(always)]
pub fn sum_map(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    fold_lanes(acc, |a, b| a + b) + tail.iter().map(|&v| f(v)).sum::<f32>()
}

/// `Σ x_i` with 16 (`LANES`) partial sums.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    sum_map(x, |v| v)
}

/// `Σ a_i b_i` with 16 (`LANES`) partial sums.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let n = a.len().min(b.len());
    let full = n / LANES * LANES;
    for (ca, cb) in a[..full]
        .chunks_exact(LANES)
        .zip(b[..full].chunks_exact(LANES))
    {
        for ((s, &x), &y) in acc.iter_mut().zip(ca).zip(cb) {
            *s += x * y;
        }
    }
    let tail: f32 = a[full..n].iter().zip(&b[full..n]).map(|(x, y)| x * y).sum();
    fold_lanes(acc, |a, b| a + b) + tail
}

/// `max_i x_i` (−∞ for an empty slice) with 16 (`LANES`) partial maxima.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let lanes = fold_lanes(acc, |a, b| if b > a { b } else { a });
    tail.iter().fold(lanes, |m, &v| if v > m { v } else { m })
}

/// The lanes combined pairwise (8 + 8, 4 + 4, …): a few vector operations, where a sequential
/// fold is 16 dependent scalar ones — which dominated short rows (an attention row is ≤ 64).
#[inline(always)]
fn fold_lanes(mut acc: [f32; LANES], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for j in 0..width {
            acc[j] = f(acc[j], acc[j + width]);
        }
        width /= 2;
    }
    acc[0]
}

/// # Safety
/// The CPU must have AVX2 and FMA ([`simd`] checks before calling).
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
    fn lane_reductions_match_sequential_ones() {
        for n in [0usize, 1, 15, 16, 17, 100] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.25)
                .collect();
            let y: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.5).collect();
            let seq_sum: f32 = x.iter().sum();
            let seq_dot: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
            let seq_max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            assert!((sum(&x) - seq_sum).abs() < 1e-5, "sum n={n}");
            assert!((dot(&x, &y) - seq_dot).abs() < 1e-5, "dot n={n}");
            assert_eq!(max(&x), seq_max, "max n={n}");
            let sq = sum_map(&x, |v| v * v);
            assert!(
                (sq - x.iter().map(|v| v * v).sum::<f32>()).abs() < 1e-4,
                "sum_map n={n}"
            );
        }
    }

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
