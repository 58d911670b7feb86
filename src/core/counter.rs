//! The two-window counter: the cheap, approximate sliding window. It keeps two numbers, this fixed
//! window's count and the last one's, and estimates the sliding count by weighting the last window by how
//! much of it still overlaps. It assumes the last window's admissions were spread evenly, so a burst at the
//! end of one window followed by one at the start of the next can pass up to twice the limit in a short
//! interval. Use the exact window where the server counts exactly.

use crate::core::decision::Never;

/// About `limit` units per `window_ns`, estimated from two fixed windows.
#[derive(Debug, Clone)]
pub struct SlidingCounter {
    /// The limit in force: the configured one, or less while the server asks for less.
    limit: u64,
    /// The configured limit: what can ever pass.
    ceiling: u64,
    window_ns: u64,
    current_start: u64,
    current: u64,
    previous: u64,
    /// Admissions are never placed before the last one, so waiters keep their order.
    last_at: u64,
}

impl SlidingCounter {
    pub fn new(limit: u64, window_ns: u64) -> Self {
        debug_assert!(limit >= 1 && window_ns >= 1);
        Self { limit, ceiling: limit, window_ns, current_start: 0, current: 0, previous: 0, last_at: 0 }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// Enforces `limit` (at most the configured one) from now on; a request above it still passes
    /// alone, as in [`crate::core::window::ExactWindow::set_limit`].
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit.clamp(1, self.ceiling);
    }

    /// Moves the fixed windows forward so that `now` falls in the current one.
    fn roll(&mut self, now: u64) {
        let windows_passed = now.saturating_sub(self.current_start) / self.window_ns;
        match windows_passed {
            0 => {}
            1 => self.previous = std::mem::take(&mut self.current),
            _ => (self.previous, self.current) = (0, 0),
        }
        self.current_start += windows_passed * self.window_ns;
    }

    /// The estimated count at `elapsed` ns into a window whose predecessor counted `previous`.
    fn estimate(&self, previous: u64, current: u64, elapsed: u64) -> u64 {
        let overlap = self.window_ns - elapsed.min(self.window_ns);
        (previous as u128 * overlap as u128).div_ceil(self.window_ns as u128) as u64 + current
    }

    /// The first ns into a window (whose predecessor counted `previous`) at which `room` more fit, if any.
    fn first_fit(&self, previous: u64, current: u64, room: u64) -> Option<u64> {
        let free = self.limit.checked_sub(current + room)?;
        if previous <= free {
            return Some(0);
        }
        // previous * (W - e) / W <= free  <=>  e >= W - free * W / previous
        let keep = (free as u128 * self.window_ns as u128) / previous as u128;
        Some(self.window_ns - keep as u64)
    }

    /// The earliest instant, not before `now` nor the last admission, at which `cost` more fits.
    pub fn earliest(&mut self, cost: u64, now: u64) -> Result<u64, Never> {
        if cost > self.ceiling {
            return Err(Never { max_cost: self.ceiling });
        }
        let from = now.max(self.last_at);
        self.roll(from);
        let elapsed = from - self.current_start;
        if self.estimate(self.previous, self.current, elapsed) + cost <= self.limit {
            return Ok(from);
        }
        if let Some(offset) = self.first_fit(self.previous, self.current, cost) {
            if offset < self.window_ns {
                return Ok(from.max(self.current_start + offset));
            }
        }
        let next_start = self.current_start + self.window_ns;
        let offset = self.first_fit(self.current, 0, cost).unwrap_or(self.window_ns);
        Ok(next_start + offset.min(self.window_ns))
    }

    /// Counts `cost` at `at`; the receipt is the start of the fixed window that counted it.
    pub fn admit(&mut self, at: u64, cost: u64) -> u64 {
        self.roll(at);
        self.current += cost;
        self.last_at = self.last_at.max(at);
        self.current_start
    }

    /// Counts `cost` from `now` (or the last admission, if later) whatever room is left.
    pub fn charge(&mut self, cost: u64, now: u64) {
        self.admit(now.max(self.last_at), cost);
    }

    /// Replaces the cost counted under `receipt` (`old`) by `actual`, while its window is still counted.
    pub fn settle(&mut self, receipt: u64, old: u64, actual: u64) {
        let slot = if receipt == self.current_start {
            &mut self.current
        } else if receipt + self.window_ns == self.current_start {
            &mut self.previous
        } else {
            return;
        };
        *slot = (*slot + actual).saturating_sub(old);
    }

    /// Units free at `now` by the estimate.
    pub fn remaining(&mut self, now: u64) -> u64 {
        self.roll(now.max(self.current_start));
        let elapsed = now.saturating_sub(self.current_start);
        self.limit.saturating_sub(self.estimate(self.previous, self.current, elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn admits_the_limit_within_one_fixed_window() {
        let mut counter = SlidingCounter::new(10, SEC);
        for _ in 0..10 {
            let at = counter.earliest(1, 0).unwrap();
            assert_eq!(at, 0);
            counter.admit(at, 1);
        }
        assert!(counter.earliest(1, 0).unwrap() > 0);
    }

    #[test]
    fn last_window_weighs_by_its_overlap() {
        let mut counter = SlidingCounter::new(10, SEC);
        counter.admit(0, 10);
        // Half a window later, half of the last window still counts: 5 of 10.
        assert_eq!(counter.remaining(SEC + SEC / 2), 5);
        assert_eq!(counter.earliest(5, SEC + SEC / 2), Ok(SEC + SEC / 2));
        assert_eq!(counter.earliest(6, SEC + SEC / 2), Ok(SEC + 6 * SEC / 10));
    }

    #[test]
    fn a_full_window_waits_into_the_next() {
        let mut counter = SlidingCounter::new(4, SEC);
        counter.admit(SEC / 2, 4);
        let at = counter.earliest(2, SEC / 2).unwrap();
        assert_eq!(at, SEC + SEC / 2);
        counter.admit(at, 2);
        assert_eq!(counter.remaining(at), 0);
    }

    #[test]
    fn cost_above_limit_never_passes() {
        let mut counter = SlidingCounter::new(4, SEC);
        assert_eq!(counter.earliest(5, 0), Err(Never { max_cost: 4 }));
    }

    #[test]
    fn settle_adjusts_the_window_that_counted_it() {
        let mut counter = SlidingCounter::new(100, SEC);
        let receipt = counter.admit(0, 80);
        counter.settle(receipt, 80, 20);
        assert_eq!(counter.remaining(0), 80);
    }
}
