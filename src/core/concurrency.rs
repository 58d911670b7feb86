//! Concurrency permits: at most `max` held at once. Two monotonic counters (acquired, released) instead of
//! one level, so a release can be checked against the acquisitions and one compare-and-swap takes a permit.
//! Without a bound nothing is held: acquisitions are only counted, and a release does nothing.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::error::{Error, Result};

#[derive(Debug)]
pub struct Concurrency {
    max: u64,
    acquired: AtomicU64,
    released: AtomicU64,
}

impl Concurrency {
    /// At most `max` permits at once; `None` counts acquisitions and holds nothing.
    pub fn new(max: Option<u64>) -> Result<Self> {
        if max == Some(0) {
            return Err(Error::config("max_concurrency", "must be at least 1, got 0"));
        }
        Ok(Self { max: max.unwrap_or(u64::MAX), acquired: AtomicU64::new(0), released: AtomicU64::new(0) })
    }

    /// The bound, or `None` when unbounded.
    pub fn max(&self) -> Option<u64> {
        (self.max != u64::MAX).then_some(self.max)
    }

    /// Takes a permit if one is free.
    #[inline]
    pub fn try_acquire(&self) -> bool {
        if self.max == u64::MAX {
            self.acquired.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        let mut acquired = self.acquired.load(Ordering::Acquire);
        loop {
            // Read `released` after `acquired`: it only grows, so the difference can only overstate
            // the permits held when the swap below succeeds. A stale `acquired` may lag behind it;
            // then the swap fails and we read again.
            if acquired.saturating_sub(self.released.load(Ordering::Acquire)) >= self.max {
                return false;
            }
            match self.acquired.compare_exchange_weak(acquired, acquired + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(current) => acquired = current,
            }
        }
    }

    /// Takes a permit even past the bound (shadow mode, which admits everyone); whether one was free.
    pub fn acquire_even_if_full(&self) -> bool {
        let acquired = self.acquired.fetch_add(1, Ordering::AcqRel);
        acquired.saturating_sub(self.released.load(Ordering::Acquire)) < self.max
    }

    /// Returns a permit; refuses to return one that was never taken. Unbounded, there is none to return.
    #[inline]
    pub fn release(&self) -> Result<()> {
        if self.max == u64::MAX {
            return Ok(());
        }
        let mut released = self.released.load(Ordering::Acquire);
        loop {
            if released >= self.acquired.load(Ordering::Acquire) {
                return Err(Error::unmatched_release());
            }
            match self.released.compare_exchange_weak(released, released + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(current) => released = current,
            }
        }
    }

    /// Permits held now; none without a bound.
    pub fn in_use(&self) -> u64 {
        if self.max == u64::MAX {
            return 0;
        }
        let released = self.released.load(Ordering::Acquire);
        self.acquired.load(Ordering::Acquire) - released
    }

    /// Permits ever taken.
    pub fn acquired(&self) -> u64 {
        self.acquired.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn holds_at_most_max_permits() {
        let slots = Concurrency::new(Some(2)).unwrap();
        assert!(slots.try_acquire() && slots.try_acquire());
        assert!(!slots.try_acquire());
        slots.release().unwrap();
        assert!(slots.try_acquire());
        assert_eq!((slots.in_use(), slots.acquired()), (2, 3));
    }

    #[test]
    fn refuses_a_release_without_an_acquire() {
        let slots = Concurrency::new(Some(2)).unwrap();
        assert!(matches!(slots.release(), Err(Error::Config { .. })));
    }

    #[test]
    fn without_a_bound_nothing_is_held_and_a_release_does_nothing() {
        let slots = Concurrency::new(None).unwrap();
        assert!(slots.try_acquire() && slots.try_acquire());
        slots.release().unwrap();
        slots.release().unwrap();
        slots.release().unwrap();
        assert_eq!((slots.in_use(), slots.acquired()), (0, 2));
    }

    #[test]
    fn zero_permits_is_a_config_error() {
        assert!(matches!(Concurrency::new(Some(0)), Err(Error::Config { field, .. }) if field == "max_concurrency"));
    }

    #[test]
    fn threads_never_hold_more_than_max() {
        let slots = Arc::new(Concurrency::new(Some(3)).unwrap());
        let (holding, peak) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (slots, holding, peak) = (Arc::clone(&slots), Arc::clone(&holding), Arc::clone(&peak));
                thread::spawn(move || {
                    for _ in 0..20_000 {
                        if slots.try_acquire() {
                            let now_holding = holding.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now_holding, Ordering::SeqCst);
                            holding.fetch_sub(1, Ordering::SeqCst);
                            slots.release().unwrap();
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert!(peak.load(Ordering::Relaxed) <= 3);
        assert_eq!(slots.in_use(), 0);
    }
}
