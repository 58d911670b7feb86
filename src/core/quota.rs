//! Several limits at once (per second, minute, hour, day; requests and tokens), decided all or nothing:
//! a request that one limit refuses is counted by none.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::cell::GcraCell;
use crate::core::decision::{Decision, Never};
use crate::core::error::{Error, Result};
use crate::core::feedback;
use crate::core::gcra::Gcra;
use crate::core::limit::{Algorithm, Cost, Limit, Unit, Window};
use crate::core::spin::SpinLock;
use crate::core::window::ExactWindow;

/// The most limits one quota holds, so a receipt is a fixed array and admitting never allocates.
pub const MAX_LIMITS: usize = 8;

/// What a quota hands back with an admission, to settle its real cost or give it back later.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Receipt {
    tickets: [u64; MAX_LIMITS],
}

#[derive(Debug)]
enum State {
    /// One GCRA limit: decided lock-free on one atomic word. `rate` holds the emission interval in
    /// force, which the server's feedback may lengthen.
    Single { gcra: Gcra, rate: AtomicU64, unit: Unit, cell: GcraCell },
    /// Anything else: the windows change together under one short lock.
    Windows(SpinLock<Vec<Window>>),
}

/// A set of limits that admit a request only together.
#[derive(Debug)]
pub struct Quota {
    limits: Vec<Limit>,
    state: State,
}

/// A single GCRA at the rate in force.
#[inline]
fn in_force(gcra: &Gcra, rate: &AtomicU64) -> Gcra {
    gcra.with_unit_ns(rate.load(Ordering::Relaxed))
}

/// The earliest instant every limit admits a cost, and which limit set it.
#[inline]
fn earliest(windows: &mut [Window], limits: &[Limit], cost: Cost, now: u64) -> Result<(u64, usize), (usize, Never)> {
    let mut at = now;
    let mut binding = 0;
    for (index, (window, limit)) in windows.iter_mut().zip(limits).enumerate() {
        let units = limit.unit().of(cost);
        if units == 0 {
            continue;
        }
        let earliest = window.earliest(units, now).map_err(|never| (index, never))?;
        if earliest > at {
            (at, binding) = (earliest, index);
        }
    }
    Ok((at, binding))
}

/// [`Quota::decide`] for a quota of one exact window (the default limiter), without the loops over
/// several limits; the same decision as theirs: a request that costs nothing here passes at once and
/// is counted by none.
#[inline]
fn decide_one(window: &mut ExactWindow, units: u64, now: u64, latest: u64, ticket: &mut u64) -> Decision {
    if units == 0 {
        return Decision::Now;
    }
    let at = match window.earliest(units, now) {
        Ok(at) => at,
        Err(never) => return never.into(),
    };
    let decision = Decision::for_instant(at, now, latest);
    if decision.is_admitted() {
        *ticket = window.admit(at, units);
    }
    decision
}

impl Quota {
    pub fn new(limits: Vec<Limit>) -> Result<Self> {
        if limits.is_empty() {
            return Err(Error::config("limits", "needs at least one limit"));
        }
        if limits.len() > MAX_LIMITS {
            return Err(Error::config("limits", format!("at most {MAX_LIMITS} limits, got {}", limits.len())));
        }
        let state = match limits.as_slice() {
            [only] if only.algorithm() == Algorithm::Gcra => {
                let gcra = only.gcra();
                State::Single { gcra, rate: AtomicU64::new(gcra.unit_ns()), unit: only.unit(), cell: GcraCell::new() }
            }
            _ => State::Windows(SpinLock::new(limits.iter().map(Limit::window).collect())),
        };
        Ok(Self { limits, state })
    }

    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    /// Decides `cost` at `now`, admitting it if every limit admits it by `latest`; the receipt is
    /// written only when it is admitted.
    #[inline]
    pub fn decide(&self, cost: Cost, now: u64, latest: u64, receipt: &mut Receipt) -> Decision {
        match &self.state {
            State::Single { gcra, rate, unit, cell } => {
                let gcra = &in_force(gcra, rate);
                let units = unit.of(cost);
                if units == 0 {
                    return Decision::Now;
                }
                let (decision, ticket) = cell.decide(gcra, units, now, latest);
                receipt.tickets[0] = ticket;
                decision
            }
            State::Windows(lock) => {
                let mut windows = lock.lock();
                if let [Window::Exact(window)] = windows.as_mut_slice() {
                    return decide_one(window, self.limits[0].unit().of(cost), now, latest, &mut receipt.tickets[0]);
                }
                let at = match earliest(&mut windows, &self.limits, cost, now) {
                    Ok((at, _)) => at,
                    Err((_, never)) => return never.into(),
                };
                let decision = Decision::for_instant(at, now, latest);
                if decision.is_admitted() {
                    for ((window, limit), ticket) in windows.iter_mut().zip(&self.limits).zip(&mut receipt.tickets) {
                        let units = limit.unit().of(cost);
                        if units > 0 {
                            *ticket = window.admit(at, units);
                        }
                    }
                }
                decision
            }
        }
    }

    /// Without counting anything: the earliest instant `cost` could pass, or the limit that never lets
    /// it; and in both cases the limit that decides (the slowest one).
    pub fn explain(&self, cost: Cost, now: u64) -> (&Limit, Result<u64, Never>) {
        match &self.state {
            State::Single { gcra, rate, unit, cell } => {
                let gcra = &in_force(gcra, rate);
                let at = gcra.schedule(cell.tat(), unit.of(cost), now).map(|slot| slot.at);
                (&self.limits[0], if unit.of(cost) == 0 { Ok(now) } else { at })
            }
            State::Windows(lock) => match earliest(&mut lock.lock(), &self.limits, cost, now) {
                Ok((at, binding)) => (&self.limits[binding], Ok(at)),
                Err((index, never)) => (&self.limits[index], Err(never)),
            },
        }
    }

    /// The budget (a limit in dollars) that `cost` would cross now, if any: a budget never makes a
    /// request wait, it refuses it.
    pub fn over_budget(&self, cost: Cost, now: u64) -> Option<&Limit> {
        let units = Unit::Usd.of(cost);
        if units == 0 {
            return None;
        }
        let State::Windows(lock) = &self.state else {
            let (gcra, rate, cell) = match &self.state {
                State::Single { gcra, rate, unit: Unit::Usd, cell } => (gcra, rate, cell),
                _ => return None,
            };
            let over = !matches!(in_force(gcra, rate).schedule(cell.tat(), units, now), Ok(slot) if slot.at <= now);
            return over.then(|| &self.limits[0]);
        };
        let mut windows = lock.lock();
        // What is left now, counting every admission: reservations for later instants (a request waiting
        // for another limit) have spent their money already, but must not make the budget look shut now.
        windows.iter_mut().zip(&self.limits).find_map(|(window, limit)| {
            let over = limit.unit() == Unit::Usd && window.remaining(now) < units;
            over.then_some(limit)
        })
    }

    /// Replaces an admission's estimated cost by its actual one: refunds or charges the difference in
    /// every limit whose unit it changes.
    pub fn settle(&self, receipt: &Receipt, estimated: Cost, actual: Cost, now: u64) {
        match &self.state {
            State::Single { gcra, rate, unit, cell } => {
                let gcra = &in_force(gcra, rate);
                let (old, new) = (unit.of(estimated), unit.of(actual));
                if new > old {
                    cell.charge(gcra, new - old, now);
                } else if new < old {
                    cell.give_back(gcra, old - new, receipt.tickets[0]);
                }
            }
            State::Windows(lock) => {
                let mut windows = lock.lock();
                for ((window, limit), ticket) in windows.iter_mut().zip(&self.limits).zip(receipt.tickets) {
                    let (old, new) = (limit.unit().of(estimated), limit.unit().of(actual));
                    if old == new {
                        continue;
                    }
                    if old == 0 {
                        // Nothing was counted here to correct: count the real cost from now on.
                        window.charge(new, now);
                    } else {
                        window.settle(ticket, old, new, now);
                    }
                }
            }
        }
    }

    /// Moves an admission reserved for `at` to the instant `now` its request really went: a waiter wakes a
    /// little late, a burst takes a while to go out, and a server counts from arrival.
    pub fn restamp(&self, receipt: &Receipt, cost: Cost, at: u64, now: u64) {
        match &self.state {
            State::Single { gcra, rate, unit, cell } => {
                if unit.of(cost) > 0 && now > at {
                    cell.restamp(&in_force(gcra, rate), unit.of(cost), now);
                }
            }
            State::Windows(lock) => {
                let mut windows = lock.lock();
                for ((window, limit), ticket) in windows.iter_mut().zip(&self.limits).zip(receipt.tickets) {
                    let units = limit.unit().of(cost);
                    if units > 0 {
                        window.restamp(ticket, units, at, now);
                    }
                }
            }
        }
    }

    /// The instant an admission reserved for `at` really conforms in every limit, given the admissions
    /// before it as they stand now (see [`ExactWindow::recheck`](crate::core::window::ExactWindow)):
    /// checked again in every limit from the latest any of them asks for, until all agree, so each
    /// counts it where it will go (GCRA and the counter from then on, as [`Quota::restamp`] does).
    pub fn recheck(&self, receipt: &Receipt, cost: Cost, at: u64) -> u64 {
        let State::Windows(lock) = &self.state else { return at };
        let mut windows = lock.lock();
        let mut conforms = at;
        loop {
            let mut latest = conforms;
            for ((window, limit), ticket) in windows.iter_mut().zip(&self.limits).zip(receipt.tickets) {
                let units = limit.unit().of(cost);
                if units > 0 {
                    latest = latest.max(window.recheck(ticket, units, conforms));
                }
            }
            if latest == conforms {
                break;
            }
            conforms = latest;
        }
        // The exact logs moved it there themselves; GCRA and the counter count it from there on.
        for ((window, limit), ticket) in windows.iter_mut().zip(&self.limits).zip(receipt.tickets) {
            let units = limit.unit().of(cost);
            if units > 0 && !matches!(window, Window::Exact(_)) {
                window.restamp(ticket, units, at, conforms);
            }
        }
        conforms
    }

    /// Takes back an admission of `cost` that will not be used (a waiter that gave up).
    pub fn give_back(&self, receipt: &Receipt, cost: Cost) {
        match &self.state {
            State::Single { gcra, rate, unit, cell } => {
                let gcra = &in_force(gcra, rate);
                if unit.of(cost) > 0 {
                    cell.give_back(gcra, unit.of(cost), receipt.tickets[0]);
                }
            }
            State::Windows(lock) => {
                let mut windows = lock.lock();
                for ((window, limit), ticket) in windows.iter_mut().zip(&self.limits).zip(receipt.tickets) {
                    let units = limit.unit().of(cost);
                    if units > 0 {
                        window.give_back(ticket, units);
                    }
                }
            }
        }
    }

    /// The fraction of its configured `unit` limits a server allows, judged from the answer to an
    /// admission saying `server_remaining` units are left, by the rule of `core::feedback`
    /// ([`feedback::server_allows`], of the limits the server speaks of: [`feedback::speaks_of`]). Of
    /// several limits of the unit, the largest fraction (the least cut any of them accounts for).
    /// `None` when no limit can tell: GCRA and the approximate counter keep no instants per admission,
    /// and an admission leaves the log with its window.
    pub fn server_allows(
        &self,
        receipt: &Receipt,
        cost: Cost,
        unit: Unit,
        server_remaining: u64,
        reset_ns: Option<u64>,
    ) -> Option<f64> {
        let State::Windows(lock) = &self.state else { return None };
        if unit.of(cost) == 0 {
            return None;
        }
        let spoken_of = |limit: &Limit| limit.unit() == unit && feedback::speaks_of(limit.period_ns(), reset_ns);
        let windows = lock.lock();
        let of_unit = windows.iter().zip(&self.limits).zip(receipt.tickets).filter(|((_, limit), _)| spoken_of(limit));
        of_unit
            .filter_map(|((window, limit), ticket)| {
                let counted = window.counted_around(ticket, limit.guard_ns())?;
                Some(feedback::server_allows(counted, server_remaining, limit.scaled_count(1.0)))
            })
            .reduce(f64::max)
    }

    /// Enforces every limit of `unit` scaled by `factor` (0..=1) from now on, the others as configured.
    pub fn scale(&self, unit: Unit, factor: f64) {
        match &self.state {
            State::Single { rate, unit: own, .. } if *own == unit => {
                rate.store(self.limits[0].scaled_gcra(factor).unit_ns(), Ordering::Relaxed);
            }
            State::Single { .. } => {}
            State::Windows(lock) => {
                for (window, limit) in lock.lock().iter_mut().zip(&self.limits) {
                    if limit.unit() == unit {
                        window.rescale(limit, factor);
                    }
                }
            }
        }
    }

    /// Units free now in each limit, in the order of [`Quota::limits`].
    pub fn remaining(&self, now: u64) -> Vec<u64> {
        match &self.state {
            State::Single { gcra, rate, cell, .. } => vec![in_force(gcra, rate).remaining(cell.tat(), now)],
            State::Windows(lock) => lock.lock().iter_mut().map(|window| window.remaining(now)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::NS_PER_SEC as SEC;

    fn limit(amount: f64, secs: u64, unit: Unit) -> Limit {
        Limit::new(amount, secs * SEC, unit, Algorithm::Exact, None).unwrap()
    }

    fn try_now(quota: &Quota, cost: Cost, now: u64) -> Decision {
        quota.decide(cost, now, now, &mut Receipt::default())
    }

    #[test]
    fn a_budget_with_room_is_not_crossed_while_requests_wait_for_another_limit() {
        let quota = Quota::new(vec![limit(5.0, 1, Unit::Requests), limit(0.01, 3_600, Unit::Usd)]).unwrap();
        let cost = Cost::priced(100, 8.0);
        for _ in 0..6 {
            assert!(quota.decide(cost, 0, u64::MAX, &mut Receipt::default()).is_admitted());
        }
        assert_eq!(quota.over_budget(cost, 0), None, "6 of 12 requests' worth spent, one reserved for later");
        for _ in 0..6 {
            quota.decide(cost, 0, u64::MAX, &mut Receipt::default());
        }
        assert!(quota.over_budget(cost, 0).is_some(), "$0.0096 spent of $0.01");
    }

    #[test]
    fn refused_by_one_limit_counted_by_none() {
        let quota = Quota::new(vec![limit(10.0, 60, Unit::Requests), limit(2.0, 86_400, Unit::Requests)]).unwrap();
        assert_eq!(try_now(&quota, Cost::request(0), 0), Decision::Now);
        assert_eq!(try_now(&quota, Cost::request(0), 0), Decision::Now);
        assert_eq!(try_now(&quota, Cost::request(0), 0), Decision::NotBefore(86_400 * SEC));
        assert_eq!(quota.remaining(0), vec![8, 0]);
    }

    #[test]
    fn requests_and_tokens_pass_together_or_not_at_all() {
        let quota = Quota::new(vec![limit(100.0, 60, Unit::Requests), limit(1_000.0, 60, Unit::Tokens)]).unwrap();
        assert_eq!(try_now(&quota, Cost::request(900), 0), Decision::Now);
        assert_eq!(try_now(&quota, Cost::request(200), SEC), Decision::NotBefore(60 * SEC));
        assert_eq!(quota.remaining(SEC), vec![99, 100]);
        let (binding, at) = quota.explain(Cost::request(200), SEC);
        assert_eq!((binding.unit(), at), (Unit::Tokens, Ok(60 * SEC)));
    }

    #[test]
    fn a_request_above_a_limit_names_that_limit() {
        let quota = Quota::new(vec![limit(100.0, 60, Unit::Requests), limit(1_000.0, 60, Unit::Tokens)]).unwrap();
        assert_eq!(try_now(&quota, Cost::request(1_001), 0), Decision::Never { max_cost: 1_000 });
        let (binding, at) = quota.explain(Cost::request(1_001), 0);
        assert_eq!((binding.unit(), at), (Unit::Tokens, Err(Never { max_cost: 1_000 })));
    }

    #[test]
    fn settle_refunds_tokens_but_not_requests() {
        let quota = Quota::new(vec![limit(100.0, 60, Unit::Requests), limit(1_000.0, 60, Unit::Tokens)]).unwrap();
        let mut receipt = Receipt::default();
        quota.decide(Cost::request(800), 0, 0, &mut receipt);
        quota.settle(&receipt, Cost::request(800), Cost::request(300), SEC);
        assert_eq!(quota.remaining(SEC), vec![99, 700]);
        quota.settle(&receipt, Cost::request(300), Cost::request(1_200), SEC);
        assert_eq!(quota.remaining(SEC), vec![99, 0]);
    }

    #[test]
    fn unestimated_tokens_are_charged_when_settled() {
        let quota = Quota::new(vec![limit(1_000.0, 60, Unit::Tokens)]).unwrap();
        let mut receipt = Receipt::default();
        assert_eq!(quota.decide(Cost::request(0), 0, 0, &mut receipt), Decision::Now);
        quota.settle(&receipt, Cost::request(0), Cost::request(400), SEC);
        assert_eq!(quota.remaining(SEC), vec![600]);
    }

    #[test]
    fn a_single_gcra_limit_decides_on_its_cell() {
        let gcra = Limit::new(1.0, SEC, Unit::Requests, Algorithm::Gcra, Some(2.0)).unwrap();
        let quota = Quota::new(vec![gcra]).unwrap();
        let mut receipt = Receipt::default();
        assert_eq!(quota.decide(Cost::request(0), 0, u64::MAX, &mut receipt), Decision::Now);
        assert_eq!(quota.decide(Cost::request(0), 0, u64::MAX, &mut receipt), Decision::Now);
        assert_eq!(quota.decide(Cost::request(0), 0, u64::MAX, &mut receipt), Decision::At(SEC));
        quota.give_back(&receipt, Cost::request(0));
        assert_eq!(quota.decide(Cost::request(0), 0, 0, &mut receipt), Decision::NotBefore(SEC));
    }

    #[test]
    fn empty_or_oversized_quotas_are_refused() {
        assert!(matches!(Quota::new(vec![]), Err(Error::Config { .. })));
        let many = vec![limit(1.0, 1, Unit::Requests); MAX_LIMITS + 1];
        assert!(matches!(Quota::new(many), Err(Error::Config { .. })));
    }
}
