//! Ranks on one machine reducing through a shared memory segment: every rank copies its buffer
//! into its slot, each sums its share of the elements over all slots (a reduce-scatter), and each
//! copies the sums back (an all-gather) — memory-bandwidth work, where Open MPI's shared-memory
//! transport pipelines small fragments through its own buffers (GPT-2 small's 496 MB of gradients:
//! ≈ 0.5 s per all-reduce on 2 ranks, docs/distributed.md). NCCL and Gloo do the same within a
//! machine. MPI keeps the job's shape (ranks, barriers, f64 sums, abort); the segment carries the
//! f32 buffers.
//!
//! Synchronization: between two barriers a region of the segment has one writer and no reader,
//! or readers and no writer; the barrier (MPI's, with fences on both sides) orders the phases.

use std::sync::atomic::{fence, Ordering};

use crate::{check_root, share, Collective, Result};

/// f32 values per slot (128 KiB): buffers are reduced in chunks of this size, small enough that a
/// chunk stays in cache from one rank's copy to the other's sum.
#[cfg_attr(not(all(feature = "mpi", not(feature = "nccl"))), allow(dead_code))]
pub const SLOT_VALUES: usize = 1 << 15;

/// `world + 1` slots of [`SLOT_VALUES`] f32 values: one per rank, and one for the results.
pub(crate) struct Segment {
    base: *mut f32,
    slot: usize,
    world: usize,
    rank: usize,
    /// Owns the mapping `base` points into.
    _mapping: Box<dyn Send + Sync>,
}

// SAFETY: the segment is plain memory; which rank writes which region when is fixed by the
// barrier protocol of its methods, and a rank's methods are called by one thread at a time
// (`&mut self` is not needed because every call takes the caller's lock: see `SharedMemory`).
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

impl Segment {
    /// Bytes a segment for `world` ranks with slots of `slot` values takes.
    pub(crate) fn bytes(world: usize, slot: usize) -> usize {
        (world + 1) * slot * std::mem::size_of::<f32>()
    }

    /// A segment over `base` (at least [`Segment::bytes`] long, f32-aligned), kept alive by
    /// `mapping`.
    ///
    /// # Safety
    /// `base` must point to `Segment::bytes(world, slot)` writable bytes, aligned for f32, that
    /// stay mapped while `mapping` lives, and that only the `world` ranks' segments touch.
    pub(crate) unsafe fn new(
        base: *mut f32,
        mapping: Box<dyn Send + Sync>,
        world: usize,
        rank: usize,
        slot: usize,
    ) -> Self {
        Self {
            base,
            slot,
            world,
            rank,
            _mapping: mapping,
        }
    }

    fn region(&self, slot: usize) -> *mut f32 {
        // INVARIANT: slot ≤ world, inside the mapping (`Segment::bytes`).
        debug_assert!(slot <= self.world);
        // SAFETY: in bounds of the mapping, by the invariant.
        unsafe { self.base.add(slot * self.slot) }
    }

    /// `dst[..src.len()] ← src` for a region of the segment.
    fn put(&self, slot: usize, src: &[f32]) {
        // SAFETY: src.len() ≤ self.slot (chunks are at most that long); only this rank writes
        // this region in this phase.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.region(slot), src.len()) }
    }

    /// `dst ← region[..dst.len()]`.
    fn get(&self, slot: usize, dst: &mut [f32]) {
        // SAFETY: as `put`; nobody writes the region in this phase.
        unsafe { std::ptr::copy_nonoverlapping(self.region(slot), dst.as_mut_ptr(), dst.len()) }
    }

    /// `results[range] ← Σ_r slot_r[range]`, summed in rank order (the same order on every
    /// rank, so every rank reads the same sums).
    fn sum_share(&self, range: std::ops::Range<usize>) {
        let len = range.len();
        // SAFETY: the ranges of different ranks are disjoint (`share`), so this rank alone
        // writes `results[range]`; the slots are only read in this phase.
        let out = unsafe {
            std::slice::from_raw_parts_mut(self.region(self.world).add(range.start), len)
        };
        for r in 0..self.world {
            // SAFETY: as above; slot r is not written in this phase.
            let src = unsafe { std::slice::from_raw_parts(self.region(r).add(range.start), len) };
            if r == 0 {
                out.copy_from_slice(src);
            } else {
                for (o, x) in out.iter_mut().zip(src) {
                    *o += *x;
                }
            }
        }
    }

    /// `buf ← Σ_ranks buf` on every rank (`root` None) or on rank `root` only.
    pub(crate) fn reduce(
        &self,
        buf: &mut [f32],
        root: Option<usize>,
        barrier: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        let sync = || fenced(barrier);
        for chunk in buf.chunks_mut(self.slot) {
            self.put(self.rank, chunk);
            sync()?;
            self.sum_share(share(chunk.len(), self.world, self.rank));
            sync()?;
            if root.is_none_or(|r| r == self.rank) {
                self.get(self.world, chunk);
            }
            // Nobody overwrites a slot or the results before every rank has read them.
            sync()?;
        }
        Ok(())
    }

    /// `buf ← rank root's buf` on every rank.
    pub(crate) fn broadcast(
        &self,
        buf: &mut [f32],
        root: usize,
        barrier: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        let sync = || fenced(barrier);
        for chunk in buf.chunks_mut(self.slot) {
            if self.rank == root {
                self.put(self.world, chunk);
            }
            sync()?;
            if self.rank != root {
                self.get(self.world, chunk);
            }
            sync()?;
        }
        Ok(())
    }
}

/// `barrier()` with a full fence on each side: what one rank wrote to the segment before it is
/// seen by every rank after it.
fn fenced(barrier: &dyn Fn() -> Result<()>) -> Result<()> {
    fence(Ordering::SeqCst);
    let b = barrier();
    fence(Ordering::SeqCst);
    b
}

/// A [`Collective`] whose f32 buffers travel through a [`Segment`] and whose other calls go to
/// `inner` (barriers, f64 sums, rank and world, abort).
pub struct SharedMemory<C: Collective> {
    inner: C,
    segment: Segment,
    /// One collective at a time through the segment (the trait takes `&self`).
    lock: std::sync::Mutex<()>,
}

impl<C: Collective> std::fmt::Debug for SharedMemory<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SharedMemory(rank {} of {})",
            self.inner.rank(),
            self.inner.world_size()
        )
    }
}

impl<C: Collective> SharedMemory<C> {
    pub(crate) fn new(inner: C, segment: Segment) -> Self {
        Self {
            inner,
            segment,
            lock: std::sync::Mutex::new(()),
        }
    }

    fn locked<R>(&self, f: impl FnOnce(&Segment, &dyn Fn() -> Result<()>) -> R) -> R {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        f(&self.segment, &|| self.inner.barrier())
    }
}

impl<C: Collective> Collective for SharedMemory<C> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn local_size(&self) -> usize {
        self.inner.local_size()
    }
    fn local_rank(&self) -> usize {
        self.inner.local_rank()
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.locked(|s, barrier| s.reduce(buf, None, barrier))
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.inner.all_reduce_sum_f64(buf)
    }
    fn reduce_sum(&self, buf: &mut [f32], root: usize) -> Result<()> {
        check_root("reduce", root, self.world_size())?;
        self.locked(|s, barrier| s.reduce(buf, Some(root), barrier))
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        check_root("broadcast", root, self.world_size())?;
        self.locked(|s, barrier| s.broadcast(buf, root, barrier))
    }
    fn barrier(&self) -> Result<()> {
        self.inner.barrier()
    }
    fn abort(&self, code: i32) {
        self.inner.abort(code)
    }
}

/// The collective for MPI ranks all on one machine: [`SharedMemory`] over `mpi`, unless
/// `LM_DIST_SHARED_MEMORY=0`, the ranks span machines, or the segment cannot be made (no
/// `/dev/shm`: every rank then says nothing and goes on with MPI alone). Rank 0 creates the
/// segment's file, the others open it, and it is unlinked once all have mapped it, so nothing
/// is left behind however the job ends.
#[cfg(all(feature = "mpi", not(feature = "nccl")))]
pub fn on_one_machine(mpi: crate::Mpi) -> Result<Box<dyn Collective>> {
    let (world, rank) = (mpi.world_size(), mpi.rank());
    let off = std::env::var("LM_DIST_SHARED_MEMORY").is_ok_and(|v| v == "0");
    if world == 1 || off || mpi.local_size() != world {
        return Ok(Box::new(mpi));
    }
    // Rank 0 names the file: [made, pid, nanos low, nanos high] as f32 bit patterns.
    let mut words = [0f32; 4];
    let made = if rank == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let w = [1, std::process::id(), nanos as u32, (nanos >> 32) as u32];
        for (o, v) in words.iter_mut().zip(w) {
            *o = f32::from_bits(v);
        }
        Some(create(&path_of(&words), world))
    } else {
        None
    };
    mpi.broadcast(&mut words, 0)?;
    let path = path_of(&words);
    let mapped = match made {
        Some(m) => m,
        None => open(&path, world),
    };
    let mut failed = [f64::from(u8::from(mapped.is_err()))];
    mpi.all_reduce_sum_f64(&mut failed)?;
    mpi.barrier()?;
    if rank == 0 {
        let _ = std::fs::remove_file(&path);
    }
    match mapped {
        Ok(map) if failed[0] == 0.0 => {
            let base = map.as_mut_ptr() as *mut f32;
            // SAFETY: the mapping is Segment::bytes(world, SLOT_VALUES) long (set by rank 0,
            // checked by the others), page-aligned, shared with exactly the job's ranks, and
            // kept alive by the segment.
            let segment = unsafe { Segment::new(base, Box::new(map), world, rank, SLOT_VALUES) };
            Ok(Box::new(SharedMemory::new(mpi, segment)))
        }
        _ => Ok(Box::new(mpi)),
    }
}

#[cfg(all(feature = "mpi", not(feature = "nccl")))]
fn path_of(words: &[f32; 4]) -> std::path::PathBuf {
    let w: Vec<u32> = words.iter().map(|w| w.to_bits()).collect();
    let nanos = u64::from(w[2]) | (u64::from(w[3]) << 32);
    std::path::PathBuf::from(format!("/dev/shm/lm-dist-{}-{nanos}", w[1]))
}

#[cfg(all(feature = "mpi", not(feature = "nccl")))]
fn create(path: &std::path::Path, world: usize) -> std::io::Result<memmap2::MmapRaw> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    std::fs::File::set_len(&file, Segment::bytes(world, SLOT_VALUES) as u64)?;
    memmap2::MmapRaw::map_raw(&file)
}

#[cfg(all(feature = "mpi", not(feature = "nccl")))]
fn open(path: &std::path::Path, world: usize) -> std::io::Result<memmap2::MmapRaw> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let want = Segment::bytes(world, SLOT_VALUES) as u64;
    if file.metadata()?.len() != want {
        return Err(std::io::Error::other(format!(
            "{} is not {want} bytes long",
            path.display()
        )));
    }
    memmap2::MmapRaw::map_raw(&file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ThreadRank;

    /// Three thread ranks over one anonymous mapping with slots of 5 values: buffers of 12
    /// values go in 3 chunks, each rank sums its share of each chunk.
    #[test]
    fn thread_ranks_reduce_and_broadcast_through_a_segment() {
        let (world, slot) = (3, 5);
        let map = memmap2::MmapMut::map_anon(Segment::bytes(world, slot)).unwrap();
        let base = map.as_ptr() as usize;
        let map = std::sync::Arc::new(map);
        let out = ThreadRank::run(world, |c| {
            let r = c.rank();
            let (base, keep) = (base as *mut f32, Box::new(map.clone()));
            // SAFETY: the mapping is Segment::bytes long, page-aligned, kept alive by the Arc,
            // and touched only by these three segments.
            let seg = unsafe { Segment::new(base, keep, world, r, slot) };
            let shm = SharedMemory::new(c, seg);
            let mine: Vec<f32> = (0..12).map(|i| (i * 10 + r) as f32).collect();
            let mut all = mine.clone();
            shm.all_reduce_sum(&mut all).unwrap();
            let mut to_one = mine.clone();
            shm.reduce_sum(&mut to_one, 1).unwrap();
            let mut from_two = mine.clone();
            shm.broadcast(&mut from_two, 2).unwrap();
            assert!(shm.reduce_sum(&mut to_one.clone(), 3).is_err());
            (mine, all, to_one, from_two)
        });
        for (r, (mine, all, to_one, from_two)) in out.into_iter().enumerate() {
            // Σ_r (10i + r) = 30i + 3.
            let sum: Vec<f32> = (0..12).map(|i| (30 * i + 3) as f32).collect();
            assert_eq!(all, sum, "rank {r}");
            assert_eq!(to_one, if r == 1 { sum.clone() } else { mine }, "rank {r}");
            let two: Vec<f32> = (0..12).map(|i| (i * 10 + 2) as f32).collect();
            assert_eq!(from_two, two, "rank {r}");
        }
    }
}
