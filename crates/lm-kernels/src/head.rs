//! The language-model head and its cross-entropy in vocabulary chunks: per-row
//! `−log softmax(h Wᵀ)[y]` without the `[n, V]` logits ever held at once. The forward runs over
//! chunks of the vocabulary with an online log-sum-exp (the running max and sum of each row,
//! rescaled when the max grows) and keeps only each row's log-sum-exp; the backward makes each
//! chunk's logits again, turns them into `dZ = g ⊙ (softmax − onehot)`, and writes that chunk's
//! rows of `dW = dZᵀ H` and adds its part of `dH = dZ W`. Memory: one chunk of logits
//! (`n × chunk`) instead of the logits, their log-softmax and their gradient (`3 · n × V`);
//! time: the head's product once more in the backward.

use crate::fastmath::{self, simd};
use crate::fused::slice;
use crate::gemm::{mm, output_buffer, Mat};
use crate::precision::MatmulPrecision;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Logit values per chunk (16 MiB of f32): `n` rows × `chunk_cols(n, v)` columns.
const CHUNK_VALUES: usize = 1 << 22;

/// Columns of the vocabulary per chunk for `n` rows: at least 64, at most `v`.
fn chunk_cols(n: usize, v: usize) -> usize {
    (CHUNK_VALUES / n.max(1)).max(64).min(v.max(1))
}

/// `−log softmax(h Wᵀ)[y]` per row of `h [n, c]` for `W [v, c]` and targets `y` (0 on rows
/// whose target is `ignore_index`).
pub(crate) struct HeadNll {
    pub targets: Arc<Vec<i64>>,
    pub ignore_index: i64,
    pub prec: MatmulPrecision,
    /// Columns per chunk; 0: [`chunk_cols`]'s choice.
    pub chunk: usize,
    /// Each row's `log Σ_j exp(z_j)`, kept for the backward.
    pub lse: std::sync::Mutex<Option<Arc<Vec<f32>>>>,
}

/// The chunk width `chunk` asks for (0: [`chunk_cols`]), within `1..=v`.
fn width(chunk: usize, n: usize, v: usize) -> usize {
    match chunk {
        0 => chunk_cols(n, v),
        w => w.clamp(1, v.max(1)),
    }
}

/// Sizes `(n, c, v)` of `h [n, c]` and `W [v, c]`, checked against the targets.
fn dims(lh: &Layout, lw: &Layout, targets: &[i64], ignore: i64) -> Result<(usize, usize, usize)> {
    let (&[n, c], &[v, c2]) = (lh.dims(), lw.dims()) else {
        candle_core::bail!("head cross-entropy: h must be [n, c] and W [v, c]")
    };
    if c != c2 || targets.len() != n {
        candle_core::bail!(
            "head cross-entropy: h [{n}, {c}], W [{v}, {c2}] and {} targets do not agree",
            targets.len()
        )
    }
    check_targets(targets, v, ignore)?;
    Ok((n, c, v))
}

/// Refuses a cross-entropy target that is neither a token id below `vocab` nor `ignore_index`,
/// naming it (an id past the vocabulary would index past a row of logits).
pub fn check_targets(targets: &[i64], vocab: usize, ignore_index: i64) -> Result<()> {
    if let Some(&bad) = targets
        .iter()
        .find(|&&t| t != ignore_index && !(0..vocab as i64).contains(&t))
    {
        candle_core::bail!(
            "cross-entropy targets: {bad} is neither a token id in [0, {vocab}) nor the ignore \
             index {ignore_index}"
        )
    }
    Ok(())
}

/// `z = h W[cols]ᵀ` into `z` (`n × cols.len()`), on all threads.
fn chunk_logits(
    prec: MatmulPrecision,
    z: &mut [f32],
    (h, w): (&[f32], &[f32]),
    (n, c): (usize, usize),
    cols: std::ops::Range<usize>,
) {
    let cw = cols.len();
    let wt = Mat::cols(&w[cols.start * c..cols.end * c], c);
    mm(
        prec,
        z,
        cw,
        Mat::rows(h, c),
        wt,
        (n, c, cw),
        false,
        1.0,
        true,
    );
}

impl CustomOp2 for HeadNll {
    fn name(&self) -> &'static str {
        "head-nll"
    }

    fn cpu_fwd(
        &self,
        sh: &CpuStorage,
        lh: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (h, w) = (slice(sh, lh, "head h")?, slice(sw, lw, "head W")?);
        let y = self.targets.as_slice();
        let (n, c, v) = dims(lh, lw, y, self.ignore_index)?;
        let cw = width(self.chunk, n, v);
        let mut z = output_buffer(n * cw);
        // Per row: running max, running Σ exp(z − max), the target's logit.
        let mut state = vec![(f32::NEG_INFINITY, 0f32, 0f32); n];
        for start in (0..v).step_by(cw) {
            let cols = start..(start + cw).min(v);
            let width = cols.len();
            chunk_logits(self.prec, &mut z[..n * width], (h, w), (n, c), cols);
            state
                .par_iter_mut()
                .zip(z[..n * width].par_chunks(width))
                .zip(y.par_iter())
                .for_each(|(((max, sum, picked), row), &t)| {
                    simd(|| {
                        let m = fastmath::max(row).max(*max);
                        // exp(−∞ − m) = 0 on the first chunk.
                        *sum = *sum * fastmath::exp(*max - m)
                            + fastmath::sum_map(row, |x| fastmath::exp(x - m));
                        *max = m;
                    });
                    let t = t - start as i64;
                    if (0..width as i64).contains(&t) {
                        *picked = row[t as usize];
                    }
                });
        }
        let lse: Vec<f32> = state.iter().map(|(m, s, _)| m + s.ln()).collect();
        let nll = state
            .iter()
            .zip(&lse)
            .zip(y)
            .map(|(((_, _, picked), l), &t)| {
                if t == self.ignore_index {
                    0.0
                } else {
                    l - picked
                }
            })
            .collect();
        if let Ok(mut kept) = self.lse.lock() {
            *kept = Some(Arc::new(lse));
        }
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Some(lse) = self.lse.lock().ok().and_then(|l| l.clone()) else {
            candle_core::bail!("head cross-entropy: the backward ran before the forward")
        };
        let (n, c) = h.dims2()?;
        let v = w.dim(0)?;
        let both = h.apply_op3_no_bwd(
            w,
            &grad.contiguous()?,
            &HeadNllGrad {
                targets: self.targets.clone(),
                ignore_index: self.ignore_index,
                prec: self.prec,
                chunk: self.chunk,
                lse,
            },
        )?;
        let dh = both.narrow(0, 0, n * c)?.reshape((n, c))?;
        let dw = both.narrow(0, n * c, v * c)?.reshape((v, c))?;
        Ok((Some(dh), Some(dw)))
    }
}

/// The backward of [`HeadNll`]: `[dH | dW]` flattened into one vector.
struct HeadNllGrad {
    targets: Arc<Vec<i64>>,
    ignore_index: i64,
    prec: MatmulPrecision,
    chunk: usize,
    lse: Arc<Vec<f32>>,
}

impl CustomOp3 for HeadNllGrad {
    fn name(&self) -> &'static str {
        "head-nll-grad"
    }

    fn cpu_fwd(
        &self,
        sh: &CpuStorage,
        lh: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (h, w) = (slice(sh, lh, "head h")?, slice(sw, lw, "head W")?);
        let g = slice(sg, lg, "head grad")?;
        let y = self.targets.as_slice();
        let (n, c, v) = dims(lh, lw, y, self.ignore_index)?;
        if g.len() != n || self.lse.len() != n {
            candle_core::bail!("head cross-entropy backward: expected {n} gradients")
        }
        let cw = width(self.chunk, n, v);
        let mut z = output_buffer(n * cw);
        let mut out = output_buffer(n * c + v * c);
        let (dh, dw) = out.split_at_mut(n * c);
        for start in (0..v).step_by(cw) {
            let cols = start..(start + cw).min(v);
            let width = cols.len();
            let z = &mut z[..n * width];
            chunk_logits(self.prec, z, (h, w), (n, c), cols.clone());
            // dZ = g ⊙ (softmax − onehot), 0 on ignored rows.
            z.par_chunks_mut(width)
                .zip(y.par_iter().zip(g.par_iter().zip(self.lse.par_iter())))
                .for_each(|(row, (&t, (&gi, &l)))| {
                    if t == self.ignore_index {
                        row.fill(0.0);
                        return;
                    }
                    simd(|| {
                        for x in row.iter_mut() {
                            *x = gi * fastmath::exp(*x - l);
                        }
                    });
                    let t = t - start as i64;
                    if (0..width as i64).contains(&t) {
                        row[t as usize] -= gi;
                    }
                });
            // dW[cols] = dZᵀ H (rows of W this chunk owns); dH += dZ W[cols].
            let dz_t = Mat::cols(z, width);
            let dw_rows = &mut dw[start * c..cols.end * c];
            mm(
                self.prec,
                dw_rows,
                c,
                dz_t,
                Mat::rows(h, c),
                (width, n, c),
                false,
                1.0,
                true,
            );
            let w_rows = Mat::rows(&w[start * c..cols.end * c], c);
            mm(
                self.prec,
                dh,
                c,
                Mat::rows(z, width),
                w_rows,
                (n, width, c),
                true,
                1.0,
                true,
            );
        }
        Ok((CpuStorage::F32(out), Shape::from(n * c + v * c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var, D};

    /// Against the definition — logits `h Wᵀ`, log-softmax, the target's entry — in f64 by
    /// candle's own ops: the per-row losses, and the gradients of `Σ g_i·nll_i` for `h` and `W`,
    /// with chunks of 1, 3, 7 columns and the whole vocabulary (one chunk), and ignored rows.
    #[test]
    fn chunked_head_nll_equals_the_logits_computed_whole() {
        let (n, c, v) = (6, 5, 11);
        let val = |i: usize, k: usize| ((i * k + 3) % 17) as f32 / 8.0 - 1.0;
        let h0: Vec<f32> = (0..n * c).map(|i| val(i, 7)).collect();
        let w0: Vec<f32> = (0..v * c).map(|i| val(i, 5)).collect();
        let y = vec![3i64, -100, 0, 10, 7, -100];
        let g: Vec<f32> = (0..n).map(|i| 0.5 + i as f32).collect();
        let dev = &Device::Cpu;
        // The reference in f64.
        let h = Var::from_vec(h0.clone(), (n, c), dev).unwrap();
        let w = Var::from_vec(w0.clone(), (v, c), dev).unwrap();
        let (h64, w64) = (
            h.as_tensor().to_dtype(DType::F64).unwrap(),
            w.as_tensor().to_dtype(DType::F64).unwrap(),
        );
        let z = h64.matmul(&w64.t().unwrap()).unwrap();
        let max = z.max_keepdim(D::Minus1).unwrap().detach();
        let shifted = z.broadcast_sub(&max).unwrap();
        let lse = shifted
            .exp()
            .unwrap()
            .sum_keepdim(D::Minus1)
            .unwrap()
            .log()
            .unwrap();
        let logp = shifted.broadcast_sub(&lse).unwrap();
        let safe: Vec<i64> = y.iter().map(|&t| t.max(0)).collect();
        let idx = Tensor::from_vec(safe, (n, 1), dev).unwrap();
        let keep: Vec<f64> = y.iter().map(|&t| f64::from(u8::from(t >= 0))).collect();
        let keep = Tensor::from_vec(keep, n, dev).unwrap();
        let nll = (logp
            .gather(&idx, 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .neg()
            .unwrap()
            * &keep)
            .unwrap();
        let gt = Tensor::from_vec(g.iter().map(|&x| x as f64).collect::<Vec<_>>(), n, dev).unwrap();
        let grads = (&nll * &gt).unwrap().sum_all().unwrap().backward().unwrap();
        let read = |t: &Tensor| {
            t.flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        };
        let want = (
            read(&nll),
            read(grads.get(&h).unwrap()),
            read(grads.get(&w).unwrap()),
        );
        for chunk in [1, 3, 7, 0] {
            let h = Var::from_vec(h0.clone(), (n, c), dev).unwrap();
            let w = Var::from_vec(w0.clone(), (v, c), dev).unwrap();
            let op = HeadNll {
                targets: Arc::new(y.clone()),
                ignore_index: -100,
                prec: MatmulPrecision::Highest,
                chunk,
                lse: std::sync::Mutex::new(None),
            };
            let nll = h.as_tensor().apply_op2(w.as_tensor(), op).unwrap();
            let gt = Tensor::from_vec(g.clone(), n, dev).unwrap();
            let grads = (&nll * &gt).unwrap().sum_all().unwrap().backward().unwrap();
            let got = (
                read(&nll),
                read(grads.get(&h).unwrap()),
                read(grads.get(&w).unwrap()),
            );
            for (what, a, b) in [
                ("nll", &got.0, &want.0),
                ("dh", &got.1, &want.1),
                ("dW", &got.2, &want.2),
            ] {
                for (x, r) in a.iter().zip(b.iter()) {
                    assert!(
                        (x - r).abs() <= 1e-5 * (1.0 + r.abs()),
                        "chunk {chunk} {what}: {x} vs {r}"
                    );
                }
            }
            assert_eq!((got.0[1], got.0[5]), (0.0, 0.0), "ignored rows");
        }
    }
}
