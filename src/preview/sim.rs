//! The simulation: traffic played through a limiter configured as the user's, on a virtual clock, and
//! sent to a server model. Time jumps from one event to the next (an arrival, a waiter's reserved
//! instant or deadline, an answer), so an hour of traffic runs in a fraction of a second.
//!
//! The client here does what the Python drivers and the transport do, with the same core calls: take
//! the limiter at once when it is free (`try_reserve`), else stand in its line (`enqueue`, then `poll`
//! whenever the line wakes the waiter or its sleep ends); send; hand the server's answer to the limiter
//! (`record_server_rejection` or `record_server_answer`, and what its `x-ratelimit-*` say is left);
//! release the slot when the answer is in; after a 429, try again once the server's delay has passed,
//! through the limiter again, up to `max_attempts` in all. A request reaches the server at the instant
//! the limiter admits it (no network time): the limiter's guard is what covers that trip in real life.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};

use crate::core::clock::{Clock, ManualClock};
use crate::core::error::Error;
use crate::core::feedback::FOLLOWED;
use crate::core::limiter::{Admission, Limiter, Next, Wake};
use crate::core::line::Ticket;
use crate::core::limit::Cost;
use crate::gateway::{self, Latency};
use crate::preview::outcome::{Outcome, Recorder};
use crate::preview::server::ServerModel;
use crate::preview::traffic::Arrival;

/// The API key the simulated client sends: the server counts one key.
const KEY: &str = "preview";

/// How the requests are sent, beside the traffic itself.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// When each request arrives, in order, and its LLM tokens.
    pub arrivals: Vec<Arrival>,
    /// How long the server takes to answer an admitted request: the MockGateway's own model, drawn
    /// from `seed` for request n as the MockGateway draws it.
    pub latency: Latency,
    pub seed: u64,
    /// Dollars per million tokens: what a budget counts, and what an answered request costs.
    pub usd_per_million: f64,
    /// Attempts per request in all, against the server's 429s (1: none retried).
    pub max_attempts: u32,
    /// How long a request may wait for the limiter before it gives up; `None`: as long as it takes.
    pub timeout_ns: Option<u64>,
}

/// Runs `scenario` through a limiter configured as `limiter` (never `limiter` itself) and `server`.
pub fn run<C: Clock>(limiter: &Limiter<C>, server: Option<&ServerModel>, scenario: &Scenario) -> Outcome {
    let clock = ManualClock::new(0);
    let mut sim = Sim::new(limiter.configured_on(clock.clone()), clock, server, scenario);
    sim.play();
    sim.recorder.finish(sim.limiter.limits(), sim.limiter.max_concurrency(), server)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The server's answer to request n arrives (a 429 included).
    Answer(usize),
    /// Request n polls the line again (its sleep or deadline ended), unless its generation moved on.
    Poll(usize, u32),
    /// Request n tries again after a 429.
    Retry(usize),
}

/// Wakes a parked waiter: the simulation polls it at the current instant.
struct Woken {
    queue: Arc<Mutex<Vec<usize>>>,
    request: usize,
}

impl Wake for Woken {
    fn wake(&self) {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(self.request);
    }
}

/// Where a request stands in the limiter's line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum InLine {
    #[default]
    Out,
    /// Waiting to be woken (for a slot, or behind the waiter holding the rate reservation).
    Parked,
    /// Holding the line's rate reservation until its instant.
    Sleeping,
}

#[derive(Debug, Default)]
struct Request {
    tokens: u64,
    attempts: u32,
    ticket: Option<Ticket>,
    entered_ns: u64,
    in_line: InLine,
    /// Bumped at every poll, so that a scheduled poll made stale by a later one is skipped.
    generation: u32,
}

/// An admitted request waiting for its answer.
struct Sent {
    admission: Admission,
    /// The server's admission (its concurrency slot is freed when this is dropped), if it has one.
    server: Option<gateway::Admission>,
}

struct Sim<'a> {
    limiter: Limiter<ManualClock>,
    clock: ManualClock,
    server: Option<gateway::KeyLimiter>,
    scenario: &'a Scenario,
    requests: Vec<Request>,
    sent: HashMap<usize, Sent>,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    scheduled: u64,
    woken: Arc<Mutex<Vec<usize>>>,
    /// Requests the server has seen, numbered as the MockGateway numbers them to draw latency.
    server_seq: u64,
    /// The limit that made the waiter holding the line's rate reservation (there is one at most) wait.
    sleeping_for: Option<Holding>,
    parked: usize,
    recorder: Recorder,
}

impl<'a> Sim<'a> {
    fn new(limiter: Limiter<ManualClock>, clock: ManualClock, server: Option<&ServerModel>, scenario: &'a Scenario) -> Self {
        let requests = scenario.arrivals.iter().map(|arrival| Request { tokens: arrival.tokens, ..Request::default() }).collect();
        Self {
            recorder: Recorder::new(limiter.limits().len()),
            limiter,
            clock,
            server: server.map(ServerModel::key_limiter),
            scenario,
            requests,
            sent: HashMap::new(),
            events: BinaryHeap::new(),
            scheduled: 0,
            woken: Arc::default(),
            server_seq: 0,
            sleeping_for: None,
            parked: 0,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_ns()
    }

    fn schedule(&mut self, at_ns: u64, event: Event) {
        self.scheduled += 1;
        self.events.push(Reverse((at_ns, self.scheduled, event)));
    }

    fn cost(&self, request: usize) -> Cost {
        Cost::priced(self.requests[request].tokens, self.scenario.usd_per_million)
    }

    /// Every event in time order; at one instant, new arrivals first (a 429 answered at that instant
    /// reaches the client after whatever else it sent then), then the rest in the order scheduled.
    fn play(&mut self) {
        let scenario = self.scenario;
        let arrivals = &scenario.arrivals;
        let mut next_arrival = 0;
        loop {
            let due = self.events.peek().map(|Reverse((at, _, _))| *at);
            let arriving = arrivals.get(next_arrival).map(|arrival| arrival.at_ns);
            let (at_ns, event) = match (due, arriving) {
                (Some(due), Some(arriving)) if arriving <= due => (arriving, None),
                (Some(due), _) => (due, self.events.pop().map(|Reverse((_, _, event))| event)),
                (None, Some(arriving)) => (arriving, None),
                (None, None) => break,
            };
            self.advance_to(at_ns);
            match event {
                None => {
                    self.recorder.arrived();
                    self.attempt(next_arrival);
                    next_arrival += 1;
                }
                Some(Event::Answer(request)) => self.answered(request),
                Some(Event::Poll(request, generation)) => {
                    if self.requests[request].generation == generation && self.requests[request].ticket.is_some() {
                        self.poll(request);
                    }
                }
                Some(Event::Retry(request)) => self.attempt(request),
            }
            self.poll_woken();
            self.recorder.queue(at_ns, self.limiter.waiting(), self.sent.len() as u64);
        }
    }

    /// Moves the clock to `at_ns`, counting the time since the last event to whatever held the line.
    fn advance_to(&mut self, at_ns: u64) {
        let waiting_for_slots = self.parked > 0 && self.limiter.max_concurrency().is_some();
        let holding = self.sleeping_for.or(waiting_for_slots.then_some(Holding::Concurrency));
        self.recorder.held(self.now(), at_ns, holding);
        self.clock.set(at_ns);
    }

    /// One attempt of `request`: at once when the limiter is free, else in its line.
    fn attempt(&mut self, request: usize) {
        let cost = self.cost(request);
        self.requests[request].attempts += 1;
        match self.limiter.try_reserve(cost) {
            Ok(Some(admission)) => self.admitted(request, admission, 0),
            Ok(None) => {
                // As the binding does: a cost that can never pass is refused before any wait.
                if let Err(err) = self.limiter.time_until_ready(cost) {
                    return self.recorder.refused(refusal_kind(&err, false));
                }
                let waker = Arc::new(Woken { queue: Arc::clone(&self.woken), request });
                let ticket = self.limiter.enqueue(cost, 0, self.scenario.timeout_ns, waker);
                let now = self.now();
                let state = &mut self.requests[request];
                (state.ticket, state.entered_ns) = (Some(ticket), now);
                self.poll(request);
            }
            Err(err) => self.recorder.refused(refusal_kind(&err, false)),
        }
    }

    /// Polls the waiter of `request` and does what the line says.
    fn poll(&mut self, request: usize) {
        let ticket = self.requests[request].ticket.expect("only a waiter is polled");
        let cost = self.cost(request);
        // Asked before the poll: when this poll makes it sleep for the rate, this is the limit why.
        let slowest = match self.requests[request].in_line {
            InLine::Sleeping => None,
            _ => self.limiter.explain(cost).map(|(limit, _)| limit),
        };
        let next = self.limiter.poll(ticket);
        let state = &mut self.requests[request];
        state.generation = state.generation.wrapping_add(1);
        let generation = state.generation;
        match next {
            Ok(Next::Ready(admission)) => {
                self.leave_line(request);
                let wait = self.now() - self.requests[request].entered_ns;
                self.admitted(request, admission, wait);
            }
            Ok(Next::SleepUntil(at_ns)) => {
                if self.requests[request].in_line != InLine::Sleeping {
                    self.leave_line(request);
                    self.requests[request].ticket = Some(ticket);
                    self.requests[request].in_line = InLine::Sleeping;
                    self.sleeping_for = slowest.map(Holding::Limit);
                }
                self.schedule(at_ns, Event::Poll(request, generation));
            }
            Ok(Next::Parked(deadline)) => {
                if self.requests[request].in_line != InLine::Parked {
                    self.leave_line(request);
                    self.requests[request].ticket = Some(ticket);
                    self.requests[request].in_line = InLine::Parked;
                    self.parked += 1;
                }
                if let Some(deadline) = deadline {
                    self.schedule(deadline, Event::Poll(request, generation));
                }
            }
            Err(err) => {
                self.leave_line(request);
                self.recorder.refused(refusal_kind(&err, true));
            }
        }
    }

    /// Takes `request` out of the simulation's view of the line (the limiter's line already let it go).
    fn leave_line(&mut self, request: usize) {
        let state = &mut self.requests[request];
        match std::mem::take(&mut state.in_line) {
            InLine::Parked => self.parked -= 1,
            InLine::Sleeping => self.sleeping_for = None,
            InLine::Out => {}
        }
        state.ticket = None;
    }

    /// Polls the waiters the line woke, at this instant, until none is left to wake.
    fn poll_woken(&mut self) {
        loop {
            let woken = std::mem::take(&mut *self.woken.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
            if woken.is_empty() {
                return;
            }
            for request in woken {
                if self.requests[request].ticket.is_some() {
                    self.poll(request);
                }
            }
        }
    }

    /// The limiter admitted `request` after `wait_ns`: it goes to the server now, which answers after
    /// its latency, or refuses it with a 429 at once (as the MockGateway does).
    fn admitted(&mut self, request: usize, admission: Admission, wait_ns: u64) {
        let (now, cost) = (self.now(), self.cost(request));
        self.recorder.admitted(now, wait_ns, cost);
        let answer = self.server.as_ref().map(|server| server.admit(KEY, cost.tokens, now));
        let latency = match answer {
            Some(gateway::Admission::Refused { .. }) => 0,
            _ => self.scenario.latency.sample_ns(self.scenario.seed, self.server_seq),
        };
        self.server_seq += 1;
        self.sent.insert(request, Sent { admission, server: answer });
        self.schedule(now.saturating_add(latency), Event::Answer(request));
    }

    /// The answer of `request` is in: the limiter hears it, then its slot goes back (the server's, when
    /// it held one, is free once it has answered); a 429 is tried again after the server's delay.
    fn answered(&mut self, request: usize) {
        let Sent { admission, server } = self.sent.remove(&request).expect("an answer follows a send");
        let (now, cost) = (self.now(), self.cost(request));
        match server {
            None => {}
            Some(gateway::Admission::Admitted { status, .. }) => {
                self.limiter.record_server_answer();
                self.follow(&admission, cost, &status);
            }
            Some(gateway::Admission::Refused { status, refusal, .. }) => {
                self.recorder.server_refused(now);
                self.limiter.record_server_rejection();
                self.follow(&admission, cost, &status);
                self.release();
                let delay = match refusal {
                    gateway::Refusal::RateLimited { retry_after_ns, .. } => retry_after_ns,
                    // The gateway's retry-after for a full house: every answer in flight is in by then.
                    gateway::Refusal::Concurrency { .. } => Some(self.scenario.latency.max_ns()),
                    gateway::Refusal::InsufficientQuota { .. } => None,
                };
                return match delay {
                    Some(delay) if self.requests[request].attempts < self.scenario.max_attempts => {
                        self.schedule(now.saturating_add(delay), Event::Retry(request));
                    }
                    _ => self.recorder.failed(),
                };
            }
        }
        self.release();
        self.recorder.answered(now, cost);
    }

    /// Hands the limiter what the server's `x-ratelimit-*` say is left, as the transport does.
    fn follow(&self, admission: &Admission, cost: Cost, status: &gateway::RateStatus) {
        for (unit, headroom) in FOLLOWED.into_iter().zip([status.requests, status.tokens]) {
            if let Some(headroom) = headroom {
                self.limiter.record_server_remaining(admission, cost, unit, headroom.remaining, Some(headroom.reset_ns));
            }
        }
    }

    fn release(&self) {
        self.limiter.release().expect("a slot taken is released once");
    }
}

/// What held the line during a stretch of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// The limiter's limit at this index.
    Limit(usize),
    /// Its concurrency bound.
    Concurrency,
}

impl Holding {
    /// The index of what held among the limits, the concurrency bound counted last.
    pub fn index(self, limits: usize) -> usize {
        match self {
            Holding::Limit(index) => index,
            Holding::Concurrency => limits,
        }
    }
}

/// A refusal as the report counts it: a budget crossed; else, before any wait, a cost that never passes
/// (the binding refuses it at once), and in line, a waiter out of time (predicted or spent).
pub fn refusal_kind(err: &Error, in_line: bool) -> &'static str {
    match (err, in_line) {
        (Error::BudgetExceeded { .. }, _) => "over_budget",
        (_, false) => "never",
        (_, true) => "timed_out",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::NS_PER_SEC as SEC;
    use crate::core::limit::{Algorithm, Limit, Unit, default_guard_ns};
    use crate::core::Cost;
    use crate::preview::traffic;

    fn per_minute(n: f64) -> Limit {
        Limit::new(n, 60 * SEC, Unit::Requests, Algorithm::Exact, None).unwrap().with_guard(default_guard_ns(60 * SEC))
    }

    fn limiter(limits: Vec<Limit>, max_concurrency: Option<u64>) -> Limiter<ManualClock> {
        Limiter::new(limits, max_concurrency, ManualClock::new(0)).unwrap()
    }

    fn scenario(arrivals: Vec<Arrival>, latency_ns: u64) -> Scenario {
        Scenario {
            arrivals,
            latency: Latency::Fixed { ns: latency_ns },
            seed: 0,
            usd_per_million: 0.0,
            max_attempts: 5,
            timeout_ns: None,
        }
    }

    fn at_once(count: u64, tokens: u64) -> Vec<Arrival> {
        traffic::from_stages(&[traffic::Stage::AtOnce { count }], tokens).unwrap()
    }

    #[test]
    fn a_thousand_at_once_against_a_hundred_a_minute_drain_in_nine_windows_and_their_guards() {
        let outcome = run(&limiter(vec![per_minute(100.0)], None), None, &scenario(at_once(1_000, 0), 0));
        let window = 60 * SEC + 50_000_000;
        assert_eq!(outcome.drain_ns, 9 * window, "540 s plus 9 guards of 50 ms");
        assert_eq!((outcome.admitted, outcome.answered, outcome.waited), (1_000, 1_000, 900));
        assert_eq!(outcome.wait_p50_ns, 4 * window, "the 500th went with the fifth hundred");
        assert_eq!(outcome.wait_p99_ns, 9 * window);
        assert_eq!(outcome.holders[outcome.binding.unwrap()], "100 requests per minute");
        assert_eq!(outcome.held_ns, [9 * window]);
        assert_eq!(outcome.spans.len(), 1);
    }

    #[test]
    fn a_full_house_holds_the_line_until_answers_come_back() {
        let outcome = run(&limiter(vec![per_minute(1_000.0)], Some(2)), None, &scenario(at_once(10, 0), SEC));
        assert_eq!((outcome.drain_ns, outcome.end_ns), (4 * SEC, 5 * SEC));
        assert_eq!(outcome.holders[outcome.binding.unwrap()], "2 in flight (max_concurrency)");
        assert_eq!(outcome.series.in_flight.iter().max(), Some(&2));
        assert_eq!(outcome.series.queue[0], 8);
    }

    #[test]
    fn the_users_limiter_is_left_alone() {
        let users = limiter(vec![per_minute(5.0)], Some(3));
        let outcome = run(&users, None, &scenario(at_once(20, 0), SEC));
        assert_eq!(outcome.admitted, 20);
        let counts = users.snapshot().counts;
        assert_eq!((counts.admitted, counts.in_flight, counts.waiting), (0, 0, 0));
        assert!(users.try_acquire(Cost::request(0)).unwrap());
    }

    #[test]
    fn a_server_that_allows_less_is_followed_from_its_headers_before_any_429() {
        let server = ServerModel::new(None, Some(100), None, None, 60 * SEC).unwrap();
        let arrivals = traffic::parse("5/s for 2m", 0).unwrap();
        let outcome = run(&limiter(vec![per_minute(300.0)], None), Some(&server), &scenario(arrivals, 0));
        assert_eq!((outcome.server_429s, outcome.answered), (0, 600));
        assert!(outcome.drain_ns >= 5 * 60 * SEC, "600 at the server's 100 a minute take 5 minutes at least");
        assert_eq!(outcome.server_limits, ["100 requests per minute"]);
    }

    #[test]
    fn a_burst_past_the_server_is_answered_429_and_tried_again_after_its_delay() {
        let server = ServerModel::new(None, Some(100), None, None, 60 * SEC).unwrap();
        let outcome = run(&limiter(vec![per_minute(300.0)], None), Some(&server), &scenario(at_once(300, 0), 2 * SEC));
        assert!(outcome.server_429s >= 200, "{} 429s", outcome.server_429s);
        assert_eq!(outcome.answered + outcome.failed, 300);
        assert!(outcome.answered > 100, "retried ones got through: {}", outcome.answered);
        assert!(outcome.series.server_429s_per_s.iter().any(|&per_s| per_s > 0.0));
    }

    #[test]
    fn a_client_within_the_servers_limits_meets_no_429() {
        let server = ServerModel::new(Some("free"), None, None, None, 60 * SEC).unwrap();
        let tokens = Limit::new(10_000.0, 60 * SEC, Unit::Tokens, Algorithm::Exact, None).unwrap().with_guard(50_000_000);
        let users = limiter(vec![per_minute(60.0), tokens], Some(5));
        let arrivals = traffic::parse("ramp 0->3/s over 1m, 3/s for 4m", 250).unwrap();
        let outcome = run(&users, Some(&server), &scenario(arrivals, 2 * SEC));
        assert_eq!(outcome.server_429s, 0);
        assert_eq!(outcome.answered, outcome.requests);
        assert_eq!(outcome.holders[outcome.binding.unwrap()], "10000 tokens per minute");
    }

    #[test]
    fn refusals_are_counted_by_why() {
        let users = limiter(vec![Limit::new(1.0, SEC, Unit::Requests, Algorithm::Exact, None).unwrap()], None);
        let mut patient = scenario(at_once(5, 0), 0);
        patient.timeout_ns = Some(SEC);
        let outcome = run(&users, None, &patient);
        assert_eq!((outcome.admitted, outcome.refusals.get("timed_out").copied()), (2, Some(3)));

        let tokens = Limit::new(100.0, 60 * SEC, Unit::Tokens, Algorithm::Exact, None).unwrap();
        let outcome = run(&limiter(vec![tokens], None), None, &scenario(at_once(3, 101), 0));
        assert_eq!(outcome.refusals.get("never").copied(), Some(3));

        let budget = Limit::new(0.002, 3_600 * SEC, Unit::Usd, Algorithm::Exact, None).unwrap();
        let mut priced = scenario(at_once(3, 100), 0);
        priced.usd_per_million = 8.0;
        let outcome = run(&limiter(vec![budget], None), None, &priced);
        assert_eq!((outcome.answered, outcome.refusals.get("over_budget").copied()), (2, Some(1)));
        assert!((outcome.cost_usd - 0.0016).abs() < 1e-12, "{}", outcome.cost_usd);
    }

    #[test]
    fn a_waiter_parked_for_a_slot_gives_up_at_its_deadline() {
        let mut patient = scenario(at_once(2, 0), 10 * SEC);
        patient.timeout_ns = Some(SEC);
        let outcome = run(&limiter(vec![], Some(1)), None, &patient);
        assert_eq!((outcome.admitted, outcome.refusals.get("timed_out").copied()), (1, Some(1)));
        assert_eq!(outcome.series.queue[0], 1);
    }

    proptest::proptest! {
        /// Whatever the arrivals, the fractional limit and the latency: the preview's admissions never
        /// put more than the whole part of the limit in any interval of the guarded period, and every
        /// request is answered.
        #[test]
        fn the_preview_never_admits_past_a_limit(
            gaps_ms in proptest::collection::vec(0u64..400, 1..150),
            amount in 1.0f64..12.0,
            latency_ms in 0u64..3_000,
            slots in proptest::option::of(1u64..6),
        ) {
            let limit = Limit::new(amount, SEC, Unit::Requests, Algorithm::Exact, None).unwrap().with_guard(SEC / 100);
            let mut at = 0;
            let times: Vec<(f64, u64)> = gaps_ms.iter().map(|gap| { at += gap; (at as f64 / 1e3, 0) }).collect();
            let outcome = run(&limiter(vec![limit], slots), None, &scenario(traffic::from_times(times).unwrap(), latency_ms * 1_000_000));
            proptest::prop_assert_eq!(outcome.answered, outcome.requests);
            let (count, window) = limit.whole_window();
            for (i, &start) in outcome.admitted_at_ns.iter().enumerate() {
                let inside = outcome.admitted_at_ns[i..].iter().take_while(|&&t| t < start + window).count() as u64;
                proptest::prop_assert!(inside <= count, "{} admitted in the window from {}", inside, start);
            }
        }
    }

    #[test]
    fn the_use_of_each_limit_reaches_one_while_it_binds() {
        let outcome = run(&limiter(vec![per_minute(100.0)], None), None, &scenario(at_once(300, 0), 0));
        let most = outcome.series.use_of[0].iter().cloned().fold(0.0, f64::max);
        assert_eq!(most, 1.0);
    }
}
