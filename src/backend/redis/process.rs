//! State that must not cross a fork. A worker forked from a process that already used Redis (gunicorn
//! `--preload`, `multiprocessing` with fork) inherits the parent's sockets, its runtime without the
//! runtime's thread, and its lease ids; each piece is kept with the id of the process that made it and
//! replaced, on first use in another process, by a fresh one.
//!
//! Every decision asks which process it runs in several times, and `getpid` is a system call (about
//! 0.25 µs on a virtual machine), so the id is kept once and forgotten in a forked child.

use std::sync::atomic::{AtomicU32, Ordering};

/// This process's id, 0 until it is first asked for (and again in a child just forked).
static PROCESS_ID: AtomicU32 = AtomicU32::new(0);

/// The id of the process running now, without a system call after the first. A child made by
/// `fork()` (`os.fork`, `multiprocessing`) asks the system again: `pthread_atfork` clears the kept
/// id in it before `fork()` returns there.
pub fn id() -> u32 {
    match PROCESS_ID.load(Ordering::Relaxed) {
        0 => {
            forget_in_forked_children();
            let pid = std::process::id();
            PROCESS_ID.store(pid, Ordering::Relaxed);
            pid
        }
        pid => pid,
    }
}

#[cfg(unix)]
fn forget_in_forked_children() {
    extern "C" fn forked_child() {
        PROCESS_ID.store(0, Ordering::Relaxed);
    }
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a handler that only stores to an atomic, which is async-signal-safe, as a
    // child of a multithreaded process requires.
    REGISTERED.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(forked_child));
    });
}

#[cfg(not(unix))]
fn forget_in_forked_children() {}

/// A value belonging to the process that made it.
#[derive(Debug)]
pub struct PerProcess<T> {
    pid: u32,
    value: T,
}

impl<T> PerProcess<T> {
    pub fn new(value: T) -> Self {
        Self { pid: id(), value }
    }

    /// The value, first replaced by `fresh()` if this is a forked child. The inherited value is
    /// forgotten, not dropped: dropping it could write to the parent's sockets or wait for threads
    /// the child does not have.
    pub fn current(&mut self, fresh: impl FnOnce() -> T) -> &mut T {
        let pid = id();
        if self.pid != pid {
            std::mem::forget(std::mem::replace(&mut self.value, fresh()));
            self.pid = pid;
        }
        &mut self.value
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::id;

    #[test]
    fn a_forked_child_knows_its_own_id() {
        assert_eq!(id(), std::process::id());
        // SAFETY: the child only reads its id, compares and exits, all async-signal-safe once the
        // parent has kept its id (the handler is registered then).
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let own = unsafe { libc::getpid() } as u32;
            unsafe { libc::_exit(if id() == own { 0 } else { 1 }) };
        }
        let mut status = 0;
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child saw its parent's id");
        assert_eq!(id(), std::process::id());
    }
}
