//! State that must not cross a fork. A worker forked from a process that already used Redis (gunicorn
//! `--preload`, `multiprocessing` with fork) inherits the parent's sockets, its runtime without the
//! runtime's thread, and its lease ids; each piece is kept with the id of the process that made it and
//! replaced, on first use in another process, by a fresh one.

/// A value belonging to the process that made it.
#[derive(Debug)]
pub struct PerProcess<T> {
    pid: u32,
    value: T,
}

impl<T> PerProcess<T> {
    pub fn new(value: T) -> Self {
        Self { pid: std::process::id(), value }
    }

    /// The value, first replaced by `fresh()` if this is a forked child. The inherited value is
    /// forgotten, not dropped: dropping it could write to the parent's sockets or wait for threads
    /// the child does not have.
    pub fn current(&mut self, fresh: impl FnOnce() -> T) -> &mut T {
        let pid = std::process::id();
        if self.pid != pid {
            std::mem::forget(std::mem::replace(&mut self.value, fresh()));
            self.pid = pid;
        }
        &mut self.value
    }
}
