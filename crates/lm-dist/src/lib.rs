//! # lm-dist
//!
//! The collectives a data-parallel trainer needs, behind one small trait: every rank holds the
//! whole model, computes the gradients of its share of the global batch, and the gradients are
//! summed across ranks ([`Collective::all_reduce_sum`]) before every rank takes the same optimizer
//! step. The implementations:
//!
//! - [`SingleProcess`] (always built): world size 1, every collective the identity.
//! - [`ThreadRank`] (always built): ranks as threads of one process, for testing multi-rank
//!   logic without a launcher.
//! - `Mpi` (cargo feature `mpi`): ranks of an MPI job (`mpirun -np N …`), through rsmpi over the
//!   system's MPI — one machine or many. When all the ranks are on one machine their f32
//!   buffers go through a shared memory segment instead (`SharedMemory`).
//! - `Nccl` (cargo feature `nccl`, which needs CUDA): the ranks of an MPI job, one GPU each
//!   (`local_rank`), reducing with NCCL; the unique id travels over MPI.
//!
//! A [`Strategy`] puts them to work for a trainer: it reduces the gradients, places the
//! optimizer state and the gradients (all on every rank, or sharded: ZeRO stages 1 and 2) and
//! keeps the parameters equal,
//! so that the trainer calls it and knows nothing of ranks.
//!
//! [`from_environment`] picks one: NCCL when built with it (a world of 1 without a GPU falls back to
//! MPI's trivial collective), MPI when
//! built with it, else a single process — and refuses to run as one of several ranks of an MPI
//! launch without the feature, instead of training N copies of the same run.
//!
//! ```
//! use lm_dist::{Collective, SingleProcess};
//! let c = SingleProcess;
//! let mut g = [1.0f32, 2.0];
//! c.all_reduce_sum(&mut g).unwrap();
//! assert_eq!((c.rank(), c.world_size(), g), (0, 1, [1.0, 2.0]));
//! ```
//!
//! ## Outside this workspace
//!
//! The crate is not on crates.io: depend on it by path (or git), candle pinned as the workspace pins it:
//!
//! ```toml
//! [dependencies]
//! lm-dist = { path = "…/lm-train/crates/lm-dist" }
//! candle-core = "=0.11.0"
//!
//! [patch.crates-io]
//! candle-core = { path = "…/lm-train/vendor/candle-core" }
//!
//! [profile.dev.package."*"]
//! opt-level = 3   # candle is unusably slow unoptimized
//! ```
//!
//! The patch is the workspace's candle-core with its grad mode and backward hooks
//! (`vendor/README.md`); a workspace's `[patch]` does not reach the projects that depend on
//! it, so a dependent names it in its own manifest.
//! A program to copy: `examples/data_parallel.rs` (run by `cargo xtask test`); `examples/allreduce.rs`
//! times the all-reduce under `mpirun`.

mod reduction;
// With NCCL the ranks reduce on their GPUs; the segment serves CPU ranks of an MPI job.
#[cfg(any(test, all(feature = "mpi", not(feature = "nccl"))))]
mod shared_memory;
mod strategy;
mod threads;

pub use reduction::{GradientReduction, BUCKET};
#[cfg(all(feature = "mpi", not(feature = "nccl")))]
pub use shared_memory::{SharedMemory, SLOT_VALUES};
pub use strategy::{Parallelism, Strategy, ZeroStage};
pub use threads::ThreadRank;

#[cfg(feature = "mpi")]
mod mpi_ranks;

#[cfg(feature = "mpi")]
pub use mpi_ranks::Mpi;

#[cfg(feature = "nccl")]
mod nccl_ranks;

#[cfg(feature = "nccl")]
pub use nccl_ranks::Nccl;

/// What can go wrong when setting up or running collectives.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// Launched as several ranks by an MPI launcher, but built without the `mpi` feature.
    #[error("launched as rank {rank} of {size} ({var}) but this build has no MPI: build with `--features mpi` (Debian: apt-get install libopenmpi-dev openmpi-bin libclang-dev)")]
    NoMpi {
        /// The environment variable that gave the world size.
        var: &'static str,
        /// This process's rank.
        rank: usize,
        /// The launch's world size.
        size: usize,
    },
    /// MPI could not be initialized.
    #[error("MPI: {0}")]
    Init(String),
    /// NCCL (or the GPU under it) failed: no driver or libnccl, no GPU for this rank, a
    /// collective that returned an error.
    #[error("NCCL {0}")]
    Nccl(String),
    /// A tensor could not be read or made (device, dtype, shape).
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Buffers of different lengths on different ranks, or a root outside the world.
    #[error("collective {op}: {problem}")]
    Misuse {
        /// The collective.
        op: &'static str,
        /// What was wrong.
        problem: String,
    },
}

use candle_core::{DType, Tensor};

/// Result of a collective.
pub type Result<T> = std::result::Result<T, DistError>;

/// Rank, world size and the collectives of data-parallel training. Every rank must call the
/// collectives in the same order with buffers of the same length.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..world_size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// `buf ← Σ_ranks buf`, in place, on every rank.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// `buf ← Σ_ranks buf` for f64 values (losses, counts), in place, on every rank.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// `buf ← buf of rank root`, on every rank.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()>;
    /// `buf ← Σ_ranks buf` on rank `root` only (the other ranks' `buf` is left as it was): the
    /// reduction to one owner that ZeRO-2's reduce-scatter is made of. This default is an
    /// all-reduce (the same sum at the root, twice the traffic); MPI, NCCL and the thread ranks
    /// reduce to the root.
    fn reduce_sum(&self, buf: &mut [f32], root: usize) -> Result<()> {
        check_root("reduce", root, self.world_size())?;
        let mut sum = buf.to_vec();
        self.all_reduce_sum(&mut sum)?;
        if self.rank() == root {
            buf.copy_from_slice(&sum);
        }
        Ok(())
    }
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// `Σ_ranks t` on every rank, as a tensor of `t`'s shape, dtype and device. This default
    /// stages through the host in f32 (one read of `t`); a backend that reduces device buffers
    /// (NCCL) overrides it.
    fn all_reduce_tensor(&self, t: &Tensor) -> Result<Tensor> {
        if self.world_size() == 1 {
            return Ok(t.clone());
        }
        let mut host = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        self.all_reduce_sum(&mut host)?;
        Ok(Tensor::from_vec(host, t.shape(), t.device())?.to_dtype(t.dtype())?)
    }
    /// Rank `root`'s `t` on every rank (same shape, dtype and device); host-staged by default.
    fn broadcast_tensor(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if self.world_size() == 1 {
            return Ok(t.clone());
        }
        let mut host = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        self.broadcast(&mut host, root)?;
        Ok(Tensor::from_vec(host, t.shape(), t.device())?.to_dtype(t.dtype())?)
    }
    /// Ranks of this job on this machine (for dividing its cores between them).
    fn local_size(&self) -> usize {
        1
    }
    /// This rank's index among the ranks on its machine: the GPU it takes.
    fn local_rank(&self) -> usize {
        0
    }
    /// Ends the whole job (every rank) with exit code `code`: what a rank that failed calls, so
    /// that the others do not wait for it forever.
    fn abort(&self, code: i32) {
        std::process::exit(code)
    }
}

/// One process: rank 0 of 1.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _buf: &mut [f32], root: usize) -> Result<()> {
        check_root("broadcast", root, 1)
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// Refuses a root outside a world of `world` ranks, naming the collective `op`.
pub(crate) fn check_root(op: &'static str, root: usize, world: usize) -> Result<()> {
    if root >= world {
        return Err(DistError::Misuse {
            op,
            problem: format!("root {root} in a world of {world}"),
        });
    }
    Ok(())
}

/// The world size an MPI (or PMI) launcher gave this process, if any: `(variable, rank, size)`.
pub fn launcher_world() -> Option<(&'static str, usize, usize)> {
    [
        ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
        ("PMI_SIZE", "PMI_RANK"),
        ("PMIX_SIZE", "PMIX_RANK"),
    ]
    .into_iter()
    .find_map(|(size, rank)| {
        let s = std::env::var(size).ok()?.parse::<usize>().ok()?;
        let r = std::env::var(rank)
            .ok()
            .and_then(|r| r.parse::<usize>().ok())
            .unwrap_or(0);
        Some((size, r, s))
    })
}

/// The collective for this process: MPI when built with the `mpi` feature (a plain start is then
/// a world of 1), else a single process — or [`DistError::NoMpi`] when an MPI launcher started
/// several ranks of a build without MPI.
pub fn from_environment() -> Result<Box<dyn Collective>> {
    #[cfg(feature = "nccl")]
    {
        // A world of 1 without a usable GPU (a plain start on a CPU machine) goes on with MPI's
        // trivial collective; with several ranks every rank must have its GPU, or the job stops.
        match Nccl::initialize(Mpi::initialize()?) {
            Ok(nccl) => Ok(Box::new(nccl)),
            Err((_, mpi)) if mpi.world_size() == 1 => Ok(Box::new(mpi)),
            Err((e, _)) => Err(e),
        }
    }
    #[cfg(all(feature = "mpi", not(feature = "nccl")))]
    {
        shared_memory::on_one_machine(Mpi::initialize()?)
    }
    #[cfg(not(feature = "mpi"))]
    {
        match launcher_world() {
            Some((var, rank, size)) if size > 1 => Err(DistError::NoMpi { var, rank, size }),
            _ => Ok(Box::new(SingleProcess)),
        }
    }
}

/// Splits `n` items into `world` contiguous shares; rank `r`'s share as a range. The first
/// `n % world` ranks get one more.
pub fn share(n: usize, world: usize, r: usize) -> std::ops::Range<usize> {
    let (q, extra) = (n / world.max(1), n % world.max(1));
    let start = r * q + r.min(extra);
    start..start + q + usize::from(r < extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_everything_once_in_order() {
        for (n, w) in [(12, 2), (13, 4), (3, 5), (0, 3)] {
            let parts: Vec<_> = (0..w).map(|r| share(n, w, r)).collect();
            assert_eq!(parts.first().unwrap().start, 0);
            assert_eq!(parts.last().unwrap().end, n);
            for p in parts.windows(2) {
                assert_eq!(p[0].end, p[1].start);
                assert!(p[0].len() >= p[1].len() && p[0].len() - p[1].len() <= 1);
            }
        }
    }

    #[test]
    fn a_single_process_is_the_identity() {
        let c = SingleProcess;
        let mut x = [3.0f32, -1.0];
        c.all_reduce_sum(&mut x).unwrap();
        c.broadcast(&mut x, 0).unwrap();
        assert_eq!(x, [3.0, -1.0]);
        assert!(c.broadcast(&mut x, 1).is_err());
    }
}
