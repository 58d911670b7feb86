//! A core [`Limit`] as the Lua scripts see it: whole units and whole microseconds, each rounded the
//! strict way (windows longer, intervals wider), so Redis never admits more than the core would.

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    /// Names the window's keys and fields: processes configured alike share them, others do not collide.
    pub id: String,
    pub kind: Kind,
    /// Log: units per window. GCRA: the burst.
    pub limit: u64,
    /// Log: the window length. GCRA: one unit's interval.
    pub span_us: u64,
    /// Log: admissions closer than this share one entry (1/1024 of the window, as in the core).
    pub merge_us: u64,
    pub unit: Unit,
}

fn ns_to_us_rounded_up(ns: u64) -> u64 {
    ns.div_ceil(1_000).max(1)
}

impl WindowSpec {
    pub fn new(limit: &Limit) -> Self {
        let unit = limit.unit();
        if limit.algorithm() == Algorithm::Gcra {
            let gcra = limit.gcra();
            let span_us = ns_to_us_rounded_up(gcra.unit_ns());
            let id = format!("{}-gcra-{span_us}us-burst-{}", unit.name(), gcra.burst());
            return Self { id, kind: Kind::Gcra, limit: gcra.burst(), span_us, merge_us: 0, unit };
        }
        let exact = Limit::new(limit.amount(), limit.period_ns(), unit, Algorithm::Exact, None)
            .expect("a limit that was valid stays valid as an exact window")
            .with_guard(limit.guard_ns());
        let Window::Exact(window) = exact.window() else { unreachable!("an exact limit has an exact window") };
        let span_us = ns_to_us_rounded_up(window.window_ns());
        let id = format!("{}-{}-per-{span_us}us", unit.name(), window.limit());
        Self { id, kind: Kind::Log, limit: window.limit(), span_us, merge_us: span_us / 1024, unit }
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Log => "log",
            Kind::Gcra => "gcra",
        }
    }

    /// The limit and span to enforce with the configured rate scaled by `factor` (0..=1): a log counts
    /// fewer units per window, GCRA spaces them wider; never below one unit per window.
    pub fn in_force(&self, factor: f64) -> (u64, u64) {
        match self.kind {
            Kind::Log => (((self.limit as f64 * factor).floor() as u64).max(1), self.span_us),
            Kind::Gcra => (self.limit, (self.span_us as f64 / factor.max(1e-6)).ceil() as u64),
        }
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
        assert_eq!((spec.kind, spec.limit, spec.span_us), (Kind::Gcra, 2, 333_334));
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
}
