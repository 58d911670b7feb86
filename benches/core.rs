//! Criterion benches for the limiter core, holysheep beside governor (a dev-dependency) in the same run.
//! Every result is asserted once before it is timed, so a bench can never time the wrong path.
//!
//! - `clock/now`: one clock read, holysheep's `MonotonicClock` beside governor's default clock (both
//!   quanta over the CPU's time-stamp counter). Every decision below pays one of these.
//! - `gcra/check`: one uncontended GCRA decision on the real clock. `allow` has a rate so high that
//!   every call passes (the CAS path); `deny` has an exhausted bucket (a load and a comparison).
//!   holysheep = `MonotonicClock::now_ns` + `GcraCell::decide` over a `Gcra`; governor =
//!   `RateLimiter::direct(..).check()` with its default clock. The `limiter_*` rows are the whole
//!   `Limiter::try_acquire` a user calls (waiters check, concurrency permit, clock, quota) over a
//!   single GCRA limit or a single exact window.
//! - `gcra/contended`: the `allow` path on one limiter shared by 2 threads (this machine's cores).
//!   Each thread makes `iters` decisions after a barrier; the time reported is the wall time divided
//!   by `iters`, i.e. one decision as each thread sees it (equal to the uncontended figure if the two
//!   threads never got in each other's way).
//! - `quota/multi_window`: one all-or-nothing decision over 4 windows (per second, minute, hour, day),
//!   and over requests + tokens. Time comes from a manual clock moved one second per decision, so the
//!   exact logs stay bounded and every decision is admitted; governor, which has no multi-window
//!   quota, is what its user would write: one limiter per window checked in turn (not all or nothing),
//!   on its fake clock moved the same way. Both sides pay one atomic clock step per decision.
//! - `keyed/1m_keys`: one decision for one of 1,000,000 keys, taken in turn, on the real clock:
//!   holysheep's `KeyedLimiter` beside governor's keyed limiter (its default DashMap store). With
//!   `mostly_allow` each key has room for far more requests than the run makes; with `mostly_deny`
//!   each key spent its one request per hour before timing. Before timing, the heap bytes each
//!   structure holds per key are printed (a counting allocator wraps the system one for that).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use governor::clock::{Clock as GovernorClock, DefaultClock, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota as GovernorQuota, RateLimiter};
use holysheep::core::cell::GcraCell;
use holysheep::core::clock::NS_PER_SEC as SEC;
use holysheep::core::gcra::Gcra;
use holysheep::core::{
    Algorithm, Clock, Cost, Decision, KeyedLimiter, Limit, Limiter, ManualClock, MonotonicClock, Quota, Receipt, Unit,
};

type GovernorLimiter<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as GovernorClock>::Instant>>;

/// Far more per second than any loop here can ask: every decision passes.
const HUGE_RATE: u32 = 1_000_000_000;

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("a positive count")
}

fn per_decision_group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    group
}

/// Our GCRA value and its cell: a huge rate, or one per hour already spent.
fn our_gcra(allow: bool) -> (Gcra, GcraCell) {
    let gcra =
        if allow { Gcra::new(u64::from(HUGE_RATE), SEC, u64::from(HUGE_RATE)) } else { Gcra::new(1, 3_600 * SEC, 1) };
    let cell = GcraCell::new();
    if !allow {
        cell.decide(&gcra, 1, 0, 0);
    }
    (gcra, cell)
}

/// Governor's direct limiter on its default clock: a huge rate, or one per hour already spent.
fn governor_limiter(allow: bool) -> DefaultDirectRateLimiter {
    let quota = if allow { GovernorQuota::per_second(nonzero(HUGE_RATE)) } else { GovernorQuota::per_hour(nonzero(1)) };
    let limiter = RateLimiter::direct(quota);
    if !allow {
        limiter.check().expect("the first request passes");
    }
    limiter
}

/// A whole limiter over one limit: a huge rate, or one per hour already spent.
fn our_limiter(algorithm: Algorithm, allow: bool) -> Limiter {
    let (amount, period) = if allow { (f64::from(HUGE_RATE), SEC) } else { (1.0, 3_600 * SEC) };
    let burst = (algorithm == Algorithm::Gcra).then_some(amount);
    let limit = Limit::new(amount, period, Unit::Requests, algorithm, burst).expect("a valid limit");
    let limiter = Limiter::new(vec![limit], None, MonotonicClock::new()).expect("a valid limiter");
    if !allow {
        assert!(limiter.try_acquire(Cost::request(0)).unwrap(), "the first request passes");
    }
    limiter
}

fn decide(gcra: &Gcra, cell: &GcraCell, clock: &MonotonicClock) -> Decision {
    let now = clock.now_ns();
    cell.decide(gcra, 1, now, now).0
}

fn clock_now(c: &mut Criterion) {
    let mut group = per_decision_group(c, "clock/now");
    let ours = MonotonicClock::new();
    group.bench_function(BenchmarkId::new("holysheep", "monotonic"), |b| b.iter(|| ours.now_ns()));
    let theirs = DefaultClock::default();
    group.bench_function(BenchmarkId::new("governor", "default"), |b| b.iter(|| theirs.now()));
    group.finish();
}

fn gcra_check(c: &mut Criterion) {
    let mut group = per_decision_group(c, "gcra/check");
    let clock = MonotonicClock::new();
    for (path, allow) in [("allow", true), ("deny", false)] {
        let (gcra, cell) = our_gcra(allow);
        assert_eq!(decide(&gcra, &cell, &clock).is_admitted(), allow);
        group.bench_function(BenchmarkId::new("holysheep", path), |b| b.iter(|| decide(&gcra, &cell, &clock)));

        let governor = governor_limiter(allow);
        assert_eq!(governor.check().is_ok(), allow);
        group.bench_function(BenchmarkId::new("governor", path), |b| b.iter(|| governor.check()));

        for (name, algorithm) in [("limiter_gcra", Algorithm::Gcra), ("limiter_exact", Algorithm::Exact)] {
            let limiter = our_limiter(algorithm, allow);
            assert_eq!(limiter.try_acquire(Cost::request(0)).unwrap(), allow);
            let id = BenchmarkId::new("holysheep", format!("{name}_{path}"));
            group.bench_function(id, |b| b.iter(|| limiter.try_acquire(black_box(Cost::request(0)))));
        }
    }
    group.finish();
}

/// Runs `decide` `iters` times on each of 2 threads started together; the wall time of the slower.
fn on_two_threads(iters: u64, decide: impl Fn() -> bool + Send + Sync + 'static) -> Duration {
    let decide = Arc::new(decide);
    let start = Arc::new(Barrier::new(3));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (decide, start) = (Arc::clone(&decide), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                for _ in 0..iters {
                    black_box(decide());
                }
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    for thread in threads {
        thread.join().expect("a bench thread");
    }
    began.elapsed()
}

fn gcra_contended(c: &mut Criterion) {
    let mut group = per_decision_group(c, "gcra/contended");
    let clock = MonotonicClock::new();
    let (gcra, cell) = our_gcra(true);
    let cell = Arc::new(cell);
    assert!(decide(&gcra, &cell, &clock).is_admitted());
    group.bench_function(BenchmarkId::new("holysheep", "allow"), |b| {
        b.iter_custom(|iters| {
            let cell = Arc::clone(&cell);
            let clock = clock.clone();
            on_two_threads(iters, move || decide(&gcra, &cell, &clock).is_admitted())
        })
    });

    let governor = Arc::new(governor_limiter(true));
    assert!(governor.check().is_ok());
    group.bench_function(BenchmarkId::new("governor", "allow"), |b| {
        b.iter_custom(|iters| {
            let governor = Arc::clone(&governor);
            on_two_threads(iters, move || governor.check().is_ok())
        })
    });

    for (name, algorithm) in [("limiter_gcra_allow", Algorithm::Gcra), ("limiter_exact_allow", Algorithm::Exact)] {
        let limiter = Arc::new(our_limiter(algorithm, true));
        assert!(limiter.try_acquire(Cost::request(0)).unwrap());
        group.bench_function(BenchmarkId::new("holysheep", name), |b| {
            b.iter_custom(|iters| {
                let limiter = Arc::clone(&limiter);
                on_two_threads(iters, move || limiter.try_acquire(Cost::request(0)).unwrap())
            })
        });
    }
    group.finish();
}

/// Limits that one decision a second, with `TOKENS` tokens each, never exhausts.
const TOKENS: u32 = 100;

fn per(amount: f64, secs: u64, unit: Unit, algorithm: Algorithm) -> Limit {
    let burst = (algorithm == Algorithm::Gcra).then_some(amount);
    Limit::new(amount, secs * SEC, unit, algorithm, burst).expect("a valid limit")
}

fn four_windows(algorithm: Algorithm) -> Quota {
    let limits = [(10.0, 1), (1_000.0, 60), (10_000.0, 3_600), (100_000.0, 86_400)];
    Quota::new(limits.iter().map(|&(amount, secs)| per(amount, secs, Unit::Requests, algorithm)).collect())
        .expect("a valid quota")
}

fn requests_and_tokens() -> Quota {
    let limits = vec![per(1_000.0, 60, Unit::Requests, Algorithm::Exact), per(1e6, 60, Unit::Tokens, Algorithm::Exact)];
    Quota::new(limits).expect("a valid quota")
}

/// One decision a second later than the last, as our quota sees it.
fn quota_step(quota: &Quota, clock: &ManualClock, cost: Cost) -> Decision {
    clock.advance(SEC);
    let now = clock.now_ns();
    quota.decide(cost, now, now, &mut Receipt::default())
}

/// Governor limiters on one fake clock, each `(period, amount)`.
fn governor_windows(clock: &FakeRelativeClock, windows: &[(Duration, u32)]) -> Vec<GovernorLimiter<FakeRelativeClock>> {
    windows
        .iter()
        .map(|&(period, amount)| {
            let quota =
                GovernorQuota::with_period(period / amount).expect("a positive period").allow_burst(nonzero(amount));
            RateLimiter::direct_with_clock(quota, clock.clone())
        })
        .collect()
}

fn quota_multi_window(c: &mut Criterion) {
    let mut group = per_decision_group(c, "quota/multi_window");
    for (name, algorithm) in [("4_windows_exact", Algorithm::Exact), ("4_windows_gcra", Algorithm::Gcra)] {
        let (quota, clock) = (four_windows(algorithm), ManualClock::new(0));
        assert_eq!(quota_step(&quota, &clock, Cost::request(0)), Decision::Now);
        group.bench_function(BenchmarkId::new("holysheep", name), |b| {
            b.iter(|| quota_step(&quota, &clock, black_box(Cost::request(0))))
        });
    }
    let (quota, clock) = (requests_and_tokens(), ManualClock::new(0));
    let cost = Cost::request(u64::from(TOKENS));
    assert_eq!(quota_step(&quota, &clock, cost), Decision::Now);
    group.bench_function(BenchmarkId::new("holysheep", "requests_tokens"), |b| {
        b.iter(|| quota_step(&quota, &clock, black_box(cost)))
    });

    let secs = Duration::from_secs;
    let clock = FakeRelativeClock::default();
    let windows = [(secs(1), 10), (secs(60), 1_000), (secs(3_600), 10_000), (secs(86_400), 100_000)];
    let limiters = governor_windows(&clock, &windows);
    let check_all = || {
        clock.advance(secs(1));
        limiters.iter().all(|limiter| limiter.check().is_ok())
    };
    assert!(check_all());
    group.bench_function(BenchmarkId::new("governor", "4_windows_in_turn"), |b| b.iter(check_all));

    let clock = FakeRelativeClock::default();
    let limiters = governor_windows(&clock, &[(secs(60), 1_000), (secs(60), 1_000_000)]);
    let check_both = || {
        clock.advance(secs(1));
        limiters[0].check().is_ok() && limiters[1].check_n(nonzero(black_box(TOKENS))).is_ok_and(|r| r.is_ok())
    };
    assert!(check_both());
    group.bench_function(BenchmarkId::new("governor", "requests_tokens_in_turn"), |b| b.iter(check_both));
    group.finish();
}

/// The system allocator, counting the bytes held, so that `keyed_1m_keys` can report bytes per key.
struct CountingAllocator;

static HEAP_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HEAP_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HEAP_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HEAP_BYTES.fetch_add(new_size, Ordering::Relaxed);
        HEAP_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const KEYS: u64 = 1_000_000;

/// The `i`th key: spread over the u64 range like the hashes Python hands the keyed limiter.
fn key(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Builds a keyed limiter with `decide` run once for every key; returns it and the heap bytes it holds
/// per key.
fn filled<T>(build: impl FnOnce() -> T, decide: impl Fn(&T, u64) -> bool) -> (T, f64) {
    let before = HEAP_BYTES.load(Ordering::Relaxed);
    let limiter = build();
    for i in 0..KEYS {
        assert!(decide(&limiter, key(i)), "each key's first request passes");
    }
    let held = HEAP_BYTES.load(Ordering::Relaxed) - before;
    (limiter, held as f64 / KEYS as f64)
}

/// Per key: 1,000 an hour with all of them at once (`allow`), or one an hour.
fn per_key_limit(allow: bool) -> (Limit, GovernorQuota) {
    let amount: u32 = if allow { 1_000 } else { 1 };
    let ours = Limit::new(f64::from(amount), 3_600 * SEC, Unit::Requests, Algorithm::Gcra, Some(f64::from(amount)));
    (ours.expect("a valid limit"), GovernorQuota::per_hour(nonzero(amount)))
}

fn keyed_1m_keys(c: &mut Criterion) {
    let mut group = per_decision_group(c, "keyed/1m_keys");
    for (path, allow) in [("mostly_allow", true), ("mostly_deny", false)] {
        let (limit, quota) = per_key_limit(allow);
        let build = || KeyedLimiter::new(vec![limit], 2 * KEYS, 3_600 * SEC, MonotonicClock::new()).expect("valid");
        let (ours, ours_bytes) = filled(build, |lim, key| lim.try_acquire(key, Cost::request(0)).unwrap());
        assert_eq!(ours.len() as u64, KEYS);
        let (theirs, their_bytes) =
            filled(|| DefaultKeyedRateLimiter::<u64>::keyed(quota), |lim, key| lim.check_key(&key).is_ok());
        println!("keyed/1m_keys/{path}: heap bytes per key: holysheep {ours_bytes:.1}, governor {their_bytes:.1}");
        assert_eq!(ours.try_acquire(key(0), Cost::request(0)).unwrap(), allow);
        assert_eq!(theirs.check_key(&key(0)).is_ok(), allow);

        let mut i = 0;
        group.bench_function(BenchmarkId::new("holysheep", path), |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                ours.try_acquire(key(i), Cost::request(0))
            })
        });
        group.bench_function(BenchmarkId::new("governor", path), |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                theirs.check_key(&key(i))
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    // Short runs: the whole file is run several times and the medians of those runs are quoted.
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = clock_now, gcra_check, gcra_contended, quota_multi_window, keyed_1m_keys
}
criterion_main!(benches);
