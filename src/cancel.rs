//! Cooperative cancellation: the binary's signal handler (SIGINT, SIGTERM, SIGHUP) records which
//! signal asked for a stop, and long loops (batches, sampling steps, training) check between
//! units of work, so they stop cleanly without partial outputs. The exit status of a stopped
//! run is 128 plus the signal's number (130, 143, 129), as a shell reports it.
//!
//! A server runs many jobs in one process and cancels them one at a time: a job's [`Token`],
//! made current on the thread that runs it ([`with_token`]), makes the same checks stop that
//! job alone.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

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

thread_local! {
    /// The token of the job this thread runs, if any.
    static CURRENT: RefCell<Option<Token>> = const { RefCell::new(None) };
}

/// Cancels one job: shared between whoever may cancel it and the thread that runs it.
#[derive(Debug, Clone, Default)]
pub struct Token(Arc<AtomicBool>);

impl Token {
    /// Asks the job to stop at its next check.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the job was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Runs `f` with `token` as this thread's job token: [`requested`] is also true on this thread
/// once the token is cancelled. The previous token comes back afterwards, even if `f` panics.
pub fn with_token<T>(token: &Token, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Token>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(token.clone())));
    f()
}

/// Whether a stop was asked for: by a signal, or through this thread's job token.
pub fn requested() -> bool {
    SIGNAL.load(Ordering::SeqCst) != 0
        || CURRENT.with(|c| c.borrow().as_ref().is_some_and(Token::is_cancelled))
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

    #[test]
    fn a_job_token_stops_only_its_own_thread() {
        let token = Token::default();
        let other = Token::default();
        with_token(&token, || {
            assert!(!requested());
            token.cancel();
            assert!(requested());
            with_token(&other, || assert!(!requested()));
            assert!(requested());
        });
        assert!(!requested());
        let t = token.clone();
        assert!(!std::thread::spawn(move || with_token(&other, requested))
            .join()
            .unwrap());
        assert!(t.is_cancelled());
    }
}
