use super::*;

/// `|got − want| ≤ rel·(1 + |want|)` element by element (equal lengths).
fn assert_close(got: &[f32], want: &[f32], rel: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (x, y)) in got.iter().zip(want).enumerate() {
        assert!(
            (x - y).abs() <= rel * (1.0 + y.abs()),
            "{what} at {i}: {x} vs {y}"
        );
    }
}

/// `len` values in [−2, 2) from a seeded SplitMix64 stream.
fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// Our f32 kernel (AVX-512 where present) against the gemm crate, on odd sizes, transposed
/// and row-strided operands, accumulating and scaled.
#[test]
fn f32_kernel_equals_gemm_crate() {
    for (m, k, n) in [
        (13, 7, 37),
        (70, 129, 33),
        (1, 1, 1),
        (130, 64, 64),
        (20, 600, 40),
        // k·n over IN_PLACE_B: a row-major b is packed too.
        (30, 1030, 520),
    ] {
        let a = data(m * k, 6);
        let (bt, b) = (data(n * k, 7), data(k * n, 9));
        let init = data(m * (n + 3), 8);
        let at = data(k * m, 10);
        // b transposed (packed into panels) and row-major (read in place); a row-major and
        // transposed; on all threads and on one (where a transposed a takes b's panels
        // packed chunk by chunk).
        for ((av, bv), par) in [
            (Mat::rows(&a, k), Mat::cols(&bt, k)),
            (Mat::rows(&a, k), Mat::rows(&b, n)),
            (Mat::cols(&at, m), Mat::rows(&b, n)),
            (Mat::cols(&at, m), Mat::cols(&bt, k)),
        ]
        .into_iter()
        .flat_map(|ops| [(ops, true), (ops, false)])
        {
            let (mut d1, mut d2) = (init.clone(), init.clone());
            gemm_into(&mut d1, n + 3, av, bv, (m, k, n), true, 0.5, par);
            gemm_crate(&mut d2, n + 3, av, bv, (m, k, n), true, 0.5, true);
            // Each sum of k products is off its exact value by at most k·u·Σ|a b|
            // (u = 2^-24), whatever the order: the two may differ by twice that.
            let abs = |x: &Mat, len: usize| -> Vec<f32> {
                x.data[..len].iter().map(|v| v.abs()).collect()
            };
            let (aa, ba) = (abs(&av, av.data.len()), abs(&bv, bv.data.len()));
            let mut bound = vec![0f32; m * (n + 3)];
            let (aam, bam) = (Mat { data: &aa, ..av }, Mat { data: &ba, ..bv });
            gemm_crate(&mut bound, n + 3, aam, bam, (m, k, n), false, 0.5, true);
            for (i, (x, y)) in d1.iter().zip(&d2).enumerate() {
                let tol = 1e-6 * (1.0 + y.abs()) + k as f32 * f32::EPSILON * bound[i];
                assert!((x - y).abs() <= tol, "{m}x{k}x{n} at {i}: {x} vs {y}");
            }
        }
    }
}

/// The bias epilogue: `a·b + bias` into a buffer holding garbage, against the gemm crate
/// accumulating onto rows prefilled with the bias; k over KC (the bias goes in once).
#[cfg(target_arch = "x86_64")]
#[test]
fn bias_epilogue_equals_prefilled_bias() {
    if !has_avx512f() {
        return;
    }
    for (m, k, n) in [(13, 7, 37), (70, 300, 65), (24, 64, 64), (5, 0, 40)] {
        let (a, b, bias) = (data(m * k, 1), data(k * n, 2), data(n, 3));
        let (av, bv) = (Mat::rows(&a, k), Mat::rows(&b, n));
        let mut got = vec![f32::NAN; m * n];
        avx512_f32::gemm_bias(&mut got, av, bv, (m, k, n), &bias, true);
        let mut want: Vec<f32> = (0..m).flat_map(|_| bias.iter().copied()).collect();
        gemm_crate(&mut want, n, av, bv, (m, k, n), true, 1.0, true);
        assert_close(&got, &want, 1e-4, &format!("{m}x{k}x{n}"));
    }
}

/// Each triangular shortcut against the full product: `a` with the zeros `LowerA` or
/// `UpperA` promise (a skipped k range adds exactly 0), and for `LowerC` the wanted part;
/// row-major and transposed operands, partial tiles, k over KC.
#[cfg(target_arch = "x86_64")]
#[test]
fn triangular_products_equal_full_ones() {
    if !has_avx512f() {
        return;
    }
    for (m, k, n) in [(64, 64, 32), (64, 32, 64), (30, 300, 70), (50, 50, 50)] {
        for tri in [Tri::LowerA, Tri::UpperA, Tri::LowerC] {
            let mut a = data(m * k, 4);
            for (i, row) in a.chunks_exact_mut(k).enumerate() {
                for (kk, v) in row.iter_mut().enumerate() {
                    let zero = match tri {
                        Tri::LowerA => kk > i,
                        Tri::UpperA => kk < i,
                        _ => false,
                    };
                    if zero {
                        *v = 0.0;
                    }
                }
            }
            let at: Vec<f32> = (0..k * m).map(|x| a[(x % m) * k + x / m]).collect();
            let (b, bt) = (data(k * n, 5), data(n * k, 6));
            for (av, bv) in [
                (Mat::rows(&a, k), Mat::rows(&b, n)),
                (Mat::cols(&at, m), Mat::cols(&bt, k)),
            ] {
                let mut got = vec![7f32; m * n];
                avx512_f32::gemm_tri(&mut got, n, av, bv, (m, k, n), 0.5, tri);
                let mut want = vec![0f32; m * n];
                gemm_crate(&mut want, n, av, bv, (m, k, n), false, 0.5, false);
                for i in 0..m {
                    for j in 0..n {
                        if tri == Tri::LowerC && j > i {
                            continue;
                        }
                        let (x, y) = (got[i * n + j], want[i * n + j]);
                        assert!(
                            (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                            "{tri:?} {m}x{k}x{n} at ({i}, {j}): {x} vs {y}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn rounding_is_nearest_even() {
    // 1 + 2^-8 lies halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to even (1).
    assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
    assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
    assert_eq!(round_bf16(-2.5), -2.5);
    assert!(round_bf16(f32::NAN).is_nan());
    assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
}

type Gemm = fn(&mut [f32], usize, Mat, Mat, (usize, usize, usize), bool, f32, bool);

/// The bf16 kernels this CPU can run, each called directly, and the dispatching entry point.
/// [`amx::gemm`] without a bias, as a [`Gemm`].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn amx_plain(
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat,
    b: Mat,
    dims: (usize, usize, usize),
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    amx::gemm(dst, dst_rs, a, b, dims, (accumulate, scale, None), parallel)
}

fn bf16_kernels() -> Vec<(&'static str, Gemm)> {
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut v: Vec<(&'static str, Gemm)> = vec![("dispatch", gemm_bf16_into)];
    #[cfg(target_arch = "x86_64")]
    {
        if amx::available() {
            v.push(("amx", amx_plain));
        }
        if has_avx512_bf16() {
            v.push(("avx512-bf16", avx512_bf16::gemm));
        }
    }
    v
}

/// Every bf16 kernel this CPU runs against the rounded-f32 fallback, on odd sizes,
/// transposed and row-strided operands, accumulating and scaled.
#[test]
fn kernel_equals_rounded_f32_product() {
    for (m, k, n) in [
        (13, 7, 37),
        (70, 129, 33),
        (1, 1, 1),
        (8, 64, 64),
        (20, 600, 40),
        (48, 70, 96),
    ] {
        let (a, at) = (data(m * k, 1), data(k * m, 11));
        let (bt, b) = (data(n * k, 2), data(k * n, 12)); // b stored transposed / row-major
        let init = data(m * (n + 3), 3);
        // Accumulating and scaled, plain, and accumulating unscaled (whole AMX blocks then
        // start from and are stored straight to the output).
        for ((av, bv), (acc, scale)) in [
            (Mat::rows(&a, k), Mat::cols(&bt, k)),
            (Mat::rows(&a, k), Mat::rows(&b, n)),
            (Mat::cols(&at, m), Mat::rows(&b, n)),
        ]
        .into_iter()
        .flat_map(|ops| [(ops, (true, 0.5)), (ops, (false, 1.0)), (ops, (true, 1.0))])
        {
            let mut want = init.clone();
            fallback(&mut want, n + 3, av, bv, (m, k, n), acc, scale, true);
            for (name, kernel) in bf16_kernels() {
                let mut got = init.clone();
                kernel(&mut got, n + 3, av, bv, (m, k, n), acc, scale, true);
                assert_close(&got, &want, 1e-5, &format!("{name} {m}x{k}x{n}"));
                // Columns n..n+3 of each row are outside the product and stay untouched.
                for r in 0..m {
                    let pad = r * (n + 3) + n..r * (n + 3) + n + 3;
                    assert_eq!(&got[pad.clone()], &init[pad], "{name}");
                }
            }
        }
    }
}

#[test]
fn product_is_within_bf16_rounding_of_f32() {
    let (m, k, n) = (16, 96, 40);
    let (a, b) = (data(m * k, 4), data(k * n, 5));
    let mut d = vec![0f32; m * n];
    gemm_bf16_into(
        &mut d,
        n,
        Mat::rows(&a, k),
        Mat::rows(&b, n),
        (m, k, n),
        false,
        1.0,
        false,
    );
    for i in 0..m {
        for j in 0..n {
            let exact: f64 = (0..k)
                .map(|t| a[i * k + t] as f64 * b[t * n + j] as f64)
                .sum();
            let mag: f64 = (0..k)
                .map(|t| (a[i * k + t] as f64 * b[t * n + j] as f64).abs())
                .sum();
            // Each input carries a relative error ≤ 2^-9, so each product ≤ 2^-8.
            assert!((d[i * n + j] as f64 - exact).abs() <= mag / 256.0 + 1e-5);
        }
    }
}

/// `gemm_bf16_bias` (on AMX: tiles that start from the bias, or the bias added as partial
/// blocks are stored) equals the rounded-f32 product accumulated onto a prefilled bias, on
/// whole and partial 16 × 32 blocks and after a larger product left the scratch dirty.
#[test]
fn bf16_bias_epilogue_equals_prefilled_bias() {
    for (m, k, n) in [(96, 200, 160), (70, 129, 33), (48, 70, 96), (5, 3, 64)] {
        let (a, b, bias) = (data(m * k, 21), data(k * n, 22), data(n, 23));
        for (av, bv) in [
            (Mat::rows(&a, k), Mat::rows(&b, n)),
            (Mat::cols(&a, m), Mat::cols(&b, k)),
        ] {
            let mut want: Vec<f32> = (0..m).flat_map(|_| bias.iter().copied()).collect();
            fallback(&mut want, n, av, bv, (m, k, n), true, 1.0, false);
            let mut got = vec![f32::NAN; m * n];
            gemm_bf16_bias(&mut got, av, bv, (m, k, n), &bias, true);
            assert_close(&got, &want, 1e-5, &format!("{m}x{k}x{n}"));
        }
    }
}

/// The register transpose used to pack a column-major `a` for AMX.
#[cfg(target_arch = "x86_64")]
#[test]
fn transpose_16x16_transposes() {
    use std::arch::x86_64::*;
    if !amx::available() {
        return;
    }
    let rows: [[u32; 16]; 16] =
        std::array::from_fn(|r| std::array::from_fn(|c| (r * 16 + c) as u32));
    // SAFETY: AVX-512F is present (checked through `available`); loads and stores of 16 u32.
    unsafe {
        let v = rows.map(|r| _mm512_loadu_si512(r.as_ptr().cast()));
        let t = amx::transpose_16x16(v);
        for (r, tv) in t.iter().enumerate() {
            let mut got = [0u32; 16];
            _mm512_storeu_si512(got.as_mut_ptr().cast(), *tv);
            let want: [u32; 16] = std::array::from_fn(|c| (c * 16 + r) as u32);
            assert_eq!(got, want, "row {r}");
        }
    }
}

/// f16 rounding: nearest even, IEEE half's range (the values by hand from the binary16 format:
/// 11 significant bits, largest finite 65504, smallest subnormal 2^-24).
#[test]
fn f16_rounding_is_ieee_half() {
    assert_eq!(round_f16(1.0 + 2f32.powi(-11)), 1.0); // a tie: to even
    assert_eq!(round_f16(1.0 + 3.0 * 2f32.powi(-11)), 1.0 + 2f32.powi(-9)); // a tie: to even (up)
    assert_eq!(round_f16(1.0 + 2f32.powi(-10)), 1.0 + 2f32.powi(-10)); // exact
    assert_eq!(round_f16(65504.0), 65504.0);
    assert_eq!(round_f16(65520.0), f32::INFINITY); // halfway to 2^16 rounds up, past the range
    assert_eq!(round_f16(-1e6), f32::NEG_INFINITY);
    assert_eq!(round_f16(2f32.powi(-24)), 2f32.powi(-24));
    assert_eq!(round_f16(2f32.powi(-26)), 0.0); // under half the smallest subnormal
    assert!(round_f16(f32::NAN).is_nan());
}

/// The f16 product equals the f32 product of the rounded operands (as the bf16 kernels do), in
/// every layout and accumulating; an operand past f16's range makes the result non-finite.
#[test]
fn f16_product_equals_f32_product_of_rounded_operands() {
    for (m, k, n) in [(13, 7, 37), (70, 129, 33), (1, 1, 1)] {
        let (a, b) = (data(m * k, 21), data(k * n, 22));
        let init = data(m * n, 23);
        // `init + 0.5·a·b` at precision `p`, on all threads or on this one.
        let product = |p: MatmulPrecision, a: Mat, b: Mat, par: bool| -> Vec<f32> {
            let mut dst = init.clone();
            mm(p, &mut dst, n, a, b, (m, k, n), true, 0.5, par);
            dst
        };
        let f16 = MatmulPrecision::F16;
        let rounded = |x: &[f32]| -> Vec<f32> { x.iter().map(|&v| round_f16(v)).collect() };
        let (ra, rb) = (rounded(&a), rounded(&b));
        let got = product(f16, Mat::rows(&a, k), Mat::rows(&b, n), true);
        let f32p = MatmulPrecision::Highest;
        let want = product(f32p, Mat::rows(&ra, k), Mat::rows(&rb, n), true);
        assert_eq!(got, want, "{m}x{k}x{n}");
        // Transposed a (the backward's xᵀ·dy).
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let got_t = product(f16, Mat::cols(&at, m), Mat::rows(&b, n), false);
        assert_close(&got_t, &want, 1e-6, "f16, transposed a");
        // And the rounding is real: against the unrounded f32 product the difference is of
        // f16's size (2^-11 relative per operand), far above f32's.
        let exact = product(f32p, Mat::rows(&a, k), Mat::rows(&b, n), true);
        let max_diff = exact
            .iter()
            .zip(&got)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(max_diff > 1e-5, "{m}x{k}x{n}: f16 rounding did not happen");
    }
    let mut big = data(4 * 8, 24);
    big[3] = 7e4;
    let mut out = vec![0f32; 4 * 5];
    let b = data(8 * 5, 25);
    let p = MatmulPrecision::F16;
    mm(
        p,
        &mut out,
        5,
        Mat::rows(&big, 8),
        Mat::rows(&b, 5),
        (4, 8, 5),
        false,
        1.0,
        false,
    );
    assert!(out[..5].iter().all(|v| !v.is_finite()), "{:?}", &out[..5]);
    assert!(out[5..].iter().all(|v| v.is_finite()));
}

/// The vector f16 rounding equals the scalar one (the `half` crate's) on ties, overflow,
/// subnormals, zeros, infinities and NaN, and on a seeded sweep, at every length around a
/// multiple of the vector width.
#[test]
fn vector_f16_rounding_equals_scalar() {
    let mut v: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        65504.0,
        65519.0,
        65520.0,
        -7e4,
        2f32.powi(-24),
        2f32.powi(-25),
        1.5 * 2f32.powi(-25),
        3e-6,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE,
    ];
    v.extend(data(300, 31).iter().map(|x| x * 1e3));
    v.extend(data(300, 32).iter().map(|x| x * 1e-6));
    for len in [0, 1, 15, 16, 17, 33, v.len()] {
        let mut out = vec![f32::NAN; len];
        round_f16_slice(&v[..len], &mut out);
        for (i, (&x, &y)) in v[..len].iter().zip(&out).enumerate() {
            assert_eq!(y.to_bits(), round_f16(x).to_bits(), "{len}: at {i}, {x}");
        }
    }
    let mut out = [0f32; 17];
    round_f16_slice(&[f32::NAN; 17], &mut out);
    assert!(out.iter().all(|x| x.is_nan()));
}
