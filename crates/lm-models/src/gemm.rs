//! Our own AVX-512 matrix products (f32 with FMA, and bf16 with f32 accumulation), used by the
//! fused kernels where the CPU has AVX-512; the gemm crate (AVX2) elsewhere.
//!
//! The bf16 product is for mixed-precision training on CPU:
//! `C (+)= scale · bf16(A) · bf16(B)`, inputs rounded to nearest-even bf16, products and sums in
//! f32, output f32 — what PyTorch's `set_float32_matmul_precision("medium")` and bf16 autocast
//! compute for a matmul.
//!
//! On CPUs with Intel AMX the products run on the tile unit (`tdpbf16ps`, module `amx`). Else, with
//! AVX512-BF16, the kernel is `vdpbf16ps`: one instruction multiplies 16 pairs of
//! bf16 (two consecutive k) and accumulates into 16 f32 lanes. `B` is packed once into panels of
//! 32 columns × k-pairs; each block of rows of `A` is packed into k-pairs and multiplied by an
//! 8 × 32 register tile. Elsewhere the fallback rounds both inputs to bf16 and runs the f32 gemm:
//! the same products (a bf16 × bf16 product is exact in f32), summed in another order.

// Off x86-64 only the portable fallback is compiled; the tile sizes and helpers go unused.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use crate::kernels::{gemm_into, Mat};
use std::cell::RefCell;

/// Rows × columns of the register tile.
const MR: usize = 8;
const NR: usize = 32;
/// Rows of `A` per task (and per packed block).
const MB: usize = 64;
/// Rows of the f32 register tile (24 accumulators of 16 lanes: 14 loads per 24 FMAs) and rows
/// per task (a multiple of it).
const MR_F32: usize = 12;
const MB_F32: usize = 96;
/// Largest row-major `b` (elements) the f32 kernel reads without packing.
const IN_PLACE_B: usize = 1 << 19;
/// Steps of k per pass of the f32 kernel.
const KC: usize = 256;

/// `x` rounded to the nearest bf16 (ties to even), as its 16 bits.
#[inline(always)]
pub(crate) fn to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// `x` rounded to bf16 and back.
#[inline(always)]
pub(crate) fn round_bf16(x: f32) -> f32 {
    f32::from_bits((to_bf16_bits(x) as u32) << 16)
}

/// Element `(i, j)` of a strided view.
#[inline(always)]
fn at(m: &Mat, i: usize, j: usize) -> f32 {
    m.data[(i as isize * m.rs + j as isize * m.cs) as usize]
}

/// Whether this CPU runs the AVX512-BF16 kernel.
pub(crate) fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst[m, n] (+)= scale · bf16(a)[m, k] · bf16(b)[k, n]`, `dst` row-major with row stride
/// `dst_rs` (the bf16 counterpart of [`gemm_into`], same arguments).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bf16_into(
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat,
    b: Mat,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let dims = (m, k, n);
        if amx::available() {
            let epi = (accumulate, scale, None);
            return amx::gemm(dst, dst_rs, a, b, dims, epi, parallel);
        }
        if has_avx512_bf16() {
            return avx512::gemm(dst, dst_rs, a, b, dims, accumulate, scale, parallel);
        }
    }
    fallback(dst, dst_rs, a, b, (m, k, n), accumulate, scale, parallel)
}

/// `dst[m, n] = bf16(a) · bf16(b) + bias` (bias broadcast over rows, length ≥ n; `dst` row-major,
/// contiguous, its contents ignored).
pub(crate) fn gemm_bf16_bias(
    dst: &mut [f32],
    a: Mat,
    b: Mat,
    (m, k, n): (usize, usize, usize),
    bias: &[f32],
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if amx::available() {
        // The bias is where the tiles start (or is added as they are stored).
        let epi = (false, 1.0, Some(bias));
        return amx::gemm(dst, n, a, b, (m, k, n), epi, parallel);
    }
    for row in dst.chunks_exact_mut(n) {
        row.copy_from_slice(&bias[..n]);
    }
    gemm_bf16_into(dst, n, a, b, (m, k, n), true, 1.0, parallel)
}

/// Rounds both operands to bf16 (into contiguous copies) and runs the f32 gemm.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fallback(
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat,
    b: Mat,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    let round = |x: &Mat, r: usize, c: usize| -> Vec<f32> {
        (0..r)
            .flat_map(|i| (0..c).map(move |j| (i, j)))
            .map(|(i, j)| round_bf16(at(x, i, j)))
            .collect()
    };
    let (ra, rb) = (round(&a, m, k), round(&b, k, n));
    gemm_into(
        dst,
        dst_rs,
        Mat::rows(&ra, k),
        Mat::rows(&rb, n),
        (m, k, n),
        accumulate,
        scale,
        parallel,
    );
}

/// Calls `tile::<R>(args)` for the runtime row count `mr` of a register tile (any listed R, else
/// 1): each instance has a constant row count, so its accumulators stay in registers.
#[cfg(target_arch = "x86_64")]
macro_rules! rows_tile {
    ($mr:expr, $tile:ident $args:tt, $($r:literal)*) => {
        match $mr {
            $($r => $tile::<$r> $args,)*
            _ => $tile::<1> $args,
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
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
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(pb.add(q * NR * 2 + 32).cast()));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*pa.add(r * kp + q) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
            }
        }
        store_tile(d, &acc, (dst_rs, cols, Epilogue::new(accumulate, scale)));
    }
}

/// How a finished tile is written: `d = scale·acc (+ d with accumulate) (+ bias[column])`.
#[derive(Clone, Copy)]
struct Epilogue<'a> {
    accumulate: bool,
    scale: f32,
    /// The bias from the tile's first column on.
    bias: Option<&'a [f32]>,
}

impl<'a> Epilogue<'a> {
    fn new(accumulate: bool, scale: f32) -> Self {
        Self {
            accumulate,
            scale,
            bias: None,
        }
    }
}

/// Structure of a product that the f32 kernel can skip work for (causal attention's products):
/// with `LowerA`, `a[i, kk] = 0` for `kk > i`; with `UpperA`, `a[i, kk] = 0` for `kk < i`; with
/// `LowerC`, only `c[i, j]` for `j ≤ i` is wanted (tiles wholly above the diagonal are not
/// written).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Tri {
    Full,
    LowerA,
    UpperA,
    LowerC,
}

/// Writes an `R × cols` register tile (two 16-lane halves per row) to `d` (rows `dst_rs` apart)
/// as `epi` says, with masked stores for a partial last half.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_tile<const R: usize>(
    d: &mut [f32],
    acc: &[[std::arch::x86_64::__m512; 2]; R],
    (dst_rs, cols, epi): (usize, usize, Epilogue),
) {
    use std::arch::x86_64::*;
    let Epilogue {
        accumulate,
        scale,
        bias,
    } = epi;
    let s = _mm512_set1_ps(scale);
    assert!(d.len() >= (R - 1) * dst_rs + cols && bias.is_none_or(|b| b.len() >= cols));
    let bias = bias.map(|b| {
        let m = |c0: usize| ((1u32 << cols.saturating_sub(c0).min(16)) - 1) as __mmask16;
        [
            _mm512_maskz_loadu_ps(m(0), b.as_ptr()),
            _mm512_maskz_loadu_ps(m(16), b.as_ptr().wrapping_add(16)),
        ]
    });
    for (r, acc) in acc.iter().enumerate() {
        for (h, &v) in acc.iter().enumerate() {
            let c0 = h * 16;
            if c0 >= cols {
                break;
            }
            let mask: __mmask16 = if cols - c0 >= 16 {
                0xFFFF
            } else {
                (1u16 << (cols - c0)) - 1
            };
            let out = d.as_mut_ptr().add(r * dst_rs + c0);
            let mut y = _mm512_mul_ps(v, s);
            if accumulate {
                y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, out));
            }
            if let Some(b) = bias {
                y = _mm512_add_ps(y, b[h]);
            }
            _mm512_mask_storeu_ps(out, mask, y);
        }
    }
}

/// Runs `f` on a scratch slice of `len` elements (contents unspecified) that starts on a
/// 64-byte boundary, reusing the thread's buffer in `key`; a nested call on the same thread
/// (e.g. a rayon task run while this thread waits) gets a fresh one.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn with_scratch<T: Copy + Default, R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    // 64 bytes of slack to start on a cache line: a 64-byte load from a packed row then never
    // straddles two lines (and AMX tile rows start on one).
    let slack = 64 / std::mem::size_of::<T>().max(1);
    let aligned = |v: &[T]| -> usize { v.as_ptr().align_offset(64).min(slack - 1) };
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < len + slack {
                v.resize(len + slack, T::default());
            }
            let off = aligned(&v);
            f(&mut v[off..off + len])
        }
        Err(_) => {
            let mut v = vec![T::default(); len + slack];
            let off = aligned(&v);
            f(&mut v[off..off + len])
        }
    })
}

/// Whether this CPU runs the AVX-512 f32 kernel.
pub(crate) fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Splits the rows of `dst` (row stride `dst_rs`) into blocks of `MB` rows, each with its first
/// row index; the last block keeps the tail of the slice.
/// `dst` split at the row boundaries `bounds` (ascending, from 0 to m): (first row, rows, rows
/// of `dst`).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn split_rows<'a>(
    dst: &'a mut [f32],
    dst_rs: usize,
    bounds: &[usize],
) -> Vec<(usize, usize, &'a mut [f32])> {
    let mut rest = dst;
    let mut v = vec![];
    for w in bounds.windows(2) {
        if w[1] == w[0] {
            continue;
        }
        let take = if w[1] < *bounds.last().unwrap_or(&0) {
            (w[1] - w[0]) * dst_rs
        } else {
            rest.len()
        };
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(take);
        v.push((w[0], w[1] - w[0], head));
        rest = tail;
    }
    v
}

fn row_blocks(dst: &mut [f32], dst_rs: usize, m: usize, mb: usize) -> Vec<(usize, &mut [f32])> {
    let mut rest = dst;
    let mut v = vec![];
    let mut r0 = 0;
    while r0 < m {
        let rows = mb.min(m - r0);
        let take = if r0 + rows < m {
            rows * dst_rs
        } else {
            rest.len()
        };
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(take);
        v.push((r0, head));
        rest = tail;
        r0 += rows;
    }
    v
}

/// `dst[m, n] (+)= scale · a[m, k] · b[k, n]` in f32 with AVX-512 FMA: `b` packed into panels of
/// 32 columns, `a` read in place, 8 × 32 register tiles (16 accumulators of 16 lanes), blocks of
/// 64 rows in parallel. The gemm crate's stable build stops at AVX2 (8 lanes), half this width.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512_f32 {
    use super::*;
    use std::arch::x86_64::*;

    thread_local! {
        /// Reused packing buffers (see [`with_scratch`]).
        static PACK_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
        static PACK_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
        static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }

    /// Panel `p`, row `kk`, column `c` at `(p·k + kk)·NR + c` (zero beyond n); writes all of
    /// `out` (`n.div_ceil(NR)·k·NR` floats), panels in parallel with `parallel`.
    fn pack_b(b: &Mat, k: usize, n: usize, out: &mut [f32], parallel: bool) {
        use rayon::prelude::*;
        let chunk = (k * NR).max(1);
        // SAFETY (both): the caller checked AVX512F.
        if parallel && n > NR {
            out.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(p, o)| unsafe { pack_panel(b, k, n, p, o) });
        } else {
            for (p, o) in out.chunks_mut(chunk).enumerate() {
                unsafe { pack_panel(b, k, n, p, o) }
            }
        }
    }

    /// Columns `p·NR..` of `b` into `out` (`k·NR` floats): row `kk`, column `c` at `kk·NR + c`.
    #[target_feature(enable = "avx512f")]
    fn pack_panel(b: &Mat, k: usize, n: usize, p: usize, out: &mut [f32]) {
        let (c0, cols) = (p * NR, NR.min(n - p * NR));
        if b.cs == 1 {
            let m = |h: usize| ((1u32 << cols.saturating_sub(h).min(16)) - 1) as __mmask16;
            let (m0, m1) = (m(0), m(16));
            for (kk, o) in out.chunks_exact_mut(NR).enumerate().take(k) {
                let row = &b.data[(kk as isize * b.rs) as usize + c0..][..cols];
                // SAFETY: the masks cover `cols` lanes of `row` and of the NR-float `o`;
                // masked-off lanes are written as zero and never read.
                unsafe {
                    let lo = _mm512_maskz_loadu_ps(m0, row.as_ptr());
                    let hi = _mm512_maskz_loadu_ps(m1, row.as_ptr().wrapping_add(16));
                    _mm512_storeu_ps(o.as_mut_ptr(), lo);
                    _mm512_storeu_ps(o.as_mut_ptr().add(16), hi);
                }
            }
        } else if b.rs == 1 && k > 0 && b.cs > 0 && (b.cs as usize) < (1 << 26) {
            // A transposed operand (columns contiguous): each half-row of the panel is one
            // gather of 16 columns at step k.
            let cs = b.cs as usize;
            let last = (c0 + cols - 1) * cs + k - 1;
            assert!(b.data.len() > last && out.len() >= k * NR);
            let idx = _mm512_mullo_epi32(
                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                _mm512_set1_epi32(cs as i32),
            );
            let m = |h: usize| ((1u32 << cols.saturating_sub(h).min(16)) - 1) as __mmask16;
            let (m0, m1) = (m(0), m(16));
            let base = b.data.as_ptr().wrapping_add(c0 * cs);
            let base_hi = base.wrapping_add(16 * cs);
            for kk in 0..k {
                // SAFETY: lane j reads column c0 + j (+16) at row kk, inside `b.data` for the
                // `cols` lanes the masks enable (asserted: the last one is below `len`);
                // masked-off lanes are not read and come back zero.
                unsafe {
                    let zero = _mm512_setzero_ps();
                    let lo = _mm512_mask_i32gather_ps::<4>(zero, m0, idx, base.add(kk).cast());
                    let hi = if m1 != 0 {
                        _mm512_mask_i32gather_ps::<4>(zero, m1, idx, base_hi.add(kk).cast())
                    } else {
                        zero
                    };
                    let o = out.as_mut_ptr().add(kk * NR);
                    _mm512_storeu_ps(o, lo);
                    _mm512_storeu_ps(o.add(16), hi);
                }
            }
        } else {
            for c in 0..cols {
                let col = (c0 + c) as isize * b.cs;
                for kk in 0..k {
                    out[kk * NR + c] = b.data[(kk as isize * b.rs + col) as usize];
                }
            }
            if cols < NR {
                for kk in 0..k {
                    out[kk * NR + cols..][..NR - cols].fill(0.0);
                }
            }
        }
    }

    /// Rows `r0..r0 + rows`, k `k0..k0 + kc` of a column-major `a` as 12-row tiles: tile `t`,
    /// step `kk`, row `r` at `(t·kc + kk)·12 + r` (a tile read as `rs = 1, cs = 12`).
    /// Each 12-float run is one masked load and store (`copy_from_slice` was a memcpy call).
    #[target_feature(enable = "avx512f")]
    fn pack_a(a: &Mat, r0: usize, rows: usize, k0: usize, kc: usize, out: &mut [f32]) {
        for t in 0..rows.div_ceil(MR_F32) {
            let mr = MR_F32.min(rows - t * MR_F32);
            let mask = ((1u32 << mr) - 1) as __mmask16;
            for kk in 0..kc {
                let src = ((r0 + t * MR_F32) as isize + (k0 + kk) as isize * a.cs) as usize;
                let (from, to) = (
                    &a.data[src..][..mr],
                    &mut out[(t * kc + kk) * MR_F32..][..mr],
                );
                // SAFETY: both runs are `mr` floats long (bounds-checked slices above) and
                // the mask covers exactly `mr` lanes.
                unsafe {
                    let v = _mm512_maskz_loadu_ps(mask, from.as_ptr());
                    _mm512_mask_storeu_ps(to.as_mut_ptr(), mask, v);
                }
            }
        }
    }

    /// The caller has checked that the CPU has AVX512F.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm(
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
        gemm_with(dst, dst_rs, a, b, dims, epi, Tri::Full, parallel)
    }

    /// `dst[m, n] = a · b + bias` (bias broadcast over rows, length n; `dst` need not be
    /// initialized to anything). The caller has checked that the CPU has AVX512F.
    pub(crate) fn gemm_bias(
        dst: &mut [f32],
        a: Mat,
        b: Mat,
        dims: (usize, usize, usize),
        bias: &[f32],
        parallel: bool,
    ) {
        assert!(bias.len() >= dims.2, "gemm: bias shorter than n");
        let epi = Epilogue {
            bias: Some(bias),
            ..Epilogue::new(false, 1.0)
        };
        gemm_with(dst, dims.2, a, b, dims, epi, Tri::Full, parallel)
    }

    /// `dst[m, n] = scale · a · b` on the calling thread, skipping the work `tri` says is not
    /// needed. The caller has checked that the CPU has AVX512F.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm_tri(
        dst: &mut [f32],
        dst_rs: usize,
        a: Mat,
        b: Mat,
        dims: (usize, usize, usize),
        scale: f32,
        tri: Tri,
    ) {
        let epi = Epilogue::new(false, scale);
        gemm_with(dst, dst_rs, a, b, dims, epi, tri, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm_with(
        dst: &mut [f32],
        dst_rs: usize,
        a: Mat,
        b: Mat,
        (m, k, n): (usize, usize, usize),
        epi: Epilogue,
        tri: Tri,
        parallel: bool,
    ) {
        use rayon::prelude::*;
        if m == 0 || n == 0 {
            return;
        }
        assert!(
            dst.len() >= (m - 1) * dst_rs + n,
            "gemm: destination out of bounds"
        );
        if k == 0 {
            // No k chunks run, so no tile stores: write the empty product (0, or the bias)
            // here; `dst` may be an uninitialized output buffer.
            if !epi.accumulate {
                for r in 0..m {
                    let row = &mut dst[r * dst_rs..][..n];
                    match epi.bias {
                        Some(b) => row.copy_from_slice(&b[..n]),
                        None => row.fill(0.0),
                    }
                }
            }
            return;
        }
        // A column-major `a` with more than one panel to reuse it is packed per k chunk: read
        // in place, each k step of a tile is a line `a.cs` floats from the last, and these
        // lines fall into a few L1 sets (power-of-two strides) and miss on every panel.
        let a_packed = a.rs == 1 && a.cs != 1 && n > NR;
        let split = parallel && rayon::current_num_threads() > 1 && m * n * k >= 1 << 15;
        if a_packed && !split {
            // One task with a packed `a` (the weight gradients, beside dx on the other thread):
            // all rows in one block, `b` packed one panel's k chunk at a time as its tiles need
            // it, into an L1-sized buffer — not all of `b` first, a round trip of the whole
            // matrix through L2 and L3.
            let a_len = m.div_ceil(MR_F32) * MR_F32 * KC.min(k);
            let none = Panels {
                data: &[],
                rs: NR,
                panel_stride: 0,
                k_stride: 0,
            };
            return with_scratch(&PANEL, KC.min(k) * NR, |pbuf| {
                with_scratch(&PACK_A, a_len, |abuf| {
                    // SAFETY: the caller checked AVX512F; bounds are asserted in the tiles.
                    unsafe {
                        block(
                            dst,
                            dst_rs,
                            a,
                            0,
                            none,
                            m,
                            k,
                            n,
                            epi,
                            tri,
                            Some(abuf),
                            Some((b, pbuf)),
                        )
                    }
                })
            });
        }
        let mut run = |bv: Panels| {
            let work = |(r0, rows, d): (usize, usize, &mut [f32])| {
                let a_len = rows.div_ceil(MR_F32) * MR_F32 * KC.min(k);
                // SAFETY (both): the caller checked AVX512F; bounds are asserted in the tiles.
                if a_packed {
                    with_scratch(&PACK_A, a_len, |buf| unsafe {
                        block(d, dst_rs, a, r0, bv, rows, k, n, epi, tri, Some(buf), None)
                    })
                } else {
                    unsafe { block(d, dst_rs, a, r0, bv, rows, k, n, epi, tri, None, None) }
                }
            };
            if split {
                // Whole tiles, as evenly as possible over a multiple of the thread count.
                let threads = rayon::current_num_threads();
                let tiles = m.div_ceil(MR_F32);
                let tasks = (threads * tiles.div_ceil(threads * (MB_F32 / MR_F32))).min(tiles);
                let bounds: Vec<usize> = (0..=tasks)
                    .map(|i| (i * tiles / tasks * MR_F32).min(m))
                    .collect();
                split_rows(dst, dst_rs, &bounds)
                    .into_par_iter()
                    .for_each(work);
            } else {
                let bounds: Vec<usize> = (0..m.div_ceil(MB_F32) + 1)
                    .map(|i| (i * MB_F32).min(m))
                    .collect();
                split_rows(dst, dst_rs, &bounds).into_iter().for_each(work);
            }
        };
        // A small row-major `b` is read in place (panel p = columns p·32.., rows `b.rs` apart);
        // a large one (rows far apart: cache and TLB misses), one whose rows are a multiple of
        // 1 KiB apart (a panel's rows then share a few L1 sets and evict each other), one
        // multiplied by a packed column-major `a` (the weight gradients: long k, each panel
        // swept by a whole block of `a`; 10–20% faster packed) or another layout is packed into
        // contiguous panels first, on all threads.
        if b.cs == 1 && k * n <= IN_PLACE_B && b.rs % 256 != 0 && !a_packed {
            run(Panels {
                data: b.data,
                rs: b.rs as usize,
                panel_stride: NR,
                k_stride: b.rs as usize,
            })
        } else {
            with_scratch(&PACK_B, n.div_ceil(NR) * k * NR, |packed| {
                pack_b(&b, k, n, packed, parallel);
                run(Panels {
                    data: packed,
                    rs: NR,
                    panel_stride: k * NR,
                    k_stride: NR,
                })
            })
        }
    }

    /// `b` as column panels: element (kk, p·32 + c) at `p·panel_stride + kk·k_stride + c`.
    #[derive(Clone, Copy)]
    struct Panels<'a> {
        data: &'a [f32],
        rs: usize,
        panel_stride: usize,
        k_stride: usize,
    }

    /// Rows `r0..r0 + rows` of the product into `d`, k in chunks, with `pack` (a buffer for a
    /// packed column-major `a`) or reading `a` in place.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        d: &mut [f32],
        dst_rs: usize,
        a: Mat,
        r0: usize,
        bp: Panels,
        rows: usize,
        k: usize,
        n: usize,
        epi: Epilogue,
        tri: Tri,
        mut pack: Option<&mut [f32]>,
        lazy: Option<(Mat, &mut [f32])>,
    ) {
        // With `lazy`, `bp` is unused: each panel's k chunk of `b` is packed into the buffer
        // just before its tiles run.
        let (lazy_b, mut lazy_buf) = match lazy {
            Some((b, buf)) => (Some(b), Some(buf)),
            None => (None, None),
        };
        // k in chunks of KC so a panel's chunk (KC × 32 floats) stays in L1 across the tiles.
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            // Later chunks add onto the first (which added the bias).
            let epi = if k0 == 0 {
                epi
            } else {
                Epilogue {
                    accumulate: true,
                    bias: None,
                    ..epi
                }
            };
            if let Some(buf) = pack.as_deref_mut() {
                pack_a(&a, r0, rows, k0, kc, buf);
            }
            let packed = pack.as_deref();
            for p in 0..n.div_ceil(NR) {
                let cols = NR.min(n - p * NR);
                let panel = match (lazy_b, lazy_buf.as_deref_mut()) {
                    (Some(b), Some(buf)) => {
                        let rows_k0 = Mat {
                            data: &b.data[(k0 as isize * b.rs) as usize..],
                            ..b
                        };
                        pack_panel(&rows_k0, kc, n, p, buf);
                        (&*buf, NR)
                    }
                    _ => {
                        let start = p * bp.panel_stride + k0 * bp.k_stride;
                        (&bp.data[start..], bp.rs)
                    }
                };
                let mut i = 0;
                while i < rows {
                    let mr = MR_F32.min(rows - i);
                    // Rows r0 + i .. + mr; the k steps of this chunk the tile needs.
                    let (first, last) = (r0 + i, r0 + i + mr - 1);
                    let (ks, ke) = match tri {
                        Tri::LowerA => (k0, (k0 + kc).min(last + 1)),
                        Tri::UpperA => (k0.max(first), k0 + kc),
                        Tri::Full | Tri::LowerC => (k0, k0 + kc),
                    };
                    let kt = ke.saturating_sub(ks);
                    // Tiles above the diagonal, and chunks with nothing to add, are skipped (a
                    // first chunk with nothing to add still writes its zeros).
                    if (tri == Tri::LowerC && p * NR > last) || (kt == 0 && k0 > 0) {
                        i += mr;
                        continue;
                    }
                    let off = if kt == 0 { 0 } else { ks - k0 };
                    let ap = match packed {
                        Some(buf) => Mat {
                            data: &buf[i * kc + off * MR_F32..],
                            rs: 1,
                            cs: MR_F32 as isize,
                        },
                        None => {
                            let at = (r0 + i) as isize * a.rs + (k0 + off) as isize * a.cs;
                            Mat {
                                data: &a.data[at as usize..],
                                ..a
                            }
                        }
                    };
                    let panel = (&panel.0[off * panel.1..], panel.1);
                    let d = &mut d[i * dst_rs + p * NR..];
                    let epi = Epilogue {
                        bias: epi.bias.map(|b| &b[p * NR..]),
                        ..epi
                    };
                    let args = (dst_rs, kt, cols, epi);
                    if mr == 12 && cols == NR && kt > 0 && (a.cs == 1 || a.rs == 1) {
                        tile_12x32(d, ap, panel, args);
                    } else {
                        rows_tile!(mr, tile(d, ap, panel, args), 12 11 10 9 8 7 6 5 4 3 2);
                    }
                    i += mr;
                }
            }
        }
    }

    /// The full 12 × 32 tile in assembly, for `a` row-major (`cs == 1`) or column-major
    /// (`rs == 1`): 24 accumulators, 2 loads of `b` and 12 broadcasts of `a` per 24 FMAs, the
    /// 12 addresses of `a` as base + index·scale (LLVM's code for [`tile`] recomputes them in a
    /// serial chain of adds, which runs at ~60% of the FMA peak).
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_12x32(
        d: &mut [f32],
        a: Mat,
        (panel, b_rs): (&[f32], usize),
        (dst_rs, kc, cols, epi): (usize, usize, usize, Epilogue),
    ) {
        use std::arch::asm;
        assert!(
            cols == NR
                && kc > 0
                && (a.cs == 1 || a.rs == 1)
                && a.data.len() > (11 * a.rs + (kc - 1) as isize * a.cs) as usize
                && panel.len() >= (kc - 1) * b_rs + NR
        );
        let mut acc = [[_mm512_setzero_ps(); 2]; 12];
        let out = acc.as_mut_ptr() as *mut f32;
        let (pa, pb) = (a.data.as_ptr(), panel.as_ptr());
        // SAFETY: every address read is inside `a.data` or `panel` (asserted above): rows
        // 0..12 of `a` at k 0..kc, and 32 floats of `panel` at each of kc rows `b_rs` apart;
        // `out` is the 24 registers' worth of `acc`.
        asm!(
            "vpxord zmm0, zmm0, zmm0",
            "vpxord zmm1, zmm1, zmm1",
            "vpxord zmm2, zmm2, zmm2",
            "vpxord zmm3, zmm3, zmm3",
            "vpxord zmm4, zmm4, zmm4",
            "vpxord zmm5, zmm5, zmm5",
            "vpxord zmm6, zmm6, zmm6",
            "vpxord zmm7, zmm7, zmm7",
            "vpxord zmm8, zmm8, zmm8",
            "vpxord zmm9, zmm9, zmm9",
            "vpxord zmm10, zmm10, zmm10",
            "vpxord zmm11, zmm11, zmm11",
            "vpxord zmm12, zmm12, zmm12",
            "vpxord zmm13, zmm13, zmm13",
            "vpxord zmm14, zmm14, zmm14",
            "vpxord zmm15, zmm15, zmm15",
            "vpxord zmm16, zmm16, zmm16",
            "vpxord zmm17, zmm17, zmm17",
            "vpxord zmm18, zmm18, zmm18",
            "vpxord zmm19, zmm19, zmm19",
            "vpxord zmm20, zmm20, zmm20",
            "vpxord zmm21, zmm21, zmm21",
            "vpxord zmm22, zmm22, zmm22",
            "vpxord zmm23, zmm23, zmm23",
            "2:",
            "vmovups zmm24, zmmword ptr [{pb}]",
            "vmovups zmm25, zmmword ptr [{pb} + 64]",
            "add {pb}, {b_step}",
            "vbroadcastss zmm26, dword ptr [{pa}]",
            "vfmadd231ps zmm0, zmm26, zmm24",
            "vfmadd231ps zmm1, zmm26, zmm25",
            "vbroadcastss zmm27, dword ptr [{pa} + {s}]",
            "vfmadd231ps zmm2, zmm27, zmm24",
            "vfmadd231ps zmm3, zmm27, zmm25",
            "vbroadcastss zmm28, dword ptr [{pa} + {s}*2]",
            "vfmadd231ps zmm4, zmm28, zmm24",
            "vfmadd231ps zmm5, zmm28, zmm25",
            "vbroadcastss zmm29, dword ptr [{pa} + {s3}]",
            "vfmadd231ps zmm6, zmm29, zmm24",
            "vfmadd231ps zmm7, zmm29, zmm25",
            "vbroadcastss zmm30, dword ptr [{pa} + {s}*4]",
            "vfmadd231ps zmm8, zmm30, zmm24",
            "vfmadd231ps zmm9, zmm30, zmm25",
            "vbroadcastss zmm31, dword ptr [{pa} + {s5}]",
            "vfmadd231ps zmm10, zmm31, zmm24",
            "vfmadd231ps zmm11, zmm31, zmm25",
            "vbroadcastss zmm26, dword ptr [{pa6}]",
            "vfmadd231ps zmm12, zmm26, zmm24",
            "vfmadd231ps zmm13, zmm26, zmm25",
            "vbroadcastss zmm27, dword ptr [{pa6} + {s}]",
            "vfmadd231ps zmm14, zmm27, zmm24",
            "vfmadd231ps zmm15, zmm27, zmm25",
            "vbroadcastss zmm28, dword ptr [{pa6} + {s}*2]",
            "vfmadd231ps zmm16, zmm28, zmm24",
            "vfmadd231ps zmm17, zmm28, zmm25",
            "vbroadcastss zmm29, dword ptr [{pa6} + {s3}]",
            "vfmadd231ps zmm18, zmm29, zmm24",
            "vfmadd231ps zmm19, zmm29, zmm25",
            "vbroadcastss zmm30, dword ptr [{pa6} + {s}*4]",
            "vfmadd231ps zmm20, zmm30, zmm24",
            "vfmadd231ps zmm21, zmm30, zmm25",
            "vbroadcastss zmm31, dword ptr [{pa6} + {s5}]",
            "vfmadd231ps zmm22, zmm31, zmm24",
            "vfmadd231ps zmm23, zmm31, zmm25",
            "add {pa}, {a_step}",
            "add {pa6}, {a_step}",
            "dec {n}",
            "jnz 2b",
            "vmovups zmmword ptr [{out} + 0], zmm0",
            "vmovups zmmword ptr [{out} + 64], zmm1",
            "vmovups zmmword ptr [{out} + 128], zmm2",
            "vmovups zmmword ptr [{out} + 192], zmm3",
            "vmovups zmmword ptr [{out} + 256], zmm4",
            "vmovups zmmword ptr [{out} + 320], zmm5",
            "vmovups zmmword ptr [{out} + 384], zmm6",
            "vmovups zmmword ptr [{out} + 448], zmm7",
            "vmovups zmmword ptr [{out} + 512], zmm8",
            "vmovups zmmword ptr [{out} + 576], zmm9",
            "vmovups zmmword ptr [{out} + 640], zmm10",
            "vmovups zmmword ptr [{out} + 704], zmm11",
            "vmovups zmmword ptr [{out} + 768], zmm12",
            "vmovups zmmword ptr [{out} + 832], zmm13",
            "vmovups zmmword ptr [{out} + 896], zmm14",
            "vmovups zmmword ptr [{out} + 960], zmm15",
            "vmovups zmmword ptr [{out} + 1024], zmm16",
            "vmovups zmmword ptr [{out} + 1088], zmm17",
            "vmovups zmmword ptr [{out} + 1152], zmm18",
            "vmovups zmmword ptr [{out} + 1216], zmm19",
            "vmovups zmmword ptr [{out} + 1280], zmm20",
            "vmovups zmmword ptr [{out} + 1344], zmm21",
            "vmovups zmmword ptr [{out} + 1408], zmm22",
            "vmovups zmmword ptr [{out} + 1472], zmm23",
            pa = inout(reg) pa => _,
            pa6 = inout(reg) pa.wrapping_offset(6 * a.rs) => _,
            s = in(reg) 4 * a.rs,
            s3 = in(reg) 12 * a.rs,
            s5 = in(reg) 20 * a.rs,
            a_step = in(reg) 4 * a.cs,
            pb = inout(reg) pb => _,
            b_step = in(reg) 4 * b_rs,
            n = inout(reg) kc => _,
            out = in(reg) out,
            out("zmm0") _,
            out("zmm1") _,
            out("zmm2") _,
            out("zmm3") _,
            out("zmm4") _,
            out("zmm5") _,
            out("zmm6") _,
            out("zmm7") _,
            out("zmm8") _,
            out("zmm9") _,
            out("zmm10") _,
            out("zmm11") _,
            out("zmm12") _,
            out("zmm13") _,
            out("zmm14") _,
            out("zmm15") _,
            out("zmm16") _,
            out("zmm17") _,
            out("zmm18") _,
            out("zmm19") _,
            out("zmm20") _,
            out("zmm21") _,
            out("zmm22") _,
            out("zmm23") _,
            out("zmm24") _,
            out("zmm25") _,
            out("zmm26") _,
            out("zmm27") _,
            out("zmm28") _,
            out("zmm29") _,
            out("zmm30") _,
            out("zmm31") _,
            options(nostack),
        );
        store_tile(d, &acc, (dst_rs, cols, epi));
    }

    /// An `R × cols` tile (`R ≤ 12`, `cols ≤ 32`) over `kc` steps of k.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const R: usize>(
        d: &mut [f32],
        a: Mat,
        (panel, b_rs): (&[f32], usize),
        (dst_rs, kc, cols, epi): (usize, usize, usize, Epilogue),
    ) {
        // `a` is read in place through its strides (no packing): 8 rows of a row-major matrix
        // are 8 streams along k; a transposed one gives the 8 values of one k side by side.
        assert!(
            a.data.len() > ((R - 1) as isize * a.rs + (kc.max(1) - 1) as isize * a.cs) as usize
                && panel.len() >= (kc.max(1) - 1) * b_rs + cols
        );
        // Masked loads: a partial last panel never reads past the end of `b`.
        let mask = |c0: usize| -> __mmask16 {
            match cols.saturating_sub(c0) {
                0 => 0,
                c if c >= 16 => 0xFFFF,
                c => (1u16 << c) - 1,
            }
        };
        let (m0, m1) = (mask(0), mask(16));
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let (pa, pb) = (a.data.as_ptr(), panel.as_ptr());
        for kk in 0..kc {
            // wrapping_add: a masked-off half may point past the end; it is never read.
            let b0 = _mm512_maskz_loadu_ps(m0, pb.wrapping_add(kk * b_rs));
            let b1 = _mm512_maskz_loadu_ps(m1, pb.wrapping_add(kk * b_rs + 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*pa.offset(r as isize * a.rs + kk as isize * a.cs));
                acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
            }
        }
        store_tile(d, &acc, (dst_rs, cols, epi));
    }
}

/// bf16 products on Intel AMX: `tdpbf16ps` multiplies a 16 × 32 bf16 tile of `a` by a 32 × 16
/// tile of `b` (stored as 16 rows of k-pairs) into a 16 × 16 f32 tile — 8192 multiply-adds per
/// instruction. The instructions are emitted with inline assembly (Rust has no stable AMX
/// intrinsics); the process asks Linux for the tile state once (`arch_prctl`).
#[cfg(target_arch = "x86_64")]
pub(crate) mod amx {
    use super::*;
    use std::arch::asm;
    use std::sync::OnceLock;

    /// Rows of `a` per parallel task (four 16-row tiles).
    const TASK_ROWS: usize = 64;

    /// Whether the CPU has AMX-BF16 (and AVX-512, which every AMX CPU has) and the OS granted
    /// this process the tile state.
    pub(crate) fn available() -> bool {
        static GRANTED: OnceLock<bool> = OnceLock::new();
        *GRANTED.get_or_init(|| {
            let ext = std::arch::x86_64::__cpuid_count(7, 0);
            let (bf16, tile) = ((ext.edx >> 22) & 1 == 1, (ext.edx >> 24) & 1 == 1);
            if !(bf16 && tile && has_avx512f() && cfg!(target_os = "linux")) {
                return false;
            }
            let ret: i64;
            // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18) only
            // changes this process's permission to use the AMX register state.
            unsafe {
                asm!("syscall", inlateout("rax") 158i64 => ret, in("rdi") 0x1023i64,
                     in("rsi") 18i64, lateout("rcx") _, lateout("r11") _, options(nostack));
            }
            ret == 0
        })
    }

    /// The tile configuration: palette 1, all eight tiles 16 rows × 64 bytes: C in tmm0, tmm1
    /// (row tile t) and tmm5, tmm6 (row tile t + 1), 16 × 16 f32 each; A in tmm2, tmm7, 16 rows
    /// × 32 bf16; B in tmm3, tmm4, 16 k-pair rows × 16 columns × 2.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    impl TileConfig {
        fn new() -> Self {
            let mut c = [0u8; 64];
            c[0] = 1;
            for t in 0..8 {
                c[16 + 2 * t] = 64;
                c[48 + t] = 16;
            }
            Self(c)
        }
    }

    /// `b` into `out` as panels of 16 columns of k-pairs: panel `p`, pair `q`, column `c` at
    /// `(p·kp + q)·16 + c` holds `bf16(b[2q, col])` in the low and `bf16(b[2q+1, col])` in the
    /// high half (zero past k or n; `out` an even number of panels, `kp` a multiple of 16). A
    /// row-major `b` is converted two rows at a time with contiguous writes.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_b(b: &Mat, k: usize, n: usize, kp: usize, parallel: bool, out: &mut [u32]) {
        if b.cs != 1 {
            // The paths below write only the pairs inside k × n.
            out.fill(0);
        }
        let at =
            |kk: usize, col: usize| b.data[(kk as isize * b.rs + col as isize * b.cs) as usize];
        if b.cs == 1 {
            // Rows 2q and 2q + 1, 16 columns each, become 16 k-pairs with one conversion and
            // one interleaving permute; with `parallel`, each thread takes a run of panels.
            use rayon::prelude::*;
            let panels = out.len() / (kp * 16);
            let threads = if parallel {
                rayon::current_num_threads()
            } else {
                1
            };
            let per_task = panels.div_ceil(threads).max(1);
            let run = |(i, o): (usize, &mut [u32])| pack_b_panels(b, k, n, kp, i * per_task, o);
            if threads > 1 && n > 16 {
                out.par_chunks_mut(per_task * kp * 16)
                    .enumerate()
                    .for_each(run);
            } else {
                run((0, out));
            }
        } else if b.rs == 1 && b.cs > 0 {
            // A transposed operand (columns contiguous along k): 32 steps of k of one column
            // become 16 k-pairs in one conversion, scattered down the column's slot.
            use std::arch::x86_64::*;
            let cs = b.cs as usize;
            assert!(n == 0 || k == 0 || b.data.len() > (n - 1) * cs + k - 1);
            let stride = _mm512_mullo_epi32(
                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                _mm512_set1_epi32(16),
            );
            for col in 0..n {
                let (p, c) = (col / 16, col % 16);
                let column = &b.data[col * cs..][..k];
                for q0 in (0..k.div_ceil(2)).step_by(16) {
                    let k0 = 2 * q0;
                    let lanes = |from: usize| -> __mmask16 {
                        ((1u32 << k.saturating_sub(from).min(16)) - 1) as __mmask16
                    };
                    let pairs = (k - k0).div_ceil(2).min(16);
                    let dst = out[(p * kp + q0) * 16 + c..][..(pairs - 1) * 16 + 1].as_mut_ptr();
                    // SAFETY: the loads read `lanes` floats of `column` from k0 and k0 + 16
                    // (zero past k); the scatter writes `pairs` slots 16 apart, all inside
                    // the bounds-checked slice `dst` points into.
                    unsafe {
                        let lo = _mm512_maskz_loadu_ps(lanes(k0), column.as_ptr().add(k0));
                        let hi = _mm512_maskz_loadu_ps(
                            lanes(k0 + 16),
                            column.as_ptr().wrapping_add(k0 + 16),
                        );
                        let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                        let mask = ((1u32 << pairs) - 1) as __mmask16;
                        _mm512_mask_i32scatter_epi32::<4>(dst.cast(), mask, stride, both);
                    }
                }
            }
        } else {
            for kk in 0..k {
                for col in 0..n {
                    let (p, c) = (col / 16, col % 16);
                    out[(p * kp + kk / 2) * 16 + c] |=
                        (to_bf16_bits(at(kk, col)) as u32) << (16 * (kk % 2));
                }
            }
        }
    }

    /// Panels `p0..` (columns p0·16..) of a row-major `b` into `o` (kp·16 u32 each, as many as
    /// `o` holds): rows 2q and 2q + 1 become 16 k-pairs with one conversion and one interleaving
    /// permute. Rows are read in order (a few pairs at a time across all the panels, so each row
    /// is one sequential read: walking a panel down all rows was latency-bound, 2 lines per 4 KiB
    /// page for the prefetcher). Writes all of `o`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_b_panels(b: &Mat, k: usize, n: usize, kp: usize, p0: usize, o: &mut [u32]) {
        use std::arch::x86_64::*;
        /// Pairs of rows per sweep across the panels.
        const SWEEP: usize = 8;
        let rs = b.rs as usize;
        let panels = o.len() / (kp * 16);
        assert!(b.cs == 1 && (k == 0 || b.data.len() >= (k - 1) * rs + n));
        let pairs = k.div_ceil(2);
        assert!(pairs <= kp);
        let idx: [u16; 32] = std::array::from_fn(|l| ((l % 2) * 16 + l / 2) as u16);
        // SAFETY: an unaligned load of the 32-entry index table.
        let perm = unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) };
        for q0 in (0..pairs).step_by(SWEEP) {
            for (pi, panel) in o.chunks_exact_mut(kp * 16).enumerate() {
                let c0 = (p0 + pi) * 16;
                if c0 >= n {
                    break;
                }
                let mask = ((1u32 << (n - c0).min(16)) - 1) as __mmask16;
                let row = |kk: usize| {
                    if kk < k {
                        // SAFETY: `cols` floats of row kk < k from column c0: inside `b.data`
                        // (asserted above); the other lanes are masked off.
                        unsafe { _mm512_maskz_loadu_ps(mask, b.data.as_ptr().add(kk * rs + c0)) }
                    } else {
                        _mm512_setzero_ps()
                    }
                };
                for q in q0..(q0 + SWEEP).min(pairs) {
                    let both = _mm512_cvtne2ps_pbh(row(2 * q + 1), row(2 * q));
                    // SAFETY: a plain bit reinterpretation of 32 bf16 as 16 u32.
                    let both = unsafe { std::mem::transmute::<__m512bh, __m512i>(both) };
                    let interleaved = _mm512_permutexvar_epi16(perm, both);
                    // SAFETY: 16 u32 at q·16 < kp·16 = panel.len().
                    unsafe {
                        _mm512_storeu_si512(panel.as_mut_ptr().add(q * 16).cast(), interleaved)
                    };
                }
            }
        }
        for (pi, panel) in o.chunks_exact_mut(kp * 16).enumerate().take(panels) {
            if (p0 + pi) * 16 >= n {
                panel.fill(0);
            } else {
                panel[pairs * 16..].fill(0);
            }
        }
    }

    /// Rows `r0..r0 + rows` of `a` as bf16 into `out`, row-major with `2·kp` columns (zero past
    /// k, and past `rows` up to the end of `out`, a whole number of 16-row tiles). Writes all of
    /// `out`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_a(a: &Mat, r0: usize, rows: usize, k: usize, kp: usize, out: &mut [u16]) {
        use std::arch::x86_64::*;
        let width = 2 * kp;
        assert!(out.len() >= rows * width && k <= width);
        if a.cs == 1 {
            // 32 floats of a row per conversion; lanes past k load as zero.
            let lanes = |from: usize| ((1u32 << k.saturating_sub(from).min(16)) - 1) as __mmask16;
            for i in 0..rows {
                let start = ((r0 + i) as isize * a.rs) as usize;
                let src = &a.data[start..][..k];
                let dst = &mut out[i * width..][..width];
                for c0 in (0..width).step_by(32) {
                    // SAFETY: the masked loads read only floats c0.. < k of `src`; the store
                    // writes 32 u16 at c0 < width, inside `dst` (width a multiple of 32).
                    unsafe {
                        let lo = _mm512_maskz_loadu_ps(lanes(c0), src.as_ptr().wrapping_add(c0));
                        let hi = _mm512_maskz_loadu_ps(
                            lanes(c0 + 16),
                            src.as_ptr().wrapping_add(c0 + 16),
                        );
                        let both = _mm512_cvtne2ps_pbh(hi, lo);
                        _mm512_storeu_si512(
                            dst.as_mut_ptr().add(c0).cast(),
                            std::mem::transmute::<__m512bh, __m512i>(both),
                        );
                    }
                }
            }
            out[rows * width..].fill(0);
        } else if a.rs == 1 {
            // Same target features; `pack_a_transposed` bounds its reads.
            pack_a_transposed(a, r0, rows, k, kp, out)
        } else {
            out.fill(0);
            for i in 0..rows {
                for kk in 0..k {
                    let v = a.data[((r0 + i) as isize * a.rs + kk as isize * a.cs) as usize];
                    out[i * width + kk] = to_bf16_bits(v);
                }
            }
        }
    }

    /// [`pack_a`] for an `a` whose columns are contiguous (`a.rs == 1`, e.g. `xᵀ` in a weight
    /// gradient). Per 16 rows and 16 k-pairs: each pair of 16-float column pieces becomes 16
    /// bf16 pairs (`vcvtne2ps2bf16` + an interleave), one vector per pair with a lane per row,
    /// and a 16 × 16 transpose in registers turns them into 16 output row pieces. Writes
    /// `rows.div_ceil(16)·16` rows of `out`, zero past `rows`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_a_transposed(a: &Mat, r0: usize, rows: usize, k: usize, kp: usize, out: &mut [u16]) {
        use std::arch::x86_64::*;
        let tiles = rows.div_ceil(16);
        let out32: &mut [u32] = bytemuck_u32(out);
        assert!(out32.len() >= tiles * 16 * kp && kp.is_multiple_of(16));
        // Interleave the two halves: lane 2i ← i, lane 2i+1 ← 16 + i.
        let idx: [u16; 32] = std::array::from_fn(|l| ((l % 2) * 16 + l / 2) as u16);
        // SAFETY: an unaligned load of the 32-entry table.
        let perm = unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) };
        // Per sweep of 16 k-pairs (32 columns of a = 32 rows of the stored matrix), all row
        // tiles: the stored rows are read in order.
        for q0 in (0..kp).step_by(16) {
            for i0 in (0..rows).step_by(16) {
                let n = 16.min(rows - i0);
                let mask: __mmask16 = if n == 16 { 0xFFFF } else { (1u16 << n) - 1 };
                let column = |kk: usize| -> __m512 {
                    if kk >= k {
                        return _mm512_setzero_ps();
                    }
                    let start = (kk as isize * a.cs) as usize + r0 + i0;
                    let piece = &a.data[start..start + n];
                    // SAFETY: the masked load reads only the `n` floats of `piece`.
                    unsafe { _mm512_maskz_loadu_ps(mask, piece.as_ptr()) }
                };
                let pairs: [__m512i; 16] = std::array::from_fn(|j| {
                    let q = q0 + j;
                    let both = _mm512_cvtne2ps_pbh(column(2 * q + 1), column(2 * q));
                    // SAFETY: a plain bit reinterpretation of 32 bf16.
                    _mm512_permutexvar_epi16(perm, unsafe {
                        std::mem::transmute::<__m512bh, __m512i>(both)
                    })
                });
                // Lanes past `n` are zero, so the tile's unused rows are written as zeros.
                for (r, v) in transpose_16x16(pairs).into_iter().enumerate() {
                    let o = &mut out32[(i0 + r) * kp + q0..][..16];
                    // SAFETY: 16 u32 inside the bounds-checked `o`.
                    unsafe { _mm512_storeu_si512(o.as_mut_ptr().cast(), v) };
                }
            }
        }
        out32[tiles * 16 * kp..].fill(0);
    }

    /// The 16 × 16 transpose of 32-bit lanes: lane `j` of output `r` is lane `r` of input `j`.
    #[target_feature(enable = "avx512f")]
    pub(super) fn transpose_16x16(
        v: [std::arch::x86_64::__m512i; 16],
    ) -> [std::arch::x86_64::__m512i; 16] {
        use std::arch::x86_64::*;
        // Within each 128-bit lane: pairs of rows interleaved by 32, then by 64 bits, leave
        // u[4g + j] holding, per 128-bit lane L, column 4L + j of rows 4g..4g + 4.
        let t: [__m512i; 16] = std::array::from_fn(|i| {
            let (x, y) = (v[i & !1], v[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_epi32(x, y)
            } else {
                _mm512_unpackhi_epi32(x, y)
            }
        });
        let u: [__m512i; 16] = std::array::from_fn(|i| {
            // i = 4g + j: rows 4g..4g+4; j = 0, 1 from t[4g], t[4g+2]; j = 2, 3 from t[4g+1], t[4g+3].
            let (g, j) = (i / 4, i % 4);
            let (x, y) = (t[4 * g + j / 2], t[4 * g + 2 + j / 2]);
            if j % 2 == 0 {
                _mm512_unpacklo_epi64(x, y)
            } else {
                _mm512_unpackhi_epi64(x, y)
            }
        });
        // Then the 128-bit lanes: output column 4L + j = lane L of u[j], u[4 + j], u[8 + j],
        // u[12 + j].
        let mut out = [_mm512_setzero_si512(); 16];
        for j in 0..4 {
            let even01 = _mm512_shuffle_i32x4::<0x88>(u[j], u[4 + j]);
            let odd01 = _mm512_shuffle_i32x4::<0xDD>(u[j], u[4 + j]);
            let even23 = _mm512_shuffle_i32x4::<0x88>(u[8 + j], u[12 + j]);
            let odd23 = _mm512_shuffle_i32x4::<0xDD>(u[8 + j], u[12 + j]);
            out[j] = _mm512_shuffle_i32x4::<0x88>(even01, even23);
            out[8 + j] = _mm512_shuffle_i32x4::<0xDD>(even01, even23);
            out[4 + j] = _mm512_shuffle_i32x4::<0x88>(odd01, odd23);
            out[12 + j] = _mm512_shuffle_i32x4::<0xDD>(odd01, odd23);
        }
        out
    }

    /// `u16` pairs viewed as `u32` (little-endian: the first of each pair in the low half).
    fn bytemuck_u32(v: &mut [u16]) -> &mut [u32] {
        // SAFETY: the buffer is the u16 view of a `Vec<u32>` (see `gemm`), so it is 4-byte
        // aligned and of even length; both are checked anyway.
        assert!((v.as_ptr() as usize).is_multiple_of(4) && v.len().is_multiple_of(2));
        unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), v.len() / 2) }
    }

    /// `out = scale·c (+ out) (+ bias)` for one row of a tile result.
    #[target_feature(enable = "avx512f")]
    fn write_row(out: &mut [f32], c: &[f32], accumulate: bool, scale: f32, bias: Option<&[f32]>) {
        match (accumulate, bias) {
            (true, None) => out.iter_mut().zip(c).for_each(|(o, &v)| *o += scale * v),
            (false, None) => out.iter_mut().zip(c).for_each(|(o, &v)| *o = scale * v),
            (acc, Some(bias)) => {
                for ((o, &v), &b) in out.iter_mut().zip(c).zip(bias) {
                    *o = scale * v + b + if acc { *o } else { 0.0 };
                }
            }
        }
    }

    thread_local! {
        /// Reused packing buffers (see [`with_scratch`]): `b` per product, `a` per task.
        static PACK_A: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
        static PACK_B: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
        static PACK_A_ALL: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    }

    /// A `u32` buffer as its `u16` halves (a 4-byte-aligned view, as `pack_a_transposed` needs).
    fn as_u16(v: &mut [u32]) -> &mut [u16] {
        // SAFETY: u16 has no invalid bit patterns and a smaller alignment than u32.
        unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), v.len() * 2) }
    }

    /// `dst (+)= scale · a · b (+ bias)`, `bias` broadcast over rows (length ≥ n). The caller has
    /// checked [`available`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm(
        dst: &mut [f32],
        dst_rs: usize,
        a: Mat,
        b: Mat,
        (m, k, n): (usize, usize, usize),
        (accumulate, scale, bias): (bool, f32, Option<&[f32]>),
        parallel: bool,
    ) {
        assert!(
            dst.len() > (m - 1) * dst_rs + n - 1 && bias.is_none_or(|b| b.len() >= n),
            "amx gemm: destination out of bounds or bias too short"
        );
        let kp = k.div_ceil(32) * 16;
        let panels = n.div_ceil(32) * 2;
        with_scratch(&PACK_B, panels * kp * 16, |bp| {
            // SAFETY: `available()` implies AVX-512 (every AMX CPU has it).
            unsafe { pack_b(&b, k, n, kp, parallel, bp) };
            let epi = (accumulate, scale, bias);
            if a.rs == 1 && a.cs != 1 {
                // A column-major `a` is packed whole first, reading its columns (rows of the
                // stored matrix) in order; per task it would walk strips down them.
                let tiles = m.div_ceil(16);
                with_scratch(&PACK_A_ALL, tiles * 16 * kp, |store| {
                    let ap = as_u16(store);
                    let threads = if parallel {
                        rayon::current_num_threads()
                    } else {
                        1
                    };
                    let per_task = tiles.div_ceil(threads) * 16;
                    let run = |(i, out): (usize, &mut [u16])| {
                        let r0 = i * per_task;
                        // SAFETY: `available()` implies the target features.
                        unsafe { pack_a_transposed(&a, r0, per_task.min(m - r0), k, kp, out) }
                    };
                    if parallel && per_task < tiles * 16 {
                        use rayon::prelude::*;
                        ap.par_chunks_mut(per_task * 2 * kp)
                            .enumerate()
                            .for_each(run);
                    } else {
                        run((0, ap));
                    }
                    gemm_packed(dst, dst_rs, &a, Some(ap), bp, (m, k, n), epi, parallel);
                })
            } else {
                gemm_packed(dst, dst_rs, &a, None, bp, (m, k, n), epi, parallel);
            }
        })
    }

    /// [`gemm`] with `b` packed (`bp`, by [`pack_b`]) and `a` either packed already (`a_packed`,
    /// all rows, by [`pack_a_transposed`]) or packed here per task by [`pack_a`].
    #[allow(clippy::too_many_arguments)]
    fn gemm_packed(
        dst: &mut [f32],
        dst_rs: usize,
        a: &Mat,
        a_packed: Option<&[u16]>,
        bp: &[u32],
        (m, k, n): (usize, usize, usize),
        (accumulate, scale, bias): (bool, f32, Option<&[f32]>),
        parallel: bool,
    ) {
        use rayon::prelude::*;
        let kp = k.div_ceil(32) * 16;
        let panels = n.div_ceil(32) * 2;
        assert!(bp.len() >= panels * kp * 16);
        let work = |(r0, d): (usize, &mut [f32])| {
            let rows = TASK_ROWS.min(m - r0);
            let tiles = rows.div_ceil(16);
            // u32 storage, so the u16 view is always 4-byte aligned for `pack_a_transposed`.
            let mut compute = |ap: &[u16]| {
                assert!(ap.len() >= tiles * 16 * 2 * kp);
                let mut c = [0f32; 16 * 32];
                let cfg = TileConfig::new();
                // A whole 16 × 32 block (row tile t, columns p·16..+32) with nothing to scale lives
                // in `d` itself: its tiles start from `d` (or zero) and are stored straight back.
                let plain = scale == 1.0 && !(accumulate && bias.is_some());
                let direct = |t: usize, p: usize| plain && t * 16 + 16 <= rows && p * 16 + 32 <= n;
                // Sets C tiles $x, $y for row tile $t, columns $p·16..+32: loaded from `d` for a
                // direct block that accumulates, else zero.
                macro_rules! start_block {
                ($x:literal, $y:literal, $t:expr, $p:expr) => {{
                    let (i0, c0) = ($t * 16, $p * 16);
                    let bias_block = bias.filter(|_| !accumulate && direct($t, $p));
                    if accumulate && direct($t, $p) {
                        // Rows i0..i0 + 16, columns c0..c0 + 32: inside the block's slice
                        // (bounds-checked here).
                        let _ = &d[(i0 + 15) * dst_rs + c0..][..32];
                        let at = d.as_ptr().add(i0 * dst_rs + c0);
                        asm!(
                            concat!("tileloadd ", $x, ", [{c0} + {s}*1]"),
                            concat!("tileloadd ", $y, ", [{c1} + {s}*1]"),
                            c0 = in(reg) at, c1 = in(reg) at.add(16),
                            s = in(reg) 4 * dst_rs,
                            options(nostack),
                        );
                    } else if let Some(bias) = bias_block {
                        // Every row of the tiles starts as bias[c0..c0 + 32] (row stride 0).
                        let at = bias[c0..][..32].as_ptr();
                        asm!(
                            concat!("tileloadd ", $x, ", [{c0} + {s}*1]"),
                            concat!("tileloadd ", $y, ", [{c1} + {s}*1]"),
                            c0 = in(reg) at, c1 = in(reg) at.add(16),
                            s = in(reg) 0usize,
                            options(nostack),
                        );
                    } else {
                        asm!(
                            concat!("tilezero ", $x),
                            concat!("tilezero ", $y),
                            options(nostack)
                        );
                    }
                }};
            }
                // Writes C tiles $x, $y (row tile $t, columns $p·16..+32) to `d`: straight from the
                // tiles for a direct block, else through `c`.
                macro_rules! store_block {
                ($x:literal, $y:literal, $t:expr, $p:expr) => {{
                    let (i0, c0) = ($t * 16, $p * 16);
                    if direct($t, $p) {
                        // Rows i0..i0 + 16, columns c0..c0 + 32: inside the block's slice
                        // (bounds-checked here).
                        let _ = &d[(i0 + 15) * dst_rs + c0..][..32];
                        let at = d.as_mut_ptr().add(i0 * dst_rs + c0);
                        asm!(
                            concat!("tilestored [{c0} + {s}*1], ", $x),
                            concat!("tilestored [{c1} + {s}*1], ", $y),
                            c0 = in(reg) at, c1 = in(reg) at.add(16),
                            s = in(reg) 4 * dst_rs,
                            options(nostack),
                        );
                    } else {
                        asm!(
                            concat!("tilestored [{c0} + {s}*1], ", $x),
                            concat!("tilestored [{c1} + {s}*1], ", $y),
                            c0 = in(reg) c.as_mut_ptr(), c1 = in(reg) c.as_mut_ptr().add(16),
                            s = in(reg) 128usize,
                            options(nostack),
                        );
                        // c is 16 rows × 32 columns (row stride 32 floats): the valid part.
                        for r in 0..16.min(rows - i0.min(rows)) {
                            let cols = 32.min(n - c0);
                            let out = &mut d[(i0 + r) * dst_rs + c0..][..cols];
                            let bias = bias.map(|b| &b[c0..c0 + cols]);
                            write_row(out, &c[r * 32..r * 32 + cols], accumulate, scale, bias);
                        }
                    }
                }};
            }
                // SAFETY: `available()` granted the tile state; every tile load reads 16 rows of
                // 64 bytes inside `ap` (tiles·16 rows of 4·kp bytes; row tiles t, t + 1 < tiles) or
                // `bp` (panels·kp rows of 64 bytes), and each store writes 16 × 64 bytes inside `c`
                // or inside the checked block of `d`.
                unsafe {
                    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack));
                    let b_at = |p: usize, s: usize| {
                        (
                            bp.as_ptr().add((p * kp + s * 16) * 16),
                            bp.as_ptr().add(((p + 1) * kp + s * 16) * 16),
                        )
                    };
                    // Row tiles t (and t + 1 with `two`) × panels p, p + 1: with two row tiles,
                    // 4 tile loads per 4 products (2 × 1 takes 3 per 2, and the loads bound it).
                    let mut block = |t: usize, p: usize, two: bool| {
                        if two {
                            start_block!("tmm0", "tmm1", t, p);
                            start_block!("tmm5", "tmm6", t + 1, p);
                            for s in 0..kp / 16 {
                                let a0 = ap.as_ptr().add(t * 16 * 2 * kp + s * 32);
                                let a1 = ap.as_ptr().add((t + 1) * 16 * 2 * kp + s * 32);
                                let (b0, b1) = b_at(p, s);
                                asm!(
                                    "tileloadd tmm2, [{a0} + {sa}*1]",
                                    "tileloadd tmm3, [{b0} + {sb}*1]",
                                    "tileloadd tmm4, [{b1} + {sb}*1]",
                                    "tdpbf16ps tmm0, tmm2, tmm3",
                                    "tileloadd tmm7, [{a1} + {sa}*1]",
                                    "tdpbf16ps tmm1, tmm2, tmm4",
                                    "tdpbf16ps tmm5, tmm7, tmm3",
                                    "tdpbf16ps tmm6, tmm7, tmm4",
                                    a0 = in(reg) a0, a1 = in(reg) a1, sa = in(reg) 4 * kp,
                                    b0 = in(reg) b0, b1 = in(reg) b1, sb = in(reg) 64usize,
                                    options(nostack),
                                );
                            }
                            store_block!("tmm0", "tmm1", t, p);
                            store_block!("tmm5", "tmm6", t + 1, p);
                        } else {
                            start_block!("tmm0", "tmm1", t, p);
                            for s in 0..kp / 16 {
                                let at = ap.as_ptr().add(t * 16 * 2 * kp + s * 32);
                                let (b0, b1) = b_at(p, s);
                                asm!(
                                    "tileloadd tmm2, [{a} + {sa}*1]",
                                    "tileloadd tmm3, [{b0} + {sb}*1]",
                                    "tileloadd tmm4, [{b1} + {sb}*1]",
                                    "tdpbf16ps tmm0, tmm2, tmm3",
                                    "tdpbf16ps tmm1, tmm2, tmm4",
                                    a = in(reg) at, sa = in(reg) 4 * kp,
                                    b0 = in(reg) b0, b1 = in(reg) b1, sb = in(reg) 64usize,
                                    options(nostack),
                                );
                            }
                            store_block!("tmm0", "tmm1", t, p);
                        }
                    };
                    for p in (0..panels).step_by(2) {
                        for t in (0..tiles).step_by(2) {
                            block(t, p, t + 1 < tiles);
                        }
                    }
                    asm!("tilerelease", options(nostack));
                }
            };
            match a_packed {
                Some(all) => compute(&all[r0 * 2 * kp..]),
                None => with_scratch(&PACK_A, tiles * 16 * kp, |store| {
                    let ap = as_u16(store);
                    // SAFETY: `available()` implies the target features.
                    unsafe { pack_a(a, r0, rows, k, kp, ap) };
                    compute(ap)
                }),
            }
        };
        let blocks = row_blocks(dst, dst_rs, m, TASK_ROWS);
        if parallel && rayon::current_num_threads() > 1 && m * n * k >= 1 << 15 {
            blocks.into_par_iter().for_each(work);
        } else {
            blocks.into_iter().for_each(work);
        }
    }
}

#[cfg(test)]
mod tests {
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

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = lm_objectives::Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.normal() as f32).collect()
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
                crate::kernels::gemm_crate(&mut d2, n + 3, av, bv, (m, k, n), true, 0.5, true);
                // Each sum of k products is off its exact value by at most k·u·Σ|a b|
                // (u = 2^-24), whatever the order: the two may differ by twice that.
                let abs = |x: &Mat, len: usize| -> Vec<f32> {
                    x.data[..len].iter().map(|v| v.abs()).collect()
                };
                let (aa, ba) = (abs(&av, av.data.len()), abs(&bv, bv.data.len()));
                let mut bound = vec![0f32; m * (n + 3)];
                let (aam, bam) = (Mat { data: &aa, ..av }, Mat { data: &ba, ..bv });
                crate::kernels::gemm_crate(
                    &mut bound,
                    n + 3,
                    aam,
                    bam,
                    (m, k, n),
                    false,
                    0.5,
                    true,
                );
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
            crate::kernels::gemm_crate(&mut want, n, av, bv, (m, k, n), true, 1.0, true);
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
                    crate::kernels::gemm_crate(&mut want, n, av, bv, (m, k, n), false, 0.5, false);
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
        let mut v: Vec<(&'static str, Gemm)> = vec![("dispatch", gemm_bf16_into)];
        #[cfg(target_arch = "x86_64")]
        {
            if amx::available() {
                v.push(("amx", amx_plain));
            }
            if has_avx512_bf16() {
                v.push(("avx512-bf16", avx512::gemm));
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
}
