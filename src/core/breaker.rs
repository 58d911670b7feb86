//! A circuit breaker: closed → open when the service looks down, open (failing fast) for
//! `recovery_timeout` (or as long as the server said in `Retry-After`), then half-open letting
//! `half_open_max_calls` trial calls through, closed again when all of them succeed and open again on
//! the first that fails.
//!
//! What opens it, any of:
//! - `failure_threshold` consecutive failures (the default, 5). LLM traffic is slow and bursty (a few
//!   calls a second, each taking seconds), so a rate needs a minimum volume that a quiet client never
//!   reaches, while any success between failures already proves the gateway is answering;
//! - a failure rate (resilience4j's rule): failures reach `failure_rate` of the last `window` calls (or
//!   of the calls of the last `window` seconds) once `minimum_calls` were seen (`outcomes.rs`);
//! - one failure that says how long the service will be away (a 503 with `Retry-After`): open that long;
//! - `isolate()`, until `reset()`.
//!
//! A call slower than `slow_call` counts as a failure even when it succeeds.
//!
//! The whole state is one `AtomicU64` changed by compare-and-swap, so counts are exact under any
//! concurrency and the closed success path is a load. Each admitted call carries a [`Permit`] naming the
//! generation (one per state change) it was admitted in; a result from an older generation is stale and
//! changes nothing, so a slow call from before an outage cannot close a half-open breaker, and giving
//! back a cancelled trial frees exactly the trial slot it took.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::clock::{Clock, MonotonicClock, NS_PER_SEC, ns_to_secs};
use crate::core::error::{Error, Result};
use crate::core::outcomes::{Outcomes, Span};

const NS_PER_MS: u64 = 1_000_000;
const NS_PER_US: u64 = 1_000;

/// The breaker's states, as Python spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// A state change, reported to whoever caused it so it can be announced once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
}

/// Leave to make one call; hand it back with the call's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permit {
    pub generation: u16,
    /// Set when admitting this call moved the breaker from open to half-open.
    pub opened_trials: bool,
    /// Admitted as a half-open trial.
    pub trial: bool,
    /// Which breaker issued it, for a wrapper that keeps several (a fleet's and its local fallback's);
    /// 0 to 3, never read by the breaker itself.
    pub source: u8,
    /// When the call started, in µs of the breaker's clock modulo 2^43; kept only when slow calls
    /// count (0 otherwise).
    pub started_us: u64,
}

const STARTED_BITS: u32 = 43;
const STARTED_MASK: u64 = (1 << STARTED_BITS) - 1;

impl Permit {
    /// The permit as one integer, for callers that carry it across a language boundary: bit 0
    /// `opened_trials`, bit 1 `trial`, bits 2-3 `source`, bits 4-19 the generation, bits 20-62 the start.
    pub fn to_bits(self) -> u64 {
        u64::from(self.opened_trials)
            | (u64::from(self.trial) << 1)
            | (u64::from(self.source & 3) << 2)
            | (u64::from(self.generation) << 4)
            | ((self.started_us & STARTED_MASK) << 20)
    }

    pub fn from_bits(bits: u64) -> Self {
        Self {
            opened_trials: bits & 1 == 1,
            trial: bits & 2 == 2,
            source: ((bits >> 2) & 3) as u8,
            generation: (bits >> 4) as u16,
            started_us: (bits >> 20) & STARTED_MASK,
        }
    }
}

/// Open on a failure rate: failures reach `threshold` (a fraction) of the calls in `span`, once
/// `minimum_calls` were seen there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateRule {
    pub threshold: f64,
    pub span: Span,
    pub minimum_calls: u32,
}

/// A breaker's settings, times in ns.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub name: String,
    /// Consecutive failures that open it; `None`: only the failure rate does.
    pub failure_threshold: Option<u32>,
    pub recovery_timeout_ns: u64,
    pub half_open_max_calls: u32,
    pub failure_rate: Option<RateRule>,
    /// A call that took longer counts as a failure.
    pub slow_call_ns: Option<u64>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            name: "default".into(),
            failure_threshold: Some(5),
            recovery_timeout_ns: 30 * NS_PER_SEC,
            half_open_max_calls: 3,
            failure_rate: None,
            slow_call_ns: None,
        }
    }
}

/// Totals since the breaker was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub successes: u64,
    pub failures: u64,
    /// Calls that succeeded too slowly, counted among the failures.
    pub slow_calls: u64,
    pub rejected: u64,
    pub times_opened: u64,
}

/// The state word: state in bits 0-1, generation in bits 2-17, and a 46-bit payload: the consecutive
/// failures when closed; the end of the open period in ms of the clock when open ([`ISOLATED`]: until
/// reset); trials admitted (low 16 bits) and trials succeeded (next 16 bits) when half-open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word(u64);

const HALF_OPEN_COUNT_MASK: u64 = 0xFFFF;
const PAYLOAD_MAX: u64 = (1 << 46) - 1;
/// The open payload of a breaker isolated by hand.
const ISOLATED: u64 = PAYLOAD_MAX;

/// The consecutive failures that may open a breaker.
pub const FAILURE_THRESHOLD: RangeInclusive<u32> = 1..=u32::MAX;
/// The trial calls a half-open breaker may let through: as many as its state word counts.
pub const HALF_OPEN_CALLS: RangeInclusive<u32> = 1..=HALF_OPEN_COUNT_MASK as u32;
/// The calls a failure-rate window may hold (a bit each).
pub const WINDOW_CALLS: RangeInclusive<u32> = 1..=1_000_000;
/// The calls a failure rate needs before it counts.
pub const MINIMUM_CALLS: RangeInclusive<u32> = 1..=u32::MAX;
/// The longest a server's `Retry-After` keeps the breaker open, unless `recovery_timeout` is longer:
/// a server (or a proxy) saying "a day" should not stop a client for a day.
pub const SERVER_OPEN_MAX_NS: u64 = 600 * NS_PER_SEC;
/// How soon a call refused by a half-open breaker (its trials all out) may look again: the trials'
/// results decide, and they may come at any moment.
pub const HALF_OPEN_RETRY_NS: u64 = NS_PER_SEC;

impl Word {
    fn new(state: State, generation: u16, payload: u64) -> Self {
        let state_bits = match state {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        };
        Word(state_bits | (u64::from(generation) << 2) | (payload.min(PAYLOAD_MAX) << 18))
    }

    fn state(self) -> State {
        match self.0 & 0b11 {
            0 => State::Closed,
            1 => State::Open,
            _ => State::HalfOpen,
        }
    }

    fn generation(self) -> u16 {
        (self.0 >> 2) as u16
    }

    fn payload(self) -> u64 {
        self.0 >> 18
    }

    fn isolated(self) -> bool {
        self.state() == State::Open && self.payload() == ISOLATED
    }

    fn trials(self) -> (u64, u64) {
        (self.payload() & HALF_OPEN_COUNT_MASK, (self.payload() >> 16) & HALF_OPEN_COUNT_MASK)
    }

    /// The same state with a new payload.
    fn with_payload(self, payload: u64) -> Self {
        Word::new(self.state(), self.generation(), payload)
    }

    /// The next state, in the next generation.
    fn next(self, state: State, payload: u64) -> Self {
        Word::new(state, self.generation().wrapping_add(1), payload)
    }
}

fn half_open_payload(admitted: u64, succeeded: u64) -> u64 {
    admitted | (succeeded << 16)
}

fn check_range(field: &str, got: u32, range: RangeInclusive<u32>) -> Result<()> {
    if range.contains(&got) {
        return Ok(());
    }
    let (low, high) = (range.start(), range.end());
    Err(Error::config(field, format!("must be between {low} and {high}, got {got}")))
}

/// A circuit breaker on an injected clock.
#[derive(Debug)]
pub struct CircuitBreaker<C: Clock = MonotonicClock> {
    config: BreakerConfig,
    word: AtomicU64,
    outcomes: Option<Outcomes>,
    successes: AtomicU64,
    failures: AtomicU64,
    slow_calls: AtomicU64,
    rejected: AtomicU64,
    times_opened: AtomicU64,
    clock: C,
}

impl<C: Clock> CircuitBreaker<C> {
    pub fn new(mut config: BreakerConfig, clock: C) -> Result<Self> {
        if let Some(threshold) = config.failure_threshold {
            check_range("failure_threshold", threshold, FAILURE_THRESHOLD)?;
        }
        check_range("half_open_max_calls", config.half_open_max_calls, HALF_OPEN_CALLS)?;
        if let Some(rule) = &mut config.failure_rate {
            if !(rule.threshold > 0.0 && rule.threshold <= 1.0) {
                let got = rule.threshold;
                return Err(Error::config("failure_rate", format!("must be a fraction in (0, 1], e.g. 0.5 for 50%, got {got}")));
            }
            check_range("minimum_calls", rule.minimum_calls, MINIMUM_CALLS)?;
            match rule.span {
                Span::Calls(calls) => {
                    check_range("window", calls, WINDOW_CALLS)?;
                    // As resilience4j does: a window smaller than the minimum judges once it is full.
                    rule.minimum_calls = rule.minimum_calls.min(calls);
                }
                Span::Time(0) => return Err(Error::config("window_s", "must be more than 0 seconds")),
                Span::Time(_) => {}
            }
        } else if config.failure_threshold.is_none() {
            return Err(Error::config("failure_threshold", "give failure_threshold, failure_rate or both"));
        }
        if config.slow_call_ns == Some(0) {
            return Err(Error::config("slow_call_s", "must be more than 0 seconds, or None"));
        }
        Ok(Self {
            outcomes: config.failure_rate.map(|rule| Outcomes::new(rule.span)),
            config,
            word: AtomicU64::new(Word::new(State::Closed, 0, 0).0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            slow_calls: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            times_opened: AtomicU64::new(0),
            clock,
        })
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Admits a call, or refuses it with `Error::CircuitOpen` while open (or while half-open with all
    /// trial slots taken).
    #[inline]
    pub fn allow(&self) -> Result<Permit> {
        match self.allow_closed() {
            Some(permit) => Ok(permit),
            None => self.allow_slow(Word(self.word.load(Ordering::Acquire))),
        }
    }

    /// [`allow`](Self::allow) while closed, the success path: `None` when the breaker is not closed,
    /// and `allow` must decide. An `Option<Permit>` comes back in registers where a `Result` with its
    /// error goes through memory (on the Python decorator's path, a tenth of the call's time).
    #[inline]
    pub fn allow_closed(&self) -> Option<Permit> {
        let word = Word(self.word.load(Ordering::Acquire));
        (word.state() == State::Closed).then(|| self.permit(word.generation(), false, false))
    }

    /// A permit of `generation`, stamped with the start when slow calls count.
    #[inline]
    fn permit(&self, generation: u16, opened_trials: bool, trial: bool) -> Permit {
        let started_us = if self.config.slow_call_ns.is_some() { self.clock.now_ns() / NS_PER_US } else { 0 };
        Permit { generation, opened_trials, trial, source: 0, started_us: started_us & STARTED_MASK }
    }

    fn allow_slow(&self, mut word: Word) -> Result<Permit> {
        loop {
            let (next, permit) = match word.state() {
                State::Closed => return Ok(self.permit(word.generation(), false, false)),
                State::Open if word.isolated() => return Err(self.reject(u64::MAX)),
                State::Open => {
                    let now = self.clock.now_ns();
                    let reopen_at = word.payload().saturating_mul(NS_PER_MS);
                    if now < reopen_at {
                        return Err(self.reject(reopen_at - now));
                    }
                    let next = word.next(State::HalfOpen, half_open_payload(1, 0));
                    (next, self.permit(next.generation(), true, true))
                }
                State::HalfOpen => {
                    let (admitted, succeeded) = word.trials();
                    if admitted >= u64::from(self.config.half_open_max_calls) {
                        return Err(self.reject(HALF_OPEN_RETRY_NS.min(self.config.recovery_timeout_ns)));
                    }
                    let next = word.with_payload(half_open_payload(admitted + 1, succeeded));
                    (next, self.permit(word.generation(), false, true))
                }
            };
            match self.word.compare_exchange_weak(word.0, next.0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(permit),
                Err(actual) => word = Word(actual),
            }
        }
    }

    /// `retry_after_ns` is `u64::MAX` for a breaker isolated by hand.
    fn reject(&self, retry_after_ns: u64) -> Error {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let name = &self.config.name;
        let message = if retry_after_ns == u64::MAX {
            format!("circuit {name:?} is isolated: failing fast until reset()")
        } else {
            format!("circuit {name:?} is open: failing fast for another {:.3} s", ns_to_secs(retry_after_ns))
        };
        Error::CircuitOpen { message, retry_after_ns }
    }

    /// Whether the call of `permit` (stamped when admitted) took longer than `slow_call`.
    pub fn is_slow(&self, permit: Permit) -> bool {
        self.config.slow_call_ns.is_some_and(|slow| {
            let now_us = self.clock.now_ns() / NS_PER_US;
            let took_us = now_us.wrapping_sub(permit.started_us) & STARTED_MASK;
            took_us.saturating_mul(NS_PER_US) > slow
        })
    }

    /// The call succeeded (or the service answered): ends a failure streak, or counts a trial. A call
    /// slower than `slow_call` counts as a failure instead.
    #[inline]
    pub fn record_success(&self, permit: Permit) -> Option<Transition> {
        if self.config.slow_call_ns.is_some() && self.is_slow(permit) {
            self.slow_calls.fetch_add(1, Ordering::Relaxed);
            return self.record_failure(permit, None);
        }
        self.successes.fetch_add(1, Ordering::Relaxed);
        let word = Word(self.word.load(Ordering::Acquire));
        if word.generation() != permit.generation {
            return None;
        }
        if word.state() == State::Closed {
            if let Some(opened) = self.judge_rate(word, permit, false) {
                return opened;
            }
            if word.payload() == 0 {
                return None;
            }
        }
        let transition = self.update(word, permit, |word| match word.state() {
            State::Closed => Some(word.with_payload(0)),
            State::HalfOpen => {
                let (admitted, succeeded) = word.trials();
                Some(if succeeded + 1 >= u64::from(self.config.half_open_max_calls) {
                    word.next(State::Closed, 0)
                } else {
                    word.with_payload(half_open_payload(admitted, succeeded + 1))
                })
            }
            State::Open => None,
        });
        if transition.is_some_and(|t| t.to == State::Closed)
            && let Some(outcomes) = &self.outcomes
        {
            outcomes.clear();
        }
        transition
    }

    /// Records a closed breaker's outcome in the failure-rate window; `Some` (the transition, if this
    /// call made it) when the rate opened the breaker, `None` when the rate is not reached or not used.
    #[inline]
    fn judge_rate(&self, word: Word, permit: Permit, failed: bool) -> Option<Option<Transition>> {
        let (outcomes, rule) = (self.outcomes.as_ref()?, self.config.failure_rate?);
        let now = if matches!(rule.span, Span::Time(_)) { self.clock.now_ns() } else { 0 };
        let tally = outcomes.record(failed, now);
        if !tally.reaches(rule.threshold, u64::from(rule.minimum_calls)) {
            return None;
        }
        Some(self.open(word, permit, self.config.recovery_timeout_ns))
    }

    /// The call failed in a way that says the service is unwell; `open_for_ns` is how long the service
    /// said it will be away (its `Retry-After`), which opens the breaker now for that long.
    pub fn record_failure(&self, permit: Permit, open_for_ns: Option<u64>) -> Option<Transition> {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let word = Word(self.word.load(Ordering::Acquire));
        if word.generation() != permit.generation {
            return None;
        }
        if let Some(server) = open_for_ns {
            return self.open(word, permit, server.min(SERVER_OPEN_MAX_NS.max(self.config.recovery_timeout_ns)));
        }
        if word.state() == State::Closed
            && let Some(opened) = self.judge_rate(word, permit, true)
        {
            return opened;
        }
        let threshold = self.config.failure_threshold.map_or(u64::MAX, u64::from);
        let reopen_at = self.reopen_at_ms(self.config.recovery_timeout_ns);
        let transition = self.update(word, permit, |word| match word.state() {
            State::Closed if word.payload() + 1 < threshold => Some(word.with_payload(word.payload() + 1)),
            State::Closed | State::HalfOpen => Some(word.next(State::Open, reopen_at)),
            State::Open => None,
        });
        self.count_opening(transition)
    }

    /// Opens the breaker for `open_ns` from now, from closed or half-open, unless the permit is stale.
    fn open(&self, word: Word, permit: Permit, open_ns: u64) -> Option<Transition> {
        let reopen_at = self.reopen_at_ms(open_ns);
        let transition = self.update(word, permit, |word| match word.state() {
            State::Closed | State::HalfOpen => Some(word.next(State::Open, reopen_at)),
            State::Open => None,
        });
        self.count_opening(transition)
    }

    fn count_opening(&self, transition: Option<Transition>) -> Option<Transition> {
        if transition.is_some_and(|t| t.to == State::Open) {
            self.times_opened.fetch_add(1, Ordering::Relaxed);
        }
        transition
    }

    /// The call ended without saying anything about the service (cancelled, or the caller's own bug):
    /// a trial gives its slot back; nothing else changes.
    pub fn release(&self, permit: Permit) {
        let word = Word(self.word.load(Ordering::Acquire));
        self.update(word, permit, |word| match word.state() {
            State::HalfOpen => {
                let (admitted, succeeded) = word.trials();
                Some(word.with_payload(half_open_payload(admitted.saturating_sub(1), succeeded)))
            }
            State::Closed | State::Open => None,
        });
    }

    /// Opens the breaker until [`reset`](Self::reset), whatever its state (Polly's manual isolation).
    pub fn isolate(&self) -> Option<Transition> {
        let transition = self.force(|word| (!word.isolated()).then(|| word.next(State::Open, ISOLATED)));
        self.count_opening(transition)
    }

    /// Closes the breaker and forgets its failures, whatever its state.
    pub fn reset(&self) -> Option<Transition> {
        let transition = self.force(|word| {
            let settled = word.state() == State::Closed && word.payload() == 0;
            (!settled).then(|| word.next(State::Closed, 0))
        });
        if let Some(outcomes) = &self.outcomes {
            outcomes.clear();
        }
        transition
    }

    /// Applies `change` to the state word whatever its generation, until it sticks or declines.
    fn force(&self, change: impl Fn(Word) -> Option<Word>) -> Option<Transition> {
        let mut word = Word(self.word.load(Ordering::Acquire));
        loop {
            let next = change(word)?;
            match self.word.compare_exchange_weak(word.0, next.0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return (next.state() != word.state()).then_some(Transition { from: word.state(), to: next.state() }),
                Err(actual) => word = Word(actual),
            }
        }
    }

    /// Applies `change` to the state word until it sticks, unless the permit is stale or `change`
    /// declines; reports a change of state.
    fn update(&self, mut word: Word, permit: Permit, change: impl Fn(Word) -> Option<Word>) -> Option<Transition> {
        loop {
            if word.generation() != permit.generation {
                return None;
            }
            let next = change(word)?;
            match self.word.compare_exchange_weak(word.0, next.0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) if next.state() != word.state() => {
                    return Some(Transition { from: word.state(), to: next.state() });
                }
                Ok(_) => return None,
                Err(actual) => word = Word(actual),
            }
        }
    }

    /// The end of an open period of `open_ns` from now, in ms, rounded up so the breaker never lets a
    /// trial through early.
    fn reopen_at_ms(&self, open_ns: u64) -> u64 {
        self.clock.now_ns().saturating_add(open_ns).div_ceil(NS_PER_MS).min(ISOLATED - 1)
    }

    /// The state as a caller would find it: open turns half-open once the recovery timeout has passed,
    /// though the change is recorded (and announced) only when the first trial call is admitted.
    pub fn state(&self) -> State {
        match self.retry_after_ns() {
            Some(0) => State::HalfOpen,
            _ => Word(self.word.load(Ordering::Acquire)).state(),
        }
    }

    /// How long until an open breaker lets a trial through (`u64::MAX` when isolated); `None` unless
    /// it is open.
    pub fn retry_after_ns(&self) -> Option<u64> {
        let word = Word(self.word.load(Ordering::Acquire));
        match word.state() {
            State::Open if word.isolated() => Some(u64::MAX),
            State::Open => Some(word.payload().saturating_mul(NS_PER_MS).saturating_sub(self.clock.now_ns())),
            _ => None,
        }
    }

    /// Whether it was isolated by hand (and not reset since).
    pub fn isolated(&self) -> bool {
        Word(self.word.load(Ordering::Acquire)).isolated()
    }

    /// Failures in the current streak (closed), or 0.
    pub fn consecutive_failures(&self) -> u64 {
        let word = Word(self.word.load(Ordering::Acquire));
        if word.state() == State::Closed { word.payload() } else { 0 }
    }

    /// `(calls, failures)` in the failure-rate window, when there is one.
    pub fn window(&self) -> Option<(u64, u64)> {
        let tally = self.outcomes.as_ref()?.tally(self.clock.now_ns());
        Some((tally.calls, tally.failures))
    }

    pub fn counters(&self) -> Counters {
        Counters {
            successes: self.successes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            slow_calls: self.slow_calls.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            times_opened: self.times_opened.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;
    use std::sync::Arc;

    const SEC: u64 = 1_000_000_000;

    fn breaker(threshold: u32, trials: u32) -> (CircuitBreaker<ManualClock>, ManualClock) {
        let clock = ManualClock::new(100 * SEC);
        let config = BreakerConfig {
            name: "gateway".into(),
            failure_threshold: Some(threshold),
            recovery_timeout_ns: 30 * SEC,
            half_open_max_calls: trials,
            ..BreakerConfig::default()
        };
        (CircuitBreaker::new(config, clock.clone()).expect("valid config"), clock)
    }

    fn fail(b: &CircuitBreaker<ManualClock>) -> Option<Transition> {
        let permit = b.allow().expect("admitted");
        b.record_failure(permit, None)
    }

    fn open(b: &CircuitBreaker<ManualClock>) {
        while b.state() != State::Open {
            fail(b);
        }
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let (b, _) = breaker(3, 1);
        assert_eq!(fail(&b), None);
        assert_eq!(fail(&b), None);
        assert_eq!(fail(&b), Some(Transition { from: State::Closed, to: State::Open }));
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.counters().times_opened, 1);
    }

    #[test]
    fn a_success_ends_the_failure_streak() {
        let (b, _) = breaker(3, 1);
        fail(&b);
        fail(&b);
        let permit = b.allow().unwrap();
        assert_eq!(b.record_success(permit), None);
        assert_eq!(b.consecutive_failures(), 0);
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn open_breaker_fails_fast_with_the_time_left() {
        let (b, clock) = breaker(1, 1);
        open(&b);
        clock.advance(10 * SEC);
        match b.allow() {
            Err(Error::CircuitOpen { retry_after_ns, message }) => {
                assert_eq!(retry_after_ns, 20 * SEC);
                assert!(message.contains("\"gateway\""), "{message}");
            }
            other => panic!("expected CircuitOpen, got {other:?}"),
        }
        assert_eq!(b.counters().rejected, 1);
    }

    #[test]
    fn turns_half_open_after_the_recovery_timeout_and_lets_only_the_trials_through() {
        let (b, clock) = breaker(1, 2);
        open(&b);
        clock.advance(30 * SEC);
        assert_eq!(b.state(), State::HalfOpen);
        let first = b.allow().unwrap();
        assert!(first.opened_trials, "the first trial announces the change");
        let second = b.allow().unwrap();
        assert!(!second.opened_trials);
        assert!(matches!(b.allow(), Err(Error::CircuitOpen { .. })), "a third trial is refused");
    }

    #[test]
    fn closes_when_all_trials_succeed() {
        let (b, clock) = breaker(1, 2);
        open(&b);
        clock.advance(30 * SEC);
        let (t1, t2) = (b.allow().unwrap(), b.allow().unwrap());
        assert_eq!(b.record_success(t1), None);
        assert_eq!(b.record_success(t2), Some(Transition { from: State::HalfOpen, to: State::Closed }));
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn a_failed_trial_opens_it_again_for_a_full_timeout() {
        let (b, clock) = breaker(1, 2);
        open(&b);
        clock.advance(30 * SEC);
        let trial = b.allow().unwrap();
        assert_eq!(b.record_failure(trial, None), Some(Transition { from: State::HalfOpen, to: State::Open }));
        assert_eq!(b.retry_after_ns(), Some(30 * SEC));
        assert_eq!(b.counters().times_opened, 2);
    }

    #[test]
    fn cancelled_trial_gives_its_slot_back() {
        let (b, clock) = breaker(1, 1);
        open(&b);
        clock.advance(30 * SEC);
        let trial = b.allow().unwrap();
        assert!(b.allow().is_err());
        b.release(trial);
        let next = b.allow().expect("the released slot is free again");
        assert_eq!(b.record_success(next), Some(Transition { from: State::HalfOpen, to: State::Closed }));
    }

    #[test]
    fn results_from_before_the_outage_are_stale() {
        let (b, clock) = breaker(1, 1);
        let slow_call = b.allow().unwrap();
        open(&b);
        clock.advance(30 * SEC);
        let _trial = b.allow().unwrap();
        assert_eq!(b.record_success(slow_call), None, "a stale success does not close it");
        b.release(slow_call);
        assert!(b.allow().is_err(), "a stale release does not free a trial slot");
        assert_eq!(b.state(), State::HalfOpen);
    }

    #[test]
    fn permits_survive_a_round_trip_through_bits() {
        let permit = Permit { generation: 65_535, opened_trials: true, trial: true, source: 3, started_us: STARTED_MASK };
        assert_eq!(Permit::from_bits(permit.to_bits()), permit);
    }

    #[test]
    fn many_threads_failing_at_once_open_it_exactly_once() {
        let (b, _) = breaker(5, 1);
        let b = Arc::new(b);
        let permits: Vec<Permit> = (0..8).map(|_| b.allow().unwrap()).collect();
        let threads: Vec<_> = permits
            .into_iter()
            .map(|permit| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || (0..1_000).filter(|_| b.record_failure(permit, None).is_some()).count())
            })
            .collect();
        let transitions: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(transitions, 1);
        assert_eq!(b.counters().times_opened, 1);
        assert_eq!(b.counters().failures, 8_000);
    }

    #[test]
    fn many_threads_in_half_open_admit_exactly_the_trials() {
        let (b, clock) = breaker(1, 3);
        open(&b);
        clock.advance(30 * SEC);
        let b = Arc::new(b);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || (0..1_000).filter(|_| b.allow().is_ok()).count())
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(admitted, 3);
    }

    #[test]
    fn bad_config_names_its_field() {
        let clock = ManualClock::new(0);
        let zero_threshold = BreakerConfig { failure_threshold: Some(0), ..BreakerConfig::default() };
        let no_trials = BreakerConfig { half_open_max_calls: 0, ..BreakerConfig::default() };
        let too_many_trials = BreakerConfig { half_open_max_calls: 70_000, ..BreakerConfig::default() };
        for (config, field) in [
            (zero_threshold, "failure_threshold"),
            (no_trials, "half_open_max_calls"),
            (too_many_trials, "half_open_max_calls"),
        ] {
            assert!(
                matches!(CircuitBreaker::new(config, clock.clone()), Err(Error::Config { field: f, .. }) if f == field)
            );
        }
    }

    fn with(config: BreakerConfig) -> (CircuitBreaker<ManualClock>, ManualClock) {
        let clock = ManualClock::new(100 * SEC);
        (CircuitBreaker::new(config, clock.clone()).expect("valid config"), clock)
    }

    fn rate(threshold: f64, span: Span, minimum_calls: u32) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: None,
            failure_rate: Some(RateRule { threshold, span, minimum_calls }),
            ..BreakerConfig::default()
        }
    }

    fn succeed(b: &CircuitBreaker<ManualClock>) -> Option<Transition> {
        let permit = b.allow().expect("admitted");
        b.record_success(permit)
    }

    #[test]
    fn a_failure_rate_opens_it_only_once_the_minimum_calls_were_seen() {
        let (b, _) = with(rate(0.5, Span::Calls(10), 4));
        fail(&b);
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), State::Closed, "3 failures of 3 calls: below the minimum of 4");
        assert_eq!(succeed(&b), Some(Transition { from: State::Closed, to: State::Open }), "3 of 4 reach 50%");
    }

    #[test]
    fn a_failure_rate_below_the_threshold_keeps_it_closed_however_long_the_streak_was() {
        let (b, _) = with(rate(0.5, Span::Calls(10), 10));
        for _ in 0..6 {
            succeed(&b);
        }
        for _ in 0..4 {
            assert_eq!(fail(&b), None);
        }
        assert_eq!(b.window(), Some((10, 4)));
        assert_eq!(fail(&b), Some(Transition { from: State::Closed, to: State::Open }), "the oldest success left: 5 of 10");
    }

    #[test]
    fn a_time_window_forgets_old_failures() {
        let (b, clock) = with(rate(0.5, Span::Time(10 * SEC), 2));
        fail(&b);
        clock.advance(11 * SEC);
        assert_eq!(succeed(&b), None);
        assert_eq!(b.window(), Some((1, 0)), "the failure 11 s ago is out of the 10 s window");
        assert_eq!(fail(&b), Some(Transition { from: State::Closed, to: State::Open }));
    }

    #[test]
    fn the_consecutive_rule_and_the_rate_both_open_it_when_both_are_set() {
        let config = BreakerConfig { failure_threshold: Some(2), ..rate(0.9, Span::Calls(100), 50) };
        let (b, _) = with(config);
        fail(&b);
        assert_eq!(fail(&b), Some(Transition { from: State::Closed, to: State::Open }));
    }

    #[test]
    fn closing_again_forgets_the_window() {
        let config = BreakerConfig { half_open_max_calls: 1, ..rate(0.5, Span::Calls(4), 2) };
        let (b, clock) = with(config);
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), State::Open);
        clock.advance(30 * SEC);
        assert_eq!(succeed(&b), Some(Transition { from: State::HalfOpen, to: State::Closed }));
        assert_eq!(b.window(), Some((0, 0)));
        assert_eq!(fail(&b), None, "one failure is below the minimum of 2 calls again");
    }

    #[test]
    fn a_slow_success_counts_as_a_failure() {
        let config = BreakerConfig { failure_threshold: Some(2), slow_call_ns: Some(2 * SEC), ..BreakerConfig::default() };
        let (b, clock) = with(config);
        let quick = b.allow().unwrap();
        clock.advance(SEC);
        assert_eq!(b.record_success(quick), None);
        assert_eq!(b.consecutive_failures(), 0);
        for _ in 0..2 {
            let slow = b.allow().unwrap();
            clock.advance(3 * SEC);
            b.record_success(slow);
        }
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.counters().slow_calls, 2);
        assert_eq!(b.counters().successes, 1);
    }

    #[test]
    fn slow_calls_are_timed_across_the_wrap_of_the_permits_clock() {
        let config = BreakerConfig { failure_threshold: Some(1), slow_call_ns: Some(SEC), ..BreakerConfig::default() };
        let clock = ManualClock::new(((1 << STARTED_BITS) - 1) * NS_PER_US);
        let b = CircuitBreaker::new(config, clock.clone()).unwrap();
        let permit = Permit::from_bits(b.allow().unwrap().to_bits());
        clock.advance(SEC / 2);
        assert_eq!(b.record_success(permit), None, "half a second is not slow, across the wrap");
    }

    #[test]
    fn a_failure_with_a_server_delay_opens_it_at_once_for_that_long() {
        let (b, clock) = breaker(5, 1);
        let permit = b.allow().unwrap();
        assert_eq!(b.record_failure(permit, Some(7 * SEC)), Some(Transition { from: State::Closed, to: State::Open }));
        assert_eq!(b.retry_after_ns(), Some(7 * SEC));
        clock.advance(7 * SEC);
        assert_eq!(b.state(), State::HalfOpen, "the server's 7 s, not the 30 s recovery timeout");
    }

    #[test]
    fn a_server_delay_is_obeyed_up_to_ten_minutes() {
        let (b, _) = breaker(5, 1);
        let permit = b.allow().unwrap();
        b.record_failure(permit, Some(86_400 * SEC));
        assert_eq!(b.retry_after_ns(), Some(SERVER_OPEN_MAX_NS));
    }

    #[test]
    fn a_failed_trial_with_a_server_delay_reopens_it_for_that_long() {
        let (b, clock) = breaker(1, 1);
        open(&b);
        clock.advance(30 * SEC);
        let trial = b.allow().unwrap();
        b.record_failure(trial, Some(3 * SEC));
        assert_eq!(b.retry_after_ns(), Some(3 * SEC));
    }

    #[test]
    fn a_half_open_breaker_with_its_trials_out_says_to_look_again_soon() {
        let (b, clock) = breaker(1, 1);
        open(&b);
        clock.advance(30 * SEC);
        let _trial = b.allow().unwrap();
        match b.allow() {
            Err(Error::CircuitOpen { retry_after_ns, .. }) => assert_eq!(retry_after_ns, HALF_OPEN_RETRY_NS),
            other => panic!("expected CircuitOpen, got {other:?}"),
        }
    }

    #[test]
    fn isolate_holds_it_open_until_reset() {
        let (b, clock) = breaker(5, 1);
        let before = b.allow().unwrap();
        assert_eq!(b.isolate(), Some(Transition { from: State::Closed, to: State::Open }));
        assert_eq!(b.isolate(), None, "isolating twice changes nothing");
        clock.advance(3_600 * SEC);
        assert_eq!(b.state(), State::Open);
        assert!(b.isolated());
        match b.allow() {
            Err(Error::CircuitOpen { retry_after_ns, message }) => {
                assert_eq!(retry_after_ns, u64::MAX);
                assert!(message.contains("reset()"), "{message}");
            }
            other => panic!("expected CircuitOpen, got {other:?}"),
        }
        assert_eq!(b.record_success(before), None, "a call from before the isolation changes nothing");
        assert_eq!(b.reset(), Some(Transition { from: State::Open, to: State::Closed }));
        assert!(b.allow().is_ok());
        assert_eq!(b.counters().times_opened, 1);
    }

    #[test]
    fn reset_forgets_the_failure_streak_and_the_window() {
        let config = BreakerConfig { failure_threshold: Some(3), ..rate(0.9, Span::Calls(10), 5) };
        let (b, _) = with(config);
        fail(&b);
        fail(&b);
        assert_eq!(b.reset(), None, "closed it was, closed it stays");
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.window(), Some((0, 0)));
    }

    #[test]
    fn rate_settings_that_cannot_work_name_their_field() {
        let clock = ManualClock::new(0);
        for (config, field) in [
            (rate(0.0, Span::Calls(10), 1), "failure_rate"),
            (rate(1.5, Span::Calls(10), 1), "failure_rate"),
            (rate(f64::NAN, Span::Calls(10), 1), "failure_rate"),
            (rate(0.5, Span::Calls(0), 1), "window"),
            (rate(0.5, Span::Time(0), 1), "window_s"),
            (rate(0.5, Span::Calls(10), 0), "minimum_calls"),
            (BreakerConfig { failure_threshold: None, ..BreakerConfig::default() }, "failure_threshold"),
            (BreakerConfig { slow_call_ns: Some(0), ..BreakerConfig::default() }, "slow_call_s"),
        ] {
            let got = CircuitBreaker::new(config, clock.clone());
            assert!(matches!(&got, Err(Error::Config { field: f, .. }) if f == field), "{field}: {got:?}");
        }
    }

    #[test]
    fn a_minimum_above_the_window_is_the_window() {
        let (b, _) = with(rate(1.0, Span::Calls(3), 20));
        fail(&b);
        fail(&b);
        assert_eq!(fail(&b), Some(Transition { from: State::Closed, to: State::Open }));
    }

    /// One step of a random history: admit a call, settle a held permit, or let time pass.
    #[derive(Debug, Clone)]
    enum Step {
        Admit,
        Succeed(usize),
        Fail(usize),
        Release(usize),
        Wait(u64),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            3 => Just(Step::Admit),
            2 => any::<usize>().prop_map(Step::Succeed),
            2 => any::<usize>().prop_map(Step::Fail),
            1 => any::<usize>().prop_map(Step::Release),
            1 => (0u64..40).prop_map(|s| Step::Wait(s * SEC)),
        ]
    }

    proptest::proptest! {
        /// In any history, a half-open breaker never has more than `half_open_max_calls` trials out,
        /// every opening is reported exactly once, and only the permit holders' outcomes count.
        #[test]
        fn trials_never_exceed_the_limit_and_openings_are_counted_once(
            steps in proptest::collection::vec(step(), 1..200),
            threshold in 1u32..4,
            trials in 1u32..4,
        ) {
            let (b, clock) = breaker(threshold, trials);
            let mut held: Vec<Permit> = Vec::new();
            let mut reported_openings = 0;
            let mut count = |t: Option<Transition>| reported_openings += usize::from(t.is_some_and(|t| t.to == State::Open));
            for step in steps {
                match step {
                    Step::Admit => {
                        if let Ok(permit) = b.allow() {
                            held.push(permit);
                        }
                    }
                    Step::Succeed(i) if !held.is_empty() => {
                        let permit = held.swap_remove(i % held.len());
                        count(b.record_success(permit));
                    }
                    Step::Fail(i) if !held.is_empty() => {
                        let permit = held.swap_remove(i % held.len());
                        count(b.record_failure(permit, None));
                    }
                    Step::Release(i) if !held.is_empty() => b.release(held.swap_remove(i % held.len())),
                    Step::Wait(ns) => clock.advance(ns),
                    _ => {}
                }
                let word = Word(b.word.load(Ordering::Acquire));
                if word.state() == State::HalfOpen {
                    let outstanding = held.iter().filter(|p| p.generation == word.generation()).count() as u64;
                    let (admitted, succeeded) = word.trials();
                    proptest::prop_assert!(admitted <= u64::from(trials));
                    proptest::prop_assert_eq!(admitted, outstanding + succeeded, "trial slots match the permits out");
                }
            }
            proptest::prop_assert_eq!(b.counters().times_opened as usize, reported_openings);
        }
    }
}
