//! The exact sliding window: a log of the admissions still inside the window, so that no interval of the
//! window's length ever holds more than the limit, and the whole limit is usable at once.
//!
//! Above 65,536 per window, admissions less than 1/65,536 of the window apart share one entry, dated at
//! the later of them: that only ever keeps an admission in the window longer than its own time would
//! (never over the limit), costs at most 0.002% of the window's capacity, and bounds the log however
//! large the limit. Each keeps a receipt of its own (an entry holds a run of them), so one that must
//! move (its request went late, or it waits longer) leaves the shared entry first and moves alone: the
//! others stay counted where they were.
//!
//! Memory: 56 bytes per entry, and never more entries than the limit (costs are at least one) nor more
//! than 65,536 per window (3.5 MiB), plus one per waiter (its place in line, or its own entry once it
//! leaves a shared one).
//!
//! A server counts a request when it arrives, and a client sends some time after admitting it, not
//! always in the order it admitted (a burst of a hundred waits for a hundred connections). So an
//! admission is moved to when its request really goes ([`ExactWindow::restamp`]), the log kept in order
//! of time, and a waiter whose instant was reckoned from earlier admissions that went late checks it
//! again when it wakes ([`ExactWindow::recheck`]).
//! Cost per decision: O(1) amortised for unit costs; a weighted request reads as many of the oldest
//! entries as must leave the window to make room for it, each of which leaves once.

use std::collections::VecDeque;

use crate::core::decision::Never;
use crate::core::feedback;

/// Limits above this share entries between close admissions; below it the log is bounded by the limit.
const MERGE_ABOVE: u64 = 65_536;

/// `Entry::since` of an entry that counts one admission, at its `at`.
const ALONE: u64 = u64::MAX;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The instant it leaves the window from (a window later); the latest of its admissions.
    at: u64,
    /// The earliest instant any of its admissions may have gone, for an entry shared by several
    /// (merged); `ALONE` for one admission.
    since: u64,
    cost: u64,
    /// The receipts of the admissions it counts: one, or a run admitted one after another (merged).
    /// Entries move when restamped, so a receipt names an entry, not a place.
    first: u64,
    last: u64,
    /// Its place in arrival order: its first receipt, or a later number once it was counted again (it
    /// went so late that its first entry had left the window, so it arrived anew).
    rank: u64,
    /// The cost in the window that ends at this entry, itself included, when it was admitted or its
    /// request went: what a server counting the same requests counted on its arrival.
    counted_through: u64,
}

impl Entry {
    fn holds(&self, receipt: u64) -> bool {
        (self.first..=self.last).contains(&receipt)
    }

    /// The earliest instant any of its admissions may have gone.
    fn first_at(&self) -> u64 {
        if self.since == ALONE { self.at } else { self.since }
    }
}

/// At most `limit` units of cost in any interval of `window_ns` nanoseconds.
#[derive(Debug, Clone)]
pub struct ExactWindow {
    /// The limit in force: the configured one, or less while the server asks for less.
    limit: u64,
    /// The configured limit: what can ever pass.
    ceiling: u64,
    window_ns: u64,
    /// Admissions closer than this to the last entry join it (0: never).
    merge_ns: u64,
    /// In order of `at`.
    log: VecDeque<Entry>,
    next_id: u64,
    /// The sum of the costs in `log`.
    counted: u64,
    /// The latest instant a caller said it was (a decision, a stamp): every request that went by then
    /// is in the log at its real instant.
    latest_now: u64,
}

impl ExactWindow {
    pub fn new(limit: u64, window_ns: u64) -> Self {
        debug_assert!(limit >= 1 && window_ns >= 1);
        let merge_ns = if limit > MERGE_ABOVE { window_ns / MERGE_ABOVE } else { 0 };
        Self { limit, ceiling: limit, window_ns, merge_ns, log: VecDeque::new(), next_id: 0, counted: 0, latest_now: 0 }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// Enforces `limit` (at most the configured one) from now on.
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit.clamp(1, self.ceiling);
    }

    /// The limit a request of `cost` is held to: the one in force, but never below the cost itself,
    /// so a request the configured limit admits is not made to wait forever while it is lowered.
    fn limit_for(&self, cost: u64) -> u64 {
        self.limit.max(cost)
    }

    /// Drops the entries that can no longer share a window with an admission at `now` or later;
    /// returns how many. `now` is the caller's clock: it is remembered as the latest seen.
    #[inline]
    fn forget_before(&mut self, now: u64) -> usize {
        self.latest_now = self.latest_now.max(now);
        let mut forgotten = 0;
        while let Some(oldest) = self.log.front() {
            if oldest.at.saturating_add(self.window_ns) > now {
                break;
            }
            self.counted -= oldest.cost;
            self.log.pop_front();
            forgotten += 1;
        }
        forgotten
    }

    /// The earliest instant, not before `now` nor before the last admission, at which `cost` more fits.
    #[inline]
    pub fn earliest(&mut self, cost: u64, now: u64) -> Result<u64, Never> {
        if cost > self.ceiling {
            return Err(Never { max_cost: self.ceiling });
        }
        self.forget_before(now);
        let floor = self.log.back().map_or(now, |last| last.at.max(now));
        let mut excess = (self.counted + cost).saturating_sub(self.limit_for(cost));
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
    #[inline]
    pub fn admit(&mut self, at: u64, cost: u64) -> u64 {
        self.counted += cost;
        // The last in the log, so its window holds all that is counted (an overcount for a reservation
        // not yet due, corrected when its request goes).
        let counted_through = self.counted;
        let receipt = self.next_id;
        self.next_id += 1;
        if let Some(last) = self.log.back_mut() {
            // Only a run of receipts shares an entry, so that an entry names exactly its admissions.
            if at - last.at < self.merge_ns && last.last + 1 == receipt {
                last.since = last.first_at();
                last.at = at;
                last.cost += cost;
                last.last = receipt;
                last.counted_through = counted_through;
                return receipt;
            }
        }
        let entry = Entry { at, since: ALONE, cost, first: receipt, last: receipt, rank: receipt, counted_through };
        self.log.push_back(entry);
        receipt
    }

    /// Counts `cost` from `now` (or the last admission, if later) whatever room is left.
    pub fn charge(&mut self, cost: u64, now: u64) {
        self.forget_before(now);
        let at = self.log.back().map_or(now, |last| last.at.max(now));
        self.admit(at, cost);
    }

    /// The instant `cost` fits again from `from`, for an admission whose entry has left the window,
    /// counted there under its receipt (what never fits, after a cut, is counted from `from`): after
    /// every admission already made, as a newcomer is.
    fn reckon_again(&mut self, receipt: u64, cost: u64, from: u64) -> u64 {
        let goes = from.max(self.latest_now);
        let at = self.earliest(cost, goes).unwrap_or(goes);
        self.count_again(receipt, cost, at);
        at
    }

    /// Counts `cost` under `receipt` again at `at`, its earlier entry gone, as a new arrival: so
    /// settling or giving it back finds it.
    fn count_again(&mut self, receipt: u64, cost: u64, at: u64) {
        self.counted += cost;
        let rank = self.next_id;
        self.next_id += 1;
        let place = self.log.iter().rposition(|other| other.at <= at).map_or(0, |p| p + 1);
        let entry = Entry { at, since: ALONE, cost, first: receipt, last: receipt, rank, counted_through: 0 };
        self.log.insert(place, entry);
        let after = self.log.range(place + 1..).map(|e| e.cost).sum::<u64>();
        self.log[place].counted_through = self.counted - after;
    }

    /// Where the entry of a receipt stands: near the end, since receipts are used soon after admission
    /// or not at all once their entry has left the window.
    /// The latest entry holding it: one it moved to alone stands after the shared one it left.
    fn position(&self, receipt: u64) -> Option<usize> {
        self.log.iter().rposition(|entry| entry.holds(receipt))
    }

    /// The entry that counts only the admission of `receipt` (of `cost`), taken out of the entry it
    /// shares if it does: it may have gone anywhere from that entry's first instant, and counts from
    /// there until it moves. `None` once it has left the window.
    fn own_entry(&mut self, receipt: u64, cost: u64) -> Option<usize> {
        let index = self.position(receipt)?;
        let shared = self.log[index];
        if shared.first == shared.last {
            return Some(index);
        }
        let cost = cost.min(shared.cost);
        let left = shared.cost - cost;
        let own = Entry { since: shared.first_at(), cost, first: receipt, last: receipt, rank: receipt, ..shared };
        self.log.insert(index + 1, own);
        if left == 0 {
            self.log.remove(index);
            return Some(index);
        }
        self.log[index].cost = left;
        Some(index + 1)
    }

    /// Moves the entry at `index` to the later instant `at`, keeping the log in order; returns where
    /// it went.
    fn move_later(&mut self, index: usize, at: u64) -> usize {
        let mut entry = self.log.remove(index).expect("an index of the log");
        entry.at = at;
        let place = self.log.range(index..).position(|other| other.at > at).map_or(self.log.len(), |p| index + p);
        self.log.insert(place, entry);
        place
    }

    /// Corrects the cost `old` of an admission to what it really was (`actual`); once it left the
    /// window, nothing to do.
    pub fn settle(&mut self, receipt: u64, old: u64, actual: u64) {
        if let Some(index) = self.position(receipt) {
            let entry = &mut self.log[index];
            let corrected = (entry.cost + actual).saturating_sub(old);
            let before = std::mem::replace(&mut entry.cost, corrected);
            self.counted = self.counted - before + corrected;
        }
    }

    /// Moves an admission of `cost` to `now`, when its request really goes, if that is later: it then
    /// leaves the window when the server's count of it does. A later admission reckoned from the old
    /// instant checks again ([`ExactWindow::recheck`]). One that goes so late that its entry has left
    /// the window is counted again from now, under its receipt, whatever room is left: the server
    /// counts it when it arrives.
    pub fn restamp(&mut self, receipt: u64, cost: u64, now: u64) {
        let Some(mut index) = self.own_entry(receipt, cost) else {
            self.forget_before(now);
            self.count_again(receipt, cost, now);
            return;
        };
        if now > self.log[index].at {
            index = self.move_later(index, now);
            self.log[index].since = ALONE;
        }
        // Counted as the server will on its arrival: all still in the window but what goes after it
        // (reservations not yet due, few). It stays itself, being at `now` or later.
        index -= self.forget_before(now);
        let after = self.log.range(index + 1..).map(|e| e.cost).sum::<u64>();
        self.log[index].counted_through = self.counted - after;
    }

    /// The instant an admission reserved for `from` (or moved there) really conforms, given the others
    /// as they stand now (some may have gone later than reckoned): `from` if it still fits, else the
    /// instant enough of them leave; its entry is moved there if it stands earlier. It is checked where
    /// it will really go: not before the latest instant seen, by when every request that went is in the
    /// log at its real instant. It counts those that went (two waiters reserved for one instant may
    /// wake in either order, and the later counts the earlier) and those ahead of it in line; those
    /// behind it check again when they go. An entry that stands later than `from` (it shares the entry
    /// of a later admission) stays there. One whose entry has left the window (it goes more than a
    /// window after its instant) is reckoned again as a new admission of `cost`, under its receipt.
    pub fn recheck(&mut self, receipt: u64, cost: u64, from: u64) -> u64 {
        let Some(index) = self.own_entry(receipt, cost) else { return self.reckon_again(receipt, cost, from) };
        let entry = self.log[index];
        let goes = from.max(self.latest_now);
        let (window_ns, latest_now) = (self.window_ns, self.latest_now);
        let counted = move |e: &Entry| e.rank < entry.rank || e.at <= latest_now;
        let in_window = move |e: &Entry| e.first_at() <= goes && e.at.saturating_add(window_ns) > goes;
        let log = &self.log;
        let sharing = || {
            let others = log.iter().enumerate().filter(move |&(i, e)| i != index && counted(e) && in_window(e));
            others.map(|(_, e)| e)
        };
        let others = sharing().map(|e| e.cost).sum::<u64>();
        let mut excess = (others + entry.cost).saturating_sub(self.limit_for(entry.cost));
        let mut conforms = from;
        for e in sharing() {
            if excess == 0 {
                break;
            }
            excess = excess.saturating_sub(e.cost);
            conforms = e.at.saturating_add(window_ns);
        }
        if conforms > entry.at {
            self.move_later(index, conforms);
        }
        conforms
    }

    /// What this log counts where a server counted the admission of `receipt` on its arrival: the
    /// window that ends at it when its request went, plus the admissions that went up to `late_ns`
    /// after it (they may have arrived first). Never less than the server counted of the same requests,
    /// since the window is the server's period plus the guard. `None` once the admission has left.
    pub fn counted_around(&self, receipt: u64, late_ns: u64) -> Option<u64> {
        let index = self.position(receipt)?;
        let entry = &self.log[index];
        let following = self.log.range(index + 1..).map(|e| (e.at, e.cost));
        Some(entry.counted_through + feedback::went_just_after(following, entry.at, late_ns))
    }

    /// Takes an admission of `cost` back (a waiter gave up before its turn). Removing an admission never
    /// lets any interval hold more, so this is exact wherever the entry sits.
    pub fn give_back(&mut self, receipt: u64, cost: u64) {
        self.settle(receipt, cost, 0);
        if let Some(index) = self.position(receipt)
            && self.log[index].cost == 0 {
                self.log.remove(index);
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
        window.settle(receipt, 80, 30);
        assert_eq!(window.remaining(SEC), 70);
        window.settle(receipt, 30, 120);
        assert_eq!(window.remaining(SEC), 0);
        assert_eq!(window.earliest(10, SEC), Ok(60 * SEC));
    }

    #[test]
    fn settle_after_leaving_the_window_changes_nothing() {
        let mut window = ExactWindow::new(10, SEC);
        let receipt = window.admit(0, 5);
        window.admit(2 * SEC, 1);
        window.settle(receipt, 5, 9);
        assert_eq!(window.remaining(2 * SEC), 9);
    }

    #[test]
    fn cancelled_reservation_returns_its_slot() {
        let mut window = ExactWindow::new(2, SEC);
        window.admit(0, 1);
        let middle = window.admit(0, 1);
        let last = window.admit(SEC, 1);
        window.give_back(middle, 1);
        assert_eq!(window.earliest(1, SEC / 2), Ok(SEC), "nobody overtakes the reservation at SEC");
        window.give_back(last, 1);
        assert_eq!(window.earliest(1, SEC / 2), Ok(SEC / 2));
    }

    #[test]
    fn a_late_request_moves_its_admission_to_when_it_really_went() {
        let mut window = ExactWindow::new(2, 10 * SEC);
        window.admit(0, 1);
        window.admit(0, 1);
        let at = window.earliest(1, SEC).unwrap();
        let late = window.admit(at, 1);
        window.restamp(late, 1, at + 3);
        // Later ones come after the late one's real instant, and leave a window after it.
        assert_eq!(window.earliest(1, SEC), Ok(10 * SEC + 3));
        assert_eq!(window.earliest(2, SEC), Ok(20 * SEC + 3));
    }

    #[test]
    fn a_waiter_reckoned_from_a_request_that_went_late_waits_for_it() {
        let mut window = ExactWindow::new(1, SEC);
        let first = window.admit(0, 1);
        let at = window.earliest(1, 0).unwrap();
        let waiter = window.admit(at, 1);
        assert_eq!(at, SEC);
        window.restamp(first, 1, SEC / 4);
        assert_eq!(window.recheck(waiter, 1, SEC), SEC + SEC / 4);
        assert_eq!(window.recheck(waiter, 1, SEC), SEC + SEC / 4, "checking again changes nothing");
        assert_eq!(window.recheck(first, 1, SEC / 4), SEC / 4, "the one that went stays where it went");
    }

    #[test]
    fn a_request_sent_after_its_entry_left_the_window_is_counted_from_when_it_went() {
        let mut window = ExactWindow::new(1, SEC);
        let stale = window.admit(0, 1);
        assert_eq!(window.earliest(1, SEC + SEC / 2), Ok(SEC + SEC / 2), "the first left the window");
        window.admit(SEC + SEC / 2, 1);
        window.restamp(stale, 1, 2 * SEC);
        assert_eq!(window.earliest(1, 2 * SEC + SEC / 10), Ok(3 * SEC), "the one sent at 2 s counts until 3 s");
        window.settle(stale, 1, 0);
        assert_eq!(window.earliest(1, 2 * SEC + SEC / 10), Ok(2 * SEC + SEC / 2), "and its receipt still finds it");
    }

    #[test]
    fn a_waiter_whose_entry_left_the_window_is_reckoned_again_after_those_admitted_since() {
        let mut window = ExactWindow::new(1, SEC);
        let stale = window.admit(0, 1);
        assert_eq!(window.earliest(1, SEC + SEC / 2), Ok(SEC + SEC / 2));
        window.admit(SEC + SEC / 2, 1);
        assert_eq!(window.recheck(stale, 1, 2 * SEC), 2 * SEC + SEC / 2, "it goes when the one admitted at 1.5 s leaves");
        assert_eq!(window.recheck(stale, 1, 2 * SEC), 2 * SEC + SEC / 2, "checking again changes nothing");
        assert_eq!(window.earliest(1, 2 * SEC), Ok(3 * SEC + SEC / 2), "its place is held meanwhile");
    }

    #[test]
    fn a_restamped_admission_moves_past_those_sent_before_it() {
        let mut window = ExactWindow::new(10, SEC);
        let first = window.admit(0, 1);
        window.admit(SEC / 10, 1);
        window.restamp(first, 1, SEC / 2);
        assert_eq!(window.earliest(8, SEC / 2), Ok(SEC / 2));
        window.settle(first, 1, 3);
        assert_eq!(window.remaining(SEC / 2), 6, "its receipt still finds it");
        assert_eq!(window.remaining(SEC + SEC / 10 - 1), 6);
        assert_eq!(window.remaining(SEC + SEC / 10), 7, "the second leaves first now");
        assert_eq!(window.remaining(SEC + SEC / 2), 10);
    }

    #[test]
    fn counted_around_an_admission_is_its_window_and_what_went_just_after() {
        let mut window = ExactWindow::new(10, SEC);
        let first = window.admit(0, 1);
        window.admit(SEC / 2, 2);
        let middle = window.admit(SEC / 2, 1);
        window.admit(SEC / 2 + 5, 1);
        window.admit(SEC / 2 + 100, 1);
        assert_eq!(window.counted_around(first, 0), Some(1));
        assert_eq!(window.counted_around(middle, 10), Some(5), "not the one 100 ns after");
        window.remaining(2 * SEC);
        assert_eq!(window.counted_around(middle, 10), None, "gone with its window");
    }

    #[test]
    fn a_request_that_went_late_is_counted_as_the_window_stood_when_it_went() {
        let mut window = ExactWindow::new(10, SEC);
        window.admit(0, 1);
        let late = window.admit(0, 1);
        let waiter = window.admit(2 * SEC, 1);
        assert_eq!(window.counted_around(late, 0), Some(2));
        window.restamp(late, 1, SEC + 1);
        assert_eq!(window.counted_around(late, 0), Some(1), "the first had left; the waiter goes after");
        assert_eq!(window.counted_around(waiter, 0), Some(3), "reckoned before anything left");
    }

    #[test]
    fn close_admissions_share_an_entry_dated_at_the_later_above_65536_a_window() {
        let mut window = ExactWindow::new(100_000, 65_536 * SEC);
        let first = window.admit(0, 1);
        let second = window.admit(SEC / 2, 1);
        assert_eq!((first, second, window.len()), (0, 1, 1), "each keeps its own receipt");
        window.admit(2 * SEC, 1);
        assert_eq!(window.len(), 2);
        // Both early admissions leave together, a window after the later one.
        assert_eq!(window.remaining(65_536 * SEC + SEC / 2 - 1), 99_997);
        assert_eq!(window.remaining(65_536 * SEC + SEC / 2), 99_999);
        let mut small = ExactWindow::new(1_000, SEC);
        small.admit(0, 1);
        small.admit(1, 1);
        assert_eq!(small.len(), 2, "a log bounded by its limit keeps every admission");
    }

    // One admission of a shared entry that went late leaves it and counts from when it went; the others
    // stay counted where they were: a waiter checking in between sees both.
    #[test]
    fn an_admission_that_went_late_leaves_its_shared_entry() {
        let window_ns = 65_536 * SEC;
        let mut window = ExactWindow::new(100_000, window_ns);
        window.admit(0, 60_000);
        let shared = window.admit(0, 30_000);
        let waiter = window.admit(SEC, 10_000);
        assert_eq!(window.len(), 2);
        window.restamp(shared, 30_000, 10 * SEC);
        assert_eq!(window.len(), 3);
        assert_eq!(window.recheck(waiter, 10_000, SEC), SEC, "the 90,000 and the waiter fit");
        window.settle(waiter, 10_000, 20_000);
        assert_eq!(window.recheck(waiter, 10_000, SEC), window_ns, "it waits for the 60,000 to leave, not the 30,000");
        assert_eq!(window.remaining(window_ns), 50_000, "the 30,000 count from 10 s");
    }

    // Several admissions of one entry that go more than a window late each count themselves: a sibling's
    // re-count is not taken for its own.
    #[test]
    fn admissions_of_one_entry_that_go_very_late_each_count_themselves() {
        let mut window = ExactWindow::new(100_000, 65_536 * SEC);
        let first = window.admit(0, 40_000);
        let second = window.admit(0, 40_000);
        let later = 3 * 65_536 * SEC;
        window.restamp(first, 40_000, later);
        assert_eq!(window.recheck(second, 40_000, later), later, "80,000 fit");
        window.restamp(second, 40_000, later + SEC);
        assert_eq!(window.remaining(later + SEC), 20_000);
        assert_eq!(window.earliest(40_000, later + SEC), Ok(later + 65_536 * SEC));
    }

    // Two waiters reserved for one instant may go in either order: the one that goes later counts the
    // other where it went, though it stands after it in the log.
    #[test]
    fn a_late_waiter_counts_those_that_went_before_it() {
        let mut window = ExactWindow::new(2, SEC);
        window.admit(0, 1);
        let went_late = window.admit(0, 1);
        let (first, second) = (window.earliest(1, 0).unwrap(), window.earliest(2, 0).unwrap());
        assert_eq!((first, second), (SEC, SEC));
        let early = window.admit(SEC, 1);
        let late = window.admit(SEC, 1);
        window.restamp(went_late, 1, SEC / 10);
        window.restamp(early, 1, SEC + SEC / 20);
        assert_eq!(window.recheck(late, 1, SEC), SEC + SEC / 10);
    }

    #[test]
    fn an_entry_costs_what_the_docs_say() {
        assert_eq!(std::mem::size_of::<Entry>(), 56);
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
