//! Priority across the fleet for waits at the rate, against a real redis-server (see server_tests.rs):
//! a request of higher priority in one process goes ahead of a lower-priority backlog of another, a
//! priority keeps arrival order, waiters that give up or die leave the line, and random arrivals at
//! random priorities, costs and timeouts from several instances never put more in a window than its
//! limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::redis::limiter::Place;
use crate::backend::redis::server_tests::{admitted, limit, limiter, start_server};
use crate::backend::redis::shared::{SharedWait, Step};
use crate::backend::redis::{Grant, Mode, Outcome, RemoteLimiter};
use crate::core::clock::{Clock, MonotonicClock};
use crate::core::limit::{Algorithm, Cost, Unit};

/// One ask at the rate for `place`, on this thread: the grant, or None when it must ask again (its
/// ticket noted, as the drivers do).
fn ask(lim: &Arc<RemoteLimiter>, place: &mut Place) -> Option<Grant> {
    match lim.decide_blocking(Cost::request(0), 0.0, Mode::Reserve { max_wait_us: None }, false, place, "acquire") {
        Ok(Outcome::Admitted(grant)) => Some(grant),
        Ok(Outcome::NotYet { ticket, .. }) => {
            assert!(ticket > 0, "a waiter stands in line");
            place.ticket = ticket;
            None
        }
        other => panic!("{other:?}"),
    }
}

/// Sleeps until Redis's clock reads `at_us` less `before_us` (Redis runs on this machine's clock).
fn sleep_until(at_us: u64, before_us: u64) {
    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64;
    std::thread::sleep(Duration::from_micros((at_us - before_us).saturating_sub(now_us)));
}

// Issue 19: a rate wait used to reserve its instant when Redis decided it, first come first reserved,
// so an urgent request of another process waited behind a whole low-priority backlog.
#[test]
fn a_higher_priority_waiter_of_another_process_goes_ahead_of_a_lower_priority_backlog_at_the_rate() {
    let Some(server) = start_server() else { return };
    let one_per = || vec![limit(1.0, 600, Unit::Requests, Algorithm::Exact)];
    let (a, b) = (limiter(&server, one_per(), None, Duration::from_secs(5)), limiter(&server, one_per(), None, Duration::from_secs(5)));
    let first = admitted(a.decide_blocking(Cost::request(0), 0.0, Mode::Now, false, &Place::newcomer(0), "acquire").unwrap());
    let (mut low, mut later) = (a.place(0), a.place(0));
    assert!(ask(&a, &mut low).is_none(), "a wait past the horizon stands in line");
    assert!(ask(&a, &mut later).is_none());
    let mut urgent = b.place(5);
    assert!(ask(&b, &mut urgent).is_none());
    // The next instant comes within reach: the front of the line, not the first to arrive, takes it.
    sleep_until(first.at_us + 600_000, 200_000);
    assert!(ask(&a, &mut low).is_none(), "the urgent waiter stands ahead");
    let got = ask(&b, &mut urgent).expect("the urgent waiter's turn");
    assert_eq!(got.at_us, first.at_us + 600_000);
    sleep_until(got.at_us + 600_000, 200_000);
    assert!(ask(&a, &mut later).is_none(), "arrival order within a priority");
    assert_eq!(ask(&a, &mut low).expect("the first low one's turn").at_us, got.at_us + 600_000);
    sleep_until(got.at_us + 1_200_000, 200_000);
    assert!(ask(&a, &mut later).is_some());
}

#[test]
fn a_newcomer_reserves_at_once_within_the_horizon_but_never_ahead_of_a_waiter_of_its_priority() {
    let Some(server) = start_server() else { return };
    let lim = limiter(&server, vec![limit(1.0, 200, Unit::Requests, Algorithm::Exact)], None, Duration::from_secs(5));
    let first = admitted(lim.decide_blocking(Cost::request(0), 0.0, Mode::Now, false, &Place::newcomer(0), "acquire").unwrap());
    let near = ask(&lim, &mut lim.place(0)).expect("200 ms off: reserved in the same ask");
    assert_eq!(near.at_us, first.at_us + 200_000);
    let mut waiting = lim.place(1);
    assert!(ask(&lim, &mut waiting).is_none(), "400 ms off: in line");
    assert!(ask(&lim, &mut lim.place(1)).is_none(), "behind a waiter of its priority, however near its instant");
    let refused = lim.decide_blocking(Cost::request(0), 0.0, Mode::Now, false, &Place::newcomer(1), "acquire").unwrap();
    assert!(matches!(refused, Outcome::Later { .. } | Outcome::NotYet { .. }), "{refused:?}");
}

#[test]
fn a_rate_waiter_that_gives_up_or_stops_asking_leaves_the_line_and_takes_nothing() {
    let Some(server) = start_server() else { return };
    let lim = limiter(&server, vec![limit(1.0, 500, Unit::Requests, Algorithm::Exact)], None, Duration::from_secs(5));
    let first = admitted(lim.decide_blocking(Cost::request(0), 0.0, Mode::Now, false, &Place::newcomer(0), "acquire").unwrap());
    let (mut dead, mut quitter, mut next) = (lim.place(9), lim.place(9), lim.place(0));
    for place in [&mut dead, &mut quitter, &mut next] {
        assert!(ask(&lim, place).is_none());
    }
    lim.leave_line(&quitter);
    // `dead` never asks again: its place expires (2 s), then `next` takes the instant nobody took.
    let started = Instant::now();
    let got = loop {
        if let Some(grant) = ask(&lim, &mut next) {
            break grant;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "a dead waiter held up the line");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(started.elapsed() >= Duration::from_millis(1_500), "a live waiter keeps its place between asks");
    assert!(got.at_us < first.at_us + 2 * 500_000 + 2_600_000, "nobody else counted: {} us after the first", got.at_us - first.at_us);
    assert_eq!(lim.peek_blocking(Cost::request(0)).unwrap().remaining, vec![0], "one admission in the window");
}

// A long backlog must not cost Redis an ask per waiter every second: a waiter is told to ask again
// when its turn may come (here its instant less the horizon), and its place lasts until then.
#[test]
fn a_waiter_far_from_its_turn_asks_again_only_near_it_and_keeps_its_place_meanwhile() {
    let Some(server) = start_server() else { return };
    let lim = limiter(&server, vec![limit(1.0, 3_000, Unit::Requests, Algorithm::Exact)], None, Duration::from_secs(5));
    admitted(lim.decide_blocking(Cost::request(0), 0.0, Mode::Now, false, &Place::newcomer(0), "acquire").unwrap());
    let patient = lim.place(0);
    let reserve = Mode::Reserve { max_wait_us: None };
    let Ok(Outcome::NotYet { retry_us, ticket: 1 }) = lim.decide_blocking(Cost::request(0), 0.0, reserve, false, &patient, "acquire") else { panic!() };
    assert!((2_700_000..=2_750_000).contains(&retry_us), "asks again at its instant less the horizon: {retry_us} us");
    // Within the horizon of the instant, 2.8 s after it last asked (a place used to last 2 s):
    std::thread::sleep(Duration::from_millis(2_800));
    let mut behind = lim.place(0);
    assert!(ask(&lim, &mut behind).is_none(), "the patient waiter still stands ahead");
    let mut patient = Place { ticket: 1, ..patient };
    assert!(ask(&lim, &mut patient).is_some(), "its turn");
}

/// Waits for `cost` at `priority` as the drivers do (`SharedWait`, blocking asks): Redis's time of its
/// admission, or None when it gave up at its deadline.
fn wait_for(lim: &Arc<RemoteLimiter>, cost: Cost, priority: i64, max_wait: Option<Duration>) -> Option<u64> {
    let clock = MonotonicClock::new();
    let max_wait_ns = max_wait.map(|d| d.as_nanos() as u64);
    let (mut wait, mut step) = SharedWait::start(clock.now_ns(), max_wait_ns, lim.place(priority));
    let admitted = loop {
        step = match step {
            Step::Admitted(grant) => break Some(grant.at_us),
            Step::Ask { max_wait_us } => {
                let decided = lim.decide_blocking(cost, 0.0, Mode::Reserve { max_wait_us }, false, wait.place(), "acquire");
                match wait.answered(clock.now_ns(), decided.map_err(|e| format!("{e:?}")).unwrap(), lim, "acquire") {
                    Ok(next) => next,
                    Err(_) => break None,
                }
            }
            Step::Sleep { until_ns } => {
                std::thread::sleep(Duration::from_nanos(until_ns.saturating_sub(clock.now_ns())));
                wait.woke(clock.now_ns())
            }
        };
    };
    if let Some(place) = wait.leave_line() {
        lim.leave_line(&place);
    }
    admitted
}

/// A small deterministic generator (xorshift64*), so a failing seed can be run again.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fraction(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The most units admitted in any window of `span_us` by Redis's times of the admissions.
fn most_in_any_window(admissions: &[(u64, u64)], span_us: u64) -> u64 {
    admissions
        .iter()
        .map(|&(start, _)| admissions.iter().filter(|&&(at, _)| at >= start && at < start + span_us).map(|&(_, units)| units).sum())
        .max()
        .unwrap_or(0)
}

// Overruns are the worst defect: waiters of several instances at random priorities, costs, arrival
// times and timeouts (some give up in line) under random fractional limits never put more in a window
// than its limit allows.
#[test]
fn random_waiters_at_random_priorities_never_put_more_in_a_window_than_its_limit() {
    for seed in [0x9E37_79B9_7F4A_7C15_u64, 0xD1B5_4A32_D192_ED03] {
        let Some(server) = start_server() else { return };
        let mut random = Random(seed);
        let (requests, request_span) = (2.0 + 3.0 * random.fraction(), 200 + random.below(300));
        let (tokens, token_span) = (60.0 + 90.0 * random.fraction(), 200 + random.below(400));
        let limits = || {
            vec![limit(requests, request_span, Unit::Requests, Algorithm::Exact), limit(tokens, token_span, Unit::Tokens, Algorithm::Exact)]
        };
        let instances: Vec<Arc<RemoteLimiter>> = (0..3).map(|_| limiter(&server, limits(), None, Duration::from_secs(5))).collect();
        let workers: Vec<_> = (0..6)
            .map(|worker| {
                let lim = Arc::clone(&instances[worker % instances.len()]);
                let mut random = Random(seed ^ (worker as u64 + 1).wrapping_mul(0x1000_0000_01B3));
                std::thread::spawn(move || {
                    let mut admitted = Vec::new();
                    for _ in 0..6 {
                        std::thread::sleep(Duration::from_millis(random.below(120)));
                        let cost = Cost::request(random.below(50));
                        let max_wait = (random.below(3) == 0).then(|| Duration::from_millis(100 + random.below(600)));
                        if let Some(at_us) = wait_for(&lim, cost, random.below(4) as i64, max_wait) {
                            admitted.push((at_us, cost));
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: Vec<(u64, Cost)> = workers.into_iter().flat_map(|worker| worker.join().unwrap()).collect();
        assert!(admitted.len() >= 12, "seed {seed:#x}: {} admitted", admitted.len());
        let by = |units: fn(&Cost) -> u64| admitted.iter().map(|(at, cost)| (*at, units(cost))).collect::<Vec<_>>();
        let (most_requests, most_tokens) = (most_in_any_window(&by(|c| c.requests), request_span * 1_000), most_in_any_window(&by(|c| c.tokens), token_span * 1_000));
        assert!(most_requests <= requests as u64, "seed {seed:#x}: {most_requests} requests in one window of {request_span} ms, limit {requests}");
        assert!(most_tokens <= tokens as u64, "seed {seed:#x}: {most_tokens} tokens in one window of {token_span} ms, limit {tokens}");
    }
}
