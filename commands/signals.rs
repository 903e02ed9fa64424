//! SIGINT, SIGTERM and SIGHUP all ask the running command to stop cleanly
//! ([`ace::cancel`]): loops stop between units of work, temporary files are removed and the
//! exit status is 128 plus the signal's number. A second signal exits at once.

/// Installs the handler for the three signals.
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `on_signal` only performs an atomic store or `_exit`, both async-signal-safe;
        // the sigaction struct is fully initialised before use.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

extern "C" fn on_signal(signal: libc::c_int) {
    if ace::cancel::requested() {
        // SAFETY: `_exit` is async-signal-safe and ends the process without unwinding.
        unsafe { libc::_exit(128 + signal) };
    }
    ace::cancel::request_by(signal);
}
