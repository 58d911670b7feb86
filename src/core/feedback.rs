//! How a limiter follows a server that allows less than it was told: each burst of 429s cuts the rate
//! in force (multiplicative decrease), which then holds for a cooldown and climbs back to the
//! configured rate over a recovery period (additive increase). A limiter set above what the server
//! allows settles near what it allows instead of storming it. A server that says how much it has left
//! (`x-ratelimit-remaining-*`) lets the cut come before any 429, and to what it allows, not by a guess.

use crate::core::limit::Unit;
use crate::core::spin::SpinLock;

/// The units whose rates follow the server, each with its own [`Aimd`]; a budget (dollars) is the
/// user's own.
pub const FOLLOWED: [Unit; 2] = [Unit::Requests, Unit::Tokens];

/// Where `unit` stands in [`FOLLOWED`], if it follows the server.
pub fn followed(unit: Unit) -> Option<usize> {
    FOLLOWED.iter().position(|&u| u == unit)
}

/// The rate in force after a cut, as a fraction of the one before it.
const DECREASE: f64 = 0.7;
/// The least fraction of the configured rate ever in force.
const FLOOR: f64 = 0.05;

#[derive(Debug, Clone, Copy)]
struct Cut {
    factor: f64,
    at_ns: u64,
}

/// Additive-increase, multiplicative-decrease of a limiter's rates, on an injected clock.
#[derive(Debug)]
pub struct Aimd {
    last_cut: SpinLock<Option<Cut>>,
    /// 429s closer together than this are one burst: one cut (those in flight answer alike).
    burst_ns: u64,
    cooldown_ns: u64,
    recovery_ns: u64,
}

impl Aimd {
    pub fn new(burst_ns: u64, cooldown_ns: u64, recovery_ns: u64) -> Self {
        Self { last_cut: SpinLock::new(None), burst_ns, cooldown_ns, recovery_ns: recovery_ns.max(1) }
    }

    /// The same, holding each cut for `cooldown_ns` before the climb back.
    pub fn with_cooldown(&self, cooldown_ns: u64) -> Self {
        Self::new(self.burst_ns, cooldown_ns, self.recovery_ns)
    }

    /// The same settings, with no cut yet.
    pub fn fresh(&self) -> Self {
        self.with_cooldown(self.cooldown_ns)
    }

    fn factor_after(&self, cut: Option<Cut>, now: u64) -> f64 {
        let Some(cut) = cut else { return 1.0 };
        let since = now.saturating_sub(cut.at_ns);
        if since < self.cooldown_ns {
            return cut.factor;
        }
        let climbed = (since - self.cooldown_ns) as f64 / self.recovery_ns as f64;
        (cut.factor + (1.0 - cut.factor) * climbed).min(1.0)
    }

    /// The fraction of the configured rate in force at `now`.
    pub fn factor(&self, now: u64) -> f64 {
        self.factor_after(*self.last_cut.lock(), now)
    }

    /// A 429 arrived at `now`: cuts the rate unless this one belongs to the burst already cut for.
    /// Returns the fraction in force after it.
    pub fn rejected(&self, now: u64) -> f64 {
        let mut last_cut = self.last_cut.lock();
        if let Some(cut) = *last_cut
            && now.saturating_sub(cut.at_ns) < self.burst_ns {
                return cut.factor;
            }
        let factor = (self.factor_after(*last_cut, now) * DECREASE).max(FLOOR);
        *last_cut = Some(Cut { factor, at_ns: now });
        factor
    }

    /// The server allows `allowed` of the configured rate (read from what it says is left): cuts the
    /// rate in force to that at `now`, unless it is that low already; a climb back after a cut stops
    /// there for as long as the server says so. Returns the fraction in force.
    pub fn limited_to(&self, allowed: f64, now: u64) -> f64 {
        let mut last_cut = self.last_cut.lock();
        let in_force = self.factor_after(*last_cut, now);
        if allowed >= in_force {
            return in_force;
        }
        let factor = allowed.max(FLOOR);
        *last_cut = Some(Cut { factor, at_ns: now });
        factor
    }
}

// --- what the server says is left, held against our count ----------------------------------------
//
// A server's `x-ratelimit-remaining-*` in its answer to a request says what it has left once it counted
// that request on its arrival. What we count where it counted it, plus what it says is left, is what it
// allows per window. Both backends apply the rule below: the local limiter on its own log
// (`core::quota`), the Redis backend on the fleet's (`backend::redis::limiter`).

/// Whether a server whose window is whole again within `reset_ns` speaks of a limit of `period_ns`.
/// Its window is at least as long as the reset it reports, so a limit more than twice as long is not
/// the one it speaks of (what a server counting per second has left, read against our minute, would
/// look like a sixtieth of our rate). Without a reset, any limit of the unit may be.
pub fn speaks_of(period_ns: u64, reset_ns: Option<u64>) -> bool {
    reset_ns.is_none_or(|reset| period_ns / 2 <= reset)
}

/// The fraction of a limit of `whole` units per window the server allows: `counted`, what we count
/// where it counted the request (the window that ends at the request's admission, plus what went up to
/// the limit's guard after it: [`went_just_after`]), plus what it says is left (`server_remaining`).
pub fn server_allows(counted: u64, server_remaining: u64, whole: u64) -> f64 {
    counted.saturating_add(server_remaining) as f64 / whole.max(1) as f64
}

/// Units admitted up to `late` after an admission at `at`, from the admissions `(instant, units)` that
/// follow it, in order: the server may have counted them first, since a request arrives a little after
/// its admission and by a different little each time (what a limit's guard allows for).
pub fn went_just_after(following: impl IntoIterator<Item = (u64, u64)>, at: u64, late: u64) -> u64 {
    let until = at.saturating_add(late);
    following.into_iter().take_while(|&(instant, _)| instant <= until).map(|(_, units)| units).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_speaks_of_limits_no_longer_than_twice_its_reset() {
        assert!(speaks_of(60 * SEC, None));
        assert!(speaks_of(60 * SEC, Some(30 * SEC)));
        assert!(!speaks_of(60 * SEC, Some(SEC)), "a per-second server is not our minute");
    }

    #[test]
    fn what_went_just_after_an_admission_counts_with_it_and_the_rest_not() {
        let following = [(10, 1), (15, 2), (16, 4), (40, 8)];
        assert_eq!(went_just_after(following, 10, 5), 3, "those at 10 and 15, not 16");
        assert_eq!(went_just_after(following, 10, 0), 1);
        assert_eq!(server_allows(7 + 3, 0, 10), 1.0, "all ten counted: nothing cut");
        assert_eq!(server_allows(7, 0, 10), 0.7, "without them the server would seem to allow 7");
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_burst_of_429s_cuts_once() {
        let aimd = Aimd::new(SEC, 10 * SEC, 60 * SEC);
        assert_eq!(aimd.factor(0), 1.0);
        assert_eq!(aimd.rejected(0), 0.7);
        assert_eq!(aimd.rejected(SEC / 2), 0.7);
        assert!((aimd.rejected(2 * SEC) - 0.49).abs() < 1e-9);
    }

    #[test]
    fn the_rate_holds_through_the_cooldown_then_climbs_back() {
        let aimd = Aimd::new(SEC, 10 * SEC, 60 * SEC);
        aimd.rejected(0);
        assert_eq!(aimd.factor(9 * SEC), 0.7);
        assert!((aimd.factor(40 * SEC) - 0.85).abs() < 1e-9);
        assert_eq!(aimd.factor(70 * SEC), 1.0);
        assert_eq!(aimd.factor(700 * SEC), 1.0);
    }

    #[test]
    fn cuts_never_go_below_the_floor() {
        let aimd = Aimd::new(0, SEC, SEC);
        for step in 0..100 {
            aimd.rejected(step);
        }
        assert_eq!(aimd.factor(100), FLOOR);
    }

    #[test]
    fn a_server_that_allows_less_cuts_to_what_it_allows_then_recovery_starts_over() {
        let aimd = Aimd::new(SEC, 10 * SEC, 60 * SEC);
        assert_eq!(aimd.limited_to(1.0, 0), 1.0);
        assert_eq!(aimd.limited_to(0.6, 0), 0.6);
        assert_eq!(aimd.limited_to(0.8, SEC), 0.6, "never raises the rate");
        assert!((aimd.factor(40 * SEC) - 0.8).abs() < 1e-9);
        assert_eq!(aimd.limited_to(0.6, 40 * SEC), 0.6, "the climb stops where the server still says so");
        assert_eq!(aimd.factor(49 * SEC), 0.6);
        assert_eq!(aimd.limited_to(0.0, 50 * SEC), FLOOR);
    }
}
