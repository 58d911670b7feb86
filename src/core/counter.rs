//! The two-window counter: the cheap sliding window. It keeps a few numbers per limit whatever the
//! traffic: this fixed window's count, the last one's, and the instant of the last admission of each.
//!
//! What it promises: never more than the limit in any half-open interval of the window, like the exact
//! log. It cannot tell when each of the last window's admissions leaves, so it counts all of them until
//! a window has passed since the last of them (the weighted estimate of the classic counter, which
//! assumes them spread evenly, lets up to twice the limit through across a window edge: a burst at the
//! end of one window, another at the start of the next). The price is waiting longer than the exact
//! log would when the last window's admissions were spread out: up to a window after its last one, at
//! most one window more. A saturated stream still gets the whole limit once per window.
//!
//! Admissions are never placed before the last one, so instants only grow, and the counts always
//! describe the window an admission falls in.

use crate::core::decision::Never;

/// At most `limit` units in any interval of `window_ns`, from two fixed windows.
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
    /// The instant of the last admission counted in `previous`: all of it has left a window later.
    previous_last_at: u64,
    /// The instant of the last admission: none is placed before it, so waiters keep their order.
    last_at: u64,
}

impl SlidingCounter {
    pub fn new(limit: u64, window_ns: u64) -> Self {
        debug_assert!(limit >= 1 && window_ns >= 1);
        Self {
            limit,
            ceiling: limit,
            window_ns,
            current_start: 0,
            current: 0,
            previous: 0,
            previous_last_at: 0,
            last_at: 0,
        }
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

    /// The limit a request of `cost` is held to: the one in force, but never below the cost itself.
    fn limit_for(&self, cost: u64) -> u64 {
        self.limit.max(cost)
    }

    /// Moves the fixed windows forward so that `now` falls in the current one.
    fn roll(&mut self, now: u64) {
        let windows_passed = now.saturating_sub(self.current_start) / self.window_ns;
        match windows_passed {
            0 => return,
            1 => {
                self.previous = std::mem::take(&mut self.current);
                self.previous_last_at = self.last_at;
            }
            _ => (self.previous, self.current) = (0, 0),
        }
        self.current_start += windows_passed * self.window_ns;
    }

    /// What may still share an interval of the window with an admission at `at` (in the current
    /// window): all of this window, and all of the last one until a window after its last admission.
    fn counted_at(&self, at: u64) -> u64 {
        let previous_in = self.previous_last_at.saturating_add(self.window_ns) > at;
        self.current + if previous_in { self.previous } else { 0 }
    }

    /// The earliest instant, not before `now` nor the last admission, at which `cost` more fits.
    pub fn earliest(&mut self, cost: u64, now: u64) -> Result<u64, Never> {
        if cost > self.ceiling {
            return Err(Never { max_cost: self.ceiling });
        }
        let limit = self.limit_for(cost);
        let from = now.max(self.last_at);
        self.roll(from);
        if self.counted_at(from) + cost <= limit {
            return Ok(from);
        }
        if self.current + cost <= limit {
            // Only the last window stands in the way: it leaves a window after its last admission,
            // which is within this window (that admission came before this window began).
            return Ok(self.previous_last_at + self.window_ns);
        }
        // This window's own count: in the next window it is the last one's, which leaves a window after
        // its last admission (within the next window).
        Ok(self.last_at.max(self.current_start) + self.window_ns)
    }

    /// Counts `cost` at `at` (an instant `earliest` allowed); the receipt is the start of the fixed
    /// window that counted it.
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

    /// The count of the fixed window that started at `receipt`, while it is still counted.
    fn count_of(&mut self, receipt: u64) -> Option<&mut u64> {
        if receipt == self.current_start {
            Some(&mut self.current)
        } else if receipt + self.window_ns == self.current_start {
            Some(&mut self.previous)
        } else {
            None
        }
    }

    /// Replaces the cost counted under `receipt` (`old`) by `actual`, while its window is still counted.
    pub fn settle(&mut self, receipt: u64, old: u64, actual: u64) {
        if let Some(count) = self.count_of(receipt) {
            *count = (*count + actual).saturating_sub(old);
        }
    }

    /// Counts an admission of `cost` (counted under `receipt`) from `now`, when its request went later
    /// than admitted: in the window of `now` or of the last admission, if later, which it leaves no
    /// sooner than it really does. Those admitted after it keep their instants.
    pub fn restamp(&mut self, receipt: u64, cost: u64, now: u64) {
        let at = now.max(self.last_at);
        self.roll(at);
        if let Some(count) = self.count_of(receipt) {
            *count = count.saturating_sub(cost);
        }
        self.current += cost;
        self.last_at = at;
    }

    /// Units free at `now`.
    pub fn remaining(&mut self, now: u64) -> u64 {
        self.roll(now.max(self.current_start));
        self.limit.saturating_sub(self.counted_at(now.max(self.current_start)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn admit_at_earliest(counter: &mut SlidingCounter, cost: u64, now: u64) -> u64 {
        let at = counter.earliest(cost, now).unwrap();
        counter.admit(at, cost);
        at
    }

    #[test]
    fn admits_the_limit_within_one_fixed_window() {
        let mut counter = SlidingCounter::new(10, SEC);
        for _ in 0..10 {
            assert_eq!(admit_at_earliest(&mut counter, 1, 0), 0);
        }
        assert_eq!(counter.earliest(1, 0), Ok(SEC));
    }

    // Issue 15: the weighted estimate let a burst at the end of one window and another at the start of
    // the next through together: 19 of a limit of 10 within one second.
    #[test]
    fn never_admits_more_than_the_limit_across_a_window_edge() {
        let mut counter = SlidingCounter::new(10, SEC);
        counter.admit(SEC - 1, 10);
        assert_eq!(counter.remaining(SEC + SEC / 2), 0);
        assert_eq!(counter.earliest(1, SEC + SEC / 2), Ok(2 * SEC - 1));
        assert_eq!(counter.remaining(2 * SEC - 1), 10);
    }

    #[test]
    fn the_last_window_counts_until_a_window_after_its_last_admission() {
        let mut counter = SlidingCounter::new(10, SEC);
        counter.admit(0, 6);
        counter.admit(SEC / 2, 4);
        assert_eq!(counter.earliest(1, SEC), Ok(SEC + SEC / 2), "all ten until the last of them leaves");
        counter.admit(SEC + SEC / 2, 7);
        assert_eq!(counter.earliest(4, SEC + SEC / 2), Ok(2 * SEC + SEC / 2), "this window's own seven");
    }

    #[test]
    fn a_full_window_waits_into_the_next() {
        let mut counter = SlidingCounter::new(4, SEC);
        counter.admit(SEC / 2, 4);
        let at = admit_at_earliest(&mut counter, 2, SEC / 2);
        assert_eq!(at, SEC + SEC / 2);
        assert_eq!(counter.remaining(at), 2);
    }

    #[test]
    fn cost_above_limit_never_passes() {
        let mut counter = SlidingCounter::new(4, SEC);
        assert_eq!(counter.earliest(5, 0), Err(Never { max_cost: 4 }));
    }

    #[test]
    fn a_request_above_a_lowered_limit_still_passes_alone() {
        let mut counter = SlidingCounter::new(10, SEC);
        counter.set_limit(2);
        assert_eq!(admit_at_earliest(&mut counter, 5, 0), 0);
        assert_eq!(counter.earliest(1, 0), Ok(SEC));
    }

    #[test]
    fn settle_adjusts_the_window_that_counted_it() {
        let mut counter = SlidingCounter::new(100, SEC);
        let receipt = counter.admit(0, 80);
        counter.settle(receipt, 80, 20);
        assert_eq!(counter.remaining(0), 80);
    }

    #[test]
    fn a_late_last_admission_is_counted_from_when_it_went() {
        let mut counter = SlidingCounter::new(2, SEC);
        counter.admit(0, 1);
        let receipt = counter.admit(0, 1);
        counter.restamp(receipt, 1, SEC + SEC / 4);
        assert_eq!(counter.earliest(1, SEC + SEC / 4), Ok(SEC + SEC / 4), "the first has left");
        counter.admit(SEC + SEC / 4, 1);
        assert_eq!(counter.earliest(1, SEC + SEC / 4), Ok(2 * SEC + SEC / 4), "the late one still counts");
    }

    #[test]
    fn a_late_admission_others_came_after_is_counted_with_the_last() {
        let mut counter = SlidingCounter::new(2, SEC);
        let first = counter.admit(0, 1);
        counter.admit(SEC / 2, 1);
        counter.restamp(first, 1, SEC / 4);
        assert_eq!(counter.earliest(1, SEC / 2), Ok(SEC + SEC / 2));
        counter.restamp(first, 1, SEC + SEC / 10);
        counter.admit(SEC + SEC / 2, 1);
        assert_eq!(counter.earliest(1, SEC + SEC / 2), Ok(2 * SEC + SEC / 2), "it went in this window");
    }
}
