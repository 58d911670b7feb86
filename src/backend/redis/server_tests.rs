//! The scripts against a real redis-server, started on a free loopback port for each test (skipped,
//! saying why, when redis-server is not installed; `make test` installs it).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::clock::NS_PER_SEC;
use crate::core::gcra::Gcra;
use crate::core::limit::{Algorithm, Cost, Limit, Unit};
use crate::core::Error;
use crate::backend::redis::limiter::{Counted, Place};
use crate::backend::redis::tcp_connection::SPIN;
use crate::backend::redis::{Backend, BackendError, Grant, Mode, Outcome, RemoteLimiter, Timeouts, leases, runtime};

pub(super) struct Server {
    child: Child,
    pub(super) url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn start_server() -> Option<Server> {
    start_server_with(&[])
}

impl Server {
    /// Stops this redis-server and starts another on its port, without its data (nor the scripts).
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port: u16 = self.url.rsplit(':').next().unwrap().trim_end_matches("/0").parse().unwrap();
        self.child = spawn_on(port, &[]).expect("redis-server started before");
        assert!(serves(&mut self.child, port), "redis-server did not start again on its port");
    }
}

fn spawn_on(port: u16, extra: &[&str]) -> std::io::Result<Child> {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
}

/// Whether `child` is the redis-server answering on `port`, once it answers. Tests run in parallel,
/// and a free port found by one can be taken by another's server before this one binds it: then
/// `child` exits, and another server answers there.
fn serves(child: &mut Child, port: u16) -> bool {
    let started = Instant::now();
    let url = format!("redis://127.0.0.1:{port}/0");
    while started.elapsed() < Duration::from_secs(5) {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        let info: Option<String> = redis::Client::open(url.as_str())
            .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut connection| redis::cmd("INFO").arg("server").query(&mut connection))
            .ok();
        if let Some(info) = info {
            return info.lines().any(|line| line.trim() == format!("process_id:{}", child.id()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A redis-server with `extra` settings (e.g. `--rename-command FCALL ""`: a server without Functions),
/// on a free port.
fn start_server_with(extra: &[&str]) -> Option<Server> {
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let Ok(mut child) = spawn_on(port, extra) else {
            eprintln!("skipped: redis-server is not installed (make test installs it)");
            return None;
        };
        if serves(&mut child, port) {
            return Some(Server { child, url: format!("redis://127.0.0.1:{port}/0") });
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("redis-server did not start on any of 5 free ports");
}

pub(super) fn admin(server: &Server) -> redis::Connection {
    redis::Client::open(server.url.as_str()).unwrap().get_connection().unwrap()
}

/// Redis held still (SIGSTOP) until dropped, as a busy or slow one would be: connections stay open and
/// requests wait for their answers.
pub(super) struct Stalled(String);

impl Stalled {
    pub(super) fn new(server: &Server) -> Self {
        let info: String = redis::cmd("INFO").arg("server").query(&mut admin(server)).unwrap();
        let pid = info.split("process_id:").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap();
        let stalled = Stalled(pid.to_string());
        stalled.signal("-STOP");
        stalled
    }

    fn signal(&self, name: &str) {
        assert!(Command::new("kill").args([name, &self.0]).status().unwrap().success());
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        self.signal("-CONT");
    }
}

pub(super) fn limiter(server: &Server, limits: Vec<Limit>, max_leases: Option<u64>, ttl: Duration) -> Arc<RemoteLimiter> {
    let timeouts = Timeouts { connect: Duration::from_secs(1), command: Duration::from_secs(1), spin: SPIN };
    let backend = Backend::new(&server.url, "test", timeouts, None, false).unwrap();
    Arc::new(RemoteLimiter::new(backend, "team", limits, max_leases, ttl).unwrap())
}

fn decide(limiter: &Arc<RemoteLimiter>, cost: Cost, mode: Mode, lease: bool) -> Outcome {
    let handle = runtime::handle().unwrap();
    handle.block_on(limiter.decide(cost, 0.0, mode, lease, &Place::newcomer(0), "acquire")).map_err(|e| format!("{e:?}")).unwrap()
}

fn remaining(limiter: &Arc<RemoteLimiter>) -> Vec<u64> {
    limiter.peek_blocking(Cost::request(0)).map_err(|e| format!("{e:?}")).unwrap().remaining
}

pub(super) fn admitted(outcome: Outcome) -> Grant {
    match outcome {
        Outcome::Admitted(grant) => grant,
        other => panic!("expected an admission, got {other:?}"),
    }
}

pub(super) fn limit(n: f64, period_ms: u64, unit: Unit, algorithm: Algorithm) -> Limit {
    let burst = (algorithm == Algorithm::Gcra).then_some(1.0);
    Limit::new(n, period_ms * NS_PER_SEC / 1000, unit, algorithm, burst).unwrap()
}

#[test]
fn exact_window_admits_the_full_limit_at_once_then_when_the_oldest_leaves() {
    let Some(server) = start_server() else { return };
    let lim = limiter(&server, vec![limit(3.0, 2_000, Unit::Requests, Algorithm::Exact)], None, Duration::from_secs(5));
    let first = admitted(decide(&lim, Cost::request(0), Mode::Now, false));
    std::thread::sleep(Duration::from_millis(10));
    for _ in 0..2 {
        assert_eq!(admitted(decide(&lim, Cost::request(0), Mode::Now, false)).wait_us, 0);
    }
    assert!(matches!(decide(&lim, Cost::request(0), Mode::Now, false), Outcome::Later { limit: 0, .. }));
    let next = admitted(decide(&lim, Cost::request(0), Mode::Reserve { max_wait_us: None }, false));
    assert_eq!(next.at_us, first.at_us + 2_000_000, "the fourth goes exactly when the first leaves");
    // The second and third came within 1/1024 of the window of each other: one entry, dated the later.
    let fifth = admitted(decide(&lim, Cost::request(0), Mode::Reserve { max_wait_us: None }, false));
    assert!(fifth.at_us > first.at_us + 2_010_000 && fifth.at_us < first.at_us + 2_500_000, "{fifth:?}");
}

// A short window's log key expires with its last entry while the state hash lives on for a longer
// window: its count must go too. It stayed, and the next request it pushed over the limit searched the
// empty log for entries to wait out forever: Redis ran the script until killed (BUSY for every client).
#[test]
fn a_short_windows_count_goes_with_its_expired_log_while_a_longer_window_lives_on() {
    let Some(server) = start_server() else { return };
    let short = limit(2.0, 200, Unit::Requests, Algorithm::Exact);
    let long = limit(100.0, 60_000, Unit::Requests, Algorithm::Exact);
    let lim = limiter(&server, vec![short, long], None, Duration::from_secs(5));
    for _ in 0..2 {
        admitted(decide(&lim, Cost::request(0), Mode::Now, false));
    }
    // The short log's key lives its window and one second more.
    std::thread::sleep(Duration::from_millis(1_500));
    admitted(decide(&lim, Cost::request(0), Mode::Now, false));
    assert_eq!(remaining(&lim), vec![1, 97]);
}

// Expiries are set about once per window length, not per decision (acquire.lua's `expiry`): a key
// made afresh in between must get one all the same, and every key must outlive what it counts.
#[test]
fn every_key_of_a_limit_expires_and_outlives_what_it_counts() {
    let Some(server) = start_server() else { return };
    let short = limit(2.0, 200, Unit::Requests, Algorithm::Exact);
    let long = limit(100.0, 60_000, Unit::Requests, Algorithm::Exact);
    let lim = limiter(&server, vec![short, long], None, Duration::from_secs(5));
    let ttl_ms = |key: &str| cli(&server, &["PTTL", key]).parse::<i64>().unwrap();
    let (state, short_log, long_log) = (&lim.keys()[0], &lim.keys()[6], &lim.keys()[7]);
    admitted(decide(&lim, Cost::request(0), Mode::Now, false));
    for key in [state, short_log, long_log] {
        assert!(ttl_ms(key) > 61_000, "{key}: {}", ttl_ms(key));
    }
    // The short window's entry leaves it: the next admission empties its log (Redis deletes the key)
    // and makes it afresh, while the others' expiry still reaches far enough not to be set again.
    std::thread::sleep(Duration::from_millis(300));
    admitted(decide(&lim, Cost::request(0), Mode::Now, false));
    let fresh = ttl_ms(short_log);
    assert!(fresh > 61_000, "the log made afresh expires with the others: {fresh}");
    assert_eq!(remaining(&lim), vec![1, 98]);
}

// A settle that counts into a log that counted nothing yet makes it with a short expiry of its own:
// the next admission must not take the limit's longer `expiry` for it.
#[test]
fn a_log_a_settle_made_is_kept_as_long_as_later_admissions_need_it() {
    let Some(server) = start_server() else { return };
    let lim = limiter(&server, vec![limit(1_000.0, 60_000, Unit::Tokens, Algorithm::Exact)], None, Duration::from_secs(5));
    let grant = admitted(decide(&lim, Cost::request(0), Mode::Now, false));
    lim.adjust_blocking(&grant, Cost::request(0), Cost::request(500), false).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    admitted(decide(&lim, Cost::request(400), Mode::Now, false));
    let ttl_ms: i64 = cli(&server, &["PTTL", &lim.keys()[6]]).parse().unwrap();
    assert!(ttl_ms > 100_000, "the log outlives the second admission's window by twice: {ttl_ms} ms");
}

#[test]
fn windows_admit_all_or_nothing() {
    let Some(server) = start_server() else { return };
    let requests = limit(10.0, 60_000, Unit::Requests, Algorithm::Exact);
    let tokens = limit(1_000.0, 60_000, Unit::Tokens, Algorithm::Exact);
    let lim = limiter(&server, vec![requests, tokens], None, Duration::from_secs(5));
    admitted(decide(&lim, Cost::request(900), Mode::Now, false));
    assert!(matches!(decide(&lim, Cost::request(200), Mode::Now, false), Outcome::Later { limit: 1, .. }));
    let peek = lim.peek_blocking(Cost::request(0)).map_err(|e| format!("{e:?}")).unwrap();
    assert_eq!(peek.remaining, vec![9, 100], "the refused request counted in neither window");
}

#[test]
fn settle_refunds_and_give_back_returns_everything() {
    let Some(server) = start_server() else { return };
    let tokens = limit(1_000.0, 60_000, Unit::Tokens, Algorithm::Exact);
    let lim = limiter(&server, vec![tokens], None, Duration::from_secs(5));
    let grant = admitted(decide(&lim, Cost::request(900), Mode::Now, false));
    lim.adjust_blocking(&grant, Cost::request(900), Cost::request(300), false).unwrap();
    assert_eq!(lim.peek_blocking(Cost::request(0)).unwrap().remaining, vec![700]);
    lim.adjust_blocking(&grant, Cost::request(300), Cost::request(0), false).unwrap();
    assert_eq!(lim.peek_blocking(Cost::request(0)).unwrap().remaining, vec![1_000]);
}

// A receipt names its log entry by the log's sequence number, which started again from 0 once the
// limit's keys expired (idle past their TTL): an admission settled or given back that late corrected
// the newer admission that now had its number, so the window undercounted (a give-back) or overcounted
// (a charge).
#[test]
fn a_late_correction_after_the_keys_expired_leaves_a_newer_admissions_count_alone() {
    let Some(server) = start_server() else { return };
    let tokens = limit(1_000.0, 100, Unit::Tokens, Algorithm::Exact);
    let lim = limiter(&server, vec![tokens], None, Duration::from_secs(5));
    let old = admitted(decide(&lim, Cost::request(600), Mode::Now, false));
    let started = Instant::now();
    while cli(&server, &["EXISTS", &lim.keys()[0]]) != "0" {
        assert!(started.elapsed() < Duration::from_secs(5), "the limit's keys never expired");
        std::thread::sleep(Duration::from_millis(50));
    }
    admitted(decide(&lim, Cost::request(600), Mode::Now, false));
    lim.adjust_blocking(&old, Cost::request(600), Cost::request(0), false).unwrap();
    assert_eq!(remaining(&lim), vec![400], "a late give-back takes nothing from the newer admission");
    lim.adjust_blocking(&old, Cost::request(600), Cost::request(900), false).unwrap();
    assert_eq!(remaining(&lim), vec![400], "a late charge adds nothing to it");
}

#[test]
fn a_cost_no_window_can_pass_is_refused_at_once() {
    let Some(server) = start_server() else { return };
    let tokens = limit(1_000.0, 60_000, Unit::Tokens, Algorithm::Exact);
    let lim = limiter(&server, vec![tokens], None, Duration::from_secs(5));
    let handle = runtime::handle().unwrap();
    let refusal = handle.block_on(lim.decide(Cost::request(1_200), 0.0, Mode::Now, false, &Place::newcomer(0), "acquire")).unwrap_err();
    let message = format!("{:?}", refusal.unwrap());
    assert!(message.contains("never passes") && message.contains("1200 tokens"), "{message}");
}

#[test]
fn gcra_paces_one_interval_apart() {
    let Some(server) = start_server() else { return };
    let lim = limiter(&server, vec![limit(10.0, 1_000, Unit::Requests, Algorithm::Gcra)], None, Duration::from_secs(5));
    let first = admitted(decide(&lim, Cost::request(0), Mode::Now, false));
    let second = admitted(decide(&lim, Cost::request(0), Mode::Reserve { max_wait_us: None }, false));
    assert_eq!(second.at_us, first.at_us + 100_000);
}

/// The most units admitted (at the instants Redis gave) in any half-open interval of `window_us`.
fn most_in_any_window(mut admissions: Vec<(u64, u64)>, window_us: u64) -> u64 {
    admissions.sort_unstable();
    let (mut start, mut inside, mut most) = (0, 0, 0);
    for &(at, units) in &admissions {
        inside += units;
        while admissions[start].0 + window_us <= at {
            inside -= admissions[start].1;
            start += 1;
        }
        most = most.max(inside);
    }
    most
}

/// Ten per second with a burst of 5 and a 10 ms guard: at most 14 in any 1.01 s.
fn gcra_burst_5(unit: Unit) -> Limit {
    Limit::new(10.0, NS_PER_SEC, unit, Algorithm::Gcra, Some(5.0)).unwrap().with_guard(10_000_000)
}

// Issue 15: a cut widened the script's tolerance with the interval (the burst times the cut interval),
// so 14 admitted at the full rate made room for more in the same window once the rate was cut.
#[test]
fn a_gcra_limit_cut_by_follow_admits_no_more_than_count_plus_burst_in_any_window() {
    let Some(server) = start_server() else { return };
    let lim = limiter(&server, vec![gcra_burst_5(Unit::Requests)], None, Duration::from_secs(5));
    let reserve = Mode::Reserve { max_wait_us: Some(3_000_000) };
    let mut admissions: Vec<(u64, u64)> = (0..14).map(|_| (admitted(decide(&lim, Cost::request(0), reserve, false)).at_us, 1)).collect();
    lim.follow([0.1, 1.0]);
    for _ in 0..2 {
        admissions.push((admitted(decide(&lim, Cost::request(0), reserve, false)).at_us, 1));
    }
    assert_eq!(most_in_any_window(admissions, 1_010_000), 14);
}

// The tolerance stays the configured burst times the configured interval after a cut: two counted at
// the full rate leave room for one more at half the rate (the old script said four).
#[test]
fn what_remains_after_a_cut_is_what_the_gcra_admits() {
    let Some(server) = start_server() else { return };
    let lim = limiter(&server, vec![gcra_burst_5(Unit::Requests)], None, Duration::from_secs(5));
    for _ in 0..2 {
        admitted(decide(&lim, Cost::request(0), Mode::Now, false));
    }
    lim.follow([0.5, 1.0]);
    assert_eq!(remaining(&lim), vec![1]);
    admitted(decide(&lim, Cost::request(0), Mode::Now, false));
    assert!(matches!(decide(&lim, Cost::request(0), Mode::Now, false), Outcome::Later { .. }));
}

/// The script's GCRA mirrors the core's pure functions exactly (in microseconds) through admissions
/// that wait on another window, cuts, give-backs and settles up and down: every instant it admits at
/// and every receipt it returns is what `Gcra` computes from the same numbers.
#[test]
fn the_scripts_gcra_is_the_cores_through_cuts_give_backs_and_settles() {
    let Some(server) = start_server() else { return };
    let tokens = Limit::new(1_000.0, NS_PER_SEC, Unit::Tokens, Algorithm::Gcra, Some(1_000.0)).unwrap();
    let lim = limiter(&server, vec![gcra_burst_5(Unit::Requests), tokens], None, Duration::from_secs(5));
    let mirror = |factors: [f64; 2]| -> Vec<(Gcra, Unit)> {
        let by_unit = |unit| if unit == Unit::Requests { factors[0] } else { factors[1] };
        lim.windows
            .iter()
            .map(|w| (Gcra::new(1, w.span_us, w.limit).with_unit_ns(w.in_force(by_unit(w.unit)).1), w.unit))
            .collect()
    };
    let mut tats = [0u64; 2];
    let mut gcras = mirror([1.0, 1.0]);
    let reserve = Mode::Reserve { max_wait_us: None };
    let admit = |gcras: &[(Gcra, Unit)], tats: &mut [u64; 2], cost: Cost| -> Grant {
        let grant = admitted(decide(&lim, cost, reserve, false));
        let now = grant.at_us - grant.wait_us;
        let units = |unit: Unit| unit.of(cost);
        let at = gcras.iter().zip(tats.iter()).filter(|((_, unit), _)| units(*unit) > 0);
        let at = at.map(|((gcra, unit), &tat)| gcra.schedule(tat, units(*unit), now).unwrap().at).fold(now, u64::max);
        assert_eq!(grant.at_us, at, "admitted at the instant every window agrees on");
        for ((gcra, unit), tat) in gcras.iter().zip(tats.iter_mut()) {
            if units(*unit) > 0 {
                *tat = gcra.schedule(*tat, units(*unit), at).unwrap().tat;
            }
        }
        let Counted::InRedis { receipts, .. } = &grant.counted else { panic!("counted in Redis") };
        let expected: Vec<u64> = gcras.iter().zip(tats.iter()).map(|((_, unit), &tat)| if units(*unit) > 0 { tat } else { 0 }).collect();
        assert_eq!(receipts, &expected);
        grant
    };
    let receipt = |grant: &Grant, index: usize| match &grant.counted {
        Counted::InRedis { receipts, .. } => receipts[index],
        Counted::Here { .. } | Counted::Nowhere => unreachable!("counted in Redis"),
    };
    for _ in 0..3 {
        admit(&gcras, &mut tats, Cost::request(200));
    }
    let last = admit(&gcras, &mut tats, Cost::request(300));
    lim.adjust_blocking(&last, Cost::request(300), Cost::default(), false).unwrap();
    for (index, ((gcra, unit), tat)) in gcras.iter().zip(tats.iter_mut()).enumerate() {
        *tat = gcra.give_back(*tat, receipt(&last, index), unit.of(Cost::request(300))).unwrap();
    }
    gcras = mirror([0.5, 0.3]);
    lim.follow([0.5, 0.3]);
    // Waits for the tokens: counted by the requests window from then, not from when it asked.
    admit(&gcras, &mut tats, Cost::request(400));
    admit(&gcras, &mut tats, Cost::request(0));
    // Settled up: charged at the interval in force (the TATs are ahead of Redis's clock here, so
    // `charge` does not need it).
    let settled = admit(&gcras, &mut tats, Cost::request(100));
    lim.adjust_blocking(&settled, Cost::request(100), Cost::request(250), false).unwrap();
    assert!(tats[1] > settled.at_us, "the tokens' TAT is still ahead");
    tats[1] = gcras[1].0.charge(tats[1], 150, 0);
    // Settled down after a later admission: nothing given back (the later one built on this TAT).
    let later = admit(&gcras, &mut tats, Cost::request(100));
    lim.adjust_blocking(&settled, Cost::request(250), Cost::request(50), false).unwrap();
    // Given back while last: at the configured interval, never the (wider) one in force.
    lim.adjust_blocking(&later, Cost::request(100), Cost::request(40), false).unwrap();
    tats[1] = gcras[1].0.give_back(tats[1], receipt(&later, 1), 60).unwrap();
    for _ in 0..3 {
        admit(&gcras, &mut tats, Cost::request(150));
    }
}

#[test]
fn leases_are_bounded_released_and_expire() {
    let Some(server) = start_server() else { return };
    let lim = limiter(&server, vec![], Some(2), Duration::from_millis(300));
    let one = admitted(decide(&lim, Cost::request(0), Mode::Now, true));
    let _two = admitted(decide(&lim, Cost::request(0), Mode::Now, true));
    assert!(matches!(decide(&lim, Cost::request(0), Mode::Now, true), Outcome::NoLease { .. }));
    lim.adjust_blocking(&one, Cost::request(0), Cost::request(0), true).unwrap();
    admitted(decide(&lim, Cost::request(0), Mode::Now, true));
    // Another instance (a process that died holding leases) stops renewing: they expire by themselves.
    let other = limiter(&server, vec![], Some(2), Duration::from_millis(300));
    drop(lim);
    assert!(matches!(decide(&other, Cost::request(0), Mode::Now, true), Outcome::NoLease { .. }));
    std::thread::sleep(Duration::from_millis(700));
    admitted(decide(&other, Cost::request(0), Mode::Now, true));
}

#[test]
fn held_leases_are_renewed_past_their_ttl() {
    let Some(server) = start_server() else { return };
    let lim = limiter(&server, vec![], Some(1), Duration::from_millis(300));
    admitted(decide(&lim, Cost::request(0), Mode::Now, true));
    std::thread::sleep(Duration::from_millis(700));
    assert!(matches!(decide(&lim, Cost::request(0), Mode::Now, true), Outcome::NoLease { .. }));
}

// Issue 15: a usd budget on a limiter shared in Redis was never counted.
#[test]
fn a_budget_refuses_at_once_instead_of_waiting_and_settles_in_dollars() {
    let Some(server) = start_server() else { return };
    let budget = Limit::new(1.0, 3_600 * NS_PER_SEC, Unit::Usd, Algorithm::Exact, None).unwrap();
    let lim = limiter(&server, vec![limit(100.0, 1_000, Unit::Requests, Algorithm::Exact), budget], None, Duration::from_secs(5));
    let reserve = Mode::Reserve { max_wait_us: None };
    let handle = runtime::handle().unwrap();
    let grant = match handle.block_on(lim.decide(Cost::priced(100_000, 8.0), 8.0, reserve, false, &Place::newcomer(0), "acquire")) {
        Ok(Outcome::Admitted(grant)) => grant,
        other => panic!("expected an admission, got {other:?}"),
    };
    assert_eq!(remaining(&lim), vec![99, 200_000], "$0.80 of $1.00 spent");
    match handle.block_on(lim.decide(Cost::priced(100_000, 8.0), 8.0, reserve, false, &Place::newcomer(0), "acquire")) {
        Err(Ok(Error::BudgetExceeded { message })) => assert!(message.contains("$0.800000 would cross the budget"), "{message}"),
        other => panic!("expected the budget to refuse at once, got {other:?}"),
    }
    assert!(matches!(
        handle.block_on(lim.decide(Cost::priced(1_000_000, 8.0), 8.0, reserve, false, &Place::newcomer(0), "acquire")),
        Err(Ok(Error::BudgetExceeded { .. }))
    ), "more than the whole budget is a budget refusal too");
    lim.adjust_blocking(&grant, Cost::priced(100_000, 8.0), Cost::priced(25_000, 8.0), false).unwrap();
    assert_eq!(remaining(&lim), vec![99, 800_000], "settled at $0.20");
}

// Issue 15: 2.5 per second admitted 2 at once and 2 more 0.8 s later.
#[test]
fn a_fractional_limit_admits_its_whole_units_in_any_full_period() {
    let Some(server) = start_server() else { return };
    let lim = limiter(&server, vec![limit(2.5, 1_000, Unit::Requests, Algorithm::Exact)], None, Duration::from_secs(5));
    let first = admitted(decide(&lim, Cost::request(0), Mode::Now, false));
    admitted(decide(&lim, Cost::request(0), Mode::Now, false));
    let third = admitted(decide(&lim, Cost::request(0), Mode::Reserve { max_wait_us: None }, false));
    assert!(third.at_us >= first.at_us + 1_000_000, "the third went {} us after the first", third.at_us - first.at_us);
}

// Issue 15: after a stall, acquires the client gave up on held their leases for the whole TTL.
#[test]
fn a_lease_given_up_on_is_reclaimed_whether_redis_ran_its_acquire_or_not() {
    let Some(server) = start_server() else { return };
    let lim = limiter(&server, vec![], Some(2), Duration::from_secs(15));
    let held = admitted(decide(&lim, Cost::request(0), Mode::Now, true));
    // An acquire the client gave up on before Redis ran it: withdrawn first, it takes nothing.
    let (late, ask) = lim.ask(Cost::request(0), 0.0, Mode::Now, true, &Place::newcomer(0));
    let given_up = lim.gave_up(ask.clone(), BackendError::Unavailable { message: "timed out".into() });
    assert!(matches!(given_up, BackendError::Unavailable { .. }));
    // And one that Redis ran, but whose answer never came: its lease goes back.
    leases::owe(&lim, held.lease.clone().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let answer = runtime::handle().unwrap().block_on(lim.backend().call(|mut c| async move { late.run_async(&mut c).await }));
    assert!(lim.interpret(answer.unwrap(), ask, "acquire").is_err(), "the late acquire was refused");
    assert_eq!(lim.peek_blocking(Cost::request(0)).unwrap().leases, 0);
}

#[test]
fn what_a_process_admitted_alone_is_counted_in_redis_when_it_answers_again() {
    let Some(server) = start_server() else { return };
    let lim = limiter(&server, vec![limit(10.0, 60_000, Unit::Requests, Algorithm::Exact)], Some(4), Duration::from_secs(5));
    admitted(decide(&lim, Cost::request(0), Mode::Now, false));
    // Redis away: this process is the whole fleet it saw, with 9 left.
    let alone: Vec<Grant> = (0..3)
        .map(|_| match lim.decide_locally(Cost::request(0), 0.0, Mode::Now, true, "acquire") {
            Ok(Outcome::Admitted(grant)) => grant,
            other => panic!("expected a local admission, got {other:?}"),
        })
        .collect();
    assert!(alone.iter().all(|grant| matches!(grant.counted, Counted::Here { .. })));
    admitted(decide(&lim, Cost::request(0), Mode::Now, false));
    assert_eq!(remaining(&lim), vec![5], "1 before, 3 alone, 1 after");
    assert_eq!(lim.peek_blocking(Cost::request(0)).unwrap().leases, 3, "the slots still running are leases now");
    lim.adjust_blocking(&alone[0], Cost::request(0), Cost::request(0), true).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lim.peek_blocking(Cost::request(0)).unwrap().leases, 2, "and released there");
}

fn cli(server: &Server, args: &[&str]) -> String {
    let port = server.url.rsplit(':').next().unwrap().trim_end_matches("/0");
    let out = Command::new("redis-cli").args(["-p", port]).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// Issue 19: the scripts are one Functions library, which a server that lost it gets again without an
// error reaching the caller.
#[test]
fn the_scripts_live_as_a_functions_library_loaded_again_when_the_server_lost_it() {
    let Some(server) = start_server() else { return };
    let lim = limiter(&server, vec![limit(100.0, 1_000, Unit::Requests, Algorithm::Exact)], Some(4), Duration::from_secs(5));
    let grant = admitted(decide(&lim, Cost::request(0), Mode::Now, true));
    assert!(cli(&server, &["FUNCTION", "LIST"]).contains("holysheep_"), "the library is on the server");
    assert_eq!(cli(&server, &["SCRIPT", "EXISTS", "0000000000000000000000000000000000000000"]), "0");
    cli(&server, &["FUNCTION", "FLUSH"]);
    lim.adjust_blocking(&grant, Cost::request(0), Cost::request(0), true).expect("released after a flush");
    cli(&server, &["FUNCTION", "FLUSH"]);
    admitted(decide(&lim, Cost::request(0), Mode::Now, true));
    cli(&server, &["FUNCTION", "FLUSH"]);
    assert_eq!(remaining(&lim), vec![98]);
}

// Issue 19: a server without Functions (before Redis 7.0) runs the same scripts by EVALSHA.
#[test]
fn a_server_without_functions_runs_the_scripts_by_evalsha() {
    let Some(server) = start_server_with(&["--rename-command", "FCALL", "", "--rename-command", "FUNCTION", ""]) else { return };
    let lim = limiter(&server, vec![limit(2.0, 60_000, Unit::Requests, Algorithm::Exact)], Some(4), Duration::from_secs(5));
    let grant = admitted(decide(&lim, Cost::request(0), Mode::Now, true));
    assert!(!lim.backend().dialect().functions());
    cli(&server, &["SCRIPT", "FLUSH"]);
    lim.adjust_blocking(&grant, Cost::request(0), Cost::request(0), true).unwrap();
    admitted(decide(&lim, Cost::request(0), Mode::Now, true));
    assert!(matches!(decide(&lim, Cost::request(0), Mode::Now, true), Outcome::Later { .. }));
}

fn ask_in_line(lim: &Arc<RemoteLimiter>, place: &mut Place) -> Option<Grant> {
    let handle = runtime::handle().unwrap();
    match handle.block_on(lim.decide(Cost::request(0), 0.0, Mode::Reserve { max_wait_us: None }, true, place, "acquire")) {
        Ok(Outcome::Admitted(grant)) => Some(grant),
        Ok(Outcome::NoLease { ticket, .. }) => {
            assert!(ticket > 0, "a waiter joins the line");
            place.ticket = ticket;
            None
        }
        other => panic!("{other:?}"),
    }
}

// Issue 19: a slot released anywhere goes to the front of the fleet's line (priority, then arrival),
// never to a newcomer or to whoever asks first.
#[test]
fn a_released_slot_goes_to_the_front_of_the_fleets_line_by_priority_then_arrival() {
    let Some(server) = start_server() else { return };
    let (a, b) = (
        limiter(&server, vec![], Some(1), Duration::from_secs(5)),
        limiter(&server, vec![], Some(1), Duration::from_secs(5)),
    );
    let held = admitted(decide(&a, Cost::request(0), Mode::Now, true));
    let mut first = b.place(0);
    let mut urgent = a.place(5);
    let mut second = b.place(0);
    assert!(ask_in_line(&b, &mut first).is_none());
    assert!(ask_in_line(&b, &mut second).is_none());
    assert!(ask_in_line(&a, &mut urgent).is_none());
    a.adjust_blocking(&held, Cost::request(0), Cost::request(0), true).unwrap();
    assert!(matches!(decide(&a, Cost::request(0), Mode::Now, true), Outcome::NoLease { .. }), "no overtaking the line");
    assert!(ask_in_line(&b, &mut second).is_none(), "not its turn");
    assert!(ask_in_line(&b, &mut first).is_none(), "the higher priority goes first");
    let got = ask_in_line(&a, &mut urgent).expect("the urgent waiter's turn");
    a.adjust_blocking(&got, Cost::request(0), Cost::request(0), true).unwrap();
    assert!(ask_in_line(&b, &mut second).is_none(), "arrival order within a priority");
    assert!(ask_in_line(&b, &mut first).is_some());
}

#[test]
fn a_waiter_that_gives_up_or_stops_asking_leaves_the_line() {
    let Some(server) = start_server() else { return };
    let lim = limiter(&server, vec![], Some(1), Duration::from_secs(5));
    let held = admitted(decide(&lim, Cost::request(0), Mode::Now, true));
    let (mut gone, mut quitter, mut next) = (lim.place(0), lim.place(0), lim.place(0));
    for place in [&mut gone, &mut quitter, &mut next] {
        assert!(ask_in_line(&lim, place).is_none());
    }
    lim.leave_line(&quitter);
    lim.adjust_blocking(&held, Cost::request(0), Cost::request(0), true).unwrap();
    // `gone` never asks again: its place expires, and `next` (behind the one that left) gets the slot.
    let started = Instant::now();
    while ask_in_line(&lim, &mut next).is_none() {
        assert!(started.elapsed() < Duration::from_secs(3), "a dead waiter held up the line");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(started.elapsed() >= Duration::from_secs(1), "a live waiter keeps its place between asks");
}

// A restart closes every connection: a blocking caller's pooled one failed its next call, an outage
// under fail_closed. The call that finds its connection closed goes again on a new one.
#[test]
fn a_restart_costs_a_blocking_caller_no_error() {
    let Some(mut server) = start_server() else { return };
    let lim = limiter(&server, vec![limit(100.0, 1_000, Unit::Requests, Algorithm::Exact)], Some(4), Duration::from_secs(5));
    let before = admitted(lim.decide_blocking(Cost::request(0), 0.0, Mode::Now, true, &Place::newcomer(0), "try_acquire").unwrap());
    lim.adjust_blocking(&before, Cost::request(0), Cost::request(0), true).unwrap();
    server.restart();
    let after = lim.decide_blocking(Cost::request(0), 0.0, Mode::Now, true, &Place::newcomer(0), "try_acquire");
    let after = admitted(after.map_err(|e| format!("{e:?}")).unwrap());
    lim.adjust_blocking(&after, Cost::request(0), Cost::request(0), true).unwrap();
}

/// A limiter of one slot whose backend gives up on an answer after 200 ms.
fn impatient(server: &Server) -> (Arc<Backend>, Arc<RemoteLimiter>) {
    let timeouts = Timeouts { connect: Duration::from_millis(200), command: Duration::from_millis(200), spin: SPIN };
    let backend = Backend::new(&server.url, "test", timeouts, None, false).unwrap();
    let lim = Arc::new(RemoteLimiter::new(Arc::clone(&backend), "team", vec![], Some(1), Duration::from_secs(15)).unwrap());
    (backend, lim)
}

/// Ends `stalled`, and returns how long after that `done` held (2 s at most).
fn time_after_stall(stalled: Stalled, done: impl Fn() -> bool) -> Duration {
    drop(stalled);
    let resumed = Instant::now();
    while !done() && resumed.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(1));
    }
    resumed.elapsed()
}

// The pause after a failure ends the moment Redis answers again, though nobody decides: a probe waits
// on the stalled server all along (without it, a decision would wait for the pause to run out). The
// outage itself ends with the next decision that succeeds.
#[test]
fn the_pause_after_a_failure_ends_as_soon_as_redis_answers_again() {
    let Some(server) = start_server() else { return };
    let (backend, lim) = impatient(&server);
    let recoveries = backend.recoveries();
    let stalled = Stalled::new(&server);
    assert!(lim.peek_blocking(Cost::request(0)).is_err(), "the decision timed out");
    // Once its pause of 50 ms has passed, another decision times out: a pause of 100 ms follows.
    std::thread::sleep(Duration::from_millis(600));
    assert!(lim.peek_blocking(Cost::request(0)).is_err());
    assert!(backend.check_pause().is_err(), "Redis is away");
    let open_after = time_after_stall(stalled, || backend.check_pause().is_ok());
    assert!(open_after < Duration::from_millis(50), "decisions go to Redis {open_after:?} after the stall");
    assert_eq!(backend.recoveries(), recoveries, "no decision succeeded yet");
    assert!(lim.peek_blocking(Cost::request(0)).is_ok());
    assert_eq!(backend.recoveries(), recoveries + 1);
}

// What was owed to Redis during a stall goes soon after it answers again: a slot released during a
// stall is free within a few ms of its end, not after the backend's pause (up to half a second).
#[test]
fn a_slot_released_during_a_stall_is_free_as_soon_as_the_stall_ends() {
    let Some(server) = start_server() else { return };
    let (_, lim) = impatient(&server);
    let held = admitted(decide(&lim, Cost::request(0), Mode::Now, true));
    let slots = || -> u64 { redis::cmd("ZCARD").arg("{test:team}:leases").query(&mut admin(&server)).unwrap() };
    assert_eq!(slots(), 1);
    let stalled = Stalled::new(&server);
    // Its release cannot reach Redis: owed, and tried until the pause after each timeout has grown.
    leases::owe(&lim, held.lease.unwrap());
    std::thread::sleep(Duration::from_millis(1200));
    let free_after = time_after_stall(stalled, || slots() == 0);
    assert!(free_after < Duration::from_millis(60), "the slot was free {free_after:?} after the stall");
}
