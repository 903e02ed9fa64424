//! How the process keeps freed memory. glibc hands every freed block above its mmap threshold
//! (adjusted up to 32 MiB) back to the kernel, so a model that allocates and frees the same
//! large activations layer after layer page-faults and zeroes them afresh each time: 7% of
//! `ace eval`'s CPU time went to the kernel that way, and a full-size DiT forward and training
//! step ran 14–16% longer for it. [`keep_freed_blocks`] keeps them in the heap for reuse
//! instead; `ace` sets it at start, the benches too.

/// Serves large allocations from the heap and keeps what is freed there (up to 1 GiB at the
/// top), for commands whose working set is a repeating pattern of large tensors. Peak memory
/// stays that of the largest pattern. A no-op outside glibc.
pub fn keep_freed_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; it is called before the allocations
    // it affects and is thread-safe in glibc.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
