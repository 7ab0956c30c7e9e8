//! How the ranks of a data-parallel job share a training step. Every rank holds the whole model
//! and computes the gradients of its rows of the global batch; the [`Strategy`] sums them, says
//! which parameters' optimizer state each rank keeps, and brings the parameters back to equal
//! after the step. A trainer calls it between backward and the optimizer step and after the step,
//! and knows nothing of ranks.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, TensorId, Var};

use crate::{Collective, Result, SingleProcess};

/// How the optimizer state is placed (ZeRO's stages; 2 and 3 are not built yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallelism {
    /// One process.
    Single,
    /// Data parallel (PyTorch's DDP): gradients all-reduced, every rank keeps all the optimizer
    /// state and takes the same step.
    Ddp,
    /// ZeRO stage 1: gradients all-reduced, each parameter's optimizer state on one rank (its
    /// owner), which updates it and sends it to the others.
    Zero1,
}

/// Values per all-reduce call when reducing gradients (4 Mi).
const BUCKET: usize = 1 << 22;

/// A data-parallel strategy over a collective and a model's parameters (in a fixed order).
pub struct Strategy {
    comm: Arc<dyn Collective>,
    kind: Parallelism,
    /// With [`Parallelism::Zero1`], the owning rank of each parameter.
    owners: Option<Vec<usize>>,
}

impl std::fmt::Debug for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Strategy")
            .field("kind", &self.kind)
            .field("rank", &self.comm.rank())
            .field("world", &self.comm.world_size())
            .finish()
    }
}

impl Default for Strategy {
    fn default() -> Self {
        Self::single()
    }
}

impl Strategy {
    /// One process.
    pub fn single() -> Self {
        Self {
            comm: Arc::new(SingleProcess),
            kind: Parallelism::Single,
            owners: None,
        }
    }

    /// The strategy for `comm`'s world over parameters of `sizes` values each: DDP, or ZeRO-1
    /// with `shard_optimizer_state` (each parameter owned by the rank holding the fewest values
    /// so far, so the shares are balanced within one parameter); one process for a world of 1.
    pub fn new(comm: Arc<dyn Collective>, shard_optimizer_state: bool, sizes: &[usize]) -> Self {
        let world = comm.world_size();
        let (kind, owners) = match (world, shard_optimizer_state) {
            (1, _) => (Parallelism::Single, None),
            (_, false) => (Parallelism::Ddp, None),
            (_, true) => (Parallelism::Zero1, Some(shard_owners(sizes, world))),
        };
        Self { comm, kind, owners }
    }

    /// The placement.
    pub fn kind(&self) -> Parallelism {
        self.kind
    }

    /// The collective under it.
    pub fn comm(&self) -> &dyn Collective {
        self.comm.as_ref()
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Ranks in the job.
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// Whether this rank writes the run (rank 0).
    pub fn is_writer(&self) -> bool {
        self.comm.rank() == 0
    }

    /// Whether the optimizer state is sharded.
    pub fn sharded(&self) -> bool {
        self.owners.is_some()
    }

    /// The ids of the parameters whose optimizer state this rank keeps: all of them unless
    /// sharded.
    pub fn owned(&self, vars: &[Var]) -> HashSet<TensorId> {
        let rank = self.comm.rank();
        vars.iter()
            .enumerate()
            .filter(|(i, _)| self.owners.as_ref().is_none_or(|o| o[*i] == rank))
            .map(|(_, v)| v.as_tensor().id())
            .collect()
    }

    /// This rank's rows of a global batch of `n` rows.
    pub fn rows(&self, n: usize) -> Range<usize> {
        crate::share(n, self.comm.world_size(), self.comm.rank())
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        self.comm.barrier()
    }

    /// `Σ_ranks x` for each element of `xs`, in place: several counts in one collective.
    pub fn sums(&self, xs: &mut [f64]) -> Result<()> {
        self.comm.all_reduce_sum_f64(xs)
    }

    /// `Σ_ranks x` (losses, counts).
    pub fn sum(&self, x: f64) -> Result<f64> {
        let mut v = [x];
        self.comm.all_reduce_sum_f64(&mut v)?;
        Ok(v[0])
    }

    /// `grads ← Σ_ranks grads` for `vars` (a missing gradient counts as zeros): the gradients
    /// concatenated into one f32 tensor, reduced in buckets of 4 Mi values with
    /// [`Collective::all_reduce_tensor`], and split back, each in its parameter's dtype.
    pub fn reduce_gradients(&self, vars: &[Var], grads: &mut GradStore) -> Result<()> {
        if self.comm.world_size() == 1 || vars.is_empty() {
            return Ok(());
        }
        let mut flat = Vec::with_capacity(vars.len());
        for v in vars {
            flat.push(match grads.get(v.as_tensor()) {
                Some(g) => g.flatten_all()?.to_dtype(DType::F32)?,
                None => Tensor::zeros(v.elem_count(), DType::F32, v.device())?,
            });
        }
        let flat = Tensor::cat(&flat, 0)?;
        let n = flat.dim(0)?;
        let mut reduced = Vec::with_capacity(n.div_ceil(BUCKET));
        for start in (0..n).step_by(BUCKET) {
            let bucket = flat.narrow(0, start, BUCKET.min(n - start))?;
            reduced.push(self.comm.all_reduce_tensor(&bucket)?);
        }
        let flat = match reduced.len() {
            1 => reduced.swap_remove(0),
            _ => Tensor::cat(&reduced, 0)?,
        };
        let mut at = 0;
        for v in vars {
            let k = v.elem_count();
            let g = flat.narrow(0, at, k)?.reshape(v.shape())?;
            grads.insert(v.as_tensor(), g.to_dtype(v.dtype())?);
            at += k;
        }
        Ok(())
    }

    /// After the optimizer step: with ZeRO-1 each owner sends the parameters it updated to every
    /// rank; otherwise every rank took the same step and nothing moves.
    pub fn after_step(&self, vars: &[Var]) -> Result<()> {
        let Some(owners) = &self.owners else {
            return Ok(());
        };
        for owner in 0..self.comm.world_size() {
            let mine: Vec<&Var> = vars
                .iter()
                .zip(owners)
                .filter(|(_, &o)| o == owner)
                .map(|(v, _)| v)
                .collect();
            self.broadcast_vars(&mine, owner)?;
        }
        Ok(())
    }

    /// Rank 0's parameters on every rank.
    pub fn broadcast_parameters(&self, vars: &[Var]) -> Result<()> {
        if self.comm.world_size() == 1 {
            return Ok(());
        }
        let all: Vec<&Var> = vars.iter().collect();
        self.broadcast_vars(&all, 0)
    }

    /// `vars` ← rank `root`'s values, as one flat tensor.
    fn broadcast_vars(&self, vars: &[&Var], root: usize) -> Result<()> {
        if vars.is_empty() {
            // Every rank agrees on the (empty) share: nothing to send.
            return self.comm.broadcast(&mut [], root);
        }
        let flat: Vec<Tensor> = vars
            .iter()
            .map(|v| v.as_tensor().flatten_all()?.to_dtype(DType::F32))
            .collect::<candle_core::Result<_>>()?;
        let flat = self.comm.broadcast_tensor(&Tensor::cat(&flat, 0)?, root)?;
        let mut at = 0;
        for v in vars {
            let n = v.elem_count();
            let value = flat
                .narrow(0, at, n)?
                .reshape(v.shape())?
                .to_dtype(v.dtype())?;
            v.set(&value)?;
            at += n;
        }
        Ok(())
    }

    /// How many ranks hold parameters that differ (bit for bit) from rank 0's: 0 when all agree.
    pub fn ranks_differing(&self, vars: &[Var]) -> Result<usize> {
        if self.comm.world_size() == 1 {
            return Ok(0);
        }
        let mut mine = vec![];
        for v in vars {
            mine.extend(
                v.as_tensor()
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?,
            );
        }
        let mut theirs = mine.clone();
        self.comm.broadcast(&mut theirs, 0)?;
        let differ = mine
            .iter()
            .zip(&theirs)
            .any(|(a, b)| a.to_bits() != b.to_bits());
        Ok(self.sum(f64::from(u8::from(differ)))? as usize)
    }
}

/// The rank that owns each parameter (sizes in order) when the optimizer state is sharded over
/// `world` ranks: each goes to the rank holding the fewest values so far.
pub fn shard_owners(sizes: &[usize], world: usize) -> Vec<usize> {
    let mut load = vec![0usize; world.max(1)];
    sizes
        .iter()
        .map(|&n| {
            let r = (0..world.max(1)).min_by_key(|&r| (load[r], r)).unwrap_or(0);
            load[r] += n;
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ThreadRank;
    use candle_core::Device;

    #[test]
    fn owners_balance_the_values() {
        assert_eq!(shard_owners(&[10, 3, 3, 3, 1], 2), vec![0, 1, 1, 1, 1]);
        assert_eq!(shard_owners(&[4, 4, 4], 3), vec![0, 1, 2]);
    }

    /// Two ranks as threads: DDP sums the gradients; ZeRO-1 splits the ownership and its
    /// after-step broadcast brings each owner's update to the other rank.
    #[test]
    fn two_ranks_sum_gradients_and_share_updates() {
        let results = ThreadRank::run(2, |comm| {
            let comm: Arc<dyn Collective> = Arc::new(comm);
            let r = comm.rank() as f32;
            let dev = Device::Cpu;
            let a = Var::new(&[1f32, 2.0], &dev).unwrap();
            let b = Var::new(&[[3f32], [4.0]], &dev).unwrap();
            let vars = vec![a.clone(), b.clone()];
            let loss = ((a.as_tensor() * (r + 1.0) as f64)
                .unwrap()
                .sum_all()
                .unwrap()
                + b.as_tensor().sum_all().unwrap())
            .unwrap();
            let mut grads = loss.backward().unwrap();
            let ddp = Strategy::new(comm.clone(), false, &[2, 2]);
            assert_eq!(ddp.kind(), Parallelism::Ddp);
            assert_eq!(ddp.owned(&vars).len(), 2);
            ddp.reduce_gradients(&vars, &mut grads).unwrap();
            let ga: Vec<f32> = grads.get(a.as_tensor()).unwrap().to_vec1().unwrap();
            let gb: Vec<Vec<f32>> = grads.get(b.as_tensor()).unwrap().to_vec2().unwrap();
            // Ranks 0 and 1 contribute 1 and 2 per element of a, 1 and 1 of b.
            assert_eq!((ga, gb), (vec![3.0, 3.0], vec![vec![2.0], vec![2.0]]));
            let zero = Strategy::new(comm.clone(), true, &[2, 2]);
            let owned = zero.owned(&vars);
            assert_eq!(owned.len(), 1);
            // Each rank "updates" what it owns; after the step both hold both updates.
            for v in &vars {
                if owned.contains(&v.as_tensor().id()) {
                    v.set(&(v.as_tensor() * 10.0).unwrap()).unwrap();
                }
            }
            zero.after_step(&vars).unwrap();
            assert_eq!(zero.ranks_differing(&vars).unwrap(), 0);
            let a_now: Vec<f32> = a.as_tensor().to_vec1().unwrap();
            let b_now: Vec<Vec<f32>> = b.as_tensor().to_vec2().unwrap();
            (a_now, b_now)
        });
        for (a, b) in results {
            assert_eq!(a, vec![10.0, 20.0]);
            assert_eq!(b, vec![vec![30.0], vec![40.0]]);
        }
    }
}
