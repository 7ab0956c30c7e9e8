//! One step's gradient reduction in buckets, fed by the backward pass as each parameter's
//! gradient becomes final (PyTorch DDP's bucket hooks; candle's
//! `Tensor::backward_freeing_graph_with` announces them): a bucket is reduced once it holds
//! [`BUCKET`] values, while the pass computes the gradients of earlier layers, instead of all of
//! them after the pass. With ZeRO-2 (and 3) each bucket is reduced to the parameters' owners only
//! (a reduce-scatter at parameter granularity), and the other ranks free those gradients at once,
//! so no rank holds more than its share plus one bucket of reduced gradients.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::backprop::GradStore;
use candle_core::{DType, Storage, Tensor, TensorId, Var};

use crate::{Collective, Result};

/// Values a bucket gathers before it is reduced (4 Mi f32 values, 16 MiB; DDP's default is
/// 25 MiB).
pub const BUCKET: usize = 1 << 22;

/// The gradient reduction of one step: [`GradientReduction::ready`] for each parameter whose
/// gradient is final, then [`GradientReduction::finish`] for the rest. Every rank must announce
/// the same parameters in the same order (the same graph gives the same order).
pub struct GradientReduction<'s> {
    comm: &'s dyn Collective,
    /// With ZeRO-2 and 3, the owning rank of each parameter, to which its gradient is reduced.
    reduce_to_owners: Option<&'s [usize]>,
    /// ZeRO-3: the other ranks free a parameter too once its gradient is reduced (nothing reads
    /// it again this step; its owner updates it), clearing the strategy's "whole" flag.
    free_parameters: Option<&'s AtomicBool>,
    vars: &'s [Var],
    position: HashMap<TensorId, usize>,
    reduced: Vec<bool>,
    bucket: Vec<usize>,
    bucket_values: usize,
    /// The gradients of the step's earlier micro-batches, added to each gradient before it is
    /// reduced: only the last micro-batch of an accumulation step is reduced.
    carried: Option<GradStore>,
}

impl<'s> GradientReduction<'s> {
    pub(crate) fn new(
        comm: &'s dyn Collective,
        reduce_to_owners: Option<&'s [usize]>,
        free_parameters: Option<&'s AtomicBool>,
        vars: &'s [Var],
        carried: Option<GradStore>,
    ) -> Self {
        Self {
            comm,
            reduce_to_owners,
            free_parameters,
            vars,
            position: vars
                .iter()
                .enumerate()
                .map(|(i, v)| (v.as_tensor().id(), i))
                .collect(),
            reduced: vec![false; vars.len()],
            bucket: vec![],
            bucket_values: 0,
            carried,
        }
    }

    /// The gradient of tensor `id` in `grads` is final: it joins the bucket (an id that is not
    /// one of the parameters, or one already taken, is ignored), and a full bucket is reduced.
    pub fn ready(&mut self, id: TensorId, grads: &mut GradStore) -> Result<()> {
        let Some(&i) = self.position.get(&id) else {
            return Ok(());
        };
        self.take(i, grads)?;
        if self.bucket_values >= BUCKET {
            self.flush(grads)?;
        }
        Ok(())
    }

    /// Reduces every gradient not announced yet, in parameter order, and the last bucket.
    pub fn finish(mut self, grads: &mut GradStore) -> Result<()> {
        for i in 0..self.vars.len() {
            self.take(i, grads)?;
            if self.bucket_values >= BUCKET {
                self.flush(grads)?;
            }
        }
        self.flush(grads)
    }

    /// Parameter `i` joins the bucket, its carried gradient added.
    fn take(&mut self, i: usize, grads: &mut GradStore) -> Result<()> {
        if self.reduced[i] {
            return Ok(());
        }
        self.reduced[i] = true;
        let v = self.vars[i].as_tensor();
        if let Some(before) = self.carried.as_mut().and_then(|c| c.remove(v)) {
            let sum = match grads.get(v) {
                Some(g) => (before + g)?,
                None => before,
            };
            grads.insert(v, sum);
        }
        self.bucket.push(i);
        self.bucket_values += v.elem_count();
        Ok(())
    }

    /// Reduces the bucket: summed on every rank, or with ZeRO-2 on each parameter's owner (one
    /// reduce per owner, in rank order), the others dropping those gradients.
    fn flush(&mut self, grads: &mut GradStore) -> Result<()> {
        let bucket = std::mem::take(&mut self.bucket);
        self.bucket_values = 0;
        let comm = self.comm;
        if bucket.is_empty() || comm.world_size() == 1 {
            return Ok(());
        }
        match self.reduce_to_owners {
            Some(owners) => {
                for owner in 0..comm.world_size() {
                    let part: Vec<usize> = bucket
                        .iter()
                        .copied()
                        .filter(|&i| owners[i] == owner)
                        .collect();
                    if part.is_empty() {
                        continue;
                    }
                    let mut flat = self.flatten(&part, grads)?;
                    comm.reduce_sum(&mut flat, owner)?;
                    if comm.rank() == owner {
                        self.unflatten(&part, flat, grads)?;
                    } else {
                        for &i in &part {
                            grads.remove(self.vars[i].as_tensor());
                            if let Some(whole) = self.free_parameters {
                                self.vars[i].release()?;
                                whole.store(false, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
            None => {
                let mut flat = self.flatten(&bucket, grads)?;
                comm.all_reduce_sum(&mut flat)?;
                self.unflatten(&bucket, flat, grads)?;
            }
        }
        Ok(())
    }

    /// The gradients of parameters `part` as one f32 vector in host memory (a missing one as
    /// zeros): each f32 gradient in CPU memory copied once, straight from its storage.
    fn flatten(&self, part: &[usize], grads: &GradStore) -> Result<Vec<f32>> {
        let n = part.iter().map(|&i| self.vars[i].elem_count()).sum();
        let mut flat = Vec::with_capacity(n);
        for &i in part {
            let v = &self.vars[i];
            match grads.get(v.as_tensor()) {
                Some(g) => append(&mut flat, g)?,
                None => flat.resize(flat.len() + v.elem_count(), 0.0),
            }
        }
        Ok(flat)
    }

    /// Splits the reduced `flat` back into the gradients of `part`, each in its parameter's
    /// shape, dtype and device (views of one tensor when they are f32 on the CPU).
    fn unflatten(&self, part: &[usize], flat: Vec<f32>, grads: &mut GradStore) -> Result<()> {
        let Some(first) = part.first() else {
            return Ok(());
        };
        let n = flat.len();
        let flat = Tensor::from_vec(flat, n, self.vars[*first].device())?;
        let mut at = 0;
        for &i in part {
            let v = &self.vars[i];
            let k = v.elem_count();
            let g = flat.narrow(0, at, k)?.reshape(v.shape())?;
            grads.insert(v.as_tensor(), g.to_dtype(v.dtype())?);
            at += k;
        }
        Ok(())
    }
}

/// `out ← out ++ g` (flattened, as f32): straight from the storage for a contiguous f32 tensor
/// in CPU memory, through a host copy otherwise.
fn append(out: &mut Vec<f32>, g: &Tensor) -> Result<()> {
    if g.dtype() == DType::F32 {
        if let Some(offsets) = g.layout().contiguous_offsets() {
            let (storage, _) = g.storage_and_layout();
            if let Storage::Cpu(cpu) = &*storage {
                out.extend_from_slice(&cpu.as_slice::<f32>()?[offsets.0..offsets.1]);
                return Ok(());
            }
        }
    }
    out.extend(g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};
    use std::sync::{Arc, Mutex};

    /// The backward pass announces a variable read inside a recomputed block as soon as that
    /// block's recomputation is done — before the earlier blocks are recomputed — so its
    /// bucket can be reduced (and, with ZeRO, dropped) while the pass goes on.
    #[test]
    fn a_recomputed_blocks_variables_are_announced_after_its_recomputation() {
        let dev = Device::Cpu;
        let (a, b) = (
            Var::new(&[1f32, 2.0], &dev).unwrap(),
            Var::new(&[3f32, 4.0], &dev).unwrap(),
        );
        let c = Var::new(&[0.5f32, 0.25], &dev).unwrap();
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let block = |name: &'static str, w: Var| {
            let log = log.clone();
            Arc::new(move |xs: &[Tensor]| {
                log.lock().unwrap().push(format!("run {name}"));
                xs[0].mul(w.as_tensor())
            })
        };
        let x = Tensor::new(&[1f32, 1.0], &dev).unwrap();
        let h1 = Tensor::checkpoint(&[x], block("a", a.clone())).unwrap();
        let h2 = Tensor::checkpoint(&[h1], block("b", b.clone())).unwrap();
        let loss = h2.mul(c.as_tensor()).unwrap().sum_all().unwrap();
        let names = [(a.id(), "a"), (b.id(), "b"), (c.id(), "c")];
        let grads = loss
            .backward_freeing_graph_with(&mut |id, _| {
                let name = names.iter().find(|(i, _)| *i == id).map_or("?", |n| n.1);
                log.lock().unwrap().push(name.to_string());
                Ok(())
            })
            .unwrap();
        let log = log.lock().unwrap().clone();
        let at = |s: &str| log.iter().rposition(|l| l == s).unwrap();
        // Forward: a then b; backward: b recomputed, b final, then a recomputed, a final.
        assert_eq!(&log[..2], ["run a", "run b"], "{log:?}");
        assert!(at("run b") < at("b") && at("b") < at("run a") && at("run a") < at("a"));
        assert_eq!(log.iter().filter(|l| l.len() == 1).count(), 3, "{log:?}");
        // ∂a = x·b·c, ∂b = x·a·c.
        let g = |v: &Var| grads.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!((g(&a), g(&b)), (vec![1.5, 1.0], vec![0.5, 0.5]));
    }
}
