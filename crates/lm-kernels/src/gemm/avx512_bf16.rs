//! The AVX512-BF16 kernel (`vdpbf16ps`).

use super::*;
use std::arch::x86_64::*;

/// `b` as panels of `NR` columns: panel `p`, k-pair `q`, column `c`, half `h` at
/// `((p·kp + q)·NR + c)·2 + h` holds `bf16(b[2q + h, p·NR + c])` (zero beyond k or n).
/// Loops run along whichever axis of `b` is contiguous.
#[target_feature(enable = "avx512f,avx512bf16")]
fn pack_b(b: &Mat, k: usize, n: usize, kp: usize) -> Vec<u16> {
    let panels = n.div_ceil(NR);
    let mut out = vec![0u16; panels * kp * NR * 2];
    let at = |i: usize| (i as isize * b.rs) as usize;
    if b.cs == 1 {
        for kk in 0..k {
            let row = &b.data[at(kk)..at(kk) + n];
            for (p, chunk) in row.chunks(NR).enumerate() {
                let base = (p * kp + kk / 2) * NR * 2 + kk % 2;
                for (c, &v) in chunk.iter().enumerate() {
                    out[base + 2 * c] = to_bf16_bits(v);
                }
            }
        }
    } else {
        for col in 0..n {
            let (p, c) = (col / NR, col % NR);
            for kk in 0..k {
                let v = b.data[(kk as isize * b.rs + col as isize * b.cs) as usize];
                out[((p * kp + kk / 2) * NR + c) * 2 + kk % 2] = to_bf16_bits(v);
            }
        }
    }
    out
}

/// Rows `r0..r0 + rows` of `a` as k-pairs: `out[i·kp + q]` = `bf16(a[r0+i, 2q])` in the low
/// half and `bf16(a[r0+i, 2q+1])` in the high half (zero beyond k).
#[target_feature(enable = "avx512f,avx512bf16")]
fn pack_a(a: &Mat, r0: usize, rows: usize, k: usize, kp: usize, out: &mut [u32]) {
    let at = |i: usize, kk: usize| {
        let v = a.data[((r0 + i) as isize * a.rs + kk as isize * a.cs) as usize];
        to_bf16_bits(v) as u32
    };
    for i in 0..rows {
        for (q, o) in out[i * kp..(i + 1) * kp].iter_mut().enumerate() {
            let hi = if 2 * q + 1 < k { at(i, 2 * q + 1) } else { 0 };
            *o = at(i, 2 * q) | hi << 16;
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat,
    b: Mat,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    use rayon::prelude::*;
    assert!(
        dst.len() >= (m - 1) * dst_rs + n,
        "bf16 gemm: destination out of bounds"
    );
    let kp = k.div_ceil(2);
    // SAFETY: the caller checked AVX512F + AVX512-BF16.
    let bp = unsafe { pack_b(&b, k, n, kp) };
    let work = |(r0, d): (usize, &mut [f32])| {
        let rows = MB.min(m - r0);
        let mut ap = vec![0u32; rows * kp];
        // SAFETY: the caller checked AVX512F + AVX512-BF16.
        unsafe { pack_a(&a, r0, rows, k, kp, &mut ap) };
        // SAFETY: the caller checked AVX512F + AVX512-BF16; the tile reads `ap` rows
        // i·kp.. (i < rows) and panel p of `bp`, and writes rows < rows, columns < n of `d`.
        unsafe { block(d, dst_rs, &ap, &bp, rows, kp, n, accumulate, scale) }
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
    accumulate: bool,
    scale: f32,
) {
    for p in 0..n.div_ceil(NR) {
        let cols = NR.min(n - p * NR);
        let panel = &bp[p * kp * NR * 2..(p + 1) * kp * NR * 2];
        let mut i = 0;
        while i < rows {
            let mr = MR.min(rows - i);
            let (d, ap) = (&mut d[i * dst_rs + p * NR..], &ap[i * kp..]);
            let args = (dst_rs, kp, cols, accumulate, scale);
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
    (dst_rs, kp, cols, accumulate, scale): (usize, usize, usize, bool, f32),
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
    store_tile(d, &acc, (dst_rs, cols, Epilogue::new(accumulate, scale)));
}
