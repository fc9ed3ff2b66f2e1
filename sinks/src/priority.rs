//! Lowering a background thread's CPU priority.
//!
//! Where cores are short, what a client waits for — ingest's acknowledgement and the live statistics — should go
//! first, and background work (SQL queries, the archive's Parquet parts) take what is left. On Linux the nice value
//! is per thread, so a thread lowers its own.

/// Lowers the calling thread's CPU priority by `nice` (0: unchanged; the result is capped at 19). Best effort: a
/// refusal (a sandbox) leaves the thread at the process's priority, which costs fairness, not correctness, and is
/// logged with `what` (the thread's role).
pub(crate) fn lower_priority(nice: u8, what: &str) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread, no memory passed.
        let done = unsafe {
            let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let now = libc::getpriority(libc::PRIO_PROCESS, thread);
            libc::setpriority(libc::PRIO_PROCESS, thread, (now + i32::from(nice)).min(19))
        };
        if done != 0 {
            tracing::warn!(nice, error = %std::io::Error::last_os_error(), "cannot lower the CPU priority of {what}");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = what;
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The calling thread's nice value.
    fn nice_now() -> i32 {
        // SAFETY: plain system calls on the calling thread.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t) }
    }

    #[test]
    fn a_thread_lowers_its_own_priority_and_no_other() {
        let main_before = nice_now();
        let (before, after) = std::thread::spawn(|| {
            let before = nice_now();
            super::lower_priority(3, "a test thread");
            (before, nice_now())
        })
        .join()
        .expect("the thread runs");
        assert_eq!(after, (before + 3).min(19));
        assert_eq!(nice_now(), main_before, "the calling thread only");
        let unchanged = std::thread::spawn(|| {
            let before = nice_now();
            super::lower_priority(0, "a test thread");
            nice_now() == before
        });
        assert!(unchanged.join().expect("the thread runs"));
    }
}
