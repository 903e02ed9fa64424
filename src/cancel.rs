//! Cooperative cancellation: the binary's Ctrl-C handler raises a flag that long loops (batches,
//! sampling steps) check between units of work, so they stop cleanly without partial outputs.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks every running loop to stop at its next check.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
