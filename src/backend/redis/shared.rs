//! One shared limit as a limiter uses it: each decision made in Redis with the failure policy applied
//! when Redis is away, one request's wait as a sans-IO state machine that any driver (an asyncio task,
//! a thread) runs, and what this process saw.
//!
//! A request waits for two things, in one line in Redis across every process (priority, then
//! arrival; see acquire.lua). For a concurrency lease: a slot released anywhere goes to the front of
//! the line, never to a newcomer nor to the releaser's own process. For the rate: only a request with
//! nobody ahead of it reserves an instant, and no further off than a short horizon, so a request of
//! higher priority goes before every lower one whose turn has not come, whichever process it is in;
//! the reservation is then slept out here. Redis cannot call into a process, so a waiter asks again:
//! for a lease after a short pause that grows, for the rate when Redis says its turn may come; each
//! ask keeps its place. Giving up takes the waiter out of the line and gives its reservation back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::core::clock::{Clock, MonotonicClock};
use crate::core::limit::Cost;
use crate::core::refusal::{self, Awaited};
use crate::core::stats::{Counts, WaitHistogram};
use crate::core::Error;
use crate::backend::redis::error::BackendError;
use crate::backend::redis::limiter::{Counted, Grant, Mode, Outcome, Place, Refused, RemoteLimiter};

/// Asking again for a concurrency lease held elsewhere: the first pause, and the longest.
const FIRST_POLL_NS: u64 = 2_000_000;
const LONGEST_POLL_NS: u64 = 50_000_000;

/// What a limiter does when Redis cannot be reached or does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Raise: no decision without Redis.
    FailClosed,
    /// Admit, counting nothing.
    FailOpen,
    /// Decide in this process at its share of every limit.
    Local,
}

impl OnError {
    pub const NAMES: [&'static str; 3] = ["fail_closed", "fail_open", "local"];

    pub fn named(name: &str) -> Option<Self> {
        match name {
            "fail_closed" => Some(Self::FailClosed),
            "fail_open" => Some(Self::FailOpen),
            "local" => Some(Self::Local),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::FailClosed => "fail_closed",
            Self::FailOpen => "fail_open",
            Self::Local => "local",
        }
    }
}

/// A change in whether Redis answers, for the caller to report once per outage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    Unchanged,
    /// Redis stopped answering: decided by the policy from now on.
    Outage(String),
    /// Redis answers again.
    Back,
}

/// This process's counts for a shared limit.
#[derive(Debug, Default)]
pub struct SharedStats {
    pub admitted: AtomicU64,
    pub rejected: AtomicU64,
    pub waiting: AtomicU64,
    /// Admissions held now (admitted, not yet released or given back).
    pub in_flight: AtomicU64,
    /// Decisions made by the failure policy.
    pub fallbacks: AtomicU64,
    pub waits: WaitHistogram,
}

/// A limit decided in Redis, under a failure policy.
pub struct Shared {
    pub remote: Arc<RemoteLimiter>,
    pub on_error: OnError,
    outage: AtomicBool,
    pub stats: SharedStats,
    /// What waits are timed on.
    clock: MonotonicClock,
}

impl Shared {
    pub fn new(remote: Arc<RemoteLimiter>, on_error: OnError) -> Self {
        Self { remote, on_error, outage: AtomicBool::new(false), stats: SharedStats::default(), clock: MonotonicClock::new() }
    }

    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    /// Whether admissions hold a concurrency lease.
    pub fn leases(&self) -> bool {
        self.remote.max_concurrency().is_some()
    }

    /// What a decision in Redis comes to once the failure policy has ruled on a Redis failure:
    /// `fail_closed` keeps the failure, `fail_open` admits uncounted, `local` decides in this process.
    pub fn judge(&self, decided: Result<Outcome, Refused>, cost: Cost, price: f64, mode: Mode, operation: &str) -> (Result<Outcome, Refused>, Turn) {
        match decided {
            Err(Err(err)) => {
                let (ruling, turn) = self.on_failure(err);
                let outcome = match ruling {
                    Err(err) => Err(Err(err)),
                    Ok(()) if self.on_error == OnError::FailOpen => Ok(Outcome::Admitted(open(cost, price))),
                    Ok(()) => self.remote.decide_locally(cost, price, mode, self.leases(), operation),
                };
                (outcome, turn)
            }
            answered => (answered, self.reachable()),
        }
    }

    /// Whether the policy decides instead of Redis after `err` (counted), or the failure stands
    /// (`fail_closed`, or a setting that cannot work); with the outage it starts, if any, under every
    /// policy.
    pub fn on_failure(&self, err: BackendError) -> (Result<(), BackendError>, Turn) {
        let BackendError::Unavailable { message } = &err else { return (Err(err), Turn::Unchanged) };
        let turn = if self.outage.swap(true, Ordering::AcqRel) { Turn::Unchanged } else { Turn::Outage(message.clone()) };
        if self.on_error == OnError::FailClosed {
            return (Err(err), turn);
        }
        self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        (Ok(()), turn)
    }

    /// This process's counts now.
    pub fn counts(&self) -> Counts {
        let stats = &self.stats;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Counts::of(load(&stats.admitted), load(&stats.rejected), load(&stats.in_flight), load(&stats.waiting), &stats.waits)
    }

    /// Decisions made by the failure policy.
    pub fn fallbacks(&self) -> u64 {
        self.stats.fallbacks.load(Ordering::Relaxed)
    }

    /// Redis answered: the end of an outage, if one was on.
    pub fn reachable(&self) -> Turn {
        if self.outage.swap(false, Ordering::AcqRel) { Turn::Back } else { Turn::Unchanged }
    }

    /// A request that waited `waited_ns` was admitted.
    pub fn admitted(&self, waited_ns: u64) {
        self.stats.admitted.fetch_add(1, Ordering::Relaxed);
        if waited_ns > FIRST_POLL_NS {
            self.stats.waits.record(waited_ns);
        }
    }

    pub fn rejected(&self) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a waiter in `stats().waiting` while it lives (every driver of a [`SharedWait`] holds one).
pub struct WaitingCount(Arc<Shared>);

impl WaitingCount {
    pub fn new(shared: &Arc<Shared>) -> Self {
        shared.stats.waiting.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(shared))
    }
}

impl Drop for WaitingCount {
    fn drop(&mut self) {
        self.0.stats.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An admission of `cost` counted nowhere (`fail_open`).
fn open(cost: Cost, price: f64) -> Grant {
    Grant { wait_us: 0, at_us: 0, lease: None, cost, price, counted: Counted::Nowhere }
}

/// What a waiting request does next.
#[derive(Debug)]
pub enum Step {
    /// Ask Redis (or the policy) for a reservation waiting at most this long (`None`: any).
    Ask { max_wait_us: Option<u64> },
    /// Sleep until this instant (the local monotonic clock), then call `woke`.
    Sleep { until_ns: u64 },
    /// Admitted: it holds this grant, due now.
    Admitted(Grant),
}

/// One request waiting for a shared limit. The driver asks when told (`Step::Ask`), hands the answer
/// to `answered`, sleeps when told and then calls `woke`; a driver that gives up calls `abandon` and
/// gives back what it returns.
#[derive(Debug)]
pub struct SharedWait {
    started_ns: u64,
    deadline_ns: Option<u64>,
    pause_ns: u64,
    /// Its place in the fleet's line for concurrency slots.
    place: Place,
    /// Whether an ask is out, unanswered: Redis may put it in line even if its answer never comes.
    asking: bool,
    /// A reservation slept out until `until_ns`.
    holding: Option<(Grant, u64)>,
    /// When it asks again, standing in line (a driver's timer may end its sleep sooner).
    ask_at_ns: u64,
}

impl SharedWait {
    /// A wait starting at `now` that gives up after `max_wait_ns` (`None`: never), at `place` in the
    /// fleet's line; its first step.
    pub fn start(now: u64, max_wait_ns: Option<u64>, place: Place) -> (Self, Step) {
        let deadline_ns = max_wait_ns.map(|ns| now.saturating_add(ns));
        let mut wait = Self { started_ns: now, deadline_ns, pause_ns: FIRST_POLL_NS, place, asking: false, holding: None, ask_at_ns: 0 };
        let first = wait.ask(now);
        (wait, first)
    }

    fn ask(&mut self, now: u64) -> Step {
        self.asking = true;
        Step::Ask { max_wait_us: self.deadline_ns.map(|deadline| deadline.saturating_sub(now) / 1_000) }
    }

    /// Who asks, and its place in the fleet's line: sent with each ask.
    pub fn place(&self) -> &Place {
        &self.place
    }

    /// It leaves the fleet's line (admitted or refused by Redis, which took it out, or giving up):
    /// the place to take out of Redis's line, if it holds one there or an ask of it may still run.
    pub fn leave_line(&mut self) -> Option<Place> {
        (self.place.ticket > 0 || self.asking).then(|| {
            let place = self.place.clone();
            (self.place.ticket, self.asking) = (0, false);
            place
        })
    }

    /// How long it has waited by `now`.
    pub fn waited_ns(&self, now: u64) -> u64 {
        now.saturating_sub(self.started_ns)
    }

    /// What Redis (or the policy) decided at `now`.
    pub fn answered(&mut self, now: u64, outcome: Outcome, remote: &RemoteLimiter, operation: &str) -> Result<Step, Error> {
        self.asking = false;
        match outcome {
            Outcome::Later { wait_us, limit } => {
                self.place.ticket = 0; // Redis took it out of the line
                Err(remote.too_long(operation, wait_us, limit))
            }
            outcome => self.after(now, outcome, operation),
        }
    }

    /// `answered`, for every outcome but a wait past the deadline (worded by the limiter).
    fn after(&mut self, now: u64, outcome: Outcome, operation: &str) -> Result<Step, Error> {
        self.asking = false;
        match outcome {
            Outcome::Admitted(grant) if grant.wait_us == 0 => {
                self.place.ticket = 0;
                Ok(Step::Admitted(grant))
            }
            Outcome::Admitted(grant) => {
                self.place.ticket = 0;
                let until_ns = now.saturating_add(grant.wait_us.saturating_mul(1_000));
                self.holding = Some((grant, until_ns));
                Ok(Step::Sleep { until_ns })
            }
            Outcome::Later { .. } => unreachable!("answered words it"),
            Outcome::NoLease { retry_us, ticket } => {
                let pause = self.pause_ns.min(retry_us.saturating_mul(1_000));
                self.pause_ns = (self.pause_ns * 2).min(LONGEST_POLL_NS);
                self.in_line(now, ticket, pause, Awaited::Slot, operation)
            }
            // Redis knows how far its turn is: it asks again when told.
            Outcome::NotYet { retry_us, ticket } => self.in_line(now, ticket, retry_us.saturating_mul(1_000), Awaited::Rate, operation),
        }
    }

    /// It stands in the fleet's line (`ticket` > 0) or must ask again (0), for `awaited`: it sleeps
    /// `pause`, cut short by its deadline, or gives up at the deadline.
    fn in_line(&mut self, now: u64, ticket: u64, pause: u64, awaited: Awaited, operation: &str) -> Result<Step, Error> {
        self.place.ticket = ticket;
        let left = self.deadline_ns.map(|deadline| deadline.saturating_sub(now));
        if left == Some(0) {
            return Err(refusal::timed_out(operation, awaited));
        }
        let pause = pause.min(left.unwrap_or(u64::MAX)).max(1);
        self.ask_at_ns = now.saturating_add(pause);
        Ok(Step::Sleep { until_ns: self.ask_at_ns })
    }

    /// The sleep it was told to take ended (or a timer fired early) at `now`.
    pub fn woke(&mut self, now: u64) -> Step {
        match self.holding.take() {
            Some((grant, until_ns)) if now >= until_ns => Step::Admitted(grant),
            Some((grant, until_ns)) => {
                self.holding = Some((grant, until_ns));
                Step::Sleep { until_ns }
            }
            None if now < self.ask_at_ns => Step::Sleep { until_ns: self.ask_at_ns },
            None => self.ask(now),
        }
    }

    /// It gives up: the reservation it holds, if any, to give back.
    pub fn abandon(&mut self) -> Option<Grant> {
        self.holding.take().map(|(grant, _)| grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(wait_us: u64) -> Grant {
        Grant { wait_us, ..open(Cost::request(0), 0.0) }
    }

    #[test]
    fn a_reservation_is_slept_out_then_admitted() {
        let (mut wait, first) = SharedWait::start(1_000, None, Place::newcomer(0));
        assert!(matches!(first, Step::Ask { max_wait_us: None }));
        let Ok(Step::Sleep { until_ns }) = wait.after(2_000, Outcome::Admitted(grant(5)), "acquire") else { panic!() };
        assert_eq!(until_ns, 7_000);
        assert!(matches!(wait.woke(6_999), Step::Sleep { until_ns: 7_000 }), "a timer that fired early sleeps again");
        assert!(matches!(wait.woke(7_000), Step::Admitted(_)));
        assert_eq!(wait.waited_ns(7_000), 6_000);
    }

    #[test]
    fn giving_up_while_sleeping_hands_back_the_reservation() {
        let (mut wait, _) = SharedWait::start(0, None, Place::newcomer(0));
        assert!(matches!(wait.after(0, Outcome::Admitted(grant(1_000)), "acquire"), Ok(Step::Sleep { .. })));
        assert!(wait.abandon().is_some());
        assert!(wait.abandon().is_none(), "given back once");
    }

    #[test]
    fn a_lease_held_elsewhere_is_asked_for_again_after_a_growing_pause_within_the_timeout() {
        let (mut wait, first) = SharedWait::start(0, Some(30_000_000), Place::newcomer(0));
        assert!(matches!(first, Step::Ask { max_wait_us: Some(30_000) }));
        let mut now = 0;
        let mut pauses = Vec::new();
        loop {
            match wait.after(now, Outcome::NoLease { retry_us: 1_000_000, ticket: 0 }, "acquire") {
                Ok(Step::Sleep { until_ns }) => {
                    pauses.push(until_ns - now);
                    now = until_ns;
                    assert!(matches!(wait.woke(now), Step::Ask { .. }));
                }
                Ok(other) => panic!("{other:?}"),
                Err(err) => {
                    assert!(err.to_string().contains("acquire: no concurrency slot within its timeout"), "{err}");
                    break;
                }
            }
        }
        assert_eq!(pauses[..4], [2_000_000, 4_000_000, 8_000_000, 16_000_000]);
        assert_eq!(now, 30_000_000, "the last pause ends at the deadline");
    }

    #[test]
    fn a_waiter_keeps_its_ticket_while_it_waits_and_leaves_the_line_once() {
        let place = Place { waiter: "w".into(), ticket: 0, priority: 3 };
        let (mut wait, _) = SharedWait::start(0, None, place);
        assert!(matches!(wait.after(0, Outcome::NoLease { retry_us: 1_000, ticket: 7 }, "acquire"), Ok(Step::Sleep { .. })));
        assert_eq!((wait.place().ticket, wait.place().priority), (7, 3), "its next ask keeps its place");
        assert_eq!(wait.leave_line().map(|p| p.ticket), Some(7));
        assert!(wait.leave_line().is_none(), "left once");
        assert!(matches!(wait.after(0, Outcome::NoLease { retry_us: 1_000, ticket: 8 }, "acquire"), Ok(Step::Sleep { .. })));
        assert!(matches!(wait.after(0, Outcome::Admitted(grant(0)), "acquire"), Ok(Step::Admitted(_))));
        assert!(wait.leave_line().is_none(), "admitted: Redis took it out of the line");
    }

    #[test]
    fn a_waiter_whose_turn_at_the_rate_has_not_come_asks_again_when_redis_says_until_its_deadline() {
        let (mut wait, _) = SharedWait::start(0, Some(900_000_000), Place::newcomer(0));
        let Ok(Step::Sleep { until_ns }) = wait.after(0, Outcome::NotYet { retry_us: 400_000, ticket: 1 }, "acquire") else { panic!() };
        assert_eq!(until_ns, 400_000_000, "as long as Redis says, not the lease line's short pauses");
        assert_eq!(wait.place().ticket, 1);
        assert!(matches!(wait.woke(100_000_000), Step::Sleep { until_ns: 400_000_000 }), "a timer that ends the sleep early does not ask sooner");
        assert!(matches!(wait.woke(until_ns), Step::Ask { max_wait_us: Some(500_000) }));
        let Ok(Step::Sleep { until_ns }) = wait.after(400_000_000, Outcome::NotYet { retry_us: 800_000, ticket: 1 }, "acquire") else { panic!() };
        assert_eq!(until_ns, 900_000_000, "cut short by its deadline");
        let err = wait.after(until_ns, Outcome::NotYet { retry_us: 1_000, ticket: 1 }, "acquire").unwrap_err();
        assert!(err.to_string().contains("acquire: no turn at the rate limits within its timeout"), "{err}");
        assert_eq!(wait.leave_line().map(|p| p.ticket), Some(1), "it still stands in line: its driver takes it out");
    }

    #[test]
    fn the_pause_never_outlasts_the_lease_holders_ttl() {
        let (mut wait, _) = SharedWait::start(0, None, Place::newcomer(0));
        let Ok(Step::Sleep { until_ns }) = wait.after(0, Outcome::NoLease { retry_us: 500, ticket: 0 }, "acquire") else { panic!() };
        assert_eq!(until_ns, 500_000);
    }
}
