//! Alerts on how much of each limit is used: a threshold fires once when a limit's use reaches its
//! fraction, and again only after that use has fallen back below [`REARM`] of the fraction (so a limit
//! running right at the threshold does not alert on every request). Every rule of crossing lives here;
//! the limiter (its own windows) and the Redis binding (the fleet's use, as each decision reports it)
//! only say what is used.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::core::error::{Error, Result};
use crate::core::feedback::followed;
use crate::core::limit::{Algorithm, Limit, Unit};
use crate::core::quota::{MAX_LIMITS, Quota};

/// A threshold alerts again once the use has fallen below this share of its fraction.
pub const REARM: f64 = 0.9;

/// The fractions of a budget the `holysheep` logger warns at unless told otherwise.
pub const BUDGET_WARNINGS: [f64; 3] = [0.8, 0.95, 1.0];

/// What an alert does when a limit's use crosses its threshold, from whichever thread saw it.
pub trait Alert: Send + Sync {
    /// `limit` (as the limiter's stats name it) is `used` (a fraction, 1.0 all of it) used now.
    fn crossed(&self, limit: &Limit, used: f64);
}

/// Which limits a threshold watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every rate limit and budget.
    Every,
    /// Budgets (limits in dollars) only.
    Budgets,
}

impl Scope {
    fn watches(self, limit: &Limit) -> bool {
        self == Scope::Every || limit.unit() == Unit::Usd
    }
}

struct Threshold {
    fraction: f64,
    scope: Scope,
    alert: Arc<dyn Alert>,
    /// Per limit: reached and not yet fallen back.
    above: [bool; MAX_LIMITS],
}

/// A crossing to report once the threshold's lock is released.
struct Crossing {
    alert: Arc<dyn Alert>,
    limit: usize,
    used: f64,
}

/// A limiter's thresholds. Until one is added, [`Alerts::armed`] is false and nothing else is done.
#[derive(Default)]
pub struct Alerts {
    armed: AtomicBool,
    thresholds: Mutex<Vec<Threshold>>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts").field("armed", &self.armed()).finish_non_exhaustive()
    }
}

impl Alerts {
    /// Alerts through `alert` each time a watched limit's use reaches `fraction` (0 < fraction <= 1).
    pub fn add(&self, fraction: f64, scope: Scope, alert: Arc<dyn Alert>) -> Result<()> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(Error::config("fraction", format!("must be above 0 and at most 1, got {fraction}")));
        }
        let threshold = Threshold { fraction, scope, alert, above: [false; MAX_LIMITS] };
        self.thresholds.lock().unwrap_or_else(|p| p.into_inner()).push(threshold);
        self.armed.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether any threshold is set: the one check on an admission's path.
    #[inline]
    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    /// Notes each limit's use now (fractions, in the order of `limits`) and alerts for each threshold
    /// it crossed; two threads seeing the same crossing alert once.
    pub fn observe(&self, limits: &[Limit], used: &[f64]) {
        for crossing in self.crossings(limits, used) {
            crossing.alert.crossed(&limits[crossing.limit], crossing.used);
        }
    }

    fn crossings(&self, limits: &[Limit], used: &[f64]) -> Vec<Crossing> {
        let mut thresholds = self.thresholds.lock().unwrap_or_else(|p| p.into_inner());
        let mut crossings = Vec::new();
        for threshold in thresholds.iter_mut() {
            for (index, (limit, &used)) in limits.iter().zip(used).enumerate().take(MAX_LIMITS) {
                if !threshold.scope.watches(limit) {
                    continue;
                }
                let above = &mut threshold.above[index];
                if !*above && used >= threshold.fraction {
                    *above = true;
                    crossings.push(Crossing { alert: Arc::clone(&threshold.alert), limit: index, used });
                } else if *above && used < threshold.fraction * REARM {
                    *above = false;
                }
            }
        }
        crossings
    }
}

/// The units of `limit` usable now at the rates in force (`factors`, as the limiter's feedback
/// applied them to requests and tokens): what its use is a fraction of.
pub fn capacity(limit: &Limit, factors: [f64; 2]) -> u64 {
    match limit.algorithm() {
        Algorithm::Gcra => limit.burst(),
        Algorithm::Exact | Algorithm::Counter => limit.scaled_count(followed(limit.unit()).map_or(1.0, |i| factors[i])),
    }
}

/// The fraction of `limit` used when `remaining` of it is free now.
pub fn used_of_remaining(limit: &Limit, remaining: u64, factors: [f64; 2]) -> f64 {
    let capacity = capacity(limit, factors).max(1);
    capacity.saturating_sub(remaining) as f64 / capacity as f64
}

/// Each limit's use in `quota` now at the rates in force, `spent` (a budget that just refused a
/// request) counted as all used.
pub fn used_now(quota: &Quota, factors: [f64; 2], now: u64, spent: Option<&Limit>) -> Vec<f64> {
    quota
        .limits()
        .iter()
        .zip(quota.remaining(now))
        .map(|(limit, left)| match spent {
            Some(budget) if std::ptr::eq(budget, limit) => 1.0,
            _ => used_of_remaining(limit, left, factors),
        })
        .collect()
}

/// The fraction of `limit` used when `counted` units of it are counted in its window (as Redis
/// reports a fleet's use).
pub fn used_of_counted(limit: &Limit, counted: u64) -> f64 {
    counted as f64 / capacity(limit, [1.0; 2]).max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::NS_PER_SEC as SEC;

    #[derive(Default)]
    struct Recorded(Mutex<Vec<(String, f64)>>);

    impl Alert for Recorded {
        fn crossed(&self, limit: &Limit, used: f64) {
            self.0.lock().unwrap().push((limit.to_string(), used));
        }
    }

    fn alerts(fraction: f64, scope: Scope) -> (Alerts, Arc<Recorded>) {
        let (alerts, recorded) = (Alerts::default(), Arc::new(Recorded::default()));
        alerts.add(fraction, scope, recorded.clone()).unwrap();
        (alerts, recorded)
    }

    fn limits() -> Vec<Limit> {
        vec![
            Limit::new(10.0, SEC, Unit::Requests, Algorithm::Exact, None).unwrap(),
            Limit::new(5.0, 86_400 * SEC, Unit::Usd, Algorithm::Exact, None).unwrap(),
        ]
    }

    fn count(recorded: &Recorded) -> usize {
        recorded.0.lock().unwrap().len()
    }

    #[test]
    fn nothing_is_armed_until_a_threshold_is_added() {
        let alerts = Alerts::default();
        assert!(!alerts.armed());
        alerts.add(0.5, Scope::Every, Arc::new(Recorded::default())).unwrap();
        assert!(alerts.armed());
    }

    #[test]
    fn a_threshold_fires_once_per_crossing_and_again_after_falling_back() {
        let (alerts, recorded) = alerts(0.8, Scope::Every);
        let limits = limits();
        for used in [0.5, 0.8, 0.9, 1.0, 0.85, 0.75] {
            alerts.observe(&limits, &[used, 0.0]);
        }
        assert_eq!(*recorded.0.lock().unwrap(), vec![("10 requests per second".to_string(), 0.8)]);
        alerts.observe(&limits, &[0.73, 0.0]);
        alerts.observe(&limits, &[0.8, 0.0]);
        assert_eq!(count(&recorded), 1, "0.73 is not below 90% of 0.8: not fallen back yet");
        alerts.observe(&limits, &[0.7, 0.0]);
        alerts.observe(&limits, &[0.95, 0.0]);
        assert_eq!(count(&recorded), 2);
    }

    #[test]
    fn each_limit_crosses_on_its_own() {
        let (alerts, recorded) = alerts(0.5, Scope::Every);
        alerts.observe(&limits(), &[0.6, 0.6]);
        assert_eq!(count(&recorded), 2);
    }

    #[test]
    fn a_budget_threshold_watches_budgets_only() {
        let (alerts, recorded) = alerts(0.8, Scope::Budgets);
        alerts.observe(&limits(), &[1.0, 0.79]);
        assert_eq!(count(&recorded), 0);
        alerts.observe(&limits(), &[1.0, 0.8]);
        assert_eq!(*recorded.0.lock().unwrap(), vec![("5 usd per day".to_string(), 0.8)]);
    }

    #[test]
    fn threads_seeing_one_crossing_alert_once() {
        let (alerts, recorded) = alerts(0.5, Scope::Every);
        let (alerts, limits) = (Arc::new(alerts), Arc::new(limits()));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (alerts, limits) = (Arc::clone(&alerts), Arc::clone(&limits));
                std::thread::spawn(move || (0..100).for_each(|_| alerts.observe(&limits, &[0.9, 0.0])))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(count(&recorded), 1);
    }

    #[test]
    fn a_limiter_alerts_as_its_window_fills_and_again_once_it_has_emptied() {
        use crate::core::clock::ManualClock;
        use crate::core::limit::Cost;
        use crate::core::limiter::Limiter;
        let clock = ManualClock::new(0);
        let lim = Limiter::new(limits()[..1].to_vec(), None, clock.clone()).unwrap();
        let recorded = Arc::new(Recorded::default());
        lim.alerts().add(0.8, Scope::Every, recorded.clone()).unwrap();
        let admit = |n| (0..n).for_each(|_| assert!(lim.try_acquire(Cost::request(0)).unwrap()));
        admit(7);
        assert_eq!(count(&recorded), 0);
        admit(3);
        assert_eq!(*recorded.0.lock().unwrap(), vec![("10 requests per second".to_string(), 0.8)]);
        clock.advance(2 * SEC);
        admit(8);
        assert_eq!(count(&recorded), 2, "the window emptied, then filled to 80% again");
    }

    #[test]
    fn a_budget_that_refuses_a_request_counts_as_all_used() {
        use crate::core::clock::ManualClock;
        use crate::core::limit::Cost;
        use crate::core::limiter::Limiter;
        let lim = Limiter::new(limits()[1..].to_vec(), None, ManualClock::new(0)).unwrap();
        let recorded = Arc::new(Recorded::default());
        lim.alerts().add(1.0, Scope::Budgets, recorded.clone()).unwrap();
        // $2 of $5, then $4 more would cross it.
        assert!(lim.try_reserve(Cost::priced(1_000_000, 2.0)).unwrap().is_some());
        assert!(lim.try_reserve(Cost::priced(2_000_000, 2.0)).is_err());
        assert_eq!(*recorded.0.lock().unwrap(), vec![("5 usd per day".to_string(), 1.0)]);
    }

    #[test]
    fn a_fraction_outside_zero_to_one_is_refused_naming_it() {
        let alerts = Alerts::default();
        for bad in [0.0, -0.5, 1.5, f64::NAN] {
            let err = alerts.add(bad, Scope::Every, Arc::new(Recorded::default())).unwrap_err();
            assert!(matches!(err, Error::Config { ref field, .. } if field == "fraction"), "{err:?}");
        }
        assert!(!alerts.armed());
    }

    #[test]
    fn use_is_a_fraction_of_the_rate_in_force() {
        let limit = Limit::new(10.0, SEC, Unit::Requests, Algorithm::Exact, None).unwrap();
        assert_eq!(used_of_remaining(&limit, 2, [1.0, 1.0]), 0.8);
        assert_eq!(used_of_remaining(&limit, 2, [0.5, 1.0]), 0.6, "5 in force, 3 used");
        assert_eq!(used_of_counted(&limit, 10), 1.0);
    }
}
