//! A circuit breaker: closed → open after `failure_threshold` consecutive failures, open (failing fast)
//! for `recovery_timeout`, then half-open letting `half_open_max_calls` trial calls through, closed
//! again when all of them succeed and open again on the first that fails.
//!
//! Consecutive failures rather than a failure rate over a window: LLM traffic is slow and bursty (a few
//! calls a second, each taking seconds), so a rate needs a minimum volume that a quiet client never
//! reaches, while any success between failures already proves the gateway is answering.
//!
//! The whole state is one `AtomicU64` changed by compare-and-swap, so counts are exact under any
//! concurrency and the closed success path is a load. Each admitted call carries a [`Permit`] naming the
//! generation (one per state change) it was admitted in; a result from an older generation is stale and
//! changes nothing, so a slow call from before an outage cannot close a half-open breaker, and giving
//! back a cancelled trial frees exactly the trial slot it took.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::clock::{Clock, MonotonicClock, ns_to_secs};
use crate::core::error::{Error, Result};

const NS_PER_MS: u64 = 1_000_000;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    generation: u16,
    /// Set when admitting this call moved the breaker from open to half-open.
    pub opened_trials: bool,
}

impl Permit {
    /// The permit as one integer, for callers that carry it across a language boundary.
    pub fn to_bits(self) -> u64 {
        (u64::from(self.generation) << 1) | u64::from(self.opened_trials)
    }

    pub fn from_bits(bits: u64) -> Self {
        Self { generation: (bits >> 1) as u16, opened_trials: bits & 1 == 1 }
    }
}

/// A breaker's settings, times in ns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    pub name: String,
    pub failure_threshold: u32,
    pub recovery_timeout_ns: u64,
    pub half_open_max_calls: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            name: "default".into(),
            failure_threshold: 5,
            recovery_timeout_ns: 30_000_000_000,
            half_open_max_calls: 3,
        }
    }
}

/// Totals since the breaker was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub successes: u64,
    pub failures: u64,
    pub rejected: u64,
    pub times_opened: u64,
}

/// The state word: state in bits 0-1, generation in bits 2-17, and a 46-bit payload: the consecutive
/// failures when closed; the end of the open period in ms of the clock when open; trials admitted
/// (low 16 bits) and trials succeeded (next 16 bits) when half-open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word(u64);

const HALF_OPEN_COUNT_MASK: u64 = 0xFFFF;

/// The consecutive failures that may open a breaker.
pub const FAILURE_THRESHOLD: RangeInclusive<u32> = 1..=u32::MAX;
/// The trial calls a half-open breaker may let through: as many as its state word counts.
pub const HALF_OPEN_CALLS: RangeInclusive<u32> = 1..=HALF_OPEN_COUNT_MASK as u32;

impl Word {
    fn new(state: State, generation: u16, payload: u64) -> Self {
        let state_bits = match state {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        };
        Word(state_bits | (u64::from(generation) << 2) | (payload.min((1 << 46) - 1) << 18))
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

/// A circuit breaker on an injected clock.
#[derive(Debug)]
pub struct CircuitBreaker<C: Clock = MonotonicClock> {
    config: BreakerConfig,
    word: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    rejected: AtomicU64,
    times_opened: AtomicU64,
    clock: C,
}

impl<C: Clock> CircuitBreaker<C> {
    pub fn new(config: BreakerConfig, clock: C) -> Result<Self> {
        for (field, got, range) in [
            ("failure_threshold", config.failure_threshold, FAILURE_THRESHOLD),
            ("half_open_max_calls", config.half_open_max_calls, HALF_OPEN_CALLS),
        ] {
            if !range.contains(&got) {
                let (low, high) = (range.start(), range.end());
                return Err(Error::config(field, format!("must be between {low} and {high}, got {got}")));
            }
        }
        Ok(Self {
            config,
            word: AtomicU64::new(Word::new(State::Closed, 0, 0).0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
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
        let word = Word(self.word.load(Ordering::Acquire));
        if word.state() == State::Closed {
            return Ok(Permit { generation: word.generation(), opened_trials: false });
        }
        self.allow_slow(word)
    }

    fn allow_slow(&self, mut word: Word) -> Result<Permit> {
        loop {
            let (next, permit) = match word.state() {
                State::Closed => return Ok(Permit { generation: word.generation(), opened_trials: false }),
                State::Open => {
                    let now = self.clock.now_ns();
                    let reopen_at = word.payload().saturating_mul(NS_PER_MS);
                    if now < reopen_at {
                        return Err(self.reject(reopen_at - now));
                    }
                    let next = word.next(State::HalfOpen, half_open_payload(1, 0));
                    (next, Permit { generation: next.generation(), opened_trials: true })
                }
                State::HalfOpen => {
                    let (admitted, succeeded) = word.trials();
                    if admitted >= u64::from(self.config.half_open_max_calls) {
                        return Err(self.reject(self.config.recovery_timeout_ns));
                    }
                    let next = word.with_payload(half_open_payload(admitted + 1, succeeded));
                    (next, Permit { generation: word.generation(), opened_trials: false })
                }
            };
            match self.word.compare_exchange_weak(word.0, next.0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(permit),
                Err(actual) => word = Word(actual),
            }
        }
    }

    fn reject(&self, retry_after_ns: u64) -> Error {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let message = format!(
            "circuit {:?} is open: failing fast for another {:.3} s",
            self.config.name,
            ns_to_secs(retry_after_ns)
        );
        Error::CircuitOpen { message, retry_after_ns }
    }

    /// The call succeeded (or the service answered): ends a failure streak, or counts a trial.
    #[inline]
    pub fn record_success(&self, permit: Permit) -> Option<Transition> {
        self.successes.fetch_add(1, Ordering::Relaxed);
        let word = Word(self.word.load(Ordering::Acquire));
        if word.generation() != permit.generation || (word.state() == State::Closed && word.payload() == 0) {
            return None;
        }
        self.update(word, permit, |word| match word.state() {
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
        })
    }

    /// The call failed in a way that says the service is unwell.
    pub fn record_failure(&self, permit: Permit) -> Option<Transition> {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let word = Word(self.word.load(Ordering::Acquire));
        let transition = self.update(word, permit, |word| match word.state() {
            State::Closed if word.payload() + 1 < u64::from(self.config.failure_threshold) => {
                Some(word.with_payload(word.payload() + 1))
            }
            State::Closed | State::HalfOpen => Some(word.next(State::Open, self.reopen_at_ms())),
            State::Open => None,
        });
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

    fn reopen_at_ms(&self) -> u64 {
        // Rounded up, so the breaker never reopens before the full recovery timeout.
        self.clock.now_ns().saturating_add(self.config.recovery_timeout_ns).div_ceil(NS_PER_MS)
    }

    /// The state as a caller would find it: open turns half-open once the recovery timeout has passed,
    /// though the change is recorded (and announced) only when the first trial call is admitted.
    pub fn state(&self) -> State {
        match self.retry_after_ns() {
            Some(0) => State::HalfOpen,
            _ => Word(self.word.load(Ordering::Acquire)).state(),
        }
    }

    /// How long until an open breaker lets a trial through; `None` unless it is open.
    pub fn retry_after_ns(&self) -> Option<u64> {
        let word = Word(self.word.load(Ordering::Acquire));
        (word.state() == State::Open)
            .then(|| word.payload().saturating_mul(NS_PER_MS).saturating_sub(self.clock.now_ns()))
    }

    /// Failures in the current streak (closed), or 0.
    pub fn consecutive_failures(&self) -> u64 {
        let word = Word(self.word.load(Ordering::Acquire));
        if word.state() == State::Closed { word.payload() } else { 0 }
    }

    pub fn counters(&self) -> Counters {
        Counters {
            successes: self.successes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
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
            failure_threshold: threshold,
            recovery_timeout_ns: 30 * SEC,
            half_open_max_calls: trials,
        };
        (CircuitBreaker::new(config, clock.clone()).expect("valid config"), clock)
    }

    fn fail(b: &CircuitBreaker<ManualClock>) -> Option<Transition> {
        let permit = b.allow().expect("admitted");
        b.record_failure(permit)
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
        assert_eq!(b.record_failure(trial), Some(Transition { from: State::HalfOpen, to: State::Open }));
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
        let permit = Permit { generation: 65_535, opened_trials: true };
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
                std::thread::spawn(move || (0..1_000).filter(|_| b.record_failure(permit).is_some()).count())
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
        let zero_threshold = BreakerConfig { failure_threshold: 0, ..BreakerConfig::default() };
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
                        count(b.record_failure(permit));
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
