//! The exact sliding window: a log of the admissions still inside the window, so that no interval of the
//! window's length ever holds more than the limit, and the whole limit is usable at once.
//!
//! Memory: one 16-byte entry per admission still in the window, so never more entries than the limit
//! (costs are at least one), plus one per reservation not yet due (a waiter's place in line).
//! Cost per decision: O(1) amortised for unit costs; a weighted request reads as many of the oldest
//! entries as must leave the window to make room for it, each of which leaves once.

use std::collections::VecDeque;

use crate::core::decision::Never;

#[derive(Debug, Clone, Copy)]
struct Entry {
    at: u64,
    cost: u64,
}

/// At most `limit` units of cost in any interval of `window_ns` nanoseconds.
#[derive(Debug, Clone)]
pub struct ExactWindow {
    limit: u64,
    window_ns: u64,
    log: VecDeque<Entry>,
    /// Sequence number of `log[0]`; an admission's receipt is its sequence number.
    first_seq: u64,
    /// The sum of the costs in `log`.
    counted: u64,
}

impl ExactWindow {
    pub fn new(limit: u64, window_ns: u64) -> Self {
        debug_assert!(limit >= 1 && window_ns >= 1);
        Self { limit, window_ns, log: VecDeque::new(), first_seq: 0, counted: 0 }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// Drops the entries that can no longer share a window with an admission at `now` or later.
    fn forget_before(&mut self, now: u64) {
        while let Some(oldest) = self.log.front() {
            if oldest.at.saturating_add(self.window_ns) > now {
                break;
            }
            self.counted -= oldest.cost;
            self.log.pop_front();
            self.first_seq += 1;
        }
    }

    /// The earliest instant, not before `now` nor before the last admission, at which `cost` more fits.
    pub fn earliest(&mut self, cost: u64, now: u64) -> Result<u64, Never> {
        if cost > self.limit {
            return Err(Never { max_cost: self.limit });
        }
        self.forget_before(now);
        let floor = self.log.back().map_or(now, |last| last.at.max(now));
        let mut excess = (self.counted + cost).saturating_sub(self.limit);
        if excess == 0 {
            return Ok(floor);
        }
        for entry in &self.log {
            excess = excess.saturating_sub(entry.cost);
            if excess == 0 {
                return Ok(floor.max(entry.at.saturating_add(self.window_ns)));
            }
        }
        unreachable!("the log holds more than the excess whenever cost <= limit")
    }

    /// Counts `cost` admitted at `at` (never before an earlier admission); returns its receipt.
    /// Entries are forgotten by the next decision at its own `now`, never by a reservation's later
    /// instant: a reservation given back must leave the log as it was.
    pub fn admit(&mut self, at: u64, cost: u64) -> u64 {
        self.log.push_back(Entry { at, cost });
        self.counted += cost;
        self.first_seq + self.log.len() as u64 - 1
    }

    /// Counts `cost` from `now` (or the last admission, if later) whatever room is left.
    pub fn charge(&mut self, cost: u64, now: u64) {
        self.forget_before(now);
        let at = self.log.back().map_or(now, |last| last.at.max(now));
        self.admit(at, cost);
    }

    fn entry_mut(&mut self, receipt: u64) -> Option<&mut Entry> {
        let index = receipt.checked_sub(self.first_seq)?;
        self.log.get_mut(index as usize)
    }

    /// Corrects the cost of an admission to what it really was; once it left the window, nothing to do.
    pub fn settle(&mut self, receipt: u64, actual: u64) {
        if let Some(entry) = self.entry_mut(receipt) {
            let old = std::mem::replace(&mut entry.cost, actual);
            self.counted = self.counted - old + actual;
        }
    }

    /// Moves an admission to the instant its request really went (`now`, later than reserved: a waiter
    /// wakes a little after its instant), as long as no later admission was placed relying on the old
    /// instant; otherwise it stays. Never past the next admission, so the log stays in order.
    pub fn restamp(&mut self, receipt: u64, now: u64) {
        let Some(index) = receipt.checked_sub(self.first_seq).map(|i| i as usize) else { return };
        let (Some(entry), Some(last)) = (self.log.get(index), self.log.back()) else { return };
        if now <= entry.at || last.at >= entry.at.saturating_add(self.window_ns) {
            return;
        }
        let next = self.log.get(index + 1).map_or(u64::MAX, |next| next.at);
        self.log[index].at = now.min(next);
    }

    /// Takes an admission back (a waiter gave up before its turn). Removing an admission never lets any
    /// interval hold more, so this is exact wherever the entry sits.
    pub fn give_back(&mut self, receipt: u64) {
        let is_last = receipt + 1 == self.first_seq + self.log.len() as u64;
        if is_last {
            if let Some(entry) = self.log.pop_back() {
                self.counted -= entry.cost;
            }
        } else {
            self.settle(receipt, 0);
        }
    }

    /// Units still free at `now`.
    pub fn remaining(&mut self, now: u64) -> u64 {
        self.forget_before(now);
        self.limit.saturating_sub(self.counted)
    }

    /// Entries held now (for memory accounting and tests).
    pub fn len(&self) -> usize {
        self.log.len()
    }

    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn admit_at_earliest(window: &mut ExactWindow, cost: u64, now: u64) -> u64 {
        let at = window.earliest(cost, now).unwrap();
        window.admit(at, cost);
        at
    }

    #[test]
    fn admits_full_window_at_once_then_one_per_departure() {
        let mut window = ExactWindow::new(3, 10 * SEC);
        assert_eq!(admit_at_earliest(&mut window, 1, 0), 0);
        assert_eq!(admit_at_earliest(&mut window, 1, 2 * SEC), 2 * SEC);
        assert_eq!(admit_at_earliest(&mut window, 1, 3 * SEC), 3 * SEC);
        assert_eq!(admit_at_earliest(&mut window, 1, 4 * SEC), 10 * SEC);
        assert_eq!(admit_at_earliest(&mut window, 1, 4 * SEC), 12 * SEC);
        assert_eq!(admit_at_earliest(&mut window, 1, 4 * SEC), 13 * SEC);
    }

    #[test]
    fn weighted_request_waits_for_enough_to_leave() {
        let mut window = ExactWindow::new(100, 60 * SEC);
        window.admit(0, 40);
        window.admit(SEC, 40);
        window.admit(2 * SEC, 20);
        assert_eq!(window.earliest(50, 3 * SEC), Ok(61 * SEC));
        assert_eq!(window.earliest(100, 3 * SEC), Ok(62 * SEC));
        assert_eq!(window.earliest(101, 3 * SEC), Err(Never { max_cost: 100 }));
    }

    #[test]
    fn never_admits_before_the_last_admission() {
        let mut window = ExactWindow::new(10, SEC);
        window.admit(5 * SEC, 1);
        assert_eq!(window.earliest(1, 0), Ok(5 * SEC));
    }

    #[test]
    fn settle_refunds_and_charges_in_place() {
        let mut window = ExactWindow::new(100, 60 * SEC);
        let receipt = window.admit(0, 80);
        assert_eq!(window.remaining(SEC), 20);
        window.settle(receipt, 30);
        assert_eq!(window.remaining(SEC), 70);
        window.settle(receipt, 120);
        assert_eq!(window.remaining(SEC), 0);
        assert_eq!(window.earliest(10, SEC), Ok(60 * SEC));
    }

    #[test]
    fn settle_after_leaving_the_window_changes_nothing() {
        let mut window = ExactWindow::new(10, SEC);
        let receipt = window.admit(0, 5);
        window.admit(2 * SEC, 1);
        window.settle(receipt, 9);
        assert_eq!(window.remaining(2 * SEC), 9);
    }

    #[test]
    fn cancelled_reservation_returns_its_slot() {
        let mut window = ExactWindow::new(2, SEC);
        window.admit(0, 1);
        let middle = window.admit(0, 1);
        let last = window.admit(SEC, 1);
        window.give_back(middle);
        assert_eq!(window.earliest(1, SEC / 2), Ok(SEC), "nobody overtakes the reservation at SEC");
        window.give_back(last);
        assert_eq!(window.earliest(1, SEC / 2), Ok(SEC / 2));
    }

    #[test]
    fn a_late_waiter_moves_its_admission_to_when_it_really_went() {
        let mut window = ExactWindow::new(2, 10 * SEC);
        window.admit(0, 1);
        window.admit(0, 1);
        let at = window.earliest(1, SEC).unwrap();
        let late = window.admit(at, 1);
        window.restamp(late, at + 3);
        // Later ones come after the late one's real instant, and leave a window after it.
        assert_eq!(window.earliest(1, SEC), Ok(10 * SEC + 3));
        assert_eq!(window.earliest(2, SEC), Ok(20 * SEC + 3));
    }

    #[test]
    fn an_admission_others_relied_on_keeps_its_instant() {
        let mut window = ExactWindow::new(1, SEC);
        let first = window.admit(0, 1);
        let at = window.earliest(1, 0).unwrap();
        window.admit(at, 1);
        window.restamp(first, 5);
        assert_eq!(window.earliest(1, 0), Ok(2 * SEC));
        window.forget_before(SEC);
        assert_eq!(window.len(), 1, "the first left the window at its old instant");
    }

    #[test]
    fn log_holds_no_more_than_the_limit_besides_pending_reservations() {
        let mut window = ExactWindow::new(5, SEC);
        for step in 0..1_000 {
            let now = step * SEC / 7;
            if window.earliest(1, now) == Ok(now) {
                window.admit(now, 1);
            }
            assert!(window.len() <= 5);
        }
    }
}
