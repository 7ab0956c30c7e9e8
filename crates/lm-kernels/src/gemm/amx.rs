use super::*;
use std::arch::asm;
use std::sync::OnceLock;

/// Rows of `a` per parallel task (four 16-row tiles).
const TASK_ROWS: usize = 64;

/// Whether the CPU has AMX-BF16 (and AVX-512, which every AMX CPU has), the OS granted this
/// process the tile state and `LM_KERNELS_MAX_ISA` does not cap the kernels below AMX.
pub(crate) fn available() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        if !crate::isa::allows(crate::isa::Isa::Amx) {
            return false;
        }
        let ext = std::arch::x86_64::__cpuid_count(7, 0);
        let (bf16, tile) = ((ext.edx >> 22) & 1 == 1, (ext.edx >> 24) & 1 == 1);
        if !(bf16 && tile && has_avx512f()) {
            return false;
        }
        request_tile_state()
    })
}

/// Asks Linux for this process's permission to use the AMX tile state.
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    /// `ARCH_REQ_XCOMP_PERM` and `XFEATURE_XTILEDATA` from Linux's `asm/prctl.h` (libc does
    /// not name them).
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) only changes this process's
    // permission to use the AMX register state; it reads and writes no memory of ours.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    ret == 0
}

/// Other systems: the tile state is not requested, so AMX is not used.
#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
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
    let at = |kk: usize, col: usize| b.data[(kk as isize * b.rs + col as isize * b.cs) as usize];
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
                unsafe { _mm512_storeu_si512(panel.as_mut_ptr().add(q * 16).cast(), interleaved) };
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
                    let hi =
                        _mm512_maskz_loadu_ps(lanes(c0 + 16), src.as_ptr().wrapping_add(c0 + 16));
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
    assert!((v.as_ptr() as usize).is_multiple_of(4) && v.len().is_multiple_of(2));
    // SAFETY: the buffer is the u16 view of a `Vec<u32>` (see `gemm`), so it is 4-byte
    // aligned and of even length; both are checked just above.
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
