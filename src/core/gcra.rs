//! The generic cell rate algorithm as a value: how far one unit of cost moves the theoretical arrival
//! time (TAT), and how far ahead of now the TAT may run. No atomics here: `cell.rs` owns the state.
//!
//! Every store of a TAT (the cell, the windows, the keyed table, the Redis script) applies the pure
//! functions below and nothing else: [`Gcra::schedule`] to admit, [`Gcra::charge`] to count more,
//! [`Gcra::give_back`] to count less, [`Gcra::restamp`] to count an admission from when it really went.
//!
//! What it promises, for `count` units per `window_ns` with burst `b`: at most `count + b - 1` units in
//! any half-open interval of `window_ns` at the instants it admits (`count` for the default `b = 1`),
//! also while it is slowed down ([`Gcra::with_unit_ns`]) and whatever is charged, given back or
//! restamped. Proof sketch, with `I` the configured interval (at least `window_ns / count`): each
//! admission moves the TAT on by at least `cost * I` (give-backs take back no more than that), and one
//! of `cost` at `t` needs the TAT before it to be at most `t + (b - cost) * I` (the tolerance `b * I`
//! stays in nanoseconds when slowed). Admissions at `t1 <= .. <= tk` within one `window_ns` so have
//! `(total - b) * I <= tk - t1 < window_ns`, hence `total < count + b`.

use crate::core::decision::Never;

/// A GCRA over a rate of `1 / unit_ns` units per nanosecond with room for `burst` units at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Nanoseconds one unit of cost moves the TAT (the emission interval) in force: the configured
    /// one, or wider while the rate is cut.
    unit_ns: u64,
    /// The configured emission interval, rounded up so that `count` of them span the whole window.
    base_unit_ns: u64,
    /// The most units admitted at one instant after a long idle.
    burst: u64,
}

/// Where a request lands: the instant it may proceed and the TAT once it is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub at: u64,
    pub tat: u64,
}

impl Gcra {
    /// At most `count` units per `window_ns`, paced one per `window_ns / count` (rounded up), with room
    /// for `burst` units at once. Callers validate first: `count >= 1`, `window_ns >= count`, `burst >= 1`.
    pub fn new(count: u64, window_ns: u64, burst: u64) -> Self {
        debug_assert!(count >= 1 && burst >= 1);
        let unit_ns = window_ns.div_ceil(count.max(1)).max(1);
        Self { unit_ns, base_unit_ns: unit_ns, burst }
    }

    /// The emission interval in force.
    pub fn unit_ns(&self) -> u64 {
        self.unit_ns
    }

    /// This GCRA slowed to `unit_ns` per unit (never faster than configured). The tolerance stays the
    /// configured one in nanoseconds, so the burst shrinks with the rate and admissions counted at the
    /// faster rate never make room for more; a request of up to `burst` units still passes when idle.
    pub fn with_unit_ns(self, unit_ns: u64) -> Self {
        Self { unit_ns: unit_ns.max(self.base_unit_ns), ..self }
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// How far past `now` the TAT may stand, in nanoseconds, for a request of `cost` to pass at `now`
    /// once counted: the configured tolerance, but never less than the request's own span.
    fn tolerance_ns(&self, cost: u64) -> u64 {
        self.burst.saturating_mul(self.base_unit_ns).max(cost.saturating_mul(self.unit_ns))
    }

    /// The earliest instant a request of `cost` units conforms, given the current TAT, never earlier than
    /// `now`; and the TAT after counting it. Requests land in the order they are scheduled.
    #[inline]
    pub fn schedule(&self, tat: u64, cost: u64, now: u64) -> Result<Slot, Never> {
        if cost > self.burst {
            return Err(Never { max_cost: self.burst });
        }
        let tat = tat.max(now).saturating_add(cost.saturating_mul(self.unit_ns));
        Ok(Slot { at: tat.saturating_sub(self.tolerance_ns(cost)).max(now), tat })
    }

    /// The TAT after `cost` more units were spent at `now` without being scheduled (a settle that found
    /// more than estimated): counted at the rate in force, whatever room is left.
    #[inline]
    pub fn charge(&self, tat: u64, cost: u64, now: u64) -> u64 {
        tat.max(now).saturating_add(cost.saturating_mul(self.unit_ns))
    }

    /// The TAT after giving back `cost` units of the admission that left the TAT at `receipt`, or `None`
    /// when a later admission moved it since (lowering a TAT others built on could let one through
    /// early). Gives back at the configured interval: never more than the admission added, even when it
    /// was counted at a slower rate.
    #[inline]
    pub fn give_back(&self, tat: u64, receipt: u64, cost: u64) -> Option<u64> {
        (tat == receipt).then(|| tat.saturating_sub(cost.saturating_mul(self.base_unit_ns)))
    }

    /// The TAT once an admission of `cost` really went at `now`, later than admitted: at least what
    /// admitting it at `now` would have left, so the next ones are paced from when it went. (Those
    /// admitted after it already keep their instants.)
    #[inline]
    pub fn restamp(&self, tat: u64, cost: u64, now: u64) -> u64 {
        tat.max(now.saturating_add(cost.saturating_mul(self.unit_ns)))
    }

    /// Whole units a request could take at `now` without waiting.
    pub fn remaining(&self, tat: u64, now: u64) -> u64 {
        if tat <= now {
            return self.burst;
        }
        self.tolerance_ns(0).saturating_sub(tat - now) / self.unit_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn admit(gcra: &Gcra, tat: &mut u64, cost: u64, now: u64) -> u64 {
        let slot = gcra.schedule(*tat, cost, now).unwrap();
        *tat = slot.tat;
        slot.at
    }

    #[test]
    fn admits_its_burst_at_once_then_one_per_interval() {
        let gcra = Gcra::new(10, SEC, 3);
        let mut tat = 0;
        for _ in 0..3 {
            assert_eq!(admit(&gcra, &mut tat, 1, 0), 0);
        }
        assert_eq!(gcra.schedule(tat, 1, 0).unwrap().at, SEC / 10);
    }

    #[test]
    fn a_cost_above_the_burst_never_passes() {
        let gcra = Gcra::new(100, SEC, 5);
        assert_eq!(gcra.schedule(0, 6, 0), Err(Never { max_cost: 5 }));
    }

    #[test]
    fn long_idle_refills_no_more_than_the_burst() {
        let gcra = Gcra::new(10, SEC, 2);
        assert_eq!(gcra.remaining(0, 1_000 * SEC), 2);
        let slot = gcra.schedule(0, 2, 1_000 * SEC).unwrap();
        assert_eq!(slot.at, 1_000 * SEC);
        assert_eq!(gcra.remaining(slot.tat, 1_000 * SEC), 0);
    }

    #[test]
    fn uneven_rates_round_the_interval_up() {
        assert_eq!(Gcra::new(3, SEC, 1).unit_ns(), 333_333_334);
    }

    #[test]
    fn never_paces_more_than_count_into_one_window() {
        // Three per second paced at 333,333,334 ns: the fourth lands past the window that holds the first.
        let gcra = Gcra::new(3, SEC, 1);
        let mut tat = 0;
        let instants: Vec<u64> = (0..4).map(|_| admit(&gcra, &mut tat, 1, 0)).collect();
        assert!(instants[3] >= SEC, "{instants:?}");
    }

    // Issue 15: a cut rate kept the burst in units, so the tolerance grew with the interval and a
    // burst counted at the full rate made room for more at the cut one.
    #[test]
    fn a_cut_rate_never_makes_room_for_more_than_the_configured_burst() {
        let gcra = Gcra::new(10, 10 * SEC, 5);
        let mut tat = 0;
        let mut admitted = 0;
        for second in 0..10 {
            while gcra.schedule(tat, 1, second * SEC).unwrap().at <= second * SEC {
                admit(&gcra, &mut tat, 1, second * SEC);
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10 + 5 - 1);
        let cut = gcra.with_unit_ns(10 * SEC);
        let late = 9 * SEC + SEC / 2;
        assert!(cut.schedule(tat, 1, late).unwrap().at > late, "nothing more in the same ten seconds");
    }

    #[test]
    fn a_cut_rate_still_lets_one_request_through_when_idle() {
        let cut = Gcra::new(10, SEC, 5).with_unit_ns(SEC);
        assert_eq!(cut.schedule(0, 5, 7 * SEC).unwrap().at, 7 * SEC);
        assert_eq!(cut.remaining(0, 7 * SEC), 5);
    }

    #[test]
    fn giving_back_never_lowers_the_tat_below_where_the_admission_found_it() {
        let gcra = Gcra::new(1, SEC, 1);
        let cut = gcra.with_unit_ns(10 * SEC);
        let first = cut.schedule(0, 1, 0).unwrap().tat;
        let second = cut.schedule(first, 1, 0).unwrap().tat;
        assert_eq!(gcra.give_back(second, second, 1), Some(second - SEC));
        assert!(gcra.give_back(second, second, 1).unwrap() >= first);
        assert_eq!(gcra.give_back(second, first, 1), None, "a later admission moved it");
    }

    #[test]
    fn a_late_admission_paces_the_next_from_when_it_went() {
        let gcra = Gcra::new(1, SEC, 1);
        let tat = gcra.schedule(0, 1, SEC).unwrap().tat;
        assert_eq!(gcra.restamp(tat, 1, SEC + 5), 2 * SEC + 5);
        assert_eq!(gcra.restamp(tat, 1, SEC), tat, "on time, nothing changes");
    }

    #[test]
    fn a_burst_that_goes_out_over_a_while_is_paced_as_if_admitted_then() {
        let gcra = Gcra::new(10, SEC, 3);
        let mut tat = 0;
        for _ in 0..3 {
            admit(&gcra, &mut tat, 1, 0);
        }
        assert_eq!(gcra.restamp(tat, 1, SEC / 20), tat, "the third went within its burst");
        assert_eq!(gcra.restamp(tat, 1, SEC / 4), SEC / 4 + SEC / 10);
    }

    #[test]
    fn charge_counts_from_now_at_the_rate_in_force() {
        let gcra = Gcra::new(10, SEC, 10).with_unit_ns(SEC / 5);
        assert_eq!(gcra.charge(0, 2, SEC), SEC + 2 * SEC / 5);
        assert_eq!(gcra.charge(3 * SEC, 1, SEC), 3 * SEC + SEC / 5);
    }
}
