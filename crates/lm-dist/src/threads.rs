//! Ranks as threads of one process: a [`Collective`] for testing multi-rank logic without an MPI
//! launch. Every collective is two meetings at a shared barrier: each rank leaves its buffer, then
//! each reads all of them (in rank order, so sums are the same on every rank and in every run).

use std::sync::{Arc, Barrier, Mutex};

use crate::{Collective, DistError, Result};

/// What the ranks of one group share.
#[derive(Debug)]
struct Shared {
    barrier: Barrier,
    /// Each rank's buffer of the collective in progress.
    slots: Mutex<Vec<Vec<f64>>>,
}

/// One rank of a group of threads made by [`ThreadRank::group`]; move each into its own thread.
#[derive(Debug, Clone)]
pub struct ThreadRank {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
}

impl ThreadRank {
    /// The `world` ranks of a new group, rank `r` at index `r`.
    pub fn group(world: usize) -> Vec<Self> {
        let shared = Arc::new(Shared {
            barrier: Barrier::new(world),
            slots: Mutex::new(vec![Vec::new(); world]),
        });
        (0..world)
            .map(|rank| Self {
                rank,
                world,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Runs `f` on each rank of a new group of `world`, each on its own thread; the results in
    /// rank order. A rank's panic is raised again here.
    pub fn run<T: Send>(world: usize, f: impl Fn(ThreadRank) -> T + Sync) -> Vec<T> {
        std::thread::scope(|s| {
            let handles: Vec<_> = Self::group(world)
                .into_iter()
                .map(|r| s.spawn(|| f(r)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Vec<f64>>> {
        // A rank that panicked while holding the lock leaves plain numbers behind.
        self.shared.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leaves `mine` (if any) in this rank's slot, waits for every rank, calls `read` on all the
    /// slots, and waits again so that no rank starts the next collective before all have read.
    fn meet<T>(&self, mine: Option<Vec<f64>>, read: impl FnOnce(&[Vec<f64>]) -> T) -> T {
        if let Some(mine) = mine {
            self.slots()[self.rank] = mine;
        }
        self.shared.barrier.wait();
        let out = read(&self.slots());
        self.shared.barrier.wait();
        out
    }

    fn sum(&self, op: &'static str, buf: &[f64]) -> Result<Vec<f64>> {
        let n = buf.len();
        self.meet(Some(buf.to_vec()), |slots| {
            if let Some(r) = slots.iter().position(|s| s.len() != n) {
                return Err(DistError::Misuse {
                    op,
                    problem: format!(
                        "rank {} has {} values, rank {r} has {}",
                        self.rank,
                        n,
                        slots[r].len()
                    ),
                });
            }
            Ok((0..n).map(|i| slots.iter().map(|s| s[i]).sum()).collect())
        })
    }
}

impl Collective for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        let wide: Vec<f64> = buf.iter().map(|&x| x as f64).collect();
        let sum = self.sum("all_reduce_sum", &wide)?;
        for (b, s) in buf.iter_mut().zip(sum) {
            *b = s as f32;
        }
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let sum = self.sum("all_reduce_sum_f64", buf)?;
        buf.copy_from_slice(&sum);
        Ok(())
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        crate::check_root("broadcast", root, self.world)?;
        let mine = (self.rank == root).then(|| buf.iter().map(|&x| x as f64).collect());
        let n = buf.len();
        let from_root = self.meet(mine, |slots| slots[root].clone());
        if from_root.len() != n {
            return Err(DistError::Misuse {
                op: "broadcast",
                problem: format!(
                    "root {root} sent {} values, rank {} expects {n}",
                    from_root.len(),
                    self.rank
                ),
            });
        }
        for (b, v) in buf.iter_mut().zip(from_root) {
            *b = v as f32;
        }
        Ok(())
    }
    fn reduce_sum(&self, buf: &mut [f32], root: usize) -> Result<()> {
        crate::check_root("reduce", root, self.world)?;
        let wide: Vec<f64> = buf.iter().map(|&x| x as f64).collect();
        let sum = self.sum("reduce_sum", &wide)?;
        if self.rank == root {
            for (b, s) in buf.iter_mut().zip(sum) {
                *b = s as f32;
            }
        }
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.shared.barrier.wait();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rank_gets_the_sum_and_the_roots_buffer() {
        let out = ThreadRank::run(3, |c| {
            let r = c.rank() as f32;
            // Σ_r (r + 1) = 6 and Σ_r 10r = 30, twice in a row (the slots are reused).
            let mut a = [r + 1.0, 10.0 * r];
            c.all_reduce_sum(&mut a).unwrap();
            let mut b = [r + 1.0, 10.0 * r];
            c.all_reduce_sum(&mut b).unwrap();
            let mut f = [0.5 * r as f64];
            c.all_reduce_sum_f64(&mut f).unwrap();
            let mut g = [r, r];
            c.broadcast(&mut g, 2).unwrap();
            // Σ_r (r + 1) at rank 1 only; the others keep their own.
            let mut h = [r + 1.0];
            c.reduce_sum(&mut h, 1).unwrap();
            c.barrier().unwrap();
            (a, b, f, g, h)
        });
        for (r, (a, b, f, g, h)) in out.into_iter().enumerate() {
            assert_eq!((a, b, f, g), ([6.0, 30.0], [6.0, 30.0], [1.5], [2.0, 2.0]));
            assert_eq!(h, [if r == 1 { 6.0 } else { r as f32 + 1.0 }]);
        }
    }

    #[test]
    fn buffers_of_different_lengths_are_refused() {
        let out = ThreadRank::run(2, |c| {
            let mut a = vec![1.0; 2 + c.rank()];
            c.all_reduce_sum(&mut a).is_err()
        });
        assert_eq!(out, [true, true]);
    }
}
