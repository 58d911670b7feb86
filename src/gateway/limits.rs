//! The gateway's limits per API key: strict sliding windows over requests and tokens, requests in
//! flight, and a token credit. One short lock over all keys decides an admission and counts it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::config::Limits;
use super::window::{StrictWindow, WindowCheck};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Requests,
    Tokens,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Tokens => "tokens",
        }
    }
}

/// A period in gateway time: a "minute" is one window, an "hour" 60 and a "day" 1,440.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Minute,
    Hour,
    Day,
}

impl Period {
    pub const ALL: [Period; 3] = [Period::Minute, Period::Hour, Period::Day];

    pub fn name(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
        }
    }

    /// How many gateway windows the period spans.
    pub fn windows(self) -> u64 {
        match self {
            Period::Minute => 1,
            Period::Hour => 60,
            Period::Day => 1_440,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSpec {
    pub unit: Unit,
    pub period: Period,
    pub max: u64,
}

/// Where one limit stands for a key, as the `x-ratelimit-*` headers and `/v1/quota` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    pub spec: LimitSpec,
    pub remaining: u64,
    /// Until the limit is whole again.
    pub reset_ns: u64,
}

/// The tightest limit of each unit for a key: the one with the least remaining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateStatus {
    pub requests: Option<Headroom>,
    pub tokens: Option<Headroom>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A window is full; `retry_after_ns` is `None` when the cost exceeds the whole limit.
    RateLimited {
        spec: LimitSpec,
        retry_after_ns: Option<u64>,
    },
    Concurrency {
        max: u64,
    },
    InsufficientQuota {
        credit_tokens: u64,
    },
}

#[derive(Debug)]
pub enum Admission {
    Admitted { key: Arc<str>, status: RateStatus, slot: Option<ConcurrencySlot> },
    Refused { key: Arc<str>, status: RateStatus, refusal: Refusal },
}

/// A request in flight; dropping it (when the answer is done) frees the slot.
#[derive(Debug)]
pub struct ConcurrencySlot(Arc<AtomicU64>);

impl Drop for ConcurrencySlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything `/v1/quota` reports for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaReport {
    pub limits: Vec<Headroom>,
    pub concurrency: Option<u64>,
    pub in_flight: u64,
    pub credit_tokens: Option<u64>,
    pub credit_spent: u64,
}

#[derive(Debug)]
struct KeyState {
    /// The key itself, shared with the admission log rather than copied per request.
    key: Arc<str>,
    /// One per spec, in the same order.
    windows: Vec<StrictWindow>,
    in_flight: Arc<AtomicU64>,
    credit_spent: u64,
}

#[derive(Debug)]
pub struct KeyLimiter {
    specs: Vec<LimitSpec>,
    window_ns: u64,
    concurrency: Option<u64>,
    credit_tokens: Option<u64>,
    keys: Mutex<HashMap<Arc<str>, KeyState>>,
}

impl KeyLimiter {
    pub fn new(limits: &Limits, window_ns: u64) -> Self {
        let candidates = [
            (Unit::Requests, Period::Minute, limits.rpm),
            (Unit::Requests, Period::Hour, limits.rph),
            (Unit::Requests, Period::Day, limits.rpd),
            (Unit::Tokens, Period::Minute, limits.tpm),
            (Unit::Tokens, Period::Hour, limits.tph),
            (Unit::Tokens, Period::Day, limits.tpd),
        ];
        let specs = candidates
            .into_iter()
            .filter_map(|(unit, period, max)| max.map(|max| LimitSpec { unit, period, max }))
            .collect();
        Self {
            specs,
            window_ns,
            concurrency: limits.concurrency,
            credit_tokens: limits.credit_tokens,
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn new_key_state(&self, key: Arc<str>) -> KeyState {
        let windows = self
            .specs
            .iter()
            .map(|spec| StrictWindow::new(spec.max, spec.period.windows() * self.window_ns))
            .collect();
        KeyState { key, windows, in_flight: Arc::new(AtomicU64::new(0)), credit_spent: 0 }
    }

    fn with_key<T>(&self, key: &str, f: impl FnOnce(Arc<str>, &mut KeyState) -> T) -> T {
        // A panic elsewhere cannot leave the counts half-updated, so a poisoned lock is still sound.
        let mut keys = self.keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(state) = keys.get_mut(key) {
            return f(state.key.clone(), state);
        }
        let interned: Arc<str> = Arc::from(key);
        let state = keys.entry(interned.clone()).or_insert_with(|| self.new_key_state(interned.clone()));
        f(interned, state)
    }

    /// Decides a request of `tokens` for `key` arriving at `now_ns`, and counts it when admitted.
    pub fn admit(&self, key: &str, tokens: u64, now_ns: u64) -> Admission {
        self.with_key(key, |key, state| {
            let refusal = self.refusal(state, tokens, now_ns);
            if let Some(refusal) = refusal {
                let status = self.status(state, now_ns);
                return Admission::Refused { key, status, refusal };
            }
            for (spec, window) in self.specs.iter().zip(&mut state.windows) {
                window.record(now_ns, cost_of(spec.unit, tokens));
            }
            state.credit_spent += tokens;
            let slot = self.concurrency.map(|_| {
                state.in_flight.fetch_add(1, Ordering::AcqRel);
                ConcurrencySlot(state.in_flight.clone())
            });
            Admission::Admitted { key, status: self.status(state, now_ns), slot }
        })
    }

    fn refusal(&self, state: &mut KeyState, tokens: u64, now_ns: u64) -> Option<Refusal> {
        if let Some(credit_tokens) = self.credit_tokens
            && state.credit_spent + tokens > credit_tokens
        {
            return Some(Refusal::InsufficientQuota { credit_tokens });
        }
        // Of the full windows, name the one that keeps the request out longest.
        let mut worst: Option<(LimitSpec, Option<u64>)> = None;
        for (spec, window) in self.specs.iter().zip(&mut state.windows) {
            let wait = match window.check(now_ns, cost_of(spec.unit, tokens)) {
                WindowCheck::Fits => continue,
                WindowCheck::FitsIn(ns) => Some(ns),
                WindowCheck::Never => None,
            };
            let longer = match worst {
                None => true,
                Some((_, worst_wait)) => worst_wait.is_some() && wait.is_none_or(|ns| Some(ns) > worst_wait),
            };
            if longer {
                worst = Some((*spec, wait));
            }
        }
        if let Some((spec, retry_after_ns)) = worst {
            return Some(Refusal::RateLimited { spec, retry_after_ns });
        }
        match self.concurrency {
            Some(max) if state.in_flight.load(Ordering::Acquire) >= max => Some(Refusal::Concurrency { max }),
            _ => None,
        }
    }

    fn headrooms<'a>(&'a self, state: &'a mut KeyState, now_ns: u64) -> impl Iterator<Item = Headroom> + 'a {
        self.specs.iter().zip(&mut state.windows).map(move |(spec, window)| Headroom {
            spec: *spec,
            remaining: window.remaining(now_ns),
            reset_ns: window.until_empty_ns(now_ns),
        })
    }

    fn status(&self, state: &mut KeyState, now_ns: u64) -> RateStatus {
        let mut status = RateStatus::default();
        for headroom in self.headrooms(state, now_ns) {
            let tightest = match headroom.spec.unit {
                Unit::Requests => &mut status.requests,
                Unit::Tokens => &mut status.tokens,
            };
            if tightest.is_none_or(|t| headroom.remaining < t.remaining) {
                *tightest = Some(headroom);
            }
        }
        status
    }

    pub fn quota(&self, key: &str, now_ns: u64) -> QuotaReport {
        self.with_key(key, |_, state| QuotaReport {
            limits: self.headrooms(state, now_ns).collect(),
            concurrency: self.concurrency,
            in_flight: state.in_flight.load(Ordering::Acquire),
            credit_tokens: self.credit_tokens,
            credit_spent: state.credit_spent,
        })
    }
}

fn cost_of(unit: Unit, tokens: u64) -> u64 {
    match unit {
        Unit::Requests => 1,
        Unit::Tokens => tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn limiter(limits: Limits) -> KeyLimiter {
        KeyLimiter::new(&limits, 10 * SEC)
    }

    fn refusal(admission: Admission) -> Refusal {
        match admission {
            Admission::Refused { refusal, .. } => refusal,
            Admission::Admitted { .. } => panic!("expected a refusal"),
        }
    }

    fn admitted(admission: &Admission) -> bool {
        matches!(admission, Admission::Admitted { .. })
    }

    #[test]
    fn each_key_has_its_own_window() {
        let limiter = limiter(Limits { rpm: Some(2), ..Limits::default() });
        assert!(admitted(&limiter.admit("a", 0, 0)));
        assert!(admitted(&limiter.admit("a", 0, 0)));
        assert!(admitted(&limiter.admit("b", 0, 0)));
        let refused = refusal(limiter.admit("a", 0, SEC));
        let minute = LimitSpec { unit: Unit::Requests, period: Period::Minute, max: 2 };
        assert_eq!(refused, Refusal::RateLimited { spec: minute, retry_after_ns: Some(9 * SEC) });
    }

    #[test]
    fn never_admits_more_than_the_limit_in_any_window() {
        let limiter = limiter(Limits { rpm: Some(5), tpm: Some(40), ..Limits::default() });
        let mut admitted_at = Vec::new();
        for step in 0..400u64 {
            let now = step * SEC / 7;
            if admitted(&limiter.admit("k", 1 + step % 9, now)) {
                admitted_at.push((now, 1 + step % 9));
            }
        }
        for (i, &(start, _)) in admitted_at.iter().enumerate() {
            let inside: Vec<_> =
                admitted_at[i..].iter().take_while(|(at, _)| *at < start + 10 * SEC).collect();
            assert!(inside.len() <= 5, "{} requests from {start}", inside.len());
            assert!(inside.iter().map(|(_, t)| t).sum::<u64>() <= 40);
        }
        // 57 s of demand at 5 per 10 s: the full limit in each of the 5 whole windows and part of the last.
        assert!(admitted_at.len() >= 28, "too few admitted: {}", admitted_at.len());
    }

    #[test]
    fn a_cost_above_the_limit_never_passes_and_says_so() {
        let limiter = limiter(Limits { tpm: Some(100), ..Limits::default() });
        let refused = refusal(limiter.admit("k", 101, 0));
        assert!(matches!(refused, Refusal::RateLimited { retry_after_ns: None, .. }), "{refused:?}");
    }

    #[test]
    fn the_longest_wait_names_the_refusal() {
        let limiter = limiter(Limits { rpm: Some(1), rph: Some(1), ..Limits::default() });
        assert!(admitted(&limiter.admit("k", 0, 0)));
        let refused = refusal(limiter.admit("k", 0, SEC));
        let hour = LimitSpec { unit: Unit::Requests, period: Period::Hour, max: 1 };
        assert_eq!(refused, Refusal::RateLimited { spec: hour, retry_after_ns: Some(599 * SEC) });
    }

    #[test]
    fn concurrency_slot_is_freed_when_dropped() {
        let limiter = limiter(Limits { concurrency: Some(1), ..Limits::default() });
        let first = limiter.admit("k", 0, 0);
        assert_eq!(refusal(limiter.admit("k", 0, 0)), Refusal::Concurrency { max: 1 });
        drop(first);
        assert!(admitted(&limiter.admit("k", 0, 0)));
    }

    #[test]
    fn credit_runs_out_exactly() {
        let limiter = limiter(Limits { credit_tokens: Some(100), ..Limits::default() });
        assert!(admitted(&limiter.admit("k", 60, 0)));
        assert_eq!(refusal(limiter.admit("k", 41, 0)), Refusal::InsufficientQuota { credit_tokens: 100 });
        assert!(admitted(&limiter.admit("k", 40, 0)));
        assert_eq!(limiter.quota("k", 0).credit_spent, 100);
    }

    #[test]
    fn status_reports_the_tightest_limit_of_each_unit() {
        let limiter = limiter(Limits { rpm: Some(10), rph: Some(3), tpm: Some(1000), ..Limits::default() });
        let Admission::Admitted { status, .. } = limiter.admit("k", 250, 2 * SEC) else { panic!("refused") };
        let requests = status.requests.unwrap();
        assert_eq!(
            (requests.spec.period, requests.remaining, requests.reset_ns),
            (Period::Hour, 2, 600 * SEC)
        );
        let tokens = status.tokens.unwrap();
        assert_eq!((tokens.spec.max, tokens.remaining, tokens.reset_ns), (1000, 750, 10 * SEC));
    }
}
