//! Shadow mode: a limiter that decides every request as it would when enforcing, admits it anyway, and
//! counts what it would have held back. Its windows count what an enforcing limiter's would on the same
//! arrivals (a request it would delay at its reserved instant, one it would refuse nowhere), so its
//! counts are exactly what enforcing would have done to the rate. A wait for a concurrency slot is
//! counted but not timed: how long depends on when holders release, which admitting everyone changes.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::clock::Clock;
use crate::core::decision::Decision;
use crate::core::limit::Cost;
use crate::core::limiter::{Admission, Limiter};
use crate::core::quota::Receipt;
use crate::core::stats::WaitHistogram;

/// What a shadow limiter would have held back so far.
#[derive(Debug, Default)]
pub struct Shadow {
    /// The waits for the rate of those that would have waited.
    delays: WaitHistogram,
    delayed_ns: AtomicU64,
    slot_waits: AtomicU64,
    refused: AtomicU64,
}

/// What a shadow limiter would have held back, as `stats()` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShadowCounts {
    /// Requests that would have waited for the rate, and those waits: in all, and their quantiles.
    pub delayed: u64,
    pub delayed_total_ns: u64,
    pub delay_p50_ns: u64,
    pub delay_p99_ns: u64,
    /// Requests that would have waited for a concurrency slot (for as long as it took a holder to
    /// release one).
    pub slot_waits: u64,
    /// Requests that would have been refused: a failed `try_acquire`, a cost that never passes, a
    /// budget crossed, a wait past the caller's timeout.
    pub refused: u64,
}

impl Shadow {
    pub fn counts(&self) -> ShadowCounts {
        ShadowCounts {
            delayed: self.delays.count(),
            delayed_total_ns: self.delayed_ns.load(Ordering::Relaxed),
            delay_p50_ns: self.delays.quantile(0.50, 0),
            delay_p99_ns: self.delays.quantile(0.99, 0),
            slot_waits: self.slot_waits.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    fn delay(&self, wait_ns: u64) {
        self.delays.record(wait_ns);
        self.delayed_ns.fetch_add(wait_ns, Ordering::Relaxed);
    }
}

/// How the request asked: a try never waits, an acquire waits up to its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    Try,
    Wait { max_wait_ns: Option<u64> },
}

impl<C: Clock> Limiter<C> {
    /// Decides `cost` as the enforcing limiter would when `asked` so, counts what that would have held
    /// back, and admits it now whatever the decision.
    pub(crate) fn admit_in_shadow(&self, shadow: &Shadow, cost: Cost, asked: Asked) -> Admission {
        let now = self.now_ns();
        let mut receipt = Receipt::default();
        let slot_free = self.slots.acquire_even_if_full();
        let mut at_ns = now;
        match (slot_free, asked) {
            // Refused before the rate is asked: nothing counted there.
            (false, Asked::Try) => shadow.refuse(),
            (free, _) => {
                if !free {
                    shadow.slot_waits.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(quota) = &self.quota {
                    let latest = match asked {
                        Asked::Try => now,
                        Asked::Wait { max_wait_ns } => max_wait_ns.map_or(u64::MAX, |wait| now.saturating_add(wait)),
                    };
                    let decision = match quota.over_budget(cost, now) {
                        Some(budget) => {
                            self.alert_spent(budget, now);
                            Decision::Never { max_cost: 0 }
                        }
                        None => quota.decide(cost, now, latest, &mut receipt),
                    };
                    match decision {
                        Decision::Now => self.alert(now),
                        Decision::At(at) => {
                            at_ns = at;
                            shadow.delay(at - now);
                            self.alert(now);
                        }
                        Decision::NotBefore(_) | Decision::Never { .. } => shadow.refuse(),
                    }
                }
            }
        }
        Admission { wait_ns: 0, at_ns, receipt }
    }
}

#[cfg(test)]
mod tests {
    use crate::core::clock::{ManualClock, NS_PER_SEC as SEC};
    use crate::core::limit::{Algorithm, Cost, Limit, Unit};
    use crate::core::limiter::Limiter;

    fn limits() -> Vec<Limit> {
        vec![
            Limit::new(5.0, SEC, Unit::Requests, Algorithm::Exact, None).unwrap(),
            Limit::new(1_000.0, 10 * SEC, Unit::Tokens, Algorithm::Exact, None).unwrap(),
        ]
    }

    fn budget(usd: f64) -> Limit {
        Limit::new(usd, 3_600 * SEC, Unit::Usd, Algorithm::Exact, None).unwrap()
    }

    /// Arrivals (ms, tokens): bursts that fill the rate, token hogs, a request no limit ever passes.
    fn arrivals() -> Vec<(u64, u64)> {
        let mut arrivals: Vec<(u64, u64)> = (0..12).map(|i| (i * 50, 40)).collect();
        arrivals.extend([(700, 300), (900, 900), (950, 5_000), (2_500, 10), (2_600, 10)]);
        arrivals.extend((0..20).map(|i| (3_000 + i * 30, 20)));
        arrivals
    }

    const PRICE: f64 = 2.0;

    #[test]
    fn shadow_admits_all_and_counts_exactly_what_enforcing_held_back_on_the_same_arrivals() {
        let (enforcing_clock, shadow_clock) = (ManualClock::new(0), ManualClock::new(0));
        let enforcing = Limiter::new(limits(), None, enforcing_clock.clone()).unwrap();
        let shadow = Limiter::new(limits(), None, shadow_clock.clone()).unwrap().in_shadow();
        let (mut delayed, mut delayed_ns, mut refused) = (0, 0, 0);
        for (ms, tokens) in arrivals() {
            enforcing_clock.set(ms * 1_000_000);
            shadow_clock.set(ms * 1_000_000);
            let cost = Cost::priced(tokens, PRICE);
            // What `acquire` does: at once when free, else a reservation to wait for.
            match enforcing.try_reserve(cost) {
                Ok(Some(_)) => {}
                Ok(None) => match enforcing.reserve(cost, None, "acquire") {
                    Ok(admission) => (delayed, delayed_ns) = (delayed + 1, delayed_ns + admission.wait_ns),
                    Err(_) => refused += 1,
                },
                Err(_) => refused += 1,
            }
            let admission = shadow.try_reserve(cost).unwrap().expect("shadow admits everything");
            assert_eq!(admission.wait_ns, 0);
        }
        let counts = shadow.snapshot().shadow.expect("a shadow limiter says what it held back");
        assert!(delayed > 5 && refused >= 1, "the arrivals exercise delays ({delayed}) and refusals ({refused})");
        assert_eq!((counts.delayed, counts.delayed_total_ns, counts.refused), (delayed, delayed_ns, refused));
        assert_eq!(shadow.snapshot().counts.admitted, arrivals().len() as u64);
        assert_eq!(shadow.snapshot().windows, enforcing.snapshot().windows, "both counted the same");
    }

    #[test]
    fn a_request_that_would_cross_the_budget_is_refused_and_not_spent() {
        let lim = Limiter::new(vec![budget(0.001)], None, ManualClock::new(0)).unwrap().in_shadow();
        // 200 tokens at $2 per million: $0.0004 each; the third would cross $0.001.
        for _ in 0..3 {
            lim.try_reserve(Cost::priced(200, PRICE)).unwrap().expect("admitted in shadow");
        }
        let snapshot = lim.snapshot();
        assert_eq!(snapshot.shadow.unwrap().refused, 1);
        assert_eq!(snapshot.windows[0].remaining, 200, "micro-dollars: only the two it allows are spent");
    }

    #[test]
    fn a_try_that_would_fail_is_counted_as_refused_and_counts_nothing() {
        let clock = ManualClock::new(0);
        let lim = Limiter::new(limits(), Some(1), clock).unwrap().in_shadow();
        assert!(lim.try_acquire(Cost::request(0)).unwrap());
        assert!(lim.try_acquire(Cost::request(0)).unwrap(), "no slot left, admitted all the same");
        let snapshot = lim.snapshot();
        assert_eq!(snapshot.shadow.unwrap().refused, 1);
        assert_eq!(snapshot.windows[0].remaining, 4, "the refused try is not counted in the rate");
        assert_eq!((snapshot.counts.in_flight, snapshot.counts.admitted), (2, 2));
        lim.release().unwrap();
        lim.release().unwrap();
        assert_eq!(lim.snapshot().counts.in_flight, 0);
    }

    #[test]
    fn a_wait_for_a_slot_is_counted_and_a_wait_past_the_timeout_is_a_refusal() {
        let lim = Limiter::new(limits(), Some(1), ManualClock::new(0)).unwrap().in_shadow();
        for _ in 0..6 {
            lim.try_reserve_within(Cost::request(0), Some(SEC / 10)).unwrap();
        }
        let counts = lim.snapshot().shadow.unwrap();
        assert_eq!((counts.slot_waits, counts.delayed, counts.refused), (5, 0, 1), "the sixth waits a second");
    }
}
