//! The AVX512-BF16 kernel (`vdpbf16ps`).

use super::*;
use std::arch::x86_64::*;

/// `b` as panels of `NR` columns: panel `p`, k-pair `q`, column `c`, half `h` at
/// `((p·kp + q)·NR + c)·2 + h` holds `bf16(b[2q + h, p·NR + c])` (zero beyond k or n). Panels
/// are packed in parallel when `parallel`; a row-major `b` is converted 16 values at a time
/// (`vcvtneps2bf16`, rounding to nearest even as [`to_bf16_bits`]; inputs below f32's normal
/// range are taken as zero), a column-major one value by value.
fn pack_b(b: &Mat, k: usize, n: usize, kp: usize, parallel: bool) -> Vec<u16> {
    use rayon::prelude::*;
    use std::mem::MaybeUninit;
    let panels = n.div_ceil(NR);
    let len = panels * kp * NR * 2;
    // Each panel is zeroed by the thread that packs it, just before (its lines then in cache),
    // instead of the whole buffer by the caller's thread alone.
    let mut out: Box<[MaybeUninit<u16>]> = Box::new_uninit_slice(len);
    let panel_len = kp * NR * 2;
    let pack = |(p, panel): (usize, &mut [MaybeUninit<u16>])| {
        panel.fill(MaybeUninit::new(0));
        // SAFETY: every element of `panel` was initialized on the line above.
        let panel = unsafe { &mut *(panel as *mut [MaybeUninit<u16>] as *mut [u16]) };
        if b.cs == 1 {
            // SAFETY: the caller checked AVX512F + AVX512-BF16.
            unsafe { pack_panel_rows(b, k, n, p, panel) }
        } else {
            pack_panel_cols(b, k, n, p, panel)
        }
    };
    // 64 Ki values or more (a 128 × 512 weight, ≈ 20 µs to pack on one core): worth the
    // threads (a fork-join costs a few µs while the workers poll, `threads::on_compute_threads`).
    if parallel && rayon::current_num_threads() > 1 && k * n >= 1 << 16 {
        out.par_chunks_mut(panel_len).enumerate().for_each(pack);
    } else {
        out.chunks_mut(panel_len).enumerate().for_each(pack);
    }
    // SAFETY: every element was initialized, panel by panel, above.
    unsafe { out.assume_init() }.into_vec()
}

/// Panel `p` of a row-major `b` (`cs == 1`): for each k-pair, rows `2q` and `2q + 1` of the
/// panel's columns, converted 16 at a time and interleaved into (low, high) pairs.
/// # Safety
/// The CPU must have AVX512F and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_panel_rows(b: &Mat, k: usize, n: usize, p: usize, panel: &mut [u16]) {
    let c0 = p * NR;
    let cols = NR.min(n - c0);
    let at = |i: usize| (i as isize * b.rs) as usize + c0;
    let out = panel.as_mut_ptr().cast::<u32>();
    for q in 0..k.div_ceil(2) {
        for half in 0..NR / 16 {
            let lo_col = half * 16;
            if lo_col >= cols {
                break;
            }
            let width = (cols - lo_col).min(16);
            let mask: __mmask16 = if width == 16 {
                0xFFFF
            } else {
                (1u16 << width) - 1
            };
            let row = |kk: usize| -> __m512 {
                if kk >= k {
                    return _mm512_setzero_ps();
                }
                let start = at(kk) + lo_col;
                let src = &b.data[start..start + width];
                _mm512_maskz_loadu_ps(mask, src.as_ptr())
            };
            let even: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(row(2 * q)));
            let odd: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(row(2 * q + 1)));
            let pairs = _mm512_or_si512(
                _mm512_cvtepu16_epi32(even),
                _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(odd)),
            );
            // u32 index (q·NR + c): this pair's 16 columns, in bounds of the panel.
            _mm512_storeu_si512(out.add(q * NR + lo_col).cast(), pairs);
        }
    }
}

/// Panel `p` of a column-major (or strided) `b`, value by value.
fn pack_panel_cols(b: &Mat, k: usize, n: usize, p: usize, panel: &mut [u16]) {
    let c0 = p * NR;
    for c in 0..NR.min(n - c0) {
        let col = c0 + c;
        for kk in 0..k {
            let v = b.data[(kk as isize * b.rs + col as isize * b.cs) as usize];
            panel[((kk / 2) * NR + c) * 2 + kk % 2] = to_bf16_bits(v);
        }
    }
}

/// Rows `r0..r0 + rows` of `a` as k-pairs: `out[i·kp + q]` = `bf16(a[r0+i, 2q])` in the low
/// half and `bf16(a[r0+i, 2q+1])` in the high half (zero beyond k). A row-major `a` is converted
/// 32 values at a time (`vcvtne2ps2bf16`, as [`pack_b`]'s rows); a column-major one (a transposed
/// operand, e.g. a weight gradient's `dyᵀ`) is read column by column, each column contiguous;
/// any other layout value by value.
/// # Safety
/// The CPU must have AVX512F and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_a(a: &Mat, r0: usize, rows: usize, k: usize, kp: usize, out: &mut [u32]) {
    if a.cs == 1 {
        for i in 0..rows {
            let start = ((r0 + i) as isize * a.rs) as usize;
            let row = &a.data[start..start + k];
            for (q0, o) in (0..kp)
                .step_by(16)
                .zip(out[i * kp..(i + 1) * kp].chunks_mut(16))
            {
                let load = |from: usize| -> __m512 {
                    let width = k.saturating_sub(from).min(16);
                    let mask: __mmask16 = if width == 16 {
                        0xFFFF
                    } else {
                        (1u16 << width) - 1
                    };
                    let src = &row[from.min(k)..from.min(k) + width];
                    _mm512_maskz_loadu_ps(mask, src.as_ptr())
                };
                let (lo, hi) = (load(2 * q0), load(2 * q0 + 16));
                let pairs: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                store_words(o, pairs);
            }
        }
        return;
    }
    let at = |i: usize, kk: usize| ((r0 + i) as isize * a.rs + kk as isize * a.cs) as usize;
    if a.rs == 1 {
        // 16 rows × 16 k-pairs at a time: each pair's two columns (16 contiguous values each)
        // converted and interleaved into one vector per pair, then transposed to rows.
        for i0 in (0..rows).step_by(16) {
            let height = (rows - i0).min(16);
            let mask: __mmask16 = if height == 16 {
                0xFFFF
            } else {
                (1u16 << height) - 1
            };
            let column = |kk: usize| -> __m256i {
                if kk >= k {
                    return _mm256_setzero_si256();
                }
                let col = &a.data[at(i0, kk)..at(i0, kk) + height];
                std::mem::transmute(_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(
                    mask,
                    col.as_ptr(),
                )))
            };
            for q0 in (0..kp).step_by(16) {
                let pairs: [__m512i; 16] = std::array::from_fn(|j| {
                    let (even, odd) = (column(2 * (q0 + j)), column(2 * (q0 + j) + 1));
                    _mm512_or_si512(
                        _mm512_cvtepu16_epi32(even),
                        _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(odd)),
                    )
                });
                let by_row = super::amx::transpose_16x16(pairs);
                let width = (kp - q0).min(16);
                for (i, v) in by_row.iter().enumerate().take(height) {
                    let o = (i0 + i) * kp + q0;
                    store_words(&mut out[o..o + width], *v);
                }
            }
        }
        return;
    }
    for i in 0..rows {
        for (q, o) in out[i * kp..(i + 1) * kp].iter_mut().enumerate() {
            let lo = to_bf16_bits(a.data[at(i, 2 * q)]) as u32;
            let hi = if 2 * q + 1 < k {
                to_bf16_bits(a.data[at(i, 2 * q + 1)]) as u32
            } else {
                0
            };
            *o = lo | hi << 16;
        }
    }
}

/// The first `out.len()` (≤ 16) 32-bit lanes of `v` stored to `out`: one (masked) store.
/// # Safety
/// The CPU must have AVX512F.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_words(out: &mut [u32], v: __m512i) {
    let len = out.len().min(16);
    let mask = (((1u32 << len) - 1) & 0xFFFF) as __mmask16;
    _mm512_mask_storeu_epi32(out.as_mut_ptr().cast(), mask, v);
}

thread_local! {
    /// The packed rows of `a` of a block (see [`pack_a`]), reused between calls.
    static PACKED_A: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// `dst (+)= scale · bf16(a) · bf16(b)` ([`super::gemm_bf16_into`]'s arguments).
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat,
    b: Mat,
    dims: (usize, usize, usize),
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    let epi = Epilogue::new(accumulate, scale);
    gemm_epi(dst, dst_rs, a, b, dims, epi, parallel)
}

/// The product written as `epi` says: `d = scale·acc (+ d) (+ bias[column])` — the bias added
/// as each tile is stored, not first written to every row and read back.
pub(super) fn gemm_epi(
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat,
    b: Mat,
    (m, k, n): (usize, usize, usize),
    epi: Epilogue,
    parallel: bool,
) {
    use rayon::prelude::*;
    assert!(
        dst.len() >= (m - 1) * dst_rs + n,
        "bf16 gemm: destination out of bounds"
    );
    let kp = k.div_ceil(2);
    let bp = pack_b(&b, k, n, kp, parallel);
    let work = |(r0, d): (usize, &mut [f32])| {
        let rows = MB.min(m - r0);
        with_scratch(&PACKED_A, rows * kp, |ap| {
            // SAFETY: the caller checked AVX512F + AVX512-BF16; `pack_a` writes every one of
            // the `rows · kp` words.
            unsafe { pack_a(&a, r0, rows, k, kp, ap) };
            // SAFETY: the caller checked AVX512F + AVX512-BF16; the tile reads `ap` rows
            // i·kp.. (i < rows) and panel p of `bp`, and writes rows < rows, columns < n of `d`.
            unsafe { block(d, dst_rs, ap, &bp, rows, kp, n, epi) }
        })
    };
    let blocks = row_blocks(dst, dst_rs, m, MB);
    if parallel && rayon::current_num_threads() > 1 && m * n * k >= 1 << 15 {
        blocks.into_par_iter().for_each(work);
    } else {
        blocks.into_iter().for_each(work);
    }
}

/// One block of rows: all panels of `bp` against the packed rows `ap`.
/// # Safety
/// The CPU must have AVX512F and AVX512-BF16 (the dispatch checks); the slices hold the packed sizes the callers allocate.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    d: &mut [f32],
    dst_rs: usize,
    ap: &[u32],
    bp: &[u16],
    rows: usize,
    kp: usize,
    n: usize,
    epi: Epilogue,
) {
    for p in 0..n.div_ceil(NR) {
        let cols = NR.min(n - p * NR);
        let panel = &bp[p * kp * NR * 2..(p + 1) * kp * NR * 2];
        // The panel's columns of the bias.
        let epi = Epilogue {
            bias: epi.bias.map(|b| &b[p * NR..]),
            ..epi
        };
        let mut i = 0;
        while i < rows {
            let mr = MR.min(rows - i);
            let (d, ap) = (&mut d[i * dst_rs + p * NR..], &ap[i * kp..]);
            let args = (dst_rs, kp, cols, epi);
            rows_tile!(mr, tile(d, ap, panel, args), 8 7 6 5 4 3 2);
            i += mr;
        }
    }
}

/// An `R × cols` tile (`R ≤ 8`, `cols ≤ 32`): 2·R accumulators of 16 lanes, one `vdpbf16ps`
/// per (row, half-panel) and k-pair.
/// # Safety
/// As [`block`]: AVX512F and AVX512-BF16, and `R` rows and the panel within `d`, `ap` and `bp`.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn tile<const R: usize>(
    d: &mut [f32],
    ap: &[u32],
    panel: &[u16],
    (dst_rs, kp, cols, epi): (usize, usize, usize, Epilogue),
) {
    assert!(ap.len() >= (R - 1) * kp + kp && panel.len() >= kp * NR * 2);
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let (pa, pb) = (ap.as_ptr(), panel.as_ptr());
    for q in 0..kp {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb.add(q * NR * 2).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb.add(q * NR * 2 + 32).cast()));
        for (r, acc) in acc.iter_mut().enumerate() {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*pa.add(r * kp + q) as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
        }
    }
    store_tile(d, &acc, (dst_rs, cols, epi));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this CPU runs these tests (they say so when it does not).
    fn runs_here() -> bool {
        let here = has_avx512_bf16();
        if !here {
            println!("skipped: this CPU has no AVX512-BF16");
        }
        here
    }

    /// Element `i` of a test operand: spread values, and every 11th one of ties, infinities,
    /// NaN, signed zeros and the extremes of f32's normal range.
    fn value(i: usize) -> f32 {
        const SPECIALS: [f32; 10] = [
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            -2.5,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            f32::MAX,
        ];
        match i % 11 {
            10 => SPECIALS[(i / 11) % SPECIALS.len()],
            _ => ((i * 7919 % 1000) as f32 - 500.0) * 0.0137,
        }
    }

    /// A row-major `b` packed 16 values at a time equals the value-by-value packing (the one
    /// strided operands take), bit for bit, on normal values, ties, infinities and NaN, with
    /// odd k and a last panel of every width; and the packing in parallel equals it too.
    #[test]
    fn vector_packing_equals_value_by_value_packing() {
        if !runs_here() {
            return;
        }
        for (k, n) in [(1, 1), (7, 37), (64, 33), (9, 16), (130, 95), (2, 64)] {
            let data: Vec<f32> = (0..k * n).map(value).collect();
            let b = Mat::rows(&data, n);
            let kp = k.div_ceil(2);
            let mut want = vec![0u16; n.div_ceil(NR) * kp * NR * 2];
            for (p, panel) in want.chunks_mut(kp * NR * 2).enumerate() {
                pack_panel_cols(&b, k, n, p, panel);
            }
            for parallel in [false, true] {
                let got = pack_b(&b, k, n, kp, parallel);
                assert_eq!(got, want, "{k}×{n}, parallel {parallel}");
            }
        }
    }

    /// Rows of `a` packed from a row-major `a` (32 values at a time) and from a column-major
    /// one (column by column) equal the definition, bit for bit, with odd k and row offsets.
    #[test]
    fn packing_a_equals_the_definition() {
        if !runs_here() {
            return;
        }
        for (m, k) in [(1, 1), (5, 33), (9, 64), (3, 31), (70, 130)] {
            let rm: Vec<f32> = (0..m * k).map(value).collect();
            // The same matrix stored column-major: element (r, c) at c·m + r.
            let mut cm = vec![0f32; m * k];
            for r in 0..m {
                for c in 0..k {
                    cm[c * m + r] = rm[r * k + c];
                }
            }
            let kp = k.div_ceil(2);
            let (r0, rows) = (m / 3, m - m / 3);
            let mut want = vec![0u32; rows * kp];
            for i in 0..rows {
                for q in 0..kp {
                    let at = |c: usize| to_bf16_bits(rm[(r0 + i) * k + c]) as u32;
                    want[i * kp + q] = at(2 * q)
                        | if 2 * q + 1 < k {
                            at(2 * q + 1) << 16
                        } else {
                            0
                        };
                }
            }
            for (name, a) in [("rows", Mat::rows(&rm, k)), ("cols", Mat::cols(&cm, m))] {
                let mut got = vec![7u32; rows * kp];
                // SAFETY: checked above that the CPU has AVX512-BF16.
                unsafe { pack_a(&a, r0, rows, k, kp, &mut got) };
                assert_eq!(got, want, "{name} {m}×{k}");
            }
        }
    }

    /// A product large enough to pack `b` on several threads equals the rounded-f32 fallback.
    #[test]
    fn a_product_packed_in_parallel_equals_the_fallback() {
        if !runs_here() {
            return;
        }
        let (m, k, n) = (5, 770, 700);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) * 0.01)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 17 % 89) as f32 - 44.0) * 0.02)
            .collect();
        for bv in [Mat::rows(&b, n), Mat::cols(&b, k)] {
            let mut want = vec![0f32; m * n];
            fallback(
                &mut want,
                n,
                Mat::rows(&a, k),
                bv,
                (m, k, n),
                false,
                1.0,
                true,
            );
            let mut got = vec![0f32; m * n];
            gemm(
                &mut got,
                n,
                Mat::rows(&a, k),
                bv,
                (m, k, n),
                false,
                1.0,
                true,
            );
            for (x, y) in got.iter().zip(&want) {
                assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "{x} vs {y}");
            }
        }
    }
}
