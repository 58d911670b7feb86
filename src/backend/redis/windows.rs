//! A core [`Limit`] as the Lua scripts see it: whole units and whole microseconds, each rounded the
//! strict way (windows longer, intervals wider), so Redis never admits more than the core would. The
//! script gets plain numbers; every rule that turns a limit into them is here.

use crate::core::limit::{Algorithm, Cost, Limit, Unit, Window};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The exact window: a log of admissions (`Algorithm::Exact`, and `Counter`, which Redis enforces
    /// exactly since the log's memory is bounded anyway).
    Log,
    /// GCRA: one theoretical arrival time.
    Gcra,
}

/// One window's parameters, in the order `acquire.lua` reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSpec {
    /// Names the window's keys and fields: processes configured alike share them, others do not collide.
    pub id: String,
    pub kind: Kind,
    /// Log: units per window. GCRA: the burst.
    pub limit: u64,
    /// Log: the window length. GCRA: one unit's configured interval (what a give-back takes back, and
    /// with the burst the tolerance).
    pub span_us: u64,
    /// Log: admissions closer than this share one entry (1/1024 of the window, as in the core).
    pub merge_us: u64,
    pub unit: Unit,
    /// The whole units the limit admits per period (its amount rounded down, at least one): what a
    /// share of it is taken from.
    pub whole: u64,
    /// The core limit it enforces: its rules scale the rate.
    source: Limit,
}

fn ns_to_us_rounded_up(ns: u64) -> u64 {
    ns.div_ceil(1_000).max(1)
}

impl WindowSpec {
    pub fn new(limit: &Limit) -> Self {
        let unit = limit.unit();
        // The core's exact window for this limit: its count is the amount rounded down (at least one).
        let exact = Limit::new(limit.amount(), limit.period_ns(), unit, Algorithm::Exact, None)
            .expect("a limit that was valid stays valid as an exact window")
            .with_guard(limit.guard_ns());
        let Window::Exact(window) = exact.window() else { unreachable!("an exact limit has an exact window") };
        let whole = window.limit();
        if limit.algorithm() == Algorithm::Gcra {
            let gcra = limit.gcra();
            let span_us = ns_to_us_rounded_up(gcra.unit_ns());
            let id = format!("{}-gcra-{span_us}us-burst-{}", unit.name(), gcra.burst());
            return Self { id, kind: Kind::Gcra, limit: gcra.burst(), span_us, merge_us: 0, unit, whole, source: *limit };
        }
        // At most the whole count in ANY interval of the period (guard included): a fractional amount
        // is rounded down, never spread over a shorter window (2.5 per second admits 2 per second, not
        // 2 per 0.8 s, which let 3 into some second). Only an amount below one keeps a longer window
        // (0.5 per second: 1 per 2 s), as one unit is the least a window can count.
        let span_us = ns_to_us_rounded_up(window.window_ns().max(limit.period_ns().saturating_add(limit.guard_ns())));
        let id = format!("{}-{whole}-per-{span_us}us", unit.name());
        Self { id, kind: Kind::Log, limit: whole, span_us, merge_us: span_us / 1024, unit, whole, source: *limit }
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Log => "log",
            Kind::Gcra => "gcra",
        }
    }

    /// Whether it is a spending limit: it refuses a request that does not fit now instead of making it wait.
    pub fn is_budget(&self) -> bool {
        self.unit == Unit::Usd
    }

    /// The limit and span to enforce with the configured rate scaled by `factor` (0..=1), by the core's
    /// rules: a log counts the whole part of the scaled count per window ([`Limit::scaled_count`]);
    /// GCRA keeps its burst and spaces units by the scaled GCRA's interval ([`Limit::scaled_gcra`]),
    /// rounded up to whole microseconds, so never below the configured one.
    pub fn in_force(&self, factor: f64) -> (u64, u64) {
        match self.kind {
            Kind::Log => (self.source.scaled_count(factor), self.span_us),
            Kind::Gcra => (self.limit, ns_to_us_rounded_up(self.source.scaled_gcra(factor).unit_ns())),
        }
    }

    /// The period of the limit it enforces (its guard not included).
    pub fn period_ns(&self) -> u64 {
        self.source.period_ns()
    }

    /// How long past its admission a request may still arrive before the server counts it (the limit's
    /// guard), in whole microseconds rounded up.
    pub fn guard_us(&self) -> u64 {
        self.source.guard_ns().div_ceil(1_000)
    }

    /// The units of `cost` this window counts.
    pub fn units(&self, cost: Cost) -> u64 {
        self.unit.of(cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::NS_PER_SEC;

    #[test]
    fn exact_limits_become_logs_with_whole_counts() {
        let limit = Limit::new(2.5, NS_PER_SEC, Unit::Requests, Algorithm::Exact, None).unwrap();
        let spec = WindowSpec::new(&limit);
        assert_eq!((spec.kind, spec.limit, spec.span_us, spec.merge_us), (Kind::Log, 2, 1_000_000, 976));
        assert_eq!(spec.id, "requests-2-per-1000000us");
    }

    #[test]
    fn the_guard_keeps_each_admission_counted_past_its_window_as_locally() {
        let limit = Limit::new(4.0, NS_PER_SEC / 2, Unit::Requests, Algorithm::Exact, None).unwrap().with_guard(100_000_000);
        let spec = WindowSpec::new(&limit);
        assert_eq!((spec.limit, spec.span_us), (4, 600_000));
    }

    #[test]
    fn gcra_intervals_round_up_to_whole_microseconds() {
        let limit = Limit::new(3.0, NS_PER_SEC, Unit::Tokens, Algorithm::Gcra, Some(2.0)).unwrap();
        let spec = WindowSpec::new(&limit);
        assert_eq!((spec.kind, spec.limit, spec.span_us, spec.whole), (Kind::Gcra, 2, 333_334, 3));
    }

    #[test]
    fn counters_are_enforced_exactly() {
        let limit = Limit::new(100.0, 60 * NS_PER_SEC, Unit::Requests, Algorithm::Counter, None).unwrap();
        assert_eq!(WindowSpec::new(&limit).kind, Kind::Log);
    }

    #[test]
    fn a_scaled_rate_counts_fewer_per_window_or_spaces_them_wider() {
        let log = WindowSpec::new(&Limit::new(10.0, NS_PER_SEC, Unit::Requests, Algorithm::Exact, None).unwrap());
        assert_eq!(log.in_force(1.0), (10, log.span_us));
        assert_eq!(log.in_force(0.7), (7, log.span_us));
        assert_eq!(log.in_force(0.01), (1, log.span_us));
        let gcra = WindowSpec::new(&Limit::new(10.0, NS_PER_SEC, Unit::Requests, Algorithm::Gcra, None).unwrap());
        assert_eq!(gcra.in_force(0.5), (gcra.limit, 2 * gcra.span_us));
    }

    // A rate cut paces the whole part of the scaled count per window, as the core does: 10 per 1.01 s
    // at 0.55 is 5 per 1.01 s (202,000 us apart), not 5.5 (183,637 us apart).
    #[test]
    fn a_scaled_gcra_paces_the_whole_part_of_the_scaled_count() {
        let limit = Limit::new(10.0, NS_PER_SEC, Unit::Requests, Algorithm::Gcra, None).unwrap().with_guard(10_000_000);
        let spec = WindowSpec::new(&limit);
        assert_eq!(spec.span_us, 101_000);
        assert_eq!(spec.in_force(0.55), (1, 202_000));
        assert_eq!(spec.in_force(0.05), (1, 2_020_000), "below one: one per the window stretched to hold it");
        assert_eq!(spec.in_force(1.0), (1, spec.span_us));
    }

    // Issue 15: 2.5 per second was 2 per 0.8 s, so some second held 3.
    #[test]
    fn a_fractional_amount_counts_its_whole_units_over_the_full_period() {
        let limit = Limit::new(2.5, NS_PER_SEC, Unit::Requests, Algorithm::Exact, None).unwrap();
        assert_eq!((WindowSpec::new(&limit).limit, WindowSpec::new(&limit).span_us), (2, 1_000_000));
        let guarded = Limit::new(62.5, 60 * NS_PER_SEC, Unit::Requests, Algorithm::Counter, None).unwrap().with_guard(50_000_000);
        assert_eq!((WindowSpec::new(&guarded).limit, WindowSpec::new(&guarded).span_us), (62, 60_050_000));
        let slow = Limit::new(0.5, NS_PER_SEC, Unit::Requests, Algorithm::Exact, None).unwrap();
        assert_eq!((WindowSpec::new(&slow).limit, WindowSpec::new(&slow).span_us), (1, 2_000_000));
    }

    #[test]
    fn a_budget_counts_micro_dollars_and_says_it_is_one() {
        let budget = Limit::new(0.001, 3_600 * NS_PER_SEC, Unit::Usd, Algorithm::Exact, None).unwrap();
        let spec = WindowSpec::new(&budget);
        assert_eq!((spec.limit, spec.whole, spec.is_budget()), (1_000, 1_000, true));
        assert!(!WindowSpec::new(&Limit::new(5.0, NS_PER_SEC, Unit::Tokens, Algorithm::Exact, None).unwrap()).is_budget());
    }
}
