//! Cooperative cancellation: the binary's signal handler (SIGINT, SIGTERM, SIGHUP) records which
//! signal asked for a stop, and long loops (batches, sampling steps, training) check between
//! units of work, so they stop cleanly without partial outputs. The exit status of a stopped
//! run is 128 plus the signal's number (130, 143, 129), as a shell reports it.

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal that asked for a stop; 0 while none has.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// SIGINT's number, used when a stop is asked for without a signal.
const SIGINT: i32 = 2;

/// Asks every running loop to stop at its next check (as Ctrl-C does).
pub fn request() {
    request_by(SIGINT);
}

/// Asks every running loop to stop because `signal` arrived; the first signal is kept.
/// Async-signal-safe (one atomic operation).
pub fn request_by(signal: i32) {
    let _ = SIGNAL.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    SIGNAL.load(Ordering::SeqCst) != 0
}

/// The exit status of a run stopped by the signal that asked for it (128 + its number), if one
/// did.
pub fn exit_status() -> Option<u8> {
    status_of(SIGNAL.load(Ordering::SeqCst))
}

/// 128 + `signal`, or `None` for 0 (no signal).
fn status_of(signal: i32) -> Option<u8> {
    (signal != 0).then(|| 128u8.saturating_add(signal.clamp(1, 127) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The global flag is left alone: other tests of this crate run loops that check it.
    #[test]
    fn statuses_are_128_plus_the_signal() {
        assert_eq!(status_of(0), None);
        assert_eq!(status_of(2), Some(130));
        assert_eq!(status_of(15), Some(143));
        assert_eq!(status_of(1), Some(129));
    }
}
