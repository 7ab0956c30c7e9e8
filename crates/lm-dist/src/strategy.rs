//! How the ranks of a data-parallel job share a training step. Every rank holds the whole model
//! and computes the gradients of its rows of the global batch; the [`Strategy`] sums them, says
//! which parameters' optimizer state each rank keeps, and brings the parameters back to equal
//! after the step. A trainer calls it between backward and the optimizer step and after the step,
//! and knows nothing of ranks.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, TensorId, Var};

use crate::reduction::GradientReduction;
use crate::{Collective, Result, SingleProcess};

/// How the optimizer state, the gradients and the parameters are placed (ZeRO's stages).
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
    /// ZeRO stage 2: as stage 1, but each gradient is reduced to its owner only and dropped by
    /// the other ranks as soon as its bucket is reduced.
    Zero2,
    /// ZeRO stage 3: as stage 2, and between steps each rank holds only the parameters it owns.
    /// They are gathered (broadcast by their owners) before they are next read — a step's
    /// forward pass, an evaluation, a checkpoint — and each is freed again by the ranks that do
    /// not own it as soon as its gradient is reduced during backward. An owner updates its
    /// parameters and sends nothing after the step.
    Zero3,
}

/// Where a rank puts parameters it receives.
#[derive(Debug, Clone, Copy)]
enum Receive {
    /// A new buffer for each (the variable may have been freed).
    FreshBuffer,
    /// The variable's own buffer.
    InPlace,
}

/// The ZeRO stage a run asks for; on one process every stage is [`Parallelism::Single`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum ZeroStage {
    /// Stage 0: plain data parallelism.
    #[default]
    Replicated,
    /// Stage 1: the optimizer state sharded.
    OptimizerState,
    /// Stage 2: the optimizer state and the gradients sharded.
    Gradients,
    /// Stage 3: the parameters sharded too (between uses).
    Parameters,
}

/// A data-parallel strategy over a collective and a model's parameters (in a fixed order).
pub struct Strategy {
    comm: Arc<dyn Collective>,
    kind: Parallelism,
    /// With ZeRO (stage 1, 2 or 3), the owning rank of each parameter.
    owners: Option<Vec<usize>>,
    /// ZeRO-3: whether this rank holds every parameter now (false once they are freed, until
    /// the next gather). Every rank passes the same calls, so the flag agrees across them.
    gathered: AtomicBool,
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
            gathered: AtomicBool::new(true),
        }
    }

    /// The strategy for `comm`'s world over parameters of `sizes` values each at ZeRO `stage`:
    /// DDP, or ZeRO-1/2/3 with each parameter owned by the rank holding the fewest values so
    /// far (so the shares are balanced within one parameter); one process for a world of 1. The
    /// parameters are taken to be whole on every rank now.
    pub fn new(comm: Arc<dyn Collective>, stage: ZeroStage, sizes: &[usize]) -> Self {
        let world = comm.world_size();
        let kind = match (world, stage) {
            (1, _) => Parallelism::Single,
            (_, ZeroStage::Replicated) => Parallelism::Ddp,
            (_, ZeroStage::OptimizerState) => Parallelism::Zero1,
            (_, ZeroStage::Gradients) => Parallelism::Zero2,
            (_, ZeroStage::Parameters) => Parallelism::Zero3,
        };
        let owners = matches!(
            kind,
            Parallelism::Zero1 | Parallelism::Zero2 | Parallelism::Zero3
        )
        .then(|| shard_owners(sizes, world));
        Self {
            comm,
            kind,
            owners,
            gathered: AtomicBool::new(true),
        }
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

    /// Whether the optimizer state is sharded (ZeRO-1, 2 or 3).
    pub fn sharded(&self) -> bool {
        self.owners.is_some()
    }

    /// Whether each rank keeps only its share of the reduced gradients (ZeRO-2 and 3): their
    /// global norm is then a sum over the ranks.
    pub fn gradients_sharded(&self) -> bool {
        matches!(self.kind, Parallelism::Zero2 | Parallelism::Zero3)
    }

    /// Whether each rank keeps only its share of the parameters between uses (ZeRO-3).
    pub fn parameters_sharded(&self) -> bool {
        self.kind == Parallelism::Zero3
    }

    /// With ZeRO, the owning rank of each parameter.
    pub fn owners(&self) -> Option<&[usize]> {
        self.owners.as_deref()
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

    /// The reduction of one step's gradients of `vars`, to be fed by the backward pass
    /// ([`GradientReduction::ready`]); `carried` holds the gradients of the step's earlier
    /// micro-batches, added before reducing.
    pub fn reduction<'s>(
        &'s self,
        vars: &'s [Var],
        carried: Option<GradStore>,
    ) -> GradientReduction<'s> {
        let owners = self.owners.as_deref().filter(|_| self.gradients_sharded());
        let free_parameters = self.parameters_sharded().then_some(&self.gathered);
        GradientReduction::new(self.comm.as_ref(), owners, free_parameters, vars, carried)
    }

    /// `grads ← Σ_ranks grads` for `vars` after the backward pass (a missing gradient counts as
    /// zeros), in buckets of whole parameters of at least 4 Mi values: on every rank, or with
    /// ZeRO-2 on each parameter's owner, the other ranks dropping it.
    pub fn reduce_gradients(&self, vars: &[Var], grads: &mut GradStore) -> Result<()> {
        self.reduction(vars, None).finish(grads)
    }

    /// `Σ_ranks` of a sum of squares of gradients when each rank holds only its share of them
    /// (ZeRO-2); the sum itself otherwise. `host` is the part summed on the host, `device_part`
    /// a one-element tensor (gradients in other dtypes or devices). On a GPU the device part is
    /// reduced on the device (zeros where a rank has none, so that every rank takes part); in
    /// CPU memory it is read and joins the host part.
    pub fn sum_squares(
        &self,
        host: f64,
        device_part: Option<Tensor>,
        device: &Device,
    ) -> Result<(f64, Option<Tensor>)> {
        if !self.gradients_sharded() {
            return Ok((host, device_part));
        }
        if device.is_cpu() {
            let read = match device_part {
                Some(d) => d.to_dtype(DType::F32)?.reshape(())?.to_scalar::<f32>()? as f64,
                None => 0.0,
            };
            return Ok((self.sum(host + read)?, None));
        }
        let part = match device_part {
            Some(d) => d.to_dtype(DType::F32)?.reshape(())?,
            None => Tensor::zeros((), DType::F32, device)?,
        };
        Ok((self.sum(host)?, Some(self.comm.all_reduce_tensor(&part)?)))
    }

    /// After the optimizer step: with ZeRO-1 and 2 each owner sends the parameters it updated to
    /// every rank; with ZeRO-3 the ranks free what they do not own (each owner keeps its
    /// update until the next [`Strategy::gather_parameters`]); otherwise every rank took the
    /// same step and nothing moves.
    pub fn after_step(&self, vars: &[Var]) -> Result<()> {
        let Some(owners) = &self.owners else {
            return Ok(());
        };
        if self.parameters_sharded() {
            return self.release_parameters(vars);
        }
        for owner in 0..self.comm.world_size() {
            let mine: Vec<&Var> = vars
                .iter()
                .zip(owners)
                .filter(|(_, &o)| o == owner)
                .map(|(v, _)| v)
                .collect();
            self.send_from(&mine, owner, Receive::InPlace)?;
        }
        Ok(())
    }

    /// ZeRO-3: every parameter on every rank again, each sent by its owner in flat groups of
    /// up to [`crate::reduction::BUCKET`] values, unless they are whole already. Every rank
    /// must call it at the same point; elsewhere it does nothing.
    pub fn gather_parameters(&self, vars: &[Var]) -> Result<()> {
        let all: Vec<usize> = (0..vars.len()).collect();
        self.gather_some(vars, &all)?;
        self.gathered.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// ZeRO-3: parameters `which` (indices into `vars`, the same on every rank) whole on every
    /// rank, unless all are whole already; a collective, as [`Strategy::gather_parameters`].
    pub fn gather_some(&self, vars: &[Var], which: &[usize]) -> Result<()> {
        let Some(owners) = self.owners.as_deref().filter(|_| self.parameters_sharded()) else {
            return Ok(());
        };
        if self.gathered.load(Ordering::Relaxed) {
            return Ok(());
        }
        for owner in 0..self.comm.world_size() {
            let mut group: Vec<&Var> = vec![];
            let mut values = 0;
            for &i in which.iter().filter(|&&i| owners[i] == owner) {
                let v = &vars[i];
                group.push(v);
                values += v.elem_count();
                if values >= crate::reduction::BUCKET {
                    self.send_from(&std::mem::take(&mut group), owner, Receive::FreshBuffer)?;
                    values = 0;
                }
            }
            if !group.is_empty() {
                self.send_from(&group, owner, Receive::FreshBuffer)?;
            }
        }
        Ok(())
    }

    /// ZeRO-3: frees those of parameters `which` (indices into `vars`) that this rank does not
    /// own; elsewhere it does nothing.
    pub fn release_some(&self, vars: &[Var], which: &[usize]) -> Result<()> {
        let Some(owners) = self.owners.as_deref().filter(|_| self.parameters_sharded()) else {
            return Ok(());
        };
        let rank = self.comm.rank();
        for &i in which.iter().filter(|&&i| owners[i] != rank) {
            vars[i].release()?;
        }
        self.gathered.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// ZeRO-3: frees the parameters this rank does not own (their values stay with their
    /// owners); elsewhere it does nothing.
    pub fn release_parameters(&self, vars: &[Var]) -> Result<()> {
        let all: Vec<usize> = (0..vars.len()).collect();
        self.release_some(vars, &all)
    }

    /// Whether every parameter is whole on this rank (always, except between a ZeRO-3 step and
    /// the next gather).
    pub fn parameters_whole(&self) -> bool {
        self.gathered.load(Ordering::Relaxed)
    }

    /// A typed error for `op` when ZeRO-3 has freed parameters that it would read.
    fn check_whole(&self, op: &'static str) -> Result<()> {
        match self.parameters_whole() {
            true => Ok(()),
            false => Err(crate::DistError::Misuse {
                op,
                problem: "ZeRO-3 has freed the parameters this rank does not own; \
                          gather_parameters first"
                    .into(),
            }),
        }
    }

    /// `vars` ← rank `root`'s values, as one flat tensor; the other ranks never read their
    /// own copies. `Receive::FreshBuffer` gives each a new buffer (ZeRO-3: they may be freed),
    /// `Receive::InPlace` writes into the buffer it has.
    fn send_from(&self, vars: &[&Var], root: usize, into: Receive) -> Result<()> {
        let Some(first) = vars.first() else {
            // Every rank agrees on the (empty) share: nothing to send.
            return Ok(());
        };
        let flat = if self.comm.rank() == root {
            // Detached: a gather inside a recomputed block's forward run is not one of the
            // block's reads (its owner would record them in another order than the others).
            let parts: Vec<Tensor> = vars
                .iter()
                .map(|v| v.as_tensor().detach().flatten_all()?.to_dtype(DType::F32))
                .collect::<candle_core::Result<_>>()?;
            Tensor::cat(&parts, 0)?
        } else {
            let n: usize = vars.iter().map(|v| v.elem_count()).sum();
            Tensor::zeros(n, DType::F32, first.device())?
        };
        let flat = self.comm.broadcast_tensor(&flat, root)?;
        if self.comm.rank() == root {
            return Ok(());
        }
        let mut at = 0;
        for v in vars {
            let k = v.elem_count();
            let value = flat
                .narrow(0, at, k)?
                .reshape(v.shape())?
                .to_dtype(v.dtype())?;
            match into {
                Receive::FreshBuffer => v.restore(&value)?,
                Receive::InPlace => v.set(&value)?,
            }
            at += k;
        }
        Ok(())
    }

    /// Rank 0's parameters on every rank.
    pub fn broadcast_parameters(&self, vars: &[Var]) -> Result<()> {
        if self.comm.world_size() == 1 {
            return Ok(());
        }
        self.check_whole("broadcast_parameters")?;
        let all: Vec<&Var> = vars.iter().collect();
        self.send_from(&all, 0, Receive::InPlace)
    }

    /// How many ranks hold parameters that differ (bit for bit) from rank 0's: 0 when all agree.
    pub fn ranks_differing(&self, vars: &[Var]) -> Result<usize> {
        if self.comm.world_size() == 1 {
            return Ok(0);
        }
        self.check_whole("ranks_differing")?;
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
/// `world` ranks: largest first, each to the rank holding the fewest values so far (the LPT
/// rule: no rank ends more than one parameter above another, and GPT-2's embedding, a third of
/// its values, no longer leaves one rank with twice the other's share).
pub fn shard_owners(sizes: &[usize], world: usize) -> Vec<usize> {
    let world = world.max(1);
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(sizes[i]), i));
    let mut load = vec![0usize; world];
    let mut owners = vec![0; sizes.len()];
    for i in order {
        let r = (0..world).min_by_key(|&r| (load[r], r)).unwrap_or(0);
        load[r] += sizes[i];
        owners[i] = r;
    }
    owners
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
        // In order, 1 and 9 would go to ranks 0 and 1, then 8 to rank 0 (9 against 9 + …);
        // largest first: 9 → 0, 8 → 1, 1 → 1: loads 9 and 9.
        assert_eq!(shard_owners(&[1, 9, 8], 2), vec![1, 0, 1]);
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
            let ddp = Strategy::new(comm.clone(), ZeroStage::Replicated, &[2, 2]);
            assert_eq!(ddp.kind(), Parallelism::Ddp);
            assert_eq!(ddp.owned(&vars).len(), 2);
            ddp.reduce_gradients(&vars, &mut grads).unwrap();
            let ga: Vec<f32> = grads.get(a.as_tensor()).unwrap().to_vec1().unwrap();
            let gb: Vec<Vec<f32>> = grads.get(b.as_tensor()).unwrap().to_vec2().unwrap();
            // Ranks 0 and 1 contribute 1 and 2 per element of a, 1 and 1 of b.
            assert_eq!((ga, gb), (vec![3.0, 3.0], vec![vec![2.0], vec![2.0]]));
            let zero = Strategy::new(comm.clone(), ZeroStage::OptimizerState, &[2, 2]);
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

    /// ZeRO-2 through the backward pass's hook, with a carried micro-batch: each rank ends with
    /// the summed gradients of the parameters it owns and none of the others; DDP through the
    /// same hook gives every rank the sums.
    #[test]
    fn zero2_reduces_each_gradient_to_its_owner_during_backward() {
        let results = ThreadRank::run(2, |comm| {
            let comm: Arc<dyn Collective> = Arc::new(comm);
            let r = comm.rank() as f64;
            let dev = Device::Cpu;
            let a = Var::new(&[1f32, 2.0], &dev).unwrap();
            let b = Var::new(&[3f32, 4.0, 5.0], &dev).unwrap();
            let vars = vec![a.clone(), b.clone()];
            // loss = (r + 1)·Σa + Σb², so ∂a = r + 1 and ∂b = 2b on rank r.
            let loss = || {
                ((a.as_tensor() * (r + 1.0)).unwrap().sum_all().unwrap()
                    + b.as_tensor().sqr().unwrap().sum_all().unwrap())
                .unwrap()
            };
            let mut out = vec![];
            for stage in [ZeroStage::Gradients, ZeroStage::Replicated] {
                let s = Strategy::new(comm.clone(), stage, &[2, 3]);
                // An earlier micro-batch's gradients, carried into the reduction.
                let carried = loss().backward().unwrap();
                let mut reduction = s.reduction(&vars, Some(carried));
                let mut announced = 0;
                let mut grads = loss()
                    .backward_freeing_graph_with(&mut |id, g| {
                        announced += 1;
                        reduction.ready(id, g).map_err(candle_core::Error::wrap)
                    })
                    .unwrap();
                reduction.finish(&mut grads).unwrap();
                assert_eq!(announced, 2);
                let read = |v: &Var| {
                    grads
                        .get(v.as_tensor())
                        .map(|g| g.to_vec1::<f32>().unwrap())
                };
                out.push((read(&a), read(&b)));
            }
            (s_owners(&comm), out)
        });
        // b (3 values, the largest) goes to rank 0, a (2) to rank 1. Sums over 2 micro-batches
        // × 2 ranks:
        // ∂a = 2·(1 + 2) = 6, ∂b = 4 · 2b.
        let (sum_a, sum_b) = (vec![6f32, 6.0], vec![24f32, 32.0, 40.0]);
        for (rank, (owners, out)) in results.into_iter().enumerate() {
            assert_eq!(owners, vec![1, 0]);
            let zero2 = if rank == 0 {
                (None, Some(sum_b.clone()))
            } else {
                (Some(sum_a.clone()), None)
            };
            assert_eq!(out[0], zero2, "rank {rank}, ZeRO-2");
            assert_eq!(out[1], (Some(sum_a.clone()), Some(sum_b.clone())), "DDP");
        }
    }

    /// ZeRO-3 on two thread ranks: the backward pass frees each parameter a rank does not own
    /// once its gradient is reduced; the owner updates its own; the gather brings every update
    /// to both ranks, and a second step sees the updated values.
    #[test]
    fn zero3_frees_what_a_rank_does_not_own_and_gathers_it_back() {
        let results = ThreadRank::run(2, |comm| {
            let comm: Arc<dyn Collective> = Arc::new(comm);
            let r = comm.rank() as f64;
            let dev = Device::Cpu;
            let a = Var::new(&[1f32, 2.0], &dev).unwrap();
            let b = Var::new(&[3f32, 4.0, 5.0], &dev).unwrap();
            let vars = vec![a.clone(), b.clone()];
            let s = Strategy::new(comm.clone(), ZeroStage::Parameters, &[2, 3]);
            assert_eq!(s.kind(), Parallelism::Zero3);
            assert!(s.parameters_sharded() && s.gradients_sharded() && s.parameters_whole());
            let owned = s.owned(&vars);
            let mut seen = vec![];
            for _ in 0..2 {
                s.gather_parameters(&vars).unwrap();
                assert!(s.parameters_whole());
                seen.push((
                    a.as_tensor().to_vec1::<f32>().unwrap(),
                    b.as_tensor().to_vec1::<f32>().unwrap(),
                ));
                // loss = (r + 1)·Σa + Σb²: ∂a = 2 + 1 = 3 summed, ∂b = 2·2b = 4b summed.
                let loss = ((a.as_tensor() * (r + 1.0)).unwrap().sum_all().unwrap()
                    + b.as_tensor().sqr().unwrap().sum_all().unwrap())
                .unwrap();
                let mut reduction = s.reduction(&vars, None);
                let mut grads = loss
                    .backward_freeing_graph_with(&mut |id, g| {
                        reduction.ready(id, g).map_err(candle_core::Error::wrap)
                    })
                    .unwrap();
                reduction.finish(&mut grads).unwrap();
                // The owner takes an SGD step of rate 0.1 on its parameter, reading its value;
                // the other rank's copy is freed already: reading it is refused or empty.
                for v in &vars {
                    if owned.contains(&v.as_tensor().id()) {
                        let g = grads.get(v.as_tensor()).unwrap();
                        v.set(&(v.as_tensor() - (g * 0.1).unwrap()).unwrap())
                            .unwrap();
                    } else {
                        assert!(grads.get(v.as_tensor()).is_none());
                        assert_eq!(held(v), 0, "freed during backward");
                    }
                }
                s.after_step(&vars).unwrap();
                assert!(!s.parameters_whole());
                assert!(
                    s.ranks_differing(&vars).is_err(),
                    "freed parameters are not read"
                );
            }
            s.gather_parameters(&vars).unwrap();
            assert_eq!((held(&a), held(&b)), (2, 3));
            assert_eq!(s.ranks_differing(&vars).unwrap(), 0);
            seen.push((
                a.as_tensor().to_vec1::<f32>().unwrap(),
                b.as_tensor().to_vec1::<f32>().unwrap(),
            ));
            seen
        });
        // a ← a − 0.3 per step; b ← b − 0.4·b = 0.6·b per step.
        let want = vec![
            (vec![1f32, 2.0], vec![3f32, 4.0, 5.0]),
            (vec![0.7, 1.7], vec![1.8, 2.4, 3.0]),
            (vec![0.4, 1.4], vec![1.08, 1.44, 1.8]),
        ];
        for seen in results {
            for ((a, b), (wa, wb)) in seen.iter().zip(&want) {
                for (x, y) in a.iter().chain(b).zip(wa.iter().chain(wb)) {
                    assert!((x - y).abs() < 1e-6, "{seen:?}");
                }
            }
        }
    }

    /// Values in `v`'s buffer (CPU, f32).
    fn held(v: &Var) -> usize {
        let (storage, _) = v.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cpu(c) => c.as_slice::<f32>().unwrap().len(),
            _ => unreachable!("a CPU test"),
        }
    }

    fn s_owners(comm: &Arc<dyn Collective>) -> Vec<usize> {
        let s = Strategy::new(comm.clone(), ZeroStage::Gradients, &[2, 3]);
        assert_eq!(s.kind(), Parallelism::Zero2);
        assert!(s.gradients_sharded() && s.sharded());
        s.owners().unwrap().to_vec()
    }
}
