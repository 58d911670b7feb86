//! Where time comes from: monotonic nanoseconds behind a trait, so tests move time by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A source of monotonic time in nanoseconds since an origin of the clock's choosing.
pub trait Clock: Send + Sync + 'static {
    fn now_ns(&self) -> u64;
}

/// The machine's monotonic clock, counted from when this value was made. It reads the CPU's time-stamp
/// counter where that is invariant (quanta calibrates it against the OS clock once), about twice as
/// fast as `clock_gettime`, and falls back to the OS monotonic clock elsewhere.
#[derive(Debug, Clone)]
pub struct MonotonicClock {
    source: quanta::Clock,
    origin: u64,
}

impl MonotonicClock {
    pub fn new() -> Self {
        let source = quanta::Clock::new();
        let origin = source.raw();
        Self { source, origin }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        // u64 nanoseconds last 584 years from the origin.
        self.source.delta_as_nanos(self.origin, self.source.raw())
    }
}

/// A clock that moves only when told to; clones share one time, so a test holds one and the limiter another.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    pub fn new(start_ns: u64) -> Self {
        Self { now: Arc::new(AtomicU64::new(start_ns)) }
    }

    pub fn advance(&self, ns: u64) {
        self.now.fetch_add(ns, Ordering::SeqCst);
    }

    pub fn set(&self, ns: u64) {
        self.now.store(ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// Nanoseconds in one second, for the conversions at the edges.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// Seconds (as users write them) to nanoseconds, saturating; `None` for NaN, negative or infinite input.
pub fn secs_to_ns(secs: f64) -> Option<u64> {
    if secs.is_finite() && secs >= 0.0 {
        Some((secs * NS_PER_SEC as f64).min(u64::MAX as f64) as u64)
    } else {
        None
    }
}

/// Nanoseconds to seconds, for answers that leave the core.
pub fn ns_to_secs(ns: u64) -> f64 {
    ns as f64 / NS_PER_SEC as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_one_time() {
        let clock = ManualClock::new(5);
        let other = clock.clone();
        clock.advance(10);
        assert_eq!(other.now_ns(), 15);
        other.set(100);
        assert_eq!(clock.now_ns(), 100);
    }

    #[test]
    fn monotonic_clock_never_goes_back() {
        let clock = MonotonicClock::new();
        let a = clock.now_ns();
        let b = clock.now_ns();
        assert!(b >= a);
    }

    #[test]
    fn seconds_convert_and_refuse_nonsense() {
        assert_eq!(secs_to_ns(1.5), Some(1_500_000_000));
        assert_eq!(secs_to_ns(-1.0), None);
        assert_eq!(secs_to_ns(f64::NAN), None);
        assert_eq!(secs_to_ns(f64::INFINITY), None);
        assert_eq!(ns_to_secs(250_000_000), 0.25);
    }
}
