//! The `local` failure policy: while Redis is away, a process decides alone at its share of every
//! limit, each unit and algorithm kept. Sans-IO: time comes in as `now` (monotonic ns), so the rules
//! are tested with plain numbers.
//!
//! The share never lets the fleet pass a limit, counting what the fleet took before Redis went away:
//! - each of the `m` processes Redis last counted gets `floor(n / m)` of a limit's n units per period,
//!   and `floor(c / m)` of a concurrency cap c. A share of 0 admits nothing of that unit: a request
//!   needing it fails as with `fail_closed` (one unit each for some processes would let `m` through
//!   where the limit allows fewer);
//! - what the fleet had used in each window at the last answer from Redis (`used`) stays counted until
//!   the last of it leaves the window (a reservation Redis made ahead of the answer leaves after it):
//!   each process may add only `floor((n - used) / m)` in that time, so Redis's admissions and all
//!   processes' own together stay within n (a GCRA's backlog is
//!   split the same way, and so are the leases in flight, which are kept for the whole outage since
//!   their end is not known here);
//! - what it admits alone is its debt: handed to Redis with its first decision once Redis answers again
//!   (counted from then on, and the slots still running as leases), so the windows after the outage
//!   hold it too.
//!
//! What the fleet admitted after this process's last answer is not known to it: the fresher that
//! answer, the closer the bound.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::core::limit::{Algorithm, Cost, Limit, Unit};
use crate::core::quota::{Quota, Receipt};
use crate::backend::redis::windows::{Kind, WindowSpec};

/// What Redis said at its last answer, by this process's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub at_ns: u64,
    /// Limiter instances deciding lately (this one included).
    pub members: u64,
    /// Leases held fleet-wide...
    pub leases: u64,
    /// ...of which this process held these (as far as it knew when it read the answer: never more).
    pub own_leases: u64,
    /// Units each window counted.
    pub used: Vec<u64>,
    /// Redis's clock at that answer, and when (by Redis's clock, us) the last unit each window counted
    /// leaves it (0: it counted nothing). Reservations made ahead of the answer leave after it.
    pub redis_now_us: u64,
    pub until_us: Vec<u64>,
}

impl Sighting {
    /// What this answer says of window `index`, as Redis is told it with every decision: the units it
    /// counted, and until when (Redis's clock) they count. Should Redis lose the limit's state, it counts
    /// them again from this (see acquire.lua).
    pub fn recalled(&self, index: usize) -> (u64, u64) {
        (self.used.get(index).copied().unwrap_or(0), self.until_us.get(index).copied().unwrap_or(0))
    }

    /// What this answer says of the fleet's leases, as Redis is told it with every decision: how many
    /// the other processes held, with the `own_now` this process holds now (not those it released
    /// since), and until when (Redis's clock) the others' last unless renewed, `lease_ttl_us` after
    /// the answer. Should Redis lose them, it holds that many by stand-ins until their holders renew
    /// them.
    pub fn recalled_leases(&self, own_now: u64, lease_ttl_us: u64) -> (u64, u64) {
        (self.leases.saturating_sub(self.own_leases) + own_now, self.redis_now_us.saturating_add(lease_ttl_us))
    }

    /// How long after the answer, by this process's clock, window `index`'s last counted unit was
    /// admitted (0 when none was admitted after the answer): a reservation made ahead of it.
    fn reserved_ahead_ns(&self, index: usize, span_us: u64) -> u64 {
        let last_admitted_us = self.until_us.get(index).map_or(0, |until| until.saturating_sub(span_us));
        last_admitted_us.saturating_sub(self.redis_now_us).saturating_mul(1_000)
    }
}

/// Why a request is not decided here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Window `index` is a budget the request would cross.
    Budget { index: usize },
    /// Window `index` can never admit the cost, even with Redis: at most `max_cost`.
    Never { index: usize, max_cost: u64 },
    /// The request needs more of window `index` than this process's share (`share` units) can give.
    OverShare { index: usize, share: u64 },
    /// This process's share of the concurrency cap is 0.
    NoSlots,
    /// Redis answered again and this share handed over all it admitted: a new one decides next time.
    Retired,
}

/// A decision made here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    /// Admitted at `at_ns`; one receipt per window, for settling or giving it back.
    Admitted { at_ns: u64, receipts: Vec<Receipt> },
    /// Passes only at `at_ns`, later than allowed; window `binding` decides. Nothing counted.
    Later { at_ns: u64, binding: usize },
    /// Every slot of the share is taken.
    NoSlot,
}

/// One limit's share: its enforcement (`None` when the share is 0), and the units it holds.
#[derive(Debug)]
struct Part {
    quota: Option<Quota>,
    unit: Unit,
    budget: bool,
    share: u64,
    /// The most the whole limit admits at once (for "never").
    full: u64,
    span_ns: u64,
}

#[derive(Debug, Default)]
struct Held {
    /// Slots taken: the fleet's slice at the last answer, then this process's own.
    in_use: u64,
    /// This process's slots, by lease id, and those already handed to Redis as leases.
    running: HashSet<String>,
    registered: HashSet<String>,
    /// Units admitted here not yet handed to Redis, per window, and until when each still matters.
    debt: Vec<u64>,
    debt_until_ns: Vec<u64>,
    /// It decides no more (see [`LocalShare::retire`]).
    retired: bool,
}

/// A process's share of a limiter's limits and slots while Redis is away.
#[derive(Debug)]
pub struct LocalShare {
    parts: Vec<Part>,
    members: u64,
    slots: Option<u64>,
    held: Mutex<Held>,
}

/// The amount of `unit` that counts exactly `units` (a budget counts micro-dollars): the least that is
/// not below it, so the share is neither a unit short nor a hair over.
fn amount_of(units: u64, unit: Unit) -> f64 {
    let per = if unit == Unit::Usd { 1e6 } else { 1.0 };
    let mut amount = units as f64 / per;
    while amount * per < units as f64 {
        amount = f64::from_bits(amount.to_bits() + 1);
    }
    amount
}

/// A cost of `units` in `unit` alone.
fn cost_in(unit: Unit, units: u64) -> Cost {
    match unit {
        Unit::Requests => Cost { requests: units, ..Cost::default() },
        Unit::Tokens => Cost { tokens: units, ..Cost::default() },
        Unit::Usd => Cost { micro_usd: units, ..Cost::default() },
    }
}

impl Part {
    /// `limit`'s share among `members`, charged with the fleet's use seen at `seen`.
    fn new(limit: &Limit, spec: &WindowSpec, members: u64, used: u64, seen_ns: u64, reserved_ahead_ns: u64) -> Self {
        let (share, full) = (spec.whole / members, spec.limit);
        let span_ns = spec.span_us.saturating_mul(1_000);
        let mut part = Part { quota: None, unit: spec.unit, budget: spec.is_budget(), share, full, span_ns };
        if share == 0 {
            return part;
        }
        let shared = if members == 1 {
            *limit
        } else {
            let burst = (limit.algorithm() == Algorithm::Gcra).then(|| (limit.burst() / members).max(1) as f64);
            Limit::new(amount_of(share, limit.unit()), limit.period_ns(), limit.unit(), limit.algorithm(), burst)
                .expect("a share of a valid limit is valid")
                .with_guard(limit.guard_ns())
        };
        let quota = Quota::new(vec![shared]).expect("one limit makes a quota");
        let (taken, at_ns) = match spec.kind {
            // The fleet's use stays counted a whole window from its last admission, which a reservation
            // may have put after `seen`: only a slice of what was left.
            Kind::Log => (share - share.min(spec.whole.saturating_sub(used) / members), seen_ns.saturating_add(reserved_ahead_ns)),
            // A backlog of `used` units takes a share running m times slower as long for a slice of them.
            Kind::Gcra => (used.div_ceil(members), seen_ns),
        };
        if taken > 0 {
            quota.settle(&Receipt::default(), Cost::default(), cost_in(spec.unit, taken), at_ns);
        }
        part.quota = Some(quota);
        part
    }
}

impl LocalShare {
    /// This process's share of `limits` (described by `specs`) and of `max_slots`, from what Redis said last.
    pub fn new(limits: &[Limit], specs: &[WindowSpec], max_slots: Option<u64>, seen: &Sighting) -> Self {
        let members = seen.members.max(1);
        let parts: Vec<Part> = limits
            .iter()
            .zip(specs)
            .zip(&seen.used)
            .enumerate()
            .map(|(index, ((limit, spec), &used))| {
                Part::new(limit, spec, members, used, seen.at_ns, seen.reserved_ahead_ns(index, spec.span_us))
            })
            .collect();
        let held = Held {
            // The leases in flight at the last answer end when their holders release them, which this
            // process does not see: its slice of them stays taken.
            in_use: seen.leases.div_ceil(members),
            debt: vec![0; parts.len()],
            debt_until_ns: vec![0; parts.len()],
            ..Held::default()
        };
        Self { parts, members, slots: max_slots.map(|max| max / members), held: Mutex::new(held) }
    }

    /// The processes the limits were divided among.
    pub fn members(&self) -> u64 {
        self.members
    }

    /// The units window `index` gives this process per period.
    pub fn share(&self, index: usize) -> u64 {
        self.parts[index].share
    }

    /// The concurrency slots this process has (None: no cap).
    pub fn slots(&self) -> Option<u64> {
        self.slots
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The earliest instant every part admits `cost`, each part's own instant, and the binding part.
    /// Budgets are asked first: one the request does not fit now refuses it at once (as in the core).
    fn earliest(&self, cost: Cost, now: u64) -> Result<(u64, Vec<u64>, usize), Refusal> {
        let budgets_first = (0..self.parts.len()).filter(|&i| self.parts[i].budget).chain((0..self.parts.len()).filter(|&i| !self.parts[i].budget));
        let mut instants = vec![now; self.parts.len()];
        // What no limit could ever admit, Redis or not, is told as such before any share is asked.
        for index in budgets_first.clone() {
            let part = &self.parts[index];
            if part.unit.of(cost) > part.full {
                return Err(if part.budget { Refusal::Budget { index } } else { Refusal::Never { index, max_cost: part.full } });
            }
        }
        for index in budgets_first {
            let part = &self.parts[index];
            if part.unit.of(cost) == 0 {
                continue;
            }
            let over_share = Refusal::OverShare { index, share: part.share };
            let Some(quota) = &part.quota else { return Err(over_share) };
            let instant = quota.explain(cost, now).1.map_err(|_| over_share)?;
            if part.budget && instant > now {
                return Err(Refusal::Budget { index });
            }
            instants[index] = instant;
        }
        let (binding, &at) = instants.iter().enumerate().max_by_key(|&(index, at)| (at, std::cmp::Reverse(index))).unwrap_or((0, &now));
        Ok((at, instants, binding))
    }

    /// Decides `cost` at `now`, admitting it if every part admits it by `latest`, with a slot named
    /// `slot` when asked for one. All or nothing: a request one part refuses is counted by none.
    pub fn decide(&self, cost: Cost, now: u64, latest: u64, slot: Option<&str>) -> Result<Decided, Refusal> {
        let mut held = self.held();
        if held.retired {
            return Err(Refusal::Retired);
        }
        if slot.is_some() && self.slots == Some(0) {
            return Err(Refusal::NoSlots);
        }
        let (at, instants, binding) = self.earliest(cost, now)?;
        if slot.is_some() && self.slots.is_some_and(|max| held.in_use >= max) {
            return Ok(Decided::NoSlot);
        }
        if at > latest {
            return Ok(Decided::Later { at_ns: at, binding });
        }
        let mut receipts = vec![Receipt::default(); self.parts.len()];
        for (index, part) in self.parts.iter().enumerate() {
            let units = part.unit.of(cost);
            let Some(quota) = part.quota.as_ref().filter(|_| units > 0) else { continue };
            quota.decide(cost, now, at, &mut receipts[index]);
            // Each part admitted it at its own earliest instant; it goes when the slowest allows.
            if instants[index] < at {
                quota.restamp(&receipts[index], cost, instants[index], at);
            }
            held.debt[index] += units;
            held.debt_until_ns[index] = at.saturating_add(part.span_ns);
        }
        if let Some(id) = slot {
            held.in_use += 1;
            held.running.insert(id.to_string());
        }
        Ok(Decided::Admitted { at_ns: at, receipts })
    }

    /// Nanoseconds until `cost` would pass, counting nothing.
    pub fn wait_ns(&self, cost: Cost, now: u64) -> Result<u64, Refusal> {
        let _held = self.held();
        Ok(self.earliest(cost, now)?.0 - now)
    }

    /// Replaces an admission's `counted` cost by `actual` (refund or charge; zero gives it back), its
    /// debt too. True when the share is retired: Redis must then hear of the change itself.
    pub fn settle(&self, receipts: &[Receipt], counted: Cost, actual: Cost, now: u64) -> bool {
        let mut held = self.held();
        for (index, (part, receipt)) in self.parts.iter().zip(receipts).enumerate() {
            let Some(quota) = &part.quota else { continue };
            let (old, new) = (part.unit.of(counted), part.unit.of(actual));
            if old == new {
                continue;
            }
            if actual == Cost::default() {
                // Given back: a reservation not yet due leaves the log, not only its cost.
                quota.give_back(receipt, counted);
            } else {
                quota.settle(receipt, counted, actual, now);
            }
            if !held.retired {
                held.debt[index] = (held.debt[index] + new).saturating_sub(old);
                if new > old {
                    held.debt_until_ns[index] = held.debt_until_ns[index].max(now.saturating_add(part.span_ns));
                }
            }
        }
        held.retired
    }

    /// Returns a slot taken here; true when it had been handed to Redis as a lease (which Redis must
    /// then be told is free).
    pub fn release(&self, id: &str) -> bool {
        let mut held = self.held();
        if held.running.remove(id) {
            held.in_use = held.in_use.saturating_sub(1);
        }
        held.registered.remove(id)
    }

    /// What to hand to Redis: the units admitted here that still matter to each window at `now`, and
    /// the slots running that Redis does not hold yet; `None` when there is nothing.
    pub fn debt(&self, now: u64) -> Option<(Vec<u64>, Vec<String>)> {
        let held = self.held();
        let debt: Vec<u64> = held.debt.iter().zip(&held.debt_until_ns).map(|(&d, &until)| if now < until { d } else { 0 }).collect();
        let leases: Vec<String> = held.running.difference(&held.registered).cloned().collect();
        (debt.iter().any(|&d| d > 0) || !leases.is_empty()).then_some((debt, leases))
    }

    /// Stops deciding when nothing it admitted is left to hand to Redis; true when retired.
    pub fn retire(&self, now: u64) -> bool {
        let no_debt = self.debt(now).is_none();
        let mut held = self.held();
        held.retired |= no_debt;
        held.retired
    }

    /// Redis has counted `debt` and holds `leases`.
    pub fn handed_over(&self, debt: &[u64], leases: &[String]) {
        let mut held = self.held();
        for (owed, paid) in held.debt.iter_mut().zip(debt) {
            *owed = owed.saturating_sub(*paid);
        }
        for id in leases {
            if held.running.contains(id) {
                held.registered.insert(id.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::NS_PER_SEC;

    const SEC: u64 = NS_PER_SEC;

    fn limit(n: f64, unit: Unit, algorithm: Algorithm) -> Limit {
        Limit::new(n, SEC, unit, algorithm, None).unwrap()
    }

    fn share(limits: &[Limit], members: u64, used: &[u64], slots: Option<u64>, leases: u64) -> LocalShare {
        let specs: Vec<WindowSpec> = limits.iter().map(WindowSpec::new).collect();
        let until_us = vec![0; used.len()];
        LocalShare::new(limits, &specs, slots, &Sighting { at_ns: 0, members, leases, own_leases: 0, used: used.to_vec(), redis_now_us: 0, until_us })
    }

    fn admitted_now(share: &LocalShare, cost: Cost, now: u64) -> bool {
        matches!(share.decide(cost, now, now, None), Ok(Decided::Admitted { .. }))
    }

    fn count_admitted(share: &LocalShare, cost: Cost, now: u64) -> u64 {
        (0..1_000).take_while(|_| admitted_now(share, cost, now)).count() as u64
    }

    #[test]
    fn each_process_gets_the_limit_divided_and_rounded_down_in_its_own_unit() {
        let limits = [limit(50.0, Unit::Requests, Algorithm::Exact), limit(0.001, Unit::Usd, Algorithm::Exact)];
        let fleet = share(&limits, 4, &[0, 0], None, 0);
        assert_eq!((fleet.share(0), fleet.share(1)), (12, 250));
        assert_eq!(count_admitted(&fleet, Cost::request(0), 0), 12);
        let budget = share(&limits[1..], 4, &[0], None, 0);
        assert_eq!(count_admitted(&budget, Cost::priced(10, 8.0), 0), 3, "250 micro-dollars buy three requests of 80");
        assert_eq!(budget.decide(Cost::priced(10, 8.0), 0, u64::MAX, None), Err(Refusal::Budget { index: 0 }));
    }

    #[test]
    fn the_shares_of_a_fleet_never_add_up_to_more_than_the_limit() {
        for n in 1..60 {
            for members in 1..9 {
                let limits = [limit(n as f64 + 0.5, Unit::Tokens, Algorithm::Exact)];
                let total: u64 = (0..members).map(|_| count_admitted(&share(&limits, members, &[0], None, 0), Cost::priced(1, 0.0), 0)).sum();
                assert!(total <= n, "{members} shares of {n}.5 tokens admitted {total}");
                assert!(total + members > n, "{members} shares of {n}.5 tokens wasted more than a unit each: {total}");
            }
        }
    }

    #[test]
    fn what_the_fleet_used_stays_counted_for_a_window_from_the_last_answer() {
        // 20 per second among 4: 5 each; the fleet had used 14, so 6 remain to split: 1 each now.
        let limits = [limit(20.0, Unit::Requests, Algorithm::Exact)];
        let fleet = share(&limits, 4, &[14], None, 0);
        assert_eq!(count_admitted(&fleet, Cost::request(0), SEC / 2), 1);
        assert_eq!(count_admitted(&fleet, Cost::request(0), SEC + SEC / 100), 4, "the fleet's use left with its window");
    }

    #[test]
    fn the_fleets_use_stays_counted_a_window_from_its_last_reservation_not_from_the_answer() {
        // 20 per second among 2: 10 each. At the last answer the fleet counted all 20, the last of them
        // reserved 0.2 s after the answer: none of the share is free until that one leaves, 1.2 s on.
        let limits = [limit(20.0, Unit::Requests, Algorithm::Exact)];
        let span_us = WindowSpec::new(&limits[0]).span_us;
        let seen = Sighting { at_ns: 0, members: 2, leases: 0, own_leases: 0, used: vec![20], redis_now_us: 5_000_000, until_us: vec![5_200_000 + span_us] };
        let fleet = LocalShare::new(&limits, &[WindowSpec::new(&limits[0])], None, &seen);
        assert_eq!(count_admitted(&fleet, Cost::request(0), SEC + SEC / 10), 0, "the reservation is still in its window");
        assert_eq!(count_admitted(&fleet, Cost::request(0), SEC / 5 + span_us * 1_000), 10, "all of it left");
    }

    #[test]
    fn a_gcra_share_runs_slower_and_starts_behind_the_fleets_backlog() {
        let limits = [limit(10.0, Unit::Requests, Algorithm::Gcra)];
        let fleet = share(&limits, 2, &[2], None, 0);
        // 5 per second each, burst 1: the fleet's backlog of two units (0.2 s) is one unit here (0.2 s).
        assert!(!admitted_now(&fleet, Cost::request(0), 0));
        assert!(admitted_now(&fleet, Cost::request(0), SEC / 5));
        assert!(!admitted_now(&fleet, Cost::request(0), SEC / 5 + SEC / 10));
        assert!(admitted_now(&fleet, Cost::request(0), 2 * SEC / 5));
    }

    #[test]
    fn a_share_of_zero_refuses_what_needs_it_and_admits_the_rest() {
        let limits = [limit(3.0, Unit::Requests, Algorithm::Exact), limit(1_000.0, Unit::Tokens, Algorithm::Exact)];
        let fleet = share(&limits, 4, &[0, 0], Some(3), 0);
        assert_eq!(fleet.decide(Cost::request(0), 0, 0, None), Err(Refusal::OverShare { index: 0, share: 0 }));
        assert_eq!(fleet.decide(Cost { tokens: 10, ..Cost::default() }, 0, 0, None).map(|d| matches!(d, Decided::Admitted { .. })), Ok(true));
        assert_eq!(fleet.decide(Cost { tokens: 10, ..Cost::default() }, 0, 0, Some("a")), Err(Refusal::NoSlots));
        assert_eq!(fleet.decide(Cost::request(2_000), 0, 0, None), Err(Refusal::Never { index: 1, max_cost: 1_000 }));
    }

    #[test]
    fn slots_are_divided_and_the_fleets_leases_in_flight_stay_taken() {
        let fleet = share(&[], 4, &[], Some(20), 6);
        assert_eq!(fleet.slots(), Some(5));
        let taken = (0..10).take_while(|i| fleet.decide(Cost::request(0), 0, 0, Some(&i.to_string())) != Ok(Decided::NoSlot)).count();
        assert_eq!(taken, 3, "5 slots, 2 of them the slice of the 6 leases held when Redis went away");
        assert!(!fleet.release("0"));
        assert!(fleet.decide(Cost::request(0), 0, 0, Some("new")).is_ok_and(|d| d != Decided::NoSlot));
    }

    #[test]
    fn a_reservation_waits_for_the_slowest_part_and_gives_everything_back() {
        let limits = [limit(2.0, Unit::Requests, Algorithm::Exact), limit(100.0, Unit::Tokens, Algorithm::Exact)];
        let fleet = share(&limits, 1, &[0, 0], None, 0);
        assert!(admitted_now(&fleet, Cost::request(60), 0));
        let Ok(Decided::Admitted { at_ns, receipts }) = fleet.decide(Cost::request(60), 0, u64::MAX, None) else { panic!() };
        assert_eq!(at_ns, SEC, "the tokens part binds");
        assert_eq!(fleet.decide(Cost::request(0), 0, 0, None), Ok(Decided::Later { at_ns: SEC, binding: 0 }), "both requests counted");
        fleet.settle(&receipts, Cost::request(60), Cost::default(), 0);
        assert!(admitted_now(&fleet, Cost::request(40), 0), "given back in every part");
    }

    #[test]
    fn what_it_admits_alone_is_handed_over_once_and_settles_adjust_it() {
        let limits = [limit(10.0, Unit::Requests, Algorithm::Exact), limit(1_000.0, Unit::Tokens, Algorithm::Exact)];
        let fleet = share(&limits, 1, &[0, 0], Some(4), 0);
        let Ok(Decided::Admitted { receipts, .. }) = fleet.decide(Cost::request(100), 0, 0, Some("lease-1")) else { panic!() };
        assert!(admitted_now(&fleet, Cost::request(50), 0));
        fleet.settle(&receipts, Cost::request(100), Cost::request(300), 0);
        let (debt, leases) = fleet.debt(SEC / 2).unwrap();
        assert_eq!((debt, leases.clone()), (vec![2, 350], vec!["lease-1".to_string()]));
        fleet.handed_over(&[2, 350], &leases);
        assert_eq!(fleet.debt(SEC / 2), None);
        assert!(fleet.release("lease-1"), "a slot handed to Redis is freed there too");
        assert!(admitted_now(&fleet, Cost::request(10), 0));
        assert_eq!(fleet.debt(2 * SEC), None, "units that left their window are owed to nobody");
        assert!(fleet.retire(2 * SEC));
        assert_eq!(fleet.decide(Cost::request(0), 2 * SEC, 2 * SEC, None), Err(Refusal::Retired));
        assert!(fleet.settle(&receipts, Cost::request(300), Cost::request(400), 2 * SEC), "Redis hears of it itself");
    }

    #[test]
    fn amounts_count_exactly_the_units_of_the_share() {
        for units in [1, 3, 123, 249, 251, 2_400, 999_999] {
            let budget = Limit::new(amount_of(units, Unit::Usd), SEC, Unit::Usd, Algorithm::Exact, None).unwrap();
            assert_eq!(WindowSpec::new(&budget).whole, units);
        }
    }
}
