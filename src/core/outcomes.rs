//! The recent outcomes a failure-rate breaker judges by: the last `n` calls, or the calls of the last
//! `d` seconds. Both are lock-free and record in O(1): a success on the calls window is one
//! `fetch_add` and one load, so the rate mode stays cheap on the success path.
//!
//! Counts are exact for calls recorded one after another. Under concurrency the calls window may let a
//! call overwrite the slot of one `n` calls older that has not been written yet; the failure count
//! always matches the slots (each change is counted from what the atomic operation saw), so the rate
//! is never off by more than the calls in flight, and never drifts.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Calls and failures among them, in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    pub calls: u64,
    pub failures: u64,
}

impl Tally {
    /// Whether the failures reach `rate` of the calls, counting only once `minimum_calls` were seen.
    pub fn reaches(self, rate: f64, minimum_calls: u64) -> bool {
        self.calls >= minimum_calls.max(1) && self.failures as f64 >= rate * self.calls as f64
    }
}

/// Which window a failure rate is measured over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// The last this many calls.
    Calls(u32),
    /// The calls of the last this many ns, in [`TIME_BUCKETS`] buckets.
    Time(u64),
}

/// The time window's buckets: it covers between 9/10 of its length and all of it.
pub const TIME_BUCKETS: usize = 10;

/// Recent outcomes over a [`Span`].
#[derive(Debug)]
pub enum Outcomes {
    Calls(CallWindow),
    Time(TimeWindow),
}

impl Outcomes {
    pub fn new(span: Span) -> Self {
        match span {
            Span::Calls(n) => Outcomes::Calls(CallWindow::new(n)),
            Span::Time(ns) => Outcomes::Time(TimeWindow::new(ns)),
        }
    }

    /// Records one call; the tally including it.
    #[inline]
    pub fn record(&self, failed: bool, now_ns: u64) -> Tally {
        match self {
            Outcomes::Calls(window) => window.record(failed),
            Outcomes::Time(window) => window.record(failed, now_ns),
        }
    }

    pub fn tally(&self, now_ns: u64) -> Tally {
        match self {
            Outcomes::Calls(window) => window.tally(),
            Outcomes::Time(window) => window.tally(now_ns),
        }
    }

    /// Forgets every outcome (the breaker closed again, or was reset).
    pub fn clear(&self) {
        match self {
            Outcomes::Calls(window) => window.clear(),
            Outcomes::Time(window) => window.clear(),
        }
    }
}

/// The last `n` calls as a ring of bits (1 = failed), with the failures counted beside it.
#[derive(Debug)]
pub struct CallWindow {
    size: u64,
    bits: Box<[AtomicU64]>,
    recorded: AtomicU64,
    failures: AtomicU32,
}

impl CallWindow {
    pub fn new(size: u32) -> Self {
        let size = u64::from(size.max(1));
        let words = size.div_ceil(64) as usize;
        Self {
            size,
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            recorded: AtomicU64::new(0),
            failures: AtomicU32::new(0),
        }
    }

    #[inline]
    fn record(&self, failed: bool) -> Tally {
        let index = self.recorded.fetch_add(1, Ordering::AcqRel);
        let slot = index % self.size;
        let (word, mask) = (&self.bits[(slot / 64) as usize], 1u64 << (slot % 64));
        let failures = if failed {
            if word.fetch_or(mask, Ordering::AcqRel) & mask == 0 {
                self.failures.fetch_add(1, Ordering::AcqRel) + 1
            } else {
                self.failures.load(Ordering::Acquire)
            }
        } else if word.load(Ordering::Acquire) & mask != 0 && word.fetch_and(!mask, Ordering::AcqRel) & mask != 0 {
            self.failures.fetch_sub(1, Ordering::AcqRel) - 1
        } else {
            self.failures.load(Ordering::Acquire)
        };
        Tally { calls: (index + 1).min(self.size), failures: u64::from(failures) }
    }

    fn tally(&self) -> Tally {
        let calls = self.recorded.load(Ordering::Acquire).min(self.size);
        Tally { calls, failures: u64::from(self.failures.load(Ordering::Acquire)) }
    }

    fn clear(&self) {
        for word in self.bits.iter() {
            word.store(0, Ordering::Release);
        }
        self.failures.store(0, Ordering::Release);
        self.recorded.store(0, Ordering::Release);
    }
}

/// Per-bucket counts, each bucket one word: its epoch (bits 40-63), calls (bits 20-39) and failures
/// (bits 0-19), so a stale bucket is reset and counted in one compare-and-swap. Counts saturate at
/// about a million calls per bucket.
#[derive(Debug)]
pub struct TimeWindow {
    bucket_ns: u64,
    buckets: [AtomicU64; TIME_BUCKETS],
}

const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_MASK: u64 = (1 << 24) - 1;

fn epoch_of(word: u64) -> u64 {
    word >> (2 * COUNT_BITS)
}

impl TimeWindow {
    pub fn new(length_ns: u64) -> Self {
        Self { bucket_ns: (length_ns / TIME_BUCKETS as u64).max(1), buckets: Default::default() }
    }

    fn epoch(&self, now_ns: u64) -> u64 {
        (now_ns / self.bucket_ns) & EPOCH_MASK
    }

    #[inline]
    fn record(&self, failed: bool, now_ns: u64) -> Tally {
        let epoch = self.epoch(now_ns);
        let bucket = &self.buckets[(now_ns / self.bucket_ns) as usize % TIME_BUCKETS];
        let _ = bucket.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            let (calls, failures) = if epoch_of(word) == epoch {
                ((word >> COUNT_BITS) & COUNT_MAX, word & COUNT_MAX)
            } else {
                (0, 0)
            };
            let (calls, failures) = ((calls + 1).min(COUNT_MAX), (failures + u64::from(failed)).min(COUNT_MAX));
            Some((epoch << (2 * COUNT_BITS)) | (calls << COUNT_BITS) | failures)
        });
        self.tally(now_ns)
    }

    fn tally(&self, now_ns: u64) -> Tally {
        let epoch = self.epoch(now_ns);
        self.buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Acquire))
            .filter(|&word| word != 0 && epoch.wrapping_sub(epoch_of(word)) & EPOCH_MASK < TIME_BUCKETS as u64)
            .fold(Tally::default(), |tally, word| Tally {
                calls: tally.calls + ((word >> COUNT_BITS) & COUNT_MAX),
                failures: tally.failures + (word & COUNT_MAX),
            })
    }

    fn clear(&self) {
        for bucket in &self.buckets {
            bucket.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn the_calls_window_keeps_only_the_last_n_outcomes() {
        let window = Outcomes::new(Span::Calls(4));
        for failed in [true, true, false, false] {
            window.record(failed, 0);
        }
        assert_eq!(window.tally(0), Tally { calls: 4, failures: 2 });
        assert_eq!(window.record(false, 0), Tally { calls: 4, failures: 1 }, "the oldest failure left");
        assert_eq!(window.record(true, 0), Tally { calls: 4, failures: 1 }, "a failure replaced a failure");
    }

    #[test]
    fn the_time_window_forgets_what_is_older_than_its_length() {
        let window = Outcomes::new(Span::Time(10 * SEC));
        window.record(true, 0);
        window.record(false, 5 * SEC);
        assert_eq!(window.tally(9 * SEC), Tally { calls: 2, failures: 1 });
        assert_eq!(window.tally(12 * SEC), Tally { calls: 1, failures: 0 }, "the failure at 0 s is gone");
        assert_eq!(window.tally(30 * SEC), Tally::default());
    }

    #[test]
    fn a_rate_counts_only_past_the_minimum_calls() {
        assert!(!Tally { calls: 3, failures: 3 }.reaches(0.5, 4));
        assert!(Tally { calls: 4, failures: 2 }.reaches(0.5, 4));
        assert!(!Tally { calls: 4, failures: 1 }.reaches(0.5, 4));
    }

    #[test]
    fn clearing_forgets_everything() {
        for span in [Span::Calls(3), Span::Time(SEC)] {
            let window = Outcomes::new(span);
            window.record(true, 0);
            window.clear();
            assert_eq!(window.tally(0), Tally::default());
            assert_eq!(window.record(false, 0), Tally { calls: 1, failures: 0 });
        }
    }

    #[test]
    fn threads_recording_at_once_keep_the_failures_matching_the_slots() {
        let window = std::sync::Arc::new(CallWindow::new(100));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let window = std::sync::Arc::clone(&window);
                std::thread::spawn(move || (0..10_000).for_each(|i| _ = window.record((i + t) % 3 == 0)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let set: u32 = window.bits.iter().map(|w| w.load(Ordering::Relaxed).count_ones()).sum();
        assert_eq!(window.tally().failures, u64::from(set));
    }

    proptest::proptest! {
        /// Recorded one after another, the calls window's tally is exactly that of the last n outcomes.
        #[test]
        fn the_calls_window_tallies_exactly_the_last_n(size in 1u32..130, outcomes in proptest::collection::vec(proptest::bool::ANY, 0..400)) {
            let window = CallWindow::new(size);
            for (i, &failed) in outcomes.iter().enumerate() {
                let tally = window.record(failed);
                let recent = &outcomes[(i + 1).saturating_sub(size as usize)..=i];
                proptest::prop_assert_eq!(tally, Tally { calls: recent.len() as u64, failures: recent.iter().filter(|&&f| f).count() as u64 });
            }
        }
    }
}
