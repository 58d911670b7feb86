//! What a running job has done so far, counted as it goes: read from any thread (the progress bar
//! in Python polls it) without stopping the job.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of a job; each only grows.
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests in the input.
    pub total: AtomicU64,
    /// Requests the output answered already (skipped).
    pub skipped: AtomicU64,
    /// Requests of this run answered with a line: `ok + failed`.
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Answers with status 429, retried ones included.
    pub server_429s: AtomicU64,
    /// Attempts after a request's first.
    pub retries: AtomicU64,
    /// What the requests answered cost, in micro-dollars at the price table.
    pub micro_usd: AtomicU64,
}

/// The counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub total: u64,
    pub skipped: u64,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub server_429s: u64,
    pub retries: u64,
    pub micro_usd: u64,
}

impl Progress {
    pub fn counts(&self) -> Counts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Counts {
            total: get(&self.total),
            skipped: get(&self.skipped),
            sent: get(&self.sent),
            ok: get(&self.ok),
            failed: get(&self.failed),
            server_429s: get(&self.server_429s),
            retries: get(&self.retries),
            micro_usd: get(&self.micro_usd),
        }
    }
}
