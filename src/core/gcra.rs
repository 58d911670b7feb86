//! The generic cell rate algorithm as a value: how far one unit of cost moves the theoretical arrival
//! time (TAT), and how far ahead of now the TAT may run. No atomics here: `cell.rs` owns the state.

use crate::core::decision::Never;

/// A GCRA over a rate of `1 / unit_ns` units per nanosecond with room for `burst` units at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Nanoseconds one unit of cost occupies (the emission interval), rounded up so we never exceed the rate.
    unit_ns: u64,
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
    /// A rate of `amount` units per `period_ns`, with room for `burst` units at once.
    /// Callers validate first: `amount` positive and at most one unit per nanosecond, `burst >= 1`.
    pub fn new(amount: f64, period_ns: u64, burst: u64) -> Self {
        debug_assert!(amount > 0.0 && burst >= 1);
        let unit_ns = (period_ns as f64 / amount).ceil().max(1.0) as u64;
        Self { unit_ns, burst }
    }

    pub fn unit_ns(&self) -> u64 {
        self.unit_ns
    }

    /// This GCRA at another rate: `unit_ns` per unit, the same burst.
    pub fn with_unit_ns(self, unit_ns: u64) -> Self {
        Self { unit_ns: unit_ns.max(1), ..self }
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    fn tolerance_ns(&self) -> u64 {
        self.burst.saturating_mul(self.unit_ns)
    }

    /// The earliest instant a request of `cost` units conforms, given the current TAT, never earlier than
    /// `now`; and the TAT after counting it. Requests land in the order they are scheduled.
    #[inline]
    pub fn schedule(&self, tat: u64, cost: u64, now: u64) -> Result<Slot, Never> {
        if cost > self.burst {
            return Err(Never { max_cost: self.burst });
        }
        let tat = tat.max(now).saturating_add(cost * self.unit_ns);
        Ok(Slot { at: tat.saturating_sub(self.tolerance_ns()).max(now), tat })
    }

    /// Whole units a request could take at `now` without waiting.
    pub fn remaining(&self, tat: u64, now: u64) -> u64 {
        let backlog = tat.saturating_sub(now);
        self.tolerance_ns().saturating_sub(backlog) / self.unit_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn admits_its_burst_at_once_then_one_per_interval() {
        let gcra = Gcra::new(10.0, SEC, 3);
        let mut tat = 0;
        for _ in 0..3 {
            let slot = gcra.schedule(tat, 1, 0).unwrap();
            assert_eq!(slot.at, 0);
            tat = slot.tat;
        }
        let fourth = gcra.schedule(tat, 1, 0).unwrap();
        assert_eq!(fourth.at, SEC / 10);
    }

    #[test]
    fn a_cost_above_the_burst_never_passes() {
        let gcra = Gcra::new(100.0, SEC, 5);
        assert_eq!(gcra.schedule(0, 6, 0), Err(Never { max_cost: 5 }));
    }

    #[test]
    fn long_idle_refills_no_more_than_the_burst() {
        let gcra = Gcra::new(10.0, SEC, 2);
        assert_eq!(gcra.remaining(0, 1_000 * SEC), 2);
        let slot = gcra.schedule(0, 2, 1_000 * SEC).unwrap();
        assert_eq!(slot.at, 1_000 * SEC);
        assert_eq!(gcra.remaining(slot.tat, 1_000 * SEC), 0);
    }

    #[test]
    fn uneven_rates_round_the_interval_up() {
        let gcra = Gcra::new(3.0, SEC, 1);
        assert_eq!(gcra.unit_ns(), 333_333_334);
    }
}
