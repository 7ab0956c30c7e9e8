//! NCCL across the GPUs of an MPI job, through cudarc.
//!
//! One launcher serves both: MPI starts the ranks and broadcasts NCCL's unique id from rank 0;
//! each rank then opens GPU `local_rank` (its rank among the ranks of its machine) and joins the
//! NCCL communicator. Barriers, aborts and the launch itself stay with MPI.
//!
//! The [`Collective`] trait takes host buffers, so every collective here copies the buffer to
//! the GPU, reduces it there with NCCL, and copies it back — three transfers over PCIe/NVLink's
//! host link per bucket. That is what the trainer's current shape (flat host gradient buckets)
//! allows; a device-resident bucket path is the next step once the trainer's gradients stay on
//! the GPU (docs/distributed.md).

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::{Comm, Id, ReduceOp};

use crate::{Collective, DistError, Mpi, Result};

/// The ranks of an MPI job, each on its own GPU, reducing with NCCL.
pub struct Nccl {
    comm: Mutex<Comm>,
    stream: Arc<CudaStream>,
    mpi: Mpi,
}

// SAFETY: the NCCL communicator is a pointer owned by the NCCL library, valid until `Comm` drops;
// every use goes through the mutex, so no two threads call NCCL on it at once (NCCL requires
// that of a communicator). The stream is cudarc's `Arc<CudaStream>`, already Send + Sync.
unsafe impl Send for Nccl {}
// SAFETY: as above: shared references only reach the communicator through the mutex.
unsafe impl Sync for Nccl {}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Nccl(rank {} of {}, GPU {})",
            self.mpi.rank(),
            self.mpi.world_size(),
            self.mpi.local_rank()
        )
    }
}

fn nccl_error(op: &'static str, e: impl std::fmt::Debug) -> DistError {
    DistError::Nccl(format!("{op}: {e:?}"))
}

impl Nccl {
    /// Joins the NCCL communicator of the MPI job `mpi` on GPU `mpi.local_rank()`. A missing
    /// driver or libnccl (which cudarc reports by panicking) becomes an error, returned with
    /// the MPI job so that the caller may go on without NCCL.
    pub fn initialize(mpi: Mpi) -> std::result::Result<Self, (DistError, Mpi)> {
        match connect(&mpi) {
            Ok((comm, stream)) => Ok(Self {
                comm: Mutex::new(comm),
                stream,
                mpi,
            }),
            Err(e) => Err((e, mpi)),
        }
    }

    /// `buf ← op(buf)` through a device copy of it.
    fn on_device<T>(
        &self,
        op: &'static str,
        buf: &mut [T],
        f: impl FnOnce(&Comm, &mut cudarc::driver::CudaSlice<T>) -> std::result::Result<(), String>,
    ) -> Result<()>
    where
        T: cudarc::driver::DeviceRepr + cudarc::nccl::NcclType,
    {
        if buf.is_empty() {
            return Ok(());
        }
        let comm = self.comm.lock().unwrap_or_else(|e| e.into_inner());
        let mut dev = self
            .stream
            .clone_htod(&*buf)
            .map_err(|e| nccl_error(op, e))?;
        f(&comm, &mut dev).map_err(|e| nccl_error(op, e))?;
        self.stream
            .memcpy_dtoh(&dev, buf)
            .map_err(|e| nccl_error(op, e))?;
        self.stream.synchronize().map_err(|e| nccl_error(op, e))
    }
}

/// Rank 0's NCCL unique id broadcast over MPI, GPU `local_rank` opened, the communicator joined.
fn connect(mpi: &Mpi) -> Result<(Comm, Arc<CudaStream>)> {
    // NCCL's unique id is 128 bytes; MPI carries it as 32 f32 bit patterns (a broadcast
    // copies bytes, so every pattern, NaNs included, arrives unchanged).
    let id = if mpi.rank() == 0 {
        Some(guarded("unique id", Id::new)?)
    } else {
        None
    };
    let mut words = [0f32; 32];
    if let Some(id) = &id {
        for (w, bytes) in words.iter_mut().zip(id.internal().chunks_exact(4)) {
            *w = f32::from_bits(u32::from_le_bytes([
                bytes[0] as u8,
                bytes[1] as u8,
                bytes[2] as u8,
                bytes[3] as u8,
            ]));
        }
    }
    mpi.broadcast(&mut words, 0)?;
    let mut internal = [0 as std::ffi::c_char; 128];
    for (bytes, w) in internal.chunks_exact_mut(4).zip(words) {
        for (b, v) in bytes.iter_mut().zip(w.to_bits().to_le_bytes()) {
            *b = v as std::ffi::c_char;
        }
    }
    let gpu = mpi.local_rank();
    let stream = guarded("open GPU", || {
        CudaContext::new(gpu).map(|ctx| ctx.default_stream())
    })?;
    let (rank, size) = (mpi.rank(), mpi.world_size());
    let s = stream.clone();
    let comm = guarded("communicator", move || {
        Comm::from_rank(s, rank, size, Id::uninit(internal))
    })?;
    Ok((comm, stream))
}

/// Runs `f`, turning both its error and a panic of cudarc's loader into [`DistError::Nccl`].
fn guarded<T, E: std::fmt::Debug>(
    what: &'static str,
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(nccl_error(what, e)),
        Err(panic) => Err(DistError::Nccl(format!(
            "{what}: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the CUDA loader panicked".into())
        ))),
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }
    fn world_size(&self) -> usize {
        self.mpi.world_size()
    }
    fn local_size(&self) -> usize {
        self.mpi.local_size()
    }
    fn local_rank(&self) -> usize {
        self.mpi.local_rank()
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.on_device("all-reduce", buf, |c, d| {
            c.all_reduce_in_place(d, &ReduceOp::Sum)
                .map(|_| ())
                .map_err(|e| format!("{e:?}"))
        })
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.on_device("all-reduce", buf, |c, d| {
            c.all_reduce_in_place(d, &ReduceOp::Sum)
                .map(|_| ())
                .map_err(|e| format!("{e:?}"))
        })
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        crate::check_root("broadcast", root, self.world_size())?;
        self.on_device("broadcast", buf, |c, d| {
            c.broadcast_in_place(d, root as i32)
                .map(|_| ())
                .map_err(|e| format!("{e:?}"))
        })
    }
    fn reduce_sum(&self, buf: &mut [f32], root: usize) -> Result<()> {
        crate::check_root("reduce", root, self.world_size())?;
        self.on_device("reduce", buf, |c, d| {
            c.reduce_in_place(d, &ReduceOp::Sum, root as i32)
                .map(|_| ())
                .map_err(|e| format!("{e:?}"))
        })
    }
    fn barrier(&self) -> Result<()> {
        self.mpi.barrier()
    }
    fn abort(&self, code: i32) {
        self.mpi.abort(code)
    }
}
