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

/// For a process that trades time for memory (a run with activation checkpointing): turns
/// transparent huge pages off for it, on Linux (`PR_SET_THP_DISABLE`; elsewhere nothing).
/// mimalloc asks for them on its arenas, and a 2 MiB page stays resident whole while any part
/// of it is in use or kept by the allocator. On GPT-2 small at 1 × 1 024 with every block
/// recomputed it took the memory above the training state from 380 to 226 MiB
/// (docs/performance.md, 2026-12-07). Freed memory is still kept ([`keep_freed_memory`]):
/// returning it too saved 60 MiB more at 1.5× the step. Call it before the training steps.
pub fn disable_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag of this process (inherited by its
    // children); a kernel without it answers an error, which leaves huge pages as they were.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Whether transparent huge pages are off for this process (Linux; `false` elsewhere).
pub fn huge_pages_disabled() -> bool {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_GET_THP_DISABLE reads a flag of this process.
    unsafe {
        libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1
    }
    #[cfg(not(target_os = "linux"))]
    false
}

#[cfg(test)]
mod tests {
    /// After the call this process has huge pages off (on Linux, where the flag exists).
    #[test]
    fn huge_pages_are_off_after_disabling_them() {
        super::disable_huge_pages();
        assert_eq!(super::huge_pages_disabled(), cfg!(target_os = "linux"));
    }
}
