//! What a limiter has done beyond its permits: refusals, abandoned permits, and a histogram of the waits
//! of those who waited. Admissions are the permits taken less those abandoned, so the fast path counts
//! nothing of its own.

use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two: waits are recorded within about 6% of their value.
const STEP_BITS: usize = 4;
const STEPS: usize = 1 << STEP_BITS;
const BUCKETS: usize = 64 * STEPS;

/// A lock-free log-linear histogram of nanosecond durations.
#[derive(Debug)]
pub struct WaitHistogram {
    counts: Box<[AtomicU64]>,
}

impl Default for WaitHistogram {
    fn default() -> Self {
        Self { counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect() }
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < STEPS as u64 {
        return ns as usize;
    }
    let exponent = 63 - ns.leading_zeros() as usize;
    let step = ((ns >> (exponent - STEP_BITS)) & (STEPS as u64 - 1)) as usize;
    exponent * STEPS + step
}

/// The largest duration a bucket holds.
fn upper_bound(bucket: usize) -> u64 {
    if bucket < STEPS {
        return bucket as u64;
    }
    let (exponent, step) = (bucket / STEPS, (bucket % STEPS) as u64);
    let base = 1u64 << exponent;
    base + (step + 1) * (base >> STEP_BITS) - 1
}

impl WaitHistogram {
    pub fn record(&self, ns: u64) {
        self.counts[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The `q` quantile (0..=1) of the recorded durations plus `zeros` that waited not at all.
    pub fn quantile(&self, q: f64, zeros: u64) -> u64 {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total = zeros + counts.iter().sum::<u64>();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        if rank <= zeros {
            return 0;
        }
        let mut seen = zeros;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return upper_bound(bucket);
            }
        }
        upper_bound(BUCKETS - 1)
    }
}

/// What a limiter has done, as `stats()` shows it: the same for every backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub admitted: u64,
    pub rejected: u64,
    /// Admissions held now (taken, not yet released).
    pub in_flight: u64,
    pub waiting: u64,
    /// Admissions that had to wait.
    pub waited: u64,
    pub wait_p50_ns: u64,
    pub wait_p99_ns: u64,
}

impl Counts {
    /// The counts of `admitted` admissions, some of which waited as `waits` recorded.
    pub fn of(admitted: u64, rejected: u64, in_flight: u64, waiting: u64, waits: &WaitHistogram) -> Self {
        let waited = waits.count();
        let zeros = admitted.saturating_sub(waited);
        Self {
            admitted,
            rejected,
            in_flight,
            waiting,
            waited,
            wait_p50_ns: waits.quantile(0.50, zeros),
            wait_p99_ns: waits.quantile(0.99, zeros),
        }
    }
}

/// Counters beside a limiter's state.
#[derive(Debug, Default)]
pub struct Stats {
    /// Permits taken for requests that were then not admitted (refused by the rate, or given up).
    pub abandoned: AtomicU64,
    pub rejected: AtomicU64,
    pub waits: WaitHistogram,
    /// 429 answers seen from the server, reported by the transport.
    pub server_rejections: AtomicU64,
    /// Of `rejected`, those a budget refused.
    pub budget_refusals: AtomicU64,
    pub tokens: TokenCounters,
}

impl Stats {
    pub fn reject(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reject_by_budget(&self) {
        self.reject();
        self.budget_refusals.fetch_add(1, Ordering::Relaxed);
    }
}

/// LLM tokens as settled: estimates (or earlier counts) replaced, the real counts that replaced them,
/// and what went back where the real count was lower.
#[derive(Debug, Default)]
pub struct TokenCounters {
    reserved: AtomicU64,
    settled: AtomicU64,
    refunded: AtomicU64,
}

/// [`TokenCounters`] read at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    pub reserved: u64,
    pub settled: u64,
    pub refunded: u64,
}

impl TokenCounters {
    /// An admission counted for `counted` tokens is settled at `actual`.
    pub fn settled(&self, counted: u64, actual: u64) {
        self.reserved.fetch_add(counted, Ordering::Relaxed);
        self.settled.fetch_add(actual, Ordering::Relaxed);
        self.refunded.fetch_add(counted.saturating_sub(actual), Ordering::Relaxed);
    }

    pub fn counts(&self) -> TokenCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TokenCounts { reserved: load(&self.reserved), settled: load(&self.settled), refunded: load(&self.refunded) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_tokens_count_what_was_reserved_what_replaced_it_and_what_went_back() {
        let tokens = TokenCounters::default();
        tokens.settled(800, 300);
        tokens.settled(100, 250);
        assert_eq!(tokens.counts(), TokenCounts { reserved: 900, settled: 550, refunded: 500 });
    }

    #[test]
    fn buckets_hold_their_values() {
        for ns in [0, 1, 3, 4, 5, 7, 8, 1_000, 123_456_789, u64::MAX / 3] {
            let bucket = bucket_of(ns);
            assert!(upper_bound(bucket) >= ns, "{ns} above bucket {bucket}");
            assert!(bucket == 0 || upper_bound(bucket - 1) < ns, "{ns} belongs lower than {bucket}");
        }
    }

    #[test]
    fn quantiles_count_those_who_never_waited() {
        let histogram = WaitHistogram::default();
        for _ in 0..10 {
            histogram.record(1_000_000);
        }
        assert_eq!(histogram.quantile(0.5, 90), 0);
        let p99 = histogram.quantile(0.99, 90);
        assert!((1_000_000..1_070_000).contains(&p99), "{p99}");
        assert_eq!(histogram.quantile(0.5, 0), p99);
    }
}
