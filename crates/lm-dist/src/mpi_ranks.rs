//! MPI ranks through rsmpi.

use std::sync::Mutex;

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;

use crate::{Collective, DistError, Result};

/// The ranks of an MPI job (`mpirun -np N …`); a plain start is a world of 1.
pub struct Mpi {
    /// The world communicator and the universe that finalizes MPI when dropped; calls are
    /// serialized by the lock.
    inner: Mutex<(SimpleCommunicator, Universe)>,
    rank: usize,
    size: usize,
    local: usize,
    local_rank: usize,
}

// SAFETY: MPI is initialized with `Threading::Serialized` or better, so any thread may call it
// as long as no two calls overlap; every call goes through the mutex. The handles are plain
// integers or pointers owned by the MPI library, valid for the universe's lifetime.
unsafe impl Send for Mpi {}
// SAFETY: as above: shared references only reach MPI through the mutex.
unsafe impl Sync for Mpi {}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mpi(rank {} of {})", self.rank, self.size)
    }
}

impl Mpi {
    /// Initializes MPI (once per process).
    pub fn initialize() -> Result<Self> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| DistError::Init("already initialized".into()))?;
        if threading < Threading::Serialized {
            return Err(DistError::Init(format!(
                "the MPI library offers {threading:?} threading; Serialized is needed"
            )));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let local = std::env::var("OMPI_COMM_WORLD_LOCAL_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(size);
        let local_rank = std::env::var("OMPI_COMM_WORLD_LOCAL_RANK")
            .or_else(|_| std::env::var("MPI_LOCALRANKID"))
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(rank % local.max(1));
        Ok(Self {
            inner: Mutex::new((world, universe)),
            rank,
            size,
            local,
            local_rank,
        })
    }

    fn with<R>(&self, f: impl FnOnce(&SimpleCommunicator) -> R) -> R {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&guard.0)
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.size
    }
    fn local_size(&self) -> usize {
        self.local
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        let send = buf.to_vec();
        self.with(|w| w.all_reduce_into(&send[..], buf, SystemOperation::sum()));
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let send = buf.to_vec();
        self.with(|w| w.all_reduce_into(&send[..], buf, SystemOperation::sum()));
        Ok(())
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        crate::check_root("broadcast", root, self.size)?;
        self.with(|w| w.process_at_rank(root as i32).broadcast_into(buf));
        Ok(())
    }
    fn reduce_sum(&self, buf: &mut [f32], root: usize) -> Result<()> {
        crate::check_root("reduce", root, self.size)?;
        let send = buf.to_vec();
        self.with(|w| {
            let at = w.process_at_rank(root as i32);
            if self.rank == root {
                at.reduce_into_root(&send[..], buf, SystemOperation::sum());
            } else {
                at.reduce_into(&send[..], SystemOperation::sum());
            }
        });
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.with(|w| w.barrier());
        Ok(())
    }
    fn abort(&self, code: i32) {
        self.with(|w| w.abort(code))
    }
}
