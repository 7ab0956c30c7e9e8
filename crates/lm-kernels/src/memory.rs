//! Process-wide allocator settings for training programs. A library never calls this: the
//! binary that owns the process (and chose its global allocator) decides.

/// Keeps freed tensor buffers in the process instead of returning them to the kernel, so every
/// step's fresh activations and gradients do not page-fault again (profiles of the training step
/// showed ~8% in page faults with glibc's defaults, ~10% with mimalloc's). For glibc: no mmap for
/// large blocks, no trimming. With the `mimalloc` feature (for binaries whose global allocator is
/// mimalloc): no purging of freed memory (its default returns it to the OS after 10 ms). Call once
/// at the start of the program.
pub fn keep_freed_memory() {
    #[cfg(feature = "mimalloc")]
    {
        /// `mi_option_purge_delay` in mimalloc's `mi_option_t` (mimalloc.h; the Rust bindings
        /// name the options around it but not this one).
        const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        // SAFETY: sets a process-wide allocator option; -1 means "never purge".
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Returns what the allocator holds freed to the kernel, once: for a binary that called
/// [`keep_freed_memory`], at moments when a page fault per fresh buffer costs nothing next to what
/// it is doing (a checkpoint). Without it mimalloc, never purging, takes a new segment now and then
/// and the resident set creeps up over a long run (docs/reliability.md, the soak). With the
/// `mimalloc` feature: purging allowed for the moment and the calling thread's heap collected;
/// with glibc: `malloc_trim`.
pub fn return_freed_memory() {
    #[cfg(feature = "mimalloc")]
    {
        const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        // SAFETY: process-wide allocator options and a collection of this thread's heap; both
        // are plain calls into the allocator, safe at any time.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
            libmimalloc_sys::mi_collect(true);
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        }
    }
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
    // SAFETY: malloc_trim only returns free memory at the top of glibc's heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}
