//! When to try again: capped exponential backoff with jitter, the server's own delay when it gives one,
//! a bound on attempts and on total time, and a retry budget so a fleet does not turn an outage into a
//! retry storm.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::clock::{Clock, MonotonicClock, NS_PER_SEC};
use crate::core::error::{Error, Result};

/// How each backoff delay is randomised (the names of the AWS Architecture Blog's "Exponential Backoff
/// and Jitter"), with `exp = min(max_delay, base_delay * multiplier^(n-1))` after the n-th failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly `exp`: deterministic, for tests and docs.
    None,
    /// Uniform in `[0, exp]`: the least contention.
    Full,
    /// Uniform in `[exp/2, exp]`: never much shorter than planned.
    Equal,
    /// Uniform in `[base_delay, 3 * previous]`, capped: spreads without a fixed exponent.
    Decorrelated,
}

impl Jitter {
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "none" => Ok(Jitter::None),
            "full" => Ok(Jitter::Full),
            "equal" => Ok(Jitter::Equal),
            "decorrelated" => Ok(Jitter::Decorrelated),
            other => Err(Error::config("jitter", format!("must be none, full, equal or decorrelated, got {other:?}"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Jitter::None => "none",
            Jitter::Full => "full",
            Jitter::Equal => "equal",
            Jitter::Decorrelated => "decorrelated",
        }
    }
}

/// A retry policy's settings, all times in ns.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_delay_ns: u64,
    pub max_delay_ns: u64,
    pub multiplier: f64,
    pub jitter: Jitter,
    /// Obey the server's `retry-after` (and kin) when it is at most `max_retry_after_ns`.
    pub respect_retry_after: bool,
    pub max_retry_after_ns: u64,
    /// Total time from the first attempt, waits included: no retry starts past it, and a running
    /// attempt that can be cut (a coroutine) is cut at it.
    pub max_elapsed_ns: Option<u64>,
    /// The longest one attempt may run before it is cut (where it can be: a coroutine) and counted
    /// as a timeout.
    pub attempt_timeout_ns: Option<u64>,
    /// Retries may add at most this fraction of the first attempts over the last [`BUDGET_PERIOD_NS`].
    pub retry_budget: Option<f64>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay_ns: NS_PER_SEC,
            max_delay_ns: 60 * NS_PER_SEC,
            multiplier: 2.0,
            jitter: Jitter::Full,
            respect_retry_after: true,
            max_retry_after_ns: 120 * NS_PER_SEC,
            max_elapsed_ns: None,
            attempt_timeout_ns: None,
            retry_budget: None,
        }
    }
}

/// Why a call is not tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    MaxAttempts,
    MaxElapsed,
    RetryBudget,
}

impl GiveUp {
    /// The setting that stopped the retries, as users spell it.
    pub fn setting(self) -> &'static str {
        match self {
            GiveUp::MaxAttempts => "max_attempts",
            GiveUp::MaxElapsed => "max_elapsed",
            GiveUp::RetryBudget => "retry_budget",
        }
    }
}

/// What to do after a retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Sleep this many ns, then try again.
    Wait(u64),
    GiveUp(GiveUp),
}

/// A server delay this close to a fleet's others is spread by up to a tenth of it, within these bounds,
/// so clients told the same `Retry-After` do not all return in the same millisecond.
const SERVER_DELAY_SPREAD_MIN_NS: u64 = 10_000_000;
const SERVER_DELAY_SPREAD_MAX_NS: u64 = NS_PER_SEC;

/// A retry policy: pure decisions over its config, plus the retry budget's shared counters.
#[derive(Debug)]
pub struct RetryPolicy<C: Clock = MonotonicClock> {
    config: RetryConfig,
    budget: Option<RetryBudget>,
    clock: C,
}

/// The attempts a policy may make in all, the first included.
pub const ATTEMPTS: RangeInclusive<u32> = 1..=u32::MAX;

impl<C: Clock> RetryPolicy<C> {
    pub fn new(config: RetryConfig, clock: C) -> Result<Self> {
        if !ATTEMPTS.contains(&config.max_attempts) {
            let (got, low, high) = (config.max_attempts, ATTEMPTS.start(), ATTEMPTS.end());
            return Err(Error::config("max_attempts", format!("must be between {low} and {high}, got {got}")));
        }
        if config.max_delay_ns < config.base_delay_ns {
            return Err(Error::config("max_delay", "must be at least base_delay"));
        }
        if !(config.multiplier.is_finite() && config.multiplier >= 1.0) {
            return Err(Error::config("multiplier", format!("must be a number >= 1, got {}", config.multiplier)));
        }
        if config.max_elapsed_ns == Some(0) {
            return Err(Error::config("max_elapsed", "must be positive or None"));
        }
        if config.attempt_timeout_ns == Some(0) {
            return Err(Error::config("attempt_timeout", "must be positive or None"));
        }
        let budget = match config.retry_budget {
            None => None,
            Some(ratio) if ratio.is_finite() && ratio > 0.0 => Some(RetryBudget::new(ratio)),
            Some(ratio) => {
                return Err(Error::config("retry_budget", format!("must be a positive fraction, got {ratio}")));
            }
        };
        Ok(Self { config, budget, clock })
    }

    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    /// Marks the start of a call (its first attempt): feeds the retry budget and returns the start time
    /// to hand back to [`decide`](Self::decide).
    #[inline]
    pub fn begin(&self) -> u64 {
        let now = self.clock.now_ns();
        if let Some(budget) = &self.budget {
            budget.record_call(now);
        }
        now
    }

    /// What to do after `attempts` attempts failed retryably, the call having begun at `started_ns` and
    /// last slept `previous_delay_ns`; `server_delay_ns` is what the server asked for, if anything, and
    /// `unit` a uniform random number in `[0, 1)`. Taking a retry spends from the budget.
    pub fn decide(
        &self,
        attempts: u32,
        started_ns: u64,
        previous_delay_ns: u64,
        server_delay_ns: Option<u64>,
        unit: f64,
    ) -> RetryDecision {
        if attempts >= self.config.max_attempts {
            return RetryDecision::GiveUp(GiveUp::MaxAttempts);
        }
        let delay = self.delay_ns(attempts, previous_delay_ns, server_delay_ns, unit);
        let now = self.clock.now_ns();
        if let Some(max_elapsed) = self.config.max_elapsed_ns
            && now.saturating_sub(started_ns).saturating_add(delay) > max_elapsed
        {
            return RetryDecision::GiveUp(GiveUp::MaxElapsed);
        }
        if let Some(budget) = &self.budget
            && !budget.try_spend(now)
        {
            return RetryDecision::GiveUp(GiveUp::RetryBudget);
        }
        RetryDecision::Wait(delay)
    }

    /// How long the attempt starting now may run, for a call that began at `started_ns`: the attempt
    /// timeout, cut to what `max_elapsed` leaves of the whole call; `None` when neither is set.
    pub fn attempt_budget_ns(&self, started_ns: u64) -> Option<u64> {
        let left = self.config.max_elapsed_ns.map(|max| max.saturating_sub(self.clock.now_ns().saturating_sub(started_ns)));
        match (self.config.attempt_timeout_ns, left) {
            (Some(attempt), Some(left)) => Some(attempt.min(left)),
            (attempt, left) => attempt.or(left),
        }
    }

    /// How long the first attempt of a call begun at `started_ns` has left before it is cut: its
    /// budget (the attempt timeout, cut to `max_elapsed`) less the time since; 0 once past, `None` when
    /// neither is set. Every first attempt of a policy has the same budget, so their deadlines come in
    /// the order the calls began: one timer armed for the oldest running one can cut them all.
    pub fn first_attempt_left_ns(&self, started_ns: u64) -> Option<u64> {
        let budget = match (self.config.attempt_timeout_ns, self.config.max_elapsed_ns) {
            (Some(attempt), Some(total)) => attempt.min(total),
            (attempt, total) => attempt.or(total)?,
        };
        Some(budget.saturating_sub(self.clock.now_ns().saturating_sub(started_ns)))
    }

    /// [`decide`](Self::decide) with the jitter drawn from a thread-local generator.
    pub fn decide_randomly(
        &self,
        attempts: u32,
        started_ns: u64,
        previous_delay_ns: u64,
        server_delay_ns: Option<u64>,
    ) -> RetryDecision {
        self.decide(attempts, started_ns, previous_delay_ns, server_delay_ns, fastrand::f64())
    }

    /// The delay before the next attempt: the server's when it is usable, else the backoff.
    pub fn delay_ns(&self, attempts: u32, previous_delay_ns: u64, server_delay_ns: Option<u64>, unit: f64) -> u64 {
        match server_delay_ns {
            Some(server) if self.config.respect_retry_after && server <= self.config.max_retry_after_ns => {
                let spread = (server / 10).clamp(SERVER_DELAY_SPREAD_MIN_NS, SERVER_DELAY_SPREAD_MAX_NS);
                server.saturating_add(scale(spread, unit))
            }
            _ => self.backoff_ns(attempts, previous_delay_ns, unit),
        }
    }

    /// The backoff after the `attempts`-th failure (1-based), randomised by `unit` as the jitter says.
    pub fn backoff_ns(&self, attempts: u32, previous_delay_ns: u64, unit: f64) -> u64 {
        let c = &self.config;
        let growth = c.multiplier.powi(attempts.saturating_sub(1).min(i32::MAX as u32) as i32);
        let exp = to_ns_capped(c.base_delay_ns as f64 * growth, c.max_delay_ns);
        match c.jitter {
            Jitter::None => exp,
            Jitter::Full => scale(exp, unit),
            Jitter::Equal => exp / 2 + scale(exp - exp / 2, unit),
            Jitter::Decorrelated => {
                let previous = previous_delay_ns.max(c.base_delay_ns);
                let upper = previous.saturating_mul(3).min(c.max_delay_ns).max(c.base_delay_ns);
                c.base_delay_ns + scale(upper - c.base_delay_ns, unit)
            }
        }
    }

    /// The waits a call that always fails retryably would make, without server delays; cut where
    /// `max_elapsed` would stop it. `unit` supplies the randomness (ignored for `Jitter::None`).
    pub fn schedule(&self, mut unit: impl FnMut() -> f64) -> Vec<u64> {
        let mut delays = Vec::new();
        let mut previous = 0;
        let mut total: u64 = 0;
        for attempts in 1..self.config.max_attempts {
            let delay = self.backoff_ns(attempts, previous, unit());
            total = total.saturating_add(delay);
            if self.config.max_elapsed_ns.is_some_and(|max| total > max) {
                break;
            }
            delays.push(delay);
            previous = delay;
        }
        delays
    }

    /// [`schedule`](Self::schedule) with the jitter drawn from a thread-local generator.
    pub fn schedule_randomly(&self) -> Vec<u64> {
        self.schedule(fastrand::f64)
    }
}

/// `ns * unit` for `unit` in `[0, 1)`, never above `ns`.
fn scale(ns: u64, unit: f64) -> u64 {
    let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.0 };
    ((ns as f64 * unit) as u64).min(ns)
}

fn to_ns_capped(ns: f64, cap: u64) -> u64 {
    if ns.is_finite() && ns < cap as f64 { ns as u64 } else { cap }
}

/// The period over which the retry budget compares retries with calls, in slots of a second.
pub const BUDGET_PERIOD_NS: u64 = 10 * NS_PER_SEC;
const BUDGET_SLOTS: usize = 10;
const BUDGET_SLOT_NS: u64 = BUDGET_PERIOD_NS / BUDGET_SLOTS as u64;
/// Retries always allowed per period, so a client with little traffic can still retry at all.
pub const BUDGET_FLOOR: u64 = 10;

/// Counts calls and retries per one-second slot over the last ten seconds. Each slot is one atomic word
/// holding its second (high 32 bits) and its count (low 32 bits), so a stale slot is reset and counted
/// in one compare-and-swap. Two retries racing for the last unit of budget may both pass: the budget
/// bounds a storm, it is not a limiter.
#[derive(Debug)]
struct RetryBudget {
    ratio: f64,
    calls: [AtomicU64; BUDGET_SLOTS],
    retries: [AtomicU64; BUDGET_SLOTS],
}

impl RetryBudget {
    fn new(ratio: f64) -> Self {
        Self { ratio, calls: Default::default(), retries: Default::default() }
    }

    fn record_call(&self, now: u64) {
        bump(&self.calls, now);
    }

    fn try_spend(&self, now: u64) -> bool {
        let allowed = ((self.ratio * total(&self.calls, now) as f64) as u64).max(BUDGET_FLOOR);
        if total(&self.retries, now) >= allowed {
            return false;
        }
        bump(&self.retries, now);
        true
    }
}

fn second_of(now: u64) -> u32 {
    // Seconds since the clock's origin fit 32 bits for 136 years; wrapping is handled by `total`.
    (now / BUDGET_SLOT_NS) as u32
}

fn bump(slots: &[AtomicU64; BUDGET_SLOTS], now: u64) {
    let second = second_of(now);
    let slot = &slots[second as usize % BUDGET_SLOTS];
    let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
        let count = if (word >> 32) as u32 == second { (word as u32).saturating_add(1) } else { 1 };
        Some((u64::from(second) << 32) | u64::from(count))
    });
}

fn total(slots: &[AtomicU64; BUDGET_SLOTS], now: u64) -> u64 {
    let second = second_of(now);
    slots
        .iter()
        .map(|slot| slot.load(Ordering::Relaxed))
        .filter(|word| second.wrapping_sub((word >> 32) as u32) < BUDGET_SLOTS as u32)
        .map(|word| u64::from(word as u32))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;

    const SEC: u64 = NS_PER_SEC;
    const MS: u64 = 1_000_000;

    fn policy(config: RetryConfig) -> (RetryPolicy<ManualClock>, ManualClock) {
        let clock = ManualClock::new(1_000 * SEC);
        (RetryPolicy::new(config, clock.clone()).expect("valid config"), clock)
    }

    #[test]
    fn an_attempt_may_run_for_the_attempt_timeout_or_what_max_elapsed_leaves() {
        let both = RetryConfig { attempt_timeout_ns: Some(10 * SEC), max_elapsed_ns: Some(25 * SEC), ..RetryConfig::default() };
        let (p, clock) = policy(both);
        let started = p.begin();
        assert_eq!(p.attempt_budget_ns(started), Some(10 * SEC));
        clock.advance(20 * SEC);
        assert_eq!(p.attempt_budget_ns(started), Some(5 * SEC), "max_elapsed bounds the running attempt");
        clock.advance(10 * SEC);
        assert_eq!(p.attempt_budget_ns(started), Some(0));
        let (neither, _) = policy(RetryConfig::default());
        assert_eq!(neither.attempt_budget_ns(0), None);
    }

    #[test]
    fn a_first_attempt_has_its_budget_left_less_the_time_since_the_call_began() {
        let both = RetryConfig { attempt_timeout_ns: Some(10 * SEC), max_elapsed_ns: Some(25 * SEC), ..RetryConfig::default() };
        let (p, clock) = policy(both);
        let started = p.begin();
        assert_eq!(p.first_attempt_left_ns(started), Some(10 * SEC));
        clock.advance(4 * SEC);
        assert_eq!(p.first_attempt_left_ns(started), Some(6 * SEC));
        clock.advance(7 * SEC);
        assert_eq!(p.first_attempt_left_ns(started), Some(0), "past its deadline");
        let total_only = RetryConfig { max_elapsed_ns: Some(3 * SEC), ..RetryConfig::default() };
        let (p, clock) = policy(total_only);
        let started = p.begin();
        clock.advance(SEC);
        assert_eq!(p.first_attempt_left_ns(started), Some(2 * SEC), "max_elapsed alone bounds it");
        let (neither, _) = policy(RetryConfig::default());
        assert_eq!(neither.first_attempt_left_ns(0), None);
    }

    #[test]
    fn a_zero_attempt_timeout_is_refused() {
        let zero = RetryConfig { attempt_timeout_ns: Some(0), ..RetryConfig::default() };
        let got = RetryPolicy::new(zero, ManualClock::new(0));
        assert!(matches!(got, Err(Error::Config { field, .. }) if field == "attempt_timeout"));
    }

    fn no_jitter() -> RetryConfig {
        RetryConfig { jitter: Jitter::None, ..RetryConfig::default() }
    }

    #[test]
    fn schedule_without_jitter_doubles_up_to_the_cap() {
        let (p, _) = policy(RetryConfig { max_attempts: 9, max_delay_ns: 30 * SEC, ..no_jitter() });
        let secs: Vec<u64> = p.schedule(|| 0.5).into_iter().map(|ns| ns / SEC).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn schedule_stops_where_max_elapsed_would() {
        let (p, _) = policy(RetryConfig { max_attempts: 10, max_elapsed_ns: Some(10 * SEC), ..no_jitter() });
        assert_eq!(p.schedule(|| 0.0), [SEC, 2 * SEC, 4 * SEC]);
    }

    #[test]
    fn full_jitter_spans_zero_to_the_exponential_delay() {
        let (p, _) = policy(RetryConfig::default());
        assert_eq!(p.backoff_ns(3, 0, 0.0), 0);
        assert_eq!(p.backoff_ns(3, 0, 0.5), 2 * SEC);
        assert!(p.backoff_ns(3, 0, 0.999_999) < 4 * SEC);
    }

    #[test]
    fn equal_jitter_never_goes_below_half() {
        let (p, _) = policy(RetryConfig { jitter: Jitter::Equal, ..RetryConfig::default() });
        assert_eq!(p.backoff_ns(2, 0, 0.0), SEC);
        assert_eq!(p.backoff_ns(2, 0, 0.5), 1_500 * MS);
    }

    #[test]
    fn decorrelated_jitter_grows_from_the_previous_delay_within_the_cap() {
        let (p, _) =
            policy(RetryConfig { jitter: Jitter::Decorrelated, max_delay_ns: 10 * SEC, ..RetryConfig::default() });
        assert_eq!(p.backoff_ns(1, 0, 0.0), SEC);
        assert_eq!(p.backoff_ns(2, 2 * SEC, 0.5), 3_500 * MS);
        assert_eq!(p.backoff_ns(9, 8 * SEC, 0.5), 5_500 * MS, "3 x 8 s capped at 10 s");
    }

    #[test]
    fn huge_attempt_numbers_stay_at_the_cap() {
        let (p, _) = policy(no_jitter());
        assert_eq!(p.backoff_ns(u32::MAX, 0, 0.0), 60 * SEC);
    }

    #[test]
    fn server_delay_is_obeyed_plus_a_little_spread() {
        let (p, _) = policy(RetryConfig::default());
        assert_eq!(p.delay_ns(1, 0, Some(60 * SEC), 0.0), 60 * SEC);
        assert_eq!(p.delay_ns(1, 0, Some(60 * SEC), 0.5), 60 * SEC + 500 * MS);
        assert_eq!(p.delay_ns(1, 0, Some(0), 0.5), 5 * MS);
    }

    #[test]
    fn server_delay_beyond_max_retry_after_falls_back_to_backoff() {
        let (p, _) = policy(no_jitter());
        let years = 3 * 365 * 24 * 3600 * SEC;
        assert_eq!(p.delay_ns(2, 0, Some(years), 0.5), 2 * SEC);
        assert_eq!(p.delay_ns(2, 0, Some(u64::MAX), 0.5), 2 * SEC);
    }

    #[test]
    fn server_delay_is_ignored_when_not_respected() {
        let (p, _) = policy(RetryConfig { respect_retry_after: false, ..no_jitter() });
        assert_eq!(p.delay_ns(1, 0, Some(60 * SEC), 0.5), SEC);
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let (p, _) = policy(RetryConfig { max_attempts: 3, ..no_jitter() });
        let started = p.begin();
        assert_eq!(p.decide(2, started, SEC, None, 0.0), RetryDecision::Wait(2 * SEC));
        assert_eq!(p.decide(3, started, 2 * SEC, None, 0.0), RetryDecision::GiveUp(GiveUp::MaxAttempts));
    }

    #[test]
    fn gives_up_when_the_wait_would_pass_max_elapsed() {
        let (p, clock) = policy(RetryConfig { max_elapsed_ns: Some(10 * SEC), ..no_jitter() });
        let started = p.begin();
        clock.advance(7 * SEC);
        assert_eq!(p.decide(1, started, 0, None, 0.0), RetryDecision::Wait(SEC));
        clock.advance(SEC);
        assert_eq!(p.decide(2, started, SEC, Some(3 * SEC), 0.0), RetryDecision::GiveUp(GiveUp::MaxElapsed));
    }

    #[test]
    fn retry_budget_allows_the_floor_then_its_fraction_of_calls() {
        let (p, clock) = policy(RetryConfig { retry_budget: Some(0.1), ..no_jitter() });
        let started = p.begin();
        for _ in 0..BUDGET_FLOOR {
            assert!(matches!(p.decide(1, started, 0, None, 0.0), RetryDecision::Wait(_)));
        }
        assert_eq!(p.decide(1, started, 0, None, 0.0), RetryDecision::GiveUp(GiveUp::RetryBudget));
        for _ in 0..200 {
            p.begin();
        }
        let spent_after_calls: usize =
            (0..100).filter(|_| matches!(p.decide(1, started, 0, None, 0.0), RetryDecision::Wait(_))).count();
        assert_eq!(spent_after_calls, 10, "201 calls allow 20 retries, 10 already taken");
        clock.advance(BUDGET_PERIOD_NS);
        assert!(matches!(p.decide(1, started, 0, None, 0.0), RetryDecision::Wait(_)), "the period slid past");
    }

    #[test]
    fn budget_slots_count_only_the_last_period() {
        let slots: [AtomicU64; BUDGET_SLOTS] = Default::default();
        let t0 = 5 * SEC;
        bump(&slots, t0);
        bump(&slots, t0 + 9 * SEC);
        assert_eq!(total(&slots, t0 + 9 * SEC), 2);
        assert_eq!(total(&slots, t0 + 10 * SEC), 1);
        bump(&slots, t0 + 10 * SEC);
        assert_eq!(total(&slots, t0 + 10 * SEC), 2, "the reused slot restarted at one");
    }

    #[test]
    fn bad_config_names_its_field() {
        let cases = [
            (RetryConfig { max_attempts: 0, ..RetryConfig::default() }, "max_attempts"),
            (RetryConfig { base_delay_ns: 2 * SEC, max_delay_ns: SEC, ..RetryConfig::default() }, "max_delay"),
            (RetryConfig { multiplier: 0.5, ..RetryConfig::default() }, "multiplier"),
            (RetryConfig { multiplier: f64::NAN, ..RetryConfig::default() }, "multiplier"),
            (RetryConfig { max_elapsed_ns: Some(0), ..RetryConfig::default() }, "max_elapsed"),
            (RetryConfig { retry_budget: Some(-0.1), ..RetryConfig::default() }, "retry_budget"),
        ];
        for (config, field) in cases {
            match RetryPolicy::new(config, ManualClock::new(0)) {
                Err(Error::Config { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: expected a config error, got {other:?}"),
            }
        }
        assert!(matches!(Jitter::from_name("gaussian"), Err(Error::Config { ref field, .. }) if field == "jitter"));
    }

    proptest::proptest! {
        /// Whatever a server sends, a wait never passes what the policy allows: the backoff cap, or
        /// `max_retry_after` plus its spread.
        #[test]
        fn no_header_makes_a_wait_longer_than_the_policy_allows(
            retry_after in ".*|[0-9]{1,12}(\\.[0-9]{1,3})?|-[0-9]{1,4}",
            reset in "([0-9]{1,6}(\\.[0-9])?(h|m|s|ms|us))+|[0-9.hmsu]{0,12}",
            attempts in 1u32..1_000,
            previous in proptest::prelude::any::<u64>(),
            unit in 0.0f64..1.0,
            jitter in proptest::sample::select(vec![Jitter::None, Jitter::Full, Jitter::Equal, Jitter::Decorrelated]),
        ) {
            let (p, _) = policy(RetryConfig { jitter, max_attempts: u32::MAX, ..RetryConfig::default() });
            let headers = [("retry-after", retry_after.as_str()), ("x-ratelimit-reset-tokens", reset.as_str())];
            let server = crate::core::headers::server_delay(headers, 1_764_000_000 * SEC);
            let delay = p.delay_ns(attempts, previous, server, unit);
            let limit = p.config().max_delay_ns.max(p.config().max_retry_after_ns + SERVER_DELAY_SPREAD_MAX_NS);
            proptest::prop_assert!(delay <= limit, "{delay} ns > {limit} ns for {server:?}");
        }
    }
}
