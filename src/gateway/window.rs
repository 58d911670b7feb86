//! A strict sliding window, as the server enforces it: an admission at time `a` with cost `c` occupies
//! `c` of the limit during `[a, a + length)`, so no interval of that length ever holds more than `max`.
//! Exact by construction: it keeps every admission still inside the window (at most `max` entries).

use std::collections::VecDeque;

/// Whether a cost fits in a window now, and if not, when it will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowCheck {
    Fits,
    /// It fits once enough old admissions have left: in this many nanoseconds.
    FitsIn(u64),
    /// The cost exceeds the whole limit, so it never fits.
    Never,
}

#[derive(Debug, Clone)]
pub struct StrictWindow {
    max: u64,
    length_ns: u64,
    /// (admission time, cost), oldest first; costs are never zero.
    entries: VecDeque<(u64, u64)>,
    used: u64,
}

impl StrictWindow {
    pub fn new(max: u64, length_ns: u64) -> Self {
        Self { max, length_ns, entries: VecDeque::new(), used: 0 }
    }

    fn evict(&mut self, now_ns: u64) {
        while let Some(&(at, cost)) = self.entries.front() {
            if at + self.length_ns > now_ns {
                break;
            }
            self.entries.pop_front();
            self.used -= cost;
        }
    }

    pub fn check(&mut self, now_ns: u64, cost: u64) -> WindowCheck {
        if cost > self.max {
            return WindowCheck::Never;
        }
        self.evict(now_ns);
        if self.used + cost <= self.max {
            return WindowCheck::Fits;
        }
        // Walk the oldest admissions until enough would have left for this cost to fit.
        let mut still_used = self.used;
        for &(at, entry_cost) in &self.entries {
            still_used -= entry_cost;
            if still_used + cost <= self.max {
                return WindowCheck::FitsIn(at + self.length_ns - now_ns);
            }
        }
        unreachable!("cost <= max, so it fits once the window is empty")
    }

    /// Counts an admission; the caller has checked that it fits.
    pub fn record(&mut self, now_ns: u64, cost: u64) {
        if cost > 0 {
            self.entries.push_back((now_ns, cost));
            self.used += cost;
        }
    }

    pub fn remaining(&mut self, now_ns: u64) -> u64 {
        self.evict(now_ns);
        self.max - self.used
    }

    /// Nanoseconds until every admission now in the window has left it (OpenAI's "reset").
    pub fn until_empty_ns(&mut self, now_ns: u64) -> u64 {
        self.evict(now_ns);
        self.entries.back().map_or(0, |&(at, _)| at + self.length_ns - now_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn admits_full_window_at_once_then_one_per_departure() {
        let mut window = StrictWindow::new(3, 10 * SEC);
        for t in [0, 1, 2] {
            assert_eq!(window.check(t * SEC, 1), WindowCheck::Fits);
            window.record(t * SEC, 1);
        }
        assert_eq!(window.check(5 * SEC, 1), WindowCheck::FitsIn(5 * SEC));
        assert_eq!(window.check(10 * SEC - 1, 1), WindowCheck::FitsIn(1));
        assert_eq!(window.check(10 * SEC, 1), WindowCheck::Fits);
        window.record(10 * SEC, 1);
        assert_eq!(window.check(10 * SEC, 1), WindowCheck::FitsIn(SEC));
    }

    #[test]
    fn large_cost_waits_for_several_departures() {
        let mut window = StrictWindow::new(100, 60 * SEC);
        window.record(0, 40);
        window.record(SEC, 40);
        window.record(2 * SEC, 20);
        assert_eq!(window.check(3 * SEC, 70), WindowCheck::FitsIn(58 * SEC));
        assert_eq!(window.check(3 * SEC, 101), WindowCheck::Never);
    }

    #[test]
    fn remaining_and_reset_follow_departures() {
        let mut window = StrictWindow::new(5, 10 * SEC);
        window.record(0, 2);
        window.record(4 * SEC, 1);
        assert_eq!(window.remaining(5 * SEC), 2);
        assert_eq!(window.until_empty_ns(5 * SEC), 9 * SEC);
        assert_eq!(window.remaining(10 * SEC), 4);
        assert_eq!(window.until_empty_ns(14 * SEC), 0);
    }

    #[test]
    fn zero_cost_is_not_counted() {
        let mut window = StrictWindow::new(1, SEC);
        window.record(0, 0);
        assert_eq!(window.check(0, 1), WindowCheck::Fits);
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        const LENGTH: u64 = 1_000;
        const MAX: u64 = 10;

        proptest! {
            /// Whatever the arrivals and costs: no interval of the window's length ever holds more than
            /// `max`, and a refusal names exactly the first instant the cost fits.
            #[test]
            fn never_over_the_limit_and_retry_after_is_exact(
                arrivals in prop::collection::vec((0..2 * LENGTH, 1..=MAX), 1..200)
            ) {
                let mut window = StrictWindow::new(MAX, LENGTH);
                let mut admitted: Vec<(u64, u64)> = Vec::new();
                let mut now = 0;
                for (gap, cost) in arrivals {
                    now += gap;
                    match window.check(now, cost) {
                        WindowCheck::Fits => {
                            window.record(now, cost);
                            admitted.push((now, cost));
                        }
                        WindowCheck::FitsIn(wait) => {
                            prop_assert!(wait > 0);
                            prop_assert_eq!(window.clone().check(now + wait, cost), WindowCheck::Fits);
                            prop_assert_ne!(window.clone().check(now + wait - 1, cost), WindowCheck::Fits);
                        }
                        WindowCheck::Never => prop_assert!(false, "a cost within the limit always fits later"),
                    }
                }
                for &(start, _) in &admitted {
                    let inside: u64 = admitted.iter().filter(|(at, _)| (start..start + LENGTH).contains(at)).map(|(_, c)| c).sum();
                    prop_assert!(inside <= MAX, "{} in [{}, {})", inside, start, start + LENGTH);
                }
            }
        }
    }
}
