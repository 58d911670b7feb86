//! Properties of the limits over random arrival sequences and costs, on an injected clock.

use proptest::prelude::*;

use crate::core::clock::NS_PER_SEC as SEC;
use crate::core::decision::Decision;
use crate::core::limit::{Algorithm, Cost, Limit, Unit};
use crate::core::quota::{Quota, Receipt};

/// The largest cost admitted in any half-open interval of `window` ns, over admissions sorted by time.
fn max_in_any_window(admitted: &[(u64, u64)], window: u64) -> u64 {
    let mut worst = 0;
    let (mut start, mut sum) = (0, 0);
    for &(at, cost) in admitted {
        sum += cost;
        while admitted[start].0 + window <= at {
            sum -= admitted[start].1;
            start += 1;
        }
        worst = worst.max(sum);
    }
    worst
}

/// Arrival gaps (ns) and costs for a stream of requests.
fn arrivals(max_cost: u64) -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0..SEC / 2, 1..=max_cost), 1..300)
}

fn run(quota: &Quota, unit: Unit, stream: &[(u64, u64)], reserve: bool) -> Vec<(u64, u64)> {
    let mut now = 0;
    let mut admitted = Vec::new();
    for &(gap, units) in stream {
        now += gap;
        let cost = match unit {
            Unit::Requests => Cost { requests: units, ..Cost::default() },
            _ => Cost::request(units),
        };
        let latest = if reserve { u64::MAX } else { now };
        match quota.decide(cost, now, latest, &mut Receipt::default()) {
            Decision::Now => admitted.push((now, units)),
            Decision::At(at) => admitted.push((at, units)),
            _ => {}
        }
    }
    admitted.sort();
    admitted
}

proptest! {
    #[test]
    fn exact_window_never_admits_more_than_the_limit_in_any_window(
        limit in 1u64..50, window_s in 1u64..5, stream in arrivals(5), reserve: bool,
    ) {
        let spec = Limit::new(limit as f64, window_s * SEC, Unit::Tokens, Algorithm::Exact, None).unwrap();
        let quota = Quota::new(vec![spec]).unwrap();
        let admitted = run(&quota, Unit::Tokens, &stream, reserve);
        prop_assert!(max_in_any_window(&admitted, window_s * SEC) <= limit);
    }

    #[test]
    fn gcra_never_admits_more_than_limit_plus_burst_in_any_period(
        limit in 1u64..50, burst in 1u64..10, stream in arrivals(1), reserve: bool,
    ) {
        let spec = Limit::new(limit as f64, SEC, Unit::Requests, Algorithm::Gcra, Some(burst as f64)).unwrap();
        let quota = Quota::new(vec![spec]).unwrap();
        let admitted = run(&quota, Unit::Requests, &stream, reserve);
        prop_assert!(max_in_any_window(&admitted, SEC) <= limit + burst);
    }

    #[test]
    fn gcra_after_a_long_idle_allows_its_burst_and_no_more(limit in 1u64..1_000, burst in 1u64..100) {
        let spec = Limit::new(limit as f64, SEC, Unit::Requests, Algorithm::Gcra, Some(burst as f64)).unwrap();
        let quota = Quota::new(vec![spec]).unwrap();
        quota.decide(Cost::request(0), 0, 0, &mut Receipt::default());
        let later = 10_000 * SEC;
        let passed = (0..burst + 10)
            .filter(|_| quota.decide(Cost::request(0), later, later, &mut Receipt::default()) == Decision::Now)
            .count() as u64;
        prop_assert_eq!(passed, burst);
    }

    #[test]
    fn a_refused_request_changes_no_state(
        stream in arrivals(40), probe in 1u64..60, algorithm in prop::sample::select(vec![Algorithm::Exact, Algorithm::Gcra, Algorithm::Counter]),
    ) {
        let tokens = Limit::new(100.0, 10 * SEC, Unit::Tokens, algorithm, None).unwrap();
        let requests = Limit::new(20.0, SEC, Unit::Requests, Algorithm::Exact, None).unwrap();
        let quota = Quota::new(vec![requests, tokens]).unwrap();
        let mut now = 0;
        for &(gap, units) in &stream {
            now += gap;
            quota.decide(Cost::request(units), now, now, &mut Receipt::default());
        }
        let before = (quota.remaining(now), quota.explain(Cost::request(probe), now).1, quota.explain(Cost::request(1), now).1);
        let decision = quota.decide(Cost::request(probe), now, now, &mut Receipt::default());
        if !decision.is_admitted() {
            let after = (quota.remaining(now), quota.explain(Cost::request(probe), now).1, quota.explain(Cost::request(1), now).1);
            prop_assert_eq!(before, after);
        }
    }

    #[test]
    fn multi_window_quota_holds_every_window_at_once(stream in arrivals(30), reserve: bool) {
        let per_second = Limit::new(5.0, SEC, Unit::Requests, Algorithm::Exact, None).unwrap();
        let per_ten = Limit::new(20.0, 10 * SEC, Unit::Requests, Algorithm::Exact, None).unwrap();
        let tokens = Limit::new(100.0, 5 * SEC, Unit::Tokens, Algorithm::Exact, None).unwrap();
        let quota = Quota::new(vec![per_second, per_ten, tokens]).unwrap();
        let mut now = 0;
        let mut admitted = Vec::new();
        for &(gap, units) in &stream {
            now += gap;
            let latest = if reserve { u64::MAX } else { now };
            match quota.decide(Cost::request(units), now, latest, &mut Receipt::default()) {
                Decision::Now => admitted.push((now, units)),
                Decision::At(at) => admitted.push((at, units)),
                _ => {}
            }
        }
        admitted.sort();
        let requests: Vec<_> = admitted.iter().map(|&(at, _)| (at, 1)).collect();
        prop_assert!(max_in_any_window(&requests, SEC) <= 5);
        prop_assert!(max_in_any_window(&requests, 10 * SEC) <= 20);
        prop_assert!(max_in_any_window(&admitted, 5 * SEC) <= 100);
    }

    #[test]
    fn reservations_are_served_in_arrival_order(stream in arrivals(5)) {
        let spec = Limit::new(10.0, SEC, Unit::Tokens, Algorithm::Exact, None).unwrap();
        let quota = Quota::new(vec![spec]).unwrap();
        let mut now = 0;
        let mut last = 0;
        for &(gap, units) in &stream {
            now += gap;
            let at = match quota.decide(Cost::request(units), now, u64::MAX, &mut Receipt::default()) {
                Decision::Now => now,
                Decision::At(at) => at,
                other => panic!("a reservation within the limit is always admitted, got {other:?}"),
            };
            prop_assert!(at >= last);
            last = at;
        }
    }
}

fn saturated_goodput(algorithm: Algorithm, burst: Option<f64>) -> f64 {
    let spec = Limit::new(100.0, 10 * SEC, Unit::Requests, algorithm, burst).unwrap();
    let quota = Quota::new(vec![spec]).unwrap();
    let run_for = 3_600 * SEC;
    let mut admitted = 0u64;
    let mut now = 0;
    while now < run_for {
        match quota.decide(Cost::request(0), now, u64::MAX, &mut Receipt::default()) {
            Decision::Now => admitted += 1,
            Decision::At(at) if at < run_for => {
                admitted += 1;
                now = at;
            }
            _ => break,
        }
    }
    admitted as f64 / (100.0 * 360.0)
}

#[test]
fn a_saturated_stream_gets_at_least_99_percent_of_the_limit() {
    for (algorithm, burst) in [(Algorithm::Exact, None), (Algorithm::Gcra, Some(1.0)), (Algorithm::Counter, None)] {
        let goodput = saturated_goodput(algorithm, burst);
        assert!((0.99..=1.01).contains(&goodput), "{algorithm:?}: {goodput}");
    }
}
