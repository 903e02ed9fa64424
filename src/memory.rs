//! How the process keeps freed memory. glibc hands every freed block above its mmap threshold
//! (adjusted up to 32 MiB) back to the kernel, so a model that allocates and frees the same
//! large activations layer after layer page-faults and zeroes them afresh each time: 7% of
//! `ace eval`'s CPU time went to the kernel that way, and a full-size DiT forward and training
//! step ran 14–16% longer for it. [`keep_freed_blocks`] keeps them in the heap for reuse
//! instead; `ace` sets it at start, the benches too. Two more ways glibc returns memory that
//! comes straight back: it trims the top of the heap once more than the trim threshold is free
//! there (all of it, not the excess), and a training step frees its 2.3 GiB of weight
//! gradients and its activations together at the top; and threads other than the main one
//! allocate from arenas of their own, whose heaps glibc unmaps whenever one falls empty
//! (whatever the threshold). Together they page-faulted 2 GiB in each full-size `USE_AMP`
//! training step (the backward pass 9.3 -> 6.0 s without). So nothing is trimmed and every
//! thread shares the main arena; [`release_freed`] returns memory where a phase is done with
//! it. The rest reads what the process uses, so that each phase of a run (loading, encoding
//! the prompts, sampling) can report its own peak.

/// Serves large allocations from the heap and keeps what is freed there, in the one arena
/// that all threads share, for commands whose working set is a repeating pattern of large
/// tensors. Peak memory stays that of the largest pattern. A no-op outside glibc.
pub fn keep_freed_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; it is called before the allocations
    // it affects and is thread-safe in glibc.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        // -1: never trim.
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Runs `f` with large blocks mapped for each allocation and unmapped when freed (glibc's
/// threshold of 32 MiB), then goes back to [`keep_freed_blocks`]: for a phase whose buffers
/// grow level by level and do not repeat (the VAE decoder going up to full resolution), where
/// keeping freed blocks only piles up ones too small for the next level.
pub fn returning_freed<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: as in `keep_freed_blocks`.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
    let out = f();
    keep_freed_blocks();
    out
}

/// Hands the free memory inside the heap back to the kernel (glibc's `malloc_trim`): after a
/// phase whose large buffers will not come back, such as encoding the prompts before the DiT
/// loads. A no-op outside glibc.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Peak resident set size of this process in bytes since start or the last
/// [`reset_peak_rss`] (Linux `VmHWM`; 0 elsewhere).
pub fn peak_rss() -> u64 {
    status_kib("VmHWM:") * 1024
}

/// Resident set size of this process in bytes now (Linux `VmRSS`; 0 elsewhere).
pub fn current_rss() -> u64 {
    status_kib("VmRSS:") * 1024
}

/// Starts a new peak for [`peak_rss`] (Linux: writing 5 to `/proc/self/clear_refs`), so that
/// each phase of a run can report its own. Does nothing where that is not possible.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Seconds and peak resident memory of one phase of a run (loading, encoding, sampling, ...).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PhaseUse {
    pub seconds: f64,
    /// Peak resident set size during the phase, MiB (0 where it cannot be read).
    pub peak_rss_mib: f64,
}

/// Runs `f` as one phase and measures it. Phases are measured one after the other, not nested
/// (each starts a new peak).
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, PhaseUse) {
    reset_peak_rss();
    let start = std::time::Instant::now();
    let out = f();
    let seconds = start.elapsed().as_secs_f64();
    let peak_rss_mib = peak_rss() as f64 / (1024.0 * 1024.0);
    (
        out,
        PhaseUse {
            seconds,
            peak_rss_mib,
        },
    )
}
