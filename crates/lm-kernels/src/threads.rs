//! Thread policy of the compute kernels: a training step runs on rayon's workers.

/// Runs `f` on one of rayon's worker threads, so that each
/// parallel kernel inside forks from a worker instead of waking the pool from outside and putting
/// the calling thread to sleep until it is done (two futex round trips per kernel call). Meanwhile
/// the other workers poll for work instead of going to sleep between kernels: a step is a few
/// hundred short parallel kernels, and a sleeping worker takes tens of µs to wake.
pub fn on_compute_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    struct Done(Arc<AtomicBool>);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    thread_local! {
        static POLLING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    /// A poller that finds no work for this long goes back to rayon (and to sleep).
    const IDLE_LIMIT: std::time::Duration = std::time::Duration::from_millis(2);
    // candle's grad mode is per thread: `f` runs under the caller's, whichever worker runs it —
    // and a worker that picks `f` up while it waits inside someone else's `no_grad` section
    // (work stealing) does not lend it that mode.
    let grad = candle_core::recompute::grad_enabled();
    rayon::scope(|_| {
        let done = Done(Arc::new(AtomicBool::new(false)));
        let (flag, owner) = (done.0.clone(), rayon::current_thread_index());
        rayon::spawn_broadcast(move |ctx| {
            // Not on the thread running `f` (it would only return once `f` has), and never
            // inside another poller: a thread can pick this job up while it waits inside a
            // job it took while polling, and that job's caller must not wait on this loop.
            if Some(ctx.index()) == owner || POLLING.with(|p| p.replace(true)) {
                return;
            }
            let mut idle_since = std::time::Instant::now();
            while !flag.load(Ordering::Acquire) && idle_since.elapsed() < IDLE_LIMIT {
                if rayon::yield_now() == Some(rayon::Yield::Executed) {
                    idle_since = std::time::Instant::now();
                } else {
                    std::hint::spin_loop();
                }
            }
            POLLING.with(|p| p.set(false));
        });
        candle_core::recompute::with_grad_mode(grad, f)
    })
}

/// Divides this machine's cores between the `local_ranks` processes of a job that run on it:
/// rayon's global pool of this process gets cores / `local_ranks` threads (at least one), unless
/// `RAYON_NUM_THREADS` says otherwise or there is one rank. For the binary that owns the process,
/// before any parallel work.
pub fn share_cores(local_ranks: usize) {
    if local_ranks > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads((cores / local_ranks).max(1))
            .build_global();
    }
}

#[cfg(test)]
mod tests {
    use super::on_compute_threads;
    use candle_core::recompute::{grad_enabled, no_grad};

    #[test]
    fn the_job_runs_under_its_callers_grad_mode() {
        assert!(on_compute_threads(grad_enabled));
        assert!(!no_grad(|| on_compute_threads(grad_enabled)));
        // Nested inside a job that turned it off, and back on after.
        let (inner, after) = on_compute_threads(|| {
            let inner = no_grad(|| on_compute_threads(grad_enabled));
            (inner, grad_enabled())
        });
        assert!(!inner && after);
    }
}
