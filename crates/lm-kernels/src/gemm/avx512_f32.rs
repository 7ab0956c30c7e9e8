//! `dst[m, n] (+)= scale · a[m, k] · b[k, n]` in f32 with AVX-512 FMA: `b` packed into panels of
//! 32 columns, `a` read in place, 8 × 32 register tiles (16 accumulators of 16 lanes), blocks of
//! 64 rows in parallel. The gemm crate's stable build stops at AVX2 (8 lanes), half this width.

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
    if parallel && n > NR {
        out.par_chunks_mut(chunk)
            .enumerate()
            // SAFETY: the caller checked AVX512F; `o` is one whole panel of `out`.
            .for_each(|(p, o)| unsafe { pack_panel(b, k, n, p, o) });
    } else {
        for (p, o) in out.chunks_mut(chunk).enumerate() {
            // SAFETY: as above.
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
            if a_packed {
                // SAFETY: the caller checked AVX512F; bounds are asserted in the tiles.
                with_scratch(&PACK_A, a_len, |buf| unsafe {
                    block(d, dst_rs, a, r0, bv, rows, k, n, epi, tri, Some(buf), None)
                })
            } else {
                // SAFETY: as above.
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
/// # Safety
/// The CPU must have AVX512F (the dispatch checks); the tiles assert their bounds.
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
/// # Safety
/// The CPU must have AVX512F; `d`, `a` and `b` hold the 12 × 32 tile over `kc` steps of k (the caller, [`block`], sizes them).
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
/// # Safety
/// The CPU must have AVX512F; `R ≤ 12` rows and `cols ≤ 32` columns lie within `d`, `a` and `b`.
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
