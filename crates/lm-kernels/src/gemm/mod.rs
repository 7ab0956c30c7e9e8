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

use std::cell::RefCell;

use crate::precision::MatmulPrecision;

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

/// Whether this CPU runs the AVX512-BF16 kernel.
pub(crate) fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::isa::allows(crate::isa::Isa::Avx512Bf16)
            && std::arch::is_x86_feature_detected!("avx512f")
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
            return avx512_bf16::gemm(dst, dst_rs, a, b, dims, accumulate, scale, parallel);
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
    {
        if amx::available() {
            // The bias is where the tiles start (or is added as they are stored).
            let epi = (false, 1.0, Some(bias));
            return amx::gemm(dst, n, a, b, (m, k, n), epi, parallel);
        }
        if has_avx512_bf16() {
            let epi = Epilogue {
                bias: Some(bias),
                ..Epilogue::new(false, 1.0)
            };
            return avx512_bf16::gemm_epi(dst, n, a, b, (m, k, n), epi, parallel);
        }
    }
    for row in dst.chunks_exact_mut(n) {
        row.copy_from_slice(&bias[..n]);
    }
    gemm_bf16_into(dst, n, a, b, (m, k, n), true, 1.0, parallel)
}

/// Rounds both operands to bf16 (into copies) and runs the f32 gemm.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fallback(
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat,
    b: Mat,
    dims: (usize, usize, usize),
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    let round = |src: &[f32], out: &mut [f32]| {
        out.iter_mut()
            .zip(src)
            .for_each(|(o, &x)| *o = round_bf16(x))
    };
    rounded_gemm(round, dst, dst_rs, a, b, dims, accumulate, scale, parallel)
}

/// `x` rounded to the nearest IEEE half (ties to even; beyond ±65504 it is ±inf, below 2^-24 in
/// magnitude 0) and back.
#[inline(always)]
pub(crate) fn round_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// `out[i] = round_f16(src[i])`: 16 at a time with AVX-512's `vcvtps2ph` / `vcvtph2ps` (nearest
/// even, overflow to ±inf, subnormal halves kept — IEEE's conversion, as `round_f16`).
pub(crate) fn round_f16_slice(src: &[f32], out: &mut [f32]) {
    assert_eq!(src.len(), out.len(), "round_f16_slice: lengths");
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if has_avx512f() {
        // SAFETY: AVX-512F is present (checked above); the loop reads and writes 16 elements at
        // offsets below `src.len() / 16 * 16`, inside both slices (equal lengths, asserted).
        unsafe { done = round_f16_avx512(src, out) };
    }
    for (o, &x) in out[done..].iter_mut().zip(&src[done..]) {
        *o = round_f16(x);
    }
}

/// The vector part of [`round_f16_slice`]; returns how many leading elements it rounded.
/// # Safety
/// The CPU must have AVX512F (the caller checks); `out` is at least as long as `src`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn round_f16_avx512(src: &[f32], out: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let n = src.len() / 16 * 16;
    let mut i = 0;
    while i < n {
        let v = _mm512_loadu_ps(src.as_ptr().add(i));
        let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
        _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
        i += 16;
    }
    n
}

thread_local! {
    /// The rounded copies of the two operands (see [`with_scratch`]).
    static ROUNDED_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static ROUNDED_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Rounds both operands with `round` (see [`with_rounded`]) and runs the f32 gemm on the copies.
/// With [`round_f16_slice`] this is the f16 product: `dst (+)= scale · f16(a) · f16(b)`, products
/// and sums in f32 (what a GPU's f16 tensor-core gemm computes; a product of two halves is exact
/// in f32), an operand beyond f16's range ±inf and the result inf or NaN — the overflow that
/// dynamic loss scaling detects. No CPU measured here multiplies f16 into f32 sums faster than f32
/// (AVX512-FP16 sums in f16; AMX-FP16 is not on them), so it runs on the f32 kernel.
#[allow(clippy::too_many_arguments)]
fn rounded_gemm(
    round: impl Fn(&[f32], &mut [f32]),
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat,
    b: Mat,
    dims: (usize, usize, usize),
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    if dims.0 == 0 || dims.2 == 0 {
        return;
    }
    with_rounded(round, a, b, dims, |ra, rb| {
        gemm_into(dst, dst_rs, ra, rb, dims, accumulate, scale, parallel)
    })
}

/// Calls `f` with copies of `a` and `b` rounded by `round`: the part of each slice that its view
/// reaches, rounded elementwise, so the copies keep the views' strides (a transposed or strided
/// operand costs no gather).
fn with_rounded<R>(
    round: impl Fn(&[f32], &mut [f32]),
    a: Mat,
    b: Mat,
    (m, k, n): (usize, usize, usize),
    f: impl FnOnce(Mat, Mat) -> R,
) -> R {
    let reach = |x: &Mat, r: usize, c: usize| -> usize {
        if r == 0 || c == 0 {
            return 0;
        }
        let last = (r - 1) as isize * x.rs + (c - 1) as isize * x.cs;
        (last as usize + 1).min(x.data.len())
    };
    // Only the elements the view reads: row by row (or column by column) where it strides past
    // others (a head's columns of a packed q|k|v); the others stay unwritten and unread.
    let round_view = |x: &Mat, r: usize, c: usize, out: &mut [f32]| {
        let (runs, len, step) = match (x.cs, x.rs) {
            (1, rs) if rs as usize > c => (r, c, rs as usize),
            (cs, 1) if cs as usize > r => (c, r, cs as usize),
            _ => (1, out.len(), 0),
        };
        for i in 0..runs {
            let at = i * step;
            let end = (at + len).min(out.len());
            round(&x.data[at..end], &mut out[at..end]);
        }
    };
    let (la, lb) = (reach(&a, m, k), reach(&b, k, n));
    with_scratch(&ROUNDED_A, la, |ra| {
        round_view(&a, m, k, ra);
        with_scratch(&ROUNDED_B, lb, |rb| {
            round_view(&b, k, n, rb);
            f(Mat { data: ra, ..a }, Mat { data: rb, ..b })
        })
    })
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
mod avx512_bf16;

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
/// # Safety
/// The CPU must have AVX512F; the `R` rows of the tile lie within `d` at row stride `rs`.
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
        crate::isa::allows(crate::isa::Isa::Avx512)
            && std::arch::is_x86_feature_detected!("avx512f")
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

// ---------------------------------------------------------------- dispatch

/// A row-major matrix operand for [`matmul_into`]: pointer-free view as (slice, column stride,
/// row stride), so transposes are strides, never copies.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub cs: isize,
    pub rs: isize,
}

impl<'a> Mat<'a> {
    /// `[r, c]` stored row-major.
    pub fn rows(data: &'a [f32], c: usize) -> Self {
        Self {
            data,
            cs: 1,
            rs: c as isize,
        }
    }

    /// The transpose of a row-major `[c, r]`.
    pub fn cols(data: &'a [f32], r: usize) -> Self {
        Self {
            data,
            cs: r as isize,
            rs: 1,
        }
    }
}

/// `dst[m, n] (+)= scale · a[m, k] · b[k, n]`, `dst` row-major with row stride `dst_rs`;
/// `accumulate` keeps what `dst` holds (e.g. a broadcast bias). With `parallel`, on all of
/// rayon's threads (big products); otherwise on the calling thread (small products inside an
/// already parallel loop). Our AVX-512 kernel where the CPU has it, the gemm crate otherwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into(
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat,
    b: Mat,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    let span = |rs: isize, cs: isize, r: usize, c: usize| {
        (r.saturating_sub(1) as isize * rs + c.saturating_sub(1) as isize * cs) as usize + 1
    };
    assert!(
        dst.len() >= span(dst_rs as isize, 1, m, n)
            && a.data.len() >= span(a.rs, a.cs, m, k)
            && b.data.len() >= span(b.rs, b.cs, k, n),
        "gemm operands out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx512f() {
        let dims = (m, k, n);
        return avx512_f32::gemm(dst, dst_rs, a, b, dims, accumulate, scale, parallel);
    }
    gemm_crate(dst, dst_rs, a, b, (m, k, n), accumulate, scale, parallel)
}

/// [`gemm_into`] with the gemm crate (checked operands).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_crate(
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat,
    b: Mat,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    let threads = rayon::current_num_threads();
    let par = if parallel && threads > 1 && m * n * k >= 1 << 15 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `gemm_into`'s assert keeps every element gemm touches inside the three slices
    // (strides are non-negative), and `dst` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs,
            a.rs,
            b.data.as_ptr(),
            b.cs,
            b.rs,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            par,
        )
    }
}

/// Whether [`mm`] runs a product in bf16: products under 2^20 multiply-adds (one attention
/// head) stay in f32, where packing to bf16 and setting up the tiles would cost more than the
/// bf16 arithmetic saves.
pub(crate) fn uses_bf16(prec: MatmulPrecision, (m, k, n): (usize, usize, usize)) -> bool {
    prec == MatmulPrecision::Bf16 && m * k * n >= 1 << 20
}

/// `dst = scale · a · b` on the calling thread ([`mm`] without accumulation), skipping the
/// work `tri` marks as zero or unwanted where the AVX-512 kernel runs (elsewhere the full
/// product, which is the same where it is wanted).
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm_causal(
    prec: MatmulPrecision,
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat,
    b: Mat,
    dims: (usize, usize, usize),
    scale: f32,
    tri: Tri,
) {
    #[cfg(target_arch = "x86_64")]
    if !uses_bf16(prec, dims) && has_avx512f() {
        if prec == MatmulPrecision::F16 {
            return with_rounded(round_f16_slice, a, b, dims, |ra, rb| {
                avx512_f32::gemm_tri(dst, dst_rs, ra, rb, dims, scale, tri)
            });
        }
        return avx512_f32::gemm_tri(dst, dst_rs, a, b, dims, scale, tri);
    }
    let _ = tri;
    mm(prec, dst, dst_rs, a, b, dims, false, scale, false)
}

/// A buffer for a kernel's output, zero-filled: every kernel overwrites it in full, but handing
/// out uninitialized `f32`s is undefined behaviour. A large one is
/// filled on all of rayon's threads: filled by the allocating thread alone, the zeroing of the
/// demo recipe's buffers was 6.5% of its bf16 step's cycles, run while the other cores waited.
pub(crate) fn output_buffer(len: usize) -> Vec<f32> {
    use rayon::prelude::*;
    use std::mem::MaybeUninit;
    /// Below this many values (512 KiB) one thread fills it sooner than a fork-join would.
    const PARALLEL_FILL: usize = 1 << 17;
    if len < PARALLEL_FILL || rayon::current_num_threads() < 2 {
        return vec![0.0; len];
    }
    let mut v: Box<[MaybeUninit<f32>]> = Box::new_uninit_slice(len);
    v.par_chunks_mut(1 << 15)
        .for_each(|c| c.fill(MaybeUninit::new(0.0)));
    // SAFETY: every element was initialized above.
    unsafe { v.assume_init() }.into_vec()
}

/// [`gemm_into`]; with `Bf16`, [`gemm_bf16_into`] for products of at least 2^20 multiply-adds;
/// with `F16`, [`rounded_gemm`] to f16 for every product (its range, not only its speed, is the point:
/// small products in f32 would hide an overflow).
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm(
    prec: MatmulPrecision,
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat,
    b: Mat,
    dims: (usize, usize, usize),
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    if uses_bf16(prec, dims) {
        gemm_bf16_into(dst, dst_rs, a, b, dims, accumulate, scale, parallel)
    } else if prec == MatmulPrecision::F16 {
        let round = round_f16_slice;
        rounded_gemm(round, dst, dst_rs, a, b, dims, accumulate, scale, parallel)
    } else {
        gemm_into(dst, dst_rs, a, b, dims, accumulate, scale, parallel)
    }
}

/// `dst = a · b` for row-major slices (checked sizes), on all threads.
pub(crate) fn matmul_rows(
    prec: MatmulPrecision,
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
) {
    assert!(
        a.len() == m * k && b.len() == k * n && dst.len() == m * n,
        "matmul: sizes"
    );
    matmul_into(
        prec,
        dst,
        Mat::rows(a, k),
        Mat::rows(b, n),
        (m, k, n),
        false,
    )
}

/// [`mm`] for a contiguous `dst`, on all threads.
pub(crate) fn matmul_into(
    prec: MatmulPrecision,
    dst: &mut [f32],
    a: Mat,
    b: Mat,
    dims: (usize, usize, usize),
    accumulate: bool,
) {
    mm(prec, dst, dims.2, a, b, dims, accumulate, 1.0, true)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512_f32;

/// bf16 products on Intel AMX: `tdpbf16ps` multiplies a 16 × 32 bf16 tile of `a` by a 32 × 16
/// tile of `b` (stored as 16 rows of k-pairs) into a 16 × 16 f32 tile — 8192 multiply-adds per
/// instruction. The instructions are emitted with inline assembly (Rust has no stable AMX
/// intrinsics); the process asks Linux for the tile state once (`arch_prctl`).
#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;

#[cfg(test)]
mod tests;
